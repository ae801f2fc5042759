//! The examples over TLS (the `tls` feature), end to end: the echo and http
//! examples run as child processes on ephemeral loopback ports, with a CA
//! and a certificate for "localhost" made here (rcgen) and written as PEM
//! files; rustls clients drive them. The same examples against the real
//! `openssl s_client` and `curl` are `#[ignore]`d tests, since a plain
//! `cargo test` must pass with the Rust toolchain alone:
//! `cargo test --features tls --test tls_examples -- --ignored` runs them.
//! Every wait is bounded, so a hang fails the test instead of stalling it.
#![cfg(feature = "tls")]

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use netloop::rustls::{self, pki_types::ServerName, ClientConnection};
use util::{example_binary, rss_kib, temp_dir, watchdog, STEP};

// ----- Certificates -----

/// PEM files in a fresh directory: a CA, a certificate for "localhost" (and
/// 127.0.0.1) signed by it, and that certificate's key. Removed when dropped.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("tls-examples");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "netloop test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// A rustls client configuration that trusts this CA.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(netloop::tls::client_config(&self.ca).expect("the CA loads"))
    }

    /// The same, offering ALPN http/1.1 (and h2 first, which the http
    /// example must not pick).
    fn https_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = netloop::tls::client_config(&self.ca).expect("the CA loads");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The arguments that serve `tls://127.0.0.1:0` with this certificate.
    fn serve_args(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            "tls://127.0.0.1:0".into(),
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----- The examples as child processes -----

/// The examples as child processes (tests/util).
type Example = util::ExampleChild;

impl Example {
    /// The TLS echo example with `pki`'s certificate.
    fn echo(pki: &Pki) -> Example {
        Example::spawn("echo", &pki.serve_args())
    }

    /// The http example over TLS with `pki`'s certificate, and `extra` args.
    fn https(pki: &Pki, extra: &[&str]) -> Example {
        let mut args = pki.serve_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        Example::spawn("http", &args)
    }
}

/// Runs example `name` with `args`, expecting it to exit within [`STEP`].
fn run_example(name: &str, args: &[&str]) -> Output {
    let mut child = Command::new(example_binary(name))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let deadline = Instant::now() + STEP;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} did not exit within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// A command (curl, openssl) with its output, killed past `limit`.
fn run_tool(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // Drain the pipes on threads, so a chatty tool cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || util::read_to_end(&mut out).unwrap_or_default());
    let err = std::thread::spawn(move || util::read_to_end(&mut err).unwrap_or_default());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// ----- Clients -----

type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// A blocking TLS client of `addr` for "localhost", with [`STEP`] timeouts;
/// the handshake is not done until the first read or write.
fn tls_client(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = util::client(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Completes the handshake of a fresh client.
fn handshake(c: &mut TlsStream) {
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).expect("the TLS handshake");
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

/// Reads HTTP responses off a stream, keeping what follows the last one.
struct Responses<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read> Responses<S> {
    fn new(stream: S) -> Self {
        Responses {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next response's status and body (by Content-Length).
    fn next(&mut self) -> (u16, Vec<u8>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = r.parse(&self.buf).expect("a valid response")
            {
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .expect("a Content-Length");
                if self.buf.len() >= head + len {
                    let status = r.code.unwrap();
                    let body = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).expect("read a response");
            assert!(n > 0, "end of file inside a response: {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One GET /plaintext over a fresh TLS connection: the server still serves.
fn plaintext_over_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) {
    let mut c = tls_client(addr, config);
    c.write_all(get("/plaintext").as_bytes()).unwrap();
    let mut r = Responses::new(c);
    assert_eq!(r.next(), (200, b"Hello, World!".to_vec()));
    assert_eq!(
        r.stream.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN http/1.1"
    );
}

/// Reads until the peer closes: the bytes read, and whether it ended with
/// a clean end of file (else a reset). Fails after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, false),
            Err(e) => panic!(
                "not closed after {:?} ({e}); read {got:?}",
                started.elapsed()
            ),
        }
        assert!(started.elapsed() < limit, "not closed within {limit:?}");
    }
}

// ----- Bulk through the echo example -----

/// Length of the repeating pattern streamed: a prime, so that it does not
/// line up with chunk or record sizes.
const PERIOD: usize = 1_000_003;
/// The largest chunk written or checked at once.
const MAX_CHUNK: usize = 100_000;

/// `PERIOD + MAX_CHUNK` bytes of xorshift noise, the tail repeating the
/// head: byte `i` of the stream is `pattern[i % PERIOD]`, and any chunk up
/// to `MAX_CHUNK` at offset `o` is `pattern[o % PERIOD..][..len]`.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut p: Vec<u8> = (0..PERIOD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    p.extend_from_within(..MAX_CHUNK);
    p
}

/// Chunk sizes of many kinds: tiny, around the 16 KiB record size, medium,
/// large (up to [`MAX_CHUNK`]), from a fixed seed.
struct Sizes(u64);

impl Iterator for Sizes {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = (self.0 >> 33) as usize;
        Some(match r % 4 {
            0 => 1 + r / 4 % 64,
            1 => 16_384 - 70 + r / 4 % 140,
            2 => 1 + r / 4 % 20_000,
            _ => 20_000 + r / 4 % (MAX_CHUNK - 20_000 + 1),
        })
    }
}

/// Waits until `fd` is readable, or writable too if `write`, for up to `ms`.
fn poll(fd: std::os::fd::RawFd, write: bool, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(
        rc >= 0 || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted,
        "poll: {}",
        io::Error::last_os_error()
    );
}

/// 64 MiB each way through the TLS echo example, written in chunks of
/// many odd sizes while reading (one thread, non-blocking socket, rustls
/// driven by hand: the echo pauses its reading once its queue is full, so
/// a client that only wrote would deadlock); every byte is checked in
/// order. Then close_notify: the server answers with its own, then EOF.
#[test]
fn echo_64_mib_each_way_in_odd_chunks() {
    const TOTAL: usize = 64 << 20;
    let _w = watchdog("echo_64_mib_each_way", Duration::from_secs(240));
    let pki = Pki::new();
    let mut echo = Example::echo(&pki);
    let pat = pattern();
    let started = Instant::now();

    let mut sock = TcpStream::connect_timeout(&echo.addr, STEP).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_nonblocking(true).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(pki.client_config(), name).unwrap();
    // What is buffered is bounded below: a chunk only once all is sent.
    conn.set_buffer_limit(None);

    let mut sizes = Sizes(7);
    let (mut sent, mut got, mut chunks) = (0usize, 0usize, 0usize);
    let mut close_sent = false; // our close_notify queued
    let mut close_heard = false; // the server's close_notify read
    let mut eof = false; // read_tls saw the end (or close_notify came)
    let mut buf = vec![0u8; 64 * 1024];
    let mut progress = Instant::now();
    loop {
        let before = (sent, got);
        // Plaintext in, one chunk at a time, only once rustls has sent all
        // it had: what this client buffers stays bounded.
        if !conn.is_handshaking() && !conn.wants_write() && sent < TOTAL {
            let n = sizes.next().unwrap().min(TOTAL - sent);
            let off = sent % PERIOD;
            conn.writer().write_all(&pat[off..off + n]).unwrap();
            sent += n;
            chunks += 1;
        }
        // Ciphertext out until the socket refuses.
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write at {sent} sent, {got} echoed: {e}"),
            }
        }
        // Ciphertext in until the socket refuses; the plaintext checked.
        while !eof {
            match conn.read_tls(&mut sock) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read at {sent} sent, {got} echoed: {e}"),
            }
            if let Err(e) = conn.process_new_packets() {
                panic!("TLS error at {sent} sent, {got} echoed: {e}");
            }
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => {
                        close_heard = true;
                        break;
                    }
                    Ok(n) => {
                        let off = got % PERIOD;
                        if buf[..n] != pat[off..off + n] {
                            let i = (0..n).find(|&i| buf[i] != pat[off + i]).unwrap();
                            panic!("the echo differs at byte {}", got + i);
                        }
                        got += n;
                        assert!(got <= sent, "echoed {got} of {sent} sent");
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read at {sent} sent, {got} echoed: {e}"),
                }
            }
            if close_heard {
                break;
            }
        }
        assert!(
            !(close_heard || eof) || close_sent,
            "the server closed early: {got} of {TOTAL} echoed (close_notify {close_heard}, EOF {eof})"
        );
        if got == TOTAL && !close_sent {
            conn.send_close_notify();
            close_sent = true;
            continue;
        }
        if close_sent && !conn.wants_write() && close_heard {
            break;
        }
        if (sent, got) != before {
            progress = Instant::now();
        }
        assert!(
            progress.elapsed() < STEP,
            "no progress for {STEP:?}: {sent} sent, {got} echoed, close_notify sent \
             {close_sent} heard {close_heard}, EOF {eof}"
        );
        if eof {
            // Readable for ever from now on: the checks above end it.
            std::thread::sleep(Duration::from_millis(1));
        } else {
            // Writable matters too while there is more to send: waiting only
            // for the echo would keep one chunk in flight at a time.
            poll(fd, conn.wants_write() || sent < TOTAL, 100);
        }
    }
    // After its close_notify the server closes the socket: a FIN, nothing more.
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    let mut tail = [0u8; 64];
    match sock.read(&mut tail) {
        Ok(0) => {}
        other => panic!("after close_notify, not an end of file: {other:?}"),
    }
    let took = started.elapsed();
    eprintln!(
        "echo_64_mib_each_way_in_odd_chunks: {TOTAL} bytes each way in {chunks} chunks, {took:?}"
    );
    assert_eq!(got, TOTAL);
    echo.assert_alive();
}

// ----- openssl s_client and curl -----

/// `openssl s_client` with the CA trusts the echo example and gets a line
/// back; with another CA it refuses (so the first run did verify).
#[test]
#[ignore = "needs openssl (apt-get install openssl)"]
fn openssl_s_client_against_the_echo_example() {
    let _w = watchdog("openssl_s_client", Duration::from_secs(120));
    let pki = Pki::new();
    let echo = Example::echo(&pki);
    let s_client = |ca: &Path| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect"])
            .arg(echo.addr.to_string())
            .args(["-servername", "localhost", "-verify_return_error", "-quiet"])
            .arg("-CAfile")
            .arg(ca);
        cmd
    };
    let mut child = s_client(&pki.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let line = b"hello through openssl s_client\n";
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(line).unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut echoed = String::new();
        let _ = BufReader::new(stdout).read_line(&mut echoed);
        let _ = tx.send(echoed);
    });
    let echoed = rx.recv_timeout(STEP);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let echoed = echoed.unwrap_or_else(|_| {
        panic!(
            "no echo from s_client within {STEP:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(echoed.as_bytes(), line);
    drop(stdin);

    let other = Pki::new();
    let out = run_tool(&mut s_client(&other.ca), STEP);
    assert!(
        !out.status.success(),
        "s_client trusted another CA: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// `curl` over HTTPS (ALPN http/1.1): GET /plaintext, POST /echo with
/// --http1.1 and a 300 kB body, and two URLs on one kept-alive connection.
#[test]
#[ignore = "needs curl (apt-get install curl)"]
fn curl_against_the_http_example_over_tls() {
    let _w = watchdog("curl_https", Duration::from_secs(120));
    let pki = Pki::new();
    let mut http = Example::https(&pki, &[]);
    let port = http.addr.port();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let curl = |args: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&pki.ca)
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .args(args);
        let out = run_tool(&mut cmd, STEP + Duration::from_secs(5));
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    assert_eq!(curl(&[&url("/plaintext")]), b"Hello, World!");

    let body: Vec<u8> = (0..300_000).map(|i| b'a' + (i % 26) as u8).collect();
    let body_file = pki.dir.join("body.txt");
    std::fs::write(&body_file, &body).unwrap();
    let data = format!("@{}", body_file.display());
    let echoed = curl(&["--http1.1", "--data-binary", &data, &url("/echo")]);
    assert!(echoed == body, "POST /echo: {} bytes back", echoed.len());

    // Two URLs, one connection: the second transfer makes no new connect.
    let out = curl(&[
        "-w",
        " %{num_connects} %{http_version}\n",
        &url("/plaintext"),
        &url("/plaintext"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "Hello, World! 1 1.1\nHello, World! 0 1.1\n"
    );
    http.assert_alive();
}

// ----- The http example over TLS, hostile clients -----

/// Bytes that are no ClientHello: the server sends an alert (or nothing)
/// and closes, and serves the next client.
#[test]
fn https_garbage_instead_of_a_client_hello_is_closed() {
    let _w = watchdog("https_garbage", Duration::from_secs(120));
    let pki = Pki::new();
    let mut http = Example::https(&pki, &[]);
    let mut tcp = util::client(http.addr);
    tcp.write_all(get("/plaintext").as_bytes()).unwrap();
    let (reply, _clean) = read_until_closed(&mut tcp, STEP);
    assert!(
        reply.is_empty() || reply[0] == 21,
        "an alert record or nothing: {reply:?}"
    );
    http.assert_alive();
    plaintext_over_tls(http.addr, pki.https_config());
}

/// A client that connects and sends nothing is closed by
/// --tls-handshake-timeout.
#[test]
fn https_silent_client_is_closed_by_the_handshake_timeout() {
    let _w = watchdog("https_silent", Duration::from_secs(120));
    let pki = Pki::new();
    let mut http = Example::https(&pki, &["--tls-handshake-timeout", "0.5"]);
    let started = Instant::now();
    let mut tcp = util::client(http.addr);
    let (reply, _clean) = read_until_closed(&mut tcp, STEP);
    let took = started.elapsed();
    assert!(
        reply.is_empty(),
        "nothing sent to a silent client: {reply:?}"
    );
    assert!(took >= Duration::from_millis(450), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    http.assert_alive();
    plaintext_over_tls(http.addr, pki.https_config());
}

/// A client that trusts another CA refuses the server's certificate (an
/// alert); the server closes its side cleanly (FIN, no reset) and serves
/// the next client.
#[test]
fn https_client_rejecting_the_certificate_then_the_next_is_served() {
    let _w = watchdog("https_rejected", Duration::from_secs(120));
    let pki = Pki::new();
    let other = Pki::new();
    let mut http = Example::https(&pki, &[]);
    let mut c = tls_client(http.addr, other.client_config());
    let mut err = None;
    while c.conn.is_handshaking() {
        if let Err(e) = c.conn.complete_io(&mut c.sock) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the handshake with an unknown CA must fail");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // (rustls sent its alert as it failed.)
    let (rest, clean) = read_until_closed(&mut c.sock, STEP);
    assert!(clean, "the server reset the connection; it read {rest:?}");
    http.assert_alive();
    plaintext_over_tls(http.addr, pki.https_config());
}

/// Writes over `c` without ever reading, until a write makes no progress
/// for a second (the server stopped reading) or `cap` bytes of plaintext
/// went; returns the bytes written and whether it stalled.
fn write_without_reading(c: &mut TlsStream, chunk: &[u8], cap: usize) -> (usize, bool) {
    c.sock
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut written = 0;
    while written < cap {
        c.conn.writer().write_all(chunk).unwrap();
        written += chunk.len();
        while c.conn.wants_write() {
            match c.conn.write_tls(&mut c.sock) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return (written, true)
                }
                Err(e) => panic!("write after {written} bytes: {e}"),
            }
        }
    }
    (written, false)
}

/// A peer that sends and never reads: the server stops reading it once
/// its queue is full; its memory stays bounded, and it serves others.
fn never_reading_peer(server: &mut Example, pki: &Pki, chunk: &[u8], check: impl Fn(SocketAddr)) {
    let pid = server.pid();
    check(server.addr); // warm: TLS set up, buffers made
    let before = rss_kib(Some(pid));
    let mut c = tls_client(server.addr, pki.client_config());
    handshake(&mut c);
    let (written, stalled) = write_without_reading(&mut c, chunk, 256 << 20);
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(Some(pid));
    eprintln!(
        "never-reading peer: {written} bytes written before the stall; server RSS {before} KiB -> {after} KiB"
    );
    assert!(
        stalled,
        "the server read {written} bytes from a peer that never reads"
    );
    assert!(
        after < before + 64 * 1024,
        "the server's RSS grew from {before} KiB to {after} KiB"
    );
    server.assert_alive();
    check(server.addr);
    drop(c);
}

/// Pipelined GET /plaintext over TLS from a peer that never reads.
#[test]
fn https_never_reading_peer_is_bounded_and_others_are_served() {
    let _w = watchdog("https_never_reading", Duration::from_secs(120));
    let pki = Pki::new();
    let mut http = Example::https(&pki, &[]);
    let requests = get("/plaintext").repeat(1000);
    let config = pki.https_config();
    never_reading_peer(&mut http, &pki, requests.as_bytes(), |addr| {
        plaintext_over_tls(addr, config.clone())
    });
}

/// Bytes to the TLS echo from a peer that never reads.
#[test]
fn echo_never_reading_peer_is_bounded_and_others_are_served() {
    let _w = watchdog("echo_never_reading", Duration::from_secs(120));
    let pki = Pki::new();
    let mut echo = Example::echo(&pki);
    let config = pki.client_config();
    never_reading_peer(&mut echo, &pki, &[b'x'; 64 * 1024], |addr| {
        let mut c = tls_client(addr, config.clone());
        c.write_all(b"still here").unwrap();
        let mut got = [0u8; 10];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still here");
    });
}

/// 1,000 requests in one socket write over TLS: 1,000 responses, in order.
#[test]
fn https_thousand_pipelined_requests_in_one_write() {
    let _w = watchdog("https_pipelined", Duration::from_secs(120));
    let pki = Pki::new();
    let mut http = Example::https(&pki, &[]);
    let mut c = tls_client(http.addr, pki.https_config());
    handshake(&mut c);
    // All 1,000 encrypted first, then written with one write_all.
    c.conn.set_buffer_limit(None);
    let mut requests = String::new();
    for i in 0..1000 {
        if i % 2 == 0 {
            requests += &get("/plaintext");
        } else {
            let body = format!("request {i}");
            requests += &format!(
                "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }
    c.conn.writer().write_all(requests.as_bytes()).unwrap();
    let mut cipher = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut cipher).unwrap();
    }
    c.sock.write_all(&cipher).unwrap();
    let mut r = Responses::new(c);
    for i in 0..1000 {
        let (status, body) = r.next();
        assert_eq!(status, 200, "response {i}");
        if i % 2 == 0 {
            assert_eq!(body, b"Hello, World!", "response {i}");
        } else {
            assert_eq!(body, format!("request {i}").as_bytes(), "response {i}");
        }
    }
    assert!(r.buf.is_empty(), "bytes after the last response");
    http.assert_alive();
}

// ----- The command line -----

/// Expects `http args` to fail at once, naming every one of `culprits`.
fn expect_http_failure(args: &[&str], culprits: &[&str]) {
    expect_failure("http", args, culprits);
}

fn expect_failure(example: &str, args: &[&str], culprits: &[&str]) {
    let out = run_example(example, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{example} {args:?} succeeded: {out:?}"
    );
    assert!(
        !err.contains("panicked"),
        "{example} {args:?} panicked: {err}"
    );
    for culprit in culprits {
        assert!(
            err.contains(culprit),
            "{example} {args:?}: stderr does not name {culprit:?}: {err}"
        );
    }
}

/// The echo example's TLS flags: a tls:// URL without them, one without the
/// other, a file that is not there; each names the culprit.
#[test]
fn echo_tls_command_line_errors_are_clear() {
    let _w = watchdog("echo_tls_command_line", Duration::from_secs(120));
    let pki = Pki::new();
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let url = "tls://127.0.0.1:0";
    expect_failure(
        "echo",
        &["--listen", url],
        &[url, "--tls-cert", "--tls-key"],
    );
    expect_failure(
        "echo",
        &["--listen", url, "--tls-cert", &cert],
        &["--tls-key"],
    );
    expect_failure(
        "echo",
        &["--listen", url, "--tls-key", &key],
        &["--tls-cert"],
    );
    let missing = pki.dir.join("missing.pem").display().to_string();
    expect_failure(
        "echo",
        &["--listen", url, "--tls-cert", &missing, "--tls-key", &key],
        &[&missing],
    );
}

#[test]
fn https_command_line_errors_are_clear() {
    let _w = watchdog("https_command_line", Duration::from_secs(120));
    let pki = Pki::new();
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let url = "tls://127.0.0.1:0";
    expect_http_failure(&["--listen", url], &[url, "--tls-cert", "--tls-key"]);
    expect_http_failure(
        &["--listen", "tcp://127.0.0.1:0", "--listen", url],
        &[url, "--tls-cert", "--tls-key"],
    );
    expect_http_failure(&["--listen", url, "--tls-cert", &cert], &["--tls-key"]);
    expect_http_failure(&["--listen", url, "--tls-key", &key], &["--tls-cert"]);
    let missing = pki.dir.join("missing.pem").display().to_string();
    expect_http_failure(
        &["--listen", url, "--tls-cert", &missing, "--tls-key", &key],
        &[&missing],
    );
    // The key of another certificate.
    let other = Pki::new();
    let other_key = other.key.display().to_string();
    expect_http_failure(
        &[
            "--listen",
            url,
            "--tls-cert",
            &cert,
            "--tls-key",
            &other_key,
        ],
        &[&other_key],
    );
    expect_http_failure(&["--tls-handshake-timeout", "-1"], &["-1"]);
    let help = run_example("http", &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--tls-cert"), "{help}");
    assert!(
        help.contains("curl --cacert cert.pem https://localhost:8443/plaintext"),
        "{help}"
    );
}
