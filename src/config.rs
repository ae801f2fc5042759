//! Limits and settings of a loop, and its statistics.

use std::time::Duration;

/// Limits and settings of an [`EventLoop`](crate::EventLoop), with defaults
/// that suit a server on the open internet.
///
/// Every limit says what a peer sees when it is hit; README's "Limits and
/// failure behaviour" lists them in one table.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let config = netloop::Config {
///     max_connections: 100,
///     idle_timeout: Some(Duration::from_secs(30)),
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Most connections open at once, accepted and outbound together
    /// (default 10,000). A connection accepted past it is refused at once:
    /// [`Handler::on_refuse`](crate::Handler::on_refuse) may queue a reason,
    /// which is flushed before the close.
    pub max_connections: usize,
    /// Most connections accepted from one listener per readiness event
    /// (default 64); the rest wait for the next turn of the loop, so a
    /// connection flood cannot starve established connections.
    pub accepts_per_turn: usize,
    /// Most bytes read from one connection per turn of the loop (default
    /// 1 MiB); a datagram socket is read for at most 64 datagrams. A
    /// socket cut off by its budget is read again on the next turn, before
    /// the loop blocks, after the others ready then: no connection waits
    /// longer than the others' budgets. A larger budget serves a streaming
    /// connection in longer runs, which costs the kernel less per byte
    /// (measured with the load bench's `--firehose` under a 30% CPU budget:
    /// 3–7% less server CPU per byte than with 256 KiB). A server that
    /// forwards what it reads to other connections (a chat room, a relay)
    /// queues up to this much on them per turn: keep it well below their
    /// [`max_write_queue`](Config::max_write_queue).
    pub read_budget: usize,
    /// Most bytes written to one connection per turn (default 1 MiB).
    pub write_budget: usize,
    /// Write queue size above which reading from the connection pauses
    /// (default 1 MiB); [`Handler::on_backpressure`](crate::Handler::on_backpressure) hears of it.
    ///
    /// Pausing is right for a server answering requests (a client that does
    /// not read its replies stops being read), but two peers that both send
    /// more than they read — a client streaming a file into an echo server,
    /// say — can pause each other for good. Such a client sets this to
    /// `usize::MAX` and throttles its own source instead (the hard cap,
    /// [`max_write_queue`](Config::max_write_queue), still applies). A relay
    /// pauses the *other* side instead, with
    /// [`Context::pause_reading`](crate::Context::pause_reading): see the
    /// [guide](crate::guide).
    pub high_water: usize,
    /// Write queue size at or below which paused reading resumes (default 256 KiB).
    pub low_water: usize,
    /// Hard cap on a connection's write queue (default 64 MiB). A `send` past
    /// it closes the connection with
    /// [`CloseReason::WriteQueueFull`](crate::CloseReason::WriteQueueFull):
    /// this is how a reader that never reads is dropped.
    pub max_write_queue: usize,
    /// Most unconsumed input kept for a connection (default 1 MiB). Past it
    /// the connection is closed with
    /// [`CloseReason::InputTooLarge`](crate::CloseReason::InputTooLarge).
    pub max_input: usize,
    /// Close a connection that makes no progress for this long (default five
    /// minutes; `None` turns it off). Progress is bytes arriving while the
    /// handler holds nothing back unconsumed (so a client trickling bytes of
    /// a line that never completes is not kept alive by the trickle), or the
    /// kernel taking output. The close is graceful (queued output is flushed
    /// first); a connection still stuck a sweep later is reset. Checked by a
    /// sweep eight times per timeout: a close comes no earlier than the
    /// timeout and at most a quarter later.
    pub idle_timeout: Option<Duration>,
    /// How long a gracefully closed TCP connection's socket lingers (default
    /// 5 s, as nginx's `lingering_timeout`): after `on_close`, with the
    /// write side shut and everything sent, the loop keeps reading and
    /// discarding until the peer's end of file, so that what the peer sends
    /// after the close (a last request, a TLS peer's last records) cannot
    /// make the kernel reset the connection and destroy what the peer has
    /// not read yet. At most 1,024 sockets linger at once (more close at
    /// once), and when accepting runs out of file descriptors the lingering
    /// ones are closed first; `Duration::ZERO` closes at once. An abort
    /// never lingers.
    pub linger_timeout: Duration,
    /// How long a graceful stop waits for write queues to drain before it
    /// closes what is left (default 5 s).
    pub drain_timeout: Duration,
    /// Listen backlog (default 1024).
    pub backlog: i32,
    /// Set TCP_NODELAY on every TCP connection (default true).
    pub nodelay: bool,
    /// Capacity of the readiness event buffer (default 1024).
    pub events_capacity: usize,
    /// How long accepting pauses after the process ran out of file
    /// descriptors (EMFILE/ENFILE) (default 500 ms, as nginx).
    pub accept_backoff: Duration,
    /// Most datagrams queued on one datagram socket while the kernel refuses
    /// them (default 1024); past it datagrams are dropped and counted.
    pub datagram_queue: usize,
    /// Catch a panic in a callback (default true): the connection the
    /// callback was for is closed with
    /// [`CloseReason::Panic`](crate::CloseReason::Panic), the panic is logged
    /// and the loop goes on. False lets panics propagate out of `run`. Either
    /// way a build with `panic = "abort"` aborts.
    pub catch_panics: bool,
    /// Most messages waiting in the loop's channel from
    /// [`Handle`](crate::Handle)s (default `None`: unbounded). When set, a
    /// send to a full queue gives the message back with
    /// [`SendError::Full`](crate::SendError::Full) instead of growing
    /// memory without bound while the loop falls behind.
    pub message_queue: Option<usize>,
    /// How long a TLS connection may take to complete its handshake
    /// (default 10 s; the `tls` feature). Past it the connection is closed
    /// with [`CloseReason::Tls`](crate::CloseReason::Tls).
    #[cfg(feature = "tls")]
    pub tls_handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: 10_000,
            accepts_per_turn: 64,
            read_budget: 1024 * 1024,
            write_budget: 1024 * 1024,
            high_water: 1024 * 1024,
            low_water: 256 * 1024,
            max_write_queue: 64 * 1024 * 1024,
            max_input: 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            linger_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            backlog: 1024,
            nodelay: true,
            events_capacity: 1024,
            accept_backoff: Duration::from_millis(500),
            datagram_queue: 1024,
            catch_panics: true,
            message_queue: None,
            #[cfg(feature = "tls")]
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Checks that the settings can work together.
    ///
    /// # Errors
    /// `InvalidInput`, the message naming the field: a budget, a capacity or
    /// a queue bound of zero (nothing could ever be read, accepted, written
    /// or polled); `low_water` above `high_water` (reading would pause and
    /// resume at once); `max_input` or `max_write_queue` of zero; a zero
    /// `idle_timeout`.
    pub fn validate(&self) -> std::io::Result<()> {
        let bad = |field: &str, why: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("Config::{field} {why}"),
            ))
        };
        let nonzero = [
            ("max_connections", self.max_connections),
            ("accepts_per_turn", self.accepts_per_turn),
            ("read_budget", self.read_budget),
            ("write_budget", self.write_budget),
            ("max_write_queue", self.max_write_queue),
            ("max_input", self.max_input),
            ("events_capacity", self.events_capacity),
            ("message_queue", self.message_queue.unwrap_or(1)),
        ];
        for (field, value) in nonzero {
            if value == 0 {
                return bad(field, "must be at least 1");
            }
        }
        if self.low_water > self.high_water {
            return bad(
                "low_water",
                &format!(
                    "({}) must not exceed high_water ({})",
                    self.low_water, self.high_water
                ),
            );
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return bad("idle_timeout", "must be above zero (None turns it off)");
        }
        if self.backlog < 0 {
            return bad("backlog", "must not be negative");
        }
        Ok(())
    }
}

/// Counters kept by a loop, read with [`Context::stats`](crate::Context::stats).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Stream connections open now (accepted and outbound).
    pub connections: usize,
    /// Connections accepted since the loop started.
    pub accepted: u64,
    /// Outbound connections established.
    pub connected: u64,
    /// Connections closed (every reason).
    pub closed: u64,
    /// Connections refused for being over `max_connections`.
    pub refused: u64,
    /// Bytes read from streams.
    pub bytes_read: u64,
    /// Bytes written to streams.
    pub bytes_written: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams dropped because the kernel refused them and the queue was full.
    pub datagrams_dropped: u64,
    /// Readiness events handled.
    pub events: u64,
    /// Times the loop returned from polling.
    pub polls: u64,
    /// Messages received from other threads.
    pub messages: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Panics caught in callbacks.
    pub panics: u64,
    /// Accept failures for lack of file descriptors (EMFILE/ENFILE/ENOBUFS/ENOMEM).
    pub accept_errors: u64,
    /// Closed TCP sockets lingering now: read and discarded until the
    /// peer's end of file ([`Config::linger_timeout`]).
    pub lingering: usize,
}
