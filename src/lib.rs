#![doc = include_str!("../README.md")]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(unix))]
compile_error!("netloop runs on Unix systems (Linux, the BSDs, macOS) only: it is built on readiness polling of Unix file descriptors");

// Ids travel in the 64-bit token of the poll (slot and generation); a
// narrower token would cut the generation off and drop every event.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("netloop needs a 64-bit target: a connection id (slot and generation) travels in the poll's pointer-sized token");

mod addr;
mod clock;
mod close;
mod config;
mod conn;
mod context;
mod core;
mod error;
mod event_loop;
mod framing;
mod group;
pub mod guide;
mod handler;
mod id;
mod linger;
mod poller;
pub mod proxy_protocol;
mod readiness;
mod remote;
mod sock;
mod timer;
#[cfg(feature = "tls")]
pub mod tls;

/// rustls, whose `ServerConfig` and `ClientConfig` the `tls` feature's
/// [`ListenOptions::tls`] and [`Context::connect_tls`] take.
#[cfg(feature = "tls")]
pub use rustls;

pub use addr::{Addr, Endpoint, ToEndpoint, Transport, UnixAddr};
pub use close::CloseReason;
pub use config::{Config, Stats};
pub use context::{Context, Detached};
pub use error::Error;
pub use event_loop::EventLoop;
pub use framing::{encode_frame, FrameCodec, FrameError, Frames, LineBuffer, LineCodec, Lines};
pub use group::{Balance, Group, GroupHandle, GroupStats, RemoteId, Task, DEFAULT_GROUP_QUEUE};
pub use handler::Handler;
pub use id::{ConnId, TimerId};
pub use readiness::{Interest, Ready};
pub use remote::{Handle, SendError};
pub use sock::{listen_fds, ListenOptions, PeerCred, StdSocket};

/// socket2, whose [`SockRef`](socket2::SockRef) [`Context::socket`] returns
/// for typed socket options.
pub use socket2;
