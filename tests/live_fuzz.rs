//! Live fuzzing, bounded: 20,000 random and grammar-aware mutated messages (mutations of the
//! test vectors and of well-formed ASAP messages) over many real connections to a registrar
//! process, on each engine, while well-formed clients register, resolve and deregister and check
//! every answer's content. The registrar must answer them all correctly, never panic, stay up,
//! and exit cleanly on SIGTERM afterwards. The full run (10^6 messages and more, RSS sampled) is
//! `loadgen fuzz`, recorded in results/fuzz/live-*.md; this is the same code
//! (`loadgen/src/fuzz.rs`, included below).

mod support;

use rserpool::wire::{Policy, TransportProtocol, TransportRepr};
use support::*;

#[allow(dead_code)]
#[path = "../loadgen/src/fuzz.rs"]
mod fuzz;

fn live_fuzz(engine: &str, seed: u64) {
    let registrar = Registrar::start(engine, 2, "[security]\nregistration_check = \"off\"\n");
    let mut seeds = fuzz::load_vectors(&support_vectors()).unwrap();
    assert!(seeds.len() > 40, "the vectors are there");
    seeds.extend(fuzz::generated_seeds());
    let cfg = fuzz::FuzzConfig {
        addr: registrar.addr,
        messages: 20_000,
        seed,
        fuzzers: 3,
        checkers: 2,
        seeds,
        answer_timeout: PATIENCE,
        progress_every: 0,
    };
    eprintln!("live fuzz on {engine}, seed {seed}");
    let report = fuzz::run(&cfg);
    eprintln!("{report:?}");
    assert_eq!(report.messages, 20_000);
    assert!(report.connections > 10, "many connections: {}", report.connections);
    assert_eq!(report.checks_failed, 0, "every well-formed request answered right: {:?}", report.failures);
    assert!(report.checks_ok > 0, "the well-formed clients were answered");
    // Every fuzz and checker connection is closed: nothing they registered is left behind.
    assert_eq!(fuzz::wait_empty(registrar.addr, PATIENCE), Some((0, 0)), "no pool or PE left after the fuzz");
    // Still up and still right after the storm.
    let mut c = registrar.client();
    let user = TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), 7777);
    let pe = pe(7, user, Policy::RoundRobin, 60_000);
    assert_eq!(c.register("after-fuzz", pe), (false, None));
    let pes = c.resolve("after-fuzz", None).unwrap();
    assert_eq!(pes.iter().map(|p| p.pe_id).collect::<Vec<_>>(), vec![7]);
    let panics: Vec<String> = registrar.log().into_iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "panics in the registrar's log: {panics:?}");
    let status = registrar.terminate();
    assert!(status.success(), "the registrar exits cleanly on SIGTERM after fuzzing: {status}");
}

fn support_vectors() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn live_fuzz_epoll() {
    live_fuzz("epoll", 0x11fe_f022_0001);
}

#[test]
fn live_fuzz_uring() {
    if let Err(reason) = rserpool::runtime::io_uring_support() {
        eprintln!("skipping the io_uring variant: {reason}");
        return;
    }
    live_fuzz("uring", 0x11fe_f022_0002);
}
