//! The PE slots: pages of 4,096 [`PeSlot`]s, numbered by `u32`, with a free list through the
//! free slots.
//!
//! Pages instead of one vector: growing never moves or copies the slots already there (a
//! vector of ten million slots would copy 1.4 GB on its last doubling, and hold up to twice
//! what it uses), and the memory held is the slots used rounded up to one page.

use core::ops::{Index, IndexMut};

use super::element::{PeSlot, PoolElement, NIL};
use super::wheel::TimerLink;
use super::wheel::TimerSlots;
use crate::runtime::memory::populated_vec;

const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

/// `PAGE` slots. Arrays rather than slices: an index masked to the page needs no bounds check
/// (one per access to a slot, and an operation makes a dozen or more).
struct Page {
    slots: Box<[PeSlot; PAGE]>,
    /// Each slot's [`PeSlot::index_hash`] again (0 for a free slot), 16 KiB beside the slots'
    /// 576: growing the PE index reads these in turn instead of a line of every slot, which two
    /// thirds of a growth's time waited on (4 bytes per PE).
    hashes: Box<[u32; PAGE]>,
}

/// The slots of every PE of a handlespace shard.
pub(crate) struct Arena {
    pages: Vec<Page>,
    /// First free slot below `high` (linked through `pool`), or `NIL`.
    free: u32,
    /// Slots ever handed out (every slot at or above is free and not in the list).
    high: u32,
    len: usize,
}

impl core::fmt::Debug for Arena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena").field("len", &self.len).field("pages", &self.pages.len()).finish()
    }
}

impl Arena {
    pub(crate) fn new() -> Self {
        Self { pages: Vec::new(), free: NIL, high: 0, len: 0 }
    }

    /// Number of PEs held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot `index` if it holds a PE of generation `generation`.
    #[inline]
    pub(crate) fn get(&self, index: u32, generation: u32) -> Option<&PeSlot> {
        let page = self.pages.get((index >> PAGE_BITS) as usize)?;
        let slot = &page.slots[index as usize & (PAGE - 1)];
        (slot.generation() == generation && generation != 0).then_some(slot)
    }

    /// Asks for the cache lines of slot `index` that hold its [`super::PoolElement`] (a hint;
    /// nothing for an index out of range).
    #[inline]
    pub(crate) fn prefetch(&self, index: u32) {
        let page = self.pages.get((index >> PAGE_BITS) as usize);
        if let Some(slot) = page.and_then(|p| p.slots.get(index as usize & (PAGE - 1))) {
            crate::runtime::simd::prefetch(&slot.pe);
        }
    }

    /// Stores `slot` (whose generation is not 0) in a free slot and returns its index.
    pub(crate) fn insert(&mut self, slot: PeSlot) -> u32 {
        debug_assert_ne!(slot.generation(), 0);
        self.len += 1;
        if self.free != NIL {
            let index = self.free;
            self.free = self[index].pool;
            self.put(index, slot);
            return index;
        }
        let index = self.high;
        if index as usize == self.pages.len() * PAGE {
            self.add_page();
        }
        self.high += 1;
        self.put(index, slot);
        index
    }

    /// Allocates the pages that `additional` more PEs than those held would need, so
    /// that storing them touches no fresh memory (the kernel's backing of new pages, about a
    /// fifth of a fill's time, is paid here instead).
    pub(crate) fn reserve(&mut self, additional: usize) {
        // Freed slots below `high` are taken first, so `len + additional` slots in all.
        let pages = self.len.saturating_add(additional).div_ceil(PAGE);
        self.pages.reserve(pages.saturating_sub(self.pages.len()));
        while self.pages.len() < pages {
            self.add_page();
        }
    }

    /// Slots held, handed out or not.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }

    fn add_page(&mut self) {
        // Built on the heap (a page is 576 KiB): a vector, then its box as an array.
        let page: Box<[PeSlot]> = populated_vec(PAGE, PeSlot::VACANT).into_boxed_slice();
        match page.try_into() {
            Ok(slots) => self.pages.push(Page { slots, hashes: Box::new([0; PAGE]) }),
            Err(_) => unreachable!("a vector of PAGE slots is a page"),
        }
    }

    /// Frees slot `index` (which holds a PE, unlinked from every list) and returns its PE.
    /// Only what a free slot is read for is reset, its generation (0: no PE) and the free
    /// list's link: a reuse overwrites the whole slot, and copying out and clearing all 144
    /// bytes instead cost 4 % of a deregistration's instructions (1,034 against 989, callgrind).
    pub(crate) fn remove(&mut self, index: u32) -> PoolElement {
        let free = self.free;
        let (slot, hash) = self.entry(index);
        let pe = core::mem::replace(&mut slot.pe, PeSlot::VACANT.pe);
        (slot.index_hash, *hash) = (0, 0);
        slot.pool = free;
        self.free = index;
        self.len -= 1;
        pe
    }

    /// Slots ever handed out, free or not (every slot from here on is free).
    pub(crate) fn slots(&self) -> u32 {
        self.high
    }

    /// Every PE's slot index with its index hash, in slot order, from the dense copy of the
    /// hashes (no slot is read).
    pub(crate) fn hashes(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.pages.iter().enumerate().flat_map(move |(p, page)| {
            let base = p << PAGE_BITS;
            let used = (self.high as usize).saturating_sub(base).min(PAGE);
            page.hashes[..used].iter().enumerate().filter(|(_, &h)| h != 0).map(move |(i, &h)| ((base + i) as u32, h))
        })
    }

    /// Slot `index` and its copy of the index hash.
    fn entry(&mut self, index: u32) -> (&mut PeSlot, &mut u32) {
        let page = &mut self.pages[(index >> PAGE_BITS) as usize];
        let i = index as usize & (PAGE - 1);
        (&mut page.slots[i], &mut page.hashes[i])
    }

    fn put(&mut self, index: u32, slot: PeSlot) {
        let (to, hash) = self.entry(index);
        *hash = slot.index_hash;
        *to = slot;
    }

    /// Every PE slot with its index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &PeSlot)> + '_ {
        self.range(0, u32::MAX)
    }

    /// The PE slots from slot `from` up to (not including) slot `to`, with their indices (O(1)
    /// to start anywhere). Fastest driven from inside (`for_each`, `fold`): each page is then
    /// one loop over a slice.
    pub(crate) fn range(&self, from: u32, to: u32) -> impl Iterator<Item = (u32, &PeSlot)> + '_ {
        let to = to.min(self.high) as usize;
        let from = (from as usize).min(to);
        let first = from >> PAGE_BITS;
        self.pages[first..to.div_ceil(PAGE)]
            .iter()
            .enumerate()
            .flat_map(move |(p, page)| {
                let base = (first + p) << PAGE_BITS;
                let (lo, hi) = (from.saturating_sub(base), (to - base).min(PAGE));
                let slots = &page.slots;
                slots[lo..hi].iter().enumerate().map(move |(i, s)| {
                    if let Some(ahead) = slots.get(lo + i + WALK_AHEAD) {
                        crate::runtime::simd::prefetch(ahead);
                    }
                    ((base + lo + i) as u32, s)
                })
            })
            .filter(|(_, s)| s.generation() != 0)
    }
}

/// How many slots ahead of itself a [`Arena::range`] walk asks for (about 3.4 KB: the
/// hardware's stream prefetch starts again at every 4 KiB page, and the walk reads two of a
/// slot's lines, so without it each page begins with misses; 8 slots gained half as much,
/// 48 and 96 no more).
const WALK_AHEAD: usize = 24;

impl Index<u32> for Arena {
    type Output = PeSlot;
    #[inline]
    fn index(&self, index: u32) -> &PeSlot {
        &self.pages[(index >> PAGE_BITS) as usize].slots[index as usize & (PAGE - 1)]
    }
}

impl IndexMut<u32> for Arena {
    #[inline]
    fn index_mut(&mut self, index: u32) -> &mut PeSlot {
        &mut self.pages[(index >> PAGE_BITS) as usize].slots[index as usize & (PAGE - 1)]
    }
}

/// Registration lifetimes are timers linked through the slots.
impl TimerSlots for Arena {
    #[inline]
    fn link(&self, i: u32) -> &TimerLink {
        &self[i].timer
    }
    #[inline]
    fn link_mut(&mut self, i: u32) -> &mut TimerLink {
        &mut self[i].timer
    }
    #[inline]
    fn bucket(&self, i: u32) -> u16 {
        self[i].timer_bucket
    }
    #[inline]
    fn set_bucket(&mut self, i: u32, bucket: u16) {
        self[i].timer_bucket = bucket;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u32) -> PeSlot {
        let mut s = PeSlot::VACANT;
        s.pe.id = id;
        s.pe.generation = 1;
        s
    }

    #[test]
    fn slots_across_pages_are_kept_found_freed_and_reused() {
        let mut arena = Arena::new();
        let n = 2 * PAGE as u32 + 3;
        for id in 0..n {
            assert_eq!(arena.insert(slot(id)), id);
        }
        assert_eq!(arena.len(), n as usize);
        // The last slot of a page and the first of the next are distinct and found.
        for index in [PAGE as u32 - 1, PAGE as u32, n - 1] {
            assert_eq!(arena.get(index, 1).map(|s| s.pe.id), Some(index));
            assert!(arena.get(index, 2).is_none(), "another generation names no PE");
        }
        assert!(arena.get(n, 1).is_none(), "past the slots handed out");
        assert!(arena.get(u32::MAX, 1).is_none(), "past every page");
        // Freed slots are reused, the last freed first, before any new one.
        assert_eq!(arena.remove(PAGE as u32).id, PAGE as u32);
        assert_eq!(arena.remove(3).id, 3);
        assert!(arena.get(3, 1).is_none());
        assert_eq!((arena.len(), arena.slots()), (n as usize - 2, n), "freed slots stay handed out");
        assert_eq!(arena.insert(slot(100)), 3);
        assert_eq!(arena.insert(slot(101)), PAGE as u32);
        assert_eq!(arena.insert(slot(102)), n);
        let ids: Vec<u32> = arena.iter().map(|(_, s)| s.pe.id).collect();
        assert_eq!(ids.len(), n as usize + 1);
        assert_eq!((ids[3], ids[PAGE], ids[n as usize]), (100, 101, 102));
    }

    #[test]
    fn a_range_starts_and_ends_at_any_slot_and_skips_free_ones() {
        let mut arena = Arena::new();
        let n = 2 * PAGE as u32 + 5;
        for id in 0..n {
            arena.insert(slot(id));
        }
        for gone in [1, PAGE as u32, PAGE as u32 + 1, n - 1] {
            arena.remove(gone);
        }
        let all: Vec<u32> = arena.iter().map(|(i, _)| i).collect();
        let edges =
            [0, 1, 2, PAGE as u32 - 1, PAGE as u32, PAGE as u32 + 2, 2 * PAGE as u32, n - 1, n, n + 9, u32::MAX];
        for from in edges {
            for to in edges {
                let got: Vec<u32> = arena
                    .range(from, to)
                    .map(|(i, s)| {
                        assert_eq!(s.pe.id, i, "each slot comes with its own index");
                        i
                    })
                    .collect();
                let expected: Vec<u32> = all.iter().copied().filter(|&i| i >= from && i < to).collect();
                assert_eq!(got, expected, "slots {from}..{to}");
            }
        }
    }
}
