//! The PROXY protocol, versions 1 and 2: knowing the client behind a load
//! balancer, without I/O.
//!
//! A proxy or load balancer that relays TCP connections (HAProxy, stunnel,
//! a cloud's network load balancer, …) hides the client from the server:
//! the server's peer address is the proxy's. With the PROXY protocol the
//! proxy sends, before anything else on each connection, a short header
//! naming the original source and destination addresses. This module reads
//! that header from a connection's first bytes ([`parse_proxy_header`],
//! [`ProxyParser`]) and writes it ([`encode_proxy_v1`], [`encode_proxy_v2`],
//! [`encode_proxy_v2_local`]), following HAProxy's specification "The PROXY
//! protocol, Versions 1 & 2".
//!
//! Version 1 is one line of text, such as
//! `PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n`. Version 2 is binary:
//! a 12-byte signature, a version and command, an address family, a length,
//! the addresses, then optional type-length-value extensions (TLVs) such as
//! the TLS server name the client asked for.
//!
//! # Trust
//!
//! Whoever can send the header chooses the address the server believes.
//! Require it only on a listener that nothing but trusted proxies can reach,
//! and never guess whether it is present (the specification forbids that):
//! a listener either always expects it or never parses it. The
//! specification also asks the receiver to wait for the whole header before
//! doing anything else (a server that speaks first, such as SMTP, must not
//! greet yet), and suggests a timeout of a few seconds for it.
//!
//! # Examples
//!
//! A server that expects the header first, then greets the client it
//! names; a thread plays the proxy:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use netloop::{Addr, CloseReason, ConnId, Context, EventLoop, Handler};
//! use netloop::proxy_protocol::{parse_proxy_header, Parsed};
//!
//! #[derive(Default)]
//! struct Conn {
//!     header_seen: bool,
//!     // The original client; None for a LOCAL or UNKNOWN header, where the
//!     // connection's own peer address is the one to use.
//!     client: Option<Addr>,
//! }
//!
//! struct Server;
//!
//! impl Server {
//!     /// The connection's payload, after the header.
//!     fn serve(&mut self, cx: &mut Context<'_>, id: ConnId, data: &[u8]) -> usize {
//!         let _ = cx.send(id, data);
//!         data.len()
//!     }
//! }
//!
//! impl Handler for Server {
//!     type Conn = Conn;
//!     type Msg = ();
//!
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut Conn, data: &[u8]) -> usize {
//!         if conn.header_seen {
//!             return self.serve(cx, id, data);
//!         }
//!         match parse_proxy_header(data) {
//!             // Keep the bytes; they are offered again with the next read.
//!             Ok(Parsed::Incomplete) => 0,
//!             Ok(Parsed::Done { header, len }) => {
//!                 conn.header_seen = true;
//!                 conn.client = header.source().cloned();
//!                 let client = match &conn.client {
//!                     Some(client) => client.clone(),
//!                     None => cx.peer_addr(id).unwrap_or(Addr::Unix(netloop::UnixAddr::Unnamed)),
//!                 };
//!                 let _ = cx.send(id, format!("hello {client}\n").as_bytes());
//!                 // What follows the header is the connection's payload.
//!                 len + self.serve(cx, id, &data[len..])
//!             }
//!             Err(e) => {
//!                 log::warn!("{id}: {e}");
//!                 let _ = cx.close(id);
//!                 data.len()
//!             }
//!         }
//!     }
//!
//!     fn on_close(&mut self, cx: &mut Context<'_>, _: ConnId, _: Conn, _: CloseReason) {
//!         cx.stop();
//!     }
//! }
//!
//! let mut event_loop = EventLoop::new(Server)?;
//! let listener = event_loop.listen("tcp://127.0.0.1:0")?;
//! let addr = event_loop.context().local_addr(listener)?.as_inet().unwrap();
//!
//! let proxy = std::thread::spawn(move || -> std::io::Result<String> {
//!     let mut stream = TcpStream::connect(addr)?;
//!     stream.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nping")?;
//!     stream.shutdown(std::net::Shutdown::Write)?;
//!     let mut reply = String::new();
//!     stream.read_to_string(&mut reply)?;
//!     Ok(reply)
//! });
//! event_loop.run()?;
//! assert_eq!(proxy.join().unwrap()?, "hello 192.0.2.1:56324\nping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Details
//!
//! - Parsing is incremental: [`Parsed::Incomplete`] asks for more bytes,
//!   and an error is reported as soon as the bytes seen prove one (the
//!   first byte that matches neither signature, a version 2 length over the
//!   maximum before its body arrives, …). No byte past the longest the
//!   header could be is looked at, and an error, once reported, is what
//!   every longer input starting with the same bytes gets too.
//! - A version 1 `UNKNOWN` line and a version 2 `UNSPEC` family (in either
//!   half of its byte) give [`ProxyTransport::Unknown`] and no addresses;
//!   so does a version 2 `LOCAL` command, whose family is ignored.
//! - A version 2 header must hold at least the addresses its family
//!   announces; the bytes after them must be well-formed TLVs. A `LOCAL`
//!   header is accepted whatever its address bytes, as the specification
//!   requires: if they do not read as TLVs they are ignored.
//! - A `PP2_TYPE_CRC32C` TLV is checked; a mismatch is an error.
//! - Version 2 Unix addresses are 108-byte `sun_path` fields: a path ends at
//!   its first NUL, an abstract name starts with a NUL and loses its
//!   trailing NULs, and all NULs is an unnamed socket. IPv6 flow labels and
//!   scope ids are not carried.

use std::borrow::Cow;
use std::error::Error;
use std::ffi::OsStr;
use std::fmt;
use std::iter::FusedIterator;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::addr::{Addr, UnixAddr};

/// The 12 bytes that start a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The 5 bytes that start a version 1 header.
const V1_PREFIX: &[u8; 5] = b"PROXY";

/// Bytes of a version 2 header before its addresses.
const V2_FIXED: usize = 16;

/// Bytes of a `sun_path` field in a version 2 Unix address block.
const UNIX_PATH: usize = 108;

/// Why the start of a connection is not an acceptable PROXY protocol
/// header, or why a header could not be written.
///
/// Every parse error is final: the connection cannot be trusted, and the
/// specification asks the receiver to close it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first bytes match neither the version 1 nor the version 2
    /// signature: the peer is not speaking the PROXY protocol (a client
    /// reaching the server directly, or a proxy not configured to send it).
    NotProxy,
    /// The header breaks the specification; the text names how.
    Invalid(&'static str),
    /// The header is, or would be, longer than the maximum accepted.
    TooLong {
        /// The header's length in bytes; for a version 1 line not ended
        /// within its maximum, a lower bound on it.
        len: usize,
        /// The maximum that was exceeded, in bytes.
        max: usize,
    },
    /// A version 2 header with a version or command this specification
    /// does not define.
    Unsupported {
        /// Which field: `"version"` or `"command"`.
        what: &'static str,
        /// The field's value.
        value: u8,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str("not a PROXY protocol header"),
            ProxyError::Invalid(what) => write!(f, "invalid PROXY protocol header: {what}"),
            ProxyError::TooLong { len, max } => write!(
                f,
                "PROXY protocol header too long: {len} bytes, at most {max} accepted"
            ),
            ProxyError::Unsupported { what, value } => {
                write!(f, "unsupported PROXY protocol {what} {value}")
            }
        }
    }
}

impl Error for ProxyError {}

/// What the header says the connection is: relayed for a client, or made
/// by the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyCommand {
    /// Version 2 `LOCAL`: the proxy opened the connection on its own behalf
    /// (a health check). Use the connection's own addresses.
    Local,
    /// Relayed for a client; a version 1 header always says this.
    Proxy,
}

/// The original connection's transport and address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyTransport {
    /// Version 1 `UNKNOWN`, version 2 `UNSPEC` (family or protocol), or a
    /// version 2 `LOCAL` header: no addresses are given.
    Unknown,
    /// TCP over IPv4.
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
    /// UDP over IPv4 (version 2 only).
    Udp4,
    /// UDP over IPv6 (version 2 only).
    Udp6,
    /// A Unix stream socket (version 2 only).
    UnixStream,
    /// A Unix datagram socket (version 2 only).
    UnixDgram,
}

impl ProxyTransport {
    /// Decodes a version 2 family byte: address family in the high half,
    /// protocol in the low half.
    fn from_v2(fam: u8) -> Result<ProxyTransport, ProxyError> {
        let (family, protocol) = (fam >> 4, fam & 0x0f);
        if family > 3 {
            return Err(ProxyError::Invalid(
                "address family is not UNSPEC, INET, INET6 or UNIX",
            ));
        }
        if protocol > 2 {
            return Err(ProxyError::Invalid(
                "transport protocol is not UNSPEC, STREAM or DGRAM",
            ));
        }
        Ok(match (family, protocol) {
            (1, 1) => ProxyTransport::Tcp4,
            (1, 2) => ProxyTransport::Udp4,
            (2, 1) => ProxyTransport::Tcp6,
            (2, 2) => ProxyTransport::Udp6,
            (3, 1) => ProxyTransport::UnixStream,
            (3, 2) => ProxyTransport::UnixDgram,
            _ => ProxyTransport::Unknown,
        })
    }

    /// Bytes of the version 2 address block for this transport.
    fn v2_addr_len(self) -> usize {
        match self {
            ProxyTransport::Unknown => 0,
            ProxyTransport::Tcp4 | ProxyTransport::Udp4 => 2 * 4 + 2 * 2,
            ProxyTransport::Tcp6 | ProxyTransport::Udp6 => 2 * 16 + 2 * 2,
            ProxyTransport::UnixStream | ProxyTransport::UnixDgram => 2 * UNIX_PATH,
        }
    }
}

/// Whether the connection a version 2 header describes is a stream (TCP,
/// Unix stream) or datagram (UDP, Unix datagram) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// `SOCK_STREAM`: TCP or a Unix stream socket.
    Stream,
    /// `SOCK_DGRAM`: UDP or a Unix datagram socket.
    Datagram,
}

/// A parsed PROXY protocol header.
///
/// Its TLVs borrow the bytes parsed; [`into_owned`](Self::into_owned)
/// copies them to keep the header past those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader<'a> {
    version: u8,
    command: ProxyCommand,
    transport: ProxyTransport,
    addrs: Option<(Addr, Addr)>, // source, destination
    tlvs: Cow<'a, [u8]>,         // well-formed TLVs, back to back
}

impl<'a> ProxyHeader<'a> {
    /// TLV type `PP2_TYPE_ALPN`: the application protocol negotiated (as
    /// in TLS ALPN).
    pub const TLV_ALPN: u8 = 0x01;
    /// TLV type `PP2_TYPE_AUTHORITY`: the host name the client asked for
    /// (TLS SNI), UTF-8.
    pub const TLV_AUTHORITY: u8 = 0x02;
    /// TLV type `PP2_TYPE_CRC32C`: a checksum of the header, verified by
    /// the parser.
    pub const TLV_CRC32C: u8 = 0x03;
    /// TLV type `PP2_TYPE_NOOP`: padding, to be ignored.
    pub const TLV_NOOP: u8 = 0x04;
    /// TLV type `PP2_TYPE_UNIQUE_ID`: an opaque id of the connection, up to
    /// 128 bytes.
    pub const TLV_UNIQUE_ID: u8 = 0x05;
    /// TLV type `PP2_TYPE_SSL`: TLS details, with sub-TLVs of their own.
    pub const TLV_SSL: u8 = 0x20;
    /// TLV type `PP2_TYPE_NETNS`: the network namespace's name, US-ASCII.
    pub const TLV_NETNS: u8 = 0x30;

    /// The protocol version: 1 (text) or 2 (binary).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether the connection was relayed for a client or made by the
    /// proxy itself.
    pub fn command(&self) -> ProxyCommand {
        self.command
    }

    /// The original connection's transport and address family.
    pub fn transport(&self) -> ProxyTransport {
        self.transport
    }

    /// The original source: the client. `None` for a `LOCAL` or unknown
    /// connection, where the connection's own peer address applies.
    pub fn source(&self) -> Option<&Addr> {
        self.addrs.as_ref().map(|(src, _)| src)
    }

    /// The original destination: the address the client connected to.
    /// `None` when [`source`](Self::source) is.
    pub fn destination(&self) -> Option<&Addr> {
        self.addrs.as_ref().map(|(_, dst)| dst)
    }

    /// The version 2 TLVs, as `(type, value)` pairs in header order; none
    /// for version 1.
    pub fn tlvs(&self) -> ProxyTlvs<'_> {
        ProxyTlvs { rest: &self.tlvs }
    }

    /// The value of the first TLV of type `kind`, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use netloop::proxy_protocol::{encode_proxy_v2_local, parse_proxy_header, Parsed, ProxyHeader};
    ///
    /// let mut wire = Vec::new();
    /// encode_proxy_v2_local(&[(ProxyHeader::TLV_AUTHORITY, b"example.com")], &mut wire)?;
    /// let Parsed::Done { header, .. } = parse_proxy_header(&wire)? else { unreachable!() };
    /// assert_eq!(header.tlv(ProxyHeader::TLV_AUTHORITY), Some(&b"example.com"[..]));
    /// # Ok::<(), netloop::proxy_protocol::ProxyError>(())
    /// ```
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs()
            .find(|&(k, _)| k == kind)
            .map(|(_, value)| value)
    }

    /// Copies the TLVs, so the header no longer borrows the parsed bytes.
    pub fn into_owned(self) -> ProxyHeader<'static> {
        ProxyHeader {
            version: self.version,
            command: self.command,
            transport: self.transport,
            addrs: self.addrs,
            tlvs: Cow::Owned(self.tlvs.into_owned()),
        }
    }
}

/// An iterator over the TLVs of a version 2 header, as `(type, value)`
/// pairs; see [`ProxyHeader::tlvs`].
#[derive(Debug, Clone)]
pub struct ProxyTlvs<'a> {
    rest: &'a [u8], // well-formed TLVs not yet yielded
}

impl<'a> Iterator for ProxyTlvs<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&[kind, hi, lo], rest) = self.rest.split_first_chunk::<3>()?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > rest.len() {
            // Not reached: the parser checked every length.
            self.rest = &[];
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.rest = rest;
        Some((kind, value))
    }
}

impl FusedIterator for ProxyTlvs<'_> {}

/// What [`parse_proxy_header`] or [`ProxyParser::parse`] found at the start
/// of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The bytes so far are the start of a header: call again with more.
    Incomplete,
    /// A complete header.
    Done {
        /// The header.
        header: ProxyHeader<'a>,
        /// Its length in bytes: what follows is the connection's payload.
        len: usize,
    },
}

/// A PROXY protocol header parser, versions 1 and 2, with a maximum
/// version 2 header length.
///
/// A small `Copy` value to keep in a handler; [`parse`](Self::parse) does
/// the work. [`parse_proxy_header`] is `ProxyParser::new().parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyParser {
    max: usize, // longest version 2 header accepted, in bytes
}

impl Default for ProxyParser {
    fn default() -> Self {
        ProxyParser::new()
    }
}

impl ProxyParser {
    /// The longest version 2 header [`new`](Self::new) accepts: 16 bytes
    /// and 4 KiB of addresses and TLVs.
    pub const DEFAULT_MAX: usize = V2_FIXED + 4096;
    /// The longest version 2 header there can be: 16 bytes and a 16-bit
    /// length.
    pub const V2_MAX: usize = V2_FIXED + u16::MAX as usize;
    /// The longest version 1 header, CRLF included, whatever the maximum.
    pub const V1_MAX: usize = 107;

    /// Creates a parser accepting version 2 headers of at most
    /// [`DEFAULT_MAX`](Self::DEFAULT_MAX) bytes.
    pub const fn new() -> Self {
        ProxyParser {
            max: Self::DEFAULT_MAX,
        }
    }

    /// Creates a parser accepting version 2 headers of at most `max` bytes,
    /// the 16 fixed ones included. A `max` over [`V2_MAX`](Self::V2_MAX)
    /// accepts every header. Version 1 lines are always limited to
    /// [`V1_MAX`](Self::V1_MAX).
    pub const fn with_max(max: usize) -> Self {
        ProxyParser { max }
    }

    /// The longest version 2 header accepted, in bytes.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Parses the PROXY protocol header at the start of `buf`, the first
    /// bytes a connection received.
    ///
    /// Returns [`Parsed::Incomplete`] while `buf` is the start of a header,
    /// and [`Parsed::Done`] with the header and its length once it is
    /// complete; the bytes after it are the connection's payload, and are
    /// not looked at.
    ///
    /// # Errors
    ///
    /// As soon as the bytes seen prove it:
    /// - [`ProxyError::NotProxy`] if they match neither signature;
    /// - [`ProxyError::TooLong`] for a version 1 line without CRLF within
    ///   [`V1_MAX`](Self::V1_MAX) bytes, or a version 2 length field
    ///   announcing more than [`max`](Self::max);
    /// - [`ProxyError::Unsupported`] for a version 2 signature followed by
    ///   another version than 2, or a command other than `LOCAL`/`PROXY`;
    /// - [`ProxyError::Invalid`] for anything else the specification rules
    ///   out.
    ///
    /// # Examples
    ///
    /// ```
    /// use netloop::proxy_protocol::{Parsed, ProxyError, ProxyParser};
    ///
    /// let parser = ProxyParser::with_max(256);
    /// // A version 2 header announcing 1000 bytes of addresses and TLVs.
    /// let wire = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x03\xe8";
    /// assert_eq!(parser.parse(&wire[..8]), Ok(Parsed::Incomplete));
    /// assert_eq!(parser.parse(wire), Err(ProxyError::TooLong { len: 1016, max: 256 }));
    /// assert_eq!(parser.parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
    /// ```
    pub fn parse<'a>(&self, buf: &'a [u8]) -> Result<Parsed<'a>, ProxyError> {
        match buf.first() {
            None => Ok(Parsed::Incomplete),
            Some(b'P') => parse_v1(buf),
            Some(b'\r') => parse_v2(buf, self.max),
            Some(_) => Err(ProxyError::NotProxy),
        }
    }
}

/// Parses the PROXY protocol header (version 1 or 2) at the start of `buf`,
/// the first bytes a connection received, accepting version 2 headers of
/// up to [`ProxyParser::DEFAULT_MAX`] bytes.
///
/// Returns [`Parsed::Incomplete`] while `buf` is the start of a header, and
/// [`Parsed::Done`] with the header and its length once it is complete;
/// `buf[len..]` is the connection's payload, untouched.
///
/// # Errors
///
/// As [`ProxyParser::parse`]: [`ProxyError::NotProxy`] from the first byte
/// that matches neither signature, [`ProxyError::TooLong`],
/// [`ProxyError::Unsupported`] or [`ProxyError::Invalid`] as soon as the
/// bytes seen prove the header bad.
///
/// # Examples
///
/// ```
/// use netloop::Addr;
/// use netloop::proxy_protocol::{parse_proxy_header, Parsed, ProxyCommand, ProxyTransport};
///
/// let data = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n\r\n";
///
/// // The first read may hold part of the header only.
/// assert_eq!(parse_proxy_header(&data[..20])?, Parsed::Incomplete);
///
/// let Parsed::Done { header, len } = parse_proxy_header(data)? else {
///     unreachable!("the whole header is there");
/// };
/// assert_eq!(header.version(), 1);
/// assert_eq!(header.command(), ProxyCommand::Proxy);
/// assert_eq!(header.transport(), ProxyTransport::Tcp4);
/// assert_eq!(header.source(), Some(&Addr::Inet("192.0.2.1:56324".parse()?)));
/// assert_eq!(header.destination(), Some(&Addr::Inet("198.51.100.7:443".parse()?)));
/// assert_eq!(&data[len..], b"GET / HTTP/1.1\r\n\r\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_proxy_header(buf: &[u8]) -> Result<Parsed<'_>, ProxyError> {
    ProxyParser::new().parse(buf)
}

/// Whether `buf` starts like `sig`, as far as it goes.
fn starts_like(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

/// Parses a version 1 line; `buf` starts with `P`.
fn parse_v1(buf: &[u8]) -> Result<Parsed<'_>, ProxyError> {
    if !starts_like(buf, V1_PREFIX) {
        return Err(ProxyError::NotProxy);
    }
    match buf.get(V1_PREFIX.len()) {
        None => return Ok(Parsed::Incomplete),
        Some(b' ') => {}
        Some(_) => return Err(ProxyError::Invalid("expected a space after PROXY")),
    }
    let max = ProxyParser::V1_MAX;
    let too_long = ProxyError::TooLong { len: max + 1, max };
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(ProxyError::Invalid("LF without a CR before it")),
        // The CR at `i` cannot start a CRLF that ends in time.
        Some(i) if i + 2 > max => Err(too_long),
        Some(i) => match buf.get(i + 1) {
            None => Ok(Parsed::Incomplete),
            Some(b'\n') => {
                let header = decode_v1(&buf[V1_PREFIX.len() + 1..i])?;
                Ok(Parsed::Done { header, len: i + 2 })
            }
            Some(_) => Err(ProxyError::Invalid("CR without an LF after it")),
        },
        None if window.len() == max => Err(too_long),
        None => Ok(Parsed::Incomplete),
    }
}

/// Decodes the fields of a version 1 line: what lies between `PROXY ` and
/// the CRLF.
fn decode_v1(line: &[u8]) -> Result<ProxyHeader<'static>, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    let transport = match protocol {
        // The receiver must ignore whatever follows UNKNOWN.
        b"UNKNOWN" => {
            return Ok(ProxyHeader {
                version: 1,
                command: ProxyCommand::Proxy,
                transport: ProxyTransport::Unknown,
                addrs: None,
                tlvs: Cow::Borrowed(&[]),
            })
        }
        b"TCP4" => ProxyTransport::Tcp4,
        b"TCP6" => ProxyTransport::Tcp6,
        _ => return Err(ProxyError::Invalid("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = |what| fields.next().ok_or(ProxyError::Invalid(what));
    let src = next("no source address")?;
    let dst = next("no destination address")?;
    let src_port = next("no source port")?;
    let dst_port = next("no destination port")?;
    if fields.next().is_some() {
        return Err(ProxyError::Invalid(
            "more than the destination port before the CRLF",
        ));
    }
    let ip = |field: &[u8]| -> Result<IpAddr, ProxyError> {
        if transport == ProxyTransport::Tcp4 {
            parse_ipv4(field)
                .map(IpAddr::V4)
                .ok_or(ProxyError::Invalid("bad IPv4 address for TCP4"))
        } else {
            parse_ipv6(field)
                .map(IpAddr::V6)
                .ok_or(ProxyError::Invalid("bad IPv6 address for TCP6"))
        }
    };
    let port = |field: &[u8]| -> Result<u16, ProxyError> {
        parse_decimal(field, u16::MAX.into())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or(ProxyError::Invalid(
                "bad port: not a decimal from 0 to 65535 without leading zeros",
            ))
    };
    let src = SocketAddr::new(ip(src)?, port(src_port)?);
    let dst = SocketAddr::new(ip(dst)?, port(dst_port)?);
    Ok(ProxyHeader {
        version: 1,
        command: ProxyCommand::Proxy,
        transport,
        addrs: Some((Addr::Inet(src), Addr::Inet(dst))),
        tlvs: Cow::Borrowed(&[]),
    })
}

/// Parses a decimal of at most `max`, without sign or leading zeros.
fn parse_decimal(field: &[u8], max: u32) -> Option<u32> {
    let leading_zero = field.len() > 1 && field[0] == b'0';
    if field.is_empty() || field.len() > 5 || leading_zero {
        return None;
    }
    let mut n: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    (n <= max).then_some(n)
}

/// Parses an IPv4 address in its canonical form: four decimals from 0 to
/// 255 without leading zeros, separated by dots.
fn parse_ipv4(field: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = field.split(|&b| b == b'.');
    for octet in &mut octets {
        *octet = u8::try_from(parse_decimal(parts.next()?, 255)?).ok()?;
    }
    match parts.next() {
        None => Some(Ipv4Addr::from(octets)),
        Some(_) => None,
    }
}

/// Parses an IPv6 address: groups of hexadecimal digits separated by
/// colons, one `::` at most.
fn parse_ipv6(field: &[u8]) -> Option<Ipv6Addr> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses a version 2 header; `buf` starts with `\r`.
fn parse_v2(buf: &[u8], max: usize) -> Result<Parsed<'_>, ProxyError> {
    if !starts_like(buf, &V2_SIGNATURE) {
        return Err(ProxyError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(ProxyError::Unsupported {
            what: "version",
            value: version,
        });
    }
    let command = match ver_cmd & 0x0f {
        0 => ProxyCommand::Local,
        1 => ProxyCommand::Proxy,
        value => {
            return Err(ProxyError::Unsupported {
                what: "command",
                value,
            })
        }
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL ignores the family byte, values undefined included.
    let declared = match (ProxyTransport::from_v2(fam), command) {
        (Ok(t), _) => t,
        (Err(_), ProxyCommand::Local) => ProxyTransport::Unknown,
        (Err(e), ProxyCommand::Proxy) => return Err(e),
    };
    let Some(&[hi, lo]) = buf.get(14..V2_FIXED) else {
        return Ok(Parsed::Incomplete);
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED + body_len;
    if len > max {
        return Err(ProxyError::TooLong { len, max });
    }
    let addr_len = declared.v2_addr_len();
    if command == ProxyCommand::Proxy && body_len < addr_len {
        return Err(ProxyError::Invalid(
            "address length is shorter than the family's addresses",
        ));
    }
    let Some(header) = buf.get(..len) else {
        return Ok(Parsed::Incomplete);
    };
    let body = &header[V2_FIXED..];
    let (addrs, transport, tlvs) = match command {
        ProxyCommand::Proxy => {
            let addrs = decode_v2_addrs(declared, body)?;
            let tlv_at = V2_FIXED + addr_len;
            check_tlvs(&header[tlv_at..]).map_err(ProxyError::Invalid)?;
            (addrs, declared, tlv_at)
        }
        ProxyCommand::Local => {
            // Whatever does not read as TLVs is address information, to be
            // ignored.
            let tlv_at = V2_FIXED + addr_len;
            let tlv_at = match header.get(tlv_at..).map(check_tlvs) {
                Some(Ok(())) => tlv_at,
                _ => len,
            };
            (None, ProxyTransport::Unknown, tlv_at)
        }
    };
    check_crc(header, tlvs).map_err(ProxyError::Invalid)?;
    Ok(Parsed::Done {
        header: ProxyHeader {
            version: 2,
            command,
            transport,
            addrs,
            tlvs: Cow::Borrowed(&header[tlvs..]),
        },
        len,
    })
}

/// Takes fixed-size pieces off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<&'a [u8; N], ProxyError> {
        let (piece, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ProxyError::Invalid("addresses cut short"))?;
        self.0 = rest;
        Ok(piece)
    }
}

/// Decodes the addresses at the start of a version 2 body, which the
/// caller checked is long enough for `transport`.
fn decode_v2_addrs(
    transport: ProxyTransport,
    body: &[u8],
) -> Result<Option<(Addr, Addr)>, ProxyError> {
    let mut r = Reader(body);
    let (src, dst): (IpAddr, IpAddr) = match transport {
        ProxyTransport::Unknown => return Ok(None),
        ProxyTransport::Tcp4 | ProxyTransport::Udp4 => (
            Ipv4Addr::from(*r.take::<4>()?).into(),
            Ipv4Addr::from(*r.take::<4>()?).into(),
        ),
        ProxyTransport::Tcp6 | ProxyTransport::Udp6 => (
            Ipv6Addr::from(*r.take::<16>()?).into(),
            Ipv6Addr::from(*r.take::<16>()?).into(),
        ),
        ProxyTransport::UnixStream | ProxyTransport::UnixDgram => {
            let src = decode_unix(r.take::<UNIX_PATH>()?);
            let dst = decode_unix(r.take::<UNIX_PATH>()?);
            return Ok(Some((Addr::Unix(src), Addr::Unix(dst))));
        }
    };
    let src_port = u16::from_be_bytes(*r.take::<2>()?);
    let dst_port = u16::from_be_bytes(*r.take::<2>()?);
    Ok(Some((
        Addr::Inet(SocketAddr::new(src, src_port)),
        Addr::Inet(SocketAddr::new(dst, dst_port)),
    )))
}

/// Decodes a 108-byte `sun_path` field.
fn decode_unix(raw: &[u8; UNIX_PATH]) -> UnixAddr {
    match raw.split_first() {
        Some((0, name)) => {
            let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if end == 0 {
                UnixAddr::Unnamed
            } else {
                UnixAddr::Abstract(name[..end].to_vec())
            }
        }
        _ => {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            UnixAddr::Path(PathBuf::from(OsStr::from_bytes(&raw[..end])))
        }
    }
}

/// Checks that `tlvs` is a sequence of whole TLVs.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), &'static str> {
    while !tlvs.is_empty() {
        let Some((&[_, hi, lo], rest)) = tlvs.split_first_chunk::<3>() else {
            return Err("a TLV is cut short: fewer than 3 bytes of type and length");
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > rest.len() {
            return Err("a TLV's length runs past the end of the header");
        }
        tlvs = &rest[len..];
    }
    Ok(())
}

/// Checks every `PP2_TYPE_CRC32C` TLV of `header`, whose well-formed TLVs
/// start at `tlv_at`: its value must be the CRC32c of the whole header
/// with that value zeroed.
fn check_crc(header: &[u8], tlv_at: usize) -> Result<(), &'static str> {
    let mut at = tlv_at;
    while let Some(&[kind, hi, lo]) = header.get(at..at + 3) {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = at + 3;
        if kind == ProxyHeader::TLV_CRC32C {
            let Some(&[a, b, c, d]) = header.get(value..value + len) else {
                return Err("a CRC32C TLV's value is not 4 bytes");
            };
            let mut crc = crc32c_update(!0, &header[..value]);
            crc = crc32c_update(crc, &[0; 4]);
            crc = !crc32c_update(crc, &header[value + 4..]);
            if crc != u32::from_be_bytes([a, b, c, d]) {
                return Err("CRC32C checksum mismatch");
            }
        }
        at = value + len;
    }
    Ok(())
}

/// The CRC32c (Castagnoli) lookup table, reflected polynomial 0x82F63B78.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Feeds `bytes` to a CRC32c in progress (start with `!0`, finish with `!`).
fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    crc
}

/// Appends a version 1 header for a connection from `src` to `dst` to
/// `out`.
///
/// Writes `TCP4` when both are IPv4 socket addresses, `TCP6` when both are
/// IPv6 ones, and `PROXY UNKNOWN\r\n` otherwise (Unix addresses, or one of
/// each family), which tells the receiver to use the connection's own
/// addresses. IPv6 addresses are written as the specification describes:
/// groups of 4 hexadecimal digits, the longest run of zero groups written
/// `::`.
///
/// # Examples
///
/// ```
/// use netloop::Addr;
/// use netloop::proxy_protocol::encode_proxy_v1;
///
/// let src = Addr::Inet("192.0.2.1:56324".parse()?);
/// let dst = Addr::Inet("198.51.100.7:443".parse()?);
/// let mut out = Vec::new();
/// encode_proxy_v1(&src, &dst, &mut out);
/// assert_eq!(out, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
///
/// out.clear();
/// encode_proxy_v1(&src, &Addr::Inet("[2001:db8::1]:443".parse()?), &mut out);
/// assert_eq!(out, b"PROXY UNKNOWN\r\n");
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn encode_proxy_v1(src: &Addr, dst: &Addr, out: &mut Vec<u8>) {
    let (src, dst) = match (src, dst) {
        (Addr::Inet(s @ SocketAddr::V4(_)), Addr::Inet(d @ SocketAddr::V4(_)))
        | (Addr::Inet(s @ SocketAddr::V6(_)), Addr::Inet(d @ SocketAddr::V6(_))) => (s, d),
        _ => {
            out.extend_from_slice(b"PROXY UNKNOWN\r\n");
            return;
        }
    };
    out.extend_from_slice(if src.is_ipv4() {
        b"PROXY TCP4 "
    } else {
        b"PROXY TCP6 "
    });
    push_ip(out, src.ip());
    out.push(b' ');
    push_ip(out, dst.ip());
    out.push(b' ');
    push_decimal(out, src.port());
    out.push(b' ');
    push_decimal(out, dst.port());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: impl Into<u32>) {
    let mut n: u32 = n.into();
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends an IP address in a version 1 header's format.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, octet);
            }
        }
        IpAddr::V6(ip) => push_ipv6(out, &ip.segments()),
    }
}

/// Appends an IPv6 address as groups of 4 lowercase hexadecimal digits,
/// the first longest run of two or more zero groups written `::`.
fn push_ipv6(out: &mut Vec<u8>, groups: &[u16; 8]) {
    let (mut run_at, mut run_len) = (0, 0);
    let mut i = 0;
    while i < groups.len() {
        let start = i;
        while i < groups.len() && groups[i] == 0 {
            i += 1;
        }
        if i - start > run_len {
            (run_at, run_len) = (start, i - start);
        }
        i = i.max(start + 1);
    }
    let push_groups = |out: &mut Vec<u8>, groups: &[u16]| {
        for (i, group) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            for shift in [12, 8, 4, 0] {
                out.push(b"0123456789abcdef"[usize::from((group >> shift) & 0xf)]);
            }
        }
    };
    if run_len < 2 {
        push_groups(out, groups);
    } else {
        push_groups(out, &groups[..run_at]);
        out.extend_from_slice(b"::");
        push_groups(out, &groups[run_at + run_len..]);
    }
}

/// Appends a version 2 `PROXY` header for a connection from `src` to `dst`
/// to `out`, followed by `tlvs` as `(type, value)` pairs.
///
/// Two IPv4 addresses give `TCP4`/`UDP4` (by `kind`), two IPv6 ones
/// `TCP6`/`UDP6`, one of each `TCP6`/`UDP6` with the IPv4 one mapped
/// (`::ffff:a.b.c.d`), two Unix ones Unix stream or datagram. A Unix and an
/// IP address give the `UNSPEC` family, without addresses.
///
/// # Errors
///
/// [`ProxyError::TooLong`] if the header would be longer than
/// [`ProxyParser::V2_MAX`] (TLVs of more than 65535 bytes in all, with the
/// addresses); [`ProxyError::Invalid`] for a Unix path that is empty, holds
/// a NUL or has more than 108 bytes, or an abstract name of more than 107.
/// `out` is left unchanged.
///
/// # Examples
///
/// ```
/// use netloop::Addr;
/// use netloop::proxy_protocol::{encode_proxy_v2, parse_proxy_header, Parsed, SocketKind};
///
/// let src = Addr::Inet("[2001:db8::1]:56324".parse()?);
/// let dst = Addr::Inet("[2001:db8::2]:443".parse()?);
/// let mut out = Vec::new();
/// encode_proxy_v2(&src, &dst, SocketKind::Stream, &[(0x02, b"example.com")], &mut out)?;
/// assert_eq!(out.len(), 16 + 36 + 3 + 11);
///
/// let Parsed::Done { header, len } = parse_proxy_header(&out)? else { unreachable!() };
/// assert_eq!((header.source(), header.destination()), (Some(&src), Some(&dst)));
/// assert_eq!(len, out.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_proxy_v2(
    src: &Addr,
    dst: &Addr,
    kind: SocketKind,
    tlvs: &[(u8, &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), ProxyError> {
    encode_v2(Some((src, dst, kind)), tlvs, out)
}

/// Appends a version 2 `LOCAL` header to `out`, followed by `tlvs` as
/// `(type, value)` pairs: what a proxy sends on a connection of its own,
/// such as a health check.
///
/// # Errors
///
/// [`ProxyError::TooLong`] if the TLVs take more than 65535 bytes; `out`
/// is left unchanged.
///
/// # Examples
///
/// ```
/// let mut out = Vec::new();
/// netloop::proxy_protocol::encode_proxy_v2_local(&[], &mut out)?;
/// assert_eq!(out, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
/// # Ok::<(), netloop::proxy_protocol::ProxyError>(())
/// ```
pub fn encode_proxy_v2_local(tlvs: &[(u8, &[u8])], out: &mut Vec<u8>) -> Result<(), ProxyError> {
    encode_v2(None, tlvs, out)
}

/// Appends a version 2 header: `PROXY` with addresses, or `LOCAL`.
fn encode_v2(
    proxied: Option<(&Addr, &Addr, SocketKind)>,
    tlvs: &[(u8, &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), ProxyError> {
    let start = out.len();
    let result = write_v2(proxied, tlvs, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_v2(
    proxied: Option<(&Addr, &Addr, SocketKind)>,
    tlvs: &[(u8, &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), ProxyError> {
    let start = out.len();
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]); // version 2, then patched
    let Some((src, dst, kind)) = proxied else {
        return finish_v2(start, tlvs, out);
    };
    out[start + 12] |= 0x01; // PROXY
    let protocol = match kind {
        SocketKind::Stream => 0x01,
        SocketKind::Datagram => 0x02,
    };
    let family = match (src, dst) {
        (Addr::Inet(SocketAddr::V4(s)), Addr::Inet(SocketAddr::V4(d))) => {
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
            0x10
        }
        (Addr::Inet(s), Addr::Inet(d)) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.extend_from_slice(&v6(s.ip()).octets());
            out.extend_from_slice(&v6(d.ip()).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
            0x20
        }
        (Addr::Unix(s), Addr::Unix(d)) => {
            push_unix(out, s)?;
            push_unix(out, d)?;
            0x30
        }
        _ => 0x00,
    };
    if family != 0 {
        out[start + 13] = family | protocol;
    }
    finish_v2(start, tlvs, out)
}

/// Appends `tlvs` to the version 2 header at `out[start..]` and fills in
/// its length.
fn finish_v2(start: usize, tlvs: &[(u8, &[u8])], out: &mut Vec<u8>) -> Result<(), ProxyError> {
    let addr_len = out.len() - start - V2_FIXED;
    let len = tlvs.iter().fold(V2_FIXED + addr_len, |n, (_, value)| {
        n.saturating_add(3).saturating_add(value.len())
    });
    let max = ProxyParser::V2_MAX;
    let Ok(body_len) = u16::try_from(len - V2_FIXED) else {
        return Err(ProxyError::TooLong { len, max });
    };
    out.reserve(len - V2_FIXED - addr_len);
    for &(kind, value) in tlvs {
        // Each fits: the total does.
        let value_len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        out.push(kind);
        out.extend_from_slice(&value_len.to_be_bytes());
        out.extend_from_slice(value);
    }
    out[start + 14..start + V2_FIXED].copy_from_slice(&body_len.to_be_bytes());
    Ok(())
}

/// Appends a Unix address as a 108-byte `sun_path` field.
fn push_unix(out: &mut Vec<u8>, addr: &UnixAddr) -> Result<(), ProxyError> {
    let mut raw = [0u8; UNIX_PATH];
    match addr {
        UnixAddr::Path(path) => {
            let bytes = path.as_os_str().as_bytes();
            if bytes.is_empty() || bytes.len() > UNIX_PATH || bytes.contains(&0) {
                return Err(ProxyError::Invalid(
                    "a Unix path must have 1 to 108 bytes, none of them NUL",
                ));
            }
            raw[..bytes.len()].copy_from_slice(bytes);
        }
        UnixAddr::Abstract(name) => {
            let Some(slot) = raw.get_mut(1..=name.len()) else {
                return Err(ProxyError::Invalid(
                    "an abstract Unix name must have at most 107 bytes",
                ));
            };
            slot.copy_from_slice(name);
        }
        UnixAddr::Unnamed => {}
    }
    out.extend_from_slice(&raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    /// A payload that must come back untouched after every header.
    const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

    fn inet(s: &str) -> Addr {
        Addr::Inet(s.parse().unwrap())
    }

    fn unix_path(p: &str) -> Addr {
        Addr::Unix(UnixAddr::Path(PathBuf::from(p)))
    }

    /// The header at the start of `buf`, and its length; panics otherwise.
    #[track_caller]
    fn done(buf: &[u8]) -> (ProxyHeader<'static>, usize) {
        match parse_proxy_header(buf) {
            Ok(Parsed::Done { header, len }) => (header.into_owned(), len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[track_caller]
    fn error(buf: &[u8]) -> ProxyError {
        match parse_proxy_header(buf) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// A version 2 header with the given version/command and family bytes
    /// and body, its length filled in.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, fam]);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// The 12-byte TCP4 address block of 192.0.2.1:56324 -> 198.51.100.7:443.
    const TCP4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb];

    /// Feeds `header` (a complete, valid header) one more byte at a time:
    /// every prefix is incomplete, the whole is done with its length, and a
    /// payload after it changes nothing. Returns the header parsed.
    #[track_caller]
    fn byte_by_byte(header: &[u8]) -> ProxyHeader<'static> {
        for k in 0..header.len() {
            assert_eq!(
                parse_proxy_header(&header[..k]),
                Ok(Parsed::Incomplete),
                "prefix of {k} bytes of {header:?}"
            );
        }
        let (alone, len) = done(header);
        assert_eq!(len, header.len());
        let mut wire = header.to_vec();
        wire.extend_from_slice(PAYLOAD);
        let (with_payload, len) = done(&wire);
        assert_eq!(len, header.len());
        assert_eq!(&wire[len..], PAYLOAD);
        assert_eq!(with_payload, alone);
        alone.into_owned()
    }

    fn v1(src: &Addr, dst: &Addr) -> Vec<u8> {
        let mut out = Vec::new();
        encode_proxy_v1(src, dst, &mut out);
        out
    }

    fn v2_proxy(src: &Addr, dst: &Addr, kind: SocketKind, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_proxy_v2(src, dst, kind, tlvs, &mut out).unwrap();
        out
    }

    // ---- The specification's examples ----

    #[test]
    fn spec_v1_example_before_an_http_request() {
        let wire = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
        let (h, len) = done(wire);
        assert_eq!(len, 47);
        assert_eq!(
            &wire[len..],
            b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
        );
        assert_eq!(h.version(), 1);
        assert_eq!(h.command(), ProxyCommand::Proxy);
        assert_eq!(h.transport(), ProxyTransport::Tcp4);
        assert_eq!(h.source(), Some(&inet("192.168.0.1:56324")));
        assert_eq!(h.destination(), Some(&inet("192.168.0.11:443")));
        assert_eq!(h.tlvs().count(), 0);
    }

    #[test]
    fn spec_v1_longest_lines_are_accepted() {
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let cases = [
            (
                "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_string(),
                56,
            ),
            (format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n"), 104),
            ("PROXY UNKNOWN\r\n".to_string(), 15),
            (format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n"), 107),
        ];
        for (line, want) in cases {
            assert_eq!(line.len(), want);
            let h = byte_by_byte(line.as_bytes());
            assert_eq!(h.version(), 1);
        }
        let (h, _) = done(format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n").as_bytes());
        assert_eq!(
            h.source(),
            Some(&inet("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
        );
    }

    #[test]
    fn spec_v2_tcp4_header_by_hand() {
        // Signature, version 2 PROXY, TCP over IPv4, 12 bytes of addresses.
        let mut wire = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A\x21\x11\x00\x0C".to_vec();
        wire.extend_from_slice(&TCP4_BLOCK);
        let h = byte_by_byte(&wire);
        assert_eq!(h.version(), 2);
        assert_eq!(h.command(), ProxyCommand::Proxy);
        assert_eq!(h.transport(), ProxyTransport::Tcp4);
        assert_eq!(h.source(), Some(&inet("192.0.2.1:56324")));
        assert_eq!(h.destination(), Some(&inet("198.51.100.7:443")));
        assert_eq!(
            v2_proxy(
                h.source().unwrap(),
                h.destination().unwrap(),
                SocketKind::Stream,
                &[]
            ),
            wire
        );
    }

    #[test]
    fn spec_v2_every_expected_family_byte() {
        let v4 = TCP4_BLOCK.to_vec();
        let v6 = [[0x20, 0x01, 0x0d, 0xb8].repeat(8), vec![0, 1, 0, 2]].concat();
        let unix = [b"/a".to_vec(), vec![0; 106], b"/b".to_vec(), vec![0; 106]].concat();
        let cases: [(u8, &[u8], ProxyTransport); 7] = [
            (0x00, &[], ProxyTransport::Unknown),
            (0x11, &v4, ProxyTransport::Tcp4),
            (0x12, &v4, ProxyTransport::Udp4),
            (0x21, &v6, ProxyTransport::Tcp6),
            (0x22, &v6, ProxyTransport::Udp6),
            (0x31, &unix, ProxyTransport::UnixStream),
            (0x32, &unix, ProxyTransport::UnixDgram),
        ];
        for (fam, body, transport) in cases {
            let h = byte_by_byte(&v2(0x21, fam, body));
            assert_eq!(h.transport(), transport, "{fam:#x}");
            assert_eq!(h.source().is_some(), fam != 0, "{fam:#x}");
            // LOCAL: the family is ignored.
            let h = byte_by_byte(&v2(0x20, fam, body));
            assert_eq!(h.command(), ProxyCommand::Local);
            assert_eq!(h.transport(), ProxyTransport::Unknown);
            assert_eq!(h.source(), None);
        }
    }

    // ---- Round trips ----

    #[test]
    fn v1_round_trips_tcp4_and_tcp6() {
        let cases = [
            ("192.0.2.1:56324", "198.51.100.7:443"),
            ("0.0.0.0:0", "255.255.255.255:65535"),
            ("[2001:db8::1]:56324", "[2001:db8::2]:443"),
            ("[::]:0", "[::1]:1"),
            ("[::ffff:192.0.2.1]:80", "[1:0:0:1:0:0:0:1]:8080"),
            ("[1:2:3:4:5:6:7:8]:1", "[0:0:1:0:0:1:0:0]:2"),
        ];
        for (src, dst) in cases {
            let (src, dst) = (inet(src), inet(dst));
            let wire = v1(&src, &dst);
            assert!(wire.len() <= ProxyParser::V1_MAX);
            let h = byte_by_byte(&wire);
            assert_eq!(h.source(), Some(&src), "{}", String::from_utf8_lossy(&wire));
            assert_eq!(h.destination(), Some(&dst));
        }
    }

    #[test]
    fn v1_writes_ipv6_as_groups_of_four_digits() {
        let wire = v1(&inet("[2001:db8::1]:1"), &inet("[::]:2"));
        assert_eq!(wire, b"PROXY TCP6 2001:0db8::0001 :: 1 2\r\n");
        let wire = v1(&inet("[1:0:2:0:0:3:0:0]:1"), &inet("[1:0:2:3:4:5:6:0]:2"));
        assert_eq!(
            wire,
            &b"PROXY TCP6 0001:0000:0002::0003:0000:0000 0001:0000:0002:0003:0004:0005:0006:0000 1 2\r\n"[..]
        );
    }

    #[test]
    fn v1_unknown_for_mixed_families_and_unix_round_trips() {
        let cases = [
            (inet("192.0.2.1:1"), inet("[2001:db8::1]:2")),
            (inet("[2001:db8::1]:2"), inet("192.0.2.1:1")),
            (unix_path("/a"), unix_path("/b")),
            (Addr::Unix(UnixAddr::Unnamed), inet("192.0.2.1:1")),
        ];
        for (src, dst) in cases {
            let wire = v1(&src, &dst);
            assert_eq!(wire, b"PROXY UNKNOWN\r\n");
            let h = byte_by_byte(&wire);
            assert_eq!(h.transport(), ProxyTransport::Unknown);
            assert_eq!((h.source(), h.destination()), (None, None));
        }
    }

    #[test]
    fn v2_round_trips_inet_both_kinds() {
        let cases = [
            (
                "192.0.2.1:56324",
                "198.51.100.7:443",
                ProxyTransport::Tcp4,
                ProxyTransport::Udp4,
            ),
            (
                "[2001:db8::1]:56324",
                "[2001:db8::2]:443",
                ProxyTransport::Tcp6,
                ProxyTransport::Udp6,
            ),
        ];
        for (src, dst, stream, dgram) in cases {
            let (src, dst) = (inet(src), inet(dst));
            for (kind, transport) in [(SocketKind::Stream, stream), (SocketKind::Datagram, dgram)] {
                let h = byte_by_byte(&v2_proxy(&src, &dst, kind, &[]));
                assert_eq!(h.version(), 2);
                assert_eq!(h.command(), ProxyCommand::Proxy);
                assert_eq!(h.transport(), transport);
                assert_eq!((h.source(), h.destination()), (Some(&src), Some(&dst)));
            }
        }
    }

    #[test]
    fn v2_maps_mixed_ip_families_to_ipv6() {
        let wire = v2_proxy(
            &inet("192.0.2.1:1"),
            &inet("[2001:db8::1]:2"),
            SocketKind::Stream,
            &[],
        );
        let (h, _) = done(&wire);
        assert_eq!(h.transport(), ProxyTransport::Tcp6);
        assert_eq!(h.source(), Some(&inet("[::ffff:192.0.2.1]:1")));
        assert_eq!(h.destination(), Some(&inet("[2001:db8::1]:2")));
    }

    #[test]
    fn v2_round_trips_unix_addresses() {
        let long = "/".to_string() + &"p".repeat(107);
        let cases = [
            (unix_path("/run/app.sock"), unix_path("relative.sock")),
            (unix_path(&long), Addr::Unix(UnixAddr::Unnamed)),
            (
                Addr::Unix(UnixAddr::Abstract(b"name\0with nul".to_vec())),
                Addr::Unix(UnixAddr::Abstract(vec![b'x'; 107])),
            ),
        ];
        for (src, dst) in cases {
            for (kind, transport) in [
                (SocketKind::Stream, ProxyTransport::UnixStream),
                (SocketKind::Datagram, ProxyTransport::UnixDgram),
            ] {
                let wire = v2_proxy(&src, &dst, kind, &[(0xe0, b"custom")]);
                assert_eq!(wire.len(), 16 + 216 + 9);
                let h = byte_by_byte(&wire);
                assert_eq!(h.transport(), transport);
                assert_eq!((h.source(), h.destination()), (Some(&src), Some(&dst)));
                assert_eq!(h.tlvs().collect::<Vec<_>>(), [(0xe0, &b"custom"[..])]);
            }
        }
    }

    #[test]
    fn v2_unix_and_inet_give_unspec() {
        let wire = v2_proxy(
            &unix_path("/a"),
            &inet("192.0.2.1:1"),
            SocketKind::Stream,
            &[(1, b"h2")],
        );
        assert_eq!(wire[12..16], [0x21, 0x00, 0, 5]);
        let h = byte_by_byte(&wire);
        assert_eq!(h.command(), ProxyCommand::Proxy);
        assert_eq!(h.transport(), ProxyTransport::Unknown);
        assert_eq!(h.source(), None);
        assert_eq!(h.tlv(ProxyHeader::TLV_ALPN), Some(&b"h2"[..]));
    }

    #[test]
    fn v2_bad_unix_addresses_are_refused_and_out_untouched() {
        let bad = [
            unix_path(""),
            unix_path(&"p".repeat(109)),
            Addr::Unix(UnixAddr::Path(PathBuf::from(OsStr::from_bytes(b"a\0b")))),
            Addr::Unix(UnixAddr::Abstract(vec![b'x'; 108])),
        ];
        for addr in bad {
            let mut out = b"kept".to_vec();
            let err = encode_proxy_v2(&addr, &unix_path("/ok"), SocketKind::Stream, &[], &mut out);
            assert!(
                matches!(err, Err(ProxyError::Invalid(_))),
                "{addr:?}: {err:?}"
            );
            assert_eq!(out, b"kept");
        }
    }

    #[test]
    fn v2_local_round_trips_with_and_without_tlvs() {
        let mut wire = Vec::new();
        encode_proxy_v2_local(&[], &mut wire).unwrap();
        assert_eq!(wire, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
        let h = byte_by_byte(&wire);
        assert_eq!(h.version(), 2);
        assert_eq!(h.command(), ProxyCommand::Local);
        assert_eq!(h.transport(), ProxyTransport::Unknown);
        assert_eq!((h.source(), h.destination()), (None, None));

        wire.clear();
        let tlvs: [(u8, &[u8]); 3] = [
            (ProxyHeader::TLV_NOOP, b""),
            (ProxyHeader::TLV_UNIQUE_ID, b"id-1"),
            (0xf0, &[0; 300]),
        ];
        encode_proxy_v2_local(&tlvs, &mut wire).unwrap();
        let h = byte_by_byte(&wire);
        assert_eq!(h.tlvs().collect::<Vec<_>>(), tlvs);
        assert_eq!(h.tlv(ProxyHeader::TLV_UNIQUE_ID), Some(&b"id-1"[..]));
        assert_eq!(h.tlv(ProxyHeader::TLV_SSL), None);
    }

    #[test]
    fn v2_tlvs_round_trip_and_outlive_the_buffer() {
        let tlvs: [(u8, &[u8]); 3] = [
            (ProxyHeader::TLV_AUTHORITY, b"example.com"),
            (ProxyHeader::TLV_SSL, b"\x01\0\0\0\0\x21\0\x07TLSv1.3"),
            (ProxyHeader::TLV_NETNS, b"blue"),
        ];
        let wire = v2_proxy(
            &inet("192.0.2.1:1"),
            &inet("192.0.2.2:2"),
            SocketKind::Stream,
            &tlvs,
        );
        let owned = done(&wire).0.into_owned();
        drop(wire);
        assert_eq!(owned.tlvs().collect::<Vec<_>>(), tlvs);
        assert_eq!(owned.tlv(ProxyHeader::TLV_NETNS), Some(&b"blue"[..]));
    }

    #[test]
    fn v2_too_many_tlv_bytes_are_refused() {
        let big = vec![0u8; 65535];
        let mut out = b"kept".to_vec();
        // 12 + 3 + 65535 > 65535.
        let err = encode_proxy_v2(
            &inet("192.0.2.1:1"),
            &inet("192.0.2.2:2"),
            SocketKind::Stream,
            &[(1, &big)],
            &mut out,
        );
        assert_eq!(
            err,
            Err(ProxyError::TooLong {
                len: 16 + 12 + 3 + 65535,
                max: ProxyParser::V2_MAX
            })
        );
        assert_eq!(out, b"kept");
        // Exactly the largest header.
        out.clear();
        encode_proxy_v2_local(&[(1, &big[..65532])], &mut out).unwrap();
        assert_eq!(out.len(), ProxyParser::V2_MAX);
        let (h, len) = match ProxyParser::with_max(usize::MAX).parse(&out) {
            Ok(Parsed::Done { header, len }) => (header, len),
            other => panic!("{other:?}"),
        };
        assert_eq!(len, out.len());
        assert_eq!(h.tlvs().next().map(|(_, v)| v.len()), Some(65532));
    }

    // ---- Errors ----

    #[test]
    fn not_proxy_from_the_first_mismatching_byte() {
        assert_eq!(parse_proxy_header(b""), Ok(Parsed::Incomplete));
        for ok_prefix in [&b"P"[..], b"PROX", b"PROXY", b"\r", b"\r\n\r\n\0\r\nQUI"] {
            assert_eq!(
                parse_proxy_header(ok_prefix),
                Ok(Parsed::Incomplete),
                "{ok_prefix:?}"
            );
        }
        for bad in [
            &b"G"[..],
            b"\0",
            b"PRX",
            b"proxy TCP4",
            b"PUT / HTTP/1.1\r\n",
            b"\r\n\r\nGET",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"\n",
            b"\x16\x03\x01\x02\x00\x01",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(error(bad), ProxyError::NotProxy, "{bad:?}");
        }
    }

    #[test]
    fn http_requests_and_tls_are_not_proxy() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            b"PATCH /p HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        ] {
            assert_eq!(error(req), ProxyError::NotProxy, "{req:?}");
        }
    }

    #[test]
    fn v1_malformed_lines_are_invalid() {
        let cases: &[&[u8]] = &[
            b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 256.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1..3.4 1 2\r\n",
            b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 ::1:: 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
            b"PROXY TCP4 1.2.3.4\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n",
        ];
        for &line in cases {
            assert!(
                matches!(error(line), ProxyError::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN whatever \xff\0 goes\r\n",
            b"PROXY UNKNOWN \r\n",
        ] {
            let (h, len) = done(line);
            assert_eq!(len, line.len());
            assert_eq!(h.transport(), ProxyTransport::Unknown);
            assert_eq!(h.source(), None);
        }
    }

    #[test]
    fn v1_lone_lf_or_cr_is_an_error_before_the_line_ends() {
        assert!(matches!(error(b"PROXY TCP4\n"), ProxyError::Invalid(_)));
        assert!(matches!(error(b"PROXY TCP4\rx"), ProxyError::Invalid(_)));
        assert_eq!(parse_proxy_header(b"PROXY TCP4\r"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v1_without_crlf_within_107_bytes_is_too_long() {
        let too_long = ProxyError::TooLong { len: 108, max: 107 };
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(106, b'x');
        assert_eq!(parse_proxy_header(&line), Ok(Parsed::Incomplete));
        // A CR as the 107th byte cannot start a CRLF that ends in time.
        let mut cr = line.clone();
        cr.push(b'\r');
        assert_eq!(parse_proxy_header(&cr), Err(too_long));
        line.push(b'x');
        assert_eq!(parse_proxy_header(&line), Err(too_long));
        line.resize(100_000, b'x');
        assert_eq!(parse_proxy_header(&line), Err(too_long));
        // 105 bytes and the CRLF: exactly 107.
        line.truncate(105);
        line.extend_from_slice(b"\r\n");
        assert_eq!(done(&line).1, 107);
    }

    #[test]
    fn v2_bad_version_and_command_are_unsupported() {
        for (ver_cmd, what, value) in [
            (0x11, "version", 1),
            (0x31, "version", 3),
            (0x01, "version", 0),
            (0xf1, "version", 15),
            (0x22, "command", 2),
            (0x2f, "command", 15),
        ] {
            let want = ProxyError::Unsupported { what, value };
            let wire = v2(ver_cmd, 0x11, &TCP4_BLOCK);
            // Known from the 13th byte on.
            for k in 13..=wire.len() {
                assert_eq!(parse_proxy_header(&wire[..k]), Err(want), "{ver_cmd:#x}");
            }
        }
    }

    #[test]
    fn v2_bad_family_bytes_are_invalid_for_proxy() {
        for fam in [0x41, 0x51, 0xf1, 0x13, 0x1f, 0x03, 0xff] {
            let wire = v2(0x21, fam, &TCP4_BLOCK);
            for k in 14..=wire.len() {
                assert!(
                    matches!(parse_proxy_header(&wire[..k]), Err(ProxyError::Invalid(_))),
                    "{fam:#x}"
                );
            }
            // LOCAL ignores the family.
            let (h, _) = done(&v2(0x20, fam, &[]));
            assert_eq!(h.command(), ProxyCommand::Local);
        }
    }

    #[test]
    fn v2_unspec_halves_give_unknown_without_addresses() {
        for fam in [0x01, 0x02, 0x10, 0x20, 0x30] {
            let (h, _) = done(&v2(0x21, fam, &[]));
            assert_eq!(h.transport(), ProxyTransport::Unknown, "{fam:#x}");
            assert_eq!(h.source(), None);
        }
    }

    #[test]
    fn v2_address_length_shorter_than_the_family_is_invalid_from_the_length_field() {
        for (fam, need) in [
            (0x11, 12),
            (0x12, 12),
            (0x21, 36),
            (0x22, 36),
            (0x31, 216),
            (0x32, 216),
        ] {
            let wire = v2(0x21, fam, &vec![0; need - 1]);
            for k in 16..=wire.len() {
                assert!(
                    matches!(parse_proxy_header(&wire[..k]), Err(ProxyError::Invalid(_))),
                    "{fam:#x}"
                );
            }
            // LOCAL: accepted, addresses ignored.
            assert_eq!(done(&v2(0x20, fam, &vec![0; need - 1])).0.source(), None);
        }
    }

    #[test]
    fn v2_truncated_header_is_incomplete_until_the_last_byte() {
        let wire = v2(0x21, 0x21, &[7; 36]);
        for k in 0..wire.len() {
            assert_eq!(parse_proxy_header(&wire[..k]), Ok(Parsed::Incomplete));
        }
    }

    #[test]
    fn v2_tlv_lengths_are_checked() {
        let bad_tail: &[&[u8]] = &[
            &[1],
            &[1, 0],
            &[1, 0, 1],
            &[1, 0, 5, b'a', b'b'],
            &[1, 0xff, 0xff],
            &[4, 0, 0, 1],
            &[4, 0, 0, 2, 0, 2, b'x'],
        ];
        for tail in bad_tail {
            let body = [&TCP4_BLOCK[..], tail].concat();
            let wire = v2(0x21, 0x11, &body);
            assert!(matches!(error(&wire), ProxyError::Invalid(_)), "{tail:?}");
            // Also with UNSPEC, where TLVs start right after the 16 bytes.
            assert!(
                matches!(error(&v2(0x21, 0x00, tail)), ProxyError::Invalid(_)),
                "{tail:?}"
            );
            // LOCAL takes them as address information and ignores them.
            let (h, len) = done(&v2(0x20, 0x00, tail));
            assert_eq!(len, 16 + tail.len());
            assert_eq!(h.tlvs().count(), 0);
        }
        // Well-formed, including an empty value and one that ends the header.
        let body = [&TCP4_BLOCK[..], &[4, 0, 0, 0xe1, 0, 2, b'h', b'i']].concat();
        let h = byte_by_byte(&v2(0x21, 0x11, &body));
        assert_eq!(
            h.tlvs().collect::<Vec<_>>(),
            [(4, &b""[..]), (0xe1, &b"hi"[..])]
        );
    }

    #[test]
    fn crc32c_matches_the_known_check_value() {
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
    }

    /// A TCP4 header with a CRC32C TLV (and another TLV after it), the
    /// checksum filled in.
    fn with_crc() -> Vec<u8> {
        let tlvs: [(u8, &[u8]); 2] = [
            (ProxyHeader::TLV_CRC32C, &[0; 4]),
            (ProxyHeader::TLV_AUTHORITY, b"example.com"),
        ];
        let mut wire = v2_proxy(
            &inet("192.0.2.1:1"),
            &inet("192.0.2.2:2"),
            SocketKind::Stream,
            &tlvs,
        );
        let crc = !crc32c_update(!0, &wire);
        wire[31..35].copy_from_slice(&crc.to_be_bytes());
        wire
    }

    #[test]
    fn v2_crc32c_is_verified() {
        let wire = with_crc();
        let h = byte_by_byte(&wire);
        assert_eq!(h.tlv(ProxyHeader::TLV_AUTHORITY), Some(&b"example.com"[..]));
        for i in [12, 17, 31, 34, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            if i == 12 {
                bad[12] = 0x20; // still valid, now LOCAL: the CRC covers it
            }
            assert_eq!(
                error(&bad),
                ProxyError::Invalid("CRC32C checksum mismatch"),
                "byte {i}"
            );
        }
        // A CRC32C TLV of another size.
        let wire = v2_proxy(
            &inet("192.0.2.1:1"),
            &inet("192.0.2.2:2"),
            SocketKind::Stream,
            &[(3, &[0; 3])],
        );
        assert_eq!(
            error(&wire),
            ProxyError::Invalid("a CRC32C TLV's value is not 4 bytes")
        );
    }

    #[test]
    fn v2_longer_than_max_is_too_long_from_the_length_field() {
        let parser = ProxyParser::with_max(100);
        assert_eq!(parser.max(), 100);
        let at_max = v2(0x21, 0x11, &[0; 84]);
        assert!(matches!(
            parser.parse(&at_max),
            Ok(Parsed::Done { len: 100, .. })
        ));
        let over = v2(0x21, 0x11, &[0; 85]);
        for k in 16..=over.len() {
            assert_eq!(
                parser.parse(&over[..k]),
                Err(ProxyError::TooLong { len: 101, max: 100 })
            );
        }
        // The default maximum, from 16 bytes only.
        let mut head = v2(0x21, 0x11, &[]);
        head[14..16].copy_from_slice(&4097u16.to_be_bytes());
        assert_eq!(
            parse_proxy_header(&head),
            Err(ProxyError::TooLong {
                len: 4113,
                max: 4112
            })
        );
        head[14..16].copy_from_slice(&4096u16.to_be_bytes());
        assert_eq!(parse_proxy_header(&head), Ok(Parsed::Incomplete));
        // A maximum below 16 refuses every version 2 header, not version 1.
        let tiny = ProxyParser::with_max(0);
        assert!(matches!(
            tiny.parse(&v2(0x20, 0, &[])),
            Err(ProxyError::TooLong { len: 16, max: 0 })
        ));
        assert!(matches!(
            tiny.parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Done { len: 15, .. })
        ));
    }

    #[test]
    fn parser_defaults() {
        assert_eq!(ProxyParser::default(), ProxyParser::new());
        assert_eq!(ProxyParser::new().max(), 4112);
        assert_eq!(ProxyParser::V2_MAX, 65551);
    }

    #[test]
    fn errors_display_what_went_wrong() {
        let cases = [
            (ProxyError::NotProxy, "not a PROXY protocol header"),
            (
                ProxyError::Invalid("bad port"),
                "invalid PROXY protocol header: bad port",
            ),
            (
                ProxyError::TooLong { len: 200, max: 100 },
                "PROXY protocol header too long: 200 bytes, at most 100 accepted",
            ),
            (
                ProxyError::Unsupported {
                    what: "version",
                    value: 3,
                },
                "unsupported PROXY protocol version 3",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small deterministic generator: xorshift.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            // Start some with a signature, to get past it.
            let mut buf = match next() % 3 {
                0 => [&V2_SIGNATURE[..], &[0x21]].concat(),
                1 => b"PROXY ".to_vec(),
                _ => Vec::new(),
            };
            buf.extend((0..len).map(|_| next() as u8));
            check_invariants(&buf);
        }
    }

    /// What holds for every input: no panic; a header's length fits in the
    /// input, every shorter prefix of it is incomplete and the header alone
    /// parses the same; an error stays the same whatever follows.
    fn check_invariants(buf: &[u8]) {
        match parse_proxy_header(buf) {
            Ok(Parsed::Incomplete) => assert!(buf.len() < ProxyParser::DEFAULT_MAX),
            Ok(Parsed::Done { header, len }) => {
                assert!((15..=buf.len()).contains(&len));
                assert_eq!(done(&buf[..len]), (header, len));
                for k in 0..len {
                    assert_eq!(parse_proxy_header(&buf[..k]), Ok(Parsed::Incomplete));
                }
            }
            Err(e) => {
                let mut more = buf.to_vec();
                more.extend_from_slice(b"\r\n\0 more");
                assert_eq!(parse_proxy_header(&more), Err(e));
            }
        }
    }

    // ---- Properties ----

    fn config() -> ProptestConfig {
        ProptestConfig::with_cases(256)
    }

    /// A field that is wrong in some way, or right for another field.
    fn v1_near_miss() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("01.2.3.4".to_string()),
            Just("1.2.3".to_string()),
            Just("256.0.0.1".to_string()),
            Just("080".to_string()),
            Just("65536".to_string()),
            Just("::1::".to_string()),
            Just("1.2.3.4".to_string()),
            Just("::1".to_string()),
            Just(String::new()),
            "[0-9a-fA-F:.]{1,12}",
        ]
    }

    /// Version 1 lines: the right fields for TCP4, TCP6 or UNKNOWN, then
    /// maybe one field replaced, one dropped or added, a double space, or
    /// a wrong line end.
    fn v1_like() -> impl Strategy<Value = Vec<u8>> {
        let end = prop_oneof![
            8 => Just("\r\n"),
            1 => Just("\n"),
            1 => Just("\r"),
            1 => Just(""),
            1 => Just("\rx"),
        ];
        (
            0..4usize,
            (any::<u32>(), any::<u32>(), any::<u128>(), any::<u128>()),
            (any::<u16>(), any::<u16>()),
            (0..12usize, v1_near_miss(), 0..12usize),
            end,
        )
            .prop_map(
                |(protocol, (a4, b4, a6, b6), (sp, dp), (replace, miss, shape), end)| {
                    let (protocol, mut fields) = match protocol {
                        0 => (
                            "TCP4",
                            vec![
                                Ipv4Addr::from(a4).to_string(),
                                Ipv4Addr::from(b4).to_string(),
                            ],
                        ),
                        1 => (
                            "TCP6",
                            vec![
                                Ipv6Addr::from(a6).to_string(),
                                Ipv6Addr::from(b6).to_string(),
                            ],
                        ),
                        2 => (
                            "UNKNOWN",
                            vec![
                                Ipv6Addr::from(a6).to_string(),
                                Ipv4Addr::from(b4).to_string(),
                            ],
                        ),
                        _ => (
                            "TCP5",
                            vec![
                                Ipv4Addr::from(a4).to_string(),
                                Ipv4Addr::from(b4).to_string(),
                            ],
                        ),
                    };
                    fields.extend([sp.to_string(), dp.to_string()]);
                    if let Some(field) = fields.get_mut(replace) {
                        *field = miss;
                    }
                    match shape {
                        0 => drop(fields.pop()),
                        1 => fields.push("1".to_string()),
                        2 => fields.clear(),
                        _ => {}
                    }
                    let sep = if shape == 3 { "  " } else { " " };
                    let mut line = format!("PROXY {protocol}");
                    for field in fields {
                        line.push_str(sep);
                        line.push_str(&field);
                    }
                    line.push_str(end);
                    line.into_bytes()
                },
            )
    }

    /// Version 2 headers: a valid or random command and family, a body of
    /// addresses and TLVs, and a length field that is right most of the
    /// time.
    fn v2_like() -> impl Strategy<Value = Vec<u8>> {
        let tlv = (
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            0u16..40,
            any::<bool>(),
        )
            .prop_map(|(kind, value, bad_len, honest)| {
                let len = if honest {
                    u16::try_from(value.len()).unwrap()
                } else {
                    bad_len
                };
                let mut t = vec![kind];
                t.extend_from_slice(&len.to_be_bytes());
                t.extend_from_slice(&value);
                t
            });
        (
            prop_oneof![Just(0x20u8), Just(0x21), any::<u8>()],
            prop_oneof![
                Just(0x00u8),
                Just(0x11),
                Just(0x12),
                Just(0x21),
                Just(0x22),
                Just(0x31),
                Just(0x32),
                any::<u8>()
            ],
            any::<[u8; 216]>(),
            0usize..=216,
            proptest::collection::vec(tlv, 0..4),
            prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
        )
            .prop_map(|(ver_cmd, fam, addrs, addr_len, tlvs, len)| {
                let addr_len = match fam {
                    0x11 | 0x12 => 12,
                    0x21 | 0x22 => 36,
                    0x31 | 0x32 => 216,
                    _ => addr_len,
                };
                let body = [&addrs[..addr_len], &tlvs.concat()].concat();
                let len = len.unwrap_or(u16::try_from(body.len()).unwrap());
                let mut h = V2_SIGNATURE.to_vec();
                h.extend_from_slice(&[ver_cmd, fam]);
                h.extend_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&body);
                h
            })
    }

    fn port_pair() -> impl Strategy<Value = (u16, u16)> {
        (any::<u16>(), any::<u16>())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_invariants(&buf);
        }

        #[test]
        fn parse_never_panics_on_v1_like_lines(buf in v1_like()) {
            check_invariants(&buf);
        }

        #[test]
        fn parse_never_panics_on_v2_like_headers(buf in v2_like()) {
            check_invariants(&buf);
        }

        #[test]
        fn ipv4_round_trips(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), (sp, dp) in port_pair(), dgram in any::<bool>()) {
            let src = Addr::Inet(SocketAddrV4::new(src.into(), sp).into());
            let dst = Addr::Inet(SocketAddrV4::new(dst.into(), dp).into());
            let kind = if dgram { SocketKind::Datagram } else { SocketKind::Stream };
            for wire in [v1(&src, &dst), v2_proxy(&src, &dst, kind, &[])] {
                let mut with_payload = wire.clone();
                with_payload.extend_from_slice(PAYLOAD);
                let (h, len) = done(&with_payload);
                prop_assert_eq!(len, wire.len());
                prop_assert_eq!(h.source(), Some(&src));
                prop_assert_eq!(h.destination(), Some(&dst));
            }
        }

        #[test]
        fn ipv6_round_trips(src in any::<u128>(), dst in any::<u128>(), (sp, dp) in port_pair(), zeros in any::<u8>()) {
            // Clear some groups, so runs of zeros get compressed.
            let clear = |ip: u128| (0..8).fold(ip, |ip, g| if zeros & (1 << g) != 0 { ip & !(0xffff << (16 * g)) } else { ip });
            let src = Addr::Inet(SocketAddrV6::new(clear(src).into(), sp, 0, 0).into());
            let dst = Addr::Inet(SocketAddrV6::new(clear(dst).into(), dp, 0, 0).into());
            for wire in [v1(&src, &dst), v2_proxy(&src, &dst, SocketKind::Stream, &[])] {
                prop_assert!(wire.len() <= ProxyParser::V1_MAX);
                let (h, len) = done(&wire);
                prop_assert_eq!(len, wire.len());
                prop_assert_eq!(h.source(), Some(&src));
                prop_assert_eq!(h.destination(), Some(&dst));
            }
        }

        #[test]
        fn unix_and_tlvs_round_trip(
            path in proptest::collection::vec(1u8..=255, 1..=108),
            name in proptest::collection::vec(any::<u8>(), 0..107).prop_map(|mut n| { n.push(1); n }),
            tlvs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..5),
        ) {
            let src = Addr::Unix(UnixAddr::Path(PathBuf::from(OsStr::from_bytes(&path))));
            let dst = Addr::Unix(UnixAddr::Abstract(name));
            // CRC32C TLVs would need a real checksum.
            let tlvs: Vec<(u8, &[u8])> = tlvs.iter().filter(|(k, _)| *k != ProxyHeader::TLV_CRC32C).map(|(k, v)| (*k, &v[..])).collect();
            let wire = v2_proxy(&src, &dst, SocketKind::Datagram, &tlvs);
            let (h, len) = done(&wire);
            prop_assert_eq!(len, wire.len());
            prop_assert_eq!(h.source(), Some(&src));
            prop_assert_eq!(h.destination(), Some(&dst));
            prop_assert_eq!(h.tlvs().collect::<Vec<_>>(), tlvs);
        }
    }
}
