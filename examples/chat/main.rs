// cargo run --release --example chat -- [--listen URL]... [--idle-timeout SECS] [--loops N]
//
// A line chat room for nc and telnet. Every client joins one room as guestN;
// a line `hello` from alice reaches every other client as `alice: hello`.
// Commands: /nick NAME, /who, /me ACTION, /quit, /help.
//
// The example is four files, each with one job: room.rs is what chat means
// (no sockets), server.rs is the handler that feeds it lines and enforces
// the limits, group.rs spreads the clients over several loops sharing one
// room (--loops N; why the room lives on one loop is said there), and this
// file is the command line. Ctrl-C stops gracefully.

mod group;
mod room;
mod server;

use std::time::Duration;

use clap::Parser;
use netloop::EventLoop;

use server::ChatServer;

/// A line chat server for nc and telnet, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  chat\n  chat --listen tcp://0.0.0.0:7001 --listen unix:///tmp/chat.sock\n\nTalk to it: nc 127.0.0.1 7001 | telnet 127.0.0.1 7001 | socat - UNIX-CONNECT:/tmp/chat.sock"
)]
struct Args {
    /// Address to serve: tcp://HOST:PORT, unix:///PATH or unix://@NAME.
    /// Repeatable. [default: tcp://127.0.0.1:7001]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
    /// Disconnect a client when no line came from it and nothing sent to it
    /// was delivered for this long (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    idle_timeout: u64,
    /// Disconnect a client that sends a longer line, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = server::MAX_LINE)]
    max_line: usize,
    /// Event loops, each on a thread of its own, sharing one room (0: one
    /// per CPU). With one, the room and every client are on one loop.
    #[arg(long, value_name = "N", default_value_t = 1)]
    loops: usize,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:7001".into()];
    }
    if let Err(e) = serve(&args) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

fn serve(args: &Args) -> std::io::Result<()> {
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    if args.loops != 1 {
        return serve_group(args, idle);
    }
    let chat = ChatServer::new(args.max_line);
    let mut event_loop = EventLoop::with_config(chat, server::config(idle))?;
    for url in &args.listen {
        let id = event_loop.listen(url.as_str())?;
        let at = event_loop.context().local_addr(id)?;
        log::info!("chat listening on {url} ({at})");
    }
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}

/// `--loops N`: the room on loop 0, clients on every loop (see group.rs).
fn serve_group(args: &Args, idle: Option<Duration>) -> std::io::Result<()> {
    let mut chat = group::group(args.loops, server::config(idle), args.max_line)?;
    for url in &args.listen {
        let at = chat.listen(url.as_str())?;
        log::info!("chat listening on {url} ({at}), {} loops", chat.loops());
    }
    chat.stop_on_signals()?;
    chat.run()?;
    log::info!("stopped");
    Ok(())
}
