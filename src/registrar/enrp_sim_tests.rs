//! Several registrars peering over ENRP in the simulator, one run per seed: 3-5 registrars of
//! 1-2 shards, pool elements registering at any of them (re-registering elsewhere when theirs
//! goes away, answering keep-alives, deregistering now and then, some colliding on purpose),
//! with message delays, crashes and restarts under new ids, and partitions. Once the faults
//! stop and the mesh has had time to settle, the invariants of WIRE.md section 7 hold:
//!
//! - every registrar holds the same handlespace: every live PE, under one home, with its
//!   addresses (every live PE resolves everywhere; no PE has two owners; a collision is
//!   settled the same way everywhere);
//! - nothing else: no deregistered PE came back, no dead one lingers;
//! - every owner's checksum is the same in every view, and equals what the owner announces.
//!
//! `RSERPOOL_ENRP_SEEDS=N` runs N seeds (default 1000) from `RSERPOOL_ENRP_SEED_START` (default
//! 0), so a long run can go in pieces; `RSERPOOL_ENRP_SEED=S` replays one.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use super::tests::{handle_and_id, registration, split_messages};
use super::{Registrar, RegistrarConfig, ASAP, ENRP};
use crate::handlespace::checksum::PeChecksum;
use crate::runtime::sim::{ClientId, NodeId, Sim, SimConfig};
use crate::runtime::Listen;
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType};
use crate::wire::{CauseCode, Policy, TransportProtocol, TransportRepr};

/// What a registrar holds: (pool, PE id) → (home, user transport addresses).
type View = BTreeMap<(String, u32), (u32, Vec<IpAddr>)>;

fn enrp_addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, 1 + n as u8], 9901))
}

fn asap_addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, 1 + n as u8], 3863))
}

/// A pool element as the simulation drives it.
struct Pe {
    pool: String,
    pe_id: u32,
    ip: IpAddr,
    conn: Option<ClientId>,
    /// Its current registration was confirmed.
    registered: bool,
    /// It deregistered (confirmed): it must be gone everywhere, for good.
    gone: bool,
    deregistering: bool,
    buf: Vec<u8>,
}

/// What the runs exercised, summed over seeds (so a test that stops exercising something
/// shows it).
#[derive(Debug, Default)]
struct Coverage {
    crashes: u64,
    partitions: u64,
    takeovers: u64,
    mismatches: u64,
    collisions: u64,
    updates: u64,
}

struct World {
    cov: Coverage,
    sim: Sim<Registrar>,
    ids: Vec<Rc<Cell<u32>>>,
    pes: Vec<Pe>,
    dead_ids: BTreeSet<(String, u32)>,
    rng: fastrand::Rng,
    next_pe: u32,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=5);
        let mut sim: Option<Sim<Registrar>> = None;
        let mut ids = Vec::new();
        for i in 0..n {
            let id = Rc::new(Cell::new(rng.u32(1..)));
            ids.push(Rc::clone(&id));
            let shards = rng.u16(1..=2);
            let mut config = RegistrarConfig::new(id.get(), shards);
            config.enrp = Some(enrp_addr(i));
            // Each knows one other; the rest it learns from its mentor's list.
            config.peers = if i == 0 { vec![] } else { vec![enrp_addr(rng.usize(..i))] };
            // The registrars' network: peers learnt from the mesh dial in from it.
            config.security.enrp_allowlist = vec!["10.1.0.0/16".parse().expect("a network")];
            let t = &mut config.timers;
            (t.peer_heartbeat, t.max_time_last_heard, t.max_time_no_response) = (100, 350, 150);
            (t.takeover_expiry, t.mentor_discovery, t.peer_reconnect) = (600, 200, 100);
            (t.keep_alive_interval, t.keep_alive_timeout) = (300, 500);
            // Registrars differ in how long they gather Handle Updates (0: written at once; the
            // simulator flushes the others at its next millisecond or later), so both ways meet
            // in every mesh; by index, so the seeds' scenarios stay as they were.
            t.update_coalesce_us = [0, 300, 5_000][i % 3];
            let factory = move |s, _| {
                let mut c = config.clone();
                c.server_id = id.get();
                c.budgets = Default::default();
                Registrar::new(&c, s, Time::ZERO)
            };
            let listeners = [Listen::new(asap_addr(i), ASAP), Listen::on_shard(enrp_addr(i), ENRP, 0)];
            match sim.as_mut() {
                None => {
                    let mut s = Sim::new(SimConfig::new(shards), rng.u64(..), factory);
                    for l in listeners {
                        s.listen_node(NodeId(0), l);
                    }
                    sim = Some(s);
                }
                Some(s) => {
                    s.add_node(SimConfig::new(shards), &listeners, factory);
                }
            }
        }
        let sim = sim.expect("at least one node");
        Self { cov: Coverage::default(), sim, ids, pes: Vec::new(), dead_ids: BTreeSet::new(), rng, next_pe: 1 }
    }

    fn live_nodes(&self) -> Vec<NodeId> {
        self.all_nodes().into_iter().filter(|n| self.sim.is_up(*n)).collect()
    }

    fn all_nodes(&self) -> Vec<NodeId> {
        (0..self.ids.len()).map(NodeId).collect()
    }

    fn new_pe(&mut self) {
        let ip = IpAddr::from([198, 18, (self.pes.len() >> 8) as u8, self.pes.len() as u8]);
        let pool = format!("p{}", self.rng.usize(..4));
        // Now and then a PE takes an id another PE of the pool has (a collision).
        let pe_id = match self.pes.iter().filter(|p| p.pool == pool && !p.gone).nth(0) {
            Some(other) if self.rng.u8(..8) == 0 => other.pe_id,
            _ => {
                self.next_pe += 1;
                self.next_pe
            }
        };
        self.pes.push(Pe {
            pool,
            pe_id,
            ip,
            conn: None,
            registered: false,
            gone: false,
            deregistering: false,
            buf: Vec::new(),
        });
    }

    fn register(&mut self, i: usize) {
        let pe = &self.pes[i];
        let user = TransportRepr::new(TransportProtocol::Tcp, pe.ip, 7000);
        let m = registration(&pe.pool, pe.pe_id, user, Policy::RoundRobin, -1);
        if let Some(c) = pe.conn {
            self.sim.write(c, &m);
        }
    }

    /// Each PE: (re)connects and registers when it has no registrar; reads and answers.
    fn drive_pes(&mut self, re_register: bool) {
        for i in 0..self.pes.len() {
            if self.pes[i].gone {
                continue;
            }
            let broken = self.pes[i].conn.is_some_and(|c| self.sim.closed(c));
            if broken || self.pes[i].conn.is_none() {
                let live = self.live_nodes();
                if live.is_empty() {
                    continue;
                }
                let node = live[self.rng.usize(..live.len())];
                // From the PE's own address: registrars check it (security.registration_check).
                let from = SocketAddr::new(self.pes[i].ip, 40_000 + (i % 20_000) as u16);
                let Some(c) = self.sim.connect_addr(asap_addr(node.0), from) else { continue };
                let pe = &mut self.pes[i];
                (pe.conn, pe.registered, pe.deregistering) = (Some(c), false, false);
                pe.buf.clear();
                self.register(i);
            } else if re_register && !self.pes[i].deregistering {
                self.register(i);
            }
        }
        self.sim.run();
        for i in 0..self.pes.len() {
            self.read(i);
        }
    }

    fn read(&mut self, i: usize) {
        let Some(c) = self.pes[i].conn else { return };
        let bytes = self.sim.read(c);
        self.pes[i].buf.extend(bytes);
        let mut buf = std::mem::take(&mut self.pes[i].buf);
        for m in split_messages(&mut buf) {
            let parsed = asap::parse(&m).expect("registrars send valid ASAP");
            let pe = &mut self.pes[i];
            match *parsed.body() {
                Body::EndpointKeepAlive { pool_handle, pe_id: Some(id), .. } => {
                    let ack =
                        handle_and_id(MessageType::EndpointKeepAliveAck, std::str::from_utf8(pool_handle).unwrap(), id);
                    self.sim.write(c, &ack);
                }
                Body::RegistrationResponse { rejected: false, .. } => pe.registered = true,
                Body::RegistrationResponse { rejected: true, ref error, .. } => {
                    let cause = error.as_ref().map(|e| e.first_code());
                    // The other claim of its id won (WIRE.md 6.1, 7.5): a fresh id.
                    assert_eq!(cause, Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER), "registration refused: {cause:?}");
                    self.dead_ids.insert((pe.pool.clone(), pe.pe_id));
                    self.next_pe += 1;
                    pe.pe_id = self.next_pe;
                    pe.registered = false;
                    self.register(i);
                }
                Body::DeregistrationResponse { error: None, .. } if pe.deregistering => {
                    pe.gone = true;
                    pe.registered = false;
                    self.dead_ids.insert((pe.pool.clone(), pe.pe_id));
                    self.sim.shutdown_write(c);
                    break;
                }
                Body::DeregistrationResponse { error: Some(ref e), .. } if pe.deregistering => {
                    // Refused: a peer took the PE over while they were cut off (WIRE.md 7.6), so
                    // this registrar no longer binds it to this connection (0xA, SECURITY.md) or
                    // no longer has it at all, its new home having dropped it when it could not
                    // reach it (0x9). The PE stays in service and refreshes its registration as
                    // usual, which binds it here again.
                    let cause = e.first_code();
                    assert!(
                        [CauseCode::REJECTED_SECURITY, CauseCode::UNKNOWN_POOL_HANDLE].contains(&cause),
                        "deregistration refused: {cause:?}"
                    );
                    pe.deregistering = false;
                }
                _ => {}
            }
        }
        if !self.pes[i].gone {
            self.pes[i].buf = buf;
        }
    }

    fn faults(&mut self) {
        let nodes = self.all_nodes();
        match self.rng.u8(..20) {
            0 => {
                // A crash, and (later) a restart under a new id.
                let n = nodes[self.rng.usize(..nodes.len())];
                if self.sim.is_up(n) && self.live_nodes().len() > 1 {
                    self.sim.crash(n);
                    self.cov.crashes += 1;
                }
            }
            1 => {
                let down: Vec<NodeId> = nodes.iter().copied().filter(|n| !self.sim.is_up(*n)).collect();
                if let Some(&n) = down.first() {
                    self.ids[n.0].set(self.rng.u32(1..));
                    self.sim.restart(n);
                }
            }
            2 => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for n in nodes {
                    if self.rng.bool() {
                        a.push(n)
                    } else {
                        b.push(n)
                    }
                }
                self.cov.partitions += u64::from(!a.is_empty() && !b.is_empty());
                self.sim.partition_groups(&[a, b]);
            }
            3 => self.sim.heal_all(),
            _ => {}
        }
    }

    /// What node `n` holds, over all its shards.
    fn view(&self, n: NodeId) -> View {
        let mut v = View::new();
        for s in 0..self.sim.node_shards(n) {
            let hs = self.sim.node_service(n, s).handlespace();
            for (pool_key, pool) in hs.pools() {
                for key in hs.pool_pes(pool_key) {
                    let pe = hs.pe(key).unwrap();
                    let handle = String::from_utf8(pool.handle().to_vec()).unwrap();
                    let addrs = pe.user_transport().addresses.to_vec();
                    assert!(v.insert((handle, pe.id), (pe.home, addrs)).is_none(), "one pool lives on one shard");
                }
            }
        }
        v
    }

    fn check(&self, seed: u64) {
        let live = self.live_nodes();
        let views: Vec<(NodeId, View)> = live.iter().map(|&n| (n, self.view(n))).collect();
        let (n0, v0) = &views[0];
        for (n, v) in &views[1..] {
            if v != v0 {
                self.dump();
                let a: BTreeSet<_> = v0.iter().collect();
                let b: BTreeSet<_> = v.iter().collect();
                panic!(
                    "seed {seed}: node {} and node {} disagree:\n only at {}: {:?}\n only at {}: {:?}",
                    n0.0,
                    n.0,
                    n0.0,
                    a.difference(&b).collect::<Vec<_>>(),
                    n.0,
                    b.difference(&a).collect::<Vec<_>>()
                );
            }
        }
        // Exactly the live PEs, with their addresses.
        let want: BTreeMap<(String, u32), Vec<IpAddr>> = self
            .pes
            .iter()
            .filter(|p| !p.gone && p.registered)
            .map(|p| ((p.pool.clone(), p.pe_id), vec![p.ip]))
            .collect();
        let got: BTreeMap<(String, u32), Vec<IpAddr>> = v0.iter().map(|(k, (_, a))| (k.clone(), a.clone())).collect();
        if got != want {
            self.dump();
        }
        assert_eq!(got, want, "seed {seed}: the handlespace is exactly the live PEs");
        for k in &self.dead_ids {
            assert!(!v0.contains_key(k) || want.contains_key(k), "seed {seed}: {k:?} came back");
        }
        // Every owner's checksum: the same in every view, and what the owner announces.
        for &n in &live {
            let Some(c) = self.sim.node_service(n, 0).coordinator() else { continue };
            let me = self.ids[n.0].get();
            let mut sum = PeChecksum::EMPTY;
            for ((pool, id), (home, _)) in v0 {
                if *home == me {
                    sum.add_pe(pool.as_bytes(), *id);
                }
            }
            assert_eq!(c.own_checksum(), sum.value(), "seed {seed}: node {}'s announced checksum", n.0);
        }
        let homes: BTreeSet<u32> = v0.values().map(|(h, _)| *h).collect();
        let live_ids: BTreeSet<u32> = live.iter().map(|n| self.ids[n.0].get()).collect();
        assert!(
            homes.is_subset(&live_ids),
            "seed {seed}: every PE's home is a live registrar: {homes:?} vs {live_ids:?}"
        );
    }

    /// The registrars' and the PEs' state, for a failing seed.
    fn dump(&self) {
        for &m in &self.live_nodes() {
            let st = self.sim.node_service(m, 0).coordinator().map(|c| c.status(self.sim.now()));
            eprintln!("node {} id {:#x}: {:?}", m.0, self.ids[m.0].get(), st);
            eprintln!("  dials {:?}", self.sim.node_service(m, 0).coordinator().map(|c| c.dial_targets()));
        }
        for p in &self.pes {
            eprintln!(
                "pe {}/{} ip {} registered {} gone {} conn {:?} closed {:?}",
                p.pool,
                p.pe_id,
                p.ip,
                p.registered,
                p.gone,
                p.conn,
                p.conn.map(|c| self.sim.closed(c))
            );
        }
    }

    /// What the live registrars counted.
    fn count(&mut self) {
        for n in self.live_nodes() {
            if let Some(c) = self.sim.node_service(n, 0).coordinator() {
                let st = c.stats();
                self.cov.takeovers += st.takeovers;
                self.cov.mismatches += st.mismatches;
                self.cov.updates += st.updates_received;
            }
            for s in 0..self.sim.node_shards(n) {
                self.cov.collisions += self.sim.node_service(n, s).stats().collisions;
            }
        }
    }

    fn run(mut self, seed: u64) -> Coverage {
        for _ in 0..self.rng.usize(4..=10) {
            self.new_pe();
        }
        // Faults and churn.
        for round in 0..self.rng.usize(10..=30) {
            if self.rng.u8(..4) == 0 {
                self.new_pe();
            }
            if self.rng.u8(..10) == 0 {
                let candidates: Vec<usize> =
                    (0..self.pes.len()).filter(|&i| self.pes[i].registered && !self.pes[i].gone).collect();
                if let Some(&i) = candidates.get(self.rng.usize(..candidates.len().max(1))) {
                    let pe = &mut self.pes[i];
                    pe.deregistering = true;
                    let m = handle_and_id(MessageType::Deregistration, &pe.pool, pe.pe_id);
                    if let Some(c) = pe.conn {
                        self.sim.write(c, &m);
                    }
                }
            }
            self.faults();
            self.drive_pes(round % 10 == 9);
            let ms = self.rng.u64(20..=300);
            self.sim.advance(ms);
        }
        // The faults stop; the mesh settles.
        self.sim.heal_all();
        for n in self.all_nodes() {
            if !self.sim.is_up(n) {
                self.ids[n.0].set(self.rng.u32(1..));
                self.sim.restart(n);
            }
        }
        for round in 0..60 {
            self.drive_pes(round == 30);
            self.sim.advance(100);
        }
        self.drive_pes(false);
        self.check(seed);
        self.count();
        self.cov
    }
}

#[test]
fn registrars_converge_after_crashes_partitions_and_collisions() {
    let one = std::env::var("RSERPOOL_ENRP_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let count = std::env::var("RSERPOOL_ENRP_SEEDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(1000);
    let start = std::env::var("RSERPOOL_ENRP_SEED_START").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let seeds: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (start..start + count).collect(),
    };
    let many = seeds.len() > 100;
    let mut total = Coverage::default();
    for seed in seeds {
        match std::panic::catch_unwind(|| World::new(seed).run(seed)) {
            Ok(c) => {
                total.crashes += c.crashes;
                total.partitions += c.partitions;
                total.takeovers += c.takeovers;
                total.mismatches += c.mismatches;
                total.collisions += c.collisions;
                total.updates += c.updates;
            }
            Err(e) => {
                eprintln!(
                    "ENRP simulation seed {seed} failed; replay: RSERPOOL_ENRP_SEED={seed} cargo test --lib registrars_converge"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    if one.is_none() {
        eprintln!("ENRP simulation seeds {start}..{}: {total:?}", start + count);
    }
    if many {
        let c = &total;
        assert!(c.crashes > 0 && c.partitions > 0 && c.takeovers > 0, "{c:?}");
        assert!(c.mismatches > 0 && c.collisions > 0 && c.updates > 0, "{c:?}");
    }
}
