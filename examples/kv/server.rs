//! The netloop handler of the kv example: bytes in, RESP2 replies out.
//!
//! Each connection owns a [`Parser`] and a [`Session`]; the handler owns the
//! [`Store`]. `on_data` runs every complete command the read brought and
//! appends each reply to one reusable buffer, then queues that buffer with a
//! single `send`: a pipeline of a thousand commands costs one copy into the
//! connection's queue and one `write` when the loop flushes, before it polls
//! again. An incomplete command's bytes are left unconsumed; the loop keeps
//! them and offers them again with the next read.
//!
//! Used by the example's `main.rs` and by `tests/kv.rs`, which includes this
//! file, `resp.rs` and `store.rs` as sibling modules.

// Included from the example and a test; each uses a subset.
#![allow(dead_code)]

use std::io;
use std::time::Duration;

use netloop::{Config, ConnId, Context, EventLoop, Handler, TimerId};

use super::resp::{write_error, Parser};
use super::store::{Action, Session, Store};

/// How often the expiry sweep runs, as Redis's default `hz 10`.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(100);
/// Most keys with an expiry the sweep examines per tick, bounding its cost
/// (tens of microseconds); keys it has not reached yet still vanish on access.
pub const SWEEP_WORK: usize = 2000;
/// A reply buffer that grew past this (a huge `MGET`) is freed after use,
/// so one big reply does not pin memory for the life of the server.
const RETAINED_REPLIES: usize = 1024 * 1024;

/// The server: the store, shared by all connections, and the reply buffer.
#[derive(Debug, Default)]
pub struct Kv {
    store: Store,           // Every key.
    replies: Vec<u8>,       // Replies of one `on_data` call, reused.
    sweep: Option<TimerId>, // The expiry sweep's interval timer.
}

/// A connection's state.
#[derive(Debug, Default)]
pub struct Client {
    parser: Parser,   // Progress through a request split across reads.
    session: Session, // What `CLIENT SETNAME` set.
}

impl Kv {
    /// An empty server.
    pub fn new() -> Self {
        Kv::default()
    }

    /// The store, for inspection.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Most bytes of a client's request kept unconsumed, Redis's
/// `client-query-buffer-limit` (1 GiB): a request carrying the largest value
/// (512 MB, [`resp::DEFAULT_MAX_BULK_LEN`](super::resp::DEFAULT_MAX_BULK_LEN))
/// fits, so SET accepts it.
pub const MAX_INPUT: usize = 1024 * 1024 * 1024;
/// Most bytes of replies queued for a client (1 GiB). It must hold the
/// largest value too, or a GET of what SET accepted would reset the client;
/// netloop's default (64 MiB) is far below it. A client whose unread
/// replies pass it is reset, as netloop drops a reader that never reads
/// (Redis itself sets no limit for normal clients).
pub const MAX_WRITE_QUEUE: usize = 1024 * 1024 * 1024;

/// The loop settings the server wants: Redis's limits instead of netloop's
/// internet-facing defaults.
pub fn config() -> Config {
    Config {
        // Redis never closes idle clients by default (`timeout 0`).
        idle_timeout: None,
        max_input: MAX_INPUT,
        max_write_queue: MAX_WRITE_QUEUE,
        ..Config::default()
    }
}

/// A loop running [`Kv`] with [`config`] and the expiry sweep's timer set;
/// the caller adds listeners and runs it.
///
/// # Errors
/// The OS error from creating the loop.
pub fn event_loop() -> io::Result<EventLoop<Kv>> {
    let mut event_loop = EventLoop::with_config(Kv::new(), config())?;
    let timer = event_loop.context().set_interval(SWEEP_PERIOD);
    event_loop.handler_mut().sweep = Some(timer);
    Ok(event_loop)
}

impl Handler for Kv {
    type Conn = Client;
    type Msg = ();

    fn on_data(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        client: &mut Client,
        data: &[u8],
    ) -> usize {
        let now = cx.now();
        let mut consumed = 0;
        let mut close = false;
        self.replies.clear();
        loop {
            match client.parser.parse(&data[consumed..]) {
                Ok(Some((command, used))) => {
                    consumed += used;
                    let action = command.with_args(|args| {
                        self.store
                            .execute(&mut client.session, args, now, &mut self.replies)
                    });
                    if action == Action::Close {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // As Redis: the replies so far, the error, then close.
                    write_error(&mut self.replies, format!("ERR {e}").as_bytes());
                    log::debug!("{id}: {e}");
                    consumed = data.len();
                    close = true;
                    break;
                }
            }
        }
        if !self.replies.is_empty() {
            // Fails only for a connection already closing; nothing to do then.
            let _ = cx.send(id, &self.replies);
        }
        if self.replies.capacity() > RETAINED_REPLIES {
            self.replies = Vec::new();
        }
        if close {
            let _ = cx.close(id);
        }
        consumed
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        if Some(timer) == self.sweep {
            let removed = self.store.sweep(cx.now(), SWEEP_WORK);
            if removed > 0 {
                log::trace!("sweep removed {removed} expired keys");
            }
        }
    }
}
