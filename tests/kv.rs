//! The kv example end to end: its handler runs in-process on an ephemeral
//! port and a Unix socket, driven by the `redis` crate (a client library
//! written elsewhere, so the protocol is checked by code nobody here wrote)
//! and by raw sockets for pipelines and protocol errors.
//!
//! The command scenarios also run against the real `redis-cli` (Debian's
//! redis-tools) as `#[ignore]`d tests, since a plain `cargo test` must pass
//! with the Rust toolchain alone; `.ci/run` installs redis-tools and runs
//! them with `cargo test --test kv -- --ignored`.
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
use redis::{ConnectionAddr, ConnectionInfo, Value};

/// Longest any one client operation may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What an `#[ignore]`d redis-cli test needs, as its ignore reason says.
const NEEDS_REDIS_CLI: &str = "needs redis-cli (apt-get install redis-tools)";

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

    /// A `redis` crate connection over TCP, with read and write timeouts.
    fn redis(&self) -> Redis {
        Redis::open(ConnectionAddr::Tcp("127.0.0.1".into(), self.port))
    }

    /// A `redis` crate connection over the Unix socket.
    fn redis_unix(&self) -> Redis {
        Redis::open(ConnectionAddr::Unix(self.unix.clone()))
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
        let _ = std::fs::remove_file(&self.unix);
    }
}

/// A connection of the `redis` crate (synchronous, RESP2).
struct Redis(redis::Connection);

impl Redis {
    fn open(addr: ConnectionAddr) -> Redis {
        let info = ConnectionInfo {
            addr,
            redis: Default::default(),
        };
        let client = redis::Client::open(info).expect("a connection info");
        let con = client
            .get_connection_with_timeout(TIMEOUT)
            .expect("connect with the redis crate");
        con.set_read_timeout(Some(TIMEOUT)).unwrap();
        con.set_write_timeout(Some(TIMEOUT)).unwrap();
        Redis(con)
    }

    /// Sends `args` as one command and returns the reply as `redis-cli`
    /// prints it when its output is not a terminal, so that the scenarios
    /// below read the same with either client: a bulk string as is, nil as
    /// an empty string, an integer in decimal, a status or an error as its
    /// text, an array one element a line.
    fn cmd(&mut self, args: &[&str]) -> String {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        match cmd.query::<Value>(&mut self.0) {
            Ok(value) => as_cli_prints(&value),
            Err(e) => match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                _ => panic!("{args:?}: {e}"),
            },
        }
    }
}

/// A reply as `redis-cli` prints it to a pipe (see [`Redis::cmd`]).
fn as_cli_prints(value: &Value) -> String {
    match value {
        Value::Nil => String::new(),
        Value::Int(n) => n.to_string(),
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).expect("UTF-8 reply"),
        Value::Okay => "OK".into(),
        Value::SimpleString(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(as_cli_prints)
            .collect::<Vec<_>>()
            .join("\n"),
        Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or("")),
        other => panic!("a RESP3 reply from a RESP2 server: {other:?}"),
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("redis-cli not found: this test {NEEDS_REDIS_CLI}")
        }
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

// ---------------------------------------------------------------------------
// Scenarios, each run with the redis crate and (ignored) with redis-cli: `cmd`
// sends one command and returns the reply as redis-cli prints it.

fn strings_counters_expiry_and_errors(cmd: &mut dyn FnMut(&[&str]) -> String) {
    assert_eq!(cmd(&["ping"]), "PONG");
    assert_eq!(cmd(&["set", "a", "1"]), "OK");
    assert_eq!(cmd(&["get", "a"]), "1");
    assert_eq!(cmd(&["incr", "a"]), "2");
    assert_eq!(cmd(&["get", "a"]), "2");
    assert_eq!(cmd(&["ttl", "a"]), "-1");
    assert_eq!(cmd(&["expire", "a", "100"]), "1");
    // Rounded to whole seconds as Redis does; a loaded machine may take a
    // while between the two commands, so anything within the last 10 s.
    let ttl: i64 = cmd(&["ttl", "a"]).parse().unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(cmd(&["get", "missing"]), "");
    assert_eq!(cmd(&["ttl", "missing"]), "-2");
    assert_eq!(cmd(&["mset", "x", "1", "y", "2"]), "OK");
    assert_eq!(cmd(&["mget", "x", "nope", "y"]), "1\n\n2");
    assert_eq!(cmd(&["del", "x", "y", "nope"]), "2");
    cmd(&["set", "s", "abc"]);
    assert_eq!(
        cmd(&["incr", "s"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        cmd(&["nosuch", "x"]),
        "ERR unknown command 'nosuch', with args beginning with: 'x' "
    );
}

fn one_store_for_tcp_and_unix(
    tcp: &mut dyn FnMut(&[&str]) -> String,
    unix: &mut dyn FnMut(&[&str]) -> String,
) {
    assert_eq!(unix(&["set", "k", "via unix"]), "OK");
    assert_eq!(unix(&["get", "k"]), "via unix");
    assert_eq!(tcp(&["get", "k"]), "via unix", "one store for both");
    assert_eq!(unix(&["incrby", "n", "41"]), "41");
    assert_eq!(unix(&["incr", "n"]), "42");
}

/// A key given one second to live: its remaining time read back is never
/// more than that nor less than what the clock allows, and once the second
/// is certainly over (measured from when the EXPIRE was answered) the key
/// is gone. No assertion depends on how fast the commands run.
fn expiry_is_observed(cmd: &mut dyn FnMut(&[&str]) -> String) {
    assert_eq!(cmd(&["set", "k", "v"]), "OK");
    let asked = Instant::now();
    assert_eq!(cmd(&["expire", "k", "1"]), "1");
    let answered = Instant::now(); // the expiry is set between the two
    let pttl: i64 = cmd(&["pttl", "k"]).parse().unwrap();
    let age = age_ms(asked);
    if pttl == -2 {
        assert!(age >= 1000, "expired after {age} ms");
    } else {
        assert!(
            (1000 - age..=1000).contains(&pttl),
            "pttl {pttl} read {age} ms after the EXPIRE"
        );
    }
    let ttl: i64 = cmd(&["ttl", "k"]).parse().unwrap();
    let age = age_ms(asked);
    assert!(
        matches!(ttl, 0 | 1) || (ttl == -2 && age >= 1000),
        "ttl {ttl} read {age} ms after the EXPIRE"
    );
    let over = answered + Duration::from_millis(1050);
    thread::sleep(over.saturating_duration_since(Instant::now()));
    assert_eq!(cmd(&["ttl", "k"]), "-2");
    assert_eq!(cmd(&["get", "k"]), "");
    assert_eq!(cmd(&["exists", "k"]), "0");
}

/// Milliseconds since `t`, rounded up, plus one for the server's rounding.
fn age_ms(t: Instant) -> i64 {
    t.elapsed().as_micros().div_ceil(1000) as i64 + 1
}

fn sweep_removes_expired_keys(cmd: &mut dyn FnMut(&[&str]) -> String) {
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(cmd(&["set", &key, "v", "px", "50"]), "OK");
    }
    cmd(&["set", "forever", "v"]);
    // DBSIZE counts expired keys not yet removed: only the sweep brings it down.
    let deadline = Instant::now() + TIMEOUT;
    while cmd(&["dbsize"]) != "1" {
        assert!(Instant::now() < deadline, "sweep never removed the keys");
        thread::sleep(server::SWEEP_PERIOD);
    }
}

// ---------------------------------------------------------------------------
// With the redis crate.

#[test]
fn set_get_incr_expire_ttl() {
    let server = Server::start();
    let mut redis = server.redis();
    strings_counters_expiry_and_errors(&mut |args| redis.cmd(args));
}

#[test]
fn commands_over_a_unix_socket() {
    let server = Server::start();
    let (mut tcp, mut unix) = (server.redis(), server.redis_unix());
    one_store_for_tcp_and_unix(&mut |args| tcp.cmd(args), &mut |args| unix.cmd(args));
}

#[test]
fn expiry_is_observed_with_ttl() {
    let server = Server::start();
    let mut redis = server.redis();
    expiry_is_observed(&mut |args| redis.cmd(args));
}

#[test]
fn sweep_removes_expired_keys_nobody_reads() {
    let server = Server::start();
    let mut redis = server.redis();
    sweep_removes_expired_keys(&mut |args| redis.cmd(args));
}

#[test]
fn pipeline_of_the_redis_crate() {
    let server = Server::start();
    let mut redis = server.redis();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg(format!("key:{i}"));
    }
    pipe.cmd("MGET").arg("key:0").arg("key:999").arg("nope");
    let (incrs, mget): (Vec<i64>, Vec<Option<i64>>) = {
        let mut all: Vec<Value> = pipe.query(&mut redis.0).expect("the pipeline");
        let mget = all.pop().expect("the MGET's reply");
        let incrs = all.iter().map(|v| redis::from_redis_value(v).unwrap());
        (incrs.collect(), redis::from_redis_value(&mget).unwrap())
    };
    assert_eq!(incrs, (1..=1000).collect::<Vec<i64>>());
    assert_eq!(mget, [Some(1), Some(1000), None]);
}

/// A value past netloop's default write-queue cap (64 MiB), well inside
/// Redis's 512 MB: what SET accepts, GET must give back.
#[test]
fn value_of_100_mb_round_trips() {
    const SIZE: usize = 100 * 1000 * 1000;
    let server = Server::start();
    let mut redis = server.redis();
    let value: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    redis::cmd("SET")
        .arg("big")
        .arg(&value[..])
        .exec(&mut redis.0)
        .expect("SET of 100 MB");
    let set = t.elapsed();
    let got: Vec<u8> = redis::cmd("GET")
        .arg("big")
        .query(&mut redis.0)
        .expect("GET of 100 MB");
    eprintln!("100 MB: SET in {set:?}, GET in {:?}", t.elapsed() - set);
    assert_eq!(got.len(), SIZE, "GET returned {} bytes", got.len());
    assert!(got == value, "GET returned other bytes");
    assert_eq!(
        redis.cmd(&["ping"]),
        "PONG",
        "the connection is still served"
    );
}

/// The limits the example sets are consistent: a SET of the largest value
/// the parser accepts (with a short key) fits the input limit, and the GET
/// of it fits the write-queue cap.
#[test]
fn limits_let_a_get_return_the_largest_value_a_set_accepts() {
    let config = server::config();
    let max = resp::Limits::default().max_bulk_len;
    let bulk = |n: usize| format!("${n}\r\n").len() + n + 2;
    let set = "*3\r\n".len() + bulk(3) + bulk(64) + bulk(max);
    assert!(config.max_input >= set, "a SET of {max} bytes: {config:?}");
    assert!(
        config.max_write_queue >= bulk(max),
        "a GET of {max} bytes: {config:?}"
    );
}

// ---------------------------------------------------------------------------
// With the real redis-cli.

#[test]
#[ignore = "needs redis-cli (apt-get install redis-tools)"]
fn set_get_incr_expire_ttl_with_redis_cli() {
    let server = Server::start();
    strings_counters_expiry_and_errors(&mut |args| server.cli(args));
}

#[test]
#[ignore = "needs redis-cli (apt-get install redis-tools)"]
fn commands_over_a_unix_socket_with_redis_cli() {
    let server = Server::start();
    one_store_for_tcp_and_unix(&mut |args| server.cli(args), &mut |args| {
        server.cli_unix(args)
    });
}

#[test]
#[ignore = "needs redis-cli (apt-get install redis-tools)"]
fn expiry_is_observed_with_redis_cli() {
    let server = Server::start();
    expiry_is_observed(&mut |args| server.cli(args));
}

#[test]
#[ignore = "needs redis-cli (apt-get install redis-tools)"]
fn sweep_removes_expired_keys_with_redis_cli() {
    let server = Server::start();
    sweep_removes_expired_keys(&mut |args| server.cli(args));
}

// ---------------------------------------------------------------------------
// Raw sockets: exact bytes on the wire.

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
    assert_eq!(server.redis().cmd(&["get", "n"]), "10000");
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
    assert_eq!(server.redis().cmd(&["get", "a"]), "1");

    let mut stream = server.connect();
    stream.write_all(b"INCR n\r\n*x\r\nINCR n\r\n").unwrap();
    assert_eq!(
        read_to_close(&mut stream),
        b":1\r\n-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert_eq!(server.redis().cmd(&["get", "n"]), "1");
}

#[test]
fn quit_replies_ok_then_closes() {
    let server = Server::start();
    let mut stream = server.connect();
    stream.write_all(b"PING\r\nQUIT\r\nINCR n\r\n").unwrap();
    assert_eq!(read_to_close(&mut stream), b"+PONG\r\n+OK\r\n");
    assert_eq!(server.redis().cmd(&["exists", "n"]), "0");
}
