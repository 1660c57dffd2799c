//! Live progress: an `indicatif` bar with the rate and p99 on a terminal, a plain line a second
//! otherwise.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Live;
use crate::run::RunConfig;

/// The progress display of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total_s: f64,
    last_answers: u64,
    last_t: u64,
    last_line: u64,
}

impl Progress {
    /// A display for a run of `total_s` seconds (warm-up included).
    pub fn new(cfg: &RunConfig, total_s: f64) -> Self {
        let label = format!(
            "{} c={} d={}{}",
            cfg.target.name(),
            cfg.connections,
            cfg.depth,
            cfg.rate.map(|r| format!(" rate={r:.0}/s")).unwrap_or_default()
        );
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new((total_s * 10.0) as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(label.clone());
            b
        });
        Self { bar, label, total_s, last_answers: 0, last_t: 0, last_line: 0 }
    }

    /// Refreshes from the threads' counters at `t` nanoseconds into the run.
    pub fn update(&mut self, lives: &[Arc<Live>], t: u64) {
        let answers: u64 = lives.iter().map(|l| l.answers.load(Ordering::Relaxed)).sum();
        let errors: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
        let p99 = lives.iter().map(|l| l.p99_ns.load(Ordering::Relaxed)).max().unwrap_or(0);
        if t < self.last_t + 500_000_000 {
            return;
        }
        let rate = (answers - self.last_answers.min(answers)) as f64 / ((t - self.last_t) as f64 / 1e9);
        self.last_answers = answers;
        self.last_t = t;
        let msg = format!("{:>10.0} req/s  p99 {:>8.1} us  errors {errors}", rate, p99 as f64 / 1000.0);
        match &self.bar {
            Some(b) => {
                b.set_position(((t as f64 / 1e8) as u64).min((self.total_s * 10.0) as u64));
                b.set_message(msg);
            }
            None if t >= self.last_line + 1_000_000_000 => {
                self.last_line = t;
                eprintln!("[{:>5.1}s] {}  {msg}", t as f64 / 1e9, self.label);
            }
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
