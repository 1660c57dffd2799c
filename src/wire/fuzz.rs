//! The bodies of the fuzz targets (`fuzz/`), kept in the library so that the regression corpus
//! runs as ordinary tests (`tests/fuzz_regressions.rs`) without the fuzzer. They panic on any
//! inconsistency, so they are not part of the library's normal API: only with the `fuzzing`
//! feature, which `fuzz/` asks for and `cargo test` turns on (a dev-dependency of the crate on
//! itself).

use super::framer::Frame;
use super::{asap, enrp, Framer, MessageRepr, Protocol};

/// Parses `data[1..]` as ASAP (first byte even) or ENRP (odd) in every way there is, and
/// checks that a message that parses round-trips. Panics on any inconsistency.
pub fn parse_one(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let protocol = if selector & 1 == 0 { Protocol::Asap } else { Protocol::Enrp };
    match protocol {
        Protocol::Asap => walk_asap(bytes),
        Protocol::Enrp => walk_enrp(bytes),
    }
    match MessageRepr::parse(bytes, protocol) {
        Ok(repr) => {
            let emitted = repr.to_bytes().expect("a parsed message re-emits");
            let again = MessageRepr::parse(&emitted, protocol).expect("re-emitted bytes parse");
            assert_eq!(again, repr, "parse(emit(parse(x))) == parse(x)");
            assert_eq!(again.to_bytes().expect("emit"), emitted, "emit is stable");
        }
        Err(e) => {
            // Every error describes itself and prescribes an answer whose quote lies inside
            // the message.
            let _ = e.to_string();
            if let Some(r) = e.quote_range() {
                assert!(r.start <= r.end && r.end <= bytes.len(), "quote inside the message");
            }
            let _ = e.disposition();
        }
    }
    let _ = asap::salvage_ids(bytes);
}

fn walk_asap(bytes: &[u8]) {
    let Ok(m) = asap::parse(bytes) else { return };
    m.for_each_report(|p| assert!(p.range().end <= bytes.len()));
    match m.body() {
        asap::Body::Registration { pool_element, .. } => drop(pool_element.to_repr()),
        asap::Body::HandleResolutionResponse { resolution: asap::Resolution::Found { pool_elements, .. }, .. }
        | asap::Body::BusinessCard { pool_elements, .. } => {
            let n = pool_elements.len();
            assert_eq!(pool_elements.clone().count(), n, "every counted Pool Element is yielded");
            for pe in pool_elements.clone() {
                let _ = pe.to_repr();
            }
        }
        asap::Body::ServerAnnounce { transports, .. } => {
            for t in transports.clone() {
                let _ = t.to_repr();
            }
        }
        _ => {}
    }
}

fn walk_enrp(bytes: &[u8]) {
    let Ok(m) = enrp::parse(bytes) else { return };
    match &m.body().kind {
        enrp::Kind::HandleTableResponse { entries, .. } => {
            for (_, pes) in entries.clone() {
                for pe in pes {
                    let _ = pe.to_repr();
                }
            }
        }
        enrp::Kind::ListResponse { servers, .. } => {
            for s in servers.clone() {
                let _ = s.to_repr();
            }
        }
        enrp::Kind::Presence { server_information, .. } => drop(server_information.to_repr()),
        enrp::Kind::HandleUpdate { pool_element, .. } => drop(pool_element.to_repr()),
        _ => {}
    }
}

/// Frames `data[2..]` in one read and in reads cut every `data[0] % 64 + 1` bytes (maximum
/// message size `data[1] * 64 + 4`), and checks both give the same messages and outcome.
pub fn frame_stream(data: &[u8]) {
    let [step, max, stream @ ..] = data else { return };
    let step = usize::from(*step % 64) + 1;
    let framer = Framer::new(Protocol::Asap, usize::from(*max) * 64 + 4);
    let whole = collect(&framer, &[stream]);
    let chunks: Vec<&[u8]> = stream.chunks(step).collect();
    assert_eq!(collect(&framer, &chunks), whole, "framing does not depend on read boundaries");
}

/// Feeds `reads` to the framer as a receiver would; returns the messages and whether the stream
/// ended in a framing error.
fn collect(framer: &Framer, reads: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let (mut pending, mut out) = (Vec::new(), Vec::new());
    for read in reads {
        pending.extend_from_slice(read);
        loop {
            match framer.frame(&pending) {
                Ok(Frame::Complete(m)) => {
                    assert!(m.len() >= 4 && m.len() <= framer.max_message_size());
                    out.push(m.to_vec());
                    let n = m.len();
                    pending.drain(..n);
                }
                Ok(Frame::Incomplete { need }) => {
                    assert!(need >= 1);
                    break;
                }
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}
