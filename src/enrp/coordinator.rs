//! The ENRP coordinator of a registrar (WIRE.md 7.2-7.6): runs on the one shard that holds
//! every peer connection. It keeps the peer table (who, where, when last heard), dials and
//! redials peers, sends Presence, probes and declares peers dead, joins the mesh through a
//! mentor, audits each peer's checksum on its Presence and fetches its table on a mismatch,
//! serves table transfers, and runs takeovers. Everything about pools happens on the shard
//! owning the pool: the coordinator forwards peers' updates and table entries there, and
//! gathers checksums from every shard over the same ordered links, so a gathered checksum
//! includes every update forwarded before it. The updates of this registrar's own PEs come to
//! it encoded by their pool shards; it writes them to every peer and keeps this registrar's
//! own checksum as the peers see it, so the Presence it sends agrees with the stream before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::discovery::{Discovery, POLL_MS};
use super::msg::EnrpMsg;
use super::reply;
use crate::config::Timers;
use crate::handlespace::checksum::fold_complement;
use crate::handlespace::shard_of;
use crate::service::{ConnId, Outbox, Payload, ShardId, Tag};
use crate::time::Time;
use crate::wire::enrp::{self, Kind, MessageType};
use crate::wire::framer::Frame;
use crate::wire::{
    Framer, ParamType, Params, Protocol, ServerInformationRepr, TransportProtocol, TransportRepr, Writer,
};

/// What a coordinator needs to know.
#[derive(Clone, Debug)]
pub struct EnrpConfig {
    /// This registrar's server id.
    pub server_id: u32,
    /// Where peers reach this registrar's ENRP listener (announced in Server Information).
    pub address: SocketAddr,
    /// Peers to connect to at start (their ENRP addresses).
    pub peers: Vec<SocketAddr>,
    /// Networks peers may connect from besides loopback and `peers` (docs/SECURITY.md).
    pub allowlist: Vec<ipnet::IpNet>,
    /// Protocol timers (peer heartbeat, last heard, no response, takeover expiry, mentor
    /// discovery, reconnect).
    pub timers: Timers,
    /// Number of shards of this registrar.
    pub shards: u16,
    /// Largest message accepted from a peer.
    pub max_message_size: usize,
    /// The tag the engine gives ENRP connections.
    pub tag: Tag,
    /// Multicast discovery (`[enrp_multicast]`), when on: registrars heard there are dialled.
    pub discovery: Option<Arc<Discovery>>,
}

/// Whether this registrar has the mesh's handlespace yet (WIRE.md 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Still getting the handle table from a mentor (or waiting for one).
    Joining,
    /// Has it (or has no peer to get it from).
    Consistent,
}

/// An ENRP connection.
#[derive(Debug)]
struct Link {
    /// The peer at the other end, once a message named it.
    peer: Option<u32>,
    /// The address this registrar dialled (`None`: the peer dialled).
    dialled: Option<SocketAddr>,
    /// The dial completed (accepted connections always are).
    up: bool,
    framer: Framer,
}

/// A peer registrar.
#[derive(Debug)]
struct Peer {
    /// Its ENRP address, from its Server Information.
    addr: Option<SocketAddr>,
    conn: Option<ConnId>,
    last_heard: Time,
    /// A Presence with R flag is out; no answer by then means it is dead.
    probe_deadline: Option<Time>,
    /// The checksum of its PEs it announced last, and the one seen here then (with count).
    announced: Option<u16>,
    seen: Option<(u16, u64)>,
}

/// A table this registrar asked a peer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Import {
    /// The whole handlespace, from the mentor (join).
    Join,
    /// The peer's own PEs, replacing what is held for it (audit).
    Audit,
}

/// This registrar's table going to a peer, one shard after another.
#[derive(Debug)]
struct Export {
    conn: ConnId,
    own_only: bool,
    shard: ShardId,
    first: bool,
}

/// A gathering of one owner's checksum and PE count from every shard.
#[derive(Debug)]
struct Gather {
    owner: u32,
    purpose: Purpose,
    remaining: u16,
    sum: u64,
    count: u64,
}

/// What a gathering is for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    /// Compare with the checksum `announced` in a Presence.
    Audit { announced: u16 },
    /// Decide whether a dead peer owned PEs (then take them over).
    Takeover,
}

/// A takeover this registrar started (WIRE.md 7.6).
#[derive(Debug)]
struct Takeover {
    waiting: BTreeSet<u32>,
    deadline: Time,
}

/// Counters of ENRP work (read by status and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrpStats {
    /// Handle Updates written to peers (each counted once, not per peer).
    pub updates_sent: u64,
    /// Handle Updates received.
    pub updates_received: u64,
    /// Audits made (checksum comparisons).
    pub audits: u64,
    /// Audits that found a mismatch and fetched the peer's table.
    pub mismatches: u64,
    /// Takeovers this registrar completed.
    pub takeovers: u64,
    /// Peers declared dead.
    pub peers_lost: u64,
    /// Messages from peers refused as malformed.
    pub bad_messages: u64,
    /// ENRP connections refused because their source is not admitted.
    pub refused_peers: u64,
    /// Registrars heard by multicast Presence and dialled.
    pub discovered: u64,
    /// Registrars heard by multicast Presence but not dialled: their address is not one this
    /// registrar admits as a peer.
    pub discovered_refused: u64,
}

/// A peer as `rserpool status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// Its server id.
    pub id: u32,
    /// Its ENRP address, when known.
    pub addr: Option<String>,
    /// Connected now.
    pub connected: bool,
    /// Milliseconds since it was last heard from.
    pub last_heard_ms: u64,
    /// The checksum of its PEs it announced last.
    pub announced_checksum: Option<u16>,
    /// The checksum and count of its PEs held here at the last audit.
    pub local_checksum: Option<u16>,
    /// PEs of it held here at the last audit.
    pub local_pes: Option<u64>,
}

/// The coordinator's view for `rserpool status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrpStatus {
    /// Joining or consistent.
    pub state: String,
    /// This registrar's own PE checksum as announced.
    pub own_checksum: u16,
    /// The peers.
    pub peers: Vec<PeerStatus>,
    /// Counters.
    pub updates_sent: u64,
    /// Counters.
    pub updates_received: u64,
    /// Counters.
    pub audits: u64,
    /// Counters.
    pub mismatches: u64,
    /// Counters.
    pub takeovers: u64,
}

/// The ENRP coordinator.
pub struct Coordinator {
    cfg: EnrpConfig,
    info: ServerInformationRepr,
    shard: ShardId,
    peers: BTreeMap<u32, Peer>,
    links: HashMap<ConnId, Link>,
    /// Addresses to keep a connection to (configured, and learnt from List Responses), with the
    /// time of the next attempt while there is none.
    dials: BTreeMap<SocketAddr, (Option<ConnId>, Time)>,
    /// This registrar's own PE checksum as announced (unfolded), kept from the updates written.
    own_sum: u64,
    sync: Sync,
    join_deadline: Time,
    mentor: Option<u32>,
    imports: BTreeMap<u32, Import>,
    exports: BTreeMap<u32, Export>,
    gathers: BTreeMap<u64, Gather>,
    next_token: u64,
    takeovers: BTreeMap<u32, Takeover>,
    next_heartbeat: Time,
    /// Every few heartbeats each peer is asked for its list of registrars, so that one that
    /// joined while others were cut off still finds them all.
    next_list: Time,
    stats: EnrpStats,
    /// Addresses whose refused connections were logged at warn level.
    refused_logged: BTreeSet<std::net::IpAddr>,
    /// When to take what multicast discovery heard next.
    next_discovery: Time,
    /// Handle Updates read but not yet forwarded, per pool shard ([`Coordinator::forward_updates`]).
    pending_updates: Vec<Vec<u8>>,
    /// This registrar's Handle Updates not yet written to the peers ([`Coordinator::write_updates`]).
    outbound: Vec<u8>,
    /// The registrar is stopping: updates are written at once.
    stopping: bool,
}

/// Gathered Handle Updates are written without waiting once they reach this many bytes.
const OUTBOUND_FLUSH_BYTES: usize = 32 * 1024;

/// Heartbeats between List Requests to every peer.
const LIST_EVERY: u64 = 10;

/// Most addresses kept to dial; registrars heard by multicast beyond that are not dialled.
const MAX_DIALS: usize = 4096;

impl Coordinator {
    /// The coordinator of `cfg.server_id`, on shard `shard`, starting at `now`.
    pub fn new(cfg: EnrpConfig, shard: ShardId, now: Time) -> Self {
        let info = ServerInformationRepr {
            server_id: cfg.server_id,
            transport: TransportRepr::new(TransportProtocol::Tcp, cfg.address.ip(), cfg.address.port()),
        };
        let cfg_shards = cfg.shards.max(1);
        let dials = cfg.peers.iter().filter(|a| **a != cfg.address).map(|a| (*a, (None, now))).collect();
        // With multicast discovery, peers may answer the first Presence: wait for a mentor.
        let sync = if cfg.peers.is_empty() && cfg.discovery.is_none() { Sync::Consistent } else { Sync::Joining };
        Self {
            join_deadline: now.add_millis(cfg.timers.mentor_discovery),
            next_heartbeat: now.add_millis(cfg.timers.peer_heartbeat),
            next_list: now.add_millis(cfg.timers.peer_heartbeat * LIST_EVERY),
            cfg,
            info,
            shard,
            peers: BTreeMap::new(),
            links: HashMap::new(),
            dials,
            own_sum: 0,
            sync,
            mentor: None,
            imports: BTreeMap::new(),
            exports: BTreeMap::new(),
            gathers: BTreeMap::new(),
            next_token: 1,
            takeovers: BTreeMap::new(),
            stats: EnrpStats::default(),
            refused_logged: BTreeSet::new(),
            next_discovery: now,
            pending_updates: vec![Vec::new(); usize::from(cfg_shards)],
            outbound: Vec::new(),
            stopping: false,
        }
    }

    /// Joining or consistent.
    pub fn sync(&self) -> Sync {
        self.sync
    }

    /// The counters.
    pub fn stats(&self) -> &EnrpStats {
        &self.stats
    }

    /// Ids of the peers connected now.
    pub fn connected_peers(&self) -> Vec<u32> {
        self.peers.iter().filter(|(_, p)| p.conn.is_some()).map(|(id, _)| *id).collect()
    }

    /// Ids of every peer known (connected or not).
    pub fn known_peers(&self) -> Vec<u32> {
        self.peers.keys().copied().collect()
    }

    /// The addresses this registrar keeps a connection to, and whether it has one now.
    pub fn dial_targets(&self) -> Vec<(SocketAddr, bool)> {
        self.dials.iter().map(|(a, (c, _))| (*a, c.is_some())).collect()
    }

    /// This registrar's own PE checksum as announced.
    pub fn own_checksum(&self) -> u16 {
        fold_complement(self.own_sum)
    }

    /// The view `rserpool status` shows.
    pub fn status(&self, now: Time) -> EnrpStatus {
        let peers = self
            .peers
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                addr: p.addr.map(|a| a.to_string()),
                connected: p.conn.is_some(),
                last_heard_ms: now.millis_since(p.last_heard),
                announced_checksum: p.announced,
                local_checksum: p.seen.map(|s| s.0),
                local_pes: p.seen.map(|s| s.1),
            })
            .collect();
        EnrpStatus {
            state: match self.sync {
                Sync::Joining => "joining".into(),
                Sync::Consistent => "consistent".into(),
            },
            own_checksum: self.own_checksum(),
            peers,
            updates_sent: self.stats.updates_sent,
            updates_received: self.stats.updates_received,
            audits: self.stats.audits,
            mismatches: self.stats.mismatches,
            takeovers: self.stats.takeovers,
        }
    }

    fn me(&self) -> u32 {
        self.cfg.server_id
    }

    fn link(max: usize, dialled: Option<SocketAddr>, up: bool) -> Link {
        Link { peer: None, dialled, up, framer: Framer::new(Protocol::Enrp, max) }
    }

    /// A peer dialled this registrar: returns whether it is admitted (else the caller closes
    /// the connection). `authenticated`: it proved itself with a certificate (mutual TLS), so
    /// its address is not checked.
    pub fn on_accept(&mut self, conn: ConnId, from: SocketAddr, authenticated: bool) -> bool {
        if !authenticated && !crate::asap::peer_admitted(from.ip(), &self.cfg.peers, &self.cfg.allowlist) {
            self.stats.refused_peers += 1;
            // A refused registrar redials every few seconds: say so once per address.
            if self.refused_logged.len() < 1024 && self.refused_logged.insert(from.ip()) {
                warn!(%from, "ENRP connection refused: not loopback, a configured peer or in security.enrp_allowlist (further ones from this address at debug level)");
            } else {
                debug!(%from, "ENRP connection refused");
            }
            return false;
        }
        debug!(%from, "ENRP connection accepted");
        self.links.insert(conn, Self::link(self.cfg.max_message_size, None, true));
        true
    }

    /// A dial this registrar made finished: announce itself, so the peer learns who it is.
    pub fn on_connect<M>(&mut self, conn: ConnId, ok: bool, now: Time, out: &mut impl Outbox<M>) {
        let Some(link) = self.links.get_mut(&conn) else { return };
        if !ok {
            return; // on_close follows and schedules the next attempt
        }
        link.up = true;
        self.send_presence(conn, 0, true, out);
        let _ = now;
    }

    /// An ENRP connection closed.
    pub fn on_close<M: From<EnrpMsg>>(&mut self, conn: ConnId, now: Time, out: &mut impl Outbox<M>) {
        let Some(link) = self.links.remove(&conn) else { return };
        if let Some(addr) = link.dialled {
            if let Some(d) = self.dials.get_mut(&addr) {
                *d = (None, now.add_millis(self.cfg.timers.peer_reconnect));
            }
        }
        let Some(id) = link.peer else { return };
        let Some(peer) = self.peers.get_mut(&id) else { return };
        if peer.conn != Some(conn) {
            return; // a duplicate connection that lost to another one
        }
        peer.conn = None;
        debug!(peer = format_args!("{id:#010x}"), "ENRP connection to peer closed");
        self.abort_transfers(id, out);
    }

    /// Gives up table transfers with `peer` (it is gone or its connection is).
    fn abort_transfers<M: From<EnrpMsg>>(&mut self, peer: u32, out: &mut impl Outbox<M>) {
        if let Some(e) = self.exports.remove(&peer) {
            out.post(e.shard, EnrpMsg::ExportAbort { requester: peer }.into());
        }
        if let Some(kind) = self.imports.remove(&peer) {
            if kind == Import::Audit {
                self.broadcast(EnrpMsg::ReplaceAbort { owner: peer }, out);
            }
            if self.mentor == Some(peer) {
                self.mentor = None;
            }
        }
    }

    fn broadcast<M: From<EnrpMsg>>(&self, msg: EnrpMsg, out: &mut impl Outbox<M>) {
        for s in 0..self.cfg.shards {
            out.post(s, msg.clone().into());
        }
    }

    /// Bytes from a peer: frames ENRP messages and handles each. Returns how many bytes were
    /// consumed.
    pub fn on_data<M: From<EnrpMsg>>(
        &mut self,
        conn: ConnId,
        data: &[u8],
        now: Time,
        out: &mut impl Outbox<M>,
    ) -> usize {
        let mut used = 0;
        while !out.input_paused(conn) {
            let Some(link) = self.links.get_mut(&conn) else { return data.len() };
            match link.framer.frame(&data[used..]) {
                Ok(Frame::Complete(msg)) => {
                    used += msg.len();
                    self.on_enrp(conn, msg, now, out);
                }
                Ok(Frame::Incomplete { .. }) => break,
                Err(e) => {
                    warn!(peer = ?link.peer, "closing ENRP connection: {e}");
                    out.close(conn);
                    self.forward_updates(out);
                    return data.len();
                }
            }
        }
        self.forward_updates(out);
        used
    }

    /// Writes this registrar's gathered Handle Updates to every connected peer. Called when the
    /// window closes, and before anything else goes to the peers (a Presence announces a
    /// checksum that includes them).
    fn write_updates<M>(&mut self, out: &mut impl Outbox<M>) {
        if self.outbound.is_empty() {
            return;
        }
        for p in self.peers.values() {
            if let Some(c) = p.conn {
                out.send(c, &mut |buf| buf.extend_from_slice(&self.outbound));
            }
        }
        self.outbound.clear();
    }

    /// How long the Handle Updates gathered for the peers may wait (`timers.update_coalesce_us`),
    /// while there are any.
    pub fn gathering(&self) -> Option<Duration> {
        (!self.outbound.is_empty()).then(|| Duration::from_micros(self.cfg.timers.update_coalesce_us))
    }

    /// The gathering window has passed: the updates go to the peers.
    pub fn on_flush<M>(&mut self, out: &mut impl Outbox<M>) {
        self.write_updates(out);
    }

    /// The registrar is stopping: what is gathered goes out now, and later updates at once
    /// (timers no longer run).
    pub fn on_stop<M>(&mut self, out: &mut impl Outbox<M>) {
        self.stopping = true;
        self.write_updates(out);
    }

    /// Posts the Handle Updates gathered while reading to the shards owning their pools: one
    /// record per shard for all that a read brought, not one per update. Called at the end of
    /// every read and before anything else goes to a shard, which keeps every shard's input in
    /// the order it arrived.
    fn forward_updates<M: From<EnrpMsg>>(&mut self, out: &mut impl Outbox<M>) {
        for (s, pending) in self.pending_updates.iter_mut().enumerate() {
            if !pending.is_empty() {
                // Copied, so that a small batch travels inline and `pending` keeps its capacity.
                let messages = Payload::from_slice(pending);
                pending.clear();
                out.post(s as ShardId, EnrpMsg::Updates { messages }.into());
            }
        }
    }

    /// One whole ENRP message from `conn`.
    fn on_enrp<M: From<EnrpMsg>>(&mut self, conn: ConnId, msg: &[u8], now: Time, out: &mut impl Outbox<M>) {
        let m = match enrp::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                debug!("bad ENRP message: {e}");
                if reply::wants_close(&e) {
                    out.close(conn);
                } else {
                    let (me, max) = (self.me(), self.cfg.max_message_size);
                    out.send(conn, &mut |buf| reply::to_error(buf, msg, &e, me, max));
                }
                return;
            }
        };
        let sender = m.body().sender;
        if sender == 0 || sender == self.me() {
            return;
        }
        if !matches!(m.body().kind, Kind::HandleUpdate { .. }) {
            self.forward_updates(out);
            self.write_updates(out);
        }
        self.heard(conn, sender, now, out);
        match &m.body().kind {
            Kind::Presence { reply_required, checksum, server_information } => {
                let t = server_information.transport();
                if let (Some(ip), port) = (t.addresses().next(), t.port()) {
                    let addr = SocketAddr::new(ip, port);
                    if let Some(p) = self.peers.get_mut(&sender) {
                        p.addr = Some(addr);
                    }
                    // Known from now on: redialled whenever no connection to it is up.
                    if addr != self.cfg.address {
                        self.dials.entry(addr).or_insert((None, now.add_millis(self.cfg.timers.peer_reconnect)));
                    }
                }
                if *reply_required {
                    self.send_presence(conn, sender, false, out);
                }
                // Any Presence from a registrar cancels a takeover of it.
                if self.takeovers.remove(&sender).is_some() {
                    info!(peer = format_args!("{sender:#010x}"), "peer is alive after all: takeover cancelled");
                }
                if let Some(p) = self.peers.get_mut(&sender) {
                    p.announced = Some(*checksum);
                }
                if m.body().receiver == self.me() && !self.imports.contains_key(&sender) {
                    self.gather(sender, Purpose::Audit { announced: *checksum }, out);
                }
                self.choose_mentor(sender, conn, out);
            }
            Kind::HandleTableRequest { own_children_only } => self.export_next(conn, sender, *own_children_only, out),
            Kind::HandleTableResponse { more, rejected, .. } => {
                let Some(kind) = self.imports.get(&sender).copied() else { return };
                if *rejected {
                    warn!(peer = format_args!("{sender:#010x}"), "peer refused its handle table");
                    self.abort_transfers(sender, out);
                    return;
                }
                // Each pool's entries to the shard owning the pool: the message was validated
                // whole, so each group (a Pool Handle and the Pool Elements up to the next one)
                // goes on as the bytes it arrived as.
                let params = &msg[(4 + MessageType::HandleTableResponse.fixed_len()).min(msg.len())..];
                if self.cfg.shards <= 1 {
                    if !params.is_empty() {
                        out.post(0, EnrpMsg::Table { groups: Payload::from_slice(params) }.into());
                    }
                } else {
                    let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); usize::from(self.cfg.shards)];
                    let mut group: Option<(usize, ShardId)> = None;
                    for p in Params::new(params, 0).filter(|p| p.param_type() == ParamType::POOL_HANDLE) {
                        if let Some((from, s)) = group {
                            per_shard[usize::from(s)].extend_from_slice(&params[from..p.offset()]);
                        }
                        group = Some((p.offset(), shard_of(p.value(), self.cfg.shards)));
                    }
                    if let Some((from, s)) = group {
                        per_shard[usize::from(s)].extend_from_slice(&params[from..]);
                    }
                    for (s, groups) in per_shard.into_iter().enumerate() {
                        if !groups.is_empty() {
                            out.post(s as ShardId, EnrpMsg::Table { groups: Payload::from_vec(groups) }.into());
                        }
                    }
                }
                if *more {
                    let own = kind == Import::Audit;
                    let me = self.me();
                    out.send(conn, &mut |buf| {
                        let _ = enrp::emit_handle_table_request(&mut Writer::new(buf), me, sender, own);
                    });
                } else {
                    self.imports.remove(&sender);
                    match kind {
                        Import::Audit => self.broadcast(EnrpMsg::ReplaceEnd { owner: sender }, out),
                        Import::Join => {
                            if self.sync == Sync::Joining {
                                info!(mentor = format_args!("{sender:#010x}"), "handle table received: consistent");
                                self.sync = Sync::Consistent;
                            }
                        }
                    }
                }
            }
            Kind::HandleUpdate { pool_handle, pool_element, .. } => {
                if pool_element.asap_transport().is_none() || pool_element.home_registrar() == 0 {
                    // WIRE.md 3.2: every ENRP Pool Element names its home and ASAP transport.
                    self.stats.bad_messages += 1;
                    let (me, quote) = (self.me(), pool_element.param().as_bytes());
                    out.send(conn, &mut |buf| {
                        let code = crate::wire::CauseCode::INVALID_VALUES;
                        let _ = enrp::emit_error(&mut Writer::new(buf), me, sender, code, quote);
                    });
                    return;
                }
                self.stats.updates_received += 1;
                let shard = shard_of(pool_handle, self.cfg.shards);
                self.pending_updates[usize::from(shard)].extend_from_slice(msg);
            }
            Kind::ListRequest => {
                let (me, info) = (self.me(), self.info.clone());
                let servers: Vec<ServerInformationRepr> = std::iter::once(info)
                    .chain(self.peers.iter().filter_map(|(&id, p)| {
                        p.addr.map(|a| ServerInformationRepr {
                            server_id: id,
                            transport: TransportRepr::new(TransportProtocol::Tcp, a.ip(), a.port()),
                        })
                    }))
                    .collect();
                out.send(conn, &mut |buf| {
                    let _ = enrp::emit_list_response(&mut Writer::new(buf), me, sender, false, &servers);
                });
            }
            Kind::ListResponse { servers, .. } => {
                for s in servers.clone() {
                    let t = s.transport();
                    let (Some(ip), port) = (t.addresses().next(), t.port()) else { continue };
                    let addr = SocketAddr::new(ip, port);
                    if s.server_id() != self.me()
                        && addr != self.cfg.address
                        && !self.peers.contains_key(&s.server_id())
                    {
                        self.dials.entry(addr).or_insert((None, now));
                    }
                }
            }
            Kind::InitTakeover { target } => self.on_init_takeover(sender, *target, out),
            Kind::InitTakeoverAck { target } => {
                if let Some(t) = self.takeovers.get_mut(target) {
                    t.waiting.remove(&sender);
                }
                self.complete_takeovers(out);
            }
            Kind::TakeoverServer { target } => {
                info!(
                    target = format_args!("{target:#010x}"),
                    by = format_args!("{sender:#010x}"),
                    "peer took over a registrar"
                );
                self.takeovers.remove(target);
                self.forget_peer(*target, out);
                self.broadcast(EnrpMsg::TakeOver { from: *target, to: sender }, out);
            }
            Kind::Error { error } => {
                warn!(peer = format_args!("{sender:#010x}"), cause = error.first_code().0, "ENRP Error from peer");
            }
        }
    }

    /// `sender` is alive and speaks on `conn`: keeps one connection per peer (the one dialled
    /// by the lower server id when both dialled, WIRE.md 1).
    fn heard<M: From<EnrpMsg>>(&mut self, conn: ConnId, sender: u32, now: Time, out: &mut impl Outbox<M>) {
        let me = self.me();
        let Some(link) = self.links.get_mut(&conn) else { return };
        if link.peer.is_none() {
            link.peer = Some(sender);
        }
        let dialled_by_me = link.dialled.is_some();
        let peer = self.peers.entry(sender).or_insert_with(|| {
            info!(peer = format_args!("{sender:#010x}"), "new ENRP peer");
            Peer { addr: None, conn: None, last_heard: now, probe_deadline: None, announced: None, seen: None }
        });
        peer.last_heard = now;
        peer.probe_deadline = None;
        match peer.conn {
            None => {
                peer.conn = Some(conn);
                // A newly connected peer may know registrars this one does not (and the other
                // way round, which its own List Request settles): the mesh grows to full.
                out.send(conn, &mut |buf| {
                    let _ = enrp::emit_list_request(&mut Writer::new(buf), me, sender);
                });
            }
            Some(c) if c == conn => {}
            Some(other) => {
                // Two connections to one peer: keep the one the lower id dialled.
                let keep_this = dialled_by_me == (me < sender);
                let lose = if keep_this { other } else { conn };
                if keep_this {
                    peer.conn = Some(conn);
                }
                debug!(peer = format_args!("{sender:#010x}"), "duplicate ENRP connection closed");
                if let Some(l) = self.links.get_mut(&lose) {
                    l.peer = None; // its close must not touch the peer
                }
                out.close(lose);
                if keep_this {
                    // Transfers under way went over the connection that lost.
                    self.abort_transfers(sender, out);
                }
            }
        }
    }

    /// While joining, the first peer that answers is the mentor: ask it for the list of
    /// registrars and the whole handle table.
    fn choose_mentor<M>(&mut self, peer: u32, conn: ConnId, out: &mut impl Outbox<M>) {
        if self.sync != Sync::Joining
            || self.mentor.is_some()
            || self.peers.get(&peer).and_then(|p| p.conn) != Some(conn)
        {
            return;
        }
        info!(mentor = format_args!("{peer:#010x}"), "joining: asking the mentor for its handle table");
        self.mentor = Some(peer);
        self.imports.insert(peer, Import::Join);
        let me = self.me();
        out.send(conn, &mut |buf| {
            let mut w = Writer::new(buf);
            let _ = enrp::emit_handle_table_request(&mut w, me, peer, false);
        });
    }

    /// Writes the next chunk of this registrar's table for `requester` (WIRE.md 7.3, 7.5).
    fn export_next<M: From<EnrpMsg>>(
        &mut self,
        conn: ConnId,
        requester: u32,
        own_only: bool,
        out: &mut impl Outbox<M>,
    ) {
        if self.peers.get(&requester).and_then(|p| p.conn) != Some(conn) {
            let me = self.me();
            out.send(conn, &mut |buf| {
                let _ = enrp::emit_handle_table_response(&mut Writer::new(buf), me, requester, false, true, |_| {});
            });
            return;
        }
        let e = self.exports.entry(requester).or_insert(Export { conn, own_only, shard: 0, first: true });
        if e.own_only != own_only || e.conn != conn {
            *e = Export { conn, own_only, shard: 0, first: true };
        }
        let last = e.shard + 1 >= self.cfg.shards;
        let msg = EnrpMsg::Export { conn, requester, own_only, first: e.first, last };
        e.first = false;
        out.post(e.shard, msg.into());
    }

    /// A shard wrote a chunk for `requester`.
    fn exported(&mut self, requester: u32, exhausted: bool) {
        let Some(e) = self.exports.get_mut(&requester) else { return };
        if exhausted {
            e.shard += 1;
            e.first = true;
            if e.shard >= self.cfg.shards {
                self.exports.remove(&requester);
            }
        }
    }

    /// Starts gathering `owner`'s checksum and count from every shard.
    fn gather<M: From<EnrpMsg>>(&mut self, owner: u32, purpose: Purpose, out: &mut impl Outbox<M>) {
        let token = self.next_token;
        self.next_token += 1;
        self.gathers.insert(token, Gather { owner, purpose, remaining: self.cfg.shards, sum: 0, count: 0 });
        self.broadcast(EnrpMsg::SumQuery { owner, token }, out);
    }

    /// Messages from this registrar's shards.
    pub fn on_message<M: From<EnrpMsg>>(&mut self, msg: EnrpMsg, now: Time, out: &mut impl Outbox<M>) {
        match msg {
            EnrpMsg::Outgoing { updates, add, sub } => {
                self.own_sum = self.own_sum.wrapping_add(add).wrapping_sub(sub);
                if updates.is_empty() {
                    return;
                }
                self.stats.updates_sent += count_messages(&updates);
                self.outbound.extend_from_slice(&updates);
                let window = self.cfg.timers.update_coalesce_us;
                if self.stopping || window == 0 || self.outbound.len() >= OUTBOUND_FLUSH_BYTES {
                    self.write_updates(out);
                }
            }
            EnrpMsg::SumPart { token, sum, count, .. } => {
                let Some(g) = self.gathers.get_mut(&token) else { return };
                g.sum = g.sum.wrapping_add(sum);
                g.count += count;
                g.remaining -= 1;
                if g.remaining == 0 {
                    if let Some(g) = self.gathers.remove(&token) {
                        self.gathered(g, now, out);
                    }
                }
            }
            EnrpMsg::Exported { requester, exhausted } => self.exported(requester, exhausted),
            other => debug_assert!(false, "shard message at the coordinator: {other:?}"),
        }
    }

    fn gathered<M: From<EnrpMsg>>(&mut self, g: Gather, now: Time, out: &mut impl Outbox<M>) {
        let local = fold_complement(g.sum);
        match g.purpose {
            Purpose::Audit { announced } => {
                self.stats.audits += 1;
                let Some(peer) = self.peers.get_mut(&g.owner) else { return };
                peer.seen = Some((local, g.count));
                if local == announced || self.imports.contains_key(&g.owner) {
                    return;
                }
                let Some(conn) = peer.conn else { return };
                self.stats.mismatches += 1;
                info!(
                    peer = format_args!("{:#010x}", g.owner),
                    announced = format_args!("{announced:#06x}"),
                    local = format_args!("{local:#06x}"),
                    "checksum mismatch: fetching the peer's own PEs"
                );
                self.imports.insert(g.owner, Import::Audit);
                self.broadcast(EnrpMsg::ReplaceBegin { owner: g.owner }, out);
                let (me, owner) = (self.me(), g.owner);
                out.send(conn, &mut |buf| {
                    let _ = enrp::emit_handle_table_request(&mut Writer::new(buf), me, owner, true);
                });
            }
            Purpose::Takeover => {
                if g.count == 0 {
                    return;
                }
                let waiting: BTreeSet<u32> = self
                    .peers
                    .iter()
                    .filter(|(id, p)| **id != g.owner && p.conn.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                info!(
                    target = format_args!("{:#010x}", g.owner),
                    pes = g.count,
                    peers = waiting.len(),
                    "peer is dead: starting a takeover"
                );
                let (me, target) = (self.me(), g.owner);
                for id in &waiting {
                    if let Some(c) = self.peers.get(id).and_then(|p| p.conn) {
                        out.send(c, &mut |buf| {
                            let t = MessageType::InitTakeover;
                            let _ = enrp::emit_takeover(&mut Writer::new(buf), t, me, *id, target);
                        });
                    }
                }
                let deadline = now.add_millis(self.cfg.timers.takeover_expiry);
                self.takeovers.insert(target, Takeover { waiting, deadline });
                self.complete_takeovers(out);
            }
        }
    }

    /// WIRE.md 7.6 step 2.
    fn on_init_takeover<M: From<EnrpMsg>>(&mut self, sender: u32, target: u32, out: &mut impl Outbox<M>) {
        let me = self.me();
        if target == me {
            // Alive after all: tell everyone.
            let conns: Vec<(u32, ConnId)> = self.peers.iter().filter_map(|(&id, p)| p.conn.map(|c| (id, c))).collect();
            for (id, c) in conns {
                self.send_presence(c, id, false, out);
            }
            return;
        }
        if self.takeovers.contains_key(&target) && me < sender {
            return; // ours goes on
        }
        self.takeovers.remove(&target);
        if let Some(c) = self.peers.get(&sender).and_then(|p| p.conn) {
            out.send(c, &mut |buf| {
                let _ = enrp::emit_takeover(&mut Writer::new(buf), MessageType::InitTakeoverAck, me, sender, target);
            });
        }
    }

    /// Completes every takeover whose acks are all in (a peer that died meanwhile no longer
    /// counts).
    fn complete_takeovers<M: From<EnrpMsg>>(&mut self, out: &mut impl Outbox<M>) {
        let done: Vec<u32> = self
            .takeovers
            .iter()
            .filter(|(_, t)| t.waiting.iter().all(|id| self.peers.get(id).is_none_or(|p| p.conn.is_none())))
            .map(|(target, _)| *target)
            .collect();
        let me = self.me();
        for target in done {
            self.takeovers.remove(&target);
            for (&id, p) in &self.peers {
                if let Some(c) = p.conn {
                    out.send(c, &mut |buf| {
                        let t = MessageType::TakeoverServer;
                        let _ = enrp::emit_takeover(&mut Writer::new(buf), t, me, id, target);
                    });
                }
            }
            info!(target = format_args!("{target:#010x}"), "took over the PEs of a dead registrar");
            self.stats.takeovers += 1;
            self.broadcast(EnrpMsg::TakeOver { from: target, to: me }, out);
        }
    }

    /// Forgets peer `id` (dead, or taken over).
    fn forget_peer<M: From<EnrpMsg>>(&mut self, id: u32, out: &mut impl Outbox<M>) {
        self.abort_transfers(id, out);
        if let Some(p) = self.peers.remove(&id) {
            if let Some(c) = p.conn {
                out.close(c);
            }
        }
    }

    fn send_presence<M>(&mut self, conn: ConnId, receiver: u32, reply_required: bool, out: &mut impl Outbox<M>) {
        self.write_updates(out);
        let (me, sum, info) = (self.me(), self.own_checksum(), &self.info);
        out.send(conn, &mut |buf| {
            let _ = enrp::emit_presence(&mut Writer::new(buf), me, receiver, reply_required, sum, info);
        });
    }

    /// Registrar `server_id` multicast a Presence naming its ENRP address `addr`: dial it now
    /// if it is new here and its address is one this registrar admits as a peer (loopback,
    /// a configured peer, `security.enrp_allowlist`: the rule its accepting side applies to
    /// us). Returns whether a dial was scheduled.
    pub fn on_discovered(&mut self, server_id: u32, addr: SocketAddr, now: Time) -> bool {
        if server_id == 0 || server_id == self.me() || addr == self.cfg.address || self.peers.contains_key(&server_id) {
            return false;
        }
        if !crate::asap::peer_admitted(addr.ip(), &self.cfg.peers, &self.cfg.allowlist) {
            self.stats.discovered_refused += 1;
            if self.refused_logged.len() < 1024 && self.refused_logged.insert(addr.ip()) {
                warn!(%addr, peer = format_args!("{server_id:#010x}"), "multicast Presence from a registrar not dialled: not loopback, a configured peer or in security.enrp_allowlist");
            }
            return false;
        }
        let full = self.dials.len() >= MAX_DIALS;
        match self.dials.get_mut(&addr) {
            // Dialling it already, or connected to it (as another id: it restarts).
            Some((Some(_), _)) => return false,
            // Known and waiting to redial: a new id there, dial now.
            Some((None, at)) => *at = now,
            None if full => {
                self.stats.discovered_refused += 1;
                return false;
            }
            None => {
                self.dials.insert(addr, (None, now));
            }
        }
        self.stats.discovered += 1;
        info!(%addr, peer = format_args!("{server_id:#010x}"), "multicast Presence from a new registrar: dialling it");
        true
    }

    /// Takes the registrars multicast discovery heard and publishes this registrar's own
    /// checksum for its next multicast Presence.
    fn poll_discovery(&mut self, now: Time) {
        let Some(d) = self.cfg.discovery.clone() else { return };
        if now < self.next_discovery {
            return;
        }
        self.next_discovery = now.add_millis(POLL_MS);
        d.set_checksum(self.own_checksum());
        for (id, addr) in d.take() {
            self.on_discovered(id, addr, now);
        }
    }

    /// Dials, heartbeats, liveness probes, deaths, takeover expiries, the end of waiting for a
    /// mentor, registrars heard by multicast.
    pub fn on_timer<M: From<EnrpMsg>>(&mut self, now: Time, out: &mut impl Outbox<M>) {
        self.poll_discovery(now);
        let tag = self.cfg.tag;
        let reconnect = self.cfg.timers.peer_reconnect;
        let connected: BTreeSet<SocketAddr> =
            self.peers.values().filter(|p| p.conn.is_some()).filter_map(|p| p.addr).collect();
        for (addr, (conn, at)) in self.dials.iter_mut() {
            if conn.is_some() || *at > now {
                continue;
            }
            *at = now.add_millis(reconnect);
            if !connected.contains(addr) {
                if let Some(c) = out.connect(*addr, tag) {
                    *conn = Some(c);
                    self.links.insert(c, Self::link(self.cfg.max_message_size, Some(*addr), false));
                }
            }
        }
        if now >= self.next_list {
            self.next_list = now.add_millis(self.cfg.timers.peer_heartbeat * LIST_EVERY);
            let me = self.me();
            for (&id, p) in &self.peers {
                if let Some(c) = p.conn {
                    out.send(c, &mut |buf| {
                        let _ = enrp::emit_list_request(&mut Writer::new(buf), me, id);
                    });
                }
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now.add_millis(self.cfg.timers.peer_heartbeat);
            let conns: Vec<(u32, ConnId)> = self.peers.iter().filter_map(|(&id, p)| p.conn.map(|c| (id, c))).collect();
            for (id, c) in conns {
                self.send_presence(c, id, false, out);
            }
        }
        let t = &self.cfg.timers;
        let mut dead = Vec::new();
        let mut probes = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            let silent_since = p.last_heard.add_millis(t.max_time_last_heard);
            match (p.probe_deadline, p.conn) {
                (Some(deadline), _) if now >= deadline => dead.push(id),
                (None, Some(c)) if now >= silent_since => {
                    p.probe_deadline = Some(now.add_millis(t.max_time_no_response));
                    probes.push((id, c));
                }
                (None, None) if now >= silent_since.add_millis(t.max_time_no_response) => dead.push(id),
                _ => {}
            }
        }
        for (id, c) in probes {
            self.send_presence(c, id, true, out);
        }
        for id in dead {
            warn!(peer = format_args!("{id:#010x}"), "peer did not answer: declared dead");
            self.stats.peers_lost += 1;
            self.forget_peer(id, out);
            self.gather(id, Purpose::Takeover, out);
        }
        self.takeovers.retain(|target, t| {
            let keep = now < t.deadline;
            if !keep {
                warn!(target = format_args!("{target:#010x}"), "takeover expired without every ack: given up");
            }
            keep
        });
        if self.sync == Sync::Joining && self.mentor.is_none() && now >= self.join_deadline {
            info!("no mentor answered: consistent on our own");
            self.sync = Sync::Consistent;
        }
    }

    /// The next time [`Coordinator::on_timer`] has work.
    pub fn next_timer(&self) -> Option<Time> {
        let t = &self.cfg.timers;
        let mut next = self.next_heartbeat.min(self.next_list);
        let mut earliest = |at: Time| next = next.min(at);
        for (conn, at) in self.dials.values() {
            if conn.is_none() {
                earliest(*at);
            }
        }
        for p in self.peers.values() {
            match (p.probe_deadline, p.conn) {
                (Some(d), _) => earliest(d),
                (None, Some(_)) => earliest(p.last_heard.add_millis(t.max_time_last_heard)),
                (None, None) => earliest(p.last_heard.add_millis(t.max_time_last_heard + t.max_time_no_response)),
            }
        }
        for to in self.takeovers.values() {
            earliest(to.deadline);
        }
        if self.sync == Sync::Joining && self.mentor.is_none() {
            earliest(self.join_deadline);
        }
        if self.cfg.discovery.is_some() {
            earliest(self.next_discovery);
        }
        Some(next)
    }

    /// The shard this coordinator runs on.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

/// Number of whole messages in `bytes` (back to back).
fn count_messages(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])).max(4);
        at += len;
        n += 1;
    }
    n
}
