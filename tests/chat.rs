//! End to end: the chat example's handler, run in-process on an ephemeral
//! port, talked to over real TCP and Unix sockets; and the client example's
//! binary against in-process echo and chat servers.

#[path = "../examples/chat/room.rs"]
mod room;
#[path = "../examples/chat/server.rs"]
mod server;
mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use netloop::socket2::{Domain, Socket, Type};
use netloop::EventLoop;

use server::ChatServer;
use util::{example_binary, serve_loop, socket_path, watchdog, Echo, Server};

/// How long any one read may wait before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A chat server with the example's limits and the given idle timeout,
/// listening on an ephemeral TCP port and on `unix` if given.
fn chat_server(idle: Option<Duration>, unix: Option<&Path>) -> Server<ChatServer> {
    let mut urls = vec!["tcp://127.0.0.1:0".to_owned()];
    urls.extend(unix.map(|path| format!("unix://{}", path.display())));
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let make =
        move || EventLoop::with_config(ChatServer::new(server::MAX_LINE), server::config(idle));
    serve_loop(make, &urls)
}

/// One chat client over a blocking std socket with a read timeout.
struct Peer {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
}

impl Peer {
    fn tcp(port: u16) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        Peer::new(Box::new(stream), Box::new(writer))
    }

    fn unix(path: &Path) -> Peer {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        Peer::new(Box::new(stream), Box::new(writer))
    }

    fn new(reader: Box<dyn Read + Send>, writer: Box<dyn Write + Send>) -> Peer {
        Peer {
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
        }
    }

    /// Connects over TCP and reads the welcome up to its own join notice,
    /// checking it is named `name`.
    fn join_tcp(port: u16, name: &str) -> Peer {
        let mut peer = Peer::tcp(port);
        peer.welcomed(name);
        peer
    }

    /// Reads the welcome and help, then the join notice, for `name`.
    fn welcomed(&mut self, name: &str) {
        self.expect(&format!("* welcome, you are {name}"));
        self.skip_to(&format!("* {name} joined"));
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("send");
    }

    /// The next line, without its newline; fails the test on end of file or
    /// timeout.
    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("end of file where a line was expected"),
            Ok(_) => {
                assert!(line.ends_with('\n'), "partial line {line:?}");
                line.pop();
                line
            }
            Err(e) => panic!("no line: {e}"),
        }
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want);
    }

    /// Reads lines up to and including `want`.
    fn skip_to(&mut self, want: &str) {
        while self.line() != want {}
    }

    /// Reads what is left and checks the server closed the connection
    /// (end of file, or a reset for an aborted one).
    fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the connection closed: {e}"),
        }
    }
}

#[test]
fn chat_over_tcp_and_unix_with_commands_and_notices() {
    let _watchdog = watchdog("chat_over_tcp_and_unix", Duration::from_secs(30));
    let path = socket_path("chat");
    let server = chat_server(None, Some(&path));
    let port = server.port(0);

    let mut a = Peer::join_tcp(port, "guest1");
    let mut b = Peer::join_tcp(port, "guest2");
    let mut c = Peer::join_tcp(port, "guest3");
    let mut d = Peer::unix(&path);
    d.welcomed("guest4");
    a.expect("* guest2 joined");
    for peer in [&mut a, &mut b] {
        peer.expect("* guest3 joined");
    }
    for peer in [&mut a, &mut b, &mut c] {
        peer.expect("* guest4 joined");
    }

    a.send("hello\n");
    for peer in [&mut b, &mut c, &mut d] {
        peer.expect("guest1: hello");
    }

    a.send("/nick alice\n");
    b.send("/nick ALICE\n");
    b.expect("* guest1 is now alice"); // in order: the rename came first
    b.expect("! that name is taken");
    b.send("/nick bob\n");
    for peer in [&mut a, &mut c, &mut d] {
        peer.expect("* guest1 is now alice");
        peer.expect("* guest2 is now bob");
    }
    b.expect("* guest2 is now bob");

    d.send("/who\n");
    d.expect("* 4 here: alice, bob, guest3, guest4");
    c.send("/me waves\n");
    for peer in [&mut a, &mut b, &mut c, &mut d] {
        peer.expect("* guest3 waves");
    }

    // Nothing comes back to its author: alice's next line is bob's.
    a.send("still here\n");
    b.send("hi alice\n");
    a.expect("bob: hi alice");
    for peer in [&mut c, &mut d] {
        peer.expect("alice: still here");
        peer.expect("bob: hi alice");
    }
    b.expect("alice: still here");

    b.send("/quit\n");
    b.expect("* bye");
    b.expect_closed();
    for peer in [&mut a, &mut c, &mut d] {
        peer.expect("* bob left");
    }

    drop(d); // hangs up without a word
    for peer in [&mut a, &mut c] {
        peer.expect("* guest4 left");
    }
    drop(server);
    assert!(!path.exists(), "the Unix socket file is removed on stop");
}

#[test]
fn over_long_line_disconnects_with_the_reason() {
    let _watchdog = watchdog("over_long_line", Duration::from_secs(20));
    let server = chat_server(None, None);
    let mut a = Peer::join_tcp(server.port(0), "guest1");
    let mut b = Peer::join_tcp(server.port(0), "guest2");
    a.expect("* guest2 joined");

    let longest = "y".repeat(server::MAX_LINE);
    a.send(&format!("{longest}\n"));
    b.expect(&format!("guest1: {longest}"));

    b.send(&format!("{longest}z\n"));
    b.expect(&format!(
        "! line too long (at most {} bytes): goodbye",
        server::MAX_LINE
    ));
    b.expect_closed();
    a.expect("* guest2 left (line too long)");
}

#[test]
fn idle_client_is_timed_out_and_the_others_told() {
    let _watchdog = watchdog("idle_client", Duration::from_secs(20));
    let idle = Duration::from_millis(300);
    let server = chat_server(Some(idle), None);
    let start = Instant::now();
    let mut quiet = Peer::join_tcp(server.port(0), "guest1");
    let mut busy = Peer::join_tcp(server.port(0), "guest2");

    // `busy` keeps itself active with a command every 50 ms, until it hears
    // that `quiet` was dropped; the idle sweep may be up to a quarter late.
    loop {
        busy.send("/who\n");
        let line = busy.line();
        if line == "* guest1 left (timed out)" {
            break;
        }
        assert!(start.elapsed() < idle * 10, "no timeout after {line:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(start.elapsed() >= idle, "timed out early");
    quiet.expect_closed();

    busy.skip_to("* 1 here: guest2"); // still served
}

/// Lines and bytes for the slow-reader test: 50 MB of 1000-byte lines,
/// each checked by two readers, takes about 2 s in a debug build on two
/// cores (measured).
const FLOOD_LINES: usize = 50_000;
const FLOOD_LINE: usize = 1000;

/// The `i`th flood line, without its newline.
fn flood_line(i: usize) -> String {
    format!("{i:08} {}", "x".repeat(FLOOD_LINE - 10))
}

#[test]
fn member_that_stops_reading_is_dropped_and_others_get_every_line() {
    let _watchdog = watchdog("member_that_stops_reading", Duration::from_secs(60));
    let server = chat_server(None, None);
    let port = server.port(0);
    let mut sender = Peer::join_tcp(port, "guest1");
    let mut readers = [
        Peer::join_tcp(port, "guest2"),
        Peer::join_tcp(port, "guest3"),
    ];
    // A member with a small receive buffer that never reads.
    let stuck = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    stuck.set_recv_buffer_size(4096).unwrap();
    stuck
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    for peer in readers.iter_mut() {
        peer.skip_to("* guest4 joined");
    }

    let start = Instant::now();
    let checkers: Vec<_> = readers
        .into_iter()
        .map(|mut peer| {
            thread::spawn(move || {
                let mut dropped = false;
                for i in 0..FLOOD_LINES {
                    let mut line = peer.line();
                    if line == "* guest4 left (too slow)" && !dropped {
                        dropped = true;
                        line = peer.line();
                    }
                    assert_eq!(line, format!("guest1: {}", flood_line(i)), "line {i}");
                }
                dropped
            })
        })
        .collect();
    let mut flood = String::with_capacity(FLOOD_LINES * FLOOD_LINE);
    for i in 0..FLOOD_LINES {
        flood.push_str(&flood_line(i));
        flood.push('\n');
    }
    sender.send(&flood);
    for checker in checkers {
        let dropped = checker.join().expect("a reader failed");
        assert!(dropped, "the stuck member was not dropped");
    }
    eprintln!(
        "{} MB to two readers in {:?}",
        flood.len() / 1_000_000,
        start.elapsed()
    );
    sender.skip_to("* guest4 left (too slow)"); // after the joins
    drop(stuck);
}

/// Runs the client example on `url` with `stdin`, writing `input` to it if
/// it is a pipe, and returns its output; fails after `limit`.
fn run_client(url: &str, stdin: Stdio, input: &str, limit: Duration) -> Output {
    let mut child = Command::new(example_binary("client"))
        .arg(url)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client example");
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(input.as_bytes()).unwrap();
    } // dropped: the client reads end of file
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn client_example_sends_stdin_and_prints_the_echo() {
    let _watchdog = watchdog("client_example_echo", Duration::from_secs(30));
    let server = serve_loop(|| EventLoop::new(Echo), &["tcp://127.0.0.1:0"]);
    let url = format!("tcp://127.0.0.1:{}", server.port(0));
    let out = run_client(&url, Stdio::piped(), "hello\n", Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn client_example_reads_a_regular_file_on_stdin() {
    // epoll refuses regular files: this is the client's reading thread.
    let _watchdog = watchdog("client_example_file", Duration::from_secs(30));
    let path = socket_path("client-stdin");
    std::fs::write(&path, "one\ntwo\n").unwrap();
    let server = serve_loop(|| EventLoop::new(Echo), &["tcp://127.0.0.1:0"]);
    let url = format!("tcp://127.0.0.1:{}", server.port(0));
    let file = std::fs::File::open(&path).unwrap();
    let out = run_client(&url, file.into(), "", Duration::from_secs(10));
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
}

#[test]
fn client_example_chats_over_unix() {
    let _watchdog = watchdog("client_example_chat", Duration::from_secs(30));
    let path = socket_path("chat-client");
    let server = chat_server(None, Some(&path));
    let url = format!("unix://{}", path.display());
    let out = run_client(
        &url,
        Stdio::piped(),
        "/nick zed\n/quit\n",
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("* welcome, you are guest1\n"), "{text}");
    assert!(text.ends_with("* guest1 is now zed\n* bye\n"), "{text}");
    drop(server);
}

#[test]
fn client_example_fails_clearly_when_refused() {
    let _watchdog = watchdog("client_example_refused", Duration::from_secs(30));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there now
    let url = format!("tcp://127.0.0.1:{port}");
    let out = run_client(&url, Stdio::null(), "", Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains(&url),
        "{err}"
    );
}
