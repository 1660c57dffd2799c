//! What a run needs before it starts: the pools and static PEs registered with the registrar
//! (kept alive on their own connections, which answer keep-alives, for as long as the run lasts),
//! Redis keys set, and the registrar's real message sizes measured.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rserpool::client::blocking::AsapStream;
use rserpool::wire::asap::{self, MessageType};
use rserpool::wire::Writer;

use crate::validate::{check_asap, check_resp, Answer};
use crate::workload::{resp_command, Plan};

/// Most PEs registered over one setup connection (the registrar's default limit is 1024).
pub const PES_PER_CONNECTION: usize = 1000;

fn err(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Waits until `addr` accepts a connection.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(err(format!("{addr} does not accept connections: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads whole ASAP messages (the client library's [`AsapStream`]) until `f` returns true for
/// one.
fn read_until(s: &mut AsapStream, deadline: Instant, mut f: impl FnMut(&[u8]) -> io::Result<bool>) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err("the registrar did not answer in time".into()));
        }
        if let Some(m) = s.recv(left)? {
            if f(&m)? {
                return Ok(());
            }
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<AsapStream> {
    AsapStream::connect(addr, None, Duration::from_secs(10))
}

/// Connections that hold the static PEs; they answer keep-alives until dropped (which closes
/// them, and so deregisters the PEs).
pub struct Holder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// PEs registered.
    pub pes: usize,
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Registers `pool_size` PEs in each pool of the plan (pipelined, 1,000 per connection) and
/// checks that every registration was accepted.
pub fn register_static(addr: SocketAddr, plan: &Plan) -> io::Result<Holder> {
    let total = plan.pools() * plan.spec.pool_size;
    let mut conns = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while i < total {
        let n = PES_PER_CONNECTION.min(total - i);
        let mut s = connect(addr)?;
        let mut bytes = Vec::new();
        for k in i..i + n {
            let (pool, j) = (k / plan.spec.pool_size, k % plan.spec.pool_size);
            bytes.extend_from_slice(&plan.registration(pool, plan.static_pe_id(pool, j)));
        }
        s.send(&bytes)?;
        let mut answered = 0;
        read_until(&mut s, deadline, |m| {
            match check_asap(plan, m) {
                Answer::Registration { result: Ok(()), .. } => answered += 1,
                Answer::Registration { pe_id, .. } => {
                    return Err(err(format!("the registrar rejected the registration of PE {pe_id:#x}")))
                }
                Answer::KeepAlive { .. } | Answer::Other => {}
                a => return Err(err(format!("unexpected answer to a registration: {a:?}"))),
            }
            Ok(answered == n)
        })?;
        conns.push(s);
        i += n;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new().name("loadgen-holder".into()).spawn(move || hold(conns, &flag))?;
    Ok(Holder { stop, thread: Some(thread), pes: total })
}

/// Answers keep-alives on the setup connections until `stop`.
fn hold(mut conns: Vec<AsapStream>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for s in conns.iter_mut() {
            let mut acks = Vec::new();
            while let Ok(Some(m)) = s.recv(Duration::from_millis(1)) {
                // One without PE Identifier (never from our registrar) goes unanswered.
                if let Ok(parsed) = asap::parse(&m) {
                    if let asap::Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } = parsed.body() {
                        let t = MessageType::EndpointKeepAliveAck;
                        let _ = asap::emit_handle_and_id(
                            &mut Writer::new(&mut acks),
                            t,
                            0,
                            pool_handle,
                            Some(*pe_id),
                            None,
                        );
                    }
                }
            }
            if !acks.is_empty() {
                let _ = s.send(&acks);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resolves pool 0 once and returns the sizes of the request and of the answer.
pub fn probe_sizes(addr: SocketAddr, plan: &Plan) -> io::Result<(usize, usize)> {
    let mut s = connect(addr)?;
    let req = plan.resolve_request(0);
    s.send(req)?;
    let mut size = 0;
    read_until(&mut s, Instant::now() + Duration::from_secs(10), |m| match check_asap(plan, m) {
        Answer::Resolution { result: Ok(()), .. } => {
            size = m.len();
            Ok(true)
        }
        a => Err(err(format!("probe resolution failed: {a:?}"))),
    })?;
    Ok((req.len(), size))
}

/// Registers and deregisters one churn PE; returns the sizes of the Registration and of its
/// Response (the churn workload's request and answer).
pub fn probe_churn_sizes(addr: SocketAddr, plan: &Plan) -> io::Result<(usize, usize)> {
    let mut s = connect(addr)?;
    let (pool, pe) = (plan.churn_pool(0, 0), plan.churn_pe_id(0, 0));
    let req = plan.registration(pool, pe);
    s.send(&req)?;
    let mut size = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    read_until(&mut s, deadline, |m| match check_asap(plan, m) {
        Answer::Registration { result: Ok(()), .. } => {
            size = m.len();
            Ok(true)
        }
        a => Err(err(format!("probe registration failed: {a:?}"))),
    })?;
    s.send(&plan.deregistration(pool, pe))?;
    read_until(&mut s, deadline, |m| Ok(matches!(check_asap(plan, m), Answer::Deregistration { .. })))?;
    Ok((req.len(), size))
}

/// Sets every key of the plan in Redis to a value of the plan's value size.
pub fn redis_fill(addr: SocketAddr, plan: &Plan) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let value = vec![b'v'; plan.redis_value_size];
    let n = plan.pools();
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend_from_slice(&resp_command(&[b"SET", plan.handle(i), &value]));
    }
    let writer = {
        let mut w = s.try_clone()?;
        std::thread::spawn(move || w.write_all(&bytes))
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut ok = 0;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    while ok < n {
        let r = s.read(&mut chunk)?;
        if r == 0 {
            return Err(err("redis closed the connection".into()));
        }
        buf.extend_from_slice(&chunk[..r]);
        while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            if &buf[..end] != b"+OK" {
                return Err(err(format!("redis SET answered {:?}", String::from_utf8_lossy(&buf[..end]))));
            }
            buf.drain(..end + 2);
            ok += 1;
        }
    }
    writer.join().map_err(|_| err("writer panicked".into()))??;
    // Check one GET.
    s.write_all(plan.get_request(0))?;
    buf.clear();
    loop {
        let r = s.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..r]);
        if let Some((_, result)) = check_resp(&buf, plan.redis_value_size) {
            return result.map_err(|k| err(format!("redis GET check failed: {}", k.name())));
        }
        if r == 0 {
            return Err(err("redis closed the connection".into()));
        }
    }
}
