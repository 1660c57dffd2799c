//! ENRP peer discovery by multicast Presence (WIRE.md 1 and 7.2; off by default): a side
//! thread multicasts this registrar's Presence every PEER-HEARTBEAT-CYCLE (and once at start,
//! so that registrars already running dial it while it waits for a mentor) and hands the
//! Presences it hears to the coordinator through [`Discovery`] (see `rserpool::enrp::discovery`).

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rserpool::config::EnrpMulticast;
use rserpool::enrp::Discovery;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

/// A running multicast discovery thread.
pub struct Multicast {
    stop: Arc<AtomicBool>,
}

impl Multicast {
    /// Stops the thread (within a quarter of a second).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Longest wait in `recv` before the stop flag is looked at again.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// The socket that hears the group: bound to the group's address and port (so it hears that
/// group only), shared with other registrars on this host (SO_REUSEADDR: each gets a copy).
fn receiver(cfg: &EnrpMulticast) -> std::io::Result<UdpSocket> {
    let SocketAddr::V4(group) = cfg.group else {
        return Err(std::io::Error::other("enrp_multicast.group must be IPv4"));
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V4(group).into())?;
    s.join_multicast_v4(group.ip(), &cfg.interface)?;
    Ok(s.into())
}

/// The socket Presences leave by.
fn sender(cfg: &EnrpMulticast) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddrV4::new(cfg.interface, 0))?;
    s.set_multicast_ttl_v4(cfg.ttl)?;
    s.set_multicast_loop_v4(cfg.loopback)?;
    if !cfg.interface.is_unspecified() {
        socket2::SockRef::from(&s).set_multicast_if_v4(&cfg.interface)?;
    }
    Ok(s)
}

/// Starts the thread: joins `cfg.group`, multicasts a Presence now and every `period_ms`.
pub fn start(discovery: Arc<Discovery>, cfg: &EnrpMulticast, period_ms: u64) -> std::io::Result<Multicast> {
    let rx = receiver(cfg)?;
    let tx = sender(cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let group = cfg.group;
    let period = Duration::from_millis(period_ms.max(10));
    std::thread::Builder::new().name("rserpool-enrp-mcast".into()).spawn(move || {
        info!("ENRP multicast discovery on {group}: Presence every {period_ms} ms");
        let mut buf = vec![0u8; 65_536];
        let mut next_send = Instant::now();
        let mut warned = false;
        while !flag.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_send {
                next_send = now + period;
                if let Err(e) = tx.send_to(&discovery.presence(), group) {
                    if !warned {
                        warn!("ENRP multicast Presence to {group}: {e}");
                        warned = true;
                    }
                }
            }
            let wait = next_send.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), STOP_CHECK);
            let _ = rx.set_read_timeout(Some(wait));
            match rx.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let heard = discovery.on_datagram(&buf[..n], from);
                    debug!(%from, ?heard, "ENRP multicast datagram");
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => {
                    warn!("ENRP multicast receive on {group}: {e}");
                    std::thread::sleep(STOP_CHECK);
                }
            }
        }
        let s = discovery.stats();
        debug!(
            received = s.received,
            malformed = s.malformed,
            heard = s.heard,
            overflow = s.overflow,
            sent = s.sent,
            "ENRP multicast discovery stopped"
        );
    })?;
    Ok(Multicast { stop })
}
