//! The `rserpool` command: registrar, decoder and small clients.

fn main() {
    eprintln!("rserpool: the registrar is not implemented yet");
    std::process::exit(2);
}
