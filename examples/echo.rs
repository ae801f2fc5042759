// cargo run --release --example echo -- [--listen URL]...
//
// RFC 862 echo on every address given: TCP and Unix stream connections get
// back every byte they send; UDP and Unix datagram sockets get every datagram
// back to its sender. Ctrl-C stops gracefully (queued bytes are flushed);
// a second Ctrl-C stops at once.

use clap::Parser;
use netloop::{Addr, ConnId, Context, EventLoop, Handler};

/// An echo server (RFC 862) on TCP, UDP and Unix sockets, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  echo\n  echo --listen tcp://[::1]:7000 --listen unix:///tmp/echo.sock --listen unixgram:///tmp/echo.dgram\n\nTalk to it: nc 127.0.0.1 7000 | socat - UDP:127.0.0.1:7000 | socat - UNIX-CONNECT:/tmp/echo.sock"
)]
struct Args {
    /// Address to serve: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH,
    /// unix://@NAME or unixgram:///PATH. Repeatable.
    /// [default: tcp://127.0.0.1:7000 and udp://127.0.0.1:7000]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
}

struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Msg = ();

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        // Queued, all of it, in order; a peer that stops reading pauses our reading.
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_datagram(
        &mut self,
        cx: &mut Context<'_>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
        from: &Addr,
    ) {
        if let Err(e) = cx.send_to(id, data, from) {
            log::debug!("echo to {from}: {e}");
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:7000".into(), "udp://127.0.0.1:7000".into()];
    }
    if let Err(e) = serve(&args.listen) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

fn serve(urls: &[String]) -> std::io::Result<()> {
    let mut event_loop = EventLoop::new(Echo)?;
    for url in urls {
        let id = event_loop.listen(url.as_str())?;
        let at = event_loop.context().local_addr(id)?;
        log::info!("echo listening on {url} ({at})");
    }
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}
