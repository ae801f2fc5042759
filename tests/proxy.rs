//! The proxy example, run as a child process (so that its memory and file
//! descriptors can be read from /proc), in front of upstreams made here:
//! netloop's echo on a thread, or plain std servers that read slowly,
//! parse a PROXY header, reset, or never accept. Everything is over
//! loopback, on ephemeral ports.
//!
//! The tests that need HAProxy (Debian's `haproxy`) are `#[ignore]`d;
//! `.ci/run` installs it and runs them with
//! `cargo test --test proxy -- --ignored`.

mod util;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netloop::proxy_protocol::{
    encode_proxy_v2, encode_proxy_v2_local, Parsed, ProxyCommand, ProxyParser, SocketKind,
};
use netloop::{Addr, Config, UnixAddr};
use util::{client, example_binary, fd_count_of, read_n, round_trip, serve, wait_for, watchdog};
use util::{Echo, STEP};

/// Bytes relayed by the large transfers.
const LARGE: u64 = 200_000_000;
/// How much the proxy's RSS may grow while relaying them.
const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
/// The pace of a slow reader, bytes per second.
const SLOW_RATE: f64 = 100e6;

// ----- The proxy as a child process -----

/// The proxy example running as a child; killed when dropped.
struct Proxy {
    child: Child,
    /// Where each `--listen` listens, as the proxy printed it.
    addrs: Vec<String>,
    /// Its stderr, line by line.
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts the proxy with `args` and waits for the line naming each of
    /// its listeners.
    fn spawn(args: &[&str]) -> Proxy {
        let listeners = args.iter().filter(|a| **a == "--listen").count();
        let mut child = Command::new(example_binary("proxy"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the proxy example");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = log.clone();
        thread::spawn(move || {
            for line in io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line
                    .split_once("proxy listening on ")
                    .and_then(|(_, rest)| rest.split_once(" ("))
                    .and_then(|(_, rest)| rest.split_once("), relaying"))
                {
                    let _ = tx.send(at.0.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut addrs = Vec::new();
        for _ in 0..listeners {
            match rx.recv_timeout(STEP) {
                Ok(addr) => addrs.push(addr),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the proxy did not say where it listens: {:?}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        Proxy { child, addrs, log }
    }

    /// Its first listener's TCP address.
    fn addr(&self) -> SocketAddr {
        self.addrs[0].parse().expect("a TCP listener first")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn fds(&self) -> usize {
        fd_count_of(self.pid())
    }

    /// Waits for a log line containing `what`, and returns it.
    fn wait_log(&self, what: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(what)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {what:?}: {:?}",
                self.log.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until its open fds are back to `base`.
    fn wait_fds(&self, base: usize) {
        let deadline = Instant::now() + STEP;
        loop {
            let now = self.fds();
            if now == base {
                return;
            }
            assert!(Instant::now() < deadline, "proxy fds: {now}, {base} before");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Checks that it runs and logged no panic.
    fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the proxy exited: {:?}",
            self.log.lock().unwrap()
        );
        let log = self.log.lock().unwrap();
        assert!(
            !log.iter().any(|l| l.to_lowercase().contains("panic")),
            "a panic: {log:?}"
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_url(addr: SocketAddr) -> String {
    format!("tcp://{addr}")
}

// ----- Upstreams -----

/// A std TCP server on a thread: every connection it accepts is served by
/// `serve` on a thread of its own. Stops accepting when dropped.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn spawn(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(STEP)).unwrap();
                        s.set_write_timeout(Some(STEP)).unwrap();
                        let serve = serve.clone();
                        thread::spawn(move || serve(s));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Upstream {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        tcp_url(self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes until end of file, then closes.
fn echo_stream(mut s: TcpStream) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// What an upstream saw of a PROXY header: version, command, source,
/// destination.
type Seen = (u8, ProxyCommand, Option<Addr>, Option<Addr>);

/// An upstream that expects a PROXY header (read as it arrives), reports
/// it on the channel, then echoes.
fn header_echo() -> (Upstream, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Upstream::spawn(move |mut s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let rest = loop {
            let n = s.read(&mut chunk).expect("read the header");
            assert!(n > 0, "end of file before the header");
            buf.extend_from_slice(&chunk[..n]);
            match ProxyParser::new().parse(&buf).expect("a valid header") {
                Parsed::Incomplete => continue,
                Parsed::Done { header, len } => {
                    let seen = (
                        header.version(),
                        header.command(),
                        header.source().cloned(),
                        header.destination().cloned(),
                    );
                    tx.lock().unwrap().send(seen).unwrap();
                    break buf[len..].to_vec();
                }
            }
        };
        if s.write_all(&rest).is_ok() {
            echo_stream(s);
        }
    });
    (upstream, rx)
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ----- A checked byte stream -----

/// The period of the test stream: a prime, so that no read or write size
/// lines up with it.
const PERIOD: usize = 1_048_573;

/// One period of pseudo-random bytes.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Writes `total` bytes of the stream.
fn write_stream(w: &mut impl Write, total: u64) -> io::Result<()> {
    let p = pattern();
    let mut sent = 0u64;
    while sent < total {
        let at = (sent % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(256 * 1024).min((total - sent) as usize);
        w.write_all(&p[at..at + n])?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads the stream until end of file, checking every byte; with a `rate`,
/// first stalls for `stall`, then reads no faster than `rate` bytes per
/// second. Returns the bytes read.
fn read_stream(r: &mut impl Read, rate: Option<f64>, stall: Duration) -> u64 {
    let p = pattern();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    thread::sleep(stall);
    let start = Instant::now();
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return pos,
            Ok(n) => n,
            Err(e) => panic!("read at byte {pos}: {e}"),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let at = (pos % PERIOD as u64) as usize;
            let k = data.len().min(PERIOD - at);
            assert!(data[..k] == p[at..at + k], "stream differs near byte {pos}");
            pos += k as u64;
            data = &data[k..];
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(pos as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
}

/// Samples a process's RSS every 10 ms until stopped; returns the largest.
fn rss_sampler(pid: u32) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let t = thread::spawn(move || {
        let mut max = 0;
        while !stopped.load(Ordering::Relaxed) {
            max = max.max(util::rss_kib(Some(pid)));
            thread::sleep(Duration::from_millis(10));
        }
        max.max(util::rss_kib(Some(pid)))
    });
    (stop, t)
}

/// Expects the proxy to close `s` without sending a byte: end of file or a
/// reset, within [`STEP`].
fn expect_closed_silent(s: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: expected the proxy to close, got {e}"),
    }
    assert!(got.is_empty(), "{what}: the proxy sent {got:?}");
}

// ----- Large transfers, bounded memory -----

#[test]
fn slow_client_gets_200_mb_in_order_with_bounded_memory() {
    let _w = watchdog("slow client", Duration::from_secs(120));
    let echo = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &tcp_url(echo.inet()),
    ]);
    let base_fds = proxy.fds();
    let mut warm = client(proxy.addr());
    round_trip(&mut warm, b"warm up");
    drop(warm);
    proxy.wait_fds(base_fds);
    let base = util::rss_kib(Some(proxy.pid()));
    let (stop, sampler) = rss_sampler(proxy.pid());

    let mut s = client(proxy.addr());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        write_stream(&mut w, LARGE).expect("write through the proxy");
        w.shutdown(Shutdown::Write).unwrap();
    });
    let start = Instant::now();
    let got = read_stream(&mut s, Some(SLOW_RATE), Duration::from_millis(500));
    writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(got, LARGE, "bytes echoed through the proxy");
    eprintln!(
        "200 MB echoed to a slow client in {:?}; proxy RSS {base} KiB, peak {peak} KiB",
        start.elapsed()
    );
    assert!(
        peak.saturating_sub(base) <= RSS_GROWTH_MAX_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB"
    );
    drop(s);
    proxy.wait_fds(base_fds);
}

#[test]
fn slow_upstream_gets_200_mb_in_order_with_bounded_memory() {
    let _w = watchdog("slow upstream", Duration::from_secs(120));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Upstream::spawn(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let got = read_stream(&mut s, Some(SLOW_RATE), Duration::from_millis(500));
        let _ = tx.lock().unwrap().send(got);
    });
    let proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &upstream.url()]);
    let base_fds = proxy.fds();
    let base = util::rss_kib(Some(proxy.pid()));
    let (stop, sampler) = rss_sampler(proxy.pid());

    let mut s = client(proxy.addr());
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let start = Instant::now();
    write_stream(&mut s, LARGE).expect("write through the proxy");
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the upstream's count");
    // The upstream closed after the end of file: so does the proxy.
    assert_eq!(util::read_to_end(&mut s).unwrap(), b"");
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(got, LARGE, "bytes the upstream read");
    eprintln!(
        "200 MB to a slow upstream in {:?}; proxy RSS {base} KiB, peak {peak} KiB",
        start.elapsed()
    );
    assert!(
        peak.saturating_sub(base) <= RSS_GROWTH_MAX_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB"
    );
    drop(s);
    proxy.wait_fds(base_fds);
}

// ----- Half-close -----

#[test]
fn client_half_close_reaches_the_upstream_and_its_reply_comes_back() {
    let _w = watchdog("half-close client", Duration::from_secs(60));
    // The upstream reads to end of file, then answers and closes.
    let upstream = Upstream::spawn(|mut s| {
        let got = util::read_to_end(&mut s).unwrap();
        let mut reply = b"got: ".to_vec();
        reply.extend_from_slice(&got);
        s.write_all(&reply).unwrap();
    });
    let proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &upstream.url()]);
    let base_fds = proxy.fds();
    let mut s = client(proxy.addr());
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(util::read_to_end(&mut s).unwrap(), b"got: request");
    drop(s);
    proxy.wait_fds(base_fds);
}

#[test]
fn upstream_half_close_reaches_the_client_and_the_client_can_still_send() {
    let _w = watchdog("half-close upstream", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    // The upstream greets and shuts its side first, then reads to the end.
    let upstream = Upstream::spawn(move |mut s| {
        s.write_all(b"greeting").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = util::read_to_end(&mut s).unwrap();
        tx.lock().unwrap().send(got).unwrap();
    });
    let proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &upstream.url()]);
    let base_fds = proxy.fds();
    let mut s = client(proxy.addr());
    assert_eq!(util::read_to_end(&mut s).unwrap(), b"greeting");
    // Half-closed toward the client only: its bytes still go up.
    s.write_all(b"late words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(STEP).unwrap(), b"late words");
    drop(s);
    proxy.wait_fds(base_fds);
}

// ----- Upstream failures, resets -----

#[test]
fn refused_upstream_closes_the_client_with_a_log_line_naming_it() {
    let _w = watchdog("refused", Duration::from_secs(60));
    let dead = closed_port();
    let to = tcp_url(dead);
    let mut proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &to]);
    let base_fds = proxy.fds();
    let mut s = client(proxy.addr());
    let _ = s.write_all(b"anyone?");
    expect_closed_silent(&mut s, "refused upstream");
    let line = proxy.wait_log("connect failed");
    assert!(line.contains(&to), "{line}");
    drop(s);
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

#[test]
fn upstream_that_never_accepts_times_out_and_closes_the_client() {
    let _w = watchdog("connect timeout", Duration::from_secs(60));
    // A listener with a backlog of 0, filled: the kernel drops the next SYN.
    let sock = netloop::socket2::Socket::new(
        netloop::socket2::Domain::IPV4,
        netloop::socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    let full =
        (0..8).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => {
                    fillers.push(s);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(full, "could not fill the backlog of {addr}");
    let to = tcp_url(addr);
    let proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &to,
        "--connect-timeout",
        "0.3",
    ]);
    let mut s = client(proxy.addr());
    let start = Instant::now();
    expect_closed_silent(&mut s, "timed-out upstream");
    let line = proxy.wait_log("did not answer within");
    assert!(line.contains(&to), "{line}");
    assert!(start.elapsed() >= Duration::from_millis(250), "{line}");
}

#[test]
fn upstream_reset_mid_stream_resets_the_client() {
    let _w = watchdog("upstream reset", Duration::from_secs(60));
    // Reads a little, answers a little, then resets with bytes unread.
    let upstream = Upstream::spawn(|mut s| {
        let _ = read_n(&mut s, 1000);
        s.write_all(&[b'u'; 1000]).unwrap();
        thread::sleep(Duration::from_millis(50));
        netloop::socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let mut proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &upstream.url()]);
    let base_fds = proxy.fds();
    let mut s = client(proxy.addr());
    s.write_all(&[b'c'; 1000]).unwrap();
    assert_eq!(read_n(&mut s, 1000), [b'u'; 1000]);
    // More on its way up when the upstream resets. (Written before
    // reading, from this thread: a write racing the read could take the
    // reset's error from it, the kernel reporting it once.)
    // On a loaded machine the reset can reach the client while this write
    // still blocks: then the write meets it (EPIPE or ECONNRESET), which
    // shows the same thing.
    let start = Instant::now();
    let reset = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    match s.write_all(&[b'c'; 200_000]) {
        Ok(()) => {
            let mut got = Vec::new();
            let end = s.read_to_end(&mut got);
            assert!(
                matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "expected a reset after {} more bytes, got {end:?}",
                got.len()
            );
        }
        Err(e) if reset(&e) => {}
        Err(e) => panic!("writing to the proxy: {e}"),
    }
    assert!(start.elapsed() < STEP, "the client was not closed");
    drop(s);
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

#[test]
fn client_reset_mid_stream_resets_the_upstream() {
    let _w = watchdog("client reset", Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    // Streams to the client until the relay breaks.
    let upstream = Upstream::spawn(move |mut s| {
        let chunk = [b'u'; 16 * 1024];
        let deadline = Instant::now() + STEP;
        let end = loop {
            if let Err(e) = s.write_all(&chunk) {
                break e.kind();
            }
            assert!(Instant::now() < deadline, "the upstream was never stopped");
        };
        tx.lock().unwrap().send((end, Instant::now())).unwrap();
    });
    let mut proxy = Proxy::spawn(&["--listen", "tcp://127.0.0.1:0", "--to", &upstream.url()]);
    let base_fds = proxy.fds();
    let mut s = client(proxy.addr());
    let _ = read_n(&mut s, 100_000);
    netloop::socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let reset_at = Instant::now();
    drop(s);
    let (end, at) = rx
        .recv_timeout(STEP)
        .expect("the upstream saw the relay end");
    assert!(
        matches!(
            end,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{end:?}"
    );
    assert!(at.duration_since(reset_at) < STEP);
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

// ----- Many relays -----

#[test]
fn thousand_concurrent_relays_then_fds_back_to_baseline() {
    let _w = watchdog("1000 relays", Duration::from_secs(120));
    const RELAYS: usize = 1000;
    let limit = util::raise_fd_limit(); // before the proxy starts: it inherits it
    assert!(
        limit as usize > 2 * RELAYS + 200,
        "fd limit {limit}: need {} sockets",
        2 * RELAYS
    );
    let echo = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &tcp_url(echo.inet()),
    ]);
    let base_fds = proxy.fds();
    let start = Instant::now();
    let mut clients = Vec::with_capacity(RELAYS);
    for i in 0..RELAYS {
        let mut s = client(proxy.addr());
        s.write_all(format!("relay {i:04}\n").as_bytes()).unwrap();
        clients.push(s);
    }
    for (i, s) in clients.iter_mut().enumerate() {
        assert_eq!(read_n(s, 11), format!("relay {i:04}\n").as_bytes());
    }
    // All open at once: a client and an upstream socket each.
    assert!(proxy.fds() >= base_fds + 2 * RELAYS, "{}", proxy.fds());
    for (i, s) in clients.iter_mut().enumerate() {
        round_trip(s, format!("again {i:04}\n").as_bytes());
    }
    eprintln!(
        "{RELAYS} relays opened and used twice in {:?}",
        start.elapsed()
    );
    drop(clients);
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

#[test]
fn unix_listener_and_unix_upstream() {
    let _w = watchdog("unix", Duration::from_secs(60));
    let dir = util::temp_dir("proxy-unix");
    let up = dir.join("up.sock");
    let front = dir.join("front.sock");
    let up_url = format!("unix://{}", up.display());
    let echo = serve(|| Echo, Config::default(), &[up_url.as_str()]);
    let front_url = format!("unix://{}", front.display());
    let proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        &front_url,
        "--to",
        &up_url,
    ]);
    let mut s = std::os::unix::net::UnixStream::connect(&front).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(b"over unix").unwrap();
    assert_eq!(read_n(&mut s, 9), b"over unix");
    let mut t = client(proxy.addr());
    round_trip(&mut t, b"over tcp, to unix");
    drop(echo);
    let _ = std::fs::remove_dir_all(dir);
}

// ----- The PROXY protocol -----

/// Writes `bytes` in pieces of `piece` bytes, pausing between them so that
/// the proxy reads them separately; stops at the first error (the proxy
/// may close the connection before the end of a bad header).
fn write_split(s: &mut TcpStream, bytes: &[u8], piece: usize) {
    for part in bytes.chunks(piece) {
        if s.write_all(part).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn inet(s: &str) -> Addr {
    Addr::Inet(s.parse().unwrap())
}

fn unix(p: &str) -> Addr {
    Addr::Unix(UnixAddr::Path(p.into()))
}

#[test]
fn accepted_headers_split_into_bytes_name_the_client_upstream_and_in_the_log() {
    let _w = watchdog("accept-proxy", Duration::from_secs(60));
    let (upstream, seen) = header_echo();
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &upstream.url(),
        "--accept-proxy",
        "--send-proxy",
        "v2",
    ]);
    let base_fds = proxy.fds();
    let v2 = |src: &Addr, dst: &Addr| {
        let mut out = Vec::new();
        encode_proxy_v2(
            src,
            dst,
            SocketKind::Stream,
            &[(0x02, b"example.com")],
            &mut out,
        )
        .unwrap();
        out
    };
    let mut local = Vec::new();
    encode_proxy_v2_local(&[], &mut local).unwrap();
    // (what, header, the source and destination it names)
    type Case = (&'static str, Vec<u8>, Option<(Addr, Addr)>);
    let cases: Vec<Case> = vec![
        (
            "v1 TCP4",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n".to_vec(),
            Some((inet("192.0.2.1:56324"), inet("198.51.100.7:443"))),
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n".to_vec(),
            Some((inet("[2001:db8::1]:56324"), inet("[2001:db8::2]:443"))),
        ),
        (
            "v2 TCP4",
            v2(&inet("203.0.113.9:40000"), &inet("198.51.100.7:443")),
            Some((inet("203.0.113.9:40000"), inet("198.51.100.7:443"))),
        ),
        (
            "v2 TCP6",
            v2(&inet("[2001:db8::9]:40000"), &inet("[2001:db8::2]:443")),
            Some((inet("[2001:db8::9]:40000"), inet("[2001:db8::2]:443"))),
        ),
        (
            "v2 UNIX",
            v2(&unix("/run/client.sock"), &unix("/run/front.sock")),
            Some((unix("/run/client.sock"), unix("/run/front.sock"))),
        ),
        ("v2 LOCAL", local, None),
    ];
    for (what, header, addrs) in cases {
        let mut s = client(proxy.addr());
        let me = s.local_addr().unwrap();
        let mut wire = header.clone();
        wire.extend_from_slice(b"payload after the header");
        write_split(&mut s, &wire, 1);
        assert_eq!(read_n(&mut s, 24), b"payload after the header", "{what}");
        let (version, command, src, dst) = seen.recv_timeout(STEP).expect(what);
        assert_eq!(version, 2, "{what}: the upstream gets v2");
        assert_eq!(command, ProxyCommand::Proxy, "{what}");
        let (want_src, want_dst) = addrs
            .clone()
            .unwrap_or((Addr::Inet(me), Addr::Inet(proxy.addr())));
        assert_eq!(src, Some(want_src.clone()), "{what}: source upstream");
        assert_eq!(dst, Some(want_dst), "{what}: destination upstream");
        // The log names the client: the header's, or for LOCAL the peer.
        proxy.wait_log(&format!("client {want_src} (PROXY v"));
        round_trip(&mut s, b"and more");
    }
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

#[test]
fn sent_headers_name_the_client_v1_and_v2() {
    let _w = watchdog("send-proxy", Duration::from_secs(60));
    for version in ["v1", "v2"] {
        let (upstream, seen) = header_echo();
        let proxy = Proxy::spawn(&[
            "--listen",
            "tcp://127.0.0.1:0",
            "--to",
            &upstream.url(),
            "--send-proxy",
            version,
        ]);
        let mut s = client(proxy.addr());
        round_trip(&mut s, b"hello");
        let (v, command, src, dst) = seen.recv_timeout(STEP).unwrap();
        assert_eq!(format!("v{v}"), version);
        assert_eq!(command, ProxyCommand::Proxy);
        assert_eq!(src, Some(Addr::Inet(s.local_addr().unwrap())), "{version}");
        assert_eq!(dst, Some(Addr::Inet(proxy.addr())), "{version}");
    }
}

#[test]
fn bad_headers_are_closed_relaying_nothing() {
    let _w = watchdog("bad headers", Duration::from_secs(60));
    /// How a case's connection ends: refused at once, at the client's end
    /// of file, or by the header timeout.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum End {
        Refused,
        Eof,
        Silence,
    }
    // Refusals and ends of file must close well within half of it: a relay
    // that waited for more after a malformed header would close those by
    // the timeout instead.
    let header_timeout = Duration::from_secs(1);
    let upstream = Upstream::spawn(echo_stream);
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &upstream.url(),
        "--accept-proxy",
        "--header-timeout",
        &header_timeout.as_secs_f64().to_string(),
    ]);
    let base_fds = proxy.fds();
    let mut valid_v2 = Vec::new();
    encode_proxy_v2(
        &inet("192.0.2.1:1"),
        &inet("192.0.2.2:2"),
        SocketKind::Stream,
        &[],
        &mut valid_v2,
    )
    .unwrap();
    let mut oversized_v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    oversized_v2.extend_from_slice(&[0u8; 200]);
    let mut oversized_v1 = b"PROXY TCP4 ".to_vec();
    oversized_v1.extend_from_slice(&[b'1'; 200]);
    // (bytes, how the proxy closes)
    let cases: Vec<(&str, Vec<u8>, End)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            End::Refused,
        ),
        (
            "binary garbage",
            b"\r\n\r\n\0\r\nQUIZ\n\x21\x11\0\x0c".to_vec(),
            End::Refused,
        ),
        (
            "bad v1 address",
            b"PROXY TCP4 999.0.0.1 192.0.2.2 1 2\r\nhi".to_vec(),
            End::Refused,
        ),
        (
            "bad v2 version",
            {
                let mut h = valid_v2.clone();
                h[12] = 0x31;
                h
            },
            End::Refused,
        ),
        ("oversized v2", oversized_v2, End::Refused),
        ("oversized v1", oversized_v1, End::Refused),
        (
            "truncated v1, then end of file",
            b"PROXY TCP4 192.0.2.1 19".to_vec(),
            End::Eof,
        ),
        (
            "truncated v2, then end of file",
            valid_v2[..20].to_vec(),
            End::Eof,
        ),
        (
            "truncated v2, then silence",
            valid_v2[..20].to_vec(),
            End::Silence,
        ),
        ("nothing at all", Vec::new(), End::Silence),
    ];
    for (what, bytes, end) in cases {
        let started = Instant::now();
        let mut s = client(proxy.addr());
        write_split(&mut s, &bytes, 7);
        if end == End::Eof {
            s.shutdown(Shutdown::Write).unwrap();
        }
        expect_closed_silent(&mut s, what);
        let took = started.elapsed();
        if end == End::Silence {
            assert!(
                took >= header_timeout,
                "{what}: closed after {took:?}, before the {header_timeout:?} header timeout"
            );
        } else {
            assert!(
                took < header_timeout / 2,
                "{what} ({end:?}): closed only after {took:?}, with a {header_timeout:?} header timeout"
            );
        }
    }
    proxy.wait_log("no whole PROXY header within");
    proxy.wait_log("end of file before a whole PROXY header");
    proxy.wait_log("too long");
    assert_eq!(upstream.accepted(), 0, "the upstream was reached");
    proxy.wait_fds(base_fds);
    proxy.assert_healthy();
}

// ----- Command line, signals -----

#[test]
fn help_and_a_clean_exit_on_ctrl_c() {
    let _w = watchdog("cli", Duration::from_secs(60));
    let out = Command::new(example_binary("proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--to",
        "--accept-proxy",
        "--send-proxy",
        "--connect-timeout",
        "--idle-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    let echo = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &tcp_url(echo.inet()),
    ]);
    let mut s = client(proxy.addr());
    round_trip(&mut s, b"before the signal");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGINT");
        thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status}");
    proxy.wait_log("stopped");
    // Its relays were closed: end of file.
    assert_eq!(util::read_to_end(&mut s).unwrap(), b"");
}

// ----- HAProxy in front -----

const NEEDS_HAPROXY: &str = "needs haproxy (apt-get install haproxy)";

/// HAProxy in `mode tcp`, relaying to `backend` with `send-proxy-v2`;
/// killed when dropped.
struct HaProxy {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl HaProxy {
    fn start(backend: SocketAddr) -> HaProxy {
        let dir = util::temp_dir("haproxy");
        let port = closed_port().port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    nbthread 1\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend front\n    bind 127.0.0.1:{port}\n    default_backend back\n\
                 backend back\n    server s1 {backend} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let bin = ["haproxy", "/usr/sbin/haproxy"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").output().is_ok())
            .expect(NEEDS_HAPROXY);
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect(NEEDS_HAPROXY);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut h = HaProxy { child, addr, dir };
        wait_for("haproxy to listen", || {
            assert!(h.child.try_wait().unwrap().is_none(), "haproxy exited");
            TcpStream::connect(addr).is_ok()
        });
        h
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy)"]
fn haproxy_in_front_round_trip_and_the_real_client_logged() {
    let _w = watchdog("haproxy", Duration::from_secs(60));
    let upstream = Upstream::spawn(echo_stream);
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &upstream.url(),
        "--accept-proxy",
    ]);
    let haproxy = HaProxy::start(proxy.addr());
    for i in 0..3 {
        let mut s = client(haproxy.addr);
        let me = s.local_addr().unwrap();
        round_trip(&mut s, format!("through haproxy {i}").as_bytes());
        // A megabyte each way, written while it comes back.
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || write_stream(&mut w, 1 << 20).unwrap());
        let mut echoed = (&mut s).take(1 << 20);
        assert_eq!(read_stream(&mut echoed, None, Duration::ZERO), 1 << 20);
        writer.join().unwrap();
        // HAProxy's client is ours: the proxy logs this socket's address.
        let line = proxy.wait_log(&format!("client {me} (PROXY v2 header from"));
        assert!(!line.contains("LOCAL"), "{line}");
    }
    proxy.assert_healthy();
}

#[test]
#[ignore = "needs haproxy (apt-get install haproxy)"]
fn a_client_skipping_haproxy_is_refused() {
    let _w = watchdog("skip haproxy", Duration::from_secs(60));
    let upstream = Upstream::spawn(echo_stream);
    let mut proxy = Proxy::spawn(&[
        "--listen",
        "tcp://127.0.0.1:0",
        "--to",
        &upstream.url(),
        "--accept-proxy",
    ]);
    let haproxy = HaProxy::start(proxy.addr());
    let mut via = client(haproxy.addr);
    round_trip(&mut via, b"the right way");
    let reached = upstream.accepted();
    let mut direct = client(proxy.addr());
    direct.write_all(b"hello, no header").unwrap();
    expect_closed_silent(&mut direct, "a client without a header");
    proxy.wait_log("refused");
    assert_eq!(
        upstream.accepted(),
        reached,
        "the direct client reached the upstream"
    );
    round_trip(&mut via, b"still fine");
    proxy.assert_healthy();
}
