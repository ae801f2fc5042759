//! The context every callback receives: how a handler acts on the loop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::clock;

use crate::Interest;
use socket2::SockRef;

use crate::conn::Conn;
use crate::core::{Core, DgramEntry, Kind};
use crate::sock::{self, Bound, Dgram, Listener, Outbound, PeerCred, StdSocket, Stream};
use crate::timer::TimerKind;
use crate::{
    Addr, CloseReason, Config, ConnId, Error, ListenOptions, Stats, TimerId, ToEndpoint, Transport,
};

/// What a handler uses to act on the loop: send, close, listen, connect,
/// set timers, read addresses and options. Every callback gets one.
///
/// Operations on an id that is no longer live fail with [`Error::Stale`] and
/// do nothing, so an id kept too long is harmless.
pub struct Context<'a> {
    core: &'a mut Core, // the loop's state
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// A socket taken out of the loop by [`Context::detach`], with what was in
/// flight.
#[derive(Debug)]
#[non_exhaustive]
pub struct Detached {
    /// The socket, in blocking mode as std sockets are by default.
    pub socket: StdSocket,
    /// Bytes queued with `send` that the kernel had not yet taken.
    pub unsent: Vec<u8>,
    /// Bytes read from the socket that the handler had not consumed. When
    /// detaching from inside [`on_data`](crate::Handler::on_data), that call's
    /// `data` already holds everything read and not consumed, so this is
    /// empty: keep what you need of `data`.
    pub unread: Vec<u8>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(core: &'a mut Core) -> Context<'a> {
        Context { core }
    }

    /// Listens on an address string such as `tcp://127.0.0.1:7000`,
    /// `tcp://[::1]:0`, `unix:///tmp/x.sock`, `unix://@name`, or binds a
    /// datagram socket for `udp://…` and `unixgram://…`.
    ///
    /// Accepted connections reach [`Handler::on_open`](crate::Handler::on_open);
    /// datagrams reach [`Handler::on_datagram`](crate::Handler::on_datagram)
    /// with the returned id. A Unix socket file left by a dead server is
    /// replaced; one a live server answers on is not (`AddrInUse`). The file
    /// is removed when the listener closes.
    ///
    /// # Errors
    /// `InvalidInput` for a bad address (the message names it), or the OS
    /// error from bind or listen (`AddrInUse`, `PermissionDenied`, …).
    pub fn listen(&mut self, addr: impl ToEndpoint) -> io::Result<ConnId> {
        self.listen_with(addr, &ListenOptions::default())
    }

    /// [`listen`](Context::listen) with options: backlog, SO_REUSEPORT, …
    ///
    /// # Errors
    /// As [`listen`](Context::listen).
    pub fn listen_with(
        &mut self,
        addr: impl ToEndpoint,
        opts: &ListenOptions,
    ) -> io::Result<ConnId> {
        let ep = addr.to_endpoint()?;
        #[cfg(feature = "tls")]
        let tls = match (ep.transport, &opts.tls) {
            (Transport::Tls, Some(config)) => Some(config.clone()),
            (Transport::Tls, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                    "{ep}: listening on tls:// needs ListenOptions::tls (a rustls ServerConfig)"
                ),
                ))
            }
            (_, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{ep}: ListenOptions::tls is for tls:// addresses only"),
                ))
            }
            (_, None) => None,
        };
        #[cfg(not(feature = "tls"))]
        if ep.transport == Transport::Tls {
            return Err(no_tls(&ep));
        }
        let id = match sock::bind(&ep, opts, self.core.config().backlog)? {
            Bound::Listener(l) => self.core.insert(Kind::Listener { l, paused: false })?,
            Bound::Dgram(sock) => self.insert_dgram(sock)?,
        };
        #[cfg(feature = "tls")]
        if let Some(config) = tls {
            self.core.tls_listen(id, config);
        }
        Ok(id)
    }

    /// Starts a TLS connection over TCP (the `tls` feature) to `addr`
    /// (`tls://HOST:PORT` or `tcp://HOST:PORT`), verifying the server as
    /// `server_name` (a DNS name or an IP address) with `config`. As
    /// [`connect`](Context::connect), except that the handler hears
    /// [`on_open`](crate::Handler::on_open) only once the handshake
    /// completes. Until then the connection is still being made: a
    /// handshake that fails or does not complete within
    /// [`Config::tls_handshake_timeout`] ends it with
    /// [`on_connect_failed`](crate::Handler::on_connect_failed)
    /// (`InvalidData`), and so does a `close` or `abort` (`Interrupted`:
    /// what was sent is dropped). Bytes sent before then wait in rustls, are
    /// counted with the write queue against `max_write_queue` (the send
    /// fails with `QueueFull` past it), and are encrypted and sent once the
    /// handshake completes; past the high-water mark, `on_backpressure`
    /// comes right after `on_open`.
    ///
    /// # Errors
    /// As [`connect`](Context::connect); `InvalidInput` for a server name
    /// that is neither a DNS name nor an IP address, or another transport.
    #[cfg(feature = "tls")]
    pub fn connect_tls(
        &mut self,
        addr: impl ToEndpoint,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<ConnId> {
        let mut ep = addr.to_endpoint()?;
        if !matches!(ep.transport, Transport::Tls | Transport::Tcp) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ep}: TLS runs over tcp:// or tls:// only"),
            ));
        }
        ep.transport = Transport::Tcp;
        let name =
            rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad TLS server name {server_name:?}: {e}"),
                )
            })?;
        let tls = Box::new(crate::tls::TlsConn::client(&config, name)?);
        let (out, err) = sock::connect(&ep, self.core.config().nodelay)?;
        let Outbound::Stream(stream) = out else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let mut conn = Conn::new(stream, true, self.core.now(), self.core.idle_ns());
        conn.set_tls(tls);
        let id = self.core.insert(Kind::Conn(conn))?;
        self.core.tls_deadline(id);
        if let Some(e) = err {
            self.core.fail_connect(id, e);
        }
        Ok(id)
    }

    fn insert_dgram(&mut self, sock: Dgram) -> io::Result<ConnId> {
        self.core.insert(Kind::Dgram(DgramEntry::new(sock)))
    }

    /// Starts connecting to an address string, without blocking.
    ///
    /// The outcome reaches the handler as a value:
    /// [`on_open`](crate::Handler::on_open) once connected, or
    /// [`on_connect_failed`](crate::Handler::on_connect_failed) with the error
    /// (`ConnectionRefused`, `TimedOut`, …). Bytes sent before the connection
    /// is open are queued and flushed once it is. For `udp://` and
    /// `unixgram://` this makes a connected datagram socket (bound to an
    /// ephemeral port, or an autobound abstract name), open at once:
    /// [`send`](Context::send) then sends one datagram to the peer.
    ///
    /// # Errors
    /// Only for a bad address or a socket that could not be made; a refused
    /// or unreachable peer is reported to the handler instead. A Unix stream
    /// connect completes or fails at once; one to a listener whose backlog is
    /// full fails with `WouldBlock` (EAGAIN), as the kernel reports it: retry
    /// later if that suits the protocol.
    pub fn connect(&mut self, addr: impl ToEndpoint) -> io::Result<ConnId> {
        let ep = addr.to_endpoint()?;
        if ep.transport == Transport::Tls {
            #[cfg(not(feature = "tls"))]
            return Err(no_tls(&ep));
            #[cfg(feature = "tls")]
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ep}: a TLS connection is made with Context::connect_tls"),
            ));
        }
        let (out, err) = sock::connect(&ep, self.core.config().nodelay)?;
        match out {
            Outbound::Stream(stream) => {
                let conn = Conn::new(stream, true, self.core.now(), self.core.idle_ns());
                let id = self.core.insert(Kind::Conn(conn))?;
                if let Some(e) = err {
                    self.core.fail_connect(id, e);
                }
                Ok(id)
            }
            Outbound::Dgram(sock) => {
                let id = self.insert_dgram(sock)?;
                match err {
                    Some(e) => self.core.fail_dgram_connect(id, e),
                    None => self.core.opened(id),
                }
                Ok(id)
            }
        }
    }

    /// [`connect`](Context::connect) with the connection's state given now,
    /// instead of `Default`: the handler sees it in
    /// [`on_open`](crate::Handler::on_open) and every later callback, or
    /// gets it back in
    /// [`on_connect_failed`](crate::Handler::on_connect_failed). A relay's
    /// second leg knows its peer from the start:
    ///
    /// ```no_run
    /// # #![allow(dead_code)]
    /// # use netloop::{ConnId, Context};
    /// #[derive(Default)]
    /// struct Leg { peer: Option<ConnId> }
    /// # fn f(cx: &mut Context<'_>, client: ConnId) -> std::io::Result<()> {
    /// let upstream = cx.connect_with("tcp://127.0.0.1:6379", Leg { peer: Some(client) })?;
    /// # let _ = upstream; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Context::connect); `InvalidInput` if `state` is not of
    /// the handler's [`Conn`](crate::Handler::Conn) type.
    pub fn connect_with<S: Send + 'static>(
        &mut self,
        addr: impl ToEndpoint,
        state: S,
    ) -> io::Result<ConnId> {
        self.core
            .check_seed(std::any::TypeId::of::<S>(), std::any::type_name::<S>())?;
        let id = self.connect(addr)?;
        self.core.seed(id, Box::new(state));
        Ok(id)
    }

    /// Queues bytes to send on a stream connection: all of them are
    /// delivered, in order (sendall). The loop writes every connection's queue
    /// once per turn, before it sleeps, so several sends in one turn cost one
    /// system call. On a connected datagram socket, sends one datagram.
    ///
    /// One case skips the queue: inside [`on_data`](crate::Handler::on_data),
    /// sending (part of) the `data` just offered back to the same connection,
    /// while nothing is queued for it. Those bytes are not copied: the loop
    /// writes them from its read buffer as soon as `on_data` returns (an
    /// echo, or a protocol that answers with a slice of its input, costs no
    /// copy). Whatever the kernel does not take is queued as usual, and any
    /// other call touching the connection first puts them in the queue, so
    /// order is always kept.
    ///
    /// # Errors
    /// [`Error::Stale`] for a closed id, [`Error::Closing`] after `close` or
    /// `shutdown`, [`Error::WrongKind`] for a listener, [`Error::QueueFull`]
    /// when this send took the queue past its hard cap (the connection is
    /// being closed), and for a datagram socket [`Error::Full`] or the OS
    /// error. A send written without a copy returns `Ok` at once: the hard
    /// cap ([`Config::max_write_queue`](crate::Config::max_write_queue)) is
    /// applied to what the kernel leaves of it after `on_data`, closing the
    /// connection with [`CloseReason::WriteQueueFull`](crate::CloseReason)
    /// if it is passed (possible only with a cap below the read buffer,
    /// 64 KiB).
    #[inline]
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        self.core.send(id, data)
    }

    /// [`send`](Context::send) of a buffer the loop may keep: with nothing
    /// queued it is written at once, and what the kernel leaves becomes the
    /// queue itself, without a copy (only bytes that follow others already
    /// queued are copied behind them). For a producer that builds each
    /// message in a `Vec` anyway.
    ///
    /// # Errors
    /// As [`send`](Context::send).
    pub fn send_owned(&mut self, id: ConnId, data: Vec<u8>) -> Result<(), Error> {
        self.core.send_owned(id, data)
    }

    /// [`send`](Context::send) of several slices as one message (a header
    /// and a body, say): with nothing queued and 16 KiB or more in all,
    /// they are written at once with one `sendmsg` (writev) and only what
    /// the kernel leaves is copied into the queue; otherwise they are
    /// appended to it, and go with the rest of the turn's output, as a
    /// small `send` does. On a connected datagram
    /// socket the slices make one datagram.
    ///
    /// # Errors
    /// As [`send`](Context::send).
    pub fn send_vectored(&mut self, id: ConnId, bufs: &[&[u8]]) -> Result<(), Error> {
        self.core.send_vectored(id, bufs)
    }

    /// Stops reading from a connection until
    /// [`resume_reading`](Context::resume_reading): no
    /// [`on_data`](crate::Handler::on_data) meanwhile; what the peer sends
    /// waits in the kernel's buffers, and once they fill, TCP's flow control
    /// stops the peer. A relay pauses its reading side while the other
    /// side's queue is long, so memory stays bounded.
    ///
    /// The loop pauses reading by itself too, while the connection's own
    /// write queue is above [`Config::high_water`](crate::Config::high_water);
    /// both pauses can hold at once, and reading resumes only when neither
    /// does. A reset (or other socket error) still closes a paused
    /// connection; the peer's end of file is reported after the data before
    /// it, once reading resumes.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn pause_reading(&mut self, id: ConnId) -> Result<(), Error> {
        self.core.pause_reading(id)
    }

    /// Resumes reading paused by [`pause_reading`](Context::pause_reading):
    /// the connection is read again before the loop sleeps (unless the
    /// high-water pause still holds it). Resuming a connection that was not
    /// paused does nothing.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn resume_reading(&mut self, id: ConnId) -> Result<(), Error> {
        self.core.resume_reading(id)
    }

    /// True while reading is paused by
    /// [`pause_reading`](Context::pause_reading).
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn is_reading_paused(&mut self, id: ConnId) -> Result<bool, Error> {
        self.core.reading_paused(id)
    }

    /// Sends one datagram to `to` from a bound datagram socket. When the
    /// kernel refuses for now, the datagram is queued (up to
    /// [`Config::datagram_queue`]) and sent once the socket is writable;
    /// past that it is dropped and counted.
    ///
    /// # Errors
    /// [`Error::Full`] when dropped, [`Error::WrongKind`] on a stream, or the
    /// OS error (`EMSGSIZE` for a datagram too large, …).
    pub fn send_to(&mut self, id: ConnId, data: &[u8], to: &Addr) -> Result<(), Error> {
        let to = to.to_sockaddr()?;
        self.core.send_dgram(id, data, Some(to))
    }

    /// Closes gracefully: what is queued is flushed, then the connection
    /// closes and [`Handler::on_close`](crate::Handler::on_close) hears
    /// [`CloseReason::Closed`]. Nothing more is read meanwhile. Listeners,
    /// datagram sockets and registered fds close at once.
    ///
    /// # Errors
    /// [`Error::Stale`] for a closed id.
    pub fn close(&mut self, id: ConnId) -> Result<(), Error> {
        self.core.close_graceful(id, CloseReason::Closed)
    }

    pub(crate) fn close_with(&mut self, id: ConnId, reason: CloseReason) {
        let _ = self.core.close_graceful(id, reason);
    }

    /// Closes at once, dropping whatever is queued; a TCP peer gets a reset
    /// (SO_LINGER 0).
    ///
    /// # Errors
    /// [`Error::Stale`] for a closed id.
    pub fn abort(&mut self, id: ConnId) -> Result<(), Error> {
        if self.core.close(id, CloseReason::Closed, true) {
            Ok(())
        } else {
            Err(Error::Stale)
        }
    }

    /// Half-closes: once the queue is flushed, the write side is shut down
    /// (the peer reads end of file); reading goes on.
    ///
    /// # Errors
    /// [`Error::Stale`], or [`Error::WrongKind`] for anything but a stream.
    pub fn shutdown(&mut self, id: ConnId) -> Result<(), Error> {
        let Kind::Conn(c) = self.core.entry(id)? else {
            return Err(Error::WrongKind);
        };
        // TLS: close_notify goes first; the write side is shut once it is sent.
        #[cfg(feature = "tls")]
        let notified = c.can_send() && c.tls_close_notify();
        if c.ask_shutdown() {
            c.stream().shutdown_write()?;
        }
        #[cfg(feature = "tls")]
        if notified {
            self.core.mark_pending(id);
        }
        Ok(())
    }

    /// The peer's address (getpeername). For a Unix connection this is often
    /// [`UnixAddr::Unnamed`](crate::UnixAddr::Unnamed).
    ///
    /// # Errors
    /// [`Error::Stale`], or the OS error (`NotConnected` for an unconnected
    /// datagram socket).
    pub fn peer_addr(&mut self, id: ConnId) -> Result<Addr, Error> {
        let fd = self.core.fd_of(id)?;
        Ok(sock::addr_of(borrow(fd), true)?)
    }

    /// The local address (getsockname): where a listener listens (with the
    /// port the OS chose for `:0`), or a connection's own end.
    ///
    /// # Errors
    /// [`Error::Stale`], or the OS error.
    pub fn local_addr(&mut self, id: ConnId) -> Result<Addr, Error> {
        let fd = self.core.fd_of(id)?;
        Ok(sock::addr_of(borrow(fd), false)?)
    }

    /// The transport of a socket: TCP, UDP, Unix stream or Unix datagram
    /// (or `Fd` for a registered fd). With the family of
    /// [`local_addr`](Context::local_addr), this is getsockopt's SO_TYPE and
    /// SO_DOMAIN.
    ///
    /// # Errors
    /// [`Error::Stale`].
    pub fn transport(&mut self, id: ConnId) -> Result<Transport, Error> {
        if self.core.is_tls(id) {
            return Ok(Transport::Tls);
        }
        Ok(match self.core.entry(id)? {
            Kind::Listener { l, .. } => l.transport(),
            Kind::Conn(c) => c.stream().transport(),
            Kind::Dgram(d) => d.sock.transport(),
            Kind::Fd(_) | Kind::Closed | Kind::Vacant => Transport::Fd,
        })
    }

    /// The application protocol a TLS connection agreed by ALPN (`None`
    /// before the handshake completes, or when the peers agreed none). Set
    /// the protocols offered in the rustls configuration's
    /// `alpn_protocols`.
    ///
    /// # Errors
    /// [`Error::Stale`]; [`Error::WrongKind`] for anything but a TLS
    /// connection.
    #[cfg(feature = "tls")]
    pub fn alpn_protocol(&mut self, id: ConnId) -> Result<Option<&[u8]>, Error> {
        Ok(self.tls_session(id)?.alpn_protocol())
    }

    /// The certificate chain the peer of a TLS connection presented, the
    /// peer's own first (`None` before the handshake completes, and on a
    /// server that did not ask for client certificates).
    ///
    /// # Errors
    /// [`Error::Stale`]; [`Error::WrongKind`] for anything but a TLS
    /// connection.
    #[cfg(feature = "tls")]
    pub fn peer_certificates(
        &mut self,
        id: ConnId,
    ) -> Result<Option<&[rustls::pki_types::CertificateDer<'static>]>, Error> {
        Ok(self.tls_session(id)?.peer_certificates())
    }

    /// A TLS connection's session.
    #[cfg(feature = "tls")]
    fn tls_session(&mut self, id: ConnId) -> Result<&crate::tls::TlsConn, Error> {
        match self.core.entry(id)? {
            Kind::Conn(c) => c.tls().ok_or(Error::WrongKind),
            _ => Err(Error::WrongKind),
        }
    }

    /// True if the id is a stream connection that has been accepted or has
    /// finished connecting, and is not closed.
    pub fn is_open(&mut self, id: ConnId) -> bool {
        self.core.conn(id).is_some_and(|c| !c.is_connecting())
    }

    /// The peer's credentials on a Unix stream connection (SO_PEERCRED).
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a Unix stream.
    pub fn peer_cred(&mut self, id: ConnId) -> Result<PeerCred, Error> {
        match self.core.entry(id)? {
            Kind::Conn(c) => match c.stream() {
                Stream::Unix(s) => Ok(sock::peer_cred(s.as_raw_fd())?),
                Stream::Tcp(_) => Err(Error::WrongKind),
            },
            _ => Err(Error::WrongKind),
        }
    }

    /// The socket, to read and set its options with socket2's typed calls:
    /// `set_nodelay`, `set_tcp_keepalive` (idle, interval, count),
    /// `set_recv_buffer_size`, `set_send_buffer_size`, `set_linger`,
    /// `set_ttl`, `set_broadcast`, `join_multicast_v4`, … and their getters.
    ///
    /// # Examples
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(cx: &mut netloop::Context<'_>, id: netloop::ConnId) -> Result<(), netloop::Error> {
    /// use std::time::Duration;
    /// use netloop::socket2::TcpKeepalive;
    /// let s = cx.socket(id)?;
    /// s.set_nodelay(true)?;
    /// s.set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(60)))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Stale`] for a closed id, [`Error::WrongKind`] for a
    /// registered fd.
    pub fn socket(&mut self, id: ConnId) -> Result<SockRef<'_>, Error> {
        Ok(match self.core.entry(id)? {
            Kind::Listener { l, .. } => SockRef::from(&*l),
            Kind::Conn(c) => SockRef::from(c.stream()),
            Kind::Dgram(d) => SockRef::from(&d.sock),
            Kind::Fd(_) | Kind::Closed | Kind::Vacant => return Err(Error::WrongKind),
        })
    }

    /// The raw file descriptor (fileno). The loop still owns it.
    ///
    /// # Errors
    /// [`Error::Stale`] for a closed id.
    pub fn raw_fd(&mut self, id: ConnId) -> Result<RawFd, Error> {
        self.core.fd_of(id)
    }

    /// Bytes queued on a connection that the kernel has not taken yet.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn queued(&mut self, id: ConnId) -> Result<usize, Error> {
        match self.core.entry(id)? {
            Kind::Conn(c) => Ok(c.queued()),
            _ => Err(Error::WrongKind),
        }
    }

    /// Sets this connection's idle timeout (`None`: never), replacing
    /// [`Config::idle_timeout`] for it. The clock restarts now.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn set_idle_timeout(&mut self, id: ConnId, timeout: Option<Duration>) -> Result<(), Error> {
        let now = self.core.now();
        let Kind::Conn(c) = self.core.entry(id)? else {
            return Err(Error::WrongKind);
        };
        c.set_idle(timeout.map_or(0, |d| clock::nanos(d).max(1)), now);
        if let Some(t) = timeout {
            self.core.ensure_sweep(t);
        }
        Ok(())
    }

    /// Sets a one-shot timer: [`Handler::on_timer`](crate::Handler::on_timer)
    /// fires after `delay` with the returned id. Timers due at the same time
    /// fire in the order they were set.
    ///
    /// # Resolution
    /// Deadlines are kept in nanoseconds and wake the loop through a timerfd,
    /// so a timer fires no earlier than asked and, on an idle loop, within
    /// microseconds after; on a busy loop, at the end of the turn it falls in.
    pub fn set_timer(&mut self, delay: Duration) -> TimerId {
        let at = clock::now().saturating_add(clock::nanos(delay));
        self.core.timers_mut().insert(at, None, TimerKind::User)
    }

    /// Sets a one-shot timer tied to a connection:
    /// [`Handler::on_conn_timer`](crate::Handler::on_conn_timer) fires after
    /// `delay` with the connection's id and state, unless the connection
    /// has closed by then (a connection's timers never fire after it
    /// closed; the few bytes each holds are released at its deadline) or
    /// the timer was cancelled with [`cancel_timer`](Context::cancel_timer).
    /// For request timeouts and keep-alive pings.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a stream.
    pub fn set_conn_timer(&mut self, id: ConnId, delay: Duration) -> Result<TimerId, Error> {
        if !matches!(self.core.entry(id)?, Kind::Conn(_)) {
            return Err(Error::WrongKind);
        }
        let at = clock::now().saturating_add(clock::nanos(delay));
        Ok(self.core.timers_mut().insert(at, None, TimerKind::Conn(id)))
    }

    /// Sets a periodic timer, first firing after `period`. If the loop falls
    /// a whole period behind, missed ticks are skipped, not fired in a burst.
    pub fn set_interval(&mut self, period: Duration) -> TimerId {
        let period = period.max(Duration::from_micros(1));
        let at = clock::now().saturating_add(clock::nanos(period));
        self.core
            .timers_mut()
            .insert(at, Some(period), TimerKind::User)
    }

    /// Cancels a timer. False if it already fired (one-shot) or was cancelled.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers_mut().cancel(timer)
    }

    /// Takes a socket out of the loop, deregistered, as a std socket in
    /// blocking mode, with any bytes that were queued or unconsumed.
    /// [`Handler::on_close`](crate::Handler::on_close) hears
    /// [`CloseReason::Detached`] and hands back the state. A Unix listener's
    /// socket file is left for the new owner.
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for a registered fd (the loop
    /// owns it: use `close`) and for a TLS connection or listener (the TLS
    /// session cannot go with the bare socket).
    pub fn detach(&mut self, id: ConnId) -> Result<Detached, Error> {
        let (socket, unsent, unread) = match self.core.detach(id)? {
            Kind::Conn(c) => {
                let (stream, unsent, unread) = c.into_parts();
                (stream.into_std(), unsent, unread)
            }
            Kind::Listener { l, .. } => (l.into_std(), Vec::new(), Vec::new()),
            Kind::Dgram(d) => (d.sock.into_std(), Vec::new(), Vec::new()),
            Kind::Fd(_) | Kind::Closed | Kind::Vacant => unreachable!("detach takes sockets only"),
        };
        set_blocking(&socket)?;
        Ok(Detached {
            socket,
            unsent,
            unread,
        })
    }

    /// Adopts a std socket of any kind: a listener starts accepting, a stream
    /// connection opens (the handler hears [`on_open`](crate::Handler::on_open)),
    /// a datagram socket starts receiving. It is switched to non-blocking mode.
    ///
    /// # Errors
    /// The OS error from making it non-blocking or registering it.
    pub fn adopt(&mut self, socket: impl Into<StdSocket>) -> io::Result<ConnId> {
        let socket = socket.into();
        set_nonblocking(&socket)?;
        let idle = self.core.idle_ns();
        let now = self.core.now();
        let nodelay = self.core.config().nodelay;
        // Options as an accepted connection's (TCP_NODELAY, SO_NOSIGPIPE).
        let stream = |s: Stream| {
            crate::sock::after_accept(&s, nodelay);
            Kind::Conn(Conn::new(s, false, now, idle))
        };
        let kind = match socket {
            StdSocket::TcpListener(l) => Kind::Listener {
                l: Listener::Tcp(mio::net::TcpListener::from_std(l)),
                paused: false,
            },
            StdSocket::UnixListener(l) => Kind::Listener {
                l: Listener::Unix(mio::net::UnixListener::from_std(l), None),
                paused: false,
            },
            StdSocket::TcpStream(s) => stream(Stream::Tcp(mio::net::TcpStream::from_std(s))),
            StdSocket::UnixStream(s) => stream(Stream::Unix(mio::net::UnixStream::from_std(s))),
            StdSocket::UdpSocket(s) => Kind::Dgram(DgramEntry::new(Dgram::Udp(
                mio::net::UdpSocket::from_std(s),
            ))),
            StdSocket::UnixDatagram(s) => Kind::Dgram(DgramEntry::new(Dgram::Unix(
                mio::net::UnixDatagram::from_std(s),
                None,
            ))),
        };
        let is_conn = matches!(kind, Kind::Conn(_));
        let id = self.core.insert(kind)?;
        if is_conn {
            self.core.opened(id);
        }
        Ok(id)
    }

    /// [`adopt`](Context::adopt) with the connection's state given now,
    /// instead of `Default` (see [`connect_with`](Context::connect_with)).
    ///
    /// # Errors
    /// As [`adopt`](Context::adopt); `InvalidInput` if `state` is not of the
    /// handler's [`Conn`](crate::Handler::Conn) type.
    pub fn adopt_with<S: Send + 'static>(
        &mut self,
        socket: impl Into<StdSocket>,
        state: S,
    ) -> io::Result<ConnId> {
        self.core
            .check_seed(std::any::TypeId::of::<S>(), std::any::type_name::<S>())?;
        let id = self.adopt(socket)?;
        self.core.seed(id, Box::new(state));
        Ok(id)
    }

    /// Adopts a socket given as an owned fd whose kind is read from the
    /// socket itself: systemd's `LISTEN_FDS` (see [`listen_fds`](crate::listen_fds))
    /// or a listener inherited from a parent process.
    ///
    /// # Errors
    /// `InvalidInput` if it is not a TCP, UDP or Unix socket; else as
    /// [`adopt`](Context::adopt).
    pub fn adopt_fd(&mut self, fd: OwnedFd) -> io::Result<ConnId> {
        self.adopt(StdSocket::from_fd(fd)?)
    }

    /// Registers any other file descriptor (stdin, a pipe, an eventfd) as a
    /// source: [`Handler::on_fd_ready`](crate::Handler::on_fd_ready) fires when
    /// it is ready. Edge-triggered: read or write until `WouldBlock`.
    ///
    /// The loop owns the fd from now on: [`close`](Context::close) (or the
    /// loop's end) deregisters and closes it, so an fd number reused by
    /// another file can never be touched through this id. To watch a file
    /// that something else keeps using, register a duplicate
    /// (`fd.try_clone()`, `stdin().as_fd().try_clone_to_owned()`). The fd
    /// should be non-blocking; a duplicate shares that mode with the
    /// original.
    ///
    /// # Errors
    /// The OS error from registering (`PermissionDenied` for a regular file,
    /// which epoll cannot watch); the fd is closed.
    pub fn register_fd(&mut self, fd: OwnedFd, interest: Interest) -> io::Result<ConnId> {
        self.core.insert_fd(fd, interest.to_mio())
    }

    /// Changes what a registered fd is watched for (readable, writable or
    /// both).
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::WrongKind`] for anything but a registered
    /// fd, or the OS error.
    pub fn set_interest(&mut self, id: ConnId, interest: Interest) -> Result<(), Error> {
        self.core.reregister_fd(id, interest.to_mio())
    }

    /// Stops the loop gracefully: listeners close (Unix socket files are
    /// removed), every connection closes once its queue is flushed or the
    /// drain deadline ([`Config::drain_timeout`]) passes, then `run` returns.
    pub fn stop(&mut self) {
        self.core.stop_mut().ask();
    }

    /// The current time (`Instant::now()`). The loop itself keeps only a
    /// coarse clock, read when timers are due, so that a busy loop reads no
    /// clock per event.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        self.core.stats()
    }

    /// The loop's configuration.
    pub fn config(&self) -> &Config {
        self.core.config()
    }
}

fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: `fd` belongs to a socket in the loop's slab, which stays open
    // at least until the current callback returns; callers use the borrow
    // only within the call that made it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn std_fd(s: &StdSocket) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    match s {
        StdSocket::TcpListener(x) => x.as_fd(),
        StdSocket::TcpStream(x) => x.as_fd(),
        StdSocket::UdpSocket(x) => x.as_fd(),
        StdSocket::UnixListener(x) => x.as_fd(),
        StdSocket::UnixStream(x) => x.as_fd(),
        StdSocket::UnixDatagram(x) => x.as_fd(),
    }
}

fn set_nonblocking(s: &StdSocket) -> io::Result<()> {
    SockRef::from(&std_fd(s)).set_nonblocking(true)
}

fn set_blocking(s: &StdSocket) -> io::Result<()> {
    SockRef::from(&std_fd(s)).set_nonblocking(false)
}

/// The error for a `tls://` address in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
fn no_tls(ep: &crate::Endpoint) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{ep}: TLS needs netloop built with the `tls` cargo feature"),
    )
}
