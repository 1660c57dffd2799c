//! `loadgen fuzz`: live fuzzing of a registrar process started here (see [`crate::fuzz`]), with
//! its RSS sampled, and checks that it neither died nor panicked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fuzz::{self, FuzzConfig};
use crate::live::LiveRegistrar;
use crate::servers::default_registrar_bin;

/// Options of `loadgen fuzz`.
#[derive(clap::Args, Clone, Debug)]
pub struct FuzzArgs {
    /// Mutated messages to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Seed (default: from the clock; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Registrar engine.
    #[arg(long, default_value = "epoll", value_parser = ["epoll", "uring"])]
    pub engine: String,
    /// Registrar shards.
    #[arg(long, default_value_t = 2)]
    pub cores: usize,
    /// Fuzzing threads (one connection each at a time).
    #[arg(long, default_value_t = 4)]
    pub fuzzers: usize,
    /// Well-formed clients checking answers.
    #[arg(long, default_value_t = 2)]
    pub checkers: usize,
    /// The test vectors the mutations start from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors"))]
    pub vectors: PathBuf,
    /// The `rserpool` binary (default: next to this one).
    #[arg(long)]
    pub registrar_bin: Option<PathBuf>,
    /// Where the registrar's configuration and log go.
    #[arg(long, default_value = "/tmp/loadgen-fuzz")]
    pub workdir: PathBuf,
    /// RSS sample period, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
}

/// The registrar's configuration for fuzzing: any address may be registered (so mutated
/// registrations get past the source check into the handlespace), the rest defaults.
pub const FUZZ_CONFIG: &str = "[security]\nregistration_check = \"off\"\n";

/// Runs `loadgen fuzz`; exit code 0 if the registrar lived, never panicked and every
/// well-formed answer was right, 1 otherwise.
pub fn cmd_fuzz(a: &FuzzArgs) -> std::io::Result<i32> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("live fuzz: seed {seed} (rerun with --seed {seed})");
    let mut seeds = fuzz::load_vectors(&a.vectors)?;
    let vectors = seeds.len();
    seeds.extend(fuzz::generated_seeds());
    println!("live fuzz: {vectors} vectors from {}, {} seeds in all", a.vectors.display(), seeds.len());
    let bin = a.registrar_bin.clone().unwrap_or_else(default_registrar_bin);
    let mut registrar = LiveRegistrar::start(&bin, &a.engine, a.cores, FUZZ_CONFIG, &a.workdir)?;
    println!("registrar: {} (pid {}, log {})", registrar.command, registrar.pid(), registrar.log.display());
    let cfg = FuzzConfig {
        addr: registrar.addr,
        messages: a.messages,
        seed,
        fuzzers: a.fuzzers,
        checkers: a.checkers,
        seeds,
        answer_timeout: Duration::from_secs(10),
        progress_every: (a.messages / 10).max(1),
    };
    let stop = AtomicBool::new(false);
    let pid = registrar.pid();
    let (report, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| fuzz::sample_rss(pid, Duration::from_millis(a.sample_ms), &stop));
        let report = fuzz::run(&cfg);
        stop.store(true, Ordering::Relaxed);
        (report, sampler.join().unwrap_or_default())
    });
    // Every connection is closed now, so every PE and pool must go: none may be left behind.
    let state = fuzz::wait_empty(registrar.addr, Duration::from_secs(20));
    println!("registrar state once every connection is closed (pools, PEs): {state:?}");
    let alive = registrar.alive();
    let panics = registrar.panics();
    let secs = report.elapsed.as_secs_f64();
    println!(
        "sent {} messages ({} of them stream-breaking, each last on its connection; {} bytes) over {} connections in {secs:.1} s ({:.0} messages/s); the registrar closed {} of them; {} connect failures; {} bytes of answers",
        report.messages,
        report.stream_breaking,
        report.bytes,
        report.connections,
        report.messages as f64 / secs.max(1e-9),
        report.closed_by_registrar,
        report.connect_failures,
        report.answer_bytes
    );
    println!("well-formed clients: {} answers right, {} wrong or missing", report.checks_ok, report.checks_failed);
    for f in &report.failures {
        println!("  failure: {f}");
    }
    let bounded = print_rss(&samples);
    println!("registrar alive after the run: {alive}; panics in its log: {}", panics.len());
    for p in panics.iter().take(5) {
        println!("  {p}");
    }
    let exit = if alive {
        match registrar.terminate(Duration::from_secs(20)) {
            Ok(s) => {
                println!("registrar exit on SIGTERM: {s}");
                s.success()
            }
            Err(e) => {
                println!("{e}");
                false
            }
        }
    } else {
        false
    };
    let ok = alive
        && exit
        && state == Some((0, 0))
        && panics.is_empty()
        && report.checks_failed == 0
        && report.checks_ok > 0
        && bounded;
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    Ok(if ok { 0 } else { 1 })
}

/// Prints the RSS samples (every tenth, and a summary); whether the second half's peak stays
/// within 10% + 8 MiB of the first half's (memory does not grow with the messages sent).
fn print_rss(samples: &[(f64, u64)]) -> bool {
    if samples.len() < 2 {
        println!("RSS: too few samples");
        return true;
    }
    let step = (samples.len() / 10).max(1);
    let line: Vec<String> =
        samples.iter().step_by(step).map(|(t, k)| format!("{t:.0}s:{:.1}", *k as f64 / 1024.0)).collect();
    println!("RSS MiB over time: {}", line.join(" "));
    let half = samples.len() / 2;
    let first = samples[..half].iter().map(|s| s.1).max().unwrap_or(0);
    let second = samples[half..].iter().map(|s| s.1).max().unwrap_or(0);
    let (min, max) = (samples.iter().map(|s| s.1).min().unwrap_or(0), samples.iter().map(|s| s.1).max().unwrap_or(0));
    let bounded = second as f64 <= first as f64 * 1.10 + 8192.0;
    println!(
        "RSS: min {:.1} MiB, max {:.1} MiB, peak of the first half {:.1} MiB, of the second half {:.1} MiB: {}",
        min as f64 / 1024.0,
        max as f64 / 1024.0,
        first as f64 / 1024.0,
        second as f64 / 1024.0,
        if bounded { "bounded" } else { "GROWING" }
    );
    bounded
}
