//! Errors of the runtime: each variant says which step failed, for which shard, and why.

use std::io;
use std::net::SocketAddr;

use crate::service::ShardId;

/// Why the engine could not start, or why a shard stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is inconsistent (the message says which field and why).
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// Creating, configuring or binding a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address that was being bound.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// io_uring was explicitly requested ([`super::EngineKind::Uring`]) but cannot be used here.
    #[error("io_uring is unavailable: {reason}")]
    UringUnavailable {
        /// What the availability probe found (disabled by sysctl, blocked by seccomp, too old...).
        reason: String,
    },

    /// Creating a shard's io_uring instance failed.
    #[error("shard {shard}: io_uring setup failed: {source}")]
    RingSetup {
        /// The shard whose ring could not be created.
        shard: ShardId,
        /// The error from `io_uring_setup` (or from mapping the provided buffers).
        #[source]
        source: io::Error,
    },

    /// Registering a shard's provided buffer ring failed.
    #[error("shard {shard}: cannot register the provided buffer ring: {source}")]
    BufferRing {
        /// The shard whose buffer ring could not be registered.
        shard: ShardId,
        /// The error from `io_uring_register`.
        #[source]
        source: io::Error,
    },

    /// Creating a shard's epoll instance (or its waker) failed.
    #[error("shard {shard}: epoll setup failed: {source}")]
    PollSetup {
        /// The shard whose poller could not be created.
        shard: ShardId,
        /// The error from `epoll_create1`/`eventfd`.
        #[source]
        source: io::Error,
    },

    /// Spawning a shard thread failed.
    #[error("cannot spawn the thread of shard {shard}: {source}")]
    Spawn {
        /// The shard whose thread could not be spawned.
        shard: ShardId,
        /// The error from the thread builder.
        #[source]
        source: io::Error,
    },

    /// A running shard hit an I/O error it cannot continue after (for example, `io_uring_enter`
    /// or `epoll_wait` failing with something other than an interruption).
    #[error("shard {shard}: {what}: {source}")]
    Io {
        /// The shard that stopped.
        shard: ShardId,
        /// The operation that failed.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// A shard thread panicked (in the service or in the engine).
    #[error("shard {shard} panicked")]
    Panicked {
        /// The shard whose thread panicked.
        shard: ShardId,
    },
}
