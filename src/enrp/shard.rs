//! The ENRP work of every shard on the pools it owns: Handle Updates about this registrar's
//! own PEs encoded once as they change ([`UpdateEncoder`]), and peers' updates, table entries,
//! audits, table exports and takeovers applied to this shard's part of the handlespace
//! ([`EnrpShard`]), through the ASAP procedures so that supervision, budgets and change events
//! stay in step.

use std::collections::{HashMap, HashSet};

use super::msg::EnrpMsg;
use crate::asap::{Change, ChangeSink, Learnt, PeChange, Procedures, Reason};
use crate::handlespace::checksum::{handle_words, pe_words};
use crate::handlespace::{group_by_pool, PeKey, PoolKey, TableCursor};
use crate::service::{ConnId, Outbox, Payload, ShardId};
use crate::time::Time;
use crate::wire::enrp::{self, UpdateAction};
use crate::wire::{pool_element, ParamType, Params, Writer};

/// Encodes a Handle Update for every change to a PE this registrar owns (WIRE.md 7.4), and
/// tracks what the changes do to its own PE checksum. A [`ChangeSink`].
#[derive(Debug)]
pub struct UpdateEncoder {
    me: u32,
    /// ENRP runs: without peers there is nothing to encode.
    enabled: bool,
    updates: Vec<u8>,
    add: u64,
    sub: u64,
}

impl UpdateEncoder {
    /// The encoder of registrar `me`; a disabled one does nothing.
    pub fn new(me: u32, enabled: bool) -> Self {
        Self { me, enabled, updates: Vec::new(), add: 0, sub: 0 }
    }

    /// The updates encoded since the last call, as one message for the coordinator.
    pub fn take(&mut self) -> Option<EnrpMsg> {
        if self.updates.is_empty() && self.add == 0 && self.sub == 0 {
            return None;
        }
        let msg = EnrpMsg::Outgoing { updates: Payload::from_slice(&self.updates), add: self.add, sub: self.sub };
        self.updates.clear();
        (self.add, self.sub) = (0, 0);
        Some(msg)
    }

    fn emit(&mut self, action: UpdateAction, c: &PeChange<'_>) {
        let pe = c.pe;
        let _ = enrp::emit_handle_update(&mut Writer::new(&mut self.updates), self.me, 0, action, c.pool_handle, |w| {
            pool_element::emit_encoded(w, pe.id, self.me, pe.registration_life, pe.wire_body_with_asap(), None)
        });
    }
}

impl ChangeSink for UpdateEncoder {
    fn changed(&mut self, c: &PeChange<'_>) {
        if !self.enabled {
            return;
        }
        let was_mine = match c.change {
            Change::Added => false,
            Change::Updated | Change::Removed => c.home_before == self.me,
        };
        let is_mine = c.change != Change::Removed && c.pe.home == self.me;
        if was_mine != is_mine {
            let words = pe_words(handle_words(c.pool_handle), c.pe.id);
            if is_mine {
                self.add = self.add.wrapping_add(words);
            } else {
                self.sub = self.sub.wrapping_add(words);
            }
        }
        // A takeover is announced by Takeover Server, not by Handle Updates (WIRE.md 7.4).
        match c.change {
            Change::Removed if was_mine => self.emit(UpdateAction::DeletePe, c),
            Change::Added | Change::Updated if is_mine && c.reason != Reason::Takeover => {
                self.emit(UpdateAction::AddPe, c)
            }
            _ => {}
        }
    }
}

/// Slots a table export reads at a time (in slot order), grouping the PEs it found there by
/// pool. Pools of many PEs then take one Pool Handle per several PEs even when their PEs are
/// spread over the slots (1,000 pools, 1,000,000 PEs registered round the pools: about 8 PEs
/// per Pool Handle, 3.5 % more bytes than whole pools at a time), for 128 KiB per export in
/// progress, where a snapshot of the table took 16 bytes per PE.
pub const EXPORT_WINDOW: usize = 8192;

/// Slots an export reads at most for one message: when this registrar owns few of the PEs,
/// an export of its own reads many slots per PE it finds, and a shard's other connections wait
/// while it reads (131,072 slots: about 1-4 ms here). A message then carries fewer PEs.
const EXPORT_SCAN: usize = 16 * EXPORT_WINDOW;

/// A table export in progress: a walk of this shard's PEs in slot order, read a window at a
/// time (so that an export of a table of millions holds a window of keys, not a copy of the
/// table), what was read grouped by pool.
#[derive(Debug)]
struct Export {
    /// PEs read and not yet sent, each with its pool; `pending[next..]` is what is left.
    pending: Vec<(PoolKey, PeKey)>,
    next: usize,
    /// Where the walk goes on; `None` once it has read the last slot.
    cursor: Option<TableCursor>,
}

/// One shard's state of ENRP work in progress.
#[derive(Debug)]
pub struct EnrpShard {
    me: u32,
    shard: ShardId,
    max_chunk: usize,
    max_message: usize,
    /// Audits in progress: owner → its PEs not yet confirmed by its table.
    replacing: HashMap<u32, HashSet<PeKey>>,
    /// Table exports in progress, by requester.
    exports: HashMap<u32, Export>,
}

impl EnrpShard {
    /// Shard `shard` of registrar `me`, sending at most `max_chunk` PEs per Handle Table
    /// Response and no message over `max_message` bytes.
    pub fn new(me: u32, shard: ShardId, max_chunk: usize, max_message: usize) -> Self {
        Self { me, shard, max_chunk: max_chunk.max(1), max_message, replacing: HashMap::new(), exports: HashMap::new() }
    }

    /// Handles a message the coordinator sent this shard. `sink` sees every PE change.
    pub fn on_message<M: From<EnrpMsg>>(
        &mut self,
        msg: EnrpMsg,
        p: &mut Procedures,
        now: Time,
        coordinator: ShardId,
        out: &mut impl Outbox<M>,
        sink: &mut impl ChangeSink,
    ) {
        match msg {
            EnrpMsg::Updates { messages } => self.updates(&messages, p, now, sink),
            EnrpMsg::Table { groups } => self.table(&groups, p, now, sink),
            EnrpMsg::ReplaceBegin { owner } => {
                self.replacing.insert(owner, p.owner_pes(owner).into_iter().collect());
            }
            EnrpMsg::ReplaceEnd { owner } => {
                for key in self.replacing.remove(&owner).unwrap_or_default() {
                    p.drop_pe(key, Reason::Audit, now, sink);
                }
            }
            EnrpMsg::ReplaceAbort { owner } => {
                self.replacing.remove(&owner);
            }
            EnrpMsg::SumQuery { owner, token } => {
                let hs = p.handlespace();
                let (sum, count) = (hs.owner_sum(owner).raw(), hs.owner_pe_count(owner) as u64);
                out.post(coordinator, EnrpMsg::SumPart { owner, token, sum, count }.into());
            }
            EnrpMsg::Export { conn, requester, own_only, first, last } => {
                let exhausted = self.export(p, conn, requester, own_only, first, last, out);
                out.post(coordinator, EnrpMsg::Exported { requester, exhausted }.into());
            }
            EnrpMsg::ExportAbort { requester } => {
                self.exports.remove(&requester);
            }
            EnrpMsg::TakeOver { from, to } => {
                p.take_over(from, to, now, sink);
                self.replacing.remove(&from);
            }
            // The coordinator's own messages never reach a pool shard.
            EnrpMsg::Outgoing { .. } | EnrpMsg::SumPart { .. } | EnrpMsg::Exported { .. } => {
                debug_assert!(false, "coordinator message at shard {}", self.shard)
            }
        }
        for conn in p.take_to_close() {
            out.close(conn);
        }
    }

    /// Peers' Handle Updates, validated by the coordinator: only their parts are found.
    fn updates(&mut self, messages: &[u8], p: &mut Procedures, now: Time, sink: &mut impl ChangeSink) {
        let mut rest = messages;
        while let Some(len) = rest.get(2..4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) {
            let Some(msg) = rest.get(..len).filter(|m| m.len() >= 16) else { break };
            rest = &rest[len..];
            let action = u16::from_be_bytes([msg[12], msg[13]]);
            let (mut handle, mut pe) = (None, None);
            for param in Params::new(&msg[16..], 16) {
                match param.param_type() {
                    ParamType::POOL_HANDLE => handle = Some(param.value()),
                    ParamType::POOL_ELEMENT => pe = Some(pool_element::locate(param)),
                    _ => {}
                }
            }
            let (Some(handle), Some(pe)) = (handle, pe) else { continue };
            if action == UpdateAction::AddPe as u16 {
                let learnt = p.learn(handle, &pe, Reason::Peer, now, sink);
                self.confirm(pe.home_registrar(), learnt);
            } else {
                p.forget(handle, pe.pe_id(), pe.home_registrar(), now, sink);
            }
        }
    }

    /// Entries of a peer's handle table: Pool Handle parameters, each followed by its pool's
    /// Pool Elements.
    fn table(&mut self, groups: &[u8], p: &mut Procedures, now: Time, sink: &mut impl ChangeSink) {
        let mut handle: &[u8] = &[];
        for param in Params::new(groups, 0) {
            match param.param_type() {
                ParamType::POOL_HANDLE => handle = param.value(),
                ParamType::POOL_ELEMENT => {
                    // Validated with its whole message by the coordinator: only find its parts.
                    let pe = pool_element::locate(param);
                    let learnt = p.learn(handle, &pe, Reason::Peer, now, sink);
                    self.confirm(pe.home_registrar(), learnt);
                }
                _ => {}
            }
        }
    }

    /// A PE of `owner` is in its table or was updated: an audit keeps it.
    fn confirm(&mut self, owner: u32, learnt: Learnt) {
        if let (Some(set), Learnt::Stored(key)) = (self.replacing.get_mut(&owner), learnt) {
            set.remove(&key);
        }
    }

    /// Writes the next Handle Table Response chunk for `requester`; returns whether this
    /// shard's part of the table is used up.
    #[allow(clippy::too_many_arguments)]
    fn export<M>(
        &mut self,
        p: &Procedures,
        conn: ConnId,
        requester: u32,
        own_only: bool,
        first: bool,
        last: bool,
        out: &mut impl Outbox<M>,
    ) -> bool {
        let hs = p.handlespace();
        let (me, max_chunk) = (self.me, self.max_chunk);
        if first || !self.exports.contains_key(&requester) {
            let fresh = Export { pending: Vec::new(), next: 0, cursor: Some(TableCursor::START) };
            self.exports.insert(requester, fresh);
        }
        let Some(export) = self.exports.get_mut(&requester) else { return true };
        // Enough read ahead for a full message if the scan allows (after what is left of the
        // last read), grouped by pool: pools in slab order, slot order within a pool.
        if export.cursor.is_some() && export.pending.len() - export.next < max_chunk {
            export.pending.drain(..export.next);
            export.next = 0;
            let owner = own_only.then_some(me);
            let mut read = 0;
            while let Some(from) = export.cursor.filter(|_| export.pending.len() < max_chunk && read < EXPORT_SCAN) {
                export.cursor = hs.table_pes(owner, from, EXPORT_WINDOW, &mut export.pending);
                read += EXPORT_WINDOW;
            }
            group_by_pool(&mut export.pending);
        }
        // Everything but the common header and the two server ids, counted exactly below.
        let budget = self.max_message.saturating_sub(12);
        let keys = &export.pending;
        let next = export.next;
        // How many entries fit (sizes from the stored PEs, so that the M flag is known before
        // the message is written); a PE gone since it was read is skipped.
        let (mut end, mut size, mut sent, mut current) = (next, 0, 0, None);
        while end < keys.len() && sent < max_chunk {
            let (pool, key) = keys[end];
            let Some(pe) = hs.pe(key) else {
                end += 1;
                continue;
            };
            // The stored parameters (user transport, policy, ASAP transport) are whole TLVs.
            let mut add = 16 + pe.wire_body_with_asap().len();
            if current != Some(pool) {
                add += 4 + hs.pool(pool).map_or(0, |pl| pl.handle().len()).next_multiple_of(4);
            }
            if size + add > budget && sent > 0 {
                break;
            }
            (size, current, sent, end) = (size + add, Some(pool), sent + 1, end + 1);
        }
        let exhausted = end >= keys.len() && export.cursor.is_none();
        let more = !exhausted || !last;
        out.send(conn, &mut |buf| {
            let _ = enrp::emit_handle_table_response(&mut Writer::new(buf), me, requester, more, false, |w| {
                w.reserve(size);
                let mut current = None;
                for &(pool, key) in &keys[next..end] {
                    let Some(pe) = hs.pe(key) else { continue };
                    if current != Some(pool) {
                        current = Some(pool);
                        w.tlv_bytes(ParamType::POOL_HANDLE, hs.pool(pool).map_or(&[][..], |pl| pl.handle()));
                    }
                    pool_element::emit_encoded(w, pe.id, pe.home, pe.registration_life, pe.wire_body_with_asap(), None);
                }
            });
        });
        export.next = end;
        if exhausted {
            self.exports.remove(&requester);
        }
        exhausted
    }
}
