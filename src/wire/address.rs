//! IPv4 Address (0x0001) and IPv6 Address (0x0002) parameters.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::param::{Param, ParamType};

use super::writer::Put;

/// Decodes an address parameter of the right length; `None` for anything else.
#[inline]
pub(crate) fn decode(p: &Param<'_>) -> Option<IpAddr> {
    match (p.param_type(), p.value()) {
        (ParamType::IPV4_ADDRESS, v) => <[u8; 4]>::try_from(v).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        (ParamType::IPV6_ADDRESS, v) => <[u8; 16]>::try_from(v).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// Emits an address parameter.
#[inline]
pub fn emit(w: &mut impl Put, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let [a0, a1, a2, a3] = a.octets();
            w.array(&[0, 1, 0, 8, a0, a1, a2, a3]);
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            w.array(&[
                0, 2, 0, 20, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11], o[12], o[13],
                o[14], o[15],
            ]);
        }
    }
}
