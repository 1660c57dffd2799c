//! What registrar shards tell each other. The engine carries these between shards in order and
//! never loses one (see [`crate::service`]).

use core::net::SocketAddr;

use crate::enrp::EnrpMsg;
use crate::service::{ConnId, Payload};

/// A message from one registrar shard to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardMsg {
    /// An ASAP message from a client connection of the sending shard, for the shard owning its
    /// pool.
    Request {
        /// The client's connection.
        conn: ConnId,
        /// The request's place among its connection's requests.
        seq: u64,
        /// The client's address.
        peer: SocketAddr,
        /// How many more PEs the connection may register (see [`crate::asap::Request::room`]).
        room: u32,
        /// The whole message.
        message: Payload,
    },
    /// The answer to request `seq` of `conn` (possibly empty), for the connection's shard to
    /// send in request order.
    Reply {
        /// The client's connection.
        conn: ConnId,
        /// The request's place.
        seq: u64,
        /// The answer's messages, back to back.
        answer: Payload,
        /// The request was a Registration (its PE count may have changed).
        registration: bool,
        /// It was refused for a resource limit (cause 0x6).
        refused: bool,
    },
    /// `conn` closed: the PEs registered over it go.
    ConnectionClosed {
        /// The closed connection.
        conn: ConnId,
    },
    /// The number of PEs registered over `conn` changed on the sending shard (expiry,
    /// keep-alive failure, unreachable reports, a PE that registered again elsewhere).
    ConnectionPes {
        /// The connection, owned by the receiving shard.
        conn: ConnId,
        /// The change.
        delta: i32,
    },
    /// ENRP work between shards.
    Enrp(EnrpMsg),
}

impl From<EnrpMsg> for ShardMsg {
    fn from(m: EnrpMsg) -> Self {
        Self::Enrp(m)
    }
}
