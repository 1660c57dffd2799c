//! `rserpool registrar --metrics` and the log options, as an operator uses them: the counters
//! move by exactly what was asked, the exposition is valid Prometheus text (and OpenMetrics
//! on request), nothing is logged per request at the default level, floods of bad input and
//! broken connections log a few lines a second, and `--log-format json` writes JSON lines.
//! Waits are bounded polls; nothing asserts on time.

mod support;

use support::tcp;

#[path = "support/prom.rs"]
mod prom;

use std::time::{Duration, Instant};

use prom::{Dialect, Exposition};
use rserpool::wire::{Policy, TransportProtocol, TransportRepr};
use support::*;

/// `after - before` of the sample `name` with `labels`.
fn delta(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let get = |e: &Exposition| e.get(name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}"));
    get(after) - get(before)
}

#[test]
fn counters_move_by_exactly_the_requests_made_and_the_text_is_valid() {
    let r = Registrar::start_with_args("epoll", 2, "11223344", "127.0.0.1:0", "", &["--metrics", "127.0.0.1:0"]);
    let m = r.metrics_addr();
    let before = prom::settled(m);
    assert_eq!(before.value("rserpool_shards"), 2.0);
    assert_eq!(before.get("rserpool_server", &[("server_id", "0x11223344")]), Some(1.0));
    // Pools on both shards, so that some requests cross from the connection's shard.
    let (a, b) = (handle_on(0, 2, "a"), handle_on(1, 2, "b"));
    let mut c = r.client();
    for (pool, id, port) in [(&a, 1, 7001), (&a, 2, 7002), (&b, 3, 7003), (&a, 1, 7001)] {
        assert_eq!(c.register(pool, pe(id, tcp(port), Policy::RoundRobin, 600_000)), (false, None));
    }
    for k in 0..5 {
        assert!(c.resolve(if k % 2 == 0 { &a } else { &b }, None).is_ok());
    }
    for _ in 0..2 {
        assert_eq!(c.resolve("nobody-here", None), Err(rserpool::wire::CauseCode::UNKNOWN_POOL_HANDLE));
    }
    c.send(&handle_and_id(rserpool::wire::asap::MessageType::Deregistration, a.as_bytes(), 2));
    c.recv();
    let mut bad = r.client();
    bad.send(&vector("asap-bad-unknown-message-type"));
    assert_eq!(bad.recv(), vector("asap-error-unrecognized-message"));
    bad.send(&vector("asap-bad-unknown-param-stop-report"));
    assert_eq!(bad.recv(), vector("asap-error-unrecognized-parameter"));
    bad.send(&vector("asap-bad-length-lt-4"));
    assert!(bad.closed_within(PATIENCE), "the unframeable connection is closed");

    let after = prom::settled(m);
    let d = |name: &str| delta(&before, &after, name, &[]);
    let by = |name: &str, label: &str, value: &str| delta(&before, &after, name, &[(label, value)]);
    assert_eq!(d("rserpool_registrations_total"), 3.0);
    assert_eq!(d("rserpool_reregistrations_total"), 1.0);
    assert_eq!(d("rserpool_registrations_rejected_total"), 0.0);
    assert_eq!(d("rserpool_resolutions_total"), 5.0);
    assert_eq!(d("rserpool_resolutions_unknown_pool_total"), 2.0);
    assert_eq!(d("rserpool_deregistrations_total"), 1.0);
    assert_eq!(d("rserpool_asap_bad_messages_total"), 2.0);
    assert_eq!(d("rserpool_framing_errors_total"), 1.0);
    for (cause, n) in [("unknown_pool_handle", 2.0), ("unrecognized_message", 1.0), ("unrecognized_parameter", 1.0)] {
        assert_eq!(by("rserpool_asap_errors_total", "cause", cause), n, "{cause}");
    }
    assert_eq!(after.sum("rserpool_asap_errors_total") - before.sum("rserpool_asap_errors_total"), 4.0);
    // The unknown-parameter one is a Registration by its type; the unframeable one is never a
    // message.
    for (t, n) in [("registration", 5.0), ("handle_resolution", 7.0), ("deregistration", 1.0), ("other", 1.0)] {
        assert_eq!(by("rserpool_asap_messages_total", "type", t), n, "{t}");
    }
    let timed = after.sum("rserpool_asap_request_duration_seconds_count");
    assert!((1.0..=14.0).contains(&timed), "{timed} timed: some of the 14, one in 16 per shard");
    assert_eq!(after.value("rserpool_pools"), 2.0);
    assert_eq!(after.value("rserpool_pes_owned"), 2.0);
    assert_eq!(after.value("rserpool_pes_supervised"), 2.0);
    assert_eq!(after.value("rserpool_pes_learnt"), 0.0);
    assert_eq!(after.sum("rserpool_connections_accepted_total"), 2.0);
    eventually("the closed connection is counted", || {
        let e = prom::scrape(m);
        e.sum("rserpool_connections_closed_total") == 1.0 && e.sum("rserpool_connections") == 1.0
    });
    assert_eq!(after.sum("rserpool_cross_shard_in_flight"), 0.0);
    // Queue depths, sampled per shard: present for both shards, and nothing waits once idle.
    for gauge in ["rserpool_cross_shard_inbound_queued", "rserpool_cross_shard_overflow_queued"] {
        for shard in ["0", "1"] {
            assert_eq!(after.get(gauge, &[("shard", shard)]), Some(0.0), "{gauge} of shard {shard}");
        }
    }
    assert_eq!(after.value("rserpool_enrp_consistent"), 1.0, "alone, hence consistent");
    assert_eq!(after.sum("rserpool_enrp_peers"), 0.0, "no peers");

    // The same text passes Prometheus's own checker where it is installed; OpenMetrics on
    // request.
    let (_, _, text) = prom::get(m, "/metrics", None);
    prom::promtool_check(&text);
    let (status, content_type, om) = prom::get(m, "/metrics", Some("application/openmetrics-text;version=1.0.0"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let om = prom::parse(&om, Dialect::OpenMetrics).unwrap_or_else(|e| panic!("{e}\n{om}"));
    assert!(om.value("rserpool_resolutions_total") >= 5.0);
    assert_eq!(prom::get(m, "/", None).0, "HTTP/1.1 404 Not Found");
    drop(c);
    assert!(r.terminate().success());
}

#[test]
fn nothing_is_logged_per_request_at_the_default_level_and_floods_are_limited() {
    let r = Registrar::start("epoll", 2, "");
    let started = r.log().len();
    let (a, b) = (handle_on(0, 2, "quiet-a"), handle_on(1, 2, "quiet-b"));
    let mut c = r.client();
    for id in 1..=200u32 {
        let pool = if id % 2 == 0 { &a } else { &b };
        assert_eq!(c.register(pool, pe(id, tcp(7000), Policy::RoundRobin, 600_000)), (false, None));
        assert!(c.resolve(pool, None).is_ok());
        assert!(c.resolve("unknown", None).is_err());
    }
    for id in 1..=200u32 {
        c.send(&handle_and_id(rserpool::wire::asap::MessageType::Deregistration, a.as_bytes(), id));
        c.recv();
    }
    assert_eq!(r.log().len(), started, "no line for 800 requests: {:?}", &r.log()[started..]);

    // A flood: 150 connections each sending a malformed message, then 150 sending bytes that
    // cannot be framed. Unlimited, that would be 300 warnings.
    let t0 = Instant::now();
    for _ in 0..150 {
        let mut bad = r.client();
        bad.send(&vector("asap-bad-unknown-message-type"));
        bad.recv();
    }
    let mut closed = Vec::new();
    for _ in 0..150 {
        let mut bad = r.client();
        bad.send(&vector("asap-bad-length-lt-4"));
        closed.push(bad);
    }
    for bad in &mut closed {
        assert!(bad.closed_within(PATIENCE));
    }
    // Let a last summary through: it comes with the first line of a later window.
    std::thread::sleep(Duration::from_millis(1100));
    let mut late = r.client();
    late.send(&vector("asap-bad-unknown-message-type"));
    late.recv();
    eventually("the suppressed lines are summed up", || r.log().iter().any(|l| l.contains("suppressed")));
    let seconds = t0.elapsed().as_secs() + 2;
    let lines = r.log()[started..].to_vec();
    // At most 10 lines a second per limiter (two per shard), plus the summaries.
    let bound = (seconds * 10 * 2 * 2 + seconds * 4) as usize;
    assert!(lines.len() <= bound.min(250), "{} lines (bound {bound}): {lines:?}", lines.len());
}

#[test]
fn json_logs_are_one_object_per_line_and_metrics_can_come_from_the_config_file() {
    let r = Registrar::start("epoll", 1, "log_format = \"json\"\nmetrics = \"127.0.0.1:0\"\n");
    let m = r.metrics_addr();
    let mut bad = r.client();
    bad.send(&vector("asap-bad-unknown-message-type"));
    bad.recv();
    eventually("the warning is logged", || r.log().iter().any(|l| l.contains("rejected")));
    for line in r.log() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
    }
    assert_eq!(prom::settled(m).value("rserpool_asap_bad_messages_total"), 1.0);
}

#[test]
fn a_metrics_address_that_cannot_be_had_stops_the_registrar_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rserpool"))
        .args(["registrar", "--asap", "127.0.0.1:0", "--enrp", "127.0.0.1:0", "--metrics", &addr])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr} (metrics)")), "{err}");
}

#[test]
fn the_strict_reader_refuses_what_the_format_does_not_allow() {
    use prom::parse;
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
    assert_eq!(parse(ok, Dialect::Prometheus).unwrap().get("a_total", &[("x", "1")]), Some(3.0));
    for bad in [
        "a_total 3\n",                                                                             // no TYPE
        "# TYPE a_total counter\na_total -1\n",                                                    // negative counter
        "# TYPE a gauge\na 1\na 2\n",                                                              // series twice
        "# TYPE a gauge\na{x=\"1} 2\n",                                                            // unterminated label
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n",                              // family split
        "# TYPE a gauge\nb 1\n", // sample of another family
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n", // no +Inf
        "# TYPE a gauge\na 1",   // no final newline
        "# TYPE a gauge\na one\n", // bad value
    ] {
        assert!(parse(bad, Dialect::Prometheus).is_err(), "accepted: {bad:?}");
    }
    let om = "# TYPE a counter\na_total 3\n# EOF\n";
    assert_eq!(parse(om, Dialect::OpenMetrics).unwrap().value("a_total"), 3.0);
    assert!(parse("# TYPE a counter\na_total 3\n", Dialect::OpenMetrics).is_err(), "no EOF");
}

#[test]
fn a_registration_refused_for_security_is_counted_by_its_cause() {
    let r = Registrar::start_with_args("epoll", 1, "11223344", "127.0.0.1:0", "", &["--metrics", "127.0.0.1:0"]);
    let m = r.metrics_addr();
    let before = prom::settled(m);
    let mut c = r.client();
    // The default check (`source`): a PE on loopback may not register an address elsewhere.
    let elsewhere = TransportRepr::new(TransportProtocol::Tcp, "192.0.2.7".parse().unwrap(), 7001);
    assert_eq!(
        c.register("guarded", pe(1, elsewhere, Policy::RoundRobin, 600_000)),
        (true, Some(rserpool::wire::CauseCode::REJECTED_SECURITY))
    );
    assert_eq!(c.register("guarded", pe(2, tcp(7002), Policy::RoundRobin, 600_000)), (false, None));
    let after = prom::settled(m);
    let d = |name: &str| delta(&before, &after, name, &[]);
    assert_eq!(d("rserpool_registrations_refused_security_total"), 1.0);
    assert_eq!(d("rserpool_registrations_rejected_total"), 1.0);
    assert_eq!(d("rserpool_registrations_total"), 1.0);
    assert_eq!(delta(&before, &after, "rserpool_asap_errors_total", &[("cause", "rejected_security")]), 1.0);
    assert_eq!(after.sum("rserpool_asap_errors_total") - before.sum("rserpool_asap_errors_total"), 1.0);
    // Plaintext only: no TLS handshakes, none failed.
    assert_eq!(after.sum("rserpool_tls_handshakes_total") + after.sum("rserpool_tls_failures_total"), 0.0);
    drop(c);
    assert!(r.terminate().success());
}

#[test]
fn two_registrars_count_their_handle_updates_audits_and_the_takeover() {
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (pa, pb) = (port(0), port(1));
    let metrics = ["--metrics", "127.0.0.1:0"];
    let a = Registrar::start_with_args("epoll", 2, "aaaa0001", &format!("127.0.0.1:{pa}"), SHORT_ENRP_TIMERS, &metrics);
    let config_b = format!("peers = [\"127.0.0.1:{pa}\"]\n{SHORT_ENRP_TIMERS}");
    let b = Registrar::start_with_args("epoll", 2, "bbbb0002", &format!("127.0.0.1:{pb}"), &config_b, &metrics);
    let (ma, mb) = (a.metrics_addr(), b.metrics_addr());
    let meshed = |m| {
        let e = prom::scrape(m);
        e.get("rserpool_enrp_peers", &[("state", "connected")]) == Some(1.0)
            && e.value("rserpool_enrp_consistent") == 1.0
    };
    eventually("both registrars see each other and are consistent", || meshed(ma) && meshed(mb));
    let (a0, b0) = (prom::settled(ma), prom::settled(mb));

    // At A: three PEs, one re-registered, one deregistered; at B: one PE.
    let mut at_a = a.client();
    for id in [1, 2, 3, 1] {
        assert_eq!(at_a.register("pool-m", pe(id, tcp(7000 + id as u16), Policy::RoundRobin, -1)), (false, None));
    }
    at_a.send(&handle_and_id(rserpool::wire::asap::MessageType::Deregistration, b"pool-m", 2));
    at_a.recv();
    let mut at_b = b.client();
    assert_eq!(at_b.register("pool-n", pe(9, tcp(7009), Policy::RoundRobin, -1)), (false, None));
    let ids = |r: &Registrar, pool: &str| {
        let mut v: Vec<u32> = r.client().resolve(pool, Some(16)).unwrap_or_default().iter().map(|p| p.pe_id).collect();
        v.sort_unstable();
        v
    };
    eventually("each registrar has learnt the other's PEs", || ids(&b, "pool-m") == [1, 3] && ids(&a, "pool-n") == [9]);
    let (a1, b1) = (prom::settled(ma), prom::settled(mb));
    let d = |x: &Exposition, y: &Exposition, name: &str| delta(x, y, name, &[]);
    // Every change made at one is announced once and received once by the other.
    let sent_a = d(&a0, &a1, "rserpool_enrp_updates_sent_total");
    assert_eq!(sent_a, 5.0, "3 registrations, a re-registration, a deregistration");
    assert_eq!(d(&b0, &b1, "rserpool_enrp_updates_received_total"), sent_a);
    assert_eq!(d(&b0, &b1, "rserpool_enrp_updates_sent_total"), 1.0);
    assert_eq!(d(&a0, &a1, "rserpool_enrp_updates_received_total"), 1.0);
    assert_eq!((a1.value("rserpool_pes_owned"), a1.value("rserpool_pes_learnt")), (2.0, 1.0));
    assert_eq!((b1.value("rserpool_pes_owned"), b1.value("rserpool_pes_learnt")), (1.0, 2.0));
    for e in [&a1, &b1] {
        assert_eq!(e.value("rserpool_enrp_refused_peers_total"), 0.0, "loopback peers are admitted");
        assert_eq!(e.value("rserpool_pe_id_collisions_total"), 0.0);
        assert_eq!(e.value("rserpool_enrp_bad_messages_total"), 0.0);
    }
    // Heartbeats carry checksums: audits go on while the mesh is idle.
    eventually("A audits B", || {
        prom::scrape(ma).value("rserpool_enrp_audits_total") > a1.value("rserpool_enrp_audits_total")
    });

    // B dies: A declares it lost and takes its PE over.
    b.kill();
    eventually("A has taken over B's PE", || {
        let e = prom::scrape(ma);
        e.value("rserpool_enrp_takeovers_total") == a1.value("rserpool_enrp_takeovers_total") + 1.0
            && e.value("rserpool_pes_taken_over_total") == a1.value("rserpool_pes_taken_over_total") + 1.0
    });
    let a2 = prom::settled(ma);
    assert_eq!(d(&a1, &a2, "rserpool_enrp_peers_lost_total"), 1.0);
    assert_eq!(a2.get("rserpool_enrp_peers", &[("state", "connected")]), Some(0.0));
    assert_eq!(a2.sum("rserpool_enrp_peers"), 0.0, "a lost peer is forgotten");
    assert_eq!((a2.value("rserpool_pes_owned"), a2.value("rserpool_pes_learnt")), (3.0, 0.0));
    prom::promtool_check(&prom::get(ma, "/metrics", None).2);
    drop(at_a);
    drop(at_b);
    assert!(a.terminate().success());
}
