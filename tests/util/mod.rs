//! Helpers shared by the integration tests: a loop on its own thread, an
//! echo handler, timeouts so that a hang fails fast.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netloop::{Addr, Config, ConnId, Context, EventLoop, Handle, Handler};

/// How long any single blocking step of a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(10);

/// A loop running on its own thread.
pub struct Server<H: Handler> {
    /// Local addresses of the listeners, in the order given.
    pub addrs: Vec<Addr>,
    /// Ids of the listeners.
    pub ids: Vec<ConnId>,
    /// The loop's handle.
    pub handle: Handle<H::Msg>,
    thread: Option<JoinHandle<H>>,
}

impl<H: Handler> Server<H> {
    /// The first listener's IP address.
    pub fn inet(&self) -> std::net::SocketAddr {
        self.addrs[0].as_inet().expect("an IP listener")
    }

    /// The port of the `i`th listener, for a `tcp://…:0` URL.
    pub fn port(&self, i: usize) -> u16 {
        self.addrs[i]
            .as_inet()
            .expect("not an inet listener")
            .port()
    }

    /// Stops the loop gracefully and returns the handler.
    pub fn stop(mut self) -> H {
        self.handle.stop();
        self.join()
    }

    /// Waits for the loop to end by itself (within [`STEP`]).
    pub fn join(&mut self) -> H {
        let thread = self.thread.take().expect("joined once");
        let deadline = Instant::now() + STEP;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the loop did not stop in time");
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("the loop thread panicked")
    }
}

impl<H: Handler> Drop for Server<H> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.handle.stop();
            if !std::thread::panicking() {
                self.join();
            }
        }
    }
}

/// Starts a loop with `handler` on a thread, listening on every url.
pub fn serve<H, F>(make: F, config: Config, urls: &[&str]) -> Server<H>
where
    H: Handler + Send + 'static,
    F: FnOnce() -> H + Send + 'static,
{
    serve_loop(move || EventLoop::with_config(make(), config), urls)
}

/// Starts the loop `make` builds (on the loop's own thread) and listens on
/// every url.
pub fn serve_loop<H, F>(make: F, urls: &[&str]) -> Server<H>
where
    H: Handler + Send + 'static,
    F: FnOnce() -> io::Result<EventLoop<H>> + Send + 'static,
{
    let urls: Vec<String> = urls.iter().map(|s| s.to_string()).collect();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut event_loop = make().expect("loop");
        let mut addrs = Vec::new();
        let mut ids = Vec::new();
        for url in &urls {
            let id = event_loop.listen(url.as_str()).expect("listen");
            addrs.push(event_loop.context().local_addr(id).expect("local addr"));
            ids.push(id);
        }
        tx.send((addrs, ids, event_loop.handle())).unwrap();
        event_loop.run().expect("run");
        event_loop.into_handler()
    });
    let (addrs, ids, handle) = rx.recv_timeout(STEP).expect("the loop started");
    Server {
        addrs,
        ids,
        handle,
        thread: Some(thread),
    }
}

/// Ends the whole test process if the returned guard is still alive after
/// `limit`: a hang fails fast instead of stalling the suite.
pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
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
pub fn socket_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("netloop-{tag}-{}-{n}.sock", std::process::id()))
}

/// Echoes every byte and every datagram.
#[derive(Default)]
pub struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Msg = ();
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let _ = cx.send(id, data);
        data.len()
    }
    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
        from: &Addr,
    ) {
        let _ = cx.send_to(id, data, from);
    }
}

/// A TCP client with timeouts on every read and write.
pub fn client(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Reads until end of file.
pub fn read_to_end(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Sends `msg` and expects it echoed.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_n(s, msg.len()), msg);
}

/// Raises the soft fd limit to the hard one, for tests with many sockets.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Polls `cond` until it holds, failing after [`STEP`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A fresh directory under the system temp dir for Unix socket paths.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "netloop-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
