//! The loop of benches/peers/epoll-echo.c by hand on mio (whose sockets are
//! edge-triggered): one thread, connections in a slab, one shared 64 KiB read
//! buffer; each read is written back at once, what the kernel refuses is
//! kept as the connection's pending output, and reading stops until a
//! writable event has written it. A short read ends the read loop.
//!
//!   mio-echo [HOST:PORT]          (default 127.0.0.1:7001)

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const BUF: usize = 64 * 1024;
const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    pending: Vec<u8>, // output the kernel refused
    off: usize,       // pending[off..] is still to write
}

/// Writes `data` until done or refused: the bytes written, or an error.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// An event for a connection: write what is pending, then read and echo
/// until drained or a write is refused. Ok(false): close it.
fn serve(c: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    if c.off < c.pending.len() {
        c.off += write_some(&mut c.stream, &c.pending[c.off..])?;
        if c.off < c.pending.len() {
            return Ok(true); // still refused: wait for the next writable event
        }
        c.pending.clear();
        c.off = 0;
    }
    loop {
        let n = match c.stream.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let w = write_some(&mut c.stream, &buf[..n])?;
        if w < n {
            c.pending.extend_from_slice(&buf[w..n]);
            return Ok(true); // read nothing more until it is written
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; BUF];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            let token = Token(entry.key());
                            poll.registry().register(
                                &mut stream,
                                token,
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            entry.insert(Conn {
                                stream,
                                pending: Vec::new(),
                                off: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break, // out of descriptors and the like: next event
                    }
                }
                continue;
            }
            let key = event.token().0;
            let keep = match conns.get_mut(key) {
                Some(c) => !event.is_error() && serve(c, &mut buf).unwrap_or(false),
                None => continue,
            };
            if !keep {
                let mut c = conns.remove(key);
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}
