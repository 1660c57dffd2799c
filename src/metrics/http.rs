//! The `/metrics` endpoint: a small HTTP/1.1 responder on a thread of its own, one connection
//! at a time, each closed after its answer. A scrape every few seconds needs no more; the shards
//! never wait for it (they publish into their slots with `try_lock`).
//!
//! `GET /metrics` (or `HEAD`) answers the metrics in the Prometheus text format, or in
//! OpenMetrics when the `Accept` header asks for it; any other path gets 404 and any other
//! method 405. A request head longer than 8 KiB gets 400, and a client gets two seconds to send
//! its request and to read the answer, so a stalled one cannot hold the endpoint for long.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::expose::{Exporter, Format};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request, and to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running `/metrics` endpoint; stopped when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port) and serves `exporter` on a thread named
    /// `metrics`.
    pub fn start(addr: SocketAddr, exporter: Exporter) -> io::Result<Self> {
        Self::serve(TcpListener::bind(addr)?, exporter)
    }

    /// Serves `exporter` on `listener` (bound by the caller) on a thread named `metrics`.
    pub fn serve(listener: TcpListener, exporter: Exporter) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread =
            std::thread::Builder::new().name("metrics".into()).spawn(move || serve(&listener, &exporter, &flag))?;
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(listener: &TcpListener, exporter: &Exporter, stop: &AtomicBool) {
    let mut last_error_log: Option<Instant> = None;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(s) => {
                if let Err(e) = answer(s, exporter) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: say so at most once a minute, and do not
                // spin on it.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed (said at most once a minute)");
                    last_error_log = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    accept: Option<String>,
}

/// Parses a request head (up to the blank line).
fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") || first.next().is_some() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find_map(|(name, value)| name.trim().eq_ignore_ascii_case("accept").then(|| value.trim().to_string()));
    Some(Request { method: method.into(), path: path.into(), accept })
}

/// Reads one request head from `s`: `None` when it is too long or never ends.
fn read_head(s: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn answer(mut s: TcpStream, exporter: &Exporter) -> io::Result<()> {
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let Some(head) = read_head(&mut s)? else {
        return respond(&mut s, "400 Bad Request", "text/plain", b"bad request\n", true);
    };
    let Some(req) = parse_head(&head) else {
        return respond(&mut s, "400 Bad Request", "text/plain", b"bad request\n", true);
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return respond(&mut s, "405 Method Not Allowed", "text/plain", b"only GET /metrics\n", true);
    }
    if req.path != "/metrics" {
        return respond(&mut s, "404 Not Found", "text/plain", b"the metrics are at /metrics\n", !head_only);
    }
    let format = Format::negotiate(req.accept.as_deref());
    let body = exporter.render(format);
    respond(&mut s, "200 OK", format.content_type(), body.as_bytes(), !head_only)
}

fn respond(s: &mut TcpStream, status: &str, content_type: &str, body: &[u8], with_body: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" },
    );
    s.write_all(head.as_bytes())?;
    if with_body {
        s.write_all(body)?;
    }
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse_to_method_path_and_accept() {
        let r =
            parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text;version=1.0.0")
                .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(Format::negotiate(r.accept.as_deref()), Format::OpenMetrics);
        let r = parse_head("HEAD / HTTP/1.0").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.accept), ("HEAD", "/", None));
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")), Format::Prometheus);
        assert!(parse_head("GET /metrics").is_none());
        assert!(parse_head("GET /metrics SPDY/3").is_none());
        assert!(parse_head("").is_none());
    }
}
