//! Rate limit for log lines about single PEs (removed for a failed keep-alive, after
//! unreachable reports, ...): a bulk event (a crashed host's thousand PEs) must not flood the
//! log or stall the shard writing it. A few lines a second get through; the rest are counted
//! and summed up in one line.

use crate::time::Time;

/// Lines allowed per window.
const LINES: u32 = 10;
/// Window length in milliseconds.
const WINDOW: u64 = 1000;

/// Per-shard limiter of per-PE log lines (or of other repeated lines, see [`LogLimit::new`]).
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    window_start: Time,
    lines: u32,
    suppressed: u64,
    /// What the lines are about, for the summary line; `None`: single PEs.
    what: Option<&'static str>,
}

impl LogLimit {
    /// A limiter of lines about `what` (named in the summary line).
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what: Some(what), ..Self::default() }
    }

    /// Whether a line may be logged at `now`. When a window ends with lines suppressed, says
    /// how many.
    pub(crate) fn allow(&mut self, now: Time) -> bool {
        if now.millis_since(self.window_start) >= WINDOW {
            if self.suppressed > 0 {
                match self.what {
                    None => {
                        tracing::info!(suppressed = self.suppressed, "similar log lines about single PEs suppressed")
                    }
                    Some(what) => tracing::info!(suppressed = self.suppressed, "log lines about {what} suppressed"),
                }
            }
            self.window_start = now;
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < LINES {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_the_next_window_logs_again() {
        let mut l = LogLimit::default();
        let allowed = (0..100).filter(|_| l.allow(Time(5))).count();
        assert_eq!(allowed, LINES as usize);
        assert_eq!(l.suppressed, 90);
        assert!(l.allow(Time(1005)));
        assert_eq!(l.suppressed, 0);
    }
}
