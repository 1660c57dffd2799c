//! A real network partition between two registrars, made with network namespaces (root and
//! `ip netns`; skipped with a message where they are not allowed):
//! each side registers and deregisters pool elements while cut off, and after the link comes
//! back both registrars agree, with no PE lost and none resurrected.
//!
//! Registrar A runs in one namespace, B in another, joined by a veth pair; pool elements are
//! `rserpool register` processes in the namespaces, and every check is an `rserpool resolve`
//! from there. No test depends on timing: waits are bounded polls that only guard against
//! deadlock.

#[path = "support/netns.rs"]
mod netns;

use netns::{skipped, Net};

fn eventually(what: &str, check: impl FnMut() -> bool) {
    netns::eventually(what, &[], check);
}

/// Short ENRP timers: the partition is noticed within a second.
const CONFIG: &str = "[timers]
peer_heartbeat = 100
max_time_last_heard = 400
max_time_no_response = 200
takeover_expiry = 1000
mentor_discovery = 300
peer_reconnect = 100
keep_alive_interval = 300
keep_alive_timeout = 600

[security]
# The registrars' network: A admits B, which names A as its peer.
enrp_allowlist = [\"10.201.0.0/24\"]
# The test's PEs register an address that is not their connection's.
registration_check = \"off\"
";

#[test]
fn both_sides_of_a_partition_agree_once_it_heals() {
    let Some(net) = Net::new("rsp", "10.201.0", false) else {
        skipped("enrp_partition");
        return;
    };
    let dir = net.scratch(CONFIG);
    let config = dir.join("registrar.toml");
    let config = config.to_str().unwrap();
    let (ra, rb) = ("10.201.0.1:3863", "10.201.0.2:3863");
    let _a = net.spawn(
        &net.a,
        &["registrar", "--asap", ra, "--enrp", "10.201.0.1:9901", "--id", "a1", "--config", config],
        None,
    );
    let _b = net.spawn(
        &net.b,
        &[
            "registrar",
            "--asap",
            rb,
            "--enrp",
            "10.201.0.2:9901",
            "--id",
            "b2",
            "--peer",
            "10.201.0.1:9901",
            "--config",
            config,
        ],
        None,
    );
    eventually("both registrars answer", || net.answers(&net.a, ra) && net.answers(&net.b, rb));
    let register = |ns: &str, at: &str, id: &str, port: &str| {
        net.spawn(
            ns,
            &[
                "register",
                "--registrar",
                at,
                "--pool",
                "split",
                "--id",
                id,
                "--transport",
                &format!("tcp:10.201.0.9:{port}"),
            ],
            None,
        )
    };
    let both = |want: &[&str]| {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        net.resolve(&net.a, ra, "split") == want && net.resolve(&net.b, rb, "split") == want
    };
    let p1 = register(&net.a, ra, "0x00000001", "7001");
    let _p2 = register(&net.b, rb, "0x00000002", "7002");
    eventually("both PEs known on both sides", || both(&["0x00000001", "0x00000002"]));

    net.cut(true);
    // While cut off: A loses p1 and gains p3; B gains p4.
    p1.interrupt();
    let _p3 = register(&net.a, ra, "0x00000003", "7003");
    let _p4 = register(&net.b, rb, "0x00000004", "7004");
    eventually("each side sees its own changes", || {
        let a = net.resolve(&net.a, ra, "split");
        let b = net.resolve(&net.b, rb, "split");
        a.contains(&"0x00000003".to_string())
            && !a.contains(&"0x00000001".to_string())
            && b.contains(&"0x00000004".to_string())
    });
    // Each side declares the other dead and takes over its PEs.
    eventually("A took over B's PE while cut off", || {
        net.resolve_homes(&net.a, ra, "split").contains(&("0x00000002".into(), "0x000000a1".into()))
    });

    net.cut(false);
    eventually("after healing, both agree: nothing lost, nothing resurrected, one home each", || {
        let want: Vec<(String, String)> =
            [("0x00000002", "0x000000b2"), ("0x00000003", "0x000000a1"), ("0x00000004", "0x000000b2")]
                .iter()
                .map(|(i, h)| (i.to_string(), h.to_string()))
                .collect();
        both(&["0x00000002", "0x00000003", "0x00000004"])
            && net.resolve_homes(&net.a, ra, "split") == want
            && net.resolve_homes(&net.b, rb, "split") == want
    });
    let _ = std::fs::remove_dir_all(&dir);
}
