//! A pool element (PE) as the handlespace stores it, and the stable key that names it.

use crate::service::ConnId;
use crate::wire::policy::Policy;
use crate::wire::transport::TransportRepr;

use super::wheel::TimerKey;

/// A stable handle to a PE: slab index plus a generation, so a key kept after the PE was removed
/// (in a timer, a queue) is recognised as stale instead of naming a newer PE. The default key
/// (generation 0, never handed out) names no PE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// A pool element: one registration with all its transport legs (WIRE.md section 3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolElement {
    /// PE identifier, chosen by the PE; unique within its pool.
    pub id: u32,
    /// Home registrar (owner): the registrar that supervises this PE.
    pub home: u32,
    /// Registration life in milliseconds as stored (capped); negative = no expiry (until
    /// deregistered or its connection drops).
    pub registration_life: i32,
    /// The user transport and policy parameters as sent on the wire, encoded once per
    /// (re-)registration: answers copy these bytes instead of encoding them again. Inline up to
    /// 48 bytes (a TCP or UDP transport with any policy, SCTP with up to three IPv4 legs).
    pub(crate) wire: smallvec::SmallVec<[u8; 48]>,
    /// How a registrar reaches the PE's ASAP endpoint, when known. Boxed: rsplib PEs never send
    /// one, and inline it would cost every PE ~56 bytes.
    pub asap_transport: Option<Box<TransportRepr>>,
    /// The PE's selection policy and its values (the pool's policy type).
    pub policy: Policy,
    /// Degradation accumulated by selections under Least Used with Degradation; reset to 0 by
    /// a re-registration. 0 under every other policy.
    pub degradation: u32,
    /// Endpoint Unreachable reports received since the last (re-)registration.
    pub unreachable_reports: u16,
    /// The ASAP connection it registered over; `None` for a PE learnt from a peer registrar.
    pub conn: Option<ConnId>,
}

impl PoolElement {
    /// How pool users reach the PE: protocol, port and every address (multi-homed legs).
    pub fn user_transport(&self) -> TransportRepr {
        // The bytes were encoded from a valid transport; the fallback is never taken.
        crate::wire::pool_element::decode_body_transport(&self.wire)
            .unwrap_or_else(|| TransportRepr::new(crate::wire::TransportProtocol::Tcp, [0u8; 4].into(), 0))
    }

    /// The user transport and policy parameters exactly as a Pool Element parameter carries
    /// them (for [`crate::wire::pool_element::emit_encoded`]).
    pub fn wire_body(&self) -> &[u8] {
        &self.wire
    }

    /// Encodes the wire body of a PE with these values (`scratch` avoids an allocation).
    pub(crate) fn encode(
        scratch: &mut Vec<u8>,
        user_transport: &TransportRepr,
        policy: &Policy,
    ) -> smallvec::SmallVec<[u8; 48]> {
        scratch.clear();
        crate::wire::pool_element::encode_body(scratch, user_transport, policy);
        smallvec::SmallVec::from_slice(scratch)
    }
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

/// The slab entry of a PE: its data plus the links that index it.
#[derive(Debug)]
pub(crate) struct PeSlot {
    pub(crate) pe: PoolElement,
    pub(crate) generation: u32,
    /// Slab index of its pool.
    pub(crate) pool: u32,
    pub(crate) owner_link: Link,
    pub(crate) conn_link: Link,
    /// Its expiry timer, if its lifetime is finite.
    pub(crate) timer: Option<TimerKey>,
    /// Length of its connection's PE list, valid only at the head of that list (uses what
    /// would be padding).
    pub(crate) conn_count: u32,
    /// Selection state: the ordered index's primary key (or WRR pass); unused by dense policies.
    pub(crate) sel_primary: u64,
    /// Selection state: rotation sequence number (ordered policies) or dense position.
    pub(crate) sel_seq: u64,
}

impl PeSlot {
    pub(crate) fn key(&self, index: u32) -> PeKey {
        PeKey { index, generation: self.generation }
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
pub(crate) fn list_push(pes: &mut slab::Slab<PeSlot>, head: &mut u32, index: u32, list: List) {
    let old = *head;
    *pes[index as usize].link_mut(list) = Link { prev: NIL, next: old };
    if old != NIL {
        pes[old as usize].link_mut(list).prev = index;
    }
    *head = index;
}

/// Unlinks PE `index` from the list starting at `head`.
pub(crate) fn list_remove(pes: &mut slab::Slab<PeSlot>, head: &mut u32, index: u32, list: List) {
    let Link { prev, next } = pes[index as usize].link(list);
    if prev != NIL {
        pes[prev as usize].link_mut(list).next = next;
    } else {
        *head = next;
    }
    if next != NIL {
        pes[next as usize].link_mut(list).prev = prev;
    }
    *pes[index as usize].link_mut(list) = Link::UNLINKED;
}

/// Whether two transports name the same addresses (in any order): the test for "the same PE
/// moved here" versus "PE identifier collision".
pub(crate) fn same_addresses(a: &TransportRepr, b: &TransportRepr) -> bool {
    a.addresses.len() == b.addresses.len() && a.addresses.iter().all(|x| b.addresses.contains(x))
}
