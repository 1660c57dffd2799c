//! Error causes carried in an Operation Error parameter (RFC 5352 section 5; WIRE.md section 5).

/// A 16-bit error cause code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CauseCode(pub u16);

impl CauseCode {
    /// 0x0: unspecified error (also used when nothing well-formed can be quoted).
    pub const UNSPECIFIED: Self = Self(0x0);
    /// 0x1: unrecognized parameter; info = the parameter.
    pub const UNRECOGNIZED_PARAMETER: Self = Self(0x1);
    /// 0x2: unrecognized message; info = the message.
    pub const UNRECOGNIZED_MESSAGE: Self = Self(0x2);
    /// 0x3: invalid values; info = the offending parameter.
    pub const INVALID_VALUES: Self = Self(0x3);
    /// 0x4: non-unique PE identifier.
    pub const NON_UNIQUE_PE_IDENTIFIER: Self = Self(0x4);
    /// 0x5: inconsistent pooling policy; info = the policy parameter.
    pub const INCONSISTENT_POOLING_POLICY: Self = Self(0x5);
    /// 0x6: lack of resources.
    pub const LACK_OF_RESOURCES: Self = Self(0x6);
    /// 0x7: inconsistent transport type; info = the transport parameter.
    pub const INCONSISTENT_TRANSPORT_TYPE: Self = Self(0x7);
    /// 0x8: inconsistent data/control configuration.
    pub const INCONSISTENT_DATA_CONTROL: Self = Self(0x8);
    /// 0x9: unknown pool handle.
    pub const UNKNOWN_POOL_HANDLE: Self = Self(0x9);
    /// 0xA: rejection due to security considerations.
    pub const REJECTED_SECURITY: Self = Self(0xA);

    /// Whether Wireshark (and the RFC) require cause info for this code.
    pub const fn requires_info(self) -> bool {
        matches!(self.0, 0x1 | 0x2 | 0x3 | 0x5 | 0x7)
    }

    /// The RFC 5352 name, or `None` for an unknown code.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "Unspecified Error",
            0x1 => "Unrecognized Parameter",
            0x2 => "Unrecognized Message",
            0x3 => "Invalid Values",
            0x4 => "Non-unique PE Identifier",
            0x5 => "Inconsistent Pooling Policy",
            0x6 => "Lack of Resources",
            0x7 => "Inconsistent Transport Type",
            0x8 => "Inconsistent Data/Control Configuration",
            0x9 => "Unknown Pool Handle",
            0xA => "Rejection due to Security Considerations",
            _ => return None,
        })
    }
}
