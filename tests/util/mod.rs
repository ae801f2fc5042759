//! Helpers shared by the integration tests: a loop on a thread, a watchdog,
//! unique socket paths.
#![allow(dead_code)] // each test file uses its own part

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use netloop::{Addr, EventLoop, Handle, Handler};

/// A loop running on its own thread; dropping it stops the loop and waits.
pub struct Server<M: Send + 'static> {
    pub addrs: Vec<Addr>, // where each URL given to `serve` ended up listening
    handle: Handle<M>,
    thread: Option<JoinHandle<()>>,
}

impl<M: Send + 'static> Server<M> {
    /// The port of the `i`th listener, for a `tcp://…:0` URL.
    pub fn port(&self, i: usize) -> u16 {
        self.addrs[i]
            .as_inet()
            .expect("not an inet listener")
            .port()
    }
}

impl<M: Send + 'static> Drop for Server<M> {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Builds a loop on a new thread with `make`, listens on every URL and runs
/// it. The loop is made on its thread so that the handler need not be `Send`
/// across the call, only the recipe.
pub fn serve<H, F>(make: F, urls: &[&str]) -> Server<H::Msg>
where
    H: Handler + 'static,
    F: FnOnce() -> io::Result<EventLoop<H>> + Send + 'static,
{
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let mut event_loop = make().expect("making the loop");
        let mut addrs = Vec::new();
        for url in &urls {
            let id = event_loop.listen(url.as_str()).expect("listen");
            addrs.push(event_loop.context().local_addr(id).expect("local_addr"));
        }
        tx.send((addrs, event_loop.handle())).unwrap();
        event_loop.run().expect("run");
    });
    let (addrs, handle) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the loop did not start");
    Server {
        addrs,
        handle,
        thread: Some(thread),
    }
}

/// Ends the whole test process if the returned guard is still alive after
/// `limit`: a hang fails fast instead of stalling the suite.
pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: {name} still running after {limit:?}, aborting");
            std::process::exit(101);
        }
    });
    Watchdog(tx)
}

/// Disarms its watchdog when dropped.
pub struct Watchdog(mpsc::Sender<()>);

/// A fresh path in the temp directory for a Unix socket, unique to this
/// process and call.
pub fn socket_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("netloop-{tag}-{}-{n}.sock", std::process::id()))
}
