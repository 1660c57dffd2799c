//! Emitting: appends messages to a caller's buffer, computing lengths and padding in place.

use super::param::ParamType;

/// Why a message could not be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The message or one of its parameters would exceed the 16-bit length field (or the
    /// limit given to [`Writer::with_limit`]).
    #[error("message of {length} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Bytes the message would have had (at least).
        length: usize,
        /// The limit.
        limit: usize,
    },
}

/// Where the fixed-size pieces of a parameter go: a [`Writer`], or a buffer of fixed size
/// (the handlespace encodes a PE's parameters straight into its slot).
pub trait Put {
    /// Appends a fixed-size array.
    fn array<const N: usize>(&mut self, v: &[u8; N]);
    /// Bytes written so far.
    fn position(&self) -> usize;
}

impl Put for Writer<'_> {
    #[inline(always)]
    fn array<const N: usize>(&mut self, v: &[u8; N]) {
        Writer::array(self, v);
    }
    #[inline(always)]
    fn position(&self) -> usize {
        Writer::position(self)
    }
}

/// Appends to a `Vec<u8>` with no intermediate allocation: a TLV's header is written first and
/// its length patched when the value is done. Lengths that overflow are recorded and reported by
/// [`Writer::message`], which then removes the partial message from the buffer.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
    overflow: Option<usize>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`; messages may be up to 65535 bytes.
    #[inline]
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf, limit: u16::MAX as usize, overflow: None }
    }

    /// A writer whose messages may be at most `limit` bytes (capped at 65535).
    #[inline]
    pub fn with_limit(buf: &'a mut Vec<u8>, limit: usize) -> Self {
        Self { buf, limit: limit.min(u16::MAX as usize), overflow: None }
    }

    /// Bytes in the underlying buffer.
    #[inline]
    pub fn position(&self) -> usize {
        self.buf.len()
    }

    /// Makes room for `additional` more bytes (one capacity check instead of many).
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Records that a parameter written without [`Writer::tlv`] exceeded the 16-bit length, so
    /// that [`Writer::message`] refuses the message.
    #[inline]
    pub(crate) fn overflowed(&mut self, len: usize) {
        self.overflow = Some(self.overflow.unwrap_or(0).max(len));
    }

    /// Appends one byte.
    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends a big-endian u16.
    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a fixed-size array (the length is known when compiling, so no call to memcpy).
    #[inline(always)]
    pub fn array<const N: usize>(&mut self, v: &[u8; N]) {
        self.buf.extend_from_slice(v);
    }

    /// Appends raw bytes.
    #[inline]
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Appends zero bytes up to the next multiple of 4 (relative to the buffer start, which is
    /// where every message starts when the buffer holds whole messages).
    #[inline]
    fn pad(&mut self, from: usize) {
        let len = self.buf.len() - from;
        let pad = (4 - (len & 3)) & 3;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
    }

    /// Appends a TLV of type `ty` whose value `value` writes; patches its length (value plus
    /// the 4-byte header, padding excluded) and pads it.
    #[inline]
    pub fn tlv(&mut self, ty: ParamType, value: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[(ty.0 >> 8) as u8, ty.0 as u8, 0, 0]);
        value(self);
        let len = self.buf.len() - start;
        if len > u16::MAX as usize {
            self.overflow = Some(self.overflow.unwrap_or(0).max(len));
        }
        self.buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
        self.pad(start);
    }

    /// Appends a TLV whose value is `value`.
    #[inline]
    pub fn tlv_bytes(&mut self, ty: ParamType, value: &[u8]) {
        self.tlv(ty, |w| w.bytes(value));
    }

    /// Appends already-encoded TLV bytes (header included, padding excluded) and pads them.
    #[inline]
    pub fn raw_tlv(&mut self, tlv: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(tlv);
        self.pad(start);
    }

    /// Appends one whole message: the common header (type, flags, length) and the body that
    /// `body` writes. Returns the message's length, or an error (and appends nothing) when the
    /// message would exceed the limit.
    #[inline]
    pub fn message(&mut self, message_type: u8, flags: u8, body: impl FnOnce(&mut Self)) -> Result<usize, EmitError> {
        let start = self.buf.len();
        self.overflow = None;
        self.buf.extend_from_slice(&[message_type, flags, 0, 0]);
        body(self);
        let len = self.buf.len() - start;
        if len > self.limit || self.overflow.is_some() {
            self.buf.truncate(start);
            return Err(EmitError::TooLong { length: len.max(self.overflow.unwrap_or(0)), limit: self.limit });
        }
        self.buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(len)
    }
}
