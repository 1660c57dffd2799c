//! ENRP messages (RFC 5353; WIRE.md section 7): types, the validating parse into typed views,
//! and emitters.

use super::cause::OperationError;
use super::cause::{self, CauseCode};
use super::check::Ctx;
use super::error::{Error, ErrorKind, Protocol};
use super::field::{u16_at, u32_at};
use super::message::{check_header, check_params, Message, PoolElements, Schema};
use super::param::{ParamType, Params};
use super::pool_element::PoolElement;
use super::server_info::{self, ServerInformation, ServerInformationRepr};
use super::writer::{EmitError, Writer};

/// An ENRP message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// 0x01 Presence.
    Presence = 0x01,
    /// 0x02 Handle Table Request.
    HandleTableRequest = 0x02,
    /// 0x03 Handle Table Response.
    HandleTableResponse = 0x03,
    /// 0x04 Handle Update.
    HandleUpdate = 0x04,
    /// 0x05 List Request.
    ListRequest = 0x05,
    /// 0x06 List Response.
    ListResponse = 0x06,
    /// 0x07 Init Takeover.
    InitTakeover = 0x07,
    /// 0x08 Init Takeover Ack.
    InitTakeoverAck = 0x08,
    /// 0x09 Takeover Server.
    TakeoverServer = 0x09,
    /// 0x0A Error.
    Error = 0x0A,
}

impl MessageType {
    /// Every ENRP message type, in code order.
    pub const ALL: [Self; 10] = [
        Self::Presence,
        Self::HandleTableRequest,
        Self::HandleTableResponse,
        Self::HandleUpdate,
        Self::ListRequest,
        Self::ListResponse,
        Self::InitTakeover,
        Self::InitTakeoverAck,
        Self::TakeoverServer,
        Self::Error,
    ];

    /// The type for a code, if known.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).wrapping_sub(1)).copied()
    }

    /// The RFC 5353 name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Presence => "Presence",
            Self::HandleTableRequest => "Handle Table Request",
            Self::HandleTableResponse => "Handle Table Response",
            Self::HandleUpdate => "Handle Update",
            Self::ListRequest => "List Request",
            Self::ListResponse => "List Response",
            Self::InitTakeover => "Init Takeover",
            Self::InitTakeoverAck => "Init Takeover Ack",
            Self::TakeoverServer => "Takeover Server",
            Self::Error => "Error",
        }
    }

    /// Bytes of fixed fields after the header: sender and receiver ids, then the update action
    /// and reserved word, or the takeover target.
    pub const fn fixed_len(self) -> usize {
        match self {
            Self::HandleUpdate | Self::InitTakeover | Self::InitTakeoverAck | Self::TakeoverServer => 12,
            _ => 8,
        }
    }

    const fn schema(self) -> Schema {
        use ParamType as P;
        let fixed = self.fixed_len();
        match self {
            Self::Presence => {
                Schema::new(fixed, &[P::PE_CHECKSUM, P::SERVER_INFORMATION], &[P::PE_CHECKSUM, P::SERVER_INFORMATION])
            }
            Self::HandleTableResponse => {
                Schema::new(fixed, &[], &[]).repeating(&[P::POOL_HANDLE, P::POOL_ELEMENT]).grouped()
            }
            Self::HandleUpdate => {
                Schema::new(fixed, &[P::POOL_HANDLE, P::POOL_ELEMENT], &[P::POOL_HANDLE, P::POOL_ELEMENT])
            }
            Self::ListResponse => Schema::new(fixed, &[], &[]).repeating(&[P::SERVER_INFORMATION]),
            Self::Error => Schema::new(fixed, &[P::OPERATION_ERROR], &[P::OPERATION_ERROR]),
            Self::HandleTableRequest
            | Self::ListRequest
            | Self::InitTakeover
            | Self::InitTakeoverAck
            | Self::TakeoverServer => Schema::new(fixed, &[], &[]),
        }
    }
}

/// R flag of Presence: reply required.
pub const FLAG_REPLY_REQUIRED: u8 = 0x01;
/// W flag of Handle Table Request: the sender's own PEs only.
pub const FLAG_OWN_CHILDREN_ONLY: u8 = 0x01;
/// R flag of Handle Table Response and List Response: rejected.
pub const FLAG_REJECT: u8 = 0x01;
/// M flag of Handle Table Response: more to send.
pub const FLAG_MORE: u8 = 0x02;
/// T flag of Handle Update: takeover suggested.
pub const FLAG_TAKEOVER_SUGGESTED: u8 = 0x01;

/// Handle Update action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// 0: add (or update) the PE.
    AddPe,
    /// 1: delete the PE.
    DeletePe,
}

impl UpdateAction {
    /// The 16-bit wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::AddPe => 0,
            Self::DeletePe => 1,
        }
    }
}

/// The typed body of a validated ENRP message (sender and receiver ids are in every one).
#[derive(Clone, Debug)]
pub struct Body<'a> {
    /// The sending registrar.
    pub sender: u32,
    /// The receiving registrar (0 = any).
    pub receiver: u32,
    /// What the message says.
    pub kind: Kind<'a>,
}

/// What an ENRP message says.
#[derive(Clone, Debug)]
pub enum Kind<'a> {
    /// Liveness and audit checksum.
    Presence {
        /// R flag: answer with a Presence.
        reply_required: bool,
        /// Checksum over the PEs the sender owns.
        checksum: u16,
        /// The sender's id and ENRP transport.
        server_information: ServerInformation<'a>,
    },
    /// Asks for the handlespace (or, with W, the receiver's own PEs).
    HandleTableRequest {
        /// W flag.
        own_children_only: bool,
    },
    /// One chunk of a handlespace.
    HandleTableResponse {
        /// M flag: ask again for more.
        more: bool,
        /// R flag: rejected.
        rejected: bool,
        /// The (pool handle, PEs) groups.
        entries: TableEntries<'a>,
    },
    /// A PE was added, updated or deleted at its home registrar.
    HandleUpdate {
        /// T flag.
        takeover_suggested: bool,
        /// Add or delete.
        action: UpdateAction,
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE.
        pool_element: PoolElement<'a>,
    },
    /// Asks for the list of known registrars.
    ListRequest,
    /// The list of known registrars.
    ListResponse {
        /// R flag: rejected.
        rejected: bool,
        /// One Server Information per registrar.
        servers: Servers<'a>,
    },
    /// A takeover of `target` begins.
    InitTakeover {
        /// The registrar believed dead.
        target: u32,
    },
    /// Agreement to a takeover.
    InitTakeoverAck {
        /// The registrar believed dead.
        target: u32,
    },
    /// The sender took over `target`'s PEs.
    TakeoverServer {
        /// The registrar taken over.
        target: u32,
    },
    /// An error report.
    Error {
        /// The causes.
        error: OperationError<'a>,
    },
}

/// A validated ENRP message.
pub type EnrpMessage<'a> = Message<'a, Body<'a>>;

/// Iterator over the (pool handle, Pool Elements) groups of a Handle Table Response.
#[derive(Clone, Debug)]
pub struct TableEntries<'a> {
    buf: &'a [u8],
    params: Params<'a>,
}

impl<'a> Iterator for TableEntries<'a> {
    type Item = (&'a [u8], PoolElements<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let p = self.params.next()?;
            if p.param_type() == ParamType::POOL_HANDLE {
                let from = p.offset() + super::field::padded(p.as_bytes().len());
                return Some((p.value(), PoolElements::new(self.buf, from, u32::MAX, true)));
            }
        }
    }
}

/// Iterator over the Server Information parameters of a List Response.
#[derive(Clone, Debug)]
pub struct Servers<'a> {
    params: Params<'a>,
}

impl<'a> Iterator for Servers<'a> {
    type Item = ServerInformation<'a>;

    fn next(&mut self) -> Option<ServerInformation<'a>> {
        loop {
            let p = self.params.next()?;
            if p.param_type() == ParamType::SERVER_INFORMATION {
                let mut ctx = Ctx::new(Protocol::Enrp, MessageType::ListResponse as u8);
                if let Ok(si) = server_info::check(&mut ctx, p) {
                    return Some(si);
                }
            }
        }
    }
}

/// Validates `buf` as exactly one ENRP message and returns its typed view. No allocation.
pub fn parse(buf: &[u8]) -> Result<EnrpMessage<'_>, Error> {
    let (code, flags) = check_header(buf, Protocol::Enrp)?;
    let Some(mt) = MessageType::from_u8(code) else {
        let mut e = Error::new(Protocol::Enrp, Some(code), 0, ErrorKind::UnrecognizedMessage);
        e.quote = Some((0, buf.len() as u32));
        return Err(e);
    };
    let mut ctx = Ctx::new(Protocol::Enrp, code);
    if mt == MessageType::HandleUpdate && buf.len() >= 16 {
        let action = u16_at(buf, 12);
        if action > 1 {
            return Err(ctx.at(12, ErrorKind::UnknownUpdateAction { action }));
        }
    }
    let (params_at, s) = check_params(&mut ctx, buf, &mt.schema())?;
    let (sender, receiver) = (u32_at(buf, 4), u32_at(buf, 8));
    let params = || Params::new(&buf[params_at..], params_at);
    let kind = match mt {
        MessageType::Presence => match s.server_information {
            Some(server_information) => Kind::Presence {
                reply_required: flags & FLAG_REPLY_REQUIRED != 0,
                checksum: s.checksum,
                server_information,
            },
            None => return Err(ctx.missing(buf.len(), ParamType::SERVER_INFORMATION)),
        },
        MessageType::HandleTableRequest => {
            Kind::HandleTableRequest { own_children_only: flags & FLAG_OWN_CHILDREN_ONLY != 0 }
        }
        MessageType::HandleTableResponse => Kind::HandleTableResponse {
            more: flags & FLAG_MORE != 0,
            rejected: flags & FLAG_REJECT != 0,
            entries: TableEntries { buf, params: params() },
        },
        MessageType::HandleUpdate => match s.pool_element {
            Some(pool_element) => Kind::HandleUpdate {
                takeover_suggested: flags & FLAG_TAKEOVER_SUGGESTED != 0,
                action: if u16_at(buf, 12) == 0 { UpdateAction::AddPe } else { UpdateAction::DeletePe },
                pool_handle: s.pool_handle,
                pool_element,
            },
            None => return Err(ctx.missing(buf.len(), ParamType::POOL_ELEMENT)),
        },
        MessageType::ListRequest => Kind::ListRequest,
        MessageType::ListResponse => {
            Kind::ListResponse { rejected: flags & FLAG_REJECT != 0, servers: Servers { params: params() } }
        }
        MessageType::InitTakeover => Kind::InitTakeover { target: u32_at(buf, 12) },
        MessageType::InitTakeoverAck => Kind::InitTakeoverAck { target: u32_at(buf, 12) },
        MessageType::TakeoverServer => Kind::TakeoverServer { target: u32_at(buf, 12) },
        MessageType::Error => match s.operation_error {
            Some(error) => Kind::Error { error },
            None => return Err(ctx.missing(buf.len(), ParamType::OPERATION_ERROR)),
        },
    };
    Ok(Message::new(buf, params_at, ctx.reports, Body { sender, receiver, kind }))
}

/// Emits an ENRP message: header, sender and receiver ids, then `body` (fixed fields and
/// parameters).
fn emit(
    w: &mut Writer<'_>,
    t: MessageType,
    flags: u8,
    sender: u32,
    receiver: u32,
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, EmitError> {
    w.message(t as u8, flags, |w| {
        w.u32(sender);
        w.u32(receiver);
        body(w);
    })
}

/// Emits a Presence with the sender's PE checksum and Server Information.
pub fn emit_presence(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    reply_required: bool,
    checksum: u16,
    info: &ServerInformationRepr,
) -> Result<usize, EmitError> {
    let flags = if reply_required { FLAG_REPLY_REQUIRED } else { 0 };
    emit(w, MessageType::Presence, flags, sender, receiver, |w| {
        w.tlv(ParamType::PE_CHECKSUM, |w| w.u16(checksum));
        info.emit(w);
    })
}

/// Emits a Handle Table Request (W flag: the receiver's own PEs only).
pub fn emit_handle_table_request(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    own_children_only: bool,
) -> Result<usize, EmitError> {
    let flags = if own_children_only { FLAG_OWN_CHILDREN_ONLY } else { 0 };
    emit(w, MessageType::HandleTableRequest, flags, sender, receiver, |_| {})
}

/// Emits a Handle Table Response whose groups (a Pool Handle, then that pool's Pool Elements)
/// `groups` writes; `more` sets the M flag, `rejected` the R flag.
pub fn emit_handle_table_response(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    more: bool,
    rejected: bool,
    groups: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, EmitError> {
    let flags = if more { FLAG_MORE } else { 0 } | if rejected { FLAG_REJECT } else { 0 };
    emit(w, MessageType::HandleTableResponse, flags, sender, receiver, groups)
}

/// Emits a Handle Update for PE `pool_element` (written by the closure, e.g. with
/// [`super::pool_element::emit_encoded`]) of pool `pool_handle`.
pub fn emit_handle_update(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    action: UpdateAction,
    pool_handle: &[u8],
    pool_element: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, EmitError> {
    emit(w, MessageType::HandleUpdate, 0, sender, receiver, |w| {
        w.u16(action.to_u16());
        w.u16(0);
        w.tlv_bytes(ParamType::POOL_HANDLE, pool_handle);
        pool_element(w);
    })
}

/// Emits a List Request.
pub fn emit_list_request(w: &mut Writer<'_>, sender: u32, receiver: u32) -> Result<usize, EmitError> {
    emit(w, MessageType::ListRequest, 0, sender, receiver, |_| {})
}

/// Emits a List Response naming `servers` (R flag when `rejected`).
pub fn emit_list_response<'s>(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    rejected: bool,
    servers: impl IntoIterator<Item = &'s ServerInformationRepr>,
) -> Result<usize, EmitError> {
    let flags = if rejected { FLAG_REJECT } else { 0 };
    emit(w, MessageType::ListResponse, flags, sender, receiver, |w| {
        for s in servers {
            s.emit(w);
        }
    })
}

/// Emits Init Takeover, Init Takeover Ack or Takeover Server (by `t`) about `target`.
pub fn emit_takeover(
    w: &mut Writer<'_>,
    t: MessageType,
    sender: u32,
    receiver: u32,
    target: u32,
) -> Result<usize, EmitError> {
    debug_assert!(matches!(t, MessageType::InitTakeover | MessageType::InitTakeoverAck | MessageType::TakeoverServer));
    emit(w, t, 0, sender, receiver, |w| w.u32(target))
}

/// Emits an ENRP Error with one cause.
pub fn emit_error(
    w: &mut Writer<'_>,
    sender: u32,
    receiver: u32,
    code: CauseCode,
    info: &[u8],
) -> Result<usize, EmitError> {
    emit(w, MessageType::Error, 0, sender, receiver, |w| cause::emit_operation_error(w, code, info))
}
