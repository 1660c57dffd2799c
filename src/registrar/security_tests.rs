//! The registrar's authorization rules (docs/SECURITY.md), driven in the simulator: which
//! connection may register which addresses, and which registrars may connect over ENRP.

use super::tests::{reg_response, registration, tcp, RegSim};
use super::{RegistrarConfig, ENRP};
use crate::config::RegistrationCheck;
use crate::wire::{CauseCode, Policy};

fn with_check(check: RegistrationCheck, allowlist: &[&str]) -> RegSim {
    let mut config = RegistrarConfig::new(0x1122_3344, 2);
    config.security.registration_check = check;
    config.security.registration_allowlist = allowlist.iter().map(|n| n.parse().unwrap()).collect();
    RegSim::with(config)
}

/// Whether registering `user` over `c` was accepted; a refusal must carry cause 0xA.
fn registers(sim: &mut RegSim, c: crate::runtime::sim::ClientId, id: u32, user: crate::wire::TransportRepr) -> bool {
    sim.send(c, &registration("pool", id, user, Policy::RoundRobin, -1));
    let (rejected, cause, _) = reg_response(&sim.one(c));
    if rejected {
        assert_eq!(cause, Some(CauseCode::REJECTED_SECURITY));
    }
    !rejected
}

#[test]
fn source_mode_is_the_default_and_wants_the_connections_address() {
    assert_eq!(RegistrarConfig::new(1, 1).security.registration_check, RegistrationCheck::Source);
    let mut sim = with_check(RegistrationCheck::Source, &[]);
    let c = sim.connect(0, "192.0.2.7:4000");
    assert!(!registers(&mut sim, c, 1, tcp("198.51.100.1", 7000)), "someone else's address");
    assert_eq!(sim.pe_count(), 0, "a refused registration stores nothing");
    assert!(registers(&mut sim, c, 2, tcp("192.0.2.7", 7000)));
    let mut two_legs = tcp("198.51.100.1", 7000);
    two_legs.protocol = crate::wire::TransportProtocol::Sctp;
    two_legs.addresses.push("192.0.2.7".parse().unwrap());
    let c2 = sim.connect(1, "192.0.2.7:4001");
    sim.send(c2, &registration("sctp-pool", 3, two_legs, Policy::RoundRobin, -1));
    assert!(!reg_response(&sim.one(c2)).0, "the other leg of a multi-homed PE is free");
    assert_eq!(sim.pe_count(), 2);
}

#[test]
fn allowlist_mode_wants_every_address_inside() {
    let mut sim = with_check(RegistrationCheck::Allowlist, &["10.0.0.0/8"]);
    let c = sim.connect(0, "192.0.2.7:4000");
    assert!(registers(&mut sim, c, 1, tcp("10.9.8.7", 7000)), "any source, addresses inside");
    assert!(!registers(&mut sim, c, 2, tcp("192.0.2.7", 7000)), "even its own address, outside");
    assert_eq!(sim.pe_count(), 1);
}

#[test]
fn off_mode_takes_any_address() {
    let mut sim = with_check(RegistrationCheck::Off, &[]);
    let c = sim.connect(0, "192.0.2.7:4000");
    assert!(registers(&mut sim, c, 1, tcp("198.51.100.1", 7000)));
}

#[test]
fn only_the_pes_own_host_may_take_over_its_registration() {
    let mut sim = with_check(RegistrationCheck::Source, &[]);
    let owner = sim.connect(0, "192.0.2.7:4000");
    assert!(registers(&mut sim, owner, 1, tcp("192.0.2.7", 7000)));
    // Another host claiming the PE's addresses is refused before the handlespace sees it.
    let intruder = sim.connect(0, "203.0.113.9:4000");
    assert!(!registers(&mut sim, intruder, 1, tcp("192.0.2.7", 7000)));
    // Another host with its own addresses and the same id collides (0x4), changing nothing.
    sim.send(intruder, &registration("pool", 1, tcp("203.0.113.9", 7000), Policy::RoundRobin, -1));
    assert_eq!(reg_response(&sim.one(intruder)).1, Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER));
    // The PE itself, reconnected from its own host, moves its registration (WIRE.md 6.1).
    let again = sim.connect(1, "192.0.2.7:4001");
    assert!(registers(&mut sim, again, 1, tcp("192.0.2.7", 7000)));
    assert_eq!(sim.pe_count(), 1);
}

#[test]
fn enrp_peers_only_from_loopback_configured_peers_or_the_allowlist() {
    let mut config = RegistrarConfig::new(0x1122_3344, 1);
    config.enrp = Some("192.0.2.1:9901".parse().unwrap());
    config.peers = vec!["192.0.2.2:9901".parse().unwrap()];
    config.security.enrp_allowlist = vec!["10.0.0.0/24".parse().unwrap()];
    let mut sim = RegSim::with(config);
    for (from, admitted) in [
        ("127.0.0.1:40000", true),
        ("192.0.2.2:40000", true),
        ("10.0.0.9:40000", true),
        ("10.0.1.9:40000", false),
        ("203.0.113.9:40000", false),
    ] {
        let c = sim.sim.connect_from(0, ENRP, from.parse().unwrap());
        sim.sim.run();
        assert_eq!(!sim.closed(c), admitted, "ENRP connection from {from}");
    }
    // Over mutual TLS the certificate is the credential: any address is admitted.
    let c = sim.sim.connect_from(0, super::ENRP_TLS, "203.0.113.9:40001".parse().unwrap());
    sim.sim.run();
    assert!(!sim.closed(c), "an ENRP over TLS connection is not checked by address");
    let refused = sim.shard(0).coordinator().expect("shard 0 runs ENRP").stats().refused_peers;
    assert_eq!(refused, 2);
}
