//! Handlespace benches (issue 4): resolve (N = 1 and N = 3) under every policy, register,
//! re-register, deregister, expiry, owner checksum, iterating an owner's PEs and takeover, at
//! one pool of 10, 1,000, 100,000 and 1,000,000 PEs and at 100,000 pools of 10 PEs.
//!
//! Run pinned: `taskset -c 1 cargo bench --bench handlespace` (filters work as usual, e.g.
//! `-- resolve_n3`). Every PE has a 2-address IPv4 SCTP user transport and its own connection.
//! `results/handlespace/report.py` turns the criterion output into the table and the plot.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use rserpool::handlespace::{Handlespace, HandlespaceConfig, PeKey, Registration};
use rserpool::service::ConnId;
use rserpool::time::Time;
use rserpool::wire::policy::{Policy, PolicyType};
use rserpool::wire::transport::{Addresses, TransportProtocol, TransportRepr, TransportUse};

const OWNER: u32 = 0x1122_3344;
const OTHER: u32 = 0x5a6b_7c8d;

/// How the PEs are spread: `pools` pools of `per_pool` PEs.
#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    pools: u32,
    per_pool: u32,
}

const LAYOUTS: [Layout; 5] = [
    Layout { name: "1x10", pools: 1, per_pool: 10 },
    Layout { name: "1x1000", pools: 1, per_pool: 1_000 },
    Layout { name: "1x100000", pools: 1, per_pool: 100_000 },
    Layout { name: "1x1000000", pools: 1, per_pool: 1_000_000 },
    Layout { name: "100000x10", pools: 100_000, per_pool: 10 },
];

const POLICIES: [PolicyType; 9] = [
    PolicyType::ROUND_ROBIN,
    PolicyType::WEIGHTED_ROUND_ROBIN,
    PolicyType::RANDOM,
    PolicyType::WEIGHTED_RANDOM,
    PolicyType::PRIORITY,
    PolicyType::LEAST_USED,
    PolicyType::LEAST_USED_DEGRADATION,
    PolicyType::PRIORITY_LEAST_USED,
    PolicyType::RANDOMIZED_LEAST_USED,
];

fn short(t: PolicyType) -> &'static str {
    match t {
        PolicyType::ROUND_ROBIN => "rr",
        PolicyType::WEIGHTED_ROUND_ROBIN => "wrr",
        PolicyType::RANDOM => "rand",
        PolicyType::WEIGHTED_RANDOM => "wrand",
        PolicyType::PRIORITY => "prio",
        PolicyType::LEAST_USED => "lu",
        PolicyType::LEAST_USED_DEGRADATION => "lud",
        PolicyType::PRIORITY_LEAST_USED => "plu",
        _ => "rlu",
    }
}

/// Policy values varying with `i`: weights 1..=10, 8 priorities, 100 load levels (so equal
/// values exist and rotate, as in a real pool).
fn policy(t: PolicyType, i: u32) -> Policy {
    let load = (i.wrapping_mul(7919) % 100) * (u32::MAX / 100);
    let v = match t {
        PolicyType::WEIGHTED_ROUND_ROBIN | PolicyType::WEIGHTED_RANDOM => vec![1 + i % 10],
        PolicyType::PRIORITY => vec![i % 8],
        PolicyType::LEAST_USED | PolicyType::RANDOMIZED_LEAST_USED => vec![load],
        PolicyType::LEAST_USED_DEGRADATION | PolicyType::PRIORITY_LEAST_USED => vec![load, u32::MAX / 1000],
        _ => vec![],
    };
    Policy::from_values(t, &v).expect("known policy")
}

fn transport(i: u32) -> TransportRepr {
    let mut addresses = Addresses::new();
    addresses.push(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)));
    addresses.push(IpAddr::V4(Ipv4Addr::from(0xac10_0000 | i)));
    TransportRepr {
        protocol: TransportProtocol::Sctp,
        port: 9000,
        transport_use: TransportUse::DataOnly,
        service_code: 0,
        addresses,
    }
}

fn handles(layout: Layout) -> Vec<Vec<u8>> {
    (0..layout.pools).map(|p| format!("pool-{p:06}").into_bytes()).collect()
}

/// PE `id` (1-based within its pool) of pool `handle`, to be registered with the transport
/// its registration borrows; `seq` makes transports and connections unique.
struct NewPe<'a> {
    handle: &'a [u8],
    id: u32,
    seq: u32,
    policy: Policy,
    life: i32,
    user: TransportRepr,
}

fn new_pe(handle: &[u8], id: u32, seq: u32, t: PolicyType, life: i32) -> NewPe<'_> {
    NewPe { handle, id, seq, policy: policy(t, seq), life, user: transport(seq) }
}

impl NewPe<'_> {
    fn reg(&self) -> Registration<'_> {
        Registration {
            handle: self.handle,
            pe_id: self.id,
            home: OWNER,
            user_transport: &self.user,
            asap_transport: None,
            policy: self.policy,
            registration_life: self.life,
            conn: Some(ConnId { shard: 0, generation: 0, slot: self.seq }),
        }
    }
}

fn build(layout: Layout, t: PolicyType, handles: &[Vec<u8>]) -> Handlespace {
    let config = HandlespaceConfig { max_pes_per_connection: 1 << 20, ..HandlespaceConfig::default() };
    let mut hs = Handlespace::new(config, Time::ZERO);
    let mut seq = 0;
    for handle in handles {
        for id in 1..=layout.per_pool {
            seq += 1;
            hs.register(new_pe(handle, id, seq, t, 86_400_000).reg(), Time::ZERO).expect("register");
        }
    }
    hs
}

/// Shorter runs for the big sizes keep the whole bench well under 15 minutes.
fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
    layout: Layout,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300));
    let big = layout.pools * layout.per_pool >= 100_000;
    g.measurement_time(Duration::from_millis(if big { 1500 } else { 1000 }));
    g.sample_size(if big { 10 } else { 20 });
    g
}

/// Pool order for the many-pools layout: a fixed pseudo-random walk over every pool.
fn next_pool(i: &mut usize, n: usize) -> usize {
    *i = (*i + 7_919) % n;
    *i
}

fn resolve(c: &mut Criterion) {
    for layout in LAYOUTS {
        let handles = handles(layout);
        for t in POLICIES {
            let mut hs = build(layout, t, &handles);
            let mut out: Vec<PeKey> = Vec::with_capacity(8);
            for n in [1usize, 3] {
                let mut g = configure(c, &format!("resolve_n{n}"), layout);
                let mut i = 0;
                g.bench_function(BenchmarkId::new(short(t), layout.name), |b| {
                    b.iter(|| {
                        let h = &handles[next_pool(&mut i, handles.len())];
                        black_box(hs.resolve(h, n, &mut out).is_ok());
                        black_box(&out);
                    })
                });
                g.finish();
            }
        }
    }
}

/// Batch size of the register/deregister/expiry benches: PEs added to (or removed from) the
/// layout per timed batch, undone untimed afterwards, so the size stays near the nominal one.
fn batch(layout: Layout) -> u32 {
    (layout.pools * layout.per_pool / 10).clamp(1, 1000)
}

/// Registrations of `n` new PEs (ids above the layout's), spread over the pools.
fn new_regs<'a>(
    handles: &'a [Vec<u8>],
    layout: Layout,
    t: PolicyType,
    n: u32,
    life: i32,
    pick: &mut usize,
) -> Vec<NewPe<'a>> {
    (0..n)
        .map(|k| {
            let p = next_pool(pick, handles.len());
            new_pe(&handles[p], layout.per_pool + 1 + k, 10_000_000 + k, t, life)
        })
        .collect()
}

fn register_deregister(c: &mut Criterion) {
    for layout in LAYOUTS {
        let handles = handles(layout);
        for t in [PolicyType::ROUND_ROBIN, PolicyType::WEIGHTED_RANDOM, PolicyType::LEAST_USED] {
            let mut hs = build(layout, t, &handles);
            let b_n = batch(layout);
            let mut g = configure(c, "register", layout);
            let mut pick = 0;
            g.bench_function(BenchmarkId::new(short(t), layout.name), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(u64::from(b_n)) as u32;
                        let start = pick;
                        let regs = new_regs(&handles, layout, t, n, 30_000, &mut pick);
                        let t0 = Instant::now();
                        for r in &regs {
                            black_box(hs.register(r.reg(), Time::ZERO).is_ok());
                        }
                        total += t0.elapsed();
                        let mut undo = start;
                        for k in 0..n {
                            let p = next_pool(&mut undo, handles.len());
                            hs.deregister(
                                &handles[p],
                                layout.per_pool + 1 + k,
                                Some(ConnId { shard: 0, generation: 0, slot: 10_000_000 + k }),
                            )
                            .ok();
                        }
                        done += u64::from(n);
                    }
                    total
                })
            });
            g.finish();

            let mut g = configure(c, "deregister", layout);
            g.bench_function(BenchmarkId::new(short(t), layout.name), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(u64::from(b_n)) as u32;
                        let start = pick;
                        for r in new_regs(&handles, layout, t, n, 30_000, &mut pick) {
                            hs.register(r.reg(), Time::ZERO).ok();
                        }
                        let mut undo = start;
                        let t0 = Instant::now();
                        for k in 0..n {
                            let p = next_pool(&mut undo, handles.len());
                            let conn = Some(ConnId { shard: 0, generation: 0, slot: 10_000_000 + k });
                            black_box(hs.deregister(&handles[p], layout.per_pool + 1 + k, conn).is_ok());
                        }
                        total += t0.elapsed();
                        done += u64::from(n);
                    }
                    total
                })
            });
            g.finish();

            // Re-registration of existing PEs (same connection): a new load/weight and lifetime.
            let mut g = configure(c, "reregister", layout);
            let mut seq = 0u32;
            let per = layout.per_pool;
            g.bench_function(BenchmarkId::new(short(t), layout.name), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(1000) as u32;
                        let regs: Vec<NewPe<'_>> = (0..n)
                            .map(|_| {
                                seq = (seq + 7_919) % (layout.pools * per);
                                let (p, id) = (seq / per, seq % per + 1);
                                let mut r = new_pe(&handles[p as usize], id, seq + 1, t, 3_600_000);
                                r.policy = policy(t, seq.wrapping_mul(31));
                                r
                            })
                            .collect();
                        let t0 = Instant::now();
                        for r in &regs {
                            black_box(hs.register(r.reg(), Time::ZERO).is_ok());
                        }
                        total += t0.elapsed();
                        done += u64::from(n);
                    }
                    total
                })
            });
            g.finish();
        }
    }
}

fn expiry(c: &mut Criterion) {
    for layout in LAYOUTS {
        let handles = handles(layout);
        let t = PolicyType::ROUND_ROBIN;
        let mut hs = build(layout, t, &handles);
        let b_n = batch(layout);
        let mut g = configure(c, "expire", layout);
        let mut pick = 0;
        let mut now = Time::ZERO;
        g.bench_function(BenchmarkId::new(short(t), layout.name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(u64::from(b_n)) as u32;
                    for r in new_regs(&handles, layout, t, n, 1, &mut pick) {
                        hs.register(r.reg(), now).ok();
                    }
                    now = now.add_millis(1);
                    let t0 = Instant::now();
                    let removed = hs.expire(now, usize::MAX, |_, h, pe| {
                        black_box((h, pe));
                    });
                    total += t0.elapsed();
                    assert_eq!(removed, n as usize);
                    done += u64::from(n);
                }
                total
            })
        });
        g.finish();
    }
}

fn owners(c: &mut Criterion) {
    for layout in LAYOUTS {
        let handles = handles(layout);
        let mut hs = build(layout, PolicyType::ROUND_ROBIN, &handles);
        let total = u64::from(layout.pools * layout.per_pool);

        let mut g = configure(c, "owner_checksum", layout);
        g.bench_function(BenchmarkId::new("rr", layout.name), |b| {
            b.iter(|| black_box(hs.owner_checksum(black_box(OWNER))))
        });
        g.finish();

        let mut g = configure(c, "owner_iter", layout);
        g.throughput(Throughput::Elements(total));
        g.bench_function(BenchmarkId::new("rr", layout.name), |b| {
            b.iter(|| {
                let mut x = 0u32;
                for k in hs.owner_pes(OWNER) {
                    x ^= hs.pe(k).map_or(0, |pe| pe.id);
                }
                black_box(x)
            })
        });
        g.finish();

        let mut g = configure(c, "take_over", layout);
        g.throughput(Throughput::Elements(total));
        let mut from = OWNER;
        g.bench_function(BenchmarkId::new("rr", layout.name), |b| {
            b.iter(|| {
                let to = if from == OWNER { OTHER } else { OWNER };
                black_box(hs.take_over(from, to));
                from = to;
            })
        });
        g.finish();
    }
}

criterion_group!(benches, resolve, register_deregister, expiry, owners);
criterion_main!(benches);
