//! The transport seam: which protocol the listening sockets speak and how accepted sockets are
//! configured. TCP is the only transport today; kernel SCTP (one-to-one style sockets) slots in
//! here without touching the engines or any service.

use socket2::{Protocol, SockRef, Type};

/// Transport protocol of the listeners.
///
/// ASAP and ENRP messages are self-delimiting, so on a byte stream (TCP) they are written back to
/// back and the engine reassembles them; on a message-oriented socket (SCTP) each receive returns
/// at most one message, which the same reassembly path hands on whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP, with `TCP_NODELAY` on every accepted socket.
    #[default]
    Tcp,
}

impl Transport {
    /// Whether one receive returns exactly one message (true for SCTP, false for TCP byte
    /// streams). Services never depend on it: they always report how many bytes they consumed.
    pub fn preserves_message_boundaries(self) -> bool {
        match self {
            Transport::Tcp => false,
        }
    }

    /// The socket type and protocol of the listening sockets.
    pub(crate) fn socket_kind(self) -> (Type, Protocol) {
        match self {
            Transport::Tcp => (Type::STREAM, Protocol::TCP),
        }
    }

    /// Configures a freshly accepted socket: small messages must leave at once, so Nagle's
    /// algorithm is disabled.
    pub(crate) fn configure_accepted(self, sock: SockRef<'_>) -> std::io::Result<()> {
        match self {
            Transport::Tcp => sock.set_tcp_nodelay(true),
        }
    }

    /// Configures a socket created to connect out, as [`Transport::configure_accepted`] does.
    pub(crate) fn configure_connected(self, sock: SockRef<'_>) -> std::io::Result<()> {
        self.configure_accepted(sock)
    }
}
