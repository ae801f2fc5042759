//! The handle other threads use to reach a loop.

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

/// A cloneable, `Send` handle to an [`EventLoop`](crate::EventLoop): other
/// threads send it messages and ask it to stop.
///
/// Messages from one handle arrive in the order sent; wakes coalesce, so a
/// burst of messages costs the loop one wake-up; no message is lost while the
/// loop lives.
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
    pub(crate) tx: mpsc::Sender<M>,
    pub(crate) shared: Arc<Shared>,
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
    /// Sends a message to the loop's [`Handler::on_message`](crate::Handler::on_message).
    ///
    /// # Errors
    /// Gives the message back if the loop was dropped.
    pub fn send(&self, msg: M) -> Result<(), M> {
        self.tx.send(msg).map_err(|e| e.0)?;
        self.shared.wake();
        Ok(())
    }

    /// Asks the loop to stop gracefully, as [`Context::stop`](crate::Context::stop).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
    }
}
