//! One client thread: its connections, the requests in flight on each, closed- or open-loop
//! issuing, answer matching and checking, and latency recording.
//!
//! The loop per iteration: read the clock; issue what is due (open loop); stamp the send time
//! of every request queued since the last iteration; hand all queued bytes to the kernel and
//! wait for answers in one call ([`Io::wait`]); read the clock (the receive time of the whole
//! batch); match and check each answer ([`Handler::data`]), which in closed loop queues the next
//! request on the same connection at once.
//!
//! Answers are matched to requests by content where the protocol allows it (pool handle for a
//! Handle Resolution Response, PE identifier for (De)Registration Responses: the registrar may
//! answer out of order across shards), first in, first out for RESP and echo.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rserpool::wire::asap::{self, MessageType};
use rserpool::wire::{Frame, Framer, Protocol, Writer};

use crate::pacing::Schedule;
use crate::stats::{new_histogram, Accounting, ErrorKind, OpKind, Record};
use crate::validate::{check_asap, check_echo, check_resp, Answer};
use crate::workload::{Plan, Target, WorkloadKind};
use crate::Nanos;

/// Receives what a transport reads.
pub trait Handler {
    /// `data` holds the bytes received on connection `c` and not consumed yet; returns how many
    /// it consumed (whole answers). Requests to send on `c` are appended to `out`.
    fn data(&mut self, c: usize, data: &[u8], out: &mut Vec<u8>) -> usize;
    /// Connection `c` was closed or failed; nothing more comes from it.
    fn closed(&mut self, c: usize);
}

/// A transport driving a thread's connections (io_uring or epoll).
pub trait Io {
    /// Number of connections.
    fn connections(&self) -> usize;
    /// The queue of bytes to send on `c` (sent by the next [`Io::wait`]).
    fn out(&mut self, c: usize) -> &mut Vec<u8>;
    /// Whether `c` has failed.
    fn is_dead(&self, c: usize) -> bool;
    /// Sends everything queued, then waits until something arrives or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// Hands everything received to `h`.
    fn process(&mut self, h: &mut impl Handler) -> io::Result<()>;
    /// System calls made so far (io_uring_enter, or read/write/epoll_wait).
    fn syscalls(&self) -> u64;
}

/// Monotonic clock shared by the threads of a run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self { base: Instant::now() }
    }

    /// Nanoseconds since the clock's zero.
    #[inline]
    pub fn now(&self) -> Nanos {
        self.base.elapsed().as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What the progress display reads from a running thread.
#[derive(Debug, Default)]
pub struct Live {
    /// Valid answers so far (warm-up included), as of the thread's last loop iteration.
    pub answers: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    /// p99 latency of the last interval (about 250 ms), nanoseconds.
    pub p99_ns: AtomicU64,
}

/// One thread's part of a run.
#[derive(Clone, Debug)]
pub struct ThreadConfig {
    /// The server kind.
    pub target: Target,
    /// The requests.
    pub plan: Arc<Plan>,
    /// Requests in flight per connection (closed loop), or at most (open loop).
    pub depth: usize,
    /// Open loop: total requests per second of the whole run (all threads).
    pub rate: Option<f64>,
    /// This thread's index and the number of threads.
    pub thread: usize,
    /// Number of client threads.
    pub threads: usize,
    /// Global index of this thread's first connection.
    pub conn_base: usize,
    /// When the run starts (clock time); the warm-up runs until `start + warmup`.
    pub start: Nanos,
    /// Warm-up, not recorded.
    pub warmup: Duration,
    /// Measurement time, if bounded by time.
    pub duration: Option<Duration>,
    /// This thread's measured requests, if bounded by count.
    pub requests: Option<u64>,
    /// How long to wait for answers after the measurement.
    pub drain: Duration,
    /// Seed of this thread's random choices.
    pub seed: u64,
}

/// What a thread hands back.
#[derive(Clone, Debug)]
pub struct ThreadResult {
    /// Latencies, counts, errors.
    pub record: Record,
    /// The measurement window (clock times).
    pub window: (Nanos, Nanos),
    /// System calls made by the transport over the whole thread.
    pub syscalls: u64,
    /// Answers over the whole thread (warm-up included).
    pub answers: u64,
    /// Loop iterations.
    pub iterations: u64,
}

const UNSTAMPED: Nanos = Nanos::MAX;

#[derive(Clone, Copy, Debug)]
struct Pending {
    op: OpKind,
    /// Pool (resolve, get) or churn slot.
    key: u32,
    intended: Nanos,
    sent: Nanos,
    measured: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    /// Registered, with this many re-registrations done.
    Registered(u32),
}

struct ConnState {
    global: usize,
    inflight: VecDeque<Pending>,
    slots: Vec<(Slot, bool)>,
    registration: Vec<Vec<u8>>,
    deregistration: Vec<Vec<u8>>,
    next_slot: usize,
    in_stamp_list: bool,
    dead: bool,
}

/// The request/answer state of one thread (the [`Handler`] of its transport).
struct Driver {
    cfg: ThreadConfig,
    framer: Framer,
    conns: Vec<ConnState>,
    rng: fastrand::Rng,
    acc: Accounting,
    rec: Record,
    interval: Histogram<u64>,
    now: Nanos,
    /// Closed loop: issue a new request for every answer.
    refill: bool,
    tokens: VecDeque<u32>,
    stamp: Vec<u32>,
    inflight: usize,
    answers: u64,
    errors: u64,
}

impl Driver {
    fn new(cfg: ThreadConfig, connections: usize) -> Self {
        let plan = Arc::clone(&cfg.plan);
        let churn = cfg.target == Target::Registrar && cfg.plan.spec.workload != WorkloadKind::Resolve;
        let conns = (0..connections)
            .map(|i| {
                let global = cfg.conn_base + i;
                let slots = if churn { plan.spec.churn_slots } else { 0 };
                let reg =
                    (0..slots).map(|s| plan.registration(plan.churn_pool(global, s), plan.churn_pe_id(global, s)));
                let dereg =
                    (0..slots).map(|s| plan.deregistration(plan.churn_pool(global, s), plan.churn_pe_id(global, s)));
                ConnState {
                    global,
                    inflight: VecDeque::with_capacity(cfg.depth * 2),
                    slots: vec![(Slot::Free, false); slots],
                    registration: reg.collect(),
                    deregistration: dereg.collect(),
                    next_slot: 0,
                    in_stamp_list: false,
                    dead: false,
                }
            })
            .collect();
        let open = cfg.rate.is_some();
        Self {
            rng: fastrand::Rng::with_seed(cfg.seed),
            framer: Framer::new(Protocol::Asap, u16::MAX as usize),
            conns,
            acc: Accounting { open_loop: open, measure_start: 0, measure_end: Nanos::MAX },
            rec: Record::default(),
            interval: new_histogram(),
            now: 0,
            refill: !open,
            tokens: VecDeque::new(),
            stamp: Vec::new(),
            inflight: 0,
            answers: 0,
            errors: 0,
            cfg,
        }
    }
}

/// Picks the next churn slot of `conn` that has nothing in flight.
fn churn_slot(conn: &mut ConnState) -> usize {
    {
        let n = conn.slots.len();
        for i in 0..n {
            let s = (conn.next_slot + i) % n;
            if !conn.slots[s].1 {
                conn.next_slot = (s + 1) % n;
                return s;
            }
        }
        let s = conn.next_slot;
        conn.next_slot = (s + 1) % n;
        s
    }
}

impl Driver {
    /// Queues one request on connection `c`, intended at `intended`.
    fn issue(&mut self, c: usize, out: &mut Vec<u8>, intended: Nanos) {
        let plan = &*self.cfg.plan;
        let (op, key) = match self.cfg.target {
            Target::Redis => {
                let k = plan.sampler.sample(&mut self.rng);
                out.extend_from_slice(plan.get_request(k));
                (OpKind::Get, k as u32)
            }
            Target::Echo => {
                out.extend_from_slice(&plan.echo_request);
                (OpKind::Echo, 0)
            }
            Target::Registrar => {
                let resolve = match plan.spec.workload {
                    WorkloadKind::Resolve => true,
                    WorkloadKind::Churn => false,
                    WorkloadKind::Mix => self.rng.f64() < plan.spec.resolve_share,
                };
                if resolve || self.conns[c].slots.is_empty() {
                    let k = plan.sampler.sample(&mut self.rng);
                    out.extend_from_slice(plan.resolve_request(k));
                    (OpKind::Resolve, k as u32)
                } else {
                    let rereg = plan.spec.reregistrations;
                    let conn = &mut self.conns[c];
                    let s = churn_slot(conn);
                    let (op, next) = match conn.slots[s].0 {
                        Slot::Free => (OpKind::Register, Slot::Registered(0)),
                        Slot::Registered(k) if k < rereg => (OpKind::Reregister, Slot::Registered(k + 1)),
                        Slot::Registered(_) => (OpKind::Deregister, Slot::Free),
                    };
                    conn.slots[s] = (next, true);
                    let bytes = if op == OpKind::Deregister { &conn.deregistration[s] } else { &conn.registration[s] };
                    out.extend_from_slice(bytes);
                    (op, s as u32)
                }
            }
        };
        let measured = self.acc.measured(intended) && self.cfg.requests.is_none_or(|l| self.rec.issued < l);
        self.rec.issued += u64::from(measured);
        let conn = &mut self.conns[c];
        conn.inflight.push_back(Pending { op, key, intended, sent: UNSTAMPED, measured });
        if !conn.in_stamp_list {
            conn.in_stamp_list = true;
            self.stamp.push(c as u32);
        }
        self.inflight += 1;
    }

    /// Sets the send time of every request queued since the last call.
    fn stamp(&mut self, now: Nanos) {
        for &c in &self.stamp {
            let conn = &mut self.conns[c as usize];
            conn.in_stamp_list = false;
            for p in conn.inflight.iter_mut().rev() {
                if p.sent != UNSTAMPED {
                    break;
                }
                p.sent = now;
                if !self.acc.open_loop {
                    p.intended = now;
                }
            }
        }
        self.stamp.clear();
    }

    /// A connection with room for one more request (open loop), round robin.
    fn next_token(&mut self) -> Option<usize> {
        while let Some(c) = self.tokens.pop_front() {
            if !self.conns[c as usize].dead {
                return Some(c as usize);
            }
        }
        None
    }

    fn error(&mut self, kind: ErrorKind) {
        self.rec.errors.add(kind);
        self.errors += 1;
    }

    /// The answer to request `idx` of connection `c` arrived.
    fn complete(&mut self, c: usize, idx: usize, result: Result<(), ErrorKind>, out: &mut Vec<u8>) {
        let Some(p) = self.conns[c].inflight.remove(idx) else { return };
        self.inflight -= 1;
        self.answers += 1;
        if matches!(p.op, OpKind::Register | OpKind::Reregister | OpKind::Deregister) {
            let slot = &mut self.conns[c].slots[p.key as usize];
            slot.1 = false;
            if result.is_err() {
                // Rejected or failed: the PE is not (or no longer) registered.
                slot.0 = Slot::Free;
            }
        }
        match result {
            Ok(()) if p.measured => {
                let sent = if p.sent == UNSTAMPED { p.intended } else { p.sent };
                let latency = self.acc.latency(p.intended, sent, self.now);
                let service = self.acc.open_loop.then(|| self.now.saturating_sub(sent));
                self.rec.answer(p.op, latency, service);
                self.interval.saturating_record(latency.max(1));
            }
            Ok(()) => {}
            Err(kind) if p.measured => self.error(kind),
            Err(_) => {
                self.rec.errors_outside += 1;
                self.errors += 1;
            }
        }
        if self.refill {
            self.issue(c, out, self.now);
        } else if self.acc.open_loop {
            self.tokens.push_back(c as u32);
        }
    }

    fn find(&self, c: usize, f: impl Fn(&Pending) -> bool) -> Option<usize> {
        self.conns[c].inflight.iter().position(f)
    }

    fn on_asap(&mut self, c: usize, msg: &[u8], out: &mut Vec<u8>) {
        let answer = check_asap(&self.cfg.plan, msg);
        let global = self.conns[c].global;
        let plan = Arc::clone(&self.cfg.plan);
        let churn_id = |p: &Pending| plan.churn_pe_id(global, p.key as usize);
        match answer {
            Answer::Resolution { pool, result } => {
                let idx = match pool {
                    Some(pool) => self.find(c, |p| p.op == OpKind::Resolve && p.key as usize == pool),
                    None => None,
                };
                match idx {
                    Some(i) => self.complete(c, i, result, out),
                    None => self.error(ErrorKind::Unexpected),
                }
            }
            Answer::Registration { pe_id, result } => {
                match self.find(c, |p| matches!(p.op, OpKind::Register | OpKind::Reregister) && churn_id(p) == pe_id) {
                    Some(i) => self.complete(c, i, result, out),
                    None => self.error(ErrorKind::Unexpected),
                }
            }
            Answer::Deregistration { pe_id, result } => {
                match self.find(c, |p| p.op == OpKind::Deregister && churn_id(p) == pe_id) {
                    Some(i) => self.complete(c, i, result, out),
                    None => self.error(ErrorKind::Unexpected),
                }
            }
            // One without PE Identifier (never from our registrar) would address every PE of the
            // connection; the driver does not track those, so it goes unanswered.
            Answer::KeepAlive { pool_handle, pe_id: Some(pe_id) } => {
                let _ = asap::emit_handle_and_id(
                    &mut Writer::new(out),
                    MessageType::EndpointKeepAliveAck,
                    0,
                    pool_handle,
                    Some(pe_id),
                    None,
                );
            }
            Answer::KeepAlive { pe_id: None, .. } => {}
            // Something that answers none of our requests: count it and retire the oldest
            // request so a closed loop keeps its depth.
            Answer::Other => self.fail_oldest(c, ErrorKind::WrongType, out),
            Answer::Malformed => self.fail_oldest(c, ErrorKind::Malformed, out),
        }
    }

    fn fail_oldest(&mut self, c: usize, kind: ErrorKind, out: &mut Vec<u8>) {
        if self.conns[c].inflight.is_empty() {
            self.error(kind);
        } else {
            self.complete(c, 0, Err(kind), out);
        }
    }

    /// Requests of the measurement still unanswered at the end.
    fn unanswered(&mut self) {
        let n: usize = self.conns.iter().map(|c| c.inflight.iter().filter(|p| p.measured).count()).sum();
        for _ in 0..n {
            self.error(ErrorKind::Unanswered);
        }
    }
}

impl Handler for Driver {
    fn data(&mut self, c: usize, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        match self.cfg.target {
            Target::Registrar => loop {
                match self.framer.frame(&data[pos..]) {
                    Ok(Frame::Complete(m)) => {
                        pos += m.len();
                        self.on_asap(c, m, out);
                    }
                    Ok(Frame::Incomplete { .. }) => break,
                    Err(_) => {
                        self.fail_oldest(c, ErrorKind::Malformed, out);
                        return data.len();
                    }
                }
            },
            Target::Redis => {
                let size = self.cfg.plan.redis_value_size;
                while let Some((n, result)) = check_resp(&data[pos..], size) {
                    pos += n;
                    self.fail_or_complete_front(c, result, out);
                }
            }
            Target::Echo => {
                let size = self.cfg.plan.echo_reply_size;
                while data.len() - pos >= size {
                    let result = check_echo(&data[pos..pos + size]);
                    pos += size;
                    self.fail_or_complete_front(c, result, out);
                }
            }
        }
        pos
    }

    fn closed(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        conn.dead = true;
        let lost = conn.inflight.len();
        conn.inflight.clear();
        self.inflight -= lost;
        self.error(ErrorKind::ConnectionLost);
        for _ in 1..lost {
            self.error(ErrorKind::ConnectionLost);
        }
    }
}

impl Driver {
    fn fail_or_complete_front(&mut self, c: usize, result: Result<(), ErrorKind>, out: &mut Vec<u8>) {
        if self.conns[c].inflight.is_empty() {
            self.error(ErrorKind::Unexpected);
        } else {
            self.complete(c, 0, result, out);
        }
    }
}

/// Runs one client thread over `io` until its measurement and drain are over (or `stop`).
pub fn drive<I: Io>(
    io: &mut I,
    cfg: ThreadConfig,
    clock: Clock,
    live: &Live,
    stop: &AtomicBool,
) -> io::Result<ThreadResult> {
    let n = io.connections();
    let depth = cfg.depth.max(1);
    let start = cfg.start;
    let warm_end = start + cfg.warmup.as_nanos() as Nanos;
    let open = cfg.rate.is_some();
    let sched = Schedule::for_thread(start, cfg.rate.unwrap_or(1.0), cfg.thread, cfg.threads);
    let requests = cfg.requests;
    let drain = cfg.drain.as_nanos() as Nanos;
    let mut d = Driver::new(cfg.clone(), n);
    d.acc.measure_start = warm_end;
    d.acc.measure_end = cfg.duration.map_or(Nanos::MAX, |t| warm_end + t.as_nanos() as Nanos);
    while clock.now() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    let now = clock.now();
    d.now = now;
    if open {
        for _ in 0..depth {
            d.tokens.extend(0..n as u32);
        }
    } else {
        for _ in 0..depth {
            for c in 0..n {
                d.issue(c, io.out(c), now);
            }
        }
    }
    let mut k = 0u64;
    let mut draining = false;
    let mut drain_deadline = Nanos::MAX;
    let mut next_live = now;
    let mut iterations = 0u64;
    loop {
        let now = clock.now();
        d.now = now;
        let counted_out = requests.is_some_and(|r| d.rec.issued >= r);
        if !draining && (now >= d.acc.measure_end || counted_out || stop.load(Ordering::Relaxed)) {
            draining = true;
            d.refill = false;
            d.acc.measure_end = d.acc.measure_end.min(now);
            drain_deadline = now + drain;
        }
        if draining && (d.inflight == 0 || now >= drain_deadline) {
            break;
        }
        // Open loop: a request is due but every connection is at its limit; wait for an answer
        // rather than spin (the request keeps its intended time).
        let mut starved = false;
        if open && !draining {
            loop {
                let intended = sched.intended(k);
                if intended > now || intended >= d.acc.measure_end {
                    break;
                }
                let Some(c) = d.next_token() else {
                    starved = true;
                    break;
                };
                d.issue(c, io.out(c), intended);
                k += 1;
                if requests.is_some_and(|r| d.rec.issued >= r) {
                    break;
                }
            }
        }
        if !d.stamp.is_empty() {
            d.stamp(clock.now());
        }
        let timeout = if open && !draining && !starved {
            Duration::from_nanos(sched.intended(k).saturating_sub(clock.now()).min(10_000_000))
        } else {
            Duration::from_millis(10)
        };
        io.wait(timeout)?;
        d.now = clock.now();
        io.process(&mut d)?;
        iterations += 1;
        // Every iteration: a watcher may cut the run into windows of its own.
        live.answers.store(d.answers, Ordering::Relaxed);
        if d.now >= next_live {
            next_live = d.now + 250_000_000;
            live.errors.store(d.errors, Ordering::Relaxed);
            if !d.interval.is_empty() {
                live.p99_ns.store(d.interval.value_at_quantile(0.99), Ordering::Relaxed);
                d.interval.reset();
            }
        }
        if (0..n).all(|c| io.is_dead(c)) && !draining {
            d.acc.measure_end = d.acc.measure_end.min(d.now);
            break;
        }
    }
    if open {
        // Requests due in the window that never went out (every connection was full).
        let due = sched.due(d.acc.measure_end.saturating_sub(1));
        d.rec.not_sent = due.saturating_sub(k);
    }
    d.unanswered();
    live.answers.store(d.answers, Ordering::Relaxed);
    live.errors.store(d.errors, Ordering::Relaxed);
    let end = d.acc.measure_end.min(clock.now());
    Ok(ThreadResult {
        window: (warm_end, end.max(warm_end)),
        syscalls: io.syscalls(),
        answers: d.answers,
        iterations,
        record: d.rec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadSpec;

    type Answerer = Box<dyn FnMut(usize, &[u8]) -> Vec<u8>>;

    /// An in-memory transport that answers through a closure, for testing the driver logic.
    struct Loopback {
        out: Vec<Vec<u8>>,
        answer: Answerer,
        inbox: Vec<Vec<u8>>,
        calls: u64,
    }

    impl Io for Loopback {
        fn connections(&self) -> usize {
            self.out.len()
        }
        fn out(&mut self, c: usize) -> &mut Vec<u8> {
            &mut self.out[c]
        }
        fn is_dead(&self, _: usize) -> bool {
            false
        }
        fn wait(&mut self, _: Duration) -> io::Result<()> {
            self.calls += 1;
            for c in 0..self.out.len() {
                let req = std::mem::take(&mut self.out[c]);
                if !req.is_empty() {
                    let a = (self.answer)(c, &req);
                    self.inbox[c].extend_from_slice(&a);
                }
            }
            Ok(())
        }
        fn process(&mut self, h: &mut impl Handler) -> io::Result<()> {
            for c in 0..self.out.len() {
                let data = std::mem::take(&mut self.inbox[c]);
                let used = h.data(c, &data, &mut self.out[c]);
                self.inbox[c] = data[used..].to_vec();
            }
            Ok(())
        }
        fn syscalls(&self) -> u64 {
            self.calls
        }
    }

    fn config(target: Target, plan: Arc<Plan>, requests: u64) -> ThreadConfig {
        ThreadConfig {
            target,
            plan,
            depth: 4,
            rate: None,
            thread: 0,
            threads: 1,
            conn_base: 0,
            start: 0,
            warmup: Duration::ZERO,
            duration: None,
            requests: Some(requests),
            drain: Duration::from_secs(1),
            seed: 5,
        }
    }

    /// Drives `requests` requests of `target` over `connections` in-memory connections whose
    /// server is `answer`.
    fn run(target: Target, plan: Arc<Plan>, requests: u64, connections: usize, answer: Answerer) -> ThreadResult {
        let mut io =
            Loopback { out: vec![Vec::new(); connections], inbox: vec![Vec::new(); connections], calls: 0, answer };
        drive(&mut io, config(target, plan, requests), Clock::new(), &Live::default(), &AtomicBool::new(false)).unwrap()
    }

    #[test]
    fn closed_loop_against_an_echo_checks_every_reply() {
        let plan = Plan::new(WorkloadSpec::default(), 2, Some((20, 150)));
        let mut replies = 0u64;
        let answer: Answerer = Box::new(move |_, req| {
            // Every 7th reply is corrupt.
            let mut v = Vec::new();
            for _ in 0..req.len() / 20 {
                replies += 1;
                let mut r = [b'r'; 150];
                if replies % 7 == 0 {
                    r[3] = b'x';
                }
                v.extend_from_slice(&r);
            }
            v
        });
        let r = run(Target::Echo, plan, 1000, 2, answer);
        assert_eq!(r.record.issued, 1000);
        // Every issued request is answered (valid or counted as an error), none left over.
        assert_eq!(r.record.completed() + r.record.errors.total(), 1000);
        assert_eq!(r.record.errors.get(ErrorKind::Unanswered), 0);
        let bad = r.record.errors.get(ErrorKind::BadReply);
        assert!((1000 / 7 - 2..=1000 / 7 + 2).contains(&bad), "{bad}");
    }

    #[test]
    fn churn_cycles_register_reregister_deregister_and_matches_by_pe() {
        let spec = WorkloadSpec { workload: WorkloadKind::Churn, churn_slots: 8, pools: 10, ..WorkloadSpec::default() };
        let plan = Plan::new(spec, 1, None);
        let p2 = Arc::clone(&plan);
        // A fake registrar answering every (De)Registration, in reverse order within a batch.
        let answer = move |_: usize, req: &[u8]| {
            let framer = Framer::new(Protocol::Asap, 65535);
            let mut answers = Vec::new();
            for m in framer.frames(req) {
                let m = m.unwrap();
                let parsed = asap::parse(m).unwrap();
                let mut v = Vec::new();
                match parsed.body() {
                    asap::Body::Registration { pool_handle, pool_element } => {
                        assert_eq!(p2.pool_of_pe(pool_element.pe_id()), p2.pool_of_handle(pool_handle));
                        let t = MessageType::RegistrationResponse;
                        asap::emit_handle_and_id(
                            &mut Writer::new(&mut v),
                            t,
                            0,
                            pool_handle,
                            Some(pool_element.pe_id()),
                            None,
                        )
                        .unwrap();
                    }
                    asap::Body::Deregistration { pool_handle, pe_id } => {
                        let t = MessageType::DeregistrationResponse;
                        asap::emit_handle_and_id(&mut Writer::new(&mut v), t, 0, pool_handle, Some(*pe_id), None)
                            .unwrap();
                    }
                    other => panic!("{other:?}"),
                }
                answers.push(v);
            }
            answers.reverse();
            answers.concat()
        };
        let r = run(Target::Registrar, plan, 300, 1, Box::new(answer));
        assert_eq!(r.record.errors.total(), 0, "{:?}", r.record.errors.nonzero());
        let ops = r.record.ops;
        let (reg, rereg, dereg) =
            (ops[OpKind::Register as usize], ops[OpKind::Reregister as usize], ops[OpKind::Deregister as usize]);
        assert_eq!(reg + rereg + dereg, 300);
        // One registration, one re-registration, one deregistration per cycle of a slot.
        assert!(reg.abs_diff(rereg) <= 8 && reg.abs_diff(dereg) <= 8, "{reg} {rereg} {dereg}");
    }

    #[test]
    fn wrong_answers_are_counted_and_do_not_stall_the_loop() {
        let plan = Plan::new(WorkloadSpec { pools: 5, ..WorkloadSpec::default() }, 1, None);
        let p2 = Arc::clone(&plan);
        let mut n = 0u32;
        let answer = move |_: usize, req: &[u8]| {
            let framer = Framer::new(Protocol::Asap, 65535);
            let mut out = Vec::new();
            for m in framer.frames(req) {
                let m = m.unwrap();
                let asap::Body::HandleResolution { pool_handle, .. } = asap::parse(m).unwrap().into_body() else {
                    panic!()
                };
                let pool = p2.pool_of_handle(pool_handle).unwrap();
                n += 1;
                // Every third answer names a PE of the next pool.
                let pe_pool = if n % 3 == 0 { (pool + 1) % 5 } else { pool };
                let pe = rserpool::wire::PoolElementRepr {
                    pe_id: p2.static_pe_id(pe_pool, 0),
                    home_registrar: 1,
                    registration_life: 1,
                    user_transport: rserpool::wire::TransportRepr::new(
                        rserpool::wire::TransportProtocol::Tcp,
                        "127.0.0.1".parse().unwrap(),
                        1,
                    ),
                    policy: rserpool::wire::PolicyRepr::Known(rserpool::wire::Policy::RoundRobin),
                    asap_transport: None,
                };
                let m = rserpool::wire::MessageRepr::new(
                    Protocol::Asap,
                    MessageType::HandleResolutionResponse as u8,
                    0,
                    vec![
                        rserpool::wire::ParamRepr::PoolHandle(pool_handle.to_vec()),
                        rserpool::wire::ParamRepr::Policy(rserpool::wire::PolicyRepr::Known(
                            rserpool::wire::Policy::RoundRobin,
                        )),
                        rserpool::wire::ParamRepr::PoolElement(pe),
                    ],
                );
                out.extend_from_slice(&m.to_bytes().unwrap());
            }
            out
        };
        let r = run(Target::Registrar, plan, 300, 1, Box::new(answer));
        let foreign = r.record.errors.get(ErrorKind::ForeignPoolElement);
        assert_eq!(foreign + r.record.completed(), 300);
        assert!((95..=105).contains(&foreign), "{foreign}");
    }
}
