//! Splitting a byte stream into lines or length-prefixed frames, without I/O.
//!
//! A data handler is offered every byte its connection holds that it has not
//! consumed yet, and returns how many it consumed; the framework keeps the
//! rest and offers it again, followed by the next read. The splitters here
//! fit that model: [`Lines`] and [`Frames`] borrow the offered bytes, yield
//! each complete line or frame, and report through `consumed()` how many
//! bytes those took. An incomplete tail is left for the next call.
//!
//! # Examples
//!
//! ```
//! use netloop::LineCodec;
//!
//! let codec = LineCodec::new(1024);
//! // Two complete lines, and the start of a third one.
//! let data = b"hello\r\nworld\npar";
//!
//! let mut lines = codec.lines(data);
//! let mut got = Vec::new();
//! for line in &mut lines {
//!     match line {
//!         Ok(line) => got.push(line),
//!         Err(e) => panic!("{e}"), // a real handler closes the connection
//!     }
//! }
//! assert_eq!(got, [&b"hello"[..], b"world"]);
//! // A handler returns this; `par` is offered again with the next read.
//! assert_eq!(lines.consumed(), 13);
//! ```
//!
//! Outside the framework, keep the unconsumed bytes yourself:
//!
//! ```
//! use netloop::{encode_frame, FrameCodec};
//!
//! let mut wire = Vec::new();
//! encode_frame(b"ping", &mut wire)?;
//! encode_frame(b"pong", &mut wire)?;
//!
//! let codec = FrameCodec::new(64 * 1024);
//! let mut buf = Vec::new();
//! let mut got = Vec::new();
//! for read in wire.chunks(3) {
//!     buf.extend_from_slice(read);
//!     let mut frames = codec.frames(&buf);
//!     for frame in &mut frames {
//!         got.push(frame?.to_vec());
//!     }
//!     let n = frames.consumed();
//!     buf.drain(..n);
//! }
//! assert_eq!(got, [b"ping", b"pong"]);
//! # Ok::<(), netloop::FrameError>(())
//! ```
//!
//! # Bounded memory
//!
//! Each splitter has a maximum size and reports [`FrameError::TooLong`] as
//! soon as the bytes offered prove a line or frame will exceed it, instead of
//! asking for more. So the bytes a handler leaves unconsumed never exceed
//! `max + 1` for lines (a full line and its `\r`) and `max + 3` for frames
//! (a full payload and its header, less one byte).
//!
//! # Errors are final
//!
//! After [`FrameError::TooLong`] a [`Lines`] or [`Frames`] yields nothing
//! more: the rest of the stream cannot be trusted to start at a boundary, so
//! the handler should close the connection. [`LineBuffer`], which owns its
//! bytes, can instead skip the over-long line and carry on.

use std::error::Error;
use std::fmt;
use std::iter::FusedIterator;

/// Why a byte stream could not be split into lines or frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A line or frame is longer than the codec's maximum.
    ///
    /// The peer broke the protocol or is hostile: close the connection.
    TooLong {
        /// The maximum that was exceeded, in bytes (terminator or header
        /// excluded).
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { max } => write!(f, "line or frame longer than {max} bytes"),
        }
    }
}

impl Error for FrameError {}

/// Splits bytes into lines ended by `\n` or `\r\n`, at most `max` bytes each.
///
/// A small `Copy` value to keep in a handler; [`lines`](Self::lines) does
/// the work. The returned lines exclude the terminator. A `\r` is only
/// stripped right before the `\n`; elsewhere it is part of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCodec {
    max: usize, // longest line accepted, terminator excluded
}

impl LineCodec {
    /// Creates a codec accepting lines of at most `max` bytes, terminator
    /// excluded.
    pub const fn new(max: usize) -> Self {
        LineCodec { max }
    }

    /// Returns the longest line accepted, in bytes, terminator excluded.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Returns an iterator over the complete lines at the start of `data`.
    ///
    /// Equivalent to [`Lines::new(data, self.max())`](Lines::new).
    pub fn lines<'a>(&self, data: &'a [u8]) -> Lines<'a> {
        Lines::new(data, self.max)
    }
}

/// An iterator over the complete lines at the start of a byte slice.
///
/// Yields `Ok(line)` for each complete line, without its terminator, then
/// stops at the first incomplete one. Yields `Err(FrameError::TooLong)` once,
/// and then nothing, when a line has more than `max` bytes or the incomplete
/// tail already does.
///
/// # Examples
///
/// ```
/// use netloop::{FrameError, Lines};
///
/// let mut lines = Lines::new(b"ok\ntoo long\n", 4);
/// assert_eq!(lines.next(), Some(Ok(&b"ok"[..])));
/// assert_eq!(lines.next(), Some(Err(FrameError::TooLong { max: 4 })));
/// assert_eq!(lines.next(), None);
/// assert_eq!(lines.consumed(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    data: &'a [u8],  // the bytes offered
    consumed: usize, // bytes taken by the lines yielded so far
    max: usize,      // longest line accepted, terminator excluded
    done: bool,      // reached an incomplete line or an error
}

impl<'a> Lines<'a> {
    /// Creates an iterator over the lines of `data`, each at most `max` bytes
    /// long, terminator excluded.
    pub fn new(data: &'a [u8], max: usize) -> Self {
        Lines {
            data,
            consumed: 0,
            max,
            done: false,
        }
    }

    /// Returns how many bytes the lines yielded so far took, terminators
    /// included: the count a data handler returns.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = &self.data[self.consumed..];
        match scan_line(rest, self.max) {
            Scan::Line { line, len } => {
                self.consumed += len;
                Some(Ok(line))
            }
            Scan::Incomplete => {
                self.done = true;
                None
            }
            Scan::TooLong => {
                self.done = true;
                Some(Err(FrameError::TooLong { max: self.max }))
            }
        }
    }
}

impl FusedIterator for Lines<'_> {}

/// What the start of some bytes holds, for a line splitter.
enum Scan<'a> {
    /// A complete line (terminator stripped) spanning `len` bytes.
    Line { line: &'a [u8], len: usize },
    /// The start of a line that may still fit once the rest arrives.
    Incomplete,
    /// A line that is, or will be, longer than the maximum.
    TooLong,
}

/// Finds the first line of `rest`, looking at no more than `max + 2` bytes,
/// so that a long buffer is not scanned to its end for every call.
fn scan_line(rest: &[u8], max: usize) -> Scan<'_> {
    let window = &rest[..rest.len().min(max.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let line = strip_cr(&rest[..lf]);
            if line.len() > max {
                Scan::TooLong
            } else {
                Scan::Line { line, len: lf + 1 }
            }
        }
        // `max + 2` bytes without a newline cannot be a line of `max`.
        None if window.len() < rest.len() => Scan::TooLong,
        None if partial_fits(rest.len(), rest.last().copied(), max) => Scan::Incomplete,
        None => Scan::TooLong,
    }
}

/// Whether an incomplete line of `len` bytes, the last being `last`, may
/// still end up no longer than `max`: it may hold `max` bytes and a `\r`
/// waiting for its `\n`.
fn partial_fits(len: usize, last: Option<u8>, max: usize) -> bool {
    len <= max || (len - 1 == max && last == Some(b'\r'))
}

/// Strips one `\r` from the end of `line`, if present.
fn strip_cr(line: &[u8]) -> &[u8] {
    match line {
        [head @ .., b'\r'] => head,
        _ => line,
    }
}

/// The largest payload a 4-byte length prefix can describe.
const MAX_PREFIXED: usize = u32::MAX as usize;

/// Bytes in the length prefix of a frame.
const HEADER: usize = 4;

/// Splits bytes into frames of a big-endian `u32` length and that many bytes
/// of payload, at most `max` each.
///
/// A small `Copy` value to keep in a handler; [`frames`](Self::frames) does
/// the work and [`encode`](Self::encode) the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max: usize, // largest payload accepted, header excluded
}

impl FrameCodec {
    /// Creates a codec accepting payloads of at most `max` bytes.
    pub const fn new(max: usize) -> Self {
        FrameCodec { max }
    }

    /// Returns the largest payload accepted, in bytes, header excluded.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Returns an iterator over the complete frames at the start of `data`.
    ///
    /// Equivalent to [`Frames::new(data, self.max())`](Frames::new).
    pub fn frames<'a>(&self, data: &'a [u8]) -> Frames<'a> {
        Frames::new(data, self.max)
    }

    /// Appends `payload` to `out` as a frame, like [`encode_frame`], but
    /// refuses payloads this codec would refuse to decode.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLong`] if `payload` is longer than
    /// [`max`](Self::max); `out` is left unchanged.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if payload.len() > self.max {
            return Err(FrameError::TooLong { max: self.max });
        }
        encode_frame(payload, out)
    }
}

/// Appends `payload` to `out` behind its length as a big-endian `u32`.
///
/// # Errors
///
/// [`FrameError::TooLong`] if `payload` has more than `u32::MAX` bytes;
/// `out` is left unchanged.
///
/// # Examples
///
/// ```
/// let mut out = Vec::new();
/// netloop::encode_frame(b"hi", &mut out)?;
/// assert_eq!(out, [0, 0, 0, 2, b'h', b'i']);
/// # Ok::<(), netloop::FrameError>(())
/// ```
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len =
        u32::try_from(payload.len()).map_err(|_| FrameError::TooLong { max: MAX_PREFIXED })?;
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// An iterator over the complete length-prefixed frames at the start of a
/// byte slice.
///
/// Yields `Ok(payload)` for each complete frame, header stripped, then stops
/// at the first incomplete one. Yields `Err(FrameError::TooLong)` once, and
/// then nothing, as soon as a header announces more than `max` bytes.
///
/// # Examples
///
/// ```
/// use netloop::Frames;
///
/// let data = [0, 0, 0, 2, b'h', b'i', 0, 0, 0, 5, b'h'];
/// let mut frames = Frames::new(&data, 1024);
/// assert_eq!(frames.next(), Some(Ok(&b"hi"[..])));
/// assert_eq!(frames.next(), None);
/// assert_eq!(frames.consumed(), 6);
/// ```
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    data: &'a [u8],  // the bytes offered
    consumed: usize, // bytes taken by the frames yielded so far
    max: usize,      // largest payload accepted, header excluded
    done: bool,      // reached an incomplete frame or an error
}

impl<'a> Frames<'a> {
    /// Creates an iterator over the frames of `data`, each with a payload of
    /// at most `max` bytes.
    pub fn new(data: &'a [u8], max: usize) -> Self {
        Frames {
            data,
            consumed: 0,
            max,
            done: false,
        }
    }

    /// Returns how many bytes the frames yielded so far took, headers
    /// included: the count a data handler returns.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = &self.data[self.consumed..];
        let (header, body) = match rest {
            [a, b, c, d, body @ ..] => ([*a, *b, *c, *d], body),
            _ => {
                self.done = true;
                return None;
            }
        };
        let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
        if len > self.max {
            self.done = true;
            return Some(Err(FrameError::TooLong { max: self.max }));
        }
        match body.get(..len) {
            Some(payload) => {
                self.consumed += HEADER + len;
                Some(Ok(payload))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

impl FusedIterator for Frames<'_> {}

/// An owning line buffer: push bytes in, pop complete lines out.
///
/// For code that keeps its own buffer rather than returning a consumed
/// count. Lines end with `\n` or `\r\n` and hold at most `max` bytes,
/// terminator excluded. An over-long line is dropped, reported by
/// [`push`](Self::push), and skipped up to its newline, so the buffer never
/// holds more than `max + 1` bytes of an incomplete line.
///
/// # Examples
///
/// ```
/// use netloop::{FrameError, LineBuffer};
///
/// let mut buf = LineBuffer::new(8);
/// buf.push(b"hel")?;
/// assert_eq!(buf.pop_line(), None);
/// buf.push(b"lo\r\nwor")?;
/// assert_eq!(buf.pop_line(), Some(&b"hello"[..]));
///
/// // Over-long: reported, dropped up to its newline, then business as usual.
/// assert_eq!(buf.push(b"ld, this is too long"), Err(FrameError::TooLong { max: 8 }));
/// buf.push(b"\nbye\n")?;
/// assert_eq!(buf.pop_line(), Some(&b"bye"[..]));
/// # Ok::<(), FrameError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LineBuffer {
    buf: Vec<u8>,     // complete lines of at most `max` bytes, then a partial one
    start: usize,     // bytes at the front of `buf` already returned by `pop_line`
    tail: usize,      // length of the partial line at the end of `buf`
    max: usize,       // longest line accepted, terminator excluded
    discarding: bool, // skipping the rest of an over-long line, up to its `\n`
}

impl LineBuffer {
    /// Creates an empty buffer accepting lines of at most `max` bytes,
    /// terminator excluded.
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            tail: 0,
            max,
            discarding: false,
        }
    }

    /// Returns the longest line accepted, in bytes, terminator excluded.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Appends `data` to the buffer.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLong`] if `data` completes a line longer than
    /// [`max`](Self::max), or makes the incomplete line too long to ever fit.
    /// That line is dropped, up to its newline even if that comes in a later
    /// push; the rest of `data` is still taken, and the buffer stays usable.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        // Forget the lines already popped, so only unread bytes are kept.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut result = Ok(());
        while let Some(lf) = data.iter().position(|&b| b == b'\n') {
            let (piece, rest) = data.split_at(lf + 1);
            if self.discarding {
                self.discarding = false;
            } else {
                let before_lf = match lf {
                    0 if self.tail == 0 => None,
                    0 => self.buf.last().copied(),
                    _ => Some(data[lf - 1]),
                };
                let len = self.tail + lf - usize::from(before_lf == Some(b'\r'));
                if len > self.max {
                    self.buf.truncate(self.buf.len() - self.tail);
                    result = Err(FrameError::TooLong { max: self.max });
                } else {
                    self.buf.extend_from_slice(piece);
                }
            }
            self.tail = 0;
            data = rest;
        }
        if !self.discarding && !data.is_empty() {
            let len = self.tail + data.len();
            if partial_fits(len, data.last().copied(), self.max) {
                self.buf.extend_from_slice(data);
                self.tail = len;
            } else {
                self.buf.truncate(self.buf.len() - self.tail);
                self.tail = 0;
                self.discarding = true;
                result = Err(FrameError::TooLong { max: self.max });
            }
        }
        result
    }

    /// Removes the first complete line and returns it without its
    /// terminator, or returns `None` if no line is complete yet.
    pub fn pop_line(&mut self) -> Option<&[u8]> {
        let complete = &self.buf[self.start..self.buf.len() - self.tail];
        let lf = complete.iter().position(|&b| b == b'\n')?;
        let line = self.start..self.start + strip_cr(&complete[..lf]).len();
        self.start += lf + 1;
        Some(&self.buf[line])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `Lines` the way the framework drives a data handler: unconsumed
    /// bytes are kept and offered again with the next read. Returns the
    /// lines, the error that ended them if any, and the most bytes the
    /// handler ever left unconsumed.
    fn drive_lines(reads: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
        let mut pending = Vec::new();
        let mut got = Vec::new();
        let mut kept = 0;
        for read in reads {
            pending.extend_from_slice(read);
            let mut lines = Lines::new(&pending, max);
            for line in &mut lines {
                match line {
                    Ok(line) => got.push(line.to_vec()),
                    Err(e) => return (got, Some(e), kept),
                }
            }
            let n = lines.consumed();
            pending.drain(..n);
            kept = kept.max(pending.len());
        }
        (got, None, kept)
    }

    /// Same as [`drive_lines`], for `Frames`.
    fn drive_frames(reads: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
        let mut pending = Vec::new();
        let mut got = Vec::new();
        let mut kept = 0;
        for read in reads {
            pending.extend_from_slice(read);
            let mut frames = Frames::new(&pending, max);
            for frame in &mut frames {
                match frame {
                    Ok(frame) => got.push(frame.to_vec()),
                    Err(e) => return (got, Some(e), kept),
                }
            }
            let n = frames.consumed();
            pending.drain(..n);
            kept = kept.max(pending.len());
        }
        (got, None, kept)
    }

    /// Cuts `input` into reads at the given offsets (taken modulo its length).
    fn split_at_cuts<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut reads = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            reads.push(&input[from..cut]);
            from = cut;
        }
        reads
    }

    /// What a line splitter should make of `input` if it is the whole stream
    /// so far: the lines it can return, and whether it hit an over-long one.
    /// Written independently of `scan_line`, from the definition.
    fn model_lines(input: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let partial = pieces.pop().unwrap_or_default();
        let mut got = Vec::new();
        for piece in pieces {
            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
            if line.len() > max {
                return (got, true);
            }
            got.push(line.to_vec());
        }
        let fits = partial.len() <= max || (partial.len() == max + 1 && partial.ends_with(b"\r"));
        (got, !fits)
    }

    /// Bytes rich in `\r`, `\n` and short runs, so lines are often near max.
    fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => Just(b'a'),
            2 => Just(b'\n'),
            2 => Just(b'\r'),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..120)
    }

    fn config() -> ProptestConfig {
        ProptestConfig::with_cases(256)
    }

    #[test]
    fn lines_split_on_lf_and_crlf() {
        let got: Vec<_> = Lines::new(b"a\nbb\r\n\r\n\nc", 10).collect();
        assert_eq!(got, [Ok(&b"a"[..]), Ok(b"bb"), Ok(b""), Ok(b"")]);
    }

    #[test]
    fn lines_keep_a_cr_not_before_lf() {
        let got: Vec<_> = Lines::new(b"a\rb\r\r\n", 10).collect();
        assert_eq!(got, [Ok(&b"a\rb\r"[..])]);
    }

    #[test]
    fn lines_consumed_counts_terminators_and_leaves_the_tail() {
        let mut lines = Lines::new(b"ab\r\ncd\nef", 10);
        assert_eq!(lines.by_ref().count(), 2);
        assert_eq!(lines.consumed(), 7);
    }

    #[test]
    fn lines_of_exactly_max_are_accepted() {
        let got: Vec<_> = Lines::new(b"abc\nabc\r\n", 3).collect();
        assert_eq!(got, [Ok(&b"abc"[..]), Ok(b"abc")]);
    }

    #[test]
    fn complete_line_over_max_is_too_long() {
        let mut lines = Lines::new(b"ok\nabcd\nnever\n", 3);
        assert_eq!(lines.next(), Some(Ok(&b"ok"[..])));
        assert_eq!(lines.next(), Some(Err(FrameError::TooLong { max: 3 })));
        assert_eq!(lines.next(), None);
        assert_eq!(lines.consumed(), 3);
    }

    #[test]
    fn partial_line_over_max_is_too_long_before_its_newline() {
        assert_eq!(
            Lines::new(b"abcd", 3).next(),
            Some(Err(FrameError::TooLong { max: 3 }))
        );
    }

    #[test]
    fn partial_line_of_max_and_cr_waits_for_lf() {
        let mut lines = Lines::new(b"abc\r", 3);
        assert_eq!(lines.next(), None);
        assert_eq!(lines.consumed(), 0);
    }

    #[test]
    fn long_buffer_with_no_newline_is_too_long_without_full_scan() {
        let data = vec![b'x'; 1 << 20];
        assert_eq!(
            Lines::new(&data, 8).next(),
            Some(Err(FrameError::TooLong { max: 8 }))
        );
    }

    #[test]
    fn max_of_usize_max_never_overflows() {
        let got: Vec<_> = Lines::new(b"a\r\nb\r", usize::MAX).collect();
        assert_eq!(got, [Ok(&b"a"[..])]);
        let mut buf = LineBuffer::new(usize::MAX);
        buf.push(b"a\r\nb\r").unwrap();
        assert_eq!(buf.pop_line(), Some(&b"a"[..]));
        assert_eq!(Frames::new(&[0xff; 8], usize::MAX).next(), None);
    }

    #[test]
    fn line_codec_is_lines_with_its_max() {
        let codec = LineCodec::new(2);
        assert_eq!(codec.max(), 2);
        let got: Vec<_> = codec.lines(b"ab\nabc\n").collect();
        assert_eq!(got, [Ok(&b"ab"[..]), Err(FrameError::TooLong { max: 2 })]);
    }

    #[test]
    fn frames_round_trip_and_leave_the_tail() {
        let mut wire = Vec::new();
        encode_frame(b"one", &mut wire).unwrap();
        encode_frame(b"", &mut wire).unwrap();
        encode_frame(b"three", &mut wire).unwrap();
        let mut frames = Frames::new(&wire[..wire.len() - 1], 16);
        assert_eq!(frames.next(), Some(Ok(&b"one"[..])));
        assert_eq!(frames.next(), Some(Ok(&b""[..])));
        assert_eq!(frames.next(), None);
        assert_eq!(frames.consumed(), 11);
    }

    #[test]
    fn frame_header_over_max_is_too_long_before_its_payload() {
        let mut frames = Frames::new(&[0, 0, 1, 0], 255);
        assert_eq!(frames.next(), Some(Err(FrameError::TooLong { max: 255 })));
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn frame_codec_refuses_to_encode_what_it_would_not_decode() {
        let codec = FrameCodec::new(2);
        let mut out = vec![9];
        assert_eq!(
            codec.encode(b"abc", &mut out),
            Err(FrameError::TooLong { max: 2 })
        );
        assert_eq!(out, [9]);
        codec.encode(b"ab", &mut out).unwrap();
        assert_eq!(out, [9, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(codec.frames(&out[1..]).next(), Some(Ok(&b"ab"[..])));
    }

    #[test]
    fn frame_error_displays_the_max() {
        assert_eq!(
            FrameError::TooLong { max: 7 }.to_string(),
            "line or frame longer than 7 bytes"
        );
    }

    #[test]
    fn line_buffer_joins_pushes_into_lines() {
        let mut buf = LineBuffer::new(10);
        buf.push(b"ab").unwrap();
        buf.push(b"c\r").unwrap();
        assert_eq!(buf.pop_line(), None);
        buf.push(b"\nd\n").unwrap();
        assert_eq!(buf.pop_line(), Some(&b"abc"[..]));
        assert_eq!(buf.pop_line(), Some(&b"d"[..]));
        assert_eq!(buf.pop_line(), None);
    }

    #[test]
    fn line_buffer_drops_a_complete_over_long_line_and_keeps_the_rest() {
        let mut buf = LineBuffer::new(3);
        assert_eq!(
            buf.push(b"ok\ntoo long\nfine\r\n"),
            Err(FrameError::TooLong { max: 3 })
        );
        assert_eq!(buf.pop_line(), Some(&b"ok"[..]));
        assert_eq!(buf.pop_line(), None);
    }

    #[test]
    fn line_buffer_discards_an_over_long_partial_line_up_to_its_newline() {
        let mut buf = LineBuffer::new(3);
        buf.push(b"ab").unwrap();
        assert_eq!(buf.push(b"cde"), Err(FrameError::TooLong { max: 3 }));
        assert_eq!(buf.tail, 0);
        buf.push(b"more of it").unwrap();
        buf.push(b"\nxyz\n").unwrap();
        assert_eq!(buf.pop_line(), Some(&b"xyz"[..]));
        assert_eq!(buf.pop_line(), None);
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn lines_are_the_same_however_the_input_is_split(
            input in line_bytes(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 0usize..12,
        ) {
            let reads = split_at_cuts(&input, &cuts);
            let (split, split_err, _) = drive_lines(&reads, max);
            let (whole, whole_err, _) = drive_lines(&[&input], max);
            prop_assert_eq!(&split, &whole);
            prop_assert_eq!(split_err, whole_err);
        }

        #[test]
        fn lines_match_the_model(input in line_bytes(), max in 0usize..12) {
            let (got, err, _) = drive_lines(&[&input], max);
            let (want, too_long) = model_lines(&input, max);
            prop_assert_eq!(got, want);
            prop_assert_eq!(err.is_some(), too_long);
        }

        #[test]
        fn lines_never_leave_more_than_max_plus_one_unconsumed(
            input in line_bytes(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 0usize..12,
        ) {
            let (_, _, kept) = drive_lines(&split_at_cuts(&input, &cuts), max);
            prop_assert!(kept <= max + 1, "kept {} with max {}", kept, max);
        }

        #[test]
        fn random_bytes_never_panic(
            input in proptest::collection::vec(any::<u8>(), 0..300),
            max in prop_oneof![0usize..300, Just(usize::MAX)],
        ) {
            let _ = Lines::new(&input, max).count();
            let _ = Frames::new(&input, max).count();
            let mut buf = LineBuffer::new(max);
            let _ = buf.push(&input);
            while buf.pop_line().is_some() {}
        }

        #[test]
        fn frames_round_trip_however_the_input_is_split(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..20), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for payload in &payloads {
                encode_frame(payload, &mut wire).unwrap();
            }
            let (got, err, kept) = drive_frames(&split_at_cuts(&wire, &cuts), 19);
            prop_assert_eq!(got, payloads);
            prop_assert_eq!(err, None);
            prop_assert!(kept <= 19 + 3);
        }

        #[test]
        fn frames_are_the_same_however_random_bytes_are_split(
            input in proptest::collection::vec(prop_oneof![Just(0u8), 0u8..8, any::<u8>()], 0..120),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 0usize..12,
        ) {
            let (split, split_err, kept) = drive_frames(&split_at_cuts(&input, &cuts), max);
            let (whole, whole_err, _) = drive_frames(&[&input], max);
            prop_assert_eq!(split, whole);
            prop_assert_eq!(split_err, whole_err);
            prop_assert!(kept <= max + 3, "kept {} with max {}", kept, max);
        }

        #[test]
        fn line_buffer_yields_the_lines_that_fit_however_the_input_is_split(
            input in line_bytes(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            max in 0usize..12,
        ) {
            let mut buf = LineBuffer::new(max);
            let mut got = Vec::new();
            let mut errors = false;
            for read in split_at_cuts(&input, &cuts) {
                errors |= buf.push(read).is_err();
                while let Some(line) = buf.pop_line() {
                    got.push(line.to_vec());
                }
                prop_assert!(buf.buf.len() - buf.start <= max + 1);
            }
            // The model stops at the first over-long line; LineBuffer skips
            // it, so compare line by line against the model of each piece.
            let mut want = Vec::new();
            let mut want_errors = false;
            let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            let partial = pieces.pop().unwrap_or_default();
            for piece in pieces {
                let line = piece.strip_suffix(b"\r").unwrap_or(piece);
                if line.len() > max {
                    want_errors = true;
                } else {
                    want.push(line.to_vec());
                }
            }
            want_errors |= model_lines(partial, max).1;
            prop_assert_eq!(got, want);
            prop_assert_eq!(errors, want_errors);
        }
    }
}
