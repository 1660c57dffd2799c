//! The registrar's state: pools, pool elements, selection policies, lifetimes and per-owner
//! checksums (issue 4).
//!
//! One [`Handlespace`] is one shard: the pools whose handle [`shard_of`] maps to one core. It
//! has no locks and never reads the clock (time is an argument). Layout:
//!
//! - pools live in a slab, PEs in 144-byte slots in pages (`arena`); [`PoolKey`]
//!   and [`PeKey`] are index + generation, so a key that outlives its object is detected as stale;
//! - a PE's slot holds all of it: id, home, life and its parameters encoded as sent on the wire
//!   (user transport, policy and ASAP transport, inline up to 61 bytes), which answers copy, in
//!   its first 80 bytes; then the links below. Nothing per PE is allocated elsewhere unless its
//!   parameters are longer;
//! - handle → pool and (pool, PE id) → PE are hash tables (`index`) that store only slab
//!   indices, in 64-byte chunks of tags and entries so that a probe reads one cache line, and
//!   compare keys in the slabs (`ahash`, randomly seeded per process, so peers cannot aim
//!   collisions; the shard choice uses the fixed hash in [`shard`]). The PE table hashes a tag of
//!   the pool's handle hash, not the pool's index, so a lookup by handle and id probes both
//!   tables at once. PE ids of one pool that differ only in their last 4 bits hash to
//!   neighbouring chunks (so ids registered in order fill a kilobyte of the table in turn), each
//!   with its own tag. Each PE slot keeps its 32-bit hash, and the arena a dense copy of them
//!   (4 bytes per PE), so a removal hashes nothing and a growth reads 16 KiB per page of 4,096
//!   PEs instead of every slot. Both tables grow by rebuilding from their slab, in slab order,
//!   and [`Handlespace::reserve`] sizes the PE table and the PE slots ahead for a known
//!   number of PEs;
//! - connection → its PEs is indexed by the connection's slot number (`conns`);
//! - each pool has a selection index chosen by its policy (`selection.rs` explains them);
//! - an owner's PEs and a connection's PEs are intrusive doubly-linked lists through the PE
//!   slots, so takeover and connection loss cost O(PEs concerned) and no extra allocation;
//! - finite lifetimes are timers of a timing wheel ([`wheel`]) linked through the PE slots.
//!
//! A registered PE with a 2-address IPv4 user transport and an ASAP transport costs 174-200
//! bytes including every index (least for Round Robin in one pool, most for Weighted Round
//! Robin in pools of 10); `examples/handlespace_memory.rs` measures it and
//! `results/handlespace/memory.md` records it.

mod arena;
pub mod checksum;
mod conns;
mod element;
mod error;
mod index;
mod ordindex;
mod owners;
mod pool;
mod selection;
pub mod shard;
mod sumtree;
#[cfg(test)]
mod tests;
pub mod wheel;

use slab::Slab;

use self::arena::Arena;
use self::conns::Conns;
use self::element::{PackedConn, Wire};
use self::index::ChunkIndex;
use self::wheel::Wheel;

use crate::service::ConnId;
use crate::time::Time;
use crate::wire::policy::{Policy, PolicyType};
use crate::wire::transport::TransportRepr;

pub use self::element::{PeKey, PoolElement};
pub use self::error::{DeregisterError, RegisterError, UnknownPool};
pub use self::pool::{Pool, PoolKey};
pub use self::shard::{shard_hash, shard_of, SHARD_HASH_SEED};
pub use self::wheel::{TimerKey, TimerWheel};

pub(crate) use self::element::same_addresses;
use self::element::{list_push, list_remove, List, PeSlot, NIL};
use self::owners::Owners;
use self::selection::{SelectCtx, Selector};

/// Where a walk of the table ([`Handlespace::table_pes`]) goes on: the first slot not yet read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableCursor(u32);

impl TableCursor {
    /// The start of the table.
    pub const START: Self = Self(0);
}

/// Orders PEs read by [`Handlespace::table_pes`] as an ENRP Handle Table export sends them:
/// grouped by pool (pools in slab order, slot order within a pool), one Pool Handle per group.
pub fn group_by_pool(entries: &mut [(PoolKey, PeKey)]) {
    // Slot indices are unique: an unstable sort gives the same order as a stable one.
    entries.sort_unstable_by_key(|&(pool, key)| (pool.index, key.index));
}

/// Limits and knobs of a handlespace shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlespaceConfig {
    /// Most pools this shard holds (cause 0x6 beyond).
    pub max_pools: usize,
    /// Most PEs in one pool (cause 0x6 beyond).
    pub max_pes_per_pool: usize,
    /// Most PEs this shard holds (cause 0x6 beyond).
    pub max_pes: usize,
    /// Most PEs registered over one connection (cause 0x6 beyond).
    pub max_pes_per_connection: usize,
    /// Longest pool handle in bytes (cause 0x6 beyond).
    pub max_handle_len: usize,
    /// Registration lives (ms) are capped to this; a negative life (no expiry) is kept.
    pub max_registration_life: i32,
    /// How many PEs at the head of a resolution count as selected (WIRE.md section 4).
    pub max_increment: usize,
    /// MAX-BAD-PE-REPORT: Endpoint Unreachable reports that remove a PE.
    pub max_bad_pe_reports: u16,
    /// Seed of the PRNG used by the random policies (fixed so runs are reproducible).
    pub seed: u64,
}

impl Default for HandlespaceConfig {
    fn default() -> Self {
        Self {
            max_pools: 1 << 20,
            max_pes_per_pool: 1 << 22,
            max_pes: 1 << 24,
            max_pes_per_connection: 1 << 16,
            max_handle_len: 255,
            max_registration_life: 24 * 3600 * 1000,
            max_increment: 1,
            max_bad_pe_reports: 3,
            seed: 0x5253_4552_504f_4f4c,
        }
    }
}

/// One registration (from a PE over ASAP, or from a peer registrar over ENRP).
#[derive(Clone, Copy, Debug)]
pub struct Registration<'a> {
    /// Pool handle.
    pub handle: &'a [u8],
    /// PE identifier.
    pub pe_id: u32,
    /// Home registrar (owner) id.
    pub home: u32,
    /// User transport, unspecified addresses already replaced by the caller.
    pub user_transport: &'a TransportRepr,
    /// ASAP transport, if known.
    pub asap_transport: Option<&'a TransportRepr>,
    /// Policy and its values.
    pub policy: Policy,
    /// Registration life in ms as received; negative = until deregistered or disconnected.
    pub registration_life: i32,
    /// The ASAP connection it came over; `None` for a PE learnt from a peer registrar.
    pub conn: Option<ConnId>,
}

/// What a successful registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The PE.
    pub pe: PeKey,
    /// Its pool.
    pub pool: PoolKey,
    /// `true` for a new PE, `false` for an update of an existing one.
    pub added: bool,
    /// The previous home registrar, when the update changed it.
    pub previous_owner: Option<u32>,
    /// The previous connection, when the update moved the PE from another one (or from none).
    pub previous_conn: Option<Option<ConnId>>,
}

/// Outcome of an Endpoint Unreachable report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// The pool has no PE with that identifier.
    UnknownPe,
    /// Counted; this many reports so far.
    Counted(u16),
    /// The count reached MAX-BAD-PE-REPORT: the PE was removed.
    Removed(PoolElement),
}

/// One handlespace shard: pools, PEs and every index over them.
#[derive(Debug)]
pub struct Handlespace {
    config: HandlespaceConfig,
    pools: Slab<Pool>,
    /// Pool handle → pool slab index. The tables below store only slab indices (4 bytes an
    /// entry) and compare keys in the slabs, which saves ~24 bytes per PE over a `HashMap`.
    pool_index: ChunkIndex,
    pes: Arena,
    /// (pool, PE id) → PE slot index.
    pe_index: ChunkIndex,
    owners: Owners,
    /// Connection → its PEs.
    conns: Conns,
    /// Hasher of the tables (random keys: peers cannot aim collisions).
    hasher: ahash::RandomState,
    /// Registration lifetimes, linked through the PE slots.
    timers: Wheel,
    rng: fastrand::Rng,
    next_generation: u32,
    scratch: Vec<u32>,
    /// Where a PE's wire body is encoded before it is stored.
    wire_scratch: Vec<u8>,
}

/// Where a PE is or would go in a [`Handlespace`] (its pool's and its own slot, when they
/// exist), valid until the handlespace next changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spot {
    pool: Option<u32>,
    pe: Option<u32>,
    /// The handle's hash, for a pool that registration creates (not hashed again).
    hash: u64,
    /// The PE's hash in the PE index, for a PE that is then added or removed.
    pe_hash: u32,
}

/// The part of a pool's handle hash that its PEs' index entries hash on (pools that share it
/// only share buckets: the index compares the pool).
fn pool_tag(handle_hash: u64) -> u32 {
    (handle_hash >> 32) as u32
}

/// The hash of (pool, PE id) in the PE index, which the PE's slot keeps (32 bits: growing the
/// index reads that one field of each slot and hashes nothing; [`index_key`] widens it): a keyed
/// hash of the pool's tag and the id without its last 4 bits, whose own last 4 bits are replaced
/// by the id's (so ids that differ only there land in the neighbouring chunks of one kilobyte,
/// which ids registered in order then fill in turn) and mixed into the bits that become the
/// index's tag (so that they do not all match each other's tag). Never 0, which marks a free
/// slot. (Sharing one chunk among them was tried: at 4 ids per chunk, ids in order overflow
/// their chunks so often that one pool of a million got 10-30 % slower.)
///
/// The pool's tag is half of its handle hash ([`pool_tag`]), not its slab index, so that a lookup
/// by handle and id computes both hashes at once and probes the two tables without waiting for
/// the first.
fn pe_hash(hasher: &ahash::RandomState, pool_tag: u32, pe_id: u32) -> u32 {
    let block = hasher.hash_one(u64::from(pool_tag) << 32 | u64::from(pe_id >> 4)) as u32;
    let low = pe_id & 15;
    ((block & !15) ^ low ^ (low << 25)).max(1)
}

/// A PE hash as the index takes it: its low bits pick the chunk, its top 7 bits (here bits 25
/// to 31 of the PE hash) the tag, so chunk and tag are independent up to 2^25 chunks (335
/// million PEs in one shard).
fn index_key(pe_hash: u32) -> u64 {
    u64::from(pe_hash) << 32 | u64::from(pe_hash)
}

impl Handlespace {
    /// An empty handlespace whose timers start at `now`.
    pub fn new(config: HandlespaceConfig, now: Time) -> Self {
        let hasher = ahash::RandomState::new();
        Self {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            pools: Slab::new(),
            pool_index: ChunkIndex::new(),
            pes: Arena::new(),
            pe_index: ChunkIndex::new(),
            owners: Owners::default(),
            conns: Conns::new(hasher.clone()),
            hasher,
            timers: Wheel::new(now),
            // Generation 0 is never handed out, so `PeKey::default()` names no PE.
            next_generation: 1,
            scratch: Vec::new(),
            wire_scratch: Vec::with_capacity(128),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &HandlespaceConfig {
        &self.config
    }

    /// Number of pools.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// Number of PEs.
    pub fn pe_count(&self) -> usize {
        self.pes.len()
    }

    /// The pool with this handle.
    pub fn pool_by_handle(&self, handle: &[u8]) -> Option<PoolKey> {
        let index = self.find_pool(handle)?;
        Some(PoolKey { index, generation: self.pools[index as usize].generation })
    }

    /// A pool by key; `None` if stale.
    pub fn pool(&self, key: PoolKey) -> Option<&Pool> {
        self.pools.get(key.index as usize).filter(|p| p.generation == key.generation)
    }

    /// Every PE of pool `key`, in the order of its selection index (nothing for a stale key).
    /// O(pool size).
    pub fn pool_pes(&self, key: PoolKey) -> impl Iterator<Item = PeKey> + '_ {
        self.pool(key).into_iter().flat_map(move |p| p.selector.iter(&self.pes, key.index))
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = (PoolKey, &Pool)> + '_ {
        self.pools.iter().map(|(i, p)| (PoolKey { index: i as u32, generation: p.generation }, p))
    }

    /// The PE with this identifier in the pool with this handle.
    pub fn lookup(&self, handle: &[u8], pe_id: u32) -> Option<PeKey> {
        self.at(self.locate(handle, pe_id)).map(|(key, _)| key)
    }

    /// Where PE `pe_id` of pool `handle` is, or would go: one lookup whose result
    /// [`Handlespace::register_at`] uses instead of looking again.
    pub fn locate(&self, handle: &[u8], pe_id: u32) -> Spot {
        self.locate_ahead(handle, pe_id, false)
    }

    /// [`Handlespace::locate`]; with `selector` (a removal, which changes the pool's selection
    /// index), the found pool's index is asked for before the PE is probed. Measured for
    /// deregistration only: 1.02-1.25x at 100,000 pools x 10 (all nine policies, 7 rounds);
    /// registration showed no gain.
    #[inline(always)]
    fn locate_ahead(&self, handle: &[u8], pe_id: u32, selector: bool) -> Spot {
        let (hash, pe_hash) = self.ask(handle, pe_id, false);
        self.probe(hash, pe_hash, handle, pe_id, selector)
    }

    /// The first half of a lookup: hashes the handle and the PE and asks for the PE index's
    /// chunk (and, with `pool_chunk`, the pool index's), returning both hashes for
    /// [`Handlespace::probe`]. Both hashes first: the PE table's probe does not depend on the
    /// pool's, so its chunk is asked for before the pool's probe waits on its own miss.
    /// (Probing the PE table first and checking a found PE's pool through its slot would skip
    /// the pool table for PEs that exist, but chains PE chunk, slot and pool entry one after
    /// another: measured no faster.)
    #[inline(always)]
    fn ask(&self, handle: &[u8], pe_id: u32, pool_chunk: bool) -> (u64, u32) {
        let hash = self.hasher.hash_one(handle);
        let pe_hash = pe_hash(&self.hasher, pool_tag(hash), pe_id);
        self.pe_index.prefetch(index_key(pe_hash));
        if pool_chunk {
            self.pool_index.prefetch(hash);
        }
        (hash, pe_hash)
    }

    /// The second half of a lookup: probes both indexes for what [`Handlespace::ask`] hashed.
    #[inline(always)]
    fn probe(&self, hash: u64, pe_hash: u32, handle: &[u8], pe_id: u32, selector: bool) -> Spot {
        let pool = self.find_pool_hashed(hash, handle);
        if let Some(p) = pool.filter(|_| selector) {
            self.pools[p as usize].selector.prefetch();
        }
        Spot { pool, pe: pool.and_then(|p| self.find_pe_hashed(pe_hash, p, pe_id)), hash, pe_hash }
    }

    /// The PE at `spot`, if there is one.
    pub fn at(&self, spot: Spot) -> Option<(PeKey, &PoolElement)> {
        let index = spot.pe?;
        let slot = &self.pes[index];
        Some((slot.key(index), &slot.pe))
    }

    fn find_pool(&self, handle: &[u8]) -> Option<u32> {
        self.find_pool_hashed(self.hasher.hash_one(handle), handle)
    }

    #[inline]
    fn find_pool_hashed(&self, hash: u64, handle: &[u8]) -> Option<u32> {
        self.pool_index.find(hash, |i| *self.pools[i as usize].handle == *handle)
    }

    fn find_pe(&self, pool: u32, pe_id: u32) -> Option<u32> {
        self.find_pe_hashed(pe_hash(&self.hasher, pool_tag(self.pools[pool as usize].hash), pe_id), pool, pe_id)
    }

    #[inline]
    fn find_pe_hashed(&self, hash: u32, pool: u32, pe_id: u32) -> Option<u32> {
        let pes = &self.pes;
        self.pe_index.find(index_key(hash), |i| pes[i].pe.id == pe_id && pes[i].pool == pool)
    }

    /// Slot index of the first PE registered over `conn`.
    fn find_conn(&self, conn: ConnId) -> Option<u32> {
        self.conns.get(&self.pes, conn).map(|e| e.head)
    }

    /// A PE by key; `None` if stale.
    pub fn pe(&self, key: PeKey) -> Option<&PoolElement> {
        self.slot(key).map(|s| &s.pe)
    }

    /// The pool of a PE.
    pub fn pe_pool(&self, key: PeKey) -> Option<PoolKey> {
        let pool = self.slot(key)?.pool;
        Some(PoolKey { index: pool, generation: self.pools[pool as usize].generation })
    }

    /// The pool handle of a PE.
    pub fn pe_handle(&self, key: PeKey) -> Option<&[u8]> {
        Some(&self.pools[self.slot(key)?.pool as usize].handle)
    }

    /// When a PE's registration expires; `None` if it has no expiry or the key is stale.
    pub fn pe_expiry(&self, key: PeKey) -> Option<Time> {
        let slot = self.slot(key)?;
        slot.has_timer().then_some(Time(slot.timer.deadline))
    }

    /// The degradation a PE accumulated under Least Used with Degradation (0 under every other
    /// policy); `None` if the key is stale.
    pub fn pe_degradation(&self, key: PeKey) -> Option<u32> {
        let slot = self.slot(key)?;
        let lud = self.pools[slot.pool as usize].policy_type == PolicyType::LEAST_USED_DEGRADATION;
        Some(if lud { selection::accumulated_degradation(slot.sel_key) } else { 0 })
    }

    /// The Endpoint Unreachable reports counted against a PE since its last (re-)registration;
    /// `None` if the key is stale.
    pub fn pe_unreachable_reports(&self, key: PeKey) -> Option<u16> {
        Some(self.slot(key)?.unreachable_reports)
    }

    fn slot(&self, key: PeKey) -> Option<&PeSlot> {
        self.pes.get(key.index, key.generation)
    }

    fn new_generation(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = g.wrapping_add(1).max(1);
        g
    }

    fn effective_life(&self, life: i32) -> i32 {
        if life < 0 {
            -1
        } else {
            life.min(self.config.max_registration_life.max(0))
        }
    }

    /// Registers a PE, or updates it when its identifier is already in the pool (WIRE.md
    /// section 6.1): over the same connection with the same owner it is a re-registration; from
    /// elsewhere with the same user transport addresses it is the same PE moved here (it takes
    /// the new owner and connection); otherwise the identifier collides. An update keeps the
    /// PE's place in rotations and resets its degradation and unreachable count.
    pub fn register(&mut self, reg: Registration<'_>, now: Time) -> Result<Registered, RegisterError> {
        // The parameters are encoded between asking for the two index chunks and probing
        // them: the encoding does not depend on them, so their misses overlap it instead of
        // stalling the probe (with the index's 8-bit tags, a fill of 1,000,000 PEs 1.15x in
        // one pool, 1.30x in 100,000 pools; results/handlespace/README.md).
        let (hash, pe_hash) = self.ask(reg.handle, reg.pe_id, true);
        let wire = self.encode(&reg);
        let spot = self.probe(hash, pe_hash, reg.handle, reg.pe_id, false);
        self.register_encoded(spot, reg, wire, now)
    }

    /// [`Handlespace::register`] at `spot`, which [`Handlespace::locate`] returned for this
    /// registration's handle and identifier with no change to the handlespace since.
    pub fn register_at(&mut self, spot: Spot, reg: Registration<'_>, now: Time) -> Result<Registered, RegisterError> {
        let wire = self.encode(&reg);
        self.register_encoded(spot, reg, wire, now)
    }

    /// The parameters of `reg` as its slot keeps them.
    #[inline(always)]
    fn encode(&mut self, reg: &Registration<'_>) -> Wire {
        Wire::encode(&mut self.wire_scratch, reg.user_transport, &reg.policy, reg.asap_transport)
    }

    /// [`Handlespace::register_at`] with the parameters encoded (`wire`); an error drops them.
    #[inline(always)]
    fn register_encoded(
        &mut self,
        spot: Spot,
        reg: Registration<'_>,
        wire: Wire,
        now: Time,
    ) -> Result<Registered, RegisterError> {
        let Registration { handle, pe_id, home, user_transport, policy, registration_life, conn, .. } = reg;
        debug_assert_eq!(spot, self.locate(handle, pe_id), "a stale spot");
        if handle.is_empty() {
            return Err(RegisterError::EmptyHandle);
        }
        if handle.len() > self.config.max_handle_len {
            return Err(RegisterError::HandleTooLong { len: handle.len(), max: self.config.max_handle_len });
        }
        let policy_type = policy.policy_type();
        let pool_index = spot.pool;
        if let Some(p) = pool_index {
            let pool = &self.pools[p as usize];
            if pool.policy_type != policy_type {
                return Err(RegisterError::InconsistentPolicy { pool: pool.policy_type, found: policy_type });
            }
            if pool.protocol != user_transport.protocol {
                return Err(RegisterError::InconsistentTransport {
                    pool: pool.protocol,
                    found: user_transport.protocol,
                });
            }
            if pool.transport_use != user_transport.transport_use {
                return Err(RegisterError::InconsistentTransportUse {
                    pool: pool.transport_use,
                    found: user_transport.transport_use,
                });
            }
            if let Some(index) = spot.pe {
                let pe = &self.pes[index].pe;
                let same_source = pe.conn() == conn && pe.home == home;
                if !same_source && !same_addresses(&pe.user_transport(), user_transport) {
                    return Err(RegisterError::NonUniquePeIdentifier(pe_id));
                }
                if pe.conn() != conn && !self.conn_has_room(conn) {
                    return Err(RegisterError::TooManyPesOnConnection);
                }
                let life = self.effective_life(registration_life);
                return Ok(self.update(p, index, home, wire, &policy, life, conn, now));
            }
            if self.pools[p as usize].selector.len() >= self.config.max_pes_per_pool {
                return Err(RegisterError::TooManyPesInPool);
            }
        } else if self.pools.len() >= self.config.max_pools {
            return Err(RegisterError::TooManyPools);
        }
        if self.pes.len() >= self.config.max_pes {
            return Err(RegisterError::TooManyPes);
        }
        if !self.conn_has_room(conn) {
            return Err(RegisterError::TooManyPesOnConnection);
        }
        let p = match pool_index {
            Some(p) => p,
            None => {
                let selector = Selector::new(policy_type).ok_or(RegisterError::UnknownPolicy(policy_type.0))?;
                let generation = self.new_generation();
                let hash = spot.hash;
                if self.pool_index.is_full() {
                    self.grow_pool_index();
                }
                let p = self.pools.insert(Pool {
                    handle: smallvec::SmallVec::from_slice(handle),
                    hash,
                    // At most 64 KiB of handle (the message limit): 32,768 words of < 2^16.
                    handle_words: u32::try_from(checksum::handle_words(handle)).unwrap_or(u32::MAX),
                    policy_type,
                    protocol: user_transport.protocol,
                    transport_use: user_transport.transport_use,
                    generation,
                    selector,
                }) as u32;
                let pools = &self.pools;
                self.pool_index.insert(hash, p, |i| pools[i as usize].hash);
                p
            }
        };
        let life = self.effective_life(registration_life);
        let generation = self.new_generation();
        let mut slot = PeSlot::VACANT;
        slot.pe =
            PoolElement { id: pe_id, home, registration_life: life, generation, wire, conn: PackedConn::new(conn) };
        slot.pool = p;
        slot.index_hash = spot.pe_hash;
        if self.pe_index.is_full() {
            self.grow_pe_index();
        }
        let index = self.pes.insert(slot);
        let key = PeKey { index, generation };
        let pes = &self.pes;
        self.pe_index.insert(index_key(spot.pe_hash), index, |i| index_key(pes[i].index_hash));
        let pool = &mut self.pools[p as usize];
        pool.selector.insert(&mut self.pes, index, &policy);
        let words = checksum::pe_words(u64::from(pool.handle_words), pe_id);
        self.owners.add(&mut self.pes, home, index, words);
        self.link_conn(index, conn);
        if life >= 0 {
            self.timers.insert(&mut self.pes, index, now.add_millis(life as u64).as_millis());
        }
        let pool = PoolKey { index: p, generation: self.pools[p as usize].generation };
        Ok(Registered { pe: key, pool, added: true, previous_owner: None, previous_conn: None })
    }

    /// PEs this shard holds before its PE index next grows.
    pub fn pe_capacity(&self) -> usize {
        self.pe_index.capacity()
    }

    /// Makes room for `additional` more PEs, so that registering them neither grows the PE
    /// index (each growth rehashes every PE: a fill of 1,000,000 PEs spends about a fifth of
    /// its time there) nor touches fresh memory (the kernel's backing of the slots' new pages,
    /// another fifth). O(PEs held) when the index grows; the slots' memory (144 bytes a PE) is
    /// allocated and written now.
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self.pes.len().saturating_add(additional).min(self.config.max_pes);
        if wanted > self.pe_index.capacity() {
            self.rebuild_pe_index(wanted);
        }
        self.pes.reserve(wanted.saturating_sub(self.pes.len()));
    }

    /// Doubles the PE index ahead of an insertion that would fill it, rebuilding it from the
    /// arena in slot order: growing it in place would read every PE's slot in the table's
    /// (random) order, a cache miss per PE; the arena lists them in turn from its dense copy of
    /// their hashes.
    #[cold]
    fn grow_pe_index(&mut self) {
        let capacity = self.pe_index.grown_capacity();
        self.rebuild_pe_index(capacity);
    }

    fn rebuild_pe_index(&mut self, capacity: usize) {
        let pes = &self.pes;
        self.pe_index.rebuild(capacity, pes.hashes().map(|(i, h)| (index_key(h), i)), |i| index_key(pes[i].index_hash));
    }

    /// Doubles the pool index ahead of an insertion that would fill it, rebuilding it from the
    /// pool slab in slab order (as [`Handlespace::grow_pe_index`]).
    #[cold]
    fn grow_pool_index(&mut self) {
        let pools = &self.pools;
        let capacity = self.pool_index.grown_capacity();
        self.pool_index.rebuild(capacity, pools.iter().map(|(i, p)| (p.hash, i as u32)), |i| pools[i as usize].hash);
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        p: u32,
        index: u32,
        home: u32,
        wire: Wire,
        policy: &Policy,
        life: i32,
        conn: Option<ConnId>,
        now: Time,
    ) -> Registered {
        let words = checksum::pe_words(u64::from(self.pools[p as usize].handle_words), self.pes[index].pe.id);
        let slot = &mut self.pes[index];
        let key = slot.key(index);
        let old_home = slot.pe.home;
        let old_conn = slot.pe.conn();
        slot.pe.wire = wire;
        slot.pe.registration_life = life;
        slot.unreachable_reports = 0;
        self.pools[p as usize].selector.update(&mut self.pes, index, policy);
        let previous_owner = (old_home != home).then(|| {
            self.owners.remove(&mut self.pes, old_home, index, words);
            self.pes[index].pe.home = home;
            self.owners.add(&mut self.pes, home, index, words);
            old_home
        });
        let previous_conn = (old_conn != conn).then(|| {
            self.move_conn(index, old_conn, conn);
            old_conn
        });
        match (self.pes[index].has_timer(), life >= 0) {
            (true, true) => self.timers.reschedule(&mut self.pes, index, now.add_millis(life as u64).as_millis()),
            (false, true) => self.timers.insert(&mut self.pes, index, now.add_millis(life as u64).as_millis()),
            (true, false) => self.timers.cancel(&mut self.pes, index),
            (false, false) => {}
        }
        let pool = PoolKey { index: p, generation: self.pools[p as usize].generation };
        Registered { pe: key, pool, added: false, previous_owner, previous_conn }
    }

    fn conn_has_room(&self, conn: Option<ConnId>) -> bool {
        conn.and_then(|c| self.conns.get(&self.pes, c))
            .is_none_or(|e| (e.count as usize) < self.config.max_pes_per_connection)
    }

    fn link_conn(&mut self, index: u32, conn: Option<ConnId>) {
        let Some(c) = conn else { return };
        self.conns.update(&mut self.pes, c, |pes, e| {
            list_push(pes, &mut e.head, index, List::Conn);
            e.count += 1;
        });
    }

    /// Moves PE `index` from the list of connection `old` (its slot's) to that of `new`.
    fn move_conn(&mut self, index: u32, old: Option<ConnId>, new: Option<ConnId>) {
        self.unlink_conn(index, old);
        self.pes[index].pe.conn = PackedConn::new(new);
        self.link_conn(index, new);
    }

    /// Unlinks PE `index` from the list of `conn` (which its slot must still name).
    fn unlink_conn(&mut self, index: u32, conn: Option<ConnId>) {
        let Some(c) = conn else { return };
        self.conns.update(&mut self.pes, c, |pes, e| {
            if e.head != NIL {
                list_remove(pes, &mut e.head, index, List::Conn);
                e.count -= 1;
            }
        });
    }

    /// The PE index's hash of the PE in slot `index`.
    fn index_hash(&self, index: u32) -> u32 {
        self.pes[index].index_hash
    }

    /// Removes a PE (whose index hash is `hash`) from every index and returns it with its
    /// pool's slab index; the pool is left in place (even if empty) so the caller can still
    /// read its handle.
    fn unlink(&mut self, index: u32, hash: u32) -> (PoolElement, u32) {
        let (p, pe_id, home, conn) = {
            let s = &self.pes[index];
            (s.pool, s.pe.id, s.pe.home, s.pe.conn())
        };
        if self.pes[index].has_timer() {
            self.timers.cancel(&mut self.pes, index);
        }
        let pool = &mut self.pools[p as usize];
        pool.selector.remove(&mut self.pes, index);
        let words = checksum::pe_words(u64::from(pool.handle_words), pe_id);
        self.owners.remove(&mut self.pes, home, index, words);
        self.unlink_conn(index, conn);
        self.pe_index.remove(index_key(hash), index);
        (self.pes.remove(index), p)
    }

    /// Drops pool `p` if it has no PE left.
    fn drop_pool_if_empty(&mut self, p: u32) {
        if self.pools[p as usize].selector.len() == 0 {
            let pool = self.pools.remove(p as usize);
            self.pool_index.remove(pool.hash, p);
        }
    }

    /// Removes PE `index` (whose index hash is `hash`) and drops its pool if emptied.
    fn remove_index(&mut self, index: u32, hash: u32) -> PoolElement {
        let (pe, p) = self.unlink(index, hash);
        self.drop_pool_if_empty(p);
        pe
    }

    /// Removes a PE unconditionally (ENRP delete, keep-alive failure, collision settlement)
    /// and returns it; `None` if the key is stale. An emptied pool is removed.
    pub fn remove(&mut self, key: PeKey) -> Option<PoolElement> {
        self.slot(key)?;
        Some(self.remove_index(key.index, self.index_hash(key.index)))
    }

    /// Deregistration over ASAP: removes PE `pe_id` of pool `handle` if `requester` is the
    /// connection it registered over, and returns it. An unknown PE in a known pool is a
    /// success with `None` (removal is idempotent).
    pub fn deregister(
        &mut self,
        handle: &[u8],
        pe_id: u32,
        requester: Option<ConnId>,
    ) -> Result<Option<PoolElement>, DeregisterError> {
        let spot = self.locate_ahead(handle, pe_id, true);
        spot.pool.ok_or(DeregisterError::UnknownPool)?;
        let Some(index) = spot.pe else { return Ok(None) };
        if self.pes[index].pe.conn() != requester {
            return Err(DeregisterError::NotAuthorized);
        }
        Ok(Some(self.remove_index(index, spot.pe_hash)))
    }

    /// Handle resolution: clears `out` and fills it with up to `n` distinct PEs of pool
    /// `handle` chosen by the pool's policy; the first max-increment count as selected. No
    /// allocation once `out` and the internal scratch have grown.
    pub fn resolve(&mut self, handle: &[u8], n: usize, out: &mut Vec<PeKey>) -> Result<PoolKey, UnknownPool> {
        let p = self.find_pool(handle).ok_or(UnknownPool)?;
        let key = PoolKey { index: p, generation: self.pools[p as usize].generation };
        self.select(p, n, out);
        Ok(key)
    }

    /// [`resolve`](Self::resolve) by pool key (skips the handle lookup).
    pub fn resolve_pool(&mut self, pool: PoolKey, n: usize, out: &mut Vec<PeKey>) -> Result<(), UnknownPool> {
        self.pool(pool).ok_or(UnknownPool)?;
        self.select(pool.index, n, out);
        Ok(())
    }

    fn select(&mut self, p: u32, n: usize, out: &mut Vec<PeKey>) {
        out.clear();
        let mut ctx = SelectCtx {
            pes: &mut self.pes,
            rng: &mut self.rng,
            scratch: &mut self.scratch,
            max_increment: self.config.max_increment,
            pool: p,
        };
        self.pools[p as usize].selector.select(&mut ctx, n, out);
    }

    /// Asks for the chunk of the pool index where a lookup of `handle` starts (a hint, no
    /// effect on results) and returns the handle's hash for [`Handlespace::prefetch_pool`]:
    /// the first of two steps a caller with several requests in hand takes ahead of them, so
    /// that their lookups' misses overlap instead of following one another.
    pub fn prefetch_pool_index(&self, handle: &[u8]) -> u64 {
        let hash = self.hasher.hash_one(handle);
        self.pool_index.prefetch(hash);
        hash
    }

    /// The second step: finds the pool (whose index chunk the first step asked for) and asks
    /// for its entry and its selection index.
    pub fn prefetch_pool(&self, handle: &[u8], hash: u64) {
        if let Some(p) = self.find_pool_hashed(hash, handle) {
            let pool = &self.pools[p as usize];
            crate::runtime::simd::prefetch(pool);
            pool.selector.prefetch();
        }
    }

    /// Asks for the PEs of `keys` to be brought into the cache (a hint, no effect on results),
    /// for a caller about to read them all (an answer copying their parameters): their misses
    /// then overlap instead of following one another.
    pub fn prefetch_pes(&self, keys: &[PeKey]) {
        for key in keys {
            self.pes.prefetch(key.index);
        }
    }

    /// Endpoint Unreachable: counts a report against PE `pe_id` and removes it once the count
    /// reaches MAX-BAD-PE-REPORT.
    pub fn report_unreachable(&mut self, handle: &[u8], pe_id: u32) -> Result<Unreachable, UnknownPool> {
        let spot = self.locate(handle, pe_id);
        spot.pool.ok_or(UnknownPool)?;
        let Some(index) = spot.pe else { return Ok(Unreachable::UnknownPe) };
        let slot = &mut self.pes[index];
        slot.unreachable_reports = slot.unreachable_reports.saturating_add(1);
        let count = slot.unreachable_reports;
        if count >= self.config.max_bad_pe_reports {
            Ok(Unreachable::Removed(self.remove_index(index, spot.pe_hash)))
        } else {
            Ok(Unreachable::Counted(count))
        }
    }

    /// Attaches PE `key` to connection `conn` (a registrar that took a PE over reaches it over
    /// a connection it dialled): it is then removed with that connection like a PE registered
    /// over it. Returns whether the key was live.
    pub fn set_conn(&mut self, key: PeKey, conn: Option<ConnId>) -> bool {
        let Some(slot) = self.slot(key) else { return false };
        let old = slot.pe.conn();
        if old != conn {
            self.move_conn(key.index, old, conn);
        }
        true
    }

    /// The earliest time at which [`expire`](Self::expire) may remove a PE (possibly earlier
    /// than the real deadline; see [`TimerWheel::next_expiry`]); `None` if no PE can expire.
    pub fn next_expiry(&self) -> Option<Time> {
        self.timers.next_expiry()
    }

    /// Removes up to `max` PEs whose registration life ended at or before `now`, passing each
    /// (with its key, now stale, and its pool handle) to `removed`; returns how many. A caller
    /// that bounds the work per call calls again while [`next_expiry`](Self::next_expiry) is
    /// due. Amortized O(1) per PE.
    pub fn expire(&mut self, now: Time, max: usize, mut removed: impl FnMut(PeKey, &[u8], PoolElement)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(index) = self.timers.poll(&mut self.pes, now) else { break };
            let key = self.pes[index].key(index);
            let (pe, p) = self.unlink(index, self.index_hash(index));
            removed(key, &self.pools[p as usize].handle, pe);
            self.drop_pool_if_empty(p);
            n += 1;
        }
        n
    }

    /// Connection loss: removes every PE registered over `conn`, passing each (with its pool
    /// handle) to `removed`; returns how many. O(PEs of that connection).
    pub fn remove_connection(&mut self, conn: ConnId, mut removed: impl FnMut(&[u8], PoolElement)) -> usize {
        let mut n = 0;
        while let Some(head) = self.find_conn(conn) {
            let (pe, p) = self.unlink(head, self.index_hash(head));
            removed(&self.pools[p as usize].handle, pe);
            self.drop_pool_if_empty(p);
            n += 1;
        }
        n
    }

    /// Number of PEs registered over `conn`.
    pub fn connection_pe_count(&self, conn: ConnId) -> usize {
        self.conns.get(&self.pes, conn).map_or(0, |e| e.count as usize)
    }

    /// The PEs registered over `conn`. O(their number).
    pub fn connection_pes(&self, conn: ConnId) -> impl Iterator<Item = PeKey> + '_ {
        let head = self.find_conn(conn).unwrap_or(NIL);
        self.list_iter(head, List::Conn)
    }

    fn list_iter(&self, head: u32, list: List) -> impl Iterator<Item = PeKey> + '_ {
        let mut index = head;
        core::iter::from_fn(move || {
            if index == NIL {
                return None;
            }
            let slot = &self.pes[index];
            let key = slot.key(index);
            index = slot.link(list).next;
            Some(key)
        })
    }

    /// The PE checksum of `owner` as sent in ENRP Presence (folded and complemented; 0xffff
    /// for an owner with no PE). O(1).
    pub fn owner_checksum(&self, owner: u32) -> u16 {
        self.owners.get(owner).map_or(checksum::PeChecksum::EMPTY, |o| o.checksum).value()
    }

    /// The unfolded checksum accumulator of `owner`'s PEs on this shard: accumulators of several
    /// shards add up ([`checksum::PeChecksum::merge`]) to the owner's registrar-wide checksum.
    pub fn owner_sum(&self, owner: u32) -> checksum::PeChecksum {
        self.owners.get(owner).map_or(checksum::PeChecksum::EMPTY, |o| o.checksum)
    }

    /// Number of PEs whose home is `owner`.
    pub fn owner_pe_count(&self, owner: u32) -> usize {
        self.owners.get(owner).map_or(0, |o| o.count as usize)
    }

    /// The PEs whose home is `owner`. O(their number).
    pub fn owner_pes(&self, owner: u32) -> impl Iterator<Item = PeKey> + '_ {
        let head = self.owners.get(owner).map_or(NIL, |o| o.head);
        self.list_iter(head, List::Owner)
    }

    /// Appends to `out` the next PEs of a walk of the table in slot order, with their pools:
    /// those whose home is `owner` (every PE for `None`) among the next `slots` slots (at least
    /// one) from `from`. Returns where the walk goes on, or `None` once it has read the last
    /// slot. Reading a bounded number of slots bounds each call's time, however few of them are
    /// the owner's. The walk holds nothing between calls: a PE removed ahead of the cursor is
    /// not returned, one added behind it is not seen (both are what Handle Updates tell a peer
    /// about), and none moves within the table (a PE keeps its slot). An ENRP Handle Table
    /// export orders what it read with [`group_by_pool`] before it sends it.
    pub fn table_pes(
        &self,
        owner: Option<u32>,
        from: TableCursor,
        slots: usize,
        out: &mut Vec<(PoolKey, PeKey)>,
    ) -> Option<TableCursor> {
        let end = from.0.saturating_add(slots.clamp(1, u32::MAX as usize) as u32);
        self.pes.range(from.0, end).filter(|(_, s)| owner.is_none_or(|o| s.pe.home == o)).for_each(|(index, slot)| {
            let pool = PoolKey { index: slot.pool, generation: self.pools[slot.pool as usize].generation };
            out.push((pool, slot.key(index)));
        });
        (end < self.pes.slots()).then_some(TableCursor(end))
    }

    /// Every owner holding at least one PE, with its PE count.
    pub fn owners(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.owners.iter().map(|(id, o)| (id, o.count as usize))
    }

    /// Makes `owner` the home of one PE; returns the previous home (`None` if the key is stale).
    pub fn set_owner(&mut self, key: PeKey, owner: u32) -> Option<u32> {
        let slot = self.slot(key)?;
        let old = slot.pe.home;
        if old != owner {
            let words = checksum::pe_words(u64::from(self.pools[slot.pool as usize].handle_words), slot.pe.id);
            self.owners.remove(&mut self.pes, old, key.index, words);
            self.pes[key.index].pe.home = owner;
            self.owners.add(&mut self.pes, owner, key.index, words);
        }
        Some(old)
    }

    /// Takeover (ENRP): makes `to` the home of every PE of `from`; the checksums move with them.
    /// O(PEs moved). Returns how many moved.
    pub fn take_over(&mut self, from: u32, to: u32) -> usize {
        self.owners.take_over(&mut self.pes, from, to)
    }

    /// Checks every internal index against the pools (O(size); for tests and debugging).
    /// Returns a description of the first inconsistency found.
    pub fn validate(&self) -> Result<(), String> {
        let mut total = 0;
        for (p, pool) in &self.pools {
            if pool.selector.len() == 0 {
                return Err(format!("pool {p} is empty"));
            }
            if self.find_pool(&pool.handle) != Some(p as u32) {
                return Err(format!("pool {p} missing from the handle index"));
            }
            pool.selector.validate(&self.pes, p as u32).map_err(|e| format!("pool {p}: {e}"))?;
            let mut listed = 0;
            for key in pool.selector.iter(&self.pes, p as u32) {
                listed += 1;
                let slot = self.slot(key).ok_or_else(|| format!("stale PE {key:?} in pool {p}"))?;
                if slot.pool != p as u32 || slot.pe.policy().policy_type() != pool.policy_type {
                    return Err(format!("PE {key:?} disagrees with pool {p}"));
                }
                if self.find_pe(p as u32, slot.pe.id) != Some(key.index) {
                    return Err(format!("PE {key:?} missing from the id index"));
                }
                if slot.index_hash != pe_hash(&self.hasher, pool_tag(pool.hash), slot.pe.id) {
                    return Err(format!("PE {key:?} keeps a wrong index hash"));
                }
                if (slot.pe.registration_life >= 0) != slot.has_timer() {
                    return Err(format!("PE {key:?} timer mismatch"));
                }
                total += 1;
            }
            if listed != pool.selector.len() {
                return Err(format!("pool {p} lists {listed} PEs and counts {}", pool.selector.len()));
            }
        }
        if total != self.pes.len()
            || self.pe_index.len() != total
            || self.pes.hashes().count() != total
            || self.pes.hashes().any(|(i, h)| self.pes[i].index_hash != h)
            || self.pool_index.len() != self.pools.len()
        {
            return Err("PE or pool counts differ between indexes".into());
        }
        if self.timers.len() != self.pes.iter().filter(|(_, s)| s.has_timer()).count() {
            return Err("stray timers".into());
        }
        let mut listed = 0;
        for (owner, o) in self.owners.iter() {
            if !self.owners.get(owner).is_some_and(|found| core::ptr::eq(found, o)) {
                return Err(format!("owner {owner} is not indexed"));
            }
            let mut acc = checksum::PeChecksum::EMPTY;
            let mut n = 0;
            for key in self.owner_pes(owner) {
                let slot = &self.pes[key.index];
                if slot.pe.home != owner {
                    return Err(format!("PE {key:?} listed under owner {owner}"));
                }
                acc.add_pe(&self.pools[slot.pool as usize].handle, slot.pe.id);
                n += 1;
            }
            if n != o.count || acc != o.checksum || n == 0 {
                return Err(format!("owner {owner}: count or checksum mismatch"));
            }
            listed += n as usize;
        }
        if listed != total {
            return Err("owner lists do not cover every PE".into());
        }
        let mut listed = 0;
        for e in self.conns.iter() {
            let conn = self.pes[e.head].pe.conn();
            if conn.and_then(|c| self.find_conn(c)) != Some(e.head) || self.pes[e.head].conn_link.prev != NIL {
                return Err(format!("connection list at {} is not indexed", e.head));
            }
            for key in self.list_iter(e.head, List::Conn) {
                if self.pes[key.index].pe.conn() != conn {
                    return Err(format!("PE {key:?} listed under connection {conn:?}"));
                }
                listed += 1;
            }
            if self.list_iter(e.head, List::Conn).count() != e.count as usize {
                return Err(format!("connection {conn:?}: count mismatch"));
            }
        }
        if listed != self.pes.iter().filter(|(_, s)| s.pe.conn().is_some()).count() {
            return Err("connection lists do not match the PEs".into());
        }
        Ok(())
    }
}
