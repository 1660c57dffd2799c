//! Flags and wake-up handles shared by all shards of one engine: the stop flag, the per-shard
//! "already notified" flag that collapses many cross-shard pushes into one wake-up, and the
//! handles used to wake a shard from outside (eventfd or mio waker) or from another io_uring
//! shard (a duplicate of its ring fd, target of `IORING_OP_MSG_RING`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use std::os::fd::AsRawFd;

use crate::service::ShardId;

/// How a shard is woken by a thread that has no ring of its own (shutdown handle, epoll peers).
#[derive(Debug)]
pub(crate) enum RemoteWake {
    /// An eventfd the shard's io_uring keeps a read armed on.
    EventFd(File),
    /// The mio waker registered in the shard's poll.
    Mio(mio::Waker),
}

impl RemoteWake {
    fn wake(&self) -> io::Result<()> {
        match self {
            // An eventfd write adds to a 64-bit counter; it never blocks in practice.
            RemoteWake::EventFd(f) => (&*f).write_all(&1u64.to_ne_bytes()),
            RemoteWake::Mio(w) => w.wake(),
        }
    }
}

/// One shard's wake-up state.
#[derive(Debug, Default)]
pub(crate) struct ShardSignal {
    /// Set by a producer that pushed to this shard and sent (or is about to send) a wake-up;
    /// cleared by the shard just before it drains its inbound queues.
    notified: AtomicBool,
    remote: OnceLock<RemoteWake>,
    /// A duplicate of the shard's ring fd. Holding a duplicate (not the raw number) means the fd
    /// can never be closed and reused while another shard may still send `MSG_RING` to it.
    ring: OnceLock<OwnedFd>,
}

/// Shared state of all shards of one engine.
#[derive(Debug)]
pub(crate) struct Signals {
    stop: AtomicBool,
    shards: Box<[ShardSignal]>,
    drain: Drain,
}

/// Termination detection for a stopping engine: every record handed from a shard to a shard
/// (itself included) is counted where it is sent and again once it has been handled, and the
/// engine is quiescent when the two totals agree. Shards keep plain counts while running and
/// add them here when they stop taking input; from then on they count here directly (so no
/// atomic is touched on the hot path).
///
/// Reading every `handled` before any `sent` makes one pass enough: a record is counted as
/// sent before anyone can see it and as handled only after what it caused was sent, so the true
/// totals always have sent >= handled; at the moment between the two passes the true handled
/// total is at least the one read and the true sent total at most the one read, so equal reads
/// mean equal totals then: nothing in flight or being handled. With no input and no timers
/// nothing new starts, so it stays that way.
#[derive(Debug)]
struct Drain {
    /// Shards that stopped taking input and published their counts.
    entered: AtomicUsize,
    /// Set by the first shard that sees the totals agree.
    quiet: AtomicBool,
    sent: Box<[AtomicU64]>,
    handled: Box<[AtomicU64]>,
}

impl Signals {
    /// Signals for `n` shards.
    pub(crate) fn new(n: usize) -> Self {
        let counts = || (0..n).map(|_| AtomicU64::new(0)).collect();
        let drain =
            Drain { entered: AtomicUsize::new(0), quiet: AtomicBool::new(false), sent: counts(), handled: counts() };
        Self { stop: AtomicBool::new(false), shards: (0..n).map(|_| ShardSignal::default()).collect(), drain }
    }

    /// Shard `me` stopped taking input, having sent and handled these many records so far.
    pub(crate) fn enter_drain(&self, me: ShardId, sent: u64, handled: u64) {
        let i = usize::from(me);
        self.drain.sent[i].fetch_add(sent, Ordering::SeqCst);
        self.drain.handled[i].fetch_add(handled, Ordering::SeqCst);
        self.drain.entered.fetch_add(1, Ordering::SeqCst);
    }

    /// While draining: shard `me` sends one more record (count it before anyone can see it).
    pub(crate) fn drain_sent(&self, me: ShardId) {
        self.drain.sent[usize::from(me)].fetch_add(1, Ordering::SeqCst);
    }

    /// While draining: shard `me` has handled one more record (count it after what it sent).
    pub(crate) fn drain_handled(&self, me: ShardId) {
        self.drain.handled[usize::from(me)].fetch_add(1, Ordering::SeqCst);
    }

    /// Whether every shard has stopped taking input and no record is in flight or being
    /// handled anywhere (see [`Drain`]). Once true it stays true.
    pub(crate) fn quiescent(&self) -> bool {
        let d = &self.drain;
        if d.quiet.load(Ordering::SeqCst) {
            return true;
        }
        if d.entered.load(Ordering::SeqCst) < self.shards.len() {
            return false;
        }
        let handled: u64 = d.handled.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        let sent: u64 = d.sent.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        if handled == sent {
            d.quiet.store(true, Ordering::SeqCst);
        }
        handled == sent
    }

    /// Asks every shard to stop, and wakes them all.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for (i, _) in self.shards.iter().enumerate() {
            self.wake_remote(i as ShardId);
        }
    }

    /// Whether stop was requested.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Registers how shard `me` is woken from outside.
    pub(crate) fn set_remote(&self, me: ShardId, wake: RemoteWake) {
        if let Some(s) = self.shards.get(me as usize) {
            let _ = s.remote.set(wake);
        }
    }

    /// Registers shard `me`'s ring fd (a duplicate is kept) as a `MSG_RING` target.
    pub(crate) fn set_ring(&self, me: ShardId, fd: RawFd) -> io::Result<()> {
        // SAFETY: `fd` is a valid, open ring fd owned by the calling shard; `fcntl(F_DUPFD_CLOEXEC)`
        // only reads it and returns a new descriptor (or -1).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        if let Some(s) = self.shards.get(me as usize) {
            let _ = s.ring.set(owned);
        }
        Ok(())
    }

    /// The ring fd of shard `target`, if it runs io_uring.
    pub(crate) fn ring_fd(&self, target: ShardId) -> Option<RawFd> {
        self.shards.get(target as usize)?.ring.get().map(AsRawFd::as_raw_fd)
    }

    /// Producer side: records that `target` has new items. Returns `true` when the caller must
    /// send a wake-up (nobody else has since the target last drained).
    ///
    /// AcqRel on both sides: if this swap comes after the target's clearing swap, it reads
    /// `false` and we wake the target; if it comes before, the target's clearing swap reads our
    /// value and so synchronizes with it, and the target's drain sees everything we pushed.
    pub(crate) fn mark_notified(&self, target: ShardId) -> bool {
        self.shards.get(target as usize).is_some_and(|s| !s.notified.swap(true, Ordering::AcqRel))
    }

    /// Consumer side: called by shard `me` right before draining its inbound queues.
    pub(crate) fn clear_notified(&self, me: ShardId) {
        if let Some(s) = self.shards.get(me as usize) {
            s.notified.swap(false, Ordering::AcqRel);
        }
    }

    /// Wakes shard `target` through its remote handle (eventfd or mio waker).
    pub(crate) fn wake_remote(&self, target: ShardId) {
        if let Some(w) = self.shards.get(target as usize).and_then(|s| s.remote.get()) {
            if let Err(e) = w.wake() {
                tracing::debug!(shard = target, error = %e, "wake-up failed");
            }
        }
    }
}

/// Creates a blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<File> {
    // SAFETY: plain syscall with constant arguments; returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
