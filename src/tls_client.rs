//! The rustls client setup every outgoing https connection shares: the upstream
//! (`upstream.ca_file`) and the identity providers' JWKS URLs
//! (`auth.jwks_urls[].ca_file`). Trust is the webpki roots, or only the CA
//! certificates of a PEM file when one is given. And the one connector (TCP, then
//! TLS for `https://`) that both kinds of connection are made with.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use rustls::client::WantsClientCert;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

/// The webpki roots, or the certificates of `ca_file` alone. Errors are messages
/// that name the file; the caller adds the config key.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
    }
    Ok(roots)
}

/// A client config trusting `roots`, with ring and the safe protocol versions, up to
/// the client-certificate choice (`with_no_client_auth`, or a certificate for mTLS).
pub fn builder(
    roots: RootCertStore,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots))
}

/// The connector of every outgoing connection: TCP (no Nagle; keep-alive probes
/// after a minute; `connect_timeout` for the TCP connect), then TLS with `tls` for
/// `https://` URLs, plain for `http://`. HTTP/1.1 only.
pub fn connector(tls: ClientConfig, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
