//! The zero-copy reply: while `on_data` runs for a stream connection with an
//! empty write queue and an open write side, its first `send` of a slice of
//! `data` to that same connection is not copied but written from the loop's
//! read buffer when `on_data` returns. Anything else done to a connection in
//! the callback (another send, `queued`, `close`, `shutdown`, `detach`, …)
//! settles it into the queue first.
//!
//! What a broken fast path would look like, and what each test here watches
//! for: bytes reordered around the deferred send, lost or duplicated, written
//! after a close, a shutdown or a detach, written to the wrong connection, a
//! missing `on_drain`, stale bytes leaking to another connection after a
//! panic, or a partial write whose rest is dropped or sent twice.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

use netloop::{
    CloseReason, Config, ConnId, Context, Detached, Error, EventLoop, Handler, ListenOptions,
    StdSocket,
};
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// How long "nothing more arrives" waits.
const QUIET: Duration = Duration::from_millis(100);

/// The length of the complete lines at the front of `data` (up to and
/// including its last `\n`; 0 when there is none).
fn complete(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// A stream whose read timeout can be set: TCP or Unix.
trait Timed: Read + Write {
    fn timeout(&self, t: Option<Duration>);
    fn nonblocking(&self, on: bool);
}

impl Timed for TcpStream {
    fn timeout(&self, t: Option<Duration>) {
        self.set_read_timeout(t).unwrap();
    }
    fn nonblocking(&self, on: bool) {
        self.set_nonblocking(on).unwrap();
    }
}

impl Timed for UnixStream {
    fn timeout(&self, t: Option<Duration>) {
        self.set_read_timeout(t).unwrap();
    }
    fn nonblocking(&self, on: bool) {
        self.set_nonblocking(on).unwrap();
    }
}

/// Asserts that nothing more arrives for [`QUIET`] (no byte, no end of
/// file), then restores the usual timeout.
fn nothing_more(s: &mut impl Timed) {
    s.timeout(Some(QUIET));
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "expected nothing more, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("expected nothing more, got {e}"),
    }
    s.timeout(Some(STEP));
}

/// [`nothing_more`] for many streams at once: one wait of [`QUIET`], then
/// each must have nothing to read (no byte, no end of file).
fn all_quiet<S: Timed>(streams: &mut [S]) {
    std::thread::sleep(QUIET);
    for (i, s) in streams.iter_mut().enumerate() {
        s.nonblocking(true);
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(n) => panic!(
                "stream {i}: expected nothing more, got {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!("stream {i}: expected nothing more, got {e}"),
        }
        s.nonblocking(false);
    }
}

/// Reads until end of file or a reset; every byte that came before.
fn read_until_closed(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("expected end of file or a reset, got {e} after {got:?}"),
        }
    }
}

/// A Unix stream client with the usual timeouts.
fn unix_client(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

/// Byte `p` of the position-coded stream: the little-endian bytes of the
/// 32-bit word number `p / 4`, so that any byte lost, duplicated or moved
/// by four or more shows.
fn pattern(p: usize) -> u8 {
    ((p / 4) as u32).to_le_bytes()[p % 4]
}

/// Panics unless `bytes` are bytes `at..` of the [`pattern`] stream, naming
/// the first that is not.
fn check_pattern(at: usize, bytes: &[u8]) {
    for (k, &b) in bytes.iter().enumerate() {
        if b != pattern(at + k) {
            panic!(
                "byte {} is {b}, want {} (word {})",
                at + k,
                pattern(at + k),
                (at + k) / 4
            );
        }
    }
}

/// Hides the panics `Boom` raises on purpose; any other panic (a failing
/// assertion in a test running beside it) is still printed.
fn quiet_boom() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_purpose = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.contains("zero-copy boom"));
            if !on_purpose {
                previous(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------
// A line handler whose reply to each complete line is one of several send
// patterns. The tests talk request-response, so one `on_data` sees at most
// one line (if a line arrives in pieces, `on_data` consumes nothing until it
// is whole, and then it comes from the held-back input, not the read buffer).

#[derive(Clone)]
enum Mode {
    /// For a line `K:…\n`: `send(line[..K])`, `send("|")`, `send(line[K..])`
    /// (K clamped to the line's length).
    Split,
    /// `send("<")`, `send(line)`, `send(">")`: a slice of `data` after a
    /// queued send must not overtake it.
    Wrapped,
    /// `send(line)`, `send(line)`.
    Twice,
    /// `send(second half)`, `send(first half)`: two slices of `data`, the
    /// later one first in the buffer.
    Swap,
    /// `send(line)`, then `send("={queued}\n")` with what `queued` said.
    Queued,
    /// `send(line)`, `close`.
    SendClose,
    /// `close`, then `send(line)`: reported.
    CloseSend,
    /// The first line: `send(line)`, `shutdown`; every later one: `send(line)`,
    /// reported.
    SendShutdown,
    /// `shutdown`, then `send(line)`: reported.
    ShutdownSend,
    /// `send(line)`, `abort`, then `connect` to a Unix listener, whose new
    /// socket may well get the aborted connection's fd number.
    SendAbortConnect(String),
    /// `send(all complete lines)`; the partial line is left for later.
    EchoLines,
}

/// What a [`Lines`] handler reports of a send: the line, and the result.
type Report = (Vec<u8>, Result<(), Error>);

struct Lines {
    mode: Mode,
    /// What sends reported.
    report: mpsc::Sender<Report>,
    shut: bool,
}

impl Lines {
    fn new(mode: Mode) -> (Lines, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel();
        (
            Lines {
                mode,
                report: tx,
                shut: false,
            },
            rx,
        )
    }
}

/// Where `Mode::Split` splits `line`: its leading decimal number, clamped.
fn split_point(line: &[u8]) -> usize {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
        .min(line.len())
}

impl Handler for Lines {
    type Conn = ();
    type Msg = ();

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let end = complete(data);
        if end == 0 {
            return 0;
        }
        let line = &data[..end];
        match &self.mode {
            Mode::Split => {
                let k = split_point(line);
                cx.send(id, &line[..k]).unwrap();
                cx.send(id, b"|").unwrap();
                cx.send(id, &line[k..]).unwrap();
            }
            Mode::Wrapped => {
                cx.send(id, b"<").unwrap();
                cx.send(id, line).unwrap();
                cx.send(id, b">").unwrap();
            }
            Mode::Twice => {
                cx.send(id, line).unwrap();
                cx.send(id, line).unwrap();
            }
            Mode::Swap => {
                let half = end / 2;
                cx.send(id, &line[half..]).unwrap();
                cx.send(id, &line[..half]).unwrap();
            }
            Mode::Queued => {
                cx.send(id, line).unwrap();
                let q = cx.queued(id).unwrap();
                cx.send(id, format!("={q}\n").as_bytes()).unwrap();
            }
            Mode::SendClose => {
                cx.send(id, line).unwrap();
                cx.close(id).unwrap();
            }
            Mode::CloseSend => {
                cx.close(id).unwrap();
                let r = cx.send(id, line);
                self.report.send((line.to_vec(), r)).unwrap();
            }
            Mode::SendShutdown => {
                if !self.shut {
                    self.shut = true;
                    cx.send(id, line).unwrap();
                    cx.shutdown(id).unwrap();
                } else {
                    let r = cx.send(id, line);
                    self.report.send((line.to_vec(), r)).unwrap();
                }
            }
            Mode::ShutdownSend => {
                cx.shutdown(id).unwrap();
                let r = cx.send(id, line);
                self.report.send((line.to_vec(), r)).unwrap();
            }
            Mode::SendAbortConnect(url) => {
                cx.send(id, line).unwrap();
                cx.abort(id).unwrap();
                let r = cx.connect(url.as_str()).map(|_| ()).map_err(Error::Io);
                self.report.send((line.to_vec(), r)).unwrap();
            }
            Mode::EchoLines => {
                cx.send(id, line).unwrap();
            }
        }
        end
    }
}

/// A `Mode::Split` line for round `i`: varied lengths, a few long enough to
/// arrive in pieces, split points from 0 to past the end.
fn split_line(i: usize) -> Vec<u8> {
    let body_len = match i % 50 {
        49 => 30_000,
        _ => (i * 37) % 1500,
    };
    let k = match i % 10 {
        0 => 0,
        3 => 999_999, // past the end: clamped, the last send is empty
        _ => (i * 7919) % (body_len + 8),
    };
    let mut line = format!("{k}:").into_bytes();
    line.extend((0..body_len).map(|j| b'a' + ((i + j) % 26) as u8));
    line.push(b'\n');
    line
}

/// The reply `Mode::Split` must give to `line`: `line[..k] | line[k..]`.
fn split_reply(line: &[u8]) -> Vec<u8> {
    let k = split_point(line);
    [&line[..k], b"|", &line[k..]].concat()
}

/// `rounds` request-response round trips on `s`: round `i` writes
/// `line_of(i)` and must read back exactly `want_of(&line)`, no more and no
/// less; after the last one, nothing more arrives.
fn round_trips(
    s: &mut impl Timed,
    rounds: usize,
    line_of: impl Fn(usize) -> Vec<u8>,
    want_of: impl Fn(&[u8]) -> Vec<u8>,
) {
    for i in 0..rounds {
        let line = line_of(i);
        s.write_all(&line).unwrap();
        let want = want_of(&line);
        let got = read_n(s, want.len());
        if got != want {
            let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            let from = at.saturating_sub(20);
            let shown =
                |v: &[u8]| String::from_utf8_lossy(&v[from..(from + 80).min(v.len())]).into_owned();
            panic!(
                "round {i}: the reply of {} bytes differs from byte {at}; from byte {from}: \
                 got {:?}, want {:?}",
                want.len(),
                shown(&got),
                shown(&want)
            );
        }
    }
    nothing_more(s);
}

/// A loop serving the handler `make` builds on TCP, and [`round_trips`]
/// against it from one client; the handler once the loop has stopped.
fn tcp_round_trips<H>(
    make: impl FnOnce() -> H + Send + 'static,
    rounds: usize,
    line_of: impl Fn(usize) -> Vec<u8>,
    want_of: impl Fn(&[u8]) -> Vec<u8>,
) -> H
where
    H: Handler + Send + 'static,
{
    let server = serve(make, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    round_trips(&mut c, rounds, line_of, want_of);
    server.stop()
}

/// A loop serving a [`Lines`] handler in `mode` on TCP, and what its sends
/// report.
fn serve_lines(mode: Mode) -> (Server<Lines>, mpsc::Receiver<Report>) {
    let (h, reports) = Lines::new(mode);
    let server = serve(move || h, Config::default(), &["tcp://127.0.0.1:0"]);
    (server, reports)
}

/// A new client of `server` that writes `line`, and what the handler
/// reported of its send of that line.
fn send_one_line(
    server: &Server<Lines>,
    reports: &mpsc::Receiver<Report>,
    line: &str,
) -> (TcpStream, Report) {
    let mut c = client(server.inet());
    c.write_all(line.as_bytes()).unwrap();
    (c, reports.recv_timeout(STEP).unwrap())
}

// ---------------------------------------------------------------------------
// 1. Order across the deferred send and queued sends.

/// A deferred slice of `data`, then a literal, then another slice, in one
/// `on_data`: the client sees `line[..k] | line[k..]`, in that order, over
/// 500 round trips with split points at 0, inside and past the end, and
/// lines of up to 30 KB; nothing is lost, doubled or reordered.
#[test]
fn deferred_send_keeps_its_place_before_queued_sends_tcp() {
    let _w = watchdog("deferred_send_keeps_its_place_tcp", Duration::from_secs(60));
    tcp_round_trips(|| Lines::new(Mode::Split).0, 500, split_line, split_reply);
}

/// The same as [`deferred_send_keeps_its_place_before_queued_sends_tcp`] on
/// a Unix stream socket, which the fast path serves too.
#[test]
fn deferred_send_keeps_its_place_before_queued_sends_unix() {
    let _w = watchdog(
        "deferred_send_keeps_its_place_unix",
        Duration::from_secs(60),
    );
    let dir = temp_dir("zero-copy");
    let path = dir.join("split.sock");
    let server = serve(
        || Lines::new(Mode::Split).0,
        Config::default(),
        &[&format!("unix://{}", path.display())],
    );
    let mut c = unix_client(&path);
    round_trips(&mut c, 500, split_line, split_reply);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queued send first (a literal, not in the read buffer), then a slice of
/// `data`, then another literal: the slice is not deferred past the first
/// literal; the client reads `<line>` every time.
#[test]
fn slice_after_a_queued_send_does_not_overtake_it() {
    let _w = watchdog("slice_after_a_queued_send", Duration::from_secs(60));
    tcp_round_trips(
        || Lines::new(Mode::Wrapped).0,
        300,
        |i| format!("wrapped {i} {}\n", "w".repeat(i * 13 % 700)).into_bytes(),
        |line| [b"<", line, b">"].concat(),
    );
}

// ---------------------------------------------------------------------------
// 2. Two slices of `data` in one `on_data`.

/// `send(data)` twice in one `on_data`: the second send settles the first
/// (deferred) one into the queue ahead of itself, so the client reads the
/// line exactly twice, over 300 round trips, never once or three times.
#[test]
fn two_sends_of_data_arrive_twice_in_order() {
    let _w = watchdog("two_sends_of_data", Duration::from_secs(60));
    tcp_round_trips(
        || Lines::new(Mode::Twice).0,
        300,
        |i| format!("twice {i} {}\n", "t".repeat(i * 17 % 900)).into_bytes(),
        |line| line.repeat(2),
    );
}

/// Two slices of `data` sent in the opposite order to where they lie in
/// the buffer (second half, then first half): the wire follows the order of
/// the sends, not of the addresses.
#[test]
fn two_slices_go_out_in_send_order_not_buffer_order() {
    let _w = watchdog("two_slices_send_order", Duration::from_secs(60));
    tcp_round_trips(
        || Lines::new(Mode::Swap).0,
        300,
        |i| format!("swap {i} {}\n", "s".repeat(i * 29 % 1100)).into_bytes(),
        |line| {
            let half = line.len() / 2;
            [&line[half..], &line[..half]].concat()
        },
    );
}

// ---------------------------------------------------------------------------
// 3. `queued` settles the deferred send.

/// `send(line)` then `queued(id)` in the same `on_data`: the deferred bytes
/// count as queued (the queue was empty before, so `queued` is exactly the
/// line's length), and the line still arrives once, before the report.
#[test]
fn queued_counts_the_deferred_send() {
    let _w = watchdog("queued_counts_the_deferred_send", Duration::from_secs(60));
    tcp_round_trips(
        || Lines::new(Mode::Queued).0,
        200,
        |i| format!("queued {i} {}\n", "q".repeat(i * 31 % 2000)).into_bytes(),
        |line| [line, format!("={}\n", line.len()).as_bytes()].concat(),
    );
}

// ---------------------------------------------------------------------------
// 4. Close after (and before) a deferred send.

/// `send(line)` then `close(id)` in one `on_data`: the graceful close
/// flushes the deferred bytes, then the client reads end of file; the line
/// exactly once, on each of 50 connections (some lines long).
#[test]
fn close_after_deferred_send_flushes_it_then_eof() {
    let _w = watchdog("close_after_deferred_send", Duration::from_secs(60));
    let (server, _reports) = serve_lines(Mode::SendClose);
    for i in 0..50 {
        let mut c = client(server.inet());
        let line = format!(
            "close {i} {}\n",
            "c".repeat(if i % 10 == 9 { 20_000 } else { i * 41 })
        );
        c.write_all(line.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(read_to_end(&mut c).unwrap()).unwrap(),
            line,
            "connection {i}"
        );
    }
    server.stop();
}

/// `close(id)` then `send(line)`: the send fails (the connection is gone)
/// and the client reads end of file with no bytes: nothing is written after
/// the close.
#[test]
fn send_after_close_fails_and_writes_nothing() {
    let _w = watchdog("send_after_close", Duration::from_secs(60));
    let (server, reports) = serve_lines(Mode::CloseSend);
    for i in 0..20 {
        let line = format!("too late {i}\n");
        let (mut c, (seen, r)) = send_one_line(&server, &reports, &line);
        assert_eq!(seen, line.as_bytes());
        assert!(r.is_err(), "a send after close succeeded: {r:?}");
        assert_eq!(read_until_closed(&mut c), b"", "connection {i}");
    }
    server.stop();
}

// ---------------------------------------------------------------------------
// 5. Shutdown after (and before) a deferred send.

/// `send(line)` then `shutdown(id)`: the client reads the line, then end of
/// file; the connection still reads (half-close): a later line reaches
/// `on_data`, whose send fails with `Closing`, and no byte follows the FIN.
#[test]
fn shutdown_after_deferred_send_flushes_it_then_half_closes() {
    let _w = watchdog("shutdown_after_deferred_send", Duration::from_secs(60));
    for i in 0..10 {
        let (server, reports) = serve_lines(Mode::SendShutdown);
        let mut c = client(server.inet());
        let first = format!("first {i} {}\n", "f".repeat(i * 997));
        c.write_all(first.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(read_to_end(&mut c).unwrap()).unwrap(),
            first
        );
        // The server's write side is shut; its read side is not.
        c.write_all(b"second\n").unwrap();
        let (seen, r) = reports.recv_timeout(STEP).unwrap();
        assert_eq!(seen, b"second\n", "the half-closed connection still reads");
        assert!(matches!(r, Err(Error::Closing)), "{r:?}");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut c).unwrap(), b"", "nothing after the FIN");
        server.stop();
    }
}

/// `shutdown(id)` then `send(line)` in one `on_data`: the send fails with
/// `Closing` and the client reads end of file with no bytes, so nothing is
/// written after the FIN.
#[test]
fn send_after_shutdown_fails_and_writes_nothing() {
    let _w = watchdog("send_after_shutdown", Duration::from_secs(60));
    let (server, reports) = serve_lines(Mode::ShutdownSend);
    for i in 0..20 {
        let (mut c, (_, r)) = send_one_line(&server, &reports, &format!("after fin {i}\n"));
        assert!(matches!(r, Err(Error::Closing)), "{r:?}");
        assert_eq!(read_to_end(&mut c).unwrap(), b"", "connection {i}");
    }
    server.stop();
}

// ---------------------------------------------------------------------------
// Abort after a deferred send.

/// `send(line)`, `abort(id)`, then a `connect` (to a Unix listener of the
/// test), whose socket may reuse the aborted connection's fd number: the
/// aborted client gets a reset or end of file and no byte, and the deferred
/// bytes do not surface on the new connection either.
#[test]
fn abort_drops_the_deferred_send_everywhere() {
    let _w = watchdog("abort_drops_the_deferred_send", Duration::from_secs(60));
    let dir = temp_dir("zero-copy-abort");
    let path = dir.join("side.sock");
    let side = UnixListener::bind(&path).unwrap();
    let url = format!("unix://{}", path.display());
    let (server, reports) = serve_lines(Mode::SendAbortConnect(url));
    let mut sides = Vec::new();
    for i in 0..10 {
        let (mut c, (_, r)) = send_one_line(&server, &reports, &format!("aborted {i}\n"));
        r.unwrap();
        // A Unix connect completes at once: it waits in the backlog.
        let (s, _) = side.accept().unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        sides.push(s);
        assert_eq!(
            read_until_closed(&mut c),
            b"",
            "the aborted client got bytes"
        );
    }
    all_quiet(&mut sides);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 6. Detach after a deferred send.

/// The marker the handler writes through the detached socket as soon as
/// `detach` returns.
const DETACHED: &[u8] = b"<detached>\n";

/// On a complete line: `send(line)`, `detach(id)`, writes [`DETACHED`]
/// through the std socket at once, and hands it over.
struct Detacher(mpsc::Sender<(Detached, Vec<u8>)>);

impl Handler for Detacher {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let end = complete(data);
        if end == 0 {
            return 0;
        }
        cx.send(id, &data[..end]).unwrap();
        let d = cx.detach(id).unwrap();
        let StdSocket::TcpStream(s) = &d.socket else {
            panic!("not a TCP stream: {:?}", d.socket)
        };
        (&*s).write_all(DETACHED).unwrap();
        self.0.send((d, data[..end].to_vec())).unwrap();
        data.len()
    }
}

/// `send(line)` then `detach(id)`: the bytes are neither lost nor
/// duplicated, and the loop writes nothing once the socket is handed over.
/// What the client read before the marker (written by the loop before
/// `detach` returned) plus `Detached::unsent` is exactly the line, and
/// after the marker comes exactly `unsent` and `END` (which the test writes
/// through the detached socket).
#[test]
fn detach_after_deferred_send_hands_over_exactly_the_unsent_bytes() {
    let _w = watchdog("detach_after_deferred_send", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Detacher(tx),
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let (mut clients, mut detached) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let mut c = client(server.inet());
        let line = format!("detach {i} {}\n", "d".repeat(i * 331)).into_bytes();
        c.write_all(&line).unwrap();
        let (d, seen) = rx.recv_timeout(STEP).unwrap();
        assert_eq!(seen, line);
        assert!(d.unread.is_empty(), "inside on_data, `data` has it all");
        let StdSocket::TcpStream(mut s) = d.socket else {
            unreachable!("checked in the handler")
        };
        s.write_all(&d.unsent).unwrap();
        s.write_all(b"END\n").unwrap();
        // Everything the client gets: before the marker, the marker, after.
        let mut got = Vec::new();
        while !got.ends_with(b"END\n") {
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).expect("read");
            assert!(n > 0, "end of file after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        let at = got
            .windows(DETACHED.len())
            .position(|w| w == DETACHED)
            .expect("the marker");
        let (before, after) = (&got[..at], &got[at + DETACHED.len()..]);
        let mut delivered = before.to_vec();
        delivered.extend_from_slice(&d.unsent);
        assert_eq!(delivered, line, "written before detach + unsent");
        let mut want_after = d.unsent.clone();
        want_after.extend_from_slice(b"END\n");
        assert_eq!(after, want_after, "the loop wrote after detach");
        clients.push(c);
        detached.push(s); // kept open: its close would read as end of file
    }
    all_quiet(&mut clients);
    server.stop();
}

// ---------------------------------------------------------------------------
// 7. on_drain after a deferred send.

/// Per connection: a reply is owed after the next drain.
#[derive(Default)]
struct Owed(bool);

/// Echoes each line (a deferred send) and, in the `on_drain` that follows,
/// sends `+\n` once; counts drains and what `queued` said in each.
#[derive(Default)]
struct Drainer {
    drains: usize,
    nonempty_at_drain: usize,
}

impl Handler for Drainer {
    type Conn = Owed;
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, owed: &mut Owed, data: &[u8]) -> usize {
        let end = complete(data);
        if end > 0 {
            cx.send(id, &data[..end]).unwrap();
            owed.0 = true;
        }
        end
    }
    fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, owed: &mut Owed) {
        self.drains += 1;
        if cx.queued(id).unwrap() != 0 {
            self.nonempty_at_drain += 1;
        }
        if std::mem::take(&mut owed.0) {
            cx.send(id, b"+\n").unwrap();
        }
    }
}

/// A deferred send the kernel takes whole is followed by `on_drain`, with
/// an empty queue, and what `on_drain` sends goes out promptly and after
/// the line: each of 200 lines comes back as `line+\n`. Every reply is
/// drained once: two drains per line (the line's, then the `+`'s).
#[test]
fn on_drain_follows_a_deferred_send() {
    let _w = watchdog("on_drain_follows_a_deferred_send", Duration::from_secs(60));
    let n = 200;
    let h = tcp_round_trips(
        Drainer::default,
        n,
        |i| format!("drain {i} {}\n", "x".repeat(i * 7 % 500)).into_bytes(),
        |line| [line, b"+\n"].concat(),
    );
    assert_eq!(h.nonempty_at_drain, 0, "on_drain with bytes still queued");
    assert!(h.drains >= n, "{} drains for {n} deferred sends", h.drains);
    assert_eq!(h.drains, 2 * n, "one drain per reply");
}

/// Echoes the first line of what arrives (a deferred send) and leaves the
/// rest unconsumed; in the `on_drain` that follows, detaches the connection
/// and hands it to the test.
struct DrainDetacher(mpsc::Sender<Detached>);

impl Handler for DrainDetacher {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let end = data.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        if end > 0 {
            cx.send(id, &data[..end]).unwrap();
        }
        end
    }
    fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        if let Ok(d) = cx.detach(id) {
            let _ = self.0.send(d);
        }
    }
}

/// The `on_drain` that follows a deferred send sees the connection with
/// the input `on_data` left unconsumed already kept: a `detach` there
/// hands those bytes back in `unread` (they are not lost), and the std
/// stream carries on where the loop left off.
#[test]
fn detach_in_on_drain_after_a_deferred_send_hands_back_the_unconsumed_input() {
    let _w = watchdog("detach_in_on_drain", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || DrainDetacher(tx),
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let mut c = client(server.inet());
    c.write_all(b"first\nsecond\nthird").unwrap();
    let d = rx
        .recv_timeout(STEP)
        .expect("on_drain detached the connection");
    assert_eq!(read_n(&mut c, 6), b"first\n", "the echo of the first line");
    assert!(d.unsent.is_empty(), "unsent: {:?}", d.unsent);
    assert_eq!(
        String::from_utf8_lossy(&d.unread),
        "second\nthird",
        "what on_data left unconsumed"
    );
    let StdSocket::TcpStream(mut s) = d.socket else {
        panic!("not a TCP stream: {:?}", d.socket)
    };
    s.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(b" and more\n").unwrap();
    assert_eq!(read_n(&mut s, 10), b" and more\n");
    server.stop();
}

// ---------------------------------------------------------------------------
// 8. A panic after a deferred send.

/// Echoes each line; on a line starting with `boom`, sends it (deferred)
/// and then panics. Records close reasons.
#[derive(Default)]
struct Boom {
    closed: Vec<CloseReason>,
}

impl Handler for Boom {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let end = complete(data);
        if end == 0 {
            return 0;
        }
        cx.send(id, &data[..end]).unwrap();
        if data.starts_with(b"boom") {
            panic!("zero-copy boom");
        }
        end
    }
    fn on_close(&mut self, _: &mut Context<'_>, _: ConnId, _: (), reason: CloseReason) {
        self.closed.push(reason);
    }
}

/// A panic in `on_data` right after a deferred send: that connection closes
/// (reset or end of file) without the bytes, the deferred send does not
/// leak to the next connection served (a long-lived echo connection gets
/// exactly its own replies), and each panicking connection is closed with
/// `CloseReason::Panic`.
#[test]
fn panic_after_deferred_send_closes_only_that_connection() {
    quiet_boom();
    let _w = watchdog("panic_after_deferred_send", Duration::from_secs(60));
    let server = serve(Boom::default, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut steady = client(server.inet());
    round_trip(&mut steady, b"before\n");
    let rounds = 20;
    for i in 0..rounds {
        let mut p = client(server.inet());
        p.write_all(format!("boom {i} {}\n", "b".repeat(i * 101)).as_bytes())
            .unwrap();
        assert_eq!(
            read_until_closed(&mut p),
            b"",
            "the panicking connection got bytes"
        );
        round_trip(
            &mut steady,
            format!("steady {i} {}\n", "s".repeat(i * 53)).as_bytes(),
        );
    }
    nothing_more(&mut steady);
    drop(steady);
    let h = server.stop();
    let panics = h
        .closed
        .iter()
        .filter(|r| **r == CloseReason::Panic)
        .count();
    assert_eq!(panics, rounds, "{:?}", h.closed);
}

// ---------------------------------------------------------------------------
// 9. A deferred send the kernel refuses in part.

/// Echoes, and counts the times reading paused on backpressure.
#[derive(Default)]
struct CountingEcho {
    paused: usize,
}

impl Handler for CountingEcho {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let _ = cx.send(id, data);
        data.len()
    }
    fn on_backpressure(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut (), paused: bool) {
        if paused {
            self.paused += 1;
        }
    }
}

/// 8 MiB echoed through 16 KiB server socket buffers to a client that does
/// not read for the first 300 ms: deferred sends of whole 64 KiB reads meet
/// a full socket (EAGAIN, or a partial write whose rest is queued), reading
/// pauses and resumes (low water 0: each resume finds an empty queue, so
/// the next read takes the fast path again). Every byte comes back once,
/// in order (a position-coded pattern), then end of file.
#[test]
fn partial_deferred_writes_queue_the_rest_in_order() {
    let _w = watchdog("partial_deferred_writes", Duration::from_secs(120));
    let opts = ListenOptions {
        recv_buffer_size: Some(16 << 10),
        send_buffer_size: Some(16 << 10),
        ..Default::default()
    };
    let config = Config {
        high_water: 64 << 10,
        low_water: 0,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut el = EventLoop::with_config(CountingEcho::default(), config).unwrap();
        let l = el.listen_with("tcp://127.0.0.1:0", &opts).unwrap();
        tx.send((el.context().local_addr(l).unwrap(), el.handle()))
            .unwrap();
        el.run().unwrap();
        el.into_handler()
    });
    let (addr, handle) = rx.recv_timeout(STEP).unwrap();
    let c = client(addr.as_inet().unwrap());
    let total: usize = 8 << 20;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        while at < total {
            let chunk: Vec<u8> = (at..(at + 65536).min(total)).map(pattern).collect();
            w.write_all(&chunk).unwrap();
            at += chunk.len();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300)); // not reading yet
    let t = Instant::now();
    let mut r = c;
    // Buffers this far below loopback's 64 KiB MSS leave TCP to zero-window
    // probes now and then, whose backoff can pause a loaded machine for
    // seconds: a longer read timeout than `client`'s, still bounded.
    r.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let echoed = read_to_end(&mut r).unwrap();
    writer.join().unwrap();
    check_pattern(0, &echoed);
    assert_eq!(echoed.len(), total, "bytes echoed");
    handle.stop();
    let h = thread.join().unwrap();
    assert!(
        h.paused > 0,
        "the writes were never refused: the test did not test"
    );
    eprintln!(
        "8 MiB echoed in {:?} after the pause; reading paused {} times",
        t.elapsed(),
        h.paused
    );
}

// ---------------------------------------------------------------------------
// 10. A slice of `data` sent to another connection.

/// Pairs the first two connections: what one sends goes to the other (a
/// slice of `data`, to a connection that is not being read) and then back
/// to itself (the deferred send).
#[derive(Default)]
struct Relay {
    ids: Vec<ConnId>,
    opened: Option<mpsc::Sender<usize>>,
}

impl Handler for Relay {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.ids.push(id);
        if let Some(tx) = &self.opened {
            let _ = tx.send(self.ids.len());
        }
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let peer = *self.ids.iter().find(|&&p| p != id).expect("a peer");
        cx.send(peer, data).unwrap();
        cx.send(id, data).unwrap();
        data.len()
    }
}

/// Two clients relayed through the loop: A's bytes reach B exactly, and come
/// back to A exactly, and the same from B to A, over 300 messages each way
/// of up to 40 KB; neither side gets the other's echo or a byte twice.
#[test]
fn slice_sent_to_another_connection_arrives_exactly() {
    let _w = watchdog("slice_sent_to_another_connection", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Relay {
            ids: Vec::new(),
            opened: Some(tx),
        },
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let mut a = client(server.inet());
    assert_eq!(rx.recv_timeout(STEP).unwrap(), 1);
    let mut b = client(server.inet());
    assert_eq!(rx.recv_timeout(STEP).unwrap(), 2);
    for i in 0..300 {
        let len = if i % 25 == 24 {
            40_000
        } else {
            1 + i * 47 % 3000
        };
        let msg: Vec<u8> = (0..len).map(|j| (i * 131 + j * 7) as u8).collect();
        let (from, to) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        from.write_all(&msg).unwrap();
        assert_eq!(read_n(to, len), msg, "message {i} relayed");
        assert_eq!(read_n(from, len), msg, "message {i} echoed");
    }
    nothing_more(&mut a);
    nothing_more(&mut b);
    server.stop();
}

// ---------------------------------------------------------------------------
// More: partial input, many connections in one turn.

/// Lines written in odd-sized chunks that cut lines anywhere: each
/// `on_data` sends the complete lines (a deferred slice) and leaves the
/// partial one, which is kept and offered again with the next read. The
/// client reads back exactly what it wrote (1 MiB).
#[test]
fn deferred_send_with_held_back_input_echoes_exactly() {
    let _w = watchdog(
        "deferred_send_with_held_back_input",
        Duration::from_secs(60),
    );
    let server = serve(
        || Lines::new(Mode::EchoLines).0,
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let c = client(server.inet());
    let mut text = Vec::new();
    let mut i = 0usize;
    while text.len() < 1 << 20 {
        text.extend_from_slice(format!("line {i} {}\n", "l".repeat(i * 61 % 300)).as_bytes());
        i += 1;
    }
    let total = text.len();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        let mut step = 1usize;
        while at < text.len() {
            step = (step * 31 + 7) % 7919 + 1;
            let end = (at + step).min(text.len());
            w.write_all(&text[at..end]).unwrap();
            at = end;
        }
        text
    });
    let mut r = c;
    let got = read_n(&mut r, total);
    let text = writer.join().unwrap();
    assert!(got == text, "the echo differs from what was written");
    nothing_more(&mut r);
    server.stop();
}

/// Sixteen clients write before any reads, so one turn serves many
/// connections, each with its own deferred send: every client reads back
/// exactly its own bytes (coded by client and round), never another's.
#[test]
fn many_connections_in_one_turn_get_only_their_own_bytes() {
    let _w = watchdog("many_connections_in_one_turn", Duration::from_secs(60));
    let server = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut clients: Vec<TcpStream> = (0..16).map(|_| client(server.inet())).collect();
    let block = |c: usize, round: usize| -> Vec<u8> {
        (0..4096)
            .map(|j| ((c * 37 + round * 11 + j) as u8) ^ ((c as u8) << 4))
            .collect()
    };
    for round in 0..50 {
        for (c, s) in clients.iter_mut().enumerate() {
            s.write_all(&block(c, round)).unwrap();
        }
        for (c, s) in clients.iter_mut().enumerate() {
            assert_eq!(read_n(s, 4096), block(c, round), "client {c} round {round}");
        }
    }
    all_quiet(&mut clients);
    server.stop();
}

// ---------------------------------------------------------------------------
// The read buffer seen from another callback.

/// A UDP socket and stream connections on one loop: each stream line is
/// echoed (a deferred send), and each datagram's payload (which also lies in
/// the loop's read buffer) is sent to the last stream connection opened,
/// from `on_datagram`, where nothing is deferred: it must be queued and
/// flushed like any send.
#[derive(Default)]
struct DgramToStream {
    stream: Option<ConnId>,
}

impl Handler for DgramToStream {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.stream = Some(id);
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let end = complete(data);
        if end > 0 {
            cx.send(id, &data[..end]).unwrap();
        }
        end
    }
    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        _: ConnId,
        _: &mut (),
        data: &[u8],
        _: &netloop::Addr,
    ) {
        if let Some(id) = self.stream {
            cx.send(id, data).unwrap();
        }
    }
}

/// Stream echoes (deferred sends) alternate with datagrams whose payload,
/// a slice of the read buffer too, `on_datagram` sends to the stream: each
/// arrives promptly, once and in order, so the zero-copy window of the last
/// `on_data` is closed by the time another callback runs.
#[test]
fn slice_of_the_read_buffer_sent_from_on_datagram_is_not_deferred() {
    let _w = watchdog("slice_sent_from_on_datagram", Duration::from_secs(60));
    let server = serve(
        DgramToStream::default,
        Config::default(),
        &["tcp://127.0.0.1:0", "udp://127.0.0.1:0"],
    );
    let mut c = client(server.inet());
    round_trip(&mut c, b"hello\n"); // the stream is open and known
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.addrs[1].as_inet().unwrap();
    for i in 0..200 {
        round_trip(&mut c, format!("line {i}\n").as_bytes());
        let dgram = format!("datagram {i}\n");
        udp.send_to(dgram.as_bytes(), to).unwrap();
        assert_eq!(
            String::from_utf8(read_n(&mut c, dgram.len())).unwrap(),
            dgram,
            "datagram {i}"
        );
    }
    nothing_more(&mut c);
    server.stop();
}

// ---------------------------------------------------------------------------
// A queue left by an earlier read of the same turn.

/// Echoes every byte, cycling per connection through: a copy sent whole (a
/// slice of the handler's own buffer, which is dropped when `on_data`
/// returns), a slice of `data` (the zero-copy candidate), a copy sent in
/// 8 KiB pieces (queued: pieces under the direct-write size), a slice of
/// `data` again. Counts the `on_data` calls offered a full read buffer,
/// after which the loop reads again in the same turn.
#[derive(Default)]
struct Cycle {
    full_reads: usize,
}

/// Per connection: where in its cycle it is.
#[derive(Default)]
struct Step(u8);

impl Handler for Cycle {
    type Conn = Step;
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, step: &mut Step, data: &[u8]) -> usize {
        if data.len() == 64 << 10 {
            self.full_reads += 1;
        }
        step.0 = (step.0 + 1) % 4;
        match step.0 {
            1 => {
                let owned = data.to_vec();
                cx.send(id, &owned).unwrap();
            }
            3 => {
                let owned = data.to_vec();
                for piece in owned.chunks(8 << 10) {
                    cx.send(id, piece).unwrap();
                }
            }
            _ => cx.send(id, data).unwrap(),
        }
        data.len()
    }
}

/// 16 MiB echoed by [`Cycle`] while the client writes as fast as it can,
/// so one turn reads the same connection several times (64 KiB reads, up
/// to the read budget): a read echoed in queued pieces leaves bytes queued
/// until the loop sleeps, and the next read's slice must queue behind them,
/// not go out first from the read buffer; a send of the handler's own
/// buffer is never deferred (it would be written after the buffer is
/// freed). Every byte comes back once, in order.
#[test]
fn slice_waits_behind_bytes_queued_earlier_in_the_turn() {
    let _w = watchdog("slice_waits_behind_queued_bytes", Duration::from_secs(120));
    let server = serve(Cycle::default, Config::default(), &["tcp://127.0.0.1:0"]);
    let c = client(server.inet());
    let total: usize = 16 << 20;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        while at < total {
            let chunk: Vec<u8> = (at..(at + (1 << 20)).min(total)).map(pattern).collect();
            w.write_all(&chunk).unwrap();
            at += chunk.len();
        }
    });
    let mut r = c;
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    while got < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "end of file after {got} bytes");
        check_pattern(got, &buf[..n]);
        got += n;
    }
    writer.join().unwrap();
    nothing_more(&mut r);
    let h = server.stop();
    assert!(
        h.full_reads > 0,
        "no read filled the buffer: the test did not test"
    );
    eprintln!("{} full 64 KiB reads", h.full_reads);
}
