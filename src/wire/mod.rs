//! ASAP and ENRP on the wire: typed, validated views over `&[u8]`, owned `Repr` forms, and
//! emitters that write straight into a caller's buffer. No I/O; no allocation when parsing.
//!
//! Byte-level reference: `shared/rserpool/WIRE.md`.

pub mod cause;
pub mod policy;
pub mod transport;
