//! loadgen: measures a registrar's resolution latency, throughput and registration churn, side
//! by side with Redis GET and a bare io_uring echo server. See `loadgen --help` and README.md.

use clap::{Parser, Subcommand};
use loadgen::abuse::{cmd_abuse, AbuseArgs};
use loadgen::cli::{cmd_echo, cmd_run, EchoArgs, RunArgs};
use loadgen::compare::{cmd_compare, CompareArgs};
use loadgen::fuzz_cli::{cmd_fuzz, FuzzArgs};
use loadgen::peerload::{cmd_peer_load, PeerLoadArgs};
use loadgen::propagation::{cmd_propagation, PropagationArgs};
use loadgen::sweep::{cmd_sweep, SweepArgs};

/// Load generator for the rserpool registrar (and the references it is compared with).
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One measured run against a registrar, redis-server or echo server (closed loop, or open
    /// loop with --rate).
    Run(Box<RunArgs>),
    /// Maximum throughput, then open-loop runs at fractions of it: latency vs throughput (CSV,
    /// JSON, SVG).
    Sweep(Box<SweepArgs>),
    /// Registrar, Redis and echo alternating for several rounds at several depths: medians and
    /// ratios (JSON, markdown, SVG).
    Compare(Box<CompareArgs>),
    /// The bare io_uring request/reply server (the kernel path's ceiling).
    EchoServer(EchoArgs),
    /// Registration churn at registrar A, resolutions at its ENRP peer B: when each change
    /// becomes visible at B (histogram, JSON, SVG).
    Propagation(Box<PropagationArgs>),
    /// Resolution throughput at registrar B with and without Handle Updates from its peer A,
    /// alternated (JSON, markdown).
    PeerUpdates(Box<PeerLoadArgs>),
    /// Live fuzzing: mutated messages over many connections to a registrar process while
    /// well-formed clients check their answers; RSS sampled, panics looked for.
    Fuzz(Box<FuzzArgs>),
    /// Well-behaved clients' resolution latency with and without slow readers, never-reading
    /// clients, half-open connections and a connection flood, alternated.
    Abuse(Box<AbuseArgs>),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = rserpool::runtime::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open file limit: {e}");
    }
    let result = match &cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Sweep(a) => cmd_sweep(a),
        Command::Compare(a) => cmd_compare(a),
        Command::EchoServer(a) => cmd_echo(a),
        Command::Propagation(a) => cmd_propagation(a),
        Command::PeerUpdates(a) => cmd_peer_load(a),
        Command::Fuzz(a) => cmd_fuzz(a),
        Command::Abuse(a) => cmd_abuse(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
