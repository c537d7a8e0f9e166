//! TLS to PostgreSQL for [`crate::PgStore`]: a `postgres` TLS connector on rustls (ring),
//! used when the database URL says `sslmode=require`.
//!
//! The server's certificate is always verified — chain *and* host name, what libpq calls
//! `verify-full` — against the webpki roots, or, when a CA is given
//! ([`crate::PgOptions::ca_pem`]), against that CA instead. There is no mode that encrypts
//! without verifying: it would protect against nobody who can intercept the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Result, StoreError};

/// Makes a verified TLS session per connection (cheap to clone: one shared rustls config).
#[derive(Clone)]
pub(crate) struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl PgTls {
    /// Trusts the certificates in `ca_pem` (PEM, one or more) instead of the webpki roots
    /// when given.
    pub(crate) fn new(ca_pem: Option<&[u8]>) -> Result<Self> {
        let config = crate::tls::verified_client_config(ca_pem, ca_pem.is_none())
            .map_err(|msg| StoreError::Database(format!("database CA: {msg}")))?;
        Ok(Self { config })
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        // A host name or an IP address (checked against the certificate's IP SANs).
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} cannot be checked against a certificate: {e}"),
            )
        })?;
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(Arc::clone(&self.config)),
            name,
        })
    }
}

/// One pending handshake.
pub(crate) struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let session = self.connector.connect(self.name, stream).await?;
            Ok(PgTlsStream(session))
        })
    }
}

/// A connection to PostgreSQL inside a TLS session.
pub(crate) struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // No `tls-server-end-point` binding (SCRAM-SHA-256-PLUS): its hash depends on the
        // certificate's signature algorithm, which would mean parsing the certificate's DER.
        // Authentication uses plain SCRAM inside the verified session.
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
