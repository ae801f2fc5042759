//! TLS for the load bench (the `tls` feature): how each connection runs
//! TLS, and the certificate of the in-process server, made on the spot.

use std::path::Path;
use std::sync::Arc;

use netloop::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use netloop::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// How every connection of a run is made: `Context::connect_tls` with this
/// configuration, verifying the server as `name`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>, // trusts the server's CA; resumption off for --handshakes
    pub name: String,              // the server name to verify
}

/// A client configuration that trusts the certificates of the PEM file
/// `ca`; errors name the file.
pub fn client_config(ca: &Path) -> Result<ClientConfig, String> {
    netloop::tls::client_config(ca).map_err(|e| format!("--tls-ca: {e}"))
}

/// A fresh self-signed certificate for "localhost" (ECDSA P-256): the
/// in-process server's configuration, and a client configuration that
/// trusts that certificate and nothing else.
pub fn self_signed() -> Result<(ServerConfig, ClientConfig), String> {
    let bad = |e: &dyn std::fmt::Display| format!("making a certificate for the TLS server: {e}");
    let key = rcgen::KeyPair::generate().map_err(|e| bad(&e))?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| bad(&e))?;
    let der = CertificateDer::from(cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = ServerConfig::builder_with_provider(netloop::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .map_err(|e| bad(&e))?;
    let mut roots = RootCertStore::empty();
    roots.add(der).map_err(|e| bad(&e))?;
    let client = ClientConfig::builder_with_provider(netloop::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((server, client))
}

/// Turns session resumption off: every handshake is a full one.
pub fn no_resumption(config: &mut ClientConfig) {
    config.resumption = rustls::client::Resumption::disabled();
}

/// The server name to verify when --tls-name is not given: the host of
/// `url` (`tls://HOST:PORT`) if it is a DNS name, else "localhost" (an IP
/// address is rarely what a test certificate names).
pub fn default_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = match rest.strip_prefix('[') {
        Some(_) => "", // an IPv6 address
        None => rest.rsplit_once(':').map_or(rest, |(host, _)| host),
    };
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.into()
    }
}
