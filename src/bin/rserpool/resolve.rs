//! `rserpool resolve`: asks a registrar for PEs of a pool and prints them.

use std::net::SocketAddr;
use std::time::Duration;

use rserpool::wire::asap::{self, Body, Resolution};
use rserpool::wire::{PolicyParam, Writer};
use serde_json::{json, Value};

use crate::client::Connection;
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

fn policy_json(policy: PolicyParam<'_>) -> Value {
    match policy {
        PolicyParam::Known(p) => describe::policy_json(&p),
        other => json!({ "policy": format!("unknown {:?}", other.policy_type()) }),
    }
}

/// Runs the command; returns the process exit code (1 when the pool is unknown).
pub fn run(args: ResolveArgs) -> i32 {
    let mut conn = match Connection::connect(args.registrar, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot connect to the registrar at {}: {e}", args.registrar);
            return 2;
        }
    };
    let mut req = Vec::new();
    let _ = asap::emit_handle_resolution(&mut Writer::new(&mut req), args.pool.as_bytes(), args.items);
    if let Err(e) = conn.send(&req) {
        eprintln!("error: {e}");
        return 2;
    }
    let answer = loop {
        match conn.recv(Some(Duration::from_secs(15))) {
            Ok(Some(m)) if m.first() == Some(&(asap::MessageType::HandleResolutionResponse as u8)) => break m,
            Ok(Some(_)) => continue,
            Ok(None) => {
                eprintln!("error: no answer within 15 s (T1)");
                return 2;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    };
    let parsed = match asap::parse(&answer) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: malformed answer: {e}");
            return 2;
        }
    };
    let Body::HandleResolutionResponse { resolution, .. } = parsed.body() else { return 2 };
    match resolution {
        Resolution::Found { policy, pool_elements } => {
            let pes: Vec<_> = pool_elements.clone().map(|pe| describe::pool_element_json(&pe.to_repr())).collect();
            // A response without the overall policy means Round Robin (RFC 5352 section 2.2.6).
            let implied = policy.is_none();
            let policy = policy_json(policy.unwrap_or(asap::DEFAULT_POOL_POLICY));
            if args.json {
                let mut v = json!({ "pool": args.pool, "policy": policy, "pool_elements": pes });
                if implied {
                    v["policy_implied"] = json!(true);
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "pool {:?}: {} PE(s), policy {}{}",
                    args.pool,
                    pes.len(),
                    policy["policy"].as_str().unwrap_or("?"),
                    if implied { " (not sent: the RFC 5352 default)" } else { "" }
                );
                for pe in pool_elements.clone() {
                    let t = pe.user_transport();
                    let addrs: Vec<String> = t.addresses().map(|a| a.to_string()).collect();
                    let life = match pe.registration_life() {
                        l if l < 0 => "no expiry".to_string(),
                        l => format!("life {l} ms"),
                    };
                    println!("- PE {:#010x} (home registrar {:#010x}, {life})", pe.pe_id(), pe.home_registrar());
                    println!("    {} port {} on {}", t.protocol().name(), t.port(), addrs.join(", "));
                    let text = describe::to_text(&policy_json(pe.policy()))
                        .lines()
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join(", ");
                    println!("    {text}");
                }
            }
            0
        }
        Resolution::Failed(e) => {
            let c = e.first_code();
            if args.json {
                let v = json!({ "pool": args.pool, "error": format!("0x{:x}", c.0), "cause": c.name() });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("pool {:?}: cause 0x{:x} {}", args.pool, c.0, c.name().unwrap_or("?"));
            }
            1
        }
    }
}
