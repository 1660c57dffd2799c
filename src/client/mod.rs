//! The client side of RSerPool: pool elements and pool users that survive failures
//! (RFC 5352 section 3; WIRE.md section 6.2), and a PU↔PE session layer over TCP
//! (`docs/session-layer.md`).
//!
//! Sans-IO cores, in the style of the registrar's services: bytes, connection events and time
//! in; bytes to send, connections to open or close, events and the next deadline out. They never
//! touch a socket or a clock, so every timer, retry, hunt and failover rule is unit-tested
//! without sockets (`tests.rs`).
//!
//! - [`registrars`]: the registrar table (configured list plus Server Announce, aged by T7) and
//!   the registrar hunt (one connection at a time, T5).
//! - [`pe`]: [`pe::PeCore`], a pool element's registrations: T2 and MAX-REG-ATTEMPT, hunt,
//!   re-registration every T4 and on change, keep-alive answers, home adoption (H flag), fresh
//!   id on cause 0x4, deregistration.
//! - [`pu`]: [`pu::PuCore`], a pool user's resolutions (T1, MAX-REQUEST-RETRANSMIT, hunt), its
//!   cache (stale-cache time, local selection by the pool's policy through
//!   [`crate::handlespace`]) and Endpoint Unreachable reports.
//! - [`frame`], [`session`], [`server`]: the session layer: framing, the PU side (failover with
//!   business cards, cookies and retrieval of unacknowledged messages) and the PE side.
//! - [`node`]: the cores put together as one [`Node`] per role ([`node::PeNode`],
//!   [`node::PuNode`]), which is what an adapter drives.
//! - Adapters: [`blocking`] (std threads; [`blocking::PoolElement`], [`blocking::PoolUser`],
//!   [`blocking::Session`]) and, with the cargo feature `tokio`, `client::tokio`.
//!
//! Two modes, as RFC 5351 has them: **name-service mode** ([`blocking::PoolUser::resolve`]:
//! the application gets the PEs and their addresses) and **failover mode**
//! ([`blocking::PoolUser::session`]: the library owns the PU↔PE connection, fails over by itself
//! and reports it as a [`session::SessionEvent`]).

pub mod blocking;
pub mod config;
mod driver;
pub mod frame;
pub mod node;
pub mod pe;
pub mod pu;
pub mod registrars;
pub mod server;
pub mod session;
#[cfg(test)]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio;

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

use crate::time::Time;

pub use config::{SessionConfig, Timers};

/// A connection as a core names it. Tokens of connections the core asked for come from its
/// [`Ctx`]; tokens of accepted connections come from the adapter ([`ConnToken::accepted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnToken(pub u64);

impl ConnToken {
    /// Bit set in the tokens of accepted connections, so they never collide with dialled ones.
    pub const ACCEPTED: u64 = 1 << 63;

    /// The token of the `n`-th connection an adapter accepted.
    pub const fn accepted(n: u64) -> Self {
        Self(n | Self::ACCEPTED)
    }
}

/// What a core asks its adapter to do on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Io {
    /// Open a TCP connection to `addr` (from `local` when given), named `conn` from now on.
    /// The adapter reports [`Node::on_connected`] or [`Node::on_closed`].
    Connect {
        /// The token the core chose.
        conn: ConnToken,
        /// Where to.
        addr: SocketAddr,
        /// Source address to bind (any port), e.g. another 127.0.0.x.
        local: Option<IpAddr>,
        /// A connection to a registrar (ASAP), rather than to a PE: an adapter configured for
        /// ASAP over TLS speaks TLS on it, and reports it connected once the handshake is done.
        registrar: bool,
    },
    /// Write whole messages on `conn` (dropped if it is gone).
    Send {
        /// The connection.
        conn: ConnToken,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close `conn` after what was queued for it; no [`Node::on_closed`] follows.
    Close {
        /// The connection.
        conn: ConnToken,
    },
}

/// What every core writes to: the network actions in order, and the token counter of the node
/// it belongs to (so the tokens of its parts never collide).
#[derive(Debug, Default)]
pub struct Ctx {
    io: VecDeque<Io>,
    next_token: u64,
}

impl Ctx {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a connection to `addr` (a PE's transport); returns its token.
    pub fn connect(&mut self, addr: SocketAddr, local: Option<IpAddr>) -> ConnToken {
        self.dial(addr, local, false)
    }

    /// Asks for a connection to registrar `addr` (ASAP); returns its token.
    pub fn connect_registrar(&mut self, addr: SocketAddr, local: Option<IpAddr>) -> ConnToken {
        self.dial(addr, local, true)
    }

    fn dial(&mut self, addr: SocketAddr, local: Option<IpAddr>, registrar: bool) -> ConnToken {
        self.next_token = (self.next_token + 1) & !ConnToken::ACCEPTED;
        let conn = ConnToken(self.next_token);
        self.io.push_back(Io::Connect { conn, addr, local, registrar });
        conn
    }

    /// Queues bytes for `conn`.
    pub fn send(&mut self, conn: ConnToken, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.io.push_back(Io::Send { conn, bytes });
        }
    }

    /// Closes `conn`.
    pub fn close(&mut self, conn: ConnToken) {
        self.io.push_back(Io::Close { conn });
    }

    /// The next network action, oldest first.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }
}

/// A client node as an adapter drives it: connection events, bytes and time in; network
/// actions, application events and the next deadline out. Each method does a bounded amount
/// of work.
pub trait Node {
    /// What the node tells its application.
    type Event: Send + 'static;

    /// A connection the node asked for ([`Io::Connect`]) is established.
    fn on_connected(&mut self, conn: ConnToken, now: Time);
    /// Bytes arrived on `conn` (the node buffers what it cannot use yet).
    fn on_data(&mut self, conn: ConnToken, data: &[u8], now: Time);
    /// `conn` is gone (closed by the peer, failed, or its connect failed). Not called after the
    /// node's own [`Io::Close`].
    fn on_closed(&mut self, conn: ConnToken, now: Time);
    /// A connection was accepted on the node's listener (session layer or ASAP, see
    /// [`Listener`]).
    fn on_accepted(&mut self, conn: ConnToken, listener: Listener, peer: SocketAddr, now: Time) {
        let _ = (listener, peer, now);
        self.refuse(conn);
    }
    /// A datagram arrived on the Server Announce socket.
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Time) {
        let _ = (data, from, now);
    }
    /// The deadline of [`Node::next_deadline`] has passed.
    fn on_timer(&mut self, now: Time);
    /// The earliest time [`Node::on_timer`] has work.
    fn next_deadline(&self) -> Option<Time>;
    /// The next network action.
    fn poll_io(&mut self) -> Option<Io>;
    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Closes an accepted connection the node does not want.
    fn refuse(&mut self, conn: ConnToken);
}

/// Which listener of a node accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The PE's user transport: PU sessions.
    Session,
    /// The PE's ASAP transport: a registrar that took the PE over dials here (WIRE.md 7.6).
    Asap,
}

/// Earliest of two optional deadlines.
pub(crate) fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
