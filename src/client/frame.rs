//! The session layer's framing on TCP (`docs/session-layer.md`): what SCTP would give RSerPool's
//! PU↔PE traffic (message boundaries, streams, control messages beside data) in a 16-byte
//! header.
//!
//! ```text
//!  0       1       2               4                               8
//! +-------+-------+---------------+-------------------------------+
//! | kind  | flags | stream (u16)  | payload length (u32)          |
//! +-------+-------+---------------+-------------------------------+
//! | sequence number (u64): DATA's number, the number an ACK acknowledges, a heartbeat's nonce
//! +---------------------------------------------------------------+
//! | payload (length bytes)
//! ```

use core::fmt;

use crate::wire::asap::{self, MessageType};

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 16;
/// The HELLO payload's magic bytes.
pub const MAGIC: [u8; 4] = *b"RSPS";
/// The session layer's version.
pub const VERSION: u16 = 1;
/// DATA flag: this message was sent before, to a PE that failed (retrieval).
pub const FLAG_RESEND: u8 = 0x01;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First frame each way: magic and version.
    Hello = 1,
    /// User data.
    Data = 2,
    /// Application-level acknowledgement of one DATA frame (by sequence number).
    Ack = 3,
    /// Heartbeat request (sequence number = nonce).
    Heartbeat = 4,
    /// Heartbeat answer (echoes the nonce).
    HeartbeatAck = 5,
    /// One ASAP message (Cookie, Cookie Echo, Business Card, Error) as WIRE.md section 6
    /// encodes it.
    Asap = 6,
    /// The sender found bad input and closes the connection; payload: the reason in UTF-8.
    Error = 7,
}

/// One decoded frame, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Magic and version checked.
    Hello,
    /// User data.
    Data {
        /// Stream (ordering is per connection; the stream is the application's label).
        stream: u16,
        /// Sequence number, per session, from 1.
        seq: u64,
        /// Sent before to a PE that failed.
        resend: bool,
        /// The message.
        payload: &'a [u8],
    },
    /// The peer's application processed message `seq`.
    Ack {
        /// Acknowledged sequence number.
        seq: u64,
    },
    /// Heartbeat request.
    Heartbeat {
        /// Nonce to echo.
        nonce: u64,
    },
    /// Heartbeat answer.
    HeartbeatAck {
        /// The echoed nonce.
        nonce: u64,
    },
    /// One validated ASAP message of the kinds a session carries.
    Asap(&'a [u8]),
    /// The peer reports bad input and closes.
    Error(&'a str),
}

/// Bad input on a session (the connection is closed after an ERROR frame saying this).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// Payload longer than the configured maximum.
    #[error("frame payload of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The length field.
        length: u64,
        /// The maximum.
        max: usize,
    },
    /// A frame that has no payload carries one, or a HELLO is malformed.
    #[error("{kind:?} frame with a payload of {length} bytes")]
    BadLength {
        /// The kind.
        kind: Kind,
        /// The length field.
        length: u32,
    },
    /// HELLO with a wrong magic or an unsupported version.
    #[error("not an rserpool session (bad magic or version {0})")]
    BadHello(u16),
    /// The first frame is not HELLO, or a HELLO comes again.
    #[error("expected HELLO first and only once, got {0:?}")]
    Sequence(Kind),
    /// An ASAP frame that is malformed or of a kind sessions do not carry.
    #[error("ASAP frame: {0}")]
    Asap(String),
    /// An ERROR frame whose text is not UTF-8.
    #[error("ERROR frame with a reason that is not UTF-8")]
    BadText,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Data,
            3 => Self::Ack,
            4 => Self::Heartbeat,
            5 => Self::HeartbeatAck,
            6 => Self::Asap,
            7 => Self::Error,
            _ => return None,
        })
    }
}

/// Decodes the frame at the front of `buf`: `Ok(None)` when it is not complete yet, else the
/// frame and its length. The header is checked before the payload is waited for, so a peer
/// cannot make the receiver buffer more than `max_payload` bytes.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let kind = Kind::from_u8(h[0]).ok_or(FrameError::UnknownKind(h[0]))?;
    let flags = h[1];
    let stream = u16::from_be_bytes([h[2], h[3]]);
    let length = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let seq = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    if u64::from(length) > max_payload as u64 {
        return Err(FrameError::TooLarge { length: u64::from(length), max: max_payload });
    }
    let fixed = match kind {
        Kind::Hello => Some(8),
        Kind::Ack | Kind::Heartbeat | Kind::HeartbeatAck => Some(0),
        _ => None,
    };
    if fixed.is_some_and(|n| n != length) {
        return Err(FrameError::BadLength { kind, length });
    }
    let end = HEADER_LEN + length as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else { return Ok(None) };
    let frame = match kind {
        Kind::Hello => {
            let version = u16::from_be_bytes([payload[4], payload[5]]);
            if payload[..4] != MAGIC || version != VERSION {
                return Err(FrameError::BadHello(version));
            }
            Frame::Hello
        }
        Kind::Data => Frame::Data { stream, seq, resend: flags & FLAG_RESEND != 0, payload },
        Kind::Ack => Frame::Ack { seq },
        Kind::Heartbeat => Frame::Heartbeat { nonce: seq },
        Kind::HeartbeatAck => Frame::HeartbeatAck { nonce: seq },
        Kind::Asap => {
            let m = asap::parse(payload).map_err(|e| FrameError::Asap(e.to_string()))?;
            match MessageType::from_u8(m.message_type()) {
                Some(
                    MessageType::Cookie | MessageType::CookieEcho | MessageType::BusinessCard | MessageType::Error,
                ) => Frame::Asap(payload),
                _ => {
                    let name = crate::wire::message_name(crate::wire::Protocol::Asap, m.message_type());
                    return Err(FrameError::Asap(format!("{} does not belong on a session", name.unwrap_or("?"))));
                }
            }
        }
        Kind::Error => Frame::Error(core::str::from_utf8(payload).map_err(|_| FrameError::BadText)?),
    };
    Ok(Some((frame, end)))
}

/// Appends one frame.
pub fn encode(out: &mut Vec<u8>, kind: Kind, flags: u8, stream: u16, seq: u64, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind as u8);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&(payload.len().min(u32::MAX as usize) as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a HELLO frame.
pub fn hello(out: &mut Vec<u8>) {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&MAGIC);
    p[4..6].copy_from_slice(&VERSION.to_be_bytes());
    encode(out, Kind::Hello, 0, 0, 0, &p);
}

/// Appends an ERROR frame with `reason`.
pub fn error(out: &mut Vec<u8>, reason: &dyn fmt::Display) {
    encode(out, Kind::Error, 0, 0, 0, reason.to_string().as_bytes());
}

/// Appends an ASAP frame carrying the message `build` writes (Cookie, Cookie Echo, Business
/// Card); nothing when the message does not fit.
pub fn asap_message(out: &mut Vec<u8>, build: impl FnOnce(&mut crate::wire::Writer<'_>)) {
    let mut m = Vec::new();
    build(&mut crate::wire::Writer::new(&mut m));
    if !m.is_empty() {
        encode(out, Kind::Asap, 0, 0, 0, &m);
    }
}

/// Writes a Cookie (`echo` false) or Cookie Echo message.
pub fn cookie(w: &mut crate::wire::Writer<'_>, echo: bool, cookie: &[u8]) {
    let t = if echo { MessageType::CookieEcho } else { MessageType::Cookie };
    let _ = w.message(t as u8, 0, |w| w.tlv_bytes(crate::wire::ParamType::COOKIE, cookie));
}

/// Writes a Business Card: the pool, its policy and the PEs to fail over to, in order.
pub fn business_card(
    w: &mut crate::wire::Writer<'_>,
    pool_handle: &[u8],
    policy: &crate::wire::PolicyRepr,
    pes: &[crate::wire::PoolElementRepr],
) {
    let _ = w.message(MessageType::BusinessCard as u8, 0, |w| {
        w.tlv_bytes(crate::wire::ParamType::POOL_HANDLE, pool_handle);
        crate::wire::policy::emit_repr(w, policy);
        for pe in pes {
            pe.emit(w);
        }
    });
}
