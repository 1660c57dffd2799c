//! loadgen: measures a registrar's handle resolution latency and throughput and its
//! registration churn, side by side with Redis GET and a bare io_uring echo server.
//!
//! The pieces, each testable without a network:
//! - [`pacing`]: the open-loop schedule (intended send times) and how it is split across threads;
//! - [`sampler`]: uniform and Zipf choice of pool handles with a fixed seed;
//! - [`workload`]: the pre-encoded requests of a run (pools, PEs, churn slots, Redis keys);
//! - [`validate`]: checks of every response (type, pool, PEs of that pool, RESP replies);
//! - [`stats`]: histograms, error counts, merging across threads, percentiles;
//! - [`client`]: the per-thread driver (closed or open loop) over [`uring`] (io_uring) or
//!   [`epoll`] (portable);
//! - [`bare_echo`]: the bare io_uring echo server, the kernel path's ceiling;
//! - [`propagation`]: how long a change at one registrar takes to show at an ENRP peer;
//! - [`peerload`]: a registrar's resolution throughput with and without a peer's updates;
//! - [`peerfeed`]: a stand-in ENRP peer that writes a registrar pre-encoded Handle Updates;
//! - [`fuzz`], [`fuzz_cli`], [`abuse`], [`live`]: live fuzzing and abuse of a registrar process;
//! - [`setup`], [`servers`], [`report`], [`plot`], [`compare`], [`sweep`]: the commands.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod abuse;
pub mod bare_echo;
pub mod cli;
pub mod client;
pub mod compare;
pub mod epoll;
pub mod fuzz;
pub mod fuzz_cli;
pub mod live;
pub mod pacing;
pub mod peerfeed;
pub mod peerload;
pub mod plot;
pub mod progress;
pub mod propagation;
pub mod report;
pub mod run;
pub mod sampler;
pub mod servers;
pub mod setup;
pub mod stats;
pub mod sweep;
pub mod uring;
pub mod validate;
pub mod workload;

/// Monotonic nanoseconds since a fixed base; the time unit of every schedule and latency here.
pub type Nanos = u64;
