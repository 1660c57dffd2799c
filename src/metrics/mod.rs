//! Metrics of a running registrar (docs/METRICS.md), read without slowing the shards.
//!
//! Each shard counts in its own plain fields: the ASAP procedures' [`crate::asap::Stats`],
//! ENRP's [`crate::enrp::EnrpStats`] on the coordinator's shard, and a [`ShardMetrics`] of the
//! router (messages by type, sampled handling times, connections, requests out at other
//! shards). About once a second, from its timer, a shard copies them into its slot of the
//! [`MetricsHub`]; a scrape reads every slot and merges them ([`ShardSnapshot::merge`]). The
//! engine's per-shard counters ([`crate::runtime::StatsReader`]) and the registrar-wide budgets
//! are atomics already and are read directly. Nothing on a request's path is shared with
//! another thread; a shard never waits for a scrape.
//!
//! With the cargo feature `metrics` (part of `cli`): [`Exporter`] encodes all of it with
//! `prometheus-client`, and [`MetricsServer`] serves it at `GET /metrics`.

#[cfg(feature = "metrics")]
mod expose;
mod histogram;
#[cfg(feature = "metrics")]
mod http;
mod hub;
mod shard;

#[cfg(feature = "metrics")]
pub use expose::{Exporter, Format, CAUSE_LABELS, PREFIX};
pub use histogram::{Histogram, BOUNDS_NS, BUCKETS};
#[cfg(feature = "metrics")]
pub use http::MetricsServer;
pub use hub::{merge_all, EnrpSnapshot, MessageKind, MetricsHub, ShardSnapshot, DEFAULT_SAMPLE_EVERY, KINDS};
pub use shard::{ShardMetrics, ShardView, PUBLISH_INTERVAL_MS};
