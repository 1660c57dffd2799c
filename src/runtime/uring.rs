//! The io_uring engine: one ring per shard with `SINGLE_ISSUER | DEFER_TASKRUN` (degrading when
//! the kernel refuses them), multishot accept, multishot receive into a provided buffer ring,
//! every operation of a loop iteration submitted by one `io_uring_enter` that also waits (with
//! the timer deadline as its timeout), and `IORING_OP_MSG_RING` to wake peer shards.
//!
//! Per connection there is at most one receive (multishot), one send and one connect in flight,
//! and at most one cancellation; the connection's slot is freed only when all have completed, so
//! every pointer handed to the kernel stays valid for as long as the kernel may use it. The same
//! bound limits the backlog of entries that did not fit the submission queue: a few per
//! connection and listener, plus one wake-up per peer shard.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, SockAddr, SockRef, Socket};

use super::bufring::BufRing;
use super::conn::ConnState;
use super::shard::{reconcile_touched, Accepting, ConnHandle, Driver, ShardCore};
use super::signals::{eventfd, RemoteWake, Signals};
use super::{CrossShardWake, EngineConfig, EngineError, Transport};
use crate::service::{ConnId, Service, ShardId};

/// Operation codes in the top byte of `user_data`; the rest holds generation and slot.
const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_WAKE: u8 = 4;
const OP_MSG_IN: u8 = 5;
const OP_MSG_OUT: u8 = 6;
const OP_CANCEL: u8 = 7;
const OP_CONNECT: u8 = 8;

/// CQEs copied out of the completion queue per batch.
const CQE_BATCH: usize = 256;
/// Batches handled per loop iteration.
const MAX_BATCHES: usize = 16;
/// Pause before re-arming accept after running out of file descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How long shutdown waits for the kernel to finish in-flight operations.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn ud(op: u8, id: ConnId) -> u64 {
    (u64::from(op) << 56) | (u64::from(id.generation) << 32) | u64::from(id.slot)
}

fn ud_op(ud: u64) -> u8 {
    (ud >> 56) as u8
}

fn ud_conn(me: ShardId, ud: u64) -> ConnId {
    ConnId { shard: me, generation: (ud >> 32) as u16, slot: ud as u32 }
}

const fn ud_plain(op: u8) -> u64 {
    (op as u64) << 56
}

/// State of a connection's multishot receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    Idle,
    Armed,
    Cancelling,
}

/// io_uring's per-connection handle.
#[derive(Debug)]
pub(crate) struct UringConn {
    fd: OwnedFd,
    recv: Recv,
    /// Operations in flight that refer to this connection's fd or memory.
    ops: u32,
    /// `shutdown(2)` has been called and in-flight operations cancelled.
    shut: bool,
    /// An outbound connection's destination (the connect operation points at it) and whether
    /// the connect was submitted.
    dial: Option<(Box<SockAddr>, bool)>,
}

impl UringConn {
    fn accepted(fd: OwnedFd) -> Self {
        Self { fd, recv: Recv::Idle, ops: 0, shut: false, dial: None }
    }
}

impl ConnHandle for UringConn {
    fn dial(addr: SocketAddr, transport: Transport) -> io::Result<Self> {
        let (ty, proto) = transport.socket_kind();
        // Blocking, like accepted sockets: io_uring waits for the connect itself.
        let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
        transport.configure_connected(SockRef::from(&socket))?;
        let mut conn = Self::accepted(OwnedFd::from(socket));
        conn.dial = Some((Box::new(SockAddr::from(addr)), false));
        Ok(conn)
    }
}

/// One listening socket of a shard.
struct Listener {
    socket: TcpListener,
    /// What its connections are (tag, TLS).
    how: Accepting,
    armed: bool,
    retry_at: Option<Instant>,
}

/// Creates a ring, asking for the flags that measured best and retrying without them on
/// `EINVAL` (older kernels).
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str)> {
    let cq = entries.saturating_mul(4).min(65536);
    let mut b = IoUring::builder();
    b.setup_cqsize(cq).setup_single_issuer().setup_defer_taskrun().setup_submit_all();
    match b.build(entries) {
        Ok(r) => return Ok((r, "SINGLE_ISSUER|DEFER_TASKRUN")),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cq).setup_single_issuer().setup_coop_taskrun();
    match b.build(entries) {
        Ok(r) => return Ok((r, "SINGLE_ISSUER|COOP_TASKRUN")),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cq);
    Ok((b.build(entries)?, "no setup flags"))
}

/// One shard's io_uring driver.
pub(crate) struct UringDriver {
    /// Declared first so it is dropped before the memory its operations pointed at.
    ring: IoUring,
    /// Dropped by hand in `Drop`, or leaked if the kernel may still write to it.
    bufs: ManuallyDrop<BufRing>,
    me: ShardId,
    transport: Transport,
    wake_method: CrossShardWake,
    listeners: Vec<Listener>,
    accept_errors: u64,
    waker: File,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    cqes: Vec<cqueue::Entry>,
    /// Entries that did not fit the submission queue; submitted first on the next poll.
    backlog: VecDeque<squeue::Entry>,
    /// The last poll stopped with completions possibly left in the queue.
    more_cqes: bool,
    stopping: bool,
    /// Operations may be in flight: set by the first submission, cleared only when shutdown has
    /// drained them all. If still set on drop (shutdown timed out, or a panic unwound past the
    /// loop), the memory they point at is leaked rather than freed under the kernel's feet.
    kernel_busy: bool,
}

impl UringDriver {
    /// Sets up shard `me`'s ring, buffers and wake-up handles. Runs on the shard's thread
    /// (`SINGLE_ISSUER` binds the ring to the thread that creates it).
    pub(crate) fn new(
        me: ShardId,
        listeners: Vec<(TcpListener, Accepting)>,
        config: &EngineConfig,
        signals: &Signals,
    ) -> Result<Self, EngineError> {
        let setup = |source| EngineError::RingSetup { shard: me, source };
        let (ring, flags) = build_ring(config.ring_entries).map_err(setup)?;
        tracing::debug!(shard = me, flags, entries = config.ring_entries, "io_uring ring created");
        let bufs = BufRing::new(config.buffer_count, config.buffer_size, 0).map_err(setup)?;
        bufs.register(&ring.submitter()).map_err(|source| EngineError::BufferRing { shard: me, source })?;
        let waker = eventfd().map_err(setup)?;
        signals.set_remote(me, RemoteWake::EventFd(waker.try_clone().map_err(setup)?));
        signals.set_ring(me, ring.as_raw_fd()).map_err(setup)?;
        // The listeners stay blocking: io_uring arms a poll itself, and some kernels answer an
        // accept on an O_NONBLOCK socket with EAGAIN instead.
        let mut socks = Vec::with_capacity(listeners.len());
        for (socket, how) in listeners {
            socket.set_nonblocking(false).map_err(setup)?;
            socks.push(Listener { socket, how, armed: false, retry_at: None });
        }
        let mut this = Self {
            ring,
            bufs: ManuallyDrop::new(bufs),
            me,
            transport: config.transport,
            wake_method: config.cross_shard_wake,
            listeners: socks,
            accept_errors: 0,
            waker,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            cqes: Vec::with_capacity(CQE_BATCH),
            backlog: VecDeque::new(),
            more_cqes: false,
            stopping: false,
            kernel_busy: false,
        };
        this.rearm();
        Ok(this)
    }

    /// Queues an SQE, submitting early when the submission queue is full and keeping it in the
    /// backlog if even that fails.
    fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() && self.try_push(&e) {
            return;
        }
        self.backlog.push_back(e);
    }

    fn try_push(&mut self, e: &squeue::Entry) -> bool {
        // SAFETY (both pushes): every entry this driver builds points only at memory that
        // outlives the operation: a send's bytes are pinned by `SendQueue::busy` and the
        // connection is not freed while `ops > 0`; the provided buffers and the wake buffer
        // belong to this driver, which drains (or leaks) before dropping them.
        if unsafe { self.ring.submission().push(e) }.is_ok() {
            return true;
        }
        self.kernel_busy = true;
        self.ring.submit().is_ok() && unsafe { self.ring.submission().push(e) }.is_ok()
    }

    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            if !self.try_push(&e) {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    /// Re-arms the multishot accepts and the wake-up read when they have ended.
    fn rearm(&mut self) {
        if self.stopping {
            return;
        }
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if !l.armed && l.retry_at.is_none_or(|t| Instant::now() >= t) {
                l.retry_at = None;
                l.armed = true;
                let e = opcode::AcceptMulti::new(types::Fd(l.socket.as_raw_fd()))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(ud_plain(OP_ACCEPT) | i as u64);
                self.push(e);
            }
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let e = opcode::Read::new(types::Fd(self.waker.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(ud_plain(OP_WAKE));
            self.push(e);
        }
    }

    fn cancel(&mut self, target_ud: u64) {
        let e = opcode::AsyncCancel::new(target_ud)
            .build()
            .user_data(ud_plain(OP_CANCEL))
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(e);
    }

    fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handles the completions available now (at most [`MAX_BATCHES`] batches, so that a
    /// flood of completions cannot keep the loop from its cross-shard queues and timers).
    fn complete<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>) {
        self.more_cqes = false;
        for _ in 0..MAX_BATCHES {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion().take(CQE_BATCH));
            self.more_cqes = cqes.len() == CQE_BATCH;
            if cqes.is_empty() {
                self.cqes = cqes;
                break;
            }
            for cqe in &cqes {
                self.handle(core, cqe);
            }
            // Buffers consumed by this batch go back before anything is re-armed.
            self.bufs.publish();
            self.cqes = cqes;
        }
        self.rearm();
    }

    fn handle<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>, cqe: &cqueue::Entry) {
        let ud = cqe.user_data();
        let res = cqe.result();
        match ud_op(ud) {
            OP_RECV => self.on_recv(core, ud_conn(self.me, ud), res, cqe.flags()),
            OP_SEND => on_send(core, ud_conn(self.me, ud), res),
            OP_CONNECT => on_connect(core, ud_conn(self.me, ud), res),
            OP_ACCEPT => self.on_accept(core, ud as u32 as usize, res, cqe.flags()),
            OP_WAKE => self.wake_armed = false,
            // A peer shard pushed cross-shard records; the loop drains them after this poll.
            OP_MSG_IN => {}
            OP_MSG_OUT => {
                tracing::debug!(shard = self.me, error = %io::Error::from_raw_os_error(-res), "MSG_RING wake-up failed");
            }
            _ => {}
        }
    }

    fn on_recv<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let Some(conn) = core.io.conns.get_mut(id) else {
            debug_assert!(false, "receive completion for a freed slot");
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !cqueue::more(flags) {
            conn.io.ops -= 1;
            conn.io.recv = Recv::Idle;
            core.io.conns.touch(id);
        }
        if res > 0 {
            if let Some(bid) = bid {
                // SAFETY: `bid` comes from this completion and is recycled only below.
                let data = unsafe { self.bufs.get(bid, res as usize) };
                core.received(id, data);
                self.bufs.recycle(bid);
            }
        } else if res == 0 {
            core.eof(id);
        } else {
            match -res {
                // The buffer ring ran dry: buffers are republished at the end of this batch and
                // the touched connection's receive is re-armed by `reconcile`.
                libc::ENOBUFS | libc::ECANCELED => {}
                errno => core.failed(id, &io::Error::from_raw_os_error(errno)),
            }
        }
    }

    fn on_accept<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>, index: usize, res: i32, flags: u32) {
        let Some(listener) = self.listeners.get_mut(index) else { return };
        if !cqueue::more(flags) {
            listener.armed = false;
        }
        let how = listener.how.clone();
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                errno @ (libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
                    if self.accept_errors % 1024 == 0 {
                        tracing::warn!(shard = self.me, error = %io::Error::from_raw_os_error(errno), "accept failed; retrying shortly");
                    }
                    self.accept_errors += 1;
                    listener.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                }
                errno => {
                    tracing::debug!(shard = self.me, error = %io::Error::from_raw_os_error(errno), "accept failed")
                }
            }
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let sock = SockRef::from(&fd);
        if let Err(e) = self.transport.configure_accepted(sock) {
            tracing::debug!(shard = self.me, error = %e, "cannot configure accepted socket");
        }
        // A connection reset before we got here has no peer address; drop it quietly.
        let Some(peer) = SockRef::from(&fd).peer_addr().ok().and_then(|a| a.as_socket()) else {
            return;
        };
        // On success the core touched the connection, and `reconcile` arms its receive; on
        // refusal (table full, stopping) dropping the handle closes the socket.
        let _ = core.accept(UringConn::accepted(fd), peer, &how);
    }

    /// Shuts the socket down and cancels whatever is in flight on it, so the kernel lets go.
    fn teardown(&mut self, conn: &mut UringConn) {
        if conn.shut {
            return;
        }
        conn.shut = true;
        // Wakes a send blocked on a peer that never reads, and ends the multishot receive.
        let _ = SockRef::from(&conn.fd).shutdown(Shutdown::Both);
        if conn.ops > 0 {
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(conn.fd.as_raw_fd())).all())
                .build()
                .user_data(ud_plain(OP_CANCEL))
                .flags(squeue::Flags::SKIP_SUCCESS);
            self.push(e);
        }
    }
}

fn on_connect<S: Service>(core: &mut ShardCore<S, UringConn>, id: ConnId, res: i32) {
    let Some(conn) = core.io.conns.get_mut(id) else {
        debug_assert!(false, "connect completion for a freed slot");
        return;
    };
    conn.io.ops -= 1;
    let peer = conn.io.dial.take().and_then(|(addr, _)| addr.as_socket());
    core.io.conns.touch(id);
    match (res, peer) {
        (0, Some(peer)) => core.connected(id, peer),
        (0, None) => core.connect_failed(id, io::Error::from(io::ErrorKind::AddrNotAvailable)),
        (res, _) => core.connect_failed(id, io::Error::from_raw_os_error(-res)),
    }
}

fn on_send<S: Service>(core: &mut ShardCore<S, UringConn>, id: ConnId, res: i32) {
    let Some(conn) = core.io.conns.get_mut(id) else {
        debug_assert!(false, "send completion for a freed slot");
        return;
    };
    conn.io.ops -= 1;
    if res > 0 {
        core.sent(id, res as usize);
    } else {
        let err = if res == 0 { io::Error::from(io::ErrorKind::WriteZero) } else { io::Error::from_raw_os_error(-res) };
        core.send_failed(id, &err);
    }
}

impl Driver for UringDriver {
    type Conn = UringConn;

    fn poll<S: Service>(
        &mut self,
        core: &mut ShardCore<S, UringConn>,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError> {
        self.flush_backlog();
        self.kernel_busy = true;
        let timeout = if self.backlog.is_empty() { timeout } else { Some(Duration::ZERO) };
        self.submit_and_wait(timeout).map_err(|source| EngineError::Io {
            shard: self.me,
            what: "io_uring_enter",
            source,
        })?;
        self.complete(core);
        Ok(())
    }

    fn reconcile<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>, id: ConnId) {
        let Some(conn) = core.io.conns.get_mut(id) else {
            return;
        };
        if conn.must_close() {
            core.close(id);
        }
        let Some(conn) = core.io.conns.get_mut(id) else {
            return;
        };
        if conn.state == ConnState::Dead {
            self.teardown(&mut conn.io);
            if conn.io.ops == 0 {
                // Dropping the handle closes the socket.
                core.release(id);
            }
            return;
        }
        let fd = types::Fd(conn.io.fd.as_raw_fd());
        if conn.state == ConnState::Connecting {
            if let Some((addr, submitted @ false)) = conn.io.dial.as_mut() {
                *submitted = true;
                let e =
                    opcode::Connect::new(fd, addr.as_ptr().cast(), addr.len()).build().user_data(ud(OP_CONNECT, id));
                conn.io.ops += 1;
                self.push(e);
            }
            return;
        }
        if let Some(bytes) = conn.sendq.start() {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let e =
                opcode::Send::new(fd, bytes.as_ptr(), len).flags(libc::MSG_NOSIGNAL).build().user_data(ud(OP_SEND, id));
            conn.io.ops += 1;
            self.push(e);
        }
        match (conn.wants_read(), conn.io.recv) {
            (true, Recv::Idle) => {
                let e = opcode::RecvMulti::new(fd, self.bufs.group()).build().user_data(ud(OP_RECV, id));
                conn.io.ops += 1;
                conn.io.recv = Recv::Armed;
                self.push(e);
            }
            (false, Recv::Armed) => {
                conn.io.recv = Recv::Cancelling;
                self.cancel(ud(OP_RECV, id));
            }
            _ => {}
        }
    }

    fn wake(&mut self, signals: &Signals, targets: &[ShardId]) {
        for &t in targets {
            match signals.ring_fd(t).filter(|_| self.wake_method == CrossShardWake::MsgRing) {
                Some(fd) => {
                    let e = opcode::MsgRingData::new(types::Fd(fd), 0, ud_plain(OP_MSG_IN), None)
                        .build()
                        .user_data(ud_plain(OP_MSG_OUT))
                        .flags(squeue::Flags::SKIP_SUCCESS);
                    self.push(e);
                }
                None => signals.wake_remote(t),
            }
        }
    }

    fn busy(&self) -> bool {
        !self.backlog.is_empty() || self.more_cqes
    }

    fn deadline(&self) -> Option<Instant> {
        self.listeners.iter().filter(|l| !l.armed).filter_map(|l| l.retry_at).min()
    }

    fn shutdown<S: Service>(&mut self, core: &mut ShardCore<S, UringConn>) {
        self.stopping = true;
        for id in core.close_all() {
            core.io.conns.touch(id);
        }
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                self.cancel(ud_plain(OP_ACCEPT) | i as u64);
            }
        }
        if self.wake_armed {
            self.cancel(ud_plain(OP_WAKE));
        }
        let limit = Instant::now() + DRAIN_LIMIT;
        loop {
            reconcile_touched(core, self);
            let drained = self.drained(core);
            if drained || Instant::now() >= limit {
                break;
            }
            if let Err(e) = self.poll(core, Some(Duration::from_millis(20))) {
                tracing::warn!(shard = self.me, error = %e, "io_uring failed while draining");
                break;
            }
        }
        if self.drained(core) {
            self.kernel_busy = false;
            if let Err(e) = self.ring.submitter().unregister_buf_ring(self.bufs.group()) {
                tracing::debug!(shard = self.me, error = %e, "cannot unregister buffer ring");
            }
        } else {
            tracing::warn!(
                shard = self.me,
                connections = core.io.conns.len(),
                "kernel operations still in flight at shutdown; leaking their buffers"
            );
        }
    }
}

impl UringDriver {
    /// Whether no operation is in flight any more.
    fn drained<S: Service>(&self, core: &ShardCore<S, UringConn>) -> bool {
        core.io.conns.len() == 0 && !self.wake_armed && self.listeners.iter().all(|l| !l.armed)
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        if self.kernel_busy {
            // The kernel tears the remaining operations down asynchronously after the ring fd
            // is closed; the memory they point at must stay valid, so it is leaked.
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        } else {
            // SAFETY: `bufs` is dropped exactly once, here, and never used afterwards; no
            // operation that could write into it is in flight (shutdown drained them all, or
            // nothing was ever submitted).
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        }
    }
}
