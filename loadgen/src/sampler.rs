//! Choice of pool handles: uniform or by a Zipf law, reproducible from a seed.

use std::sync::Arc;

/// How pool handles (or Redis keys) are chosen for each request.
#[derive(Clone, Debug)]
pub enum Sampler {
    /// Every one of `n` items equally likely.
    Uniform {
        /// Number of items.
        n: usize,
    },
    /// Item `k` (0-based rank) with probability proportional to `1 / (k + 1)^s`.
    Zipf {
        /// Cumulative probabilities; the last is 1.
        cdf: Arc<[f64]>,
    },
}

impl Sampler {
    /// Uniform over `n` items (at least one).
    pub fn uniform(n: usize) -> Self {
        Self::Uniform { n: n.max(1) }
    }

    /// Zipf over `n` items with exponent `s` (s = 0 is uniform; web-like traffic is near 1).
    pub fn zipf(n: usize, s: f64) -> Self {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for v in &mut cdf {
            *v /= sum;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Self::Zipf { cdf: cdf.into() }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Self::Uniform { n } => *n,
            Self::Zipf { cdf } => cdf.len(),
        }
    }

    /// Never true (a sampler has at least one item); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Draws one item index.
    #[inline]
    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        match self {
            Self::Uniform { n } => rng.usize(..*n),
            Self::Zipf { cdf } => {
                let u = rng.f64();
                cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
            }
        }
    }

    /// Probability of item `k`.
    pub fn probability(&self, k: usize) -> f64 {
        match self {
            Self::Uniform { n } => 1.0 / *n as f64,
            Self::Zipf { cdf } => cdf[k] - if k == 0 { 0.0 } else { cdf[k - 1] },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(s: &Sampler, seed: u64, n: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| s.sample(&mut rng)).collect()
    }

    #[test]
    fn same_seed_same_sequence() {
        let z = Sampler::zipf(1000, 1.1);
        assert_eq!(draws(&z, 42, 500), draws(&z, 42, 500));
        assert_ne!(draws(&z, 42, 500), draws(&z, 43, 500));
        let u = Sampler::uniform(1000);
        assert_eq!(draws(&u, 7, 500), draws(&u, 7, 500));
    }

    #[test]
    fn zipf_frequencies_follow_the_law() {
        let z = Sampler::zipf(100, 1.0);
        let n = 200_000;
        let mut counts = vec![0usize; 100];
        for k in draws(&z, 1, n) {
            counts[k] += 1;
        }
        // Rank 0 is the most frequent, about twice rank 1 and ten times rank 9.
        assert!(counts.iter().all(|&c| c <= counts[0]));
        for k in [0, 1, 9, 50] {
            let expected = z.probability(k) * n as f64;
            let got = counts[k] as f64;
            assert!((got - expected).abs() < 5.0 * expected.sqrt() + 5.0, "rank {k}: {got} vs {expected}");
        }
        let ratio = counts[0] as f64 / counts[9] as f64;
        assert!((8.0..12.5).contains(&ratio), "{ratio}");
    }

    #[test]
    fn every_draw_is_in_range_and_s_zero_is_uniform() {
        let z = Sampler::zipf(3, 0.0);
        for k in 0..3 {
            assert!((z.probability(k) - 1.0 / 3.0).abs() < 1e-12);
        }
        assert!(draws(&Sampler::zipf(7, 2.0), 3, 10_000).iter().all(|&k| k < 7));
        assert!(draws(&Sampler::uniform(7), 3, 10_000).iter().all(|&k| k < 7));
        assert_eq!(Sampler::uniform(0).len(), 1);
    }
}
