//! Framing on a byte stream (TCP): messages follow each other back to back, each delimited by
//! the length in its header (WIRE.md section 1).

use super::error::{Error, ErrorKind, Protocol};
use super::field::u16_at;
use super::message::HEADER_LEN;

/// The result of looking at the front of a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete message (exactly its bytes), borrowed from the buffer.
    Complete(&'a [u8]),
    /// The next message is not complete: `need` more bytes must arrive (at least 1; when the
    /// header itself is incomplete, the bytes still missing from the header).
    Incomplete {
        /// Bytes still missing.
        need: usize,
    },
}

/// Cuts whole messages out of the bytes received so far, refusing a length above the
/// configured maximum message size before any of the message is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framer {
    protocol: Protocol,
    max_message_size: usize,
}

impl Framer {
    /// A framer for `protocol` accepting messages of at most `max_message_size` bytes (capped
    /// at 65535, the largest the length field can express; at least 4).
    pub fn new(protocol: Protocol, max_message_size: usize) -> Self {
        Self { protocol, max_message_size: max_message_size.clamp(HEADER_LEN, u16::MAX as usize) }
    }

    /// The maximum message size in force.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Looks at the front of `buf`. A length below 4 or above the maximum is an error whose
    /// disposition is [`super::Disposition::Close`]: the stream cannot be framed any more.
    #[inline]
    pub fn frame<'a>(&self, buf: &'a [u8]) -> Result<Frame<'a>, Error> {
        if buf.len() < HEADER_LEN {
            return Ok(Frame::Incomplete { need: HEADER_LEN - buf.len() });
        }
        let length = u16_at(buf, 2);
        let len = usize::from(length);
        if len < HEADER_LEN {
            return Err(Error::new(self.protocol, Some(buf[0]), 2, ErrorKind::LengthTooSmall { length }));
        }
        if len > self.max_message_size {
            return Err(Error::new(
                self.protocol,
                Some(buf[0]),
                2,
                ErrorKind::LengthTooLarge { length, max: self.max_message_size as u16 },
            ));
        }
        if buf.len() < len {
            return Ok(Frame::Incomplete { need: len - buf.len() });
        }
        Ok(Frame::Complete(&buf[..len]))
    }

    /// Iterates the complete messages at the front of `buf`; see [`Frames::consumed`].
    pub fn frames<'a>(&self, buf: &'a [u8]) -> Frames<'a> {
        Frames { framer: *self, buf, pos: 0, failed: false }
    }
}

/// Iterator over the complete messages of a buffer: yields `Ok(message)` for each, then stops
/// at an incomplete one, or yields one `Err` for an unframeable length and stops.
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    framer: Framer,
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Bytes taken by the messages yielded so far (what the caller may discard).
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.framer.frame(&self.buf[self.pos..]) {
            Ok(Frame::Complete(m)) => {
                self.pos += m.len();
                Some(Ok(m))
            }
            Ok(Frame::Incomplete { .. }) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
