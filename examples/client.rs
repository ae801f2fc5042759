// cargo run --release --example client -- URL
//
// A line client, like a small nc, built on the loop: it connects to a TCP or
// Unix stream server, sends what it reads on stdin and prints what the server
// sends. At the end of stdin (Ctrl-D) it half-closes the connection and goes
// on printing until the server closes. Exit status 0 when the connection
// ended cleanly, 1 with a message otherwise (refused, reset, bad URL).
//
// Stdin is one more source in the loop (Context::register_fd), read until
// WouldBlock when it is ready. epoll refuses regular files and /dev/null
// (EPERM), which are always "ready" anyway: for those a thread reads stdin
// with blocking reads and passes the bytes to the loop through its Handle.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;

use clap::Parser;
use netloop::{CloseReason, Config, ConnId, Context, EventLoop, Handle, Handler, Interest, Ready};

/// A line client for TCP and Unix stream servers, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  client tcp://127.0.0.1:7001\n  client unix:///tmp/chat.sock\n  echo hello | client tcp://127.0.0.1:7000"
)]
struct Args {
    /// Server to connect to: tcp://HOST:PORT, unix:///PATH or unix://@NAME.
    url: String,
}

/// Standard input's file descriptor.
const STDIN: i32 = 0;

/// Most bytes of ours the server may have left to take before we stop
/// reading stdin; reading resumes when it has taken them all.
const MAX_UNSENT: usize = 256 * 1024;

/// Bytes from stdin, passed in by the reading thread when stdin cannot be
/// registered with the loop.
enum Input {
    /// The next bytes of stdin.
    Data(Vec<u8>),
    /// Stdin ended (or failed to read).
    End,
}

/// Where stdin's bytes come from.
#[derive(Default)]
enum Stdin {
    /// Not read (yet, or any more).
    #[default]
    Closed,
    /// Registered with the loop under this id: read it when it is ready.
    Fd(ConnId),
    /// Read by a thread, which sends one chunk per credit it gets here.
    Thread(SyncSender<()>),
}

/// Connects stdin to one server connection and the connection to stdout.
///
/// # Flow control
/// The loop's own backpressure would stop reading from the server while
/// our write queue is long; against an echo server, which does the same,
/// both would wait for each other forever. So the client never stops
/// reading (its high-water mark is off, see [`run`]) and instead stops
/// reading stdin while the server has [`MAX_UNSENT`] bytes to take.
#[derive(Default)]
struct Client {
    server: Option<ConnId>,              // the connection, once open
    stdin: Stdin,                        // where the bytes to send come from
    waiting: bool,                       // stdin waits for on_drain (MAX_UNSENT reached)
    handle: Option<Handle<Input>>,       // for a thread reading an unregistrable stdin
    _restore_stdin: Option<NonBlocking>, // puts stdin back in blocking mode on exit
    failure: Option<String>,             // why the exit is not clean, if it is not
}

impl Client {
    /// Starts reading stdin: registered with the loop if epoll takes it,
    /// else through a thread.
    fn watch_stdin(&mut self, cx: &mut Context<'_>) {
        // The loop owns what it watches: it gets a duplicate of stdin.
        let fd = match io::stdin().as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => return self.fail(cx, format!("stdin: {e}")),
        };
        match cx.register_fd(fd, Interest::READABLE) {
            Ok(id) => match NonBlocking::set(STDIN) {
                // Bytes that were waiting before registration still raise an
                // event: epoll reports an fd that is ready when it is added.
                Ok(guard) => {
                    self.stdin = Stdin::Fd(id);
                    self._restore_stdin = Some(guard);
                }
                Err(e) => self.fail(cx, format!("stdin: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let (credit, credits) = mpsc::sync_channel(1);
                if let Some(handle) = self.handle.take() {
                    thread::spawn(move || read_stdin_thread(&handle, &credits));
                    self.stdin = Stdin::Thread(credit);
                }
            }
            Err(e) => self.fail(cx, format!("stdin: {e}")),
        }
    }

    /// Reads registered stdin until it would block (or the server has
    /// enough to take), sending what it reads.
    fn read_stdin(&mut self, cx: &mut Context<'_>) {
        let mut buf = [0; 16 * 1024];
        let mut stdin = io::stdin().lock();
        while matches!(self.stdin, Stdin::Fd(_)) && !self.waiting {
            match stdin.read(&mut buf) {
                Ok(0) => self.end_of_input(cx),
                Ok(n) => self.forward(cx, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(cx, format!("stdin: {e}")),
            }
        }
    }

    /// Sends bytes from stdin, and says whether stdin must now wait.
    fn forward(&mut self, cx: &mut Context<'_>, bytes: &[u8]) {
        let Some(server) = self.server else { return };
        let _ = cx.send(server, bytes); // fails only once the connection is going
        self.waiting = cx.queued(server).unwrap_or(0) >= MAX_UNSENT;
    }

    /// Lets the stdin thread send its next chunk.
    fn give_credit(&self) {
        if let Stdin::Thread(credit) = &self.stdin {
            let _ = credit.try_send(()); // full: it has one already
        }
    }

    /// Stdin ended: half-close, so the server reads end of file once what
    /// we sent is flushed, and keep printing its replies until it closes.
    fn end_of_input(&mut self, cx: &mut Context<'_>) {
        if let Stdin::Fd(id) = std::mem::replace(&mut self.stdin, Stdin::Closed) {
            let _ = cx.close(id); // only deregisters: the fd stays open
        }
        if let Some(server) = self.server {
            let _ = cx.shutdown(server);
        }
    }

    /// Ends the run with an error.
    fn fail(&mut self, cx: &mut Context<'_>, why: String) {
        self.failure.get_or_insert(why);
        cx.stop();
    }
}

impl Handler for Client {
    type Conn = ();
    type Msg = Input;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        if let Ok(peer) = cx.peer_addr(id) {
            log::info!("connected to {peer}");
        }
        self.server = Some(id);
        // Only now: sending and half-closing need an open connection.
        self.watch_stdin(cx);
    }

    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        _: ConnId,
        _: Self::Conn,
        err: io::Error,
    ) {
        self.fail(cx, format!("cannot connect: {err}"));
    }

    fn on_data(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut (), data: &[u8]) -> usize {
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout.write_all(data).and_then(|()| stdout.flush()) {
            self.fail(cx, format!("stdout: {e}"));
        }
        data.len()
    }

    fn on_drain(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut ()) {
        if !std::mem::take(&mut self.waiting) {
            return;
        }
        match &self.stdin {
            // Edge-triggered: stdin will not say again that it is ready.
            Stdin::Fd(_) => self.read_stdin(cx),
            Stdin::Thread(_) => self.give_credit(),
            Stdin::Closed => {}
        }
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        if Some(id) != self.server {
            return;
        }
        let why = match reason {
            CloseReason::PeerClosed | CloseReason::Closed => None,
            CloseReason::Shutdown => Some("interrupted".to_owned()), // Ctrl-C
            reason => Some(format!("connection lost: {reason:?}")),
        };
        if let Some(why) = why {
            self.failure.get_or_insert(why);
        }
        cx.stop();
    }

    fn on_fd_ready(&mut self, cx: &mut Context<'_>, _: ConnId, _: Ready) {
        self.read_stdin(cx); // readable, hung up or failed: a read tells which
    }

    fn on_message(&mut self, cx: &mut Context<'_>, input: Input) {
        match input {
            Input::Data(bytes) => {
                self.forward(cx, &bytes);
                if !self.waiting {
                    self.give_credit();
                }
            }
            Input::End => self.end_of_input(cx),
        }
    }
}

/// Reads stdin with blocking reads, for a stdin epoll cannot watch, and
/// passes the bytes to the loop, one chunk per credit the loop gives back.
/// Returns when stdin ends or the loop is gone.
fn read_stdin_thread(handle: &Handle<Input>, credits: &Receiver<()>) {
    let mut buf = vec![0; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let sent = handle.send(Input::Data(buf[..n].to_vec()));
                if sent.is_err() || credits.recv().is_err() {
                    return; // the loop is gone
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("stdin: {e}");
                break;
            }
        }
    }
    let _ = handle.send(Input::End);
}

/// Puts an fd in non-blocking mode, and back as it was when dropped.
///
/// Stdin's mode belongs to the open file it shares with the shell: leaving a
/// terminal non-blocking would break the next program that reads it.
struct NonBlocking {
    fd: i32,    // the file descriptor
    flags: i32, // its file status flags before
}

impl NonBlocking {
    fn set(fd: i32) -> io::Result<NonBlocking> {
        // SAFETY: F_GETFL and F_SETFL take and return plain integers; on a
        // bad fd they fail with EBADF and touch no memory.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Err(why) = run(&args.url) {
        eprintln!("client: {}: {why}", args.url);
        std::process::exit(1);
    }
}

/// Runs the client until the connection ends; the error says why it did not
/// end cleanly.
fn run(url: &str) -> Result<(), String> {
    let config = Config {
        high_water: usize::MAX, // never stop reading the server: see Client
        ..Config::default()
    };
    let mut event_loop =
        EventLoop::with_config(Client::default(), config).map_err(|e| e.to_string())?;
    event_loop.handler_mut().handle = Some(event_loop.handle());
    event_loop.connect(url).map_err(|e| e.to_string())?;
    // Ctrl-C stops the loop rather than the process, so stdin's mode is
    // restored on the way out.
    event_loop.stop_on_signals().map_err(|e| e.to_string())?;
    event_loop.run().map_err(|e| e.to_string())?;
    match event_loop.handler_mut().failure.take() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}
