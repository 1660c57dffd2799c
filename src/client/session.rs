//! The pool user's side of a PU↔PE session, sans-IO (`docs/session-layer.md`).
//!
//! A [`SessionCore`] talks to one PE of a pool at a time over TCP and fails over by itself:
//! - **Failure detection**: the connection closes or fails, a connect does not finish within
//!   `connect_timeout`, nothing arrives within `heartbeat_timeout` after a heartbeat request,
//!   the PE sends an ERROR frame, or the PE sends bad input (answered with an ERROR frame).
//! - **Failover order**: the PEs of the newest business card first, in the card's order
//!   ("business cards honoured over the policy"); then the pool's other PEs in the order the
//!   PU's cache selects them by the pool policy; then the other legs (addresses) of the PEs
//!   that failed, the failed PE's first; then the other legs of the rest. When none is left
//!   the registrar is asked afresh; when that gives none either, it waits `retry_delay`.
//! - **Reports**: each PE that failed is reported (the node sends Endpoint Unreachable).
//! - **Cookie**: the newest Cookie from a PE is kept and sent in a Cookie Echo to the next PE,
//!   right after HELLO and before anything else.
//! - **Retrieval** (on by default): messages not acknowledged by the failed PE's application
//!   are re-sent to the next PE after the Cookie Echo, in their order, with the resend flag.
//!   Off: they are handed back to the application ([`SessionEvent::Dropped`]) and never sent
//!   again, so every message is delivered at most once.
//!
//! Memory: the unacknowledged messages are bounded by `max_unacked` and `max_unacked_bytes`
//! (a send beyond gets [`SendError::Full`]); the receive buffer by `max_payload`.

use core::net::SocketAddr;
use std::collections::VecDeque;

use super::config::SessionConfig;
use super::frame::{self, Frame, Kind, FLAG_RESEND};
use super::{ConnToken, Ctx};
use crate::time::Time;
use crate::wire::asap::{self, Body};
use crate::wire::PoolElementRepr;

/// Names a session of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What a session tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Connected to a PE (the first one, or the next after a failover).
    Connected {
        /// The PE.
        pe_id: u32,
        /// The leg dialled.
        addr: SocketAddr,
        /// Messages re-sent to it with the resend flag (retrieval).
        resent: usize,
    },
    /// A message from the PE.
    Data {
        /// The PE that sent it.
        pe_id: u32,
        /// Its stream.
        stream: u16,
        /// Its sequence number (the PE's numbering).
        seq: u64,
        /// The message.
        payload: Vec<u8>,
    },
    /// The PE's application acknowledged message `seq`.
    Acked {
        /// The acknowledged message.
        seq: u64,
    },
    /// The PE sent a Cookie (kept, the newest only, for the next PE).
    Cookie(Vec<u8>),
    /// The PE sent a Business Card: the PEs to fail over to, in order.
    BusinessCard(Vec<PoolElementRepr>),
    /// A PE failed; the session fails over.
    PeFailed {
        /// The PE.
        pe_id: u32,
        /// The leg that failed.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Retrieval off: these messages were sent to a PE that failed before acknowledging
    /// them; they are not sent again.
    Dropped(Vec<u64>),
    /// No PE of the pool could be reached; the session retries after `retry_delay`.
    NoPoolElement,
}

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Too many unacknowledged messages (or bytes); wait for acknowledgements.
    #[error("too many unacknowledged messages")]
    Full,
    /// The message exceeds the largest payload.
    #[error("message larger than the largest payload")]
    TooLarge,
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// What a session needs from its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionRequest {
    /// Candidate PEs of the pool, in the policy's order ([`SessionCore::offer`]); `fresh`:
    /// from the registrar, not the cache.
    Candidates {
        /// Ask the registrar.
        fresh: bool,
    },
    /// Report this PE unreachable.
    Unreachable {
        /// The PE.
        pe_id: u32,
    },
}

/// Counters of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages accepted by [`SessionCore::send`].
    pub sent: u64,
    /// Messages re-sent with the resend flag.
    pub resent: u64,
    /// Messages dropped unacknowledged (retrieval off).
    pub dropped: u64,
    /// Failovers: connections to another PE after one that had been working.
    pub failovers: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    pe: PoolElementRepr,
    leg: usize,
    addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for candidates from the node.
    Waiting {
        fresh: bool,
    },
    Connecting {
        conn: ConnToken,
        target: Target,
        deadline: Time,
    },
    Open {
        conn: ConnToken,
        target: Target,
    },
    Paused {
        until: Time,
    },
    Closed,
}

#[derive(Clone, Debug)]
struct Unacked {
    seq: u64,
    stream: u16,
    payload: Vec<u8>,
    /// Sent to some PE already (a resend carries the flag).
    sent: bool,
}

/// The pool user's end of a failover-capable session with a pool.
#[derive(Debug)]
pub struct SessionCore {
    id: SessionId,
    pool_handle: Vec<u8>,
    cfg: SessionConfig,
    phase: Phase,
    unacked: VecDeque<Unacked>,
    unacked_bytes: usize,
    next_seq: u64,
    cookie: Option<Vec<u8>>,
    card: Vec<PoolElementRepr>,
    plan: VecDeque<Target>,
    /// (PE id, address) tried in this episode (since the last PE that answered HELLO).
    tried: Vec<(u32, SocketAddr)>,
    /// PEs that failed in this episode, in order.
    failed: Vec<PoolElementRepr>,
    /// A PE has answered on this session before (so the next connect is a failover).
    served: bool,
    /// The registrar was asked in this episode already.
    asked_fresh: bool,
    hello_seen: bool,
    rx: Vec<u8>,
    next_heartbeat: Time,
    heartbeat_sent: Option<Time>,
    nonce: u64,
    events: VecDeque<SessionEvent>,
    requests: VecDeque<SessionRequest>,
    /// Counters.
    pub stats: SessionStats,
}

impl SessionCore {
    /// A session with pool `pool_handle`; it asks its node for candidates at once.
    pub fn new(id: SessionId, pool_handle: Vec<u8>, cfg: SessionConfig) -> Self {
        let mut requests = VecDeque::new();
        requests.push_back(SessionRequest::Candidates { fresh: false });
        Self {
            id,
            pool_handle,
            cfg,
            phase: Phase::Waiting { fresh: false },
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_seq: 1,
            cookie: None,
            card: Vec::new(),
            plan: VecDeque::new(),
            tried: Vec::new(),
            failed: Vec::new(),
            served: false,
            asked_fresh: false,
            hello_seen: false,
            rx: Vec::new(),
            next_heartbeat: Time::NEVER,
            heartbeat_sent: None,
            nonce: 0,
            events: VecDeque::new(),
            requests,
            stats: SessionStats::default(),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The pool.
    pub fn pool_handle(&self) -> &[u8] {
        &self.pool_handle
    }

    /// The PE serving the session now, if connected.
    pub fn pe_id(&self) -> Option<u32> {
        match &self.phase {
            Phase::Open { target, .. } => Some(target.pe.pe_id),
            _ => None,
        }
    }

    /// The newest cookie received.
    pub fn cookie(&self) -> Option<&[u8]> {
        self.cookie.as_deref()
    }

    /// Messages not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Whether `conn` is this session's connection.
    pub fn owns(&self, conn: ConnToken) -> bool {
        matches!(&self.phase, Phase::Connecting { conn: c, .. } | Phase::Open { conn: c, .. } if *c == conn)
    }

    /// Queues a message; sent at once when connected, else after the next connect. Returns
    /// its sequence number.
    pub fn send(&mut self, cx: &mut Ctx, stream: u16, payload: Vec<u8>) -> Result<u64, SendError> {
        if self.phase == Phase::Closed {
            return Err(SendError::Closed);
        }
        if payload.len() > self.cfg.max_payload {
            return Err(SendError::TooLarge);
        }
        if self.unacked.len() >= self.cfg.max_unacked || self.unacked_bytes + payload.len() > self.cfg.max_unacked_bytes
        {
            return Err(SendError::Full);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.sent += 1;
        let mut m = Unacked { seq, stream, payload, sent: false };
        if let Phase::Open { conn, .. } = self.phase {
            let mut bytes = Vec::with_capacity(frame::HEADER_LEN + m.payload.len());
            frame::encode(&mut bytes, Kind::Data, 0, stream, seq, &m.payload);
            cx.send(conn, bytes);
            m.sent = true;
        }
        self.unacked_bytes += m.payload.len();
        self.unacked.push_back(m);
        Ok(seq)
    }

    /// Sends the session's own Business Card to the PE (a PU that is itself a PE).
    pub fn send_business_card(&mut self, cx: &mut Ctx, policy: &crate::wire::PolicyRepr, pes: &[PoolElementRepr]) {
        if let Phase::Open { conn, .. } = self.phase {
            let mut bytes = Vec::new();
            frame::asap_message(&mut bytes, |w| frame::business_card(w, &self.pool_handle, policy, pes));
            cx.send(conn, bytes);
        }
    }

    /// Candidate PEs from the node, in the pool policy's order (`fresh`: just resolved at the
    /// registrar). Builds the failover plan and connects to its first entry.
    pub fn offer(&mut self, cx: &mut Ctx, pes: &[PoolElementRepr], now: Time) {
        let Phase::Waiting { fresh } = self.phase else { return };
        self.plan.clear();
        self.plan = self.plan_from(pes);
        let other_pe = self.plan.iter().any(|t| !self.failed.iter().any(|f| f.pe_id == t.pe.pe_id));
        if !fresh && !other_pe && !self.asked_fresh {
            // The cache knows no other PE: the registrar may.
            self.ask(true);
            return;
        }
        if self.plan.is_empty() {
            if fresh {
                self.events.push_back(SessionEvent::NoPoolElement);
                self.tried.clear();
                self.failed.clear();
                self.asked_fresh = false;
                self.phase = Phase::Paused { until: now.add_millis(self.cfg.retry_delay.max(1)) };
            } else {
                self.ask(true);
            }
            return;
        }
        self.try_next(cx, now);
    }

    /// The failover plan: other PEs first (card, then policy order), then the legs of the PEs
    /// that failed (in the order they failed), then the other legs of the rest.
    fn plan_from(&self, pes: &[PoolElementRepr]) -> VecDeque<Target> {
        let failed = |id: u32| self.failed.iter().any(|f| f.pe_id == id);
        let mut firsts: Vec<&PoolElementRepr> = Vec::new();
        for pe in self.card.iter().chain(pes) {
            if !failed(pe.pe_id) && !firsts.iter().any(|f| f.pe_id == pe.pe_id) {
                firsts.push(pe);
            }
        }
        let mut plan = VecDeque::new();
        for pe in &firsts {
            self.push_legs(pe, 0..1, &mut plan);
        }
        for pe in &self.failed {
            self.push_legs(pe, 0..pe.user_transport.addresses.len(), &mut plan);
        }
        for pe in &firsts {
            self.push_legs(pe, 1..pe.user_transport.addresses.len(), &mut plan);
        }
        plan
    }

    fn ask(&mut self, fresh: bool) {
        self.asked_fresh |= fresh;
        self.phase = Phase::Waiting { fresh };
        self.requests.push_back(SessionRequest::Candidates { fresh });
    }

    fn try_next(&mut self, cx: &mut Ctx, now: Time) {
        match self.plan.pop_front() {
            Some(target) => {
                let conn = cx.connect(target.addr, None);
                self.rx.clear();
                self.hello_seen = false;
                let deadline = now.add_millis(self.cfg.connect_timeout.max(1));
                self.phase = Phase::Connecting { conn, target, deadline };
            }
            None => self.ask(false),
        }
    }

    /// The connection to the PE is up: HELLO, the Cookie Echo, then the unacknowledged
    /// messages in order (the ones sent before with the resend flag).
    pub fn on_connected(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        let Phase::Connecting { conn: c, ref target, .. } = self.phase else { return };
        if c != conn {
            return;
        }
        let target = target.clone();
        let mut bytes = Vec::new();
        frame::hello(&mut bytes);
        if self.served {
            if let Some(cookie) = &self.cookie {
                frame::asap_message(&mut bytes, |w| frame::cookie(w, true, cookie));
            }
        }
        let mut resent = 0;
        for m in &mut self.unacked {
            let flags = if m.sent { FLAG_RESEND } else { 0 };
            resent += usize::from(m.sent);
            frame::encode(&mut bytes, Kind::Data, flags, m.stream, m.seq, &m.payload);
            m.sent = true;
        }
        cx.send(conn, bytes);
        self.stats.resent += resent as u64;
        if self.served {
            self.stats.failovers += 1;
        }
        self.served = true;
        self.heartbeat_sent = None;
        self.next_heartbeat = now.add_millis(self.cfg.heartbeat_interval.max(1));
        self.events.push_back(SessionEvent::Connected { pe_id: target.pe.pe_id, addr: target.addr, resent });
        self.phase = Phase::Open { conn, target };
    }

    /// The connection is gone.
    pub fn on_closed(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        if self.owns(conn) {
            let reason =
                if matches!(self.phase, Phase::Connecting { .. }) { "connect failed" } else { "connection lost" };
            self.fail(cx, reason.into(), now, false);
        }
    }

    /// Bytes from the PE.
    pub fn on_data(&mut self, cx: &mut Ctx, conn: ConnToken, data: &[u8], now: Time) {
        let Phase::Open { conn: c, ref target } = self.phase else { return };
        if c != conn {
            return;
        }
        let pe_id = target.pe.pe_id;
        let mut rx = core::mem::take(&mut self.rx);
        rx.extend_from_slice(data);
        let mut used = 0;
        let mut failure = None;
        loop {
            match frame::decode(&rx[used..], self.cfg.max_payload) {
                Ok(None) => break,
                Ok(Some((f, len))) => {
                    used += len;
                    self.heartbeat_sent = None;
                    if let Err(reason) = self.on_frame(cx, conn, pe_id, f, now) {
                        failure = Some(reason);
                        break;
                    }
                }
                Err(e) => {
                    let mut bytes = Vec::new();
                    frame::error(&mut bytes, &e);
                    cx.send(conn, bytes);
                    failure = Some((format!("bad input from the PE: {e}"), true));
                    break;
                }
            }
        }
        match failure {
            Some((reason, close)) => self.fail(cx, reason, now, close),
            None => {
                rx.drain(..used);
                self.rx = rx;
            }
        }
    }

    fn on_frame(
        &mut self,
        cx: &mut Ctx,
        conn: ConnToken,
        pe_id: u32,
        f: Frame<'_>,
        now: Time,
    ) -> Result<(), (String, bool)> {
        let mut seq_err = |k| {
            let e = frame::FrameError::Sequence(k);
            let mut bytes = Vec::new();
            frame::error(&mut bytes, &e);
            cx.send(conn, bytes);
            Err((format!("bad input from the PE: {e}"), true))
        };
        if !self.hello_seen {
            if f != Frame::Hello {
                return seq_err(kind_of(&f));
            }
            self.hello_seen = true;
            // The PE answers: this failover episode is over.
            self.tried.clear();
            self.failed.clear();
            self.asked_fresh = false;
            return Ok(());
        }
        match f {
            Frame::Hello => return seq_err(Kind::Hello),
            Frame::Data { stream, seq, payload, .. } => {
                self.events.push_back(SessionEvent::Data { pe_id, stream, seq, payload: payload.to_vec() })
            }
            Frame::Ack { seq } => {
                if let Some(i) = self.unacked.iter().position(|m| m.seq == seq) {
                    if let Some(m) = self.unacked.remove(i) {
                        self.unacked_bytes -= m.payload.len();
                    }
                    self.events.push_back(SessionEvent::Acked { seq });
                }
            }
            Frame::Heartbeat { nonce } => {
                let mut bytes = Vec::new();
                frame::encode(&mut bytes, Kind::HeartbeatAck, 0, 0, nonce, &[]);
                cx.send(conn, bytes);
            }
            Frame::HeartbeatAck { .. } => {}
            Frame::Asap(m) => {
                // The frame decoder validated the message.
                if let Ok(parsed) = asap::parse(m) {
                    match parsed.into_body() {
                        Body::Cookie { cookie } => {
                            self.cookie = Some(cookie.to_vec());
                            self.events.push_back(SessionEvent::Cookie(cookie.to_vec()));
                        }
                        Body::BusinessCard { pool_elements, .. } => {
                            self.card = pool_elements.map(|pe| pe.to_repr()).take(256).collect();
                            self.events.push_back(SessionEvent::BusinessCard(self.card.clone()));
                        }
                        _ => {}
                    }
                }
            }
            Frame::Error(reason) => return Err((format!("the PE reported an error: {reason}"), true)),
        }
        let _ = now;
        Ok(())
    }

    /// The current PE (or leg) failed: report it, close, and go on with the plan.
    fn fail(&mut self, cx: &mut Ctx, reason: String, now: Time, close: bool) {
        let (conn, target) = match &self.phase {
            Phase::Open { conn, target } | Phase::Connecting { conn, target, .. } => (*conn, target.clone()),
            _ => return,
        };
        if close {
            cx.close(conn);
        }
        self.tried.push((target.pe.pe_id, target.addr));
        if !self.failed.iter().any(|f| f.pe_id == target.pe.pe_id) {
            self.failed.push(target.pe.clone());
            self.requests.push_back(SessionRequest::Unreachable { pe_id: target.pe.pe_id });
        }
        self.events.push_back(SessionEvent::PeFailed { pe_id: target.pe.pe_id, addr: target.addr, reason });
        self.card.retain(|pe| pe.pe_id != target.pe.pe_id);
        if !self.cfg.retrieval {
            let mut seqs = Vec::new();
            while self.unacked.front().is_some_and(|m| m.sent) {
                if let Some(m) = self.unacked.pop_front() {
                    self.unacked_bytes -= m.payload.len();
                    seqs.push(m.seq);
                }
            }
            if !seqs.is_empty() {
                self.stats.dropped += seqs.len() as u64;
                self.events.push_back(SessionEvent::Dropped(seqs));
            }
        }
        self.heartbeat_sent = None;
        let old = core::mem::take(&mut self.plan);
        let is_failed = |t: &Target| self.failed.iter().any(|f| f.pe_id == t.pe.pe_id);
        let others: Vec<Target> = old.into_iter().filter(|t| !is_failed(t)).collect();
        if others.is_empty() && !self.asked_fresh {
            // The node offers the pool's other PEs (cache, then registrar); legs follow them.
            self.ask(false);
            return;
        }
        if others.is_empty() && self.failed_legs().is_empty() {
            self.ask(true);
            return;
        }
        // Business card first, then the rest of the plan's other PEs, then the failed PEs'
        // legs, then the other PEs' other legs.
        let card: Vec<PoolElementRepr> = self.card.clone();
        let mut firsts: VecDeque<Target> = VecDeque::new();
        for pe in &card {
            if let Some(t) = others.iter().find(|t| t.pe.pe_id == pe.pe_id && t.leg == 0) {
                firsts.push_back(t.clone());
            } else if !self.failed.iter().any(|f| f.pe_id == pe.pe_id) {
                self.push_legs(pe, 0..1, &mut firsts);
            }
        }
        for t in others.iter().filter(|t| t.leg == 0) {
            if !firsts.iter().any(|f| f.pe.pe_id == t.pe.pe_id) {
                firsts.push_back(t.clone());
            }
        }
        self.plan = firsts;
        let legs = self.failed_legs();
        self.plan.extend(legs);
        self.plan.extend(others.into_iter().filter(|t| t.leg != 0));
        self.try_next(cx, now);
    }

    /// The legs of the failed PEs not tried yet, in the order the PEs failed.
    fn failed_legs(&self) -> VecDeque<Target> {
        let mut legs = VecDeque::new();
        for pe in &self.failed {
            self.push_legs(pe, 0..pe.user_transport.addresses.len(), &mut legs);
        }
        legs
    }

    /// Appends the legs `legs` of `pe` not tried yet and not planned yet.
    fn push_legs(&self, pe: &PoolElementRepr, legs: core::ops::Range<usize>, plan: &mut VecDeque<Target>) {
        for leg in legs {
            let Some(&ip) = pe.user_transport.addresses.get(leg) else { break };
            let addr = SocketAddr::new(ip, pe.user_transport.port);
            let planned = plan.iter().chain(&self.plan).any(|t: &Target| t.addr == addr && t.pe.pe_id == pe.pe_id);
            if !self.tried.contains(&(pe.pe_id, addr)) && !planned {
                plan.push_back(Target { pe: pe.clone(), leg, addr });
            }
        }
    }

    /// Closes the session.
    pub fn close(&mut self, cx: &mut Ctx) {
        if let Phase::Open { conn, .. } | Phase::Connecting { conn, .. } = self.phase {
            cx.close(conn);
        }
        self.phase = Phase::Closed;
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Time-driven work: connect timeout, heartbeats, the pause after a fruitless round.
    pub fn on_timer(&mut self, cx: &mut Ctx, now: Time) {
        match self.phase {
            Phase::Connecting { conn, deadline, .. } if now >= deadline => {
                cx.close(conn);
                self.fail(cx, "connect timed out".into(), now, false);
            }
            Phase::Open { conn, .. } => {
                if let Some(sent) = self.heartbeat_sent {
                    if now.millis_since(sent) >= self.cfg.heartbeat_timeout {
                        self.fail(cx, "heartbeat timed out".into(), now, true);
                        return;
                    }
                }
                if now >= self.next_heartbeat {
                    self.nonce += 1;
                    let mut bytes = Vec::new();
                    frame::encode(&mut bytes, Kind::Heartbeat, 0, 0, self.nonce, &[]);
                    cx.send(conn, bytes);
                    self.heartbeat_sent.get_or_insert(now);
                    self.next_heartbeat = now.add_millis(self.cfg.heartbeat_interval.max(1));
                }
            }
            Phase::Paused { until } if now >= until => self.ask(true),
            _ => {}
        }
    }

    /// The earliest time [`SessionCore::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Time> {
        match self.phase {
            Phase::Connecting { deadline, .. } => Some(deadline),
            Phase::Open { .. } => Some(
                self.heartbeat_sent
                    .map_or(self.next_heartbeat, |s| s.add_millis(self.cfg.heartbeat_timeout).min(self.next_heartbeat)),
            ),
            Phase::Paused { until } => Some(until),
            _ => None,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The next request to the node.
    pub fn poll_request(&mut self) -> Option<SessionRequest> {
        self.requests.pop_front()
    }
}

fn kind_of(f: &Frame<'_>) -> Kind {
    match f {
        Frame::Hello => Kind::Hello,
        Frame::Data { .. } => Kind::Data,
        Frame::Ack { .. } => Kind::Ack,
        Frame::Heartbeat { .. } => Kind::Heartbeat,
        Frame::HeartbeatAck { .. } => Kind::HeartbeatAck,
        Frame::Asap(_) => Kind::Asap,
        Frame::Error(_) => Kind::Error,
    }
}
