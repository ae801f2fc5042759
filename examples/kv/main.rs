// cargo run --release --example kv -- [--listen URL]...
//
// A Redis-protocol (RESP2) key-value server: strings with expiry, pipelining,
// the commands of store.rs (GET SET INCR EXPIRE TTL MGET DEL …). Talk to it
// with redis-cli or measure it with redis-benchmark. Ctrl-C stops gracefully.
//
// Limits (server.rs): a value may be up to 512 MB, as in Redis; a request up
// to 1 GiB (Redis's client-query-buffer-limit), so a SET of such a value
// fits; a client's queued replies up to 1 GiB, so the GET of it fits too. A
// client past either limit is reset. No idle timeout, as Redis.

mod resp;
mod server;
mod store;

use clap::Parser;

/// A Redis-protocol key-value server on TCP and Unix sockets, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  kv\n  kv --listen tcp://0.0.0.0:6380 --listen unix:///tmp/kv.sock\n\nTalk to it: redis-cli -p 6380 set a 1 | redis-cli -s /tmp/kv.sock get a\nMeasure it: redis-benchmark -p 6380 -t set,get -P 16 -q"
)]
struct Args {
    /// Address to serve: tcp://HOST:PORT, unix:///PATH or unix://@NAME.
    /// Repeatable. [default: tcp://127.0.0.1:6380]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:6380".into()];
    }
    if let Err(e) = serve(&args.listen) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

fn serve(urls: &[String]) -> std::io::Result<()> {
    let mut event_loop = server::event_loop()?;
    for url in urls {
        let id = event_loop.listen(url.as_str())?;
        let at = event_loop.context().local_addr(id)?;
        log::info!("kv listening on {url} ({at})");
    }
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}
