//! Several share-nothing loops in one process: [`Group`], built on the
//! public API of [`EventLoop`] alone.
//!
//! Each loop runs an `EventLoop<Member<H>>` on a thread of its own (loop 0
//! on the thread that calls [`Group::run`]). `Member` wraps the user's
//! handler, forwards every callback to it, and carries the group's own
//! commands ([`Cmd`]) through the loop's message channel: connections
//! handed over by the acceptor, bytes and closes for a connection from
//! another loop or thread, tasks to run on the loop, and the stop.
//!
//! Stream listeners live on an acceptor: one more `EventLoop` on a thread of
//! its own that watches the listening sockets (`register_fd`), accepts, and
//! hands each std socket to the loop the balancing policy picks, which
//! adopts it. UDP gets one `SO_REUSEPORT` socket per loop, and
//! [`Balance::ReusePort`] does the same for TCP.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{
    Addr, CloseReason, Config, ConnId, Context, Endpoint, EventLoop, Handle, Handler, Interest,
    ListenOptions, Ready, SendError, Stats, StdSocket, TimerId, ToEndpoint, Transport, UnixAddr,
};

/// Each loop's message queue when [`Config::message_queue`] is `None`: a
/// group's channels are always bounded.
pub const DEFAULT_GROUP_QUEUE: usize = 16 * 1024;

/// How a group spreads the connections of a stream listener over its loops.
///
/// The policies but [`ReusePort`](Balance::ReusePort) run on the group's
/// acceptor: a thread of its own that accepts every connection and hands it
/// to the chosen loop. With one loop there is no acceptor: the loop listens
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Balance {
    /// Each new connection goes to the next loop in turn (the default).
    #[default]
    RoundRobin,
    /// Each new connection goes to the loop with the fewest connections
    /// (open, or handed over and not yet adopted); ties go round in turn.
    LeastConnections,
    /// A hash of the client's IP address (not its port) picks the loop, so
    /// one client lands on the same loop across reconnects. Unix clients,
    /// which have no IP address, go round in turn.
    SourceIpHash,
    /// No acceptor: every loop listens on the same TCP port with
    /// `SO_REUSEPORT` and the kernel spreads connections by a hash of the
    /// addresses. Cheapest per connection; the spread is only statistical,
    /// and [`Config::max_connections`] is enforced per loop (the group's
    /// maximum divided among the loops). Unix stream listeners, for which
    /// the kernel does not balance, use the acceptor round-robin.
    ReusePort,
}

/// A connection in a group: the loop it lives on and its id there.
///
/// Displayed as `LOOP:SLOT#GEN`, e.g. `2:1#3`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteId {
    index: u32, // the loop
    id: ConnId, // the connection on it
}

impl RemoteId {
    /// The connection `id` of loop `loop_index`.
    ///
    /// # Panics
    /// If `loop_index` does not fit in 32 bits.
    pub fn new(loop_index: usize, id: ConnId) -> RemoteId {
        let index = u32::try_from(loop_index).expect("a loop index fits in 32 bits");
        RemoteId { index, id }
    }

    /// The loop the connection lives on.
    pub fn loop_index(self) -> usize {
        self.index as usize
    }

    /// The connection's id on its loop.
    pub fn id(self) -> ConnId {
        self.id
    }
}

impl fmt::Debug for RemoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteId({}:{})", self.index, self.id)
    }
}

impl fmt::Display for RemoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.index, self.id)
    }
}

/// A closure run on a loop of a group with its handler and context; see
/// [`GroupHandle::run_on`].
pub type Task<H> = Box<dyn FnOnce(&mut H, &mut Context<'_>) + Send>;

/// What travels through a member loop's channel.
enum Cmd<H: Handler> {
    Adopt(StdSocket),  // a connection from the acceptor: adopt it
    Refuse(StdSocket), // one over the group's maximum: on_refuse, then close
    User(H::Msg),      // the user's message, for on_message
    Send(ConnId, Vec<u8>),
    Close(ConnId),
    Run(Task<H>),
    Stop, // behind everything sent before it
}

/// A loop's load, read by the acceptor; padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Load {
    open: AtomicUsize,     // the loop's Stats::connections, as last published
    inflight: AtomicUsize, // handed over by the acceptor, not yet adopted
    adopted: AtomicU64,    // connections adopted from the acceptor
    refused: AtomicU64,    // connections refused for the group's maximum
    done: AtomicBool,      // the loop's run has returned: nothing sent now is read
}

/// What the loops, the acceptor and every handle share.
struct Shared<H: Handler> {
    loads: Box<[Load]>,
    handles: OnceLock<Box<[Handle<Cmd<H>>]>>, // set once every loop exists
    acceptor: OnceLock<Handle<()>>,           // set when a listener needs one
    stopping: AtomicBool,
    undelivered: AtomicU64, // remote sends and closes that found no connection
    dropped: AtomicU64,     // accepted connections no loop could take
    failure: Mutex<Option<io::Error>>, // the first loop error or panic
    max_connections: usize,
}

impl<H: Handler> Shared<H> {
    fn handle(&self, index: usize) -> Option<&Handle<Cmd<H>>> {
        self.handles.get()?.get(index)
    }

    /// Stops every loop (and the acceptor) once: a stop of one is a stop of
    /// all.
    fn stop_all(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.signal_stop();
        }
    }

    /// The stop message to each loop, queued behind what was sent before it
    /// (the stop flag when the queue is full), and the acceptor's stop.
    fn signal_stop(&self) {
        if let Some(acceptor) = self.acceptor.get() {
            acceptor.stop();
        }
        for handle in self.handles.get().into_iter().flat_map(|h| h.iter()) {
            if handle.send(Cmd::Stop).is_err() {
                handle.stop();
            }
        }
    }

    fn fail(&self, e: io::Error) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(e);
        }
    }

    /// Load of a loop: open connections and those on their way.
    fn load(&self, index: usize) -> usize {
        let l = &self.loads[index];
        l.open.load(Ordering::Relaxed) + l.inflight.load(Ordering::Relaxed)
    }

    /// A loop's stats with what the group counts for it added in.
    fn loop_stats(&self, index: usize, mut stats: Stats) -> Stats {
        let l = &self.loads[index];
        stats.accepted += l.adopted.load(Ordering::Relaxed);
        stats.refused += l.refused.load(Ordering::Relaxed);
        stats
    }

    fn group_stats(&self, loops: Vec<Stats>) -> GroupStats {
        let mut total = Stats::default();
        for s in &loops {
            add_stats(&mut total, s);
        }
        total.refused += self.dropped.load(Ordering::Relaxed);
        GroupStats {
            loops,
            total,
            undelivered: self.undelivered.load(Ordering::Relaxed),
        }
    }
}

/// Adds every counter of `s` to `into`.
fn add_stats(into: &mut Stats, s: &Stats) {
    // Destructured whole, so that a new field of `Stats` fails to compile
    // here until it is summed too.
    let Stats {
        connections,
        accepted,
        connected,
        closed,
        refused,
        bytes_read,
        bytes_written,
        datagrams_received,
        datagrams_sent,
        datagrams_dropped,
        events,
        polls,
        messages,
        timers_fired,
        panics,
        accept_errors,
        lingering,
    } = s;
    into.connections += connections;
    into.accepted += accepted;
    into.connected += connected;
    into.closed += closed;
    into.refused += refused;
    into.bytes_read += bytes_read;
    into.bytes_written += bytes_written;
    into.datagrams_received += datagrams_received;
    into.datagrams_sent += datagrams_sent;
    into.datagrams_dropped += datagrams_dropped;
    into.events += events;
    into.polls += polls;
    into.messages += messages;
    into.timers_fired += timers_fired;
    into.panics += panics;
    into.accept_errors += accept_errors;
    into.lingering += lingering;
}

/// Counters of a group: each loop's [`Stats`] and their sum.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Each loop's counters, by loop index. Connections adopted from the
    /// acceptor count in `accepted`; those it refused for
    /// [`Config::max_connections`], in `refused` of the loop that told them.
    pub loops: Vec<Stats>,
    /// The sum over the loops; `refused` also counts connections that no
    /// loop could take (every queue full, or the group stopping).
    pub total: Stats,
    /// Sends and closes through a [`GroupHandle`] that found their
    /// connection closed or closing when they arrived.
    pub undelivered: u64,
}

thread_local! {
    /// The group (its shared state's address) and loop this thread runs.
    static CURRENT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// A cloneable, `Send` handle to every loop of a [`Group`]: from any loop or
/// thread, send bytes to or close a connection on any loop, message or run
/// a closure on any loop, read the counters, stop the group.
///
/// Every call queues a command on the target loop's channel and never
/// blocks. From one sender (a thread or a loop), commands to one loop
/// arrive in the order sent, none is lost while the loop runs, and each
/// channel is bounded ([`Config::message_queue`], or
/// [`DEFAULT_GROUP_QUEUE`]): a command to a full queue is given back as
/// [`SendError::Full`], for the sender to retry later (from a loop: on a
/// timer, never by spinning, since the full loop may be itself) or drop.
/// A loop out of range, or one that has stopped, gives
/// [`SendError::Closed`].
///
/// The commands go through the channel even to the sender's own loop: mixing
/// them with [`Context::send`] to the same connection does not keep order.
pub struct GroupHandle<H: Handler> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> Clone for GroupHandle<H> {
    fn clone(&self) -> Self {
        GroupHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<H: Handler> fmt::Debug for GroupHandle<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupHandle")
            .field("loops", &self.loops())
            .finish_non_exhaustive()
    }
}

/// Gives back what a refused command carried.
fn give_back<H: Handler, T>(e: SendError<Cmd<H>>, take: impl FnOnce(Cmd<H>) -> T) -> SendError<T> {
    match e {
        SendError::Full(cmd) => SendError::Full(take(cmd)),
        SendError::Closed(cmd) => SendError::Closed(take(cmd)),
    }
}

impl<H: Handler> GroupHandle<H> {
    fn post(&self, index: usize, cmd: Cmd<H>) -> Result<(), SendError<Cmd<H>>> {
        match self.shared.handle(index) {
            Some(_) if self.shared.loads[index].done.load(Ordering::Acquire) => {
                Err(SendError::Closed(cmd))
            }
            Some(handle) => handle.send(cmd),
            None => Err(SendError::Closed(cmd)),
        }
    }

    /// How many loops the group has.
    pub fn loops(&self) -> usize {
        self.shared.loads.len()
    }

    /// The index of the loop running on the calling thread, if it is one of
    /// this group's.
    pub fn current_loop(&self) -> Option<usize> {
        let (key, index) = CURRENT.with(Cell::get);
        (key == Arc::as_ptr(&self.shared) as usize).then_some(index)
    }

    /// Queues bytes for a connection on any loop; that loop sends them with
    /// [`Context::send`]. A connection closed or closing by the time they
    /// arrive is counted in [`GroupStats::undelivered`].
    ///
    /// # Errors
    /// Gives the bytes back: [`SendError::Full`] or [`SendError::Closed`].
    pub fn send(&self, to: RemoteId, data: impl Into<Vec<u8>>) -> Result<(), SendError<Vec<u8>>> {
        self.post(to.loop_index(), Cmd::Send(to.id, data.into()))
            .map_err(|e| {
                give_back(e, |cmd| match cmd {
                    Cmd::Send(_, data) => data,
                    _ => unreachable!("a refused send gives back the send"),
                })
            })
    }

    /// Closes a connection on any loop gracefully ([`Context::close`]),
    /// after the bytes this sender queued for it before. A connection
    /// already gone is counted in [`GroupStats::undelivered`].
    ///
    /// # Errors
    /// Gives the id back: [`SendError::Full`] or [`SendError::Closed`].
    pub fn close(&self, to: RemoteId) -> Result<(), SendError<RemoteId>> {
        self.post(to.loop_index(), Cmd::Close(to.id))
            .map_err(|e| give_back(e, |_| to))
    }

    /// Sends a message to the handler of loop `loop_index`, for its
    /// [`Handler::on_message`].
    ///
    /// # Errors
    /// Gives the message back: [`SendError::Full`] or [`SendError::Closed`].
    pub fn message(&self, loop_index: usize, msg: H::Msg) -> Result<(), SendError<H::Msg>> {
        self.post(loop_index, Cmd::User(msg)).map_err(|e| {
            give_back(e, |cmd| match cmd {
                Cmd::User(msg) => msg,
                _ => unreachable!("a refused message gives back the message"),
            })
        })
    }

    /// Runs `task` on loop `loop_index`, with that loop's handler and
    /// context, between two of its callbacks.
    ///
    /// # Errors
    /// Gives the task back: [`SendError::Full`] or [`SendError::Closed`].
    pub fn run_on(
        &self,
        loop_index: usize,
        task: impl FnOnce(&mut H, &mut Context<'_>) + Send + 'static,
    ) -> Result<(), SendError<Task<H>>> {
        self.post(loop_index, Cmd::Run(Box::new(task)))
            .map_err(|e| {
                give_back(e, |cmd| match cmd {
                    Cmd::Run(task) => task,
                    _ => unreachable!("a refused task gives back the task"),
                })
            })
    }

    /// Stops the whole group gracefully: the acceptor closes its listeners,
    /// and each loop, once it has handled what was queued for it before the
    /// stop, stops as [`Context::stop`] does (its connections flushed and
    /// closed within [`Config::drain_timeout`]).
    pub fn stop(&self) {
        self.shared.stop_all();
    }

    /// True once a stop of the group has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// The connections loop `loop_index` holds, with those the acceptor has
    /// handed it and it has not adopted yet, as last published by the loop
    /// (after each open and close). Zero for a loop out of range.
    pub fn connections(&self, loop_index: usize) -> usize {
        if loop_index < self.loops() {
            self.shared.load(loop_index)
        } else {
            0
        }
    }

    /// Each loop's counters and their sum, asked of the running loops.
    ///
    /// # Errors
    /// `WouldBlock` when called from one of the group's own loops (it would
    /// wait on itself: use [`Context::stats`] there); `TimedOut` when a loop
    /// did not answer within `timeout` (stopped, or busy).
    pub fn stats(&self, timeout: Duration) -> io::Result<GroupStats> {
        if self.current_loop().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "GroupHandle::stats from a loop of the group would wait on itself",
            ));
        }
        let (tx, rx) = mpsc::channel();
        for index in 0..self.loops() {
            let tx = tx.clone();
            let _ = self.run_on(index, move |_, cx| {
                let _ = tx.send((index, cx.stats().clone()));
            });
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        let mut loops: Vec<Option<Stats>> = vec![None; self.loops()];
        let mut missing = self.loops();
        while missing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((index, stats)) => {
                    loops[index] = Some(self.shared.loop_stats(index, stats));
                    missing -= 1;
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{missing} loop(s) did not report their stats"),
                    ))
                }
            }
        }
        Ok(self
            .shared
            .group_stats(loops.into_iter().flatten().collect()))
    }
}

/// The handler each loop runs: the user's, with the group's commands.
struct Member<H: Handler> {
    user: H,
    index: usize,
    shared: Arc<Shared<H>>,
    refusing: Vec<ConnId>, // adopted only to be refused: on_refuse, close, no on_close
}

impl<H: Handler> Member<H> {
    /// Publishes the loop's connection count for the acceptor.
    #[inline]
    fn publish(&self, cx: &Context<'_>) {
        self.shared.loads[self.index]
            .open
            .store(cx.stats().connections, Ordering::Relaxed);
    }

    fn adopt(&mut self, cx: &mut Context<'_>, socket: StdSocket, refuse: bool) {
        let load = &self.shared.loads[self.index];
        if self.shared.stopping.load(Ordering::Acquire) {
            drop(socket); // the group is stopping: the client reads end of file
        } else {
            match cx.adopt(socket) {
                Ok(id) if refuse => {
                    load.refused.fetch_add(1, Ordering::Relaxed);
                    self.refusing.push(id);
                }
                Ok(_) => {
                    load.adopted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => log::warn!("loop {}: adopting a connection: {e}", self.index),
            }
        }
        self.publish(cx);
        load.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes `id` off the refused list; true if it was on it.
    fn refused(&mut self, id: ConnId) -> bool {
        if self.refusing.is_empty() {
            return false;
        }
        match self.refusing.iter().position(|&r| r == id) {
            Some(at) => {
                self.refusing.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

impl<H: Handler + 'static> Handler for Member<H> {
    type Conn = H::Conn;
    type Msg = Cmd<H>;

    #[inline]
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut H::Conn) {
        self.publish(cx);
        if !self.refusing.is_empty() && self.refusing.contains(&id) {
            self.user.on_refuse(cx, id);
            let _ = cx.close(id);
            return;
        }
        self.user.on_open(cx, id, conn);
    }

    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: H::Conn,
        err: io::Error,
    ) {
        self.user.on_connect_failed(cx, id, conn, err);
    }

    #[inline]
    fn on_data(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut H::Conn,
        data: &[u8],
    ) -> usize {
        self.user.on_data(cx, id, conn, data)
    }

    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut H::Conn) {
        self.user.on_eof(cx, id, conn);
    }

    #[inline]
    fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut H::Conn) {
        self.user.on_drain(cx, id, conn);
    }

    fn on_backpressure(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut H::Conn,
        paused: bool,
    ) {
        self.user.on_backpressure(cx, id, conn, paused);
    }

    #[inline]
    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, conn: H::Conn, reason: CloseReason) {
        self.publish(cx);
        if self.refused(id) {
            return;
        }
        self.user.on_close(cx, id, conn, reason);
    }

    fn on_refuse(&mut self, cx: &mut Context<'_>, id: ConnId) {
        self.user.on_refuse(cx, id);
    }

    #[inline]
    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut H::Conn,
        data: &[u8],
        from: &Addr,
    ) {
        self.user.on_datagram(cx, id, conn, data, from);
    }

    fn on_error(&mut self, cx: &mut Context<'_>, id: ConnId, err: io::Error) {
        self.user.on_error(cx, id, err);
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        self.user.on_timer(cx, timer);
    }

    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut H::Conn,
        timer: TimerId,
    ) {
        self.user.on_conn_timer(cx, id, conn, timer);
    }

    fn on_message(&mut self, cx: &mut Context<'_>, cmd: Cmd<H>) {
        match cmd {
            Cmd::User(msg) => self.user.on_message(cx, msg),
            Cmd::Send(id, data) => {
                if let Err(e) = cx.send_owned(id, data) {
                    self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
                    log::debug!("loop {}: remote send to {id}: {e}", self.index);
                }
            }
            Cmd::Close(id) => {
                if cx.close(id).is_err() {
                    self.shared.undelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Cmd::Run(task) => task(&mut self.user, cx),
            Cmd::Adopt(socket) => self.adopt(cx, socket, false),
            Cmd::Refuse(socket) => self.adopt(cx, socket, true),
            Cmd::Stop => cx.stop(),
        }
    }

    fn on_fd_ready(&mut self, cx: &mut Context<'_>, id: ConnId, ready: Ready) {
        self.user.on_fd_ready(cx, id, ready);
    }

    fn on_stop(&mut self, cx: &mut Context<'_>) {
        self.shared.stop_all(); // a stop of one loop (a signal, Context::stop) stops them all
        self.user.on_stop(cx);
    }
}

/// A listening socket of the acceptor.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// A listener the acceptor watches, and how it balances.
struct Accepting {
    socket: StdListener,
    watch: Option<ConnId>, // its registration (a duplicate fd) on the acceptor's loop
    unlink: Option<PathBuf>, // the Unix socket file to remove when it closes
    balance: Balance,
    retry: bool, // a timer will accept again
}

impl Drop for Accepting {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

/// The acceptor's handler: accepts on its listeners and hands every
/// connection to a member loop.
struct Acceptor<H: Handler> {
    shared: Arc<Shared<H>>,
    listeners: Vec<Accepting>,
    timers: Vec<(TimerId, usize)>, // accept again on listener .1
    next: usize,                   // the round-robin cursor
    budget: usize,                 // accepts per turn (Config::accepts_per_turn)
    backoff: Duration,             // after running out of fds (Config::accept_backoff)
    warned: Option<Instant>,       // the last warning, at most one a second
}

impl<H: Handler> Acceptor<H> {
    fn accept(&mut self, cx: &mut Context<'_>, at: usize) {
        let mut retry = None;
        for _ in 0..self.budget {
            let accepted = match &self.listeners[at].socket {
                StdListener::Tcp(l) => l
                    .accept()
                    .map(|(s, peer)| (StdSocket::TcpStream(s), Some(peer.ip()))),
                StdListener::Unix(l) => l.accept().map(|(s, _)| (StdSocket::UnixStream(s), None)),
            };
            match accepted {
                Ok((socket, ip)) => {
                    let balance = self.listeners[at].balance;
                    self.dispatch(socket, ip, balance);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::sock::is_fd_exhaustion(&e) => {
                    // Out of fds: wait, keeping the rest in the backlog.
                    self.warn(&format!(
                        "accept: {e}; accepting again in {:?}",
                        self.backoff
                    ));
                    retry = Some(self.backoff);
                    break;
                }
                // One connection's failure (aborted, a protocol error): the
                // next one, as a loop's own accept does.
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        // The budget is spent (come back next turn) or accepting failed.
        let listener = &mut self.listeners[at];
        if !listener.retry {
            listener.retry = true;
            let timer = cx.set_timer(retry.unwrap_or(Duration::ZERO));
            self.timers.push((timer, at));
        }
    }

    /// Hands a connection to the loop the policy picks (the next one when
    /// its queue is full); one over the group's maximum goes to the least
    /// loaded loop to be refused.
    fn dispatch(&mut self, socket: StdSocket, ip: Option<IpAddr>, balance: Balance) {
        let shared = &*self.shared;
        let n = shared.loads.len();
        let total: usize = (0..n).map(|i| shared.load(i)).sum();
        let refuse = total >= shared.max_connections;
        let turn = self.next % n;
        self.next = self.next.wrapping_add(1);
        let first = match balance {
            _ if refuse => least_loaded(shared, turn),
            Balance::LeastConnections => least_loaded(shared, turn),
            Balance::SourceIpHash => ip.map_or(turn, |ip| ip_hash(ip) % n),
            _ => turn,
        };
        let mut cmd = if refuse {
            Cmd::Refuse(socket)
        } else {
            Cmd::Adopt(socket)
        };
        for k in 0..n {
            let index = (first + k) % n;
            let Some(handle) = shared.handle(index) else {
                break;
            };
            let load = &shared.loads[index];
            load.inflight.fetch_add(1, Ordering::Relaxed);
            match handle.send(cmd) {
                Ok(()) => return,
                Err(e) => {
                    load.inflight.fetch_sub(1, Ordering::Relaxed);
                    cmd = e.into_inner();
                }
            }
        }
        // Every queue full (or the loops gone): the client reads end of file.
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        self.warn("every loop's queue is full: closing a new connection");
        drop(cmd);
    }

    fn warn(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.warned = Some(now);
            log::warn!("acceptor: {what}");
        }
    }
}

/// The loop with the least load, searching from `from` so that ties go
/// round.
fn least_loaded<H: Handler>(shared: &Shared<H>, from: usize) -> usize {
    let n = shared.loads.len();
    (0..n)
        .map(|k| (from + k) % n)
        .min_by_key(|&i| shared.load(i))
        .unwrap_or(0)
}

/// A hash of an IP address (a v4-mapped v6 address as its v4 one): FNV-1a,
/// then a multiply to spread the low bits.
fn ip_hash(ip: IpAddr) -> usize {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let octets: &[u8] = match &ip {
        IpAddr::V4(v4) => &v4.octets(),
        IpAddr::V6(v6) => &v6.octets(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in octets {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
}

impl<H: Handler> Handler for Acceptor<H> {
    type Conn = ();
    type Msg = ();

    fn on_fd_ready(&mut self, cx: &mut Context<'_>, id: ConnId, _: Ready) {
        if let Some(at) = self.listeners.iter().position(|l| l.watch == Some(id)) {
            self.accept(cx, at);
        }
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        if let Some(k) = self.timers.iter().position(|&(t, _)| t == timer) {
            let (_, at) = self.timers.swap_remove(k);
            self.listeners[at].retry = false;
            self.accept(cx, at);
        }
    }

    fn on_stop(&mut self, _: &mut Context<'_>) {
        // The loop closes the registrations; the sockets close with the
        // acceptor, once its loop has finished.
        for l in &mut self.listeners {
            l.watch = None;
        }
    }
}

/// N share-nothing event loops in one process, serving the same listeners:
/// a multi-core server from one [`Handler`].
///
/// Each loop has its own handler (made by the factory given to
/// [`Group::new`], which also hands it a [`GroupHandle`] to reach the other
/// loops), its own connections, timers and counters, and runs on a thread of
/// its own; loop 0 runs on the thread that calls [`run`](Group::run).
/// Nothing is shared between loops but what the handlers send each other.
///
/// - **Listeners.** [`listen`](Group::listen) serves an address with the
///   whole group. TCP and Unix stream connections are accepted by the
///   group's acceptor, a thread of its own (so that no loop pays for the
///   accepts of the others, and a connection flood does not delay one
///   loop's clients), and handed to a loop chosen by [`Balance`]
///   (round-robin by default); [`Balance::ReusePort`] gives each loop its
///   own `SO_REUSEPORT` TCP listener instead. A UDP address gets one
///   `SO_REUSEPORT` socket per loop; a Unix datagram socket is bound by
///   loop 0 alone. With one loop, the loop listens itself, with no acceptor.
/// - **Lifecycle.** One stop stops every loop: [`GroupHandle::stop`], a
///   signal after [`stop_on_signals`](Group::stop_on_signals), or
///   [`Context::stop`] on any loop. Each loop drains its connections within
///   [`Config::drain_timeout`], at the same time as the others. A loop whose
///   `run` fails, or whose handler panics with
///   [`catch_panics`](Config::catch_panics) off, stops the group and `run`
///   returns the error.
/// - **Limits.** The [`Config`] applies to each loop, but
///   [`max_connections`](Config::max_connections) is for the whole group:
///   the acceptor refuses past it (the handler's
///   [`on_refuse`](Handler::on_refuse) runs on some loop, then the
///   connection closes). Each loop's message queue is bounded
///   ([`Config::message_queue`], or [`DEFAULT_GROUP_QUEUE`]).
///
/// # Examples
/// An echo server on four loops that tells each client which loop it got:
/// ```
/// use std::io::{Read, Write};
/// use netloop::{ConnId, Context, Group, GroupHandle, Handler};
///
/// struct Echo {
///     index: usize,
///     group: GroupHandle<Echo>,
/// }
///
/// impl Handler for Echo {
///     type Conn = ();
///     type Msg = ();
///     fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
///         let _ = cx.send(id, format!("loop {} of {}\n", self.index, self.group.loops()).as_bytes());
///     }
///     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
///         let _ = cx.send(id, data);
///         data.len()
///     }
/// }
///
/// let mut group = Group::new(4, netloop::Config::default(), |index, group| Echo { index, group })?;
/// let addr = group.listen("tcp://127.0.0.1:0")?.as_inet().unwrap();
/// let handle = group.handle();
/// let client = std::thread::spawn(move || -> std::io::Result<String> {
///     let mut s = std::net::TcpStream::connect(addr)?;
///     s.write_all(b"hello\n")?;
///     let mut got = vec![0; "loop 0 of 4\nhello\n".len()];
///     s.read_exact(&mut got)?;
///     handle.stop();
///     Ok(String::from_utf8_lossy(&got).into_owned())
/// });
/// group.run()?; // until stopped
/// assert_eq!(client.join().unwrap()?, "loop 0 of 4\nhello\n"); // round-robin: loop 0 first
/// assert_eq!(group.stats().total.accepted, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Group<H: Handler + 'static> {
    shared: Arc<Shared<H>>,
    loops: Vec<EventLoop<Member<H>>>,
    acceptor: Option<EventLoop<Acceptor<H>>>,
    config: Config,
    balance: Balance,
    ran: bool,
}

impl<H: Handler + 'static> fmt::Debug for Group<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("loops", &self.loops.len())
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

impl<H> Group<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send,
{
    /// Makes `loops` loops (0: one per available CPU,
    /// [`std::thread::available_parallelism`]), each with `config` and the
    /// handler `make(index, group)` returns. The [`GroupHandle`] it gets
    /// reaches every loop once `new` has returned (sends made from inside
    /// `make` fail with [`SendError::Closed`]).
    ///
    /// # Errors
    /// `InvalidInput` for a configuration [`Config::validate`] refuses; the
    /// OS error from creating a loop.
    pub fn new(
        loops: usize,
        config: Config,
        mut make: impl FnMut(usize, GroupHandle<H>) -> H,
    ) -> io::Result<Group<H>> {
        config.validate()?;
        let n = match loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut member = config.clone();
        member.message_queue = Some(config.message_queue.unwrap_or(DEFAULT_GROUP_QUEUE));
        // Enforced per loop only by loops that accept themselves (ReusePort);
        // the acceptor counts for the group.
        member.max_connections = config.max_connections.div_ceil(n);
        let shared = Arc::new(Shared {
            loads: (0..n).map(|_| Load::default()).collect(),
            handles: OnceLock::new(),
            acceptor: OnceLock::new(),
            stopping: AtomicBool::new(false),
            undelivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failure: Mutex::new(None),
            max_connections: config.max_connections,
        });
        let mut members = Vec::with_capacity(n);
        for index in 0..n {
            let user = make(
                index,
                GroupHandle {
                    shared: shared.clone(),
                },
            );
            let handler = Member {
                user,
                index,
                shared: shared.clone(),
                refusing: Vec::new(),
            };
            members.push(EventLoop::with_config(handler, member.clone())?);
        }
        let handles = members.iter().map(EventLoop::handle).collect();
        let _ = shared.handles.set(handles);
        Ok(Group {
            shared,
            loops: members,
            acceptor: None,
            config,
            balance: Balance::default(),
            ran: false,
        })
    }

    /// How many loops the group has.
    pub fn loops(&self) -> usize {
        self.loops.len()
    }

    /// Sets how the stream listeners made from now on spread their
    /// connections (default [`Balance::RoundRobin`]).
    pub fn set_balance(&mut self, balance: Balance) {
        self.balance = balance;
    }

    /// A handle to every loop, for other threads: send, message, stop.
    pub fn handle(&self) -> GroupHandle<H> {
        GroupHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves an address with the whole group; see [`Context::listen`] for
    /// the address strings, and the [type docs](Group) for how each kind of
    /// socket is shared. Returns the address bound (with the port the OS
    /// chose for `:0`).
    ///
    /// # Errors
    /// As [`Context::listen`].
    pub fn listen(&mut self, addr: impl ToEndpoint) -> io::Result<Addr> {
        self.listen_with(addr, &ListenOptions::default())
    }

    /// [`listen`](Group::listen) with options. `reuse_port` is set for the
    /// per-loop sockets (UDP, [`Balance::ReusePort`]) whatever `opts` says.
    ///
    /// # Errors
    /// As [`Context::listen`].
    pub fn listen_with(&mut self, addr: impl ToEndpoint, opts: &ListenOptions) -> io::Result<Addr> {
        let endpoint = addr.to_endpoint()?;
        let single = self.loops.len() == 1;
        match endpoint.transport {
            Transport::Tcp | Transport::Udp | Transport::Unix | Transport::Unixgram if single => {
                self.listen_on(0, &endpoint, opts)
            }
            Transport::Tls if single => self.listen_on(0, &endpoint, opts),
            // TLS sessions do not move between loops: each loop accepts its own.
            Transport::Tcp | Transport::Tls if self.balance == Balance::ReusePort => {
                self.listen_each(endpoint, opts)
            }
            Transport::Tcp | Transport::Unix => self.listen_acceptor(&endpoint, opts),
            Transport::Udp => self.listen_each(endpoint, opts),
            Transport::Unixgram => self.listen_on(0, &endpoint, opts),
            Transport::Tls => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{endpoint}: tls:// on several loops needs Balance::ReusePort (and the `tls` feature)"),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{endpoint} cannot be listened on"),
            )),
        }
    }

    /// Listens on one loop.
    fn listen_on(&mut self, index: usize, at: &Endpoint, opts: &ListenOptions) -> io::Result<Addr> {
        let mut cx = self.loops[index].context();
        let id = cx.listen_with(at, opts)?;
        match cx.local_addr(id) {
            Ok(addr) => Ok(addr),
            Err(e) => {
                let _ = cx.close(id);
                Err(e.into())
            }
        }
    }

    /// One `SO_REUSEPORT` socket per loop, all on the port the first got.
    fn listen_each(&mut self, mut at: Endpoint, opts: &ListenOptions) -> io::Result<Addr> {
        let opts = ListenOptions {
            reuse_port: true,
            ..opts.clone()
        };
        let mut ids = Vec::with_capacity(self.loops.len());
        let mut bound = None;
        for event_loop in &mut self.loops {
            let mut cx = event_loop.context();
            let made = cx.listen_with(&at, &opts).and_then(|id| {
                ids.push(id);
                Ok(cx.local_addr(id)?)
            });
            match made {
                Ok(addr) => {
                    if bound.is_none() {
                        at.addr = addr.clone(); // port 0 becomes the port chosen
                        bound = Some(addr);
                    }
                }
                Err(e) => {
                    for (event_loop, id) in self.loops.iter_mut().zip(ids) {
                        let _ = event_loop.context().close(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(bound.expect("a group has a loop"))
    }

    /// A stream listener on the acceptor.
    fn listen_acceptor(&mut self, at: &Endpoint, opts: &ListenOptions) -> io::Result<Addr> {
        let balance = match self.balance {
            Balance::ReusePort => Balance::RoundRobin, // a Unix listener
            b => b,
        };
        let acceptor = self.acceptor()?;
        let mut cx = acceptor.context();
        // The loop binds (addresses, options, a stale Unix socket file);
        // the acceptor takes the socket out to accept on it itself.
        let id = cx.listen_with(at, opts)?;
        let addr = cx.local_addr(id);
        let detached = cx.detach(id)?;
        let unlink = match &addr {
            Ok(Addr::Unix(UnixAddr::Path(path))) => Some(path.clone()),
            _ => None,
        };
        let socket = match detached.socket {
            StdSocket::TcpListener(l) => StdListener::Tcp(l),
            StdSocket::UnixListener(l) => StdListener::Unix(l),
            _ => unreachable!("a stream listener detaches as one"),
        };
        let mut accepting = Accepting {
            socket,
            watch: None,
            unlink,
            balance,
            retry: false,
        };
        let addr = addr?;
        let fd = match &accepting.socket {
            StdListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                l.as_fd().try_clone_to_owned()?
            }
            StdListener::Unix(l) => {
                l.set_nonblocking(true)?;
                l.as_fd().try_clone_to_owned()?
            }
        };
        accepting.watch = Some(cx.register_fd(fd, Interest::READABLE)?);
        acceptor.handler_mut().listeners.push(accepting);
        Ok(addr)
    }

    /// The acceptor's loop, made on first use.
    fn acceptor(&mut self) -> io::Result<&mut EventLoop<Acceptor<H>>> {
        if self.acceptor.is_none() {
            let config = Config {
                accepts_per_turn: self.config.accepts_per_turn,
                accept_backoff: self.config.accept_backoff,
                idle_timeout: None,
                events_capacity: 64,
                message_queue: Some(16),
                ..Config::default()
            };
            let handler = Acceptor {
                shared: self.shared.clone(),
                listeners: Vec::new(),
                timers: Vec::new(),
                next: 0,
                budget: self.config.accepts_per_turn,
                backoff: self.config.accept_backoff,
                warned: None,
            };
            let acceptor = EventLoop::with_config(handler, config)?;
            let _ = self.shared.acceptor.set(acceptor.handle());
            self.acceptor = Some(acceptor);
        }
        Ok(self.acceptor.as_mut().expect("made above"))
    }

    /// Stops gracefully on SIGINT or SIGTERM, as
    /// [`EventLoop::stop_on_signals`] (every loop watches them, so a second
    /// signal stops each at once).
    ///
    /// # Errors
    /// The OS error from installing the handlers.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        for event_loop in &mut self.loops {
            event_loop.stop_on_signals()?;
        }
        Ok(())
    }

    /// Runs every loop (loop 0 on this thread, the others and the acceptor
    /// on threads of their own) until the group stops and every loop has
    /// finished its stop.
    ///
    /// # Errors
    /// The first loop's OS error, or `Other` naming the loop and the panic
    /// of a handler run with [`catch_panics`](Config::catch_panics) off;
    /// the other loops were stopped gracefully. `InvalidInput` when called
    /// a second time (a group runs once).
    pub fn run(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.ran, true) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a group runs once",
            ));
        }
        let shared = &*self.shared;
        let key = Arc::as_ptr(&self.shared) as usize;
        if shared.stopping.load(Ordering::Acquire) {
            shared.signal_stop(); // stopped before the acceptor existed
        }
        let acceptor = &mut self.acceptor;
        let (first, rest) = self.loops.split_first_mut().expect("a group has a loop");
        std::thread::scope(|scope| {
            if let Some(acceptor) = acceptor.as_mut() {
                let spawned = std::thread::Builder::new()
                    .name("netloop-accept".into())
                    .spawn_scoped(scope, move || {
                        if let Err(e) = acceptor.run() {
                            shared.fail(io::Error::new(e.kind(), format!("acceptor: {e}")));
                            shared.stop_all();
                        }
                        // Its listeners close now, not when the group is dropped.
                        acceptor.handler_mut().listeners.clear();
                    });
                if let Err(e) = spawned {
                    shared.fail(e);
                    shared.stop_all();
                }
            }
            for (k, event_loop) in rest.iter_mut().enumerate() {
                let index = k + 1;
                let spawned = std::thread::Builder::new()
                    .name(format!("netloop-{index}"))
                    .spawn_scoped(scope, move || run_member(index, event_loop, shared, key));
                if let Err(e) = spawned {
                    shared.fail(e);
                    shared.stop_all();
                }
            }
            run_member(0, first, shared, key);
        });
        match shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Each loop's counters and their sum; the running group's, from
    /// another thread, with [`GroupHandle::stats`].
    pub fn stats(&self) -> GroupStats {
        let loops = self
            .loops
            .iter()
            .enumerate()
            .map(|(i, l)| self.shared.loop_stats(i, l.stats().clone()))
            .collect();
        self.shared.group_stats(loops)
    }

    /// The handler of loop `index`.
    ///
    /// # Panics
    /// If there is no such loop.
    pub fn handler(&self, index: usize) -> &H {
        &self.loops[index].handler().user
    }

    /// The handler of loop `index`, mutably.
    ///
    /// # Panics
    /// If there is no such loop.
    pub fn handler_mut(&mut self, index: usize) -> &mut H {
        &mut self.loops[index].handler_mut().user
    }
}

/// Runs one member loop on this thread; any way it ends stops the group.
fn run_member<H: Handler + 'static>(
    index: usize,
    event_loop: &mut EventLoop<Member<H>>,
    shared: &Shared<H>,
    key: usize,
) {
    CURRENT.with(|c| c.set((key, index)));
    let outcome = catch_unwind(AssertUnwindSafe(|| event_loop.run()));
    CURRENT.with(|c| c.set((0, 0)));
    shared.loads[index].done.store(true, Ordering::Release);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.fail(io::Error::new(e.kind(), format!("loop {index}: {e}"))),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            shared.fail(io::Error::other(format!(
                "loop {index}: a handler panicked: {msg}"
            )));
        }
    }
    shared.stop_all();
}
