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

/// Open file descriptors of this process. Panics without `/proc`: a count
/// of 0 would let every assertion on it pass.
pub fn fd_count() -> usize {
    count_entries("/proc/self/fd")
}

/// Entries of a `/proc/…/fd` directory (less the one `read_dir` opens);
/// panics if it cannot be read.
fn count_entries(dir: &str) -> usize {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("counting open fds needs {dir} (Linux's /proc): {e}"));
    entries.fold(0, |n, e| {
        e.expect("a /proc fd entry");
        n + 1
    })
}

/// The `pct`th percentile of `samples` (sorted in place): the smallest
/// sample that at least `pct`% of them do not exceed. With ~100 samples a
/// 99th percentile is their maximum, which one hiccup of a loaded machine
/// sets: latency checks use the 90th, which ignores a few.
pub fn percentile(samples: &mut [Duration], pct: usize) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    assert!((1..=100).contains(&pct), "percentile {pct}");
    samples.sort_unstable();
    samples[(samples.len() * pct).div_ceil(100) - 1]
}

/// Serialises the tests of one file that measure the whole process (fd
/// count, RSS) or latency, which tests running beside them would disturb.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A server running in a child process: this test binary run again with
/// only the `#[ignore]`d test `name`, which serves when [`CHILD_ENV`] is set
/// and prints `PORT <n>` once it listens. Killed when dropped.
pub struct ChildServer {
    /// The child process.
    pub child: std::process::Child,
    /// The TCP port it printed.
    pub port: u16,
}

/// Set (to anything) in the environment of a [`ChildServer`].
pub const CHILD_ENV: &str = "NETLOOP_TEST_CHILD";

/// True in a child started by [`ChildServer::spawn`]: the `#[ignore]`d
/// child tests return at once otherwise.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Prints the line a [`ChildServer`] waits for.
pub fn announce_port(port: u16) {
    println!("PORT {port}");
    io::Write::flush(&mut io::stdout()).unwrap();
}

impl ChildServer {
    /// Runs test `name` of this binary in a child with `env` set, and waits
    /// (up to [`STEP`]) for its `PORT` line.
    pub fn spawn(name: &str, env: &[(&str, String)]) -> ChildServer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the child test");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads to the end, so the child never blocks on a full pipe.
            let mut sent = false;
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // (libtest prints "test NAME ... " before it, on the same line)
                if let Some((_, p)) = line.split_once("PORT ") {
                    if !sent {
                        let _ = tx.send(p.trim().parse::<u16>().expect("a port number"));
                        sent = true;
                    }
                }
            }
        });
        let port = match rx.recv_timeout(STEP) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("child {name} printed no PORT line: {:?}", child.wait());
            }
        };
        ChildServer { child, port }
    }

    /// The child's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Sends signal `sig` to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Waits up to `limit` for the child to exit; `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …); `None` for
/// this process.
pub fn status_kib(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(&path).expect("read /proc/…/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// Resident memory in KiB (VmRSS) of a process, `None` for this one.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Resets this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0),
/// so that a later [`peak_rss_kib`] is the peak since now. False if the
/// kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory (VmHWM) of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib(None, "VmHWM")
}

/// CPU time (user + system) a process has used, in clock ticks
/// (see [`clock_ticks_per_sec`]).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// sysconf(_SC_CLK_TCK): the unit of [`cpu_ticks`].
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(t > 0, "sysconf(_SC_CLK_TCK)");
    t as u64
}

/// Open file descriptors of another process; panics without `/proc`.
pub fn fd_count_of(pid: u32) -> usize {
    count_entries(&format!("/proc/{pid}/fd"))
}

/// An example's binary, target/<profile>/examples/<name> beside this test's
/// target/<profile>/deps/. The first call for each name in a test process
/// runs `cargo build --example <name>` with the test's profile, target
/// directory and features (`tls` if the test was built with it), so
/// `cargo test --test x` works alone and never runs a stale binary; after a
/// plain `cargo test`, which builds the examples first, that build finds
/// nothing to do.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("examples").join(name);
    // Held while building: tests of one file wanting the same example wait
    // for one build.
    let mut built = BUILT
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|b| b == name) {
        let profile = match profile_dir.file_name().and_then(|p| p.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile in {}", profile_dir.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        // The test's own features: a test built with `--features tls` runs
        // the examples with TLS, as `cargo test --features tls` builds them.
        let features: &[&str] = if cfg!(feature = "tls") {
            &["--features", "tls"]
        } else {
            &[]
        };
        let how = format!(
            "cargo build --profile {profile} --example {name} {}",
            features.join(" ")
        );
        let mut command = std::process::Command::new(&cargo);
        command
            .args(["build", "--profile", profile, "--example", name])
            .args(features)
            .arg("--manifest-path")
            .arg(manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(std::process::Stdio::null());
        // The variables `cargo test` sets for the test, which a plain
        // `cargo build` runs without: ring's build script tracks some
        // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, OUT_DIR, …), so passing them
        // on made this build and the next `cargo test` each rebuild ring,
        // rustls and netloop.
        for (key, _) in std::env::vars_os() {
            let Some(k) = key.to_str() else { continue };
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    k,
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                command.env_remove(&key);
            }
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("running `{how}` ({cargo:?}): {e}"));
        assert!(
            out.status.success(),
            "`{how}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(name.to_owned());
    }
    assert!(
        path.exists(),
        "{} missing after `cargo build --example {name}`: build it with this test's \
         profile and --target, then run the test again",
        path.display()
    );
    path
}

/// The echo example running as a child process under `ulimit -n nofile`,
/// on an ephemeral loopback port; killed when dropped.
pub struct EchoChild {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// When it was started.
    pub started: Instant,
    /// Its stderr, line by line, with the time each line was read.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    child: std::process::Child,
}

impl EchoChild {
    /// Starts the echo example with at most `nofile` file descriptors and
    /// waits (within [`STEP`]) for the log line that names its port.
    pub fn spawn(nofile: u32) -> EchoChild {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let bin = example_binary("echo");
        let script = format!(
            "ulimit -n {nofile} && exec '{}' --listen tcp://127.0.0.1:0",
            bin.display()
        );
        let started = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the echo example");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split_once("echo listening on ")
                    .and_then(|(_, rest)| rest.rsplit_once('('))
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .and_then(|(addr, _)| addr.parse::<std::net::SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push((Instant::now(), line));
            }
        });
        let addr = match rx.recv_timeout(STEP) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the echo example did not say where it listens");
            }
        };
        EchoChild {
            addr,
            started,
            stderr,
            child,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines of its stderr that contain `what`, with the times they were read.
    pub fn log_lines(&self, what: &str) -> Vec<(Instant, String)> {
        let lines = self.stderr.lock().unwrap();
        lines
            .iter()
            .filter(|(_, l)| l.contains(what))
            .cloned()
            .collect()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An example running as a child process, killed when dropped: the address
/// of its first listener, from its log line "NAME listening on URL
/// (ADDRESS)", and its stderr so far.
pub struct ExampleChild {
    pub child: std::process::Child,
    /// Where it listens (its first listener).
    pub addr: std::net::SocketAddr,
    /// Its stderr so far, for failure messages.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ExampleChild {
    /// Starts example `name` with `args` and waits (within [`STEP`]) for
    /// the address in its log.
    pub fn spawn(name: &str, args: &[String]) -> ExampleChild {
        let mut cmd = std::process::Command::new(example_binary(name));
        cmd.args(args);
        ExampleChild::spawn_command(name, cmd)
    }

    /// As [`spawn`](ExampleChild::spawn), from a command made ready by the
    /// caller (the example's binary, its arguments, limits).
    pub fn spawn_command(name: &str, mut cmd: std::process::Command) -> ExampleChild {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the {name} example: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        let marker = format!("{name} listening on ");
        std::thread::spawn(move || {
            // Reads to the end, so the child never blocks on a full pipe.
            for line in io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split_once(&marker)
                    .and_then(|(_, rest)| rest.rsplit_once('('))
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .and_then(|(addr, _)| addr.parse::<std::net::SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(STEP) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the {name} example logged no address ({status:?}): {:?}",
                    log.lock().unwrap()
                );
            }
        };
        ExampleChild { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with its log) if it has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the example exited ({status}): {:?}",
                self.log.lock().unwrap()
            );
        }
    }
}

impl Drop for ExampleChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
