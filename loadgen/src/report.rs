//! Output: the summary table, machine facts and git revision, JSON files under `results/`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::run::RunResult;

/// Facts about the machine and the code a result was measured with.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// UTC date and time of the measurement.
    pub date: String,
    /// Online CPUs.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// `git describe --always --dirty` of the working tree.
    pub git_revision: String,
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Reads the facts now.
    pub fn now() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            date: cmd("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            // Online CPUs of the machine, not of this (pinned) thread's affinity mask.
            nproc: cmd("nproc", &["--all"]).parse().unwrap_or(0),
            kernel: cmd("uname", &["-r"]),
            cpu,
            git_revision: cmd("git", &["describe", "--always", "--dirty"]),
        }
    }

    /// The date as a file name part: `20260101-120000`.
    pub fn stamp(&self) -> String {
        self.date.replace(['-', ':'], "").replace('T', "-").trim_end_matches('Z').to_string()
    }
}

/// Writes `value` as pretty JSON to `path`, creating its folder.
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// `dir/name` with `{date}` replaced by the machine's date stamp.
pub fn out_path(dir: &Path, name: &str, m: &Machine) -> PathBuf {
    dir.join(name.replace("{date}", &m.stamp()))
}

/// A run's summary as text, one table.
pub fn summary_table(r: &RunResult) -> String {
    let c = &r.config;
    let mut s = String::new();
    let mode = match c.rate {
        Some(rate) => format!("open loop at {rate:.0}/s"),
        None => format!("closed loop, {} in flight per connection", c.depth),
    };
    s += &format!(
        "target {} at {}, {} connections, {mode}, {} thread(s), io {:?}\n",
        c.target.name(),
        c.addr,
        c.connections,
        c.threads,
        c.io
    );
    s += &format!("{:<28}{:>14}\n", "throughput (answers/s)", format!("{:.0}", r.throughput));
    s += &format!("{:<28}{:>14}\n", "measured", format!("{:.2} s", r.measured_s));
    s += &format!("{:<28}{:>14}\n", "answers", r.completed);
    for (k, v) in &r.ops {
        s += &format!("{:<28}{:>14}\n", format!("  {k}"), v.to_string());
    }
    let l = &r.latency;
    let label = if c.rate.is_some() { "latency (from intended), us" } else { "latency, us" };
    s += &format!("{label}\n");
    for (name, v) in [
        ("  min", l.min_us),
        ("  p50", l.p50_us),
        ("  p90", l.p90_us),
        ("  p99", l.p99_us),
        ("  p99.9", l.p999_us),
        ("  p99.99", l.p9999_us),
        ("  max", l.max_us),
        ("  mean", l.mean_us),
    ] {
        s += &format!("{name:<28}{v:>14.1}\n");
    }
    if let Some(sl) = &r.service_latency {
        s += &format!("{:<28}{:>14.1}\n", "  service p50 (from send)", sl.p50_us);
        s += &format!("{:<28}{:>14.1}\n", "  service p99 (from send)", sl.p99_us);
    }
    s += &format!("{:<28}{:>14}\n", "errors", r.error_total());
    for (k, v) in r.errors.iter().filter(|(k, _)| *k != "total") {
        s += &format!("{:<28}{:>14}\n", format!("  {k}"), v.to_string());
    }
    if r.errors_outside_window > 0 {
        s += &format!("{:<28}{:>14}\n", "errors outside window", r.errors_outside_window);
    }
    if r.not_sent > 0 {
        s += &format!("{:<28}{:>14}\n", "due but never sent", r.not_sent);
    }
    s += &format!("{:<28}{:>14.3}\n", "client syscalls / answer", r.client_syscalls_per_answer);
    if let Some(c) = r.client_cpu {
        s += &format!("{:<28}{:>14.2}\n", "client CPU (cores)", c);
    }
    if let Some(c) = r.server_cpu {
        s += &format!("{:<28}{:>14.2}\n", "server CPU (cores)", c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_is_file_name_safe() {
        let m = Machine {
            date: "2026-03-04T05:06:07Z".into(),
            nproc: 2,
            kernel: "k".into(),
            cpu: "c".into(),
            git_revision: "r".into(),
        };
        assert_eq!(m.stamp(), "20260304-050607");
        assert_eq!(out_path(Path::new("r"), "x-{date}.json", &m), PathBuf::from("r/x-20260304-050607.json"));
    }
}
