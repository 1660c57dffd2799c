//! The registrar's ASAP side, sans-IO: messages and time in, actions out (WIRE.md section 6).
//!
//! [`Registrar`] is one shard of a registrar as a [`crate::service::Service`]: it frames the
//! bytes of client connections, routes each request to the shard that owns its pool, applies
//! the procedures (registration, deregistration, handle resolution, keep-alive supervision,
//! unreachable reports, lifetimes) to the handlespace, and answers through the engine's outbox.

mod keepalive;
mod order;
mod post;
mod registrar;
mod reply;
mod reports;
#[cfg(test)]
mod tests;

pub use registrar::{Registrar, RegistrarConfig, Stats};
