//! An 8-ary sum tree over a vector of `u32` weights: "which position holds the r-th unit of
//! weight" and point updates in O(log8 n), push at the end and swap-removal in O(log8 n). The weighted
//! random policies draw from it. The leaves are the caller's vector of anything that has a
//! [`Weight`] (a pool keeps each PE's weight beside its key, in one vector).
//!
//! Why not a Fenwick tree: at a million PEs a Fenwick search touches ~20 nodes spread over 8 MB,
//! most of them cache misses. Here each level stores the sums of groups of 8 entries of the level
//! below (the leaves are the caller's vector itself), so a search reads one 64-byte line per
//! level of sums and two or three of leaves (eight 12-byte members), 7 levels at a million,
//! and only the last two or three miss the cache. The sums cost about 1.1 bytes per PE instead
//! of a Fenwick tree's 8.

/// A leaf of the tree: something with a weight.
pub(crate) trait Weight {
    /// The leaf's weight.
    fn weight(&self) -> u32;
}

/// The tests' plain vectors of weights.
#[cfg(test)]
impl Weight for u32 {
    fn weight(&self) -> u32 {
        *self
    }
}

const FAN_BITS: u32 = 3;
const FAN: usize = 1 << FAN_BITS;
/// Up to this many leaves there are no sums: a search scans the leaves (at most six cache lines
/// of a pool's 12-byte members, which hold the PE drawn as well), and the many small pools of
/// a large registrar need no allocations for levels (about 7 bytes per PE in pools of ten).
const LINEAR: usize = 32;

/// Sums over groups of a leaf vector: `levels[k][i]` is the sum of leaves
/// `i * 8^(k+1) .. (i + 1) * 8^(k+1)`. The top level has at most 8 entries; without levels,
/// the leaves are at most [`LINEAR`].
#[derive(Clone, Debug, Default)]
pub(crate) struct SumTree {
    /// Boxed, and none without levels: every pool's selector is as large as its largest
    /// variant, and most pools have no levels (8 bytes here instead of a vector's 24; the box
    /// is made only for pools of more than 32 PEs).
    #[allow(clippy::box_collection)]
    levels: Option<Box<Vec<Vec<u64>>>>,
    total: u64,
}

impl SumTree {
    fn levels(&self) -> &[Vec<u64>] {
        self.levels.as_deref().map_or(&[], Vec::as_slice)
    }

    fn levels_mut(&mut self) -> &mut [Vec<u64>] {
        self.levels.as_deref_mut().map_or(&mut [], Vec::as_mut_slice)
    }

    /// Sum of all weights.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Accounts for the leaf just pushed at the end of `leaves`.
    pub(crate) fn push(&mut self, leaves: &[impl Weight]) {
        let pos = leaves.len() - 1;
        let w = u64::from(leaves[pos].weight());
        for (k, level) in self.levels_mut().iter_mut().enumerate() {
            let i = pos >> (FAN_BITS * (k as u32 + 1));
            if i == level.len() {
                level.push(w);
            } else {
                level[i] = level[i].wrapping_add(w);
            }
        }
        self.total = self.total.wrapping_add(w);
        // Grow a level on top when the top has more than FAN entries.
        loop {
            let top: Vec<u64> = match self.levels().last() {
                Some(top) if top.len() > FAN => {
                    top.chunks(FAN).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).collect()
                }
                Some(_) => break,
                None if leaves.len() > LINEAR => {
                    leaves.chunks(FAN).map(|c| c.iter().map(|x| u64::from(x.weight())).sum()).collect()
                }
                None => break,
            };
            self.levels.get_or_insert_with(Box::default).push(top);
        }
    }

    /// Accounts for leaf `pos` (of weight `w_pos`) removed by moving the last leaf (of weight
    /// `w_last`) into its place; `leaves` is the vector after that swap-remove (`pos` equal to
    /// its length: the last leaf itself was removed). One walk over the levels, where an `add`
    /// for the moved leaf and a `pop` for the end walked them twice.
    pub(crate) fn swap_remove(&mut self, leaves: &[impl Weight], pos: usize, w_pos: u32, w_last: u32) {
        let last = leaves.len();
        let moved = u64::from(w_last).wrapping_sub(u64::from(w_pos));
        for (k, level) in self.levels_mut().iter_mut().enumerate() {
            let shift = FAN_BITS * (k as u32 + 1);
            if pos != last {
                let i = pos >> shift;
                level[i] = level[i].wrapping_add(moved);
            }
            // The old last leaf's node: gone if that leaf was its only one (then `pos`, below
            // it, is in an earlier node).
            if last & ((1 << shift) - 1) == 0 {
                level.pop();
            } else {
                let j = last >> shift;
                level[j] = level[j].wrapping_sub(u64::from(w_last));
            }
        }
        self.total = self.total.wrapping_sub(u64::from(w_pos));
        // Drop the top level when the level below it fits in FAN entries (the leaves: LINEAR).
        loop {
            let (below, fits) = match self.levels().len() {
                0 => break,
                1 => (leaves.len(), LINEAR),
                l => (self.levels()[l - 2].len(), FAN),
            };
            if below > fits {
                break;
            }
            if let Some(levels) = self.levels.as_mut() {
                levels.pop();
                if levels.is_empty() {
                    self.levels = None;
                }
            }
        }
    }

    /// Adds `delta` (two's complement for a decrease) to the sums above leaf `pos`; the caller
    /// changes the leaf itself.
    pub(crate) fn add(&mut self, pos: usize, delta: u64) {
        for (k, level) in self.levels_mut().iter_mut().enumerate() {
            let i = pos >> (FAN_BITS * (k as u32 + 1));
            level[i] = level[i].wrapping_add(delta);
        }
        self.total = self.total.wrapping_add(delta);
    }

    /// The leaf `p` with `sum(leaves[..p]) <= r < sum(leaves[..=p])`, for `r < total()`.
    pub(crate) fn find(&self, leaves: &[impl Weight], mut r: u64) -> usize {
        let mut node = 0;
        for level in self.levels().iter().rev() {
            let start = node * FAN;
            let end = (start + FAN).min(level.len());
            node = start;
            while node + 1 < end && r >= level[node] {
                r -= level[node];
                node += 1;
            }
        }
        let start = node * FAN;
        let end = if self.levels().is_empty() { leaves.len() } else { (start + FAN).min(leaves.len()) };
        node = start;
        while node + 1 < end && r >= u64::from(leaves[node].weight()) {
            r -= u64::from(leaves[node].weight());
            node += 1;
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut t = SumTree::default();
        let mut w: Vec<u32> = vec![];
        for step in 0..20_000 {
            // Grow to a few thousand leaves (4 levels), then shrink back through every boundary.
            let grow = (step / 5000) % 2 == 0;
            match rng.u8(0..8) {
                0..=3 if grow => {
                    w.push(rng.u32(0..1000));
                    t.push(&w);
                }
                0..=1 if !w.is_empty() => {
                    let x = w.pop().unwrap();
                    t.swap_remove(&w, w.len(), x, x);
                }
                2..=3 if !w.is_empty() => {
                    let p = rng.usize(0..w.len());
                    let (x, last) = (w[p], *w.last().unwrap());
                    w.swap_remove(p);
                    t.swap_remove(&w, p, x, last);
                }
                _ if !w.is_empty() => {
                    let p = rng.usize(0..w.len());
                    let x = rng.u32(0..1000);
                    t.add(p, u64::from(x).wrapping_sub(u64::from(w[p])));
                    w[p] = x;
                }
                _ => {}
            }
            assert_eq!(t.total(), w.iter().map(|&x| u64::from(x)).sum::<u64>(), "step {step}");
            if t.total() > 0 {
                let r = rng.u64(0..t.total());
                let p = t.find(&w, r);
                let before: u64 = w[..p].iter().map(|&x| u64::from(x)).sum();
                assert!(before <= r && r < before + u64::from(w[p]), "step {step}");
            }
        }
    }

    #[test]
    fn levels_track_size() {
        let mut t = SumTree::default();
        let mut w = vec![];
        for n in 1..=5000u32 {
            w.push(1);
            t.push(&w);
            let expect = (1..).take_while(|&k| (n as usize - 1) >> (FAN_BITS * k) > 0).count();
            let expect = if n as usize <= LINEAR { 0 } else { expect };
            assert_eq!(t.levels().len(), expect, "n {n}");
        }
        while let Some(x) = w.pop() {
            t.swap_remove(&w, w.len(), x, x);
            let n = w.len();
            let expect = (1..).take_while(|&k| n.saturating_sub(1) >> (FAN_BITS * k) > 0).count();
            let expect = if n <= LINEAR { 0 } else { expect };
            assert_eq!(t.levels().len(), expect, "n {n}");
        }
        assert_eq!(t.total(), 0);
    }
}
