//! Server Announce by UDP multicast (WIRE.md section 6.1; off by default): every T6 the
//! registrar multicasts its id and ASAP transport so clients can find it without configuration.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rserpool::config::Announce;
use rserpool::wire::asap::MessageType;
use rserpool::wire::{transport, TransportProtocol, TransportRepr, Writer};
use tracing::{info, warn};

/// A running announcer.
pub struct Announcer {
    stop: Arc<AtomicBool>,
}

impl Announcer {
    /// Stops announcing (within one period).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The Server Announce message for registrar `id` reachable at `asap`.
pub fn message(id: u32, asap: SocketAddr) -> Vec<u8> {
    let mut buf = Vec::new();
    let t = TransportRepr::new(TransportProtocol::Tcp, asap.ip(), asap.port());
    let _ = Writer::new(&mut buf).message(MessageType::ServerAnnounce as u8, 0, |w| {
        w.u32(id);
        transport::emit(w, &t);
    });
    buf
}

/// Starts a thread multicasting Server Announces to `cfg.group` every `period_ms`.
pub fn start(id: u32, asap: SocketAddr, cfg: &Announce, period_ms: u64) -> std::io::Result<Announcer> {
    let bind: SocketAddr = match cfg.group.ip() {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => ("::".parse::<IpAddr>().map_err(std::io::Error::other)?, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    if cfg.group.is_ipv4() {
        socket.set_multicast_ttl_v4(cfg.ttl)?;
        if !cfg.interface.is_unspecified() {
            socket2::SockRef::from(&socket).set_multicast_if_v4(&cfg.interface)?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let group = cfg.group;
    let msg = message(id, asap);
    std::thread::Builder::new().name("rserpool-announce".into()).spawn(move || {
        info!("announcing to {group} every {period_ms} ms");
        let mut warned = false;
        while !flag.load(Ordering::Relaxed) {
            if let Err(e) = socket.send_to(&msg, group) {
                if !warned {
                    warn!("server announce to {group}: {e}");
                    warned = true;
                }
            }
            std::thread::sleep(Duration::from_millis(period_ms.max(10)));
        }
    })?;
    Ok(Announcer { stop })
}
