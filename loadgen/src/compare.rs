//! `loadgen compare`: the registrar, Redis GET and the bare echo server side by side, same
//! client, same connections, depths and message sizes, alternating (A B C A B C ...) for several
//! rounds so machine noise hits all alike; medians and ratios to a JSON file and a markdown table.
//!
//! With `--workload churn --targets registrar,echo` the same alternation measures registration
//! churn against an echo of the Registration's and its Response's sizes.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use serde::Serialize;

use crate::cli::{self, LoadArgs, ServerArgs, WorkloadArgs};
use crate::report::{self, Machine};
use crate::run::{self, RunResult};
use crate::setup;
use crate::workload::{Plan, Target, WorkloadKind};

/// Arguments of `loadgen compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct CompareArgs {
    /// Rounds (each runs every target at every depth once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Depths (requests in flight per connection) to compare at.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub depths: Vec<usize>,
    /// Targets, in the order they alternate.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "registrar,redis,echo")]
    pub targets: Vec<Target>,
    /// Load options (--depth is ignored: see --depths).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Workload options.
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// One run of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Round (0-based).
    pub round: usize,
    /// Depth.
    pub depth: usize,
    /// Target.
    pub target: Target,
    /// Answers per second.
    pub throughput: f64,
    /// Median latency, us.
    pub p50_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// Errors in the measurement.
    pub errors: u64,
    /// Client system calls per answer.
    pub client_syscalls_per_answer: f64,
    /// Cores the server used during the measurement.
    pub server_cpu: Option<f64>,
    /// Cores the client used during the measurement.
    pub client_cpu: Option<f64>,
}

impl Sample {
    /// Throughput per core of server CPU: what the server would do with its core to itself,
    /// when the client (or noise) kept it from being saturated.
    pub fn capacity(&self) -> Option<f64> {
        self.server_cpu.filter(|&c| c > 0.05).map(|c| self.throughput / c)
    }
}

/// `(target, server CPU, client CPU, capacity)` medians at one depth.
pub type CpuRow = (Target, Option<f64>, Option<f64>, Option<f64>);

/// Medians at one depth and their ratios.
#[derive(Clone, Debug, Serialize)]
pub struct DepthSummary {
    /// Depth.
    pub depth: usize,
    /// `(target, median throughput, median p50 us, median p99 us)`.
    pub medians: Vec<(Target, f64, f64, f64)>,
    /// Registrar / Redis median throughput.
    pub registrar_over_redis: Option<f64>,
    /// Registrar / echo median throughput.
    pub registrar_over_echo: Option<f64>,
    /// Redis / echo median throughput.
    pub redis_over_echo: Option<f64>,
    /// Median over rounds of the registrar / Redis ratio within each round (paired: robust to
    /// noise that drifts between rounds).
    pub paired_registrar_over_redis: Option<f64>,
    /// Median over rounds of the registrar / echo ratio within each round.
    pub paired_registrar_over_echo: Option<f64>,
    /// `(target, median server CPU in cores, median client CPU, median capacity = answers/s
    /// per core of server CPU)`.
    pub cpu: Vec<CpuRow>,
    /// Registrar / Redis capacity (answers per second per server core).
    pub capacity_registrar_over_redis: Option<f64>,
    /// Registrar / echo capacity.
    pub capacity_registrar_over_echo: Option<f64>,
}

/// Median over rounds of `a / b` measured in the same round at `depth`.
pub fn paired_ratio(samples: &[Sample], depth: usize, a: Target, b: Target) -> Option<f64> {
    let rounds: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.round).collect();
    let thr = |r: usize, t: Target| {
        samples.iter().find(|s| s.round == r && s.depth == depth && s.target == t).map(|s| s.throughput)
    };
    let v: Vec<f64> = rounds.into_iter().filter_map(|r| Some(thr(r, a)? / thr(r, b)?.max(1e-9))).collect();
    (!v.is_empty()).then(|| median(&v))
}

/// Median of some values (the middle one, or the mean of the two middle ones).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Medians and ratios per depth.
pub fn summarize(samples: &[Sample], depths: &[usize], targets: &[Target]) -> Vec<DepthSummary> {
    depths
        .iter()
        .map(|&depth| {
            let med = |t: Target, f: fn(&Sample) -> f64| {
                let v: Vec<f64> = samples.iter().filter(|s| s.depth == depth && s.target == t).map(f).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            let medians: Vec<(Target, f64, f64, f64)> = targets
                .iter()
                .filter_map(|&t| Some((t, med(t, |s| s.throughput)?, med(t, |s| s.p50_us)?, med(t, |s| s.p99_us)?)))
                .collect();
            let thr = |t: Target| medians.iter().find(|m| m.0 == t).map(|m| m.1);
            let ratio = |a: Target, b: Target| Some(thr(a)? / thr(b)?.max(1e-9));
            let med_opt = |t: Target, f: &dyn Fn(&Sample) -> Option<f64>| {
                let v: Vec<f64> = samples.iter().filter(|s| s.depth == depth && s.target == t).filter_map(f).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            let cpu: Vec<CpuRow> = targets
                .iter()
                .map(|&t| {
                    (t, med_opt(t, &|s| s.server_cpu), med_opt(t, &|s| s.client_cpu), med_opt(t, &|s| s.capacity()))
                })
                .collect();
            let cap = |t: Target| cpu.iter().find(|c| c.0 == t).and_then(|c| c.3);
            let cap_ratio = |a: Target, b: Target| Some(cap(a)? / cap(b)?);
            DepthSummary {
                depth,
                capacity_registrar_over_redis: cap_ratio(Target::Registrar, Target::Redis),
                capacity_registrar_over_echo: cap_ratio(Target::Registrar, Target::Echo),
                cpu,
                registrar_over_redis: ratio(Target::Registrar, Target::Redis),
                registrar_over_echo: ratio(Target::Registrar, Target::Echo),
                redis_over_echo: ratio(Target::Redis, Target::Echo),
                paired_registrar_over_redis: paired_ratio(samples, depth, Target::Registrar, Target::Redis),
                paired_registrar_over_echo: paired_ratio(samples, depth, Target::Registrar, Target::Echo),
                medians,
            }
        })
        .collect()
}

/// The markdown table of a comparison.
pub fn markdown(summaries: &[DepthSummary], samples: &[Sample], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "Medians of the runs of each target; ratios of those medians, and the median of the ratios \
         measured within each round.\n"
    );
    let _ = writeln!(
        s,
        "| depth | registrar req/s | redis req/s | echo req/s | registrar/redis | registrar/echo | redis/echo | registrar/redis, registrar/echo (median of per-round ratios) | p50 / p99 us (registrar, redis, echo) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for d in summaries {
        let get = |t: Target| d.medians.iter().find(|m| m.0 == t);
        let thr = |t: Target| get(t).map_or("-".to_string(), |m| format!("{:.0}", m.1));
        let lat = |t: Target| get(t).map_or("-".to_string(), |m| format!("{:.0}/{:.0}", m.2, m.3));
        let r = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {}, {} | {}, {}, {} |",
            d.depth,
            thr(Target::Registrar),
            thr(Target::Redis),
            thr(Target::Echo),
            r(d.registrar_over_redis),
            r(d.registrar_over_echo),
            r(d.redis_over_echo),
            r(d.paired_registrar_over_redis),
            r(d.paired_registrar_over_echo),
            lat(Target::Registrar),
            lat(Target::Redis),
            lat(Target::Echo),
        );
    }
    let _ = writeln!(s, "\nTargets (issue: >= 1.2x Redis at depth 1, >= 1.5x at depth 16, >= 0.85x echo at both):\n");
    for d in summaries {
        let want = if d.depth <= 1 { 1.2 } else { 1.5 };
        let verdict = |v: Option<f64>, min: f64| match v {
            Some(v) if v >= min => format!("{v:.2} (met, >= {min})"),
            Some(v) => format!("{v:.2} (NOT met, >= {min})"),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "- depth {}: registrar/redis {} by medians, {} paired; registrar/echo {} by medians, {} paired",
            d.depth,
            verdict(d.registrar_over_redis, want),
            verdict(d.paired_registrar_over_redis, want),
            verdict(d.registrar_over_echo, 0.85),
            verdict(d.paired_registrar_over_echo, 0.85),
        );
    }
    let _ = writeln!(
        s,
        "\nCPU during the measurement (cores, median; 1.00 = one core busy) and capacity = answers/s per \
         core of server CPU, which corrects for runs where the client, not the server, was the limit:\n"
    );
    let _ = writeln!(s, "| depth | target | server CPU | client CPU | capacity (answers/s per server core) |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for d in summaries {
        for c in &d.cpu {
            let _ = writeln!(s, "| {} | {} | {} | {} | {} |", d.depth, c.0.name(), f(c.1, 2), f(c.2, 2), f(c.3, 0));
        }
        let _ = writeln!(
            s,
            "| {} | capacity ratios | registrar/redis {} | registrar/echo {} | |",
            d.depth,
            f(d.capacity_registrar_over_redis, 2),
            f(d.capacity_registrar_over_echo, 2)
        );
    }
    let _ = writeln!(s, "\nEvery run (in the order they ran):\n");
    let _ = writeln!(
        s,
        "| round | depth | target | req/s | p50 us | p99 us | errors | client syscalls/answer | server CPU | client CPU |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for x in samples {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.3} | {} | {} |",
            x.round,
            x.depth,
            x.target.name(),
            x.throughput,
            x.p50_us,
            x.p99_us,
            x.errors,
            x.client_syscalls_per_answer,
            f(x.server_cpu, 2),
            f(x.client_cpu, 2)
        );
    }
    s
}

/// `loadgen compare`.
pub fn cmd_compare(args: &CompareArgs) -> io::Result<i32> {
    let cores = cli::cores(&args.load, args.server.server_core)?;
    if let Some(id) = cores.client.first() {
        core_affinity::set_for_current(core_affinity::CoreId { id: *id });
    }
    let max_depth = args.depths.iter().copied().max().unwrap_or(1);
    let spec = args.workload.spec(max_depth);
    let conns = args.load.connections.max(1);
    let any = "127.0.0.1:1".parse().map_err(io::Error::other)?;
    // The registrar first: its real answer size sets the sizes of the references.
    let first = Plan::new(spec.clone(), conns, None);
    let reg = cli::prepare(Target::Registrar, true, any, &first, &args.server, &cores, true)?;
    let sizes = if first.spec.workload == WorkloadKind::Churn {
        let sizes = setup::probe_churn_sizes(reg.addr, &first)?;
        eprintln!("registrar: Registration {} bytes, Registration Response {} bytes", sizes.0, sizes.1);
        sizes
    } else {
        let sizes = setup::probe_sizes(reg.addr, &first)?;
        eprintln!(
            "registrar: Handle Resolution {} bytes, Response {} bytes (our encoder's estimate: {})",
            sizes.0,
            sizes.1,
            first.expected_response_size()
        );
        sizes
    };
    let plan = Plan::new(spec, conns, Some(sizes));
    let mut prepared = vec![(Target::Registrar, reg)];
    for &t in &args.targets {
        if t != Target::Registrar {
            prepared.push((t, cli::prepare(t, true, any, &plan, &args.server, &cores, true)?));
        }
    }
    let commands: Vec<(Target, String)> =
        prepared.iter().map(|(t, p)| (*t, p.server.as_ref().map(|s| s.command.clone()).unwrap_or_default())).collect();
    let stop = cli::stop_flag();
    let mut samples = Vec::new();
    let mut last: Vec<(usize, Target, RunResult)> = Vec::new();
    'rounds: for round in 0..args.rounds {
        for &depth in &args.depths {
            for &t in &args.targets {
                let Some((_, p)) = prepared.iter().find(|(pt, _)| *pt == t) else { continue };
                let mut load: LoadArgs = args.load.clone();
                load.depth = depth;
                let mut cfg = cli::run_config(&load, &cores, t, p.addr, None);
                cfg.server_pid = p.server.as_ref().map(crate::servers::Server::pid);
                let r = run::run(&cfg, &plan, &stop)?;
                eprintln!(
                    "round {round} depth {depth:>2} {:<9} {:>10.0} req/s  p50 {:>7.1} us  p99 {:>7.1} us  errors {}",
                    t.name(),
                    r.throughput,
                    r.latency.p50_us,
                    r.latency.p99_us,
                    r.error_total()
                );
                samples.push(Sample {
                    round,
                    depth,
                    target: t,
                    throughput: r.throughput,
                    p50_us: r.latency.p50_us,
                    p99_us: r.latency.p99_us,
                    errors: r.error_total(),
                    client_syscalls_per_answer: r.client_syscalls_per_answer,
                    server_cpu: r.server_cpu,
                    client_cpu: r.client_cpu,
                });
                last.retain(|(d, tt, _)| !(*d == depth && *tt == t));
                last.push((depth, t, r));
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break 'rounds;
                }
            }
        }
    }
    drop(prepared);
    let summaries = summarize(&samples, &args.depths, &args.targets);
    let machine = Machine::now();
    let header = format!(
        "Comparison, workload {:?}, {} ({} rounds, {} connections, {:.0} s + {:.0} s warm-up per run; nproc {}, kernel {}, {}; \
         server core {}, loadgen core(s) {:?}; request {} B, reply {} B; git {})",
        plan.spec.workload,
        machine.date,
        args.rounds,
        conns,
        args.load.duration,
        args.load.warmup,
        machine.nproc,
        machine.kernel,
        machine.cpu,
        cores.server,
        cores.client,
        sizes.0,
        sizes.1,
        machine.git_revision
    );
    let md = markdown(&summaries, &samples, &header);
    println!("{md}");
    let kind = match plan.spec.workload {
        WorkloadKind::Resolve => "",
        WorkloadKind::Churn => "churn-",
        WorkloadKind::Mix => "mix-",
    };
    let json_path = report::out_path(&args.server.out, &format!("compare-{kind}{{date}}.json"), &machine);
    let doc = serde_json::json!({
        "machine": machine,
        "workload": plan.spec,
        "sizes": { "request": sizes.0, "reply": sizes.1, "redis_value": plan.redis_value_size, "redis_get_request": plan.get_request(0).len() },
        "connections": conns,
        "depths": args.depths,
        "rounds": args.rounds,
        "warmup_s": args.load.warmup,
        "duration_s": args.load.duration,
        "client_cores": cores.client,
        "server_core": cores.server,
        "profile": cores.profile,
        "io": args.load.io,
        "servers": commands.iter().map(|(t, c)| serde_json::json!({"target": t, "command": c})).collect::<Vec<_>>(),
        "summary": summaries,
        "samples": samples,
        "last_runs": last.iter().map(|(_, _, r)| r).collect::<Vec<_>>(),
    });
    report::write_json(&json_path, &doc)?;
    let md_path = json_path.with_extension("md");
    std::fs::write(&md_path, &md)?;
    for &depth in &args.depths {
        let series: Vec<crate::plot::Spectrum> = last
            .iter()
            .filter(|(d, _, _)| *d == depth)
            .map(|(_, t, r)| (format!("{} ({:.0}/s)", t.name(), r.throughput), r.spectrum.clone()))
            .collect();
        let svg = json_path.with_file_name(format!("compare-{kind}{}-depth{depth}-spectrum.svg", machine.stamp()));
        let title = format!("Latency spectrum, {conns} connections x {depth} in flight (last round)");
        crate::plot::spectrum_svg(&svg, &title, &series).map_err(|e| io::Error::other(e.to_string()))?;
    }
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let _ = Arc::strong_count(&plan);
    Ok(if errors > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(round: usize, depth: usize, target: Target, throughput: f64) -> Sample {
        Sample {
            round,
            depth,
            target,
            throughput,
            p50_us: 1.0,
            p99_us: 2.0,
            errors: 0,
            client_syscalls_per_answer: 0.1,
            server_cpu: Some(if target == Target::Echo { 0.5 } else { 1.0 }),
            client_cpu: Some(1.0),
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let samples = vec![
            s(0, 1, Target::Registrar, 100.0),
            s(0, 1, Target::Redis, 80.0),
            s(0, 1, Target::Echo, 120.0),
            s(1, 1, Target::Registrar, 300.0),
            s(1, 1, Target::Redis, 60.0),
            s(1, 1, Target::Echo, 100.0),
            s(2, 1, Target::Registrar, 110.0),
            s(2, 1, Target::Redis, 100.0),
            s(2, 1, Target::Echo, 110.0),
        ];
        let targets = [Target::Registrar, Target::Redis, Target::Echo];
        let sum = summarize(&samples, &[1, 16], &targets);
        assert_eq!(sum[0].medians[0].1, 110.0);
        assert_eq!(sum[0].registrar_over_redis, Some(110.0 / 80.0));
        assert_eq!(sum[0].registrar_over_echo, Some(1.0));
        assert!(sum[1].medians.is_empty() && sum[1].registrar_over_redis.is_none());
        let md = markdown(&sum, &samples, "# x");
        assert!(md.contains("| 1 | 110 | 80 | 110 | 1.38 | 1.00 | 0.73 | 1.25, 1.00 |"), "{md}");
        // Per round: 100/80, 300/60, 110/100 -> median 1.25; 100/120, 300/100, 110/110 -> 1.0.
        assert_eq!(paired_ratio(&samples, 1, Target::Registrar, Target::Redis), Some(1.25));
        assert_eq!(paired_ratio(&samples, 16, Target::Registrar, Target::Redis), None);
        // The echo server used half a core: its capacity is twice its throughput.
        assert_eq!(sum[0].capacity_registrar_over_echo, Some(110.0 / 220.0));
        assert_eq!(sum[0].capacity_registrar_over_redis, Some(110.0 / 80.0));
    }
}
