//! The kv example end to end: its handler runs in-process on an ephemeral
//! port and a Unix socket, driven by the real `redis-cli` (Debian's
//! redis-tools, which `.ci/run` installs) and by raw sockets for pipelines.
//! Every wait is bounded, so a hang fails the test instead of stalling it.

#[path = "../examples/kv/resp.rs"]
mod resp;
#[path = "../examples/kv/server.rs"]
mod server;
#[path = "../examples/kv/store.rs"]
mod store;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netloop::{Addr, Handle};

/// Longest any one client operation may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A kv server on its own thread, stopped and joined on drop.
struct Server {
    port: u16,                                          // Its TCP port on 127.0.0.1.
    unix: PathBuf,                                      // Its Unix socket's path.
    handle: Handle<()>,                                 // Stops it.
    thread: Option<thread::JoinHandle<io::Result<()>>>, // Runs the loop.
}

impl Server {
    fn start() -> Server {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let unix = std::env::temp_dir().join(format!(
            "netloop-kv-{}-{}.sock",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let url = format!("unix://{}", unix.display());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || -> io::Result<()> {
            let mut event_loop = server::event_loop()?;
            let id = event_loop.listen("tcp://127.0.0.1:0")?;
            event_loop.listen(url.as_str())?;
            let Addr::Inet(at) = event_loop.context().local_addr(id)? else {
                panic!("a TCP listener has an inet address");
            };
            tx.send((at.port(), event_loop.handle())).unwrap();
            event_loop.run()
        });
        let (port, handle) = rx.recv_timeout(TIMEOUT).expect("server started");
        Server {
            port,
            unix,
            handle,
            thread: Some(thread),
        }
    }

    /// Runs `redis-cli -p PORT args…` and returns its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        redis_cli(&[&["-p", &port], args].concat())
    }

    /// Runs `redis-cli -s PATH args…` over the Unix socket.
    fn cli_unix(&self, args: &[&str]) -> String {
        let path = self.unix.to_str().expect("UTF-8 temp dir");
        redis_cli(&[&["-s", path], args].concat())
    }

    /// A raw TCP connection with read and write timeouts.
    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !thread::panicking() {
                result.expect("server thread").expect("server loop");
            }
        }
    }
}

/// Runs redis-cli with `args`, killing it after [`TIMEOUT`]; its stdout
/// with the trailing newlines removed. Fails clearly if it is not installed.
fn redis_cli(args: &[&str]) -> String {
    let mut child = match Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "redis-cli not found: these tests need it (apt-get install redis-tools; .ci/run does)"
        ),
        Err(e) => panic!("running redis-cli: {e}"),
    };
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-cli {args:?} took over {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// Reads exactly `n` bytes, or fails on timeout or end of file.
fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).expect("all replies");
    buf
}

/// Reads until the peer closes, bounded by the read timeout.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("close before timeout");
    buf
}

fn multibulk(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[test]
fn set_get_incr_expire_ttl_with_redis_cli() {
    let server = Server::start();
    assert_eq!(server.cli(&["ping"]), "PONG");
    assert_eq!(server.cli(&["set", "a", "1"]), "OK");
    assert_eq!(server.cli(&["get", "a"]), "1");
    assert_eq!(server.cli(&["incr", "a"]), "2");
    assert_eq!(server.cli(&["get", "a"]), "2");
    assert_eq!(server.cli(&["ttl", "a"]), "-1");
    assert_eq!(server.cli(&["expire", "a", "100"]), "1");
    assert_eq!(server.cli(&["ttl", "a"]), "100");
    assert_eq!(server.cli(&["get", "missing"]), "");
    assert_eq!(server.cli(&["ttl", "missing"]), "-2");
    assert_eq!(server.cli(&["mset", "x", "1", "y", "2"]), "OK");
    assert_eq!(server.cli(&["mget", "x", "nope", "y"]), "1\n\n2");
    assert_eq!(server.cli(&["del", "x", "y", "nope"]), "2");
    server.cli(&["set", "s", "abc"]);
    assert_eq!(
        server.cli(&["incr", "s"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        server.cli(&["nosuch", "x"]),
        "ERR unknown command 'nosuch', with args beginning with: 'x' "
    );
}

#[test]
fn commands_over_a_unix_socket() {
    let server = Server::start();
    assert_eq!(server.cli_unix(&["set", "k", "via unix"]), "OK");
    assert_eq!(server.cli_unix(&["get", "k"]), "via unix");
    assert_eq!(server.cli(&["get", "k"]), "via unix", "one store for both");
    assert_eq!(server.cli_unix(&["incrby", "n", "41"]), "41");
    assert_eq!(server.cli_unix(&["incr", "n"]), "42");
}

#[test]
fn expiry_is_observed_with_ttl() {
    let server = Server::start();
    assert_eq!(server.cli(&["set", "k", "v"]), "OK");
    assert_eq!(server.cli(&["expire", "k", "1"]), "1");
    assert_eq!(server.cli(&["ttl", "k"]), "1");
    let pttl: i64 = server.cli(&["pttl", "k"]).parse().unwrap();
    assert!((1..=1000).contains(&pttl), "{pttl}");
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(server.cli(&["ttl", "k"]), "-2");
    assert_eq!(server.cli(&["get", "k"]), "");
    assert_eq!(server.cli(&["exists", "k"]), "0");
}

#[test]
fn sweep_removes_expired_keys_nobody_reads() {
    let server = Server::start();
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(server.cli(&["set", &key, "v", "px", "50"]), "OK");
    }
    server.cli(&["set", "forever", "v"]);
    // DBSIZE counts expired keys not yet removed: only the sweep brings it down.
    let deadline = Instant::now() + TIMEOUT;
    while server.cli(&["dbsize"]) != "1" {
        assert!(Instant::now() < deadline, "sweep never removed the keys");
        thread::sleep(server::SWEEP_PERIOD);
    }
}

#[test]
fn pipeline_of_10000_commands_in_one_write() {
    let server = Server::start();
    let mut stream = server.connect();
    let (mut request, mut expected) = (Vec::new(), Vec::new());
    for i in 0..5000 {
        let (key, value) = (format!("key:{i}"), format!("value-{i}"));
        multibulk(&[b"SET", key.as_bytes(), value.as_bytes()], &mut request);
        multibulk(&[b"GET", key.as_bytes()], &mut request);
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    stream.write_all(&request).unwrap();
    assert_eq!(read_n(&mut stream, expected.len()), expected);
    // Nothing more: exactly 10,000 replies.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut extra = [0; 1];
    assert!(
        matches!(stream.read(&mut extra), Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut)
    );
}

#[test]
fn pipeline_of_10000_inline_commands_in_one_write() {
    let server = Server::start();
    let mut stream = server.connect();
    let request = "INCR n\r\n".repeat(10_000);
    stream.write_all(request.as_bytes()).unwrap();
    let expected: String = (1..=10_000).map(|i| format!(":{i}\r\n")).collect();
    assert_eq!(
        String::from_utf8(read_n(&mut stream, expected.len())).unwrap(),
        expected
    );
    assert_eq!(server.cli(&["get", "n"]), "10000");
}

#[test]
fn command_split_across_writes_is_answered_once_complete() {
    let server = Server::start();
    let mut stream = server.connect();
    let mut request = Vec::new();
    multibulk(&[b"SET", b"k", b"a value in pieces"], &mut request);
    multibulk(&[b"GET", b"k"], &mut request);
    for piece in request.chunks(5) {
        stream.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let expected = b"+OK\r\n$17\r\na value in pieces\r\n";
    assert_eq!(read_n(&mut stream, expected.len()), expected);
}

#[test]
fn protocol_error_mid_pipeline_replies_then_closes() {
    let server = Server::start();
    let mut stream = server.connect();
    stream
        .write_all(b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*1\r\n:3\r\nPING\r\n")
        .unwrap();
    assert_eq!(
        String::from_utf8(read_to_close(&mut stream)).unwrap(),
        "+PONG\r\n+OK\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    );
    // The commands before the error ran; the one after it did not.
    assert_eq!(server.cli(&["get", "a"]), "1");

    let mut stream = server.connect();
    stream.write_all(b"INCR n\r\n*x\r\nINCR n\r\n").unwrap();
    assert_eq!(
        read_to_close(&mut stream),
        b":1\r\n-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert_eq!(server.cli(&["get", "n"]), "1");
}

#[test]
fn quit_replies_ok_then_closes() {
    let server = Server::start();
    let mut stream = server.connect();
    stream.write_all(b"PING\r\nQUIT\r\nINCR n\r\n").unwrap();
    assert_eq!(read_to_close(&mut stream), b"+PONG\r\n+OK\r\n");
    assert_eq!(server.cli(&["exists", "n"]), "0");
}
