// cargo run --release --example http -- [--listen URL]... [--request-timeout SECS]
//
// An HTTP/1.1 server: GET /plaintext (the TechEmpower plaintext test), GET /
// (a short HTML page), POST /echo (the body back); keep-alive and
// pipelining. Measure it with wrk; Ctrl-C stops gracefully.
//
// Limits (proto.rs, server.rs): a request head up to 8 KiB and 64 headers
// (else 431), a body up to 1 MiB by Content-Length (else 413; chunked
// bodies get 501), a request complete within --request-timeout of its first
// byte (else 408), an idle keep-alive connection closed after 75 s.

mod proto;
mod server;

use std::time::Duration;

use clap::Parser;

/// An HTTP/1.1 server on TCP and Unix sockets, built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  http\n  http --listen tcp://0.0.0.0:8080 --listen unix:///tmp/http.sock\n\nTry it: curl http://127.0.0.1:8080/plaintext | curl --unix-socket /tmp/http.sock http://x/\nMeasure it: wrk -t1 -c64 -d10s http://127.0.0.1:8080/plaintext"
)]
struct Args {
    /// Address to serve: tcp://HOST:PORT, unix:///PATH or unix://@NAME.
    /// Repeatable. [default: tcp://127.0.0.1:8080]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
    /// Seconds a request may take to arrive whole, from its first byte;
    /// past it the server answers 408 and closes.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    request_timeout: f64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:8080".into()];
    }
    if let Err(e) = serve(&args.listen, Duration::from_secs_f64(args.request_timeout)) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

fn serve(urls: &[String], request_timeout: Duration) -> std::io::Result<()> {
    let mut event_loop = server::event_loop(request_timeout)?;
    for url in urls {
        let id = event_loop.listen(url.as_str())?;
        let at = event_loop.context().local_addr(id)?;
        log::info!("http listening on {url} ({at})");
    }
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}
