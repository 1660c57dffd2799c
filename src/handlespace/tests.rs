//! Behaviour of the handlespace: registration rules, every policy, lifetimes, connections,
//! unreachable reports and owners. Seeds are fixed (the config's default seed).

use core::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::wire::cause::CauseCode;
use crate::wire::policy::PolicyType;
use crate::wire::transport::{Addresses, TransportProtocol, TransportUse};

const ME: u32 = 0x11223344;
const PEER: u32 = 0x5a6b7c8d;

fn conn(slot: u32) -> Option<ConnId> {
    Some(ConnId { shard: 0, generation: 1, slot })
}

fn sctp(a: u8, b: u8) -> TransportRepr {
    let mut addresses = Addresses::new();
    addresses.push(IpAddr::V4(Ipv4Addr::new(10, 0, 0, a)));
    addresses.push(IpAddr::V4(Ipv4Addr::new(10, 0, 1, b)));
    TransportRepr {
        protocol: TransportProtocol::Sctp,
        port: 8000,
        transport_use: TransportUse::DataOnly,
        service_code: 0,
        addresses,
    }
}

/// A [`Registration`] that owns its transports, for tests to build and change one in place.
#[derive(Clone)]
struct Reg<'a> {
    handle: &'a [u8],
    pe_id: u32,
    home: u32,
    user_transport: TransportRepr,
    asap_transport: Option<TransportRepr>,
    policy: Policy,
    registration_life: i32,
    conn: Option<ConnId>,
}

impl Reg<'_> {
    /// The registration, borrowing the transports.
    fn get(&self) -> Registration<'_> {
        Registration {
            handle: self.handle,
            pe_id: self.pe_id,
            home: self.home,
            user_transport: &self.user_transport,
            asap_transport: self.asap_transport.as_ref(),
            policy: self.policy,
            registration_life: self.registration_life,
            conn: self.conn,
        }
    }
}

fn reg(handle: &[u8], pe_id: u32, policy: Policy, conn: Option<ConnId>) -> Reg<'_> {
    Reg {
        handle,
        pe_id,
        home: ME,
        user_transport: sctp(pe_id as u8, (pe_id >> 8) as u8),
        asap_transport: None,
        policy,
        registration_life: 30_000,
        conn,
    }
}

fn hs() -> Handlespace {
    Handlespace::new(HandlespaceConfig::default(), Time::ZERO)
}

/// Registers PEs 1..=n over connection 1 with the policy `f(id)`.
fn pool_of(hs: &mut Handlespace, n: u32, f: impl Fn(u32) -> Policy) {
    for id in 1..=n {
        hs.register(reg(b"pool", id, f(id), conn(1)).get(), Time::ZERO).unwrap();
    }
}

fn ids(hs: &Handlespace, keys: &[PeKey]) -> Vec<u32> {
    keys.iter().map(|k| hs.pe(*k).unwrap().id).collect()
}

fn resolve_ids(hs: &mut Handlespace, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    hs.resolve(b"pool", n, &mut out).unwrap();
    ids(hs, &out)
}

/// Counts how often each PE id is the first of a response over `rounds` resolutions of `n`.
fn first_counts(hs: &mut Handlespace, rounds: usize, n: usize) -> std::collections::BTreeMap<u32, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..rounds {
        let got = resolve_ids(hs, n);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "duplicate PE in {got:?}");
        *counts.entry(got[0]).or_insert(0) += 1;
    }
    counts
}

#[test]
fn register_creates_pool_and_pe() {
    let mut hs = hs();
    let r = hs.register(reg(b"echo", 7, Policy::RoundRobin, conn(1)).get(), Time(5)).unwrap();
    assert!(r.added);
    assert_eq!((r.previous_owner, r.previous_conn), (None, None));
    assert_eq!((hs.pool_count(), hs.pe_count()), (1, 1));
    let pool = hs.pool(r.pool).unwrap();
    assert_eq!(pool.handle(), b"echo");
    assert_eq!(pool.policy_type(), PolicyType::ROUND_ROBIN);
    assert_eq!(pool.user_transport_protocol(), TransportProtocol::Sctp);
    assert_eq!(hs.lookup(b"echo", 7), Some(r.pe));
    assert_eq!(hs.pe_handle(r.pe), Some(&b"echo"[..]));
    assert_eq!(hs.pe_pool(r.pe), Some(r.pool));
    assert_eq!(hs.pe_expiry(r.pe), Some(Time(30_005)));
    let pe = hs.pe(r.pe).unwrap();
    assert_eq!((pe.id, pe.home, pe.registration_life, pe.conn()), (7, ME, 30_000, conn(1)));
    assert_eq!(pe.user_transport(), sctp(7, 0));
    hs.validate().unwrap();
}

#[test]
fn pool_consistency_is_enforced() {
    let mut hs = hs();
    hs.register(reg(b"p", 1, Policy::LeastUsed { load: 0 }, conn(1)).get(), Time::ZERO).unwrap();

    let e = hs.register(reg(b"p", 2, Policy::RoundRobin, conn(1)).get(), Time::ZERO).unwrap_err();
    assert_eq!(e, RegisterError::InconsistentPolicy { pool: PolicyType::LEAST_USED, found: PolicyType::ROUND_ROBIN });
    assert_eq!(e.cause_code(), CauseCode::INCONSISTENT_POOLING_POLICY);

    let mut r = reg(b"p", 2, Policy::LeastUsed { load: 0 }, conn(1));
    r.user_transport.protocol = TransportProtocol::Tcp;
    let e = hs.register(r.get(), Time::ZERO).unwrap_err();
    assert_eq!(e.cause_code(), CauseCode::INCONSISTENT_TRANSPORT_TYPE);

    let mut r = reg(b"p", 2, Policy::LeastUsed { load: 0 }, conn(1));
    r.user_transport.transport_use = TransportUse::DataPlusControl;
    let e = hs.register(r.get(), Time::ZERO).unwrap_err();
    assert_eq!(e.cause_code(), CauseCode::INCONSISTENT_DATA_CONTROL);

    // Re-registering the only PE with another policy is rejected too: the pool keeps its type.
    let e = hs.register(reg(b"p", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap_err();
    assert_eq!(e.cause_code(), CauseCode::INCONSISTENT_POOLING_POLICY);
    assert_eq!(hs.pe_count(), 1);
    hs.validate().unwrap();
}

#[test]
fn re_registration_updates_in_place() {
    let mut hs = hs();
    pool_of(&mut hs, 3, |_| Policy::RoundRobin);
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    // Re-register PE 2 with a new port and lifetime: same key, same place in the rotation.
    let before = hs.lookup(b"pool", 2).unwrap();
    let mut r = reg(b"pool", 2, Policy::RoundRobin, conn(1));
    r.user_transport.port = 9000;
    r.registration_life = 60_000;
    let out = hs.register(r.get(), Time(1000)).unwrap();
    assert!(!out.added);
    assert_eq!(out.pe, before);
    assert_eq!((out.previous_owner, out.previous_conn), (None, None));
    assert_eq!(hs.pe(out.pe).unwrap().user_transport().port, 9000);
    assert_eq!(hs.pe_expiry(out.pe), Some(Time(61_000)));
    assert_eq!(resolve_ids(&mut hs, 3), [2, 3, 1]);
    assert_eq!(hs.pe_count(), 3);
    hs.validate().unwrap();
}

#[test]
fn same_pe_from_elsewhere_moves_here() {
    let mut hs = hs();
    // Learnt from a peer first (no connection, owner PEER).
    let mut r = reg(b"p", 9, Policy::RoundRobin, None);
    r.home = PEER;
    let first = hs.register(r.get(), Time::ZERO).unwrap();
    // Now it registers here over connection 4 with the same addresses: moved.
    let moved = hs.register(reg(b"p", 9, Policy::RoundRobin, conn(4)).get(), Time::ZERO).unwrap();
    assert!(!moved.added);
    assert_eq!(moved.pe, first.pe);
    assert_eq!(moved.previous_owner, Some(PEER));
    assert_eq!(moved.previous_conn, Some(None));
    assert_eq!(hs.owner_pe_count(PEER), 0);
    assert_eq!(hs.owner_pe_count(ME), 1);
    assert_eq!(hs.connection_pe_count(conn(4).unwrap()), 1);
    // And from connection 4 to connection 5.
    let again = hs.register(reg(b"p", 9, Policy::RoundRobin, conn(5)).get(), Time::ZERO).unwrap();
    assert_eq!(again.previous_conn, Some(conn(4)));
    assert_eq!(again.previous_owner, None);
    assert_eq!(hs.connection_pe_count(conn(4).unwrap()), 0);
    assert_eq!(hs.connection_pe_count(conn(5).unwrap()), 1);
    hs.validate().unwrap();
}

#[test]
fn pe_id_collision_is_rejected() {
    let mut hs = hs();
    hs.register(reg(b"p", 9, Policy::RoundRobin, conn(1)).get(), Time::ZERO).unwrap();
    let mut r = reg(b"p", 9, Policy::RoundRobin, conn(2));
    r.user_transport = sctp(200, 201);
    let e = hs.register(r.get(), Time::ZERO).unwrap_err();
    assert_eq!(e, RegisterError::NonUniquePeIdentifier(9));
    assert_eq!(e.cause_code(), CauseCode::NON_UNIQUE_PE_IDENTIFIER);
    // Another owner over the same (absent) connection with other addresses collides too.
    r.conn = conn(1);
    r.home = PEER;
    assert_eq!(hs.register(r.get(), Time::ZERO).unwrap_err().cause_code(), CauseCode::NON_UNIQUE_PE_IDENTIFIER);
    // Same addresses in another order = the same PE.
    let mut r = reg(b"p", 9, Policy::RoundRobin, conn(2));
    r.user_transport.addresses.reverse();
    assert!(!hs.register(r.get(), Time::ZERO).unwrap().added);
    hs.validate().unwrap();
}

#[test]
fn resource_limits() {
    let config = HandlespaceConfig {
        max_pools: 2,
        max_pes_per_pool: 2,
        max_pes: 4,
        max_pes_per_connection: 3,
        max_handle_len: 8,
        ..HandlespaceConfig::default()
    };
    let mut hs = Handlespace::new(config, Time::ZERO);
    let lack = CauseCode::LACK_OF_RESOURCES;
    let e = hs.register(reg(b"123456789", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap_err();
    assert_eq!(e, RegisterError::HandleTooLong { len: 9, max: 8 });
    assert_eq!(e.cause_code(), CauseCode::INVALID_VALUES, "a bad value (WIRE.md 6.1), not a lack of resources");
    assert_eq!(
        hs.register(reg(b"", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap_err().cause_code(),
        CauseCode::INVALID_VALUES
    );
    hs.register(reg(b"a", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    hs.register(reg(b"a", 2, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    assert_eq!(
        hs.register(reg(b"a", 3, Policy::Random, conn(2)).get(), Time::ZERO),
        Err(RegisterError::TooManyPesInPool)
    );
    hs.register(reg(b"b", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    assert_eq!(
        hs.register(reg(b"b", 2, Policy::Random, conn(1)).get(), Time::ZERO),
        Err(RegisterError::TooManyPesOnConnection)
    );
    assert_eq!(hs.register(reg(b"c", 1, Policy::Random, conn(2)).get(), Time::ZERO), Err(RegisterError::TooManyPools));
    hs.register(reg(b"b", 2, Policy::Random, conn(2)).get(), Time::ZERO).unwrap();
    assert_eq!(hs.register(reg(b"b", 3, Policy::Random, conn(2)).get(), Time::ZERO).unwrap_err().cause_code(), lack);
    // Re-registration is never refused for lack of room.
    assert!(!hs.register(reg(b"a", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap().added);
    assert_eq!(hs.pe_count(), 4);
    hs.validate().unwrap();
}

#[test]
fn deregistration_rules() {
    let mut hs = hs();
    hs.register(reg(b"p", 1, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    hs.register(reg(b"p", 2, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    let e = hs.deregister(b"nope", 1, conn(1)).unwrap_err();
    assert_eq!(e.cause_code(), CauseCode::UNKNOWN_POOL_HANDLE);
    let e = hs.deregister(b"p", 1, conn(2)).unwrap_err();
    assert_eq!(e, DeregisterError::NotAuthorized);
    assert_eq!(e.cause_code(), CauseCode::REJECTED_SECURITY);
    assert_eq!(hs.deregister(b"p", 3, conn(1)), Ok(None));
    let key = hs.lookup(b"p", 1).unwrap();
    let pe = hs.deregister(b"p", 1, conn(1)).unwrap().unwrap();
    assert_eq!(pe.id, 1);
    assert_eq!(hs.pe(key), None, "stale key must not resolve");
    assert_eq!(hs.deregister(b"p", 1, conn(1)), Ok(None));
    hs.deregister(b"p", 2, conn(1)).unwrap().unwrap();
    assert_eq!((hs.pool_count(), hs.pe_count()), (0, 0));
    assert_eq!(hs.deregister(b"p", 2, conn(1)), Err(DeregisterError::UnknownPool));
    let mut out = vec![];
    assert_eq!(hs.resolve(b"p", 3, &mut out), Err(UnknownPool));
    assert_eq!(UnknownPool.cause_code(), CauseCode::UNKNOWN_POOL_HANDLE);
    hs.validate().unwrap();
}

#[test]
fn round_robin_rotates_fairly() {
    let mut hs = hs();
    pool_of(&mut hs, 4, |_| Policy::RoundRobin);
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    assert_eq!(resolve_ids(&mut hs, 3), [2, 3, 4]);
    assert_eq!(resolve_ids(&mut hs, 3), [3, 4, 1]);
    assert_eq!(resolve_ids(&mut hs, 10), [4, 1, 2, 3], "at most the pool, each once");
    let counts = first_counts(&mut hs, 400, 1);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
}

#[test]
fn weighted_round_robin_appears_weight_times_per_round() {
    let mut hs = hs();
    pool_of(&mut hs, 3, |id| Policy::WeightedRoundRobin { weight: id });
    // Every round of 6 selections holds PE 1 once, PE 2 twice, PE 3 three times.
    for _ in 0..50 {
        let mut round = [0; 4];
        for _ in 0..6 {
            round[resolve_ids(&mut hs, 1)[0] as usize] += 1;
        }
        assert_eq!(round[1..], [1, 2, 3]);
    }
    // The whole response lists distinct PEs in pass order.
    let got = resolve_ids(&mut hs, 3);
    assert_eq!(got.len(), 3);
    // Equal weights rotate like round robin.
    let mut hs = self::hs();
    pool_of(&mut hs, 3, |_| Policy::WeightedRoundRobin { weight: 5 });
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    assert_eq!(resolve_ids(&mut hs, 3), [2, 3, 1]);
    assert_eq!(resolve_ids(&mut hs, 3), [3, 1, 2]);
    // Weight 0 comes last and is never selected while others exist.
    hs.register(reg(b"pool", 4, Policy::WeightedRoundRobin { weight: 0 }, conn(1)).get(), Time::ZERO).unwrap();
    let counts = first_counts(&mut hs, 30, 4);
    assert!(!counts.contains_key(&4), "{counts:?}");
    assert_eq!(resolve_ids(&mut hs, 4)[3], 4);
}

#[test]
fn random_is_uniform_and_distinct() {
    let mut hs = hs();
    pool_of(&mut hs, 5, |_| Policy::Random);
    let counts = first_counts(&mut hs, 10_000, 3);
    // 2000 expected each; sd ~ 40: 6 sd bounds.
    assert!(counts.values().all(|&c| (1760..=2240).contains(&c)), "{counts:?}");
    // n above half the pool takes the shuffle path; n above the pool returns all.
    let mut all = resolve_ids(&mut hs, 50);
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3, 4, 5]);
    assert_eq!(resolve_ids(&mut hs, 4).len(), 4);
}

#[test]
fn weighted_random_follows_weights() {
    let mut hs = hs();
    // Weights 1, 2, 3, 4 and one PE of weight 0.
    pool_of(&mut hs, 5, |id| Policy::WeightedRandom { weight: id % 5 });
    let counts = first_counts(&mut hs, 20_000, 1);
    assert!(!counts.contains_key(&5), "weight 0 is never drawn: {counts:?}");
    for (id, expect) in [(1, 2000.0), (2, 4000.0), (3, 6000.0), (4, 8000.0)] {
        let got = counts[&id] as f64;
        // Binomial sd <= 70 here; 5 sd.
        assert!((got - expect).abs() < 350.0, "PE {id}: {got} vs {expect}");
    }
    // Distinct draws: asking for 5 gives the 4 PEs of positive weight.
    let mut got = resolve_ids(&mut hs, 5);
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3, 4]);
    // All weights 0: behaves as Random.
    let mut hs = self::hs();
    pool_of(&mut hs, 3, |_| Policy::WeightedRandom { weight: 0 });
    assert_eq!(resolve_ids(&mut hs, 3).len(), 3);
}

#[test]
fn weighted_random_update_changes_weight() {
    let mut hs = hs();
    pool_of(&mut hs, 3, |_| Policy::WeightedRandom { weight: 1 });
    hs.register(reg(b"pool", 2, Policy::WeightedRandom { weight: 0 }, conn(1)).get(), Time::ZERO).unwrap();
    let counts = first_counts(&mut hs, 1000, 1);
    assert!(!counts.contains_key(&2));
    hs.deregister(b"pool", 1, conn(1)).unwrap();
    assert_eq!(resolve_ids(&mut hs, 3), [3]);
    hs.validate().unwrap();
}

#[test]
fn randomized_least_used_prefers_free_capacity() {
    let mut hs = hs();
    let q = u32::MAX / 4;
    // Loads 0 %, 50 %, 75 % and 100 % (free capacity 4 : 2 : 1 : ~0, at least 1).
    let loads = [0, 2 * q, 3 * q, u32::MAX];
    pool_of(&mut hs, 4, |id| Policy::RandomizedLeastUsed { load: loads[id as usize - 1] });
    let counts = first_counts(&mut hs, 14_000, 2);
    for (id, expect) in [(1, 8000.0), (2, 4000.0), (3, 2000.0)] {
        let got = counts[&id] as f64;
        assert!((got - expect).abs() < 350.0, "PE {id}: {got} vs {expect}");
    }
    assert!(!counts.contains_key(&4), "a full PE (weight 1 in 2^32) is practically never first");
}

#[test]
fn priority_highest_first_equals_rotate() {
    let mut hs = hs();
    pool_of(&mut hs, 5, |id| Policy::Priority { priority: [10, 30, 30, 20, 30][id as usize - 1] });
    assert_eq!(resolve_ids(&mut hs, 5), [2, 3, 5, 4, 1]);
    assert_eq!(resolve_ids(&mut hs, 5), [3, 5, 2, 4, 1]);
    assert_eq!(resolve_ids(&mut hs, 2), [5, 2]);
    assert_eq!(resolve_ids(&mut hs, 1), [2]);
}

#[test]
fn least_used_picks_least_loaded() {
    let mut hs = hs();
    pool_of(&mut hs, 4, |id| Policy::LeastUsed { load: [500, 100, 300, 100][id as usize - 1] });
    assert_eq!(resolve_ids(&mut hs, 4), [2, 4, 3, 1]);
    assert_eq!(resolve_ids(&mut hs, 4), [4, 2, 3, 1], "equal loads rotate");
    // A fresh load report (re-registration) reorders it; it keeps its rotation place.
    hs.register(reg(b"pool", 1, Policy::LeastUsed { load: 0 }, conn(1)).get(), Time::ZERO).unwrap();
    assert_eq!(resolve_ids(&mut hs, 4), [1, 2, 4, 3]);
    assert_eq!(resolve_ids(&mut hs, 4), [1, 2, 4, 3], "a unique least load stays first");
    hs.validate().unwrap();
}

#[test]
fn least_used_with_degradation_degrades_after_selection() {
    let mut hs = hs();
    let lud = |load| Policy::LeastUsedDegradation { load, degradation: 100 };
    pool_of(&mut hs, 2, |id| lud([100, 150][id as usize - 1]));
    // A: 100, B: 150 → A selected, A = 200 → B (150) selected, B = 250 → A (200) → A = 300 → B ...
    assert_eq!(resolve_ids(&mut hs, 2), [1, 2]);
    assert_eq!(resolve_ids(&mut hs, 2), [2, 1]);
    assert_eq!(resolve_ids(&mut hs, 2), [1, 2]);
    let a = hs.lookup(b"pool", 1).unwrap();
    assert_eq!(hs.pe_degradation(a).unwrap(), 200);
    assert_eq!(resolve_ids(&mut hs, 1), [2]);
    // Re-registration resets the degradation: A is back to 100 and first.
    hs.register(reg(b"pool", 1, lud(100), conn(1)).get(), Time::ZERO).unwrap();
    assert_eq!(hs.pe_degradation(a).unwrap(), 0);
    assert_eq!(resolve_ids(&mut hs, 2), [1, 2]);
    // Degradation saturates.
    let mut hs = self::hs();
    pool_of(&mut hs, 1, |_| Policy::LeastUsedDegradation { load: u32::MAX - 5, degradation: u32::MAX });
    resolve_ids(&mut hs, 1);
    resolve_ids(&mut hs, 1);
    assert_eq!(hs.pe_degradation(hs.lookup(b"pool", 1).unwrap()).unwrap(), u32::MAX);
    hs.validate().unwrap();
    // Under any other policy there is none (WRR keeps its pass where LUD keeps its degradation).
    let mut hs = self::hs();
    pool_of(&mut hs, 2, |_| Policy::WeightedRoundRobin { weight: 1 });
    resolve_ids(&mut hs, 2);
    assert_eq!(hs.pe_degradation(hs.lookup(b"pool", 1).unwrap()).unwrap(), 0);
}

#[test]
fn priority_least_used_adds_static_penalty() {
    let mut hs = hs();
    let plu = |load, degradation| Policy::PriorityLeastUsed { load, degradation };
    let pol = [plu(100, 0), plu(50, 100), plu(120, 0), plu(100, 0), plu(u32::MAX, 9)];
    pool_of(&mut hs, 5, |id| pol[id as usize - 1]);
    // Sums: 100, 150, 120, 100, saturated.
    assert_eq!(resolve_ids(&mut hs, 5), [1, 4, 3, 2, 5]);
    assert_eq!(resolve_ids(&mut hs, 5), [4, 1, 3, 2, 5], "ties rotate; the penalty does not grow");
}

#[test]
fn max_increment_counts_the_head_of_a_response() {
    let config = HandlespaceConfig { max_increment: 2, ..HandlespaceConfig::default() };
    let mut hs = Handlespace::new(config, Time::ZERO);
    pool_of(&mut hs, 4, |_| Policy::RoundRobin);
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    assert_eq!(resolve_ids(&mut hs, 3), [3, 4, 1]);
    let mut hs = Handlespace::new(HandlespaceConfig { max_increment: 2, ..HandlespaceConfig::default() }, Time::ZERO);
    pool_of(&mut hs, 4, |_| Policy::Priority { priority: 1 });
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    assert_eq!(resolve_ids(&mut hs, 3), [3, 4, 1]);
    let mut hs = Handlespace::new(HandlespaceConfig { max_increment: 2, ..HandlespaceConfig::default() }, Time::ZERO);
    pool_of(&mut hs, 3, |_| Policy::LeastUsedDegradation { load: 0, degradation: 10 });
    assert_eq!(resolve_ids(&mut hs, 3), [1, 2, 3]);
    let deg: Vec<u32> = (1..=3).map(|id| hs.pe_degradation(hs.lookup(b"pool", id).unwrap()).unwrap()).collect();
    assert_eq!(deg, [10, 10, 0]);
}

#[test]
fn expiry_removes_at_the_deadline() {
    let config = HandlespaceConfig { max_registration_life: 50_000, ..HandlespaceConfig::default() };
    let mut hs = Handlespace::new(config, Time(1000));
    let mut r = reg(b"p", 1, Policy::RoundRobin, None);
    r.registration_life = 5000;
    hs.register(r.get(), Time(1000)).unwrap();
    let mut r = reg(b"p", 2, Policy::RoundRobin, None);
    r.registration_life = -1;
    let forever = hs.register(r.get(), Time(1000)).unwrap().pe;
    let mut r = reg(b"q", 3, Policy::Random, None);
    r.registration_life = i32::MAX;
    let capped = hs.register(r.get(), Time(1000)).unwrap().pe;
    assert_eq!(hs.pe(capped).unwrap().registration_life, 50_000);
    assert_eq!(hs.pe_expiry(capped), Some(Time(51_000)));
    assert_eq!(hs.pe_expiry(forever), None);
    assert_eq!(hs.pe(forever).unwrap().registration_life, -1);

    assert!(hs.next_expiry().unwrap() <= Time(6000));
    let mut removed = vec![];
    assert_eq!(hs.expire(Time(5999), usize::MAX, |_, h, pe| removed.push((h.to_vec(), pe.id))), 0);
    assert_eq!(hs.expire(Time(6000), usize::MAX, |_, h, pe| removed.push((h.to_vec(), pe.id))), 1);
    assert_eq!(removed, [(b"p".to_vec(), 1)]);
    // A re-registration pushes the deadline out.
    let mut r = reg(b"q", 3, Policy::Random, None);
    r.registration_life = 1000;
    hs.register(r.get(), Time(50_500)).unwrap();
    assert_eq!(hs.expire(Time(51_000), usize::MAX, |_, _, _| {}), 0);
    while let Some(t) = hs.next_expiry() {
        hs.expire(t, usize::MAX, |_, h, pe| removed.push((h.to_vec(), pe.id)));
    }
    assert_eq!(removed, [(b"p".to_vec(), 1), (b"q".to_vec(), 3)]);
    assert_eq!(hs.pool_count(), 1, "pool q emptied and removed");
    assert_eq!(hs.expire(Time(u64::MAX / 2), usize::MAX, |_, _, _| {}), 0, "life -1 never expires");
    // Switching a PE to no expiry cancels its timer, and back.
    let mut r = reg(b"p", 2, Policy::RoundRobin, None);
    r.registration_life = 10;
    hs.register(r.get(), Time(100_000)).unwrap();
    assert_eq!(hs.pe_expiry(forever), Some(Time(100_010)));
    hs.validate().unwrap();
}

#[test]
fn connection_loss_removes_its_pes_only() {
    let mut hs = hs();
    for id in 1..=5 {
        hs.register(reg(b"a", id, Policy::RoundRobin, conn(id % 2)).get(), Time::ZERO).unwrap();
        hs.register(reg(b"b", id, Policy::Random, conn(1)).get(), Time::ZERO).unwrap();
    }
    assert_eq!(hs.connection_pe_count(conn(1).unwrap()), 8);
    let listed: Vec<PeKey> = hs.connection_pes(conn(1).unwrap()).collect();
    assert_eq!(listed.len(), 8);
    let mut removed = vec![];
    let n = hs.remove_connection(conn(1).unwrap(), |h, pe| removed.push((h.to_vec(), pe.id)));
    assert_eq!(n, 8);
    removed.sort();
    assert_eq!(removed.iter().filter(|(h, _)| h == b"a").map(|x| x.1).collect::<Vec<_>>(), [1, 3, 5]);
    assert_eq!((hs.pool_count(), hs.pe_count()), (1, 2));
    assert_eq!(hs.connection_pe_count(conn(1).unwrap()), 0);
    assert_eq!(hs.remove_connection(conn(1).unwrap(), |_, _| {}), 0);
    hs.validate().unwrap();
}

#[test]
fn unreachable_reports_remove_at_the_limit() {
    let mut hs = hs();
    pool_of(&mut hs, 2, |_| Policy::RoundRobin);
    assert_eq!(hs.report_unreachable(b"x", 1), Err(UnknownPool));
    assert_eq!(hs.report_unreachable(b"pool", 9), Ok(Unreachable::UnknownPe));
    assert_eq!(hs.report_unreachable(b"pool", 1), Ok(Unreachable::Counted(1)));
    assert_eq!(hs.report_unreachable(b"pool", 1), Ok(Unreachable::Counted(2)));
    // A re-registration proves it alive: the count restarts.
    hs.register(reg(b"pool", 1, Policy::RoundRobin, conn(1)).get(), Time::ZERO).unwrap();
    assert_eq!(hs.report_unreachable(b"pool", 1), Ok(Unreachable::Counted(1)));
    hs.report_unreachable(b"pool", 1).unwrap();
    match hs.report_unreachable(b"pool", 1) {
        Ok(Unreachable::Removed(pe)) => assert_eq!(pe.id, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(hs.pe_count(), 1);
    hs.validate().unwrap();
}

#[test]
fn owner_checksums_match_index_md() {
    let mut hs = hs();
    let pes: [(&[u8], u32); 4] = [
        (b"echo", 0x3c9e1f07),
        (b"echo", 0x7d41a2b8),
        (b"db.shard-07", 0x1f2e3d4c),
        (b"org.example.payments.settlement.eu-west1", 0x6b1e55a2),
    ];
    assert_eq!(hs.owner_checksum(PEER), 0xffff);
    for (h, id) in pes {
        let mut r = reg(h, id, Policy::RoundRobin, None);
        r.home = PEER;
        hs.register(r.get(), Time::ZERO).unwrap();
    }
    assert_eq!(hs.owner_checksum(PEER), 0x0ef2);
    assert_eq!(hs.owner_pe_count(PEER), 4);
    // Moving one PE away: PEER keeps the other three, ME gets ("echo", 0x3c9e1f07) = 0xd687.
    let k = hs.lookup(b"echo", 0x7d41a2b8).unwrap();
    assert_eq!(hs.set_owner(k, ME), Some(PEER));
    let k = hs.lookup(b"echo", 0x3c9e1f07).unwrap();
    hs.set_owner(k, ME);
    let k = hs.lookup(b"echo", 0x7d41a2b8).unwrap();
    hs.set_owner(k, PEER);
    assert_eq!(hs.owner_checksum(ME), 0xd687);
    assert_eq!(hs.owner_pe_count(PEER), 3);
    // Takeover: everything of PEER goes to ME.
    assert_eq!(hs.take_over(PEER, ME), 3);
    assert_eq!(hs.owner_checksum(ME), 0x0ef2);
    assert_eq!(hs.owner_checksum(PEER), 0xffff);
    assert_eq!(hs.owner_pe_count(ME), 4);
    assert!(hs.owner_pes(ME).all(|k| hs.pe(k).unwrap().home == ME));
    assert_eq!(hs.take_over(PEER, ME), 0);
    assert_eq!(hs.take_over(ME, ME), 0);
    // Removing ("db.shard-07", ...) leaves the two echo PEs plus the long one.
    hs.remove(hs.lookup(b"db.shard-07", 0x1f2e3d4c).unwrap()).unwrap();
    let rest = [pes[0], pes[1], pes[3]];
    assert_eq!(hs.owner_checksum(ME), checksum::pe_checksum(rest));
    assert_eq!(hs.owners().collect::<Vec<_>>(), [(ME, 3)]);
    hs.validate().unwrap();
}

/// A table walk of `owner`'s PEs (every PE for `None`), `slots` slots at a time from the
/// start, each call checked for what it promises; returns all of them in walk order.
fn walk_table(hs: &Handlespace, owner: Option<u32>, slots: usize) -> Vec<(PoolKey, PeKey)> {
    let (mut all, mut cursor, mut calls) = (Vec::new(), Some(TableCursor::START), 0);
    while let Some(from) = cursor {
        let start = all.len();
        cursor = hs.table_pes(owner, from, slots, &mut all);
        calls += 1;
        let read = &all[start..];
        assert!(read.len() <= slots.max(1), "at most {slots} slots read");
        let span = from.0..cursor.map_or(u32::MAX, |c| c.0);
        assert!(cursor.is_none_or(|c| c.0 - from.0 == slots.max(1) as u32), "the cursor steps by {slots}");
        assert!(read.iter().all(|e| span.contains(&e.1.index)), "PEs of the slots read, no others");
        assert!(read.windows(2).all(|w| w[0].1.index < w[1].1.index), "in slot order");
        for &(pool, key) in read {
            assert_eq!(hs.pe_pool(key), Some(pool));
            assert!(owner.is_none_or(|o| hs.pe(key).unwrap().home == o));
        }
    }
    assert!(calls >= 1);
    all
}

#[test]
fn a_table_walk_returns_every_pe_once() {
    // Many PEs over few pools and few PEs over many pools, with pools and PEs interleaved in
    // the slots, walked for one owner (ME holds 4 in 5 PEs, PEER the rest) or all of them,
    // and for an owner with none.
    for (pools, per_pool) in [(7u32, 40u32), (400, 1)] {
        let mut hs = hs();
        let handles: Vec<Vec<u8>> = (0..pools).map(|p| format!("pool-{p}").into_bytes()).collect();
        for id in 1..=per_pool {
            for (i, h) in handles.iter().enumerate().rev() {
                let mut r = reg(h, id, Policy::RoundRobin, None);
                r.home = if (id + i as u32) % 5 == 0 { PEER } else { ME };
                hs.register(r.get(), Time::ZERO).unwrap();
            }
        }
        // A pool slot freed and reused, so slab order differs from creation order.
        let gone = hs.lookup(&handles[0], 1).unwrap();
        hs.remove(gone);
        for owner in [Some(ME), Some(PEER), Some(0x0bad), None] {
            let mut expected: Vec<PeKey> = match owner {
                Some(o) => hs.owner_pes(o).collect(),
                None => hs.pools().flat_map(|(p, _)| hs.pool_pes(p)).collect(),
            };
            expected.sort();
            for slots in [0, 1, 3, 64, 10_000] {
                let walked: Vec<PeKey> = walk_table(&hs, owner, slots).into_iter().map(|e| e.1).collect();
                assert_eq!(walked, expected, "{pools} pools, owner {owner:?}, {slots} slots at a time");
            }
        }
    }
    let mut out = vec![(PoolKey { index: 9, generation: 9 }, PeKey::default())];
    assert_eq!(hs().table_pes(None, TableCursor::START, 8, &mut out), None);
    assert_eq!(out.len(), 1, "appends, and finds nothing in an empty table");
}

#[test]
fn a_table_walk_sees_removals_ahead_of_it_and_not_additions_behind_it() {
    let mut hs = hs();
    let keys: Vec<PeKey> =
        (1..=10).map(|id| hs.register(reg(b"p", id, Policy::RoundRobin, None).get(), Time::ZERO).unwrap().pe).collect();
    let mut seen = Vec::new();
    let cursor = hs.table_pes(None, TableCursor::START, 4, &mut seen).unwrap();
    assert_eq!(seen.iter().map(|e| e.1).collect::<Vec<_>>(), keys[..4], "the first four slots");
    // Ahead of the cursor: PE 7 leaves. Behind it: PE 2 leaves and PE 11 takes its slot.
    hs.remove(keys[6]).unwrap();
    hs.remove(keys[1]).unwrap();
    let added = hs.register(reg(b"p", 11, Policy::RoundRobin, None).get(), Time::ZERO).unwrap().pe;
    assert_eq!(added.index, keys[1].index, "the freed slot is reused");
    let mut rest = Vec::new();
    assert_eq!(hs.table_pes(None, cursor, 100, &mut rest), None);
    let expected: Vec<PeKey> = keys[4..].iter().copied().filter(|&k| k != keys[6]).collect();
    assert_eq!(rest.iter().map(|e| e.1).collect::<Vec<_>>(), expected);
}

#[test]
fn stale_keys_are_detected() {
    let mut hs = hs();
    let k = hs.register(reg(b"p", 1, Policy::RoundRobin, None).get(), Time::ZERO).unwrap();
    hs.remove(k.pe).unwrap();
    let k2 = hs.register(reg(b"p", 1, Policy::RoundRobin, None).get(), Time::ZERO).unwrap();
    assert_eq!(k.pe.index, k2.pe.index, "slot reused");
    assert_eq!(hs.pe(k.pe), None);
    assert!(hs.pool(k.pool).is_none());
    assert_eq!(hs.remove(k.pe), None);
    assert_eq!(hs.set_owner(k.pe, PEER), None);
    let mut out = vec![];
    assert_eq!(hs.resolve_pool(k.pool, 1, &mut out), Err(UnknownPool));
    hs.resolve_pool(k2.pool, 1, &mut out).unwrap();
    assert_eq!(out, [k2.pe]);
}

#[test]
fn asap_transport_is_stored() {
    let mut hs = hs();
    let mut r = reg(b"p", 1, Policy::RoundRobin, conn(1));
    r.asap_transport = Some(TransportRepr::new(TransportProtocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 3863));
    let k = hs.register(r.get(), Time::ZERO).unwrap().pe;
    assert_eq!(hs.pe(k).unwrap().asap_transport().map(|t| t.port), Some(3863));
    r.asap_transport.as_mut().unwrap().port = 3864;
    hs.register(r.get(), Time::ZERO).unwrap();
    assert_eq!(hs.pe(k).unwrap().asap_transport().map(|t| t.port), Some(3864));
    r.asap_transport = None;
    hs.register(r.get(), Time::ZERO).unwrap();
    assert_eq!(hs.pe(k).unwrap().asap_transport(), None);
}

#[test]
fn removals_deep_in_an_ordered_pool_leave_answers_exact() {
    // Least Used over 400 PEs with distinct loads: PEs removed beyond the head are forgotten
    // (dead entries, dropped in bulk later); answers must still be the least loaded live PEs,
    // in order, and the pool must vanish with its last PE.
    let load = |id: u32| (id * 7919) % 1009;
    let mut hs = hs();
    pool_of(&mut hs, 400, |id| Policy::LeastUsed { load: load(id) });
    let mut rng = fastrand::Rng::with_seed(5);
    let mut live: Vec<u32> = (1..=400).collect();
    rng.shuffle(&mut live);
    while let Some(id) = live.pop() {
        assert!(hs.deregister(b"pool", id, conn(1)).unwrap().is_some());
        hs.validate().unwrap();
        if live.len() % 7 == 0 && !live.is_empty() {
            let mut want = live.clone();
            want.sort_by_key(|&i| load(i));
            want.truncate(3);
            // Max-increment 1: the first is selected, but with distinct loads it stays first.
            assert_eq!(resolve_ids(&mut hs, 3), want, "{} left", live.len());
            hs.validate().unwrap();
        }
        let pool = hs.find_pool(b"pool");
        assert_eq!(pool.map(|p| hs.pools[p as usize].pe_count()), (!live.is_empty()).then_some(live.len()));
    }
}

#[test]
fn a_reused_slot_with_a_wrapped_generation_is_not_its_dead_entry() {
    // A PE removed deep in an ordered pool leaves a dead entry naming its slot and generation.
    // If the slot is taken again by a PE that got the same generation (the counter wrapped),
    // in another pool under the very same key (priority and sequence number), or in the same
    // pool (under a new sequence number), the dead entry must stay dead.
    for same_pool in [false, true] {
        let mut hs = hs();
        pool_of(&mut hs, 200, |_| Policy::Priority { priority: 1 });
        for id in 1..150 {
            hs.register(reg(b"other", id, Policy::Priority { priority: 1 }, None).get(), Time::ZERO).unwrap();
        }
        let gone = hs.lookup(b"pool", 150).unwrap();
        hs.remove(gone).unwrap();
        hs.next_generation = gone.generation;
        let handle: &[u8] = if same_pool { b"pool" } else { b"other" };
        let back = hs.register(reg(handle, 1000, Policy::Priority { priority: 1 }, None).get(), Time::ZERO).unwrap().pe;
        assert_eq!(back, gone, "same slot, same generation");
        hs.validate().unwrap();
        let pool = hs.pool_by_handle(b"pool").unwrap();
        let listed: Vec<PeKey> = hs.pool_pes(pool).collect();
        assert_eq!(listed.iter().filter(|&&k| k == back).count(), usize::from(same_pool), "same pool: {same_pool}");
        assert_eq!(listed.len(), 199 + usize::from(same_pool));
        // Rotating through the whole pool lists every PE once per round.
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..listed.len() {
            *seen.entry(resolve_ids(&mut hs, 1)[0]).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), listed.len());
        assert!(seen.values().all(|&n| n == 1));
        assert_eq!(seen.contains_key(&1000), same_pool);
        hs.validate().unwrap();
    }
}

/// The ids a model of a pool says a resolution of `n` answers: its PEs sorted by `rank`.
fn model_order<V>(model: &std::collections::BTreeMap<u32, V>, n: usize, rank: impl Fn(&V) -> (u64, u64)) -> Vec<u32> {
    let mut order: Vec<u32> = model.keys().copied().collect();
    order.sort_by_key(|id| rank(&model[id]));
    order.truncate(n);
    order
}

/// The ids a resolution of `n` in pool "pool" answers (none when the pool is gone).
fn answer_ids(hs: &mut Handlespace, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    hs.resolve(b"pool", n, &mut out).map(|_| ids(hs, &out)).unwrap_or_default()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
    /// The four non-WRR ordered policies against a naive model of RFC 5356's rules: a response
    /// is the PEs sorted by (key, arrival), the key being `u32::MAX - priority`, the load, the
    /// load plus the degradation accumulated by selections (LUD, saturating, reset by
    /// re-registration) or the load plus its fixed degradation (PLU); each of the first
    /// max-increment PEs of a response goes behind its equals and, under LUD, accumulates its
    /// degradation. Registration, re-registration (keeps the place), deregistration and
    /// resolution in any order, with many ties; long cases use more sequence numbers than the
    /// tests' limit, so the pool's are renumbered on the way.
    #[test]
    fn ordered_policies_answer_as_a_naive_model(
        kind in 0u8..4,
        ops in proptest::collection::vec((0u8..6, 1u32..12, 0u32..4, 0u32..3, 1usize..6), 1..1000),
    ) {
        let policy = |a: u32, b: u32| match kind {
            0 => Policy::Priority { priority: a },
            1 => Policy::LeastUsed { load: a },
            2 => Policy::LeastUsedDegradation { load: a, degradation: b * 0x4000_0000 },
            _ => Policy::PriorityLeastUsed { load: a, degradation: b },
        };
        let config = HandlespaceConfig { max_increment: 3, ..HandlespaceConfig::default() };
        let mut hs = Handlespace::new(config, Time::ZERO);
        // id -> (policy, accumulated degradation, arrival)
        let mut model: std::collections::BTreeMap<u32, (Policy, u32, u64)> = Default::default();
        let mut arrival = 0u64;
        let key = |p: &Policy, acc: u32| match *p {
            Policy::Priority { priority } => u32::MAX - priority,
            Policy::LeastUsed { load } => load,
            Policy::LeastUsedDegradation { load, .. } => load.saturating_add(acc),
            Policy::PriorityLeastUsed { load, degradation } => load.saturating_add(degradation),
            _ => unreachable!(),
        };
        for (op, id, a, b, n) in ops {
            match op {
                0 | 1 => {
                    let p = policy(a, b);
                    hs.register(reg(b"pool", id, p, conn(1)).get(), Time::ZERO).unwrap();
                    let e = model.entry(id).or_insert_with(|| {
                        arrival += 1;
                        (p, 0, arrival)
                    });
                    (e.0, e.1) = (p, 0);
                }
                2 => {
                    let gone = hs.deregister(b"pool", id, conn(1)).ok().flatten().map(|pe| pe.id);
                    proptest::prop_assert_eq!(gone, model.remove(&id).map(|_| id));
                }
                _ => {
                    let order = model_order(&model, n, |e| (u64::from(key(&e.0, e.1)), e.2));
                    proptest::prop_assert_eq!(answer_ids(&mut hs, n), order.clone());
                    for id in order.iter().take(3) {
                        let e = model.get_mut(id).unwrap();
                        arrival += 1;
                        e.2 = arrival;
                        if let Policy::LeastUsedDegradation { degradation, .. } = e.0 {
                            e.1 = e.1.saturating_add(degradation);
                        }
                    }
                }
            }
        }
        for (id, (_, acc, _)) in &model {
            let lud = kind == 2;
            proptest::prop_assert_eq!(hs.pe_degradation(hs.lookup(b"pool", *id).unwrap()), Some(if lud { *acc } else { 0 }));
        }
        hs.validate().unwrap();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
    /// Weighted Round Robin against a naive model of stride scheduling: a PE's pass starts one
    /// stride (2^32 / weight) past the pool's virtual time, a response is the PEs sorted by
    /// (pass, arrival), each of the first max-increment advances its pass by its stride (the
    /// virtual time following the pass served) and goes behind its equals; weight 0 sorts last;
    /// a re-registration keeps the pass unless the weight turns 0 or stops being 0.
    #[test]
    fn weighted_round_robin_answers_as_a_naive_model(
        ops in proptest::collection::vec((0u8..6, 1u32..12, 0u32..4, 1usize..6), 1..1000),
    ) {
        let config = HandlespaceConfig { max_increment: 3, ..HandlespaceConfig::default() };
        let mut hs = Handlespace::new(config, Time::ZERO);
        // id -> (weight, pass, arrival)
        let mut model: std::collections::BTreeMap<u32, (u32, u64, u64)> = Default::default();
        let (mut arrival, mut virtual_time) = (0u64, 0u64);
        let stride = |w: u32| (w > 0).then(|| (1u64 << 32) / u64::from(w));
        for (op, id, weight, n) in ops {
            match op {
                0 | 1 => {
                    hs.register(reg(b"pool", id, Policy::WeightedRoundRobin { weight }, conn(1)).get(), Time::ZERO).unwrap();
                    match model.get_mut(&id) {
                        Some(e) => {
                            e.1 = match stride(weight) {
                                None => u64::MAX,
                                Some(s) if e.1 == u64::MAX => virtual_time.saturating_add(s),
                                Some(_) => e.1,
                            };
                            e.0 = weight;
                        }
                        None => {
                            arrival += 1;
                            let pass = stride(weight).map_or(u64::MAX, |s| virtual_time.saturating_add(s));
                            model.insert(id, (weight, pass, arrival));
                        }
                    }
                }
                2 => {
                    let gone = hs.deregister(b"pool", id, conn(1)).ok().flatten().map(|pe| pe.id);
                    proptest::prop_assert_eq!(gone, model.remove(&id).map(|_| id));
                }
                _ => {
                    let order = model_order(&model, n, |e| (e.1, e.2));
                    proptest::prop_assert_eq!(answer_ids(&mut hs, n), order.clone());
                    for id in order.iter().take(3) {
                        let e = model.get_mut(id).unwrap();
                        arrival += 1;
                        e.2 = arrival;
                        if let Some(s) = stride(e.0) {
                            virtual_time = e.1;
                            e.1 = e.1.saturating_add(s);
                        }
                    }
                }
            }
        }
        hs.validate().unwrap();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
    /// A Weighted Random pool (its members and their weights in one vector) against a model of
    /// its PEs' weights, through registrations, re-registrations that change the weight (to 0
    /// and back), deregistrations anywhere and resolutions, across the scan size and the size
    /// at which the sum tree gains levels: a response holds distinct PEs, only ones of positive
    /// weight while any has one (as many as there are, up to n), any n of the pool while none
    /// has; and the index checks out against the slots after every step.
    #[test]
    fn weighted_random_answers_as_its_weights_allow(
        ops in proptest::collection::vec((0u8..7, 1u32..48, 0u32..4, 1usize..8), 1..600),
    ) {
        let mut hs = hs();
        let mut model: std::collections::BTreeMap<u32, u32> = Default::default();
        for (op, id, weight, n) in ops {
            match op {
                0..=2 => {
                    hs.register(reg(b"pool", id, Policy::WeightedRandom { weight }, conn(1)).get(), Time::ZERO).unwrap();
                    model.insert(id, weight);
                }
                3 => {
                    let gone = hs.deregister(b"pool", id, conn(1)).ok().flatten().map(|pe| pe.id);
                    proptest::prop_assert_eq!(gone, model.remove(&id).map(|_| id));
                }
                _ => {
                    let got = answer_ids(&mut hs, n);
                    let mut distinct = got.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    proptest::prop_assert_eq!(distinct.len(), got.len(), "duplicates in {:?}", got);
                    let positive = model.values().filter(|&&w| w > 0).count();
                    if positive > 0 {
                        proptest::prop_assert_eq!(got.len(), n.min(positive));
                        proptest::prop_assert!(got.iter().all(|id| model[id] > 0), "{:?} of {:?}", got, model);
                    } else {
                        proptest::prop_assert_eq!(got.len(), n.min(model.len()));
                        proptest::prop_assert!(got.iter().all(|id| model.contains_key(id)));
                    }
                }
            }
            hs.validate().unwrap();
        }
    }
}

/// A weighted pool crossing the size up to which its members are scanned for a PE's position
/// (positions kept in the slots only above it), both ways and again, with removals anywhere and
/// weight changes in between: every PE keeps a findable position and the right weight.
#[test]
fn weighted_pool_positions_survive_crossing_the_scan_size_both_ways() {
    let mut hs = hs();
    let weight = |id: u32, round: u32| Policy::WeightedRandom { weight: 1 + (id * 7 + round) % 5 };
    let mut live: Vec<u32> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(18);
    for round in 0..6u32 {
        // Grow to 24 members (past the scan size), then shrink to 5, removing at random places.
        while live.len() < 24 {
            let id = 1 + rng.u32(..1000);
            if !live.contains(&id) {
                hs.register(reg(b"pool", id, weight(id, round), conn(1)).get(), Time::ZERO).unwrap();
                live.push(id);
                hs.validate().unwrap();
            }
        }
        while live.len() > 5 {
            let id = live.swap_remove(rng.usize(..live.len()));
            assert!(hs.deregister(b"pool", id, conn(1)).unwrap().is_some());
            hs.validate().unwrap();
            // Re-register a survivor with another weight (the position is looked up then).
            let other = live[rng.usize(..live.len())];
            hs.register(reg(b"pool", other, weight(other, round + 1), conn(1)).get(), Time::ZERO).unwrap();
            hs.validate().unwrap();
        }
    }
    let mut got = resolve_ids(&mut hs, 10);
    got.sort_unstable();
    live.sort_unstable();
    assert_eq!(got, live);
}

/// Room reserved for PEs is room the PE index does not grow past while they come; PEs freed
/// before the index is rebuilt are not put back into it (a rebuild reads the arena's copy of
/// the slots' hashes, which a removal clears).
#[test]
fn reserved_room_holds_its_pes_without_growing_and_a_rebuild_skips_freed_slots() {
    let mut hs = hs();
    hs.reserve(5_000);
    let (capacity, slots) = (hs.pe_index.capacity(), hs.pes.capacity());
    assert!(capacity >= 5_000 && slots >= 5_000);
    pool_of(&mut hs, 5_000, |_| Policy::RoundRobin);
    assert_eq!(hs.pe_index.capacity(), capacity, "the index grew inside reserved room");
    assert_eq!(hs.pes.capacity(), slots, "a page was added inside reserved room");
    for id in (1..=5_000).step_by(3) {
        assert!(hs.deregister(b"pool", id, conn(1)).unwrap().is_some());
    }
    // Freed slots count as room: reserving for as many PEs as were removed allocates nothing.
    hs.reserve(5_000 - hs.pe_count());
    assert_eq!(hs.pes.capacity(), slots, "room for the freed slots' PEs was allocated again");
    // A rebuild while a third of the slots are free.
    hs.reserve(capacity);
    assert!(hs.pe_index.capacity() > capacity);
    hs.validate().unwrap();
    assert_eq!(hs.pe_index.len(), hs.pe_count());
    assert!(hs.lookup(b"pool", 1).is_none() && hs.lookup(b"pool", 2).is_some());
    // Reserving no more than the room there is changes nothing.
    let capacity = hs.pe_index.capacity();
    hs.reserve(0);
    hs.reserve(capacity - hs.pe_count());
    assert_eq!(hs.pe_index.capacity(), capacity);
}
