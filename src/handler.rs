//! The handler trait: what a user implements to serve connections.

use std::io;

use crate::{Addr, CloseReason, ConnId, Context, Ready, TimerId};

/// What a server (or client) does: one method per event, each with a no-op
/// default, so a handler implements only what it needs.
///
/// Every method gets the handler itself (`&mut self`, where state shared by
/// all connections lives) and a [`Context`] to act on the loop. Methods about
/// one connection also get that connection's own state, `&mut Self::Conn`,
/// kept by the loop beside the socket: no map of the handler's own is needed.
///
/// # Edge-triggered, but you need not care
/// The loop reads until the socket would block (or a budget runs out, after
/// which it comes back before sleeping), so `on_data` sees every byte.
/// Only [`on_fd_ready`](Handler::on_fd_ready), for fds you register yourself,
/// asks you to read until `WouldBlock`.
///
/// # Panics
/// With [`Config::catch_panics`](crate::Config::catch_panics) on (the
/// default), a panic in a method is caught: the connection it was about is
/// closed with [`CloseReason::Panic`] and the loop goes on.
pub trait Handler: Sized {
    /// Per-connection state, created with `Default` when a connection opens
    /// (or a datagram socket is bound) and handed back by value to
    /// [`on_close`](Handler::on_close). Use `()` for none.
    type Conn: Default + 'static;
    /// Messages other threads send into the loop through a
    /// [`Handle`](crate::Handle). Use `()` for none.
    type Msg: Send + 'static;

    /// A stream connection opened: accepted by a listener, established by
    /// [`Context::connect`], or adopted. To refuse it, call
    /// [`Context::close`] (after queueing a reason with `send` if you like).
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut Self::Conn) {
        let _ = (cx, id, conn);
    }

    /// An outbound connection could not be made: `err` is what `connect`
    /// would have returned (ECONNREFUSED, ETIMEDOUT, …). The id is dead
    /// afterwards; [`on_close`](Handler::on_close) is not called for it.
    /// Its state is handed back: the one given to
    /// [`Context::connect_with`], or a `Default` one.
    fn on_connect_failed(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: Self::Conn,
        err: io::Error,
    ) {
        let _ = (cx, id, conn);
        log::debug!("connect {id} failed: {err}");
    }

    /// Bytes arrived. `data` is everything not yet consumed: what earlier calls
    /// left, then what was just read. Return how many bytes from the front you
    /// consumed; the rest is kept and offered again, with more, next time.
    /// The default consumes (discards) everything.
    fn on_data(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut Self::Conn,
        data: &[u8],
    ) -> usize {
        let _ = (cx, id, conn);
        data.len()
    }

    /// The peer shut down its sending side (end of file). Nothing more will
    /// arrive; sending may go on. The default closes gracefully: what is
    /// queued is flushed, then the connection closes with
    /// [`CloseReason::PeerClosed`].
    fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut Self::Conn) {
        let _ = conn;
        cx.close_with(id, CloseReason::PeerClosed);
    }

    /// The write queue emptied: everything sent so far was taken by the kernel.
    /// A producer of a large stream sends its next piece here. Called after
    /// the flush before the loop sleeps, or right after `on_data` when the
    /// reply it sent without a copy (see [`Context::send`]) was taken whole.
    fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut Self::Conn) {
        let _ = (cx, id, conn);
    }

    /// The write queue went above [`Config::high_water`](crate::Config::high_water)
    /// (`paused` true: reading from this connection stopped) or back to
    /// [`Config::low_water`](crate::Config::low_water) (`paused` false:
    /// reading resumed).
    fn on_backpressure(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut Self::Conn,
        paused: bool,
    ) {
        let _ = (cx, id, conn, paused);
    }

    /// A connection or datagram socket closed; its state is handed back. The
    /// id is stale from now on.
    fn on_close(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: Self::Conn,
        reason: CloseReason,
    ) {
        let _ = (cx, id, conn, reason);
    }

    /// A connection was accepted while the loop had
    /// [`Config::max_connections`](crate::Config::max_connections) open. It is
    /// closed after this returns (reason [`CloseReason::Refused`]); what you
    /// `send` here is flushed first, e.g. a "server busy" line.
    fn on_refuse(&mut self, cx: &mut Context<'_>, id: ConnId) {
        let _ = (cx, id);
    }

    /// A datagram arrived on a UDP or Unix datagram socket, from `from`
    /// (for a connected socket, its peer). Empty datagrams are delivered too.
    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut Self::Conn,
        data: &[u8],
        from: &Addr,
    ) {
        let _ = (cx, id, conn, data, from);
    }

    /// A datagram socket reported an error, such as ECONNREFUSED on a
    /// connected UDP socket after the peer's port answered with ICMP. The
    /// socket stays open.
    fn on_error(&mut self, cx: &mut Context<'_>, id: ConnId, err: io::Error) {
        let _ = (cx, id);
        log::debug!("socket {id}: {err}");
    }

    /// A timer set with [`Context::set_timer`] or [`Context::set_interval`] fired.
    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        let _ = (cx, timer);
    }

    /// A connection's own timer, set with [`Context::set_conn_timer`],
    /// fired. Never called after the connection closed: its timers go
    /// with it.
    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        conn: &mut Self::Conn,
        timer: TimerId,
    ) {
        let _ = (cx, id, conn, timer);
    }

    /// A message arrived from another thread through a [`Handle`](crate::Handle).
    fn on_message(&mut self, cx: &mut Context<'_>, msg: Self::Msg) {
        let _ = (cx, msg);
    }

    /// A file descriptor registered with [`Context::register_fd`] is ready.
    /// Registration is edge-triggered: read (or write) until `WouldBlock`.
    fn on_fd_ready(&mut self, cx: &mut Context<'_>, id: ConnId, ready: Ready) {
        let _ = (cx, id, ready);
    }

    /// A graceful stop began (see [`Context::stop`]): listeners are closed and
    /// connections will close once their queues drain. Last words sent here
    /// are flushed.
    fn on_stop(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }
}
