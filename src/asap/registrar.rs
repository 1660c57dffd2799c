//! One shard of the registrar: the ASAP procedures of WIRE.md section 6.1 over this shard's part
//! of the handlespace, as a [`Service`] that any engine drives.
//!
//! Requests are routed by pool handle: a message for a pool that hashes to another shard is
//! posted there with the client's address, handled by the owner, and answered straight to the
//! client's connection (the engine carries bytes for a connection of another shard back to it).
//! Connections are state: when one closes, every shard that holds PEs registered over it drops
//! them.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;

use tracing::{debug, info, warn};

use super::keepalive::{Due, KeepAlive};
use super::order::{Capture, Sequencer};
use super::post::{self, Post};
use super::reply;
use super::reports::ReportLimiter;
use crate::config::{Limits, Timers};
use crate::handlespace::{shard_of, Handlespace, HandlespaceConfig, PeKey, Registration, Unreachable};
use crate::service::{ConnId, Outbox, Service, ShardId};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType};
use crate::wire::framer::Frame;
use crate::wire::{
    cause, policy, pool_element, CauseCode, Framer, Param, ParamType, Policy, PolicyParam, PolicyType, Protocol,
    Transport, TransportRepr, Writer,
};

/// What a registrar shard needs to know.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// This registrar's server id (home registrar id of the PEs it owns).
    pub server_id: u32,
    /// Number of shards in the process.
    pub shards: u16,
    /// Resource limits (registrar-wide limits are split evenly between shards).
    pub limits: Limits,
    /// Protocol timers.
    pub timers: Timers,
    /// Seed of the random selection policies (each shard mixes in its index).
    pub seed: u64,
}

impl RegistrarConfig {
    /// A configuration with the defaults of [`crate::config::Config`].
    pub fn new(server_id: u32, shards: u16) -> Self {
        Self { server_id, shards, limits: Limits::default(), timers: Timers::default(), seed: 0x5253_4552_504f_4f4c }
    }
}

/// Counters of one shard (read by status and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registrations accepted (new and re-registrations).
    pub registrations: u64,
    /// Registrations rejected.
    pub registrations_rejected: u64,
    /// Deregistrations that removed a PE.
    pub deregistrations: u64,
    /// Handle resolutions answered with PEs.
    pub resolutions: u64,
    /// Handle resolutions for an unknown pool.
    pub unknown_pool: u64,
    /// Endpoint Keep Alives sent.
    pub keep_alives_sent: u64,
    /// PEs removed for not answering a keep-alive.
    pub keep_alive_failures: u64,
    /// PEs removed when their registration life ended.
    pub expired: u64,
    /// PEs removed after MAX-BAD-PE-REPORT unreachable reports.
    pub unreachable_removed: u64,
    /// PEs removed because their connection closed.
    pub connection_losses: u64,
    /// Messages refused as malformed or unknown.
    pub bad_messages: u64,
    /// Connections closed because their stream could not be framed.
    pub framing_errors: u64,
}

/// A client connection whose socket this shard owns.
#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    /// Other shards holding PEs registered over this connection (bit per shard, up to 64;
    /// beyond that every shard is told when it closes).
    shards: u64,
    /// Keeps answers in request order when other shards answer some requests.
    order: Sequencer,
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

/// One registrar shard.
pub struct Registrar {
    id: u32,
    shard: ShardId,
    shards: u16,
    limits: Limits,
    framer: Framer,
    hs: Handlespace,
    keep_alive: KeepAlive,
    reports: ReportLimiter,
    conns: Conns,
    /// Kinds of rejection already logged per connection (so each is logged once per peer).
    logged: HashMap<ConnId, u32, ahash::RandomState>,
    selected: Vec<PeKey>,
    scratch: Vec<u8>,
    /// The answer being built for a numbered request.
    answer: Vec<u8>,
    stats: Stats,
}

/// Most connections remembered for "logged once" before the memory is reset.
const MAX_LOGGED: usize = 4096;

fn split(total: usize, shards: u16) -> usize {
    total.div_ceil(usize::from(shards.max(1))).max(1)
}

impl Registrar {
    /// Shard `shard` of `config.shards`, starting at `now`.
    pub fn new(config: &RegistrarConfig, shard: ShardId, now: Time) -> Self {
        let l = &config.limits;
        let hs = Handlespace::new(
            HandlespaceConfig {
                max_pools: split(l.max_pools, config.shards),
                max_pes_per_pool: l.max_pes_per_pool,
                max_pes: split(l.max_pes, config.shards),
                max_pes_per_connection: l.max_pes_per_connection,
                max_handle_len: l.max_pool_handle,
                max_registration_life: config.timers.max_registration_life.min(i32::MAX as u64) as i32,
                max_increment: l.max_increment as usize,
                max_bad_pe_reports: l.max_bad_pe_reports.min(u32::from(u16::MAX)) as u16,
                seed: config.seed ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            },
            now,
        );
        Self {
            id: config.server_id,
            shard,
            shards: config.shards.max(1),
            limits: l.clone(),
            framer: Framer::new(Protocol::Asap, l.max_message_size),
            hs,
            keep_alive: KeepAlive::new(now, config.timers.keep_alive_interval, config.timers.keep_alive_timeout),
            reports: ReportLimiter::new(config.timers.unreachable_report_interval),
            conns: Conns::default(),
            logged: HashMap::default(),
            selected: Vec::with_capacity(l.max_items as usize),
            scratch: Vec::with_capacity(l.max_message_size + 32),
            answer: Vec::with_capacity(l.max_message_size + 32),
            stats: Stats::default(),
        }
    }

    /// This shard's part of the handlespace.
    pub fn handlespace(&self) -> &Handlespace {
        &self.hs
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// PEs under keep-alive supervision on this shard.
    pub fn supervised_pes(&self) -> usize {
        self.keep_alive.len()
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

    /// Handles one complete message from `conn`, here or at the shard owning its pool. Answers
    /// leave in request order (see [`Sequencer`]).
    fn dispatch(&mut self, conn: ConnId, peer: SocketAddr, msg: &[u8], now: Time, out: &mut impl Outbox) {
        let owner = match self.shards {
            1 => self.shard,
            n => Self::routing_handle(msg).map_or(self.shard, |handle| shard_of(handle, n)),
        };
        let Some(c) = self.conns.get_mut(conn) else { return };
        if owner != self.shard {
            if msg[0] == MessageType::Registration as u8 {
                c.shards |= 1u64.checked_shl(u32::from(owner)).unwrap_or(u64::MAX);
            }
            if c.order.idle() {
                // Answers are now owed from another shard: keep the connection open for them
                // even if the client shuts down its side meanwhile.
                out.hold(conn, true);
            }
            let seq = c.order.number();
            post::request(&mut self.scratch, seq, peer, msg);
            out.post(owner, conn, &self.scratch);
        } else if c.order.idle() {
            self.handle(conn, peer, msg, now, out);
        } else {
            // An earlier request is out at another shard: this answer waits its turn.
            let seq = c.order.number();
            let mut answer = std::mem::take(&mut self.answer);
            answer.clear();
            self.handle(conn, peer, msg, now, &mut Capture { conn, buf: &mut answer, inner: out });
            self.answered(conn, seq, &answer, out);
            self.answer = answer;
        }
    }

    /// Sends the answer to request `seq` of local connection `conn`, and any that were waiting
    /// for it, in order.
    fn answered(&mut self, conn: ConnId, seq: u64, bytes: &[u8], out: &mut impl Outbox) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.order.answered(seq, bytes, |answer| out.send(conn, &mut |buf| buf.extend_from_slice(answer)));
            if c.order.idle() {
                out.hold(conn, false);
            } else if c.order.held_bytes() > self.limits.max_send_queue {
                // An earlier answer is not coming (a cross-shard queue dropped it) while the
                // client keeps asking: close rather than hold its answers without bound.
                warn!(peer = %c.peer, "closing connection: answers held for request order exceed the send queue limit");
                out.hold(conn, false);
                out.close(conn);
            }
        }
    }

    /// Handles one message for a pool of this shard (or about no pool).
    fn handle(&mut self, conn: ConnId, peer: SocketAddr, msg: &[u8], now: Time, out: &mut impl Outbox) {
        // The hot path: a resolution as every client sends it, straight to the answer.
        if let Some((pool_handle, items)) = asap::canonical_handle_resolution(msg) {
            return self.resolve(conn, pool_handle, items, out);
        }
        let m = match asap::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                self.note(conn, 1 + u32::from(e.cause().map_or(15, |c| c.0.min(14))), || format!("{peer}: {e}"));
                let max = self.limits.max_message_size;
                out.send(conn, &mut |buf| {
                    reply::to_error(buf, msg, &e, max);
                });
                return;
            }
        };
        match *m.body() {
            Body::Registration { pool_handle, ref pool_element } => {
                self.register(conn, peer, msg, pool_handle, pool_element, now, out)
            }
            Body::Deregistration { pool_handle, pe_id } => self.deregister(conn, pool_handle, pe_id, out),
            Body::HandleResolution { pool_handle, items } => self.resolve(conn, pool_handle, items, out),
            Body::EndpointKeepAliveAck { pool_handle, pe_id } => {
                if let Some(key) = self.hs.lookup(pool_handle, pe_id) {
                    if self.hs.pe(key).is_some_and(|pe| pe.conn == Some(conn)) {
                        self.keep_alive.acked(key, now);
                    }
                }
            }
            Body::EndpointUnreachable { pool_handle, pe_id } => self.unreachable(conn, pool_handle, pe_id, now),
            _ => debug!(%peer, kind = ?MessageType::from_u8(msg[0]), "ASAP message not for a registrar; ignored"),
        }
        if m.has_reports() {
            let max = self.limits.max_message_size;
            out.send(conn, &mut |buf| {
                let mut params = Vec::new();
                m.for_each_report(|p| params.push(p));
                reply::unrecognized_params(buf, params, max);
            });
        }
    }

    /// Logs a rejection at warn level the first time per connection and kind, else at debug.
    fn note(&mut self, conn: ConnId, kind: u32, what: impl FnOnce() -> String) {
        if self.logged.len() >= MAX_LOGGED {
            self.logged.clear();
        }
        let bits = self.logged.entry(conn).or_default();
        let bit = 1u32 << (kind % 32);
        if *bits & bit == 0 {
            *bits |= bit;
            warn!("rejected (further ones of this kind from this peer at debug level): {}", what());
        } else {
            debug!("rejected: {}", what());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        conn: ConnId,
        peer: SocketAddr,
        msg: &[u8],
        handle: &[u8],
        pe: &crate::wire::PoolElement<'_>,
        now: Time,
        out: &mut impl Outbox,
    ) {
        let pe_id = pe.pe_id();
        let user = pe.user_transport();
        let quote = |p: Param<'_>| -> (u32, u32) { (p.range().start as u32, p.range().end as u32) };
        let handle_param = || {
            let at = 4;
            crate::wire::Params::new(&msg[at..], at).find(|p| p.param_type() == ParamType::POOL_HANDLE)
        };
        // WIRE.md 6.1 step 1: values the codec cannot judge.
        let invalid = if handle.is_empty() {
            Some((CauseCode::INVALID_VALUES, handle_param().map(quote)))
        } else if handle.len() > self.limits.max_pool_handle {
            Some((CauseCode::LACK_OF_RESOURCES, None))
        } else if pe_id == 0 {
            Some((CauseCode::INVALID_VALUES, Some(quote(pe.param()))))
        } else if user.port() == 0 {
            Some((CauseCode::INVALID_VALUES, Some(quote(user.param()))))
        } else if user.addresses().count() > self.limits.max_addresses {
            Some((CauseCode::LACK_OF_RESOURCES, None))
        } else if let PolicyParam::Unknown { .. } = pe.policy() {
            Some((CauseCode::INVALID_VALUES, Some(quote(pe.policy_param()))))
        } else {
            pe.asap_transport().filter(|t| t.port() == 0).map(|t| (CauseCode::INVALID_VALUES, Some(quote(t.param()))))
        };
        if let Some((cause, info)) = invalid {
            return self.registration_rejected(conn, peer, msg, handle, pe_id, cause, info, out);
        }
        let PolicyParam::Known(policy) = pe.policy() else { return };
        let reg = Registration {
            handle,
            pe_id,
            home: self.id,
            user_transport: with_peer_address(&user, peer.ip()),
            asap_transport: pe.asap_transport().map(|t| with_peer_address(&t, peer.ip())),
            policy,
            registration_life: pe.registration_life(),
            conn: Some(conn),
        };
        match self.hs.register(reg, now) {
            Ok(r) => {
                self.stats.registrations += 1;
                self.keep_alive.arm(r.pe, now);
                if r.added {
                    debug!(%peer, pe_id = format_args!("{pe_id:#010x}"), pool = %String::from_utf8_lossy(handle), "registered");
                }
                out.send(conn, &mut |buf| {
                    let mut w = Writer::new(buf);
                    let _ = asap::emit_handle_and_id(
                        &mut w,
                        MessageType::RegistrationResponse,
                        0,
                        handle,
                        Some(pe_id),
                        None,
                    );
                });
            }
            Err(e) => {
                let cause = e.cause_code();
                let info = match cause {
                    CauseCode::INCONSISTENT_POOLING_POLICY => Some(quote(pe.policy_param())),
                    CauseCode::INCONSISTENT_TRANSPORT_TYPE => Some(quote(user.param())),
                    CauseCode::INVALID_VALUES => Some(quote(pe.param())),
                    _ => None,
                };
                self.note(conn, 16 + u32::from(cause.0), || format!("{peer}: registration of PE {pe_id:#010x}: {e}"));
                self.registration_rejected(conn, peer, msg, handle, pe_id, cause, info, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn registration_rejected(
        &mut self,
        conn: ConnId,
        peer: SocketAddr,
        msg: &[u8],
        handle: &[u8],
        pe_id: u32,
        cause: CauseCode,
        info: Option<(u32, u32)>,
        out: &mut impl Outbox,
    ) {
        self.stats.registrations_rejected += 1;
        debug!(%peer, pe_id = format_args!("{pe_id:#010x}"), cause = cause.0, "registration rejected");
        let info = info.and_then(|(s, e)| msg.get(s as usize..e as usize)).unwrap_or(&[]);
        // An empty pool handle is quoted as the empty TLV itself.
        let empty_handle = [0u8, 9, 0, 4];
        let info = if cause == CauseCode::INVALID_VALUES && info.is_empty() { &empty_handle[..] } else { info };
        let max = self.limits.max_message_size;
        out.send(conn, &mut |buf| {
            let mut w = Writer::with_limit(buf, max);
            let _ = asap::emit_handle_and_id(
                &mut w,
                MessageType::RegistrationResponse,
                asap::FLAG_REJECT,
                handle,
                Some(pe_id),
                Some((cause, info)),
            );
        });
    }

    fn deregister(&mut self, conn: ConnId, handle: &[u8], pe_id: u32, out: &mut impl Outbox) {
        let key = self.hs.lookup(handle, pe_id);
        let error = match self.hs.deregister(handle, pe_id, Some(conn)) {
            Ok(removed) => {
                if let (Some(key), Some(_)) = (key, removed) {
                    self.keep_alive.disarm(key);
                    self.stats.deregistrations += 1;
                }
                None
            }
            Err(e) => Some(e.cause_code()),
        };
        out.send(conn, &mut |buf| {
            let mut w = Writer::new(buf);
            let err = error.map(|c| (c, &[][..]));
            let _ = asap::emit_handle_and_id(&mut w, MessageType::DeregistrationResponse, 0, handle, Some(pe_id), err);
        });
    }

    fn unreachable(&mut self, reporter: ConnId, handle: &[u8], pe_id: u32, now: Time) {
        let key = self.hs.lookup(handle, pe_id);
        if key.is_some_and(|k| !self.reports.allow(k, reporter, now)) {
            return;
        }
        if let Ok(Unreachable::Removed(pe)) = self.hs.report_unreachable(handle, pe_id) {
            self.stats.unreachable_removed += 1;
            if let Some(key) = key {
                self.keep_alive.disarm(key);
            }
            info!(pe_id = format_args!("{:#010x}", pe.id), pool = %String::from_utf8_lossy(handle), "PE removed after unreachable reports");
        }
    }

    /// Handle Resolution: up to N PEs by the pool's policy (WIRE.md section 6.1).
    fn resolve(&mut self, conn: ConnId, handle: &[u8], items: Option<u32>, out: &mut impl Outbox) {
        let l = &self.limits;
        let n = match items {
            None | Some(0) => l.default_items,
            Some(k) => k.min(l.max_items),
        } as usize;
        let max = l.max_message_size;
        match self.hs.resolve(handle, n, &mut self.selected) {
            Ok(pool) => {
                self.stats.resolutions += 1;
                let hs = &self.hs;
                let selected = &self.selected;
                out.send(conn, &mut |buf| {
                    let first = selected.first().and_then(|k| hs.pe(*k));
                    // The first PE's values; the pool's type with zero values only when none was
                    // selected (the pool lookup is not needed on the usual path).
                    let policy = first.map_or_else(
                        || zero_policy(hs.pool(pool).map_or(PolicyType::ROUND_ROBIN, |p| p.policy_type())),
                        |pe| pe.policy,
                    );
                    let mut budget =
                        max.saturating_sub(4 + 4 + handle.len().next_multiple_of(4) + policy.encoded_len());
                    let mut w = Writer::with_limit(buf, max);
                    let _ = w.message(MessageType::HandleResolutionResponse as u8, 0, |w| {
                        w.tlv_bytes(ParamType::POOL_HANDLE, handle);
                        policy::emit(w, &policy);
                        for pe in selected.iter().filter_map(|k| hs.pe(*k)) {
                            let body = pe.wire_body();
                            if 16 + body.len() > budget {
                                break;
                            }
                            budget -= 16 + body.len();
                            pool_element::emit_encoded(w, pe.id, pe.home, pe.registration_life, body, None);
                        }
                    });
                });
            }
            Err(e) => {
                self.stats.unknown_pool += 1;
                out.send(conn, &mut |buf| {
                    let mut w = Writer::new(buf);
                    let _ = w.message(MessageType::HandleResolutionResponse as u8, 0, |w| {
                        w.tlv_bytes(ParamType::POOL_HANDLE, handle);
                        cause::emit_operation_error(w, e.cause_code(), &[]);
                    });
                });
            }
        }
    }

    /// Drops the PEs registered over `conn` held by this shard.
    fn connection_lost(&mut self, conn: ConnId) {
        let mut lost = 0u64;
        let keys: Vec<PeKey> = self.hs.connection_pes(conn).collect();
        for key in keys {
            self.keep_alive.disarm(key);
        }
        self.hs.remove_connection(conn, |_, _| lost += 1);
        self.stats.connection_losses += lost;
        self.logged.remove(&conn);
    }
}

/// A policy of type `t` with all values zero (an empty pool's policy in a response).
fn zero_policy(t: PolicyType) -> Policy {
    let n = t.value_count().unwrap_or(0);
    Policy::from_values(t, &[0, 0][..n.min(2)]).unwrap_or(Policy::RoundRobin)
}

/// The owned transport with unspecified addresses (0.0.0.0, ::) replaced by the address the
/// registration came from (WIRE.md section 3.2: PEs behind NAT or in containers).
fn with_peer_address(t: &Transport<'_>, peer: IpAddr) -> TransportRepr {
    let mut repr = t.to_repr();
    for a in repr.addresses.iter_mut() {
        if a.is_unspecified() {
            *a = peer;
        }
    }
    repr
}

impl Service for Registrar {
    fn on_accept(&mut self, conn: ConnId, peer: SocketAddr, _now: Time, _out: &mut impl Outbox) {
        self.conns.insert(conn, Conn { peer, shards: 0, order: Sequencer::default() });
    }

    fn on_data(&mut self, conn: ConnId, data: &[u8], now: Time, out: &mut impl Outbox) -> usize {
        let peer = self.conns.get_mut(conn).map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.peer);
        let mut used = 0;
        loop {
            match self.framer.frame(&data[used..]) {
                Ok(Frame::Complete(msg)) => {
                    self.dispatch(conn, peer, msg, now, out);
                    used += msg.len();
                }
                Ok(Frame::Incomplete { .. }) => return used,
                Err(e) => {
                    // The stream cannot be framed any more: nothing more is sent; close.
                    self.stats.framing_errors += 1;
                    warn!(%peer, "closing connection: {e}");
                    out.close(conn);
                    return data.len();
                }
            }
        }
    }

    fn on_close(&mut self, conn: ConnId, _now: Time, out: &mut impl Outbox) {
        let Some(c) = self.conns.remove(conn) else { return };
        self.connection_lost(conn);
        for s in (0..self.shards).filter(|&s| s != self.shard) {
            if s >= 64 || c.shards & (1 << s) != 0 {
                out.post(s, conn, &post::CLOSED_POST);
            }
        }
    }

    fn on_post(&mut self, _from: ShardId, conn: ConnId, bytes: &[u8], now: Time, out: &mut impl Outbox) {
        match post::decode(bytes) {
            Some(Post::Request { seq, peer, message }) => {
                // Answer through the connection's shard, which sends answers in request order.
                let mut answer = std::mem::take(&mut self.answer);
                post::reply_header(&mut answer, seq);
                self.handle(conn, peer, message, now, &mut Capture { conn, buf: &mut answer, inner: out });
                out.post(conn.shard, conn, &answer);
                self.answer = answer;
            }
            Some(Post::Reply { seq, bytes }) => self.answered(conn, seq, bytes, out),
            Some(Post::Closed) => self.connection_lost(conn),
            None => warn!("undecodable post from another shard ({} bytes)", bytes.len()),
        }
    }

    fn on_timer(&mut self, now: Time, out: &mut impl Outbox) {
        let mut expired = 0;
        self.hs.expire(now, |handle, pe| {
            expired += 1;
            debug!(pe_id = format_args!("{:#010x}", pe.id), pool = %String::from_utf8_lossy(handle), "registration life ended");
        });
        self.stats.expired += expired;
        while let Some(due) = self.keep_alive.poll(now) {
            match due {
                Due::Probe(key) => match self.hs.pe(key) {
                    Some(pe) => {
                        if let (Some(c), Some(handle)) = (pe.conn, self.hs.pe_handle(key)) {
                            let (id, pe_id) = (self.id, pe.id);
                            out.send(c, &mut |buf| {
                                let _ = asap::emit_keep_alive(&mut Writer::new(buf), true, id, handle, pe_id);
                            });
                            self.stats.keep_alives_sent += 1;
                        }
                    }
                    None => self.keep_alive.disarm(key),
                },
                Due::Expired(key) => {
                    if let Some(pe) = self.hs.remove(key) {
                        self.stats.keep_alive_failures += 1;
                        info!(pe_id = format_args!("{:#010x}", pe.id), "PE did not answer its keep-alive; removed");
                    }
                }
            }
        }
    }

    fn next_timer(&self) -> Option<Time> {
        match (self.hs.next_expiry(), self.keep_alive.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
