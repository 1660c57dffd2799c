//! The PEs peer registrars tell of (ENRP, WIRE.md 7.4-7.6), applied to this shard's part of
//! the handlespace by the same procedures that keep supervision, budgets and change events in
//! step: a peer's PE is stored with its home id and no connection; a delete applies only to
//! the entry of the same home; this registrar's own PEs are authoritative; a PE id collision
//! is settled for the owner with the lower server id, the same way everywhere.

use super::change::{Change, ChangeSink, PeChange, Reason};
use super::procedures::{changed, removal, Procedures};
use crate::handlespace::{same_addresses, PeKey, Registration};
use crate::time::Time;
use crate::wire::{PolicyParam, PoolElement};

/// What became of a Pool Element a peer told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learnt {
    /// Stored (added, or updated in place).
    Stored(PeKey),
    /// About a PE this registrar owns, or one whose other claim wins a collision: left as it is.
    Ignored,
    /// Not storable: no ASAP transport, home id 0, an unknown policy, a pool it does not fit
    /// (policy or transport type), or the limit on peers' PEs.
    Refused,
}

impl Procedures {
    /// Applies a Pool Element of pool `pool_handle` that a peer registrar sent (Handle Update
    /// add, or a handle table entry). `reason` is reported with the change.
    pub fn learn(
        &mut self,
        pool_handle: &[u8],
        pe: &PoolElement<'_>,
        reason: Reason,
        now: Time,
        sink: &mut impl ChangeSink,
    ) -> Learnt {
        let home = pe.home_registrar();
        let (Some(asap), PolicyParam::Known(policy)) = (pe.asap_transport(), pe.policy()) else {
            return Learnt::Refused;
        };
        if home == 0 {
            return Learnt::Refused;
        }
        if home == self.id {
            return Learnt::Ignored; // our own view of our own PEs is authoritative
        }
        let user = pe.user_transport().to_repr();
        let mut spot = self.hs.locate(pool_handle, pe.pe_id());
        let me = self.id;
        match self.hs.at(spot).map(|(k, e)| (k, e.home, same_addresses(&e.user_transport(), &user))) {
            // This registrar's own view of its own PEs is authoritative (WIRE.md 7.4): a peer
            // that claims one of them (a takeover during a partition, a PE that moved and
            // whose connection here has not dropped yet) is ignored until that settles.
            Some((_, h, true)) if h == me => return Learnt::Ignored,
            // The same PE (same addresses) now at `home`, or `home` updating its own: in place.
            Some((_, h, same)) if h == home || same => {}
            // Two PEs with one id (WIRE.md 7.5): the owner with the lower server id keeps it.
            Some((_, h, _)) if h < home => return Learnt::Ignored,
            Some((k, h, _)) => {
                // A PE of ours that lost: its connection closes, so that it registers again at
                // once and learns (cause 0x4) that it needs a new id (WIRE.md 7.5).
                if let Some(conn) = self.hs.pe(k).and_then(|e| e.conn()).filter(|_| h == me) {
                    self.to_close.push(conn);
                }
                self.drop_pe(k, Reason::Collision, now, sink);
                self.stats.collisions += 1;
                spot = self.hs.locate(pool_handle, pe.pe_id());
            }
            None if self.budgets.peer_pes.used() >= self.limits.max_peer_pes => return Learnt::Refused,
            None => {}
        }
        let asap = asap.to_repr();
        let reg = Registration {
            handle: pool_handle,
            pe_id: pe.pe_id(),
            home,
            user_transport: &user,
            asap_transport: Some(&asap),
            policy,
            registration_life: pe.registration_life(),
            conn: None,
        };
        let r = match self.hs.register_at(spot, reg, now) {
            Ok(r) => r,
            Err(_) => return Learnt::Refused,
        };
        if let Some(stored) = self.hs.pe(r.pe) {
            let change = if r.added { Change::Added } else { Change::Updated };
            let home_before = if r.added { 0 } else { r.previous_owner.unwrap_or(home) };
            let moved_from = r.previous_conn.flatten();
            let event = PeChange { pool_handle, pe: stored, change, reason, moved_from, home_before };
            changed(&mut self.keep_alive, self.id, r.pe, event, now, sink);
        }
        self.settle_budgets();
        Learnt::Stored(r.pe)
    }

    /// Applies a peer's delete of PE `pe_id` of pool `pool_handle` whose home is `home`: only
    /// an entry with that home goes. Returns whether one did.
    pub fn forget(&mut self, pool_handle: &[u8], pe_id: u32, home: u32, now: Time, sink: &mut impl ChangeSink) -> bool {
        if home == self.id {
            return false;
        }
        let Some(key) = self.hs.lookup(pool_handle, pe_id) else { return false };
        if self.hs.pe(key).is_none_or(|e| e.home != home) {
            return false;
        }
        self.drop_pe(key, Reason::Peer, now, sink)
    }

    /// Removes PE `key` for `reason`. Returns whether it was there.
    pub fn drop_pe(&mut self, key: PeKey, reason: Reason, now: Time, sink: &mut impl ChangeSink) -> bool {
        let Some(handle) = self.hs.pe_handle(key).map(<[u8]>::to_vec) else { return false };
        let Some(pe) = self.hs.remove(key) else { return false };
        changed(&mut self.keep_alive, self.id, key, removal(&handle, &pe, reason), now, sink);
        self.settle_budgets();
        true
    }

    /// Moves every PE of registrar `from` on this shard to registrar `to` (takeover, WIRE.md
    /// 7.6): the checksums move with them; when `to` is this registrar it now supervises them.
    /// Returns how many moved.
    pub fn take_over(&mut self, from: u32, to: u32, now: Time, sink: &mut impl ChangeSink) -> usize {
        if from == to {
            return 0;
        }
        let keys: Vec<PeKey> = self.hs.owner_pes(from).collect();
        let moved = self.hs.take_over(from, to);
        for key in keys {
            let (Some(pool_handle), Some(pe)) = (self.hs.pe_handle(key), self.hs.pe(key)) else { continue };
            let event = PeChange {
                pool_handle,
                pe,
                change: Change::Updated,
                reason: Reason::Takeover,
                moved_from: None,
                home_before: from,
            };
            changed(&mut self.keep_alive, self.id, key, event, now, sink);
        }
        self.stats.taken_over += moved as u64;
        self.settle_budgets();
        moved
    }

    /// Connections to close: those of this registrar's PEs that lost a collision.
    pub fn take_to_close(&mut self) -> Vec<crate::service::ConnId> {
        std::mem::take(&mut self.to_close)
    }

    /// The PEs registrar `owner` is home of on this shard (for audits and table exports).
    pub fn owner_pes(&self, owner: u32) -> Vec<PeKey> {
        self.hs.owner_pes(owner).collect()
    }
}
