//! The REST API client: HTTP/1.1 over TCP or TLS, one connection per request.
//!
//! Covers the routes of yrelay's `/v1` API a client or an admin script needs: the document
//! (state, state vector, diff, JSON, apply an update), versions, and the admin routes (rooms,
//! tokens). Any y-websocket server has the WebSocket side; only yrelay has this API.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::endpoint::{encode, Endpoint};
use crate::error::{ClientError, Result};

/// Largest response body read (a document's whole state): 256 MiB.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one server's REST API, with an optional token (a room token, or the admin
/// key for admin routes), sent as `Authorization: Bearer`.
#[derive(Clone)]
pub struct RestClient {
    endpoint: Endpoint,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RestClient {
    /// A client of `endpoint` (`http(s)://` or `ws(s)://`: the same port serves both).
    /// `extra_root_pem` adds trusted CA certificates for a TLS server.
    pub fn new(
        endpoint: &Endpoint,
        token: Option<String>,
        extra_root_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let tls = if endpoint.tls() {
            Some(crate::tls::client_config(extra_root_pem)?)
        } else {
            None
        };
        Ok(Self {
            endpoint: endpoint.clone(),
            token,
            tls,
        })
    }

    /// The server this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The room's whole state as a v1 update, or with `sv` (a v1 state vector) only what a
    /// peer holding `sv` lacks.
    pub async fn state(&self, room: &str, sv: Option<&[u8]>) -> Result<Vec<u8>> {
        let mut path = self.endpoint.room_path(room, "state");
        if let Some(sv) = sv {
            path.push_str("?sv=");
            path.push_str(&encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sv),
            ));
        }
        self.send(Method::GET, &path, None, None).await
    }

    /// The room's state vector (v1).
    pub async fn state_vector(&self, room: &str) -> Result<Vec<u8>> {
        let path = self.endpoint.room_path(room, "state-vector");
        self.send(Method::GET, &path, None, None).await
    }

    /// Applies a v1 update to the room. Returns once the server answered 200, i.e. once the
    /// update is as durable as the server's durability mode promises.
    pub async fn post_update(&self, room: &str, update: &[u8]) -> Result<()> {
        let path = self.endpoint.room_path(room, "update");
        self.send(
            Method::POST,
            &path,
            Some(("application/octet-stream", Bytes::copy_from_slice(update))),
            None,
        )
        .await
        .map(drop)
    }

    /// The room's root types as JSON.
    pub async fn json(&self, room: &str) -> Result<Value> {
        let path = self.endpoint.room_path(room, "json");
        self.send_json(Method::GET, &path, None).await
    }

    /// The room's versions, newest first (the server's JSON answer).
    pub async fn versions(&self, room: &str) -> Result<Value> {
        let path = self.endpoint.room_path(room, "versions");
        self.send_json(Method::GET, &path, None).await
    }

    /// Saves a named version of the room's current state; returns the server's description.
    pub async fn save_version(&self, room: &str, label: Option<&str>) -> Result<Value> {
        let path = self.endpoint.room_path(room, "versions");
        let body = match label {
            Some(label) => json!({ "label": label }),
            None => json!({}),
        };
        self.send_json(Method::POST, &path, Some(body)).await
    }

    /// Makes the room equal to version `id`, as a new edit (owner role).
    pub async fn restore_version(&self, room: &str, id: u64) -> Result<Value> {
        let path = self
            .endpoint
            .room_path(room, &format!("versions/{id}/restore"));
        self.send_json(Method::POST, &path, Some(json!({}))).await
    }

    /// The room's audit trail (owner role).
    pub async fn audit(
        &self,
        room: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Value> {
        let mut path = self.endpoint.room_path(room, "audit");
        let mut sep = '?';
        if let Some(after) = after {
            path.push_str(&format!("{sep}after={after}"));
            sep = '&';
        }
        if let Some(limit) = limit {
            path.push_str(&format!("{sep}limit={limit}"));
        }
        self.send_json(Method::GET, &path, None).await
    }

    /// Every room (admin key).
    pub async fn rooms(&self) -> Result<Value> {
        let path = self.endpoint.http_path("/v1/rooms");
        self.send_json(Method::GET, &path, None).await
    }

    /// Deletes a room (admin key).
    pub async fn delete_room(&self, room: &str) -> Result<()> {
        let path = self.endpoint.room_path(room, "");
        self.send(Method::DELETE, &path, None, None).await.map(drop)
    }

    /// Mints a token for `room` (admin key): `role` is `owner`, `editor` or `viewer`.
    pub async fn mint_token(
        &self,
        room: &str,
        role: &str,
        sub: &str,
        ttl_secs: Option<u64>,
    ) -> Result<String> {
        let path = self.endpoint.room_path(room, "tokens");
        let mut body = json!({ "role": role, "sub": sub });
        if let Some(ttl) = ttl_secs {
            body["ttl_secs"] = json!(ttl);
        }
        let answer = self.send_json(Method::POST, &path, Some(body)).await?;
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("the token answer has no `token`".to_owned()))
    }

    async fn send_json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|v| ("application/json", Bytes::from(v.to_string())));
        let bytes = self
            .send(method, path, body, Some("application/json"))
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("the server's answer is not JSON: {e}")))
    }

    /// Sends one request and returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        accept: Option<&'static str>,
    ) -> Result<Vec<u8>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.endpoint.authority())
            .header(
                header::USER_AGENT,
                concat!("yrelay-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(accept) = accept {
            req = req.header(header::ACCEPT, accept);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Protocol(format!("cannot build the request: {e}")))?;

        let tcp = self.connect_tcp().await?;
        let answer = match &self.tls {
            None => tokio::time::timeout(REQUEST_TIMEOUT, exchange(tcp, req)).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.endpoint.host().to_owned())
                    .map_err(|e| self.unreachable(format!("invalid TLS server name: {e}")))?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TlsConnector::from(Arc::clone(config)).connect(name, tcp),
                )
                .await
                .map_err(|_| self.unreachable("TLS handshake timed out".to_owned()))?
                .map_err(|e| self.unreachable(format!("TLS handshake failed: {e}")))?;
                tokio::time::timeout(REQUEST_TIMEOUT, exchange(tls, req)).await
            }
        };
        let (status, bytes) = answer
            .map_err(|_| ClientError::Timeout(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let message = error_message(&bytes, status);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ClientError::Refused(format!("{} {message}", status.as_u16()))
            }
            _ => ClientError::Http {
                status: status.as_u16(),
                message,
            },
        })
    }

    async fn connect_tcp(&self) -> Result<TcpStream> {
        let target = (self.endpoint.host().to_owned(), self.endpoint.port());
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .map_err(|_| self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            server: self.endpoint.as_str().to_owned(),
            reason,
        }
    }
}

/// One request on a fresh connection: status and the whole body (bounded).
async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> std::result::Result<(StatusCode, Vec<u8>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body.to_vec()))
}

/// The `error` field of a JSON error body, else the body's first line, else the reason.
fn error_message(body: &[u8], status: StatusCode) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(e) = v["error"].as_str() {
            return e.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.chars().take(300).collect(),
        None => status.canonical_reason().unwrap_or("error").to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_json_error_field_or_the_first_line() {
        assert_eq!(
            error_message(br#"{"error":"no such version"}"#, StatusCode::NOT_FOUND),
            "no such version"
        );
        assert_eq!(
            error_message(
                b"\nnot found: rooms are at /<room>\nmore",
                StatusCode::NOT_FOUND
            ),
            "not found: rooms are at /<room>"
        );
        assert_eq!(error_message(b"", StatusCode::BAD_GATEWAY), "Bad Gateway");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let client = RestClient::new(&endpoint, None, None).unwrap();
        let err = client.state_vector("r").await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot reach http://127.0.0.1:"),
            "{err}"
        );
    }
}
