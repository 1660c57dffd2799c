//! SIGTERM under load, with ENRP: registrar A is stopped while clients keep registering at it
//! (pipelined, on several connections); every registration A acknowledged must be known at its
//! peer B afterwards, and A must exit. A stopping registrar hands on what it already read
//! (requests crossing its shards, the Handle Updates they cause) before it closes anything, and
//! the PEs whose connections its own shutdown closes are not deleted at the peers (they are taken
//! over there, WIRE.md 7.6).
//!
//! No test depends on timing: waits are bounded polls that only guard against deadlock. The
//! figures it prints (acknowledgements, time to exit) are recorded in results/ops/.

mod support;

use support::{free_port, tcp};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rserpool::wire::asap::{self, Body, MessageType};
use rserpool::wire::{Policy, TransportProtocol, TransportRepr};
use support::{eventually, handle_and_id, registration, Client, Registrar};

/// Client connections registering at A.
const CLIENTS: u32 = 6;
/// Registrations each client keeps in flight.
const DEPTH: u32 = 16;
/// A is stopped once this many registrations were acknowledged.
const ACKED_BEFORE_STOP: usize = 3_000;

/// One client: registers PEs `client << 20 | i`, each in a pool of its own, `DEPTH` at a time,
/// until A closes the connection; returns the (pool, PE id) pairs A acknowledged.
fn register_until_closed(mut c: Client, client: u32, acked: &AtomicUsize) -> Vec<(String, u32)> {
    let mut ok = Vec::new();
    let mut next = 0u32;
    let mut in_flight = 0u32;
    loop {
        while in_flight < DEPTH && next < 1 << 20 {
            let id = client << 20 | next;
            let user = TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), 7000);
            let pe = support::pe(id, user, Policy::RoundRobin, -1);
            // A write may fail once A has closed: what was acknowledged is all that counts.
            if c.try_send(&registration(&format!("p{id:08x}"), pe)).is_err() {
                return ok;
            }
            next += 1;
            in_flight += 1;
        }
        let Some(m) = c.recv_within(support::PATIENCE) else { return ok };
        let parsed = asap::parse(&m).expect("A answers with well-formed messages");
        match parsed.body() {
            Body::RegistrationResponse { pool_handle, pe_id, rejected, .. } => {
                in_flight -= 1;
                assert!(!rejected, "A refused a registration");
                let pool = String::from_utf8(pool_handle.to_vec()).unwrap();
                ok.push((pool, *pe_id));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Body::EndpointKeepAlive { pool_handle, pe_id: Some(pe_id), .. } => {
                let _ = c.try_send(&handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, *pe_id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn acknowledged_registrations_survive_sigterm(engine: &str) {
    if engine == "uring" && rserpool::runtime::io_uring_support().is_err() {
        eprintln!("skipping io_uring variant: io_uring unavailable");
        return;
    }
    let (pa, pb) = (free_port(), free_port());
    // A: 3 shards, so that requests, answers and updates cross shards. Each client registers
    // until A closes its connection, past the default 1,024 PEs per connection when A is
    // quick and its stop slow: a refusal then would be A's limit, not a lost registration.
    let a = Registrar::start_as(
        engine,
        3,
        "aaaa0001",
        &format!("127.0.0.1:{pa}"),
        "[limits]\nmax_pes_per_connection = 1048576\n",
    );
    let b = Registrar::start_as(
        engine,
        1,
        "bbbb0002",
        &format!("127.0.0.1:{pb}"),
        &format!("peers = [\"127.0.0.1:{pa}\"]\n"),
    );
    // The warm-up PE's connection stays open: closing it would withdraw the PE, and A could see
    // the withdrawal before a new connection's registration reaches it (updates are gathered).
    let mut c = b.client();
    eventually("A and B peer", || {
        c.register("warm-up", support::pe(1, tcp(7000), Policy::RoundRobin, -1)) == (false, None) && {
            let mut at_a = a.client();
            at_a.resolve("warm-up", None).is_ok_and(|pes| pes.len() == 1)
        }
    });

    let acked = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (1..=CLIENTS)
        .map(|client| {
            let (acked, results, c) = (Arc::clone(&acked), Arc::clone(&results), a.client());
            std::thread::spawn(move || {
                let ok = register_until_closed(c, client, &acked);
                results.lock().unwrap().extend(ok);
            })
        })
        .collect();
    eventually("registrations flow", || acked.load(Ordering::Relaxed) >= ACKED_BEFORE_STOP);
    let at_signal = acked.load(Ordering::Relaxed);
    let stop = Instant::now();
    let status = a.terminate();
    let exit = stop.elapsed();
    for w in workers {
        w.join().unwrap();
    }
    assert!(status.success(), "A exits cleanly on SIGTERM: {status:?}");
    let results = results.lock().unwrap();
    println!(
        "{engine}: {at_signal} acknowledged at the signal, {} in all; A exited {:.1} ms after SIGTERM",
        results.len(),
        exit.as_secs_f64() * 1e3
    );

    // Every acknowledged registration is known at B, under A as its home (B has not taken
    // them over yet: its peer timers are the defaults).
    let mut at_b = b.client();
    for (pool, id) in results.iter() {
        eventually(&format!("{pool} (PE {id:#x}) resolves at B"), || {
            at_b.resolve(pool, Some(1))
                .is_ok_and(|pes| pes.iter().any(|p| p.pe_id == *id && p.home_registrar == 0xaaaa_0001))
        });
    }
}

#[test]
fn acknowledged_registrations_survive_sigterm_on_epoll() {
    acknowledged_registrations_survive_sigterm("epoll");
}

#[test]
fn acknowledged_registrations_survive_sigterm_on_io_uring() {
    acknowledged_registrations_survive_sigterm("uring");
}
