//! The stand-in peer of `loadgen peer-updates --feed` against a registrar started in this
//! process: a paused feed announces itself but writes no Handle Update; switched on, its
//! updates reach the registrar; stopped, it deletes what it added. Checked on counts; the
//! waits are for conditions, with generous deadlines.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::peerfeed::{self, FeedConfig, FEED_ID};
use loadgen::peerload::status;
use rserpool::registrar::{Registrar, RegistrarConfig, StatusReport, ASAP, ENRP};
use rserpool::runtime::{self, EngineConfig, EngineKind, Listen};
use rserpool::time::Time;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Polls the registrar's status until `cond` holds (panics after a minute).
fn wait_for(asap: SocketAddr, what: &str, cond: impl Fn(&StatusReport) -> bool) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(asap).expect("status");
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_paused_feed_writes_nothing_and_a_running_one_adds_and_finally_deletes() {
    let enrp = free_addr();
    let engine_config = EngineConfig {
        kind: EngineKind::Epoll,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP), Listen::on_shard(enrp, ENRP, 0)],
        shards: vec![None],
        ..EngineConfig::default()
    };
    let mut config = RegistrarConfig::new(0xb000_0002, 1);
    config.enrp = Some(enrp);
    let engine = runtime::start(engine_config, move |shard, _| Registrar::new(&config, shard, Time::ZERO)).unwrap();
    let asap = engine.local_addr();
    let feed_id = format!("{FEED_ID:#010x}");
    let known = |s: &StatusReport| s.peers.iter().any(|p| p.id == feed_id && p.connected);

    let active = Arc::new(AtomicBool::new(false));
    let cfg = FeedConfig {
        to: enrp,
        rate: 20_000.0,
        window: Duration::from_micros(500),
        slots: 64,
        active: Some(Arc::clone(&active)),
    };
    // Paused: the registrar hears the feed's Presence, and no update comes.
    let stop = Arc::new(AtomicBool::new(false));
    let feed = {
        let (cfg, stop) = (cfg.clone(), Arc::clone(&stop));
        std::thread::spawn(move || peerfeed::run(&cfg, &stop))
    };
    wait_for(asap, "the feed as a connected peer", known);
    stop.store(true, Ordering::Relaxed);
    let paused = feed.join().unwrap().unwrap();
    assert_eq!(paused.sent, 0, "a paused feed wrote updates");
    assert_eq!(status(asap).unwrap().updates_received, 0);

    // Switched on: its updates arrive; stopped: the registrar holds none of its PEs.
    active.store(true, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let feed = {
        let (cfg, stop) = (cfg.clone(), Arc::clone(&stop));
        std::thread::spawn(move || peerfeed::run(&cfg, &stop))
    };
    wait_for(asap, "200 updates", |s| s.updates_received >= 200);
    stop.store(true, Ordering::Relaxed);
    let ran = feed.join().unwrap().unwrap();
    assert!(ran.sent >= 200, "{ran:?}");
    let s = wait_for(asap, "the feed's PEs gone", |s| s.updates_received >= ran.sent && s.pes_of_peers == 0);
    assert_eq!(s.pes_owned, 0);
    drop(engine);
}
