//! rsplib's handlespace benchmark workload on our handlespace, printing the same lines as
//! rsplib's own bench (`../shared/anchors/rsplib-hsbench/bench.c`), so that both can be run side
//! by side (`results/handlespace/vs_rsplib.sh`).
//!
//! `cargo bench --bench rsplib_workload -- PES POOLS POLICY RESOLUTIONS ITEMS`, e.g.
//! `taskset -c 1 cargo bench --bench rsplib_workload -- 1000000 1 LeastUsed 2000000 3`.
//!
//! The workload, as rsplib's: PE `i` (id `i + 1`, owner 0x11111111) goes to pool `i % POOLS`
//! (handle `Pool-<n>`), with one IPv4 SCTP user transport, weight 1 / load 0 and a 30 s life;
//! then every PE is registered again in id order with a random 24-bit load (the lifetime timer
//! restarts); RESOLUTIONS handle resolutions of ITEMS PEs go round the pools; the owner's PEs are
//! walked 128 per chunk as an ENRP handle table export reads them, 8,192 slots at a time, each
//! such window grouped by pool (rsplib's walk is grouped by pool throughout); every PE is
//! deregistered in id order. Like the registrar, each PE also keeps its ASAP transport and the connection it
//! registered over (one connection per PE), and a resolution applies the registrar's
//! max-increment of 1 (rsplib's bench passes 0, which rotates nothing).
//!
//! With `RSPLIB_WORKLOAD_FILL_ONLY` set in the environment it stops after the fill (for profiling
//! the fill alone with perf or callgrind; it then registers more PEs until the PE index grows
//! and times that registration, which is what a growth holds a shard for); with
//! `RSPLIB_WORKLOAD_RESERVE` set the handlespace first reserves room for PES PEs
//! (`Handlespace::reserve`, what the registrar's `limits.expected_pes` does at start: the PE
//! index never grows and the slots' memory is taken up front), which rsplib's bench has no
//! counterpart of (its trees do not grow in steps, and it allocates node by node).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use rserpool::enrp::EXPORT_WINDOW;
use rserpool::handlespace::{group_by_pool, Handlespace, HandlespaceConfig, PeKey, Registration, TableCursor};
use rserpool::service::ConnId;
use rserpool::time::Time;
use rserpool::wire::policy::{Policy, PolicyType};
use rserpool::wire::transport::{TransportProtocol, TransportRepr};

const OWNER: u32 = 0x1111_1111;

fn policy_type(name: &str) -> Option<PolicyType> {
    Some(match name {
        "RoundRobin" => PolicyType::ROUND_ROBIN,
        "WeightedRoundRobin" => PolicyType::WEIGHTED_ROUND_ROBIN,
        "Random" => PolicyType::RANDOM,
        "WeightedRandom" => PolicyType::WEIGHTED_RANDOM,
        "Priority" => PolicyType::PRIORITY,
        "LeastUsed" => PolicyType::LEAST_USED,
        "LeastUsedDegradation" => PolicyType::LEAST_USED_DEGRADATION,
        "PriorityLeastUsed" => PolicyType::PRIORITY_LEAST_USED,
        "RandomizedLeastUsed" => PolicyType::RANDOMIZED_LEAST_USED,
        _ => return None,
    })
}

/// rsplib's PoolPolicySettings with weight 1, the given load, everything else 0, as our policy.
fn policy(t: PolicyType, load: u32) -> Policy {
    let values: &[u32] = match t {
        PolicyType::WEIGHTED_ROUND_ROBIN | PolicyType::WEIGHTED_RANDOM => &[1],
        PolicyType::PRIORITY => &[0],
        PolicyType::LEAST_USED | PolicyType::RANDOMIZED_LEAST_USED => &[load],
        PolicyType::LEAST_USED_DEGRADATION | PolicyType::PRIORITY_LEAST_USED => &[load, 0],
        _ => &[],
    };
    Policy::from_values(t, values).expect("known policy")
}

fn conn(i: usize) -> Option<ConnId> {
    Some(ConnId { shard: 0, generation: 0, slot: i as u32 })
}

/// The owner's PEs as an ENRP Handle Table export walks them: [`EXPORT_WINDOW`] slots at a
/// time, what was read grouped by pool, then taken `chunk` at a time (each chunk ends by reading
/// its last PE's handle and id, as rsplib's does); returns how many were walked.
fn walk(hs: &Handlespace, owner: u32, chunk: usize) -> usize {
    let mut window = Vec::with_capacity(EXPORT_WINDOW);
    let (mut cursor, mut total) = (Some(TableCursor::START), 0);
    while let Some(from) = cursor {
        window.clear();
        cursor = hs.table_pes(Some(owner), from, EXPORT_WINDOW, &mut window);
        group_by_pool(&mut window);
        for c in window.chunks(chunk) {
            let (_, last) = *c.last().expect("non-empty chunk");
            black_box((hs.pe_handle(last), hs.pe(last).map(|pe| pe.id)));
            total += c.len();
        }
    }
    total
}

/// Resident set size of this process (Linux), kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let n: usize = arg(0, "10000").parse().expect("PES");
    let pools: usize = arg(1, "1").parse().expect("POOLS");
    let pol = arg(2, "RoundRobin");
    let resolutions: usize = arg(3, "1000000").parse().expect("RESOLUTIONS");
    let items: usize = arg(4, "3").parse().expect("ITEMS");
    let Some(t) = policy_type(&pol) else {
        eprintln!("bad policy");
        std::process::exit(1);
    };

    let config = HandlespaceConfig {
        max_pes: 1 << 26,
        max_pes_per_pool: 1 << 26,
        max_pes_per_connection: 1 << 20,
        max_increment: 1,
        ..HandlespaceConfig::default()
    };
    let mut hs = Handlespace::new(config, Time::ZERO);
    if std::env::var_os("RSPLIB_WORKLOAD_RESERVE").is_some() {
        let t0 = Instant::now();
        hs.reserve(n);
        eprintln!(
            "{pol:<12} N={n:<7} pools={pools:<5} reserve {:.3} s (not in the fill's time)",
            t0.elapsed().as_secs_f64()
        );
    }
    let handles: Vec<Vec<u8>> = (0..pools).map(|i| format!("Pool-{i}").into_bytes()).collect();
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let user = TransportRepr::new(TransportProtocol::Sctp, addr, 1234);
    let now = Time::ZERO;
    let reg = |i: usize, load: u32| Registration {
        handle: &handles[i % pools],
        pe_id: (i + 1) as u32,
        home: OWNER,
        user_transport: &user,
        asap_transport: Some(&user),
        policy: policy(t, load),
        registration_life: 30_000,
        conn: conn(i),
    };

    let t0 = Instant::now();
    for i in 0..n {
        if hs.register(reg(i, 0), now).is_err() {
            eprintln!("reg failed at {i}");
            std::process::exit(1);
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!("{pol:<12} N={n:<7} pools={pools:<5} register      {:10.0} ops/s", n as f64 / s);
    eprintln!("{pol:<12} N={n:<7} pools={pools:<5} RSS after fill {} kB, fill {s:.3} s", rss_kb());
    if std::env::var_os("RSPLIB_WORKLOAD_FILL_ONLY").is_some() {
        // What one growth of the PE index holds a registrar shard for (every PE rehashed into
        // twice the room): the registration that grows it, timed alone.
        let capacity = hs.pe_capacity();
        let mut grown = None;
        for i in n.. {
            let t0 = Instant::now();
            hs.register(reg(i, 0), now).expect("room for more");
            if hs.pe_capacity() != capacity {
                grown = Some(t0.elapsed().as_secs_f64());
                break;
            }
        }
        if let Some(s) = grown {
            eprintln!("{pol:<12} N={n:<7} pools={pools:<5} PE index rebuild {s:.3} s");
        }
        return;
    }

    let mut rng = fastrand::Rng::with_seed(1);
    let t0 = Instant::now();
    for i in 0..n {
        black_box(hs.register(reg(i, rng.u32(..) & 0xff_ffff), now).is_ok());
    }
    let s = t0.elapsed().as_secs_f64();
    println!("{pol:<12} N={n:<7} pools={pools:<5} re-register   {:10.0} ops/s", n as f64 / s);

    let mut out: Vec<PeKey> = Vec::with_capacity(items);
    let t0 = Instant::now();
    for i in 0..resolutions {
        black_box(hs.resolve(&handles[i % pools], items, &mut out).is_ok());
        black_box(&out);
    }
    let s = t0.elapsed().as_secs_f64();
    println!("{pol:<12} N={n:<7} pools={pools:<5} handle-res({items}) {:9.0} ops/s", resolutions as f64 / s);

    let t0 = Instant::now();
    let total = walk(&hs, OWNER, 128);
    let s = t0.elapsed().as_secs_f64();
    println!("{pol:<12} N={n:<7} pools={pools:<5} table-export  {:10.0} PEs/s ({total} PEs)", total as f64 / s);

    let t0 = Instant::now();
    for i in 0..n {
        black_box(hs.deregister(&handles[i % pools], (i + 1) as u32, conn(i)).is_ok());
    }
    let s = t0.elapsed().as_secs_f64();
    println!("{pol:<12} N={n:<7} pools={pools:<5} deregister    {:10.0} ops/s", n as f64 / s);
    assert_eq!(hs.pe_count(), 0);
}
