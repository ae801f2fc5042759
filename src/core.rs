//! The loop's state that callbacks reach through a [`Context`](crate::Context):
//! the slots of sockets (each with its own generation), the flush and ready
//! lists, timers, limits, counters, the stop state and the zero-copy reply
//! window. It never calls the handler: what the handler must hear it leaves
//! as [`Notice`]s, which the dispatcher (`event_loop`) delivers once the
//! running callback has returned.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Registry};

use crate::conn::{Conn, Flush, Gate};
use crate::linger::Lingering;
use crate::poller::{Poller, Readiness};
use crate::remote::Shared;
use crate::sock::{Dgram, Listener, Stream};
use crate::timer::{TimerKind, Timers};
use crate::{clock, CloseReason, Config, ConnId, Error, Stats, TimerId};

/// A send at least this large to an empty queue is written at once (see
/// `Core::send_grow`).
const DIRECT_SEND: usize = 16 * 1024;
/// A slot whose generation reaches this is retired, never reused, so that
/// no two ids for one slot can be equal (and no id token can reach the
/// reserved ones, whose generation half is all ones).
const GEN_LIMIT: u32 = u32::MAX - 1;

/// A datagram socket.
pub(crate) struct DgramEntry {
    pub(crate) sock: Dgram,                                // the socket
    queue: VecDeque<(Vec<u8>, Option<socket2::SockAddr>)>, // datagrams the kernel refused, to retry on WRITABLE
    blocked: bool,                                         // the kernel refused: wait for WRITABLE
}

impl DgramEntry {
    pub(crate) fn new(sock: Dgram) -> DgramEntry {
        DgramEntry {
            sock,
            queue: VecDeque::new(),
            blocked: false,
        }
    }
}

/// What a slot holds.
pub(crate) enum Kind {
    /// A listener; `paused` while accepting backs off after EMFILE.
    Listener { l: Listener, paused: bool },
    /// A stream connection.
    Conn(Conn),
    /// A datagram socket.
    Dgram(DgramEntry),
    /// A file descriptor registered by the user, owned by the loop.
    Fd(OwnedFd),
    /// Closed, waiting for its notice to be delivered; the slot is not
    /// reused until then, so per-connection state cannot reach a newcomer.
    Closed,
    /// Free.
    Vacant,
}

struct Slot {
    gen: u32,   // the generation of the slot's current (or last) occupant
    kind: Kind, // what it holds
}

/// The sockets by slot: a `Vec` with a free list. Each slot counts its own
/// generations: an id is a slot and the generation of the occupant it
/// named, so a kept id never reaches a later occupant. A slot is retired
/// when its generation would wrap.
pub(crate) struct Slots {
    slots: Vec<Slot>, // by key
    free: Vec<u32>,   // vacant keys, the last freed reused first
    len: usize,       // occupied slots (tombstones included)
}

impl Slots {
    fn new() -> Slots {
        Slots {
            slots: Vec::with_capacity(64),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The id the next `insert` will hand out.
    fn next_id(&self) -> io::Result<ConnId> {
        let (key, gen) = match self.free.last() {
            Some(&k) => (k, self.slots[k as usize].gen + 1),
            None => {
                let k = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "too many sockets"))?;
                (k, 1)
            }
        };
        Ok(ConnId::new(key, gen))
    }

    /// Puts `kind` in the slot `next_id` named.
    fn insert(&mut self, id: ConnId, kind: Kind) {
        self.len += 1;
        let slot = Slot { gen: id.gen, kind };
        if self.free.last() == Some(&id.key) {
            self.free.pop();
            self.slots[id.key as usize] = slot;
        } else {
            debug_assert_eq!(id.key as usize, self.slots.len());
            self.slots.push(slot);
        }
    }

    /// Frees the slot an id names (a no-op for a stale id).
    fn remove(&mut self, id: ConnId) {
        let Some(s) = self.slots.get_mut(id.key as usize) else {
            return;
        };
        if s.gen != id.gen || matches!(s.kind, Kind::Vacant) {
            return;
        }
        s.kind = Kind::Vacant;
        self.len -= 1;
        if s.gen < GEN_LIMIT {
            self.free.push(id.key);
        }
    }

    /// The live entry an id names (not a tombstone).
    #[inline(always)]
    fn live(&mut self, id: ConnId) -> Option<&mut Kind> {
        match self.slots.get_mut(id.key as usize) {
            Some(s) if s.gen == id.gen && !matches!(s.kind, Kind::Closed | Kind::Vacant) => {
                Some(&mut s.kind)
            }
            _ => None,
        }
    }

    /// The stream connection an id names.
    #[inline(always)]
    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.slots.get_mut(id.key as usize) {
            Some(Slot {
                gen,
                kind: Kind::Conn(c),
            }) if *gen == id.gen => Some(c),
            _ => None,
        }
    }

    /// `conn` for an id whose slot was looked up earlier in this turn (the
    /// read step's): the slot list never shrinks, so its key is still in
    /// bounds and only the generation and kind need checking.
    #[inline(always)]
    fn conn_seen(&mut self, id: ConnId) -> Option<&mut Conn> {
        let k = id.key as usize;
        assert!(k < self.slots.len() || cfg!(not(debug_assertions)));
        // SAFETY: `k` indexed `slots` before (the caller's contract), and
        // slots are only ever pushed, never removed from the list.
        match unsafe { self.slots.get_unchecked_mut(k) } {
            Slot {
                gen,
                kind: Kind::Conn(c),
            } if *gen == id.gen => Some(c),
            _ => None,
        }
    }

    /// The entry an id names, tombstone included.
    fn named(&self, id: ConnId) -> Option<&Kind> {
        match self.slots.get(id.key as usize) {
            Some(s) if s.gen == id.gen && !matches!(s.kind, Kind::Vacant) => Some(&s.kind),
            _ => None,
        }
    }

    /// Live entries and their ids.
    fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut Kind)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| !matches!(s.kind, Kind::Closed | Kind::Vacant))
            .map(|(k, s)| (ConnId::new(k as u32, s.gen), &mut s.kind))
    }
}

/// Something the dispatcher tells the handler once the running callback
/// returns.
pub(crate) enum Notice {
    /// A connection opened (connected, adopted, or a connected datagram socket).
    Open(ConnId),
    /// A socket closed; the bool says whether the handler hears of it
    /// (false for listeners and fds, which have no state).
    Closed(ConnId, CloseReason, bool),
    /// An outbound connection failed.
    ConnectFailed(ConnId, io::Error),
    /// Reading paused (true) or resumed (false).
    Backpressure(ConnId, bool),
}

/// The stop state: one byte, so that the loop tests it at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stop(u8);

impl Stop {
    const ASKED: u8 = 1 << 0; // a stop was asked for; the dispatcher begins it
    const STOPPING: u8 = 1 << 1; // a graceful stop is draining
    const NOW: u8 = 1 << 2; // stop at once: abort what is left

    /// A stop was asked for (and perhaps begun).
    pub(crate) fn asked(self) -> bool {
        self.0 & Self::ASKED != 0
    }
    /// A graceful stop is draining.
    pub(crate) fn draining(self) -> bool {
        self.0 & Self::STOPPING != 0
    }
    /// Asked for and not begun yet.
    pub(crate) fn due(self) -> bool {
        self.0 & (Self::ASKED | Self::STOPPING) == Self::ASKED
    }
    /// An immediate stop is due.
    pub(crate) fn immediate(self) -> bool {
        self.0 & Self::NOW != 0
    }
    pub(crate) fn ask(&mut self) {
        self.0 |= Self::ASKED;
    }
    pub(crate) fn begin(&mut self) {
        self.0 |= Self::STOPPING;
    }
    pub(crate) fn now(&mut self) {
        self.0 |= Self::NOW;
    }
}

/// The zero-copy reply window: while `on_data` runs for a connection whose
/// queue is empty and whose write side is open, the first `send` of a slice
/// of the data just offered (which lies in the loop's read buffer) is
/// recorded, not copied, and written from the buffer when `on_data` returns.
/// Anything else done to that connection meanwhile first settles the reply
/// into the queue (`Core::settle`), so order always holds and the socket
/// cannot be closed under a pending write.
pub(crate) struct ZeroCopy {
    conn: u64,        // the connection being read (`ConnId::as_u64`); 0: no window
    buf: *const u8,   // the read buffer
    buf_len: usize,   // and its length
    reply: *const u8, // the recorded reply: a slice of the buffer
    reply_len: usize, // and its length (0: none)
}

// SAFETY: the pointers name the loop's own read buffer (a boxed slice that
// moves with the loop without its bytes moving), and are dereferenced only
// on the loop's thread while that buffer is not written.
unsafe impl Send for ZeroCopy {}

impl ZeroCopy {
    /// A closed window over `buf`, the loop's read buffer for its whole
    /// life.
    fn new(buf: &[u8]) -> ZeroCopy {
        ZeroCopy {
            conn: 0,
            buf: buf.as_ptr(),
            buf_len: buf.len(),
            reply: std::ptr::null(),
            reply_len: 0,
        }
    }

    /// Opens the window for `id`, whose fresh bytes lie at the front of
    /// the read buffer.
    #[inline(always)]
    fn open(&mut self, id: ConnId) {
        self.conn = id.as_u64();
    }

    /// True if `id` is the connection whose window is open.
    #[inline(always)]
    fn is(&self, id: ConnId) -> bool {
        id.as_u64() == self.conn
    }

    /// Records `data` as the reply if it is the first send and a slice of
    /// the read buffer.
    #[inline(always)]
    fn record(&mut self, data: &[u8]) -> bool {
        let off = (data.as_ptr() as usize).wrapping_sub(self.buf as usize);
        if self.reply_len == 0
            && off < self.buf_len
            && data.len().wrapping_sub(1) < self.buf_len - off
        {
            self.reply = data.as_ptr();
            self.reply_len = data.len();
            return true;
        }
        false
    }

    /// Closes the window; the recorded reply, if any.
    #[inline(always)]
    fn close(&mut self) -> Option<(u64, Reply)> {
        let id = std::mem::take(&mut self.conn);
        let len = std::mem::take(&mut self.reply_len);
        if len == 0 {
            return None;
        }
        Some((
            id,
            Reply {
                at: self.reply,
                len,
            },
        ))
    }
}

/// A reply the zero-copy window recorded: a slice of the read buffer.
struct Reply {
    at: *const u8, // where it starts in the read buffer
    len: usize,    // its length (not 0)
}

impl Reply {
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        // SAFETY: a recorded reply names `len` bytes of the loop's read
        // buffer, which is not written while the window is open, nor before
        // the reply is written or queued: right after `on_data` returns
        // (`Core::after_data`), or when something settles it during
        // `on_data` (`Core::settle`).
        unsafe { std::slice::from_raw_parts(self.at, self.len) }
    }
}

/// What a read step came to.
pub(crate) enum Read {
    /// `n` fresh bytes at the front of the buffer, nothing held back: offer
    /// them. A reply may be recorded by the zero-copy window.
    Fresh(usize),
    /// `n` bytes appended to the input held back: offer that input.
    Held(usize),
    /// End of file.
    Eof,
    /// Nothing to read now, or not reading (paused, closing, …).
    Done,
    /// The id is not an open stream connection: another kind of socket,
    /// or stale (first read of an event only; later ones say `Done`).
    Other,
    /// Connecting or waiting for WRITABLE (first read of an event only).
    Slow,
    /// The read failed: the connection is closed.
    Failed,
    /// `n` bytes of ciphertext were read and fed to a TLS connection: its
    /// plaintext (if any) joined the held input; `true` if the peer's
    /// close_notify arrived (end of file, after that input).
    #[cfg(feature = "tls")]
    Tls(usize, bool),
}

/// What accepting one connection came to.
pub(crate) enum Accept {
    /// A connection, open (`refused` false) or over `max_connections`.
    Conn(ConnId, bool),
    /// The backlog is empty, the listener is paused or gone.
    Done,
    /// Out of file descriptors: accepting paused for the backoff.
    Exhausted,
    /// One accept failed (ECONNABORTED and the like): try the next.
    Skip,
}

/// The loop's state, reached by callbacks through a `Context`.
pub(crate) struct Core {
    poller: Poller,                                       // the OS readiness API
    slots: Slots,                                         // every socket, by `ConnId::key`
    timers: Timers,                                       // user and internal timers
    config: Config,                                       // limits
    stats: Stats,                                         // counters
    now: u64, // the loop clock (ns), coarse: read when timers are due and on rare paths
    pending: Vec<ConnId>, // connections with output to flush before the next poll
    ready: Vec<ConnId>, // sockets to serve again before blocking (budget cut, resumed, interrupted)
    notices: VecDeque<Notice>, // for the handler, after the running callback
    stop: Stop, // the stop state
    sweep: Option<(TimerId, Duration)>, // the idle sweep timer and its period
    lingering: Lingering, // closed TCP sockets read until the peer's end of file
    linger_sweep: Option<TimerId>, // closes lingering sockets past their deadline, while there are some
    accept_paused: Vec<ConnId>,    // listeners backing off after EMFILE
    emfile_logged: Option<u64>,    // last EMFILE warning, to log at most once a second
    shared: Arc<Shared>,           // the waker and flags shared with handles
    zero_copy: ZeroCopy,           // the zero-copy reply window of the running `on_data`
    conn_type: std::any::TypeId,   // the handler's `Conn` type, for states given at creation
    seeded: Vec<(ConnId, Box<dyn std::any::Any + Send>)>, // states given at creation, until the connection opens
    queue_check: usize, // a queue past this is checked against the water mark and the hard cap: the lower of the two
    #[cfg(feature = "tls")]
    tls_listeners: Vec<(ConnId, Arc<rustls::ServerConfig>)>, // tls:// listeners and their configurations
}

impl Core {
    /// The loop's state; `rbuf` is the read buffer the loop reads every
    /// stream into, for as long as it lives (the zero-copy window's).
    pub(crate) fn new(
        config: Config,
        shared: Arc<Shared>,
        poller: Poller,
        rbuf: &[u8],
        conn_type: std::any::TypeId,
    ) -> Core {
        let mut core = Core {
            poller,
            slots: Slots::new(),
            timers: Timers::new(),
            config,
            stats: Stats::default(),
            now: clock::now(),
            pending: Vec::with_capacity(64),
            ready: Vec::new(),
            notices: VecDeque::new(),
            stop: Stop::default(),
            sweep: None,
            lingering: Lingering::default(),
            linger_sweep: None,
            accept_paused: Vec::new(),
            emfile_logged: None,
            shared,
            zero_copy: ZeroCopy::new(rbuf),
            conn_type,
            seeded: Vec::new(),
            queue_check: 0,
            #[cfg(feature = "tls")]
            tls_listeners: Vec::new(),
        };
        core.queue_check = core.config.high_water.min(core.config.max_write_queue);
        if let Some(t) = core.config.idle_timeout {
            core.ensure_sweep(t);
        }
        core
    }

    // ----- Plain accessors -----

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    pub(crate) fn registry(&self) -> &Registry {
        self.poller.registry()
    }
    pub(crate) fn stop_state(&self) -> Stop {
        self.stop
    }
    pub(crate) fn stop_mut(&mut self) -> &mut Stop {
        &mut self.stop
    }
    pub(crate) fn now(&self) -> u64 {
        self.now
    }
    /// Reads the clock into the loop clock.
    pub(crate) fn tick(&mut self) -> u64 {
        self.now = clock::now();
        self.now
    }
    pub(crate) fn sockets(&self) -> usize {
        self.slots.len
    }
    pub(crate) fn timers_mut(&mut self) -> &mut Timers {
        &mut self.timers
    }

    // ----- States given at creation -----

    /// Keeps the state a connection was created with, until the loop hands
    /// it to the handler. `InvalidInput` if it is not of the handler's
    /// `Conn` type.
    pub(crate) fn check_seed(&self, ty: std::any::TypeId, ty_name: &str) -> io::Result<()> {
        if ty != self.conn_type {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the state given ({ty_name}) is not of the handler's Conn type"),
            ));
        }
        Ok(())
    }

    /// Keeps `state` for `id` (its type checked by `check_seed`).
    pub(crate) fn seed(&mut self, id: ConnId, state: Box<dyn std::any::Any + Send>) {
        self.seeded.push((id, state));
    }

    /// The state `id` was created with, if any.
    pub(crate) fn take_seed(&mut self, id: ConnId) -> Option<Box<dyn std::any::Any + Send>> {
        if self.seeded.is_empty() {
            return None;
        }
        let i = self.seeded.iter().position(|(s, _)| *s == id)?;
        Some(self.seeded.swap_remove(i).1)
    }

    // ----- The poll -----

    /// Arms the wake-up for the next timer, then waits.
    #[inline(always)]
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.poller.arm(self.timers.peek());
        self.stats.polls += 1;
        self.poller.poll(timeout)
    }

    /// The next event of the last poll.
    #[inline(always)]
    pub(crate) fn next_event(&mut self) -> Option<(usize, Readiness)> {
        self.poller.next()
    }

    /// The timer event was served.
    pub(crate) fn timer_fired(&mut self) {
        self.poller.timer_fired();
        self.now = clock::now();
    }

    /// True if the loop has work before it may block: the ready list,
    /// output to flush, notices to deliver.
    #[inline(always)]
    pub(crate) fn has_work(&self) -> bool {
        (self.ready.len() | self.pending.len() | self.notices.len()) != 0
    }

    /// True if the loop has work or a stop under way (one test).
    #[inline(always)]
    pub(crate) fn busy(&self) -> bool {
        (self.ready.len() | self.pending.len() | self.notices.len() | self.stop.0 as usize) != 0
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
    pub(crate) fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }
    /// Swaps the ready list into `work` (empty).
    pub(crate) fn take_ready(&mut self, work: &mut Vec<ConnId>) {
        std::mem::swap(work, &mut self.ready);
    }
    /// Swaps the flush list into `work` (empty).
    pub(crate) fn take_pending(&mut self, work: &mut Vec<ConnId>) {
        std::mem::swap(work, &mut self.pending);
    }
    pub(crate) fn next_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    // ----- Slots -----

    /// Puts a socket in a slot and registers it.
    pub(crate) fn insert(&mut self, mut kind: Kind) -> io::Result<ConnId> {
        let id = self.slots.next_id()?;
        let registry = self.poller.registry();
        let both = Interest::READABLE | Interest::WRITABLE;
        match &mut kind {
            Kind::Listener { l, .. } => {
                registry.register(l.source(), id.token(), Interest::READABLE)?
            }
            Kind::Conn(c) => registry.register(c.stream_mut().source(), id.token(), both)?,
            Kind::Dgram(d) => registry.register(d.sock.source(), id.token(), both)?,
            Kind::Fd(_) | Kind::Closed | Kind::Vacant => {}
        }
        self.slots.insert(id, kind);
        Ok(id)
    }

    /// Registers a user's fd, owned by the loop from now on.
    pub(crate) fn insert_fd(&mut self, fd: OwnedFd, interest: Interest) -> io::Result<ConnId> {
        let id = self.slots.next_id()?;
        self.poller.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            id.token(),
            interest,
        )?;
        self.slots.insert(id, Kind::Fd(fd));
        Ok(id)
    }

    /// Changes the interest of a registered fd.
    pub(crate) fn reregister_fd(&mut self, id: ConnId, interest: Interest) -> Result<(), Error> {
        let Some(Kind::Fd(fd)) = self.live(id) else {
            return Err(self.why_not(id));
        };
        let raw = fd.as_raw_fd();
        self.poller
            .registry()
            .reregister(&mut mio::unix::SourceFd(&raw), id.token(), interest)?;
        Ok(())
    }

    /// The live entry an id names. For the connection whose `on_data` is
    /// running, settles a recorded reply first, so what the caller sees or
    /// does to it follows every earlier send.
    #[inline]
    pub(crate) fn entry(&mut self, id: ConnId) -> Result<&mut Kind, Error> {
        if self.zero_copy.is(id) {
            self.settle();
        }
        self.slots.live(id).ok_or(Error::Stale)
    }

    /// `entry`, as an option.
    fn live(&mut self, id: ConnId) -> Option<&mut Kind> {
        self.entry(id).ok()
    }

    /// The stream connection an id names (settling a recorded reply first).
    #[inline]
    pub(crate) fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        if self.zero_copy.is(id) {
            self.settle();
        }
        self.slots.conn(id)
    }

    /// Why an id names no socket of the kind asked for.
    fn why_not(&mut self, id: ConnId) -> Error {
        if self.slots.live(id).is_some() {
            Error::WrongKind
        } else {
            Error::Stale
        }
    }

    /// True for a TLS connection or listener.
    pub(crate) fn is_tls(&mut self, id: ConnId) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls_listeners.iter().any(|(l, _)| *l == id)
                || self.slots.conn(id).is_some_and(|c| c.is_tls())
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = id;
            false
        }
    }

    /// Frees the slot of a socket whose close the handler is being told.
    pub(crate) fn free(&mut self, id: ConnId) {
        if matches!(self.slots.named(id), Some(Kind::Closed)) {
            self.slots.remove(id);
        }
    }

    pub(crate) fn fd_of(&mut self, id: ConnId) -> Result<RawFd, Error> {
        Ok(match self.entry(id)? {
            Kind::Listener { l, .. } => l.as_fd().as_raw_fd(),
            Kind::Conn(c) => c.stream().as_fd().as_raw_fd(),
            Kind::Dgram(d) => d.sock.as_fd().as_raw_fd(),
            Kind::Fd(fd) => fd.as_raw_fd(),
            Kind::Closed | Kind::Vacant => return Err(Error::Stale),
        })
    }

    /// Every live id.
    pub(crate) fn ids(&mut self, out: &mut Vec<ConnId>) {
        out.clear();
        out.extend(self.slots.iter_mut().map(|(id, _)| id));
    }

    /// True while any stream connection is open.
    pub(crate) fn has_streams(&mut self) -> bool {
        self.slots
            .iter_mut()
            .any(|(_, k)| matches!(k, Kind::Conn(_)))
    }

    // ----- The lists -----

    pub(crate) fn mark_pending(&mut self, id: ConnId) {
        if let Some(c) = self.slots.conn(id) {
            if c.mark_pending() {
                self.pending.push(id);
            }
        }
    }

    /// Puts a socket on the ready list: served before the loop blocks.
    pub(crate) fn mark_ready(&mut self, id: ConnId) {
        if let Some(c) = self.slots.conn(id) {
            if !c.mark_ready() {
                return;
            }
        }
        self.ready.push(id);
    }

    /// A read loop stopped at its budget: the connection goes on the ready
    /// list, remembering an end of file the event reported.
    #[cold]
    #[inline(never)]
    pub(crate) fn budget_cut(&mut self, id: ConnId, ready: Readiness) {
        if let Some(c) = self.slots.conn(id) {
            if ready.maybe_read_closed() {
                note_read_closed(c, ready);
            }
        }
        self.mark_ready(id);
    }

    /// A connection came off the ready list: the readiness to read it
    /// with, or `None` if it is not an open connection.
    pub(crate) fn unready(&mut self, id: ConnId) -> Option<Readiness> {
        let c = self.slots.conn(id)?;
        c.unmark_ready();
        Some(c.resume_readiness())
    }

    // ----- Reading -----

    /// One read of a connection into `buf`, with its bookkeeping. For fresh
    /// bytes with nothing queued, opens the zero-copy window; the caller
    /// offers the bytes, then calls [`after_data`](Core::after_data).
    #[inline(always)]
    pub(crate) fn read(
        &mut self,
        id: ConnId,
        buf: &mut [u8],
        gate: Gate,
        ready: Readiness,
    ) -> Read {
        let now = self.now;
        let Some(c) = self.slots.conn(id) else {
            return if gate == Gate::FROM_EVENT {
                Read::Other
            } else {
                Read::Done
            };
        };
        if c.stops_reading(gate) || !ready.readable() {
            if gate == Gate::FROM_EVENT && c.waits_for_writable() {
                return Read::Slow;
            }
            if ready.maybe_read_closed() {
                return self.not_reading(id, ready);
            }
            return Read::Done;
        }
        let n = match c.read(buf) {
            Ok(n) if n > 0 => n,
            Ok(_) => return self.read_eof(id),
            Err(e) => return self.read_error(id, e),
        };
        self.stats.bytes_read += n as u64;
        #[cfg(feature = "tls")]
        if c.is_tls() {
            return self.read_tls(id, &buf[..n]);
        }
        if !c.holds_no_input() {
            return self.hold(id, &buf[..n]);
        }
        // Reading with nothing held back counts as progress for the idle
        // timeout; bytes that never complete a message do not.
        c.touch(now);
        if c.zero_copy_allowed() {
            debug_assert_eq!(buf.as_ptr(), self.zero_copy.buf);
            self.zero_copy.open(id);
        }
        Read::Fresh(n)
    }

    /// A read met end of file. A reset that arrived with the FIN (both
    /// before the read) is still pending on the socket, and the edge that
    /// reported them will not come again: check for it, and close with it.
    #[cold]
    #[inline(never)]
    fn read_eof(&mut self, id: ConnId) -> Read {
        // A peer gone during the TLS handshake: never opened.
        #[cfg(feature = "tls")]
        if self.slots.conn(id).is_some_and(|c| c.tls_handshaking()) {
            self.close(id, CloseReason::Tls, false);
            return Read::Failed;
        }
        let err = match self.slots.conn(id).map(|c| c.stream().take_error()) {
            Some(Ok(Some(e))) => e,
            _ => return Read::Eof,
        };
        self.close(id, CloseReason::from_io(&err), true);
        Read::Failed
    }

    /// An event reported the peer's end of file, or an error, for a
    /// connection that is not being read (paused, closing, …). The end of
    /// file is remembered for the read that resumes it; an error (a reset)
    /// closes it now, paused or not.
    #[cold]
    #[inline(never)]
    fn not_reading(&mut self, id: ConnId, ready: Readiness) -> Read {
        let Some(c) = self.slots.conn(id) else {
            return Read::Done;
        };
        note_read_closed(c, ready);
        if ready.error() && !c.is_connecting() {
            let err = match c.stream().take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => return Read::Done,
            };
            self.close(id, CloseReason::from_io(&err), true);
            return Read::Failed;
        }
        Read::Done
    }

    /// The handler pauses reading from a connection.
    pub(crate) fn pause_reading(&mut self, id: ConnId) -> Result<(), Error> {
        match self.entry(id)? {
            Kind::Conn(c) => {
                c.hold_reading();
                Ok(())
            }
            _ => Err(Error::WrongKind),
        }
    }

    /// The handler resumes reading: the connection is read again before
    /// the loop sleeps, unless the high-water pause still holds it.
    pub(crate) fn resume_reading(&mut self, id: ConnId) -> Result<(), Error> {
        match self.entry(id)? {
            Kind::Conn(c) => {
                if c.release_reading() {
                    self.mark_ready(id);
                }
                Ok(())
            }
            _ => Err(Error::WrongKind),
        }
    }

    /// True while the handler holds a connection's reading paused.
    pub(crate) fn reading_paused(&mut self, id: ConnId) -> Result<bool, Error> {
        match self.entry(id)? {
            Kind::Conn(c) => Ok(c.reading_held()),
            _ => Err(Error::WrongKind),
        }
    }

    #[cold]
    #[inline(never)]
    fn read_error(&mut self, id: ConnId, e: io::Error) -> Read {
        match e.kind() {
            io::ErrorKind::WouldBlock => Read::Done,
            io::ErrorKind::Interrupted => Read::Done,
            _ => {
                self.close(id, CloseReason::from_io(&e), true);
                Read::Failed
            }
        }
    }

    /// Fresh bytes behind input held back: appended to it.
    #[cold]
    #[inline(never)]
    fn hold(&mut self, id: ConnId, data: &[u8]) -> Read {
        let max = self.config.max_input;
        let Some(c) = self.slots.conn(id) else {
            return Read::Done;
        };
        if !c.hold_input(data, max) {
            self.input_too_large(id);
            return Read::Failed;
        }
        Read::Held(data.len())
    }

    #[cold]
    fn input_too_large(&mut self, id: ConnId) {
        log::debug!(
            "{id}: unconsumed input over {} bytes",
            self.config.max_input
        );
        self.close(id, CloseReason::InputTooLarge, true);
    }

    /// After `on_data` was offered `data` (fresh bytes at the front of the
    /// read buffer) and consumed `used` of them: the rest is held back, then
    /// the reply the zero-copy window recorded is written. True if that
    /// reply was taken whole (the handler hears `on_drain`, after the input
    /// is kept, so that a close or detach there keeps it).
    #[inline(always)]
    pub(crate) fn after_data(&mut self, id: ConnId, data: &[u8], used: usize) -> bool {
        let now = self.now;
        let reply = self.zero_copy.close();
        // (`id` was read by `read` just before.)
        let Some(c) = self.slots.conn_seen(id) else {
            return false; // closed in on_data: a reply was settled with it
        };
        if used < data.len() && !c.hold_input(&data[used..], self.config.max_input) {
            self.input_too_large(id);
            return false;
        }
        let Some((_, reply)) = reply else {
            return false;
        };
        let reply = reply.bytes();
        match c.stream().send(reply) {
            Ok(n) if n == reply.len() => {
                self.stats.bytes_written += n as u64;
                true
            }
            res => {
                let n = c.after_direct(res, now);
                self.stats.bytes_written += n as u64;
                // The rest is queued (an error is met again by the flush).
                let _ = self.enqueue(id, &reply[n..]);
                false
            }
        }
    }

    /// Takes a connection's held input to offer it.
    pub(crate) fn take_input(&mut self, id: ConnId) -> Option<Vec<u8>> {
        self.slots.conn(id).map(Conn::take_input)
    }

    /// Gives back what `on_data` left of held input.
    pub(crate) fn restore_input(&mut self, id: ConnId, input: Vec<u8>, used: usize) {
        let now = self.now;
        let max = self.config.max_input;
        let Some(c) = self.conn(id) else { return };
        if used > 0 {
            c.touch(now);
        }
        if !c.restore_input(input, used, max) {
            self.input_too_large(id);
        }
    }

    /// The peer's end of file was read: true if the handler is to hear it.
    pub(crate) fn saw_eof(&mut self, id: ConnId) -> bool {
        match self.slots.conn(id) {
            Some(c) => {
                c.saw_eof();
                true
            }
            None => false,
        }
    }

    // ----- Sending -----

    /// Queues bytes on a stream, or sends a datagram on a connected socket.
    #[inline(always)]
    pub(crate) fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        if self.zero_copy.is(id) {
            if self.zero_copy.record(data) {
                return Ok(());
            }
            self.settle();
        }
        self.send_queued(id, data)
    }

    /// Queues an owned buffer: with nothing queued it is written at once
    /// (large) or becomes the queue; either way without a copy, except of
    /// what follows bytes already queued.
    pub(crate) fn send_owned(&mut self, id: ConnId, data: Vec<u8>) -> Result<(), Error> {
        let now = self.now;
        if self.zero_copy.is(id) {
            self.settle();
        }
        match self.slots.live(id).ok_or(Error::Stale)? {
            Kind::Conn(c) if c.can_send() => {
                #[cfg(feature = "tls")]
                if c.is_tls() {
                    return self.send_tls(id, &data);
                }
                let mut sent = 0;
                if data.len() >= DIRECT_SEND && c.can_write_now() {
                    sent = c.write_direct(&data, now);
                    self.stats.bytes_written += sent as u64;
                    if sent == data.len() {
                        return Ok(());
                    }
                }
                c.push_owned(data, sent);
                self.after_queued(id)
            }
            Kind::Conn(_) => Err(Error::Closing),
            Kind::Dgram(_) => self.send_dgram(id, &data, None),
            _ => Err(Error::WrongKind),
        }
    }

    /// Queues several slices as one send: with nothing queued they are
    /// written at once with one `sendmsg` (writev), and what the kernel
    /// leaves is queued; otherwise they are appended to the queue.
    pub(crate) fn send_vectored(&mut self, id: ConnId, bufs: &[&[u8]]) -> Result<(), Error> {
        let now = self.now;
        if self.zero_copy.is(id) {
            self.settle();
        }
        match self.slots.live(id).ok_or(Error::Stale)? {
            Kind::Conn(c) if c.can_send() => {
                #[cfg(feature = "tls")]
                if c.is_tls() {
                    return self.send_tls(id, &bufs.concat());
                }
                let mut skip = 0;
                // As `send`: small messages wait for the turn's one write.
                if c.can_write_now() && bufs.iter().map(|b| b.len()).sum::<usize>() >= DIRECT_SEND {
                    skip = c.write_vectored(bufs, now);
                    self.stats.bytes_written += skip as u64;
                }
                let mut queued = false;
                for b in bufs {
                    if skip >= b.len() {
                        skip -= b.len(); // sent whole
                        continue;
                    }
                    c.push(&b[skip..]);
                    skip = 0;
                    queued = true;
                }
                if !queued {
                    return Ok(());
                }
                self.after_queued(id)
            }
            Kind::Conn(_) => Err(Error::Closing),
            Kind::Dgram(_) => self.send_dgram(id, &bufs.concat(), None),
            _ => Err(Error::WrongKind),
        }
    }

    /// Ends the zero-copy window of the running `on_data`: a recorded reply
    /// is copied into its connection's queue, to go out before the next poll
    /// like any other.
    #[cold]
    #[inline(never)]
    pub(crate) fn settle(&mut self) {
        if let Some((id, reply)) = self.zero_copy.close() {
            let _ = self.enqueue(ConnId::from_u64(id), reply.bytes());
        }
    }

    /// Drops the window without writing (its connection is being closed
    /// after a panic).
    pub(crate) fn drop_zero_copy(&mut self) {
        let _ = self.zero_copy.close();
    }

    /// `send` by copying into the connection's queue: one slot lookup and a
    /// copy in the common case (a live, open stream under its high-water
    /// mark).
    #[inline(never)]
    fn send_queued(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let high = self.queue_check;
        if let Some(c) = self.slots.conn(id) {
            if c.can_send() {
                #[cfg(feature = "tls")]
                if c.is_tls() {
                    return self.send_tls(id, data);
                }
                if data.len() >= DIRECT_SEND || !c.push_in_place(data) {
                    return self.send_grow(id, data);
                }
                if c.mark_pending() {
                    self.pending.push(id);
                }
                if c.queued() > high {
                    return self.over_high_water(id);
                }
                return Ok(());
            }
        }
        self.send_slow(id, data)
    }

    /// `send` when the queue must grow, or for a large send: straight to
    /// the socket when nothing is queued (copying it into the queue first
    /// would cost a copy, and past the kept buffer an allocation, per
    /// message, and combining gains nothing at this size); what the kernel
    /// does not take is queued.
    #[cold]
    #[inline(never)]
    fn send_grow(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let now = self.now;
        let Some(c) = self.slots.conn(id) else {
            return Err(Error::Stale);
        };
        let mut n = 0;
        if data.len() >= DIRECT_SEND && c.can_write_now() {
            n = c.write_direct(data, now);
            self.stats.bytes_written += n as u64;
            if n == data.len() {
                return Ok(());
            }
        }
        self.enqueue(id, &data[n..])
    }

    /// Appends to a live connection's queue (growing it), marks it pending
    /// and applies the high-water mark.
    fn enqueue(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(c) = self.slots.conn(id) else {
            return Err(Error::Stale);
        };
        c.push(data);
        self.after_queued(id)
    }

    /// After bytes were added to a connection's queue: it is flushed before
    /// the next poll, and the high-water mark (or the hard cap) applies.
    fn after_queued(&mut self, id: ConnId) -> Result<(), Error> {
        let limit = self.queue_check;
        let over = self
            .slots
            .conn(id)
            .is_some_and(|c| c.queued_for_limits() > limit);
        self.mark_pending(id);
        if over {
            return self.over_high_water(id);
        }
        Ok(())
    }

    #[cold]
    fn send_slow(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        match self.entry(id)? {
            Kind::Conn(_) => Err(Error::Closing),
            Kind::Dgram(_) => self.send_dgram(id, data, None),
            _ => Err(Error::WrongKind),
        }
    }

    /// The queue passed the high-water mark: pause reading, or past the hard
    /// cap, close.
    #[cold]
    fn over_high_water(&mut self, id: ConnId) -> Result<(), Error> {
        let max = self.config.max_write_queue;
        let Some(c) = self.slots.conn(id) else {
            return Err(Error::Stale);
        };
        if c.queued_for_limits() > max {
            self.close(id, CloseReason::WriteQueueFull, true);
            return Err(Error::QueueFull);
        }
        // TLS: reading goes on until the handshake completes (it needs the
        // peer's messages); the pause, and its notice, follow on_open.
        #[cfg(feature = "tls")]
        if c.tls_handshaking() {
            return Ok(());
        }
        // While connecting, the handler has not heard `on_open`: it hears
        // of the pause right after it (`finish_connect`).
        if c.pause() && !c.is_connecting() {
            self.notices.push_back(Notice::Backpressure(id, true));
        }
        Ok(())
    }

    /// Sends a datagram, or queues it while the kernel refuses (bounded).
    pub(crate) fn send_dgram(
        &mut self,
        id: ConnId,
        data: &[u8],
        to: Option<socket2::SockAddr>,
    ) -> Result<(), Error> {
        let limit = self.config.datagram_queue;
        let Some(Kind::Dgram(d)) = self.slots.live(id) else {
            return Err(self.why_not(id));
        };
        if d.queue.is_empty() && !d.blocked {
            match d.sock.send_to(data, to.as_ref()) {
                Ok(_) => {
                    self.stats.datagrams_sent += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => d.blocked = true,
                Err(e) => return Err(Error::Io(e)),
            }
        }
        if d.queue.len() >= limit {
            self.stats.datagrams_dropped += 1;
            return Err(Error::Full);
        }
        d.queue.push_back((data.to_vec(), to));
        Ok(())
    }

    /// WRITABLE on a datagram socket: sends queued datagrams until the
    /// kernel refuses.
    pub(crate) fn flush_dgram(&mut self, id: ConnId) {
        let Some(Kind::Dgram(d)) = self.slots.live(id) else {
            return;
        };
        if !d.blocked {
            return;
        }
        d.blocked = false;
        while let Some((data, to)) = d.queue.front() {
            match d.sock.send_to(data, to.as_ref()) {
                Ok(_) => self.stats.datagrams_sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    d.blocked = true;
                    return;
                }
                Err(e) => {
                    log::debug!("datagram on {id} to {to:?} dropped: {e}");
                    self.stats.datagrams_dropped += 1;
                }
            }
            d.queue.pop_front();
        }
    }

    /// Receives one datagram into `buf`: its length and source, `None` when
    /// there is none (or the socket is gone), an error to report otherwise.
    /// A datagram larger than `buf` is dropped, counted, and reported as
    /// `InvalidData`, never delivered cut short.
    pub(crate) fn recv_dgram(
        &mut self,
        id: ConnId,
        buf: &mut [u8],
    ) -> Option<io::Result<(usize, crate::Addr)>> {
        let Some(Kind::Dgram(d)) = self.slots.live(id) else {
            return None;
        };
        match d.sock.recv_from(buf) {
            Ok((n, from, false)) => {
                self.stats.datagrams_received += 1;
                Some(Ok((n, from)))
            }
            Ok((_, from, true)) => {
                self.stats.datagrams_received += 1;
                self.stats.datagrams_dropped += 1;
                Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a datagram from {from} larger than the {}-byte read buffer was truncated and dropped",
                        buf.len()
                    ),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(Err(e)),
            Err(e) => Some(Err(e)),
        }
    }

    // ----- Flushing -----

    /// Writes a pending connection's queue until it empties, the kernel
    /// refuses, or the write budget is spent (one `send` in the common
    /// case). True if the queue emptied and the connection is still open:
    /// the handler hears `on_drain`.
    #[inline(always)]
    pub(crate) fn write_conn(&mut self, id: ConnId) -> bool {
        let now = self.now;
        let budget = self.config.write_budget;
        let low = self.config.low_water;
        let Some(c) = self.slots.conn(id) else {
            return false;
        };
        let (sent, outcome, resumed) = c.flush(budget, low, now);
        self.stats.bytes_written += sent as u64;
        if outcome == Flush::Drained && !resumed {
            // A TLS handshake's records are no drain of the handler's.
            #[cfg(feature = "tls")]
            if c.tls_handshaking() {
                return false;
            }
            return true;
        }
        self.after_flush(id, outcome, resumed)
    }

    /// What follows a flush beyond "drained".
    #[cold]
    #[inline(never)]
    fn after_flush(&mut self, id: ConnId, outcome: Flush, resumed: bool) -> bool {
        if resumed {
            self.notices.push_back(Notice::Backpressure(id, false));
            self.mark_ready(id);
        }
        match outcome {
            Flush::Drained => true,
            Flush::Waiting => false,
            Flush::More => {
                self.mark_pending(id);
                false
            }
            Flush::Close(reason) => {
                self.close(id, reason, false);
                false
            }
            Flush::Failed(reason) => {
                self.close(id, reason, true);
                false
            }
        }
    }

    /// WRITABLE for a connection waiting for it: flush again.
    pub(crate) fn writable(&mut self, id: ConnId) {
        if let Some(c) = self.slots.conn(id) {
            c.unblock();
            self.mark_pending(id);
        }
    }

    // ----- Accepting and connecting -----

    /// Accepts one connection on a listener.
    pub(crate) fn accept(&mut self, id: ConnId) -> Accept {
        let Some(Kind::Listener { l, paused }) = self.slots.live(id) else {
            return Accept::Done;
        };
        if *paused {
            return Accept::Done;
        }
        #[cfg(feature = "tls")]
        let listener = id;
        let stream = match l.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accept::Done,
            Err(e) if crate::sock::is_fd_exhaustion(&e) => {
                *paused = true;
                self.fd_exhausted(id, e);
                return Accept::Exhausted;
            }
            Err(e) => {
                log::debug!("accept on {id}: {e}");
                return Accept::Skip;
            }
        };
        crate::sock::after_accept(&stream, self.config.nodelay);
        let conn = Conn::new(stream, false, self.now, self.idle_ns());
        let cid = match self.insert(Kind::Conn(conn)) {
            Ok(cid) => cid,
            Err(e) => {
                log::warn!("registering an accepted connection: {e}");
                return Accept::Skip;
            }
        };
        #[cfg(feature = "tls")]
        if !self.tls_listeners.is_empty() && !self.tls_accepted(listener, cid) {
            return Accept::Skip;
        }
        self.stats.accepted += 1;
        if self.stats.connections >= self.config.max_connections {
            self.stats.refused += 1;
            return Accept::Conn(cid, true);
        }
        self.count(cid);
        Accept::Conn(cid, false)
    }

    /// Accepting paused on `id` after EMFILE: a retry timer, a warning at
    /// most once a second.
    #[cold]
    fn fd_exhausted(&mut self, id: ConnId, e: io::Error) {
        self.stats.accept_errors += 1;
        // Lingering sockets are the descriptors to give back first: closed
        // now, the listener is served again at once.
        if !self.lingering.is_empty() {
            log::debug!(
                "accept on {id}: {e}; closing {} lingering sockets",
                self.lingering.len()
            );
            self.lingering.close_all();
            self.stats.lingering = 0;
            self.ready.push(id);
            return;
        }
        self.accept_paused.push(id);
        let backoff = self.config.accept_backoff;
        let now = self.tick();
        if self
            .emfile_logged
            .is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000)
        {
            self.emfile_logged = Some(now);
            log::warn!("accept on {id}: {e}; pausing accepts for {backoff:?}");
        }
        self.timers.insert(
            now + clock::nanos(backoff),
            None,
            TimerKind::AcceptRetry(id),
        );
    }

    /// A listener comes back from its backoff (or is served again).
    pub(crate) fn unpause_listener(&mut self, id: ConnId) -> bool {
        match self.slots.live(id) {
            Some(Kind::Listener { paused, .. }) => {
                *paused = false;
                true
            }
            _ => false,
        }
    }

    /// Counts an open connection in `Stats::connections`.
    pub(crate) fn count(&mut self, id: ConnId) {
        if let Some(c) = self.slots.conn(id) {
            if !c.is_counted() {
                c.mark_counted();
                self.stats.connections += 1;
            }
        }
    }

    /// The idle timeout of a new connection, in ns (0: none).
    pub(crate) fn idle_ns(&self) -> u64 {
        self.config
            .idle_timeout
            .map_or(0, |d| clock::nanos(d).max(1))
    }

    /// WRITABLE (or an error) for a connection whose connect is in progress:
    /// open, failed, or not yet.
    pub(crate) fn finish_connect(&mut self, id: ConnId) {
        let now = self.now;
        let Some(c) = self.slots.conn(id) else { return };
        let res = match c.stream().take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match crate::sock::addr_of(c.stream().as_fd(), true) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Err(e),
            },
        };
        match res {
            Err(e) => self.fail_connect(id, e),
            Ok(()) => {
                let paused = c.is_paused();
                #[cfg(feature = "tls")]
                let tls = c.is_tls();
                if c.connected(now) {
                    self.mark_pending(id);
                }
                self.count(id);
                self.stats.connected += 1;
                // TLS: the handler hears on_open once the handshake completes.
                #[cfg(feature = "tls")]
                if tls {
                    self.mark_ready(id);
                    return;
                }
                self.notices.push_back(Notice::Open(id));
                if paused {
                    // Sent past the high-water mark while connecting.
                    self.notices.push_back(Notice::Backpressure(id, true));
                }
                self.mark_ready(id);
            }
        }
    }

    /// A connection opened outside the accept path (adopted, a connected
    /// datagram socket): the handler hears `on_open`.
    pub(crate) fn opened(&mut self, id: ConnId) {
        self.count(id);
        self.notices.push_back(Notice::Open(id));
    }

    // ----- Closing -----

    /// Takes a socket out of its slot (left as a tombstone until the handler
    /// is told) and deregisters it: the one way out of the loop, for close,
    /// abort, detach and a failed connect.
    fn take(&mut self, id: ConnId) -> Result<Kind, Error> {
        self.take_from_poll(id, true)
    }

    /// `take`; a stream connection stays registered unless `conn_too`: its
    /// descriptor is about to be closed (which takes it out of the poll
    /// set) or to linger under another token (`close`), and a system call
    /// is saved.
    fn take_from_poll(&mut self, id: ConnId, conn_too: bool) -> Result<Kind, Error> {
        let mut kind = std::mem::replace(self.entry(id)?, Kind::Closed);
        let registry = self.poller.registry();
        let _ = match &mut kind {
            Kind::Listener { l, .. } => registry.deregister(l.source()),
            Kind::Conn(c) if conn_too => registry.deregister(c.stream_mut().source()),
            Kind::Conn(_) => Ok(()),
            Kind::Dgram(d) => registry.deregister(d.sock.source()),
            Kind::Fd(fd) => registry.deregister(&mut mio::unix::SourceFd(&fd.as_raw_fd())),
            Kind::Closed | Kind::Vacant => Ok(()),
        };
        if let Kind::Conn(c) = &kind {
            if c.is_counted() {
                self.stats.connections -= 1;
            }
        }
        // A descriptor is about to come free: listeners that ran out retry
        // now rather than when their backoff ends.
        for l in self.accept_paused.drain(..) {
            self.ready.push(l);
        }
        Ok(kind)
    }

    /// Closes a socket now (with RST when `abort`); the handler hears
    /// `on_close` (or `on_connect_failed` for a connect in progress). False
    /// for a stale id.
    pub(crate) fn close(&mut self, id: ConnId, reason: CloseReason, abort: bool) -> bool {
        let Ok(kind) = self.take_from_poll(id, false) else {
            return false;
        };
        let notify = match kind {
            #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
            Kind::Conn(mut c) => {
                self.stats.closed += 1;
                #[cfg(feature = "tls")]
                cancel_tls_deadline(&mut self.timers, &mut c);
                let connecting = c.is_connecting();
                // A TLS client that has not completed its handshake has not
                // opened either.
                #[cfg(feature = "tls")]
                let connecting = connecting || c.tls_client_handshaking();
                let mut stream = c.into_stream();
                if abort {
                    crate::sock::set_abortive(stream.as_fd());
                } else if !stream.linger_close() {
                    self.linger(stream);
                }
                if connecting {
                    // Never opened: the handler hears of a failed connect.
                    // (A TLS client's handshake can end for any reason.)
                    let err = match reason {
                        CloseReason::Tls => io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the TLS handshake failed or timed out",
                        ),
                        CloseReason::Reset => io::ErrorKind::ConnectionReset.into(),
                        CloseReason::PeerClosed => io::ErrorKind::UnexpectedEof.into(),
                        CloseReason::Error(kind) => kind.into(),
                        _ => io::Error::new(
                            io::ErrorKind::Interrupted,
                            format!("connect abandoned: {reason:?}"),
                        ),
                    };
                    self.notices.push_back(Notice::ConnectFailed(id, err));
                    return true;
                }
                true
            }
            Kind::Listener { mut l, .. } => {
                #[cfg(feature = "tls")]
                self.tls_listeners.retain(|(l, _)| *l != id);
                l.unlink();
                false
            }
            Kind::Dgram(mut d) => {
                d.sock.unlink();
                true
            }
            Kind::Fd(_) | Kind::Closed | Kind::Vacant => false,
        };
        self.notices.push_back(Notice::Closed(id, reason, notify));
        true
    }

    /// Keeps a closed TCP socket whose peer has not closed yet, reading
    /// until its end of file (see `linger`); closes it now if lingering is
    /// off or full.
    #[cold]
    fn linger(&mut self, stream: Stream) {
        let timeout = self.config.linger_timeout;
        if timeout.is_zero()
            || !self
                .lingering
                .add(self.poller.registry(), stream, self.now, timeout)
        {
            return;
        }
        self.stats.lingering = self.lingering.len();
        if self.linger_sweep.is_none() {
            let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            let at = self.tick() + clock::nanos(period);
            let id = self.timers.insert(at, Some(period), TimerKind::LingerSweep);
            self.linger_sweep = Some(id);
        }
    }

    /// An event for a lingering socket.
    #[cold]
    pub(crate) fn linger_ready(&mut self, id: ConnId, buf: &mut [u8]) {
        self.lingering.ready(id, buf);
        self.stats.lingering = self.lingering.len();
    }

    /// The linger sweep: closes the sockets past their deadline; the sweep
    /// stops once none is left.
    pub(crate) fn linger_sweep(&mut self) {
        let now = self.tick();
        if !self.lingering.expire(now) {
            if let Some(id) = self.linger_sweep.take() {
                self.timers.cancel(id);
            }
        }
        self.stats.lingering = self.lingering.len();
    }

    /// Closes once the write queue is flushed.
    pub(crate) fn close_graceful(&mut self, id: ConnId, reason: CloseReason) -> Result<(), Error> {
        let now = match self.entry(id)? {
            Kind::Conn(c) => {
                // A TLS handshake not completed: nothing sent can go; it
                // ends now (a client's as a connect abandoned).
                #[cfg(feature = "tls")]
                if c.tls_handshaking() {
                    self.close(id, reason, false);
                    return Ok(());
                }
                #[cfg(feature = "tls")]
                if c.can_send() {
                    c.tls_close_notify();
                }
                c.ask_close(reason)
            }
            _ => true,
        };
        if now {
            self.close(id, reason, false);
        } else {
            self.mark_pending(id);
        }
        Ok(())
    }

    /// An outbound connect failed: the handler hears of it, not of a close.
    pub(crate) fn fail_connect(&mut self, id: ConnId, err: io::Error) {
        if self.take(id).is_ok() {
            self.notices.push_back(Notice::ConnectFailed(id, err));
        }
    }

    /// A datagram socket made by `connect` whose connect failed at once.
    pub(crate) fn fail_dgram_connect(&mut self, id: ConnId, err: io::Error) {
        if let Ok(Kind::Dgram(mut d)) = self.take(id) {
            d.sock.unlink();
        }
        self.notices.push_back(Notice::ConnectFailed(id, err));
    }

    /// Takes a socket out for `detach`: the handler hears
    /// [`CloseReason::Detached`].
    pub(crate) fn detach(&mut self, id: ConnId) -> Result<Kind, Error> {
        if matches!(self.entry(id)?, Kind::Fd(_)) || self.is_tls(id) {
            return Err(Error::WrongKind);
        }
        let kind = self.take(id)?;
        if let Kind::Conn(c) = &kind {
            if c.is_connecting() {
                // Never opened: the handler hears of a connect that ended,
                // as for a close while connecting, not of a close.
                let err = io::Error::new(io::ErrorKind::Interrupted, "connect abandoned: detached");
                self.notices.push_back(Notice::ConnectFailed(id, err));
                return Ok(kind);
            }
        }
        let notify = !matches!(kind, Kind::Listener { .. });
        self.notices
            .push_back(Notice::Closed(id, CloseReason::Detached, notify));
        Ok(kind)
    }

    // ----- TLS -----

    /// Runs TLS with `config` on what the listener `id` accepts.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_listen(&mut self, id: ConnId, config: Arc<rustls::ServerConfig>) {
        self.tls_listeners.push((id, config));
    }

    /// A connection accepted on `listener`: made a TLS one if the listener
    /// is a tls:// one. False if that failed (the connection is closed).
    #[cfg(feature = "tls")]
    #[cold]
    #[inline(never)]
    fn tls_accepted(&mut self, listener: ConnId, id: ConnId) -> bool {
        let Some((_, config)) = self.tls_listeners.iter().find(|(l, _)| *l == listener) else {
            return true;
        };
        match crate::tls::TlsConn::server(config) {
            Ok(tls) => {
                if let Some(c) = self.slots.conn(id) {
                    c.set_tls(Box::new(tls));
                }
                self.tls_deadline(id);
                true
            }
            Err(e) => {
                log::warn!("{id}: TLS: {e}");
                self.close(id, CloseReason::Tls, true);
                false
            }
        }
    }

    /// Sets the handshake deadline of a new TLS connection.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_deadline(&mut self, id: ConnId) {
        let at = self.tick() + clock::nanos(self.config.tls_handshake_timeout);
        let timer = self.timers.insert(at, None, TimerKind::TlsHandshake(id));
        if let Some(tls) = self.slots.conn(id).and_then(Conn::tls_mut) {
            tls.set_deadline(timer);
        }
    }

    /// The handshake deadline of `id` passed: closed if still handshaking.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_timeout(&mut self, id: ConnId) {
        if self.slots.conn(id).is_some_and(|c| c.tls_handshaking()) {
            log::debug!("{id}: TLS handshake timeout");
            self.close(id, CloseReason::Tls, true);
        }
    }

    /// Ciphertext read from a TLS connection: fed to its session.
    #[cfg(feature = "tls")]
    #[cold]
    #[inline(never)]
    fn read_tls(&mut self, id: ConnId, cipher: &[u8]) -> Read {
        let now = self.now;
        let max = self.config.max_input;
        let Some(c) = self.slots.conn(id) else {
            return Read::Done;
        };
        if c.holds_no_input() {
            c.touch(now);
        }
        let before = c.queued();
        let (fed, fits) = c.tls_feed(cipher, max);
        if c.queued() != before {
            self.mark_pending(id); // handshake messages, alerts, tickets
        }
        match fed {
            crate::tls::Fed::Error => {
                // The alert goes out first, then the connection closes.
                if self
                    .slots
                    .conn(id)
                    .is_some_and(|c| !c.ask_close(CloseReason::Tls))
                {
                    self.mark_pending(id);
                } else {
                    self.close(id, CloseReason::Tls, false);
                }
                Read::Failed
            }
            crate::tls::Fed::Ok { opened, eof } => {
                if !fits {
                    self.input_too_large(id);
                    return Read::Failed;
                }
                if opened {
                    if let Some(c) = self.slots.conn(id) {
                        cancel_tls_deadline(&mut self.timers, c);
                        c.tls_opened();
                    }
                    self.notices.push_back(Notice::Open(id));
                    // What was sent during the handshake is in the queue
                    // now: past the high-water mark, the pause follows on_open.
                    if self.after_queued(id).is_err() {
                        return Read::Failed;
                    }
                }
                Read::Tls(cipher.len(), eof)
            }
        }
    }

    /// True if a connection holds input back (to offer it).
    #[cfg(feature = "tls")]
    pub(crate) fn holds_input(&mut self, id: ConnId) -> bool {
        self.slots.conn(id).is_some_and(|c| !c.holds_no_input())
    }

    /// A TLS connection's send: encrypted into its queue.
    #[cfg(feature = "tls")]
    #[cold]
    #[inline(never)]
    fn send_tls(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(c) = self.slots.conn(id) else {
            return Err(Error::Stale);
        };
        c.tls_send(data);
        self.after_queued(id)
    }

    // ----- Idle time -----

    /// Makes sure the idle sweep runs often enough for `timeout`.
    pub(crate) fn ensure_sweep(&mut self, timeout: Duration) {
        let tick = (timeout / 8).clamp(Duration::from_millis(5), Duration::from_secs(1));
        if let Some((_, cur)) = self.sweep {
            if cur <= tick {
                return;
            }
        }
        if let Some((old, _)) = self.sweep.take() {
            self.timers.cancel(old);
        }
        let at = self.tick() + clock::nanos(tick);
        let id = self.timers.insert(at, Some(tick), TimerKind::IdleSweep);
        self.sweep = Some((id, tick));
    }

    /// Closes every connection that made no progress for its idle timeout,
    /// and frees the kept output buffers of connections quiet for two ticks.
    ///
    /// Activity is stamped with the coarse loop clock, which may lag by up
    /// to a tick (an eighth of the timeout), so a connection counts as idle
    /// only after its timeout plus a tick: never early, at most a quarter
    /// late.
    pub(crate) fn sweep_idle(&mut self, scratch: &mut Vec<ConnId>) {
        let now = self.now;
        let tick = self.sweep.map_or(0, |(_, t)| clock::nanos(t));
        scratch.clear();
        for (id, kind) in self.slots.iter_mut() {
            if let Kind::Conn(c) = kind {
                if c.sweep(now, tick) {
                    scratch.push(id);
                }
            }
        }
        for &id in scratch.iter() {
            let Some(c) = self.slots.conn(id) else {
                continue;
            };
            if c.is_connecting() {
                self.fail_connect(id, io::ErrorKind::TimedOut.into());
            } else if c.is_closing() {
                // Already closing and still no progress: the peer does not read.
                self.close(id, CloseReason::IdleTimeout, true);
            } else {
                log::debug!("{id}: idle timeout");
                let _ = self.close_graceful(id, CloseReason::IdleTimeout);
            }
        }
    }
}

/// An event reported the peer's end of file for a connection not being
/// read: remembered, so the read that resumes it goes on to meet it.
#[cold]
#[inline(never)]
fn note_read_closed(c: &mut Conn, ready: Readiness) {
    if ready.read_closed() {
        c.note_read_closed();
    }
}

/// Cancels a TLS connection's handshake deadline (the handshake completed,
/// or the connection closes), so that no timer waits out the full timeout
/// for nothing.
#[cfg(feature = "tls")]
fn cancel_tls_deadline(timers: &mut Timers, c: &mut Conn) {
    if let Some(timer) = c.tls_mut().and_then(crate::tls::TlsConn::take_deadline) {
        timers.cancel(timer);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Socket files this loop created go with it, even without a graceful stop.
        for (_, kind) in self.slots.iter_mut() {
            match kind {
                Kind::Listener { l, .. } => l.unlink(),
                Kind::Dgram(d) => d.sock.unlink(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_counts_its_own_generations() {
        let mut s = Slots::new();
        let a = s.next_id().unwrap();
        s.insert(a, Kind::Closed);
        let b = s.next_id().unwrap();
        s.insert(b, Kind::Closed);
        assert_eq!((a.key, a.gen, b.key, b.gen), (0, 1, 1, 1));
        s.remove(a);
        let c = s.next_id().unwrap();
        assert_eq!(
            (c.key, c.gen),
            (0, 2),
            "slot 0 reused with its next generation"
        );
        s.insert(c, Kind::Closed);
        assert!(s.named(a).is_none(), "the old id names nothing");
        assert!(s.named(c).is_some());
        s.remove(a); // stale: no effect
        assert!(s.named(c).is_some());
    }

    #[test]
    fn a_slot_is_retired_before_its_generation_wraps() {
        let mut s = Slots::new();
        let a = s.next_id().unwrap();
        s.insert(a, Kind::Closed);
        s.slots[0].gen = GEN_LIMIT - 1;
        s.remove(ConnId::new(0, GEN_LIMIT - 1));
        let b = s.next_id().unwrap();
        assert_eq!((b.key, b.gen), (0, GEN_LIMIT));
        s.insert(b, Kind::Closed);
        s.remove(b);
        let c = s.next_id().unwrap();
        assert_eq!(c.key, 1, "slot 0 is retired, never reused");
        assert_eq!(c.gen, 1);
        assert!(ConnId::new(u32::MAX - 1, GEN_LIMIT).token().0 < crate::poller::RESERVED);
    }
}
