//! Decides whether the io_uring engine can run here, and says why not when it cannot.
//!
//! io_uring is commonly blocked: container runtimes' seccomp profiles make `io_uring_setup`
//! fail with `EPERM` (or `ENOSYS`), and since Linux 6.6 the sysctl
//! `kernel.io_uring_disabled` restricts (1) or forbids (2) it. The engine also needs features
//! from Linux 6.0 (multishot receive with provided buffer rings, `MSG_RING`).

use std::io;

use io_uring::{opcode, IoUring, Probe};

use super::bufring::BufRing;

/// Oldest kernel with every io_uring feature the engine uses (multishot receive is 6.0).
const MIN_KERNEL: (u32, u32) = (6, 0);

/// Checks whether this process can run the io_uring engine. `Err` carries a one-line reason
/// fit for a log message ("io_uring_setup failed with EPERM (blocked by seccomp or ...)").
///
/// `kernel.io_uring_disabled = 2` rules io_uring out without trying. With `1`, only members of
/// `kernel.io_uring_group` (and privileged processes) may use it, so the probe simply tries:
/// an unprivileged process gets `EPERM` and falls back.
pub fn io_uring_support() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "0" | "1" => {}
            other => return Err(format!("io_uring is disabled by sysctl kernel.io_uring_disabled = {other}")),
        }
    }
    if let Some(release) = kernel_release() {
        if release < MIN_KERNEL {
            return Err(format!(
                "kernel {}.{} is older than {}.{}, which the io_uring engine needs",
                release.0, release.1, MIN_KERNEL.0, MIN_KERNEL.1
            ));
        }
    }
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {}", describe(&e)))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {}", describe(&e)))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Read::CODE, "READ"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::MsgRingData::CODE, "MSG_RING"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks IORING_OP_{name}"));
        }
    }
    let bufs = BufRing::new(4, 64, 0).map_err(|e| format!("cannot map a provided buffer ring: {e}"))?;
    bufs.register(&ring.submitter())
        .map_err(|e| format!("cannot register a provided buffer ring: {}", describe(&e)))?;
    // Dropping the ring before the buffers: nothing was submitted, so nothing refers to them.
    drop(ring);
    drop(bufs);
    Ok(())
}

/// The running kernel's major and minor version, if it can be read.
fn kernel_release() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = s.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn describe(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (the kernel has no io_uring, or a seccomp filter hides it)",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (blocked by a seccomp filter, a container policy, or kernel.io_uring_disabled)"
        }
        Some(libc::ENOMEM) => " (locked-memory limit too low?)",
        _ => "",
    };
    format!("{e}{hint}")
}
