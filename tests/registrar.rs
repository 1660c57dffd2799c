//! The registrar binary on loopback, used as clients use it. Every test runs against both
//! engines (io_uring and epoll). Timers are shortened through the config file; waits are
//! deadlock guards, never timing assertions.

#[macro_use]
mod support;

use std::time::Duration;

use rserpool::wire::asap::{self, Body, MessageType};
use rserpool::wire::{CauseCode, Policy, TransportProtocol, TransportRepr};
use support::*;

fn tcp(ip: &str, port: u16) -> TransportRepr {
    TransportRepr::new(TransportProtocol::Tcp, ip.parse().unwrap(), port)
}

fn legs(n: usize, port: u16) -> TransportRepr {
    let ips = ["192.0.2.1", "198.51.100.1", "2001:db8::1"];
    let mut t = TransportRepr::new(TransportProtocol::Sctp, ips[0].parse().unwrap(), port);
    for ip in &ips[1..n] {
        t.addresses.push(ip.parse().unwrap());
    }
    t
}

/// Registrars of tests that register documentation addresses (192.0.2.0/24, 2001:db8::/32) from
/// loopback: the source check (the default, tested below) would refuse them.
const ANY_ADDRESS: &str = "[security]\nregistration_check = \"off\"\n";

const POLICIES: [Policy; 9] = [
    Policy::RoundRobin,
    Policy::WeightedRoundRobin { weight: 2 },
    Policy::Random,
    Policy::WeightedRandom { weight: 3 },
    Policy::Priority { priority: 1 },
    Policy::LeastUsed { load: 1000 },
    Policy::LeastUsedDegradation { load: 1000, degradation: 10 },
    Policy::PriorityLeastUsed { load: 1000, degradation: 10 },
    Policy::RandomizedLeastUsed { load: 1000 },
];

both_engines! {
    every_policy_with_one_to_three_legs(engine) {
        let r = Registrar::start(engine, 2, ANY_ADDRESS);
        let mut pe = r.client();
        let mut pu = r.client();
        for (i, policy) in POLICIES.iter().enumerate() {
            let pool = format!("policy-{i}");
            for n in 1..=3u32 {
                let (rejected, cause) = pe.register(&pool, support::pe(100 * i as u32 + n, legs(n as usize, 7000), *policy, -1));
                assert!(!rejected, "{pool}: {cause:?}");
            }
            let got = pu.resolve(&pool, Some(3)).unwrap();
            assert_eq!(got.len(), 3, "{pool}");
            for e in &got {
                let n = (e.pe_id % 100) as usize;
                assert_eq!(e.user_transport, legs(n, 7000), "{pool}: every leg comes back");
                assert_eq!(e.policy.clone(), (*policy).into(), "{pool}");
                assert_eq!(e.home_registrar, 0x1122_3344);
            }
        }
    }

    reregistration_and_deregistration(engine) {
        let r = Registrar::start(engine, 2, "");
        let mut pe = r.client();
        let mut pu = r.client();
        assert_eq!(pe.register("echo", support::pe(7, tcp("127.0.0.1", 7000), Policy::LeastUsed { load: 10 }, -1)), (false, None));
        assert_eq!(pe.register("echo", support::pe(7, tcp("127.0.0.1", 7001), Policy::LeastUsed { load: 20 }, -1)), (false, None));
        let got = pu.resolve("echo", None).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].user_transport.port, 7001);
        assert_eq!(got[0].policy, Policy::LeastUsed { load: 20 }.into());
        pe.send(&handle_and_id(MessageType::Deregistration, b"echo", 7));
        let m = pe.recv();
        assert!(matches!(asap::parse(&m).unwrap().body(), Body::DeregistrationResponse { error: None, pe_id: 7, .. }));
        assert_eq!(pu.resolve("echo", None), Err(CauseCode::UNKNOWN_POOL_HANDLE));
    }

    registration_life_expires(engine) {
        let r = Registrar::start(engine, 1, "");
        let mut pe = r.client();
        let mut pu = r.client();
        pe.register("short", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, 300));
        pe.register("short", support::pe(2, tcp("127.0.0.1", 7001), Policy::RoundRobin, -1));
        eventually("the 300 ms PE expires", || pu.resolve("short", Some(5)).map(|v| v.len()) == Ok(1));
        assert_eq!(pu.resolve("short", Some(5)).unwrap()[0].pe_id, 2);
    }

    keep_alive_failure_removes_the_pe(engine) {
        let r = Registrar::start(engine, 2, "[timers]\nkeep_alive_interval = 200\nkeep_alive_timeout = 100\n");
        let mut silent = r.client();
        let mut pu = r.client();
        silent.register("ka", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        // The silent PE gets a keep-alive with the H flag and this registrar's id, and never answers.
        let m = silent.recv();
        let parsed = asap::parse(&m).unwrap();
        let Body::EndpointKeepAlive { home: true, server_id: 0x1122_3344, pe_id: Some(1), .. } = parsed.body() else {
            panic!("{:?}", parsed.body())
        };
        eventually("the silent PE is removed", || pu.resolve("ka", None) == Err(CauseCode::UNKNOWN_POOL_HANDLE));
    }

    keep_alive_answered_keeps_the_pe(engine) {
        let r = Registrar::start(engine, 2, "[timers]\nkeep_alive_interval = 100\nkeep_alive_timeout = 2000\n");
        let mut pe = r.client();
        let mut pu = r.client();
        pe.register("ka", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        for _ in 0..5 {
            let m = pe.recv();
            let Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } = *asap::parse(&m).unwrap().body() else {
                panic!()
            };
            pe.send(&handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, pe_id));
        }
        assert_eq!(pu.resolve("ka", None).unwrap().len(), 1, "answered five keep-alives and is still there");
    }

    unreachable_reports_remove_the_pe(engine) {
        let r = Registrar::start(engine, 2, "");
        let mut pe = r.client();
        let mut pu = r.client();
        pe.register("u", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        pe.register("u", support::pe(2, tcp("127.0.0.1", 7001), Policy::RoundRobin, -1));
        // Repeated reports from one address count once per interval (1 s by default), over
        // however many connections ...
        for _ in 0..5 {
            pu.send(&handle_and_id(MessageType::EndpointUnreachable, b"u", 1));
            r.client().send(&handle_and_id(MessageType::EndpointUnreachable, b"u", 1));
        }
        assert_eq!(pu.resolve("u", Some(5)).unwrap().len(), 2, "one pool user alone does not remove a PE at once");
        // ... and MAX-BAD-PE-REPORT (3) reports from different addresses remove it.
        for ip in ["127.0.0.2", "127.0.0.3"] {
            let mut other = r.client_from(ip);
            other.send(&handle_and_id(MessageType::EndpointUnreachable, b"u", 1));
            // Answers leave in request order: once this one is in, the report was handled.
            assert!(other.resolve("u", Some(5)).is_ok());
        }
        let ids: Vec<u32> = pu.resolve("u", Some(5)).unwrap().iter().map(|p| p.pe_id).collect();
        assert_eq!(ids, [2], "three reports from three pool users removed PE 1");
    }

    malformed_input_is_answered_and_others_are_served(engine) {
        let r = Registrar::start(engine, 2, "");
        let mut good = r.client();
        good.register("echo", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        let mut bad = r.client();
        bad.send(&vector("asap-bad-unknown-message-type"));
        assert_eq!(bad.recv(), vector("asap-error-unrecognized-message"));
        bad.send(&vector("asap-bad-unknown-param-stop-report"));
        assert_eq!(bad.recv(), vector("asap-error-unrecognized-parameter"));
        bad.send(&vector("asap-bad-tcp-transport-no-address"));
        let m = bad.recv();
        let Body::RegistrationResponse { rejected: true, error: Some(e), .. } = asap::parse(&m).unwrap().into_body() else { panic!() };
        assert_eq!(e.first_code(), CauseCode::INVALID_VALUES);
        // The good client is served in between.
        assert_eq!(good.resolve("echo", None).unwrap().len(), 1);
        // An unframeable stream closes only that connection.
        bad.send(&vector("asap-bad-length-lt-4"));
        assert!(bad.closed_within(PATIENCE), "the unframeable connection is closed");
        assert_eq!(good.resolve("echo", None).unwrap().len(), 1);
    }

    pipelined_requests_are_answered_in_order(engine) {
        let r = Registrar::start(engine, 2, "");
        let mut pe = r.client();
        for i in 0..10u32 {
            pe.register(&format!("pipe-{i}"), support::pe(i + 1, tcp("127.0.0.1", 7000 + i as u16), Policy::RoundRobin, -1));
        }
        let mut pu = r.client();
        let mut burst = Vec::new();
        for k in 0..200u32 {
            burst.extend(resolution(&format!("pipe-{}", k % 10), None));
        }
        pu.send(&burst);
        for k in 0..200u32 {
            let got = parse_resolution(&pu.recv()).unwrap();
            assert_eq!(got[0].pe_id, k % 10 + 1, "answer {k} in order");
        }
    }

    more_than_a_thousand_connections(engine) {
        rserpool::runtime::raise_nofile_limit().unwrap();
        let r = Registrar::start(engine, 2, "");
        let mut pe = r.client();
        pe.register("many", support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        let mut clients: Vec<Client> = (0..1100).map(|_| r.client()).collect();
        for c in clients.iter_mut() {
            c.send(&resolution("many", None));
        }
        for c in clients.iter_mut() {
            assert_eq!(parse_resolution(&c.recv()).unwrap().len(), 1);
        }
    }

    pools_on_both_shards_from_one_connection(engine) {
        // Whichever shard accepts this connection, one of the two pools lives on the other.
        let r = Registrar::start(engine, 2, "");
        let (h0, h1) = (handle_on(0, 2, "cross"), handle_on(1, 2, "cross"));
        let mut pe = r.client();
        assert!(!pe.register(&h0, support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1)).0);
        assert!(!pe.register(&h1, support::pe(2, tcp("127.0.0.1", 7001), Policy::RoundRobin, -1)).0);
        let mut pu = r.client();
        assert_eq!(pu.resolve(&h0, None).unwrap()[0].pe_id, 1);
        assert_eq!(pu.resolve(&h1, None).unwrap()[0].pe_id, 2);
        // Closing the PE's connection removes its PEs on both shards.
        drop(pe);
        eventually("both pools are empty", || {
            pu.resolve(&h0, None) == Err(CauseCode::UNKNOWN_POOL_HANDLE)
                && pu.resolve(&h1, None) == Err(CauseCode::UNKNOWN_POOL_HANDLE)
        });
    }

    every_answer_arrives_after_the_client_shuts_down_its_side(engine) {
        // Requests for pools on both shards, then the client's FIN: the answers owed by the other
        // shard still arrive before the registrar closes the connection.
        let r = Registrar::start(engine, 2, "");
        let (h0, h1) = (handle_on(0, 2, "fin"), handle_on(1, 2, "fin"));
        let mut pe = r.client();
        pe.register(&h0, support::pe(1, tcp("127.0.0.1", 7000), Policy::RoundRobin, -1));
        pe.register(&h1, support::pe(2, tcp("127.0.0.1", 7001), Policy::RoundRobin, -1));
        let mut pu = r.client();
        let mut burst = Vec::new();
        for k in 0..100 {
            burst.extend(resolution(if k % 2 == 0 { &h0 } else { &h1 }, None));
        }
        pu.send(&burst);
        pu.stream.shutdown(std::net::Shutdown::Write).unwrap();
        for k in 0..100u32 {
            let got = parse_resolution(&pu.recv()).unwrap();
            assert_eq!(got[0].pe_id, k % 2 + 1, "answer {k}");
        }
        assert!(pu.closed_within(PATIENCE), "then the registrar closes");
    }

    sigterm_stops_cleanly(engine) {
        let r = Registrar::start(engine, 2, "");
        let mut c = r.client();
        assert_eq!(c.resolve("x", None), Err(CauseCode::UNKNOWN_POOL_HANDLE));
        let status = r.terminate();
        assert!(status.success(), "exit status {status:?}");
    }
}

#[test]
fn register_and_resolve_commands() {
    let r = Registrar::start("auto", 2, ANY_ADDRESS);
    let addr = r.addr.to_string();
    let bin = env!("CARGO_BIN_EXE_rserpool");
    let mut pe = std::process::Command::new(bin)
        .args(["register", "--registrar", &addr, "--pool", "cli", "--transport", "sctp:192.0.2.5:9000"])
        .args(["--transport", "sctp:[2001:db8::5]:9000", "--policy", "lu:25%", "--id", "abcd1234"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pu = r.client();
    eventually("the PE registered", || pu.resolve("cli", None).is_ok());
    let out =
        std::process::Command::new(bin).args(["resolve", "--registrar", &addr, "--json", "cli"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pool_elements"][0]["pe_id"], "0xabcd1234");
    assert_eq!(v["pool_elements"][0]["user_transport"]["addresses"], serde_json::json!(["192.0.2.5", "2001:db8::5"]));
    assert_eq!(v["policy"]["policy"], "Least Used");
    // Ctrl-C: the PE deregisters and exits 0.
    let _ = std::process::Command::new("kill").args(["-INT", &pe.id().to_string()]).status();
    assert!(pe.wait().unwrap().success());
    assert_eq!(pu.resolve("cli", None), Err(CauseCode::UNKNOWN_POOL_HANDLE));
    // An unknown pool: exit status 1.
    let out = std::process::Command::new(bin).args(["resolve", "--registrar", &addr, "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn registering_someone_elses_address_is_refused_with_cause_0xa() {
    let r = Registrar::start("auto", 2, "");
    let addr = r.addr.to_string();
    let bin = env!("CARGO_BIN_EXE_rserpool");
    let register = |transport: &str| {
        std::process::Command::new(bin)
            .args(["register", "--registrar", &addr, "--pool", "mine", "--transport", transport, "--once"])
            .output()
            .unwrap()
    };
    let out = register("tcp:192.0.2.5:9000");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cause 0xa"), "{stderr}");
    let mut pu = r.client();
    assert_eq!(pu.resolve("mine", None), Err(CauseCode::UNKNOWN_POOL_HANDLE));
    // Its own address (here loopback, where the connection comes from) is accepted.
    let mut pe = r.client();
    let (rejected, cause) = pe.register(
        "mine",
        support::pe(
            7,
            TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), 9000),
            Policy::RoundRobin,
            -1,
        ),
    );
    assert!(!rejected, "{cause:?}");
    assert_eq!(pu.resolve("mine", None).map(|pes| pes.len()), Ok(1));
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = TempDir::new("badcfg");
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, "[timers]\nkeep_alive_intervall = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rserpool"))
        .args(["registrar", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keep_alive_intervall"), "{err}");
    // --print-config shows every key with its default.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rserpool"))
        .args(["registrar", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: rserpool::config::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, rserpool::config::Config::default());
    let _ = Duration::ZERO;
}

#[test]
fn server_announce_is_multicast_when_enabled() {
    use std::net::{Ipv4Addr, UdpSocket};
    // Listen on the group on the loopback interface, then start a registrar announcing there.
    let group = Ipv4Addr::new(239, 0, 0, 50);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
    let sock: UdpSocket = sock.into();
    let port = sock.local_addr().unwrap().port();
    if sock.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).is_err() {
        eprintln!("multicast is not available on loopback here; skipping");
        return;
    }
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let r = Registrar::start(
        "auto",
        1,
        &format!("[announce]\nenabled = true\ngroup = \"239.0.0.50:{port}\"\ninterface = \"127.0.0.1\"\n[timers]\nserver_announce = 50\n"),
    );
    let mut buf = [0u8; 1500];
    let n = match sock.recv(&mut buf) {
        Ok(n) => n,
        Err(e) => panic!("no Server Announce received: {e}; log {:?}", r.log()),
    };
    let m = asap::parse(&buf[..n]).unwrap();
    let Body::ServerAnnounce { server_id, transports } = m.into_body() else { panic!("not a Server Announce") };
    assert_eq!(server_id, 0x1122_3344);
    let t: Vec<_> = transports.map(|t| t.to_repr()).collect();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].protocol, TransportProtocol::Tcp);
    assert_eq!(t[0].port, r.addr.port(), "announces the ASAP listener");
}
