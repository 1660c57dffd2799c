//! ASAP messages (RFC 5352; WIRE.md section 6): types, the validating parse into typed views,
//! and emitters for the messages a registrar and its clients send on hot paths.

use super::cause::{self, CauseCode, OperationError};
use super::check::Ctx;
use super::error::{Error, ErrorKind, Protocol};
use super::field::u32_at;
use super::message::{check_header, check_params, Message, PoolElements, Schema};
use super::param::{Param, ParamType, Params};
use super::policy::{Policy, PolicyParam};
use super::pool_element::PoolElement;
use super::transport::{self, Transport};
use super::writer::{EmitError, Writer};

/// An ASAP message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// 0x01 Registration.
    Registration = 0x01,
    /// 0x02 Deregistration.
    Deregistration = 0x02,
    /// 0x03 Registration Response.
    RegistrationResponse = 0x03,
    /// 0x04 Deregistration Response.
    DeregistrationResponse = 0x04,
    /// 0x05 Handle Resolution.
    HandleResolution = 0x05,
    /// 0x06 Handle Resolution Response.
    HandleResolutionResponse = 0x06,
    /// 0x07 Endpoint Keep Alive.
    EndpointKeepAlive = 0x07,
    /// 0x08 Endpoint Keep Alive Ack.
    EndpointKeepAliveAck = 0x08,
    /// 0x09 Endpoint Unreachable.
    EndpointUnreachable = 0x09,
    /// 0x0A Server Announce.
    ServerAnnounce = 0x0A,
    /// 0x0B Cookie.
    Cookie = 0x0B,
    /// 0x0C Cookie Echo.
    CookieEcho = 0x0C,
    /// 0x0D Business Card.
    BusinessCard = 0x0D,
    /// 0x0E Error.
    Error = 0x0E,
}

impl MessageType {
    /// Every ASAP message type, in code order.
    pub const ALL: [Self; 14] = [
        Self::Registration,
        Self::Deregistration,
        Self::RegistrationResponse,
        Self::DeregistrationResponse,
        Self::HandleResolution,
        Self::HandleResolutionResponse,
        Self::EndpointKeepAlive,
        Self::EndpointKeepAliveAck,
        Self::EndpointUnreachable,
        Self::ServerAnnounce,
        Self::Cookie,
        Self::CookieEcho,
        Self::BusinessCard,
        Self::Error,
    ];

    /// The type for a code, if known.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).wrapping_sub(1)).copied()
    }

    /// The RFC 5352 name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Registration => "Registration",
            Self::Deregistration => "Deregistration",
            Self::RegistrationResponse => "Registration Response",
            Self::DeregistrationResponse => "Deregistration Response",
            Self::HandleResolution => "Handle Resolution",
            Self::HandleResolutionResponse => "Handle Resolution Response",
            Self::EndpointKeepAlive => "Endpoint Keep Alive",
            Self::EndpointKeepAliveAck => "Endpoint Keep Alive Ack",
            Self::EndpointUnreachable => "Endpoint Unreachable",
            Self::ServerAnnounce => "Server Announce",
            Self::Cookie => "Cookie",
            Self::CookieEcho => "Cookie Echo",
            Self::BusinessCard => "Business Card",
            Self::Error => "Error",
        }
    }

    /// Bytes of fixed fields after the header (the server id of Keep Alive and Server Announce).
    pub const fn fixed_len(self) -> usize {
        match self {
            Self::EndpointKeepAlive | Self::ServerAnnounce => 4,
            _ => 0,
        }
    }

    const fn schema(self) -> Schema {
        use ParamType as P;
        const HANDLE_ID: &[ParamType] = &[P::POOL_HANDLE, P::PE_IDENTIFIER];
        match self {
            Self::Registration => {
                Schema::new(0, &[P::POOL_HANDLE, P::POOL_ELEMENT], &[P::POOL_HANDLE, P::POOL_ELEMENT])
            }
            Self::Deregistration | Self::EndpointKeepAliveAck | Self::EndpointUnreachable => {
                Schema::new(0, HANDLE_ID, HANDLE_ID)
            }
            // rsplib leaves the PE Identifier out to address every PE of the connection.
            Self::EndpointKeepAlive => Schema::new(4, HANDLE_ID, &[P::POOL_HANDLE]),
            Self::RegistrationResponse | Self::DeregistrationResponse => {
                Schema::new(0, &[P::POOL_HANDLE, P::PE_IDENTIFIER, P::OPERATION_ERROR], HANDLE_ID)
            }
            Self::HandleResolution => Schema::new(0, &[P::POOL_HANDLE, P::HANDLE_RESOLUTION_OPTION], &[P::POOL_HANDLE]),
            Self::HandleResolutionResponse => {
                Schema::new(0, &[P::POOL_HANDLE, P::POLICY, P::OPERATION_ERROR], &[P::POOL_HANDLE])
                    .repeating(&[P::POOL_ELEMENT])
            }
            Self::ServerAnnounce => Schema::new(4, &[], &[]).repeating_transports(),
            Self::Cookie | Self::CookieEcho => Schema::new(0, &[P::COOKIE], &[P::COOKIE]),
            Self::BusinessCard => {
                Schema::new(0, &[P::POOL_HANDLE, P::POLICY], &[P::POOL_HANDLE, P::POLICY]).repeating(&[P::POOL_ELEMENT])
            }
            Self::Error => Schema::new(0, &[P::OPERATION_ERROR], &[P::OPERATION_ERROR]),
        }
    }
}

/// R flag of a Registration Response: the registration was rejected.
pub const FLAG_REJECT: u8 = 0x01;
/// H flag of an Endpoint Keep Alive: the sender is the PE's home registrar.
pub const FLAG_HOME: u8 = 0x01;

/// The pool's policy when a Handle Resolution Response carries none (RFC 5352 section 2.2.6;
/// WIRE.md section 6).
pub const DEFAULT_POOL_POLICY: PolicyParam<'static> = PolicyParam::Known(Policy::RoundRobin);

/// The answer carried by a Handle Resolution Response.
#[derive(Clone, Debug)]
pub enum Resolution<'a> {
    /// The pool's policy and the selected PEs (possibly none).
    Found {
        /// The pool's overall policy parameter; `None` when the response leaves it out (RFC 5352
        /// makes it optional; the pool's policy is then [`DEFAULT_POOL_POLICY`], Round Robin).
        /// We always send it.
        policy: Option<PolicyParam<'a>>,
        /// The selected PEs, in order.
        pool_elements: PoolElements<'a>,
    },
    /// The resolution failed (e.g. cause 0x9, unknown pool handle).
    Failed(OperationError<'a>),
}

impl<'a> Resolution<'a> {
    /// The pool's policy: the one the response carries, else Round Robin; `None` for a failed
    /// resolution.
    pub fn pool_policy(&self) -> Option<PolicyParam<'a>> {
        match self {
            Self::Found { policy, .. } => Some(policy.unwrap_or(DEFAULT_POOL_POLICY)),
            Self::Failed(_) => None,
        }
    }
}

/// The typed body of a validated ASAP message.
#[derive(Clone, Debug)]
pub enum Body<'a> {
    /// A PE registers (or re-registers).
    Registration {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE with its transports, policy and lifetime.
        pool_element: PoolElement<'a>,
    },
    /// A PE deregisters.
    Deregistration {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pe_id: u32,
    },
    /// The registrar's answer to a Registration.
    RegistrationResponse {
        /// R flag: rejected.
        rejected: bool,
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pe_id: u32,
        /// Why it was rejected.
        error: Option<OperationError<'a>>,
    },
    /// The registrar's answer to a Deregistration.
    DeregistrationResponse {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pe_id: u32,
        /// Present when deregistration failed.
        error: Option<OperationError<'a>>,
    },
    /// A PU asks for PEs of a pool.
    HandleResolution {
        /// The pool.
        pool_handle: &'a [u8],
        /// Handle Resolution Option: how many PEs are wanted (0 = as many as the registrar gives).
        items: Option<u32>,
    },
    /// The registrar's answer to a Handle Resolution.
    HandleResolutionResponse {
        /// The pool.
        pool_handle: &'a [u8],
        /// Policy and PEs, or an error.
        resolution: Resolution<'a>,
    },
    /// A registrar checks that a PE is alive.
    EndpointKeepAlive {
        /// H flag: the sender is the PE's home registrar.
        home: bool,
        /// The sending registrar.
        server_id: u32,
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE; `None` addresses every PE of the connection (rsplib's registrar sends that;
        /// the PE acks each of its PEs). We always send it.
        pe_id: Option<u32>,
    },
    /// A PE answers a keep-alive.
    EndpointKeepAliveAck {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pe_id: u32,
    },
    /// A PU reports a PE it could not reach.
    EndpointUnreachable {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pe_id: u32,
    },
    /// A registrar announces itself.
    ServerAnnounce {
        /// The registrar's id.
        server_id: u32,
        /// Its ASAP transports.
        transports: Transports<'a>,
    },
    /// A PE sends its session state to a PU.
    Cookie {
        /// Opaque state.
        cookie: &'a [u8],
    },
    /// A PU hands the newest cookie to a new PE after failover.
    CookieEcho {
        /// Opaque state.
        cookie: &'a [u8],
    },
    /// A PE tells its peer which PEs to fail over to, in order.
    BusinessCard {
        /// The pool.
        pool_handle: &'a [u8],
        /// The pool's policy.
        policy: PolicyParam<'a>,
        /// The failover list.
        pool_elements: PoolElements<'a>,
    },
    /// An error report.
    Error {
        /// The causes.
        error: OperationError<'a>,
    },
}

/// A validated ASAP message.
pub type AsapMessage<'a> = Message<'a, Body<'a>>;

/// Iterator over the transports of a Server Announce.
#[derive(Clone, Debug)]
pub struct Transports<'a> {
    params: Params<'a>,
}

impl<'a> Iterator for Transports<'a> {
    type Item = Transport<'a>;

    fn next(&mut self) -> Option<Transport<'a>> {
        loop {
            let p = self.params.next()?;
            if p.param_type().is_transport() {
                let mut ctx = Ctx::new(Protocol::Asap, MessageType::ServerAnnounce as u8);
                if transport::check(&mut ctx, &p).is_ok() {
                    return Some(Transport::new_unchecked(p));
                }
            }
        }
    }
}

/// Validates `buf` as exactly one ASAP message and returns its typed view. No allocation.
pub fn parse(buf: &[u8]) -> Result<AsapMessage<'_>, Error> {
    if let Some(m) = handle_resolution(buf) {
        return Ok(m);
    }
    let (code, flags) = check_header(buf, Protocol::Asap)?;
    let Some(mt) = MessageType::from_u8(code) else {
        let mut e = Error::new(Protocol::Asap, Some(code), 0, ErrorKind::UnrecognizedMessage);
        e.quote = Some((0, buf.len() as u32));
        return Err(e);
    };
    let mut ctx = Ctx::new(Protocol::Asap, code);
    let schema = mt.schema();
    let (params_at, s) = check_params(&mut ctx, buf, &schema)?;
    let fixed_u32 = || u32_at(buf, 4);
    let pes = || PoolElements::new(buf, s.first_pool_element, s.pool_elements, false);
    let body = match mt {
        MessageType::Registration => match s.pool_element {
            Some(pool_element) => Body::Registration { pool_handle: s.pool_handle, pool_element },
            None => return Err(ctx.missing(buf.len(), ParamType::POOL_ELEMENT)),
        },
        MessageType::Deregistration => Body::Deregistration { pool_handle: s.pool_handle, pe_id: s.pe_id },
        MessageType::RegistrationResponse => Body::RegistrationResponse {
            rejected: flags & FLAG_REJECT != 0,
            pool_handle: s.pool_handle,
            pe_id: s.pe_id,
            error: s.operation_error,
        },
        MessageType::DeregistrationResponse => {
            Body::DeregistrationResponse { pool_handle: s.pool_handle, pe_id: s.pe_id, error: s.operation_error }
        }
        MessageType::HandleResolution => Body::HandleResolution { pool_handle: s.pool_handle, items: s.hr_option },
        MessageType::HandleResolutionResponse => {
            let resolution = match (s.policy, s.operation_error) {
                (policy, None) => Resolution::Found { policy, pool_elements: pes() },
                (None, Some(e)) if s.pool_elements == 0 => Resolution::Failed(e),
                (_, Some(e)) => return Err(ctx.unexpected(&e.param())),
            };
            Body::HandleResolutionResponse { pool_handle: s.pool_handle, resolution }
        }
        MessageType::EndpointKeepAlive => Body::EndpointKeepAlive {
            home: flags & FLAG_HOME != 0,
            server_id: fixed_u32(),
            pool_handle: s.pool_handle,
            pe_id: s.has(ParamType::PE_IDENTIFIER).then_some(s.pe_id),
        },
        MessageType::EndpointKeepAliveAck => Body::EndpointKeepAliveAck { pool_handle: s.pool_handle, pe_id: s.pe_id },
        MessageType::EndpointUnreachable => Body::EndpointUnreachable { pool_handle: s.pool_handle, pe_id: s.pe_id },
        MessageType::ServerAnnounce => Body::ServerAnnounce {
            server_id: fixed_u32(),
            transports: Transports { params: Params::new(&buf[params_at..], params_at) },
        },
        MessageType::Cookie => Body::Cookie { cookie: s.cookie },
        MessageType::CookieEcho => Body::CookieEcho { cookie: s.cookie },
        MessageType::BusinessCard => match s.policy {
            Some(policy) => Body::BusinessCard { pool_handle: s.pool_handle, policy, pool_elements: pes() },
            None => return Err(ctx.missing(buf.len(), ParamType::POLICY)),
        },
        MessageType::Error => match s.operation_error {
            Some(error) => Body::Error { error },
            None => return Err(ctx.missing(buf.len(), ParamType::OPERATION_ERROR)),
        },
    };
    Ok(Message::new(buf, params_at, ctx.reports, body))
}

/// The registrar's most frequent request in the form every client sends it (a Pool Handle, then
/// optionally a Handle Resolution Option, nothing else), read in one straight pass: its pool
/// handle and option. Anything else, valid or not, gives `None`; [`parse`] accepts exactly the
/// same canonical messages (and everything else that is valid).
#[inline]
pub fn canonical_handle_resolution(buf: &[u8]) -> Option<(&[u8], Option<u32>)> {
    let [0x05, _, l0, l1, 0x00, 0x09, h0, h1, ..] = *buf else { return None };
    let (len, handle_len) = (usize::from(u16::from_be_bytes([l0, l1])), usize::from(u16::from_be_bytes([h0, h1])));
    if len != buf.len() || handle_len < 4 {
        return None;
    }
    let end = 4 + super::field::padded(handle_len);
    let pool_handle = buf.get(8..4 + handle_len)?;
    let items = match buf.get(end..)? {
        [] => None,
        [0x80, 0x3f, 0x00, 0x08, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => return None,
    };
    Some((pool_handle, items))
}

#[inline]
fn handle_resolution(buf: &[u8]) -> Option<AsapMessage<'_>> {
    let (pool_handle, items) = canonical_handle_resolution(buf)?;
    Some(Message::new(buf, 4, false, Body::HandleResolution { pool_handle, items }))
}

/// Best-effort read of the Pool Handle and PE identifier of a message that failed to parse, so
/// that a rejection can echo them (WIRE.md section 6.1). Only well-formed top-level TLVs count.
pub fn salvage_ids(buf: &[u8]) -> (Option<&[u8]>, Option<u32>) {
    let fixed = buf.first().and_then(|&t| MessageType::from_u8(t)).map_or(0, MessageType::fixed_len);
    let start = 4 + fixed;
    let end = super::field::get_u16(buf, 2).map_or(0, usize::from).min(buf.len());
    let (mut handle, mut pe_id) = (None, None);
    if start >= end {
        return (handle, pe_id);
    }
    for p in Params::new(&buf[start..end], start) {
        match p.param_type() {
            ParamType::POOL_HANDLE if handle.is_none() => handle = Some(p.value()),
            ParamType::PE_IDENTIFIER if pe_id.is_none() && p.value().len() == 4 => pe_id = Some(u32_at(p.value(), 0)),
            ParamType::POOL_ELEMENT if pe_id.is_none() && p.value().len() >= 4 => pe_id = Some(u32_at(p.value(), 0)),
            _ => {}
        }
    }
    (handle, pe_id)
}

/// Emits a Handle Resolution (a PU's request).
pub fn emit_handle_resolution(w: &mut Writer<'_>, pool_handle: &[u8], items: Option<u32>) -> Result<usize, EmitError> {
    w.message(MessageType::HandleResolution as u8, 0, |w| {
        w.tlv_bytes(ParamType::POOL_HANDLE, pool_handle);
        if let Some(n) = items {
            w.tlv(ParamType::HANDLE_RESOLUTION_OPTION, |w| w.u32(n));
        }
    })
}

/// Emits a message whose body is Pool Handle, PE Identifier and an optional Operation Error
/// with one cause (Deregistration, Registration Response, Deregistration Response, Keep Alive
/// Ack, Endpoint Unreachable).
pub fn emit_handle_and_id(
    w: &mut Writer<'_>,
    message_type: MessageType,
    flags: u8,
    pool_handle: &[u8],
    pe_id: Option<u32>,
    error: Option<(CauseCode, &[u8])>,
) -> Result<usize, EmitError> {
    w.message(message_type as u8, flags, |w| {
        w.tlv_bytes(ParamType::POOL_HANDLE, pool_handle);
        if let Some(id) = pe_id {
            w.tlv(ParamType::PE_IDENTIFIER, |w| w.u32(id));
        }
        if let Some((code, info)) = error {
            cause::emit_operation_error(w, code, info);
        }
    })
}

/// Emits an Endpoint Keep Alive from registrar `server_id`.
pub fn emit_keep_alive(
    w: &mut Writer<'_>,
    home: bool,
    server_id: u32,
    pool_handle: &[u8],
    pe_id: u32,
) -> Result<usize, EmitError> {
    w.message(MessageType::EndpointKeepAlive as u8, if home { FLAG_HOME } else { 0 }, |w| {
        w.u32(server_id);
        w.tlv_bytes(ParamType::POOL_HANDLE, pool_handle);
        w.tlv(ParamType::PE_IDENTIFIER, |w| w.u32(pe_id));
    })
}

/// Emits an ASAP Error message with one cause.
pub fn emit_error(w: &mut Writer<'_>, code: CauseCode, info: &[u8]) -> Result<usize, EmitError> {
    w.message(MessageType::Error as u8, 0, |w| cause::emit_operation_error(w, code, info))
}

/// Emits an ASAP Error reporting unrecognized parameters (cause 0x1 for each).
pub fn emit_unrecognized_params<'a>(
    w: &mut Writer<'_>,
    params: impl IntoIterator<Item = Param<'a>>,
) -> Result<usize, EmitError> {
    w.message(MessageType::Error as u8, 0, |w| {
        w.tlv(ParamType::OPERATION_ERROR, |w| {
            for p in params {
                cause::emit_cause(w, CauseCode::UNRECOGNIZED_PARAMETER, p.as_bytes());
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn general(buf: &[u8]) -> Option<(Vec<u8>, Option<u32>)> {
        let (code, _) = check_header(buf, Protocol::Asap).ok()?;
        if code != MessageType::HandleResolution as u8 {
            return None;
        }
        let mut ctx = Ctx::new(Protocol::Asap, code);
        let (_, s) = check_params(&mut ctx, buf, &MessageType::HandleResolution.schema()).ok()?;
        Some((s.pool_handle.to_vec(), s.hr_option))
    }

    proptest! {
        /// The Handle Resolution fast path accepts only what the general parse accepts, with
        /// the same fields.
        #[test]
        fn handle_resolution_fast_path_agrees(
            handle in proptest::collection::vec(any::<u8>(), 0..20),
            items in proptest::option::of(any::<u32>()),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let mut buf = Vec::new();
            emit_handle_resolution(&mut Writer::new(&mut buf), &handle, items).unwrap();
            for (at, v) in flips {
                let i = at.index(buf.len());
                buf[i] = v;
            }
            if let Some(m) = handle_resolution(&buf) {
                let Body::HandleResolution { pool_handle, items } = m.into_body() else { panic!() };
                prop_assert_eq!(general(&buf), Some((pool_handle.to_vec(), items)));
            }
        }
    }

    #[test]
    fn canonical_handle_resolutions_take_the_fast_path() {
        for items in [None, Some(0), Some(4)] {
            let mut buf = Vec::new();
            emit_handle_resolution(&mut Writer::new(&mut buf), b"db.shard-07", items).unwrap();
            assert!(handle_resolution(&buf).is_some());
        }
    }
}
