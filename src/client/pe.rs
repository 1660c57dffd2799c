//! A pool element's side of ASAP, sans-IO (RFC 5352 section 3; WIRE.md 6.2).
//!
//! [`PeCore`] keeps one or more registrations (one per pool, each with all its legs, policy
//! and lifetime) at one registrar at a time:
//! - on connecting it sends every Registration; no answer within T2 → sent again, up to
//!   MAX-REG-ATTEMPT tries, then it hunts another registrar (T5);
//! - it re-registers every T4, and at once when the load, weight or transports change;
//!   re-registration answers are checked like first ones;
//! - a rejection with cause 0x4 (Non-unique PE identifier) makes it pick a fresh random id and
//!   register again at once; another rejection counts as a failed try;
//! - it answers Endpoint Keep Alives for its own PEs only; one without PE Identifier means
//!   every registration of this PE at that registrar: each is acked;
//! - a Keep Alive with H flag from another registrar makes that registrar its home: when it
//!   came over a connection that registrar dialled (WIRE.md 7.6) that connection becomes the
//!   registrar link and the PE re-registers over it;
//! - when its registrar connection drops its registrations are gone with it: it hunts at once
//!   and registers again with the same ids;
//! - on shutdown it deregisters (T3).

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

use super::config::Timers;
use super::registrars::{LinkEvent, RegistrarLink, RegistrarTable};
use super::{ConnToken, Ctx};
use crate::time::Time;
use crate::wire::asap::{self, Body, MessageType};
use crate::wire::{CauseCode, Framer, PolicyRepr, PoolElementRepr, Protocol, TransportRepr, Writer};

/// Most registrations one [`PeCore`] keeps.
pub const MAX_REGISTRATIONS: usize = 4096;

/// Names one registration of a [`PeCore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegId(pub u32);

/// What a PE registers: its pool, transports, policy and lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeSpec {
    /// The pool handle.
    pub pool_handle: Vec<u8>,
    /// The PE identifier; `None` draws a random one.
    pub pe_id: Option<u32>,
    /// How pool users reach the PE (all its legs).
    pub user_transport: TransportRepr,
    /// The selection policy and its values (load, weight, ...).
    pub policy: PolicyRepr,
    /// Registration life in ms (-1: until deregistered or disconnected).
    pub registration_life: i32,
    /// Where a registrar can dial the PE's ASAP endpoint (for takeovers), if it listens.
    pub asap_transport: Option<TransportRepr>,
}

/// Settings of a [`PeCore`].
#[derive(Clone, Debug)]
pub struct PeConfig {
    /// Registrars to use, in order of preference.
    pub registrars: Vec<SocketAddr>,
    /// Timers and retry counts.
    pub timers: Timers,
    /// Source address of the registrar connection.
    pub local: Option<IpAddr>,
    /// Seed of the PE ids drawn (fixed in tests).
    pub seed: u64,
}

impl Default for PeConfig {
    fn default() -> Self {
        Self { registrars: Vec::new(), timers: Timers::default(), local: None, seed: fastrand::u64(..) }
    }
}

/// What a [`PeCore`] tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeEvent {
    /// The registration is accepted by the registrar at `registrar` (first time there; quiet
    /// re-registrations are not reported).
    Registered {
        /// Which registration.
        reg: RegId,
        /// Its PE identifier.
        pe_id: u32,
        /// The registrar.
        registrar: SocketAddr,
    },
    /// The registrar rejected it (other than cause 0x4); counted as a failed try.
    Rejected {
        /// Which registration.
        reg: RegId,
        /// The first cause.
        cause: CauseCode,
    },
    /// Cause 0x4: the PE took a fresh identifier and registers again.
    NewPeId {
        /// Which registration.
        reg: RegId,
        /// The refused identifier.
        old: u32,
        /// The new one.
        new: u32,
    },
    /// A registrar sent a Keep Alive with H flag: it is the PE's home now.
    HomeChanged {
        /// Its server id.
        server_id: u32,
    },
    /// The registrar connection dropped or was given up; the PE hunts and registers again.
    RegistrarLost {
        /// The registrar.
        registrar: SocketAddr,
    },
    /// No registrar found within T5 (the hunt goes on).
    NoRegistrar,
    /// The registration is gone (deregistered, or T3 passed).
    Deregistered {
        /// Which registration.
        reg: RegId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waits for a registrar connection.
    Pending,
    /// Registration sent, answer due at `deadline`; `quiet`: a re-registration of a PE the
    /// registrar already holds.
    Sent { deadline: Time, quiet: bool },
    /// Registered; re-registration due at `at`.
    Registered { at: Time },
    /// Deregistration sent; gone at `deadline` at the latest.
    Deregistering { deadline: Time },
}

#[derive(Clone, Debug)]
struct Entry {
    reg: RegId,
    spec: PeSpec,
    pe_id: u32,
    state: State,
    /// Tries at the current registrar without an accepting answer.
    attempts: u32,
}

/// A pool element's registrations and its registrar connection.
#[derive(Debug)]
pub struct PeCore {
    link: RegistrarLink,
    timers: Timers,
    entries: Vec<Entry>,
    next_reg: u32,
    /// The home registrar's server id, once known (0 = not known).
    home: u32,
    rng: fastrand::Rng,
    events: VecDeque<PeEvent>,
    /// Accepted ASAP connections from registrars (takeover), with their receive buffers.
    inbound: Vec<(ConnToken, SocketAddr, Vec<u8>)>,
    /// Registrations sent so far (re-registrations included).
    pub registrations_sent: u64,
}

fn draw_id(rng: &mut fastrand::Rng) -> u32 {
    rng.u32(1..)
}

impl PeCore {
    /// A PE core with no registration yet.
    pub fn new(config: PeConfig) -> Self {
        let timers = config.timers.clone();
        Self {
            link: RegistrarLink::new(RegistrarTable::new(config.registrars), config.timers, config.local),
            timers,
            entries: Vec::new(),
            next_reg: 0,
            home: 0,
            rng: fastrand::Rng::with_seed(config.seed),
            events: VecDeque::new(),
            inbound: Vec::new(),
            registrations_sent: 0,
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

    /// The home registrar's server id (0 until a Keep Alive named it).
    pub fn home(&self) -> u32 {
        self.home
    }

    /// Adds a registration and starts registering it; `None` beyond [`MAX_REGISTRATIONS`].
    pub fn add(&mut self, cx: &mut Ctx, spec: PeSpec, now: Time) -> Option<RegId> {
        if self.entries.len() >= MAX_REGISTRATIONS {
            return None;
        }
        self.next_reg += 1;
        let reg = RegId(self.next_reg);
        let pe_id = spec.pe_id.filter(|&id| id != 0).unwrap_or_else(|| draw_id(&mut self.rng));
        self.entries.push(Entry { reg, spec, pe_id, state: State::Pending, attempts: 0 });
        if self.link.registrar().is_some() {
            self.send_registration(cx, self.entries.len() - 1, now, false);
        } else {
            self.link.start(cx, now);
        }
        Some(reg)
    }

    /// The PE identifier of a registration.
    pub fn pe_id(&self, reg: RegId) -> Option<u32> {
        self.entry(reg).map(|e| e.pe_id)
    }

    /// Whether the registrar has accepted the registration (and it is not being withdrawn).
    pub fn is_registered(&self, reg: RegId) -> bool {
        self.entry(reg).is_some_and(|e| matches!(e.state, State::Registered { .. } | State::Sent { quiet: true, .. }))
    }

    /// The registration as it stands.
    pub fn spec(&self, reg: RegId) -> Option<&PeSpec> {
        self.entry(reg).map(|e| &e.spec)
    }

    fn entry(&self, reg: RegId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.reg == reg)
    }

    /// Changes a registration (load, weight, transports, lifetime): re-registers at once.
    pub fn update(&mut self, cx: &mut Ctx, reg: RegId, now: Time, change: impl FnOnce(&mut PeSpec)) {
        let Some(i) = self.entries.iter().position(|e| e.reg == reg) else { return };
        change(&mut self.entries[i].spec);
        match self.entries[i].state {
            State::Registered { .. } | State::Sent { quiet: true, .. } => self.send_registration(cx, i, now, true),
            State::Sent { quiet: false, .. } => self.send_registration(cx, i, now, false),
            State::Pending | State::Deregistering { .. } => {}
        }
    }

    /// Withdraws a registration: Deregistration, answer awaited for T3 at most. Without a
    /// registrar connection it is gone at once (registrations live with their connection).
    pub fn deregister(&mut self, cx: &mut Ctx, reg: RegId, now: Time) {
        let Some(i) = self.entries.iter().position(|e| e.reg == reg) else { return };
        let sent = self.link.registrar().is_some()
            && !matches!(self.entries[i].state, State::Pending | State::Deregistering { .. })
            && {
                let e = &self.entries[i];
                let bytes = handle_and_id(MessageType::Deregistration, &e.spec.pool_handle, e.pe_id);
                self.link.send(cx, bytes)
            };
        if sent {
            self.entries[i].state = State::Deregistering { deadline: now.add_millis(self.timers.t3_deregistration) };
        } else if !matches!(self.entries[i].state, State::Deregistering { .. }) {
            self.entries.remove(i);
            self.events.push_back(PeEvent::Deregistered { reg });
        }
    }

    /// Whether every registration is gone (after [`PeCore::deregister`]).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Closes the registrar connection (after deregistering).
    pub fn shutdown(&mut self, cx: &mut Ctx) {
        self.link.shutdown(cx);
        for (conn, _, _) in self.inbound.drain(..) {
            cx.close(conn);
        }
    }

    fn send_registration(&mut self, cx: &mut Ctx, i: usize, now: Time, quiet: bool) {
        let home = self.home;
        let e = &mut self.entries[i];
        let pe = PoolElementRepr {
            pe_id: e.pe_id,
            home_registrar: home,
            registration_life: e.spec.registration_life,
            user_transport: e.spec.user_transport.clone(),
            policy: e.spec.policy.clone(),
            asap_transport: e.spec.asap_transport.clone(),
        };
        let mut bytes = Vec::with_capacity(96);
        let mut w = Writer::new(&mut bytes);
        let ok = w.message(MessageType::Registration as u8, 0, |w| {
            w.tlv_bytes(crate::wire::ParamType::POOL_HANDLE, &e.spec.pool_handle);
            pe.emit(w);
        });
        if ok.is_err() {
            // Too large for one message: nothing any registrar could accept.
            tracing::warn!("registration of PE {:#x} exceeds the message size; not sent", e.pe_id);
            e.state = State::Pending;
            return;
        }
        e.attempts += 1;
        e.state = State::Sent { deadline: now.add_millis(self.timers.t2_registration), quiet };
        self.registrations_sent += 1;
        self.link.send(cx, bytes);
    }

    /// A connection the core asked for is up.
    pub fn on_connected(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        self.link.on_connected(conn);
        self.link_events(cx, now);
    }

    /// `conn` is gone.
    pub fn on_closed(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        self.inbound.retain(|(c, _, _)| *c != conn);
        self.link.on_closed(cx, conn, now);
        self.link_events(cx, now);
    }

    /// Whether `conn` belongs to this core (its registrar link or an accepted ASAP connection).
    pub fn owns(&self, conn: ConnToken) -> bool {
        self.link.owns(conn) || self.inbound.iter().any(|(c, _, _)| *c == conn)
    }

    /// A registrar dialled the PE's ASAP transport (a takeover, WIRE.md 7.6). Bounded: at most
    /// 8 such connections wait for their Keep Alive at once.
    pub fn on_accepted(&mut self, cx: &mut Ctx, conn: ConnToken, peer: SocketAddr) {
        if self.inbound.len() >= 8 {
            cx.close(conn);
            return;
        }
        self.inbound.push((conn, peer, Vec::new()));
    }

    /// Bytes from a registrar.
    pub fn on_data(&mut self, cx: &mut Ctx, conn: ConnToken, data: &[u8], now: Time) {
        if let Some(i) = self.inbound.iter().position(|(c, _, _)| *c == conn) {
            self.on_inbound_data(cx, i, data, now);
            return;
        }
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        self.link.on_data(cx, conn, data, now, |m| msgs.push(m.to_vec()));
        for m in msgs {
            self.on_message(cx, &m, now, None);
        }
        self.link_events(cx, now);
    }

    fn on_inbound_data(&mut self, cx: &mut Ctx, i: usize, data: &[u8], now: Time) {
        let framer = Framer::new(Protocol::Asap, super::registrars::MAX_MESSAGE);
        let (conn, peer, mut rx) = self.inbound.swap_remove(i);
        rx.extend_from_slice(data);
        let mut used = 0;
        let mut adopted = false;
        while let Ok(crate::wire::Frame::Complete(m)) = framer.frame(&rx[used..]) {
            used += m.len();
            let m = m.to_vec();
            adopted |= self.on_message(cx, &m, now, Some((conn, peer)));
        }
        if framer.frame(&rx[used..]).is_err() {
            cx.close(conn);
            return;
        }
        if !adopted {
            rx.drain(..used);
            self.inbound.push((conn, peer, rx));
        }
    }

    /// Handles one message from a registrar; returns whether it made `via` (an accepted
    /// connection) the registrar link.
    fn on_message(&mut self, cx: &mut Ctx, m: &[u8], now: Time, via: Option<(ConnToken, SocketAddr)>) -> bool {
        let Ok(parsed) = asap::parse(m) else {
            tracing::debug!("malformed message from a registrar ignored");
            return false;
        };
        match *parsed.body() {
            Body::RegistrationResponse { rejected, pool_handle, pe_id, ref error } if via.is_none() => {
                let cause = error.as_ref().map_or(CauseCode::UNSPECIFIED, |e| e.first_code());
                self.on_registration_response(cx, pool_handle, pe_id, rejected.then_some(cause), now);
            }
            Body::DeregistrationResponse { pool_handle, pe_id, .. } if via.is_none() => {
                if let Some(i) = self.find(pool_handle, pe_id) {
                    if matches!(self.entries[i].state, State::Deregistering { .. }) {
                        let reg = self.entries.remove(i).reg;
                        self.events.push_back(PeEvent::Deregistered { reg });
                    }
                }
            }
            Body::EndpointKeepAlive { home, server_id, pool_handle, pe_id } => {
                let ours: Vec<usize> = match pe_id {
                    Some(id) => self.find(pool_handle, id).into_iter().collect(),
                    // Without PE Identifier: every PE of this connection (rsplib's registrar).
                    None => (0..self.entries.len()).collect(),
                };
                let ours: Vec<usize> =
                    ours.into_iter().filter(|&i| !matches!(self.entries[i].state, State::Pending)).collect();
                if ours.is_empty() && via.is_none() {
                    return false;
                }
                let mut adopted = false;
                if home && server_id != self.home && server_id != 0 {
                    self.home = server_id;
                    self.events.push_back(PeEvent::HomeChanged { server_id });
                    if let Some((conn, peer)) = via {
                        self.link.adopt(cx, conn, peer);
                        adopted = true;
                    }
                }
                if via.is_some() && !adopted {
                    return false;
                }
                let mut acks = Vec::new();
                for &i in &ours {
                    let e = &self.entries[i];
                    acks.extend(handle_and_id(MessageType::EndpointKeepAliveAck, &e.spec.pool_handle, e.pe_id));
                }
                self.link.send(cx, acks);
                if adopted {
                    // The registrations must belong to the connection the new home dialled.
                    for i in 0..self.entries.len() {
                        if !matches!(self.entries[i].state, State::Deregistering { .. }) {
                            self.entries[i].attempts = 0;
                            let quiet = matches!(self.entries[i].state, State::Registered { .. });
                            self.send_registration(cx, i, now, quiet);
                        }
                    }
                }
                return adopted;
            }
            _ => {}
        }
        false
    }

    fn find(&self, pool_handle: &[u8], pe_id: u32) -> Option<usize> {
        self.entries.iter().position(|e| e.pe_id == pe_id && e.spec.pool_handle == pool_handle)
    }

    fn on_registration_response(
        &mut self,
        cx: &mut Ctx,
        pool_handle: &[u8],
        pe_id: u32,
        rejected: Option<CauseCode>,
        now: Time,
    ) {
        let Some(i) = self.find(pool_handle, pe_id) else { return };
        let State::Sent { quiet, .. } = self.entries[i].state else { return };
        let reg = self.entries[i].reg;
        match rejected {
            None => {
                let e = &mut self.entries[i];
                e.attempts = 0;
                let period = self.timers.reregistration_period(e.spec.registration_life);
                e.state = State::Registered { at: now.add_millis(period) };
                if !quiet {
                    let registrar = self.link.registrar().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    self.events.push_back(PeEvent::Registered { reg, pe_id, registrar });
                }
            }
            Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER) => {
                let new = draw_id(&mut self.rng);
                self.entries[i].pe_id = new;
                self.entries[i].attempts = 0;
                self.events.push_back(PeEvent::NewPeId { reg, old: pe_id, new });
                self.send_registration(cx, i, now, false);
            }
            Some(cause) => {
                // Counted as a failed try: at T2 it is sent again, or the hunt goes on.
                self.events.push_back(PeEvent::Rejected { reg, cause });
            }
        }
    }

    fn link_events(&mut self, cx: &mut Ctx, now: Time) {
        while let Some(ev) = self.link.poll_event() {
            match ev {
                LinkEvent::Up(_) => {
                    for i in 0..self.entries.len() {
                        if !matches!(self.entries[i].state, State::Deregistering { .. }) {
                            self.entries[i].attempts = 0;
                            self.send_registration(cx, i, now, false);
                        }
                    }
                }
                LinkEvent::Down(registrar) => {
                    self.events.push_back(PeEvent::RegistrarLost { registrar });
                    let mut gone = Vec::new();
                    self.entries.retain(|e| {
                        let keep = !matches!(e.state, State::Deregistering { .. });
                        if !keep {
                            gone.push(e.reg);
                        }
                        keep
                    });
                    for e in &mut self.entries {
                        e.state = State::Pending;
                        e.attempts = 0;
                    }
                    self.events.extend(gone.into_iter().map(|reg| PeEvent::Deregistered { reg }));
                }
                LinkEvent::HuntFailed => self.events.push_back(PeEvent::NoRegistrar),
            }
        }
    }

    /// Time-driven work: T2, T3, T4 and the hunt's timers.
    pub fn on_timer(&mut self, cx: &mut Ctx, now: Time) {
        self.link.on_timer(cx, now);
        self.link_events(cx, now);
        let mut abandon = false;
        let mut i = 0;
        while i < self.entries.len() {
            match self.entries[i].state {
                State::Sent { deadline, quiet } if now >= deadline => {
                    if self.entries[i].attempts < self.timers.max_reg_attempts {
                        self.send_registration(cx, i, now, quiet);
                    } else {
                        abandon = true;
                    }
                }
                State::Registered { at } if now >= at => self.send_registration(cx, i, now, true),
                State::Deregistering { deadline } if now >= deadline => {
                    let reg = self.entries.remove(i).reg;
                    self.events.push_back(PeEvent::Deregistered { reg });
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        if abandon {
            // MAX-REG-ATTEMPT tries without an answer: this registrar is of no use, hunt.
            self.link.abandon(cx, now);
            self.link_events(cx, now);
        }
        if !self.entries.is_empty() && self.link.registrar().is_none() {
            self.link.start(cx, now);
        }
    }

    /// The earliest time [`PeCore::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Time> {
        let own = self
            .entries
            .iter()
            .filter_map(|e| match e.state {
                State::Sent { deadline, .. } | State::Deregistering { deadline } => Some(deadline),
                State::Registered { at } => Some(at),
                State::Pending => None,
            })
            .min();
        super::earliest(own, self.link.next_deadline())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PeEvent> {
        self.events.pop_front()
    }
}

/// A message of Pool Handle and PE Identifier (Deregistration, Keep Alive Ack, Endpoint
/// Unreachable).
pub(crate) fn handle_and_id(t: MessageType, pool_handle: &[u8], pe_id: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + pool_handle.len());
    // Only an over-long handle fails, and it then sends nothing.
    let _ = asap::emit_handle_and_id(&mut Writer::new(&mut buf), t, 0, pool_handle, Some(pe_id), None);
    buf
}
