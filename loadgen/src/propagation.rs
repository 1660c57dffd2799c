//! `loadgen propagation`: how long a change made at one registrar (A) takes to become visible
//! at a peer registrar (B), under registration churn at A.
//!
//! - **Churn at A, open loop.** `slots` PEs (`slots_per_pool` to a pool, pools `prop-00000`
//!   ...) over `churn_connections` connections to A. Update *k* is due at `start + k / rate`;
//!   it takes the next idle slot and registers its PE if absent, else deregisters it. A slot is
//!   idle again once A answered and B was seen to show the change, so each slot has at most one
//!   change in flight and what B shows is never ambiguous. A due update with no idle slot is
//!   counted as `not_sent` (the run could not offer the rate).
//! - **Watching B.** Once A answers, the slot's pool is resolved at B (`probe_connections`
//!   connections, at most `probe_depth` in flight each, one resolution per pool at a time,
//!   asking for every PE of the pool), and again at least `probe_interval` after each
//!   resolution that does not show the change yet. The change is visible when an answer
//!   shows the PE (registration) or no longer shows it (deregistration).
//! - **What is recorded** (hdrhistogram, like the other modes): from the update's *intended*
//!   time to the arrival of B's first answer that shows it (`latency`, an upper bound: no
//!   coordinated omission, and the probe's own round trip included); from the intended time
//!   to the send time of the last answer that did not show it yet (`latency_lower`, a lower
//!   bound; the truth lies between); from A's answer to B's (`after_a_answer`, 0 when B showed
//!   it first); A's own answer time. Updates intended in the warm-up are not recorded; a
//!   recorded update still not visible `drain` seconds after the end counts as `unseen`.
//!
//! One thread, one mio poll loop (it spins while an update is due within a millisecond, so
//! pin it to a core of its own).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use rserpool::wire::asap::{self, Body, MessageType, Resolution};
use rserpool::wire::{
    Framer, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr,
    Writer,
};

use crate::client::Clock;
use crate::report::{self, Machine};
use crate::stats::{new_histogram, spectrum, summarize, LatencySummary, MAX_LATENCY};
use crate::Nanos;

/// How a propagation run is shaped.
#[derive(Clone, Debug, Serialize)]
pub struct PropagationConfig {
    /// Registrar A's ASAP address (changes are made there).
    pub at: SocketAddr,
    /// Registrar B's ASAP address (where they must become visible).
    pub see: SocketAddr,
    /// Updates (registrations and deregistrations) per second at A.
    pub rate: f64,
    /// PEs that churn.
    pub slots: usize,
    /// PEs per pool (each resolution at B asks for this many).
    pub slots_per_pool: usize,
    /// Connections to A (each registers its share of the slots).
    pub churn_connections: usize,
    /// Connections to B for the resolutions that watch.
    pub probe_connections: usize,
    /// Resolutions in flight per connection to B, at most.
    pub probe_depth: usize,
    /// Least time between two resolutions of one pool, nanoseconds.
    pub probe_interval_ns: Nanos,
    /// Warm-up seconds (not recorded).
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Stop after this many recorded updates instead (bounded by the duration all the same).
    pub updates: Option<u64>,
    /// Seconds to wait after the end for changes still on their way.
    pub drain_s: f64,
    /// Registration life of the PEs, ms.
    pub lifetime_ms: i32,
    /// Pool handle prefix.
    pub prefix: String,
    /// Watch for the changes at B (false: churn at A only, a change is done when A answers).
    pub watch: bool,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        Self {
            at: "127.0.0.1:3863".parse().expect("an address"),
            see: "127.0.0.1:3864".parse().expect("an address"),
            rate: 50_000.0,
            slots: 4096,
            slots_per_pool: 4,
            churn_connections: 8,
            probe_connections: 4,
            probe_depth: 16,
            probe_interval_ns: 100_000,
            warmup_s: 1.0,
            duration_s: 5.0,
            updates: None,
            drain_s: 2.0,
            lifetime_ms: 600_000,
            prefix: "prop-".into(),
            watch: true,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct PropagationResult {
    /// Updates per second asked for.
    pub intended_rate: f64,
    /// Recorded updates per second offered (sent to A) over the measured window.
    pub offered_rate: f64,
    /// Seconds measured.
    pub measured_s: f64,
    /// Updates recorded (intended in the measured window and sent).
    pub recorded: u64,
    /// Of those, registrations and deregistrations.
    pub registrations: u64,
    /// Deregistrations recorded.
    pub deregistrations: u64,
    /// Recorded updates seen at B.
    pub seen: u64,
    /// Recorded updates A answered but B never showed within the drain time.
    pub unseen: u64,
    /// Recorded updates A never answered.
    pub unanswered: u64,
    /// Updates due while every slot had a change in flight (not sent).
    pub not_sent: u64,
    /// Updates A refused.
    pub rejected: u64,
    /// Answers that do not parse or answer nothing asked, and lost connections.
    pub errors: u64,
    /// Resolutions sent to B (all, warm-up included).
    pub probes: u64,
    /// Resolutions per update seen.
    pub probes_per_update: f64,
    /// Recorded updates that B showed before A's answer arrived.
    pub seen_before_a_answer: u64,
    /// Intended time to the arrival of B's first answer showing the change (upper bound).
    pub latency: LatencySummary,
    /// Intended time to the send of B's last answer not showing it yet (lower bound).
    pub latency_lower: LatencySummary,
    /// A's answer to B's first answer showing the change.
    pub after_a_answer: LatencySummary,
    /// Intended time to A's answer.
    pub a_answer: LatencySummary,
    /// Spectrum of `latency`: (quantile, us).
    pub spectrum: Vec<(f64, f64)>,
    /// Spectrum of `latency_lower`.
    pub spectrum_lower: Vec<(f64, f64)>,
    /// Spectrum of `a_answer`.
    pub spectrum_a_answer: Vec<(f64, f64)>,
}

impl PropagationResult {
    /// Updates that went wrong (unseen, unanswered, refused) and bad answers.
    pub fn error_total(&self) -> u64 {
        self.unseen + self.unanswered + self.rejected + self.errors
    }
}

/// A change in flight on a slot.
#[derive(Clone, Copy, Debug)]
struct Change {
    intended: Nanos,
    answered: Option<Nanos>,
    seen: Option<Nanos>,
    /// Send time of the last resolution at B that did not show it yet.
    last_miss: Nanos,
    recorded: bool,
}

#[derive(Clone, Debug)]
struct Slot {
    pe_id: u32,
    pool: u32,
    conn: usize,
    /// Registered at A once the change in flight is done.
    present: bool,
    change: Option<Change>,
    register: Vec<u8>,
    deregister: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct PoolState {
    /// Slots with a change not yet seen at B.
    unseen: u32,
    /// A resolution of it is in flight.
    probing: bool,
    /// It waits in the probe schedule.
    queued: bool,
    resolve: Vec<u8>,
    handle: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Flight {
    Update(u32),
    Probe { pool: u32, sent: Nanos },
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    inflight: VecDeque<Flight>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> io::Result<Self> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(Self { stream: TcpStream::from_std(s), rbuf: Vec::new(), wbuf: Vec::new(), inflight: VecDeque::new() })
    }

    /// Writes what it can of the send buffer.
    fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "connection closed")),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads everything available; `false` when the peer closed.
    fn fill(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(false),
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn registration(cfg: &PropagationConfig, handle: &[u8], pe_id: u32) -> Vec<u8> {
    let pe = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: cfg.lifetime_ms,
        // From the address the registration comes from (the registrar checks the source:
        // security.registration_check); PEs differ by id and port.
        user_transport: TransportRepr::new(
            TransportProtocol::Tcp,
            [127, 0, 0, 1].into(),
            1024 + (pe_id % 64_000) as u16,
        ),
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: None,
    };
    let params = vec![ParamRepr::PoolHandle(handle.to_vec()), ParamRepr::PoolElement(pe)];
    MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().expect("encodable")
}

fn handle_and_id(t: MessageType, handle: &[u8], pe_id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    asap::emit_handle_and_id(&mut Writer::new(&mut b), t, 0, handle, Some(pe_id), None).expect("encodable");
    b
}

fn resolution(handle: &[u8], items: usize) -> Vec<u8> {
    let mut b = Vec::new();
    asap::emit_handle_resolution(&mut Writer::new(&mut b), handle, Some(items as u32)).expect("encodable");
    b
}

/// Blocking: the PE ids a resolution of `handle` at `addr` shows.
fn resolve_once(s: &mut std::net::TcpStream, handle: &[u8]) -> io::Result<Vec<u32>> {
    s.write_all(&resolution(handle, 128))?;
    let m = read_message(s)?;
    let m = asap::parse(&m).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(match m.body() {
        Body::HandleResolutionResponse { resolution: Resolution::Found { pool_elements, .. }, .. } => {
            pool_elements.clone().map(|pe| pe.pe_id()).collect()
        }
        _ => Vec::new(),
    })
}

/// Reads one whole ASAP message from a blocking stream.
pub fn read_message(s: &mut std::net::TcpStream) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]])).max(4);
    let mut m = head.to_vec();
    m.resize(len, 0);
    s.read_exact(&mut m[4..])?;
    Ok(m)
}

/// Checks that A and B are peers: a PE registered at A shows at B (bounded wait), then goes.
pub fn check_peering(at: SocketAddr, see: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let handle = b"prop-peering-check";
    let mut a = std::net::TcpStream::connect(at)?;
    let mut b = std::net::TcpStream::connect(see)?;
    for s in [&a, &b] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
    }
    let cfg = PropagationConfig::default();
    let started = Instant::now();
    a.write_all(&registration(&cfg, handle, 0x7fff_0001))?;
    let deadline = started + timeout;
    let mut seen = false;
    while Instant::now() < deadline {
        if resolve_once(&mut b, handle)?.contains(&0x7fff_0001) {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    drop(a); // its PE goes with the connection
    if !seen {
        return Err(io::Error::other(format!(
            "a PE registered at {at} does not show at {see} after {timeout:?}: are they ENRP peers?"
        )));
    }
    Ok(took)
}

/// The run's state.
struct Run<'a> {
    cfg: &'a PropagationConfig,
    clock: Clock,
    slots: Vec<Slot>,
    pools: Vec<PoolState>,
    idle: VecDeque<u32>,
    /// Pools waiting to be resolved at B, by the earliest time.
    schedule: BinaryHeap<Reverse<(Nanos, u32)>>,
    churn: Vec<Conn>,
    probe: Vec<Conn>,
    next_probe_conn: usize,
    framer: Framer,
    h_latency: Histogram<u64>,
    h_lower: Histogram<u64>,
    h_after_a: Histogram<u64>,
    h_a: Histogram<u64>,
    res: PropagationResult,
    /// Changes in flight (not yet both answered by A and seen at B).
    in_flight: usize,
}

fn clamp(ns: Nanos) -> Nanos {
    ns.clamp(1, MAX_LATENCY)
}

impl<'a> Run<'a> {
    /// An update to slot `s`, intended at `intended`.
    fn issue(&mut self, s: u32, intended: Nanos, recorded: bool) {
        let slot = &mut self.slots[s as usize];
        slot.present = !slot.present;
        slot.change = Some(Change { intended, answered: None, seen: None, last_miss: intended, recorded });
        let bytes = if slot.present { &slot.register } else { &slot.deregister };
        let conn = &mut self.churn[slot.conn];
        conn.wbuf.extend_from_slice(bytes);
        conn.inflight.push_back(Flight::Update(s));
        self.pools[slot.pool as usize].unseen += 1;
        self.in_flight += 1;
        if recorded {
            self.res.recorded += 1;
            if slot.present {
                self.res.registrations += 1;
            } else {
                self.res.deregistrations += 1;
            }
        }
    }

    fn queue_probe(&mut self, pool: u32, at: Nanos) {
        let p = &mut self.pools[pool as usize];
        if p.unseen > 0 && !p.probing && !p.queued {
            p.queued = true;
            self.schedule.push(Reverse((at, pool)));
        }
    }

    /// A slot's change is done when A answered and B showed it: record it, free the slot.
    fn maybe_done(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        let Some(c) = slot.change else { return };
        let (Some(answered), Some(seen)) = (c.answered, c.seen) else { return };
        slot.change = None;
        self.in_flight -= 1;
        self.idle.push_back(s);
        if c.recorded {
            self.res.seen += 1;
            let _ = self.h_latency.record(clamp(seen - c.intended));
            let _ = self.h_lower.record(clamp(c.last_miss.max(c.intended) - c.intended));
            let _ = self.h_a.record(clamp(answered.saturating_sub(c.intended)));
            if seen < answered {
                self.res.seen_before_a_answer += 1;
            }
            let _ = self.h_after_a.record(clamp(seen.saturating_sub(answered)));
        }
    }

    fn on_churn_message(&mut self, conn: usize, msg: &[u8], now: Nanos) {
        let Ok(m) = asap::parse(msg) else {
            self.res.errors += 1;
            return;
        };
        let (pe_id, ok) = match m.body() {
            Body::RegistrationResponse { rejected, pe_id, error, .. } => (*pe_id, !*rejected && error.is_none()),
            Body::DeregistrationResponse { pe_id, error, .. } => (*pe_id, error.is_none()),
            Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } => {
                let ack = handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, *pe_id);
                self.churn[conn].wbuf.extend_from_slice(&ack);
                return;
            }
            _ => {
                self.res.errors += 1;
                return;
            }
        };
        let Some(Flight::Update(s)) = self.churn[conn].inflight.pop_front() else {
            self.res.errors += 1;
            return;
        };
        let slot = &mut self.slots[s as usize];
        if slot.pe_id != pe_id {
            self.res.errors += 1;
        }
        let Some(c) = slot.change.as_mut() else { return };
        c.answered = Some(now);
        if !ok {
            // Refused: nothing changed at A, so nothing is to be seen at B.
            if c.recorded {
                self.res.rejected += 1;
                c.recorded = false;
            }
            slot.present = !slot.present;
            if c.seen.is_none() {
                c.seen = Some(now);
                self.pools[slot.pool as usize].unseen -= 1;
            }
        }
        let pool = slot.pool;
        if !self.cfg.watch && c.seen.is_none() {
            c.seen = Some(now);
            self.pools[pool as usize].unseen -= 1;
        }
        self.queue_probe(pool, now);
        self.maybe_done(s);
    }

    fn on_probe_message(&mut self, conn: usize, msg: &[u8], now: Nanos) {
        let Some(Flight::Probe { pool, sent }) = self.probe[conn].inflight.pop_front() else {
            self.res.errors += 1;
            return;
        };
        self.pools[pool as usize].probing = false;
        let Ok(m) = asap::parse(msg) else {
            self.res.errors += 1;
            return;
        };
        let mut ids = [0u32; 128];
        let mut n = 0;
        match m.body() {
            Body::HandleResolutionResponse { pool_handle, resolution } => {
                if *pool_handle != self.pools[pool as usize].handle.as_slice() {
                    self.res.errors += 1;
                    return;
                }
                if let Resolution::Found { pool_elements, .. } = resolution {
                    for pe in pool_elements.clone() {
                        if n < ids.len() {
                            ids[n] = pe.pe_id();
                            n += 1;
                        }
                    }
                }
            }
            _ => {
                self.res.errors += 1;
                return;
            }
        }
        let ids = &ids[..n];
        let per = self.cfg.slots_per_pool as u32;
        for s in pool * per..((pool + 1) * per).min(self.slots.len() as u32) {
            let slot = &mut self.slots[s as usize];
            let Some(c) = slot.change.as_mut() else { continue };
            if c.seen.is_some() {
                continue;
            }
            if ids.contains(&slot.pe_id) == slot.present {
                c.seen = Some(now);
                self.pools[pool as usize].unseen -= 1;
                self.maybe_done(s);
            } else {
                c.last_miss = c.last_miss.max(sent);
            }
        }
        self.queue_probe(pool, (sent + self.cfg.probe_interval_ns).max(now));
    }

    /// Sends the resolutions that are due, while connections to B have room.
    fn send_probes(&mut self, now: Nanos) {
        let depth = self.cfg.probe_depth.max(1);
        while let Some(&Reverse((at, pool))) = self.schedule.peek() {
            if at > now {
                break;
            }
            let n = self.probe.len();
            if n == 0 {
                break;
            }
            let Some(c) =
                (0..n).map(|i| (self.next_probe_conn + i) % n).find(|&c| self.probe[c].inflight.len() < depth)
            else {
                break;
            };
            self.next_probe_conn = (c + 1) % n;
            self.schedule.pop();
            let p = &mut self.pools[pool as usize];
            p.queued = false;
            if p.unseen == 0 {
                continue;
            }
            p.probing = true;
            self.probe[c].wbuf.extend_from_slice(&p.resolve);
            self.probe[c].inflight.push_back(Flight::Probe { pool, sent: now });
            self.res.probes += 1;
        }
    }

    fn read_conn(&mut self, churn: bool, i: usize, scratch: &mut [u8]) -> io::Result<()> {
        let conn = if churn { &mut self.churn[i] } else { &mut self.probe[i] };
        let open = conn.fill(scratch)?;
        let mut buf = std::mem::take(&mut conn.rbuf);
        let now = self.clock.now();
        let mut frames = self.framer.frames(&buf);
        let mut bad = false;
        let mut msgs = Vec::new();
        for m in frames.by_ref() {
            match m {
                Ok(m) => msgs.push(m),
                Err(_) => {
                    bad = true;
                    break;
                }
            }
        }
        let used = frames.consumed();
        for m in msgs {
            if churn {
                self.on_churn_message(i, m, now);
            } else {
                self.on_probe_message(i, m, now);
            }
        }
        buf.drain(..used);
        let conn = if churn { &mut self.churn[i] } else { &mut self.probe[i] };
        conn.rbuf = buf;
        if bad || !open {
            self.res.errors += 1;
            return Err(io::Error::other(format!(
                "{} connection {i} {}",
                if churn { "A" } else { "B" },
                if bad { "sent something unframeable" } else { "was closed by the registrar" }
            )));
        }
        Ok(())
    }
}

/// Runs the measurement against registrars already peered (see [`check_peering`]); `stop`
/// ends it early.
pub fn run(cfg: &PropagationConfig, stop: &AtomicBool) -> io::Result<PropagationResult> {
    let per = cfg.slots_per_pool.clamp(1, 128);
    let slots_n = cfg.slots.max(1);
    let pools_n = slots_n.div_ceil(per);
    let pools: Vec<PoolState> = (0..pools_n)
        .map(|p| {
            let handle = format!("{}{p:05}", cfg.prefix).into_bytes();
            PoolState { resolve: resolution(&handle, per), handle, ..PoolState::default() }
        })
        .collect();
    let churn_n = cfg.churn_connections.max(1);
    let slots: Vec<Slot> = (0..slots_n)
        .map(|s| {
            let pool = (s / per) as u32;
            let pe_id = 1 + s as u32;
            let handle = &pools[pool as usize].handle;
            Slot {
                pe_id,
                pool,
                conn: s % churn_n,
                present: false,
                change: None,
                register: registration(cfg, handle, pe_id),
                deregister: handle_and_id(MessageType::Deregistration, handle, pe_id),
            }
        })
        .collect();
    let mut poll = Poll::new()?;
    let mut churn = Vec::new();
    for i in 0..churn_n {
        let mut c = Conn::connect(cfg.at)?;
        poll.registry().register(&mut c.stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        churn.push(c);
    }
    let mut probe = Vec::new();
    for i in 0..if cfg.watch { cfg.probe_connections.max(1) } else { 0 } {
        let mut c = Conn::connect(cfg.see)?;
        poll.registry().register(&mut c.stream, Token(churn_n + i), Interest::READABLE | Interest::WRITABLE)?;
        probe.push(c);
    }
    let hist = || new_histogram();
    let mut run = Run {
        cfg,
        clock: Clock::new(),
        idle: (0..slots_n as u32).collect(),
        slots,
        pools,
        schedule: BinaryHeap::new(),
        churn,
        probe,
        next_probe_conn: 0,
        framer: Framer::new(Protocol::Asap, 65535),
        h_latency: hist(),
        h_lower: hist(),
        h_after_a: hist(),
        h_a: hist(),
        res: PropagationResult {
            intended_rate: cfg.rate,
            offered_rate: 0.0,
            measured_s: 0.0,
            recorded: 0,
            registrations: 0,
            deregistrations: 0,
            seen: 0,
            unseen: 0,
            unanswered: 0,
            not_sent: 0,
            rejected: 0,
            errors: 0,
            probes: 0,
            probes_per_update: 0.0,
            seen_before_a_answer: 0,
            latency: LatencySummary::default(),
            latency_lower: LatencySummary::default(),
            after_a_answer: LatencySummary::default(),
            a_answer: LatencySummary::default(),
            spectrum: Vec::new(),
            spectrum_lower: Vec::new(),
            spectrum_a_answer: Vec::new(),
        },
        in_flight: 0,
    };
    let rate = cfg.rate.max(1.0);
    let start = run.clock.now() + 10_000_000;
    let warm_end = start + (cfg.warmup_s.max(0.0) * 1e9) as Nanos;
    let end = warm_end + (cfg.duration_s.max(0.001) * 1e9) as Nanos;
    let mut k: u64 = 0;
    let mut issuing = true;
    let mut last_intended = start;
    let mut drain_deadline = None;
    let mut events = Events::with_capacity(256);
    let mut scratch = vec![0u8; 256 * 1024];
    loop {
        let now = run.clock.now();
        if issuing {
            loop {
                let due = start + (k as f64 * 1e9 / rate) as Nanos;
                if due > now {
                    break;
                }
                let recorded = due >= warm_end;
                if due >= end || stop.load(Ordering::Relaxed) || cfg.updates.is_some_and(|n| run.res.recorded >= n) {
                    issuing = false;
                    break;
                }
                match run.idle.pop_front() {
                    Some(s) => run.issue(s, due, recorded),
                    None => {
                        if recorded {
                            run.res.not_sent += 1;
                        }
                    }
                }
                last_intended = due;
                k += 1;
            }
        }
        if !issuing {
            let deadline = *drain_deadline.get_or_insert(now + (cfg.drain_s.max(0.0) * 1e9) as Nanos);
            if run.in_flight == 0 || now >= deadline {
                break;
            }
        }
        run.send_probes(now);
        for c in run.churn.iter_mut().chain(run.probe.iter_mut()) {
            c.flush()?;
        }
        // Spin while something is due within a millisecond (epoll waits in whole milliseconds).
        let next_due = if issuing { start + (k as f64 * 1e9 / rate) as Nanos } else { Nanos::MAX };
        let next_probe = run.schedule.peek().map_or(Nanos::MAX, |r| r.0 .0);
        let wait = next_due.min(next_probe).saturating_sub(run.clock.now());
        let timeout = if wait < 1_000_000 { Duration::ZERO } else { Duration::from_nanos(wait.min(10_000_000)) };
        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let t = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                if t < churn_n {
                    run.read_conn(true, t, &mut scratch)?;
                } else {
                    run.read_conn(false, t - churn_n, &mut scratch)?;
                }
            }
        }
    }
    // What never completed.
    for s in &run.slots {
        if let Some(c) = s.change.filter(|c| c.recorded) {
            if c.answered.is_none() {
                run.res.unanswered += 1;
            } else if c.seen.is_none() {
                run.res.unseen += 1;
            }
        }
    }
    let window = (last_intended.min(end).saturating_sub(warm_end)) as f64 / 1e9;
    let measured = if cfg.updates.is_some() { window } else { (end - warm_end) as f64 / 1e9 };
    let mut res = run.res;
    res.measured_s = measured;
    res.offered_rate = if measured > 0.0 { res.recorded as f64 / measured } else { 0.0 };
    res.probes_per_update = if res.seen > 0 { res.probes as f64 / res.seen as f64 } else { 0.0 };
    res.latency = summarize(&run.h_latency);
    res.latency_lower = summarize(&run.h_lower);
    res.after_a_answer = summarize(&run.h_after_a);
    res.a_answer = summarize(&run.h_a);
    res.spectrum = spectrum(&run.h_latency);
    res.spectrum_lower = spectrum(&run.h_lower);
    res.spectrum_a_answer = spectrum(&run.h_a);
    Ok(res)
}

/// Arguments of `loadgen propagation`.
#[derive(clap::Args, Clone, Debug)]
pub struct PropagationArgs {
    /// Registrar A's ASAP address: registrations and deregistrations go there.
    #[arg(long, default_value = "127.0.0.1:3863")]
    pub at: SocketAddr,
    /// Registrar B's ASAP address (an ENRP peer of A): resolutions watch for the changes there.
    #[arg(long, default_value = "127.0.0.1:3864")]
    pub see: SocketAddr,
    /// Start A and B here instead (one shard each, both on --server-core, B with --peer A).
    #[arg(long)]
    pub spawn: bool,
    /// Updates (registrations and deregistrations) per second at A.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// PEs that churn (each has at most one change in flight). A registrar's default
    /// `limits.max_pes_per_connection` (1024) must hold slots / churn-connections.
    #[arg(long, default_value_t = 4096)]
    pub slots: usize,
    /// PEs per pool (1..=128; each resolution at B asks for all of them).
    #[arg(long, default_value_t = 4)]
    pub slots_per_pool: usize,
    /// Connections to A.
    #[arg(long, default_value_t = 8)]
    pub churn_connections: usize,
    /// Connections to B.
    #[arg(long, default_value_t = 4)]
    pub probe_connections: usize,
    /// Resolutions in flight per connection to B, at most.
    #[arg(long, default_value_t = 16)]
    pub probe_depth: usize,
    /// Least time between two resolutions of one pool, microseconds.
    #[arg(long, default_value_t = 100)]
    pub probe_interval_us: u64,
    /// Warm-up seconds, not recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Stop after this many recorded updates instead (bounded by --duration all the same).
    #[arg(long)]
    pub updates: Option<u64>,
    /// Core to pin this thread to (default 0; `none` leaves it unpinned).
    #[arg(long, default_value = "0")]
    pub core: String,
    /// Core for spawned registrars.
    #[arg(long, default_value_t = 1)]
    pub server_core: usize,
    /// The registrar binary for --spawn (default: `rserpool` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub registrar_bin: Option<PathBuf>,
    /// Registrar configuration file for --spawn (default: one that only raises
    /// `limits.max_pes_per_connection` to hold slots / churn-connections).
    #[arg(long, value_name = "FILE")]
    pub registrar_config: Option<PathBuf>,
    /// Folder for results (JSON, SVG).
    #[arg(long, default_value = "results/enrp")]
    pub out: PathBuf,
    /// Write the JSON result here (default: `<out>/propagation-<date>.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the percentile spectra as SVG next to the JSON.
    #[arg(long)]
    pub plot: bool,
}

/// A registrar started here (`--spawn`); stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Spawned {
    child: Child,
    /// Its command line, for the record.
    pub command: String,
    /// Its ASAP address.
    pub addr: SocketAddr,
    /// Its ENRP address.
    pub enrp: SocketAddr,
}

impl Spawned {
    /// Its process id (`taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts registrar A (one shard on `a_core`) and registrar B (one shard on `b_core`, with
/// `--peer A`) from `bin`, each with `config` (TOML) as its configuration file.
pub fn spawn_peers(
    bin: &std::path::Path,
    a_core: usize,
    b_core: usize,
    config: &str,
) -> io::Result<(Spawned, Spawned)> {
    let a = spawn_registrar(bin, a_core, "a0000001", None, config)?;
    let b = spawn_registrar(bin, b_core, "b0000002", Some(a.enrp), config)?;
    Ok((a, b))
}

/// Starts a registrar with server id `id` (hex) from `bin`: one shard on `core`, ASAP and ENRP
/// on free loopback ports, `config` (TOML) as its configuration file, `peer` as its ENRP peer.
pub fn spawn_registrar(
    bin: &std::path::Path,
    core: usize,
    id: &str,
    peer: Option<SocketAddr>,
    config: &str,
) -> io::Result<Spawned> {
    let dir = std::env::temp_dir().join(format!("loadgen-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg_path = dir.join(format!("registrar-{id}.toml"));
    std::fs::write(&cfg_path, config)?;
    let (asap, enrp) = (crate::servers::free_port()?, crate::servers::free_port()?);
    let profile = dir.join(format!("profile-{id}.toml"));
    std::fs::write(&profile, format!("description = \"loadgen: {id} on core {core}\"\nshard_cores = [{core}]\n"))?;
    let mut a: Vec<String> = vec![
        "-c".into(),
        core.to_string(),
        bin.display().to_string(),
        "registrar".into(),
        "--asap".into(),
        format!("127.0.0.1:{asap}"),
        "--enrp".into(),
        format!("127.0.0.1:{enrp}"),
        "--id".into(),
        id.into(),
        "--cores".into(),
        "1".into(),
        "--log".into(),
        "warn".into(),
        "--profile".into(),
        profile.display().to_string(),
        "--config".into(),
        cfg_path.display().to_string(),
    ];
    if let Some(p) = peer {
        a.push("--peer".into());
        a.push(p.to_string());
    }
    let command = format!("taskset {}", a.join(" "));
    let child = Command::new("taskset")
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io::Error::other(format!("cannot start {command}: {e}")))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], asap));
    let s = Spawned { child, command, addr, enrp: SocketAddr::from(([127, 0, 0, 1], enrp)) };
    crate::setup::wait_for_port(addr, Duration::from_secs(10))?;
    Ok(s)
}

/// The configuration `--spawn` gives both registrars: the user's file, else room for the
/// slots on each connection.
fn spawn_config(slots: usize, churn_connections: usize, extra: Option<&std::path::Path>) -> io::Result<String> {
    match extra {
        Some(file) => std::fs::read_to_string(file),
        None => Ok(format!("[limits]\nmax_pes_per_connection = {}\n", slots.div_ceil(churn_connections.max(1)) + 16)),
    }
}

/// The JSON document of a propagation run.
#[derive(Serialize)]
struct PropagationDoc<'a> {
    machine: &'a Machine,
    config: &'a PropagationConfig,
    core: &'a str,
    server_commands: Vec<&'a str>,
    peering_check_ms: f64,
    result: &'a PropagationResult,
}

/// Summary table of a propagation run.
pub fn summary(r: &PropagationResult) -> String {
    let row = |name: &str, l: &LatencySummary| {
        format!(
            "{name:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        )
    };
    let mut s = format!(
        "updates recorded {} ({} registrations, {} deregistrations) at {:.0}/s offered ({:.0}/s asked); \
         seen at B {}; unseen {}; unanswered {}; not sent {}; refused {}; errors {}\n\
         resolutions at B {} ({:.2} per update); seen at B before A's answer arrived: {}\n",
        r.recorded,
        r.registrations,
        r.deregistrations,
        r.offered_rate,
        r.intended_rate,
        r.seen,
        r.unseen,
        r.unanswered,
        r.not_sent,
        r.rejected,
        r.errors,
        r.probes,
        r.probes_per_update,
        r.seen_before_a_answer
    );
    s += &format!("{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}\n", "us", "p50", "p90", "p99", "p99.9", "max");
    s += &row("visible at B (upper bound)", &r.latency);
    s += &row("visible at B (lower bound)", &r.latency_lower);
    s += &row("A's answer", &r.a_answer);
    s += &row("B after A's answer", &r.after_a_answer);
    s
}

/// `loadgen propagation`.
pub fn cmd_propagation(args: &PropagationArgs) -> io::Result<i32> {
    let spawned = if args.spawn {
        let bin = args.registrar_bin.clone().unwrap_or_else(crate::servers::default_registrar_bin);
        let config = spawn_config(args.slots, args.churn_connections, args.registrar_config.as_deref())?;
        Some(spawn_peers(&bin, args.server_core, args.server_core, &config)?)
    } else {
        None
    };
    let (at, see) = spawned.as_ref().map_or((args.at, args.see), |s| (s.0.addr, s.1.addr));
    if args.core != "none" {
        let core: usize = args.core.parse().map_err(|_| io::Error::other(format!("bad core {:?}", args.core)))?;
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let took = check_peering(at, see, Duration::from_secs(30))?;
    eprintln!("A ({at}) and B ({see}) are peers: a PE registered at A showed at B after {took:?}");
    let cfg = PropagationConfig {
        at,
        see,
        rate: args.rate,
        slots: args.slots,
        slots_per_pool: args.slots_per_pool,
        churn_connections: args.churn_connections,
        probe_connections: args.probe_connections,
        probe_depth: args.probe_depth,
        probe_interval_ns: args.probe_interval_us * 1000,
        warmup_s: args.warmup,
        duration_s: args.duration,
        updates: args.updates,
        ..PropagationConfig::default()
    };
    let stop = crate::cli::stop_flag();
    let result = run(&cfg, &stop)?;
    print!("{}", summary(&result));
    let machine = Machine::now();
    let path = args.json.clone().unwrap_or_else(|| report::out_path(&args.out, "propagation-{date}.json", &machine));
    let doc = PropagationDoc {
        machine: &machine,
        config: &cfg,
        core: &args.core,
        server_commands: spawned.as_ref().map_or(Vec::new(), |s| vec![s.0.command.as_str(), s.1.command.as_str()]),
        peering_check_ms: took.as_secs_f64() * 1e3,
        result: &result,
    };
    report::write_json(&path, &doc)?;
    eprintln!("wrote {}", path.display());
    if args.plot {
        let svg = path.with_extension("svg");
        let title = format!("change at A visible at B, {:.0} updates/s", result.offered_rate);
        crate::plot::spectrum_svg(
            &svg,
            &title,
            &[
                ("visible at B (upper bound)".into(), result.spectrum.clone()),
                ("visible at B (lower bound)".into(), result.spectrum_lower.clone()),
                ("A's answer".into(), result.spectrum_a_answer.clone()),
            ],
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        eprintln!("wrote {}", svg.display());
    }
    drop(spawned);
    Ok(if result.error_total() > 0 { 1 } else { 0 })
}
