//! A deterministic, in-memory engine for testing services: every shard runs the engines' own
//! shard core (connection table, bounded queues between shards, overflow and input pauses,
//! holds, timers), with sockets replaced by in-memory pipes, threads by one loop that runs the
//! shards in an order drawn from a seed, and the clock by virtual time.
//!
//! What the seed decides: which shard runs next (so a message waits in its queue for as many
//! steps of other shards as the draw says: random delays, with the engines' per-pair order),
//! how a client's bytes are cut into reads, and how much of a write a slow reader takes. The
//! same seed and the same calls replay the same run exactly, so a failing seed is a test case.
//!
//! ```
//! use rserpool::runtime::sim::{Sim, SimConfig};
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
//! let mut sim = Sim::new(SimConfig::new(2), 42, |_shard, _shards| Echo);
//! let c = sim.connect(Tag(0));
//! sim.write(c, b"hello");
//! sim.run();
//! assert_eq!(sim.read(c), b"hello");
//! sim.shutdown_write(c);
//! sim.run();
//! assert!(sim.closed(c) && sim.open_connections() == 0);
//! ```

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::ConnState;
use super::mailbox;
use super::shard::{self, ConnHandle, CoreParts, Driver, Limits, ShardCore};
use super::signals::Signals;
use super::stats::{ShardStats, StatsCell};
use super::{EngineError, Transport};
use crate::service::{ConnId, Service, ShardId, Tag};
use crate::time::Time;

/// Steps [`Sim::run`] takes before it decides the services never settle (a livelock).
const MAX_STEPS: usize = 1_000_000;

/// The engine settings a simulation runs with (as [`super::EngineConfig`], scaled for tests).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of shards.
    pub shards: u16,
    /// Records per cross-shard queue (tests shrink it to 1-4 to exercise the overflow).
    pub queue: usize,
    /// Unsent bytes of a connection above which its input pauses.
    pub max_send_queue_bytes: usize,
    /// Unsent bytes of a connection above which it is aborted.
    pub max_send_queue_hard_bytes: usize,
    /// Largest message a service needs to see whole.
    pub max_message_size: usize,
    /// Largest single read handed to the shard core.
    pub read_size: usize,
    /// Connections per shard.
    pub max_connections: usize,
    /// How long a held, half-closed connection stays open.
    pub max_hold: Duration,
}

impl SimConfig {
    /// `shards` shards with the engine's defaults, except small reads.
    pub fn new(shards: u16) -> Self {
        Self {
            shards,
            queue: 1024,
            max_send_queue_bytes: 256 * 1024,
            max_send_queue_hard_bytes: 16 * 1024 * 1024,
            max_message_size: 65536,
            read_size: 4096,
            max_connections: 16384,
            max_hold: Duration::from_secs(30),
        }
    }
}

/// A client end of a connection in the simulation (or the far end of an outbound one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(usize);

/// One simulated TCP connection: the bytes in each direction and who closed what.
#[derive(Debug)]
struct Pipe {
    /// The server's end, once accepted (or dialled).
    conn: Option<ConnId>,
    shard: ShardId,
    tag: Tag,
    peer: SocketAddr,
    to_server: VecDeque<u8>,
    to_client: Vec<u8>,
    /// The client shut its sending side; the server has been told once `eof_told`.
    client_eof: bool,
    eof_told: bool,
    /// The client aborted the connection.
    client_reset: bool,
    /// The server closed its end.
    server_closed: bool,
    /// Most unread bytes the client lets queue (a slow reader); `None`: unlimited.
    window: Option<usize>,
}

/// The simulated network, shared by the shards' drivers and the test.
#[derive(Debug, Default)]
struct Net {
    pipes: Vec<Pipe>,
    /// Addresses outbound connections can reach, with the far ends not yet taken by the test.
    endpoints: HashMap<SocketAddr, Vec<ClientId>>,
}

/// The simulator's connection handle.
#[derive(Debug)]
pub(crate) struct SimConn {
    pipe: Option<usize>,
    dial: Option<SocketAddr>,
}

impl ConnHandle for SimConn {
    fn dial(addr: SocketAddr, _: Transport) -> io::Result<Self> {
        Ok(Self { pipe: None, dial: Some(addr) })
    }
}

/// One shard's simulated I/O.
struct SimDriver {
    me: ShardId,
    net: Rc<RefCell<Net>>,
    rng: fastrand::Rng,
    read_size: usize,
}

impl SimDriver {
    fn pipe_of<S: Service>(core: &ShardCore<S, SimConn>, id: ConnId) -> Option<usize> {
        core.io.conns.get(id).and_then(|c| c.io.pipe)
    }

    /// The server end of `id` is gone.
    fn release<S: Service>(&mut self, core: &mut ShardCore<S, SimConn>, id: ConnId) {
        if let Some(pipe) = core.release(id).and_then(|h| h.pipe) {
            self.net.borrow_mut().pipes[pipe].server_closed = true;
        }
    }

    /// Finishes (or refuses) an outbound connect.
    fn dial<S: Service>(&mut self, core: &mut ShardCore<S, SimConn>, id: ConnId) {
        let Some(addr) = core.io.conns.get_mut(id).and_then(|c| c.io.dial.take()) else { return };
        let mut net = self.net.borrow_mut();
        if !net.endpoints.contains_key(&addr) {
            drop(net);
            return core.connect_failed(id, io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        let index = net.pipes.len();
        let tag = core.io.conns.get(id).map_or(Tag(0), |c| c.tag);
        net.pipes.push(Pipe::new(Some(id), self.me, tag, addr));
        net.endpoints.entry(addr).or_default().push(ClientId(index));
        drop(net);
        if let Some(c) = core.io.conns.get_mut(id) {
            c.io.pipe = Some(index);
        }
        core.connected(id, addr);
    }

    /// Whether this shard has I/O to do: input to hand on, an end to report, bytes to write.
    fn ready<S: Service>(&self, core: &ShardCore<S, SimConn>) -> bool {
        let net = self.net.borrow();
        net.pipes.iter().any(|p| {
            if p.shard != self.me || p.server_closed {
                return false;
            }
            let Some(conn) = p.conn.and_then(|id| core.io.conns.get(id)) else { return p.conn.is_none() };
            (conn.wants_read() && (!p.to_server.is_empty() || (p.client_eof && !p.eof_told)))
                || p.client_reset
                || (conn.sendq.unsent() > 0 && p.room() > 0 && conn.state != ConnState::Connecting)
        })
    }
}

impl Pipe {
    fn new(conn: Option<ConnId>, shard: ShardId, tag: Tag, peer: SocketAddr) -> Self {
        Self {
            conn,
            shard,
            tag,
            peer,
            to_server: VecDeque::new(),
            to_client: Vec::new(),
            client_eof: false,
            eof_told: false,
            client_reset: false,
            server_closed: false,
            window: None,
        }
    }

    /// Bytes the client lets the server write now.
    fn room(&self) -> usize {
        self.window.map_or(usize::MAX, |w| w.saturating_sub(self.to_client.len()))
    }
}

impl Driver for SimDriver {
    type Conn = SimConn;

    fn poll<S: Service>(&mut self, core: &mut ShardCore<S, SimConn>, _: Option<Duration>) -> Result<(), EngineError> {
        let count = self.net.borrow().pipes.len();
        for index in 0..count {
            let (conn, shard) = {
                let p = &self.net.borrow().pipes[index];
                (p.conn, p.shard)
            };
            if shard != self.me {
                continue;
            }
            let Some(id) = conn else {
                // A client connected to this shard: accept it.
                let (peer, tag) = {
                    let p = &self.net.borrow().pipes[index];
                    (p.peer, p.tag)
                };
                let handle = SimConn { pipe: Some(index), dial: None };
                match core.accept(handle, peer, tag) {
                    Ok(id) => self.net.borrow_mut().pipes[index].conn = Some(id),
                    Err(_) => {
                        let mut net = self.net.borrow_mut();
                        net.pipes[index].conn = Some(ConnId { shard: self.me, generation: u16::MAX, slot: u32::MAX });
                        net.pipes[index].server_closed = true;
                    }
                }
                continue;
            };
            if self.net.borrow().pipes[index].server_closed {
                continue;
            }
            if self.net.borrow().pipes[index].client_reset {
                core.failed(id, &io::Error::from(io::ErrorKind::ConnectionReset));
                continue;
            }
            if core.io.conns.get(id).is_some_and(|c| c.wants_read()) {
                let chunk: Vec<u8> = {
                    let mut net = self.net.borrow_mut();
                    let p = &mut net.pipes[index];
                    let n = p.to_server.len().min(1 + self.rng.usize(..self.read_size));
                    p.to_server.drain(..n).collect()
                };
                if !chunk.is_empty() {
                    core.received(id, &chunk);
                } else {
                    let eof = {
                        let p = &mut self.net.borrow_mut().pipes[index];
                        let eof = p.client_eof && !p.eof_told;
                        p.eof_told |= eof;
                        eof
                    };
                    if eof {
                        core.eof(id);
                    }
                }
            }
            // Writes that waited for the client to read go on.
            if core.io.conns.get(id).is_some_and(|c| c.sendq.unsent() > 0) {
                core.io.conns.touch(id);
            }
        }
        Ok(())
    }

    fn reconcile<S: Service>(&mut self, core: &mut ShardCore<S, SimConn>, id: ConnId) {
        let Some(conn) = core.io.conns.get(id) else { return };
        if conn.must_close() {
            core.close(id);
        }
        match core.io.conns.get(id).map(|c| c.state) {
            Some(ConnState::Dead) => return self.release(core, id),
            Some(ConnState::Connecting) => return self.dial(core, id),
            None => return,
            _ => {}
        }
        let Some(index) = Self::pipe_of(core, id) else { return };
        let room = self.net.borrow().pipes[index].room();
        let Some(conn) = core.io.conns.get_mut(id) else { return };
        if room == 0 || !matches!(conn.state, ConnState::Open | ConnState::Draining) {
            // The client's window is full: the write waits until it reads.
            return;
        }
        let Some(bytes) = conn.sendq.start() else { return };
        // A slow reader takes part of a write; the rest waits for the next turn.
        let n = if room == usize::MAX { bytes.len() } else { bytes.len().min(room).min(1 + self.rng.usize(..=room)) };
        self.net.borrow_mut().pipes[index].to_client.extend_from_slice(&bytes[..n]);
        core.sent(id, n);
        if core.io.conns.get(id).is_some_and(|c| c.must_close()) {
            core.io.conns.touch(id);
        }
    }

    fn wake(&mut self, _: &Signals, _: &[ShardId]) {}

    fn busy(&self) -> bool {
        false
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn shutdown<S: Service>(&mut self, core: &mut ShardCore<S, SimConn>) {
        for id in core.close_all() {
            self.release(core, id);
        }
    }
}

/// A service's shards, their queues and their clients, in one deterministic loop.
pub struct Sim<S: Service> {
    cores: Vec<ShardCore<S, SimConn>>,
    drivers: Vec<SimDriver>,
    stats: Vec<Arc<StatsCell>>,
    net: Rc<RefCell<Net>>,
    rng: fastrand::Rng,
    now: Time,
    /// Per-shard weights of the scheduler draw (drawn from the seed: some shards lag).
    weights: Vec<u32>,
    next_port: u16,
}

impl<S: Service> Sim<S> {
    /// A simulation of `config.shards` shards built by `factory(shard, shards)`, all of whose
    /// choices come from `seed`.
    pub fn new(config: SimConfig, seed: u64, factory: impl Fn(ShardId, u16) -> S) -> Self {
        let n = usize::from(config.shards.max(1));
        let mut rng = fastrand::Rng::with_seed(seed);
        let stats: Vec<Arc<StatsCell>> = (0..n).map(|_| Arc::default()).collect();
        let signals = Arc::new(Signals::new(n));
        let net = Rc::new(RefCell::new(Net::default()));
        let limits = Limits {
            pause_above: config.max_send_queue_bytes,
            resume_at: config.max_send_queue_bytes / 2,
            abort_above: config.max_send_queue_hard_bytes,
            max_message: config.max_message_size,
            window: config.max_message_size.max(config.read_size),
            queue: config.queue.max(1),
            max_hold: u64::try_from(config.max_hold.as_millis()).unwrap_or(u64::MAX),
        };
        let mut cores = Vec::with_capacity(n);
        let mut drivers = Vec::with_capacity(n);
        for (i, (out, inbox)) in mailbox::mesh::<S::Msg>(n, limits.queue, &stats).into_iter().enumerate() {
            let me = i as ShardId;
            let parts = CoreParts {
                me,
                shard_count: n,
                out,
                inbox,
                signals: Arc::clone(&signals),
                stats: Arc::clone(&stats[i]),
                now: Time::ZERO,
                limits,
                max_connections: config.max_connections,
                transport: Transport::Tcp,
            };
            cores.push(ShardCore::new(factory(me, n as u16), parts));
            let rng = fastrand::Rng::with_seed(rng.u64(..));
            drivers.push(SimDriver { me, net: Rc::clone(&net), rng, read_size: config.read_size.max(1) });
        }
        let weights = (0..n).map(|_| rng.u32(1..=8)).collect();
        Self { cores, drivers, stats, net, rng, now: Time::ZERO, weights, next_port: 1024 }
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The service of shard `shard`.
    pub fn service(&self, shard: ShardId) -> &S {
        self.cores[usize::from(shard)].service()
    }

    /// The service of shard `shard`, to change or query between steps.
    pub fn service_mut(&mut self, shard: ShardId) -> &mut S {
        self.cores[usize::from(shard)].service_mut()
    }

    /// The engine counters of shard `shard`.
    pub fn stats(&self, shard: ShardId) -> ShardStats {
        self.stats[usize::from(shard)].snapshot()
    }

    /// Number of shards.
    pub fn shards(&self) -> u16 {
        self.cores.len() as u16
    }

    /// Connections the shards hold open (in any state).
    pub fn open_connections(&self) -> usize {
        self.cores.iter().map(|c| c.io.conns.len()).sum()
    }

    /// A client connects to a listener tagged `tag`; a shard drawn at random accepts it (as
    /// `SO_REUSEPORT` spreads connections).
    pub fn connect(&mut self, tag: Tag) -> ClientId {
        let shard = self.rng.u16(..self.shards());
        self.connect_to(shard, tag)
    }

    /// A client connects to a listener tagged `tag` and shard `shard` accepts it.
    pub fn connect_to(&mut self, shard: ShardId, tag: Tag) -> ClientId {
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        let peer = SocketAddr::from(([192, 0, 2, 1 + (port % 200) as u8], port));
        self.connect_from(shard, tag, peer)
    }

    /// A client at `peer` connects to a listener tagged `tag` and shard `shard` accepts it.
    pub fn connect_from(&mut self, shard: ShardId, tag: Tag, peer: SocketAddr) -> ClientId {
        let mut net = self.net.borrow_mut();
        net.pipes.push(Pipe::new(None, shard % self.shards(), tag, peer));
        ClientId(net.pipes.len() - 1)
    }

    /// Lets outbound connections to `addr` succeed; [`Sim::take_dialled`] hands their far ends
    /// to the test.
    pub fn listen(&mut self, addr: SocketAddr) {
        self.net.borrow_mut().endpoints.entry(addr).or_default();
    }

    /// The far ends of the connections made to `addr` since the last call.
    pub fn take_dialled(&mut self, addr: SocketAddr) -> Vec<ClientId> {
        self.net.borrow_mut().endpoints.get_mut(&addr).map(std::mem::take).unwrap_or_default()
    }

    /// The server's id for the connection of client `c`, once accepted.
    pub fn conn_id(&self, c: ClientId) -> Option<ConnId> {
        self.net.borrow().pipes[c.0].conn.filter(|id| id.slot != u32::MAX)
    }

    /// The client sends `bytes`.
    pub fn write(&mut self, c: ClientId, bytes: &[u8]) {
        let mut net = self.net.borrow_mut();
        let p = &mut net.pipes[c.0];
        assert!(!p.client_eof && !p.client_reset, "write after the client closed its side");
        p.to_server.extend(bytes);
    }

    /// Everything the server sent to client `c` and the client has not read yet.
    pub fn read(&mut self, c: ClientId) -> Vec<u8> {
        std::mem::take(&mut self.net.borrow_mut().pipes[c.0].to_client)
    }

    /// The client closes its sending side (TCP FIN); it can still read.
    pub fn shutdown_write(&mut self, c: ClientId) {
        self.net.borrow_mut().pipes[c.0].client_eof = true;
    }

    /// The client aborts the connection (TCP RST).
    pub fn reset(&mut self, c: ClientId) {
        self.net.borrow_mut().pipes[c.0].client_reset = true;
    }

    /// The client reads at most `window` unread bytes (`None`: as many as come).
    pub fn set_window(&mut self, c: ClientId, window: Option<usize>) {
        self.net.borrow_mut().pipes[c.0].window = window;
    }

    /// Whether the server has closed its end of client `c`'s connection.
    pub fn closed(&self, c: ClientId) -> bool {
        self.net.borrow().pipes[c.0].server_closed
    }

    /// Bytes client `c` sent that the server has not read yet.
    pub fn unread_by_server(&self, c: ClientId) -> usize {
        self.net.borrow().pipes[c.0].to_server.len()
    }

    /// Whether shard `i` has anything to do at the current time.
    fn has_work(&self, i: usize) -> bool {
        let core = &self.cores[i];
        core.has_work()
            || core.pending_inbound()
            || core.io_spilling()
            || core.next_due().is_some_and(|t| t <= self.now)
            || self.drivers[i].ready(core)
    }

    /// Runs one loop iteration of shard `i`.
    fn step(&mut self, i: usize) {
        let (core, driver) = (&mut self.cores[i], &mut self.drivers[i]);
        core.io.now = self.now;
        let _ = driver.poll(core, None);
        shard::step(core, driver);
        core.flush_outgoing(driver);
        shard::reconcile_touched(core, driver);
    }

    /// Runs shards, in an order drawn from the seed, until none has anything to do at the
    /// current time. Panics if that never happens (a livelock).
    pub fn run(&mut self) {
        for _ in 0..MAX_STEPS {
            let busy: Vec<usize> = (0..self.cores.len()).filter(|&i| self.has_work(i)).collect();
            if busy.is_empty() {
                return;
            }
            // Idle shards run too, now and then: a step must never depend on being needed.
            let total: u32 = self.weights.iter().sum();
            let mut pick = self.rng.u32(..total);
            let mut i = 0;
            while pick >= self.weights[i] {
                pick -= self.weights[i];
                i += 1;
            }
            if !busy.contains(&i) && self.rng.bool() {
                i = busy[self.rng.usize(..busy.len())];
            }
            self.step(i);
        }
        panic!("the simulation did not settle within {MAX_STEPS} steps");
    }

    /// Runs at most `steps` shard steps (fewer if the shards settle first): lets a test act
    /// while messages are still on their way between shards.
    pub fn run_steps(&mut self, steps: usize) {
        for _ in 0..steps {
            let busy: Vec<usize> = (0..self.cores.len()).filter(|&i| self.has_work(i)).collect();
            if busy.is_empty() {
                return;
            }
            let i = busy[self.rng.usize(..busy.len())];
            self.step(i);
        }
    }

    /// Moves virtual time to `t`, stopping at every timer due before it, and runs the shards
    /// at each stop.
    pub fn run_until(&mut self, t: Time) {
        self.run();
        loop {
            let next = self.cores.iter().filter_map(|c| c.next_due()).filter(|&d| d > self.now).min();
            match next {
                Some(d) if d <= t => {
                    self.now = d;
                    self.run();
                }
                _ => break,
            }
        }
        self.now = self.now.max(t);
        self.run();
    }

    /// Moves virtual time forward by `ms` milliseconds (see [`Sim::run_until`]).
    pub fn advance(&mut self, ms: u64) {
        self.run_until(self.now.add_millis(ms));
    }

    /// Closes every connection, as an engine does when it stops.
    pub fn shutdown(&mut self) {
        for i in 0..self.cores.len() {
            let (core, driver) = (&mut self.cores[i], &mut self.drivers[i]);
            driver.shutdown(core);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Outbox;

    /// Echoes what it reads; "dial ADDR" connects out to ADDR and greets the far end there;
    /// tells the dialling client "up", "down" (a failed connect) or "gone" (the outbound one
    /// closed).
    #[derive(Default)]
    struct Dialler {
        asked_by: HashMap<ConnId, ConnId>,
    }

    impl Service for Dialler {
        type Msg = ();
        fn on_accept(&mut self, _: ConnId, _: Tag, _: SocketAddr, _: Time, _: &mut impl Outbox<()>) {}
        fn on_connect(&mut self, c: ConnId, tag: Tag, r: io::Result<SocketAddr>, _: Time, out: &mut impl Outbox<()>) {
            assert_eq!(tag, Tag(9));
            let asker = self.asked_by[&c];
            let word: &[u8] = if r.is_ok() { b"up" } else { b"down" };
            out.send(asker, &mut |b| b.extend_from_slice(word));
            if r.is_ok() {
                out.send(c, &mut |b| b.extend_from_slice(b"hi"));
            }
        }
        fn on_data(&mut self, c: ConnId, d: &[u8], _: Time, out: &mut impl Outbox<()>) -> usize {
            if let Some(addr) = d.strip_prefix(b"dial ") {
                let addr = std::str::from_utf8(addr).unwrap().parse().unwrap();
                let dialled = out.connect(addr, Tag(9)).expect("a connection slot");
                self.asked_by.insert(dialled, c);
            } else {
                out.send(c, &mut |b| b.extend_from_slice(d));
            }
            d.len()
        }
        fn on_close(&mut self, c: ConnId, _: Time, out: &mut impl Outbox<()>) {
            if let Some(asker) = self.asked_by.remove(&c) {
                out.send(asker, &mut |b| b.extend_from_slice(b"gone"));
            }
        }
        fn on_message(&mut self, _: ShardId, _: (), _: Time, _: &mut impl Outbox<()>) {}
        fn on_timer(&mut self, _: Time, _: &mut impl Outbox<()>) {}
        fn next_timer(&self) -> Option<Time> {
            None
        }
    }

    #[test]
    fn outbound_connections_reach_listening_test_ends_and_fail_elsewhere() {
        let mut sim = Sim::new(SimConfig::new(2), 7, |_, _| Dialler::default());
        let peer: SocketAddr = "203.0.113.5:9901".parse().unwrap();
        sim.listen(peer);
        let c = sim.connect(Tag(0));
        sim.write(c, format!("dial {peer}").as_bytes());
        sim.run();
        assert_eq!(sim.read(c), b"up");
        let far = sim.take_dialled(peer);
        assert_eq!(far.len(), 1);
        assert_eq!(sim.read(far[0]), b"hi", "bytes sent on connect arrive");
        sim.write(far[0], b"ping");
        sim.run();
        assert_eq!(sim.read(far[0]), b"ping", "served like any other connection");
        sim.reset(far[0]);
        sim.run();
        assert_eq!(sim.read(c), b"gone");
        // Nobody listens here: the connect fails, then the connection closes.
        sim.write(c, b"dial 203.0.113.6:9901");
        sim.run();
        assert_eq!(sim.read(c), b"downgone");
        assert_eq!(sim.stats(0).connect_failures + sim.stats(1).connect_failures, 1);
        sim.shutdown_write(c);
        sim.run();
        assert_eq!(sim.open_connections(), 0);
    }
}
