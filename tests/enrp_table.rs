//! ENRP handle table transfers in the simulator, at chunk sizes and message limits that cut
//! the table into many Handle Table Responses: a registrar that joins gets its mentor's whole
//! table (M flag), and an audit that finds a mismatch gets exactly the owner's own PEs (W
//! flag), however the pools spread over the shards on either side. Afterwards both hold the
//! same PEs, each under its home, with its addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use rserpool::config::RegistrationCheck;
use rserpool::enrp::EnrpMsg;
use rserpool::registrar::{Registrar, RegistrarConfig, ShardMsg, ASAP, ENRP};
use rserpool::runtime::sim::{ClientId, NodeId, Sim, SimConfig};
use rserpool::runtime::Listen;
use rserpool::service::{ConnId, Payload, Recorder, Service};
use rserpool::time::Time;
use rserpool::wire::asap::{self, Body, MessageType};
use rserpool::wire::enrp::{self, Kind};
use rserpool::wire::{
    Framer, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr,
    Writer,
};

/// (pool, PE id) → (home, user transport addresses), over every shard of a node.
type View = BTreeMap<(String, u32), (u32, Vec<IpAddr>)>;

fn enrp_addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, 1 + n as u8], 9901))
}

fn asap_addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, 1 + n as u8], 3863))
}

/// A PE of pool `pool-<i % 23>`: in even pools multi-homed over SCTP with 1 to 6 addresses,
/// in odd ones over TCP with one (IPv4 or IPv6); entries of many sizes.
fn registration(i: u32) -> (String, Vec<u8>) {
    let p = i % 23;
    let pool = format!("pool-{p}");
    let (protocol, n) = if p % 2 == 0 { (TransportProtocol::Sctp, 1 + i % 6) } else { (TransportProtocol::Tcp, 1) };
    let addrs: Vec<IpAddr> = (0..n)
        .map(|k| match i % 3 {
            0 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, (i as u16) ^ ((k as u16) << 12)]),
            _ => IpAddr::from([198, 18 + k as u8, (i >> 8) as u8, i as u8]),
        })
        .collect();
    let mut user = TransportRepr::new(protocol, addrs[0], 7000);
    user.addresses = addrs.into_iter().collect();
    let pe = PoolElementRepr {
        pe_id: i,
        home_registrar: 0,
        registration_life: -1,
        user_transport: user,
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: None,
    };
    let params = vec![ParamRepr::PoolHandle(pool.clone().into_bytes()), ParamRepr::PoolElement(pe)];
    let m = MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap();
    (pool, m)
}

fn deregistration(pool: &str, id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    asap::emit_handle_and_id(&mut Writer::new(&mut b), MessageType::Deregistration, 0, pool.as_bytes(), Some(id), None)
        .unwrap();
    b
}

#[derive(Clone, Copy)]
struct Shape {
    chunk: usize,
    max_message: usize,
    shards: [u16; 2],
}

fn config(id: u32, n: usize, shape: Shape, shards: u16) -> RegistrarConfig {
    let mut c = RegistrarConfig::new(id, shards);
    c.enrp = Some(enrp_addr(n));
    c.peers = if n == 0 { vec![] } else { vec![enrp_addr(0)] };
    c.limits.max_table_chunk = shape.chunk;
    c.limits.max_message_size = shape.max_message;
    // The PEs register addresses of many kinds from one client connection.
    c.security.registration_check = RegistrationCheck::Off;
    // A admits B, which it does not dial itself.
    c.security.enrp_allowlist = vec!["10.2.0.0/16".parse().expect("a network")];
    let t = &mut c.timers;
    (t.peer_heartbeat, t.mentor_discovery, t.peer_reconnect) = (200, 300, 100);
    c
}

fn node(sim: Option<Sim<Registrar>>, id: u32, n: usize, shape: Shape) -> (Sim<Registrar>, NodeId) {
    let shards = shape.shards[n];
    let cfg = config(id, n, shape, shards);
    let factory = move |s, _| Registrar::new(&cfg, s, Time::ZERO);
    let listeners = [Listen::new(asap_addr(n), ASAP), Listen::on_shard(enrp_addr(n), ENRP, 0)];
    let mut sim_config = SimConfig::new(shards);
    sim_config.max_message_size = shape.max_message;
    match sim {
        None => {
            let mut s = Sim::new(sim_config, 7, factory);
            for l in listeners {
                s.listen_node(NodeId(0), l);
            }
            (s, NodeId(0))
        }
        Some(mut s) => {
            let id = s.add_node(sim_config, &listeners, factory);
            (s, id)
        }
    }
}

fn view(sim: &Sim<Registrar>, n: NodeId) -> View {
    let mut v = View::new();
    for s in 0..sim.node_shards(n) {
        let hs = sim.node_service(n, s).handlespace();
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

/// Writes `messages` over `client` and reads as many answers, each a success.
fn exchange(sim: &mut Sim<Registrar>, client: ClientId, messages: &[Vec<u8>]) {
    for m in messages {
        sim.write(client, m);
    }
    sim.run();
    let bytes = sim.read(client);
    let framer = Framer::new(Protocol::Asap, 65535);
    let mut answers = 0;
    for m in framer.frames(&bytes) {
        match asap::parse(m.unwrap()).unwrap().body() {
            Body::RegistrationResponse { rejected: false, error: None, .. }
            | Body::DeregistrationResponse { error: None, .. } => answers += 1,
            Body::RegistrationResponse { error: Some(e), .. } => panic!("refused: cause {:?}", e.first_code()),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(answers, messages.len());
}

fn transfer(shape: Shape) {
    let what = format!("chunk {} max message {} shards {:?}", shape.chunk, shape.max_message, shape.shards);
    let (mut sim, a) = node(None, 0xa1, 0, shape);
    // 300 PEs in 23 pools at A, over three connections.
    let regs: Vec<(String, Vec<u8>)> = (1..=300).map(registration).collect();
    let clients: Vec<ClientId> = (0..3).map(|_| sim.connect_node(a, ASAP)).collect();
    for (k, c) in clients.iter().enumerate() {
        let mine: Vec<Vec<u8>> = regs.iter().skip(k).step_by(3).map(|r| r.1.clone()).collect();
        exchange(&mut sim, *c, &mine);
    }
    assert_eq!(view(&sim, a).len(), 300, "{what}");
    // B joins after: the PEs reach it by the table transfer alone.
    let (mut sim, b) = node(Some(sim), 0xb2, 1, shape);
    for _ in 0..50 {
        sim.advance(50);
        if sim.node_service(b, 0).coordinator().map(|c| c.status(sim.now()).state) == Some("consistent".into()) {
            break;
        }
    }
    let (va, vb) = (view(&sim, a), view(&sim, b));
    assert_eq!(vb.len(), 300, "{what}: B holds every PE after joining");
    assert_eq!(vb, va, "{what}: B holds A's table");
    assert!(vb.values().all(|(home, _)| *home == 0xa1), "{what}");
    // Cut off, A changes: a third of its PEs go, 40 new ones come. B misses the updates; once
    // healed, its audit of A's checksum finds the mismatch and fetches A's own PEs.
    sim.partition(a, b, true);
    for (k, c) in clients.iter().enumerate() {
        let gone: Vec<Vec<u8>> = regs
            .iter()
            .enumerate()
            .skip(k)
            .step_by(3)
            .filter(|(i, _)| i % 3 == 1)
            .map(|(i, r)| deregistration(&r.0, i as u32 + 1))
            .collect();
        exchange(&mut sim, *c, &gone);
    }
    let c = sim.connect_node(a, ASAP);
    let new: Vec<Vec<u8>> = (1001..=1040).map(|i| registration(i).1).collect();
    exchange(&mut sim, c, &new);
    sim.advance(100);
    assert_ne!(view(&sim, b), view(&sim, a), "{what}: B missed the changes");
    sim.partition(a, b, false);
    for _ in 0..60 {
        sim.advance(50);
        if view(&sim, b) == view(&sim, a) {
            break;
        }
    }
    let (va, vb) = (view(&sim, a), view(&sim, b));
    assert_eq!(va.len(), 300 - 100 + 40, "{what}");
    assert_eq!(vb, va, "{what}: the audit mended B's view of A");
    let stats = sim.node_service(b, 0).coordinator().unwrap().stats().clone();
    assert!(stats.mismatches >= 1, "{what}: {stats:?}");
}

#[test]
fn tables_cut_into_many_responses_arrive_whole() {
    for shape in [
        Shape { chunk: 1, max_message: 32768, shards: [2, 1] },
        Shape { chunk: 7, max_message: 32768, shards: [1, 3] },
        Shape { chunk: 1024, max_message: 32768, shards: [2, 2] },
        Shape { chunk: 1024, max_message: 1024, shards: [3, 1] },
        Shape { chunk: 1024, max_message: 600, shards: [1, 2] },
    ] {
        transfer(shape);
    }
}

/// One registrar shard with ENRP on, without I/O, and an ASAP client connection to it.
fn exporter(max_pes: usize) -> (Registrar, ConnId) {
    let mut c = RegistrarConfig::new(0xa1, 1);
    c.enrp = Some(enrp_addr(0));
    c.limits.max_table_chunk = 1000;
    c.limits.max_pes = max_pes;
    c.limits.max_pes_per_connection = max_pes;
    c.security.registration_check = RegistrationCheck::Off;
    let mut a = Registrar::new(&c, 0, Time::ZERO);
    let client = ConnId { shard: 0, generation: 1, slot: 0 };
    a.on_accept(client, ASAP, asap_addr(9), Time::ZERO, &mut Recorder::default());
    (a, client)
}

/// Feeds `m` (whole ASAP messages) to the shard over `client`.
fn send(a: &mut Registrar, client: ConnId, m: &[u8]) {
    assert_eq!(a.on_data(client, m, Time::ZERO, &mut Recorder::default()), m.len());
}

/// Asks the shard for its table (with `own_only`, its own PEs) message by message until it is
/// done, calling `between` after each; returns every message's (pool, PE id) entries, checked
/// for the M flag and the size limit, and the number of Pool Handles in all.
fn export(
    a: &mut Registrar,
    own_only: bool,
    mut between: impl FnMut(usize, &mut Registrar),
) -> (Vec<Vec<(String, u32)>>, usize) {
    let peer = ConnId { shard: 0, generation: 1, slot: 9 };
    let (mut messages, mut first) = (Vec::new(), true);
    loop {
        let mut out = Recorder::default();
        let msg = EnrpMsg::Export { conn: peer, requester: 0xb2, own_only, first, last: true };
        a.on_message(0, ShardMsg::Enrp(msg), Time::ZERO, &mut out);
        first = false;
        messages.push(out.sent);
        between(messages.len(), a);
        if out.posts.iter().any(|p| matches!(p, ShardMsg::Enrp(EnrpMsg::Exported { exhausted: true, .. }))) {
            break;
        }
        assert!(messages.len() < 100, "the export ends");
    }
    let mut groups = 0;
    let entries = messages
        .iter()
        .enumerate()
        .map(|(n, m)| {
            assert!(m.len() <= 65_535);
            let Kind::HandleTableResponse { more, rejected: false, entries } =
                enrp::parse(m).unwrap().body().kind.clone()
            else {
                panic!("message {n} is no Handle Table Response");
            };
            assert_eq!(more, n + 1 < messages.len(), "M flag on every message but the last");
            let mut sent = Vec::new();
            for (handle, pes) in entries {
                groups += 1;
                sent.extend(pes.map(|pe| (String::from_utf8(handle.to_vec()).unwrap(), pe.pe_id())));
            }
            sent
        })
        .collect();
    (entries, groups)
}

#[test]
fn an_export_longer_than_its_read_ahead_sends_every_pe_once_while_the_table_changes() {
    // 20,000 PEs in 23 pools, registered round the pools: the export reads them a window at a
    // time (8,192 slots), and messages (at most 1,000 entries, and cut by size) straddle
    // windows. After the third message some PEs leave (behind and ahead of the export) and
    // others come.
    let (mut a, client) = exporter(50_000);
    let regs: Vec<(String, Vec<u8>)> = (1..=20_100).map(registration).collect();
    for r in &regs[..20_000] {
        send(&mut a, client, &r.1);
    }
    let gone: Vec<u32> = (1..=20_000).filter(|i| i % 5 == 0).collect();
    let (messages, groups) = export(&mut a, false, |n, a| {
        if n == 3 {
            for &id in &gone {
                send(a, client, &deregistration(&regs[id as usize - 1].0, id));
            }
            for r in &regs[20_000..] {
                send(a, client, &r.1);
            }
        }
    });
    let mut got = BTreeMap::new();
    for (n, m) in messages.iter().enumerate() {
        for key in m {
            assert!(got.insert(key.clone(), n).is_none(), "PE {key:?} sent twice");
        }
    }
    // Messages are cut by size too: the removals come within the first window.
    let sent_before_removals: usize = messages[..3].iter().map(Vec::len).sum();
    assert!((1..8192).contains(&sent_before_removals), "{sent_before_removals} sent before the removals");
    for i in 1..=20_000u32 {
        let key = (regs[i as usize - 1].0.clone(), i);
        match got.get(&key) {
            None => assert!(i % 5 == 0, "PE {i}, registered throughout, was not sent"),
            Some(&n) => assert!(i % 5 != 0 || n < 3, "PE {i} was sent after it left"),
        }
    }
    assert!(got.keys().all(|k| k.1 <= 20_100));
    // Grouped by pool as read: at most one group per pool and read a message draws from (one
    // read, or the end of one and the start of the next).
    assert!(groups <= messages.len() * 2 * 23, "{groups} Pool Handles in {} messages", messages.len());
}

#[test]
fn an_export_of_few_own_pes_among_many_reads_a_bounded_part_of_the_table_per_message() {
    // 140,000 PEs of a peer (learnt from its table), then 5 of this registrar's own: an export
    // of its own PEs reads at most 131,072 slots per message, so the first message finds none
    // (and says there is more), and the second sends all five.
    let (mut a, client) = exporter(200_000);
    let peer = 0xb2b2_b2b2;
    for p in 0..140u32 {
        // A Handle Table Response's groups, as the coordinator hands them to a pool's shard:
        // the parameters of a registration (1,000 PEs a message), with the peer as home.
        let pes = (0..1_000).map(|k| {
            let i = 1 + p * 1_000 + k;
            let ip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
            ParamRepr::PoolElement(PoolElementRepr {
                pe_id: i,
                home_registrar: peer,
                registration_life: -1,
                user_transport: TransportRepr::new(TransportProtocol::Tcp, ip, 7000),
                policy: PolicyRepr::Known(Policy::RoundRobin),
                // A peer's PE comes with the transport its home supervises it over.
                asap_transport: Some(TransportRepr::new(TransportProtocol::Tcp, ip, 3863)),
            })
        });
        let params = std::iter::once(ParamRepr::PoolHandle(format!("peer-{p}").into_bytes())).chain(pes).collect();
        let m = MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap();
        let groups = Payload::from_slice(&m[4..]);
        a.on_message(0, ShardMsg::Enrp(EnrpMsg::Table { groups }), Time::ZERO, &mut Recorder::default());
    }
    assert_eq!(a.handlespace().owner_pe_count(peer), 140_000);
    let own: Vec<(String, Vec<u8>)> = (1..=5).map(registration).collect();
    for r in &own {
        send(&mut a, client, &r.1);
    }
    let (messages, _) = export(&mut a, true, |_, _| {});
    let counts: Vec<usize> = messages.iter().map(Vec::len).collect();
    assert_eq!(counts, [0, 5], "one message per 131,072 slots read");
    let sent: Vec<(String, u32)> = messages.concat();
    let expected: Vec<(String, u32)> = own.iter().zip(1..).map(|(r, i)| (r.0.clone(), i)).collect();
    assert_eq!(sent.len(), 5);
    assert!(expected.iter().all(|e| sent.contains(e)), "{sent:?}");
}
