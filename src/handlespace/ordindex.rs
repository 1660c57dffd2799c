//! The ordered index of a pool under an ordered policy (Weighted Round Robin, Priority and the
//! Least Used family): its PEs sorted by a unique key, where a resolution reads the first few and
//! moves the selected ones to new keys.
//!
//! Three parts, every key of one below every key of the next: a small sorted vector, the
//! *head*, holds the smallest keys (up to [`HEAD_MAX`]); a B-tree, the *middle*; and a sorted
//! double-ended queue, the *back*, the largest. A resolution reads the head only (refilled from
//! the middle, then the back, when it runs short), and a selected PE whose new key still belongs
//! in the head (Least Used with distinct loads: it stays first) is moved within the head,
//! usually in place.
//!
//! A key above every other goes to the end of the back and returns to the head from its front,
//! in O(1) and without touching a tree node. Rotation gives such keys whenever the selected PE's
//! equals all stay ahead of it (Weighted Round Robin with equal weights, rotation among equal
//! priorities or loads), and so does a fill in key order. A key that lands inside the back's
//! range, or a removal deep inside it, first moves the back into the B-tree (each entry at most
//! once per visit to the back, so the amortized cost stays the B-tree's O(log n)). Pools of up
//! to [`HEAD_MAX`] PEs touch neither.

use std::collections::btree_map::{self, BTreeMap};
use std::collections::{vec_deque, VecDeque};

use super::element::PeKey;

/// Most entries in the head.
pub(crate) const HEAD_MAX: usize = 32;
/// Entries moved from the middle or back when the head runs short.
const REFILL: usize = 16;
/// A removal this close to an end of the back shifts the entries between; farther in, the back
/// moves into the B-tree first.
const BACK_SHIFT_MAX: usize = 32;

/// An ordered set of (key, PE), keys unique.
#[derive(Debug)]
pub(crate) struct OrdIndex<K> {
    head: Vec<(K, PeKey)>,
    middle: BTreeMap<K, PeKey>,
    back: VecDeque<(K, PeKey)>,
}

impl<K: Copy + Ord> Default for OrdIndex<K> {
    fn default() -> Self {
        Self { head: Vec::new(), middle: BTreeMap::new(), back: VecDeque::new() }
    }
}

impl<K: Copy + Ord> OrdIndex<K> {
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.middle.len() + self.back.len()
    }

    /// Whether nothing lies beyond the head.
    fn rest_is_empty(&self) -> bool {
        self.middle.is_empty() && self.back.is_empty()
    }

    /// The smallest key beyond the head.
    fn rest_first(&self) -> Option<K> {
        self.middle.first_key_value().map(|(&k, _)| k).or_else(|| self.back.front().map(|e| e.0))
    }

    /// Adds `pe` under `key` (not in the set).
    pub(crate) fn insert(&mut self, key: K, pe: PeKey) {
        let into_head = match self.head.last() {
            Some(&(last, _)) => key < last || self.rest_is_empty(),
            None => self.rest_is_empty(),
        };
        if !into_head {
            self.insert_rest(key, pe);
            return;
        }
        let at = self.head.partition_point(|e| e.0 < key);
        super::selection::push_tight(&mut self.head, (key, pe));
        self.head[at..].rotate_right(1);
        if self.head.len() > HEAD_MAX {
            if let Some((k, p)) = self.head.pop() {
                // Below everything beyond the head.
                if self.middle.is_empty() {
                    self.back.push_front((k, p));
                } else {
                    self.middle.insert(k, p);
                }
            }
        }
    }

    /// Adds `pe` under `key`, which is above every key of the head.
    fn insert_rest(&mut self, key: K, pe: PeKey) {
        match (self.back.front(), self.back.back()) {
            (_, Some(&(last, _))) if key > last => self.back.push_back((key, pe)),
            (Some(&(first, _)), _) if key < first => {
                if self.middle.is_empty() {
                    self.back.push_front((key, pe));
                } else {
                    self.middle.insert(key, pe);
                }
            }
            (Some(_), _) => {
                self.spill_back();
                self.middle.insert(key, pe);
            }
            (None, _) => {
                // The back starts with a key above the whole middle.
                if self.middle.last_key_value().is_none_or(|(&last, _)| key > last) {
                    self.back.push_back((key, pe));
                } else {
                    self.middle.insert(key, pe);
                }
            }
        }
    }

    /// Moves the back into the B-tree: built in bulk from the sorted back when the tree is
    /// empty, else inserted in order (each at the tree's right edge).
    fn spill_back(&mut self) {
        if self.middle.is_empty() {
            self.middle = self.back.drain(..).collect();
        } else {
            self.middle.extend(self.back.drain(..));
        }
    }

    /// Removes the entry of `key`; whether there was one.
    pub(crate) fn remove(&mut self, key: K) -> bool {
        if self.head.last().is_some_and(|&(last, _)| key <= last) {
            return match self.head.binary_search_by(|e| e.0.cmp(&key)) {
                Ok(at) => {
                    self.head.remove(at);
                    true
                }
                Err(_) => false,
            };
        }
        if self.back.front().is_some_and(|&(first, _)| key >= first) {
            let Ok(at) = self.back.binary_search_by(|e| e.0.cmp(&key)) else { return false };
            if at.min(self.back.len() - 1 - at) > BACK_SHIFT_MAX {
                self.spill_back();
                return self.middle.remove(&key).is_some();
            }
            self.back.remove(at);
            return true;
        }
        self.middle.remove(&key).is_some()
    }

    /// The first `min(n, len)` entries, in order (moving entries from the middle or back into
    /// the head if it holds fewer).
    pub(crate) fn first(&mut self, n: usize) -> &[(K, PeKey)] {
        if self.head.len() < n && !self.rest_is_empty() {
            let want = n.max(REFILL).min(HEAD_MAX.max(n));
            while self.head.len() < want {
                let Some(e) = self.middle.pop_first().or_else(|| self.back.pop_front()) else { break };
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
            None => self.rest_first().is_none_or(|next| key < next),
        };
        if stays {
            self.head[0].0 = key;
        } else {
            let pe = self.head[0].1;
            // Move within the head if the key still belongs there, else beyond it.
            let at = self.head.partition_point(|e| e.0 < key);
            if at < self.head.len() || self.rest_is_empty() {
                self.head[..at].rotate_left(1);
                self.head[at - 1] = (key, pe);
            } else {
                self.head.remove(0);
                self.insert_rest(key, pe);
            }
        }
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> OrdIter<'_, K> {
        OrdIter { head: self.head.iter(), middle: self.middle.iter(), back: self.back.iter() }
    }

    /// Replaces every key by `f(position, pe)` (which must keep the order), e.g. to renumber
    /// rotation sequence numbers before they wrap. Everything beyond the head ends in the back.
    pub(crate) fn rekey(&mut self, mut f: impl FnMut(usize, PeKey) -> K) {
        let middle = core::mem::take(&mut self.middle);
        let back = core::mem::take(&mut self.back);
        let n = self.head.len();
        for (i, e) in self.head.iter_mut().enumerate() {
            e.0 = f(i, e.1);
        }
        self.back = middle
            .into_values()
            .chain(back.into_iter().map(|e| e.1))
            .enumerate()
            .map(|(i, pe)| (f(n + i, pe), pe))
            .collect();
    }

    /// Checks the invariants (each part sorted, head below middle below back).
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.head.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("ordered index head not sorted".into());
        }
        if !self.back.iter().zip(self.back.iter().skip(1)).all(|(a, b)| a.0 < b.0) {
            return Err("ordered index back not sorted".into());
        }
        let ends = [
            self.head.last().map(|e| e.0),
            self.middle.first_key_value().map(|(&k, _)| k),
            self.middle.last_key_value().map(|(&k, _)| k),
            self.back.front().map(|e| e.0),
        ];
        let boundaries = [(ends[0], ends[1]), (ends[2], ends[3]), (ends[0], ends[3])];
        if boundaries.iter().any(|&(below, above)| matches!((below, above), (Some(b), Some(a)) if b >= a)) {
            return Err("ordered index parts overlap".into());
        }
        Ok(())
    }
}

/// Entries of an [`OrdIndex`], in order.
pub(crate) struct OrdIter<'a, K> {
    head: core::slice::Iter<'a, (K, PeKey)>,
    middle: btree_map::Iter<'a, K, PeKey>,
    back: vec_deque::Iter<'a, (K, PeKey)>,
}

impl<K: Copy> Iterator for OrdIter<'_, K> {
    type Item = (K, PeKey);
    fn next(&mut self) -> Option<(K, PeKey)> {
        self.head
            .next()
            .copied()
            .or_else(|| self.middle.next().map(|(&k, &p)| (k, p)))
            .or_else(|| self.back.next().copied())
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

    #[test]
    fn rotation_past_every_key_goes_round_the_back_without_the_tree() {
        // Weighted Round Robin with equal weights: the first PE always moves behind all others.
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        for i in 0..1000u32 {
            idx.insert(u64::from(i), pe(i));
        }
        for round in 0..5000u32 {
            let next = 1000 + u64::from(round);
            let first = idx.first(3).to_vec();
            assert_eq!(
                first.iter().map(|e| e.1.index).collect::<Vec<_>>(),
                (0..3).map(|k| (round + k) % 1000).collect::<Vec<_>>()
            );
            idx.move_first(next);
        }
        assert!(idx.middle.is_empty(), "rotation went through the B-tree");
        assert_eq!(idx.len(), 1000);
        idx.validate().unwrap();
    }

    #[test]
    fn a_key_inside_the_back_or_a_removal_deep_in_it_moves_the_back_into_the_tree() {
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        for i in 0..300u32 {
            idx.insert(u64::from(i) * 10, pe(i));
        }
        assert!(idx.middle.is_empty() && idx.back.len() == 300 - HEAD_MAX);
        assert!(idx.remove(2990), "near the end: shifted");
        assert!(idx.middle.is_empty());
        assert!(idx.remove(1500), "deep inside: through the tree");
        assert!(idx.back.is_empty() && !idx.middle.is_empty());
        idx.insert(3000, pe(300));
        idx.insert(1505, pe(301));
        idx.validate().unwrap();
        let keys: Vec<u64> = idx.iter().map(|e| e.0).collect();
        let mut want: Vec<u64> = (0..300).map(|i| i * 10).filter(|&k| k != 2990 && k != 1500).collect();
        want.extend([3000, 1505]);
        want.sort_unstable();
        assert_eq!(keys, want);
    }
}
