//! The registrar's own work per request, without sockets: one shard serving Handle
//! Resolutions (and Registrations) for 1,000 pools of 10 PEs, through the same `Service` entry
//! point the engines call, into an outbox that keeps the answer bytes like a send buffer.
//! Measures what the protocol code adds on top of the kernel path.
//!
//! Run: `taskset -c 1 cargo bench --bench registrar`. Instruction counts per operation, which
//! do not depend on machine noise: `results/registrar/instructions.sh` (callgrind). With
//! `REGISTRAR_METRICS=N` the shard keeps metrics as `registrar --metrics` does, timing one
//! request in N; with `REGISTRAR_POOLS=N` it holds N pools of 10 (1,000 by default; 100,000
//! puts the pools and PEs a burst reads out of the caches, as in a large registrar).

use core::net::SocketAddr;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rserpool::registrar::{Registrar, RegistrarConfig, ShardMsg, ASAP};
use rserpool::service::{ConnId, Outbox, Service, ShardId, Tag};
use rserpool::time::Time;
use rserpool::wire::asap::{self, MessageType};
use rserpool::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr, Writer,
};

/// Keeps what is sent like a connection's send buffer (cleared as if written to the socket).
struct SendBuffer {
    buf: Vec<u8>,
}

impl Outbox<ShardMsg> for SendBuffer {
    fn send(&mut self, _conn: ConnId, write: &mut dyn FnMut(&mut Vec<u8>)) {
        write(&mut self.buf);
        if self.buf.len() > 1 << 16 {
            self.buf.clear();
        }
    }
    fn post(&mut self, _to: ShardId, _msg: ShardMsg) {}
    fn close(&mut self, _conn: ConnId) {}
    fn hold(&mut self, _conn: ConnId, _held: bool) {}
    fn pause(&mut self, _conn: ConnId, _paused: bool) {}
    fn input_paused(&self, _conn: ConnId) -> bool {
        false
    }
    fn connect(&mut self, _addr: SocketAddr, _tag: Tag) -> Option<ConnId> {
        None
    }
}

const PES: u32 = 10;

/// Pools in the handlespace (`REGISTRAR_POOLS`, 1,000 by default).
fn pools() -> u32 {
    std::env::var("REGISTRAR_POOLS").map_or(1000, |n| n.parse().expect("REGISTRAR_POOLS is a number"))
}

fn pool(i: u32) -> String {
    format!("pool-{i:05}")
}

fn registration(p: u32, pe: u32) -> Vec<u8> {
    let user = TransportRepr::new(
        TransportProtocol::Tcp,
        core::net::Ipv4Addr::new(10, 1, (p >> 8) as u8, p as u8).into(),
        7000 + pe as u16,
    );
    MessageRepr::new(
        Protocol::Asap,
        MessageType::Registration as u8,
        0,
        vec![
            ParamRepr::PoolHandle(pool(p).into_bytes()),
            ParamRepr::PoolElement(PoolElementRepr {
                pe_id: p * 100 + pe + 1,
                home_registrar: 0,
                registration_life: -1,
                user_transport: user,
                policy: PolicyRepr::Known(Policy::RoundRobin),
                asap_transport: None,
            }),
        ],
    )
    .to_bytes()
    .unwrap()
}

fn setup(pools: u32) -> (Registrar, SendBuffer) {
    let mut config = RegistrarConfig::new(0x1122_3344, 1);
    // The PEs name addresses other than the connection's: measure the procedures, not the
    // registration check (docs/SECURITY.md).
    config.security.registration_check = rserpool::config::RegistrationCheck::Off;
    // REGISTRAR_METRICS=N: keep metrics as `registrar --metrics` does, timing one request in N.
    if let Ok(n) = std::env::var("REGISTRAR_METRICS") {
        let n = n.parse().expect("REGISTRAR_METRICS is a number");
        config.metrics = Some(std::sync::Arc::new(rserpool::metrics::MetricsHub::with_sampling(1, n)));
    }
    let mut r = Registrar::new(&config, 0, Time::ZERO);
    let mut out = SendBuffer { buf: Vec::with_capacity(1 << 17) };
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    for p in 0..pools {
        let conn = ConnId { shard: 0, generation: 1, slot: p };
        r.on_accept(conn, ASAP, peer, Time::ZERO, &mut out);
        for pe in 0..PES {
            let m = registration(p, pe);
            assert_eq!(r.on_data(conn, &m, Time::ZERO, &mut out), m.len());
        }
    }
    assert_eq!(r.handlespace().pe_count(), (pools * PES) as usize);
    (r, out)
}

fn bench(c: &mut Criterion) {
    let pools = pools();
    let (mut r, mut out) = setup(pools);
    let conn = ConnId { shard: 0, generation: 1, slot: 0 };
    // Requests for pools in a fixed pseudo-random order (the same every run).
    let mut rng = fastrand::Rng::with_seed(7);
    let requests: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let mut b = Vec::new();
            asap::emit_handle_resolution(&mut Writer::new(&mut b), pool(rng.u32(..pools)).as_bytes(), None).unwrap();
            b
        })
        .collect();
    // A fixed count instead of criterion's timing, for instruction counts under callgrind
    // (deterministic where time is not): REGISTRAR_OP=resolve|burst|rereg|none REGISTRAR_COUNT=N.
    if let (Ok(op), Ok(n)) = (std::env::var("REGISTRAR_OP"), std::env::var("REGISTRAR_COUNT")) {
        let n: usize = n.parse().expect("REGISTRAR_COUNT is a number");
        let burst: Vec<u8> = requests[..16].concat();
        let rereg: Vec<Vec<u8>> = (0..4096).map(|k| registration(k % pools, (k / pools) % PES)).collect();
        for k in 0..n {
            match op.as_str() {
                "resolve" => black_box(r.on_data(conn, black_box(&requests[k & 4095]), Time::ZERO, &mut out)),
                "burst" => black_box(r.on_data(conn, black_box(&burst), Time::ZERO, &mut out)),
                "rereg" => {
                    let conn = ConnId { shard: 0, generation: 1, slot: (k & 4095) as u32 % pools };
                    black_box(r.on_data(conn, black_box(&rereg[k & 4095]), Time::ZERO, &mut out))
                }
                _ => 0,
            };
        }
        return;
    }
    let mut g = c.benchmark_group("registrar");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("handle-resolution-1000x10", |b| {
        b.iter(|| {
            let m = &requests[i & 4095];
            i += 1;
            black_box(r.on_data(conn, black_box(m), Time::ZERO, &mut out));
        })
    });
    // A whole pipelined burst of 16 in one call, as at depth 16.
    let burst: Vec<u8> = requests[..16].concat();
    g.throughput(Throughput::Elements(16));
    g.bench_function("handle-resolution-burst16", |b| {
        b.iter(|| black_box(r.on_data(conn, black_box(&burst), Time::ZERO, &mut out)))
    });
    // Bursts of 16 for different pools each time (4,096 bursts in turn, 65,536 pools drawn),
    // so that with many pools a burst's are not the ones the last bursts left in the caches.
    let bursts: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let mut b = Vec::new();
            for _ in 0..16 {
                let handle = pool(rng.u32(..pools));
                asap::emit_handle_resolution(&mut Writer::new(&mut b), handle.as_bytes(), None).unwrap();
            }
            b
        })
        .collect();
    let mut j = 0usize;
    g.bench_function("handle-resolution-burst16-spread", |b| {
        b.iter(|| {
            j += 1;
            black_box(r.on_data(conn, black_box(&bursts[j % bursts.len()]), Time::ZERO, &mut out))
        })
    });
    // Re-registration of an existing PE (the churn path).
    let rereg: Vec<Vec<u8>> = (0..4096).map(|k| registration(k % pools, (k / pools) % PES)).collect();
    g.throughput(Throughput::Elements(1));
    let mut k = 0usize;
    g.bench_function("reregistration", |b| {
        b.iter(|| {
            let m = &rereg[k & 4095];
            let conn = ConnId { shard: 0, generation: 1, slot: (k & 4095) as u32 % pools };
            k += 1;
            black_box(r.on_data(conn, black_box(m), Time::ZERO, &mut out));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
