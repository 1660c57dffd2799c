//! A fixed-bucket latency histogram: plain counters a shard adds to without sharing, merged
//! bucket by bucket on a scrape.

/// Upper bounds of the buckets in nanoseconds, in 1-2.5-5 steps from 100 ns to 100 ms (a
/// request handled on one shard takes well under a microsecond; the upper buckets catch the
/// stalls worth seeing). Beyond the last bound: the `+Inf` bucket.
pub const BOUNDS_NS: [u64; 19] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// Buckets including `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Observations per bucket (not cumulative: bucket `i` counts values in
/// `(BOUNDS_NS[i-1], BOUNDS_NS[i]]`, the last one everything above the last bound) and their
/// sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: [0; BUCKETS], sum_ns: 0 }
    }
}

impl Histogram {
    /// Records one observation of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// Observations per bucket (not cumulative), the last one being `+Inf`.
    pub fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// Each bucket's upper bound in seconds (`f64::INFINITY` for the last) with the
    /// observations in it (not cumulative), as the exposition encoders take them.
    pub fn buckets_seconds(&self) -> [(f64, u64); BUCKETS] {
        let mut out = [(f64::INFINITY, 0); BUCKETS];
        for (i, slot) in out.iter_mut().enumerate() {
            let bound = BOUNDS_NS.get(i).map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
            *slot = (bound, self.counts[i]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_whose_bound_is_the_first_not_below_them() {
        let mut h = Histogram::default();
        for ns in [0, 100, 101, 250, 999, 1_000, 100_000_000, 100_000_001, u64::MAX] {
            h.record(ns);
        }
        let c = h.counts();
        assert_eq!(c[0], 2, "0 and 100 are <= 100 ns");
        assert_eq!(c[1], 2, "101 and 250");
        assert_eq!(c[3], 2, "999 and 1000 are <= 1 us");
        assert_eq!(c[BOUNDS_NS.len() - 1], 1, "100 ms");
        assert_eq!(c[BUCKETS - 1], 2, "above the last bound");
        assert_eq!(h.count(), 9);
        assert_eq!(h.sum_ns(), u64::MAX, "the sum saturates");
    }

    #[test]
    fn merging_adds_bucket_by_bucket() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(50);
        a.record(3_000);
        b.record(3_000);
        b.record(200_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.sum_ns(), 50 + 6_000 + 200_000_000);
        assert_eq!(a.counts()[0], 1);
        assert_eq!(a.counts()[5], 2, "3 us is in the 5 us bucket");
        assert_eq!(a.counts()[BUCKETS - 1], 1);
        let s = a.buckets_seconds();
        assert_eq!(s[0], (1e-7, 1));
        assert_eq!(s[BUCKETS - 1], (f64::INFINITY, 1));
    }
}
