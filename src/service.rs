//! The seam between the protocol core and the I/O engines.
//!
//! An engine (io_uring or epoll, TCP today, SCTP later; or the deterministic simulator of
//! [`crate::runtime::sim`]) owns sockets, buffers, threads and the queues between shards. A
//! [`Service`] owns protocol state for one shard and sees only bytes, connection ids, typed
//! messages from other shards, and time. Engines call the service; the service answers through
//! an [`Outbox`]. Nothing in a service performs I/O, so the same service runs under every engine
//! and in tests without sockets.
//!
//! What the engines promise a service:
//! - **Nothing crossing shards is lost.** A message posted to another shard (or bytes sent to,
//!   or a close of, another shard's connection) arrives, in the order posted per pair of
//!   shards. The queues between shards are bounded; when one is full the engine keeps the
//!   overflow and stops reading the connection whose input caused it
//!   ([`Outbox::input_paused`]) until the overflow has drained, and it holds back
//!   [`Service::on_timer`] meanwhile, so the overflow stays bounded too.
//! - **Every connection ends with exactly one [`Service::on_close`]**, whether it was accepted
//!   or dialled ([`Outbox::connect`]), and whoever closed it.
//! - **Stale ids are harmless**: sends and closes aimed at a connection that has gone are
//!   dropped, even if its slot is in use again.

use core::net::SocketAddr;

use crate::time::Time;

/// Index of a shard (one per engine thread; shard *i* runs on the *i*-th configured core).
pub type ShardId = u16;

/// What a listener or an outbound connection serves (e.g. ASAP or ENRP). The values are the
/// service's to choose; the engine only hands them back in [`Service::on_accept`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u16);

/// Bytes carried between shards: stored inline up to a typical answer's size (no allocation on
/// the common path), on the heap beyond.
pub type Payload = smallvec::SmallVec<[u8; 224]>;

/// One connection anywhere in the process: the shard whose thread owns its socket, the slot
/// there, and a generation so that a reused slot never receives bytes meant for an earlier
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Shard that owns the socket.
    pub shard: ShardId,
    /// Generation of the slot, bumped each time the slot is reused.
    pub generation: u16,
    /// Slot index in the owning shard's connection table.
    pub slot: u32,
}

impl ConnId {
    /// Packs the id into 64 bits (for queues and maps).
    pub const fn to_u64(self) -> u64 {
        ((self.shard as u64) << 48) | ((self.generation as u64) << 32) | self.slot as u64
    }

    /// Inverse of [`ConnId::to_u64`].
    pub const fn from_u64(v: u64) -> Self {
        Self { shard: (v >> 48) as u16, generation: (v >> 32) as u16, slot: v as u32 }
    }
}

/// Where a service's output goes. Implemented by each engine (and by test harnesses). `M` is
/// the service's cross-shard message type ([`Service::Msg`]).
pub trait Outbox<M> {
    /// Queues bytes for `conn`, wherever its socket lives: `write` appends them to the buffer it
    /// is given (whole messages only). Bytes for a connection of another shard travel there.
    /// Bytes for a connection that has meanwhile closed are dropped.
    fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>));

    /// Hands `msg` to shard `to` (this one included), where [`Service::on_message`] receives
    /// it. Never lost; messages from one shard to another arrive in the order posted.
    fn post(&mut self, to: ShardId, msg: M);

    /// Closes `conn` once the bytes already queued for it are written.
    fn close(&mut self, conn: ConnId);

    /// Holds local connection `conn` open (`true`) while the service still owes it answers that
    /// other shards are preparing, or releases it (`false`). A held connection whose peer has
    /// closed its sending side is not closed when its queue runs empty, but when it is released
    /// (and its queue is empty), or when the engine's hold limit passes, so that a client that
    /// sends its requests and then shuts down its side still receives every answer.
    fn hold(&mut self, conn: ConnId, held: bool);

    /// Stops (`true`) or restarts (`false`) handing the input of local connection `conn` to
    /// the service. Input that arrives meanwhile is kept (up to the socket's window), and the
    /// peer's TCP window closes. Other reasons to pause (a full send queue, a full cross-shard
    /// queue) are the engine's and independent of this one.
    fn pause(&mut self, conn: ConnId, paused: bool);

    /// Whether the engine wants no more input consumed from local connection `conn` for now
    /// (for any reason: the service's [`Outbox::pause`], its send queue is over the limit, or a
    /// cross-shard queue its requests feed is full). A service stops consuming in
    /// [`Service::on_data`] when this turns true, and is called again when it clears.
    fn input_paused(&self, conn: ConnId) -> bool;

    /// Starts an outbound connection to `addr`, to be served as `tag`, owned by this shard.
    /// Returns its id at once; [`Service::on_connect`] reports the outcome later (bytes sent
    /// before that are written once it is connected). `None` when no connection can be started
    /// (the connection table is full, no socket is available, the engine is stopping).
    fn connect(&mut self, addr: SocketAddr, tag: Tag) -> Option<ConnId>;
}

/// Protocol logic for one shard, driven by an engine.
pub trait Service {
    /// The typed messages shards of this service post to each other.
    type Msg: Send + 'static;

    /// A connection was accepted on this shard, on a listener tagged `tag`.
    fn on_accept(&mut self, conn: ConnId, tag: Tag, peer: SocketAddr, now: Time, out: &mut impl Outbox<Self::Msg>);

    /// The outcome of [`Outbox::connect`] for a connection to be served as `tag`: `Ok` with
    /// the peer's address once connected, or the error (then [`Service::on_close`] follows at
    /// once). A connection closed before its connect finished gets only `on_close`.
    fn on_connect(
        &mut self,
        conn: ConnId,
        tag: Tag,
        result: std::io::Result<SocketAddr>,
        now: Time,
        out: &mut impl Outbox<Self::Msg>,
    ) {
        let _ = (conn, tag, result, now, out);
    }

    /// Bytes arrived on `conn` (a local connection). `data` starts with the bytes not consumed
    /// by the previous call. Returns how many bytes were consumed; the engine keeps the rest
    /// and calls again with more appended (or, after a pause, when input resumes).
    fn on_data(&mut self, conn: ConnId, data: &[u8], now: Time, out: &mut impl Outbox<Self::Msg>) -> usize;

    /// The socket of local connection `conn` is gone (peer closed, error, [`Outbox::close`],
    /// failed connect, or shutdown). Called exactly once per connection.
    fn on_close(&mut self, conn: ConnId, now: Time, out: &mut impl Outbox<Self::Msg>);

    /// The engine is stopping. No input, connections or timers follow; records already posted
    /// between shards are still delivered (and what they post in turn), then every connection
    /// closes and [`Service::on_close`] runs for each.
    fn on_stop(&mut self, now: Time, out: &mut impl Outbox<Self::Msg>) {
        let _ = (now, out);
    }

    /// Shard `from` posted `msg` to this shard.
    fn on_message(&mut self, from: ShardId, msg: Self::Msg, now: Time, out: &mut impl Outbox<Self::Msg>);

    /// The deadline returned by [`Service::next_timer`] has passed. A service does a bounded
    /// amount of work per call (the engine calls again, without sleeping, while the deadline
    /// stays in the past), so that timers cannot starve connections.
    fn on_timer(&mut self, now: Time, out: &mut impl Outbox<Self::Msg>);

    /// The earliest time at which [`Service::on_timer`] should run, if any.
    fn next_timer(&self) -> Option<Time>;

    /// Output the service holds back to write in fewer, larger pieces (ENRP Handle Updates for
    /// peers): `Some(window)` asks for [`Service::on_flush`] `window` after the end of the first
    /// engine iteration that saw it. Finer than [`Time`]: the real engines keep microseconds
    /// (the simulator rounds up to its next millisecond).
    fn gathering(&self) -> Option<core::time::Duration> {
        None
    }

    /// The window [`Service::gathering`] asked for has passed: write what was held back.
    fn on_flush(&mut self, now: Time, out: &mut impl Outbox<Self::Msg>) {
        let _ = (now, out);
    }
}

/// An [`Outbox`] that records what a service asks of it, for driving a service without an
/// engine (tests, examples, benchmarks): the bytes it sends (every connection's, in order), the
/// messages it posts, and the connections it dials, each granted (on shard 0, with slots counted
/// down from `u32::MAX - 1`, far above any engine's connection table).
#[derive(Debug)]
pub struct Recorder<M> {
    /// Every byte sent, in order.
    pub sent: Vec<u8>,
    /// Messages posted, in order.
    pub posts: std::collections::VecDeque<M>,
    /// Addresses dialled, with the id each connection got.
    pub dialled: Vec<(SocketAddr, ConnId)>,
}

impl<M> Default for Recorder<M> {
    fn default() -> Self {
        Self { sent: Vec::new(), posts: std::collections::VecDeque::new(), dialled: Vec::new() }
    }
}

impl<M> Outbox<M> for Recorder<M> {
    fn send(&mut self, _: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        write(&mut self.sent);
    }
    fn post(&mut self, _: ShardId, msg: M) {
        self.posts.push_back(msg);
    }
    fn close(&mut self, _: ConnId) {}
    fn hold(&mut self, _: ConnId, _: bool) {}
    fn pause(&mut self, _: ConnId, _: bool) {}
    fn input_paused(&self, _: ConnId) -> bool {
        false
    }
    fn connect(&mut self, addr: SocketAddr, _: Tag) -> Option<ConnId> {
        let conn = ConnId { shard: 0, generation: 1, slot: u32::MAX - 1 - self.dialled.len() as u32 };
        self.dialled.push((addr, conn));
        Some(conn)
    }
}
