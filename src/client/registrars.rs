//! Which registrars a client knows, and the hunt for one (RFC 5352 section 3.2; WIRE.md 6.2).
//!
//! [`RegistrarTable`]: the configured registrars plus those heard in Server Announces, each of
//! the latter forgotten T7 after its last announce (bounded: [`MAX_ANNOUNCED`]).
//! [`RegistrarLink`]: one ASAP connection to one registrar at a time. Hunting tries the known
//! registrars in turn, starting after the one that failed last; after a whole round without
//! success it pauses (`hunt_retry`) and starts again. A hunt that has not found a registrar
//! within T5 is reported once ([`LinkEvent::HuntFailed`]), and goes on.

use core::net::{IpAddr, SocketAddr};

use super::config::Timers;
use super::{ConnToken, Ctx};
use crate::time::Time;
use crate::wire::asap::{self, Body};
use crate::wire::framer::Frame;
use crate::wire::{Framer, Protocol, TransportProtocol};

/// Most registrars remembered from Server Announces (the oldest is dropped beyond).
pub const MAX_ANNOUNCED: usize = 64;
/// Largest ASAP message a client accepts from a registrar.
pub const MAX_MESSAGE: usize = 65535;

#[derive(Clone, Debug)]
struct Announced {
    server_id: u32,
    addr: SocketAddr,
    last_heard: Time,
}

/// The registrars a client may use: configured ones first, then announced ones (newest first).
#[derive(Clone, Debug, Default)]
pub struct RegistrarTable {
    configured: Vec<SocketAddr>,
    announced: Vec<Announced>,
}

impl RegistrarTable {
    /// A table of the configured registrars.
    pub fn new(configured: Vec<SocketAddr>) -> Self {
        Self { configured, announced: Vec::new() }
    }

    /// Takes a datagram from the Server Announce group: a valid Server Announce adds (or
    /// refreshes) its registrar's TCP transports. An unspecified address stands for the
    /// datagram's source address. Returns whether it was one.
    pub fn on_announce(&mut self, datagram: &[u8], source: SocketAddr, now: Time) -> bool {
        let Ok(m) = asap::parse(datagram) else { return false };
        let Body::ServerAnnounce { server_id, transports } = m.into_body() else { return false };
        let mut any = false;
        for t in transports.filter(|t| t.protocol() == TransportProtocol::Tcp) {
            for ip in t.addresses() {
                let ip = if ip.is_unspecified() { source.ip() } else { ip };
                self.heard(server_id, SocketAddr::new(ip, t.port()), now);
                any = true;
            }
        }
        any
    }

    fn heard(&mut self, server_id: u32, addr: SocketAddr, now: Time) {
        self.announced.retain(|a| a.addr != addr);
        if self.announced.len() >= MAX_ANNOUNCED {
            self.announced.remove(0);
        }
        self.announced.push(Announced { server_id, addr, last_heard: now });
    }

    /// Forgets announced registrars not heard for T7 (`t7` ms).
    pub fn expire(&mut self, now: Time, t7: u64) {
        self.announced.retain(|a| now.millis_since(a.last_heard) < t7);
    }

    /// When the next announced registrar is forgotten.
    pub fn next_expiry(&self, t7: u64) -> Option<Time> {
        self.announced.iter().map(|a| a.last_heard.add_millis(t7)).min()
    }

    /// Every registrar, in the order a hunt tries them (duplicates removed).
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.configured.clone();
        for a in self.announced.iter().rev() {
            if !v.contains(&a.addr) {
                v.push(a.addr);
            }
        }
        v
    }

    /// The server id an announced registrar gave, if it announced itself.
    pub fn server_id(&self, addr: SocketAddr) -> Option<u32> {
        self.announced.iter().find(|a| a.addr == addr).map(|a| a.server_id)
    }
}

/// What happened to a client's registrar connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected to the registrar at this address (send what is owed now).
    Up(SocketAddr),
    /// The connection to this registrar is gone; the hunt goes on.
    Down(SocketAddr),
    /// No registrar found within T5 (reported once per hunt; the hunt goes on).
    HuntFailed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not hunting (nothing asked for a registrar yet).
    Idle,
    Connecting {
        conn: ConnToken,
        addr: SocketAddr,
        deadline: Time,
    },
    Up {
        conn: ConnToken,
        addr: SocketAddr,
    },
    /// Every known registrar failed in this round: try again at `until`.
    Paused {
        until: Time,
    },
}

/// One client's connection to a registrar, and the hunt for one.
#[derive(Debug)]
pub struct RegistrarLink {
    /// The registrars known.
    pub table: RegistrarTable,
    timers: Timers,
    local: Option<IpAddr>,
    state: State,
    framer: Framer,
    rx: Vec<u8>,
    /// The registrar tried last (the hunt goes on after it).
    last: Option<SocketAddr>,
    /// Tries in the current round.
    tried: usize,
    /// When the current hunt started (T5), and whether its failure was reported.
    hunt_since: Option<Time>,
    hunt_reported: bool,
    events: Vec<LinkEvent>,
}

impl RegistrarLink {
    /// A link that will hunt among `table`, connecting from `local` when given.
    pub fn new(table: RegistrarTable, timers: Timers, local: Option<IpAddr>) -> Self {
        Self {
            table,
            timers,
            local,
            state: State::Idle,
            framer: Framer::new(Protocol::Asap, MAX_MESSAGE),
            rx: Vec::new(),
            last: None,
            tried: 0,
            hunt_since: None,
            hunt_reported: false,
            events: Vec::new(),
        }
    }

    /// The registrar connected to, if any.
    pub fn registrar(&self) -> Option<SocketAddr> {
        match self.state {
            State::Up { addr, .. } => Some(addr),
            _ => None,
        }
    }

    /// Whether `conn` is this link's connection (connecting or up).
    pub fn owns(&self, conn: ConnToken) -> bool {
        matches!(self.state, State::Connecting { conn: c, .. } | State::Up { conn: c, .. } if c == conn)
    }

    /// Starts hunting unless connected or already hunting.
    pub fn start(&mut self, cx: &mut Ctx, now: Time) {
        if self.state == State::Idle {
            self.hunt_since = Some(now);
            self.hunt_reported = false;
            self.tried = 0;
            self.connect_next(cx, now);
        }
    }

    /// Sends whole messages to the registrar; `false` when not connected (the caller sends
    /// again on [`LinkEvent::Up`]).
    pub fn send(&mut self, cx: &mut Ctx, bytes: Vec<u8>) -> bool {
        match self.state {
            State::Up { conn, .. } => {
                cx.send(conn, bytes);
                true
            }
            _ => false,
        }
    }

    fn connect_next(&mut self, cx: &mut Ctx, now: Time) {
        let candidates = self.table.candidates();
        if candidates.is_empty() || self.tried >= candidates.len() {
            self.tried = 0;
            self.state = State::Paused { until: now.add_millis(self.timers.hunt_retry.max(1)) };
            return;
        }
        let after = self.last.and_then(|l| candidates.iter().position(|&c| c == l)).map_or(0, |i| i + 1);
        let addr = candidates[after % candidates.len()];
        self.last = Some(addr);
        self.tried += 1;
        let conn = cx.connect_registrar(addr, self.local);
        self.rx.clear();
        self.state = State::Connecting { conn, addr, deadline: now.add_millis(self.timers.connect_timeout.max(1)) };
    }

    /// A connection the link asked for is up.
    pub fn on_connected(&mut self, conn: ConnToken) {
        if let State::Connecting { conn: c, addr, .. } = self.state {
            if c == conn {
                self.state = State::Up { conn, addr };
                self.hunt_since = None;
                self.tried = 0;
                self.events.push(LinkEvent::Up(addr));
            }
        }
    }

    /// Makes an accepted connection from a registrar the link (the PE adopts a new home that
    /// dialled it, WIRE.md 7.6); the previous connection is closed.
    pub fn adopt(&mut self, cx: &mut Ctx, conn: ConnToken, addr: SocketAddr) {
        if let State::Connecting { conn: old, .. } | State::Up { conn: old, .. } = self.state {
            if old != conn {
                cx.close(old);
            }
        }
        self.rx.clear();
        self.state = State::Up { conn, addr };
        self.hunt_since = None;
        self.last = Some(addr);
    }

    /// `conn` is gone: when it was the link's, hunt on at once.
    pub fn on_closed(&mut self, cx: &mut Ctx, conn: ConnToken, now: Time) {
        match self.state {
            State::Up { conn: c, addr } if c == conn => {
                self.events.push(LinkEvent::Down(addr));
                self.rehunt(cx, now);
            }
            State::Connecting { conn: c, .. } if c == conn => self.connect_next(cx, now),
            _ => {}
        }
    }

    /// Gives the current registrar up (it does not answer) and hunts another.
    pub fn abandon(&mut self, cx: &mut Ctx, now: Time) {
        if let State::Up { conn, addr } | State::Connecting { conn, addr, .. } = self.state {
            cx.close(conn);
            if matches!(self.state, State::Up { .. }) {
                self.events.push(LinkEvent::Down(addr));
            }
        }
        self.rehunt(cx, now);
    }

    fn rehunt(&mut self, cx: &mut Ctx, now: Time) {
        self.state = State::Idle;
        self.start(cx, now);
    }

    /// Closes the connection and stops hunting.
    pub fn shutdown(&mut self, cx: &mut Ctx) {
        if let State::Up { conn, .. } | State::Connecting { conn, .. } = self.state {
            cx.close(conn);
        }
        self.state = State::Idle;
        self.hunt_since = None;
    }

    /// Bytes from the registrar: calls `f` with each whole message. An unframeable stream
    /// closes the connection (WIRE.md section 1) and the hunt goes on.
    pub fn on_data(&mut self, cx: &mut Ctx, conn: ConnToken, data: &[u8], now: Time, mut f: impl FnMut(&[u8])) {
        if !matches!(self.state, State::Up { conn: c, .. } if c == conn) {
            return;
        }
        self.rx.extend_from_slice(data);
        let mut used = 0;
        loop {
            match self.framer.frame(&self.rx[used..]) {
                Ok(Frame::Complete(m)) => {
                    used += m.len();
                    f(m);
                }
                Ok(Frame::Incomplete { .. }) => break,
                Err(e) => {
                    tracing::warn!("registrar stream unframeable ({e}); closing it");
                    self.abandon(cx, now);
                    return;
                }
            }
        }
        self.rx.drain(..used);
    }

    /// Time-driven work: connect timeouts, the pause between rounds, T5, T7.
    pub fn on_timer(&mut self, cx: &mut Ctx, now: Time) {
        self.table.expire(now, self.timers.t7_outdate);
        match self.state {
            State::Connecting { conn, deadline, .. } if now >= deadline => {
                cx.close(conn);
                self.connect_next(cx, now);
            }
            State::Paused { until } if now >= until => self.connect_next(cx, now),
            _ => {}
        }
        if let Some(since) = self.hunt_since {
            if !self.hunt_reported && now.millis_since(since) >= self.timers.t5_server_hunt {
                self.hunt_reported = true;
                self.events.push(LinkEvent::HuntFailed);
            }
        }
    }

    /// The earliest time [`RegistrarLink::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Time> {
        let state = match self.state {
            State::Connecting { deadline, .. } => Some(deadline),
            State::Paused { until } => Some(until),
            _ => None,
        };
        let t5 = self.hunt_since.filter(|_| !self.hunt_reported).map(|s| s.add_millis(self.timers.t5_server_hunt));
        super::earliest(super::earliest(state, t5), self.table.next_expiry(self.timers.t7_outdate))
    }

    /// The next link event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }
}
