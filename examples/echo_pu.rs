//! A pool user sending numbered messages to an echo pool in failover mode.
//!
//! ```text
//! cargo run --example echo_pu -- --registrar 127.0.0.1:3863 --pool echo --count 1000 --rate 200 --retrieval on
//! ```
//!
//! Sends `--count` messages at `--rate` messages per second over one session (the library
//! fails over by itself), waits for the answers still due, and prints one JSON line:
//! `{"sent":…,"answered":…,"lost":…,"duplicates":…,"retrieved":…,"failovers":…,"pes":[…]}`
//! — lost: never answered; duplicates: answers beyond the first for one message; retrieved:
//! messages re-sent with the resend flag to a new PE; failovers: moves to another PE after one
//! had served; pes: the PEs that served, in order. Exit status 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rserpool::client::blocking::PoolUser;
use rserpool::client::session::SessionEvent;
use rserpool::client::SessionConfig;

fn usage(why: &str) -> ! {
    eprintln!("echo_pu: {why}\nusage: echo_pu --registrar ADDR --pool NAME --count N --rate R --retrieval on|off");
    std::process::exit(2)
}

fn main() {
    let (mut registrars, mut pool, mut count, mut rate, mut retrieval) =
        (Vec::<SocketAddr>::new(), None, 100u64, 100.0f64, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--registrar" => registrars.push(value().parse().unwrap_or_else(|_| usage("bad --registrar"))),
            "--pool" => pool = Some(value()),
            "--count" => count = value().parse().unwrap_or_else(|_| usage("bad --count")),
            "--rate" => rate = value().parse().unwrap_or_else(|_| usage("bad --rate")),
            "--retrieval" => {
                retrieval = match value().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage("--retrieval takes on or off"),
                }
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let pool = pool.unwrap_or_else(|| usage("--pool is required"));
    if registrars.is_empty() || rate.is_nan() || rate <= 0.0 {
        usage("--registrar and a positive --rate are required");
    }
    let mut b = PoolUser::builder();
    for r in &registrars {
        b = b.registrar(*r);
    }
    let pu = b.start().unwrap_or_else(|e| {
        eprintln!("echo_pu: {e}");
        std::process::exit(1)
    });
    let cfg = SessionConfig { retrieval, ..SessionConfig::default() };
    let session = pu.session(pool.as_bytes(), cfg).unwrap_or_else(|e| {
        eprintln!("echo_pu: {e}");
        std::process::exit(1)
    });
    let mut answers = vec![0u32; count as usize];
    let mut pes: Vec<u32> = Vec::new();
    let mut on_event = |ev: SessionEvent, answers: &mut Vec<u32>| match ev {
        SessionEvent::Data { payload, pe_id, .. } => {
            if let Ok(b) = <[u8; 8]>::try_from(payload.as_slice()) {
                if let Some(a) = answers.get_mut(u64::from_be_bytes(b) as usize) {
                    *a += 1;
                }
            }
            if pes.last() != Some(&pe_id) {
                pes.push(pe_id);
            }
        }
        SessionEvent::PeFailed { pe_id, reason, .. } => eprintln!("echo_pu: PE {pe_id:#010x} failed: {reason}"),
        SessionEvent::Connected { pe_id, resent, .. } => eprintln!("echo_pu: on PE {pe_id:#010x} ({resent} re-sent)"),
        SessionEvent::Dropped(seqs) => eprintln!("echo_pu: {} unacknowledged messages dropped", seqs.len()),
        _ => {}
    };
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut sent = 0u64;
    while sent < count {
        let due = start + period.mul_f64(sent as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            if let Some(ev) = session.recv(wait) {
                on_event(ev, &mut answers);
            }
            continue;
        }
        match session.send(0, sent.to_be_bytes().to_vec()) {
            Ok(_) => sent += 1,
            // Too many unacknowledged: let answers come in.
            Err(_) => {
                if let Some(ev) = session.recv(Duration::from_millis(10)) {
                    on_event(ev, &mut answers);
                }
            }
        }
    }
    // The answers still due: until all are in, or nothing came for a while (bounded).
    let end = Instant::now() + Duration::from_secs(30);
    while answers.contains(&0) && Instant::now() < end {
        match session.recv(Duration::from_secs(3)) {
            Some(ev) => on_event(ev, &mut answers),
            None if session.unacked() == 0 => break,
            None => {}
        }
    }
    let stats = session.stats();
    let answered = answers.iter().filter(|&&a| a > 0).count();
    let duplicates: u32 = answers.iter().map(|&a| a.saturating_sub(1)).sum();
    let ids: Vec<String> = pes.iter().map(|p| format!("\"{p:#010x}\"")).collect();
    println!(
        "{{\"sent\":{sent},\"answered\":{answered},\"lost\":{},\"duplicates\":{duplicates},\"retrieved\":{},\"failovers\":{},\"pes\":[{}]}}",
        count as usize - answered,
        stats.resent,
        stats.failovers,
        ids.join(",")
    );
}
