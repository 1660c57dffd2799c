//! A real network partition between two registrars, made with network namespaces (root and
//! `ip netns`; skipped with a message where they are not allowed):
//! each side registers and deregisters pool elements while cut off, and after the link comes
//! back both registrars agree, with no PE lost and none resurrected.
//!
//! Registrar A runs in one namespace, B in another, joined by a veth pair; pool elements are
//! `rserpool register` processes in the namespaces, and every check is an `rserpool resolve`
//! from there. No test depends on timing: waits are bounded polls that only guard against
//! deadlock.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rserpool");
const PATIENCE: Duration = Duration::from_secs(60);

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

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Two namespaces joined by a veth pair, removed when dropped.
struct Net {
    a: String,
    b: String,
}

impl Net {
    fn new() -> Option<Self> {
        let tag = std::process::id() % 100_000;
        let (a, b) = (format!("rspA{tag}"), format!("rspB{tag}"));
        if !ip(&["netns", "add", &a]) {
            return None;
        }
        let net = Self { a: a.clone(), b: b.clone() };
        let ok = ip(&["netns", "add", &b])
            && ip(&["link", "add", "rspva", "netns", &a, "type", "veth", "peer", "name", "rspvb", "netns", &b])
            && ip(&["-n", &a, "addr", "add", "10.201.0.1/24", "dev", "rspva"])
            && ip(&["-n", &b, "addr", "add", "10.201.0.2/24", "dev", "rspvb"])
            && [&a, &b].iter().all(|ns| ip(&["-n", ns, "link", "set", "lo", "up"]))
            && ip(&["-n", &a, "link", "set", "rspva", "up"])
            && ip(&["-n", &b, "link", "set", "rspvb", "up"]);
        ok.then_some(net)
    }

    /// Cuts (`true`) or restores the link.
    fn cut(&self, cut: bool) {
        assert!(ip(&["-n", &self.a, "link", "set", "rspva", if cut { "down" } else { "up" }]));
        assert!(ip(&["-n", &self.b, "link", "set", "rspvb", if cut { "down" } else { "up" }]));
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in a namespace");
        Proc(child)
    }

    /// Whether the registrar at `addr` answers (a resolution of any pool gets through).
    fn answers(&self, ns: &str, addr: &str) -> bool {
        let out = Command::new("ip").args(["netns", "exec", ns, BIN, "resolve", "--registrar", addr, "none"]).output();
        out.is_ok_and(|o| o.status.code() != Some(2))
    }

    /// The PE ids pool `pool` resolves to at the registrar at `addr`, asked from `ns`.
    fn resolve(&self, ns: &str, addr: &str, pool: &str) -> Vec<String> {
        self.resolve_homes(ns, addr, pool).into_iter().map(|(id, _)| id).collect()
    }

    /// The (PE id, home registrar id) pairs of pool `pool` at the registrar at `addr`.
    fn resolve_homes(&self, ns: &str, addr: &str, pool: &str) -> Vec<(String, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "resolve", "--json", "--items", "100", "--registrar", addr, pool])
            .output()
            .expect("resolve");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |rest: &str, name: &str| {
            rest.split(&format!("\"{name}\"")).nth(1).and_then(|r| r.split('"').nth(1)).map(str::to_string)
        };
        let mut pes: Vec<(String, String)> = text
            .split("\"pe_id\"")
            .skip(1)
            .filter_map(|rest| Some((rest.split('"').nth(1)?.to_string(), field(rest, "home_registrar")?)))
            .collect();
        pes.sort();
        pes
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    /// SIGINT (what Ctrl-C sends): a PE deregisters on it.
    fn interrupt(mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        while self.0.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "the PE did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn both_sides_of_a_partition_agree_once_it_heals() {
    let Some(net) = Net::new() else {
        let why = "network namespaces are not available here (needs root and `ip netns`)";
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "enrp_partition: skipped: {why}");
        return;
    };
    let dir = std::env::temp_dir().join(format!("rserpool-partition-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("registrar.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let (ra, rb) = ("10.201.0.1:3863", "10.201.0.2:3863");
    let _a =
        net.spawn(&net.a, &["registrar", "--asap", ra, "--enrp", "10.201.0.1:9901", "--id", "a1", "--config", config]);
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
