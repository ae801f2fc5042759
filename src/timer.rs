//! Timers: a min-heap of deadlines over a slab of timer slots.
//!
//! Cancelling removes the slot; its heap entry stays behind and is skipped
//! when it reaches the top (the slot is gone, or its generation moved on).
//! The heap is rebuilt when such dead entries outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use slab::Slab;

use crate::{ConnId, TimerId};

/// What a timer is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TimerKind {
    /// A user's timer: `on_timer` fires.
    User,
    /// Accepting on a listener paused after EMFILE; try again.
    AcceptRetry(ConnId),
    /// Look for idle connections.
    IdleSweep,
    /// A graceful stop's drain deadline.
    DrainDeadline,
    /// A connection's timer: `on_conn_timer` fires while it is open.
    Conn(ConnId),
    /// Close the lingering sockets whose deadline passed.
    LingerSweep,
    /// A TLS connection's handshake deadline: closed if still handshaking.
    #[cfg(feature = "tls")]
    TlsHandshake(ConnId),
}

struct Slot {
    gen: u32,        // matches TimerId::gen while the timer is live
    deadline: u64,   // when it fires next, on the loop clock (ns)
    period: u64,     // nanoseconds between firings; 0 for a one-shot timer
    kind: TimerKind, // what firing means
}

pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64, u32, u32)>>, // (deadline, seq, slot, gen)
    slots: Slab<Slot>,                               // live timers
    seq: u64,                                        // ties fire in the order set
    first: u64, // the heap's earliest deadline, live or cancelled (u64::MAX: empty)
    gen: u32,   // next generation
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            slots: Slab::new(),
            seq: 0,
            first: u64::MAX,
            gen: 0,
        }
    }

    pub(crate) fn insert(
        &mut self,
        deadline: u64,
        period: Option<Duration>,
        kind: TimerKind,
    ) -> TimerId {
        let period = period.map_or(0, |p| crate::clock::nanos(p).max(1));
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        let slot = self.slots.insert(Slot {
            gen,
            deadline,
            period,
            kind,
        }) as u32;
        self.push(deadline, slot, gen);
        TimerId { slot, gen }
    }

    fn push(&mut self, deadline: u64, slot: u32, gen: u32) {
        self.seq += 1;
        self.heap.push(Reverse((deadline, self.seq, slot, gen)));
        self.first = self.first.min(deadline);
        if self.heap.len() > 64 && self.heap.len() > 2 * self.slots.len() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let slots = &self.slots;
        self.heap.retain(|Reverse((d, _, s, g))| {
            slots
                .get(*s as usize)
                .is_some_and(|slot| slot.gen == *g && slot.deadline == *d)
        });
        self.refresh_first();
    }

    /// `first` after the heap's top changed.
    fn refresh_first(&mut self) {
        self.first = self.heap.peek().map_or(u64::MAX, |Reverse((d, ..))| *d);
    }

    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        match self.slots.get(id.slot as usize) {
            Some(s) if s.gen == id.gen => {
                self.slots.remove(id.slot as usize);
                true
            }
            _ => false,
        }
    }

    fn is_live(&self, d: u64, s: u32, g: u32) -> bool {
        self.slots
            .get(s as usize)
            .is_some_and(|slot| slot.gen == g && slot.deadline == d)
    }

    /// The earliest deadline in the heap, live or cancelled (`u64::MAX` if
    /// none): a cheap bound to compare the clock with.
    #[inline]
    pub(crate) fn peek(&self) -> u64 {
        self.first
    }

    /// The earliest live deadline.
    #[cfg(test)]
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        while let Some(Reverse((d, _, s, g))) = self.heap.peek().copied() {
            if self.is_live(d, s, g) {
                return Some(d);
            }
            self.heap.pop();
            self.refresh_first();
        }
        None
    }

    /// The next timer due at `now`, if any; a periodic one is set again.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(TimerId, TimerKind)> {
        while let Some(Reverse((d, _, s, g))) = self.heap.peek().copied() {
            if d > now {
                return None;
            }
            self.heap.pop();
            self.refresh_first();
            if !self.is_live(d, s, g) {
                continue;
            }
            let slot = &mut self.slots[s as usize];
            let kind = slot.kind;
            if slot.period > 0 {
                // Keep the phase; if the loop fell a whole period behind,
                // skip the missed ticks rather than firing them in a burst.
                let p = slot.period;
                let mut next = d.saturating_add(p);
                if next <= now {
                    next = now.saturating_add(p);
                }
                slot.deadline = next;
                self.push(next, s, g);
            } else {
                self.slots.remove(s as usize);
            }
            return Some((TimerId { slot: s, gen: g }, kind));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_in_deadline_order_and_skip_cancelled() {
        let t0 = 1_000_000u64;
        let ms = 1_000_000u64;
        let mut t = Timers::new();
        let c = t.insert(t0 + 3 * ms, None, TimerKind::User);
        let b = t.insert(t0 + 2 * ms, None, TimerKind::User);
        let a = t.insert(t0 + ms, None, TimerKind::User);
        assert!(t.cancel(b));
        assert!(!t.cancel(b));
        let now = t0 + 10 * ms;
        assert_eq!(t.pop_due(now).map(|x| x.0), Some(a));
        assert_eq!(t.pop_due(now).map(|x| x.0), Some(c));
        assert!(t.pop_due(now).is_none());
        assert!(!t.cancel(a), "a fired timer cannot be cancelled");
    }

    #[test]
    fn peek_follows_the_earliest_deadline() {
        let mut t = Timers::new();
        assert_eq!(t.peek(), u64::MAX);
        let a = t.insert(30, None, TimerKind::User);
        t.insert(10, None, TimerKind::User);
        assert_eq!(t.peek(), 10);
        assert!(t.pop_due(10).is_some());
        assert_eq!(t.peek(), 30);
        t.cancel(a);
        assert_eq!(t.peek(), 30, "a cancelled deadline stays until popped");
        assert!(t.pop_due(40).is_none());
        assert_eq!(t.peek(), u64::MAX);
    }

    #[test]
    fn periodic_keeps_its_phase() {
        let t0 = 1_000_000u64;
        let p = 10_000_000u64;
        let mut t = Timers::new();
        let id = t.insert(t0 + p, Some(Duration::from_nanos(p)), TimerKind::User);
        assert_eq!(t.pop_due(t0 + 12_000_000).map(|x| x.0), Some(id));
        assert_eq!(t.next_deadline(), Some(t0 + 2 * p));
        assert!(t.cancel(id));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn dead_entries_do_not_pile_up() {
        let t0 = 1_000_000u64;
        let mut t = Timers::new();
        for i in 0..10_000 {
            let id = t.insert(t0 + i * 1_000_000, None, TimerKind::User);
            t.cancel(id);
        }
        assert!(t.heap.len() <= 130, "{}", t.heap.len());
    }
}
