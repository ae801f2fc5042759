//! The building blocks of a relay, one at a time, on a loop driven turn by
//! turn from the test thread (`run_once`), with std sockets as peers:
//! `pause_reading`/`resume_reading` beside the loop's own high-water
//! pause, `connect_with`/`adopt_with` states, per-connection timers, and
//! `send_owned`/`send_vectored` behind queued bytes.

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netloop::socket2::{Domain, SockRef, Socket, Type};
use netloop::{CloseReason, Config, ConnId, Context, Error, EventLoop, Handler, TimerId};
use util::{watchdog, STEP};

/// A connection's state: a number the test gives it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tag(u32);

/// What the handler heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Open(ConnId, Tag),
    Data(ConnId, Vec<u8>),
    Eof(ConnId),
    Backpressure(ConnId, bool),
    Close(ConnId, Tag, CloseReason),
    ConnectFailed(ConnId, Tag, io::ErrorKind),
    Timer(ConnId, Tag, TimerId),
}

/// Records every event; with `extras`, `on_data` echoes its bytes and then
/// sends more with each of the send calls.
#[derive(Default)]
struct Rec {
    ev: Vec<Ev>,
    extras: bool,
    /// `(to, n)`: `on_data` of any other connection sends `n` bytes to `to`.
    poke: Option<(ConnId, usize)>,
}

impl Rec {
    fn opened(&self) -> Vec<ConnId> {
        let opened = self.ev.iter().filter_map(|e| match e {
            Ev::Open(id, _) => Some(*id),
            _ => None,
        });
        opened.collect()
    }

    fn data_of(&self, id: ConnId) -> Vec<u8> {
        let mut all = Vec::new();
        for e in &self.ev {
            if let Ev::Data(i, d) = e {
                if *i == id {
                    all.extend_from_slice(d);
                }
            }
        }
        all
    }

    fn has(&self, want: impl Fn(&Ev) -> bool) -> bool {
        self.ev.iter().any(want)
    }

    fn position(&self, want: impl Fn(&Ev) -> bool) -> Option<usize> {
        self.ev.iter().position(want)
    }
}

impl Handler for Rec {
    type Conn = Tag;
    type Msg = ();

    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, tag: &mut Tag) {
        self.ev.push(Ev::Open(id, *tag));
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut Tag, data: &[u8]) -> usize {
        self.ev.push(Ev::Data(id, data.to_vec()));
        if let Some((to, n)) = self.poke.filter(|&(to, _)| to != id) {
            let _ = cx.send(to, &vec![0; n]);
        }
        if self.extras {
            cx.send(id, data).unwrap(); // written without a copy, unless moved
            cx.send_owned(id, b"<owned>".to_vec()).unwrap();
            cx.send_vectored(id, &[b"<v1>", b"", b"<v2>"]).unwrap();
            cx.send(id, b";").unwrap();
        }
        data.len()
    }

    fn on_eof(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut Tag) {
        self.ev.push(Ev::Eof(id));
    }

    fn on_backpressure(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut Tag, paused: bool) {
        self.ev.push(Ev::Backpressure(id, paused));
    }

    fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, tag: Tag, reason: CloseReason) {
        self.ev.push(Ev::Close(id, tag, reason));
    }

    fn on_connect_failed(&mut self, _: &mut Context<'_>, id: ConnId, tag: Tag, err: io::Error) {
        self.ev.push(Ev::ConnectFailed(id, tag, err.kind()));
    }

    fn on_conn_timer(&mut self, _: &mut Context<'_>, id: ConnId, tag: &mut Tag, timer: TimerId) {
        self.ev.push(Ev::Timer(id, *tag, timer));
    }
}

type Loop = EventLoop<Rec>;

fn new_loop(config: Config) -> (Loop, SocketAddr) {
    let mut el = EventLoop::with_config(Rec::default(), config).unwrap();
    let l = el.listen("tcp://127.0.0.1:0").unwrap();
    let addr = el.context().local_addr(l).unwrap().as_inet().unwrap();
    (el, addr)
}

/// Turns the loop until `cond` holds, failing after [`STEP`].
fn until(el: &mut Loop, what: &str, mut cond: impl FnMut(&Rec) -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond(el.handler()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            el.handler().ev
        );
        el.run_once(Some(Duration::from_millis(5))).unwrap();
    }
}

/// Turns the loop for `d`.
fn turn_for(el: &mut Loop, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        el.run_once(Some(Duration::from_millis(2))).unwrap();
    }
}

/// A client with a small receive buffer (set before connecting, so the
/// kernel does not grow it), and the server's id for it, whose send buffer
/// is made small too: a few KiB sent to it fill the kernel, the rest queues.
fn small_client(el: &mut Loop, addr: SocketAddr) -> (TcpStream, ConnId) {
    let before = el.handler().opened().len();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(STEP)).unwrap();
    until(el, "the accept", |h| h.opened().len() > before);
    let id = *el.handler().opened().last().unwrap();
    el.context()
        .socket(id)
        .unwrap()
        .set_send_buffer_size(4096)
        .unwrap();
    (s, id)
}

/// Reads from `s` until `n` bytes came, turning the loop between reads.
fn read_while_turning(el: &mut Loop, s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let deadline = Instant::now() + STEP;
    while got.len() < n {
        assert!(Instant::now() < deadline, "read {} of {n} bytes", got.len());
        el.run_once(Some(Duration::from_millis(1))).unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) => panic!("end of file after {} bytes", got.len()),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    s.set_nonblocking(false).unwrap();
    got
}

/// Bytes numbered so that a reordering shows: `n` bytes from `start`.
fn numbered(start: usize, n: usize) -> Vec<u8> {
    (start..start + n).map(|i| (i % 251) as u8).collect()
}

const HIGH: usize = 64 * 1024;
const LOW: usize = 16 * 1024;

fn water_config() -> Config {
    Config {
        high_water: HIGH,
        low_water: LOW,
        ..Config::default()
    }
}

/// Queues `n` bytes on `id`, enough to pass the high-water mark.
fn flood(el: &mut Loop, id: ConnId, n: usize) {
    el.context().send(id, &numbered(0, n)).unwrap();
}

// ----- pause_reading / resume_reading -----

#[test]
fn reading_resumes_only_when_neither_pause_holds() {
    let _w = watchdog("two pauses", Duration::from_secs(60));
    let (mut el, addr) = new_loop(water_config());
    const FLOOD: usize = 1 << 20;

    // The handler's pause first, then the high-water one; the handler's
    // released first.
    let (mut c, id) = small_client(&mut el, addr);
    el.context().pause_reading(id).unwrap();
    assert!(el.context().is_reading_paused(id).unwrap());
    c.write_all(b"first").unwrap();
    turn_for(&mut el, Duration::from_millis(50));
    assert!(el.handler().data_of(id).is_empty(), "on_data while paused");
    flood(&mut el, id, FLOOD);
    until(&mut el, "the high-water pause", |h| {
        h.has(|e| *e == Ev::Backpressure(id, true))
    });
    el.context().resume_reading(id).unwrap();
    assert!(!el.context().is_reading_paused(id).unwrap());
    turn_for(&mut el, Duration::from_millis(50));
    assert!(
        el.handler().data_of(id).is_empty(),
        "read while the high-water pause held"
    );
    assert_eq!(
        read_while_turning(&mut el, &mut c, FLOOD),
        numbered(0, FLOOD)
    );
    until(&mut el, "the bytes sent while paused", |h| {
        h.data_of(id) == b"first"
    });
    let h = el.handler();
    let resumed = h.position(|e| *e == Ev::Backpressure(id, false)).unwrap();
    let data = h
        .position(|e| matches!(e, Ev::Data(i, _) if *i == id))
        .unwrap();
    assert!(
        resumed < data,
        "on_data before the queue drained: {:?}",
        h.ev
    );

    // The high-water pause first, then the handler's; the high-water one
    // ends first.
    let (mut c, id) = small_client(&mut el, addr);
    flood(&mut el, id, FLOOD);
    until(&mut el, "the high-water pause", |h| {
        h.has(|e| *e == Ev::Backpressure(id, true))
    });
    el.context().pause_reading(id).unwrap();
    c.write_all(b"second").unwrap();
    assert_eq!(
        read_while_turning(&mut el, &mut c, FLOOD),
        numbered(0, FLOOD)
    );
    until(&mut el, "the end of the high-water pause", |h| {
        h.has(|e| *e == Ev::Backpressure(id, false))
    });
    turn_for(&mut el, Duration::from_millis(50));
    assert!(
        el.handler().data_of(id).is_empty(),
        "read while the handler's pause held"
    );
    assert!(el.context().is_reading_paused(id).unwrap());
    el.context().resume_reading(id).unwrap();
    until(&mut el, "the bytes sent while paused", |h| {
        h.data_of(id) == b"second"
    });

    // Resuming what is not paused does nothing; a listener is not a stream.
    el.context().resume_reading(id).unwrap();
    let l = el.context().listen("tcp://127.0.0.1:0").unwrap();
    assert!(matches!(
        el.context().pause_reading(l),
        Err(Error::WrongKind)
    ));
    drop(c);
    until(&mut el, "the close", |h| {
        h.has(|e| matches!(e, Ev::Eof(i) if *i == id))
    });
    el.context().close(id).unwrap();
    turn_for(&mut el, Duration::from_millis(10));
    assert!(matches!(el.context().pause_reading(id), Err(Error::Stale)));
}

#[test]
fn end_of_file_seen_while_paused_comes_after_the_data_once_resumed() {
    let _w = watchdog("eof while paused", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    let mut c = util::client(addr);
    until(&mut el, "the accept", |h| !h.opened().is_empty());
    let id = el.handler().opened()[0];
    el.context().pause_reading(id).unwrap();
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    turn_for(&mut el, Duration::from_millis(100));
    assert!(
        !el.handler().has(|e| matches!(e, Ev::Data(..) | Ev::Eof(_))),
        "heard while paused: {:?}",
        el.handler().ev
    );
    el.context().resume_reading(id).unwrap();
    until(&mut el, "the end of file", |h| h.has(|e| *e == Ev::Eof(id)));
    let h = el.handler();
    assert_eq!(h.data_of(id), b"last words");
    let data = h.position(|e| matches!(e, Ev::Data(..))).unwrap();
    let eof = h.position(|e| *e == Ev::Eof(id)).unwrap();
    assert!(data < eof, "{:?}", h.ev);

    // The same with nothing before the end of file.
    let mut d = util::client(addr);
    until(&mut el, "the accept", |h| h.opened().len() == 2);
    let id = el.handler().opened()[1];
    el.context().pause_reading(id).unwrap();
    d.shutdown(Shutdown::Write).unwrap();
    turn_for(&mut el, Duration::from_millis(100));
    assert!(!el.handler().has(|e| *e == Ev::Eof(id)));
    el.context().resume_reading(id).unwrap();
    until(&mut el, "the end of file", |h| h.has(|e| *e == Ev::Eof(id)));
    // Sending still works after the peer's end of file.
    el.context().send(id, b"bye").unwrap();
    el.context().close(id).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    d.set_nonblocking(true).unwrap();
    loop {
        el.run_once(Some(Duration::from_millis(2))).unwrap();
        match d.read_to_end(&mut got) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline);
    }
    assert_eq!(got, b"bye");
}

#[test]
fn a_reset_closes_a_paused_connection() {
    let _w = watchdog("reset while paused", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    let c = util::client(addr);
    until(&mut el, "the accept", |h| !h.opened().is_empty());
    let id = el.handler().opened()[0];
    el.context().pause_reading(id).unwrap();
    SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    until(&mut el, "the close", |h| {
        h.has(|e| *e == Ev::Close(id, Tag(0), CloseReason::Reset))
    });
}

// ----- connect_with / adopt_with -----

/// A listener whose backlog is full: a connect to it stays in progress
/// (the kernel drops its SYN). Keep the returned sockets alive.
fn full_backlog() -> (SocketAddr, Vec<TcpStream>, Socket) {
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (addr, fillers, l),
        }
    }
    panic!("could not fill the backlog of {addr}");
}

#[test]
fn connect_with_and_adopt_with_states_reach_on_open_and_come_back_on_failure() {
    let _w = watchdog("connect_with", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());

    // Connected: on_open sees the state given.
    let out = el
        .context()
        .connect_with(format!("tcp://{addr}"), Tag(7))
        .unwrap();
    until(&mut el, "the outbound open", |h| {
        h.has(|e| *e == Ev::Open(out, Tag(7)))
    });

    // Refused: on_connect_failed hands it back.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = el
        .context()
        .connect_with(format!("tcp://{dead}"), Tag(9))
        .unwrap();
    until(&mut el, "the refusal", |h| {
        h.has(|e| *e == Ev::ConnectFailed(refused, Tag(9), io::ErrorKind::ConnectionRefused))
    });
    assert!(!el
        .handler()
        .has(|e| matches!(e, Ev::Open(i, _) if *i == refused)));

    // Abandoned while connecting: the state comes back too.
    let (slow, _fillers, _l) = full_backlog();
    let pending = el
        .context()
        .connect_with(format!("tcp://{slow}"), Tag(13))
        .unwrap();
    turn_for(&mut el, Duration::from_millis(20));
    assert!(!el.context().is_open(pending));
    el.context().abort(pending).unwrap();
    until(&mut el, "the abandoned connect", |h| {
        h.has(|e| matches!(e, Ev::ConnectFailed(i, Tag(13), _) if *i == pending))
    });

    // Adopted: on_open sees the state given.
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let std_stream = TcpStream::connect(peer.local_addr().unwrap()).unwrap();
    let adopted = el.context().adopt_with(std_stream, Tag(11)).unwrap();
    until(&mut el, "the adopted open", |h| {
        h.has(|e| *e == Ev::Open(adopted, Tag(11)))
    });

    // A state of another type is refused before anything is made.
    let err = el
        .context()
        .connect_with(format!("tcp://{addr}"), 5u32)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let std_stream = TcpStream::connect(peer.local_addr().unwrap()).unwrap();
    let err = el.context().adopt_with(std_stream, "no").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    // Closing hands back the state the connection was made with.
    el.context().close(out).unwrap();
    until(&mut el, "the close", |h| {
        h.has(|e| matches!(e, Ev::Close(i, Tag(7), _) if *i == out))
    });
}

// ----- Per-connection timers -----

#[test]
fn conn_timers_fire_with_their_state_and_never_after_close() {
    let _w = watchdog("conn timers", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    let a = el
        .context()
        .connect_with(format!("tcp://{addr}"), Tag(1))
        .unwrap();
    let b = el
        .context()
        .connect_with(format!("tcp://{addr}"), Tag(2))
        .unwrap();
    until(&mut el, "both open", |h| {
        h.has(|e| *e == Ev::Open(a, Tag(1))) && h.has(|e| *e == Ev::Open(b, Tag(2)))
    });
    let start = Instant::now();
    let ta = el
        .context()
        .set_conn_timer(a, Duration::from_millis(30))
        .unwrap();
    let tb = el
        .context()
        .set_conn_timer(b, Duration::from_millis(30))
        .unwrap();
    let cancelled = el
        .context()
        .set_conn_timer(a, Duration::from_millis(30))
        .unwrap();
    assert!(el.context().cancel_timer(cancelled));
    // b closes (and its slot may be reused) before its timer is due.
    el.context().abort(b).unwrap();
    let c = el
        .context()
        .connect_with(format!("tcp://{addr}"), Tag(3))
        .unwrap();
    until(&mut el, "a's timer", |h| {
        h.has(|e| *e == Ev::Timer(a, Tag(1), ta))
    });
    assert!(start.elapsed() >= Duration::from_millis(30));
    turn_for(&mut el, Duration::from_millis(100));
    let h = el.handler();
    let timers: Vec<&Ev> = h.ev.iter().filter(|e| matches!(e, Ev::Timer(..))).collect();
    assert_eq!(timers, [&Ev::Timer(a, Tag(1), ta)], "{:?}", h.ev);
    assert!(h.has(|e| *e == Ev::Open(c, Tag(3))));
    let _ = tb;

    // Only streams have them; a stale id has none.
    let l = el.context().listen("tcp://127.0.0.1:0").unwrap();
    assert!(matches!(
        el.context().set_conn_timer(l, Duration::from_millis(1)),
        Err(Error::WrongKind)
    ));
    assert!(matches!(
        el.context().set_conn_timer(b, Duration::from_millis(1)),
        Err(Error::Stale)
    ));
}

/// A conn timer set on a connection made by `connect_with` that is still
/// connecting must see the state given to `connect_with`, and
/// `on_connect_failed` must hand that state back afterwards.
///
/// Bug: the loop keeps a `connect_with` state aside (a "seed") until
/// `on_open`; a callback about the connection before then (this timer, or
/// `on_backpressure` for bytes queued while connecting) gets a `Default`
/// state made on the spot, and `on_connect_failed` then hands back that
/// `Default` one instead of the seed.
#[test]
fn conn_timer_on_a_connecting_connection_sees_its_connect_with_state() {
    let _w = watchdog("conn timer while connecting", Duration::from_secs(60));
    let (mut el, _) = new_loop(Config::default());
    let (slow, _fillers, _l) = full_backlog();
    let id = el
        .context()
        .connect_with(format!("tcp://{slow}"), Tag(5))
        .unwrap();
    let t = el
        .context()
        .set_conn_timer(id, Duration::from_millis(20))
        .unwrap();
    until(&mut el, "the timer", |h| {
        h.has(|e| matches!(e, Ev::Timer(..)))
    });
    assert!(
        el.handler().has(|e| *e == Ev::Timer(id, Tag(5), t)),
        "{:?}",
        el.handler().ev
    );
    el.context().abort(id).unwrap();
    until(&mut el, "the abandoned connect", |h| {
        h.has(|e| matches!(e, Ev::ConnectFailed(..)))
    });
    assert!(
        el.handler()
            .has(|e| matches!(e, Ev::ConnectFailed(i, Tag(5), _) if *i == id)),
        "{:?}",
        el.handler().ev
    );
}

// ----- send_owned / send_vectored -----

#[test]
fn send_owned_and_send_vectored_keep_order_behind_queued_bytes() {
    let _w = watchdog("send order", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    let (mut c, id) = small_client(&mut el, addr);
    let mut want = Vec::new();
    let mut at = 0;
    let mut piece = |n: usize| {
        let p = numbered(at, n);
        at += n;
        p
    };
    {
        let mut cx = el.context();
        // Nothing queued: large owned and vectored sends are written at
        // once, what the kernel leaves is queued.
        let a = piece(200_000);
        want.extend_from_slice(&a);
        cx.send_owned(id, a).unwrap();
        let (v1, v2, v3) = (piece(30_000), piece(1), piece(70_000));
        want.extend_from_slice(&v1);
        want.extend_from_slice(&v2);
        want.extend_from_slice(&v3);
        cx.send_vectored(id, &[&v1, &v2, &[], &v3]).unwrap();
        // Behind queued bytes, of every size and kind.
        for n in [1, 100, 20_000, 300_000] {
            let p = piece(n);
            want.extend_from_slice(&p);
            cx.send(id, &p).unwrap();
            let o = piece(n);
            want.extend_from_slice(&o);
            cx.send_owned(id, o).unwrap();
            let (x, y) = (piece(n), piece(7));
            want.extend_from_slice(&x);
            want.extend_from_slice(&y);
            cx.send_vectored(id, &[&x, &y]).unwrap();
        }
        assert!(cx.queued(id).unwrap() > 0, "nothing was queued");
    }
    let got = read_while_turning(&mut el, &mut c, want.len());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes out of order");

    // On a fresh connection with nothing queued, small ones too.
    let (mut d, id) = small_client(&mut el, addr);
    {
        let mut cx = el.context();
        cx.send_owned(id, b"ab".to_vec()).unwrap();
        cx.send_vectored(id, &[b"c", b"de"]).unwrap();
        cx.send(id, b"f").unwrap();
        cx.send_owned(id, Vec::new()).unwrap();
        cx.send_vectored(id, &[]).unwrap();
    }
    assert_eq!(read_while_turning(&mut el, &mut d, 6), b"abcdef");
}

#[test]
fn send_owned_and_send_vectored_after_a_zero_copy_reply_keep_order() {
    let _w = watchdog("zero copy then owned", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    el.handler_mut().extras = true;
    let mut c = util::client(addr);
    c.write_all(b"abc").unwrap();
    let want = b"abc<owned><v1><v2>;";
    let got = read_while_turning(&mut el, &mut c, want.len());
    assert_eq!(got, want);
    // Behind the echo of every read of a larger message too.
    let id = el.handler().opened()[0];
    el.handler_mut().ev.clear();
    let big = numbered(0, 300_000);
    c.write_all(&big).unwrap();
    c.set_nonblocking(true).unwrap();
    let expected = |h: &Rec| {
        let mut expect = Vec::new();
        for e in &h.ev {
            if let Ev::Data(_, d) = e {
                expect.extend_from_slice(d);
                expect.extend_from_slice(&want[3..]);
            }
        }
        expect
    };
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 16];
    let deadline = Instant::now() + STEP;
    loop {
        assert!(Instant::now() < deadline, "got {} bytes", got.len());
        el.run_once(Some(Duration::from_millis(1))).unwrap();
        match c.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        let h = el.handler();
        let expect = expected(h);
        if h.data_of(id).len() == big.len() && got.len() >= expect.len() {
            assert!(got == expect, "bytes out of order");
            return;
        }
    }
}

/// [`Config::max_write_queue`] must close a connection whose queue passes
/// it whatever `high_water` is. `Config::high_water`'s docs suggest
/// `usize::MAX` for a peer that throttles its own source.
///
/// Bug: the loop applies the hard cap only where the queue passed
/// `high_water` (every send path tests `queued > high_water` before it
/// looks at the cap), so with `high_water` at or above `max_write_queue`
/// the cap never applies and a reader that never reads grows the queue
/// without bound.
#[test]
fn the_hard_cap_on_a_queue_holds_without_the_high_water_pause() {
    let _w = watchdog("hard cap", Duration::from_secs(60));
    const CAP: usize = 256 * 1024;
    let (mut el, addr) = new_loop(Config {
        high_water: usize::MAX,
        max_write_queue: CAP,
        ..Config::default()
    });
    let (_c, id) = small_client(&mut el, addr);
    let chunk = numbered(0, 1000);
    let mut refused = None;
    for i in 0..4 * CAP / chunk.len() {
        if let Err(e) = el.context().send(id, &chunk) {
            refused = Some((i, e));
            break;
        }
    }
    let queued = el.context().queued(id).unwrap_or(0);
    assert!(
        matches!(refused, Some((_, Error::QueueFull))),
        "{} bytes sent, {queued} queued over a cap of {CAP}: {refused:?}",
        4 * CAP
    );
    until(&mut el, "the close", |h| {
        h.has(|e| *e == Ev::Close(id, Tag(0), CloseReason::WriteQueueFull))
    });
}

/// A peer's reset must reach the handler as a close with
/// [`CloseReason::Reset`], never as an end of file: a relay passes an end
/// of file on as a clean half-close, which would make a broken stream look
/// complete.
///
/// Bug: a `send` of 16 KiB or more to a connection with nothing queued is
/// written at once (`Conn::write_direct`), and an error from that write is
/// dropped (`Conn::after_direct` turns it into 0 bytes written, leaving it
/// "to the flush"). But the kernel reports a reset once: that send took
/// ECONNRESET, so when the connection's event is read later in the same
/// turn, `recv` returns 0 and the handler hears `on_eof`, before the flush
/// meets EPIPE and closes with `Reset`. Here another connection's
/// `on_data` makes the send, as a relay's does.
#[test]
fn a_reset_met_by_a_direct_send_is_not_reported_as_end_of_file() {
    let _w = watchdog("reset then direct send", Duration::from_secs(60));
    let (mut el, addr) = new_loop(Config::default());
    let reset = util::client(addr);
    until(&mut el, "the first accept", |h| h.opened().len() == 1);
    let x = el.handler().opened()[0];
    let mut poker = util::client(addr);
    until(&mut el, "the second accept", |h| h.opened().len() == 2);
    el.handler_mut().poke = Some((x, 64 * 1024));
    // Both in one turn: the poker's bytes first, then the reset.
    poker.write_all(b"go").unwrap();
    SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reset);
    until(&mut el, "the close", |h| {
        h.has(|e| matches!(e, Ev::Close(i, ..) if *i == x))
    });
    let h = el.handler();
    assert!(
        !h.has(|e| *e == Ev::Eof(x)),
        "a reset reported as an end of file: {:?}",
        h.ev
    );
    assert!(
        h.has(|e| *e == Ev::Close(x, Tag(0), CloseReason::Reset)),
        "{:?}",
        h.ev
    );
}
