//! Groups of loops (`Group`): connections spread by each balancing policy,
//! cross-loop sends in order, sends to closed connections, one stop for
//! all loops with data in flight, a panic stopping the group, the group's
//! connection limit, UDP and Unix sockets on every loop, and the chat
//! example across four loops. All over loopback, each test bounded by a
//! watchdog.

#[path = "../examples/chat/group.rs"]
mod chat;
#[path = "../examples/chat/room.rs"]
mod room;
#[allow(dead_code)]
#[path = "../examples/chat/server.rs"]
mod server;
mod util;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netloop::socket2::{Domain, Socket, Type};
use netloop::{
    Addr, Balance, CloseReason, Config, ConnId, Context, Group, GroupHandle, Handler, RemoteId,
    SendError, TimerId,
};
use util::*;

/// A group running on a thread of its own.
struct Running<H: Handler + 'static> {
    handle: GroupHandle<H>,
    thread: Option<JoinHandle<(Group<H>, io::Result<()>)>>,
}

impl<H> Running<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send,
{
    fn start(mut group: Group<H>) -> Running<H> {
        let handle = group.handle();
        let thread = thread::spawn(move || {
            let result = group.run();
            (group, result)
        });
        Running {
            handle,
            thread: Some(thread),
        }
    }

    /// Waits (within [`STEP`]) for the group to end by itself.
    fn join(&mut self) -> (Group<H>, io::Result<()>) {
        let thread = self.thread.take().expect("joined once");
        let deadline = Instant::now() + STEP;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the group did not stop in time");
            thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("the group's thread panicked")
    }

    /// Stops the group and waits for it.
    fn stop(mut self) -> (Group<H>, io::Result<()>) {
        self.handle.stop();
        self.join()
    }
}

impl<H: Handler + 'static> Drop for Running<H> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.stop();
            if !thread::panicking() {
                let _ = thread.join();
            }
        }
    }
}

/// Messages to a [`Probe`].
enum ProbeMsg {
    /// Send `count` 8-byte records (sender, sequence number) to `target`.
    Produce {
        target: RemoteId,
        sender: u32,
        count: u32,
    },
}

/// A record producer on a loop: the next sequence number to send.
struct Producer {
    target: RemoteId,
    sender: u32,
    next: u32,
    count: u32,
}

/// The test handler: tells each client its loop (one byte), reports each
/// connection's [`RemoteId`] to the test, echoes, queues `BIG` bytes on
/// `go`, panics on `panic`, and runs record producers.
struct Probe {
    index: usize,
    group: GroupHandle<Probe>,
    opened: mpsc::Sender<RemoteId>,
    producers: Vec<Producer>,
    timer: Option<TimerId>,
}

/// Bytes a `go` asks for.
const BIG: usize = 2 << 20;

/// The bytes of a `go` reply: `i % 251` at offset `i`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

impl Probe {
    fn group(n: usize, config: Config) -> (Group<Probe>, mpsc::Receiver<RemoteId>) {
        let (tx, rx) = mpsc::channel();
        let group = Group::new(n, config, |index, group| Probe {
            index,
            group,
            opened: tx.clone(),
            producers: Vec::new(),
            timer: None,
        })
        .expect("group");
        (group, rx)
    }

    /// Sends records until every producer is done, a queue is full, or
    /// 1,024 went out this call; a timer comes back for the rest.
    fn produce(&mut self, cx: &mut Context<'_>) {
        let mut budget = 1024;
        let group = &self.group;
        self.producers.retain_mut(|p| {
            while p.next < p.count && budget > 0 {
                let mut record = p.sender.to_le_bytes().to_vec();
                record.extend_from_slice(&p.next.to_le_bytes());
                match group.send(p.target, record) {
                    Ok(()) => {
                        p.next += 1;
                        budget -= 1;
                    }
                    Err(SendError::Full(_)) => return true,
                    Err(SendError::Closed(_)) => return false,
                }
            }
            p.next < p.count
        });
        if !self.producers.is_empty() && self.timer.is_none() {
            let wait = if budget == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(200)
            };
            self.timer = Some(cx.set_timer(wait));
        }
    }
}

impl Handler for Probe {
    type Conn = ();
    type Msg = ProbeMsg;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        let _ = cx.send(id, &[self.index as u8]);
        let _ = self.opened.send(RemoteId::new(self.index, id));
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        match data {
            b"go\n" => {
                let _ = cx.send(id, &pattern(BIG));
            }
            b"panic\n" => panic!("asked to panic"),
            _ => {
                let _ = cx.send(id, data);
            }
        }
        data.len()
    }

    fn on_datagram(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), _: &[u8], from: &Addr) {
        let _ = cx.send_to(id, &[self.index as u8], from);
    }

    fn on_refuse(&mut self, cx: &mut Context<'_>, id: ConnId) {
        let _ = cx.send(id, b"busy\n");
    }

    fn on_message(&mut self, cx: &mut Context<'_>, msg: ProbeMsg) {
        let ProbeMsg::Produce {
            target,
            sender,
            count,
        } = msg;
        self.producers.push(Producer {
            target,
            sender,
            next: 0,
            count,
        });
        self.produce(cx);
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        if self.timer == Some(timer) {
            self.timer = None;
            self.produce(cx);
        }
    }
}

/// Connects and reads the loop's index.
fn connect_probe(addr: SocketAddr) -> (TcpStream, usize) {
    let mut s = client(addr);
    let index = read_n(&mut s, 1)[0] as usize;
    (s, index)
}

/// Connects from the local address `from` (port 0) and reads the loop.
fn connect_from(from: [u8; 4], to: SocketAddr) -> (TcpStream, usize) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect_timeout(&to.into(), STEP).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(STEP)).unwrap();
    let index = read_n(&mut s, 1)[0] as usize;
    (s, index)
}

fn inet(addr: &Addr) -> SocketAddr {
    addr.as_inet().expect("an IP address")
}

/// Counts per loop of `indices`.
fn spread(indices: impl IntoIterator<Item = usize>, loops: usize) -> Vec<usize> {
    let mut counts = vec![0; loops];
    for i in indices {
        counts[i] += 1;
    }
    counts
}

#[test]
fn round_robin_gives_each_of_4_loops_a_quarter_of_100_connections() {
    let _watchdog = watchdog("round_robin", Duration::from_secs(60));
    let (mut group, _opened) = Probe::group(4, Config::default());
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let clients: Vec<_> = (0..100).map(|_| connect_probe(addr)).collect();
    let counts = spread(clients.iter().map(|c| c.1), 4);
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            (24..=26).contains(&n),
            "loop {i} got {n} of 100: {counts:?}"
        );
    }
    for i in 0..4 {
        wait_for("the loops to adopt", || running.handle.connections(i) == 25);
    }
    drop(clients);
    let (group, result) = running.stop();
    result.unwrap();
    let stats = group.stats();
    assert_eq!(stats.total.accepted, 100);
    for (i, s) in stats.loops.iter().enumerate() {
        assert_eq!(s.accepted, counts[i] as u64, "loop {i}");
    }
}

#[test]
fn least_connections_prefers_the_emptiest_loop() {
    let _watchdog = watchdog("least_connections", Duration::from_secs(60));
    let (mut group, _opened) = Probe::group(4, Config::default());
    group.set_balance(Balance::LeastConnections);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let mut clients: Vec<_> = (0..8).map(|_| connect_probe(addr)).collect();
    assert_eq!(spread(clients.iter().map(|c| c.1), 4), [2, 2, 2, 2]);
    // Empty loop 2: the next two go there, until it is level again.
    clients.retain(|c| c.1 != 2);
    wait_for("loop 2 to empty", || running.handle.connections(2) == 0);
    for _ in 0..2 {
        let c = connect_probe(addr);
        assert_eq!(c.1, 2, "the emptiest loop is 2");
        clients.push(c);
    }
    // One fewer on loop 1: the next goes there.
    let at = clients.iter().position(|c| c.1 == 1).unwrap();
    clients.remove(at);
    wait_for("loop 1 to lose one", || running.handle.connections(1) == 1);
    let c = connect_probe(addr);
    assert_eq!(c.1, 1, "the emptiest loop is 1");
    clients.push(c);
    drop(clients);
    running.stop().1.unwrap();
}

#[test]
fn source_ip_hash_keeps_each_client_ip_on_one_loop() {
    let _watchdog = watchdog("source_ip_hash", Duration::from_secs(60));
    let (mut group, _opened) = Probe::group(4, Config::default());
    group.set_balance(Balance::SourceIpHash);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let mut seen = HashMap::new();
    // 7 hosts (not a multiple of the 4 loops), in reverse on odd rounds:
    // round-robin would move some of them between rounds.
    for round in 0..4 {
        let hosts: Vec<u8> = if round % 2 == 0 {
            (2..=8).collect()
        } else {
            (2..=8).rev().collect()
        };
        for host in hosts {
            let (s, index) = connect_from([127, 0, 0, host], addr);
            let first = *seen.entry(host).or_insert(index);
            assert_eq!(index, first, "127.0.0.{host} moved loops in round {round}");
            drop(s); // a new port each time: only the IP counts
        }
    }
    let loops: std::collections::HashSet<_> = seen.values().collect();
    assert!(loops.len() >= 2, "7 addresses all on one loop: {seen:?}");
    running.stop().1.unwrap();
}

/// The TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net.
fn listening_on(port: u16) -> usize {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
                })
                .count()
        })
        .sum()
}

#[test]
fn reuse_port_gives_every_loop_a_listener() {
    let _watchdog = watchdog("reuse_port", Duration::from_secs(60));
    let (mut group, _opened) = Probe::group(4, Config::default());
    group.set_balance(Balance::ReusePort);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    // The kernel hashes the 4-tuple: 60 connections miss a loop with
    // probability about 4 * 0.75^60, 1e-7.
    let clients: Vec<_> = (0..60).map(|_| connect_probe(addr)).collect();
    let counts = spread(clients.iter().map(|c| c.1), 4);
    assert!(counts.iter().all(|&n| n > 0), "a loop got none: {counts:?}");
    // One listening socket per loop (a single acceptor would be one).
    assert_eq!(listening_on(addr.port()), 4, "listeners on {addr}");
    drop(clients);
    let (group, result) = running.stop();
    result.unwrap();
    assert_eq!(group.stats().total.accepted, 60);
}

/// Reads 8-byte records until every sender's `count` arrived, checking each
/// sender's sequence numbers come in order with none missing.
fn read_records(s: &mut TcpStream, senders: u32, count: u32) {
    let mut next = vec![0u32; senders as usize];
    let mut left = u64::from(senders) * u64::from(count);
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    while left > 0 {
        let n = s.read(&mut buf[have..]).expect("read records");
        assert!(n > 0, "end of file with {left} records to come");
        have += n;
        let whole = have / 8 * 8;
        for r in buf[..whole].chunks_exact(8) {
            let sender = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
            let seq = u32::from_le_bytes(r[4..].try_into().unwrap());
            assert_eq!(seq, next[sender], "sender {sender} out of order");
            next[sender] += 1;
            left -= 1;
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
}

#[test]
fn cross_loop_sends_keep_each_senders_order() {
    let _watchdog = watchdog("cross_loop_order", Duration::from_secs(120));
    // 8 senders, two on each of 4 loops, all sending to one client on loop 3
    // (its own loop's senders included).
    let count: u32 = 100_000;
    let (mut group, opened) = Probe::group(4, Config::default());
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let mut clients: Vec<_> = (0..4).map(|_| connect_probe(addr)).collect();
    let ids: Vec<RemoteId> = (0..4).map(|_| opened.recv_timeout(STEP).unwrap()).collect();
    let target = *ids.iter().find(|r| r.loop_index() == 3).unwrap();
    let (mut s, _) = clients.remove(clients.iter().position(|c| c.1 == 3).unwrap());
    let started = Instant::now();
    for sender in 0..8u32 {
        let mut msg = ProbeMsg::Produce {
            target,
            sender,
            count,
        };
        // The senders already started fill loop 3's queue with records: a
        // full queue says try again (the handle's contract), not fail.
        let deadline = Instant::now() + STEP;
        loop {
            match running.handle.message(sender as usize % 4, msg) {
                Ok(()) => break,
                Err(SendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!(
                    "sender {sender} to loop {}: {e} (stopping: {})",
                    sender % 4,
                    running.handle.is_stopping()
                ),
            }
        }
    }
    read_records(&mut s, 8, count);
    let took = started.elapsed();
    eprintln!(
        "8 x {count} cross-loop records in {took:?} ({:.0}/s)",
        f64::from(8 * count) / took.as_secs_f64()
    );
    let (group, result) = running.stop();
    result.unwrap();
    assert_eq!(group.stats().undelivered, 0);
}

#[test]
fn sends_to_a_closed_connection_are_counted_not_a_panic() {
    let _watchdog = watchdog("send_to_closed", Duration::from_secs(60));
    let (mut group, opened) = Probe::group(2, Config::default());
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let (mut s, index) = connect_probe(addr);
    let remote = opened.recv_timeout(STEP).unwrap();
    assert_eq!(remote.loop_index(), index);
    assert_eq!(remote.to_string(), format!("{index}:{}", remote.id()));
    // While it is open, the bytes arrive.
    running.handle.send(remote, b"hi".to_vec()).unwrap();
    assert_eq!(read_n(&mut s, 2), b"hi");
    drop(s);
    wait_for("the close", || running.handle.connections(index) == 0);
    // Queued fine; found closed on arrival and counted.
    running.handle.send(remote, b"late".to_vec()).unwrap();
    running.handle.close(remote).unwrap();
    // A loop out of range is a closed loop.
    let nowhere = RemoteId::new(7, remote.id());
    assert!(matches!(
        running.handle.send(nowhere, b"x".to_vec()),
        Err(SendError::Closed(data)) if data == b"x"
    ));
    let handle = running.handle.clone();
    wait_for("both counted", || {
        handle.stats(STEP).map(|s| s.undelivered).unwrap_or(0) == 2
    });
    let (group, result) = running.stop();
    result.unwrap();
    assert_eq!(group.stats().undelivered, 2);
    // After the stop, a send is an error value too.
    assert!(matches!(
        handle.send(remote, b"x".to_vec()),
        Err(SendError::Closed(_))
    ));
    // And so is a message: the loop is gone.
    let late = handle.message(
        0,
        ProbeMsg::Produce {
            target: remote,
            sender: 0,
            count: 1,
        },
    );
    assert!(
        matches!(
            late,
            Err(SendError::Closed(ProbeMsg::Produce { count: 1, .. }))
        ),
        "a message after the stop: {late:?}"
    );
}

#[test]
fn stop_delivers_data_in_flight_on_every_loop() {
    let _watchdog = watchdog("stop_in_flight", Duration::from_secs(60));
    let drain = Duration::from_secs(5);
    let config = Config {
        drain_timeout: drain,
        ..Config::default()
    };
    let (mut group, opened) = Probe::group(4, config);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let mut running = Running::start(group);
    // Two clients per loop with small receive buffers, none reading yet.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(16 * 1024).unwrap();
        s.connect_timeout(&addr.into(), STEP).unwrap();
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(STEP)).unwrap();
        let index = read_n(&mut s, 1)[0] as usize;
        s.write_all(b"go\n").unwrap();
        clients.push((s, index));
    }
    assert_eq!(spread(clients.iter().map(|c| c.1), 4), [2, 2, 2, 2]);
    let ids: Vec<RemoteId> = (0..8).map(|_| opened.recv_timeout(STEP).unwrap()).collect();
    // Each loop has handled its clients' `go` once it has written something.
    wait_for("every go handled", || {
        running
            .handle
            .stats(STEP)
            .map(|s| {
                s.loops
                    .iter()
                    .all(|l| l.bytes_written > 2 * BIG as u64 / 16)
            })
            .unwrap_or(false)
    });
    // Then 1,000 more sends of 1 KiB to each client from this thread, more
    // than a loop handles per turn, and the stop right behind them.
    let chunk = vec![7u8; 1024];
    for _ in 0..1000 {
        for &id in &ids {
            let mut data = chunk.clone();
            loop {
                match running.handle.send(id, data) {
                    Ok(()) => break,
                    Err(SendError::Full(back)) => {
                        data = back;
                        thread::yield_now();
                    }
                    Err(SendError::Closed(_)) => panic!("the group stopped early"),
                }
            }
        }
    }
    let stopped = Instant::now();
    running.handle.stop();
    // Everything arrives, then end of file, within the drain deadline.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(mut s, _)| {
            thread::spawn(move || {
                let all = read_to_end(&mut s).expect("read to end of file");
                (all, Instant::now())
            })
        })
        .collect();
    let want = pattern(BIG);
    for reader in readers {
        let (all, at) = reader.join().unwrap();
        assert_eq!(all.len(), BIG + 1000 * 1024, "bytes delivered");
        assert!(all[..BIG] == want[..], "the reply's bytes");
        assert!(
            all[BIG..].iter().all(|&b| b == 7),
            "the remote sends' bytes"
        );
        assert!(at - stopped < drain, "took {:?}", at - stopped);
    }
    let (group, result) = running.join();
    result.unwrap();
    assert!(stopped.elapsed() < drain + STEP);
    assert_eq!(group.stats().undelivered, 0);
}

#[test]
fn a_panic_with_catch_panics_off_stops_the_group_and_run_returns_it() {
    let _watchdog = watchdog("panic_stops_group", Duration::from_secs(60));
    let config = Config {
        catch_panics: false,
        ..Config::default()
    };
    let (mut group, _opened) = Probe::group(3, config);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let mut running = Running::start(group);
    let mut clients: Vec<_> = (0..3).map(|_| connect_probe(addr)).collect();
    clients[1].0.write_all(b"panic\n").unwrap();
    let (group, result) = running.join();
    let err = result.expect_err("run reports the panic");
    assert!(
        err.to_string().contains("loop 1") && err.to_string().contains("asked to panic"),
        "{err}"
    );
    // The other loops stopped gracefully: their clients read end of file.
    for (s, index) in clients.iter_mut().filter(|c| c.1 != 1) {
        assert_eq!(read_to_end(s).unwrap(), b"", "loop {index}");
    }
    drop(group);
}

#[test]
fn max_connections_is_for_the_group_and_refusal_is_prompt() {
    let _watchdog = watchdog("max_connections", Duration::from_secs(60));
    let config = Config {
        max_connections: 6,
        ..Config::default()
    };
    let (mut group, _opened) = Probe::group(4, config);
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    let clients: Vec<_> = (0..6).map(|_| connect_probe(addr)).collect();
    for _ in 0..3 {
        let started = Instant::now();
        let mut s = client(addr);
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"busy\n");
        assert!(started.elapsed() < Duration::from_secs(2), "refused late");
    }
    drop(clients);
    for i in 0..4 {
        wait_for("the closes", || running.handle.connections(i) == 0);
    }
    let (s, _) = connect_probe(addr); // room again
    drop(s);
    let (group, result) = running.stop();
    result.unwrap();
    let stats = group.stats();
    assert_eq!(stats.total.refused, 3);
    assert_eq!(stats.total.accepted, 7);
}

#[test]
fn udp_has_a_socket_on_every_loop_and_unix_streams_go_round() {
    let _watchdog = watchdog("udp_and_unix", Duration::from_secs(60));
    let (mut group, _opened) = Probe::group(4, Config::default());
    let udp = inet(&group.listen("udp://127.0.0.1:0").unwrap());
    let path = socket_path("group");
    let unix = group.listen(format!("unix://{}", path.display())).unwrap();
    assert_eq!(unix, Addr::Unix(netloop::UnixAddr::Path(path.clone())));
    let running = Running::start(group);
    // The kernel picks a UDP socket by a hash of the sender's address.
    let mut loops = Vec::new();
    for _ in 0..60 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.send_to(b"which", udp).unwrap();
        let mut buf = [0; 8];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (1, udp));
        loops.push(buf[0] as usize);
    }
    let counts = spread(loops, 4);
    assert!(counts.iter().all(|&n| n > 0), "a loop got none: {counts:?}");
    // Unix streams through the acceptor, round-robin.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let index = read_n(&mut s, 1)[0] as usize;
        s.write_all(b"ping").unwrap();
        assert_eq!(read_n(&mut s, 4), b"ping");
        streams.push(index);
    }
    assert_eq!(spread(streams, 4), [2, 2, 2, 2]);
    running.stop().1.unwrap();
    assert!(!path.exists(), "the socket file is removed at the stop");
}

/// A handler that stops its own loop on its first connection.
struct StopOnOpen;

impl Handler for StopOnOpen {
    type Conn = ();
    type Msg = ();
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        let _ = cx.send(id, b"stopping\n");
        cx.stop();
    }
    fn on_close(&mut self, _: &mut Context<'_>, _: ConnId, _: (), _: CloseReason) {}
}

#[test]
fn a_stop_on_one_loop_stops_them_all() {
    let _watchdog = watchdog("one_stop", Duration::from_secs(60));
    let mut group = Group::new(0, Config::default(), |_, _| StopOnOpen).unwrap();
    let loops = group.loops();
    assert_eq!(
        loops,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let mut running = Running::start(group);
    let mut s = client(addr);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"stopping\n");
    running.join().1.unwrap();
}

/// The group child: four loops of [`Probe`], stopped by a signal.
#[test]
#[ignore = "child process of signal_stops_every_loop_after_draining"]
fn group_signal_child() {
    if !is_child() {
        return;
    }
    let (mut group, _opened) = Probe::group(4, Config::default());
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    group.stop_on_signals().unwrap();
    announce_port(addr.port());
    let code = match group.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("run: {e}");
            3
        }
    };
    std::process::exit(code);
}

#[test]
fn signal_stops_every_loop_after_draining() {
    let _watchdog = watchdog("signal_stop", Duration::from_secs(60));
    let mut server = ChildServer::spawn("group_signal_child", &[]);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(16 * 1024).unwrap();
        s.connect_timeout(&server.addr().into(), STEP).unwrap();
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(STEP)).unwrap();
        let index = read_n(&mut s, 1)[0] as usize;
        s.write_all(b"go\n").unwrap();
        clients.push((s, index));
    }
    assert_eq!(spread(clients.iter().map(|c| c.1), 4), [2, 2, 2, 2]);
    thread::sleep(Duration::from_millis(200)); // the `go`s handled
    server.signal(libc::SIGINT);
    for (s, index) in &mut clients {
        let all = read_to_end(s).unwrap();
        assert_eq!(all.len(), BIG, "loop {index}");
    }
    let status = server.wait_exit(STEP).expect("the child exits");
    assert_eq!(status.code(), Some(0));
}

/// One chat client with a buffered reader.
struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Peer {
    fn join(addr: SocketAddr) -> Peer {
        let s = client(addr);
        Peer {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line");
        assert!(
            n > 0 && line.ends_with('\n'),
            "end of file or partial line {line:?}"
        );
        line.pop();
        line
    }

    fn skip_to(&mut self, want: &str) {
        while self.line() != want {}
    }

    /// Lines up to one that starts with `prefix`, which is returned.
    fn find(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line();
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }
}

#[test]
fn chat_across_four_loops_with_twelve_clients() {
    let _watchdog = watchdog("chat_four_loops", Duration::from_secs(60));
    let config = server::config(None);
    let mut group = chat::group(4, config, server::MAX_LINE).unwrap();
    let addr = inet(&group.listen("tcp://127.0.0.1:0").unwrap());
    let running = Running::start(group);
    // Twelve clients, round-robin over the loops: three on each.
    let mut peers = Vec::new();
    for n in 1..=12 {
        let mut p = Peer::join(addr);
        p.skip_to(&format!("* guest{n} joined"));
        peers.push(p);
    }
    // Everyone saw every later join.
    for (i, p) in peers.iter_mut().enumerate() {
        for n in i + 2..=12 {
            p.skip_to(&format!("* guest{n} joined"));
        }
    }
    // Names are unique across loops: guest1 (loop 0) takes "alice", guest2
    // (loop 1) is refused it, guest3 (loop 2) takes "bob".
    peers[0].send("/nick alice\n");
    for p in &mut peers {
        p.skip_to("* guest1 is now alice");
    }
    peers[1].send("/nick ALICE\n");
    assert_eq!(peers[1].line(), "! that name is taken");
    peers[2].send("/nick bob\n");
    for p in &mut peers {
        p.skip_to("* guest3 is now bob");
    }
    // /who from a client on loop 3 lists all twelve.
    peers[3].send("/who\n");
    let who = peers[3].find("* 12 here: ");
    for name in ["alice", "bob", "guest2", "guest12"] {
        assert!(who.contains(name), "{who}");
    }
    // A line from loop 2 reaches the other eleven, on every loop.
    peers[2].send("hello from loop 2\n");
    for (i, p) in peers.iter_mut().enumerate() {
        if i != 2 {
            p.skip_to("bob: hello from loop 2");
        }
    }
    // Leaves reach everyone: /quit from loop 3, a hang-up from loop 0.
    peers[7].send("/quit\n");
    peers[7].skip_to("* bye");
    let mut rest = Vec::new();
    peers[7].reader.read_to_end(&mut rest).unwrap();
    drop(peers.remove(7));
    for p in &mut peers {
        p.skip_to("* guest8 left");
    }
    drop(peers.remove(0));
    for p in &mut peers {
        p.skip_to("* alice left");
    }
    peers[0].send("/who\n");
    assert_eq!(peers[0].find("* 10 here: ").matches(", ").count(), 9);
    let (_, result) = running.stop();
    result.unwrap();
}
