//! End of file after a large upload: a client that sends several MB, then
//! half-closes while it reads the echo, gets every byte back in order and
//! then end of file from the server, whether it reads fast or slowly.
//!
//! The upload is larger than the default high-water mark (1 MiB), so the
//! server pauses reading while its write queue is full; the client's FIN
//! often arrives during such a pause. The server must still see it once
//! reading resumes, and close its side.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use netloop::socket2::{Domain, Socket, Type};
use netloop::Config;
use util::*;

const MB: usize = 1 << 20;

/// How long the client waits for the next byte (or end of file): everything
/// is in the kernel's buffers by then, so silence this long is a hang.
const QUIET: Duration = Duration::from_secs(4);

/// Uploads per test, with sizes from 3 to 20 MB.
const ROUNDS: usize = 30;

/// The period of the upload's byte pattern: not a multiple of any buffer
/// size, so a chunk out of place shows.
const PERIOD: usize = 1_000_003;

/// One period of the upload's bytes (pseudo-random).
fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..PERIOD)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Up to `len` bytes of the pattern from upload offset `at`, without
/// wrapping.
fn pattern_at(pattern: &[u8], at: usize, len: usize) -> &[u8] {
    let start = at % PERIOD;
    &pattern[start..PERIOD.min(start + len)]
}

/// The size of upload `round`: spread over 3–20 MB, and not a multiple of
/// the loop's 64 KiB read buffer.
fn upload_size(round: usize) -> usize {
    3 * MB + (round * 7_340_033) % (17 * MB)
}

/// A client whose receive buffer is 64 KiB (set before connecting, so the
/// window stays small).
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 * 1024).unwrap();
    s.connect_timeout(&addr.into(), STEP).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(QUIET)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s
}

/// Uploads `size` bytes, half-closes, and reads the echo to end of file
/// (sleeping a little after every 256 KiB when `slow`). An error says what
/// went wrong: a byte out of place, or no end of file within [`QUIET`].
fn upload_then_half_close(addr: SocketAddr, size: usize, slow: bool) -> Result<(), String> {
    let mut r = small_window_client(addr);
    let mut w = r.try_clone().unwrap();
    let pattern = std::sync::Arc::new(pattern());
    let source = pattern.clone();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0;
        while sent < size {
            let chunk = pattern_at(&source, sent, (size - sent).min(64 * 1024));
            w.write_all(chunk)?;
            sent += chunk.len();
        }
        w.shutdown(Shutdown::Write)
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut since_nap = 0usize;
    let outcome = loop {
        match r.read(&mut buf) {
            Ok(0) if got == size => break Ok(()),
            Ok(0) => break Err(format!("end of file after {got} of {size} bytes")),
            Ok(n) => {
                let mut checked = 0;
                while checked < n {
                    let want = pattern_at(&pattern, got + checked, n - checked);
                    if buf[checked..checked + want.len()] != *want {
                        break;
                    }
                    checked += want.len();
                }
                if checked < n || got + n > size {
                    break Err(format!(
                        "bytes {got}..{} (of {size}) not what was sent",
                        got + n
                    ));
                }
                got += n;
                since_nap += n;
                if slow && since_nap >= 256 * 1024 {
                    since_nap = 0;
                    thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Err(format!(
                    "{got} of {size} bytes echoed, then no end of file within {QUIET:?} \
                     (the server never closed its side)"
                ))
            }
            Err(e) => break Err(format!("{e} after {got} of {size} bytes")),
        }
    };
    // Unblocks the writer if the server stopped reading.
    let _ = r.shutdown(Shutdown::Both);
    let written = writer.join().expect("the writer thread panicked");
    outcome?;
    written.map_err(|e| format!("upload of {size} bytes: {e}"))
}

fn uploads(name: &'static str, slow: bool) {
    let _watchdog = watchdog(name, Duration::from_secs(150));
    let server = serve(|| Echo, Config::default(), &["tcp://127.0.0.1:0"]);
    let addr = server.inet();
    for round in 0..ROUNDS {
        let size = upload_size(round);
        let t = Instant::now();
        if let Err(e) = upload_then_half_close(addr, size, slow) {
            panic!("upload {round} ({size} bytes, slow reader: {slow}): {e}");
        }
        eprintln!("upload {round}: {size} bytes in {:?}", t.elapsed());
    }
    server.stop();
}

#[test]
fn large_upload_then_half_close_fast_reader_gets_all_bytes_and_eof() {
    uploads("large_upload_fast_reader", false);
}

#[test]
fn large_upload_then_half_close_slow_reader_gets_all_bytes_and_eof() {
    uploads("large_upload_slow_reader", true);
}

/// Records opens and closes; `on_message` keeps the loop busy for a while,
/// so that the peer's FIN and RST both arrive before it reads again.
struct FinThenReset(std::sync::mpsc::Sender<Option<netloop::CloseReason>>);

impl netloop::Handler for FinThenReset {
    type Conn = ();
    type Msg = Duration;
    fn on_open(&mut self, _: &mut netloop::Context<'_>, _: netloop::ConnId, _: &mut ()) {
        let _ = self.0.send(None);
    }
    fn on_close(
        &mut self,
        _: &mut netloop::Context<'_>,
        _: netloop::ConnId,
        _: (),
        reason: netloop::CloseReason,
    ) {
        let _ = self.0.send(Some(reason));
    }
    fn on_eof(&mut self, _: &mut netloop::Context<'_>, _: netloop::ConnId, _: &mut ()) {
        // Keep the connection open, half-closed.
    }
    fn on_message(&mut self, _: &mut netloop::Context<'_>, busy: Duration) {
        let _ = self.0.send(None);
        thread::sleep(busy);
    }
}

/// A peer half-closes and then resets (SO_LINGER 0) before the loop reads
/// either: the read meets the end of file with the reset still pending on
/// the socket, and no new edge comes for it. The connection must close
/// (the handler keeps it open after `on_eof`, so only the reset can close
/// it), not stay open, half-closed, until the idle timeout. Found by
/// tests/group_model.rs.
#[test]
fn fin_then_reset_before_the_loop_reads_closes_the_connection() {
    let _watchdog = watchdog("fin_then_reset", Duration::from_secs(60));
    let (tx, rx) = std::sync::mpsc::channel();
    let server = serve(
        move || FinThenReset(tx),
        Config::default(),
        &["tcp://127.0.0.1:0"],
    );
    for round in 0..5 {
        let peer = TcpStream::connect(server.inet()).unwrap();
        assert_eq!(rx.recv_timeout(STEP).unwrap(), None, "on_open");
        server.handle.send(Duration::from_millis(100)).unwrap();
        assert_eq!(rx.recv_timeout(STEP).unwrap(), None, "the loop is busy");
        peer.shutdown(Shutdown::Write).unwrap();
        netloop::socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        match rx.recv_timeout(Duration::from_secs(3)) {
            Ok(Some(_)) => {}
            other => panic!("round {round}: the connection did not close: {other:?}"),
        }
    }
}
