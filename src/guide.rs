//! A guide to building servers on netloop: a relay, a request/response
//! server, several loops on one port. Documentation only: this module has
//! no items. Each section ends with a whole program that runs as a test
//! (it serves on `127.0.0.1:0`, plays its own clients on threads, and stops
//! itself).
//!
//! # A relay
//!
//! A relay (a TCP proxy, a tunnel, a load balancer in `mode tcp`) pairs
//! every accepted connection, the *client leg*, with a connection it makes
//! to an upstream, the *upstream leg*, and copies bytes both ways. Four
//! pieces of the API make it short:
//!
//! - **Pairing: [`Context::connect_with`](crate::Context::connect_with).** The upstream leg's state is
//!   given when it is made, naming its client, and the client's state is
//!   given the upstream's id right after; each leg then knows its peer in
//!   every callback. If the connect fails,
//!   [`Handler::on_connect_failed`](crate::Handler::on_connect_failed) hands that state back, and with it the
//!   client to close. Bytes sent to the upstream leg before it opens are
//!   queued and written once it does. ([`Context::adopt_with`](crate::Context::adopt_with) does the
//!   same for a socket made elsewhere.)
//! - **Bounded memory: [`Context::pause_reading`](crate::Context::pause_reading) and
//!   [`Context::resume_reading`](crate::Context::resume_reading).** `on_data` of one leg `send`s the bytes
//!   to the other; when that leg's queue ([`Context::queued`](crate::Context::queued)) passes a
//!   bound, stop reading the first leg. [`Handler::on_drain`](crate::Handler::on_drain) of the other
//!   leg (its queue written out) resumes it. The kernel's buffers fill
//!   meanwhile and TCP's flow control stops the sender, so each direction
//!   holds at most the bound plus one read (64 KiB).
//! - **The loop's own pause is the wrong one here.** Above
//!   [`Config::high_water`](crate::Config::high_water) the loop pauses reading the connection whose
//!   *own* queue is long: in a relay that is the leg whose peer reads
//!   slowly, so the healthy direction would stop instead, and two
//!   upstreams that wait for their replies to be read would stop each
//!   other for good. Set `high_water` to [`Config::max_write_queue`](crate::Config::max_write_queue) (the
//!   hard cap still resets a leg that passes it); your own bound stays far
//!   below. Both pauses can hold at once; reading resumes when neither
//!   does.
//! - **Half-close: [`Handler::on_eof`](crate::Handler::on_eof) and [`Context::shutdown`](crate::Context::shutdown).** The end
//!   of file of one leg becomes a shutdown of the other leg's write side,
//!   after its queue drains; the other direction goes on. When both legs
//!   have ended, close both. An end of file that arrives while a leg is
//!   paused is delivered after the bytes before it, once reading resumes.
//!
//! Each relayed byte is copied at most once: `on_data`'s slice into the
//! other leg's queue, or not at all when that queue is empty and the kernel
//! takes the slice whole (netloop writes a large `send` straight to the
//! socket). The `proxy` example (`examples/proxy/`) adds timeouts, resets
//! passed on as resets, and the PROXY protocol.
//!
//! ```
//! use std::collections::HashSet;
//! use std::io::{Read, Write};
//! use std::net::{Shutdown, TcpListener, TcpStream};
//!
//! use netloop::{CloseReason, Config, ConnId, Context, Endpoint, EventLoop, Handler};
//!
//! /// Most bytes queued toward one leg before the other is paused.
//! const BOUND: usize = 256 * 1024;
//!
//! /// A leg's state: its peer, once known.
//! #[derive(Default)]
//! struct Leg {
//!     peer: Option<ConnId>,
//! }
//!
//! struct Relay {
//!     upstream: Endpoint,
//!     ended: HashSet<ConnId>, // legs whose end of file came first
//! }
//!
//! impl Handler for Relay {
//!     type Conn = Leg;
//!     type Msg = ();
//!
//!     fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg) {
//!         if leg.peer.is_some() {
//!             return; // an upstream leg: connect_with named its client
//!         }
//!         match cx.connect_with(&self.upstream, Leg { peer: Some(id) }) {
//!             Ok(up) => leg.peer = Some(up),
//!             Err(_) => drop(cx.close(id)),
//!         }
//!     }
//!
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg, data: &[u8]) -> usize {
//!         let Some(peer) = leg.peer else { return data.len() };
//!         if cx.send(peer, data).is_err() {
//!             let _ = cx.close(id); // the peer is going
//!         } else if cx.queued(peer).is_ok_and(|q| q > BOUND) {
//!             let _ = cx.pause_reading(id);
//!         }
//!         data.len()
//!     }
//!
//!     fn on_drain(&mut self, cx: &mut Context<'_>, _: ConnId, leg: &mut Leg) {
//!         if let Some(peer) = leg.peer {
//!             let _ = cx.resume_reading(peer); // a no-op unless paused
//!         }
//!     }
//!
//!     fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg) {
//!         let Some(peer) = leg.peer else { return drop(cx.close(id)) };
//!         if self.ended.remove(&peer) {
//!             let _ = cx.close(id); // both directions are done
//!             let _ = cx.close(peer);
//!         } else {
//!             self.ended.insert(id);
//!             let _ = cx.shutdown(peer); // once its queue is written
//!         }
//!     }
//!
//!     fn on_connect_failed(&mut self, cx: &mut Context<'_>, _: ConnId, leg: Leg, err: std::io::Error) {
//!         eprintln!("upstream {}: {err}", self.upstream);
//!         if let Some(client) = leg.peer {
//!             let _ = cx.close(client);
//!         }
//!     }
//!
//!     fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, leg: Leg, _: CloseReason) {
//!         self.ended.remove(&id);
//!         if let Some(peer) = leg.peer {
//!             let _ = cx.close(peer);
//!         }
//!     }
//! }
//!
//! // An upstream that reads to the end of file, then answers and closes.
//! let upstream = TcpListener::bind("127.0.0.1:0")?;
//! let to = Endpoint::parse(&format!("tcp://{}", upstream.local_addr()?))?;
//! std::thread::spawn(move || -> std::io::Result<()> {
//!     let (mut s, _) = upstream.accept()?;
//!     let mut request = Vec::new();
//!     s.read_to_end(&mut request)?;
//!     s.write_all(format!("got {} bytes", request.len()).as_bytes())
//! });
//!
//! let config = Config {
//!     high_water: Config::default().max_write_queue,
//!     ..Config::default()
//! };
//! let relay = Relay { upstream: to, ended: HashSet::new() };
//! let mut event_loop = EventLoop::with_config(relay, config)?;
//! let listener = event_loop.listen("tcp://127.0.0.1:0")?;
//! let addr = event_loop.context().local_addr(listener)?.as_inet().unwrap();
//! let handle = event_loop.handle();
//!
//! let client = std::thread::spawn(move || -> std::io::Result<String> {
//!     let mut s = TcpStream::connect(addr)?;
//!     s.write_all(&vec![7u8; 3_000_000])?; // more than the bound: reading pauses
//!     s.shutdown(Shutdown::Write)?; // half-close: the answer still comes back
//!     let mut answer = String::new();
//!     s.read_to_string(&mut answer)?;
//!     handle.stop();
//!     Ok(answer)
//! });
//! event_loop.run()?;
//! assert_eq!(client.join().unwrap()?, "got 3000000 bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # A request/response server
//!
//! Requests arrive in pieces; `on_data` is offered every byte not yet
//! consumed and returns how many it consumed, so a handler answers each
//! *complete* request and leaves the rest, which the loop keeps and offers
//! again with the next read. The framing helpers do the splitting, without
//! I/O and with a maximum size: [`LineCodec`](crate::LineCodec) for lines,
//! [`FrameCodec`](crate::FrameCodec) for length-prefixed frames
//! ([`encode_frame`](crate::encode_frame) writes them). A request over the
//! maximum is reported as [`FrameError::TooLong`](crate::FrameError) as
//! soon as the bytes prove it, never buffered without bound: answer and
//! close.
//!
//! Replies go out with [`Context::send`](crate::Context::send) (several sends in one turn cost one
//! system call), [`Context::send_vectored`](crate::Context::send_vectored) for a reply in pieces, or
//! [`Context::send_owned`](crate::Context::send_owned) for a reply already in a `Vec` of its own.
//!
//! Timeouts: [`Config::idle_timeout`](crate::Config::idle_timeout) closes a connection that makes no
//! progress (per connection: [`Context::set_idle_timeout`](crate::Context::set_idle_timeout)). For a
//! deadline on each request, use a per-connection timer:
//! [`Context::set_conn_timer`](crate::Context::set_conn_timer) when a request starts,
//! [`Context::cancel_timer`](crate::Context::cancel_timer) when it is answered, and
//! [`Handler::on_conn_timer`](crate::Handler::on_conn_timer) (with the connection's state) if it fires
//! first. A connection's timers never fire after it closed.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use std::time::Duration;
//!
//! use netloop::{ConnId, Context, EventLoop, FrameError, Handler, LineCodec, TimerId};
//!
//! /// How long a request may take to arrive whole once it has started.
//! const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
//!
//! #[derive(Default)]
//! struct Session {
//!     deadline: Option<TimerId>, // set while a request is under way
//! }
//!
//! /// Answers each line with the line in capitals.
//! struct Upper {
//!     codec: LineCodec,
//! }
//!
//! impl Handler for Upper {
//!     type Conn = Session;
//!     type Msg = ();
//!
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, s: &mut Session, data: &[u8]) -> usize {
//!         let mut lines = self.codec.lines(data);
//!         for line in &mut lines {
//!             match line {
//!                 Ok(line) => {
//!                     let _ = cx.send_vectored(id, &[&line.to_ascii_uppercase(), b"\n"]);
//!                 }
//!                 Err(FrameError::TooLong { max }) => {
//!                     let _ = cx.send(id, format!("ERR longer than {max} bytes\n").as_bytes());
//!                     let _ = cx.close(id);
//!                     return data.len();
//!                 }
//!                 Err(_) => return data.len(),
//!             }
//!         }
//!         let used = lines.consumed();
//!         if used == data.len() {
//!             // Every request answered: no deadline.
//!             if let Some(t) = s.deadline.take() {
//!                 cx.cancel_timer(t);
//!             }
//!         } else if s.deadline.is_none() {
//!             // A request has started: it has REQUEST_TIMEOUT to end.
//!             s.deadline = cx.set_conn_timer(id, REQUEST_TIMEOUT).ok();
//!         }
//!         used // the unfinished line is offered again with the next read
//!     }
//!
//!     fn on_conn_timer(&mut self, cx: &mut Context<'_>, id: ConnId, s: &mut Session, _: TimerId) {
//!         s.deadline = None;
//!         let _ = cx.send(id, b"ERR request timeout\n");
//!         let _ = cx.close(id); // flushed first
//!     }
//! }
//!
//! let mut event_loop = EventLoop::new(Upper { codec: LineCodec::new(64) })?;
//! let listener = event_loop.listen("tcp://127.0.0.1:0")?;
//! let addr = event_loop.context().local_addr(listener)?.as_inet().unwrap();
//! let handle = event_loop.handle();
//!
//! let client = std::thread::spawn(move || -> std::io::Result<Vec<String>> {
//!     let mut answers = Vec::new();
//!     // Requests split across writes, and two in one.
//!     let mut s = TcpStream::connect(addr)?;
//!     s.write_all(b"hel")?;
//!     std::thread::sleep(Duration::from_millis(20));
//!     s.write_all(b"lo\nworld\n")?;
//!     let mut buf = [0u8; 12];
//!     s.read_exact(&mut buf)?;
//!     answers.push(String::from_utf8_lossy(&buf).into_owned());
//!     // A request that never ends.
//!     s.write_all(b"slow")?;
//!     let mut rest = String::new();
//!     s.read_to_string(&mut rest)?;
//!     answers.push(rest);
//!     // A request over the maximum.
//!     let mut s = TcpStream::connect(addr)?;
//!     s.write_all(&[b'x'; 100])?;
//!     let mut rest = String::new();
//!     s.read_to_string(&mut rest)?;
//!     answers.push(rest);
//!     handle.stop();
//!     Ok(answers)
//! });
//! event_loop.run()?;
//! let answers = client.join().unwrap()?;
//! assert_eq!(answers, ["HELLO\nWORLD\n", "ERR request timeout\n", "ERR longer than 64 bytes\n"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Running N loops
//!
//! One [`EventLoop`](crate::EventLoop) is one thread: it serves as many
//! connections as you like on one core. To use N cores, a
//! [`Group`](crate::Group) runs N loops with one handler each, an acceptor
//! that balances new connections over them (round-robin, least
//! connections, source-IP hash, or per-loop SO_REUSEPORT), cross-loop sends
//! by [`RemoteId`](crate::RemoteId), and one stop for all; its
//! documentation has a whole server. The rest of this section is the
//! hand-made version, for a program that wants its own threads.
//!
//! Run N loops, one
//! per thread, each listening on the same port with SO_REUSEPORT
//! ([`ListenOptions`](crate::ListenOptions) `{ reuse_port: true, .. }`,
//! through [`EventLoop::listen_with`](crate::EventLoop::listen_with)): the
//! kernel spreads new connections over the listeners (on Linux by a hash
//! of the connection's addresses), and a connection stays on the loop that
//! accepted it for its whole life. This works today, for TCP and UDP, with
//! nothing shared between the loops.
//!
//! - Each loop has its own handler, so state shared by all connections is
//!   per loop. State that must be global goes behind a lock or an atomic
//!   in an `Arc` that every handler holds, or lives in one loop that the
//!   others ask with messages ([`Handle::send`](crate::Handle::send), each
//!   loop holding the others' handles).
//! - Limits ([`Config`](crate::Config)) are per loop: `max_connections` of 10,000 with 4
//!   loops admits up to 40,000.
//! - The first loop may listen on port 0 and the others on the port it
//!   got, as below; a fixed port needs nothing of the sort.
//! - To stop, stop every loop ([`Handle::stop`](crate::Handle::stop) on
//!   each). On Linux, connections still waiting in the accept queue of a
//!   listener that closes are reset, unless the kernel moves them to
//!   another listener of the port (`net.ipv4.tcp_migrate_req`).
//!
//! ```
//! use std::io::{self, Read};
//! use std::net::TcpStream;
//! use std::sync::mpsc;
//! use std::thread::{self, JoinHandle};
//!
//! use netloop::{ConnId, Context, EventLoop, Handle, Handler, ListenOptions};
//!
//! /// Tells each client which loop it landed on.
//! struct Hello(usize);
//!
//! impl Handler for Hello {
//!     type Conn = ();
//!     type Msg = ();
//!
//!     fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
//!         let _ = cx.send(id, format!("loop {}", self.0).as_bytes());
//!         let _ = cx.close(id);
//!     }
//! }
//!
//! /// Starts loop `n` on its own thread, listening on `url` with
//! /// SO_REUSEPORT; returns its handle and the port it listens on.
//! fn start(n: usize, url: String) -> (Handle<()>, u16, JoinHandle<io::Result<()>>) {
//!     let (tx, rx) = mpsc::channel();
//!     let thread = thread::spawn(move || -> io::Result<()> {
//!         let mut event_loop = EventLoop::new(Hello(n))?;
//!         let opts = ListenOptions { reuse_port: true, ..ListenOptions::default() };
//!         let listener = event_loop.listen_with(url.as_str(), &opts)?;
//!         let port = event_loop.context().local_addr(listener)?.as_inet().map_or(0, |a| a.port());
//!         let _ = tx.send((event_loop.handle(), port));
//!         event_loop.run()
//!     });
//!     match rx.recv() {
//!         Ok((handle, port)) => (handle, port, thread),
//!         Err(_) => panic!("loop {n} did not start: {:?}", thread.join()),
//!     }
//! }
//!
//! const LOOPS: usize = 3;
//! let (first, port, thread) = start(0, "tcp://127.0.0.1:0".into());
//! let mut loops = vec![(first, thread)];
//! for n in 1..LOOPS {
//!     let (handle, _, thread) = start(n, format!("tcp://127.0.0.1:{port}"));
//!     loops.push((handle, thread));
//! }
//!
//! for _ in 0..20 {
//!     let mut s = TcpStream::connect(("127.0.0.1", port))?;
//!     let mut hello = String::new();
//!     s.read_to_string(&mut hello)?;
//!     let n: usize = hello.trim_start_matches("loop ").parse()?;
//!     assert!(n < LOOPS, "{hello}");
//! }
//!
//! for (handle, _) in &loops {
//!     handle.stop();
//! }
//! for (_, thread) in loops {
//!     thread.join().unwrap()?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
