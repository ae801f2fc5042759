//! Messages from other threads through a Handle.

mod util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netloop::{Config, Context, EventLoop, Handler, SendError};
use util::{serial, STEP};

/// Counts messages and checks per-sender order.
struct Sink {
    next: Vec<u64>, // next expected sequence number per sender
    total: u64,
    expect: u64,
}

impl Handler for Sink {
    type Conn = ();
    type Msg = (usize, u64);
    fn on_message(&mut self, cx: &mut Context<'_>, (sender, seq): (usize, u64)) {
        assert_eq!(seq, self.next[sender], "sender {sender} out of order");
        self.next[sender] += 1;
        self.total += 1;
        if self.total == self.expect {
            cx.stop();
        }
    }
}

fn flood(threads: usize, per_thread: u64) {
    let _serial = serial(); // wakes_coalesce counts this process's eventfds
    let expect = threads as u64 * per_thread;
    let mut el = EventLoop::new(Sink {
        next: vec![0; threads],
        total: 0,
        expect,
    })
    .unwrap();
    let senders: Vec<_> = (0..threads)
        .map(|t| {
            let h = el.handle();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    h.send((t, i)).unwrap();
                }
            })
        })
        .collect();
    // Messages are taken only on the waker's event, and until the last one
    // is in, some sender is always sending: the loop may never go a long
    // while without taking one. If it does, a message is waiting whose
    // wake-up was lost. (Polls wait up to STEP, so that such a message is
    // not picked up late instead: a short timeout would only have slowed
    // the test down.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut progress = (0, Instant::now()); // messages taken, and when
    while el.run_once(Some(STEP)).unwrap() {
        let taken = el.handler().total;
        assert!(
            progress.1.elapsed() < STEP,
            "no message taken for {STEP:?}, {} of {expect} in: a wake-up was lost",
            progress.0
        );
        if taken != progress.0 {
            progress = (taken, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "messages did not all arrive in time"
        );
    }
    for s in senders {
        s.join().unwrap();
    }
    let h = el.handler();
    assert_eq!(h.total, expect);
    assert!(h.next.iter().all(|&n| n == per_thread));
    assert_eq!(el.stats().messages, expect);
}

#[test]
fn four_threads_hundred_thousand_messages_each() {
    flood(4, 100_000);
}

#[test]
fn eight_threads_million_messages_each() {
    // 8M messages, none lost, no hang.
    flood(8, 1_000_000);
}

/// Messages in a burst; the first of each makes the loop sleep.
const BURST: u64 = 1000;
/// Bursts sent.
const BURSTS: u64 = 10;

/// Takes [`BURST`]-message bursts slowly: it sleeps on the first message of
/// each, so the rest of the burst is sent while the loop is busy.
struct Slow {
    taken: Arc<AtomicU64>, // messages taken so far, for the sender
}

impl Handler for Slow {
    type Conn = ();
    type Msg = u64;
    fn on_message(&mut self, cx: &mut Context<'_>, seq: u64) {
        assert_eq!(seq, self.taken.load(Ordering::SeqCst), "out of order");
        if seq % BURST == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.taken.fetch_add(1, Ordering::SeqCst) + 1 == BURST * BURSTS {
            cx.stop();
        }
    }
}

/// This process's eventfds (a loop's waker is one), by fd number.
fn eventfds() -> Vec<String> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("Linux's /proc");
    dir.filter_map(|e| {
        let e = e.ok()?;
        let link = std::fs::read_link(e.path()).ok()?;
        (link.to_str() == Some("anon_inode:[eventfd]")).then(|| e.file_name().into_string().ok())?
    })
    .collect()
}

/// The counter of eventfd `fd`: the sum of what was written to it, here
/// the number of wakes, since the loop never reads it.
fn eventfd_count(fd: &str) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let hex = info
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-count:"))
        .unwrap_or_else(|| panic!("no eventfd-count in {info}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// Sends that find a wake already on its way write none: the waker (an
/// eventfd, which counts what is written to it) is written about once per
/// burst, not once per message, while the loop runs. Edge-triggered epoll
/// merges wakes that arrive between two polls anyway, so the number of polls
/// could not tell; the eventfd's own count can.
#[test]
fn wakes_coalesce() {
    let _serial = serial(); // no other loop is made or dropped meanwhile
    let taken = Arc::new(AtomicU64::new(0));
    let before = eventfds();
    let mut el = EventLoop::new(Slow {
        taken: taken.clone(),
    })
    .unwrap();
    let mut new: Vec<String> = eventfds();
    new.retain(|fd| !before.contains(fd));
    assert_eq!(new.len(), 1, "the loop made one eventfd: {new:?}");
    let waker = new.pop().unwrap();
    assert_eq!(eventfd_count(&waker), 0);

    let h = el.handle();
    let sender = std::thread::spawn(move || {
        for burst in 0..BURSTS {
            let deadline = Instant::now() + STEP;
            while taken.load(Ordering::SeqCst) < burst * BURST {
                assert!(Instant::now() < deadline, "burst {burst} not taken");
                std::thread::sleep(Duration::from_millis(1));
            }
            for i in 0..BURST {
                h.send(burst * BURST + i).unwrap();
            }
        }
    });
    let _watchdog = util::watchdog("wakes_coalesce", Duration::from_secs(60));
    el.run().unwrap();
    sender.join().unwrap();
    let (wakes, polls) = (eventfd_count(&waker), el.stats().polls);
    eprintln!(
        "{} messages in {BURSTS} bursts: {wakes} wakes, {polls} polls",
        BURST * BURSTS
    );
    assert_eq!(el.stats().messages, BURST * BURSTS);
    // A wake is written only after the loop has taken the messages of the
    // last one, which it does once per poll at most.
    assert!(wakes <= polls + 1, "{wakes} wakes in {polls} polls");
    assert!(
        wakes < BURST * BURSTS / 10,
        "{wakes} wakes for {} messages",
        BURST * BURSTS
    );
}

#[test]
fn send_after_the_loop_is_gone_gives_the_message_back() {
    let _serial = serial();
    let el = EventLoop::new(Sink {
        next: vec![0],
        total: 0,
        expect: 1,
    })
    .unwrap();
    let h = el.handle();
    drop(el);
    assert!(
        matches!(h.send((0, 7)), Err(SendError::Closed((0, 7)))),
        "the message comes back as Closed"
    );
    h.stop(); // harmless
}

/// Keeps every message it gets.
#[derive(Default)]
struct Keep(Vec<u32>);

impl Handler for Keep {
    type Conn = ();
    type Msg = u32;
    fn on_message(&mut self, _: &mut Context<'_>, n: u32) {
        self.0.push(n);
    }
}

/// With `message_queue: Some(4)`, a loop that is not running takes four
/// messages; the fifth comes straight back as `Full` (no blocking), and
/// once the loop has drained the queue there is room again. A loop that is
/// gone gives the message back as `Closed`.
#[test]
fn bounded_message_queue_gives_the_message_back_when_full() {
    let _w = util::watchdog("bounded_message_queue", Duration::from_secs(30));
    let config = Config {
        message_queue: Some(4),
        ..Default::default()
    };
    let mut el = EventLoop::with_config(Keep::default(), config).unwrap();
    let h = el.handle();
    for n in 0..4 {
        assert!(h.send(n).is_ok(), "message {n} of 4 refused");
    }
    let e = match h.send(4) {
        Err(SendError::Full(m)) => {
            assert_eq!(m, 4, "the refused message comes back");
            SendError::Full(m)
        }
        other => panic!("a fifth message: {other:?}"),
    };
    assert!(
        e.to_string().to_lowercase().contains("full"),
        "Display of Full: {e}"
    );
    // The loop drains the queue: room again.
    el.run_once(Some(Duration::from_millis(100))).unwrap();
    assert_eq!(el.handler().0, vec![0, 1, 2, 3]);
    for n in 10..14 {
        assert!(h.send(n).is_ok(), "message {n} refused after the drain");
    }
    assert!(
        matches!(h.send(14), Err(SendError::Full(14))),
        "the queue holds four again"
    );
    drop(el);
    match h.send(15) {
        Err(SendError::Closed(m)) => assert_eq!(m, 15),
        other => panic!("a send to a dropped loop: {other:?}"),
    }
}

/// By default the queue is unbounded: a loop that is not running takes
/// ten thousand messages.
#[test]
fn message_queue_is_unbounded_by_default() {
    let _w = util::watchdog("unbounded_by_default", Duration::from_secs(30));
    assert_eq!(Config::default().message_queue, None);
    let mut el = EventLoop::new(Keep::default()).unwrap();
    let h = el.handle();
    for n in 0..10_000 {
        assert!(h.send(n).is_ok(), "message {n} refused");
    }
    while el.handler().0.len() < 10_000 {
        el.run_once(Some(Duration::from_millis(100))).unwrap();
    }
    assert!(el.handler().0.iter().copied().eq(0..10_000));
}
