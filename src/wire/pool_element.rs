//! Pool Element parameter (0x000A; RFC 5354 section 3.9; WIRE.md section 3.2).

use super::check::{walk, Ctx};
use super::error::{Error, ErrorKind};
use super::field::u32_at;
use super::param::{Param, ParamType};
use super::policy::{self, Policy, PolicyParam, PolicyRepr};
use super::transport::{self, Transport, TransportProtocol, TransportRepr};
use super::writer::Writer;

/// Registration life meaning "until deregistered or the connection drops".
pub const LIFE_INFINITE: i32 = -1;

/// A validated view of a Pool Element parameter.
#[derive(Clone, Copy, Debug)]
pub struct PoolElement<'a> {
    param: Param<'a>,
    user_transport: Transport<'a>,
    policy: PolicyParam<'a>,
    asap_transport: Option<Transport<'a>>,
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
    pub fn user_transport(&self) -> &Transport<'a> {
        &self.user_transport
    }

    /// The PE's selection policy and values.
    #[inline]
    pub fn policy(&self) -> PolicyParam<'a> {
        self.policy
    }

    /// How a registrar reaches the PE's ASAP endpoint, when given.
    #[inline]
    pub fn asap_transport(&self) -> Option<&Transport<'a>> {
        self.asap_transport.as_ref()
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
            user_transport: self.user_transport.to_repr(),
            policy: self.policy.to_repr(),
            asap_transport: self.asap_transport.map(|t| t.to_repr()),
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
    pub fn emit(&self, w: &mut Writer<'_>) {
        emit_with(
            w,
            self.pe_id,
            self.home_registrar,
            self.registration_life,
            &self.user_transport,
            self.asap_transport.as_ref(),
            |w| policy::emit_repr(w, &self.policy),
        );
    }
}

/// Validates a Pool Element: fixed fields, then a user transport, a policy, and optionally an
/// SCTP or TCP ASAP transport, in that order. Never recurses into a nested Pool Element.
pub(crate) fn check<'a>(ctx: &mut Ctx, p: Param<'a>) -> Result<PoolElement<'a>, Error> {
    ctx.expect_min(&p, 16)?;
    let mut user: Option<Transport<'a>> = None;
    let mut pol: Option<PolicyParam<'a>> = None;
    let mut asap: Option<Transport<'a>> = None;
    walk(ctx, &p.value()[12..], p.offset() + 16, |ctx, q| {
        let t = q.param_type();
        if t.is_transport() {
            if user.is_none() && pol.is_none() {
                user = Some(transport::check(ctx, q)?);
            } else if pol.is_some() && asap.is_none() {
                let tr = transport::check(ctx, q)?;
                if !matches!(
                    tr.protocol(),
                    TransportProtocol::Sctp | TransportProtocol::Tcp
                ) {
                    return Err(ctx.invalid(&q, "ASAP transport must be SCTP or TCP"));
                }
                asap = Some(tr);
            } else {
                return Err(ctx.unexpected(&q));
            }
            Ok(())
        } else if t == ParamType::POLICY {
            if user.is_none() {
                return Err(ctx.fault(&q, ErrorKind::MissingTransport));
            }
            if pol.is_some() {
                return Err(ctx.unexpected(&q));
            }
            pol = Some(policy::check(ctx, &q)?);
            Ok(())
        } else if t.is_known() {
            Err(ctx.unexpected(&q))
        } else {
            ctx.unknown(&q)
        }
    })?;
    let end = p.offset() + p.as_bytes().len();
    let Some(user_transport) = user else {
        let mut e = ctx.at(end, ErrorKind::MissingTransport);
        e.param_type = Some(ParamType::POOL_ELEMENT);
        return Err(e);
    };
    let Some(policy) = pol else {
        return Err(ctx.missing(end, ParamType::POLICY));
    };
    Ok(PoolElement {
        param: p,
        user_transport,
        policy,
        asap_transport: asap,
    })
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
    emit_with(
        w,
        pe_id,
        home_registrar,
        registration_life,
        user_transport,
        asap_transport,
        |w| policy::emit(w, policy),
    );
}

#[inline]
fn emit_with(
    w: &mut Writer<'_>,
    pe_id: u32,
    home_registrar: u32,
    registration_life: i32,
    user_transport: &TransportRepr,
    asap_transport: Option<&TransportRepr>,
    policy: impl FnOnce(&mut Writer<'_>),
) {
    w.tlv(ParamType::POOL_ELEMENT, |w| {
        w.u32(pe_id);
        w.u32(home_registrar);
        w.u32(registration_life as u32);
        transport::emit(w, user_transport);
        policy(w);
        if let Some(t) = asap_transport {
            transport::emit(w, t);
        }
    });
}
