//! The registrar in-process on both engines, with cross-shard queues of two records, under
//! everything at once: pipelining pool users whose pools live on other shards, pool elements
//! registering across all shards and answering keep-alives that cross shards, clients that
//! half-close with answers owed, and clients that reset mid-stream. Every request is answered,
//! in order; no PE is lost; none outlives its connection; no connection is left open; the
//! overflow between shards stays bounded.
//!
//! No test depends on timing: waits are bounded polls that only guard against deadlock.

mod support;

use support::tcp;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::Once;

use rserpool::registrar::{Registrar, RegistrarConfig, ASAP};
use rserpool::runtime::{self, Engine, EngineConfig, EngineKind, Listen};
use rserpool::time::Time;
use rserpool::wire::asap::{self, Body, MessageType, Resolution};
use rserpool::wire::Policy;
use support::{eventually, handle_and_id, handle_on, pe, registration, resolution, Client};

const SHARDS: u16 = 3;
const PE_CLIENTS: u32 = 6;
const PU_CLIENTS: u32 = 6;
const PES_EACH: u32 = 12;
const RESOLUTIONS_EACH: u32 = 300;

fn start(kind: EngineKind) -> Option<Engine> {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        runtime::raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    });
    if kind == EngineKind::Uring {
        if let Err(reason) = runtime::io_uring_support() {
            eprintln!("skipping io_uring variant: {reason}");
            return None;
        }
    }
    let cfg = EngineConfig {
        kind,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), ASAP)],
        shards: vec![None; usize::from(SHARDS)],
        buffer_count: 256,
        cross_shard_queue: 2,
        ..EngineConfig::default()
    };
    let mut registrar = RegistrarConfig::new(0x5757_0001, SHARDS);
    registrar.timers.keep_alive_interval = 20;
    registrar.timers.keep_alive_timeout = 600_000;
    Some(runtime::start(cfg, move |s, _| Registrar::new(&registrar, s, Time::ZERO)).expect("engine starts"))
}

fn pools() -> Vec<String> {
    (0..SHARDS).flat_map(|s| (0..2).map(move |k| handle_on(s, SHARDS, &format!("stress{k}")))).collect()
}

/// A pool element: registers PES_EACH PEs over all pools in one burst, reads the answers in
/// order (acking keep-alives in between), and waits until a keep-alive came and was acked.
/// Returns its client and its (pool, PE id) set.
fn pool_element(addr: SocketAddr, n: u32, pools: &[String]) -> (Client, BTreeSet<(String, u32)>) {
    let mut c = Client::connect(addr);
    let mut burst = Vec::new();
    let mut mine = BTreeSet::new();
    for i in 0..PES_EACH {
        let pool = &pools[(i as usize + n as usize) % pools.len()];
        let id = (n + 1) << 16 | i;
        burst.extend(registration(pool, pe(id, tcp(7000 + n as u16), Policy::RoundRobin, -1)));
        mine.insert((pool.clone(), id));
    }
    c.send(&burst);
    let mut answered = Vec::new();
    let mut keep_alives = 0;
    while answered.len() < PES_EACH as usize || keep_alives == 0 {
        let m = c.recv();
        match asap::parse(&m).unwrap().body() {
            Body::RegistrationResponse { rejected, pool_handle, pe_id, .. } => {
                assert!(!rejected, "client {n}: registration of {pe_id:#x} rejected");
                answered.push((String::from_utf8(pool_handle.to_vec()).unwrap(), *pe_id));
            }
            Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } => {
                c.send(&handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, *pe_id));
                keep_alives += 1;
            }
            other => panic!("client {n}: unexpected {other:?}"),
        }
    }
    let expected: Vec<(String, u32)> =
        (0..PES_EACH).map(|i| (pools[(i as usize + n as usize) % pools.len()].clone(), (n + 1) << 16 | i)).collect();
    assert_eq!(answered, expected, "client {n}: answers in request order");
    (c, mine)
}

/// A pool user: pipelines resolutions over all pools (and an unknown one), optionally
/// half-closes at once, and checks every answer, in order.
fn pool_user(addr: SocketAddr, n: u32, pools: &[String], half_close: bool) {
    let mut c = Client::connect(addr);
    let mut burst = Vec::new();
    let mut asked = Vec::new();
    for i in 0..RESOLUTIONS_EACH {
        let k = (i + n) as usize % (pools.len() + 1);
        let pool = pools.get(k).cloned().unwrap_or_else(|| "nobody".to_string());
        burst.extend(resolution(&pool, Some(128)));
        asked.push(pool);
    }
    c.send(&burst);
    if half_close {
        c.stream.shutdown(Shutdown::Write).unwrap();
    }
    for pool in asked {
        let m = c.recv();
        let parsed = asap::parse(&m).unwrap();
        let Body::HandleResolutionResponse { pool_handle, resolution } = parsed.body() else {
            panic!("client {n}: not a resolution answer: {parsed:?}")
        };
        assert_eq!(*pool_handle, pool.as_bytes(), "client {n}: answers in request order");
        // Real pools may not be registered yet (the PE clients run alongside); "nobody" never is.
        if pool == "nobody" {
            assert!(matches!(resolution, Resolution::Failed(_)));
        }
    }
    if half_close {
        assert!(c.closed_within(support::PATIENCE), "client {n}: closed once all was answered");
    }
}

/// The PEs of every pool as a resolution shows them.
fn resolve_all(addr: SocketAddr, pools: &[String]) -> BTreeSet<(String, u32)> {
    let mut c = Client::connect(addr);
    let mut all = BTreeSet::new();
    for pool in pools {
        if let Ok(pes) = c.resolve(pool, Some(128)) {
            all.extend(pes.into_iter().map(|p| (pool.clone(), p.pe_id)));
        }
    }
    all
}

fn everything_at_once(kind: EngineKind) {
    let Some(engine) = start(kind) else { return };
    let addr = engine.local_addr();
    let pools = pools();
    let pe_threads: Vec<_> = (0..PE_CLIENTS)
        .map(|n| {
            let pools = pools.clone();
            std::thread::spawn(move || pool_element(addr, n, &pools))
        })
        .collect();
    let pu_threads: Vec<_> = (0..PU_CLIENTS)
        .map(|n| {
            let pools = pools.clone();
            std::thread::spawn(move || pool_user(addr, n, &pools, n % 2 == 0))
        })
        .collect();
    // Clients that reset mid-stream: a burst of registrations and resolutions, then gone
    // without reading (unread data makes the close a reset).
    let resets: Vec<_> = (0..4u32)
        .map(|n| {
            let pools = pools.clone();
            std::thread::spawn(move || {
                let s = std::net::TcpStream::connect(addr).unwrap();
                socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO)).unwrap();
                let mut s = s;
                let mut burst = Vec::new();
                for i in 0..50u32 {
                    let pool = &pools[i as usize % pools.len()];
                    burst.extend(registration(pool, pe(0x7000_0000 | n << 8 | i, tcp(9000), Policy::RoundRobin, -1)));
                    burst.extend(resolution(pool, None));
                }
                s.write_all(&burst).unwrap();
            })
        })
        .collect();
    let mut elements: Vec<(Client, BTreeSet<(String, u32)>)> =
        pe_threads.into_iter().map(|t| t.join().unwrap()).collect();
    for t in pu_threads.into_iter().chain(resets) {
        t.join().unwrap();
    }
    // No PE lost, none of the reset clients' left once their connections are gone.
    let open: BTreeSet<(String, u32)> = elements.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
    eventually("exactly the open PE clients' PEs are registered", || resolve_all(addr, &pools) == open);
    // Half of the PE clients leave: their PEs go with their connections.
    let gone = elements.split_off(elements.len() / 2);
    for (c, _) in &gone {
        c.stream.shutdown(Shutdown::Both).unwrap();
    }
    drop(gone);
    let staying: BTreeSet<(String, u32)> = elements.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
    eventually("the PEs of closed connections are gone", || resolve_all(addr, &pools) == staying);
    drop(elements);
    eventually("every connection closed", || {
        let s = engine.stats();
        s.iter().map(|s| s.closed).sum::<u64>() == s.iter().map(|s| s.accepted).sum::<u64>()
    });
    eventually("no PE left", || resolve_all(addr, &pools).is_empty());
    let stats = engine.stats();
    assert!(stats.iter().map(|s| s.spilled).sum::<u64>() > 0, "the two-record queues overflowed: {stats:?}");
    for s in &stats {
        assert!(s.overflow_high_water < 10_000, "overflow bounded: {s:?}");
        assert_eq!(s.send_queue_aborts, 0);
    }
}

#[test]
fn everything_at_once_on_epoll() {
    everything_at_once(EngineKind::Epoll);
}

#[test]
fn everything_at_once_on_io_uring() {
    everything_at_once(EngineKind::Uring);
}
