//! The registrar's ASAP procedures, sans-IO: messages and time in; answers, keep-alive probes
//! and PE changes out (WIRE.md section 6.1).
//!
//! [`Procedures`] holds one shard's part of the handlespace and applies registration,
//! deregistration, handle resolution, keep-alive supervision, unreachable reports and
//! lifetimes to it. It does not know about other shards: [`crate::registrar`] frames the bytes
//! of client connections, hands each message to the shard owning its pool and keeps answers
//! in request order. Every PE added, updated or removed is reported to a [`ChangeSink`] with
//! its [`Reason`] (ENRP's hook for Handle Updates).

mod authorize;
mod budget;
mod change;
mod keepalive;
pub(crate) mod loglimit;
mod peers;
mod procedures;
mod reply;
mod reports;
#[cfg(test)]
mod tests;

/// The tag of ASAP connections (pool elements and pool users), listened on or dialled.
pub const ASAP: crate::service::Tag = crate::service::Tag(0);

pub use authorize::{peer_admitted, Authorizer};
pub use budget::{Budget, Budgets};
pub use change::{Change, ChangeSink, PeChange, Reason};
pub use peers::Learnt;
pub use procedures::{Handled, Procedures, ProceduresConfig, Request, Stats};
