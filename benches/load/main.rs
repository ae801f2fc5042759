// cargo bench --bench load -- [OPTIONS]      (no options: the suite)
//
// A load generator for echo servers, built on netloop's own client side:
// closed loop (ping-pong or pipelined), open loop at a fixed rate with
// latency timed from each message's intended send time, connection churn,
// and a firehose (streams written as fast as the kernel takes them), over
// TCP, UDP and Unix sockets, and over TLS. Every echoed byte is checked.
// Without --addr it starts a netloop echo server in-process. See README,
// "Measuring throughput".
//
// TLS needs netloop's `tls` feature:
//   cargo bench --features tls --bench load -- --tls        # in-process TLS echo
//   cargo bench --features tls --bench load -- --addr tls://127.0.0.1:7443 --tls-ca cert.pem --connections 50
//   cargo bench --features tls --bench load -- --addr tls://127.0.0.1:7443 --tls-ca cert.pem --handshakes
// Each connection is made with `Context::connect_tls`; --handshakes measures
// full TLS handshakes per second (connect, handshake, close_notify, again).
// Built without the feature, the TLS options are refused with a clear error.

mod client;
mod os;
mod server;
#[cfg(feature = "tls")]
mod tls;

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use netloop::{Endpoint, Transport};

use client::{Errors, Plan, Report};

/// A load generator for echo servers (RFC 862), built on netloop: throughput,
/// latency percentiles and errors of TCP, UDP, Unix and TLS echo servers.
///
/// Each connection sends messages of --size bytes and checks that every byte
/// comes back, in order (reassembled across reads). Closed loop (the
/// default) keeps --depth messages in flight per connection; --rate switches
/// to an open loop that sends on a fixed schedule whatever the replies do;
/// --firehose writes each stream as fast as the kernel takes it; --churn
/// measures new connections per second instead. --tls runs every mode over
/// TLS, and --handshakes measures full TLS handshakes per second (both need
/// `cargo bench --features tls`). Connections open
/// before the clock starts, then --warmup seconds run unmeasured, then
/// --duration seconds are measured. Without options (as under `cargo bench`)
/// it runs a suite against an in-process echo server and prints a table.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    bin_name = "cargo bench --bench load --",
    after_help = "Examples:\n  \
      cargo bench --bench load                                   # the suite\n  \
      cargo bench --bench load -- --connections 50 --size 512    # in-process netloop echo\n  \
      cargo bench --bench load -- --addr tcp://127.0.0.1:7000 --depth 16 --duration 10\n  \
      cargo bench --bench load -- --addr udp://127.0.0.1:7000 --rate 50000 --json\n  \
      cargo bench --bench load -- --addr unix:///tmp/echo.sock --churn --csv timeline.csv\n  \
      cargo bench --bench load -- --addr tcp://127.0.0.1:7000 --firehose --size 512\n  \
      cargo bench --features tls --bench load -- --tls --connections 50     # in-process, over TLS\n  \
      cargo bench --features tls --bench load -- --addr tls://127.0.0.1:7443 --tls-ca cert.pem --connections 50\n  \
      cargo bench --features tls --bench load -- --addr tls://127.0.0.1:7443 --tls-ca cert.pem --handshakes\n\n\
      Figures: msg/s counts round trips completed inside the window; MiB/s the\n\
      echoed bytes of those (one direction); latency from send to the last\n\
      echoed byte (open loop: from when the message was due). Errors count the\n\
      whole run, ramp-up and warmup included.\n\n\
      --firehose: msg/s is echoed bytes / --size (whole messages echoed), MiB/s\n\
      the echoed bytes; latency runs from the write of the chunk holding a\n\
      message (handed to the kernel) to the arrival of its last echoed byte: it\n\
      measures how long bytes queue in the kernel's buffers at that throughput,\n\
      not a server's response time.\n\n\
      TLS (--tls, or an --addr tls://…; build with --features tls): the figures count\n\
      plaintext bytes; latency excludes the handshake, made before the window, except\n\
      in --churn (connect + handshake + one round trip) and --handshakes.\n\
      --handshakes: msg/s is full TLS handshakes per second (session resumption off;\n\
      JSON: messages_per_sec and handshakes_per_sec);\n\
      latency runs from the connect to the handshake's end (TCP's and TLS's\n\
      handshakes). Each connection then closes at once, gracefully on the TLS level:\n\
      a close_notify, then the socket is closed. Over TLS 1.3 the server's session\n\
      tickets mostly arrive after that, unread, and the client's kernel answers\n\
      them with a reset: the server sees close_notify, then a reset, and few\n\
      TIME_WAITs are left on either side."
)]
struct Args {
    /// Server to load: tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH, unix://@NAME,
    /// unixgram:///PATH, tls://HOST:PORT (TLS over TCP: needs --tls-ca).
    /// Without it, a netloop echo server is started in this process, on its
    /// own thread (see --transport, --tls).
    #[arg(long, value_name = "URL")]
    addr: Option<String>,

    /// Transport of the in-process server when --addr is not given.
    #[arg(long, value_name = "tcp|udp|unix|unixgram", default_value = "tcp",
          value_parser = ["tcp", "udp", "unix", "unixgram"])]
    transport: String,

    /// Concurrent connections (datagram sockets for udp/unixgram), spread
    /// over the threads.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,

    /// Bytes per message (at most 65,507 over UDP).
    #[arg(long, short = 's', value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=16 * 1024 * 1024))]
    size: u32,

    /// Messages in flight per connection in the closed loop: 1 is ping-pong,
    /// more is pipelining.
    #[arg(long, short = 'k', value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    depth: u32,

    /// Open loop: total messages per second, spread evenly over the
    /// connections, sent on schedule whether or not replies have come.
    /// Latency is timed from when each message was due, so a stalled server
    /// shows in the tail; how far the generator fell behind is reported.
    #[arg(long, short = 'r', value_name = "R", value_parser = positive)]
    rate: Option<f64>,

    /// Connection churn: each connection connects, makes one round trip and
    /// closes (with a reset, leaving no TIME_WAIT), then the next one starts.
    /// Reported as connections per second; latency includes the connect.
    #[arg(long, conflicts_with_all = ["rate", "depth"])]
    churn: bool,

    /// Firehose: each connection writes continuously, whole messages in
    /// chunks of up to 64 KiB, as fast as the kernel's buffers take them and
    /// never waiting for replies, and reads whatever comes back, checking
    /// every byte. msg/s is echoed bytes / --size; latency is from a
    /// message's write to the arrival of its echo (mostly time queued in the
    /// kernel's buffers). Streams only (tcp, unix).
    #[arg(long, conflicts_with_all = ["rate", "depth", "churn"])]
    firehose: bool,

    /// TLS: every connection is a TLS connection over TCP, made with
    /// netloop's `Context::connect_tls`; every mode works as over TCP, on the
    /// plaintext. Implied by an --addr tls://…; with --addr tcp://… it runs
    /// TLS to that address. Against --addr it needs --tls-ca. Without
    /// --addr, the in-process echo server listens on tls://127.0.0.1 with a
    /// self-signed certificate for "localhost" made at start, which the
    /// client trusts. --churn over TLS resets each connection after its round
    /// trip (no close_notify) and may resume sessions (rustls's default
    /// client cache, if the server allows it); --handshakes measures full
    /// handshakes. Needs `cargo bench --features tls`.
    #[arg(long, conflicts_with = "suite")]
    tls: bool,

    /// TLS handshake churn (needs --tls or an --addr tls://…): each
    /// connection connects, completes a full TLS handshake (session
    /// resumption off), sends close_notify and closes, and the next
    /// starts; no data is sent. Reported as handshakes per second; latency
    /// is from the connect to the handshake's end (when netloop calls
    /// on_open). --size is unused.
    #[arg(long, conflicts_with_all = ["rate", "depth", "churn", "firehose", "suite"])]
    handshakes: bool,

    /// TLS: the PEM file of the CA that signed the server's certificate, or
    /// of the server's self-signed certificate, to trust. Required with
    /// --addr and TLS. rustls refuses a server certificate that is itself
    /// marked as a CA (CA:TRUE, which `openssl req -x509` sets unless given
    /// `-addext basicConstraints=critical,CA:FALSE`).
    #[arg(long, value_name = "PEM", requires = "addr")]
    tls_ca: Option<std::path::PathBuf>,

    /// TLS: the server name to verify the certificate against (default: the
    /// host of --addr if it is a DNS name, else "localhost").
    #[arg(long, value_name = "NAME", requires = "addr")]
    tls_name: Option<String>,

    /// Seconds measured.
    #[arg(long, short = 'd', value_name = "S", default_value_t = 10.0, value_parser = positive)]
    duration: f64,

    /// Seconds run before the measured window, not counted (after the
    /// connections are open).
    #[arg(long, short = 'w', value_name = "S", default_value_t = 1.0, value_parser = non_negative)]
    warmup: f64,

    /// Load threads, each with its own event loop and share of the connections.
    #[arg(long, short = 't', value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,

    /// Seconds a reply (or a connect) may take before it counts as an error
    /// (the connection is then replaced; a datagram is given up).
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = positive)]
    timeout: f64,

    /// Print the final report as one JSON object on stdout (the last line);
    /// the human-readable summary goes to stderr.
    #[arg(long)]
    json: bool,

    /// Write the per-second timeline to FILE as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<std::path::PathBuf>,

    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,

    /// Run the suite (what `cargo bench` runs without options).
    #[arg(long, conflicts_with_all = ["addr", "json", "csv"])]
    suite: bool,

    /// Passed by `cargo bench` to every bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a number greater than 0, got {s:?}")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a number of 0 or more, got {s:?}")),
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// One second of the window, all threads together.
#[derive(Debug)]
struct Second {
    secs: f64,            // its length (the last may be shorter)
    messages: u64,        // round trips completed
    bytes: u64,           // echoed bytes of those
    errors: u64,          // errors counted in it
    hist: Histogram<u64>, // latencies, ns
    reported: usize,      // threads that sent theirs
}

/// The outcome of one run.
#[derive(Debug)]
struct Outcome {
    target: String,               // what was loaded
    args: Args,                   // how
    tls: bool,                    // over TLS
    duration: f64,                // seconds measured
    messages: u64,                // round trips in the window
    bytes: u64,                   // echoed bytes in the window
    latency: Latency,             // over the window
    errors: Errors,               // over the whole run
    client_cpu: f64,              // load threads' CPU, percent of one core, summed
    client_cpu_max: f64,          // the busiest load thread, percent of one core
    server_cpu: Option<f64>,      // the in-process server thread, percent of one core
    lag: Option<(f64, f64, f64)>, // open loop: achieved send rate, mean and max lateness (us)
    timeline: Vec<Second>,        // per second
    failed_connects: usize,       // connections that did not open in the ramp-up
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.duration
    }

    fn saturated(&self) -> bool {
        self.client_cpu_max >= 90.0
    }

    fn mode(&self) -> String {
        let a = &self.args;
        if a.handshakes {
            "handshakes".into()
        } else if a.churn {
            "churn".into()
        } else if a.firehose {
            "firehose".into()
        } else if let Some(r) = a.rate {
            format!("open loop {r} msg/s")
        } else if a.depth == 1 {
            "ping-pong".into()
        } else {
            format!("closed loop depth {}", a.depth)
        }
    }
}

fn main() {
    let raw: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args = Args::parse();
    // Silent unless asked: RUST_LOG=netloop=debug shows, for one, why a TLS
    // handshake failed.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let limit = os::raise_nofile();
    let result = if raw.is_empty() || args.suite {
        suite(&args, limit)
    } else {
        single(&args, limit)
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// One run as the options say, reported on stderr (and stdout for --json).
fn single(args: &Args, limit: u64) -> Result<(), String> {
    let outcome = run(args, limit, !args.quiet)?;
    if let Some(path) = &args.csv {
        write_csv(path, &outcome).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let summary = summary(&outcome);
    if args.json {
        eprint!("{summary}");
        println!("{}", json(&outcome));
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// Runs the load the options describe and gathers the figures.
fn run(args: &Args, limit: u64, progress: bool) -> Result<Outcome, String> {
    let use_tls = tls_wanted(args)?;
    #[cfg(feature = "tls")]
    let (client_tls, listen) = tls_setup(args, use_tls)?;
    #[cfg(not(feature = "tls"))]
    let listen = netloop::ListenOptions::default();
    let server = match &args.addr {
        Some(_) => None,
        None => {
            let t = match args.transport.as_str() {
                _ if use_tls => Transport::Tls,
                "udp" => Transport::Udp,
                "unix" => Transport::Unix,
                "unixgram" => Transport::Unixgram,
                _ => Transport::Tcp,
            };
            Some(
                server::Server::start(t, listen)
                    .map_err(|e| format!("starting the echo server: {e}"))?,
            )
        }
    };
    let url = match (&args.addr, &server) {
        (Some(a), _) => a.clone(),
        (None, Some(s)) => s.url.clone(),
        (None, None) => unreachable!("a server is started without --addr"),
    };
    let target: Endpoint = url.parse().map_err(|e: std::io::Error| e.to_string())?;
    let conns = args.connections as usize;
    let size = args.size as usize;
    if target.transport == Transport::Udp && size > 65_507 {
        return Err(format!(
            "--size {size} is more than a UDP datagram holds (65,507)"
        ));
    }
    if !matches!(
        target.transport,
        Transport::Tcp | Transport::Udp | Transport::Unix | Transport::Unixgram | Transport::Tls
    ) {
        return Err(format!("cannot load {url}"));
    }
    if args.firehose && !target.transport.is_stream() {
        return Err(format!(
            "--firehose needs a stream (tcp:// or unix://), not {url}"
        ));
    }
    // One descriptor per connection, two with the server in-process, and some
    // for the loops themselves.
    let need = conns as u64 * if server.is_some() { 2 } else { 1 } + 64;
    if need > limit {
        return Err(format!(
            "{conns} connections need about {need} file descriptors; the limit is {limit} \
             (raise it with `ulimit -n`)"
        ));
    }

    let plan = Arc::new(Plan {
        target: target.clone(),
        size,
        depth: args.depth as usize,
        rate: args.rate,
        churn: args.churn,
        firehose: args.firehose,
        handshakes: args.handshakes,
        timeout: Duration::from_secs_f64(args.timeout),
        #[cfg(feature = "tls")]
        tls: client_tls,
    });
    let threads = (args.threads as usize).min(conns);
    let (tx, rx) = mpsc::channel();
    let mut joins = Vec::new();
    let mut handles = Vec::new();
    let mut first = 0;
    for t in 0..threads {
        // As even a split as there is: the first `conns % threads` get one more.
        let n = conns / threads + usize::from(t < conns % threads);
        let rate = args.rate.map(|r| r * n as f64 / conns as f64);
        let (htx, hrx) = mpsc::channel();
        let (plan, tx) = (plan.clone(), tx.clone());
        let join = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || client::run(plan, first, n, rate, tx, htx))
            .map_err(|e| format!("starting a load thread: {e}"))?;
        let handle = hrx
            .recv()
            .map_err(|_| "a load thread died while starting".to_string())?;
        handles.push(handle);
        joins.push(join);
        first += n;
    }
    drop(tx);

    // Ramp-up: wait until every connection has opened or failed once.
    let ramp_deadline = Instant::now() + Duration::from_secs(10) + plan.timeout;
    let (mut ready, mut opened, mut failed, mut why) = (0, 0, 0, None);
    while ready < threads {
        let left = ramp_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Report::Ready {
                opened: o,
                failed: f,
                error,
            }) => {
                ready += 1;
                opened += o;
                failed += f;
                why = why.or(error);
            }
            Ok(_) => {}
            Err(_) => {
                for h in &handles {
                    h.stop();
                }
                return Err(format!("{conns} connections to {url} did not open in time"));
            }
        }
    }
    if opened == 0 {
        for h in &handles {
            h.stop();
        }
        return Err(format!(
            "could not connect to {url}: {}",
            why.unwrap_or_else(|| "no connection opened".into())
        ));
    }
    if failed > 0 && progress {
        eprintln!(
            "warning: {failed} of {conns} connections failed to open ({}); they keep retrying",
            why.as_deref().unwrap_or("?")
        );
    }

    // The window, the same for every thread.
    let start = Instant::now() + Duration::from_millis(5);
    let measure_at = start + Duration::from_secs_f64(args.warmup);
    let end_at = measure_at + Duration::from_secs_f64(args.duration);
    for h in &handles {
        let _ = h.send(client::Msg::Begin {
            start,
            measure_at,
            end_at,
        });
    }
    if progress {
        eprintln!(
            "{} {url}: {conns} connections, {size} B, {}, {threads} thread{}; warmup {}s, measuring {}s",
            if server.is_some() { "in-process netloop echo at" } else { "loading" },
            mode_of(args) + if use_tls { " over TLS" } else { "" },
            if threads == 1 { "" } else { "s" },
            args.warmup,
            args.duration
        );
    }
    std::thread::sleep(measure_at.saturating_duration_since(Instant::now()));
    let server_cpu0 = server.as_ref().and_then(|s| s.cpu());

    let seconds = (args.duration.ceil() as usize).max(1);
    let mut timeline: Vec<Second> = (0..seconds)
        .map(|i| Second {
            secs: (args.duration - i as f64).min(1.0),
            messages: 0,
            bytes: 0,
            errors: 0,
            hist: client::histogram(),
            reported: 0,
        })
        .collect();
    let mut shown = 0;
    let mut errors = Errors::default();
    let (mut cpu, mut cpu_max, mut sent, mut lag_sum, mut lag_max) =
        (0.0, 0.0f64, 0u64, Duration::ZERO, Duration::ZERO);
    let mut server_cpu = None;
    let mut done = 0;
    while done < threads {
        let report = rx
            .recv_timeout(
                Duration::from_secs_f64(args.duration + args.warmup) + Duration::from_secs(30),
            )
            .map_err(|_| "a load thread stopped reporting".to_string())?;
        match report {
            Report::Interval(iv) => {
                let Some(s) = timeline.get_mut(iv.index) else {
                    continue;
                };
                s.messages += iv.messages;
                s.bytes += iv.bytes;
                s.errors += iv.errors;
                let _ = s.hist.add(&iv.hist);
                s.reported += 1;
            }
            Report::Done(sum) => {
                if done == 0 {
                    // Taken as the first thread finishes: the window's end.
                    if let (Some(s), Some(c0)) = (&server, server_cpu0) {
                        server_cpu = s
                            .cpu()
                            .map(|c1| 100.0 * (c1 - c0).as_secs_f64() / args.duration);
                    }
                }
                done += 1;
                errors.add(&sum.errors);
                let pct = if sum.wall.is_zero() {
                    0.0
                } else {
                    100.0 * sum.cpu.as_secs_f64() / sum.wall.as_secs_f64()
                };
                cpu += pct;
                cpu_max = cpu_max.max(pct);
                sent += sum.sent;
                lag_sum += sum.lag_sum;
                lag_max = lag_max.max(sum.lag_max);
            }
            Report::Ready { .. } => {}
        }
        while shown < timeline.len() && timeline[shown].reported == threads {
            if progress {
                let s = &timeline[shown];
                let elapsed = shown as f64 + s.secs;
                eprintln!(
                    "[{elapsed:5.1}s] {:>11} msg/s {:>9.2} MiB/s  p99 {:>9.1} us  errors {}",
                    group(s.messages as f64 / s.secs),
                    s.bytes as f64 / s.secs / (1024.0 * 1024.0),
                    Latency::of(&s.hist).p99,
                    s.errors
                );
            }
            shown += 1;
        }
    }
    for j in joins {
        match j.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("a load thread failed: {e}")),
            Err(_) => return Err("a load thread panicked".into()),
        }
    }
    drop(server);

    let mut total = client::histogram();
    let (mut messages, mut bytes) = (0, 0);
    for s in &timeline {
        let _ = total.add(&s.hist);
        messages += s.messages;
        bytes += s.bytes;
    }
    let lag = args.rate.map(|_| {
        let mean = if sent == 0 {
            0.0
        } else {
            lag_sum.as_secs_f64() * 1e6 / sent as f64
        };
        (
            sent as f64 / args.duration,
            mean,
            lag_max.as_secs_f64() * 1e6,
        )
    });
    Ok(Outcome {
        target: url,
        args: args.clone(),
        tls: use_tls,
        duration: args.duration,
        messages,
        bytes,
        latency: Latency::of(&total),
        errors,
        client_cpu: cpu,
        client_cpu_max: cpu_max,
        server_cpu,
        lag,
        timeline,
        failed_connects: failed,
    })
}

/// Whether the options ask for TLS, after checking that they make sense
/// together; in a build without the `tls` feature, any TLS option is an
/// error that says how to build with it.
fn tls_wanted(args: &Args) -> Result<bool, String> {
    let addr = args.addr.as_deref();
    let scheme = addr.is_some_and(|a| a.starts_with("tls://"));
    let asked = [
        (args.tls, "--tls"),
        (args.handshakes, "--handshakes"),
        (scheme, "an --addr tls://…"),
        (args.tls_ca.is_some(), "--tls-ca"),
        (args.tls_name.is_some(), "--tls-name"),
    ];
    let Some(&(_, what)) = asked.iter().find(|(on, _)| *on) else {
        return Ok(false);
    };
    if cfg!(not(feature = "tls")) {
        let rest: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        return Err(format!(
            "{what} needs the tls feature: cargo bench --features tls --bench load -- {}",
            rest.join(" ")
        ));
    }
    if !(args.tls || scheme) {
        return Err(format!(
            "{what} is for TLS: add --tls (or give an --addr tls://HOST:PORT)"
        ));
    }
    match addr {
        None if args.transport != "tcp" => Err(format!(
            "--tls runs over TCP: the in-process server cannot be --transport {} with it",
            args.transport
        )),
        Some(a) if !(scheme || a.starts_with("tcp://")) => Err(format!(
            "--tls runs over TCP: {a} is neither tls:// nor tcp://"
        )),
        Some(a) if args.tls_ca.is_none() => Err(format!(
            "TLS to {a} needs --tls-ca PEM: the CA (or the server's self-signed certificate) \
             to trust"
        )),
        _ => Ok(true),
    }
}

/// The TLS side of a run, if `on`: how the client connects, and the
/// in-process server's listener options (a certificate made on the spot,
/// which the client then trusts).
#[cfg(feature = "tls")]
fn tls_setup(
    args: &Args,
    on: bool,
) -> Result<(Option<tls::ClientTls>, netloop::ListenOptions), String> {
    let mut listen = netloop::ListenOptions::default();
    if !on {
        return Ok((None, listen));
    }
    let (mut config, name) = match (&args.addr, &args.tls_ca) {
        (Some(addr), Some(ca)) => (
            tls::client_config(ca)?,
            args.tls_name
                .clone()
                .unwrap_or_else(|| tls::default_name(addr)),
        ),
        _ => {
            let (server, client) = tls::self_signed()?;
            listen.tls = Some(Arc::new(server));
            (client, "localhost".to_string())
        }
    };
    if args.handshakes {
        tls::no_resumption(&mut config);
    }
    let config = Arc::new(config);
    Ok((Some(tls::ClientTls { config, name }), listen))
}

fn mode_of(args: &Args) -> String {
    if args.handshakes {
        "handshakes".into()
    } else if args.churn {
        "churn".into()
    } else if args.firehose {
        "firehose".into()
    } else if let Some(r) = args.rate {
        format!("open loop at {} msg/s", group(r))
    } else if args.depth == 1 {
        "ping-pong".into()
    } else {
        format!("depth {}", args.depth)
    }
}

/// 1234567.8 as "1,234,568".
fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human-readable report.
fn summary(o: &Outcome) -> String {
    let mut s = String::new();
    let a = &o.args;
    let l = &o.latency;
    let _ = writeln!(
        s,
        "\n{} — {} connections, {} B, {}{}, {:.1} s measured",
        o.target,
        a.connections,
        a.size,
        o.mode(),
        if o.tls { " over TLS" } else { "" },
        o.duration
    );
    if a.handshakes {
        let _ = writeln!(s, "  handshakes/s  {:>12}", group(o.rate()));
    } else if a.churn {
        let _ = writeln!(s, "  connections/s {:>12}", group(o.rate()));
    } else {
        let _ = writeln!(s, "  messages/s    {:>12}", group(o.rate()));
    }
    let _ = writeln!(
        s,
        "  throughput    {:>12.2} MiB/s echoed",
        o.bytes as f64 / o.duration / (1024.0 * 1024.0)
    );
    let _ = writeln!(
        s,
        "  latency us    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    let e = &o.errors;
    let _ =
        writeln!(
        s,
        "  errors        {} (connect {}, closed {}, timeout {}, mismatch {}, send {}, unsent {})",
        e.total(), e.connect, e.closed, e.timeout, e.mismatch, e.send, e.unsent
    );
    if let Some((achieved, mean, max)) = o.lag {
        let _ = writeln!(
            s,
            "  schedule      {} msg/s sent of {} asked; behind schedule by {mean:.1} us on average, {max:.1} us at worst",
            group(achieved),
            group(a.rate.unwrap_or(0.0))
        );
    }
    let _ = write!(s, "  client CPU    {:.0}% of a core", o.client_cpu);
    if a.threads > 1 {
        let _ = write!(s, " (busiest thread {:.0}%)", o.client_cpu_max);
    }
    if let Some(c) = o.server_cpu {
        let _ = write!(s, "; in-process server {c:.0}%");
    }
    s.push('\n');
    if o.saturated() {
        let _ = match o.server_cpu.filter(|&c| c >= 90.0) {
            Some(srv) => writeln!(
                s,
                "  warning: client ({:.0}% CPU) and server ({srv:.0}%) were both saturated: this is the \
                 limit of the pair on this machine, not of the server alone",
                o.client_cpu_max
            ),
            None => writeln!(
                s,
                "  warning: the load generator was saturated ({:.0}% CPU): these figures measure the \
                 client, not the server; add --threads, or run the server elsewhere",
                o.client_cpu_max
            ),
        };
    }
    if o.failed_connects > 0 {
        let _ = writeln!(
            s,
            "  warning: {} connections failed to open at first",
            o.failed_connects
        );
    }
    s
}

/// The report as one JSON object: the keys other tools rely on (listed in
/// the README), then more.
fn json(o: &Outcome) -> String {
    let l = &o.latency;
    let e = &o.errors;
    let a = &o.args;
    let mut s = format!(
        "{{\"messages_per_sec\":{:.1},\"bytes_per_sec\":{:.1},\"connections\":{},\"errors\":{},\"duration_s\":{},\
         \"latency_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}",
        o.rate(),
        o.bytes as f64 / o.duration,
        a.connections,
        e.total(),
        o.duration,
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    let _ = write!(
        s,
        ",\"target\":{:?},\"mode\":{:?},\"size\":{},\"depth\":{},\"threads\":{},\"messages\":{},\"tls\":{}",
        o.target,
        o.mode(),
        a.size,
        a.depth,
        a.threads,
        o.messages,
        o.tls
    );
    if a.churn || a.handshakes {
        let _ = write!(s, ",\"connections_per_sec\":{:.1}", o.rate());
    }
    if a.handshakes {
        let _ = write!(s, ",\"handshakes_per_sec\":{:.1}", o.rate());
    }
    let _ = write!(
        s,
        ",\"errors_by_kind\":{{\"connect\":{},\"closed\":{},\"timeout\":{},\"mismatch\":{},\"send\":{},\"unsent\":{}}}",
        e.connect, e.closed, e.timeout, e.mismatch, e.send, e.unsent
    );
    if let Some((achieved, mean, max)) = o.lag {
        let _ = write!(
            s,
            ",\"rate_target\":{},\"rate_sent\":{achieved:.1},\"schedule_lag_us\":{{\"mean\":{mean:.1},\"max\":{max:.1}}}",
            a.rate.unwrap_or(0.0)
        );
    }
    let _ = write!(
        s,
        ",\"client_cpu_percent\":{:.1},\"client_saturated\":{}",
        o.client_cpu,
        o.saturated()
    );
    if let Some(c) = o.server_cpu {
        let _ = write!(s, ",\"server_cpu_percent\":{c:.1}");
    }
    s.push('}');
    s
}

fn write_csv(path: &std::path::Path, o: &Outcome) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "second,messages_per_sec,bytes_per_sec,p50_us,p90_us,p99_us,p999_us,max_us,errors"
    )?;
    let mut at = 0.0;
    for s in &o.timeline {
        at += s.secs;
        let l = Latency::of(&s.hist);
        writeln!(
            f,
            "{at:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{}",
            s.messages as f64 / s.secs,
            s.bytes as f64 / s.secs,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            s.errors
        )?;
    }
    f.flush()
}

/// The suite `cargo bench` runs: the in-process netloop echo under the
/// shapes of load that matter, one table row each.
fn suite(base: &Args, limit: u64) -> Result<(), String> {
    struct Case {
        name: &'static str, // the row's label
        transport: &'static str,
        connections: u32,
        size: u32,
        depth: u32,
        churn: bool,
        firehose: bool,
    }
    let case = |name, transport, connections, size, depth, churn| Case {
        name,
        transport,
        connections,
        size,
        depth,
        churn,
        firehose: false,
    };
    let firehose = |name, transport, connections, size| Case {
        firehose: true,
        ..case(name, transport, connections, size, 1, false)
    };
    let cases = [
        case("tcp ping-pong", "tcp", 1, 64, 1, false),
        case("tcp ping-pong", "tcp", 1, 512, 1, false),
        case("tcp ping-pong", "tcp", 50, 64, 1, false),
        case("tcp ping-pong", "tcp", 50, 512, 1, false),
        case("tcp ping-pong", "tcp", 1000, 64, 1, false),
        case("tcp ping-pong", "tcp", 1000, 512, 1, false),
        case("tcp pipelined", "tcp", 50, 64, 16, false),
        case("tcp 4 KiB", "tcp", 50, 4096, 1, false),
        case("tcp 64 KiB", "tcp", 50, 65536, 1, false),
        firehose("tcp firehose", "tcp", 50, 512),
        firehose("tcp firehose", "tcp", 1, 65536),
        case("tcp churn", "tcp", 50, 64, 1, true),
        case("udp ping-pong", "udp", 50, 64, 1, false),
        case("unix ping-pong", "unix", 50, 64, 1, false),
        case("unixgram ping-pong", "unixgram", 50, 64, 1, false),
    ];
    // Short cases keep the whole suite near a minute; pass --duration and
    // --warmup with --suite for steadier figures.
    let explicit =
        |flag: &str| std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let duration = if explicit("--duration") {
        base.duration
    } else {
        2.0
    };
    let warmup = if explicit("--warmup") {
        base.warmup
    } else {
        0.5
    };
    eprintln!(
        "netloop load suite: in-process netloop echo, {} cases of {duration} s (+{warmup} s warmup), {} load thread(s)",
        cases.len(),
        base.threads
    );
    let header = format!(
        "{:<20} {:>6} {:>6} {:>5} {:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5}",
        "case",
        "conns",
        "bytes",
        "depth",
        "msg/s",
        "MiB/s",
        "p50 us",
        "p99 us",
        "p99.9",
        "max us",
        "errors",
        "cli%",
        "srv%"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for c in &cases {
        let args = Args {
            addr: None,
            transport: c.transport.into(),
            connections: c.connections,
            size: c.size,
            depth: c.depth,
            rate: None,
            churn: c.churn,
            firehose: c.firehose,
            tls: false,
            handshakes: false,
            tls_ca: None,
            tls_name: None,
            duration,
            warmup,
            json: false,
            csv: None,
            quiet: true,
            suite: false,
            ..base.clone()
        };
        match run(&args, limit, false) {
            Ok(o) => {
                let l = &o.latency;
                println!(
                    "{:<20} {:>6} {:>6} {:>5} {:>12} {:>9.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>4.0}{} {:>5.0}",
                    c.name,
                    c.connections,
                    c.size,
                    if c.churn || c.firehose { "-".to_string() } else { c.depth.to_string() },
                    group(o.rate()) + if c.churn { " c" } else { "" },
                    o.bytes as f64 / o.duration / (1024.0 * 1024.0),
                    l.p50,
                    l.p99,
                    l.p999,
                    l.max,
                    o.errors.total(),
                    o.client_cpu,
                    if o.saturated() { "!" } else { " " },
                    o.server_cpu.unwrap_or(0.0)
                );
            }
            Err(e) => println!(
                "{:<20} {:>6} {:>6} {:>5}  error: {e}",
                c.name, c.connections, c.size, c.depth
            ),
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "\nmsg/s: round trips per second (\"c\": connections per second, each one connect + one round trip + close;\n\
         firehose: echoed bytes / size, latency from a message's write to its echo, mostly kernel buffering).\n\
         cli%, srv%: CPU use of the load thread and of the echo server thread, % of one core;\n\
         \"!\": the generator was saturated, so the row is a limit of this machine (client and\n\
         server together), not of the server alone; `--threads` and a remote --addr lift it."
    );
    Ok(())
}
