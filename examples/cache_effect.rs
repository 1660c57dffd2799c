//! The PU cache's effect: Handle Resolutions that reach the registrar per 1,000 sends, where a
//! send picks its PE in name-service mode (`PoolUser::resolve`, then the first PE), with the
//! cache (stale-cache time 30 s, the RFC default) and without it (0). Spawns a registrar; the
//! PEs and the PU run in process. Counts at the PU (`PuStats::resolutions_sent`).
//!
//! ```text
//! cargo build --release --bin rserpool && cargo run --release --example cache_effect -- [--sends 1000]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rserpool::client::blocking::{PoolElement, PoolUser};
use rserpool::client::Timers;

fn main() {
    let sends: u64 = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rserpool");
    let mut reg = Command::new(bin)
        .args(["registrar", "--asap", "127.0.0.1:39124", "--cores", "1", "--engine", "epoll"])
        .stderr(Stdio::null())
        .spawn()
        .expect("rserpool (build it)");
    std::thread::sleep(Duration::from_millis(500));
    let registrar = "127.0.0.1:39124".parse().unwrap();
    let mut pes = Vec::new();
    for _ in 0..3 {
        let mut pe = PoolElement::builder("cache").registrar(registrar).start().unwrap();
        pe.wait_registered(Duration::from_secs(10)).unwrap();
        pes.push(pe);
    }
    println!("| cache | sends | resolutions at the registrar | per 1,000 sends | cache hits | PEs used | wall ms |");
    println!("|---|---|---|---|---|---|---|");
    for stale in [30_000u64, 0] {
        let timers = Timers { stale_cache: stale, ..Timers::default() };
        let pu = PoolUser::builder().registrar(registrar).timers(timers).start().unwrap();
        let mut used = std::collections::BTreeMap::new();
        let t = Instant::now();
        for _ in 0..sends {
            let pick = pu.resolve(b"cache", Duration::from_secs(15)).unwrap();
            *used.entry(pick[0].pe_id).or_insert(0u64) += 1;
        }
        let ms = t.elapsed().as_millis();
        let st = pu.stats();
        println!(
            "| {} | {sends} | {} | {:.1} | {} | {} ({:?}) | {ms} |",
            if stale > 0 { "on (30 s)" } else { "off" },
            st.resolutions_sent,
            st.resolutions_sent as f64 * 1000.0 / sends as f64,
            st.cache_hits,
            used.len(),
            used.values().collect::<Vec<_>>()
        );
    }
    let _ = reg.kill();
    let _ = reg.wait();
}
