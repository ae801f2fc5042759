// cargo run --release --example echo -- [--listen URL]... [--loops N]
//
// RFC 862 echo on every address given: TCP and Unix stream connections get
// back every byte they send; UDP and Unix datagram sockets get every datagram
// back to its sender. Ctrl-C stops gracefully (queued bytes are flushed);
// a second Ctrl-C stops at once.
//
// --loops N serves with N event loops (0: one per CPU), each on a thread of
// its own (netloop's Group): an acceptor thread hands TCP and Unix stream
// connections to the loops in turn, every loop has its own SO_REUSEPORT UDP
// socket, and a Unix datagram socket is served by loop 0.
//
// TLS (build with `--features tls`):
//   echo --listen tls://127.0.0.1:7443 --tls-cert cert.pem --tls-key key.pem
// and talk to it with `openssl s_client -connect 127.0.0.1:7443`.

use clap::Parser;
use netloop::{Addr, Config, ConnId, Context, Group, Handler};

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
    /// Event loops, each on a thread of its own (0: one per CPU).
    #[arg(long, value_name = "N", default_value_t = 1)]
    loops: usize,
    /// The certificate chain (PEM) for tls:// addresses (`--features tls`).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) for tls:// addresses (`--features tls`).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
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
    // rustls warns of a peer's mistakes (an IP address as SNI, …) once per
    // connection: a client could fill the log; its errors still show.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    )
    .init();
    let mut args = Args::parse();
    if args.listen.is_empty() {
        args.listen = vec!["tcp://127.0.0.1:7000".into(), "udp://127.0.0.1:7000".into()];
    }
    let served = tls_options(&args).and_then(|opts| serve(&args.listen, args.loops, &opts));
    if let Err(e) = served {
        eprintln!("error: {e}"); // stderr even with RUST_LOG=off
        std::process::exit(1);
    }
}

/// The listen options for tls:// URLs: the server configuration from
/// --tls-cert and --tls-key. An error names a tls:// URL given without them.
fn tls_options(args: &Args) -> std::io::Result<netloop::ListenOptions> {
    let Some(url) = args.listen.iter().find(|u| u.starts_with("tls://")) else {
        return Ok(netloop::ListenOptions::default());
    };
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    #[cfg(feature = "tls")]
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(netloop::ListenOptions {
            tls: Some(std::sync::Arc::new(netloop::tls::server_config(cert, key)?)),
            ..Default::default()
        });
    }
    if cfg!(feature = "tls") {
        Err(invalid(format!(
            "{url}: serving tls:// needs --tls-cert PEM and --tls-key PEM"
        )))
    } else {
        Err(invalid(format!(
            "{url}: this build has no TLS: build the example with `--features tls` \
             (cargo run --features tls --example echo -- …)"
        )))
    }
}

fn serve(urls: &[String], loops: usize, opts: &netloop::ListenOptions) -> std::io::Result<()> {
    // One loop is a plain EventLoop underneath: a group of one has no
    // acceptor, and its loop listens itself.
    let mut group = Group::new(loops, Config::default(), |_, _| Echo)?;
    for url in urls {
        let at = if url.starts_with("tls://") {
            group.listen_with(url.as_str(), opts)?
        } else {
            group.listen(url.as_str())?
        };
        log::info!("echo listening on {url} ({at})");
    }
    if group.loops() > 1 {
        log::info!("{} loops", group.loops());
    }
    group.stop_on_signals()?;
    group.run()?;
    log::info!("stopped");
    Ok(())
}
