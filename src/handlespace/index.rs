//! A hash index of slab indices whose probe reads one cache line.
//!
//! The handlespace's tables (handle → pool, (pool, PE id) → PE) store only the slab index of what
//! they find and compare keys in the slabs. hashbrown keeps a table's control bytes apart from
//! its entries, so a probe of a table larger than the caches misses twice before it even reaches
//! the slab (control bytes, then the entry). Here buckets come in 64-byte chunks of 12 one-byte
//! tags, an overflow count and 12 four-byte entries: the tags a probe matches and the entries
//! they name arrive in one line.
//!
//! Open addressing over chunks, probed in turn. Removal needs no tombstones: each chunk counts
//! the entries that were placed past it because it was full (the scheme of folly's F14), and a
//! probe stops at the first chunk whose count is 0. A count that reaches 255 stays there until
//! the table is rebuilt. Tables grow by doubling and never shrink (as hashbrown's).

use crate::runtime::simd::{match_bytes, prefetch};

/// Entries per chunk.
const WIDTH: usize = 12;
/// Entries per chunk on average before the table grows: 10 of 12 (83 %). At 11, filling 100,000
/// PEs into one pool ran 10 % slower (more chunks overflow before the table doubles); bytes per
/// entry stay below hashbrown's 4-byte buckets with their control bytes at 7/8.
const MAX_LOAD: usize = 10;
/// Where a chunk keeps its overflow count, after its tags.
const OVERFLOW: usize = WIDTH;
/// One chunk's tags: 0 = empty, else the hash's top byte (1 when that is 0).
const EMPTY: u8 = 0;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk {
    /// Tags in bytes 0..12, the overflow count in byte 12, then 3 unused.
    ctrl: [u8; 16],
    items: [u32; WIDTH],
}

const VACANT: Chunk = Chunk { ctrl: [EMPTY; 16], items: [0; WIDTH] };

/// The tag of an entry with this hash: its top byte, moved off [`EMPTY`]. Eight bits rather
/// than seven and a mark: a probe that matches a tag reads the entry's slab item to compare
/// keys, which misses the cache, so each bit halves those wasted misses.
#[inline]
fn tag(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

/// One bit per tag byte of `ctrl` that equals `byte` (bit `k` for entry `k`).
#[inline]
fn matches(ctrl: [u8; 16], byte: u8) -> u32 {
    match_bytes(ctrl, byte) & ((1 << WIDTH) - 1)
}

/// Position in the chunk of the lowest match of `m`.
#[inline]
fn first(m: u32) -> usize {
    m.trailing_zeros() as usize
}

/// How an entry's hash is found again when the table grows.
type HashOf<'a> = &'a dyn Fn(u32) -> u64;

/// A hash index of `u32` values (slab indices) under 64-bit hashes supplied by the caller.
#[derive(Clone, Default)]
pub(crate) struct ChunkIndex {
    /// A power of two of them, or none.
    chunks: Vec<Chunk>,
    len: usize,
}

impl core::fmt::Debug for ChunkIndex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChunkIndex").field("len", &self.len).field("chunks", &self.chunks.len()).finish()
    }
}

impl ChunkIndex {
    /// An empty index (allocates on the first insertion).
    pub(crate) const fn new() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries it holds before the next insertion grows it.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * MAX_LOAD
    }

    /// The first entry under `hash` for which `eq` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.chunks.len().wrapping_sub(1);
        let t = tag(hash);
        let mut i = hash as usize & mask;
        for _ in 0..self.chunks.len() {
            let c = &self.chunks[i];
            let mut m = matches(c.ctrl, t);
            while m != 0 {
                let v = c.items[first(m)];
                if eq(v) {
                    return Some(v);
                }
                m &= m - 1;
            }
            if c.ctrl[OVERFLOW] == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Whether the next insertion grows the index.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.capacity()
    }

    /// The capacity a growth rebuilds to: twice the present one.
    pub(crate) fn grown_capacity(&self) -> usize {
        (self.capacity() * 2).max(2 * MAX_LOAD)
    }

    /// Adds `value` under `hash` (the caller knows it is not there yet); a full index first
    /// grows, finding its entries' hashes with `hash_of` (a caller that can list its entries in
    /// a better order grows it first with [`ChunkIndex::rebuild`]).
    pub(crate) fn insert(&mut self, hash: u64, value: u32, hash_of: impl Fn(u32) -> u64) {
        if self.is_full() {
            self.grow(&hash_of);
        }
        self.place(hash, value);
    }

    #[cold]
    fn grow(&mut self, hash_of: HashOf<'_>) {
        let capacity = self.grown_capacity();
        let old = core::mem::take(&mut self.chunks);
        let values = old.iter().flat_map(|c| (0..WIDTH).filter(|&k| c.ctrl[k] != EMPTY).map(|k| c.items[k]));
        self.rebuild_dyn(capacity, values.map(|v| (hash_of(v), v)), hash_of);
    }

    /// Replaces the contents by `entries` (hash, value), with room for at least `capacity`
    /// entries before the next growth (past it, it grows as it goes, finding hashes with
    /// `hash_of`). The caller can feed them in whatever order reads its slabs best (in slab
    /// order, rather than in the old table's random one).
    pub(crate) fn rebuild(
        &mut self,
        capacity: usize,
        entries: impl IntoIterator<Item = (u64, u32)>,
        hash_of: impl Fn(u32) -> u64,
    ) {
        self.rebuild_dyn(capacity, entries, &hash_of);
    }

    fn rebuild_dyn(&mut self, capacity: usize, entries: impl IntoIterator<Item = (u64, u32)>, hash_of: HashOf<'_>) {
        self.chunks = crate::runtime::memory::populated_vec(capacity.div_ceil(MAX_LOAD).next_power_of_two(), VACANT);
        self.len = 0;
        // Entries land in random chunks of a table larger than the caches: a batch is hashed
        // and its chunks asked for first, so that their misses overlap instead of following
        // one another.
        const BATCH: usize = 16;
        let mut batch = [(0, 0); BATCH];
        let mut entries = entries.into_iter();
        loop {
            let mask = self.chunks.len() - 1;
            let mut n = 0;
            for (hash, v) in entries.by_ref().take(BATCH) {
                prefetch(&self.chunks[hash as usize & mask]);
                batch[n] = (hash, v);
                n += 1;
            }
            if n == 0 {
                return;
            }
            for &(hash, v) in &batch[..n] {
                if self.is_full() {
                    self.grow(hash_of);
                }
                self.place(hash, v);
            }
        }
    }

    /// Puts `value` in the first chunk from its home with a free entry, counting it as
    /// overflow in each full chunk passed. There is one: the load stays below the chunks' room.
    fn place(&mut self, hash: u64, value: u32) {
        let mask = self.chunks.len() - 1;
        let mut i = hash as usize & mask;
        for _ in 0..self.chunks.len() {
            let c = &mut self.chunks[i];
            let free = matches(c.ctrl, EMPTY);
            if free != 0 {
                let k = first(free);
                c.ctrl[k] = tag(hash);
                c.items[k] = value;
                self.len += 1;
                return;
            }
            c.ctrl[OVERFLOW] = c.ctrl[OVERFLOW].saturating_add(1);
            i = (i + 1) & mask;
        }
        unreachable!("an index below its load limit has a free entry");
    }

    /// Asks for the chunk where a probe for `hash` starts, ahead of the probe (a hint).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(c) = self.chunks.get(hash as usize & self.chunks.len().wrapping_sub(1)) {
            prefetch(c);
        }
    }

    /// Removes `value` from under `hash`; returns whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, value: u32) -> bool {
        let mask = self.chunks.len().wrapping_sub(1);
        let t = tag(hash);
        let home = hash as usize & mask;
        let mut i = home;
        for step in 0..self.chunks.len() {
            let c = &mut self.chunks[i];
            let mut m = matches(c.ctrl, t);
            while m != 0 {
                let k = first(m);
                if c.items[k] == value {
                    c.ctrl[k] = EMPTY;
                    self.len -= 1;
                    // The chunks it was pushed past count it no more (a saturated count stays).
                    for j in 0..step {
                        let o = &mut self.chunks[(home + j) & mask].ctrl[OVERFLOW];
                        if *o != u8::MAX {
                            *o = o.saturating_sub(1);
                        }
                    }
                    return true;
                }
                m &= m - 1;
            }
            if c.ctrl[OVERFLOW] == 0 {
                return false;
            }
            i = (i + 1) & mask;
        }
        false
    }

    /// Every entry, in no particular order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().flat_map(|c| (0..WIDTH).filter(|&k| c.ctrl[k] != EMPTY).map(|k| c.items[k]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn matches_finds_exactly_the_equal_tag_bytes() {
        let mut ctrl = [0u8; 16];
        ctrl[..WIDTH].copy_from_slice(&[0x80, 0x81, 0, 0x80, 0xff, 0x01, 0x7f, 0x80, 0, 0, 0x81, 0x80]);
        ctrl[OVERFLOW] = 0x80; // never reported: not a tag
        let positions = |m: u32| (0..16).filter(|&b| m >> b & 1 == 1).collect::<Vec<_>>();
        assert_eq!(positions(matches(ctrl, 0x80)), vec![0, 3, 7, 11]);
        assert_eq!(positions(matches(ctrl, 0x81)), vec![1, 10]);
        assert_eq!(positions(matches(ctrl, EMPTY)), vec![2, 8, 9]);
        assert_eq!(positions(matches(ctrl, 0xff)), vec![4]);
    }

    #[test]
    fn entries_pushed_past_a_saturated_count_are_still_found_and_removed() {
        // 400 entries under one hash: 388 overflow their home chunk, whose count saturates.
        let mut index = ChunkIndex::new();
        let hash_of = |_: u32| 0x1234_5678_9abc_def0;
        for v in 0..400 {
            index.insert(hash_of(v), v, hash_of);
        }
        for v in (0..400).step_by(3) {
            assert!(index.remove(hash_of(v), v));
        }
        for v in 0..400 {
            assert_eq!(index.find(hash_of(v), |x| x == v), (v % 3 != 0).then_some(v));
        }
        assert_eq!(index.len(), 400 - 134);
    }

    #[test]
    fn a_rebuild_given_more_entries_than_room_grows_as_it_goes() {
        let mut index = ChunkIndex::new();
        let hash_of = |v: u32| u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        index.rebuild(1, (0..1000).map(|v| (hash_of(v), v)), hash_of);
        assert_eq!(index.len(), 1000);
        assert!(index.capacity() >= 1000);
        assert!((0..1000).all(|v| index.find(hash_of(v), |x| x == v) == Some(v)));
        assert_eq!(index.find(hash_of(1000), |x| x == 1000), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32),
        Remove(u32),
        Rebuild,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let value = 0u32..600;
        proptest::collection::vec(
            prop_oneof![
                6 => value.clone().prop_map(Op::Insert),
                3 => value.prop_map(Op::Remove),
                1 => Just(Op::Rebuild),
            ],
            0..1500,
        )
    }

    proptest! {
        /// The index holds exactly what a map holds after the same insertions and removals,
        /// with hashes from a few bits (so that entries share tags and chunks and overflow)
        /// or from many.
        #[test]
        fn behaves_as_a_map(ops in ops(), bits in prop_oneof![Just(3u32), Just(9), Just(64)]) {
            let hash_of = move |v: u32| {
                let h = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let few = h >> (64 - bits);
                if bits == 64 { h } else { few | few << 57 }
            };
            let mut index = ChunkIndex::new();
            let mut model: HashMap<u32, ()> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(v) => {
                        if model.insert(v, ()).is_none() {
                            index.insert(hash_of(v), v, hash_of);
                        }
                    }
                    Op::Remove(v) => prop_assert_eq!(index.remove(hash_of(v), v), model.remove(&v).is_some()),
                    Op::Rebuild => {
                        let values: Vec<u32> = model.keys().copied().collect();
                        index.rebuild(values.len() * 2, values.iter().map(|&v| (hash_of(v), v)), hash_of);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for v in 0..600 {
                prop_assert_eq!(index.find(hash_of(v), |x| x == v), model.contains_key(&v).then_some(v));
            }
            let mut listed: Vec<u32> = index.iter().collect();
            listed.sort_unstable();
            let mut expected: Vec<u32> = model.keys().copied().collect();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }
}
