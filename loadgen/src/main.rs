//! loadgen: measures a registrar's resolution latency, throughput and registration churn.

fn main() {
    eprintln!("loadgen: not implemented yet");
    std::process::exit(2);
}
