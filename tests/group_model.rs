//! The model-based randomized test of `tests/model.rs`, run on a [`Group`]:
//! proptest generates scripts, each run against a fresh group of 2–4 loops
//! (round-robin or least-connections) listening on one TCP address; the
//! test thread drives the peers and the handlers, and keeps a model of
//! every connection that the group is checked against.
//!
//! A script mixes:
//! - peers connecting to the group's listener (one, or a burst of up to
//!   three at once), writing, reading, half-closing, dropping and resetting
//!   (SO_LINGER 0, drop);
//! - handler actions on the loop that owns a connection: send, close or
//!   abort, asked with [`GroupHandle::message`] to that loop (run in
//!   `on_message`) or with [`GroupHandle::run_on`];
//! - sends and closes by [`RemoteId`] with [`GroupHandle::send`] and
//!   [`GroupHandle::close`], from the test thread and from inside a loop
//!   (cross-loop, the sending loop picked at random, its own included).
//!
//! Connections are picked by index among every connection the group ever
//! opened, so many actions land on closed ones. Half the scripts run in
//! lockstep: after each step the test waits until every loop has handled
//! what the step queued (two rounds of `run_on` on every loop), so the
//! model knows which connections were open when each command arrived. The
//! others ("free") run the test thread ahead of the loops: there a close,
//! a reset or a drop makes what other senders queued before it uncertain
//! (it may arrive after), and the least-connections check is skipped.
//!
//! Every byte sent to a peer is in a record that names its sender (the test
//! thread, which also orders the handler actions it asks for, or the loop
//! that sent cross-loop), the peer it is meant for, and its number in that
//! sender's sequence for that peer. Checked:
//! - each peer's stream is whole records for that peer, and each sender's
//!   records arrive in the order sent, none skipped; a peer that read a
//!   clean end of file got exactly the records sent while its connection
//!   was open and not closing (fewer only where a reset or drop of the peer,
//!   or an abort, explains the cut); what the handler read is what the
//!   peer wrote, in order, and all of it once the handler saw end of file;
//! - handler sends and closes on a closed or closing connection fail, and
//!   on an open one succeed; [`GroupStats::undelivered`] counts exactly the
//!   remote sends and closes that found their connection closed or closing
//!   (within the uncertainty of peers that reset or dropped); a
//!   [`GroupHandle`] call never fails while the group runs, never panics;
//! - `on_open` then `on_close` exactly once per connection, on the loop the
//!   acceptor picked; no callback for an id before its `on_open` or after
//!   its `on_close`; each close reason explained by the script (`Closed` by
//!   a close, `Reset`/`Error` by a peer reset or drop, `Shutdown` by the
//!   stop);
//! - a [`GroupHandle`] call to a loop out of range, or to any loop once the
//!   group has stopped, gives back `SendError::Closed` with what it carried;
//! - the spread: round-robin puts the connections of a script on the loops
//!   within ±1 of each other; least-connections gives each connection made
//!   alone (in lockstep) to a loop with the fewest open;
//! - a peer's reset is seen by its loop: the connection closes within
//!   [`WAIT`] (this found a FIN and a RST arriving together leaving the
//!   connection open, half-closed; see tests/eof.rs);
//! - after the stop: `GroupStats` connections 0 and panics 0, `accepted` equal to the
//!   peers that connected, each loop's handler with nothing open, and the
//!   process back to the file descriptors it had before the case.
//!
//! Runs: `cargo test --test group_model` runs [`CASES`] scripts of up to
//! [`STEPS`] steps (about 2 s on a 2-core machine at load 3). The longer
//! run is ignored by default:
//!
//! ```text
//! NETLOOP_GROUP_MODEL_CASES=2000 cargo test --test group_model -- --ignored --nocapture
//! ```
//!
//! (`NETLOOP_GROUP_MODEL_CASES` defaults to 300 there; a failure prints the
//! `PROPTEST_RNG_SEED` that replays its run and the shrunk script.)

mod util;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netloop::socket2::SockRef;
use netloop::{
    Balance, CloseReason, Config, ConnId, Context, Group, GroupHandle, GroupStats, Handler,
    RemoteId, SendError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngSeed, TestCaseError, TestError, TestRunner};
use util::{fd_count, watchdog};

/// Scripts in the default run.
const CASES: u32 = 256;
/// Most steps of a script in the default run.
const STEPS: usize = 30;
/// How long the test waits for the group to open, settle or stop.
const WAIT: Duration = Duration::from_secs(3);
/// The first byte of every record.
const MAGIC: u8 = 0xa5;
/// A record's header: magic, sender, peer (u16), sequence (u32), length (u16).
const HEADER: usize = 10;
/// The test thread's sender number; loop `l` sends as `1 + l`.
const TEST: u8 = 0;

// ---------------------------------------------------------------------------
// Scripts

#[derive(Clone)]
struct Script {
    loops: usize,
    least: bool, // Balance::LeastConnections, else RoundRobin
    free: bool,  // no barrier between steps
    steps: Vec<Step>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Script {{ loops: {}, least: {}, free: {}, steps: [",
            self.loops, self.least, self.free
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {i:2}: {s:?},")?;
        }
        write!(f, "] }}")
    }
}

/// Peers and connections are picked by index counted back from the newest,
/// modulo their number when the step runs.
#[derive(Debug, Clone)]
enum Step {
    Connect {
        burst: usize,
    },
    PeerWrite {
        peer: u8,
        len: usize,
    },
    PeerRead {
        peer: u8,
    },
    PeerHalfClose {
        peer: u8,
    },
    PeerDrop {
        peer: u8,
    },
    PeerReset {
        peer: u8,
    },
    /// The owning loop's handler sends (message, or run_on).
    LoopSend {
        conn: u8,
        len: usize,
        run_on: bool,
    },
    /// The owning loop's handler closes or aborts.
    LoopClose {
        conn: u8,
        abort: bool,
        run_on: bool,
    },
    /// GroupHandle::send from the test thread.
    RemoteSend {
        conn: u8,
        len: usize,
    },
    /// GroupHandle::close from the test thread.
    RemoteClose {
        conn: u8,
    },
    /// GroupHandle::send from inside loop `from`.
    CrossSend {
        from: u8,
        conn: u8,
        len: usize,
    },
    /// GroupHandle::close from inside loop `from`.
    CrossClose {
        from: u8,
        conn: u8,
    },
    /// Send, close, message and run_on to a loop out of range (the id of a
    /// real connection): each must give back `SendError::Closed`.
    OutOfRange {
        conn: u8,
        past: u8,
    },
}

fn step_strategy() -> BoxedStrategy<Step> {
    let ix = || 0u8..6;
    let len = || prop_oneof![1usize..64, 64usize..3000];
    prop_oneof![
        4 => (1usize..=3).prop_map(|burst| Step::Connect { burst }),
        2 => (ix(), len()).prop_map(|(peer, len)| Step::PeerWrite { peer, len }),
        2 => ix().prop_map(|peer| Step::PeerRead { peer }),
        1 => ix().prop_map(|peer| Step::PeerHalfClose { peer }),
        1 => ix().prop_map(|peer| Step::PeerDrop { peer }),
        1 => ix().prop_map(|peer| Step::PeerReset { peer }),
        3 => (ix(), len(), any::<bool>())
            .prop_map(|(conn, len, run_on)| Step::LoopSend { conn, len, run_on }),
        1 => (ix(), any::<bool>(), any::<bool>())
            .prop_map(|(conn, abort, run_on)| Step::LoopClose { conn, abort, run_on }),
        3 => (ix(), len()).prop_map(|(conn, len)| Step::RemoteSend { conn, len }),
        1 => ix().prop_map(|conn| Step::RemoteClose { conn }),
        3 => (0u8..4, ix(), len()).prop_map(|(from, conn, len)| Step::CrossSend { from, conn, len }),
        1 => (0u8..4, ix()).prop_map(|(from, conn)| Step::CrossClose { from, conn }),
        1 => (ix(), 0u8..3).prop_map(|(conn, past)| Step::OutOfRange { conn, past }),
    ]
    .boxed()
}

fn script_strategy(max_steps: usize) -> BoxedStrategy<Script> {
    (
        2usize..=4,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(step_strategy(), 1..max_steps),
    )
        .prop_map(|(loops, least, free, steps)| Script {
            loops,
            least,
            free,
            steps,
        })
        .boxed()
}

fn back(k: u8, n: usize) -> Option<usize> {
    (n > 0).then(|| n - 1 - usize::from(k) % n)
}

/// A record from `sender` to `peer`, number `seq`, `len` bytes of payload.
fn record(sender: u8, peer: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER + len);
    r.push(MAGIC);
    r.push(sender);
    r.extend_from_slice(&(peer as u16).to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&(len as u16).to_le_bytes());
    r.extend((0..len).map(|i| payload_byte(sender, seq, i)));
    r
}

fn payload_byte(sender: u8, seq: u32, i: usize) -> u8 {
    (seq as usize * 7 + i + usize::from(sender) * 13) as u8
}

/// The byte a peer writes at offset `at` of its stream, keyed by its port.
fn inbound_byte(port: u16, at: u64) -> u8 {
    (at.wrapping_mul(131) ^ u64::from(port)) as u8
}

// ---------------------------------------------------------------------------
// The handler each loop runs

enum Msg {
    Send {
        id: ConnId,
        data: Vec<u8>,
        token: u64,
    },
    Close {
        id: ConnId,
        abort: bool,
        token: u64,
    },
    Cross {
        to: RemoteId,
        data: Option<Vec<u8>>, // None: close
        token: u64,
    },
}

#[derive(Debug)]
enum Ev {
    Open {
        lp: usize,
        id: ConnId,
        port: u16,
    },
    Close {
        lp: usize,
        id: ConnId,
        reason: CloseReason,
        read: u64,
        eof: bool,
    },
    Result {
        token: u64,
        ok: bool,
    },
    Bad(String),
}

#[derive(Default)]
struct Inbound {
    port: u16,
    read: u64,
    eof: bool,
}

struct M {
    index: usize,
    group: GroupHandle<M>,
    ev: mpsc::Sender<Ev>,
    open: HashMap<ConnId, Inbound>,
    closed: HashSet<ConnId>,
}

impl M {
    fn bad(&self, what: String) {
        let _ = self
            .ev
            .send(Ev::Bad(format!("loop {}: {what}", self.index)));
    }

    fn check_live(&self, id: ConnId, cb: &str) -> bool {
        if self.open.contains_key(&id) {
            return true;
        }
        if self.closed.contains(&id) {
            self.bad(format!("{cb} for {id} after its on_close"));
        } else {
            self.bad(format!("{cb} for {id} before its on_open"));
        }
        false
    }

    fn act(&mut self, cx: &mut Context<'_>, msg: Msg) {
        let (token, ok) = match msg {
            Msg::Send { id, data, token } => (token, cx.send(id, &data).is_ok()),
            Msg::Close { id, abort, token } => {
                let r = if abort { cx.abort(id) } else { cx.close(id) };
                (token, r.is_ok())
            }
            Msg::Cross { to, data, token } => {
                let ok = match data {
                    Some(data) => self.group.send(to, data).is_ok(),
                    None => self.group.close(to).is_ok(),
                };
                (token, ok)
            }
        };
        let _ = self.ev.send(Ev::Result { token, ok });
    }
}

impl Handler for M {
    type Conn = ();
    type Msg = Msg;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        if self.open.contains_key(&id) || self.closed.contains(&id) {
            self.bad(format!("on_open for {id} a second time"));
        }
        if self.group.current_loop() != Some(self.index) {
            self.bad(format!(
                "on_open on the thread of loop {:?}",
                self.group.current_loop()
            ));
        }
        let port = cx
            .peer_addr(id)
            .ok()
            .and_then(|a| a.as_inet())
            .map_or(0, |a| a.port());
        self.open.insert(
            id,
            Inbound {
                port,
                ..Inbound::default()
            },
        );
        let _ = self.ev.send(Ev::Open {
            lp: self.index,
            id,
            port,
        });
    }

    fn on_data(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        if !self.check_live(id, "on_data") {
            return data.len();
        }
        let rec = self.open.get_mut(&id).expect("checked");
        let (port, at, eof) = (rec.port, rec.read, rec.eof);
        rec.read += data.len() as u64;
        if eof {
            self.bad(format!("on_data for {id} after its on_eof"));
        }
        if let Some(i) = (0..data.len()).find(|&i| data[i] != inbound_byte(port, at + i as u64)) {
            self.bad(format!(
                "{id} read a byte the peer did not write at offset {}",
                at + i as u64
            ));
        }
        data.len()
    }

    fn on_eof(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut ()) {
        if self.check_live(id, "on_eof") {
            let rec = self.open.get_mut(&id).expect("checked");
            if std::mem::replace(&mut rec.eof, true) {
                self.bad(format!("on_eof for {id} twice"));
            }
        }
    }

    fn on_drain(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.check_live(id, "on_drain");
    }

    fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        if !self.check_live(id, "on_close") {
            return;
        }
        let rec = self.open.remove(&id).expect("checked");
        self.closed.insert(id);
        let _ = self.ev.send(Ev::Close {
            lp: self.index,
            id,
            reason,
            read: rec.read,
            eof: rec.eof,
        });
    }

    fn on_message(&mut self, cx: &mut Context<'_>, msg: Msg) {
        self.act(cx, msg);
    }
}

// ---------------------------------------------------------------------------
// The model

/// A connection as the model sees it.
struct Conn {
    rid: RemoteId,
    peer: usize,
    closed: Option<(CloseReason, u64, bool)>, // reason, bytes read, eof seen
    closing: bool,                            // a close was applied (or may have been)
    dead: bool,                               // a send to it failed
    closers: HashSet<u8>,                     // the senders that closed it
}

/// A test-side socket and what it was sent.
struct Peer {
    sock: Option<TcpStream>,
    port: u16,
    conn: Option<usize>,
    written: u64,
    half: bool,   // shut down for writing
    gone: bool,   // dropped or reset: reads no more
    doomed: bool, // delivery to it is uncertain (dropped, reset, aborted)
    reset: bool,  // read a reset
    eof: bool,    // read end of file
    got: Vec<u8>,
    posted: HashMap<u8, u32>,      // records each sender posted
    must: HashMap<u8, u32>,        // of those, records certainly delivered
    must_remote: HashMap<u8, u32>, // of those, sent with GroupHandle::send
    must_closes: HashMap<u8, u32>, // GroupHandle::close calls certainly delivered
    may: HashMap<u8, u32>,         // records possibly delivered
}

impl Peer {
    fn read(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        if self.eof || self.reset {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reset = true;
                    return;
                }
            }
        }
    }
}

enum Expect {
    /// A handler send or close: must succeed, must fail, or either.
    Handler(Option<bool>, usize, &'static str),
    /// A GroupHandle call from inside a loop: must succeed.
    Posted,
}

struct Case {
    n: usize,
    least: bool,
    free: bool,
    handle: GroupHandle<M>,
    addr: SocketAddr,
    thread: Option<JoinHandle<(Group<M>, io::Result<()>)>>,
    ev: mpsc::Receiver<Ev>,
    peers: Vec<Peer>,
    conns: Vec<Conn>,
    by_rid: HashMap<RemoteId, usize>,
    expect: HashMap<u64, Expect>,
    token: u64,
    undelivered_min: u64,
    undelivered_max: u64,
    opens: Vec<usize>, // per loop, connections opened
    bad: Vec<String>,
}

impl Case {
    fn start(script: &Script) -> Result<Case, String> {
        let (tx, ev) = mpsc::channel();
        let mut group = Group::new(script.loops, Config::default(), |index, group| M {
            index,
            group,
            ev: tx.clone(),
            open: HashMap::new(),
            closed: HashSet::new(),
        })
        .map_err(|e| format!("Group::new: {e}"))?;
        drop(tx);
        group.set_balance(if script.least {
            Balance::LeastConnections
        } else {
            Balance::RoundRobin
        });
        let addr = group
            .listen("tcp://127.0.0.1:0")
            .map_err(|e| format!("listen: {e}"))?
            .as_inet()
            .ok_or("not an inet address")?;
        let handle = group.handle();
        let thread = std::thread::spawn(move || {
            let r = group.run();
            (group, r)
        });
        Ok(Case {
            n: script.loops,
            least: script.least,
            free: script.free,
            handle,
            addr,
            thread: Some(thread),
            ev,
            peers: Vec::new(),
            conns: Vec::new(),
            by_rid: HashMap::new(),
            expect: HashMap::new(),
            token: 0,
            undelivered_min: 0,
            undelivered_max: 0,
            opens: vec![0; script.loops],
            bad: Vec::new(),
        })
    }

    fn next_token(&mut self) -> u64 {
        self.token += 1;
        self.token
    }

    /// Takes in one event from the loops.
    fn take(&mut self, ev: Ev) {
        match ev {
            Ev::Open { lp, id, port } => {
                let rid = RemoteId::new(lp, id);
                let Some(peer) = self.peers.iter().position(|p| p.port == port) else {
                    self.bad
                        .push(format!("{rid} opened for unknown port {port}"));
                    return;
                };
                if self.peers[peer].conn.is_some() {
                    self.bad
                        .push(format!("peer {peer} opened twice (again as {rid})"));
                    return;
                }
                self.opens[lp] += 1;
                self.by_rid.insert(rid, self.conns.len());
                self.peers[peer].conn = Some(self.conns.len());
                self.conns.push(Conn {
                    rid,
                    peer,
                    closed: None,
                    closing: false,
                    dead: false,
                    closers: HashSet::new(),
                });
            }
            Ev::Close {
                lp,
                id,
                reason,
                read,
                eof,
            } => {
                let rid = RemoteId::new(lp, id);
                match self.by_rid.get(&rid) {
                    Some(&c) if self.conns[c].closed.is_none() => {
                        self.conns[c].closed = Some((reason, read, eof));
                    }
                    Some(_) => self.bad.push(format!("{rid} closed twice")),
                    None => self.bad.push(format!("{rid} closed, never opened")),
                }
            }
            Ev::Result { token, ok } => match self.expect.remove(&token) {
                Some(Expect::Handler(want, c, what)) => {
                    if !ok && what == "send" {
                        // Sends to it fail from now on.
                        self.conns[c].dead = true;
                    }
                    if want.is_some_and(|w| w != ok) {
                        let rid = self.conns[c].rid;
                        self.bad.push(format!(
                            "handler {what} on {rid}: {} (expected {})",
                            if ok { "ok" } else { "error" },
                            if ok { "an error" } else { "ok" }
                        ));
                    }
                }
                Some(Expect::Posted) => {
                    if !ok {
                        self.bad
                            .push("a GroupHandle call from a loop failed while running".into());
                    }
                }
                None => self.bad.push(format!("a result for unknown token {token}")),
            },
            Ev::Bad(what) => self.bad.push(what),
        }
    }

    fn drain_events(&mut self) {
        while let Ok(ev) = self.ev.try_recv() {
            self.take(ev);
        }
    }

    /// Waits until every loop has handled what was queued before, and what
    /// that queued on other loops.
    fn barrier(&mut self) -> Result<(), String> {
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel();
            for l in 0..self.n {
                let tx = tx.clone();
                self.handle
                    .run_on(l, move |_, _| {
                        let _ = tx.send(());
                    })
                    .map_err(|_| format!("run_on({l}) refused while running"))?;
            }
            for _ in 0..self.n {
                rx.recv_timeout(WAIT)
                    .map_err(|_| "a loop did not answer the barrier".to_string())?;
            }
        }
        self.drain_events();
        Ok(())
    }

    /// Waits for an event (or the deadline) until `done` holds.
    fn wait(&mut self, what: &str, done: impl Fn(&Case) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ev.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(_) => return Err(format!("timed out waiting for {what}")),
            }
        }
        Ok(())
    }

    /// Open connections of each loop: (certainly, possibly).
    fn loads(&self) -> Vec<(usize, usize)> {
        let mut loads = vec![(0, 0); self.n];
        for c in &self.conns {
            if c.closed.is_none() {
                let l = &mut loads[c.rid.loop_index()];
                l.1 += 1;
                if !(self.peers[c.peer].doomed || c.closing) {
                    l.0 += 1;
                }
            }
        }
        loads
    }

    fn conn(&self, k: u8) -> Option<usize> {
        back(k, self.conns.len())
    }

    fn peer(&self, k: u8) -> Option<usize> {
        back(k, self.peers.len())
    }

    /// How a command to connection `c` fares when it arrives: Some(true)
    /// delivered, Some(false) not, None either.
    /// In a free script, a close by another sender may or may not have
    /// arrived first.
    fn fate(&self, c: usize, sender: u8) -> Option<bool> {
        let conn = &self.conns[c];
        let closed_first = conn.closing && (!self.free || conn.closers.contains(&sender));
        if conn.closed.is_some() || conn.dead || closed_first {
            Some(false)
        } else if conn.closing || self.peers[conn.peer].doomed {
            None
        } else {
            Some(true)
        }
    }

    /// A record from `sender` to connection `c`, counted in the model.
    fn new_record(&mut self, sender: u8, c: usize, len: usize, remote: bool) -> Vec<u8> {
        let fate = self.fate(c, sender);
        let peer = self.conns[c].peer;
        let p = &mut self.peers[peer];
        let seq = p.posted.entry(sender).or_default();
        let r = record(sender, peer, *seq, len);
        *seq += 1;
        if fate == Some(true) {
            *p.must.entry(sender).or_default() += 1;
            if remote {
                *p.must_remote.entry(sender).or_default() += 1;
            }
        }
        if fate != Some(false) {
            *p.may.entry(sender).or_default() += 1;
        }
        if remote {
            self.count_undelivered(fate);
        }
        r
    }

    fn count_undelivered(&mut self, fate: Option<bool>) {
        match fate {
            Some(false) => {
                self.undelivered_min += 1;
                self.undelivered_max += 1;
            }
            None => self.undelivered_max += 1,
            Some(true) => {}
        }
    }

    /// A close of connection `c` queued: the model's view after it.
    fn closed_by_us(&mut self, c: usize, remote: bool, sender: u8) {
        let fate = self.fate(c, sender);
        if remote {
            // A close of a closing connection may or may not count.
            let conn = &self.conns[c];
            if conn.closing && conn.closed.is_none() {
                self.count_undelivered(None);
            } else {
                self.count_undelivered(fate);
                if fate == Some(true) {
                    let p = &mut self.peers[self.conns[c].peer];
                    *p.must_closes.entry(sender).or_default() += 1;
                }
            }
        }
        let conn = &mut self.conns[c];
        if conn.closed.is_none() && !conn.dead {
            conn.closing = true;
            conn.closers.insert(sender);
        }
        self.unsettle(c, Some(sender));
    }

    /// In a free script, what senders but `except` queued for connection
    /// `c` may arrive after a close or the loss of its peer: no longer
    /// certain to be delivered.
    fn unsettle(&mut self, c: usize, except: Option<u8>) {
        if !self.free {
            return;
        }
        let p = &mut self.peers[self.conns[c].peer];
        for (&s, must) in p.must.iter_mut() {
            if Some(s) != except {
                *must = 0;
                self.undelivered_max += u64::from(p.must_remote.remove(&s).unwrap_or(0));
            }
        }
        p.must_closes.retain(|&s, n| {
            if Some(s) == except {
                return true;
            }
            self.undelivered_max += u64::from(*n);
            false
        });
        if except != Some(TEST) {
            for e in self.expect.values_mut() {
                if let Expect::Handler(want, ec, _) = e {
                    if *ec == c {
                        *want = None;
                    }
                }
            }
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Connect { burst } => {
                let before = self.loads();
                let first = self.peers.len();
                for _ in 0..burst {
                    let sock =
                        TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
                    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
                    self.peers.push(Peer {
                        sock: Some(sock),
                        port,
                        conn: None,
                        written: 0,
                        half: false,
                        gone: false,
                        doomed: false,
                        reset: false,
                        eof: false,
                        got: Vec::new(),
                        posted: HashMap::new(),
                        must: HashMap::new(),
                        must_remote: HashMap::new(),
                        must_closes: HashMap::new(),
                        may: HashMap::new(),
                    });
                }
                self.wait("the group to open the new peers", |c| {
                    c.peers[first..].iter().all(|p| p.conn.is_some())
                })?;
                if self.least && burst == 1 && !self.free {
                    let c = self.peers[first].conn.expect("waited");
                    let lp = self.conns[c].rid.loop_index();
                    let fewest = before.iter().map(|l| l.1).min().unwrap_or(0);
                    if before[lp].0 > fewest {
                        self.bad.push(format!(
                            "least-connections gave peer {first} to loop {lp} with {:?} open; \
                             loads (certain, possible): {before:?}",
                            before[lp]
                        ));
                    }
                }
            }
            Step::PeerWrite { peer, len } => {
                let Some(i) = self.peer(peer) else {
                    return Ok(());
                };
                let p = &mut self.peers[i];
                if p.half || p.gone {
                    return Ok(());
                }
                let data: Vec<u8> = (0..len as u64)
                    .map(|k| inbound_byte(p.port, p.written + k))
                    .collect();
                let sock = p.sock.as_mut().expect("not gone");
                match sock.write(&data) {
                    Ok(n) => p.written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        p.doomed = true; // reset by the loop (an abort)
                        if let Some(c) = p.conn {
                            self.unsettle(c, None);
                        }
                    }
                }
            }
            Step::PeerRead { peer } => {
                if let Some(i) = self.peer(peer) {
                    self.peers[i].read();
                }
            }
            Step::PeerHalfClose { peer } => {
                if let Some(i) = self.peer(peer) {
                    let p = &mut self.peers[i];
                    if !p.gone && !p.half {
                        p.half = true;
                        let _ = p.sock.as_ref().expect("not gone").shutdown(Shutdown::Write);
                    }
                }
            }
            Step::PeerDrop { peer } | Step::PeerReset { peer } => {
                let Some(i) = self.peer(peer) else {
                    return Ok(());
                };
                let p = &mut self.peers[i];
                if p.gone {
                    return Ok(());
                }
                p.read();
                p.gone = true;
                p.doomed = true;
                let sock = p.sock.take().expect("not gone");
                if let Some(c) = p.conn {
                    self.unsettle(c, None);
                }
                let p = &mut self.peers[i];
                if matches!(step, Step::PeerReset { .. }) {
                    let _ = SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                    drop(sock);
                    if let Some(c) = p.conn {
                        self.wait("the loop to see a reset", |case| {
                            case.conns[c].closed.is_some()
                        })
                        .map_err(|e| {
                            let conn = &self.conns[c];
                            format!(
                                "{e} of {} (peer half-closed: {})",
                                conn.rid, self.peers[i].half
                            )
                        })?;
                    }
                }
            }
            Step::LoopSend { conn, len, run_on } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                let want = self.fate(c, TEST);
                let data = self.new_record(TEST, c, len, false);
                let token = self.next_token();
                self.expect.insert(token, Expect::Handler(want, c, "send"));
                let rid = self.conns[c].rid;
                let msg = Msg::Send {
                    id: rid.id(),
                    data,
                    token,
                };
                self.ask(rid.loop_index(), msg, run_on)?;
            }
            Step::LoopClose {
                conn,
                abort,
                run_on,
            } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                let conn = &self.conns[c];
                let want = if conn.closed.is_some() {
                    Some(false) // a stale id
                } else if conn.closing || conn.dead || self.peers[conn.peer].doomed {
                    None // closing, or maybe closed by now
                } else {
                    Some(true)
                };
                let token = self.next_token();
                self.expect.insert(
                    token,
                    Expect::Handler(want, c, if abort { "abort" } else { "close" }),
                );
                let rid = self.conns[c].rid;
                self.closed_by_us(c, false, TEST);
                if abort {
                    let peer = self.conns[c].peer;
                    self.peers[peer].doomed = true;
                }
                self.ask(
                    rid.loop_index(),
                    Msg::Close {
                        id: rid.id(),
                        abort,
                        token,
                    },
                    run_on,
                )?;
            }
            Step::RemoteSend { conn, len } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                let data = self.new_record(TEST, c, len, true);
                self.handle
                    .send(self.conns[c].rid, data)
                    .map_err(|e| format!("GroupHandle::send failed while running: {e:?}"))?;
            }
            Step::RemoteClose { conn } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                self.closed_by_us(c, true, TEST);
                self.handle
                    .close(self.conns[c].rid)
                    .map_err(|e| format!("GroupHandle::close failed while running: {e:?}"))?;
            }
            Step::CrossSend { from, conn, len } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                let from = usize::from(from) % self.n;
                let data = self.new_record(1 + from as u8, c, len, true);
                let token = self.next_token();
                self.expect.insert(token, Expect::Posted);
                let to = self.conns[c].rid;
                self.ask(
                    from,
                    Msg::Cross {
                        to,
                        data: Some(data),
                        token,
                    },
                    false,
                )?;
            }
            Step::CrossClose { from, conn } => {
                let Some(c) = self.conn(conn) else {
                    return Ok(());
                };
                let from = usize::from(from) % self.n;
                self.closed_by_us(c, true, 1 + from as u8);
                let token = self.next_token();
                self.expect.insert(token, Expect::Posted);
                let to = self.conns[c].rid;
                self.ask(
                    from,
                    Msg::Cross {
                        to,
                        data: None,
                        token,
                    },
                    false,
                )?;
            }
            Step::OutOfRange { conn, past } => {
                if let Some(c) = self.conn(conn) {
                    let lp = self.n + usize::from(past);
                    let rid = RemoteId::new(lp, self.conns[c].rid.id());
                    if let Err(e) = refused(&self.handle, rid) {
                        self.bad.push(format!("to loop {lp} of {}: {e}", self.n));
                    }
                }
            }
        }
        Ok(())
    }

    /// Has loop `lp`'s handler act on `msg`, by message or by run_on.
    fn ask(&self, lp: usize, msg: Msg, run_on: bool) -> Result<(), String> {
        if run_on {
            self.handle
                .run_on(lp, move |h: &mut M, cx| h.act(cx, msg))
                .map_err(|_| format!("run_on({lp}) failed while running"))
        } else {
            self.handle
                .message(lp, msg)
                .map_err(|_| format!("message({lp}) failed while running"))
        }
    }

    /// Stops the group; its stats, or why not.
    fn stop(&mut self) -> Result<(Group<M>, GroupStats), String> {
        self.handle.stop();
        let thread = self.thread.take().expect("stopped once");
        let deadline = Instant::now() + WAIT + Duration::from_secs(6); // the drain timeout
        while !thread.is_finished() {
            if Instant::now() > deadline {
                return Err("the group did not stop".into());
            }
            for p in &mut self.peers {
                p.read();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (group, r) = thread.join().map_err(|_| "the group's thread panicked")?;
        r.map_err(|e| format!("Group::run: {e}"))?;
        let stats = group.stats();
        self.drain_events();
        Ok((group, stats))
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.stop();
            let _ = thread.join();
        }
    }
}

/// Checks that every GroupHandle call to `rid` gives back
/// `SendError::Closed` with what it carried.
fn refused(handle: &GroupHandle<M>, rid: RemoteId) -> Result<(), String> {
    let lp = rid.loop_index();
    match handle.send(rid, vec![1, 2, 3]) {
        Err(SendError::Closed(data)) if data == [1, 2, 3] => {}
        r => return Err(format!("send gave {r:?}")),
    }
    match handle.close(rid) {
        Err(SendError::Closed(back)) if back == rid => {}
        r => return Err(format!("close gave {r:?}")),
    }
    let msg = Msg::Close {
        id: rid.id(),
        abort: true,
        token: 0,
    };
    if !matches!(handle.message(lp, msg), Err(SendError::Closed(_))) {
        return Err("message was not refused as closed".into());
    }
    if !matches!(handle.run_on(lp, |_, _| {}), Err(SendError::Closed(_))) {
        return Err("run_on was not refused as closed".into());
    }
    Ok(())
}

/// Parses a peer's stream; each sender's record count, or what is wrong.
fn parse(peer: usize, got: &[u8], cut_ok: bool, bad: &mut Vec<String>) -> HashMap<u8, u32> {
    let mut seen: HashMap<u8, u32> = HashMap::new();
    let mut at = 0;
    while at < got.len() {
        let rest = &got[at..];
        if rest.len() < HEADER {
            if !cut_ok {
                bad.push(format!("peer {peer}: a cut record header at {at}"));
            }
            break;
        }
        let sender = rest[1];
        let to = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let seq = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let len = u16::from_le_bytes([rest[8], rest[9]]) as usize;
        if rest[0] != MAGIC {
            bad.push(format!("peer {peer}: no record at offset {at}"));
            break;
        }
        if to != peer {
            bad.push(format!(
                "peer {peer}: got record {seq} of sender {sender} meant for peer {to}"
            ));
        }
        let next = seen.entry(sender).or_default();
        if seq != *next {
            bad.push(format!(
                "peer {peer}: sender {sender}'s record {seq} where {} was due",
                *next
            ));
        }
        *next = seq + 1;
        let body = &rest[HEADER..rest.len().min(HEADER + len)];
        if (0..body.len()).any(|i| body[i] != payload_byte(sender, seq, i)) {
            bad.push(format!(
                "peer {peer}: record {seq} of sender {sender} garbled"
            ));
        }
        if body.len() < len {
            if !cut_ok {
                bad.push(format!("peer {peer}: record {seq} of sender {sender} cut"));
            }
            break;
        }
        at += HEADER + len;
    }
    seen
}

fn check(case: &mut Case, stats: &GroupStats, group: &Group<M>) {
    let mut bad = std::mem::take(&mut case.bad);
    if !case.expect.is_empty() {
        bad.push(format!("{} handler results never came", case.expect.len()));
    }
    // Streams to the peers.
    for (i, p) in case.peers.iter().enumerate() {
        let clean = p.eof && !p.reset && !p.doomed;
        let seen = parse(i, &p.got, !clean, &mut bad);
        for (&sender, &n) in &seen {
            let may = p.may.get(&sender).copied().unwrap_or(0);
            if n > may {
                bad.push(format!(
                    "peer {i}: {n} records from sender {sender}, at most {may} could arrive"
                ));
            }
        }
        if clean {
            for (&sender, &must) in &p.must {
                let n = seen.get(&sender).copied().unwrap_or(0);
                if n < must {
                    bad.push(format!(
                        "peer {i} read a clean end of file after {n} records from sender \
                         {sender}, of {must} sent to it while open"
                    ));
                }
            }
        }
        if !p.gone && !p.eof && !p.reset {
            bad.push(format!(
                "peer {i} saw neither end of file nor reset after the stop"
            ));
        }
    }
    // Connections: opened and closed once, for a reason.
    let mut accepted = 0;
    for (i, p) in case.peers.iter().enumerate() {
        let Some(c) = p.conn else {
            bad.push(format!("peer {i} was never opened"));
            continue;
        };
        accepted += 1;
        let conn = &case.conns[c];
        let Some((reason, read, eof)) = conn.closed else {
            bad.push(format!("{} (peer {i}) never closed", conn.rid));
            continue;
        };
        let explained = match reason {
            CloseReason::Closed => conn.closing,
            CloseReason::Reset | CloseReason::Error(_) => p.doomed,
            CloseReason::PeerClosed => p.half || p.gone,
            CloseReason::Shutdown => true,
            _ => false,
        };
        if !explained {
            bad.push(format!(
                "{} (peer {i}) closed for {reason:?}, unexplained (closing {}, peer half {} gone {} doomed {})",
                conn.rid, conn.closing, p.half, p.gone, p.doomed
            ));
        }
        if read > p.written || (eof && read != p.written) {
            bad.push(format!(
                "{} read {read} bytes (end of file: {eof}) of the {} peer {i} wrote",
                conn.rid, p.written
            ));
        }
    }
    // The spread.
    if !case.least {
        let (lo, hi) = (
            case.opens.iter().min().copied().unwrap_or(0),
            case.opens.iter().max().copied().unwrap_or(0),
        );
        if hi > lo + 1 {
            bad.push(format!("round-robin spread {:?}", case.opens));
        }
    }
    // The group's counters.
    if stats.total.connections != 0 {
        bad.push(format!(
            "{} connections after the stop",
            stats.total.connections
        ));
    }
    if stats.total.panics != 0 {
        bad.push(format!("{} panics in the loops", stats.total.panics));
    }
    if stats.total.accepted != accepted {
        bad.push(format!(
            "{} accepted, {accepted} peers opened",
            stats.total.accepted
        ));
    }
    for (l, s) in stats.loops.iter().enumerate() {
        if s.accepted != case.opens[l] as u64 {
            bad.push(format!(
                "loop {l} accepted {}, opened {}",
                s.accepted, case.opens[l]
            ));
        }
        if !group.handler(l).open.is_empty() {
            bad.push(format!(
                "loop {l}'s handler still has {} open",
                group.handler(l).open.len()
            ));
        }
    }
    if !(case.undelivered_min..=case.undelivered_max).contains(&stats.undelivered) {
        bad.push(format!(
            "undelivered {}, expected {}..={}",
            stats.undelivered, case.undelivered_min, case.undelivered_max
        ));
    }
    // After the stop, every call to any loop is refused, by value.
    for c in &case.conns {
        if let Err(e) = refused(&case.handle, c.rid) {
            bad.push(format!("after the stop, to {}: {e}", c.rid));
        }
    }
    case.bad = bad;
}

/// Runs one script; a description of every violation if any.
fn run_case(script: &Script) -> Result<(), String> {
    let fds_before = fd_count();
    let mut case = Case::start(script)?;
    let mut fatal = None;
    for (i, step) in script.steps.iter().enumerate() {
        let lockstep = !script.free || i + 1 == script.steps.len();
        let res = case.step(step).and_then(|()| {
            if lockstep {
                case.barrier()
            } else {
                case.drain_events();
                Ok(())
            }
        });
        if let Err(e) = res {
            fatal = Some(format!("step {i}: {e}"));
            break;
        }
    }
    let mut bad = Vec::new();
    match fatal {
        Some(e) => bad.push(e),
        None => match case.stop() {
            Ok((group, stats)) => {
                // Read what the graceful stop flushed, to the end.
                let deadline = Instant::now() + WAIT;
                while case.peers.iter().any(|p| !p.gone && !p.eof && !p.reset)
                    && Instant::now() < deadline
                {
                    for p in &mut case.peers {
                        p.read();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                check(&mut case, &stats, &group);
                bad.append(&mut case.bad);
                drop(group);
            }
            Err(e) => bad.push(e),
        },
    }
    bad.append(&mut case.bad);
    drop(case);
    // File descriptors back to where they were.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fd_count() != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let fds = fd_count();
    if fds != fds_before {
        bad.push(format!(
            "{fds} file descriptors open after the case, {fds_before} before"
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

/// The tests count the process's file descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn explore(cases: u32, max_steps: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = PropConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1000,
        max_shrink_time: 60_000,
        ..PropConfig::default()
    };
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        }
    };
    config.rng_seed = RngSeed::Fixed(seed);
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(&script_strategy(max_steps), |script| {
        run_case(&script).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => eprintln!(
            "group model: {cases} scripts in {:?} (PROPTEST_RNG_SEED={seed})",
            started.elapsed()
        ),
        Err(TestError::Fail(reason, script)) => panic!(
            "the group broke the model (replay: PROPTEST_RNG_SEED={seed}); minimal script:\n\
             {script:?}\n{}",
            reason.message()
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn random_group_scripts_keep_the_model() {
    let _watchdog = watchdog(
        "random_group_scripts_keep_the_model",
        Duration::from_secs(600),
    );
    explore(CASES, STEPS);
}

/// The long run: `NETLOOP_GROUP_MODEL_CASES` scripts (default 300) of up
/// to 60 steps.
#[test]
#[ignore]
fn random_group_scripts_keep_the_model_long() {
    let cases = std::env::var("NETLOOP_GROUP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let _watchdog = watchdog(
        "random_group_scripts_keep_the_model_long",
        Duration::from_secs(24 * 3600),
    );
    explore(cases, 60);
}
