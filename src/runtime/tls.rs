//! TLS as an optional layer of one connection, shared by every engine: rustls's sans-I/O
//! connection sits between the socket's bytes and the service, so the service keeps seeing
//! plaintext and the engines keep moving bytes (`docs/TLS.md`).
//!
//! - **Receiving**: the ciphertext an engine read goes through [`TlsSession::input`]; the
//!   plaintext that comes out takes the same path to the service as a plain connection's bytes.
//! - **Sending**: the service's messages are staged as plaintext ([`TlsSession::staged`]) and
//!   sealed into records once per loop iteration ([`TlsSession::output`]), so the messages a
//!   service writes in one iteration share records instead of paying one each. Staged bytes
//!   count as unsent for backpressure, like a plain connection's queue.
//! - **Handshake**: the service hears of an accepted TLS connection only once its handshake has
//!   completed (so an unauthenticated peer never reaches it), and of a dialled one's outcome
//!   ([`crate::service::Service::on_connect`]) only then too. A handshake that fails, or does
//!   not complete within the engine's handshake limit, closes that connection and nothing else.
//!
//! Memory per connection stays bounded: rustls's own buffers are limited
//! ([`RUSTLS_BUFFER_LIMIT`]) and drained on every call, and what waits beyond them is the
//! connection's ordinary send queue, under the engine's limits.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

use crate::tls::{TlsAcceptor, TlsConnector};

/// Limit on rustls's internal buffers of one connection (unsent records, plaintext written
/// before the handshake completed). Both are emptied into the send queue at once, so the
/// limit only bounds a single call's work.
const RUSTLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Why a TLS connection failed.
#[derive(Debug)]
pub(crate) enum TlsFailure {
    /// The peer broke the protocol, or its certificate was refused.
    Protocol(rustls::Error),
    /// rustls would not take more input (it cannot happen while plaintext is drained after
    /// every record, but is handled rather than assumed).
    Stuck(std::io::Error),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "{e}"),
            Self::Stuck(e) => write!(f, "{e}"),
        }
    }
}

/// What the service is still to be told about a connection once its handshake completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Greeting {
    /// `on_accept` (an accepted connection: the service has not heard of it yet).
    Accept,
    /// `on_connect` with `Ok` (a dialled one, once its TCP connect finished).
    Connect,
    /// Nothing: told already (or the TCP connect has not finished yet).
    None,
}

/// The TLS state of one connection.
pub(crate) struct TlsSession {
    conn: Connection,
    /// Plaintext the service queued that is not sealed into records yet.
    staged: Vec<u8>,
    /// What to tell the service once the handshake completes.
    pub(crate) greeting: Greeting,
    /// The service knows this connection (it dialled it, or heard `on_accept`); it hears
    /// `on_close` only then.
    pub(crate) known: bool,
    /// The address at the other end.
    pub(crate) peer: SocketAddr,
    /// The peer sent `close_notify`: no more plaintext will come.
    pub(crate) peer_closed: bool,
    /// This side sent `close_notify`; nothing may follow it.
    closed: bool,
    /// The session failed: only the alert saying why is still to go out.
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("staged", &self.staged.len())
            .field("greeting", &self.greeting)
            .field("known", &self.known)
            .field("peer", &self.peer)
            .finish()
    }
}

impl TlsSession {
    /// The server side of a connection accepted from `peer`.
    pub(crate) fn accepted(acceptor: &TlsAcceptor, peer: SocketAddr) -> Result<Self, rustls::Error> {
        let conn = ServerConnection::new(Arc::clone(acceptor.config()))?;
        Ok(Self::wrap(conn.into(), Greeting::Accept, false, peer))
    }

    /// The client side of a connection dialled to `addr`.
    pub(crate) fn dialled(connector: &TlsConnector, addr: SocketAddr) -> Result<Self, rustls::Error> {
        let name = connector.server_name().cloned().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let conn = ClientConnection::new(Arc::clone(connector.config()), name)?;
        Ok(Self::wrap(conn.into(), Greeting::None, true, addr))
    }

    fn wrap(mut conn: Connection, greeting: Greeting, known: bool, peer: SocketAddr) -> Self {
        conn.set_buffer_limit(Some(RUSTLS_BUFFER_LIMIT));
        Self { conn, staged: Vec::new(), greeting, known, peer, peer_closed: false, closed: false, failed: false }
    }

    /// Whether the handshake is still under way.
    pub(crate) fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Plaintext waiting to be sealed.
    pub(crate) fn unsent(&self) -> usize {
        self.staged.len()
    }

    /// The buffer the service's plaintext goes to.
    pub(crate) fn staged(&mut self) -> &mut Vec<u8> {
        if self.failed {
            // Nothing queued for a failed session can be sent; keep it from piling up.
            self.staged.clear();
        }
        &mut self.staged
    }

    /// Feeds ciphertext from the socket; appends the plaintext it carried to `plain`. After an
    /// error the connection is finished: [`TlsSession::output`] still yields the alert that
    /// tells the peer why.
    pub(crate) fn input(&mut self, data: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsFailure> {
        let mut rest = data;
        while !rest.is_empty() && !self.peer_closed {
            match self.conn.read_tls(&mut rest) {
                // After close_notify rustls takes nothing more; whatever follows is ignored.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(TlsFailure::Stuck(e)),
            }
            let state = self.conn.process_new_packets().map_err(TlsFailure::Protocol)?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                // rustls said this many bytes are ready, so the read cannot come up short; if it
                // did, the length is cut to what was read instead of passing on zeros.
                let got = self.conn.reader().read(&mut plain[start..]).unwrap_or(0);
                plain.truncate(start + got);
            }
            self.peer_closed |= state.peer_has_closed();
        }
        Ok(())
    }

    /// Seals staged plaintext (once the handshake is done) and appends every record rustls has
    /// to send (handshake messages, alerts, data) to `out`.
    pub(crate) fn output(&mut self, out: &mut Vec<u8>) {
        if !self.conn.is_handshaking() && !self.staged.is_empty() {
            if self.closed || self.failed {
                // Nothing may follow close_notify; bytes for a connection that is closing
                // are dropped, as a plain connection's are once it is gone.
                self.staged.clear();
            }
            let mut off = 0;
            while off < self.staged.len() {
                // Each write takes up to the buffer limit, and the drain empties the buffer
                // again. Should rustls take nothing, the rest stays staged for the next call.
                match std::io::Write::write(&mut self.conn.writer(), &self.staged[off..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => off += n,
                }
                self.drain(out);
            }
            self.staged.drain(..off);
            if self.staged.capacity() > RUSTLS_BUFFER_LIMIT && self.staged.is_empty() {
                self.staged = Vec::new();
            }
        }
        self.drain(out);
    }

    /// The session has failed: what the service queued is dropped (it can never be sent), and
    /// only rustls's alert goes out.
    pub(crate) fn fail(&mut self) {
        self.failed = true;
        self.staged = Vec::new();
    }

    /// Sends `close_notify` after everything sealed so far.
    pub(crate) fn close(&mut self, out: &mut Vec<u8>) {
        if !self.closed && !self.failed && !self.conn.is_handshaking() {
            self.output(out);
            self.conn.send_close_notify();
            self.closed = true;
            self.drain(out);
        }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail; a zero-length write means nothing was left.
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
