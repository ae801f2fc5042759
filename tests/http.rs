//! The http example end to end: its handler runs in-process on an ephemeral
//! loopback port, driven by raw sockets for pipelines, limits and timeouts;
//! the built example runs as a child for its command line.
//!
//! The same scenarios also run against the real `curl` (and `wrk` if
//! installed) as `#[ignore]`d tests, since a plain `cargo test` must pass
//! with the Rust toolchain alone; `.ci/run` installs curl and runs them with
//! `cargo test --test http -- --ignored`.
//! Every wait is bounded, so a hang fails the test instead of stalling it.

mod util;

#[path = "../examples/http/proto.rs"]
mod proto;
#[path = "../examples/http/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;

/// An http server in-process with the given request timeout.
fn start(request_timeout: Duration) -> Server<server::Http> {
    serve_loop(
        move || server::event_loop(request_timeout),
        &["tcp://127.0.0.1:0"],
    )
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads responses off a stream, keeping what follows the last one.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(addr: std::net::SocketAddr) -> Reader {
        Reader {
            stream: client(addr),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).unwrap();
    }

    /// The next response (a HEAD's would need the request; none is sent).
    fn response(&mut self) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("a valid response") {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let status = r.code.unwrap();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= n + len {
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Response {
                        status,
                        headers,
                        body,
                    };
                }
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0; 64 * 1024];
        let n = self.stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "closed before a whole response: {:?}", self.buf);
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Expects the server to close the connection with nothing more.
    fn expect_closed(&mut self) {
        let rest = read_to_end(&mut self.stream).expect("read to the close");
        assert!(
            self.buf.is_empty() && rest.is_empty(),
            "more after the last response: {:?}",
            [&self.buf[..], &rest[..]].concat()
        );
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn check_common(r: &Response) {
    assert_eq!(r.header("Server"), Some("netloop"));
    let date = r.header("Date").expect("a Date header");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    assert!(r.header("Content-Length").is_some());
}

#[test]
fn routes() {
    let _w = watchdog("routes", Duration::from_secs(30));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    c.send(get("/plaintext").as_bytes());
    let r = c.response();
    check_common(&r);
    assert_eq!((r.status, &r.body[..]), (200, &b"Hello, World!"[..]));
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    c.send(get("/").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert!(String::from_utf8(r.body).unwrap().contains("<html>"));
    c.send(get("/missing").as_bytes());
    assert_eq!(c.response().status, 404);
    c.send(b"DELETE /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
}

#[test]
fn pipeline_of_1000_in_one_write_answered_in_order() {
    let _w = watchdog("pipeline_1000", Duration::from_secs(60));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    let mut all = Vec::new();
    for i in 0..1000 {
        let body = format!("request {i}");
        all.extend_from_slice(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i % 3 == 0 {
            all.extend_from_slice(get("/plaintext").as_bytes());
        }
    }
    c.send(&all);
    for i in 0..1000 {
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("request {i}").as_bytes());
        if i % 3 == 0 {
            assert_eq!(c.response().body, b"Hello, World!");
        }
    }
    // Still open: one more.
    c.send(get("/plaintext").as_bytes());
    assert_eq!(c.response().status, 200);
}

#[test]
fn keep_alive_several_requests_on_one_connection() {
    let _w = watchdog("keep_alive", Duration::from_secs(30));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    for _ in 0..10 {
        c.send(get("/plaintext").as_bytes());
        let r = c.response();
        assert_eq!((r.status, r.header("Connection")), (200, None));
    }
    c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    c.expect_closed();
}

#[test]
fn http_1_0_closes_unless_keep_alive_asked() {
    let _w = watchdog("http10", Duration::from_secs(30));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    c.send(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert_eq!(r.body, b"Hello, World!");
    c.send(b"GET /plaintext HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    c.expect_closed();
}

#[test]
fn echo_with_a_body_split_across_writes() {
    let _w = watchdog("echo_split", Duration::from_secs(30));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (h1, h2) = head.as_bytes().split_at(10);
    c.send(h1);
    std::thread::sleep(Duration::from_millis(20));
    c.send(h2);
    for piece in body.chunks(30_000) {
        std::thread::sleep(Duration::from_millis(20));
        c.send(piece);
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "the echoed body differs");
    // Expect: 100-continue gets its interim response before the body.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    while !c.buf.ends_with(b"\r\n\r\n") {
        c.fill();
    }
    assert_eq!(c.buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.buf.clear();
    c.send(b"ok");
    assert_eq!(c.response().body, b"ok");
}

/// Sends `request` and expects `status` with `Connection: close`, then the
/// close.
fn expect_rejected(request: &[u8], status: u16) {
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let mut c = Reader::new(server.inet());
    c.send(request);
    let r = c.response();
    check_common(&r);
    assert_eq!((r.status, r.header("Connection")), (status, Some("close")));
    assert!(!r.body.is_empty(), "an explanation in the body");
    c.expect_closed();
}

#[test]
fn head_over_8_kib_gets_431() {
    let _w = watchdog("head_431", Duration::from_secs(30));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    expect_rejected(big.as_bytes(), 431);
    // Never completed: rejected once 8 KiB arrived.
    expect_rejected(&big.as_bytes()[..8300], 431);
}

#[test]
fn too_many_headers_get_431() {
    let _w = watchdog("headers_431", Duration::from_secs(30));
    let mut req = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..64 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    expect_rejected(req.as_bytes(), 431);
}

#[test]
fn body_over_1_mib_gets_413() {
    let _w = watchdog("body_413", Duration::from_secs(30));
    expect_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n",
        413,
    );
}

#[test]
fn chunked_body_gets_501() {
    let _w = watchdog("chunked_501", Duration::from_secs(30));
    expect_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        501,
    );
}

#[test]
fn malformed_gets_400_then_close() {
    let _w = watchdog("malformed_400", Duration::from_secs(30));
    expect_rejected(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400);
    expect_rejected(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400);
    expect_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
        400,
    );
}

#[test]
fn incomplete_request_gets_408_after_the_timeout_then_close() {
    let _w = watchdog("timeout_408", Duration::from_secs(30));
    let timeout = Duration::from_millis(300);
    let server = start(timeout);
    // A complete request first: the timer is only for incomplete ones.
    let mut c = Reader::new(server.inet());
    c.send(get("/plaintext").as_bytes());
    assert_eq!(c.response().status, 200);
    // Slowloris: a byte at a time does not extend the deadline. The bytes
    // keep coming for twice the timeout (or until the 408), so a server
    // that restarted its timer on each read would answer only after them.
    let started = Instant::now();
    let trickle_for = timeout * 2;
    let got_408 = Arc::new(AtomicBool::new(false));
    let trickle = {
        let mut s = c.stream.try_clone().unwrap();
        let got_408 = Arc::clone(&got_408);
        std::thread::spawn(move || {
            let head = b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Slow: ";
            let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
            while started.elapsed() < trickle_for && !got_408.load(Ordering::SeqCst) {
                // The server may have closed already: nothing to check.
                let _ = s.write_all(&[bytes.next().unwrap()]);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let r = c.response();
    let waited = started.elapsed();
    got_408.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
    assert!(
        waited >= timeout,
        "408 after {waited:?}, before {timeout:?}"
    );
    assert!(
        waited < trickle_for,
        "408 only after {waited:?}: the trickle (for {trickle_for:?}) extended the {timeout:?} timeout"
    );
    c.expect_closed();
    // An idle keep-alive connection is not timed out by it.
    let mut idle = Reader::new(server.inet());
    std::thread::sleep(timeout * 2);
    idle.send(get("/plaintext").as_bytes());
    assert_eq!(idle.response().status, 200);
}

/// The built example as a child, with `args`; its address from its log.
struct Child {
    example: ExampleChild,
    addr: std::net::SocketAddr,
}

impl Child {
    fn spawn(args: &[&str]) -> Child {
        Child::spawn_with(args, Command::new(example_binary("http")))
    }

    /// The example with at most `nofile` file descriptors.
    fn spawn_limited(args: &[&str], nofile: u64) -> Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(example_binary("http"));
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Child::spawn_with(args, cmd)
    }

    fn spawn_with(args: &[&str], mut cmd: Command) -> Child {
        cmd.args(["--listen", "tcp://127.0.0.1:0"]).args(args);
        let example = ExampleChild::spawn_command("http", cmd);
        Child {
            addr: example.addr,
            example,
        }
    }

    /// Sends SIGINT and expects a clean exit.
    fn interrupt(mut self) {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.example.pid() as i32, libc::SIGINT) };
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.example.child.try_wait().unwrap() {
                assert!(status.success(), "exit after SIGINT: {status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "no exit after SIGINT");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn example_binary_serves_times_out_and_stops_on_sigint() {
    let _w = watchdog("example_binary", Duration::from_secs(300));
    let child = Child::spawn(&["--request-timeout", "0.2"]);
    let mut c = Reader::new(child.addr);
    c.send(get("/plaintext").as_bytes());
    assert_eq!(c.response().body, b"Hello, World!");
    c.send(b"GET /plaintext HTTP/1.1\r\n");
    assert_eq!(c.response().status, 408);
    c.expect_closed();
    child.interrupt();
}

/// Runs curl with `args`; its stdout.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    out.stdout
}

#[test]
#[ignore = "needs curl (apt-get install curl)"]
fn curl_get_post_and_keep_alive() {
    let _w = watchdog("curl", Duration::from_secs(60));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let base = format!("http://127.0.0.1:{}", server.port(0));
    assert_eq!(curl(&[&format!("{base}/plaintext")]), b"Hello, World!");
    let page = String::from_utf8(curl(&[&format!("{base}/")])).unwrap();
    assert!(page.contains("<html>"), "{page}");
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/x"),
    ]);
    assert_eq!(code, b"404");
    // A 2 MB file would be 413; 100 KB (curl sends Expect: 100-continue
    // past 1 MiB in new versions, 1 KiB in old ones) comes back whole.
    let body: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let echoed = curl(&["--data-binary", &body, &format!("{base}/echo")]);
    assert!(echoed == body.as_bytes(), "the echo differs");
    // Several URLs on one connection: curl reuses it (keep-alive).
    let out = curl(&[
        "-w",
        "[%{num_connects}]",
        &format!("{base}/plaintext"),
        &format!("{base}/plaintext"),
        &format!("{base}/plaintext"),
    ]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "Hello, World![1]Hello, World![0]Hello, World![0]"
    );
    let out = curl(&["--http1.0", "-i", &format!("{base}/plaintext")]);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("Connection: close\r\n"), "{out}");
}

#[test]
#[ignore = "needs wrk (apt-get install wrk)"]
fn wrk_3_seconds_without_errors() {
    let _w = watchdog("wrk", Duration::from_secs(60));
    let server = start(server::DEFAULT_REQUEST_TIMEOUT);
    let url = format!("http://127.0.0.1:{}/plaintext", server.port(0));
    let out = Command::new("wrk")
        .args(["-t1", "-c32", "-d3s", &url])
        .stdin(Stdio::null())
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {out:?}");
    println!("{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(text.contains("Requests/sec"), "{text}");
}

/// Sockets that linger after a close are the first descriptors given back:
/// clients that got a `Connection: close` answer and keep their end open
/// leave the server's sockets lingering; out of descriptors, the server
/// closes those rather than pausing its accepts, so each next client is
/// served at once, not after the linger timeout (5 s).
#[test]
fn out_of_descriptors_closes_lingering_sockets_first() {
    let _w = watchdog("lingering_fds", Duration::from_secs(120));
    let child = Child::spawn_limited(&[], 48);
    let mut held = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let mut c = TcpStream::connect(child.addr).unwrap();
        c.set_read_timeout(Some(STEP)).unwrap();
        c.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let took = started.elapsed();
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "client {i}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            took < Duration::from_secs(2),
            "client {i} was served only after {took:?}: the server waited for descriptors"
        );
        held.push(c); // kept open: the server's socket lingers
    }
}
