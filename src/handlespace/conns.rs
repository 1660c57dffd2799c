//! Connection → its PEs: the first PE of an intrusive list through the PE slots, and the list's
//! length.
//!
//! A connection id names a slot of its shard's connection table, so ids are small and dense:
//! the index is a table per shard indexed by that slot (no hashing, and neighbouring
//! connections are neighbours here too). A connection whose entry is taken by another
//! generation of the same slot (a closed connection whose PEs are not gone yet), or whose
//! shard or slot is beyond the direct tables, goes to a hash table.

use hashbrown::HashTable;

use crate::service::ConnId;

use super::arena::Arena;
use super::element::NIL;

/// Direct tables cover shards below this...
const DIRECT_SHARDS: usize = 256;
/// ... and slots below this (8 bytes per slot up to the highest slot used).
const DIRECT_SLOTS: usize = 1 << 24;

/// One connection's PEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnEntry {
    /// Slab index of the first PE of its list (`NIL`: the entry is free).
    pub(crate) head: u32,
    /// Length of the list.
    pub(crate) count: u32,
}

impl ConnEntry {
    const FREE: Self = Self { head: NIL, count: 0 };
}

/// Connection → [`ConnEntry`].
pub(crate) struct Conns {
    direct: Vec<Vec<ConnEntry>>,
    hashed: HashTable<ConnEntry>,
    hasher: ahash::RandomState,
}

impl core::fmt::Debug for Conns {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conns").field("hashed", &self.hashed.len()).finish()
    }
}

fn direct_at(c: ConnId) -> Option<(usize, usize)> {
    let (shard, slot) = (usize::from(c.shard), c.slot as usize);
    (shard < DIRECT_SHARDS && slot < DIRECT_SLOTS).then_some((shard, slot))
}

fn owns(pes: &Arena, e: &ConnEntry, c: ConnId) -> bool {
    e.head != NIL && pes[e.head].pe.conn() == Some(c)
}

impl Conns {
    pub(crate) fn new(hasher: ahash::RandomState) -> Self {
        Self { direct: Vec::new(), hashed: HashTable::new(), hasher }
    }

    /// The entry of `c`, if it has PEs.
    pub(crate) fn get(&self, pes: &Arena, c: ConnId) -> Option<ConnEntry> {
        if let Some((shard, slot)) = direct_at(c) {
            let e = self.direct.get(shard).and_then(|t| t.get(slot)).copied().unwrap_or(ConnEntry::FREE);
            if owns(pes, &e, c) {
                return Some(e);
            }
        }
        if self.hashed.is_empty() {
            return None;
        }
        self.hashed.find(self.hasher.hash_one(c.to_u64()), |e| owns(pes, e, c)).copied()
    }

    /// Updates the entry of `c` with `f` (which gets a free entry when `c` has none) and keeps
    /// the result, or drops it if `f` leaves it with no PE. `pes` must show the old head's
    /// connection as `c` when `f` is called, and the new head's afterwards.
    pub(crate) fn update(&mut self, pes: &mut Arena, c: ConnId, f: impl FnOnce(&mut Arena, &mut ConnEntry)) {
        // Hashed only when the hash table is used (the direct table serves almost every one).
        let hash = |hasher: &ahash::RandomState| hasher.hash_one(c.to_u64());
        if let Some((shard, slot)) = direct_at(c) {
            let e = self.direct.get(shard).and_then(|t| t.get(slot)).copied().unwrap_or(ConnEntry::FREE);
            let in_hashed =
                || !self.hashed.is_empty() && self.hashed.find(hash(&self.hasher), |e| owns(pes, e, c)).is_some();
            if owns(pes, &e, c) || (e.head == NIL && !in_hashed()) {
                let mut e = e;
                f(pes, &mut e);
                if self.direct.len() <= shard {
                    self.direct.resize_with(shard + 1, Vec::new);
                }
                let table = &mut self.direct[shard];
                if table.len() <= slot {
                    if e.head == NIL {
                        return;
                    }
                    // Grow by at least half, so that filling slot by slot stays amortized O(1).
                    // (reserve_exact: `resize` alone would double the capacity on top.)
                    let len = (slot + 1).max(table.len() + table.len() / 2).min(DIRECT_SLOTS);
                    table.reserve_exact(len - table.len());
                    table.resize(len, ConnEntry::FREE);
                }
                table[slot] = e;
                return;
            }
        }
        let hash = hash(&self.hasher);
        let mut e = match self.hashed.find_entry(hash, |e| owns(pes, e, c)) {
            Ok(entry) => entry.remove().0,
            Err(_) => ConnEntry::FREE,
        };
        f(pes, &mut e);
        if e.head != NIL {
            let (pes, hasher) = (&*pes, &self.hasher);
            let rehash = |x: &ConnEntry| hasher.hash_one(pes[x.head].pe.conn().map_or(0, ConnId::to_u64));
            self.hashed.insert_unique(hash, e, rehash);
        }
    }

    /// Every entry with PEs.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ConnEntry> + '_ {
        self.direct.iter().flatten().copied().filter(|e| e.head != NIL).chain(self.hashed.iter().copied())
    }
}
