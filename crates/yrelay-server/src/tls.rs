//! rustls server configuration from PEM files.
//!
//! warp 0.4 has no TLS of its own, so the accept loop in [`crate::server`] wraps each TCP
//! stream with this acceptor before handing it to hyper. Only the `ring` provider is used, set
//! explicitly, so another crate enabling a second rustls provider cannot make startup panic.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    #[error("no private key found in {0}")]
    NoKey(PathBuf),
    /// rustls refused the certificate/key pair.
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// The PEM text of a CA file (for TLS to PostgreSQL or Redis), after checking that it holds
/// at least one readable certificate: a wrong file is refused at start, not at the first
/// handshake.
pub fn read_ca_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(read_err)?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(pem)
}

/// Builds an acceptor serving `cert` (PEM chain) with `key` (PEM private key), HTTP/1.1 ALPN.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Read { path, source }
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(read_err(key))?
        .ok_or_else(|| TlsError::NoKey(key.to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
