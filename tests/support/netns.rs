//! Two network namespaces joined by a veth pair, for tests that need a real network between
//! registrar processes (root and `ip netns`; a test skips with a message where `Net::new`
//! returns `None`). Everything is removed when dropped.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registrar binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rserpool");
/// How long a bounded wait may last before the test fails (only guards against deadlock).
pub const PATIENCE: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Namespaces `a` and `b`, addresses `<net>.1/24` and `<net>.2/24` on the two ends of a veth pair.
pub struct Net {
    pub a: String,
    pub b: String,
    va: String,
    vb: String,
}

impl Net {
    /// Namespaces named after `tag` (a few letters, unique per test file) on network `net`
    /// (three octets, e.g. "10.201.0"); with `multicast`, the veth ends carry multicast and
    /// route 224.0.0.0/4.
    pub fn new(tag: &str, net: &str, multicast: bool) -> Option<Self> {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("{tag}A{id}"), format!("{tag}B{id}"));
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        if !ip(&["netns", "add", &a]) {
            return None;
        }
        let n = Self { a: a.clone(), b: b.clone(), va: va.clone(), vb: vb.clone() };
        let mut ok = ip(&["netns", "add", &b])
            && ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b])
            && ip(&["-n", &a, "addr", "add", &format!("{net}.1/24"), "dev", &va])
            && ip(&["-n", &b, "addr", "add", &format!("{net}.2/24"), "dev", &vb])
            && [&a, &b].iter().all(|ns| ip(&["-n", ns, "link", "set", "lo", "up"]));
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ok = ok
                && if multicast {
                    ip(&["-n", ns, "link", "set", dev, "multicast", "on", "up"])
                        && ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])
                } else {
                    ip(&["-n", ns, "link", "set", dev, "up"])
                };
        }
        ok.then_some(n)
    }

    /// A scratch directory for this test (configuration, logs), with `config` written to
    /// `registrar.toml` in it; returns the directory.
    pub fn scratch(&self, config: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rserpool-{}", self.a));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("registrar.toml"), config).unwrap();
        dir
    }

    /// Cuts (`true`) or restores the link.
    pub fn cut(&self, cut: bool) {
        let state = if cut { "down" } else { "up" };
        assert!(ip(&["-n", &self.a, "link", "set", &self.va, state]));
        assert!(ip(&["-n", &self.b, "link", "set", &self.vb, state]));
    }

    /// Runs the binary with `args` in namespace `ns`, its stderr to `log` if given.
    pub fn spawn(&self, ns: &str, args: &[&str], log: Option<&Path>) -> Proc {
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
    pub fn answers(&self, ns: &str, addr: &str) -> bool {
        let out = Command::new("ip").args(["netns", "exec", ns, BIN, "resolve", "--registrar", addr, "none"]).output();
        out.is_ok_and(|o| o.status.code() != Some(2))
    }

    /// The PE ids pool `pool` resolves to at the registrar at `addr`, asked from `ns`.
    pub fn resolve(&self, ns: &str, addr: &str, pool: &str) -> Vec<String> {
        self.resolve_homes(ns, addr, pool).into_iter().map(|(id, _)| id).collect()
    }

    /// The (PE id, home registrar id) pairs of pool `pool` at the registrar at `addr`.
    pub fn resolve_homes(&self, ns: &str, addr: &str, pool: &str) -> Vec<(String, String)> {
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
pub struct Proc(pub Child);

impl Proc {
    /// SIGINT (what Ctrl-C sends): a PE deregisters on it.
    pub fn interrupt(mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        while self.0.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "the process did not stop");
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

/// Polls `check` until it holds; fails after [`PATIENCE`], printing the `logs` files.
pub fn eventually(what: &str, logs: &[&Path], mut check: impl FnMut() -> bool) {
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

/// Says on stderr that `test` is skipped because namespaces are not available.
pub fn skipped(test: &str) {
    use std::io::Write;
    let why = "network namespaces are not available here (needs root and `ip netns`)";
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}
