//! Pinning shard threads to cores: validated once at start, applied inside each shard thread.

use super::EngineError;

/// Checks that every configured core exists in this process's CPU set, so a typo in a tuning
/// profile fails at start instead of silently running unpinned.
pub(crate) fn validate(shards: &[Option<usize>]) -> Result<(), EngineError> {
    if shards.iter().all(Option::is_none) {
        return Ok(());
    }
    let Some(available) = core_affinity::get_core_ids() else {
        return Err(EngineError::Config(
            "cannot read the CPU set to validate shard cores".into(),
        ));
    };
    for (shard, core) in shards.iter().enumerate() {
        if let Some(core) = core {
            if !available.iter().any(|c| c.id == *core) {
                return Err(EngineError::Config(format!(
                    "shard {shard} is pinned to core {core}, which is not in this process's CPU set"
                )));
            }
        }
    }
    Ok(())
}

/// Pins the calling thread to `core`. A failure is logged and the shard runs unpinned: pinning
/// is a performance measure, not a correctness one.
pub(crate) fn pin_current(shard: u16, core: Option<usize>) {
    if let Some(id) = core {
        if core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::debug!(shard, core = id, "shard thread pinned");
        } else {
            tracing::warn!(
                shard,
                core = id,
                "could not pin shard thread; running unpinned"
            );
        }
    }
}
