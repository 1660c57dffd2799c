//! A pool user's side of ASAP, sans-IO (RFC 5352 section 3; WIRE.md 6.2).
//!
//! [`PuCore`] resolves pool handles at one registrar at a time: an answer is awaited for T1;
//! the request is sent again up to MAX-REQUEST-RETRANSMIT times, then the registrar is given
//! up and another one hunted (T5), where the request is sent afresh. Requests for one pool
//! share one Handle Resolution.
//!
//! **The cache.** Every PE of an answer is kept for the stale-cache time after the answer
//! that last named it, in a [`Handlespace`] used as a client-side cache: selection from the
//! cache applies the pool's own policy ([`crate::handlespace`] implements all of RFC 5356),
//! so a PU that picks a PE per request spreads its requests as the registrar would, without
//! asking it each time. A pool whose policy this library does not know is cached as Round
//! Robin. Bounded by [`PuLimits`]. A stale-cache time of 0 turns the cache off: every
//! resolution then goes to the registrar.
//!
//! **Unreachable reports.** [`PuCore::report_unreachable`] drops the PE from the cache and
//! sends an Endpoint Unreachable (queued, bounded, while no registrar is connected).

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

use super::config::Timers;
use super::registrars::{LinkEvent, RegistrarLink, RegistrarTable};
use super::{ConnToken, Ctx};
use crate::handlespace::{Handlespace, HandlespaceConfig, Registration};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType, Resolution};
use crate::wire::{CauseCode, Policy, PolicyRepr, PoolElementRepr, Writer};

/// Most Endpoint Unreachable reports queued while no registrar is connected.
pub const MAX_QUEUED_REPORTS: usize = 64;
/// Most resolutions outstanding at once (distinct pools).
pub const MAX_PENDING: usize = 1024;

/// Bounds of a PU's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuLimits {
    /// Most pools cached.
    pub max_pools: usize,
    /// Most PEs cached per pool.
    pub max_pes_per_pool: usize,
    /// Most PEs cached in all.
    pub max_pes: usize,
}

impl Default for PuLimits {
    fn default() -> Self {
        Self { max_pools: 1024, max_pes_per_pool: 1024, max_pes: 65_536 }
    }
}

/// Settings of a [`PuCore`].
#[derive(Clone, Debug)]
pub struct PuConfig {
    /// Registrars to use, in order of preference.
    pub registrars: Vec<SocketAddr>,
    /// Timers and retry counts (the stale-cache time among them).
    pub timers: Timers,
    /// Source address of the registrar connection (e.g. another 127.0.0.x).
    pub local: Option<IpAddr>,
    /// PEs asked for per resolution (Handle Resolution Option); `None`: the registrar's
    /// default.
    pub items: Option<u32>,
    /// Cache bounds.
    pub limits: PuLimits,
    /// Seed of the random selection policies in the cache.
    pub seed: u64,
}

impl Default for PuConfig {
    fn default() -> Self {
        Self {
            registrars: Vec::new(),
            timers: Timers::default(),
            local: None,
            items: None,
            limits: PuLimits::default(),
            seed: fastrand::u64(..),
        }
    }
}

/// Why a resolution failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The registrar does not know the pool (cause 0x9).
    #[error("unknown pool handle")]
    UnknownPool,
    /// The registrar answered with another cause.
    #[error("the registrar answered cause {0:?}")]
    Cause(CauseCode),
    /// No registrar was found within T5.
    #[error("no registrar found within T5")]
    NoRegistrar,
    /// Too many resolutions outstanding.
    #[error("too many resolutions outstanding")]
    Busy,
}

/// What a [`PuCore`] tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PuEvent {
    /// A resolution is done: the PEs in the order to use them (the registrar's for a fresh
    /// answer, the pool policy's for one from the cache).
    Resolved {
        /// The pool.
        pool_handle: Vec<u8>,
        /// The pool's overall policy as the answer gave it (`None`: left out, which means
        /// Round Robin); for an answer from the cache, the cached PEs' policy.
        policy: Option<PolicyRepr>,
        /// The PEs (possibly none).
        pes: Vec<PoolElementRepr>,
        /// Whether it came from the cache without asking the registrar.
        from_cache: bool,
    },
    /// A resolution failed.
    Failed {
        /// The pool.
        pool_handle: Vec<u8>,
        /// Why.
        error: ResolveError,
    },
}

#[derive(Clone, Debug)]
struct Pending {
    pool_handle: Vec<u8>,
    /// When the answer is due; `None` while no registrar is connected.
    deadline: Option<Time>,
    /// Sends at the current registrar.
    sends: u32,
}

/// Counters of a [`PuCore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PuStats {
    /// Handle Resolutions sent to registrars (retransmissions included).
    pub resolutions_sent: u64,
    /// Resolutions answered from the cache.
    pub cache_hits: u64,
    /// Endpoint Unreachable reports sent.
    pub unreachable_sent: u64,
}

/// A pool user's resolutions, cache and registrar connection.
#[derive(Debug)]
pub struct PuCore {
    link: RegistrarLink,
    timers: Timers,
    items: Option<u32>,
    cache: Handlespace,
    pending: Vec<Pending>,
    reports: VecDeque<Vec<u8>>,
    events: VecDeque<PuEvent>,
    scratch: Vec<crate::handlespace::PeKey>,
    /// Counters.
    pub stats: PuStats,
}

impl PuCore {
    /// A pool user with an empty cache.
    pub fn new(config: PuConfig, now: Time) -> Self {
        let hs = HandlespaceConfig {
            max_pools: config.limits.max_pools,
            max_pes_per_pool: config.limits.max_pes_per_pool,
            max_pes: config.limits.max_pes,
            max_pes_per_connection: usize::MAX,
            max_handle_len: 65_535,
            max_registration_life: i32::MAX,
            max_increment: 1,
            max_bad_pe_reports: u16::MAX,
            seed: config.seed,
        };
        Self {
            link: RegistrarLink::new(RegistrarTable::new(config.registrars), config.timers.clone(), config.local),
            timers: config.timers,
            items: config.items,
            cache: Handlespace::new(hs, now),
            pending: Vec::new(),
            reports: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            stats: PuStats::default(),
        }
    }

    /// The registrar table (e.g. to feed Server Announces).
    pub fn table(&mut self) -> &mut RegistrarTable {
        &mut self.link.table
    }

    /// The registrar connected to, if any.
    pub fn registrar(&self) -> Option<SocketAddr> {
        self.link.registrar()
    }

    /// Whether `conn` is this core's registrar connection.
    pub fn owns(&self, conn: ConnToken) -> bool {
        self.link.owns(conn)
    }

    /// Resolves `pool_handle`: from the cache when it holds PEs of the pool and `fresh` is
    /// false (answered at once), else at a registrar. The outcome is a [`PuEvent`].
    pub fn resolve(&mut self, cx: &mut Ctx, pool_handle: &[u8], fresh: bool, now: Time) {
        self.cache.expire(now, usize::MAX, |_, _, _| {});
        if !fresh {
            let pes = self.select(pool_handle, usize::MAX);
            if !pes.is_empty() {
                self.stats.cache_hits += 1;
                let policy = pes.first().map(|p| p.policy.clone());
                let pool_handle = pool_handle.to_vec();
                self.events.push_back(PuEvent::Resolved { pool_handle, policy, pes, from_cache: true });
                return;
            }
        }
        if self.pending.iter().any(|p| p.pool_handle == pool_handle) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            let error = ResolveError::Busy;
            self.events.push_back(PuEvent::Failed { pool_handle: pool_handle.to_vec(), error });
            return;
        }
        self.pending.push(Pending { pool_handle: pool_handle.to_vec(), deadline: None, sends: 0 });
        let i = self.pending.len() - 1;
        if self.link.registrar().is_some() {
            self.send_request(cx, i, now);
        } else {
            self.link.start(cx, now);
        }
    }

    fn send_request(&mut self, cx: &mut Ctx, i: usize, now: Time) {
        let p = &mut self.pending[i];
        let mut bytes = Vec::with_capacity(16 + p.pool_handle.len());
        if asap::emit_handle_resolution(&mut Writer::new(&mut bytes), &p.pool_handle, self.items).is_err() {
            let p = self.pending.remove(i);
            let error = ResolveError::Cause(CauseCode::LACK_OF_RESOURCES);
            self.events.push_back(PuEvent::Failed { pool_handle: p.pool_handle, error });
            return;
        }
        p.sends += 1;
        p.deadline = Some(now.add_millis(self.timers.t1_request));
        self.stats.resolutions_sent += 1;
        self.link.send(cx, bytes);
    }

    /// Up to `n` PEs of `pool_handle` from the cache, chosen by the pool's policy (the first
    /// counts as selected: rotations move on).
    pub fn select(&mut self, pool_handle: &[u8], n: usize) -> Vec<PoolElementRepr> {
        let mut keys = core::mem::take(&mut self.scratch);
        let out = match self.cache.resolve(pool_handle, n, &mut keys) {
            Ok(_) => keys.iter().filter_map(|&k| self.cache.pe(k)).map(cached_repr).collect(),
            Err(_) => Vec::new(),
        };
        self.scratch = keys;
        out
    }

    /// Forgets a PE (without telling the registrar).
    pub fn forget(&mut self, pool_handle: &[u8], pe_id: u32) {
        if let Some(k) = self.cache.lookup(pool_handle, pe_id) {
            self.cache.remove(k);
        }
    }

    /// Reports a PE the PU could not reach: it leaves the cache and the registrar gets an
    /// Endpoint Unreachable.
    pub fn report_unreachable(&mut self, cx: &mut Ctx, pool_handle: &[u8], pe_id: u32, now: Time) {
        self.forget(pool_handle, pe_id);
        let bytes = super::pe::handle_and_id(MessageType::EndpointUnreachable, pool_handle, pe_id);
        if self.link.send(cx, bytes.clone()) {
            self.stats.unreachable_sent += 1;
        } else {
            if self.reports.len() >= MAX_QUEUED_REPORTS {
                self.reports.pop_front();
            }
            self.reports.push_back(bytes);
            self.link.start(cx, now);
        }
    }

    fn store(&mut self, pool_handle: &[u8], pes: &[PoolElementRepr], now: Time) {
        if self.timers.stale_cache == 0 {
            return;
        }
        let life = i32::try_from(self.timers.stale_cache).unwrap_or(i32::MAX);
        for pe in pes {
            let policy = match &pe.policy {
                PolicyRepr::Known(p) => *p,
                PolicyRepr::Unknown { .. } => Policy::RoundRobin,
            };
            let reg = |home| Registration {
                handle: pool_handle,
                pe_id: pe.pe_id,
                home,
                user_transport: &pe.user_transport,
                asap_transport: None,
                policy,
                registration_life: life,
                conn: None,
            };
            if self.cache.register(reg(pe.home_registrar), now).is_err() {
                // The pool changed under us (other addresses for this id, another policy or
                // transport): the registrar's answer wins over what was cached.
                if let Some(k) = self.cache.lookup(pool_handle, pe.pe_id) {
                    self.cache.remove(k);
                }
                if self.cache.register(reg(pe.home_registrar), now).is_err() {
                    self.drop_pool(pool_handle);
                    let _ = self.cache.register(reg(pe.home_registrar), now);
                }
            }
        }
    }

    fn drop_pool(&mut self, pool_handle: &[u8]) {
        let mut keys = Vec::new();
        if self.cache.resolve(pool_handle, usize::MAX, &mut keys).is_ok() {
            for k in keys {
                self.cache.remove(k);
            }
        }
    }

    /// A connection the core asked for is up.
    pub fn on_connected(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        self.link.on_connected(conn);
        self.link_events(cx, now);
    }

    /// `conn` is gone.
    pub fn on_closed(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        self.link.on_closed(cx, conn, now);
        self.link_events(cx, now);
    }

    /// Bytes from the registrar.
    pub fn on_data(&mut self, cx: &mut Ctx, conn: ConnToken, data: &[u8], now: Time) {
        let mut answers: Vec<Vec<u8>> = Vec::new();
        self.link.on_data(cx, conn, data, now, |m| {
            if m.first() == Some(&(MessageType::HandleResolutionResponse as u8)) {
                answers.push(m.to_vec());
            }
        });
        for m in answers {
            self.on_answer(&m, now);
        }
        self.link_events(cx, now);
    }

    fn on_answer(&mut self, m: &[u8], now: Time) {
        let Ok(parsed) = asap::parse(m) else {
            tracing::debug!("malformed Handle Resolution Response ignored");
            return;
        };
        let Body::HandleResolutionResponse { pool_handle, ref resolution } = *parsed.body() else { return };
        let Some(i) = self.pending.iter().position(|p| p.pool_handle == pool_handle) else { return };
        let p = self.pending.remove(i);
        match resolution {
            Resolution::Found { pool_elements, policy } => {
                let pes: Vec<PoolElementRepr> = pool_elements.clone().map(|pe| pe.to_repr()).collect();
                self.store(pool_handle, &pes, now);
                let policy = policy.map(|p| p.to_repr());
                self.events.push_back(PuEvent::Resolved { pool_handle: p.pool_handle, policy, pes, from_cache: false });
            }
            Resolution::Failed(e) => {
                self.drop_pool(pool_handle);
                let code = e.first_code();
                let error = if code == CauseCode::UNKNOWN_POOL_HANDLE {
                    ResolveError::UnknownPool
                } else {
                    ResolveError::Cause(code)
                };
                self.events.push_back(PuEvent::Failed { pool_handle: p.pool_handle, error });
            }
        }
    }

    fn link_events(&mut self, cx: &mut Ctx, now: Time) {
        while let Some(ev) = self.link.poll_event() {
            match ev {
                LinkEvent::Up(_) => {
                    while let Some(r) = self.reports.pop_front() {
                        self.stats.unreachable_sent += 1;
                        self.link.send(cx, r);
                    }
                    for i in 0..self.pending.len() {
                        self.pending[i].sends = 0;
                        self.send_request(cx, i, now);
                    }
                }
                LinkEvent::Down(_) => {
                    for p in &mut self.pending {
                        p.deadline = None;
                    }
                }
                LinkEvent::HuntFailed => {
                    for p in self.pending.drain(..) {
                        let error = ResolveError::NoRegistrar;
                        self.events.push_back(PuEvent::Failed { pool_handle: p.pool_handle, error });
                    }
                }
            }
        }
    }

    /// Time-driven work: T1 and the hunt's timers, cache expiry.
    pub fn on_timer(&mut self, cx: &mut Ctx, now: Time) {
        self.link.on_timer(cx, now);
        self.link_events(cx, now);
        self.cache.expire(now, 1024, |_, _, _| {});
        let mut abandon = false;
        for i in 0..self.pending.len() {
            if self.pending[i].deadline.is_some_and(|d| now >= d) {
                if self.pending[i].sends <= self.timers.max_request_retransmit {
                    self.send_request(cx, i, now);
                } else {
                    abandon = true;
                }
            }
        }
        if abandon {
            // MAX-REQUEST-RETRANSMIT retries unanswered: hunt another registrar.
            for p in &mut self.pending {
                p.deadline = None;
            }
            self.link.abandon(cx, now);
            self.link_events(cx, now);
        }
    }

    /// The earliest time [`PuCore::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Time> {
        let own = self.pending.iter().filter_map(|p| p.deadline).min();
        super::earliest(super::earliest(own, self.link.next_deadline()), self.cache.next_expiry())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PuEvent> {
        self.events.pop_front()
    }
}

fn cached_repr(pe: &crate::handlespace::PoolElement) -> PoolElementRepr {
    PoolElementRepr {
        pe_id: pe.id,
        home_registrar: pe.home,
        registration_life: pe.registration_life,
        user_transport: pe.user_transport(),
        policy: PolicyRepr::Known(pe.policy()),
        asap_transport: None,
    }
}
