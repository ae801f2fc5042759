//! The loop's clock: CLOCK_MONOTONIC (the clock `Instant` reads on Unix) in
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
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on the Unix systems netloop supports.
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
