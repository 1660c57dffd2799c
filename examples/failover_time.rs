//! Failover time of a PU↔PE session: from the moment the serving PE is killed (SIGKILL: its
//! connections close) or frozen (SIGSTOP: only heartbeats find it out) to the first answer
//! from another PE, while the PU sends 1,000 messages per second. Spawns a registrar and
//! `echo_pe` processes; the PU runs in process. Prints a histogram per setting.
//!
//! ```text
//! cargo build --release --bin rserpool --examples
//! cargo run --release --example failover_time -- [--rounds 40] [--heartbeat MS]... [--mode kill|stop]...
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rserpool::client::blocking::PoolUser;
use rserpool::client::session::SessionEvent;
use rserpool::client::SessionConfig;

struct Pe {
    child: Child,
    id: u32,
}

fn dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

fn start_pe(registrar: &str) -> Pe {
    let mut child = Command::new(dir().join("echo_pe"))
        .args(["--registrar", registrar, "--pool", "ft"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("echo_pe (build the examples)");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let id = line.split("pe_id=0x").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    // Drain the rest of its output in the background.
    std::thread::spawn(move || for _ in out.lines() {});
    Pe { child, id: u32::from_str_radix(id, 16).unwrap() }
}

fn main() {
    let mut rounds = 40;
    let seed = 20261201;
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("seed {seed}");
    let (mut heartbeats, mut modes) = (Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("a value");
        match a.as_str() {
            "--rounds" => rounds = v.parse().unwrap(),
            "--heartbeat" => heartbeats.push(v.parse::<u64>().unwrap()),
            "--mode" => modes.push(v),
            _ => panic!("unknown {a}"),
        }
    }
    if heartbeats.is_empty() {
        heartbeats = vec![1000, 100];
    }
    if modes.is_empty() {
        modes = vec!["kill".into(), "stop".into()];
    }
    let bin = dir().parent().unwrap().join("rserpool");
    let mut reg = Command::new(&bin)
        .args(["registrar", "--asap", "127.0.0.1:39123", "--cores", "1", "--engine", "epoll"])
        .stderr(Stdio::null())
        .spawn()
        .expect("rserpool (build it)");
    std::thread::sleep(Duration::from_millis(500));
    let registrar = "127.0.0.1:39123";
    println!("| mode | heartbeat interval/timeout | rounds | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for mode in &modes {
        for &hb in &heartbeats {
            let mut pes: Vec<Pe> = (0..3).map(|_| start_pe(registrar)).collect();
            let pu = PoolUser::builder().registrar(registrar.parse().unwrap()).start().unwrap();
            let cfg = SessionConfig { heartbeat_interval: hb, heartbeat_timeout: hb, ..Default::default() };
            let s = pu.session(b"ft", cfg).unwrap();
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut serving = None;
            let mut n = 0u64;
            let mut next_send = Instant::now();
            let mut pump = |until: &mut dyn FnMut(&SessionEvent) -> bool| loop {
                if Instant::now() >= next_send {
                    let _ = s.send(0, n.to_be_bytes().to_vec());
                    n += 1;
                    next_send += Duration::from_millis(1);
                }
                let wait = next_send.saturating_duration_since(Instant::now());
                if let Some(ev) = s.recv(wait) {
                    if until(&ev) {
                        return ev;
                    }
                }
            };
            for _ in 0..rounds {
                // A random moment, so that the kill does not fall in one phase of the heartbeat.
                let settle = Instant::now() + Duration::from_millis(rng.u64(0..=hb + 100));
                pump(&mut |_| Instant::now() >= settle);
                let ev = pump(&mut |e| matches!(e, SessionEvent::Data { .. }));
                if let SessionEvent::Data { pe_id, .. } = ev {
                    serving = Some(pe_id);
                }
                let victim = pes.iter().position(|p| Some(p.id) == serving).expect("the serving PE");
                let mut v = pes.remove(victim);
                let signal = if mode == "kill" { "-KILL" } else { "-STOP" };
                let t0 = Instant::now();
                let _ = Command::new("kill").args([signal, &v.child.id().to_string()]).status();
                let old = serving;
                pump(&mut |e| matches!(e, SessionEvent::Data { pe_id, .. } if Some(*pe_id) != old));
                hist.record(t0.elapsed().as_micros() as u64).unwrap();
                let _ = v.child.kill();
                let _ = v.child.wait();
                pes.push(start_pe(registrar));
            }
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "| {mode} | {hb}/{hb} ms | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                hist.len(),
                ms(0.5),
                ms(0.9),
                ms(0.99),
                hist.max() as f64 / 1000.0
            );
            for mut p in pes {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
    let _ = reg.kill();
    let _ = reg.wait();
}
