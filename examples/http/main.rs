// cargo run --release --example http -- [--listen URL]... [--request-timeout SECS]
//     [--tls-cert PEM --tls-key PEM] [--tls-handshake-timeout SECS]
//
// An HTTP/1.1 server: GET /plaintext (the TechEmpower plaintext test), GET /
// (a short HTML page), POST /echo (the body back); keep-alive and
// pipelining. Measure it with wrk; Ctrl-C stops gracefully.
//
// Limits (proto.rs, server.rs): a request head up to 8 KiB and 64 headers
// (else 431), a body up to 1 MiB by Content-Length (else 413; chunked
// bodies get 501), a request complete within --request-timeout of its first
// byte (else 408), an idle keep-alive connection closed after 75 s.
//
// HTTPS (build with `--features tls`): tls:// addresses are served with the
// certificate chain and key given (PEM), offering ALPN "http/1.1"; a
// handshake must complete within --tls-handshake-timeout (default 10 s).
//   cargo run --release --features tls --example http -- \
//       --listen tls://127.0.0.1:8443 --tls-cert cert.pem --tls-key key.pem
//   curl --cacert cert.pem https://localhost:8443/plaintext

mod proto;
mod server;

use std::time::Duration;

use clap::Parser;
use netloop::{EventLoop, ListenOptions, Transport};

/// An HTTP/1.1 server on TCP and Unix sockets (and TLS with `--features
/// tls`), built on netloop.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  http\n  http --listen tcp://0.0.0.0:8080 --listen unix:///tmp/http.sock\n  http --listen tls://127.0.0.1:8443 --tls-cert cert.pem --tls-key key.pem   (--features tls)\n\nTry it: curl http://127.0.0.1:8080/plaintext | curl --unix-socket /tmp/http.sock http://x/\n        curl --cacert cert.pem https://localhost:8443/plaintext\nMeasure it: wrk -t1 -c64 -d10s http://127.0.0.1:8080/plaintext"
)]
struct Args {
    /// Address to serve: tcp://HOST:PORT, unix:///PATH, unix://@NAME or
    /// tls://HOST:PORT (HTTPS: needs `--features tls`, --tls-cert and
    /// --tls-key). Repeatable. [default: tcp://127.0.0.1:8080]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<String>,
    /// Seconds a request may take to arrive whole, from its first byte;
    /// past it the server answers 408 and closes.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    request_timeout: f64,
    /// The certificate chain (PEM, the server's certificate first) for
    /// tls:// addresses.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) for tls:// addresses.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds a TLS handshake may take, from the accept; past it the
    /// connection is closed.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    tls_handshake_timeout: f64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

fn main() {
    // rustls warns of a peer's mistakes (an IP address as SNI, …) once per
    // connection: a client could fill the log; its errors still show.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    )
    .init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:8080".into()];
    }
    if let Err(e) = serve(&args) {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

/// True for a tls:// URL (one that does not parse is left to `listen`,
/// which names what is wrong with it).
fn is_tls(url: &str) -> bool {
    url.parse::<netloop::Endpoint>()
        .is_ok_and(|ep| ep.transport == Transport::Tls)
}

/// The listen options for tls:// URLs: the server configuration from
/// --tls-cert and --tls-key, offering ALPN http/1.1. An error names a
/// tls:// URL given without them.
#[cfg(feature = "tls")]
fn tls_options(args: &Args) -> std::io::Result<ListenOptions> {
    let tls_url = args.listen.iter().find(|u| is_tls(u));
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if let Some(url) = tls_url {
            return Err(invalid(format!(
                "{url}: serving tls:// needs --tls-cert PEM and --tls-key PEM"
            )));
        }
        return Ok(ListenOptions::default());
    };
    if tls_url.is_none() {
        log::warn!("--tls-cert and --tls-key are used by tls:// addresses only, and none is given");
    }
    let mut config = netloop::tls::server_config(cert, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ListenOptions {
        tls: Some(std::sync::Arc::new(config)),
        ..ListenOptions::default()
    })
}

/// Without the `tls` feature a tls:// URL is an error that says how to
/// build with it.
#[cfg(not(feature = "tls"))]
fn tls_options(args: &Args) -> std::io::Result<ListenOptions> {
    match args.listen.iter().find(|u| is_tls(u)) {
        Some(url) => Err(invalid(format!(
            "{url}: this build has no TLS: build the example with `--features tls` \
             (cargo run --features tls --example http -- …)"
        ))),
        None => Ok(ListenOptions::default()),
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

fn serve(args: &Args) -> std::io::Result<()> {
    let tls = tls_options(args)?;
    #[allow(unused_mut)]
    let mut config = server::config();
    #[cfg(feature = "tls")]
    {
        config.tls_handshake_timeout = Duration::from_secs_f64(args.tls_handshake_timeout);
    }
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let mut event_loop = EventLoop::with_config(server::Http::new(request_timeout), config)?;
    for url in &args.listen {
        let id = if is_tls(url) {
            event_loop.listen_with(url.as_str(), &tls)?
        } else {
            event_loop.listen(url.as_str())?
        };
        let at = event_loop.context().local_addr(id)?;
        log::info!("http listening on {url} ({at})");
    }
    event_loop.stop_on_signals()?;
    event_loop.run()?;
    log::info!("stopped");
    Ok(())
}
