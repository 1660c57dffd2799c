//! The deployment files in `deploy/` are what they claim: the systemd unit passes
//! `systemd-analyze verify` (where systemd is installed), the shipped configuration loads, and
//! the container files agree with each other and with the README's build.

use std::path::Path;
use std::process::Command;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have systemd-analyze (apt-get install systemd)");
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // The unit names the installed path; verify it against the binary this build made.
    let unit = deploy("rserpool-registrar.service").replace("/usr/local/bin/rserpool", env!("CARGO_BIN_EXE_rserpool"));
    let dir = std::env::temp_dir().join(format!("rserpool-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rserpool-registrar.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn the_unit_keeps_the_hardening_and_io_uring() {
    let unit = deploy("rserpool-registrar.service");
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
        "ExecStart=/usr/local/bin/rserpool registrar --config /etc/rserpool/registrar.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lost `{line}`");
    }
}

#[test]
fn the_shipped_configuration_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/registrar.toml");
    let config = rserpool::config::Config::load(&path).expect("deploy/registrar.toml is valid");
    assert_eq!(config.asap.port(), 3863);
    assert!(config.asap.ip().is_unspecified(), "a server configuration listens on every interface");
    assert_eq!(config.security.registration_check, rserpool::config::RegistrationCheck::Source);
}

#[test]
fn the_container_files_agree() {
    let dockerfile = deploy("Dockerfile");
    assert!(dockerfile.contains("cargo build --release"), "the image builds as the README does");
    assert!(dockerfile.contains("COPY deploy/registrar.toml /etc/rserpool/registrar.toml"));
    assert!(dockerfile.contains(r#"CMD ["registrar", "--config", "/etc/rserpool/registrar.toml"]"#));
    // Every registrar of the compose mesh names exactly the others as peers.
    let compose = deploy("compose.yaml");
    let addrs: Vec<&str> =
        compose.lines().filter_map(|l| l.split("ipv4_address: ").nth(1)).map(|a| a.trim_end_matches(" } }")).collect();
    assert_eq!(addrs.len(), 3, "three registrars");
    let services: Vec<&str> = compose.split("\n  registrar-").skip(1).collect();
    assert_eq!(services.len(), 3);
    for (i, service) in services.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            let peer = format!("--peer, \"{addr}:9901\"");
            assert_eq!(service.contains(&peer), i != j, "registrar {i} and peer {addr}");
        }
    }
}
