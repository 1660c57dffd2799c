//! The procedures of one shard on their own: the PE change events and their reasons, and the
//! bound on timer work per call.

use std::sync::Arc;

use super::{Change, Procedures, ProceduresConfig, Reason, Request};
use crate::config::{Limits, Timers};
use crate::service::{ConnId, Outbox, ShardId, Tag};
use crate::time::Time;
use crate::wire::asap::{self, MessageType};
use crate::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr, Writer,
};

type Events = Vec<(Vec<u8>, u32, Change, Reason)>;

/// Collects keep-alive probes.
#[derive(Default)]
struct Probes(Vec<(ConnId, Vec<u8>)>);

impl Outbox<()> for Probes {
    fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        let mut b = Vec::new();
        write(&mut b);
        self.0.push((conn, b));
    }
    fn post(&mut self, _: ShardId, _: ()) {}
    fn close(&mut self, _: ConnId) {}
    fn hold(&mut self, _: ConnId, _: bool) {}
    fn pause(&mut self, _: ConnId, _: bool) {}
    fn input_paused(&self, _: ConnId) -> bool {
        false
    }
    fn connect(&mut self, _: std::net::SocketAddr, _: Tag) -> Option<ConnId> {
        None
    }
}

fn procedures(timers: Timers) -> Procedures {
    procedures_limited(Limits::default(), timers)
}

fn procedures_limited(limits: Limits, timers: Timers) -> Procedures {
    let config = ProceduresConfig {
        server_id: 9,
        limits,
        timers,
        seed: 1,
        budgets: Arc::default(),
        security: Default::default(),
    };
    Procedures::new(&config, 0, Time::ZERO)
}

fn conn(slot: u32) -> ConnId {
    ConnId { shard: 0, generation: 1, slot }
}

fn registration(pool: &str, pe_id: u32, port: u16, life: i32) -> Vec<u8> {
    let user = TransportRepr::new(TransportProtocol::Tcp, "192.0.2.1".parse().unwrap(), port);
    let pe = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: life,
        user_transport: user,
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: None,
    };
    let params = vec![ParamRepr::PoolHandle(pool.as_bytes().to_vec()), ParamRepr::PoolElement(pe)];
    MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap()
}

fn handle_and_id(t: MessageType, pool: &str, pe_id: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_and_id(&mut Writer::new(&mut buf), t, 0, pool.as_bytes(), Some(pe_id), None).unwrap();
    buf
}

fn handle(p: &mut Procedures, c: ConnId, ip: &str, msg: &[u8], now: Time, events: &mut Events) -> Vec<u8> {
    let peer = format!("{ip}:4000").parse().unwrap();
    let mut answer = Vec::new();
    p.handle(&Request { conn: c, peer, message: msg, room: 100 }, now, &mut answer, events);
    answer
}

#[test]
fn every_pe_change_is_reported_with_its_reason() {
    let timers = Timers {
        keep_alive_interval: 1_000,
        keep_alive_timeout: 100,
        unreachable_report_interval: 0,
        ..Timers::default()
    };
    let mut p = procedures(timers);
    let mut ev = Events::new();
    let (a, b) = (conn(1), conn(2));
    let t0 = Time::ZERO;
    handle(&mut p, a, "192.0.2.1", &registration("p", 1, 7000, -1), t0, &mut ev);
    handle(&mut p, a, "192.0.2.1", &registration("p", 1, 7001, -1), t0, &mut ev);
    handle(&mut p, a, "192.0.2.1", &registration("p", 2, 7002, 500), t0, &mut ev);
    handle(&mut p, a, "192.0.2.1", &registration("p", 3, 7003, -1), t0, &mut ev);
    handle(&mut p, a, "192.0.2.1", &registration("q", 4, 7004, -1), t0, &mut ev);
    handle(&mut p, b, "192.0.2.1", &registration("q", 5, 7005, -1), t0, &mut ev);
    handle(&mut p, a, "192.0.2.1", &handle_and_id(MessageType::Deregistration, "p", 1), t0, &mut ev);
    for ip in ["192.0.2.7", "192.0.2.8", "192.0.2.9"] {
        handle(&mut p, b, ip, &handle_and_id(MessageType::EndpointUnreachable, "p", 3), t0, &mut ev);
    }
    let mut out = Probes::default();
    p.on_timer(Time(500), &mut out, &mut ev); // PE 2's life ends
    p.on_timer(Time(1_000), &mut out, &mut ev); // probes for 4 and 5
    p.connection_lost(b, Time(1_050), &mut ev); // 5 goes with its connection
    p.on_timer(Time(1_100), &mut out, &mut ev); // 4 did not answer
    let got: Vec<(String, u32, Change, Reason)> =
        ev.into_iter().map(|(h, id, c, r)| (String::from_utf8(h).unwrap(), id, c, r)).collect();
    let want = [
        ("p", 1, Change::Added, Reason::Registration),
        ("p", 1, Change::Updated, Reason::Reregistration),
        ("p", 2, Change::Added, Reason::Registration),
        ("p", 3, Change::Added, Reason::Registration),
        ("q", 4, Change::Added, Reason::Registration),
        ("q", 5, Change::Added, Reason::Registration),
        ("p", 1, Change::Removed, Reason::Deregistration),
        ("p", 3, Change::Removed, Reason::Unreachable),
        ("p", 2, Change::Removed, Reason::Expiry),
        ("q", 5, Change::Removed, Reason::ConnectionLoss),
        ("q", 4, Change::Removed, Reason::KeepAliveFailure),
    ];
    let want: Vec<(String, u32, Change, Reason)> = want.iter().map(|&(h, i, c, r)| (h.to_string(), i, c, r)).collect();
    assert_eq!(got, want);
    assert_eq!(out.0.len(), 2, "two probes went out");
    assert_eq!(p.handlespace().pe_count(), 0);
    assert_eq!(p.supervised_pes(), 0);
}

#[test]
fn a_bulk_expiry_is_spread_over_timer_calls() {
    let mut p = procedures(Timers::default());
    let mut ev = Events::new();
    let peer = "192.0.2.1";
    for i in 0..2_000u32 {
        let c = conn(i / 500);
        handle(&mut p, c, peer, &registration(&format!("pool-{}", i % 50), i + 1, 7000, 1_000), Time::ZERO, &mut ev);
    }
    ev.clear();
    let mut out = Probes::default();
    let mut calls = 0;
    while p.next_timer().is_some_and(|t| t <= Time(1_000)) {
        let before = ev.len();
        p.on_timer(Time(1_000), &mut out, &mut ev);
        assert!(ev.len() - before <= 512, "at most 512 PEs per call");
        calls += 1;
    }
    assert_eq!(ev.len(), 2_000);
    assert!(ev.iter().all(|e| e.3 == Reason::Expiry));
    assert_eq!(calls, 4, "2,000 expiries in four calls");
    assert_eq!(p.handlespace().pe_count(), 0);
}

/// A Pool Element as a peer sends it.
fn peer_pe(pe_id: u32, home: u32, ip: [u8; 4], with_asap: bool) -> Vec<u8> {
    let user = TransportRepr::new(TransportProtocol::Tcp, ip.into(), 7000);
    let repr = PoolElementRepr {
        pe_id,
        home_registrar: home,
        registration_life: -1,
        user_transport: user,
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: with_asap.then(|| TransportRepr::new(TransportProtocol::Tcp, ip.into(), 3863)),
    };
    let mut b = Vec::new();
    repr.emit(&mut Writer::new(&mut b));
    b
}

fn learn(p: &mut Procedures, pool: &str, bytes: &[u8], ev: &mut Events) -> super::Learnt {
    let pe = crate::wire::pool_element::checked(crate::wire::Param::new(bytes, 0)).unwrap();
    p.learn(pool.as_bytes(), &pe, Reason::Peer, Time::ZERO, ev)
}

fn home_of(p: &Procedures, pool: &str, pe_id: u32) -> Option<u32> {
    let hs = p.handlespace();
    hs.lookup(pool.as_bytes(), pe_id).and_then(|k| hs.pe(k)).map(|pe| pe.home)
}

#[test]
fn peers_pes_are_stored_by_the_rules_of_wire_md_7() {
    use super::Learnt;
    let mut p = procedures(Timers::default()); // server id 9
    let mut ev = Events::new();
    // A peer's PE, with its home and ASAP transport; without either it is refused.
    assert!(matches!(learn(&mut p, "q", &peer_pe(1, 20, [192, 0, 2, 1], true), &mut ev), Learnt::Stored(_)));
    assert_eq!(learn(&mut p, "q", &peer_pe(2, 20, [192, 0, 2, 2], false), &mut ev), Learnt::Refused);
    assert_eq!(learn(&mut p, "q", &peer_pe(3, 0, [192, 0, 2, 3], true), &mut ev), Learnt::Refused);
    assert_eq!(home_of(&p, "q", 1), Some(20));
    let stored = p.handlespace().pe(p.handlespace().lookup(b"q", 1).unwrap()).unwrap();
    assert_eq!(stored.conn(), None, "a peer's PE has no connection here");
    assert_eq!(p.supervised_pes(), 0, "and is not supervised here");
    // Claims of a PE as ours, and about our own PE, are ignored (our view is authoritative).
    assert_eq!(learn(&mut p, "q", &peer_pe(4, 9, [192, 0, 2, 4], true), &mut ev), Learnt::Ignored);
    handle(&mut p, conn(1), "192.0.2.1", &registration("r", 5, 7000, -1), Time::ZERO, &mut ev);
    assert_eq!(home_of(&p, "r", 5), Some(9));
    let same_pe_elsewhere = peer_pe(5, 3, [192, 0, 2, 1], true);
    assert_eq!(learn(&mut p, "r", &same_pe_elsewhere, &mut ev), Learnt::Ignored);
    assert_eq!(home_of(&p, "r", 5), Some(9));
    // A collision with another PE (other addresses): the owner with the lower id keeps it.
    assert_eq!(learn(&mut p, "r", &peer_pe(5, 30, [198, 51, 100, 1], true), &mut ev), Learnt::Ignored, "30 > 9");
    assert!(matches!(learn(&mut p, "r", &peer_pe(5, 3, [198, 51, 100, 1], true), &mut ev), Learnt::Stored(_)));
    assert_eq!(home_of(&p, "r", 5), Some(3), "3 < 9: ours lost");
    assert_eq!(p.take_to_close(), vec![conn(1)], "the losing PE's connection is closed");
    assert!(ev.iter().any(|e| e.1 == 5 && e.2 == Change::Removed && e.3 == Reason::Collision));
    // Between two peers' claims, the lower id too, whatever the order they arrive in.
    learn(&mut p, "q", &peer_pe(1, 10, [203, 0, 113, 1], true), &mut ev);
    assert_eq!(home_of(&p, "q", 1), Some(10));
    learn(&mut p, "q", &peer_pe(1, 20, [192, 0, 2, 1], true), &mut ev);
    assert_eq!(home_of(&p, "q", 1), Some(10));
    // The same PE, moved from one peer to another (same addresses): it follows.
    learn(&mut p, "q", &peer_pe(1, 40, [203, 0, 113, 1], true), &mut ev);
    assert_eq!(home_of(&p, "q", 1), Some(40));
    // A delete applies only to the entry of the same home.
    assert!(!p.forget(b"q", 1, 10, Time::ZERO, &mut ev));
    assert!(p.forget(b"q", 1, 40, Time::ZERO, &mut ev));
    assert_eq!(home_of(&p, "q", 1), None);
    p.handlespace().validate().unwrap();
}

#[test]
fn a_takeover_moves_ownership_and_supervision() {
    let mut p = procedures(Timers::default()); // server id 9
    let mut ev = Events::new();
    for id in 1..=3 {
        learn(&mut p, "q", &peer_pe(id, 20, [192, 0, 2, id as u8], true), &mut ev);
    }
    learn(&mut p, "q", &peer_pe(4, 30, [192, 0, 2, 4], true), &mut ev);
    ev.clear();
    assert_eq!(p.take_over(20, 9, Time(100), &mut ev), 3);
    assert_eq!(p.supervised_pes(), 3, "this registrar now supervises what it took over");
    assert!(ev.iter().all(|e| e.2 == Change::Updated && e.3 == Reason::Takeover) && ev.len() == 3);
    assert_eq!(p.handlespace().owner_pe_count(9), 3);
    assert_eq!(p.take_over(30, 40, Time(100), &mut ev), 1, "a peer's takeover of another peer");
    assert_eq!(home_of(&p, "q", 4), Some(40));
    assert_eq!(p.supervised_pes(), 3);
    // The first probe of a taken-over PE goes out at once, over a connection to its ASAP
    // transport (the connect is refused here: the probe waits, then the PE fails).
    let mut out = Probes::default();
    p.on_timer(Time(100), &mut out, &mut ev);
    assert!(out.0.is_empty(), "no connection to probe over yet");
}

/// `limits.max_pes` bounds this registrar's own PEs and `limits.max_peer_pes` the peers', each
/// apart: peers' PEs up to theirs leave room for ours up to ours, in one shard's handlespace.
#[test]
fn own_and_peers_pes_are_limited_apart() {
    use super::Learnt;
    let mut p = procedures_limited(Limits { max_pes: 2, max_peer_pes: 5, ..Limits::default() }, Timers::default());
    let mut ev = Events::default();
    for id in 1..=5 {
        let stored = learn(&mut p, "q", &peer_pe(id, 20, [192, 0, 2, id as u8], true), &mut ev);
        assert!(matches!(stored, Learnt::Stored(_)), "peer PE {id}: {stored:?}");
    }
    assert_eq!(learn(&mut p, "q", &peer_pe(6, 20, [192, 0, 2, 6], true), &mut ev), Learnt::Refused);
    for id in 11..=12 {
        let answer = handle(&mut p, conn(1), "192.0.2.1", &registration("q", id, 80, 30_000), Time::ZERO, &mut ev);
        assert_eq!(answer[0], MessageType::RegistrationResponse as u8);
        assert_eq!(home_of(&p, "q", id), Some(9), "own PE {id} is refused: {answer:?}");
    }
    let answer = handle(&mut p, conn(1), "192.0.2.1", &registration("q", 13, 80, 30_000), Time::ZERO, &mut ev);
    assert_eq!(home_of(&p, "q", 13), None, "a third own PE is beyond limits.max_pes: {answer:?}");
    assert_eq!(p.handlespace().pe_count(), 7);
}
