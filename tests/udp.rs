//! UDP: round trips over IPv4 and IPv6, empty and maximum-size datagrams,
//! ICMP errors on connected sockets, bursts, detach and adopt.

mod util;

use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::Duration;

use netloop::{Addr, Config, ConnId, Context, EventLoop, Handler, Stats, Transport};
use util::*;

fn udp_client(server: std::net::SocketAddr) -> UdpSocket {
    let bind = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.connect(server).unwrap();
    s
}

#[test]
fn udp_round_trip_ipv4_and_ipv6() {
    let server = serve(
        || Echo,
        Config::default(),
        &["udp://127.0.0.1:0", "udp://[::1]:0"],
    );
    for addr in &server.addrs {
        let c = udp_client(addr.as_inet().unwrap());
        c.send(b"ping").unwrap();
        let mut buf = [0u8; 16];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }
    server.stop();
}

#[test]
fn empty_datagram_is_delivered_not_taken_as_close() {
    let server = serve(|| Echo, Config::default(), &["udp://127.0.0.1:0"]);
    let c = udp_client(server.inet());
    c.send(b"").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.recv(&mut buf).unwrap(), 0);
    c.send(b"after").unwrap();
    assert_eq!(c.recv(&mut buf).unwrap(), 5, "the socket is still served");
    server.stop();
}

#[test]
fn maximum_size_datagram_arrives_whole() {
    let server = serve(|| Echo, Config::default(), &["udp://127.0.0.1:0"]);
    let c = udp_client(server.inet());
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 253) as u8).collect();
    c.send(&big).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(n, 65_507);
    assert_eq!(&buf[..n], &big[..]);
    server.stop();
}

/// Connects a UDP socket to a port nobody listens on and sends: the ICMP
/// port-unreachable comes back as ECONNREFUSED to `on_error`, and the socket
/// stays registered and usable.
struct Refused {
    errors: Vec<std::io::ErrorKind>,
    id: Option<ConnId>,
}

impl Handler for Refused {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.id = Some(id);
        assert_eq!(cx.transport(id).unwrap(), Transport::Udp);
        cx.send(id, b"anyone?").unwrap();
    }
    fn on_error(&mut self, cx: &mut Context<'_>, id: ConnId, err: std::io::Error) {
        self.errors.push(err.kind());
        if self.errors.len() == 2 {
            cx.stop();
        } else {
            // Still registered: a second send gives a second report.
            let _ = cx.send(id, b"still?");
        }
    }
}

#[test]
fn connected_udp_reports_refused_and_stays_registered() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut el = EventLoop::new(Refused {
        errors: Vec::new(),
        id: None,
    })
    .unwrap();
    el.connect(format!("udp://127.0.0.1:{port}")).unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while el.run_once(Some(Duration::from_millis(50))).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "no ICMP error reported"
        );
    }
    let h = el.handler();
    assert_eq!(h.errors, vec![std::io::ErrorKind::ConnectionRefused; 2]);
}

/// Echo that reports its counters when the loop stops.
struct CountingEcho(mpsc::Sender<Stats>);

impl Handler for CountingEcho {
    type Conn = ();
    type Msg = ();
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
    fn on_stop(&mut self, cx: &mut Context<'_>) {
        self.0.send(cx.stats().clone()).unwrap();
    }
}

/// 10,000 datagrams at once: each is echoed, or counted as dropped by the
/// bounded-queue policy; none vanishes inside netloop.
#[test]
fn burst_of_ten_thousand_datagrams_all_echoed_or_counted() {
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || CountingEcho(tx),
        Config::default(),
        &["udp://127.0.0.1:0"],
    );
    let c = udp_client(server.inet());
    netloop::socket2::SockRef::from(&c)
        .set_recv_buffer_size(8 << 20)
        .unwrap();
    let reader = c.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let got = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0u64;
        while reader.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    for i in 0..10_000u32 {
        c.send(&i.to_be_bytes()).unwrap();
    }
    let client_got = got.join().unwrap();
    server.stop();
    let s = rx.recv_timeout(STEP).unwrap();
    assert!(s.datagrams_received <= 10_000);
    assert_eq!(
        s.datagrams_received,
        s.datagrams_sent + s.datagrams_dropped,
        "{s:?}"
    );
    assert!(client_got <= s.datagrams_sent);
    assert!(client_got > 0);
}

/// On "detach", hands its UDP socket to the test.
struct DetachUdp(mpsc::Sender<netloop::Detached>);

impl Handler for DetachUdp {
    type Conn = ();
    type Msg = ();
    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
        from: &Addr,
    ) {
        if data == b"detach" {
            let _ = cx.send_to(id, b"detached", from);
            self.0.send(cx.detach(id).unwrap()).unwrap();
        }
    }
}

#[test]
fn udp_detach_and_adopt_round_trip() {
    let (tx, rx) = mpsc::channel();
    let server = serve(
        move || DetachUdp(tx),
        Config::default(),
        &["udp://127.0.0.1:0"],
    );
    let c = udp_client(server.inet());
    c.send(b"detach").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.recv(&mut buf).unwrap(), 8);
    let netloop::StdSocket::UdpSocket(s) = rx.recv_timeout(STEP).unwrap().socket else {
        panic!("not UDP")
    };
    server.stop();
    // Adopt it into another loop, which echoes.
    let (tx2, rx2) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut el = EventLoop::new(Echo).unwrap();
        let id = el.context().adopt(s).unwrap();
        assert_eq!(el.context().transport(id).unwrap(), Transport::Udp);
        tx2.send(el.handle()).unwrap();
        el.run().unwrap();
    });
    let handle = rx2.recv_timeout(STEP).unwrap();
    c.send(b"again").unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
    handle.stop();
    t.join().unwrap();
}
