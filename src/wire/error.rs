//! Decoding errors: what was wrong, where, and what the protocol prescribes in answer.

use core::fmt;
use core::ops::Range;

use super::cause::CauseCode;
use super::param::{ParamType, UnknownAction};

/// Which protocol a message belongs to (they share header and parameter formats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ASAP (RFC 5352), PE/PU ↔ registrar, TCP port 3863.
    Asap,
    /// ENRP (RFC 5353), registrar ↔ registrar, TCP port 9901.
    Enrp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Asap => "ASAP",
            Self::Enrp => "ENRP",
        })
    }
}

/// What was wrong with the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// Fewer than the 4 bytes of a message header.
    #[error("truncated header: {available} of 4 header bytes")]
    TruncatedHeader {
        /// Bytes present.
        available: u8,
    },
    /// The message length field is below 4.
    #[error("message length {length} < 4")]
    LengthTooSmall {
        /// The length field.
        length: u16,
    },
    /// The message length exceeds the configured maximum message size.
    #[error("message length {length} > maximum message size {max}")]
    LengthTooLarge {
        /// The length field.
        length: u16,
        /// The configured maximum.
        max: u16,
    },
    /// The buffer holds fewer bytes than the length field claims.
    #[error("truncated: length field says {length}, {available} bytes present")]
    Truncated {
        /// The length field.
        length: u16,
        /// Bytes present (saturated at `u32::MAX`).
        available: u32,
    },
    /// The buffer holds more bytes than the length field claims.
    #[error("trailing bytes: length field says {length}, {available} bytes present")]
    TrailingBytes {
        /// The length field.
        length: u16,
        /// Bytes present (saturated at `u32::MAX`).
        available: u32,
    },
    /// The fixed fields of the message body are cut short (ENRP server ids, keep-alive server
    /// id, update action, takeover target).
    #[error("message too short for its fixed fields: {length} bytes, at least {min} needed")]
    FixedFieldsTruncated {
        /// The message length.
        length: u16,
        /// The minimum for this message type.
        min: u16,
    },
    /// A parameter length field below 4, or not even a parameter header left.
    #[error("parameter length {length} < 4")]
    ParamLengthTooSmall {
        /// The length field (0 when it could not be read).
        length: u16,
    },
    /// A parameter runs past the end of its container.
    #[error("parameter length {length} runs past its container ({room} bytes left)")]
    ParamOverrun {
        /// The length field.
        length: u16,
        /// Bytes left in the container.
        room: u16,
    },
    /// A fixed-size parameter with the wrong length.
    #[error("parameter length {length}, must be {expected}")]
    ParamLength {
        /// The length field.
        length: u16,
        /// The only valid length.
        expected: u16,
    },
    /// A parameter shorter than its own fixed fields.
    #[error("parameter length {length} < {min}, too short for its fixed fields")]
    ParamTooShort {
        /// The length field.
        length: u16,
        /// The minimum length.
        min: u16,
    },
    /// A policy parameter whose value count does not match its type.
    #[error("policy 0x{policy_type:08x} with {values} value bytes")]
    PolicyValueCount {
        /// The policy type.
        policy_type: u32,
        /// Bytes of values present.
        values: u16,
    },
    /// A well-formed parameter with an invalid value.
    #[error("invalid value: {what}")]
    InvalidValue {
        /// What is invalid.
        what: Invalid,
    },
    /// A mandatory parameter is missing.
    #[error("missing mandatory parameter {missing}")]
    MissingParameter {
        /// The type that is missing.
        missing: ParamType,
    },
    /// A mandatory transport parameter is missing (a Pool Element's user transport, a Server
    /// Information's transport).
    #[error("missing mandatory transport parameter")]
    MissingTransport,
    /// A known parameter where it does not belong (or repeated where only one is allowed).
    #[error("parameter not allowed here")]
    UnexpectedParameter,
    /// A parameter of an unknown type whose action bits say stop.
    #[error("unrecognized parameter ({action:?})")]
    UnrecognizedParameter {
        /// Its action bits.
        action: UnknownAction,
    },
    /// A message type this implementation does not know.
    #[error("unrecognized message type")]
    UnrecognizedMessage,
    /// A Handle Update action other than add (0) or delete (1).
    #[error("unknown update action {action}")]
    UnknownUpdateAction {
        /// The action field.
        action: u16,
    },
    /// An error cause whose length is below 4 or past its Operation Error.
    #[error("malformed error cause (length {length})")]
    BadCause {
        /// The cause length field.
        length: u16,
    },
}

/// Which value of a well-formed parameter is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// SCTP/TCP transport use other than 0 or 1.
    #[error("transport use is neither 0 (data only) nor 1 (data plus control)")]
    TransportUse,
    /// A transport parameter without an address parameter.
    #[error("transport without an address")]
    NoAddress,
    /// More than one address in a transport that is not SCTP.
    #[error("more than one address in a transport that is not SCTP")]
    TooManyAddresses,
    /// An ASAP transport that is neither SCTP nor TCP.
    #[error("ASAP transport must be SCTP or TCP")]
    AsapTransportProtocol,
    /// An Operation Error without a cause.
    #[error("Operation Error without a cause")]
    NoCause,
}

/// What a cause should carry as its info when answering an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CauseInfo {
    /// No info.
    None,
    /// These bytes of the offending message (a TLV, or the whole message).
    Quote(Range<usize>),
    /// An empty TLV of this type (WIRE.md section 5: a missing parameter that may be empty).
    EmptyParam(ParamType),
}

/// What the receiver of a bad message does (WIRE.md section 9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The stream cannot be framed any more: send nothing, close the connection.
    Close,
    /// Drop the message silently (unknown parameter with action "stop").
    Discard,
    /// Drop the message and report with an Error message (ASAP 0x0E / ENRP 0x0A) carrying this
    /// cause, never with the message's own response (unknown parameter or message).
    Report {
        /// The cause code.
        cause: CauseCode,
        /// The cause info.
        info: CauseInfo,
    },
    /// Reject: the message's own response where it has one (Registration Response with R flag,
    /// Deregistration Response with an Operation Error), otherwise an Error message.
    Reject {
        /// The cause code.
        cause: CauseCode,
        /// The cause info.
        info: CauseInfo,
    },
}

/// A decoding error: which message, which parameter, which byte, what was wrong, and (via
/// [`Error::disposition`]) what the protocol prescribes in answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The protocol the bytes were decoded as.
    pub protocol: Protocol,
    /// The message type, if the header could be read.
    pub message_type: Option<u8>,
    /// The parameter where the fault is, if any.
    pub param_type: Option<ParamType>,
    /// Byte offset of the fault from the start of the message (the parameter's first byte for
    /// parameter faults).
    pub offset: u32,
    /// What was wrong.
    pub kind: ErrorKind,
    /// Byte range (start, end) of the well-formed parameter or message to quote, for causes
    /// that carry it.
    pub quote: Option<(u32, u32)>,
}

impl Error {
    pub(crate) fn new(protocol: Protocol, message_type: Option<u8>, offset: usize, kind: ErrorKind) -> Self {
        Self { protocol, message_type, param_type: None, offset: offset as u32, kind, quote: None }
    }

    /// The quoted byte range, for slicing the message.
    pub fn quote_range(&self) -> Option<Range<usize>> {
        self.quote.map(|(s, e)| s as usize..e as usize)
    }

    /// The error cause the protocol prescribes for this fault, if it is answered at all.
    pub fn cause(&self) -> Option<CauseCode> {
        match self.disposition() {
            Disposition::Close | Disposition::Discard => None,
            Disposition::Report { cause, .. } | Disposition::Reject { cause, .. } => Some(cause),
        }
    }

    /// What the receiver does (WIRE.md section 9), with the cause and the info it carries.
    pub fn disposition(&self) -> Disposition {
        use ErrorKind::*;
        let quoted = |cause| match self.quote_range() {
            Some(r) => Disposition::Reject { cause, info: CauseInfo::Quote(r) },
            None => Disposition::Reject { cause: CauseCode::UNSPECIFIED, info: CauseInfo::None },
        };
        match &self.kind {
            TruncatedHeader { .. }
            | LengthTooSmall { .. }
            | LengthTooLarge { .. }
            | Truncated { .. }
            | TrailingBytes { .. } => Disposition::Close,
            FixedFieldsTruncated { .. }
            | ParamLengthTooSmall { .. }
            | ParamOverrun { .. }
            | ParamLength { .. }
            | ParamTooShort { .. }
            | PolicyValueCount { .. }
            | UnknownUpdateAction { .. }
            | MissingTransport
            | BadCause { .. } => Disposition::Reject { cause: CauseCode::UNSPECIFIED, info: CauseInfo::None },
            InvalidValue { .. } | UnexpectedParameter => quoted(CauseCode::INVALID_VALUES),
            MissingParameter { missing } => {
                if missing.may_be_empty() {
                    Disposition::Reject { cause: CauseCode::INVALID_VALUES, info: CauseInfo::EmptyParam(*missing) }
                } else {
                    Disposition::Reject { cause: CauseCode::UNSPECIFIED, info: CauseInfo::None }
                }
            }
            UnrecognizedParameter { action } => match (action.reports(), self.quote_range()) {
                (true, Some(r)) => {
                    Disposition::Report { cause: CauseCode::UNRECOGNIZED_PARAMETER, info: CauseInfo::Quote(r) }
                }
                _ => Disposition::Discard,
            },
            UnrecognizedMessage => Disposition::Report {
                cause: CauseCode::UNRECOGNIZED_MESSAGE,
                info: CauseInfo::Quote(self.quote_range().unwrap_or(0..0)),
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol)?;
        match self.message_type {
            Some(t) => match super::message_name(self.protocol, t) {
                Some(name) => write!(f, " {name}")?,
                None => write!(f, " message type 0x{t:02x}")?,
            },
            None => f.write_str(" message")?,
        }
        if let Some(p) = self.param_type {
            write!(f, ", {p}")?;
        }
        write!(f, " at byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for Error {}
