//! `rserpool status`: asks a registrar (over its ASAP port, from this host) how it stands:
//! server id, joining or consistent, PE and pool counts, its ENRP peers with their state and
//! checksums, audits, mismatches and takeovers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rserpool::registrar::{StatusReport, STATUS_REQUEST};

/// Arguments of `rserpool status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The registrar's ASAP address (it answers status requests from loopback addresses only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3863")]
    pub registrar: SocketAddr,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn ask(addr: SocketAddr) -> Result<StatusReport, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("cannot connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(&[STATUS_REQUEST, 0, 0, 4]).map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(|e| format!("no answer: {e}"))?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]])).max(4);
    let mut m = head.to_vec();
    m.resize(len, 0);
    s.read_exact(&mut m[4..]).map_err(|e| format!("cut answer: {e}"))?;
    StatusReport::from_message(&m)
        .map_err(|e| format!("not a status answer (is this a registrar's ASAP port, and are you on its host?): {e}"))
}

/// Runs the command; returns the process exit code.
pub fn run(args: StatusArgs) -> i32 {
    let r = match ask(args.registrar) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", args.registrar);
            return 2;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return 0;
    }
    println!("registrar {} ({}), {} shard(s)", r.server_id, r.state, r.shards);
    println!(
        "PEs: {} own, {} of peers; pools: {}; own checksum {}",
        r.pes_owned, r.pes_of_peers, r.pools, r.own_checksum
    );
    println!(
        "updates sent {}, received {}; audits {} ({} mismatches); takeovers {}",
        r.updates_sent, r.updates_received, r.audits, r.mismatches, r.takeovers
    );
    for p in &r.peers {
        println!(
            "peer {} at {}: {}, last heard {} ms ago, checksum announced {} / held here {} ({} PEs)",
            p.id,
            if p.address.is_empty() { "?" } else { &p.address },
            if p.connected { "connected" } else { "not connected" },
            p.last_heard_ms,
            if p.announced_checksum.is_empty() { "-" } else { &p.announced_checksum },
            if p.local_checksum.is_empty() { "-" } else { &p.local_checksum },
            p.local_pes
        );
    }
    0
}
