//! One registrar shard as a [`crate::service::Service`]: the router that ties the ASAP
//! procedures of [`crate::asap`] to client connections and to the other shards.
//!
//! - `router.rs`: [`Registrar`] frames each connection's bytes, sends each request to the shard
//!   that owns its pool (a fixed hash of the pool handle), keeps answers in request order,
//!   counts a connection's PEs on every shard (the per-connection limit is registrar-wide),
//!   and tells the shards holding a connection's PEs when it closes.
//! - `msg.rs`: [`ShardMsg`], everything shards tell each other.
//! - `order.rs`: the per-connection answer sequence.

#[cfg(test)]
mod enrp_sim_tests;
mod msg;
mod order;
mod router;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod sim_tests;
mod status;
#[cfg(test)]
mod tests;

pub use msg::ShardMsg;
pub use router::{Registrar, RegistrarConfig, ASAP, COORDINATOR, ENRP, ENRP_TLS};
pub use status::{PeerReport, StatusReport, STATUS_REQUEST, STATUS_RESPONSE};
