//! TLS over TCP (the `tls` feature): configurations from PEM files.
//!
//! The loop drives each TLS connection itself (see the README's TLS
//! section): listen on a `tls://` address with
//! [`ListenOptions::tls`](crate::ListenOptions::tls), connect with
//! [`Context::connect_tls`](crate::Context::connect_tls); the handler sees
//! plaintext. This module makes the rustls configurations those take from
//! the PEM files a server is usually given, with rustls's `ring` provider
//! and its safe default protocol versions (TLS 1.2 and 1.3). Each returns
//! the configuration itself, not yet in an `Arc`, so that fields such as
//! `alpn_protocols` can be set first.
//!
//! A whole TLS echo server (certificate and key in PEM files; try it with
//! `openssl s_client -connect 127.0.0.1:7443 -CAfile cert.pem`):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use netloop::{CloseReason, ConnId, Context, EventLoop, Handler, ListenOptions};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Conn = ();
//!     type Msg = ();
//!
//!     // After the handshake: the peer is authenticated, ALPN agreed.
//!     fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
//!         let alpn = cx.alpn_protocol(id).ok().flatten().map(<[u8]>::to_vec);
//!         log::info!("{id} open, ALPN {alpn:?}");
//!     }
//!
//!     // Plaintext in, plaintext out: the loop decrypts and encrypts.
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
//!         let _ = cx.send(id, data);
//!         data.len()
//!     }
//!
//!     // A failed or timed-out handshake closes with CloseReason::Tls.
//!     fn on_close(&mut self, _: &mut Context<'_>, id: ConnId, _: (), why: CloseReason) {
//!         log::info!("{id} closed: {why:?}");
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut config = netloop::tls::server_config("cert.pem", "key.pem")?;
//!     config.alpn_protocols = vec![b"echo".to_vec()];
//!     let opts = ListenOptions { tls: Some(Arc::new(config)), ..Default::default() };
//!     let mut event_loop = EventLoop::new(Echo)?;
//!     event_loop.listen_with("tls://127.0.0.1:7443", &opts)?;
//!     event_loop.stop_on_signals()?; // Ctrl-C: close_notify to each client
//!     event_loop.run()
//! }
//! ```
//!
//! A client trusts a CA (or a self-signed server certificate) from a PEM
//! file: `Context::connect_tls("tls://host:7443",
//! Arc::new(netloop::tls::client_config("ca.pem")?), "host")`.

mod session;

pub(crate) use session::{Fed, TlsConn};

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every configuration made here uses: rustls's `ring`,
/// its cipher suites ordered AES-128-GCM first (then AES-256-GCM, then
/// ChaCha20-Poly1305), TLS 1.3 before TLS 1.2.
///
/// Why AES-128-GCM first: its TLS 1.3 suite hashes with SHA-256, which
/// ring runs on the CPU's SHA extensions where it has them, while SHA-384
/// (the AES-256-GCM suite's) runs in plain code: a handshake's key schedule
/// costs markedly less, and bulk encryption takes 10 AES rounds instead of
/// 14. [`server_config`] also sets `ignore_client_order`, so that the
/// server's order decides (clients commonly list AES-256-GCM first).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |suite: S| match suite {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    // A stable sort: within a rank, ring's own order stays.
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    Arc::new(provider)
}

/// An `InvalidInput` error naming the file.
fn bad(path: &Path, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {e}", path.display()),
    )
}

/// Every certificate in a PEM file, in order; an error if there is none.
fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, &e))?;
    if certs.is_empty() {
        return Err(bad(path, &"no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// A server configuration from a certificate chain (PEM, the server's
/// certificate first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1),
/// without client authentication; the server's order of cipher suites
/// decides ([`provider`]).
///
/// # Errors
/// `InvalidInput` naming the file: unreadable, no certificate or key in it,
/// or a key that does not match the certificate.
pub fn server_config(
    cert_pem: impl AsRef<Path>,
    key_pem: impl AsRef<Path>,
) -> io::Result<ServerConfig> {
    let (cert_pem, key_pem) = (cert_pem.as_ref(), key_pem.as_ref());
    let certs = certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| bad(key_pem, &e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert_pem, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(key_pem, &e))?;
    config.ignore_client_order = true; // the order of `provider`
    Ok(config)
}

/// A client configuration that trusts the certificates of a PEM file (a CA,
/// or a server's own self-signed certificate), without client
/// authentication.
///
/// # Errors
/// `InvalidInput` naming the file: unreadable, or no certificate rustls
/// accepts as a trust anchor in it.
pub fn client_config(ca_pem: impl AsRef<Path>) -> io::Result<ClientConfig> {
    let ca_pem = ca_pem.as_ref();
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots.add(cert).map_err(|e| bad(ca_pem, &e))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(ca_pem, &e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("netloop-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_file_is_named() {
        let e = server_config("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        let e = client_config("/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn pem_files_from_rcgen_load_and_a_wrong_key_is_named() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = temp("cert.pem", &cert.pem());
        let key_path = temp("key.pem", &key.serialize_pem());
        server_config(&cert_path, &key_path).unwrap();
        client_config(&cert_path).unwrap();
        let other = temp(
            "other-key.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let e = server_config(&cert_path, &other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&*other.to_string_lossy()), "{e}");
        for p in [cert_path, key_path, other] {
            std::fs::remove_file(p).unwrap();
        }
    }

    /// The server's order decides: AES-128-GCM, though the client (rustls's
    /// own default order) lists AES-256-GCM first.
    #[test]
    fn server_order_picks_aes_128_gcm() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = temp("order-cert.pem", &cert.pem());
        let key_path = temp("order-key.pem", &key.serialize_pem());
        let server = Arc::new(server_config(&cert_path, &key_path).unwrap());
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        assert_eq!(
            client.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            "the client asks for AES-256-GCM first"
        );
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c: rustls::Connection = rustls::ClientConnection::new(Arc::new(client), name)
            .unwrap()
            .into();
        let mut s: rustls::Connection = rustls::ServerConnection::new(server).unwrap().into();
        fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
            let mut wire = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut wire).unwrap();
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                to.read_tls(&mut rd).unwrap();
                to.process_new_packets().unwrap();
            }
        }
        for _ in 0..4 {
            pump(&mut c, &mut s);
            pump(&mut s, &mut c);
        }
        assert!(!s.is_handshaking());
        assert_eq!(
            s.negotiated_cipher_suite().map(|x| x.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        for p in [cert_path, key_path] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn file_without_certificate_is_named() {
        let path = temp("empty.pem", "not a certificate\n");
        let e = client_config(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        std::fs::remove_file(path).unwrap();
    }
}
