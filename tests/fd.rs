//! File descriptors registered with `Context::register_fd`: the loop takes
//! ownership, so `close` and the end of the loop close them (a user cannot
//! close the number early and have the loop act on whatever reused it).

mod util;

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use netloop::{Config, ConnId, Context, EventLoop, Handler, Interest, Ready};
use util::*;

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (OwnedFd, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]).into(),
        )
    }
}

/// Reads its registered pipe and reports what came; closes it on request
/// (replying whether `close` succeeded).
struct PipeReader {
    id: Option<ConnId>,
    got: mpsc::Sender<Vec<u8>>,
}

impl Handler for PipeReader {
    type Conn = ();
    type Msg = mpsc::Sender<bool>;

    fn on_fd_ready(&mut self, cx: &mut Context<'_>, id: ConnId, ready: Ready) {
        if !ready.readable {
            return;
        }
        let fd = cx.raw_fd(id).expect("the registered fd");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: the loop owns `fd` for as long as the id is live;
            // `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // end of file, or WouldBlock
            }
            got.extend_from_slice(&buf[..n as usize]);
        }
        if !got.is_empty() {
            let _ = self.got.send(got);
        }
    }

    fn on_message(&mut self, cx: &mut Context<'_>, reply: mpsc::Sender<bool>) {
        let id = self.id.expect("registered before run");
        let _ = reply.send(cx.close(id).is_ok());
    }
}

/// A loop with the pipe's read end registered (handed over), and the write
/// end, after one byte went through the loop.
fn pipe_loop() -> (Server<PipeReader>, File) {
    let (read_end, mut write_end) = pipe();
    let (tx, rx) = mpsc::channel();
    let server = serve_loop(
        move || {
            let mut el =
                EventLoop::with_config(PipeReader { id: None, got: tx }, Config::default())?;
            let id = el.context().register_fd(read_end, Interest::READABLE)?;
            el.handler_mut().id = Some(id);
            Ok(el)
        },
        &[],
    );
    write_end.write_all(b"ping").unwrap();
    assert_eq!(
        rx.recv_timeout(STEP).expect("on_fd_ready read the pipe"),
        b"ping"
    );
    (server, write_end)
}

/// The pipe's read end is closed: writing gives EPIPE.
fn read_end_closed(write_end: &mut File) {
    match write_end.write(b"x") {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        other => panic!("the read end is still open: a write gave {other:?}"),
    }
}

#[test]
fn close_closes_a_registered_fd() {
    let _w = watchdog("close_closes_a_registered_fd", Duration::from_secs(30));
    let (server, mut write_end) = pipe_loop();
    let (tx, rx) = mpsc::channel();
    assert!(server.handle.send(tx).is_ok(), "the loop is gone");
    assert!(rx.recv_timeout(STEP).expect("close ran"), "close failed");
    read_end_closed(&mut write_end);
    server.stop();
}

#[test]
fn stopping_the_loop_closes_registered_fds() {
    let _w = watchdog(
        "stopping_the_loop_closes_registered_fds",
        Duration::from_secs(30),
    );
    let (server, mut write_end) = pipe_loop();
    server.stop();
    read_end_closed(&mut write_end);
}
