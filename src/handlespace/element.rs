//! A pool element (PE) as the handlespace stores it, and the stable key that names it.
//!
//! One PE is one 144-byte slot ([`PeSlot`]): the [`PoolElement`] itself (88 bytes: id, home,
//! life, connection and its parameters as sent on the wire) followed by the links that index it
//! (owner and connection lists, its lifetime timer, its place in the pool's selection index).
//! What an answer reads (id, home, life and the encoded parameters) is the first 80 bytes of
//! the slot; everything else is behind it.

use crate::service::ConnId;
use crate::wire::policy::{Policy, PolicyType};
use crate::wire::pool_element::emit_body;
use crate::wire::transport::{self, TransportRepr};
use crate::wire::{Put, Writer};

use super::wheel::{TimerLink, UNARMED};

/// A stable handle to a PE: slab index plus a generation, so a key kept after the PE was removed
/// (in a timer, a queue) is recognised as stale instead of naming a newer PE. The default key
/// (generation 0, never handed out) names no PE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Bytes of encoded parameters a PE keeps inline (in its slot); longer ones go to the heap.
/// 61 bytes hold an SCTP transport with two IPv4 legs (24 bytes), any policy (up to 16) and an
/// ASAP transport with one IPv4 address (16), or three IPv4 legs (28) with a one-value policy
/// (12); or a TCP transport with one IPv6 address (28), any policy and an ASAP transport with
/// one IPv4 address.
pub(crate) const INLINE: usize = 61;

/// The parameters of a PE as sent on the wire, back to back: its user transport, its policy and
/// (optionally) its ASAP transport. Each is a TLV whose length is a multiple of 4.
#[derive(Clone)]
pub(crate) enum Wire {
    /// `body` bytes of user transport and policy, then `len - body` bytes of ASAP transport.
    Inline { body: u8, len: u8, bytes: [u8; INLINE] },
    /// The same, too long to keep inline.
    Heap { body: u16, bytes: Box<[u8]> },
}

/// The inline bytes of a [`Wire`] as they are written: what does not fit is counted, not
/// kept, so that a caller sees it overflowed and encodes to the heap instead.
struct InlineWriter {
    bytes: [u8; INLINE],
    len: usize,
}

impl Put for InlineWriter {
    #[inline(always)]
    fn array<const N: usize>(&mut self, v: &[u8; N]) {
        if let Some(to) = self.bytes.get_mut(self.len..self.len + N) {
            to.copy_from_slice(v);
        }
        self.len += N;
    }
    #[inline(always)]
    fn position(&self) -> usize {
        self.len
    }
}

/// Emits the body ([`crate::wire::pool_element::encode_body`]) and the ASAP transport to `w`;
/// returns the body's length.
#[inline(always)]
fn emit_all(
    w: &mut impl Put,
    user_transport: &TransportRepr,
    policy: &Policy,
    asap_transport: Option<&TransportRepr>,
) -> usize {
    let start = w.position();
    emit_body(w, user_transport, policy);
    let body = w.position() - start;
    if let Some(t) = asap_transport {
        transport::emit(w, t);
    }
    body
}

impl Wire {
    /// Encodes the parameters, straight into the inline bytes when they fit (`scratch`
    /// avoids an allocation when they do not).
    pub(crate) fn encode(
        scratch: &mut Vec<u8>,
        user_transport: &TransportRepr,
        policy: &Policy,
        asap_transport: Option<&TransportRepr>,
    ) -> Self {
        let mut inline = InlineWriter { bytes: [0; INLINE], len: 0 };
        let body = emit_all(&mut inline, user_transport, policy, asap_transport);
        if inline.len <= INLINE {
            return Self::Inline { body: body as u8, len: inline.len as u8, bytes: inline.bytes };
        }
        scratch.clear();
        // Parameters are limited by the message size (64 KiB), so `body` fits in 16 bits.
        let body = emit_all(&mut Writer::new(scratch), user_transport, policy, asap_transport);
        Self::Heap { body: body as u16, bytes: scratch.as_slice().into() }
    }

    /// Every byte: user transport, policy, ASAP transport.
    pub(crate) fn all(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes, .. } => &bytes[..usize::from(*len)],
            Self::Heap { bytes, .. } => bytes,
        }
    }

    /// User transport and policy.
    pub(crate) fn body(&self) -> &[u8] {
        match self {
            Self::Inline { body, bytes, .. } => &bytes[..usize::from(*body)],
            Self::Heap { body, bytes } => &bytes[..usize::from(*body)],
        }
    }

    /// The ASAP transport's bytes (empty when there is none).
    pub(crate) fn asap(&self) -> &[u8] {
        match self {
            Self::Inline { body, len, bytes } => &bytes[usize::from(*body)..usize::from(*len)],
            Self::Heap { body, bytes } => &bytes[usize::from(*body)..],
        }
    }
}

/// A pool element: one registration with all its transport legs (WIRE.md section 3.2).
#[derive(Clone)]
#[repr(C)]
pub struct PoolElement {
    /// PE identifier, chosen by the PE; unique within its pool.
    pub id: u32,
    /// Home registrar (owner): the registrar that supervises this PE.
    pub home: u32,
    /// Registration life in milliseconds as stored (capped); negative = no expiry (until
    /// deregistered or its connection drops).
    pub registration_life: i32,
    /// Generation of its slot (see [`PeKey`]); kept here, next to what answers read.
    pub(crate) generation: u32,
    /// The user transport, policy and ASAP transport parameters as sent on the wire, encoded
    /// once per (re-)registration: answers copy these bytes instead of encoding them again.
    pub(crate) wire: Wire,
    /// The ASAP connection it registered over (see [`PoolElement::conn`]).
    pub(crate) conn: PackedConn,
}

/// A PE's connection in 8 bytes ([`ConnId::to_u64`], all ones for none): `Option<ConnId>`
/// takes 12, which with the 4 bytes it leaves over would keep the parameters to 53 bytes
/// inline, too few for a two-value policy beside an ASAP transport. No connection has slot
/// `u32::MAX` (the engine refuses a connection limit above it), so none packs to all ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackedConn(u64);

impl PackedConn {
    /// No connection.
    pub(crate) const NONE: Self = Self(u64::MAX);

    /// `conn` packed.
    pub(crate) fn new(conn: Option<ConnId>) -> Self {
        conn.map_or(Self::NONE, |c| Self(c.to_u64()))
    }

    /// The connection unpacked.
    pub(crate) fn get(self) -> Option<ConnId> {
        (self != Self::NONE).then(|| ConnId::from_u64(self.0))
    }
}

impl PartialEq for PoolElement {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.home, self.registration_life, self.conn, self.wire.all())
            == (other.id, other.home, other.registration_life, other.conn, other.wire.all())
    }
}

impl Eq for PoolElement {}

impl core::fmt::Debug for PoolElement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolElement")
            .field("id", &format_args!("{:#010x}", self.id))
            .field("home", &format_args!("{:#010x}", self.home))
            .field("registration_life", &self.registration_life)
            .field("user_transport", &self.user_transport())
            .field("policy", &self.policy())
            .field("asap_transport", &self.asap_transport())
            .field("conn", &self.conn())
            .finish()
    }
}

impl PoolElement {
    /// The ASAP connection it registered over; `None` for a PE learnt from a peer registrar.
    pub fn conn(&self) -> Option<ConnId> {
        self.conn.get()
    }

    /// How pool users reach the PE: protocol, port and every address (multi-homed legs).
    pub fn user_transport(&self) -> TransportRepr {
        // The bytes were encoded from a valid transport; the fallback is never taken.
        crate::wire::pool_element::decode_body_transport(self.wire.body())
            .unwrap_or_else(|| TransportRepr::new(crate::wire::TransportProtocol::Tcp, [0u8; 4].into(), 0))
    }

    /// How a registrar reaches the PE's ASAP endpoint, when known.
    pub fn asap_transport(&self) -> Option<TransportRepr> {
        let asap = self.wire.asap();
        (!asap.is_empty()).then(|| crate::wire::pool_element::decode_body_transport(asap)).flatten()
    }

    /// The PE's selection policy and its values (the pool's policy type).
    pub fn policy(&self) -> Policy {
        decode_policy(self.wire.body()).unwrap_or(Policy::RoundRobin)
    }

    /// The first two values of its policy (0 where the policy has fewer), without decoding the
    /// policy: what a selection under Least Used with Degradation reads.
    pub(crate) fn policy_values(&self) -> [u32; 2] {
        let p = policy_param(self.wire.body()).unwrap_or(&[]);
        [get_u32(p, 8).unwrap_or(0), get_u32(p, 12).unwrap_or(0)]
    }

    /// The policy parameter exactly as a Pool Element parameter carries it (a Handle
    /// Resolution Response copies the first PE's).
    pub fn policy_param(&self) -> &[u8] {
        policy_param(self.wire.body()).unwrap_or(&[])
    }

    /// The user transport and policy parameters exactly as a Pool Element parameter carries
    /// them (for [`crate::wire::pool_element::emit_encoded`]): what a Handle Resolution Response
    /// lists.
    pub fn wire_body(&self) -> &[u8] {
        self.wire.body()
    }

    /// The user transport, policy and ASAP transport parameters exactly as a Pool Element
    /// parameter carries them: what ENRP sends (Handle Update, Handle Table Response).
    pub fn wire_body_with_asap(&self) -> &[u8] {
        self.wire.all()
    }
}

/// The policy parameter in a body made by [`crate::wire::pool_element::encode_body`]: it
/// follows the user transport, whose length is a multiple of 4 (as is the policy's).
fn policy_param(body: &[u8]) -> Option<&[u8]> {
    let at = usize::from(get_u16(body, 2)?);
    let p = body.get(at..)?;
    p.get(..usize::from(get_u16(p, 2)?))
}

/// The policy in a body made by [`crate::wire::pool_element::encode_body`].
pub(crate) fn decode_policy(body: &[u8]) -> Option<Policy> {
    let p = policy_param(body)?;
    let len = p.len();
    let word = |i: usize| get_u32(p, i);
    let t = PolicyType(word(4)?);
    match len {
        8 => Policy::from_values(t, &[]),
        12 => Policy::from_values(t, &[word(8)?]),
        16 => Policy::from_values(t, &[word(8)?, word(12)?]),
        _ => None,
    }
}

fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Index meaning "none" in the intrusive lists.
pub(crate) const NIL: u32 = u32::MAX;

/// Previous and next PE in one intrusive list (an owner's PEs, a connection's PEs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) prev: u32,
    pub(crate) next: u32,
}

impl Link {
    pub(crate) const UNLINKED: Self = Self { prev: NIL, next: NIL };
}

/// The slot of a PE: its data, then the links that index it. A free slot has generation 0 and
/// holds the next free slot's index in `pool`.
#[derive(Clone)]
#[repr(C)]
pub(crate) struct PeSlot {
    pub(crate) pe: PoolElement,
    /// Slab index of its pool.
    pub(crate) pool: u32,
    /// Its hash in the PE index (`handlespace::pe_hash`), 0 in a free slot: removing the PE
    /// hashes nothing (the arena keeps a dense copy, from which the index grows).
    pub(crate) index_hash: u32,
    /// Selection state of the ordered policies: the WRR pass; or the primary sort key (a value
    /// derived from the policy values) in the low half and, under Least Used with Degradation,
    /// the degradation accumulated by selections since the last (re-)registration in the high
    /// half (kept here rather than in a field of its own that the other eight policies would
    /// pay for).
    pub(crate) sel_key: u64,
    pub(crate) owner_link: Link,
    pub(crate) conn_link: Link,
    /// Its registration lifetime timer (armed when `timer_bucket` is not `UNARMED`).
    pub(crate) timer: TimerLink,
    /// Selection state: position in the pool's dense index, or rotation sequence number in an
    /// ordered one.
    pub(crate) sel_pos: u32,
    pub(crate) timer_bucket: u16,
    /// Endpoint Unreachable reports received since the last (re-)registration.
    pub(crate) unreachable_reports: u16,
}

impl PeSlot {
    /// A free slot.
    pub(crate) const VACANT: Self = Self {
        pe: PoolElement {
            id: 0,
            home: 0,
            registration_life: 0,
            generation: 0,
            wire: Wire::Inline { body: 0, len: 0, bytes: [0; INLINE] },
            conn: PackedConn::NONE,
        },
        pool: NIL,
        index_hash: 0,
        sel_key: 0,
        owner_link: Link::UNLINKED,
        conn_link: Link::UNLINKED,
        timer: TimerLink::UNLINKED,
        sel_pos: 0,
        timer_bucket: UNARMED,
        unreachable_reports: 0,
    };

    pub(crate) fn key(&self, index: u32) -> PeKey {
        PeKey { index, generation: self.pe.generation }
    }

    pub(crate) fn generation(&self) -> u32 {
        self.pe.generation
    }

    pub(crate) fn has_timer(&self) -> bool {
        self.timer_bucket != UNARMED
    }
}

/// Which intrusive list of a [`PeSlot`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum List {
    Owner,
    Conn,
}

impl PeSlot {
    fn link_mut(&mut self, list: List) -> &mut Link {
        match list {
            List::Owner => &mut self.owner_link,
            List::Conn => &mut self.conn_link,
        }
    }

    pub(crate) fn link(&self, list: List) -> Link {
        match list {
            List::Owner => self.owner_link,
            List::Conn => self.conn_link,
        }
    }
}

/// Pushes PE `index` at the front of the list starting at `head`.
pub(crate) fn list_push(pes: &mut super::arena::Arena, head: &mut u32, index: u32, list: List) {
    let old = *head;
    *pes[index].link_mut(list) = Link { prev: NIL, next: old };
    if old != NIL {
        pes[old].link_mut(list).prev = index;
    }
    *head = index;
}

/// Unlinks PE `index` from the list starting at `head`.
pub(crate) fn list_remove(pes: &mut super::arena::Arena, head: &mut u32, index: u32, list: List) {
    let Link { prev, next } = pes[index].link(list);
    if prev != NIL {
        pes[prev].link_mut(list).next = next;
    } else {
        *head = next;
    }
    if next != NIL {
        pes[next].link_mut(list).prev = prev;
    }
    *pes[index].link_mut(list) = Link::UNLINKED;
}

/// Whether two transports name the same addresses (in any order): the test for "the same PE
/// moved here" versus "PE identifier collision".
pub(crate) fn same_addresses(a: &TransportRepr, b: &TransportRepr) -> bool {
    a.addresses.len() == b.addresses.len() && a.addresses.iter().all(|x| b.addresses.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        // What the memory figures in results/handlespace/memory.md rest on.
        assert_eq!(core::mem::size_of::<Wire>(), 64);
        assert_eq!(core::mem::size_of::<PoolElement>(), 88);
        assert_eq!(core::mem::size_of::<PeSlot>(), 144);
    }

    #[test]
    fn a_two_leg_pe_with_any_policy_and_its_asap_transport_is_kept_inline() {
        use crate::wire::TransportProtocol;
        use std::net::{IpAddr, Ipv4Addr};
        let mut user = TransportRepr::new(TransportProtocol::Sctp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9);
        user.addresses.push(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)));
        let asap = TransportRepr::new(TransportProtocol::Tcp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3863);
        // The largest policy parameter: two values (Least Used with Degradation, Priority Least Used).
        let policy = Policy::LeastUsedDegradation { load: 1, degradation: 2 };
        let wire = Wire::encode(&mut Vec::new(), &user, &policy, Some(&asap));
        assert!(matches!(wire, Wire::Inline { .. }), "{} bytes went to the heap", wire.all().len());
        assert_eq!(decode_policy(wire.body()), Some(policy));
        let conn = ConnId { shard: 3, generation: 7, slot: 11 };
        let pe = PoolElement {
            id: 1,
            home: 2,
            registration_life: 3,
            generation: 1,
            wire,
            conn: PackedConn::new(Some(conn)),
        };
        assert_eq!((pe.user_transport(), pe.asap_transport(), pe.conn()), (user, Some(asap), Some(conn)));
        assert_eq!(PackedConn::new(None).get(), None);
    }

    /// The parameters as a message's [`Writer`] encodes them, for comparison.
    fn written(user: &TransportRepr, policy: &Policy, asap: Option<&TransportRepr>) -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        crate::wire::pool_element::encode_body(&mut buf, user, policy);
        let body = buf.len();
        if let Some(t) = asap {
            transport::emit(&mut Writer::new(&mut buf), t);
        }
        (buf, body)
    }

    #[test]
    fn parameters_are_the_bytes_a_message_carries_inline_or_on_the_heap() {
        use crate::wire::TransportProtocol;
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v6 = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
        let asap = TransportRepr::new(TransportProtocol::Tcp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3863);
        let policy = Policy::PriorityLeastUsed { load: 9, degradation: 7 };
        // One IPv6 leg fits (28 + 16 + 16 bytes), three do not (68 + ...).
        for legs in [1, 3] {
            let mut user = TransportRepr::new(TransportProtocol::Tcp, v6(1), 80);
            user.addresses.extend((2..=legs).map(v6));
            for asap in [None, Some(&asap)] {
                let wire = Wire::encode(&mut Vec::new(), &user, &policy, asap);
                let (bytes, body) = written(&user, &policy, asap);
                assert_eq!(matches!(wire, Wire::Heap { .. }), bytes.len() > INLINE, "{legs} legs");
                assert_eq!((wire.all(), wire.body().len()), (&bytes[..], body), "{legs} legs, {asap:?}");
                assert_eq!(decode_policy(wire.body()), Some(policy));
            }
        }
    }
}
