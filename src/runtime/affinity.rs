//! Pinning shard threads to cores: validated once at start, applied inside each shard thread.

use super::EngineError;

/// Checks that every configured core is online, so a typo in a tuning profile fails at start
/// instead of silently running unpinned. (The calling thread's own affinity mask is not the
/// reference: a caller pinned to one core may still start shards on the others.)
pub(crate) fn validate(shards: &[Option<usize>]) -> Result<(), EngineError> {
    if shards.iter().all(Option::is_none) {
        return Ok(());
    }
    // Without the sysfs list the check is skipped; pinning itself then reports a bad core.
    let Some(online) = online_cpus() else {
        return Ok(());
    };
    for (shard, core) in shards.iter().enumerate() {
        if let Some(core) = core {
            if !online.contains(core) {
                return Err(EngineError::Config(format!(
                    "shard {shard} is pinned to core {core}, which is not an online CPU (online: {online:?})"
                )));
            }
        }
    }
    Ok(())
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,8,10-11").
fn online_cpus() -> Option<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_list(text.trim())
}

fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Pins the calling thread to `core`. A failure is logged and the shard runs unpinned: pinning
/// is a performance measure, not a correctness one.
pub(crate) fn pin_current(shard: u16, core: Option<usize>) {
    if let Some(id) = core {
        if core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::debug!(shard, core = id, "shard thread pinned");
        } else {
            tracing::warn!(shard, core = id, "could not pin shard thread; running unpinned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
