//! The relay: a netloop handler that pairs every accepted connection (the
//! client leg) with one connection to the upstream (the upstream leg) and
//! copies bytes both ways.
//!
//! # Pairing
//!
//! The client leg gets its state from `Default` when it is accepted; its
//! upstream leg is made with [`Context::connect_with`], whose state names
//! the client from the start, and the client's state is given the
//! upstream's id right after. Each leg's state thus holds its peer's id,
//! and every callback about one leg can act on the other. Bytes the client
//! sends while the upstream is still connecting are queued on the upstream
//! leg and written once it opens.
//!
//! # Bounds
//!
//! Each direction holds at most [`QUEUE_BOUND`] (256 KiB) plus one read
//! (at most 64 KiB, netloop's read buffer) in the queue of the leg it
//! writes to. After every `send` to one leg, the relay checks that leg's
//! queue; past the bound it pauses reading the *other* leg
//! ([`Context::pause_reading`]), and [`Handler::on_drain`] of the first leg
//! (its queue written out whole) resumes it. Meanwhile the kernel's
//! buffers fill and TCP's flow control stops the sender. Nothing else is
//! kept per relay but the two legs' states (below 100 bytes each), and an
//! unfinished PROXY header (at most [`ProxyParser::DEFAULT_MAX`] bytes, 4 KiB
//! and 16). A relay thus costs at most about 2 × 320 KiB while both
//! directions are backed up, and nothing but its states when idle (netloop
//! frees drained queues).
//!
//! The loop's own high-water pause is out of the way ([`config`]): it
//! pauses reading the leg whose *own* queue is long, which is the wrong one
//! for a relay (that leg's peer is the slow reader), and two peers that
//! each wait for the other to read would stop each other for good.
//!
//! # Copies
//!
//! A relayed byte is copied at most once in user space: `on_data` gets a
//! slice of the loop's read buffer and `send`s it to the other leg. When
//! that leg's queue is empty and the slice is large (16 KiB or more),
//! netloop writes it to the socket straight from the read buffer, with no
//! copy at all; whatever the kernel does not take, and every smaller slice,
//! is copied once into the leg's queue and written before the loop sleeps
//! (small messages sent together then cost one system call). A zero-copy
//! splice(2) between the sockets would save that copy but cannot work on
//! Unix and TCP sockets alike, nor let the relay see the PROXY header, and
//! it needs a pipe per direction.
//!
//! # Half-close and errors
//!
//! The end of file of one leg shuts down the other leg's write side once
//! its queue has been written ([`Context::shutdown`]); the other direction
//! goes on. When both legs have sent their end of file both are closed
//! (gracefully: queued bytes are flushed first). A leg that closes for any
//! other reason closes its peer: gracefully after a local close or an idle
//! timeout, with a reset ([`Context::abort`]) after a reset or another
//! error, so that a broken stream is never passed on as a complete one.

use std::collections::HashSet;
use std::time::Duration;

use netloop::proxy_protocol::{
    encode_proxy_v1, encode_proxy_v2, encode_proxy_v2_local, Parsed, ProxyCommand, ProxyParser,
    SocketKind,
};
use netloop::{Addr, CloseReason, Config, ConnId, Context, Endpoint, Handler, TimerId, UnixAddr};

/// Most bytes queued toward one leg before the other leg stops being read.
pub const QUEUE_BOUND: usize = 256 * 1024;

/// The PROXY protocol version written to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyVersion {
    /// Version 1: one line of text.
    V1,
    /// Version 2: binary.
    V2,
}

/// What the relay is told on the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where every relay connects.
    pub to: Endpoint,
    /// Require a PROXY protocol header (v1 or v2) first on every accepted
    /// connection.
    pub accept_proxy: bool,
    /// Write a PROXY protocol header naming the client to the upstream.
    pub send_proxy: Option<ProxyVersion>,
    /// How long the upstream may take to accept a connection.
    pub connect_timeout: Duration,
    /// How long a client may take to send its whole PROXY header.
    pub header_timeout: Duration,
    /// A leg making no progress this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// The loop settings of a relay: netloop's defaults, with the idle timeout
/// asked for and the high-water pause moved up to the hard cap on a queue
/// (see the module's "Bounds"): the relay's own bound keeps every queue far
/// below both, and the cap still resets a leg if that ever failed.
pub fn config(settings: &Settings) -> Config {
    let defaults = Config::default();
    Config {
        high_water: defaults.max_write_queue,
        idle_timeout: settings.idle_timeout,
        ..defaults
    }
}

/// One leg's state.
#[derive(Debug, Default)]
pub struct Leg {
    /// The other leg: the upstream of a client leg (once it is made), the
    /// client of an upstream leg.
    peer: Option<ConnId>,
    /// True for the upstream leg.
    upstream: bool,
    /// A client leg whose PROXY header has not arrived yet.
    awaiting_header: bool,
    /// A client leg's timer: for its PROXY header, then for its upstream
    /// to open.
    timer: Option<TimerId>,
    /// The client, as the upstream leg names it in its log lines.
    client: Option<Addr>,
}

/// The handler.
#[derive(Debug)]
pub struct Relay {
    settings: Settings,
    parser: ProxyParser,
    /// Legs whose end of file arrived while their peer's had not.
    eof: HashSet<ConnId>,
}

impl Relay {
    /// A relay with these settings.
    pub fn new(settings: Settings) -> Relay {
        Relay {
            settings,
            parser: ProxyParser::new(),
            eof: HashSet::new(),
        }
    }

    /// Connects the upstream leg of `client`, first queueing a PROXY header
    /// naming `src` → `dst` on it when asked to. False (the client being
    /// closed) if no socket could be made.
    fn start_upstream(
        &mut self,
        cx: &mut Context<'_>,
        client: ConnId,
        leg: &mut Leg,
        src: Addr,
        dst: Addr,
    ) -> bool {
        let header = self
            .settings
            .send_proxy
            .map(|v| proxy_header(v, &src, &dst));
        let state = Leg {
            peer: Some(client),
            upstream: true,
            client: Some(src),
            ..Leg::default()
        };
        let up = match cx.connect_with(&self.settings.to, state) {
            Ok(up) => up,
            Err(e) => {
                log::warn!(
                    "{client}: upstream {}: {e}; closing the client",
                    self.settings.to
                );
                let _ = cx.close(client);
                return false;
            }
        };
        leg.peer = Some(up);
        // The connect timeout is the client leg's timer: it fires
        // on_conn_timer with the client's state (unless the client is
        // closed first); an upstream that opened in time is left alone.
        leg.timer = cx
            .set_conn_timer(client, self.settings.connect_timeout)
            .ok();
        if let Some(header) = header {
            let _ = cx.send_owned(up, header);
        }
        true
    }

    /// Sends `data` from leg `id` to its peer; pauses reading `id` when the
    /// peer's queue passes [`QUEUE_BOUND`]. Returns the bytes consumed (all).
    fn relay(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &Leg, data: &[u8]) -> usize {
        let Some(peer) = leg.peer else {
            return data.len();
        };
        if data.is_empty() {
            return 0;
        }
        match cx.send(peer, data) {
            Ok(()) => {
                if cx.queued(peer).is_ok_and(|q| q > QUEUE_BOUND) {
                    let _ = cx.pause_reading(id);
                }
            }
            Err(e) => {
                // The peer is closing or gone: its on_close closes this leg
                // too, if it has not yet.
                log::debug!("{id}: relay to {peer}: {e}");
                let _ = cx.close(id);
            }
        }
        data.len()
    }

    /// A client leg's first bytes, while its PROXY header is awaited.
    fn header(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg, data: &[u8]) -> usize {
        let parsed = self.parser.parse(data);
        let peer = peer_addr(cx, id);
        match parsed {
            Ok(Parsed::Incomplete) => 0, // kept by the loop, offered again with more
            Ok(Parsed::Done { header, len }) => {
                leg.awaiting_header = false;
                if let Some(t) = leg.timer.take() {
                    cx.cancel_timer(t);
                }
                let local = local_addr(cx, id);
                let (src, dst) = match (header.source(), header.destination()) {
                    (Some(s), Some(d)) => (s.clone(), d.clone()),
                    // LOCAL or UNKNOWN: the connection's own addresses.
                    _ => (peer.clone(), local),
                };
                let what = match header.command() {
                    ProxyCommand::Local => " LOCAL",
                    ProxyCommand::Proxy => "",
                };
                log::info!(
                    "{id}: client {src} (PROXY v{}{what} header from {peer})",
                    header.version()
                );
                if !self.start_upstream(cx, id, leg, src, dst) {
                    return data.len();
                }
                len + self.relay(cx, id, leg, &data[len..])
            }
            Err(e) => {
                log::warn!("{id}: refused {peer}: {e}");
                let _ = cx.close(id);
                data.len()
            }
        }
    }
}

impl Handler for Relay {
    type Conn = Leg;
    type Msg = ();

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg) {
        if leg.upstream {
            log::debug!("{id}: upstream open for client {:?}", leg.peer);
            return;
        }
        if self.settings.accept_proxy {
            leg.awaiting_header = true;
            leg.timer = cx.set_conn_timer(id, self.settings.header_timeout).ok();
            return;
        }
        let (src, dst) = (peer_addr(cx, id), local_addr(cx, id));
        log::debug!("{id}: client {src}");
        self.start_upstream(cx, id, leg, src, dst);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg, data: &[u8]) -> usize {
        if leg.awaiting_header {
            return self.header(cx, id, leg, data);
        }
        self.relay(cx, id, leg, data)
    }

    fn on_drain(&mut self, cx: &mut Context<'_>, _: ConnId, leg: &mut Leg) {
        // This leg's queue is written out: read its peer again (a no-op
        // unless the relay paused it).
        if let Some(peer) = leg.peer {
            let _ = cx.resume_reading(peer);
        }
    }

    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg) {
        let Some(peer) = leg.peer else {
            if leg.awaiting_header {
                log::warn!(
                    "{id}: refused {}: end of file before a whole PROXY header",
                    peer_addr(cx, id)
                );
            }
            let _ = cx.close(id);
            return;
        };
        if self.eof.remove(&peer) {
            // Both directions are done.
            let _ = cx.close(id);
            let _ = cx.close(peer);
        } else {
            self.eof.insert(id);
            let _ = cx.shutdown(peer);
        }
    }

    fn on_conn_timer(&mut self, cx: &mut Context<'_>, id: ConnId, leg: &mut Leg, _: TimerId) {
        leg.timer = None;
        if leg.awaiting_header {
            log::warn!(
                "{id}: refused {}: no whole PROXY header within {:?}",
                peer_addr(cx, id),
                self.settings.header_timeout
            );
            let _ = cx.close(id);
        } else if let Some(up) = leg.peer.filter(|&up| !cx.is_open(up)) {
            log::warn!(
                "{id}: upstream {} did not answer within {:?}; closing client {}",
                self.settings.to,
                self.settings.connect_timeout,
                peer_addr(cx, id)
            );
            let _ = cx.abort(up);
            let _ = cx.close(id);
        }
    }

    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        leg: Leg,
        err: std::io::Error,
    ) {
        let Some(client) = leg.peer else { return };
        // `Interrupted`: the relay abandoned the connect itself (the client
        // closed, or the connect timed out, logged then).
        if err.kind() != std::io::ErrorKind::Interrupted {
            log::warn!(
                "{id}: upstream {} connect failed: {err}; closing client {}",
                self.settings.to,
                client_name(&leg)
            );
        }
        let _ = cx.close(client);
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, leg: Leg, reason: CloseReason) {
        self.eof.remove(&id);
        let Some(peer) = leg.peer else { return };
        match reason {
            CloseReason::Reset
            | CloseReason::Error(_)
            | CloseReason::WriteQueueFull
            | CloseReason::InputTooLarge
            | CloseReason::Panic => {
                log::debug!("{id}: {reason:?}: resetting {peer}");
                let _ = cx.abort(peer);
            }
            _ => {
                let _ = cx.close(peer);
            }
        }
    }
}

/// A PROXY header naming a connection from `src` to `dst`.
fn proxy_header(version: ProxyVersion, src: &Addr, dst: &Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match version {
        ProxyVersion::V1 => encode_proxy_v1(src, dst, &mut out),
        ProxyVersion::V2 => {
            if encode_proxy_v2(src, dst, SocketKind::Stream, &[], &mut out).is_err() {
                // (A Unix path the format cannot carry.)
                let _ = encode_proxy_v2_local(&[], &mut out);
            }
        }
    }
    out
}

fn peer_addr(cx: &mut Context<'_>, id: ConnId) -> Addr {
    cx.peer_addr(id).unwrap_or(Addr::Unix(UnixAddr::Unnamed))
}

fn local_addr(cx: &mut Context<'_>, id: ConnId) -> Addr {
    cx.local_addr(id).unwrap_or(Addr::Unix(UnixAddr::Unnamed))
}

fn client_name(leg: &Leg) -> String {
    match (&leg.client, leg.peer) {
        (Some(addr), Some(id)) => format!("{id} ({addr})"),
        (None, Some(id)) => id.to_string(),
        _ => "(none)".to_owned(),
    }
}
