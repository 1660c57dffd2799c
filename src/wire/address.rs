//! IPv4 Address (0x0001) and IPv6 Address (0x0002) parameters.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::check::Ctx;
use super::error::Error;
use super::param::{Param, ParamType};
use super::writer::Writer;

/// Validates an address parameter (exact length 8 or 20) and returns the address.
#[inline]
pub(crate) fn check(ctx: &Ctx, p: &Param<'_>) -> Result<IpAddr, Error> {
    match p.param_type() {
        ParamType::IPV4_ADDRESS => {
            ctx.expect_len(p, 8)?;
            Ok(decode(p).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
        }
        _ => {
            ctx.expect_len(p, 20)?;
            Ok(decode(p).unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))
        }
    }
}

/// Decodes an address parameter of the right length; `None` for anything else.
#[inline]
pub(crate) fn decode(p: &Param<'_>) -> Option<IpAddr> {
    match (p.param_type(), p.value()) {
        (ParamType::IPV4_ADDRESS, v) => <[u8; 4]>::try_from(v)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        (ParamType::IPV6_ADDRESS, v) => <[u8; 16]>::try_from(v)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// Whether `t` is an address parameter type.
#[inline]
pub(crate) fn is_address(t: ParamType) -> bool {
    matches!(t, ParamType::IPV4_ADDRESS | ParamType::IPV6_ADDRESS)
}

/// Emits an address parameter.
#[inline]
pub fn emit(w: &mut Writer<'_>, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => w.tlv(ParamType::IPV4_ADDRESS, |w| w.bytes(&a.octets())),
        IpAddr::V6(a) => w.tlv(ParamType::IPV6_ADDRESS, |w| w.bytes(&a.octets())),
    }
}
