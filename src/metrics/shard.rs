//! A shard's own recorder: message counts and sampled handling times kept in plain fields of
//! the shard (no atomics, nothing shared), copied into the shard's slot of the
//! [`MetricsHub`] from its timer about once a second.

use std::sync::Arc;
use std::time::Instant;

use super::histogram::Histogram;
use super::hub::{EnrpSnapshot, MessageKind, MetricsHub, KINDS};
use crate::asap::Stats;
use crate::service::ShardId;
use crate::time::Time;

/// Milliseconds between publications.
pub const PUBLISH_INTERVAL_MS: u64 = 1000;

/// What the router knows besides its own counters when it publishes.
#[derive(Debug)]
pub struct ShardView<'a> {
    /// The ASAP procedures' counters.
    pub asap: &'a Stats,
    /// PEs under keep-alive supervision.
    pub supervised_pes: usize,
    /// PEs held on this shard.
    pub pes: usize,
    /// Pools held on this shard.
    pub pools: usize,
    /// The coordinator's view, on its shard.
    pub enrp: Option<EnrpSnapshot>,
}

/// One shard's recorder.
#[derive(Debug)]
pub struct ShardMetrics {
    hub: Arc<MetricsHub>,
    shard: ShardId,
    messages: [u64; KINDS],
    latency: [Histogram; KINDS],
    /// Requests until the next timed one.
    countdown: u32,
    sample_every: u32,
    connections: u64,
    in_flight: u64,
    publications: u64,
    next_publish: Time,
}

impl ShardMetrics {
    /// The recorder of shard `shard`, publishing into `hub` from `now` on.
    pub fn new(hub: Arc<MetricsHub>, shard: ShardId, now: Time) -> Self {
        let sample_every = hub.sample_every();
        Self {
            hub,
            shard,
            messages: [0; KINDS],
            latency: [Histogram::default(); KINDS],
            // Shards start their sampling at different points, so that clients in lockstep do
            // not put the same request of each burst under the clock on every shard.
            countdown: 1 + u32::from(shard) % sample_every,
            sample_every,
            connections: 0,
            in_flight: 0,
            publications: 0,
            next_publish: now,
        }
    }

    /// A request of `kind` is about to be handled: counts it, and returns the time it started
    /// when it is one of the timed ones.
    #[inline]
    pub fn request(&mut self, kind: MessageKind) -> Option<Instant> {
        self.messages[kind.index()] += 1;
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.sample_every;
            Some(Instant::now())
        } else {
            None
        }
    }

    /// The timed request of `kind` that started at `start` has been handled.
    #[cold]
    pub fn handled(&mut self, kind: MessageKind, start: Instant) {
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency[kind.index()].record(ns);
    }

    /// An ASAP connection opened on this shard.
    pub fn connection_opened(&mut self) {
        self.connections += 1;
    }

    /// An ASAP connection of this shard closed.
    pub fn connection_closed(&mut self) {
        self.connections = self.connections.saturating_sub(1);
    }

    /// A request went to another shard.
    pub fn posted(&mut self) {
        self.in_flight += 1;
    }

    /// The answer to a request at another shard came back.
    pub fn answered(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// When the next publication is due.
    pub fn next_publish(&self) -> Time {
        self.next_publish
    }

    /// Copies everything into this shard's slot if it is due at `now`; when a scrape holds the
    /// slot, tries again a millisecond later instead of waiting.
    pub fn publish(&mut self, now: Time, view: ShardView<'_>) {
        if now < self.next_publish {
            return;
        }
        let Some(mut slot) = self.hub.try_slot(self.shard) else {
            self.next_publish = now.add_millis(1);
            return;
        };
        self.publications += 1;
        slot.publications = self.publications;
        slot.asap.clone_from(view.asap);
        slot.messages = self.messages;
        slot.latency = self.latency;
        slot.connections = self.connections;
        slot.cross_shard_in_flight = self.in_flight;
        slot.supervised_pes = view.supervised_pes as u64;
        slot.pes = view.pes as u64;
        slot.pools = view.pools as u64;
        slot.enrp = view.enrp;
        drop(slot);
        self.next_publish = now.add_millis(PUBLISH_INTERVAL_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stats: &Stats) -> ShardView<'_> {
        ShardView { asap: stats, supervised_pes: 2, pes: 3, pools: 1, enrp: None }
    }

    #[test]
    fn one_request_in_n_is_timed_and_every_one_counted() {
        let hub = Arc::new(MetricsHub::with_sampling(1, 4));
        let mut m = ShardMetrics::new(Arc::clone(&hub), 0, Time::ZERO);
        let mut timed = 0;
        for _ in 0..100 {
            if let Some(start) = m.request(MessageKind::HandleResolution) {
                timed += 1;
                m.handled(MessageKind::HandleResolution, start);
            }
        }
        assert_eq!(timed, 25);
        m.publish(Time::ZERO, view(&Stats::default()));
        let s = hub.merged();
        assert_eq!(s.messages[MessageKind::HandleResolution.index()], 100);
        assert_eq!(s.latency[MessageKind::HandleResolution.index()].count(), 25);
        assert_eq!((s.supervised_pes, s.pes, s.pools, s.publications), (2, 3, 1, 1));
    }

    #[test]
    fn publications_wait_for_their_interval_and_retry_soon_when_the_slot_is_busy() {
        let hub = Arc::new(MetricsHub::with_sampling(2, 1));
        let mut m = ShardMetrics::new(Arc::clone(&hub), 1, Time(10));
        let mut stats = Stats { resolutions: 1, ..Stats::default() };
        m.connection_opened();
        m.posted();
        m.publish(Time(10), view(&stats));
        assert_eq!(hub.snapshots()[1].asap.resolutions, 1);
        assert_eq!((hub.snapshots()[1].connections, hub.snapshots()[1].cross_shard_in_flight), (1, 1));
        stats.resolutions = 2;
        m.publish(Time(500), view(&stats));
        assert_eq!(hub.snapshots()[1].asap.resolutions, 1, "not due yet");
        assert_eq!(m.next_publish(), Time(10 + PUBLISH_INTERVAL_MS));
        let snapshots = hub.snapshots();
        {
            let _scrape = hub.try_slot(1).unwrap();
            m.publish(Time(1010), view(&stats));
        }
        assert_eq!(m.next_publish(), Time(1011), "busy: again a millisecond later");
        assert_eq!(hub.snapshots(), snapshots);
        m.answered();
        m.connection_closed();
        m.publish(Time(1011), view(&stats));
        let s = &hub.snapshots()[1];
        assert_eq!((s.asap.resolutions, s.connections, s.cross_shard_in_flight, s.publications), (2, 0, 0, 2));
    }
}
