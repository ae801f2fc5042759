//! One load thread: an event loop of client connections that drives an echo
//! server, checks every echoed byte and times every round trip.
//!
//! Each connection's byte stream is a window onto one pseudo-random pattern,
//! starting at an offset of its own (its seed): message bytes are slices of
//! the pattern, so sending allocates nothing, and echoed bytes are checked
//! against the pattern at the offset they should have, however the reads
//! split them. A lost, duplicated, reordered or foreign byte shows up as a
//! mismatch.
//!
//! The firehose (`Plan::firehose`) writes each stream without waiting for
//! replies: a chunk of whole messages at a time, as long as the kernel takes
//! them and at most one chunk waits in the loop's own queue; what comes back
//! is checked the same way, and each message is timed from its chunk's write
//! to the arrival of its last echoed byte.
//!
//! Over TLS (`Plan::tls`, the `tls` feature) each connection is made with
//! `Context::connect_tls`; everything else is the same, on plaintext. The
//! handshake churn (`Plan::handshakes`) connects, counts the handshake
//! (timed from the connect to `on_open`), closes (a close_notify, then the
//! socket) and connects again, sending no data.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use netloop::{CloseReason, Config, ConnId, Context, Endpoint, EventLoop, Handler, TimerId};

/// Length of the repeating pattern: a prime, so that no message size lines a
/// message up with the repetition and a slipped stream fails the check.
pub const PERIOD: usize = 65_521;
/// How often connections are checked for timed-out messages and retried.
const SWEEP: Duration = Duration::from_millis(20);
/// How long a failed connect waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);
/// Firehose: the bytes of one write, rounded down to whole messages (at
/// least one). 64 KiB: large enough to go straight to the socket without a
/// copy into the loop's queue (netloop writes sends of 16 KiB and more
/// directly when nothing is queued).
const CHUNK: usize = 64 * 1024;
/// Firehose: most bytes one connection writes per call of `fill`, so that a
/// fast server cannot keep one connection writing while the others wait;
/// the next arriving echo (or the tick) fills it again.
const FILL_MAX: usize = 1024 * 1024;

/// What every load thread does: read-only, shared.
#[derive(Debug)]
pub struct Plan {
    pub target: Endpoint,  // where to connect
    pub size: usize,       // bytes per message
    pub depth: usize,      // closed loop: messages in flight per connection
    pub rate: Option<f64>, // open loop: messages per second, all threads together
    pub churn: bool,       // connect, one round trip, close, again
    pub firehose: bool,    // write continuously, whatever the replies do
    pub handshakes: bool,  // TLS: connect, handshake, close gracefully, again
    pub timeout: Duration, // a reply (or a connect) later than this is an error
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ClientTls>, // connect with TLS
}

impl Plan {
    fn stream(&self) -> bool {
        self.target.transport.is_stream()
    }

    /// Firehose: bytes per write, whole messages.
    pub fn chunk(&self) -> usize {
        self.size * (CHUNK / self.size).max(1)
    }
}

/// Messages from the main thread into a load thread's loop.
#[derive(Debug)]
pub enum Msg {
    /// Start the schedule at `start`, measure from `measure_at`, stop at `end_at`.
    Begin {
        start: Instant,
        measure_at: Instant,
        end_at: Instant,
    },
}

/// Errors by kind. Every one is counted over the whole run (ramp-up and
/// warmup too), so none is hidden by falling outside the window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Errors {
    pub connect: u64,  // connects refused, failed or timed out
    pub closed: u64,   // connections reset or closed by the server
    pub timeout: u64,  // replies that did not come within --timeout (lost datagrams)
    pub mismatch: u64, // echoed bytes that differ from those sent, or too many
    pub send: u64,     // datagrams the kernel refused
    pub unsent: u64,   // open loop: a message was due but no connection was open
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.closed + self.timeout + self.mismatch + self.send + self.unsent
    }

    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.closed += o.closed;
        self.timeout += o.timeout;
        self.mismatch += o.mismatch;
        self.send += o.send;
        self.unsent += o.unsent;
    }
}

/// What a load thread tells the main thread.
#[derive(Debug)]
pub enum Report {
    /// Every connection of the thread has opened or failed once.
    Ready {
        opened: usize,
        failed: usize,
        error: Option<String>,
    },
    /// One second of the measured window (the last may be shorter).
    Interval(Interval),
    /// The window ended; the thread is stopping.
    Done(Box<Summary>),
}

/// One second of one thread's measurements.
#[derive(Debug)]
pub struct Interval {
    pub index: usize,         // seconds since the window opened
    pub hist: Histogram<u64>, // latencies, nanoseconds
    pub messages: u64,        // round trips completed
    pub bytes: u64,           // echoed bytes received in those round trips
    pub errors: u64,          // errors counted in this second
}

/// A thread's totals, sent once at the end.
#[derive(Debug)]
pub struct Summary {
    pub errors: Errors,    // the whole run
    pub cpu: Duration,     // the thread's CPU time during the window
    pub wall: Duration,    // the window as the thread saw it
    pub sent: u64,         // open loop: messages sent in the window
    pub lag_sum: Duration, // open loop: total lateness of those sends
    pub lag_max: Duration, // open loop: worst lateness
}

/// The histogram every latency goes into: 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The pattern every stream is a window onto: `PERIOD` pseudo-random bytes,
/// followed by its own start again, so that any message is one contiguous slice.
fn pattern(size: usize) -> Box<[u8]> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut p: Vec<u8> = (0..PERIOD)
        .map(|_| {
            // xorshift64*: cheap, and without short cycles.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    for i in 0..size {
        p.push(p[i % PERIOD]);
    }
    p.into_boxed_slice()
}

/// Checks that `data` is what a stream with `seed` holds from `offset` on.
fn matches(pat: &[u8], seed: usize, offset: u64, data: &[u8]) -> bool {
    let mut at = ((seed as u64 + offset) % PERIOD as u64) as usize;
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(pat.len() - at);
        if rest[..n] != pat[at..at + n] {
            return false;
        }
        rest = &rest[n..];
        at = (at + n) % PERIOD;
    }
    true
}

/// A message in flight: when it was (or, open loop, should have been) sent.
#[derive(Debug, Clone, Copy)]
struct Flight {
    at: Instant, // latency is measured from here
    seq: u64,    // datagrams: which message, to match the reply; firehose: the chunk's end offset
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Idle,           // not connected, nothing pending
    Connecting,     // connect started, outcome not yet known
    Open,           // sending and receiving
    Retry(Instant), // connect again at this time
}

/// One client connection as the bench sees it (it outlives the netloop
/// connection: a reconnect reuses the slot).
#[derive(Debug)]
struct Slot {
    id: Option<ConnId>,         // the netloop connection, while there is one
    phase: Phase,               // where the connection is
    seed: usize,                // where in the pattern this stream starts
    sent: u64,                  // streams: bytes sent; datagrams: messages sent
    recvd: u64,                 // streams: bytes received and checked
    inflight: VecDeque<Flight>, // messages (firehose: chunks) awaiting their echo, oldest first
    started: Instant,           // when the current connect began
    progress: Instant,          // firehose: when bytes last came back (or the connection opened)
    settled: bool,              // the first connect has opened or failed
}

/// The window and the figures of the current second.
struct Meter {
    window: Option<(Instant, Instant)>, // measure from, to
    hist: Histogram<u64>,               // this second's latencies
    messages: u64,                      // this second's round trips
    bytes: u64,                         // this second's echoed bytes
    errors: u64,                        // this second's errors
}

impl Meter {
    #[inline]
    fn inside(&self, now: Instant) -> bool {
        matches!(self.window, Some((from, to)) if now >= from && now < to)
    }

    #[inline]
    fn complete(&mut self, now: Instant, at: Instant, size: usize) {
        if self.inside(now) {
            let ns = now.saturating_duration_since(at).as_nanos() as u64;
            self.hist.saturating_record(ns.max(1));
            self.messages += 1;
            self.bytes += size as u64;
        }
    }

    /// Firehose: `n` messages sent at `at` completed now (their bytes are
    /// counted as they arrive, by `echoed`).
    #[inline]
    fn complete_n(&mut self, now: Instant, at: Instant, n: u64) {
        if self.inside(now) {
            let ns = now.saturating_duration_since(at).as_nanos() as u64;
            let _ = self.hist.record_n(ns.max(1), n);
            self.messages += n;
        }
    }

    /// Firehose: `n` echoed bytes arrived now.
    #[inline]
    fn echoed(&mut self, now: Instant, n: usize) {
        if self.inside(now) {
            self.bytes += n as u64;
        }
    }
}

/// The open-loop schedule of this thread: message `n` is due at
/// `start + n * period` and goes to the connections in turn.
struct Schedule {
    start: Instant, // when message 0 was due
    period_ns: f64, // nanoseconds between messages
    next: u64,      // the next message to send
    due: Instant,   // when it is due
    turn: usize,    // the slot that gets it
}

/// The handler of a load thread.
pub struct Client {
    plan: Arc<Plan>,                       // what to do
    rate: Option<f64>,                     // this thread's share of the open-loop rate
    pat: Box<[u8]>,                        // the pattern messages are cut from
    slots: Vec<Slot>,                      // this thread's connections
    owner: Vec<u32>,                       // netloop slot number -> index into `slots`
    tx: mpsc::Sender<Report>,              // to the main thread
    meter: Meter,                          // the current second
    errors: Errors,                        // the whole run
    ready: bool,                           // Ready was sent
    failed: usize,                         // first connects that failed
    first_error: Option<String>,           // why the first of them failed
    sched: Option<Schedule>,               // open loop, once begun
    next_second: Option<(usize, Instant)>, // the second being measured, and its end
    cpu_mark: Option<(Duration, Instant)>, // CPU time and clock when the window opened
    last_sweep: Instant,                   // when timeouts were last checked
    ended: bool,                           // the window is over: closes are no errors
    sent: u64,                             // open loop: sends inside the window
    lag_sum: Duration,                     // open loop: their total lateness
    lag_max: Duration,                     // open loop: the worst
    timer: Option<crate::os::TimerFd>,     // open loop: wakes the loop for the schedule
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Runs one load thread's loop until its window ends. `first` is the global
/// index of its first connection (so seeds differ across threads), `conns`
/// how many it has, `rate` its share of the open-loop rate. The loop's handle
/// goes to `handle_tx` before any connect starts.
pub fn run(
    plan: Arc<Plan>,
    first: usize,
    conns: usize,
    rate: Option<f64>,
    tx: mpsc::Sender<Report>,
    handle_tx: mpsc::Sender<netloop::Handle<Msg>>,
) -> std::io::Result<()> {
    let now = Instant::now();
    let slots = (0..conns)
        .map(|k| Slot {
            id: None,
            phase: Phase::Idle,
            // Spread the streams' starts over the pattern (7,919 is prime, so
            // up to PERIOD connections all start apart).
            seed: ((first + k) * 7_919) % PERIOD,
            sent: 0,
            recvd: 0,
            inflight: VecDeque::with_capacity(plan.depth.max(4)),
            started: now,
            progress: now,
            settled: false,
        })
        .collect();
    let client = Client {
        pat: pattern(if plan.firehose {
            plan.chunk()
        } else {
            plan.size
        }),
        rate,
        slots,
        owner: Vec::new(),
        tx,
        meter: Meter {
            window: None,
            hist: histogram(),
            messages: 0,
            bytes: 0,
            errors: 0,
        },
        errors: Errors::default(),
        ready: false,
        failed: 0,
        first_error: None,
        sched: None,
        next_second: None,
        cpu_mark: None,
        last_sweep: now,
        ended: false,
        sent: 0,
        lag_sum: Duration::ZERO,
        lag_max: Duration::ZERO,
        timer: None,
        plan: plan.clone(),
    };
    let mut config = Config {
        // The bench decides what is too slow (--timeout), not an idle sweep.
        idle_timeout: None,
        // --handshakes: a connection closed gracefully stays in the loop
        // until its close_notify is flushed, while its successor connects.
        max_connections: conns * if plan.handshakes { 2 } else { 1 } + 64,
        events_capacity: 4096,
        ..Config::default()
    };
    if plan.firehose {
        // A writer that never waits for replies must not have its reading
        // paused by its own write queue (both sides would then stop for
        // good); `fill` bounds that queue itself.
        config.high_water = usize::MAX;
    }
    let mut event_loop = EventLoop::with_config(client, config)?;
    let _ = handle_tx.send(event_loop.handle());
    // The tick drives timeouts and the per-second report; the open-loop
    // schedule has a finer timer of its own (armed at Begin).
    event_loop.context().set_interval(Duration::from_millis(10));
    if plan.rate.is_some() {
        crate::os::precise_timers();
        let timer = crate::os::TimerFd::new()?;
        event_loop
            .context()
            .register_fd(timer.dup()?, netloop::Interest::READABLE)?;
        event_loop.handler_mut().timer = Some(timer);
    }
    // All connects start at once: the ramp-up is over when each has opened
    // or failed, before the window (the main thread waits for Ready).
    event_loop.context().set_timer(Duration::ZERO);
    event_loop.run()
}

impl Client {
    /// The slot a netloop id belongs to, if it is that slot's current connection.
    #[inline]
    fn lookup(&self, id: ConnId) -> Option<usize> {
        let i = *self.owner.get(id.slot())? as usize;
        (self.slots.get(i)?.id == Some(id)).then_some(i)
    }

    fn error(&mut self, now: Instant, kind: fn(&mut Errors) -> &mut u64) {
        *kind(&mut self.errors) += 1;
        if self.meter.inside(now) {
            self.meter.errors += 1;
        }
    }

    /// Starts (or restarts) slot `i`'s connection with a fresh stream.
    fn connect(&mut self, cx: &mut Context<'_>, i: usize) {
        let now = cx.now();
        let slot = &mut self.slots[i];
        slot.sent = 0;
        slot.recvd = 0;
        slot.inflight.clear();
        slot.started = Instant::now();
        #[cfg(feature = "tls")]
        let started = match &self.plan.tls {
            Some(tls) => cx.connect_tls(&self.plan.target, tls.config.clone(), &tls.name),
            None => cx.connect(&self.plan.target),
        };
        #[cfg(not(feature = "tls"))]
        let started = cx.connect(&self.plan.target);
        match started {
            Ok(id) => {
                slot.id = Some(id);
                slot.phase = Phase::Connecting;
                if self.owner.len() <= id.slot() {
                    self.owner.resize(id.slot() + 1, u32::MAX);
                }
                self.owner[id.slot()] = i as u32;
            }
            Err(e) => {
                slot.id = None;
                slot.phase = Phase::Retry(now + RETRY);
                self.connect_failed(now, i, &e);
            }
        }
    }

    fn connect_failed(&mut self, now: Instant, i: usize, e: &dyn std::fmt::Display) {
        self.error(now, |e| &mut e.connect);
        let slot = &mut self.slots[i];
        if !slot.settled {
            slot.settled = true;
            self.failed += 1;
            if self.first_error.is_none() {
                self.first_error = Some(e.to_string());
            }
            self.check_ready();
        }
    }

    /// Drops slot `i`'s connection (a reset, so no TIME_WAIT is left behind)
    /// and starts a new one. The old id's `on_close` is then ignored.
    fn replace(&mut self, cx: &mut Context<'_>, i: usize) {
        if let Some(id) = self.slots[i].id.take() {
            let _ = cx.abort(id);
        }
        self.slots[i].phase = Phase::Idle;
        if !self.ended {
            self.connect(cx, i);
        }
    }

    /// Handshake churn: closes slot `i`'s connection gracefully (TLS: a
    /// close_notify, then the socket is closed once that is written) and
    /// starts a new one. The old id's `on_close` is then ignored.
    fn renew(&mut self, cx: &mut Context<'_>, i: usize) {
        if let Some(id) = self.slots[i].id.take() {
            let _ = cx.close(id);
        }
        self.slots[i].phase = Phase::Idle;
        if !self.ended {
            self.connect(cx, i);
        }
    }

    fn check_ready(&mut self) {
        if !self.ready && self.slots.iter().all(|s| s.settled) {
            self.ready = true;
            let _ = self.tx.send(Report::Ready {
                opened: self.slots.len() - self.failed,
                failed: self.failed,
                error: self.first_error.take(),
            });
        }
    }

    /// Sends slot `i`'s next message, timed from `at`. False if it could not.
    #[inline]
    fn send(&mut self, cx: &mut Context<'_>, i: usize, at: Instant) -> bool {
        let size = self.plan.size;
        let stream = self.plan.stream();
        let slot = &mut self.slots[i];
        let Some(id) = slot.id else { return false };
        let offset = if stream {
            slot.sent
        } else {
            slot.sent * size as u64
        };
        let start = ((slot.seed as u64 + offset) % PERIOD as u64) as usize;
        match cx.send(id, &self.pat[start..start + size]) {
            Ok(()) => {
                slot.inflight.push_back(Flight { at, seq: slot.sent });
                slot.sent += if stream { size as u64 } else { 1 };
                true
            }
            Err(_) if stream => {
                // The connection is closing (a full write queue, a reset):
                // its on_close counts the error and reconnects.
                false
            }
            Err(_) => {
                // A datagram the kernel refused; the sweep refills the depth.
                self.error(cx.now(), |e| &mut e.send);
                false
            }
        }
    }

    /// Closed loop: brings slot `i` back to `depth` messages in flight.
    fn refill(&mut self, cx: &mut Context<'_>, i: usize) {
        if self.plan.rate.is_some() || self.plan.churn || self.plan.firehose {
            return;
        }
        let missing = self.plan.depth.saturating_sub(self.slots[i].inflight.len());
        if missing > 0 {
            // The clock now, not the loop's: this message leaves at the end
            // of this turn, not when the turn began.
            let at = Instant::now();
            for _ in 0..missing {
                if !self.send(cx, i, at) {
                    break;
                }
            }
        }
    }

    /// Firehose: writes slot `i`'s stream on, a chunk at a time, while the
    /// kernel takes it all (nothing stays queued in the loop), at most
    /// `FILL_MAX` bytes per call. A chunk the kernel took only in part leaves
    /// the rest queued: the loop writes it once the socket is writable, and
    /// `on_drain` calls this again.
    fn fill(&mut self, cx: &mut Context<'_>, i: usize) {
        let chunk = self.plan.chunk();
        let slot = &mut self.slots[i];
        let Some(id) = slot.id else { return };
        if slot.phase != Phase::Open {
            return;
        }
        let mut written = 0;
        while written < FILL_MAX && matches!(cx.queued(id), Ok(0)) {
            let start = ((slot.seed as u64 + slot.sent) % PERIOD as u64) as usize;
            if cx.send(id, &self.pat[start..start + chunk]).is_err() {
                // Closing (a reset): its on_close counts it and reconnects.
                return;
            }
            slot.sent += chunk as u64;
            // The clock now: the chunk went to the kernel (or the queue) now.
            slot.inflight.push_back(Flight {
                at: Instant::now(),
                seq: slot.sent,
            });
            written += chunk;
        }
    }

    /// Firehose: `data` (offset `slot.recvd` of slot `i`'s stream) checked
    /// and counted: the messages it completes are timed from their chunk's
    /// write. False if the stream is out of step.
    fn firehose_data(&mut self, now: Instant, i: usize, data: &[u8]) -> bool {
        let size = self.plan.size as u64;
        let slot = &mut self.slots[i];
        let end = slot.recvd + data.len() as u64;
        if end > slot.sent || !matches(&self.pat, slot.seed, slot.recvd, data) {
            return false;
        }
        self.meter.echoed(now, data.len());
        let (mut done, last) = (slot.recvd / size, end / size);
        slot.recvd = end;
        slot.progress = now;
        // Each message belongs to the chunk holding its last byte.
        while let Some(f) = slot.inflight.front().copied() {
            let upto = last.min(f.seq / size);
            if upto > done {
                self.meter.complete_n(now, f.at, upto - done);
                done = upto;
            }
            if f.seq > end {
                break;
            }
            slot.inflight.pop_front();
        }
        true
    }

    /// Open loop: sends every message that is due, each timed from when it
    /// was due, not from when it went out (coordinated omission).
    #[inline]
    fn pump(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        let Some(s) = &self.sched else { return };
        if s.due > now || self.ended {
            return;
        }
        let n = self.slots.len();
        loop {
            let s = self.sched.as_mut().expect("checked above");
            let due = s.due;
            if due > now {
                break;
            }
            s.next += 1;
            s.due = s.start + Duration::from_nanos((s.next as f64 * s.period_ns) as u64);
            // The connection whose turn it is, or the next open one.
            let mut target = None;
            for k in 0..n {
                let i = (s.turn + k) % n;
                if self.slots[i].phase == Phase::Open {
                    target = Some(i);
                    break;
                }
            }
            s.turn = (s.turn + 1) % n.max(1);
            let sent = target.is_some_and(|i| self.send(cx, i, due));
            if !sent {
                self.error(now, |e| &mut e.unsent);
            } else if self.meter.inside(now) {
                let lag = now.saturating_duration_since(due);
                self.sent += 1;
                self.lag_sum += lag;
                self.lag_max = self.lag_max.max(lag);
            }
        }
    }

    /// Counts overdue replies and connects as errors; retries failed connects.
    fn sweep(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        let timeout = self.plan.timeout;
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            match slot.phase {
                Phase::Retry(at) if now >= at => self.connect(cx, i),
                Phase::Connecting if now.saturating_duration_since(slot.started) > timeout => {
                    self.connect_failed(now, i, &"connect timed out");
                    self.replace(cx, i);
                }
                Phase::Open if self.plan.firehose => {
                    // Stuck: bytes owed and none back for --timeout. (A
                    // chunk's age is no measure: it queues behind the
                    // kernel's buffers, however full.)
                    if slot.recvd < slot.sent
                        && now.saturating_duration_since(slot.progress) > timeout
                    {
                        self.error(now, |e| &mut e.timeout);
                        self.replace(cx, i);
                    } else {
                        self.fill(cx, i);
                    }
                }
                Phase::Open => {
                    let overdue = |f: &Flight| now.saturating_duration_since(f.at) > timeout;
                    if !slot.inflight.front().is_some_and(overdue) {
                        continue;
                    }
                    if self.plan.stream() {
                        // A stream that owes a reply this late is stuck: a
                        // late echo would be timed against the wrong message.
                        self.error(now, |e| &mut e.timeout);
                        self.replace(cx, i);
                    } else {
                        // A lost datagram: give up on it and go on.
                        while self.slots[i].inflight.front().is_some_and(overdue) {
                            self.slots[i].inflight.pop_front();
                            self.error(now, |e| &mut e.timeout);
                        }
                        self.refill(cx, i);
                    }
                }
                _ => {}
            }
        }
    }

    fn on_tick(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        if let Some((from, to)) = self.meter.window {
            if self.cpu_mark.is_none() && now >= from {
                self.cpu_mark = Some((crate::os::thread_cpu(), now));
                self.next_second = Some((0, from + Duration::from_secs(1)));
            }
            while let Some((index, end)) = self.next_second {
                if now < end || end >= to {
                    break;
                }
                self.report_second(index);
                self.next_second = Some((index + 1, end + Duration::from_secs(1)));
            }
            if now >= to && !self.ended {
                self.finish(cx);
                return;
            }
        }
        self.pump(cx);
        if now.saturating_duration_since(self.last_sweep) >= SWEEP {
            self.last_sweep = now;
            self.sweep(cx);
        }
    }

    fn report_second(&mut self, index: usize) {
        let hist = std::mem::replace(&mut self.meter.hist, histogram());
        let _ = self.tx.send(Report::Interval(Interval {
            index,
            hist,
            messages: std::mem::take(&mut self.meter.messages),
            bytes: std::mem::take(&mut self.meter.bytes),
            errors: std::mem::take(&mut self.meter.errors),
        }));
    }

    /// The window is over: report the last (partial) second and the totals,
    /// reset every connection and stop the loop.
    fn finish(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        self.ended = true;
        let (cpu, wall) = match self.cpu_mark {
            Some((cpu, at)) => (
                crate::os::thread_cpu().saturating_sub(cpu),
                now.saturating_duration_since(at),
            ),
            None => (Duration::ZERO, Duration::ZERO),
        };
        if let Some((index, _)) = self.next_second {
            self.report_second(index);
        }
        let _ = self.tx.send(Report::Done(Box::new(Summary {
            errors: self.errors,
            cpu,
            wall,
            sent: self.sent,
            lag_sum: self.lag_sum,
            lag_max: self.lag_max,
        })));
        for i in 0..self.slots.len() {
            if let Some(id) = self.slots[i].id.take() {
                let _ = cx.abort(id);
            }
        }
        cx.stop();
    }
}

impl Handler for Client {
    type Conn = ();
    type Msg = Msg;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        let Some(i) = self.lookup(id) else { return };
        let slot = &mut self.slots[i];
        slot.phase = Phase::Open;
        if !slot.settled {
            slot.settled = true;
            self.check_ready();
        }
        if self.plan.handshakes {
            // The handshake is the measure: timed from the connect (TCP's
            // and TLS's handshakes together), no data; then the next.
            let (now, at) = (cx.now(), self.slots[i].started);
            self.meter.complete(now, at, 0);
            self.renew(cx, i);
        } else if self.plan.churn {
            // Timed from the connect: a churn round trip includes the handshake.
            let at = self.slots[i].started;
            self.send(cx, i, at);
        } else if self.plan.firehose {
            self.slots[i].progress = Instant::now();
            self.fill(cx, i);
        } else {
            self.refill(cx, i);
        }
    }

    fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        if self.plan.firehose && !self.ended {
            if let Some(i) = self.lookup(id) {
                self.fill(cx, i);
            }
        }
    }

    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: Self::Conn,
        err: std::io::Error,
    ) {
        let Some(i) = self.lookup(id) else { return };
        let now = cx.now();
        self.slots[i].id = None;
        self.slots[i].phase = Phase::Retry(now + RETRY);
        self.connect_failed(now, i, &err);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let Some(i) = self.lookup(id) else {
            return data.len();
        };
        let now = cx.now();
        if self.plan.firehose {
            if self.firehose_data(now, i, data) {
                self.fill(cx, i);
            } else {
                self.error(now, |e| &mut e.mismatch);
                self.replace(cx, i);
            }
            return data.len();
        }
        let size = self.plan.size as u64;
        let slot = &mut self.slots[i];
        let end = slot.recvd + data.len() as u64;
        if end > slot.sent || !matches(&self.pat, slot.seed, slot.recvd, data) {
            // More than was sent, or other bytes: the stream is out of step.
            self.error(now, |e| &mut e.mismatch);
            self.replace(cx, i);
            return data.len();
        }
        let done = end / size - slot.recvd / size;
        slot.recvd = end;
        for _ in 0..done {
            if let Some(f) = slot.inflight.pop_front() {
                self.meter.complete(now, f.at, self.plan.size);
            }
        }
        if done > 0 {
            if self.plan.churn {
                // The one round trip is done: close, and start the next.
                self.replace(cx, i);
            } else {
                self.refill(cx, i);
            }
        }
        self.pump(cx);
        data.len()
    }

    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
        _from: &netloop::Addr,
    ) {
        let Some(i) = self.lookup(id) else { return };
        let now = cx.now();
        let size = self.plan.size;
        let slot = &self.slots[i];
        // The reply is normally the oldest in flight; if an older one was
        // lost, it is a later one.
        let found = if data.len() == size {
            slot.inflight
                .iter()
                .position(|f| matches(&self.pat, slot.seed, f.seq * size as u64, data))
        } else {
            None
        };
        let Some(j) = found else {
            // Not anything in flight: corrupt, foreign, or an echo that came
            // after its timeout (then counted twice, as both).
            self.error(now, |e| &mut e.mismatch);
            return;
        };
        for _ in 0..j {
            // Overtaken by a later reply: lost.
            self.slots[i].inflight.pop_front();
            self.error(now, |e| &mut e.timeout);
        }
        if let Some(f) = self.slots[i].inflight.pop_front() {
            self.meter.complete(now, f.at, size);
        }
        if self.plan.churn {
            // The one round trip is done: close, and start the next.
            self.replace(cx, i);
        } else {
            self.refill(cx, i);
        }
        self.pump(cx);
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        let Some(i) = self.lookup(id) else { return };
        if self.ended {
            return;
        }
        log::debug!("connection {i} closed: {reason:?}");
        if self.slots[i].phase == Phase::Connecting {
            // A TLS connection closed in its handshake (CloseReason::Tls):
            // it never opened, so this is a failed connect, retried later.
            let now = cx.now();
            self.slots[i].id = None;
            self.slots[i].phase = Phase::Retry(now + RETRY);
            self.connect_failed(
                now,
                i,
                &format!(
                    "the TLS handshake failed ({reason:?}): a certificate that --tls-ca does not \
                     trust or that is not valid for --tls-name, or a server that does not speak \
                     TLS (RUST_LOG=netloop=debug shows rustls's reason)"
                ),
            );
            return;
        }
        self.error(cx.now(), |e| &mut e.closed);
        self.slots[i].id = None;
        self.replace(cx, i);
    }

    fn on_error(&mut self, cx: &mut Context<'_>, id: ConnId, err: std::io::Error) {
        // ICMP port unreachable and the like on a datagram socket.
        log::debug!("socket {id}: {err}");
        self.error(cx.now(), |e| &mut e.send);
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, _: TimerId) {
        if !self.ready && self.slots.iter().all(|s| s.phase == Phase::Idle) {
            for i in 0..self.slots.len() {
                self.connect(cx, i);
            }
            self.check_ready();
        }
        self.on_tick(cx);
    }

    fn on_fd_ready(&mut self, cx: &mut Context<'_>, _: ConnId, _: netloop::Ready) {
        if let Some(t) = &self.timer {
            t.drain();
        }
        self.pump(cx);
    }

    fn on_message(&mut self, cx: &mut Context<'_>, msg: Msg) {
        let Msg::Begin {
            start,
            measure_at,
            end_at,
        } = msg;
        self.meter.window = Some((measure_at, end_at));
        if let Some(rate) = self.rate {
            // Wake once per message, but not more often than every 100 us:
            // at higher rates several go per wake-up, which costs up to 100 us
            // of lateness (reported) but halves the generator's CPU use.
            let period = Duration::from_secs_f64(1.0 / rate)
                .clamp(Duration::from_micros(100), Duration::from_millis(1));
            if let Some(Err(e)) = self.timer.as_ref().map(|t| t.every(period)) {
                log::warn!(
                    "arming the schedule timer: {e}; the schedule falls back to the 10 ms tick"
                );
            }
            self.sched = Some(Schedule {
                start,
                period_ns: 1e9 / rate,
                next: 0,
                due: start,
                turn: 0,
            });
        }
        self.pump(cx);
    }
}
