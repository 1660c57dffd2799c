//! One registrar shard as a [`Service`]: frames the bytes of the client connections it owns,
//! hands each message to the shard owning its pool (by a fixed hash of the pool handle), and
//! sends the answers in request order. The ASAP procedures themselves are
//! [`crate::asap::Procedures`]; this module only moves requests and answers between
//! connections and shards, and keeps the per-connection state that spans shards: the order of
//! answers, the PEs a connection registered on every shard, and the shards to tell when it
//! closes.

use core::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, warn};

use super::msg::ShardMsg;
use super::order::Sequencer;
use super::status::{StatusReport, STATUS_REQUEST};
use crate::asap::{
    Budgets, Change, ChangeSink, Handled, PeChange, Procedures, ProceduresConfig, Reason, Request, Stats,
};
use crate::config::{Limits, Security, Timers};
use crate::enrp::{Coordinator, EnrpConfig, EnrpMsg, EnrpShard, UpdateEncoder};
use crate::handlespace::{shard_of, Handlespace};
use crate::metrics::{EnrpSnapshot, MessageKind, MetricsHub, ShardMetrics, ShardView};
use crate::service::{ConnId, Outbox, Payload, Service, ShardId, Tag};
use crate::time::Time;
use crate::wire::asap::{self, MessageType};
use crate::wire::framer::Frame;
use crate::wire::{Framer, Protocol};

pub use crate::asap::ASAP;
pub use crate::enrp::{ENRP, ENRP_TLS};

/// Pools a shard holds before a burst of requests looks its pools up ahead
/// ([`Registrar::look_ahead`]): a burst of 16 resolutions over 100,000 pools of 10 ran 1.5-2.0x
/// faster with it (`benches/registrar.rs`, `handle-resolution-burst16-spread`; over TCP 1.24x
/// the capacity per core, and 1.08x at 10,000 pools), over 1,000 it cost 23 % more
/// instructions for no measurable gain (`results/registrar/look-ahead-20261202.md`).
pub(super) const LOOK_AHEAD_POOLS: usize = 8192;

/// What a registrar shard needs to know.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// This registrar's server id (home registrar id of the PEs it owns).
    pub server_id: u32,
    /// Number of shards in the process.
    pub shards: u16,
    /// Resource limits (registrar-wide: every shard of one registrar counts against them).
    pub limits: Limits,
    /// Protocol timers.
    pub timers: Timers,
    /// Seed of the random selection policies (each shard mixes in its index).
    pub seed: u64,
    /// The registrar-wide PE and pool counts, shared by the shards built from this config.
    pub budgets: Arc<Budgets>,
    /// ENRP: where peers reach this registrar (its ENRP listener, accepted by shard 0); `None`
    /// runs it alone.
    pub enrp: Option<SocketAddr>,
    /// ENRP peers to connect to (their ENRP addresses).
    pub peers: Vec<SocketAddr>,
    /// Registration checks and ENRP peer admission.
    pub security: Security,
    /// ENRP peer discovery by multicast Presence (`None`: off).
    pub discovery: Option<Arc<crate::enrp::Discovery>>,
    /// Where the shards publish their counters for a metrics endpoint (one slot per shard);
    /// `None`: no metrics are kept beyond the shards' own counters.
    pub metrics: Option<Arc<MetricsHub>>,
}

impl RegistrarConfig {
    /// A configuration with the defaults of [`crate::config::Config`].
    pub fn new(server_id: u32, shards: u16) -> Self {
        Self {
            server_id,
            shards,
            limits: Limits::default(),
            timers: Timers::default(),
            seed: 0x5253_4552_504f_4f4c,
            budgets: Arc::default(),
            enrp: None,
            peers: Vec::new(),
            security: Security::default(),
            discovery: None,
            metrics: None,
        }
    }
}

/// The shard that holds the ENRP peer connections and runs the coordinator.
pub const COORDINATOR: ShardId = 0;

/// A client connection whose socket this shard owns.
#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    /// Other shards holding PEs registered over this connection (bit per shard, up to 64;
    /// beyond that every shard is told when it closes).
    shards: u64,
    /// Keeps answers in request order when other shards answer some requests.
    order: Sequencer,
    /// PEs registered over this connection, on every shard.
    pes: u32,
    /// Registrations out at other shards (each may add a PE).
    registering: u32,
    /// Registrations refused for a resource limit in a row.
    refusals: u32,
    /// Input is paused because too many answers are outstanding.
    paused: bool,
}

impl Conn {
    /// How many more PEs it may register under a limit of `max`, counting its registrations
    /// in flight as new ones (conservative while several are out at once).
    fn room(&self, max: usize) -> u32 {
        let used = self.pes as usize + self.registering as usize;
        max.saturating_sub(used).min(u32::MAX as usize) as u32
    }
}

/// This shard's connections, indexed by the engine's slot number (dense, small): one array
/// access per message instead of a hash lookup. The generation tells a reused slot apart.
#[derive(Debug, Default)]
struct Conns {
    slots: Vec<Option<(u16, Conn)>>,
}

impl Conns {
    fn insert(&mut self, id: ConnId, conn: Conn) {
        let i = id.slot as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some((id.generation, conn));
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.slots.get_mut(id.slot as usize) {
            Some(Some((generation, c))) if *generation == id.generation => Some(c),
            _ => None,
        }
    }

    fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        match slot {
            Some((generation, _)) if *generation == id.generation => slot.take().map(|(_, c)| c),
            _ => None,
        }
    }
}

/// How the PE counts of connections changed during one call of the procedures.
#[derive(Debug, Default)]
struct ConnDeltas(Vec<(ConnId, i32)>);

impl ChangeSink for ConnDeltas {
    fn changed(&mut self, c: &PeChange<'_>) {
        if c.reason == Reason::ConnectionLoss {
            return; // the connection is gone
        }
        match (c.change, c.pe.conn(), c.moved_from) {
            (Change::Added, Some(conn), _) => self.0.push((conn, 1)),
            (Change::Removed, Some(conn), _) => self.0.push((conn, -1)),
            (Change::Updated, now, Some(before)) => {
                self.0.push((before, -1));
                if let Some(conn) = now {
                    self.0.push((conn, 1));
                }
            }
            _ => {}
        }
    }
}

/// One registrar shard.
pub struct Registrar {
    shard: ShardId,
    shards: u16,
    procedures: Procedures,
    conns: Conns,
    framer: Framer,
    limits: Limits,
    deltas: ConnDeltas,
    /// Handle Updates of this registrar's own PEs (encoded only when ENRP runs).
    updates: UpdateEncoder,
    enrp: EnrpShard,
    coordinator: Option<Coordinator>,
    /// The answer being built for a request.
    answer: Vec<u8>,
    /// The registrar is shutting down: connections closing now are not PEs going away.
    stopping: bool,
    /// Limits the warn lines about connections closed for framing errors (one per connection
    /// otherwise, however fast a client opens them).
    close_log: crate::asap::loglimit::LogLimit,
    /// Message counts, sampled handling times and gauges for the metrics endpoint.
    metrics: Option<Box<ShardMetrics>>,
}

impl Registrar {
    /// Shard `shard` of `config.shards`, starting at `now`.
    pub fn new(config: &RegistrarConfig, shard: ShardId, now: Time) -> Self {
        let procedures = ProceduresConfig {
            server_id: config.server_id,
            limits: config.limits.clone(),
            timers: config.timers.clone(),
            seed: config.seed,
            budgets: Arc::clone(&config.budgets),
            security: config.security.clone(),
        };
        let l = &config.limits;
        let mut procedures = Procedures::new(&procedures, shard, now);
        // Pools go to shards by a hash of their handle, and their PEs with them: an even split
        // unless a few pools hold most PEs (a shard then grows past its part).
        procedures.reserve(l.expected_pes.div_ceil(usize::from(config.shards.max(1))));
        Self {
            shard,
            shards: config.shards.max(1),
            procedures,
            conns: Conns::default(),
            framer: Framer::new(Protocol::Asap, l.max_message_size),
            close_log: crate::asap::loglimit::LogLimit::new("connections closed for framing errors"),
            limits: l.clone(),
            deltas: ConnDeltas::default(),
            updates: UpdateEncoder::new(config.server_id, config.enrp.is_some()),
            enrp: EnrpShard::new(config.server_id, shard, l.max_table_chunk, l.max_message_size),
            coordinator: config.enrp.filter(|_| shard == COORDINATOR).map(|address| {
                let cfg = EnrpConfig {
                    server_id: config.server_id,
                    address,
                    peers: config.peers.clone(),
                    allowlist: config.security.enrp_allowlist.clone(),
                    timers: config.timers.clone(),
                    shards: config.shards.max(1),
                    max_message_size: l.max_message_size,
                    tag: ENRP,
                    discovery: config.discovery.clone(),
                };
                Coordinator::new(cfg, shard, now)
            }),
            answer: Vec::with_capacity(l.max_message_size + 32),
            stopping: false,
            metrics: config.metrics.as_ref().map(|hub| Box::new(ShardMetrics::new(Arc::clone(hub), shard, now))),
        }
    }

    /// The ENRP coordinator, on the shard that runs it.
    pub fn coordinator(&self) -> Option<&Coordinator> {
        self.coordinator.as_ref()
    }

    /// Hands on what the last procedures call changed: connections' PE counts, and Handle
    /// Updates of this registrar's own PEs (to the coordinator).
    fn flush(&mut self, out: &mut impl Outbox<ShardMsg>) {
        self.flush_deltas(out);
        if let Some(msg) = self.updates.take() {
            out.post(COORDINATOR, msg.into());
        }
    }

    /// This shard's part of the handlespace.
    pub fn handlespace(&self) -> &Handlespace {
        self.procedures.handlespace()
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        self.procedures.stats()
    }

    /// PEs under keep-alive supervision on this shard.
    pub fn supervised_pes(&self) -> usize {
        self.procedures.supervised_pes()
    }

    /// The PEs registered over local connection `conn` on every shard, as this shard counts
    /// them (`None` for a connection it does not own).
    pub fn connection_pe_count(&mut self, conn: ConnId) -> Option<u32> {
        self.conns.get_mut(conn).map(|c| c.pes)
    }

    /// The pool handle a message is about, read without validating the message: the routing
    /// key. `None` for messages that are not about a pool (or whose handle is unreadable).
    fn routing_handle(msg: &[u8]) -> Option<&[u8]> {
        match MessageType::from_u8(msg[0])? {
            MessageType::Registration
            | MessageType::Deregistration
            | MessageType::HandleResolution
            | MessageType::EndpointKeepAliveAck
            | MessageType::EndpointUnreachable => {}
            _ => return None,
        }
        // Fast path: the handle is the first parameter, as every client sends it.
        if let [_, _, _, _, 0, 9, l0, l1, ..] = *msg {
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if len >= 4 && 4 + len <= msg.len() {
                return Some(&msg[8..4 + len]);
            }
        }
        asap::salvage_ids(msg).0
    }

    /// Asks for the pools that the first complete messages of `data` will look up on this shard
    /// (Handle Resolutions, registrations...), all of them before any is handled: their cache
    /// misses then overlap rather than each request waiting on its own. Only in a shard of
    /// more than [`LOOK_AHEAD_POOLS`] pools: in a smaller one the lookups hit the caches and
    /// the look-ahead's second hash and probe (about 250 instructions a request) buy nothing.
    fn look_ahead(&self, data: &[u8]) {
        const AHEAD: usize = 16;
        let hs = self.procedures.handlespace();
        if hs.pool_count() <= LOOK_AHEAD_POOLS {
            return;
        }
        let mut found: [(&[u8], u64); AHEAD] = [(&[], 0); AHEAD];
        let mut n = 0;
        for msg in self.framer.frames(data).map_while(Result::ok).take(AHEAD) {
            let Some(handle) = Self::routing_handle(msg) else { continue };
            if self.shards > 1 && shard_of(handle, self.shards) != self.shard {
                continue;
            }
            found[n] = (handle, hs.prefetch_pool_index(handle));
            n += 1;
        }
        if n > 1 {
            for &(handle, hash) in &found[..n] {
                hs.prefetch_pool(handle, hash);
            }
        }
    }

    /// Handles one complete message from `conn`, here or at the shard owning its pool.
    fn dispatch(&mut self, conn: ConnId, msg: &[u8], now: Time, out: &mut impl Outbox<ShardMsg>) {
        let owner = match self.shards {
            1 => self.shard,
            _ if msg[0] == STATUS_REQUEST => COORDINATOR,
            n => Self::routing_handle(msg).map_or(self.shard, |handle| shard_of(handle, n)),
        };
        let registration = msg[0] == MessageType::Registration as u8;
        let max_pes = self.limits.max_pes_per_connection;
        let Some(c) = self.conns.get_mut(conn) else { return };
        let peer = c.peer;
        let room = if registration { c.room(max_pes) } else { 0 };
        if owner != self.shard {
            if c.order.idle() {
                // Answers are now owed from another shard: keep the connection open for them
                // even if the client shuts down its side meanwhile.
                out.hold(conn, true);
            }
            let seq = c.order.number();
            if registration {
                c.shards |= 1u64.checked_shl(u32::from(owner)).unwrap_or(u64::MAX);
                c.registering += 1;
            }
            out.post(owner, ShardMsg::Request { conn, seq, peer, room, message: Payload::from_slice(msg) });
            if let Some(m) = self.metrics.as_deref_mut() {
                m.posted();
            }
            self.pace(conn, out);
            return;
        }
        let req = Request { conn, peer, message: msg, room };
        let handled = if c.order.idle() {
            // The usual case: the answer goes straight into the connection's send queue.
            let mut handled = Handled::default();
            out.send(conn, &mut |buf| handled = self.serve(&req, now, buf));
            handled
        } else {
            // An earlier request is out at another shard: this answer waits its turn.
            let seq = c.order.number();
            let mut answer = std::mem::take(&mut self.answer);
            answer.clear();
            let handled = self.serve(&req, now, &mut answer);
            self.answered(conn, seq, &answer, out);
            self.answer = answer;
            handled
        };
        self.flush(out);
        if registration {
            self.after_registration(conn, handled, now, out);
        }
    }

    /// Handles one request on this shard, writing its answer to `answer`; counts it, and times
    /// it when it is one of the sampled ones.
    fn serve(&mut self, req: &Request<'_>, now: Time, answer: &mut Vec<u8>) -> Handled {
        let kind = MessageKind::of(req.message[0]);
        let timed = match self.metrics.as_deref_mut() {
            Some(m) => m.request(kind),
            None => None,
        };
        let handled = self.handle(req, now, answer);
        if let (Some(start), Some(m)) = (timed, self.metrics.as_deref_mut()) {
            m.handled(kind, start);
        }
        handled
    }

    /// [`Registrar::serve`] without the counting (one body, inlined there).
    #[inline(always)]
    fn handle(&mut self, req: &Request<'_>, now: Time, answer: &mut Vec<u8>) -> Handled {
        if req.message[0] == STATUS_REQUEST && req.peer.ip().is_loopback() {
            answer.extend_from_slice(&self.status(now).to_message());
            return Handled::default();
        }
        self.procedures.handle(req, now, answer, &mut (&mut self.deltas, &mut self.updates))
    }

    /// What `rserpool status` shows (asked on the coordinator's shard; counts are
    /// registrar-wide).
    fn status(&self, now: Time) -> StatusReport {
        let b = &self.procedures.budgets();
        let report = StatusReport {
            server_id: format!("{:#010x}", self.procedures.server_id()),
            state: "alone".into(),
            shards: self.shards,
            pes_owned: b.pes.used() as u64,
            pes_of_peers: b.peer_pes.used() as u64,
            pools: b.pools.used() as u64,
            ..StatusReport::default()
        };
        match &self.coordinator {
            Some(c) => report.with_enrp(&c.status(now)),
            None => report,
        }
    }

    /// Sends the answer to request `seq` of local connection `conn`, and any that were waiting
    /// for it, in order.
    fn answered(&mut self, conn: ConnId, seq: u64, bytes: &[u8], out: &mut impl Outbox<ShardMsg>) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.order.answered(seq, bytes, |answer| out.send(conn, &mut |buf| buf.extend_from_slice(answer)));
        if c.order.idle() {
            out.hold(conn, false);
        }
        self.pace(conn, out);
    }

    /// Pauses a connection's input while too many of its answers are outstanding (or waiting
    /// for earlier ones), and resumes it at half: memory per connection stays bounded.
    fn pace(&mut self, conn: ConnId, out: &mut impl Outbox<ShardMsg>) {
        let (max_pending, max_held) = (u64::from(self.limits.max_pending_requests), self.limits.max_send_queue);
        let Some(c) = self.conns.get_mut(conn) else { return };
        let (pending, held) = (c.order.outstanding(), c.order.held_bytes());
        if !c.paused && (pending >= max_pending || held > max_held) {
            c.paused = true;
            out.pause(conn, true);
        } else if c.paused && pending <= max_pending / 2 && held <= max_held / 2 {
            c.paused = false;
            out.pause(conn, false);
        }
    }

    /// WIRE.md section 9: a connection that keeps registering after resource refusals
    /// (cause 0x6) is closed.
    fn after_registration(&mut self, conn: ConnId, handled: Handled, now: Time, out: &mut impl Outbox<ShardMsg>) {
        let max = self.limits.max_refusals;
        let Some(c) = self.conns.get_mut(conn) else { return };
        if !handled.refused {
            c.refusals = 0;
            return;
        }
        c.refusals += 1;
        if c.refusals > max {
            let peer = c.peer;
            if self.close_log.allow(now) {
                warn!(%peer, refusals = c.refusals, "closing connection: it keeps registering beyond its resource limits");
            } else {
                debug!(%peer, refusals = c.refusals, "closing connection: it keeps registering beyond its resource limits");
            }
            self.procedures.stats_mut().refusal_closes += 1;
            out.close(conn);
        }
    }

    /// Hands on the PE count changes of the last procedures call: applied here for this
    /// shard's connections, posted to their shard for the others.
    fn flush_deltas(&mut self, out: &mut impl Outbox<ShardMsg>) {
        if self.deltas.0.is_empty() {
            return;
        }
        let mut deltas = std::mem::take(&mut self.deltas.0);
        deltas.sort_unstable_by_key(|d| d.0);
        let mut i = 0;
        while i < deltas.len() {
            let conn = deltas[i].0;
            let mut delta = 0;
            while i < deltas.len() && deltas[i].0 == conn {
                delta += deltas[i].1;
                i += 1;
            }
            if delta == 0 {
                continue;
            }
            if conn.shard == self.shard {
                self.add_pes(conn, delta);
            } else {
                out.post(conn.shard, ShardMsg::ConnectionPes { conn, delta });
            }
        }
        deltas.clear();
        self.deltas.0 = deltas;
    }

    /// Copies this shard's counters into its metrics slot.
    fn publish(&mut self, now: Time) {
        let Some(m) = self.metrics.as_deref_mut() else { return };
        let hs = self.procedures.handlespace();
        let view = ShardView {
            asap: self.procedures.stats(),
            supervised_pes: self.procedures.supervised_pes(),
            pes: hs.pe_count(),
            pools: hs.pool_count(),
            enrp: self.coordinator.as_ref().map(EnrpSnapshot::of),
        };
        m.publish(now, view);
    }

    fn add_pes(&mut self, conn: ConnId, delta: i32) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.pes = c.pes.saturating_add_signed(delta);
        }
    }
}

impl Service for Registrar {
    type Msg = ShardMsg;

    fn on_accept(&mut self, conn: ConnId, tag: Tag, peer: SocketAddr, now: Time, out: &mut impl Outbox<ShardMsg>) {
        if tag == ENRP || tag == ENRP_TLS {
            // Over mutual TLS the peer proved itself with its certificate; plaintext ENRP is
            // admitted by address (SECURITY.md).
            let admitted = self.coordinator.as_mut().is_some_and(|c| c.on_accept(conn, peer, tag == ENRP_TLS));
            if !admitted {
                out.close(conn);
            }
            return;
        }
        if tag != ASAP {
            if self.close_log.allow(now) {
                warn!(%peer, ?tag, "connection to a listener this registrar does not serve; closing");
            }
            out.close(conn);
            return;
        }
        if let Some(m) = self.metrics.as_deref_mut() {
            m.connection_opened();
        }
        let c =
            Conn { peer, shards: 0, order: Sequencer::default(), pes: 0, registering: 0, refusals: 0, paused: false };
        self.conns.insert(conn, c);
    }

    fn on_connect(
        &mut self,
        conn: ConnId,
        tag: Tag,
        result: std::io::Result<SocketAddr>,
        now: Time,
        out: &mut impl Outbox<ShardMsg>,
    ) {
        match tag {
            ENRP => {
                if let Some(c) = self.coordinator.as_mut() {
                    c.on_connect(conn, result.is_ok(), now, out);
                }
            }
            // A connection to a taken-over PE: served like one the PE made.
            _ => {
                if let Ok(peer) = result {
                    let c = Conn {
                        peer,
                        shards: 0,
                        order: Sequencer::default(),
                        pes: 0,
                        registering: 0,
                        refusals: 0,
                        paused: false,
                    };
                    self.conns.insert(conn, c);
                    if let Some(m) = self.metrics.as_deref_mut() {
                        m.connection_opened();
                    }
                }
                self.procedures.on_dialled(conn, self.conns.get_mut(conn).is_some(), out);
            }
        }
    }

    fn on_data(&mut self, conn: ConnId, data: &[u8], now: Time, out: &mut impl Outbox<ShardMsg>) -> usize {
        let Some(c) = self.conns.get_mut(conn) else {
            return match self.coordinator.as_mut() {
                Some(c) => c.on_data(conn, data, now, out),
                None => data.len(),
            };
        };
        let peer = c.peer;
        if !out.input_paused(conn) {
            self.look_ahead(data);
        }
        let mut used = 0;
        while !out.input_paused(conn) {
            match self.framer.frame(&data[used..]) {
                Ok(Frame::Complete(msg)) => {
                    self.dispatch(conn, msg, now, out);
                    used += msg.len();
                }
                Ok(Frame::Incomplete { .. }) => break,
                Err(e) => {
                    // The stream cannot be framed any more: nothing more is sent; close.
                    self.procedures.stats_mut().framing_errors += 1;
                    if self.close_log.allow(now) {
                        warn!(%peer, "closing connection: {e}");
                    } else {
                        debug!(%peer, "closing connection: {e}");
                    }
                    out.close(conn);
                    return data.len();
                }
            }
        }
        used
    }

    fn on_close(&mut self, conn: ConnId, now: Time, out: &mut impl Outbox<ShardMsg>) {
        let Some(c) = self.conns.remove(conn) else {
            if let Some(c) = self.coordinator.as_mut() {
                c.on_close(conn, now, out);
            }
            return;
        };
        if let Some(m) = self.metrics.as_deref_mut() {
            m.connection_closed();
        }
        if self.stopping {
            // The registrar is going away, not its PEs: their registrations stay with the peers,
            // which take them over (WIRE.md 7.6) instead of hearing them deleted.
            return;
        }
        self.procedures.connection_lost(conn, now, &mut (&mut self.deltas, &mut self.updates));
        self.flush(out);
        for s in (0..self.shards).filter(|&s| s != self.shard) {
            if s >= 64 || c.shards & (1 << s) != 0 {
                out.post(s, ShardMsg::ConnectionClosed { conn });
            }
        }
    }

    fn on_stop(&mut self, _now: Time, out: &mut impl Outbox<ShardMsg>) {
        self.stopping = true;
        if let Some(c) = self.coordinator.as_mut() {
            c.on_stop(out);
        }
    }

    fn on_message(&mut self, _from: ShardId, msg: ShardMsg, now: Time, out: &mut impl Outbox<ShardMsg>) {
        match msg {
            ShardMsg::Request { conn, seq, peer, room, message } => {
                let mut answer = std::mem::take(&mut self.answer);
                answer.clear();
                let req = Request { conn, peer, message: &message, room };
                let handled = self.serve(&req, now, &mut answer);
                // Count changes first: they reach the connection's shard before the answer.
                self.flush(out);
                let registration = message[0] == MessageType::Registration as u8;
                let reply = ShardMsg::Reply {
                    conn,
                    seq,
                    answer: Payload::from_slice(&answer),
                    registration,
                    refused: handled.refused,
                };
                out.post(conn.shard, reply);
                self.answer = answer;
            }
            ShardMsg::Reply { conn, seq, answer, registration, refused } => {
                if let Some(m) = self.metrics.as_deref_mut() {
                    m.answered();
                }
                if registration {
                    if let Some(c) = self.conns.get_mut(conn) {
                        c.registering = c.registering.saturating_sub(1);
                    }
                }
                self.answered(conn, seq, &answer, out);
                if registration {
                    self.after_registration(conn, Handled { refused }, now, out);
                }
            }
            ShardMsg::ConnectionClosed { conn } => {
                self.procedures.connection_lost(conn, now, &mut (&mut self.deltas, &mut self.updates));
                self.flush(out);
            }
            ShardMsg::ConnectionPes { conn, delta } => self.add_pes(conn, delta),
            ShardMsg::Enrp(msg) => {
                let for_coordinator =
                    matches!(msg, EnrpMsg::Outgoing { .. } | EnrpMsg::SumPart { .. } | EnrpMsg::Exported { .. });
                match (for_coordinator, self.coordinator.as_mut()) {
                    (true, Some(c)) => c.on_message(msg, now, out),
                    (true, None) => {}
                    (false, _) => {
                        let sink = &mut (&mut self.deltas, &mut self.updates);
                        self.enrp.on_message(msg, &mut self.procedures, now, COORDINATOR, out, sink);
                        self.flush(out);
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, now: Time, out: &mut impl Outbox<ShardMsg>) {
        if self.procedures.next_timer().is_some_and(|t| t <= now) {
            self.procedures.on_timer(now, out, &mut (&mut self.deltas, &mut self.updates));
            self.flush(out);
        }
        if let Some(c) = self.coordinator.as_mut() {
            if c.next_timer().is_some_and(|t| t <= now) {
                c.on_timer(now, out);
            }
        }
        if self.metrics.as_ref().is_some_and(|m| m.next_publish() <= now) {
            self.publish(now);
        }
    }

    fn next_timer(&self) -> Option<Time> {
        let coordinator = self.coordinator.as_ref().and_then(Coordinator::next_timer);
        let metrics = self.metrics.as_ref().map(|m| m.next_publish());
        [self.procedures.next_timer(), coordinator, metrics].into_iter().flatten().min()
    }

    fn gathering(&self) -> Option<std::time::Duration> {
        self.coordinator.as_ref().and_then(Coordinator::gathering)
    }

    fn on_flush(&mut self, _now: Time, out: &mut impl Outbox<ShardMsg>) {
        if let Some(c) = self.coordinator.as_mut() {
            c.on_flush(out);
        }
    }
}
