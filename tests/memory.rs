//! Memory per connection, against the targets below, measured on the
//! server alone: the echo example runs as a child process
//! and its VmRSS is read from /proc, so nothing this test allocates counts.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{client, read_n, round_trip, wait_for, watchdog, EchoChild};

/// Connections open at once, the warm-up one included: the echo example's
/// loop has the default `max_connections`, 10,000, and refuses more.
const CONNECTIONS: usize = 10_000;
/// Connections opened after the baseline is taken.
const ADDED: usize = CONNECTIONS - 1;
/// Target: an idle connection costs the server at most this much RSS.
const TARGET_IDLE_BYTES: f64 = 256.0;
/// Target: after a burst, RSS is back within this fraction of the idle figure.
const TARGET_AFTER_BURST: f64 = 0.10;
const BURST_BYTES: usize = 60_000;

/// The child's RSS once it stops changing (three equal reads 100 ms apart,
/// or the last of 30).
fn settled_rss(pid: u32) -> u64 {
    let mut last = util::rss_kib(Some(pid));
    let mut same = 0;
    for _ in 0..30 {
        thread::sleep(Duration::from_millis(100));
        let now = util::rss_kib(Some(pid));
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same == 2 {
            break;
        }
    }
    last
}

#[test]
fn ten_thousand_idle_connections_and_a_burst_each() {
    let _watchdog = watchdog("memory", Duration::from_secs(240));
    let limit = util::raise_fd_limit();
    assert!(
        limit as usize > CONNECTIONS + 100,
        "fd limit {limit}: need {CONNECTIONS} client sockets"
    );
    let echo = EchoChild::spawn(20_000);
    let pid = echo.pid();
    let mut warm = client(echo.addr);
    round_trip(&mut warm, b"warm up\n");
    let base_fds = util::fd_count_of(pid);
    let base = settled_rss(pid);

    // Connect in batches, each accepted before the next, so the backlog
    // never overflows (a dropped SYN costs a one-second retry).
    let start = Instant::now();
    let mut clients: Vec<TcpStream> = Vec::with_capacity(ADDED);
    while clients.len() < ADDED {
        for _ in 0..500.min(ADDED - clients.len()) {
            clients.push(client(echo.addr));
        }
        let want = base_fds + clients.len();
        wait_for("the server to accept the batch", || {
            util::fd_count_of(pid) >= want
        });
    }
    let idle = settled_rss(pid);
    let per_conn = (idle.saturating_sub(base) * 1024) as f64 / ADDED as f64;
    eprintln!(
        "{CONNECTIONS} idle connections ({ADDED} opened) in {:?}: RSS {base} KiB -> {idle} KiB, \
         {per_conn:.0} bytes per connection (target {TARGET_IDLE_BYTES})",
        start.elapsed()
    );

    // Each sends 60 KB once, reads its echo, and goes idle again.
    let start = Instant::now();
    let payload = vec![b'e'; BURST_BYTES];
    let mut peak = idle;
    for batch in clients.chunks_mut(200) {
        for c in batch.iter_mut() {
            c.write_all(&payload).unwrap();
        }
        for c in batch.iter_mut() {
            assert!(read_n(c, BURST_BYTES) == payload, "echo differs");
        }
        peak = peak.max(util::rss_kib(Some(pid)));
    }
    let after = settled_rss(pid);
    let ratio = after as f64 / idle as f64 - 1.0;
    eprintln!(
        "burst of {BURST_BYTES} bytes on each in {:?}: RSS peak {peak} KiB, then {after} KiB \
         ({:+.1}% of the idle {idle} KiB; target within {:.0}%)",
        start.elapsed(),
        ratio * 100.0,
        TARGET_AFTER_BURST * 100.0
    );
    round_trip(&mut warm, b"still serving\n");

    let mut missed = Vec::new();
    if per_conn > TARGET_IDLE_BYTES {
        missed.push(format!(
            "target missed: {per_conn:.0} bytes of server RSS per idle connection \
             (target {TARGET_IDLE_BYTES})"
        ));
    }
    if ratio > TARGET_AFTER_BURST {
        missed.push(format!(
            "target missed: RSS {after} KiB after a {BURST_BYTES}-byte burst on each \
             connection, {:.1}% over the idle {idle} KiB (target {:.0}%)",
            ratio * 100.0,
            TARGET_AFTER_BURST * 100.0
        ));
    }
    assert!(missed.is_empty(), "{}", missed.join("; "));
    drop(clients);
}
