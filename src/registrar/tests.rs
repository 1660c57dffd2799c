//! The registrar driven in the simulator (`crate::runtime::sim`): several shards with the
//! engines' own queues and pauses, clients as in-memory pipes, virtual time. No sockets, no
//! clock: every run is the same.

use std::collections::HashMap;

#[path = "../../tests/support/vectors.rs"]
mod vectors;

use self::vectors::vector;
use super::{Registrar, RegistrarConfig, ASAP};
use crate::handlespace::shard_of;
use crate::runtime::sim::{ClientId, Sim, SimConfig};
use crate::service::ShardId;
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType, Resolution};
use crate::wire::{
    CauseCode, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr,
    TransportUse,
};

/// A registrar of several shards in the simulator, and its clients.
pub(super) struct RegSim {
    pub(super) sim: Sim<Registrar>,
    /// Bytes received by each client and not yet cut into messages.
    partial: HashMap<ClientId, Vec<u8>>,
}

impl RegSim {
    pub(super) fn new(shards: u16) -> Self {
        Self::with(RegistrarConfig::new(0x1122_3344, shards))
    }

    pub(super) fn with(config: RegistrarConfig) -> Self {
        Self::with_engine(SimConfig::new(config.shards), config, 1)
    }

    fn with_engine(engine: SimConfig, config: RegistrarConfig, seed: u64) -> Self {
        let sim = Sim::new(engine, seed, move |shard, _| Registrar::new(&config, shard, Time::ZERO));
        Self { sim, partial: HashMap::new() }
    }

    pub(super) fn connect(&mut self, shard: ShardId, peer: &str) -> ClientId {
        let c = self.sim.connect_from(shard, ASAP, peer.parse().unwrap());
        self.sim.run();
        c
    }

    /// The client sends `bytes`; the shards run until they have nothing left to do.
    pub(super) fn send(&mut self, c: ClientId, bytes: &[u8]) {
        self.sim.write(c, bytes);
        self.sim.run();
    }

    /// The client closes its side; the shards run.
    fn close(&mut self, c: ClientId) {
        self.sim.shutdown_write(c);
        self.sim.run();
    }

    /// Moves time to `ms`, running every timer due on the way.
    fn advance_to(&mut self, ms: u64) {
        self.sim.run_until(Time(ms));
    }

    /// Every whole message `c` received since the last call.
    pub(super) fn take(&mut self, c: ClientId) -> Vec<Vec<u8>> {
        let buf = self.partial.entry(c).or_default();
        buf.extend(self.sim.read(c));
        split_messages(buf)
    }

    /// The one message `c` received.
    pub(super) fn one(&mut self, c: ClientId) -> Vec<u8> {
        let mut all = self.take(c);
        assert_eq!(all.len(), 1, "expected one answer, got {}", all.len());
        all.remove(0)
    }

    pub(super) fn closed(&self, c: ClientId) -> bool {
        self.sim.closed(c)
    }

    pub(super) fn shard(&self, s: ShardId) -> &Registrar {
        self.sim.service(s)
    }

    pub(super) fn pe_count(&self) -> usize {
        (0..self.sim.shards()).map(|s| self.shard(s).handlespace().pe_count()).sum()
    }
}

/// Cuts whole ASAP messages off the front of `buf`.
pub(super) fn split_messages(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len() - off >= 4 {
        let len = usize::from(u16::from_be_bytes([buf[off + 2], buf[off + 3]]));
        assert!(len >= 4, "the registrar sent a message shorter than its header");
        if buf.len() - off < len {
            break;
        }
        out.push(buf[off..off + len].to_vec());
        off += len;
    }
    buf.drain(..off);
    out
}

pub(super) fn tcp(addr: &str, port: u16) -> TransportRepr {
    TransportRepr::new(TransportProtocol::Tcp, addr.parse().unwrap(), port)
}

pub(super) fn registration(handle: &str, pe_id: u32, user: TransportRepr, policy: Policy, life: i32) -> Vec<u8> {
    MessageRepr::new(
        Protocol::Asap,
        MessageType::Registration as u8,
        0,
        vec![
            ParamRepr::PoolHandle(handle.as_bytes().to_vec()),
            ParamRepr::PoolElement(PoolElementRepr {
                pe_id,
                home_registrar: 0,
                registration_life: life,
                user_transport: user,
                policy: PolicyRepr::Known(policy),
                asap_transport: None,
            }),
        ],
    )
    .to_bytes()
    .unwrap()
}

pub(super) fn handle_and_id(t: MessageType, handle: &str, pe_id: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_and_id(&mut crate::wire::Writer::new(&mut buf), t, 0, handle.as_bytes(), Some(pe_id), None)
        .unwrap();
    buf
}

pub(super) fn resolution(handle: &str, items: Option<u32>) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_resolution(&mut crate::wire::Writer::new(&mut buf), handle.as_bytes(), items).unwrap();
    buf
}

/// (rejected, cause) of a Registration Response.
pub(super) fn reg_response(bytes: &[u8]) -> (bool, Option<CauseCode>, Vec<u8>) {
    let m = asap::parse(bytes).unwrap();
    let Body::RegistrationResponse { rejected, error, .. } = m.body() else { panic!("not a Registration Response") };
    let cause = error.as_ref().map(|e| e.first_code());
    let info = error.as_ref().and_then(|e| e.causes().next()).map(|c| c.info.to_vec()).unwrap_or_default();
    (*rejected, cause, info)
}

/// PE ids of a Handle Resolution Response, or the cause of its error.
pub(super) fn resolved(bytes: &[u8]) -> Result<Vec<u32>, CauseCode> {
    let m = asap::parse(bytes).unwrap();
    let Body::HandleResolutionResponse { resolution, .. } = m.body() else {
        panic!("not a Handle Resolution Response")
    };
    match resolution {
        Resolution::Found { pool_elements, .. } => Ok(pool_elements.clone().map(|pe| pe.pe_id()).collect()),
        Resolution::Failed(e) => Err(e.first_code()),
    }
}

/// A pool handle that hashes to `shard` of `shards`.
pub(super) fn handle_on(shard: ShardId, shards: u16) -> String {
    (0..).map(|i| format!("pool-{i}")).find(|h| shard_of(h.as_bytes(), shards) == shard).unwrap()
}

#[test]
fn register_resolve_reregister_deregister() {
    let mut sim = RegSim::new(1);
    let pe = sim.connect(0, "192.0.2.1:40000");
    let pu = sim.connect(0, "192.0.2.9:40001");
    sim.send(pe, &registration("echo", 7, tcp("192.0.2.1", 7000), Policy::RoundRobin, 60_000));
    let answer = sim.one(pe);
    assert_eq!(answer, handle_and_id(MessageType::RegistrationResponse, "echo", 7));
    assert_eq!(reg_response(&answer), (false, None, vec![]));

    sim.send(pu, &resolution("echo", None));
    let bytes = sim.one(pu);
    assert_eq!(resolved(&bytes), Ok(vec![7]));
    // The response carries the home registrar, the life and the user transport, no ASAP transport.
    let m = asap::parse(&bytes).unwrap();
    let Body::HandleResolutionResponse { resolution: Resolution::Found { pool_elements, policy }, .. } = m.body()
    else {
        panic!()
    };
    assert_eq!(*policy, Some(crate::wire::PolicyParam::Known(Policy::RoundRobin)));
    let got = pool_elements.clone().next().unwrap();
    assert_eq!(got.home_registrar(), 0x1122_3344);
    assert_eq!(got.registration_life(), 60_000);
    assert_eq!(got.user_transport().to_repr(), tcp("192.0.2.1", 7000));
    assert!(got.asap_transport().is_none());

    // Re-registration over the same connection updates the PE (new port), still one PE.
    sim.send(pe, &registration("echo", 7, tcp("192.0.2.1", 7001), Policy::RoundRobin, 60_000));
    assert!(!reg_response(&sim.one(pe)).0);
    assert_eq!(sim.pe_count(), 1);
    sim.send(pu, &resolution("echo", None));
    let m = sim.one(pu);
    let m = asap::parse(&m).unwrap();
    let Body::HandleResolutionResponse { resolution: Resolution::Found { mut pool_elements, .. }, .. } = m.into_body()
    else {
        panic!()
    };
    assert_eq!(pool_elements.next().unwrap().user_transport().port(), 7001);

    sim.send(pe, &handle_and_id(MessageType::Deregistration, "echo", 7));
    assert_eq!(sim.one(pe), handle_and_id(MessageType::DeregistrationResponse, "echo", 7));
    assert_eq!(sim.pe_count(), 0);
    sim.send(pu, &resolution("echo", None));
    assert_eq!(resolved(&sim.one(pu)), Err(CauseCode::UNKNOWN_POOL_HANDLE));
}

#[test]
fn unknown_pool_is_an_error_never_an_empty_success() {
    let mut sim = RegSim::new(1);
    let pu = sim.connect(0, "192.0.2.9:1");
    sim.send(pu, &resolution("no-such-pool", Some(4)));
    assert_eq!(sim.one(pu), vector("asap-handle-resolution-response-unknown-pool"));
}

#[test]
fn resolution_honours_the_option_and_the_limits() {
    let mut config = RegistrarConfig::new(1, 1);
    config.limits.max_items = 5;
    let mut sim = RegSim::with(config);
    let pe = sim.connect(0, "192.0.2.1:1");
    for id in 1..=8 {
        sim.send(pe, &registration("p", id, tcp("192.0.2.1", 7000 + id as u16), Policy::Random, -1));
    }
    assert_eq!(sim.take(pe).len(), 8);
    let pu = sim.connect(0, "192.0.2.9:1");
    for (items, want) in [(None, 3), (Some(0), 3), (Some(2), 2), (Some(4), 4), (Some(100), 5), (Some(u32::MAX), 5)] {
        sim.send(pu, &resolution("p", items));
        let ids = resolved(&sim.one(pu)).unwrap();
        assert_eq!(ids.len(), want, "items {items:?}");
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "distinct PEs");
    }
}

#[test]
fn responses_never_exceed_the_maximum_message_size() {
    let mut config = RegistrarConfig::new(1, 1);
    config.limits.max_message_size = 300;
    let mut sim = RegSim::with(config);
    let pe = sim.connect(0, "192.0.2.1:1");
    for id in 1..=20 {
        sim.send(pe, &registration("p", id, tcp("192.0.2.1", 7000 + id as u16), Policy::RoundRobin, -1));
    }
    sim.take(pe);
    let pu = sim.connect(0, "192.0.2.9:1");
    sim.send(pu, &resolution("p", Some(20)));
    let bytes = sim.one(pu);
    assert!(bytes.len() <= 300, "{} bytes", bytes.len());
    let n = resolved(&bytes).unwrap().len();
    assert!((1..20).contains(&n), "{n} PEs fit");
}

#[test]
fn pool_consistency_and_collisions_are_rejected_with_their_causes() {
    let mut sim = RegSim::new(1);
    let a = sim.connect(0, "192.0.2.1:1");
    let b = sim.connect(0, "192.0.2.2:1");
    sim.send(a, &registration("p", 1, tcp("192.0.2.1", 7000), Policy::LeastUsed { load: 5 }, -1));
    assert!(!reg_response(&sim.one(a)).0);

    // Another policy type: 0x5 quoting the offending policy parameter.
    sim.send(b, &registration("p", 2, tcp("192.0.2.2", 7000), Policy::RoundRobin, -1));
    let (rejected, cause, info) = reg_response(&sim.one(b));
    assert!(rejected);
    assert_eq!(cause, Some(CauseCode::INCONSISTENT_POOLING_POLICY));
    assert_eq!(info, [0, 8, 0, 8, 0, 0, 0, 1], "the Round Robin policy TLV");

    // Another transport protocol: 0x7 quoting the user transport.
    let udp = TransportRepr::new(TransportProtocol::Udp, "192.0.2.2".parse().unwrap(), 7000);
    sim.send(b, &registration("p", 2, udp, Policy::LeastUsed { load: 1 }, -1));
    let (rejected, cause, info) = reg_response(&sim.one(b));
    assert!(rejected);
    assert_eq!(cause, Some(CauseCode::INCONSISTENT_TRANSPORT_TYPE));
    assert_eq!(&info[..2], &[0, 6]);

    // Another transport use: 0x8.
    let mut ctl = tcp("192.0.2.2", 7000);
    ctl.transport_use = TransportUse::DataPlusControl;
    sim.send(b, &registration("p", 2, ctl, Policy::LeastUsed { load: 1 }, -1));
    assert_eq!(reg_response(&sim.one(b)).1, Some(CauseCode::INCONSISTENT_DATA_CONTROL));

    // Same PE id from another connection with other addresses: 0x4.
    sim.send(b, &registration("p", 1, tcp("192.0.2.2", 7000), Policy::LeastUsed { load: 1 }, -1));
    assert_eq!(reg_response(&sim.one(b)).1, Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER));

    // PE id 0 and port 0: 0x3 quoting the offending parameter.
    sim.send(b, &registration("p", 0, tcp("192.0.2.2", 7000), Policy::LeastUsed { load: 1 }, -1));
    let (_, cause, info) = reg_response(&sim.one(b));
    assert_eq!((cause, &info[..2]), (Some(CauseCode::INVALID_VALUES), &[0, 0x0a][..]));
    sim.send(b, &registration("p", 3, tcp("192.0.2.2", 0), Policy::LeastUsed { load: 1 }, -1));
    let (_, cause, info) = reg_response(&sim.one(b));
    assert_eq!((cause, &info[..2]), (Some(CauseCode::INVALID_VALUES), &[0, 5][..]));

    // Empty pool handle: 0x3 with the empty Pool Handle TLV.
    sim.send(b, &registration("", 3, tcp("192.0.2.2", 7000), Policy::LeastUsed { load: 1 }, -1));
    let (_, cause, info) = reg_response(&sim.one(b));
    assert_eq!((cause, info), (Some(CauseCode::INVALID_VALUES), vec![0, 9, 0, 4]));
    assert_eq!(sim.pe_count(), 1, "nothing was stored by the rejected registrations");
}

#[test]
fn deregistration_rules() {
    let mut sim = RegSim::new(1);
    let a = sim.connect(0, "192.0.2.1:1");
    let b = sim.connect(0, "192.0.2.2:1");
    sim.send(a, &registration("p", 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.take(a);
    let error_of = |bytes: &[u8]| {
        let m = asap::parse(bytes).unwrap();
        let Body::DeregistrationResponse { error, .. } = m.body() else { panic!() };
        error.as_ref().map(|e| e.first_code())
    };
    // Another connection may not deregister it (0xA); an unknown pool is 0x9; an unknown PE
    // of a known pool is a success.
    sim.send(b, &handle_and_id(MessageType::Deregistration, "p", 1));
    assert_eq!(error_of(&sim.one(b)), Some(CauseCode::REJECTED_SECURITY));
    sim.send(b, &handle_and_id(MessageType::Deregistration, "q", 1));
    assert_eq!(error_of(&sim.one(b)), Some(CauseCode::UNKNOWN_POOL_HANDLE));
    sim.send(b, &handle_and_id(MessageType::Deregistration, "p", 99));
    assert_eq!(error_of(&sim.one(b)), None);
    assert_eq!(sim.pe_count(), 1);
}

#[test]
fn unspecified_addresses_are_replaced_by_the_connections_address() {
    let mut sim = RegSim::new(1);
    let pe = sim.connect(0, "198.51.100.7:5555");
    let mut t = tcp("0.0.0.0", 7000);
    t.addresses.push("192.0.2.44".parse().unwrap());
    t.protocol = TransportProtocol::Sctp;
    sim.send(pe, &registration("p", 1, t, Policy::RoundRobin, -1));
    sim.take(pe);
    let pu = sim.connect(0, "192.0.2.9:1");
    sim.send(pu, &resolution("p", None));
    let bytes = sim.one(pu);
    let m = asap::parse(&bytes).unwrap();
    let Body::HandleResolutionResponse { resolution: Resolution::Found { mut pool_elements, .. }, .. } = m.into_body()
    else {
        panic!()
    };
    let addrs: Vec<String> =
        pool_elements.next().unwrap().user_transport().addresses().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["198.51.100.7", "192.0.2.44"]);
}

#[test]
fn bad_vectors_get_the_answers_index_md_prescribes() {
    let mut sim = RegSim::new(1);
    let c = sim.connect(0, "192.0.2.1:1");
    // Exact answers given by INDEX.md.
    sim.send(c, &vector("asap-bad-unknown-message-type"));
    assert_eq!(sim.one(c), vector("asap-error-unrecognized-message"));
    sim.send(c, &vector("asap-bad-unknown-param-stop-report"));
    assert_eq!(sim.one(c), vector("asap-error-unrecognized-parameter"));
    // Stop without report: silence, nothing registered.
    sim.send(c, &vector("asap-bad-unknown-param-stop"));
    assert!(sim.take(c).is_empty());
    // Registrations rejected with R flag and the prescribed cause, quoting what INDEX.md says.
    for (name, cause, info) in [
        ("asap-bad-ipv4-length-7", CauseCode::UNSPECIFIED, vec![]),
        ("asap-bad-pool-element-too-short", CauseCode::UNSPECIFIED, vec![]),
        ("asap-bad-pool-element-no-policy", CauseCode::UNSPECIFIED, vec![]),
        ("asap-bad-policy-value-count", CauseCode::UNSPECIFIED, vec![]),
        ("asap-bad-registration-no-pool-handle", CauseCode::INVALID_VALUES, vec![0, 9, 0, 4]),
        ("asap-bad-tcp-transport-no-address", CauseCode::INVALID_VALUES, vec![0, 5, 0, 8, 0x1f, 0x41, 0, 0]),
    ] {
        sim.send(c, &vector(name));
        let answer = sim.one(c);
        assert_eq!(reg_response(&answer), (true, Some(cause), info), "{name}");
    }
    sim.send(c, &vector("asap-bad-nested-pool-element"));
    let (rejected, cause, info) = reg_response(&sim.one(c));
    assert!(rejected && cause == Some(CauseCode::INVALID_VALUES));
    assert_eq!(&info[..2], &[0, 0x0a], "quotes the nested Pool Element");
    // The registration without handle echoes the PE id it could read.
    sim.send(c, &vector("asap-bad-registration-no-pool-handle"));
    let m = sim.one(c);
    let Body::RegistrationResponse { pe_id, .. } = *asap::parse(&m).unwrap().body() else { panic!() };
    assert_eq!(pe_id, 0x3c9e1f07);
    // Deregistrations: Deregistration Response with cause 0x0.
    for name in ["asap-bad-pe-identifier-length-10", "asap-bad-param-length-lt-4"] {
        sim.send(c, &vector(name));
        let m = sim.one(c);
        let Body::DeregistrationResponse { error: Some(e), .. } = asap::parse(&m).unwrap().into_body() else {
            panic!("{name}")
        };
        assert_eq!(e.first_code(), CauseCode::UNSPECIFIED, "{name}");
    }
    // A Handle Resolution whose handle overruns: ASAP Error cause 0x0.
    sim.send(c, &vector("asap-bad-param-overrun"));
    let m = sim.one(c);
    let Body::Error { error } = asap::parse(&m).unwrap().into_body() else { panic!() };
    assert_eq!(error.first_code(), CauseCode::UNSPECIFIED);
    assert_eq!(sim.pe_count(), 0, "no bad registration was stored");
    assert!(!sim.closed(c), "all of these keep the connection");

    // Skip-and-report: processed, then reported.
    let pe = sim.connect(0, "192.0.2.1:2");
    sim.send(pe, &registration("echo", 0x3c9e1f07, tcp("192.0.2.1", 7), Policy::RoundRobin, -1));
    sim.take(pe);
    sim.send(pe, &vector("asap-deregistration-unknown-skip-report"));
    let answers = sim.take(pe);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], vector("asap-deregistration-response"));
    let Body::Error { error } = asap::parse(&answers[1]).unwrap().into_body() else { panic!() };
    let c0 = error.causes().next().unwrap();
    assert_eq!(
        (c0.code, c0.info),
        (CauseCode::UNRECOGNIZED_PARAMETER, &[0xc0, 0xde, 0, 8, 0x0b, 0xad, 0xf0, 0x0d][..])
    );
    assert_eq!(sim.pe_count(), 0);
}

#[test]
fn unframeable_streams_close_only_their_connection() {
    let mut sim = RegSim::new(1);
    let good = sim.connect(0, "192.0.2.1:1");
    sim.send(good, &registration("echo", 0x3c9e1f07, tcp("192.0.2.1", 7), Policy::RoundRobin, -1));
    sim.take(good);

    // Trailing garbage: the valid Deregistration is processed, then the next header claims
    // 47806 bytes, above the maximum message size: close, answer nothing more.
    let bad = sim.connect(0, "192.0.2.2:1");
    sim.send(bad, &vector("asap-bad-trailing-garbage"));
    let answers = sim.take(bad);
    assert_eq!(answers.len(), 1, "only the Deregistration Response");
    assert!(sim.closed(bad));

    // Length below 4: close without an answer.
    let bad2 = sim.connect(0, "192.0.2.3:1");
    sim.send(bad2, &vector("asap-bad-length-lt-4"));
    assert!(sim.take(bad2).is_empty());
    assert!(sim.closed(bad2));

    // Incomplete header or message: wait for more, nothing consumed.
    for (i, name) in ["asap-bad-truncated-header", "asap-bad-length-exceeds-data"].into_iter().enumerate() {
        let slow = sim.connect(0, &format!("192.0.2.4:{}", i + 1));
        sim.send(slow, &vector(name));
        assert!(sim.take(slow).is_empty());
        assert!(!sim.closed(slow), "{name}: waits for the rest");
        assert!(sim.sim.unread_by_server(slow) == 0);
    }

    // The well-behaved client is still served.
    let pu = sim.connect(0, "192.0.2.5:1");
    sim.send(pu, &resolution("echo", None));
    assert_eq!(resolved(&sim.one(pu)), Ok(vec![0x3c9e1f07]));
}

#[test]
fn pipelined_and_split_messages() {
    let mut sim = RegSim::new(1);
    let pe = sim.connect(0, "192.0.2.1:1");
    let mut stream = Vec::new();
    for id in 1..=5 {
        stream.extend(registration("p", id, tcp("192.0.2.1", 7000 + id as u16), Policy::RoundRobin, -1));
    }
    // Fed in chunks of 7 bytes as a stream would arrive; the engine keeps what is not consumed.
    for chunk in stream.chunks(7) {
        sim.send(pe, chunk);
    }
    assert_eq!(sim.take(pe).len(), 5);
    assert_eq!(sim.pe_count(), 5);
}

#[test]
fn pools_live_on_their_shard_and_answers_come_back() {
    let mut sim = RegSim::new(4);
    for owner in 0..4u16 {
        let handle = handle_on(owner, 4);
        // The PE connects to shard (owner + 1) % 4, the PU to (owner + 2) % 4.
        let pe = sim.connect((owner + 1) % 4, "192.0.2.1:1");
        let pu = sim.connect((owner + 2) % 4, "192.0.2.2:1");
        sim.send(pe, &registration(&handle, 10 + u32::from(owner), tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert!(!reg_response(&sim.one(pe)).0);
        assert_eq!(sim.shard(owner).handlespace().pe_count(), 1, "stored on the owner shard");
        sim.send(pu, &resolution(&handle, None));
        assert_eq!(resolved(&sim.one(pu)), Ok(vec![10 + u32::from(owner)]));
        // Keep-alive acks and deregistrations reach the owner too.
        sim.send(pe, &handle_and_id(MessageType::Deregistration, &handle, 10 + u32::from(owner)));
        assert!(sim.take(pe).len() == 1);
        assert_eq!(sim.pe_count(), 0);
    }
}

#[test]
fn a_closed_connection_loses_its_pes_on_every_shard() {
    let mut sim = RegSim::new(3);
    let pe = sim.connect(0, "192.0.2.1:1");
    let other = sim.connect(1, "192.0.2.2:1");
    for owner in 0..3u16 {
        let handle = handle_on(owner, 3);
        sim.send(pe, &registration(&handle, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        sim.send(other, &registration(&handle, 2, tcp("192.0.2.2", 7000), Policy::RoundRobin, -1));
    }
    sim.take(pe);
    sim.take(other);
    assert_eq!(sim.pe_count(), 6);
    sim.close(pe);
    assert_eq!(sim.pe_count(), 3, "only the closed connection's PEs are gone");
    for s in 0..3 {
        sim.shard(s).handlespace().validate().unwrap();
    }
}

#[test]
fn keep_alive_probes_and_removes_silent_pes() {
    let mut config = RegistrarConfig::new(0x1122_3344, 2);
    config.timers.keep_alive_interval = 1_000;
    config.timers.keep_alive_timeout = 200;
    let mut sim = RegSim::with(config);
    let (h0, h1) = (handle_on(0, 2), handle_on(1, 2));
    let answering = sim.connect(0, "192.0.2.1:1");
    let silent = sim.connect(1, "192.0.2.2:1");
    sim.send(answering, &registration(&h1, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.send(silent, &registration(&h0, 2, tcp("192.0.2.2", 7000), Policy::RoundRobin, -1));
    sim.take(answering);
    sim.take(silent);

    sim.advance_to(999);
    assert!(sim.take(answering).is_empty());
    sim.advance_to(1_000);
    // Each PE got an Endpoint Keep Alive with the H flag and this registrar's id.
    for (conn, handle, id) in [(answering, &h1, 1), (silent, &h0, 2)] {
        let m = sim.one(conn);
        let m = asap::parse(&m).unwrap();
        let Body::EndpointKeepAlive { home, server_id, pool_handle, pe_id } = *m.body() else { panic!() };
        assert!(home);
        assert_eq!((server_id, pool_handle, pe_id), (0x1122_3344, handle.as_bytes(), Some(id)));
    }
    sim.send(answering, &handle_and_id(MessageType::EndpointKeepAliveAck, &h1, 1));
    sim.advance_to(1_200);
    assert_eq!(sim.pe_count(), 1, "the silent PE was removed after the timeout");
    assert_eq!(sim.shard(0).stats().keep_alive_failures + sim.shard(1).stats().keep_alive_failures, 1);
    // The answering PE is probed again one interval after each ack, and stays while it acks.
    for second in 2..=5 {
        sim.advance_to(second * 1_000);
        assert_eq!(sim.take(answering).len(), 1, "probed at {second} s");
        sim.send(answering, &handle_and_id(MessageType::EndpointKeepAliveAck, &h1, 1));
    }
    sim.advance_to(6_199);
    assert_eq!(sim.pe_count(), 1);
    // Once it stops answering, it goes too.
    sim.advance_to(6_200);
    assert_eq!(sim.pe_count(), 0);
}

#[test]
fn registration_life_expires() {
    let mut sim = RegSim::new(1);
    let pe = sim.connect(0, "192.0.2.1:1");
    sim.send(pe, &registration("p", 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, 1_500));
    sim.send(pe, &registration("p", 2, tcp("192.0.2.1", 7001), Policy::RoundRobin, -1));
    sim.take(pe);
    sim.advance_to(1_499);
    assert_eq!(sim.pe_count(), 2);
    sim.advance_to(1_500);
    assert_eq!(sim.pe_count(), 1);
    assert_eq!(sim.shard(0).stats().expired, 1);
}

#[test]
fn unreachable_reports_remove_a_pe_after_max_bad_pe_report() {
    let mut sim = RegSim::new(2);
    let handle = handle_on(1, 2);
    let pe = sim.connect(0, "192.0.2.1:1");
    sim.send(pe, &registration(&handle, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.take(pe);
    // One pool user repeating itself counts once per interval (1 s by default).
    let pu = sim.connect(0, "192.0.2.9:1");
    for _ in 0..5 {
        sim.send(pu, &handle_and_id(MessageType::EndpointUnreachable, &handle, 1));
    }
    assert_eq!(sim.pe_count(), 1, "one report counted");
    sim.advance_to(1_000);
    sim.send(pu, &handle_and_id(MessageType::EndpointUnreachable, &handle, 1));
    assert_eq!(sim.pe_count(), 1, "two reports counted");
    // A third pool user's report reaches MAX-BAD-PE-REPORT (3).
    let other = sim.connect(1, "192.0.2.10:1");
    sim.send(other, &handle_and_id(MessageType::EndpointUnreachable, &handle, 1));
    assert_eq!(sim.pe_count(), 0);
    assert!(sim.take(pu).is_empty() && sim.take(other).is_empty(), "reports are not answered");
}

#[test]
fn policies_select_through_the_registrar() {
    let mut sim = RegSim::new(1);
    let pe = sim.connect(0, "192.0.2.1:1");
    for (id, load) in [(1, 300), (2, 100), (3, 200)] {
        sim.send(pe, &registration("lu", id, tcp("192.0.2.1", 7000 + id as u16), Policy::LeastUsed { load }, -1));
    }
    sim.take(pe);
    let pu = sim.connect(0, "192.0.2.9:1");
    sim.send(pu, &resolution("lu", Some(3)));
    assert_eq!(resolved(&sim.one(pu)), Ok(vec![2, 3, 1]), "least used first");
}

#[test]
fn answers_keep_request_order_across_shards() {
    let mut sim = RegSim::new(2);
    let (h0, h1) = one_pe_on_each_of_two_shards(&mut sim);
    // Requests alternate between a pool on this shard and one on the other, with an answerless
    // Endpoint Unreachable (for an unknown PE) in between; the answers come back in order.
    let pu = sim.connect(0, "192.0.2.9:1");
    let mut burst = Vec::new();
    for k in 0..10 {
        let h = if k % 2 == 0 { &h1 } else { &h0 };
        burst.extend(resolution(h, None));
        burst.extend(handle_and_id(MessageType::EndpointUnreachable, h, 999));
    }
    sim.send(pu, &burst);
    let answers = sim.take(pu);
    let ids: Vec<u32> = answers.iter().map(|a| resolved(a).unwrap()[0]).collect();
    assert_eq!(ids, [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]);
}

/// Pools on shards 0 and 1 of two, with PE 1 and PE 2, registered over a connection of shard 0.
fn one_pe_on_each_of_two_shards(sim: &mut RegSim) -> (String, String) {
    let (h0, h1) = (handle_on(0, 2), handle_on(1, 2));
    let pe = sim.connect(0, "192.0.2.1:1");
    sim.send(pe, &registration(&h0, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.send(pe, &registration(&h1, 2, tcp("192.0.2.1", 7001), Policy::RoundRobin, -1));
    sim.take(pe);
    (h0, h1)
}

/// The first PE of pool `handle` in any shard.
fn stored_pe(sim: &RegSim, handle: &str, pe_id: u32) -> crate::handlespace::PoolElement {
    (0..sim.sim.shards())
        .find_map(|s| {
            let hs = sim.shard(s).handlespace();
            hs.lookup(handle.as_bytes(), pe_id).and_then(|k| hs.pe(k)).cloned()
        })
        .expect("the PE is stored")
}

#[test]
fn a_pe_without_asap_transport_keeps_its_connections_address() {
    let mut sim = RegSim::new(2);
    let pe = sim.connect(1, "198.51.100.7:5555");
    let h = handle_on(0, 2);
    sim.send(pe, &registration(&h, 1, tcp("198.51.100.7", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(pe)).0);
    let stored = stored_pe(&sim, &h, 1);
    let asap = stored.asap_transport().expect("an ASAP transport is kept (WIRE.md 3.2)");
    assert_eq!(asap, tcp("198.51.100.7", 5555), "the registering connection's remote address");
}

#[test]
fn the_per_connection_limit_counts_pes_on_every_shard() {
    let mut config = RegistrarConfig::new(1, 3);
    config.limits.max_pes_per_connection = 3;
    let mut sim = RegSim::with(config);
    let pools: Vec<String> = (0..3).map(|s| handle_on(s, 3)).collect();
    let pe = sim.connect(0, "192.0.2.1:1");
    // One PE in each shard's pool: three, the limit.
    for (i, h) in pools.iter().enumerate() {
        sim.send(pe, &registration(h, 10 + i as u32, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert_eq!(reg_response(&sim.one(pe)), (false, None, vec![]));
    }
    // A fourth, on any shard, is refused with 0x6; re-registering one it has is not.
    for h in &pools {
        sim.send(pe, &registration(h, 99, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert_eq!(reg_response(&sim.one(pe)).1, Some(CauseCode::LACK_OF_RESOURCES), "{h}");
    }
    sim.send(pe, &registration(&pools[2], 12, tcp("192.0.2.1", 7001), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(pe)).0);
    // Another connection has its own allowance.
    let other = sim.connect(0, "192.0.2.2:1");
    sim.send(other, &registration(&pools[1], 20, tcp("192.0.2.2", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(other)).0);
    // Room comes back when a PE goes: deregistered on its shard, counted on the connection's.
    sim.send(pe, &handle_and_id(MessageType::Deregistration, &pools[1], 11));
    sim.take(pe);
    sim.send(pe, &registration(&pools[0], 99, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(pe)).0);
    assert_eq!(sim.pe_count(), 4);
}

#[test]
fn registrar_wide_pe_and_pool_limits_span_shards() {
    let mut config = RegistrarConfig::new(1, 2);
    config.limits.max_pes = 3;
    config.limits.max_pools = 2;
    let budgets = std::sync::Arc::clone(&config.budgets);
    let mut sim = RegSim::with(config);
    let (h0, h1) = (handle_on(0, 2), handle_on(1, 2));
    let h2 = (0..).map(|i| format!("third-{i}")).find(|h| shard_of(h.as_bytes(), 2) == 0).unwrap();
    let pe = sim.connect(0, "192.0.2.1:1");
    for (h, id) in [(&h0, 1), (&h1, 2), (&h1, 3)] {
        sim.send(pe, &registration(h, id, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert!(!reg_response(&sim.one(pe)).0);
    }
    // A fourth PE, in whichever shard: 0x6. A third pool: 0x6.
    sim.send(pe, &registration(&h0, 4, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert_eq!(reg_response(&sim.one(pe)).1, Some(CauseCode::LACK_OF_RESOURCES));
    sim.send(pe, &handle_and_id(MessageType::Deregistration, &h1, 3));
    sim.take(pe);
    sim.send(pe, &registration(&h2, 5, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert_eq!(reg_response(&sim.one(pe)).1, Some(CauseCode::LACK_OF_RESOURCES), "third pool");
    sim.send(pe, &registration(&h0, 4, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(pe)).0, "room again after a deregistration");
    assert_eq!((budgets.pes.used(), budgets.pools.used()), (3, 2));
    sim.close(pe);
    assert_eq!((budgets.pes.used(), budgets.pools.used()), (0, 0), "given back when the PEs go");
}

#[test]
fn a_connection_that_keeps_going_after_resource_refusals_is_closed() {
    let mut config = RegistrarConfig::new(1, 2);
    config.limits.max_pes_per_connection = 1;
    config.limits.max_refusals = 3;
    let mut sim = RegSim::with(config);
    let h = handle_on(1, 2);
    let pe = sim.connect(0, "192.0.2.1:1");
    sim.send(pe, &registration(&h, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.take(pe);
    // Refusals, then a success resets the count.
    for id in 2..5 {
        sim.send(pe, &registration(&h, id, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert_eq!(reg_response(&sim.one(pe)).1, Some(CauseCode::LACK_OF_RESOURCES));
    }
    sim.send(pe, &registration(&h, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(pe)).0);
    for id in 2..5 {
        sim.send(pe, &registration(&h, id, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        sim.take(pe);
    }
    assert!(!sim.closed(pe), "three refusals in a row are answered");
    sim.send(pe, &registration(&h, 9, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert_eq!(reg_response(&sim.one(pe)).1, Some(CauseCode::LACK_OF_RESOURCES), "the fourth too, then...");
    assert!(sim.closed(pe), "...the connection is closed (WIRE.md section 9)");
    assert_eq!(sim.pe_count(), 0, "and its PE went with it");
}

/// The cause and its info of the Operation Error in any ASAP answer.
fn operation_error(bytes: &[u8]) -> (CauseCode, Vec<u8>) {
    let m = asap::parse(bytes).unwrap();
    let e = match m.body() {
        Body::RegistrationResponse { error: Some(e), .. }
        | Body::DeregistrationResponse { error: Some(e), .. }
        | Body::HandleResolutionResponse { resolution: Resolution::Failed(e), .. }
        | Body::Error { error: e } => *e,
        other => panic!("no Operation Error in {other:?}"),
    };
    let c = e.causes().next().unwrap();
    (c.code, c.info.to_vec())
}

#[test]
fn an_over_long_pool_handle_is_an_invalid_value_in_every_message_and_answers_fit() {
    let mut config = RegistrarConfig::new(1, 2);
    config.limits.max_message_size = 4096;
    config.limits.max_pool_handle = 64;
    let mut sim = RegSim::with(config);
    let c = sim.connect(0, "192.0.2.1:1");
    for len in [65, 300, 4000, 4020] {
        let h = "h".repeat(len);
        let handle_tlv = |h: &str| {
            let mut v = vec![0, 9];
            v.extend_from_slice(&((4 + h.len()) as u16).to_be_bytes());
            v.extend_from_slice(h.as_bytes());
            v
        };
        for msg in [
            registration(&h, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1),
            handle_and_id(MessageType::Deregistration, &h, 1),
            resolution(&h, None),
            handle_and_id(MessageType::EndpointUnreachable, &h, 1),
            handle_and_id(MessageType::EndpointKeepAliveAck, &h, 1),
        ] {
            sim.send(c, &msg);
            let answer = sim.one(c);
            assert!(answer.len() <= 4096, "{len}: a {}-byte answer", answer.len());
            let (cause, info) = operation_error(&answer);
            assert_eq!(cause, CauseCode::INVALID_VALUES, "type {} handle {len}", msg[0]);
            // The offending Pool Handle is quoted whole when that fits (header, echoed handle cut
            // to 64 bytes, PE id, cause headers: 88 bytes, plus the quote), else cut to 64 too.
            let fits = 88 + (4 + len).next_multiple_of(4) <= 4096;
            let quoted = if fits { handle_tlv(&h) } else { handle_tlv(&h[..64]) };
            assert_eq!(info[..quoted.len().min(info.len())], quoted[..], "type {} handle {len}", msg[0]);
        }
    }
    assert!(!sim.closed(c) && sim.pe_count() == 0);
}

#[test]
fn a_transport_with_too_many_addresses_is_an_invalid_value_quoting_it() {
    let mut config = RegistrarConfig::new(1, 1);
    config.limits.max_addresses = 2;
    let mut sim = RegSim::with(config);
    let c = sim.connect(0, "192.0.2.1:1");
    let mut t = tcp("192.0.2.1", 7000);
    t.protocol = TransportProtocol::Sctp;
    for a in ["192.0.2.2", "192.0.2.3"] {
        t.addresses.push(a.parse().unwrap());
    }
    sim.send(c, &registration("p", 1, t, Policy::RoundRobin, -1));
    let (rejected, cause, info) = reg_response(&sim.one(c));
    assert!(rejected);
    assert_eq!(cause, Some(CauseCode::INVALID_VALUES));
    assert_eq!(&info[..2], &[0, 4], "quotes the SCTP transport parameter");
}

#[test]
fn a_pe_that_registers_again_over_a_new_connection_is_supervised_there() {
    let mut config = RegistrarConfig::new(7, 2);
    config.timers.keep_alive_interval = 1_000;
    let mut sim = RegSim::with(config);
    let h = handle_on(1, 2);
    let old = sim.connect(0, "192.0.2.1:1");
    sim.send(old, &registration(&h, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    sim.take(old);
    // The same PE (same addresses) registers over another connection, on the other shard.
    let new = sim.connect(1, "192.0.2.1:2");
    sim.send(new, &registration(&h, 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(new)).0);
    assert_eq!(sim.pe_count(), 1);
    sim.advance_to(1_000);
    assert!(sim.take(old).is_empty(), "no probe over the connection it left");
    assert_eq!(sim.take(new).len(), 1, "probed over its new connection");
    // Closing the old connection does not remove it; closing the new one does.
    sim.close(old);
    assert_eq!(sim.pe_count(), 1);
    sim.close(new);
    assert_eq!(sim.pe_count(), 0);
    assert_eq!(sim.shard(1).supervised_pes(), 0, "supervision ends with the PE");
}

#[test]
fn deep_pipelines_to_other_shards_are_paced_and_answered_in_order() {
    let mut config = RegistrarConfig::new(1, 2);
    config.limits.max_pending_requests = 2;
    let mut engine = SimConfig::new(2);
    engine.queue = 1;
    let mut sim = RegSim::with_engine(engine, config, 3);
    let (h0, h1) = one_pe_on_each_of_two_shards(&mut sim);
    let pu = sim.connect(0, "192.0.2.9:1");
    let mut burst = Vec::new();
    for k in 0..200 {
        burst.extend(resolution(if k % 3 == 0 { &h0 } else { &h1 }, None));
    }
    sim.send(pu, &burst);
    let ids: Vec<u32> = sim.take(pu).iter().map(|a| resolved(a).unwrap()[0]).collect();
    let want: Vec<u32> = (0..200).map(|k| if k % 3 == 0 { 1 } else { 2 }).collect();
    assert_eq!(ids, want);
    let st = sim.sim.stats(0);
    assert!(st.spilled > 0 && st.link_pauses > 0, "the one-record queue overflowed and paused input: {st:?}");
}

#[test]
fn answers_owed_after_the_clients_half_close_still_arrive() {
    let mut engine = SimConfig::new(2);
    engine.queue = 1;
    let mut sim = RegSim::with_engine(engine, RegistrarConfig::new(1, 2), 5);
    let (h0, h1) = (handle_on(0, 2), handle_on(1, 2));
    let pe = sim.connect(0, "192.0.2.1:1");
    sim.send(pe, &registration(&h1, 2, tcp("192.0.2.1", 7001), Policy::RoundRobin, -1));
    sim.take(pe);
    let pu = sim.connect(0, "192.0.2.9:1");
    let mut burst = Vec::new();
    for k in 0..50 {
        burst.extend(resolution(if k % 2 == 0 { &h0 } else { &h1 }, None));
    }
    sim.sim.write(pu, &burst);
    sim.sim.shutdown_write(pu);
    sim.sim.run();
    let answers = sim.take(pu);
    assert_eq!(answers.len(), 50);
    for (k, a) in answers.iter().enumerate() {
        let want = if k % 2 == 0 { Err(CauseCode::UNKNOWN_POOL_HANDLE) } else { Ok(vec![2]) };
        assert_eq!(resolved(a), want, "answer {k}");
    }
    assert!(sim.closed(pu), "closed once every answer is out");
}

/// `limits.expected_pes` sizes every shard's handlespace for its part of them at start, and
/// registering that part then never grows its PE index; 0 sizes nothing ahead.
#[test]
fn expected_pes_size_each_shard_ahead_of_its_registrations() {
    let mut config = RegistrarConfig::new(1, 2);
    config.limits.expected_pes = 10_000;
    let sized = Registrar::new(&config, 1, Time::ZERO);
    assert!(sized.handlespace().pe_capacity() >= 5_000, "{}", sized.handlespace().pe_capacity());
    config.limits.expected_pes = 0;
    let plain = Registrar::new(&config, 1, Time::ZERO);
    assert!(plain.handlespace().pe_capacity() < 5_000);

    config.limits.expected_pes = 2_000;
    config.limits.max_pes_per_connection = 2_000;
    let mut sim = RegSim::with(config);
    let capacity = sim.shard(0).handlespace().pe_capacity();
    assert!(capacity >= 1_000);
    let pe = sim.connect(0, "192.0.2.1:1");
    let handle = handle_on(0, 2);
    for id in 1..=1_000 {
        sim.send(pe, &registration(&handle, id, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
        assert!(!reg_response(&sim.one(pe)).0);
    }
    assert_eq!(sim.shard(0).handlespace().pe_count(), 1_000);
    assert_eq!(sim.shard(0).handlespace().pe_capacity(), capacity, "the PE index grew");
}

#[test]
fn a_burst_in_a_shard_of_many_pools_is_answered_as_each_request_alone() {
    // Past LOOK_AHEAD_POOLS pools a shard looks a burst's pools up before handling it: a hint
    // that must change no answer, skip what is not a pool request or not this shard's, and
    // survive malformed requests in the burst.
    let shards = 2;
    let mut config = RegistrarConfig::new(1, shards);
    config.limits.max_pes_per_connection = 1 << 20;
    let mut sim = RegSim::with(config);
    let pe = sim.connect(0, "192.0.2.1:1");
    let pools = 2 * super::router::LOOK_AHEAD_POOLS as u32 + 512;
    let mut stream = Vec::new();
    for p in 0..pools {
        stream.extend(registration(&format!("pool-{p}"), p + 1, tcp("192.0.2.1", 7000), Policy::RoundRobin, -1));
    }
    sim.send(pe, &stream);
    assert_eq!(sim.take(pe).len(), pools as usize);
    for s in 0..shards {
        assert!(sim.shard(s).handlespace().pool_count() > super::router::LOOK_AHEAD_POOLS, "shard {s}");
    }

    let pu = sim.connect(0, "192.0.2.9:1");
    let mut burst = Vec::new();
    let mut expected: Vec<Result<Vec<u32>, CauseCode>> = Vec::new();
    for p in [3, 17, 9000, 12, 40, 17] {
        burst.extend(resolution(&format!("pool-{p}"), None));
        expected.push(Ok(vec![p + 1]));
    }
    burst.extend(resolution("no-such-pool", None));
    expected.push(Err(CauseCode::UNKNOWN_POOL_HANDLE));
    // A resolution whose handle parameter claims more bytes than the message holds.
    let mut bad = resolution("pool-5", None);
    bad[6..8].copy_from_slice(&200u16.to_be_bytes());
    burst.extend(&bad);
    burst.extend(resolution("pool-5", None));
    expected.push(Ok(vec![6]));
    sim.send(pu, &burst);
    let answers = sim.take(pu);
    assert_eq!(answers.len(), expected.len() + 1, "every request answered, the malformed one too");
    let mut ok = answers.iter().filter(|a| a[0] == MessageType::HandleResolutionResponse as u8);
    for want in &expected {
        assert_eq!(resolved(ok.next().unwrap()), *want);
    }
    assert!(!sim.closed(pu));
}
