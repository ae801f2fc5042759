//! The OS readiness API, and nothing else: the poll, its event buffer, the
//! reserved tokens, what an event's readiness means, and the wake-up at the
//! next timer deadline. The rest of the crate never names epoll, kqueue or a
//! timerfd; it asks a [`Poller`] to wait and reads [`Readiness`].
//!
//! Two backends, chosen at build time:
//! - `epoll` (Linux): `epoll_wait` straight into a buffer of epoll events on
//!   mio's epoll fd, and a timerfd for the deadline, so a busy loop does no
//!   time arithmetic per turn;
//! - `portable` (every other Unix, and Linux built with
//!   `RUSTFLAGS='--cfg netloop_portable'`): mio's own `Poll` and `Events`,
//!   with the poll's timeout taken from the deadline.
//!
//! Both register sockets through mio's `Registry` and report the same
//! tokens; a due deadline arrives as an event with the [`TIMER`] token.

use mio::Token;

#[cfg(all(target_os = "linux", not(netloop_portable)))]
mod epoll;
#[cfg(all(target_os = "linux", not(netloop_portable)))]
pub(crate) use epoll::{Poller, Readiness};

#[cfg(any(not(target_os = "linux"), netloop_portable))]
mod portable;
#[cfg(any(not(target_os = "linux"), netloop_portable))]
pub(crate) use portable::{Poller, Readiness};

/// The waker's token: a handle sent a message or asked for a stop.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// The signal pipe's token (SIGINT, SIGTERM).
pub(crate) const SIGNALS: Token = Token(usize::MAX - 1);
/// The timer deadline's token: timers are due.
pub(crate) const TIMER: Token = Token(usize::MAX - 2);
/// Tokens from here up are reserved; sockets' tokens (ids) stay below.
pub(crate) const RESERVED: usize = TIMER.0;

/// The portable backend's timeout: the caller's, shortened to reach
/// `deadline` (loop clock, ns; `u64::MAX`: none) at `now`, rounded up to
/// whole milliseconds where the OS counts in them.
#[cfg_attr(all(target_os = "linux", not(netloop_portable)), allow(dead_code))]
pub(crate) fn timeout_until(
    timeout: Option<std::time::Duration>,
    deadline: u64,
    now: u64,
) -> Option<std::time::Duration> {
    if deadline == u64::MAX {
        return timeout;
    }
    let until = std::time::Duration::from_nanos(deadline.saturating_sub(now));
    Some(timeout.map_or(until, |t| t.min(until)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeout_until_takes_the_earlier() {
        let s = Duration::from_secs(1);
        assert_eq!(timeout_until(None, u64::MAX, 5), None);
        assert_eq!(timeout_until(Some(s), u64::MAX, 5), Some(s));
        assert_eq!(
            timeout_until(None, 2_000_000, 1_000_000),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            timeout_until(Some(Duration::ZERO), 2_000_000, 1_000_000),
            Some(Duration::ZERO)
        );
        assert_eq!(timeout_until(Some(s), 5, 10), Some(Duration::ZERO));
    }

    /// A due deadline is reported with the TIMER token, on either backend.
    #[test]
    fn deadline_wakes_the_poll() {
        let mut p = Poller::new(16).unwrap();
        let at = crate::clock::now() + 2_000_000;
        p.arm(at);
        let start = std::time::Instant::now();
        let mut fired = false;
        while start.elapsed() < Duration::from_secs(5) && !fired {
            p.poll(Some(Duration::from_secs(1))).unwrap();
            while let Some((token, _)) = p.next() {
                if token == TIMER.0 {
                    p.timer_fired();
                    fired = true;
                }
            }
        }
        assert!(fired, "no TIMER event");
        assert!(crate::clock::now() >= at, "fired early");
    }
}
