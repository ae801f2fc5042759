//! Lingering close: TCP sockets closed gracefully whose peer has not closed
//! yet. Closing a socket while data still arrives makes the kernel answer
//! with a reset, and a reset destroys what the peer has not read yet: the
//! last replies, a TLS peer's last records. So a closed connection's socket
//! (its write side shut, the FIN sent) stays here, read and discarded, until
//! the peer's end of file, an error, or a deadline, as nginx's lingering
//! close does. The handler has heard `on_close` already; its id is dead.
//!
//! A lingering socket is registered under a token no connection can have
//! (the generation [`LINGER_GEN`], past every slot's last), so its events
//! come to the loop as events for no live socket, and go here.

use crate::clock;
use crate::id::ConnId;
use crate::sock::Stream;

/// The generation in a lingering socket's token: a slot is retired before
/// its generation reaches it, so no connection's token has it.
pub(crate) const LINGER_GEN: u32 = u32::MAX;

/// At most this many sockets linger at once; past it a closed socket is
/// closed at once, as without lingering.
pub(crate) const MAX_LINGERING: usize = 1024;

/// Bytes discarded per event, at most, before the socket waits for its
/// deadline: a peer that floods a closed connection gets no more of the
/// loop's time than that.
const DISCARD_PER_EVENT: usize = 256 * 1024;

struct Entry {
    stream: Stream, // write side shut; read and discarded
    until: u64,     // the deadline, on the loop clock (ns)
}

/// The lingering sockets of one loop.
#[derive(Default)]
pub(crate) struct Lingering {
    socks: slab::Slab<Entry>,
}

impl std::fmt::Debug for Lingering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lingering")
            .field("sockets", &self.socks.len())
            .finish()
    }
}

impl Lingering {
    /// Keeps a TCP stream whose write side is shut until `now + timeout`;
    /// false (and the stream is dropped, so closed) when there is no room or
    /// it cannot be registered. The stream is still registered under its
    /// connection's token: it moves to a lingering one.
    pub(crate) fn add(
        &mut self,
        registry: &mio::Registry,
        mut stream: Stream,
        now: u64,
        timeout: std::time::Duration,
    ) -> bool {
        if self.socks.len() >= MAX_LINGERING || !matches!(stream, Stream::Tcp(_)) {
            return false;
        }
        let entry = self.socks.vacant_entry();
        let token = ConnId::new(entry.key() as u32, LINGER_GEN).token();
        if registry
            .reregister(stream.source(), token, mio::Interest::READABLE)
            .is_err()
        {
            return false;
        }
        entry.insert(Entry {
            stream,
            until: now.saturating_add(clock::nanos(timeout)),
        });
        true
    }

    /// True if `id` is a lingering socket's token.
    pub(crate) fn owns(id: ConnId) -> bool {
        id.gen == LINGER_GEN
    }

    /// Readiness of a lingering socket: what came is discarded; at the
    /// peer's end of file, or an error, the socket closes.
    pub(crate) fn ready(&mut self, id: ConnId, buf: &mut [u8]) {
        let key = id.key as usize;
        let Some(entry) = self.socks.get_mut(key) else {
            return;
        };
        // At the limit it waits for more, or for its deadline.
        if entry.stream.discard(buf, DISCARD_PER_EVENT) == Some(true) {
            // Closing the descriptor takes it out of the poll set too.
            drop(self.socks.remove(key));
        }
    }

    /// Closes the sockets whose deadline has passed; true while any is left.
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        self.socks.retain(|_, e| e.until > now);
        !self.socks.is_empty()
    }

    /// Closes every lingering socket (each drained once first): the
    /// process ran out of descriptors.
    pub(crate) fn close_all(&mut self) {
        drain_and_close(self.socks.drain());
    }

    /// How many sockets linger.
    pub(crate) fn len(&self) -> usize {
        self.socks.len()
    }

    /// True if none lingers.
    pub(crate) fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }
}

/// The loop is going away: each socket is read once more (what has come
/// since its last event, which would make the close a reset) and closed.
impl Drop for Lingering {
    fn drop(&mut self) {
        drain_and_close(self.socks.drain());
    }
}

/// Reads each socket once more (what has come since its last event) and
/// closes it.
fn drain_and_close(entries: impl Iterator<Item = Entry>) {
    let mut buf = [0u8; 16 * 1024];
    for mut entry in entries {
        let _ = entry.stream.discard(&mut buf, DISCARD_PER_EVENT);
    }
}
