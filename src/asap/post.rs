//! What one shard hands another: a request for a pool the other shard owns (with the client's
//! address, which the owner needs to fill in unspecified addresses), or the news that a
//! connection closed (so the owner drops the PEs registered over it).

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

const REQUEST: u8 = 1;
const CLOSED: u8 = 2;
const ADDR_LEN: usize = 19;

/// A decoded post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Post<'a> {
    /// An ASAP message from a client connection, for the pool's owner shard to handle.
    Request {
        /// The client's address.
        peer: SocketAddr,
        /// The whole message.
        message: &'a [u8],
    },
    /// The connection closed.
    Closed,
}

/// Encodes a request into `buf` (cleared first).
pub(crate) fn request(buf: &mut Vec<u8>, peer: SocketAddr, message: &[u8]) {
    buf.clear();
    buf.push(REQUEST);
    let (family, ip) = match peer.ip() {
        IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (6u8, a.octets()),
    };
    buf.push(family);
    buf.extend_from_slice(&ip);
    buf.extend_from_slice(&peer.port().to_be_bytes());
    buf.extend_from_slice(message);
}

/// The encoding of [`Post::Closed`].
pub(crate) const CLOSED_POST: [u8; 1] = [CLOSED];

/// Decodes a post; `None` for bytes no shard of this process would have sent.
pub(crate) fn decode(bytes: &[u8]) -> Option<Post<'_>> {
    match bytes.split_first()? {
        (&REQUEST, rest) if rest.len() >= ADDR_LEN => {
            let ip6 = Ipv6Addr::from(<[u8; 16]>::try_from(&rest[1..17]).ok()?);
            let ip = match rest[0] {
                4 => IpAddr::V4(ip6.to_ipv4_mapped()?),
                _ => IpAddr::V6(ip6),
            };
            let port = u16::from_be_bytes([rest[17], rest[18]]);
            Some(Post::Request { peer: SocketAddr::new(ip, port), message: &rest[ADDR_LEN..] })
        }
        (&CLOSED, []) => Some(Post::Closed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_for_both_families() {
        let mut buf = Vec::new();
        for peer in ["192.0.2.7:4000", "[2001:db8::7]:5000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            request(&mut buf, peer, b"\x05\x00\x00\x04");
            assert_eq!(decode(&buf), Some(Post::Request { peer, message: b"\x05\x00\x00\x04" }));
        }
        assert_eq!(decode(&CLOSED_POST), Some(Post::Closed));
        assert_eq!(decode(&[9]), None);
        assert_eq!(decode(&[REQUEST, 4, 0]), None);
    }
}
