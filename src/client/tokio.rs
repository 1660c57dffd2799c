//! The async adapter for tokio applications (cargo feature `tokio`): the same nodes as
//! [`super::blocking`], driven by one task each on the caller's runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rserpool::client::blocking::ClientError> {
//! use std::time::Duration;
//! use rserpool::client::tokio::{PoolElement, PoolUser};
//! use rserpool::client::session::SessionEvent;
//!
//! let registrar = "127.0.0.1:3863".parse().unwrap();
//! let mut pe = PoolElement::start("echo", &[registrar], "127.0.0.1:0".parse().unwrap()).await?;
//! pe.wait_registered(Duration::from_secs(5)).await?;
//! let pu = PoolUser::start(&[registrar]).await?;
//! let mut session = pu.session(b"echo", Default::default()).await?;
//! session.send(0, b"hi".to_vec()).await?;
//! while let Some(ev) = session.recv().await {
//!     if let SessionEvent::Data { .. } = ev { break; }
//! }
//! # Ok(()) }
//! ```
//!
//! Bounds: as in the blocking adapter, a connection whose unsent bytes exceed 64 MiB is
//! closed.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::blocking::ClientError;
use super::config::SessionConfig;
use super::driver::MAX_UNSENT;
use super::node::{PeNode, PeNodeEvent, PuNode, PuNodeEvent};
use super::pe::{PeConfig, PeEvent, PeSpec, RegId};
use super::pu::{PuConfig, PuEvent};
use super::session::{SessionEvent, SessionId};
use super::{ConnToken, Io, Listener, Node};
use crate::time::Time;
use crate::wire::{Policy, PolicyRepr, PoolElementRepr, TransportProtocol, TransportRepr, TransportUse};

type Command<N> = Box<dyn FnOnce(&mut N, Time) + Send>;

enum Input<N> {
    Connected(ConnToken, TcpStream),
    Failed(ConnToken),
    Accepted(Listener, TcpStream, SocketAddr),
    Data(ConnToken, Vec<u8>),
    Closed(ConnToken),
    Run(Command<N>),
}

struct Writer {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    unsent: Arc<AtomicUsize>,
    reader: tokio::task::JoinHandle<()>,
}

/// A handle to a node's task.
struct Handle<N> {
    tx: mpsc::UnboundedSender<Input<N>>,
}

impl<N> Clone for Handle<N> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<N: Node + Send + 'static> Handle<N> {
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut N, Time) -> R + Send + 'static,
    ) -> Result<R, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.exec(move |n, now| {
            let _ = tx.send(f(n, now));
        });
        rx.await.map_err(|_| ClientError::Stopped)
    }

    fn exec(&self, f: impl FnOnce(&mut N, Time) + Send + 'static) {
        let _ = self.tx.send(Input::Run(Box::new(f)));
    }
}

struct Engine<N> {
    node: N,
    writers: HashMap<ConnToken, Writer>,
    tx: mpsc::UnboundedSender<Input<N>>,
    start: Instant,
    accepted: u64,
}

fn spawn<N: Node + Send + 'static>(
    node: N,
    listeners: Vec<(TcpListener, Listener)>,
    mut sink: impl FnMut(N::Event) + Send + 'static,
) -> Handle<N> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (l, kind) in listeners {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                if tx.send(Input::Accepted(kind, s, peer)).is_err() {
                    return;
                }
            }
        });
    }
    let mut engine = Engine { node, writers: HashMap::new(), tx: tx.clone(), start: Instant::now(), accepted: 0 };
    tokio::spawn(async move {
        loop {
            engine.apply();
            while let Some(e) = engine.node.poll_event() {
                sink(e);
            }
            let deadline = engine.node.next_deadline().map(|d| engine.start + Duration::from_millis(d.0));
            let input = match deadline {
                Some(d) => tokio::select! {
                    i = rx.recv() => i,
                    _ = tokio::time::sleep_until(d) => {
                        let now = engine.now();
                        engine.node.on_timer(now);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            // Every handle is gone: stop (dropping the writers closes the connections).
            let Some(input) = input else { return };
            engine.on_input(input);
        }
    });
    Handle { tx }
}

impl<N: Node + Send + 'static> Engine<N> {
    fn now(&self) -> Time {
        Time(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn on_input(&mut self, input: Input<N>) {
        let now = self.now();
        match input {
            Input::Connected(conn, stream) => {
                self.attach(conn, stream);
                self.node.on_connected(conn, now);
            }
            Input::Failed(conn) => self.node.on_closed(conn, now),
            Input::Accepted(kind, stream, peer) => {
                self.accepted += 1;
                let conn = ConnToken::accepted(self.accepted);
                self.attach(conn, stream);
                self.node.on_accepted(conn, kind, peer, now);
            }
            Input::Data(conn, data) => {
                if self.writers.contains_key(&conn) {
                    self.node.on_data(conn, &data, now);
                }
            }
            Input::Closed(conn) => {
                if let Some(w) = self.writers.remove(&conn) {
                    w.reader.abort();
                    self.node.on_closed(conn, now);
                }
            }
            Input::Run(f) => f(&mut self.node, now),
        }
    }

    fn attach(&mut self, conn: ConnToken, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let tx = self.tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Input::Closed(conn));
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Input::Data(conn, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        let unsent = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&unsent);
        let closer = self.tx.clone();
        tokio::spawn(async move {
            while let Some(bytes) = wrx.recv().await {
                let n = bytes.len();
                if wr.write_all(&bytes).await.is_err() {
                    let _ = closer.send(Input::Closed(conn));
                    return;
                }
                counter.fetch_sub(n, Ordering::Relaxed);
            }
            let _ = wr.shutdown().await;
        });
        self.writers.insert(conn, Writer { tx: wtx, unsent, reader });
    }

    fn apply(&mut self) {
        while let Some(io) = self.node.poll_io() {
            match io {
                // ASAP over TLS is the blocking adapter's for now: here `registrar` changes nothing.
                Io::Connect { conn, addr, local, .. } => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let input = match connect(addr, local).await {
                            Ok(s) => Input::Connected(conn, s),
                            Err(_) => Input::Failed(conn),
                        };
                        let _ = tx.send(input);
                    });
                }
                Io::Send { conn, bytes } => {
                    let Some(w) = self.writers.get(&conn) else { continue };
                    if w.unsent.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len() > MAX_UNSENT {
                        tracing::warn!("peer does not read; closing the connection");
                        let _ = self.tx.send(Input::Closed(conn));
                        continue;
                    }
                    let _ = w.tx.send(bytes);
                }
                Io::Close { conn } => {
                    // The writer task flushes what is queued, then shuts the socket down.
                    if let Some(w) = self.writers.remove(&conn) {
                        w.reader.abort();
                    }
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// An async pool element (see [`super::blocking::PoolElement`]): registered in `pool`,
/// serving PU sessions on its listener.
pub struct PoolElement {
    handle: Handle<PeNode>,
    events: mpsc::UnboundedReceiver<PeNodeEvent>,
    reg: RegId,
    local_addr: SocketAddr,
    pool: Vec<u8>,
}

impl PoolElement {
    /// Listens on `listen`, registers that TCP transport in `pool` (Round Robin, no expiry)
    /// at one of `registrars`.
    pub async fn start(
        pool: impl AsRef<[u8]>,
        registrars: &[SocketAddr],
        listen: SocketAddr,
    ) -> Result<Self, ClientError> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let mut user_transport = TransportRepr::new(TransportProtocol::Tcp, local_addr.ip(), local_addr.port());
        user_transport.transport_use = TransportUse::DataPlusControl;
        let spec = PeSpec {
            pool_handle: pool.as_ref().to_vec(),
            pe_id: None,
            user_transport,
            policy: PolicyRepr::Known(Policy::RoundRobin),
            registration_life: -1,
            asap_transport: None,
        };
        let config = PeConfig { registrars: registrars.to_vec(), ..PeConfig::default() };
        let (tx, events) = mpsc::unbounded_channel();
        let handle =
            spawn(PeNode::new(config, SessionConfig::default()), vec![(listener, Listener::Session)], move |e| {
                let _ = tx.send(e);
            });
        let reg = handle.call(move |n: &mut PeNode, now| n.pe.add(&mut n.cx, spec, now)).await?;
        Ok(Self { handle, events, reg: reg.ok_or(ClientError::Stopped)?, local_addr, pool: pool.as_ref().to_vec() })
    }

    /// Where PUs connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the registrar accepted the registration; returns the PE id.
    pub async fn wait_registered(&mut self, timeout: Duration) -> Result<u32, ClientError> {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(PeNodeEvent::Pe(PeEvent::Registered { pe_id, .. })) => return Ok(pe_id),
                    Some(_) => {}
                    None => return Err(ClientError::Stopped),
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| ClientError::Timeout)?
    }

    /// The next event (registrations, sessions).
    pub async fn next_event(&mut self) -> Option<PeNodeEvent> {
        self.events.recv().await
    }

    /// Sends a message on a session.
    pub fn send(&self, session: SessionId, stream: u16, payload: Vec<u8>) {
        self.handle.exec(move |n: &mut PeNode, _| {
            n.server.send(&mut n.cx, session, stream, &payload);
        });
    }

    /// Acknowledges message `seq` of a session.
    pub fn ack(&self, session: SessionId, seq: u64) {
        self.handle.exec(move |n: &mut PeNode, _| n.server.ack(&mut n.cx, session, seq));
    }

    /// Sends a Cookie.
    pub fn send_cookie(&self, session: SessionId, cookie: Vec<u8>) {
        self.handle.exec(move |n: &mut PeNode, _| n.server.send_cookie(&mut n.cx, session, &cookie));
    }

    /// Sends a Business Card naming the PEs to fail over to, in order.
    pub fn send_business_card(&self, session: SessionId, pes: Vec<PoolElementRepr>) {
        let pool = self.pool.clone();
        self.handle.exec(move |n: &mut PeNode, _| {
            let policy = pes.first().map_or(PolicyRepr::Known(Policy::RoundRobin), |p| p.policy.clone());
            n.server.send_business_card(&mut n.cx, session, &pool, &policy, &pes);
        });
    }

    /// Deregisters, waiting up to `timeout` for the answer.
    pub async fn deregister(mut self, timeout: Duration) -> Result<(), ClientError> {
        let reg = self.reg;
        self.handle.exec(move |n: &mut PeNode, now| n.pe.deregister(&mut n.cx, reg, now));
        let wait = async {
            while let Some(e) = self.events.recv().await {
                if matches!(e, PeNodeEvent::Pe(PeEvent::Deregistered { .. })) {
                    return;
                }
            }
        };
        let r = tokio::time::timeout(timeout, wait).await.map_err(|_| ClientError::Timeout);
        let _ = self.handle.call(|n: &mut PeNode, _| n.pe.shutdown(&mut n.cx)).await;
        r
    }
}

type Waiters = Vec<(Vec<u8>, oneshot::Sender<Result<Vec<PoolElementRepr>, ClientError>>)>;

#[derive(Default)]
struct Routes {
    resolves: Waiters,
    sessions: HashMap<SessionId, mpsc::UnboundedSender<SessionEvent>>,
}

/// An async pool user (see [`super::blocking::PoolUser`]).
pub struct PoolUser {
    handle: Handle<PuNode>,
    routes: Arc<Mutex<Routes>>,
}

impl PoolUser {
    /// A pool user of `registrars` with the default timers and cache.
    pub async fn start(registrars: &[SocketAddr]) -> Result<Self, ClientError> {
        Self::with_config(PuConfig { registrars: registrars.to_vec(), ..PuConfig::default() }).await
    }

    /// A pool user with its own settings.
    pub async fn with_config(config: PuConfig) -> Result<Self, ClientError> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let sink = Arc::clone(&routes);
        let handle = spawn(PuNode::new(config, Time::ZERO), Vec::new(), move |e| {
            let Ok(mut r) = sink.lock() else { return };
            match e {
                PuNodeEvent::Pu(ev) => {
                    let (pool, result) = match ev {
                        PuEvent::Resolved { pool_handle, pes, .. } => (pool_handle, Ok(pes)),
                        PuEvent::Failed { pool_handle, error } => (pool_handle, Err(ClientError::Resolve(error))),
                    };
                    let (done, wait): (Waiters, Waiters) = r.resolves.drain(..).partition(|(p, _)| *p == pool);
                    r.resolves = wait;
                    for (_, tx) in done {
                        let _ = tx.send(match &result {
                            Ok(pes) => Ok(pes.clone()),
                            Err(ClientError::Resolve(e)) => Err(ClientError::Resolve(*e)),
                            Err(_) => Err(ClientError::Stopped),
                        });
                    }
                }
                PuNodeEvent::Session(id, ev) => {
                    if let Some(tx) = r.sessions.get(&id) {
                        let _ = tx.send(ev);
                    }
                }
            }
        });
        Ok(Self { handle, routes })
    }

    /// Name-service mode: the PEs of `pool` (cache first).
    pub async fn resolve(&self, pool: &[u8], timeout: Duration) -> Result<Vec<PoolElementRepr>, ClientError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut r) = self.routes.lock() {
            r.resolves.push((pool.to_vec(), tx));
        }
        let p = pool.to_vec();
        self.handle.exec(move |n: &mut PuNode, now| n.resolve(&p, false, now));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Failover mode: a session with `pool`.
    pub async fn session(&self, pool: &[u8], cfg: SessionConfig) -> Result<Session, ClientError> {
        let (tx, events) = mpsc::unbounded_channel();
        let routes = Arc::clone(&self.routes);
        let p = pool.to_vec();
        let id = self
            .handle
            .call(move |n: &mut PuNode, now| {
                n.open_routed(&p, cfg, now, |id| {
                    if let Ok(mut r) = routes.lock() {
                        r.sessions.insert(id, tx);
                    }
                })
            })
            .await?
            .ok_or(ClientError::Stopped)?;
        Ok(Session { id, handle: self.handle.clone(), events })
    }
}

/// An async failover session (made by [`PoolUser::session`]). Closed when dropped.
pub struct Session {
    id: SessionId,
    handle: Handle<PuNode>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
}

impl Session {
    /// Queues a message on `stream`; returns its sequence number.
    pub async fn send(&mut self, stream: u16, payload: Vec<u8>) -> Result<u64, ClientError> {
        let id = self.id;
        let r = self
            .handle
            .call(move |n: &mut PuNode, now| n.with_session(id, now, |s, cx| s.send(cx, stream, payload)))
            .await?;
        Ok(r.ok_or(ClientError::Stopped)??)
    }

    /// The next event; `None` once the pool user is gone.
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let id = self.id;
        self.handle.exec(move |n: &mut PuNode, _| n.close_session(id));
    }
}
