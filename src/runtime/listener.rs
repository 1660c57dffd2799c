//! Listening sockets: one per shard, all bound to the same address with `SO_REUSEPORT` so the
//! kernel spreads incoming connections across shards.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket};

use super::{EngineError, Transport};

/// Binds `count` listeners to `addr`. With port 0 they all bind one port nothing is bound to,
/// so that all shards share one address.
pub(crate) fn bind_all(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    transport: Transport,
) -> Result<Vec<TcpListener>, EngineError> {
    if addr.port() != 0 {
        ensure_free(addr, transport)?;
        return bind_group(addr, count, backlog, transport);
    }
    // The port the kernel picked for a first socket bound with the group's reuse options was
    // refused to the second ("address in use", seen in CI with many tests binding and
    // connecting at once, even after 8 fresh attempts; not reproduced). With `SO_REUSEADDR` the
    // kernel's choice may fall on a port that other sockets hold (TIME_WAIT, connections),
    // which a listener then conflicts with; a probe without any reuse option is only given a
    // port nothing is bound to, and the group binds that port by number. Between the two,
    // someone else may take it: the group then starts again on a fresh one.
    let mut attempt = 1;
    loop {
        let group = unused_port(addr, transport).and_then(|port| {
            let mut addr = addr;
            addr.set_port(port);
            bind_group(addr, count, backlog, transport)
        });
        match group {
            Err(EngineError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempt < PORT_ZERO_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Times a group on port 0 is bound afresh before "address in use" is given up on.
const PORT_ZERO_ATTEMPTS: usize = 8;

/// Binds `count` listeners to `addr` (a port given by number).
fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    transport: Transport,
) -> Result<Vec<TcpListener>, EngineError> {
    (0..count).map(|_| bind_one(addr, backlog, transport)).collect()
}

/// A port of `addr`'s address that nothing is bound to now: a socket without reuse options
/// bound to port 0, then closed (it never listened or connected, so it leaves no TIME_WAIT).
fn unused_port(addr: SocketAddr, transport: Transport) -> Result<u16, EngineError> {
    let err = |source| EngineError::Bind { addr, source };
    let local = probe(addr, transport, false)?.local_addr().map_err(err)?;
    local.as_socket().map(|a| a.port()).ok_or_else(|| err(std::io::Error::other("not an IP socket")))
}

/// A socket of `transport` bound to `addr` (never listening), with `SO_REUSEADDR` if
/// `reuse_address`.
fn probe(addr: SocketAddr, transport: Transport, reuse_address: bool) -> Result<Socket, EngineError> {
    let err = |source| EngineError::Bind { addr, source };
    let (ty, proto) = transport.socket_kind();
    let probe = Socket::new(Domain::for_address(addr), ty, Some(proto)).map_err(err)?;
    probe.set_reuse_address(reuse_address).map_err(err)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true).map_err(err)?;
    }
    probe.bind(&addr.into()).map_err(err)?;
    Ok(probe)
}

/// `SO_REUSEPORT` lets any process of the same user join a port that is already served, which
/// would silently split clients between two servers. A bind without it fails if anyone listens
/// on the address, so a probe tells "in use" before the shards' group binds.
fn ensure_free(addr: SocketAddr, transport: Transport) -> Result<(), EngineError> {
    // Connections in TIME_WAIT from an earlier run do not count as "in use".
    probe(addr, transport, true).map(drop)
}

fn bind_one(addr: SocketAddr, backlog: i32, transport: Transport) -> Result<TcpListener, EngineError> {
    let err = |source| EngineError::Bind { addr, source };
    let (ty, proto) = transport.socket_kind();
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    if addr.is_ipv6() {
        // An explicit IPv6 address means IPv6 only; listening on both families takes two
        // configured addresses, which keeps the behaviour independent of the host's sysctl.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_already_served_is_refused() {
        let first = bind_all("127.0.0.1:0".parse().unwrap(), 2, 128, Transport::Tcp).unwrap();
        let addr = first[0].local_addr().unwrap();
        let second = bind_all(addr, 2, 128, Transport::Tcp);
        assert!(matches!(second, Err(EngineError::Bind { .. })), "{second:?}");
        drop(first);
        assert!(bind_all(addr, 2, 128, Transport::Tcp).is_ok(), "free again once the first is gone");
    }

    #[test]
    fn port_zero_binds_all_to_one_port() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3, 128, Transport::Tcp).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }
}
