//! Server Information parameter (0x000B; RFC 5354 section 3.10): a registrar's id and ENRP
//! transport.

use super::check::{walk, Ctx};
use super::error::{Error, ErrorKind};
use super::field::u32_at;
use super::param::{Param, ParamType};
use super::transport::{self, Transport, TransportRepr};
use super::writer::Writer;

/// A validated view of a Server Information parameter.
#[derive(Clone, Copy, Debug)]
pub struct ServerInformation<'a> {
    param: Param<'a>,
    transport_at: u16,
}

impl<'a> ServerInformation<'a> {
    /// The registrar's server id.
    #[inline]
    pub fn server_id(&self) -> u32 {
        u32_at(self.param.value(), 0)
    }

    /// The registrar's ENRP transport.
    #[inline]
    pub fn transport(&self) -> Transport<'a> {
        Transport::new_unchecked(self.param.child(usize::from(self.transport_at)))
    }

    /// The underlying TLV.
    #[inline]
    pub fn param(&self) -> Param<'a> {
        self.param
    }

    /// The owned form.
    pub fn to_repr(&self) -> ServerInformationRepr {
        ServerInformationRepr { server_id: self.server_id(), transport: self.transport().to_repr() }
    }
}

/// Owned Server Information.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerInformationRepr {
    /// The registrar's server id.
    pub server_id: u32,
    /// The registrar's ENRP transport.
    pub transport: TransportRepr,
}

impl ServerInformationRepr {
    /// Emits this parameter.
    pub fn emit(&self, w: &mut Writer<'_>) {
        w.tlv(ParamType::SERVER_INFORMATION, |w| {
            w.u32(self.server_id);
            transport::emit(w, &self.transport);
        });
    }
}

/// Validates a Server Information parameter: server id, then exactly one transport.
pub(crate) fn check<'a>(ctx: &mut Ctx, p: Param<'a>) -> Result<ServerInformation<'a>, Error> {
    ctx.expect_min(&p, 8)?;
    let mut found: Option<u16> = None;
    walk(ctx, &p.value()[4..], p.offset() + 8, |ctx, q| {
        if q.param_type().is_transport() && found.is_none() {
            transport::check(ctx, &q)?;
            found = Some((q.offset() - p.offset()) as u16);
            Ok(())
        } else if q.param_type().is_known() {
            Err(ctx.unexpected(&q))
        } else {
            ctx.unknown(&q)
        }
    })?;
    match found {
        Some(transport_at) => Ok(ServerInformation { param: p, transport_at }),
        None => Err(ctx.fault(&p, ErrorKind::MissingTransport)),
    }
}
