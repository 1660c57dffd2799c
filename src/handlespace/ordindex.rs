//! The ordered index of a pool under an ordered policy (Weighted Round Robin, Priority and the
//! Least Used family): its PEs sorted by a unique key, where a resolution reads the first few and
//! moves the selected ones to new keys.
//!
//! Two parts: a small sorted vector, the *head*, holds the smallest keys (up to [`HEAD_MAX`]),
//! and a B-tree, the *tail*, the rest; every key of the head is below every key of the tail. A
//! resolution reads the head only (refilled from the tail when it runs short), and a selected PE
//! whose new key still belongs in the head (Least Used with distinct loads: it stays first) is
//! moved within the head, usually in place. Pools of up to [`HEAD_MAX`] PEs never touch a tree
//! node; larger ones touch the tree when a PE is added, removed or rotated past the head.

use std::collections::btree_map::{self, BTreeMap};

use super::element::PeKey;

/// Most entries in the head.
pub(crate) const HEAD_MAX: usize = 32;
/// Entries moved from the tail when the head runs short.
const REFILL: usize = 16;

/// An ordered set of (key, PE), keys unique.
#[derive(Debug)]
pub(crate) struct OrdIndex<K> {
    head: Vec<(K, PeKey)>,
    tail: BTreeMap<K, PeKey>,
}

impl<K: Copy + Ord> Default for OrdIndex<K> {
    fn default() -> Self {
        Self { head: Vec::new(), tail: BTreeMap::new() }
    }
}

impl<K: Copy + Ord> OrdIndex<K> {
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Adds `pe` under `key` (not in the set).
    pub(crate) fn insert(&mut self, key: K, pe: PeKey) {
        match self.head.last() {
            Some(&(last, _)) if key < last || self.tail.is_empty() => {
                let at = self.head.partition_point(|e| e.0 < key);
                super::selection::push_tight(&mut self.head, (key, pe));
                self.head[at..].rotate_right(1);
                if self.head.len() > HEAD_MAX {
                    if let Some((k, p)) = self.head.pop() {
                        self.tail.insert(k, p);
                    }
                }
            }
            None if self.tail.is_empty() => super::selection::push_tight(&mut self.head, (key, pe)),
            _ => {
                self.tail.insert(key, pe);
            }
        }
    }

    /// Removes the entry of `key`; whether there was one.
    pub(crate) fn remove(&mut self, key: K) -> bool {
        if self.head.last().is_some_and(|&(last, _)| key <= last) {
            match self.head.binary_search_by(|e| e.0.cmp(&key)) {
                Ok(at) => {
                    self.head.remove(at);
                    true
                }
                Err(_) => false,
            }
        } else {
            self.tail.remove(&key).is_some()
        }
    }

    /// The first `min(n, len)` entries, in order (moving entries from the tail into the head if
    /// it holds fewer).
    pub(crate) fn first(&mut self, n: usize) -> &[(K, PeKey)] {
        if self.head.len() < n && !self.tail.is_empty() {
            let want = n.max(REFILL).min(HEAD_MAX.max(n));
            while self.head.len() < want {
                let Some(e) = self.tail.pop_first() else { break };
                self.head.push(e);
            }
        }
        &self.head[..n.min(self.head.len())]
    }

    /// Gives the first entry (which exists) the key `key`, larger than its old one, keeping the
    /// order. In place when it stays first.
    pub(crate) fn move_first(&mut self, key: K) {
        let stays = match self.head.get(1) {
            Some(&(next, _)) => key < next,
            None => self.tail.first_key_value().is_none_or(|(&next, _)| key < next),
        };
        if stays {
            self.head[0].0 = key;
        } else {
            let pe = self.head[0].1;
            // Move within the head if the key still belongs there, else out to the tail.
            let at = self.head.partition_point(|e| e.0 < key);
            if at < self.head.len() || self.tail.is_empty() {
                self.head[..at].rotate_left(1);
                self.head[at - 1] = (key, pe);
            } else {
                self.head.remove(0);
                self.tail.insert(key, pe);
            }
        }
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> OrdIter<'_, K> {
        OrdIter { head: self.head.iter(), tail: self.tail.iter() }
    }

    /// Replaces every key by `f(position, pe)` (which must keep the order), e.g. to renumber
    /// rotation sequence numbers before they wrap.
    pub(crate) fn rekey(&mut self, mut f: impl FnMut(usize, PeKey) -> K) {
        let tail = core::mem::take(&mut self.tail);
        let n = self.head.len();
        for (i, e) in self.head.iter_mut().enumerate() {
            e.0 = f(i, e.1);
        }
        self.tail = tail.into_values().enumerate().map(|(i, pe)| (f(n + i, pe), pe)).collect();
    }

    /// Checks the invariants (sorted head, head below tail).
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.head.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("ordered index head not sorted".into());
        }
        if let (Some(&(last, _)), Some((&first, _))) = (self.head.last(), self.tail.first_key_value()) {
            if last >= first {
                return Err("ordered index head not below its tail".into());
            }
        }
        Ok(())
    }
}

/// Entries of an [`OrdIndex`], in order.
pub(crate) struct OrdIter<'a, K> {
    head: core::slice::Iter<'a, (K, PeKey)>,
    tail: btree_map::Iter<'a, K, PeKey>,
}

impl<K: Copy> Iterator for OrdIter<'_, K> {
    type Item = (K, PeKey);
    fn next(&mut self) -> Option<(K, PeKey)> {
        self.head.next().copied().or_else(|| self.tail.next().map(|(&k, &p)| (k, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pe(i: u32) -> PeKey {
        PeKey { index: i, generation: 1 }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Against a BTreeMap model: inserts, removals, reads of the first n and moves of the
        /// first entry to a larger key give the same ordered contents, whatever the sizes.
        #[test]
        fn matches_btreemap(ops in prop::collection::vec((0u8..5, 0u32..400, 0usize..50), 1..600)) {
            let mut idx: OrdIndex<u32> = OrdIndex::default();
            let mut model: BTreeMap<u32, PeKey> = BTreeMap::new();
            for (op, x, n) in ops {
                match op {
                    0 | 1 if !model.contains_key(&x) => {
                        idx.insert(x, pe(x));
                        model.insert(x, pe(x));
                    }
                    2 => {
                        prop_assert_eq!(idx.remove(x), model.remove(&x).is_some());
                    }
                    3 => {
                        let got: Vec<_> = idx.first(n).to_vec();
                        let want: Vec<_> = model.iter().take(n).map(|(&k, &p)| (k, p)).collect();
                        prop_assert_eq!(got, want);
                    }
                    4 if !model.is_empty() => {
                        idx.first(1);
                        let (&old, &p) = model.iter().next().unwrap();
                        let new = old + 1 + x;
                        if !model.contains_key(&new) {
                            idx.move_first(new);
                            model.remove(&old);
                            model.insert(new, p);
                        }
                    }
                    _ => {}
                }
                idx.validate().map_err(TestCaseError::fail)?;
                prop_assert_eq!(idx.len(), model.len());
                let all: Vec<_> = idx.iter().collect();
                let want: Vec<_> = model.iter().map(|(&k, &p)| (k, p)).collect();
                prop_assert_eq!(all, want);
            }
        }
    }

    #[test]
    fn rekey_keeps_order() {
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        for i in 0..100u32 {
            idx.insert(u64::from(i) * 10, pe(i));
        }
        idx.rekey(|i, _| i as u64);
        let keys: Vec<u64> = idx.iter().map(|e| e.0).collect();
        assert_eq!(keys, (0..100).collect::<Vec<u64>>());
        idx.validate().unwrap();
    }
}
