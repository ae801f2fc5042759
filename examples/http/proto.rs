//! HTTP/1.1 without I/O: requests parsed from the bytes the event loop
//! offers to `on_data` (with the `httparse` crate), routed, and answered
//! into a buffer the caller owns.
//!
//! [`serve`] runs every complete request in its input, in order, appending
//! each response to `out`, and says how many bytes it consumed, whether an
//! incomplete request is left over and whether the connection must close.
//! Nothing here touches a socket or a clock: the `Date` header's value comes
//! from the caller ([`HttpDate`]).
//!
//! Limits, each answered with a clear status before the connection closes:
//! a request head past [`Limits::max_head`] or with more than
//! [`Limits::max_headers`] headers → 431; a `Content-Length` over
//! [`Limits::max_body`] → 413; a `Transfer-Encoding` (chunked bodies are not
//! supported) → 501; anything malformed → 400. The request timeout (408) is
//! the server's: it alone knows time.

// Included from the example, a test and a fuzz target; each uses a subset.
#![allow(dead_code)]

use std::fmt::Write as _;

/// Default [`Limits::max_head`]: 8 KiB, as nginx's default header buffer.
pub const DEFAULT_MAX_HEAD: usize = 8 * 1024;
/// Default [`Limits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default [`Limits::max_body`]: 1 MiB, as nginx's `client_max_body_size`.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Most header slots parsed; [`Limits::max_headers`] above it is capped.
const HEADER_SLOTS: usize = 64;

/// Bounds a request must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line and headers, with the blank line).
    pub max_head: usize,
    /// Most headers in one request (at most 64).
    pub max_headers: usize,
    /// Largest request body (`Content-Length`).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: DEFAULT_MAX_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// What [`serve`] did with one batch of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Bytes consumed from the front of the input: the complete requests
    /// answered (everything, when `close` is set).
    pub consumed: usize,
    /// Requests answered (error responses included).
    pub responses: usize,
    /// The connection must close once `out` is sent: `Connection: close`,
    /// HTTP/1.0 without keep-alive, or an error.
    pub close: bool,
    /// An incomplete request is left unconsumed (the request timer runs).
    pub partial: bool,
    /// `out` ends with a `100 Continue` interim response ([`CONTINUE`]) for
    /// that incomplete request.
    pub continued: bool,
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Per-connection protocol state kept between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conn {
    /// `100 Continue` was sent for the incomplete request at the front.
    continued: bool,
}

/// The `Date` header's value, `Sun, 06 Nov 1994 08:49:37 GMT`, formatted
/// once per second.
#[derive(Debug, Clone, Default)]
pub struct HttpDate {
    secs: Option<u64>,
    text: String,
}

impl HttpDate {
    /// The value for `unix_secs` seconds after the Unix epoch.
    pub fn at(&mut self, unix_secs: u64) -> &str {
        if self.secs != Some(unix_secs) {
            self.secs = Some(unix_secs);
            self.text = format_date(unix_secs);
        }
        &self.text
    }
}

/// Formats an IMF-fixdate (RFC 9110 §5.6.7).
pub fn format_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A parsed, complete request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was asked.
    pub expect_continue: bool,
    pub body: &'a [u8],
}

/// Why a request cannot be served; each is answered, then the connection
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed request (400).
    BadRequest(&'static str),
    /// The head is over [`Limits::max_head`] (431).
    HeadTooLarge,
    /// More than [`Limits::max_headers`] headers (431).
    TooManyHeaders,
    /// `Content-Length` over [`Limits::max_body`] (413).
    BodyTooLarge,
    /// A `Transfer-Encoding` body (501): only `Content-Length` is supported.
    TransferEncoding,
}

impl Reject {
    /// The status code and the body explaining it.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest(_) => (400, "bad request\n"),
            Reject::HeadTooLarge => (431, "request head too large (over 8 KiB)\n"),
            Reject::TooManyHeaders => (431, "too many request headers (over 64)\n"),
            Reject::BodyTooLarge => (413, "request body too large (over 1 MiB)\n"),
            Reject::TransferEncoding => (
                501,
                "Transfer-Encoding (chunked request bodies) is not supported; send Content-Length\n",
            ),
        }
    }
}

/// What [`parse`] found at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete request and the bytes it took.
    Complete(Request<'a>, usize),
    /// More bytes are needed; `head` says whether the head is complete
    /// already (only the body is missing), with its request.
    Partial { head: Option<Request<'a>> },
}

/// Parses the request at the front of `data`.
///
/// # Errors
/// A [`Reject`] for a request that cannot be served.
pub fn parse<'a>(data: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, Reject> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let max_headers = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut slots[..max_headers]);
    // Only the first `max_head` bytes are looked at, so the outcome does not
    // depend on how the input was split into reads.
    let window = &data[..data.len().min(limits.max_head)];
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() >= limits.max_head => {
            return Err(Reject::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial { head: None }),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooManyHeaders),
        Err(e) => return Err(Reject::BadRequest(error_text(e))),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest("incomplete request line"));
    };
    let mut content_length: Option<usize> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    let mut host = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(Reject::BadRequest("bad Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Reject::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("host") {
            host = true;
        }
    }
    if version == 1 && !host {
        return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(Reject::BodyTooLarge);
    }
    let keep_alive = if version == 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    let total = head_len + body_len;
    let complete = data.len() >= total;
    let request = Request {
        method,
        path,
        version,
        keep_alive,
        expect_continue,
        body: &data[head_len..total.min(data.len())],
    };
    if complete {
        Ok(Parsed::Complete(request, total))
    } else {
        Ok(Parsed::Partial {
            head: Some(request),
        })
    }
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
fn parse_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// The page `GET /` returns.
pub const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>netloop</title></head>\n<body><h1>netloop</h1><p>HTTP/1.1 on an event loop. Try <a href=\"/plaintext\">/plaintext</a> or <code>POST /echo</code>.</p></body></html>\n";

/// The most `GET /bytes/N` returns.
pub const MAX_BYTES: usize = 1 << 20;

/// The body of `GET /bytes/N`: its first N bytes.
static FILL: [u8; MAX_BYTES] = [b'x'; MAX_BYTES];

/// The N of `/bytes/N`: digits only, at most [`MAX_BYTES`].
fn bytes_len(path: &str) -> Option<usize> {
    let n = path.strip_prefix("/bytes/")?;
    if n.is_empty() || n.len() > 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&n| n <= MAX_BYTES)
}

/// Answers one complete request into `out`.
pub fn respond(req: &Request<'_>, date: &str, out: &mut Vec<u8>) {
    let head = req.method == "HEAD";
    let get = req.method == "GET" || head;
    let path = req.path.split('?').next().unwrap_or("");
    let bytes = bytes_len(path);
    let (status, ctype, body, allow): (u16, &str, &[u8], &str) = match path {
        "/plaintext" if get => (200, "text/plain", b"Hello, World!", ""),
        _ if get && bytes.is_some() => {
            let n = bytes.unwrap_or(0);
            (200, "application/octet-stream", &FILL[..n], "")
        }
        "/" if get => (200, "text/html; charset=utf-8", INDEX.as_bytes(), ""),
        "/echo" if req.method == "POST" => (200, "application/octet-stream", req.body, ""),
        "/plaintext" | "/" => (405, "text/plain", b"method not allowed\n", "GET, HEAD"),
        "/echo" => (405, "text/plain", b"method not allowed\n", "POST"),
        _ => (404, "text/plain", b"not found\n", ""),
    };
    write_head(out, status, ctype, body.len(), date, req, allow);
    if !head {
        out.extend_from_slice(body);
    }
}

/// The reason phrase of a status this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    ctype: &str,
    len: usize,
    date: &str,
    req: &Request<'_>,
    allow: &str,
) {
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {}\r\nServer: netloop\r\nDate: {date}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n",
        reason(status)
    );
    if !allow.is_empty() {
        let _ = write!(s, "Allow: {allow}\r\n");
    }
    if !req.keep_alive {
        s.push_str("Connection: close\r\n");
    } else if req.version == 0 {
        s.push_str("Connection: keep-alive\r\n");
    }
    s.push_str("\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// Writes an error response with `Connection: close`: for a [`Reject`] or
/// the server's request timeout (408).
pub fn write_error(out: &mut Vec<u8>, status: u16, body: &str, date: &str) {
    let _ = write!(
        ByteWriter(out),
        "HTTP/1.1 {status} {}\r\nServer: netloop\r\nDate: {date}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
}

/// `fmt::Write` into a byte vector.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Serves every complete request at the front of `data`, appending the
/// responses to `out` in order. Stops at the first request that closes the
/// connection (everything after it is consumed and ignored), at an error
/// (answered, then everything consumed) or at an incomplete request (left
/// unconsumed; `100 Continue` is sent once for it if it asked).
pub fn serve(
    data: &[u8],
    conn: &mut Conn,
    limits: &Limits,
    date: &str,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut outcome = Outcome::default();
    loop {
        let rest = &data[outcome.consumed..];
        if rest.is_empty() {
            return outcome;
        }
        match parse(rest, limits) {
            Ok(Parsed::Complete(req, used)) => {
                conn.continued = false;
                respond(&req, date, out);
                outcome.responses += 1;
                outcome.consumed += used;
                if !req.keep_alive {
                    outcome.consumed = data.len();
                    outcome.close = true;
                    return outcome;
                }
            }
            Ok(Parsed::Partial { head }) => {
                if let Some(req) = head {
                    if req.expect_continue && req.version == 1 && !conn.continued {
                        conn.continued = true;
                        outcome.continued = true;
                        out.extend_from_slice(CONTINUE);
                    }
                }
                outcome.partial = true;
                return outcome;
            }
            Err(reject) => {
                let (status, body) = reject.status();
                write_error(out, status, body, date);
                outcome.responses += 1;
                outcome.consumed = data.len();
                outcome.close = true;
                return outcome;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn run(data: &[u8]) -> (String, Outcome) {
        let mut out = Vec::new();
        let o = serve(
            data,
            &mut Conn::default(),
            &Limits::default(),
            DATE,
            &mut out,
        );
        (String::from_utf8(out).unwrap(), o)
    }

    #[test]
    fn date_formats() {
        assert_eq!(format_date(784_111_777), DATE);
        assert_eq!(format_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(format_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn plaintext() {
        let (out, o) = run(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\nServer: netloop\r\nDate: {DATE}\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!")
        );
        assert_eq!(
            o,
            Outcome {
                consumed: 36,
                responses: 1,
                close: false,
                partial: false,
                continued: false
            }
        );
    }

    #[test]
    fn routes_and_methods() {
        let (out, _) = run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with(INDEX),
            "{out}"
        );
        let (out, _) = run(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        let (out, _) = run(b"POST /plaintext HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 405 ") && out.contains("Allow: GET, HEAD\r\n"));
        let (out, _) = run(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 405 ") && out.contains("Allow: POST\r\n"));
        let (out, _) = run(b"HEAD /plaintext HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.ends_with("Content-Length: 13\r\n\r\n"), "{out}");
        let (out, _) = run(b"GET /plaintext?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.ends_with("Hello, World!"));
    }

    #[test]
    fn bytes_n() {
        let (out, _) = run(b"GET /bytes/65536 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Length: 65536\r\n"), "{out}");
        assert!(out.ends_with(&"x".repeat(65536)));
        let (out, _) = run(b"GET /bytes/0 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
        let (out, _) = run(b"GET /bytes/1048576 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.contains("Content-Length: 1048576\r\n"));
        for bad in [
            "/bytes/1048577",
            "/bytes/",
            "/bytes/-1",
            "/bytes/+5",
            "/bytes/99999999999",
        ] {
            let req = format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n");
            let (out, _) = run(req.as_bytes());
            assert!(out.starts_with("HTTP/1.1 404 "), "{bad}: {out}");
        }
    }

    #[test]
    fn echo_in_pieces() {
        let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..req.len() {
            let (out, o) = run(&req[..cut]);
            assert_eq!((out.as_str(), o.consumed, o.partial), ("", 0, cut > 0));
        }
        let (out, o) = run(req);
        assert!(out.ends_with("Content-Length: 5\r\n\r\nhello"), "{out}");
        assert_eq!(o.consumed, req.len());
    }

    #[test]
    fn pipelined_in_order() {
        let mut data = Vec::new();
        for i in 0..100 {
            data.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        data.extend_from_slice(b"GET /plaintext HTTP/1.1\r\nHo");
        let (out, o) = run(&data);
        assert_eq!(o.responses, 100);
        assert!(o.partial && !o.close);
        assert_eq!(o.consumed, data.len() - 27);
        assert_eq!(out.matches("404 Not Found").count(), 100);
    }

    #[test]
    fn connection_close_and_http10() {
        let (out, o) =
            run(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n");
        assert!(o.close && o.responses == 1 && out.contains("Connection: close\r\n"));
        let (out, o) = run(b"GET /plaintext HTTP/1.0\r\n\r\n");
        assert!(o.close && out.contains("Connection: close\r\n"));
        let (out, o) = run(b"GET /plaintext HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(
            !o.close && out.contains("Connection: keep-alive\r\n"),
            "{out}"
        );
    }

    #[test]
    fn limits() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let (out, o) = run(big.as_bytes());
        assert!(out.starts_with("HTTP/1.1 431 ") && o.close, "{out}");
        let (out, o) = run(&big.as_bytes()[..8500]);
        assert!(out.starts_with("HTTP/1.1 431 ") && o.close, "{out}");
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..64 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        let (out, o) = run(format!("{many}\r\n").as_bytes());
        assert!(out.starts_with("HTTP/1.1 431 ") && o.close, "{out}");
        let (out, o) = run(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 413 ") && o.close, "{out}");
        let (out, o) = run(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 501 ") && o.close, "{out}");
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"\x00\x01 / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            let (out, o) = run(bad);
            assert!(out.starts_with("HTTP/1.1 400 ") && o.close, "{out}");
            assert_eq!(o.consumed, bad.len());
        }
    }

    /// Serves `data` in reads of the sizes `cuts` cycles through: the
    /// responses (interim ones dropped), whether it closed, bytes left.
    fn run_split(data: &[u8], cuts: &[usize], limits: &Limits) -> (Vec<u8>, bool, usize) {
        let (mut conn, mut out, mut buffer) = (Conn::default(), Vec::new(), Vec::new());
        let mut at = 0;
        for &cut in cuts.iter().cycle() {
            let n = cut.min(data.len() - at);
            buffer.extend_from_slice(&data[at..at + n]);
            at += n;
            let o = serve(&buffer, &mut conn, limits, DATE, &mut out);
            assert!(o.consumed <= buffer.len());
            if o.continued {
                out.truncate(out.len() - CONTINUE.len());
            }
            buffer.drain(..o.consumed);
            if o.close {
                return (out, true, 0);
            }
            if at == data.len() {
                return (out, false, buffer.len());
            }
        }
        unreachable!()
    }

    #[test]
    fn the_split_of_the_input_changes_nothing() {
        let limits = Limits {
            max_head: 64,
            max_headers: 4,
            max_body: 16,
        };
        let pieces: [&[u8]; 10] = [
            b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n",
            b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n",
            b"\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"G\x00T",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..next() % 5 + 1 {
                let p = pieces[(next() % 10) as usize];
                data.extend_from_slice(
                    &p[..p.len() - (next() % 4 == 0) as usize * (next() as usize % p.len())],
                );
            }
            let whole = run_split(&data, &[data.len().max(1)], &limits);
            let cuts: Vec<usize> = (0..4).map(|_| (next() % 40) as usize + 1).collect();
            assert_eq!(
                whole,
                run_split(&data, &cuts, &limits),
                "{:?} {cuts:?}",
                String::from_utf8_lossy(&data)
            );
            assert_eq!(whole, run_split(&data, &[1], &limits));
        }
    }

    #[test]
    fn continue_once() {
        let mut conn = Conn::default();
        let mut out = Vec::new();
        let head =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let o = serve(head, &mut conn, &Limits::default(), DATE, &mut out);
        assert!(o.partial && out == b"HTTP/1.1 100 Continue\r\n\r\n");
        out.clear();
        serve(head, &mut conn, &Limits::default(), DATE, &mut out);
        assert!(out.is_empty());
        let full = [&head[..], b"ok"].concat();
        serve(&full, &mut conn, &Limits::default(), DATE, &mut out);
        assert!(out.ends_with(b"\r\n\r\nok"));
    }
}
