//! Address strings: `tcp://HOST:PORT`, `udp://HOST:PORT`, `unix:///path`,
//! `unix://@abstract`, `unixgram:///path`, and the addresses of sockets.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// The kind of socket an [`Endpoint`] names: Go's network names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// A TCP stream (`tcp://`), IPv4 or IPv6.
    Tcp,
    /// A UDP socket (`udp://`), IPv4 or IPv6.
    Udp,
    /// A Unix stream socket (`unix://`).
    Unix,
    /// A Unix datagram socket (`unixgram://`).
    Unixgram,
    /// TLS over TCP (`tls://`): a TCP stream whose bytes the loop encrypts
    /// and decrypts (needs the `tls` feature).
    Tls,
    /// A file descriptor registered with [`Context::register_fd`](crate::Context::register_fd).
    Fd,
}

impl Transport {
    /// The scheme of this transport in an address string, e.g. `"tcp"`.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Unix => "unix",
            Transport::Unixgram => "unixgram",
            Transport::Fd => "fd",
            Transport::Tls => "tls",
        }
    }

    /// True for the stream transports (TCP, TLS and Unix stream).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls | Transport::Unix)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// The address of a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// A path in the file system.
    Path(PathBuf),
    /// A Linux abstract name (written `@name`), without the leading NUL.
    Abstract(Vec<u8>),
    /// An unbound socket: the peer of a connection made without `bind`, or
    /// a datagram sender that never bound.
    Unnamed,
}

/// The address of one end of a socket: an IP address and port, or a Unix address.
///
/// This is what [`Context::peer_addr`](crate::Context::peer_addr) and
/// [`Context::local_addr`](crate::Context::local_addr) return, and what a
/// datagram's sender is reported as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An IPv4 or IPv6 socket address.
    Inet(SocketAddr),
    /// A Unix socket address.
    Unix(UnixAddr),
}

impl Addr {
    /// The IP socket address, if this is one.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Addr::Inet(a) => Some(*a),
            Addr::Unix(_) => None,
        }
    }

    /// The address family: `"ipv4"`, `"ipv6"` or `"unix"`.
    pub fn family(&self) -> &'static str {
        match self {
            Addr::Inet(SocketAddr::V4(_)) => "ipv4",
            Addr::Inet(SocketAddr::V6(_)) => "ipv6",
            Addr::Unix(_) => "unix",
        }
    }

    pub(crate) fn to_sockaddr(&self) -> io::Result<socket2::SockAddr> {
        match self {
            Addr::Inet(a) => Ok((*a).into()),
            Addr::Unix(UnixAddr::Path(p)) => socket2::SockAddr::unix(p),
            Addr::Unix(UnixAddr::Abstract(name)) => {
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
            Addr::Unix(UnixAddr::Unnamed) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unnamed Unix address cannot be bound to or sent to",
            )),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Addr {
        Addr::Inet(a)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(a) => write!(f, "{a}"),
            Addr::Unix(UnixAddr::Path(p)) => write!(f, "{}", p.display()),
            Addr::Unix(UnixAddr::Abstract(n)) => write!(f, "@{}", String::from_utf8_lossy(n)),
            Addr::Unix(UnixAddr::Unnamed) => f.write_str("(unnamed)"),
        }
    }
}

/// A transport and an address: what an address string such as
/// `tcp://127.0.0.1:7000` or `unix:///tmp/echo.sock` names.
///
/// # Examples
/// ```
/// use netloop::{Endpoint, Transport};
/// let e: Endpoint = "tcp://[::1]:7000".parse()?;
/// assert_eq!(e.transport, Transport::Tcp);
/// assert_eq!(e.to_string(), "tcp://[::1]:7000");
/// assert!("tcp://127.0.0.1:99999".parse::<Endpoint>().is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The kind of socket.
    pub transport: Transport,
    /// Where it is.
    pub addr: Addr,
}

impl Endpoint {
    /// Parses an address string; see the [type docs](Endpoint) for the forms.
    ///
    /// Host names (`localhost`) are resolved here, with the system resolver,
    /// and the first address is taken. This may block: use IP literals where
    /// that matters.
    ///
    /// # Errors
    /// `InvalidInput`, with a message that names the input and says what was
    /// expected, for an unknown scheme, a missing or out-of-range port, a host
    /// that does not resolve, an empty path or a path too long for a Unix
    /// socket address.
    pub fn parse(s: &str) -> io::Result<Endpoint> {
        parse(s).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad address {s:?}: {why}"),
            )
        })
    }
}

impl FromStr for Endpoint {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Endpoint> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Addr::Inet(a) => write!(f, "{}://{a}", self.transport),
            Addr::Unix(UnixAddr::Path(p)) => write!(f, "{}://{}", self.transport, p.display()),
            Addr::Unix(UnixAddr::Abstract(n)) => {
                write!(f, "{}://@{}", self.transport, String::from_utf8_lossy(n))
            }
            Addr::Unix(UnixAddr::Unnamed) => write!(f, "{}://(unnamed)", self.transport),
        }
    }
}

/// Anything that names an endpoint: a `&str`/`String` address string, or an
/// [`Endpoint`] already parsed.
pub trait ToEndpoint {
    /// Parses or copies into an [`Endpoint`].
    ///
    /// # Errors
    /// As [`Endpoint::parse`].
    fn to_endpoint(&self) -> io::Result<Endpoint>;
}

impl ToEndpoint for str {
    fn to_endpoint(&self) -> io::Result<Endpoint> {
        Endpoint::parse(self)
    }
}
impl ToEndpoint for &str {
    fn to_endpoint(&self) -> io::Result<Endpoint> {
        Endpoint::parse(self)
    }
}
impl ToEndpoint for String {
    fn to_endpoint(&self) -> io::Result<Endpoint> {
        Endpoint::parse(self)
    }
}
impl ToEndpoint for Endpoint {
    fn to_endpoint(&self) -> io::Result<Endpoint> {
        Ok(self.clone())
    }
}
impl ToEndpoint for &Endpoint {
    fn to_endpoint(&self) -> io::Result<Endpoint> {
        Ok((*self).clone())
    }
}

fn parse(s: &str) -> Result<Endpoint, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(
            "expected SCHEME://ADDRESS with a scheme of tcp, tls, udp, unix or unixgram".into(),
        );
    };
    let transport = match scheme {
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        "unix" => Transport::Unix,
        "unixgram" => Transport::Unixgram,
        "tls" => Transport::Tls,
        other => {
            return Err(format!(
                "unknown scheme {other:?}: expected tcp, tls, udp, unix or unixgram"
            ))
        }
    };
    let addr = match transport {
        Transport::Tcp | Transport::Udp | Transport::Tls => Addr::Inet(parse_inet(rest)?),
        _ => Addr::Unix(parse_unix(rest)?),
    };
    Ok(Endpoint { transport, addr })
}

fn parse_inet(rest: &str) -> Result<SocketAddr, String> {
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let Some((host, tail)) = after.split_once(']') else {
            return Err("expected ']' after an IPv6 address, as in [::1]:7000".into());
        };
        let Some(port) = tail.strip_prefix(':') else {
            return Err("expected :PORT after the IPv6 address, as in [::1]:7000".into());
        };
        (host, port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err("expected HOST:PORT, as in 127.0.0.1:7000".into());
        };
        if host.contains(':') {
            return Err("an IPv6 address must be in brackets, as in [::1]:7000".into());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("expected a host before the port, as in 127.0.0.1:7000".into());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number from 0 to 65535"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port} is out of range (0 to 65535)"))?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "host {host:?} is neither an IP address nor a host name"
        ));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host {host:?} resolved to no address")),
        Err(e) => Err(format!("host {host:?} did not resolve: {e}")),
    }
}

fn parse_unix(rest: &str) -> Result<UnixAddr, String> {
    if let Some(name) = rest.strip_prefix('@') {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return Err("abstract names (unix://@name) exist only on Linux".into());
        }
        if name.is_empty() {
            return Err("expected a name after '@', as in unix://@name".into());
        }
        if name.len() > SUN_PATH_MAX {
            return Err(format!(
                "abstract name is {} bytes; at most {SUN_PATH_MAX} fit",
                name.len()
            ));
        }
        return Ok(UnixAddr::Abstract(name.as_bytes().to_vec()));
    }
    if rest.is_empty() {
        return Err("expected a path, as in unix:///tmp/echo.sock".into());
    }
    if rest.contains('\0') {
        return Err("a path cannot contain a NUL byte".into());
    }
    let path = Path::new(rest);
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(format!(
            "path is {} bytes; a Unix socket path holds at most {SUN_PATH_MAX}",
            path.as_os_str().len()
        ));
    }
    Ok(UnixAddr::Path(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_inputs_parse() {
        let cases: &[(&str, Transport, &str)] = &[
            ("tcp://127.0.0.1:7000", Transport::Tcp, "127.0.0.1:7000"),
            ("tcp://[::1]:7000", Transport::Tcp, "[::1]:7000"),
            ("udp://127.0.0.1:0", Transport::Udp, "127.0.0.1:0"),
            ("udp://[::1]:65535", Transport::Udp, "[::1]:65535"),
            ("tcp://0.0.0.0:80", Transport::Tcp, "0.0.0.0:80"),
            ("unix:///tmp/echo.sock", Transport::Unix, "/tmp/echo.sock"),
            ("unix://relative.sock", Transport::Unix, "relative.sock"),
            ("unix://@name", Transport::Unix, "@name"),
            (
                "unixgram:///tmp/echo.dgram",
                Transport::Unixgram,
                "/tmp/echo.dgram",
            ),
        ];
        for (input, transport, addr) in cases {
            let e = Endpoint::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(e.transport, *transport, "{input}");
            assert_eq!(e.addr.to_string(), *addr, "{input}");
            assert_eq!(
                Endpoint::parse(&e.to_string()).unwrap(),
                e,
                "{input} round trip"
            );
        }
    }

    #[test]
    fn localhost_resolves() {
        let e = Endpoint::parse("tcp://localhost:7000").unwrap();
        let a = e.addr.as_inet().unwrap();
        assert!(a.ip().is_loopback());
        assert_eq!(a.port(), 7000);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_input() {
        let long = format!("unix:///{}", "x".repeat(200));
        let cases: &[(&str, &str)] = &[
            ("", "SCHEME://"),
            ("127.0.0.1:7000", "SCHEME://"),
            ("http://127.0.0.1:80", "unknown scheme"),
            ("tcp://127.0.0.1", "HOST:PORT"),
            ("tcp://127.0.0.1:", "not a number"),
            ("tcp://127.0.0.1:x", "not a number"),
            ("tcp://nohost:x", "not a number"),
            ("tcp://127.0.0.1:65536", "out of range"),
            ("tcp://127.0.0.1:-1", "not a number"),
            ("tcp://:7000", "host"),
            ("tcp://::1:7000", "brackets"),
            ("tcp://[::1:7000", "']'"),
            ("tcp://[::1]7000", ":PORT"),
            ("tcp://bad host:1", "neither"),
            ("unix://", "path"),
            ("unix://@", "name"),
            (&long, "at most"),
        ];
        for (input, want) in cases {
            let err = Endpoint::parse(input).expect_err(input).to_string();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
            assert!(err.contains(want), "{input}: {err} (wanted {want:?})");
        }
    }
}
