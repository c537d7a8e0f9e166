//! Every way a client call can fail, each with a one-line message meant for a person.

/// What went wrong. `Display` is one line, suitable as a command-line error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not a `ws://`, `wss://`, `http://` or `https://` URL.
    #[error("bad server URL {url:?}: {reason}")]
    BadUrl {
        /// The address as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The extra CA certificates could not be used.
    #[error("CA certificate: {0}")]
    Tls(String),
    /// The server could not be reached (DNS, TCP, TLS handshake, timeout).
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server as given.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server refused the token or the role is too low (HTTP 401/403, WebSocket close
    /// 4401/4403, or an auth message).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The server answered an HTTP request with an error status.
    #[error("server answered {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The server's `error` field, or the body's first line.
        message: String,
    },
    /// The server closed the WebSocket with a code that means "do not retry".
    #[error("server closed the connection: {code} {reason}")]
    Closed {
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The server sent something that is not the y-websocket protocol or a valid update.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local replica directory could not be opened (not creatable, or in use by
    /// another process).
    #[error("cannot open the local replica {dir}: {reason}")]
    ReplicaOpen {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// The local replica could not be read or written.
    #[error("local replica: {0}")]
    Replica(#[from] yrelay_store::StoreError),
    /// An update could not be applied to the local document.
    #[error("cannot apply update: {0}")]
    Update(String),
    /// Waiting for something (sync, an answer) took longer than allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The client was closed.
    #[error("client closed")]
    ClientClosed,
}

/// `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
