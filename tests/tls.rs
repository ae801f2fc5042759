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
