//! The common message header and the parameter walk shared by ASAP and ENRP messages: a
//! per-message-type `Schema` says which parameters may appear at the top level, which may
//! repeat and which are mandatory, and one validating pass fills `Slots` with borrowed views.

use core::fmt;

use super::cause::{self, OperationError};
use super::check::{Ctx, Walk};
use super::error::{Error, ErrorKind, Protocol};
use super::field::{u16_at, u32_at};
use super::param::{Param, ParamType, Params};
use super::policy::{self, PolicyParam};
use super::pool_element::{self, PoolElement};
use super::server_info::{self, ServerInformation};
use super::transport;

/// Size of the common header (type, flags, length).
pub const HEADER_LEN: usize = 4;

/// Checks the common header of a buffer that must hold exactly one message; returns type and
/// flags.
#[inline]
pub(crate) fn check_header(buf: &[u8], protocol: Protocol) -> Result<(u8, u8), Error> {
    if buf.len() < HEADER_LEN {
        let t = buf.first().copied();
        return Err(Error::new(protocol, t, 0, ErrorKind::TruncatedHeader { available: buf.len() as u8 }));
    }
    let (t, flags, length) = (buf[0], buf[1], u16_at(buf, 2));
    let err = |kind| Err(Error::new(protocol, Some(t), 2, kind));
    if length < 4 {
        return err(ErrorKind::LengthTooSmall { length });
    }
    if buf.len() < usize::from(length) {
        return err(ErrorKind::Truncated { length, available: buf.len().min(u32::MAX as usize) as u32 });
    }
    if buf.len() > usize::from(length) {
        return err(ErrorKind::TrailingBytes { length, available: buf.len().min(u32::MAX as usize) as u32 });
    }
    Ok((t, flags))
}

/// A validated message: its bytes, where its parameters start, and the typed body `B`
/// ([`super::asap::Body`] or [`super::enrp::Body`]).
#[derive(Clone, Copy, Debug)]
pub struct Message<'a, B> {
    bytes: &'a [u8],
    params_at: usize,
    reports: bool,
    body: B,
}

impl<'a, B> Message<'a, B> {
    pub(crate) fn new(bytes: &'a [u8], params_at: usize, reports: bool, body: B) -> Self {
        Self { bytes, params_at, reports, body }
    }

    /// The whole message.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message type byte.
    #[inline]
    pub fn message_type(&self) -> u8 {
        self.bytes[0]
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.bytes[1]
    }

    /// The typed body.
    #[inline]
    pub fn body(&self) -> &B {
        &self.body
    }

    /// Consumes the view, returning the typed body.
    #[inline]
    pub fn into_body(self) -> B {
        self.body
    }

    /// Byte offset where the top-level parameters start (after any fixed fields).
    #[inline]
    pub fn params_offset(&self) -> usize {
        self.params_at
    }

    /// The top-level parameters in order, unknown ones included.
    #[inline]
    pub fn params(&self) -> Params<'a> {
        Params::new(&self.bytes[self.params_at..], self.params_at)
    }

    /// Whether the message holds unknown parameters whose action bits ask for a report.
    #[inline]
    pub fn has_reports(&self) -> bool {
        self.reports
    }

    /// Calls `f` for every unknown parameter, at any depth, that must be reported with cause
    /// "Unrecognized Parameter" (action bits 11; bits 01 stop the parse with an error instead).
    pub fn for_each_report(&self, mut f: impl FnMut(Param<'a>)) {
        if self.reports {
            visit_reports(self.params(), &mut f);
        }
    }
}

fn visit_reports<'a>(params: Params<'a>, f: &mut impl FnMut(Param<'a>)) {
    for p in params {
        let t = p.param_type();
        if !t.is_known() {
            if t.unknown_action().reports() {
                f(p);
            }
            continue;
        }
        let inner = match t {
            ParamType::POOL_ELEMENT => 12,
            ParamType::SERVER_INFORMATION => 4,
            ParamType::DCCP_TRANSPORT => 8,
            t if t.is_transport() => 4,
            _ => continue,
        };
        if let Some(region) = p.value().get(inner..) {
            visit_reports(Params::new(region, p.offset() + 4 + inner), f);
        }
    }
}

/// One bit per top-level parameter type (1..=15, and bit 16 for the Handle Resolution Option).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParamSet(u32);

impl ParamSet {
    pub(crate) const EMPTY: Self = Self(0);
    pub(crate) const TRANSPORTS: Self = Self(0b1111_1000);

    #[inline(always)]
    const fn bit(t: ParamType) -> u32 {
        if t.0 < 16 {
            (1 << t.0) & !1
        } else if t.0 == 0x803F {
            1 << 16
        } else {
            0
        }
    }

    pub(crate) const fn of(types: &[ParamType]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < types.len() {
            bits |= Self::bit(types[i]);
            i += 1;
        }
        Self(bits)
    }

    pub(crate) const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for ParamSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParamSet({:#x})", self.0)
    }
}

/// What a message type may carry at its top level.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schema {
    /// Bytes of fixed fields between the header and the parameters.
    pub fixed: usize,
    /// Parameter types allowed.
    pub allowed: ParamSet,
    /// Allowed types that may appear more than once.
    pub repeat: ParamSet,
    /// Types that must appear (checked in this order, so the first missing one is reported).
    pub mandatory: &'static [ParamType],
    /// Pool Elements belong to the Pool Handle before them (ENRP Handle Table Response).
    pub grouped: bool,
}

impl Schema {
    pub(crate) const fn new(fixed: usize, allowed: &[ParamType], mandatory: &'static [ParamType]) -> Self {
        Self { fixed, allowed: ParamSet::of(allowed), repeat: ParamSet::EMPTY, mandatory, grouped: false }
    }

    pub(crate) const fn repeating(mut self, repeat: &[ParamType]) -> Self {
        self.repeat = ParamSet::of(repeat);
        self.allowed = self.allowed.union(self.repeat);
        self
    }

    pub(crate) const fn repeating_transports(mut self) -> Self {
        self.repeat = self.repeat.union(ParamSet::TRANSPORTS);
        self.allowed = self.allowed.union(ParamSet::TRANSPORTS);
        self
    }

    pub(crate) const fn grouped(mut self) -> Self {
        self.grouped = true;
        self
    }
}

/// The top-level parameters of a message, validated and borrowed. Repeatable parameters are
/// counted and the first one's offset kept; their views are built again when iterated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slots<'a> {
    pub seen: u32,
    pub pool_handle: &'a [u8],
    pub pool_element: Option<PoolElement<'a>>,
    pub pool_elements: u32,
    pub first_pool_element: usize,
    pub pe_id: u32,
    pub policy: Option<PolicyParam<'a>>,
    pub operation_error: Option<OperationError<'a>>,
    pub cookie: &'a [u8],
    pub hr_option: Option<u32>,
    pub checksum: u16,
    pub server_information: Option<ServerInformation<'a>>,
    pub server_informations: u32,
    pub transports: u32,
}

impl Slots<'_> {
    #[inline]
    pub(crate) fn has(&self, t: ParamType) -> bool {
        self.seen & ParamSet::bit(t) != 0
    }
}

/// Validates the top-level parameters of `buf` (a whole message whose header is checked)
/// against `schema`, filling the slots.
#[inline]
pub(crate) fn check_params<'a>(ctx: &mut Ctx, buf: &'a [u8], schema: &Schema) -> Result<(usize, Slots<'a>), Error> {
    let params_at = HEADER_LEN + schema.fixed;
    if buf.len() < params_at {
        return Err(ctx.at(0, ErrorKind::FixedFieldsTruncated { length: buf.len() as u16, min: params_at as u16 }));
    }
    let mut s = Slots::default();
    let mut any_handle = false;
    let mut w = Walk::new(&buf[params_at..], params_at);
    while let Some(p) = w.next() {
        let t = p.param_type();
        let bit = ParamSet::bit(t);
        if bit == 0 {
            ctx.unknown(&p)?;
            continue;
        }
        if schema.allowed.0 & bit == 0 || (s.seen & bit != 0 && schema.repeat.0 & bit == 0) {
            return Err(ctx.unexpected(&p));
        }
        s.seen |= bit;
        match t {
            ParamType::POOL_HANDLE => {
                any_handle = true;
                s.pool_handle = p.value();
            }
            ParamType::POOL_ELEMENT => {
                if schema.grouped && !any_handle {
                    return Err(ctx.unexpected(&p));
                }
                let pe = pool_element::check(ctx, p)?;
                if s.pool_elements == 0 {
                    s.first_pool_element = p.offset();
                    s.pool_element = Some(pe);
                }
                s.pool_elements += 1;
                // The rest of a run of Pool Elements (a resolution answer, a table chunk) is
                // checked here, without going through the dispatch above for each. Where only
                // one may appear (Registration, Handle Update) the next one goes through the
                // dispatch and is refused there like any other repeated parameter.
                if schema.repeat.0 & bit != 0 {
                    while let Some(q) = w.next_if(ParamType::POOL_ELEMENT) {
                        pool_element::check(ctx, q)?;
                        s.pool_elements += 1;
                    }
                }
            }
            ParamType::PE_IDENTIFIER => {
                ctx.expect_len(&p, 8)?;
                s.pe_id = u32_at(p.value(), 0);
            }
            ParamType::POLICY => {
                policy::check(ctx, &p)?;
                s.policy = Some(policy::decode(&p));
            }
            ParamType::OPERATION_ERROR => s.operation_error = Some(cause::check(ctx, p)?),
            ParamType::COOKIE => s.cookie = p.value(),
            ParamType::HANDLE_RESOLUTION_OPTION => {
                ctx.expect_len(&p, 8)?;
                s.hr_option = Some(u32_at(p.value(), 0));
            }
            ParamType::PE_CHECKSUM => {
                ctx.expect_len(&p, 6)?;
                s.checksum = u16_at(p.value(), 0);
            }
            ParamType::SERVER_INFORMATION => {
                let si = server_info::check(ctx, p)?;
                if s.server_informations == 0 {
                    s.server_information = Some(si);
                }
                s.server_informations += 1;
            }
            t if t.is_transport() => {
                transport::check(ctx, &p)?;
                s.transports += 1;
            }
            // Address parameters never appear at the top level of any message.
            _ => return Err(ctx.unexpected(&p)),
        }
    }
    w.finish(ctx)?;
    for &m in schema.mandatory {
        if !s.has(m) {
            return Err(ctx.missing(buf.len(), m));
        }
    }
    Ok((params_at, s))
}

/// Validates one known parameter on its own, by its type, wherever it stands (used to decide
/// whether a parameter where it does not belong can be quoted).
pub(crate) fn check_param(ctx: &mut Ctx, p: &Param<'_>) -> Result<(), Error> {
    match p.param_type() {
        ParamType::IPV4_ADDRESS => ctx.expect_len(p, 8),
        ParamType::IPV6_ADDRESS => ctx.expect_len(p, 20),
        ParamType::PE_IDENTIFIER | ParamType::HANDLE_RESOLUTION_OPTION => ctx.expect_len(p, 8),
        ParamType::PE_CHECKSUM => ctx.expect_len(p, 6),
        ParamType::POLICY => policy::check(ctx, p),
        ParamType::POOL_ELEMENT => pool_element::check(ctx, *p).map(drop),
        ParamType::SERVER_INFORMATION => server_info::check(ctx, *p).map(drop),
        ParamType::OPERATION_ERROR => cause::check(ctx, *p).map(drop),
        t if t.is_transport() => transport::check(ctx, p),
        // Pool Handle and Cookie hold any bytes; unknown types are not checked here.
        _ => Ok(()),
    }
}

/// Iterator over the Pool Elements of a validated message (or of one Handle Table Response
/// group), starting at the first one.
#[derive(Clone, Debug)]
pub struct PoolElements<'a> {
    params: Params<'a>,
    remaining: u32,
    grouped: bool,
}

impl<'a> PoolElements<'a> {
    pub(crate) fn new(buf: &'a [u8], from: usize, count: u32, grouped: bool) -> Self {
        let from = from.min(buf.len());
        Self { params: Params::new(&buf[from..], from), remaining: count, grouped }
    }

    /// How many Pool Elements are left.
    #[inline]
    pub fn len(&self) -> usize {
        self.remaining as usize
    }

    /// Whether none are left.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl<'a> Iterator for PoolElements<'a> {
    type Item = PoolElement<'a>;

    fn next(&mut self) -> Option<PoolElement<'a>> {
        while self.remaining > 0 {
            let p = self.params.next()?;
            match p.param_type() {
                ParamType::POOL_ELEMENT => {
                    // The message was validated whole: only find where the parts are.
                    self.remaining -= 1;
                    return Some(pool_element::locate(p));
                }
                // The next group of a Handle Table Response starts: this group is done.
                ParamType::POOL_HANDLE if self.grouped => {
                    self.remaining = 0;
                }
                _ => {}
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}
