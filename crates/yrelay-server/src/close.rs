//! The one place that decides which WebSocket close code a failure gets.
//!
//! | code | when |
//! |---|---|
//! | 1000 | normal close (the peer closed, or the server had nothing else to say) |
//! | 1001 | the server is shutting down; reconnect to another node or later |
//! | 1003 | a text frame: the protocol is binary only |
//! | 1007 | a malformed message or an update the document refused (reason says which) |
//! | 1008 | a per-connection limit was passed (e.g. too many awareness client IDs) |
//! | 1009 | a message larger than `limits.max_message_bytes` |
//! | 1011 | an internal error |
//! | 1013 | slow consumer: the outbound queue overflowed, or the server is too busy to decode a large message in time, or the store has been failing and the room's buffer of unwritten updates is full (`persistence.max_pending_bytes`), or the store is unreachable so the room cannot be loaded; reconnect and resync |
//! | 4000 | ping timeout: nothing received for `ping_interval + pong_timeout` |
//! | 4401 | the connection's token expired (reconnect with a fresh token) |
//! | 4404 | the room was deleted by an administrator |
//!
//! The official client reconnects after any close and resyncs by state vector, so none of
//! these loses an update.

use std::borrow::Cow;

use yrelay_doc::{DocError, ProtocolError};

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// Server shutting down.
pub const GOING_AWAY: u16 = 1001;
/// Text frame received.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Malformed message or refused update.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation (a per-connection limit).
pub const POLICY_VIOLATION: u16 = 1008;
/// Message too big.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Internal error.
pub const INTERNAL_ERROR: u16 = 1011;
/// Slow consumer.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// No sign of life from the peer.
pub const PING_TIMEOUT: u16 = 4000;
/// The token the connection was opened with expired.
pub const TOKEN_EXPIRED: u16 = 4401;
/// The room was deleted.
pub const ROOM_DELETED: u16 = 4404;

/// A close code with its reason text (at most 123 bytes, as RFC 6455 allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code.
    pub code: u16,
    /// Human-readable reason.
    pub reason: Cow<'static, str>,
    /// A stable label for metrics.
    label: &'static str,
}

impl CloseReason {
    fn new(code: u16, label: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = Cow::Owned(reason[..cut].to_owned());
        }
        Self {
            code,
            reason,
            label,
        }
    }

    /// Normal closure.
    pub fn normal() -> Self {
        Self::new(NORMAL, "normal", "")
    }
    /// The server is shutting down.
    pub fn shutdown() -> Self {
        Self::new(GOING_AWAY, "shutdown", "server shutting down")
    }
    /// A text frame arrived.
    pub fn text_frame() -> Self {
        Self::new(
            UNSUPPORTED_DATA,
            "text_frame",
            "text frames are not supported: binary y-protocols only",
        )
    }
    /// A message exceeded the size limit.
    pub fn too_big(limit: usize) -> Self {
        Self::new(
            MESSAGE_TOO_BIG,
            "too_big",
            format!("message larger than {limit} bytes"),
        )
    }
    /// The outbound queue overflowed.
    pub fn slow_consumer() -> Self {
        Self::new(
            TRY_AGAIN_LATER,
            "slow_consumer",
            "slow consumer: outbound queue full, reconnect to resync",
        )
    }
    /// Nothing arrived from the peer in time.
    pub fn ping_timeout() -> Self {
        Self::new(PING_TIMEOUT, "ping_timeout", "ping timeout")
    }
    /// A malformed message.
    pub fn protocol(err: &ProtocolError) -> Self {
        Self::new(
            INVALID_PAYLOAD,
            "malformed",
            format!("malformed message: {err}"),
        )
    }
    /// The document refused an update.
    pub fn refused(err: &DocError) -> Self {
        match err {
            DocError::Panicked => Self::new(INTERNAL_ERROR, "internal", err.to_string()),
            _ => Self::new(INVALID_PAYLOAD, "refused_update", err.to_string()),
        }
    }
    /// A connection spoke for more awareness client IDs than allowed.
    pub fn too_many_awareness_clients(cap: usize) -> Self {
        Self::new(
            POLICY_VIOLATION,
            "awareness_clients",
            format!("more than {cap} awareness client ids on one connection"),
        )
    }
    /// Something failed inside the server.
    pub fn internal(what: &'static str) -> Self {
        Self::new(INTERNAL_ERROR, "internal", what)
    }
    /// The server is too busy to decode a large message in time.
    pub fn busy() -> Self {
        Self::new(
            TRY_AGAIN_LATER,
            "busy",
            "server busy decoding large messages; reconnect later",
        )
    }
    /// The store has been failing and the room cannot hold more unwritten updates.
    pub fn storage_unavailable(detail: &str) -> Self {
        Self::new(TRY_AGAIN_LATER, "storage_unavailable", detail.to_owned())
    }
    /// The connection's token expired.
    pub fn token_expired() -> Self {
        Self::new(TOKEN_EXPIRED, "token_expired", "token expired")
    }
    /// The room was deleted.
    pub fn room_deleted() -> Self {
        Self::new(ROOM_DELETED, "room_deleted", "room deleted")
    }
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_in_a_close_frame() {
        let long = CloseReason::new(1007, "test", "é".repeat(200));
        assert!(long.reason.len() <= 123);
        assert!(long.reason.chars().all(|c| c == 'é'));
    }
}
