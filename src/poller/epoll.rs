//! The Linux backend: `epoll_wait` on mio's epoll fd straight into a buffer
//! of epoll events (no copy into mio's `Events`), and a timerfd that wakes
//! the poll at the next deadline.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::{Interest, Poll, Registry};

use super::TIMER;

const EP_IN: u32 = libc::EPOLLIN as u32;
const EP_PRI: u32 = libc::EPOLLPRI as u32;
const EP_OUT: u32 = libc::EPOLLOUT as u32;
const EP_ERR: u32 = libc::EPOLLERR as u32;
const EP_HUP: u32 = libc::EPOLLHUP as u32;
const EP_RDHUP: u32 = libc::EPOLLRDHUP as u32;

/// What an event says a socket is ready for: the epoll mask itself, read the
/// way mio reads it, so that decoding costs nothing until a bit is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Readiness(u32);

impl Readiness {
    /// Readable, as for a socket just cut off by a read budget.
    pub(crate) const READABLE: Readiness = Readiness(EP_IN);
    /// Readable, with the peer's end of file (or an error) known to be there.
    pub(crate) const READ_CLOSED: Readiness = Readiness(EP_IN | EP_RDHUP);

    /// A read will not block: data, end of file or an error (EPOLLIN,
    /// EPOLLPRI, EPOLLERR, EPOLLHUP).
    #[inline(always)]
    pub(crate) fn readable(self) -> bool {
        self.0 & (EP_IN | EP_PRI | EP_ERR | EP_HUP) != 0
    }

    /// A write will not block, or will fail (EPOLLOUT, EPOLLERR).
    #[inline(always)]
    pub(crate) fn writable(self) -> bool {
        self.0 & (EP_OUT | EP_ERR) != 0
    }

    /// One test for the common case: false means certainly not
    /// [`read_closed`](Readiness::read_closed).
    #[inline(always)]
    pub(crate) fn maybe_read_closed(self) -> bool {
        self.0 & (EP_ERR | EP_HUP | EP_RDHUP) != 0
    }

    /// The socket has an error to collect (EPOLLERR).
    #[inline]
    pub(crate) fn error(self) -> bool {
        self.0 & EP_ERR != 0
    }

    /// The peer will send nothing more (EPOLLHUP, or EPOLLIN with
    /// EPOLLRDHUP), or the socket has an error (EPOLLERR).
    #[inline]
    pub(crate) fn read_closed(self) -> bool {
        self.0 & (EP_ERR | EP_HUP) != 0 || self.0 & (EP_IN | EP_RDHUP) == EP_IN | EP_RDHUP
    }
}

/// The poll, its event buffer and the timer wake-up.
pub(crate) struct Poller {
    poll: Poll,                     // mio's poll: its registry registers sockets
    events: Vec<libc::epoll_event>, // readiness from the last poll, straight from epoll_wait
    cursor: usize,                  // the next entry of `events` to hand out
    timer: TimerFd,                 // wakes the poll at the next deadline
}

impl Poller {
    /// A poll with room for `capacity` events per wait, and its timer.
    pub(crate) fn new(capacity: usize) -> io::Result<Poller> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&timer.raw()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Poller {
            poll,
            events: Vec::with_capacity(capacity.clamp(1, 1 << 20)),
            cursor: 0,
            timer,
        })
    }

    /// Where sockets are registered.
    pub(crate) fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Wakes the next poll at `deadline` (loop clock, ns; `u64::MAX`: none).
    #[inline(always)]
    pub(crate) fn arm(&mut self, deadline: u64) {
        self.timer.arm(deadline);
    }

    /// The TIMER event was handled: the deadline is spent.
    pub(crate) fn timer_fired(&mut self) {
        self.timer.clear();
    }

    /// Waits for readiness, at most `timeout` (`None`: until an event or
    /// the deadline), with mio's rounding up to whole milliseconds. An
    /// interrupted wait returns no events.
    #[inline(always)]
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            Some(to) => to
                .checked_add(Duration::from_nanos(999_999))
                .unwrap_or(to)
                .as_millis()
                .min(libc::c_int::MAX as u128) as libc::c_int,
        };
        self.cursor = 0;
        // SAFETY: the buffer has room for `capacity` events, the count passed;
        // epoll_wait initialises the first `n` of them.
        let n = unsafe {
            libc::epoll_wait(
                self.poll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.capacity() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            // SAFETY: no events: nothing to initialise.
            unsafe { self.events.set_len(0) };
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            // SAFETY: epoll_wait wrote `n` (<= capacity) events.
            unsafe { self.events.set_len(n as usize) };
        }
        Ok(())
    }

    /// The next event of the last poll: its token and readiness. Kept in
    /// place between calls, so a dispatch interrupted by a panic resumes
    /// with the event after the one it was serving.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Option<(usize, Readiness)> {
        let ev = self.events.get(self.cursor)?;
        self.cursor += 1;
        Some((ev.u64 as usize, Readiness(ev.events)))
    }
}

/// A timerfd on CLOCK_MONOTONIC (the loop clock), re-armed only when the
/// earliest deadline changes.
struct TimerFd {
    fd: OwnedFd, // the timerfd
    armed: u64,  // the deadline it is set to (u64::MAX: disarmed)
}

impl TimerFd {
    fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create has no memory preconditions; a non-negative
        // result is a new fd that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TimerFd {
            // SAFETY: `fd` was just created and is owned by no one else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: u64::MAX,
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    #[inline(always)]
    fn arm(&mut self, deadline: u64) {
        if deadline != self.armed {
            self.set(deadline);
        }
    }

    #[cold]
    #[inline(never)]
    fn set(&mut self, deadline: u64) {
        self.armed = deadline;
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = if deadline == u64::MAX {
            zero // disarm
        } else {
            // A zero it_value disarms, so a deadline at 0 becomes 1 ns.
            let d = deadline.max(1);
            libc::timespec {
                tv_sec: (d / 1_000_000_000) as libc::time_t,
                tv_nsec: (d % 1_000_000_000) as libc::c_long,
            }
        };
        let spec = libc::itimerspec {
            it_interval: zero,
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec and the old value is not asked for.
        let r = unsafe {
            libc::timerfd_settime(
                self.raw(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            log::error!("timerfd_settime: {}", io::Error::last_os_error());
        }
    }

    /// Clears the expiry after the fd was reported readable.
    fn clear(&mut self) {
        let mut n = 0u64;
        // SAFETY: reads at most 8 bytes into `n`, which is 8 bytes.
        let _ = unsafe { libc::read(self.raw(), (&mut n as *mut u64).cast(), 8) };
        self.armed = u64::MAX; // fired: arm again for whatever is next
    }
}
