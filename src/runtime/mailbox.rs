//! Cross-shard routing: one SPSC queue per ordered pair of shards, carrying
//! `(kind, ConnId, bytes)` records for [`crate::service::Outbox::post`], and for sends and closes
//! aimed at a connection owned by another shard.
//!
//! Queue-full policy: a shard never blocks on a full queue. A record that does not fit goes to a
//! local FIFO overflow list for that target (later records follow it there, so order is kept),
//! and the list is retried every loop iteration; while it is non-empty the shard wakes at least
//! every millisecond to retry. The list is bounded by `max_spill_bytes` per target: beyond that
//! (the target is wedged or hopelessly overloaded) new records are dropped and counted, a
//! whole send at a time so a connection's byte stream never gets a hole in the middle of a
//! message. A send larger than one queue record is split into consecutive records (they land in
//! the same send queue in order); a post or close must fit one record.

use std::collections::VecDeque;
use std::sync::Arc;

use super::signals::Signals;
use super::spsc::{self, Consumer, Producer, PushError};
use super::stats::{Counter, StatsCell};
use crate::service::{ConnId, ShardId};

/// Record kind: hand the bytes to the target's `Service::on_post`.
pub(crate) const POST: u8 = 1;
/// Record kind: append the bytes to the send queue of the target's connection.
pub(crate) const SEND: u8 = 2;
/// Record kind: close the target's connection after its queued bytes are written.
pub(crate) const CLOSE: u8 = 3;

struct Spilled {
    kind: u8,
    tag: u64,
    bytes: Vec<u8>,
}

/// The producing end towards one other shard.
struct Link {
    producer: Producer,
    spill: VecDeque<Spilled>,
    spill_bytes: usize,
    /// Something was pushed since the last wake-up decision.
    pushed: bool,
}

/// A shard's outgoing queues, one per other shard.
pub(crate) struct Outgoing {
    me: ShardId,
    links: Vec<Option<Link>>,
    pushed: Vec<ShardId>,
    spilling: usize,
    max_spill: usize,
    stats: Arc<StatsCell>,
    drops: u64,
}

/// A shard's incoming queues, one per other shard.
pub(crate) struct Incoming {
    links: Vec<Option<Consumer>>,
}

/// Builds the queues between `n` shards: element `i` holds shard `i`'s two ends.
pub(crate) fn mesh(n: usize, capacity: usize, max_spill: usize, stats: &[Arc<StatsCell>]) -> Vec<(Outgoing, Incoming)> {
    let mut producers: Vec<Vec<Option<Producer>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut consumers: Vec<Vec<Option<Consumer>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = spsc::channel(capacity);
                producers[from][to] = Some(p);
                consumers[to][from] = Some(c);
            }
        }
    }
    producers
        .into_iter()
        .zip(consumers)
        .zip(stats)
        .enumerate()
        .map(|(me, ((ps, cs), st))| {
            let links = ps
                .into_iter()
                .map(|p| p.map(|producer| Link { producer, spill: VecDeque::new(), spill_bytes: 0, pushed: false }))
                .collect();
            (
                Outgoing {
                    me: me as ShardId,
                    links,
                    pushed: Vec::new(),
                    spilling: 0,
                    max_spill,
                    stats: Arc::clone(st),
                    drops: 0,
                },
                Incoming { links: cs },
            )
        })
        .collect()
}

impl Outgoing {
    /// Queues a record for shard `to`. Never blocks; see the module comment for what happens
    /// when the queue is full.
    pub(crate) fn push(&mut self, to: ShardId, kind: u8, conn: ConnId, bytes: &[u8]) {
        let Some(link) = self.links.get_mut(to as usize).and_then(Option::as_mut) else {
            self.drop_record(to, kind, "no such shard");
            return;
        };
        let tag = conn.to_u64();
        let max = link.producer.max_payload();
        if bytes.len() > max && kind != SEND {
            self.drop_record(to, kind, "larger than a cross-shard queue record");
            return;
        }
        // Fast path: nothing spilled, and the whole thing fits now.
        if link.spill.is_empty() && bytes.len() <= max {
            match link.producer.try_push(kind, tag, bytes) {
                Ok(()) => {
                    mark(link, &mut self.pushed, to);
                    return;
                }
                Err(PushError::Full) => {}
                Err(PushError::TooLarge) => {
                    self.drop_record(to, kind, "larger than a cross-shard queue record");
                    return;
                }
            }
        }
        if link.spill_bytes + bytes.len() > self.max_spill {
            self.drop_record(to, kind, "overflow list full");
            return;
        }
        let was_empty = link.spill.is_empty();
        for chunk in chunks(bytes, max) {
            if link.spill.is_empty() && link.producer.try_push(kind, tag, chunk).is_ok() {
                mark(link, &mut self.pushed, to);
                continue;
            }
            link.spill_bytes += chunk.len();
            link.spill.push_back(Spilled { kind, tag, bytes: chunk.to_vec() });
            self.stats.bump(Counter::Spilled);
        }
        if was_empty && !link.spill.is_empty() {
            self.spilling += 1;
        }
    }

    /// Moves spilled records into their queues while they fit. Returns whether some remain.
    pub(crate) fn retry_spill(&mut self) -> bool {
        if self.spilling == 0 {
            return false;
        }
        for (to, link) in self.links.iter_mut().enumerate() {
            let Some(link) = link else { continue };
            if link.spill.is_empty() {
                continue;
            }
            while let Some(front) = link.spill.front() {
                if link.producer.try_push(front.kind, front.tag, &front.bytes).is_err() {
                    break;
                }
                link.spill_bytes -= front.bytes.len();
                link.spill.pop_front();
                mark(link, &mut self.pushed, to as ShardId);
            }
            if link.spill.is_empty() {
                self.spilling -= 1;
            }
        }
        self.spilling > 0
    }

    /// Decides which targets need a wake-up for what was pushed since the last call, appending
    /// them to `out`. Called once per loop iteration, so many pushes cost one wake-up.
    pub(crate) fn take_wakes(&mut self, signals: &Signals, out: &mut Vec<ShardId>) {
        for to in self.pushed.drain(..) {
            if let Some(Some(link)) = self.links.get_mut(to as usize) {
                link.pushed = false;
            }
            if signals.mark_notified(to) {
                out.push(to);
            }
        }
    }

    fn drop_record(&mut self, to: ShardId, kind: u8, why: &'static str) {
        self.stats.bump(Counter::CrossShardDrops);
        // Rate-limited: the first drop and then every 1024th, so an overload cannot flood logs.
        if self.drops % 1024 == 0 {
            tracing::warn!(from = self.me, to, kind, why, dropped = self.drops + 1, "cross-shard record dropped");
        }
        self.drops += 1;
    }
}

fn mark(link: &mut Link, pushed: &mut Vec<ShardId>, to: ShardId) {
    if !link.pushed {
        link.pushed = true;
        pushed.push(to);
    }
}

/// Splits `bytes` into pieces of at most `max` bytes (one empty piece for empty input).
fn chunks(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let n = bytes.len().div_ceil(max.max(1)).max(1);
    (0..n).map(move |i| &bytes[(i * max).min(bytes.len())..((i + 1) * max).min(bytes.len())])
}

impl Incoming {
    /// The queue from shard `from`, if there is one.
    pub(crate) fn queue_from(&mut self, from: usize) -> Option<&mut Consumer> {
        self.links.get_mut(from).and_then(Option::as_mut)
    }

    /// Number of shards (including this one, which has no queue to itself).
    pub(crate) fn shards(&self) -> usize {
        self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> ConnId {
        ConnId { shard: 1, generation: 0, slot }
    }

    #[test]
    fn spill_keeps_order_and_is_bounded() {
        let stats: Vec<Arc<StatsCell>> = (0..2).map(|_| Arc::default()).collect();
        let mut ends = mesh(2, 256, 1000, &stats);
        let (mut in1, mut out0) = {
            let (_, in1) = ends.pop().unwrap();
            let (out0, _) = ends.pop().unwrap();
            (in1, out0)
        };
        // 256-byte ring: max payload 112. Push 20 records of 100 bytes; most spill.
        for i in 0..20u32 {
            out0.push(1, POST, id(i), &[i as u8; 100]);
        }
        let s = stats[0].snapshot();
        assert!(s.spilled > 0);
        assert!(s.cross_shard_drops > 0, "spill bounded at 1000 bytes");
        let signals = Signals::new(2);
        let mut wakes = Vec::new();
        out0.take_wakes(&signals, &mut wakes);
        assert_eq!(wakes, vec![1]);
        out0.take_wakes(&signals, &mut wakes);
        assert_eq!(wakes, vec![1], "no second wake before the target drains");

        let mut seen = Vec::new();
        loop {
            let c = in1.queue_from(0).unwrap();
            while let Some(r) = c.peek() {
                assert_eq!(r.kind, POST);
                seen.push(ConnId::from_u64(r.tag).slot);
                c.pop();
            }
            if !out0.retry_spill() {
                let c = in1.queue_from(0).unwrap();
                while let Some(r) = c.peek() {
                    seen.push(ConnId::from_u64(r.tag).slot);
                    c.pop();
                }
                break;
            }
        }
        let kept = 20 - stats[0].snapshot().cross_shard_drops as usize;
        assert_eq!(seen.len(), kept);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "FIFO order kept: {seen:?}");
    }

    #[test]
    fn large_sends_are_split_in_order() {
        let stats: Vec<Arc<StatsCell>> = (0..2).map(|_| Arc::default()).collect();
        let mut ends = mesh(2, 1024, 1 << 20, &stats);
        let (_, mut in1) = ends.pop().unwrap();
        let (mut out0, _) = ends.pop().unwrap();
        let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        out0.push(1, SEND, id(7), &msg);
        let mut got = Vec::new();
        loop {
            let c = in1.queue_from(0).unwrap();
            while let Some(r) = c.peek() {
                assert_eq!(r.kind, SEND);
                got.extend_from_slice(r.bytes);
                c.pop();
            }
            if !out0.retry_spill() {
                let c = in1.queue_from(0).unwrap();
                while let Some(r) = c.peek() {
                    got.extend_from_slice(r.bytes);
                    c.pop();
                }
                break;
            }
        }
        assert_eq!(got, msg);
        // A post that can never fit is dropped, not split.
        out0.push(1, POST, id(8), &msg);
        assert_eq!(stats[0].snapshot().cross_shard_drops, 1);
    }
}
