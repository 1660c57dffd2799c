//! Selection policies (RFC 5356; WIRE.md section 4): one index per pool, chosen by the pool's
//! policy type, that answers "up to N distinct PEs" without scanning the pool.
//!
//! | policies | structure | resolve cost |
//! |---|---|---|
//! | Round Robin, Random | dense vector of PE keys (swap-remove; each PE knows its position) | O(N) |
//! | Weighted Random, Randomized Least Used | dense vector of PE keys with their weights + 8-ary sum tree over it | O(N log n) |
//! | Weighted Round Robin, Priority, Least Used, LUD, PLU | ordered set of (primary, sequence, PE): a sorted head vector, a B-tree and a sorted deque of the largest keys ([`super::ordindex`]); a removal beyond the head leaves a dead entry, dropped in bulk | O(N + M); O(M log n) when rotation moves a PE into the B-tree's range, O(M) when past every key |
//!
//! (M = max-increment, the number of PEs of a response that count as *selected*.)
//!
//! - **Round Robin** keeps a cursor into the dense vector: a response lists N PEs from the
//!   cursor on, and the cursor moves by M, so each resolution starts one PE later.
//! - **Random** draws N distinct positions: by rejection when N is at most half the pool (the
//!   drawn positions are kept sorted in a scratch vector), else by a partial Fisher-Yates shuffle.
//! - **Weighted Random / Randomized Least Used** draw a unit of weight uniformly from the sum tree
//!   and redraw when the PE is already in the response (rejection: exact, and no update);
//!   after a few misses in a row they zero the drawn PEs' weights, draw exactly, and restore the
//!   weights afterwards. The sum tree ([`super::sumtree`]) reads one cache line per level. RLU's
//!   weight is `0xFFFFFFFF - load`, at least 1. A Weighted Random PE of weight 0 is never drawn
//!   while another PE has a positive weight; if all weights are 0 the pool behaves as Random.
//! - The **ordered** policies keep an ordered index ([`super::ordindex`]) keyed by (primary,
//!   sequence) packed in a `u64` (primary in the high half) or, for WRR, three `u32`s (an entry
//!   with its PE key takes 20 bytes; a `u128`, aligned to 16, made it 32): the primary is
//!   `u32::MAX - priority` (Priority), the load (Least Used), `load + accumulated degradation`
//!   (LUD), `load + load degradation` (PLU), all saturating at 0xFFFFFFFF, or the stride-scheduling
//!   *pass* (WRR, 64 bits). A response is the first N entries. Each selected PE gets a fresh
//!   sequence number (so it moves behind its equals: "equal ones rotate"), LUD adds its load
//!   degradation, and WRR advances its pass by its stride `2^32 / weight`, so over a round of
//!   `sum(weight)` selections each PE is selected `weight` times (stride scheduling). A WRR PE of
//!   weight 0 sorts after all others. Sequence numbers are 32 bits: before one would wrap, the
//!   pool's are renumbered in order (once per four billion selections of a pool).
//!
//! Every PE's place in its index (dense position, or sequence number and primary) is kept in its
//! slot, so removal and update find it without a search.

use crate::wire::policy::{Policy, PolicyType};

use super::arena::Arena;
use super::element::{PeKey, PeSlot};
use super::ordindex::{OrdIndex, OrdIter};
use super::sumtree::{SumTree, Weight};

/// One unit of WRR stride: a PE of weight w advances its pass by `STRIDE_ONE / w` when selected.
const STRIDE_ONE: u64 = 1 << 32;
/// WRR pass of a PE with weight 0: after every other PE.
const NEVER_PASS: u64 = u64::MAX;
/// Rotation sequence numbers are renumbered before reaching this (small in unit tests, so that
/// they exercise it).
const SEQ_LIMIT: u32 = if cfg!(test) { 1000 } else { u32::MAX };

/// Key of a PE in an ordered index other than WRR's: primary (the low half of its `sel_key`)
/// then sequence.
const fn ord_key(sel_key: u64, seq: u32) -> u64 {
    (sel_key as u32 as u64) << 32 | seq as u64
}

/// The degradation a LUD PE accumulated, kept in the high half of its `sel_key`.
pub(crate) const fn accumulated_degradation(sel_key: u64) -> u32 {
    (sel_key >> 32) as u32
}

/// Key of a PE in a WRR index: pass (64 bits) then sequence.
const fn wrr_key(pass: u64, seq: u32) -> WrrKey {
    [(pass >> 32) as u32, pass as u32, seq]
}

/// Key of a PE in a WRR index: the pass's high and low halves, then the sequence number,
/// compared in that order. Three `u32`s rather than a `u128` (aligned to 16) or a `(u64, u32)`
/// (16 bytes with padding), so an entry with its PE key takes 20 bytes.
type WrrKey = [u32; 3];

/// Size up to which a pool's selection vectors are prefetched whole ([`Selector::prefetch`]):
/// four cache lines, 12-32 PEs by policy.
pub(crate) const SMALL_INDEX_BYTES: usize = 256;

/// Appends to a vector that grows by two elements at a time while small, by doubling beyond:
/// a pool of a few PEs holds at most one spare element (doubling would cost 5-10 bytes per PE
/// at 100,000 pools of 10), and filling it moves it half as often as growing by one, each move
/// a reallocation and a copy (measured: 900,000 of them were 12 % of the instructions of
/// filling and re-registering 100,000 pools x 10).
pub(crate) fn push_tight<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() && v.capacity() < 16 {
        v.reserve_exact(2);
    }
    v.push(x);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DenseKind {
    RoundRobin,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightedKind {
    WeightedRandom,
    RandomizedLeastUsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OrderedKind {
    Priority,
    LeastUsed,
    LeastUsedDegradation,
    PriorityLeastUsed,
}

/// A member of a weighted index: a PE and its weight, side by side in one vector, so that
/// filling a pool grows one vector rather than two (the reallocations of filling 100,000 pools
/// of 10 halve) and a draw reads the weight and the PE from the same line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightedMember {
    pe: PeKey,
    weight: u32,
}

impl Weight for WeightedMember {
    #[inline]
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// A member of a dense or weighted index.
trait Member: Copy {
    /// The PE it is.
    fn pe(&self) -> PeKey;
}

impl Member for PeKey {
    #[inline]
    fn pe(&self) -> PeKey {
        *self
    }
}

impl Member for WeightedMember {
    #[inline]
    fn pe(&self) -> PeKey {
        self.pe
    }
}

/// The per-pool selection index.
#[derive(Debug)]
pub(crate) enum Selector {
    Dense { kind: DenseKind, members: Vec<PeKey>, cursor: usize },
    Weighted { kind: WeightedKind, members: Vec<WeightedMember>, tree: SumTree },
    Ordered { kind: OrderedKind, index: OrdIndex<u64>, next_seq: u32 },
    WeightedRoundRobin { index: OrdIndex<WrrKey>, next_seq: u32, virtual_time: u64 },
}

/// What a selection may use besides the pool's own index.
pub(crate) struct SelectCtx<'a> {
    pub(crate) pes: &'a mut Arena,
    pub(crate) rng: &'a mut fastrand::Rng,
    /// Reused scratch space (positions), so a resolution never allocates in steady state.
    pub(crate) scratch: &'a mut Vec<u32>,
    /// How many PEs at the head of a response count as selected.
    pub(crate) max_increment: usize,
    /// The pool's slab index (what its PEs' slots name).
    pub(crate) pool: u32,
}

fn weight_of(kind: WeightedKind, policy: &Policy) -> u32 {
    match (kind, *policy) {
        (WeightedKind::WeightedRandom, Policy::WeightedRandom { weight }) => weight,
        (WeightedKind::RandomizedLeastUsed, Policy::RandomizedLeastUsed { load }) => (u32::MAX - load).max(1),
        _ => 0,
    }
}

fn wrr_stride(policy: &Policy) -> Option<u64> {
    match *policy {
        Policy::WeightedRoundRobin { weight } if weight > 0 => Some(STRIDE_ONE / u64::from(weight)),
        _ => None,
    }
}

/// `sel_key` of a PE under a non-WRR ordered policy: its primary key (smaller is preferred) in
/// the low half, the degradation it `accumulated` (LUD) in the high half.
fn ordered_sel_key(policy: &Policy, accumulated: u32) -> u64 {
    let primary = match *policy {
        Policy::Priority { priority } => u32::MAX - priority,
        Policy::LeastUsed { load } => load,
        Policy::LeastUsedDegradation { load, .. } => load.saturating_add(accumulated),
        Policy::PriorityLeastUsed { load, degradation } => load.saturating_add(degradation),
        _ => 0,
    };
    u64::from(accumulated) << 32 | u64::from(primary)
}

/// The test of an ordered index's entry `(k, pe)` of pool `pool`: alive while `pe`'s slot holds
/// that PE, in that pool, under key `k` (a removed PE's entry may stay behind, dead: see
/// [`OrdIndex::forget`]; the pool and key checks keep a slot reused after its generation
/// wrapped from passing).
fn live_in<'a, K: Copy + Eq>(
    pes: &'a Arena,
    pool: u32,
    key_of: impl Fn(&PeSlot, u32) -> K + 'a,
) -> impl Fn(K, PeKey) -> bool + 'a {
    move |k, pe| pes.get(pe.index, pe.generation).is_some_and(|s| s.pool == pool && key_of(s, s.sel_pos) == k)
}

/// Renumbers the sequence numbers of an ordered index 0, 1, ... in the order of the old ones, in
/// the index and in the slots (dropping its dead entries first); returns the next free one. In
/// the order of the old numbers rather than of the index: then a PE keeps its place among all
/// the others, not only among its equals, and one whose key a re-registration changes later
/// lands among its new equals where its old number put it (a model of the rules, with
/// renumbering in between, told the two apart). The new numbers rise with the old ones, so the
/// index's order is unchanged.
fn renumber<K: Copy + Ord>(index: &mut OrdIndex<K>, pes: &mut Arena, key: impl Fn(&PeSlot, u32) -> K) -> u32 {
    let mut live = Vec::with_capacity(index.len());
    index.rekey(|_, pe| {
        let slot = &pes[pe.index];
        live.push((slot.sel_pos, pe.index));
        key(slot, slot.sel_pos)
    });
    live.sort_unstable();
    for (rank, &(_, i)) in live.iter().enumerate() {
        pes[i].sel_pos = rank as u32;
    }
    index.rekey(|_, pe| {
        let slot = &pes[pe.index];
        key(slot, slot.sel_pos)
    });
    live.len() as u32
}

impl Selector {
    /// An empty index for a pool of `policy_type`; `None` for a type this handlespace does not
    /// implement.
    pub(crate) fn new(policy_type: PolicyType) -> Option<Self> {
        let dense = |kind| Self::Dense { kind, members: Vec::new(), cursor: 0 };
        let weighted = |kind| Self::Weighted { kind, members: Vec::new(), tree: SumTree::default() };
        let ordered = |kind| Self::Ordered { kind, index: OrdIndex::default(), next_seq: 0 };
        Some(match policy_type {
            PolicyType::ROUND_ROBIN => dense(DenseKind::RoundRobin),
            PolicyType::RANDOM => dense(DenseKind::Random),
            PolicyType::WEIGHTED_RANDOM => weighted(WeightedKind::WeightedRandom),
            PolicyType::RANDOMIZED_LEAST_USED => weighted(WeightedKind::RandomizedLeastUsed),
            PolicyType::WEIGHTED_ROUND_ROBIN => {
                Self::WeightedRoundRobin { index: OrdIndex::default(), next_seq: 0, virtual_time: 0 }
            }
            PolicyType::PRIORITY => ordered(OrderedKind::Priority),
            PolicyType::LEAST_USED => ordered(OrderedKind::LeastUsed),
            PolicyType::LEAST_USED_DEGRADATION => ordered(OrderedKind::LeastUsedDegradation),
            PolicyType::PRIORITY_LEAST_USED => ordered(OrderedKind::PriorityLeastUsed),
            _ => return None,
        })
    }

    /// Number of PEs indexed.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Dense { members, .. } => members.len(),
            Self::Weighted { members, .. } => members.len(),
            Self::Ordered { index, .. } => index.len(),
            Self::WeightedRoundRobin { index, .. } => index.len(),
        }
    }

    /// Every PE of the pool `pool` (in index order).
    pub(crate) fn iter<'a>(&'a self, pes: &'a Arena, pool: u32) -> SelectorIter<'a> {
        match self {
            Self::Dense { members, .. } => SelectorIter::Slice(members.iter()),
            Self::Weighted { members, .. } => SelectorIter::Weighted(members.iter()),
            Self::Ordered { index, .. } => SelectorIter::Ordered { entries: index.iter(), pes, pool },
            Self::WeightedRoundRobin { index, .. } => SelectorIter::Wrr { entries: index.iter(), pes, pool },
        }
    }

    /// Takes a sequence number of an ordered index, renumbering first if they are used up.
    // `>=`: SEQ_LIMIT is u32::MAX only outside unit tests (there it is small).
    #[allow(clippy::absurd_extreme_comparisons)]
    fn next_seq<K: Copy + Ord>(
        next_seq: &mut u32,
        index: &mut OrdIndex<K>,
        pes: &mut Arena,
        key: impl Fn(&PeSlot, u32) -> K,
    ) -> u32 {
        if *next_seq >= SEQ_LIMIT {
            *next_seq = renumber(index, pes, key);
        }
        let seq = *next_seq;
        *next_seq += 1;
        seq
    }

    /// Adds PE `index` (already in `pes`, with `policy`) to the index.
    pub(crate) fn insert(&mut self, pes: &mut Arena, i: u32, policy: &Policy) {
        let key = pes[i].key(i);
        match self {
            Self::Dense { members, .. } => push_member(members, pes, key),
            Self::Weighted { kind, members, tree } => {
                let weight = weight_of(*kind, policy);
                pes[i].sel_key = u64::from(weight);
                push_member(members, pes, WeightedMember { pe: key, weight });
                tree.push(members);
            }
            Self::Ordered { index, next_seq, .. } => {
                let seq = Self::next_seq(next_seq, index, pes, |s, q| ord_key(s.sel_key, q));
                let slot = &mut pes[i];
                slot.sel_key = ordered_sel_key(policy, 0);
                slot.sel_pos = seq;
                index.insert(ord_key(slot.sel_key, seq), key);
            }
            Self::WeightedRoundRobin { index, next_seq, virtual_time } => {
                let seq = Self::next_seq(next_seq, index, pes, |s, q| wrr_key(s.sel_key, q));
                let slot = &mut pes[i];
                slot.sel_key = wrr_stride(policy).map_or(NEVER_PASS, |s| virtual_time.saturating_add(s));
                slot.sel_pos = seq;
                index.insert(wrr_key(slot.sel_key, seq), key);
            }
        }
    }

    /// Asks for the whole index of a small pool (a hint: a deregistration issues it before it
    /// probes for the PE, so that the index's misses overlap the PE's instead of following
    /// them; a large pool's index is left alone, its removal reads a few of its lines).
    pub(crate) fn prefetch(&self) {
        use crate::runtime::simd::prefetch_slice;
        match self {
            Self::Dense { members, .. } => prefetch_slice(members, SMALL_INDEX_BYTES),
            Self::Weighted { members, .. } => prefetch_slice(members, SMALL_INDEX_BYTES),
            Self::Ordered { index, .. } => index.prefetch(),
            Self::WeightedRoundRobin { index, .. } => index.prefetch(),
        }
    }

    /// Removes PE `i` from the index (an ordered index forgets it: it must leave its pool or
    /// its slot before the index is used again).
    pub(crate) fn remove(&mut self, pes: &mut Arena, i: u32) {
        let slot = &pes[i];
        match self {
            Self::Dense { kind, members, cursor } => {
                let pos = member_pos(members, pes, i);
                swap_remove_member(members, pes, pos);
                if *kind == DenseKind::RoundRobin && *cursor >= members.len() {
                    *cursor = 0;
                }
            }
            Self::Weighted { members, tree, .. } => {
                let pos = member_pos(members, pes, i);
                let (w_pos, w_last) = (members[pos].weight, members[members.len() - 1].weight);
                swap_remove_member(members, pes, pos);
                tree.swap_remove(members, pos, w_pos, w_last);
            }
            Self::Ordered { index, .. } => index.forget(ord_key(slot.sel_key, slot.sel_pos)),
            Self::WeightedRoundRobin { index, .. } => index.forget(wrr_key(slot.sel_key, slot.sel_pos)),
        }
    }

    /// Re-indexes PE `i` after its policy values changed to `policy` (re-registration),
    /// keeping its place in rotations: its dense position or its sequence number (and WRR pass)
    /// stay; a LUD PE's accumulated degradation starts again from 0.
    pub(crate) fn update(&mut self, pes: &mut Arena, i: u32, policy: &Policy) {
        let key = pes[i].key(i);
        let slot = &mut pes[i];
        match self {
            Self::Dense { .. } => {}
            Self::Weighted { kind, members, tree } => {
                // The slot keeps the weight: a re-registration that leaves it as it was (the
                // usual one) does not touch the index.
                let w = weight_of(*kind, policy);
                if slot.sel_key != u64::from(w) {
                    slot.sel_key = u64::from(w);
                    let pos = member_pos(members, pes, i);
                    tree.add(pos, u64::from(w).wrapping_sub(u64::from(members[pos].weight)));
                    members[pos].weight = w;
                }
            }
            Self::Ordered { index, .. } => {
                let sel_key = ordered_sel_key(policy, 0);
                let (old, new) = (ord_key(slot.sel_key, slot.sel_pos), ord_key(sel_key, slot.sel_pos));
                slot.sel_key = sel_key;
                if new != old {
                    index.remove(old);
                    index.insert(new, key);
                }
            }
            Self::WeightedRoundRobin { index, virtual_time, .. } => {
                let pass = match wrr_stride(policy) {
                    None => NEVER_PASS,
                    Some(s) if slot.sel_key == NEVER_PASS => virtual_time.saturating_add(s),
                    Some(_) => slot.sel_key,
                };
                if pass != slot.sel_key {
                    index.remove(wrr_key(slot.sel_key, slot.sel_pos));
                    slot.sel_key = pass;
                    index.insert(wrr_key(pass, slot.sel_pos), key);
                }
            }
        }
    }

    /// Appends up to `n` distinct PEs to `out`, in response order, and applies the effects of
    /// selection (rotation, degradation, WRR pass) to the first `max_increment` of them.
    pub(crate) fn select(&mut self, ctx: &mut SelectCtx<'_>, n: usize, out: &mut Vec<PeKey>) {
        match self {
            Self::Dense { kind: DenseKind::RoundRobin, members, cursor } => {
                let len = members.len();
                let n = n.min(len);
                for i in 0..n {
                    let mut p = *cursor + i;
                    if p >= len {
                        p -= len;
                    }
                    out.push(members[p]);
                }
                if len > 0 {
                    *cursor = (*cursor + n.min(ctx.max_increment)) % len;
                }
            }
            Self::Dense { kind: DenseKind::Random, members, .. } => {
                sample_uniform(members, n, ctx.rng, ctx.scratch, out);
            }
            Self::Weighted { kind, members, tree } => {
                if tree.total() == 0 {
                    sample_uniform(members, n, ctx.rng, ctx.scratch, out);
                    return;
                }
                // Draw from the full tree and redraw a PE already taken (exactly the distribution
                // without replacement, and no tree update). After REJECTIONS misses in a row
                // (a few PEs hold most of the weight), take the drawn PEs' weights out of the
                // tree and draw exactly; restore them afterwards.
                const REJECTIONS: usize = 4;
                ctx.scratch.clear();
                let mut subtracted = 0;
                'pick: for _ in 0..n.min(members.len()) {
                    if subtracted == 0 {
                        for _ in 0..REJECTIONS {
                            let p = tree.find(members, ctx.rng.u64(..tree.total())) as u32;
                            if !ctx.scratch.contains(&p) {
                                ctx.scratch.push(p);
                                out.push(members[p as usize].pe);
                                continue 'pick;
                            }
                        }
                        for &p in ctx.scratch.iter() {
                            let m = &mut members[p as usize];
                            tree.add(p as usize, u64::from(m.weight).wrapping_neg());
                            m.weight = 0;
                        }
                        subtracted = ctx.scratch.len();
                    }
                    let total = tree.total();
                    if total == 0 {
                        break;
                    }
                    let p = tree.find(members, ctx.rng.u64(..total));
                    let m = &mut members[p];
                    out.push(m.pe);
                    tree.add(p, u64::from(m.weight).wrapping_neg());
                    m.weight = 0;
                    ctx.scratch.push(p as u32);
                    subtracted += 1;
                }
                // Restore the zeroed weights from the PEs' policies (rare path).
                for &p in &ctx.scratch[..subtracted] {
                    let m = &mut members[p as usize];
                    m.weight = weight_of(*kind, &ctx.pes[m.pe.index].pe.policy());
                    tree.add(p as usize, u64::from(m.weight));
                }
            }
            Self::Ordered { kind, index, next_seq } => {
                let lud = *kind == OrderedKind::LeastUsedDegradation;
                Self::select_ordered(
                    index,
                    next_seq,
                    ctx,
                    n,
                    out,
                    |s, q| ord_key(s.sel_key, q),
                    |slot| {
                        // LUD: a selected PE also accumulates its degradation.
                        // (Its two values read straight from the stored parameter: decoding the
                        // whole policy made LUD's resolution ~10 % slower.)
                        if lud {
                            let [load, degradation] = slot.pe.policy_values();
                            let accumulated = accumulated_degradation(slot.sel_key).saturating_add(degradation);
                            slot.sel_key =
                                ordered_sel_key(&Policy::LeastUsedDegradation { load, degradation }, accumulated);
                        }
                    },
                );
            }
            Self::WeightedRoundRobin { index, next_seq, virtual_time } => {
                Self::select_ordered(
                    index,
                    next_seq,
                    ctx,
                    n,
                    out,
                    |s, q| wrr_key(s.sel_key, q),
                    |slot| {
                        // A selected PE's pass advances by its stride; the pool's virtual time
                        // follows the last pass served.
                        if let Some(stride) = wrr_stride(&slot.pe.policy()) {
                            *virtual_time = slot.sel_key;
                            slot.sel_key = slot.sel_key.saturating_add(stride);
                        }
                    },
                );
            }
        }
    }

    /// Selection from an ordered index: the first `n` entries, of which the first
    /// `max_increment` are selected. Each selected one takes a new sequence number (and
    /// whatever else `advance` changes in its slot) and moves to its new key `key_of(slot, seq)`,
    /// behind its equals.
    // Inlined into `select` as the two branches it replaced were (without, LUD's resolution
    // measured ~3 % slower; with, the same as before: 11 alternated rounds, 100,000 PEs).
    #[inline(always)]
    fn select_ordered<K: Copy + Ord>(
        index: &mut OrdIndex<K>,
        next_seq: &mut u32,
        ctx: &mut SelectCtx<'_>,
        n: usize,
        out: &mut Vec<PeKey>,
        key_of: impl Fn(&PeSlot, u32) -> K + Copy,
        mut advance: impl FnMut(&mut PeSlot),
    ) {
        let first = index.first(n, live_in(ctx.pes, ctx.pool, key_of));
        let start = out.len();
        out.extend(first.iter().map(|e| e.1));
        let selected = first.len().min(ctx.max_increment);
        for j in 0..selected {
            let pe = out[start + j];
            let seq = Self::next_seq(next_seq, index, ctx.pes, key_of);
            let slot = &mut ctx.pes[pe.index];
            let old = key_of(slot, slot.sel_pos);
            advance(slot);
            slot.sel_pos = seq;
            Self::move_selected(index, selected, old, key_of(slot, seq), pe);
        }
    }

    /// Checks that every PE's slot records its place in the index of pool `pool` (for
    /// `Handlespace::validate`): exactly, or in a dense or weighted index small enough to scan,
    /// so that [`member_pos`] finds it.
    pub(crate) fn validate(&self, pes: &Arena, pool: u32) -> Result<(), String> {
        match self {
            Self::Dense { members, .. } => Self::validate_positions(members, pes)?,
            Self::Weighted { kind, members, tree } => {
                Self::validate_positions(members, pes)?;
                let mut total = 0u64;
                for m in members {
                    let slot = live_slot(pes, m.pe)?;
                    if m.weight != weight_of(*kind, &slot.pe.policy()) || slot.sel_key != u64::from(m.weight) {
                        return Err(format!("{:?} has the wrong weight", m.pe));
                    }
                    total += u64::from(m.weight);
                }
                if tree.total() != total {
                    return Err("weights do not add up".into());
                }
            }
            Self::Ordered { index, next_seq, .. } => {
                Self::validate_ordered(index, *next_seq, pes, pool, |s, q| ord_key(s.sel_key, q))?;
            }
            Self::WeightedRoundRobin { index, next_seq, .. } => {
                Self::validate_ordered(index, *next_seq, pes, pool, |s, q| wrr_key(s.sel_key, q))?;
            }
        }
        Ok(())
    }

    /// Checks that every member of a dense or weighted index is alive and has its position in
    /// its slot, or is in an index small enough to scan, so that [`member_pos`] finds it.
    fn validate_positions(members: &[impl Member], pes: &Arena) -> Result<(), String> {
        for (i, m) in members.iter().enumerate() {
            let k = m.pe();
            let kept = live_slot(pes, k)?.sel_pos as usize;
            if (kept != i && members.len() > SCAN_MAX) || member_pos(members, pes, k.index) != i {
                return Err(format!("{k:?} has the wrong position"));
            }
        }
        Ok(())
    }

    /// Checks an ordered index: its order, that the entries its PEs' slots do not give (the
    /// dead ones) are as many as it counts and none is in the head, and that every sequence
    /// number was handed out.
    fn validate_ordered<K: Copy + Ord>(
        index: &OrdIndex<K>,
        next_seq: u32,
        pes: &Arena,
        pool: u32,
        key_of: impl Fn(&PeSlot, u32) -> K + Copy,
    ) -> Result<(), String> {
        index.validate()?;
        let live = live_in(pes, pool, key_of);
        let mut dead = 0;
        for (i, (key, k)) in index.iter().enumerate() {
            if !live(key, k) {
                if i < index.head_len() {
                    return Err(format!("{k:?} is dead in the head"));
                }
                dead += 1;
            } else if pes[k.index].sel_pos >= next_seq {
                return Err(format!("{k:?} has a future key"));
            }
        }
        if dead != index.dead() {
            return Err(format!("{dead} dead entries, {} counted", index.dead()));
        }
        Ok(())
    }

    /// A selected PE moves from key `old` to `new` (larger). With one PE selected per response
    /// (the usual max-increment) it is the first entry, which moves without a search.
    fn move_selected<K: Copy + Ord>(index: &mut OrdIndex<K>, selected: usize, old: K, new: K, pe: PeKey) {
        if selected == 1 {
            index.move_first(new);
        } else {
            index.remove(old);
            index.insert(new, pe);
        }
    }
}

/// The slot of index member `k`, or why `validate` fails: the member is stale.
fn live_slot(pes: &Arena, k: PeKey) -> Result<&PeSlot, String> {
    pes.get(k.index, k.generation).ok_or_else(|| format!("stale {k:?} in index"))
}

/// Members up to which a dense or weighted index finds a PE's position by scanning its members
/// (at most two cache lines, which a removal has asked for already) rather than keeping it in
/// the PE's slot: a removal then moves the last member without writing to that member's slot,
/// which in a small pool is seldom in the cache.
const SCAN_MAX: usize = 16;

/// Position of member `i` in `members`: as kept in its slot, which is exact while the index
/// has more than [`SCAN_MAX`] members and otherwise exact unless a removal moved it since; then
/// found by scanning (a slot index appears once among a pool's members).
fn member_pos(members: &[impl Member], pes: &Arena, i: u32) -> usize {
    let kept = pes[i].sel_pos as usize;
    if members.len() > SCAN_MAX || members.get(kept).is_some_and(|m| m.pe().index == i) {
        return kept;
    }
    let pos = members.iter().position(|m| m.pe().index == i);
    debug_assert!(pos.is_some(), "PE slot {i} is not a member");
    pos.unwrap_or(members.len())
}

/// Appends `key` to a dense or weighted index; when that makes the index too large to scan,
/// every member's slot learns its position.
fn push_member<M: Member>(members: &mut Vec<M>, pes: &mut Arena, member: M) {
    pes[member.pe().index].sel_pos = members.len() as u32;
    push_tight(members, member);
    if members.len() == SCAN_MAX + 1 {
        for (pos, m) in members.iter().enumerate() {
            pes[m.pe().index].sel_pos = pos as u32;
        }
    }
}

/// Removes the member at `pos` of a dense or weighted index by moving the last one into its
/// place, whose slot learns its new position if the index is still too large to scan.
fn swap_remove_member(members: &mut Vec<impl Member>, pes: &mut Arena, pos: usize) {
    members.swap_remove(pos);
    if members.len() > SCAN_MAX {
        if let Some(moved) = members.get(pos) {
            pes[moved.pe().index].sel_pos = pos as u32;
        }
    }
}

/// Appends `min(n, len)` distinct members drawn uniformly, in random order.
fn sample_uniform(
    members: &[impl Member],
    n: usize,
    rng: &mut fastrand::Rng,
    scratch: &mut Vec<u32>,
    out: &mut Vec<PeKey>,
) {
    let len = members.len();
    let n = n.min(len);
    scratch.clear();
    if n * 2 <= len {
        // Rejection: at most half the pool is taken, so a draw succeeds with probability >= 1/2.
        // Drawn positions are kept sorted for the duplicate check.
        while scratch.len() < n {
            let p = rng.u32(..len as u32);
            if let Err(at) = scratch.binary_search(&p) {
                scratch.insert(at, p);
                out.push(members[p as usize].pe());
            }
        }
    } else {
        // Partial Fisher-Yates over positions: O(len), and len < 2n here.
        scratch.extend(0..len as u32);
        for i in 0..n {
            let j = rng.usize(i..len);
            scratch.swap(i, j);
            out.push(members[scratch[i] as usize].pe());
        }
    }
}

/// Iterator over the PEs of one pool (an ordered index's dead entries skipped).
pub(crate) enum SelectorIter<'a> {
    Slice(core::slice::Iter<'a, PeKey>),
    Weighted(core::slice::Iter<'a, WeightedMember>),
    Ordered { entries: OrdIter<'a, u64>, pes: &'a Arena, pool: u32 },
    Wrr { entries: OrdIter<'a, WrrKey>, pes: &'a Arena, pool: u32 },
}

impl Iterator for SelectorIter<'_> {
    type Item = PeKey;
    fn next(&mut self) -> Option<PeKey> {
        match self {
            Self::Slice(it) => it.next().copied(),
            Self::Weighted(it) => it.next().map(|m| m.pe),
            Self::Ordered { entries, pes, pool } => {
                let live = live_in(pes, *pool, |s, q| ord_key(s.sel_key, q));
                entries.find(|&(k, pe)| live(k, pe)).map(|e| e.1)
            }
            Self::Wrr { entries, pes, pool } => {
                let live = live_in(pes, *pool, |s, q| wrr_key(s.sel_key, q));
                entries.find(|&(k, pe)| live(k, pe)).map(|e| e.1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_tight;

    #[test]
    fn small_vectors_grow_by_two_with_at_most_one_spare_then_double() {
        let mut v: Vec<u32> = Vec::new();
        let mut moves = 0;
        for x in 0..40u32 {
            let cap = v.capacity();
            push_tight(&mut v, x);
            moves += usize::from(v.capacity() != cap);
            if v.len() <= 16 {
                assert!(v.capacity() <= v.len() + 1, "len {} capacity {}", v.len(), v.capacity());
            }
        }
        assert_eq!(v, (0..40).collect::<Vec<_>>());
        // 2, 4, ..., 16 (eight growths), then doubling to 32 and 64.
        assert_eq!(moves, 10);
        assert_eq!(v.capacity(), 64);
    }
}
