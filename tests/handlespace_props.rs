//! Property test: after any sequence of handlespace operations (register, update, deregister,
//! resolve, expire, set owner, takeover, connection loss, unreachable reports), every owner's
//! incremental PE checksum equals a from-scratch recomputation, the owner index lists exactly
//! the PEs the pools hold, and every internal index is consistent.
//!
//! The runner uses a fixed seed ([`SEED`]), so every run explores the same cases; a failure
//! prints the minimal sequence of operations.

use core::net::{IpAddr, Ipv4Addr};
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use rserpool::handlespace::checksum::pe_checksum;
use rserpool::handlespace::{Handlespace, HandlespaceConfig, Registration, TableCursor};
use rserpool::service::ConnId;
use rserpool::time::Time;
use rserpool::wire::policy::Policy;
use rserpool::wire::transport::{Addresses, TransportProtocol, TransportRepr, TransportUse};

const SEED: [u8; 32] = *b"rserpool handlespace proptest 01";
const HANDLES: [&[u8]; 4] = [b"a", b"echo", b"db.shard-07", b"org.example.payments.settlement.eu-west1"];
const OWNERS: [u32; 3] = [0x11223344, 0x5a6b7c8d, 7];

#[derive(Clone, Debug)]
enum Op {
    Register { h: usize, id: u32, owner: usize, conn: Option<u32>, addr: u8, policy: u8, value: u32, life: i32 },
    Deregister { h: usize, id: u32, conn: Option<u32> },
    Resolve { h: usize, n: usize },
    Advance { ms: u64 },
    SetOwner { h: usize, id: u32, owner: usize },
    TakeOver { from: usize, to: usize },
    DropConn { conn: u32 },
    Unreachable { h: usize, id: u32 },
    Reserve { n: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HANDLES.len();
    let id = 1u32..10;
    let owner = 0..OWNERS.len();
    let conn = prop::option::of(0u32..3);
    prop_oneof![
        6 => (h.clone(), id.clone(), owner.clone(), conn.clone(), 0u8..3, 0u8..9, any::<u32>(), -1i32..3000).prop_map(
            |(h, id, owner, conn, addr, policy, value, life)| Op::Register { h, id, owner, conn, addr, policy, value, life }
        ),
        2 => (h.clone(), id.clone(), conn.clone()).prop_map(|(h, id, conn)| Op::Deregister { h, id, conn }),
        2 => (h.clone(), 0usize..6).prop_map(|(h, n)| Op::Resolve { h, n }),
        2 => (0u64..2000).prop_map(|ms| Op::Advance { ms }),
        1 => (h.clone(), id.clone(), owner.clone()).prop_map(|(h, id, owner)| Op::SetOwner { h, id, owner }),
        1 => (owner.clone(), owner).prop_map(|(from, to)| Op::TakeOver { from, to }),
        1 => (0u32..3).prop_map(|conn| Op::DropConn { conn }),
        1 => (h, id).prop_map(|(h, id)| Op::Unreachable { h, id }),
        1 => (0usize..100).prop_map(|n| Op::Reserve { n }),
    ]
}

fn conn(c: Option<u32>) -> Option<ConnId> {
    c.map(|slot| ConnId { shard: 0, generation: 0, slot })
}

fn policy(kind: u8, v: u32) -> Policy {
    match kind {
        0 => Policy::RoundRobin,
        1 => Policy::WeightedRoundRobin { weight: v % 4 },
        2 => Policy::Random,
        3 => Policy::WeightedRandom { weight: v % 4 },
        4 => Policy::Priority { priority: v % 3 },
        5 => Policy::LeastUsed { load: v % 3 },
        6 => Policy::LeastUsedDegradation { load: v, degradation: v >> 3 },
        7 => Policy::PriorityLeastUsed { load: v % 5, degradation: v % 7 },
        _ => Policy::RandomizedLeastUsed { load: v },
    }
}

fn transport(addr: u8) -> TransportRepr {
    let mut addresses = Addresses::new();
    addresses.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, addr)));
    addresses.push(IpAddr::V4(Ipv4Addr::new(198, 51, 100, addr)));
    TransportRepr {
        protocol: TransportProtocol::Sctp,
        port: 7,
        transport_use: TransportUse::DataOnly,
        service_code: 0,
        addresses,
    }
}

/// The owner index and checksums, recomputed from the pools alone, must match the incremental ones.
fn check(hs: &Handlespace) -> Result<(), TestCaseError> {
    hs.validate().map_err(TestCaseError::fail)?;
    let mut by_owner: BTreeMap<u32, Vec<(Vec<u8>, u32)>> = BTreeMap::new();
    let mut keys_by_owner: BTreeMap<u32, BTreeSet<_>> = BTreeMap::new();
    let mut total = 0;
    for (pool_key, pool) in hs.pools() {
        for key in hs.pool_pes(pool_key) {
            let pe = hs.pe(key).ok_or_else(|| TestCaseError::fail("stale key in pool"))?;
            by_owner.entry(pe.home).or_default().push((pool.handle().to_vec(), pe.id));
            keys_by_owner.entry(pe.home).or_default().insert(key);
            total += 1;
        }
    }
    prop_assert_eq!(total, hs.pe_count());
    for owner in OWNERS.iter().copied().chain(by_owner.keys().copied()) {
        let pes = by_owner.get(&owner).map(Vec::as_slice).unwrap_or(&[]);
        let scratch = pe_checksum(pes.iter().map(|(h, id)| (h.as_slice(), *id)));
        prop_assert_eq!(hs.owner_checksum(owner), scratch, "owner {:#x}", owner);
        prop_assert_eq!(hs.owner_pe_count(owner), pes.len());
        let listed: BTreeSet<_> = hs.owner_pes(owner).collect();
        let expected = keys_by_owner.get(&owner).cloned().unwrap_or_default();
        prop_assert_eq!(listed, expected.clone());
        // A table export's walk, three slots at a time: each of the owner's PEs once, in slot
        // order, with its pool.
        let (mut walked, mut cursor) = (Vec::new(), Some(TableCursor::START));
        while let Some(from) = cursor {
            cursor = hs.table_pes(Some(owner), from, 3, &mut walked);
        }
        prop_assert!(walked.windows(2).all(|w| w[0].1 < w[1].1));
        for &(pool, key) in &walked {
            prop_assert_eq!(hs.pe_pool(key), Some(pool));
        }
        let walked_set: BTreeSet<_> = walked.iter().map(|e| e.1).collect();
        prop_assert_eq!(walked_set.len(), walked.len());
        prop_assert_eq!(walked_set, expected);
    }
    prop_assert_eq!(hs.owners().count(), by_owner.len());
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = HandlespaceConfig { max_registration_life: 2500, ..HandlespaceConfig::default() };
    let mut hs = Handlespace::new(config, Time::ZERO);
    let mut now = Time::ZERO;
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Register { h, id, owner, conn: c, addr, policy: p, value, life } => {
                let user = transport(addr);
                let reg = Registration {
                    handle: HANDLES[h],
                    pe_id: id,
                    home: OWNERS[owner],
                    user_transport: &user,
                    asap_transport: None,
                    policy: policy(p % 3 + (h as u8 % 3) * 3, value),
                    registration_life: life,
                    conn: conn(c),
                };
                let before = hs.lookup(HANDLES[h], id);
                match hs.register(reg, now) {
                    Ok(r) => {
                        prop_assert_eq!(r.added, before.is_none());
                        prop_assert_eq!(hs.pe(r.pe).map(|pe| pe.home), Some(OWNERS[owner]));
                    }
                    Err(e) => prop_assert!(e.cause_code().0 != 0),
                }
            }
            Op::Deregister { h, id, conn: c } => {
                let _ = hs.deregister(HANDLES[h], id, conn(c));
            }
            Op::Resolve { h, n } => {
                if let Ok(pool) = hs.resolve(HANDLES[h], n, &mut out) {
                    let size = hs.pool(pool).map_or(0, |p| p.pe_count());
                    prop_assert!(out.len() <= n.min(size));
                    let distinct: BTreeSet<_> = out.iter().collect();
                    prop_assert_eq!(distinct.len(), out.len());
                }
            }
            Op::Advance { ms } => {
                now = now.add_millis(ms);
                hs.expire(now, usize::MAX, |_, _, _| {});
                for (pool_key, _) in hs.pools() {
                    for key in hs.pool_pes(pool_key) {
                        if let Some(t) = hs.pe_expiry(key) {
                            prop_assert!(t > now, "PE should have expired at {:?} (now {:?})", t, now);
                        }
                    }
                }
            }
            Op::SetOwner { h, id, owner } => {
                if let Some(k) = hs.lookup(HANDLES[h], id) {
                    hs.set_owner(k, OWNERS[owner]);
                }
            }
            Op::TakeOver { from, to } => {
                let n = hs.owner_pe_count(OWNERS[from]);
                let moved = hs.take_over(OWNERS[from], OWNERS[to]);
                prop_assert_eq!(moved, if from == to { 0 } else { n });
            }
            Op::DropConn { conn: c } => {
                let id = conn(Some(c)).unwrap();
                let n = hs.connection_pe_count(id);
                prop_assert_eq!(hs.remove_connection(id, |_, pe| assert_eq!(pe.conn(), Some(id))), n);
            }
            Op::Unreachable { h, id } => {
                let _ = hs.report_unreachable(HANDLES[h], id);
            }
            Op::Reserve { n } => hs.reserve(n),
        }
        check(&hs)?;
    }
    Ok(())
}

#[test]
fn incremental_checksums_and_indexes_match_recomputation() {
    let config = Config { cases: 512, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let result = runner.run(&prop::collection::vec(op(), 1..120), run);
    if let Err(e) = result {
        panic!("{e}");
    }
}
