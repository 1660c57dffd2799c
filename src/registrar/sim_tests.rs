//! The registrar under random workloads in the simulator, one run per seed: 1-4 shards with
//! cross-shard queues of 1-4 records, small send queues, slow readers, short reads, pipelining
//! clients whose pools live on other shards, keep-alives and their acks crossing shards,
//! clients that half-close or reset mid-stream. After every run the invariants of the shard
//! fabric hold:
//!
//! - every request a client could still read is answered, in request order;
//! - no PE is lost: an open client's PEs are exactly those the registrar confirmed to it;
//! - no PE outlives its connection, and every connection is closed at the end;
//! - the router's per-connection PE counts, the registrar-wide budgets and keep-alive
//!   supervision agree with the handlespace;
//! - what waits between shards stays bounded.
//!
//! `RSERPOOL_SIM_SEEDS=N` runs N seeds (default 1000); `RSERPOOL_SIM_SEED=S` replays one.

use std::collections::{BTreeSet, VecDeque};

use super::tests::{handle_and_id, reg_response, registration, resolution, split_messages, tcp};
use super::{Registrar, RegistrarConfig, ASAP};
use crate::runtime::sim::{ClientId, Sim, SimConfig};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType, Resolution};
use crate::wire::{CauseCode, Policy};

const SERVER_ID: u32 = 0x5151_0001;
/// Pools the clients use ("p0".."p5"; "nope" is never registered).
const POOLS: usize = 6;
/// Timer items per timer call (`asap::procedures`): the most a timer can add at once.
const TIMER_BUDGET: u64 = 512;

/// An answer a client waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Registration(String, u32),
    Deregistration(String, u32),
    Resolution(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    HalfClosed,
    Reset,
}

/// What one client has done and been told.
struct Client {
    id: ClientId,
    ip: String,
    pe: bool,
    state: State,
    expected: VecDeque<Expect>,
    /// PEs the registrar confirmed and did not remove since.
    confirmed: BTreeSet<(String, u32)>,
    next_pe: u32,
    buf: Vec<u8>,
}

struct World {
    sim: Sim<Registrar>,
    config: RegistrarConfig,
    clients: Vec<Client>,
    rng: fastrand::Rng,
    seed: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let shards = rng.u16(1..=4);
        let mut engine = SimConfig::new(shards);
        engine.queue = rng.usize(1..=4);
        engine.read_size = rng.usize(1..=300);
        engine.max_send_queue_bytes = [200, 1000, 64 * 1024][rng.usize(..3)];
        engine.max_send_queue_hard_bytes = 64 << 20;
        let mut config = RegistrarConfig::new(SERVER_ID, shards);
        config.limits.max_pending_requests = rng.u32(1..=8);
        config.limits.max_send_queue = [500, 4000, 1 << 20][rng.usize(..3)];
        config.limits.max_pes_per_connection = rng.usize(2..=8);
        config.limits.max_pes = rng.usize(10..=60);
        config.limits.max_refusals = u32::MAX;
        config.timers.keep_alive_interval = 1_000;
        config.timers.keep_alive_timeout = 500;
        let registrar = config.clone();
        let sim = Sim::new(engine, rng.u64(..), move |s, _| Registrar::new(&registrar, s, Time::ZERO));
        Self { sim, config, clients: Vec::new(), rng, seed }
    }

    fn add_client(&mut self) {
        let n = self.clients.len();
        let ip = format!("198.51.100.{}", 1 + n % 250);
        let shard = self.rng.u16(..self.sim.shards());
        let id = self.sim.connect_from(shard, ASAP, format!("{ip}:{}", 2000 + n).parse().unwrap());
        let pe = self.rng.bool();
        if !pe && self.rng.u8(..3) == 0 {
            // A slow reader: the registrar writes a little at a time. (Only pool users: a PE
            // that does not read misses its keep-alives, and is rightly removed.)
            self.sim.set_window(id, Some(self.rng.usize(16..=512)));
        }
        let next_pe = (n as u32 + 1) << 16;
        let c = Client {
            id,
            ip,
            pe,
            state: State::Open,
            expected: VecDeque::new(),
            confirmed: BTreeSet::new(),
            next_pe,
            buf: Vec::new(),
        };
        self.clients.push(c);
    }

    fn pool(&mut self) -> String {
        format!("p{}", self.rng.usize(..POOLS))
    }

    /// One client does something (pipelining several requests at once).
    fn act(&mut self, i: usize) {
        if self.clients[i].state != State::Open {
            return;
        }
        match self.rng.u8(..100) {
            0..=2 => {
                self.sim.shutdown_write(self.clients[i].id);
                self.clients[i].state = State::HalfClosed;
                return;
            }
            3..=4 => {
                self.sim.reset(self.clients[i].id);
                self.clients[i].state = State::Reset;
                self.clients[i].expected.clear();
                return;
            }
            _ => {}
        }
        let mut bytes = Vec::new();
        for _ in 0..self.rng.usize(1..=12) {
            let pool = self.pool();
            let c = &mut self.clients[i];
            let ip = c.ip.clone();
            if c.pe {
                match self.rng.u8(..10) {
                    0..=5 => {
                        c.next_pe += 1;
                        let id = c.next_pe;
                        bytes.extend(registration(&pool, id, tcp(&ip, 7000), Policy::RoundRobin, -1));
                        c.expected.push_back(Expect::Registration(pool, id));
                    }
                    6..=7 if !c.confirmed.is_empty() => {
                        // Re-register or deregister one it has.
                        let (pool, id) = c.confirmed.iter().nth(self.rng.usize(..c.confirmed.len())).unwrap().clone();
                        if self.rng.bool() {
                            bytes.extend(registration(&pool, id, tcp(&ip, 7000), Policy::RoundRobin, -1));
                            c.expected.push_back(Expect::Registration(pool, id));
                        } else {
                            bytes.extend(handle_and_id(MessageType::Deregistration, &pool, id));
                            c.expected.push_back(Expect::Deregistration(pool, id));
                        }
                    }
                    _ => {
                        bytes.extend(resolution(&pool, None));
                        c.expected.push_back(Expect::Resolution(pool));
                    }
                }
            } else {
                let pool = if self.rng.u8(..8) == 0 { "nope".to_string() } else { pool };
                bytes.extend(resolution(&pool, Some(self.rng.u32(1..=5))));
                c.expected.push_back(Expect::Resolution(pool.clone()));
                if self.rng.u8(..4) == 0 {
                    // Answerless, and about no PE anyone has: changes nothing.
                    bytes.extend(handle_and_id(MessageType::EndpointUnreachable, &pool, 0xdead_beef));
                }
            }
        }
        // Sent in pieces, some of which the shards handle before the next arrives.
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = rest.len().min(self.rng.usize(1..=rest.len()));
            self.sim.write(self.clients[i].id, &rest[..n]);
            rest = &rest[n..];
            let steps = self.rng.usize(0..20);
            self.sim.run_steps(steps);
        }
    }

    /// Every client reads what came and checks it against what it asked; PE clients ack
    /// keep-alives. Returns whether anything was read.
    fn read_all(&mut self) -> bool {
        let mut read = false;
        for c in &mut self.clients {
            let bytes = self.sim.read(c.id);
            read |= !bytes.is_empty();
            c.buf.extend(bytes);
            for m in split_messages(&mut c.buf) {
                c.receive(&m, &mut self.sim);
            }
        }
        read
    }

    /// Runs and reads until nothing moves.
    fn settle(&mut self) {
        loop {
            self.sim.run();
            if !self.read_all() {
                break;
            }
        }
    }

    fn check(&mut self) {
        let shards = self.sim.shards();
        let mut total_pes = 0;
        let mut total_pools = 0;
        let mut by_conn: std::collections::HashMap<_, BTreeSet<(String, u32)>> = Default::default();
        for s in 0..shards {
            let r = self.sim.service(s);
            let hs = r.handlespace();
            hs.validate().unwrap();
            total_pes += hs.pe_count();
            total_pools += hs.pool_count();
            assert_eq!(r.supervised_pes(), hs.pe_count(), "shard {s}: every PE it owns is supervised, no other");
            for key in hs.owner_pes(SERVER_ID) {
                let pe = hs.pe(key).unwrap();
                let handle = String::from_utf8(hs.pe_handle(key).unwrap().to_vec()).unwrap();
                let conn = pe.conn().expect("a registered PE has its connection");
                by_conn.entry(conn).or_default().insert((handle, pe.id));
            }
        }
        assert_eq!(self.config.budgets.pes.used(), total_pes, "registrar-wide PE count");
        assert_eq!(self.config.budgets.pools.used(), total_pools, "registrar-wide pool count");
        for c in &self.clients {
            let conn = self.sim.conn_id(c.id);
            let held = conn.and_then(|id| by_conn.remove(&id)).unwrap_or_default();
            if c.state == State::Open {
                assert!(c.expected.is_empty(), "client {:?}: unanswered {:?}", c.id, c.expected);
                assert_eq!(held, c.confirmed, "client {:?}: the registrar holds exactly the confirmed PEs", c.id);
                let conn = conn.unwrap();
                let count = self.sim.service_mut(conn.shard).connection_pe_count(conn);
                assert_eq!(count, Some(c.confirmed.len() as u32), "client {:?}: PE count across shards", c.id);
            } else {
                assert!(held.is_empty(), "client {:?} closed: no PE outlives its connection", c.id);
            }
        }
        assert!(by_conn.is_empty(), "PEs of unknown connections: {by_conn:?}");
    }

    fn run(mut self) -> Coverage {
        for _ in 0..self.rng.usize(2..=6) {
            self.add_client();
        }
        for _ in 0..self.rng.usize(5..=25) {
            if self.rng.u8(..10) == 0 {
                self.add_client();
            }
            for _ in 0..self.rng.usize(1..=4) {
                let i = self.rng.usize(..self.clients.len());
                self.act(i);
            }
            if self.rng.bool() {
                self.settle();
                self.check();
            }
            let ms = self.rng.u64(0..=300);
            self.sim.advance(ms);
            self.read_all();
        }
        self.settle();
        self.check();
        // Everyone leaves; every answer still arrives; everything closes.
        for c in &mut self.clients {
            if c.state == State::Open {
                self.sim.shutdown_write(c.id);
                c.state = State::HalfClosed;
            }
        }
        self.settle();
        for c in &self.clients {
            assert!(c.expected.is_empty(), "seed {}: client {:?} left unanswered: {:?}", self.seed, c.id, c.expected);
            assert!(self.sim.closed(c.id), "client {:?}: connection closed", c.id);
        }
        assert_eq!(self.sim.open_connections(), 0);
        self.check();
        assert_eq!(self.config.budgets.pes.used(), 0);
        let clients = self.clients.len() as u64;
        let mut cov = Coverage::default();
        for s in 0..self.sim.shards() {
            let st = self.sim.stats(s);
            let bound = 2 * TIMER_BUDGET + 8 * clients * u64::from(self.sim.shards());
            assert!(st.overflow_high_water <= bound, "shard {s}: {} records overflowed", st.overflow_high_water);
            assert_eq!(st.send_queue_aborts, 0);
            cov.spilled += st.spilled;
            cov.link_pauses += st.link_pauses;
            cov.read_pauses += st.read_pauses;
            cov.max_overflow = cov.max_overflow.max(st.overflow_high_water);
            let r = self.sim.service(s).stats();
            cov.keep_alives += r.keep_alives_sent;
            cov.refusals += r.resource_refusals;
            cov.registrations += r.registrations;
            cov.resolutions += r.resolutions;
        }
        cov.resets = self.clients.iter().filter(|c| c.state == State::Reset).count() as u64;
        cov
    }
}

/// What the runs exercised, summed over seeds (so a test that stops exercising something
/// shows it).
#[derive(Debug, Default)]
struct Coverage {
    spilled: u64,
    link_pauses: u64,
    read_pauses: u64,
    max_overflow: u64,
    keep_alives: u64,
    refusals: u64,
    registrations: u64,
    resolutions: u64,
    resets: u64,
}

impl Client {
    /// Checks one message from the registrar, and acks a keep-alive.
    fn receive(&mut self, m: &[u8], sim: &mut Sim<Registrar>) {
        if self.state == State::Reset {
            return;
        }
        let parsed = asap::parse(m).unwrap_or_else(|e| panic!("client {:?}: undecodable answer: {e}", self.id));
        if let Body::EndpointKeepAlive { home, server_id, pool_handle, pe_id } = *parsed.body() {
            let pe_id = pe_id.expect("the registrar names the PE");
            let handle = String::from_utf8(pool_handle.to_vec()).unwrap();
            assert!(home && server_id == SERVER_ID);
            let known = self.confirmed.contains(&(handle.clone(), pe_id))
                || self.expected.contains(&Expect::Registration(handle.clone(), pe_id));
            assert!(known, "client {:?}: keep-alive for a PE it does not have: {handle}/{pe_id:#x}", self.id);
            if self.state == State::Open {
                sim.write(self.id, &handle_and_id(MessageType::EndpointKeepAliveAck, &handle, pe_id));
            }
            return;
        }
        let want =
            self.expected.pop_front().unwrap_or_else(|| panic!("client {:?}: unasked answer {parsed:?}", self.id));
        match (want, parsed.body()) {
            (Expect::Registration(pool, id), Body::RegistrationResponse { pool_handle, pe_id, .. }) => {
                assert_eq!((*pool_handle, *pe_id), (pool.as_bytes(), id), "client {:?}: answers in order", self.id);
                match reg_response(m) {
                    (false, None, _) => {
                        self.confirmed.insert((pool, id));
                    }
                    (true, Some(CauseCode::LACK_OF_RESOURCES), _) => {
                        // A limit: a re-registration refused leaves the PE as it was.
                    }
                    other => panic!("client {:?}: registration of {pool}/{id:#x} rejected: {other:?}", self.id),
                }
            }
            (Expect::Deregistration(pool, id), Body::DeregistrationResponse { pool_handle, pe_id, error }) => {
                assert_eq!((*pool_handle, *pe_id), (pool.as_bytes(), id), "client {:?}: answers in order", self.id);
                // Already gone (its pool went with it) or removed now: either way, not held.
                let cause = error.as_ref().map(|e| e.first_code());
                assert!(matches!(cause, None | Some(CauseCode::UNKNOWN_POOL_HANDLE)), "deregistration: {cause:?}");
                self.confirmed.remove(&(pool, id));
            }
            (Expect::Resolution(pool), Body::HandleResolutionResponse { pool_handle, resolution }) => {
                assert_eq!(*pool_handle, pool.as_bytes(), "client {:?}: answers in order", self.id);
                if let Resolution::Failed(e) = resolution {
                    assert_eq!(e.first_code(), CauseCode::UNKNOWN_POOL_HANDLE);
                }
            }
            (want, _) => panic!("client {:?}: expected {want:?}, got {parsed:?}", self.id),
        }
    }
}

#[test]
fn random_workloads_keep_every_invariant() {
    let one = std::env::var("RSERPOOL_SIM_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let count = std::env::var("RSERPOOL_SIM_SEEDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(1000);
    let seeds: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (0..count).collect(),
    };
    let mut total = Coverage::default();
    let many = seeds.len() > 100;
    for seed in seeds {
        match std::panic::catch_unwind(|| World::new(seed).run()) {
            Ok(c) => {
                total.spilled += c.spilled;
                total.link_pauses += c.link_pauses;
                total.read_pauses += c.read_pauses;
                total.max_overflow = total.max_overflow.max(c.max_overflow);
                total.keep_alives += c.keep_alives;
                total.refusals += c.refusals;
                total.registrations += c.registrations;
                total.resolutions += c.resolutions;
                total.resets += c.resets;
            }
            Err(e) => {
                eprintln!(
                    "simulation seed {seed} failed; replay: RSERPOOL_SIM_SEED={seed} cargo test --lib random_workloads"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("simulation coverage: {total:?}");
    if many {
        // The workload must keep reaching the fabric's corners, or the invariants prove little.
        assert!(total.spilled > 0 && total.link_pauses > 0 && total.read_pauses > 0, "{total:?}");
        assert!(total.keep_alives > 0 && total.refusals > 0 && total.resets > 0, "{total:?}");
    }
}
