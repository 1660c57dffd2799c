//! `rserpool register`: a pool element that registers, answers keep-alives, re-registers before
//! its life runs out, and deregisters on Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rserpool::wire::asap::{self, Body, MessageType};
use rserpool::wire::transport::Addresses;
use rserpool::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr,
    TransportUse, Writer,
};

use crate::client::Connection;
use crate::describe;

/// Arguments of `rserpool register`.
#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    /// The registrar's ASAP address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3863")]
    pub registrar: SocketAddr,
    /// Pool handle to register under.
    #[arg(long, value_name = "NAME")]
    pub pool: String,
    /// How pool users reach this PE: PROTO:IP:PORT with PROTO one of tcp, udp, sctp, udplite,
    /// dccp. Repeat it to give a multi-homed PE several addresses (legs): they then share one
    /// protocol and port, and only SCTP carries more than one. 0.0.0.0 means "the address I
    /// connect from".
    #[arg(long = "transport", value_name = "PROTO:IP:PORT", required = true)]
    pub transports: Vec<String>,
    /// The transport also accepts ASAP control messages (Cookie, Business Card).
    #[arg(long)]
    pub control: bool,
    /// Selection policy: rr, wrr:WEIGHT, random, wrand:WEIGHT, priority:P, lu:LOAD,
    /// lud:LOAD:DEGRADATION, plu:LOAD:DEGRADATION, rlu:LOAD. Loads and degradations are
    /// percentages (`25%`) or raw 32-bit values.
    #[arg(long, value_name = "SPEC", default_value = "rr")]
    pub policy: String,
    /// Registration life in milliseconds (-1: until deregistered or disconnected). The PE
    /// re-registers 20 s before it runs out (T4).
    #[arg(long, value_name = "MS", default_value_t = 300_000, allow_negative_numbers = true)]
    pub lifetime: i32,
    /// PE identifier, hex (default random).
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
    /// Register, print the answer and exit (deregistering first) instead of staying registered.
    #[arg(long)]
    pub once: bool,
}

fn load(s: &str) -> Result<u32, String> {
    match s.strip_suffix('%') {
        Some(p) => {
            let v: f64 = p.parse().map_err(|_| format!("bad percentage {s:?}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("percentage {s:?} out of 0..100"));
            }
            Ok((v / 100.0 * f64::from(u32::MAX)).round() as u32)
        }
        None => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses a policy spec (see `--policy`).
pub fn parse_policy(spec: &str) -> Result<Policy, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let num = |i: usize| -> Result<u32, String> {
        parts
            .get(i)
            .ok_or_else(|| format!("policy {spec:?} needs a value"))?
            .parse()
            .map_err(|_| format!("bad number in {spec:?}"))
    };
    let ld = |i: usize| -> Result<u32, String> {
        load(parts.get(i).ok_or_else(|| format!("policy {spec:?} needs a value"))?)
    };
    let want =
        |n: usize| if parts.len() == n + 1 { Ok(()) } else { Err(format!("policy {spec:?} takes {n} value(s)")) };
    Ok(match parts[0] {
        "rr" | "round-robin" => want(0).map(|_| Policy::RoundRobin)?,
        "wrr" | "weighted-round-robin" => want(1).and_then(|_| Ok(Policy::WeightedRoundRobin { weight: num(1)? }))?,
        "random" => want(0).map(|_| Policy::Random)?,
        "wrand" | "weighted-random" => want(1).and_then(|_| Ok(Policy::WeightedRandom { weight: num(1)? }))?,
        "priority" => want(1).and_then(|_| Ok(Policy::Priority { priority: num(1)? }))?,
        "lu" | "least-used" => want(1).and_then(|_| Ok(Policy::LeastUsed { load: ld(1)? }))?,
        "lud" => want(2).and_then(|_| Ok(Policy::LeastUsedDegradation { load: ld(1)?, degradation: ld(2)? }))?,
        "plu" => want(2).and_then(|_| Ok(Policy::PriorityLeastUsed { load: ld(1)?, degradation: ld(2)? }))?,
        "rlu" => want(1).and_then(|_| Ok(Policy::RandomizedLeastUsed { load: ld(1)? }))?,
        other => return Err(format!("unknown policy {other:?} (rr, wrr, random, wrand, priority, lu, lud, plu, rlu)")),
    })
}

/// Parses `--transport` values into one transport parameter.
pub fn parse_transports(specs: &[String], control: bool) -> Result<TransportRepr, String> {
    let mut protocol = None;
    let mut port = None;
    let mut addresses = Addresses::new();
    for spec in specs {
        let (proto, rest) = spec.split_once(':').ok_or_else(|| format!("transport {spec:?} is not PROTO:IP:PORT"))?;
        let p = match proto {
            "tcp" => TransportProtocol::Tcp,
            "udp" => TransportProtocol::Udp,
            "sctp" => TransportProtocol::Sctp,
            "udplite" => TransportProtocol::UdpLite,
            "dccp" => TransportProtocol::Dccp,
            _ => return Err(format!("unknown transport protocol {proto:?} (tcp, udp, sctp, udplite, dccp)")),
        };
        let sa: SocketAddr =
            rest.parse().map_err(|_| format!("transport {spec:?}: {rest:?} is not IP:PORT ([v6]:PORT for IPv6)"))?;
        if protocol.is_some_and(|q| q != p) || port.is_some_and(|q| q != sa.port()) {
            return Err("all --transport values of one PE must share protocol and port (they are its legs)".into());
        }
        protocol = Some(p);
        port = Some(sa.port());
        addresses.push(sa.ip());
    }
    let protocol = protocol.ok_or("at least one --transport is needed")?;
    if addresses.len() > 1 && protocol != TransportProtocol::Sctp {
        return Err(format!("only SCTP carries several addresses; {} takes one", protocol.name()));
    }
    let transport_use = if control { TransportUse::DataPlusControl } else { TransportUse::DataOnly };
    Ok(TransportRepr { protocol, port: port.unwrap_or(0), transport_use, service_code: 0, addresses })
}

fn registration(pool: &str, pe: &PoolElementRepr) -> Vec<u8> {
    let m = MessageRepr::new(
        Protocol::Asap,
        MessageType::Registration as u8,
        0,
        vec![ParamRepr::PoolHandle(pool.as_bytes().to_vec()), ParamRepr::PoolElement(pe.clone())],
    );
    m.to_bytes().unwrap_or_default()
}

/// Waits for the Registration Response; Ok(()) if accepted.
fn await_response(conn: &mut Connection, pool: &str, pe_id: u32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no Registration Response within 30 s (T2)".into());
        }
        let Some(m) = conn.recv(Some(left)).map_err(|e| e.to_string())? else { continue };
        let Ok(parsed) = asap::parse(&m) else { continue };
        match parsed.body() {
            Body::RegistrationResponse { rejected, pe_id: id, error, .. } if *id == pe_id => {
                if !rejected {
                    return Ok(());
                }
                let why = error.as_ref().map(|e| {
                    let c = e.first_code();
                    format!("cause 0x{:x} {}", c.0, c.name().unwrap_or("?"))
                });
                return Err(format!(
                    "registration of {pool:?} rejected: {}",
                    why.unwrap_or_else(|| "no cause given".into())
                ));
            }
            Body::EndpointKeepAlive { pool_handle, pe_id: addressed, .. } => {
                ack(conn, (pool_handle, *addressed), (pool, pe_id))?
            }
            _ => {}
        }
    }
}

/// Answers the Keep Alive for `keep_alive` (pool handle, PE Identifier) with a Keep Alive Ack.
/// One without PE Identifier addresses every PE of the connection (WIRE.md section 6): here the
/// one PE this command registered, `own` (pool handle, PE id).
fn ack(conn: &mut Connection, keep_alive: (&[u8], Option<u32>), own: (&str, u32)) -> Result<(), String> {
    let (handle, pe_id) = match keep_alive {
        (handle, Some(pe_id)) => (handle, pe_id),
        (_, None) => (own.0.as_bytes(), own.1),
    };
    let mut buf = Vec::new();
    let _ = asap::emit_handle_and_id(
        &mut Writer::new(&mut buf),
        MessageType::EndpointKeepAliveAck,
        0,
        handle,
        Some(pe_id),
        None,
    );
    conn.send(&buf).map_err(|e| e.to_string())
}

fn deregister(conn: &mut Connection, pool: &str, pe_id: u32) {
    let mut buf = Vec::new();
    let _ = asap::emit_handle_and_id(
        &mut Writer::new(&mut buf),
        MessageType::Deregistration,
        0,
        pool.as_bytes(),
        Some(pe_id),
        None,
    );
    if conn.send(&buf).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match conn.recv(Some(left)) {
            Ok(Some(m)) if m.first() == Some(&(MessageType::DeregistrationResponse as u8)) => {
                eprintln!("deregistered");
                return;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    eprintln!("no Deregistration Response; closing (the registrar drops the PE with the connection)");
}

/// Runs the command; returns the process exit code.
pub fn run(args: RegisterArgs) -> i32 {
    let fail = |e: String| {
        eprintln!("error: {e}");
        2
    };
    let policy = match parse_policy(&args.policy) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let user_transport = match parse_transports(&args.transports, args.control) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let pe_id = match &args.id {
        Some(s) => match rserpool::config::parse_server_id(s) {
            Ok(v) => v,
            Err(e) => return fail(e.replace("server id", "PE id")),
        },
        None => rserpool::config::random_server_id(),
    };
    let pe = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: args.lifetime,
        user_transport,
        policy: PolicyRepr::Known(policy),
        asap_transport: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            return fail(format!("cannot install a signal handler: {e}"));
        }
    }
    let mut conn = match Connection::connect(args.registrar, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot connect to the registrar at {}: {e}", args.registrar)),
    };
    let reg = registration(&args.pool, &pe);
    if let Err(e) =
        conn.send(&reg).map_err(|e| e.to_string()).and_then(|_| await_response(&mut conn, &args.pool, pe_id))
    {
        eprintln!("error: {e}");
        return 1;
    }
    let pe_json = describe::pool_element_json(&pe);
    println!("registered PE {pe_id:#010x} in pool {:?} at {}: {pe_json}", args.pool, args.registrar);
    if args.once {
        deregister(&mut conn, &args.pool, pe_id);
        return 0;
    }
    // T4: re-register 20 s before the life runs out (or every 10 minutes).
    let period = match args.lifetime {
        l if l < 0 => None,
        l => Some(Duration::from_millis((u64::try_from(l).unwrap_or(0).saturating_sub(20_000)).clamp(1_000, 600_000))),
    };
    let mut next_reregistration = period.map(|p| Instant::now() + p);
    while !stop.load(Ordering::Relaxed) {
        if next_reregistration.is_some_and(|t| Instant::now() >= t) {
            if let Err(e) = conn.send(&reg) {
                eprintln!("error: re-registration: {e}");
                return 1;
            }
            next_reregistration = period.map(|p| Instant::now() + p);
        }
        match conn.recv(Some(Duration::from_millis(200))) {
            Ok(Some(m)) => {
                if let Ok(parsed) = asap::parse(&m) {
                    match parsed.body() {
                        Body::EndpointKeepAlive { pool_handle, pe_id: addressed, .. } => {
                            if let Err(e) = ack(&mut conn, (pool_handle, *addressed), (&args.pool, pe_id)) {
                                eprintln!("error: {e}");
                                return 1;
                            }
                        }
                        Body::RegistrationResponse { rejected: true, .. } => {
                            eprintln!("error: re-registration rejected");
                            return 1;
                        }
                        _ => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    deregister(&mut conn, &args.pool, pe_id);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_specs() {
        assert_eq!(parse_policy("rr"), Ok(Policy::RoundRobin));
        assert_eq!(parse_policy("wrr:3"), Ok(Policy::WeightedRoundRobin { weight: 3 }));
        assert_eq!(parse_policy("lu:0"), Ok(Policy::LeastUsed { load: 0 }));
        assert_eq!(parse_policy("lu:100%"), Ok(Policy::LeastUsed { load: u32::MAX }));
        assert_eq!(
            parse_policy("lud:50%:1000"),
            Ok(Policy::LeastUsedDegradation { load: 0x8000_0000, degradation: 1000 })
        );
        assert!(parse_policy("wrr").is_err());
        assert!(parse_policy("rr:1").is_err());
        assert!(parse_policy("nope").is_err());
        assert!(parse_policy("lu:120%").is_err());
    }

    #[test]
    fn transport_specs() {
        let t = parse_transports(&["tcp:192.0.2.1:7000".into()], false).unwrap();
        assert_eq!((t.protocol, t.port, t.addresses.len()), (TransportProtocol::Tcp, 7000, 1));
        let t = parse_transports(&["sctp:192.0.2.1:7000".into(), "sctp:[2001:db8::1]:7000".into()], true).unwrap();
        assert_eq!(t.addresses.len(), 2);
        assert_eq!(t.transport_use, TransportUse::DataPlusControl);
        assert!(parse_transports(&["tcp:192.0.2.1:7000".into(), "tcp:192.0.2.2:7000".into()], false).is_err());
        assert!(parse_transports(&["sctp:192.0.2.1:7000".into(), "sctp:192.0.2.2:7001".into()], false).is_err());
        assert!(parse_transports(&["tcp:192.0.2.1".into()], false).is_err());
        assert!(parse_transports(&["xyz:192.0.2.1:1".into()], false).is_err());
    }
}
