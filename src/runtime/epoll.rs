//! The portable engine: epoll through `mio`, edge-triggered. Used where io_uring is unavailable
//! or blocked. It drives the same [`ShardCore`] as the io_uring engine; only the socket calls
//! differ: readiness events set per-connection flags, and `reconcile` reads (into one per-shard
//! buffer the service reads in place) and writes until the socket would block.
//!
//! Backpressure needs no interest changes here: a paused connection is simply not read, so the
//! kernel's receive window closes on the peer. Resuming reads at once, since the edge that
//! announced the pending input has already been consumed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::SockRef;

use super::conn::ConnState;
use super::shard::{Accepting, ConnHandle, Driver, ShardCore};
use super::signals::{RemoteWake, Signals};
use super::{EngineConfig, EngineError, Transport};
use crate::service::{ConnId, Service, ShardId};

const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// Reads per connection per loop iteration, so one busy peer cannot starve the others.
const READ_BUDGET: usize = 16;
/// Accepts per loop iteration.
const ACCEPT_BUDGET: usize = 256;
/// Pause before accepting again after running out of file descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

fn token(id: ConnId) -> Token {
    Token(((id.generation as usize) << 32) | id.slot as usize)
}

fn token_conn(me: ShardId, t: Token) -> ConnId {
    ConnId { shard: me, generation: (t.0 >> 32) as u16, slot: t.0 as u32 }
}

/// epoll's per-connection handle.
#[derive(Debug)]
pub(crate) struct EpollConn {
    stream: TcpStream,
    /// An edge said readable and no read has hit `WouldBlock` since.
    readable: bool,
    /// Writable, as far as we know (a fresh accepted connection is; a dialled one once its
    /// connect has finished).
    writable: bool,
    /// Registered with the poller (a dialled connection is, from its first reconcile).
    registered: bool,
}

impl ConnHandle for EpollConn {
    fn dial(addr: SocketAddr, transport: Transport) -> io::Result<Self> {
        // Starts a non-blocking connect; writability reports its end.
        let stream = TcpStream::connect(addr)?;
        transport.configure_connected(SockRef::from(&stream))?;
        Ok(Self { stream, readable: false, writable: false, registered: false })
    }
}

/// One listening socket of a shard.
struct Listener {
    socket: mio::net::TcpListener,
    /// What its connections are (tag, TLS).
    how: Accepting,
    ready: bool,
}

/// One shard's epoll driver.
pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    me: ShardId,
    transport: Transport,
    scratch: Box<[u8]>,
    /// Connections that still had input when their read budget ran out.
    again: Vec<ConnId>,
    accept_retry_at: Option<Instant>,
    accept_errors: u64,
}

impl EpollDriver {
    /// Sets up shard `me`'s poller, waker and listener.
    pub(crate) fn new(
        me: ShardId,
        listeners: Vec<(TcpListener, Accepting)>,
        config: &EngineConfig,
        signals: &Signals,
    ) -> Result<Self, EngineError> {
        let setup = |source| EngineError::PollSetup { shard: me, source };
        let poll = Poll::new().map_err(setup)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(setup)?;
        signals.set_remote(me, RemoteWake::Mio(waker));
        let mut socks = Vec::with_capacity(listeners.len());
        for (i, (listener, how)) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true).map_err(setup)?;
            let mut socket = mio::net::TcpListener::from_std(listener);
            poll.registry().register(&mut socket, Token(LISTENER_BASE - i), Interest::READABLE).map_err(setup)?;
            socks.push(Listener { socket, how, ready: true });
        }
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            listeners: socks,
            me,
            transport: config.transport,
            scratch: vec![0; config.buffer_size as usize].into_boxed_slice(),
            again: Vec::new(),
            accept_retry_at: None,
            accept_errors: 0,
        })
    }

    fn accept<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>, index: usize) {
        let how = self.listeners[index].how.clone();
        for _ in 0..ACCEPT_BUDGET {
            match self.listeners[index].socket.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = self.transport.configure_accepted(SockRef::from(&stream)) {
                        tracing::debug!(shard = self.me, error = %e, "cannot configure accepted socket");
                    }
                    let conn = EpollConn { stream, readable: false, writable: true, registered: true };
                    // Refused (table full, stopping): dropping the handle closes the socket.
                    let Ok(id) = core.accept(conn, peer, &how) else {
                        continue;
                    };
                    let Some(conn) = core.io.conns.get_mut(id) else {
                        continue;
                    };
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut conn.io.stream, token(id), interest) {
                        core.failed(id, &e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[index].ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    if self.accept_errors % 1024 == 0 {
                        tracing::warn!(shard = self.me, error = %e, "accept failed; retrying shortly");
                    }
                    self.accept_errors += 1;
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
                Err(e) => tracing::debug!(shard = self.me, error = %e, "accept failed"),
            }
        }
    }

    fn close<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>, id: ConnId) {
        core.close(id);
        if let Some(mut conn) = core.release(id) {
            // Closing the fd removes it from epoll too; deregistering first keeps mio's view
            // consistent. Dropping the stream closes the socket.
            if conn.registered {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// Moves a dialled connection on: registers it, and once it is writable (or failed) tells
    /// the core how the connect ended.
    fn connecting<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>, id: ConnId) {
        let Some(conn) = core.io.conns.get_mut(id) else { return };
        if !conn.io.registered {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut conn.io.stream, token(id), interest) {
                core.connect_failed(id, e);
                return;
            }
            conn.io.registered = true;
        }
        if !(conn.io.writable || conn.io.readable) {
            return;
        }
        match conn.io.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return core.connect_failed(id, e),
        }
        match conn.io.stream.peer_addr() {
            Ok(peer) => core.connected(id, peer),
            // Not connected yet: a spurious wake-up; wait for the next edge.
            Err(e) if e.kind() == io::ErrorKind::NotConnected || e.raw_os_error() == Some(libc::EINPROGRESS) => {
                conn.io.writable = false;
                conn.io.readable = false;
            }
            Err(e) => core.connect_failed(id, e),
        }
    }

    /// Reads while the connection wants input and the socket has some, within the budget.
    fn read<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>, id: ConnId) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = core.io.conns.get_mut(id) else {
                return;
            };
            if !(conn.io.readable && conn.wants_read()) {
                return;
            }
            match conn.io.stream.read(&mut self.scratch) {
                Ok(0) => {
                    conn.io.readable = false;
                    core.eof(id);
                    return;
                }
                Ok(n) => core.received(id, &self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.io.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    conn.io.readable = false;
                    core.failed(id, &e);
                    return;
                }
            }
        }
        if core.io.conns.get(id).is_some_and(|c| c.io.readable && c.wants_read()) {
            self.again.push(id);
        }
    }

    /// Writes queued bytes until the queue is empty or the socket would block.
    fn write<S: Service>(core: &mut ShardCore<S, EpollConn>, id: ConnId) {
        loop {
            let Some(conn) = core.io.conns.get_mut(id) else {
                return;
            };
            if !conn.io.writable || !matches!(conn.state, ConnState::Open | ConnState::Draining) {
                return;
            }
            let Some(bytes) = conn.sendq.start() else {
                return;
            };
            match (&conn.io.stream).write(bytes) {
                Ok(0) => {
                    core.send_failed(id, &io::Error::from(io::ErrorKind::WriteZero));
                    return;
                }
                Ok(n) => core.sent(id, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.io.writable = false;
                    conn.sendq.complete(0);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => conn.sendq.complete(0),
                Err(e) => {
                    core.send_failed(id, &e);
                    return;
                }
            }
        }
    }
}

impl Driver for EpollDriver {
    type Conn = EpollConn;

    fn poll<S: Service>(
        &mut self,
        core: &mut ShardCore<S, EpollConn>,
        timeout: Option<Duration>,
    ) -> Result<(), EngineError> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(EngineError::Io { shard: self.me, what: "epoll_wait", source }),
        }
        for ev in self.events.iter() {
            match ev.token() {
                WAKER => {}
                Token(t) if t > LISTENER_BASE - self.listeners.len() => {
                    self.listeners[LISTENER_BASE - t].ready = true;
                }
                t => {
                    let id = token_conn(self.me, t);
                    let Some(conn) = core.io.conns.get_mut(id) else {
                        continue;
                    };
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        conn.io.readable = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        conn.io.writable = true;
                    }
                    core.io.conns.touch(id);
                }
            }
        }
        for id in self.again.drain(..) {
            core.io.conns.touch(id);
        }
        if self.accept_retry_at.is_none_or(|t| Instant::now() >= t) {
            self.accept_retry_at = None;
            for i in 0..self.listeners.len() {
                if self.listeners[i].ready && self.accept_retry_at.is_none() {
                    self.accept(core, i);
                }
            }
        }
        Ok(())
    }

    fn reconcile<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>, id: ConnId) {
        if core.io.conns.get(id).is_some_and(|c| c.must_close() || c.state == ConnState::Dead) {
            self.close(core, id);
            return;
        }
        if core.io.conns.get(id).is_some_and(|c| c.state == ConnState::Connecting) {
            self.connecting(core, id);
            if core.io.conns.get(id).is_some_and(|c| c.state != ConnState::Open) {
                if core.io.conns.get(id).is_some_and(|c| c.must_close()) {
                    self.close(core, id);
                }
                return;
            }
        }
        self.read(core, id);
        Self::write(core, id);
        if core.io.conns.get(id).is_some_and(|c| c.must_close()) {
            self.close(core, id);
        }
    }

    fn wake(&mut self, signals: &Signals, targets: &[ShardId]) {
        for &t in targets {
            signals.wake_remote(t);
        }
    }

    fn busy(&self) -> bool {
        !self.again.is_empty() || (self.accept_retry_at.is_none() && self.listeners.iter().any(|l| l.ready))
    }

    fn deadline(&self) -> Option<Instant> {
        self.accept_retry_at
    }

    fn shutdown<S: Service>(&mut self, core: &mut ShardCore<S, EpollConn>) {
        for id in core.close_all() {
            if let Some(mut conn) = core.release(id) {
                if conn.registered {
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                }
            }
        }
    }
}
