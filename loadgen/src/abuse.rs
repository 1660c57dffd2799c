//! `loadgen abuse`: resolution latency of well-behaved clients with and without abusive ones,
//! alternated in one run against one registrar process.
//!
//! Abuses: slow readers (pipeline requests, read a trickle), clients that never read (pipeline
//! until the registrar stops reading them), half-open connections (connect and say nothing, or
//! send half a message and stop), and a connection flood (past `limits.max_connections`). Each
//! phase pair runs "without" then "with" the abuse for the same time, every round; the figures
//! merge the rounds. What each abuse hit (stalled writes, refused connections) is counted.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rserpool::client::blocking::AsapStream;
use rserpool::wire::asap::{self, Body, Resolution};
use rserpool::wire::Policy;

use crate::fuzz::{pe_repr, registration, resolution, rss_kib};
use crate::live::LiveRegistrar;
use crate::servers::default_registrar_bin;

/// Options of `loadgen abuse`.
#[derive(clap::Args, Clone, Debug)]
pub struct AbuseArgs {
    /// Rounds (each runs every abuse's "without" and "with" phase).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 4.0)]
    pub phase: f64,
    /// Registrar engine.
    #[arg(long, default_value = "epoll", value_parser = ["epoll", "uring"])]
    pub engine: String,
    /// Registrar shards.
    #[arg(long, default_value_t = 2)]
    pub cores: usize,
    /// Well-behaved clients (one connection each).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Resolutions per second of each well-behaved client.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Abusive connections per abuse (the flood opens max_connections + this many).
    #[arg(long, default_value_t = 32)]
    pub abusers: usize,
    /// The registrar's limits.max_connections.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// The registrar's limits.max_send_queue, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_send_queue: usize,
    /// The `rserpool` binary (default: next to this one).
    #[arg(long)]
    pub registrar_bin: Option<PathBuf>,
    /// Where the registrar's configuration and log go.
    #[arg(long, default_value = "/tmp/loadgen-abuse")]
    pub workdir: PathBuf,
}

/// The abuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abuse {
    /// Pipeline requests, read 256 bytes every 5 ms.
    SlowReaders,
    /// Pipeline requests, never read.
    NeverReaders,
    /// Connect and stay silent, or send half a message and stop.
    HalfOpen,
    /// Open connections up to and past `max_connections`, and keep trying.
    Flood,
}

impl Abuse {
    /// Every abuse, in the order run.
    pub const ALL: [Abuse; 4] = [Abuse::SlowReaders, Abuse::NeverReaders, Abuse::HalfOpen, Abuse::Flood];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Abuse::SlowReaders => "slow readers",
            Abuse::NeverReaders => "never-reading clients",
            Abuse::HalfOpen => "half-open connections",
            Abuse::Flood => "connection flood",
        }
    }
}

const POOL: &[u8] = b"abuse-pool";
const PES: u32 = 8;

/// What the abusers of one phase achieved.
#[derive(Debug, Default)]
pub struct AbuseCounts {
    /// Requests the abusers wrote in full.
    pub requests: AtomicU64,
    /// Answer bytes they read.
    pub read_bytes: AtomicU64,
    /// Connections whose writes stalled (the registrar stopped reading them).
    pub stalled: AtomicU64,
    /// Connections the registrar accepted and kept.
    pub held: AtomicU64,
    /// Connections refused (closed at once by the registrar, or not accepted at all).
    pub refused: AtomicU64,
    /// Connections the registrar closed later.
    pub closed: AtomicU64,
}

fn sock_with_small_buffers(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // Small kernel buffers, so the registrar's limit (not the kernel's) is what stops us.
    let _ = s.set_recv_buffer_size(4096);
    let _ = s.set_send_buffer_size(4096);
    s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Pipelines resolutions on `s` (nonblocking) until `stop`, reading `read_per_tick` bytes every
/// 5 ms (0: never).
fn pipeline(s: &mut TcpStream, read_per_tick: usize, stop: &AtomicBool, counts: &AbuseCounts) {
    let req = resolution(POOL, None);
    let batch: Vec<u8> = req.iter().copied().cycle().take(req.len() * 64).collect();
    let _ = s.set_nonblocking(true);
    let mut at = 0usize;
    let mut buf = vec![0u8; read_per_tick.max(1)];
    let mut stalled_since: Option<Instant> = None;
    let mut counted_stall = false;
    let mut next_read = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match s.write(&batch[at..]) {
            Ok(n) => {
                let done = (at + n) / req.len() - at / req.len();
                counts.requests.fetch_add(done as u64, Ordering::Relaxed);
                at = (at + n) % batch.len();
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if !counted_stall && since.elapsed() > Duration::from_millis(500) {
                    counts.stalled.fetch_add(1, Ordering::Relaxed);
                    counted_stall = true;
                }
            }
            Err(_) => {
                counts.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if read_per_tick > 0 && Instant::now() >= next_read {
            next_read += Duration::from_millis(5);
            match s.read(&mut buf) {
                Ok(0) => {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(n) => {
                    counts.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the registrar has closed `s` (a refused connection is closed as soon as accepted).
fn is_closed(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 64];
    let mut r = s;
    match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Runs one abuse until `stop`, with `n` abusive connections (the flood: up to
/// `max_connections + n`).
pub fn abuse(kind: Abuse, addr: SocketAddr, n: usize, max_connections: usize, stop: &AtomicBool, counts: &AbuseCounts) {
    match kind {
        Abuse::SlowReaders | Abuse::NeverReaders => {
            let per_tick = if kind == Abuse::SlowReaders { 256 } else { 0 };
            std::thread::scope(|s| {
                for _ in 0..n {
                    s.spawn(move || match sock_with_small_buffers(addr) {
                        Ok(mut c) => pipeline(&mut c, per_tick, stop, counts),
                        Err(_) => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
        }
        Abuse::HalfOpen => {
            let reg = registration(b"half-open", pe_repr(1, 9999, Policy::RoundRobin, 60_000));
            let mut held = Vec::new();
            for i in 0..n {
                match TcpStream::connect(addr) {
                    Ok(mut c) => {
                        if i % 2 == 1 {
                            // Half a message: the header promises the rest.
                            let _ = c.write_all(&reg[..reg.len() / 2]);
                        }
                        counts.held.fetch_add(1, Ordering::Relaxed);
                        held.push(c);
                    }
                    Err(_) => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Abuse::Flood => {
            // Batches of connections, each batch checked after 50 ms: refused ones are closed
            // by then. Fast until n have been refused (the limit is passed), then a steady
            // trickle of new attempts for the rest of the phase.
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let burst = counts.refused.load(Ordering::Relaxed) < n as u64;
                let batch: Vec<TcpStream> = (0..if burst { 64 } else { 8 })
                    .filter_map(|_| match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                        Ok(c) => Some(c),
                        Err(_) => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(50));
                for c in batch {
                    if is_closed(&c) {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    } else if held.len() < max_connections + n {
                        counts.held.fetch_add(1, Ordering::Relaxed);
                        held.push(c);
                    }
                }
            }
            counts.closed.store(held.iter().filter(|c| is_closed(c)).count() as u64, Ordering::Relaxed);
        }
    }
}

/// The well-behaved clients of one phase: resolutions at `rate` per second each, every answer
/// checked (the pool, and `default_items` distinct PEs of the registered ones).
fn measure(clients: &mut [AsapStream], rate: u64, phase: Duration) -> (Histogram<u64>, u64, u64) {
    let hist = std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram"));
    let (ok, bad) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for c in clients.iter_mut() {
            let (hist, ok, bad) = (&hist, &ok, &bad);
            s.spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram");
                let req = resolution(POOL, None);
                let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
                let start = Instant::now();
                let mut next = start;
                while start.elapsed() < phase {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    next += gap;
                    let t0 = Instant::now();
                    let answer = c.send(&req).ok().and_then(|()| c.recv(Duration::from_secs(10)).ok().flatten());
                    let dt = t0.elapsed();
                    match answer.as_deref().map(check_answer) {
                        Some(true) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = h.record(dt.as_nanos() as u64);
                        }
                        _ => {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut all) = hist.lock() {
                    let _ = all.add(&h);
                }
            });
        }
    });
    (hist.into_inner().unwrap_or_else(|e| e.into_inner()), ok.into_inner(), bad.into_inner())
}

fn check_answer(m: &[u8]) -> bool {
    let Ok(p) = asap::parse(m) else { return false };
    let Body::HandleResolutionResponse { pool_handle, resolution: Resolution::Found { pool_elements, .. } } = p.body()
    else {
        return false;
    };
    let mut ids: Vec<u32> = pool_elements.clone().map(|pe| pe.to_repr().pe_id).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    *pool_handle == POOL && n == 3 && ids.len() == 3 && ids.iter().all(|id| (1..=PES).contains(id))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Runs `loadgen abuse`: exit code 0 if every well-behaved request was answered right and the
/// registrar lived and did not panic.
pub fn cmd_abuse(a: &AbuseArgs) -> std::io::Result<i32> {
    let bin = a.registrar_bin.clone().unwrap_or_else(default_registrar_bin);
    let config = format!(
        "[limits]\nmax_connections = {}\nmax_send_queue = {}\n[timers]\nkeep_alive_interval = 3600000\n",
        a.max_connections, a.max_send_queue
    );
    let mut registrar = LiveRegistrar::start(&bin, &a.engine, a.cores, &config, &a.workdir)?;
    println!("registrar: {} (pid {})", registrar.command, registrar.pid());
    println!("config: {}", config.replace('\n', " "));
    let addr = registrar.addr;
    // The pool: PES PEs on one connection that stays open (keep-alives are an hour apart).
    let mut holder = AsapStream::connect(addr, None, Duration::from_secs(5))?;
    for id in 1..=PES {
        holder.send(&registration(POOL, pe_repr(id, 20_000 + id as u16, Policy::RoundRobin, 3_600_000)))?;
        let m = holder.recv(Duration::from_secs(10))?.unwrap_or_default();
        match asap::parse(&m).map(|p| p.body().clone()) {
            Ok(Body::RegistrationResponse { rejected: false, .. }) => {}
            other => return Err(std::io::Error::other(format!("registration refused: {other:?}"))),
        }
    }
    let mut clients = Vec::new();
    for _ in 0..a.clients {
        clients.push(AsapStream::connect(addr, None, Duration::from_secs(5))?);
    }
    let phase = Duration::from_secs_f64(a.phase);
    let mut without: Vec<Histogram<u64>> = Abuse::ALL.iter().map(|_| Histogram::new(3).expect("histogram")).collect();
    let mut with = without.clone();
    let mut bad_total = 0u64;
    let mut notes: Vec<Vec<String>> = vec![Vec::new(); Abuse::ALL.len()];
    println!("load: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    for round in 0..a.rounds {
        for (k, &kind) in Abuse::ALL.iter().enumerate() {
            let (h, _, bad) = measure(&mut clients, a.rate, phase);
            bad_total += bad;
            let _ = without[k].add(&h);
            let base = format!(
                "p50/p99/max {:.3}/{:.3}/{:.3} ms",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
            let stop = AtomicBool::new(false);
            let counts = AbuseCounts::default();
            let rss_before = rss_kib(registrar.pid()).unwrap_or(0);
            let (h, bad, rss_during) = std::thread::scope(|s| {
                let abuser = s.spawn(|| abuse(kind, addr, a.abusers, a.max_connections, &stop, &counts));
                // Let the abusers get to their limit before measuring.
                std::thread::sleep(Duration::from_millis(500));
                let (h, _, bad) = measure(&mut clients, a.rate, phase);
                let rss = rss_kib(registrar.pid()).unwrap_or(0);
                stop.store(true, Ordering::Relaxed);
                let _ = abuser.join();
                (h, bad, rss)
            });
            bad_total += bad;
            let _ = with[k].add(&h);
            let note = format!(
                "round {round}: without {base}, with p50/p99/max {:.3}/{:.3}/{:.3} ms; abusers wrote {} requests, read {} bytes; {} stalled, {} held, {} refused, {} closed later; registrar RSS {:.1} -> {:.1} MiB; {} wrong or missing answers",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                counts.requests.load(Ordering::Relaxed),
                counts.read_bytes.load(Ordering::Relaxed),
                counts.stalled.load(Ordering::Relaxed),
                counts.held.load(Ordering::Relaxed),
                counts.refused.load(Ordering::Relaxed),
                counts.closed.load(Ordering::Relaxed),
                rss_before as f64 / 1024.0,
                rss_during as f64 / 1024.0,
                bad
            );
            println!("{}: {note}", kind.name());
            notes[k].push(note);
            // Let the registrar reap the abusers' connections before the next baseline.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    println!("load: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!();
    println!("| abuse | phase | resolutions | p50 ms | p99 ms | max ms | p99 with / without |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (k, kind) in Abuse::ALL.iter().enumerate() {
        let (w, o) = (&with[k], &without[k]);
        for (name, h) in [("without", o), ("with", w)] {
            let ratio = if name == "with" {
                format!("{:.2}", w.value_at_quantile(0.99) as f64 / o.value_at_quantile(0.99).max(1) as f64)
            } else {
                String::new()
            };
            println!(
                "| {} | {name} | {} | {:.3} | {:.3} | {:.3} | {ratio} |",
                kind.name(),
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
            );
        }
    }
    let alive = registrar.alive();
    let panics = registrar.panics();
    println!();
    println!(
        "wrong or missing answers to well-behaved clients: {bad_total}; registrar alive: {alive}; panics: {}",
        panics.len()
    );
    let ok = alive && panics.is_empty() && bad_total == 0;
    drop(clients);
    drop(holder);
    let exit = registrar.terminate(Duration::from_secs(20)).map(|s| s.success()).unwrap_or(false);
    println!("registrar exit on SIGTERM: {}", if exit { "clean" } else { "NOT clean" });
    Ok(if ok && exit { 0 } else { 1 })
}
