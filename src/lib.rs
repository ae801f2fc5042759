#![doc = include_str!("../README.md")]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]
#![cfg(unix)]

mod addr;
mod clock;
mod config;
mod context;
mod core;
mod error;
mod event_loop;
mod framing;
mod handler;
mod id;
mod remote;
mod sock;
mod timer;

pub use addr::{Addr, Endpoint, ToEndpoint, Transport, UnixAddr};
pub use config::{Config, Stats};
pub use context::{Context, Detached};
pub use error::Error;
pub use event_loop::EventLoop;
pub use framing::{encode_frame, FrameCodec, FrameError, Frames, LineBuffer, LineCodec, Lines};
pub use handler::{CloseReason, Handler, Ready};
pub use id::{ConnId, TimerId};
pub use remote::Handle;
pub use sock::{listen_fds, ListenOptions, PeerCred, StdSocket};

/// Readiness interests, for [`Context::register_fd`].
pub use mio::Interest;
/// socket2, whose [`SockRef`](socket2::SockRef) [`Context::socket`] returns
/// for typed socket options.
pub use socket2;
