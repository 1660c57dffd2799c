//! Per-shard counters that other threads (tests, a status command) may read while the engine
//! runs. Only rare events are counted (accepts, closes, pauses, overflows), so the relaxed atomic
//! increments stay off the per-request path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of one shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted and handed to the service.
    pub accepted: u64,
    /// Connections closed (each accepted connection is closed exactly once).
    pub closed: u64,
    /// Connections refused because the shard's connection table was full.
    pub rejected: u64,
    /// Times a connection's reading was paused because its unsent bytes exceeded
    /// `max_send_queue_bytes` (backpressure).
    pub read_pauses: u64,
    /// Connections aborted because their unsent bytes exceeded `max_send_queue_hard_bytes`.
    pub send_queue_aborts: u64,
    /// Connections closed because a message exceeded `max_message_size`.
    pub oversize_closes: u64,
    /// Sends or closes dropped because their connection was gone (stale [`crate::service::ConnId`]).
    pub stale_drops: u64,
    /// Cross-shard records that found the target queue full and waited in the overflow list
    /// (none is ever dropped).
    pub spilled: u64,
    /// Largest number of records waiting in this shard's overflow lists at once.
    pub overflow_high_water: u64,
    /// Times a connection's input was paused because a cross-shard queue it fed was full.
    pub link_pauses: u64,
    /// Half-closed connections closed because the service held them past the hold limit.
    pub hold_expiries: u64,
    /// Outbound connections started ([`crate::service::Outbox::connect`]).
    pub connects: u64,
    /// Outbound connections that failed to connect.
    pub connect_failures: u64,
    /// Largest number of unsent bytes seen on any one connection of this shard.
    pub send_queue_high_water: u64,
    /// Connections aborted because their peer took none of their answers for
    /// `send_stall_timeout` while reading was paused.
    pub stall_aborts: u64,
    /// TLS handshakes completed (accepted and dialled connections).
    pub tls_handshakes: u64,
    /// TLS connections closed for a TLS failure: a refused certificate, a protocol error, or a
    /// handshake that did not complete in time.
    pub tls_failures: u64,
    /// Records waiting in this shard's incoming cross-shard queues when last sampled (every
    /// 100 ms while the shard runs).
    pub inbound_queued: u64,
    /// Records waiting in this shard's overflow lists when last sampled.
    pub overflow_queued: u64,
}

/// How often a shard samples its queue depths into [`ShardStats`], in milliseconds.
pub(crate) const QUEUE_SAMPLE_MS: u64 = 100;

/// The live counters of one shard.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    accepted: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
    read_pauses: AtomicU64,
    send_queue_aborts: AtomicU64,
    oversize_closes: AtomicU64,
    stale_drops: AtomicU64,
    spilled: AtomicU64,
    overflow_high_water: AtomicU64,
    link_pauses: AtomicU64,
    hold_expiries: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    send_queue_high_water: AtomicU64,
    stall_aborts: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    inbound_queued: AtomicU64,
    overflow_queued: AtomicU64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Accepted,
    Closed,
    Rejected,
    ReadPauses,
    SendQueueAborts,
    OversizeCloses,
    StaleDrops,
    Spilled,
    LinkPauses,
    HoldExpiries,
    Connects,
    ConnectFailures,
    TlsHandshakes,
    TlsFailures,
    StallAborts,
}

impl StatsCell {
    /// Adds one to `c`.
    pub(crate) fn bump(&self, c: Counter) {
        let cell = match c {
            Counter::Accepted => &self.accepted,
            Counter::Closed => &self.closed,
            Counter::Rejected => &self.rejected,
            Counter::ReadPauses => &self.read_pauses,
            Counter::SendQueueAborts => &self.send_queue_aborts,
            Counter::OversizeCloses => &self.oversize_closes,
            Counter::StaleDrops => &self.stale_drops,
            Counter::Spilled => &self.spilled,
            Counter::LinkPauses => &self.link_pauses,
            Counter::HoldExpiries => &self.hold_expiries,
            Counter::Connects => &self.connects,
            Counter::ConnectFailures => &self.connect_failures,
            Counter::TlsHandshakes => &self.tls_handshakes,
            Counter::TlsFailures => &self.tls_failures,
            Counter::StallAborts => &self.stall_aborts,
        };
        cell.fetch_add(1, Relaxed);
    }

    /// Records a new high-water mark of unsent bytes (the caller only calls this when its own
    /// local maximum grows, so this is rare).
    pub(crate) fn high_water(&self, bytes: usize) {
        self.send_queue_high_water.fetch_max(bytes as u64, Relaxed);
    }

    /// Records a new high-water mark of overflowed cross-shard records.
    pub(crate) fn overflow_high_water(&self, records: usize) {
        self.overflow_high_water.fetch_max(records as u64, Relaxed);
    }

    /// Records the current queue depths (a sample, not a count).
    pub(crate) fn queue_depths(&self, inbound: usize, overflow: usize) {
        self.inbound_queued.store(inbound as u64, Relaxed);
        self.overflow_queued.store(overflow as u64, Relaxed);
    }

    /// Reads all counters.
    pub(crate) fn snapshot(&self) -> ShardStats {
        ShardStats {
            accepted: self.accepted.load(Relaxed),
            closed: self.closed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            read_pauses: self.read_pauses.load(Relaxed),
            send_queue_aborts: self.send_queue_aborts.load(Relaxed),
            oversize_closes: self.oversize_closes.load(Relaxed),
            stale_drops: self.stale_drops.load(Relaxed),
            spilled: self.spilled.load(Relaxed),
            overflow_high_water: self.overflow_high_water.load(Relaxed),
            link_pauses: self.link_pauses.load(Relaxed),
            hold_expiries: self.hold_expiries.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            send_queue_high_water: self.send_queue_high_water.load(Relaxed),
            stall_aborts: self.stall_aborts.load(Relaxed),
            tls_handshakes: self.tls_handshakes.load(Relaxed),
            tls_failures: self.tls_failures.load(Relaxed),
            inbound_queued: self.inbound_queued.load(Relaxed),
            overflow_queued: self.overflow_queued.load(Relaxed),
        }
    }
}
