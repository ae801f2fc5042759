//! One stream connection's state machine: its socket, the input the handler
//! held back, the output queue, the backpressure pause, half-close and
//! closing. It never reaches into the loop: its methods change the
//! connection and return what the loop must do about it (an outcome), the
//! way a sans-IO protocol state machine does.

use std::io;

use crate::sock::Stream;
use crate::CloseReason;

/// An emptied output buffer up to this capacity stays with its connection,
/// so a steady stream of messages does not allocate; a larger one (grown by a
/// burst) is freed as soon as it drains. The idle sweep frees the small ones
/// of connections that went quiet, so an idle connection holds no buffer.
const KEEP_BUF: usize = 8 * 1024;

/// A connection's conditions, one bit each. Private to this module: the
/// rest of the crate asks the connection questions instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    const CONNECTING: u16 = 1 << 0; // outbound connect in progress
    const CLOSING: u16 = 1 << 1; // graceful close: flush, then close
    const SHUTDOWN: u16 = 1 << 2; // shut the write side once the queue drains
    const WRITE_SHUT: u16 = 1 << 3; // the write side is shut
    const EOF: u16 = 1 << 4; // the peer closed its write side, and the handler heard
    const PAUSED: u16 = 1 << 5; // reading paused: write queue above high water
    const PENDING: u16 = 1 << 6; // on the loop's flush list
    const READY: u16 = 1 << 7; // on the loop's ready list
    const BLOCKED: u16 = 1 << 8; // the kernel refused a write: wait for WRITABLE
    const COUNTED: u16 = 1 << 9; // counted in `Stats::connections`
    const READ_CLOSED: u16 = 1 << 10; // the peer's end of file was seen while not reading
    const HELD: u16 = 1 << 11; // reading paused by the handler (`Context::pause_reading`)
    const BROKEN: u16 = 1 << 12; // a direct write failed: not read until the flush closes it

    /// Conditions under which a read loop stops.
    const NOT_READING: u16 =
        Self::EOF | Self::PAUSED | Self::HELD | Self::CLOSING | Self::CONNECTING | Self::BROKEN;
    /// Conditions under which nothing more may be queued.
    const NO_SEND: u16 = Self::CLOSING | Self::SHUTDOWN | Self::WRITE_SHUT;
}

/// Which conditions stop a read: the first of an event also hands a
/// connection that is connecting or waiting for WRITABLE to the slow path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Gate(u16);

impl Gate {
    /// Reading on from a ready list or an earlier read.
    pub(crate) const IN_LOOP: Gate = Gate(Flags::NOT_READING);
    /// The first read for an event.
    pub(crate) const FROM_EVENT: Gate = Gate(Flags::NOT_READING | Flags::BLOCKED);
}

/// Bytes queued to send: `buf[written..]` is what the kernel has not taken.
#[derive(Default)]
struct Output {
    buf: Vec<u8>,   // queued bytes, the front `written` of them sent
    written: usize, // bytes of `buf` already sent
}

impl Output {
    #[inline(always)]
    fn queued(&self) -> usize {
        self.buf.len() - self.written
    }

    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.written == self.buf.len()
    }

    /// After a write: an emptied buffer is kept (small) or freed (a burst's);
    /// a mostly sent one is compacted, so a steady trickle cannot grow it.
    fn settle(&mut self) {
        if self.is_empty() {
            if self.buf.capacity() > KEEP_BUF {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.written = 0;
        } else if self.written > self.buf.len() / 2 {
            self.buf.drain(..self.written);
            self.written = 0;
        }
    }
}

/// What a flush of the queue came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The queue is empty (the write side shut now if a shutdown waited).
    Drained,
    /// The kernel refused the rest, or a connect is in progress: WRITABLE
    /// brings the connection back.
    Waiting,
    /// The write budget ran out with bytes left: flush again next turn.
    More,
    /// The queue drained on a connection that was closing: close it now,
    /// with this reason.
    Close(CloseReason),
    /// A write failed: close at once with this reason.
    Failed(CloseReason),
}

/// A stream connection.
pub(crate) struct Conn {
    stream: Stream,            // the socket
    input: Vec<u8>,            // unconsumed input; no allocation while empty
    output: Output,            // queued output
    flags: Flags,              // CONNECTING, CLOSING, …
    close_reason: CloseReason, // the reason a graceful close will report
    last_active: u64,          // last progress (loop clock, ns), for the idle timeout
    idle_ns: u64,              // this connection's idle timeout in ns; 0: none
    #[cfg(feature = "tls")]
    tls: Option<Box<crate::tls::TlsConn>>, // the TLS session of a tls:// connection
}

impl Conn {
    /// An accepted or adopted connection (open), or an outbound one whose
    /// connect is in progress.
    pub(crate) fn new(stream: Stream, connecting: bool, now: u64, idle_ns: u64) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Output::default(),
            flags: Flags(if connecting { Flags::CONNECTING } else { 0 }),
            close_reason: CloseReason::Closed,
            last_active: now,
            idle_ns,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The socket.
    #[inline(always)]
    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The socket, mutably (to register or read it).
    #[inline(always)]
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Bytes queued that the kernel has not taken.
    #[inline(always)]
    pub(crate) fn queued(&self) -> usize {
        self.output.queued()
    }

    /// What the write-queue limits count: the queue and, on a TLS
    /// connection still handshaking, the plaintext rustls holds until the
    /// handshake completes (then encrypted into the queue).
    #[inline(always)]
    pub(crate) fn queued_for_limits(&self) -> usize {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return self.queued() + tls.early();
        }
        self.queued()
    }

    // ----- Reading -----

    /// True if the read loop must stop here (paused, closing, connecting, at
    /// end of file; with [`Gate::FROM_EVENT`] also blocked).
    #[inline(always)]
    pub(crate) fn stops_reading(&self, gate: Gate) -> bool {
        self.flags.0 & gate.0 != 0
    }

    /// True while connecting or waiting for WRITABLE: an event goes to the
    /// slow path.
    #[inline(always)]
    pub(crate) fn waits_for_writable(&self) -> bool {
        self.flags.0 & (Flags::CONNECTING | Flags::BLOCKED) != 0
    }

    /// Reads into `buf`.
    #[inline(always)]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    /// True while the handler holds no input back.
    #[inline(always)]
    pub(crate) fn holds_no_input(&self) -> bool {
        self.input.is_empty()
    }

    /// A reply may be written straight from the read buffer: nothing is
    /// queued ahead of it and the write side is open.
    #[inline(always)]
    pub(crate) fn zero_copy_allowed(&self) -> bool {
        self.output.buf.is_empty() && self.flags.0 & (Flags::SHUTDOWN | Flags::WRITE_SHUT) == 0
    }

    /// Appends to the input held back; false when that takes it past `max`.
    pub(crate) fn hold_input(&mut self, data: &[u8], max: usize) -> bool {
        self.input.extend_from_slice(data);
        self.input.len() <= max
    }

    /// Takes the held-back input, to offer it (with what was just appended).
    pub(crate) fn take_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    /// Gives back what the handler left of taken input after consuming
    /// `used` bytes; false when what is held is past `max`. An emptied
    /// buffer is dropped: an idle connection holds none.
    pub(crate) fn restore_input(&mut self, mut input: Vec<u8>, used: usize, max: usize) -> bool {
        if used < input.len() {
            input.drain(..used);
            // Input that arrived meanwhile (none today: the handler cannot
            // read) would follow what was held.
            input.append(&mut self.input);
            self.input = input;
        }
        self.input.len() <= max
    }

    /// The peer's end of file was read: the handler is told once.
    pub(crate) fn saw_eof(&mut self) {
        self.flags.0 |= Flags::EOF;
    }

    /// An event reported the peer's end of file while this connection was
    /// not being read (paused, or cut off by a budget): the next read must
    /// go on until it meets it, not stop at a short read.
    pub(crate) fn note_read_closed(&mut self) {
        self.flags.0 |= Flags::READ_CLOSED;
    }

    /// The readiness to resume reading with: readable, plus the end of file
    /// if one was seen while not reading.
    pub(crate) fn resume_readiness(&self) -> crate::poller::Readiness {
        if self.flags.0 & Flags::READ_CLOSED != 0 {
            crate::poller::Readiness::READ_CLOSED
        } else {
            crate::poller::Readiness::READABLE
        }
    }

    /// The handler paused reading (`Context::pause_reading`).
    pub(crate) fn hold_reading(&mut self) {
        self.flags.0 |= Flags::HELD;
    }

    /// The handler resumed reading: true if nothing else holds it (the
    /// write queue's high-water pause), so the loop reads again now.
    pub(crate) fn release_reading(&mut self) -> bool {
        let was = self.flags.0 & Flags::HELD != 0;
        self.flags.0 &= !Flags::HELD;
        was && self.flags.0 & Flags::NOT_READING == 0
    }

    /// True while the handler holds reading paused.
    pub(crate) fn reading_held(&self) -> bool {
        self.flags.0 & Flags::HELD != 0
    }

    // ----- Lists the loop keeps -----

    /// Marks the connection for the next flush; true if it was not marked
    /// (the caller then puts it on the flush list).
    #[inline(always)]
    pub(crate) fn mark_pending(&mut self) -> bool {
        let was = self.flags.0 & Flags::PENDING != 0;
        self.flags.0 |= Flags::PENDING;
        !was
    }

    /// Marks the connection for the ready list; true if it was not marked.
    pub(crate) fn mark_ready(&mut self) -> bool {
        let was = self.flags.0 & Flags::READY != 0;
        self.flags.0 |= Flags::READY;
        !was
    }

    /// Taken off the ready list.
    pub(crate) fn unmark_ready(&mut self) {
        self.flags.0 &= !Flags::READY;
    }

    /// Counted in `Stats::connections` (accepted, adopted or connected).
    pub(crate) fn mark_counted(&mut self) {
        self.flags.0 |= Flags::COUNTED;
    }

    /// True if counted in `Stats::connections`.
    pub(crate) fn is_counted(&self) -> bool {
        self.flags.0 & Flags::COUNTED != 0
    }

    // ----- Connecting -----

    /// True while an outbound connect is in progress.
    #[inline(always)]
    pub(crate) fn is_connecting(&self) -> bool {
        self.flags.0 & Flags::CONNECTING != 0
    }

    /// The connect finished: open from now on. True if output (or a
    /// shutdown) waits to be flushed.
    pub(crate) fn connected(&mut self, now: u64) -> bool {
        self.flags.0 &= !Flags::CONNECTING;
        self.last_active = now;
        !self.output.is_empty() || self.flags.0 & Flags::SHUTDOWN != 0
    }

    // ----- Sending -----

    /// True if bytes may still be queued (not closing, not shut down).
    #[inline(always)]
    pub(crate) fn can_send(&self) -> bool {
        self.flags.0 & Flags::NO_SEND == 0
    }

    /// Copies `data` into the queue's spare capacity if it fits; false when
    /// the queue must grow (the caller takes the slow path).
    #[inline(always)]
    pub(crate) fn push_in_place(&mut self, data: &[u8]) -> bool {
        let buf = &mut self.output.buf;
        let len = buf.len();
        if data.len() > buf.capacity() - len {
            return false;
        }
        // SAFETY: the spare capacity holds `data.len()` bytes (checked
        // above); `data` cannot overlap the queue, borrowed mutably here.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_mut_ptr().add(len), data.len());
            buf.set_len(len + data.len());
        }
        true
    }

    /// Appends to the queue, growing it.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.output.buf.extend_from_slice(data);
    }

    /// Queues an owned buffer whose first `sent` bytes the kernel already
    /// took: with nothing queued it becomes the queue (no copy); otherwise
    /// its unsent bytes are appended.
    pub(crate) fn push_owned(&mut self, data: Vec<u8>, sent: usize) {
        if self.output.buf.is_empty() {
            self.output = Output {
                buf: data,
                written: sent,
            };
        } else {
            self.output.buf.extend_from_slice(&data[sent..]);
        }
    }

    /// True if a send may go straight to the socket: nothing queued, not
    /// connecting, not waiting for WRITABLE.
    pub(crate) fn can_write_now(&self) -> bool {
        self.output.is_empty() && !self.waits_for_writable()
    }

    /// Writes `data` straight to the socket (nothing is queued ahead of it).
    /// Returns the bytes the kernel took; what it refused is the caller's to
    /// queue. A refusal marks the connection as waiting for WRITABLE; an
    /// error is left to the flush, which meets it again and closes.
    pub(crate) fn write_direct(&mut self, data: &[u8], now: u64) -> usize {
        let res = self.stream.send(data);
        self.after_direct(res, now)
    }

    /// Writes several slices straight to the socket with one `sendmsg`
    /// (nothing is queued ahead of them); the bytes the kernel took, as
    /// [`write_direct`](Conn::write_direct).
    pub(crate) fn write_vectored(&mut self, bufs: &[&[u8]], now: u64) -> usize {
        let res = self.stream.send_vectored(bufs);
        self.after_direct(res, now)
    }

    /// The bookkeeping of [`write_direct`](Conn::write_direct) for a write
    /// already made (the zero-copy reply's).
    pub(crate) fn after_direct(&mut self, res: io::Result<usize>, now: u64) -> usize {
        let n = match res {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.flags.0 |= Flags::BLOCKED;
                0
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            // The kernel reports an error once: this write took it (a reset,
            // say), so a read now would see an end of file instead. The
            // flush meets the error again (EPIPE) and closes.
            Err(_) => {
                self.flags.0 |= Flags::BROKEN;
                0
            }
        };
        if n > 0 {
            self.last_active = now;
        }
        n
    }

    /// The queue passed the high-water mark: reading pauses. True if it was
    /// not paused (the handler hears of it).
    pub(crate) fn pause(&mut self) -> bool {
        let was = self.flags.0 & Flags::PAUSED != 0;
        self.flags.0 |= Flags::PAUSED;
        !was
    }

    /// True while reading is paused by the high-water mark.
    pub(crate) fn is_paused(&self) -> bool {
        self.flags.0 & Flags::PAUSED != 0
    }

    /// Half-close asked for: true if the write side should be shut now
    /// (nothing queued, connected); otherwise it is shut once the queue
    /// drains. False too if it was asked for before.
    pub(crate) fn ask_shutdown(&mut self) -> bool {
        if self.flags.0 & (Flags::SHUTDOWN | Flags::WRITE_SHUT) != 0 {
            return false;
        }
        self.flags.0 |= Flags::SHUTDOWN;
        if self.output.is_empty() && !self.is_opening() {
            self.flags.0 |= Flags::WRITE_SHUT;
            return true;
        }
        false
    }

    /// True until the connection is open: connecting, or (TLS) until its
    /// handshake completes.
    #[inline]
    pub(crate) fn is_opening(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls_handshaking() {
            return true;
        }
        self.is_connecting()
    }

    /// True once a graceful close is under way.
    pub(crate) fn is_closing(&self) -> bool {
        self.flags.0 & Flags::CLOSING != 0
    }

    /// A graceful close: true if the connection can close now (nothing
    /// queued, or never connected); otherwise it closes with `reason` once
    /// the queue drains, and reads nothing more meanwhile.
    pub(crate) fn ask_close(&mut self, reason: CloseReason) -> bool {
        if self.is_connecting() || self.output.is_empty() {
            return true;
        }
        if !self.is_closing() {
            self.flags.0 |= Flags::CLOSING;
            self.close_reason = reason;
        }
        false
    }

    // ----- Flushing -----

    /// Writes the queue until it empties, the kernel refuses, or `budget`
    /// bytes are sent. Returns the bytes sent, the outcome, and whether the
    /// queue went from above to at most `low_water` with reading paused
    /// (reading resumes: the handler hears of it).
    ///
    /// The common case (a small queue, sent whole by one `send`, the buffer
    /// kept for the next message) is inline; the rest is not.
    #[inline(always)]
    pub(crate) fn flush(
        &mut self,
        budget: usize,
        low_water: usize,
        now: u64,
    ) -> (usize, Flush, bool) {
        self.flags.0 &= !Flags::PENDING;
        let out = &mut self.output;
        if self.flags.0
            & (Flags::BLOCKED
                | Flags::CONNECTING
                | Flags::PAUSED
                | Flags::CLOSING
                | Flags::SHUTDOWN)
            == 0
            && out.written == 0
            && !out.buf.is_empty()
            && out.buf.len() <= budget
            && out.buf.capacity() <= KEEP_BUF
        {
            let res = self.stream.send(&out.buf);
            if let Ok(n) = res {
                if n == out.buf.len() {
                    out.buf.clear();
                    self.last_active = now;
                    return (n, Flush::Drained, false);
                }
            }
            return self.flush_slow(budget, low_water, now, Some(res));
        }
        self.flush_slow(budget, low_water, now, None)
    }

    /// `flush` beyond its common case; `first` is the result of a `send` of
    /// the whole queue already made.
    #[cold]
    #[inline(never)]
    fn flush_slow(
        &mut self,
        budget: usize,
        low_water: usize,
        now: u64,
        mut first: Option<io::Result<usize>>,
    ) -> (usize, Flush, bool) {
        if self.waits_for_writable() {
            return (0, Flush::Waiting, false);
        }
        let out = &mut self.output;
        let mut sent = 0;
        let mut outcome = Flush::Drained;
        while out.written < out.buf.len() {
            let end = out.buf.len().min(out.written + (budget - sent));
            let r = match first.take() {
                Some(r) => r,
                None => self.stream.send(&out.buf[out.written..end]),
            };
            match r {
                Ok(n) => {
                    out.written += n;
                    sent += n;
                    if sent >= budget {
                        if out.written < out.buf.len() {
                            outcome = Flush::More;
                        }
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flags.0 |= Flags::BLOCKED;
                    outcome = Flush::Waiting;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (sent, Flush::Failed(CloseReason::from_io(&e)), false),
            }
        }
        if sent > 0 {
            self.last_active = now;
        }
        let resumed = self.flags.0 & Flags::PAUSED != 0 && out.queued() <= low_water;
        if resumed {
            self.flags.0 &= !Flags::PAUSED;
        }
        out.settle();
        if out.is_empty() {
            // A TLS handshake's records drained: the shutdown waits for the
            // handshake (and its close_notify, queued when it completes).
            if self.flags.0 & (Flags::SHUTDOWN | Flags::WRITE_SHUT) == Flags::SHUTDOWN
                && !self.is_opening()
            {
                self.flags.0 |= Flags::WRITE_SHUT;
                if let Err(e) = self.stream.shutdown_write() {
                    log::debug!("shutdown: {e}");
                }
            }
            if self.is_closing() {
                return (sent, Flush::Close(self.close_reason), resumed);
            }
        }
        (sent, outcome, resumed)
    }

    /// WRITABLE arrived: the kernel takes writes again.
    pub(crate) fn unblock(&mut self) {
        self.flags.0 &= !Flags::BLOCKED;
    }

    // ----- Idle time -----

    /// Progress was made (bytes consumed, read with nothing held, written).
    #[inline(always)]
    pub(crate) fn touch(&mut self, now: u64) {
        self.last_active = now;
    }

    /// Sets the idle timeout (ns; 0: none), the clock restarting at `now`.
    pub(crate) fn set_idle(&mut self, idle_ns: u64, now: u64) {
        self.idle_ns = idle_ns;
        self.last_active = now;
    }

    /// At a sweep at `now` with ticks of `tick` ns: true if idle past the
    /// timeout (plus a tick, as stamps lag by up to one). A connection
    /// quiet for two ticks with nothing queued gives its kept buffer back.
    pub(crate) fn sweep(&mut self, now: u64, tick: u64) -> bool {
        let quiet = now.saturating_sub(self.last_active);
        if self.idle_ns != 0 && quiet >= self.idle_ns.saturating_add(tick) {
            return true;
        }
        if quiet >= 2 * tick && self.output.is_empty() && self.output.buf.capacity() != 0 {
            self.output = Output::default();
        }
        false
    }

    // ----- TLS -----

    /// Makes this a TLS connection; what rustls sends first (a client's
    /// ClientHello) is queued.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&mut self, mut tls: Box<crate::tls::TlsConn>) {
        tls.pending(&mut self.output.buf);
        self.tls = Some(tls);
    }

    /// True for a TLS connection.
    #[cfg(feature = "tls")]
    #[inline(always)]
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True for a TLS client connection whose handshake has not completed:
    /// as a connect in progress, it has not opened.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_client_handshaking(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.is_client() && t.is_handshaking())
    }

    /// The TLS session, if this is a TLS connection.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(&self) -> Option<&crate::tls::TlsConn> {
        self.tls.as_deref()
    }

    /// The TLS session, to change.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_mut(&mut self) -> Option<&mut crate::tls::TlsConn> {
        self.tls.as_deref_mut()
    }

    /// True for a TLS connection whose handshake has not completed.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Feeds ciphertext read from the socket to the TLS session: plaintext
    /// joins the held input, rustls's answers the queue. The bool is false
    /// when the held input is past `max`.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_feed(&mut self, cipher: &[u8], max: usize) -> (crate::tls::Fed, bool) {
        let Some(tls) = self.tls.as_mut() else {
            return (crate::tls::Fed::Error, true);
        };
        let fed = tls.feed(cipher, &mut self.input, &mut self.output.buf);
        (fed, self.input.len() <= max)
    }

    /// Encrypts `data` into the queue (a TLS connection's send).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_send(&mut self, data: &[u8]) {
        if let Some(tls) = self.tls.as_mut() {
            tls.encrypt(data, &mut self.output.buf);
        }
    }

    /// The TLS handshake completed: a half-close asked for during it goes
    /// ahead, close_notify first (the flush then shuts the write side).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_opened(&mut self) {
        if self.flags.0 & (Flags::SHUTDOWN | Flags::WRITE_SHUT) == Flags::SHUTDOWN {
            self.tls_close_notify();
        }
    }

    /// Queues close_notify on a TLS connection whose handshake completed
    /// (true if it did).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_close_notify(&mut self) -> bool {
        match self.tls.as_mut() {
            Some(tls) if !tls.is_handshaking() => {
                tls.close_notify(&mut self.output.buf);
                true
            }
            _ => false,
        }
    }

    // ----- The end -----

    /// The socket alone, for a close: what was queued and held is dropped.
    pub(crate) fn into_stream(self) -> Stream {
        self.stream
    }

    /// Takes the connection apart for detach: the socket, the bytes queued
    /// and not sent, and the input held back.
    pub(crate) fn into_parts(self) -> (Stream, Vec<u8>, Vec<u8>) {
        let mut out = self.output;
        out.buf.drain(..out.written);
        (self.stream, out.buf, self.input)
    }
}
