//! A pool element serving an echo over the session layer (`docs/session-layer.md`).
//!
//! ```text
//! cargo run --example echo_pe -- --registrar 127.0.0.1:3863 --pool echo [--listen 127.0.0.1:0] [--card-from-pool]
//! ```
//!
//! Registers in `--pool` at one of the `--registrar`s (repeatable; hunted in turn), then prints
//! `ready pe_id=0x… addr=…` once. Each message of a session is sent back and acknowledged
//! (in that order), and a Cookie carrying this PE's id and the session's message count follows.
//! On stdout, one line each: `session peer=…` when a PU connects, `cookie_echo …` when a PU
//! that failed over hands in the previous PE's cookie, and with `--card-from-pool`
//! `card pe_ids=…` for the Business Card sent to each new session: the pool's other PEs, in
//! the reverse of the registrar's order (so that it differs from what the policy would pick).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use rserpool::client::blocking::{PoolElement, PoolUser};
use rserpool::client::node::PeNodeEvent;
use rserpool::client::pe::PeEvent;
use rserpool::client::server::ServerEvent;

fn usage(why: &str) -> ! {
    eprintln!("echo_pe: {why}\nusage: echo_pe --registrar ADDR [--registrar ADDR...] --pool NAME [--listen ADDR] [--card-from-pool]");
    std::process::exit(2)
}

fn main() {
    let mut registrars: Vec<SocketAddr> = Vec::new();
    let (mut pool, mut listen, mut card) = (None, SocketAddr::from(([127, 0, 0, 1], 0)), false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--registrar" => registrars.push(value().parse().unwrap_or_else(|_| usage("bad --registrar"))),
            "--pool" => pool = Some(value()),
            "--listen" => listen = value().parse().unwrap_or_else(|_| usage("bad --listen")),
            "--card-from-pool" => card = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let pool = pool.unwrap_or_else(|| usage("--pool is required"));
    if registrars.is_empty() {
        usage("at least one --registrar is required");
    }
    let mut builder = PoolElement::builder(&pool).listen(listen);
    for r in &registrars {
        builder = builder.registrar(*r);
    }
    let mut pe = builder.start().unwrap_or_else(|e| {
        eprintln!("echo_pe: {e}");
        std::process::exit(1)
    });
    let pu = card.then(|| {
        let mut b = PoolUser::builder().items(128);
        for r in &registrars {
            b = b.registrar(*r);
        }
        b.start().unwrap_or_else(|e| {
            eprintln!("echo_pe: {e}");
            std::process::exit(1)
        })
    });
    let mut out = std::io::stdout();
    let mut ready = false;
    let mut counts = std::collections::HashMap::new();
    loop {
        let Some(ev) = pe.next_event(Duration::from_secs(1)) else { continue };
        match ev {
            PeNodeEvent::Pe(PeEvent::Registered { pe_id, registrar, .. }) => {
                eprintln!("echo_pe: registered {pe_id:#010x} at {registrar}");
                if !ready {
                    ready = true;
                    let _ = writeln!(out, "ready pe_id={pe_id:#010x} addr={}", pe.local_addr());
                }
            }
            PeNodeEvent::Pe(other) => eprintln!("echo_pe: {other:?}"),
            PeNodeEvent::Session(ServerEvent::Opened { session, peer }) => {
                let _ = writeln!(out, "session peer={peer}");
                if let Some(pu) = &pu {
                    let me = pe.pe_id();
                    if let Ok(pes) = pu.resolve_fresh(pool.as_bytes(), Duration::from_secs(5)) {
                        let mut others: Vec<_> = pes.into_iter().filter(|p| p.pe_id != me).collect();
                        others.reverse();
                        let ids: Vec<String> = others.iter().map(|p| format!("{:#010x}", p.pe_id)).collect();
                        let _ = writeln!(out, "card pe_ids={}", ids.join(","));
                        pe.send_business_card(session, others);
                    }
                }
            }
            PeNodeEvent::Session(ServerEvent::Data { session, stream, seq, payload, .. }) => {
                pe.send(session, stream, &payload);
                pe.ack(session, seq);
                let n = counts.entry(session).or_insert(0u64);
                *n += 1;
                pe.send_cookie(session, format!("pe={:#010x} count={n}", pe.pe_id()).as_bytes());
            }
            PeNodeEvent::Session(ServerEvent::CookieEcho { cookie, .. }) => {
                let _ = writeln!(out, "cookie_echo {}", String::from_utf8_lossy(&cookie));
            }
            PeNodeEvent::Session(ServerEvent::Closed { session, error }) => {
                counts.remove(&session);
                if let Some(e) = error {
                    eprintln!("echo_pe: session closed: {e}");
                }
            }
            PeNodeEvent::Session(_) => {}
        }
        let _ = out.flush();
    }
}
