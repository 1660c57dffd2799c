//! loadgen end to end on loopback against servers started in this process: an in-process
//! registrar (two shards, so answers may come back out of order) and the bare echo server. The
//! runs are bounded by a request count; the checks are on counts and errors, never on time.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use loadgen::bare_echo;
use loadgen::run::{self, IoKind, RunConfig};
use loadgen::setup;
use loadgen::workload::{Plan, Target, WorkloadKind, WorkloadSpec};
use rserpool::registrar::{Registrar, RegistrarConfig, ASAP};
use rserpool::runtime::{self, EngineConfig, EngineKind, Listen};
use rserpool::time::Time;

fn transports() -> Vec<IoKind> {
    match runtime::io_uring_support() {
        Ok(()) => vec![IoKind::Epoll, IoKind::Uring],
        Err(reason) => {
            eprintln!("io_uring unavailable ({reason}): epoll client only");
            vec![IoKind::Epoll]
        }
    }
}

fn config(target: Target, addr: std::net::SocketAddr, io: IoKind, rate: Option<f64>, requests: u64) -> RunConfig {
    RunConfig {
        target,
        addr,
        connections: 4,
        depth: 8,
        rate,
        threads: 2,
        cores: Vec::new(),
        warmup_s: 0.0,
        duration_s: 120.0,
        requests: Some(requests),
        io,
        recv_buffer: 64 * 1024,
        progress: false,
        server_pid: None,
    }
}

#[test]
fn resolutions_and_churn_against_a_registrar_are_all_answered_and_right() {
    let engine_config = EngineConfig {
        kind: EngineKind::Epoll,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP)],
        shards: vec![None, None],
        ..EngineConfig::default()
    };
    let registrar = RegistrarConfig::new(0x1234, 2);
    let engine = runtime::start(engine_config, move |shard, _| Registrar::new(&registrar, shard, Time::ZERO)).unwrap();
    let addr = engine.local_addr();
    let spec = WorkloadSpec {
        workload: WorkloadKind::Mix,
        pools: 40,
        pool_size: 4,
        resolve_share: 0.5,
        churn_slots: 9,
        ..WorkloadSpec::default()
    };
    let plan = Plan::new(spec, 4, None);
    let holder = setup::register_static(addr, &plan).unwrap();
    assert_eq!(holder.pes, 160);
    let (req, reply) = setup::probe_sizes(addr, &plan).unwrap();
    assert_eq!((req, reply), (plan.resolve_request(0).len(), plan.expected_response_size()));
    let stop = Arc::new(AtomicBool::new(false));
    for io in transports() {
        for rate in [None, Some(20_000.0)] {
            let r = run::run(&config(Target::Registrar, addr, io, rate, 2000), &plan, &stop).unwrap();
            assert_eq!(r.error_total(), 0, "{io:?} {rate:?}: {:?}", r.errors);
            assert_eq!(r.completed, 2000, "{io:?} {rate:?}");
            for op in ["resolve", "register", "reregister", "deregister"] {
                assert!(r.ops.get(op).and_then(|v| v.as_u64()).unwrap_or(0) > 0, "{io:?} {rate:?}: no {op}");
            }
            assert_eq!(r.latency.count, 2000);
        }
    }
    drop(holder);
    engine.shutdown_handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn echo_runs_count_every_reply() {
    if let Err(reason) = runtime::io_uring_support() {
        eprintln!("skipping: the bare echo server needs io_uring ({reason})");
        return;
    }
    let plan = Plan::new(WorkloadSpec::default(), 4, Some((20, 148)));
    let server =
        bare_echo::spawn(bare_echo::BareEchoConfig { request_size: 20, reply_size: 148, ..Default::default() })
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    for io in transports() {
        let r = run::run(&config(Target::Echo, server.local_addr(), io, None, 3000), &plan, &stop).unwrap();
        assert_eq!((r.completed, r.error_total()), (3000, 0), "{io:?}");
    }
    server.stop_handle().stop();
    server.join().unwrap();
}
