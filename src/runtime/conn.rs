//! The per-shard connection table, shared by both engines: slots with generations (so a stale
//! [`ConnId`] never reaches a newer connection), per-connection reassembly buffers, send queues
//! and the set of connections that need the engine's attention this loop iteration.
//!
//! `H` is the engine's own per-connection handle (the socket and the state of its in-flight
//! operations); everything else here is engine-independent.

use super::tls::TlsSession;
use crate::service::{ConnId, ShardId, Tag};

/// Capacity above which an emptied buffer is released instead of kept for reuse, so one burst
/// does not pin memory on an idle connection forever.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Lifecycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// An outbound connection waiting for the connect to finish; bytes sent meanwhile are
    /// queued.
    Connecting,
    /// Reading and writing.
    Open,
    /// Closing once the queued bytes are written (the service asked, or the peer sent EOF);
    /// further input is ignored and further sends are dropped.
    Draining,
    /// Closing now, dropping queued bytes (I/O error, limit exceeded).
    Aborting,
    /// `on_close` has run; the engine is releasing the socket (on io_uring, waiting for the
    /// kernel to finish in-flight operations). The slot is freed after that.
    Dead,
}

/// Bytes waiting to be written to one connection.
///
/// Two buffers alternate: the service appends to `queued` while the engine writes `inflight`.
/// When `inflight` is done, the two swap. The engine may therefore hand `inflight` to the kernel
/// (io_uring reads it asynchronously) while the service keeps appending: `inflight` is never
/// touched between [`SendQueue::start`] and [`SendQueue::complete`].
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    queued: Vec<u8>,
    inflight: Vec<u8>,
    /// Bytes of `inflight` already written.
    written: usize,
    /// A write of `inflight[written..]` is in progress.
    busy: bool,
}

impl SendQueue {
    /// Bytes accepted from the service and not yet written to the socket.
    pub(crate) fn unsent(&self) -> usize {
        self.queued.len() + self.inflight.len() - self.written
    }

    /// Whether a write is in progress.
    pub(crate) fn busy(&self) -> bool {
        self.busy
    }

    /// The buffer the service appends whole messages to.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.queued
    }

    /// Starts a write: returns the bytes to write, which stay valid and unmodified until
    /// [`SendQueue::complete`]. `None` if nothing is left to write or a write is in progress.
    pub(crate) fn start(&mut self) -> Option<&[u8]> {
        if self.busy {
            return None;
        }
        if self.written == self.inflight.len() {
            if self.queued.is_empty() {
                return None;
            }
            self.inflight.clear();
            self.written = 0;
            std::mem::swap(&mut self.queued, &mut self.inflight);
        }
        self.busy = true;
        Some(&self.inflight[self.written..])
    }

    /// Ends the write started by [`SendQueue::start`]; `n` bytes of it were written.
    pub(crate) fn complete(&mut self, n: usize) {
        self.busy = false;
        self.written = (self.written + n).min(self.inflight.len());
        if self.written == self.inflight.len() {
            self.written = 0;
            if self.inflight.capacity() > KEEP_CAPACITY {
                self.inflight = Vec::new();
            } else {
                self.inflight.clear();
            }
        }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        if self.busy {
            // The engines never free a connection with a write in flight, except when a panic
            // unwinds past the loop. Leaking the buffer then keeps the kernel's pending write
            // from reading freed memory.
            std::mem::forget(std::mem::take(&mut self.inflight));
        }
    }
}

/// Reasons to stop handing a connection's input to the service (bits of [`Conn::paused`]).
pub(crate) mod pause {
    /// Too many bytes are unsent (backpressure from the peer).
    pub(crate) const SEND_QUEUE: u8 = 1;
    /// A cross-shard queue this connection's input fed is full.
    pub(crate) const LINK: u8 = 2;
    /// The service asked (`Outbox::pause`).
    pub(crate) const SERVICE: u8 = 4;
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn<H> {
    /// The engine's handle (socket and in-flight operation state).
    pub(crate) io: H,
    /// What the connection serves (its listener's tag, or the one given to `connect`).
    pub(crate) tag: Tag,
    /// Lifecycle state.
    pub(crate) state: ConnState,
    /// Why input is not handed to the service now (bits of [`pause`]; 0: it is).
    pub(crate) paused: u8,
    /// Received bytes not yet consumed by the service: the tail of a partial message, or input
    /// that arrived while reading was paused.
    pub(crate) pending: Vec<u8>,
    /// Outgoing bytes.
    pub(crate) sendq: SendQueue,
    /// Listed in the table's touched list.
    touched: bool,
    /// The service still owes answers (see `Outbox::hold`): a draining connection waits.
    pub(crate) held: bool,
    /// When a held, draining connection is closed anyway.
    pub(crate) hold_deadline: Option<crate::time::Time>,
    /// Since when reading has been paused because the peer does not take its answers.
    pub(crate) stalled_since: Option<crate::time::Time>,
    /// The peer has closed its sending side: nothing more will arrive.
    pub(crate) eof: bool,
    /// `Some` for a TLS connection: `pending` then holds plaintext, `sendq` ciphertext.
    pub(crate) tls: Option<Box<TlsSession>>,
}

impl<H> Conn<H> {
    /// Bytes the service queued that are not written yet (a TLS connection's plaintext not yet
    /// sealed included).
    pub(crate) fn unsent(&self) -> usize {
        self.sendq.unsent() + self.tls.as_ref().map_or(0, |t| t.unsent())
    }

    /// Whether the engine should be reading this connection.
    pub(crate) fn wants_read(&self) -> bool {
        self.state == ConnState::Open && self.paused == 0 && !self.eof
    }

    /// Whether the engine should close this connection now.
    pub(crate) fn must_close(&self) -> bool {
        match self.state {
            ConnState::Aborting => true,
            ConnState::Draining => self.unsent() == 0 && !self.sendq.busy() && !self.held,
            ConnState::Connecting | ConnState::Open | ConnState::Dead => false,
        }
    }

    /// Releases a large, empty reassembly buffer.
    pub(crate) fn trim_pending(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
    }
}

struct Slot<H> {
    generation: u16,
    conn: Option<Conn<H>>,
}

/// All connections of one shard.
pub(crate) struct ConnTable<H> {
    shard: ShardId,
    slots: Vec<Slot<H>>,
    free: Vec<u32>,
    live: usize,
    max: usize,
    touched: Vec<u32>,
}

impl<H> ConnTable<H> {
    /// An empty table for shard `shard` holding at most `max` connections.
    pub(crate) fn new(shard: ShardId, max: usize) -> Self {
        Self { shard, slots: Vec::new(), free: Vec::new(), live: 0, max, touched: Vec::new() }
    }

    /// Number of connections (in any state).
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Adds a connection in `state` (`Open` when accepted, `Connecting` when dialled), or gives
    /// the handle back when the table is full.
    pub(crate) fn insert(&mut self, io: H, tag: Tag, state: ConnState) -> Result<ConnId, H> {
        if self.live >= self.max {
            return Err(io);
        }
        let conn = Conn {
            io,
            tag,
            state,
            paused: 0,
            pending: Vec::new(),
            sendq: SendQueue::default(),
            touched: false,
            held: false,
            hold_deadline: None,
            stalled_since: None,
            eof: false,
            tls: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let Ok(slot) = u32::try_from(self.slots.len()) else {
                    return Err(conn.io);
                };
                self.slots.push(Slot { generation: 0, conn: None });
                slot
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.conn = Some(conn);
        self.live += 1;
        Ok(ConnId { shard: self.shard, generation: entry.generation, slot })
    }

    /// The connection `id` refers to, if it is still that connection (same shard, same
    /// generation), in any state.
    pub(crate) fn get(&self, id: ConnId) -> Option<&Conn<H>> {
        if id.shard != self.shard {
            return None;
        }
        let s = self.slots.get(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.conn.as_ref()
    }

    /// Mutable access to the connection `id` refers to (see [`ConnTable::get`]).
    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<H>> {
        if id.shard != self.shard {
            return None;
        }
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.conn.as_mut()
    }

    /// Frees the slot of `id`, bumping its generation, and returns the engine handle.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<H> {
        if id.shard != self.shard {
            return None;
        }
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let conn = s.conn.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.live -= 1;
        self.free.push(id.slot);
        Some(conn.io)
    }

    /// Marks `id` as needing the engine's attention this iteration (sends to start, read state
    /// to change, close to perform). Idempotent within an iteration.
    pub(crate) fn touch(&mut self, id: ConnId) {
        if let Some(c) = self.get_mut(id) {
            if !c.touched {
                c.touched = true;
                self.touched.push(id.slot);
            }
        }
    }

    /// The next touched connection, if any.
    pub(crate) fn pop_touched(&mut self) -> Option<ConnId> {
        while let Some(slot) = self.touched.pop() {
            let s = &mut self.slots[slot as usize];
            if let Some(c) = s.conn.as_mut() {
                c.touched = false;
                return Some(ConnId { shard: self.shard, generation: s.generation, slot });
            }
        }
        None
    }

    /// Ids of all connections (for shutdown).
    pub(crate) fn ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(slot, s)| ConnId { shard: self.shard, generation: s.generation, slot: slot as u32 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_protect_reused_slots() {
        let mut t: ConnTable<()> = ConnTable::new(3, 2);
        let a = t.insert((), Tag(0), ConnState::Open).unwrap();
        let b = t.insert((), Tag(0), ConnState::Open).unwrap();
        assert!(t.insert((), Tag(0), ConnState::Open).is_err(), "table is full");
        assert_eq!(a.shard, 3);
        t.remove(a).unwrap();
        let c = t.insert((), Tag(1), ConnState::Connecting).unwrap();
        assert_eq!(c.slot, a.slot, "slot reused");
        assert_eq!(t.get(c).unwrap().tag, Tag(1));
        assert_ne!(c.generation, a.generation);
        assert!(t.get(a).is_none(), "stale id finds nothing");
        assert!(t.get(c).is_some());
        assert!(t.get(b).is_some());
        assert!(t.remove(a).is_none());
        assert!(t.get(ConnId { shard: 4, ..c }).is_none(), "other shard's id finds nothing");
    }

    #[test]
    fn touched_is_deduplicated() {
        let mut t: ConnTable<()> = ConnTable::new(0, 8);
        let a = t.insert((), Tag(0), ConnState::Open).unwrap();
        t.touch(a);
        t.touch(a);
        assert_eq!(t.pop_touched(), Some(a));
        assert_eq!(t.pop_touched(), None);
        t.touch(a);
        t.remove(a);
        assert_eq!(t.pop_touched(), None, "removed connections are skipped");
    }

    #[test]
    fn send_queue_alternates_buffers() {
        let mut q = SendQueue::default();
        q.buffer().extend_from_slice(b"hello");
        assert_eq!(q.unsent(), 5);
        assert_eq!(q.start(), Some(&b"hello"[..]));
        assert!(q.start().is_none(), "one write at a time");
        q.buffer().extend_from_slice(b" world");
        assert_eq!(q.unsent(), 11);
        q.complete(2);
        assert_eq!(q.unsent(), 9);
        assert_eq!(q.start(), Some(&b"llo"[..]));
        q.complete(3);
        assert_eq!(q.start(), Some(&b" world"[..]));
        q.complete(6);
        assert_eq!(q.unsent(), 0);
        assert!(q.start().is_none());
    }
}
