//! Cross-shard wake-up cost: two shards pass one message back and forth (a post, answered by a
//! post), so every hop has to wake a sleeping shard. Compares io_uring with `MSG_RING` wake-ups,
//! io_uring with eventfd wake-ups, and the epoll engine (mio waker, an eventfd), alternating
//! A B C A B C so that machine noise hits all three alike.
//!
//! ```text
//! cargo run --release --example cross_shard_pingpong -- [round_trips] [repeats] [core_a] [core_b]
//! ```

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rserpool::runtime::{self, CrossShardWake, EngineConfig, EngineKind};
use rserpool::service::{ConnId, Outbox, Service, ShardId, Tag};
use rserpool::time::Time;

struct PingPong {
    me: ShardId,
    round_trips: u64,
    done: u64,
    started: Option<Instant>,
    report: mpsc::Sender<Duration>,
}

/// The ball the two shards pass back and forth.
type Ball = [u8; 16];

impl Service for PingPong {
    type Msg = Ball;
    fn on_accept(&mut self, _: ConnId, _: Tag, _: SocketAddr, _: Time, _: &mut impl Outbox<Ball>) {}
    fn on_data(&mut self, _: ConnId, d: &[u8], _: Time, _: &mut impl Outbox<Ball>) -> usize {
        d.len()
    }
    fn on_close(&mut self, _: ConnId, _: Time, _: &mut impl Outbox<Ball>) {}
    fn on_message(&mut self, _: ShardId, ball: Ball, _: Time, out: &mut impl Outbox<Ball>) {
        if self.me == 1 {
            out.post(0, ball);
            return;
        }
        self.done += 1;
        if self.done < self.round_trips {
            out.post(1, ball);
        } else if let Some(t0) = self.started {
            let _ = self.report.send(t0.elapsed());
        }
    }
    fn on_timer(&mut self, _: Time, out: &mut impl Outbox<Ball>) {
        self.started = Some(Instant::now());
        out.post(1, [0u8; 16]);
    }
    fn next_timer(&self) -> Option<Time> {
        (self.me == 0 && self.started.is_none()).then_some(Time::ZERO)
    }
}

/// CPU time (ns) consumed so far by this process's shard threads (`/proc/self/task/*/schedstat`).
fn shard_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("rserpool-shard") {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// Round trips per second, and shard CPU time per round trip (ns).
fn run(kind: EngineKind, wake: CrossShardWake, cores: [usize; 2], round_trips: u64) -> (f64, f64) {
    let (tx, rx) = mpsc::channel();
    let config = EngineConfig {
        kind,
        cross_shard_wake: wake,
        listeners: vec![runtime::Listen::new("127.0.0.1:0".parse().unwrap(), Tag(0))],
        shards: vec![Some(cores[0]), Some(cores[1])],
        buffer_count: 64,
        ..EngineConfig::default()
    };
    let engine =
        runtime::start(config, move |me, _| PingPong { me, round_trips, done: 0, started: None, report: tx.clone() })
            .expect("engine starts");
    let elapsed = rx.recv_timeout(Duration::from_secs(300)).expect("ping-pong finishes");
    // Idle shards use (almost) no CPU, so the total since start is the ping-pong's cost.
    let cpu = shard_cpu_ns();
    engine.shutdown_handle().shutdown();
    engine.join().expect("engine stops");
    (round_trips as f64 / elapsed.as_secs_f64(), cpu as f64 / round_trips as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let round_trips = arg(1, 200_000);
    let repeats = arg(2, 5) as usize;
    let cores = [arg(3, 0) as usize, arg(4, 1) as usize];
    let modes = [
        ("uring+msg_ring", EngineKind::Uring, CrossShardWake::MsgRing),
        ("uring+eventfd", EngineKind::Uring, CrossShardWake::EventFd),
        ("epoll+eventfd", EngineKind::Epoll, CrossShardWake::MsgRing),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for r in 0..repeats {
        for (i, (name, kind, wake)) in modes.iter().enumerate() {
            let (rate, cpu) = run(*kind, *wake, cores, round_trips);
            println!(
                "{{\"repeat\":{r},\"mode\":\"{name}\",\"round_trips\":{round_trips},\"round_trips_per_s\":{rate:.0},\"shard_cpu_ns_per_round_trip\":{cpu:.0}}}"
            );
            rates[i].push(rate);
            cpus[i].push(cpu);
        }
    }
    println!("\n| mode | median round trips/s | median µs per round trip | shard CPU µs per round trip | rate ratio to msg_ring |");
    println!("|---|---|---|---|---|");
    let base = median(&mut rates[0].clone());
    for (i, (name, ..)) in modes.iter().enumerate() {
        let m = median(&mut rates[i]);
        let c = median(&mut cpus[i]);
        println!("| {name} | {m:.0} | {:.2} | {:.2} | {:.2} |", 1e6 / m, c / 1e3, m / base);
    }
}
