//! The pool element's side of PU↔PE sessions, sans-IO (`docs/session-layer.md`): the
//! connections PUs open to the PE's user transport.
//!
//! Each accepted connection gets a HELLO; the PU's first frame must be HELLO. Data goes to the
//! application, which acknowledges each message when it has processed it
//! ([`SessionServer::ack`]); heartbeat requests are answered at once; a Cookie Echo and a
//! Business Card from the PU are handed up. Bad input gets an ERROR frame naming it and the
//! connection is closed; nothing else happens. A session silent for `idle_timeout` is closed.
//! Bounded: at most `max_sessions` sessions, receive buffers of at most one frame.

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};

use super::config::SessionConfig;
use super::frame::{self, Frame, Kind};
use super::session::SessionId;
use super::{ConnToken, Ctx};
use crate::time::Time;
use crate::wire::asap::{self, Body};
use crate::wire::{PolicyRepr, PoolElementRepr};

/// What the PE's sessions tell its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A PU opened a session.
    Opened {
        /// The session.
        session: SessionId,
        /// The PU's address.
        peer: SocketAddr,
    },
    /// A message from the PU; acknowledge it with [`SessionServer::ack`] once processed.
    Data {
        /// The session.
        session: SessionId,
        /// Its stream.
        stream: u16,
        /// Its sequence number (acknowledge this one).
        seq: u64,
        /// Sent before to a PE that failed (retrieval).
        resend: bool,
        /// The message.
        payload: Vec<u8>,
    },
    /// The PU failed over to this PE and hands over the newest cookie of the previous one.
    CookieEcho {
        /// The session.
        session: SessionId,
        /// The cookie.
        cookie: Vec<u8>,
    },
    /// The PU sent its Business Card.
    BusinessCard {
        /// The session.
        session: SessionId,
        /// Its PEs, in order.
        pes: Vec<PoolElementRepr>,
    },
    /// The session ended (`error`: bad input, with what was wrong).
    Closed {
        /// The session.
        session: SessionId,
        /// Why, when it was bad input.
        error: Option<String>,
    },
}

#[derive(Debug)]
struct Peer {
    rx: Vec<u8>,
    hello_seen: bool,
    last_heard: Time,
    /// Next sequence number of the PE's own messages.
    next_seq: u64,
}

/// The PE's sessions.
#[derive(Debug)]
pub struct SessionServer {
    cfg: SessionConfig,
    peers: HashMap<ConnToken, Peer>,
    events: VecDeque<ServerEvent>,
}

impl SessionServer {
    /// No sessions yet.
    pub fn new(cfg: SessionConfig) -> Self {
        Self { cfg, peers: HashMap::new(), events: VecDeque::new() }
    }

    /// Sessions open.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether `conn` is a session.
    pub fn owns(&self, conn: ConnToken) -> bool {
        self.peers.contains_key(&conn)
    }

    /// A PU connected: HELLO, unless `max_sessions` are open (then it is closed).
    pub fn on_accepted(&mut self, cx: &mut Ctx, conn: ConnToken, peer: SocketAddr, now: Time) {
        if self.peers.len() >= self.cfg.max_sessions {
            let mut bytes = Vec::new();
            frame::error(&mut bytes, &"too many sessions");
            cx.send(conn, bytes);
            cx.close(conn);
            return;
        }
        let mut bytes = Vec::new();
        frame::hello(&mut bytes);
        cx.send(conn, bytes);
        self.peers.insert(conn, Peer { rx: Vec::new(), hello_seen: false, last_heard: now, next_seq: 1 });
        self.events.push_back(ServerEvent::Opened { session: SessionId(conn.0), peer });
    }

    /// Bytes from a PU.
    pub fn on_data(&mut self, cx: &mut Ctx, conn: ConnToken, data: &[u8], now: Time) {
        let Some(mut peer) = self.peers.remove(&conn) else { return };
        peer.last_heard = now;
        peer.rx.extend_from_slice(data);
        let session = SessionId(conn.0);
        let mut used = 0;
        let mut error = None;
        loop {
            match frame::decode(&peer.rx[used..], self.cfg.max_payload) {
                Ok(None) => break,
                Ok(Some((f, len))) => {
                    used += len;
                    if let Err(e) = self.on_frame(cx, conn, &mut peer.hello_seen, f) {
                        error = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        match error {
            Some(e) => {
                let mut bytes = Vec::new();
                frame::error(&mut bytes, &e);
                cx.send(conn, bytes);
                cx.close(conn);
                self.events.push_back(ServerEvent::Closed { session, error: Some(e) });
            }
            None => {
                peer.rx.drain(..used);
                self.peers.insert(conn, peer);
            }
        }
    }

    fn on_frame(&mut self, cx: &mut Ctx, conn: ConnToken, hello_seen: &mut bool, f: Frame<'_>) -> Result<(), String> {
        let session = SessionId(conn.0);
        if !*hello_seen || f == Frame::Hello {
            if *hello_seen || f != Frame::Hello {
                let kind = if f == Frame::Hello { Kind::Hello } else { Kind::Data };
                return Err(frame::FrameError::Sequence(kind).to_string());
            }
            *hello_seen = true;
            return Ok(());
        }
        match f {
            Frame::Data { stream, seq, resend, payload } => {
                self.events.push_back(ServerEvent::Data { session, stream, seq, resend, payload: payload.to_vec() })
            }
            Frame::Heartbeat { nonce } => {
                let mut bytes = Vec::new();
                frame::encode(&mut bytes, Kind::HeartbeatAck, 0, 0, nonce, &[]);
                cx.send(conn, bytes);
            }
            Frame::Asap(m) => {
                if let Ok(parsed) = asap::parse(m) {
                    match parsed.into_body() {
                        Body::CookieEcho { cookie } => {
                            self.events.push_back(ServerEvent::CookieEcho { session, cookie: cookie.to_vec() })
                        }
                        Body::BusinessCard { pool_elements, .. } => {
                            let pes = pool_elements.map(|pe| pe.to_repr()).take(256).collect();
                            self.events.push_back(ServerEvent::BusinessCard { session, pes });
                        }
                        _ => {}
                    }
                }
            }
            Frame::Error(reason) => return Err(format!("the PU reported: {reason}")),
            Frame::Ack { .. } | Frame::HeartbeatAck { .. } | Frame::Hello => {}
        }
        Ok(())
    }

    /// A session's connection is gone.
    pub fn on_closed(&mut self, conn: ConnToken) {
        if self.peers.remove(&conn).is_some() {
            self.events.push_back(ServerEvent::Closed { session: SessionId(conn.0), error: None });
        }
    }

    fn conn(&self, session: SessionId) -> Option<ConnToken> {
        let conn = ConnToken(session.0);
        self.peers.contains_key(&conn).then_some(conn)
    }

    /// Sends a message to the PU; returns its sequence number (`None`: no such session).
    pub fn send(&mut self, cx: &mut Ctx, session: SessionId, stream: u16, payload: &[u8]) -> Option<u64> {
        let conn = self.conn(session)?;
        let peer = self.peers.get_mut(&conn)?;
        let seq = peer.next_seq;
        peer.next_seq += 1;
        let mut bytes = Vec::with_capacity(frame::HEADER_LEN + payload.len());
        frame::encode(&mut bytes, Kind::Data, 0, stream, seq, payload);
        cx.send(conn, bytes);
        Some(seq)
    }

    /// Acknowledges message `seq` of the PU: the application has processed it, so the PU will
    /// not send it to another PE.
    pub fn ack(&mut self, cx: &mut Ctx, session: SessionId, seq: u64) {
        if let Some(conn) = self.conn(session) {
            let mut bytes = Vec::new();
            frame::encode(&mut bytes, Kind::Ack, 0, 0, seq, &[]);
            cx.send(conn, bytes);
        }
    }

    /// Sends a Cookie (the session state the next PE will get if this one fails).
    pub fn send_cookie(&mut self, cx: &mut Ctx, session: SessionId, cookie: &[u8]) {
        if let Some(conn) = self.conn(session) {
            let mut bytes = Vec::new();
            frame::asap_message(&mut bytes, |w| frame::cookie(w, false, cookie));
            cx.send(conn, bytes);
        }
    }

    /// Sends a Business Card: the PEs the PU should fail over to, in order.
    pub fn send_business_card(
        &mut self,
        cx: &mut Ctx,
        session: SessionId,
        pool_handle: &[u8],
        policy: &PolicyRepr,
        pes: &[PoolElementRepr],
    ) {
        if let Some(conn) = self.conn(session) {
            let mut bytes = Vec::new();
            frame::asap_message(&mut bytes, |w| frame::business_card(w, pool_handle, policy, pes));
            cx.send(conn, bytes);
        }
    }

    /// Closes a session.
    pub fn close(&mut self, cx: &mut Ctx, session: SessionId) {
        if let Some(conn) = self.conn(session) {
            self.peers.remove(&conn);
            cx.close(conn);
            self.events.push_back(ServerEvent::Closed { session, error: None });
        }
    }

    /// Closes sessions silent for `idle_timeout`.
    pub fn on_timer(&mut self, cx: &mut Ctx, now: Time) {
        if self.cfg.idle_timeout == 0 {
            return;
        }
        let idle: Vec<ConnToken> = self
            .peers
            .iter()
            .filter(|(_, p)| now.millis_since(p.last_heard) >= self.cfg.idle_timeout)
            .map(|(c, _)| *c)
            .collect();
        for conn in idle {
            self.close(cx, SessionId(conn.0));
        }
    }

    /// The earliest time [`SessionServer::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Time> {
        if self.cfg.idle_timeout == 0 {
            return None;
        }
        self.peers.values().map(|p| p.last_heard.add_millis(self.cfg.idle_timeout)).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }
}
