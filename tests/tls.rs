//! TLS over TCP (the `tls` feature): a blocking rustls client against a TLS
//! echo loop; certificates made here with rcgen.
#![cfg(feature = "tls")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netloop::rustls::{self, pki_types};
use netloop::{CloseReason, Config, ConnId, Context, EventLoop, Handler, ListenOptions};

/// A CA and a server certificate for "localhost" signed by it.
struct Pki {
    ca: pki_types::CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        server: Arc::new(server),
    }
}

fn client_config(ca: &pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// What the server saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Open,
    Data(usize),
    Eof,
    Close(CloseReason),
}

/// Echoes; half-closes on end of file (close_notify), so the client sees
/// close_notify after the echo.
struct Echo {
    events: Arc<Mutex<Vec<Ev>>>,
}

impl Handler for Echo {
    type Conn = bool; // opened
    type Msg = ();
    fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, open: &mut bool) {
        *open = true;
        self.events.lock().unwrap().push(Ev::Open);
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, open: &mut bool, data: &[u8]) -> usize {
        assert!(*open, "on_data before on_open");
        self.events.lock().unwrap().push(Ev::Data(data.len()));
        cx.send(id, data).unwrap();
        data.len()
    }
    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut bool) {
        self.events.lock().unwrap().push(Ev::Eof);
        let _ = cx.close(id);
    }
    fn on_close(&mut self, _: &mut Context<'_>, _: ConnId, _: bool, why: CloseReason) {
        self.events.lock().unwrap().push(Ev::Close(why));
    }
}

struct Server {
    port: u16,
    events: Arc<Mutex<Vec<Ev>>>,
    handle: netloop::Handle<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Server {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let ev = events.clone();
        let thread = thread::spawn(move || {
            let cfg = Config {
                tls_handshake_timeout: handshake_timeout,
                ..Config::default()
            };
            let mut el = EventLoop::with_config(Echo { events: ev }, cfg).unwrap();
            let opts = ListenOptions {
                tls: Some(config),
                ..ListenOptions::default()
            };
            let l = el.listen_with("tls://127.0.0.1:0", &opts).unwrap();
            let addr = el.context().local_addr(l).unwrap();
            tx.send((addr.as_inet().unwrap().port(), el.handle()))
                .unwrap();
            el.run().unwrap();
        });
        let (port, handle) = rx.recv().unwrap();
        Server {
            port,
            events,
            handle,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, want: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.events.lock().unwrap().clone();
            if want(&evs) {
                return evs;
            }
            assert!(Instant::now() < deadline, "timed out; events: {evs:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect(
    port: u16,
    ca: &pki_types::CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn closed_with(evs: &[Ev]) -> Option<CloseReason> {
    evs.iter().find_map(|e| match e {
        Ev::Close(r) => Some(*r),
        _ => None,
    })
}

#[test]
fn round_trip_then_close_notify() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let mut c = connect(server.port, &pki.ca);
    c.write_all(b"hello, tls").unwrap();
    let mut got = [0u8; 10];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello, tls");
    // close_notify from the client: the server hears end of file, closes
    // gracefully (sending its own close_notify), and the client reads a clean end.
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap(); // an error if no close_notify came
    assert!(rest.is_empty());
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(evs.first(), Some(&Ev::Open), "on_open first: {evs:?}");
    assert!(evs.contains(&Ev::Eof), "{evs:?}");
    assert_eq!(closed_with(&evs), Some(CloseReason::Closed));
}

#[test]
fn bulk_each_way_exact() {
    const TOTAL: usize = 8 << 20;
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let c = connect(server.port, &pki.ca);
    let c = Arc::new(Mutex::new(c));
    // One thread: rustls's StreamOwned is not split; interleave writes and reads.
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut got = Vec::with_capacity(TOTAL);
    let mut c = c.lock().unwrap();
    c.sock.set_nonblocking(false).unwrap();
    let mut sent = 0;
    let mut step = 1;
    let mut buf = vec![0u8; 100_003];
    while got.len() < TOTAL {
        if sent < TOTAL {
            // Odd chunk sizes, growing.
            let n = (step * 4099 % 70_001 + 1).min(TOTAL - sent);
            step += 1;
            c.write_all(&data[sent..sent + n]).unwrap();
            sent += n;
            if sent == TOTAL {
                c.conn.send_close_notify();
                c.flush().unwrap();
            }
        }
        // Read what is there (at least something once enough is in flight).
        if sent == TOTAL || sent - got.len() > 256 * 1024 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0 || got.len() == TOTAL, "early end at {}", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == data, "the echo differs");
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(closed_with(&evs), Some(CloseReason::Closed));
}

#[test]
fn garbage_instead_of_client_hello_closes_with_tls() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply); // an alert, then end of file
    assert!(
        reply.is_empty() || reply[0] == 21,
        "an alert record: {reply:?}"
    );
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(evs, vec![Ev::Close(CloseReason::Tls)], "no on_open");
}

#[test]
fn stalled_handshake_times_out() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_millis(200));
    let t = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // Half a record header, then nothing.
    tcp.write_all(&[22, 3, 1]).unwrap();
    let evs = server.wait_for(|e| closed_with(e).is_some());
    let took = t.elapsed();
    assert_eq!(evs, vec![Ev::Close(CloseReason::Tls)]);
    assert!(took >= Duration::from_millis(190), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    let mut b = [0u8; 16];
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(tcp.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn client_rejecting_the_certificate_closes_both_sides() {
    let pki = pki();
    let other = pki_other_ca();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let mut c = connect(server.port, &other);
    let err = c.write_all(b"x").and_then(|_| c.flush());
    let err = match err {
        Err(e) => e,
        Ok(()) => {
            let mut b = [0u8; 1];
            c.read(&mut b).unwrap_err()
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    drop(c);
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(evs, vec![Ev::Close(CloseReason::Tls)], "no on_open");
}

fn pki_other_ca() -> pki_types::CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().der().clone()
}

#[test]
fn on_open_only_after_the_handshake() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(
        server.events.lock().unwrap().is_empty(),
        "on_open before the handshake"
    );
    drop(tcp);
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(evs, vec![Ev::Close(CloseReason::Tls)]);
    let mut c = connect(server.port, &pki.ca);
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    let evs = server.wait_for(|e| e.len() >= 3);
    assert_eq!(evs[1], Ev::Open);
}

/// The loop as a TLS client (`connect_tls`) of a TLS echo loop.
#[test]
fn connect_tls_round_trip() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    struct Client {
        got: Vec<u8>,
        opened: bool,
        reason: Option<CloseReason>,
    }
    impl Handler for Client {
        type Conn = ();
        type Msg = ();
        fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            self.opened = true;
            cx.send(id, b"over tls").unwrap();
        }
        fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), d: &[u8]) -> usize {
            self.got.extend_from_slice(d);
            if self.got.len() >= 8 {
                let _ = cx.close(id);
            }
            d.len()
        }
        fn on_close(&mut self, cx: &mut Context<'_>, _: ConnId, _: (), why: CloseReason) {
            self.reason = Some(why);
            cx.stop();
        }
    }
    let mut el = EventLoop::new(Client {
        got: Vec::new(),
        opened: false,
        reason: None,
    })
    .unwrap();
    let url = format!("tls://127.0.0.1:{}", server.port);
    el.context()
        .connect_tls(url.as_str(), client_config(&pki.ca), "localhost")
        .unwrap();
    assert!(
        el.context().connect(url.as_str()).is_err(),
        "tls:// needs connect_tls"
    );
    el.run().unwrap();
    let h = el.handler();
    assert!(h.opened);
    assert_eq!(h.got, b"over tls");
    assert_eq!(h.reason, Some(CloseReason::Closed));
}

#[test]
fn tls_url_without_server_config_is_invalid_input() {
    struct Nop;
    impl Handler for Nop {
        type Conn = ();
        type Msg = ();
    }
    let mut el = EventLoop::new(Nop).unwrap();
    let err = el.listen("tls://127.0.0.1:0").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("tls://127.0.0.1:0"), "{err}");
}

/// A TLS connection reports its transport as TLS, and cannot be detached
/// (the TLS session cannot go with the bare socket).
#[test]
fn tls_connection_says_tls_and_is_not_detached() {
    struct Probe {
        seen: Option<(netloop::Transport, bool, netloop::Transport)>,
        listener: Option<ConnId>,
    }
    impl Handler for Probe {
        type Conn = ();
        type Msg = ();
        fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            let transport = cx.transport(id).unwrap();
            let refused = matches!(cx.detach(id), Err(netloop::Error::WrongKind));
            let listener = cx.transport(self.listener.unwrap()).unwrap();
            self.seen = Some((transport, refused, listener));
            let _ = cx.close(id);
        }
    }
    let pki = pki();
    let mut el = EventLoop::new(Probe {
        seen: None,
        listener: None,
    })
    .unwrap();
    let opts = ListenOptions {
        tls: Some(pki.server.clone()),
        ..ListenOptions::default()
    };
    let l = el.listen_with("tls://127.0.0.1:0", &opts).unwrap();
    el.handler_mut().listener = Some(l);
    let port = el
        .context()
        .local_addr(l)
        .unwrap()
        .as_inet()
        .unwrap()
        .port();
    let ca = pki.ca.clone();
    let client = thread::spawn(move || {
        let mut c = connect(port, &ca);
        let _ = c.write_all(b"hi");
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while el.handler().seen.is_none() {
        assert!(Instant::now() < deadline, "no on_open");
        el.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    let (transport, refused, listener) = el.handler().seen.unwrap();
    assert_eq!(transport, netloop::Transport::Tls);
    assert!(refused, "detach of a TLS connection must be refused");
    assert_eq!(listener, netloop::Transport::Tls);
    for _ in 0..20 {
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    drop(el);
    client.join().unwrap();
}

/// ALPN and the peer's certificates, from the Context once on_open comes;
/// a plain connection is the wrong kind.
#[test]
fn alpn_and_peer_certificates_from_the_context() {
    let pki = pki();
    let mut server = (*pki.server).clone();
    server.alpn_protocols = vec![b"echo/1".to_vec()];
    let server = Server::start(Arc::new(server), Duration::from_secs(10));
    #[derive(Default)]
    struct Client {
        ca: Vec<u8>,
        alpn: Option<Vec<u8>>,
        chain: usize,
        leaf_is_the_ca: bool,
    }
    impl Handler for Client {
        type Conn = ();
        type Msg = ();
        fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            self.alpn = cx.alpn_protocol(id).unwrap().map(<[u8]>::to_vec);
            let chain = cx.peer_certificates(id).unwrap().unwrap_or_default();
            self.chain = chain.len();
            self.leaf_is_the_ca = chain.first().is_some_and(|c| c.as_ref() == self.ca);
            let _ = cx.close(id);
        }
        fn on_close(&mut self, cx: &mut Context<'_>, _: ConnId, _: (), _: CloseReason) {
            cx.stop();
        }
    }
    let mut el = EventLoop::new(Client {
        ca: pki.ca.as_ref().to_vec(),
        ..Client::default()
    })
    .unwrap();
    let mut client = (*client_config(&pki.ca)).clone();
    client.alpn_protocols = vec![b"other".to_vec(), b"echo/1".to_vec()];
    let url = format!("tls://127.0.0.1:{}", server.port);
    let id = el
        .context()
        .connect_tls(url.as_str(), Arc::new(client), "localhost")
        .unwrap();
    assert_eq!(
        el.context().alpn_protocol(id).unwrap(),
        None,
        "no ALPN before the handshake"
    );
    let plain = el
        .context()
        .connect(format!("tcp://127.0.0.1:{}", server.port).as_str())
        .unwrap();
    assert!(matches!(
        el.context().alpn_protocol(plain),
        Err(netloop::Error::WrongKind)
    ));
    assert!(matches!(
        el.context().peer_certificates(plain),
        Err(netloop::Error::WrongKind)
    ));
    el.context().abort(plain).unwrap();
    el.run().unwrap();
    let h = el.handler();
    assert_eq!(h.alpn.as_deref(), Some(&b"echo/1"[..]));
    assert_eq!(h.chain, 1, "the server presents its own certificate");
    assert!(!h.leaf_is_the_ca, "the leaf is the server's, not the CA");
}

/// A graceful stop sends close_notify: the client reads a clean end (a
/// bare TCP end of file would be rustls's UnexpectedEof).
#[test]
fn stop_sends_close_notify() {
    let pki = pki();
    let server = Server::start(pki.server.clone(), Duration::from_secs(10));
    let mut c = connect(server.port, &pki.ca);
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    server.handle.stop();
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(
        matches!(end, Ok(0)),
        "a clean end after close_notify, not {end:?}"
    );
    let evs = server.wait_for(|e| closed_with(e).is_some());
    assert_eq!(closed_with(&evs), Some(CloseReason::Shutdown));
}

// ----- Sending during the handshake; the order of notices around it -----

/// What a handler heard, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Heard {
    Open,
    Pressure(bool),
    Drain,
    Eof,
    Close(CloseReason),
    ConnectFailed(std::io::ErrorKind),
}

/// Records what it hears and echoes. A client (`client`) stops the loop
/// once its connection closes; with `send_on_open` it sends that many
/// bytes in `on_open` and closes at once.
struct Recorder {
    heard: Vec<Heard>,
    client: bool,
    send_on_open: usize,
}

impl Recorder {
    fn new(client: bool) -> Recorder {
        Recorder {
            heard: Vec::new(),
            client,
            send_on_open: 0,
        }
    }

    /// It heard `on_close` or `on_connect_failed`.
    fn closed(&self) -> bool {
        self.heard
            .iter()
            .any(|h| matches!(h, Heard::Close(_) | Heard::ConnectFailed(_)))
    }
}

impl Handler for Recorder {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.heard.push(Heard::Open);
        if self.send_on_open > 0 {
            cx.send(id, &vec![0x5a; self.send_on_open]).unwrap();
            cx.close(id).unwrap();
        }
    }
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), d: &[u8]) -> usize {
        let _ = cx.send(id, d);
        d.len()
    }
    fn on_backpressure(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut (), paused: bool) {
        self.heard.push(Heard::Pressure(paused));
    }
    fn on_drain(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut ()) {
        self.heard.push(Heard::Drain);
    }
    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.heard.push(Heard::Eof);
        let _ = cx.close(id);
    }
    fn on_close(&mut self, cx: &mut Context<'_>, _: ConnId, _: (), why: CloseReason) {
        self.heard.push(Heard::Close(why));
        if self.client {
            cx.stop();
        }
    }
    fn on_connect_failed(&mut self, cx: &mut Context<'_>, _: ConnId, _: (), e: std::io::Error) {
        self.heard.push(Heard::ConnectFailed(e.kind()));
        if self.client {
            cx.stop();
        }
    }
}

/// A TLS loop that reads and discards, on a thread; stopped when dropped.
struct Sink {
    port: u16,
    received: Arc<Mutex<usize>>,
    closed: Arc<Mutex<Vec<CloseReason>>>,
    handle: netloop::Handle<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    fn start(config: Arc<rustls::ServerConfig>) -> Sink {
        struct Discard(Arc<Mutex<usize>>, Arc<Mutex<Vec<CloseReason>>>);
        impl Handler for Discard {
            type Conn = ();
            type Msg = ();
            fn on_data(&mut self, _: &mut Context<'_>, _: ConnId, _: &mut (), d: &[u8]) -> usize {
                *self.0.lock().unwrap() += d.len();
                d.len()
            }
            fn on_close(&mut self, _: &mut Context<'_>, _: ConnId, _: (), why: CloseReason) {
                self.1.lock().unwrap().push(why);
            }
        }
        let received = Arc::new(Mutex::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let mut el = EventLoop::new(Discard(received.clone(), closed.clone())).unwrap();
        let opts = ListenOptions {
            tls: Some(config),
            ..ListenOptions::default()
        };
        let l = el.listen_with("tls://127.0.0.1:0", &opts).unwrap();
        let port = el
            .context()
            .local_addr(l)
            .unwrap()
            .as_inet()
            .unwrap()
            .port();
        let handle = el.handle();
        let thread = Some(thread::spawn(move || el.run().unwrap()));
        Sink {
            port,
            received,
            closed,
            handle,
            thread,
        }
    }

    fn received(&self) -> usize {
        *self.received.lock().unwrap()
    }

    /// Waits (10 s at most) until it has received `n` bytes.
    fn wait_received(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received() < n {
            assert!(
                Instant::now() < deadline,
                "the sink got {} of {n} bytes; its connections closed: {:?}",
                self.received(),
                self.closed.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `el` until `done` holds (15 s at most).
fn run_until(el: &mut EventLoop<Recorder>, mut done: impl FnMut(&Recorder) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(el.handler()) {
        assert!(
            Instant::now() < deadline,
            "timed out; heard {:?}",
            el.handler().heard
        );
        el.run_once(Some(Duration::from_millis(20))).unwrap();
    }
}

/// A client loop with `cfg` calls `connect_tls` to `sink` and at once,
/// before the connect or the handshake completes, sends `payload` bytes;
/// runs until the sink has it all and closes then (a close any earlier may
/// be cut short: see `connect_tls_send_and_close_in_on_open_delivers_it`).
/// The send's result and what the client heard, up to its `on_close`.
fn send_during_handshake(
    pki: &Pki,
    sink: &Sink,
    cfg: Config,
    payload: usize,
) -> (Result<(), netloop::Error>, Vec<Heard>) {
    let mut el = EventLoop::with_config(Recorder::new(true), cfg).unwrap();
    let url = format!("tls://127.0.0.1:{}", sink.port);
    let id = el
        .context()
        .connect_tls(url.as_str(), client_config(&pki.ca), "localhost")
        .unwrap();
    let sent = el.context().send(id, &vec![0x5a; payload]);
    run_until(&mut el, |h| {
        h.closed() || (h.heard.contains(&Heard::Open) && sink.received() >= payload)
    });
    if !el.handler().closed() {
        el.context().close(id).unwrap();
        run_until(&mut el, Recorder::closed);
    }
    (sent, el.handler().heard.clone())
}

/// A TLS client (`connect_tls`) that sends 16 times the high-water mark
/// right after connecting, before the handshake: the handler hears
/// `on_open` first, and only then `on_backpressure(true)` (as for plain
/// TCP, where on_backpressure before on_open was a bug), then `(false)`.
#[test]
fn connect_tls_backpressure_only_after_on_open() {
    const PAYLOAD: usize = 1 << 20;
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let cfg = Config {
        high_water: 64 * 1024,
        low_water: 16 * 1024,
        ..Config::default()
    };
    let (sent, heard) = send_during_handshake(&pki, &sink, cfg, PAYLOAD);
    sent.unwrap();
    sink.wait_received(PAYLOAD);
    let open = heard.iter().position(|h| *h == Heard::Open);
    let open = open.unwrap_or_else(|| panic!("no on_open: {heard:?}"));
    assert!(
        !heard[..open]
            .iter()
            .any(|h| matches!(h, Heard::Pressure(_))),
        "on_backpressure before on_open: {heard:?}"
    );
    let paused = heard.iter().position(|h| *h == Heard::Pressure(true));
    let paused = paused.unwrap_or_else(|| {
        panic!(
            "the queue passed the high-water mark but on_backpressure(true) never came: {heard:?}"
        )
    });
    assert!(
        heard[paused..].contains(&Heard::Pressure(false)),
        "paused, never resumed: {heard:?}"
    );
    assert_eq!(
        heard.last(),
        Some(&Heard::Close(CloseReason::Closed)),
        "{heard:?}"
    );
}

/// The same past the hard cap (`max_write_queue`): as for plain TCP, the
/// send fails with `QueueFull`, or the connection closes with
/// `WriteQueueFull` once the handshake completes; never does it all go.
#[test]
fn connect_tls_hard_cap_applies_to_what_is_sent_during_the_handshake() {
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let cfg = Config {
        high_water: 64 * 1024,
        low_water: 16 * 1024,
        max_write_queue: 256 * 1024,
        ..Config::default()
    };
    let (sent, heard) = send_during_handshake(&pki, &sink, cfg, 1 << 20);
    assert!(
        matches!(sent, Err(netloop::Error::QueueFull))
            || heard.contains(&Heard::Close(CloseReason::WriteQueueFull)),
        "1 MiB queued past a 256 KiB max_write_queue: send {sent:?}, heard {heard:?}, \
         the sink got {}",
        sink.received()
    );
}

/// A TLS client hears nothing before `on_open`: the ClientHello flushed
/// during the handshake is no `on_drain` of the handler's.
#[test]
fn connect_tls_nothing_before_on_open() {
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let (sent, heard) = send_during_handshake(&pki, &sink, Config::default(), 10);
    sent.unwrap();
    assert_eq!(
        heard.first(),
        Some(&Heard::Open),
        "on_open first: {heard:?}"
    );
}

/// A TLS server hears nothing of a connection before `on_open`: its
/// handshake records flushed are no `on_drain` of the handler's.
#[test]
fn tls_server_nothing_before_on_open() {
    let pki = pki();
    let mut el = EventLoop::new(Recorder::new(false)).unwrap();
    let opts = ListenOptions {
        tls: Some(pki.server.clone()),
        ..ListenOptions::default()
    };
    let l = el.listen_with("tls://127.0.0.1:0", &opts).unwrap();
    let port = el
        .context()
        .local_addr(l)
        .unwrap()
        .as_inet()
        .unwrap()
        .port();
    let ca = pki.ca.clone();
    let client = thread::spawn(move || {
        let mut c = connect(port, &ca);
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        c.conn.send_close_notify();
        c.flush().unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    });
    run_until(&mut el, Recorder::closed);
    let heard = el.handler().heard.clone();
    drop(el);
    client.join().unwrap();
    assert_eq!(
        heard.first(),
        Some(&Heard::Open),
        "on_open first: {heard:?}"
    );
    assert_eq!(
        heard.last(),
        Some(&Heard::Close(CloseReason::Closed)),
        "{heard:?}"
    );
}

/// `connect_tls`, then once the TCP connect is done but the handshake is
/// not (the server accepts and says nothing), `send` and `close`: the bytes
/// cannot go, and the handler must not hear a clean `on_close(Closed)` for
/// them; it hears the connection abandoned (`on_connect_failed`, as for a
/// close while connecting) or a TLS close.
#[test]
fn connect_tls_close_during_the_handshake_is_no_clean_close() {
    let pki = pki();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut el = EventLoop::new(Recorder::new(true)).unwrap();
    let url = format!("tls://127.0.0.1:{port}");
    let id = el
        .context()
        .connect_tls(url.as_str(), client_config(&pki.ca), "localhost")
        .unwrap();
    // Accepted (and the connect seen by the loop), never answered.
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _peer = loop {
        el.run_once(Some(Duration::from_millis(10))).unwrap();
        match silent.accept() {
            Ok((peer, _)) => break peer,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(Instant::now() < deadline, "no connect");
    };
    for _ in 0..10 {
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let sent = el.context().send(id, b"never sent");
    el.context().close(id).unwrap();
    run_until(&mut el, Recorder::closed);
    let heard = el.handler().heard.clone();
    sent.unwrap();
    assert!(
        !heard.contains(&Heard::Close(CloseReason::Closed)),
        "a clean close, though what was sent never went: {heard:?}"
    );
}

/// A TLS client that sends in `on_open` and closes at once: the server
/// gets it all, and its connection ends cleanly, not with a reset (which
/// would throw away what it had not read yet). The server's session
/// tickets can arrive after the client's close: without the lingering
/// close, the closed socket answered them with a reset (4 runs in 10 here).
#[test]
fn connect_tls_send_and_close_in_on_open_delivers_it() {
    const PAYLOAD: usize = 1 << 20;
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let mut client = Recorder::new(true);
    client.send_on_open = PAYLOAD;
    let mut el = EventLoop::new(client).unwrap();
    let url = format!("tls://127.0.0.1:{}", sink.port);
    el.context()
        .connect_tls(url.as_str(), client_config(&pki.ca), "localhost")
        .unwrap();
    run_until(&mut el, Recorder::closed);
    let heard = el.handler().heard.clone();
    // The loop goes on (a client program's would): the closed socket
    // lingers, reading what the server still sends (its session tickets,
    // its close_notify), until the server's end of file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while el.stats().lingering > 0 {
        assert!(Instant::now() < deadline, "still lingering after 10 s");
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    drop(el);
    sink.wait_received(PAYLOAD);
    // And its connection ends cleanly: end of file, not a reset.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.closed.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sink's connection never closed"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*sink.closed.lock().unwrap(), vec![CloseReason::PeerClosed]);
    assert_eq!(
        heard.last(),
        Some(&Heard::Close(CloseReason::Closed)),
        "{heard:?}"
    );
}

/// A `connect_tls` client whose handshake fails (it does not trust the
/// server's certificate) hears `on_connect_failed` with `InvalidData`, as
/// for a connect that failed: no `on_open`, no `on_close`.
#[test]
fn connect_tls_failed_handshake_is_a_failed_connect() {
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let mut el = EventLoop::new(Recorder::new(true)).unwrap();
    let url = format!("tls://127.0.0.1:{}", sink.port);
    el.context()
        .connect_tls(url.as_str(), client_config(&pki_other_ca()), "localhost")
        .unwrap();
    run_until(&mut el, Recorder::closed);
    assert_eq!(
        el.handler().heard,
        vec![Heard::ConnectFailed(std::io::ErrorKind::InvalidData)]
    );
}

/// A `connect_tls` client that sends and half-closes before its handshake
/// completes: the bytes go once it does, then close_notify and the write
/// side's shutdown (before, the write side was shut under the handshake
/// and the connect failed with nothing delivered).
#[test]
fn connect_tls_send_then_shutdown_during_the_handshake_delivers() {
    let pki = pki();
    let sink = Sink::start(pki.server.clone());
    let mut el = EventLoop::new(Recorder::new(true)).unwrap();
    let url = format!("tls://127.0.0.1:{}", sink.port);
    let id = el
        .context()
        .connect_tls(url.as_str(), client_config(&pki.ca), "localhost")
        .unwrap();
    el.context().send(id, b"0123456789").unwrap();
    el.context().shutdown(id).unwrap();
    // The sink closes once it has read the close_notify (its on_eof), so
    // the client hears the end of its connection.
    run_until(&mut el, Recorder::closed);
    sink.wait_received(10);
    let heard = el.handler().heard.clone();
    assert_eq!(heard.first(), Some(&Heard::Open), "{heard:?}");
    assert!(
        !heard.iter().any(|h| matches!(h, Heard::ConnectFailed(_))),
        "{heard:?}"
    );
}
