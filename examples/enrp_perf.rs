//! ENRP between registrar processes on loopback: how long a new peer takes to get the whole
//! handle table, and how long a takeover of a dead peer's PEs takes; and the table transfer's
//! CPU per PE in process.
//!
//! ```text
//! cargo build --release && cargo build --release --example enrp_perf
//! target/release/examples/enrp_perf sync     [--pes 1000000] [--rounds 3] [--cores 1,1] [--chunk N] [--max-message B] [--expected-pes N] [--bin B]...
//! target/release/examples/enrp_perf takeover [--pes 100000]  [--rounds 3] [--bin B]...
//! target/release/examples/enrp_perf inproc   [--pes 1000000] [--rounds 3] [--chunk N] [--expected-pes N]
//! target/release/examples/enrp_perf updates  [--pes 100000]  [--rounds 3]
//! ```
//!
//! **sync**: registrar A (one shard) gets `--pes` PEs registered over one pipelined connection
//! (1,000 pools); then registrar B starts with `--peer A`. Measured from B's spawn: when its
//! ASAP port accepts, its log lines "joining: asking the mentor" and "handle table received:
//! consistent" (the tracing timestamps, microseconds), and the first `rserpool status` answer
//! (polled every 0.5 ms over one connection) that counts all PEs as `pes_of_peers`. Also the
//! CPU time A and B spent meanwhile (`/proc/PID/task/*/schedstat`). `--cores A,B` pins A and B
//! (default both on core 1, the client here on core 0); `--chunk` sets
//! `limits.max_table_chunk` and `--max-message` `limits.max_message_size` of both,
//! `--expected-pes` B's `limits.expected_pes` (B sized for the table it is about to get). Several
//! `--bin` alternate, round by round (A B A B).
//!
//! **takeover**: A, B and C (one shard each, all on core 1) with short ENRP timers; A gets
//! `--pes` PEs (1,000 pools) whose ASAP transport is a listener here; once B and C hold them
//! all, A is killed (SIGKILL). Measured: each survivor's log line "peer did not answer: declared
//! dead" (detection), "took over the PEs of a dead registrar" / "peer took over a registrar",
//! and the first poll (every 0.5 ms, per survivor) where the new home's status counts all PEs
//! as `pes_owned` and a resolution of a sample pool at each survivor names the new home for
//! every PE. Afterwards every pool is resolved at both survivors to check that all PEs moved.
//! Separately: when the keep-alives with the H flag from the new home reached the PEs'
//! listener (first and last of them).
//!
//! **inproc**: one registrar shard A with `--pes` PEs and one shard B joining it, driven by
//! hand without I/O on core 1: A's export (every Handle Table Response, as its coordinator asks
//! for them) and B's import (its coordinator splitting each response, then its shard storing
//! the entries), each timed by the thread's CPU clock; CPU per PE without the kernel or the
//! other process. `--expected-pes` sets B's `limits.expected_pes` (its room taken at start).
//!
//! **updates**: the Handle Updates registrar A (one shard) encodes while `--pes` PEs register
//! (1,000 pools) are fed to a registrar shard B that has A as its peer, in reads of whole
//! messages of up to 16 KiB, twice: first every update adds a PE B does not hold, then the
//! same updates again refresh PEs it holds (what re-registrations at A cause). CPU per update
//! at B (thread CPU time, core 1), split into its coordinator's part (reading the peer
//! connection) and its pool shard's (applying them).
//!
//! `ENRP_PERF_RECORD=DIR` runs each spawned registrar under `perf record` (DWARF call graphs)
//! into `DIR/NAME.data`. One JSON line per round on stdout.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rserpool::enrp::EnrpMsg;
use rserpool::registrar::{Registrar, RegistrarConfig, ShardMsg, StatusReport, ASAP, ENRP, STATUS_REQUEST};
use rserpool::service::{ConnId, Recorder, Service};
use rserpool::time::Time;
use rserpool::wire::asap::{self, Body, MessageType, Resolution};
use rserpool::wire::enrp;
use rserpool::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, ServerInformationRepr, TransportProtocol,
    TransportRepr, Writer,
};

const POOLS: usize = 1000;

/// Seconds since the epoch, now.
fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("cannot pin to core {core}");
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn registration(pool: usize, pe_id: u32, asap_port: Option<u16>) -> Vec<u8> {
    let tcp = |ip: std::net::IpAddr, port| TransportRepr::new(TransportProtocol::Tcp, ip, port);
    let pe = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: -1,
        // From the address the registration comes from (the registrar checks the source:
        // security.registration_check); the PEs of a pool differ by port.
        user_transport: tcp([127, 0, 0, 1].into(), 1024 + (pe_id as usize / POOLS % 64_000) as u16),
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: asap_port.map(|p| tcp([127, 0, 0, 1].into(), p)),
    };
    let params = vec![ParamRepr::PoolHandle(pool_name(pool).into_bytes()), ParamRepr::PoolElement(pe)];
    MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap()
}

fn pool_name(pool: usize) -> String {
    format!("pool-{pool:04}")
}

/// Reads one whole ASAP message.
fn read_message(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]])).max(4);
    let mut m = head.to_vec();
    m.resize(len, 0);
    s.read_exact(&mut m[4..])?;
    Ok(m)
}

/// A registrar process; killed (SIGKILL) when dropped.
struct Reg {
    child: Child,
    asap: SocketAddr,
    enrp: SocketAddr,
    log: PathBuf,
}

impl Reg {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        if std::env::var_os("ENRP_PERF_RECORD").is_some() {
            // The registrar under perf is perf's child: stop it by its pid; perf then writes
            // its data and exits.
            let pid = self.pid();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for c in children.split_whitespace() {
                let _ = Command::new("kill").arg("-TERM").arg(c).status();
            }
            let _ = self.child.wait();
        }
        self.kill();
    }
}

/// Starts a one-shard registrar on `core` with server id `id`, peering with `peers`, with the
/// extra TOML `config`; returns at once (its start is part of what is measured).
fn spawn(binary: &str, dir: &Path, name: &str, id: &str, core: usize, peers: &[SocketAddr], config: &str) -> Reg {
    let (asap, enrp) = (free_addr(), free_addr());
    let profile = dir.join(format!("{name}-profile.toml"));
    std::fs::write(&profile, format!("description = \"enrp_perf {name}: core {core}\"\nshard_cores = [{core}]\n"))
        .unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join(format!("{name}.log"));
    // ENRP_PERF_RECORD=DIR profiles each registrar with `perf record` into DIR/NAME.data.
    let mut cmd = match std::env::var("ENRP_PERF_RECORD") {
        Ok(out) => {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "1999", "--call-graph", "dwarf,32768", "-o"])
                .arg(format!("{out}/{name}.data"))
                .arg("--")
                .arg(binary);
            c
        }
        Err(_) => Command::new(binary),
    };
    cmd.args(["registrar", "--asap", &asap.to_string(), "--enrp", &enrp.to_string(), "--id", id])
        .args(["--cores", "1", "--log", "info"])
        .arg("--profile")
        .arg(&profile)
        .arg("--config")
        .arg(&cfg);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    Reg { child, asap, enrp, log }
}

fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true).unwrap();
                return s;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "{addr} does not listen: {e}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

fn status(s: &mut TcpStream) -> StatusReport {
    s.write_all(&[STATUS_REQUEST, 0, 0, 4]).unwrap();
    StatusReport::from_message(&read_message(s).unwrap()).unwrap()
}

/// Polls `f` until it is true (bounded: a guard against a hang, not a measurement).
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Registers `pes` PEs in `POOLS` pools at `addr`, pipelined over one connection; checks every
/// answer. Returns the seconds it took.
fn register_all(addr: SocketAddr, pes: usize, asap_port: Option<u16>) -> f64 {
    let mut s = connect(addr, Duration::from_secs(10));
    let mut reader = std::io::BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
    let started = Instant::now();
    let reads = std::thread::spawn(move || {
        for i in 0..pes {
            let m = read_message(&mut reader).unwrap();
            match asap::parse(&m).map(|m| m.body().clone()) {
                Ok(Body::RegistrationResponse { rejected: false, error: None, .. }) => {}
                other => panic!("registration {i} refused: {other:?}"),
            }
        }
        reader
    });
    let mut batch = Vec::with_capacity(256 * 1024);
    for i in 0..pes {
        batch.extend(registration(i % POOLS, 1 + i as u32, asap_port));
        if batch.len() > 200 * 1024 {
            s.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    s.write_all(&batch).unwrap();
    let reader = reads.join().unwrap();
    let took = started.elapsed().as_secs_f64();
    // The connection stays open (closing it would deregister the PEs).
    std::mem::forget(reader);
    std::mem::forget(s);
    took
}

/// The wall time (seconds since the epoch) of the first line of `log` containing `needle`.
fn log_time(log: &Path, needle: &str) -> Option<f64> {
    let f = std::fs::File::open(log).ok()?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.ok()?;
        if line.contains(needle) {
            return parse_stamp(line.split_whitespace().next()?);
        }
    }
    None
}

/// `2026-12-01T03:15:13.692400Z` as seconds since the epoch.
fn parse_stamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some(days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2])
}

/// CPU time of every thread of `pid`, seconds.
fn cpu(pid: u32) -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e9
}

fn ms(x: Option<f64>) -> String {
    x.map_or("null".into(), |v| format!("{:.1}", v * 1e3))
}

struct SyncOpts {
    pes: usize,
    cores: (usize, usize),
    chunk: Option<usize>,
    max_message: Option<usize>,
    /// B's `limits.expected_pes`.
    expected: usize,
}

fn limits(pes: usize, o: &SyncOpts) -> String {
    let mut s = format!(
        "[limits]\nmax_pes_per_connection = {}\nmax_pes = {}\nmax_peer_pes = {}\nmax_pes_per_pool = {}\n",
        pes + 10,
        pes * 2 + 10,
        pes * 2 + 10,
        pes + 10
    );
    if let Some(c) = o.chunk {
        s += &format!("max_table_chunk = {c}\n");
    }
    if let Some(m) = o.max_message {
        s += &format!("max_message_size = {m}\n");
    }
    s
}

fn sync_round(binary: &str, o: &SyncOpts, round: usize) -> String {
    let dir = std::env::temp_dir().join(format!("rserpool-enrp-sync-{}-{round}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pin(0);
    let config = limits(o.pes, o);
    let a = spawn(binary, &dir, "a", "aaaa0001", o.cores.0, &[], &config);
    let register_s = register_all(a.asap, o.pes, None);
    let mut sa = connect(a.asap, Duration::from_secs(10));
    assert_eq!(status(&mut sa).pes_owned, o.pes as u64);
    std::thread::sleep(Duration::from_millis(200));
    let (cpu_a0, t0) = (cpu(a.pid()), wall());
    let config_b = format!("{config}expected_pes = {}\n", o.expected);
    let b = spawn(binary, &dir, "b", "bbbb0002", o.cores.1, &[a.enrp], &config_b);
    let mut sb = connect(b.asap, Duration::from_secs(10));
    let listening = wall() - t0;
    let (mut polls, mut all, mut last) = (0u64, None, StatusReport::default());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let sent = wall();
        last = status(&mut sb);
        polls += 1;
        if last.pes_of_peers == o.pes as u64 && last.state == "consistent" {
            all = Some((sent - t0, wall() - t0));
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let (cpu_a, cpu_b) = (cpu(a.pid()) - cpu_a0, cpu(b.pid()));
    let asked = log_time(&b.log, "joining: asking the mentor").map(|t| t - t0);
    let consistent = log_time(&b.log, "handle table received: consistent").map(|t| t - t0);
    let (poll_sent, poll_seen) = all.map_or((None, None), |(s, r)| (Some(s), Some(r)));
    let line = format!(
        "{{\"mode\":\"sync\",\"binary\":\"{binary}\",\"round\":{round},\"pes\":{},\"cores\":[{},{}],\"chunk\":{},\"max_message\":{},\"b_expected_pes\":{},\
         \"register_s\":{register_s:.3},\"b_listening_ms\":{:.1},\"b_asked_mentor_ms\":{},\"b_consistent_log_ms\":{},\
         \"b_all_pes_poll_sent_ms\":{},\"b_all_pes_poll_answered_ms\":{},\"transfer_ms\":{},\"polls\":{polls},\
         \"b_pes_of_peers\":{},\"cpu_a_ms\":{:.1},\"cpu_b_ms\":{:.1}}}",
        o.pes,
        o.cores.0,
        o.cores.1,
        o.chunk.map_or("null".into(), |c| c.to_string()),
        o.max_message.map_or("null".into(), |c| c.to_string()),
        o.expected,
        listening * 1e3,
        ms(asked),
        ms(consistent),
        ms(poll_sent),
        ms(poll_seen),
        ms(consistent.zip(asked).map(|(c, a)| c - a)),
        last.pes_of_peers,
        cpu_a * 1e3,
        cpu_b * 1e3,
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    line
}

/// Short ENRP timers; keep-alives rare and patient, so taken-over PEs stay while measured.
const TAKEOVER_TIMERS: &str = "[timers]
peer_heartbeat = 100
max_time_last_heard = 300
max_time_no_response = 100
takeover_expiry = 2000
mentor_discovery = 300
peer_reconnect = 100
keep_alive_interval = 600000
keep_alive_timeout = 600000
";

/// The PEs' ASAP transport: counts the Endpoint Keep Alives with the H flag that arrive, with
/// the wall times of the first and the last.
struct PeListener {
    port: u16,
    count: Arc<AtomicU64>,
    first: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeListener {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let (count, first, last) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, la, st) = (count.clone(), first.clone(), last.clone(), stop.clone());
        std::thread::spawn(move || {
            pin(0);
            while !st.load(Ordering::Relaxed) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let (c, f, la) = (c.clone(), f.clone(), la.clone());
                std::thread::spawn(move || {
                    pin(0);
                    s.set_nonblocking(false).unwrap();
                    let mut r = std::io::BufReader::with_capacity(1 << 20, s);
                    while let Ok(m) = read_message(&mut r) {
                        if let Ok(Body::EndpointKeepAlive { home: true, .. }) =
                            asap::parse(&m).map(|m| m.body().clone())
                        {
                            let now = (wall() * 1e6) as u64;
                            let _ = f.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                            la.store(now, Ordering::Relaxed);
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Self { port, count, first, last, stop }
    }
}

impl Drop for PeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// PE id → home of every PE a resolution of `pool` at `s` returns.
fn homes(s: &mut TcpStream, pool: usize) -> HashMap<u32, u32> {
    let mut req = Vec::new();
    asap::emit_handle_resolution(&mut Writer::new(&mut req), pool_name(pool).as_bytes(), Some(128)).unwrap();
    s.write_all(&req).unwrap();
    let m = read_message(s).unwrap();
    let m = asap::parse(&m).unwrap();
    match m.body() {
        Body::HandleResolutionResponse { resolution: Resolution::Found { pool_elements, .. }, .. } => {
            pool_elements.clone().map(|pe| (pe.pe_id(), pe.home_registrar())).collect()
        }
        _ => HashMap::new(),
    }
}

fn takeover_round(binary: &str, pes: usize, round: usize) -> String {
    let dir = std::env::temp_dir().join(format!("rserpool-enrp-takeover-{}-{round}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pin(0);
    let o = SyncOpts { pes, cores: (1, 1), chunk: None, max_message: None, expected: 0 };
    let config = format!("{}{TAKEOVER_TIMERS}", limits(pes, &o));
    let (ida, idb, idc) = (0xaaaa_0001u32, 0xbbbb_0002u32, 0xcccc_0003u32);
    let mut a = spawn(binary, &dir, "a", "aaaa0001", 1, &[], &config);
    let mut sa = connect(a.asap, Duration::from_secs(10));
    let b = spawn(binary, &dir, "b", "bbbb0002", 1, &[a.enrp], &config);
    let c = spawn(binary, &dir, "c", "cccc0003", 1, &[a.enrp], &config);
    let (mut sb, mut scc) = (connect(b.asap, Duration::from_secs(10)), connect(c.asap, Duration::from_secs(10)));
    wait_for("a full mesh", Duration::from_secs(30), || {
        [&mut sa, &mut sb, &mut scc].into_iter().all(|s| {
            let r = status(s);
            r.state == "consistent" && r.peers.iter().filter(|p| p.connected).count() == 2
        })
    });
    let pe_listener = PeListener::start();
    let register_s = register_all(a.asap, pes, Some(pe_listener.port));
    wait_for("B and C to hold every PE of A", Duration::from_secs(60), || {
        status(&mut sb).pes_of_peers == pes as u64 && status(&mut scc).pes_of_peers == pes as u64
    });
    std::thread::sleep(Duration::from_millis(500));
    let (mut rb, mut rc) = (connect(b.asap, Duration::from_secs(1)), connect(c.asap, Duration::from_secs(1)));
    let sample = POOLS - 1;
    assert!(homes(&mut rb, sample).values().all(|h| *h == ida));
    let t_kill = wall();
    a.kill();
    // Poll both survivors: ownership has moved at one when its sample pool names one new home
    // for every PE, and at the new home when it also counts all PEs as its own.
    let (mut moved_b, mut moved_c) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (moved_b.is_none() || moved_c.is_none()) && Instant::now() < deadline {
        for (name, res, st, moved) in [("b", &mut rb, &mut sb, &mut moved_b), ("c", &mut rc, &mut scc, &mut moved_c)] {
            if moved.is_some() {
                continue;
            }
            let sent = wall();
            let h = homes(res, sample);
            let home = h.values().next().copied().unwrap_or(0);
            let all_one = h.len() == pes / POOLS && h.values().all(|x| *x == home) && home != ida && home != 0;
            if all_one {
                let me = if name == "b" { idb } else { idc };
                if home != me || status(st).pes_owned == pes as u64 {
                    *moved = Some((sent - t_kill, wall() - t_kill, home));
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let t_end = wall();
    // Every pool at both, under one new home.
    let new_home = moved_b.map(|m| m.2).unwrap_or(0);
    let mut all_moved = true;
    for pool in 0..POOLS {
        for s in [&mut rb, &mut rc] {
            let h = homes(s, pool);
            all_moved &= h.len() == pes / POOLS && h.values().all(|x| *x == new_home);
        }
    }
    wait_for("the keep-alives to the PEs", Duration::from_secs(30), || {
        pe_listener.count.load(Ordering::Relaxed) >= pes as u64
    });
    let ka = pe_listener.count.load(Ordering::Relaxed);
    let ka_first = pe_listener.first.load(Ordering::Relaxed) as f64 / 1e6 - t_kill;
    let ka_last = pe_listener.last.load(Ordering::Relaxed) as f64 / 1e6 - t_kill;
    let at = |r: &Reg, needle: &str| log_time(&r.log, needle).map(|t| t - t_kill);
    let (dead_b, dead_c) = (at(&b, "declared dead"), at(&c, "declared dead"));
    let detected = match (dead_b, dead_c) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    let done = moved_b.zip(moved_c).map(|(x, y)| x.1.max(y.1));
    let done_sent = moved_b.zip(moved_c).map(|(x, y)| x.0.max(y.0));
    let (winner, loser) = if new_home == idb { (&b, &c) } else { (&c, &b) };
    let line = format!(
        "{{\"mode\":\"takeover\",\"binary\":\"{binary}\",\"round\":{round},\"pes\":{pes},\"register_s\":{register_s:.3},\
         \"new_home\":\"{new_home:#010x}\",\"all_moved_everywhere\":{all_moved},\
         \"b_declared_dead_ms\":{},\"c_declared_dead_ms\":{},\"winner_started_ms\":{},\"winner_took_over_log_ms\":{},\
         \"loser_told_log_ms\":{},\"b_moved_poll_sent_ms\":{},\"b_moved_ms\":{},\"c_moved_poll_sent_ms\":{},\"c_moved_ms\":{},\
         \"detection_to_moved_everywhere_ms\":{},\"detection_to_last_poll_sent_ms\":{},\
         \"keepalives_h\":{ka},\"keepalive_first_ms\":{:.1},\"keepalive_last_ms\":{:.1},\"poll_end_ms\":{:.1}}}",
        ms(dead_b),
        ms(dead_c),
        ms(at(winner, "starting a takeover")),
        ms(at(winner, "took over the PEs of a dead registrar")),
        ms(at(loser, "peer took over a registrar")),
        ms(moved_b.map(|m| m.0)),
        ms(moved_b.map(|m| m.1)),
        ms(moved_c.map(|m| m.0)),
        ms(moved_c.map(|m| m.1)),
        ms(done.zip(detected).map(|(d, x)| d - x)),
        ms(done_sent.zip(detected).map(|(d, x)| d - x)),
        ka_first * 1e3,
        ka_last * 1e3,
        (t_end - t_kill) * 1e3,
    );
    drop((b, c, pe_listener));
    let _ = std::fs::remove_dir_all(&dir);
    line
}

/// One registrar shard with ENRP on, without I/O.
fn shard_of_registrar(id: u32, pes: usize, chunk: Option<usize>, peers: Vec<SocketAddr>, expected: usize) -> Registrar {
    let mut config = RegistrarConfig::new(id, 1);
    config.limits.expected_pes = expected;
    config.limits.max_pes_per_connection = pes + 10;
    config.limits.max_pes = pes * 2 + 10;
    if let Some(c) = chunk {
        config.limits.max_table_chunk = c;
    }
    config.enrp = Some(format!("127.0.0.{}:9901", id & 0xff).parse().unwrap());
    config.peers = peers;
    Registrar::new(&config, 0, Time::ZERO)
}

/// Registrar shard `id` with `pes` PEs registered over one connection (1,000 pools); `post`
/// sees every message the shard posted meanwhile.
fn loaded_registrar(id: u32, pes: usize, chunk: Option<usize>, mut post: impl FnMut(ShardMsg)) -> Registrar {
    let mut a = shard_of_registrar(id, pes, chunk, Vec::new(), 0);
    let mut out = Recorder::default();
    let client = ConnId { shard: 0, generation: 1, slot: 0 };
    a.on_accept(client, ASAP, "127.0.0.1:4000".parse().unwrap(), Time::ZERO, &mut out);
    for i in 0..pes {
        let m = registration(i % POOLS, 1 + i as u32, None);
        assert_eq!(a.on_data(client, &m, Time::ZERO, &mut out), m.len());
        out.sent.clear();
        out.posts.drain(..).for_each(&mut post);
    }
    assert_eq!(a.handlespace().pe_count(), pes);
    a
}

/// CPU time of the calling thread, seconds (unlike the wall clock, not inflated when other
/// processes take the core).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The export at A and the import at B, in process and pinned to core 1: CPU per PE of each
/// (thread CPU time).
fn inproc_round(pes: usize, chunk: Option<usize>, expected: usize, round: usize) -> String {
    pin(1);
    let (ida, idb) = (0xaaaa_0001u32, 0xbbbb_0002u32);
    let a_addr: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let mut a = loaded_registrar(ida, pes, chunk, |_| {});
    // Export: one chunk per Export message, as the coordinator asks for them.
    let peer_conn = ConnId { shard: 0, generation: 1, slot: 9 };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let started = thread_cpu();
    let mut first = true;
    loop {
        let mut out = Recorder::default();
        let msg = EnrpMsg::Export { conn: peer_conn, requester: idb, own_only: false, first, last: true };
        a.on_message(0, ShardMsg::Enrp(msg), Time::ZERO, &mut out);
        first = false;
        chunks.push(out.sent);
        if matches!(out.posts.pop_front(), Some(ShardMsg::Enrp(EnrpMsg::Exported { exhausted: true, .. }))) {
            break;
        }
    }
    let export_s = thread_cpu() - started;
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    drop(a);
    // Import: B joins with A as its mentor, then gets the chunks.
    let mut b = shard_of_registrar(idb, pes, chunk, vec![a_addr], expected);
    let mut out = Recorder::default();
    b.on_timer(Time(1), &mut out);
    let conn = out.dialled.first().map(|d| d.1).expect("B dials A");
    b.on_connect(conn, ENRP, Ok(a_addr), Time(1), &mut out);
    let info = ServerInformationRepr {
        server_id: ida,
        transport: TransportRepr::new(TransportProtocol::Tcp, a_addr.ip(), a_addr.port()),
    };
    let mut presence = Vec::new();
    enrp::emit_presence(&mut Writer::new(&mut presence), ida, idb, false, 0xffff, &info).unwrap();
    b.on_data(conn, &presence, Time(1), &mut out);
    while let Some(m) = out.posts.pop_front() {
        b.on_message(0, m, Time(1), &mut out);
    }
    let (mut coordinator_s, mut shard_s) = (0.0, 0.0);
    for c in &chunks {
        let t = thread_cpu();
        assert_eq!(b.on_data(conn, c, Time(2), &mut out), c.len());
        coordinator_s += thread_cpu() - t;
        let t = thread_cpu();
        while let Some(m) = out.posts.pop_front() {
            b.on_message(0, m, Time(2), &mut out);
        }
        shard_s += thread_cpu() - t;
        out.sent.clear();
    }
    assert_eq!(b.handlespace().pe_count(), pes, "B holds every PE");
    assert_eq!(b.coordinator().map(|c| c.sync()), Some(rserpool::enrp::Sync::Consistent));
    let per = |s: f64| s * 1e9 / pes as f64;
    format!(
        "{{\"mode\":\"inproc\",\"round\":{round},\"pes\":{pes},\"expected_pes\":{expected},\"chunk\":{},\"chunks\":{},\"bytes\":{bytes},\
         \"export_ms\":{:.1},\"export_ns_per_pe\":{:.0},\"import_coordinator_ms\":{:.1},\"import_shard_ms\":{:.1},\
         \"import_ns_per_pe\":{:.0},\"total_ms\":{:.1}}}",
        chunk.map_or("null".into(), |c| c.to_string()),
        chunks.len(),
        export_s * 1e3,
        per(export_s),
        coordinator_s * 1e3,
        shard_s * 1e3,
        per(coordinator_s + shard_s),
        (export_s + coordinator_s + shard_s) * 1e3,
    )
}

/// Handle Updates into one registrar shard, in process: CPU per update at the receiver.
fn updates_round(pes: usize, round: usize) -> String {
    pin(1);
    let (ida, idb) = (0xaaaa_0001u32, 0xbbbb_0002u32);
    let a_addr: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let mut updates = Vec::new();
    drop(loaded_registrar(ida, pes, None, |p| {
        if let ShardMsg::Enrp(EnrpMsg::Outgoing { updates: u, .. }) = p {
            updates.extend_from_slice(&u);
        }
    }));
    // Whole messages, up to 16 KiB per read.
    let mut reads: Vec<&[u8]> = Vec::new();
    let (mut from, mut at) = (0, 0);
    let mut count = 0usize;
    while at < updates.len() {
        let len = usize::from(u16::from_be_bytes([updates[at + 2], updates[at + 3]]));
        if at + len - from > 16 * 1024 {
            reads.push(&updates[from..at]);
            from = at;
        }
        at += len;
        count += 1;
    }
    reads.push(&updates[from..]);
    assert_eq!(count, pes, "one Handle Update per registration");
    let mut b = shard_of_registrar(idb, pes, None, vec![a_addr], 0);
    let mut out = Recorder::default();
    b.on_timer(Time(1), &mut out);
    let conn = out.dialled.first().map(|d| d.1).expect("B dials A");
    b.on_connect(conn, ENRP, Ok(a_addr), Time(1), &mut out);
    let pass = |b: &mut Registrar, out: &mut Recorder<ShardMsg>| {
        let (mut coordinator_s, mut shard_s) = (0.0, 0.0);
        for r in &reads {
            let t = thread_cpu();
            assert_eq!(b.on_data(conn, r, Time(2), out), r.len());
            coordinator_s += thread_cpu() - t;
            let t = thread_cpu();
            while let Some(m) = out.posts.pop_front() {
                b.on_message(0, m, Time(2), out);
            }
            shard_s += thread_cpu() - t;
            out.sent.clear();
        }
        (coordinator_s, shard_s)
    };
    let (add_c, add_s) = pass(&mut b, &mut out);
    assert_eq!(b.handlespace().pe_count(), pes, "B holds every PE");
    let (refresh_c, refresh_s) = pass(&mut b, &mut out);
    assert_eq!(b.handlespace().pe_count(), pes, "a refresh adds nothing");
    let ns = |s: f64| s * 1e9 / pes as f64;
    format!(
        "{{\"mode\":\"updates\",\"round\":{round},\"updates\":{pes},\"reads\":{},\"bytes\":{},\
         \"add_coordinator_ns\":{:.0},\"add_shard_ns\":{:.0},\"add_ns_per_update\":{:.0},\
         \"refresh_coordinator_ns\":{:.0},\"refresh_shard_ns\":{:.0},\"refresh_ns_per_update\":{:.0}}}",
        reads.len(),
        updates.len(),
        ns(add_c),
        ns(add_s),
        ns(add_c + add_s),
        ns(refresh_c),
        ns(refresh_s),
        ns(refresh_c + refresh_s),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "sync".into());
    let (mut pes, mut rounds, mut binaries) = (None, 3usize, Vec::new());
    let (mut cores, mut chunk, mut max_message, mut expected) = ((1usize, 1usize), None, None, 0);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value");
        match a.as_str() {
            "--pes" => pes = Some(value().parse().expect("a number")),
            "--rounds" => rounds = value().parse().expect("a number"),
            "--chunk" => chunk = Some(value().parse().expect("a number")),
            "--max-message" => max_message = Some(value().parse().expect("a number")),
            "--expected-pes" => expected = value().parse().expect("a number"),
            "--cores" => {
                let v = value();
                let (x, y) = v.split_once(',').expect("--cores A,B");
                cores = (x.parse().expect("a core"), y.parse().expect("a core"));
            }
            "--bin" => binaries.push(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    if binaries.is_empty() {
        binaries.push("target/release/rserpool".into());
    }
    for round in 1..=rounds {
        for b in &binaries {
            let line = match mode.as_str() {
                "sync" => {
                    let o = SyncOpts { pes: pes.unwrap_or(1_000_000), cores, chunk, max_message, expected };
                    sync_round(b, &o, round)
                }
                "takeover" => takeover_round(b, pes.unwrap_or(100_000), round),
                "inproc" => inproc_round(pes.unwrap_or(1_000_000), chunk, expected, round),
                "updates" => updates_round(pes.unwrap_or(100_000), round),
                other => panic!("unknown mode {other} (sync, takeover, inproc, updates)"),
            };
            println!("{line}");
        }
    }
}
