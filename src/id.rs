//! Ids handed to users: a slot number plus the generation of the slot's
//! occupant, carried in the poll's token.

use std::fmt;

/// Names one socket in a loop: a connection, a listener, a datagram socket or
/// a registered file descriptor.
///
/// An id is a slot number plus a generation. Each slot counts the sockets it
/// has held, and a slot is retired before its count could wrap, so no two
/// ids of one loop are ever equal: an id kept after its socket closed never
/// reaches a socket that reuses the slot; operations on it fail with
/// [`Error::Stale`](crate::Error::Stale).
///
/// Ids are unique within their loop; two loops hand out equal ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    pub(crate) fn new(key: u32, gen: u32) -> ConnId {
        ConnId { key, gen }
    }

    /// The id as one number, unique within its loop for the loop's lifetime.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.key)
    }

    /// The slot number: small, dense, reused after close. Handy as an index
    /// into a handler's own `Vec`, with the generation check left to the loop.
    pub fn slot(self) -> usize {
        self.key as usize
    }

    pub(crate) fn from_u64(v: u64) -> ConnId {
        ConnId {
            key: v as u32,
            gen: (v >> 32) as u32,
        }
    }

    pub(crate) fn token(self) -> mio::Token {
        mio::Token(self.as_u64() as usize)
    }

    pub(crate) fn from_token(t: mio::Token) -> ConnId {
        let v = t.0 as u64;
        ConnId {
            key: v as u32,
            gen: (v >> 32) as u32,
        }
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}#{})", self.key, self.gen)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.key, self.gen)
    }
}

/// Names a timer set with [`Context::set_timer`](crate::Context::set_timer)
/// or [`Context::set_interval`](crate::Context::set_interval).
///
/// Like [`ConnId`], it carries a generation: cancelling a timer that already
/// fired (or was cancelled) is a harmless `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl TimerId {
    /// The id as one number, unique within its loop.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.slot)
    }
}
