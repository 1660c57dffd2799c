//! A bare io_uring request/reply server: the practical ceiling of the kernel TCP path on this
//! machine, which the load generator runs next to the registrar.
//!
//! One pinned thread, one ring (`SINGLE_ISSUER | DEFER_TASKRUN` where available), multishot
//! accept, multishot receive into a provided buffer ring, and one `io_uring_enter` per loop
//! iteration carrying every send. It does no parsing and no copying: it counts the complete
//! `request_size`-byte requests in each connection's stream (pipelining allowed) and owes
//! `reply_size` bytes per request, sent straight out of one constant, shared reply block. So
//! replies are `reply_size` bytes of `b'r'`, one per request, in order.
//!
//! It is a reference, not a product: no service, no limits beyond the kernel's, no backpressure
//! other than one send in flight per connection.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use socket2::SockRef;

use super::bufring::BufRing;
use super::signals::eventfd;
use super::uring::build_ring;
use super::{affinity, listener, EngineError, Transport};

const OP_ACCEPT: u64 = 1 << 56;
const OP_RECV: u64 = 2 << 56;
const OP_SEND: u64 = 3 << 56;
const OP_WAKE: u64 = 4 << 56;
const OP_CANCEL: u64 = 5 << 56;
const OP_MASK: u64 = 0xff << 56;

/// Settings of the bare server.
#[derive(Clone, Debug)]
pub struct BareEchoConfig {
    /// Address to listen on (port 0 picks one; see [`BareEcho::local_addr`]).
    pub addr: SocketAddr,
    /// Core to pin the thread to.
    pub core: Option<usize>,
    /// Bytes per request.
    pub request_size: usize,
    /// Bytes per reply.
    pub reply_size: usize,
    /// Submission queue size.
    pub ring_entries: u32,
    /// Receive buffers in the provided buffer ring (a power of two).
    pub buffer_count: u16,
    /// Bytes per receive buffer.
    pub buffer_size: u32,
}

impl Default for BareEchoConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            core: None,
            request_size: 48,
            reply_size: 256,
            ring_entries: 1024,
            buffer_count: 1024,
            buffer_size: 4096,
        }
    }
}

#[derive(Debug)]
struct StopInner {
    flag: AtomicBool,
    wake: File,
}

/// Stops a bare server from any thread.
#[derive(Clone, Debug)]
pub struct BareEchoStop(Arc<StopInner>);

impl BareEchoStop {
    /// A new, unsignalled stop handle.
    pub fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(StopInner { flag: AtomicBool::new(false), wake: eventfd()? })))
    }

    /// Asks the server to stop; returns at once.
    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::Release);
        let _ = (&self.0.wake).write_all(&1u64.to_ne_bytes());
    }

    fn stopped(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }
}

/// A bare server running on its own thread.
#[derive(Debug)]
pub struct BareEcho {
    local_addr: SocketAddr,
    stop: BareEchoStop,
    thread: JoinHandle<Result<(), EngineError>>,
}

impl BareEcho {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops it.
    pub fn stop_handle(&self) -> BareEchoStop {
        self.stop.clone()
    }

    /// Waits for the server thread to end (after a stop).
    pub fn join(self) -> Result<(), EngineError> {
        self.thread.join().unwrap_or(Err(EngineError::Panicked { shard: 0 }))
    }
}

/// Binds and starts the server on a new thread.
pub fn spawn(config: BareEchoConfig) -> Result<BareEcho, EngineError> {
    check(&config)?;
    let listener = bind(config.addr)?;
    let local_addr = listener.local_addr().map_err(|source| EngineError::Bind { addr: config.addr, source })?;
    let stop = BareEchoStop::new().map_err(|source| EngineError::RingSetup { shard: 0, source })?;
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rserpool-bare-echo".into())
        .spawn(move || run(listener, &config, &thread_stop))
        .map_err(|source| EngineError::Spawn { shard: 0, source })?;
    Ok(BareEcho { local_addr, stop, thread })
}

/// Binds `addr` and serves on the calling thread until `stop` is signalled.
pub fn serve(
    addr: SocketAddr,
    core: Option<usize>,
    request_size: usize,
    reply_size: usize,
    stop: &BareEchoStop,
) -> Result<(), EngineError> {
    let config = BareEchoConfig { addr, core, request_size, reply_size, ..BareEchoConfig::default() };
    check(&config)?;
    run(bind(addr)?, &config, stop)
}

fn check(c: &BareEchoConfig) -> Result<(), EngineError> {
    if c.request_size == 0 || c.reply_size == 0 {
        return Err(EngineError::Config("request_size and reply_size must be positive".into()));
    }
    if !c.buffer_count.is_power_of_two() || c.buffer_size == 0 {
        return Err(EngineError::Config("buffer_count must be a power of two, buffer_size positive".into()));
    }
    affinity::validate(&[c.core])
}

fn bind(addr: SocketAddr) -> Result<TcpListener, EngineError> {
    let mut v = listener::bind_all(addr, 1, 4096, Transport::Tcp)?;
    v.pop().ok_or_else(|| EngineError::Config("no listener".into()))
}

struct Conn {
    fd: OwnedFd,
    /// Bytes of an incomplete request at the end of the stream so far.
    partial: usize,
    /// Reply bytes not yet sent.
    owed: usize,
    sending: bool,
    ops: u32,
    closing: bool,
    shut: bool,
}

struct Server {
    ring: IoUring,
    bufs: std::mem::ManuallyDrop<BufRing>,
    conns: Slab<Conn>,
    block: Vec<u8>,
    dirty: Vec<usize>,
    wake_buf: Box<[u8; 8]>,
    accept_armed: bool,
    wake_armed: bool,
    request_size: usize,
    reply_size: usize,
    drained: bool,
}

fn run(listener: TcpListener, config: &BareEchoConfig, stop: &BareEchoStop) -> Result<(), EngineError> {
    affinity::pin_current(0, config.core);
    let setup = |source| EngineError::RingSetup { shard: 0, source };
    listener.set_nonblocking(false).map_err(setup)?;
    let (ring, _) = build_ring(config.ring_entries).map_err(setup)?;
    let bufs = BufRing::new(config.buffer_count, config.buffer_size, 0).map_err(setup)?;
    bufs.register(&ring.submitter()).map_err(|source| EngineError::BufferRing { shard: 0, source })?;
    // A block of whole replies, at least 64 KiB, that every send points into.
    let per_block = (65536 / config.reply_size).max(1);
    let mut s = Server {
        ring,
        bufs: std::mem::ManuallyDrop::new(bufs),
        conns: Slab::new(),
        block: vec![b'r'; per_block * config.reply_size],
        dirty: Vec::new(),
        wake_buf: Box::new([0; 8]),
        accept_armed: false,
        wake_armed: false,
        request_size: config.request_size,
        reply_size: config.reply_size,
        drained: true,
    };
    let result = s.serve(&listener, stop);
    s.drain();
    result
}

impl Server {
    fn push(&mut self, e: &squeue::Entry) {
        self.drained = false;
        // SAFETY: entries point at the reply block, the wake buffer or provided buffers, all
        // owned by this server and kept alive until every operation has completed (`drain`),
        // or leaked if that does not happen.
        while unsafe { self.ring.submission().push(e) }.is_err() {
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    fn arm(&mut self, listener: &TcpListener, stop: &BareEchoStop) {
        if !self.accept_armed {
            self.accept_armed = true;
            let e = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build().user_data(OP_ACCEPT);
            self.push(&e);
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let e = opcode::Read::new(types::Fd(stop.0.wake.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(OP_WAKE);
            self.push(&e);
        }
    }

    fn serve(&mut self, listener: &TcpListener, stop: &BareEchoStop) -> Result<(), EngineError> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(256);
        while !stop.stopped() {
            self.arm(listener, stop);
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::ETIME)) => {}
                Err(source) => return Err(EngineError::Io { shard: 0, what: "io_uring_enter", source }),
            }
            self.reap(&mut cqes);
            self.flush();
        }
        Ok(())
    }

    fn reap(&mut self, cqes: &mut Vec<cqueue::Entry>) {
        loop {
            cqes.clear();
            cqes.extend(self.ring.completion().take(256));
            if cqes.is_empty() {
                break;
            }
            for cqe in cqes.iter() {
                self.handle(cqe);
            }
            self.bufs.publish();
        }
    }

    fn handle(&mut self, cqe: &cqueue::Entry) {
        let ud = cqe.user_data();
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let key = (ud & !OP_MASK) as usize;
        match ud & OP_MASK {
            OP_ACCEPT => {
                if !more {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor nobody else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    let _ = SockRef::from(&fd).set_tcp_nodelay(true);
                    let raw = fd.as_raw_fd();
                    let conn = Conn { fd, partial: 0, owed: 0, sending: false, ops: 1, closing: false, shut: false };
                    let key = self.conns.insert(conn);
                    let e = opcode::RecvMulti::new(types::Fd(raw), self.bufs.group())
                        .build()
                        .user_data(OP_RECV | key as u64);
                    self.push(&e);
                }
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(cqe.flags());
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
                let (req, rep) = (self.request_size, self.reply_size);
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if res > 0 {
                    let total = c.partial + res as usize;
                    c.partial = total % req;
                    c.owed += total / req * rep;
                    if c.owed > 0 && !c.sending {
                        self.dirty.push(key);
                    }
                } else if res != -libc::ENOBUFS {
                    c.closing = true;
                }
                if !more {
                    c.ops -= 1;
                    if c.closing {
                        self.dirty.push(key);
                    } else {
                        let e = opcode::RecvMulti::new(types::Fd(c.fd.as_raw_fd()), self.bufs.group())
                            .build()
                            .user_data(OP_RECV | key as u64);
                        c.ops += 1;
                        self.push(&e);
                    }
                }
            }
            OP_SEND => {
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                c.ops -= 1;
                c.sending = false;
                if res > 0 {
                    c.owed -= (res as usize).min(c.owed);
                } else {
                    c.closing = true;
                }
                self.dirty.push(key);
            }
            OP_WAKE => self.wake_armed = false,
            _ => {}
        }
    }

    /// Starts the sends owed and closes finished connections.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.closing {
                if !c.shut {
                    c.shut = true;
                    let _ = SockRef::from(&c.fd).shutdown(Shutdown::Both);
                }
                if c.ops == 0 {
                    self.conns.remove(key);
                }
                continue;
            }
            if c.sending || c.owed == 0 {
                continue;
            }
            let len = c.owed.min(self.block.len());
            c.sending = true;
            c.ops += 1;
            let e = opcode::Send::new(types::Fd(c.fd.as_raw_fd()), self.block.as_ptr(), len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(OP_SEND | key as u64);
            self.push(&e);
        }
        self.dirty = dirty;
    }

    /// Closes everything and waits (bounded) until the kernel has finished every operation.
    fn drain(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(key) {
                c.closing = true;
                self.dirty.push(key);
            }
        }
        let cancel = |ud| opcode::AsyncCancel::new(ud).build().user_data(OP_CANCEL).flags(squeue::Flags::SKIP_SUCCESS);
        if self.accept_armed {
            self.push(&cancel(OP_ACCEPT));
        }
        if self.wake_armed {
            self.push(&cancel(OP_WAKE));
        }
        let limit = Instant::now() + Duration::from_secs(2);
        let mut cqes = Vec::with_capacity(256);
        loop {
            self.flush();
            if self.conns.is_empty() && !self.accept_armed && !self.wake_armed {
                self.drained = true;
                break;
            }
            if Instant::now() >= limit {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(20));
            let _ = self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
            self.reap(&mut cqes);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.drained {
            // SAFETY: dropped once, here; no operation in flight can write into the buffers.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.bufs) };
        } else {
            // Operations may still be in flight: leak what they point at.
            std::mem::forget(std::mem::take(&mut self.block));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}
