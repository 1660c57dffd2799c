//! Everything a shard does above the socket layer, shared by both engines: the [`Outbox`] the
//! service writes to, handing received bytes to the service (zero copy where possible,
//! reassembly otherwise), backpressure, cross-shard delivery, timers, and the loop that ties
//! them to an engine's [`Driver`].
//!
//! An engine only moves bytes between sockets and this core: it reports what the kernel did
//! (accepted, received, sent, failed) and, for each connection the core marks as touched, makes
//! the socket match the connection's wanted state (start a write, pause or resume reading, close).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::Clock;
use super::conn::{ConnState, ConnTable};
use super::mailbox::{Incoming, Outgoing, CLOSE, POST, SEND};
use super::signals::Signals;
use super::stats::{Counter, StatsCell};
use super::EngineError;
use crate::service::{ConnId, Outbox, Service, ShardId};
use crate::time::Time;

/// Most records taken from one inbound queue per loop iteration, so a flood from one shard
/// cannot starve this shard's sockets.
const INBOUND_BUDGET: usize = 1024;
/// How often a shard with spilled cross-shard records retries them while otherwise idle.
const SPILL_RETRY: Duration = Duration::from_millis(1);

/// Per-connection limits, derived from the engine configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Unsent bytes above which reading pauses.
    pub(crate) pause_above: usize,
    /// Unsent bytes at or below which a paused connection reads again (half the pause limit, so
    /// a connection does not flap between the two states on every write).
    pub(crate) resume_at: usize,
    /// Unsent bytes above which the connection is aborted.
    pub(crate) abort_above: usize,
    /// Largest message the service may need to see whole.
    pub(crate) max_message: usize,
    /// Most buffered input handed to the service in one call, which bounds how much output one
    /// call can add before backpressure is checked again.
    pub(crate) window: usize,
}

/// Engine-specific I/O for one shard.
pub(crate) trait Driver {
    /// The engine's per-connection handle.
    type Conn;

    /// Submits queued operations, waits up to `timeout` (`None`: until something happens) and
    /// reports what completed to `core`.
    fn poll<S: Service>(
        &mut self,
        core: &mut ShardCore<S, Self::Conn>,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError>;

    /// Makes connection `id`'s socket match its wanted state.
    fn reconcile<S: Service>(&mut self, core: &mut ShardCore<S, Self::Conn>, id: ConnId);

    /// Wakes the given shards, which have new cross-shard records.
    fn wake(&mut self, signals: &Signals, targets: &[ShardId]);

    /// Whether the driver has work it can do without waiting (so the next poll must not sleep).
    fn busy(&self) -> bool;

    /// An instant the driver wants to be polled at even if nothing happens (a retry).
    fn deadline(&self) -> Option<Instant>;

    /// Closes every socket and waits for the kernel to let go of the shard's memory.
    fn shutdown<S: Service>(&mut self, core: &mut ShardCore<S, Self::Conn>);
}

/// What the service writes to: the connection table, the cross-shard queues and local posts.
pub(crate) struct Plumbing<H> {
    me: ShardId,
    shard_count: usize,
    /// The shard's connections.
    pub(crate) conns: ConnTable<H>,
    out: Outgoing,
    local_posts: VecDeque<(ConnId, Vec<u8>)>,
    scratch: Vec<u8>,
    limits: Limits,
    stats: Arc<StatsCell>,
    high_water: usize,
}

impl<H> Plumbing<H> {
    /// Appends bytes produced by `write` to local connection `id`'s send queue.
    fn queue_local(&mut self, id: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(id) else {
            self.stats.bump(Counter::StaleDrops);
            return;
        };
        if !matches!(conn.state, ConnState::Open | ConnState::Draining) {
            self.stats.bump(Counter::StaleDrops);
            return;
        }
        let before = conn.sendq.buffer().len();
        write(conn.sendq.buffer());
        if conn.sendq.buffer().len() == before {
            return;
        }
        let unsent = conn.sendq.unsent();
        let mut event = None;
        if unsent > self.limits.abort_above {
            conn.state = ConnState::Aborting;
            event = Some(Counter::SendQueueAborts);
        } else if unsent > self.limits.pause_above && !conn.paused && conn.state == ConnState::Open {
            conn.paused = true;
            event = Some(Counter::ReadPauses);
        }
        if unsent > self.high_water {
            self.high_water = unsent;
            self.stats.high_water(unsent);
        }
        if let Some(c) = event {
            if matches!(c, Counter::SendQueueAborts) {
                tracing::debug!(conn = ?id, unsent, "send queue over its hard limit; aborting connection");
            }
            self.stats.bump(c);
        }
        self.conns.touch(id);
    }

    /// Local connection `id` is to close once its queued bytes are written.
    fn close_local(&mut self, id: ConnId) {
        match self.conns.get_mut(id) {
            Some(conn) if conn.state == ConnState::Open => {
                conn.state = ConnState::Draining;
                conn.pending = Vec::new();
                self.conns.touch(id);
            }
            Some(_) => {}
            None => self.stats.bump(Counter::StaleDrops),
        }
    }
}

impl<H> Outbox for Plumbing<H> {
    fn send(&mut self, conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        if conn.shard == self.me {
            self.queue_local(conn, write);
        } else if usize::from(conn.shard) < self.shard_count {
            self.scratch.clear();
            write(&mut self.scratch);
            if !self.scratch.is_empty() {
                self.out.push(conn.shard, SEND, conn, &self.scratch);
            }
        } else {
            self.stats.bump(Counter::StaleDrops);
        }
    }

    fn post(&mut self, to: ShardId, conn: ConnId, bytes: &[u8]) {
        if to == self.me {
            self.local_posts.push_back((conn, bytes.to_vec()));
        } else {
            self.out.push(to, POST, conn, bytes);
        }
    }

    fn hold(&mut self, conn: ConnId, held: bool) {
        if conn.shard != self.me {
            return;
        }
        if let Some(c) = self.conns.get_mut(conn) {
            if c.held != held {
                c.held = held;
                // A released, draining connection may be due to close now.
                self.conns.touch(conn);
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        if conn.shard == self.me {
            self.close_local(conn);
        } else if usize::from(conn.shard) < self.shard_count {
            self.out.push(conn.shard, CLOSE, conn, &[]);
        } else {
            self.stats.bump(Counter::StaleDrops);
        }
    }
}

/// One shard's service and everything around it that is not socket I/O.
pub(crate) struct ShardCore<S, H> {
    me: ShardId,
    service: S,
    /// The outbox state (connections, queues).
    pub(crate) io: Plumbing<H>,
    inbox: Incoming,
    signals: Arc<Signals>,
    clock: Clock,
    now: Time,
    wakes: Vec<ShardId>,
}

/// What a shard needs besides its service and driver.
pub(crate) struct CoreParts {
    pub(crate) me: ShardId,
    pub(crate) shard_count: usize,
    pub(crate) out: Outgoing,
    pub(crate) inbox: Incoming,
    pub(crate) signals: Arc<Signals>,
    pub(crate) stats: Arc<StatsCell>,
    pub(crate) clock: Clock,
    pub(crate) limits: Limits,
    pub(crate) max_connections: usize,
}

impl<S: Service, H> ShardCore<S, H> {
    /// Assembles a shard core.
    pub(crate) fn new(service: S, p: CoreParts) -> Self {
        Self {
            me: p.me,
            service,
            io: Plumbing {
                me: p.me,
                shard_count: p.shard_count,
                conns: ConnTable::new(p.me, p.max_connections),
                out: p.out,
                local_posts: VecDeque::new(),
                scratch: Vec::new(),
                limits: p.limits,
                stats: p.stats,
                high_water: 0,
            },
            inbox: p.inbox,
            signals: p.signals,
            now: p.clock.now(),
            clock: p.clock,
            wakes: Vec::new(),
        }
    }

    /// Whether the engine is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.signals.stopping()
    }

    /// A new connection. Gives the handle back if the shard is full or stopping; the engine
    /// then closes the socket.
    pub(crate) fn accept(&mut self, handle: H, peer: SocketAddr) -> Result<ConnId, H> {
        if self.stopping() {
            return Err(handle);
        }
        match self.io.conns.insert(handle) {
            Ok(id) => {
                self.io.stats.bump(Counter::Accepted);
                self.service.on_accept(id, peer, self.now, &mut self.io);
                self.io.conns.touch(id);
                Ok(id)
            }
            Err(h) => {
                self.io.stats.bump(Counter::Rejected);
                Err(h)
            }
        }
    }

    /// Bytes arrived on `id`. When nothing is buffered for the connection, the service reads
    /// them in place (straight out of the engine's receive buffer); only an unconsumed tail (a
    /// partial message, or input that arrives while reading is paused) is copied.
    pub(crate) fn received(&mut self, id: ConnId, data: &[u8]) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        if conn.state != ConnState::Open {
            return;
        }
        if conn.paused || !conn.pending.is_empty() {
            conn.pending.extend_from_slice(data);
            if !conn.paused {
                self.deliver_pending(id);
            }
            return;
        }
        let mut rest = data;
        loop {
            let n = self.service.on_data(id, rest, self.now, &mut self.io).min(rest.len());
            rest = &rest[n..];
            if rest.is_empty() {
                return;
            }
            let Some(conn) = self.io.conns.get(id) else {
                return;
            };
            if conn.state != ConnState::Open {
                return;
            }
            if n == 0 {
                if rest.len() >= self.io.limits.max_message {
                    self.oversize(id);
                    return;
                }
                break;
            }
            if conn.paused {
                break;
            }
        }
        if let Some(conn) = self.io.conns.get_mut(id) {
            conn.pending.extend_from_slice(rest);
        }
    }

    /// Hands buffered input to the service, a window at a time, until it stops consuming or the
    /// connection pauses.
    fn deliver_pending(&mut self, id: ConnId) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        let mut buf = std::mem::take(&mut conn.pending);
        let window = self.io.limits.window;
        let mut off = 0;
        let mut oversize = false;
        while off < buf.len() {
            let end = buf.len().min(off + window);
            let n = self.service.on_data(id, &buf[off..end], self.now, &mut self.io).min(end - off);
            off += n;
            let Some(conn) = self.io.conns.get(id) else {
                return;
            };
            if conn.state != ConnState::Open {
                off = buf.len();
                break;
            }
            if n == 0 {
                oversize = end - off >= self.io.limits.max_message;
                break;
            }
            if conn.paused {
                break;
            }
        }
        buf.drain(..off);
        if let Some(conn) = self.io.conns.get_mut(id) {
            conn.pending = buf;
            conn.trim_pending();
        }
        if oversize {
            self.oversize(id);
        }
    }

    fn oversize(&mut self, id: ConnId) {
        tracing::debug!(conn = ?id, max = self.io.limits.max_message, "message too large; closing connection");
        self.io.stats.bump(Counter::OversizeCloses);
        self.abort(id);
    }

    /// The peer closed its side: flush what is queued, then close.
    pub(crate) fn eof(&mut self, id: ConnId) {
        self.io.close_local(id);
    }

    /// The connection failed (reset, error): close it now.
    pub(crate) fn failed(&mut self, id: ConnId, error: &std::io::Error) {
        tracing::debug!(conn = ?id, %error, "connection failed");
        self.abort(id);
    }

    fn abort(&mut self, id: ConnId) {
        if let Some(conn) = self.io.conns.get_mut(id) {
            if conn.state != ConnState::Dead {
                conn.state = ConnState::Aborting;
                conn.pending = Vec::new();
                self.io.conns.touch(id);
            }
        }
    }

    /// A write started with `SendQueue::start` finished with `n` bytes written.
    pub(crate) fn sent(&mut self, id: ConnId, n: usize) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        conn.sendq.complete(n);
        let resume = conn.paused && conn.sendq.unsent() <= self.io.limits.resume_at;
        if resume {
            conn.paused = false;
        }
        self.io.conns.touch(id);
        if resume && conn_open(&self.io.conns, id) {
            self.deliver_pending(id);
        }
    }

    /// A write started with `SendQueue::start` failed: the connection is aborted.
    pub(crate) fn send_failed(&mut self, id: ConnId, error: &std::io::Error) {
        if let Some(conn) = self.io.conns.get_mut(id) {
            conn.sendq.complete(0);
        }
        self.failed(id, error);
    }

    /// The engine is closing `id`'s socket: the service hears of it now, and the connection
    /// takes no more bytes. The engine calls [`ShardCore::release`] once the socket is gone.
    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(conn) = self.io.conns.get_mut(id) else {
            return;
        };
        if conn.state == ConnState::Dead {
            return;
        }
        conn.state = ConnState::Dead;
        conn.pending = Vec::new();
        self.io.stats.bump(Counter::Closed);
        self.service.on_close(id, self.now, &mut self.io);
    }

    /// Frees `id`'s slot (a later connection there gets a new generation).
    pub(crate) fn release(&mut self, id: ConnId) -> Option<H> {
        self.io.conns.remove(id)
    }

    /// Closes every connection (shutdown): `on_close` runs for each.
    pub(crate) fn close_all(&mut self) -> Vec<ConnId> {
        let ids = self.io.conns.ids();
        for &id in &ids {
            self.close(id);
        }
        ids
    }

    /// Delivers cross-shard records and local posts, and runs the service's timer. Returns
    /// whether work was left for the next iteration.
    fn run_inbound(&mut self) -> bool {
        let mut more = false;
        if self.inbox.shards() > 1 {
            self.signals.clear_notified(self.me);
            for from in 0..self.inbox.shards() {
                let Some(queue) = self.inbox.queue_from(from) else {
                    continue;
                };
                let mut budget = INBOUND_BUDGET;
                while budget > 0 {
                    let Some(rec) = queue.peek() else { break };
                    let conn = ConnId::from_u64(rec.tag);
                    match rec.kind {
                        POST => self.service.on_post(from as ShardId, conn, rec.bytes, self.now, &mut self.io),
                        SEND => {
                            let bytes = rec.bytes;
                            self.io.queue_local(conn, &mut |buf| buf.extend_from_slice(bytes));
                        }
                        CLOSE => self.io.close_local(conn),
                        _ => {}
                    }
                    queue.pop();
                    budget -= 1;
                }
                more |= budget == 0;
            }
        }
        for _ in 0..self.io.local_posts.len() {
            let Some((conn, bytes)) = self.io.local_posts.pop_front() else {
                break;
            };
            self.service.on_post(self.me, conn, &bytes, self.now, &mut self.io);
        }
        more |= !self.io.local_posts.is_empty();
        if self.service.next_timer().is_some_and(|t| t <= self.now) {
            self.service.on_timer(self.now, &mut self.io);
        }
        more
    }

    /// How long the next poll may sleep.
    fn wait_timeout(&self, busy: bool, spilling: bool, driver_deadline: Option<Instant>) -> Option<Duration> {
        if busy {
            return Some(Duration::ZERO);
        }
        let mut deadline = driver_deadline;
        let mut earliest = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        if let Some(at) = self.service.next_timer().and_then(|t| self.clock.instant(t)) {
            earliest(at);
        }
        let now = Instant::now();
        if spilling {
            earliest(now + SPILL_RETRY);
        }
        deadline.map(|d| d.saturating_duration_since(now))
    }
}

fn conn_open<H>(conns: &ConnTable<H>, id: ConnId) -> bool {
    conns.get(id).is_some_and(|c| c.state == ConnState::Open)
}

/// Runs a shard until the engine stops or the driver fails.
pub(crate) fn run<S: Service, D: Driver>(core: &mut ShardCore<S, D::Conn>, driver: &mut D) -> Result<(), EngineError> {
    let mut timeout = Some(Duration::ZERO);
    let result = loop {
        if let Err(e) = driver.poll(core, timeout) {
            break Err(e);
        }
        core.now = core.clock.now();
        if core.stopping() {
            break Ok(());
        }
        let mut more = core.run_inbound();
        reconcile_touched(core, driver);
        // Input read during reconcile (epoll) may have posted to this shard itself.
        more |= !core.io.local_posts.is_empty();
        let spilling = core.io.out.retry_spill();
        core.io.out.take_wakes(&core.signals, &mut core.wakes);
        if !core.wakes.is_empty() {
            driver.wake(&core.signals, &core.wakes);
            core.wakes.clear();
        }
        timeout = core.wait_timeout(more || driver.busy(), spilling, driver.deadline());
    };
    driver.shutdown(core);
    result
}

/// Lets the driver act on every touched connection (including ones touched while doing so).
pub(crate) fn reconcile_touched<S: Service, D: Driver>(core: &mut ShardCore<S, D::Conn>, driver: &mut D) {
    while let Some(id) = core.io.conns.pop_touched() {
        driver.reconcile(core, id);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::runtime::mailbox::mesh;

    #[derive(Default)]
    struct Log {
        /// (address, bytes) of every `on_data` call.
        calls: Vec<(usize, Vec<u8>)>,
        frames: Vec<Vec<u8>>,
        closed: u32,
    }

    /// Frames are a length byte and that many bytes; each frame is answered with `reply` bytes.
    struct Frames {
        log: Rc<RefCell<Log>>,
        reply: usize,
    }

    impl Service for Frames {
        fn on_accept(&mut self, _: ConnId, _: SocketAddr, _: Time, _: &mut impl Outbox) {}
        fn on_data(&mut self, conn: ConnId, data: &[u8], _: Time, out: &mut impl Outbox) -> usize {
            let mut log = self.log.borrow_mut();
            log.calls.push((data.as_ptr() as usize, data.to_vec()));
            let mut off = 0;
            while let Some(&len) = data.get(off) {
                let end = off + 1 + len as usize;
                if end > data.len() {
                    break;
                }
                log.frames.push(data[off + 1..end].to_vec());
                let reply = self.reply;
                out.send(conn, &mut |b| b.resize(b.len() + reply, 0));
                off = end;
            }
            off
        }
        fn on_close(&mut self, _: ConnId, _: Time, _: &mut impl Outbox) {
            self.log.borrow_mut().closed += 1;
        }
        fn on_post(&mut self, _: ShardId, _: ConnId, _: &[u8], _: Time, _: &mut impl Outbox) {}
        fn on_timer(&mut self, _: Time, _: &mut impl Outbox) {}
        fn next_timer(&self) -> Option<Time> {
            None
        }
    }

    fn core(reply: usize, limits: Limits) -> (ShardCore<Frames, ()>, Rc<RefCell<Log>>, Arc<StatsCell>) {
        let stats: Vec<Arc<StatsCell>> = vec![Arc::default()];
        let (out, inbox) = mesh(1, 256, 1024, &stats).pop().unwrap();
        let log = Rc::new(RefCell::new(Log::default()));
        let parts = CoreParts {
            me: 0,
            shard_count: 1,
            out,
            inbox,
            signals: Arc::new(Signals::new(1)),
            stats: Arc::clone(&stats[0]),
            clock: Clock::start(),
            limits,
            max_connections: 4,
        };
        (ShardCore::new(Frames { log: Rc::clone(&log), reply }, parts), log, Arc::clone(&stats[0]))
    }

    fn limits() -> Limits {
        Limits { pause_above: 100, resume_at: 50, abort_above: 10_000, max_message: 64, window: 64 }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn whole_messages_are_read_in_place_and_tails_reassembled() {
        let (mut core, log, _) = core(0, limits());
        let id = core.accept((), peer()).unwrap();
        // Two whole frames and the start of a third, in one "receive buffer".
        let buf = [2, b'a', b'b', 1, b'c', 3, b'd'];
        core.received(id, &buf);
        {
            let l = log.borrow();
            assert_eq!(l.calls[0].0, buf.as_ptr() as usize, "first call reads the buffer in place");
            assert_eq!(l.frames, vec![b"ab".to_vec(), b"c".to_vec()]);
        }
        assert_eq!(core.io.conns.get(id).unwrap().pending, [3, b'd'], "only the tail is copied");
        core.received(id, b"e");
        core.received(id, &[b'f', 1, b'g']);
        let l = log.borrow();
        assert_eq!(l.frames[2..], [b"def".to_vec(), b"g".to_vec()]);
        assert!(core.io.conns.get(id).unwrap().pending.is_empty());
    }

    #[test]
    fn unsent_bytes_pause_and_resume_input() {
        let (mut core, log, stats) = core(40, limits());
        let id = core.accept((), peer()).unwrap();
        core.received(id, &[0, 0, 0, 0]); // four frames: 160 unsent bytes
        assert!(core.io.conns.get(id).unwrap().paused);
        assert_eq!(stats.snapshot().read_pauses, 1);
        // Input while paused is kept, not handed over.
        let calls = log.borrow().calls.len();
        core.received(id, &[0, 0]);
        assert_eq!(log.borrow().calls.len(), calls);
        assert_eq!(core.io.conns.get(id).unwrap().pending, [0, 0]);
        // The engine writes 100 of 160 bytes: 60 left, above the resume mark.
        assert!(core.io.conns.get_mut(id).unwrap().sendq.start().is_some());
        core.sent(id, 100);
        assert!(core.io.conns.get(id).unwrap().paused);
        // 20 more: 40 left, resume, and the kept input is delivered; its replies (80 bytes)
        // push the queue over the limit again.
        assert!(core.io.conns.get_mut(id).unwrap().sendq.start().is_some());
        core.sent(id, 20);
        let c = core.io.conns.get(id).unwrap();
        assert!(c.pending.is_empty());
        assert_eq!(log.borrow().frames.len(), 6);
        assert_eq!(c.sendq.unsent(), 120);
        assert!(c.paused);
        assert_eq!(stats.snapshot().read_pauses, 2);
    }

    #[test]
    fn unframeable_input_closes_the_connection() {
        let (mut core, _, stats) = core(0, limits());
        let id = core.accept((), peer()).unwrap();
        core.received(id, &[200; 40]);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Open, "40 < 64: wait for more");
        core.received(id, &[0; 40]);
        assert_eq!(core.io.conns.get(id).unwrap().state, ConnState::Aborting);
        assert_eq!(stats.snapshot().oversize_closes, 1);
    }

    #[test]
    fn stale_ids_get_nothing() {
        let (mut core, log, stats) = core(0, limits());
        let old = core.accept((), peer()).unwrap();
        core.close(old);
        assert_eq!(log.borrow().closed, 1);
        core.io.send(old, &mut |b| b.push(1));
        assert!(core.release(old).is_some());
        let new = core.accept((), peer()).unwrap();
        assert_eq!(new.slot, old.slot);
        core.io.send(old, &mut |b| b.push(1));
        core.io.close(old);
        assert_eq!(core.io.conns.get(new).unwrap().sendq.unsent(), 0);
        assert_eq!(core.io.conns.get(new).unwrap().state, ConnState::Open);
        assert_eq!(stats.snapshot().stale_drops, 3);
    }
}
