//! ENRP peer discovery by multicast Presence with real processes: two registrars that are told
//! nothing of each other (no `--peer`) find each other on the multicast group and share their
//! pool elements. Multicast must not leave the machine: each registrar runs in its own network
//! namespace, the two joined by a veth pair only (root and `ip netns`; skipped with a message
//! where they are not allowed). No test depends on timing: waits are bounded polls that only
//! guard against deadlock.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rserpool");
const PATIENCE: Duration = Duration::from_secs(60);

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

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Two namespaces joined by a veth pair, with a multicast route over it; removed when dropped.
struct Net {
    a: String,
    b: String,
}

impl Net {
    fn new() -> Option<Self> {
        let tag = std::process::id() % 100_000;
        let (a, b) = (format!("rsmA{tag}"), format!("rsmB{tag}"));
        if !ip(&["netns", "add", &a]) {
            return None;
        }
        let net = Self { a: a.clone(), b: b.clone() };
        let ok = ip(&["netns", "add", &b])
            && ip(&["link", "add", "rsmva", "netns", &a, "type", "veth", "peer", "name", "rsmvb", "netns", &b])
            && ip(&["-n", &a, "addr", "add", "10.202.0.1/24", "dev", "rsmva"])
            && ip(&["-n", &b, "addr", "add", "10.202.0.2/24", "dev", "rsmvb"])
            && [&a, &b].iter().all(|ns| ip(&["-n", ns, "link", "set", "lo", "up"]))
            && ip(&["-n", &a, "link", "set", "rsmva", "multicast", "on", "up"])
            && ip(&["-n", &b, "link", "set", "rsmvb", "multicast", "on", "up"])
            && ip(&["-n", &a, "route", "add", "224.0.0.0/4", "dev", "rsmva"])
            && ip(&["-n", &b, "route", "add", "224.0.0.0/4", "dev", "rsmvb"]);
        ok.then_some(net)
    }

    fn spawn(&self, ns: &str, args: &[&str], log: Option<&std::path::Path>) -> Proc {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn in a namespace");
        Proc(child)
    }

    /// Whether the registrar at `addr` answers (a resolution of any pool gets through).
    fn answers(&self, ns: &str, addr: &str) -> bool {
        let out = Command::new("ip").args(["netns", "exec", ns, BIN, "resolve", "--registrar", addr, "none"]).output();
        out.is_ok_and(|o| o.status.code() != Some(2))
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

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, logs: &[&std::path::Path], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        if Instant::now() >= deadline {
            for l in logs {
                eprintln!("--- {}:\n{}", l.display(), std::fs::read_to_string(l).unwrap_or_default());
            }
            panic!("never happened: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_registrars_that_know_nothing_of_each_other_meet_by_multicast_and_share_pes() {
    let Some(net) = Net::new() else {
        let why = "network namespaces are not available here (needs root and `ip netns`)";
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "enrp_multicast: skipped: {why}");
        return;
    };
    let dir = std::env::temp_dir().join(format!("rserpool-mcast-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("registrar.toml");
    std::fs::write(&config, CONFIG).unwrap();
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
