//! Listening sockets: one per shard, all bound to the same address with `SO_REUSEPORT` so the
//! kernel spreads incoming connections across shards.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket};

use super::{EngineError, Transport};

/// Binds `count` listeners to `addr`. With port 0 the first socket picks the port and the others
/// bind to the same one, so that all shards share one address.
pub(crate) fn bind_all(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    transport: Transport,
) -> Result<Vec<TcpListener>, EngineError> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let listener = bind_one(addr, backlog, transport)?;
        if addr.port() == 0 {
            addr = listener.local_addr().map_err(|source| EngineError::Bind { addr, source })?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
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
    fn port_zero_binds_all_to_one_port() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3, 128, Transport::Tcp).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }
}
