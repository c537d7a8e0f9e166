//! A parsed server address: which scheme, host and port, and the URLs derived from it.

use crate::error::{ClientError, Result};

/// A server address given as `ws://`, `wss://`, `http://` or `https://` (a path prefix is
/// kept, e.g. behind a reverse proxy at `/sync`). One server answers WebSockets and REST on
/// the same port, so either form reaches both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As given, for messages.
    original: String,
    /// TLS (`wss`/`https`).
    tls: bool,
    /// Host name or address, without brackets for IPv6.
    host: String,
    /// Port (default 80 or 443).
    port: u16,
    /// Path prefix without a trailing slash (`""` for none).
    prefix: String,
}

impl Endpoint {
    /// Parses a server address. Refuses other schemes, a missing host, a query or fragment.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected ws://, wss://, http:// or https://"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(bad("expected ws://, wss://, http:// or https://")),
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad(
                "a query or fragment is not allowed (pass the room and token separately)",
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("user info is not allowed (pass a token with --token)"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("invalid host")),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if port == 0 {
            return Err(bad("invalid port"));
        }
        Ok(Self {
            original: url.to_owned(),
            tls,
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The WebSocket URL of `room` (percent-encoded), with `?token=` when given.
    pub fn ws_url(&self, room: &str, token: Option<&str>) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let mut url = format!(
            "{scheme}://{}{}/{}",
            self.authority(),
            self.prefix,
            encode(room)
        );
        if let Some(token) = token {
            url.push_str("?token=");
            url.push_str(&encode(token));
        }
        url
    }

    /// The path (with prefix) of a REST route: `path` starts with `/v1/...`.
    pub fn http_path(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    /// The path of a room's REST route, e.g. `room_path("my room", "state")` →
    /// `/v1/rooms/my%20room/state`.
    pub fn room_path(&self, room: &str, rest: &str) -> String {
        let mut path = format!("{}/v1/rooms/{}", self.prefix, encode(room));
        if !rest.is_empty() {
            path.push('/');
            path.push_str(rest);
        }
        path
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_schemes_and_derives_urls() {
        let e = Endpoint::parse("ws://127.0.0.1:1234").unwrap();
        assert!(!e.tls());
        assert_eq!(
            e.ws_url("a b", Some("t.k")),
            "ws://127.0.0.1:1234/a%20b?token=t%2Ek"
        );
        assert_eq!(e.room_path("a/b", "state"), "/v1/rooms/a%2Fb/state");
        let e = Endpoint::parse("https://relay.example/sync/").unwrap();
        assert!(e.tls());
        assert_eq!(e.port(), 443);
        assert_eq!(e.ws_url("r", None), "wss://relay.example:443/sync/r");
        assert_eq!(e.http_path("/v1/rooms"), "/sync/v1/rooms");
        let e = Endpoint::parse("wss://[::1]:8443").unwrap();
        assert_eq!(e.authority(), "[::1]:8443");
    }

    #[test]
    fn refuses_what_is_not_a_server_address() {
        for bad in [
            "127.0.0.1:1234",
            "ftp://x",
            "ws://",
            "ws://host:notaport",
            "ws://host:0",
            "ws://host/?token=x",
            "ws://user@host",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, ClientError::BadUrl { .. }), "{bad}: {err}");
            assert!(err.to_string().starts_with("bad server URL"), "{err}");
        }
    }
}
