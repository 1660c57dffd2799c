//! Selection policies (RFC 5356; WIRE.md section 4): one index per pool, chosen by the pool's
//! policy type, that answers "up to N distinct PEs" without scanning the pool.
//!
//! | policies | structure | resolve cost |
//! |---|---|---|
//! | Round Robin, Random | dense vector of PE keys (swap-remove; each PE knows its position) | O(N) |
//! | Weighted Random, Randomized Least Used | dense vector + 8-ary sum tree of weights | O(N log n) |
//! | Weighted Round Robin, Priority, Least Used, LUD, PLU | ordered set of (primary, sequence, PE) | O(N + M log n) |
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
//! - The **ordered** policies keep a `BTreeMap` keyed by (primary, sequence) packed in a `u128`: the primary is
//!   `u32::MAX - priority` (Priority), the load (Least Used), `load + accumulated degradation`
//!   (LUD), `load + load degradation` (PLU), all saturating at 0xFFFFFFFF, or the stride-scheduling
//!   *pass* (WRR). A response is the first N entries. Each selected PE gets a fresh sequence number
//!   (so it moves behind its equals: "equal ones rotate"), LUD adds its load degradation, and WRR
//!   advances its pass by its stride `2^32 / weight`, so over a round of `sum(weight)` selections
//!   each PE is selected `weight` times (stride scheduling). A WRR PE of weight 0 sorts after all
//!   others. A B-tree keeps both ends hot in cache, which is what rotation touches.

use std::collections::btree_map::{self, BTreeMap};

use slab::Slab;

use crate::wire::policy::{Policy, PolicyType};

use super::element::{PeKey, PeSlot};
use super::sumtree::SumTree;

/// One unit of WRR stride: a PE of weight w advances its pass by `STRIDE_ONE / w` when selected.
const STRIDE_ONE: u64 = 1 << 32;
/// WRR pass of a PE with weight 0: after every other PE.
const NEVER_PASS: u64 = u64::MAX;

/// The key of a PE in an ordered index: primary in the high 64 bits, rotation sequence in the
/// low 64 (sequence numbers are unique within a pool, so keys are unique). One `u128` compares
/// faster than a tuple.
const fn ord_key(primary: u64, seq: u64) -> u128 {
    (primary as u128) << 64 | seq as u128
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
    WeightedRoundRobin,
    Priority,
    LeastUsed,
    LeastUsedDegradation,
    PriorityLeastUsed,
}

/// The per-pool selection index.
#[derive(Debug)]
pub(crate) enum Selector {
    Dense { kind: DenseKind, members: Vec<PeKey>, cursor: usize },
    Weighted { kind: WeightedKind, members: Vec<PeKey>, weights: Vec<u32>, tree: SumTree },
    Ordered { kind: OrderedKind, set: BTreeMap<u128, PeKey>, next_seq: u64, virtual_time: u64 },
}

/// What a selection may use besides the pool's own index.
pub(crate) struct SelectCtx<'a> {
    pub(crate) pes: &'a mut Slab<PeSlot>,
    pub(crate) rng: &'a mut fastrand::Rng,
    /// Reused scratch space (positions), so a resolution never allocates in steady state.
    pub(crate) scratch: &'a mut Vec<u32>,
    /// How many PEs at the head of a response count as selected.
    pub(crate) max_increment: usize,
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

/// Primary key of the non-WRR ordered policies (smaller is preferred).
fn ordered_primary(policy: &Policy, accumulated: u32) -> u64 {
    u64::from(match *policy {
        Policy::Priority { priority } => u32::MAX - priority,
        Policy::LeastUsed { load } => load,
        Policy::LeastUsedDegradation { load, .. } => load.saturating_add(accumulated),
        Policy::PriorityLeastUsed { load, degradation } => load.saturating_add(degradation),
        _ => 0,
    })
}

impl Selector {
    /// An empty index for a pool of `policy_type`; `None` for a type this handlespace does not
    /// implement.
    pub(crate) fn new(policy_type: PolicyType) -> Option<Self> {
        let dense = |kind| Self::Dense { kind, members: Vec::new(), cursor: 0 };
        let weighted =
            |kind| Self::Weighted { kind, members: Vec::new(), weights: Vec::new(), tree: SumTree::default() };
        let ordered = |kind| Self::Ordered { kind, set: BTreeMap::new(), next_seq: 0, virtual_time: 0 };
        Some(match policy_type {
            PolicyType::ROUND_ROBIN => dense(DenseKind::RoundRobin),
            PolicyType::RANDOM => dense(DenseKind::Random),
            PolicyType::WEIGHTED_RANDOM => weighted(WeightedKind::WeightedRandom),
            PolicyType::RANDOMIZED_LEAST_USED => weighted(WeightedKind::RandomizedLeastUsed),
            PolicyType::WEIGHTED_ROUND_ROBIN => ordered(OrderedKind::WeightedRoundRobin),
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
            Self::Dense { members, .. } | Self::Weighted { members, .. } => members.len(),
            Self::Ordered { set, .. } => set.len(),
        }
    }

    /// Every PE of the pool (in index order).
    pub(crate) fn iter(&self) -> SelectorIter<'_> {
        match self {
            Self::Dense { members, .. } | Self::Weighted { members, .. } => SelectorIter::Slice(members.iter()),
            Self::Ordered { set, .. } => SelectorIter::Set(set.values()),
        }
    }

    /// Adds PE `index` (already in `pes`) to the index.
    pub(crate) fn insert(&mut self, pes: &mut Slab<PeSlot>, index: u32) {
        let slot = &mut pes[index as usize];
        let key = slot.key(index);
        match self {
            Self::Dense { members, .. } => {
                slot.sel_seq = members.len() as u64;
                members.push(key);
            }
            Self::Weighted { kind, members, weights, tree } => {
                let w = weight_of(*kind, &slot.pe.policy);
                slot.sel_seq = members.len() as u64;
                members.push(key);
                weights.push(w);
                tree.push(weights);
            }
            Self::Ordered { kind, set, next_seq, virtual_time } => {
                slot.sel_primary = match kind {
                    OrderedKind::WeightedRoundRobin => {
                        wrr_stride(&slot.pe.policy).map_or(NEVER_PASS, |s| virtual_time.saturating_add(s))
                    }
                    _ => ordered_primary(&slot.pe.policy, slot.pe.degradation),
                };
                slot.sel_seq = *next_seq;
                *next_seq += 1;
                set.insert(ord_key(slot.sel_primary, slot.sel_seq), key);
            }
        }
    }

    /// Removes PE `index` from the index.
    pub(crate) fn remove(&mut self, pes: &mut Slab<PeSlot>, index: u32) {
        let slot = &pes[index as usize];
        let pos = slot.sel_seq as usize;
        match self {
            Self::Dense { kind, members, cursor } => {
                members.swap_remove(pos);
                if let Some(moved) = members.get(pos) {
                    pes[moved.index as usize].sel_seq = pos as u64;
                }
                if *kind == DenseKind::RoundRobin && *cursor >= members.len() {
                    *cursor = 0;
                }
            }
            Self::Weighted { members, weights, tree, .. } => {
                let last = members.len() - 1;
                let w_last = weights[last];
                if pos != last {
                    tree.add(pos, u64::from(w_last).wrapping_sub(u64::from(weights[pos])));
                    weights[pos] = w_last;
                    members[pos] = members[last];
                    pes[members[pos].index as usize].sel_seq = pos as u64;
                }
                members.pop();
                weights.pop();
                tree.pop(weights, w_last);
            }
            Self::Ordered { set, .. } => {
                set.remove(&ord_key(slot.sel_primary, slot.sel_seq));
            }
        }
    }

    /// Re-indexes PE `index` after its policy values changed (re-registration), keeping its
    /// place in rotations: its dense position or its sequence number (and WRR pass) stay.
    pub(crate) fn update(&mut self, pes: &mut Slab<PeSlot>, index: u32) {
        let slot = &mut pes[index as usize];
        match self {
            Self::Dense { .. } => {}
            Self::Weighted { kind, weights, tree, .. } => {
                let pos = slot.sel_seq as usize;
                let w = weight_of(*kind, &slot.pe.policy);
                tree.add(pos, u64::from(w).wrapping_sub(u64::from(weights[pos])));
                weights[pos] = w;
            }
            Self::Ordered { kind, set, virtual_time, .. } => {
                let key = slot.key(index);
                set.remove(&ord_key(slot.sel_primary, slot.sel_seq));
                slot.sel_primary = match kind {
                    OrderedKind::WeightedRoundRobin => match wrr_stride(&slot.pe.policy) {
                        None => NEVER_PASS,
                        Some(s) if slot.sel_primary == NEVER_PASS => virtual_time.saturating_add(s),
                        Some(_) => slot.sel_primary,
                    },
                    _ => ordered_primary(&slot.pe.policy, slot.pe.degradation),
                };
                set.insert(ord_key(slot.sel_primary, slot.sel_seq), key);
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
            Self::Weighted { kind, members, weights, tree } => {
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
                            let p = tree.find(weights, ctx.rng.u64(..tree.total())) as u32;
                            if !ctx.scratch.contains(&p) {
                                ctx.scratch.push(p);
                                out.push(members[p as usize]);
                                continue 'pick;
                            }
                        }
                        for &p in ctx.scratch.iter() {
                            tree.add(p as usize, u64::from(weights[p as usize]).wrapping_neg());
                            weights[p as usize] = 0;
                        }
                        subtracted = ctx.scratch.len();
                    }
                    let total = tree.total();
                    if total == 0 {
                        break;
                    }
                    let p = tree.find(weights, ctx.rng.u64(..total));
                    out.push(members[p]);
                    tree.add(p, u64::from(weights[p]).wrapping_neg());
                    weights[p] = 0;
                    ctx.scratch.push(p as u32);
                    subtracted += 1;
                }
                // Restore the zeroed weights from the PEs' policies (rare path).
                for &p in &ctx.scratch[..subtracted] {
                    let w = weight_of(*kind, &ctx.pes[members[p as usize].index as usize].pe.policy);
                    weights[p as usize] = w;
                    tree.add(p as usize, u64::from(w));
                }
            }
            Self::Ordered { kind, set, next_seq, virtual_time } => {
                let start = out.len();
                out.extend(set.values().take(n).copied());
                let selected = (out.len() - start).min(ctx.max_increment);
                // The selected ones are the first entries of the set: pop them, give each its
                // new key, and put them back only afterwards so none is listed twice.
                for _ in 0..selected {
                    let Some((old, pe)) = set.pop_first() else { break };
                    let old_primary = (old >> 64) as u64;
                    let slot = &mut ctx.pes[pe.index as usize];
                    match kind {
                        OrderedKind::WeightedRoundRobin => {
                            if let Some(stride) = wrr_stride(&slot.pe.policy) {
                                *virtual_time = old_primary;
                                slot.sel_primary = old_primary.saturating_add(stride);
                            }
                        }
                        OrderedKind::LeastUsedDegradation => {
                            if let Policy::LeastUsedDegradation { degradation, .. } = slot.pe.policy {
                                slot.pe.degradation = slot.pe.degradation.saturating_add(degradation);
                            }
                            slot.sel_primary = ordered_primary(&slot.pe.policy, slot.pe.degradation);
                        }
                        _ => {}
                    }
                    slot.sel_seq = *next_seq;
                    *next_seq += 1;
                }
                for pe in &out[start..start + selected] {
                    let slot = &ctx.pes[pe.index as usize];
                    set.insert(ord_key(slot.sel_primary, slot.sel_seq), *pe);
                }
            }
        }
    }
}

/// Appends `min(n, len)` distinct members drawn uniformly, in random order.
fn sample_uniform(members: &[PeKey], n: usize, rng: &mut fastrand::Rng, scratch: &mut Vec<u32>, out: &mut Vec<PeKey>) {
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
                out.push(members[p as usize]);
            }
        }
    } else {
        // Partial Fisher-Yates over positions: O(len), and len < 2n here.
        scratch.extend(0..len as u32);
        for i in 0..n {
            let j = rng.usize(i..len);
            scratch.swap(i, j);
            out.push(members[scratch[i] as usize]);
        }
    }
}

/// Iterator over the PEs of one pool.
pub(crate) enum SelectorIter<'a> {
    Slice(core::slice::Iter<'a, PeKey>),
    Set(btree_map::Values<'a, u128, PeKey>),
}

impl Iterator for SelectorIter<'_> {
    type Item = PeKey;
    fn next(&mut self) -> Option<PeKey> {
        match self {
            Self::Slice(it) => it.next().copied(),
            Self::Set(it) => it.next().copied(),
        }
    }
}
