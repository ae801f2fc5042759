//! The turn of the loop and the dispatch of readiness to the handler; the
//! one place that calls handler methods ([`Calls::call`]).
//!
//! One turn:
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
//! buffer when `on_data` returns (the zero-copy window, `core`), so an
//! echo-like turn is a poll, a read, a write and a handful of tests.
//!
//! **Edge-triggered readiness and budgets.** Readiness is reported once per
//! change, so every read, accept and write loop runs until `WouldBlock`, or
//! until a per-turn budget runs out. A socket cut off by its budget goes on
//! the ready list, served in the next turn before the loop may block:
//! without it, bytes already in the kernel would wait for an edge that never
//! comes. A read shorter than the buffer is taken as draining the socket
//! unless the peer's end of file was reported (then the next read meets it
//! now); an end of file reported while a connection is not read (paused,
//! or cut off by its budget) is remembered by the connection for the read
//! that resumes it.
//!
//! **Stale events and deferred removal.** Tokens carry the slot's
//! generation, so an event for a socket closed earlier in the same batch
//! (whose slot may already be reused) is dropped. A socket closed inside a
//! callback leaves a tombstone; its slot is freed, and `on_close` called,
//! only after the callback returns.
//!
//! **Panics.** Every callback runs through [`Calls::call`], which records
//! the connection it is about. A caught panic closes that connection (and
//! no other), and puts a listener or datagram socket whose accept or read
//! loop it interrupted back on the ready list. The interrupted phase then
//! resumes where it stopped: each keeps its place in the loop's state.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::Token;

use crate::conn::Gate;
use crate::core::{Accept, Core, Kind, Notice, Read};
use crate::linger::Lingering;
use crate::poller::{Poller, Readiness, RESERVED, SIGNALS, TIMER, WAKER};
use crate::remote::{Rx, Shared};
use crate::timer::TimerKind;
use crate::{
    CloseReason, Config, ConnId, Context, Handle, Handler, ListenOptions, Ready, Stats, ToEndpoint,
};

/// `Readiness::read_closed`, kept out of the read loop: called only when a
/// hang-up bit is set (otherwise the compiler decodes it for every event).
#[cold]
#[inline(never)]
fn read_closed(ready: Readiness) -> bool {
    ready.read_closed()
}

/// The loop's one read buffer: big enough for any UDP datagram.
const READ_BUF: usize = 64 * 1024;
/// Messages from other threads handled per turn, so a flood of them cannot
/// starve sockets.
const MESSAGE_BUDGET: usize = 4096;
/// Datagrams read from one socket per turn.
const DATAGRAM_BUDGET: usize = 64;

/// A single-threaded event loop: one poll, the sockets it owns, and the
/// handler it dispatches to.
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
    core: Core,             // the sockets, timers and limits callbacks reach
    calls: Calls<H>,        // the handler, and the per-connection states
    rbuf: Box<[u8]>,        // the one read buffer
    rx: Rx<H::Msg>,         // messages from handles
    handle: Handle<H::Msg>, // cloned for `handle()`
    signals: Option<signal_hook_mio::v1_0::Signals>, // SIGINT/SIGTERM, once asked for
    ready_work: Vec<ConnId>, // the ready list being served this turn
    flush_work: Vec<ConnId>, // the flush list being written this turn
    scratch: Vec<ConnId>,   // reused id lists
    serving: u64, // the listener or datagram socket whose accept or read loop runs (`ConnId::as_u64`; 0: none)
}

/// The handler, the per-connection states, and which connection the running
/// callback is about: everything a call of the handler needs.
struct Calls<H: Handler> {
    handler: H,              // the user's handler
    states: States<H::Conn>, // per-connection state, by slot
    about: u64, // the connection the running callback is about (`ConnId::as_u64`; 0: none)
}

impl<H: Handler> Calls<H> {
    /// Calls the handler: every callback goes through here. `about` is the
    /// stream connection the callback concerns (a panic in it closes that
    /// connection; `None` for callbacks about the loop, a listener, a
    /// datagram socket or an fd); `f` gets the handler, a context and the
    /// states, to fetch the one it hands over.
    #[inline(always)]
    fn call<R>(
        &mut self,
        core: &mut Core,
        about: Option<ConnId>,
        f: impl FnOnce(&mut H, &mut Context<'_>, &mut States<H::Conn>) -> R,
    ) -> R {
        self.about = about.map_or(0, ConnId::as_u64);
        let r = f(&mut self.handler, &mut Context::new(core), &mut self.states);
        self.about = 0;
        r
    }
}

/// Per-connection states by slot. Every connection gets its state from
/// `Default` when it opens; a datagram socket on its first datagram.
///
/// A state without bytes or drop glue (such as `()`) is not looked up:
/// every value of it is the same value. `Default` is still called for each
/// connection, and once more when the loop is made, which proves that the
/// type has values (a reference to a value of a type without any would be
/// undefined behaviour).
struct States<S> {
    by_slot: Vec<Option<S>>, // the states, by `ConnId::key`
}

impl<S: Default> States<S> {
    fn new() -> States<S> {
        if Self::TRIVIAL {
            // Proof that `S` has values: `get` relies on it.
            let _ = S::default();
        }
        States {
            by_slot: Vec::new(),
        }
    }

    /// True for a state without bytes or drop glue, such as `()`.
    const TRIVIAL: bool = std::mem::size_of::<S>() == 0 && !std::mem::needs_drop::<S>();

    /// The state of a live socket (made now if it has none yet).
    #[inline(always)]
    fn get(&mut self, id: ConnId) -> &mut S {
        if Self::TRIVIAL {
            // SAFETY: `S` is zero-sized, so a dangling, aligned pointer is a
            // valid reference to a value of it, and `S` has values: `new`
            // made one. (Each connection's own `Default` call still happens,
            // in `fresh`.)
            return unsafe { &mut *std::ptr::NonNull::<S>::dangling().as_ptr() };
        }
        let k = id.key as usize;
        if k < self.by_slot.len() && self.by_slot[k].is_some() {
            return self.by_slot[k].as_mut().expect("checked");
        }
        self.create(id)
    }

    #[cold]
    #[inline(never)]
    fn create(&mut self, id: ConnId) -> &mut S {
        self.slot(id).get_or_insert_with(S::default)
    }

    /// A new connection's state, replacing anything a previous occupant of
    /// the slot left: `seed` if it was created with one, else `Default`.
    fn fresh(&mut self, id: ConnId, seed: Option<Box<dyn std::any::Any + Send>>) -> &mut S
    where
        S: 'static,
    {
        let state = match seed.map(|b| b.downcast::<S>()) {
            Some(Ok(s)) => *s,
            _ => S::default(), // (the type was checked when it was given)
        };
        self.slot(id).insert(state)
    }

    /// The state of a live connection that may not have opened yet: the
    /// `connect_with` state kept aside for it, if that is still `seed`.
    fn seeded(&mut self, id: ConnId, seed: Option<Box<dyn std::any::Any + Send>>) -> &mut S
    where
        S: 'static,
    {
        match seed {
            Some(seed) => self.fresh(id, Some(seed)),
            None => self.get(id),
        }
    }

    /// The state of a connection that opened: its seed, or the one a
    /// callback while it was connecting made from that seed, or `Default`.
    /// (A slot's state is taken when its socket closes, so any state found
    /// here is this connection's.)
    fn opened(&mut self, id: ConnId, seed: Option<Box<dyn std::any::Any + Send>>) -> &mut S
    where
        S: 'static,
    {
        let k = id.key as usize;
        if seed.is_none() && !Self::TRIVIAL && self.by_slot.get(k).is_some_and(Option::is_some) {
            return self.get(id);
        }
        self.fresh(id, seed)
    }

    /// Takes the state of a socket that closed.
    fn take(&mut self, id: ConnId) -> Option<S> {
        self.by_slot.get_mut(id.key as usize).and_then(Option::take)
    }

    /// The state slot of a socket, the list grown to hold it.
    fn slot(&mut self, id: ConnId) -> &mut Option<S> {
        let k = id.key as usize;
        if k >= self.by_slot.len() {
            self.by_slot.resize_with(k + 1, || None);
        }
        &mut self.by_slot[k]
    }
}

impl<H: Handler> std::fmt::Debug for EventLoop<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("sockets", &self.core.sockets())
            .field("stats", self.core.stats())
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
    /// `InvalidInput` naming the field for a configuration that cannot work
    /// (see [`Config::validate`]); the OS error from creating the poll or
    /// its waker.
    pub fn with_config(handler: H, config: Config) -> io::Result<EventLoop<H>> {
        config.validate()?;
        let poller = Poller::new(config.events_capacity)?;
        let waker = mio::Waker::new(poller.registry(), WAKER)?;
        let shared = Arc::new(Shared::new(waker));
        let (handle, rx) = crate::remote::channel(shared.clone(), config.message_queue);
        let rbuf = vec![0; READ_BUF].into_boxed_slice();
        let core = Core::new(
            config,
            shared,
            poller,
            &rbuf,
            std::any::TypeId::of::<H::Conn>(),
        );
        Ok(EventLoop {
            core,
            calls: Calls {
                handler,
                states: States::new(),
                about: 0,
            },
            rbuf,
            rx,
            handle,
            signals: None,
            ready_work: Vec::new(),
            flush_work: Vec::new(),
            scratch: Vec::new(),
            serving: 0,
        })
    }

    /// A context for acting on the loop outside a callback: before `run`, or
    /// between calls to `run_once`.
    pub fn context(&mut self) -> Context<'_> {
        Context::new(&mut self.core)
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
        self.handle.clone()
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
                .registry()
                .register(&mut signals, SIGNALS, mio::Interest::READABLE)?;
            self.signals = Some(signals);
        }
        Ok(())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.calls.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.calls.handler
    }

    /// The handler and a context at once, for set-up that needs both.
    pub fn parts(&mut self) -> (&mut H, Context<'_>) {
        (&mut self.calls.handler, Context::new(&mut self.core))
    }

    /// Consumes the loop, returning the handler.
    pub fn into_handler(self) -> H {
        self.calls.handler
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        self.core.stats()
    }

    /// Runs until stopped (by [`Context::stop`], [`Handle::stop`] or a
    /// signal) and the stop has finished.
    ///
    /// # Errors
    /// The OS error if polling fails; socket errors go to the handler.
    pub fn run(&mut self) -> io::Result<()> {
        // Turns in a loop, under one `catch_unwind` for the whole run rather
        // than one per turn. After a panic the loop first finishes the
        // interrupted turn: each phase kept its place in `self`.
        let mut out = None;
        let mut resumed = false;
        while out.is_none() {
            self.guarded(|me| {
                // `quiet`: the last turn left nothing queued and no stop
                // under way, so the next poll needs no checks first.
                let mut quiet = false;
                if resumed {
                    // The rest of the interrupted turn: its events, then
                    // whatever it left on the work lists.
                    me.process();
                    quiet = me.finish_turn();
                }
                resumed = true;
                loop {
                    match me.before_poll::<false>(None, quiet) {
                        Ok(true) => quiet = me.turn(),
                        done => {
                            out = Some(done);
                            return;
                        }
                    }
                }
            });
        }
        out.expect("set when the loop ends")?; // ends with a stop due (false) or an error
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
        // A panic leaves the rest of the turn to finish.
        if !self.guarded(|me| {
            me.turn();
        }) {
            while !self.guarded(|me| {
                me.process();
                me.finish_turn();
            }) {}
        }
        Ok(true)
    }

    /// Up to and including the poll: work queued since the last turn (under
    /// its own `catch_unwind` when `GUARD`), the stop check (false: the stop
    /// is due, `finish_stop` is the caller's), the poll.
    #[inline(always)]
    fn before_poll<const GUARD: bool>(
        &mut self,
        timeout: Option<Duration>,
        quiet: bool,
    ) -> io::Result<bool> {
        if !quiet {
            return self.before_poll_slow::<GUARD>(timeout);
        }
        self.core.poll(timeout)?;
        Ok(true)
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
        if self.core.has_pending() || self.core.has_notices() || !self.flush_work.is_empty() {
            if GUARD {
                while !self.guarded(Self::before_sleep) {}
            } else {
                self.before_sleep();
            }
        }
        if self.core.stop_state().immediate() || self.stop_finished() {
            return Ok(false);
        }
        let wait = if self.core.has_work() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.core.poll(wait)?;
        Ok(true)
    }

    /// Everything between two polls. Returns true when the turn left
    /// nothing to do before the next poll may block (see `before_poll`).
    ///
    /// The work lists of `finish_turn` are empty here: only a panic can
    /// leave them half served, and the turn that resumes after one goes to
    /// `finish_turn` directly.
    #[inline(always)]
    fn turn(&mut self) -> bool {
        self.process();
        // One test for the common case of an echo-like turn: nothing ready,
        // queued or to tell, no stop asked for.
        if !self.core.busy() {
            return true;
        }
        self.finish_turn()
    }

    /// The rest of a turn with work left after the events: the ready list,
    /// a stop asked for, then the before-sleep flush.
    #[inline(never)]
    fn finish_turn(&mut self) -> bool {
        if !self.ready_work.is_empty() || self.core.has_ready() {
            self.serve_ready();
        }
        if self.core.stop_state().due() {
            self.begin_stop();
        }
        self.before_sleep();
        false
    }

    /// Runs `f` once, catching a panic from a callback when so configured:
    /// counted and logged; the connection the callback was about is closed
    /// with [`CloseReason::Panic`]; a listener or datagram socket whose
    /// accept or read loop was interrupted goes on the ready list. False if
    /// `f` panicked (the caller resumes what it interrupted, or not).
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) -> bool {
        if !self.core.config().catch_panics {
            f(self);
            return true;
        }
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&mut *self))) else {
            return true;
        };
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        self.core.stats_mut().panics += 1;
        // A reply recorded by the interrupted `on_data` goes with its
        // connection, which is closed below.
        self.core.drop_zero_copy();
        // A panic in `on_message` cuts its drain short: messages queued
        // behind it may have no wake on its way. One more wake (unless one
        // is already coming) makes the loop look again.
        self.core.shared().wake();
        let serving = std::mem::take(&mut self.serving);
        if serving != 0 {
            self.core.mark_ready(ConnId::from_u64(serving));
        }
        match std::mem::take(&mut self.calls.about) {
            0 => log::error!("panic in a callback: {msg}"),
            about => {
                let id = ConnId::from_u64(about);
                log::error!("panic in a callback for {id}: {msg}; closing it");
                self.core.close(id, CloseReason::Panic, true);
            }
        }
        false
    }

    /// Before the loop may sleep: tell the handler what is pending, then
    /// write every connection's queue (Redis's before-sleep write).
    #[inline(always)]
    fn before_sleep(&mut self) {
        self.dispatch_notices();
        if self.flush_work.is_empty() {
            if !self.core.has_pending() {
                return;
            }
            self.core.take_pending(&mut self.flush_work);
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
            self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                h.on_drain(cx, id, st.get(id))
            });
        }
        self.dispatch_notices();
    }

    /// After polling: every event (sockets, the waker's messages and
    /// stops, the timer's due timers).
    #[inline(always)]
    fn process(&mut self) {
        // (No notices are waiting: the last `before_sleep`, or `before_poll`,
        // delivered them, and nothing has run since.)
        while let Some((token, ready)) = self.core.next_event() {
            self.core.stats_mut().events += 1;
            if token < RESERVED {
                self.read_conn(ConnId::from_token(Token(token)), ready, Gate::FROM_EVENT);
                continue;
            }
            match Token(token) {
                // Every `Handle` call that finds no wake on its way sends one.
                WAKER => self.drain_messages(),
                SIGNALS => self.on_signal(),
                TIMER => {
                    self.core.timer_fired();
                    self.fire_timers();
                }
                _ => {}
            }
        }
    }

    /// The ready list: sockets cut off by a budget, resumed, or interrupted.
    #[inline(never)]
    fn serve_ready(&mut self) {
        if self.ready_work.is_empty() {
            self.core.take_ready(&mut self.ready_work);
        }
        while let Some(id) = self.ready_work.pop() {
            self.on_ready(id);
        }
    }

    fn on_ready(&mut self, id: ConnId) {
        if let Some(ready) = self.core.unready(id) {
            return self.read_conn(id, ready, Gate::IN_LOOP);
        }
        match self.core.entry(id) {
            Ok(Kind::Listener { .. }) => {
                self.core.unpause_listener(id); // back from EMFILE backoff, or cut off by its budget
                self.accept(id);
            }
            Ok(Kind::Dgram(_)) => self.read_dgram(id),
            _ => {}
        }
    }

    /// Reads a connection until `WouldBlock`, a short read, end of file, or
    /// the budget, offering each read to `on_data`.
    ///
    /// With [`Gate::FROM_EVENT`] (the first read of an event) an id that is
    /// not an open stream goes to `on_other_event`, and a connection that is
    /// connecting or waiting for WRITABLE to `conn_event_slow`.
    #[inline(always)]
    fn read_conn(&mut self, id: ConnId, ready: Readiness, mut gate: Gate) {
        let mut spent = 0;
        loop {
            let n = match self.core.read(id, &mut self.rbuf, gate, ready) {
                Read::Fresh(n) => {
                    // SAFETY: a read returns at most the buffer's length.
                    let data = unsafe { self.rbuf.get_unchecked(..n) };
                    let used = self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                        h.on_data(cx, id, st.get(id), data)
                    });
                    if self.core.after_data(id, data, used.min(n)) {
                        self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                            h.on_drain(cx, id, st.get(id))
                        });
                    }
                    n
                }
                Read::Held(n) => {
                    self.offer_held(id);
                    n
                }
                Read::Done => return,
                Read::Other => return self.on_other_event(id, ready),
                Read::Slow => return self.conn_event_slow(id, ready),
                Read::Eof => return self.on_eof(id),
                Read::Failed => return self.dispatch_notices(),
                #[cfg(feature = "tls")]
                Read::Tls(n, eof) => {
                    self.dispatch_notices(); // on_open first, when the handshake completed
                    if self.core.holds_input(id) {
                        self.offer_held(id);
                    }
                    if eof {
                        return self.on_eof(id);
                    }
                    n
                }
            };
            self.dispatch_notices();
            // A short read ends the loop unless the peer hung up (then the
            // next read meets end of file now, not after another poll).
            if n < self.rbuf.len() && !(ready.maybe_read_closed() && read_closed(ready)) {
                return;
            }
            spent += n;
            if spent >= self.core.config().read_budget {
                return self.core.budget_cut(id, ready);
            }
            gate = Gate::IN_LOOP;
        }
    }

    /// Offers held-back input followed by what was just read.
    #[cold]
    #[inline(never)]
    fn offer_held(&mut self, id: ConnId) {
        let Some(input) = self.core.take_input(id) else {
            return;
        };
        let used = self.calls.call(&mut self.core, Some(id), |h, cx, st| {
            h.on_data(cx, id, st.get(id), &input)
        });
        let used = used.min(input.len());
        self.core.restore_input(id, input, used);
    }

    /// An event for a socket other than an open stream connection.
    #[inline(never)]
    fn on_other_event(&mut self, id: ConnId, ready: Readiness) {
        match self.core.entry(id) {
            Ok(Kind::Listener { .. }) => self.accept(id),
            Ok(Kind::Dgram(_)) => {
                if ready.writable() {
                    self.core.flush_dgram(id);
                }
                if ready.readable() {
                    self.read_dgram(id);
                }
            }
            Ok(Kind::Fd(_)) => {
                let ready = Ready {
                    readable: ready.readable(),
                    writable: ready.writable(),
                    closed: ready.maybe_read_closed() && ready.read_closed(),
                };
                self.calls.call(&mut self.core, None, |h, cx, _| {
                    h.on_fd_ready(cx, id, ready)
                });
                self.dispatch_notices();
            }
            _ if Lingering::owns(id) => self.core.linger_ready(id, &mut self.rbuf),
            _ => {} // a late event for a slot that was closed (and maybe reused)
        }
    }

    /// A connection still connecting, or waiting for WRITABLE.
    #[cold]
    fn conn_event_slow(&mut self, id: ConnId, ready: Readiness) {
        if self.core.conn(id).is_some_and(|c| c.is_connecting()) {
            self.core.finish_connect(id);
            return self.dispatch_notices();
        }
        if ready.writable() {
            self.core.writable(id);
        }
        self.read_conn(id, ready, Gate::IN_LOOP);
    }

    #[cold]
    fn on_eof(&mut self, id: ConnId) {
        if self.core.saw_eof(id) {
            self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                h.on_eof(cx, id, st.get(id))
            });
        }
        self.dispatch_notices();
    }

    fn accept(&mut self, id: ConnId) {
        if self.core.stop_state().asked() {
            return; // a stop is coming: accept nothing more
        }
        // Until the loop below ends by itself, a panic in a callback puts
        // the listener back on the ready list (`guarded`): the rest of the
        // backlog raises no new edge.
        self.serving = id.as_u64();
        for _ in 0..self.core.config().accepts_per_turn {
            match self.core.accept(id) {
                Accept::Conn(cid, refused) => self.open_accepted(cid, refused),
                Accept::Done | Accept::Exhausted => {
                    self.serving = 0;
                    return;
                }
                Accept::Skip => {}
            }
        }
        self.serving = 0;
        // The budget ran out with connections perhaps still waiting.
        self.core.mark_ready(id);
    }

    fn open_accepted(&mut self, id: ConnId, refused: bool) {
        if refused {
            self.calls
                .call(&mut self.core, Some(id), |h, cx, _| h.on_refuse(cx, id));
            let _ = self.core.close_graceful(id, CloseReason::Refused);
        } else {
            // TLS: on_open once the handshake completes (`Read::Tls`).
            #[cfg(feature = "tls")]
            if self.core.is_tls(id) {
                return self.dispatch_notices();
            }
            self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                h.on_open(cx, id, st.fresh(id, None))
            });
        }
        self.dispatch_notices();
    }

    fn read_dgram(&mut self, id: ConnId) {
        // As in `accept`: an interrupted loop is served again.
        self.serving = id.as_u64();
        for _ in 0..DATAGRAM_BUDGET {
            match self.core.recv_dgram(id, &mut self.rbuf) {
                None => {
                    self.serving = 0;
                    return;
                }
                Some(Ok((n, from))) => {
                    let data = &self.rbuf[..n];
                    self.calls.call(&mut self.core, None, |h, cx, st| {
                        h.on_datagram(cx, id, st.get(id), data, &from)
                    });
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(Err(e)) => {
                    // ICMP errors (ECONNREFUSED on a connected socket) are
                    // consumed by the failed read, as is a datagram too large
                    // for the buffer: report and carry on.
                    self.calls
                        .call(&mut self.core, None, |h, cx, _| h.on_error(cx, id, e));
                }
            }
            self.dispatch_notices();
        }
        self.serving = 0;
        self.core.mark_ready(id);
    }

    /// Tells the handler what happened inside the last callback.
    #[inline(always)]
    fn dispatch_notices(&mut self) {
        if self.core.has_notices() {
            self.deliver_notices();
        }
    }

    #[cold]
    #[inline(never)]
    fn deliver_notices(&mut self) {
        while let Some(notice) = self.core.next_notice() {
            match notice {
                Notice::Closed(id, reason, notify) => {
                    self.core.free(id);
                    let state = self.calls.states.take(id);
                    if notify {
                        self.calls.call(&mut self.core, None, |h, cx, _| {
                            h.on_close(cx, id, state.unwrap_or_default(), reason)
                        });
                    }
                }
                Notice::ConnectFailed(id, err) => {
                    self.core.free(id);
                    let seed = self.core.take_seed(id);
                    let state = match self.calls.states.take(id) {
                        Some(s) => s,
                        None => match seed.map(|b| b.downcast::<H::Conn>()) {
                            Some(Ok(s)) => *s,
                            _ => H::Conn::default(),
                        },
                    };
                    self.calls.call(&mut self.core, None, |h, cx, _| {
                        h.on_connect_failed(cx, id, state, err)
                    });
                }
                Notice::Open(id) => {
                    if self.core.entry(id).is_ok() {
                        let seed = self.core.take_seed(id);
                        self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                            h.on_open(cx, id, st.opened(id, seed))
                        });
                    }
                }
                Notice::Backpressure(id, paused) => {
                    if self.core.conn(id).is_some() {
                        let seed = self.core.take_seed(id); // still connecting
                        self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                            h.on_backpressure(cx, id, st.seeded(id, seed), paused)
                        });
                    }
                }
            }
        }
    }

    fn drain_messages(&mut self) {
        let shared = self.core.shared().clone();
        shared.notified.store(false, Ordering::SeqCst);
        if shared.stop.swap(false, Ordering::AcqRel) {
            self.core.stop_mut().ask();
        }
        for _ in 0..MESSAGE_BUDGET {
            let Some(msg) = self.rx.try_recv() else {
                return;
            };
            self.core.stats_mut().messages += 1;
            self.calls
                .call(&mut self.core, None, |h, cx, _| h.on_message(cx, msg));
            self.dispatch_notices();
        }
        // More may be waiting: come back next turn without blocking (a
        // sender's own wake since the drain began already does).
        shared.wake();
    }

    fn fire_timers(&mut self) {
        let now = self.core.now();
        while let Some((timer, kind)) = self.core.timers_mut().pop_due(now) {
            match kind {
                TimerKind::User => {
                    self.core.stats_mut().timers_fired += 1;
                    self.calls
                        .call(&mut self.core, None, |h, cx, _| h.on_timer(cx, timer));
                    self.dispatch_notices();
                }
                TimerKind::AcceptRetry(id) => {
                    if self.core.unpause_listener(id) {
                        self.accept(id);
                    }
                }
                TimerKind::LingerSweep => self.core.linger_sweep(),
                TimerKind::IdleSweep => {
                    let mut scratch = std::mem::take(&mut self.scratch);
                    self.core.sweep_idle(&mut scratch);
                    self.scratch = scratch;
                    self.dispatch_notices();
                }
                TimerKind::Conn(id) => {
                    // Never after the connection closed (its timers go with it).
                    if self.core.conn(id).is_some() {
                        self.core.stats_mut().timers_fired += 1;
                        let seed = self.core.take_seed(id); // still connecting
                        self.calls.call(&mut self.core, Some(id), |h, cx, st| {
                            h.on_conn_timer(cx, id, st.seeded(id, seed), timer)
                        });
                        self.dispatch_notices();
                    }
                }
                #[cfg(feature = "tls")]
                TimerKind::TlsHandshake(id) => {
                    self.core.tls_timeout(id);
                    self.dispatch_notices();
                }
                TimerKind::DrainDeadline => {
                    if self.core.stop_state().draining() {
                        log::info!("drain deadline passed: closing what is left");
                        self.core.stop_mut().now();
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
            if self.core.stop_state().asked() || self.core.stop_state().draining() {
                log::warn!("signal {sig} again: stopping now");
                self.core.stop_mut().now();
            } else {
                log::info!("signal {sig}: stopping gracefully (again to stop now)");
                self.core.stop_mut().ask();
            }
        }
    }

    fn begin_stop(&mut self) {
        let deadline = self.core.tick() + crate::clock::nanos(self.core.config().drain_timeout);
        self.core.stop_mut().ask();
        self.core.stop_mut().begin();
        self.core
            .timers_mut()
            .insert(deadline, None, TimerKind::DrainDeadline);
        // Once, even if it panics: a stop must not wait on the handler.
        self.guarded(|me| me.calls.call(&mut me.core, None, |h, cx, _| h.on_stop(cx)));
        let mut ids = std::mem::take(&mut self.scratch);
        self.core.ids(&mut ids);
        for &id in &ids {
            match self.core.entry(id) {
                Ok(Kind::Conn(c)) if !c.is_connecting() => {
                    let _ = self.core.close_graceful(id, CloseReason::Shutdown);
                }
                Ok(_) => {
                    self.core.close(id, CloseReason::Shutdown, true);
                }
                Err(_) => {}
            }
        }
        self.scratch = ids;
        while !self.guarded(Self::dispatch_notices) {}
    }

    fn stop_finished(&mut self) -> bool {
        self.core.stop_state().draining() && !self.core.has_streams()
    }

    /// Closes whatever is left and resets the stop state, so the loop could
    /// be used again.
    fn finish_stop(&mut self) {
        if !self.core.stop_state().draining() {
            self.begin_stop();
        }
        let mut ids = std::mem::take(&mut self.scratch);
        self.core.ids(&mut ids);
        for &id in &ids {
            self.core.close(id, CloseReason::Shutdown, true);
        }
        self.scratch = ids;
        while !self.guarded(Self::dispatch_notices) {}
        *self.core.stop_mut() = Default::default();
    }
}
