//! What the rest of the registrar hears about pool elements: every PE added, updated or removed
//! on a shard, with the reason. ENRP turns these into Handle Updates; the router counts a
//! connection's PEs with them.

use crate::handlespace::PoolElement;
use crate::service::ConnId;

/// What happened to a PE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// It is new in the handlespace.
    Added,
    /// It was registered again (new transports, policy values, lifetime, or a new home).
    Updated,
    /// It is gone from the handlespace.
    Removed,
}

/// Why it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A Registration of a new PE (or of one that moved here from another connection).
    Registration,
    /// A Registration of a PE already registered over the same connection.
    Reregistration,
    /// A Deregistration from the connection it registered over.
    Deregistration,
    /// The connection it registered over closed.
    ConnectionLoss,
    /// Its registration life ended.
    Expiry,
    /// It did not answer an Endpoint Keep Alive in time.
    KeepAliveFailure,
    /// Pool users reported it unreachable MAX-BAD-PE-REPORT times.
    Unreachable,
    /// A peer registrar told of it (Handle Update, or its handle table).
    Peer,
    /// This registrar took it over from a dead peer, or a peer took it over from another.
    Takeover,
    /// Another registrar's PE with the same id won the collision (WIRE.md 7.5: the owner with
    /// the lower server id keeps it).
    Collision,
    /// Its owner's table, fetched in an audit, no longer lists it.
    Audit,
}

/// One PE change, as a [`ChangeSink`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct PeChange<'a> {
    /// Handle of the PE's pool.
    pub pool_handle: &'a [u8],
    /// The PE after the change (before it, for a removal).
    pub pe: &'a PoolElement,
    /// What happened.
    pub change: Change,
    /// Why.
    pub reason: Reason,
    /// The connection the PE was registered over before this change, when the change moved it
    /// to another one (a PE that registers again over a new connection).
    pub moved_from: Option<ConnId>,
    /// The PE's home registrar before the change (its current one for a removal; 0 for an
    /// addition): tells when ownership moved, e.g. by takeover.
    pub home_before: u32,
}

/// Receives every PE change of a shard, synchronously, as it happens.
pub trait ChangeSink {
    /// `change` happened.
    fn changed(&mut self, change: &PeChange<'_>);
}

/// A sink borrowed.
impl<S: ChangeSink + ?Sized> ChangeSink for &mut S {
    fn changed(&mut self, change: &PeChange<'_>) {
        (**self).changed(change);
    }
}

/// Two sinks, each told of every change in turn.
impl<A: ChangeSink, B: ChangeSink> ChangeSink for (A, B) {
    fn changed(&mut self, change: &PeChange<'_>) {
        self.0.changed(change);
        self.1.changed(change);
    }
}

/// A sink that ignores every change.
impl ChangeSink for () {
    fn changed(&mut self, _: &PeChange<'_>) {}
}

/// A sink that records every change (for tests and tools): pool handle, PE id, change, reason.
impl ChangeSink for Vec<(Vec<u8>, u32, Change, Reason)> {
    fn changed(&mut self, c: &PeChange<'_>) {
        self.push((c.pool_handle.to_vec(), c.pe.id, c.change, c.reason));
    }
}
