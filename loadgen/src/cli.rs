//! Command-line options shared by the commands, and the `run` and `echo-server` commands.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::report::{self, Machine};
use crate::run::{self, IoKind, RunConfig, RunResult};
use crate::servers::{self, Server};
use crate::setup::{self, Holder};
use crate::workload::{Plan, Target, WorkloadKind, WorkloadSpec};

/// Options of the load shape and of the client, common to `run`, `sweep` and `compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Client connections in all.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Requests in flight per connection (closed loop); the most in flight per connection in
    /// open loop.
    #[arg(short = 'd', long, default_value_t = 1)]
    pub depth: usize,
    /// Client threads (each drives its share of the connections with one ring).
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Cores to pin client threads to, e.g. `0` or `0,2` (default: the profile's
    /// `loadgen_cores`, else core 0). `none` leaves them unpinned.
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Tuning profile (`tuning/*.toml`): its `loadgen_cores` pin the client threads and its
    /// `shard_cores[0]` is where spawned servers run.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Warm-up seconds, not recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Stop after this many measured requests instead (bounded by --duration all the same).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Client transport.
    #[arg(long, value_enum, default_value_t = IoKind::Uring)]
    pub io: IoKind,
    /// Receive buffer per connection, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub recv_buffer: usize,
    /// No progress display.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Options of the workload.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Requests to the registrar: resolutions, registration churn, or a mix.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Resolve)]
    pub workload: WorkloadKind,
    /// Number of pools (pool handles `pool-00000` ...; Redis keys of the same names).
    #[arg(long, default_value_t = 1000)]
    pub pools: usize,
    /// PEs registered in each pool before the run.
    #[arg(long, default_value_t = 10)]
    pub pool_size: usize,
    /// PEs asked for per resolution (Handle Resolution Option); default: none sent, the
    /// registrar answers with its default (3).
    #[arg(long)]
    pub items: Option<u32>,
    /// Choose pools by a Zipf law with this exponent (default: uniformly).
    #[arg(long, value_name = "S")]
    pub zipf: Option<f64>,
    /// Mix: share of resolutions (the rest is churn).
    #[arg(long, default_value_t = 0.9)]
    pub resolve_share: f64,
    /// Churn: PE slots per connection (at least depth + 1).
    #[arg(long, default_value_t = 64)]
    pub churn_slots: usize,
    /// Churn: re-registrations of a PE between its registration and its deregistration.
    #[arg(long, default_value_t = 1)]
    pub reregistrations: u32,
    /// Registration life of every PE, ms.
    #[arg(long, default_value_t = 600_000)]
    pub lifetime: i32,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl WorkloadArgs {
    /// The workload specification, with room for `depth` requests in flight per connection.
    pub fn spec(&self, depth: usize) -> WorkloadSpec {
        WorkloadSpec {
            workload: self.workload,
            pools: self.pools,
            pool_size: self.pool_size,
            items: self.items,
            default_items: 3,
            zipf: self.zipf,
            resolve_share: self.resolve_share.clamp(0.0, 1.0),
            churn_slots: self.churn_slots.max(depth + 1),
            reregistrations: self.reregistrations,
            lifetime_ms: self.lifetime,
            seed: self.seed,
        }
    }
}

/// Where spawned servers run and results go.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Core for spawned servers (default: the profile's first shard core, else 1).
    #[arg(long)]
    pub server_core: Option<usize>,
    /// The registrar binary (default: `rserpool` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub registrar_bin: Option<PathBuf>,
    /// Extra registrar configuration file (`rserpool registrar --config`).
    #[arg(long, value_name = "FILE")]
    pub registrar_config: Option<PathBuf>,
    /// Folder for results (JSON, CSV, SVG).
    #[arg(long, default_value = "results/loadgen")]
    pub out: PathBuf,
}

/// Resolved core assignment.
#[derive(Clone, Debug)]
pub struct Cores {
    /// Client threads.
    pub client: Vec<usize>,
    /// Spawned servers.
    pub server: usize,
    /// Which profile decided, for the record.
    pub profile: Option<String>,
}

/// Works out the cores from `--cores`, `--server-core` and `--profile`.
pub fn cores(load: &LoadArgs, server_core: Option<usize>) -> io::Result<Cores> {
    let profile = match &load.profile {
        Some(p) => Some(rserpool::config::Profile::load(p).map_err(io::Error::other)?),
        None => None,
    };
    let client = match load.cores.as_deref() {
        Some("none") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse::<usize>().map_err(|_| io::Error::other(format!("bad core list {list:?}"))))
            .collect::<io::Result<_>>()?,
        None => match &profile {
            Some(p) if !p.loadgen_cores.is_empty() => p.loadgen_cores.clone(),
            _ => vec![0],
        },
    };
    let server = server_core.or_else(|| profile.as_ref().and_then(|p| p.shard_cores.first().copied())).unwrap_or(1);
    Ok(Cores { client, server, profile: load.profile.as_ref().map(|p| p.display().to_string()) })
}

/// The run configuration for `target` at `addr`.
pub fn run_config(load: &LoadArgs, cores: &Cores, target: Target, addr: SocketAddr, rate: Option<f64>) -> RunConfig {
    RunConfig {
        target,
        addr,
        connections: load.connections.max(1),
        depth: load.depth.max(1),
        rate,
        threads: load.threads.max(1),
        cores: cores.client.clone(),
        warmup_s: load.warmup.max(0.0),
        duration_s: load.duration.max(0.01),
        requests: load.requests,
        io: load.io,
        recv_buffer: load.recv_buffer,
        progress: !load.quiet,
        server_pid: None,
    }
}

/// A stop flag raised by SIGINT / SIGTERM.
pub fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    stop
}

/// Arguments of `loadgen run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value_t = Target::Registrar)]
    pub target: Target,
    /// Server address (ignored with --spawn).
    #[arg(long, default_value = "127.0.0.1:3863")]
    pub addr: SocketAddr,
    /// Start the server here, pinned to --server-core, and stop it afterwards.
    #[arg(long)]
    pub spawn: bool,
    /// Open loop at this many requests per second in all (default: closed loop).
    #[arg(long, value_name = "PER_S")]
    pub rate: Option<f64>,
    /// Echo / Redis request and reply sizes, bytes (default: the registrar's Handle Resolution
    /// and Response of the workload).
    #[arg(long, num_args = 2, value_names = ["REQUEST", "REPLY"])]
    pub sizes: Option<Vec<usize>>,
    /// Do not register pools / set keys first (they are already there).
    #[arg(long)]
    pub no_setup: bool,
    /// Write the JSON result here (default: `<out>/run-<target>-<date>.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the percentile spectrum as SVG next to the JSON.
    #[arg(long)]
    pub plot: bool,
    /// Load options.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload options.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A server ready for a run: its address, the process (if spawned) and the PE holder.
pub struct Prepared {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process, if we started it.
    pub server: Option<Server>,
    /// Connections holding the static PEs (registrar).
    pub holder: Option<Holder>,
}

/// Starts (if asked) and prepares a server: registers pools and PEs, or sets keys.
pub fn prepare(
    target: Target,
    spawn: bool,
    addr: SocketAddr,
    plan: &Plan,
    server: &ServerArgs,
    cores: &Cores,
    setup_data: bool,
) -> io::Result<Prepared> {
    let (addr, process) = if spawn {
        let port = servers::free_port()?;
        let s = match target {
            Target::Registrar => {
                let bin = server.registrar_bin.clone().unwrap_or_else(servers::default_registrar_bin);
                let work = std::env::temp_dir().join(format!("loadgen-{}", std::process::id()));
                let loadgen_core = cores.client.first().copied().unwrap_or(0);
                servers::start_registrar(
                    &bin,
                    cores.server,
                    loadgen_core,
                    port,
                    &work,
                    server.registrar_config.as_deref(),
                )?
            }
            Target::Redis => servers::start_redis(cores.server, port)?,
            Target::Echo => servers::start_echo(cores.server, port, plan.echo_request.len(), plan.echo_reply_size)?,
        };
        eprintln!("started {}: {}", s.name, s.command);
        (s.addr, Some(s))
    } else {
        (addr, None)
    };
    let mut holder = None;
    if setup_data {
        match target {
            Target::Registrar if plan.spec.workload != WorkloadKind::Churn => {
                let h = setup::register_static(addr, plan)?;
                eprintln!("registered {} PEs in {} pools", h.pes, plan.pools());
                holder = Some(h);
            }
            Target::Redis => {
                setup::redis_fill(addr, plan)?;
                eprintln!("set {} keys of {} bytes", plan.pools(), plan.redis_value_size);
            }
            _ => {}
        }
    }
    Ok(Prepared { addr, server: process, holder })
}

/// The JSON document of one run.
#[derive(serde::Serialize)]
struct RunDoc<'a> {
    machine: &'a Machine,
    workload: &'a WorkloadSpec,
    sizes: serde_json::Value,
    client_cores: &'a [usize],
    server_core: Option<usize>,
    profile: &'a Option<String>,
    server_command: Option<&'a str>,
    result: &'a RunResult,
}

/// `loadgen run`.
pub fn cmd_run(args: &RunArgs) -> io::Result<i32> {
    let cores = cores(&args.load, args.server.server_core)?;
    let spec = args.workload.spec(args.load.depth);
    let sizes = args.sizes.as_ref().map(|v| (v[0], v[1]));
    let plan = Plan::new(spec, args.load.connections.max(1), sizes);
    let prepared = prepare(args.target, args.spawn, args.addr, &plan, &args.server, &cores, !args.no_setup)?;
    let mut cfg = run_config(&args.load, &cores, args.target, prepared.addr, args.rate);
    cfg.server_pid = prepared.server.as_ref().map(Server::pid);
    let stop = stop_flag();
    if let Some(id) = cores.client.first() {
        // Setup threads and the progress display stay off the server's core too.
        core_affinity::set_for_current(core_affinity::CoreId { id: *id });
    }
    let result = run::run(&cfg, &plan, &stop)?;
    let machine = Machine::now();
    print!("{}", report::summary_table(&result));
    let path = args.json.clone().unwrap_or_else(|| {
        report::out_path(&args.server.out, &format!("run-{}-{{date}}.json", args.target.name()), &machine)
    });
    let doc = RunDoc {
        machine: &machine,
        workload: &plan.spec,
        sizes: serde_json::json!({
            "request": if args.target == Target::Echo { plan.echo_request.len() } else { 0 },
            "reply": plan.echo_reply_size,
            "redis_value": plan.redis_value_size,
        }),
        client_cores: &cores.client,
        server_core: args.spawn.then_some(cores.server),
        profile: &cores.profile,
        server_command: prepared.server.as_ref().map(|s| s.command.as_str()),
        result: &result,
    };
    report::write_json(&path, &doc)?;
    eprintln!("wrote {}", path.display());
    if args.plot {
        let svg = path.with_extension("svg");
        let title = format!("{} latency spectrum", args.target.name());
        crate::plot::spectrum_svg(&svg, &title, &[(args.target.name().to_string(), result.spectrum.clone())])
            .map_err(|e| io::Error::other(e.to_string()))?;
        eprintln!("wrote {}", svg.display());
    }
    drop(prepared);
    Ok(if result.error_total() > 0 { 1 } else { 0 })
}

/// Arguments of `loadgen echo-server`.
#[derive(clap::Args, Clone, Debug)]
pub struct EchoArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,
    /// Core to pin the server thread to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Bytes per request.
    #[arg(long, default_value_t = 20)]
    pub request_size: usize,
    /// Bytes per reply.
    #[arg(long, default_value_t = 150)]
    pub reply_size: usize,
    /// Stop after this many seconds (default: at SIGINT / SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// `loadgen echo-server`: the bare io_uring server of [`crate::bare_echo`].
pub fn cmd_echo(args: &EchoArgs) -> io::Result<i32> {
    use crate::bare_echo::{spawn, BareEchoConfig};
    let config = BareEchoConfig {
        addr: args.addr,
        core: args.core,
        request_size: args.request_size,
        reply_size: args.reply_size,
        ..BareEchoConfig::default()
    };
    let server = spawn(config)?;
    eprintln!(
        "bare io_uring echo on {} ({} -> {} bytes), core {:?}",
        server.local_addr(),
        args.request_size,
        args.reply_size,
        args.core
    );
    let stop = stop_flag();
    let deadline = args.seconds.map(|s| std::time::Instant::now() + Duration::from_secs_f64(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| std::time::Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop_handle().stop();
    server.join()?;
    Ok(0)
}
