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
    let config = ProceduresConfig { server_id: 9, limits: Limits::default(), timers, seed: 1, budgets: Arc::default() };
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
