//! RESP2, the Redis serialization protocol: an incremental request parser
//! and reply encoders.
//!
//! Sans-IO: [`Parser::parse`] reads the bytes the event loop offers to
//! `on_data` and says how many it consumed; the encoders append to a buffer
//! the caller owns and reuses. Nothing here touches a socket or allocates per
//! command in steady state.
//!
//! Requests come in two shapes, as in Redis:
//!
//! - multibulk: `*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every client library
//!   and `redis-cli` send;
//! - inline: `GET k\r\n` (or just `\n`), what a person types into telnet and
//!   what `redis-benchmark` sends for `PING_INLINE`. Arguments are split on
//!   whitespace; `"..."` and `'...'` quote them the way `redis-cli` does.

// Included from the example, a test and a fuzz target; each uses a subset.
#![allow(dead_code)]

use std::fmt;

/// Default [`Limits::max_multibulk_len`], as in Redis: 1024 * 1024 arguments.
pub const DEFAULT_MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Default [`Limits::max_bulk_len`], Redis's `proto-max-bulk-len`: 512 MB.
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Default [`Limits::max_inline_len`], Redis's `PROTO_INLINE_MAX_SIZE`: 64 KiB.
pub const DEFAULT_MAX_INLINE_LEN: usize = 64 * 1024;

/// Argument slots kept allocated between commands; a larger command's are freed.
const RETAINED_ARGS: usize = 1024;
/// Unescaping buffer kept allocated between quoted inline commands.
const RETAINED_SCRATCH: usize = 4096;

/// Bounds a request must stay within, checked as soon as the bytes that
/// break them arrive, so no request makes the parser wait for (or the caller
/// buffer) more than these allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one multibulk request (`*<count>`).
    pub max_multibulk_len: usize,
    /// Longest single argument of a multibulk request (`$<len>`).
    pub max_bulk_len: usize,
    /// Longest inline request line, and longest `*`/`$` header line,
    /// without its line ending.
    pub max_inline_len: usize,
}

impl Default for Limits {
    /// Redis's defaults: 1024 * 1024 arguments, 512 MB each, 64 KiB lines.
    fn default() -> Self {
        Limits {
            max_multibulk_len: DEFAULT_MAX_MULTIBULK_LEN,
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            max_inline_len: DEFAULT_MAX_INLINE_LEN,
        }
    }
}

/// Why a request stream cannot be parsed.
///
/// The stream cannot be resynchronised after any of these: reply
/// `-ERR <Display>\r\n` (as Redis does) and close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*<count>` is not an integer, or is over [`Limits::max_multibulk_len`].
    InvalidMultibulkLength,
    /// A `*<count>` line runs past [`Limits::max_inline_len`] without `\r`.
    TooBigMultibulkCount,
    /// A multibulk argument does not start with `$`; holds the byte found.
    ExpectedDollar(u8),
    /// `$<len>` is not an integer, is negative, or is over
    /// [`Limits::max_bulk_len`].
    InvalidBulkLength,
    /// A `$<len>` line runs past [`Limits::max_inline_len`] without `\r`.
    TooBigBulkCount,
    /// The `len` bytes of a bulk argument are not followed by `\r\n`.
    ExpectedCrlf,
    /// An inline request runs past [`Limits::max_inline_len`] without `\n`.
    TooBigInline,
    /// An inline request has an unterminated quote, or a closing quote
    /// followed by something other than whitespace.
    UnbalancedQuotes,
}

impl fmt::Display for ProtocolError {
    /// Redis's own message for the error (Redis has none for
    /// [`ExpectedCrlf`](Self::ExpectedCrlf): it skips two bytes unchecked).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match *self {
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            ProtocolError::ExpectedDollar(b) if b.is_ascii_graphic() || b == b' ' => {
                write!(f, "expected '$', got '{}'", b as char)
            }
            // Redis prints the raw byte; a CR or LF there would break the reply line.
            ProtocolError::ExpectedDollar(b) => write!(f, "expected '$', got '\\x{b:02x}'"),
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ProtocolError::TooBigBulkCount => f.write_str("too big bulk count string"),
            ProtocolError::ExpectedCrlf => f.write_str("expected '\\r\\n' after bulk data"),
            ProtocolError::TooBigInline => f.write_str("too big inline request"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// One request: its arguments, borrowed from the parsed bytes (or, for an
/// inline request with quotes, from the parser's unescaping buffer).
///
/// May be empty: a blank inline line or `*0\r\n` is a request with no
/// arguments, returned so its bytes get consumed. Redis ignores those; so
/// should the caller.
#[derive(Clone, Copy)]
pub struct Command<'a> {
    src: &'a [u8],                // Bytes the ranges index into.
    ranges: &'a [(usize, usize)], // Start and end of each argument in `src`.
}

impl<'a> Command<'a> {
    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether this is an empty request, which should be skipped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Argument `i` (0 is the command name), if there is one.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let &(start, end) = self.ranges.get(i)?;
        Some(&self.src[start..end])
    }

    /// The arguments in order, the command name first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let src = self.src;
        self.ranges
            .iter()
            .map(move |&(start, end)| &src[start..end])
    }

    /// Calls `f` with the arguments as a slice, as `Store::execute` takes
    /// them. Up to 16 arguments are gathered on the stack; longer commands
    /// (a big `MSET`) cost one allocation.
    pub fn with_args<R>(&self, f: impl FnOnce(&[&'a [u8]]) -> R) -> R {
        const ON_STACK: usize = 16;
        let n = self.len();
        if n <= ON_STACK {
            let mut args: [&'a [u8]; ON_STACK] = [&[]; ON_STACK];
            for (slot, arg) in args.iter_mut().zip(self.iter()) {
                *slot = arg;
            }
            f(&args[..n])
        } else {
            let args: Vec<&'a [u8]> = self.iter().collect();
            f(&args)
        }
    }
}

impl fmt::Debug for Command<'_> {
    /// Lists the arguments as escaped byte strings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Arg<'b>(&'b [u8]);
        impl fmt::Debug for Arg<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"{}\"", self.0.escape_ascii())
            }
        }
        f.debug_list().entries(self.iter().map(Arg)).finish()
    }
}

/// An incremental RESP2 request parser, one per connection.
///
/// Call [`parse`](Self::parse) with every unconsumed byte received so far;
/// drop the consumed prefix it reports and call again with what is left plus
/// what arrives next, which is exactly the contract of the event loop's
/// `on_data`. The parser keeps no bytes, only its progress through an
/// incomplete request so the next call resumes instead of starting over
/// (a 1M-argument request arriving in pieces costs linear time, not
/// quadratic). If a call is given fewer bytes than the last one saw, the
/// parser starts that request over; it never panics on any input.
///
/// # Examples
///
/// ```ignore
/// let mut parser = Parser::new(Limits::default());
/// let (cmd, used) = parser.parse(b"*1\r\n$4\r\nPING\r\n")?.unwrap();
/// assert_eq!((cmd.get(0), used), (Some(&b"PING"[..]), 14));
/// ```
#[derive(Debug, Default)]
pub struct Parser {
    limits: Limits,              // Bounds every request must respect.
    ranges: Vec<(usize, usize)>, // Arguments of the request being parsed.
    scratch: Vec<u8>,            // Unescaped arguments of a quoted inline request.
    state: State,                // Progress through an incomplete request.
}

/// How far [`Parser`] got through a request it needs more bytes to finish.
#[derive(Debug, Default, Clone, Copy)]
enum State {
    /// At the start of a request; `ranges` may still describe the last one.
    #[default]
    Start,
    /// An inline line: no `\n` in the first `scanned` bytes.
    Inline { scanned: usize },
    /// A multibulk request of `count` arguments; `ranges` holds the complete
    /// ones and the next starts at `pos`.
    Multibulk { count: usize, pos: usize },
}

/// Where a parsed request's arguments live.
enum Source {
    Data,    // The bytes given to `parse`.
    Scratch, // The parser's unescaping buffer.
}

impl Parser {
    /// A parser enforcing `limits`. Allocates nothing until used.
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            ..Parser::default()
        }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Parses the first request in `data`.
    ///
    /// Returns `Ok(Some((command, consumed)))` for a complete request, which
    /// took the first `consumed` bytes (always at least 1); `Ok(None)` if
    /// `data` holds only the start of one, after checking that start against
    /// the limits, so the caller should keep the bytes and call again when
    /// more arrive.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when `data` cannot begin with a valid request
    /// within the limits, whatever bytes follow.
    pub fn parse<'a>(
        &'a mut self,
        data: &'a [u8],
    ) -> Result<Option<(Command<'a>, usize)>, ProtocolError> {
        let state = match self.state {
            State::Inline { scanned } if scanned <= data.len() => self.state,
            State::Multibulk { pos, .. } if pos <= data.len() => self.state,
            _ => {
                self.ranges.clear();
                self.ranges.shrink_to(RETAINED_ARGS);
                State::Start
            }
        };
        // Anything but `Ok(None)` ends the request; `Ok(None)` sets its own state.
        self.state = State::Start;
        let parsed = match state {
            State::Start => match data.first() {
                None => return Ok(None),
                Some(b'*') => self.multibulk_header(data)?,
                Some(_) => self.inline(data, 0)?,
            },
            State::Inline { scanned } => self.inline(data, scanned)?,
            State::Multibulk { count, pos } => self.multibulk(data, count, pos)?,
        };
        Ok(parsed.map(|(source, consumed)| {
            let src = match source {
                Source::Data => data,
                Source::Scratch => &self.scratch[..],
            };
            let cmd = Command {
                src,
                ranges: &self.ranges,
            };
            (cmd, consumed)
        }))
    }

    /// Parses the `*<count>\r\n` line opening `data`, then the arguments.
    fn multibulk_header(&mut self, data: &[u8]) -> Result<Option<(Source, usize)>, ProtocolError> {
        let max = self.limits.max_inline_len;
        let Some((line, next)) = header_line(
            data,
            0,
            max,
            ProtocolError::TooBigMultibulkCount,
            ProtocolError::InvalidMultibulkLength,
        )?
        else {
            return Ok(None);
        };
        let count = parse_i64(&line[1..]).ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count <= 0 {
            // Redis skips `*0` and `*-1` as empty requests.
            return Ok(Some((Source::Data, next)));
        }
        let count = usize::try_from(count)
            .ok()
            .filter(|&n| n <= self.limits.max_multibulk_len)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        self.multibulk(data, count, next)
    }

    /// Parses `$<len>\r\n<bytes>\r\n` arguments from `pos` until `count` are
    /// in `ranges`.
    fn multibulk(
        &mut self,
        data: &[u8],
        count: usize,
        mut pos: usize,
    ) -> Result<Option<(Source, usize)>, ProtocolError> {
        while self.ranges.len() < count {
            match self.bulk(data, pos)? {
                Some((start, end, next)) => {
                    self.ranges.push((start, end));
                    pos = next;
                }
                None => {
                    self.state = State::Multibulk { count, pos };
                    return Ok(None);
                }
            }
        }
        Ok(Some((Source::Data, pos)))
    }

    /// Parses one bulk argument at `pos`: its start, its end and the offset
    /// after its CRLF.
    fn bulk(
        &self,
        data: &[u8],
        pos: usize,
    ) -> Result<Option<(usize, usize, usize)>, ProtocolError> {
        match data.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => return Err(ProtocolError::ExpectedDollar(b)),
        }
        let Some((line, start)) = header_line(
            data,
            pos,
            self.limits.max_inline_len,
            ProtocolError::TooBigBulkCount,
            ProtocolError::InvalidBulkLength,
        )?
        else {
            return Ok(None);
        };
        let len = parse_i64(&line[1..])
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= self.limits.max_bulk_len)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        let end = start
            .checked_add(len)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        match data.get(end..end.saturating_add(2)) {
            Some(b"\r\n") => Ok(Some((start, end, end + 2))),
            Some(_) => Err(ProtocolError::ExpectedCrlf),
            // Only one byte after the data: fail now if it cannot start a CRLF.
            None if data.get(end).is_some_and(|&b| b != b'\r') => Err(ProtocolError::ExpectedCrlf),
            None => Ok(None),
        }
    }

    /// Parses the inline request opening `data`; no `\n` is in `..scanned`.
    fn inline(
        &mut self,
        data: &[u8],
        scanned: usize,
    ) -> Result<Option<(Source, usize)>, ProtocolError> {
        let max = self.limits.max_inline_len;
        // A `\n` past `max` ends a line that is too long: no need to look there.
        let window = &data[..data.len().min(max.saturating_add(1))];
        let from = scanned.min(window.len());
        let Some(newline) = window[from..].iter().position(|&b| b == b'\n') else {
            if data.len() > max {
                return Err(ProtocolError::TooBigInline);
            }
            self.state = State::Inline {
                scanned: data.len(),
            };
            return Ok(None);
        };
        let newline = from + newline;
        let mut line = &data[..newline];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        // Redis splits the line as a C string: a NUL ends it.
        if let Some(nul) = line.iter().position(|&b| b == 0) {
            line = &line[..nul];
        }
        if line.iter().any(|&b| b == b'"' || b == b'\'') {
            self.scratch.clear();
            self.scratch.shrink_to(RETAINED_SCRATCH);
            split_quoted(line, &mut self.scratch, &mut self.ranges)?;
            Ok(Some((Source::Scratch, newline + 1)))
        } else {
            split_plain(line, &mut self.ranges);
            Ok(Some((Source::Data, newline + 1)))
        }
    }
}

/// Finds the `*`/`$` header line starting at `start`, ending at the first
/// `\r`, which must be followed by `\n`. Returns the line (without CRLF) and
/// the offset after it, or `too_big` once the line is known to be longer than
/// `max`, deciding the same whatever the split of the bytes into reads.
fn header_line(
    data: &[u8],
    start: usize,
    max: usize,
    too_big: ProtocolError,
    invalid: ProtocolError,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &data[start..];
    let window = &rest[..rest.len().min(max.saturating_add(1))];
    match window.iter().position(|&b| b == b'\r') {
        None if rest.len() > max => Err(too_big),
        None => Ok(None),
        Some(cr) => match rest.get(cr + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&rest[..cr], start + cr + 2))),
            Some(_) => Err(invalid),
        },
    }
}

/// C's `isspace`, which Redis uses to skip between inline arguments.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Whether `b` ends an unquoted inline argument (not `\v` or `\f`, as in Redis).
fn ends_word(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits a quote-free inline line (which starts `data`) into ranges of it.
fn split_plain(line: &[u8], ranges: &mut Vec<(usize, usize)>) {
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p == line.len() {
            return;
        }
        let start = p;
        while p < line.len() && !ends_word(line[p]) {
            p += 1;
        }
        ranges.push((start, p));
    }
}

/// Splits an inline line with quotes the way Redis's `sdssplitargs` does,
/// unescaping the arguments into `scratch` and their ranges into `ranges`.
///
/// In `"..."`, `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` are escapes and `\c` is
/// `c`; in `'...'` only `\'` is. A closing quote must be followed by
/// whitespace or the end of the line.
fn split_quoted(
    line: &[u8],
    scratch: &mut Vec<u8>,
    ranges: &mut Vec<(usize, usize)>,
) -> Result<(), ProtocolError> {
    let at = |i: usize| line.get(i).copied();
    let closes = |i: usize| at(i + 1).is_none_or(is_space);
    let mut p = 0;
    loop {
        while at(p).is_some_and(is_space) {
            p += 1;
        }
        if p == line.len() {
            return Ok(());
        }
        let start = scratch.len();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let Some(c) = at(p) else {
                if in_double || in_single {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_double {
                match (c, at(p + 1), hex(at(p + 2)), hex(at(p + 3))) {
                    (b'\\', Some(b'x'), Some(hi), Some(lo)) => {
                        scratch.push(hi << 4 | lo);
                        p += 3;
                    }
                    (b'\\', Some(e), ..) => {
                        scratch.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        p += 1;
                    }
                    (b'"', ..) if !closes(p) => return Err(ProtocolError::UnbalancedQuotes),
                    (b'"', ..) => {
                        p += 1;
                        break;
                    }
                    _ => scratch.push(c),
                }
            } else if in_single {
                match (c, at(p + 1)) {
                    (b'\\', Some(b'\'')) => {
                        scratch.push(b'\'');
                        p += 1;
                    }
                    (b'\'', _) if !closes(p) => return Err(ProtocolError::UnbalancedQuotes),
                    (b'\'', _) => {
                        p += 1;
                        break;
                    }
                    _ => scratch.push(c),
                }
            } else {
                match c {
                    _ if ends_word(c) => {
                        p += 1;
                        break;
                    }
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => scratch.push(c),
                }
            }
            p += 1;
        }
        ranges.push((start, scratch.len()));
    }
}

/// The value of an ASCII hex digit.
fn hex(b: Option<u8>) -> Option<u8> {
    match b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a decimal `i64` as strictly as Redis's `string2ll`: an optional
/// `-`, then digits without a leading zero (`0` itself excepted); no `+`,
/// spaces, `-0` or overflow. Used for protocol lengths and integer values.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        b"0" => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') if digits.len() <= 19 => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Appends `n` in decimal, without allocating.
pub fn push_decimal(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `line` and CRLF, with any CR or LF in `line` turned into a space
/// as Redis does, so the reply stays one line.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    let start = out.len();
    out.extend_from_slice(line);
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a simple string: `+<s>\r\n` (e.g. `+OK`).
pub fn write_simple(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'+');
    push_line(out, s);
}

/// Appends an error: `-<msg>\r\n`. `msg` starts with its code, as in
/// `ERR syntax error`.
pub fn write_error(out: &mut Vec<u8>, msg: &[u8]) {
    out.push(b'-');
    push_line(out, msg);
}

/// Appends an integer: `:<n>\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string: `$<len>\r\n<bytes>\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    // A slice never holds more than isize::MAX bytes.
    push_decimal(out, bytes.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string, `$-1\r\n` (a missing value).
pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header, `*<len>\r\n`; the `len` elements follow.
pub fn write_array_len(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    push_decimal(out, i64::try_from(len).unwrap_or(i64::MAX));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_limits() -> Limits {
        Limits {
            max_multibulk_len: 8,
            max_bulk_len: 16,
            max_inline_len: 32,
        }
    }

    /// Owned arguments of each request parsed from `data` fed whole, and the
    /// error or unconsumed byte count that stopped it.
    type Outcome = (Vec<Vec<Vec<u8>>>, Result<usize, ProtocolError>);

    /// Feeds `data` in the given read sizes the way the event loop does:
    /// unconsumed bytes are offered again, prefixed to the next read.
    fn feed(limits: Limits, data: &[u8], reads: &[usize]) -> Outcome {
        let mut parser = Parser::new(limits);
        let mut buffer = Vec::new();
        let mut commands = Vec::new();
        let mut rest = data;
        let mut reads = reads.iter().copied();
        loop {
            let n = reads.next().unwrap_or(rest.len()).min(rest.len());
            buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match parser.parse(&buffer) {
                    Ok(Some((cmd, used))) => {
                        assert!(used > 0 && used <= buffer.len());
                        commands.push(cmd.iter().map(<[u8]>::to_vec).collect());
                        buffer.drain(..used);
                    }
                    Ok(None) => break,
                    Err(e) => return (commands, Err(e)),
                }
            }
            if rest.is_empty() {
                return (commands, Ok(buffer.len()));
            }
        }
    }

    fn parse_all(data: &[u8]) -> Outcome {
        feed(small_limits(), data, &[])
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn error_of(data: &[u8]) -> ProtocolError {
        parse_all(data).1.expect_err("should be a protocol error")
    }

    fn encode_multibulk(cmd: &[Vec<u8>], out: &mut Vec<u8>) {
        write_array_len(out, cmd.len());
        for arg in cmd {
            write_bulk(out, arg);
        }
    }

    #[test]
    fn multibulk_command_borrows_its_arguments() {
        let data = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        let mut parser = Parser::default();
        let (cmd, used) = parser.parse(data).unwrap().unwrap();
        assert_eq!(used, data.len());
        assert_eq!(cmd.len(), 3);
        assert_eq!(cmd.get(1), Some(&b"k"[..]));
        assert_eq!(cmd.get(2), Some(&b""[..]));
        assert_eq!(cmd.get(3), None);
        let name = cmd.get(0).unwrap();
        assert!(std::ptr::eq(name, &data[8..11]));
    }

    #[test]
    fn bulk_arguments_may_hold_crlf() {
        let data = b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\r\n\r\n";
        assert_eq!(parse_all(data), (vec![args(&["ECHO", "\r\n\r\n"])], Ok(0)));
    }

    #[test]
    fn pipelined_commands_come_one_per_call() {
        let data = b"PING\r\n*1\r\n$4\r\nPING\r\nPING";
        assert_eq!(
            parse_all(data),
            (vec![args(&["PING"]), args(&["PING"])], Ok(4))
        );
    }

    #[test]
    fn incomplete_input_consumes_nothing() {
        let data = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let mut parser = Parser::default();
        for end in 0..data.len() {
            assert!(parser.parse(&data[..end]).unwrap().is_none(), "{end}");
        }
        assert!(parser.parse(data).unwrap().is_some());
    }

    #[test]
    fn shorter_input_after_incomplete_restarts_the_request() {
        let mut parser = Parser::default();
        assert!(parser.parse(b"*2\r\n$3\r\nGET\r\n$1").unwrap().is_none());
        let (cmd, used) = parser.parse(b"PING\r\n").unwrap().unwrap();
        assert_eq!((cmd.get(0), used), (Some(&b"PING"[..]), 6));
    }

    #[test]
    fn inline_command_splits_on_whitespace() {
        assert_eq!(
            parse_all(b"  SET\tk \x0bv  \r\n"),
            (vec![args(&["SET", "k", "v"])], Ok(0))
        );
    }

    #[test]
    fn inline_command_accepts_bare_lf() {
        assert_eq!(parse_all(b"PING\nPING\r\n").0, vec![args(&["PING"]); 2]);
    }

    #[test]
    fn inline_vertical_tab_inside_a_word_does_not_split_it() {
        assert_eq!(parse_all(b"a\x0bb\r\n").0, vec![args(&["a\x0bb"])]);
    }

    #[test]
    fn inline_nul_ends_the_line_like_redis() {
        assert_eq!(parse_all(b"GET k\0junk\r\n").0, vec![args(&["GET", "k"])]);
    }

    #[test]
    fn inline_quotes_group_and_unescape() {
        let data = b"SET \"a b\\x41\\n\\\"\" 'it\\'s' x\"y z\"\r\n";
        assert_eq!(
            feed(Limits::default(), data, &[]),
            (vec![args(&["SET", "a bA\n\"", "it's", "xy z"])], Ok(0))
        );
    }

    #[test]
    fn inline_empty_quotes_are_an_empty_argument() {
        assert_eq!(
            parse_all(b"SET k \"\"\r\n").0,
            vec![args(&["SET", "k", ""])]
        );
    }

    #[test]
    fn blank_lines_and_zero_multibulk_are_empty_commands() {
        let (commands, rest) = parse_all(b"\r\n \n*0\r\n*-1\r\n");
        assert_eq!(commands, vec![Vec::<Vec<u8>>::new(); 4]);
        assert_eq!(rest, Ok(0));
    }

    #[test]
    fn non_numeric_multibulk_length_is_an_error() {
        assert_eq!(error_of(b"*x\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*+1\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error_of(b"*1\rx"), ProtocolError::InvalidMultibulkLength);
    }

    #[test]
    fn multibulk_length_over_limit_is_an_error() {
        assert!(parse_all(b"*8\r\n").1.is_ok());
        assert_eq!(error_of(b"*9\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(
            error_of(b"*99999999999999999999\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
    }

    #[test]
    fn default_limits_are_redis_defaults() {
        let parse = |data: &[u8]| Parser::default().parse(data).map(|r| r.is_some());
        assert_eq!(parse(b"*1048576\r\n"), Ok(false));
        assert_eq!(
            parse(b"*1048577\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(parse(b"*1\r\n$536870912\r\n"), Ok(false));
        assert_eq!(
            parse(b"*1\r\n$536870913\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn endless_multibulk_count_line_is_an_error() {
        let mut data = b"*".to_vec();
        data.extend_from_slice(&[b'1'; 31]);
        assert_eq!(parse_all(&data).1, Ok(32));
        data.push(b'1');
        assert_eq!(error_of(&data), ProtocolError::TooBigMultibulkCount);
    }

    #[test]
    fn missing_dollar_is_an_error_naming_the_byte() {
        let e = error_of(b"*1\r\n:3\r\n");
        assert_eq!(e, ProtocolError::ExpectedDollar(b':'));
        assert_eq!(e.to_string(), "Protocol error: expected '$', got ':'");
        assert_eq!(
            ProtocolError::ExpectedDollar(b'\n').to_string(),
            "Protocol error: expected '$', got '\\x0a'"
        );
    }

    #[test]
    fn bad_bulk_length_is_an_error() {
        for data in [
            &b"*1\r\n$x\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$17\r\n",
            b"*1\r\n$1\rx",
        ] {
            assert_eq!(error_of(data), ProtocolError::InvalidBulkLength, "{data:?}");
        }
    }

    #[test]
    fn oversized_bulk_length_fails_before_its_data_arrives() {
        let mut parser = Parser::new(small_limits());
        assert_eq!(
            parser.parse(b"*1\r\n$17\r\n").unwrap_err(),
            ProtocolError::InvalidBulkLength
        );
    }

    #[test]
    fn endless_bulk_count_line_is_an_error() {
        let mut data = b"*1\r\n$".to_vec();
        data.extend_from_slice(&[b'1'; 31]);
        assert_eq!(parse_all(&data).1, Ok(36));
        data.push(b'1');
        assert_eq!(error_of(&data), ProtocolError::TooBigBulkCount);
    }

    #[test]
    fn bulk_data_without_crlf_is_an_error() {
        assert_eq!(error_of(b"*1\r\n$1\r\nab\r\n"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b"*1\r\n$1\r\na\rb"), ProtocolError::ExpectedCrlf);
        assert_eq!(error_of(b"*1\r\n$1\r\nax"), ProtocolError::ExpectedCrlf);
        assert!(parse_all(b"*1\r\n$1\r\na\r").1.is_ok());
    }

    #[test]
    fn inline_line_over_limit_is_an_error() {
        let line = [b'a'; 32];
        assert_eq!(parse_all(&line).1, Ok(32));
        let mut long = line.to_vec();
        long.push(b'a');
        assert_eq!(error_of(&long), ProtocolError::TooBigInline);
        long.extend_from_slice(b"\r\n");
        assert_eq!(error_of(&long), ProtocolError::TooBigInline);
    }

    #[test]
    fn unbalanced_quotes_are_an_error() {
        for data in [
            &b"SET \"k\r\n"[..],
            b"SET 'k\r\n",
            b"SET \"k\"v\r\n",
            b"SET 'k'v\r\n",
            b"\"\\\r\n",
        ] {
            assert_eq!(error_of(data), ProtocolError::UnbalancedQuotes, "{data:?}");
        }
    }

    #[test]
    fn errors_display_redis_messages() {
        let cases = [
            (
                ProtocolError::InvalidMultibulkLength,
                "invalid multibulk length",
            ),
            (
                ProtocolError::TooBigMultibulkCount,
                "too big mbulk count string",
            ),
            (ProtocolError::InvalidBulkLength, "invalid bulk length"),
            (ProtocolError::TooBigBulkCount, "too big bulk count string"),
            (ProtocolError::TooBigInline, "too big inline request"),
            (
                ProtocolError::UnbalancedQuotes,
                "unbalanced quotes in request",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), format!("Protocol error: {message}"));
        }
    }

    #[test]
    fn with_args_passes_short_and_long_commands() {
        let mut parser = Parser::default();
        let (cmd, _) = parser.parse(b"a b c\r\n").unwrap().unwrap();
        assert_eq!(cmd.with_args(|a| a.to_vec()), [b"a", b"b", b"c"]);
        let long = "x ".repeat(40) + "\n";
        let (cmd, _) = parser.parse(long.as_bytes()).unwrap().unwrap();
        assert_eq!(cmd.with_args(|a| a.len()), 40);
    }

    #[test]
    fn command_debug_lists_escaped_arguments() {
        let mut parser = Parser::default();
        let (cmd, _) = parser
            .parse(b"*2\r\n$3\r\nGET\r\n$1\r\n\x01\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(format!("{cmd:?}"), r#"["GET", "\x01"]"#);
    }

    #[test]
    fn parse_i64_is_as_strict_as_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encoders_write_resp2() {
        let mut out = Vec::new();
        write_simple(&mut out, b"OK");
        write_error(&mut out, b"ERR bad\r\nthing");
        write_integer(&mut out, -42);
        write_integer(&mut out, i64::MIN);
        write_bulk(&mut out, b"a\r\nb");
        write_bulk(&mut out, b"");
        write_null(&mut out);
        write_array_len(&mut out, 2);
        let expected = "+OK\r\n-ERR bad  thing\r\n:-42\r\n:-9223372036854775808\r\n\
                        $4\r\na\r\nb\r\n$0\r\n\r\n$-1\r\n*2\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    /// Arguments of a multibulk request: any bytes.
    fn any_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..5)
    }

    /// Arguments safe to send unquoted in an inline request.
    fn inline_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(
            prop::collection::vec(prop::sample::select(&b"abcXYZ019:_-$*+"[..]), 1..8),
            1..5,
        )
    }

    /// Requests in either shape, encoded, with their expected arguments.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<Vec<u8>>>)> {
        let request = prop_oneof![
            any_command().prop_map(|c| (c, 0u8)),
            inline_command().prop_map(|c| (c, 1u8)),
            inline_command().prop_map(|c| (c, 2u8)),
        ];
        prop::collection::vec(request, 0..6).prop_map(|requests| {
            let mut bytes = Vec::new();
            let mut commands = Vec::new();
            for (cmd, shape) in requests {
                match shape {
                    0 => encode_multibulk(&cmd, &mut bytes),
                    _ => {
                        // Inline requests never start with '*'.
                        if cmd[0][0] == b'*' {
                            continue;
                        }
                        bytes.extend_from_slice(&cmd.join(&b' '));
                        bytes.extend_from_slice(if shape == 1 { b"\r\n" } else { b"\n" });
                    }
                }
                commands.push(cmd);
            }
            (bytes, commands)
        })
    }

    fn reads() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..24, 0..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_of_valid_requests_parses_the_same((bytes, commands) in stream(), reads in reads()) {
            prop_assert_eq!(feed(small_limits(), &bytes, &reads), (commands, Ok(0)));
        }

        #[test]
        fn any_split_of_any_bytes_gives_the_same_outcome(
            bytes in prop::collection::vec(prop::sample::select(&b"*$0123-\r\n \"'\\xaA"[..]), 0..64),
            reads in reads(),
        ) {
            prop_assert_eq!(feed(small_limits(), &bytes, &reads), parse_all(&bytes));
        }

        #[test]
        fn random_bytes_never_panic_or_overconsume(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let mut parser = Parser::new(small_limits());
            let mut rest = &bytes[..];
            while let Ok(Some((_, used))) = parser.parse(rest) {
                prop_assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
        }

        #[test]
        fn double_quoted_hex_escapes_round_trip(arg in prop::collection::vec(any::<u8>(), 0..16)) {
            let mut line = b"ECHO \"".to_vec();
            for b in &arg {
                line.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
            line.extend_from_slice(b"\"\r\n");
            let mut parser = Parser::default();
            let (cmd, used) = parser.parse(&line).unwrap().unwrap();
            prop_assert_eq!(used, line.len());
            prop_assert_eq!(cmd.get(1), Some(&arg[..]));
        }
    }
}
