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
    pub(crate) map: HashMap<u32, Owner, ahash::RandomState>,
}

impl Owners {
    /// Links PE `index` (with checksum words `words`) to `owner`.
    pub(crate) fn add(&mut self, pes: &mut Arena, owner: u32, index: u32, words: u64) {
        let entry = self.map.entry(owner).or_insert(Owner { head: NIL, count: 0, checksum: PeChecksum::EMPTY });
        list_push(pes, &mut entry.head, index, List::Owner);
        entry.count += 1;
        entry.checksum.add(words);
    }

    /// Unlinks PE `index` (with checksum words `words`) from `owner`.
    pub(crate) fn remove(&mut self, pes: &mut Arena, owner: u32, index: u32, words: u64) {
        if let Some(entry) = self.map.get_mut(&owner) {
            list_remove(pes, &mut entry.head, index, List::Owner);
            entry.count -= 1;
            entry.checksum.sub(words);
            if entry.count == 0 {
                self.map.remove(&owner);
            }
        }
    }

    /// Moves every PE of `from` to `to`: rewrites each PE's home and splices the lists; the
    /// checksums add up. O(PEs moved). Returns how many moved.
    pub(crate) fn take_over(&mut self, pes: &mut Arena, from: u32, to: u32) -> usize {
        if from == to {
            return 0;
        }
        let Some(moved) = self.map.remove(&from) else { return 0 };
        let mut tail = NIL;
        let mut index = moved.head;
        while index != NIL {
            let slot = &mut pes[index];
            slot.pe.home = to;
            tail = index;
            index = slot.owner_link.next;
        }
        let entry = self.map.entry(to).or_insert(Owner { head: NIL, count: 0, checksum: PeChecksum::EMPTY });
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
