//! The netloop handler of the http example: bytes in, HTTP/1.1 responses out.
//!
//! `on_data` runs every complete request the read brought ([`proto::serve`])
//! and appends each response to one reusable buffer, then queues that buffer
//! with a single `send`, as the kv example does: a pipeline of a thousand
//! requests costs one copy and one `write`. An incomplete request's bytes are
//! left unconsumed, and a per-connection timer bounds how long it may take to
//! complete (slowloris): when it fires, `408 Request Timeout`, then close.
//!
//! Used by the example's `main.rs` and by `tests/http.rs`, which includes
//! this file and `proto.rs` as sibling modules.

// Included from the example and a test; each uses a subset.
#![allow(dead_code)]

use std::io;
use std::time::{Duration, SystemTime};

use netloop::{Config, ConnId, Context, EventLoop, Handler, TimerId};

use super::proto::{self, HttpDate, Limits};

/// Default time a request may take to arrive whole, from its first byte.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// A response buffer that grew past this (a big echo) is freed after use.
const RETAINED_OUT: usize = 256 * 1024;

/// The server: limits, the request timeout, the cached `Date` and the
/// response buffer.
#[derive(Debug)]
pub struct Http {
    limits: Limits,
    request_timeout: Duration,
    date: HttpDate,
    out: Vec<u8>,
}

/// A connection's state.
#[derive(Debug, Default)]
pub struct Client {
    proto: proto::Conn,     // Protocol state between reads.
    timer: Option<TimerId>, // The request timer, while a request is incomplete.
}

impl Http {
    /// A server with the default limits and `request_timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        Http {
            limits: Limits::default(),
            request_timeout,
            date: HttpDate::default(),
            out: Vec::new(),
        }
    }

    fn date(&mut self) -> &str {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.date.at(secs)
    }
}

/// The loop settings: room for a whole request (head and largest body)
/// unconsumed, and the keep-alive timeout as the idle timeout.
pub fn config() -> Config {
    let limits = Limits::default();
    Config {
        max_input: limits.max_head + limits.max_body + 64 * 1024,
        idle_timeout: Some(KEEP_ALIVE_TIMEOUT),
        ..Config::default()
    }
}

/// A loop running [`Http`] with [`config`]; the caller adds listeners and
/// runs it.
///
/// # Errors
/// The OS error from creating the loop.
pub fn event_loop(request_timeout: Duration) -> io::Result<EventLoop<Http>> {
    EventLoop::with_config(Http::new(request_timeout), config())
}

impl Handler for Http {
    type Conn = Client;
    type Msg = ();

    fn on_data(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        client: &mut Client,
        data: &[u8],
    ) -> usize {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let limits = self.limits;
        let outcome = proto::serve(data, &mut client.proto, &limits, self.date(), &mut out);
        if !out.is_empty() {
            // Fails only for a connection already closing; nothing to do then.
            let _ = cx.send(id, &out);
        }
        if out.capacity() > RETAINED_OUT {
            out = Vec::new();
        }
        self.out = out;
        if outcome.close {
            let _ = cx.close(id);
            return outcome.consumed;
        }
        // The timer covers one request, from its first byte: restarted when
        // a new request begins incomplete, stopped when none is pending.
        let new_request = outcome.consumed > 0 || client.timer.is_none();
        if !outcome.partial || new_request {
            if let Some(timer) = client.timer.take() {
                cx.cancel_timer(timer);
            }
        }
        if outcome.partial && client.timer.is_none() {
            client.timer = cx.set_conn_timer(id, self.request_timeout).ok();
        }
        outcome.consumed
    }

    fn on_conn_timer(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        client: &mut Client,
        timer: TimerId,
    ) {
        if client.timer != Some(timer) {
            return;
        }
        client.timer = None;
        log::debug!("{id}: request timeout");
        let mut out = Vec::new();
        proto::write_error(&mut out, 408, "request timeout\n", self.date());
        let _ = cx.send(id, &out);
        let _ = cx.close(id);
    }
}
