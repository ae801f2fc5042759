//! The portable backend: mio's own `Poll` and `Events` (epoll, kqueue, …),
//! the timeout of each wait shortened to reach the next deadline.

use std::io;
use std::time::Duration;

use mio::{Events, Poll, Registry};

use super::TIMER;
use crate::clock;

const R: u8 = 1; // readable
const W: u8 = 2; // writable
const RC: u8 = 4; // read closed
const ERR: u8 = 8; // error

/// What an event says a socket is ready for, decoded from mio's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Readiness(u8);

impl Readiness {
    /// Readable, as for a socket just cut off by a read budget.
    pub(crate) const READABLE: Readiness = Readiness(R);
    /// Readable, with the peer's end of file (or an error) known to be there.
    pub(crate) const READ_CLOSED: Readiness = Readiness(R | RC);

    fn of(ev: &mio::event::Event) -> Readiness {
        let mut bits = 0;
        if ev.is_readable() {
            bits |= R;
        }
        if ev.is_writable() {
            bits |= W;
        }
        if ev.is_read_closed() {
            bits |= RC;
        }
        if ev.is_error() {
            bits |= ERR;
        }
        Readiness(bits)
    }

    /// A read will not block: data, end of file or an error.
    #[inline(always)]
    pub(crate) fn readable(self) -> bool {
        self.0 & (R | RC | ERR) != 0
    }

    /// A write will not block, or will fail.
    #[inline(always)]
    pub(crate) fn writable(self) -> bool {
        self.0 & (W | ERR) != 0
    }

    /// False means certainly not [`read_closed`](Readiness::read_closed).
    #[inline(always)]
    pub(crate) fn maybe_read_closed(self) -> bool {
        self.0 & (RC | ERR) != 0
    }

    /// The socket has an error to collect.
    #[inline]
    pub(crate) fn error(self) -> bool {
        self.0 & ERR != 0
    }

    /// The peer will send nothing more, or the socket has an error.
    #[inline]
    pub(crate) fn read_closed(self) -> bool {
        self.maybe_read_closed()
    }
}

/// The poll, its events and the deadline.
pub(crate) struct Poller {
    poll: Poll,                     // mio's poll
    events: Events,                 // mio's buffer
    ready: Vec<(usize, Readiness)>, // the last poll's events, decoded
    cursor: usize,                  // the next entry of `ready` to hand out
    deadline: u64,                  // the next timer deadline (u64::MAX: none)
}

impl Poller {
    /// A poll with room for `capacity` events per wait.
    pub(crate) fn new(capacity: usize) -> io::Result<Poller> {
        let capacity = capacity.clamp(1, 1 << 20);
        Ok(Poller {
            poll: Poll::new()?,
            events: Events::with_capacity(capacity),
            ready: Vec::with_capacity(capacity + 1),
            cursor: 0,
            deadline: u64::MAX,
        })
    }

    /// Where sockets are registered.
    pub(crate) fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Wakes the next poll at `deadline` (loop clock, ns; `u64::MAX`: none).
    #[inline(always)]
    pub(crate) fn arm(&mut self, deadline: u64) {
        self.deadline = deadline;
    }

    /// The TIMER event was handled: the deadline is spent.
    pub(crate) fn timer_fired(&mut self) {
        self.deadline = u64::MAX;
    }

    /// Waits for readiness, at most `timeout` (`None`: until an event or
    /// the deadline). A deadline reached is reported as a TIMER event.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.ready.clear();
        self.cursor = 0;
        let wait = super::timeout_until(timeout, self.deadline, clock::now());
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            self.ready.push((ev.token().0, Readiness::of(ev)));
        }
        if self.deadline != u64::MAX && clock::now() >= self.deadline {
            self.ready.push((TIMER.0, Readiness::READABLE));
        }
        Ok(())
    }

    /// The next event of the last poll: its token and readiness.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Option<(usize, Readiness)> {
        let ev = *self.ready.get(self.cursor)?;
        self.cursor += 1;
        Some(ev)
    }
}
