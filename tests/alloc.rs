//! Steady state costs no heap allocation: a counting global allocator over
//! 100,000 echoed messages after warm-up.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use netloop::{Config, EventLoop};
use util::*;

/// Counts allocations made on threads that asked to be counted.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only an atomic and a const-initialised thread-local (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn echo_steady_state_allocates_nothing() {
    let _w = watchdog(
        "echo_steady_state_allocates_nothing",
        std::time::Duration::from_secs(120),
    );
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true)); // every allocation of the loop's thread counts
        let mut el = EventLoop::with_config(Echo, Config::default()).unwrap();
        let l = el.listen("tcp://127.0.0.1:0").unwrap();
        tx.send((el.context().local_addr(l).unwrap(), el.handle()))
            .unwrap();
        el.run().unwrap();
    });
    let (addr, handle) = rx.recv_timeout(STEP).unwrap();
    let mut clients: Vec<_> = (0..4).map(|_| client(addr.as_inet().unwrap())).collect();
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut ping = |clients: &mut Vec<std::net::TcpStream>, n: usize| {
        for i in 0..n {
            let c = &mut clients[i % 4];
            c.write_all(&msg).unwrap();
            c.read_exact(&mut buf).unwrap();
        }
    };
    ping(&mut clients, 1_000); // warm-up: buffers reach their working size
    let before = ALLOCS.load(Ordering::Relaxed);
    ping(&mut clients, 100_000);
    let after = ALLOCS.load(Ordering::Relaxed);
    handle.stop();
    drop(clients);
    thread.join().unwrap();
    assert!(
        before > 0,
        "the counter counts (the loop allocated while starting)"
    );
    assert_eq!(
        after - before,
        0,
        "allocations on the loop's thread in 100,000 messages"
    );
}
