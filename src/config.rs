//! Registrar configuration: TOML with defaults that run out of the box.
//!
//! Every command-line flag of `rserpool registrar` has a key here; flags override the file.
//! Unknown keys are errors (a typo must not silently fall back to a default). Timers are in
//! milliseconds with the RFC defaults (WIRE.md section 8), so tests and operators can shorten
//! them. A tuning profile (`tuning/*.toml`, [`Profile`]) says which cores run shards and how the
//! engine's rings and buffers are sized.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of its range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which I/O engine runs the registrar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// io_uring where the kernel allows it, else epoll (with a log line saying so).
    #[default]
    Auto,
    /// io_uring only; fail if unavailable.
    Uring,
    /// The portable epoll engine.
    Epoll,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message, fields).
    Json,
}

/// Protocol timers in milliseconds (WIRE.md section 8); `update_coalesce_us` in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timers {
    /// How often the home registrar sends each PE an Endpoint Keep Alive.
    pub keep_alive_interval: u64,
    /// How long a PE has to answer a keep-alive before it is removed.
    pub keep_alive_timeout: u64,
    /// Upper bound on a PE's registration life (longer requests are capped).
    pub max_registration_life: u64,
    /// An Endpoint Unreachable report from one pool user about one PE counts at most once per
    /// this many milliseconds (0: every report counts).
    pub unreachable_report_interval: u64,
    /// T6-serverannounce: Server Announce period.
    pub server_announce: u64,
    /// PEER-HEARTBEAT-CYCLE: ENRP Presence period.
    pub peer_heartbeat: u64,
    /// MAX-TIME-LAST-HEARD: silence before a peer is probed.
    pub max_time_last_heard: u64,
    /// MAX-TIME-NO-RESPONSE: wait for a probed peer's answer.
    pub max_time_no_response: u64,
    /// Wait for takeover acknowledgements.
    pub takeover_expiry: u64,
    /// Wait for a mentor at start.
    pub mentor_discovery: u64,
    /// Wait before dialling a peer again after a failed or lost connection.
    pub peer_reconnect: u64,
    /// How long a connection whose client has closed its sending side stays open while answers
    /// to its earlier requests are still being prepared by other shards.
    pub max_hold: u64,
    /// A client that takes none of its answers for this long while the registrar has stopped
    /// reading it (more than `limits.max_send_queue` unsent) is disconnected (0: never).
    pub send_stall_timeout: u64,
    /// How long Handle Updates for peers are gathered before they are written, in
    /// **microseconds** (default 200; 0: each as soon as the shard loop that made it ends). One
    /// write per peer per window instead of a few updates per write: a peer pays its wake-up and
    /// read once for all of them, for at most this much more propagation delay
    /// (results/enrp/README.md has the measurements).
    pub update_coalesce_us: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            keep_alive_interval: 30_000,
            keep_alive_timeout: 5_000,
            max_registration_life: 24 * 3600 * 1000,
            unreachable_report_interval: 1_000,
            server_announce: 1_000,
            peer_heartbeat: 30_000,
            max_time_last_heard: 61_000,
            max_time_no_response: 5_000,
            takeover_expiry: 5_000,
            mentor_discovery: 5_000,
            peer_reconnect: 1_000,
            max_hold: 30_000,
            send_stall_timeout: 60_000,
            update_coalesce_us: 200,
        }
    }
}

/// Resource limits. Crossing one gets the protocol's error (cause 0x6, Lack of Resources) or a
/// clean close, and affects no one else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted or sent, in bytes (at most 65535).
    pub max_message_size: usize,
    /// Longest pool handle, in bytes.
    pub max_pool_handle: usize,
    /// Most addresses in one transport parameter (legs of a multi-homed PE).
    pub max_addresses: usize,
    /// Most PEs registered over one connection (counted across every shard).
    pub max_pes_per_connection: usize,
    /// Most PEs in one pool.
    pub max_pes_per_pool: usize,
    /// Most PEs this registrar is home of (registered here or taken over).
    pub max_pes: usize,
    /// Most PEs learnt from peer registrars (counted apart from this registrar's own).
    pub max_peer_pes: usize,
    /// Most PEs in one ENRP Handle Table Response (a table transfer sends this many per
    /// round trip, or fewer when `max_message_size` is reached first: about 580 PEs of one
    /// IPv4 address each fit in the default 32 KiB).
    pub max_table_chunk: usize,
    /// Most pools in the whole registrar.
    pub max_pools: usize,
    /// Most open client connections (split evenly between shards).
    pub max_connections: usize,
    /// Unsent bytes queued for one connection before the registrar stops reading from it.
    pub max_send_queue: usize,
    /// Requests of one connection waiting for answers from other shards before the registrar
    /// stops reading from it (answers leave in request order, so later ones wait too).
    pub max_pending_requests: u32,
    /// Registrations refused for a resource limit (cause 0x6) one connection may receive in a
    /// row before it is closed (WIRE.md section 9: "cause 0x6, then close if it goes on").
    pub max_refusals: u32,
    /// PEs in a Handle Resolution Response when the request does not say (rsplib: 3).
    pub default_items: u32,
    /// Most PEs in a Handle Resolution Response whatever the request says.
    pub max_items: u32,
    /// MAX-BAD-PE-REPORT: unreachable reports before a PE is removed.
    pub max_bad_pe_reports: u32,
    /// Leading PEs of a response that count as selected for rotation and degradation.
    pub max_increment: u32,
    /// PEs (own and peers' together) the handlespace is sized for at start, split evenly
    /// between shards: up to that many, its PE index never grows (a growth holds its shard for
    /// the time it takes to rehash every PE, about 0.3 s at 10 million) and registering touches
    /// no fresh memory (the kernel's page faults on new PE slots). Takes the memory of that many
    /// PEs from the start, 154-161 bytes each (slot, index entry); 0 (the default) allocates as
    /// PEs come.
    pub expected_pes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 32 * 1024,
            max_pool_handle: 256,
            max_addresses: 16,
            max_pes_per_connection: 1024,
            max_pes_per_pool: 1 << 20,
            max_pes: 4 << 20,
            max_peer_pes: 16 << 20,
            max_table_chunk: 1024,
            max_pools: 1 << 20,
            max_connections: 10_000,
            max_send_queue: 1 << 20,
            max_pending_requests: 1024,
            max_refusals: 16,
            default_items: 3,
            max_items: 128,
            max_bad_pe_reports: 3,
            max_increment: 1,
            expected_pes: 0,
        }
    }
}

/// TLS (`docs/TLS.md`): ENRP between registrars over mutual TLS, and ASAP over TLS for pool
/// elements and pool users. Off unless `enrp` or `asap` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// This registrar's certificate chain, PEM, leaf first (for both listeners, and presented
    /// to the peers it dials).
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate`, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<PathBuf>,
    /// The mesh's CA certificates, PEM: peer registrars' certificates must chain to one.
    pub ca: Option<PathBuf>,
    /// ENRP over mutual TLS listens here (conventionally port 9902). When set, every peer is
    /// dialled over TLS (`peers` are then TLS addresses), this is the address announced to
    /// peers, and the plaintext ENRP listener stays closed unless `enrp_plain` is set.
    pub enrp: Option<SocketAddr>,
    /// With `enrp` set: keep accepting plaintext ENRP on the `enrp` address of the main section
    /// too (for peers that have no certificate yet).
    pub enrp_plain: bool,
    /// ASAP over TLS for pool elements and pool users listens here (conventionally port 3864),
    /// besides the plaintext `asap` listener.
    pub asap: Option<SocketAddr>,
}

impl Tls {
    /// Whether ENRP runs over TLS.
    pub fn enrp_enabled(&self) -> bool {
        self.enrp.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if (self.enrp.is_some() || self.asap.is_some()) && (self.certificate.is_none() || self.private_key.is_none()) {
            return bad("tls.enrp and tls.asap need tls.certificate and tls.private_key");
        }
        if self.enrp.is_some() && self.ca.is_none() {
            return bad("tls.enrp needs tls.ca (the CA that peer registrars' certificates chain to)");
        }
        if self.enrp_plain && self.enrp.is_none() {
            return bad("tls.enrp_plain needs tls.enrp");
        }
        Ok(())
    }
}

/// Optional UDP multicast Server Announce (WIRE.md section 6.1; off by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Announce {
    /// Whether to send Server Announces.
    pub enabled: bool,
    /// Multicast group and port.
    pub group: SocketAddr,
    /// Multicast TTL.
    pub ttl: u32,
    /// IPv4 address of the interface to send on (0.0.0.0: the system's choice).
    pub interface: std::net::Ipv4Addr,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            enabled: false,
            group: SocketAddr::from(([239, 0, 0, 50], 3863)),
            ttl: 1,
            interface: std::net::Ipv4Addr::UNSPECIFIED,
        }
    }
}

/// Optional ENRP peer discovery by multicast Presence (WIRE.md 1 and 7.2; off by default): the
/// registrar multicasts its Presence every `timers.peer_heartbeat` and dials every registrar
/// whose Presence it hears there, if that registrar's ENRP address is one it would admit as a
/// peer (loopback, `peers`, `security.enrp_allowlist`). The accepting side applies the same rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrpMulticast {
    /// Whether to send and listen for multicast Presence.
    pub enabled: bool,
    /// IPv4 multicast group and UDP port (rsplib's: 239.0.0.51:9901).
    pub group: SocketAddr,
    /// Multicast TTL (1: the local network only).
    pub ttl: u32,
    /// IPv4 address of the interface to send and listen on (0.0.0.0: the system's choice).
    pub interface: std::net::Ipv4Addr,
    /// Whether this host's own registrars hear each other's Presence (IP_MULTICAST_LOOP).
    pub loopback: bool,
}

impl Default for EnrpMulticast {
    fn default() -> Self {
        Self {
            enabled: false,
            group: SocketAddr::from(([239, 0, 0, 51], 9901)),
            ttl: 1,
            interface: std::net::Ipv4Addr::UNSPECIFIED,
            loopback: true,
        }
    }
}

/// How a registration's addresses are checked against the connection it came on
/// (docs/SECURITY.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationCheck {
    /// The connection's source address must be one of the PE's user transport addresses (and
    /// of its ASAP transport's, when it names one); the other legs of a multi-homed PE are free.
    #[default]
    Source,
    /// Every address the PE registers must lie inside `security.registration_allowlist`.
    Allowlist,
    /// No check (PEs behind NAT register addresses their connection does not come from).
    Off,
}

/// Who may register what and which registrars may join (docs/SECURITY.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// How a registration's addresses are checked (refusals get cause 0xA).
    pub registration_check: RegistrationCheck,
    /// Networks PEs may register addresses in, for `registration_check = "allowlist"`.
    pub registration_allowlist: Vec<ipnet::IpNet>,
    /// Networks ENRP peers may connect from, besides loopback and the configured peers'
    /// addresses.
    pub enrp_allowlist: Vec<ipnet::IpNet>,
}

/// The registrar's configuration (`rserpool registrar --config FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ASAP listen address (PEs and PUs connect here).
    pub asap: SocketAddr,
    /// ENRP listen address (peer registrars connect here).
    pub enrp: SocketAddr,
    /// This registrar's server id as hex (random when absent).
    pub id: Option<String>,
    /// ENRP peers to connect to.
    pub peers: Vec<SocketAddr>,
    /// TLS for ENRP and ASAP.
    pub tls: Tls,
    /// Tuning profile to load (cores, rings, buffers).
    pub profile: Option<PathBuf>,
    /// Number of shard threads (overrides the profile's core list length when set).
    pub cores: Option<usize>,
    /// I/O engine.
    pub engine: EngineChoice,
    /// Log filter (`tracing` syntax, e.g. `info` or `rserpool=debug`).
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); absent: none.
    pub metrics: Option<SocketAddr>,
    /// Protocol timers.
    pub timers: Timers,
    /// Resource limits.
    pub limits: Limits,
    /// Multicast Server Announce.
    pub announce: Announce,
    /// ENRP peer discovery by multicast Presence.
    pub enrp_multicast: EnrpMulticast,
    /// Registration checks and ENRP peer admission.
    pub security: Security,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            asap: SocketAddr::from(([127, 0, 0, 1], 3863)),
            enrp: SocketAddr::from(([127, 0, 0, 1], 9901)),
            id: None,
            peers: Vec::new(),
            tls: Tls::default(),
            profile: None,
            cores: None,
            engine: EngineChoice::Auto,
            log: "info".into(),
            log_format: LogFormat::Text,
            metrics: None,
            timers: Timers::default(),
            limits: Limits::default(),
            announce: Announce::default(),
            enrp_multicast: EnrpMulticast::default(),
            security: Security::default(),
        }
    }
}

impl Config {
    /// Reads a configuration file; keys not given keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that the types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        if !(64..=65535).contains(&l.max_message_size) {
            return bad(format!("limits.max_message_size = {} (must be 64..=65535)", l.max_message_size));
        }
        if l.max_pool_handle == 0 || l.max_pool_handle > l.max_message_size / 2 {
            return bad(format!("limits.max_pool_handle = {} (must be 1..=max_message_size/2)", l.max_pool_handle));
        }
        if l.default_items == 0 || l.max_items == 0 || l.default_items > l.max_items {
            return bad(format!(
                "limits.default_items = {} must be 1..=limits.max_items ({})",
                l.default_items, l.max_items
            ));
        }
        if l.max_bad_pe_reports == 0 {
            return bad("limits.max_bad_pe_reports must be at least 1".into());
        }
        // Sized at start, whatever registers: more than the registrar may ever hold is memory
        // held for nothing (and a typo of a few zeros could ask for all of the machine's).
        if l.expected_pes > l.max_pes.saturating_add(l.max_peer_pes) {
            return bad(format!(
                "limits.expected_pes = {} is more than limits.max_pes + limits.max_peer_pes ({})",
                l.expected_pes,
                l.max_pes.saturating_add(l.max_peer_pes)
            ));
        }
        for (name, v) in [
            ("limits.max_pes", l.max_pes),
            ("limits.max_peer_pes", l.max_peer_pes),
            ("limits.max_table_chunk", l.max_table_chunk),
            ("limits.max_pools", l.max_pools),
            ("limits.max_connections", l.max_connections),
            ("limits.max_pending_requests", l.max_pending_requests as usize),
            ("limits.max_refusals", l.max_refusals as usize),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        let t = &self.timers;
        if t.keep_alive_interval == 0 || t.keep_alive_timeout == 0 {
            return bad("timers.keep_alive_interval and timers.keep_alive_timeout must be positive".into());
        }
        if let Some(id) = &self.id {
            parse_server_id(id).map_err(ConfigError::Invalid)?;
        }
        if self.security.registration_check == RegistrationCheck::Allowlist
            && self.security.registration_allowlist.is_empty()
        {
            return bad("security.registration_check = \"allowlist\" needs security.registration_allowlist".into());
        }
        self.tls.validate()?;
        let m = &self.enrp_multicast;
        if m.enabled && !(m.group.ip().is_multicast() && m.group.is_ipv4() && m.group.port() != 0) {
            return bad(format!("enrp_multicast.group = {} (must be an IPv4 multicast group with a port)", m.group));
        }
        if m.enabled && m.ttl > 255 {
            return bad(format!("enrp_multicast.ttl = {} (must be 0..=255)", m.ttl));
        }
        if self.cores == Some(0) {
            return bad("cores must be at least 1".into());
        }
        Ok(())
    }

    /// The configured server id, or a fresh random non-zero one.
    pub fn server_id(&self) -> u32 {
        self.id.as_deref().and_then(|s| parse_server_id(s).ok()).unwrap_or_else(random_server_id)
    }
}

/// Parses a server id given as hex (`0x` optional); it must be non-zero.
pub fn parse_server_id(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    match u32::from_str_radix(t, 16) {
        Ok(0) => Err(format!("server id {s:?} must not be 0")),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("server id {s:?} is not a 32-bit hex number")),
    }
}

/// A random non-zero server id.
pub fn random_server_id() -> u32 {
    loop {
        let v = fastrand::u32(..);
        if v != 0 {
            return v;
        }
    }
}

/// A tuning profile (`tuning/*.toml`): how the engine uses the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// What the profile is for, shown in logs.
    pub description: String,
    /// Cores that run shards, one shard per entry. Empty = one shard per available core.
    pub shard_cores: Vec<usize>,
    /// Core left for a load generator on the same machine (informational; loadgen reads it).
    pub loadgen_cores: Vec<usize>,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Receive buffers per shard (provided buffer ring; a power of two).
    pub buffer_count: u16,
    /// Size of one receive buffer in bytes.
    pub buffer_size: u32,
    /// Most open connections (overrides `limits.max_connections` when set).
    pub max_connections: Option<usize>,
    /// Records each queue between two shards holds; beyond that, records wait in an overflow
    /// list and the connections whose requests fill it stop being read (none is dropped).
    pub cross_shard_queue: usize,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            description: "built-in default: one shard per core".into(),
            shard_cores: Vec::new(),
            loadgen_cores: Vec::new(),
            ring_entries: 1024,
            buffer_count: 1024,
            buffer_size: 16 * 1024,
            max_connections: None,
            cross_shard_queue: 1024,
        }
    }
}

impl Profile {
    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let p: Profile = toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        if !p.buffer_count.is_power_of_two() {
            return Err(ConfigError::Invalid(format!(
                "{}: buffer_count {} is not a power of two",
                path.display(),
                p.buffer_count
            )));
        }
        if p.buffer_size < 512 {
            return Err(ConfigError::Invalid(format!("{}: buffer_size {} < 512", path.display(), p.buffer_size)));
        }
        if !(1..=1 << 20).contains(&p.cross_shard_queue) {
            return Err(ConfigError::Invalid(format!(
                "{}: cross_shard_queue {} (must be 1..=1048576 records)",
                path.display(),
                p.cross_shard_queue
            )));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }

    #[test]
    fn partial_files_keep_defaults_and_typos_are_errors() {
        let c: Config = toml::from_str("asap = \"0.0.0.0:3863\"\n[timers]\nkeep_alive_interval = 500\n").unwrap();
        assert_eq!(c.asap.port(), 3863);
        assert_eq!(c.timers.keep_alive_interval, 500);
        assert_eq!(c.timers.keep_alive_timeout, Timers::default().keep_alive_timeout);
        assert!(toml::from_str::<Config>("[timers]\nkeep_alive_intervall = 5\n").is_err());
    }

    #[test]
    fn metrics_and_log_format_are_off_and_text_by_default() {
        let c = Config::default();
        assert_eq!((c.metrics, c.log_format), (None, LogFormat::Text));
        let c: Config = toml::from_str("metrics = \"127.0.0.1:9100\"\nlog_format = \"json\"\n").unwrap();
        assert_eq!(c.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 9100))));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<Config>("log_format = \"xml\"\n").is_err());
    }

    #[test]
    fn server_ids_parse_as_hex_and_zero_is_refused() {
        assert_eq!(parse_server_id("0x11223344"), Ok(0x1122_3344));
        assert_eq!(parse_server_id("5a6b7c8d"), Ok(0x5a6b_7c8d));
        assert!(parse_server_id("0").is_err());
        assert!(parse_server_id("xyz").is_err());
        assert_ne!(random_server_id(), 0);
    }

    #[test]
    fn out_of_range_limits_are_refused() {
        let mut c = Config::default();
        c.limits.max_message_size = 70_000;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.default_items = 200;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.expected_pes = c.limits.max_pes + c.limits.max_peer_pes;
        c.validate().unwrap();
        c.limits.expected_pes += 1;
        assert!(c.validate().unwrap_err().to_string().contains("limits.expected_pes"));
    }

    #[test]
    fn enrp_multicast_is_off_by_default_and_needs_a_multicast_group() {
        let c = Config::default();
        assert!(!c.enrp_multicast.enabled);
        assert_eq!(c.enrp_multicast.group, SocketAddr::from(([239, 0, 0, 51], 9901)));
        let c: Config = toml::from_str("[enrp_multicast]\nenabled = true\nttl = 4\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.enrp_multicast.ttl, 4);
        let mut bad = c.clone();
        bad.enrp_multicast.group = SocketAddr::from(([10, 0, 0, 1], 9901));
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.enrp_multicast.ttl = 256;
        assert!(bad.validate().is_err());
    }
}
