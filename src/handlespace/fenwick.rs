//! A Fenwick (binary indexed) tree of `u64` weights over dense positions `0..len`: point update,
//! prefix sum and "which position holds the r-th unit of weight" in O(log n), push and pop at
//! the end in O(log n) and O(1). The weighted-random policies draw from it.

/// Sums of weights over dense positions; node `i` (1-based) holds the sum of `(i - lowbit(i), i]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fenwick {
    tree: Vec<u64>,
    total: u64,
}

const fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Fenwick {
    /// Number of positions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }

    /// Sum of all weights.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Sum of the weights at positions `0..n`.
    pub(crate) fn prefix(&self, mut n: usize) -> u64 {
        let mut sum: u64 = 0;
        while n > 0 {
            sum = sum.wrapping_add(self.tree[n - 1]);
            n -= lowbit(n);
        }
        sum
    }

    /// Appends a position with weight `w`.
    pub(crate) fn push(&mut self, w: u64) {
        let i = self.tree.len() + 1;
        // Node i covers (i - lowbit(i), i]: the existing positions in that range plus the new one.
        let node = w.wrapping_add(self.prefix(i - 1)).wrapping_sub(self.prefix(i - lowbit(i)));
        self.tree.push(node);
        self.total = self.total.wrapping_add(w);
    }

    /// Removes the last position, whose weight is `w`. No other node covers the last position
    /// alone, and prefix sums below it never read its node, so dropping it is enough.
    pub(crate) fn pop(&mut self, w: u64) {
        self.tree.pop();
        self.total = self.total.wrapping_sub(w);
    }

    /// Adds `delta` (two's complement for a decrease) to the weight at `pos`.
    pub(crate) fn add(&mut self, pos: usize, delta: u64) {
        let mut i = pos + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = self.tree[i - 1].wrapping_add(delta);
            i += lowbit(i);
        }
        self.total = self.total.wrapping_add(delta);
    }

    /// The position `p` with `prefix(p) <= r < prefix(p + 1)`, for `r < total()`.
    pub(crate) fn find(&self, mut r: u64) -> usize {
        let n = self.tree.len();
        let mut pos = 0;
        let mut step = if n == 0 { 0 } else { 1usize << (usize::BITS - 1 - n.leading_zeros()) };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next - 1] <= r {
                pos = next;
                r -= self.tree[next - 1];
            }
            step >>= 1;
        }
        pos.min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut f = Fenwick::default();
        let mut w: Vec<u64> = vec![];
        for step in 0..3000 {
            match rng.u8(0..4) {
                0 | 1 => {
                    let x = rng.u64(0..1000);
                    f.push(x);
                    w.push(x);
                }
                2 if !w.is_empty() => {
                    let x = w.pop().unwrap();
                    f.pop(x);
                }
                _ if !w.is_empty() => {
                    let p = rng.usize(0..w.len());
                    let x = rng.u64(0..1000);
                    f.add(p, x.wrapping_sub(w[p]));
                    w[p] = x;
                }
                _ => {}
            }
            assert_eq!(f.len(), w.len());
            assert_eq!(f.total(), w.iter().sum::<u64>(), "step {step}");
            if f.total() > 0 {
                let r = rng.u64(0..f.total());
                let p = f.find(r);
                let before: u64 = w[..p].iter().sum();
                assert!(before <= r && r < before + w[p], "step {step}");
            }
        }
    }
}
