//! Unix stream and datagram sockets: paths, abstract names, stale and live
//! socket files, peer credentials, unbound senders, detach and adopt.

mod util;

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use netloop::socket2::SockRef;
use netloop::{Addr, Config, ConnId, Context, EventLoop, Handler, PeerCred, Stats, UnixAddr};
use util::*;

fn unix_client(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s
}

#[test]
fn unix_stream_round_trip_and_file_removed_on_stop() {
    let dir = temp_dir("unix");
    let path = dir.join("echo.sock");
    let server = serve(
        || Echo,
        Config::default(),
        &[&format!("unix://{}", path.display())],
    );
    assert_eq!(server.addrs[0], Addr::Unix(UnixAddr::Path(path.clone())));
    let mut c = unix_client(&path);
    c.write_all(b"over unix\n").unwrap();
    assert_eq!(read_n(&mut c, 10), b"over unix\n");
    server.stop();
    assert!(
        !path.exists(),
        "the socket file is removed on graceful stop"
    );
}

#[test]
fn abstract_name_round_trip() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("netloop-test-{}", std::process::id());
    let server = serve(|| Echo, Config::default(), &[&format!("unix://@{name}")]);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut c = UnixStream::connect_addr(&addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(b"abstract").unwrap();
    assert_eq!(read_n(&mut c, 8), b"abstract");
    server.stop();
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = temp_dir("stale");
    let path = dir.join("s.sock");
    drop(UnixListener::bind(&path).unwrap()); // a dead server's leftover
    assert!(path.exists());
    let server = serve(
        || Echo,
        Config::default(),
        &[&format!("unix://{}", path.display())],
    );
    let mut c = unix_client(&path);
    c.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut c, 1), b"x");
    server.stop();
}

#[test]
fn live_socket_file_is_never_stolen() {
    let dir = temp_dir("live");
    let path = dir.join("s.sock");
    let url = format!("unix://{}", path.display());
    let server = serve(|| Echo, Config::default(), &[&url]);
    let mut el = EventLoop::new(Echo).unwrap();
    let err = el.listen(url.as_str()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("live server"), "{err}");
    // The first server still serves.
    let mut c = unix_client(&path);
    c.write_all(b"y").unwrap();
    assert_eq!(read_n(&mut c, 1), b"y");
    // A file that is not a socket is not touched either.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"data").unwrap();
    let err = el
        .listen(format!("unix://{}", plain.display()))
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    server.stop();
}

#[test]
fn path_too_long_is_a_clear_error() {
    let long = format!("unix:///tmp/{}", "x".repeat(120));
    let err = EventLoop::new(Echo)
        .unwrap()
        .listen(long.as_str())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("at most"), "{err}");
}

struct Creds(mpsc::Sender<PeerCred>);

impl Handler for Creds {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.0.send(cx.peer_cred(id).unwrap()).unwrap();
    }
}

#[test]
fn peer_credentials_are_available() {
    let dir = temp_dir("cred");
    let path = dir.join("c.sock");
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Creds(tx),
        Config::default(),
        &[&format!("unix://{}", path.display())],
    );
    let _c = unix_client(&path);
    let cred = rx.recv_timeout(STEP).unwrap();
    assert_eq!(cred.pid, Some(std::process::id() as i32));
    // SAFETY: getuid has no preconditions.
    assert_eq!(cred.uid, unsafe { libc::getuid() });
    server.stop();
}

#[test]
fn unixgram_round_trip_with_sender_path() {
    let dir = temp_dir("gram");
    let path = dir.join("echo.dgram");
    let server = serve(
        || Echo,
        Config::default(),
        &[&format!("unixgram://{}", path.display())],
    );
    let me = dir.join("me.dgram");
    let c = UnixDatagram::bind(&me).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.send_to(b"hello", &path).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.as_pathname(), Some(path.as_path()));
    server.stop();
    assert!(!path.exists());
}

/// Records the address of each datagram's sender, and what replying did.
struct Senders(mpsc::Sender<(Addr, bool)>);

impl Handler for Senders {
    type Conn = ();
    type Msg = ();
    fn on_datagram(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), _: &[u8], from: &Addr) {
        let replied = cx.send_to(id, b"r", from).is_ok();
        self.0.send((from.clone(), replied)).unwrap();
    }
}

#[test]
fn unbound_unixgram_sender_is_handled() {
    let dir = temp_dir("unbound");
    let path = dir.join("s.dgram");
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || Senders(tx),
        Config::default(),
        &[&format!("unixgram://{}", path.display())],
    );
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(b"who am i", &path).unwrap();
    let (from, replied) = rx.recv_timeout(STEP).unwrap();
    assert_eq!(from, Addr::Unix(UnixAddr::Unnamed));
    assert!(!replied, "no reply to an unnamed sender, and no panic");
    server.stop();
}

/// What reached a [`BigGrams`] handler: a datagram's length, or an error.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Datagram(usize),
    Error(std::io::ErrorKind, String),
}

/// Reports every datagram and every error; answers a message with the
/// loop's counters.
struct BigGrams(mpsc::Sender<Heard>);

impl Handler for BigGrams {
    type Conn = ();
    type Msg = mpsc::Sender<Stats>;
    fn on_datagram(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut (), data: &[u8], _: &Addr) {
        let _ = self.0.send(Heard::Datagram(data.len()));
    }
    fn on_error(&mut self, _: &mut Context<'_>, _: ConnId, err: std::io::Error) {
        let _ = self.0.send(Heard::Error(err.kind(), err.to_string()));
    }
    fn on_message(&mut self, cx: &mut Context<'_>, reply: mpsc::Sender<Stats>) {
        let _ = reply.send(cx.stats().clone());
    }
}

/// A Unix datagram larger than the loop's 64 KiB read buffer is not handed
/// to `on_datagram` cut short: `on_error` hears of it (InvalidData, saying
/// "truncated"), it is counted as dropped, and the small datagram sent
/// after it is delivered whole.
#[test]
fn unixgram_larger_than_the_read_buffer_is_reported_not_truncated() {
    let _w = watchdog(
        "unixgram_larger_than_the_read_buffer",
        Duration::from_secs(30),
    );
    let dir = temp_dir("big");
    let path = dir.join("big.dgram");
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || BigGrams(tx),
        Config::default(),
        &[&format!("unixgram://{}", path.display())],
    );
    let c = UnixDatagram::unbound().unwrap();
    c.set_write_timeout(Some(STEP)).unwrap();
    let big = vec![7u8; 100 * 1024];
    let _ = SockRef::from(&c).set_send_buffer_size(1 << 20);
    match c.send_to(&big, &path) {
        Ok(n) => assert_eq!(n, big.len()),
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            eprintln!("skipped: this kernel refuses to send a 100 KiB Unix datagram ({e})");
            return;
        }
        Err(e) => panic!("sending a 100 KiB datagram: {e}"),
    }
    c.send_to(b"small", &path).unwrap();
    match rx
        .recv_timeout(STEP)
        .expect("the loop heard of the big datagram")
    {
        Heard::Error(kind, msg) => {
            assert_eq!(kind, std::io::ErrorKind::InvalidData, "{msg}");
            assert!(
                msg.contains("truncated"),
                "the error says what happened: {msg}"
            );
        }
        Heard::Datagram(n) => panic!(
            "a {n}-byte datagram reached on_datagram for one of {} bytes",
            big.len()
        ),
    }
    assert_eq!(
        rx.recv_timeout(STEP).expect("the small datagram"),
        Heard::Datagram(5)
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "nothing more"
    );
    let (stx, srx) = mpsc::channel();
    assert!(server.handle.send(stx).is_ok(), "the loop is gone");
    let stats = srx.recv_timeout(STEP).expect("stats from the loop");
    assert_eq!(stats.datagrams_dropped, 1, "{stats:?}");
    server.stop();
}

/// A loop that connects to a server and reports the echo.
struct Dial {
    got: Vec<u8>,
    want: usize,
}

impl Handler for Dial {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        cx.send(id, b"dialed").unwrap();
    }
    fn on_data(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut (), data: &[u8]) -> usize {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.want {
            cx.stop();
        }
        data.len()
    }
    fn on_datagram(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut (), data: &[u8], _: &Addr) {
        self.got.extend_from_slice(data);
        cx.stop();
    }
    fn on_connect_failed(
        &mut self,
        _: &mut Context<'_>,
        _: ConnId,
        _: Self::Conn,
        err: std::io::Error,
    ) {
        panic!("connect failed: {err}");
    }
}

fn dial(url: &str) -> Vec<u8> {
    let mut el = EventLoop::new(Dial {
        got: Vec::new(),
        want: 6,
    })
    .unwrap();
    el.connect(url).unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while el.run_once(Some(Duration::from_millis(50))).unwrap() {
        assert!(std::time::Instant::now() < deadline, "no echo from {url}");
    }
    el.into_handler().got
}

#[test]
fn loop_connects_to_unix_stream_and_datagram_servers() {
    let dir = temp_dir("dial");
    let stream = format!("unix://{}", dir.join("s.sock").display());
    let gram = format!("unixgram://{}", dir.join("g.dgram").display());
    let server = serve(|| Echo, Config::default(), &[&stream, &gram]);
    assert_eq!(dial(&stream), b"dialed");
    assert_eq!(dial(&gram), b"dialed", "an autobound client gets the reply");
    server.stop();
}

struct DetachUnix(mpsc::Sender<netloop::Detached>);

impl Handler for DetachUnix {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.0.send(cx.detach(id).unwrap()).unwrap();
    }
}

#[test]
fn unix_stream_detach_and_adopt_round_trip() {
    let dir = temp_dir("detach");
    let path = dir.join("d.sock");
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || DetachUnix(tx),
        Config::default(),
        &[&format!("unix://{}", path.display())],
    );
    let mut c = unix_client(&path);
    let netloop::StdSocket::UnixStream(s) = rx.recv_timeout(STEP).unwrap().socket else {
        panic!("not a Unix stream")
    };
    server.stop();
    let (tx2, rx2) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut el = EventLoop::new(Echo).unwrap();
        el.context().adopt(s).unwrap();
        tx2.send(el.handle()).unwrap();
        el.run().unwrap();
    });
    let handle = rx2.recv_timeout(STEP).unwrap();
    c.write_all(b"adopted").unwrap();
    assert_eq!(read_n(&mut c, 7), b"adopted");
    handle.stop();
    t.join().unwrap();
}
