//! The owner index: home registrar id → its PEs (an intrusive list through the PE slots), their
//! count and their PE checksum, for ENRP presence, audits and takeover.

use std::collections::HashMap;

use super::arena::Arena;
use super::checksum::PeChecksum;
use super::element::{list_push, list_remove, List, NIL};

/// What the handlespace knows about one owner.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub(crate) head: u32,
    pub(crate) count: u32,
    pub(crate) checksum: PeChecksum,
}

/// Owner id → [`Owner`]; an owner with no PE has no entry.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    /// The owners, in no order.
    entries: Vec<(u32, Owner)>,
    /// Owner id → its place in `entries`.
    index: HashMap<u32, u32, ahash::RandomState>,
    /// The owner last added to or removed from, and its place: PEs come and go in runs of one
    /// owner (a registrar's own, a peer's table), and the run then skips the hash lookup.
    last: Option<(u32, u32)>,
}

impl Owners {
    /// The place of `owner` in `entries`, if it has PEs.
    #[inline]
    fn find(&mut self, owner: u32) -> Option<usize> {
        let at = self.position(owner)?;
        self.last = Some((owner, at));
        Some(at as usize)
    }

    /// The place of `owner` in `entries`, from the memo or the index.
    #[inline]
    fn position(&self, owner: u32) -> Option<u32> {
        match self.last {
            Some((id, at)) if id == owner => Some(at),
            _ => self.index.get(&owner).copied(),
        }
    }

    /// `owner`'s record, if it has PEs.
    pub(crate) fn get(&self, owner: u32) -> Option<&Owner> {
        Some(&self.entries[self.position(owner)? as usize].1)
    }

    /// Every owner with PEs.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Owner)> + '_ {
        self.entries.iter().map(|(id, o)| (*id, o))
    }

    /// `owner`'s record, made empty if it had none.
    fn entry(&mut self, owner: u32) -> &mut Owner {
        let at = match self.find(owner) {
            Some(at) => at,
            None => {
                let at = self.entries.len();
                self.entries.push((owner, Owner { head: NIL, count: 0, checksum: PeChecksum::EMPTY }));
                self.index.insert(owner, at as u32);
                self.last = Some((owner, at as u32));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// Forgets `owner`, at `at` (which has no PE left).
    fn drop_owner(&mut self, at: usize) -> Owner {
        let (owner, gone) = self.entries.swap_remove(at);
        self.index.remove(&owner);
        if let Some(&(moved, _)) = self.entries.get(at) {
            self.index.insert(moved, at as u32);
        }
        self.last = None;
        gone
    }

    /// Links PE `index` (with checksum words `words`) to `owner`.
    pub(crate) fn add(&mut self, pes: &mut Arena, owner: u32, index: u32, words: u64) {
        let entry = self.entry(owner);
        list_push(pes, &mut entry.head, index, List::Owner);
        entry.count += 1;
        entry.checksum.add(words);
    }

    /// Unlinks PE `index` (with checksum words `words`) from `owner`.
    pub(crate) fn remove(&mut self, pes: &mut Arena, owner: u32, index: u32, words: u64) {
        if let Some(at) = self.find(owner) {
            let entry = &mut self.entries[at].1;
            list_remove(pes, &mut entry.head, index, List::Owner);
            entry.count -= 1;
            entry.checksum.sub(words);
            if entry.count == 0 {
                self.drop_owner(at);
            }
        }
    }

    /// Moves every PE of `from` to `to`: rewrites each PE's home and splices the lists; the
    /// checksums add up. O(PEs moved). Returns how many moved.
    pub(crate) fn take_over(&mut self, pes: &mut Arena, from: u32, to: u32) -> usize {
        if from == to {
            return 0;
        }
        let Some(at) = self.find(from) else { return 0 };
        let moved = self.drop_owner(at);
        let mut tail = NIL;
        let mut index = moved.head;
        while index != NIL {
            let slot = &mut pes[index];
            slot.pe.home = to;
            tail = index;
            index = slot.owner_link.next;
        }
        let entry = self.entry(to);
        if entry.head != NIL {
            pes[tail].owner_link.next = entry.head;
            pes[entry.head].owner_link.prev = tail;
        }
        entry.head = moved.head;
        entry.count += moved.count;
        entry.checksum.merge(moved.checksum);
        moved.count as usize
    }
}
