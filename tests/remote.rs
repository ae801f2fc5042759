//! Messages from other threads through a Handle.

mod util;

use std::time::Duration;

use netloop::{Config, Context, EventLoop, Handler, SendError};

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
    let mut el = EventLoop::new(Sink {
        next: vec![0; threads],
        total: 0,
        expect: threads as u64 * per_thread,
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
    let watchdog = el.handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while el.run_once(Some(Duration::from_millis(100))).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "messages did not all arrive in time"
        );
    }
    drop(watchdog);
    for s in senders {
        s.join().unwrap();
    }
    let h = el.handler();
    assert_eq!(h.total, threads as u64 * per_thread);
    assert!(h.next.iter().all(|&n| n == per_thread));
    assert_eq!(el.stats().messages, threads as u64 * per_thread);
}

#[test]
fn four_threads_hundred_thousand_messages_each() {
    flood(4, 100_000);
}

#[test]
fn eight_threads_million_messages_each() {
    // RELIABILITY.md #13: 8M messages, none lost, no hang.
    flood(8, 1_000_000);
}

#[test]
fn wakes_coalesce() {
    let mut el = EventLoop::new(Sink {
        next: vec![0],
        total: 0,
        expect: 10_000,
    })
    .unwrap();
    let h = el.handle();
    for i in 0..10_000 {
        h.send((0, i)).unwrap();
    }
    el.run().unwrap();
    assert!(
        el.stats().polls < 100,
        "10,000 messages took {} polls",
        el.stats().polls
    );
}

#[test]
fn send_after_the_loop_is_gone_gives_the_message_back() {
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
