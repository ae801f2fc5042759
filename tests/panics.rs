//! A handler that panics: the connection it was
//! serving is closed, the others carry on, and ten thousand panics leave fd
//! count and memory flat; with `catch_panics: false` the panic propagates.
//!
//! Then a panic in each callback in turn: it closes at most the connection
//! it was about (none for callbacks about no connection), is counted once,
//! and a client it was not about goes on being served; an `on_stop` that
//! always panics does not keep the loop from stopping; and a panic inside
//! the accept loop or the datagram loop leaves what was queued behind it in
//! the kernel served.
//!
//! A panic hook keeps the handlers' own panics (ten thousand of them) out
//! of the output, and reports any other. The tests measure the whole
//! process, so they take [`serial`].

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use netloop::{
    Addr, CloseReason, Config, ConnId, Context, EventLoop, Handler, Interest, Ready, Stats, TimerId,
};
use util::*;

/// Echoes, but panics on input that starts with `boom`.
#[derive(Default)]
struct Fragile;

impl Handler for Fragile {
    type Conn = ();
    type Msg = mpsc::Sender<Stats>;

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        if data.starts_with(b"boom") {
            panic!("boom from {id}");
        }
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_message(&mut self, cx: &mut Context<'_>, reply: mpsc::Sender<Stats>) {
        let _ = reply.send(cx.stats().clone());
    }
}

/// Silences the handlers' own panics (their messages start with `boom`);
/// any other panic, such as a failed assertion, is reported as usual.
fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            if !msg.starts_with("boom") {
                default(info);
            }
        }));
    });
}

fn stats(server: &Server<Fragile>) -> Stats {
    let (tx, rx) = mpsc::channel();
    assert!(server.handle.send(tx).is_ok(), "the loop is gone");
    rx.recv_timeout(STEP).expect("stats from the loop")
}

/// Sends `boom` and expects the connection closed: end of file or a reset,
/// never an echo.
fn blow_up(addr: SocketAddr) {
    let mut c = client(addr);
    c.write_all(b"boom\n").unwrap();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the panicking connection closed, got {other:?}"),
    }
}

#[test]
fn panic_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _watchdog = watchdog("panic_closes_only_that_connection", Duration::from_secs(60));
    let server = serve(Fragile::default, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut others: Vec<TcpStream> = (0..10).map(|_| client(server.inet())).collect();
    for (i, c) in others.iter_mut().enumerate() {
        round_trip(c, format!("before {i}\n").as_bytes());
    }
    blow_up(server.inet());
    for (i, c) in others.iter_mut().enumerate() {
        round_trip(c, format!("after {i}\n").as_bytes());
    }
    let s = stats(&server);
    assert_eq!(s.panics, 1, "{s:?}");
    assert_eq!(s.connections, 10, "{s:?}");
    server.stop();
}

/// Ten thousand panics, from four clients at a time (about a second).
/// Measured here: after a warm-up of 1,000 the process's RSS does not move
/// over the next 9,000 (+0 KiB); 2 MiB of slack for allocator noise is
/// ~230 bytes per panic, so leaking one small buffer per panic shows (a
/// 512-byte leak made it fail with +4.6 MiB).
#[test]
fn ten_thousand_panics_leave_fds_and_memory_flat() {
    quiet_panics();
    let _serial = serial();
    let _watchdog = watchdog("ten_thousand_panics", Duration::from_secs(120));
    let server = serve(Fragile::default, Config::default(), &["tcp://127.0.0.1:0"]);
    let addr = server.inet();
    let panics = |n: usize| {
        let threads: Vec<_> = (0..4)
            .map(|_| thread::spawn(move || (0..n / 4).for_each(|_| blow_up(addr))))
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    };
    let t = Instant::now();
    panics(1_000);
    wait_for("the warm-up connections closed", || {
        stats(&server).connections == 0
    });
    let (fds, rss) = (fd_count(), rss_kib(None));
    panics(9_000);
    wait_for("every panicked connection closed", || {
        stats(&server).connections == 0
    });
    wait_for("the fd count back to its baseline", || fd_count() <= fds);
    let grown = rss_kib(None) as i64 - rss as i64;
    let s = stats(&server);
    eprintln!(
        "10,000 panics in {:?}; RSS {rss} KiB after warm-up, {grown:+} KiB after 9,000 more",
        t.elapsed()
    );
    assert_eq!(s.panics, 10_000, "{s:?}");
    assert!(grown < 2048, "RSS grew {grown} KiB over 9,000 panics");
    let mut c = client(addr);
    round_trip(&mut c, b"still serving\n");
    drop(c);
    server.stop();
}

#[test]
fn without_catch_panics_the_panic_leaves_run() {
    quiet_panics();
    let _serial = serial();
    let _watchdog = watchdog("without_catch_panics", Duration::from_secs(60));
    let config = Config {
        catch_panics: false,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let mut el = EventLoop::with_config(Fragile, config).unwrap();
        let l = el.listen("tcp://127.0.0.1:0").unwrap();
        tx.send(el.context().local_addr(l).unwrap()).unwrap();
        el.run()
    });
    let addr = rx.recv_timeout(STEP).unwrap().as_inet().unwrap();
    let mut c = client(addr);
    round_trip(&mut c, b"fine\n");
    c.write_all(b"boom\n").unwrap();
    wait_for("the loop thread to end", || thread.is_finished());
    let payload = thread
        .join()
        .expect_err("run() returned instead of panicking");
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(msg.starts_with("boom from"), "panic payload {msg:?}");
    // The loop unwound and dropped its sockets: the client sees the end.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

/// Echoes after a pause (so the test can queue messages while the loop is
/// busy), and panics on message 0.
struct Picky {
    seen: mpsc::Sender<u32>,
}

impl Handler for Picky {
    type Conn = ();
    type Msg = u32;

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        thread::sleep(Duration::from_millis(300));
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_message(&mut self, _: &mut Context<'_>, n: u32) {
        if n == 0 {
            panic!("boom in on_message");
        }
        let _ = self.seen.send(n);
    }
}

/// Messages queued behind one whose `on_message` panics are not stranded:
/// they were sent while the loop was busy, so only the first of them woke
/// it, and the panic cut that wake's drain short. The loop wakes itself
/// again after a panic, so they arrive without any further send.
#[test]
fn messages_behind_a_panicking_one_are_still_handled() {
    quiet_panics();
    let _watchdog = watchdog("messages_behind_a_panic", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Picky { seen: tx },
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let mut c = client(server.inet());
    c.write_all(b"pause\n").unwrap();
    thread::sleep(Duration::from_millis(100)); // the loop is inside on_data now
    for n in [0, 1, 2] {
        assert!(server.handle.send(n).is_ok(), "the loop is gone");
    }
    for want in [1, 2] {
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a message behind the panicking one was stranded");
        assert_eq!(got, want);
    }
    assert_eq!(read_n(&mut c, 6), b"pause\n");
    server.stop();
}

// ---------------------------------------------------------------------------
// A panic in each callback: it closes at most what it was about, is counted
// once, and a client that has nothing to do with it (echoed just before, so
// the last connection the loop read) goes on being served.

/// The callback a [`Bomb`] panics in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cb {
    Open,
    ConnectFailed,
    Data,
    Eof,
    Drain,
    Backpressure,
    Close,
    Refuse,
    Datagram,
    Error,
    Timer,
    Message,
    FdReady,
    Stop,
}

/// What the test asks of a [`Bomb`].
enum Order {
    /// Reply with the loop's counters.
    Stats(mpsc::Sender<Stats>),
    /// Panic (in `on_message`).
    Boom,
    /// Connect over TCP (to a closed port: `on_connect_failed`).
    Connect(SocketAddr),
    /// Make a connected UDP socket to this address.
    UdpConnect(SocketAddr),
    /// Send a datagram on that socket (to a closed port: `on_error`).
    UdpPing,
    /// Set a 1 ms timer.
    Timer,
}

/// Per connection: the client sent `arm\n`, so the bomb's callback panics
/// for this connection.
#[derive(Default)]
struct Armed(bool);

/// Echoes streams and datagrams, and panics in callback `at`: for a
/// connection callback, only for a connection that sent `arm\n` (for
/// `on_open`, the second connection; for `on_refuse`, any); for a datagram,
/// only for `boom`.
struct Bomb {
    at: Cb,
    opens: usize,
    streams: Vec<ConnId>,
    udp: Option<ConnId>,
    stopped: bool,
    stats_at_close: Option<Stats>,
}

impl Bomb {
    fn new(at: Cb) -> Bomb {
        Bomb {
            at,
            opens: 0,
            streams: Vec::new(),
            udp: None,
            stopped: false,
            stats_at_close: None,
        }
    }

    fn boom(&self, here: Cb) {
        if self.at == here {
            panic!("boom in {here:?}");
        }
    }
}

impl Handler for Bomb {
    type Conn = Armed;
    type Msg = Order;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut Armed) {
        if cx.transport(id).is_ok_and(|t| t.is_stream()) {
            self.opens += 1;
            if self.opens == 2 {
                self.boom(Cb::Open);
            }
            self.streams.push(id);
        }
    }

    fn on_connect_failed(
        &mut self,
        _: &mut Context<'_>,
        _: ConnId,
        _: Self::Conn,
        _: std::io::Error,
    ) {
        self.boom(Cb::ConnectFailed);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        armed: &mut Armed,
        data: &[u8],
    ) -> usize {
        if data == b"arm\n" {
            armed.0 = true;
            match self.at {
                Cb::Data => panic!("boom in Data"),
                Cb::Backpressure => {
                    // Far over the high-water mark, to a client that does not
                    // read. The kernel's buffers are made small first (the
                    // client's receive buffer too): loopback's can grow to
                    // take tens of MB in one send, and then nothing is
                    // queued and no backpressure comes (measured: a 48 MiB
                    // send taken whole).
                    if let Ok(sock) = cx.socket(id) {
                        let _ = sock.set_send_buffer_size(16 * 1024);
                    }
                    let _ = cx.send(id, &vec![0u8; 8 << 20]);
                    return data.len();
                }
                _ => {}
            }
        }
        let _ = cx.send(id, data); // without a copy: on_drain follows
        data.len()
    }

    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, armed: &mut Armed) {
        if armed.0 {
            self.boom(Cb::Eof);
        }
        let _ = cx.close(id);
    }

    fn on_drain(&mut self, _: &mut Context<'_>, _: ConnId, armed: &mut Armed) {
        if armed.0 {
            self.boom(Cb::Drain);
        }
    }

    fn on_backpressure(&mut self, _: &mut Context<'_>, _: ConnId, armed: &mut Armed, paused: bool) {
        if armed.0 && paused {
            self.boom(Cb::Backpressure);
        }
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, armed: Armed, _: CloseReason) {
        self.streams.retain(|&s| s != id);
        self.stats_at_close = Some(cx.stats().clone());
        if armed.0 {
            self.boom(Cb::Close);
        }
    }

    fn on_refuse(&mut self, _: &mut Context<'_>, _: ConnId) {
        self.boom(Cb::Refuse);
    }

    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut Armed,
        data: &[u8],
        from: &Addr,
    ) {
        if data == b"boom" {
            self.boom(Cb::Datagram);
        }
        let _ = cx.send_to(id, data, from);
    }

    fn on_error(&mut self, _: &mut Context<'_>, _: ConnId, _: std::io::Error) {
        self.boom(Cb::Error);
    }

    fn on_timer(&mut self, _: &mut Context<'_>, _: TimerId) {
        self.boom(Cb::Timer);
    }

    fn on_message(&mut self, cx: &mut Context<'_>, order: Order) {
        match order {
            Order::Stats(reply) => {
                let _ = reply.send(cx.stats().clone());
            }
            Order::Boom => self.boom(Cb::Message),
            Order::Connect(to) => {
                let _ = cx.connect(format!("tcp://{to}"));
            }
            Order::UdpConnect(to) => {
                self.udp = Some(cx.connect(format!("udp://{to}")).expect("udp connect"));
            }
            Order::UdpPing => {
                let _ = cx.send(self.udp.expect("UdpConnect first"), b"ping");
            }
            Order::Timer => {
                cx.set_timer(Duration::from_millis(1));
            }
        }
    }

    fn on_fd_ready(&mut self, _: &mut Context<'_>, _: ConnId, _: Ready) {
        self.boom(Cb::FdReady);
    }

    fn on_stop(&mut self, cx: &mut Context<'_>) {
        // Last words to every client, then the panic (once: whether a
        // panicking on_stop is called again is not this test's business).
        if !std::mem::replace(&mut self.stopped, true) {
            for &id in &self.streams {
                let _ = cx.send(id, b"bye\n");
            }
            self.boom(Cb::Stop);
        }
    }
}

/// A [`Bomb`] serving TCP and UDP, and a bystander client echoed once: the
/// last connection the loop read before the test sets the bomb off.
struct Scene {
    server: Server<Bomb>,
    bystander: TcpStream,
}

fn scene(at: Cb, config: Config) -> Scene {
    scene_with(at, config, |_| {})
}

/// [`scene`], with `setup` run on the loop before it starts.
fn scene_with(
    at: Cb,
    config: Config,
    setup: impl FnOnce(&mut EventLoop<Bomb>) + Send + 'static,
) -> Scene {
    let server = serve_loop(
        move || {
            let mut el = EventLoop::with_config(Bomb::new(at), config)?;
            setup(&mut el);
            Ok(el)
        },
        &["tcp://127.0.0.1:0", "udp://127.0.0.1:0"],
    );
    let mut bystander = client(server.inet());
    round_trip(&mut bystander, b"before the panic\n");
    Scene { server, bystander }
}

impl Scene {
    fn udp(&self) -> SocketAddr {
        self.server.addrs[1].as_inet().unwrap()
    }

    fn order(&self, order: Order) {
        assert!(self.server.handle.send(order).is_ok(), "the loop is gone");
    }

    fn stats(&self) -> Stats {
        let (tx, rx) = mpsc::channel();
        self.order(Order::Stats(tx));
        rx.recv_timeout(STEP).expect("stats from the loop")
    }

    /// Waits for the panic; checks that it was counted once, that only the
    /// bystander is left open, and that the bystander is still served.
    fn after_the_panic(mut self) {
        wait_for("the panic", || self.stats().panics >= 1);
        let s = self.stats();
        assert_eq!(s.panics, 1, "one panic, counted once: {s:?}");
        still_served(&mut self.bystander);
        let s = self.stats();
        assert_eq!(s.connections, 1, "only the bystander is open: {s:?}");
        assert_eq!(s.panics, 1, "{s:?}");
        self.server.stop();
    }
}

/// The bystander gets its echo after the panic.
fn still_served(c: &mut TcpStream) {
    let msg = b"after the panic\n";
    let res = c.write_all(msg).and_then(|()| {
        let mut buf = [0u8; 16];
        c.read_exact(&mut buf).map(|()| buf)
    });
    match res {
        Ok(buf) => assert_eq!(&buf, msg),
        Err(e) => panic!("a client the panic was not about is no longer served: {e}"),
    }
}

/// The client of the connection a panic was about sees it closed (end of
/// file or a reset, after whatever was sent before).
fn sees_closed(c: &mut TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the connection the panic was about is not closed: {e}"),
        }
    }
}

/// A client whose connection the loop closes as soon as it accepts it: it
/// sees the close (the reset may even come before `connect` returns).
fn culprit_sees_closed(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, STEP) {
        Ok(mut c) => {
            c.set_read_timeout(Some(STEP)).unwrap();
            sees_closed(&mut c);
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect: {e}"),
    }
}

/// A closed loopback port: bound, then let go.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn closed_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A culprit client sends `arm\n` (and reads its echo when `echoed`).
fn armed_client(scene: &Scene, echoed: bool) -> TcpStream {
    let mut c = client(scene.server.inet());
    if echoed {
        round_trip(&mut c, b"arm\n");
    } else {
        c.write_all(b"arm\n").unwrap();
    }
    c
}

#[test]
fn panic_in_on_open_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_open", Duration::from_secs(60));
    let s = scene(Cb::Open, Config::default());
    culprit_sees_closed(s.server.inet());
    s.after_the_panic();
}

#[test]
fn panic_in_on_connect_failed_closes_nothing() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_connect_failed", Duration::from_secs(60));
    let s = scene(Cb::ConnectFailed, Config::default());
    s.order(Order::Connect(closed_port()));
    s.after_the_panic();
}

#[test]
fn panic_in_on_data_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_data", Duration::from_secs(60));
    let s = scene(Cb::Data, Config::default());
    let mut culprit = armed_client(&s, false);
    sees_closed(&mut culprit);
    s.after_the_panic();
}

#[test]
fn panic_in_on_eof_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_eof", Duration::from_secs(60));
    let s = scene(Cb::Eof, Config::default());
    let mut culprit = armed_client(&s, true);
    culprit.shutdown(Shutdown::Write).unwrap();
    sees_closed(&mut culprit);
    s.after_the_panic();
}

#[test]
fn panic_in_on_drain_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_drain", Duration::from_secs(60));
    let s = scene(Cb::Drain, Config::default());
    let mut culprit = armed_client(&s, false);
    sees_closed(&mut culprit);
    s.after_the_panic();
}

#[test]
fn panic_in_on_backpressure_closes_only_that_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_backpressure", Duration::from_secs(60));
    let s = scene(Cb::Backpressure, Config::default());
    let sock = netloop::socket2::Socket::new(
        netloop::socket2::Domain::IPV4,
        netloop::socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect_timeout(&s.server.inet().into(), STEP).unwrap();
    let mut culprit: TcpStream = sock.into();
    culprit.set_read_timeout(Some(STEP)).unwrap();
    culprit.write_all(b"arm\n").unwrap();
    sees_closed(&mut culprit);
    s.after_the_panic();
}

#[test]
fn panic_in_on_close_closes_nothing_more() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_close", Duration::from_secs(60));
    let s = scene(Cb::Close, Config::default());
    drop(armed_client(&s, true));
    s.after_the_panic();
}

#[test]
fn panic_in_on_refuse_closes_only_the_refused_connection() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_refuse", Duration::from_secs(60));
    let config = Config {
        max_connections: 1, // the bystander
        ..Default::default()
    };
    let s = scene(Cb::Refuse, config);
    culprit_sees_closed(s.server.inet());
    s.after_the_panic();
}

#[test]
fn panic_in_on_datagram_leaves_tcp_clients_alone() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_datagram", Duration::from_secs(60));
    let s = scene(Cb::Datagram, Config::default());
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"boom", s.udp()).unwrap();
    s.after_the_panic();
}

#[test]
fn panic_in_on_error_leaves_tcp_clients_alone() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_error", Duration::from_secs(60));
    let mut s = scene(Cb::Error, Config::default());
    s.order(Order::UdpConnect(closed_udp_port()));
    // The bystander is again the last connection read before the error.
    round_trip(&mut s.bystander, b"once more\n");
    // ECONNREFUSED (ICMP port unreachable) comes back to the socket.
    s.order(Order::UdpPing);
    s.after_the_panic();
}

#[test]
fn panic_in_on_timer_closes_nothing() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_timer", Duration::from_secs(60));
    let s = scene(Cb::Timer, Config::default());
    s.order(Order::Timer);
    s.after_the_panic();
}

#[test]
fn panic_in_on_message_closes_nothing() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_message", Duration::from_secs(60));
    let s = scene(Cb::Message, Config::default());
    s.order(Order::Boom);
    s.after_the_panic();
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]).into(),
        )
    }
}

#[test]
fn panic_in_on_fd_ready_leaves_tcp_clients_alone() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_fd_ready", Duration::from_secs(60));
    let (read_end, mut write_end) = pipe();
    let s = scene_with(Cb::FdReady, Config::default(), move |el| {
        el.context()
            .register_fd(read_end, Interest::READABLE)
            .expect("register the pipe");
    });
    write_end.write_all(b"x").unwrap();
    s.after_the_panic();
}

#[test]
fn panic_in_on_stop_still_flushes_last_words_and_closes_gracefully() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_stop", Duration::from_secs(60));
    let Scene {
        server,
        mut bystander,
    } = scene(Cb::Stop, Config::default());
    let h = server.stop();
    match read_to_end(&mut bystander) {
        Ok(got) => assert_eq!(
            String::from_utf8_lossy(&got),
            "bye\n",
            "what on_stop sent, then end of file"
        ),
        Err(e) => panic!("a client the panic was not about was not closed gracefully: {e}"),
    }
    let s = h.stats_at_close.expect("the bystander's on_close");
    assert_eq!(s.panics, 1, "one panic, counted once: {s:?}");
}

// ---------------------------------------------------------------------------
// A handler whose on_stop always panics: the stop goes on regardless.

struct StopPanics(Arc<AtomicUsize>);

impl Handler for StopPanics {
    type Conn = ();
    type Msg = ();
    fn on_stop(&mut self, _: &mut Context<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("boom in on_stop, every time");
    }
}

#[test]
fn on_stop_that_always_panics_does_not_keep_the_loop_from_stopping() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("on_stop_always_panics", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let mut el = EventLoop::new(StopPanics(counter)).unwrap();
        el.listen("tcp://127.0.0.1:0").unwrap();
        tx.send(el.handle()).unwrap();
        el.run().unwrap();
        el.stats().clone()
    });
    let handle = rx.recv_timeout(STEP).expect("the loop started");
    handle.stop();
    let deadline = Instant::now() + STEP;
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the loop did not stop within {STEP:?}: {} calls to on_stop so far",
            calls.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(5));
    }
    let s = thread.join().expect("run panicked");
    let calls = calls.load(Ordering::SeqCst);
    assert!(calls >= 1, "on_stop was not called");
    assert_eq!(s.panics, calls as u64, "each panic counted once: {s:?}");
}

// ---------------------------------------------------------------------------
// A panic inside the accept loop or the datagram loop: what was queued
// behind it in the kernel is still served, with nothing more arriving.

/// Greets an accepted connection (`welcome`) or a refused one (`busy`) and
/// echoes streams and datagrams, but panics in the first call of `at`.
struct Backlog {
    at: Cb,
    fired: bool,
}

impl Backlog {
    fn first(&mut self, here: Cb) {
        if self.at == here && !std::mem::replace(&mut self.fired, true) {
            panic!("boom in the first {here:?}");
        }
    }
}

impl Handler for Backlog {
    type Conn = ();
    type Msg = mpsc::Sender<Stats>;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.first(Cb::Open);
        let _ = cx.send(id, b"welcome\n");
    }

    fn on_refuse(&mut self, cx: &mut Context<'_>, id: ConnId) {
        self.first(Cb::Refuse);
        let _ = cx.send(id, b"busy\n");
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
        from: &Addr,
    ) {
        self.first(Cb::Datagram);
        let _ = cx.send_to(id, data, from);
    }

    fn on_message(&mut self, cx: &mut Context<'_>, reply: mpsc::Sender<Stats>) {
        let _ = reply.send(cx.stats().clone());
    }
}

/// How long a client waits for what the loop owes it: the loop has it all
/// at once, so this is only slack for a loaded machine.
const OWED: Duration = Duration::from_secs(3);

/// A [`Backlog`] whose TCP and UDP sockets are bound, and `queue` run
/// (connecting clients, sending datagrams), before the loop first polls.
fn backlog<T: Send + 'static>(
    at: Cb,
    config: Config,
    queue: impl FnOnce(SocketAddr, SocketAddr) -> T + Send + 'static,
) -> (Server<Backlog>, T) {
    let (tx, rx) = mpsc::channel();
    let server = serve_loop(
        move || {
            let mut el = EventLoop::with_config(Backlog { at, fired: false }, config)?;
            let t = el.listen("tcp://127.0.0.1:0")?;
            let u = el.listen("udp://127.0.0.1:0")?;
            let mut cx = el.context();
            let tcp = cx.local_addr(t).unwrap().as_inet().unwrap();
            let udp = cx.local_addr(u).unwrap().as_inet().unwrap();
            tx.send(queue(tcp, udp)).unwrap();
            Ok(el)
        },
        &[],
    );
    let queued = rx.recv_timeout(STEP).expect("the loop was set up");
    (server, queued)
}

fn backlog_stats(server: &Server<Backlog>) -> Stats {
    let (tx, rx) = mpsc::channel();
    assert!(server.handle.send(tx).is_ok(), "the loop is gone");
    rx.recv_timeout(STEP).expect("stats from the loop")
}

/// `n` clients connected (accepted by the kernel, in the listener's
/// backlog) before the loop runs.
fn connect_all(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let c = client(addr);
            c.set_read_timeout(Some(OWED)).unwrap();
            c
        })
        .collect()
}

/// What a client of [`Backlog`] got first.
#[derive(Debug, PartialEq, Eq)]
enum Greeting {
    Line(String),
    Closed,
}

fn greeting(c: &mut TcpStream, i: usize) -> Greeting {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match c.read(&mut b) {
            Ok(0) => return Greeting::Closed,
            Ok(_) if b[0] == b'\n' => return Greeting::Line(String::from_utf8_lossy(&line).into()),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Greeting::Closed,
            Err(e) => panic!(
                "client {i}: nothing from the loop within {OWED:?} ({e}): \
                 left in the listen backlog after the panic"
            ),
        }
    }
}

#[test]
fn panic_in_on_open_leaves_the_rest_of_the_backlog_served() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_open_backlog", Duration::from_secs(60));
    let (server, mut clients) = backlog(Cb::Open, Config::default(), |tcp, _| connect_all(tcp, 5));
    let mut closed = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        match greeting(c, i) {
            Greeting::Closed => closed += 1,
            Greeting::Line(l) => {
                assert_eq!(l, "welcome", "client {i}");
                round_trip(c, format!("client {i}\n").as_bytes());
            }
        }
    }
    assert_eq!(
        closed, 1,
        "only the connection whose on_open panicked is closed"
    );
    let s = backlog_stats(&server);
    assert_eq!(s.panics, 1, "{s:?}");
    assert_eq!(s.connections, 4, "{s:?}");
    server.stop();
}

#[test]
fn panic_in_on_refuse_leaves_the_rest_of_the_backlog_refused() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_refuse_backlog", Duration::from_secs(60));
    let config = Config {
        max_connections: 2,
        ..Default::default()
    };
    let (server, mut clients) = backlog(Cb::Refuse, config, |tcp, _| connect_all(tcp, 6));
    let mut got = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let g = greeting(c, i);
        if g == Greeting::Line("busy".into()) {
            assert_eq!(
                greeting(c, i),
                Greeting::Closed,
                "client {i}: closed after busy"
            );
        }
        got.push(g);
    }
    let count = |want: Greeting| got.iter().filter(|&g| *g == want).count();
    assert_eq!(count(Greeting::Line("welcome".into())), 2, "{got:?}");
    assert_eq!(count(Greeting::Line("busy".into())), 3, "{got:?}");
    assert_eq!(count(Greeting::Closed), 1, "{got:?}");
    let s = backlog_stats(&server);
    assert_eq!(s.panics, 1, "{s:?}");
    assert_eq!(s.refused, 4, "{s:?}");
    server.stop();
}

#[test]
fn panic_in_on_datagram_leaves_the_queued_datagrams_served() {
    quiet_panics();
    let _serial = serial();
    let _w = watchdog("panic_in_on_datagram_queue", Duration::from_secs(60));
    let (server, u) = backlog(Cb::Datagram, Config::default(), |_, udp| {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect(udp).unwrap();
        for i in 0..5 {
            u.send(format!("datagram {i}").as_bytes()).unwrap();
        }
        u
    });
    u.set_read_timeout(Some(OWED)).unwrap();
    let mut echoed = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        match u.recv(&mut buf) {
            Ok(n) => echoed.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!(
                "{} of the 4 datagrams behind the panicking one echoed, then nothing within \
                 {OWED:?} ({e}): {echoed:?}",
                echoed.len()
            ),
        }
    }
    let want: Vec<String> = (1..5).map(|i| format!("datagram {i}")).collect();
    assert_eq!(echoed, want);
    let s = backlog_stats(&server);
    assert_eq!(s.panics, 1, "{s:?}");
    assert_eq!(s.datagrams_received, 5, "{s:?}");
    server.stop();
}
