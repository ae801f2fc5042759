//! The framework's own error outcomes.

use std::fmt;
use std::io;

/// Why an operation on a [`ConnId`](crate::ConnId) failed.
///
/// Converts into [`io::Error`] so that `?` works in functions returning
/// `io::Result`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The id names no live socket: it was closed (its slot may be reused by
    /// now, but never reached through this id). Nothing was done.
    Stale,
    /// The connection is closing or its write side was shut down: nothing more
    /// can be sent on it. Nothing was queued.
    Closing,
    /// The operation does not apply to this kind of socket, for example
    /// `send_to` on a TCP stream, or `send` on a listener.
    WrongKind,
    /// A datagram could not be sent now and the socket's queue of waiting
    /// datagrams is full: the datagram was dropped (and counted in
    /// [`Stats::datagrams_dropped`](crate::Stats::datagrams_dropped)).
    Full,
    /// The write queue passed its hard cap
    /// ([`Config::max_write_queue`](crate::Config::max_write_queue)): the
    /// connection is being closed with
    /// [`CloseReason::WriteQueueFull`](crate::CloseReason::WriteQueueFull).
    QueueFull,
    /// The operating system refused.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Stale => f.write_str("stale id: the socket was closed"),
            Error::Closing => f.write_str("the connection is closing: nothing more can be sent"),
            Error::WrongKind => f.write_str("the operation does not apply to this kind of socket"),
            Error::Full => f.write_str("the datagram queue is full: datagram dropped"),
            Error::QueueFull => {
                f.write_str("the write queue passed its hard cap: the connection is being closed")
            }
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            Error::Stale => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            Error::Closing => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
            Error::WrongKind => io::Error::new(io::ErrorKind::Unsupported, e.to_string()),
            Error::Full | Error::QueueFull => {
                io::Error::new(io::ErrorKind::WouldBlock, e.to_string())
            }
        }
    }
}
