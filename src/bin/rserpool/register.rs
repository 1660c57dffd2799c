//! `rserpool register`: a pool element that registers, answers keep-alives, re-registers before
//! its life runs out, and deregisters on Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rserpool::client::blocking::{ClientError, PoolElement};
use rserpool::client::node::PeNodeEvent;
use rserpool::client::pe::PeEvent;
use rserpool::wire::transport::Addresses;
use rserpool::wire::{Policy, PolicyRepr, PoolElementRepr, TransportProtocol, TransportRepr, TransportUse};

use crate::describe;

/// Arguments of `rserpool register`: a pool element on the client library
/// ([`rserpool::client::blocking::PoolElement`]): T2 retries, registrar hunt, re-registration
/// every T4 and after its connection drops, keep-alives, home adoption.
#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    /// The registrar's ASAP address; repeat it to give others to hunt when one fails.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3863")]
    pub registrar: Vec<SocketAddr>,
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
    /// percentages (`25%`) or raw 32-bit values (decimal, or hex with 0x).
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
        None => raw(s).ok_or_else(|| format!("bad value {s:?}")),
    }
}

/// A raw 32-bit value: decimal, or hex with `0x`.
fn raw(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a policy spec (see `--policy`).
pub fn parse_policy(spec: &str) -> Result<Policy, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let num = |i: usize| -> Result<u32, String> {
        raw(parts.get(i).ok_or_else(|| format!("policy {spec:?} needs a value"))?)
            .ok_or_else(|| format!("bad number in {spec:?}"))
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
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            return fail(format!("cannot install a signal handler: {e}"));
        }
    }
    let mut builder = PoolElement::builder(&args.pool)
        .user_transport(user_transport.clone())
        .policy(policy)
        .lifetime(args.lifetime)
        .pe_id(pe_id);
    for r in &args.registrar {
        builder = builder.registrar(*r);
    }
    let mut pe = match builder.start() {
        Ok(pe) => pe,
        Err(e) => return fail(e.to_string()),
    };
    // T2 times MAX-REG-ATTEMPT at each registrar, and a little for the connection.
    let patience = Duration::from_secs(65 * args.registrar.len() as u64);
    let registrar = match pe.wait_registered(patience) {
        Ok(_) => pe.registrar().map_or_else(|| "?".into(), |r| r.to_string()),
        Err(ClientError::Rejected(cause)) => {
            let name = rserpool::wire::CauseCode(cause).name().unwrap_or("?");
            eprintln!("error: registration of {:?} rejected: cause 0x{cause:x} {name}", args.pool);
            return 1;
        }
        Err(e) => {
            eprintln!("error: not registered: {e} (registrars: {:?})", args.registrar);
            return 1;
        }
    };
    let desc = PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: args.lifetime,
        user_transport,
        policy: PolicyRepr::Known(policy),
        asap_transport: None,
    };
    let pe_json = describe::pool_element_json(&desc);
    println!("registered PE {pe_id:#010x} in pool {:?} at {registrar}: {pe_json}", args.pool);
    while !args.once && !stop.load(Ordering::Relaxed) {
        match pe.next_event(Duration::from_millis(200)) {
            Some(PeNodeEvent::Pe(PeEvent::RegistrarLost { registrar })) => {
                eprintln!("lost the registrar at {registrar}; hunting and registering again")
            }
            Some(PeNodeEvent::Pe(PeEvent::Registered { registrar, pe_id, .. })) => {
                eprintln!("registered PE {pe_id:#010x} again at {registrar}")
            }
            Some(PeNodeEvent::Pe(ev)) => eprintln!("{ev:?}"),
            _ => {}
        }
    }
    match pe.deregister(Duration::from_secs(3)) {
        Ok(()) => eprintln!("deregistered"),
        Err(_) => eprintln!("no Deregistration Response; closing (the registrar drops the PE with the connection)"),
    }
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
        // Raw 32-bit values in hex, as the help offers.
        assert_eq!(
            parse_policy("plu:0x40000000:0x10"),
            Ok(Policy::PriorityLeastUsed { load: 0x4000_0000, degradation: 0x10 })
        );
        assert_eq!(parse_policy("wrr:0xff"), Ok(Policy::WeightedRoundRobin { weight: 255 }));
        assert!(parse_policy("lu:0x1ffffffff").is_err());
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
