//! The two operating-system calls the bench needs that std lacks.

use std::time::Duration;

/// CPU time (user + system) used so far by the calling thread, so that the
/// generator's own load is told apart from an in-process server's.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft limit on open files to the hard limit and returns the new
/// soft limit: 1,000 connections (twice that with the in-process server)
/// need more than the usual default of 1,024.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one rlimit we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A periodic timer as a file descriptor (timerfd) for the open-loop
/// schedule, registered with the loop as a plain fd: armed once with the
/// period (100 us to 1 ms), the kernel fires it every period, and each wake
/// sends what has fallen due.
#[derive(Debug)]
pub struct TimerFd(std::os::fd::OwnedFd);

impl TimerFd {
    /// A disarmed, non-blocking timer on the monotonic clock (as `Instant`).
    pub fn new() -> std::io::Result<TimerFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes no pointers; a non-negative result is
        // a new fd that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(TimerFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires every `period` from now on.
    pub fn every(&self, period: Duration) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: a live fd, a valid itimerspec, and a null old-value pointer
        // (allowed).
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count, so that the fd can signal again (it is
    /// registered edge-triggered).
    pub fn drain(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
        while unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) } > 0 {}
    }

    /// A duplicate of the fd, for the loop to watch (it owns what it watches).
    pub fn dup(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.0.try_clone()
    }
}

/// Asks the kernel to fire this thread's timers on time: by default Linux
/// may defer a sleeping thread's wake-up by 50 us to batch wake-ups, which
/// the open loop would count as lateness.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}
