//! What a bulk expiry does to everyone else: 100,000 PEs whose registration lives end at the
//! same millisecond (each registered with its life shortened by the time registering has taken
//! so far), while a pool user keeps resolving another pool one request at a time.
//! Reports that pool user's latency before, during and after the expiry (p50, p99, p99.9, max).
//!
//! It spawns registrar binaries (so two builds can be compared alternately, A B A B):
//!
//! ```text
//! cargo build --release && cargo run --release --example bulk_expiry -- \
//!     [--pes 100000] [--life-ms 2000] [--rounds 3] BINARY [BINARY...]
//! ```
//!
//! The registrar runs one shard on core 1 (`tuning/2core-split.toml`); the clients run on core 0.
//! Over TCP the PEs arrive over some milliseconds, which spreads their expiry too; so
//! `--in-process` also times the shard's timer calls directly, with all PEs due at once: how
//! long each call takes (the most a shard's connections wait), and how long all of them take
//! together (what one unbounded call would have taken).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rserpool::config::RegistrationCheck;
use rserpool::registrar::{Registrar, RegistrarConfig, ASAP};
use rserpool::service::{ConnId, Recorder, Service};
use rserpool::time::Time;
use rserpool::wire::asap::{self, MessageType};
use rserpool::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr, Writer,
};

fn registration(pool: &str, pe_id: u32, life: i32) -> Vec<u8> {
    let user = TransportRepr::new(TransportProtocol::Tcp, [10, 0, (pe_id >> 8) as u8, pe_id as u8].into(), 7000);
    let pe = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: life,
        user_transport: user,
        policy: PolicyRepr::Known(Policy::RoundRobin),
        asap_transport: None,
    };
    let params = vec![ParamRepr::PoolHandle(pool.as_bytes().to_vec()), ParamRepr::PoolElement(pe)];
    MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap()
}

/// Whether `answer` is a Registration Response that accepts the PE.
fn accepted(answer: &[u8]) -> bool {
    asap::parse(answer)
        .is_ok_and(|m| matches!(m.body(), asap::Body::RegistrationResponse { rejected: false, error: None, .. }))
}

fn resolution(pool: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_resolution(&mut Writer::new(&mut buf), pool.as_bytes(), None).unwrap();
    buf
}

/// Reads one whole ASAP message.
fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).expect("an answer");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut m = head.to_vec();
    m.resize(len, 0);
    s.read_exact(&mut m[4..]).expect("the rest of the answer");
    m
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("cannot pin to core {core}");
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &str, dir: &std::path::Path, pes: usize) -> (Server, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.join("bulk-expiry.toml");
    // The PEs' addresses (10.0.x.y) are not the connection's: without the check off the
    // registrar refuses them, and nothing would expire.
    let limits = format!(
        "[limits]\nmax_pes_per_connection = {}\nmax_pes = {}\n[security]\nregistration_check = \"off\"\n",
        pes + 10,
        pes * 2
    );
    std::fs::write(&config, limits).unwrap();
    let child = Command::new(binary)
        .args(["registrar", "--asap", &addr.to_string(), "--profile", "tuning/2core-split.toml", "--log", "warn"])
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{binary} does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, addr)
}

/// Latencies (µs) of requests sent in [from, to) seconds.
fn window(samples: &[(f64, f64)], from: f64, to: f64) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().filter(|s| s.0 >= from && s.0 < to).map(|s| s.1).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn one_run(binary: &str, pes: usize, life_ms: u64) -> String {
    let dir = std::env::temp_dir().join(format!("rserpool-bulk-expiry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, addr) = start(binary, &dir, pes);
    pin(0);
    // The pool user's own pool, with one PE that never expires.
    let mut probe = TcpStream::connect(addr).unwrap();
    probe.set_nodelay(true).unwrap();
    probe.write_all(&registration("probe", 1, -1)).unwrap();
    assert!(accepted(&read_message(&mut probe)), "the registrar refused the probe's PE");
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            pin(0);
            let req = resolution("probe");
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                probe.write_all(&req).unwrap();
                read_message(&mut probe);
                samples.push((sent.duration_since(t0).as_secs_f64(), sent.elapsed().as_secs_f64() * 1e6));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // The bulk: PES PEs over 1,000 pools, pipelined on one connection, read by another thread.
    let mut bulk = TcpStream::connect(addr).unwrap();
    bulk.set_nodelay(true).unwrap();
    let mut reader = bulk.try_clone().unwrap();
    let reads = std::thread::spawn(move || (0..pes).filter(|_| !accepted(&read_message(&mut reader))).count());
    let reg_start = t0.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..pes {
        // Lives shortened by the time registering has taken so far: all end at one instant.
        let life = life_ms.saturating_sub(started.elapsed().as_millis() as u64).max(1);
        batch.extend(registration(&format!("bulk-{}", i % 1000), 2 + i as u32, life as i32));
        if batch.len() > 64 * 1024 {
            bulk.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    bulk.write_all(&batch).unwrap();
    let refused = reads.join().unwrap();
    assert_eq!(refused, 0, "the registrar refused {refused} of the {pes} registrations: nothing to measure");
    let reg_end = t0.elapsed().as_secs_f64();
    let life = life_ms as f64 / 1000.0;
    std::thread::sleep(Duration::from_secs_f64(reg_end + life + 1.0 - t0.elapsed().as_secs_f64()));
    stop.store(true, Ordering::Relaxed);
    let samples = prober.join().unwrap();
    // Every bulk PE is gone.
    bulk.write_all(&resolution("bulk-7")).unwrap();
    let gone = matches!(
        asap::parse(&read_message(&mut bulk)).unwrap().body(),
        asap::Body::HandleResolutionResponse { resolution: asap::Resolution::Failed(_), .. }
    );
    let mut line = format!(
        "{{\"binary\":\"{binary}\",\"pes\":{pes},\"register_s\":{:.3},\"bulk_expired\":{gone}",
        reg_end - reg_start
    );
    for (name, from, to) in [
        ("before", 0.0, reg_start),
        ("expiry", reg_start + life - 0.05, reg_start + life + 0.25),
        ("after", reg_start + life + 0.25, f64::MAX),
    ] {
        let v = window(&samples, from, to);
        line += &format!(
            ",\"{name}\":{{\"n\":{},\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"max_us\":{:.0}}}",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 0.999),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    line + "}"
}

/// One shard with `pes` PEs all due at once: the duration of each timer call.
fn in_process(pes: usize) -> String {
    pin(1);
    let mut config = RegistrarConfig::new(1, 1);
    config.limits.max_pes_per_connection = pes + 10;
    // The PEs' addresses (10.0.x.y) are not the connection's (as in the TCP mode's config).
    config.security.registration_check = RegistrationCheck::Off;
    let mut shard = Registrar::new(&config, 0, Time::ZERO);
    let conn = ConnId { shard: 0, generation: 1, slot: 0 };
    shard.on_accept(conn, ASAP, "127.0.0.1:4000".parse().unwrap(), Time::ZERO, &mut Recorder::default());
    for i in 0..pes {
        let m = registration(&format!("bulk-{}", i % 1000), 2 + i as u32, 1_000);
        assert_eq!(shard.on_data(conn, &m, Time::ZERO, &mut Recorder::default()), m.len());
    }
    assert_eq!(shard.handlespace().pe_count(), pes);
    let (mut calls, mut longest, mut total) = (0u32, Duration::ZERO, Duration::ZERO);
    while shard.next_timer().is_some_and(|t| t <= Time(1_000)) {
        let t = Instant::now();
        shard.on_timer(Time(1_000), &mut Recorder::default());
        let d = t.elapsed();
        calls += 1;
        longest = longest.max(d);
        total += d;
    }
    assert_eq!(shard.handlespace().pe_count(), 0);
    format!(
        "{{\"mode\":\"in-process\",\"pes\":{pes},\"timer_calls\":{calls},\"longest_call_us\":{:.0},\"all_calls_ms\":{:.2}}}",
        longest.as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e3
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut pes, mut life_ms, mut rounds, mut binaries) = (100_000usize, 2_000u64, 3usize, Vec::new());
    let mut in_proc = false;
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value").parse().expect("a number");
        match a.as_str() {
            "--pes" => pes = value() as usize,
            "--life-ms" => life_ms = value(),
            "--rounds" => rounds = value() as usize,
            "--in-process" => in_proc = true,
            _ => binaries.push(a),
        }
    }
    if in_proc {
        for _ in 0..rounds {
            println!("{}", in_process(pes));
        }
        return;
    }
    if binaries.is_empty() {
        binaries.push("target/release/rserpool".into());
    }
    for _ in 0..rounds {
        for b in &binaries {
            println!("{}", one_run(b, pes, life_ms));
        }
    }
}
