//! `loadgen sweep`: the maximum throughput (closed loop), then open-loop runs at fractions of
//! it: achieved throughput and latency (from the intended send time) against offered load, to
//! CSV, JSON and an SVG plot. The first point, at a low fixed rate, is the unloaded latency.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::{self, LoadArgs, ServerArgs, WorkloadArgs};
use crate::plot::{self, SweepPoint};
use crate::report::{self, Machine};
use crate::run::{self, RunResult};
use crate::setup;
use crate::workload::{Plan, Target};

/// Arguments of `loadgen sweep`.
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value_t = Target::Registrar)]
    pub target: Target,
    /// Server address (ignored with --spawn).
    #[arg(long, default_value = "127.0.0.1:3863")]
    pub addr: SocketAddr,
    /// Start the server here, pinned to --server-core.
    #[arg(long)]
    pub spawn: bool,
    /// Depth of the closed-loop run that finds the maximum, and the most requests in flight
    /// per connection in the open-loop runs.
    #[arg(long, default_value_t = 16)]
    pub max_depth: usize,
    /// Offered loads as fractions of the maximum.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5,0.6,0.7,0.8,0.9,1.0")]
    pub fractions: Vec<f64>,
    /// The rate of the unloaded point, requests per second in all.
    #[arg(long, default_value_t = 1000.0)]
    pub unloaded_rate: f64,
    /// Load options (--depth is ignored: see --max-depth).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload options.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// One row of the CSV.
fn csv_row(label: &str, r: &RunResult) -> String {
    let l = &r.latency;
    let s = r.service_latency.clone().unwrap_or_default();
    format!(
        "{label},{:.0},{:.0},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{},{}\n",
        r.offered.unwrap_or(0.0),
        r.throughput,
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p999_us,
        l.max_us,
        s.p50_us,
        s.p99_us,
        r.error_total(),
        r.not_sent,
        r.server_cpu.map_or(String::new(), |c| format!("{c:.3}")),
        r.client_cpu.map_or(String::new(), |c| format!("{c:.3}")),
    )
}

/// `loadgen sweep`.
pub fn cmd_sweep(args: &SweepArgs) -> io::Result<i32> {
    let cores = cli::cores(&args.load, args.server.server_core)?;
    if let Some(id) = cores.client.first() {
        core_affinity::set_for_current(core_affinity::CoreId { id: *id });
    }
    let spec = args.workload.spec(args.max_depth);
    let conns = args.load.connections.max(1);
    let mut plan = Plan::new(spec.clone(), conns, None);
    let prepared = cli::prepare(args.target, args.spawn, args.addr, &plan, &args.server, &cores, true)?;
    // The registrar's real sizes are probed; the references keep our encoder's estimate of them.
    if args.target == Target::Registrar {
        let sizes = setup::probe_sizes(prepared.addr, &plan)?;
        plan = Plan::new(spec, conns, Some(sizes));
    }
    let stop = cli::stop_flag();
    let mut load: LoadArgs = args.load.clone();
    load.depth = args.max_depth.max(1);
    let pid = prepared.server.as_ref().map(crate::servers::Server::pid);
    let mut cfg = cli::run_config(&load, &cores, args.target, prepared.addr, None);
    cfg.server_pid = pid;
    let max = run::run(&cfg, &plan, &stop)?;
    eprintln!("maximum (closed loop, depth {}): {:.0} answers/s", load.depth, max.throughput);
    let mut csv = String::from(
        "point,offered_per_s,achieved_per_s,p50_us,p90_us,p99_us,p999_us,max_us,service_p50_us,service_p99_us,errors,not_sent,server_cpu,client_cpu\n",
    );
    csv += &csv_row("max_closed_loop", &max);
    let mut runs = vec![("max_closed_loop".to_string(), max.clone())];
    let mut points = Vec::new();
    let mut rates = vec![("unloaded".to_string(), args.unloaded_rate)];
    rates.extend(args.fractions.iter().map(|f| (format!("{:.0}%", f * 100.0), f * max.throughput)));
    for (label, rate) in rates {
        let mut cfg = cli::run_config(&load, &cores, args.target, prepared.addr, Some(rate.max(1.0)));
        cfg.server_pid = pid;
        let r = run::run(&cfg, &plan, &stop)?;
        eprintln!(
            "{label:>9}: offered {:>9.0}/s achieved {:>9.0}/s  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  errors {}",
            rate,
            r.throughput,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.error_total()
        );
        csv += &csv_row(&label, &r);
        points.push(SweepPoint {
            throughput: r.throughput,
            p50: r.latency.p50_us,
            p99: r.latency.p99_us,
            p999: r.latency.p999_us,
        });
        runs.push((label, r));
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    drop(prepared);
    let machine = Machine::now();
    let unloaded_p50 = runs.iter().find(|(l, _)| l == "unloaded").map(|(_, r)| r.latency.p50_us);
    let half = runs.iter().find(|(l, _)| l == "50%").map(|(_, r)| r.latency.p99_us);
    let ratio = match (unloaded_p50, half) {
        (Some(u), Some(h)) if u > 0.0 => Some(h / u),
        _ => None,
    };
    let base = format!("sweep-{}-{}", args.target.name(), machine.stamp());
    let dir: PathBuf = args.server.out.clone();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{base}.csv")), &csv)?;
    let doc = serde_json::json!({
        "machine": machine,
        "workload": plan.spec,
        "connections": conns,
        "max_depth": args.max_depth,
        "client_cores": cores.client,
        "server_core": cores.server,
        "max_throughput": max.throughput,
        "unloaded_rate": args.unloaded_rate,
        "unloaded_p50_us": unloaded_p50,
        "p99_at_half_max_us": half,
        "p99_at_half_over_unloaded_p50": ratio,
        "runs": runs.iter().map(|(l, r)| serde_json::json!({"point": l, "result": r})).collect::<Vec<_>>(),
    });
    report::write_json(&dir.join(format!("{base}.json")), &doc)?;
    let title = format!("{}: latency vs throughput ({} connections, open loop)", args.target.name(), conns);
    plot::latency_vs_throughput_svg(&dir.join(format!("{base}-latency-vs-throughput.svg")), &title, &points)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let spectra: Vec<plot::Spectrum> = runs
        .iter()
        .filter(|(l, _)| l != "max_closed_loop")
        .map(|(l, r)| (format!("{l} ({:.0}/s)", r.throughput), r.spectrum.clone()))
        .collect();
    let title = format!("{}: latency spectrum at each offered load", args.target.name());
    plot::spectrum_svg(&dir.join(format!("{base}-spectrum.svg")), &title, &spectra)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut summary = String::new();
    let _ = writeln!(summary, "max throughput {:.0}/s", max.throughput);
    if let Some(u) = unloaded_p50 {
        let _ = writeln!(summary, "unloaded p50 {u:.1} us (open loop at {:.0}/s)", args.unloaded_rate);
    }
    if let (Some(h), Some(r)) = (half, ratio) {
        let _ = writeln!(summary, "p99 at 50% of max {h:.1} us = {r:.2} x unloaded p50 (target <= 3)");
    }
    print!("{csv}\n{summary}");
    eprintln!("wrote {}/{base}.{{csv,json}} and plots", dir.display());
    Ok(0)
}
