//! The handle other threads use to reach a loop: messages, stop, and the
//! wake-up that tells the loop to look.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// State shared between a loop and its handles.
pub(crate) struct Shared {
    pub(crate) waker: mio::Waker,    // wakes the loop's poll
    pub(crate) notified: AtomicBool, // a wake is already on its way: don't send another
    pub(crate) stop: AtomicBool,     // a handle asked the loop to stop
}

impl Shared {
    pub(crate) fn new(waker: mio::Waker) -> Shared {
        Shared {
            waker,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// Wakes the loop unless a wake is already pending. The loop clears
    /// `notified` before it drains the channel, so a message sent after the
    /// drain sees `false` and wakes it again: wakes coalesce, none is lost.
    pub(crate) fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("waking the loop failed: {e}");
            }
        }
    }
}

/// The sending side of the loop's channel: unbounded, or bounded by
/// [`Config::message_queue`](crate::Config::message_queue).
enum Tx<M> {
    Unbounded(mpsc::Sender<M>),
    Bounded(mpsc::SyncSender<M>),
}

impl<M> Clone for Tx<M> {
    fn clone(&self) -> Self {
        match self {
            Tx::Unbounded(tx) => Tx::Unbounded(tx.clone()),
            Tx::Bounded(tx) => Tx::Bounded(tx.clone()),
        }
    }
}

/// The loop's side of the channel.
pub(crate) struct Rx<M>(mpsc::Receiver<M>);

impl<M> Rx<M> {
    /// The next message, if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<M> {
        self.0.try_recv().ok()
    }
}

/// A handle and the loop's receiver, with at most `bound` messages waiting
/// (`None`: unbounded).
pub(crate) fn channel<M>(shared: Arc<Shared>, bound: Option<usize>) -> (Handle<M>, Rx<M>) {
    let (tx, rx) = match bound {
        None => {
            let (tx, rx) = mpsc::channel();
            (Tx::Unbounded(tx), rx)
        }
        Some(n) => {
            let (tx, rx) = mpsc::sync_channel(n);
            (Tx::Bounded(tx), rx)
        }
    };
    (Handle { tx, shared }, Rx(rx))
}

/// Why [`Handle::send`] gave a message back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SendError<M> {
    /// The loop's message queue holds
    /// [`Config::message_queue`](crate::Config::message_queue) messages
    /// already: try again later, or drop the message.
    Full(M),
    /// The loop is gone.
    Closed(M),
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m) | SendError::Closed(m) => m,
        }
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("Full(..)"),
            SendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("the loop's message queue is full"),
            SendError::Closed(_) => f.write_str("the loop is gone"),
        }
    }
}

impl<M> std::error::Error for SendError<M> {}

/// A cloneable, `Send` handle to an [`EventLoop`](crate::EventLoop): other
/// threads send it messages and ask it to stop.
///
/// Messages from one handle arrive in the order sent; wakes coalesce, so a
/// burst of messages costs the loop one wake-up; no message is lost while the
/// loop lives. With [`Config::message_queue`](crate::Config::message_queue)
/// set, at most that many messages wait; a send past it gives the message
/// back ([`SendError::Full`]) instead of blocking or growing without bound.
///
/// # Examples
/// ```
/// use netloop::{Context, EventLoop, Handler};
///
/// struct Counter(u64);
/// impl Handler for Counter {
///     type Conn = ();
///     type Msg = u64;
///     fn on_message(&mut self, cx: &mut Context<'_>, n: u64) {
///         self.0 += n;
///         if self.0 == 6 { cx.stop(); }
///     }
/// }
///
/// let mut event_loop = EventLoop::new(Counter(0))?;
/// let handle = event_loop.handle();
/// std::thread::spawn(move || for n in 1..=3 { handle.send(n).unwrap(); });
/// event_loop.run()?;
/// assert_eq!(event_loop.handler().0, 6);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Handle<M> {
    tx: Tx<M>,           // the loop's channel
    shared: Arc<Shared>, // its waker and flags
}

impl<M> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M> fmt::Debug for Handle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl<M: Send> Handle<M> {
    /// Sends a message to the loop's
    /// [`Handler::on_message`](crate::Handler::on_message). Never blocks.
    ///
    /// # Errors
    /// Gives the message back: [`SendError::Full`] when a bounded queue is
    /// full, [`SendError::Closed`] when the loop was dropped.
    pub fn send(&self, msg: M) -> Result<(), SendError<M>> {
        match &self.tx {
            Tx::Unbounded(tx) => tx.send(msg).map_err(|e| SendError::Closed(e.0))?,
            Tx::Bounded(tx) => tx.try_send(msg).map_err(|e| match e {
                mpsc::TrySendError::Full(m) => SendError::Full(m),
                mpsc::TrySendError::Disconnected(m) => SendError::Closed(m),
            })?,
        }
        self.shared.wake();
        Ok(())
    }

    /// Asks the loop to stop gracefully, as [`Context::stop`](crate::Context::stop).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
    }
}
