//! The registrar's `/metrics` during a loadgen run: an in-process registrar (two shards, so that
//! requests cross between them) with its metrics endpoint, a bounded open-loop run of
//! resolutions and registration churn scraped all through (valid text, no counter going back),
//! and the counters before and after. They must have moved
//! by exactly the requests loadgen sent, by type; the text must be valid Prometheus text. The
//! run is bounded by a request count; waits are bounded polls; nothing asserts on time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::run::{self, IoKind, RunConfig};
use loadgen::setup;
use loadgen::workload::{Plan, Target, WorkloadKind, WorkloadSpec};
use rserpool::metrics::{Exporter, MetricsHub, MetricsServer};
use rserpool::registrar::{Registrar, RegistrarConfig, ASAP};
use rserpool::runtime::{self, EngineConfig, EngineKind, Listen};
use rserpool::time::Time;

#[path = "../../tests/support/prom.rs"]
mod prom;

use prom::Exposition;

const SHARDS: usize = 2;
const CONNECTIONS: usize = 4;
const REQUESTS: u64 = 4000;

fn run_config(addr: SocketAddr) -> RunConfig {
    RunConfig {
        target: Target::Registrar,
        addr,
        connections: CONNECTIONS,
        depth: 8,
        // Open loop: loadgen sends exactly `requests` (a closed loop may send a few more while it
        // stops).
        rate: Some(20_000.0),
        threads: 2,
        cores: Vec::new(),
        warmup_s: 0.0,
        duration_s: 120.0,
        requests: Some(REQUESTS),
        io: IoKind::Epoll,
        recv_buffer: 64 * 1024,
        progress: false,
        server_pid: None,
    }
}

/// Waits (bounded) until `check` holds on a fresh scrape.
fn until(addr: SocketAddr, what: &str, check: impl Fn(&Exposition) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(&prom::scrape(addr)) {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_loadgen_run_moves_the_counters_by_exactly_the_requests_sent() {
    // Every request is timed here (one in 16 by default), so that the histograms can be
    // checked exactly too.
    let hub = Arc::new(MetricsHub::with_sampling(SHARDS, 1));
    let registrar = RegistrarConfig { metrics: Some(Arc::clone(&hub)), ..RegistrarConfig::new(0x1234, SHARDS as u16) };
    let budgets = Arc::clone(&registrar.budgets);
    let engine_config = EngineConfig {
        kind: EngineKind::Epoll,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP)],
        shards: vec![None; SHARDS],
        ..EngineConfig::default()
    };
    let engine = runtime::start(engine_config, move |shard, _| Registrar::new(&registrar, shard, Time::ZERO)).unwrap();
    let exporter = Exporter::new(0x1234, hub, budgets, Some(engine.stats_reader()));
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), exporter).unwrap();
    let m = server.local_addr();
    let addr = engine.local_addr();

    let spec = WorkloadSpec {
        workload: WorkloadKind::Mix,
        pools: 40,
        pool_size: 4,
        resolve_share: 0.5,
        churn_slots: 9,
        ..WorkloadSpec::default()
    };
    let plan = Plan::new(spec, CONNECTIONS, None);
    let holder = setup::register_static(addr, &plan).unwrap();
    setup::probe_sizes(addr, &plan).unwrap();
    let before = prom::settled(m);
    assert_eq!(before.value("rserpool_registrations_total"), holder.pes as f64);
    assert_eq!(before.value("rserpool_pes_owned"), holder.pes as f64);
    let accepted = before.sum("rserpool_connections_accepted_total");

    // Scrapes all through the run: each one valid, no counter going back.
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut last = prom::scrape(m);
            let mut scrapes = 1u32;
            while !done.load(Ordering::Relaxed) {
                let now = prom::scrape(m);
                for name in
                    ["rserpool_resolutions_total", "rserpool_registrations_total", "rserpool_asap_messages_total"]
                {
                    assert!(now.sum(name) >= last.sum(name), "{name} went back");
                }
                last = now;
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            scrapes
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let r = run::run(&run_config(addr), &plan, &stop).unwrap();
    done.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("every scrape during the run was valid");
    eprintln!("{scrapes} scrapes during the run");
    assert_eq!(r.error_total(), 0, "{:?}", r.errors);
    assert_eq!(r.completed, REQUESTS);
    let op = |name: &str| r.ops.get(name).and_then(|v| v.as_u64()).unwrap_or(0) as f64;
    let (resolve, register, reregister, deregister) =
        (op("resolve"), op("register"), op("reregister"), op("deregister"));
    assert_eq!(resolve + register + reregister + deregister, REQUESTS as f64, "{:?}", r.ops);
    assert!(resolve > 0.0 && register > 0.0 && reregister > 0.0 && deregister > 0.0, "{:?}", r.ops);

    let after = prom::settled(m);
    let d = |name: &str| after.value(name) - before.value(name);
    let by = |name: &str, label: (&str, &str)| {
        after.get(name, &[label]).expect(name) - before.get(name, &[label]).expect(name)
    };
    assert_eq!(d("rserpool_resolutions_total"), resolve);
    assert_eq!(d("rserpool_resolutions_unknown_pool_total"), 0.0);
    assert_eq!(d("rserpool_registrations_total"), register);
    assert_eq!(d("rserpool_reregistrations_total"), reregister);
    assert_eq!(d("rserpool_deregistrations_total"), deregister);
    assert_eq!(d("rserpool_registrations_rejected_total"), 0.0);
    assert_eq!(after.sum("rserpool_asap_errors_total"), before.sum("rserpool_asap_errors_total"));
    assert_eq!(d("rserpool_asap_bad_messages_total"), 0.0);
    let types = [
        ("handle_resolution", resolve),
        ("registration", register + reregister),
        ("deregistration", deregister),
        ("other", 0.0),
    ];
    for (t, n) in types {
        assert_eq!(by("rserpool_asap_messages_total", ("type", t)), n, "messages of type {t}");
        assert_eq!(by("rserpool_asap_request_duration_seconds_count", ("type", t)), n, "timed of type {t}");
    }
    assert_eq!(after.value("rserpool_pools"), 40.0);
    assert_eq!(after.sum("rserpool_cross_shard_in_flight"), 0.0);
    assert_eq!(after.sum("rserpool_connections_accepted_total") - accepted, CONNECTIONS as f64);
    // The run's connections closed: the churn PEs registered over them went with them.
    until(m, "the run's connections closed", |e| {
        e.sum("rserpool_connections") == 1.0
            && e.value("rserpool_connection_loss_removals_total") == register - deregister
            && e.value("rserpool_pes_owned") == holder.pes as f64
    });
    let (_, _, text) = prom::get(m, "/metrics", None);
    prom::promtool_check(&text);

    drop(holder);
    server.stop();
    engine.shutdown_handle().shutdown();
    engine.join().unwrap();
}
