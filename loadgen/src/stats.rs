//! What a run records: latency histograms (hdrhistogram, nanoseconds), counts of completed
//! requests per operation, and errors by kind; how latencies are accounted; how per-thread
//! records merge.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Nanos;

/// Largest latency recorded exactly (60 s); longer ones are clamped to it.
pub const MAX_LATENCY: Nanos = 60_000_000_000;

/// Why a response (or its absence) counts as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ErrorKind {
    /// A message that does not parse (framing or validation failed).
    Malformed,
    /// A valid message of a type other than the answer expected.
    WrongType,
    /// An answer for a pool handle (or PE) that no request in flight asked about.
    Unexpected,
    /// A Handle Resolution Response carrying an Operation Error (e.g. unknown pool).
    ResolutionFailed,
    /// A Handle Resolution Response with no PE although the pool has some.
    NoPoolElement,
    /// A PE in a response that does not belong to the pool asked for.
    ForeignPoolElement,
    /// The same PE twice in one response.
    DuplicatePoolElement,
    /// A Registration Response with the R flag (or an error) / a failed deregistration.
    Rejected,
    /// A Redis error reply, a nil reply, or a value of the wrong size.
    BadReply,
    /// A request still unanswered when the run ended (after the drain time).
    Unanswered,
    /// The server closed a connection or it failed.
    ConnectionLost,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 11] = [
        Self::Malformed,
        Self::WrongType,
        Self::Unexpected,
        Self::ResolutionFailed,
        Self::NoPoolElement,
        Self::ForeignPoolElement,
        Self::DuplicatePoolElement,
        Self::Rejected,
        Self::BadReply,
        Self::Unanswered,
        Self::ConnectionLost,
    ];

    /// Name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::Unexpected => "unexpected",
            Self::ResolutionFailed => "resolution_failed",
            Self::NoPoolElement => "no_pool_element",
            Self::ForeignPoolElement => "foreign_pool_element",
            Self::DuplicatePoolElement => "duplicate_pool_element",
            Self::Rejected => "rejected",
            Self::BadReply => "bad_reply",
            Self::Unanswered => "unanswered",
            Self::ConnectionLost => "connection_lost",
        }
    }
}

/// Error counts by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors([u64; ErrorKind::ALL.len()]);

impl Errors {
    /// Counts one error.
    #[inline]
    pub fn add(&mut self, kind: ErrorKind) {
        self.0[kind as usize] += 1;
    }

    /// Count of one kind.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize]
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// `(name, count)` for every kind with a non-zero count.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        ErrorKind::ALL.iter().filter(|k| self.get(**k) > 0).map(|k| (k.name(), self.get(*k))).collect()
    }
}

/// The operations a run issues, counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum OpKind {
    /// ASAP Handle Resolution.
    Resolve,
    /// ASAP Registration of a PE not registered yet.
    Register,
    /// ASAP Registration of a PE already registered (an update).
    Reregister,
    /// ASAP Deregistration.
    Deregister,
    /// RESP GET.
    Get,
    /// A request of the bare echo server.
    Echo,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 6] =
        [Self::Resolve, Self::Register, Self::Reregister, Self::Deregister, Self::Get, Self::Echo];

    /// Name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Register => "register",
            Self::Reregister => "reregister",
            Self::Deregister => "deregister",
            Self::Get => "get",
            Self::Echo => "echo",
        }
    }
}

/// How latency is measured and which requests count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    /// Open loop: latency from the intended send time; closed loop: from the actual send.
    pub open_loop: bool,
    /// Requests intended (open) or issued (closed) before this are warm-up and not recorded.
    pub measure_start: Nanos,
    /// ... and from this on, they are not recorded either.
    pub measure_end: Nanos,
}

impl Accounting {
    /// Whether a request with these times belongs to the measurement.
    #[inline]
    pub fn measured(&self, intended: Nanos) -> bool {
        intended >= self.measure_start && intended < self.measure_end
    }

    /// The latency of a request intended at `intended`, written at `sent`, answered at
    /// `received`. In open loop it is `received - intended` (queueing behind a stall counts);
    /// in closed loop the two times are the same.
    #[inline]
    pub fn latency(&self, intended: Nanos, sent: Nanos, received: Nanos) -> Nanos {
        let from = if self.open_loop { intended } else { sent };
        received.saturating_sub(from)
    }
}

/// A new latency histogram (1 ns .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 sigfigs is valid"))
}

/// One thread's record of a run.
#[derive(Clone, Debug)]
pub struct Record {
    /// Latency of every measured, valid answer (from the intended time in open loop).
    pub latency: Histogram<u64>,
    /// Open loop only: latency from the actual send (what the server alone accounts for).
    pub service: Histogram<u64>,
    /// Measured answers per operation (valid ones).
    pub ops: [u64; OpKind::ALL.len()],
    /// Errors of measured requests, and errors no request can be blamed for.
    pub errors: Errors,
    /// Errors of requests outside the measurement (warm-up, drain).
    pub errors_outside: u64,
    /// Requests issued within the measurement window.
    pub issued: u64,
    /// Open loop: requests whose intended time fell in the window but that were never sent
    /// because every connection was at its in-flight limit.
    pub not_sent: u64,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            service: new_histogram(),
            ops: [0; OpKind::ALL.len()],
            errors: Errors::default(),
            errors_outside: 0,
            issued: 0,
            not_sent: 0,
        }
    }
}

impl Record {
    /// Records one valid, measured answer.
    #[inline]
    pub fn answer(&mut self, op: OpKind, latency: Nanos, service: Option<Nanos>) {
        self.latency.saturating_record(latency.clamp(1, MAX_LATENCY));
        if let Some(s) = service {
            self.service.saturating_record(s.clamp(1, MAX_LATENCY));
        }
        self.ops[op as usize] += 1;
    }

    /// Valid measured answers of all kinds.
    pub fn completed(&self) -> u64 {
        self.ops.iter().sum()
    }

    /// Adds another thread's record.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        for (a, b) in self.ops.iter_mut().zip(other.ops) {
            *a += b;
        }
        self.errors.merge(&other.errors);
        self.errors_outside += other.errors_outside;
        self.issued += other.issued;
        self.not_sent += other.not_sent;
    }
}

/// Latency figures in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest.
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Summary of a histogram.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        min_us: us(h.min()),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        p9999_us: us(h.value_at_quantile(0.9999)),
        max_us: us(h.max()),
    }
}

/// The percentile spectrum: `(quantile, microseconds)` at quantiles 0, 0.5, 0.75, 0.875, ...
/// (halving the distance to 1 each step, with intermediate points) up to the largest value.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut q = 0.0f64;
    // Points at 1 - 2^-(i/4): four per halving, until the resolution of the sample count.
    for i in 0..=80 {
        q = 1.0 - 0.5f64.powf(f64::from(i) / 4.0);
        if (1.0 - q) * (h.len() as f64) < 0.5 {
            break;
        }
        out.push((q, us(h.value_at_quantile(q))));
    }
    let _ = q;
    out.push((1.0, us(h.max())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_samples() {
        let mut rng = fastrand::Rng::with_seed(9);
        let samples: Vec<u64> = (0..30_000).map(|_| 1_000 + rng.u64(..5_000_000)).collect();
        let mut all = Record::default();
        let mut parts = [Record::default(), Record::default(), Record::default()];
        for (i, &s) in samples.iter().enumerate() {
            all.answer(OpKind::Resolve, s, None);
            parts[i % 3].answer(OpKind::Resolve, s, None);
        }
        parts[1].errors.add(ErrorKind::Rejected);
        parts[2].errors.add(ErrorKind::Rejected);
        parts[2].errors.add(ErrorKind::Malformed);
        let mut merged = Record::default();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged.latency.len(), 30_000);
        assert_eq!(merged.completed(), 30_000);
        assert_eq!(merged.latency.max(), all.latency.max());
        assert_eq!(merged.latency.min(), all.latency.min());
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.latency.value_at_quantile(q), all.latency.value_at_quantile(q), "q {q}");
        }
        assert_eq!(merged.errors.get(ErrorKind::Rejected), 2);
        assert_eq!(merged.errors.total(), 3);
        assert_eq!(merged.errors.nonzero(), vec![("malformed", 1), ("rejected", 2)]);
    }

    #[test]
    fn open_loop_latency_counts_from_the_intended_time() {
        // 1,000 requests per second; the server stalls for 100 ms from t = 1 s, so the requests
        // due in the stall are sent late (the client waits for a free connection) and answered
        // at its end.
        let acc = Accounting { open_loop: true, measure_start: 0, measure_end: u64::MAX };
        let closed = Accounting { open_loop: false, ..acc };
        let sched = crate::pacing::Schedule::new(0, 1000.0);
        let mut open_h = Record::default();
        let mut closed_h = Record::default();
        for k in 0..2000u64 {
            let intended = sched.intended(k);
            let stalled = (1_000_000_000..1_100_000_000).contains(&intended);
            let sent = if stalled { 1_100_000_000 } else { intended };
            let received = sent + 50_000;
            open_h.answer(OpKind::Resolve, acc.latency(intended, sent, received), None);
            closed_h.answer(OpKind::Resolve, closed.latency(intended, sent, received), None);
        }
        // From the send time every request looks like 50 us; from the intended time the 100
        // requests in the stall waited up to 100 ms, and the p99 shows it.
        assert_eq!(closed_h.latency.max(), closed_h.latency.value_at_quantile(0.5));
        assert!(open_h.latency.max() >= 100_000_000);
        assert!(open_h.latency.value_at_quantile(0.99) > 50_000_000);
        assert!(open_h.latency.value_at_quantile(0.5) < 60_000);
    }

    #[test]
    fn warm_up_and_tail_are_outside_the_window() {
        let acc = Accounting { open_loop: false, measure_start: 1_000, measure_end: 2_000 };
        assert!(!acc.measured(999));
        assert!(acc.measured(1_000));
        assert!(acc.measured(1_999));
        assert!(!acc.measured(2_000));
        assert_eq!(acc.latency(0, 1_500, 1_400), 0, "a clock going backwards saturates");
    }

    #[test]
    fn spectrum_is_monotonic_and_ends_at_the_max() {
        let mut r = Record::default();
        for v in 1..=10_000u64 {
            r.answer(OpKind::Get, v * 1000, None);
        }
        let s = spectrum(&r.latency);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(s.last().map(|p| p.0), Some(1.0));
        assert!((s.last().unwrap().1 - 10_000.0).abs() < 10.0);
        let sum = summarize(&r.latency);
        assert_eq!(sum.count, 10_000);
        assert!((sum.p50_us - 5_000.0).abs() < 5.0);
    }
}
