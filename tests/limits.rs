//! Limits and faults: running out of file descriptors, a connection flood, idle and slowloris clients, a reader
//! that never reads, and over-long input. Each test drives a real server
//! over loopback and checks what a client sees and what the server keeps.
//!
//! Every test holds [`SERIAL`]: some measure this process's memory, others
//! allocate megabytes or open thousands of sockets, and timings are fairer
//! one at a time.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use netloop::socket2::{Domain, Socket, Type};
use netloop::{CloseReason, Config, ConnId, Context, Handler, LineCodec, TimerId};

use util::{client, read_n, round_trip, serve, wait_for, watchdog, EchoChild};

/// Held by every test of this file, so that none allocates while another
/// measures.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MIB: usize = 1024 * 1024;

/// Reads until end of file or a reset; returns what was read and whether
/// the end was a reset (anything else fails the test).
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!(
                "expected end of file or reset, got {e} after {} bytes",
                got.len()
            ),
        }
    }
}

/// A client socket whose receive buffer is `rcvbuf` bytes (set before
/// connecting, so the window stays small), with timeouts.
fn small_window_client(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.connect_timeout(&addr.into(), util::STEP).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(util::STEP)).unwrap();
    s.set_write_timeout(Some(util::STEP)).unwrap();
    s
}

// ---------------------------------------------------------------------------
// Running out of file descriptors

#[test]
fn fd_exhaustion_backs_off_keeps_serving_and_recovers() {
    let _watchdog = watchdog("fd_exhaustion", Duration::from_secs(60));
    let _serial = serial();
    util::raise_fd_limit();
    let mut echo = EchoChild::spawn(64);
    let pid = echo.pid();
    let mut first = client(echo.addr);
    round_trip(&mut first, b"before\n");

    // 200 more clients: the kernel completes their handshakes (backlog
    // 1024), the server accepts until it has no fd left.
    let mut others: Vec<TcpStream> = (0..200).map(|_| client(echo.addr)).collect();
    wait_for("EMFILE in the server's log", || {
        !echo.log_lines("pausing accepts").is_empty()
    });
    assert!(
        util::fd_count_of(pid) >= 60,
        "the server should be at its limit of 64 fds, has {}",
        util::fd_count_of(pid)
    );
    round_trip(&mut first, b"while out of fds\n");

    // CPU over two seconds while clients wait in the backlog: backing off
    // costs a few accept calls per 500 ms; a busy accept loop would be ~100%.
    let hz = util::clock_ticks_per_sec();
    let (t0, c0) = (Instant::now(), util::cpu_ticks(pid));
    thread::sleep(Duration::from_secs(2));
    let ticks = util::cpu_ticks(pid) - c0;
    let share = ticks as f64 / hz as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "server CPU while out of fds: {:.1}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.30,
        "server CPU {:.0}% while out of fds",
        share * 100.0
    );
    round_trip(&mut first, b"after two seconds\n");

    // Free most fds: the server reads end of file on the clients it had
    // accepted and accepts (and closes) the waiting ones as its fds free up.
    others.truncate(10);
    let freed = Instant::now();
    let mut fresh = client(echo.addr);
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    round_trip(&mut fresh, b"served again\n");
    // Each backoff period accepts (and closes) about 60 of the 190 closed
    // clients still in the backlog, so a few periods pass first.
    let recovered = freed.elapsed();
    eprintln!("a new client was served {recovered:?} after the others closed");
    assert!(
        recovered < Duration::from_secs(5),
        "served only after {recovered:?}: not within a few 500 ms backoff periods"
    );
    round_trip(&mut first, b"still here\n");
    assert!(echo.alive(), "the server died");

    // At most one warning a second: counted over the child's whole life,
    // as lines read from a pipe may arrive in bursts.
    let warnings = echo.log_lines("pausing accepts").len();
    let lifetime = echo.started.elapsed().as_secs_f64();
    eprintln!("{warnings} EMFILE warnings in {lifetime:.1} s");
    assert!(
        warnings as f64 <= lifetime.ceil() + 1.0,
        "{warnings} EMFILE warnings in {lifetime:.1} s"
    );
    drop(others);
}

// ---------------------------------------------------------------------------
// A connection flood

/// Echoes; refused connections are told "busy".
#[derive(Default)]
struct Counting {
    opened: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl Handler for Counting {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut ()) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let _ = cx.send(id, data);
        data.len()
    }
    fn on_refuse(&mut self, cx: &mut Context<'_>, id: ConnId) {
        let _ = cx.send(id, b"busy\n");
        // Stats::refused, as the loop counts it (this one included).
        self.refused
            .store(cx.stats().refused as usize, Ordering::SeqCst);
    }
}

#[test]
fn connection_flood_is_refused_promptly_and_the_established_client_served() {
    let _watchdog = watchdog("connection_flood", Duration::from_secs(90));
    let _serial = serial();
    util::raise_fd_limit();
    const LIMIT: usize = 100;
    const BURST: usize = 2000;
    let opened = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let handler = Counting {
        opened: opened.clone(),
        refused: refused.clone(),
    };
    let config = Config {
        max_connections: LIMIT,
        ..Config::default()
    };
    let server = serve(move || handler, config, &["tcp://127.0.0.1:0"]);
    let addr = server.inet();
    let mut established = client(addr);
    round_trip(&mut established, b"hello\n");

    // The established client pings throughout the flood (and on, to 50
    // round trips); the round trips begun during the flood are the ones
    // that count.
    let flooding = Arc::new(AtomicUsize::new(1));
    let pinger = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let (mut during, mut all) = (Vec::new(), 0);
            loop {
                let in_flood = flooding.load(Ordering::SeqCst) == 1;
                if !in_flood && all >= 50 {
                    return during;
                }
                let t = Instant::now();
                round_trip(&mut established, b"ping\n");
                if in_flood {
                    during.push(t.elapsed());
                }
                all += 1;
                thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let start = Instant::now();
    let mut burst: Vec<TcpStream> = (0..BURST)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, util::STEP).expect("connect");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let connected = start.elapsed();
    wait_for("the flood to be refused", || {
        opened.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst) == BURST + 1
    });
    let settled = start.elapsed();
    flooding.store(0, Ordering::SeqCst);
    let mut rtts = pinger.join().expect("the established client failed");
    // A starved client would have one slow round trip here, or a few.
    let p90 = util::percentile(&mut rtts, 90);
    let max = *rtts.last().unwrap();
    let (opened, refused) = (
        opened.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    eprintln!(
        "{BURST} connects in {connected:?}, all accepted or refused after {settled:?}; \
         {opened} served, {refused} refused; established client: {} round trips during it, p90 {p90:?}, max {max:?}",
        rtts.len()
    );
    assert!(
        opened <= LIMIT,
        "{opened} connections served, limit {LIMIT}"
    );
    assert!(refused >= BURST + 1 - LIMIT, "only {refused} refused");
    // A tenth of the round trips may meet a hiccup of a loaded machine.
    assert!(
        p90 < Duration::from_millis(500),
        "p90 {p90:?} during the flood"
    );

    // Each refused client reads the reason, then end of file; each served one
    // reads nothing yet and echoes.
    thread::sleep(Duration::from_millis(200)); // the last reasons are flushed
    let (mut told, mut served) = (0, Vec::new());
    for s in burst.iter_mut() {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + util::STEP;
        let outcome = loop {
            match s.read(&mut buf) {
                Ok(0) => break Some(true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break Some(true),
                Err(e) if e.kind() == ErrorKind::WouldBlock && got.is_empty() => break None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no end of file after {got:?}");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("refused client: {e}"),
            }
        };
        match outcome {
            Some(_) => {
                assert_eq!(got, b"busy\n", "a refused client's reason");
                told += 1;
            }
            None => served.push(s),
        }
    }
    assert_eq!(told, refused, "every refused client was told and closed");
    assert_eq!(served.len(), opened - 1, "the served ones are open");
    for s in served {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(util::STEP)).unwrap();
        round_trip(s, b"served\n");
    }
    drop(server);
}

// ---------------------------------------------------------------------------
// A line server for the tests below: consumes only complete lines.

/// What the line server saw, with when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Data(ConnId, usize),         // on_data offered this many bytes
    Line(ConnId, usize),         // a complete line of this length
    Pause(ConnId),               // on_backpressure(true)
    Resume(ConnId),              // on_backpressure(false)
    Closing(ConnId),             // a probe found the connection closing
    Closed(ConnId, CloseReason), // on_close
}

type Log = Arc<Mutex<Vec<(Instant, Ev)>>>;

/// Lines: `big N` queues N bytes, `flood` starts pushing 1 MiB a tick (up to
/// 200 MiB) until the connection is dropped, anything else is echoed. A line over the codec's maximum gets an
/// error line and a close.
struct LineServer {
    codec: LineCodec,
    log: Log,
    probe: Vec<ConnId>,             // connections to watch for a close in progress
    flood: Option<(ConnId, usize)>, // the flooded connection and MiB pushed
    tick: Option<TimerId>,          // the 2 ms probe and flood timer
    chunk: Vec<u8>,                 // 1 MiB of filler
}

impl LineServer {
    fn new(max_line: usize) -> (LineServer, Log) {
        let log = Log::default();
        let server = LineServer {
            codec: LineCodec::new(max_line),
            log: log.clone(),
            probe: Vec::new(),
            flood: None,
            tick: None,
            chunk: vec![b'x'; MIB],
        };
        (server, log)
    }

    fn record(&self, ev: Ev) {
        self.log.lock().unwrap().push((Instant::now(), ev));
    }
}

impl Handler for LineServer {
    type Conn = ();
    type Msg = ();

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        // A fixed, small send buffer: the kernel takes little of a queue, so
        // queue sizes (and backpressure) do not depend on autotuning.
        cx.socket(id)
            .unwrap()
            .set_send_buffer_size(32 * 1024)
            .unwrap();
        if self.tick.is_none() {
            self.tick = Some(cx.set_interval(Duration::from_millis(2)));
        }
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        self.record(Ev::Data(id, data.len()));
        let mut lines = self.codec.lines(data);
        for line in lines.by_ref() {
            match line {
                Ok(line) => {
                    self.record(Ev::Line(id, line.len()));
                    if let Some(n) = line.strip_prefix(b"big ") {
                        let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                        for _ in 0..n / MIB {
                            let _ = cx.send(id, &self.chunk);
                        }
                        let _ = cx.send(id, &self.chunk[..n % MIB]);
                        self.probe.push(id);
                    } else if line == b"flood" {
                        self.flood = Some((id, 0));
                    } else {
                        let _ = cx.send(id, line);
                        let _ = cx.send(id, b"\n");
                    }
                }
                Err(e) => {
                    let _ = cx.send(id, format!("! {e}\n").as_bytes());
                    let _ = cx.close(id);
                }
            }
        }
        lines.consumed()
    }

    fn on_backpressure(&mut self, _: &mut Context<'_>, id: ConnId, _: &mut (), paused: bool) {
        self.record(if paused {
            Ev::Pause(id)
        } else {
            Ev::Resume(id)
        });
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, _: TimerId) {
        // A send of nothing fails with Error::Closing once a graceful close
        // has begun: how the test learns the idle sweep's first move.
        let mut closing = Vec::new();
        self.probe.retain(|&id| match cx.send(id, b"") {
            Ok(()) => true,
            Err(netloop::Error::Closing) => {
                closing.push(id);
                false
            }
            Err(_) => false,
        });
        for id in closing {
            self.record(Ev::Closing(id));
        }
        if let Some((id, pushed)) = &mut self.flood {
            if *pushed < 200 && cx.send(*id, &self.chunk).is_ok() {
                *pushed += 1;
            } else {
                self.flood = None;
            }
        }
    }

    fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        self.record(Ev::Closed(id, reason));
    }
}

fn line_server(max_line: usize, config: Config) -> (util::Server<LineServer>, Log) {
    let (handler, log) = LineServer::new(max_line);
    let server = serve(move || handler, config, &["tcp://127.0.0.1:0"]);
    (server, log)
}

fn events(log: &Log) -> Vec<(Instant, Ev)> {
    log.lock().unwrap().clone()
}

fn close_reasons(log: &Log) -> Vec<CloseReason> {
    events(log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Ev::Closed(_, r) => Some(r),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Slowloris and idle clients

#[test]
fn idle_and_slowloris_clients_are_closed_and_a_normal_one_is_not() {
    let _watchdog = watchdog("idle_slowloris", Duration::from_secs(30));
    let _serial = serial();
    let idle = Duration::from_millis(500);
    let config = Config {
        idle_timeout: Some(idle),
        ..Config::default()
    };
    let (server, log) = line_server(1024, config);
    let addr = server.inet();
    let start = Instant::now();
    let mut silent = client(addr);
    let mut trickle = client(addr);
    let mut normal = client(addr);

    // One byte every 200 ms, never a newline: not progress. It stops once
    // it has seen the server close (its writes after the close go on
    // succeeding while the server's socket lingers).
    let trickle_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let mut w = trickle.try_clone().unwrap();
        let closed = trickle_closed.clone();
        thread::spawn(move || {
            for _ in 0..25 {
                if closed.load(std::sync::atomic::Ordering::Relaxed) || w.write_all(b"a").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // A complete line every 200 ms, echoed: progress.
    let normal_client = thread::spawn(move || {
        for i in 0..15 {
            round_trip(&mut normal, format!("line {i}\n").as_bytes());
            thread::sleep(Duration::from_millis(200));
        }
        normal
    });

    let (got, _) = read_until_closed(&mut silent);
    let silent_at = start.elapsed();
    assert!(got.is_empty());
    let (got, _) = read_until_closed(&mut trickle);
    let trickle_at = start.elapsed();
    trickle_closed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(got.is_empty());
    eprintln!("idle {idle:?}: silent closed after {silent_at:?}, trickler after {trickle_at:?}");
    // Sweeps run every idle/8: a close comes between the timeout and a
    // quarter later (Config::idle_timeout); allow scheduling slack on top.
    for at in [silent_at, trickle_at] {
        assert!(at >= idle, "closed early, after {at:?}");
        assert!(at < idle * 3, "closed late, after {at:?}");
    }

    // The normal client talked for 3 s, six timeouts, and is still served.
    let mut normal = normal_client.join().expect("the normal client was cut off");
    round_trip(&mut normal, b"still here\n");
    trickler.join().unwrap();
    let reasons = close_reasons(&log);
    assert_eq!(
        reasons,
        [CloseReason::IdleTimeout, CloseReason::IdleTimeout],
        "exactly the silent client and the trickler timed out"
    );
}

/// Sends `big N` on a client whose window is small and that does not read,
/// and waits for the idle sweep to begin a graceful close of it.
fn stall_until_idle_close(addr: SocketAddr, log: &Log, n: usize) -> (TcpStream, Instant) {
    let mut c = small_window_client(addr, 4096);
    c.write_all(format!("big {n}\n").as_bytes()).unwrap();
    let mut closing_at = None;
    wait_for("the idle sweep to begin closing", || {
        closing_at = events(log).into_iter().find_map(|(t, e)| match e {
            Ev::Closing(_) => Some(t),
            _ => None,
        });
        closing_at.is_some()
    });
    (c, closing_at.unwrap())
}

#[test]
fn idle_close_with_queued_output_flushes_if_the_peer_reads() {
    let _watchdog = watchdog("idle_close_flushes", Duration::from_secs(30));
    let _serial = serial();
    // The client must start reading before the sweep after the one that
    // began the close, which aborts unless output moves: sweeps run eight
    // times per timeout, so 2 s gives it 250 ms, time enough on a loaded
    // machine.
    let config = Config {
        idle_timeout: Some(Duration::from_secs(2)),
        ..Config::default()
    };
    let (server, log) = line_server(1024, config);
    const N: usize = 4 * MIB;
    let (mut c, _) = stall_until_idle_close(server.inet(), &log, N);
    // Read now.
    let (got, reset) = read_until_closed(&mut c);
    assert!(!reset, "reset after {} of {N} bytes", got.len());
    assert_eq!(
        got.len(),
        N,
        "everything queued before the idle close arrives"
    );
    wait_for("on_close", || !close_reasons(&log).is_empty());
    assert_eq!(close_reasons(&log), [CloseReason::IdleTimeout]);
    drop(server);
}

#[test]
fn idle_close_whose_peer_never_reads_is_aborted_on_the_next_sweep() {
    let _watchdog = watchdog("idle_close_aborts", Duration::from_secs(30));
    let _serial = serial();
    let idle = Duration::from_millis(400);
    let config = Config {
        idle_timeout: Some(idle),
        ..Config::default()
    };
    let (server, log) = line_server(1024, config);
    const N: usize = 4 * MIB;
    let (mut c, closing_at) = stall_until_idle_close(server.inet(), &log, N);
    wait_for("on_close", || !close_reasons(&log).is_empty());
    let closed_at = events(&log)
        .into_iter()
        .find_map(|(t, e)| matches!(e, Ev::Closed(..)).then_some(t))
        .unwrap();
    let gap = closed_at.duration_since(closing_at);
    let sweep = idle / 8;
    eprintln!("graceful idle close began, aborted {gap:?} later (sweep every {sweep:?})");
    assert!(
        gap <= 2 * sweep + Duration::from_millis(150),
        "aborted only after {gap:?}"
    );
    assert_eq!(close_reasons(&log), [CloseReason::IdleTimeout]);
    let (got, _) = read_until_closed(&mut c);
    assert!(got.len() < N, "all {N} bytes arrived: nothing was aborted");
    drop(server);
}

// ---------------------------------------------------------------------------
// A reader that never reads

#[test]
fn reader_that_never_reads_is_dropped_with_memory_bounded() {
    let _watchdog = watchdog("never_reads", Duration::from_secs(60));
    let _serial = serial();
    let cap = 8 * MIB;
    let config = Config {
        max_write_queue: cap,
        ..Config::default()
    };
    let (server, log) = line_server(1024, config);
    let addr = server.inet();
    let mut other = client(addr);
    round_trip(&mut other, b"warm up\n");
    let mut stuck = small_window_client(addr, 4096);
    // Let the loop and this process settle, then measure from here.
    thread::sleep(Duration::from_millis(100));
    let base = util::rss_kib(None);
    let peak_reset = util::reset_peak_rss();

    // The other client is served all along.
    let pushing = Arc::new(AtomicUsize::new(1));
    let pinger = {
        let pushing = pushing.clone();
        thread::spawn(move || {
            let mut n = 0;
            while pushing.load(Ordering::SeqCst) == 1 {
                round_trip(&mut other, b"ping\n");
                n += 1;
            }
            n
        })
    };
    // Sample RSS meanwhile too, in case clear_refs is not available.
    let sampler = {
        let pushing = pushing.clone();
        thread::spawn(move || {
            let mut max = 0;
            while pushing.load(Ordering::SeqCst) == 1 {
                max = max.max(util::rss_kib(None));
                thread::sleep(Duration::from_millis(1));
            }
            max
        })
    };
    let start = Instant::now();
    stuck.write_all(b"flood\n").unwrap();
    wait_for("the stuck reader to be dropped", || {
        !close_reasons(&log).is_empty()
    });
    let dropped_after = start.elapsed();
    let reasons = close_reasons(&log);
    thread::sleep(Duration::from_millis(50));
    pushing.store(0, Ordering::SeqCst);
    let pings = pinger.join().expect("the other client was not served");
    let sampled = sampler.join().unwrap();
    let peak = if peak_reset {
        util::peak_rss_kib()
    } else {
        sampled
    };
    let growth = peak.saturating_sub(base) as usize * 1024;
    eprintln!(
        "stuck reader dropped after {dropped_after:?}; RSS peak {} KiB over a {} KiB baseline \
         (cap {} KiB); other client: {pings} round trips meanwhile",
        growth / 1024,
        base,
        cap / 1024
    );
    assert_eq!(reasons, [CloseReason::WriteQueueFull]);
    assert!(pings > 0, "the other client got no round trip in");
    // The queue holds at most the cap and one more 1 MiB send. Its Vec grows
    // by doubling, and when glibc serves the growth from an arena (its mmap
    // threshold rises after earlier tests free big buffers) realloc copies
    // and the old buffers may stay resident: up to about twice the cap
    // (measured: 9 to 14 MiB over the baseline). Without the cap the flood
    // would add 200 MiB.
    assert!(
        growth < 2 * cap + 8 * MIB,
        "RSS grew {} KiB with an {} KiB cap",
        growth / 1024,
        cap / 1024
    );
    let (_, reset) = read_until_closed(&mut stuck);
    assert!(reset, "a dropped reader is reset, not closed gracefully");
    drop(server);
}

#[test]
fn backpressure_pauses_reading_above_high_water_until_low_water() {
    let _watchdog = watchdog("backpressure", Duration::from_secs(30));
    let _serial = serial();
    let config = Config {
        high_water: 256 * 1024,
        low_water: 64 * 1024,
        ..Config::default()
    };
    let (server, log) = line_server(1024, config);
    const N: usize = 4 * MIB;
    let mut c = small_window_client(server.inet(), 4096);
    c.write_all(format!("big {N}\n").as_bytes()).unwrap();
    wait_for("on_backpressure(true)", || {
        events(&log).iter().any(|(_, e)| matches!(e, Ev::Pause(_)))
    });
    // Lines sent while paused are not consumed...
    c.write_all(b"one\ntwo\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    let before: Vec<Ev> = events(&log).into_iter().map(|(_, e)| e).collect();
    assert!(
        !before.iter().any(|e| matches!(e, Ev::Resume(_))),
        "resumed without the client reading: {before:?}"
    );
    let paused_at = before
        .iter()
        .position(|e| matches!(e, Ev::Pause(_)))
        .unwrap();
    assert!(
        !before[paused_at..]
            .iter()
            .any(|e| matches!(e, Ev::Data(..))),
        "data consumed while paused: {before:?}"
    );
    // ...until the client reads and the queue drains to low water.
    let got = read_n(&mut c, N);
    assert!(got.iter().all(|&b| b == b'x'));
    let echoed = read_n(&mut c, 8);
    assert_eq!(echoed, b"one\ntwo\n");
    let evs: Vec<Ev> = events(&log).into_iter().map(|(_, e)| e).collect();
    let resumed_at = evs.iter().position(|e| matches!(e, Ev::Resume(_))).unwrap();
    let first_line_after = evs
        .iter()
        .position(|e| matches!(e, Ev::Line(_, 3)))
        .unwrap();
    assert!(
        paused_at < resumed_at && resumed_at < first_line_after,
        "{evs:?}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------
// Oversized input

#[test]
fn ten_megabytes_without_a_newline_get_an_error_and_a_close_in_bounded_memory() {
    let _watchdog = watchdog("oversized_line", Duration::from_secs(60));
    let _serial = serial();
    let (server, log) = line_server(64 * 1024, Config::default());
    let mut c = client(server.inet());
    round_trip(&mut c, b"hello\n");
    let payload = vec![b'y'; 10_000_000]; // resident before the baseline
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let mut w = c.try_clone().unwrap();
        thread::spawn(move || {
            rx.recv().unwrap();
            // Fails with a reset once the server has closed: expected.
            let _ = w.write_all(&payload);
        })
    };
    thread::sleep(Duration::from_millis(100));
    let base = util::rss_kib(None);
    let peak_reset = util::reset_peak_rss();
    tx.send(()).unwrap();
    let (got, _) = read_until_closed(&mut c);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("! line or frame longer than 65536 bytes"),
        "got {text:?}"
    );
    writer.join().unwrap();
    wait_for("on_close", || !close_reasons(&log).is_empty());
    let now = util::rss_kib(None);
    let peak = if peak_reset {
        util::peak_rss_kib()
    } else {
        now
    };
    let growth = peak.saturating_sub(base);
    eprintln!("10 MB line: RSS {base} KiB before, peak {peak} KiB, {now} KiB after");
    assert!(growth < 1024, "RSS grew {growth} KiB for a 10 MB line");
    assert_eq!(close_reasons(&log), [CloseReason::Closed]);
}

/// Consumes nothing, ever.
struct Hoarder(Log);

impl Handler for Hoarder {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut (), _: &[u8]) -> usize {
        0
    }
    fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), Ev::Closed(id, reason)));
    }
}

#[test]
fn unconsumed_input_past_max_input_closes_the_connection() {
    let _watchdog = watchdog("max_input", Duration::from_secs(30));
    let _serial = serial();
    let log = Log::default();
    let handler = Hoarder(log.clone());
    let config = Config {
        max_input: 64 * 1024,
        ..Config::default()
    };
    let server = serve(move || handler, config, &["tcp://127.0.0.1:0"]);
    let mut c = client(server.inet());
    let mut other = client(server.inet());
    let _ = c.write_all(&vec![b'z'; 1024 * 1024]); // may fail once reset
    let (got, _) = read_until_closed(&mut c);
    assert!(got.is_empty());
    wait_for("on_close", || !close_reasons(&log).is_empty());
    assert_eq!(close_reasons(&log), [CloseReason::InputTooLarge]);
    // Another connection of the same server is untouched.
    other.write_all(b"small").unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(close_reasons(&log).len(), 1);
    drop(server);
}
