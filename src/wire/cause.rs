//! Error causes carried in an Operation Error parameter (RFC 5352 section 5; WIRE.md section 5).

use super::check::Ctx;
use super::error::{Error, ErrorKind, Invalid};
use super::field::{get_u16, padded};
use super::param::{Param, ParamType};
use super::writer::Writer;

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

/// One error cause inside an Operation Error: code and opaque info (padding excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause<'a> {
    /// The cause code.
    pub code: CauseCode,
    /// The cause info (a quoted parameter or message, or nothing).
    pub info: &'a [u8],
}

/// A validated view of an Operation Error parameter: one or more causes.
#[derive(Clone, Copy, Debug)]
pub struct OperationError<'a> {
    param: Param<'a>,
}

impl<'a> OperationError<'a> {
    /// The causes, in order.
    pub fn causes(&self) -> Causes<'a> {
        Causes { region: self.param.value(), pos: 0 }
    }

    /// The first cause's code (an Operation Error has at least one).
    pub fn first_code(&self) -> CauseCode {
        self.causes().next().map_or(CauseCode::UNSPECIFIED, |c| c.code)
    }

    /// The underlying TLV.
    pub fn param(&self) -> Param<'a> {
        self.param
    }

    /// The owned form.
    pub fn to_repr(&self) -> Vec<CauseRepr> {
        self.causes().map(|c| CauseRepr { code: c.code, info: c.info.to_vec() }).collect()
    }
}

/// Iterator over the causes of a validated Operation Error.
#[derive(Clone, Debug)]
pub struct Causes<'a> {
    region: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Causes<'a> {
    type Item = Cause<'a>;

    fn next(&mut self) -> Option<Cause<'a>> {
        let code = get_u16(self.region, self.pos)?;
        let len = usize::from(get_u16(self.region, self.pos + 2)?);
        let info = self.region.get(self.pos + 4..self.pos + len)?;
        self.pos += padded(len);
        Some(Cause { code: CauseCode(code), info })
    }
}

/// Owned error cause.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CauseRepr {
    /// The cause code.
    pub code: CauseCode,
    /// The cause info.
    pub info: Vec<u8>,
}

/// Validates an Operation Error: one or more causes, each of length ≥ 4 inside the parameter.
pub(crate) fn check<'a>(ctx: &Ctx, p: Param<'a>) -> Result<OperationError<'a>, Error> {
    let v = p.value();
    if v.is_empty() {
        return Err(ctx.invalid(&p, Invalid::NoCause));
    }
    let mut pos = 0;
    while pos < v.len() {
        let length = get_u16(v, pos + 2).unwrap_or(0);
        let len = usize::from(length);
        if len < 4 || pos + len > v.len() {
            return Err(ctx.fault(&p, ErrorKind::BadCause { length }));
        }
        pos += padded(len);
    }
    Ok(OperationError { param: p })
}

/// Emits one cause with the given info.
#[inline]
pub fn emit_cause(w: &mut Writer<'_>, code: CauseCode, info: &[u8]) {
    // A cause has the TLV shape, with the code in the type slot.
    w.tlv(ParamType(code.0), |w| w.bytes(info));
}

/// Emits an Operation Error parameter with one cause.
#[inline]
pub fn emit_operation_error(w: &mut Writer<'_>, code: CauseCode, info: &[u8]) {
    w.tlv(ParamType::OPERATION_ERROR, |w| emit_cause(w, code, info));
}

/// Emits an Operation Error parameter with several causes.
pub fn emit_causes(w: &mut Writer<'_>, causes: &[CauseRepr]) {
    w.tlv(ParamType::OPERATION_ERROR, |w| {
        for c in causes {
            emit_cause(w, c.code, &c.info);
        }
    });
}
