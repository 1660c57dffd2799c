//! What the ENRP parts of a registrar's shards tell each other. The coordinator (the shard
//! that holds the peer connections) forwards what peers send to the shards owning the pools
//! concerned, and gathers what it needs from every shard; the engine carries these in order
//! per pair of shards, which is what makes a gathered checksum include every update forwarded
//! before it.

use crate::service::{ConnId, Payload};

/// A message between the ENRP parts of two shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrpMsg {
    /// Handle Updates about this registrar's own PEs, encoded by a pool shard, for the
    /// coordinator to write to every peer; `add`/`sub` are their effect on this registrar's
    /// own PE checksum (unfolded words), which the coordinator announces in Presence.
    Outgoing {
        /// Whole ENRP messages, back to back.
        updates: Payload,
        /// Checksum words of PEs that became this registrar's.
        add: u64,
        /// Checksum words of PEs that stopped being this registrar's.
        sub: u64,
    },
    /// Handle Updates from peers for pools of the receiving shard: whole validated messages,
    /// back to back, in the order they arrived (one record for all those one read brought).
    Updates {
        /// The messages.
        messages: Payload,
    },
    /// Handle table groups (Pool Handle, then its Pool Elements, as parameters) from a peer's
    /// Handle Table Response, for the shard owning those pools.
    Table {
        /// The groups' parameters, back to back.
        groups: Payload,
    },
    /// Start replacing `owner`'s PEs with what its table says (an audit): entries that arrive
    /// until [`EnrpMsg::ReplaceEnd`] are kept, the others go.
    ReplaceBegin {
        /// The audited peer.
        owner: u32,
    },
    /// The audited table is complete: `owner`'s PEs it did not list go.
    ReplaceEnd {
        /// The audited peer.
        owner: u32,
    },
    /// The audit of `owner` was given up (its table never completed): nothing goes.
    ReplaceAbort {
        /// The audited peer.
        owner: u32,
    },
    /// Asks for this shard's part of `owner`'s checksum and PE count.
    SumQuery {
        /// Whose PEs.
        owner: u32,
        /// Names the gathering.
        token: u64,
    },
    /// A shard's part of `owner`'s checksum (unfolded words) and PE count.
    SumPart {
        /// Whose PEs.
        owner: u32,
        /// The gathering.
        token: u64,
        /// Unfolded checksum words.
        sum: u64,
        /// PEs.
        count: u64,
    },
    /// Write the next chunk of this shard's handle table (all PEs, or with `own_only` this
    /// registrar's) to peer `requester` over `conn`; `first` starts a fresh walk of the table, `last`
    /// says no shard comes after this one.
    Export {
        /// The requester's connection.
        conn: ConnId,
        /// The requester's server id.
        requester: u32,
        /// W flag of the request.
        own_only: bool,
        /// A new transfer: walk the table from its start.
        first: bool,
        /// No shard after this one (the M flag is cleared once this one is exhausted).
        last: bool,
    },
    /// A shard wrote a chunk for `requester`; `exhausted` when its walk has sent its last PE.
    Exported {
        /// The requester.
        requester: u32,
        /// Nothing more on this shard.
        exhausted: bool,
    },
    /// Drop the export in progress to `requester` (it went away).
    ExportAbort {
        /// The requester.
        requester: u32,
    },
    /// The PEs of registrar `from` now belong to `to` (a takeover).
    TakeOver {
        /// The dead registrar.
        from: u32,
        /// Its successor.
        to: u32,
    },
}
