//! The exposition: every metric of docs/METRICS.md encoded by `prometheus-client` on a scrape,
//! from the shards' published snapshots, the registrar-wide budgets and the engine's
//! per-shard counters.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::hub::{merge_all, MessageKind, MetricsHub, ShardSnapshot};
use crate::asap::{Budgets, Stats};
use crate::runtime::{ShardStats, StatsReader};

/// The prefix of every metric name.
pub const PREFIX: &str = "rserpool";

/// The two text formats a scrape may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what `curl` gets).
    Prometheus,
    /// OpenMetrics 1.0 text (what a Prometheus server asks for first).
    OpenMetrics,
}

impl Format {
    /// The format an HTTP `Accept` header asks for: OpenMetrics when it names it, else the
    /// Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The registrar's error causes by code (RFC 5352 section 5), as `cause` label values.
pub const CAUSE_LABELS: [&str; 11] = [
    "unspecified",
    "unrecognized_parameter",
    "unrecognized_message",
    "invalid_values",
    "non_unique_pe_identifier",
    "inconsistent_pooling_policy",
    "lack_of_resources",
    "inconsistent_transport_type",
    "inconsistent_data_control",
    "unknown_pool_handle",
    "rejected_security",
];

/// What a scrape reads.
#[derive(Debug)]
struct Sources {
    hub: Arc<MetricsHub>,
    budgets: Arc<Budgets>,
    engine: Option<StatsReader>,
    server_id: u32,
}

/// Renders the registrar's metrics; shared by the endpoint's thread (it only reads).
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// An exporter of registrar `server_id`: the shards' slots in `hub`, the registrar-wide
    /// `budgets`, and the engine's counters when `engine` is given.
    pub fn new(server_id: u32, hub: Arc<MetricsHub>, budgets: Arc<Budgets>, engine: Option<StatsReader>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(Sources { hub, budgets, engine, server_id }));
        Self { registry }
    }

    /// The metrics now, in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and the collector does not fail either.
        let _ = match format {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry),
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &self.registry),
        };
        text
    }
}

/// Writes metric families.
struct Out<'a>(DescriptorEncoder<'a>);

impl Out<'_> {
    fn one(&mut self, name: &str, help: &str, t: MetricType, v: u64) -> fmt::Result {
        let mut m = self.0.encode_descriptor(name, help, None, t)?;
        match t {
            MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
            _ => m.encode_gauge(&v),
        }
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.one(name, help, MetricType::Counter, v)
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.one(name, help, MetricType::Gauge, v)
    }

    /// One family with a label: `values` as (label value, value).
    fn family<L: AsRef<str>>(
        &mut self,
        name: &str,
        help: &str,
        t: MetricType,
        label: &str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut m = self.0.encode_descriptor(name, help, None, t)?;
        for (l, v) in values {
            let labels = [(label, l.as_ref())];
            let mut e = m.encode_family(&labels)?;
            match t {
                MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                _ => e.encode_gauge(&v)?,
            }
        }
        Ok(())
    }

    /// A per-shard family of the engine's counters.
    fn per_shard(
        &mut self,
        name: &str,
        help: &str,
        t: MetricType,
        shards: &[ShardStats],
        f: impl Fn(&ShardStats) -> u64,
    ) -> fmt::Result {
        self.family(name, help, t, "shard", shards.iter().enumerate().map(|(i, s)| (i.to_string(), f(s))))
    }
}

impl Collector for Sources {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let shards = self.hub.snapshots();
        let total = merge_all(&shards);
        let mut out = Out(encoder);
        self.registrar(&mut out, &total, &shards)?;
        asap(&mut out, &total)?;
        enrp(&mut out, &total)?;
        if let Some(engine) = &self.engine {
            engine_counters(&mut out, &engine.read())?;
        }
        Ok(())
    }
}

impl Sources {
    fn registrar(&self, out: &mut Out<'_>, total: &ShardSnapshot, shards: &[ShardSnapshot]) -> fmt::Result {
        let id = format!("{:#010x}", self.server_id);
        out.family("server", "This registrar (value 1), by server id.", MetricType::Gauge, "server_id", [(id, 1)])?;
        out.gauge("shards", "Shard threads.", shards.len() as u64)?;
        out.gauge("pools", "Pools in the registrar.", self.budgets.pools.used() as u64)?;
        out.gauge("pes_owned", "Pool elements this registrar is home of.", self.budgets.pes.used() as u64)?;
        out.gauge("pes_learnt", "Pool elements learnt from peer registrars.", self.budgets.peer_pes.used() as u64)?;
        out.gauge("pes_supervised", "Pool elements under keep-alive supervision.", total.supervised_pes)?;
        let each = |f: fn(&ShardSnapshot) -> u64| shards.iter().enumerate().map(move |(i, s)| (i.to_string(), f(s)));
        out.family(
            "connections",
            "ASAP connections (pool elements and users) open, by shard.",
            MetricType::Gauge,
            "shard",
            each(|s| s.connections),
        )?;
        out.family(
            "cross_shard_in_flight",
            "Requests of a shard's connections out at the shards owning their pools, awaiting answers.",
            MetricType::Gauge,
            "shard",
            each(|s| s.cross_shard_in_flight),
        )?;
        out.family(
            "metrics_publications",
            "Snapshots a shard has published for this endpoint (about one a second).",
            MetricType::Counter,
            "shard",
            each(|s| s.publications),
        )
    }
}

fn asap(out: &mut Out<'_>, t: &ShardSnapshot) -> fmt::Result {
    let a: &Stats = &t.asap;
    out.family(
        "asap_messages",
        "ASAP messages handled, by type (counted on the shard owning their pool).",
        MetricType::Counter,
        "type",
        MessageKind::ALL.iter().map(|k| (k.label(), t.messages[k.index()])),
    )?;
    {
        let mut m = out.0.encode_descriptor(
            "asap_request_duration",
            "Time to handle one ASAP request on its pool's shard, by type; one request in N is timed (docs/METRICS.md).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for k in MessageKind::ALL {
            let h = &t.latency[k.index()];
            let labels = [("type", k.label())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_ns() as f64 / 1e9,
                h.count(),
                &h.buckets_seconds(),
                None,
            )?;
        }
    }
    let new = a.registrations.saturating_sub(a.reregistrations);
    out.counter("registrations", "Registrations accepted that added a pool element.", new)?;
    out.counter("reregistrations", "Registrations accepted of a pool element already registered.", a.reregistrations)?;
    out.counter(
        "registrations_rejected",
        "Registrations rejected (any cause; see asap_errors_total).",
        a.registrations_rejected,
    )?;
    out.counter(
        "registrations_refused_security",
        "Registrations refused because the connection may not register those addresses (cause 0xA).",
        a.security_refusals,
    )?;
    out.counter("deregistrations", "Deregistrations that removed a pool element.", a.deregistrations)?;
    out.counter("resolutions", "Handle resolutions answered from a pool.", a.resolutions)?;
    out.counter("resolutions_unknown_pool", "Handle resolutions of a pool handle not known.", a.unknown_pool)?;
    out.family(
        "asap_errors",
        "Error causes sent in answers (Operation Error or ASAP Error), by cause.",
        MetricType::Counter,
        "cause",
        CAUSE_LABELS.iter().zip(a.errors),
    )?;
    out.counter("asap_bad_messages", "ASAP messages refused as malformed or of an unknown type.", a.bad_messages)?;
    out.counter("keep_alives_sent", "Endpoint Keep Alives sent to pool elements.", a.keep_alives_sent)?;
    out.counter("keep_alive_failures", "Pool elements removed for not answering a keep-alive.", a.keep_alive_failures)?;
    out.counter(
        "unreachable_removals",
        "Pool elements removed after MAX-BAD-PE-REPORT unreachable reports.",
        a.unreachable_removed,
    )?;
    out.counter("expirations", "Pool elements removed when their registration life ended.", a.expired)?;
    out.counter(
        "connection_loss_removals",
        "Pool elements removed because the connection they registered over closed.",
        a.connection_losses,
    )?;
    out.counter(
        "framing_errors",
        "ASAP connections closed because their stream could not be framed.",
        a.framing_errors,
    )?;
    out.counter(
        "refusal_closes",
        "ASAP connections closed for registering on after resource refusals.",
        a.refusal_closes,
    )?;
    out.counter("pe_id_collisions", "PE identifier collisions between registrars settled here.", a.collisions)?;
    out.counter("pes_taken_over", "Pool elements whose home changed here by a takeover.", a.taken_over)
}

fn enrp(out: &mut Out<'_>, t: &ShardSnapshot) -> fmt::Result {
    let e = t.enrp.clone().unwrap_or_default();
    let s = &e.stats;
    out.counter("enrp_updates_sent", "Handle Updates sent to peers (each once, not per peer).", s.updates_sent)?;
    out.counter("enrp_updates_received", "Handle Updates received from peers.", s.updates_received)?;
    out.counter("enrp_audits", "Audits of a peer's pool elements by checksum.", s.audits)?;
    out.counter("enrp_audit_mismatches", "Audits that found a mismatch and fetched the peer's table.", s.mismatches)?;
    out.counter("enrp_takeovers", "Takeovers of a dead peer's pool elements completed here.", s.takeovers)?;
    out.counter("enrp_peers_lost", "Peers declared dead.", s.peers_lost)?;
    out.counter("enrp_bad_messages", "ENRP messages from peers refused as malformed.", s.bad_messages)?;
    out.counter(
        "enrp_refused_peers",
        "ENRP connections refused because their source is not an admitted peer.",
        s.refused_peers,
    )?;
    out.counter("enrp_discovered", "Registrars heard by multicast Presence and dialled.", s.discovered)?;
    out.counter(
        "enrp_discovered_refused",
        "Registrars heard by multicast Presence but not dialled: their address is not admitted.",
        s.discovered_refused,
    )?;
    let disconnected = e.peers_known.saturating_sub(e.peers_connected);
    out.family(
        "enrp_peers",
        "Peer registrars known, by state.",
        MetricType::Gauge,
        "state",
        [("connected", e.peers_connected), ("disconnected", disconnected)],
    )?;
    out.gauge("enrp_consistent", "1 once the handle table is consistent with the mesh, 0 while joining.", e.consistent)
}

fn engine_counters(out: &mut Out<'_>, s: &[ShardStats]) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    out.per_shard("connections_accepted", "Connections accepted (every listener).", Counter, s, |x| x.accepted)?;
    out.per_shard("connections_closed", "Connections closed (accepted and dialled).", Counter, s, |x| x.closed)?;
    out.per_shard(
        "connections_rejected",
        "Connections refused because the shard's table was full.",
        Counter,
        s,
        |x| x.rejected,
    )?;
    out.per_shard("outbound_connects", "Outbound connections started.", Counter, s, |x| x.connects)?;
    out.per_shard("outbound_connect_failures", "Outbound connections that failed.", Counter, s, |x| {
        x.connect_failures
    })?;
    out.per_shard(
        "read_pauses",
        "Times a connection stopped being read because its unsent answers reached max_send_queue.",
        Counter,
        s,
        |x| x.read_pauses,
    )?;
    out.per_shard(
        "send_queue_aborts",
        "Connections aborted for unsent bytes beyond the hard limit.",
        Counter,
        s,
        |x| x.send_queue_aborts,
    )?;
    out.per_shard("oversize_closes", "Connections closed for a message beyond max_message_size.", Counter, s, |x| {
        x.oversize_closes
    })?;
    out.per_shard("stale_drops", "Sends or closes for connections already gone.", Counter, s, |x| x.stale_drops)?;
    out.per_shard(
        "cross_shard_spilled",
        "Cross-shard records that found their queue full and waited in the overflow list.",
        Counter,
        s,
        |x| x.spilled,
    )?;
    out.per_shard(
        "cross_shard_link_pauses",
        "Times a connection stopped being read because a cross-shard queue it fed was full.",
        Counter,
        s,
        |x| x.link_pauses,
    )?;
    out.per_shard(
        "send_stall_aborts",
        "Connections aborted because their peer took none of their answers for send_stall_timeout.",
        Counter,
        s,
        |x| x.stall_aborts,
    )?;
    out.per_shard(
        "hold_expiries",
        "Half-closed connections closed because answers owed to them took past max_hold.",
        Counter,
        s,
        |x| x.hold_expiries,
    )?;
    out.per_shard("tls_handshakes", "TLS handshakes completed (accepted and dialled).", Counter, s, |x| {
        x.tls_handshakes
    })?;
    out.per_shard(
        "tls_failures",
        "TLS connections closed for a TLS failure (refused certificate, protocol error, handshake timeout).",
        Counter,
        s,
        |x| x.tls_failures,
    )?;
    out.per_shard(
        "cross_shard_overflow_high_water",
        "Most cross-shard records waiting in a shard's overflow lists at once.",
        Gauge,
        s,
        |x| x.overflow_high_water,
    )?;
    out.per_shard(
        "cross_shard_inbound_queued",
        "Records waiting in the shard's incoming cross-shard queues (sampled every 100 ms).",
        Gauge,
        s,
        |x| x.inbound_queued,
    )?;
    out.per_shard(
        "cross_shard_overflow_queued",
        "Records waiting in the shard's overflow lists (sampled every 100 ms).",
        Gauge,
        s,
        |x| x.overflow_queued,
    )?;
    out.per_shard(
        "send_queue_high_water_bytes",
        "Most unsent bytes seen on one connection of the shard.",
        Gauge,
        s,
        |x| x.send_queue_high_water,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrp::EnrpStats;
    use crate::metrics::hub::EnrpSnapshot;

    /// The value of the sample line that starts with `series ` (name and labels as written).
    fn sample(text: &str, series: &str) -> u64 {
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
        let line = line.unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn every_counter_is_exported_under_its_documented_name() {
        let hub = Arc::new(MetricsHub::new(2));
        let budgets = Arc::new(Budgets::default());
        budgets.pes.take(5);
        budgets.peer_pes.take(6);
        budgets.pools.take(2);
        {
            let mut s = hub.try_slot(1).unwrap();
            s.asap = Stats {
                registrations: 10,
                reregistrations: 3,
                registrations_rejected: 4,
                resource_refusals: 1,
                deregistrations: 5,
                resolutions: 6,
                unknown_pool: 7,
                keep_alives_sent: 8,
                keep_alive_failures: 9,
                expired: 11,
                unreachable_removed: 12,
                connection_losses: 13,
                bad_messages: 14,
                framing_errors: 15,
                refusal_closes: 16,
                collisions: 17,
                taken_over: 18,
                security_refusals: 19,
                errors: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 19],
            };
            s.enrp = Some(EnrpSnapshot {
                stats: EnrpStats {
                    updates_sent: 21,
                    updates_received: 22,
                    audits: 23,
                    mismatches: 24,
                    takeovers: 25,
                    peers_lost: 26,
                    bad_messages: 27,
                    refused_peers: 28,
                    discovered: 29,
                    discovered_refused: 31,
                },
                peers_known: 3,
                peers_connected: 2,
                consistent: 1,
            });
            s.connections = 30;
        }
        let text = Exporter::new(0x1122_3344, hub, budgets, None).render(Format::Prometheus);
        for (series, v) in [
            ("rserpool_registrations_total", 7),
            ("rserpool_reregistrations_total", 3),
            ("rserpool_registrations_rejected_total", 4),
            ("rserpool_registrations_refused_security_total", 19),
            ("rserpool_asap_errors_total{cause=\"rejected_security\"}", 19),
            ("rserpool_deregistrations_total", 5),
            ("rserpool_resolutions_total", 6),
            ("rserpool_resolutions_unknown_pool_total", 7),
            ("rserpool_keep_alives_sent_total", 8),
            ("rserpool_keep_alive_failures_total", 9),
            ("rserpool_expirations_total", 11),
            ("rserpool_unreachable_removals_total", 12),
            ("rserpool_connection_loss_removals_total", 13),
            ("rserpool_asap_bad_messages_total", 14),
            ("rserpool_framing_errors_total", 15),
            ("rserpool_refusal_closes_total", 16),
            ("rserpool_pe_id_collisions_total", 17),
            ("rserpool_pes_taken_over_total", 18),
            ("rserpool_enrp_updates_sent_total", 21),
            ("rserpool_enrp_updates_received_total", 22),
            ("rserpool_enrp_audits_total", 23),
            ("rserpool_enrp_audit_mismatches_total", 24),
            ("rserpool_enrp_takeovers_total", 25),
            ("rserpool_enrp_peers_lost_total", 26),
            ("rserpool_enrp_bad_messages_total", 27),
            ("rserpool_enrp_refused_peers_total", 28),
            ("rserpool_enrp_discovered_total", 29),
            ("rserpool_enrp_discovered_refused_total", 31),
            ("rserpool_enrp_peers{state=\"connected\"}", 2),
            ("rserpool_enrp_peers{state=\"disconnected\"}", 1),
            ("rserpool_enrp_consistent", 1),
            ("rserpool_pes_owned", 5),
            ("rserpool_pes_learnt", 6),
            ("rserpool_pools", 2),
            ("rserpool_connections{shard=\"0\"}", 0),
            ("rserpool_connections{shard=\"1\"}", 30),
            ("rserpool_server{server_id=\"0x11223344\"}", 1),
        ] {
            assert_eq!(sample(&text, series), v, "{series}");
        }
    }
}
