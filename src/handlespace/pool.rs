//! A pool: its handle, the consistency settings its first PE fixed, and its selection index.

use crate::wire::policy::PolicyType;
use crate::wire::transport::{TransportProtocol, TransportUse};

use super::selection::Selector;

/// A stable handle to a pool: slab index plus a generation (see [`PeKey`](super::PeKey)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// A pool of PEs sharing one pool handle. Its policy type, user transport protocol and transport
/// use are set by its first PE; every later PE must match them (WIRE.md section 6.1).
#[derive(Debug)]
pub struct Pool {
    /// Inline up to 24 bytes: the handle lookup compares it without another cache miss.
    pub(crate) handle: smallvec::SmallVec<[u8; 24]>,
    /// The handle's hash in its handlespace's tables (kept: rehashing and removal need no
    /// rehash of the bytes, and the PE table's hash builds on it).
    pub(crate) hash: u64,
    /// Sum of the handle's 16-bit words, for the PE checksum of each of its PEs (a handle fits
    /// in one message, so at most 32,768 words: the sum fits 32 bits).
    pub(crate) handle_words: u32,
    pub(crate) policy_type: PolicyType,
    pub(crate) protocol: TransportProtocol,
    pub(crate) transport_use: TransportUse,
    pub(crate) generation: u32,
    pub(crate) selector: Selector,
}

impl Pool {
    /// The pool handle.
    pub fn handle(&self) -> &[u8] {
        &self.handle
    }

    /// The pool's selection policy type (emitted first in a Handle Resolution Response).
    pub fn policy_type(&self) -> PolicyType {
        self.policy_type
    }

    /// The user transport protocol every PE of the pool uses.
    pub fn user_transport_protocol(&self) -> TransportProtocol {
        self.protocol
    }

    /// The transport use every PE of the pool declares.
    pub fn transport_use(&self) -> TransportUse {
        self.transport_use
    }

    /// Number of PEs in the pool (never 0: an empty pool is removed).
    pub fn pe_count(&self) -> usize {
        self.selector.len()
    }
}
