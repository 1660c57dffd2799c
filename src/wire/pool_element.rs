//! Pool Element parameter (0x000A; RFC 5354 section 3.9; WIRE.md section 3.2).

use super::check::{Ctx, Walk};
use super::error::{Error, ErrorKind, Invalid};
use super::field::u32_at;
use super::param::{Param, ParamType};
use super::policy::{self, Policy, PolicyParam, PolicyRepr};
use super::transport::{self, Transport, TransportRepr};
use super::writer::{Put, Writer};

/// Registration life meaning "until deregistered or the connection drops".
pub const LIFE_INFINITE: i32 = -1;

/// A validated view of a Pool Element parameter. It keeps where its nested parameters start;
/// their fields are decoded on access.
#[derive(Clone, Copy, Debug)]
pub struct PoolElement<'a> {
    param: Param<'a>,
    user_at: u16,
    policy_at: u16,
    asap_at: u16,
}

impl<'a> PoolElement<'a> {
    /// The PE identifier.
    #[inline]
    pub fn pe_id(&self) -> u32 {
        u32_at(self.param.value(), 0)
    }

    /// The home registrar's server id (0 when a PE does not know it).
    #[inline]
    pub fn home_registrar(&self) -> u32 {
        u32_at(self.param.value(), 4)
    }

    /// Registration life in milliseconds; negative means until deregistered.
    #[inline]
    pub fn registration_life(&self) -> i32 {
        u32_at(self.param.value(), 8) as i32
    }

    /// How pool users reach the PE.
    #[inline]
    pub fn user_transport(&self) -> Transport<'a> {
        Transport::new_unchecked(self.param.child(usize::from(self.user_at)))
    }

    /// The PE's selection policy and values.
    #[inline]
    pub fn policy(&self) -> PolicyParam<'a> {
        policy::decode(&self.param.child(usize::from(self.policy_at)))
    }

    /// The policy parameter's TLV (what an error cause about the policy quotes).
    #[inline]
    pub fn policy_param(&self) -> Param<'a> {
        self.param.child(usize::from(self.policy_at))
    }

    /// How a registrar reaches the PE's ASAP endpoint, when given.
    #[inline]
    pub fn asap_transport(&self) -> Option<Transport<'a>> {
        (self.asap_at != 0).then(|| Transport::new_unchecked(self.param.child(usize::from(self.asap_at))))
    }

    /// The underlying TLV.
    #[inline]
    pub fn param(&self) -> Param<'a> {
        self.param
    }

    /// The owned form.
    pub fn to_repr(&self) -> PoolElementRepr {
        PoolElementRepr {
            pe_id: self.pe_id(),
            home_registrar: self.home_registrar(),
            registration_life: self.registration_life(),
            user_transport: self.user_transport().to_repr(),
            policy: self.policy().to_repr(),
            asap_transport: self.asap_transport().map(|t| t.to_repr()),
        }
    }
}

/// Owned Pool Element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolElementRepr {
    /// PE identifier.
    pub pe_id: u32,
    /// Home registrar's server id.
    pub home_registrar: u32,
    /// Registration life in milliseconds (negative: until deregistered).
    pub registration_life: i32,
    /// How pool users reach the PE.
    pub user_transport: TransportRepr,
    /// Selection policy and values.
    pub policy: PolicyRepr,
    /// How a registrar reaches the PE's ASAP endpoint.
    pub asap_transport: Option<TransportRepr>,
}

impl PoolElementRepr {
    /// Emits this Pool Element.
    #[inline]
    pub fn emit(&self, w: &mut Writer<'_>) {
        let fields = Fields {
            pe_id: self.pe_id,
            home_registrar: self.home_registrar,
            registration_life: self.registration_life,
            user_transport: &self.user_transport,
            asap_transport: self.asap_transport.as_ref(),
        };
        fields.emit(w, self.policy.encoded_len(), |w| policy::emit_repr(w, &self.policy));
    }
}

/// Validates a Pool Element: fixed fields, then a user transport, a policy, and optionally an
/// SCTP or TCP ASAP transport, in that order. Never recurses into a nested Pool Element.
#[inline(always)]
pub(crate) fn check<'a>(ctx: &mut Ctx, p: Param<'a>) -> Result<PoolElement<'a>, Error> {
    if let Some(pe) = canonical(ctx, p) {
        return Ok(pe);
    }
    check_in_full(ctx, p)
}

/// Validates a Pool Element parameter on its own (outside a message: e.g. one a registrar
/// forwarded between its shards after validating the whole message).
pub fn checked(p: Param<'_>) -> Result<PoolElement<'_>, Error> {
    check(&mut Ctx::new(crate::wire::Protocol::Enrp, 0), p)
}

/// The layout every sender uses (user transport, policy, optional ASAP transport; nothing
/// else), validated in one straight pass; `None` for anything else, which [`check_in_full`]
/// then accepts or rejects with the precise error. Both accept exactly the same canonical
/// parameters (a property test holds them to it).
#[inline(always)]
fn canonical<'a>(ctx: &mut Ctx, p: Param<'a>) -> Option<PoolElement<'a>> {
    let b = p.as_bytes();
    let next = |at: usize| -> Option<(ParamType, Param<'a>, usize)> {
        let len = usize::from(crate::wire::field::get_u16(b, at + 2)?);
        if len < 4 || at + len > b.len() {
            return None;
        }
        let q = Param::new(&b[at..at + len], p.offset() + at);
        Some((q.param_type(), q, at + crate::wire::field::padded(len)))
    };
    let (t, user, at) = next(16)?;
    if !t.is_transport() || transport::check(ctx, &user).is_err() {
        return None;
    }
    let (t, pol, end) = next(at)?;
    if t != ParamType::POLICY || policy::check(ctx, &pol).is_err() {
        return None;
    }
    let policy_at = at as u16;
    if end >= b.len() {
        return Some(PoolElement { param: p, user_at: 16, policy_at, asap_at: 0 });
    }
    let (t, asap, last) = next(end)?;
    if !matches!(t, ParamType::SCTP_TRANSPORT | ParamType::TCP_TRANSPORT)
        || transport::check(ctx, &asap).is_err()
        || last < b.len()
    {
        return None;
    }
    Some(PoolElement { param: p, user_at: 16, policy_at, asap_at: end as u16 })
}

/// The view of a Pool Element that [`check`] accepted earlier (as part of its message): finds
/// where its parts are by their headers alone, without checking their contents again.
#[inline]
pub(crate) fn locate(p: Param<'_>) -> PoolElement<'_> {
    let (mut user_at, mut policy_at, mut asap_at) = (0u16, 0u16, 0u16);
    let b = p.as_bytes();
    let mut at = 16;
    while let (Some(t), Some(len)) = (crate::wire::field::get_u16(b, at), crate::wire::field::get_u16(b, at + 2)) {
        let t = ParamType(t);
        if t.is_transport() {
            if policy_at == 0 {
                user_at = at as u16;
            } else {
                asap_at = at as u16;
            }
        } else if t == ParamType::POLICY {
            policy_at = at as u16;
        }
        at += crate::wire::field::padded(usize::from(len).max(4));
    }
    PoolElement { param: p, user_at, policy_at, asap_at }
}

/// The general walk: any order problem, unknown parameters by their action bits, precise errors.
fn check_in_full<'a>(ctx: &mut Ctx, p: Param<'a>) -> Result<PoolElement<'a>, Error> {
    ctx.expect_min(&p, 16)?;
    let (mut user_at, mut policy_at, mut asap_at) = (0u16, 0u16, 0u16);
    let base = p.offset();
    let mut walk = Walk::new(&p.value()[12..], base + 16);
    while let Some(q) = walk.next() {
        let t = q.param_type();
        let at = (q.offset() - base) as u16;
        if t.is_transport() {
            transport::check(ctx, &q)?;
            if user_at == 0 && policy_at == 0 {
                user_at = at;
            } else if policy_at != 0 && asap_at == 0 {
                if !matches!(t, ParamType::SCTP_TRANSPORT | ParamType::TCP_TRANSPORT) {
                    return Err(ctx.invalid(&q, Invalid::AsapTransportProtocol));
                }
                asap_at = at;
            } else {
                return Err(ctx.unexpected(&q));
            }
        } else if t == ParamType::POLICY {
            if user_at == 0 {
                return Err(ctx.fault(&q, ErrorKind::MissingTransport));
            }
            if policy_at != 0 {
                return Err(ctx.unexpected(&q));
            }
            policy::check(ctx, &q)?;
            policy_at = at;
        } else if t.is_known() {
            return Err(ctx.unexpected(&q));
        } else {
            ctx.unknown(&q)?;
        }
    }
    walk.finish(ctx)?;
    if user_at == 0 || policy_at == 0 {
        return Err(missing_part(ctx, &p, user_at == 0));
    }
    Ok(PoolElement { param: p, user_at, policy_at, asap_at })
}

#[cold]
fn missing_part(ctx: &Ctx, p: &Param<'_>, transport: bool) -> Error {
    let end = p.offset() + p.as_bytes().len();
    if transport {
        let mut e = ctx.at(end, ErrorKind::MissingTransport);
        e.param_type = Some(ParamType::POOL_ELEMENT);
        e
    } else {
        ctx.missing(end, ParamType::POLICY)
    }
}

/// The parts of a Pool Element other than its policy.
struct Fields<'t> {
    pe_id: u32,
    home_registrar: u32,
    registration_life: i32,
    user_transport: &'t TransportRepr,
    asap_transport: Option<&'t TransportRepr>,
}

impl Fields<'_> {
    /// Writes the whole parameter with its length computed up front (no patching).
    #[inline]
    fn emit(&self, w: &mut Writer<'_>, policy_len: usize, policy: impl FnOnce(&mut Writer<'_>)) {
        let user_len = self.user_transport.encoded_len();
        let asap_len = self.asap_transport.map_or(0, TransportRepr::encoded_len);
        let len = 16 + user_len + policy_len + asap_len;
        let mut head = [0u8; 16];
        head[1] = ParamType::POOL_ELEMENT.0 as u8;
        head[2..4].copy_from_slice(&(len.min(u16::MAX as usize) as u16).to_be_bytes());
        head[4..8].copy_from_slice(&self.pe_id.to_be_bytes());
        head[8..12].copy_from_slice(&self.home_registrar.to_be_bytes());
        head[12..16].copy_from_slice(&self.registration_life.to_be_bytes());
        w.reserve(len);
        w.array(&head);
        transport::emit_sized(w, self.user_transport, user_len);
        policy(w);
        if let Some(t) = self.asap_transport {
            transport::emit_sized(w, t, asap_len);
        }
        if len > u16::MAX as usize {
            w.overflowed(len);
        }
    }
}

/// Encodes the part of a Pool Element that changes only with a re-registration: the user
/// transport and policy parameters, as they appear on the wire. A registrar stores this once
/// and copies it into every answer ([`emit_encoded`]).
pub fn encode_body(buf: &mut Vec<u8>, user_transport: &TransportRepr, policy: &Policy) {
    emit_body(&mut Writer::new(buf), user_transport, policy);
}

/// [`encode_body`] to any [`Put`] (the handlespace writes it straight into a PE's slot).
#[inline(always)]
pub(crate) fn emit_body(w: &mut impl Put, user_transport: &TransportRepr, policy: &Policy) {
    transport::emit(w, user_transport);
    policy::emit(w, policy);
}

/// Emits a Pool Element from its fixed fields and a body made by [`encode_body`] (the
/// registrar's answer path: one copy, nothing encoded again).
#[inline]
pub fn emit_encoded(
    w: &mut Writer<'_>,
    pe_id: u32,
    home_registrar: u32,
    registration_life: i32,
    body: &[u8],
    asap_transport: Option<&TransportRepr>,
) {
    let asap_len = asap_transport.map_or(0, TransportRepr::encoded_len);
    let len = 16 + body.len() + asap_len;
    let [l0, l1] = (len.min(u16::MAX as usize) as u16).to_be_bytes();
    let [i0, i1, i2, i3] = pe_id.to_be_bytes();
    let [h0, h1, h2, h3] = home_registrar.to_be_bytes();
    let [r0, r1, r2, r3] = registration_life.to_be_bytes();
    w.reserve(len);
    w.array(&[0, ParamType::POOL_ELEMENT.0 as u8, l0, l1, i0, i1, i2, i3, h0, h1, h2, h3, r0, r1, r2, r3]);
    w.bytes(body);
    if let Some(t) = asap_transport {
        transport::emit_sized(w, t, asap_len);
    }
    if len > u16::MAX as usize {
        w.overflowed(len);
    }
}

/// The user transport of a body made by [`encode_body`]; `None` if the bytes are not one.
pub fn decode_body_transport(body: &[u8]) -> Option<TransportRepr> {
    let len = usize::from(crate::wire::field::get_u16(body, 2)?);
    let tlv = body.get(..len)?;
    let mut ctx = Ctx::new(crate::wire::Protocol::Asap, 0);
    let p = Param::new(tlv, 0);
    transport::check(&mut ctx, &p).ok()?;
    Some(Transport::new_unchecked(p).to_repr())
}

/// Emits a Pool Element from its parts (the registrar's path: no owned form needed).
#[inline]
pub fn emit(
    w: &mut Writer<'_>,
    pe_id: u32,
    home_registrar: u32,
    registration_life: i32,
    user_transport: &TransportRepr,
    policy: &Policy,
    asap_transport: Option<&TransportRepr>,
) {
    let fields = Fields { pe_id, home_registrar, registration_life, user_transport, asap_transport };
    fields.emit(w, policy.encoded_len(), |w| policy::emit(w, policy));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::error::Protocol;
    use crate::wire::transport::{Addresses, TransportUse};

    fn pe_bytes(addrs: usize, v6: bool, asap: bool, policy: Policy) -> Vec<u8> {
        let ip = |i: usize| -> core::net::IpAddr {
            if v6 {
                core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16).into()
            } else {
                core::net::Ipv4Addr::new(192, 0, 2, i as u8).into()
            }
        };
        let user = TransportRepr {
            protocol: if addrs > 1 {
                crate::wire::TransportProtocol::Sctp
            } else {
                crate::wire::TransportProtocol::Tcp
            },
            port: 7000,
            transport_use: TransportUse::DataOnly,
            service_code: 0,
            addresses: (0..addrs.max(1)).map(ip).collect::<Addresses>(),
        };
        let repr = PoolElementRepr {
            pe_id: 1,
            home_registrar: 2,
            registration_life: 3,
            user_transport: user.clone(),
            policy: PolicyRepr::Known(policy),
            asap_transport: asap.then_some(user),
        };
        let mut buf = Vec::new();
        repr.emit(&mut Writer::new(&mut buf));
        buf
    }

    /// The fast path and the full walk must agree: whatever the fast path accepts, the walk
    /// accepts with the same offsets; whatever the walk rejects, the fast path rejects.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let len = crate::wire::field::get_u16(bytes, 2).map_or(0, usize::from);
        if bytes.len() < 4 || len < 4 || len > bytes.len() {
            return Ok(());
        }
        let p = Param::new(&bytes[..len], 0);
        let mut c1 = Ctx::new(Protocol::Asap, 1);
        let mut c2 = Ctx::new(Protocol::Asap, 1);
        let fast = canonical(&mut c1, p);
        let full = check_in_full(&mut c2, p);
        if let Ok(b) = &full {
            // A view found again by headers alone (iterating a validated message) is the same.
            let l = locate(p);
            prop_assert_eq!((l.user_at, l.policy_at, l.asap_at), (b.user_at, b.policy_at, b.asap_at));
        }
        match (fast, full) {
            (Some(a), Ok(b)) => {
                prop_assert_eq!((a.user_at, a.policy_at, a.asap_at), (b.user_at, b.policy_at, b.asap_at));
                prop_assert_eq!(c1.reports, c2.reports);
            }
            (Some(_), Err(e)) => {
                return Err(TestCaseError::fail(format!("fast path accepted what the walk rejects: {e}")))
            }
            (None, _) => {}
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_the_full_walk(
            addrs in 1usize..4, v6: bool, asap: bool, weight: u32,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = pe_bytes(addrs, v6, asap, Policy::WeightedRoundRobin { weight });
            for (at, v) in flips {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            agree(&bytes)?;
        }
    }

    #[test]
    fn canonical_layouts_take_the_fast_path() {
        for (addrs, v6, asap) in [(1, false, false), (3, true, true), (2, false, true)] {
            let bytes = pe_bytes(addrs, v6, asap, Policy::LeastUsedDegradation { load: 1, degradation: 2 });
            let mut ctx = Ctx::new(Protocol::Asap, 1);
            assert!(canonical(&mut ctx, Param::new(&bytes, 0)).is_some(), "{addrs} {v6} {asap}");
        }
    }
}
