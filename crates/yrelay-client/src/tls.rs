//! The rustls client configuration shared by the WebSocket and REST transports.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::error::{ClientError, Result};

/// A client configuration trusting the webpki roots plus the certificates in
/// `extra_root_pem` (for a server with a private or self-signed certificate). Built with the
/// `ring` provider explicitly, so a second provider enabled by some dependency cannot make
/// rustls panic.
pub(crate) fn client_config(extra_root_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let bad = ClientError::Tls;
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_root_pem {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(format!("cannot read the PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the PEM".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable certificate: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
