//! ENRP peer discovery by multicast Presence (RFC 5353 section 3.2, WIRE.md 1 and 7.2; off by
//! default). A registrar with `[enrp_multicast]` enabled multicasts its Presence (receiver id
//! 0, its PE checksum, its Server Information naming its ENRP address) every
//! PEER-HEARTBEAT-CYCLE and listens on the group (rsplib's: 239.0.0.51:9901); a Presence there
//! from a registrar it does not know makes it dial that registrar like a configured peer.
//!
//! The UDP socket lives in a side thread of the registrar binary; this module is its sans-IO
//! part and the hand-over to the [`super::Coordinator`]:
//! - [`classify`] says what one datagram means: a Presence from another registrar names its
//!   id and ENRP address; anything else (our own, another message type, bytes that do not
//!   parse) is counted and dropped.
//! - [`Discovery`] is shared by the thread and the coordinator: the thread posts what it
//!   heard, the coordinator takes it on its timer (every [`POLL_MS`], with a `try_lock`, so
//!   shard 0 never waits) and publishes its own checksum for the next Presence sent.
//!
//! Multicast Presences are never audited (WIRE.md 7.5: audits run on unicast Presence only):
//! they only introduce registrars, and everything else happens over the TCP connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

use crate::handlespace::checksum::fold_complement;
use crate::wire::enrp::{self, Kind};
use crate::wire::{ServerInformationRepr, TransportProtocol, TransportRepr, Writer};

/// How often the coordinator takes what the multicast thread heard (milliseconds).
pub const POLL_MS: u64 = 200;

/// Registrars heard but not yet taken by the coordinator; more distinct ones wait for the
/// next Presence (a flood of forged ids cannot grow memory).
pub const MAX_PENDING: usize = 256;

/// What one datagram on the group means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A Presence from registrar `server_id`, whose ENRP listener is at `addr`.
    Peer {
        /// Its server id.
        server_id: u32,
        /// Its ENRP address (its Server Information's; the datagram's source address where
        /// that names no address, 0.0.0.0 or ::).
        addr: SocketAddr,
    },
    /// Our own Presence, looped back.
    Own,
    /// A well-formed ENRP message that names no registrar reachable here: not a Presence, or a
    /// Presence whose ENRP transport is not TCP (rsplib's registrars announce SCTP).
    Ignored,
    /// Not a valid ENRP Presence (does not parse, sender id 0, no address or port 0).
    Malformed,
}

/// What datagram `data`, from `from`, means to registrar `me`.
pub fn classify(me: u32, data: &[u8], from: SocketAddr) -> Heard {
    let Ok(m) = enrp::parse(data) else { return Heard::Malformed };
    let body = m.body();
    let Kind::Presence { server_information, .. } = &body.kind else { return Heard::Ignored };
    if body.sender == 0 {
        return Heard::Malformed;
    }
    if body.sender == me {
        return Heard::Own;
    }
    let t = server_information.transport();
    if t.protocol() != TransportProtocol::Tcp {
        return Heard::Ignored;
    }
    let (Some(ip), port) = (t.addresses().next(), t.port()) else { return Heard::Malformed };
    if port == 0 {
        return Heard::Malformed;
    }
    let ip = if ip.is_unspecified() { from.ip() } else { ip };
    Heard::Peer { server_id: body.sender, addr: SocketAddr::new(ip, port) }
}

/// Counters of multicast discovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Datagrams received on the group.
    pub received: u64,
    /// Datagrams that were not a valid Presence (dropped).
    pub malformed: u64,
    /// Our own Presences, looped back (dropped).
    pub own: u64,
    /// Valid ENRP messages other than a Presence over TCP (dropped).
    pub ignored: u64,
    /// Presences of other registrars handed to the coordinator.
    pub heard: u64,
    /// Presences dropped because [`MAX_PENDING`] other registrars were waiting.
    pub overflow: u64,
    /// Presences multicast by this registrar.
    pub sent: u64,
}

/// What the multicast thread and the coordinator share.
#[derive(Debug)]
pub struct Discovery {
    me: u32,
    info: ServerInformationRepr,
    /// This registrar's own PE checksum as last announced (a u16; set by the coordinator).
    checksum: AtomicU32,
    /// Registrars heard since the coordinator last looked: id → ENRP address (the latest).
    pending: Mutex<BTreeMap<u32, SocketAddr>>,
    received: AtomicU64,
    malformed: AtomicU64,
    own: AtomicU64,
    ignored: AtomicU64,
    heard: AtomicU64,
    overflow: AtomicU64,
    sent: AtomicU64,
}

impl Discovery {
    /// Discovery for registrar `server_id`, whose ENRP listener peers dial at `enrp`.
    pub fn new(server_id: u32, enrp: SocketAddr) -> Self {
        Self {
            me: server_id,
            info: ServerInformationRepr {
                server_id,
                transport: TransportRepr::new(TransportProtocol::Tcp, enrp.ip(), enrp.port()),
            },
            checksum: AtomicU32::new(u32::from(fold_complement(0))),
            pending: Mutex::new(BTreeMap::new()),
            received: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            own: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// The Presence to multicast now: receiver 0, no R flag, this registrar's checksum as
    /// last announced to its peers.
    pub fn presence(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        let sum = self.checksum.load(Ordering::Relaxed) as u16;
        let _ = enrp::emit_presence(&mut Writer::new(&mut buf), self.me, 0, false, sum, &self.info);
        self.sent.fetch_add(1, Ordering::Relaxed);
        buf
    }

    /// One datagram received from `from` (the multicast thread): counted, and a Presence from
    /// another registrar is kept for the coordinator. Returns what it was.
    pub fn on_datagram(&self, data: &[u8], from: SocketAddr) -> Heard {
        self.received.fetch_add(1, Ordering::Relaxed);
        let heard = classify(self.me, data, from);
        let counter = match heard {
            Heard::Peer { server_id, addr } => {
                let mut pending = match self.pending.lock() {
                    Ok(p) => p,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if pending.len() >= MAX_PENDING && !pending.contains_key(&server_id) {
                    &self.overflow
                } else {
                    pending.insert(server_id, addr);
                    &self.heard
                }
            }
            Heard::Own => &self.own,
            Heard::Ignored => &self.ignored,
            Heard::Malformed => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        heard
    }

    /// The registrars heard since the last call (the coordinator, on its timer). Empty while
    /// the thread holds the lock: they are taken at the next poll.
    pub fn take(&self) -> BTreeMap<u32, SocketAddr> {
        match self.pending.try_lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(TryLockError::Poisoned(p)) => std::mem::take(&mut *p.into_inner()),
            Err(TryLockError::WouldBlock) => BTreeMap::new(),
        }
    }

    /// Publishes this registrar's own PE checksum for the Presences sent from now on.
    pub fn set_checksum(&self, checksum: u16) {
        self.checksum.store(u32::from(checksum), Ordering::Relaxed);
    }

    /// The counters.
    pub fn stats(&self) -> DiscoveryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiscoveryStats {
            received: get(&self.received),
            malformed: get(&self.malformed),
            own: get(&self.own),
            ignored: get(&self.ignored),
            heard: get(&self.heard),
            overflow: get(&self.overflow),
            sent: get(&self.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn presence_of(id: u32, enrp: &str) -> Vec<u8> {
        Discovery::new(id, addr(enrp)).presence()
    }

    #[test]
    fn a_presence_from_another_registrar_names_its_enrp_address() {
        let from = addr("10.0.0.2:40000");
        assert_eq!(
            classify(1, &presence_of(2, "10.0.0.2:9901"), from),
            Heard::Peer { server_id: 2, addr: addr("10.0.0.2:9901") }
        );
        // A wildcard listener: the datagram's source says where.
        assert_eq!(
            classify(1, &presence_of(2, "0.0.0.0:9911"), from),
            Heard::Peer { server_id: 2, addr: addr("10.0.0.2:9911") }
        );
    }

    #[test]
    fn own_presence_other_messages_and_bad_bytes_are_not_peers() {
        let from = addr("10.0.0.1:40000");
        assert_eq!(classify(1, &presence_of(1, "10.0.0.1:9901"), from), Heard::Own);
        let mut list = Vec::new();
        enrp::emit_list_request(&mut Writer::new(&mut list), 2, 0).unwrap();
        assert_eq!(classify(1, &list, from), Heard::Ignored);
        // rsplib's registrars: ENRP over SCTP, which this registrar does not dial.
        let mut sctp = Vec::new();
        let info = ServerInformationRepr {
            server_id: 2,
            transport: TransportRepr::new(TransportProtocol::Sctp, addr("10.0.0.2:1").ip(), 9901),
        };
        enrp::emit_presence(&mut Writer::new(&mut sctp), 2, 0, false, 0xffff, &info).unwrap();
        assert_eq!(classify(1, &sctp, from), Heard::Ignored);
        assert_eq!(classify(1, &[], from), Heard::Malformed);
        assert_eq!(classify(1, &[1, 0, 0, 4], from), Heard::Malformed);
        assert_eq!(classify(1, &[0xff; 40], from), Heard::Malformed);
        let good = presence_of(2, "10.0.0.2:9901");
        for cut in 0..good.len() {
            assert_eq!(classify(1, &good[..cut], from), Heard::Malformed, "cut at {cut}");
        }
        // A sender id of 0 and a port of 0 name no registrar.
        assert_eq!(classify(1, &presence_of(0, "10.0.0.2:9901"), from), Heard::Malformed);
        assert_eq!(classify(1, &presence_of(2, "10.0.0.2:0"), from), Heard::Malformed);
    }

    #[test]
    fn mutated_datagrams_never_panic() {
        let good = presence_of(2, "10.0.0.2:9901");
        let mut rng = fastrand::Rng::with_seed(15);
        let from = addr("10.0.0.9:1");
        for _ in 0..20_000 {
            let mut d = good.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..d.len());
                d[i] = rng.u8(..);
            }
            d.truncate(rng.usize(..=d.len()));
            let _ = classify(1, &d, from);
        }
    }

    #[test]
    fn datagrams_are_counted_and_only_peers_reach_the_coordinator() {
        let d = Discovery::new(1, addr("10.0.0.1:9901"));
        let from = addr("10.0.0.9:1");
        d.on_datagram(&d.presence(), from);
        d.on_datagram(b"not ENRP", from);
        d.on_datagram(&presence_of(2, "10.0.0.2:9901"), from);
        d.on_datagram(&presence_of(2, "10.0.0.2:9901"), from);
        d.on_datagram(&presence_of(3, "10.0.0.3:9901"), from);
        let s = d.stats();
        assert_eq!((s.received, s.own, s.malformed, s.heard, s.sent), (5, 1, 1, 3, 1));
        let taken: Vec<_> = d.take().into_iter().collect();
        assert_eq!(taken, vec![(2, addr("10.0.0.2:9901")), (3, addr("10.0.0.3:9901"))]);
        assert!(d.take().is_empty(), "taken once");
    }

    #[test]
    fn the_pending_set_is_bounded() {
        let d = Discovery::new(1, addr("10.0.0.1:9901"));
        let from = addr("10.0.0.9:1");
        for id in 2..(2 + MAX_PENDING as u32 + 10) {
            d.on_datagram(&presence_of(id, "10.0.0.2:9901"), from);
        }
        assert_eq!(d.stats().overflow, 10);
        // One already waiting is refreshed, not refused.
        d.on_datagram(&presence_of(2, "10.0.0.7:9901"), from);
        assert_eq!(d.stats().overflow, 10);
        let taken = d.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert_eq!(taken[&2], addr("10.0.0.7:9901"));
    }

    #[test]
    fn the_presence_sent_carries_the_published_checksum() {
        let d = Discovery::new(7, addr("10.0.0.7:9901"));
        d.set_checksum(0x1234);
        let bytes = d.presence();
        let m = enrp::parse(&bytes).unwrap();
        assert_eq!((m.body().sender, m.body().receiver), (7, 0));
        let Kind::Presence { reply_required, checksum, server_information } = &m.body().kind else {
            panic!("not a Presence")
        };
        assert!(!reply_required);
        assert_eq!(*checksum, 0x1234);
        assert_eq!(server_information.server_id(), 7);
    }
}

/// The coordinator's side: which registrars heard by multicast it dials.
#[cfg(test)]
mod coordinator_tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Timers;
    use crate::enrp::{Coordinator, EnrpConfig, EnrpMsg, Sync, ENRP};
    use crate::service::{ConnId, Outbox, ShardId, Tag};
    use crate::time::Time;

    /// Records what the coordinator asks of the engine.
    #[derive(Default)]
    struct Out {
        dials: Vec<SocketAddr>,
        sent: Vec<(ConnId, Vec<u8>)>,
        next_slot: u32,
    }

    impl Outbox<EnrpMsg> for Out {
        fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
            let mut buf = Vec::new();
            write(&mut buf);
            self.sent.push((conn, buf));
        }
        fn post(&mut self, _: ShardId, _: EnrpMsg) {}
        fn close(&mut self, _: ConnId) {}
        fn hold(&mut self, _: ConnId, _: bool) {}
        fn pause(&mut self, _: ConnId, _: bool) {}
        fn input_paused(&self, _: ConnId) -> bool {
            false
        }
        fn connect(&mut self, addr: SocketAddr, _: Tag) -> Option<ConnId> {
            self.dials.push(addr);
            self.next_slot += 1;
            Some(ConnId { shard: 0, generation: 0, slot: 100 + self.next_slot })
        }
    }

    const ME: u32 = 0xa1;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn coordinator(allowlist: &[&str], discovery: Option<Arc<Discovery>>) -> Coordinator {
        coordinator_with(allowlist, discovery, Timers::default())
    }

    fn coordinator_with(allowlist: &[&str], discovery: Option<Arc<Discovery>>, timers: Timers) -> Coordinator {
        let cfg = EnrpConfig {
            server_id: ME,
            address: addr("127.0.0.1:9901"),
            peers: Vec::new(),
            allowlist: allowlist.iter().map(|n| n.parse().unwrap()).collect(),
            timers,
            shards: 1,
            max_message_size: 4096,
            tag: ENRP,
            discovery,
        };
        Coordinator::new(cfg, 0, Time::ZERO)
    }

    fn presence_of(id: u32, enrp: &str) -> Vec<u8> {
        Discovery::new(id, addr(enrp)).presence()
    }

    /// Peer 0xb2 dials `c` and introduces itself; returns its connection (nothing sent yet).
    fn with_peer(c: &mut Coordinator, out: &mut Out) -> ConnId {
        let conn = ConnId { shard: 0, generation: 0, slot: 1 };
        assert!(c.on_accept(conn, addr("127.0.0.2:50000"), false));
        let hello = presence_of(0xb2, "127.0.0.2:9901");
        assert_eq!(c.on_data(conn, &hello, Time::ZERO, out), hello.len());
        out.sent.clear();
        conn
    }

    /// The dials made by timers run until `until` milliseconds.
    fn run(c: &mut Coordinator, out: &mut Out, from: u64, until: u64) {
        let mut now = from;
        while now <= until {
            c.on_timer(Time::from_millis(now), out);
            now += 50;
        }
    }

    #[test]
    fn a_new_registrar_heard_by_multicast_is_dialled_once() {
        let d = Arc::new(Discovery::new(ME, addr("127.0.0.1:9901")));
        let mut c = coordinator(&[], Some(Arc::clone(&d)));
        assert_eq!(c.sync(), Sync::Joining, "with multicast on, a registrar waits for a mentor");
        let mut out = Out::default();
        let src = addr("127.0.0.2:40000");
        d.on_datagram(&presence_of(0xb2, "127.0.0.2:9901"), src);
        d.on_datagram(&presence_of(ME, "127.0.0.1:9901"), src);
        d.on_datagram(b"\x01\x00\x00\x03", src);
        // Taken on the coordinator's timer, within one poll.
        assert!(c.next_timer().unwrap() <= Time::from_millis(POLL_MS));
        run(&mut c, &mut out, 0, POLL_MS);
        assert_eq!(out.dials, vec![addr("127.0.0.2:9901")], "the new one, not our own");
        assert_eq!(c.stats().discovered, 1);
        assert_eq!((d.stats().own, d.stats().malformed), (1, 1));
        // Heard again while the dial is under way: no second dial.
        d.on_datagram(&presence_of(0xb2, "127.0.0.2:9901"), src);
        run(&mut c, &mut out, POLL_MS + 50, 3 * POLL_MS);
        assert_eq!(out.dials.len(), 1);
        // A dial announces us (the unicast Presence that makes us known there).
        let conn = ConnId { shard: 0, generation: 0, slot: 101 };
        c.on_connect(conn, true, Time::from_millis(700), &mut out);
        assert!(out.sent.iter().any(|(c, m)| *c == conn && m[0] == 1), "a Presence on the new connection");
    }

    #[test]
    fn registrars_outside_the_admitted_networks_are_not_dialled() {
        let d = Arc::new(Discovery::new(ME, addr("127.0.0.1:9901")));
        let mut c = coordinator(&["10.7.0.0/16"], Some(Arc::clone(&d)));
        let mut out = Out::default();
        let src = addr("192.0.2.1:1");
        d.on_datagram(&presence_of(0xb2, "192.0.2.1:9901"), src);
        d.on_datagram(&presence_of(0xc3, "10.7.1.1:9901"), src);
        run(&mut c, &mut out, 0, POLL_MS);
        assert_eq!(out.dials, vec![addr("10.7.1.1:9901")]);
        assert_eq!((c.stats().discovered, c.stats().discovered_refused), (1, 1));
    }

    #[test]
    fn a_known_peer_is_not_dialled_again_but_a_new_id_at_a_known_address_is() {
        let mut c = coordinator(&[], None);
        let mut out = Out::default();
        with_peer(&mut c, &mut out);
        assert_eq!(c.known_peers(), vec![0xb2]);
        let now = Time::from_millis(10);
        assert!(!c.on_discovered(0xb2, addr("127.0.0.2:9901"), now), "known already");
        assert!(!c.on_discovered(ME, addr("127.0.0.9:9901"), now), "ourselves");
        assert!(!c.on_discovered(0xd4, addr("127.0.0.1:9901"), now), "our own address");
        // b2's address is kept to redial; a restarted registrar there (new id) is dialled now.
        assert!(c.on_discovered(0xe5, addr("127.0.0.2:9901"), now));
        c.on_timer(now, &mut out);
        assert!(out.dials.is_empty(), "b2 is connected at that address: no dial while it is up");
    }

    #[test]
    fn handle_updates_for_peers_are_gathered_for_the_window_then_written_in_one_piece() {
        let window = 300;
        let mut c = coordinator_with(&[], None, Timers { update_coalesce_us: window, ..Timers::default() });
        let mut out = Out::default();
        let conn = with_peer(&mut c, &mut out);
        let update = |byte: u8| EnrpMsg::Outgoing { updates: [byte; 8][..].into(), add: 0, sub: 0 };
        let due = Time::from_millis(100);
        assert_eq!(c.gathering(), None, "nothing gathered");
        c.on_message(update(1), due, &mut out);
        c.on_message(update(2), due, &mut out);
        assert!(out.sent.is_empty(), "gathered, not written");
        assert_eq!(c.gathering(), Some(std::time::Duration::from_micros(window)), "the engine is asked for a flush");
        c.on_timer(due, &mut out);
        assert!(out.sent.is_empty(), "timers do not write them");
        c.on_flush(&mut out);
        let expected: Vec<u8> = [[1u8; 8], [2u8; 8]].concat();
        assert_eq!(out.sent, vec![(conn, expected)], "one write with both, in order");
        assert_eq!(c.gathering(), None, "nothing left to write");
        // Anything else to the peer (here a Presence) writes the gathered updates first.
        c.on_message(update(3), due, &mut out);
        let probe = presence_of(0xb2, "127.0.0.2:9901");
        let mut asks = probe.clone();
        asks[1] |= 1; // Reply required: we answer with our Presence.
        c.on_data(conn, &asks, due, &mut out);
        assert_eq!(out.sent[1], (conn, vec![3u8; 8]));
        assert_eq!(out.sent[2].1[0], 1, "then the Presence");
        // A stopping registrar writes at once.
        c.on_message(update(4), due, &mut out);
        c.on_stop(&mut out);
        c.on_message(update(5), due, &mut out);
        assert_eq!(out.sent[3..], [(conn, vec![4u8; 8]), (conn, vec![5u8; 8])]);
    }

    #[test]
    fn without_a_window_handle_updates_are_written_at_once() {
        let mut c = coordinator_with(&[], None, Timers { update_coalesce_us: 0, ..Timers::default() });
        let mut out = Out::default();
        let conn = with_peer(&mut c, &mut out);
        c.on_message(EnrpMsg::Outgoing { updates: [7u8; 8][..].into(), add: 0, sub: 0 }, Time::ZERO, &mut out);
        assert_eq!(out.sent, vec![(conn, vec![7u8; 8])]);
    }

    #[test]
    fn without_multicast_nothing_changes() {
        let c = coordinator(&[], None);
        assert_eq!(c.sync(), Sync::Consistent);
        assert_eq!(c.next_timer(), Some(Time::from_millis(Timers::default().peer_heartbeat)));
    }

    #[test]
    fn the_coordinator_publishes_its_checksum_for_the_multicast_presence() {
        let d = Arc::new(Discovery::new(ME, addr("127.0.0.1:9901")));
        d.set_checksum(0x0bad);
        let mut c = coordinator(&[], Some(Arc::clone(&d)));
        c.on_timer(Time::ZERO, &mut Out::default());
        let bytes = d.presence();
        let m = enrp::parse(&bytes).unwrap();
        let Kind::Presence { checksum, .. } = m.body().kind else { panic!("not a Presence") };
        assert_eq!(checksum, c.own_checksum());
    }
}
