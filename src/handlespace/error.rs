//! Handlespace errors; each maps to one ASAP error cause (WIRE.md section 5).

use crate::wire::cause::CauseCode;
use crate::wire::policy::PolicyType;
use crate::wire::transport::{TransportProtocol, TransportUse};

/// Why a registration was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The pool handle is empty.
    #[error("empty pool handle")]
    EmptyHandle,
    /// The pool handle is longer than the configured maximum.
    #[error("pool handle of {len} bytes exceeds the maximum of {max}")]
    HandleTooLong {
        /// Length received.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The policy type is not one this handlespace implements.
    #[error("unknown policy type {0:#010x}")]
    UnknownPolicy(u32),
    /// The PE's policy type differs from the pool's.
    #[error("policy type {found:?} differs from the pool's {pool:?}")]
    InconsistentPolicy {
        /// The pool's policy type.
        pool: PolicyType,
        /// The registration's.
        found: PolicyType,
    },
    /// The PE's user transport protocol differs from the pool's.
    #[error("user transport {found:?} differs from the pool's {pool:?}")]
    InconsistentTransport {
        /// The pool's protocol.
        pool: TransportProtocol,
        /// The registration's.
        found: TransportProtocol,
    },
    /// The PE's transport use (data only / data plus control) differs from the pool's.
    #[error("transport use {found:?} differs from the pool's {pool:?}")]
    InconsistentTransportUse {
        /// The pool's transport use.
        pool: TransportUse,
        /// The registration's.
        found: TransportUse,
    },
    /// Another PE with this identifier (other connection or owner, other addresses) is in the pool.
    #[error("PE identifier {0:#010x} is taken by another PE of the pool")]
    NonUniquePeIdentifier(u32),
    /// The configured maximum number of pools is reached.
    #[error("too many pools")]
    TooManyPools,
    /// The pool holds the configured maximum number of PEs.
    #[error("too many PEs in the pool")]
    TooManyPesInPool,
    /// The handlespace holds the configured maximum number of PEs.
    #[error("too many PEs")]
    TooManyPes,
    /// The connection registered the configured maximum number of PEs.
    #[error("too many PEs on this connection")]
    TooManyPesOnConnection,
}

impl RegisterError {
    /// The error cause to send in the Registration Response (with the R flag).
    pub const fn cause_code(&self) -> CauseCode {
        match self {
            Self::EmptyHandle | Self::HandleTooLong { .. } | Self::UnknownPolicy(_) => CauseCode::INVALID_VALUES,
            Self::InconsistentPolicy { .. } => CauseCode::INCONSISTENT_POOLING_POLICY,
            Self::InconsistentTransport { .. } => CauseCode::INCONSISTENT_TRANSPORT_TYPE,
            Self::InconsistentTransportUse { .. } => CauseCode::INCONSISTENT_DATA_CONTROL,
            Self::NonUniquePeIdentifier(_) => CauseCode::NON_UNIQUE_PE_IDENTIFIER,
            Self::TooManyPools | Self::TooManyPesInPool | Self::TooManyPes | Self::TooManyPesOnConnection => {
                CauseCode::LACK_OF_RESOURCES
            }
        }
    }
}

/// Why a deregistration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeregisterError {
    /// No pool has this handle.
    #[error("unknown pool handle")]
    UnknownPool,
    /// The PE was registered over another connection.
    #[error("PE belongs to another connection")]
    NotAuthorized,
}

impl DeregisterError {
    /// The error cause to send in the Deregistration Response.
    pub const fn cause_code(&self) -> CauseCode {
        match self {
            Self::UnknownPool => CauseCode::UNKNOWN_POOL_HANDLE,
            Self::NotAuthorized => CauseCode::REJECTED_SECURITY,
        }
    }
}

/// No pool has the handle asked for (Handle Resolution, Endpoint Unreachable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown pool handle")]
pub struct UnknownPool;

impl UnknownPool {
    /// The error cause to send: 0x9, Unknown Pool Handle.
    pub const fn cause_code(&self) -> CauseCode {
        CauseCode::UNKNOWN_POOL_HANDLE
    }
}
