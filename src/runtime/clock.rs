//! The engine's clock: protocol [`Time`] is milliseconds since the engine started, read from the
//! monotonic clock, shared by all shards so that times compare across shards.

use std::time::{Duration, Instant};

use crate::time::Time;

/// Converts between [`Instant`] and protocol [`Time`] for one engine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose [`Time::ZERO`] is now.
    pub(crate) fn start() -> Self {
        Self { origin: Instant::now() }
    }

    /// The current protocol time (whole milliseconds, rounded down).
    pub(crate) fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Microseconds since the origin (for output gathered for less than a millisecond).
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant `us` microseconds after the origin, if representable.
    pub(crate) fn instant_us(&self, us: u64) -> Option<Instant> {
        self.origin.checked_add(Duration::from_micros(us))
    }

    /// The instant at which protocol time `t` begins, or `None` if it is beyond any
    /// representable instant (for example [`Time::NEVER`]).
    pub(crate) fn instant(&self, t: Time) -> Option<Instant> {
        if t == Time::NEVER {
            return None;
        }
        self.origin.checked_add(Duration::from_millis(t.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_of_now_is_not_in_the_future() {
        let c = Clock::start();
        let t = c.now();
        let at = c.instant(t).expect("small times are representable");
        assert!(at <= Instant::now());
        assert!(c.instant(Time::NEVER).is_none());
    }
}
