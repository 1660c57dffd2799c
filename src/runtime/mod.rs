//! The thread-per-core engine: one thread per configured shard, each (optionally) pinned to a
//! core, with its own listener on the shared address (`SO_REUSEPORT`), its own connections and
//! its own [`Service`] instance. Shards talk only through lock-free single-producer,
//! single-consumer queues. The only module with syscalls and `unsafe`.
//!
//! Two engines drive the same shard core ([`EngineKind`]): io_uring (multishot accept and
//! receive, provided buffer ring, batched submission, `MSG_RING` wake-ups) and a portable epoll
//! engine for hosts where io_uring is unavailable or blocked. Everything above the socket layer
//! (connection table, reassembly, send queues and backpressure, cross-shard routing, timers) is
//! shared, in `shard.rs`, `conn.rs` and `mailbox.rs`.
//!
//! # How it works
//!
//! **Receiving.** Each io_uring shard registers a provided buffer ring (`buffer_count` buffers
//! of `buffer_size` bytes) and keeps one multishot receive armed per connection. A completion
//! names the buffer the kernel filled; the service's `on_data` reads it in place. Whatever it
//! does not consume (the start of a message cut by the buffer's end) is copied into the
//! connection's reassembly buffer, and the next input is appended there and handed on from
//! it. Buffers go back to the ring right after each batch of completions and are republished
//! with one store, so the ring never drains because of a slow connection; if it runs dry
//! anyway (`ENOBUFS`), the receive is re-armed after the batch. The epoll engine reads into one
//! per-shard buffer and uses the same path.
//!
//! **Sending.** `Outbox::send` appends whole messages to the connection's send queue (two
//! alternating buffers: the kernel writes one while the service appends to the other). At the
//! end of a loop iteration each connection with queued bytes gets one send; every operation of
//! the iteration goes to the kernel in the single `io_uring_enter` that also waits.
//!
//! **Backpressure.** When a connection's unsent bytes exceed `max_send_queue_bytes`, its input
//! stops being handed to the service and its receive is cancelled (epoll: it is not read), so
//! the peer's TCP window closes; input already received is kept. Reading resumes when half is
//! written. Memory per connection is therefore bounded by the limit plus the replies to one
//! call's worth of input (one buffer, or `max(max_message_size, buffer_size)` of kept input),
//! and a hard limit (`max_send_queue_hard_bytes`) aborts a connection whose service keeps
//! sending unprompted to a peer that never reads. Other connections are unaffected.
//!
//! **Cross-shard.** Each ordered pair of shards has a bounded, wait-free SPSC queue (`rtrb`)
//! of typed records: the service's messages ([`Service::Msg`]), and sends to and closes of
//! connections owned by the target. Nothing is ever dropped: a record that finds its queue full
//! waits in a FIFO overflow list (retried every iteration, and at least every millisecond),
//! and the connection whose input caused it stops being read until every overflow has drained,
//! while timer work waits too; so the overflow stays bounded without a limit that would have
//! to drop (`shard.rs` gives the argument). Wake-ups are collapsed to at most one per target
//! per drain, and sent with `IORING_OP_MSG_RING` ([`CrossShardWake`]): it rides the submission
//! the sender makes anyway, so it costs no system call of its own, where an eventfd costs a
//! `write(2)` plus a re-armed read. The epoll engine uses mio's waker.
//!
//! **Listeners and outbound connections.** Each shard listens on every configured address
//! ([`Listen`]), each tagged with what it serves ([`Tag`]); the service learns the tag of each
//! accepted connection. A service dials out with [`crate::service::Outbox::connect`]; both
//! engines connect without blocking and report the outcome to [`Service::on_connect`].
//!
//! **TLS.** A listener may speak TLS ([`Listen::with_tls`]), and so may the outbound
//! connections of a tag ([`EngineConfig::dial_tls`]). TLS runs in the shard core, shared by
//! both engines (`tls.rs`): the service sees plaintext, hears of an accepted TLS connection
//! only once its handshake has completed, and of a dialled one's outcome only then too. A
//! failed or stalled handshake ([`EngineConfig::tls_handshake_timeout`]) closes that connection
//! alone; failures are counted ([`ShardStats::tls_failures`]) and logged at most every few
//! seconds per shard. The simulator ([`sim`]) runs plaintext only.
//!
//! **Timers.** The wait of each iteration is bounded by the service's `next_timer()`
//! (`io_uring_enter` with a timeout argument, `epoll_wait` with a timeout). A service does a
//! bounded amount of timer work per call and is called again, without sleeping, while work is
//! due, so a bulk expiry cannot stall a shard's connections. Output a service gathers
//! (`Service::gathering`, e.g. ENRP Handle Updates for peers) bounds the wait too, in
//! microseconds: `on_flush` runs once the window after the iteration that started it has passed
//! (io_uring waits to the microsecond; `epoll_wait` takes whole milliseconds, rounded up, so on
//! epoll a window shorter than that is served a little late).
//!
//! **Closing.** A connection closes when the peer closes (after its queued replies are written),
//! on an error, or when the service calls `Outbox::close` (after the bytes already queued are
//! written). Input the peer sent before closing its side is still handed to the service. A
//! connection the service holds (`Outbox::hold`) stays open after the peer's half-close until it
//! is released or `max_hold` passes. `on_close` runs on the owning shard; the slot is reused only
//! with a new generation, so sends to a stale `ConnId` are dropped, wherever they come from.
//!
//! **Fallback.** [`io_uring_support`] rules io_uring out when `kernel.io_uring_disabled` is 2,
//! when the kernel is older than 6.0, when `io_uring_setup` fails (`ENOSYS`, `EPERM`,
//! `EACCES`: seccomp, container policies, `io_uring_disabled = 1` without privilege), or when
//! an opcode or the provided buffer ring is missing. [`EngineKind::Auto`] then logs one warning
//! with the reason and runs epoll. Ring setup asks for `SINGLE_ISSUER | DEFER_TASKRUN` and
//! retries with fewer flags on `EINVAL`.
//!
//! ```no_run
//! use rserpool::runtime::{self, EngineConfig};
//! # use rserpool::service::{ConnId, Outbox, Service, ShardId, Tag};
//! # use rserpool::time::Time;
//! # struct Echo;
//! # impl Service for Echo {
//! #     type Msg = ();
//! #     fn on_accept(&mut self, _: ConnId, _: Tag, _: std::net::SocketAddr, _: Time, _: &mut impl Outbox<()>) {}
//! #     fn on_data(&mut self, c: ConnId, d: &[u8], _: Time, o: &mut impl Outbox<()>) -> usize {
//! #         o.send(c, &mut |b| b.extend_from_slice(d)); d.len()
//! #     }
//! #     fn on_close(&mut self, _: ConnId, _: Time, _: &mut impl Outbox<()>) {}
//! #     fn on_message(&mut self, _: ShardId, _: (), _: Time, _: &mut impl Outbox<()>) {}
//! #     fn on_timer(&mut self, _: Time, _: &mut impl Outbox<()>) {}
//! #     fn next_timer(&self) -> Option<Time> { None }
//! # }
//! let config = EngineConfig { listeners: vec![runtime::Listen::new("127.0.0.1:3863".parse().unwrap(), Tag(0))], ..EngineConfig::default() };
//! let engine = runtime::start(config, |_shard, _shards| Echo)?;
//! let stop = engine.shutdown_handle();
//! std::thread::spawn(move || {
//!     let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]).unwrap();
//!     if signals.forever().next().is_some() {
//!         stop.shutdown();
//!     }
//! });
//! engine.join()?;
//! # Ok::<(), runtime::EngineError>(())
//! ```
#![allow(unsafe_code)]

mod affinity;
mod bufring;
mod clock;
mod conn;
mod epoll;
mod error;
mod listener;
mod mailbox;
pub(crate) mod memory;
mod probe;
mod rlimit;
mod shard;
mod signals;
pub mod sim;
pub(crate) mod simd;
mod stats;
pub(crate) mod tls;
mod transport;
mod uring;

use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::tls::{TlsAcceptor, TlsConnector};
pub use error::EngineError;
pub use probe::io_uring_support;
pub use rlimit::raise_nofile_limit;
pub use stats::ShardStats;
pub use transport::Transport;

use crate::service::{Service, ShardId, Tag};
use clock::Clock;
use epoll::EpollDriver;
use mailbox::{Incoming, Outgoing};
use shard::{Accepting, CoreParts, Driver, Limits, ShardCore};
use signals::Signals;
use stats::StatsCell;
use uring::UringDriver;

/// Which engine runs the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring if this host allows it ([`io_uring_support`]), otherwise epoll, with a warning
    /// in the log that says why.
    #[default]
    Auto,
    /// io_uring; starting fails with [`EngineError::UringUnavailable`] if it cannot run here.
    Uring,
    /// epoll (through `mio`), available everywhere.
    Epoll,
}

/// How an io_uring shard wakes a peer shard that has new cross-shard records.
///
/// `MsgRing` is the default: the wake-up is one more SQE in the submission the sender makes at
/// the end of its loop iteration anyway, so it costs no extra system call on either side, and
/// the target sees it as an ordinary completion. An eventfd costs the sender a `write(2)` and
/// the target a re-armed read. `examples/cross_shard_pingpong.rs` measures the two (see
/// `results/runtime/`). The epoll engine always uses its mio waker (an eventfd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CrossShardWake {
    /// `IORING_OP_MSG_RING` to the target's ring.
    #[default]
    MsgRing,
    /// A write to the target's eventfd, on which its ring keeps a read armed.
    EventFd,
}

/// One listening address and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Address every shard listens on (port 0 picks a free port, shared by all shards).
    pub addr: SocketAddr,
    /// What connections accepted here serve, as the service knows it.
    pub tag: Tag,
    /// `None`: every shard accepts (`SO_REUSEPORT` spreads connections); `Some(s)`: only
    /// shard `s` does, for connections whose state one shard keeps (e.g. ENRP peers).
    pub shard: Option<ShardId>,
    /// `Some`: connections accepted here speak TLS, and the service hears of each only once
    /// its handshake has completed.
    pub tls: Option<TlsAcceptor>,
}

impl Listen {
    /// A listener on `addr` serving `tag`, accepted by every shard.
    pub const fn new(addr: SocketAddr, tag: Tag) -> Self {
        Self { addr, tag, shard: None, tls: None }
    }

    /// A listener on `addr` serving `tag`, accepted by shard `shard` only.
    pub const fn on_shard(addr: SocketAddr, tag: Tag, shard: ShardId) -> Self {
        Self { addr, tag, shard: Some(shard), tls: None }
    }

    /// The same listener speaking TLS with `acceptor`.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }
}

/// How to run the engine. `Default` gives a working setup: ASAP's port on all IPv4
/// addresses, one shard per core of this process's CPU set, each pinned.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Which engine to use.
    pub kind: EngineKind,
    /// Transport protocol of the listeners and outbound connections.
    pub transport: Transport,
    /// Addresses every shard listens on, each with its tag (at least one; at most 64).
    pub listeners: Vec<Listen>,
    /// One entry per shard: the core to pin its thread to, or `None` to leave it unpinned.
    pub shards: Vec<Option<usize>>,
    /// io_uring submission queue size per shard (the completion queue is four times larger,
    /// because multishot operations complete many times per submission).
    pub ring_entries: u32,
    /// Receive buffers per shard in the provided buffer ring (a power of two, at most 32768).
    pub buffer_count: u16,
    /// Size of each receive buffer; the epoll engine reads in chunks of this size too.
    pub buffer_size: u32,
    /// Most connections per shard, accepted and outbound together; further connections are
    /// accepted and closed at once.
    pub max_connections: usize,
    /// Unsent bytes of one connection above which the engine stops reading it until half of
    /// them are written (backpressure).
    pub max_send_queue_bytes: usize,
    /// Unsent bytes of one connection above which it is aborted: a peer that never reads cannot
    /// make the server hold unbounded memory even when the service keeps sending unprompted.
    pub max_send_queue_hard_bytes: usize,
    /// Largest message a service needs to see whole. A connection whose service cannot frame
    /// a message within this many buffered bytes is closed.
    pub max_message_size: usize,
    /// Records each cross-shard queue holds (one queue per ordered pair of shards), and posts
    /// a shard may queue to itself before the input causing them pauses. Records beyond a
    /// full queue wait in an overflow list; none is dropped.
    pub cross_shard_queue: usize,
    /// How long a half-closed connection that the service holds (it still owes answers) may
    /// stay open.
    pub max_hold: Duration,
    /// Listen backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: i32,
    /// How io_uring shards wake each other.
    pub cross_shard_wake: CrossShardWake,
    /// Outbound connections of these tags speak TLS with the given connector (a tag listed
    /// twice uses the first).
    pub dial_tls: Vec<(Tag, TlsConnector)>,
    /// How long a TLS handshake may take (a dialled connection's TCP connect included) before
    /// the connection is closed.
    pub tls_handshake_timeout: Duration,
    /// A connection whose reading is paused because its peer does not take its answers (more
    /// than `max_send_queue_bytes` unsent) is aborted once no write has taken any of them for
    /// this long (zero: never).
    pub send_stall_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let shards = core_affinity::get_core_ids()
            .filter(|ids| !ids.is_empty())
            .map(|ids| ids.into_iter().map(|c| Some(c.id)).collect())
            .unwrap_or_else(|| vec![None]);
        Self {
            kind: EngineKind::Auto,
            transport: Transport::Tcp,
            listeners: vec![Listen::new(SocketAddr::from(([0, 0, 0, 0], 3863)), Tag(0))],
            shards,
            ring_entries: 1024,
            buffer_count: 1024,
            buffer_size: 4096,
            max_connections: 16384,
            max_send_queue_bytes: 256 * 1024,
            max_send_queue_hard_bytes: 16 * 1024 * 1024,
            max_message_size: 65536,
            cross_shard_queue: 1024,
            max_hold: Duration::from_secs(30),
            listen_backlog: 4096,
            cross_shard_wake: CrossShardWake::MsgRing,
            dial_tls: Vec::new(),
            tls_handshake_timeout: Duration::from_secs(10),
            send_stall_timeout: Duration::from_secs(60),
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: &str| Err(EngineError::Config(m.to_owned()));
        if self.shards.is_empty() || self.shards.len() > 1024 {
            return bad("shards: between 1 and 1024 shards are supported");
        }
        if !(8..=16384).contains(&self.ring_entries) {
            return bad("ring_entries: must be between 8 and 16384");
        }
        if !self.buffer_count.is_power_of_two() || self.buffer_count > 32768 {
            return bad("buffer_count: must be a power of two, at most 32768");
        }
        if self.buffer_size < 16 {
            return bad("buffer_size: must be at least 16 bytes");
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            return bad("max_connections: must be between 1 and 2^32 - 1");
        }
        if self.max_send_queue_bytes == 0 {
            return bad("max_send_queue_bytes: must be positive");
        }
        if self.max_send_queue_hard_bytes < self.max_send_queue_bytes {
            return bad("max_send_queue_hard_bytes: must be at least max_send_queue_bytes");
        }
        if self.max_message_size == 0 {
            return bad("max_message_size: must be positive");
        }
        if self.cross_shard_queue == 0 || self.cross_shard_queue > 1 << 20 {
            return bad("cross_shard_queue: must be between 1 and 2^20 records");
        }
        if self.listeners.is_empty() || self.listeners.len() > 64 {
            return bad("listeners: between 1 and 64 listening addresses are supported");
        }
        if self.listeners.iter().any(|l| l.shard.is_some_and(|s| usize::from(s) >= self.shards.len())) {
            return bad("listeners: a listener's shard must be one of the configured shards");
        }
        if self.listen_backlog <= 0 {
            return bad("listen_backlog: must be positive");
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            pause_above: self.max_send_queue_bytes,
            resume_at: self.max_send_queue_bytes / 2,
            abort_above: self.max_send_queue_hard_bytes,
            max_message: self.max_message_size,
            window: self.max_message_size.max(self.buffer_size as usize),
            queue: self.cross_shard_queue,
            max_hold: u64::try_from(self.max_hold.as_millis()).unwrap_or(u64::MAX),
            handshake_timeout: u64::try_from(self.tls_handshake_timeout.as_millis()).unwrap_or(u64::MAX).max(1),
            send_stall: u64::try_from(self.send_stall_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Stops a running engine. Cheap to clone, callable from any thread (for example a
/// `signal_hook` iterator thread): every shard wakes up, closes its listener and connections
/// (calling `on_close` for each), and its thread ends.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    signals: Arc<Signals>,
}

impl ShutdownHandle {
    /// Asks all shards to stop; returns at once (use [`Engine::join`] to wait).
    pub fn shutdown(&self) {
        self.signals.stop();
    }
}

/// Reads the engine's per-shard counters ([`Engine::stats_reader`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct StatsReader {
    cells: Vec<Arc<StatsCell>>,
}

impl StatsReader {
    /// Current counters of each shard, indexed by shard id.
    pub fn read(&self) -> Vec<ShardStats> {
        self.cells.iter().map(|s| s.snapshot()).collect()
    }
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    local_addrs: Vec<(Tag, SocketAddr)>,
    kind: EngineKind,
    signals: Arc<Signals>,
    stats: Vec<Arc<StatsCell>>,
    threads: Vec<JoinHandle<Result<(), EngineError>>>,
}

impl Engine {
    /// The address of the first configured listener (with the actual port when 0 was
    /// configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0].1
    }

    /// The address of the first listener tagged `tag`.
    pub fn local_addr_of(&self, tag: Tag) -> Option<SocketAddr> {
        self.local_addrs.iter().find(|(t, _)| *t == tag).map(|(_, a)| *a)
    }

    /// Every listener's tag and address, in configuration order.
    pub fn local_addrs(&self) -> &[(Tag, SocketAddr)] {
        &self.local_addrs
    }

    /// The engine that actually runs: [`EngineKind::Uring`] or [`EngineKind::Epoll`].
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.stats.len()
    }

    /// A handle that stops the engine.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { signals: Arc::clone(&self.signals) }
    }

    /// Current counters of each shard, indexed by shard id.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// A handle that reads the shards' counters from another thread (a metrics endpoint)
    /// while the engine runs, and after.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader { cells: self.stats.clone() }
    }

    /// Waits until every shard thread has ended (after [`ShutdownHandle::shutdown`], or after a
    /// shard failed, which stops the others). Returns the first shard's error, if any.
    pub fn join(mut self) -> Result<(), EngineError> {
        join_all(std::mem::take(&mut self.threads))
    }
}

impl Drop for Engine {
    /// Dropping an engine that was not joined stops it and waits for its threads.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.signals.stop();
            let _ = join_all(std::mem::take(&mut self.threads));
        }
    }
}

fn join_all(threads: Vec<JoinHandle<Result<(), EngineError>>>) -> Result<(), EngineError> {
    let mut first = Ok(());
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().unwrap_or(Err(EngineError::Panicked { shard: i as ShardId }));
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Starts the engine: binds every shard's listener, starts one thread per shard, builds each
/// shard's service with `factory(shard, shard_count)` inside that thread (so services need not
/// be `Send`), and returns once every shard is ready to accept.
pub fn start<S, F>(config: EngineConfig, factory: F) -> Result<Engine, EngineError>
where
    S: Service + 'static,
    F: Fn(ShardId, u16) -> S + Send + Sync + 'static,
{
    config.validate()?;
    affinity::validate(&config.shards)?;
    let kind = match config.kind {
        EngineKind::Epoll => EngineKind::Epoll,
        EngineKind::Uring => {
            io_uring_support().map_err(|reason| EngineError::UringUnavailable { reason })?;
            EngineKind::Uring
        }
        EngineKind::Auto => match io_uring_support() {
            Ok(()) => EngineKind::Uring,
            Err(reason) => {
                tracing::warn!(%reason, "io_uring is unavailable; falling back to the epoll engine");
                EngineKind::Epoll
            }
        },
    };
    let n = config.shards.len();
    // One socket per listener and shard; `per_shard[i]` holds shard i's sockets.
    let mut per_shard: Vec<Vec<(TcpListener, Accepting)>> = (0..n).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let shards: Vec<usize> = match l.shard {
            Some(s) => vec![usize::from(s)],
            None => (0..n).collect(),
        };
        let sockets = listener::bind_all(l.addr, shards.len(), config.listen_backlog, config.transport)?;
        let addr = sockets[0].local_addr().map_err(|source| EngineError::Bind { addr: l.addr, source })?;
        local_addrs.push((l.tag, addr));
        for (shard, socket) in shards.into_iter().zip(sockets) {
            per_shard[shard].push((socket, Accepting { tag: l.tag, tls: l.tls.clone() }));
        }
    }
    let signals = Arc::new(Signals::new(n));
    let stats: Vec<Arc<StatsCell>> = (0..n).map(|_| Arc::default()).collect();
    let ends = mailbox::mesh::<S::Msg>(n, config.cross_shard_queue, &stats);
    let config = Arc::new(config);
    let factory = Arc::new(factory);
    let clock = Clock::start();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut gos = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for (i, (listeners, (out, inbox))) in per_shard.into_iter().zip(ends).enumerate() {
        let me = i as ShardId;
        let (go_tx, go_rx) = mpsc::channel();
        let shard = ShardThread {
            me,
            kind,
            listeners,
            out,
            inbox,
            stats: Arc::clone(&stats[i]),
            signals: Arc::clone(&signals),
            config: Arc::clone(&config),
            clock,
            ready: ready_tx.clone(),
            go: go_rx,
        };
        let factory = Arc::clone(&factory);
        let spawned =
            std::thread::Builder::new().name(format!("rserpool-shard-{i}")).spawn(move || shard.run(&*factory));
        match spawned {
            Ok(t) => {
                threads.push(t);
                gos.push(go_tx);
            }
            Err(source) => {
                drop(gos);
                signals.stop();
                let _ = join_all(threads);
                return Err(EngineError::Spawn { shard: me, source });
            }
        }
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                // A shard thread ended without reporting (it panicked during setup).
                failure.get_or_insert(EngineError::Panicked { shard: 0 });
                break;
            }
        }
    }
    if let Some(e) = failure {
        drop(gos);
        signals.stop();
        let _ = join_all(threads);
        return Err(e);
    }
    for go in &gos {
        let _ = go.send(());
    }
    tracing::info!(engine = ?kind, shards = n, addrs = ?local_addrs, "engine started");
    Ok(Engine { local_addrs, kind, signals, stats, threads })
}

/// Everything a shard thread starts with.
struct ShardThread<M> {
    me: ShardId,
    kind: EngineKind,
    listeners: Vec<(TcpListener, Accepting)>,
    out: Outgoing<M>,
    inbox: Incoming<M>,
    stats: Arc<StatsCell>,
    signals: Arc<Signals>,
    config: Arc<EngineConfig>,
    clock: Clock,
    ready: mpsc::Sender<Result<(), EngineError>>,
    go: mpsc::Receiver<()>,
}

/// Stops every shard when a shard thread ends for any reason (error or panic included), so
/// one failed shard does not leave the others serving a partial handlespace.
struct StopOnExit(Arc<Signals>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl<M: Send + 'static> ShardThread<M> {
    fn run<S: Service<Msg = M>, F: Fn(ShardId, u16) -> S>(mut self, factory: &F) -> Result<(), EngineError> {
        let _stop = StopOnExit(Arc::clone(&self.signals));
        affinity::pin_current(self.me, self.config.shards.get(usize::from(self.me)).copied().flatten());
        let listeners = std::mem::take(&mut self.listeners);
        match self.kind {
            EngineKind::Uring => {
                let driver = UringDriver::new(self.me, listeners, &self.config, &self.signals);
                self.serve(driver, factory)
            }
            _ => {
                let driver = EpollDriver::new(self.me, listeners, &self.config, &self.signals);
                self.serve(driver, factory)
            }
        }
    }

    fn serve<S: Service<Msg = M>, F: Fn(ShardId, u16) -> S, D: Driver>(
        self,
        driver: Result<D, EngineError>,
        factory: &F,
    ) -> Result<(), EngineError> {
        let ready = self.ready;
        let mut driver = match driver {
            Ok(d) => {
                let _ = ready.send(Ok(()));
                d
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        drop(ready);
        if self.go.recv().is_err() {
            // Start was aborted because another shard failed.
            return Ok(());
        }
        let n = self.config.shards.len();
        let service = factory(self.me, n as u16);
        let parts = CoreParts {
            me: self.me,
            shard_count: n,
            out: self.out,
            inbox: self.inbox,
            signals: self.signals,
            stats: self.stats,
            now: self.clock.now(),
            limits: self.config.limits(),
            max_connections: self.config.max_connections,
            transport: self.config.transport,
            dial_tls: self.config.dial_tls.clone(),
        };
        let mut core: ShardCore<S, D::Conn> = ShardCore::new(service, parts);
        let result = shard::run(&mut core, &mut driver, &self.clock);
        if let Err(e) = &result {
            tracing::error!(shard = self.me, error = %e, "shard stopped");
        }
        result
    }
}
