//! The blocking adapter: pool elements, pool users and sessions for programs with threads.
//!
//! Each [`PoolElement`] and [`PoolUser`] runs its node ([`super::node`]) on a thread of its own
//! (mio, no async runtime); the methods here send it commands and wait for answers or events.
//!
//! A pool element that echoes every message back, and a pool user that talks to it through a
//! failover session:
//!
//! ```
//! use std::time::Duration;
//! use rserpool::client::blocking::{PoolElement, PoolUser};
//! use rserpool::client::node::PeNodeEvent;
//! use rserpool::client::server::ServerEvent;
//! use rserpool::client::session::SessionEvent;
//!
//! # // A registrar in this process for the example (`rserpool registrar` elsewhere).
//! # use rserpool::registrar::{Registrar, RegistrarConfig, ASAP};
//! # use rserpool::runtime::{self, EngineConfig, EngineKind, Listen};
//! # let cfg = EngineConfig {
//! #     kind: EngineKind::Epoll,
//! #     listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP)],
//! #     shards: vec![None],
//! #     ..EngineConfig::default()
//! # };
//! # let rc = RegistrarConfig::new(1, 1);
//! # let engine = runtime::start(cfg, move |s, _| Registrar::new(&rc, s, rserpool::time::Time::ZERO)).unwrap();
//! # let registrar = engine.local_addr();
//! # /*
//! let registrar = "127.0.0.1:3863".parse().unwrap();
//! # */
//! let mut pe = PoolElement::builder("echo").registrar(registrar).start()?;
//! pe.wait_registered(Duration::from_secs(5))?;
//! std::thread::spawn(move || loop {
//!     if let Some(PeNodeEvent::Session(ServerEvent::Data { session, stream, seq, payload, .. })) =
//!         pe.next_event(Duration::from_secs(1))
//!     {
//!         pe.send(session, stream, &payload);
//!         pe.ack(session, seq); // processed: the PU will not hand it to another PE
//!     }
//! });
//!
//! let pu = PoolUser::builder().registrar(registrar).start()?;
//! let session = pu.session(b"echo", Default::default())?;
//! session.send(0, b"hello".to_vec())?;
//! while let Some(ev) = session.recv(Duration::from_secs(5)) {
//!     if let SessionEvent::Data { payload, .. } = ev {
//!         assert_eq!(payload, b"hello");
//!         break;
//!     }
//! }
//! # Ok::<(), rserpool::client::blocking::ClientError>(())
//! ```

use core::net::{IpAddr, SocketAddr};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::{SessionConfig, Timers};
use super::driver::{self, Driver, Handle, Sockets};
use super::node::{PeNode, PeNodeEvent, PuNode, PuNodeEvent};
use super::pe::{PeConfig, PeEvent, PeSpec, RegId};
use super::pu::{PuConfig, PuEvent, PuLimits, PuStats, ResolveError};
use super::session::{SendError, SessionEvent, SessionId, SessionStats};
use super::Listener;
use crate::time::Time;
use crate::tls::TlsConnector;
use crate::wire::framer::Frame;
use crate::wire::{
    Framer, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr, TransportUse,
};

/// What went wrong in a blocking call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket could not be opened.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Nothing happened within the time given.
    #[error("timed out")]
    Timeout,
    /// The resolution failed.
    #[error("resolution failed: {0}")]
    Resolve(#[from] ResolveError),
    /// The message could not be queued.
    #[error("send failed: {0}")]
    Send(#[from] SendError),
    /// The registrar rejected the registration with this cause.
    #[error("registration rejected with cause {0:#x}")]
    Rejected(u16),
    /// The node's thread is gone.
    #[error("the client has stopped")]
    Stopped,
}

/// Settings of a [`PoolElement`]; made by [`PoolElement::builder`].
#[derive(Debug)]
pub struct PoolElementBuilder {
    pool: Vec<u8>,
    registrars: Vec<SocketAddr>,
    listen: SocketAddr,
    policy: PolicyRepr,
    lifetime: i32,
    pe_id: Option<u32>,
    timers: Timers,
    session: SessionConfig,
    local: Option<IpAddr>,
    announce: Option<std::net::UdpSocket>,
    asap_listen: Option<SocketAddr>,
    user_transport: Option<TransportRepr>,
    seed: u64,
    tls: Option<TlsConnector>,
}

impl PoolElementBuilder {
    /// Registers this user transport instead of listening for sessions (for a PE whose
    /// service the application serves itself, e.g. `rserpool register`).
    pub fn user_transport(mut self, t: TransportRepr) -> Self {
        self.user_transport = Some(t);
        self
    }
    /// Adds a registrar (repeat for several; tried in order).
    pub fn registrar(mut self, addr: SocketAddr) -> Self {
        self.registrars.push(addr);
        self
    }
    /// Where PUs connect (default `127.0.0.1:0`); registered as the PE's TCP user transport.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// The selection policy with its values (default Round Robin).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = PolicyRepr::Known(policy);
        self
    }
    /// Registration life in ms (default -1: until deregistered or disconnected).
    pub fn lifetime(mut self, ms: i32) -> Self {
        self.lifetime = ms;
        self
    }
    /// A fixed PE identifier (default random).
    pub fn pe_id(mut self, id: u32) -> Self {
        self.pe_id = Some(id);
        self
    }
    /// Protocol timers.
    pub fn timers(mut self, timers: Timers) -> Self {
        self.timers = timers;
        self
    }
    /// Session layer settings.
    pub fn session(mut self, cfg: SessionConfig) -> Self {
        self.session = cfg;
        self
    }
    /// Source address of the registrar connection.
    pub fn local(mut self, ip: IpAddr) -> Self {
        self.local = Some(ip);
        self
    }
    /// A socket joined to the Server Announce group: announced registrars join the table.
    pub fn announces(mut self, socket: std::net::UdpSocket) -> Self {
        self.announce = Some(socket);
        self
    }
    /// Listens for registrars that take the PE over (WIRE.md 7.6) and registers this ASAP
    /// transport.
    pub fn asap_listen(mut self, addr: SocketAddr) -> Self {
        self.asap_listen = Some(addr);
        self
    }
    /// Seed of the PE ids drawn.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Speaks ASAP over TLS with every registrar (`docs/TLS.md`), e.g.
    /// `TlsConnector::new(rserpool::tls::client(&Roots::load(ca)?)?)`. The registrars given
    /// must then be their TLS listeners (and Server Announces, which name the plaintext one,
    /// are better left off).
    pub fn tls(mut self, connector: TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Binds the listener, starts the PE's thread and starts registering.
    pub fn start(self) -> Result<PoolElement, ClientError> {
        let mut sockets = Sockets { listeners: Vec::new(), announce: self.announce, tls: self.tls };
        let (local_addr, user_transport) = match self.user_transport {
            Some(t) => {
                let first = t.addresses.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0]));
                (SocketAddr::new(first, t.port), t)
            }
            None => {
                let listener = std::net::TcpListener::bind(self.listen)?;
                let local_addr = listener.local_addr()?;
                sockets.listeners.push((listener, Listener::Session));
                let mut t = TransportRepr::new(TransportProtocol::Tcp, local_addr.ip(), local_addr.port());
                t.transport_use = TransportUse::DataPlusControl;
                (local_addr, t)
            }
        };
        let asap_transport = match self.asap_listen {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)?;
                let bound = l.local_addr()?;
                sockets.listeners.push((l, Listener::Asap));
                Some(TransportRepr::new(TransportProtocol::Tcp, bound.ip(), bound.port()))
            }
            None => None,
        };
        let spec = PeSpec {
            pool_handle: self.pool.clone(),
            pe_id: self.pe_id,
            user_transport,
            policy: self.policy,
            registration_life: self.lifetime,
            asap_transport,
        };
        let config = PeConfig { registrars: self.registrars, timers: self.timers, local: self.local, seed: self.seed };
        let node = PeNode::new(config, self.session);
        let (tx, events) = mpsc::channel();
        let driver = driver::spawn("rserpool-pe", node, sockets, move |e| {
            let _ = tx.send(e);
        })?;
        let reg = driver.handle.call(move |n: &mut PeNode, now| n.pe.add(&mut n.cx, spec, now)).flatten();
        let reg = reg.ok_or(ClientError::Stopped)?;
        Ok(PoolElement { driver, events, backlog: VecDeque::new(), reg, pool: self.pool, local_addr })
    }
}

/// A pool element: registered in a pool, serving PU sessions on its listener. Deregisters when
/// [`PoolElement::deregister`] is called; dropping it closes its connections, which removes it
/// from the registrar as well (WIRE.md section 1).
pub struct PoolElement {
    driver: Driver<PeNode>,
    events: mpsc::Receiver<PeNodeEvent>,
    backlog: VecDeque<PeNodeEvent>,
    reg: RegId,
    pool: Vec<u8>,
    local_addr: SocketAddr,
}

impl PoolElement {
    /// Settings for a PE of pool `pool`.
    pub fn builder(pool: impl AsRef<[u8]>) -> PoolElementBuilder {
        PoolElementBuilder {
            pool: pool.as_ref().to_vec(),
            registrars: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: PolicyRepr::Known(Policy::RoundRobin),
            lifetime: -1,
            pe_id: None,
            timers: Timers::default(),
            session: SessionConfig::default(),
            local: None,
            announce: None,
            asap_listen: None,
            user_transport: None,
            seed: fastrand::u64(..),
            tls: None,
        }
    }

    /// Where PUs connect (the first address of the user transport).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The pool handle.
    pub fn pool_handle(&self) -> &[u8] {
        &self.pool
    }

    /// The PE identifier (it changes after a cause 0x4).
    pub fn pe_id(&self) -> u32 {
        let reg = self.reg;
        self.driver.handle.call(move |n: &mut PeNode, _| n.pe.pe_id(reg)).flatten().unwrap_or(0)
    }

    /// The registrar in use, if connected.
    pub fn registrar(&self) -> Option<SocketAddr> {
        self.driver.handle.call(|n: &mut PeNode, _| n.pe.registrar()).flatten()
    }

    /// Waits until the registrar accepted the registration; returns the PE id. A rejection
    /// (other than cause 0x4, which the PE settles by itself) ends the wait with
    /// [`ClientError::Rejected`] (the PE goes on trying). Other events met meanwhile stay for
    /// [`PoolElement::next_event`].
    pub fn wait_registered(&mut self, timeout: Duration) -> Result<u32, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut seen = VecDeque::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(PeNodeEvent::Pe(PeEvent::Registered { pe_id, .. })) => break Ok(pe_id),
                Ok(PeNodeEvent::Pe(PeEvent::Rejected { cause, .. })) => break Err(ClientError::Rejected(cause.0)),
                Ok(e) => seen.push_back(e),
                Err(mpsc::RecvTimeoutError::Timeout) => break Err(ClientError::Timeout),
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err(ClientError::Stopped),
            }
        };
        self.backlog.extend(seen);
        result
    }

    /// The next event (registrations, sessions), waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<PeNodeEvent> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        self.events.recv_timeout(timeout).ok()
    }

    /// Sends a message on a session.
    pub fn send(&self, session: SessionId, stream: u16, payload: &[u8]) {
        let payload = payload.to_vec();
        self.driver.handle.exec(move |n: &mut PeNode, _| {
            n.server.send(&mut n.cx, session, stream, &payload);
        });
    }

    /// Acknowledges message `seq` of a session: processed, never to be handed to another PE.
    pub fn ack(&self, session: SessionId, seq: u64) {
        self.driver.handle.exec(move |n: &mut PeNode, _| n.server.ack(&mut n.cx, session, seq));
    }

    /// Sends a Cookie (session state for the PE that takes over if this one fails).
    pub fn send_cookie(&self, session: SessionId, cookie: &[u8]) {
        let cookie = cookie.to_vec();
        self.driver.handle.exec(move |n: &mut PeNode, _| n.server.send_cookie(&mut n.cx, session, &cookie));
    }

    /// Sends a Business Card naming the PEs the PU should fail over to, in order.
    pub fn send_business_card(&self, session: SessionId, pes: Vec<PoolElementRepr>) {
        let pool = self.pool.clone();
        self.driver.handle.exec(move |n: &mut PeNode, _| {
            let policy = pes.first().map_or(PolicyRepr::Known(Policy::RoundRobin), |p| p.policy.clone());
            n.server.send_business_card(&mut n.cx, session, &pool, &policy, &pes);
        });
    }

    /// Changes the policy values (e.g. the load): re-registers at once.
    pub fn set_policy(&self, policy: Policy) {
        let reg = self.reg;
        self.driver.handle.exec(move |n: &mut PeNode, now| {
            n.pe.update(&mut n.cx, reg, now, |s| s.policy = PolicyRepr::Known(policy));
        });
    }

    /// Deregisters (waiting up to `timeout` for the answer) and stops.
    pub fn deregister(mut self, timeout: Duration) -> Result<(), ClientError> {
        let reg = self.reg;
        self.driver.handle.exec(move |n: &mut PeNode, now| n.pe.deregister(&mut n.cx, reg, now));
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(PeNodeEvent::Pe(PeEvent::Deregistered { .. })) => break,
                Ok(_) => {}
                Err(_) => return Err(ClientError::Timeout),
            }
        }
        self.driver.handle.call(|n: &mut PeNode, _| n.pe.shutdown(&mut n.cx));
        self.backlog.clear();
        Ok(())
    }
}

/// A resolution's outcome in name-service mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The pool's overall policy as given (`None`: left out, i.e. Round Robin).
    pub policy: Option<PolicyRepr>,
    /// The PEs, in the order to use them.
    pub pes: Vec<PoolElementRepr>,
    /// Whether it came from the cache.
    pub from_cache: bool,
}

/// Who waits for the resolution of which pool.
type Waiter = (Vec<u8>, mpsc::Sender<Result<Answer, ResolveError>>);

/// Where a [`PoolUser`]'s events go: waiting resolutions and open sessions.
#[derive(Default)]
struct Routes {
    resolves: Vec<Waiter>,
    sessions: HashMap<SessionId, mpsc::Sender<SessionEvent>>,
}

impl Routes {
    fn route(&mut self, e: PuNodeEvent) {
        match e {
            PuNodeEvent::Pu(PuEvent::Resolved { pool_handle, policy, pes, from_cache }) => {
                self.answer(&pool_handle, Ok(Answer { policy, pes, from_cache }))
            }
            PuNodeEvent::Pu(PuEvent::Failed { pool_handle, error }) => self.answer(&pool_handle, Err(error)),
            PuNodeEvent::Session(id, ev) => {
                if let Some(tx) = self.sessions.get(&id) {
                    let _ = tx.send(ev);
                }
            }
        }
    }

    fn answer(&mut self, pool: &[u8], r: Result<Answer, ResolveError>) {
        self.resolves.retain(|(p, tx)| {
            if p == pool {
                let _ = tx.send(r.clone());
                false
            } else {
                true
            }
        });
    }
}

/// Settings of a [`PoolUser`]; made by [`PoolUser::builder`].
#[derive(Debug)]
pub struct PoolUserBuilder {
    config: PuConfig,
    announce: Option<std::net::UdpSocket>,
    tls: Option<TlsConnector>,
}

impl PoolUserBuilder {
    /// Adds a registrar (repeat for several; tried in order).
    pub fn registrar(mut self, addr: SocketAddr) -> Self {
        self.config.registrars.push(addr);
        self
    }
    /// Protocol timers (the stale-cache time among them; 0 turns the cache off).
    pub fn timers(mut self, timers: Timers) -> Self {
        self.config.timers = timers;
        self
    }
    /// Source address of the registrar connection (e.g. another 127.0.0.x).
    pub fn local(mut self, ip: IpAddr) -> Self {
        self.config.local = Some(ip);
        self
    }
    /// PEs asked for per resolution.
    pub fn items(mut self, n: u32) -> Self {
        self.config.items = Some(n);
        self
    }
    /// Cache bounds.
    pub fn limits(mut self, limits: PuLimits) -> Self {
        self.config.limits = limits;
        self
    }
    /// Seed of the cache's random policies.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }
    /// A socket joined to the Server Announce group.
    pub fn announces(mut self, socket: std::net::UdpSocket) -> Self {
        self.announce = Some(socket);
        self
    }
    /// Speaks ASAP over TLS with every registrar (see [`PoolElementBuilder::tls`]). Sessions
    /// with PEs stay plain.
    pub fn tls(mut self, connector: TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Starts the PU's thread (it connects to a registrar when first needed).
    pub fn start(self) -> Result<PoolUser, ClientError> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let sink = Arc::clone(&routes);
        let node = PuNode::new(self.config, Time::ZERO);
        let sockets = Sockets { listeners: Vec::new(), announce: self.announce, tls: self.tls };
        let driver = driver::spawn("rserpool-pu", node, sockets, move |e| {
            if let Ok(mut r) = sink.lock() {
                r.route(e);
            }
        })?;
        Ok(PoolUser { driver, routes })
    }
}

/// A pool user: resolves pools (name-service mode) and opens failover sessions with them.
pub struct PoolUser {
    driver: Driver<PuNode>,
    routes: Arc<Mutex<Routes>>,
}

impl PoolUser {
    /// Settings for a pool user.
    pub fn builder() -> PoolUserBuilder {
        PoolUserBuilder { config: PuConfig::default(), announce: None, tls: None }
    }

    /// Resolves `pool` (from the cache unless `fresh`) and returns the whole answer.
    pub fn resolve_answer(&self, pool: &[u8], fresh: bool, timeout: Duration) -> Result<Answer, ClientError> {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut r) = self.routes.lock() {
            r.resolves.push((pool.to_vec(), tx));
        }
        let p = pool.to_vec();
        self.driver.handle.exec(move |n: &mut PuNode, now| n.resolve(&p, fresh, now));
        match rx.recv_timeout(timeout) {
            Ok(r) => Ok(r?),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Stopped),
        }
    }

    /// Name-service mode: the PEs of `pool`, from the cache when it holds them (selected by
    /// the pool's policy), else from a registrar.
    pub fn resolve(&self, pool: &[u8], timeout: Duration) -> Result<Vec<PoolElementRepr>, ClientError> {
        Ok(self.resolve_answer(pool, false, timeout)?.pes)
    }

    /// Like [`PoolUser::resolve`], but always asks a registrar.
    pub fn resolve_fresh(&self, pool: &[u8], timeout: Duration) -> Result<Vec<PoolElementRepr>, ClientError> {
        Ok(self.resolve_answer(pool, true, timeout)?.pes)
    }

    /// Reports a PE the application could not reach (it leaves the cache; the registrar
    /// removes it after MAX-BAD-PE-REPORT reports).
    pub fn report_unreachable(&self, pool: &[u8], pe_id: u32) {
        let p = pool.to_vec();
        self.driver.handle.exec(move |n: &mut PuNode, now| n.report_unreachable(&p, pe_id, now));
    }

    /// Counters: resolutions sent, cache hits, reports.
    pub fn stats(&self) -> PuStats {
        self.driver.handle.call(|n: &mut PuNode, _| n.pu.stats.clone()).unwrap_or_default()
    }

    /// The registrar in use, if connected.
    pub fn registrar(&self) -> Option<SocketAddr> {
        self.driver.handle.call(|n: &mut PuNode, _| n.pu.registrar()).flatten()
    }

    /// Failover mode: a session with `pool` that the library keeps alive across PE failures.
    pub fn session(&self, pool: &[u8], cfg: SessionConfig) -> Result<Session, ClientError> {
        let (tx, events) = mpsc::channel();
        let routes = Arc::clone(&self.routes);
        let p = pool.to_vec();
        let id = self
            .driver
            .handle
            .call(move |n: &mut PuNode, now| {
                n.open_routed(&p, cfg, now, |id| {
                    if let Ok(mut r) = routes.lock() {
                        r.sessions.insert(id, tx);
                    }
                })
            })
            .flatten()
            .ok_or(ClientError::Stopped)?;
        Ok(Session { id, handle: self.driver.handle.clone(), events, routes: Arc::clone(&self.routes) })
    }
}

/// A failover session with a pool (made by [`PoolUser::session`]). Closed when dropped.
pub struct Session {
    id: SessionId,
    handle: Handle<PuNode>,
    events: mpsc::Receiver<SessionEvent>,
    routes: Arc<Mutex<Routes>>,
}

impl Session {
    /// Queues a message on `stream`; returns its sequence number.
    pub fn send(&self, stream: u16, payload: Vec<u8>) -> Result<u64, ClientError> {
        let id = self.id;
        let r =
            self.handle.call(move |n: &mut PuNode, now| n.with_session(id, now, |s, cx| s.send(cx, stream, payload)));
        Ok(r.flatten().ok_or(ClientError::Stopped)??)
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<SessionEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The PE serving the session now.
    pub fn pe_id(&self) -> Option<u32> {
        let id = self.id;
        self.handle.call(move |n: &mut PuNode, _| n.session(id).and_then(|s| s.pe_id())).flatten()
    }

    /// Counters: sent, re-sent, dropped, failovers.
    pub fn stats(&self) -> SessionStats {
        let id = self.id;
        self.handle.call(move |n: &mut PuNode, _| n.session(id).map(|s| s.stats.clone())).flatten().unwrap_or_default()
    }

    /// Messages not acknowledged yet.
    pub fn unacked(&self) -> usize {
        let id = self.id;
        self.handle.call(move |n: &mut PuNode, _| n.session(id).map(|s| s.unacked())).flatten().unwrap_or(0)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let id = self.id;
        self.handle.exec(move |n: &mut PuNode, _| n.close_session(id));
        if let Ok(mut r) = self.routes.lock() {
            r.sessions.remove(&id);
        }
    }
}

/// A plain blocking ASAP connection: whole messages out and in. For tools and tests that speak
/// ASAP message by message (the nodes above are what applications use).
pub struct AsapStream {
    /// The socket.
    pub stream: TcpStream,
    framer: Framer,
    pending: Vec<u8>,
}

impl AsapStream {
    /// Connects to `addr`, from `local` when given.
    pub fn connect(addr: SocketAddr, local: Option<IpAddr>, timeout: Duration) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        if let Some(ip) = local {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.connect_timeout(&addr.into(), timeout)?;
        Self::over(socket.into())
    }

    /// Reads and writes whole ASAP messages on `stream` (either end of a connection).
    pub fn over(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self { stream, framer: Framer::new(Protocol::Asap, 65535), pending: Vec::new() })
    }

    /// Sends whole messages.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next message; `Ok(None)` if nothing came within `wait`. A closed connection or an
    /// unframeable stream is an error.
    pub fn recv(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.framer.frame(&self.pending) {
                Ok(Frame::Complete(m)) => {
                    let m = m.to_vec();
                    self.pending.drain(..m.len());
                    return Ok(Some(m));
                }
                Ok(Frame::Incomplete { .. }) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Ok(None) };
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    ))
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                // A signal interrupted the read: try again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
