//! ENRP (RFC 5353, WIRE.md section 7): registrars that peer, stay in sync, audit each other by
//! per-owner checksums and take over a dead peer's PEs. Sans-IO, driven by the registrar's
//! router through the same seam as ASAP.
//!
//! - [`Coordinator`] (one shard): peers, connections, Presence and liveness, joining through a
//!   mentor, audits, table transfers, takeovers.
//! - [`EnrpShard`] and [`UpdateEncoder`] (every shard): the pools the shard owns — Handle
//!   Updates of this registrar's own PEs encoded once as they change; peers' updates, table
//!   entries, audits, exports and takeovers applied through [`crate::asap::Procedures`].
//! - [`EnrpMsg`]: what they tell each other across shards.
//! - [`Discovery`]: peers heard by multicast Presence (optional), handed to the coordinator.

/// The tag of ENRP connections (peer registrars).
pub const ENRP: crate::service::Tag = crate::service::Tag(1);

/// The tag of ENRP connections accepted on the mutual TLS listener (`docs/TLS.md`): served
/// like [`ENRP`], with the peer authenticated by a certificate from the mesh's CA before the
/// registrar hears of the connection.
pub const ENRP_TLS: crate::service::Tag = crate::service::Tag(2);

mod coordinator;
pub mod discovery;
mod msg;
mod reply;
mod shard;

pub use coordinator::{Coordinator, EnrpConfig, EnrpStats, EnrpStatus, PeerStatus, Sync};
pub use discovery::Discovery;
pub use msg::EnrpMsg;
pub use shard::{EnrpShard, UpdateEncoder, EXPORT_WINDOW};
