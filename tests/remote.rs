//! Messages from other threads through a Handle.

mod util;

use std::time::Duration;

use netloop::{Context, EventLoop, Handler};

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
    assert_eq!(h.send((0, 7)), Err(netloop::SendError::Closed((0, 7))));
    h.stop(); // harmless
}
