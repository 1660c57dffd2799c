//! Answers to bad ENRP input (WIRE.md section 9): an ENRP Error with the prescribed cause,
//! quoting what may be quoted; nothing for a silently discarded message; a close when the
//! stream cannot be framed.

use crate::wire::enrp;
use crate::wire::{CauseInfo, Disposition, Error, Writer};

/// Whether the connection must close (the stream cannot be framed any more).
pub(crate) fn wants_close(e: &Error) -> bool {
    matches!(e.disposition(), Disposition::Close)
}

/// Writes the ENRP Error answering `message`, which failed with `e` (nothing for a message to
/// discard silently). The quote is cut so that the answer fits `max` bytes.
pub(crate) fn to_error(buf: &mut Vec<u8>, message: &[u8], e: &Error, me: u32, max: usize) {
    let (cause, info) = match e.disposition() {
        Disposition::Close | Disposition::Discard => return,
        Disposition::Report { cause, info } | Disposition::Reject { cause, info } => (cause, info),
    };
    let empty;
    let quote: &[u8] = match &info {
        CauseInfo::None => &[],
        CauseInfo::Quote(r) => message.get(r.clone()).unwrap_or(&[]),
        CauseInfo::EmptyParam(t) => {
            empty = [(t.0 >> 8) as u8, t.0 as u8, 0, 4];
            &empty
        }
    };
    let quote = &quote[..quote.len().min(max.saturating_sub(64))];
    // The sender's id, when the message got that far (else 0: not addressed to one registrar).
    let receiver = message.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let _ = enrp::emit_error(&mut Writer::with_limit(buf, max), me, receiver, cause, quote);
}
