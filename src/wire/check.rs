//! The validating walk shared by every message and parameter: turns TLV faults into [`Error`]s
//! that name the message, parameter and byte, and applies the unknown-parameter action bits.

use super::error::{Error, ErrorKind, Protocol};
use super::param::{read_tlv, Param, ParamType, TlvFault};

/// Context of one message being validated.
pub(crate) struct Ctx {
    pub protocol: Protocol,
    pub message_type: u8,
    /// Set when a skip-and-report unknown parameter was seen anywhere in the message.
    pub reports: bool,
}

impl Ctx {
    pub(crate) fn new(protocol: Protocol, message_type: u8) -> Self {
        Self {
            protocol,
            message_type,
            reports: false,
        }
    }

    /// An error located at `offset`, not tied to a parameter.
    #[cold]
    pub(crate) fn at(&self, offset: usize, kind: ErrorKind) -> Error {
        Error::new(self.protocol, Some(self.message_type), offset, kind)
    }

    /// An error in parameter `p` (not quotable).
    #[cold]
    pub(crate) fn fault(&self, p: &Param<'_>, kind: ErrorKind) -> Error {
        let mut e = self.at(p.offset(), kind);
        e.param_type = Some(p.param_type());
        e
    }

    /// `p` is well-formed but carries an invalid value: cause 0x3 quoting `p`.
    #[cold]
    pub(crate) fn invalid(&self, p: &Param<'_>, what: &'static str) -> Error {
        let mut e = self.fault(p, ErrorKind::InvalidValue { what });
        e.quote = Some(p.range());
        e
    }

    /// `p` is a known, well-formed parameter where it does not belong: cause 0x3 quoting it.
    #[cold]
    pub(crate) fn unexpected(&self, p: &Param<'_>) -> Error {
        let mut e = self.fault(p, ErrorKind::UnexpectedParameter);
        e.quote = Some(p.range());
        e
    }

    /// A mandatory parameter of type `missing` is absent from the container ending at `offset`.
    #[cold]
    pub(crate) fn missing(&self, offset: usize, missing: ParamType) -> Error {
        let mut e = self.at(offset, ErrorKind::MissingParameter { missing });
        e.param_type = Some(missing);
        e
    }

    /// A fixed-size parameter whose length is not `expected`.
    #[inline]
    pub(crate) fn expect_len(&self, p: &Param<'_>, expected: u16) -> Result<(), Error> {
        let length = p.as_bytes().len() as u16;
        if length == expected {
            Ok(())
        } else {
            Err(self.fault(p, ErrorKind::ParamLength { length, expected }))
        }
    }

    /// A parameter whose length must be at least `min`.
    #[inline]
    pub(crate) fn expect_min(&self, p: &Param<'_>, min: u16) -> Result<(), Error> {
        let length = p.as_bytes().len() as u16;
        if length >= min {
            Ok(())
        } else {
            Err(self.fault(p, ErrorKind::ParamTooShort { length, min }))
        }
    }

    /// Handles a parameter of unknown type by its action bits: `Ok` means skip it and go on.
    #[inline]
    pub(crate) fn unknown(&mut self, p: &Param<'_>) -> Result<(), Error> {
        let action = p.param_type().unknown_action();
        if action.continues() {
            self.reports |= action.reports();
            Ok(())
        } else {
            let mut e = self.fault(p, ErrorKind::UnrecognizedParameter { action });
            e.quote = Some(p.range());
            Err(e)
        }
    }

    /// Reads the next TLV of a container (`region` starts at byte `base` of the message).
    #[inline]
    pub(crate) fn tlv<'a>(
        &self,
        region: &'a [u8],
        pos: usize,
        base: usize,
    ) -> Result<(Param<'a>, usize), Error> {
        read_tlv(region, pos, base).map_err(|f| self.tlv_fault(f, base + pos, region, pos))
    }

    #[cold]
    fn tlv_fault(&self, fault: TlvFault, offset: usize, region: &[u8], pos: usize) -> Error {
        let mut e = match fault {
            TlvFault::TooShort { length } => {
                self.at(offset, ErrorKind::ParamLengthTooSmall { length })
            }
            TlvFault::Overrun { length, room } => {
                self.at(offset, ErrorKind::ParamOverrun { length, room })
            }
        };
        if let Some(t) = super::field::get_u16(region, pos) {
            e.param_type = Some(ParamType(t));
        }
        e
    }
}

/// Walks the TLVs of a container region, calling `each` for every one.
#[inline]
pub(crate) fn walk<'a>(
    ctx: &mut Ctx,
    region: &'a [u8],
    base: usize,
    mut each: impl FnMut(&mut Ctx, Param<'a>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut pos = 0;
    while pos < region.len() {
        let (p, next) = ctx.tlv(region, pos, base)?;
        each(ctx, p)?;
        pos = next;
    }
    Ok(())
}
