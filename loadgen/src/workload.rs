//! The requests of a run, encoded once before it starts: pool handles, Handle Resolutions,
//! Registrations of the static PEs and of the churn slots, RESP GETs of the same keys, and the
//! echo request. PE identifiers encode which pool a PE belongs to, so a response is checked
//! without any lookup but arithmetic.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rserpool::wire::asap::{self, MessageType};
use rserpool::wire::{
    MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol, TransportRepr, Writer,
};
use serde::Serialize;

use crate::sampler::Sampler;

/// The server a run talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The rserpool registrar (ASAP over TCP).
    Registrar,
    /// A redis-server, with RESP GET of keys named like the pools.
    Redis,
    /// The bare io_uring echo server (`loadgen echo-server`), same message sizes.
    Echo,
}

impl Target {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Registrar => "registrar",
            Self::Redis => "redis",
            Self::Echo => "echo",
        }
    }
}

/// What the requests of a registrar run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Handle Resolutions only (the pools and PEs are registered first).
    Resolve,
    /// Registration churn: register, re-register, deregister PEs of each connection.
    Churn,
    /// Resolutions and churn mixed at `--resolve-share`.
    Mix,
}

/// Everything that defines the requests of a run (part of every JSON result).
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSpec {
    /// Kind of requests.
    pub workload: WorkloadKind,
    /// Number of pools.
    pub pools: usize,
    /// Static PEs per pool (registered before the run).
    pub pool_size: usize,
    /// Handle Resolution Option (PEs wanted per answer); None: the registrar's default.
    pub items: Option<u32>,
    /// The registrar's default number of PEs per answer (used when `items` is None).
    pub default_items: u32,
    /// Zipf exponent of pool popularity; None: uniform.
    pub zipf: Option<f64>,
    /// Mix only: share of requests that are resolutions (0..1).
    pub resolve_share: f64,
    /// Churn PE slots per connection.
    pub churn_slots: usize,
    /// Re-registrations of a churn PE between its registration and its deregistration.
    pub reregistrations: u32,
    /// Registration life of every PE, milliseconds.
    pub lifetime_ms: i32,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            workload: WorkloadKind::Resolve,
            pools: 1000,
            pool_size: 10,
            items: None,
            default_items: 3,
            zipf: None,
            resolve_share: 0.9,
            churn_slots: 64,
            reregistrations: 1,
            lifetime_ms: 600_000,
            seed: 1,
        }
    }
}

/// High bit of a churn PE's identifier; the rest is `(connection << 12) | slot`.
pub const CHURN_BIT: u32 = 0x8000_0000;
/// Most churn slots per connection.
pub const MAX_CHURN_SLOTS: usize = 4096;

/// Pre-encoded requests of a run, shared read-only by every client thread.
#[derive(Debug)]
pub struct Plan {
    /// The specification.
    pub spec: WorkloadSpec,
    /// Pool choice.
    pub sampler: Sampler,
    handle_width: usize,
    handles: Vec<u8>,
    resolve: Vec<u8>,
    resolve_len: usize,
    get: Vec<u8>,
    get_len: usize,
    /// Bytes of one echo request.
    pub echo_request: Vec<u8>,
    /// Bytes of one echo reply.
    pub echo_reply_size: usize,
    /// RESP value size (so that a GET reply has the echo reply's size).
    pub redis_value_size: usize,
    churn_pool: Vec<u32>,
    connections: usize,
}

/// Digits of `n`.
fn digits(n: usize) -> usize {
    n.max(1).ilog10() as usize + 1
}

/// The pool handle of pool `i` with `width` digits: `pool-00042`.
pub fn pool_handle(i: usize, width: usize) -> String {
    format!("pool-{i:0width$}")
}

/// The value size `n` for which a RESP bulk reply `$n\r\n<n bytes>\r\n` has `reply` bytes.
pub fn resp_value_size(reply: usize) -> usize {
    let mut n = reply.saturating_sub(6);
    while n > 0 && n + digits(n) + 5 > reply {
        n -= 1;
    }
    n
}

/// A RESP command from its words.
pub fn resp_command(words: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        v.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        v.extend_from_slice(w);
        v.extend_from_slice(b"\r\n");
    }
    v
}

impl Plan {
    /// Encodes the requests of `spec` for `connections` client connections in all. The echo
    /// and Redis sizes default to the registrar's Handle Resolution and its expected Response;
    /// `sizes` overrides them with measured `(request, reply)` sizes.
    pub fn new(spec: WorkloadSpec, connections: usize, sizes: Option<(usize, usize)>) -> Arc<Self> {
        let pools = spec.pools.max(1);
        let handle_width = digits(pools.saturating_sub(1)).max(5);
        let mut handles = Vec::new();
        let mut resolve = Vec::new();
        let mut get = Vec::new();
        for i in 0..pools {
            let h = pool_handle(i, handle_width);
            handles.extend_from_slice(h.as_bytes());
            let _ = asap::emit_handle_resolution(&mut Writer::new(&mut resolve), h.as_bytes(), spec.items);
            get.extend_from_slice(&resp_command(&[b"GET", h.as_bytes()]));
        }
        let resolve_len = resolve.len() / pools;
        let get_len = get.len() / pools;
        let sampler = match spec.zipf {
            Some(s) => Sampler::zipf(pools, s),
            None => Sampler::uniform(pools),
        };
        let slots = spec.churn_slots.clamp(1, MAX_CHURN_SLOTS);
        let mut rng = fastrand::Rng::with_seed(spec.seed ^ 0x005e_edc4_u64);
        let churn_pool = (0..connections * slots).map(|_| sampler.sample(&mut rng) as u32).collect();
        let mut plan = Self {
            spec: WorkloadSpec { pools, churn_slots: slots, ..spec },
            sampler,
            handle_width,
            handles,
            resolve,
            resolve_len,
            get,
            get_len,
            echo_request: Vec::new(),
            echo_reply_size: 0,
            redis_value_size: 0,
            churn_pool,
            connections,
        };
        let (req, reply) = sizes.unwrap_or((resolve_len, plan.expected_response_size()));
        let mut echo = plan.resolve_request(0).to_vec();
        echo.resize(req.max(1), 0);
        plan.echo_request = echo;
        plan.echo_reply_size = reply.max(1);
        plan.redis_value_size = resp_value_size(reply);
        Arc::new(plan)
    }

    /// Number of pools.
    pub fn pools(&self) -> usize {
        self.spec.pools
    }

    /// Pool handle of pool `i`.
    #[inline]
    pub fn handle(&self, i: usize) -> &[u8] {
        let n = self.handle_width + 5;
        &self.handles[i * n..(i + 1) * n]
    }

    /// The pool a handle names, if it is one of ours.
    pub fn pool_of_handle(&self, h: &[u8]) -> Option<usize> {
        let digits = h.strip_prefix(b"pool-")?;
        if digits.len() != self.handle_width || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let i = digits.iter().fold(0usize, |a, d| a * 10 + usize::from(d - b'0'));
        (i < self.spec.pools).then_some(i)
    }

    /// The Handle Resolution of pool `i`.
    #[inline]
    pub fn resolve_request(&self, i: usize) -> &[u8] {
        &self.resolve[i * self.resolve_len..(i + 1) * self.resolve_len]
    }

    /// The RESP GET of key `i`.
    #[inline]
    pub fn get_request(&self, i: usize) -> &[u8] {
        &self.get[i * self.get_len..(i + 1) * self.get_len]
    }

    /// The identifier of static PE `j` of pool `i`.
    pub fn static_pe_id(&self, pool: usize, j: usize) -> u32 {
        (1 + pool * self.spec.pool_size + j) as u32
    }

    /// The identifier of churn slot `slot` of connection `conn` (global connection index).
    pub fn churn_pe_id(&self, conn: usize, slot: usize) -> u32 {
        CHURN_BIT | ((conn as u32) << 12) | slot as u32
    }

    /// The pool of churn slot `slot` of connection `conn`.
    pub fn churn_pool(&self, conn: usize, slot: usize) -> usize {
        self.churn_pool[conn * self.spec.churn_slots + slot] as usize
    }

    /// The pool a PE identifier belongs to, if it is one this plan registers.
    pub fn pool_of_pe(&self, id: u32) -> Option<usize> {
        if id & CHURN_BIT != 0 {
            let rest = id & !CHURN_BIT;
            let (conn, slot) = ((rest >> 12) as usize, (rest & 0xfff) as usize);
            (conn < self.connections && slot < self.spec.churn_slots).then(|| self.churn_pool(conn, slot))
        } else {
            let k = (id as usize).checked_sub(1)?;
            let size = self.spec.pool_size.max(1);
            (self.spec.pool_size > 0 && k < self.spec.pools * size).then_some(k / size)
        }
    }

    /// PEs a resolution answer must carry when only static PEs are registered.
    pub fn expected_items(&self) -> usize {
        let asked = match self.spec.items {
            Some(0) | None => self.spec.default_items as usize,
            Some(n) => n as usize,
        };
        asked.min(self.spec.pool_size)
    }

    fn pool_element(&self, pe_id: u32, port: u16) -> PoolElementRepr {
        PoolElementRepr {
            pe_id,
            home_registrar: 0,
            registration_life: self.spec.lifetime_ms,
            user_transport: TransportRepr::new(TransportProtocol::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            policy: PolicyRepr::Known(Policy::RoundRobin),
            asap_transport: None,
        }
    }

    /// A Registration of PE `pe_id` in pool `pool`.
    pub fn registration(&self, pool: usize, pe_id: u32) -> Vec<u8> {
        let port = 20_000 + (pe_id % 40_000) as u16;
        let m = MessageRepr::new(
            Protocol::Asap,
            MessageType::Registration as u8,
            0,
            vec![
                ParamRepr::PoolHandle(self.handle(pool).to_vec()),
                ParamRepr::PoolElement(self.pool_element(pe_id, port)),
            ],
        );
        m.to_bytes().unwrap_or_default()
    }

    /// A Deregistration of PE `pe_id` from pool `pool`.
    pub fn deregistration(&self, pool: usize, pe_id: u32) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = asap::emit_handle_and_id(
            &mut Writer::new(&mut v),
            MessageType::Deregistration,
            0,
            self.handle(pool),
            Some(pe_id),
            None,
        );
        v
    }

    /// The size of a Handle Resolution Response with the expected number of static PEs, as our
    /// encoder writes it (the registrar's real answer is measured by `compare`).
    pub fn expected_response_size(&self) -> usize {
        let mut params = vec![
            ParamRepr::PoolHandle(self.handle(0).to_vec()),
            ParamRepr::Policy(PolicyRepr::Known(Policy::RoundRobin)),
        ];
        for j in 0..self.expected_items().max(1) {
            params.push(ParamRepr::PoolElement(self.pool_element(self.static_pe_id(0, j), 20_000)));
        }
        let m = MessageRepr::new(Protocol::Asap, MessageType::HandleResolutionResponse as u8, 0, params);
        m.to_bytes().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Arc<Plan> {
        Plan::new(WorkloadSpec { pools: 200, pool_size: 10, ..WorkloadSpec::default() }, 4, None)
    }

    #[test]
    fn requests_parse_and_name_their_pool() {
        let p = plan();
        for i in [0, 7, 199] {
            let m = asap::parse(p.resolve_request(i)).unwrap();
            match m.body() {
                asap::Body::HandleResolution { pool_handle, .. } => {
                    assert_eq!(*pool_handle, p.handle(i));
                    assert_eq!(p.pool_of_handle(pool_handle), Some(i));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(p.get_request(i), resp_command(&[b"GET", p.handle(i)]).as_slice());
        }
        assert_eq!(p.handle(42), b"pool-00042");
        assert_eq!(p.resolve_request(0).len(), 20);
        assert_eq!(p.pool_of_handle(b"pool-00200"), None);
        assert_eq!(p.pool_of_handle(b"pool-0042"), None);
        let reg = p.registration(3, p.static_pe_id(3, 9));
        assert!(matches!(asap::parse(&reg).unwrap().body(), asap::Body::Registration { .. }));
        let dereg = p.deregistration(3, 77);
        assert!(matches!(asap::parse(&dereg).unwrap().body(), asap::Body::Deregistration { pe_id: 77, .. }));
    }

    #[test]
    fn pe_identifiers_map_back_to_their_pool() {
        let p = plan();
        for pool in [0, 1, 199] {
            for j in [0, 9] {
                assert_eq!(p.pool_of_pe(p.static_pe_id(pool, j)), Some(pool));
            }
        }
        assert_eq!(p.pool_of_pe(0), None);
        assert_eq!(p.pool_of_pe(p.static_pe_id(199, 9) + 1), None);
        for conn in 0..4 {
            for slot in [0, 63] {
                assert_eq!(p.pool_of_pe(p.churn_pe_id(conn, slot)), Some(p.churn_pool(conn, slot)));
            }
        }
        assert_eq!(p.pool_of_pe(p.churn_pe_id(4, 0)), None);
    }

    #[test]
    fn sizes_of_the_references_match() {
        let p = plan();
        assert_eq!(p.echo_request.len(), 20);
        assert_eq!(p.expected_items(), 3);
        let reply = p.echo_reply_size;
        let v = p.redis_value_size;
        assert_eq!(v + digits(v) + 5, reply);
        let q = Plan::new(WorkloadSpec::default(), 1, Some((33, 150)));
        assert_eq!((q.echo_request.len(), q.echo_reply_size), (33, 150));
        assert_eq!(resp_value_size(150), 142);
        assert_eq!(resp_value_size(14), 8);
    }
}
