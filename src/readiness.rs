//! Readiness of file descriptors a user registers: what to watch for
//! ([`Interest`]) and what was found ([`Ready`]), in netloop's own terms.

/// Readiness of a file descriptor registered with [`Context::register_fd`](crate::Context::register_fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Ready {
    /// Reading will not block (until it returns WouldBlock).
    pub readable: bool,
    /// Writing will not block (until it returns WouldBlock).
    pub writable: bool,
    /// The other end closed (hang-up) or the fd reported an error.
    pub closed: bool,
}

/// What a file descriptor registered with [`Context::register_fd`](crate::Context::register_fd) is
/// watched for: readable, writable, or both (`READABLE | WRITABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    readable: bool, // on_fd_ready when a read will not block
    writable: bool, // on_fd_ready when a write will not block
}

impl Interest {
    /// Readiness to read (data, end of file, or an error to read).
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Readiness to write.
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };

    /// True if reading is watched.
    pub fn is_readable(self) -> bool {
        self.readable
    }

    /// True if writing is watched.
    pub fn is_writable(self) -> bool {
        self.writable
    }

    pub(crate) fn to_mio(self) -> mio::Interest {
        match (self.readable, self.writable) {
            (true, true) => mio::Interest::READABLE | mio::Interest::WRITABLE,
            (false, true) => mio::Interest::WRITABLE,
            _ => mio::Interest::READABLE,
        }
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;

    /// Both interests.
    fn bitor(self, other: Interest) -> Interest {
        Interest {
            readable: self.readable || other.readable,
            writable: self.writable || other.writable,
        }
    }
}
