//! Answers in request order. A connection's requests may be answered by different shards (each
//! pool lives on one); each request gets a sequence number, and an answer that is ready before
//! the answers to earlier requests waits until they are sent. While no request of a connection
//! is out at another shard, answers go straight out and nothing is numbered or held.

use std::collections::BTreeMap;

/// The request/answer sequence of one connection.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    next_request: u64,
    next_answer: u64,
    held: BTreeMap<u64, Vec<u8>>,
    held_bytes: usize,
}

impl Sequencer {
    /// Bytes of answers waiting for earlier ones (the caller bounds it).
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether every numbered request has been answered (answers may go straight out).
    pub(crate) fn idle(&self) -> bool {
        self.next_request == self.next_answer
    }

    /// Numbered requests not answered yet.
    pub(crate) fn outstanding(&self) -> u64 {
        self.next_request - self.next_answer
    }

    /// Numbers the next request.
    pub(crate) fn number(&mut self) -> u64 {
        let seq = self.next_request;
        self.next_request += 1;
        seq
    }

    /// The answer to request `seq` is `bytes` (possibly empty): `send` gets every answer that
    /// is now next in order.
    pub(crate) fn answered(&mut self, seq: u64, bytes: &[u8], mut send: impl FnMut(&[u8])) {
        if seq != self.next_answer {
            if seq > self.next_answer && seq < self.next_request {
                self.held_bytes += bytes.len();
                self.held.insert(seq, bytes.to_vec());
            }
            return;
        }
        if !bytes.is_empty() {
            send(bytes);
        }
        self.next_answer += 1;
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next_answer {
                break;
            }
            let held = entry.remove();
            self.held_bytes -= held.len();
            if !held.is_empty() {
                send(&held);
            }
            self.next_answer += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_leave_in_request_order() {
        let mut s = Sequencer::default();
        assert!(s.idle());
        let (a, b, c, d) = (s.number(), s.number(), s.number(), s.number());
        let mut sent: Vec<Vec<u8>> = Vec::new();
        s.answered(c, b"C", |x| sent.push(x.to_vec()));
        s.answered(b, b"", |x| sent.push(x.to_vec()));
        assert!(sent.is_empty(), "a is still out");
        assert_eq!(s.held_bytes(), 1, "C waits");
        s.answered(a, b"A", |x| sent.push(x.to_vec()));
        assert_eq!(sent, [b"A".to_vec(), b"C".to_vec()], "b had no answer");
        assert!(!s.idle());
        s.answered(d, b"D", |x| sent.push(x.to_vec()));
        assert!(s.idle());
        assert_eq!(sent.len(), 3);
        // A duplicate or unknown sequence number is ignored.
        s.answered(a, b"again", |x| sent.push(x.to_vec()));
        s.answered(99, b"never asked", |x| sent.push(x.to_vec()));
        assert_eq!(sent.len(), 3);
        assert!(s.held.is_empty());
        assert_eq!(s.held_bytes(), 0);
    }
}
