//! One connection's rustls session, driven sans-IO. The loop reads
//! ciphertext into its read buffer and hands it here ([`TlsConn::feed`]):
//! the plaintext comes back appended to the connection's held input, and
//! whatever rustls must send (handshake messages, alerts, session tickets)
//! appended to its output queue. A send goes the other way
//! ([`TlsConn::encrypt`]). Nothing here touches a socket: outcomes are
//! values, as in `conn`.

use std::io::{self, Read as _, Write as _};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// What feeding ciphertext came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Taken: `opened` if the handshake completed now, `eof` if the peer's
    /// close_notify arrived (nothing more will come).
    Ok { opened: bool, eof: bool },
    /// A TLS error: the alert (if any) is queued; close once it is flushed.
    Error,
}

/// One connection's TLS session.
pub(crate) struct TlsConn {
    conn: Connection,                 // the rustls state machine
    opened: bool,                     // the handshake completed (the handler heard on_open)
    eof: bool,                        // the peer's close_notify arrived
    early: usize,                     // plaintext sent during the handshake, held by rustls
    deadline: Option<crate::TimerId>, // the handshake's deadline, cancelled when it completes
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl TlsConn {
    /// The server side of an accepted connection.
    pub(crate) fn server(config: &Arc<ServerConfig>) -> io::Result<TlsConn> {
        let conn = ServerConnection::new(config.clone()).map_err(tls_error)?;
        Ok(TlsConn::new(conn.into()))
    }

    /// The client side of an outbound connection; the ClientHello is queued
    /// by [`TlsConn::pending`] into the output.
    pub(crate) fn client(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsConn> {
        let conn = ClientConnection::new(config.clone(), name).map_err(tls_error)?;
        Ok(TlsConn::new(conn.into()))
    }

    fn new(mut conn: Connection) -> TlsConn {
        // The loop's own queue bounds what is sent (high water, hard cap):
        // plaintext sent during the handshake waits in rustls unbounded.
        conn.set_buffer_limit(None);
        TlsConn {
            conn,
            opened: false,
            eof: false,
            early: 0,
            deadline: None,
        }
    }

    /// True until the handshake completes.
    pub(crate) fn is_handshaking(&self) -> bool {
        !self.opened
    }

    /// The handshake's deadline timer: kept to be cancelled, taken once.
    pub(crate) fn set_deadline(&mut self, timer: crate::TimerId) {
        self.deadline = Some(timer);
    }

    /// The handshake's deadline timer, if still armed.
    pub(crate) fn take_deadline(&mut self) -> Option<crate::TimerId> {
        self.deadline.take()
    }

    /// True for the client side (`connect_tls`).
    pub(crate) fn is_client(&self) -> bool {
        matches!(self.conn, Connection::Client(_))
    }

    /// Plaintext sent during the handshake and held by rustls until it
    /// completes (then encrypted into the queue): counted with the queue.
    pub(crate) fn early(&self) -> usize {
        self.early
    }

    /// Appends what rustls has to send to `out`.
    pub(crate) fn pending(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Takes all of `cipher`: the plaintext it carries is appended to
    /// `plain`, what rustls answers (handshake, alerts) to `out`.
    pub(crate) fn feed(
        &mut self,
        mut cipher: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Fed {
        let mut eof = false;
        while !cipher.is_empty() {
            // `read_tls` may take only part of the slice: the rest is read
            // by the next round, once the records taken are processed.
            match self.conn.read_tls(&mut cipher) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("tls read: {e}");
                    self.pending(out);
                    return Fed::Error;
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    log::debug!("tls: {e}");
                    self.pending(out); // the alert
                    return Fed::Error;
                }
            };
            let n = state.plaintext_bytes_to_read();
            eof |= state.peer_has_closed();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                if self.conn.reader().read_exact(&mut plain[start..]).is_err() {
                    plain.truncate(start);
                    return Fed::Error;
                }
            }
        }
        self.pending(out);
        let opened = !self.opened && !self.conn.is_handshaking();
        self.opened |= opened;
        if opened {
            self.early = 0; // encrypted into `out` by `pending`
        }
        let eof = eof && !self.eof;
        self.eof |= eof;
        Fed::Ok { opened, eof }
    }

    /// Encrypts `plain` (buffered by rustls until the handshake completes)
    /// and appends the records to `out`.
    pub(crate) fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        // Unbounded (`set_buffer_limit(None)`): the write takes it all.
        let _ = self.conn.writer().write_all(plain);
        if !self.opened {
            self.early += plain.len();
        }
        self.pending(out);
    }

    /// Queues close_notify (after everything sent so far).
    pub(crate) fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.pending(out);
    }

    /// The protocol agreed by ALPN, once the handshake has completed.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The certificate chain the peer presented, once the handshake has
    /// completed (a server sees one only when it asked for client
    /// certificates).
    pub(crate) fn peer_certificates(
        &self,
    ) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}
