//! A stand-in ENRP peer that feeds a registrar Handle Updates at a fixed rate, for
//! `loadgen peer-updates --feed`.
//!
//! Measuring a registrar's resolution throughput under a real peer's updates needs the peer,
//! its churn clients and the resolution clients on cores of their own; on a small machine they
//! share one core, and the resolution client then starves whenever updates run. The feed takes
//! the peer's place at almost no CPU: it announces itself with a Presence, then writes
//! pre-encoded Handle Updates (adds and deletes of `slots` PEs, 4 to a pool, the pools coming
//! and going as in `loadgen propagation`'s churn) in one write per `window`, as a registrar
//! gathering its updates for that window (`timers.update_coalesce_us`) writes them. What the
//! measured registrar receives, parses, validates and applies is what a peer would send it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rserpool::wire::enrp::{self, UpdateAction};
use rserpool::wire::policy::{Policy, PolicyRepr, PolicyType};
use rserpool::wire::pool_element::PoolElementRepr;
use rserpool::wire::server_info::ServerInformationRepr;
use rserpool::wire::transport::{TransportProtocol, TransportRepr};
use rserpool::wire::Writer;

/// The feed's server id (what the registrar sees as the peer's).
pub const FEED_ID: u32 = 0xfeed_0001;

/// How the feed runs.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// The registrar's ENRP address.
    pub to: SocketAddr,
    /// Handle Updates per second.
    pub rate: f64,
    /// One write per this long (the sender's gathering window).
    pub window: Duration,
    /// PEs that come and go (each update adds an absent one or deletes a present one, in turn).
    pub slots: usize,
    /// Writes updates only while this is raised (when given): a paused feed stays connected
    /// and keeps announcing itself, and owes nothing for the time it was paused.
    pub active: Option<Arc<AtomicBool>>,
}

/// The Handle Updates of every slot, pre-encoded: `adds[i]` and `deletes[i]`.
struct Encoded {
    adds: Vec<Vec<u8>>,
    deletes: Vec<Vec<u8>>,
}

fn encode(slots: usize) -> Encoded {
    let policy = PolicyRepr::Known(Policy::from_values(PolicyType::ROUND_ROBIN, &[]).expect("Round Robin"));
    let (mut adds, mut deletes) = (Vec::with_capacity(slots), Vec::with_capacity(slots));
    for i in 0..slots {
        let handle = format!("feed-{:05}", i / 4).into_bytes();
        let addr = IpAddr::V4(Ipv4Addr::new(127, 77, (i >> 8) as u8, i as u8));
        let pe = PoolElementRepr {
            pe_id: i as u32 + 1,
            home_registrar: FEED_ID,
            registration_life: -1,
            user_transport: TransportRepr::new(TransportProtocol::Tcp, addr, 7000),
            policy: policy.clone(),
            asap_transport: Some(TransportRepr::new(TransportProtocol::Tcp, addr, 7001)),
        };
        for (action, into) in [(UpdateAction::AddPe, &mut adds), (UpdateAction::DeletePe, &mut deletes)] {
            let mut b = Vec::new();
            enrp::emit_handle_update(&mut Writer::new(&mut b), FEED_ID, 0, action, &handle, |w| pe.emit(w))
                .expect("encodable");
            into.push(b);
        }
    }
    Encoded { adds, deletes }
}

/// What a feed did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FeedResult {
    /// Handle Updates written.
    pub sent: u64,
}

/// Connects to the registrar, announces itself, and writes Handle Updates at `cfg.rate` until
/// `stop` is raised; then deletes what it added (so the registrar holds none of its PEs) and
/// closes. Everything the registrar sends is read and dropped.
pub fn run(cfg: &FeedConfig, stop: &AtomicBool) -> io::Result<FeedResult> {
    let slots = cfg.slots.max(1);
    let encoded = encode(slots);
    let mut s = TcpStream::connect(cfg.to)?;
    s.set_nodelay(true)?;
    let mut reader = s.try_clone()?;
    // Ends when the socket is shut down below (or the registrar closes).
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let local = s.local_addr()?;
    let info = ServerInformationRepr {
        server_id: FEED_ID,
        transport: TransportRepr::new(TransportProtocol::Tcp, local.ip(), local.port()),
    };
    let presence = |w: &mut Vec<u8>| {
        // Addressed to no one in particular (receiver 0): the registrar records the peer but
        // audits only Presences addressed to it, so updates in flight never start an audit.
        enrp::emit_presence(&mut Writer::new(w), FEED_ID, 0, false, 0xffff, &info).expect("encodable");
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    presence(&mut buf);
    s.write_all(&buf)?;
    let mut present = vec![false; slots];
    let mut next = 0usize;
    let mut result = FeedResult::default();
    let start = Instant::now();
    let mut last_presence = start;
    let (mut tick, mut last) = (start, start);
    // Updates owed for the time the feed was active, written whole.
    let mut owed = 0.0f64;
    while !stop.load(Ordering::Relaxed) {
        tick += cfg.window;
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = Instant::now();
        if cfg.active.as_ref().is_none_or(|a| a.load(Ordering::Relaxed)) {
            owed += now.duration_since(last).as_secs_f64() * cfg.rate;
        }
        last = now;
        buf.clear();
        if last_presence.elapsed() >= Duration::from_secs(10) {
            // Well inside MAX-TIME-LAST-HEARD, so the registrar never probes the feed.
            presence(&mut buf);
            last_presence = Instant::now();
        }
        while owed >= 1.0 {
            owed -= 1.0;
            let i = next;
            next = (next + 1) % slots;
            let update = if present[i] { &encoded.deletes[i] } else { &encoded.adds[i] };
            buf.extend_from_slice(update);
            present[i] = !present[i];
            result.sent += 1;
        }
        if !buf.is_empty() {
            s.write_all(&buf)?;
        }
    }
    buf.clear();
    for (i, p) in present.iter().enumerate() {
        if *p {
            buf.extend_from_slice(&encoded.deletes[i]);
        }
    }
    s.write_all(&buf)?;
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = drain.join();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoded_update_is_a_valid_enrp_handle_update_from_the_feed() {
        let e = encode(9);
        for (i, (add, delete)) in e.adds.iter().zip(&e.deletes).enumerate() {
            for (bytes, action) in [(add, UpdateAction::AddPe), (delete, UpdateAction::DeletePe)] {
                let m = enrp::parse(bytes).expect("valid");
                assert_eq!(m.body().sender, FEED_ID);
                let enrp::Kind::HandleUpdate { action: a, pool_handle, pool_element, .. } = m.body().kind else {
                    panic!("not a Handle Update");
                };
                assert_eq!(a, action);
                assert_eq!(pool_handle, format!("feed-{:05}", i / 4).as_bytes());
                assert_eq!(pool_element.pe_id(), i as u32 + 1);
                assert_eq!(pool_element.home_registrar(), FEED_ID);
                assert!(pool_element.asap_transport().is_some(), "ENRP Pool Elements carry their ASAP transport");
            }
        }
    }
}
