//! The seam between the protocol core and the I/O engines.
//!
//! An engine (io_uring or epoll, TCP today, SCTP later) owns sockets, buffers and threads. A
//! [`Service`] owns protocol state for one shard and sees only bytes, connection ids and time.
//! Engines call the service; the service answers through an [`Outbox`]. Nothing in a service
//! performs I/O, so the same service runs under every engine and in tests without sockets.

use core::net::SocketAddr;

use crate::time::Time;

/// Index of a shard (one per engine thread; shard *i* runs on the *i*-th configured core).
pub type ShardId = u16;

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

/// Where a service's output goes. Implemented by each engine (and by test harnesses).
pub trait Outbox {
    /// Queues bytes for `conn`, wherever its socket lives: `write` appends them to the buffer it
    /// is given (whole messages only). Bytes for a connection of another shard travel there.
    /// Bytes for a connection that has meanwhile closed are dropped.
    fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>));

    /// Hands `bytes` to shard `to`, where [`Service::on_post`] receives them with `conn`.
    fn post(&mut self, to: ShardId, conn: ConnId, bytes: &[u8]);

    /// Closes `conn` once the bytes already queued for it are written.
    fn close(&mut self, conn: ConnId);

    /// Holds local connection `conn` open (`true`) while the service still owes it answers that
    /// other shards are preparing, or releases it (`false`). A held connection whose peer has
    /// closed its sending side is not closed when its queue runs empty, but when it is released
    /// (and its queue is empty), so that a client that sends its requests and then shuts down
    /// its side still receives every answer.
    fn hold(&mut self, conn: ConnId, held: bool) {
        let _ = (conn, held);
    }
}

/// Protocol logic for one shard, driven by an engine.
pub trait Service {
    /// A connection was accepted on this shard.
    fn on_accept(&mut self, conn: ConnId, peer: SocketAddr, now: Time, out: &mut impl Outbox);

    /// Bytes arrived on `conn` (a local connection). `data` starts with the bytes not consumed
    /// by the previous call. Returns how many bytes were consumed; the engine keeps the rest
    /// and calls again with more appended.
    fn on_data(&mut self, conn: ConnId, data: &[u8], now: Time, out: &mut impl Outbox) -> usize;

    /// The socket of local connection `conn` is gone (peer closed, error, or [`Outbox::close`]).
    fn on_close(&mut self, conn: ConnId, now: Time, out: &mut impl Outbox);

    /// Another shard posted `bytes` with `conn` to this shard.
    fn on_post(&mut self, from: ShardId, conn: ConnId, bytes: &[u8], now: Time, out: &mut impl Outbox);

    /// The deadline returned by [`Service::next_timer`] has passed.
    fn on_timer(&mut self, now: Time, out: &mut impl Outbox);

    /// The earliest time at which [`Service::on_timer`] should run, if any.
    fn next_timer(&self) -> Option<Time>;
}
