//! What shards publish and the metrics thread reads: one slot per shard holding that shard's
//! latest [`ShardSnapshot`], and the merge of the slots on a scrape.
//!
//! A shard writes its slot once per publishing interval (about a second), from its timer,
//! with `try_lock`: if a scrape is copying the slot at that moment the shard does not wait, it
//! tries again a millisecond later. So the only lock is taken once a second per shard, never
//! per request, and a scrape never makes a shard wait.

use std::sync::{Mutex, MutexGuard, TryLockError};

use super::histogram::Histogram;
use crate::asap::Stats;
use crate::enrp::{Coordinator, EnrpStats, Sync};
use crate::service::ShardId;
use crate::wire::asap::MessageType;

/// The ASAP message types the registrar counts and times apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// ASAP Registration (new PEs and re-registrations).
    Registration,
    /// ASAP Deregistration.
    Deregistration,
    /// ASAP Handle Resolution.
    HandleResolution,
    /// ASAP Endpoint Keep Alive Ack.
    EndpointKeepAliveAck,
    /// ASAP Endpoint Unreachable.
    EndpointUnreachable,
    /// Anything else (messages not for a registrar, unknown types, `rserpool status`).
    Other,
}

/// Number of [`MessageKind`]s.
pub const KINDS: usize = 6;

impl MessageKind {
    /// Every kind, in index order.
    pub const ALL: [Self; KINDS] = [
        Self::Registration,
        Self::Deregistration,
        Self::HandleResolution,
        Self::EndpointKeepAliveAck,
        Self::EndpointUnreachable,
        Self::Other,
    ];

    /// The kind of a message whose first byte (the ASAP message type) is `message_type`.
    #[inline]
    pub fn of(message_type: u8) -> Self {
        const REGISTRATION: u8 = MessageType::Registration as u8;
        const DEREGISTRATION: u8 = MessageType::Deregistration as u8;
        const RESOLUTION: u8 = MessageType::HandleResolution as u8;
        const KEEP_ALIVE_ACK: u8 = MessageType::EndpointKeepAliveAck as u8;
        const UNREACHABLE: u8 = MessageType::EndpointUnreachable as u8;
        match message_type {
            REGISTRATION => Self::Registration,
            DEREGISTRATION => Self::Deregistration,
            RESOLUTION => Self::HandleResolution,
            KEEP_ALIVE_ACK => Self::EndpointKeepAliveAck,
            UNREACHABLE => Self::EndpointUnreachable,
            _ => Self::Other,
        }
    }

    /// Index into per-kind arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The value of the `type` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Deregistration => "deregistration",
            Self::HandleResolution => "handle_resolution",
            Self::EndpointKeepAliveAck => "endpoint_keep_alive_ack",
            Self::EndpointUnreachable => "endpoint_unreachable",
            Self::Other => "other",
        }
    }
}

/// The ENRP part of a snapshot (the coordinator's shard only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrpSnapshot {
    /// The coordinator's counters.
    pub stats: EnrpStats,
    /// Peers known (connected or not).
    pub peers_known: u64,
    /// Peers connected now.
    pub peers_connected: u64,
    /// Consistent (1) or still joining (0); summed over shards it stays 0 or 1.
    pub consistent: u64,
}

impl EnrpSnapshot {
    /// What the coordinator shows now.
    pub fn of(c: &Coordinator) -> Self {
        Self {
            stats: c.stats().clone(),
            peers_known: c.known_peers().len() as u64,
            peers_connected: c.connected_peers().len() as u64,
            consistent: u64::from(c.sync() == Sync::Consistent),
        }
    }

    fn merge(&mut self, other: &Self) {
        add_enrp_stats(&mut self.stats, &other.stats);
        self.peers_known += other.peers_known;
        self.peers_connected += other.peers_connected;
        self.consistent += other.consistent;
    }
}

/// One shard's counters and gauges as it last published them (or, merged, the registrar's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Snapshots published (merged: the sum over shards); 0 until the shard's first.
    pub publications: u64,
    /// The ASAP procedures' counters.
    pub asap: Stats,
    /// ASAP messages handled on this shard (the shard owning their pool), by kind.
    pub messages: [u64; KINDS],
    /// Handling time of the sampled messages, by kind.
    pub latency: [Histogram; KINDS],
    /// ASAP connections (pool elements and pool users) this shard holds open.
    pub connections: u64,
    /// Requests of this shard's connections out at other shards, waiting for their answers.
    pub cross_shard_in_flight: u64,
    /// PEs under keep-alive supervision on this shard.
    pub supervised_pes: u64,
    /// PEs held on this shard (own and peers').
    pub pes: u64,
    /// Pools held on this shard.
    pub pools: u64,
    /// ENRP, on the coordinator's shard.
    pub enrp: Option<EnrpSnapshot>,
}

impl ShardSnapshot {
    /// Adds `other` to this one: counters and gauges summed, histograms merged bucket by
    /// bucket.
    pub fn merge(&mut self, other: &Self) {
        self.publications += other.publications;
        add_stats(&mut self.asap, &other.asap);
        for (a, b) in self.messages.iter_mut().zip(other.messages) {
            *a += b;
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            a.merge(b);
        }
        self.connections += other.connections;
        self.cross_shard_in_flight += other.cross_shard_in_flight;
        self.supervised_pes += other.supervised_pes;
        self.pes += other.pes;
        self.pools += other.pools;
        match (&mut self.enrp, &other.enrp) {
            (Some(a), Some(b)) => a.merge(b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            (_, None) => {}
        }
    }
}

/// Sums counters field by field (the destructuring makes a new field a compile error here
/// until it is merged too).
fn add_stats(a: &mut Stats, b: &Stats) {
    let Stats {
        registrations,
        reregistrations,
        registrations_rejected,
        resource_refusals,
        deregistrations,
        resolutions,
        unknown_pool,
        keep_alives_sent,
        keep_alive_failures,
        expired,
        unreachable_removed,
        connection_losses,
        bad_messages,
        framing_errors,
        refusal_closes,
        collisions,
        taken_over,
        security_refusals,
        errors,
    } = b;
    a.registrations += registrations;
    a.reregistrations += reregistrations;
    a.registrations_rejected += registrations_rejected;
    a.resource_refusals += resource_refusals;
    a.deregistrations += deregistrations;
    a.resolutions += resolutions;
    a.unknown_pool += unknown_pool;
    a.keep_alives_sent += keep_alives_sent;
    a.keep_alive_failures += keep_alive_failures;
    a.expired += expired;
    a.unreachable_removed += unreachable_removed;
    a.connection_losses += connection_losses;
    a.bad_messages += bad_messages;
    a.framing_errors += framing_errors;
    a.refusal_closes += refusal_closes;
    a.collisions += collisions;
    a.taken_over += taken_over;
    a.security_refusals += security_refusals;
    for (x, y) in a.errors.iter_mut().zip(errors) {
        *x += y;
    }
}

fn add_enrp_stats(a: &mut EnrpStats, b: &EnrpStats) {
    let EnrpStats {
        updates_sent,
        updates_received,
        audits,
        mismatches,
        takeovers,
        peers_lost,
        bad_messages,
        refused_peers,
        discovered,
        discovered_refused,
    } = b;
    a.updates_sent += updates_sent;
    a.updates_received += updates_received;
    a.audits += audits;
    a.mismatches += mismatches;
    a.takeovers += takeovers;
    a.peers_lost += peers_lost;
    a.bad_messages += bad_messages;
    a.refused_peers += refused_peers;
    a.discovered += discovered;
    a.discovered_refused += discovered_refused;
}

/// One request in this many is timed, per shard (reading the clock twice for every request
/// would cost about a tenth of a resolution's own work; see docs/METRICS.md).
pub const DEFAULT_SAMPLE_EVERY: u32 = 16;

/// The shards' publishing slots, shared by the shards (each writes its own) and the metrics
/// thread (reads them all on a scrape).
#[derive(Debug)]
pub struct MetricsHub {
    slots: Box<[Mutex<ShardSnapshot>]>,
    sample_every: u32,
}

impl MetricsHub {
    /// Slots for `shards` shards, timing one request in [`DEFAULT_SAMPLE_EVERY`].
    pub fn new(shards: usize) -> Self {
        Self::with_sampling(shards, DEFAULT_SAMPLE_EVERY)
    }

    /// Slots for `shards` shards, timing one request in `sample_every` (1: every request).
    pub fn with_sampling(shards: usize, sample_every: u32) -> Self {
        let slots = (0..shards.max(1)).map(|_| Mutex::default()).collect();
        Self { slots, sample_every: sample_every.max(1) }
    }

    /// Number of slots (shards).
    pub fn shards(&self) -> usize {
        self.slots.len()
    }

    /// One request in this many is timed.
    pub fn sample_every(&self) -> u32 {
        self.sample_every
    }

    /// Shard `shard`'s slot if nobody holds it now (`None`: try later). A shard beyond the
    /// slots has none.
    pub(crate) fn try_slot(&self, shard: ShardId) -> Option<MutexGuard<'_, ShardSnapshot>> {
        match self.slots.get(usize::from(shard))?.try_lock() {
            Ok(g) => Some(g),
            // A panic elsewhere while holding it left a whole snapshot there: use it.
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Every shard's latest snapshot, in shard order.
    pub fn snapshots(&self) -> Vec<ShardSnapshot> {
        self.slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    /// The registrar's totals: every shard's snapshot merged.
    pub fn merged(&self) -> ShardSnapshot {
        merge_all(&self.snapshots())
    }
}

/// The merge of several snapshots.
pub fn merge_all(snapshots: &[ShardSnapshot]) -> ShardSnapshot {
    let mut total = ShardSnapshot::default();
    for s in snapshots {
        total.merge(s);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CauseCode;

    fn shard(k: u64) -> ShardSnapshot {
        let mut s = ShardSnapshot { publications: 1, connections: k, pes: 10 * k, pools: k, ..Default::default() };
        s.asap.registrations = k;
        s.asap.resolutions = 100 * k;
        s.asap.taken_over = 7;
        s.asap.errors[CauseCode::UNKNOWN_POOL_HANDLE.0 as usize] = k;
        s.messages[MessageKind::HandleResolution.index()] = 100 * k;
        s.latency[MessageKind::HandleResolution.index()].record(300 * k);
        s
    }

    #[test]
    fn merging_sums_every_counter_gauge_and_bucket() {
        let mut coordinator = shard(1);
        coordinator.enrp = Some(EnrpSnapshot {
            stats: EnrpStats { updates_sent: 5, audits: 2, ..Default::default() },
            peers_known: 3,
            peers_connected: 2,
            consistent: 1,
        });
        let t = merge_all(&[coordinator.clone(), shard(2), shard(3)]);
        assert_eq!(t.publications, 3);
        assert_eq!(t.asap.registrations, 6);
        assert_eq!(t.asap.resolutions, 600);
        assert_eq!(t.asap.taken_over, 21);
        assert_eq!(t.asap.errors[9], 6);
        assert_eq!(t.messages[MessageKind::HandleResolution.index()], 600);
        assert_eq!((t.connections, t.pes, t.pools), (6, 60, 6));
        let h = &t.latency[MessageKind::HandleResolution.index()];
        assert_eq!((h.count(), h.sum_ns()), (3, 1800));
        assert_eq!(h.counts()[2], 1, "300 ns is in the 500 ns bucket");
        assert_eq!(h.counts()[3], 2, "600 and 900 ns are in the 1 us bucket");
        assert_eq!(t.enrp, coordinator.enrp, "only the coordinator's shard has ENRP");
        // Merging is order-independent.
        assert_eq!(merge_all(&[shard(3), shard(2), coordinator]), t);
    }

    #[test]
    fn a_held_slot_makes_the_shard_try_later_instead_of_waiting() {
        let hub = MetricsHub::new(2);
        let held = hub.slots[1].lock().unwrap();
        assert!(hub.try_slot(1).is_none());
        assert!(hub.try_slot(0).is_some());
        assert!(hub.try_slot(2).is_none(), "no slot beyond the shards");
        drop(held);
        hub.try_slot(1).unwrap().publications = 4;
        assert_eq!(hub.merged().publications, 4);
    }

    #[test]
    fn kinds_follow_the_message_type_byte() {
        assert_eq!(MessageKind::of(MessageType::Registration as u8), MessageKind::Registration);
        assert_eq!(MessageKind::of(MessageType::HandleResolution as u8), MessageKind::HandleResolution);
        assert_eq!(MessageKind::of(MessageType::EndpointUnreachable as u8), MessageKind::EndpointUnreachable);
        assert_eq!(MessageKind::of(MessageType::RegistrationResponse as u8), MessageKind::Other);
        assert_eq!(MessageKind::of(0xff), MessageKind::Other);
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
