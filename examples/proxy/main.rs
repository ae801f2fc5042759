// cargo run --release --example proxy -- --listen URL... --to URL
//     [--accept-proxy] [--send-proxy v1|v2] [--connect-timeout SECS]
//     [--idle-timeout SECS] [--header-timeout SECS]
//
// A TCP and Unix stream relay (a layer-4 proxy, as HAProxy's `mode tcp`):
// every connection accepted on a --listen address is relayed, both ways, to
// a new connection to --to. relay.rs is the handler; its module docs say
// how the two legs are paired, how memory is bounded and what is copied.
//
// - Half-close: one side's end of file shuts down the other side's write
//   side once what was queued for it is written; the other direction goes
//   on. A reset on one side resets the other.
// - Upstream failure: a refused connect, or none within --connect-timeout
//   (default 5 s), closes the client with a warning naming the upstream.
// - Memory: each direction holds at most 256 KiB queued, plus one read
//   (64 KiB); past it the sending side is no longer read until the queue
//   is written out, so TCP's flow control holds the sender back.
// - Copies: at most one per relayed byte in user space (the read buffer's
//   slice into the other side's queue), none when the other side's queue
//   is empty and the kernel takes a large read whole.
// - --accept-proxy: every accepted connection must start with a PROXY
//   protocol header, version 1 or 2 (the parser reads it as it arrives, at
//   most 4 KiB and 16 bytes); the real client is logged. A connection
//   whose first bytes are not a valid header, or that has not sent a whole
//   one within --header-timeout (default 5 s), is closed without anything
//   being relayed or any upstream connection made.
// - --send-proxy v1|v2: the upstream connection starts with a header
//   naming the client (the accepted header's addresses with
//   --accept-proxy, else the client connection's own).
// - --idle-timeout: a side making no progress this long is closed, and
//   with it the other (default 300 s; 0 turns it off). A side that is not
//   read because the other side reads slowly makes no progress of its own.
//
// Ctrl-C stops gracefully (queued bytes are flushed); a second stops at once.

mod relay;

use std::time::Duration;

use clap::Parser;
use netloop::{Endpoint, EventLoop};

use relay::{ProxyVersion, Relay, Settings};

/// A TCP and Unix stream relay with PROXY protocol support, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  proxy --listen tcp://127.0.0.1:8000 --to tcp://127.0.0.1:7000\n  proxy --listen tcp://0.0.0.0:8443 --listen unix:///tmp/p.sock --to tcp://10.0.0.2:443 --send-proxy v2\n  proxy --listen tcp://127.0.0.1:9000 --accept-proxy --to unix:///run/app.sock   (behind HAProxy's send-proxy-v2)"
)]
struct Args {
    /// Address to accept connections on: tcp://HOST:PORT, unix:///PATH or
    /// unix://@NAME. Repeatable.
    #[arg(long = "listen", value_name = "URL", required = true)]
    listen: Vec<String>,
    /// Where to relay each connection: tcp://HOST:PORT, unix:///PATH or
    /// unix://@NAME (a host name is resolved once, at start).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Require a PROXY protocol header (v1 or v2) first on every accepted
    /// connection; close, relaying nothing, a connection without one.
    #[arg(long)]
    accept_proxy: bool,
    /// Start each upstream connection with a PROXY protocol header of this
    /// version naming the client.
    #[arg(long, value_enum, value_name = "VERSION")]
    send_proxy: Option<ProxyVersion>,
    /// Seconds the upstream may take to accept a connection.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds a side may make no progress before the relay is closed
    /// (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    idle_timeout: f64,
    /// Seconds a client may take to send its whole PROXY header (with
    /// --accept-proxy).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    header_timeout: f64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

/// Seconds as a duration: above zero, or zero too if `zero_ok`.
fn seconds(name: &str, secs: f64, zero_ok: bool) -> std::io::Result<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if zero_ok || !d.is_zero() => Ok(d),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--{name} {secs}: expected a number of seconds above zero"),
        )),
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let to = Endpoint::parse(&args.to)?;
    if !to.transport.is_stream() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--to {to}: a stream address (tcp:// or unix://) is needed"),
        ));
    }
    let idle = seconds("idle-timeout", args.idle_timeout, true)?;
    let settings = Settings {
        to: to.clone(),
        accept_proxy: args.accept_proxy,
        send_proxy: args.send_proxy,
        connect_timeout: seconds("connect-timeout", args.connect_timeout, false)?,
        header_timeout: seconds("header-timeout", args.header_timeout, false)?,
        idle_timeout: (!idle.is_zero()).then_some(idle),
    };
    let config = relay::config(&settings);
    let mut event_loop = EventLoop::with_config(Relay::new(settings), config)?;
    // Before listening: once the proxy says where it listens, Ctrl-C works.
    event_loop.stop_on_signals()?;
    for url in &args.listen {
        let ep = Endpoint::parse(url)?;
        if !ep.transport.is_stream() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--listen {url}: a stream address (tcp:// or unix://) is needed"),
            ));
        }
        let id = event_loop.listen(ep)?;
        let at = event_loop.context().local_addr(id)?;
        log::info!("proxy listening on {url} ({at}), relaying to {to}");
    }
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}
