//! Abusive clients against the registrar process, on each engine: each abuse must run into its
//! limit cleanly while a well-behaved client keeps being answered correctly. No timing
//! assertions: waits are deadlock guards. The latency side by side is `loadgen abuse`
//! (results/abuse/README.md).

#[macro_use]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rserpool::wire::asap::{self, Body};
use rserpool::wire::{Policy, TransportProtocol, TransportRepr};
use support::*;

fn user(port: u16) -> TransportRepr {
    TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), port)
}

/// Registers PEs 1..=n in `handle` over a connection kept open (returned).
fn pool(r: &Registrar, handle: &str, n: u32) -> Client {
    let mut c = r.client();
    for id in 1..=n {
        assert_eq!(c.register(handle, pe(id, user(9000 + id as u16), Policy::RoundRobin, 600_000)), (false, None));
    }
    c
}

/// A resolution of `handle` gives the PEs 1..=n (the default answer is at most 3 of them).
fn resolves_right(c: &mut Client, handle: &str, n: u32) {
    let pes = c.resolve(handle, Some(n)).expect("the pool resolves");
    let mut ids: Vec<u32> = pes.iter().map(|p| p.pe_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "the resolution names exactly the registered PEs");
}

/// A socket with small kernel buffers, so that the registrar's limits, not the kernel's, are
/// what stop the abuser early.
fn small_socket(r: &Registrar) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.set_send_buffer_size(4096).unwrap();
    s.connect(&r.addr.into()).unwrap();
    s.into()
}

/// Writes `msg` back to back on nonblocking `s` until writes have been refused for `quiet`
/// (the registrar stopped reading), checking on `other` meanwhile; returns the whole messages
/// written, or `None` if the registrar closed the connection.
fn write_until_stalled(s: &mut TcpStream, msg: &[u8], quiet: Duration, mut other: impl FnMut()) -> Option<u64> {
    s.set_nonblocking(true).unwrap();
    let batch: Vec<u8> = msg.iter().copied().cycle().take(msg.len() * 256).collect();
    let (mut written, mut at) = (0u64, 0usize);
    let mut stalled_since = None;
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        assert!(Instant::now() < deadline, "the registrar kept reading a client that never reads");
        match s.write(&batch[at..]) {
            Ok(n) => {
                written += n as u64;
                at = (at + n) % batch.len();
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > quiet {
                    // A message cut by the stall is never completed, so never answered.
                    return Some(written / msg.len() as u64);
                }
                other();
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return None,
        }
    }
}

/// Reads whole answers off `s` until `want` have come; checks each is a resolution of `handle`.
fn read_answers(s: TcpStream, handle: &str, want: u64) {
    s.set_nonblocking(false).unwrap();
    let mut c = Client::over(s);
    for i in 0..want {
        let m = c.recv_within(PATIENCE).unwrap_or_else(|| panic!("answer {i} of {want} never came"));
        let p = asap::parse(&m).unwrap();
        let Body::HandleResolutionResponse { pool_handle, .. } = p.body() else { panic!("not a resolution response") };
        assert_eq!(*pool_handle, handle.as_bytes());
    }
}

both_engines! {
    // A client that pipelines requests and never reads: once its answers fill max_send_queue
    // the registrar stops reading it (its writes stall), it is not served further, and another
    // client is answered all along. When it finally reads, every answer is there, in order.
    never_reading_client_is_paused_at_max_send_queue_while_others_are_answered(engine) {
        let r = Registrar::start(engine, 1, "[limits]\nmax_send_queue = 16384\n");
        let _pes = pool(&r, "nr", 3);
        let mut good = r.client();
        let mut abuser = small_socket(&r);
        let req = resolution("nr", Some(3));
        let mut answered = 0;
        let written = write_until_stalled(&mut abuser, &req, Duration::from_secs(1), || {
            resolves_right(&mut good, "nr", 3);
            answered += 1;
        })
        .expect("the registrar pauses the never-reading client, it does not close it");
        assert!(answered > 0, "the other client was answered while the abuser was stalled");
        // Stalled: the registrar no longer reads it. Still stalled a while later, while the
        // other client goes on.
        for _ in 0..20 {
            resolves_right(&mut good, "nr", 3);
        }
        assert!(matches!(abuser.write(&req[..1]), Err(e) if e.kind() == ErrorKind::WouldBlock));
        read_answers(abuser, "nr", written);
        resolves_right(&mut good, "nr", 3);
        assert!(r.log().iter().all(|l| !l.contains("panicked")));
    }

    // A slow reader (a few hundred bytes now and then) gets every answer, in order, and the
    // registrar keeps answering another client meanwhile.
    slow_reader_gets_every_answer_and_others_are_not_held_up(engine) {
        let r = Registrar::start(engine, 1, "[limits]\nmax_send_queue = 16384\n");
        let _pes = pool(&r, "sr", 3);
        let mut good = r.client();
        let mut slow = small_socket(&r);
        let req = resolution("sr", Some(3));
        let written = write_until_stalled(&mut slow, &req, Duration::from_millis(500), || {
            resolves_right(&mut good, "sr", 3);
        })
        .expect("not closed");
        // Read slowly: 512 bytes at a time, serving the good client in between.
        slow.set_nonblocking(false).unwrap();
        slow.set_read_timeout(Some(PATIENCE)).unwrap();
        let framer = rserpool::wire::Framer::new(rserpool::wire::Protocol::Asap, 65535);
        let (mut pending, mut got) = (Vec::new(), 0u64);
        let mut buf = [0u8; 512];
        while got < written {
            let n = slow.read(&mut buf).expect("answers keep coming");
            assert!(n > 0, "the registrar closed a slow reader");
            pending.extend_from_slice(&buf[..n]);
            while let Ok(rserpool::wire::Frame::Complete(m)) = framer.frame(&pending) {
                let len = m.len();
                assert!(matches!(asap::parse(m).unwrap().body(), Body::HandleResolutionResponse { .. }));
                pending.drain(..len);
                got += 1;
            }
            if got % 64 == 0 {
                resolves_right(&mut good, "sr", 3);
            }
        }
        assert_eq!(got, written);
    }

    // Half-open connections (connected and silent, or half a message sent) only take their
    // connection slots: others are answered, a half message completed later is answered, and one
    // whose header promises more than max_message_size is closed.
    half_open_connections_hold_only_their_slot(engine) {
        let r = Registrar::start(engine, 2, "[limits]\nmax_message_size = 4096\n");
        let _pes = pool(&r, "ho", 2);
        let mut silent: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(r.addr).unwrap()).collect();
        let req = resolution("ho", Some(2));
        let mut halves: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut s = TcpStream::connect(r.addr).unwrap();
                s.write_all(&req[..req.len() / 2]).unwrap();
                s
            })
            .collect();
        let mut good = r.client();
        for _ in 0..20 {
            resolves_right(&mut good, "ho", 2);
        }
        // The halves are kept: completing one gets its answer.
        let mut s = halves.pop().unwrap();
        s.write_all(&req[req.len() / 2..]).unwrap();
        let mut c = Client::over(s);
        match asap::parse(&c.recv()).unwrap().body() {
            Body::HandleResolutionResponse { pool_handle, .. } => assert_eq!(*pool_handle, b"ho"),
            other => panic!("unexpected {other:?}"),
        }
        // A header promising more than max_message_size: the stream cannot be framed, closed.
        let mut big = TcpStream::connect(r.addr).unwrap();
        big.write_all(&[0x03, 0x00, 0xff, 0xff, 0, 0, 0, 0]).unwrap();
        let mut big = Client::over(big);
        assert!(big.closed_within(PATIENCE), "an oversize header closes the connection");
        // Silent ones stay open (no idle timeout) and cost nothing to the others.
        silent.truncate(10);
        for _ in 0..20 {
            resolves_right(&mut good, "ho", 2);
        }
        drop(halves);
        drop(silent);
        resolves_right(&mut good, "ho", 2);
    }

    // A flood past max_connections: the connections over the limit are accepted and closed at
    // once, the existing client keeps working, and once the flood goes away new connections are
    // served again.
    connection_flood_past_max_connections_is_refused_and_existing_clients_keep_working(engine) {
        let r = Registrar::start(engine, 1, "[limits]\nmax_connections = 16\n");
        let _pes = pool(&r, "fl", 2);
        let mut good = r.client();
        resolves_right(&mut good, "fl", 2);
        let flood: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(r.addr).unwrap()).collect();
        let mut refused = 0;
        let mut held = Vec::new();
        for s in flood {
            let mut c = Client::over(s);
            if c.closed_within(Duration::from_millis(300)) {
                refused += 1;
            } else {
                held.push(c);
            }
        }
        // 2 connections are ours (the pool's and the good client's): at most 14 more fit.
        assert!(held.len() <= 14, "at most max_connections are served: {} held", held.len());
        assert!(refused >= 64 - 14, "the rest are refused: {refused}");
        for _ in 0..20 {
            resolves_right(&mut good, "fl", 2);
        }
        // The held ones are served too.
        if let Some(c) = held.first_mut() {
            resolves_right(c, "fl", 2);
        }
        drop(held);
        // The slots come back.
        eventually("a new connection is served after the flood", || {
            let mut c = r.client();
            if c.closed_within(Duration::from_millis(50)) {
                return false;
            }
            resolves_right(&mut c, "fl", 2);
            true
        });
        assert!(r.log().iter().all(|l| !l.contains("panicked")));
    }

    // A client that half-closes after pipelining requests for pools on another shard still gets
    // every answer (the registrar holds the connection, up to max_hold), then the close.
    half_closed_client_gets_its_cross_shard_answers(engine) {
        let r = Registrar::start(engine, 2, "");
        let handle = handle_on(1, 2, "hc");
        let _pes = pool(&r, &handle, 2);
        let mut s = TcpStream::connect(r.addr).unwrap();
        let req = resolution(&handle, Some(2));
        let many: Vec<u8> = req.iter().copied().cycle().take(req.len() * 500).collect();
        s.write_all(&many).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut c = Client::over(s);
        for _ in 0..500 {
            let m = c.recv();
            assert!(matches!(asap::parse(&m).unwrap().body(), Body::HandleResolutionResponse { .. }));
        }
        assert!(c.closed_within(PATIENCE), "closed once every answer is out");
    }
}
