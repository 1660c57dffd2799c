//! `rserpool resolve`: asks a registrar for PEs of a pool and prints them (a pool user on the
//! client library: T1, MAX-REQUEST-RETRANSMIT).

use std::net::SocketAddr;
use std::time::Duration;

use rserpool::client::blocking::{ClientError, PoolUser};
use rserpool::client::pu::ResolveError;
use rserpool::wire::{CauseCode, Policy, PolicyRepr};
use serde_json::{json, Value};

use crate::describe;

/// Arguments of `rserpool resolve`.
#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    /// The registrar's ASAP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3863")]
    pub registrar: SocketAddr,
    /// How many PEs to ask for (Handle Resolution Option; 0 = as many as the registrar gives;
    /// without it the registrar's default, 3).
    #[arg(long, value_name = "N")]
    pub items: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Pool handle.
    pub pool: String,
}

fn policy_json(policy: &PolicyRepr) -> Value {
    match policy {
        PolicyRepr::Known(p) => describe::policy_json(p),
        PolicyRepr::Unknown { policy_type, .. } => json!({ "policy": format!("unknown {policy_type:?}") }),
    }
}

/// Runs the command; returns the process exit code (1 when the pool is unknown).
pub fn run(args: ResolveArgs) -> i32 {
    let mut b = PoolUser::builder().registrar(args.registrar);
    if let Some(n) = args.items {
        b = b.items(n);
    }
    let pu = match b.start() {
        Ok(pu) => pu,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // T1 with MAX-REQUEST-RETRANSMIT retries, and a little for the connection.
    let t = rserpool::client::Timers::default();
    let patience = Duration::from_millis(t.t1_request * u64::from(t.max_request_retransmit + 1) + t.connect_timeout);
    let answer = match pu.resolve_answer(args.pool.as_bytes(), true, patience) {
        Ok(a) => a,
        Err(ClientError::Resolve(ResolveError::UnknownPool)) => {
            let c = CauseCode::UNKNOWN_POOL_HANDLE;
            if args.json {
                let v = json!({ "pool": args.pool, "error": format!("0x{:x}", c.0), "cause": c.name() });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("pool {:?}: cause 0x{:x} {}", args.pool, c.0, c.name().unwrap_or("?"));
            }
            return 1;
        }
        Err(e) => {
            eprintln!("error: no answer from the registrar at {}: {e}", args.registrar);
            return 2;
        }
    };
    let pes: Vec<_> = answer.pes.iter().map(describe::pool_element_json).collect();
    // A response without the overall policy means Round Robin (RFC 5352 section 2.2.6).
    let implied = answer.policy.is_none();
    let policy = policy_json(&answer.policy.unwrap_or(PolicyRepr::Known(Policy::RoundRobin)));
    if args.json {
        let mut v = json!({ "pool": args.pool, "policy": policy, "pool_elements": pes });
        if implied {
            v["policy_implied"] = json!(true);
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    println!(
        "pool {:?}: {} PE(s), policy {}{}",
        args.pool,
        pes.len(),
        policy["policy"].as_str().unwrap_or("?"),
        if implied { " (not sent: the RFC 5352 default)" } else { "" }
    );
    for pe in &answer.pes {
        let t = &pe.user_transport;
        let addrs: Vec<String> = t.addresses.iter().map(|a| a.to_string()).collect();
        let life = match pe.registration_life {
            l if l < 0 => "no expiry".to_string(),
            l => format!("life {l} ms"),
        };
        println!("- PE {:#010x} (home registrar {:#010x}, {life})", pe.pe_id, pe.home_registrar);
        println!("    {} port {} on {}", t.protocol.name(), t.port, addrs.join(", "));
        let text = describe::to_text(&policy_json(&pe.policy)).lines().map(str::trim).collect::<Vec<_>>().join(", ");
        println!("    {text}");
    }
    0
}
