//! One measured run: connect, spawn the pinned client threads, show progress, merge what the
//! threads recorded.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{drive, Clock, Live, ThreadConfig, ThreadResult};
use crate::epoll::EpollIo;
use crate::progress::Progress;
use crate::stats::{self, LatencySummary, OpKind, Record};
use crate::uring::UringIo;
use crate::workload::{Plan, Target};

/// The client's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoKind {
    /// io_uring: all sends and the wait in one system call per loop iteration.
    Uring,
    /// mio/epoll: a read and a write per connection and iteration, plus epoll_wait.
    Epoll,
}

/// How a run drives its server.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// The server kind.
    pub target: Target,
    /// The server's address.
    pub addr: SocketAddr,
    /// Connections in all.
    pub connections: usize,
    /// Requests in flight per connection (closed loop), or at most (open loop).
    pub depth: usize,
    /// Open loop at this many requests per second in all; None: closed loop.
    pub rate: Option<f64>,
    /// Client threads.
    pub threads: usize,
    /// Cores to pin the threads to (round robin); empty: not pinned.
    pub cores: Vec<usize>,
    /// Warm-up seconds (not recorded).
    pub warmup_s: f64,
    /// Measured seconds (unless bounded by `requests`).
    pub duration_s: f64,
    /// Measured requests, if bounded by count (then `duration_s` is an upper bound).
    pub requests: Option<u64>,
    /// Client transport.
    pub io: IoKind,
    /// Receive buffer per connection, bytes.
    pub recv_buffer: usize,
    /// Progress display: bar on a terminal, lines otherwise; false: quiet.
    pub progress: bool,
    /// The server's process id, to measure its CPU time over the measurement (when local).
    pub server_pid: Option<u32>,
}

/// CPU time (user + system) of process `pid` (None: this process) in clock ticks of 1/100 s.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15; the command name in
/// parentheses may contain spaces).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Linux reports process times in USER_HZ, 100 per second on every architecture it runs on.
const TICKS_PER_S: f64 = 100.0;

#[derive(Clone, Copy)]
struct CpuSample {
    at: u64,
    server: Option<u64>,
    client: Option<u64>,
}

impl CpuSample {
    fn take(clock: &Clock, server_pid: Option<u32>) -> Self {
        Self { at: clock.now(), server: server_pid.and_then(|p| cpu_ticks(Some(p))), client: cpu_ticks(None) }
    }

    /// Cores used by the server and by this process between `self` and `later`.
    fn usage(&self, later: &Self) -> (Option<f64>, Option<f64>) {
        let secs = later.at.saturating_sub(self.at) as f64 / 1e9;
        if secs < 0.2 {
            return (None, None);
        }
        (cores_used(self.server, later.server, secs), cores_used(self.client, later.client, secs))
    }
}

/// Cores a process used over `secs` seconds, from its CPU ticks ([`cpu_ticks`]) before and
/// after; `None` where either reading is missing.
pub fn cores_used(before: Option<u64>, after: Option<u64>, secs: f64) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / TICKS_PER_S / secs)
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// The configuration.
    pub config: RunConfig,
    /// Valid answers per second over the measurement window.
    pub throughput: f64,
    /// Offered requests per second (open loop).
    pub offered: Option<f64>,
    /// Length of the measurement window, seconds.
    pub measured_s: f64,
    /// Valid measured answers.
    pub completed: u64,
    /// Measured answers per operation.
    pub ops: serde_json::Map<String, serde_json::Value>,
    /// Errors of the measured requests by kind (and the total).
    pub errors: serde_json::Map<String, serde_json::Value>,
    /// Errors of requests outside the measurement (warm-up, drain).
    pub errors_outside_window: u64,
    /// Open loop: requests due in the window never sent (all connections at their limit).
    pub not_sent: u64,
    /// Latency (from the intended send time in open loop).
    pub latency: LatencySummary,
    /// Open loop: latency from the actual send.
    pub service_latency: Option<LatencySummary>,
    /// Percentile spectrum `[quantile, microseconds]`.
    pub spectrum: Vec<(f64, f64)>,
    /// Client system calls per answer (io_uring_enter, or read + write + epoll_wait).
    pub client_syscalls_per_answer: f64,
    /// Answers per client loop iteration (batching).
    pub answers_per_iteration: f64,
    /// Cores the server process used during the measurement (1.0 = one core busy), when its
    /// process id is known.
    pub server_cpu: Option<f64>,
    /// Cores this process (the client) used during the measurement.
    pub client_cpu: Option<f64>,
    /// The merged latency histogram (not serialized).
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl RunResult {
    /// Total errors in the measurement.
    pub fn error_total(&self) -> u64 {
        self.errors.get("total").and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

/// Connects, runs, and merges. The server must be ready (pools registered, keys set).
pub fn run(cfg: &RunConfig, plan: &Arc<Plan>, stop: &Arc<AtomicBool>) -> io::Result<RunResult> {
    let lives: Vec<Arc<Live>> = (0..client_threads(cfg)).map(|_| Arc::new(Live::default())).collect();
    run_watched(cfg, plan, stop, &lives)
}

/// The client threads a run of `cfg` starts.
pub fn client_threads(cfg: &RunConfig) -> usize {
    cfg.threads.max(1).min(cfg.connections.max(1))
}

/// [`run`], with each client thread's running counts published in `lives` (one per
/// [`client_threads`]), so that another thread can read them while it runs; the answer
/// count is current to the thread's last loop iteration.
pub fn run_watched(
    cfg: &RunConfig,
    plan: &Arc<Plan>,
    stop: &Arc<AtomicBool>,
    lives: &[Arc<Live>],
) -> io::Result<RunResult> {
    let threads = client_threads(cfg);
    if lives.len() != threads {
        return Err(io::Error::other(format!("{} live counters for {threads} client threads", lives.len())));
    }
    let mut per_thread: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.connections {
        let s = TcpStream::connect(cfg.addr)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {} ({}): {e}", cfg.addr, cfg.target.name())))?;
        // Contiguous blocks, so a thread's connections have consecutive global indexes.
        per_thread[i * threads / cfg.connections.max(1)].push(s);
    }
    let clock = Clock::new();
    let start = clock.now() + 100_000_000;
    let mut handles = Vec::new();
    let mut base = 0;
    for (t, streams) in per_thread.into_iter().enumerate() {
        let n = streams.len();
        let tc = ThreadConfig {
            target: cfg.target,
            plan: Arc::clone(plan),
            depth: cfg.depth.max(1),
            rate: cfg.rate,
            thread: t,
            threads,
            conn_base: base,
            start,
            warmup: Duration::from_secs_f64(cfg.warmup_s),
            duration: Some(Duration::from_secs_f64(cfg.duration_s)),
            requests: cfg.requests.map(|r| r / threads as u64 + u64::from((t as u64) < r % threads as u64)),
            drain: Duration::from_secs(2),
            seed: plan.spec.seed.wrapping_mul(0x9e37_79b9).wrapping_add(t as u64),
        };
        base += n;
        let core = (!cfg.cores.is_empty()).then(|| cfg.cores[t % cfg.cores.len()]);
        let live = Arc::clone(&lives[t]);
        let stop = Arc::clone(stop);
        let (io_kind, rbuf) = (cfg.io, cfg.recv_buffer);
        let h =
            std::thread::Builder::new().name(format!("loadgen-{t}")).spawn(move || -> io::Result<ThreadResult> {
                if let Some(id) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                match io_kind {
                    IoKind::Uring => {
                        let mut io = UringIo::new(streams, rbuf)?;
                        drive(&mut io, tc, clock, &live, &stop)
                    }
                    IoKind::Epoll => {
                        let mut io = EpollIo::new(streams, rbuf)?;
                        drive(&mut io, tc, clock, &live, &stop)
                    }
                }
            })?;
        handles.push(h);
    }
    let total = cfg.warmup_s + cfg.duration_s;
    let mut progress = cfg.progress.then(|| Progress::new(cfg, total));
    let warm_end = start + (cfg.warmup_s * 1e9) as u64;
    let measure_end = warm_end + (cfg.duration_s * 1e9) as u64;
    let (mut first, mut last) = (None, None);
    while handles.iter().any(|h| !h.is_finished()) {
        let now = clock.now();
        let next = if first.is_none() { warm_end } else { measure_end };
        let nap = Duration::from_nanos(next.saturating_sub(now).clamp(1_000_000, 100_000_000));
        std::thread::sleep(nap);
        let now = clock.now();
        if first.is_none() && now >= warm_end {
            first = Some(CpuSample::take(&clock, cfg.server_pid));
        } else if last.is_none() && now >= measure_end {
            last = Some(CpuSample::take(&clock, cfg.server_pid));
        }
        if let Some(p) = progress.as_mut() {
            p.update(lives, now.saturating_sub(start));
        }
    }
    let last = last.unwrap_or_else(|| CpuSample::take(&clock, cfg.server_pid));
    let (server_cpu, client_cpu) = first.map_or((None, None), |f| f.usage(&last));
    if let Some(p) = progress.take() {
        p.finish();
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| io::Error::other("client thread panicked"))??);
    }
    let mut r = merge(cfg, &results);
    r.server_cpu = server_cpu;
    r.client_cpu = client_cpu;
    Ok(r)
}

/// Merges the threads' results into one.
pub fn merge(cfg: &RunConfig, results: &[ThreadResult]) -> RunResult {
    let mut rec = Record::default();
    let (mut from, mut to) = (u64::MAX, 0);
    let (mut syscalls, mut answers, mut iterations) = (0, 0, 0);
    for r in results {
        rec.merge(&r.record);
        from = from.min(r.window.0);
        to = to.max(r.window.1);
        syscalls += r.syscalls;
        answers += r.answers;
        iterations += r.iterations;
    }
    let secs = (to.saturating_sub(from) as f64 / 1e9).max(1e-9);
    let mut ops = serde_json::Map::new();
    for k in OpKind::ALL {
        let n = rec.ops[k as usize];
        if n > 0 {
            ops.insert(k.name().into(), n.into());
        }
    }
    let mut errors = serde_json::Map::new();
    errors.insert("total".into(), rec.errors.total().into());
    for (name, n) in rec.errors.nonzero() {
        errors.insert(name.into(), n.into());
    }
    RunResult {
        config: cfg.clone(),
        throughput: rec.completed() as f64 / secs,
        offered: cfg.rate,
        measured_s: secs,
        completed: rec.completed(),
        ops,
        errors,
        errors_outside_window: rec.errors_outside,
        not_sent: rec.not_sent,
        latency: stats::summarize(&rec.latency),
        service_latency: cfg.rate.is_some().then(|| stats::summarize(&rec.service)),
        spectrum: stats::spectrum(&rec.latency),
        client_syscalls_per_answer: syscalls as f64 / answers.max(1) as f64,
        answers_per_iteration: answers as f64 / iterations.max(1) as f64,
        server_cpu: None,
        client_cpu: None,
        histogram: rec.latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 500 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_ticks(None).is_some());
    }
}
