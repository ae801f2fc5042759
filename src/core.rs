//! The loop's state that callbacks may touch through a [`Context`]: the slab
//! of sockets, timers, queues, limits and counters. The dispatch that calls
//! the handler lives in `event_loop.rs`; nothing here calls the handler, it
//! leaves [`Notice`]s that the dispatcher delivers once the current callback
//! has returned.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Poll};

use crate::remote::Shared;
use crate::sock::{Dgram, Listener, Stream};
use crate::timer::{TimerKind, Timers};
use crate::{CloseReason, Config, ConnId, Error, Stats, TimerId};

// Connection flags.
pub(crate) const CONNECTING: u16 = 1 << 0; // outbound connect in progress
pub(crate) const CLOSING: u16 = 1 << 1; // graceful close: flush, then close
pub(crate) const SHUTDOWN: u16 = 1 << 2; // shut the write side once the queue drains
pub(crate) const WRITE_SHUT: u16 = 1 << 3; // the write side is shut
pub(crate) const EOF: u16 = 1 << 4; // the peer closed its write side
pub(crate) const PAUSED: u16 = 1 << 5; // reading paused: write queue above high water
pub(crate) const PENDING: u16 = 1 << 6; // in `Core::pending`
pub(crate) const READY: u16 = 1 << 7; // in `Core::ready`
pub(crate) const BLOCKED: u16 = 1 << 8; // the kernel refused a write: wait for WRITABLE
pub(crate) const COUNTED: u16 = 1 << 9; // counted in `Stats::connections`

// Stop states (`Core::stop`), one byte so that the loop tests them at once.
pub(crate) const STOP_ASKED: u8 = 1 << 0; // a stop was asked for; the dispatcher begins it
pub(crate) const STOPPING: u8 = 1 << 1; // a graceful stop is draining
pub(crate) const STOP_NOW: u8 = 1 << 2; // stop at once: abort what is left

/// An emptied output buffer up to this capacity stays with its connection,
/// so a steady stream of messages does not allocate; a larger one (grown by a
/// burst) is freed as soon as it drains. The idle sweep frees the small ones
/// of connections that went quiet, so an idle connection holds no buffer.
const KEEP_BUF: usize = 8 * 1024;
/// A send at least this large to an empty queue is written at once (see
/// `Core::send_direct`).
const DIRECT_SEND: usize = 16 * 1024;

/// A stream connection.
pub(crate) struct Conn {
    pub(crate) stream: Stream,            // the socket
    pub(crate) input: Vec<u8>,            // unconsumed input; no allocation while empty
    pub(crate) output: Vec<u8>,           // queued output; `output[written..]` is unsent
    pub(crate) written: usize,            // bytes of `output` already sent
    pub(crate) flags: u16,                // CONNECTING, CLOSING, …
    pub(crate) close_reason: CloseReason, // the reason a graceful close will report
    pub(crate) last_active: u64,          // last progress (loop clock, ns), for the idle timeout
    pub(crate) idle_ns: u64,              // this connection's idle timeout in ns; 0: none
}

impl Conn {
    pub(crate) fn new(stream: Stream, flags: u16, now: u64, idle: Option<Duration>) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            flags,
            close_reason: CloseReason::Closed,
            last_active: now,
            idle_ns: idle.map_or(0, |d| crate::clock::nanos(d).max(1)),
        }
    }

    #[inline]
    pub(crate) fn queued(&self) -> usize {
        self.output.len() - self.written
    }
}

/// A datagram socket.
pub(crate) struct DgramEntry {
    pub(crate) sock: Dgram,                                           // the socket
    pub(crate) queue: VecDeque<(Vec<u8>, Option<socket2::SockAddr>)>, // datagrams the kernel refused, to retry on WRITABLE
    pub(crate) blocked: bool, // the kernel refused: wait for WRITABLE
}

/// What a slab slot holds.
pub(crate) enum Kind {
    Listener {
        l: Listener,
        paused: bool,
    }, // paused: accepting backs off after EMFILE
    Conn(Conn),
    Dgram(DgramEntry),
    Fd(RawFd), // a user's fd, not owned
    /// Closed, waiting for its notice to be delivered; the slot is not reused
    /// until then, so per-connection state cannot be handed to a newcomer.
    Closed,
}

pub(crate) struct Entry {
    pub(crate) gen: u32,   // matches ConnId::gen while this socket lives; 0: vacant
    pub(crate) kind: Kind, // the socket
}

/// The sockets by slot: a `Vec` with a free list. A vacant slot holds
/// generation 0, which no id carries, and `Kind::Closed`, so a lookup needs
/// only the generation check an id needs anyway (a slab would add its own
/// occupied/vacant match).
pub(crate) struct Entries {
    slots: Vec<Entry>, // by key
    free: Vec<u32>,    // vacant keys, the last freed reused first
    len: usize,        // occupied slots
}

impl Entries {
    fn with_capacity(n: usize) -> Entries {
        Entries {
            slots: Vec::with_capacity(n),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The slot at `key`, occupied or not: callers compare generations.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut Entry> {
        self.slots.get_mut(key)
    }

    /// The slot at `key`, occupied or not: callers compare generations.
    #[inline(always)]
    pub(crate) fn get(&self, key: usize) -> Option<&Entry> {
        self.slots.get(key)
    }

    /// Occupied slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Puts `entry` (whose generation is not 0) in a free slot; its key.
    fn insert(&mut self, entry: Entry) -> usize {
        debug_assert_ne!(entry.gen, 0);
        self.len += 1;
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = entry;
                k as usize
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        }
    }

    /// The key the next `insert` will use.
    fn next_key(&self) -> usize {
        self.free.last().map_or(self.slots.len(), |&k| k as usize)
    }

    /// Frees an occupied slot.
    pub(crate) fn remove(&mut self, key: usize) {
        let Some(e) = self.slots.get_mut(key) else {
            return;
        };
        if e.gen == 0 {
            return;
        }
        *e = Entry {
            gen: 0,
            kind: Kind::Closed,
        };
        self.len -= 1;
        self.free.push(key as u32);
    }

    /// Occupied slots and their keys.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.slots.iter().enumerate().filter(|(_, e)| e.gen != 0)
    }

    /// Occupied slots and their keys, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Entry)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, e)| e.gen != 0)
    }
}

/// Something the dispatcher tells the handler once the current callback returns.
pub(crate) enum Notice {
    Open(ConnId),
    Closed(ConnId, CloseReason, bool), // the bool: tell the handler (false for listeners and fds)
    ConnectFailed(ConnId, io::Error),
    Backpressure(ConnId, bool),
}

pub(crate) struct Core {
    pub(crate) poll: Poll,                         // the one poll of this loop
    pub(crate) entries: Entries,                   // every socket, keyed by ConnId::key
    pub(crate) gen: u32,                           // the last generation handed out
    pub(crate) timers: Timers,                     // user and internal timers
    pub(crate) config: Config,                     // limits
    pub(crate) stats: Stats,                       // counters
    pub(crate) now: u64, // the loop clock (ns), coarse: read when timers are due and on rare paths
    pub(crate) timerfd: crate::clock::TimerFd, // wakes the poll at the next deadline
    pub(crate) pending: Vec<ConnId>, // sockets with output to flush before the next poll
    pub(crate) ready: Vec<ConnId>, // sockets to read again before blocking (budget cut, resumed)
    pub(crate) notices: VecDeque<Notice>, // for the handler, after the current callback
    pub(crate) stop: u8, // STOP_ASKED, STOPPING, STOP_NOW: 0 while running
    pub(crate) sweep: Option<(TimerId, Duration)>, // the idle sweep timer and its period
    pub(crate) accept_paused: Vec<ConnId>, // listeners backing off after EMFILE
    pub(crate) emfile_logged: Option<u64>, // last EMFILE warning, to log at most once a second
    pub(crate) shared: Arc<Shared>, // the waker and flags shared with handles
    /// The connection whose `on_data` is running, as `ConnId::as_u64`, while
    /// its first send may be a slice of the read buffer written without a
    /// copy when `on_data` returns (its queue empty, its write side open);
    /// 0 otherwise. Anything else done to that connection during the
    /// callback settles the deferred send first (`Core::settle`).
    pub(crate) hot: u64,
    pub(crate) deferred_at: usize, // the deferred send: its address in the read buffer
    pub(crate) deferred_len: usize, // and length (0: none)
    pub(crate) rbuf_at: usize,     // the loop's read buffer: its address
    pub(crate) rbuf_len: usize,    // and length
}

impl Core {
    pub(crate) fn new(poll: Poll, config: Config, shared: Arc<Shared>) -> io::Result<Core> {
        let timerfd = crate::clock::TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&timerfd.raw()),
            crate::event_loop::TIMER,
            Interest::READABLE,
        )?;
        let mut core = Core {
            timerfd,
            poll,
            entries: Entries::with_capacity(64),
            gen: 0,
            timers: Timers::new(),
            config,
            stats: Stats::default(),
            now: crate::clock::now(),
            pending: Vec::with_capacity(64),
            ready: Vec::new(),
            notices: VecDeque::new(),
            stop: 0,
            sweep: None,
            accept_paused: Vec::new(),
            emfile_logged: None,
            shared,
            hot: 0,
            deferred_at: 0,
            deferred_len: 0,
            rbuf_at: 0,
            rbuf_len: 0,
        };
        if let Some(t) = core.config.idle_timeout {
            core.ensure_sweep(t);
        }
        Ok(core)
    }

    /// Puts a socket in the slab and registers it.
    pub(crate) fn insert(&mut self, kind: Kind) -> io::Result<ConnId> {
        self.gen = self.gen.wrapping_add(1).max(1); // 0 marks a vacant slot
        let gen = self.gen;
        let key = u32::try_from(self.entries.next_key())
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "too many sockets"))?;
        let id = ConnId::new(key, gen);
        self.entries.insert(Entry { gen, kind });
        let entry = &mut self.entries.slots[key as usize];
        let registry = self.poll.registry();
        let res = match &mut entry.kind {
            Kind::Listener { l, .. } => {
                registry.register(l.source(), id.token(), Interest::READABLE)
            }
            Kind::Conn(c) => registry.register(
                c.stream.source(),
                id.token(),
                Interest::READABLE | Interest::WRITABLE,
            ),
            Kind::Dgram(d) => registry.register(
                d.sock.source(),
                id.token(),
                Interest::READABLE | Interest::WRITABLE,
            ),
            Kind::Fd(_) | Kind::Closed => Ok(()),
        };
        if let Err(e) = res {
            self.entries.remove(key as usize);
            return Err(e);
        }
        Ok(id)
    }

    /// The live entry an id names. For the connection whose `on_data` is
    /// running, settles a deferred send first, so what the caller sees or
    /// does to it follows every earlier send (and it cannot be closed or
    /// detached under a pending zero-copy write).
    #[inline]
    pub(crate) fn entry(&mut self, id: ConnId) -> Result<&mut Entry, Error> {
        if id.as_u64() == self.hot {
            self.settle();
        }
        live(&mut self.entries, id)
    }

    /// The stream connection an id names (settling a deferred send to it
    /// first, as `entry`).
    #[inline]
    pub(crate) fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        if id.as_u64() == self.hot {
            self.settle();
        }
        conn_in(&mut self.entries, id)
    }

    /// Ends the zero-copy window of the running `on_data`: a deferred send
    /// is copied into its connection's queue, to go out before the next poll
    /// like any other.
    #[cold]
    #[inline(never)]
    pub(crate) fn settle(&mut self) {
        let id = ConnId::from_u64(std::mem::take(&mut self.hot));
        let len = std::mem::take(&mut self.deferred_len);
        if len != 0 {
            // SAFETY: a deferred send names `len` bytes of the loop's read
            // buffer, which is not written while `on_data` runs.
            let data = unsafe { std::slice::from_raw_parts(self.deferred_at as *const u8, len) };
            let _ = self.enqueue(id, data);
        }
    }

    pub(crate) fn fd_of(&mut self, id: ConnId) -> Result<RawFd, Error> {
        use std::os::fd::AsRawFd;
        Ok(match &self.entry(id)?.kind {
            Kind::Listener { l, .. } => l.as_fd().as_raw_fd(),
            Kind::Conn(c) => c.stream.as_fd().as_raw_fd(),
            Kind::Dgram(d) => d.sock.as_fd().as_raw_fd(),
            Kind::Fd(fd) => *fd,
            Kind::Closed => return Err(Error::Stale),
        })
    }

    pub(crate) fn mark_pending(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            if c.flags & PENDING == 0 {
                c.flags |= PENDING;
                self.pending.push(id);
            }
        }
    }

    pub(crate) fn mark_ready(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            if c.flags & READY != 0 {
                return;
            }
            c.flags |= READY;
        }
        self.ready.push(id);
    }

    /// Queues bytes on a stream, or sends a datagram on a connected socket.
    #[inline(always)]
    pub(crate) fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        if id.as_u64() == self.hot {
            // The connection being read, sending (part of) what it was
            // offered: nothing to copy, the loop writes it when `on_data`
            // returns. Only the first send, and only while nothing else
            // touched the connection: order is kept.
            let off = (data.as_ptr() as usize).wrapping_sub(self.rbuf_at);
            if self.deferred_len == 0
                && off < self.rbuf_len
                && data.len().wrapping_sub(1) < self.rbuf_len - off
            {
                self.deferred_at = data.as_ptr() as usize;
                self.deferred_len = data.len();
                return Ok(());
            }
            self.settle();
        }
        self.send_queued(id, data)
    }

    /// `send` by copying into the connection's queue: one slab lookup and a
    /// copy in the common case (a live, open stream under its high-water
    /// mark).
    #[inline(never)]
    fn send_queued(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        if let Some(Entry {
            gen,
            kind: Kind::Conn(c),
        }) = self.entries.get_mut(id.key as usize)
        {
            if *gen == id.gen && c.flags & (CLOSING | SHUTDOWN | WRITE_SHUT) == 0 {
                let len = c.output.len();
                if data.len() > c.output.capacity() - len || data.len() >= DIRECT_SEND {
                    return self.send_grow(id, data);
                }
                // SAFETY: the spare capacity holds `data.len()` bytes (checked
                // above); `data` cannot overlap the queue, borrowed mutably here.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        c.output.as_mut_ptr().add(len),
                        data.len(),
                    );
                    c.output.set_len(len + data.len());
                }
                if c.flags & PENDING == 0 {
                    c.flags |= PENDING;
                    self.pending.push(id);
                }
                if len + data.len() - c.written > self.config.high_water {
                    return self.over_high_water(id);
                }
                return Ok(());
            }
        }
        self.send_slow(id, data)
    }

    /// `send` when the queue must grow, or for a large send.
    #[cold]
    #[inline(never)]
    fn send_grow(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(c) = conn_in(&mut self.entries, id) else {
            return Err(Error::Stale);
        };
        if data.len() >= DIRECT_SEND
            && c.written == c.output.len()
            && c.flags & (BLOCKED | CONNECTING) == 0
        {
            return self.send_direct(id, data);
        }
        self.enqueue(id, data)
    }

    /// A large send to an empty queue goes straight to the socket: copying
    /// it into the queue first would cost a copy (and, past [`KEEP_BUF`], an
    /// allocation) per message, and combining gains nothing at this size.
    /// Whatever the kernel does not take is queued as usual.
    #[inline(never)]
    fn send_direct(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(c) = conn_in(&mut self.entries, id) else {
            return Err(Error::Stale);
        };
        let res = c.stream.send(data);
        self.after_direct(id, data, res)
    }

    /// What follows a write of `data` straight to the socket (a large send,
    /// or a zero-copy reply) that returned `res`: the bytes are counted, and
    /// what the kernel did not take is queued. An error is queued too: the
    /// flush meets it again and closes with its reason.
    pub(crate) fn after_direct(
        &mut self,
        id: ConnId,
        data: &[u8],
        res: io::Result<usize>,
    ) -> Result<(), Error> {
        let now = self.now;
        let Some(c) = conn_in(&mut self.entries, id) else {
            return Err(Error::Stale);
        };
        let n = match res {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.flags |= BLOCKED;
                0
            }
            Err(_) => 0,
        };
        self.stats.bytes_written += n as u64;
        if n > 0 {
            c.last_active = now;
        }
        if n == data.len() {
            return Ok(());
        }
        self.enqueue(id, &data[n..])
    }

    /// Appends to a live connection's queue (growing it), marks it pending
    /// and applies the high-water mark: the out-of-line twin of `send`'s
    /// fast path.
    fn enqueue(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let high = self.config.high_water;
        let Some(c) = conn_in(&mut self.entries, id) else {
            return Err(Error::Stale);
        };
        c.output.extend_from_slice(data);
        let over = c.queued() > high;
        self.mark_pending(id);
        if over {
            return self.over_high_water(id);
        }
        Ok(())
    }

    #[cold]
    fn send_slow(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        match &self.entry(id)?.kind {
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
        let Some(c) = self.conn(id) else {
            return Err(Error::Stale);
        };
        if c.queued() > max {
            self.close(id, CloseReason::WriteQueueFull, true);
            return Err(Error::QueueFull);
        }
        if c.flags & PAUSED == 0 {
            c.flags |= PAUSED;
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
        let Kind::Dgram(d) = &mut live(&mut self.entries, id)?.kind else {
            return Err(Error::WrongKind);
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

    /// Sends queued datagrams until the kernel refuses.
    pub(crate) fn flush_dgram(&mut self, id: ConnId) {
        let Ok(Entry {
            kind: Kind::Dgram(d),
            ..
        }) = live(&mut self.entries, id)
        else {
            return;
        };
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

    /// Writes a pending connection's queue until it empties, the kernel
    /// refuses, or the write budget is spent (one `send` in the common case).
    /// Returns true if the queue emptied and the connection is still open.
    #[inline(always)]
    pub(crate) fn write_conn(&mut self, id: ConnId) -> bool {
        let now = self.now;
        let budget = self.config.write_budget;
        let Some(c) = conn_in(&mut self.entries, id) else {
            return false;
        };
        c.flags &= !PENDING;
        if c.flags & (BLOCKED | CONNECTING | PAUSED | CLOSING | SHUTDOWN) != 0
            || c.written != 0
            || c.output.is_empty()
            || c.output.len() > budget
            || c.output.capacity() > KEEP_BUF
        {
            return self.write_conn_slow(id, Ok(0));
        }
        // The common case: a small queue, sent whole by one `send`; the
        // buffer stays for the next message.
        let res = c.stream.send(&c.output);
        match res {
            Ok(n) if n == c.output.len() => {
                self.stats.bytes_written += n as u64;
                if n > 0 {
                    c.last_active = now;
                }
                c.output.clear();
                true
            }
            _ => self.write_conn_slow(id, res),
        }
    }

    /// `write_conn` beyond its common case; `first` is the result of a
    /// `send` of the whole queue already made (`Ok(0)`: none made).
    #[cold]
    #[inline(never)]
    fn write_conn_slow(&mut self, id: ConnId, first: io::Result<usize>) -> bool {
        let budget = self.config.write_budget;
        let now = self.now;
        let Some(c) = conn_in(&mut self.entries, id) else {
            return false;
        };
        if c.flags & (BLOCKED | CONNECTING) != 0 {
            return false; // WRITABLE (or the connect finishing) brings it back
        }
        let mut sent = 0;
        let mut more = false;
        let mut res = Some(first);
        while c.written < c.output.len() {
            let end = c.output.len().min(c.written + (budget - sent));
            let r = match res.take() {
                Some(r) => r,
                None => c.stream.send(&c.output[c.written..end]),
            };
            match r {
                Ok(n) => {
                    c.written += n;
                    sent += n;
                    if sent >= budget {
                        more = c.written < c.output.len();
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.flags |= BLOCKED;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.bytes_written += sent as u64;
                    self.close(id, CloseReason::from_io(&e), true);
                    return false;
                }
            }
        }
        self.stats.bytes_written += sent as u64;
        if sent > 0 {
            c.last_active = now;
        }
        self.after_write(id, more)
    }

    /// What follows a write beyond the fast path: reading resumed below low
    /// water, the buffer freed or compacted, a shutdown or close finished.
    #[cold]
    fn after_write(&mut self, id: ConnId, more: bool) -> bool {
        let low = self.config.low_water;
        let Some(c) = self.conn(id) else { return false };
        let mut resumed = false;
        if c.flags & PAUSED != 0 && c.queued() <= low {
            c.flags &= !PAUSED;
            resumed = true;
        }
        let empty = c.written == c.output.len();
        if empty {
            if c.output.capacity() > KEEP_BUF {
                c.output = Vec::new(); // a burst's memory goes back at once
            } else {
                c.output.clear();
            }
            c.written = 0;
            let flags = c.flags;
            let reason = c.close_reason;
            if flags & SHUTDOWN != 0 && flags & WRITE_SHUT == 0 {
                c.flags |= WRITE_SHUT;
                if let Err(e) = shutdown_write(&c.stream) {
                    log::debug!("shutdown {id}: {e}");
                }
            }
            if flags & CLOSING != 0 {
                self.close(id, reason, false);
                return false;
            }
        } else if c.written > c.output.len() / 2 {
            // Most of the buffer is sent: move the rest to the front, so the
            // buffer does not grow without bound under a steady trickle.
            let w = c.written;
            c.output.drain(..w);
            c.written = 0;
        }
        if resumed {
            self.notices.push_back(Notice::Backpressure(id, false));
            self.mark_ready(id);
        }
        if more {
            self.mark_pending(id);
        }
        empty
    }

    /// Closes a socket now: deregistered, the fd closed (with RST when
    /// `abort`), the slot left as a tombstone until the handler is told.
    pub(crate) fn close(&mut self, id: ConnId, reason: CloseReason, abort: bool) -> bool {
        let Ok(entry) = self.entry(id) else {
            return false;
        };
        let kind = std::mem::replace(&mut entry.kind, Kind::Closed);
        let registry = self.poll.registry();
        let notify = match kind {
            Kind::Conn(mut c) => {
                let _ = registry.deregister(c.stream.source());
                if abort {
                    crate::sock::set_abortive(c.stream.as_fd());
                } else {
                    linger_close(&mut c.stream);
                }
                if c.flags & COUNTED != 0 {
                    self.stats.connections -= 1;
                }
                self.stats.closed += 1;
                // A descriptor just came free: listeners that ran out retry now
                // rather than when their backoff ends.
                for l in self.accept_paused.drain(..) {
                    self.ready.push(l);
                }
                if c.flags & CONNECTING != 0 {
                    // Never opened: the handler hears of it as a failed connect.
                    let err = io::Error::new(
                        io::ErrorKind::Interrupted,
                        format!("connect abandoned: {reason:?}"),
                    );
                    self.notices.push_back(Notice::ConnectFailed(id, err));
                    return true;
                }
                true
            }
            Kind::Listener { mut l, .. } => {
                let _ = registry.deregister(l.source());
                l.unlink();
                false
            }
            Kind::Dgram(mut d) => {
                let _ = registry.deregister(d.sock.source());
                d.sock.unlink();
                true
            }
            Kind::Fd(fd) => {
                let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
                false
            }
            Kind::Closed => false,
        };
        self.notices.push_back(Notice::Closed(id, reason, notify));
        true
    }

    /// Closes once the write queue is flushed.
    pub(crate) fn close_graceful(&mut self, id: ConnId, reason: CloseReason) -> Result<(), Error> {
        let entry = self.entry(id)?;
        let Kind::Conn(c) = &mut entry.kind else {
            self.close(id, reason, false);
            return Ok(());
        };
        if c.flags & CLOSING != 0 {
            return Ok(());
        }
        if c.flags & CONNECTING != 0 || c.queued() == 0 {
            self.close(id, reason, false);
            return Ok(());
        }
        c.flags |= CLOSING;
        c.close_reason = reason;
        self.mark_pending(id);
        Ok(())
    }

    /// An outbound connect failed: the handler hears of it, not of a close.
    pub(crate) fn fail_connect(&mut self, id: ConnId, err: io::Error) {
        let Ok(entry) = self.entry(id) else { return };
        if let Kind::Conn(mut c) = std::mem::replace(&mut entry.kind, Kind::Closed) {
            let _ = self.poll.registry().deregister(c.stream.source());
        }
        self.notices.push_back(Notice::ConnectFailed(id, err));
    }

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
        self.now = crate::clock::now();
        let at = self.now + crate::clock::nanos(tick);
        let id = self.timers.insert(at, Some(tick), TimerKind::IdleSweep);
        self.sweep = Some((id, tick));
    }

    /// Closes every connection that made no progress for its idle timeout,
    /// and frees the kept output buffers of connections quiet for a tick (two
    /// on the coarse clock, whose stamps lag by up to one).
    ///
    /// Activity is stamped with the coarse loop clock, which may lag by up
    /// to a tick (an eighth of the timeout), so a connection counts as idle
    /// only after its timeout plus a tick: never early, at most a quarter
    /// late.
    pub(crate) fn sweep_idle(&mut self, scratch: &mut Vec<ConnId>) {
        let now = self.now;
        let tick = self.sweep.map_or(0, |(_, t)| crate::clock::nanos(t));
        scratch.clear();
        for (key, e) in self.entries.iter_mut() {
            if let Kind::Conn(c) = &mut e.kind {
                let quiet = now.saturating_sub(c.last_active);
                if c.idle_ns != 0 && quiet >= c.idle_ns.saturating_add(tick) {
                    scratch.push(ConnId::new(key as u32, e.gen));
                } else if quiet >= 2 * tick && c.queued() == 0 && c.output.capacity() != 0 {
                    c.output = Vec::new();
                    c.written = 0;
                }
            }
        }
        for &id in scratch.iter() {
            let flags = self.conn(id).map_or(0, |c| c.flags);
            if flags & CONNECTING != 0 {
                self.fail_connect(id, io::ErrorKind::TimedOut.into());
            } else if flags & CLOSING != 0 {
                // Already closing and still no progress: the peer does not read.
                self.close(id, CloseReason::IdleTimeout, true);
            } else {
                log::debug!("{id}: idle timeout");
                let _ = self.close_graceful(id, CloseReason::IdleTimeout);
            }
        }
    }

    /// True while any stream connection is open.
    pub(crate) fn has_streams(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, e)| matches!(e.kind, Kind::Conn(_)))
    }

    /// Every live id, for stop.
    pub(crate) fn ids(&self, out: &mut Vec<ConnId>) {
        out.clear();
        out.extend(
            self.entries
                .iter()
                .filter(|(_, e)| !matches!(e.kind, Kind::Closed))
                .map(|(k, e)| ConnId::new(k as u32, e.gen)),
        );
    }
}

/// The stream connection an id names, borrowing only the slab.
#[inline]
pub(crate) fn conn_in(entries: &mut Entries, id: ConnId) -> Option<&mut Conn> {
    match entries.get_mut(id.key as usize) {
        Some(Entry {
            gen,
            kind: Kind::Conn(c),
        }) if *gen == id.gen => Some(c),
        _ => None,
    }
}

/// The live entry an id names, borrowing only the slab.
#[inline]
pub(crate) fn live(entries: &mut Entries, id: ConnId) -> Result<&mut Entry, Error> {
    match entries.get_mut(id.key as usize) {
        Some(e) if e.gen == id.gen && !matches!(e.kind, Kind::Closed) => Ok(e),
        _ => Err(Error::Stale),
    }
}

/// Before a graceful close: send FIN, then discard what the peer already
/// sent. Closing a socket with unread input makes the kernel send RST, which
/// can destroy replies still in flight to the peer (the reason for nginx's
/// lingering close); this bounded drain removes the common case.
fn linger_close(s: &mut Stream) {
    let _ = shutdown_write(s);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

pub(crate) fn shutdown_write(s: &Stream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}

impl Drop for Core {
    fn drop(&mut self) {
        // Socket files this loop created go with it, even without a graceful stop.
        for (_, e) in self.entries.iter_mut() {
            match &mut e.kind {
                Kind::Listener { l, .. } => l.unlink(),
                Kind::Dgram(d) => d.sock.unlink(),
                _ => {}
            }
        }
    }
}
