//! A registrar process for the live fuzz and abuse runs: started with a given engine, shard
//! count and configuration, its log kept in a file, checked afterwards for being alive and for
//! panics, and stopped with SIGTERM (whose exit status is checked too).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::free_port;
use crate::setup::wait_for_port;

/// A registrar child process; killed when dropped if still running.
pub struct LiveRegistrar {
    child: Child,
    /// Its ASAP address.
    pub addr: SocketAddr,
    /// Its log (stderr).
    pub log: PathBuf,
    /// The command line, for the record.
    pub command: String,
}

impl LiveRegistrar {
    /// Starts `bin registrar --engine ENGINE --cores CORES` with `config` (TOML) on a free
    /// loopback port, its log in `workdir/registrar.log`; waits until it accepts connections.
    pub fn start(bin: &Path, engine: &str, cores: usize, config: &str, workdir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(workdir)?;
        let file = workdir.join("registrar.toml");
        let (asap, enrp) = (free_port()?, free_port()?);
        std::fs::write(
            &file,
            format!(
                "asap = \"127.0.0.1:{asap}\"\nenrp = \"127.0.0.1:{enrp}\"\nid = \"f0220001\"\nlog = \"info\"\n{config}"
            ),
        )?;
        let log = workdir.join("registrar.log");
        let args = ["registrar", "--engine", engine, "--cores", &cores.to_string(), "--config"];
        let command = format!("{} {} {}", bin.display(), args.join(" "), file.display());
        let child = Command::new(bin)
            .args(args)
            .arg(&file)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start {command}: {e}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], asap));
        let mut me = Self { child, addr, log, command };
        if let Err(e) = wait_for_port(addr, Duration::from_secs(20)) {
            return Err(io::Error::other(format!("{e}; log: {}", me.log_text())));
        }
        if let Some(status) = me.child.try_wait()? {
            return Err(io::Error::other(format!("the registrar exited at once ({status}); log: {}", me.log_text())));
        }
        Ok(me)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines that report a panic (none may exist).
    pub fn panics(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains("panicked")).map(str::to_owned).collect()
    }

    /// Sends SIGTERM and waits up to `limit` for it to exit; its exit status.
    pub fn terminate(mut self, limit: Duration) -> io::Result<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!("the registrar did not exit within {limit:?} of SIGTERM")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LiveRegistrar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
