//! The validating walk shared by every message and parameter: turns TLV faults into [`Error`]s
//! that name the message, parameter and byte, and applies the unknown-parameter action bits.

use super::cause::CauseCode;
use super::error::{Error, ErrorKind, Invalid, Protocol};
use super::field::{padded, u16_at};
use super::param::{read_tlv, Param, ParamType, TlvFault};

/// Context of one message being validated.
pub(crate) struct Ctx {
    pub protocol: Protocol,
    pub message_type: u8,
    /// Set when a skip-and-report unknown parameter was seen anywhere in the message.
    pub reports: bool,
    /// Set while a stray parameter is checked on its own (see [`Ctx::unexpected`]): stray
    /// parameters inside it are quoted unchecked, so the check never goes deeper.
    stray: bool,
}

impl Ctx {
    pub(crate) fn new(protocol: Protocol, message_type: u8) -> Self {
        Self { protocol, message_type, reports: false, stray: false }
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
    pub(crate) fn invalid(&self, p: &Param<'_>, what: Invalid) -> Error {
        let mut e = self.fault(p, ErrorKind::InvalidValue { what });
        e.quote = Some(quote(p));
        e
    }

    /// `p` is a known parameter where it does not belong (or repeated where only one may be):
    /// cause 0x3 quoting it when it is well-formed on its own, else cause 0x0, since quoting a
    /// malformed TLV would make the answer malformed too (WIRE.md section 9).
    #[cold]
    pub(crate) fn unexpected(&self, p: &Param<'_>) -> Error {
        let mut e = self.fault(p, ErrorKind::UnexpectedParameter);
        if self.stray || self.well_formed(p) {
            e.quote = Some(quote(p));
        }
        e
    }

    /// Whether `p` passes its own type's checks, or fails them only with a fault that is itself
    /// answered by quoting (an invalid value, a stray or unknown parameter inside it).
    #[cold]
    fn well_formed(&self, p: &Param<'_>) -> bool {
        let mut ctx = Self { stray: true, ..Self::new(self.protocol, self.message_type) };
        super::message::check_param(&mut ctx, p).map_or_else(|e| e.cause() != Some(CauseCode::UNSPECIFIED), |()| true)
    }

    /// A mandatory parameter of type `missing` is absent from the container ending at `offset`.
    #[cold]
    pub(crate) fn missing(&self, offset: usize, missing: ParamType) -> Error {
        let mut e = self.at(offset, ErrorKind::MissingParameter { missing });
        e.param_type = Some(missing);
        e
    }

    /// A fixed-size parameter whose length is not `expected`.
    #[inline(always)]
    pub(crate) fn expect_len(&self, p: &Param<'_>, expected: u16) -> Result<(), Error> {
        let length = p.as_bytes().len() as u16;
        if length == expected {
            Ok(())
        } else {
            Err(self.fault(p, ErrorKind::ParamLength { length, expected }))
        }
    }

    /// A parameter whose length must be at least `min`.
    #[inline(always)]
    pub(crate) fn expect_min(&self, p: &Param<'_>, min: u16) -> Result<(), Error> {
        let length = p.as_bytes().len() as u16;
        if length >= min {
            Ok(())
        } else {
            Err(self.fault(p, ErrorKind::ParamTooShort { length, min }))
        }
    }

    /// Handles a parameter of unknown type by its action bits: `Ok` means skip it and go on.
    #[inline(always)]
    pub(crate) fn unknown(&mut self, p: &Param<'_>) -> Result<(), Error> {
        let action = p.param_type().unknown_action();
        if action.continues() {
            self.reports |= action.reports();
            Ok(())
        } else {
            let mut e = self.fault(p, ErrorKind::UnrecognizedParameter { action });
            e.quote = Some(quote(p));
            Err(e)
        }
    }

    /// Reads the next TLV of a container (`region` starts at byte `base` of the message).
    #[inline]
    pub(crate) fn tlv<'a>(&self, region: &'a [u8], pos: usize, base: usize) -> Result<(Param<'a>, usize), Error> {
        read_tlv(region, pos, base).map_err(|f| self.tlv_fault(f, base + pos, region, pos))
    }

    #[cold]
    fn tlv_fault(&self, fault: TlvFault, offset: usize, region: &[u8], pos: usize) -> Error {
        let mut e = match fault {
            TlvFault::TooShort { length } => self.at(offset, ErrorKind::ParamLengthTooSmall { length }),
            TlvFault::Overrun { length, room } => self.at(offset, ErrorKind::ParamOverrun { length, room }),
        };
        if let Some(t) = super::field::get_u16(region, pos) {
            e.param_type = Some(ParamType(t));
        }
        e
    }
}

/// The byte range of `p` in its message, as an error stores it.
fn quote(p: &Param<'_>) -> (u32, u32) {
    let r = p.range();
    (r.start as u32, r.end as u32)
}

/// Walks the TLVs of a container region, calling `each` for every one.
#[inline]
pub(crate) fn walk<'a>(
    ctx: &mut Ctx,
    region: &'a [u8],
    base: usize,
    mut each: impl FnMut(&mut Ctx, Param<'a>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut w = Walk::new(region, base);
    while let Some(p) = w.next() {
        each(ctx, p)?;
    }
    w.finish(ctx)
}

/// A validating cursor over the TLVs of a container region. [`Walk::next`] stops at the end or
/// at a TLV that does not fit; [`Walk::finish`] then says which (the fault is rebuilt off the
/// hot path).
pub(crate) struct Walk<'a> {
    region: &'a [u8],
    pos: usize,
    base: usize,
    fault: bool,
}

impl<'a> Walk<'a> {
    /// A cursor over `region`, which starts at byte `base` of the message.
    #[inline(always)]
    pub(crate) fn new(region: &'a [u8], base: usize) -> Self {
        Self { region, pos: 0, base, fault: false }
    }

    /// The next TLV, or `None` at the end of the region or at a TLV that does not fit.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Option<Param<'a>> {
        let (region, pos) = (self.region, self.pos);
        if pos + 4 > region.len() {
            self.fault = pos < region.len();
            return None;
        }
        let len = usize::from(u16_at(region, pos + 2));
        if len < 4 || len > region.len() - pos {
            self.fault = true;
            return None;
        }
        self.pos = (pos + padded(len)).min(region.len());
        Some(Param::new(&region[pos..pos + len], self.base + pos))
    }

    /// The next TLV if it has type `t` (the cursor stays put otherwise).
    #[inline(always)]
    pub(crate) fn next_if(&mut self, t: ParamType) -> Option<Param<'a>> {
        match self.region.get(self.pos..self.pos + 2) {
            Some(&[a, b]) if u16::from_be_bytes([a, b]) == t.0 => self.next(),
            _ => None,
        }
    }

    /// `Ok` if the walk reached the end of the region, else the fault of the TLV it stopped at.
    #[inline(always)]
    pub(crate) fn finish(&self, ctx: &Ctx) -> Result<(), Error> {
        if self.fault {
            Err(self.fault_error(ctx))
        } else {
            Ok(())
        }
    }

    #[cold]
    #[inline(never)]
    fn fault_error(&self, ctx: &Ctx) -> Error {
        match ctx.tlv(self.region, self.pos, self.base) {
            Err(e) => e,
            Ok(_) => ctx.at(self.base + self.pos, ErrorKind::ParamLengthTooSmall { length: 0 }),
        }
    }
}
