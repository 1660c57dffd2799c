//! ASAP and ENRP on the wire: typed, validated views over `&[u8]`, owned `Repr` forms, and
//! emitters that write straight into a caller's buffer. No I/O; no allocation when parsing.
//!
//! - Parse: [`asap::parse`] / [`enrp::parse`] validate a whole message once (every length, every
//!   nested parameter, the unknown-parameter action bits) and return a [`Message`] whose typed
//!   body borrows from the input. Accessors after that cannot fail.
//! - Errors: an [`Error`] names the message, parameter, byte offset and fault, and
//!   [`Error::disposition`] gives the answer the protocol prescribes (WIRE.md section 9).
//! - Emit: [`Writer`] appends to a `Vec<u8>`, patching lengths and padding in place; the
//!   `emit*` functions build messages from parts, [`MessageRepr`] from an owned form.
//! - Stream: [`Framer`] cuts whole messages out of TCP bytes.
//!
//! Byte-level reference: `shared/rserpool/WIRE.md`.

pub mod address;
pub mod asap;
pub mod cause;
mod check;
pub mod enrp;
pub mod error;
mod field;
pub mod framer;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod message;
pub mod param;
pub mod policy;
pub mod pool_element;
pub mod repr;
pub mod server_info;
pub mod transport;
pub mod writer;

pub use cause::{Cause, CauseCode, CauseRepr, OperationError};
pub use error::{CauseInfo, Disposition, Error, ErrorKind, Protocol};
pub use framer::{Frame, Framer};
pub use message::Message;
pub use param::{Param, ParamType, Params, UnknownAction};
pub use policy::{Policy, PolicyParam, PolicyRepr, PolicyType};
pub use pool_element::{PoolElement, PoolElementRepr};
pub use repr::{MessageRepr, ParamRepr};
pub use server_info::{ServerInformation, ServerInformationRepr};
pub use transport::{Transport, TransportProtocol, TransportRepr, TransportUse};
pub use writer::{EmitError, Put, Writer};

/// The name of message type `code` of `protocol`, if known.
pub fn message_name(protocol: Protocol, code: u8) -> Option<&'static str> {
    match protocol {
        Protocol::Asap => asap::MessageType::from_u8(code).map(asap::MessageType::name),
        Protocol::Enrp => enrp::MessageType::from_u8(code).map(enrp::MessageType::name),
    }
}
