//! rserpool: Reliable Server Pooling (RFC 5351-5356) in Rust.
//!
//! - [`wire`]: zero-copy views and emitters for every ASAP and ENRP message and parameter.
//! - [`handlespace`]: pools, pool elements, selection policies, lifetimes, per-owner checksums.
//! - [`asap`]: the registrar's sans-IO ASAP procedures on one shard.
//! - [`enrp`]: ENRP between registrars, sans-IO: peers, sync, audits, takeovers.
//! - [`client`]: pool elements and pool users (sans-IO cores, the PU↔PE session layer, blocking
//!   and tokio adapters).
//! - [`registrar`]: one registrar shard as a service: routing across shards, answer order.
//! - [`metrics`]: per-shard counters published for a Prometheus endpoint, merged on a scrape.
//! - [`runtime`]: the thread-per-core io_uring engine (and its epoll fallback).
//! - [`service`]: the seam between protocol code and engines.
//!
//! Data flows one way: bytes → `wire` view → state machine → `handlespace` → actions → engine.
//! Only `runtime` performs I/O or contains `unsafe`.
//!
//! Cargo features: `cli` (default) adds what only the `rserpool` command needs (clap,
//! serde_json, tracing-subscriber, signal-hook); the library itself builds without it
//! (`default-features = false`). `metrics` (in `cli`) adds the Prometheus exposition and its
//! HTTP endpoint. `fuzzing` adds `wire::fuzz`, the fuzz targets' bodies.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod asap;
pub mod client;
pub mod config;
pub mod enrp;
pub mod handlespace;
pub mod metrics;
pub mod registrar;
pub mod runtime;
pub mod service;
pub mod time;
pub mod tls;
pub mod wire;
