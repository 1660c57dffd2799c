//! The registrar's ASAP procedures (WIRE.md section 6.1) over one shard's part of the
//! handlespace: registration, deregistration, handle resolution, keep-alive supervision,
//! unreachable reports and lifetimes. Messages and time in; answers, keep-alive probes and PE
//! changes out. Which shard handles a message, and in what order answers leave, is the
//! router's business (`crate::registrar`); this module sees one message at a time.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::authorize::Authorizer;
use super::budget::Budgets;
use super::change::{Change, ChangeSink, PeChange, Reason};
use super::keepalive::{Due, KeepAlive};
use super::loglimit::LogLimit;
use super::reply;
use super::reports::ReportLimiter;
use crate::config::{Limits, Security, Timers};
use crate::handlespace::{
    Handlespace, HandlespaceConfig, PeKey, PoolElement, RegisterError, Registration, Unreachable,
};
use crate::service::{ConnId, Outbox, ShardId};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType};
use crate::wire::{
    cause, policy, pool_element, CauseCode, Param, ParamType, Params, Policy, PolicyParam, PolicyType, Transport,
    TransportProtocol, TransportRepr, Writer,
};

/// Timer items (expiries, keep-alive probes and failures) handled per timer call, so a bulk
/// expiry is spread over loop iterations instead of stalling the shard.
const TIMER_BUDGET: usize = 512;
/// Most connections remembered for "logged once" before the memory is reset.
const MAX_LOGGED: usize = 4096;

/// Counters of one shard (read by status and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registrations accepted (new and re-registrations).
    pub registrations: u64,
    /// Of those, re-registrations of a PE already registered.
    pub reregistrations: u64,
    /// Registrations rejected.
    pub registrations_rejected: u64,
    /// Registrations refused for a resource limit (cause 0x6).
    pub resource_refusals: u64,
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
    /// Connections closed because they kept asking after resource refusals.
    pub refusal_closes: u64,
    /// PE id collisions between registrars settled here (WIRE.md 7.5).
    pub collisions: u64,
    /// PEs whose home changed by a takeover, here.
    pub taken_over: u64,
    /// Registrations refused because the connection may not register those addresses (cause
    /// 0xA).
    pub security_refusals: u64,
    /// Error causes sent in answers (an Operation Error or an ASAP Error), indexed by cause
    /// code (codes above 0xA count at 0, unspecified).
    pub errors: [u64; 11],
}

impl Stats {
    /// Counts an error cause sent in an answer.
    pub fn error(&mut self, cause: CauseCode) {
        let i = usize::from(cause.0);
        self.errors[if i < self.errors.len() { i } else { 0 }] += 1;
    }
}

/// One ASAP message for this shard, with where it came from.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The client connection (on any shard).
    pub conn: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The whole message.
    pub message: &'a [u8],
    /// How many more PEs this connection may register, registrar-wide (the router knows its
    /// PEs on every shard and its registrations in flight).
    pub room: u32,
}

/// What handling a request came to, besides its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// A registration refused for a resource limit (cause 0x6): WIRE.md section 9 closes a
    /// connection that goes on after those.
    pub refused: bool,
}

/// The registrar's settings the procedures need.
#[derive(Clone, Debug)]
pub struct ProceduresConfig {
    /// This registrar's server id (home registrar id of the PEs it owns).
    pub server_id: u32,
    /// Resource limits.
    pub limits: Limits,
    /// Protocol timers.
    pub timers: Timers,
    /// Seed of the random selection policies (each shard mixes in its index).
    pub seed: u64,
    /// Registrar-wide PE and pool budgets, shared by every shard.
    pub budgets: Arc<Budgets>,
    /// Who may register which addresses.
    pub security: Security,
}

/// The ASAP procedures of one registrar shard.
pub struct Procedures {
    pub(super) id: u32,
    pub(super) limits: Limits,
    pub(super) hs: Handlespace,
    pub(super) keep_alive: KeepAlive,
    reports: ReportLimiter,
    pub(super) budgets: Arc<Budgets>,
    authorizer: Authorizer,
    /// Budget units this shard holds (equal to its own PEs', peers' PEs' and pools' counts
    /// between calls).
    pes_held: usize,
    peer_pes_held: usize,
    pools_held: usize,
    /// Kinds of rejection already logged per connection (so each is logged once per peer).
    logged: HashMap<ConnId, u32, ahash::RandomState>,
    pub(super) pe_log: LogLimit,
    /// Limits the warn lines of [`Procedures::note`] across connections.
    reject_log: LogLimit,
    selected: Vec<PeKey>,
    pub(super) stats: Stats,
    /// Connections to taken-over PEs' ASAP transports, by address and by connection.
    dials: HashMap<SocketAddr, Dial, ahash::RandomState>,
    dialled: HashMap<ConnId, SocketAddr, ahash::RandomState>,
    /// Connections of PEs that lost a collision, for the router to close.
    pub(super) to_close: Vec<ConnId>,
}

/// A connection this shard dialled to reach taken-over PEs.
#[derive(Debug)]
struct Dial {
    conn: ConnId,
    up: bool,
    /// PEs to probe once it is up.
    waiting: Vec<PeKey>,
}

/// The address to dial for an ASAP transport (TCP only: that is what this registrar speaks).
fn dialable(t: &TransportRepr) -> Option<SocketAddr> {
    (t.protocol == TransportProtocol::Tcp && t.port != 0)
        .then(|| t.addresses.first().map(|ip| SocketAddr::new(*ip, t.port)))?
}

impl Procedures {
    /// The procedures of shard `shard`, starting at `now`.
    pub fn new(config: &ProceduresConfig, shard: ShardId, now: Time) -> Self {
        let l = &config.limits;
        let hs = Handlespace::new(
            HandlespaceConfig {
                // Pools and PEs are limited registrar-wide by the budgets (own and peers' PEs
                // apart, both held here); a connection's PEs by the router's `room`.
                max_pools: l.max_pools,
                max_pes_per_pool: l.max_pes_per_pool,
                max_pes: l.max_pes.saturating_add(l.max_peer_pes),
                max_pes_per_connection: usize::MAX,
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
            limits: l.clone(),
            hs,
            keep_alive: KeepAlive::new(now, config.timers.keep_alive_interval, config.timers.keep_alive_timeout),
            reports: ReportLimiter::new(config.timers.unreachable_report_interval),
            budgets: Arc::clone(&config.budgets),
            authorizer: Authorizer::new(&config.security),
            pes_held: 0,
            peer_pes_held: 0,
            pools_held: 0,
            logged: HashMap::default(),
            pe_log: LogLimit::default(),
            reject_log: LogLimit::new("rejected messages"),
            selected: Vec::with_capacity(l.max_items as usize),
            stats: Stats::default(),
            dials: HashMap::default(),
            dialled: HashMap::default(),
            to_close: Vec::new(),
        }
    }

    /// Sizes this shard's handlespace for `pes` more PEs ([`Handlespace::reserve`]).
    pub fn reserve(&mut self, pes: usize) {
        self.hs.reserve(pes);
    }

    /// This shard's part of the handlespace.
    pub fn handlespace(&self) -> &Handlespace {
        &self.hs
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The registrar-wide budgets (counts of own PEs, peers' PEs and pools).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// This registrar's server id.
    pub fn server_id(&self) -> u32 {
        self.id
    }

    /// This shard's counters, for the router's own events.
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// PEs under keep-alive supervision on this shard.
    pub fn supervised_pes(&self) -> usize {
        self.keep_alive.len()
    }

    /// Handles one message for a pool of this shard (or about no pool), writing its answer (if
    /// the protocol has one) to `answer`.
    pub fn handle(
        &mut self,
        req: &Request<'_>,
        now: Time,
        answer: &mut Vec<u8>,
        sink: &mut impl ChangeSink,
    ) -> Handled {
        let msg = req.message;
        if self.try_resolve(msg, answer) {
            return Handled::default();
        }
        self.handle_parsed(req, now, answer, sink)
    }

    /// The hot path: answers `msg` if it is a Handle Resolution as every client sends it, and
    /// says whether it was. Small enough to inline into the caller, so that a resolution does
    /// not pay for the set-up of everything else [`Procedures::handle`] can do.
    #[inline]
    pub fn try_resolve(&mut self, msg: &[u8], answer: &mut Vec<u8>) -> bool {
        match asap::canonical_handle_resolution(msg) {
            Some((pool_handle, items)) if pool_handle.len() <= self.limits.max_pool_handle => {
                self.resolve(pool_handle, items, answer);
                true
            }
            _ => false,
        }
    }

    /// [`Procedures::handle`] past the hot path: the message parsed in full.
    #[inline(never)]
    fn handle_parsed(
        &mut self,
        req: &Request<'_>,
        now: Time,
        answer: &mut Vec<u8>,
        sink: &mut impl ChangeSink,
    ) -> Handled {
        let msg = req.message;
        let m = match asap::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                if let Some(cause) = e.cause() {
                    self.stats.error(cause);
                }
                let peer = req.peer;
                self.note(req.conn, 1 + u32::from(e.cause().map_or(15, |c| c.0.min(14))), now, || {
                    format!("{peer}: {e}")
                });
                reply::to_error(answer, msg, &e, self.limits.max_message_size);
                return Handled::default();
            }
        };
        let mut handled = Handled::default();
        match *m.body() {
            Body::Registration { pool_handle, ref pool_element } => {
                handled.refused = self.register(req, pool_handle, pool_element, now, answer, sink);
            }
            Body::Deregistration { pool_handle, .. }
            | Body::HandleResolution { pool_handle, .. }
            | Body::EndpointKeepAliveAck { pool_handle, .. }
            | Body::EndpointUnreachable { pool_handle, .. }
                if pool_handle.len() > self.limits.max_pool_handle =>
            {
                self.refuse_long_handle(msg, pool_handle, answer);
            }
            Body::Deregistration { pool_handle, pe_id } => {
                self.deregister(req.conn, pool_handle, pe_id, now, answer, sink)
            }
            Body::HandleResolution { pool_handle, items } => self.resolve(pool_handle, items, answer),
            Body::EndpointKeepAliveAck { pool_handle, pe_id } => {
                if let Some(key) = self.hs.lookup(pool_handle, pe_id) {
                    if self.hs.pe(key).is_some_and(|pe| pe.conn() == Some(req.conn)) {
                        self.keep_alive.acked(key, now);
                    }
                }
            }
            Body::EndpointUnreachable { pool_handle, pe_id } => {
                self.unreachable(req.peer.ip(), pool_handle, pe_id, now, sink)
            }
            _ => {
                debug!(peer = %req.peer, kind = ?MessageType::from_u8(msg[0]), "ASAP message not for a registrar; ignored")
            }
        }
        if m.has_reports() {
            let mut params = Vec::new();
            m.for_each_report(|p| params.push(p));
            self.stats.errors[usize::from(CauseCode::UNRECOGNIZED_PARAMETER.0)] += params.len() as u64;
            reply::unrecognized_params(answer, params, self.limits.max_message_size);
        }
        self.settle_budgets();
        handled
    }

    /// Logs a rejection at warn level the first time per connection and kind, else at debug;
    /// at most a few warn lines a second per shard in all, since a client that opens many
    /// connections would otherwise get one line per connection (the live fuzz wrote 50 MB of
    /// log per million messages).
    fn note(&mut self, conn: ConnId, kind: u32, now: Time, what: impl FnOnce() -> String) {
        if self.logged.len() >= MAX_LOGGED {
            self.logged.clear();
        }
        let bits = self.logged.entry(conn).or_default();
        let bit = 1u32 << (kind % 32);
        if *bits & bit == 0 && self.reject_log.allow(now) {
            *bits |= bit;
            warn!("rejected (further ones of this kind from this peer at debug level): {}", what());
        } else {
            debug!("rejected: {}", what());
        }
    }

    /// See [`changed`].
    fn changed(&mut self, key: PeKey, change: PeChange<'_>, now: Time, sink: &mut impl ChangeSink) {
        changed(&mut self.keep_alive, self.id, key, change, now, sink);
    }

    /// Brings the registrar-wide budgets in step with this shard's PE and pool counts: units
    /// of what was created are taken (checked for in [`Procedures::admit`]), units of what is
    /// gone are given back.
    pub(super) fn settle_budgets(&mut self) {
        let own = self.hs.owner_pe_count(self.id);
        let (peers, pools) = (self.hs.pe_count() - own, self.hs.pool_count());
        let b = &self.budgets;
        for (budget, held, now) in
            [(&b.pes, self.pes_held, own), (&b.peer_pes, self.peer_pes_held, peers), (&b.pools, self.pools_held, pools)]
        {
            if now > held {
                budget.take(now - held);
            } else {
                budget.give_back(held - now);
            }
        }
        self.pes_held = own;
        self.peer_pes_held = peers;
        self.pools_held = pools;
    }

    /// Whether a registration stays within the registrar-wide limits on pools and PEs and the
    /// connection's limit on PEs on every shard (`room`, counted by the router). Far from every
    /// limit (the common case) this costs no lookup: what the registration creates is counted
    /// afterwards, and the slack covers what other shards create meanwhile. Near a limit, the
    /// PE and pool it would create are reserved first; returns which were.
    fn admit(&self, req: &Request<'_>, handle: &[u8], pe_id: u32) -> Result<(bool, bool), RegisterError> {
        /// More than the number of shards: what they can create between a check and its count.
        const SLACK: usize = 4096;
        let l = &self.limits;
        let b = &self.budgets;
        let far = |used: usize, max: usize| used.saturating_add(SLACK) < max;
        if req.room > 0 && far(b.pes.used(), l.max_pes) && far(b.pools.used(), l.max_pools) {
            return Ok((false, false));
        }
        let pool = self.hs.pool_by_handle(handle);
        let existing = pool.and_then(|_| self.hs.lookup(handle, pe_id));
        let adds_to_conn = existing.is_none_or(|k| self.hs.pe(k).is_some_and(|p| p.conn() != Some(req.conn)));
        if adds_to_conn && req.room == 0 {
            return Err(RegisterError::TooManyPesOnConnection);
        }
        let pool_taken = pool.is_none();
        if pool_taken && !b.pools.try_take(l.max_pools) {
            return Err(RegisterError::TooManyPools);
        }
        let pe_taken = existing.is_none();
        if pe_taken && !b.pes.try_take(l.max_pes) {
            if pool_taken {
                b.pools.give_back(1);
            }
            return Err(RegisterError::TooManyPes);
        }
        Ok((pe_taken, pool_taken))
    }

    fn register(
        &mut self,
        req: &Request<'_>,
        handle: &[u8],
        pe: &crate::wire::PoolElement<'_>,
        now: Time,
        answer: &mut Vec<u8>,
        sink: &mut impl ChangeSink,
    ) -> bool {
        let (conn, peer, msg) = (req.conn, req.peer, req.message);
        let pe_id = pe.pe_id();
        let user = pe.user_transport();
        let quote = |p: Param<'_>| -> (u32, u32) { (p.range().start as u32, p.range().end as u32) };
        let handle_param = || handle_param(msg).map(quote);
        // WIRE.md 6.1 step 1: values the codec cannot judge.
        let invalid = if handle.is_empty() || handle.len() > self.limits.max_pool_handle {
            Some((CauseCode::INVALID_VALUES, handle_param()))
        } else if pe_id == 0 {
            Some((CauseCode::INVALID_VALUES, Some(quote(pe.param()))))
        } else if user.port() == 0 || user.addresses().count() > self.limits.max_addresses {
            Some((CauseCode::INVALID_VALUES, Some(quote(user.param()))))
        } else if let PolicyParam::Unknown { .. } = pe.policy() {
            Some((CauseCode::INVALID_VALUES, Some(quote(pe.policy_param()))))
        } else {
            pe.asap_transport().filter(|t| t.port() == 0).map(|t| (CauseCode::INVALID_VALUES, Some(quote(t.param()))))
        };
        if let Some((cause, info)) = invalid {
            self.registration_rejected(peer, msg, handle, pe_id, cause, info, answer);
            return false;
        }
        let PolicyParam::Known(policy) = pe.policy() else { return false };
        let user_transport = with_peer_address(&user, peer.ip());
        let named_asap = pe.asap_transport().map(|t| with_peer_address(&t, peer.ip()));
        if !self.authorizer.may_register(peer.ip(), &user_transport, named_asap.as_ref()) {
            self.stats.security_refusals += 1;
            self.note(conn, 16 + u32::from(CauseCode::REJECTED_SECURITY.0), now, || {
                format!("{peer}: registration of PE {pe_id:#010x}: addresses not allowed for this connection")
            });
            self.registration_rejected(peer, msg, handle, pe_id, CauseCode::REJECTED_SECURITY, None, answer);
            return false;
        }
        let result = match self.admit(req, handle, pe_id) {
            Err(e) => Err(e),
            Ok((pe_taken, pool_taken)) => {
                // Units reserved near a limit are this shard's now; settling below gives back
                // what the registration did not create.
                self.pes_held += usize::from(pe_taken);
                self.pools_held += usize::from(pool_taken);
                // WIRE.md 3.2: every PE keeps an ASAP transport (ENRP needs one); the
                // registering connection's remote address when the PE gave none.
                let asap_transport =
                    named_asap.unwrap_or_else(|| TransportRepr::new(TransportProtocol::Tcp, peer.ip(), peer.port()));
                let reg = Registration {
                    handle,
                    pe_id,
                    home: self.id,
                    user_transport: &user_transport,
                    asap_transport: Some(&asap_transport),
                    policy,
                    registration_life: pe.registration_life(),
                    conn: Some(conn),
                };
                self.hs.register(reg, now)
            }
        };
        // What the registration created is counted against the budgets when `handle` settles.
        match result {
            Ok(r) => {
                self.stats.registrations += 1;
                self.stats.reregistrations += u64::from(!r.added);
                if r.added && self.pe_log.allow(now) {
                    debug!(%peer, pe_id = format_args!("{pe_id:#010x}"), pool = %String::from_utf8_lossy(handle), "registered");
                }
                if let Some(stored) = self.hs.pe(r.pe) {
                    let moved_from = r.previous_conn.flatten();
                    let (change, reason) = match (r.added, moved_from) {
                        (true, _) => (Change::Added, Reason::Registration),
                        (false, Some(_)) => (Change::Updated, Reason::Registration),
                        (false, None) => (Change::Updated, Reason::Reregistration),
                    };
                    let home_before = if r.added { 0 } else { r.previous_owner.unwrap_or(stored.home) };
                    let event = PeChange { pool_handle: handle, pe: stored, change, reason, moved_from, home_before };
                    changed(&mut self.keep_alive, self.id, r.pe, event, now, sink);
                }
                let mut w = Writer::new(answer);
                let _ =
                    asap::emit_handle_and_id(&mut w, MessageType::RegistrationResponse, 0, handle, Some(pe_id), None);
                false
            }
            Err(e) => {
                let cause = e.cause_code();
                let info = match cause {
                    CauseCode::INCONSISTENT_POOLING_POLICY => Some(quote(pe.policy_param())),
                    CauseCode::INCONSISTENT_TRANSPORT_TYPE => Some(quote(user.param())),
                    CauseCode::INVALID_VALUES => Some(quote(pe.param())),
                    _ => None,
                };
                self.note(conn, 16 + u32::from(cause.0), now, || {
                    format!("{peer}: registration of PE {pe_id:#010x}: {e}")
                });
                self.registration_rejected(peer, msg, handle, pe_id, cause, info, answer);
                let refused = cause == CauseCode::LACK_OF_RESOURCES;
                self.stats.resource_refusals += u64::from(refused);
                refused
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn registration_rejected(
        &mut self,
        peer: SocketAddr,
        msg: &[u8],
        handle: &[u8],
        pe_id: u32,
        cause: CauseCode,
        info: Option<(u32, u32)>,
        answer: &mut Vec<u8>,
    ) {
        self.stats.registrations_rejected += 1;
        self.stats.error(cause);
        debug!(%peer, pe_id = format_args!("{pe_id:#010x}"), cause = cause.0, "registration rejected");
        let echoed = self.echoed(handle);
        let info = info.and_then(|(s, e)| msg.get(s as usize..e as usize)).unwrap_or(&[]);
        // An empty pool handle is quoted as the empty TLV itself.
        let empty_handle = [0u8, 9, 0, 4];
        let info = if cause == CauseCode::INVALID_VALUES && info.is_empty() { &empty_handle[..] } else { info };
        let info = self.fitting_quote(echoed, info);
        let mut w = Writer::with_limit(answer, self.limits.max_message_size);
        let _ = asap::emit_handle_and_id(
            &mut w,
            MessageType::RegistrationResponse,
            asap::FLAG_REJECT,
            echoed,
            Some(pe_id),
            Some((cause, &info)),
        );
    }

    /// The pool handle an answer echoes: at most the maximum handle length, so that an answer
    /// to a message with an over-long handle still fits the maximum message size.
    fn echoed<'h>(&self, handle: &'h [u8]) -> &'h [u8] {
        &handle[..handle.len().min(self.limits.max_pool_handle)]
    }

    /// `quote` if an answer echoing `echoed` and quoting it fits the maximum message size;
    /// otherwise, for a Pool Handle parameter, that parameter cut to the echoed handle.
    fn fitting_quote(&self, echoed: &[u8], quote: &[u8]) -> Vec<u8> {
        // Header, echoed handle, PE id, Operation Error and cause headers.
        let overhead = 4 + 4 + echoed.len().next_multiple_of(4) + 8 + 4 + 4;
        if overhead + quote.len().next_multiple_of(4) <= self.limits.max_message_size {
            return quote.to_vec();
        }
        let mut cut = Vec::with_capacity(4 + echoed.len());
        Writer::new(&mut cut).tlv_bytes(ParamType::POOL_HANDLE, echoed);
        cut
    }

    /// Rejects a message whose pool handle exceeds the limit with cause 0x3 quoting it (WIRE.md
    /// 6.1 step 1 and section 9), in the message's own response where it has one.
    fn refuse_long_handle(&mut self, msg: &[u8], handle: &[u8], answer: &mut Vec<u8>) {
        self.stats.bad_messages += 1;
        self.stats.error(CauseCode::INVALID_VALUES);
        let echoed = self.echoed(handle);
        let quote = handle_param(msg).map_or(&[][..], |p| p.as_bytes());
        let info = self.fitting_quote(echoed, quote);
        let mut w = Writer::with_limit(answer, self.limits.max_message_size);
        let error = Some((CauseCode::INVALID_VALUES, &info[..]));
        let _ = match MessageType::from_u8(msg[0]) {
            Some(MessageType::Deregistration) => {
                let pe_id = asap::salvage_ids(msg).1.unwrap_or(0);
                asap::emit_handle_and_id(&mut w, MessageType::DeregistrationResponse, 0, echoed, Some(pe_id), error)
            }
            Some(MessageType::HandleResolution) => {
                asap::emit_handle_and_id(&mut w, MessageType::HandleResolutionResponse, 0, echoed, None, error)
            }
            _ => asap::emit_error(&mut w, CauseCode::INVALID_VALUES, &info),
        };
    }

    fn deregister(
        &mut self,
        conn: ConnId,
        handle: &[u8],
        pe_id: u32,
        now: Time,
        answer: &mut Vec<u8>,
        sink: &mut impl ChangeSink,
    ) {
        let key = self.hs.lookup(handle, pe_id);
        let error = match self.hs.deregister(handle, pe_id, Some(conn)) {
            Ok(Some(pe)) => {
                self.stats.deregistrations += 1;
                if let Some(key) = key {
                    let event = removal(handle, &pe, Reason::Deregistration);
                    self.changed(key, event, now, sink);
                }
                None
            }
            Ok(None) => None,
            Err(e) => Some(e.cause_code()),
        };
        if let Some(cause) = error {
            self.stats.error(cause);
        }
        let mut w = Writer::new(answer);
        let err = error.map(|c| (c, &[][..]));
        let _ = asap::emit_handle_and_id(&mut w, MessageType::DeregistrationResponse, 0, handle, Some(pe_id), err);
    }

    fn unreachable(&mut self, reporter: IpAddr, handle: &[u8], pe_id: u32, now: Time, sink: &mut impl ChangeSink) {
        let key = self.hs.lookup(handle, pe_id);
        if key.is_some_and(|k| !self.reports.allow(k, reporter, now)) {
            return;
        }
        if let Ok(Unreachable::Removed(pe)) = self.hs.report_unreachable(handle, pe_id) {
            self.stats.unreachable_removed += 1;
            if let Some(key) = key {
                self.changed(key, removal(handle, &pe, Reason::Unreachable), now, sink);
            }
            if self.pe_log.allow(now) {
                info!(pe_id = format_args!("{:#010x}", pe.id), pool = %String::from_utf8_lossy(handle), "PE removed after unreachable reports");
            }
        }
    }

    /// Handle Resolution: up to N PEs by the pool's policy (WIRE.md section 6.1).
    fn resolve(&mut self, handle: &[u8], items: Option<u32>, answer: &mut Vec<u8>) {
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
                // The answer reads every selected PE (their slots missed the cache in turn).
                hs.prefetch_pes(&self.selected);
                // The first PE's policy parameter as stored; the pool's type with zero values
                // only when none was selected (the pool lookup is not needed on the usual path).
                let first = self.selected.first().and_then(|k| hs.pe(*k)).map(|pe| pe.policy_param());
                let zero = match first {
                    Some(_) => None,
                    None => Some(zero_policy(hs.pool(pool).map_or(PolicyType::ROUND_ROBIN, |p| p.policy_type()))),
                };
                let policy_len = first.map_or_else(|| zero.as_ref().map_or(0, Policy::encoded_len), <[u8]>::len);
                let mut budget = max.saturating_sub(4 + 4 + handle.len().next_multiple_of(4) + policy_len);
                let mut w = Writer::with_limit(answer, max);
                let _ = w.message(MessageType::HandleResolutionResponse as u8, 0, |w| {
                    w.tlv_bytes(ParamType::POOL_HANDLE, handle);
                    match (first, &zero) {
                        (Some(bytes), _) => w.bytes(bytes),
                        (None, Some(policy)) => policy::emit(w, policy),
                        (None, None) => {}
                    }
                    for pe in self.selected.iter().filter_map(|k| hs.pe(*k)) {
                        let body = pe.wire_body();
                        if 16 + body.len() > budget {
                            break;
                        }
                        budget -= 16 + body.len();
                        pool_element::emit_encoded(w, pe.id, pe.home, pe.registration_life, body, None);
                    }
                });
            }
            Err(e) => {
                self.stats.unknown_pool += 1;
                self.stats.error(e.cause_code());
                let mut w = Writer::new(answer);
                let _ = w.message(MessageType::HandleResolutionResponse as u8, 0, |w| {
                    w.tlv_bytes(ParamType::POOL_HANDLE, handle);
                    cause::emit_operation_error(w, e.cause_code(), &[]);
                });
            }
        }
    }

    /// Connection `conn` closed: drops the PEs registered over it that this shard holds.
    pub fn connection_lost(&mut self, conn: ConnId, now: Time, sink: &mut impl ChangeSink) {
        if let Some(addr) = self.dialled.remove(&conn) {
            self.dials.remove(&addr);
        }
        let keys: Vec<PeKey> = self.hs.connection_pes(conn).collect();
        for key in keys {
            let Some(handle) = self.hs.pe_handle(key).map(<[u8]>::to_vec) else { continue };
            if let Some(pe) = self.hs.remove(key) {
                self.stats.connection_losses += 1;
                self.changed(key, removal(&handle, &pe, Reason::ConnectionLoss), now, sink);
            }
        }
        self.logged.remove(&conn);
        self.settle_budgets();
    }

    /// Timer work due at `now`, at most `TIMER_BUDGET` items per call: registration lives
    /// that ended, keep-alive probes to send (wherever the PE's connection lives), PEs that
    /// did not answer theirs.
    pub fn on_timer<M>(&mut self, now: Time, out: &mut impl Outbox<M>, sink: &mut impl ChangeSink) {
        let mut budget = TIMER_BUDGET;
        let mut expired = Vec::new();
        budget -= self.hs.expire(now, budget, |key, handle, pe| expired.push((key, handle.to_vec(), pe)));
        for (key, handle, pe) in &expired {
            self.stats.expired += 1;
            if self.pe_log.allow(now) {
                debug!(pe_id = format_args!("{:#010x}", pe.id), pool = %String::from_utf8_lossy(handle), "registration life ended");
            }
            self.changed(*key, removal(handle, pe, Reason::Expiry), now, sink);
        }
        while budget > 0 {
            let Some(due) = self.keep_alive.poll(now) else { break };
            budget -= 1;
            match due {
                Due::Probe(key) => {
                    let (Some(pe), Some(handle)) = (self.hs.pe(key), self.hs.pe_handle(key)) else {
                        self.keep_alive.disarm(key);
                        continue;
                    };
                    if let Some(c) = pe.conn() {
                        let (id, pe_id) = (self.id, pe.id);
                        out.send(c, &mut |buf| {
                            let _ = asap::emit_keep_alive(&mut Writer::new(buf), true, id, handle, pe_id);
                        });
                        self.stats.keep_alives_sent += 1;
                    } else if let Some(addr) = pe.asap_transport().as_ref().and_then(dialable) {
                        // Taken over: reach it over a connection to its ASAP transport (WIRE.md
                        // 7.6). One that cannot be reached fails its keep-alive.
                        self.dial(addr, key, out);
                    }
                }
                Due::Expired(key) => {
                    let Some(handle) = self.hs.pe_handle(key).map(<[u8]>::to_vec) else { continue };
                    if let Some(pe) = self.hs.remove(key) {
                        self.stats.keep_alive_failures += 1;
                        if self.pe_log.allow(now) {
                            info!(pe_id = format_args!("{:#010x}", pe.id), "PE did not answer its keep-alive; removed");
                        }
                        self.changed(key, removal(&handle, &pe, Reason::KeepAliveFailure), now, sink);
                    }
                }
            }
        }
        self.settle_budgets();
    }

    /// Sends PE `key` a keep-alive over a connection to `addr`, dialling one if none is up.
    fn dial<M>(&mut self, addr: SocketAddr, key: PeKey, out: &mut impl Outbox<M>) {
        match self.dials.get_mut(&addr) {
            Some(Dial { conn, up: true, .. }) => {
                let conn = *conn;
                self.attach(conn, key, out);
            }
            Some(d) => d.waiting.push(key),
            None => {
                if let Some(conn) = out.connect(addr, super::ASAP) {
                    self.dials.insert(addr, Dial { conn, up: false, waiting: vec![key] });
                    self.dialled.insert(conn, addr);
                }
            }
        }
    }

    /// PE `key` is reached over `conn` from now on: it goes with that connection, and gets a
    /// keep-alive with the H flag over it, so that it adopts this registrar.
    fn attach<M>(&mut self, conn: ConnId, key: PeKey, out: &mut impl Outbox<M>) {
        if self.hs.pe(key).is_none_or(|pe| pe.conn().is_some()) {
            return;
        }
        self.hs.set_conn(key, Some(conn));
        let (Some(pe), Some(handle)) = (self.hs.pe(key), self.hs.pe_handle(key)) else { return };
        let (id, pe_id) = (self.id, pe.id);
        out.send(conn, &mut |buf| {
            let _ = asap::emit_keep_alive(&mut Writer::new(buf), true, id, handle, pe_id);
        });
        self.stats.keep_alives_sent += 1;
    }

    /// A connection dialled to reach taken-over PEs connected (`ok`) or failed.
    pub fn on_dialled<M>(&mut self, conn: ConnId, ok: bool, out: &mut impl Outbox<M>) {
        let Some(addr) = self.dialled.get(&conn).copied() else { return };
        if !ok {
            self.dialled.remove(&conn);
            self.dials.remove(&addr);
            return;
        }
        let Some(d) = self.dials.get_mut(&addr) else { return };
        d.up = true;
        for key in std::mem::take(&mut d.waiting) {
            self.attach(conn, key, out);
        }
    }

    /// The earliest time [`Procedures::on_timer`] has work.
    pub fn next_timer(&self) -> Option<Time> {
        match (self.hs.next_expiry(), self.keep_alive.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Tells the sink about a change, after keeping supervision in step with it: this registrar
/// supervises exactly the PEs it is home of, whichever way they came (registration today,
/// takeover with ENRP), and none once they are gone or owned elsewhere.
pub(crate) fn changed(
    keep_alive: &mut KeepAlive,
    id: u32,
    key: PeKey,
    change: PeChange<'_>,
    now: Time,
    sink: &mut impl ChangeSink,
) {
    match change.change {
        Change::Updated if change.pe.home == id && change.reason == Reason::Takeover => keep_alive.arm_now(key, now),
        Change::Added | Change::Updated if change.pe.home == id => keep_alive.arm(key, now),
        // Only PEs this registrar was home of are supervised (a peer's PE costs no lookup).
        Change::Updated | Change::Removed if change.home_before == id => keep_alive.disarm(key),
        Change::Added | Change::Updated | Change::Removed => debug_assert!(!keep_alive.contains(key)),
    }
    sink.changed(&change);
}

/// The change event of a removal.
pub(crate) fn removal<'a>(pool_handle: &'a [u8], pe: &'a PoolElement, reason: Reason) -> PeChange<'a> {
    PeChange { pool_handle, pe, change: Change::Removed, reason, moved_from: None, home_before: pe.home }
}

/// The Pool Handle parameter of a message, if it has one it can read.
fn handle_param(msg: &[u8]) -> Option<Param<'_>> {
    let at = if msg.first() == Some(&(MessageType::EndpointKeepAlive as u8)) { 8 } else { 4 };
    Params::new(msg.get(at..)?, at).find(|p| p.param_type() == ParamType::POOL_HANDLE)
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
