//! Behaviour of both engines (io_uring and epoll) driving a small length-prefixed test service
//! over real loopback sockets. Each scenario runs on both engines; the io_uring variants are
//! skipped (with a message) where io_uring is unavailable.
//!
//! No test depends on timing: waits are bounded polls that only guard against deadlock.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rserpool::runtime::{self, Engine, EngineConfig, EngineKind, Listen, ShardStats};
use rserpool::service::{ConnId, Outbox, Service, ShardId, Tag};
use rserpool::time::Time;

// ---------------------------------------------------------------------------------------------
// The test service. Frames are a 4-byte big-endian body length, then the body: an op byte and
// its payload. Replies use the same framing.

const ECHO: u8 = 1; // payload -> [ECHO, payload]
const ROUTE: u8 = 2; // [target shard, rest] -> handled on target: [ROUTE, owner shard, handler shard, rest]
const BIG: u8 = 3; // [n u32] -> [BIG, n bytes]
const CLOSE_ME: u8 = 4; // -> [CLOSE_ME], then the service closes the connection
const REMEMBER: u8 = 5; // remembers this ConnId -> [REMEMBER, owner shard, slot u32, generation u16]
const SEND_STALE: u8 = 6; // [via shard] -> shard `via` sends "STALE" to the remembered id; reply [SEND_STALE, ids]
const TIMER: u8 = 7; // [ms u32] -> after ms, the timer sends [TIMER]
const CLOSE_VIA: u8 = 8; // [via shard] -> shard `via` closes this connection through the outbox
const TAG: u8 = 9; // -> [TAG, tag of the listener this connection came in on]
const DIAL: u8 = 10; // [address as text] -> connects out; reports [DIAL, 1] when connected or [DIAL, 0] on failure
const DIAL_CLOSED: u8 = 11; // sent to the connection that dialled when the outbound one closes
const HELLO: u8 = 12; // the first frame a service sends on an outbound connection
const ROUTE_BACK: u8 = 13; // like ROUTE, but the answer comes back through the connection's shard, which holds the connection meanwhile
const GATHER: u8 = 14; // [byte] -> held back; the gathered bytes go out as one [GATHER, bytes..] when the engine flushes
const STALE: u8 = 99; // what a stale send would deliver
/// The tag of outbound connections.
const OUT_TAG: Tag = Tag(7);

/// What the test service's shards post to each other.
enum Post {
    /// Handle `rest` for connection `conn` here.
    Route(ConnId, Vec<u8>),
    /// Send "STALE" to the remembered (stale) connection id.
    Stale,
    /// Close connection `conn` through the outbox.
    Close(ConnId),
    /// Handle `rest` for connection `conn` here and post the answer back.
    RouteBack(ConnId, Vec<u8>),
    /// The answer to a `RouteBack`, for the connection's shard to send.
    Answer(ConnId, Vec<u8>),
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    closed: AtomicU64,
    big_done: AtomicU64,
    timers_fired: AtomicU64,
    flushes: AtomicU64,
    remembered: Mutex<Option<ConnId>>,
}

struct TestService {
    me: ShardId,
    shared: Arc<Shared>,
    timers: Vec<(Time, ConnId)>,
    tags: std::collections::HashMap<ConnId, Tag>,
    /// Outbound connection -> the connection that asked for it.
    dialled: std::collections::HashMap<ConnId, ConnId>,
    /// Answers other shards still owe each connection.
    owed: std::collections::HashMap<ConnId, u32>,
    /// Bytes held back by GATHER, and the connection they go to.
    gathered: Option<(ConnId, Vec<u8>)>,
}

fn put_frame(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        buf.extend_from_slice(p);
    }
}

fn id_bytes(id: ConnId) -> Vec<u8> {
    let mut v = vec![id.shard as u8];
    v.extend_from_slice(&id.slot.to_be_bytes());
    v.extend_from_slice(&id.generation.to_be_bytes());
    v
}

impl TestService {
    fn new(me: ShardId, shared: Arc<Shared>) -> Self {
        Self {
            me,
            shared,
            timers: Vec::new(),
            tags: Default::default(),
            dialled: Default::default(),
            owed: Default::default(),
            gathered: None,
        }
    }

    fn handle(&mut self, conn: ConnId, body: &[u8], now: Time, out: &mut impl Outbox<Post>) {
        let Some((&op, p)) = body.split_first() else {
            return;
        };
        match op {
            ECHO => out.send(conn, &mut |b| put_frame(b, &[&[ECHO], p])),
            ROUTE => {
                let (&target, rest) = p.split_first().unwrap();
                out.post(target as ShardId, Post::Route(conn, rest.to_vec()));
            }
            BIG => {
                let n = u32::from_be_bytes(p[..4].try_into().unwrap()) as usize;
                out.send(conn, &mut |b| {
                    b.extend_from_slice(&(n as u32 + 1).to_be_bytes());
                    b.push(BIG);
                    b.resize(b.len() + n, 0xAB);
                });
                self.shared.big_done.fetch_add(1, SeqCst);
            }
            CLOSE_ME => {
                out.send(conn, &mut |b| put_frame(b, &[&[CLOSE_ME]]));
                out.close(conn);
            }
            REMEMBER => {
                *self.shared.remembered.lock().unwrap() = Some(conn);
                out.send(conn, &mut |b| put_frame(b, &[&[REMEMBER], &id_bytes(conn)]));
            }
            SEND_STALE => {
                let via = p[0] as ShardId;
                out.post(via, Post::Stale);
                let stale = self.shared.remembered.lock().unwrap().expect("REMEMBER first");
                out.send(conn, &mut |b| put_frame(b, &[&[SEND_STALE], &id_bytes(stale), &id_bytes(conn)]));
            }
            TIMER => {
                let ms = u32::from_be_bytes(p[..4].try_into().unwrap());
                self.timers.push((now.add_millis(u64::from(ms)), conn));
            }
            CLOSE_VIA => out.post(p[0] as ShardId, Post::Close(conn)),
            ROUTE_BACK => {
                let (&target, rest) = p.split_first().unwrap();
                let owed = self.owed.entry(conn).or_default();
                *owed += 1;
                if *owed == 1 {
                    out.hold(conn, true);
                }
                out.post(target as ShardId, Post::RouteBack(conn, rest.to_vec()));
            }
            TAG => {
                let tag = self.tags.get(&conn).copied().unwrap_or_default();
                out.send(conn, &mut |b| put_frame(b, &[&[TAG, tag.0 as u8]]));
            }
            DIAL => {
                let addr: SocketAddr = std::str::from_utf8(p).unwrap().parse().unwrap();
                match out.connect(addr, OUT_TAG) {
                    Some(outbound) => {
                        self.dialled.insert(outbound, conn);
                    }
                    None => out.send(conn, &mut |b| put_frame(b, &[&[DIAL, 0]])),
                }
            }
            GATHER => self.gathered.get_or_insert_with(|| (conn, Vec::new())).1.extend_from_slice(p),
            _ => {}
        }
    }
}

impl Service for TestService {
    type Msg = Post;

    fn on_accept(&mut self, conn: ConnId, tag: Tag, _peer: SocketAddr, _now: Time, _out: &mut impl Outbox<Post>) {
        self.shared.accepted.fetch_add(1, SeqCst);
        self.tags.insert(conn, tag);
    }

    fn on_connect(
        &mut self,
        conn: ConnId,
        tag: Tag,
        result: io::Result<SocketAddr>,
        _now: Time,
        out: &mut impl Outbox<Post>,
    ) {
        assert_eq!(tag, OUT_TAG);
        let asker = self.dialled[&conn];
        let ok = result.is_ok() as u8;
        out.send(asker, &mut |b| put_frame(b, &[&[DIAL, ok]]));
        if ok == 1 {
            self.tags.insert(conn, tag);
            out.send(conn, &mut |b| put_frame(b, &[&[HELLO]]));
        }
    }

    fn on_data(&mut self, conn: ConnId, data: &[u8], now: Time, out: &mut impl Outbox<Post>) -> usize {
        let mut off = 0;
        while data.len() - off >= 4 {
            let len = u32::from_be_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            if data.len() - off - 4 < len {
                break;
            }
            let body = &data[off + 4..off + 4 + len];
            off += 4 + len;
            self.handle(conn, body, now, out);
        }
        off
    }

    fn on_close(&mut self, conn: ConnId, _now: Time, out: &mut impl Outbox<Post>) {
        self.shared.closed.fetch_add(1, SeqCst);
        self.tags.remove(&conn);
        self.owed.remove(&conn);
        if let Some(asker) = self.dialled.remove(&conn) {
            out.send(asker, &mut |b| put_frame(b, &[&[DIAL_CLOSED]]));
        }
    }

    fn on_message(&mut self, _from: ShardId, msg: Post, _now: Time, out: &mut impl Outbox<Post>) {
        let me = self.me;
        match msg {
            Post::Route(conn, rest) => {
                out.send(conn, &mut |b| put_frame(b, &[&[ROUTE, conn.shard as u8, me as u8], &rest]))
            }
            Post::Stale => {
                let stale = self.shared.remembered.lock().unwrap().expect("REMEMBER first");
                out.send(stale, &mut |b| put_frame(b, &[&[STALE]]));
            }
            Post::Close(conn) => out.close(conn),
            Post::RouteBack(conn, rest) => {
                let mut answer = Vec::new();
                put_frame(&mut answer, &[&[ROUTE_BACK, conn.shard as u8, me as u8], &rest]);
                out.post(conn.shard, Post::Answer(conn, answer));
            }
            Post::Answer(conn, answer) => {
                out.send(conn, &mut |b| b.extend_from_slice(&answer));
                if let Some(owed) = self.owed.get_mut(&conn) {
                    *owed -= 1;
                    if *owed == 0 {
                        self.owed.remove(&conn);
                        out.hold(conn, false);
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, now: Time, out: &mut impl Outbox<Post>) {
        let (due, later): (Vec<_>, Vec<_>) = self.timers.drain(..).partition(|(t, _)| *t <= now);
        self.timers = later;
        for (_, conn) in due {
            self.shared.timers_fired.fetch_add(1, SeqCst);
            out.send(conn, &mut |b| put_frame(b, &[&[TIMER]]));
        }
    }

    fn next_timer(&self) -> Option<Time> {
        self.timers.iter().map(|(t, _)| *t).min()
    }

    fn gathering(&self) -> Option<Duration> {
        self.gathered.as_ref().map(|_| Duration::from_micros(300))
    }

    fn on_flush(&mut self, _now: Time, out: &mut impl Outbox<Post>) {
        if let Some((conn, bytes)) = self.gathered.take() {
            self.shared.flushes.fetch_add(1, SeqCst);
            out.send(conn, &mut |b| put_frame(b, &[&[GATHER], &bytes]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

/// Deadlock guard for every blocking read and every wait: far beyond what any step needs.
const GUARD: Duration = Duration::from_secs(60);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        runtime::raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    });
}

fn config(kind: EngineKind, shards: usize) -> EngineConfig {
    EngineConfig {
        kind,
        listeners: vec![Listen::new("127.0.0.1:0".parse().unwrap(), Tag(0))],
        shards: vec![None; shards],
        buffer_count: 256,
        ..EngineConfig::default()
    }
}

/// Starts an engine with the test service, or `None` when io_uring is requested but unavailable.
fn start(cfg: EngineConfig) -> Option<(Engine, Arc<Shared>)> {
    setup();
    if cfg.kind == EngineKind::Uring {
        if let Err(reason) = runtime::io_uring_support() {
            eprintln!("skipping io_uring variant: {reason}");
            return None;
        }
    }
    let shared = Arc::new(Shared::default());
    let s = Arc::clone(&shared);
    let kind = cfg.kind;
    let engine = runtime::start(cfg, move |me, _n| TestService::new(me, Arc::clone(&s))).expect("engine starts");
    if kind != EngineKind::Auto {
        assert_eq!(engine.kind(), kind, "the requested engine runs");
    }
    Some((engine, shared))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.set_write_timeout(Some(GUARD)).unwrap();
    s
}

fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    put_frame(&mut v, parts);
    v
}

fn read_frame(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Reads until EOF (or reset); fails if any data arrives. An interrupted read (EINTR, which a
/// read with a timeout gets instead of being restarted; seen once in CI) is retried.
fn expect_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(n) => panic!("expected the connection to be closed, got {n} more bytes: {:?}", &b[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let limit = Instant::now() + GUARD;
    while !f() {
        assert!(Instant::now() < limit, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn total(stats: &[ShardStats], f: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

fn parse_id(b: &[u8]) -> ConnId {
    ConnId {
        shard: u16::from(b[0]),
        slot: u32::from_be_bytes(b[1..5].try_into().unwrap()),
        generation: u16::from_be_bytes(b[5..7].try_into().unwrap()),
    }
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name(rserpool::runtime::EngineKind::Uring);
            }
            #[test]
            fn epoll() {
                super::$name(rserpool::runtime::EngineKind::Epoll);
            }
        }
    )*};
}

on_both_engines!(
    request_response,
    pipelined_requests,
    split_messages,
    many_connections,
    cross_shard_post_and_reply,
    cross_shard_close,
    backpressure_isolates_a_client_that_never_reads,
    a_client_that_never_reads_is_disconnected_after_the_stall_limit,
    stale_conn_id_gets_nothing,
    stale_conn_id_gets_nothing_across_shards,
    service_close_flushes_then_closes,
    half_close_still_gets_replies,
    oversize_message_closes,
    connection_limit,
    timers_fire,
    gathered_output_is_flushed_without_further_events,
    shutdown_stops_everything,
    listeners_are_tagged,
    outbound_connections,
    outbound_connect_failure,
    tiny_cross_shard_queues_lose_nothing,
);

// ---------------------------------------------------------------------------------------------
// Scenarios.

fn request_response(kind: EngineKind) {
    let Some((engine, _)) = start(config(kind, 2)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    for i in 0..50u32 {
        let payload = format!("hello {i}");
        c.write_all(&frame(&[&[ECHO], payload.as_bytes()])).unwrap();
        assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO], payload.as_bytes()].concat());
    }
}

fn pipelined_requests(kind: EngineKind) {
    let Some((engine, _)) = start(config(kind, 1)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    let mut batch = Vec::new();
    for i in 0..300u32 {
        batch.extend(frame(&[&[ECHO], &vec![i as u8; (i % 97) as usize]]));
    }
    c.write_all(&batch).unwrap();
    for i in 0..300u32 {
        assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], &vec![i as u8; (i % 97) as usize]].concat());
    }
}

fn split_messages(kind: EngineKind) {
    // 16-byte receive buffers: every message spans many buffers and most buffers end in the
    // middle of a message.
    let cfg = EngineConfig { buffer_size: 16, buffer_count: 64, ..config(kind, 1) };
    let Some((engine, _)) = start(cfg) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    // One byte per write.
    for b in frame(&[&[ECHO], &big]) {
        c.write_all(&[b]).unwrap();
    }
    assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], &big].concat());
    // Writes that cut messages at odd places: the end of one and the start of the next.
    let mut stream = Vec::new();
    for i in 0..40u32 {
        stream.extend(frame(&[&[ECHO], &big[..(i as usize * 37) % 1000]]));
    }
    for piece in stream.chunks(23) {
        c.write_all(piece).unwrap();
    }
    for i in 0..40u32 {
        assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], &big[..(i as usize * 37) % 1000]].concat());
    }
}

fn many_connections(kind: EngineKind) {
    const N: usize = 1100;
    let Some((engine, shared)) = start(config(kind, 2)) else {
        return;
    };
    let addr = engine.local_addr();
    let mut clients: Vec<TcpStream> = (0..N).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&frame(&[&[ECHO], &(i as u32).to_be_bytes()])).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_frame(c).unwrap(), [&[ECHO][..], &(i as u32).to_be_bytes()].concat());
    }
    assert_eq!(shared.accepted.load(SeqCst), N as u64);
    let stats = engine.stats();
    assert_eq!(total(&stats, |s| s.accepted), N as u64);
    assert_eq!(total(&stats, |s| s.rejected), 0);
    assert_eq!(shared.closed.load(SeqCst), 0, "all connections still open");
}

fn cross_shard_post_and_reply(kind: EngineKind) {
    let Some((engine, _)) = start(config(kind, 2)) else {
        return;
    };
    let mut cross = 0;
    let mut owners = [0; 2];
    for n in 0..8u8 {
        let mut c = connect(engine.local_addr());
        // One request for each shard: whichever shard accepted the connection, one of the two
        // is handled by the other shard and answered back across.
        for target in [0u8, 1] {
            c.write_all(&frame(&[&[ROUTE, target, n, target]])).unwrap();
        }
        // The local one may overtake the one that crosses shards: match replies by content.
        let mut seen = [false; 2];
        for _ in 0..2 {
            let r = read_frame(&mut c).unwrap();
            assert_eq!(r[0], ROUTE);
            let (owner, handler) = (r[1], r[2]);
            let target = r[4];
            assert_eq!(handler, target, "handled on the shard it was routed to");
            assert_eq!(r[3], n);
            assert!(!seen[target as usize]);
            seen[target as usize] = true;
            owners[owner as usize] += 1;
            if owner != handler {
                cross += 1;
            }
        }
    }
    assert_eq!(cross, 8, "exactly one request per connection crossed shards and came back");
    assert_eq!(owners[0] + owners[1], 16);
}

fn cross_shard_close(kind: EngineKind) {
    let Some((engine, _)) = start(config(kind, 2)) else {
        return;
    };
    for via in [0u8, 1] {
        let mut c = connect(engine.local_addr());
        c.write_all(&frame(&[&[CLOSE_VIA, via]])).unwrap();
        expect_closed(&mut c);
    }
}

fn backpressure_isolates_a_client_that_never_reads(kind: EngineKind) {
    const REQUESTS: usize = 2048;
    const REPLY: usize = 16 * 1024;
    let cfg = EngineConfig {
        max_send_queue_bytes: 64 * 1024,
        max_send_queue_hard_bytes: 1 << 30,
        max_message_size: 1024,
        buffer_size: 256,
        ..config(kind, 1)
    };
    let pause_above = cfg.max_send_queue_bytes;
    let window = cfg.max_message_size.max(cfg.buffer_size as usize);
    let Some((engine, shared)) = start(cfg) else {
        return;
    };
    let addr = engine.local_addr();

    // A client with a small receive buffer (so the kernel cannot absorb much) that sends many
    // requests, each asking for a 16 KiB reply, and then does not read.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut slow: TcpStream = sock.into();
    slow.set_read_timeout(Some(GUARD)).unwrap();
    let mut requests = Vec::new();
    for _ in 0..REQUESTS {
        requests.extend(frame(&[&[BIG], &(REPLY as u32).to_be_bytes()]));
    }
    slow.write_all(&requests).unwrap();

    wait_until("the slow connection is paused", || engine.stats()[0].read_pauses > 0);

    // Others are still served while the slow client holds its replies back.
    let mut other = connect(addr);
    for i in 0..20u8 {
        other.write_all(&frame(&[&[ECHO, i]])).unwrap();
        assert_eq!(read_frame(&mut other).unwrap(), [ECHO, i]);
    }
    // The service has not been handed all requests: the engine stopped reading the slow client
    // (32 MiB of replies cannot fit the kernel's buffers plus the send queue limit).
    let done = shared.big_done.load(SeqCst) as usize;
    assert!(done < REQUESTS, "service processed {done} of {REQUESTS} requests without the client reading");
    // Memory stayed bounded: at most the limit plus what one call's worth of input produces.
    let per_call = window / 9 * (REPLY + 5);
    let high = engine.stats()[0].send_queue_high_water as usize;
    assert!(high <= pause_above + per_call, "send queue reached {high} bytes");

    // Once the client reads, everything arrives, in order.
    for _ in 0..REQUESTS {
        let r = read_frame(&mut slow).unwrap();
        assert_eq!(r.len(), REPLY + 1);
        assert_eq!(r[0], BIG);
    }
    assert_eq!(shared.big_done.load(SeqCst) as usize, REQUESTS);
    assert_eq!(engine.stats()[0].send_queue_aborts, 0);
}

fn a_client_that_never_reads_is_disconnected_after_the_stall_limit(kind: EngineKind) {
    let cfg = EngineConfig {
        max_send_queue_bytes: 64 * 1024,
        max_send_queue_hard_bytes: 1 << 30,
        max_message_size: 1024,
        send_stall_timeout: Duration::from_millis(200),
        ..config(kind, 1)
    };
    let Some((engine, _)) = start(cfg) else {
        return;
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&engine.local_addr().into()).unwrap();
    let mut stuck: TcpStream = sock.into();
    let mut requests = Vec::new();
    for _ in 0..512 {
        requests.extend(frame(&[&[BIG], &(16u32 * 1024).to_be_bytes()]));
    }
    stuck.write_all(&requests).unwrap();
    wait_until("the connection is aborted for not reading", || engine.stats()[0].stall_aborts == 1);
    wait_until("and closed", || engine.stats()[0].closed == 1);
    // Others are served as before.
    let mut other = connect(engine.local_addr());
    other.write_all(&frame(&[&[ECHO, 7]])).unwrap();
    assert_eq!(read_frame(&mut other).unwrap(), [ECHO, 7]);
    assert_eq!(engine.stats()[0].send_queue_aborts, 0, "not the hard limit: the stall limit");
}

fn stale_conn_id_gets_nothing(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 1)) else {
        return;
    };
    let addr = engine.local_addr();
    let mut a = connect(addr);
    a.write_all(&frame(&[&[REMEMBER]])).unwrap();
    let old = parse_id(&read_frame(&mut a).unwrap()[1..]);
    drop(a);
    wait_until("the first connection is closed", || shared.closed.load(SeqCst) == 1);

    // The next connection reuses the slot with a new generation.
    let mut b = connect(addr);
    b.write_all(&frame(&[&[SEND_STALE, 0]])).unwrap();
    let r = read_frame(&mut b).unwrap();
    assert_eq!(r[0], SEND_STALE);
    let (stale, me) = (parse_id(&r[1..8]), parse_id(&r[8..15]));
    assert_eq!(stale, old);
    assert_eq!(me.slot, old.slot, "slot reused");
    assert_ne!(me.generation, old.generation);
    // The stale send was made after our reply was queued; an echo round trip afterwards proves
    // it has been handled (and dropped) without reaching us.
    b.write_all(&frame(&[&[ECHO], b"after"])).unwrap();
    assert_eq!(read_frame(&mut b).unwrap(), [&[ECHO][..], b"after"].concat());
    assert_eq!(engine.stats()[0].stale_drops, 1);
}

fn stale_conn_id_gets_nothing_across_shards(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 2)) else {
        return;
    };
    let addr = engine.local_addr();
    let mut a = connect(addr);
    a.write_all(&frame(&[&[REMEMBER]])).unwrap();
    let old = parse_id(&read_frame(&mut a).unwrap()[1..]);
    drop(a);
    wait_until("the first connection is closed", || shared.closed.load(SeqCst) == 1);

    // Open connections until one lands on the old connection's shard (it reuses the slot).
    let mut others = Vec::new();
    let (mut b, me) = loop {
        let mut c = connect(addr);
        c.write_all(&frame(&[&[REMEMBER]])).unwrap();
        let id = parse_id(&read_frame(&mut c).unwrap()[1..]);
        if id.shard == old.shard {
            break (c, id);
        }
        others.push(c);
        assert!(others.len() < 200, "SO_REUSEPORT never picked shard {}", old.shard);
    };
    assert_eq!(me.slot, old.slot);
    assert_ne!(me.generation, old.generation);
    // Restore the old id as the remembered one, then have the *other* shard send to it: the
    // bytes cross to the owner, which must drop them.
    *shared.remembered.lock().unwrap() = Some(old);
    let via = 1 - old.shard as u8;
    b.write_all(&frame(&[&[SEND_STALE, via]])).unwrap();
    assert_eq!(read_frame(&mut b).unwrap()[0], SEND_STALE);
    // A round trip through the same shard: its reply travels the same queue after the stale
    // record, so once it is here, the stale record has been handled.
    b.write_all(&frame(&[&[ROUTE, via, 7]])).unwrap();
    let r = read_frame(&mut b).unwrap();
    assert_eq!((r[0], r[2], r[3]), (ROUTE, via, 7));
    assert_eq!(engine.stats()[old.shard as usize].stale_drops, 1);
}

fn service_close_flushes_then_closes(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 1)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    let mut both = frame(&[&[ECHO], b"first"]);
    both.extend(frame(&[&[CLOSE_ME]]));
    c.write_all(&both).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], b"first"].concat());
    assert_eq!(read_frame(&mut c).unwrap(), [CLOSE_ME]);
    expect_closed(&mut c);
    wait_until("on_close ran", || shared.closed.load(SeqCst) == 1);
}

fn half_close_still_gets_replies(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 1)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[ECHO], b"bye"])).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], b"bye"].concat());
    expect_closed(&mut c);
    wait_until("on_close ran", || shared.closed.load(SeqCst) == 1);
}

fn oversize_message_closes(kind: EngineKind) {
    let cfg = EngineConfig { max_message_size: 1024, ..config(kind, 1) };
    let Some((engine, shared)) = start(cfg) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    // A frame announcing 100000 bytes: the service can never frame it within 1024 bytes.
    c.write_all(&100_000u32.to_be_bytes()).unwrap();
    let _ = c.write_all(&[0u8; 2000]);
    expect_closed(&mut c);
    wait_until("on_close ran", || shared.closed.load(SeqCst) == 1);
    assert_eq!(engine.stats()[0].oversize_closes, 1);
    // Others are unaffected.
    let mut d = connect(engine.local_addr());
    d.write_all(&frame(&[&[ECHO], b"ok"])).unwrap();
    assert_eq!(read_frame(&mut d).unwrap(), [&[ECHO][..], b"ok"].concat());
}

fn connection_limit(kind: EngineKind) {
    let cfg = EngineConfig { max_connections: 2, ..config(kind, 1) };
    let Some((engine, shared)) = start(cfg) else {
        return;
    };
    let addr = engine.local_addr();
    let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for c in &mut kept {
        c.write_all(&frame(&[&[ECHO]])).unwrap();
        assert_eq!(read_frame(c).unwrap(), [ECHO]);
    }
    let mut third = connect(addr);
    expect_closed(&mut third);
    assert_eq!(engine.stats()[0].rejected, 1);
    assert_eq!(shared.accepted.load(SeqCst), 2, "the refused connection never reached the service");
    // Closing one makes room again.
    drop(kept.pop());
    wait_until("on_close ran", || shared.closed.load(SeqCst) == 1);
    let mut fourth = connect(addr);
    fourth.write_all(&frame(&[&[ECHO]])).unwrap();
    assert_eq!(read_frame(&mut fourth).unwrap(), [ECHO]);
}

fn timers_fire(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 2)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[TIMER], &30u32.to_be_bytes()])).unwrap();
    c.write_all(&frame(&[&[TIMER], &5u32.to_be_bytes()])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [TIMER]);
    assert_eq!(read_frame(&mut c).unwrap(), [TIMER]);
    assert_eq!(shared.timers_fired.load(SeqCst), 2);
}

/// Output a service gathers goes out after its window although nothing else happens (no input,
/// no timer): the engine wakes for it, and only `on_flush` writes it.
fn gathered_output_is_flushed_without_further_events(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 1)) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    let mut both = frame(&[&[GATHER, b'a']]);
    both.extend_from_slice(&frame(&[&[GATHER, b'b']]));
    c.write_all(&both).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [GATHER, b'a', b'b'], "both in one flush");
    assert_eq!(shared.flushes.load(SeqCst), 1);
    c.write_all(&frame(&[&[GATHER, b'c']])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [GATHER, b'c']);
    assert_eq!(shared.flushes.load(SeqCst), 2);
}

fn shutdown_stops_everything(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 2)) else {
        return;
    };
    let addr = engine.local_addr();
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    for c in &mut clients {
        c.write_all(&frame(&[&[ECHO]])).unwrap();
        assert_eq!(read_frame(c).unwrap(), [ECHO]);
    }
    // A client that never reads, with megabytes of replies pending (a send stuck in flight).
    let mut slow = connect(addr);
    for _ in 0..256 {
        slow.write_all(&frame(&[&[BIG], &(64u32 * 1024).to_be_bytes()])).unwrap();
    }
    wait_until("the slow client is paused", || total(&engine.stats(), |s| s.read_pauses) > 0);
    let handle = engine.shutdown_handle();
    // From another thread, as a signal-handling thread would.
    std::thread::spawn(move || handle.shutdown()).join().unwrap();
    engine.join().expect("shards stop cleanly");
    for c in &mut clients {
        expect_closed(c);
    }
    assert_eq!(shared.accepted.load(SeqCst), 11);
    assert_eq!(shared.closed.load(SeqCst), 11, "on_close ran for every connection");
    assert!(TcpStream::connect(addr).is_err(), "listeners are closed");
}

// ---------------------------------------------------------------------------------------------
// Engine selection.

#[test]
fn auto_picks_io_uring_when_available() {
    let Some((engine, _)) = start(config(EngineKind::Auto, 1)) else {
        return;
    };
    let expected = match runtime::io_uring_support() {
        Ok(()) => EngineKind::Uring,
        Err(reason) => {
            eprintln!("io_uring unavailable here ({reason}); Auto must pick epoll");
            EngineKind::Epoll
        }
    };
    assert_eq!(engine.kind(), expected);
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[ECHO], b"auto"])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], b"auto"].concat());
}

#[test]
fn forced_epoll_runs_epoll() {
    let Some((engine, _)) = start(config(EngineKind::Epoll, 2)) else {
        return;
    };
    assert_eq!(engine.kind(), EngineKind::Epoll);
}

#[test]
fn bad_config_is_refused() {
    setup();
    let cfg = EngineConfig { buffer_count: 100, ..config(EngineKind::Epoll, 1) };
    let err = runtime::start(cfg, |me, _| TestService::new(me, Arc::default())).unwrap_err();
    assert!(err.to_string().contains("buffer_count"), "{err}");
    let cfg = EngineConfig { shards: vec![Some(100_000)], ..config(EngineKind::Epoll, 1) };
    let err = runtime::start(cfg, |me, _| TestService::new(me, Arc::default())).unwrap_err();
    assert!(err.to_string().contains("core"), "{err}");
}

#[test]
fn pinned_shard_serves() {
    let Some((engine, _)) = start(EngineConfig { shards: vec![Some(0)], ..config(EngineKind::Auto, 1) }) else {
        return;
    };
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[ECHO], b"pinned"])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [&[ECHO][..], b"pinned"].concat());
}

fn listeners_are_tagged(kind: EngineKind) {
    let mut cfg = config(kind, 2);
    cfg.listeners.push(Listen::new("127.0.0.1:0".parse().unwrap(), Tag(5)));
    cfg.listeners.push(Listen::on_shard("127.0.0.1:0".parse().unwrap(), Tag(6), 1));
    let Some((engine, _)) = start(cfg) else {
        return;
    };
    assert_eq!(engine.local_addrs().len(), 3);
    for tag in [0u8, 5, 6] {
        let addr = engine.local_addr_of(Tag(u16::from(tag))).unwrap();
        for _ in 0..8 {
            let mut c = connect(addr);
            c.write_all(&frame(&[&[TAG]])).unwrap();
            assert_eq!(read_frame(&mut c).unwrap(), [TAG, tag], "accepted on {addr}");
            if tag == 6 {
                c.write_all(&frame(&[&[REMEMBER]])).unwrap();
                let id = parse_id(&read_frame(&mut c).unwrap()[1..]);
                assert_eq!(id.shard, 1, "a listener of one shard is accepted there only");
            }
        }
    }
}

fn outbound_connections(kind: EngineKind) {
    let Some((engine, _)) = start(config(kind, 2)) else {
        return;
    };
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[DIAL], peer.local_addr().unwrap().to_string().as_bytes()])).unwrap();
    let (mut far, _) = peer.accept().unwrap();
    far.set_read_timeout(Some(GUARD)).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [DIAL, 1], "connected");
    assert_eq!(read_frame(&mut far).unwrap(), [HELLO], "bytes sent on connect arrive");
    // The outbound connection is served like any other: the far end asks, the service answers.
    far.write_all(&frame(&[&[ECHO], b"over there"])).unwrap();
    assert_eq!(read_frame(&mut far).unwrap(), [&[ECHO][..], b"over there"].concat());
    far.write_all(&frame(&[&[TAG]])).unwrap();
    assert_eq!(read_frame(&mut far).unwrap(), [TAG, OUT_TAG.0 as u8]);
    drop(far);
    assert_eq!(read_frame(&mut c).unwrap(), [DIAL_CLOSED], "its close is reported");
    let stats = engine.stats();
    assert_eq!(total(&stats, |s| s.connects), 1);
    assert_eq!(total(&stats, |s| s.connect_failures), 0);
}

fn outbound_connect_failure(kind: EngineKind) {
    let Some((engine, shared)) = start(config(kind, 1)) else {
        return;
    };
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut c = connect(engine.local_addr());
    c.write_all(&frame(&[&[DIAL], addr.to_string().as_bytes()])).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), [DIAL, 0], "the failure is reported");
    assert_eq!(read_frame(&mut c).unwrap(), [DIAL_CLOSED], "then its close");
    assert_eq!(total(&engine.stats(), |s| s.connect_failures), 1);
    assert_eq!(shared.closed.load(SeqCst), 1, "on_close for the failed connection only");
}

fn tiny_cross_shard_queues_lose_nothing(kind: EngineKind) {
    // One-record queues between three shards: almost every cross-shard request overflows.
    let cfg = EngineConfig { cross_shard_queue: 1, ..config(kind, 3) };
    let Some((engine, _)) = start(cfg) else {
        return;
    };
    let addr = engine.local_addr();
    let clients: Vec<_> = (0..12u8)
        .map(|n| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let mut batch = Vec::new();
                for i in 0..400u32 {
                    let target = ((i + u32::from(n)) % 3) as u8;
                    batch.extend(frame(&[&[ROUTE_BACK, target, n], &i.to_be_bytes()]));
                }
                c.write_all(&batch).unwrap();
                if n % 3 == 0 {
                    // Half-close with everything still in flight.
                    c.shutdown(Shutdown::Write).unwrap();
                }
                let mut replies = Vec::new();
                for _ in 0..400 {
                    replies.push(read_frame(&mut c).unwrap());
                }
                (n, replies)
            })
        })
        .collect();
    for t in clients {
        let (n, replies) = t.join().unwrap();
        // Replies to one connection may be reordered between shards (this service does not
        // sequence them), but each request is answered exactly once, by the shard it named,
        // also after the client's half-close (the service holds the connection meanwhile).
        let mut seen: Vec<u32> = replies
            .iter()
            .map(|r| {
                assert_eq!((r[0], r[3]), (ROUTE_BACK, n));
                let i = u32::from_be_bytes(r[4..8].try_into().unwrap());
                assert_eq!(u32::from(r[2]), (i + u32::from(n)) % 3, "handled by its target");
                i
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..400).collect::<Vec<_>>(), "client {n}: every request answered once");
    }
    let stats = engine.stats();
    assert!(total(&stats, |s| s.spilled) > 0, "the queues overflowed: {stats:?}");
    wait_until("every connection closed", || total(&engine.stats(), |s| s.closed) == 12);
}
