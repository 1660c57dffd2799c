//! `loadgen propagation` end to end against two registrars started in this process and peered
//! over ENRP (A with two shards, so that changes cross shards before they reach the peer):
//! every recorded update is answered by A and seen at B, with nothing refused, lost or
//! unexpected. The run is bounded by a count of updates; the checks are on counts, never on
//! time.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use loadgen::propagation::{self, PropagationConfig};
use rserpool::registrar::{Registrar, RegistrarConfig, ASAP, ENRP};
use rserpool::runtime::{self, Engine, EngineConfig, EngineKind, Listen};
use rserpool::time::Time;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A registrar with `shards` shards, ENRP on `enrp` (accepted by shard 0), peering with `peers`.
fn registrar(id: u32, shards: u16, enrp: SocketAddr, peers: Vec<SocketAddr>) -> Engine {
    let engine_config = EngineConfig {
        kind: EngineKind::Epoll,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP), Listen::on_shard(enrp, ENRP, 0)],
        shards: vec![None; usize::from(shards)],
        ..EngineConfig::default()
    };
    let mut config = RegistrarConfig::new(id, shards);
    config.enrp = Some(enrp);
    config.peers = peers;
    let t = &mut config.timers;
    (t.mentor_discovery, t.peer_reconnect) = (200, 100);
    runtime::start(engine_config, move |shard, _| Registrar::new(&config, shard, Time::ZERO)).unwrap()
}

#[test]
fn every_update_at_a_is_answered_and_seen_at_b() {
    let (enrp_a, enrp_b) = (free_addr(), free_addr());
    let a = registrar(0xa000_0001, 2, enrp_a, Vec::new());
    let b = registrar(0xb000_0002, 1, enrp_b, vec![enrp_a]);
    let (at, see) = (a.local_addr(), b.local_addr());
    propagation::check_peering(at, see, Duration::from_secs(60)).expect("A and B peer");
    let cfg = PropagationConfig {
        at,
        see,
        rate: 5_000.0,
        slots: 64,
        slots_per_pool: 4,
        churn_connections: 2,
        probe_connections: 2,
        probe_depth: 4,
        warmup_s: 0.1,
        duration_s: 120.0,
        updates: Some(2_000),
        drain_s: 60.0,
        ..PropagationConfig::default()
    };
    let stop = AtomicBool::new(false);
    let r = propagation::run(&cfg, &stop).unwrap();
    assert_eq!(r.recorded, 2_000);
    assert_eq!(r.registrations + r.deregistrations, r.recorded);
    assert!(r.registrations > 0 && r.deregistrations > 0, "{r:?}");
    assert_eq!((r.unseen, r.unanswered, r.rejected, r.errors), (0, 0, 0, 0), "{r:?}");
    assert_eq!(r.seen, r.recorded);
    assert_eq!(r.latency.count, r.seen);
    assert_eq!(r.latency_lower.count, r.seen);
    assert_eq!(r.a_answer.count, r.seen);
    assert!(r.probes >= r.seen / cfg.slots_per_pool as u64, "{r:?}");
    assert!(r.latency_lower.max_us <= r.latency.max_us, "{r:?}");
    drop((a, b));
}
