//! What one shard hands another: a request for a pool the other shard owns (with the client's
//! address, which the owner needs to fill in unspecified addresses, and the request's place in
//! its connection's sequence), the answer to such a request, or the news that a connection
//! closed (so the owner drops the PEs registered over it).

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

const REQUEST: u8 = 1;
const CLOSED: u8 = 2;
const REPLY: u8 = 3;
const ADDR_LEN: usize = 19;

/// A decoded post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Post<'a> {
    /// An ASAP message from a client connection, for the pool's owner shard to handle.
    Request {
        /// Position of the request among its connection's requests.
        seq: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The whole message.
        message: &'a [u8],
    },
    /// What the owner shard answered to request `seq` (possibly nothing), for the connection's
    /// shard to send in request order.
    Reply {
        /// The request's position.
        seq: u64,
        /// The answer's messages, back to back (empty when there is no answer).
        bytes: &'a [u8],
    },
    /// The connection closed.
    Closed,
}

fn seq_of(rest: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

/// Encodes a request into `buf` (cleared first).
pub(crate) fn request(buf: &mut Vec<u8>, seq: u64, peer: SocketAddr, message: &[u8]) {
    buf.clear();
    buf.push(REQUEST);
    buf.extend_from_slice(&seq.to_be_bytes());
    let (family, ip) = match peer.ip() {
        IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (6u8, a.octets()),
    };
    buf.push(family);
    buf.extend_from_slice(&ip);
    buf.extend_from_slice(&peer.port().to_be_bytes());
    buf.extend_from_slice(message);
}

/// Starts a reply in `buf` (cleared first); the answer's bytes are appended after it.
pub(crate) fn reply_header(buf: &mut Vec<u8>, seq: u64) {
    buf.clear();
    buf.push(REPLY);
    buf.extend_from_slice(&seq.to_be_bytes());
}

/// The encoding of [`Post::Closed`].
pub(crate) const CLOSED_POST: [u8; 1] = [CLOSED];

/// Decodes a post; `None` for bytes no shard of this process would have sent.
pub(crate) fn decode(bytes: &[u8]) -> Option<Post<'_>> {
    match bytes.split_first()? {
        (&REQUEST, rest) if rest.len() >= 8 + ADDR_LEN => {
            let seq = seq_of(rest)?;
            let a = &rest[8..];
            let ip6 = Ipv6Addr::from(<[u8; 16]>::try_from(&a[1..17]).ok()?);
            let ip = match a[0] {
                4 => IpAddr::V4(ip6.to_ipv4_mapped()?),
                _ => IpAddr::V6(ip6),
            };
            let port = u16::from_be_bytes([a[17], a[18]]);
            Some(Post::Request { seq, peer: SocketAddr::new(ip, port), message: &a[ADDR_LEN..] })
        }
        (&REPLY, rest) if rest.len() >= 8 => Some(Post::Reply { seq: seq_of(rest)?, bytes: &rest[8..] }),
        (&CLOSED, []) => Some(Post::Closed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_round_trip() {
        let mut buf = Vec::new();
        for peer in ["192.0.2.7:4000", "[2001:db8::7]:5000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            request(&mut buf, 42, peer, b"\x05\x00\x00\x04");
            assert_eq!(decode(&buf), Some(Post::Request { seq: 42, peer, message: b"\x05\x00\x00\x04" }));
        }
        reply_header(&mut buf, 7);
        buf.extend_from_slice(b"abcd");
        assert_eq!(decode(&buf), Some(Post::Reply { seq: 7, bytes: b"abcd" }));
        reply_header(&mut buf, 8);
        assert_eq!(decode(&buf), Some(Post::Reply { seq: 8, bytes: b"" }));
        assert_eq!(decode(&CLOSED_POST), Some(Post::Closed));
        assert_eq!(decode(&[9]), None);
        assert_eq!(decode(&[REQUEST, 4, 0]), None);
    }
}
