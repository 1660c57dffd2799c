//! The blocking adapter's engine: one thread per node, with mio. It owns the sockets, turns
//! readiness into [`Node`] calls, writes what the node asks, runs the node's timers on a
//! monotonic clock, and runs the application's commands (closures) between them.
//!
//! Bounds: each connection's unsent bytes are capped at [`MAX_UNSENT`]; a peer that does not
//! read beyond that has its connection closed (the node hears [`Node::on_closed`]).
//!
//! ASAP over TLS (`docs/TLS.md`): with a [`TlsConnector`], connections to registrars speak TLS
//! through the same per-connection layer as the registrar's engine
//! (`crate::runtime::tls::TlsSession`). The node hears such a connection is up only once the
//! handshake is done, so its connect timeout covers the handshake; a TLS failure closes the
//! connection like any other error (the node hunts on). PU↔PE sessions stay plain.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::{ConnToken, Io, Listener, Node};
use crate::runtime::tls::TlsSession;
use crate::time::Time;
use crate::tls::TlsConnector;

/// Most bytes queued unsent on one connection before it is closed.
pub const MAX_UNSENT: usize = 64 << 20;

const WAKER: Token = Token(usize::MAX);
const UDP: Token = Token(usize::MAX - 1);
const LISTENER_BASE: usize = usize::MAX - 16;

type Command<N> = Box<dyn FnOnce(&mut N, Time) + Send>;

enum Msg<N> {
    Run(Command<N>),
    Stop,
}

/// A handle to a node's thread: runs closures on the node.
pub(crate) struct Handle<N> {
    tx: mpsc::Sender<Msg<N>>,
    waker: Arc<Waker>,
}

impl<N> Clone for Handle<N> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: Arc::clone(&self.waker) }
    }
}

impl<N: Node + 'static> Handle<N> {
    /// Runs `f` on the node's thread and returns its result; `None` when the thread is gone.
    pub(crate) fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut N, Time) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.exec(move |n, now| {
            let _ = tx.send(f(n, now));
        });
        rx.recv().ok()
    }

    /// Runs `f` on the node's thread without waiting.
    pub(crate) fn exec(&self, f: impl FnOnce(&mut N, Time) + Send + 'static) {
        if self.tx.send(Msg::Run(Box::new(f))).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A node's thread; stopped (sockets closed) when dropped.
pub(crate) struct Driver<N> {
    pub(crate) handle: Handle<N>,
    thread: Option<JoinHandle<()>>,
}

impl<N> Drop for Driver<N> {
    fn drop(&mut self) {
        if self.handle.tx.send(Msg::Stop).is_ok() {
            let _ = self.handle.waker.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a driver listens on besides the connections its node opens.
#[derive(Default)]
pub(crate) struct Sockets {
    pub(crate) listeners: Vec<(std::net::TcpListener, Listener)>,
    pub(crate) announce: Option<std::net::UdpSocket>,
    /// TLS for connections to registrars.
    pub(crate) tls: Option<TlsConnector>,
}

struct Conn {
    token: ConnToken,
    stream: TcpStream,
    /// Bytes to write (ciphertext on a TLS connection).
    out: Vec<u8>,
    /// The TCP connect has finished.
    connected: bool,
    closing: bool,
    /// TLS to a registrar; the node hears the connection is up once its handshake is done.
    tls: Option<Box<TlsSession>>,
}

struct Engine<N> {
    node: N,
    poll: Poll,
    conns: Slab<Conn>,
    by_token: HashMap<ConnToken, usize>,
    listeners: Vec<(TcpListener, Listener)>,
    udp: Option<UdpSocket>,
    accepted: u64,
    start: Instant,
    buf: Vec<u8>,
    tls: Option<TlsConnector>,
    /// Plaintext decrypted from one read.
    plain: Vec<u8>,
}

/// Starts a thread driving `node`; `sink` gets its events (on that thread).
pub(crate) fn spawn<N: Node + Send + 'static>(
    name: &str,
    node: N,
    sockets: Sockets,
    mut sink: impl FnMut(N::Event) + Send + 'static,
) -> io::Result<Driver<N>> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut listeners = Vec::new();
    for (i, (l, kind)) in sockets.listeners.into_iter().enumerate() {
        l.set_nonblocking(true)?;
        let mut l = TcpListener::from_std(l);
        poll.registry().register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        listeners.push((l, kind));
    }
    let udp = match sockets.announce {
        Some(u) => {
            u.set_nonblocking(true)?;
            let mut u = UdpSocket::from_std(u);
            poll.registry().register(&mut u, UDP, Interest::READABLE)?;
            Some(u)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let mut engine = Engine {
        node,
        poll,
        conns: Slab::new(),
        by_token: HashMap::new(),
        listeners,
        udp,
        accepted: 0,
        start: Instant::now(),
        buf: vec![0; 64 * 1024],
        tls: sockets.tls,
        plain: Vec::new(),
    };
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || engine.run(&rx, &mut sink))?;
    Ok(Driver { handle: Handle { tx, waker }, thread: Some(thread) })
}

impl<N: Node> Engine<N> {
    fn now(&self) -> Time {
        Time(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn run(&mut self, rx: &mpsc::Receiver<Msg<N>>, sink: &mut impl FnMut(N::Event)) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = self.now();
            if self.node.next_deadline().is_some_and(|d| d <= now) {
                self.node.on_timer(now);
            }
            self.apply();
            while let Some(e) = self.node.poll_event() {
                sink(e);
            }
            let timeout = self.node.next_deadline().map(|d| Duration::from_millis(d.millis_since(self.now())));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("client driver: poll failed: {e}");
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => loop {
                        match rx.try_recv() {
                            Ok(Msg::Run(f)) => {
                                let now = self.now();
                                f(&mut self.node, now);
                                self.apply();
                            }
                            Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                                self.apply();
                                self.flush_all();
                                return;
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                        }
                    },
                    UDP => self.read_datagrams(),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(slot) => self.ready(slot, ev.is_writable(), ev.is_readable() || ev.is_read_closed()),
                }
            }
        }
    }

    /// Carries out the node's network actions.
    fn apply(&mut self) {
        while let Some(io) = self.node.poll_io() {
            match io {
                Io::Connect { conn, addr, local, registrar } => {
                    if let Err(e) = self.connect(conn, addr, local, registrar) {
                        tracing::debug!("connect to {addr} failed at once: {e}");
                        let now = self.now();
                        self.node.on_closed(conn, now);
                    }
                }
                Io::Send { conn, bytes } => {
                    if let Some(&slot) = self.by_token.get(&conn) {
                        let c = &mut self.conns[slot];
                        match c.tls.as_mut() {
                            Some(tls) => {
                                tls.staged().extend_from_slice(&bytes);
                                tls.output(&mut c.out);
                            }
                            None => c.out.extend_from_slice(&bytes),
                        }
                        if c.out.len() + c.tls.as_ref().map_or(0, |t| t.unsent()) > MAX_UNSENT {
                            tracing::warn!("peer does not read; closing the connection");
                            self.drop_conn(slot, true);
                        } else if c.connected {
                            self.flush(slot);
                        }
                    }
                }
                Io::Close { conn } => {
                    if let Some(&slot) = self.by_token.get(&conn) {
                        let c = &mut self.conns[slot];
                        c.closing = true;
                        if let Some(tls) = c.tls.as_mut() {
                            tls.close(&mut c.out);
                        }
                        self.flush(slot);
                    }
                }
            }
        }
    }

    fn connect(&mut self, conn: ConnToken, addr: SocketAddr, local: Option<IpAddr>, registrar: bool) -> io::Result<()> {
        let tls = match self.tls.as_ref().filter(|_| registrar) {
            Some(connector) => Some(Box::new(
                TlsSession::dialled(connector, addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            )),
            None => None,
        };
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = local {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let stream = TcpStream::from_std(socket.into());
        self.insert(conn, stream, false, tls)
    }

    fn insert(
        &mut self,
        token: ConnToken,
        stream: TcpStream,
        connected: bool,
        tls: Option<Box<TlsSession>>,
    ) -> io::Result<()> {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let mut c = Conn { token, stream, out: Vec::new(), connected, closing: false, tls };
        self.poll.registry().register(&mut c.stream, Token(slot), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(c);
        self.by_token.insert(token, slot);
        Ok(())
    }

    fn accept(&mut self, i: usize) {
        loop {
            let Some((l, kind)) = self.listeners.get(i) else { return };
            let kind = *kind;
            match l.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    self.accepted += 1;
                    let token = ConnToken::accepted(self.accepted);
                    if self.insert(token, stream, true, None).is_ok() {
                        let now = self.now();
                        self.node.on_accepted(token, kind, peer, now);
                        self.apply();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of descriptors: try again at the next readiness.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_datagrams(&mut self) {
        loop {
            let Some(u) = &self.udp else { return };
            match u.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let now = self.now();
                    self.node.on_datagram(&self.buf[..n], from, now);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn ready(&mut self, slot: usize, writable: bool, readable: bool) {
        let Some(c) = self.conns.get_mut(slot) else { return };
        if !c.connected && (writable || readable) {
            match (c.stream.take_error(), c.stream.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    c.connected = true;
                    if let Some(tls) = c.tls.as_mut() {
                        // The ClientHello goes out now; the node hears of the connection once
                        // the handshake is done (`read`).
                        tls.output(&mut c.out);
                    } else {
                        let token = c.token;
                        let now = self.now();
                        self.node.on_connected(token, now);
                        self.apply();
                    }
                }
                _ => {
                    self.drop_conn(slot, true);
                    return;
                }
            }
        }
        if writable {
            self.flush(slot);
        }
        if readable {
            self.read(slot);
        }
    }

    fn read(&mut self, slot: usize) {
        loop {
            let Some(c) = self.conns.get_mut(slot) else { return };
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.drop_conn(slot, true);
                    return;
                }
                Ok(n) => {
                    let token = c.token;
                    if c.closing {
                        continue;
                    }
                    if c.tls.is_some() {
                        if !self.read_tls(slot, n) {
                            return;
                        }
                        continue;
                    }
                    let now = self.now();
                    self.node.on_data(token, &self.buf[..n], now);
                    self.apply();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(slot, true);
                    return;
                }
            }
        }
    }

    /// Ciphertext (`self.buf[..n]`) arrived on TLS connection `slot`: the handshake moves on
    /// (the node hears the connection is up once it is done), plaintext goes to the node.
    /// Returns whether the connection is still there.
    fn read_tls(&mut self, slot: usize, n: usize) -> bool {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let Some(c) = self.conns.get_mut(slot) else { return false };
        let Some(tls) = c.tls.as_mut() else { return false };
        let handshaking = tls.handshaking();
        let result = tls.input(&self.buf[..n], &mut plain);
        tls.output(&mut c.out);
        let (token, peer, peer_closed) = (c.token, tls.peer, tls.peer_closed);
        let completed = handshaking && !tls.handshaking();
        if let Err(e) = result {
            tls.fail();
            tls.output(&mut c.out);
            tracing::warn!(registrar = %peer, "TLS with the registrar failed: {e}");
            self.flush(slot);
            self.drop_conn(slot, true);
            self.plain = plain;
            return false;
        }
        let now = self.now();
        if completed {
            self.node.on_connected(token, now);
            self.apply();
        }
        if !plain.is_empty() && self.conns.contains(slot) {
            self.node.on_data(token, &plain, now);
            self.apply();
        }
        self.plain = plain;
        if peer_closed {
            // close_notify: the registrar is done with this connection.
            self.drop_conn(slot, true);
            return false;
        }
        self.flush(slot);
        self.conns.contains(slot)
    }

    fn flush(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else { return };
        while !c.out.is_empty() && c.connected {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(slot, true);
                    return;
                }
            }
        }
        if c.closing && (c.out.is_empty() || !c.connected) {
            self.drop_conn(slot, false);
        }
    }

    /// Forgets a connection; tells the node unless the node closed it itself.
    fn drop_conn(&mut self, slot: usize, notify: bool) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut c = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.by_token.remove(&c.token);
        if notify && !c.closing {
            let now = self.now();
            self.node.on_closed(c.token, now);
            self.apply();
        }
    }

    fn flush_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            if let Some(c) = self.conns.get_mut(slot) {
                let _ = c.stream.set_nodelay(true);
                // A last best-effort write (e.g. a Deregistration), without waiting.
                let _ = c.stream.write(&c.out);
            }
        }
    }
}
