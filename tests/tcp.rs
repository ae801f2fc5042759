//! TCP: round trips, many connections, big payloads, half-close, stale ids,
//! connect errors, detach and adopt.

mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use netloop::{CloseReason, Config, ConnId, Context, Error, EventLoop, Handler, ListenOptions};
use util::*;

#[test]
fn echo_round_trip_ipv4() {
    let server = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    round_trip(&mut c, b"hello\n");
    round_trip(&mut c, &[0u8, 255, 10, 13]);
    server.stop();
}

#[test]
fn echo_round_trip_ipv6() {
    let server = serve(|| Echo, Config::default(), &["tcp://[::1]:0"]);
    assert!(server.inet().is_ipv6());
    let mut c = client(server.inet());
    round_trip(&mut c, b"over ipv6\n");
    server.stop();
}

#[test]
fn thousand_concurrent_connections_each_echo() {
    raise_fd_limit();
    let server = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut clients: Vec<_> = (0..1000).map(|_| client(server.inet())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i}\n").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("client {i}\n");
        assert_eq!(read_n(c, want.len()), want.as_bytes());
    }
    drop(clients);
    server.stop();
}

/// 64 MiB through small server socket buffers: many partial writes,
/// nothing lost, order kept. (Buffers much smaller than loopback's 64 KiB
/// MSS make TCP itself crawl on zero-window probes, so 16 KiB it is.)
#[test]
fn big_payload_through_small_buffers() {
    let opts = ListenOptions {
        recv_buffer_size: Some(16 << 10),
        send_buffer_size: Some(16 << 10),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut el = EventLoop::new(Echo).unwrap();
        let l = el.listen_with("tcp://127.0.0.1:0", &opts).unwrap();
        tx.send((el.context().local_addr(l).unwrap(), el.handle()))
            .unwrap();
        el.run().unwrap();
    });
    let (addr, handle) = rx.recv_timeout(STEP).unwrap();
    let c = client(addr.as_inet().unwrap());
    let total = 64 << 20;
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = c;
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(
                b,
                ((got + k) % 65536 % 251) as u8,
                "byte {} out of order",
                got + k
            );
        }
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(got, total);
    handle.stop();
    thread.join().unwrap();
}

#[test]
fn half_close_returns_everything_before_eof() {
    let server = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    c.write_all(b"hello\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"hello\n");
    server.stop();
}

/// Remembers every connection it saw; on data `x` it closes, on data `s`
/// it sends to every id it ever saw and reports what each send returned.
struct Ids {
    seen: Vec<ConnId>,
    results: mpsc::Sender<Vec<(ConnId, bool)>>,
    closed: Vec<(ConnId, CloseReason)>,
}

impl Handler for Ids {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.seen.push(id);
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        match data.first() {
            Some(b'x') => {
                let _ = cx.close(id);
            }
            Some(b's') => {
                let mut results = Vec::new();
                for &old in &self.seen {
                    let r = cx.send(old, b"to you\n");
                    if old != id {
                        assert!(matches!(r, Err(Error::Stale)), "{r:?}");
                    }
                    results.push((old, r.is_ok()));
                }
                self.results.send(results).unwrap();
            }
            _ => {}
        }
        data.len()
    }
    fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        self.closed.push((id, reason));
    }
}

/// Close a connection, open another in the same slot: the old id reaches
/// nothing, and sending to it is a harmless error.
#[test]
fn stale_id_never_reaches_the_slot_reuser() {
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Ids {
            seen: Vec::new(),
            results: tx,
            closed: Vec::new(),
        },
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let mut a = client(server.inet());
    a.write_all(b"x").unwrap();
    assert_eq!(read_to_end(&mut a).unwrap(), b"");
    let mut b = client(server.inet());
    b.write_all(b"s").unwrap();
    let results = rx.recv_timeout(STEP).unwrap();
    assert_eq!(results.len(), 2);
    let (old, new) = (results[0].0, results[1].0);
    assert_eq!(old.slot(), new.slot(), "the slot was reused");
    assert_ne!(old, new, "with another generation");
    assert_eq!(results, vec![(old, false), (new, true)]);
    assert_eq!(
        read_n(&mut b, 7),
        b"to you\n",
        "only the live id's send arrives"
    );
    b.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut extra = [0u8; 16];
    assert!(b.read(&mut extra).is_err(), "nothing more arrives");
    let h = server.stop();
    assert_eq!(h.closed[0], (old, CloseReason::Closed));
}

struct Connector {
    outcome: mpsc::Sender<Result<(), std::io::ErrorKind>>,
}

impl Handler for Connector {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut ()) {
        self.outcome.send(Ok(())).unwrap();
        cx.stop();
    }
    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        _: ConnId,
        _: Self::Conn,
        err: std::io::Error,
    ) {
        self.outcome.send(Err(err.kind())).unwrap();
        cx.stop();
    }
}

#[test]
fn connect_to_closed_port_reports_refused_as_a_value() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (tx, rx) = mpsc::channel();
    let mut el = EventLoop::new(Connector { outcome: tx }).unwrap();
    el.connect(format!("tcp://127.0.0.1:{port}")).unwrap();
    el.run().unwrap();
    assert_eq!(
        rx.recv_timeout(STEP).unwrap(),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
}

#[test]
fn connect_succeeds_and_sends_what_was_queued_before() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (tx, rx) = mpsc::channel();
    let mut el = EventLoop::new(Connector { outcome: tx }).unwrap();
    let id = el
        .connect(format!("tcp://{}", l.local_addr().unwrap()))
        .unwrap();
    el.context().send(id, b"early\n").unwrap();
    el.run().unwrap();
    assert_eq!(rx.recv_timeout(STEP).unwrap(), Ok(()));
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    assert_eq!(read_n(&mut s, 6), b"early\n");
}

/// Sends 20 MiB to whoever connects, then the test stops the loop: a slow
/// reader still gets every byte before the connection closes.
struct Firehose(usize);

impl Handler for Firehose {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..self.0 {
            cx.send(id, &chunk).unwrap();
        }
    }
}

#[test]
fn stop_with_pending_writes_delivers_them() {
    let config = Config {
        max_write_queue: 64 << 20,
        drain_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let server = serve(|| Firehose(20), config, &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap();
    server.handle.stop();
    let rest = read_to_end(&mut c).unwrap();
    assert_eq!(1 + rest.len(), 20 << 20);
    let mut server = server;
    server.join();
}

/// A client that never reads keeps the queue from draining: the stop ends
/// at the drain deadline, neither before it nor long after (the default
/// deadline, 5 s, would be too late).
#[test]
fn short_drain_deadline_cuts_off_on_time() {
    let drain = Duration::from_millis(300);
    let config = Config {
        drain_timeout: drain,
        ..Default::default()
    };
    let server = serve(|| Firehose(20), config, &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap(); // connected and sending; never read more
    let t = std::time::Instant::now();
    server.stop();
    let took = t.elapsed();
    eprintln!("stopped {took:?} after stop(), with a {drain:?} drain deadline");
    // (The loop's clock may lag the test's by a tick: 20 ms of slack.)
    assert!(
        took + Duration::from_millis(20) >= drain,
        "stopped {took:?} after stop(), before the {drain:?} deadline"
    );
    assert!(
        took < drain + Duration::from_secs(3),
        "stopped {took:?} after stop(), long after the {drain:?} deadline"
    );
    // The peer was cut off: it sees less than everything, then an error or EOF.
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got + 1 < 20 << 20,
        "got everything ({got}) despite the deadline"
    );
}

/// On a line "detach", takes the connection out of the loop and hands the
/// std stream to the test.
struct Detacher(mpsc::Sender<(netloop::Detached, Vec<u8>)>);

impl Handler for Detacher {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        if data.starts_with(b"detach\n") {
            let _ = cx.send(id, b"bye from the loop\n");
            let d = cx.detach(id).unwrap();
            // Inside on_data, `data` holds all unconsumed input.
            self.0.send((d, data[7..].to_vec())).unwrap();
            return data.len();
        }
        data.len()
    }
}

#[test]
fn detach_returns_a_working_std_stream() {
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Detacher(tx),
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    let mut c = client(server.inet());
    c.write_all(b"detach\nleftover").unwrap();
    let (d, rest) = rx.recv_timeout(STEP).unwrap();
    assert_eq!(d.unsent, b"bye from the loop\n", "queued bytes come back");
    assert!(d.unread.is_empty(), "inside on_data, `data` has it all");
    assert_eq!(rest, b"leftover");
    let netloop::StdSocket::TcpStream(mut s) = d.socket else {
        panic!("not a TCP stream: {:?}", d.socket)
    };
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(b"from std\n").unwrap();
    assert_eq!(read_n(&mut c, 9), b"from std\n");
    c.write_all(b"to std\n").unwrap();
    assert_eq!(read_n(&mut s, 7), b"to std\n");
    server.stop();
}

#[test]
fn adopt_a_std_listener_and_stream() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut el = EventLoop::new(Echo).unwrap();
        el.context().adopt(l).unwrap();
        tx.send(el.handle()).unwrap();
        el.run().unwrap();
    });
    let handle = rx.recv_timeout(STEP).unwrap();
    let mut c = client(addr);
    round_trip(&mut c, b"adopted\n");
    handle.stop();
    thread.join().unwrap();
}

#[test]
fn bad_addresses_are_clear_errors() {
    let mut el = EventLoop::new(Echo).unwrap();
    for bad in [
        "tcp://nohost:x",
        "tcp://127.0.0.1:65536",
        "ftp://127.0.0.1:21",
        "127.0.0.1:80",
    ] {
        let e = el.listen(bad).expect_err(bad);
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains(bad), "{e}");
        let e = el.connect(bad).expect_err(bad);
        assert!(e.to_string().contains(bad), "{e}");
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = el
        .listen(format!("tcp://{}", taken.local_addr().unwrap()))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
}

/// Socket options are reachable and typed.
#[test]
fn socket_options_round_trip() {
    struct Opts(mpsc::Sender<(bool, Option<Duration>, u32)>);
    impl Handler for Opts {
        type Conn = ();
        type Msg = ();
        fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            let s = cx.socket(id).unwrap();
            s.set_linger(Some(Duration::from_secs(1))).unwrap();
            s.set_ttl(42).unwrap();
            s.set_tcp_keepalive(
                &netloop::socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(30))
                    .with_interval(Duration::from_secs(5))
                    .with_retries(3),
            )
            .unwrap();
            let r = (s.nodelay().unwrap(), s.linger().unwrap(), s.ttl().unwrap());
            assert!(s.keepalive().unwrap());
            assert_eq!(s.keepalive_retries().unwrap(), 3);
            self.0.send(r).unwrap();
            assert_eq!(cx.transport(id).unwrap(), netloop::Transport::Tcp);
            assert!(cx.peer_addr(id).unwrap().as_inet().is_some());
            assert!(cx.raw_fd(id).unwrap() > 2);
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = serve(move || Opts(tx), Config::default(), &["tcp://127.0.0.1:0"]);
    let _c = client(server.inet());
    let (nodelay, linger, ttl) = rx.recv_timeout(STEP).unwrap();
    assert!(nodelay, "TCP_NODELAY is on by default");
    assert_eq!(linger, Some(Duration::from_secs(1)));
    assert_eq!(ttl, 42);
    server.stop();
}

/// Replies with `REPLY` bytes to the first data of a connection and closes.
struct ReplyThenClose;

const REPLY: usize = 1 << 20;

impl Handler for ReplyThenClose {
    type Conn = bool; // replied
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, replied: &mut bool, d: &[u8]) -> usize {
        if !*replied {
            *replied = true;
            cx.send(id, &vec![b'r'; REPLY]).unwrap();
            cx.close(id).unwrap();
        }
        d.len()
    }
}

/// A client sends again after the server replied and closed (an HTTP
/// client pipelining into a `Connection: close`): with the socket closed,
/// the kernel would answer with a reset and throw away the reply the
/// client has not read yet; lingering, the server reads and discards, and
/// the client gets the whole reply and then end of file.
fn reply_survives_a_late_send(linger: Duration) -> io::Result<Vec<u8>> {
    let config = Config {
        linger_timeout: linger,
        ..Config::default()
    };
    let server = serve(|| ReplyThenClose, config, &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"request 1\n").unwrap();
    // The reply is in the kernel's buffers and the server has closed.
    std::thread::sleep(Duration::from_millis(200));
    let _ = c.write_all(b"request 2, sent after the close\n");
    std::thread::sleep(Duration::from_millis(100));
    let got = read_to_end(&mut c);
    server.stop();
    got
}

#[test]
fn lingering_close_keeps_the_reply_from_a_reset() {
    let got = reply_survives_a_late_send(Duration::from_secs(5));
    let got = got.unwrap_or_else(|e| panic!("the reply was cut off by {e}"));
    assert_eq!(got.len(), REPLY, "the reply, whole, then end of file");
}

/// The same with lingering off: the reset comes, as the reason for
/// lingering says (this pins the test above to the behaviour it is for).
#[test]
fn without_lingering_the_late_send_resets() {
    match reply_survives_a_late_send(Duration::ZERO) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(got) => assert!(got.len() < REPLY, "no reset: {} bytes", got.len()),
    }
}
