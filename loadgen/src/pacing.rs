//! Open-loop pacing: the intended send time of every request of a fixed-rate run.
//!
//! Request `k` of the whole run is due at `start + k / rate`. With `T` client threads, thread `t`
//! takes requests `t, t + T, t + 2T, ...`, so the threads together keep the global schedule and
//! each one alone is a schedule of rate `rate / T` shifted by `t / rate`. Latency in open loop is
//! measured from these intended times (see [`crate::stats::Accounting`]), never from the moment
//! the request was actually written, so a server (or client) that stalls cannot hide the stall
//! by delaying the sends (coordinated omission).

use crate::Nanos;

/// The intended send times of one thread's share of an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    start: Nanos,
    /// Nanoseconds between two requests of this schedule.
    period: f64,
}

impl Schedule {
    /// A schedule of `rate` requests per second starting at `start` (request 0 is due then).
    pub fn new(start: Nanos, rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 1.0 };
        Self { start, period: 1e9 / rate }
    }

    /// Thread `index` of `threads`' share of a global schedule of `rate` requests per second.
    pub fn for_thread(start: Nanos, rate: f64, index: usize, threads: usize) -> Self {
        let global = Self::new(start, rate);
        let threads = threads.max(1);
        Self { start: global.intended(index as u64), period: global.period * threads as f64 }
    }

    /// When request `k` (0-based) of this schedule is due.
    #[inline]
    pub fn intended(&self, k: u64) -> Nanos {
        self.start + (k as f64 * self.period).round() as u64
    }

    /// How many requests are due at `now`: the number of `k` with `intended(k) <= now`.
    pub fn due(&self, now: Nanos) -> u64 {
        if now < self.start {
            return 0;
        }
        let mut n = ((now - self.start) as f64 / self.period).floor() as u64 + 1;
        // Float rounding may be one off either way; settle it against `intended`.
        while n > 0 && self.intended(n - 1) > now {
            n -= 1;
        }
        while self.intended(n) <= now {
            n += 1;
        }
        n
    }

    /// Nanoseconds between two requests.
    pub fn period(&self) -> f64 {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = Schedule::new(1_000, 1000.0); // one per millisecond
        assert_eq!(s.intended(0), 1_000);
        assert_eq!(s.intended(1), 1_001_000);
        assert_eq!(s.intended(1000), 1_000_001_000);
    }

    #[test]
    fn due_counts_exactly_the_requests_whose_time_has_come() {
        let s = Schedule::new(500, 3000.0); // period 333_333.33 ns
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(499), 0);
        assert_eq!(s.due(500), 1);
        for now in [500u64, 333_832, 333_833, 333_834, 1_000_499, 1_000_500, 7_777_777, 1_000_000_000] {
            let n = s.due(now);
            assert!(s.intended(n - 1) <= now, "now {now}: request {} not due", n - 1);
            assert!(s.intended(n) > now, "now {now}: request {n} due but not counted");
        }
    }

    #[test]
    fn threads_share_the_global_schedule_without_gaps_or_overlap() {
        let (rate, threads) = (12_345.0, 3);
        let global = Schedule::new(10, rate);
        let mut merged: Vec<Nanos> = (0..threads)
            .flat_map(|t| {
                let s = Schedule::for_thread(10, rate, t, threads);
                (0..1000).map(move |k| s.intended(k))
            })
            .collect();
        merged.sort_unstable();
        for (k, t) in merged.iter().enumerate() {
            // Same times up to rounding of one nanosecond.
            assert!(t.abs_diff(global.intended(k as u64)) <= 1, "request {k}");
        }
        // Over any horizon the threads together have as many requests due as the global schedule.
        for now in [10, 1_000_000, 50_000_000, 80_000_000] {
            let sum: u64 = (0..threads).map(|t| Schedule::for_thread(10, rate, t, threads).due(now)).sum();
            assert!(sum.abs_diff(global.due(now)) <= 1, "now {now}: {sum} vs {}", global.due(now));
        }
    }

    #[test]
    fn a_nonsense_rate_does_not_divide_by_zero() {
        assert_eq!(Schedule::new(0, 0.0).period(), 1e9);
        assert_eq!(Schedule::new(0, f64::NAN).period(), 1e9);
    }
}
