//! Measures the heap bytes per registered PE with a counting global allocator.
//!
//! Run: `cargo run --release --example handlespace_memory` (prints a Markdown table).
//! Each PE has a 2-address IPv4 SCTP user transport and registers over its own connection (the
//! common case: one PE process, one ASAP connection), with a finite lifetime (so it has a timer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use rserpool::handlespace::{Handlespace, HandlespaceConfig, Registration};
use rserpool::service::ConnId;
use rserpool::time::Time;
use rserpool::wire::policy::Policy;
use rserpool::wire::transport::{Addresses, TransportProtocol, TransportRepr, TransportUse};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged
// and only adds bookkeeping of the live byte count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// Heap bytes per PE for `pools` pools of `per_pool` PEs under `policy`.
fn measure(policy: Policy, pools: u32, per_pool: u32, asap: bool) -> f64 {
    let config = HandlespaceConfig { max_pes_per_connection: 1 << 20, ..HandlespaceConfig::default() };
    let before = LIVE.load(Relaxed);
    let mut hs = Handlespace::new(config, Time::ZERO);
    let handles: Vec<Vec<u8>> = (0..pools).map(|p| format!("pool-{p:06}").into_bytes()).collect();
    let handles_bytes = LIVE.load(Relaxed) - before;
    let mut i = 0u32;
    for handle in &handles {
        for id in 1..=per_pool {
            i += 1;
            let user = transport(i);
            let asap_transport =
                asap.then(|| TransportRepr::new(TransportProtocol::Tcp, IpAddr::V4(Ipv4Addr::from(i)), 3863));
            let reg = Registration {
                handle,
                pe_id: id,
                home: 0x1122_3344,
                user_transport: &user,
                asap_transport: asap_transport.as_ref(),
                policy,
                registration_life: 30_000,
                conn: Some(ConnId { shard: 0, generation: 0, slot: i }),
            };
            hs.register(reg, Time::ZERO).expect("register");
        }
    }
    let used = LIVE.load(Relaxed) - before - handles_bytes;
    let n = f64::from(pools * per_pool);
    assert_eq!(hs.pe_count() as f64, n);
    drop(hs);
    used as f64 / n
}

fn main() {
    println!("| layout | policy | ASAP transport | bytes per PE |");
    println!("|---|---|---|---|");
    let cases: [(&str, u32, u32); 2] =
        [("1 pool x 1,000,000 PEs", 1, 1_000_000), ("100,000 pools x 10 PEs", 100_000, 10)];
    let policies = [
        ("Round Robin", Policy::RoundRobin),
        ("Random", Policy::Random),
        ("Weighted Round Robin", Policy::WeightedRoundRobin { weight: 5 }),
        ("Weighted Random", Policy::WeightedRandom { weight: 5 }),
        ("Randomized Least Used", Policy::RandomizedLeastUsed { load: 7 }),
        ("Priority", Policy::Priority { priority: 7 }),
        ("Least Used", Policy::LeastUsed { load: 7 }),
        ("Least Used with Degradation", Policy::LeastUsedDegradation { load: 7, degradation: 1 }),
        ("Priority Least Used", Policy::PriorityLeastUsed { load: 7, degradation: 1 }),
    ];
    for (layout, pools, per_pool) in cases {
        for (name, policy) in policies {
            for asap in [false, true] {
                let b = measure(policy, pools, per_pool, asap);
                println!("| {layout} | {name} | {} | {b:.0} |", if asap { "yes" } else { "no" });
            }
        }
    }
}
