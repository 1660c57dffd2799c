//! Cross-shard queues: one bounded, wait-free single-producer/single-consumer queue (`rtrb`)
//! per ordered pair of shards, carrying [`Envelope`]s: the service's typed messages, and the
//! engine's own sends to and closes of connections owned by the target shard.
//!
//! Nothing is ever dropped. A record that finds its queue full goes to a FIFO overflow list for
//! that target (later records follow it there, so order per pair is kept), retried every loop
//! iteration. The overflow is kept bounded by its causes, not by a limit that would have to
//! drop: the shard core stops reading a connection whose input overflowed a queue and holds
//! back timer work while anything overflows (see `shard.rs`), and everything else a shard posts
//! answers something posted to it, which its peers' own bounds limit. Consumers never wait on
//! anything, so the overflows always drain.

use std::collections::VecDeque;
use std::sync::Arc;

use rtrb::{Consumer, Producer, PushError, RingBuffer};

use super::signals::Signals;
use super::stats::{Counter, StatsCell};
use crate::service::{ConnId, Payload, ShardId};

/// What travels between two shards. Variants differ in size, but queue slots are fixed-size
/// anyway; boxing the large ones would cost an allocation per record.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Envelope<M> {
    /// A service message for the target's `Service::on_message`.
    Msg(M),
    /// Bytes to append to the send queue of the target's connection.
    Send(ConnId, Payload),
    /// Close the target's connection after its queued bytes are written.
    Close(ConnId),
}

/// The producing end towards one other shard.
struct Link<M> {
    producer: Producer<Envelope<M>>,
    overflow: VecDeque<Envelope<M>>,
    /// Something was pushed since the last wake-up decision.
    pushed: bool,
}

/// A shard's outgoing queues, one per other shard.
pub(crate) struct Outgoing<M> {
    links: Vec<Option<Link<M>>>,
    pushed: Vec<ShardId>,
    /// Number of links with a non-empty overflow.
    spilling: usize,
    /// Records in all overflow lists.
    overflow_len: usize,
    stats: Arc<StatsCell>,
}

/// A shard's incoming queues, one per other shard.
pub(crate) struct Incoming<M> {
    links: Vec<Option<Consumer<Envelope<M>>>>,
}

/// Builds the queues between `n` shards, each holding `capacity` records: element `i` holds
/// shard `i`'s two ends.
pub(crate) fn mesh<M>(n: usize, capacity: usize, stats: &[Arc<StatsCell>]) -> Vec<(Outgoing<M>, Incoming<M>)> {
    let mut producers: Vec<Vec<Option<Producer<Envelope<M>>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut consumers: Vec<Vec<Option<Consumer<Envelope<M>>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = RingBuffer::new(capacity.max(1));
                producers[from][to] = Some(p);
                consumers[to][from] = Some(c);
            }
        }
    }
    producers
        .into_iter()
        .zip(consumers)
        .zip(stats)
        .map(|((ps, cs), st)| {
            let links =
                ps.into_iter().map(|p| p.map(|producer| Link { producer, overflow: VecDeque::new(), pushed: false }));
            (
                Outgoing {
                    links: links.collect(),
                    pushed: Vec::new(),
                    spilling: 0,
                    overflow_len: 0,
                    stats: Arc::clone(st),
                },
                Incoming { links: cs },
            )
        })
        .collect()
}

impl<M> Outgoing<M> {
    /// Queues a record for shard `to` (which must be another shard of the mesh). Never blocks
    /// and never drops. Returns `false` when the record had to wait in the overflow list (the
    /// link is congested).
    pub(crate) fn push(&mut self, to: ShardId, record: Envelope<M>) -> bool {
        let Some(link) = self.links.get_mut(usize::from(to)).and_then(Option::as_mut) else {
            // The shard core checks targets before pushing; an unknown one is a bug.
            debug_assert!(false, "push to unknown shard {to}");
            return true;
        };
        let record = if link.overflow.is_empty() {
            match link.producer.push(record) {
                Ok(()) => {
                    mark(link, &mut self.pushed, to);
                    return true;
                }
                Err(PushError::Full(r)) => r,
            }
        } else {
            record
        };
        if link.overflow.is_empty() {
            self.spilling += 1;
        }
        link.overflow.push_back(record);
        self.overflow_len += 1;
        self.stats.bump(Counter::Spilled);
        self.stats.overflow_high_water(self.overflow_len);
        false
    }

    /// Moves overflowed records into their queues while they fit. Returns whether some remain.
    pub(crate) fn retry_spill(&mut self) -> bool {
        if self.spilling == 0 {
            return false;
        }
        for (to, link) in self.links.iter_mut().enumerate() {
            let Some(link) = link else { continue };
            if link.overflow.is_empty() {
                continue;
            }
            let mut moved = false;
            while let Some(front) = link.overflow.pop_front() {
                match link.producer.push(front) {
                    Ok(()) => {
                        self.overflow_len -= 1;
                        moved = true;
                    }
                    Err(PushError::Full(r)) => {
                        link.overflow.push_front(r);
                        break;
                    }
                }
            }
            if moved {
                mark(link, &mut self.pushed, to as ShardId);
            }
            if link.overflow.is_empty() {
                self.spilling -= 1;
            }
        }
        self.spilling > 0
    }

    /// Whether any record waits in an overflow list.
    pub(crate) fn spilling(&self) -> bool {
        self.spilling > 0
    }

    /// Records waiting in the overflow lists.
    pub(crate) fn overflow_len(&self) -> usize {
        self.overflow_len
    }

    /// Decides which targets need a wake-up for what was pushed since the last call, appending
    /// them to `out`. Called once per loop iteration, so many pushes cost one wake-up.
    pub(crate) fn take_wakes(&mut self, signals: &Signals, out: &mut Vec<ShardId>) {
        for to in self.pushed.drain(..) {
            if let Some(Some(link)) = self.links.get_mut(usize::from(to)) {
                link.pushed = false;
            }
            if signals.mark_notified(to) {
                out.push(to);
            }
        }
    }
}

fn mark<M>(link: &mut Link<M>, pushed: &mut Vec<ShardId>, to: ShardId) {
    if !link.pushed {
        link.pushed = true;
        pushed.push(to);
    }
}

impl<M> Incoming<M> {
    /// The queue from shard `from`, if there is one.
    pub(crate) fn queue_from(&mut self, from: usize) -> Option<&mut Consumer<Envelope<M>>> {
        self.links.get_mut(from).and_then(Option::as_mut)
    }

    /// Whether any queue holds a record.
    pub(crate) fn pending(&self) -> bool {
        self.links.iter().flatten().any(|c| !c.is_empty())
    }

    /// Records waiting in all queues towards this shard.
    pub(crate) fn queued(&self) -> usize {
        self.links.iter().flatten().map(Consumer::slots).sum()
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

    fn drain(inc: &mut Incoming<u32>, from: usize, seen: &mut Vec<u32>) {
        let q = inc.queue_from(from).unwrap();
        while let Ok(r) = q.pop() {
            match r {
                Envelope::Msg(m) => seen.push(m),
                Envelope::Close(c) => seen.push(1000 + c.slot),
                Envelope::Send(c, bytes) => seen.push(2000 + c.slot + u32::from(bytes[0])),
            }
        }
    }

    #[test]
    fn overflow_keeps_order_and_loses_nothing() {
        let stats: Vec<Arc<StatsCell>> = (0..2).map(|_| Arc::default()).collect();
        let mut ends = mesh::<u32>(2, 2, &stats);
        let (_, mut in1) = ends.pop().unwrap();
        let (mut out0, _) = ends.pop().unwrap();
        let mut congested = 0;
        for i in 0..20u32 {
            let record = match i % 5 {
                3 => Envelope::Close(id(i)),
                4 => Envelope::Send(id(i), Payload::from_slice(&[1])),
                _ => Envelope::Msg(i),
            };
            congested += u32::from(!out0.push(1, record));
        }
        assert_eq!(congested, 18, "two fit the queue, the rest wait");
        assert!(out0.spilling());
        assert_eq!(stats[0].snapshot().overflow_high_water, 18);
        assert_eq!((in1.queued(), out0.overflow_len()), (2, 18), "depths: the queue full, the rest overflowed");
        let signals = Signals::new(2);
        let mut wakes = Vec::new();
        out0.take_wakes(&signals, &mut wakes);
        assert_eq!(wakes, vec![1]);
        out0.take_wakes(&signals, &mut wakes);
        assert_eq!(wakes, vec![1], "no second wake before the target drains");

        let mut seen = Vec::new();
        loop {
            drain(&mut in1, 0, &mut seen);
            if !out0.retry_spill() {
                drain(&mut in1, 0, &mut seen);
                break;
            }
        }
        let want: Vec<u32> = (0..20)
            .map(|i| match i % 5 {
                3 => 1000 + i,
                4 => 2001 + i,
                _ => i,
            })
            .collect();
        assert_eq!(seen, want, "everything arrives, in order");
        assert!(!out0.spilling());
        // A later push goes straight into the queue again.
        assert!(out0.push(1, Envelope::Msg(99)));
    }
}
