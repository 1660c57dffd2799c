//! Registrars that peer (ENRP), as real processes on loopback: three registrars share one
//! handlespace; one is killed (SIGKILL) and its PEs stay resolvable at the others under a new
//! home, which tells the PE with a keep-alive carrying the H flag; it comes back with a new id
//! and resynchronises from a mentor; a deregistration disappears everywhere.
//!
//! No test depends on timing: waits are bounded polls that only guard against deadlock.

mod support;

use support::{free_port, tcp};

use std::net::TcpListener;

use rserpool::wire::asap::{self, Body, MessageType};
use rserpool::wire::{Policy, PoolElementRepr};
use support::{eventually, handle_and_id, Client, Registrar, SHORT_ENRP_TIMERS};

fn start(engine: &str, id: &str, enrp: u16, peers: &[u16]) -> Registrar {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = format!("peers = [{}]\n{SHORT_ENRP_TIMERS}", peers.join(", "));
    Registrar::start_as(engine, 2, id, &format!("127.0.0.1:{enrp}"), &config)
}

fn resolve(r: &Registrar, pool: &str) -> Vec<(u32, u32)> {
    r.resolve_homes(pool)
}

fn pe(id: u32, port: u16, asap: Option<u16>) -> PoolElementRepr {
    let mut pe = support::pe(id, tcp(port), Policy::RoundRobin, -1);
    pe.asap_transport = asap.map(tcp);
    pe
}

fn three_registrars_share_survive_a_death_and_resynchronise(engine: &str) {
    if engine == "uring" && rserpool::runtime::io_uring_support().is_err() {
        eprintln!("skipping io_uring variant: io_uring unavailable");
        return;
    }
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = start(engine, "aaaa0001", pa, &[]);
    let b = start(engine, "bbbb0002", pb, &[pa]);
    let c = start(engine, "cccc0003", pc, &[pa]);
    let all = [&a, &b, &c];

    // One PE at each registrar; B's names an ASAP transport where it can be reached.
    let pe_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    pe_listener.set_nonblocking(true).unwrap();
    let asap_port = pe_listener.local_addr().unwrap().port();
    let mut at_a = a.client();
    let mut at_b = b.client();
    let mut at_c = c.client();
    assert_eq!(at_a.register("pool-a", pe(0xa1, 7001, None)), (false, None));
    assert_eq!(at_b.register("pool-b", pe(0xb2, 7002, Some(asap_port))), (false, None));
    assert_eq!(at_c.register("pool-c", pe(0xc3, 7003, None)), (false, None));
    for r in all {
        eventually("every PE resolves at every registrar, under its home", || {
            resolve(r, "pool-a") == [(0xa1, 0xaaaa0001)]
                && resolve(r, "pool-b") == [(0xb2, 0xbbbb0002)]
                && resolve(r, "pool-c") == [(0xc3, 0xcccc0003)]
        });
    }

    // B dies without a word. Its PE stays resolvable at A and C, under one new home.
    b.kill();
    let mut new_home = 0;
    eventually("B's PE is taken over, the same way at A and at C", || {
        let (ra, rc) = (resolve(&a, "pool-b"), resolve(&c, "pool-b"));
        if ra.len() == 1 && ra == rc && ra[0].1 != 0xbbbb0002 {
            new_home = ra[0].1;
            true
        } else {
            false
        }
    });
    assert!([0xaaaa0001, 0xcccc0003].contains(&new_home), "home {new_home:#x}");
    // The new home tells the PE: a keep-alive with the H flag over its ASAP transport.
    let mut stream = None;
    eventually("the new home connects to the PE's ASAP transport", || {
        stream = pe_listener.accept().ok().map(|(s, _)| s);
        stream.is_some()
    });
    let stream = stream.unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut to_home = Client::over(stream);
    let m = to_home.recv();
    let Body::EndpointKeepAlive { home, server_id, pe_id, .. } = *asap::parse(&m).unwrap().body() else {
        panic!("expected an Endpoint Keep Alive")
    };
    assert!(home, "H flag: I am your home now");
    assert_eq!((server_id, pe_id), (new_home, Some(0xb2)));
    to_home.send(&handle_and_id(MessageType::EndpointKeepAliveAck, b"pool-b", 0xb2));

    // B comes back with a new id and learns everything from a mentor.
    let b2 = start(engine, "bbbb0004", pb, &[pa]);
    eventually("the restarted registrar has the whole handlespace", || {
        resolve(&b2, "pool-a") == [(0xa1, 0xaaaa0001)]
            && resolve(&b2, "pool-b") == [(0xb2, new_home)]
            && resolve(&b2, "pool-c") == [(0xc3, 0xcccc0003)]
    });

    // A deregistration disappears everywhere, and stays gone.
    at_a.send(&handle_and_id(MessageType::Deregistration, b"pool-a", 0xa1));
    let _ = at_a.recv();
    for r in [&a, &b2, &c] {
        eventually("the deregistered PE is gone everywhere", || resolve(r, "pool-a").is_empty());
    }
    drop((at_c, to_home));
}

#[test]
fn three_registrars_on_epoll() {
    three_registrars_share_survive_a_death_and_resynchronise("epoll");
}

#[test]
fn three_registrars_on_io_uring() {
    three_registrars_share_survive_a_death_and_resynchronise("uring");
}

/// A pool element of the client library that names an ASAP transport adopts the registrar that
/// took it over (WIRE.md 6.2, 7.6): it hears the keep-alive with the H flag there.
fn a_pe_adopts_the_registrar_that_took_it_over(engine: &str) {
    use rserpool::client::blocking::PoolElement;
    use rserpool::client::node::PeNodeEvent;
    use rserpool::client::pe::PeEvent;
    use std::time::{Duration, Instant};
    if engine == "uring" && rserpool::runtime::io_uring_support().is_err() {
        eprintln!("skipping io_uring variant: io_uring unavailable");
        return;
    }
    let (pa, pb) = (free_port(), free_port());
    let a = start(engine, "aaaa0011", pa, &[]);
    let b = start(engine, "bbbb0022", pb, &[pa]);
    let mut pe = PoolElement::builder("adopt")
        .registrar(a.addr)
        .listen("127.0.0.1:0".parse().unwrap())
        .asap_listen("127.0.0.1:0".parse().unwrap())
        .lifetime(-1)
        .start()
        .expect("the PE starts");
    let id = pe.wait_registered(support::PATIENCE).expect("registered at A");
    eventually("B knows the PE, under A", || resolve(&b, "adopt") == [(id, 0xaaaa0011)]);
    a.kill();
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the PE never heard from its new home");
        match pe.next_event(Duration::from_millis(100)) {
            Some(PeNodeEvent::Pe(PeEvent::HomeChanged { server_id, .. })) => {
                assert_eq!(server_id, 0xbbbb0022, "the survivor is the new home");
                break;
            }
            _ => continue,
        }
    }
    eventually("B has the PE as its own", || resolve(&b, "adopt") == [(id, 0xbbbb0022)]);
}

#[test]
fn a_pe_adopts_its_new_home_on_epoll() {
    a_pe_adopts_the_registrar_that_took_it_over("epoll");
}

#[test]
fn a_pe_adopts_its_new_home_on_io_uring() {
    a_pe_adopts_the_registrar_that_took_it_over("uring");
}
