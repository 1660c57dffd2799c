//! The owned form of any message: header fields, fixed words and an ordered parameter list.
//!
//! One generic shape serves every ASAP and ENRP message so that parse → emit reproduces the
//! bytes exactly, unknown (skipped) parameters included, in their places. The typed views in
//! [`super::asap`] and [`super::enrp`] are what protocol code reads; this form is for building
//! messages conveniently, for tools and for tests.

use core::net::IpAddr;

use smallvec::SmallVec;

use super::cause::{self, CauseRepr};
use super::check::Ctx;
use super::error::{Error, Protocol};
use super::field::{u16_at, u32_at};
use super::message::Message;
use super::param::{Param, ParamType};
use super::policy::{self, PolicyRepr};
use super::pool_element::{self, PoolElementRepr};
use super::server_info::{self, ServerInformationRepr};
use super::transport::{self, Transport, TransportRepr};
use super::writer::{EmitError, Writer};
use super::{address, asap, enrp};

/// One owned parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamRepr {
    /// IPv4 or IPv6 Address (only inside transports on the wire; kept for completeness).
    Address(IpAddr),
    /// A transport parameter.
    Transport(TransportRepr),
    /// Pool Member Selection Policy.
    Policy(PolicyRepr),
    /// Pool Handle.
    PoolHandle(Vec<u8>),
    /// Pool Element.
    PoolElement(PoolElementRepr),
    /// Server Information.
    ServerInformation(ServerInformationRepr),
    /// Operation Error with its causes.
    OperationError(Vec<CauseRepr>),
    /// Cookie.
    Cookie(Vec<u8>),
    /// PE Identifier.
    PeIdentifier(u32),
    /// PE Checksum.
    PeChecksum(u16),
    /// Handle Resolution Option.
    HandleResolutionOption(u32),
    /// A parameter kept as raw bytes (an unknown type, skipped by its action bits).
    Raw {
        /// The parameter type.
        param_type: u16,
        /// The value.
        value: Vec<u8>,
    },
}

impl ParamRepr {
    /// The owned form of a parameter of a validated message.
    pub fn from_param(p: Param<'_>) -> Self {
        let mut ctx = Ctx::new(Protocol::Asap, 0);
        let raw = || Self::Raw { param_type: p.param_type().0, value: p.value().to_vec() };
        let v = p.value();
        match p.param_type() {
            ParamType::IPV4_ADDRESS | ParamType::IPV6_ADDRESS => address::decode(&p).map_or_else(raw, Self::Address),
            t if t.is_transport() => transport::check(&mut ctx, &p)
                .map_or_else(|_| raw(), |()| Self::Transport(Transport::new_unchecked(p).to_repr())),
            ParamType::POLICY => {
                policy::check(&ctx, &p).map_or_else(|_| raw(), |()| Self::Policy(policy::decode(&p).to_repr()))
            }
            ParamType::POOL_HANDLE => Self::PoolHandle(v.to_vec()),
            ParamType::POOL_ELEMENT => {
                pool_element::check(&mut ctx, p).map_or_else(|_| raw(), |x| Self::PoolElement(x.to_repr()))
            }
            ParamType::SERVER_INFORMATION => {
                server_info::check(&mut ctx, p).map_or_else(|_| raw(), |x| Self::ServerInformation(x.to_repr()))
            }
            ParamType::OPERATION_ERROR => {
                cause::check(&ctx, p).map_or_else(|_| raw(), |x| Self::OperationError(x.to_repr()))
            }
            ParamType::COOKIE => Self::Cookie(v.to_vec()),
            ParamType::PE_IDENTIFIER if v.len() == 4 => Self::PeIdentifier(u32_at(v, 0)),
            ParamType::PE_CHECKSUM if v.len() == 2 => Self::PeChecksum(u16_at(v, 0)),
            ParamType::HANDLE_RESOLUTION_OPTION if v.len() == 4 => Self::HandleResolutionOption(u32_at(v, 0)),
            _ => raw(),
        }
    }

    /// Emits the parameter.
    pub fn emit(&self, w: &mut Writer<'_>) {
        match self {
            Self::Address(a) => address::emit(w, a),
            Self::Transport(t) => transport::emit(w, t),
            Self::Policy(p) => policy::emit_repr(w, p),
            Self::PoolHandle(h) => w.tlv_bytes(ParamType::POOL_HANDLE, h),
            Self::PoolElement(pe) => pe.emit(w),
            Self::ServerInformation(si) => si.emit(w),
            Self::OperationError(causes) => cause::emit_causes(w, causes),
            Self::Cookie(c) => w.tlv_bytes(ParamType::COOKIE, c),
            Self::PeIdentifier(id) => w.tlv(ParamType::PE_IDENTIFIER, |w| w.u32(*id)),
            Self::PeChecksum(c) => w.tlv(ParamType::PE_CHECKSUM, |w| w.u16(*c)),
            Self::HandleResolutionOption(n) => w.tlv(ParamType::HANDLE_RESOLUTION_OPTION, |w| w.u32(*n)),
            Self::Raw { param_type, value } => w.tlv_bytes(ParamType(*param_type), value),
        }
    }
}

/// Any owned ASAP or ENRP message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageRepr {
    /// ASAP or ENRP.
    pub protocol: Protocol,
    /// The message type code.
    pub message_type: u8,
    /// The flags byte.
    pub flags: u8,
    /// Fixed 32-bit fields between header and parameters: the server id of an ASAP Keep Alive
    /// or Server Announce; for ENRP the sender and receiver ids, then the Handle Update's
    /// action and reserved half-words, or the takeover target.
    pub fixed: SmallVec<[u32; 3]>,
    /// The parameters, in order.
    pub params: Vec<ParamRepr>,
}

impl MessageRepr {
    /// Parses and validates `buf` (exactly one message) into the owned form.
    pub fn parse(buf: &[u8], protocol: Protocol) -> Result<Self, Error> {
        match protocol {
            Protocol::Asap => {
                let m = asap::parse(buf)?;
                let fixed = asap::MessageType::from_u8(m.message_type()).map_or(0, asap::MessageType::fixed_len);
                Ok(Self::from_message(protocol, &m, fixed))
            }
            Protocol::Enrp => {
                let m = enrp::parse(buf)?;
                let fixed = enrp::MessageType::from_u8(m.message_type()).map_or(8, enrp::MessageType::fixed_len);
                Ok(Self::from_message(protocol, &m, fixed))
            }
        }
    }

    fn from_message<B>(protocol: Protocol, m: &Message<'_, B>, fixed: usize) -> Self {
        let bytes = m.as_bytes();
        Self {
            protocol,
            message_type: m.message_type(),
            flags: m.flags(),
            fixed: (0..fixed / 4).map(|i| u32_at(bytes, 4 + 4 * i)).collect(),
            params: m.params().map(ParamRepr::from_param).collect(),
        }
    }

    /// A message with no fixed fields.
    pub fn new(protocol: Protocol, message_type: u8, flags: u8, params: Vec<ParamRepr>) -> Self {
        Self { protocol, message_type, flags, fixed: SmallVec::new(), params }
    }

    /// Appends the encoded message to `buf`; returns its length.
    pub fn emit(&self, buf: &mut Vec<u8>) -> Result<usize, EmitError> {
        Writer::new(buf).message(self.message_type, self.flags, |w| {
            for word in &self.fixed {
                w.u32(*word);
            }
            for p in &self.params {
                p.emit(w);
            }
        })
    }

    /// The encoded message in a new buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EmitError> {
        let mut buf = Vec::with_capacity(256);
        self.emit(&mut buf)?;
        Ok(buf)
    }
}
