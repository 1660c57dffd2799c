//! Transport parameters (SCTP, TCP, UDP, UDP-Lite, DCCP) and their address parameters
//! (RFC 5354 sections 3.3-3.7; WIRE.md section 3.1).

use core::net::IpAddr;

use smallvec::SmallVec;

use super::address;
use super::check::{Ctx, Walk};
use super::error::{Error, ErrorKind, Invalid};
use super::field::{u16_at, u32_at};
use super::param::{Param, ParamType, Params};
use super::writer::Put;

/// The transport protocol of a transport parameter; each has its own parameter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportProtocol {
    /// SCTP (0x0004): port, transport use, one or more addresses.
    Sctp,
    /// TCP (0x0005): port, transport use, one address.
    Tcp,
    /// UDP (0x0006): port, reserved, one address.
    Udp,
    /// UDP-Lite (0x0007): port, reserved, one address.
    UdpLite,
    /// DCCP (0x0003): port, reserved, service code, one address.
    Dccp,
}

impl TransportProtocol {
    /// Whether the parameter carries a transport-use field (SCTP and TCP do).
    pub const fn has_transport_use(self) -> bool {
        matches!(self, Self::Sctp | Self::Tcp)
    }

    /// Whether more than one address may follow (only SCTP is multi-homed).
    pub const fn is_multihomed(self) -> bool {
        matches!(self, Self::Sctp)
    }

    /// Lower-case protocol name, as used on the command line (`sctp`, `tcp`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sctp => "sctp",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::UdpLite => "udplite",
            Self::Dccp => "dccp",
        }
    }
}

/// The transport-use field of SCTP and TCP transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TransportUse {
    /// 0: the endpoint carries user data only.
    #[default]
    DataOnly,
    /// 1: the endpoint also accepts ASAP control messages (Cookie, Business Card).
    DataPlusControl,
}

impl TransportUse {
    /// Decodes the 16-bit field; `None` for an undefined value.
    pub const fn from_u16(value: u16) -> Option<Self> {
        match value {
            0 => Some(Self::DataOnly),
            1 => Some(Self::DataPlusControl),
            _ => None,
        }
    }

    /// The 16-bit wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::DataOnly => 0,
            Self::DataPlusControl => 1,
        }
    }
}

/// Addresses of one transport; two inline before it spills to the heap.
pub type Addresses = SmallVec<[IpAddr; 2]>;

/// An owned transport parameter: how to reach an endpoint (one "leg" set of a PE).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TransportRepr {
    /// Which transport parameter this is.
    pub protocol: TransportProtocol,
    /// Port number.
    pub port: u16,
    /// Transport use (meaningful for SCTP and TCP; `DataOnly` for the others).
    pub transport_use: TransportUse,
    /// DCCP service code (0 for the others).
    pub service_code: u32,
    /// The endpoint's addresses (exactly one except for SCTP).
    pub addresses: Addresses,
}

impl Clone for TransportRepr {
    /// Copies the addresses as a slice: the derived clone went through `SmallVec`'s generic
    /// `extend`, about 45 instructions more a transport (89 per PE filling a handlespace from
    /// clones of a user and an ASAP transport).
    fn clone(&self) -> Self {
        Self {
            protocol: self.protocol,
            port: self.port,
            transport_use: self.transport_use,
            service_code: self.service_code,
            addresses: Addresses::from_slice(&self.addresses),
        }
    }
}

impl TransportRepr {
    /// A transport with one address, data only.
    pub fn new(protocol: TransportProtocol, addr: IpAddr, port: u16) -> Self {
        let mut addresses = Addresses::new();
        addresses.push(addr);
        Self { protocol, port, transport_use: TransportUse::DataOnly, service_code: 0, addresses }
    }
}

impl TransportProtocol {
    /// The protocol of a transport parameter type, if it is one.
    #[inline]
    pub const fn from_param_type(t: ParamType) -> Option<Self> {
        Some(match t {
            ParamType::SCTP_TRANSPORT => Self::Sctp,
            ParamType::TCP_TRANSPORT => Self::Tcp,
            ParamType::UDP_TRANSPORT => Self::Udp,
            ParamType::UDP_LITE_TRANSPORT => Self::UdpLite,
            ParamType::DCCP_TRANSPORT => Self::Dccp,
            _ => return None,
        })
    }

    /// The parameter type carrying this protocol.
    #[inline]
    pub const fn param_type(self) -> ParamType {
        match self {
            Self::Sctp => ParamType::SCTP_TRANSPORT,
            Self::Tcp => ParamType::TCP_TRANSPORT,
            Self::Udp => ParamType::UDP_TRANSPORT,
            Self::UdpLite => ParamType::UDP_LITE_TRANSPORT,
            Self::Dccp => ParamType::DCCP_TRANSPORT,
        }
    }

    /// Bytes of fixed fields after the TLV header (port, use/reserved, DCCP service code).
    #[inline]
    const fn fixed_len(self) -> usize {
        match self {
            Self::Dccp => 8,
            _ => 4,
        }
    }
}

/// A validated view of a transport parameter (protocol, port, use, addresses decoded on access).
#[derive(Clone, Copy, Debug)]
pub struct Transport<'a> {
    param: Param<'a>,
}

impl<'a> Transport<'a> {
    /// Wraps a transport TLV that [`check`] accepted.
    #[inline]
    pub(crate) fn new_unchecked(param: Param<'a>) -> Self {
        Self { param }
    }

    /// The protocol.
    #[inline]
    pub fn protocol(&self) -> TransportProtocol {
        TransportProtocol::from_param_type(self.param.param_type()).unwrap_or(TransportProtocol::Tcp)
    }

    /// The port.
    #[inline]
    pub fn port(&self) -> u16 {
        u16_at(self.param.value(), 0)
    }

    /// The transport use (SCTP and TCP; `DataOnly` for the others).
    #[inline]
    pub fn transport_use(&self) -> TransportUse {
        if self.protocol().has_transport_use() && u16_at(self.param.value(), 2) == 1 {
            TransportUse::DataPlusControl
        } else {
            TransportUse::DataOnly
        }
    }

    /// The DCCP service code (0 for the others).
    #[inline]
    pub fn service_code(&self) -> u32 {
        match self.protocol() {
            TransportProtocol::Dccp => u32_at(self.param.value(), 4),
            _ => 0,
        }
    }

    /// The addresses, in order.
    #[inline]
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + 'a {
        let fixed = self.protocol().fixed_len();
        Params::new(&self.param.value()[fixed..], self.param.offset() + 4 + fixed).filter_map(|p| address::decode(&p))
    }

    /// The underlying TLV.
    #[inline]
    pub fn param(&self) -> Param<'a> {
        self.param
    }

    /// The owned form.
    pub fn to_repr(&self) -> TransportRepr {
        TransportRepr {
            protocol: self.protocol(),
            port: self.port(),
            transport_use: self.transport_use(),
            service_code: self.service_code(),
            addresses: self.addresses().collect(),
        }
    }
}

/// Validates transport parameter `p`: fixed fields, a defined transport use, one address (one
/// or more for SCTP), each of the right length.
#[inline(always)]
pub(crate) fn check(ctx: &mut Ctx, p: &Param<'_>) -> Result<(), Error> {
    let ty = p.param_type();
    let Some(protocol) = TransportProtocol::from_param_type(ty) else {
        return Err(ctx.unexpected(p));
    };
    let fixed = protocol.fixed_len();
    let v = p.value();
    if v.len() < fixed {
        return Err(ctx.fault(p, ErrorKind::ParamTooShort { length: p.as_bytes().len() as u16, min: 4 + fixed as u16 }));
    }
    if protocol.has_transport_use() && u16_at(v, 2) > 1 {
        return Err(ctx.invalid(p, Invalid::TransportUse));
    }
    // The usual content, addresses only, in one straight pass; anything else takes the walk
    // below, which reports faults precisely and applies unknown parameters' action bits.
    let addrs = &v[fixed..];
    let (mut at, mut count) = (0, 0usize);
    while let Some(&[t0, t1, l0, l1]) = addrs.get(at..at + 4) {
        match (t0, t1, l0, l1) {
            (0, 1, 0, 8) if at + 8 <= addrs.len() => at += 8,
            (0, 2, 0, 20) if at + 20 <= addrs.len() => at += 20,
            _ => break,
        }
        count += 1;
    }
    if at == addrs.len() && count >= 1 && (count == 1 || protocol.is_multihomed()) {
        return Ok(());
    }
    check_in_full(ctx, p, protocol, fixed)
}

#[cold]
fn check_in_full(ctx: &mut Ctx, p: &Param<'_>, protocol: TransportProtocol, fixed: usize) -> Result<(), Error> {
    let v = p.value();
    let mut walk = Walk::new(&v[fixed..], p.offset() + 4 + fixed);
    let mut count = 0u32;
    while let Some(a) = walk.next() {
        match a.param_type() {
            ParamType::IPV4_ADDRESS => ctx.expect_len(&a, 8)?,
            ParamType::IPV6_ADDRESS => ctx.expect_len(&a, 20)?,
            t if t.is_known() => return Err(ctx.unexpected(&a)),
            _ => {
                ctx.unknown(&a)?;
                continue;
            }
        }
        count += 1;
    }
    walk.finish(ctx)?;
    if count == 0 {
        return Err(ctx.invalid(p, Invalid::NoAddress));
    }
    if count > 1 && !protocol.is_multihomed() {
        return Err(ctx.invalid(p, Invalid::TooManyAddresses));
    }
    Ok(())
}

impl TransportRepr {
    /// Encoded length of the parameter (always a multiple of 4: no padding).
    #[inline]
    pub fn encoded_len(&self) -> usize {
        4 + self.protocol.fixed_len() + self.addresses.iter().map(|a| if a.is_ipv4() { 8 } else { 20 }).sum::<usize>()
    }
}

/// Emits a transport parameter.
#[inline]
pub fn emit(w: &mut impl Put, t: &TransportRepr) {
    emit_sized(w, t, t.encoded_len());
}

/// Emits a transport parameter whose [`TransportRepr::encoded_len`] the caller computed.
#[inline(always)]
pub(crate) fn emit_sized(w: &mut impl Put, t: &TransportRepr, len: usize) {
    let len = len as u16;
    let ty = t.protocol.param_type().0;
    let second = if t.protocol.has_transport_use() { t.transport_use.to_u16() } else { 0 };
    let [t0, t1] = ty.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    let [p0, p1] = t.port.to_be_bytes();
    let [s0, s1] = second.to_be_bytes();
    if t.protocol == TransportProtocol::Dccp {
        let [c0, c1, c2, c3] = t.service_code.to_be_bytes();
        w.array(&[t0, t1, l0, l1, p0, p1, s0, s1, c0, c1, c2, c3]);
    } else {
        w.array(&[t0, t1, l0, l1, p0, p1, s0, s1]);
    }
    for a in &t.addresses {
        address::emit(w, a);
    }
}
