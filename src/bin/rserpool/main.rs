//! The `rserpool` command: the registrar, a message decoder, and small clients.

use clap::{Parser, Subcommand};

mod decode;
mod describe;
mod register;
mod registrar;
mod resolve;
mod status;

/// Reliable Server Pooling (RFC 5351-5356): registrar, tools and clients.
///
/// Start a registrar with `rserpool registrar`, register a pool element with
/// `rserpool register --pool echo --transport tcp:127.0.0.1:7000`, and resolve the pool with
/// `rserpool resolve echo`.
#[derive(Parser, Debug)]
#[command(name = "rserpool", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a registrar (ENRP server) serving ASAP over TCP, on built-in defaults unless told otherwise.
    Registrar(registrar::RegistrarArgs),
    /// Register a pool element and keep it registered until Ctrl-C (then deregister).
    Register(register::RegisterArgs),
    /// Resolve a pool handle: print PEs chosen by the pool's policy.
    Resolve(resolve::ResolveArgs),
    /// Decode ASAP/ENRP messages given as hex; exit status 1 for a malformed one.
    Decode(decode::DecodeArgs),
    /// Show how a registrar stands: state, counts, ENRP peers, audits, takeovers.
    Status(status::StatusArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Registrar(args) => registrar::run(args),
        Command::Register(args) => register::run(args),
        Command::Resolve(args) => resolve::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Status(args) => status::run(args),
    };
    std::process::exit(code);
}
