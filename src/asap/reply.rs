//! Answers to bad ASAP input (WIRE.md section 9): the message's own response with an
//! Operation Error where it has one, otherwise an ASAP Error.

use crate::wire::asap::{self, MessageType};
use crate::wire::cause::{self, CauseCode};
use crate::wire::{CauseInfo, Disposition, Error, ParamType, Writer};

/// The cause info bytes for `info`, taken from `message` (the offending message), capped so the
/// answer stays within `max` bytes.
fn info_bytes<'a>(info: &CauseInfo, message: &'a [u8], empty: &'a mut [u8; 4], max: usize) -> &'a [u8] {
    match info {
        CauseInfo::None => &[],
        CauseInfo::Quote(r) => {
            let q = message.get(r.clone()).unwrap_or(&[]);
            &q[..q.len().min(max)]
        }
        CauseInfo::EmptyParam(t) => {
            *empty = [(t.0 >> 8) as u8, t.0 as u8, 0, 4];
            &empty[..]
        }
    }
}

/// Writes the answer to a message that failed to parse with `err`, if the protocol prescribes
/// one; returns whether anything was written. `max_message_size` bounds the answer.
pub(crate) fn to_error(buf: &mut Vec<u8>, message: &[u8], err: &Error, max_message_size: usize) -> bool {
    let (cause, info, own_response) = match err.disposition() {
        Disposition::Close | Disposition::Discard => return false,
        Disposition::Report { cause, info } => (cause, info, false),
        Disposition::Reject { cause, info } => (cause, info, true),
    };
    // Room for the answer's own header, handle, PE id and cause headers.
    let room = max_message_size.saturating_sub(64 + 256);
    let mut empty = [0u8; 4];
    let info = info_bytes(&info, message, &mut empty, room);
    let mut w = Writer::with_limit(buf, max_message_size);
    let own = if own_response { err.message_type.and_then(MessageType::from_u8) } else { None };
    let written = match own {
        Some(t @ (MessageType::Registration | MessageType::Deregistration)) => {
            let (handle, pe_id) = asap::salvage_ids(message);
            let (response, flags) = match t {
                MessageType::Registration => (MessageType::RegistrationResponse, asap::FLAG_REJECT),
                _ => (MessageType::DeregistrationResponse, 0),
            };
            // Echo what was readable; an unreadable handle or id is sent empty / 0 so that the
            // response still carries every mandatory parameter.
            let handle = handle.map(|h| &h[..h.len().min(256)]).unwrap_or(&[]);
            asap::emit_handle_and_id(&mut w, response, flags, handle, Some(pe_id.unwrap_or(0)), Some((cause, info)))
        }
        _ => asap::emit_error(&mut w, cause, info),
    };
    written.is_ok()
}

/// Writes an ASAP Error reporting each skip-and-report unknown parameter of a message that was
/// processed (cause 0x1, one per parameter).
pub(crate) fn unrecognized_params<'a>(
    buf: &mut Vec<u8>,
    params: impl IntoIterator<Item = crate::wire::Param<'a>>,
    max: usize,
) {
    let mut w = Writer::with_limit(buf, max);
    let _ = w.message(MessageType::Error as u8, 0, |w| {
        w.tlv(ParamType::OPERATION_ERROR, |w| {
            for p in params {
                cause::emit_cause(w, CauseCode::UNRECOGNIZED_PARAMETER, p.as_bytes());
            }
        })
    });
}
