//! Everything a shard does above the socket layer, shared by both engines (and the simulator):
//! the [`Outbox`] the service writes to, handing received bytes to the service (zero copy where
//! possible, reassembly otherwise), pausing input (backpressure from a peer, from a full
//! cross-shard queue, or at the service's request), cross-shard delivery, holds, timers, and the
//! loop that ties them to an engine's [`Driver`].
//!
//! An engine only moves bytes between sockets and this core: it reports what the kernel did
//! (accepted, connected, received, sent, failed) and, for each connection the core marks as
//! touched, makes the socket match the connection's wanted state (start a connect or a write,
//! pause or resume reading, close).
//!
//! **Why nothing crossing shards is lost, and why that stays bounded.** A record for another
//! shard goes into the pair's queue, or, when that is full, into an overflow list (see
//! `mailbox.rs`). When the record was caused by a connection's input, that connection's input
//! is paused until every overflow has drained, and the service stops consuming it at once
//! ([`Outbox::input_paused`]): each connection adds at most one message's worth of records
//! beyond the queues. Timer work, which no connection pays for, is held back while anything
//! overflows. What remains are records a shard posts in answer to records it received, bounded
//! by those. Posts to the shard itself are bounded the same way.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::Clock;
use super::conn::{pause, ConnState, ConnTable};
use super::mailbox::{Envelope, Incoming, Outgoing};
use super::signals::Signals;
use super::stats::{Counter, StatsCell, QUEUE_SAMPLE_MS};
use super::tls::{Greeting, TlsFailure, TlsSession};
use super::{EngineError, Transport};
use crate::service::{ConnId, Outbox, Payload, Service, ShardId, Tag};
use crate::time::Time;
use crate::tls::{TlsAcceptor, TlsConnector};

/// Most records taken from one inbound queue per loop iteration, so a flood from one shard
/// cannot starve this shard's sockets.
const INBOUND_BUDGET: usize = 1024;
/// How often a shard with overflowing cross-shard records retries them while otherwise idle.
const SPILL_RETRY: Duration = Duration::from_millis(1);
/// Least time between two warnings about failed TLS connections on one shard (the others are
/// counted, logged at debug level, and summed up in the next warning).
const TLS_WARN_EVERY_MS: u64 = 10_000;
/// Capacity above which the shard's buffer for decrypted input is released after use.
const KEEP_PLAIN: usize = 64 * 1024;

/// Per-connection and per-shard limits, derived from the engine configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Unsent bytes above which reading pauses.
    pub(crate) pause_above: usize,
    /// Unsent bytes at or below which a paused connection reads again (half the pause limit, so
    /// a connection does not flap between the two states on every write).
    pub(crate) resume_at: usize,
    /// Unsent bytes above which the connection is aborted.
    pub(crate) abort_above: usize,
    /// Largest message the service may need to see whole.
    pub(crate) max_message: usize,
    /// Most buffered input handed to the service in one call, which bounds how much output one
    /// call can add before backpressure is checked again.
    pub(crate) window: usize,
    /// Records of a cross-shard queue, and of the queue of posts to the shard itself.
    pub(crate) queue: usize,
    /// Milliseconds a half-closed connection may stay open because the service holds it.
    pub(crate) max_hold: u64,
    /// Milliseconds a TLS handshake may take.
    pub(crate) handshake_timeout: u64,
    /// Milliseconds a connection may stay paused because its peer does not read (0: no limit).
    pub(crate) send_stall: u64,
}

/// What connections accepted on one listener are: their tag, and the TLS they speak.
#[derive(Clone, Debug)]
pub(crate) struct Accepting {
    /// The listener's tag.
    pub(crate) tag: Tag,
    /// `Some`: they speak TLS.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// An engine's per-connection handle.
pub(crate) trait ConnHandle: Sized {
    /// A handle for an outbound connection to `addr`: the socket is created now, the engine
    /// starts connecting when it reconciles the connection.
    fn dial(addr: SocketAddr, transport: Transport) -> io::Result<Self>;
}

/// Engine-specific I/O for one shard.
pub(crate) trait Driver {
    /// The engine's per-connection handle.
    type Conn: ConnHandle;

    /// Submits queued operations, waits up to `timeout` (`None`: until something happens) and
    /// reports what completed to `core`.
    fn poll<S: Service>(
        &mut self,
        core: &mut ShardCore<S, Self::Conn>,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError>;

    /// Makes connection `id`'s socket match its wanted state.
    fn reconcile<S: Service>(&mut self, core: &mut ShardCore<S, Self::Conn>, id: ConnId);

    /// Wakes the given shards, which have new cross-shard records.
    fn wake(&mut self, signals: &Signals, targets: &[ShardId]);

    /// Whether the driver has work it can do without waiting (so the next poll must not sleep).
    fn busy(&self) -> bool;

    /// An instant the driver wants to be polled at even if nothing happens (a retry).
    fn deadline(&self) -> Option<Instant>;

    /// Closes every socket and waits for the kernel to let go of the shard's memory.
    fn shutdown<S: Service>(&mut self, core: &mut ShardCore<S, Self::Conn>);
}

/// What the service writes to: the connection table, the cross-shard queues and local posts.
pub(crate) struct Plumbing<H, M> {
    me: ShardId,
    shard_count: usize,
    /// The shard's connections.
    pub(crate) conns: ConnTable<H>,
    out: Outgoing<M>,
    /// Posts to this shard itself, delivered next iteration.
    local: VecDeque<M>,
    scratch: Vec<u8>,
    limits: Limits,
    stats: Arc<StatsCell>,
    high_water: usize,
    transport: Transport,
    signals: Arc<Signals>,
    /// The time of this loop iteration.
    pub(crate) now: Time,
    /// The connection whose input the service is handling right now.
    current: Option<ConnId>,
    /// Connections paused because their input overflowed a queue.
    link_blocked: Vec<ConnId>,
    /// Connections whose input may be handed on again.
    resumed: Vec<ConnId>,
    /// Half-closed connections the service holds open, by deadline.
    holds: VecDeque<(Time, ConnId)>,
    /// Connections paused because their peer does not read, by when the pause times out.
    stalls: VecDeque<(Time, ConnId)>,
    /// TLS for outbound connections, by tag.
    dial_tls: Vec<(Tag, TlsConnector)>,
    /// TLS connections whose handshake must complete by the deadline.
    handshakes: VecDeque<(Time, ConnId)>,
    /// When the last TLS failure warning was logged, and failures since.
    tls_warned: Option<Time>,
    tls_unreported: u64,
    /// Records sent to shards (this one included) before draining began.
    records_sent: u64,
    /// The engine is stopping: no input is handed on, no timers run, records are counted in
    /// [`Signals`] until every shard is quiescent.
    draining: bool,
}

impl<H: ConnHandle, M> Plumbing<H, M> {
    /// Appends bytes produced by `write` to local connection `id`'s send queue.
    fn queue_local(&mut self, id: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.bump(Counter::StaleDrops);
            return;
        };
        if !matches!(conn.state, ConnState::Connecting | ConnState::Open | ConnState::Draining) {
            self.stats.bump(Counter::StaleDrops);
            return;
        }
        // A TLS connection's plaintext is staged and sealed into records once per loop
        // iteration (`seal`), so the messages of one iteration share records.
        let buf = match conn.tls.as_mut() {
            Some(tls) => tls.staged(),
            None => conn.sendq.buffer(),
        };
        let before = buf.len();
        write(buf);
        if buf.len() == before {
            return;
        }
        let unsent = conn.unsent();
        let mut event = None;
        if unsent > self.limits.abort_above {
            conn.state = ConnState::Aborting;
            event = Some(Counter::SendQueueAborts);
        } else if unsent > self.limits.pause_above
            && conn.paused & pause::SEND_QUEUE == 0
            && conn.state == ConnState::Open
        {
            conn.paused |= pause::SEND_QUEUE;
            event = Some(Counter::ReadPauses);
            if self.limits.send_stall > 0 {
                conn.stalled_since = Some(self.now);
                self.stalls.push_back((self.now.add_millis(self.limits.send_stall), id));
            }
        }
        if unsent > self.high_water {
            self.high_water = unsent;
            self.stats.high_water(unsent);
        }
        if let Some(c) = event {
            if matches!(c, Counter::SendQueueAborts) {
                tracing::debug!(conn = ?id, unsent, "send queue over its hard limit; aborting connection");
            }
            self.stats.bump(c);
        }
        self.conns.touch(id);
    }

    /// Local connection `id` is to close once its queued bytes are written (a connection still
    /// connecting closes at once).
    fn close_local(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.bump(Counter::StaleDrops);
            return;
        };
        match conn.state {
            // A handshake cannot go on once input is ignored, so a TLS connection closed while
            // still handshaking has nothing it could deliver: it closes at once.
            ConnState::Open if conn.tls.as_ref().is_some_and(|t| t.handshaking()) => {
                conn.state = ConnState::Aborting;
                conn.pending = Vec::new();
                self.conns.touch(id);
            }
            ConnState::Open => {
                conn.state = ConnState::Draining;
                conn.pending = Vec::new();
                if conn.held {
                    self.arm_hold(id);
                }
                self.conns.touch(id);
            }
            ConnState::Connecting => {
                conn.state = ConnState::Aborting;
                self.conns.touch(id);
            }
            _ => {}
        }
    }

    /// Starts the hold limit of a held, draining connection.
    fn arm_hold(&mut self, id: ConnId) {
        let deadline = self.now.add_millis(self.limits.max_hold);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.hold_deadline = Some(deadline);
            self.holds.push_back((deadline, id));
        }
    }

    /// Starts the handshake limit of TLS connection `id`.
    fn arm_handshake(&mut self, id: ConnId) {
        let deadline = self.now.add_millis(self.limits.handshake_timeout);
        self.handshakes.push_back((deadline, id));
    }

    /// Seals a TLS connection's staged plaintext and moves every record rustls has to send into
    /// its send queue; sends `close_notify` once a closing connection has nothing else to say.
    fn seal(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        if !matches!(conn.state, ConnState::Connecting | ConnState::Open | ConnState::Draining) {
            return;
        }
        let Some(tls) = conn.tls.as_mut() else { return };
        tls.output(conn.sendq.buffer());
        if conn.state == ConnState::Draining && !conn.held && tls.unsent() == 0 {
            tls.close(conn.sendq.buffer());
        }
    }

    /// Counts a TLS failure and logs it: every one at debug level, and a warning at most every
    /// [`TLS_WARN_EVERY_MS`] per shard, so a scanner or a misconfigured peer cannot flood the
    /// log.
    fn tls_failed(&mut self, id: ConnId, peer: SocketAddr, handshaking: bool, error: &dyn std::fmt::Display) {
        self.stats.bump(Counter::TlsFailures);
        let what = if handshaking { "TLS handshake failed" } else { "TLS connection failed" };
        tracing::debug!(conn = ?id, %peer, %error, "{what}");
        if self.tls_warned.is_some_and(|t| self.now < t.add_millis(TLS_WARN_EVERY_MS)) {
            self.tls_unreported += 1;
            return;
        }
        let earlier = std::mem::take(&mut self.tls_unreported);
        self.tls_warned = Some(self.now);
        if earlier > 0 {
            tracing::warn!(shard = self.me, %peer, %error, "{what} (and {earlier} other TLS failures since the last report)");
        } else {
            tracing::warn!(shard = self.me, %peer, %error, "{what}");
        }
    }

    /// Hands a record to another shard; pauses the connection being served if it overflowed.
    /// Counts one record sent to a shard (see [`Signals::quiescent`]).
    fn count_sent(&mut self) {
        if self.draining {
            self.signals.drain_sent(self.me);
        } else {
            self.records_sent += 1;
        }
    }

    fn push_remote(&mut self, to: ShardId, record: Envelope<M>) {
        self.count_sent();
        if !self.out.push(to, record) {
            self.block_current();
        }
    }

    /// The connection whose input is being handled pauses until every overflow has drained.
    fn block_current(&mut self) {
        let Some(id) = self.current else { return };
        if let Some(conn) = self.conns.get_mut(id) {
            if conn.paused & pause::LINK == 0 {
                conn.paused |= pause::LINK;
                self.link_blocked.push(id);
                self.stats.bump(Counter::LinkPauses);
                self.conns.touch(id);
            }
        }
    }

    /// Clears one pause reason of `id`; input flows again once none is left.
    fn unpause(&mut self, id: ConnId, reason: u8) {
        if let Some(conn) = self.conns.get_mut(id) {
            if conn.paused & reason != 0 {
                conn.paused &= !reason;
                if conn.paused == 0 && conn.state == ConnState::Open {
                    self.resumed.push(id);
                }
                self.conns.touch(id);
            }
        }
    }

    /// Whether anything waits to cross to another shard, or too much waits for this one.
    fn congested(&self) -> bool {
        self.out.spilling() || self.local.len() > self.limits.queue
    }

    /// Moves overflowed records on, and resumes the connections paused for them once all have
    /// gone. Returns whether records still overflow.
    fn retry_spill(&mut self) -> bool {
        let spilling = self.out.retry_spill();
        if !self.congested() && !self.link_blocked.is_empty() {
            let blocked = std::mem::take(&mut self.link_blocked);
            for id in &blocked {
                self.unpause(*id, pause::LINK);
            }
            self.link_blocked = blocked;
            self.link_blocked.clear();
        }
        spilling
    }
}

impl<H: ConnHandle, M> Outbox<M> for Plumbing<H, M> {
    fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        if conn.shard == self.me {
            self.queue_local(conn, write);
        } else if usize::from(conn.shard) < self.shard_count {
            self.scratch.clear();
            write(&mut self.scratch);
            if !self.scratch.is_empty() {
                let bytes = Payload::from_slice(&self.scratch);
                self.push_remote(conn.shard, Envelope::Send(conn, bytes));
            }
        } else {
            self.stats.bump(Counter::StaleDrops);
        }
    }

    fn post(&mut self, to: ShardId, msg: M) {
        if to == self.me {
            self.count_sent();
            self.local.push_back(msg);
            if self.local.len() > self.limits.queue {
                self.block_current();
            }
        } else if usize::from(to) < self.shard_count {
            self.push_remote(to, Envelope::Msg(msg));
        } else {
            tracing::error!(from = self.me, to, "message posted to a shard that does not exist; dropped");
        }
    }

    fn close(&mut self, conn: ConnId) {
        if conn.shard == self.me {
            self.close_local(conn);
        } else if usize::from(conn.shard) < self.shard_count {
            self.push_remote(conn.shard, Envelope::Close(conn));
        } else {
            self.stats.bump(Counter::StaleDrops);
        }
    }

    fn hold(&mut self, conn: ConnId, held: bool) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.held == held {
            return;
        }
        c.held = held;
        if !held {
            c.hold_deadline = None;
        } else if c.state == ConnState::Draining {
            self.arm_hold(conn);
        }
        // A released, draining connection may be due to close now.
        self.conns.touch(conn);
    }

    fn pause(&mut self, conn: ConnId, paused: bool) {
        if paused {
            if let Some(c) = self.conns.get_mut(conn) {
                if c.paused & pause::SERVICE == 0 {
                    c.paused |= pause::SERVICE;
                    self.conns.touch(conn);
                }
            }
        } else {
            self.unpause(conn, pause::SERVICE);
        }
    }

    fn input_paused(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.paused != 0 || c.state != ConnState::Open)
    }

    fn connect(&mut self, addr: SocketAddr, tag: Tag) -> Option<ConnId> {
        if self.signals.stopping() {
            return None;
        }
        let tls = match self.dial_tls.iter().find(|(t, _)| *t == tag) {
            None => None,
            Some((_, connector)) => match TlsSession::dialled(connector, addr) {
                Ok(session) => Some(Box::new(session)),
                Err(error) => {
                    tracing::debug!(shard = self.me, %addr, %error, "cannot start a TLS client");
                    self.stats.bump(Counter::ConnectFailures);
                    return None;
                }
            },
        };
        let handle = match H::dial(addr, self.transport) {
            Ok(h) => h,
            Err(error) => {
                tracing::debug!(shard = self.me, %addr, %error, "cannot create a socket to connect");
                self.stats.bump(Counter::ConnectFailures);
                return None;
            }
        };
        // A full table gives the handle back; dropping it closes the socket.
        let id = self.conns.insert(handle, tag, ConnState::Connecting).ok()?;
        self.stats.bump(Counter::Connects);
        if let Some(tls) = tls {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.tls = Some(tls);
            }
            // The limit covers the TCP connect too: a peer that never answers is given up.
            self.arm_handshake(id);
        }
        self.conns.touch(id);
        Some(id)
    }
}

/// One shard's service and everything around it that is not socket I/O.
pub(crate) struct ShardCore<S: Service, H> {
    me: ShardId,
    service: S,
    /// The outbox state (connections, queues).
    pub(crate) io: Plumbing<H, S::Msg>,
    inbox: Incoming<S::Msg>,
    signals: Arc<Signals>,
    wakes: Vec<ShardId>,
    /// Plaintext decrypted from one read of a TLS connection, before it is handed on.
    plain: Vec<u8>,
    /// Records from shards (this one included) handled before draining began.
    records_handled: u64,
    /// When the queue depths are next sampled into the stats.
    next_queue_sample: Time,
    /// The engine clock in microseconds (`io.now` is the same in milliseconds).
    now_us: u64,
    /// When [`Service::on_flush`] is due (microseconds), once [`Service::gathering`] asked.
    flush_at_us: Option<u64>,
}

/// What a shard needs besides its service and driver.
pub(crate) struct CoreParts<M> {
    pub(crate) me: ShardId,
    pub(crate) shard_count: usize,
    pub(crate) out: Outgoing<M>,
    pub(crate) inbox: Incoming<M>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) stats: Arc<StatsCell>,
    pub(crate) now: Time,
    pub(crate) limits: Limits,
    pub(crate) max_connections: usize,
    pub(crate) transport: Transport,
    pub(crate) dial_tls: Vec<(Tag, TlsConnector)>,
}

impl<S: Service, H: ConnHandle> ShardCore<S, H> {
    /// Assembles a shard core.
    pub(crate) fn new(service: S, p: CoreParts<S::Msg>) -> Self {
        Self {
            me: p.me,
            service,
            io: Plumbing {
                me: p.me,
                shard_count: p.shard_count,
                conns: ConnTable::new(p.me, p.max_connections),
                out: p.out,
                local: VecDeque::new(),
                scratch: Vec::new(),
                limits: p.limits,
                stats: p.stats,
                high_water: 0,
                transport: p.transport,
                signals: Arc::clone(&p.signals),
                now: p.now,
                current: None,
                link_blocked: Vec::new(),
                resumed: Vec::new(),
                holds: VecDeque::new(),
                stalls: VecDeque::new(),
                dial_tls: p.dial_tls,
                handshakes: VecDeque::new(),
                tls_warned: None,
                tls_unreported: 0,
                records_sent: 0,
                draining: false,
            },
            records_handled: 0,
            next_queue_sample: p.now,
            now_us: p.now.as_millis().saturating_mul(1000),
            flush_at_us: None,
            inbox: p.inbox,
            signals: p.signals,
            wakes: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Sets the clock: `now_us` microseconds since the engine's origin.
    pub(crate) fn set_now(&mut self, now_us: u64) {
        self.now_us = now_us;
        self.io.now = Time(now_us / 1000);
    }

    /// The service (for the simulator's invariant checks).
    pub(crate) fn service(&self) -> &S {
        &self.service
    }

    /// The service, mutably (for the simulator's invariant checks).
    pub(crate) fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// Whether the engine is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.signals.stopping()
    }

    /// A new connection on a listener of kind `how`. Gives the handle back if the shard is
    /// full or stopping; the engine then closes the socket. The service hears of a TLS
    /// connection only once its handshake has completed.
    pub(crate) fn accept(&mut self, handle: H, peer: SocketAddr, how: &Accepting) -> Result<ConnId, H> {
        if self.stopping() {
            return Err(handle);
        }
        let tls = match &how.tls {
            None => None,
            Some(acceptor) => match TlsSession::accepted(acceptor, peer) {
                Ok(session) => Some(Box::new(session)),
                Err(error) => {
                    tracing::debug!(%peer, %error, "cannot start a TLS server connection");
                    self.io.stats.bump(Counter::Rejected);
                    return Err(handle);
                }
            },
        };
        let tag = how.tag;
        match self.io.conns.insert(handle, tag, ConnState::Open) {
            Ok(id) => {
                self.io.stats.bump(Counter::Accepted);
                if tls.is_some() {
                    if let Some(conn) = self.io.conns.get_mut(id) {
                        conn.tls = tls;
                    }
                    self.io.arm_handshake(id);
                } else {
                    self.service.on_accept(id, tag, peer, self.io.now, &mut self.io);
                }
                self.io.conns.touch(id);
                Ok(id)
            }
            Err(h) => {
                self.io.stats.bump(Counter::Rejected);
                Err(h)
            }
        }
    }

    /// Outbound connection `id` is connected to `peer`.
    pub(crate) fn connected(&mut self, id: ConnId, peer: SocketAddr) {
        let tag = match self.io.conns.get_mut(id) {
            Some(conn) if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Open;
                if let Some(tls) = conn.tls.as_mut() {
                    // The service hears `on_connect` once the handshake has completed; the
                    // ClientHello goes out with this iteration's writes.
                    tls.greeting = Greeting::Connect;
                    tls.peer = peer;
                    self.io.conns.touch(id);
                    return;
                }
                conn.tag
            }
            _ => return,
        };
        self.io.conns.touch(id);
        self.service.on_connect(id, tag, Ok(peer), self.io.now, &mut self.io);
    }

    /// Outbound connection `id` could not connect: the service hears why, then it closes.
    pub(crate) fn connect_failed(&mut self, id: ConnId, error: io::Error) {
        let tag = match self.io.conns.get(id) {
            Some(conn) if conn.state == ConnState::Connecting => conn.tag,
            _ => return,
        };
        self.io.stats.bump(Counter::ConnectFailures);
        self.abort(id);
        self.service.on_connect(id, tag, Err(error), self.io.now, &mut self.io);
    }

    /// Bytes arrived on `id`. When nothing is buffered for the connection, the service reads
    /// them in place (straight out of the engine's receive buffer); only an unconsumed tail (a
    /// partial message, or input that arrives while reading is paused) is copied.
    pub(crate) fn received(&mut self, id: ConnId, data: &[u8]) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        if conn.state != ConnState::Open || conn.eof {
            return;
        }
        if conn.tls.is_some() {
            self.received_tls(id, data);
            return;
        }
        self.received_plain(id, data);
    }

    /// Ciphertext arrived on TLS connection `id`: the handshake moves on (and the service
    /// hears of the connection once it completes), and the plaintext goes the way of a plain
    /// connection's bytes. A TLS failure closes the connection after the alert that says why.
    fn received_tls(&mut self, id: ConnId, data: &[u8]) {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let Some(conn) = self.io.conns.get_mut(id) else { return };
        let tag = conn.tag;
        let Some(tls) = conn.tls.as_mut() else { return };
        let handshaking = tls.handshaking();
        let result = tls.input(data, &mut plain);
        let (greeting, peer, peer_closed) = (tls.greeting, tls.peer, tls.peer_closed);
        let completed = handshaking && !tls.handshaking();
        match result {
            Err(failure) => {
                tls.fail();
                // The alert goes out, then the connection closes; nothing it sent is handed on.
                tls.output(conn.sendq.buffer());
                conn.state = ConnState::Draining;
                conn.pending = Vec::new();
                self.io.conns.touch(id);
                self.io.tls_failed(id, peer, handshaking, &failure);
                if handshaking && greeting == Greeting::Connect {
                    let error = match failure {
                        TlsFailure::Protocol(e) => io::Error::new(io::ErrorKind::InvalidData, e),
                        TlsFailure::Stuck(e) => e,
                    };
                    self.service.on_connect(id, tag, Err(error), self.io.now, &mut self.io);
                }
            }
            Ok(()) => {
                if completed {
                    tls.greeting = Greeting::None;
                    tls.known = true;
                }
                // Handshake messages to answer, or records to seal: written this iteration.
                self.io.conns.touch(id);
                if completed {
                    self.io.stats.bump(Counter::TlsHandshakes);
                    match greeting {
                        Greeting::Accept => self.service.on_accept(id, tag, peer, self.io.now, &mut self.io),
                        Greeting::Connect => self.service.on_connect(id, tag, Ok(peer), self.io.now, &mut self.io),
                        Greeting::None => {}
                    }
                }
                if !plain.is_empty() {
                    self.received_plain(id, &plain);
                }
                if peer_closed {
                    // close_notify: the peer has sent all it will, as with a FIN.
                    self.eof(id);
                }
            }
        }
        if plain.capacity() > KEEP_PLAIN {
            plain = Vec::new();
        }
        self.plain = plain;
    }

    /// Plaintext arrived on `id` (straight from the socket, or decrypted).
    fn received_plain(&mut self, id: ConnId, data: &[u8]) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        if conn.state != ConnState::Open || conn.eof {
            return;
        }
        if conn.paused != 0 || !conn.pending.is_empty() || self.io.draining {
            conn.pending.extend_from_slice(data);
            if conn.paused == 0 && !self.io.draining {
                self.deliver_pending(id);
            }
            return;
        }
        self.io.current = Some(id);
        let mut rest = data;
        loop {
            let n = self.service.on_data(id, rest, self.io.now, &mut self.io).min(rest.len());
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            let Some(conn) = self.io.conns.get(id) else {
                break;
            };
            if conn.state != ConnState::Open {
                rest = &[];
                break;
            }
            if n == 0 {
                if rest.len() >= self.io.limits.max_message {
                    self.oversize(id);
                    rest = &[];
                }
                break;
            }
            if conn.paused != 0 {
                break;
            }
        }
        self.io.current = None;
        if let Some(conn) = self.io.conns.get_mut(id) {
            conn.pending.extend_from_slice(rest);
        }
    }

    /// Hands buffered input to the service, a window at a time, until it stops consuming or the
    /// connection pauses. A connection whose peer has finished sending closes once nothing more
    /// can be consumed.
    fn deliver_pending(&mut self, id: ConnId) {
        if self.io.draining {
            return;
        }
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        let mut buf = std::mem::take(&mut conn.pending);
        let window = self.io.limits.window;
        let mut off = 0;
        let mut oversize = false;
        self.io.current = Some(id);
        while off < buf.len() {
            let end = buf.len().min(off + window);
            let n = self.service.on_data(id, &buf[off..end], self.io.now, &mut self.io).min(end - off);
            off += n;
            let Some(conn) = self.io.conns.get(id) else {
                self.io.current = None;
                return;
            };
            if conn.state != ConnState::Open {
                off = buf.len();
                break;
            }
            if n == 0 {
                oversize = end - off >= self.io.limits.max_message;
                break;
            }
            if conn.paused != 0 {
                break;
            }
        }
        self.io.current = None;
        buf.drain(..off);
        let Some(conn) = self.io.conns.get_mut(id) else { return };
        conn.pending = buf;
        conn.trim_pending();
        if oversize {
            self.oversize(id);
        } else if conn.eof && conn.paused == 0 && conn.state == ConnState::Open {
            // The peer has sent all it will: what is left is at most a message cut short.
            self.io.close_local(id);
        }
    }

    fn oversize(&mut self, id: ConnId) {
        tracing::debug!(conn = ?id, max = self.io.limits.max_message, "message too large; closing connection");
        self.io.stats.bump(Counter::OversizeCloses);
        self.abort(id);
    }

    /// The peer closed its sending side. Input it sent before is still handed on (a paused
    /// connection keeps it until it resumes); then queued replies are written and it closes.
    pub(crate) fn eof(&mut self, id: ConnId) {
        let Some(conn) = self.io.conns.get_mut(id) else { return };
        if conn.state != ConnState::Open || conn.eof {
            return;
        }
        conn.eof = true;
        let paused = conn.paused != 0;
        self.io.conns.touch(id);
        if !paused {
            self.deliver_pending(id);
        }
    }

    /// The connection failed (reset, error): close it now.
    pub(crate) fn failed(&mut self, id: ConnId, error: &std::io::Error) {
        tracing::debug!(conn = ?id, %error, "connection failed");
        self.abort(id);
    }

    fn abort(&mut self, id: ConnId) {
        if let Some(conn) = self.io.conns.get_mut(id) {
            if conn.state != ConnState::Dead {
                conn.state = ConnState::Aborting;
                conn.pending = Vec::new();
                self.io.conns.touch(id);
            }
        }
    }

    /// A write started with `SendQueue::start` finished with `n` bytes written.
    pub(crate) fn sent(&mut self, id: ConnId, n: usize) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        conn.sendq.complete(n);
        let resume = conn.paused & pause::SEND_QUEUE != 0 && conn.unsent() <= self.io.limits.resume_at;
        if resume {
            conn.stalled_since = None;
        } else if n > 0 && conn.stalled_since.is_some() {
            // Progress: the stall limit counts from the last write that took bytes.
            conn.stalled_since = Some(self.io.now);
        }
        self.io.conns.touch(id);
        if resume {
            self.io.unpause(id, pause::SEND_QUEUE);
        }
    }

    /// A write started with `SendQueue::start` failed: the connection is aborted.
    pub(crate) fn send_failed(&mut self, id: ConnId, error: &std::io::Error) {
        if let Some(conn) = self.io.conns.get_mut(id) {
            conn.sendq.complete(0);
        }
        self.failed(id, error);
    }

    /// The engine is closing `id`'s socket: the service hears of it now, and the connection
    /// takes no more bytes. The engine calls [`ShardCore::release`] once the socket is gone.
    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        if conn.state == ConnState::Dead {
            return;
        }
        conn.state = ConnState::Dead;
        conn.pending = Vec::new();
        // An accepted TLS connection whose handshake never completed was never the service's.
        let known = conn.tls.as_ref().is_none_or(|t| t.known);
        self.io.stats.bump(Counter::Closed);
        if known {
            self.service.on_close(id, self.io.now, &mut self.io);
        }
    }

    /// Frees `id`'s slot (a later connection there gets a new generation).
    pub(crate) fn release(&mut self, id: ConnId) -> Option<H> {
        self.io.conns.remove(id)
    }

    /// Closes every connection (shutdown): `on_close` runs for each.
    pub(crate) fn close_all(&mut self) -> Vec<ConnId> {
        let ids = self.io.conns.ids();
        for &id in &ids {
            self.close(id);
        }
        ids
    }

    /// Delivers cross-shard records and local posts, and runs the service's timer unless
    /// records overflow. Returns whether work was left for the next iteration.
    pub(crate) fn run_inbound(&mut self) -> bool {
        let mut more = false;
        let now = self.io.now;
        if self.inbox.shards() > 1 {
            if now >= self.next_queue_sample {
                // Sampled, not kept exact: reading the queues' counters touches cache lines
                // the other shards write.
                self.io.stats.queue_depths(self.inbox.queued(), self.io.out.overflow_len());
                self.next_queue_sample = now.add_millis(QUEUE_SAMPLE_MS);
            }
            self.signals.clear_notified(self.me);
            for from in 0..self.inbox.shards() {
                let mut budget = INBOUND_BUDGET;
                while budget > 0 {
                    let Some(record) = self.inbox.queue_from(from).and_then(|q| q.pop().ok()) else { break };
                    match record {
                        Envelope::Msg(msg) => self.service.on_message(from as ShardId, msg, now, &mut self.io),
                        Envelope::Send(conn, bytes) => {
                            self.io.queue_local(conn, &mut |buf| buf.extend_from_slice(&bytes))
                        }
                        Envelope::Close(conn) => self.io.close_local(conn),
                    }
                    self.count_handled();
                    budget -= 1;
                }
                more |= budget == 0;
            }
        }
        for _ in 0..self.io.local.len() {
            let Some(msg) = self.io.local.pop_front() else {
                break;
            };
            self.service.on_message(self.me, msg, now, &mut self.io);
            self.count_handled();
        }
        more |= !self.io.local.is_empty();
        if !self.io.draining && !self.io.congested() && self.service.next_timer().is_some_and(|t| t <= now) {
            self.service.on_timer(now, &mut self.io);
        }
        self.flush_gathered();
        more
    }

    /// Runs [`Service::on_flush`] once its window has passed.
    fn flush_gathered(&mut self) {
        if !self.io.draining && self.flush_at_us.is_some_and(|at| at <= self.now_us) {
            self.flush_at_us = None;
            self.service.on_flush(self.io.now, &mut self.io);
        }
    }

    /// Starts the gathering window when the service has begun to gather (at the end of an
    /// iteration: input handed over in it may have started it).
    fn arm_flush(&mut self) {
        if self.flush_at_us.is_none() && !self.io.draining {
            let window = self.service.gathering();
            self.flush_at_us =
                window.map(|w| self.now_us.saturating_add(u64::try_from(w.as_micros()).unwrap_or(u64::MAX)));
        }
    }

    /// Counts one record handled, after everything it caused was sent.
    fn count_handled(&mut self) {
        if self.io.draining {
            self.signals.drain_handled(self.me);
        } else {
            self.records_handled += 1;
        }
    }

    /// The engine is stopping: tells the service, stops handing input on and running timers,
    /// and publishes the record counts (see [`Signals::quiescent`]).
    fn begin_drain(&mut self) {
        self.service.on_stop(self.io.now, &mut self.io);
        self.io.draining = true;
        self.signals.enter_drain(self.me, self.io.records_sent, self.records_handled);
    }

    /// Releases held, half-closed connections whose hold limit has passed.
    pub(crate) fn expire_holds(&mut self) {
        while let Some(&(deadline, id)) = self.io.holds.front() {
            if deadline > self.io.now {
                break;
            }
            self.io.holds.pop_front();
            let Some(conn) = self.io.conns.get_mut(id) else { continue };
            if conn.hold_deadline.is_some_and(|d| d <= self.io.now) && conn.held {
                conn.held = false;
                conn.hold_deadline = None;
                self.io.stats.bump(Counter::HoldExpiries);
                tracing::debug!(conn = ?id, "half-closed connection held past the hold limit; closing");
                self.io.conns.touch(id);
            }
        }
    }

    /// Aborts connections that have stayed paused for `send_stall` because their peer does not
    /// read what they are sent: such a peer would otherwise hold its connection slot and its
    /// queued answers for ever.
    pub(crate) fn expire_stalls(&mut self) {
        let stall = self.io.limits.send_stall;
        while let Some(&(deadline, id)) = self.io.stalls.front() {
            if deadline > self.io.now {
                break;
            }
            self.io.stalls.pop_front();
            let Some(conn) = self.io.conns.get(id) else { continue };
            let (Some(since), true) = (conn.stalled_since, conn.paused & pause::SEND_QUEUE != 0) else { continue };
            if since.add_millis(stall) > self.io.now {
                // It wrote since: look again a full limit after that write.
                self.io.stalls.push_back((since.add_millis(stall), id));
                continue;
            }
            if conn.state == ConnState::Open {
                self.io.stats.bump(Counter::StallAborts);
                tracing::debug!(conn = ?id, unsent = conn.unsent(), "peer has not read its answers within the limit; aborting");
                self.abort(id);
            }
        }
    }

    /// Closes TLS connections whose handshake has not completed within the limit.
    pub(crate) fn expire_handshakes(&mut self) {
        while let Some(&(deadline, id)) = self.io.handshakes.front() {
            if deadline > self.io.now {
                break;
            }
            self.io.handshakes.pop_front();
            let Some(conn) = self.io.conns.get_mut(id) else { continue };
            let Some(tls) = conn.tls.as_ref() else { continue };
            if !tls.handshaking() || !matches!(conn.state, ConnState::Connecting | ConnState::Open) {
                continue;
            }
            let (peer, tag, dialled) = (tls.peer, conn.tag, tls.known);
            let connecting = conn.state == ConnState::Connecting;
            self.io.tls_failed(id, peer, true, &"no handshake within the limit");
            self.abort(id);
            if dialled {
                let error = io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
                if connecting {
                    self.io.stats.bump(Counter::ConnectFailures);
                }
                self.service.on_connect(id, tag, Err(error), self.io.now, &mut self.io);
            }
        }
    }

    /// Hands input on to connections that resumed.
    fn deliver_resumed(&mut self) {
        while let Some(id) = self.io.resumed.pop() {
            if self.io.conns.get(id).is_some_and(|c| c.state == ConnState::Open && c.paused == 0) {
                self.deliver_pending(id);
            }
        }
    }

    /// Moves overflowed records on (resuming connections paused for them), and tells the driver
    /// which peers to wake. Returns whether records still overflow.
    pub(crate) fn flush_outgoing<D: Driver<Conn = H>>(&mut self, driver: &mut D) -> bool {
        let spilling = self.io.retry_spill();
        self.io.out.take_wakes(&self.signals, &mut self.wakes);
        if !self.wakes.is_empty() {
            driver.wake(&self.signals, &self.wakes);
            self.wakes.clear();
        }
        spilling
    }

    /// Whether records from other shards wait to be handled.
    pub(crate) fn pending_inbound(&self) -> bool {
        self.inbox.pending()
    }

    /// Whether records wait in this shard's overflow lists, or too many posts to itself.
    pub(crate) fn io_spilling(&self) -> bool {
        self.io.congested()
    }

    /// Whether no live connection has output left to write.
    fn all_sent(&self) -> bool {
        self.io
            .conns
            .ids()
            .into_iter()
            .all(|id| self.io.conns.get(id).is_none_or(|c| c.state == ConnState::Dead || c.unsent() == 0))
    }

    /// Whether work is ready without waiting.
    pub(crate) fn has_work(&self) -> bool {
        !self.io.local.is_empty() || !self.io.resumed.is_empty()
    }

    /// The earliest protocol time something is due here (service timer, hold limit).
    pub(crate) fn next_due(&self) -> Option<Time> {
        let timer = if self.io.congested() { None } else { self.service.next_timer() };
        [
            timer,
            self.io.holds.front().map(|h| h.0),
            self.io.handshakes.front().map(|h| h.0),
            self.io.stalls.front().map(|h| h.0),
            self.flush_at_us.map(|us| Time(us.div_ceil(1000))),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// How long the next poll may sleep.
    fn wait_timeout(
        &self,
        clock: &Clock,
        busy: bool,
        spilling: bool,
        driver_deadline: Option<Instant>,
    ) -> Option<Duration> {
        if busy {
            return Some(Duration::ZERO);
        }
        let mut deadline = driver_deadline;
        let mut earliest = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        if let Some(at) = self.next_due().and_then(|t| clock.instant(t)) {
            earliest(at);
        }
        if let Some(at) = self.flush_at_us.and_then(|us| clock.instant_us(us)) {
            earliest(at);
        }
        let now = Instant::now();
        if spilling {
            earliest(now + SPILL_RETRY);
        }
        deadline.map(|d| d.saturating_duration_since(now))
    }
}

/// Runs a shard until the engine stops or the driver fails.
pub(crate) fn run<S: Service, D: Driver>(
    core: &mut ShardCore<S, D::Conn>,
    driver: &mut D,
    clock: &Clock,
) -> Result<(), EngineError> {
    let mut timeout = Some(Duration::ZERO);
    let result = loop {
        if let Err(e) = driver.poll(core, timeout) {
            break Err(e);
        }
        core.set_now(clock.now_us());
        if core.stopping() {
            break Ok(());
        }
        let more = step(core, driver);
        let spilling = core.flush_outgoing(driver);
        timeout = core.wait_timeout(clock, more || core.has_work() || driver.busy(), spilling, driver.deadline());
    };
    if result.is_ok() {
        quiesce(core, driver, clock);
    }
    driver.shutdown(core);
    result
}

/// How long a stopping shard waits for records in flight between shards to be handled.
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);

/// Stopping: input is no longer handed on, but records already sent between shards (the
/// requests read before the stop, and what they cause: answers, updates to peers) are handled
/// until no shard has any left, so that what was acknowledged was also passed on. Then the
/// driver closes the connections, sending what they have queued.
fn quiesce<S: Service, D: Driver>(core: &mut ShardCore<S, D::Conn>, driver: &mut D, clock: &Clock) {
    core.begin_drain();
    let limit = Instant::now() + QUIESCE_LIMIT;
    loop {
        let more = step(core, driver);
        let spilling = core.flush_outgoing(driver);
        // Sent, not only queued: closing drops what a connection has not written yet (an
        // io_uring send may still be in flight when the records are all handled).
        if !more && !spilling && core.signals.quiescent() && core.all_sent() {
            return;
        }
        if Instant::now() >= limit {
            tracing::warn!(shard = core.me, "stopping with records between shards or output still unsent");
            return;
        }
        let wait = if more || spilling { Duration::ZERO } else { Duration::from_millis(1) };
        if let Err(e) = driver.poll(core, Some(wait)) {
            tracing::warn!(shard = core.me, error = %e, "poll failed while stopping");
            return;
        }
        core.set_now(clock.now_us());
    }
}

/// One loop iteration's work after the driver's poll: inbound records, timers, holds, resumed
/// input, and the sockets of every touched connection. Returns whether work was left.
pub(crate) fn step<S: Service, D: Driver>(core: &mut ShardCore<S, D::Conn>, driver: &mut D) -> bool {
    let more = core.run_inbound();
    core.expire_holds();
    core.expire_handshakes();
    core.expire_stalls();
    core.io.retry_spill();
    reconcile_touched(core, driver);
    core.arm_flush();
    more
}

/// Hands on resumed input and lets the driver act on every touched connection (including ones
/// touched while doing so).
pub(crate) fn reconcile_touched<S: Service, D: Driver>(core: &mut ShardCore<S, D::Conn>, driver: &mut D) {
    loop {
        core.deliver_resumed();
        match core.io.conns.pop_touched() {
            Some(id) => {
                core.io.seal(id);
                driver.reconcile(core, id);
            }
            None if core.io.resumed.is_empty() => break,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::runtime::mailbox::mesh;

    #[derive(Default)]
    struct Log {
        /// (address, bytes) of every `on_data` call.
        calls: Vec<(usize, Vec<u8>)>,
        frames: Vec<Vec<u8>>,
        closed: u32,
    }

    /// Frames are a length byte and that many bytes; each frame is answered with `reply` bytes.
    struct Frames {
        log: Rc<RefCell<Log>>,
        reply: usize,
    }

    impl Service for Frames {
        type Msg = ();
        fn on_accept(&mut self, _: ConnId, _: Tag, _: SocketAddr, _: Time, _: &mut impl Outbox<()>) {}
        fn on_data(&mut self, conn: ConnId, data: &[u8], _: Time, out: &mut impl Outbox<()>) -> usize {
            let mut log = self.log.borrow_mut();
            log.calls.push((data.as_ptr() as usize, data.to_vec()));
            let mut off = 0;
            while let Some(&len) = data.get(off) {
                let end = off + 1 + len as usize;
                if end > data.len() || out.input_paused(conn) {
                    break;
                }
                log.frames.push(data[off + 1..end].to_vec());
                let reply = self.reply;
                out.send(conn, &mut |b| b.resize(b.len() + reply, 0));
                off = end;
            }
            off
        }
        fn on_close(&mut self, _: ConnId, _: Time, _: &mut impl Outbox<()>) {
            self.log.borrow_mut().closed += 1;
        }
        fn on_message(&mut self, _: ShardId, _: (), _: Time, _: &mut impl Outbox<()>) {}
        fn on_timer(&mut self, _: Time, _: &mut impl Outbox<()>) {}
        fn next_timer(&self) -> Option<Time> {
            None
        }
    }

    impl ConnHandle for () {
        fn dial(_: SocketAddr, _: Transport) -> io::Result<Self> {
            Ok(())
        }
    }

    fn core(reply: usize, limits: Limits) -> (ShardCore<Frames, ()>, Rc<RefCell<Log>>, Arc<StatsCell>) {
        let stats: Vec<Arc<StatsCell>> = vec![Arc::default()];
        let (out, inbox) = mesh(1, 4, &stats).pop().unwrap();
        let log = Rc::new(RefCell::new(Log::default()));
        let parts = CoreParts {
            me: 0,
            shard_count: 1,
            out,
            inbox,
            signals: Arc::new(Signals::new(1)),
            stats: Arc::clone(&stats[0]),
            now: Time::ZERO,
            limits,
            max_connections: 4,
            transport: Transport::Tcp,
            dial_tls: Vec::new(),
        };
        (ShardCore::new(Frames { log: Rc::clone(&log), reply }, parts), log, Arc::clone(&stats[0]))
    }

    fn limits() -> Limits {
        Limits {
            pause_above: 100,
            resume_at: 50,
            abort_above: 10_000,
            max_message: 64,
            window: 64,
            queue: 4,
            max_hold: 1000,
            handshake_timeout: 1000,
            send_stall: 5000,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    fn plain() -> Accepting {
        Accepting { tag: Tag(0), tls: None }
    }

    /// Hands resumed input on, as the loop does after each poll.
    fn settle(core: &mut ShardCore<Frames, ()>) {
        core.deliver_resumed();
        while core.io.conns.pop_touched().is_some() {}
    }

    #[test]
    fn whole_messages_are_read_in_place_and_tails_reassembled() {
        let (mut core, log, _) = core(0, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        // Two whole frames and the start of a third, in one "receive buffer".
        let buf = [2, b'a', b'b', 1, b'c', 3, b'd'];
        core.received(id, &buf);
        {
            let l = log.borrow();
            assert_eq!(l.calls[0].0, buf.as_ptr() as usize, "first call reads the buffer in place");
            assert_eq!(l.frames, vec![b"ab".to_vec(), b"c".to_vec()]);
        }
        assert_eq!(core.io.conns.get(id).unwrap().pending, [3, b'd'], "only the tail is copied");
        core.received(id, b"e");
        core.received(id, &[b'f', 1, b'g']);
        let l = log.borrow();
        assert_eq!(l.frames[2..], [b"def".to_vec(), b"g".to_vec()]);
        assert!(core.io.conns.get(id).unwrap().pending.is_empty());
    }

    #[test]
    fn unsent_bytes_pause_and_resume_input() {
        let (mut core, log, stats) = core(40, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        core.received(id, &[0, 0, 0, 0]); // 160 unsent bytes after the third frame: paused
        assert_eq!(core.io.conns.get(id).unwrap().paused, pause::SEND_QUEUE);
        assert_eq!(stats.snapshot().read_pauses, 1);
        assert_eq!(log.borrow().frames.len(), 3, "the service stops consuming once paused");
        // Input while paused is kept, not handed over.
        let calls = log.borrow().calls.len();
        core.received(id, &[0, 0]);
        assert_eq!(log.borrow().calls.len(), calls);
        assert_eq!(core.io.conns.get(id).unwrap().pending, [0, 0, 0]);
        // The engine writes 100 of 120 bytes: 20 left, below the resume mark.
        assert!(core.io.conns.get_mut(id).unwrap().sendq.start().is_some());
        core.sent(id, 100);
        settle(&mut core);
        let c = core.io.conns.get(id).unwrap();
        assert!(c.pending.is_empty());
        assert_eq!(log.borrow().frames.len(), 6);
        assert_eq!(c.sendq.unsent(), 140);
        assert_eq!(c.paused, pause::SEND_QUEUE, "the kept input's replies pause it again");
        assert_eq!(stats.snapshot().read_pauses, 2);
    }

    #[test]
    fn a_peer_that_takes_nothing_for_the_stall_limit_is_aborted_and_one_that_reads_is_not() {
        let (mut core, _, stats) = core(40, limits());
        let (stuck, slow) = (core.accept((), peer(), &plain()).unwrap(), core.accept((), peer(), &plain()).unwrap());
        core.io.now = Time(100);
        for id in [stuck, slow] {
            core.received(id, &[0, 0, 0, 0]); // 160 unsent bytes: paused
            assert_eq!(core.io.conns.get(id).unwrap().paused, pause::SEND_QUEUE);
        }
        // `slow` has 20 of its bytes written at 3000, staying above the resume mark.
        core.io.now = Time(3000);
        assert!(core.io.conns.get_mut(slow).unwrap().sendq.start().is_some());
        core.sent(slow, 20);
        assert_eq!(core.io.conns.get(slow).unwrap().paused, pause::SEND_QUEUE, "still paused");
        core.io.now = Time(5099);
        core.expire_stalls();
        assert!(!core.io.conns.get(stuck).unwrap().must_close(), "not before the limit");
        core.io.now = Time(5100);
        core.expire_stalls();
        assert!(core.io.conns.get(stuck).unwrap().must_close(), "aborted at the limit");
        assert!(!core.io.conns.get(slow).unwrap().must_close(), "it wrote 2.1 s ago");
        assert_eq!(stats.snapshot().stall_aborts, 1);
        assert_eq!(core.next_due(), Some(Time(8000)), "looked at again a full limit after its write");
        core.io.now = Time(8000);
        core.expire_stalls();
        assert!(core.io.conns.get(slow).unwrap().must_close(), "then nothing more for the limit");
        assert_eq!(stats.snapshot().stall_aborts, 2);
    }

    #[test]
    fn the_service_pauses_and_resumes_input() {
        let (mut core, log, _) = core(0, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        core.io.pause(id, true);
        assert!(core.io.input_paused(id));
        core.received(id, &[1, b'a']);
        assert!(log.borrow().frames.is_empty());
        core.io.pause(id, false);
        settle(&mut core);
        assert_eq!(log.borrow().frames, vec![b"a".to_vec()]);
    }

    #[test]
    fn input_sent_before_the_peer_closed_is_still_served() {
        let (mut core, log, _) = core(0, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        core.io.pause(id, true);
        core.received(id, &[1, b'a', 1, b'b', 5, b'c']);
        core.eof(id);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Open, "open while input waits");
        core.io.pause(id, false);
        settle(&mut core);
        assert_eq!(log.borrow().frames, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Draining, "the cut message is dropped");
    }

    #[test]
    fn a_held_half_closed_connection_closes_at_the_hold_limit() {
        let (mut core, _, stats) = core(0, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        core.io.hold(id, true);
        core.eof(id);
        let c = core.io.conns.get(id).unwrap();
        assert_eq!(c.state, ConnState::Draining);
        assert!(!c.must_close(), "held");
        core.io.now = Time(999);
        core.expire_holds();
        assert!(!core.io.conns.get(id).unwrap().must_close());
        core.io.now = Time(1000);
        core.expire_holds();
        assert!(core.io.conns.get(id).unwrap().must_close(), "released at the limit");
        assert_eq!(stats.snapshot().hold_expiries, 1);
    }

    #[test]
    fn unframeable_input_closes_the_connection() {
        let (mut core, _, stats) = core(0, limits());
        let id = core.accept((), peer(), &plain()).unwrap();
        core.received(id, &[200; 40]);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Open, "40 < 64: wait for more");
        core.received(id, &[0; 40]);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Aborting);
        assert_eq!(stats.snapshot().oversize_closes, 1);
    }

    #[test]
    fn stale_ids_get_nothing() {
        let (mut core, log, stats) = core(0, limits());
        let old = core.accept((), peer(), &plain()).unwrap();
        core.close(old);
        assert_eq!(log.borrow().closed, 1);
        core.io.send(old, &mut |b| b.push(1));
        assert!(core.release(old).is_some());
        let new = core.accept((), peer(), &plain()).unwrap();
        assert_eq!(new.slot, old.slot);
        core.io.send(old, &mut |b| b.push(1));
        core.io.close(old);
        assert_eq!(core.io.conns.get(new).unwrap().sendq.unsent(), 0);
        assert_eq!(core.io.conns.get(new).unwrap().state, ConnState::Open);
        assert_eq!(stats.snapshot().stale_drops, 3);
    }
}
