//! Rate limit of Endpoint Unreachable reports (WIRE.md section 6.1: "count reports per PE,
//! rate-limit per PU"): reports from one address about a PE count at most once per interval,
//! so one client cannot remove a PE by repeating itself, nor by opening more connections;
//! MAX-BAD-PE-REPORT reports need several clients or several intervals.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::handlespace::PeKey;
use crate::time::Time;

/// Most (PE, reporter) pairs remembered; older ones are forgotten first when it fills up.
const MAX_ENTRIES: usize = 1 << 16;

/// When each reporting address last had a report about each PE counted.
#[derive(Debug)]
pub(crate) struct ReportLimiter {
    last: HashMap<(PeKey, IpAddr), Time, ahash::RandomState>,
    interval: u64,
}

impl ReportLimiter {
    pub(crate) fn new(interval: u64) -> Self {
        Self { last: HashMap::default(), interval }
    }

    /// Whether a report from `reporter` about `pe` at `now` counts (and records it if so).
    pub(crate) fn allow(&mut self, pe: PeKey, reporter: IpAddr, now: Time) -> bool {
        if self.interval == 0 {
            return true;
        }
        if let Some(t) = self.last.get(&(pe, reporter)) {
            if now.millis_since(*t) < self.interval {
                return false;
            }
        }
        if self.last.len() >= MAX_ENTRIES {
            let interval = self.interval;
            self.last.retain(|_, t| now.millis_since(*t) < interval);
            if self.last.len() >= MAX_ENTRIES {
                self.last.clear();
            }
        }
        self.last.insert((pe, reporter), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_reporter_and_interval() {
        let mut l = ReportLimiter::new(1000);
        let pe = PeKey::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        assert!(l.allow(pe, a, Time(0)));
        assert!(!l.allow(pe, a, Time(999)), "the same reporter within the interval");
        assert!(l.allow(pe, b, Time(999)), "another reporter counts");
        assert!(l.allow(pe, a, Time(1000)), "the same reporter after the interval");
        let mut off = ReportLimiter::new(0);
        assert!(off.allow(pe, a, Time(0)) && off.allow(pe, a, Time(0)));
    }
}
