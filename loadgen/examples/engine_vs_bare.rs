//! Throughput of the engine against the bare io_uring server, same client, same sizes: the
//! engine runs a service that answers every 48-byte request with a 256-byte reply (no protocol
//! parsing, so the difference is the engine's own cost: connection table, reassembly, send
//! queues, the `Service` calls). Server pinned to one core, this client to the other;
//! closed loop with `depth` requests in flight per connection; runs alternate
//! A B A B ... so machine noise hits both alike.
//!
//! ```text
//! cargo run --release -p loadgen --example engine_vs_bare -- [seconds] [pairs] [server_core] [client_core] [engine: uring|epoll]
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::bare_echo;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rserpool::runtime::{self, EngineConfig, EngineKind};
use rserpool::service::{ConnId, Outbox, Service, ShardId, Tag};
use rserpool::time::Time;

const REQ: usize = 48;
const REPLY: usize = 256;
const CONNS: usize = 64;

/// Answers each complete 48-byte request with 256 bytes, like the bare server.
struct Fixed;

impl Service for Fixed {
    type Msg = ();
    fn on_accept(&mut self, _: ConnId, _: Tag, _: SocketAddr, _: Time, _: &mut impl Outbox<()>) {}
    fn on_data(&mut self, conn: ConnId, data: &[u8], _: Time, out: &mut impl Outbox<()>) -> usize {
        let n = data.len() / REQ;
        if n > 0 {
            out.send(conn, &mut |b| b.resize(b.len() + n * REPLY, b'r'));
        }
        n * REQ
    }
    fn on_close(&mut self, _: ConnId, _: Time, _: &mut impl Outbox<()>) {}
    fn on_message(&mut self, _: ShardId, _: (), _: Time, _: &mut impl Outbox<()>) {}
    fn on_timer(&mut self, _: Time, _: &mut impl Outbox<()>) {}
    fn next_timer(&self) -> Option<Time> {
        None
    }
}

struct Conn {
    stream: TcpStream,
    unsent: usize,
    partial: usize,
}

/// CPU time (ns) consumed so far by this process's threads whose name starts with `prefix`,
/// from `/proc/self/task/*/schedstat`.
fn thread_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// One measurement: replies per second, and the server thread's CPU time per reply.
struct Sample {
    rate: f64,
    cpu_ns_per_req: f64,
}

/// Closed-loop client: measures over `secs` after a short warm-up.
fn client(addr: SocketAddr, depth: usize, secs: f64, server_thread: &str) -> io::Result<Sample> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut stream = TcpStream::connect(addr)?;
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn { stream, unsent: depth * REQ, partial: 0 });
    }
    for c in &conns {
        c.stream.set_nodelay(true)?;
    }
    let reqs = vec![0u8; REQ * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let warm = Instant::now() + Duration::from_millis(500);
    let mut t0: Option<Instant> = None;
    let mut cpu0 = 0;
    let mut done = 0u64;
    loop {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_readable() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => {
                            let total = c.partial + n;
                            c.partial = total % REPLY;
                            let replies = total / REPLY;
                            done += replies as u64;
                            c.unsent += replies * REQ;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            while c.unsent > 0 {
                match c.stream.write(&reqs[..c.unsent.min(reqs.len())]) {
                    Ok(n) => c.unsent -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let now = Instant::now();
        match t0 {
            None if now >= warm => {
                t0 = Some(now);
                cpu0 = thread_cpu_ns(server_thread);
                done = 0;
            }
            Some(t) if (now - t).as_secs_f64() >= secs => {
                let cpu = thread_cpu_ns(server_thread) - cpu0;
                return Ok(Sample {
                    rate: done as f64 / (now - t).as_secs_f64(),
                    cpu_ns_per_req: cpu as f64 / done.max(1) as f64,
                });
            }
            _ => {}
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let pairs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let server_core: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let client_core: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    let kind = match args.get(5).map(String::as_str) {
        Some("epoll") => EngineKind::Epoll,
        _ => EngineKind::Uring,
    };
    core_affinity::set_for_current(core_affinity::CoreId { id: client_core });
    runtime::raise_nofile_limit()?;
    for depth in [1usize, 16] {
        let (mut eng, mut bare, mut eng_cpu, mut bare_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let cfg = bare_echo::BareEchoConfig { core: Some(server_core), ..Default::default() };
            let server = bare_echo::spawn(cfg)?;
            let b = client(server.local_addr(), depth, secs, "bare-echo")?;
            server.stop_handle().stop();
            server.join()?;

            let config = EngineConfig {
                kind,
                listeners: vec![runtime::Listen::new("127.0.0.1:0".parse()?, Tag(0))],
                shards: vec![Some(server_core)],
                ..EngineConfig::default()
            };
            let engine = runtime::start(config, |_, _| Fixed)?;
            let e = client(engine.local_addr(), depth, secs, "rserpool-shard")?;
            engine.shutdown_handle().shutdown();
            engine.join()?;
            println!(
                "{{\"depth\":{depth},\"pair\":{pair},\"engine\":\"{kind:?}\",\"bare_req_per_s\":{:.0},\"engine_req_per_s\":{:.0},\"bare_server_cpu_ns_per_req\":{:.0},\"engine_server_cpu_ns_per_req\":{:.0}}}",
                b.rate, e.rate, b.cpu_ns_per_req, e.cpu_ns_per_req
            );
            bare.push(b.rate);
            eng.push(e.rate);
            bare_cpu.push(b.cpu_ns_per_req);
            eng_cpu.push(e.cpu_ns_per_req);
        }
        let (mb, me) = (median(&mut bare), median(&mut eng));
        let (cb, ce) = (median(&mut bare_cpu), median(&mut eng_cpu));
        println!(
            "depth {depth}: req/s bare {mb:.0}, engine ({kind:?}) {me:.0}, ratio {:.3}; server CPU ns/req bare {cb:.0}, engine {ce:.0}, ratio {:.3}",
            me / mb,
            ce / cb
        );
    }
    Ok(())
}
