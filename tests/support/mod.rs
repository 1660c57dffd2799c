//! Shared helpers of the integration tests: a registrar process on an ephemeral loopback port,
//! and a blocking ASAP client on the library's `AsapStream`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rserpool::handlespace::shard_of;

#[path = "vectors.rs"]
mod vectors;
#[allow(unused_imports)]
pub use vectors::vector;

use rserpool::client::blocking::AsapStream;
use rserpool::wire::asap::{self, Body, MessageType, Resolution};
use rserpool::wire::{
    CauseCode, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportRepr, Writer,
};

/// How long a test waits for anything before it calls the registrar stuck (a deadlock guard,
/// not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Short ENRP timers for registrar processes in tests, so that a death and its takeover happen
/// within a second (a `[timers]` table to put in a configuration file).
pub const SHORT_ENRP_TIMERS: &str = "[timers]
peer_heartbeat = 100
max_time_last_heard = 400
max_time_no_response = 200
takeover_expiry = 2000
mentor_discovery = 300
peer_reconnect = 100
keep_alive_interval = 200
keep_alive_timeout = 5000
";

/// A registrar process, killed when dropped.
pub struct Registrar {
    child: Child,
    /// Its ASAP address.
    pub addr: SocketAddr,
    /// Its log (stderr) lines so far, read by a background thread.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: TempDir,
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rserpool-test-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Registrar {
    /// Starts `rserpool registrar` with `engine` ("uring" or "epoll"), `cores` shards and
    /// `config` (TOML appended to the file) on 127.0.0.1 port 0; waits until it listens.
    pub fn start(engine: &str, cores: usize, config: &str) -> Self {
        Self::start_as(engine, cores, "11223344", "127.0.0.1:0", config)
    }

    /// Like [`Registrar::start`], with server id `id` (hex) and ENRP listening on `enrp`.
    pub fn start_as(engine: &str, cores: usize, id: &str, enrp: &str, config: &str) -> Self {
        Self::start_with_args(engine, cores, id, enrp, config, &[])
    }

    /// Like [`Registrar::start_as`], with more command-line arguments.
    pub fn start_with_args(engine: &str, cores: usize, id: &str, enrp: &str, config: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("registrar");
        let file = dir.0.join("registrar.toml");
        let head = format!("asap = \"127.0.0.1:0\"\nenrp = \"{enrp}\"\nid = \"{id}\"\nlog = \"info\"\n");
        std::fs::write(&file, format!("{head}{config}")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rserpool"))
            .args(["registrar", "--engine", engine, "--cores", &cores.to_string(), "--config"])
            .arg(&file)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the registrar");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line
                    .split("serving ASAP on ")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                // Logged before `start` returns, so that a test counting lines from then on
                // does not count this one.
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the registrar did not start; log: {:?}", log.lock().unwrap())
        });
        let addr: SocketAddr = addr.parse().unwrap();
        Self { child, addr, log, _dir: dir }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `needle`, waiting for it (lines after "serving ASAP on"
    /// may not have been read yet when `start` returns).
    pub fn log_line(&self, needle: &str) -> String {
        let mut found = None;
        eventually(&format!("a log line with {needle:?}"), || {
            found = self.log().into_iter().find(|l| l.contains(needle));
            found.is_some()
        });
        found.unwrap()
    }

    /// The (PE id, home registrar) pairs pool `pool` resolves to here (up to 16), sorted.
    #[allow(dead_code)]
    pub fn resolve_homes(&self, pool: &str) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .client()
            .resolve(pool, Some(16))
            .map(|pes| pes.iter().map(|p| (p.pe_id, p.home_registrar)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The address of the metrics endpoint, from the log line announcing it (waits for it).
    pub fn metrics_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self.log().iter().find_map(|l| {
                let rest = l.split("metrics at http://").nth(1)?;
                rest.split('/').next()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(Instant::now() < deadline, "no metrics endpoint announced; log: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Opens a client connection from another loopback address (127.0.0.0/8).
    pub fn client_from(&self, ip: &str) -> Client {
        Client::connect_from(ip.parse().unwrap(), self.addr)
    }

    /// Kills the process at once (SIGKILL: no goodbye to anyone).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the registrar did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking ASAP client: the library's [`AsapStream`] with test conveniences (panics
/// instead of errors, registration and resolution helpers).
pub struct Client {
    conn: AsapStream,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::wrap(AsapStream::connect(addr, None, PATIENCE).expect("connect to the registrar"))
    }

    /// Connects from `ip` (any port) to `addr`.
    pub fn connect_from(ip: std::net::IpAddr, addr: SocketAddr) -> Self {
        Self::wrap(AsapStream::connect(addr, Some(ip), PATIENCE).expect("connect to the registrar"))
    }

    /// Reads and writes whole ASAP messages on `stream` (either end of a connection).
    pub fn over(stream: TcpStream) -> Self {
        Self::wrap(AsapStream::over(stream).unwrap())
    }

    fn wrap(conn: AsapStream) -> Self {
        let stream = conn.stream.try_clone().unwrap();
        Self { conn, stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.conn.send(bytes).unwrap();
    }

    /// Sends, reporting failure (the registrar may have closed the connection).
    #[allow(dead_code)]
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.conn.send(bytes)
    }

    /// The next message, or `None` if the connection closed or nothing came within `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.conn.recv(wait).ok().flatten()
    }

    /// The next message (the test fails if none comes).
    pub fn recv(&mut self) -> Vec<u8> {
        self.recv_within(PATIENCE).expect("an answer from the registrar")
    }

    /// Whether the registrar closed this connection (reads until EOF or `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Registers and returns the Registration Response's (rejected, cause).
    pub fn register(&mut self, handle: &str, pe: PoolElementRepr) -> (bool, Option<CauseCode>) {
        self.send(&registration(handle, pe));
        loop {
            let m = self.recv();
            let parsed = asap::parse(&m).unwrap();
            match parsed.body() {
                Body::RegistrationResponse { rejected, error, .. } => {
                    return (*rejected, error.as_ref().map(|e| e.first_code()));
                }
                Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } => {
                    let ack = handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, *pe_id);
                    self.send(&ack);
                }
                // Including a Keep Alive without PE Identifier: ours always carries one.
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Resolves and returns the PEs (or the error cause).
    pub fn resolve(&mut self, handle: &str, items: Option<u32>) -> Result<Vec<PoolElementRepr>, CauseCode> {
        self.send(&resolution(handle, items));
        parse_resolution(&self.recv())
    }
}

pub fn parse_resolution(m: &[u8]) -> Result<Vec<PoolElementRepr>, CauseCode> {
    let parsed = asap::parse(m).unwrap();
    let Body::HandleResolutionResponse { resolution, .. } = parsed.body() else { panic!("not a resolution response") };
    match resolution {
        Resolution::Found { pool_elements, .. } => Ok(pool_elements.clone().map(|pe| pe.to_repr()).collect()),
        Resolution::Failed(e) => Err(e.first_code()),
    }
}

/// A port free on 127.0.0.1 right now, below the ephemeral range (for a listener the test starts
/// next).
#[allow(dead_code)]
pub fn free_port() -> u16 {
    // A port from the kernel (bind to port 0) is free only until someone binds port 0 again:
    // a registrar a test started before using it could be given it for its own listener (CI saw
    // "Address already in use" that way). Ports below the kernel's ephemeral range are never
    // given out like that; each call of this process tries the next one, from a start that
    // differs between processes.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        let span = ephemeral_low - 10_000;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let port = 10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP transport on 127.0.0.1.
#[allow(dead_code)]
pub fn tcp(port: u16) -> TransportRepr {
    TransportRepr::new(rserpool::wire::TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), port)
}

pub fn pe(id: u32, user: TransportRepr, policy: Policy, life: i32) -> PoolElementRepr {
    PoolElementRepr {
        pe_id: id,
        home_registrar: 0,
        registration_life: life,
        user_transport: user,
        policy: PolicyRepr::Known(policy),
        asap_transport: None,
    }
}

pub fn registration(handle: &str, pe: PoolElementRepr) -> Vec<u8> {
    MessageRepr::new(
        Protocol::Asap,
        MessageType::Registration as u8,
        0,
        vec![ParamRepr::PoolHandle(handle.as_bytes().to_vec()), ParamRepr::PoolElement(pe)],
    )
    .to_bytes()
    .unwrap()
}

pub fn handle_and_id(t: MessageType, handle: &[u8], pe_id: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_and_id(&mut Writer::new(&mut buf), t, 0, handle, Some(pe_id), None).unwrap();
    buf
}

pub fn resolution(handle: &str, items: Option<u32>) -> Vec<u8> {
    let mut buf = Vec::new();
    asap::emit_handle_resolution(&mut Writer::new(&mut buf), handle.as_bytes(), items).unwrap();
    buf
}

/// A pool handle that hashes to `shard` of `shards`.
pub fn handle_on(shard: u16, shards: u16, tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}")).find(|h| shard_of(h.as_bytes(), shards) == shard).unwrap()
}

/// Polls `check` until it holds (deadlock guard: fails after [`PATIENCE`]).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Defines one test per engine (`mod uring`, `mod epoll`) for each body; the io_uring variant
/// skips, with a message, where io_uring is blocked.
#[allow(unused_macros)]
macro_rules! both_engines {
    ($($name:ident($engine:ident) $body:block)*) => {
        mod uring {
            use super::*;
            $( #[test] fn $name() {
                // Hosts that block io_uring (container seccomp profiles) run the epoll suite only.
                if let Err(reason) = rserpool::runtime::io_uring_support() {
                    eprintln!("skipping the io_uring variant: {reason}");
                    return;
                }
                let $engine = "uring";
                $body
            } )*
        }
        mod epoll {
            use super::*;
            $( #[test] fn $name() { let $engine = "epoll"; $body } )*
        }
    };
}
