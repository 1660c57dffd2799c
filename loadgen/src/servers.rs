//! Servers started by `compare` and `sweep`: the registrar, redis-server and the bare echo
//! server, each a child process pinned to one core with `taskset`, on a free loopback port.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::setup::wait_for_port;

/// A server process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    /// What it is.
    pub name: &'static str,
    /// Its listen address.
    pub addr: SocketAddr,
    /// The command line, for the record.
    pub command: String,
    child: Child,
}

impl Server {
    /// The server's process id (`taskset` execs it, so this is the server itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our own child, by its pid: TERM first so it shuts down cleanly, then reap it.
        let pid = self.child.id() as libc::pid_t;
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(name: &'static str, core: usize, program: &Path, args: &[String], addr: SocketAddr) -> io::Result<Server> {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program).args(args);
    let command = format!("taskset -c {core} {} {}", program.display(), args.join(" "));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    let child = cmd.spawn().map_err(|e| io::Error::other(format!("cannot start {command}: {e}")))?;
    let server = Server { name, addr, command, child };
    wait_for_port(addr, Duration::from_secs(10))?;
    Ok(server)
}

/// The `rserpool` binary next to this one (same target directory), if it exists.
pub fn default_registrar_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name("rserpool")
}

/// Starts the registrar with one shard pinned to `core` (a profile written to `workdir`), its
/// ASAP port on `port`, and an extra configuration file if given.
pub fn start_registrar(
    bin: &Path,
    core: usize,
    loadgen_core: usize,
    port: u16,
    workdir: &Path,
    config: Option<&Path>,
) -> io::Result<Server> {
    std::fs::create_dir_all(workdir)?;
    let profile = workdir.join("loadgen-profile.toml");
    std::fs::write(
        &profile,
        format!(
            "description = \"loadgen: one shard on core {core}, loadgen on core {loadgen_core}\"\n\
             shard_cores = [{core}]\nloadgen_cores = [{loadgen_core}]\n"
        ),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let enrp = free_port()?;
    let mut args = vec![
        "registrar".to_string(),
        "--asap".into(),
        addr.to_string(),
        "--enrp".into(),
        format!("127.0.0.1:{enrp}"),
        "--profile".into(),
        profile.display().to_string(),
        "--cores".into(),
        "1".into(),
        "--log".into(),
        "warn".into(),
    ];
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    spawn("registrar", core, bin, &args, addr)
}

/// Starts `redis-server` on loopback without persistence, pinned to `core`.
pub fn start_redis(core: usize, port: u16) -> io::Result<Server> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn("redis", core, Path::new("redis-server"), &args, addr)
}

/// Starts `loadgen echo-server` (this binary) pinned to `core`.
pub fn start_echo(core: usize, port: u16, request: usize, reply: usize) -> io::Result<Server> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let me = std::env::current_exe()?;
    let args = vec![
        "echo-server".to_string(),
        "--addr".into(),
        addr.to_string(),
        "--core".into(),
        core.to_string(),
        "--request-size".into(),
        request.to_string(),
        "--reply-size".into(),
        reply.to_string(),
    ];
    spawn("echo", core, &me, &args, addr)
}
