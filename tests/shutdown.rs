//! Graceful shutdown with pending writes, driven by real signals: the server runs in a child process (this test
//! binary again, running only [`shutdown_child`]), which stops on SIGINT or
//! SIGTERM and exits with code 0 when `run` returns.

mod util;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use netloop::{Config, ConnId, Context, EventLoop, Handler};
use util::*;

/// Bytes the child queues for every client as it connects.
const TOTAL: usize = 20 << 20;

/// The child's `Config::drain_timeout`, in milliseconds.
const DRAIN_ENV: &str = "NETLOOP_TEST_DRAIN_MS";

/// Queues [`TOTAL`] bytes for whoever connects, from a 1 MiB pattern made
/// once (made per connection, it cost ~50 ms in a debug build, and a burst
/// of connections then kept one turn of the loop busy for seconds).
struct Firehose(Vec<u8>);

impl Handler for Firehose {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        for _ in 0..TOTAL / self.0.len() {
            if cx.send(id, &self.0).is_err() {
                return;
            }
        }
    }
}

#[test]
#[ignore = "child process of the shutdown tests"]
fn shutdown_child() {
    if !is_child() {
        return;
    }
    let drain: u64 = std::env::var(DRAIN_ENV).unwrap().parse().unwrap();
    let config = Config {
        drain_timeout: Duration::from_millis(drain),
        ..Default::default()
    };
    let mut event_loop = EventLoop::with_config(Firehose(pattern(1 << 20)), config).unwrap();
    let l = event_loop.listen("tcp://127.0.0.1:0").unwrap();
    event_loop.stop_on_signals().unwrap();
    let addr = event_loop.context().local_addr(l).unwrap();
    announce_port(addr.as_inet().unwrap().port());
    let code = match event_loop.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("run: {e}");
            3
        }
    };
    std::process::exit(code);
}

/// The bytes the child sends: `i % 251` at offset `i`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn child(drain: Duration) -> ChildServer {
    ChildServer::spawn(
        "shutdown_child",
        &[(DRAIN_ENV, drain.as_millis().to_string())],
    )
}

/// Reads until end of file or an error; returns the bytes read and whether
/// it ended cleanly (end of file) rather than by a reset. Each read waits at
/// most [`STEP`].
fn read_all(c: &mut TcpStream, pause: Duration) -> (usize, bool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => {
                got += n;
                thread::sleep(pause);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("read stalled after {got} bytes")
            }
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn sigterm_drains_pending_writes_then_exits_zero() {
    let _watchdog = watchdog("sigterm_drains", Duration::from_secs(60));
    let drain = Duration::from_secs(10);
    let mut server = child(drain);
    let mut c = client(server.addr());
    let first = read_n(&mut c, 64 << 10);
    assert!(first == pattern(first.len()));
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    // Listeners close at once. (A client that slips in before is dropped.
    // Attempts are spaced so as not to flood the draining server, and each
    // waits 200 ms at most: a SYN that met the listener as it closed is
    // retried by the kernel only after a second or more.)
    let refused = || {
        matches!(TcpStream::connect_timeout(&server.addr(), Duration::from_millis(200)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    };
    while !refused() {
        assert!(
            t.elapsed() < STEP,
            "the listener still accepts after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The rest, slowly: ~2 ms per 64 KiB read, over a second in all.
    let (rest, clean) = read_all(&mut c, Duration::from_millis(2));
    let took = t.elapsed();
    eprintln!("drained {} MiB in {took:?} after SIGTERM", TOTAL >> 20);
    assert_eq!(first.len() + rest, TOTAL, "bytes lost in the drain");
    assert!(clean, "the drained connection ended with a reset");
    assert!(took < drain, "the drain took {took:?}");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

#[test]
fn short_drain_deadline_cuts_the_client_off_on_time() {
    let _watchdog = watchdog("short_drain_deadline", Duration::from_secs(60));
    let drain = Duration::from_millis(200);
    let mut server = child(drain);
    let mut c = client(server.addr());
    read_n(&mut c, 1); // connected and flooded; never read again until the end
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    eprintln!("exited {took:?} after SIGTERM with a 200 ms drain deadline");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(took >= drain - Duration::from_millis(20), "gave up early");
    assert!(took < drain + Duration::from_secs(2), "took {took:?}");
    let (rest, _) = read_all(&mut c, Duration::ZERO);
    assert!(1 + rest < TOTAL, "got everything despite the deadline");
}

#[test]
fn second_signal_while_draining_exits_at_once() {
    let _watchdog = watchdog("second_signal", Duration::from_secs(60));
    let mut server = child(Duration::from_secs(30));
    let mut c = client(server.addr());
    read_n(&mut c, 1); // the queue cannot drain: the client does not read
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    let draining = server.child.try_wait().unwrap();
    assert!(draining.is_none(), "exited before the drain: {draining:?}");
    let t = Instant::now();
    server.signal(libc::SIGINT);
    // At once, rather than at the 30 s deadline: within STEP (10 s), for a
    // loaded machine's sake.
    let status = server.wait_exit(STEP);
    let took = t.elapsed();
    eprintln!("exited {took:?} after the second signal");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    assert!(took < STEP, "took {took:?}");
}
