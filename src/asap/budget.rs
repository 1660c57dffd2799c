//! Registrar-wide limits shared by all shards (pools and PEs in the whole registrar): one
//! atomic counter each, taken before something new is stored and given back when it goes.
//! Only registrations of new PEs and pools and their removals touch them, never a resolution.
//! The ceilings are the configured limits, which every shard knows.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A count of units in use, shared by every shard.
#[derive(Debug, Default)]
pub struct Budget {
    used: AtomicUsize,
}

impl Budget {
    /// Takes one unit; `false` (and nothing taken) when `max` are in use.
    pub fn try_take(&self, max: usize) -> bool {
        if self.used.fetch_add(1, Relaxed) < max {
            true
        } else {
            self.used.fetch_sub(1, Relaxed);
            false
        }
    }

    /// Takes `n` units unchecked (what was created after a check).
    pub fn take(&self, n: usize) {
        if n > 0 {
            self.used.fetch_add(n, Relaxed);
        }
    }

    /// Gives `n` units back.
    pub fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Relaxed);
        }
    }

    /// Units in use.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }
}

/// The registrar-wide budgets.
#[derive(Debug, Default)]
pub struct Budgets {
    /// Pool elements this registrar is home of (up to `limits.max_pes`).
    pub pes: Budget,
    /// Pool elements learnt from peer registrars (up to `limits.max_peer_pes`), counted apart
    /// so that neither kind can crowd out the other.
    pub peer_pes: Budget,
    /// Pools in the whole registrar (up to `limits.max_pools`).
    pub pools: Budget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_taken_up_to_the_ceiling_and_given_back() {
        let b = Budget::default();
        assert!(b.try_take(2) && b.try_take(2));
        assert!(!b.try_take(2), "ceiling reached");
        assert_eq!(b.used(), 2);
        b.give_back(1);
        assert!(b.try_take(2));
        b.give_back(2);
        assert_eq!(b.used(), 0);
    }
}
