//! Every OS call on sockets other than readiness: the sockets a loop owns,
//! their creation and options through socket2, `send`/`recv` without
//! SIGPIPE, peer credentials, Unix paths and abstract names, and the std
//! twins of the sockets for adopt and detach. What differs between Unix
//! systems is chosen here by `cfg`, so the rest of the crate is OS-blind.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::{Addr, Endpoint, Transport, UnixAddr};

/// A stream connection: TCP or Unix.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

/// Flags for every `send`: a peer that is gone gives EPIPE, never a
/// SIGPIPE, whatever the process's signal disposition. Apple systems have
/// no MSG_NOSIGNAL; their sockets get SO_NOSIGPIPE instead (socket2 sets it
/// on the sockets it makes, [`after_accept`] on accepted ones).
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: libc::c_int = 0;

/// `send` on a stream socket's fd without SIGPIPE ([`SEND_FLAGS`]). Called
/// straight through libc, like [`Stream::read`].
#[inline(always)]
pub(crate) fn send_on(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; the kernel
    // checks `fd`.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Stream {
    #[inline]
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// `recv` on the socket. Called straight through libc: on the hot path
    /// the std and mio wrappers cost more user-space instructions than the
    /// rest of a read (measured with callgrind, README "Performance").
    #[inline]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the fd is
        // open for as long as `self` lives.
        let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// `send` without SIGPIPE (see [`send_on`]).
    #[inline]
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        send_on(self.fd(), buf)
    }

    /// `sendmsg` of several slices at once, without SIGPIPE.
    pub(crate) fn send_vectored(&self, bufs: &[&[u8]]) -> io::Result<usize> {
        const ON_STACK: usize = 8;
        if bufs.len() <= ON_STACK {
            let mut slices = [io::IoSlice::new(&[]); ON_STACK];
            for (slice, b) in slices.iter_mut().zip(bufs) {
                *slice = io::IoSlice::new(b);
            }
            return SockRef::from(self).send_vectored_with_flags(&slices[..bufs.len()], SEND_FLAGS);
        }
        let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        SockRef::from(self).send_vectored_with_flags(&slices, SEND_FLAGS)
    }

    /// Shuts the write side (the peer reads end of file).
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }

    /// Before a graceful close: send FIN, then discard what the peer already
    /// sent. Closing a socket with unread input makes the kernel send RST,
    /// which can destroy replies still in flight to the peer (the reason for
    /// nginx's lingering close); this bounded drain removes the common case,
    /// and `linger` keeps the socket for what comes later. True if the peer
    /// is done: its end of file, or an error, was met.
    pub(crate) fn linger_close(&mut self) -> bool {
        let _ = self.shutdown_write();
        let mut sink = [0u8; 4096];
        self.discard(&mut sink, 16 * 4096) == Some(true)
    }

    /// Reads and discards what the peer sent, up to `limit` bytes: `Some(true)`
    /// at its end of file or an error (it is done), `Some(false)` once
    /// nothing more is there, `None` at the limit.
    pub(crate) fn discard(&mut self, buf: &mut [u8], limit: usize) -> Option<bool> {
        let mut discarded = 0;
        while discarded < limit {
            match self.read(buf) {
                Ok(0) => return Some(true),
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(e.kind() != io::ErrorKind::WouldBlock),
            }
        }
        None
    }

    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            Stream::Tcp(_) => Transport::Tcp,
            Stream::Unix(_) => Transport::Unix,
        }
    }

    pub(crate) fn into_std(self) -> StdSocket {
        match self {
            Stream::Tcp(s) => StdSocket::TcpStream(s.into()),
            Stream::Unix(s) => StdSocket::UnixStream(s.into()),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A listening socket: TCP or Unix.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    /// The path is set when this loop created the socket file, which is then
    /// removed when the listener closes.
    Unix(mio::net::UnixListener, Option<PathBuf>),
}

impl Listener {
    pub(crate) fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l, _) => l,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            Listener::Tcp(_) => Transport::Tcp,
            Listener::Unix(..) => Transport::Unix,
        }
    }

    /// Removes the socket file this loop created, if any.
    pub(crate) fn unlink(&mut self) {
        if let Listener::Unix(_, path) = self {
            remove_socket_file(path.take());
        }
    }

    pub(crate) fn into_std(mut self) -> StdSocket {
        if let Listener::Unix(_, path) = &mut self {
            *path = None; // the caller owns the file now
        }
        match self {
            Listener::Tcp(l) => StdSocket::TcpListener(l.into()),
            Listener::Unix(l, _) => StdSocket::UnixListener(l.into()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

/// A datagram socket: UDP or Unix.
#[derive(Debug)]
pub(crate) enum Dgram {
    Udp(mio::net::UdpSocket),
    /// The path is set when this loop created the socket file.
    Unix(mio::net::UnixDatagram, Option<PathBuf>),
}

impl Dgram {
    /// Receives one datagram: its length, its source, and whether it was
    /// larger than `buf` (then cut short by the kernel: MSG_TRUNC).
    pub(crate) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Addr, bool)> {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and
        // recvmsg only writes initialised bytes into it.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let mut bufs = [socket2::MaybeUninitSlice::new(uninit)];
        let (n, flags, from) = SockRef::from(self).recv_from_vectored(&mut bufs)?;
        let from = match addr_from(&from) {
            Ok(a) => a,
            // An unnamed Unix peer has an empty address.
            Err(_) if matches!(self, Dgram::Unix(..)) => Addr::Unix(UnixAddr::Unnamed),
            Err(e) => return Err(e),
        };
        Ok((n, from, flags.is_truncated()))
    }

    pub(crate) fn send_to(&self, buf: &[u8], to: Option<&SockAddr>) -> io::Result<usize> {
        let s = SockRef::from(self);
        match to {
            Some(a) => s.send_to_with_flags(buf, a, SEND_FLAGS),
            None => s.send_with_flags(buf, SEND_FLAGS),
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Dgram::Udp(s) => s,
            Dgram::Unix(s, _) => s,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            Dgram::Udp(_) => Transport::Udp,
            Dgram::Unix(..) => Transport::Unixgram,
        }
    }

    pub(crate) fn unlink(&mut self) {
        if let Dgram::Unix(_, path) = self {
            remove_socket_file(path.take());
        }
    }

    pub(crate) fn into_std(mut self) -> StdSocket {
        if let Dgram::Unix(_, path) = &mut self {
            *path = None;
        }
        match self {
            Dgram::Udp(s) => StdSocket::UdpSocket(s.into()),
            Dgram::Unix(s, _) => StdSocket::UnixDatagram(s.into()),
        }
    }
}

impl AsFd for Dgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dgram::Udp(s) => s.as_fd(),
            Dgram::Unix(s, _) => s.as_fd(),
        }
    }
}

/// Removes a socket file this loop created (`None`: nothing to remove).
fn remove_socket_file(path: Option<PathBuf>) {
    if let Some(p) = path {
        if let Err(e) = std::fs::remove_file(&p) {
            log::warn!("removing {}: {e}", p.display());
        }
    }
}

/// A std socket of any kind the loop can adopt, or a socket detached from it.
#[derive(Debug)]
#[non_exhaustive]
pub enum StdSocket {
    /// A TCP listener.
    TcpListener(std::net::TcpListener),
    /// A TCP connection.
    TcpStream(std::net::TcpStream),
    /// A UDP socket.
    UdpSocket(std::net::UdpSocket),
    /// A Unix stream listener.
    UnixListener(std::os::unix::net::UnixListener),
    /// A Unix stream connection.
    UnixStream(std::os::unix::net::UnixStream),
    /// A Unix datagram socket.
    UnixDatagram(std::os::unix::net::UnixDatagram),
}

impl StdSocket {
    /// Takes ownership of a socket fd whose kind is not known in advance, such
    /// as one inherited through systemd's `LISTEN_FDS` (see [`listen_fds`]):
    /// its domain, type and listening state are read from the socket.
    ///
    /// # Errors
    /// `InvalidInput` if the fd is not a TCP, UDP or Unix socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<StdSocket> {
        let sock = Socket::from(fd);
        let domain = sock.domain()?;
        let ty = sock.r#type()?;
        let unix = domain == Domain::UNIX;
        let inet = domain == Domain::IPV4 || domain == Domain::IPV6;
        Ok(match ty {
            Type::STREAM if sock.is_listener()? && inet => StdSocket::TcpListener(sock.into()),
            Type::STREAM if sock.is_listener()? && unix => StdSocket::UnixListener(sock.into()),
            Type::STREAM if inet => StdSocket::TcpStream(sock.into()),
            Type::STREAM if unix => StdSocket::UnixStream(sock.into()),
            Type::DGRAM if inet => StdSocket::UdpSocket(sock.into()),
            Type::DGRAM if unix => StdSocket::UnixDatagram(sock.into()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "fd {} is not a TCP, UDP or Unix socket ({domain:?}, {ty:?})",
                        sock.as_raw_fd()
                    ),
                ))
            }
        })
    }
}

macro_rules! std_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for StdSocket {
            fn from(s: $ty) -> StdSocket {
                StdSocket::$variant(s)
            }
        }
    )*};
}
std_from!(
    TcpListener(std::net::TcpListener),
    TcpStream(std::net::TcpStream),
    UdpSocket(std::net::UdpSocket),
    UnixListener(std::os::unix::net::UnixListener),
    UnixStream(std::os::unix::net::UnixStream),
    UnixDatagram(std::os::unix::net::UnixDatagram)
);

/// The sockets passed by systemd socket activation (`LISTEN_PID` and
/// `LISTEN_FDS`, starting at fd 3), to hand to
/// [`Context::adopt_fd`](crate::Context::adopt_fd). Empty when the variables
/// are absent or meant for another process. The variables are removed, so
/// children do not inherit them, and the fds are marked close-on-exec.
///
/// Call it at the start of `main`, before any other thread runs: reading
/// and removing environment variables races with other threads doing the
/// same (`std::env::remove_var`'s own caveat).
pub fn listen_fds() -> Vec<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    (3..3 + n)
        .map(|fd| {
            // SAFETY: the protocol hands this process fds 3..3+LISTEN_FDS, open
            // and owned by nobody else; LISTEN_PID checked that they are ours,
            // and removing the variables above keeps them from being taken twice.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: F_SETFD on an fd this process owns.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            fd
        })
        .collect()
}

/// How to listen: the options of [`Context::listen_with`](crate::Context::listen_with).
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// The listen backlog; `None` takes [`Config::backlog`](crate::Config::backlog).
    pub backlog: Option<i32>,
    /// SO_REUSEADDR (default true for TCP): rebind at once after a restart.
    pub reuse_addr: bool,
    /// SO_REUSEPORT (default false): several sockets, in this or other
    /// processes, share one port and the kernel spreads connections over them.
    pub reuse_port: bool,
    /// IPV6_V6ONLY for an IPv6 address; `None` leaves the system default.
    pub v6_only: Option<bool>,
    /// SO_RCVBUF, set before listening so that accepted sockets inherit it.
    pub recv_buffer_size: Option<usize>,
    /// SO_SNDBUF, likewise.
    pub send_buffer_size: Option<usize>,
    /// The TLS configuration of a `tls://` listener (the `tls` feature):
    /// every accepted connection runs a TLS handshake with it, and the
    /// handler hears `on_open` once that completes. Required for `tls://`.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions {
            backlog: None,
            reuse_addr: true,
            reuse_port: false,
            v6_only: None,
            recv_buffer_size: None,
            send_buffer_size: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// A bound socket, not yet in the loop.
pub(crate) enum Bound {
    Listener(Listener),
    Dgram(Dgram),
}

/// A new non-blocking socket (close-on-exec; SO_NOSIGPIPE on Apple
/// systems, both set by socket2).
fn new_socket(domain: Domain, ty: Type) -> io::Result<Socket> {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    ))]
    let s = Socket::new(domain, ty.nonblocking(), None)?;
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos"
    )))]
    let s = {
        let s = Socket::new(domain, ty, None)?;
        s.set_nonblocking(true)?;
        s
    };
    Ok(s)
}

/// True for an accept that failed for lack of file descriptors or memory
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM): accepting backs off; any other
/// failure is the one connection's.
pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Options every accepted connection gets: TCP_NODELAY when asked for,
/// and on Apple systems SO_NOSIGPIPE (they have no MSG_NOSIGNAL).
pub(crate) fn after_accept(stream: &Stream, nodelay: bool) {
    if let (Stream::Tcp(s), true) = (stream, nodelay) {
        let _ = s.set_nodelay(true);
    }
    #[cfg(target_vendor = "apple")]
    let _ = SockRef::from(stream).set_nosigpipe(true);
}

fn with_context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Binds (and, for streams, listens on) an endpoint.
pub(crate) fn bind(ep: &Endpoint, opts: &ListenOptions, backlog: i32) -> io::Result<Bound> {
    let backlog = opts.backlog.unwrap_or(backlog);
    match (&ep.addr, ep.transport) {
        (Addr::Inet(a), t @ (Transport::Tcp | Transport::Udp | Transport::Tls)) => {
            // tls:// listens on TCP; the loop runs TLS on what it accepts.
            let t = if t == Transport::Tls {
                Transport::Tcp
            } else {
                t
            };
            let ty = if t == Transport::Tcp {
                Type::STREAM
            } else {
                Type::DGRAM
            };
            let s = new_socket(Domain::for_address(*a), ty)?;
            if t == Transport::Tcp {
                s.set_reuse_address(opts.reuse_addr)?;
            }
            if opts.reuse_port {
                s.set_reuse_port(true)?;
            }
            if let (Some(v6), true) = (opts.v6_only, a.is_ipv6()) {
                s.set_only_v6(v6)?;
            }
            set_buffers(&s, opts)?;
            s.bind(&(*a).into())
                .map_err(|e| with_context(e, format!("bind {ep}")))?;
            if t == Transport::Tcp {
                s.listen(backlog)
                    .map_err(|e| with_context(e, format!("listen {ep}")))?;
                Ok(Bound::Listener(Listener::Tcp(mio::net::TcpListener::from(
                    OwnedFd::from(s),
                ))))
            } else {
                Ok(Bound::Dgram(Dgram::Udp(mio::net::UdpSocket::from(
                    OwnedFd::from(s),
                ))))
            }
        }
        (Addr::Unix(ua), t @ (Transport::Unix | Transport::Unixgram)) => {
            let ty = if t == Transport::Unix {
                Type::STREAM
            } else {
                Type::DGRAM
            };
            let s = new_socket(Domain::UNIX, ty)?;
            set_buffers(&s, opts)?;
            let sa = ep.addr.to_sockaddr()?;
            let mut created = None;
            if let UnixAddr::Path(p) = ua {
                clear_stale(p, ty, ep)?;
                created = Some(p.clone());
            }
            s.bind(&sa)
                .map_err(|e| with_context(e, format!("bind {ep}")))?;
            if t == Transport::Unix {
                if let Err(e) = s.listen(backlog) {
                    if let Some(p) = &created {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(with_context(e, format!("listen {ep}")));
                }
                Ok(Bound::Listener(Listener::Unix(
                    mio::net::UnixListener::from(OwnedFd::from(s)),
                    created,
                )))
            } else {
                Ok(Bound::Dgram(Dgram::Unix(
                    mio::net::UnixDatagram::from(OwnedFd::from(s)),
                    created,
                )))
            }
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot listen on {ep}: transport and address do not match"),
        )),
    }
}

fn set_buffers(s: &Socket, opts: &ListenOptions) -> io::Result<()> {
    if let Some(n) = opts.recv_buffer_size {
        s.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer_size {
        s.set_send_buffer_size(n)?;
    }
    Ok(())
}

/// A socket file left by a dead server is removed; one a live server answers
/// on is never taken over.
fn clear_stale(path: &Path, ty: Type, ep: &Endpoint) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "cannot listen on {ep}: {} exists and is not a socket",
                path.display()
            ),
        ));
    }
    let probe = Socket::new(Domain::UNIX, ty, None)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "cannot listen on {ep}: a live server is using {}",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket file {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(with_context(
            e,
            format!("cannot listen on {ep}: probing {}", path.display()),
        )),
    }
}

/// An outbound socket, connect begun.
pub(crate) enum Outbound {
    /// A stream whose connect is in progress (or done): wait for WRITABLE.
    Stream(Stream),
    /// A connected datagram socket: ready at once.
    Dgram(Dgram),
}

/// Starts a non-blocking connect. An error here is the socket's creation
/// failing; a connect that fails at once is reported in `Err` of the second
/// element so that the caller can hand it to the handler as a value.
pub(crate) fn connect(ep: &Endpoint, nodelay: bool) -> io::Result<(Outbound, Option<io::Error>)> {
    let sa = ep.addr.to_sockaddr()?;
    match (&ep.addr, ep.transport) {
        (Addr::Inet(a), Transport::Tcp) => {
            let s = new_socket(Domain::for_address(*a), Type::STREAM)?;
            if nodelay {
                s.set_nodelay(true)?;
            }
            let err = match s.connect(&sa) {
                Ok(()) => None,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
                Err(e) => Some(e),
            };
            let st = mio::net::TcpStream::from(OwnedFd::from(s));
            Ok((Outbound::Stream(Stream::Tcp(st)), err))
        }
        (Addr::Unix(_), Transport::Unix) => {
            let s = new_socket(Domain::UNIX, Type::STREAM)?;
            let err = s.connect(&sa).err();
            let st = mio::net::UnixStream::from(OwnedFd::from(s));
            Ok((Outbound::Stream(Stream::Unix(st)), err))
        }
        (Addr::Inet(a), Transport::Udp) => {
            let s = new_socket(Domain::for_address(*a), Type::DGRAM)?;
            let any: std::net::SocketAddr = if a.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            s.bind(&any.into())?;
            let err = s.connect(&sa).err();
            Ok((
                Outbound::Dgram(Dgram::Udp(mio::net::UdpSocket::from(OwnedFd::from(s)))),
                err,
            ))
        }
        (Addr::Unix(_), Transport::Unixgram) => {
            let s = new_socket(Domain::UNIX, Type::DGRAM)?;
            // An empty address asks Linux to autobind an abstract name, so the
            // peer has somewhere to reply to. Elsewhere the socket stays
            // unnamed: it can send, and receive only from a connected peer.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            s.bind(&SockAddr::unix("")?)?;
            let err = s.connect(&sa).err();
            Ok((
                Outbound::Dgram(Dgram::Unix(
                    mio::net::UnixDatagram::from(OwnedFd::from(s)),
                    None,
                )),
                err,
            ))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot connect to {ep}: transport and address do not match"),
        )),
    }
}

/// The local or peer address of any socket.
pub(crate) fn addr_of(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Addr> {
    let s = SockRef::from(&fd);
    let a = if peer {
        s.peer_addr()?
    } else {
        s.local_addr()?
    };
    addr_from(&a)
}

/// A socket address as netloop's `Addr`.
fn addr_from(a: &SockAddr) -> io::Result<Addr> {
    if let Some(inet) = a.as_socket() {
        return Ok(Addr::Inet(inet));
    }
    if a.is_unix() {
        if let Some(p) = a.as_pathname() {
            return Ok(Addr::Unix(UnixAddr::Path(p.to_path_buf())));
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(n) = a.as_abstract_namespace() {
            return Ok(Addr::Unix(UnixAddr::Abstract(n.to_vec())));
        }
        return Ok(Addr::Unix(UnixAddr::Unnamed));
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "unknown address family",
    ))
}

/// Peer credentials of a Unix stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's process id at the time it connected, where the system
    /// tells it (Linux, SO_PEERCRED); `None` elsewhere (getpeereid).
    pub pid: Option<i32>,
    /// The peer's user id.
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
}

/// SO_PEERCRED.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_cred(fd: RawFd) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: Some(cred.pid),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// getpeereid: user and group, no process id.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_cred(fd: RawFd) -> io::Result<PeerCred> {
    let mut uid = 0;
    let mut gid = 0;
    // SAFETY: `uid` and `gid` are valid for writes.
    if unsafe { libc::getpeereid(fd, &mut uid, &mut gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: None,
        uid,
        gid,
    })
}

/// Sets SO_LINGER to zero, so that closing sends RST at once.
pub(crate) fn set_abortive(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}
