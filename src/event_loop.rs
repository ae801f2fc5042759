//! The event loop: polls, dispatches readiness to the handler, flushes.
//!
//! One turn of the loop:
//! 1. deliver notices left by code that ran outside a callback;
//! 2. flush every connection with queued output, one `send` each (Redis's
//!    before-sleep write: replies produced in one turn go out together);
//! 3. poll, with a zero timeout while the ready list is not empty, else
//!    until the next timer;
//! 4. dispatch each event (messages from other threads and due timers
//!    arrive as events too); serve the ready list.
//!
//! A turn that leaves nothing queued, ready or to tell, with no stop under
//! way, is "quiet": the next turn skips 1 and 2 after one test. A reply
//! that is a slice of the input just read goes out straight from the read
//! buffer when `on_data` returns (`Core::send`), so an echo-like turn is a
//! poll, a read, a write and a handful of tests.
//!
//! **Edge-triggered readiness and budgets.** mio reports a socket once per
//! change, so every read, accept and write loop runs until `WouldBlock`, or
//! until a per-turn budget runs out. A socket cut off by its budget goes on
//! the ready list, served in the next turn before the loop may block:
//! without it, bytes already in the kernel would wait for an edge that never
//! comes. A read shorter than the buffer is taken as draining the socket
//! (when the peer has not hung up): data arriving later raises a new edge.
//!
//! **Stale events and deferred removal.** Tokens carry the slot's
//! generation, so an event for a socket closed earlier in the same batch
//! (whose slot may already be reused) is dropped. A socket closed inside a
//! callback leaves a tombstone; its slot is freed, and `on_close` called,
//! only after the callback returns.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use std::os::fd::AsRawFd;

use mio::{Poll, Token};

use crate::clock;
use crate::core::{
    Core, Entry, Kind, Notice, BLOCKED, CLOSING, CONNECTING, COUNTED, EOF, PAUSED, READY, SHUTDOWN,
    STOPPING, STOP_ASKED, STOP_NOW, WRITE_SHUT,
};
use crate::remote::Shared;
use crate::sock::{self, Stream};
use crate::timer::TimerKind;
use crate::{
    CloseReason, Config, ConnId, Context, Handle, Handler, ListenOptions, Ready, Stats, ToEndpoint,
};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
pub(crate) const TIMER: Token = Token(usize::MAX - 2);
/// The loop's one read buffer: big enough for any UDP datagram.
const READ_BUF: usize = 64 * 1024;
/// Messages from other threads handled per turn, so a flood of them cannot
/// starve sockets.
const MESSAGE_BUDGET: usize = 4096;
/// Datagrams read from one socket per turn.
const DATAGRAM_BUDGET: usize = 64;

/// A single-threaded event loop: one `mio::Poll`, the sockets it owns, and
/// the handler it dispatches to.
///
/// # Examples
/// An echo server on an ephemeral port, stopped by a timer:
/// ```
/// use std::time::Duration;
/// use netloop::{ConnId, Context, EventLoop, Handler, TimerId};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Conn = ();
///     type Msg = ();
///     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
///         let _ = cx.send(id, data);
///         data.len()
///     }
///     fn on_timer(&mut self, cx: &mut Context<'_>, _: TimerId) {
///         cx.stop();
///     }
/// }
///
/// let mut event_loop = EventLoop::new(Echo)?;
/// let listener = event_loop.listen("tcp://127.0.0.1:0")?;
/// let addr = event_loop.context().local_addr(listener)?;
/// event_loop.context().set_timer(Duration::from_millis(10));
/// event_loop.run()?;
/// # let _ = addr;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct EventLoop<H: Handler> {
    core: Core,                     // the sockets, timers and limits callbacks reach
    handler: H,                     // the user's handler
    events: Vec<libc::epoll_event>, // readiness from the last poll, straight from epoll_wait
    cursor: usize,                  // the next entry of `events` to serve
    ready_work: Vec<ConnId>,        // the ready list being served this turn
    flush_work: Vec<ConnId>,        // the pending list being flushed this turn
    states: Vec<Option<H::Conn>>,   // per-connection state, by slot
    rbuf: Box<[u8]>,                // the one read buffer
    rx: mpsc::Receiver<H::Msg>,     // messages from handles
    tx: mpsc::Sender<H::Msg>,       // cloned into handles
    signals: Option<signal_hook_mio::v1_0::Signals>, // SIGINT/SIGTERM, once asked for
    scratch: Vec<ConnId>,           // reused id lists
    blame: u64, // the connection the running callback is about (ConnId::as_u64; 0: none)
}

/// Flags that stop the read loop.
const IN_LOOP: u16 = EOF | PAUSED | CLOSING | CONNECTING;
/// The same on entry from an event, plus BLOCKED (the slow path's).
const FROM_EVENT: u16 = IN_LOOP | BLOCKED;

// Readiness bits, as mio's `Event` reads an epoll mask.
const READ: u8 = 1;
const WRITE: u8 = 2;
const HUP: u8 = 4;

const EP_IN: u32 = libc::EPOLLIN as u32;
const EP_PRI: u32 = libc::EPOLLPRI as u32;
const EP_OUT: u32 = libc::EPOLLOUT as u32;
const EP_ERR: u32 = libc::EPOLLERR as u32;
const EP_HUP: u32 = libc::EPOLLHUP as u32;
const EP_RDHUP: u32 = libc::EPOLLRDHUP as u32;

/// Readable, for an epoll event mask, as mio reads it (readable or read
/// closed or error).
#[inline(always)]
fn readable(ev: u32) -> bool {
    ev & (EP_IN | EP_PRI | EP_ERR | EP_HUP) != 0
}

/// Hung up: read closed (EPOLLHUP, or EPOLLIN with EPOLLRDHUP) or error.
#[inline(always)]
fn hung_up(ev: u32) -> bool {
    // One test in the common case: none of the three bits set.
    ev & (EP_ERR | EP_HUP | EP_RDHUP) != 0
        && (ev & (EP_ERR | EP_HUP) != 0 || ev & (EP_IN | EP_RDHUP) == EP_IN | EP_RDHUP)
}

/// `hung_up` kept out of the read loop: called only when a hang-up bit is set.
#[cold]
#[inline(never)]
fn hung_up_rare(ev: u32) -> bool {
    hung_up(ev)
}

/// READ|WRITE|HUP from an epoll event mask, with mio's meaning: readable is
/// EPOLLIN or EPOLLPRI; read-closed is EPOLLHUP, or EPOLLIN with EPOLLRDHUP;
/// an error (EPOLLERR) counts as all three.
#[inline]
fn bits_of(ev: u32) -> u8 {
    let mut bits = 0;
    if readable(ev) {
        bits |= READ;
    }
    if ev & (EP_OUT | EP_ERR) != 0 {
        bits |= WRITE;
    }
    if hung_up(ev) {
        bits |= HUP;
    }
    bits
}

impl<H: Handler> std::fmt::Debug for EventLoop<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("sockets", &self.core.entries.len())
            .field("stats", &self.core.stats)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> EventLoop<H> {
    /// A loop with the default [`Config`].
    ///
    /// # Errors
    /// The OS error from creating the poll or its waker.
    pub fn new(handler: H) -> io::Result<EventLoop<H>> {
        EventLoop::with_config(handler, Config::default())
    }

    /// A loop with the given limits.
    ///
    /// # Errors
    /// The OS error from creating the poll or its waker.
    pub fn with_config(handler: H, config: Config) -> io::Result<EventLoop<H>> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            waker,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let events = Vec::with_capacity(config.events_capacity.clamp(1, 1 << 20));
        let rbuf = vec![0; READ_BUF].into_boxed_slice();
        let mut core = Core::new(poll, config, shared)?;
        core.rbuf_at = rbuf.as_ptr() as usize;
        core.rbuf_len = rbuf.len();
        Ok(EventLoop {
            core,
            handler,
            events,
            cursor: 0,
            ready_work: Vec::new(),
            flush_work: Vec::new(),
            states: Vec::new(),
            rbuf,
            rx,
            tx,
            signals: None,
            scratch: Vec::new(),
            blame: 0,
        })
    }

    /// A context for acting on the loop outside a callback: before `run`, or
    /// between calls to `run_once`.
    pub fn context(&mut self) -> Context<'_> {
        Context {
            core: &mut self.core,
        }
    }

    /// Listens on an address string; see [`Context::listen`].
    ///
    /// # Errors
    /// As [`Context::listen`].
    pub fn listen(&mut self, addr: impl ToEndpoint) -> io::Result<ConnId> {
        self.context().listen(addr)
    }

    /// Listens with options; see [`Context::listen_with`].
    ///
    /// # Errors
    /// As [`Context::listen`].
    pub fn listen_with(
        &mut self,
        addr: impl ToEndpoint,
        opts: &ListenOptions,
    ) -> io::Result<ConnId> {
        self.context().listen_with(addr, opts)
    }

    /// Starts a connection; see [`Context::connect`].
    ///
    /// # Errors
    /// As [`Context::connect`].
    pub fn connect(&mut self, addr: impl ToEndpoint) -> io::Result<ConnId> {
        self.context().connect(addr)
    }

    /// A handle for other threads: messages and stop.
    pub fn handle(&self) -> Handle<H::Msg> {
        Handle {
            tx: self.tx.clone(),
            shared: self.core.shared.clone(),
        }
    }

    /// Stops gracefully on SIGINT or SIGTERM; a second one stops at once
    /// (connections are reset, `run` returns). Installs the signal handlers
    /// (through signal-hook), so the signals no longer kill the process.
    ///
    /// # Errors
    /// The OS error from installing the handlers.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if self.signals.is_none() {
            let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
            self.core
                .poll
                .registry()
                .register(&mut signals, SIGNALS, mio::Interest::READABLE)?;
            self.signals = Some(signals);
        }
        Ok(())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The handler and a context at once, for set-up that needs both.
    pub fn parts(&mut self) -> (&mut H, Context<'_>) {
        (
            &mut self.handler,
            Context {
                core: &mut self.core,
            },
        )
    }

    /// Consumes the loop, returning the handler.
    pub fn into_handler(self) -> H {
        self.handler
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Runs until stopped (by [`Context::stop`], [`Handle::stop`] or a
    /// signal) and the stop has finished.
    ///
    /// # Errors
    /// The OS error if polling fails; socket errors go to the handler.
    pub fn run(&mut self) -> io::Result<()> {
        // `run_once` in a loop, under one `catch_unwind` for the whole run
        // rather than one per turn. After a panic the closure runs again and
        // first finishes the interrupted turn: each phase kept its place in
        // `self`. (A panic before the poll, in `before_sleep`, finds no
        // events left to serve; the turn then finishes that `before_sleep`.)
        let mut out = Ok(false);
        let mut resumed = false;
        self.guarded_mut(|me| {
            // `quiet`: the last turn left nothing queued and no stop under
            // way, so the next poll needs no checks first.
            let mut quiet = false;
            if resumed {
                me.turn();
            }
            resumed = true;
            loop {
                match me.before_poll::<false>(None, quiet) {
                    Ok(true) => quiet = me.turn(),
                    done => {
                        out = done;
                        return;
                    }
                }
            }
        });
        out?; // the loop ends with a stop due (false) or an error
        self.finish_stop();
        Ok(())
    }

    /// One turn of the loop, waiting at most `timeout` for readiness (`None`:
    /// until the next timer or event), for embedding in another loop.
    /// Returns false once a stop has finished.
    ///
    /// # Errors
    /// The OS error if polling fails.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if !self.before_poll::<true>(timeout, false)? {
            self.finish_stop();
            return Ok(false);
        }
        self.guarded(|me| {
            me.turn();
        });
        Ok(true)
    }

    /// Up to and including the poll: work queued since the last turn (under
    /// its own `catch_unwind` when `GUARD`), the stop check (false: the stop
    /// is due, `finish_stop` is the caller's), the timer, `epoll_wait`.
    #[inline(always)]
    fn before_poll<const GUARD: bool>(
        &mut self,
        timeout: Option<Duration>,
        quiet: bool,
    ) -> io::Result<bool> {
        if !quiet {
            return self.before_poll_slow::<GUARD>(timeout);
        }
        // Timers wake the poll through the timerfd: no timeout to compute.
        self.core.timerfd.arm(self.core.timers.peek());
        self.poll(timeout)
    }

    /// `before_poll` with work queued or a stop under way.
    #[cold]
    #[inline(never)]
    fn before_poll_slow<const GUARD: bool>(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        // Work queued from outside a callback (before `run`, or between
        // calls to `run_once`), or by `on_drain` in the last flush.
        let queued = !self.core.pending.is_empty() || !self.core.notices.is_empty();
        if queued {
            if GUARD {
                self.guarded(Self::before_sleep);
            } else {
                self.before_sleep();
            }
        }
        if self.core.stop & STOP_NOW != 0 || self.stop_finished() {
            return Ok(false);
        }
        self.core.timerfd.arm(self.core.timers.peek());
        let mut wait = timeout;
        if !self.core.ready.is_empty()
            || !self.core.pending.is_empty()
            || !self.core.notices.is_empty()
        {
            wait = Some(Duration::ZERO);
        }
        self.poll(wait)
    }

    #[inline(always)]
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.core.stats.polls += 1;
        self.epoll_wait(timeout)?;
        self.cursor = 0;
        Ok(true)
    }

    /// Polls into `events`: epoll_wait on mio's epoll fd directly, as mio
    /// would (same timeout rounding), without copying into mio's `Events`.
    #[inline(always)]
    fn epoll_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            Some(to) => to
                .checked_add(Duration::from_nanos(999_999))
                .unwrap_or(to)
                .as_millis()
                .min(libc::c_int::MAX as u128) as libc::c_int,
        };
        self.events.clear();
        // SAFETY: the buffer has room for `capacity` events, the count passed;
        // epoll_wait initialises the first `n` of them.
        let n = unsafe {
            libc::epoll_wait(
                self.core.poll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.capacity() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            // SAFETY: epoll_wait wrote `n` (<= capacity) events.
            unsafe { self.events.set_len(n as usize) };
        }
        Ok(())
    }

    /// Everything between two polls. Returns true when the turn left
    /// nothing to do before the next poll may block (see `before_poll`).
    #[inline(always)]
    fn turn(&mut self) -> bool {
        self.process();
        // One test for the common case of an echo-like turn: nothing ready,
        // queued or to tell, no stop asked for.
        let core = &self.core;
        if (self.ready_work.len()
            | core.ready.len()
            | core.pending.len()
            | core.notices.len()
            | self.flush_work.len()
            | core.stop as usize)
            == 0
        {
            return true;
        }
        self.finish_turn()
    }

    /// The rest of a turn with work left after the events: the ready list,
    /// a stop asked for, then the before-sleep flush.
    #[inline(never)]
    fn finish_turn(&mut self) -> bool {
        if (self.ready_work.len() | self.core.ready.len()) != 0 {
            self.serve_ready();
        }
        if self.core.stop & (STOP_ASKED | STOPPING) == STOP_ASKED {
            self.begin_stop();
        }
        self.before_sleep();
        false
    }

    /// Runs `f`, catching a panic from a callback when so configured: the
    /// connection being served is closed with [`CloseReason::Panic`], and `f`
    /// runs again to finish its work (each phase keeps its place in `self`,
    /// so nothing is served twice or skipped). One `catch_unwind` per phase
    /// per turn (per run under `run`), not per callback.
    fn guarded(&mut self, f: impl Fn(&mut Self)) {
        self.guarded_mut(f);
    }

    /// `guarded` for a closure with state of its own.
    fn guarded_mut(&mut self, mut f: impl FnMut(&mut Self)) {
        if !self.core.config.catch_panics {
            f(self);
            return;
        }
        while let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&mut *self))) {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            self.core.stats.panics += 1;
            // A send deferred by the interrupted `on_data` goes with its
            // connection, which is closed below.
            self.core.hot = 0;
            self.core.deferred_len = 0;
            // A panic in `on_message` cuts its drain short: messages queued
            // behind it may have no wake on its way. One more wake (unless
            // one is already coming) makes the loop look again.
            self.core.shared.wake();
            let blame = std::mem::take(&mut self.blame);
            match (blame != 0).then(|| ConnId::from_u64(blame)) {
                Some(id) => {
                    log::error!("panic in a callback for {id}: {msg}; closing it");
                    self.core.close(id, CloseReason::Panic, true);
                }
                None => log::error!("panic in a callback: {msg}"),
            }
        }
        self.blame = 0;
    }

    /// Before the loop may sleep: tell the handler what is pending, then write
    /// every connection's queue (Redis's before-sleep write).
    #[inline(always)]
    fn before_sleep(&mut self) {
        self.dispatch_notices();
        if self.flush_work.is_empty() {
            if self.core.pending.is_empty() {
                return;
            }
            std::mem::swap(&mut self.flush_work, &mut self.core.pending);
        }
        while let Some(id) = self.flush_work.pop() {
            self.flush_one(id);
        }
    }

    /// Writes one connection's queue; `on_drain` when it empties. What
    /// `on_drain` queues waits for the next turn, whose poll will not block.
    #[inline(always)]
    fn flush_one(&mut self, id: ConnId) {
        if self.core.write_conn(id) {
            self.blame = id.as_u64();
            let state = state_of(&mut self.states, id);
            let mut cx = Context {
                core: &mut self.core,
            };
            self.handler.on_drain(&mut cx, id, state);
        }
        self.dispatch_notices();
    }

    /// After polling: every event (sockets, the waker's messages and
    /// stops, the timerfd's due timers).
    #[inline(always)]
    fn process(&mut self) {
        // (No notices are waiting: the last `before_sleep`, or `before_poll`,
        // delivered them, and nothing has run since.)
        while let Some(&ev) = self.events.get(self.cursor) {
            self.cursor += 1;
            self.core.stats.events += 1;
            let token = ev.u64 as usize;
            if token < TIMER.0 {
                self.on_event(ConnId::from_token(Token(token)), ev.events);
                continue;
            }
            match Token(token) {
                // Every `Handle` call that finds no wake on its way sends one.
                WAKER => self.drain_messages(),
                SIGNALS => self.on_signal(),
                _ => {
                    self.core.timerfd.clear();
                    self.core.now = clock::now();
                    self.fire_timers();
                }
            }
        }
    }

    /// The ready list: sockets cut off by a budget, or resumed.
    #[inline(never)]
    fn serve_ready(&mut self) {
        if self.ready_work.is_empty() {
            std::mem::swap(&mut self.ready_work, &mut self.core.ready);
        }
        while let Some(id) = self.ready_work.pop() {
            self.on_ready(id);
        }
    }

    /// An event for a socket: a stream connection's goes straight into the
    /// read loop, whose first slab lookup serves as the event's.
    #[inline(always)]
    fn on_event(&mut self, id: ConnId, ev: u32) {
        self.read_conn(id, ev, FROM_EVENT);
    }

    /// An event for a socket other than an open stream connection.
    #[inline(never)]
    fn on_other_event(&mut self, id: ConnId, ev: u32) {
        let bits = bits_of(ev);
        let Some(entry) = self.core.entries.get_mut(id.key as usize) else {
            return;
        };
        if entry.gen != id.gen {
            return; // a late event for a slot that was closed (and maybe reused)
        }
        match &mut entry.kind {
            Kind::Conn(_) => {}
            Kind::Listener { .. } => self.accept(id),
            Kind::Dgram(d) => {
                if bits & WRITE != 0 && d.blocked {
                    self.core.flush_dgram(id);
                }
                if bits & READ != 0 {
                    self.read_dgram(id);
                }
            }
            Kind::Fd(_) => {
                let ready = Ready {
                    readable: bits & READ != 0,
                    writable: bits & WRITE != 0,
                    closed: bits & HUP != 0,
                };
                let mut cx = Context {
                    core: &mut self.core,
                };
                self.handler.on_fd_ready(&mut cx, id, ready);
                self.dispatch_notices();
            }
            Kind::Closed => {}
        }
    }

    /// A connection still connecting, or waiting for WRITABLE.
    #[cold]
    fn conn_event_slow(&mut self, id: ConnId, ev: u32) {
        let bits = bits_of(ev);
        let Some(c) = self.core.conn(id) else { return };
        if c.flags & CONNECTING != 0 {
            self.finish_connect(id);
            return;
        }
        if bits & WRITE != 0 {
            c.flags &= !BLOCKED;
            self.core.mark_pending(id);
        }
        self.read_conn(id, ev, IN_LOOP);
    }

    fn on_ready(&mut self, id: ConnId) {
        match self.core.entries.get_mut(id.key as usize) {
            Some(Entry { gen, kind }) if *gen == id.gen => match kind {
                Kind::Conn(c) => {
                    c.flags &= !READY;
                    self.read_conn(id, EP_IN, IN_LOOP);
                }
                Kind::Listener { paused, .. } => {
                    *paused = false; // back from EMFILE backoff, or cut off by its budget
                    self.accept(id);
                }
                Kind::Dgram(_) => self.read_dgram(id),
                _ => {}
            },
            _ => {}
        }
    }

    /// Reads until `WouldBlock`, a short read, end of file, or the budget.
    ///
    /// `mask` holds the flags that stop reading: [`FROM_EVENT`] when called
    /// for an event (then a socket that is not an open stream goes to
    /// `on_other_event`, and one connecting or blocked to `conn_event_slow`),
    /// [`IN_LOOP`] otherwise.
    #[inline(always)]
    fn read_conn(&mut self, id: ConnId, ev: u32, mut mask: u16) {
        let mut budget = self.core.config.read_budget;
        loop {
            let now = self.core.now;
            let Some(c) = crate::core::conn_in(&mut self.core.entries, id) else {
                if mask == FROM_EVENT {
                    self.on_other_event(id, ev);
                }
                return;
            };
            if c.flags & mask != 0 || !readable(ev) {
                if mask == FROM_EVENT && c.flags & (CONNECTING | BLOCKED) != 0 {
                    self.conn_event_slow(id, ev);
                }
                return;
            }
            mask = IN_LOOP;
            self.blame = id.as_u64();
            let n = match c.stream.read(&mut self.rbuf) {
                Ok(n) if n > 0 => n,
                Ok(_) => return self.on_eof(id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.on_read_error(id, e),
            };
            self.core.stats.bytes_read += n as u64;
            if c.input.is_empty() {
                // The common case: offer straight from the loop's buffer.
                // Reading with nothing held back counts as progress for the
                // idle timeout; bytes that never complete a message do not.
                c.last_active = now;
                // With nothing queued and the write side open, the first
                // send of a slice of `rbuf` is written from `rbuf` itself
                // when on_data returns (`Core::send`).
                let fd = c.stream.fd();
                self.core.hot = if c.output.is_empty() && c.flags & (SHUTDOWN | WRITE_SHUT) == 0 {
                    id.as_u64()
                } else {
                    0
                };
                let state = state_of(&mut self.states, id);
                let mut cx = Context {
                    core: &mut self.core,
                };
                let used = self.handler.on_data(&mut cx, id, state, &self.rbuf[..n]);
                self.core.hot = 0;
                if self.core.deferred_len != 0 {
                    self.write_deferred(id, fd);
                }
                if used < n {
                    self.keep_input(id, used, n);
                }
            } else {
                self.deliver_buffered(id, n);
            }
            self.dispatch_notices();
            // A short read ends the loop unless the peer hung up (then the
            // next read meets end of file now, not after another poll).
            if n < self.rbuf.len() && (ev & (EP_ERR | EP_HUP | EP_RDHUP) == 0 || !hung_up_rare(ev))
            {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.core.mark_ready(id);
                return;
            }
        }
    }

    /// Writes the send `on_data` deferred (a slice of `rbuf`) straight to
    /// the socket; `on_drain` when the kernel took it all, as after a flush.
    #[inline(always)]
    fn write_deferred(&mut self, id: ConnId, fd: std::os::fd::RawFd) {
        let len = std::mem::take(&mut self.core.deferred_len);
        // SAFETY: the deferred send names `len` bytes of `rbuf`, unchanged
        // since on_data was offered them.
        let data = unsafe { std::slice::from_raw_parts(self.core.deferred_at as *const u8, len) };
        // `fd` is the connection's socket: on_data cannot close it without
        // settling the deferred send.
        match sock::send_on(fd, data) {
            Ok(n) if n == len => self.core.stats.bytes_written += len as u64,
            res => {
                // The rest is queued (or the error met again by the flush).
                let _ = self.core.after_direct(id, data, res);
                return;
            }
        }
        let state = state_of(&mut self.states, id);
        let mut cx = Context {
            core: &mut self.core,
        };
        self.handler.on_drain(&mut cx, id, state);
    }

    #[cold]
    fn on_eof(&mut self, id: ConnId) {
        let Some(c) = self.core.conn(id) else { return };
        c.flags |= EOF;
        let state = state_of(&mut self.states, id);
        let mut cx = Context {
            core: &mut self.core,
        };
        self.handler.on_eof(&mut cx, id, state);
        self.dispatch_notices();
    }

    #[cold]
    fn on_read_error(&mut self, id: ConnId, e: io::Error) {
        self.core.close(id, CloseReason::from_io(&e), true);
        self.dispatch_notices();
    }

    /// Keeps what `on_data` left of the read buffer.
    #[cold]
    fn keep_input(&mut self, id: ConnId, used: usize, n: usize) {
        let max_input = self.core.config.max_input;
        let Some(c) = self.core.conn(id) else { return };
        c.input.extend_from_slice(&self.rbuf[used.min(n)..n]);
        if c.input.len() > max_input {
            log::debug!("{id}: unconsumed input over {max_input} bytes");
            self.core.close(id, CloseReason::InputTooLarge, true);
        }
    }

    /// Offers held-back input followed by what was just read.
    #[cold]
    fn deliver_buffered(&mut self, id: ConnId, n: usize) {
        let max_input = self.core.config.max_input;
        let now = self.core.now;
        let Some(c) = self.core.conn(id) else { return };
        c.input.extend_from_slice(&self.rbuf[..n]);
        let mut input = std::mem::take(&mut c.input);
        let state = state_of(&mut self.states, id);
        let mut cx = Context {
            core: &mut self.core,
        };
        let used = self
            .handler
            .on_data(&mut cx, id, state, &input)
            .min(input.len());
        if let Some(c) = self.core.conn(id) {
            if used > 0 {
                c.last_active = now;
            }
            if used < input.len() {
                input.drain(..used);
                c.input = input; // an emptied buffer is dropped: idle connections hold none
                if c.input.len() > max_input {
                    log::debug!("{id}: unconsumed input over {max_input} bytes");
                    self.core.close(id, CloseReason::InputTooLarge, true);
                }
            }
        }
    }

    fn finish_connect(&mut self, id: ConnId) {
        let now = self.core.now;
        let Some(c) = self.core.conn(id) else { return };
        let res = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match sock::addr_of(std::os::fd::AsFd::as_fd(&c.stream), true) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Err(e),
            },
        };
        match res {
            Err(e) => self.core.fail_connect(id, e),
            Ok(()) => {
                c.flags = (c.flags & !CONNECTING) | COUNTED;
                c.last_active = now;
                // Output queued, or a shutdown asked for, while connecting.
                let has_output = c.queued() > 0 || c.flags & crate::core::SHUTDOWN != 0;
                self.core.stats.connections += 1;
                self.core.stats.connected += 1;
                if has_output {
                    self.core.mark_pending(id);
                }
                self.core.notices.push_back(Notice::Open(id));
                self.core.mark_ready(id);
            }
        }
        self.dispatch_notices();
    }

    fn accept(&mut self, id: ConnId) {
        if self.core.stop & STOP_ASKED != 0 {
            return; // a stop is coming: accept nothing more
        }
        for _ in 0..self.core.config.accepts_per_turn {
            let Ok(Entry {
                kind: Kind::Listener { l, paused },
                ..
            }) = self.core.entry(id)
            else {
                return;
            };
            if *paused {
                return;
            }
            match l.accept() {
                Ok(stream) => self.open_accepted(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_fd_exhaustion(&e) => {
                    *paused = true;
                    self.core.accept_paused.push(id);
                    self.core.stats.accept_errors += 1;
                    let backoff = self.core.config.accept_backoff;
                    let now = clock::now();
                    self.core.now = now;
                    if self
                        .core
                        .emfile_logged
                        .is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000)
                    {
                        self.core.emfile_logged = Some(now);
                        log::warn!("accept on {id}: {e}; pausing accepts for {backoff:?}");
                    }
                    self.core.timers.insert(
                        now + clock::nanos(backoff),
                        None,
                        TimerKind::AcceptRetry(id),
                    );
                    return;
                }
                Err(e) => log::debug!("accept on {id}: {e}"), // ECONNABORTED and the like: next
            }
        }
        // The budget ran out with connections perhaps still waiting.
        self.core.mark_ready(id);
    }

    fn open_accepted(&mut self, stream: Stream) {
        if let (Stream::Tcp(s), true) = (&stream, self.core.config.nodelay) {
            let _ = s.set_nodelay(true);
        }
        let conn = crate::core::Conn::new(stream, 0, self.core.now, self.core.config.idle_timeout);
        let id = match self.core.insert(Kind::Conn(conn)) {
            Ok(id) => id,
            Err(e) => {
                log::warn!("registering an accepted connection: {e}");
                return;
            }
        };
        self.core.stats.accepted += 1;
        self.blame = id.as_u64();
        if self.core.stats.connections >= self.core.config.max_connections {
            self.core.stats.refused += 1;
            let mut cx = Context {
                core: &mut self.core,
            };
            self.handler.on_refuse(&mut cx, id);
            let _ = self.core.close_graceful(id, CloseReason::Refused);
        } else {
            self.core.stats.connections += 1;
            if let Some(c) = self.core.conn(id) {
                c.flags |= COUNTED;
            }
            let state = fresh_state(&mut self.states, id);
            let mut cx = Context {
                core: &mut self.core,
            };
            self.handler.on_open(&mut cx, id, state);
        }
        self.dispatch_notices();
    }

    fn read_dgram(&mut self, id: ConnId) {
        for _ in 0..DATAGRAM_BUDGET {
            let Ok(Entry {
                kind: Kind::Dgram(d),
                ..
            }) = self.core.entry(id)
            else {
                return;
            };
            match d.sock.recv_from(&mut self.rbuf) {
                Ok((n, from)) => {
                    self.core.stats.datagrams_received += 1;
                    let state = state_of(&mut self.states, id);
                    let mut cx = Context {
                        core: &mut self.core,
                    };
                    self.handler
                        .on_datagram(&mut cx, id, state, &self.rbuf[..n], &from);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors (ECONNREFUSED on a connected socket) are
                    // consumed by the failed read: report and carry on.
                    let mut cx = Context {
                        core: &mut self.core,
                    };
                    self.handler.on_error(&mut cx, id, e);
                }
            }
            self.dispatch_notices();
        }
        self.core.mark_ready(id);
    }

    /// Tells the handler what happened inside the last callback.
    #[inline]
    fn dispatch_notices(&mut self) {
        if !self.core.notices.is_empty() {
            self.deliver_notices();
        }
    }

    #[cold]
    fn deliver_notices(&mut self) {
        while let Some(notice) = self.core.notices.pop_front() {
            match notice {
                Notice::Closed(id, reason, notify) => {
                    let key = id.key as usize;
                    if matches!(self.core.entries.get(key), Some(e) if e.gen == id.gen) {
                        self.core.entries.remove(key);
                    }
                    let state = self.states.get_mut(key).and_then(Option::take);
                    if notify {
                        self.blame = 0;
                        let mut cx = Context {
                            core: &mut self.core,
                        };
                        self.handler
                            .on_close(&mut cx, id, state.unwrap_or_default(), reason);
                    }
                }
                Notice::ConnectFailed(id, err) => {
                    let key = id.key as usize;
                    if matches!(self.core.entries.get(key), Some(e) if e.gen == id.gen) {
                        self.core.entries.remove(key);
                    }
                    if let Some(s) = self.states.get_mut(key) {
                        *s = None;
                    }
                    self.blame = 0;
                    let mut cx = Context {
                        core: &mut self.core,
                    };
                    self.handler.on_connect_failed(&mut cx, id, err);
                }
                Notice::Open(id) => {
                    if self.core.entry(id).is_ok() {
                        self.blame = id.as_u64();
                        let state = fresh_state(&mut self.states, id);
                        let mut cx = Context {
                            core: &mut self.core,
                        };
                        self.handler.on_open(&mut cx, id, state);
                    }
                }
                Notice::Backpressure(id, paused) => {
                    if self.core.conn(id).is_some() {
                        self.blame = id.as_u64();
                        let state = state_of(&mut self.states, id);
                        let mut cx = Context {
                            core: &mut self.core,
                        };
                        self.handler.on_backpressure(&mut cx, id, state, paused);
                    }
                }
            }
        }
    }

    fn drain_messages(&mut self) {
        let shared = self.core.shared.clone();
        shared.notified.store(false, Ordering::SeqCst);
        if shared.stop.swap(false, Ordering::AcqRel) {
            self.core.stop |= STOP_ASKED;
        }
        for _ in 0..MESSAGE_BUDGET {
            let Ok(msg) = self.rx.try_recv() else { return };
            self.core.stats.messages += 1;
            let mut cx = Context {
                core: &mut self.core,
            };
            self.handler.on_message(&mut cx, msg);
            self.dispatch_notices();
        }
        // More may be waiting: come back next turn without blocking.
        shared.notified.store(true, Ordering::SeqCst);
        let _ = shared.waker.wake();
    }

    fn fire_timers(&mut self) {
        let now = self.core.now;
        while let Some((timer, kind)) = self.core.timers.pop_due(now) {
            self.blame = 0;
            match kind {
                TimerKind::User => {
                    self.core.stats.timers_fired += 1;
                    let mut cx = Context {
                        core: &mut self.core,
                    };
                    self.handler.on_timer(&mut cx, timer);
                    self.dispatch_notices();
                }
                TimerKind::AcceptRetry(id) => {
                    if let Ok(Entry {
                        kind: Kind::Listener { paused, .. },
                        ..
                    }) = self.core.entry(id)
                    {
                        *paused = false;
                        self.accept(id);
                    }
                }
                TimerKind::IdleSweep => {
                    let mut scratch = std::mem::take(&mut self.scratch);
                    self.core.sweep_idle(&mut scratch);
                    self.scratch = scratch;
                    self.dispatch_notices();
                }
                TimerKind::DrainDeadline => {
                    if self.core.stop & STOPPING != 0 {
                        log::info!("drain deadline passed: closing what is left");
                        self.core.stop |= STOP_NOW;
                    }
                }
            }
        }
    }

    fn on_signal(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        for sig in signals.pending() {
            if self.core.stop & (STOPPING | STOP_ASKED) != 0 {
                log::warn!("signal {sig} again: stopping now");
                self.core.stop |= STOP_NOW;
            } else {
                log::info!("signal {sig}: stopping gracefully (again to stop now)");
                self.core.stop |= STOP_ASKED;
            }
        }
    }

    fn begin_stop(&mut self) {
        self.core.now = clock::now();
        let deadline = self.core.now + clock::nanos(self.core.config.drain_timeout);
        self.core.stop |= STOPPING;
        self.core
            .timers
            .insert(deadline, None, TimerKind::DrainDeadline);
        self.guarded(|me| {
            let mut cx = Context { core: &mut me.core };
            me.handler.on_stop(&mut cx);
        });
        let mut ids = std::mem::take(&mut self.scratch);
        self.core.ids(&mut ids);
        for &id in &ids {
            match self.core.entry(id).map(|e| &e.kind) {
                Ok(Kind::Conn(c)) if c.flags & CONNECTING == 0 => {
                    let _ = self.core.close_graceful(id, CloseReason::Shutdown);
                }
                Ok(_) => {
                    self.core.close(id, CloseReason::Shutdown, true);
                }
                Err(_) => {}
            }
        }
        self.scratch = ids;
        self.guarded(|me| me.dispatch_notices());
    }

    fn stop_finished(&self) -> bool {
        self.core.stop & STOPPING != 0 && !self.core.has_streams()
    }

    /// Closes whatever is left and resets the stop state, so the loop could
    /// be used again.
    fn finish_stop(&mut self) {
        if self.core.stop & STOPPING == 0 {
            self.begin_stop();
        }
        let mut ids = std::mem::take(&mut self.scratch);
        self.core.ids(&mut ids);
        for &id in &ids {
            self.core.close(id, CloseReason::Shutdown, true);
        }
        self.scratch = ids;
        self.guarded(|me| me.dispatch_notices());
        self.core.stop = 0;
    }
}

/// The state of a connection, created on first use.
#[inline]
fn state_of<S: Default>(states: &mut Vec<Option<S>>, id: ConnId) -> &mut S {
    if std::mem::size_of::<S>() == 0 && !std::mem::needs_drop::<S>() {
        // Nothing to look up for state without bytes or a destructor (such
        // as `()`): every value is the same value, and `Default` makes one
        // anyway. SAFETY: a dangling, aligned pointer is a valid reference
        // to a zero-sized value.
        return unsafe { &mut *std::ptr::NonNull::<S>::dangling().as_ptr() };
    }
    let k = id.key as usize;
    if let Some(Some(_)) = states.get(k) {
        return states[k].as_mut().expect("checked");
    }
    new_state(states, id)
}

#[cold]
#[inline(never)]
fn new_state<S: Default>(states: &mut Vec<Option<S>>, id: ConnId) -> &mut S {
    state_slot(states, id).get_or_insert_with(S::default)
}

/// A new connection's state, replacing anything a previous occupant of the
/// slot left.
fn fresh_state<S: Default>(states: &mut Vec<Option<S>>, id: ConnId) -> &mut S {
    state_slot(states, id).insert(S::default())
}

/// The state slot of a connection, the list grown to hold it.
fn state_slot<S>(states: &mut Vec<Option<S>>, id: ConnId) -> &mut Option<S> {
    let k = id.key as usize;
    if k >= states.len() {
        states.resize_with(k + 1, || None);
    }
    &mut states[k]
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
