//! The chat server's handler: it moves bytes between sockets and the
//! [`Room`], and enforces the limits that keep one client from hurting the
//! others.
//!
//! The work is split in three, and each part can be read (and tested) alone:
//! [`LineCodec`] turns bytes into lines, [`Room`] decides what lines mean and
//! who hears what, and this handler does the I/O in between. To write your
//! own line server, keep this file's shape and replace the room.
//!
//! # Limits, not luck
//! - **Long lines.** A line longer than [`ChatServer::new`]'s `max_line` is
//!   a broken or hostile client (a person typing never gets there): it is
//!   told why, disconnected, and the others hear `left (line too long)`.
//!   Dropping the line and going on would need a "skip to the next newline"
//!   state per client for no real user's benefit.
//! - **Idle clients.** [`config`] sets [`Config::idle_timeout`]: a client
//!   whose connection makes no progress for that long (it sends no complete
//!   line, and nothing sent to it is delivered) is disconnected and the
//!   others hear `left (timed out)`. The loop closes it gracefully (what is
//!   queued is flushed first) and resets it only if it is still stuck a
//!   sweep later. A client quietly reading a busy room is not idle; in a
//!   silent room, every silent client is.
//! - **Clients that stop reading.** Messages wait in each client's write
//!   queue until its kernel buffers take them. [`config`] caps that queue at
//!   [`MAX_BACKLOG`]: the `send` that would pass it drops the client at once
//!   (its queue is freed), and the others hear `left (too slow)`. So a stuck
//!   client costs the room at most `MAX_BACKLOG` bytes and never delays
//!   anyone: sends never wait.
//!
//! A client's half-finished last line, when it hangs up, is dropped: a line
//! is not a line until its newline arrives.

use std::time::Duration;

use netloop::{CloseReason, Config, ConnId, Context, Handler, LineCodec};

use crate::room::{Output, Reason, Room};

/// Longest line accepted by default, in bytes without the newline: roomy
/// for a person, small enough that a flood of them stays cheap.
pub const MAX_LINE: usize = 4096;

/// Most bytes that may wait to be sent to one client: about a thousand
/// typical lines. A client further behind than that is not reading.
pub const MAX_BACKLOG: usize = 1024 * 1024;

/// The loop configuration the chat server wants: the write-queue cap above
/// and the given idle timeout (`None`: never), otherwise the defaults.
pub fn config(idle_timeout: Option<Duration>) -> Config {
    Config {
        max_write_queue: MAX_BACKLOG,
        // Reading from a client pauses while its own queue is this full, so a
        // client that floods commands but reads no replies is slowed first.
        high_water: MAX_BACKLOG / 4,
        low_water: MAX_BACKLOG / 16,
        // What one turn reads from one member is broadcast to every other
        // before the loop writes: it must fit well inside their backlog, or
        // a single burst would drop members who read as fast as they can.
        read_budget: MAX_BACKLOG / 4,
        idle_timeout,
        ..Config::default()
    }
}

/// A chat server: one [`Room`] that every connection joins.
#[derive(Debug)]
pub struct ChatServer {
    room: Room<ConnId>,           // members, keyed by connection id, and their names
    codec: LineCodec,             // splits input into lines of at most max_line bytes
    outputs: Vec<Output<ConnId>>, // what the room asked for, reused across calls
}

impl ChatServer {
    /// A server with an empty room, accepting lines of at most `max_line`
    /// bytes.
    pub fn new(max_line: usize) -> ChatServer {
        ChatServer {
            room: Room::new(),
            codec: LineCodec::new(max_line),
            outputs: Vec::new(),
        }
    }

    /// Carries out what the room asked for, in order.
    ///
    /// A broadcast's message was built once by the room; `send` copies it
    /// into each member's queue, which is the only copy per member. The
    /// results of `send` are ignored on purpose: it fails only for a member
    /// that is already leaving (closed, closing, or just dropped for passing
    /// [`MAX_BACKLOG`]), and the loop reports that member's close to
    /// [`on_close`](Handler::on_close), which tells the room.
    fn deliver(&mut self, cx: &mut Context<'_>) {
        for output in self.outputs.drain(..) {
            match output {
                Output::To(id, msg) => {
                    let _ = cx.send(id, &msg);
                }
                Output::All { except, msg } => {
                    for id in self.room.members().filter(|&id| Some(id) != except) {
                        let _ = cx.send(id, &msg);
                    }
                }
                Output::Close(id) => {
                    let _ = cx.close(id); // after the goodbye is flushed
                }
            }
        }
    }
}

impl Handler for ChatServer {
    type Conn = (); // the room keeps each member's name
    type Msg = ();

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        self.room.join(id, &mut self.outputs);
        self.deliver(cx);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let mut lines = self.codec.lines(data);
        for line in lines.by_ref() {
            match line {
                Ok(line) => self.room.line(id, line, &mut self.outputs),
                Err(_too_long) => {
                    // The line, or the unfinished tail, passed the maximum.
                    let max = self.codec.max();
                    let why = format!("! line too long (at most {max} bytes): goodbye\n");
                    let _ = cx.send(id, why.as_bytes());
                    let _ = cx.close(id);
                    self.room.leave(id, Reason::LineTooLong, &mut self.outputs);
                }
            }
            // Deliver before the next line, as the room requires: a
            // broadcast goes to the members of the moment.
            self.deliver(cx);
        }
        // Complete lines are consumed; a partial one waits for the rest.
        lines.consumed()
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        let reason = match reason {
            CloseReason::WriteQueueFull => Reason::TooSlow,
            CloseReason::IdleTimeout => Reason::TimedOut,
            _ => Reason::Hangup,
        };
        // A member that left by `/quit` or a long line is gone already: no
        // second notice.
        self.room.leave(id, reason, &mut self.outputs);
        self.deliver(cx);
    }
}
