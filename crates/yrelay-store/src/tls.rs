//! The rustls client configuration shared by outgoing TLS connections (feature `tls`): the
//! PostgreSQL store here, the WebSocket and REST transports of `yrelay-client`.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// A client configuration that verifies the server's chain and name against the webpki
/// roots (when `public_roots`) and the certificates in `ca_pem` (PEM, one or more). Built
/// with the `ring` provider explicitly, so a second provider enabled by some dependency
/// cannot make rustls panic over which to use.
///
/// # Errors
///
/// A one-line reason when `ca_pem` is unreadable or holds no usable certificate.
pub fn verified_client_config(
    ca_pem: Option<&[u8]>,
    public_roots: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = ca_pem {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read the PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the PEM".to_owned());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
