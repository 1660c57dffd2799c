//! The cores without sockets: every timer, retry, hunt and failover rule, driven by hand with
//! virtual time. Seeds are fixed.

use core::net::SocketAddr;

use super::config::{SessionConfig, Timers};
use super::frame::{self, Frame, Kind, FLAG_RESEND};
use super::node::{PuNode, PuNodeEvent};
use super::pe::{PeConfig, PeCore, PeEvent, PeSpec};
use super::pu::{PuConfig, PuCore, PuEvent, ResolveError};
use super::registrars::RegistrarTable;
use super::server::{ServerEvent, SessionServer};
use super::session::{SessionCore, SessionEvent, SessionId, SessionRequest};
use super::{ConnToken, Ctx, Io, Node};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType, FLAG_HOME, FLAG_REJECT};
use crate::wire::{
    CauseCode, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr,
    Writer,
};

const R1: &str = "192.0.2.1:3863";
const R2: &str = "192.0.2.2:3863";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn timers() -> Timers {
    Timers {
        t1_request: 100,
        t2_registration: 200,
        t3_deregistration: 300,
        t4_reregistration: 10_000,
        t5_server_hunt: 5_000,
        t7_outdate: 1_000,
        max_reg_attempts: 2,
        max_request_retransmit: 2,
        stale_cache: 2_000,
        connect_timeout: 50,
        hunt_retry: 500,
    }
}

fn drain(cx: &mut Ctx) -> Vec<Io> {
    std::iter::from_fn(|| cx.poll_io()).collect()
}

/// The connection asked for, to which address.
fn connects(io: &[Io]) -> Vec<(ConnToken, SocketAddr)> {
    io.iter()
        .filter_map(|i| match i {
            Io::Connect { conn, addr, .. } => Some((*conn, *addr)),
            _ => None,
        })
        .collect()
}

/// The ASAP messages sent (type, whole message).
fn sent(io: &[Io]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in io {
        if let Io::Send { bytes, .. } = i {
            let framer = crate::wire::Framer::new(Protocol::Asap, 65535);
            out.extend(framer.frames(bytes).map(|m| m.unwrap().to_vec()));
        }
    }
    out
}

fn types(msgs: &[Vec<u8>]) -> Vec<MessageType> {
    msgs.iter().map(|m| MessageType::from_u8(m[0]).unwrap()).collect()
}

fn tcp(ip: &str, port: u16) -> TransportRepr {
    TransportRepr::new(TransportProtocol::Tcp, ip.parse().unwrap(), port)
}

fn spec(id: u32) -> PeSpec {
    PeSpec {
        pool_handle: b"echo".to_vec(),
        pe_id: Some(id),
        user_transport: tcp("192.0.2.10", 7000),
        policy: PolicyRepr::Known(Policy::RoundRobin),
        registration_life: 60_000,
        asap_transport: None,
    }
}

fn pe_core(registrars: &[&str]) -> PeCore {
    PeCore::new(PeConfig {
        registrars: registrars.iter().map(|s| addr(s)).collect(),
        timers: timers(),
        local: None,
        seed: 7,
    })
}

fn response(handle: &[u8], id: u32, reject: Option<CauseCode>) -> Vec<u8> {
    let mut b = Vec::new();
    let flags = if reject.is_some() { FLAG_REJECT } else { 0 };
    let error = reject.map(|c| (c, &[][..]));
    asap::emit_handle_and_id(
        &mut Writer::new(&mut b),
        MessageType::RegistrationResponse,
        flags,
        handle,
        Some(id),
        error,
    )
    .unwrap();
    b
}

fn keep_alive(home: bool, server_id: u32, handle: &[u8], id: Option<u32>) -> Vec<u8> {
    let mut params = vec![ParamRepr::PoolHandle(handle.to_vec())];
    params.extend(id.map(ParamRepr::PeIdentifier));
    let mut m = MessageRepr::new(
        Protocol::Asap,
        MessageType::EndpointKeepAlive as u8,
        if home { FLAG_HOME } else { 0 },
        params,
    );
    m.fixed.push(server_id);
    m.to_bytes().unwrap()
}

/// Registers PE `id` at the first registrar of `pe`; returns the registrar connection.
fn registered(pe: &mut PeCore, cx: &mut Ctx, id: u32, now: Time) -> ConnToken {
    pe.add(cx, spec(id), now).unwrap();
    let (conn, _) = connects(&drain(cx))[0];
    pe.on_connected(cx, conn, now);
    assert_eq!(types(&sent(&drain(cx))), [MessageType::Registration]);
    pe.on_data(cx, conn, &response(b"echo", id, None), now);
    conn
}

#[test]
fn pe_retries_after_t2_then_hunts_another_registrar() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1, R2]);
    let reg = pe.add(&mut cx, spec(5), Time(0)).unwrap();
    let io = drain(&mut cx);
    let (c1, a1) = connects(&io)[0];
    assert_eq!(a1, addr(R1));
    pe.on_connected(&mut cx, c1, Time(0));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::Registration]);
    assert_eq!(pe.next_deadline(), Some(Time(200)), "T2");
    pe.on_timer(&mut cx, Time(199));
    assert!(drain(&mut cx).is_empty());
    pe.on_timer(&mut cx, Time(200));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::Registration], "second try (MAX-REG-ATTEMPT 2)");
    pe.on_timer(&mut cx, Time(400));
    let io = drain(&mut cx);
    assert!(io.contains(&Io::Close { conn: c1 }), "gives the silent registrar up");
    let (c2, a2) = connects(&io)[0];
    assert_eq!(a2, addr(R2), "hunts the next registrar");
    assert!(matches!(pe.poll_event(), Some(PeEvent::RegistrarLost { .. })));
    pe.on_connected(&mut cx, c2, Time(401));
    let msgs = sent(&drain(&mut cx));
    let Body::Registration { pool_element, .. } = asap::parse(&msgs[0]).unwrap().into_body() else { panic!() };
    assert_eq!(pool_element.pe_id(), 5, "same PE id at the new registrar");
    pe.on_data(&mut cx, c2, &response(b"echo", 5, None), Time(402));
    assert_eq!(pe.poll_event(), Some(PeEvent::Registered { reg, pe_id: 5, registrar: addr(R2) }));
    assert!(pe.is_registered(reg));
}

#[test]
fn pe_reregisters_every_t4_and_on_change_and_checks_the_answers() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1]);
    let conn = registered(&mut pe, &mut cx, 9, Time(0));
    let reg = match pe.poll_event() {
        Some(PeEvent::Registered { reg, .. }) => reg,
        e => panic!("{e:?}"),
    };
    // T4 = 10 s here (shorter than the life of 60 s minus 20 s).
    assert_eq!(pe.next_deadline(), Some(Time(10_000)));
    assert_eq!(timers().reregistration_period(60_000), 10_000);
    assert_eq!(Timers::default().reregistration_period(60_000), 40_000, "life - 20 s when shorter than T4");
    assert_eq!(Timers::default().reregistration_period(-1), 600_000);
    pe.on_timer(&mut cx, Time(10_000));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::Registration]);
    pe.on_data(&mut cx, conn, &response(b"echo", 9, None), Time(10_001));
    assert_eq!(pe.poll_event(), None, "a re-registration accepted is quiet");
    // A load change re-registers at once, with the new policy values.
    pe.update(&mut cx, reg, Time(41_000), |s| s.policy = PolicyRepr::Known(Policy::LeastUsed { load: 77 }));
    let msgs = sent(&drain(&mut cx));
    let Body::Registration { pool_element, .. } = asap::parse(&msgs[0]).unwrap().into_body() else { panic!() };
    assert_eq!(pool_element.policy().to_repr(), PolicyRepr::Known(Policy::LeastUsed { load: 77 }));
    // Its answer is checked: a rejection is reported and counted as a failed try.
    pe.on_data(&mut cx, conn, &response(b"echo", 9, Some(CauseCode::LACK_OF_RESOURCES)), Time(41_001));
    assert_eq!(pe.poll_event(), Some(PeEvent::Rejected { reg, cause: CauseCode::LACK_OF_RESOURCES }));
    pe.on_timer(&mut cx, Time(41_200));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::Registration], "tried again after T2");
}

#[test]
fn pe_takes_a_fresh_id_on_cause_4() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1]);
    let reg = pe.add(&mut cx, spec(3), Time(0)).unwrap();
    let (conn, _) = connects(&drain(&mut cx))[0];
    pe.on_connected(&mut cx, conn, Time(0));
    drain(&mut cx);
    pe.on_data(&mut cx, conn, &response(b"echo", 3, Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER)), Time(1));
    let Some(PeEvent::NewPeId { old: 3, new, .. }) = pe.poll_event() else { panic!() };
    assert_ne!(new, 3);
    assert_eq!(pe.pe_id(reg), Some(new));
    let msgs = sent(&drain(&mut cx));
    let Body::Registration { pool_element, .. } = asap::parse(&msgs[0]).unwrap().into_body() else { panic!() };
    assert_eq!(pool_element.pe_id(), new, "registers again at once with the new id");
}

#[test]
fn pe_answers_keep_alives_for_its_own_pes_only_and_adopts_a_home() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1]);
    let conn = registered(&mut pe, &mut cx, 1, Time(0));
    let reg2 = pe.add(&mut cx, PeSpec { pool_handle: b"other".to_vec(), ..spec(2) }, Time(0)).unwrap();
    drain(&mut cx);
    pe.on_data(&mut cx, conn, &response(b"other", 2, None), Time(1));
    assert!(pe.is_registered(reg2));
    // Someone else's PE: no answer.
    pe.on_data(&mut cx, conn, &keep_alive(false, 0x11, b"echo", Some(99)), Time(2));
    assert!(sent(&drain(&mut cx)).is_empty());
    // Its own: one ack.
    pe.on_data(&mut cx, conn, &keep_alive(false, 0x11, b"echo", Some(1)), Time(3));
    let acks = sent(&drain(&mut cx));
    assert_eq!(types(&acks), [MessageType::EndpointKeepAliveAck]);
    // Without PE Identifier (rsplib): every registration of this PE there, each acked.
    pe.on_data(&mut cx, conn, &keep_alive(false, 0x11, b"whatever", None), Time(4));
    let mut acked: Vec<(Vec<u8>, u32)> = sent(&drain(&mut cx))
        .iter()
        .map(|m| match asap::parse(m).unwrap().into_body() {
            Body::EndpointKeepAliveAck { pool_handle, pe_id } => (pool_handle.to_vec(), pe_id),
            b => panic!("{b:?}"),
        })
        .collect();
    acked.sort();
    assert_eq!(acked, [(b"echo".to_vec(), 1), (b"other".to_vec(), 2)]);
    // H flag from another registrar: it is home now, and re-registrations name it.
    while pe.poll_event().is_some() {}
    pe.on_data(&mut cx, conn, &keep_alive(true, 0x22, b"echo", Some(1)), Time(5));
    assert_eq!(pe.poll_event(), Some(PeEvent::HomeChanged { server_id: 0x22 }));
    assert_eq!(pe.home(), 0x22);
    drain(&mut cx);
    pe.on_timer(&mut cx, Time(40_000));
    let msgs = sent(&drain(&mut cx));
    let Body::Registration { pool_element, .. } = asap::parse(&msgs[0]).unwrap().into_body() else { panic!() };
    assert_eq!(pool_element.home_registrar(), 0x22);
}

#[test]
fn pe_adopts_a_registrar_that_dials_it_with_the_h_flag() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1]);
    let old = registered(&mut pe, &mut cx, 1, Time(0));
    let inbound = ConnToken::accepted(1);
    pe.on_accepted(&mut cx, inbound, addr(R2));
    pe.on_data(&mut cx, inbound, &keep_alive(true, 0x33, b"echo", Some(1)), Time(10));
    let io = drain(&mut cx);
    assert!(io.contains(&Io::Close { conn: old }), "the old registrar connection is closed");
    let on_new: Vec<Vec<u8>> = sent(
        &io.iter().filter(|i| matches!(i, Io::Send { conn, .. } if *conn == inbound)).cloned().collect::<Vec<_>>(),
    );
    assert_eq!(types(&on_new), [MessageType::EndpointKeepAliveAck, MessageType::Registration]);
    assert_eq!(pe.registrar(), Some(addr(R2)));
}

#[test]
fn pe_registers_again_at_once_when_its_connection_drops() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1, R2]);
    let conn = registered(&mut pe, &mut cx, 4, Time(0));
    while pe.poll_event().is_some() {}
    pe.on_closed(&mut cx, conn, Time(100));
    assert_eq!(pe.poll_event(), Some(PeEvent::RegistrarLost { registrar: addr(R1) }));
    let (c2, a2) = connects(&drain(&mut cx))[0];
    assert_eq!(a2, addr(R2));
    pe.on_connected(&mut cx, c2, Time(100));
    let msgs = sent(&drain(&mut cx));
    let Body::Registration { pool_element, .. } = asap::parse(&msgs[0]).unwrap().into_body() else { panic!() };
    assert_eq!(pool_element.pe_id(), 4);
}

#[test]
fn hunt_pauses_after_a_round_and_reports_t5_once() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1, R2]);
    pe.add(&mut cx, spec(1), Time(0)).unwrap();
    let mut now = Time(0);
    let mut tried = Vec::new();
    let mut reported = 0;
    while now < Time(6_000) {
        loop {
            let c = connects(&drain(&mut cx));
            if c.is_empty() {
                break;
            }
            for (conn, a) in c {
                tried.push((now.0, a));
                pe.on_closed(&mut cx, conn, now); // refused
            }
        }
        while let Some(e) = pe.poll_event() {
            reported += usize::from(e == PeEvent::NoRegistrar);
        }
        now = pe.next_deadline().unwrap().max(Time(now.0 + 1));
        pe.on_timer(&mut cx, now);
    }
    assert_eq!(&tried[..4], &[(0, addr(R1)), (0, addr(R2)), (500, addr(R1)), (500, addr(R2))]);
    assert_eq!(reported, 1, "T5 reported once; the hunt goes on");
    assert!(tried.last().unwrap().0 > 5_000);
}

#[test]
fn pe_deregisters_and_gives_up_after_t3() {
    let mut cx = Ctx::new();
    let mut pe = pe_core(&[R1]);
    let conn = registered(&mut pe, &mut cx, 8, Time(0));
    let Some(PeEvent::Registered { reg, .. }) = pe.poll_event() else { panic!() };
    pe.deregister(&mut cx, reg, Time(10));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::Deregistration]);
    pe.on_timer(&mut cx, Time(309));
    assert!(!pe.is_empty());
    pe.on_timer(&mut cx, Time(310));
    assert_eq!(pe.poll_event(), Some(PeEvent::Deregistered { reg }));
    assert!(pe.is_empty());
    let _ = conn;
}

fn announce(server_id: u32, ip: &str, port: u16) -> Vec<u8> {
    let mut m = MessageRepr::new(
        Protocol::Asap,
        MessageType::ServerAnnounce as u8,
        0,
        vec![ParamRepr::Transport(tcp(ip, port))],
    );
    m.fixed.push(server_id);
    m.to_bytes().unwrap()
}

#[test]
fn announced_registrars_join_the_table_and_age_out_after_t7() {
    let mut t = RegistrarTable::new(vec![addr(R1)]);
    let src = addr("192.0.2.9:40000");
    assert!(t.on_announce(&announce(7, "192.0.2.5", 3863), src, Time(0)));
    assert!(t.on_announce(&announce(8, "0.0.0.0", 3900), src, Time(500)));
    assert!(!t.on_announce(b"garbage", src, Time(500)));
    assert_eq!(t.candidates(), [addr(R1), addr("192.0.2.9:3900"), addr("192.0.2.5:3863")]);
    assert_eq!(t.server_id(addr("192.0.2.5:3863")), Some(7));
    t.expire(Time(999), 1000);
    assert_eq!(t.candidates().len(), 3);
    t.expire(Time(1000), 1000);
    assert_eq!(t.candidates(), [addr(R1), addr("192.0.2.9:3900")], "forgotten T7 after its last announce");
    t.expire(Time(1500), 1000);
    assert_eq!(t.candidates(), [addr(R1)], "configured ones stay");
}

fn pe_repr(id: u32, ips: &[&str], port: u16, policy: Policy) -> PoolElementRepr {
    let mut t = TransportRepr::new(
        if ips.len() > 1 { TransportProtocol::Sctp } else { TransportProtocol::Tcp },
        ips[0].parse().unwrap(),
        port,
    );
    for ip in &ips[1..] {
        t.addresses.push(ip.parse().unwrap());
    }
    PoolElementRepr {
        pe_id: id,
        home_registrar: 1,
        registration_life: 30_000,
        user_transport: t,
        policy: PolicyRepr::Known(policy),
        asap_transport: None,
    }
}

fn resolution_response(handle: &[u8], pes: &[PoolElementRepr]) -> Vec<u8> {
    let mut params =
        vec![ParamRepr::PoolHandle(handle.to_vec()), ParamRepr::Policy(PolicyRepr::Known(Policy::RoundRobin))];
    params.extend(pes.iter().cloned().map(ParamRepr::PoolElement));
    MessageRepr::new(Protocol::Asap, MessageType::HandleResolutionResponse as u8, 0, params).to_bytes().unwrap()
}

fn unknown_pool(handle: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    Writer::new(&mut b)
        .message(MessageType::HandleResolutionResponse as u8, 0, |w| {
            w.tlv_bytes(crate::wire::ParamType::POOL_HANDLE, handle);
            crate::wire::cause::emit_operation_error(w, CauseCode::UNKNOWN_POOL_HANDLE, &[]);
        })
        .unwrap();
    b
}

fn pu_core(registrars: &[&str], stale: u64) -> PuCore {
    let config = PuConfig {
        registrars: registrars.iter().map(|s| addr(s)).collect(),
        timers: Timers { stale_cache: stale, ..timers() },
        seed: 3,
        ..PuConfig::default()
    };
    PuCore::new(config, Time(0))
}

#[test]
fn pu_retransmits_after_t1_then_hunts_then_fails_after_t5() {
    let mut cx = Ctx::new();
    let mut pu = pu_core(&[R1, R2], 0);
    pu.resolve(&mut cx, b"echo", false, Time(0));
    let (c1, _) = connects(&drain(&mut cx))[0];
    pu.on_connected(&mut cx, c1, Time(0));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::HandleResolution]);
    pu.on_timer(&mut cx, Time(100));
    pu.on_timer(&mut cx, Time(200));
    assert_eq!(
        types(&sent(&drain(&mut cx))),
        [MessageType::HandleResolution, MessageType::HandleResolution],
        "MAX-REQUEST-RETRANSMIT retries"
    );
    pu.on_timer(&mut cx, Time(300));
    let io = drain(&mut cx);
    assert!(io.contains(&Io::Close { conn: c1 }));
    let (c2, a2) = connects(&io)[0];
    assert_eq!(a2, addr(R2));
    pu.on_connected(&mut cx, c2, Time(300));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::HandleResolution], "asked again at the new registrar");
    let pes = [pe_repr(1, &["192.0.2.20"], 7000, Policy::RoundRobin)];
    pu.on_data(&mut cx, c2, &resolution_response(b"echo", &pes), Time(301));
    assert_eq!(
        pu.poll_event(),
        Some(PuEvent::Resolved {
            pool_handle: b"echo".to_vec(),
            policy: Some(PolicyRepr::Known(Policy::RoundRobin)),
            pes: pes.to_vec(),
            from_cache: false
        })
    );
    assert_eq!(pu.stats.resolutions_sent, 4);
    // Unknown pools fail with the cause; a registrar that never comes fails after T5.
    pu.resolve(&mut cx, b"nope", false, Time(400));
    drain(&mut cx);
    pu.on_data(&mut cx, c2, &unknown_pool(b"nope"), Time(401));
    assert_eq!(
        pu.poll_event(),
        Some(PuEvent::Failed { pool_handle: b"nope".to_vec(), error: ResolveError::UnknownPool })
    );
    let mut lonely = pu_core(&[R1], 0);
    lonely.resolve(&mut cx, b"echo", false, Time(0));
    let mut now = Time(0);
    let failed = loop {
        for (conn, _) in connects(&drain(&mut cx)) {
            lonely.on_closed(&mut cx, conn, now);
        }
        if let Some(e) = lonely.poll_event() {
            break (now, e);
        }
        now = lonely.next_deadline().unwrap();
        lonely.on_timer(&mut cx, now);
    };
    assert_eq!(
        failed,
        (Time(5_000), PuEvent::Failed { pool_handle: b"echo".to_vec(), error: ResolveError::NoRegistrar })
    );
}

#[test]
fn pu_cache_serves_by_policy_until_stale_and_forgets_unreachable_pes() {
    let mut cx = Ctx::new();
    let mut pu = pu_core(&[R1], 2_000);
    pu.resolve(&mut cx, b"echo", false, Time(0));
    let (c, _) = connects(&drain(&mut cx))[0];
    pu.on_connected(&mut cx, c, Time(0));
    drain(&mut cx);
    let pes: Vec<_> = (1..=3).map(|i| pe_repr(i, &["192.0.2.20"], 7000 + i as u16, Policy::RoundRobin)).collect();
    pu.on_data(&mut cx, c, &resolution_response(b"echo", &pes), Time(1));
    pu.poll_event();
    // From the cache, round robin: each selection starts one PE later.
    let firsts: Vec<u32> = (0..6).map(|_| pu.select(b"echo", 3)[0].pe_id).collect();
    let mut sorted = firsts[..3].to_vec();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
    assert_eq!(firsts[..3], firsts[3..]);
    pu.resolve(&mut cx, b"echo", false, Time(1_000));
    assert!(matches!(pu.poll_event(), Some(PuEvent::Resolved { from_cache: true, .. })));
    assert!(sent(&drain(&mut cx)).is_empty(), "no request to the registrar");
    // An unreachable PE leaves the cache and is reported.
    pu.report_unreachable(&mut cx, b"echo", 2, Time(1_001));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::EndpointUnreachable]);
    let mut left: Vec<u32> = pu.select(b"echo", 3).iter().map(|p| p.pe_id).collect();
    left.sort();
    assert_eq!(left, [1, 3]);
    // Stale after the stale-cache time: the registrar is asked again.
    pu.resolve(&mut cx, b"echo", false, Time(2_001));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::HandleResolution]);
    assert_eq!(pu.stats.cache_hits, 1);
    // Without a cache every resolution asks the registrar.
    let mut nocache = pu_core(&[R1], 0);
    nocache.resolve(&mut cx, b"echo", false, Time(0));
    let (c, _) = connects(&drain(&mut cx))[0];
    nocache.on_connected(&mut cx, c, Time(0));
    nocache.on_data(&mut cx, c, &resolution_response(b"echo", &pes), Time(1));
    nocache.resolve(&mut cx, b"echo", false, Time(2));
    assert_eq!(types(&sent(&drain(&mut cx))), [MessageType::HandleResolution, MessageType::HandleResolution]);
}

#[test]
fn pu_queues_reports_while_no_registrar_is_connected() {
    let mut cx = Ctx::new();
    let mut pu = pu_core(&[R1], 0);
    pu.report_unreachable(&mut cx, b"echo", 5, Time(0));
    let io = drain(&mut cx);
    assert!(sent(&io).is_empty());
    let (c, _) = connects(&io)[0];
    pu.on_connected(&mut cx, c, Time(1));
    let msgs = sent(&drain(&mut cx));
    assert_eq!(types(&msgs), [MessageType::EndpointUnreachable]);
    assert!(matches!(asap::parse(&msgs[0]).unwrap().into_body(), Body::EndpointUnreachable { pe_id: 5, .. }));
}

// ---- Session layer ----

fn session_cfg(retrieval: bool) -> SessionConfig {
    SessionConfig {
        heartbeat_interval: 100,
        heartbeat_timeout: 100,
        retrieval,
        connect_timeout: 50,
        ..Default::default()
    }
}

/// Frames written on any connection, decoded.
fn frames(io: &[Io]) -> Vec<(Kind, u8, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in io {
        if let Io::Send { bytes, .. } = i {
            let mut at = 0;
            while let Some((f, len)) = frame::decode(&bytes[at..], 1 << 20).unwrap() {
                let k = match f {
                    Frame::Hello => (Kind::Hello, 0, 0, vec![]),
                    Frame::Data { seq, resend, payload, .. } => (Kind::Data, u8::from(resend), seq, payload.to_vec()),
                    Frame::Ack { seq } => (Kind::Ack, 0, seq, vec![]),
                    Frame::Heartbeat { nonce } => (Kind::Heartbeat, 0, nonce, vec![]),
                    Frame::HeartbeatAck { nonce } => (Kind::HeartbeatAck, 0, nonce, vec![]),
                    Frame::Asap(m) => (Kind::Asap, m[0], 0, m.to_vec()),
                    Frame::Error(e) => (Kind::Error, 0, 0, e.as_bytes().to_vec()),
                };
                out.push(k);
                at += len;
            }
        }
    }
    out
}

fn hello() -> Vec<u8> {
    let mut b = Vec::new();
    frame::hello(&mut b);
    b
}

fn asap_frame(build: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut b = Vec::new();
    frame::asap_message(&mut b, build);
    b
}

/// A session connected to the first candidate of `pes`; returns it and its connection.
fn open(pes: &[PoolElementRepr], retrieval: bool, cx: &mut Ctx) -> (SessionCore, ConnToken) {
    let mut s = SessionCore::new(SessionId(1), b"echo".to_vec(), session_cfg(retrieval));
    assert_eq!(s.poll_request(), Some(SessionRequest::Candidates { fresh: false }));
    s.offer(cx, pes, Time(0));
    let (conn, _) = connects(&drain(cx))[0];
    s.on_connected(cx, conn, Time(0));
    s.on_data(cx, conn, &hello(), Time(0));
    drain(cx);
    while s.poll_event().is_some() {}
    (s, conn)
}

fn next_target(s: &mut SessionCore, cx: &mut Ctx) -> (ConnToken, SocketAddr) {
    let _ = s;
    connects(&drain(cx))[0]
}

#[test]
fn failover_goes_to_other_pes_first_then_other_legs_and_reports_each_failed_pe() {
    let mut cx = Ctx::new();
    let a = pe_repr(1, &["192.0.2.1", "198.51.100.1"], 7000, Policy::RoundRobin);
    let b = pe_repr(2, &["192.0.2.2", "198.51.100.2"], 7000, Policy::RoundRobin);
    let (mut s, conn) = open(&[a.clone(), b.clone()], true, &mut cx);
    assert_eq!(s.pe_id(), Some(1));
    s.on_closed(&mut cx, conn, Time(10));
    assert_eq!(s.poll_request(), Some(SessionRequest::Unreachable { pe_id: 1 }));
    let (c, target) = next_target(&mut s, &mut cx);
    assert_eq!(target, addr("192.0.2.2:7000"), "another PE first");
    s.on_closed(&mut cx, c, Time(11));
    assert_eq!(s.poll_request(), Some(SessionRequest::Unreachable { pe_id: 2 }));
    // No other PE planned: the node is asked (cache, which forgot the failed ones), then the
    // registrar, before any other leg is tried.
    assert_eq!(s.poll_request(), Some(SessionRequest::Candidates { fresh: false }));
    s.offer(&mut cx, &[], Time(11));
    assert_eq!(s.poll_request(), Some(SessionRequest::Candidates { fresh: true }));
    s.offer(&mut cx, &[a.clone(), b.clone()], Time(11));
    let (c, target) = next_target(&mut s, &mut cx);
    assert_eq!(target, addr("198.51.100.1:7000"), "then the other leg of the PE that failed first");
    s.on_closed(&mut cx, c, Time(12));
    let (c, target) = next_target(&mut s, &mut cx);
    assert_eq!(target, addr("198.51.100.2:7000"));
    s.on_closed(&mut cx, c, Time(13));
    // Nothing left: the registrar is asked again; it names the same PEs, all tried.
    assert_eq!(s.poll_request(), Some(SessionRequest::Candidates { fresh: true }));
    s.offer(&mut cx, &[a.clone(), b.clone()], Time(13));
    assert!(drain(&mut cx).is_empty(), "every leg was tried in this round");
    assert!(std::iter::from_fn(|| s.poll_event()).any(|e| e == SessionEvent::NoPoolElement));
    s.on_timer(&mut cx, Time(13 + 500));
    assert_eq!(s.poll_request(), Some(SessionRequest::Candidates { fresh: true }), "after retry_delay");
    s.offer(&mut cx, &[a, b], Time(513));
    assert_eq!(next_target(&mut s, &mut cx).1, addr("192.0.2.1:7000"), "a new round");
}

#[test]
fn a_business_card_is_honoured_over_the_policy() {
    let mut cx = Ctx::new();
    let pes: Vec<_> = (1..=3).map(|i| pe_repr(i, &["192.0.2.1"], 7000 + i as u16, Policy::RoundRobin)).collect();
    let (mut s, conn) = open(&pes, true, &mut cx);
    // PE 1 names PE 3 then PE 2; a later card replaces an earlier one.
    let card = |order: &[usize]| {
        let list: Vec<PoolElementRepr> = order.iter().map(|&i| pes[i].clone()).collect();
        asap_frame(|w| frame::business_card(w, b"echo", &PolicyRepr::Known(Policy::RoundRobin), &list))
    };
    s.on_data(&mut cx, conn, &card(&[1, 2]), Time(1));
    s.on_data(&mut cx, conn, &card(&[2, 1]), Time(2));
    assert!(matches!(s.poll_event(), Some(SessionEvent::BusinessCard(_))));
    s.on_closed(&mut cx, conn, Time(3));
    // The node offers the policy's order (2, 3); the card says 3 first.
    let _ = s.poll_request();
    assert_eq!(next_target(&mut s, &mut cx).1.port(), 7003);
}

#[test]
fn the_newest_cookie_and_unacked_messages_reach_the_next_pe_in_order_with_the_resend_flag() {
    let mut cx = Ctx::new();
    let pes: Vec<_> = (1..=2).map(|i| pe_repr(i, &["192.0.2.1"], 7000 + i as u16, Policy::RoundRobin)).collect();
    let (mut s, conn) = open(&pes, true, &mut cx);
    for i in 1..=4u8 {
        s.send(&mut cx, 0, vec![i]).unwrap();
    }
    assert_eq!(frames(&drain(&mut cx)).len(), 4);
    let ack = |seq| {
        let mut b = Vec::new();
        frame::encode(&mut b, Kind::Ack, 0, 0, seq, &[]);
        b
    };
    s.on_data(&mut cx, conn, &ack(2), Time(1));
    s.on_data(&mut cx, conn, &asap_frame(|w| frame::cookie(w, false, b"old")), Time(1));
    s.on_data(&mut cx, conn, &asap_frame(|w| frame::cookie(w, false, b"new")), Time(1));
    assert_eq!(s.cookie(), Some(&b"new"[..]));
    s.on_closed(&mut cx, conn, Time(2));
    s.send(&mut cx, 0, vec![5]).unwrap(); // while failing over: not sent yet
    let (c, _) = next_target(&mut s, &mut cx);
    s.on_connected(&mut cx, c, Time(3));
    let f = frames(&drain(&mut cx));
    let kinds: Vec<Kind> = f.iter().map(|x| x.0).collect();
    assert_eq!(kinds, [Kind::Hello, Kind::Asap, Kind::Data, Kind::Data, Kind::Data, Kind::Data]);
    assert_eq!(f[1].1, MessageType::CookieEcho as u8);
    assert!(matches!(asap::parse(&f[1].3).unwrap().into_body(), Body::CookieEcho { cookie: b"new" }));
    let data: Vec<(u8, u64)> = f[2..].iter().map(|x| (x.1, x.2)).collect();
    assert_eq!(data, [(FLAG_RESEND, 1), (FLAG_RESEND, 3), (FLAG_RESEND, 4), (0, 5)], "in order; 5 was never sent");
    assert!(std::iter::from_fn(|| s.poll_event())
        .any(|e| e == SessionEvent::Connected { pe_id: 2, addr: addr("192.0.2.1:7002"), resent: 3 }));
    assert_eq!((s.stats.resent, s.stats.failovers), (3, 1));
}

#[test]
fn without_retrieval_unacked_messages_are_handed_back_and_never_resent() {
    let mut cx = Ctx::new();
    let pes: Vec<_> = (1..=2).map(|i| pe_repr(i, &["192.0.2.1"], 7000 + i as u16, Policy::RoundRobin)).collect();
    let (mut s, conn) = open(&pes, false, &mut cx);
    for i in 1..=3u8 {
        s.send(&mut cx, 0, vec![i]).unwrap();
    }
    let mut b = Vec::new();
    frame::encode(&mut b, Kind::Ack, 0, 0, 1, &[]);
    s.on_data(&mut cx, conn, &b, Time(1));
    s.on_closed(&mut cx, conn, Time(2));
    let events: Vec<SessionEvent> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(events.contains(&SessionEvent::Dropped(vec![2, 3])), "{events:?}");
    let (c, _) = next_target(&mut s, &mut cx);
    s.on_connected(&mut cx, c, Time(3));
    let kinds: Vec<Kind> = frames(&drain(&mut cx)).iter().map(|x| x.0).collect();
    assert_eq!(kinds, [Kind::Hello], "nothing re-sent");
    assert_eq!(s.unacked(), 0);
}

#[test]
fn heartbeats_detect_a_silent_pe() {
    let mut cx = Ctx::new();
    let pes: Vec<_> = (1..=2).map(|i| pe_repr(i, &["192.0.2.1"], 7000 + i as u16, Policy::RoundRobin)).collect();
    let (mut s, conn) = open(&pes, true, &mut cx);
    assert_eq!(s.next_deadline(), Some(Time(100)));
    s.on_timer(&mut cx, Time(100));
    assert_eq!(frames(&drain(&mut cx))[0].0, Kind::Heartbeat);
    let mut ack = Vec::new();
    frame::encode(&mut ack, Kind::HeartbeatAck, 0, 0, 1, &[]);
    s.on_data(&mut cx, conn, &ack, Time(150));
    s.on_timer(&mut cx, Time(200));
    assert_eq!(frames(&drain(&mut cx))[0].0, Kind::Heartbeat, "answered: another one an interval later");
    assert_eq!(s.pe_id(), Some(1));
    s.on_timer(&mut cx, Time(300));
    let io = drain(&mut cx);
    assert!(io.contains(&Io::Close { conn }), "no answer within the timeout: failed");
    assert!(std::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, SessionEvent::PeFailed { pe_id: 1, ref reason, .. } if reason.contains("heartbeat"))));
    assert_eq!(connects(&io)[0].1.port(), 7002);
}

#[test]
fn bad_input_on_a_session_gets_an_error_frame_and_a_close() {
    // PU side: a PE that does not start with HELLO.
    let mut cx = Ctx::new();
    let pes = [pe_repr(1, &["192.0.2.1"], 7001, Policy::RoundRobin)];
    let mut s = SessionCore::new(SessionId(1), b"echo".to_vec(), session_cfg(true));
    s.offer(&mut cx, &pes, Time(0));
    let (conn, _) = connects(&drain(&mut cx))[0];
    s.on_connected(&mut cx, conn, Time(0));
    drain(&mut cx);
    s.on_data(&mut cx, conn, &[9u8; 16], Time(1));
    let io = drain(&mut cx);
    let f = frames(&io);
    assert_eq!(f[0].0, Kind::Error);
    assert!(String::from_utf8_lossy(&f[0].3).contains("unknown frame kind 0x09"));
    assert!(io.contains(&Io::Close { conn }));
    // PE side: a frame too large, and data before HELLO.
    let mut srv = SessionServer::new(SessionConfig { max_payload: 1000, ..Default::default() });
    for (bad, what) in
        [(frame_bytes(Kind::Data, 2000), "exceeds the maximum"), (frame_bytes(Kind::Data, 1), "HELLO first")]
    {
        let c = ConnToken::accepted(fastrand::u64(..1000));
        srv.on_accepted(&mut cx, c, addr("192.0.2.50:5000"), Time(0));
        drain(&mut cx);
        srv.on_data(&mut cx, c, &bad, Time(1));
        let io = drain(&mut cx);
        let f = frames(&io);
        assert_eq!(f[0].0, Kind::Error);
        assert!(String::from_utf8_lossy(&f[0].3).contains(what), "{:?}", String::from_utf8_lossy(&f[0].3));
        assert!(io.contains(&Io::Close { conn: c }));
        assert!(
            std::iter::from_fn(|| srv.poll_event()).any(|e| matches!(e, ServerEvent::Closed { error: Some(_), .. }))
        );
    }
    assert!(srv.is_empty());
}

fn frame_bytes(kind: Kind, len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode(&mut b, kind, 0, 0, 1, &vec![0; len]);
    b
}

#[test]
fn the_pe_side_delivers_data_answers_heartbeats_and_acks_on_request() {
    let mut cx = Ctx::new();
    let mut srv = SessionServer::new(SessionConfig::default());
    let c = ConnToken::accepted(1);
    srv.on_accepted(&mut cx, c, addr("192.0.2.50:5000"), Time(0));
    assert_eq!(frames(&drain(&mut cx))[0].0, Kind::Hello);
    let mut input = hello();
    input.extend(asap_frame(|w| frame::cookie(w, true, b"state")));
    frame::encode(&mut input, Kind::Data, FLAG_RESEND, 3, 42, b"hi");
    frame::encode(&mut input, Kind::Heartbeat, 0, 0, 7, &[]);
    srv.on_data(&mut cx, c, &input[..5], Time(1));
    srv.on_data(&mut cx, c, &input[5..], Time(1));
    let session = SessionId(c.0);
    let events: Vec<ServerEvent> = std::iter::from_fn(|| srv.poll_event()).collect();
    assert_eq!(
        events[1..],
        [
            ServerEvent::CookieEcho { session, cookie: b"state".to_vec() },
            ServerEvent::Data { session, stream: 3, seq: 42, resend: true, payload: b"hi".to_vec() },
        ]
    );
    assert_eq!(frames(&drain(&mut cx)), [(Kind::HeartbeatAck, 0, 7, vec![])]);
    srv.ack(&mut cx, session, 42);
    assert_eq!(frames(&drain(&mut cx)), [(Kind::Ack, 0, 42, vec![])]);
}

#[test]
fn a_pu_node_resolves_for_its_sessions_and_reports_failed_pes() {
    let mut node =
        PuNode::new(PuConfig { registrars: vec![addr(R1)], timers: timers(), seed: 1, ..PuConfig::default() }, Time(0));
    let id = node.open_session(b"echo", session_cfg(true), Time(0)).unwrap();
    let (reg, _) = connects(&drain(&mut node.cx))[0];
    node.on_connected(reg, Time(0));
    assert_eq!(types(&sent(&drain(&mut node.cx))), [MessageType::HandleResolution]);
    let pes: Vec<_> = (1..=2).map(|i| pe_repr(i, &["192.0.2.1"], 7000 + i as u16, Policy::RoundRobin)).collect();
    node.on_data(reg, &resolution_response(b"echo", &pes), Time(1));
    let (pe_conn, target) = connects(&drain(&mut node.cx))[0];
    assert_eq!(target.port(), 7001);
    node.on_closed(pe_conn, Time(2));
    let io = drain(&mut node.cx);
    assert_eq!(types(&sent(&io)), [MessageType::EndpointUnreachable], "the failed PE is reported");
    assert_eq!(connects(&io)[0].1.port(), 7002, "the other PE from the cache, without asking the registrar");
    let events: Vec<PuNodeEvent> = std::iter::from_fn(|| node.poll_event()).collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, PuNodeEvent::Session(s, SessionEvent::PeFailed { pe_id: 1, .. }) if *s == id)));
    assert_eq!(node.pu.stats.resolutions_sent, 1);
}
