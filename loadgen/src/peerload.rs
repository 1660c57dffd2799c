//! `loadgen peer-updates`: a registrar's resolution throughput while it receives an ENRP
//! peer's Handle Updates, side by side with the same registrar receiving none.
//!
//! Registrar B (one shard, on `--b-core`) holds the resolution workload's pools (registered
//! at B before the first round and held until the end); registrar A (one shard, on
//! `--a-core`) is B's ENRP peer. Each round runs the resolution workload against B twice, in
//! alternation: once while registration churn at A (the `propagation` mode's churn, pools
//! `prop-*`, at `--rate` updates/s, without watching B) makes A send B a Handle Update per
//! change, and once with A idle. For each run: answers/s, B's CPU (cores) over the
//! measurement and its capacity (answers/s per core of B's CPU: the honest figure when the
//! client's core is the limit), latency, and the Handle Updates B received per second
//! (`rserpool status`, `updates_received`). Then the medians and their ratios.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use rserpool::registrar::{StatusReport, STATUS_REQUEST};

use crate::peerfeed;
use crate::propagation::{self, PropagationConfig};
use crate::report::{self, Machine};
use crate::run::{self, IoKind, RunConfig};
use crate::setup;
use crate::workload::{Plan, Target, WorkloadSpec};

/// Arguments of `loadgen peer-updates`.
#[derive(clap::Args, Clone, Debug)]
pub struct PeerLoadArgs {
    /// Rounds (each: one run with updates, one without).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Updates per second at A (each one a Handle Update to B).
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// Resolution connections to B.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Resolutions in flight per connection (at most, with `--resolve-rate`).
    #[arg(short = 'd', long, default_value_t = 1)]
    pub depth: usize,
    /// Offer resolutions at this rate (open loop) instead of as fast as B answers. Both runs of
    /// a round then ask B for the same work, and B's extra CPU with updates is what they cost
    /// it while it serves: the share of its core a saturated B would lose to them (the figure
    /// to read where the clients cannot saturate B, e.g. on a 2-core machine).
    #[arg(long, value_name = "PER_SECOND")]
    pub resolve_rate: Option<f64>,
    /// Warm-up seconds of each run, not recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Client transport.
    #[arg(long, value_enum, default_value_t = IoKind::Uring)]
    pub io: IoKind,
    /// Pools at B and PEs per pool (the resolution workload).
    #[arg(long, default_value_t = 1000)]
    pub pools: usize,
    /// PEs per pool at B.
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,
    /// Core of registrar B (the one measured).
    #[arg(long, default_value_t = 1)]
    pub b_core: usize,
    /// Core of registrar A.
    #[arg(long, default_value_t = 0)]
    pub a_core: usize,
    /// Instead of registrar A and its churn clients, a stand-in peer (`peerfeed`) writes B
    /// pre-encoded Handle Updates at `--rate`, one write per `--feed-window-us`: the same
    /// updates at almost no CPU, so that the resolution client keeps its core while they run.
    #[arg(long)]
    pub feed: bool,
    /// The feed's write interval, microseconds (a registrar's `timers.update_coalesce_us`).
    #[arg(long, default_value_t = 500)]
    pub feed_window_us: u64,
    /// With `--feed`: instead of separate runs with and without updates, one client run per
    /// round in which the feed is switched on and off every this many milliseconds, `--pairs`
    /// times each, and answers/s compared window against neighbouring window. Both windows of
    /// a pair share the run's connections and whatever operating mode client and B settled
    /// into, so the ratio is not swamped by run-to-run spread.
    #[arg(long, value_name = "MS", requires = "feed")]
    pub alternate_ms: Option<u64>,
    /// Pairs of windows (one with updates, one without) per round, with `--alternate-ms`.
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// Core of this process's client threads (resolutions at B, churn at A).
    #[arg(long, default_value_t = 0)]
    pub client_core: usize,
    /// Core of the feed's thread (default: the client's). On B's core, what the feed's writes
    /// cost (the sender's system calls and, on loopback, the TCP receive path) is charged to
    /// B instead of the client: a conservative setting where the client's core is the limit.
    #[arg(long, requires = "feed")]
    pub feed_core: Option<usize>,
    /// The registrar binary (default: `rserpool` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub registrar_bin: Option<PathBuf>,
    /// More registrar configuration for both registrars (TOML appended to the generated
    /// `[limits]` table, which it must not repeat), e.g. `[timers]` with `update_coalesce_us = 300`.
    #[arg(long, value_name = "FILE")]
    pub registrar_config: Option<PathBuf>,
    /// Folder for results.
    #[arg(long, default_value = "results/enrp")]
    pub out: PathBuf,
}

/// One run against B.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Round number.
    pub round: usize,
    /// Whether A's churn was on.
    pub updates: bool,
    /// Resolutions answered per second.
    pub throughput: f64,
    /// B's CPU over the measurement, cores.
    pub b_cpu: Option<f64>,
    /// Answers per second per core of B's CPU.
    pub capacity: Option<f64>,
    /// Cores this process used (resolution client and churn client together).
    pub client_cpu: Option<f64>,
    /// Median latency, us.
    pub p50_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// Handle Updates B received per second during the run (status counters).
    pub b_updates_per_s: f64,
    /// Updates per second the churn at A offered (when on).
    pub churn_offered: Option<f64>,
    /// Errors of the resolution run.
    pub errors: u64,
}

/// The status report of the registrar whose ASAP address is `addr`.
pub fn status(addr: SocketAddr) -> io::Result<StatusReport> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[STATUS_REQUEST, 0, 0, 4])?;
    StatusReport::from_message(&propagation::read_message(&mut s)?).map_err(io::Error::other)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// B under A's updates alone (no resolutions): what applying them costs B.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UpdatesAlone {
    /// Seconds measured.
    pub seconds: f64,
    /// Handle Updates B received per second.
    pub b_updates_per_s: f64,
    /// B's CPU, cores.
    pub b_cpu: f64,
    /// B's CPU per update received, microseconds.
    pub b_us_per_update: f64,
}

impl UpdatesAlone {
    /// One sentence for the reports.
    fn describe(&self) -> String {
        format!(
            "The updates alone (no resolutions, {:.1} s): B received {:.0} updates/s and used {:.3} cores: \
             {:.2} us of B's CPU per update.",
            self.seconds, self.b_updates_per_s, self.b_cpu, self.b_us_per_update
        )
    }
}

/// The JSON document.
#[derive(Serialize)]
struct Doc<'a> {
    machine: &'a Machine,
    args: String,
    server_commands: [&'a str; 2],
    updates_alone: &'a UpdatesAlone,
    samples: &'a [Sample],
}

/// What makes B receive updates: churn at a real registrar A, or the stand-in feed.
#[derive(Clone, Copy)]
enum Source<'a> {
    Churn { churn: &'a PropagationConfig, a: SocketAddr, b: SocketAddr },
    Feed { b_enrp: SocketAddr, rate: f64, window: Duration },
}

/// A running source of updates.
enum Running {
    Churn(std::thread::JoinHandle<io::Result<propagation::PropagationResult>>),
    Feed(std::thread::JoinHandle<io::Result<peerfeed::FeedResult>>, Instant),
}

impl Source<'_> {
    /// Starts it in a thread pinned to `core`; it stops when `stop` is raised. A feed writes
    /// only while `active` is raised, when given (churn ignores it).
    fn start(&self, core: usize, stop: &Arc<AtomicBool>, active: Option<&Arc<AtomicBool>>) -> Running {
        match *self {
            Source::Churn { churn, a, b } => Running::Churn(start_churn(churn, a, b, core, stop)),
            Source::Feed { b_enrp, rate, window } => {
                let cfg = peerfeed::FeedConfig { to: b_enrp, rate, window, slots: 4096, active: active.cloned() };
                let s = Arc::clone(stop);
                let t = std::thread::spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    peerfeed::run(&cfg, &s)
                });
                Running::Feed(t, Instant::now())
            }
        }
    }
}

impl Running {
    /// Waits for it to end (after its stop flag was raised); returns the updates per second it
    /// offered.
    fn join(self) -> io::Result<f64> {
        match self {
            Running::Churn(t) => {
                let r = t.join().map_err(|_| io::Error::other("churn thread panicked"))??;
                Ok(r.recorded as f64 / r.measured_s.max(1e-9))
            }
            Running::Feed(t, started) => {
                let secs = started.elapsed().as_secs_f64();
                let r = t.join().map_err(|_| io::Error::other("feed thread panicked"))??;
                Ok(r.sent as f64 / secs.max(1e-9))
            }
        }
    }
}

/// Starts the churn at A in a thread pinned to `core`; it stops when `stop` is raised.
fn start_churn(
    churn: &PropagationConfig,
    a: SocketAddr,
    b: SocketAddr,
    core: usize,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<io::Result<propagation::PropagationResult>> {
    let c = PropagationConfig { at: a, see: b, duration_s: 3600.0, warmup_s: 0.0, ..churn.clone() };
    let s = Arc::clone(stop);
    std::thread::spawn(move || {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
        propagation::run(&c, &s)
    })
}

/// `loadgen peer-updates`.
pub fn cmd_peer_load(args: &PeerLoadArgs) -> io::Result<i32> {
    let bin = args.registrar_bin.clone().unwrap_or_else(crate::servers::default_registrar_bin);
    let churn = PropagationConfig { rate: args.rate, watch: false, ..PropagationConfig::default() };
    let mut config = format!(
        "[limits]\nmax_pes_per_connection = {}\n",
        (churn.slots.div_ceil(churn.churn_connections)).max(args.pools * args.pool_size) + 16
    );
    if let Some(extra) = &args.registrar_config {
        config.push_str(&std::fs::read_to_string(extra)?);
    }
    let (a, b) = if args.feed {
        (None, propagation::spawn_registrar(&bin, args.b_core, "b0000002", None, &config)?)
    } else {
        let (a, b) = propagation::spawn_peers(&bin, args.a_core, args.b_core, &config)?;
        (Some(a), b)
    };
    core_affinity::set_for_current(core_affinity::CoreId { id: args.client_core });
    let source = match &a {
        Some(a) => {
            let took = propagation::check_peering(a.addr, b.addr, Duration::from_secs(30))?;
            eprintln!("A {} and B {} peer ({took:?})", a.addr, b.addr);
            Source::Churn { churn: &churn, a: a.addr, b: b.addr }
        }
        None => {
            Source::Feed { b_enrp: b.enrp, rate: args.rate, window: Duration::from_micros(args.feed_window_us.max(1)) }
        }
    };
    let spec = WorkloadSpec { pools: args.pools, pool_size: args.pool_size, ..WorkloadSpec::default() };
    let plan = Plan::new(spec, args.connections.max(1), None);
    let _holder = setup::register_static(b.addr, &plan)?;
    let cfg = RunConfig {
        target: Target::Registrar,
        addr: b.addr,
        connections: args.connections.max(1),
        depth: args.depth.max(1),
        rate: args.resolve_rate,
        threads: 1,
        cores: vec![args.client_core],
        warmup_s: args.warmup,
        duration_s: args.duration,
        requests: None,
        io: args.io,
        recv_buffer: 64 * 1024,
        progress: false,
        server_pid: Some(b.pid()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sig = crate::cli::stop_flag();
    // First the updates alone: B's CPU per update.
    let alone = {
        let churn_stop = Arc::new(AtomicBool::new(false));
        let t = source.start(args.feed_core.unwrap_or(args.client_core), &churn_stop, None);
        std::thread::sleep(Duration::from_millis(500));
        let (u0, c0, t0) = (status(b.addr)?.updates_received, run::cpu_ticks(Some(b.pid())), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(args.duration.max(1.0)));
        let (u1, c1, secs) =
            (status(b.addr)?.updates_received, run::cpu_ticks(Some(b.pid())), t0.elapsed().as_secs_f64());
        churn_stop.store(true, Ordering::Relaxed);
        t.join()?;
        let cpu = run::cores_used(c0, c1, secs).unwrap_or(0.0);
        let rate = (u1 - u0) as f64 / secs;
        let u = UpdatesAlone {
            seconds: secs,
            b_updates_per_s: rate,
            b_cpu: cpu,
            b_us_per_update: if rate > 0.0 { cpu * 1e6 / rate } else { 0.0 },
        };
        eprintln!(
            "updates alone: B received {:.0}/s, B CPU {:.3} cores = {:.2} us per update",
            u.b_updates_per_s, u.b_cpu, u.b_us_per_update
        );
        std::thread::sleep(Duration::from_millis(500));
        u
    };
    if let Some(ms) = args.alternate_ms {
        let window = Duration::from_millis(ms.max(10));
        let pairs = alternate(args, &source, &b, &cfg, &plan, window, &sig)?;
        let machine = Machine::now();
        let doc = AltDoc {
            machine: &machine,
            args: format!("{args:?}"),
            server_command: &b.command,
            updates_alone: &alone,
            pairs: &pairs,
        };
        let md = alternating_markdown(&machine, args, &alone, &pairs);
        write_reports(&args.out, "peer-updates-alternating-{date}.json", &machine, &doc, &md)?;
        return Ok(i32::from(pairs.is_empty()));
    }
    let mut samples = Vec::new();
    'rounds: for round in 1..=args.rounds {
        for updates in [true, false] {
            if sig.load(Ordering::Relaxed) {
                break 'rounds;
            }
            let churn_stop = Arc::new(AtomicBool::new(false));
            let churn_thread = updates.then(|| source.start(args.client_core, &churn_stop, None));
            if updates {
                std::thread::sleep(Duration::from_millis(500));
            }
            let (u0, t0) = (status(b.addr)?.updates_received, Instant::now());
            let r = run::run(&cfg, &plan, &stop)?;
            let (u1, secs) = (status(b.addr)?.updates_received, t0.elapsed().as_secs_f64());
            churn_stop.store(true, Ordering::Relaxed);
            let churn_offered = churn_thread.map(Running::join).transpose()?;
            let s = Sample {
                round,
                updates,
                throughput: r.throughput,
                b_cpu: r.server_cpu,
                capacity: r.server_cpu.filter(|c| *c > 0.0).map(|c| r.throughput / c),
                client_cpu: r.client_cpu,
                p50_us: r.latency.p50_us,
                p99_us: r.latency.p99_us,
                b_updates_per_s: (u1 - u0) as f64 / secs,
                churn_offered,
                errors: r.error_total(),
            };
            eprintln!(
                "round {round} {}: {:.0} answers/s, B cpu {:.2}, capacity {:.0}, client cpu {:.2}, p99 {:.0} us, B received {:.0} updates/s",
                if updates { "with updates   " } else { "without updates" },
                s.throughput,
                s.b_cpu.unwrap_or(f64::NAN),
                s.capacity.unwrap_or(f64::NAN),
                s.client_cpu.unwrap_or(f64::NAN),
                s.p99_us,
                s.b_updates_per_s
            );
            samples.push(s);
            // Let A's last updates drain before the next run.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let machine = Machine::now();
    let doc = Doc {
        machine: &machine,
        args: format!("{args:?}"),
        server_commands: [a.as_ref().map_or("(the feed, no registrar A)", |a| a.command.as_str()), b.command.as_str()],
        updates_alone: &alone,
        samples: &samples,
    };
    let md = markdown(&machine, args, &alone, &samples);
    write_reports(&args.out, "peer-updates-{date}.json", &machine, &doc, &md)?;
    Ok(if samples.iter().any(|s| s.errors > 0) { 1 } else { 0 })
}

/// Writes `doc` as JSON to `out`/`name` (its `{date}` filled in) and `md` next to it, and
/// prints `md`.
fn write_reports(out: &Path, name: &str, machine: &Machine, doc: &impl Serialize, md: &str) -> io::Result<()> {
    let path = report::out_path(out, name, machine);
    report::write_json(&path, doc)?;
    let md_path = path.with_extension("md");
    std::fs::write(&md_path, md)?;
    print!("{md}");
    eprintln!("wrote {} and {}", path.display(), md_path.display());
    Ok(())
}

/// When and where, for the reports.
fn machine_line(m: &Machine) -> String {
    format!("{} UTC, nproc {}, kernel {}, git {}", m.date, m.nproc, m.kernel, m.git_revision)
}

/// The resolution workload, for the reports.
fn workload_line(args: &PeerLoadArgs) -> String {
    format!(
        "{} connections x depth {}, {}, {} pools x {} PEs at B",
        args.connections,
        args.depth,
        args.resolve_rate.map_or("closed loop".to_string(), |r| format!("open loop at {r:.0} resolutions/s")),
        args.pools,
        args.pool_size
    )
}

/// The table of every run, then medians and ratios.
pub fn markdown(machine: &Machine, args: &PeerLoadArgs, alone: &UpdatesAlone, samples: &[Sample]) -> String {
    let peer = if args.feed {
        format!(
            "the updates from the stand-in peer (`--feed`, no registrar A: pre-encoded Handle Updates, one \
             write per {} us)",
            args.feed_window_us
        )
    } else {
        format!("A on core {}", args.a_core)
    };
    let mut s = format!(
        "# Resolution throughput at B with and without a peer's Handle Updates\n\n\
         {}. B on core {}, {peer}, clients on core {}; {}, {:.0} updates/s asked; \
         {} s measured per run after {} s warm-up.\n\n\
         {}\n\n\
         | round | updates | answers/s | B CPU (cores) | capacity (answers/s per B core) | client CPU | p50 us | p99 us | updates B received/s |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        machine_line(machine),
        args.b_core,
        args.client_core,
        workload_line(args),
        args.rate,
        args.duration,
        args.warmup,
        alone.describe()
    );
    for x in samples {
        s += &format!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} |\n",
            x.round,
            if x.updates { "yes" } else { "no" },
            x.throughput,
            x.b_cpu.unwrap_or(f64::NAN),
            x.capacity.unwrap_or(f64::NAN),
            x.client_cpu.unwrap_or(f64::NAN),
            x.p50_us,
            x.p99_us,
            x.b_updates_per_s
        );
    }
    let pick = |u: bool, f: fn(&Sample) -> Option<f64>| {
        median(samples.iter().filter(|x| x.updates == u).filter_map(f).collect())
    };
    let (tw, tq) = (pick(true, |x| Some(x.throughput)), pick(false, |x| Some(x.throughput)));
    let (cw, cq) = (pick(true, |x| x.capacity), pick(false, |x| x.capacity));
    let paired: Vec<f64> = samples
        .chunks(2)
        .filter(|c| c.len() == 2 && c[0].updates && !c[1].updates)
        .map(|c| c[0].throughput / c[1].throughput)
        .collect();
    s += &format!(
        "\n| | with updates (median) | without (median) | with / without |\n|---|---|---|---|\n\
         | answers/s | {tw:.0} | {tq:.0} | {:.3} |\n| capacity (answers/s per B core) | {cw:.0} | {cq:.0} | {:.3} |\n\
         | answers/s, median of per-round ratios | | | {:.3} |\n",
        tw / tq,
        cw / cq,
        median(paired)
    );
    // B's extra CPU with updates, per round (each round's two runs side by side).
    let extra: Vec<(f64, f64)> = samples
        .chunks(2)
        .filter(|c| c.len() == 2 && c[0].updates && !c[1].updates)
        .filter_map(|c| Some((c[0].b_cpu? - c[1].b_cpu?, c[0].b_updates_per_s)))
        .collect();
    if !extra.is_empty() {
        let cores = median(extra.iter().map(|e| e.0).collect());
        let per_update = median(extra.iter().filter(|e| e.1 > 0.0).map(|e| e.0 * 1e6 / e.1).collect());
        let rounds: Vec<String> = extra.iter().map(|e| format!("{:.3}", e.0)).collect();
        s += &format!(
            "\nB's CPU with updates minus without, same round: {cores:.3} cores (rounds: {}), {per_update:.2} us \
             per update received.\n",
            rounds.join(", ")
        );
        if args.resolve_rate.is_some() {
            s += &format!(
                "At a fixed offered rate both runs ask B for the same answers, so this is the share of B's \
                 core the updates take while it serves: a B saturated by resolutions would lose about \
                 {:.1} % of its answers to them.\n",
                cores * 100.0
            );
        }
    }
    s
}

/// One window of an alternating run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Window {
    /// Answers per second in the window.
    pub answers_per_s: f64,
    /// B's CPU over the window, cores.
    pub b_cpu: f64,
    /// Handle Updates B received per second in the window.
    pub b_updates_per_s: f64,
}

/// Two neighbouring windows of one client run, the feed on in one and off in the other.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WindowPair {
    /// Round (client run) number.
    pub round: usize,
    /// Whether the window with updates came first.
    pub on_first: bool,
    /// The window with updates.
    pub on: Window,
    /// The window without.
    pub off: Window,
}

impl WindowPair {
    /// Answers/s with updates over answers/s without.
    pub fn ratio(&self) -> f64 {
        self.on.answers_per_s / self.off.answers_per_s
    }
}

/// The JSON document of an alternating run.
#[derive(Serialize)]
struct AltDoc<'a> {
    machine: &'a Machine,
    args: String,
    server_command: &'a str,
    updates_alone: &'a UpdatesAlone,
    pairs: &'a [WindowPair],
}

/// What the watcher reads at a window's edge.
struct Mark {
    answers: u64,
    b_ticks: Option<u64>,
    updates: u64,
    at: Instant,
}

impl Mark {
    fn take(live: &crate::client::Live, b: &propagation::Spawned) -> io::Result<Self> {
        let updates = status(b.addr)?.updates_received;
        Ok(Self {
            answers: live.answers.load(Ordering::Relaxed),
            b_ticks: run::cpu_ticks(Some(b.pid())),
            updates,
            at: Instant::now(),
        })
    }

    fn window_to(&self, later: &Self) -> Window {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        Window {
            answers_per_s: later.answers.saturating_sub(self.answers) as f64 / secs,
            b_cpu: run::cores_used(self.b_ticks, later.b_ticks, secs).unwrap_or(0.0),
            b_updates_per_s: later.updates.saturating_sub(self.updates) as f64 / secs,
        }
    }
}

/// `--alternate-ms`: per round one client run against B with the feed switched on and off
/// window by window (on-off, then off-on, so that a drift within the run weighs on both
/// sides alike). Each window is measured after a settling fifth of it, so that updates
/// written just before the switch do not count against the window without.
fn alternate(
    args: &PeerLoadArgs,
    source: &Source,
    b: &propagation::Spawned,
    cfg: &RunConfig,
    plan: &Arc<Plan>,
    window: Duration,
    sig: &Arc<AtomicBool>,
) -> io::Result<Vec<WindowPair>> {
    let settle = window / 5;
    let mut pairs = Vec::new();
    for round in 1..=args.rounds {
        if sig.load(Ordering::Relaxed) {
            break;
        }
        let (feed_stop, active) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let feed = source.start(args.feed_core.unwrap_or(args.client_core), &feed_stop, Some(&active));
        let client_stop = Arc::new(AtomicBool::new(false));
        // Longer than the windows need: the run is stopped when they are done.
        let run_cfg = RunConfig { duration_s: 3600.0, ..cfg.clone() };
        let live = Arc::new(crate::client::Live::default());
        let client = {
            let (plan, stop, live) = (Arc::clone(plan), Arc::clone(&client_stop), Arc::clone(&live));
            std::thread::spawn(move || run::run_watched(&run_cfg, &plan, &stop, &[live]))
        };
        std::thread::sleep(Duration::from_secs_f64(args.warmup) + Duration::from_millis(200));
        let mut measured = || -> io::Result<()> {
            for i in 0..args.pairs {
                if sig.load(Ordering::Relaxed) || client.is_finished() {
                    break;
                }
                let on_first = i % 2 == 0;
                let mut got = [Window::default(); 2];
                for (k, on) in [on_first, !on_first].into_iter().enumerate() {
                    active.store(on, Ordering::Relaxed);
                    std::thread::sleep(settle);
                    let from = Mark::take(&live, b)?;
                    std::thread::sleep(window - settle);
                    got[k] = from.window_to(&Mark::take(&live, b)?);
                }
                let (on, off) = if on_first { (got[0], got[1]) } else { (got[1], got[0]) };
                let p = WindowPair { round, on_first, on, off };
                eprintln!(
                    "round {round} pair {}: with {:.0} / without {:.0} answers/s = {:.3} (B cpu {:.2} / {:.2}, B received {:.0} / {:.0} updates/s)",
                    i + 1,
                    on.answers_per_s,
                    off.answers_per_s,
                    p.ratio(),
                    on.b_cpu,
                    off.b_cpu,
                    on.b_updates_per_s,
                    off.b_updates_per_s
                );
                pairs.push(p);
            }
            Ok(())
        };
        let outcome = measured();
        client_stop.store(true, Ordering::Relaxed);
        feed_stop.store(true, Ordering::Relaxed);
        let r = client.join().map_err(|_| io::Error::other("client thread panicked"))?;
        feed.join()?;
        outcome?;
        let r = r?;
        if r.error_total() > 0 {
            return Err(io::Error::other(format!("round {round}: {} resolution errors", r.error_total())));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(pairs)
}

/// The report of an alternating run: the ratios per pair, then their medians.
pub fn alternating_markdown(
    machine: &Machine,
    args: &PeerLoadArgs,
    alone: &UpdatesAlone,
    pairs: &[WindowPair],
) -> String {
    let ms = args.alternate_ms.unwrap_or(0);
    let mut s = format!(
        "# Resolution throughput at B, updates switched on and off within each client run\n\n\
         {}. B on core {}, the stand-in peer (`--feed`, one write per {} us) on core {}, the client on \
         core {}; {}, {:.0} updates/s while on. {} round(s), each one client run of {} pairs of {ms} ms windows (on-off, then off-on), \
         each window measured after its first fifth.\n\n\
         {}\n\n\
         | round | with updates: answers/s | without | with / without | B CPU with / without | updates B received/s with / without |\n\
         |---|---|---|---|---|---|\n",
        machine_line(machine),
        args.b_core,
        args.feed_window_us,
        args.feed_core.unwrap_or(args.client_core),
        args.client_core,
        workload_line(args),
        args.rate,
        args.rounds,
        args.pairs,
        alone.describe()
    );
    for p in pairs {
        s += &format!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} | {:.0} / {:.0} |\n",
            p.round,
            p.on.answers_per_s,
            p.off.answers_per_s,
            p.ratio(),
            p.on.b_cpu,
            p.off.b_cpu,
            p.on.b_updates_per_s,
            p.off.b_updates_per_s
        );
    }
    let ratios: Vec<f64> = pairs.iter().map(WindowPair::ratio).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let sum = |f: fn(&WindowPair) -> f64| pairs.iter().map(f).sum::<f64>();
    // Answers per core of B's CPU, per pair: the figure to read in open loop, where both
    // windows are asked for the same answers and B's CPU is what differs.
    let capacity = median(
        pairs
            .iter()
            .filter(|p| p.on.b_cpu > 0.0 && p.off.b_cpu > 0.0)
            .map(|p| (p.on.answers_per_s / p.on.b_cpu) / (p.off.answers_per_s / p.off.b_cpu))
            .collect(),
    );
    s += &format!(
        "\n| pairs | median of ratios | mean of ratios | all windows with / all without | B CPU with - without (median) | capacity (answers per B core) with / without, median of ratios |\n\
         |---|---|---|---|---|---|\n| {} | {:.3} | {:.3} | {:.3} | {:.3} cores | {capacity:.3} |\n",
        pairs.len(),
        median(ratios.clone()),
        mean,
        sum(|p| p.on.answers_per_s) / sum(|p| p.off.answers_per_s),
        median(pairs.iter().map(|p| p.on.b_cpu - p.off.b_cpu).collect()),
    );
    for round in 1..=args.rounds {
        let r: Vec<f64> = pairs.iter().filter(|p| p.round == round).map(WindowPair::ratio).collect();
        if !r.is_empty() {
            let off: Vec<f64> = pairs.iter().filter(|p| p.round == round).map(|p| p.off.answers_per_s).collect();
            s += &format!(
                "\nRound {round}: median ratio {:.3} over {} pairs; answers/s without updates, median {:.0}.",
                median(r.clone()),
                r.len(),
                median(off)
            );
        }
    }
    s.push('\n');
    s
}
