//! A hierarchical timing wheel: insert, cancel and expire in amortized O(1), driven by a time
//! argument (it never reads a clock).
//!
//! Six levels of 64 slots each; a slot of level *L* spans 64^L milliseconds, so the wheel
//! covers 2^36 ms (about 795 days) ahead of its current time ("elapsed"). A timer is put at the
//! level of the highest 6-bit group in which its deadline differs from elapsed; so every timer of
//! a lower level is due before every timer of a higher one, and the earliest timer is in the
//! first occupied slot of the lowest occupied level (found with one bit scan per level). When
//! time reaches a slot of level *L* > 0, its timers are re-placed at lower levels ("cascade"):
//! each timer moves at most five times in its life, hence amortized O(1). Each slot is an
//! intrusive doubly-linked list through one vector of entries (with a free list, and no enum tag:
//! a free entry holds `T::default()`), so cancel is O(1) and a timer costs 32 bytes when `T` is
//! 8 bytes. Deadlines further ahead than the wheel spans are parked in the top level and re-placed
//! when reached.
//!
//! The algorithm (`Wheel`) works on links kept wherever the caller keeps its entries
//! (`TimerSlots`): [`TimerWheel`] keeps them in its own vector (the ASAP layer's keep-alive
//! timers), the handlespace keeps them in its PE slots (registration lifetimes: no entry, no key
//! and no allocation per timer).

use crate::time::Time;

const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const LEVELS: usize = 6;
/// Deadlines are placed at most this far ahead of elapsed (less than one turn of the top level,
/// so a parked timer never lands in the top-level slot that elapsed is in).
const MAX_AHEAD: u64 = (1 << (LEVEL_BITS * LEVELS as u32)) - (1 << (LEVEL_BITS * (LEVELS as u32 - 1))) - 1;
const NIL: u32 = u32::MAX;
/// Bucket number of the list of timers already due.
const DUE: u16 = u16::MAX;
/// Bucket number of an entry that is in no list (free, or not armed).
pub(crate) const UNARMED: u16 = u16::MAX - 1;

/// A stable handle to a timer: slab index plus a generation, so a handle kept after its timer
/// fired or was cancelled is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

/// The list links and deadline of one timer, kept in the caller's entry (intrusive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerLink {
    pub(crate) deadline: u64,
    prev: u32,
    next: u32,
}

impl TimerLink {
    pub(crate) const UNLINKED: Self = Self { deadline: 0, prev: NIL, next: NIL };
}

/// Where the timers' links live: entries numbered by `u32`, each with a [`TimerLink`] and a
/// bucket number ([`UNARMED`] when it is in no list).
pub(crate) trait TimerSlots {
    fn link(&self, i: u32) -> &TimerLink;
    fn link_mut(&mut self, i: u32) -> &mut TimerLink;
    fn bucket(&self, i: u32) -> u16;
    fn set_bucket(&mut self, i: u32, bucket: u16);
}

/// The wheel itself: bucket heads and occupancy bits over entries that live elsewhere (in a
/// [`TimerWheel`]'s own vector, or intrusively in the handlespace's PE slots).
#[derive(Clone, Debug)]
pub(crate) struct Wheel {
    len: usize,
    heads: [u32; LEVELS * SLOTS],
    occupied: [u64; LEVELS],
    due: u32,
    elapsed: u64,
}

impl Wheel {
    pub(crate) fn new(now: Time) -> Self {
        Self { len: 0, heads: [NIL; LEVELS * SLOTS], occupied: [0; LEVELS], due: NIL, elapsed: now.as_millis() }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Arms entry `i` (not armed) to fire at `deadline`.
    pub(crate) fn insert(&mut self, s: &mut impl TimerSlots, i: u32, deadline: u64) {
        s.link_mut(i).deadline = deadline;
        self.len += 1;
        self.place(s, i);
    }

    /// Disarms entry `i` (armed).
    pub(crate) fn cancel(&mut self, s: &mut impl TimerSlots, i: u32) {
        self.unlink(s, i);
        s.set_bucket(i, UNARMED);
        self.len -= 1;
    }

    /// Moves armed entry `i` to `deadline`. A later deadline (the common case: a
    /// re-registration extends a lifetime) only rewrites the entry, which stays in its earlier
    /// bucket and is re-placed when that bucket is reached; that saves touching the neighbours
    /// of two lists.
    pub(crate) fn reschedule(&mut self, s: &mut impl TimerSlots, i: u32, deadline: u64) {
        if s.bucket(i) != DUE && deadline >= s.link(i).deadline {
            s.link_mut(i).deadline = deadline;
            return;
        }
        self.unlink(s, i);
        s.link_mut(i).deadline = deadline;
        self.place(s, i);
    }

    /// See [`TimerWheel::next_expiry`].
    pub(crate) fn next_expiry(&self) -> Option<Time> {
        if self.due != NIL {
            return Some(Time(self.elapsed));
        }
        (0..LEVELS).find_map(|level| self.next_slot(level).map(|(_, start)| Time(start)))
    }

    /// Disarms and returns one entry whose deadline is not later than `now`; advances the
    /// wheel's time to `now` (time never goes back).
    pub(crate) fn poll(&mut self, s: &mut impl TimerSlots, now: Time) -> Option<u32> {
        let now = now.as_millis();
        loop {
            if self.due != NIL {
                let index = self.due;
                self.cancel(s, index);
                return Some(index);
            }
            let next = (0..LEVELS).find_map(|level| self.next_slot(level).map(|(slot, start)| (level, slot, start)));
            let Some((level, slot, start)) = next.filter(|&(_, _, start)| start <= now) else {
                self.elapsed = self.elapsed.max(now);
                return None;
            };
            self.elapsed = self.elapsed.max(start);
            let bucket = level * SLOTS + slot;
            let mut index = self.heads[bucket];
            self.heads[bucket] = NIL;
            self.occupied[level] &= !(1u64 << slot);
            while index != NIL {
                let link = *s.link(index);
                if link.deadline <= now {
                    s.set_bucket(index, DUE);
                    self.push(s, DUE, index);
                } else {
                    self.place(s, index);
                }
                index = link.next;
            }
        }
    }

    /// The first occupied slot of `level` at or after elapsed, and the time it starts.
    fn next_slot(&self, level: usize) -> Option<(usize, u64)> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let shift = LEVEL_BITS * level as u32;
        let slot_range = 1u64 << shift;
        let level_range = slot_range << LEVEL_BITS;
        let now_slot = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
        let slot = (occupied.rotate_right(now_slot as u32).trailing_zeros() as usize + now_slot) % SLOTS;
        let level_start = self.elapsed & !(level_range - 1);
        let mut start = level_start.saturating_add(slot as u64 * slot_range);
        if slot < now_slot {
            // Only parked far-future timers wrap around the top level.
            start = start.saturating_add(level_range);
        }
        Some((slot, start))
    }

    /// Puts an unlinked entry into the bucket its deadline calls for.
    fn place(&mut self, s: &mut impl TimerSlots, index: u32) {
        let deadline = s.link(index).deadline;
        let bucket = if deadline <= self.elapsed {
            DUE
        } else {
            let when = deadline.min(self.elapsed.saturating_add(MAX_AHEAD));
            let masked = (self.elapsed ^ when) | (SLOTS as u64 - 1);
            let significant = 63 - masked.leading_zeros();
            let level = ((significant / LEVEL_BITS) as usize).min(LEVELS - 1);
            let slot = ((when >> (LEVEL_BITS * level as u32)) as usize) & (SLOTS - 1);
            self.occupied[level] |= 1u64 << slot;
            (level * SLOTS + slot) as u16
        };
        s.set_bucket(index, bucket);
        self.push(s, bucket, index);
    }

    fn head_mut(&mut self, bucket: u16) -> &mut u32 {
        if bucket == DUE {
            &mut self.due
        } else {
            &mut self.heads[usize::from(bucket)]
        }
    }

    fn push(&mut self, s: &mut impl TimerSlots, bucket: u16, index: u32) {
        let head = *self.head_mut(bucket);
        {
            let link = s.link_mut(index);
            link.prev = NIL;
            link.next = head;
        }
        if head != NIL {
            s.link_mut(head).prev = index;
        }
        *self.head_mut(bucket) = index;
    }

    fn unlink(&mut self, s: &mut impl TimerSlots, index: u32) {
        let TimerLink { prev, next, .. } = *s.link(index);
        let bucket = s.bucket(index);
        if prev != NIL {
            s.link_mut(prev).next = next;
        } else {
            *self.head_mut(bucket) = next;
            if next == NIL && bucket != DUE {
                let (level, slot) = (usize::from(bucket) / SLOTS, usize::from(bucket) % SLOTS);
                self.occupied[level] &= !(1u64 << slot);
            }
        }
        if next != NIL {
            s.link_mut(next).prev = prev;
        }
    }
}

struct Entry<T> {
    link: TimerLink,
    value: T,
    generation: u32,
    bucket: u16,
}

struct Entries<T>(Vec<Entry<T>>);

impl<T> TimerSlots for Entries<T> {
    fn link(&self, i: u32) -> &TimerLink {
        &self.0[i as usize].link
    }
    fn link_mut(&mut self, i: u32) -> &mut TimerLink {
        &mut self.0[i as usize].link
    }
    fn bucket(&self, i: u32) -> u16 {
        self.0[i as usize].bucket
    }
    fn set_bucket(&mut self, i: u32, bucket: u16) {
        self.0[i as usize].bucket = bucket;
    }
}

/// A hierarchical timing wheel holding values of type `T` until their deadlines. `T: Default`
/// fills free entries, which saves the tag a slab entry would cost.
pub struct TimerWheel<T> {
    wheel: Wheel,
    entries: Entries<T>,
    /// Free entries, linked through `link.next`.
    free: u32,
    next_generation: u32,
}

impl<T: Default> core::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TimerWheel").field("len", &self.len()).field("elapsed", &self.wheel.elapsed).finish()
    }
}

impl<T: Default> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new(Time::ZERO)
    }
}

impl<T: Default> TimerWheel<T> {
    /// An empty wheel whose current time is `now`.
    pub fn new(now: Time) -> Self {
        Self { wheel: Wheel::new(now), entries: Entries(Vec::new()), free: NIL, next_generation: 0 }
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.wheel.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arms a timer that fires at `deadline` (at once, on the next poll, if it is not later than
    /// the wheel's current time).
    pub fn insert(&mut self, deadline: Time, value: T) -> TimerKey {
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        let entry = Entry { link: TimerLink::UNLINKED, value, generation, bucket: UNARMED };
        let entries = &mut self.entries.0;
        let index = if self.free != NIL {
            let index = self.free;
            self.free = entries[index as usize].link.next;
            entries[index as usize] = entry;
            index
        } else {
            // Indices fit in u32: a wheel never holds 2^32 timers (memory runs out first).
            entries.push(entry);
            (entries.len() - 1) as u32
        };
        self.wheel.insert(&mut self.entries, index, deadline.as_millis());
        TimerKey { index, generation }
    }

    /// Disarms a pending timer and returns its value; `None` if the key is stale.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        self.entry(key)?;
        self.wheel.cancel(&mut self.entries, key.index);
        Some(self.release(key.index).1)
    }

    /// Moves a pending timer to a new deadline; `false` if the key is stale. A later deadline
    /// only rewrites the entry (see `Wheel::reschedule`).
    pub fn reschedule(&mut self, key: TimerKey, deadline: Time) -> bool {
        if self.entry(key).is_none() {
            return false;
        }
        self.wheel.reschedule(&mut self.entries, key.index, deadline.as_millis());
        true
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, key: TimerKey) -> Option<Time> {
        self.entry(key).map(|e| Time(e.link.deadline))
    }

    /// The value of a pending timer.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.entry(key).map(|e| &e.value)
    }

    /// A time at which [`poll`](Self::poll) may have work: never later than the earliest
    /// deadline, and equal to it when that timer is in the lowest level (within 64 ms of the
    /// wheel's time). Polling at an earlier value than the real deadline only cascades timers
    /// and fires nothing; the next call then gives a closer time. `None` when no timer is pending.
    pub fn next_expiry(&self) -> Option<Time> {
        self.wheel.next_expiry()
    }

    /// Removes and returns one timer whose deadline is not later than `now`, with its deadline;
    /// `None` when there is none. Advances the wheel's time to `now` (time never goes back).
    pub fn poll(&mut self, now: Time) -> Option<(Time, T)> {
        let index = self.wheel.poll(&mut self.entries, now)?;
        let (deadline, value) = self.release(index);
        Some((Time(deadline), value))
    }

    /// Fires every timer whose deadline is not later than `now`, passing each value to `fire`;
    /// returns how many fired.
    pub fn expire(&mut self, now: Time, mut fire: impl FnMut(T)) -> usize {
        let mut n = 0;
        while let Some((_, value)) = self.poll(now) {
            fire(value);
            n += 1;
        }
        n
    }

    fn entry(&self, key: TimerKey) -> Option<&Entry<T>> {
        self.entries.0.get(key.index as usize).filter(|e| e.generation == key.generation && e.bucket != UNARMED)
    }

    /// Frees a disarmed entry and returns its deadline and value.
    fn release(&mut self, index: u32) -> (u64, T) {
        let entry = &mut self.entries.0[index as usize];
        entry.link.next = self.free;
        self.free = index;
        (entry.link.deadline, core::mem::take(&mut entry.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_in_time_and_not_before() {
        let mut w = TimerWheel::new(Time(1000));
        w.insert(Time(1005), 'a');
        w.insert(Time(1000 + 70_000), 'b');
        w.insert(Time(900), 'c'); // already due
        assert_eq!(w.next_expiry(), Some(Time(1000)));
        assert_eq!(w.poll(Time(1000)), Some((Time(900), 'c')));
        assert_eq!(w.poll(Time(1004)), None);
        assert_eq!(w.next_expiry(), Some(Time(1005)));
        assert_eq!(w.poll(Time(1005)), Some((Time(1005), 'a')));
        let next = w.next_expiry().unwrap();
        assert!(next <= Time(71_000));
        assert_eq!(w.poll(Time(70_999)), None);
        assert_eq!(w.poll(Time(71_000)), Some((Time(71_000), 'b')));
        assert!(w.is_empty());
        assert_eq!(w.next_expiry(), None);
    }

    #[test]
    fn cancel_and_stale_keys() {
        let mut w = TimerWheel::new(Time(0));
        let a = w.insert(Time(10), 1);
        let b = w.insert(Time(10), 2);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None);
        assert!(!w.reschedule(a, Time(5)));
        let c = w.insert(Time(3), 3); // may reuse a's slot, with a new generation
        assert_ne!(a, c);
        assert_eq!(w.get(a), None);
        assert!(w.reschedule(b, Time(20)));
        assert_eq!(w.deadline(b), Some(Time(20)));
        let mut fired = vec![];
        w.expire(Time(15), |v| fired.push(v));
        assert_eq!(fired, vec![3]);
        w.expire(Time(20), |v| fired.push(v));
        assert_eq!(fired, vec![3, 2]);
    }

    #[test]
    fn far_future_is_parked_and_fires() {
        let mut w = TimerWheel::new(Time(5));
        let far = (1u64 << 40) + 17;
        w.insert(Time(far), ());
        let mut t = 5;
        let mut steps = 0;
        while let Some(next) = w.next_expiry() {
            assert!(next.0 <= far);
            t = next.0.max(t);
            if w.poll(Time(t)).is_some() {
                break;
            }
            steps += 1;
            assert!(steps < 1000);
        }
        assert_eq!(t, far);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Against a BTreeMap model: every timer fires exactly once, at the first poll whose time
        /// reaches its deadline; next_expiry never exceeds the earliest deadline.
        #[test]
        fn matches_model(ops in prop::collection::vec((0u8..5, 0u64..300_000, any::<prop::sample::Index>()), 1..200)) {
            let mut w = TimerWheel::new(Time(0));
            let mut model: BTreeMap<u32, (u64, TimerKey)> = BTreeMap::new();
            let mut now = 0u64;
            let mut id = 0u32;
            for (op, x, pick) in ops {
                match op {
                    0 | 1 => {
                        let deadline = now + x.pow(u32::from(op) + 1) % 5_000_000_000;
                        let key = w.insert(Time(deadline), id);
                        model.insert(id, (deadline, key));
                        id += 1;
                    }
                    2 if !model.is_empty() => {
                        let k = *model.keys().nth(pick.index(model.len())).unwrap();
                        let (_, key) = model.remove(&k).unwrap();
                        prop_assert_eq!(w.cancel(key), Some(k));
                    }
                    3 if !model.is_empty() => {
                        // Earlier or later than before, sometimes already due.
                        let k = *model.keys().nth(pick.index(model.len())).unwrap();
                        let deadline = now + x * 7 % 400_000;
                        let entry = model.get_mut(&k).unwrap();
                        prop_assert!(w.reschedule(entry.1, Time(deadline)));
                        entry.0 = deadline;
                        prop_assert_eq!(w.deadline(entry.1), Some(Time(deadline)));
                    }
                    4 => {
                        now += x;
                        if let Some(min) = model.values().map(|v| v.0).min() {
                            prop_assert!(w.next_expiry().unwrap().0 <= min.max(now - x));
                        }
                        let mut fired = vec![];
                        while let Some((d, v)) = w.poll(Time(now)) {
                            prop_assert!(d.0 <= now);
                            fired.push(v);
                        }
                        fired.sort_unstable();
                        let mut due: Vec<u32> = model.iter().filter(|(_, v)| v.0 <= now).map(|(k, _)| *k).collect();
                        due.sort_unstable();
                        prop_assert_eq!(&fired, &due);
                        for k in due { model.remove(&k); }
                    }
                    _ => {}
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
