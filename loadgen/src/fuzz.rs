//! Live fuzzing of a running registrar: random and grammar-aware mutated messages over many
//! real TCP connections, while well-formed clients register, resolve and deregister on their
//! own connections and check every answer's content.
//!
//! The mutator works on a parameter tree (ASAP and ENRP parameters are TLVs, and Pool Element,
//! transports, Server Information and Operation Error nest further TLVs), so a mutation can flip
//! one nested length, drop, duplicate or reorder parameters, change their types, blow a value up
//! to the largest message, splice in a parameter of another message, and then either fix every
//! enclosing length (the damage reaches the parser) or not (the framer has to cope). A share of
//! the traffic is plain random bytes, and stray bytes are put between messages.
//!
//! This file depends only on `std`, `rserpool`, `fastrand` and `socket2`: the integration test
//! `tests/live_fuzz.rs` of the `rserpool` crate includes it with `#[path]` and drives it against
//! a registrar process started by the test.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rserpool::client::blocking::AsapStream;
use rserpool::wire::asap::{self, Body, MessageType, Resolution};
use rserpool::wire::{
    Frame, Framer, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol,
    TransportRepr, Writer,
};

/// What a live fuzz run does.
#[derive(Clone, Debug)]
pub struct FuzzConfig {
    /// The registrar's ASAP address.
    pub addr: SocketAddr,
    /// Mutated messages to send in all (the run stops when they are sent).
    pub messages: u64,
    /// Seed of every random choice (each fuzz thread and checker derives its own from it).
    pub seed: u64,
    /// Threads sending mutated messages, each over one connection at a time.
    pub fuzzers: usize,
    /// Well-formed clients, each on its own connection and pool.
    pub checkers: usize,
    /// Messages the mutations start from: the shared vectors (see [`load_vectors`]) and
    /// well-formed messages made here ([`generated_seeds`]).
    pub seeds: Vec<Seed>,
    /// How long a well-formed client waits for an answer before it counts a failure.
    pub answer_timeout: Duration,
    /// Print progress every this many messages (0: never).
    pub progress_every: u64,
}

/// A message the mutator starts from.
#[derive(Clone, Debug)]
pub struct Seed {
    /// Where it came from (a vector's file name, or `gen:...`).
    pub name: String,
    /// The message.
    pub bytes: Vec<u8>,
    /// Offset of its first parameter: 4 for ASAP, 12 for ENRP (sender and receiver ids).
    pub params_at: usize,
}

/// What a live fuzz run saw.
#[derive(Clone, Debug, Default)]
pub struct FuzzReport {
    /// Mutated (or random) messages written in full.
    pub messages: u64,
    /// Bytes written by the fuzzers (stray bytes included).
    pub bytes: u64,
    /// Messages that do not frame as one whole message (bad length, cut short, oversize), each
    /// sent last on its connection: the registrar answers and closes the stream.
    pub stream_breaking: u64,
    /// Fuzz connections opened.
    pub connections: u64,
    /// Fuzz connections the registrar closed (or reset) before the fuzzer was done with them.
    pub closed_by_registrar: u64,
    /// Fuzz connections that could not be opened.
    pub connect_failures: u64,
    /// Bytes the registrar sent back on fuzz connections.
    pub answer_bytes: u64,
    /// Operations of the well-formed clients answered correctly.
    pub checks_ok: u64,
    /// Operations answered wrongly, late or not at all.
    pub checks_failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Reads every `.hex` vector in `dir` and in `dir/bad` (ASAP or ENRP by the file name's prefix).
pub fn load_vectors(dir: &Path) -> std::io::Result<Vec<Seed>> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("bad")] {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().and_then(|e| e.to_str()) != Some("hex") {
                continue;
            }
            let text = std::fs::read_to_string(&p)?;
            let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
            let bytes = digits
                .chunks_exact(2)
                .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
                .collect::<Vec<u8>>();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let params_at = if name.starts_with("enrp") { 12 } else { 4 };
            out.push(Seed { name, bytes, params_at });
        }
    }
    Ok(out)
}

fn tcp(ip: [u8; 4], port: u16) -> TransportRepr {
    TransportRepr::new(TransportProtocol::Tcp, std::net::IpAddr::from(ip), port)
}

/// A PE on 127.0.0.1:`port` over TCP with `policy` and a registration life of `life` ms.
pub fn pe_repr(pe_id: u32, port: u16, policy: Policy, life: i32) -> PoolElementRepr {
    PoolElementRepr {
        pe_id,
        home_registrar: 0,
        registration_life: life,
        user_transport: tcp([127, 0, 0, 1], port),
        policy: PolicyRepr::Known(policy),
        asap_transport: None,
    }
}

/// An ASAP Registration of `pe` in pool `handle`.
pub fn registration(handle: &[u8], pe: PoolElementRepr) -> Vec<u8> {
    let params = vec![ParamRepr::PoolHandle(handle.to_vec()), ParamRepr::PoolElement(pe)];
    MessageRepr::new(Protocol::Asap, MessageType::Registration as u8, 0, params).to_bytes().unwrap_or_default()
}

/// An ASAP message of type `t` with a Pool Handle and a PE Identifier.
pub fn handle_and_id(t: MessageType, handle: &[u8], pe_id: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = asap::emit_handle_and_id(&mut Writer::new(&mut buf), t, 0, handle, Some(pe_id), None);
    buf
}

/// An ASAP Handle Resolution of pool `handle`, asking for `items` PEs when given.
pub fn resolution(handle: &[u8], items: Option<u32>) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = asap::emit_handle_resolution(&mut Writer::new(&mut buf), handle, items);
    buf
}

/// Well-formed ASAP messages of every kind a client sends, on the fuzzers' own pool handles
/// (`fz-...`), so that mutations start from registrations, deregistrations, resolutions,
/// keep-alive acks and unreachable reports as the registrar sees them.
pub fn generated_seeds() -> Vec<Seed> {
    let policies = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin { weight: 2 },
        Policy::Random,
        Policy::WeightedRandom { weight: 3 },
        Policy::Priority { priority: 1 },
        Policy::LeastUsed { load: 1000 },
        Policy::LeastUsedDegradation { load: 1000, degradation: 10 },
        Policy::PriorityLeastUsed { load: 1000, degradation: 10 },
        Policy::RandomizedLeastUsed { load: 1000 },
    ];
    let mut out = Vec::new();
    let mut push = |name: String, bytes: Vec<u8>| {
        if !bytes.is_empty() {
            out.push(Seed { name, bytes, params_at: 4 });
        }
    };
    for (i, p) in policies.iter().enumerate() {
        let h = format!("fz-{i}");
        push(format!("gen:registration-{i}"), registration(h.as_bytes(), pe_repr(0x100 + i as u32, 7000, *p, 30_000)));
    }
    let mut multi = pe_repr(0x200, 7001, Policy::RoundRobin, 30_000);
    multi.user_transport = TransportRepr::new(TransportProtocol::Sctp, [127, 0, 0, 1].into(), 7001);
    multi.user_transport.addresses.push("127.0.0.2".parse().unwrap_or([127, 0, 0, 2].into()));
    multi.asap_transport = Some(tcp([127, 0, 0, 1], 7002));
    push("gen:registration-multi".into(), registration(b"fz-m", multi));
    push("gen:deregistration".into(), handle_and_id(MessageType::Deregistration, b"fz-0", 0x100));
    push("gen:keep-alive-ack".into(), handle_and_id(MessageType::EndpointKeepAliveAck, b"fz-0", 0x100));
    push("gen:unreachable".into(), handle_and_id(MessageType::EndpointUnreachable, b"fz-1", 0x101));
    push("gen:resolution".into(), resolution(b"fz-0", None));
    push("gen:resolution-items".into(), resolution(b"fz-2", Some(5)));
    out
}

// ---------------------------------------------------------------------------------------------
// The parameter tree and its mutations.

/// Bytes before the nested parameters of a container parameter, by type; `None` for a leaf.
fn container_prefix(t: u16) -> Option<usize> {
    match t & 0x3fff {
        0x0003 => Some(8),
        0x0004..=0x0007 => Some(4),
        0x000A => Some(12),
        0x000B => Some(4),
        0x000C => Some(0),
        _ => None,
    }
}

/// One TLV: a leaf (value bytes) or a container (fixed prefix, then nested TLVs).
#[derive(Clone, Debug)]
struct Node {
    t: u16,
    prefix: Vec<u8>,
    children: Vec<Node>,
    leaf: Vec<u8>,
    /// Written instead of the true length (a mutation).
    len_override: Option<u16>,
    /// Padding written after it (normally to a multiple of 4).
    pad_override: Option<usize>,
}

/// A message as a header, the bytes before its parameters, and its parameters.
#[derive(Clone, Debug)]
struct Tree {
    header: [u8; 4],
    extra: Vec<u8>,
    params: Vec<Node>,
    /// Bytes after the last parameter that did not parse as one (kept as they were).
    tail: Vec<u8>,
    len_override: Option<u16>,
}

fn parse_nodes(b: &[u8]) -> (Vec<Node>, Vec<u8>) {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        let t = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if len < 4 || i + len > b.len() {
            break;
        }
        let value = &b[i + 4..i + len];
        let node = match container_prefix(t) {
            Some(p) if value.len() >= p => {
                let (children, rest) = parse_nodes(&value[p..]);
                if rest.is_empty() {
                    Node {
                        t,
                        prefix: value[..p].to_vec(),
                        children,
                        leaf: Vec::new(),
                        len_override: None,
                        pad_override: None,
                    }
                } else {
                    Node {
                        t,
                        prefix: Vec::new(),
                        children: Vec::new(),
                        leaf: value.to_vec(),
                        len_override: None,
                        pad_override: None,
                    }
                }
            }
            _ => Node {
                t,
                prefix: Vec::new(),
                children: Vec::new(),
                leaf: value.to_vec(),
                len_override: None,
                pad_override: None,
            },
        };
        out.push(node);
        i += len.div_ceil(4) * 4;
    }
    let rest = if i < b.len() { b[i.min(b.len())..].to_vec() } else { Vec::new() };
    (out, rest)
}

impl Tree {
    fn parse(seed: &Seed) -> Self {
        let b = &seed.bytes;
        let mut header = [0u8; 4];
        for (d, s) in header.iter_mut().zip(b.iter()) {
            *d = *s;
        }
        let at = seed.params_at.min(b.len()).max(4.min(b.len()));
        let extra = b.get(4..at).unwrap_or_default().to_vec();
        let (params, tail) = parse_nodes(b.get(at..).unwrap_or_default());
        Self { header, extra, params, tail, len_override: None }
    }

    fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.extra);
        for n in &self.params {
            emit_node(n, &mut out);
        }
        out.extend_from_slice(&self.tail);
        let len = self.len_override.unwrap_or(u16::try_from(out.len()).unwrap_or(u16::MAX));
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Every node, as a path of child indexes from the top level.
    fn paths(&self) -> Vec<Vec<usize>> {
        fn walk(nodes: &[Node], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            for (i, n) in nodes.iter().enumerate() {
                prefix.push(i);
                out.push(prefix.clone());
                walk(&n.children, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(&self.params, &mut Vec::new(), &mut out);
        out
    }

    /// The list holding the node at `path`, and its index there.
    fn siblings(&mut self, path: &[usize]) -> (&mut Vec<Node>, usize) {
        let (last, parents) = path.split_last().unwrap_or((&0, &[]));
        let mut list = &mut self.params;
        for &i in parents {
            list = &mut list[i].children;
        }
        (list, *last)
    }
}

fn emit_node(n: &Node, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&n.t.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&n.prefix);
    for c in &n.children {
        emit_node(c, out);
    }
    out.extend_from_slice(&n.leaf);
    let true_len = out.len() - start;
    let len = n.len_override.unwrap_or(u16::try_from(true_len).unwrap_or(u16::MAX));
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    let pad = n.pad_override.unwrap_or((4 - true_len % 4) % 4);
    out.extend(std::iter::repeat_n(0u8, pad));
}

const KNOWN_TYPES: [u16; 17] = [
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x000E,
    0x000F, 0x803F, 0x0000,
];

fn interesting_u16(rng: &mut fastrand::Rng, true_len: usize) -> u16 {
    let t = u16::try_from(true_len).unwrap_or(u16::MAX);
    match rng.u8(..10) {
        0 => 0,
        1 => rng.u16(1..4),
        2 => u16::MAX,
        3 => t.wrapping_add(rng.u16(1..9)),
        4 => t.saturating_sub(rng.u16(1..9)),
        5 => 0x8000,
        6 => t.wrapping_add(4),
        7 => t.wrapping_sub(4),
        _ => rng.u16(..),
    }
}

fn random_bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// The mutator: seeds in, one mutated message per call.
pub struct Mutator {
    seeds: Vec<Tree>,
    raw: Vec<Vec<u8>>,
    rng: fastrand::Rng,
    /// Largest message the registrar accepts: oversize values go up to and past it.
    max_message: usize,
}

impl Mutator {
    /// A mutator over `seeds` with its own random sequence.
    pub fn new(seeds: &[Seed], seed: u64, max_message: usize) -> Self {
        Self {
            seeds: seeds.iter().map(Tree::parse).collect(),
            raw: seeds.iter().map(|s| s.bytes.clone()).collect(),
            rng: fastrand::Rng::with_seed(seed),
            max_message,
        }
    }

    /// Bytes that do not start a message: put between messages.
    pub fn stray(&mut self) -> Vec<u8> {
        let n = self.rng.usize(1..16);
        random_bytes(&mut self.rng, n)
    }

    /// One message: random bytes (about 5%), a byte-level mutation of a seed (about 15%), or
    /// one to four tree mutations of a seed with lengths fixed up (mostly) or not.
    pub fn next_message(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        if self.seeds.is_empty() || rng.u8(..100) < 5 {
            let n = rng.usize(0..300);
            let mut v = random_bytes(rng, n);
            if n >= 4 && rng.bool() {
                // A header that frames: the body is what is random.
                v[0] = rng.u8(..16);
                v[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            }
            return v;
        }
        let k = rng.usize(..self.seeds.len());
        if rng.u8(..100) < 15 {
            let mut v = self.raw[k].clone();
            byte_mutate(rng, &mut v);
            return v;
        }
        let mut tree = self.seeds[k].clone();
        for _ in 0..rng.usize(1..5) {
            self.tree_mutate(&mut tree);
        }
        let mut v = tree.emit();
        if self.rng.u8(..100) < 10 {
            byte_mutate(&mut self.rng, &mut v);
        }
        v
    }

    fn tree_mutate(&mut self, tree: &mut Tree) {
        let paths = tree.paths();
        let choice = self.rng.u8(..14);
        let rng = &mut self.rng;
        if paths.is_empty() || choice >= 12 {
            // Message level: its type, flags or length.
            match rng.u8(..4) {
                0 => tree.header[0] = rng.u8(..),
                1 => tree.header[0] = rng.u8(..16),
                2 => tree.header[1] = rng.u8(..),
                _ => {
                    let t = tree.emit().len();
                    tree.len_override = Some(interesting_u16(rng, t));
                }
            }
            return;
        }
        let path = paths[rng.usize(..paths.len())].clone();
        let donor = if choice == 10 { self.donor_node() } else { None };
        let rng = &mut self.rng;
        let max_message = self.max_message;
        let (list, i) = tree.siblings(&path);
        match choice {
            // A flipped length.
            0 | 1 => {
                let mut tmp = Vec::new();
                emit_node(&list[i], &mut tmp);
                list[i].len_override = Some(interesting_u16(rng, tmp.len()));
            }
            // Truncated: the parameter, or every one from it on.
            2 => {
                if rng.bool() {
                    list.remove(i);
                } else {
                    list.truncate(i);
                }
            }
            // Duplicated (up to many times).
            3 => {
                let n = if rng.u8(..8) == 0 { rng.usize(2..200) } else { 1 };
                let node = list[i].clone();
                for _ in 0..n {
                    list.insert(i, node.clone());
                }
            }
            // Reordered.
            4 => {
                let j = rng.usize(..list.len());
                list.swap(i, j);
                if rng.bool() {
                    rng.shuffle(list);
                }
            }
            // A bad type: unknown (each action bit pattern), another known one, or random.
            5 => {
                list[i].t = match rng.u8(..4) {
                    0 => KNOWN_TYPES[rng.usize(..KNOWN_TYPES.len())],
                    1 => (u16::from(rng.u8(..4)) << 14) | rng.u16(0x10..0x3fff),
                    2 => list[i].t ^ (1 << rng.u32(..16)),
                    _ => rng.u16(..),
                };
            }
            // An oversize value: near, at and past the largest message.
            6 => {
                let n = match rng.u8(..8) {
                    0..=3 => rng.usize(256..4096),
                    4 | 5 => max_message.saturating_sub(rng.usize(16..128)),
                    6 => max_message + rng.usize(0..64),
                    _ => rng.usize(60_000..65_600),
                };
                let node = &mut list[i];
                node.children.clear();
                node.prefix.clear();
                node.leaf = if rng.bool() { vec![b'A'; n] } else { random_bytes(rng, n) };
            }
            // The value's bytes: a flipped bit, an interesting word, truncated or extended.
            7..=9 => {
                let node = &mut list[i];
                let target = if node.leaf.is_empty() { &mut node.prefix } else { &mut node.leaf };
                match rng.u8(..5) {
                    0 if !target.is_empty() => {
                        let k = rng.usize(..target.len());
                        target[k] ^= 1 << rng.u32(..8);
                    }
                    1 if target.len() >= 4 => {
                        let k = rng.usize(..=target.len() - 4) & !3;
                        let w: u32 = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, rng.u32(..)][rng.usize(..6)];
                        target[k..k + 4].copy_from_slice(&w.to_be_bytes());
                    }
                    2 if !target.is_empty() => {
                        let n = rng.usize(..target.len());
                        target.truncate(n);
                    }
                    3 => {
                        let n = rng.usize(1..32);
                        target.extend(random_bytes(rng, n));
                    }
                    _ => node.pad_override = Some(rng.usize(..8)),
                }
            }
            // A parameter of another message spliced in.
            10 => {
                if let Some(d) = donor {
                    list.insert(i, d);
                }
            }
            // Emptied, or nested into itself.
            _ => {
                if rng.bool() {
                    let node = &mut list[i];
                    node.children.clear();
                    node.leaf.clear();
                    node.prefix.clear();
                } else {
                    let inner = list[i].clone();
                    list[i].children.push(inner);
                }
            }
        }
    }

    fn donor_node(&mut self) -> Option<Node> {
        let k = self.rng.usize(..self.seeds.len());
        let paths = self.seeds[k].paths();
        if paths.is_empty() {
            return None;
        }
        let path = paths[self.rng.usize(..paths.len())].clone();
        let mut tree = self.seeds[k].clone();
        let (list, i) = tree.siblings(&path);
        Some(list[i].clone())
    }
}

fn byte_mutate(rng: &mut fastrand::Rng, v: &mut Vec<u8>) {
    for _ in 0..rng.usize(1..5) {
        match rng.u8(..5) {
            0 if !v.is_empty() => {
                let k = rng.usize(..v.len());
                v[k] ^= 1 << rng.u32(..8);
            }
            1 if !v.is_empty() => {
                let k = rng.usize(..v.len());
                v[k] = rng.u8(..);
            }
            2 if !v.is_empty() => {
                let n = rng.usize(..v.len());
                v.truncate(n);
            }
            3 => {
                let k = rng.usize(..=v.len());
                let n = rng.usize(1..8);
                let ins = random_bytes(rng, n);
                v.splice(k..k, ins);
            }
            _ if v.len() > 1 => {
                let k = rng.usize(..v.len() - 1);
                v.remove(k);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzz connections.

struct Shared {
    sent: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    closed: AtomicU64,
    connect_failures: AtomicU64,
    answer_bytes: AtomicU64,
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    done: AtomicBool,
    breaking: AtomicU64,
}

impl Shared {
    fn fail(&self, what: String) {
        self.checks_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            if f.len() < 20 {
                f.push(what);
            }
        }
    }
}

/// Reads whatever the registrar sent; `false` once the connection is closed or broken.
fn drain(s: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> bool {
    loop {
        match s.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                shared.answer_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Writes `bytes` in pieces of random size, reading answers in between so that the
/// registrar's backpressure never stalls us; `false` if the registrar closed the connection.
fn write_chunked(s: &mut TcpStream, bytes: &[u8], rng: &mut fastrand::Rng, buf: &mut [u8], shared: &Shared) -> bool {
    let mut at = 0;
    let mut stalled_since: Option<Instant> = None;
    while at < bytes.len() {
        let step = if rng.u8(..4) == 0 { rng.usize(1..=bytes.len() - at) } else { bytes.len() - at };
        match s.write(&bytes[at..at + step]) {
            Ok(0) => return false,
            Ok(n) => {
                at += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !drain(s, buf, shared) {
                    return false;
                }
                let since = *stalled_since.get_or_insert_with(Instant::now);
                // The registrar stops reading a connection whose answers pile up; we read them,
                // so a long stall means it holds a half message of ours: give up on it.
                if since.elapsed() > Duration::from_secs(5) {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// The registrar's default `limits.max_message_size`.
const MAX_MESSAGE: usize = 32 * 1024;

/// Whether `msg` frames as exactly one message (else it breaks the stream it is sent on).
fn frames_whole(framer: &Framer, msg: &[u8]) -> bool {
    matches!(framer.frame(msg), Ok(Frame::Complete(m)) if m.len() == msg.len())
}

fn fuzz_thread(cfg: &FuzzConfig, index: usize, quota: u64, shared: &Shared) {
    let seed = cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(index as u64 + 1));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut mutator = Mutator::new(&cfg.seeds, seed.rotate_left(17), MAX_MESSAGE);
    let mut buf = vec![0u8; 64 * 1024];
    let framer = Framer::new(Protocol::Asap, MAX_MESSAGE);
    let mut sent = 0u64;
    while sent < quota {
        let mut s = match TcpStream::connect(cfg.addr) {
            Ok(s) => s,
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_nodelay(true);
        let _ = s.set_nonblocking(true);
        // Connections of very different lengths: a handful of messages to thousands.
        let per_conn = match rng.u8(..4) {
            0 => rng.u64(1..8),
            1 | 2 => rng.u64(8..256),
            _ => rng.u64(256..4096),
        };
        let mut alive = true;
        let mut batch = Vec::with_capacity(16 * 1024);
        let mut in_batch = 0u64;
        let mut n = 0;
        while n < per_conn && sent + in_batch < quota {
            if rng.u8(..100) < 3 {
                // Stray bytes: the registrar frames them as the start of a message, so the
                // stream is likely lost from here; this connection ends after the next message.
                batch.extend(mutator.stray());
                n = per_conn - 1;
            }
            // A message that cannot be framed whole ends the stream (the registrar answers and
            // closes): most are replaced by another mutation, the rest end the connection.
            let mut msg = mutator.next_message();
            for _ in 0..3 {
                if frames_whole(&framer, &msg) {
                    break;
                }
                msg = mutator.next_message();
            }
            if !frames_whole(&framer, &msg) {
                shared.breaking.fetch_add(1, Ordering::Relaxed);
                n = per_conn - 1;
            }
            batch.extend(msg);
            in_batch += 1;
            n += 1;
            // Several messages per write (they must be split by the framer), flushed often.
            if batch.len() > 8 * 1024 || rng.u8(..4) == 0 || n == per_conn || sent + in_batch == quota {
                alive = write_chunked(&mut s, &batch, &mut rng, &mut buf, shared);
                shared.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                if !alive {
                    break;
                }
                sent += in_batch;
                let total = shared.sent.fetch_add(in_batch, Ordering::Relaxed) + in_batch;
                if cfg.progress_every > 0 && total / cfg.progress_every != (total - in_batch) / cfg.progress_every {
                    eprintln!("live fuzz: {total} messages sent");
                }
                in_batch = 0;
                alive = drain(&mut s, &mut buf, shared);
                if !alive {
                    break;
                }
            }
        }
        if !alive {
            // What the registrar closed on was sent in full, or not at all: count what was.
            shared.closed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Leave in one of three ways: close at once, half-close and read the answers, or reset.
        match rng.u8(..3) {
            0 => drop(s),
            1 => {
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            shared.answer_bytes.fetch_add(k as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ => {
                let sock = socket2::Socket::from(s);
                let _ = sock.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The well-formed clients.

/// Sends `msg` and returns the first answer that is not an Endpoint Keep Alive (those are
/// acknowledged, as a PE must).
fn ask(conn: &mut AsapStream, msg: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    conn.send(msg).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {timeout:?}"));
        }
        let m = conn.recv(left).map_err(|e| format!("receive: {e}"))?;
        let Some(m) = m else { continue };
        let parsed = asap::parse(&m).map_err(|e| format!("unparsable answer: {e}"))?;
        if let Body::EndpointKeepAlive { pool_handle, pe_id: Some(id), .. } = parsed.body() {
            let ack = handle_and_id(MessageType::EndpointKeepAliveAck, pool_handle, *id);
            conn.send(&ack).map_err(|e| format!("send: {e}"))?;
            continue;
        }
        return Ok(m);
    }
}

/// One well-formed client: registers PEs in its own pool, resolves it and checks that exactly
/// its PEs come back, deregisters, over and over until the fuzzers are done.
fn checker_thread(cfg: &FuzzConfig, index: usize, shared: &Shared) {
    let mut rng = fastrand::Rng::with_seed(cfg.seed.wrapping_add(0x5eed_0000 + index as u64));
    let handle = format!("wf-{:x}-{index}", cfg.seed).into_bytes();
    let mut conn = None;
    let mut mine: Vec<u32> = Vec::new();
    let mut next_id = ((index as u32) << 20) | 1;
    let port = |id: u32| 10_000 + (id % 50_000) as u16;
    while !shared.done.load(Ordering::Relaxed) {
        if conn.is_none() {
            match AsapStream::connect(cfg.addr, None, cfg.answer_timeout) {
                Ok(c) => {
                    // A new connection: the PEs of the last one went with it.
                    mine.clear();
                    conn = Some(c);
                }
                Err(e) => {
                    shared.fail(format!("checker {index}: cannot connect: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = if mine.len() < 2 || (mine.len() < 5 && rng.bool()) {
            let id = next_id;
            next_id += 1;
            let msg = registration(&handle, pe_repr(id, port(id), Policy::RoundRobin, 60_000));
            ask(c, &msg, cfg.answer_timeout).and_then(|m| check_registration(&m, &handle, id)).map(|()| mine.push(id))
        } else {
            let id = mine.swap_remove(rng.usize(..mine.len()));
            let msg = handle_and_id(MessageType::Deregistration, &handle, id);
            ask(c, &msg, cfg.answer_timeout).and_then(|m| check_deregistration(&m, &handle, id))
        };
        let result = result.and_then(|()| {
            let m = ask(c, &resolution(&handle, Some(16)), cfg.answer_timeout)?;
            check_resolution(&m, &handle, &mine, port)
        });
        match result {
            Ok(()) => {
                shared.checks_ok.fetch_add(2, Ordering::Relaxed);
            }
            Err(e) => {
                shared.fail(format!("checker {index}: {e}"));
                conn = None;
            }
        }
    }
}

fn check_registration(m: &[u8], handle: &[u8], id: u32) -> Result<(), String> {
    match asap::parse(m).map(|p| p.body().clone()) {
        Ok(Body::RegistrationResponse { rejected: false, pool_handle, pe_id, error: None })
            if pool_handle == handle && pe_id == id =>
        {
            Ok(())
        }
        other => Err(format!("registration of {id:#x}: wrong answer {other:?}")),
    }
}

fn check_deregistration(m: &[u8], handle: &[u8], id: u32) -> Result<(), String> {
    match asap::parse(m).map(|p| p.body().clone()) {
        Ok(Body::DeregistrationResponse { pool_handle, pe_id, error: None })
            if pool_handle == handle && pe_id == id =>
        {
            Ok(())
        }
        other => Err(format!("deregistration of {id:#x}: wrong answer {other:?}")),
    }
}

fn check_resolution(m: &[u8], handle: &[u8], mine: &[u32], port: impl Fn(u32) -> u16) -> Result<(), String> {
    let parsed = asap::parse(m).map_err(|e| format!("resolution: unparsable answer: {e}"))?;
    let Body::HandleResolutionResponse { pool_handle, resolution } = parsed.body() else {
        return Err(format!("resolution: not a resolution response: {:?}", parsed.body()));
    };
    if *pool_handle != handle {
        return Err("resolution: answer for another pool".into());
    }
    let Resolution::Found { pool_elements, .. } = resolution else {
        return Err(format!("resolution: failed although {} PEs are registered: {resolution:?}", mine.len()));
    };
    let mut got: Vec<(u32, u16)> =
        pool_elements.clone().map(|pe| pe.to_repr()).map(|r| (r.pe_id, r.user_transport.port)).collect();
    got.sort_unstable();
    let mut want: Vec<(u32, u16)> = mine.iter().map(|&id| (id, port(id))).collect();
    want.sort_unstable();
    if got != want {
        return Err(format!("resolution: got PEs {got:x?}, registered {want:x?}"));
    }
    Ok(())
}

/// Runs the fuzzers until `cfg.messages` are sent, with the checkers alongside; returns what
/// was seen. Never panics on anything the registrar does.
pub fn run(cfg: &FuzzConfig) -> FuzzReport {
    let shared = Shared {
        sent: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        answer_bytes: AtomicU64::new(0),
        checks_ok: AtomicU64::new(0),
        checks_failed: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
        breaking: AtomicU64::new(0),
    };
    let start = Instant::now();
    let fuzzers = cfg.fuzzers.max(1);
    std::thread::scope(|scope| {
        let checkers: Vec<_> = (0..cfg.checkers)
            .map(|i| {
                scope.spawn({
                    let shared = &shared;
                    move || checker_thread(cfg, i, shared)
                })
            })
            .collect();
        let workers: Vec<_> = (0..fuzzers)
            .map(|i| {
                let quota = cfg.messages / fuzzers as u64 + u64::from((i as u64) < cfg.messages % fuzzers as u64);
                let shared = &shared;
                scope.spawn(move || fuzz_thread(cfg, i, quota, shared))
            })
            .collect();
        for w in workers {
            if w.join().is_err() {
                shared.fail("a fuzz thread panicked".into());
            }
        }
        shared.done.store(true, Ordering::Relaxed);
        for c in checkers {
            if c.join().is_err() {
                shared.fail("a checker thread panicked".into());
            }
        }
    });
    FuzzReport {
        messages: shared.sent.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        stream_breaking: shared.breaking.load(Ordering::Relaxed),
        connections: shared.connections.load(Ordering::Relaxed),
        closed_by_registrar: shared.closed.load(Ordering::Relaxed),
        connect_failures: shared.connect_failures.load(Ordering::Relaxed),
        answer_bytes: shared.answer_bytes.load(Ordering::Relaxed),
        checks_ok: shared.checks_ok.load(Ordering::Relaxed),
        checks_failed: shared.checks_failed.load(Ordering::Relaxed),
        failures: shared.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the RSS of `pid` every `every` until `stop`; returns (seconds since start, KiB).
pub fn sample_rss(pid: u32, every: Duration, stop: &AtomicBool) -> Vec<(f64, u64)> {
    let start = Instant::now();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(k) = rss_kib(pid) {
            out.push((start.elapsed().as_secs_f64(), k));
        }
        std::thread::sleep(every);
    }
    if let Some(k) = rss_kib(pid) {
        out.push((start.elapsed().as_secs_f64(), k));
    }
    out
}

/// The registrar's (pools, PEs it is home of), asked with a status request (loopback only).
pub fn registrar_state(addr: SocketAddr) -> Option<(u64, u64)> {
    let mut c = AsapStream::connect(addr, None, Duration::from_secs(5)).ok()?;
    c.send(&[rserpool::registrar::STATUS_REQUEST, 0, 0, 4]).ok()?;
    let m = c.recv(Duration::from_secs(10)).ok()??;
    let r = rserpool::registrar::StatusReport::from_message(&m).ok()?;
    Some((r.pools, r.pes_owned))
}

/// Waits up to `patience` for the registrar to hold no pool and no PE (every connection that
/// registered one is gone); the last state seen.
pub fn wait_empty(addr: SocketAddr, patience: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + patience;
    loop {
        let state = registrar_state(addr);
        if state == Some((0, 0)) || Instant::now() >= deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
