//! The rustls client configuration shared by the WebSocket and REST transports.

use std::sync::Arc;

use crate::error::{ClientError, Result};

/// A client configuration trusting the webpki roots plus the certificates in
/// `extra_root_pem` (for a server with a private or self-signed certificate).
pub(crate) fn client_config(extra_root_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    yrelay_store::tls::verified_client_config(extra_root_pem, true).map_err(ClientError::Tls)
}
