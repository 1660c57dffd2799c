//! `rserpool registrar`: runs a registrar (ENRP server) serving ASAP over TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rserpool::config::{self, Config, EngineChoice, LogFormat, Profile, RegistrationCheck};
use rserpool::metrics::{Exporter, MetricsHub, MetricsServer};
use rserpool::registrar::{Registrar, RegistrarConfig, ASAP, COORDINATOR, ENRP, ENRP_TLS};
use rserpool::runtime::{self, EngineConfig, EngineKind, Listen, TlsAcceptor, TlsConnector};
use rserpool::time::Time;
use rserpool::tls::{self, Identity, Roots, TlsError};
use tracing::{error, info, warn};

mod announce;
mod enrp_multicast;

/// Arguments of `rserpool registrar`. Every flag has a key in the `--config` file; a flag
/// given on the command line wins over the file.
#[derive(clap::Args, Debug, Default)]
pub struct RegistrarArgs {
    /// ASAP listen address for pool elements and pool users [config: asap; default 127.0.0.1:3863].
    #[arg(long, value_name = "ADDR")]
    pub asap: Option<SocketAddr>,
    /// ENRP listen address for peer registrars [config: enrp; default 127.0.0.1:9901]; port 0
    /// picks a free one (logged).
    #[arg(long, value_name = "ADDR")]
    pub enrp: Option<SocketAddr>,
    /// This registrar's server id, 32-bit hex [config: id; default random].
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
    /// An ENRP peer registrar (repeatable) [config: peers].
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<SocketAddr>,
    /// TOML configuration file (see `--print-config` for every key and its default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Tuning profile: which cores run shards, ring and buffer sizes (`tuning/*.toml`) [config: profile].
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Number of shard threads (default: one per core of the profile, or of the machine) [config: cores].
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// I/O engine [config: engine; default auto = io_uring where allowed, else epoll].
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
    /// Log level or filter, e.g. `warn`, `info`, `debug`, `rserpool=debug` [config: log;
    /// default info: nothing per request; env RUST_LOG wins].
    #[arg(long, visible_alias = "log-level", value_name = "FILTER")]
    pub log: Option<String>,
    /// How a registration's addresses are checked against its connection: `source` (the
    /// connection's address must be one of the PE's), `allowlist` (every address inside
    /// security.registration_allowlist) or `off` (PEs behind NAT) [config:
    /// security.registration_check; default source]. Refusals get cause 0xA.
    #[arg(long, value_enum, value_name = "MODE")]
    pub registration_check: Option<CheckArg>,
    /// Find ENRP peers by multicast Presence on enrp_multicast.group (239.0.0.51:9901 unless
    /// configured): announce this registrar there and dial the registrars heard, if their
    /// address is admitted (loopback, --peer, security.enrp_allowlist) [config:
    /// enrp_multicast.enabled; default off].
    #[arg(long)]
    pub enrp_multicast: bool,
    /// Log line format [config: log_format; default text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (docs/METRICS.md
    /// lists them) [config: metrics; default off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The values of `--engine`: [`EngineChoice`] as the command line spells it (the library's
/// configuration does not depend on clap).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EngineArg {
    /// io_uring where the kernel allows it, else epoll (with a log line saying so).
    Auto,
    /// io_uring only; fail if unavailable.
    Uring,
    /// The portable epoll engine.
    Epoll,
}

/// The values of `--log-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormatArg {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => Self::Text,
            LogFormatArg::Json => Self::Json,
        }
    }
}

impl From<EngineArg> for EngineChoice {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Auto => Self::Auto,
            EngineArg::Uring => Self::Uring,
            EngineArg::Epoll => Self::Epoll,
        }
    }
}

/// The values of `--registration-check` ([`RegistrationCheck`] as the command line spells it).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CheckArg {
    /// The connection's source address must be one of the PE's addresses.
    Source,
    /// Every address the PE registers must be inside security.registration_allowlist.
    Allowlist,
    /// No check.
    Off,
}

impl From<CheckArg> for RegistrationCheck {
    fn from(c: CheckArg) -> Self {
        match c {
            CheckArg::Source => Self::Source,
            CheckArg::Allowlist => Self::Allowlist,
            CheckArg::Off => Self::Off,
        }
    }
}

/// The configuration after file and flags are merged.
fn effective(args: &RegistrarArgs) -> Result<Config, String> {
    let mut c = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(a) = args.asap {
        c.asap = a;
    }
    if let Some(a) = args.enrp {
        c.enrp = a;
    }
    if args.id.is_some() {
        c.id.clone_from(&args.id);
    }
    if !args.peers.is_empty() {
        c.peers.clone_from(&args.peers);
    }
    if args.profile.is_some() {
        c.profile.clone_from(&args.profile);
    }
    if args.cores.is_some() {
        c.cores = args.cores;
    }
    if let Some(e) = args.engine {
        c.engine = e.into();
    }
    if let Some(l) = &args.log {
        c.log.clone_from(l);
    }
    if args.enrp_multicast {
        c.enrp_multicast.enabled = true;
    }
    if let Some(m) = args.registration_check {
        c.security.registration_check = m.into();
    }
    if let Some(f) = args.log_format {
        c.log_format = f.into();
    }
    if args.metrics.is_some() {
        c.metrics = args.metrics;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

/// Which cores run shards: the profile's list (or every core), cut to `cores` when given.
fn shard_cores(profile: &Profile, cores: Option<usize>) -> Result<Vec<Option<usize>>, String> {
    let mut list: Vec<Option<usize>> = if profile.shard_cores.is_empty() {
        core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| Some(c.id)).collect()).unwrap_or_default()
    } else {
        profile.shard_cores.iter().map(|&c| Some(c)).collect()
    };
    if list.is_empty() {
        list.push(None);
    }
    if let Some(n) = cores {
        if n > list.len() {
            // More shards than listed cores: the extra ones run unpinned.
            list.resize(n, None);
        }
        list.truncate(n);
    }
    Ok(list)
}

/// The TLS ends built from `[tls]`: ENRP's listener and dialler, ASAP's listener.
#[derive(Default)]
struct TlsEnds {
    enrp: Option<(TlsAcceptor, TlsConnector)>,
    asap: Option<TlsAcceptor>,
}

/// Loads the certificate, key and CA files `[tls]` names (each error names its file).
fn tls_ends(t: &config::Tls) -> Result<TlsEnds, TlsError> {
    let (Some(cert), Some(key)) = (&t.certificate, &t.private_key) else {
        return Ok(TlsEnds::default()); // validated: neither listener is configured
    };
    if t.enrp.is_none() && t.asap.is_none() {
        return Ok(TlsEnds::default());
    }
    let identity = Identity::load(cert, key)?;
    let enrp = match (&t.enrp, &t.ca) {
        (Some(_), Some(ca)) => {
            let roots = Roots::load(ca)?;
            let server = tls::mesh_server(&identity, &roots)?;
            let client = tls::mesh_client(&identity, &roots)?;
            Some((TlsAcceptor::new(server), TlsConnector::new(client)))
        }
        _ => None,
    };
    let asap = match t.asap {
        Some(_) => Some(TlsAcceptor::new(tls::asap_server(&identity)?)),
        None => None,
    };
    Ok(TlsEnds { enrp, asap })
}

/// `addr`, with a free port picked now if it is 0: peers must be told a port they can dial.
fn dialable(addr: SocketAddr, what: &str) -> Result<SocketAddr, String> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_target(false).with_ansi(ansi).try_init()
        }
        // One object per line: timestamp, level, fields (the message among them), thread.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_ansi(false).try_init(),
    };
}

/// Runs the command; returns the process exit code.
pub fn run(args: RegistrarArgs) -> i32 {
    let config = match effective(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if args.print_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
        return 0;
    }
    init_logging(&config.log, config.log_format);
    let profile = match &config.profile {
        Some(path) => match Profile::load(path) {
            Ok(p) => p,
            Err(e) => {
                error!("{e}");
                return 2;
            }
        },
        None => Profile::default(),
    };
    let shards = match shard_cores(&profile, config.cores) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return 2;
        }
    };
    let n = shards.len();
    let server_id = config.server_id();
    let max_connections = profile.max_connections.unwrap_or(config.limits.max_connections);
    match runtime::raise_nofile_limit() {
        Ok(limit) if limit < max_connections as u64 + 64 => {
            warn!(
                "the open-file limit is {limit}: fewer than the {max_connections} connections configured can be served"
            )
        }
        Ok(_) => {}
        Err(e) => warn!("could not raise the open-file limit: {e}"),
    }
    let tls_ends = match tls_ends(&config.tls) {
        Ok(t) => t,
        Err(e) => {
            error!("TLS: {e}");
            return 2;
        }
    };
    // The ENRP address announced to peers: the TLS listener's in a TLS mesh. Peers must be
    // told a dialable port: pick a free one now if 0 was configured.
    let enrp = match dialable(config.tls.enrp.unwrap_or(config.enrp), "ENRP") {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    // The listeners, in this order: ASAP, then those configured (plaintext ENRP, ENRP over
    // TLS, ASAP over TLS); `engine.local_addrs()` follows it.
    let mut listeners = vec![Listen::new(config.asap, ASAP)];
    let mut dial_tls = Vec::new();
    let plain_enrp_addr = match config.tls.enrp {
        None => Some(enrp),
        Some(_) if config.tls.enrp_plain => Some(config.enrp),
        Some(_) => None,
    };
    if let Some(a) = plain_enrp_addr {
        listeners.push(Listen::on_shard(a, ENRP, COORDINATOR));
    }
    if let Some((acceptor, connector)) = tls_ends.enrp {
        listeners.push(Listen::on_shard(enrp, ENRP_TLS, COORDINATOR).with_tls(acceptor));
        // Every ENRP dial speaks TLS: in a TLS mesh, peers are reached on their TLS listeners.
        dial_tls.push((ENRP, connector));
    }
    let asap_tls_index = listeners.len();
    if let (Some(addr), Some(acceptor)) = (config.tls.asap, tls_ends.asap) {
        listeners.push(Listen::new(addr, ASAP).with_tls(acceptor));
    }
    let engine_config = EngineConfig {
        kind: match config.engine {
            EngineChoice::Auto => EngineKind::Auto,
            EngineChoice::Uring => EngineKind::Uring,
            EngineChoice::Epoll => EngineKind::Epoll,
        },
        listeners,
        dial_tls,
        shards,
        ring_entries: profile.ring_entries,
        buffer_count: profile.buffer_count,
        buffer_size: profile.buffer_size,
        max_connections: max_connections.div_ceil(n).max(1),
        max_send_queue_bytes: config.limits.max_send_queue,
        max_send_queue_hard_bytes: config.limits.max_send_queue.saturating_mul(16),
        max_message_size: config.limits.max_message_size,
        cross_shard_queue: profile.cross_shard_queue,
        max_hold: std::time::Duration::from_millis(config.timers.max_hold),
        send_stall_timeout: std::time::Duration::from_millis(config.timers.send_stall_timeout),
        ..EngineConfig::default()
    };
    let discovery =
        config.enrp_multicast.enabled.then(|| std::sync::Arc::new(rserpool::enrp::Discovery::new(server_id, enrp)));
    // The endpoint's address is taken before the shards start, so that a bad one stops here.
    let metrics_listener = match config.metrics {
        Some(addr) => match std::net::TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                error!("cannot listen on {addr} (metrics): {e}");
                return 1;
            }
        },
        None => None,
    };
    let hub = metrics_listener.is_some().then(|| Arc::new(MetricsHub::new(n)));
    let registrar = RegistrarConfig {
        server_id,
        shards: n as u16,
        limits: config.limits.clone(),
        timers: config.timers.clone(),
        seed: u64::from(server_id) ^ 0x5253_4552_504f_4f4c,
        budgets: Default::default(),
        enrp: Some(enrp),
        peers: config.peers.clone(),
        security: config.security.clone(),
        discovery: discovery.clone(),
        metrics: hub.clone(),
    };
    let budgets = Arc::clone(&registrar.budgets);
    let engine = match runtime::start(engine_config, move |shard, _| Registrar::new(&registrar, shard, Time::ZERO)) {
        Ok(e) => e,
        Err(e) => {
            error!("cannot start: {e}");
            return 1;
        }
    };
    // Signal handlers before the "serving" line: whoever waits for that line (a supervisor, the
    // tests) may send SIGTERM at once, and the default action would kill the process uncleanly.
    let stop = engine.shutdown_handle();
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]);
    match signals {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    info!("signal {sig}: stopping");
                    stop.shutdown();
                }
            });
        }
        Err(e) => warn!("cannot install signal handlers: {e}"),
    }
    let kind = match engine.kind() {
        EngineKind::Uring => "io_uring",
        _ => "epoll",
    };
    info!(
        "registrar {server_id:#010x} serving ASAP on {} and ENRP on {enrp} with {n} shard(s), {kind} engine; profile: {}",
        engine.local_addr(),
        profile.description
    );
    if config.tls.enrp.is_some() {
        match plain_enrp_addr {
            Some(a) => info!("ENRP over mutual TLS on {enrp} (announced to peers), plaintext ENRP also on {a}"),
            None => info!("ENRP over mutual TLS on {enrp}; no plaintext ENRP listener"),
        }
    }
    if let Some((_, a)) = engine.local_addrs().get(asap_tls_index).filter(|_| config.tls.asap.is_some()) {
        info!("ASAP over TLS on {a}");
    }
    if !config.peers.is_empty() {
        let peers: Vec<String> = config.peers.iter().map(ToString::to_string).collect();
        info!("ENRP peers: {}", peers.join(", "));
    }
    let metrics = match (metrics_listener, hub) {
        (Some(listener), Some(hub)) => {
            let exporter = Exporter::new(server_id, hub, budgets, Some(engine.stats_reader()));
            match MetricsServer::serve(listener, exporter) {
                Ok(m) => {
                    info!("metrics at http://{}/metrics", m.local_addr());
                    Some(m)
                }
                Err(e) => {
                    error!("cannot start the metrics endpoint: {e}");
                    engine.shutdown_handle().shutdown();
                    let _ = engine.join();
                    return 1;
                }
            }
        }
        _ => None,
    };
    let announcer = config
        .announce
        .enabled
        .then(|| announce::start(server_id, engine.local_addr(), &config.announce, config.timers.server_announce));
    let multicast =
        discovery.and_then(|d| match enrp_multicast::start(d, &config.enrp_multicast, config.timers.peer_heartbeat) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("ENRP multicast discovery on {} is off: {e}", config.enrp_multicast.group);
                None
            }
        });
    let result = engine.join();
    if let Some(Ok(a)) = announcer {
        a.stop();
    }
    if let Some(m) = multicast {
        m.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    match result {
        Ok(()) => {
            info!("stopped");
            0
        }
        Err(e) => {
            error!("{e}");
            1
        }
    }
}
