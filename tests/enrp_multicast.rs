//! ENRP peer discovery by multicast Presence with real processes: two registrars that are told
//! nothing of each other (no `--peer`) find each other on the multicast group and share their
//! pool elements. Multicast must not leave the machine: each registrar runs in its own network
//! namespace, the two joined by a veth pair only (root and `ip netns`; skipped with a message
//! where they are not allowed). No test depends on timing: waits are bounded polls that only
//! guard against deadlock.

#[path = "support/netns.rs"]
mod netns;

use netns::{eventually, skipped, Net};

/// Short ENRP timers, multicast discovery on a group of the test's own.
const CONFIG: &str = "[timers]
peer_heartbeat = 200
max_time_last_heard = 800
max_time_no_response = 400
mentor_discovery = 1000
peer_reconnect = 100

[enrp_multicast]
enabled = true
group = \"239.0.0.51:9901\"

[security]
# The registrars' network: a registrar heard there is dialled, and admitted when it dials.
enrp_allowlist = [\"10.202.0.0/24\"]
# The test's PEs register an address that is not their connection's.
registration_check = \"off\"
";

#[test]
fn two_registrars_that_know_nothing_of_each_other_meet_by_multicast_and_share_pes() {
    let Some(net) = Net::new("rsm", "10.202.0", true) else {
        skipped("enrp_multicast");
        return;
    };
    let dir = net.scratch(CONFIG);
    let config = dir.join("registrar.toml");
    let config = config.to_str().unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let logs = [log_a.as_path(), log_b.as_path()];
    let (ra, rb) = ("10.202.0.1:3863", "10.202.0.2:3863");
    // Neither is given a peer: each hears the other's Presence on the group.
    let registrar = |ns: &str, asap: &str, enrp: &str, id: &str, log: &std::path::Path| {
        net.spawn(
            ns,
            &["registrar", "--asap", asap, "--enrp", enrp, "--id", id, "--config", config, "--log", "debug"],
            Some(log),
        )
    };
    let _a = registrar(&net.a, ra, "10.202.0.1:9901", "a1", &log_a);
    let _b = registrar(&net.b, rb, "10.202.0.2:9901", "b2", &log_b);
    eventually("both registrars answer", &logs, || net.answers(&net.a, ra) && net.answers(&net.b, rb));

    let register = |ns: &str, at: &str, id: &str, port: &str| {
        net.spawn(
            ns,
            &[
                "register",
                "--registrar",
                at,
                "--pool",
                "mcast",
                "--id",
                id,
                "--transport",
                &format!("tcp:10.202.0.9:{port}"),
            ],
            None,
        )
    };
    // Registered at A, resolved at B; and the other way round.
    let _p1 = register(&net.a, ra, "0x00000001", "7001");
    let _p2 = register(&net.b, rb, "0x00000002", "7002");
    let want: Vec<(String, String)> = [("0x00000001", "0x000000a1"), ("0x00000002", "0x000000b2")]
        .iter()
        .map(|(i, h)| (i.to_string(), h.to_string()))
        .collect();
    eventually("each PE resolves at both registrars, under its home", &logs, || {
        net.resolve_homes(&net.b, rb, "mcast") == want && net.resolve_homes(&net.a, ra, "mcast") == want
    });
    // They met by multicast, not by configuration.
    let log = std::fs::read_to_string(&log_a).unwrap() + &std::fs::read_to_string(&log_b).unwrap();
    assert!(log.contains("multicast Presence from a new registrar"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
