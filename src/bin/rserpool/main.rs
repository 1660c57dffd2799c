//! The `rserpool` command: the registrar, a message decoder, and small clients.

use clap::{Parser, Subcommand};

mod decode;

/// Reliable Server Pooling (RFC 5351-5356): registrar, tools and clients.
#[derive(Parser, Debug)]
#[command(name = "rserpool", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a registrar (ENRP server) serving ASAP over TCP.
    Registrar,
    /// Decode ASAP/ENRP messages given as hex; exit status 1 for a malformed one.
    Decode(decode::DecodeArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Registrar => {
            eprintln!("rserpool: the registrar is not implemented yet");
            2
        }
        Command::Decode(args) => decode::run(args),
    };
    std::process::exit(code);
}
