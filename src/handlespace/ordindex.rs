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
//! range, or a removal of a live entry (a re-registration's move) deep inside it, first moves
//! the back into the B-tree (each entry at most once per visit to the back, so the amortized
//! cost stays the B-tree's O(log n)). Pools of up to [`HEAD_MAX`] PEs touch neither, and hold
//! neither: everything beyond the head lives in one box, made on first use.
//!
//! A PE that leaves the pool is taken out of the head at once, but beyond the head it is only
//! *forgotten*: its entry stays, dead, and its key is noted. A refill of the head drops the
//! dead entries it meets; once the noted keys are half of what lies beyond the head, they are
//! sorted and the middle and the back are rebuilt without them in one ordered pass. A removal
//! from a large B-tree is a search through nodes that are not in the cache (about 1 us per PE
//! at a million PEs in one pool); this costs a sort and a sequential pass, amortized over the
//! removals. A refill tells dead entries from live ones with the caller's `live` test (the
//! entry's slot still holds that PE, in this pool, under this key); iteration yields both.

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
/// Dead entries are dropped in bulk once there are at least this many and they are half of
/// what lies beyond the head (so the index holds at most twice its live entries, plus this).
const PURGE_MIN: usize = 64;

/// An ordered set of (key, PE), keys unique.
#[derive(Debug)]
pub(crate) struct OrdIndex<K> {
    head: Vec<(K, PeKey)>,
    /// Everything beyond the head, boxed: pools of up to [`HEAD_MAX`] PEs (most pools) never
    /// need it, and every pool's selector is as large as its largest variant.
    rest: Option<Box<Rest<K>>>,
}

/// The part of an [`OrdIndex`] beyond its head: the middle, the back and the dead entries'
/// bookkeeping.
#[derive(Debug)]
struct Rest<K> {
    middle: BTreeMap<K, PeKey>,
    back: VecDeque<(K, PeKey)>,
    /// Entries in the middle and the back whose PE was forgotten.
    dead: usize,
    /// The keys forgotten since the last purge (some of whose entries a refill of the head
    /// may have dropped already).
    graves: Vec<K>,
}

impl<K> OrdIndex<K> {
    /// Asks for the head's cache lines if it is small (see [`super::selection::Selector::prefetch`]).
    pub(crate) fn prefetch(&self) {
        crate::runtime::simd::prefetch_slice(&self.head, super::selection::SMALL_INDEX_BYTES);
    }
}

impl<K> Default for OrdIndex<K> {
    fn default() -> Self {
        Self { head: Vec::new(), rest: None }
    }
}

impl<K> Default for Rest<K> {
    fn default() -> Self {
        Self { middle: BTreeMap::new(), back: VecDeque::new(), dead: 0, graves: Vec::new() }
    }
}

impl<K: Copy + Ord> Rest<K> {
    fn is_empty(&self) -> bool {
        self.middle.is_empty() && self.back.is_empty()
    }

    /// Entries held, dead ones included.
    fn held(&self) -> usize {
        self.middle.len() + self.back.len()
    }

    fn first_key(&self) -> Option<K> {
        self.middle.first_key_value().map(|(&k, _)| k).or_else(|| self.back.front().map(|e| e.0))
    }

    fn pop_first(&mut self) -> Option<(K, PeKey)> {
        self.middle.pop_first().or_else(|| self.back.pop_front())
    }

    /// Adds `pe` under `key`, which is below every key here.
    fn push_first(&mut self, key: K, pe: PeKey) {
        if self.middle.is_empty() {
            self.back.push_front((key, pe));
        } else {
            self.middle.insert(key, pe);
        }
    }

    /// Adds `pe` under `key` (not here).
    fn insert(&mut self, key: K, pe: PeKey) {
        match (self.back.front(), self.back.back()) {
            (_, Some(&(last, _))) if key > last => self.back.push_back((key, pe)),
            (Some(&(first, _)), _) if key < first => self.push_first(key, pe),
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
    fn remove(&mut self, key: K) -> bool {
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

    /// Counts the entry of `key` dead, and drops the dead in bulk once they are half of it.
    fn forget(&mut self, key: K) {
        self.dead += 1;
        self.graves.push(key);
        if self.graves.len() >= PURGE_MIN && self.graves.len() * 2 > self.held() {
            self.purge();
        }
    }

    /// Drops every dead entry: their keys sorted, the middle and the back are walked in order
    /// beside them (the middle rebuilt in bulk, the back filtered in place), reading no slot.
    fn purge(&mut self) {
        let mut graves = core::mem::take(&mut self.graves);
        if self.dead > 0 {
            // Fast on the runs that removals in key order (or id order, under rotation) leave.
            graves.sort_unstable();
            let mut next = 0;
            let mut alive = |k: K| {
                while graves.get(next).is_some_and(|&g| g < k) {
                    next += 1;
                }
                graves.get(next) != Some(&k)
            };
            if !self.middle.is_empty() {
                self.middle = core::mem::take(&mut self.middle).into_iter().filter(|e| alive(e.0)).collect();
            }
            self.back.retain(|e| alive(e.0));
            self.dead = 0;
        }
        // A pool that shrank keeps no room for its former size (the purge is O(held) already).
        graves.clear();
        if graves.capacity() <= self.held().max(PURGE_MIN) {
            self.graves = graves;
        }
        if self.back.capacity() > 2 * self.back.len().max(PURGE_MIN) {
            self.back.shrink_to(self.back.len());
        }
    }

    /// Checks that the middle and the back are sorted, the middle below the back.
    fn validate(&self) -> Result<(), String> {
        if !self.back.iter().zip(self.back.iter().skip(1)).all(|(a, b)| a.0 < b.0) {
            return Err("ordered index back not sorted".into());
        }
        let below = self.middle.last_key_value().map(|(&k, _)| k);
        if matches!((below, self.back.front()), (Some(b), Some(a)) if b >= a.0) {
            return Err("ordered index middle and back overlap".into());
        }
        Ok(())
    }
}

impl<K: Copy + Ord> OrdIndex<K> {
    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.rest.as_ref().map_or(0, |r| r.held() - r.dead)
    }

    /// Number of entries in the head (the first ones [`iter`](Self::iter) gives; all live).
    pub(crate) fn head_len(&self) -> usize {
        self.head.len()
    }

    /// Number of dead entries (forgotten, not yet dropped).
    pub(crate) fn dead(&self) -> usize {
        self.rest.as_ref().map_or(0, |r| r.dead)
    }

    /// Whether nothing lies beyond the head.
    fn rest_is_empty(&self) -> bool {
        self.rest.as_ref().is_none_or(|r| r.is_empty())
    }

    /// What lies beyond the head, made on first use.
    fn rest_mut(&mut self) -> &mut Rest<K> {
        self.rest.get_or_insert_with(Box::default)
    }

    /// Whether `key` is at or below the head's last key (so in the head, if anywhere).
    fn in_head(&self, key: K) -> bool {
        self.head.last().is_some_and(|&(last, _)| key <= last)
    }

    /// Adds `pe` under `key` (not in the set).
    pub(crate) fn insert(&mut self, key: K, pe: PeKey) {
        let into_head = match self.head.last() {
            Some(&(last, _)) => key < last || self.rest_is_empty(),
            None => self.rest_is_empty(),
        };
        if !into_head {
            self.rest_mut().insert(key, pe);
            return;
        }
        let at = self.head.partition_point(|e| e.0 < key);
        super::selection::push_tight(&mut self.head, (key, pe));
        self.head[at..].rotate_right(1);
        if self.head.len() > HEAD_MAX {
            if let Some((k, p)) = self.head.pop() {
                self.rest_mut().push_first(k, p);
            }
        }
    }

    /// Removes the entry of `key`; whether there was one.
    pub(crate) fn remove(&mut self, key: K) -> bool {
        if self.in_head(key) {
            return match self.head.binary_search_by(|e| e.0.cmp(&key)) {
                Ok(at) => {
                    self.head.remove(at);
                    true
                }
                Err(_) => false,
            };
        }
        self.rest.as_mut().is_some_and(|r| r.remove(key))
    }

    /// Takes the live entry of `key` out of the set: at once if it is in the head, else by
    /// counting it dead (see the module's doc).
    pub(crate) fn forget(&mut self, key: K) {
        if self.in_head(key) {
            let found = self.remove(key);
            debug_assert!(found, "forgetting a key not in the head's range");
            return;
        }
        self.rest_mut().forget(key);
    }

    /// The first `min(n, len)` live entries, in order (moving entries from the middle or back
    /// into the head if it holds fewer, and dropping the dead ones met on the way).
    pub(crate) fn first(&mut self, n: usize, live: impl Fn(K, PeKey) -> bool) -> &[(K, PeKey)] {
        if self.head.len() < n {
            if let Some(rest) = self.rest.as_deref_mut() {
                let want = n.max(REFILL).min(HEAD_MAX.max(n));
                while self.head.len() < want {
                    let Some((k, p)) = rest.pop_first() else { break };
                    // Without dead entries, no slot need be read.
                    if rest.dead == 0 || live(k, p) {
                        self.head.push((k, p));
                    } else {
                        rest.dead -= 1;
                    }
                }
            }
        }
        &self.head[..n.min(self.head.len())]
    }

    /// Gives the first entry (which exists) the key `key`, larger than its old one, keeping the
    /// order. In place when it stays first.
    pub(crate) fn move_first(&mut self, key: K) {
        let stays = match self.head.get(1) {
            Some(&(next, _)) => key < next,
            None => self.rest.as_ref().and_then(|r| r.first_key()).is_none_or(|next| key < next),
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
                self.rest_mut().insert(key, pe);
            }
        }
    }

    /// Every entry, dead ones included, in order.
    pub(crate) fn iter(&self) -> OrdIter<'_, K> {
        let rest = self.rest.as_deref();
        OrdIter { head: self.head.iter(), middle: rest.map(|r| r.middle.iter()), back: rest.map(|r| r.back.iter()) }
    }

    /// Drops the dead entries, then replaces every key by `f(position, pe)` (which must keep
    /// the order), e.g. to renumber rotation sequence numbers before they wrap. Everything
    /// beyond the head ends in the back.
    pub(crate) fn rekey(&mut self, mut f: impl FnMut(usize, PeKey) -> K) {
        let n = self.head.len();
        for (i, e) in self.head.iter_mut().enumerate() {
            e.0 = f(i, e.1);
        }
        let Some(rest) = self.rest.as_deref_mut() else { return };
        rest.purge();
        let middle = core::mem::take(&mut rest.middle);
        let back = core::mem::take(&mut rest.back);
        rest.back = middle
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
        let Some(rest) = self.rest.as_deref() else { return Ok(()) };
        rest.validate()?;
        if matches!((self.head.last(), rest.first_key()), (Some(b), Some(a)) if b.0 >= a) {
            return Err("ordered index head and rest overlap".into());
        }
        Ok(())
    }
}

/// Entries of an [`OrdIndex`], in order.
pub(crate) struct OrdIter<'a, K> {
    head: core::slice::Iter<'a, (K, PeKey)>,
    middle: Option<btree_map::Iter<'a, K, PeKey>>,
    back: Option<vec_deque::Iter<'a, (K, PeKey)>>,
}

impl<K: Copy> Iterator for OrdIter<'_, K> {
    type Item = (K, PeKey);
    fn next(&mut self) -> Option<(K, PeKey)> {
        self.head
            .next()
            .copied()
            .or_else(|| self.middle.as_mut()?.next().map(|(&k, &p)| (k, p)))
            .or_else(|| self.back.as_mut()?.next().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pe(i: u32) -> PeKey {
        PeKey { index: i, generation: 1 }
    }

    /// Entries in the middle and in the back.
    fn parts<K: Copy + Ord>(idx: &OrdIndex<K>) -> (usize, usize) {
        idx.rest.as_ref().map_or((0, 0), |r| (r.middle.len(), r.back.len()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Against a BTreeMap model of the live entries: inserts, removals, forgetting, reads of
        /// the first n and moves of the first entry to a larger key give the same ordered live
        /// contents, whatever the sizes, and the dead entries are exactly the rest.
        #[test]
        fn matches_btreemap(ops in prop::collection::vec((0u8..7, 0u32..400, 0usize..50), 1..600)) {
            let mut idx: OrdIndex<u32> = OrdIndex::default();
            let mut model: BTreeMap<u32, PeKey> = BTreeMap::new();
            // As in the handlespace, a key is never reused while its dead entry may remain.
            let held = |idx: &OrdIndex<u32>, k: u32| idx.iter().any(|e| e.0 == k);
            for (op, x, n) in ops {
                match op {
                    0 | 1 if !held(&idx, x) => {
                        idx.insert(x, pe(x));
                        model.insert(x, pe(x));
                    }
                    2 if model.contains_key(&x) => {
                        prop_assert!(idx.remove(x));
                        model.remove(&x);
                    }
                    2 if !held(&idx, x) => prop_assert!(!idx.remove(x)),
                    3 => {
                        let got: Vec<_> = idx.first(n, |k, _| model.contains_key(&k)).to_vec();
                        let want: Vec<_> = model.iter().take(n).map(|(&k, &p)| (k, p)).collect();
                        prop_assert_eq!(got, want);
                    }
                    4 if !model.is_empty() => {
                        idx.first(1, |k, _| model.contains_key(&k));
                        let (&old, &p) = model.iter().next().unwrap();
                        let new = old + 1 + x;
                        if !held(&idx, new) {
                            idx.move_first(new);
                            model.remove(&old);
                            model.insert(new, p);
                        }
                    }
                    5 | 6 if !model.is_empty() => {
                        // Forget the x-th live entry (its slot "still holds it" to `live`).
                        let k = *model.keys().nth(x as usize % model.len()).unwrap();
                        idx.forget(k);
                        model.remove(&k);
                    }
                    _ => {}
                }
                idx.validate().map_err(TestCaseError::fail)?;
                prop_assert_eq!(idx.len(), model.len());
                let all: Vec<_> = idx.iter().collect();
                let live: Vec<_> = all.iter().copied().filter(|e| model.contains_key(&e.0)).collect();
                let want: Vec<_> = model.iter().map(|(&k, &p)| (k, p)).collect();
                prop_assert_eq!(live, want);
                prop_assert_eq!(idx.dead(), all.len() - model.len());
                prop_assert!(idx.head.iter().all(|e| model.contains_key(&e.0)), "a dead entry in the head");
            }
        }
    }

    #[test]
    fn forgetting_keeps_the_index_within_twice_its_live_entries() {
        // Deregistrations in random key order from a pool held in the B-tree.
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        let mut live = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let k = u64::from(i) * 7919 % 10_007;
            idx.insert(k, pe(i));
            live.insert(k);
        }
        idx.rest_mut().spill_back();
        assert_eq!(parts(&idx), (10_000 - HEAD_MAX, 0));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut order: Vec<u64> = live.iter().copied().collect();
        order.sort_unstable();
        rng.shuffle(&mut order);
        for k in order.iter().take(9_000) {
            live.remove(k);
            idx.forget(*k);
            assert_eq!(idx.len(), live.len());
            assert!(idx.iter().count() <= 2 * live.len() + PURGE_MIN);
        }
        assert!(idx.dead() > 0, "nothing left dead: every removal searched");
        let rest = idx.rest.as_ref().unwrap();
        assert!(rest.graves.capacity() <= 2 * live.len() + PURGE_MIN, "noted keys keep the pool's former size");
        let rest: Vec<u64> = idx.iter().map(|e| e.0).filter(|k| live.contains(k)).collect();
        let mut want: Vec<u64> = live.iter().copied().collect();
        want.sort_unstable();
        assert_eq!(rest, want);
        let first: Vec<u64> = idx.first(5, |k, _| live.contains(&k)).iter().map(|e| e.0).collect();
        assert_eq!(first, want[..5]);
        idx.validate().unwrap();
    }

    #[test]
    fn a_drained_back_gives_its_room_back() {
        // Rotation order (keys in the back): a pool of 5,000 of which all but the head and the
        // last 100 are forgotten.
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        for i in 0..5_000u32 {
            idx.insert(u64::from(i), pe(i));
        }
        assert_eq!(parts(&idx), (0, 5_000 - HEAD_MAX));
        for k in (HEAD_MAX as u64..4_900).rev() {
            idx.forget(k);
        }
        let live = |k: u64| !(HEAD_MAX as u64..4_900).contains(&k);
        let first: Vec<u64> = idx.first(HEAD_MAX + 5, |k, _| live(k)).iter().map(|e| e.0).collect();
        assert_eq!(first[HEAD_MAX..], [4_900, 4_901, 4_902, 4_903, 4_904]);
        let rest = idx.rest.as_ref().unwrap();
        assert!(rest.back.capacity() <= 2 * PURGE_MIN.max(rest.back.len()), "back keeps {}", rest.back.capacity());
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
            let first = idx.first(3, |_, _| true).to_vec();
            assert_eq!(
                first.iter().map(|e| e.1.index).collect::<Vec<_>>(),
                (0..3).map(|k| (round + k) % 1000).collect::<Vec<_>>()
            );
            idx.move_first(next);
        }
        assert_eq!(parts(&idx).0, 0, "rotation went through the B-tree");
        assert_eq!(idx.len(), 1000);
        idx.validate().unwrap();
    }

    #[test]
    fn a_key_inside_the_back_or_a_removal_deep_in_it_moves_the_back_into_the_tree() {
        let mut idx: OrdIndex<u64> = OrdIndex::default();
        for i in 0..300u32 {
            idx.insert(u64::from(i) * 10, pe(i));
        }
        assert_eq!(parts(&idx), (0, 300 - HEAD_MAX));
        assert!(idx.remove(2990), "near the end: shifted");
        assert_eq!(parts(&idx).0, 0);
        assert!(idx.remove(1500), "deep inside: through the tree");
        assert!(parts(&idx).0 > 0 && parts(&idx).1 == 0);
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
