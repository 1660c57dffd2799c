//! Transport parameters (SCTP, TCP, UDP, UDP-Lite, DCCP) and their address parameters
//! (RFC 5354 sections 3.3-3.7; WIRE.md section 3.1).

use core::net::IpAddr;

use smallvec::SmallVec;

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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

impl TransportRepr {
    /// A transport with one address, data only.
    pub fn new(protocol: TransportProtocol, addr: IpAddr, port: u16) -> Self {
        let mut addresses = Addresses::new();
        addresses.push(addr);
        Self { protocol, port, transport_use: TransportUse::DataOnly, service_code: 0, addresses }
    }
}
