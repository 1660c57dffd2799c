//! Keep-alive supervision of the PEs this registrar is home of (WIRE.md section 6.1): every
//! keep-alive interval each PE gets an Endpoint Keep Alive; one that does not answer within the
//! keep-alive timeout is removed as if it had deregistered.

use std::collections::HashMap;

use crate::handlespace::{PeKey, TimerKey, TimerWheel};
use crate::time::Time;

/// Where a supervised PE stands.
#[derive(Clone, Copy, Debug)]
struct Entry {
    timer: TimerKey,
    /// A keep-alive was sent and not yet answered.
    waiting: bool,
}

/// What a due timer asks the registrar to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send PE a keep-alive (the answer is now awaited).
    Probe(PeKey),
    /// PE did not answer in time: remove it.
    Expired(PeKey),
}

/// The supervision schedule: one timer per supervised PE.
#[derive(Debug)]
pub(crate) struct KeepAlive {
    wheel: TimerWheel<PeKey>,
    entries: HashMap<PeKey, Entry, ahash::RandomState>,
    interval: u64,
    timeout: u64,
}

impl KeepAlive {
    pub(crate) fn new(now: Time, interval: u64, timeout: u64) -> Self {
        Self { wheel: TimerWheel::new(now), entries: HashMap::default(), interval, timeout }
    }

    /// Starts (or restarts, after a re-registration) supervising `pe`: its first keep-alive
    /// goes out one interval from now.
    pub(crate) fn arm(&mut self, pe: PeKey, now: Time) {
        self.arm_at(pe, now.add_millis(self.interval));
    }

    /// Starts supervising `pe` with a keep-alive at once (a PE just taken over must learn its
    /// new home).
    pub(crate) fn arm_now(&mut self, pe: PeKey, now: Time) {
        self.arm_at(pe, now);
    }

    fn arm_at(&mut self, pe: PeKey, deadline: Time) {
        match self.entries.get_mut(&pe) {
            Some(e) => {
                e.waiting = false;
                if !self.wheel.reschedule(e.timer, deadline) {
                    e.timer = self.wheel.insert(deadline, pe);
                }
            }
            None => {
                let timer = self.wheel.insert(deadline, pe);
                self.entries.insert(pe, Entry { timer, waiting: false });
            }
        }
    }

    /// Stops supervising `pe` (it is gone).
    pub(crate) fn disarm(&mut self, pe: PeKey) {
        if let Some(e) = self.entries.remove(&pe) {
            self.wheel.cancel(e.timer);
        }
    }

    /// `pe` answered: the next keep-alive goes out one interval from now.
    pub(crate) fn acked(&mut self, pe: PeKey, now: Time) {
        if self.entries.get(&pe).is_some_and(|e| e.waiting) {
            self.arm(pe, now);
        }
    }

    /// The earliest time [`KeepAlive::poll`] has work.
    pub(crate) fn next(&self) -> Option<Time> {
        self.wheel.next_expiry()
    }

    /// The next due action at `now`, if any. A probe re-arms the PE's timer for the answer.
    pub(crate) fn poll(&mut self, now: Time) -> Option<Due> {
        loop {
            let (_, pe) = self.wheel.poll(now)?;
            let Some(e) = self.entries.get_mut(&pe) else { continue };
            if e.waiting {
                self.entries.remove(&pe);
                return Some(Due::Expired(pe));
            }
            e.waiting = true;
            e.timer = self.wheel.insert(now.add_millis(self.timeout), pe);
            return Some(Due::Probe(pe));
        }
    }

    /// Whether `pe` is supervised.
    pub(crate) fn contains(&self, pe: PeKey) -> bool {
        self.entries.contains_key(&pe)
    }

    /// Number of supervised PEs.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> PeKey {
        // Keys are opaque outside the handlespace; any distinct values do for the schedule.
        let mut hs = crate::handlespace::Handlespace::new(Default::default(), Time::ZERO);
        let user = crate::wire::TransportRepr::new(
            crate::wire::TransportProtocol::Tcp,
            [127, 0, 0, 1].into(),
            1000 + i as u16,
        );
        let reg = crate::handlespace::Registration {
            handle: b"p",
            pe_id: i + 1,
            home: 1,
            user_transport: &user,
            asap_transport: None,
            policy: crate::wire::Policy::RoundRobin,
            registration_life: -1,
            conn: None,
        };
        for j in 0..i {
            let mut r = reg;
            r.pe_id = j + 1000;
            hs.register(r, Time::ZERO).unwrap();
        }
        hs.register(reg, Time::ZERO).unwrap().pe
    }

    #[test]
    fn probe_then_expire_without_ack_and_rearm_with_ack() {
        let mut ka = KeepAlive::new(Time::ZERO, 1000, 200);
        let (a, b) = (key(0), key(1));
        assert_ne!(a, b);
        ka.arm(a, Time::ZERO);
        ka.arm(b, Time::ZERO);
        assert_eq!(ka.poll(Time(999)), None);
        let mut due: Vec<Due> = std::iter::from_fn(|| ka.poll(Time(1000))).collect();
        due.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(due.len(), 2);
        assert!(due.contains(&Due::Probe(a)) && due.contains(&Due::Probe(b)));
        ka.acked(a, Time(1100));
        // b stays silent: removed after the timeout; a is probed again an interval after its ack.
        assert_eq!(ka.poll(Time(1200)), Some(Due::Expired(b)));
        assert_eq!(ka.poll(Time(2099)), None);
        assert_eq!(ka.poll(Time(2100)), Some(Due::Probe(a)));
        assert_eq!(ka.len(), 1);
        ka.disarm(a);
        assert_eq!(ka.poll(Time(10_000)), None);
        assert_eq!(ka.len(), 0);
    }
}
