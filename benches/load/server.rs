//! The in-process echo server: a netloop echo on its own thread, on an
//! ephemeral port (or a fresh socket path), used when no --addr is given.
//! Over TLS (`Transport::Tls`, with `ListenOptions::tls`) the handler is the
//! same: netloop hands it plaintext.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use netloop::{Addr, ConnId, Context, EventLoop, Handle, Handler, ListenOptions, Transport};

/// Messages to the server thread.
#[derive(Debug)]
pub enum Msg {
    /// Reply with the server thread's CPU time so far.
    Cpu(mpsc::Sender<Duration>),
}

/// The same echo as examples/echo.rs, plus the CPU probe.
struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Msg = Msg;

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
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
        let _ = cx.send_to(id, data, from);
    }

    fn on_message(&mut self, _: &mut Context<'_>, msg: Msg) {
        let Msg::Cpu(tx) = msg;
        let _ = tx.send(crate::os::thread_cpu());
    }
}

/// A running in-process server.
#[derive(Debug)]
pub struct Server {
    pub url: String,                                 // where it listens
    handle: Handle<Msg>,                             // to stop it and probe its CPU
    thread: Option<JoinHandle<std::io::Result<()>>>, // its loop
    path: Option<PathBuf>,                           // a socket file to remove at the end
}

impl Server {
    /// Starts an echo server for `transport`: 127.0.0.1 on a port the OS
    /// picks, or a socket file in the temp directory. `opts` are the
    /// listener's (`tls` for `Transport::Tls`).
    pub fn start(transport: Transport, opts: ListenOptions) -> std::io::Result<Server> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "netloop-bench-{}-{n}.{}",
            std::process::id(),
            if transport == Transport::Unix {
                "sock"
            } else {
                "dgram"
            }
        ));
        let (url, path) = match transport {
            Transport::Tcp | Transport::Tls => (format!("{transport}://127.0.0.1:0"), None),
            Transport::Udp => ("udp://127.0.0.1:0".to_string(), None),
            t => (format!("{}://{}", t.scheme(), path.display()), Some(path)),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                let setup = || -> std::io::Result<EventLoop<Echo>> {
                    let mut event_loop = EventLoop::new(Echo)?;
                    let id = event_loop.listen_with(url.as_str(), &opts)?;
                    let at = event_loop.context().local_addr(id)?;
                    let url = match at {
                        Addr::Inet(a) => format!("{}://{a}", transport.scheme()),
                        _ => url,
                    };
                    let _ = tx.send(Ok((url, event_loop.handle())));
                    Ok(event_loop)
                };
                match setup() {
                    Ok(mut event_loop) => event_loop.run(),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        Ok(())
                    }
                }
            })?;
        let (url, handle) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the echo server thread died"))??;
        Ok(Server {
            url,
            handle,
            thread: Some(thread),
            path,
        })
    }

    /// The server thread's CPU time so far.
    pub fn cpu(&self) -> Option<Duration> {
        let (tx, rx) = mpsc::channel();
        self.handle.send(Msg::Cpu(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}
