//! The parameter TLV (RFC 5354 section 2; WIRE.md section 3): type, length, value, padding.

use core::fmt;

use super::field::{padded, u16_at};

/// A 16-bit parameter type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamType(pub u16);

impl ParamType {
    /// 0x0001 IPv4 Address.
    pub const IPV4_ADDRESS: Self = Self(0x0001);
    /// 0x0002 IPv6 Address.
    pub const IPV6_ADDRESS: Self = Self(0x0002);
    /// 0x0003 DCCP Transport.
    pub const DCCP_TRANSPORT: Self = Self(0x0003);
    /// 0x0004 SCTP Transport.
    pub const SCTP_TRANSPORT: Self = Self(0x0004);
    /// 0x0005 TCP Transport.
    pub const TCP_TRANSPORT: Self = Self(0x0005);
    /// 0x0006 UDP Transport.
    pub const UDP_TRANSPORT: Self = Self(0x0006);
    /// 0x0007 UDP-Lite Transport.
    pub const UDP_LITE_TRANSPORT: Self = Self(0x0007);
    /// 0x0008 Pool Member Selection Policy.
    pub const POLICY: Self = Self(0x0008);
    /// 0x0009 Pool Handle.
    pub const POOL_HANDLE: Self = Self(0x0009);
    /// 0x000A Pool Element.
    pub const POOL_ELEMENT: Self = Self(0x000A);
    /// 0x000B Server Information.
    pub const SERVER_INFORMATION: Self = Self(0x000B);
    /// 0x000C Operation Error.
    pub const OPERATION_ERROR: Self = Self(0x000C);
    /// 0x000D Cookie.
    pub const COOKIE: Self = Self(0x000D);
    /// 0x000E PE Identifier.
    pub const PE_IDENTIFIER: Self = Self(0x000E);
    /// 0x000F PE Checksum.
    pub const PE_CHECKSUM: Self = Self(0x000F);
    /// 0x803F Handle Resolution Option.
    pub const HANDLE_RESOLUTION_OPTION: Self = Self(0x803F);

    /// Whether this implementation knows the type.
    pub const fn is_known(self) -> bool {
        matches!(self.0, 0x0001..=0x000F | 0x803F)
    }

    /// What a receiver that does not know this type must do (the two high bits).
    pub const fn unknown_action(self) -> UnknownAction {
        match self.0 >> 14 {
            0 => UnknownAction::Stop,
            1 => UnknownAction::StopAndReport,
            2 => UnknownAction::Skip,
            _ => UnknownAction::SkipAndReport,
        }
    }

    /// Whether a TLV of this type may have an empty value, so that an empty TLV can stand for a
    /// missing mandatory parameter in a cause (WIRE.md section 5).
    pub const fn may_be_empty(self) -> bool {
        matches!(self, Self::POOL_HANDLE | Self::COOKIE)
    }

    /// Whether this is one of the five transport parameter types.
    pub const fn is_transport(self) -> bool {
        matches!(self.0, 0x0003..=0x0007)
    }

    /// The RFC 5354 name, or `None` for an unknown type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0001 => "IPv4 Address",
            0x0002 => "IPv6 Address",
            0x0003 => "DCCP Transport",
            0x0004 => "SCTP Transport",
            0x0005 => "TCP Transport",
            0x0006 => "UDP Transport",
            0x0007 => "UDP-Lite Transport",
            0x0008 => "Pool Member Selection Policy",
            0x0009 => "Pool Handle",
            0x000A => "Pool Element",
            0x000B => "Server Information",
            0x000C => "Operation Error",
            0x000D => "Cookie",
            0x000E => "PE Identifier",
            0x000F => "PE Checksum",
            0x803F => "Handle Resolution Option",
            _ => return None,
        })
    }
}

impl fmt::Debug for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:04x})", self.0),
            None => write!(f, "unknown parameter 0x{:04x}", self.0),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What to do with a parameter of an unknown type (WIRE.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownAction {
    /// 00: stop processing the message, discard it, report nothing.
    Stop,
    /// 01: stop processing, discard, report with cause "Unrecognized Parameter".
    StopAndReport,
    /// 10: skip the parameter and go on.
    Skip,
    /// 11: skip, go on, and report it.
    SkipAndReport,
}

impl UnknownAction {
    /// Whether the message is still processed.
    pub const fn continues(self) -> bool {
        matches!(self, Self::Skip | Self::SkipAndReport)
    }

    /// Whether the parameter must be reported back.
    pub const fn reports(self) -> bool {
        matches!(self, Self::StopAndReport | Self::SkipAndReport)
    }
}

/// A view of one TLV whose header has been checked: `bytes` holds exactly the type, length and
/// value (no padding). `offset` is where it starts in the message, for error reports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Param<'a> {
    /// A view of `bytes` (one TLV without padding, header checked) at `offset` in its message.
    #[inline(always)]
    pub(crate) fn new(bytes: &'a [u8], offset: usize) -> Self {
        Self { bytes, offset }
    }

    /// The parameter type.
    #[inline]
    pub fn param_type(&self) -> ParamType {
        ParamType(u16_at(self.bytes, 0))
    }

    /// The value, without the TLV header and without padding.
    #[inline]
    pub fn value(&self) -> &'a [u8] {
        &self.bytes[4..]
    }

    /// The whole TLV without padding (what an error cause quotes).
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Byte offset of the TLV in its message.
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The TLV that starts `at` bytes into this one (a nested parameter of a validated
    /// container). Lengths are clamped to this TLV, so it never panics.
    #[inline]
    pub(crate) fn child(&self, at: usize) -> Param<'a> {
        let rest = self.bytes.get(at..).unwrap_or(&[]);
        let len = super::field::get_u16(rest, 2).map_or(0, usize::from).clamp(rest.len().min(4), rest.len());
        Param { bytes: &rest[..len], offset: self.offset + at }
    }

    /// The TLV's byte range in its message, padding excluded.
    #[inline]
    pub fn range(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.bytes.len()
    }
}

impl fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Param")
            .field("type", &self.param_type())
            .field("offset", &self.offset)
            .field("length", &self.bytes.len())
            .finish()
    }
}

/// Why a TLV header could not be read (converted to a [`super::Error`] by the caller, which
/// knows the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlvFault {
    /// Fewer than 4 bytes left for a header, or a length field below 4.
    TooShort { length: u16 },
    /// The length runs past the end of the container.
    Overrun { length: u16, room: u16 },
}

/// Reads the TLV at `pos` of `region` (`base` = offset of `region` in the message). Returns the
/// view and the position of the next TLV (after padding, clamped to the region end: the last
/// parameter of a container may omit its padding).
#[inline]
pub(crate) fn read_tlv(region: &[u8], pos: usize, base: usize) -> Result<(Param<'_>, usize), TlvFault> {
    let room = region.len() - pos;
    if room < 4 {
        // Not even a header fits: a too-short TLV whose length could not be read.
        return Err(TlvFault::TooShort { length: 0 });
    }
    let length = u16_at(region, pos + 2);
    if length < 4 {
        return Err(TlvFault::TooShort { length });
    }
    let len = usize::from(length);
    if len > room {
        return Err(TlvFault::Overrun { length, room: room.min(u16::MAX as usize) as u16 });
    }
    let next = (pos + padded(len)).min(region.len());
    Ok((Param { bytes: &region[pos..pos + len], offset: base + pos }, next))
}

/// Iterator over the TLVs of a region that has already been validated.
#[derive(Clone, Debug)]
pub struct Params<'a> {
    region: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Params<'a> {
    /// Iterates the TLVs of `region`, which starts at byte `base` of its message. Stops at the
    /// first TLV that does not fit (never the case for validated views).
    pub fn new(region: &'a [u8], base: usize) -> Self {
        Self { region, pos: 0, base }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    #[inline]
    fn next(&mut self) -> Option<Param<'a>> {
        if self.pos >= self.region.len() {
            return None;
        }
        match read_tlv(self.region, self.pos, self.base) {
            Ok((p, next)) => {
                self.pos = next;
                Some(p)
            }
            Err(_) => {
                self.pos = self.region.len();
                None
            }
        }
    }
}
