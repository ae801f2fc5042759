//! The loop's clock: CLOCK_MONOTONIC (the clock `Instant` reads on Linux) in
//! nanoseconds, as a plain `u64`. Deadlines and idle times are compared as
//! integers, which costs a fraction of `Instant` arithmetic on the hot path.

use std::time::Duration;

/// Nanoseconds on CLOCK_MONOTONIC.
#[inline]
pub(crate) fn now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A duration in nanoseconds, saturating far beyond any real timeout.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX / 4)
        .min(u64::MAX / 4)
}

/// A timerfd on CLOCK_MONOTONIC, registered in the poll: the loop sleeps
/// with no timeout and the kernel wakes it at the next deadline. The fd is
/// re-armed only when the earliest deadline changes, so a busy loop does no
/// time arithmetic per turn.
pub(crate) struct TimerFd {
    fd: std::os::fd::OwnedFd, // the timerfd
    armed: u64,               // the deadline it is set to (u64::MAX: disarmed)
}

impl TimerFd {
    pub(crate) fn new() -> std::io::Result<TimerFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create has no memory preconditions; a non-negative
        // result is a new fd that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TimerFd {
            // SAFETY: `fd` was just created and is owned by no one else.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            armed: u64::MAX,
        })
    }

    pub(crate) fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Sets the wake-up to `deadline` (loop clock, ns; `u64::MAX`: none)
    /// unless it is already set there.
    #[inline(always)]
    pub(crate) fn arm(&mut self, deadline: u64) {
        if deadline != self.armed {
            self.set(deadline);
        }
    }

    #[cold]
    #[inline(never)]
    fn set(&mut self, deadline: u64) {
        self.armed = deadline;
        let value = if deadline == u64::MAX {
            libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            } // disarm
        } else {
            // A zero it_value disarms, so a deadline at 0 becomes 1 ns.
            let d = deadline.max(1);
            libc::timespec {
                tv_sec: (d / 1_000_000_000) as libc::time_t,
                tv_nsec: (d % 1_000_000_000) as libc::c_long,
            }
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
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
            log::error!("timerfd_settime: {}", std::io::Error::last_os_error());
        }
    }

    /// Clears the expiry, after the fd was reported readable.
    pub(crate) fn clear(&mut self) {
        let mut n = 0u64;
        // SAFETY: reads at most 8 bytes into `n`, which is 8 bytes.
        let _ = unsafe { libc::read(self.raw(), (&mut n as *mut u64).cast(), 8) };
        self.armed = u64::MAX; // fired: arm again for whatever is next
    }
}
