//! A small blocking ASAP client over TCP for the `register` and `resolve` commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rserpool::wire::framer::Frame;
use rserpool::wire::{Framer, Protocol};

/// One TCP connection to a registrar, reading whole messages.
pub struct Connection {
    stream: TcpStream,
    framer: Framer,
    pending: Vec<u8>,
}

impl Connection {
    /// Connects to `addr` (failing after `timeout`).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, framer: Framer::new(Protocol::Asap, 65535), pending: Vec::with_capacity(4096) })
    }

    /// Sends whole messages.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits up to `timeout` (`None`: forever) for the next message. `Ok(None)` on timeout.
    pub fn recv(&mut self, timeout: Option<Duration>) -> std::io::Result<Option<Vec<u8>>> {
        self.stream.set_read_timeout(timeout)?;
        loop {
            match self.framer.frame(&self.pending) {
                Ok(Frame::Complete(m)) => {
                    let m = m.to_vec();
                    self.pending.drain(..m.len());
                    return Ok(Some(m));
                }
                Ok(Frame::Incomplete { .. }) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the registrar closed the connection",
                    ))
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                // A timeout, or a signal (the caller checks its stop flag): nothing yet.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
