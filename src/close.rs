//! Why a connection closed: the reason every close path reports.

use std::io;

/// Why a connection (or datagram socket) closed, as told to
/// [`Handler::on_close`](crate::Handler::on_close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (end of file) and the loop then closed ours,
    /// after flushing what was queued.
    PeerClosed,
    /// Closed locally, by [`Context::close`](crate::Context::close) or [`Context::abort`](crate::Context::abort).
    Closed,
    /// The peer reset the connection, or a write found it gone
    /// (ECONNRESET, EPIPE).
    Reset,
    /// Another socket error; the kind says which.
    Error(io::ErrorKind),
    /// No progress for longer than the idle timeout.
    IdleTimeout,
    /// The write queue passed [`Config::max_write_queue`](crate::Config::max_write_queue):
    /// the peer does not read what it is sent.
    WriteQueueFull,
    /// Unconsumed input passed [`Config::max_input`](crate::Config::max_input).
    InputTooLarge,
    /// Refused: the loop already had [`Config::max_connections`](crate::Config::max_connections).
    Refused,
    /// A callback for this connection panicked.
    Panic,
    /// Closed by the loop's stop: a graceful stop closes each connection
    /// once its queue is flushed (or when the drain deadline passes); an
    /// immediate stop closes at once.
    Shutdown,
    /// Taken out of the loop with [`Context::detach`](crate::Context::detach).
    Detached,
    /// TLS failed (the `tls` feature): the handshake or a record was
    /// rejected (the alert rustls chose was sent first, then the
    /// connection closed), or the handshake did not complete within
    /// `Config::tls_handshake_timeout`, or the peer closed during it. An
    /// accepted TLS connection closed during its handshake was never
    /// opened: the handler hears `on_close` with this reason without an
    /// `on_open`. (A `connect_tls` connection whose handshake fails hears
    /// `on_connect_failed` instead, as for a connect that failed.)
    Tls,
}

impl CloseReason {
    pub(crate) fn from_io(e: &io::Error) -> CloseReason {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
            k => CloseReason::Error(k),
        }
    }
}
