//! A bare io_uring request/reply server: the practical ceiling of the kernel TCP path on this
//! machine, which the load generator runs next to the registrar (`loadgen echo-server`, the
//! `echo` target of `compare` and `sweep`).
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
//!
//! This module is safe code: setup, binding, pinning and the stop handle. The `unsafe` is in
//! its two children, `server` (the io_uring loop) and `bufring` (the provided buffer ring).

mod bufring;
mod server;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};

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

/// The stop flag and the socket pair that wakes the server's ring: the server keeps a read
/// armed on `wake_rx`; [`BareEchoStop::stop`] writes a byte to `wake_tx`.
#[derive(Debug)]
struct StopInner {
    flag: AtomicBool,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

/// Stops a bare server from any thread.
#[derive(Clone, Debug)]
pub struct BareEchoStop(Arc<StopInner>);

impl BareEchoStop {
    fn new() -> io::Result<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        // A stop asked for many times must not block on a full socket buffer.
        wake_tx.set_nonblocking(true)?;
        Ok(Self(Arc::new(StopInner { flag: AtomicBool::new(false), wake_tx, wake_rx })))
    }

    /// Asks the server to stop; returns at once.
    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::Release);
        let _ = (&self.0.wake_tx).write_all(&[1]);
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
    thread: JoinHandle<io::Result<()>>,
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

    /// Waits for the server thread to end (after a stop); its error, if it failed.
    pub fn join(self) -> io::Result<()> {
        self.thread.join().unwrap_or_else(|_| Err(io::Error::other("the bare echo server thread panicked")))
    }
}

/// Binds and starts the server on a new thread (named `bare-echo`).
pub fn spawn(config: BareEchoConfig) -> io::Result<BareEcho> {
    check(&config)?;
    let listener = bind(config.addr)?;
    let local_addr = listener.local_addr()?;
    let stop = BareEchoStop::new()?;
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new().name("bare-echo".into()).spawn(move || {
        pin(config.core);
        server::run(listener, &config, &thread_stop)
    })?;
    Ok(BareEcho { local_addr, stop, thread })
}

fn check(c: &BareEchoConfig) -> io::Result<()> {
    let invalid = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
    if c.request_size == 0 || c.reply_size == 0 {
        return invalid("request_size and reply_size must be positive".into());
    }
    if !c.buffer_count.is_power_of_two() || c.buffer_size == 0 {
        return invalid("buffer_count must be a power of two, buffer_size positive".into());
    }
    // A typo in --core fails here instead of running unpinned (skipped without sysfs).
    let cpus = Path::new("/sys/devices/system/cpu");
    match c.core {
        Some(core) if cpus.is_dir() && !cpus.join(format!("cpu{core}")).is_dir() => {
            invalid(format!("core {core} does not exist on this machine"))
        }
        _ => Ok(()),
    }
}

/// One listener on `addr`. Without `SO_REUSEPORT` the bind fails if anyone already listens
/// there, and nobody can join this one later.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(context)?;
    // Connections in TIME_WAIT from an earlier run do not block the address.
    socket.set_reuse_address(true).map_err(context)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(context)?;
    }
    socket.bind(&addr.into()).map_err(context)?;
    socket.listen(4096).map_err(context)?;
    Ok(socket.into())
}

/// Pins the calling thread to `core`; a failure is reported and the server runs unpinned.
fn pin(core: Option<usize>) {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("warning: cannot pin the bare echo server to core {id}; it runs unpinned");
        }
    }
}
