//! loadgen: measures a registrar's resolution latency, throughput and registration churn, side
//! by side with Redis GET and a bare io_uring echo server. See `loadgen --help` and README.md.

use clap::{Parser, Subcommand};
use loadgen::cli::{cmd_echo, cmd_run, EchoArgs, RunArgs};
use loadgen::compare::{cmd_compare, CompareArgs};
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
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
