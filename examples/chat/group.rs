//! The chat room on several loops (`chat --loops N`): members connect to
//! any loop and all share one room.
//!
//! # One room, on one loop
//! The [`Room`] lives on loop 0, the room loop, and nowhere else. Every
//! other loop only moves bytes: it turns each of its connections' opens,
//! lines and closes into a [`ChatMsg`] event for the room loop, and carries
//! out the deliveries and closes the room loop sends back. The room loop
//! applies events in the order they reach it, one at a time, exactly as the
//! single-loop server applies them in the order its callbacks run.
//!
//! Why not a copy of the room on every loop? A name is unique only if one
//! place decides: two loops could each let a member take `alice` at the
//! same moment, and `/who`, joins and leaves would need every loop to agree
//! on the order of events. Keeping the room in one place gets all of that
//! from the room's own code with no agreement protocol; the price is one
//! hop to the room loop and one back for each line, and the room loop doing
//! the room's work for everyone (small beside the I/O, which stays spread).
//!
//! # Delivery
//! A broadcast goes to each loop as one [`ChatMsg::Deliver`] naming that
//! loop's recipients, with the message built once and shared: a loop copies
//! it into each recipient's queue, as the single-loop server does. The
//! recipients are the room's members at the moment of the broadcast, as
//! the room asks. The room loop's own members are served at once; the
//! others' messages and closes, from the one room loop, travel through one
//! channel per loop and so stay in order.
//!
//! # Full queues
//! Each loop's queue is bounded. An event or delivery that finds it full
//! waits in an outbox for that loop, sent in order on a timer, so none is
//! lost or reordered. What bounds the outboxes: a line is refused with
//! `! server busy` while its loop's outbox to the room loop, or the room
//! loop's outboxes, hold [`MAX_OUTBOX`] messages; joins, leaves and closes
//! are always kept (at most a few per connection).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use netloop::{
    CloseReason, Config, ConnId, Context, Group, GroupHandle, Handler, LineCodec, RemoteId,
    SendError, TimerId,
};

use crate::room::{Output, Reason, Room};

/// The loop that holds the room.
pub const ROOM_LOOP: usize = 0;

/// Messages an outbox may hold before lines are refused.
pub const MAX_OUTBOX: usize = 64 * 1024;

/// How long a full queue is left before the outbox tries again.
const RETRY: Duration = Duration::from_millis(1);

/// What loops send each other.
#[derive(Debug)]
pub enum ChatMsg {
    /// To the room loop: a connection opened.
    Join(RemoteId),
    /// To the room loop: a line from a member, its newline stripped.
    Line(RemoteId, Vec<u8>),
    /// To the room loop: a member's connection closed (or is closing).
    Leave(RemoteId, Reason),
    /// To a member's loop: send the message to these connections.
    Deliver(Vec<ConnId>, Arc<[u8]>),
    /// To a member's loop: close this connection once its queue is flushed.
    Close(ConnId),
}

/// A chat group of `loops` loops (0: one per CPU), accepting lines of at
/// most `max_line` bytes, each loop with `config`.
pub fn group(loops: usize, config: Config, max_line: usize) -> io::Result<Group<GroupChat>> {
    Group::new(loops, config, |index, group| GroupChat {
        index,
        room: (index == ROOM_LOOP).then(Room::new),
        outboxes: (0..group.loops()).map(|_| VecDeque::new()).collect(),
        group,
        codec: LineCodec::new(max_line),
        outputs: Vec::new(),
        buckets: Vec::new(),
        retry: None,
    })
}

/// One loop's chat handler.
#[derive(Debug)]
pub struct GroupChat {
    index: usize,                     // this loop
    group: GroupHandle<GroupChat>,    // every loop
    room: Option<Room<RemoteId>>,     // on the room loop only
    codec: LineCodec,                 // splits input into lines
    outputs: Vec<Output<RemoteId>>,   // what the room asked for, reused
    buckets: Vec<Vec<ConnId>>,        // a broadcast's recipients by loop, reused
    outboxes: Vec<VecDeque<ChatMsg>>, // by loop: waiting for room in its queue
    retry: Option<TimerId>,           // the outboxes' retry timer
}

impl GroupChat {
    fn here(&self, id: ConnId) -> RemoteId {
        RemoteId::new(self.index, id)
    }

    /// True while the outboxes are too full to take another line.
    fn busy(&self) -> bool {
        match self.room {
            Some(_) => self.outboxes.iter().any(|o| o.len() >= MAX_OUTBOX),
            None => self.outboxes[ROOM_LOOP].len() >= MAX_OUTBOX,
        }
    }

    /// An event for the room: applied here on the room loop, else sent.
    fn event(&mut self, cx: &mut Context<'_>, event: ChatMsg) {
        if self.room.is_some() {
            self.apply(cx, event);
        } else {
            self.post(cx, ROOM_LOOP, event);
        }
    }

    /// Applies an event to the room and carries out what it asks (room loop).
    fn apply(&mut self, cx: &mut Context<'_>, event: ChatMsg) {
        let Some(room) = &mut self.room else {
            return; // an event for the room reached another loop: ignore it
        };
        match event {
            ChatMsg::Join(who) => room.join(who, &mut self.outputs),
            ChatMsg::Line(who, line) => room.line(who, &line, &mut self.outputs),
            ChatMsg::Leave(who, reason) => room.leave(who, reason, &mut self.outputs),
            other => return self.carry_out(cx, other),
        }
        self.deliver(cx);
    }

    /// Sends what the room asked for to the members' loops, in order.
    fn deliver(&mut self, cx: &mut Context<'_>) {
        let loops = self.group.loops();
        let mut outputs = std::mem::take(&mut self.outputs);
        for output in outputs.drain(..) {
            match output {
                Output::To(who, msg) => {
                    let msg = ChatMsg::Deliver(vec![who.id()], msg.into());
                    self.send_to_loop(cx, who.loop_index(), msg);
                }
                Output::All { except, msg } => {
                    let msg: Arc<[u8]> = msg.into();
                    self.buckets.resize_with(loops, Vec::new);
                    if let Some(room) = &self.room {
                        for who in room.members().filter(|&who| Some(who) != except) {
                            self.buckets[who.loop_index()].push(who.id());
                        }
                    }
                    for at in 0..loops {
                        if !self.buckets[at].is_empty() {
                            let ids = std::mem::take(&mut self.buckets[at]);
                            self.send_to_loop(cx, at, ChatMsg::Deliver(ids, msg.clone()));
                        }
                    }
                }
                Output::Close(who) => {
                    self.send_to_loop(cx, who.loop_index(), ChatMsg::Close(who.id()))
                }
            }
        }
        self.outputs = outputs;
    }

    /// A delivery or close for loop `at`: carried out now if that is this
    /// loop, else sent.
    fn send_to_loop(&mut self, cx: &mut Context<'_>, at: usize, msg: ChatMsg) {
        if at == self.index {
            self.carry_out(cx, msg);
        } else {
            self.post(cx, at, msg);
        }
    }

    /// Carries out a delivery or close for this loop's members. A send that
    /// fails is for a member already leaving; its close tells the room.
    fn carry_out(&mut self, cx: &mut Context<'_>, msg: ChatMsg) {
        match msg {
            ChatMsg::Deliver(ids, msg) => {
                for id in ids {
                    let _ = cx.send(id, &msg);
                }
            }
            ChatMsg::Close(id) => {
                let _ = cx.close(id);
            }
            event => self.apply(cx, event),
        }
    }

    /// Sends to loop `at` behind what its outbox holds; a full queue puts
    /// the message in the outbox and arms the retry timer.
    fn post(&mut self, cx: &mut Context<'_>, at: usize, msg: ChatMsg) {
        if !self.outboxes[at].is_empty() {
            self.outboxes[at].push_back(msg);
            return;
        }
        match self.group.message(at, msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                self.outboxes[at].push_back(msg);
                self.arm(cx);
            }
            Err(SendError::Closed(_)) => {} // the group is stopping
        }
    }

    fn arm(&mut self, cx: &mut Context<'_>) {
        if self.retry.is_none() {
            self.retry = Some(cx.set_timer(RETRY));
        }
    }

    /// Sends what the outboxes hold, in order, until a queue is full again.
    fn flush(&mut self, cx: &mut Context<'_>) {
        for at in 0..self.outboxes.len() {
            while let Some(msg) = self.outboxes[at].pop_front() {
                match self.group.message(at, msg) {
                    Ok(()) => {}
                    Err(SendError::Full(msg)) => {
                        self.outboxes[at].push_front(msg);
                        break;
                    }
                    Err(SendError::Closed(_)) => self.outboxes[at].clear(),
                }
            }
        }
        if self.outboxes.iter().any(|o| !o.is_empty()) {
            self.arm(cx);
        }
    }
}

impl Handler for GroupChat {
    type Conn = ();
    type Msg = ChatMsg;

    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
        let who = self.here(id);
        self.event(cx, ChatMsg::Join(who));
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let who = self.here(id);
        let mut lines = self.codec.lines(data);
        let mut events = Vec::new();
        let mut too_long = false;
        for line in lines.by_ref() {
            match line {
                Ok(line) => events.push(line.to_vec()),
                Err(_too_long) => {
                    too_long = true;
                    break;
                }
            }
        }
        let consumed = lines.consumed();
        for line in events {
            if self.busy() {
                let _ = cx.send(id, b"! server busy: line dropped\n");
            } else {
                self.event(cx, ChatMsg::Line(who, line));
            }
        }
        if too_long {
            let max = self.codec.max();
            let why = format!("! line too long (at most {max} bytes): goodbye\n");
            let _ = cx.send(id, why.as_bytes());
            let _ = cx.close(id);
            self.event(cx, ChatMsg::Leave(who, Reason::LineTooLong));
        }
        consumed
    }

    fn on_close(&mut self, cx: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
        let reason = match reason {
            CloseReason::WriteQueueFull => Reason::TooSlow,
            CloseReason::IdleTimeout => Reason::TimedOut,
            _ => Reason::Hangup,
        };
        // A member that left by `/quit` or a long line is gone already: the
        // room ignores a second leave.
        let who = self.here(id);
        self.event(cx, ChatMsg::Leave(who, reason));
    }

    fn on_message(&mut self, cx: &mut Context<'_>, msg: ChatMsg) {
        self.carry_out(cx, msg);
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        if self.retry == Some(timer) {
            self.retry = None;
            self.flush(cx);
        }
    }
}
