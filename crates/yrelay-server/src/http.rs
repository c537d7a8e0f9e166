//! The warp adapter: routes, and the bridge between warp's WebSocket and [`crate::conn`].
//!
//! This module and [`crate::api`] (the REST routes) are the only ones that know about warp.
//!
//! The WebSocket handshake is answered here rather than by `warp::ws()`, whose `Ws` cannot set
//! tungstenite's buffer sizes: its default 128 KiB read buffer, allocated and zero-filled per
//! connection, was most of what an idle connection cost. [`ws_request`] makes the same checks
//! as `warp::ws()` and takes hyper's upgrade handle from the request; [`upgrade`] answers 101
//! and builds the socket with [`socket_config`].
//!
//! | route | answer |
//! |---|---|
//! | WebSocket upgrade on `/<room>` (any path) | y-websocket protocol for the percent-decoded room name |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `/v1/...` | the REST API ([`crate::api`]) |
//! | `GET /`, `GET /_demo/...` | the web editor demo when `demo.enabled` ([`crate::demo`]) |
//! | anything else | `404` |
//!
//! A WebSocket upgrade is matched before anything else, so a room may be called `healthz`.
//! Before upgrading, [`upgrade`] checks, in order: shutdown (503), the room name (400), the
//! token (401/403), connections per client address and per room (429).

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Message;
use warp::filters::path::FullPath;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Reply;
use warp::Filter;

use crate::auth::{find_token, FoundToken, Identity, TokenSource};
use crate::conn::{self, ConnContext, Incoming, Outgoing, ReadError};
use crate::server::AppState;

/// The peer address of a request, inserted by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Why a path cannot name a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// `/` alone.
    #[error("room name is empty: connect to /<room>")]
    Empty,
    /// Longer than the limit.
    #[error("room name is longer than {0} bytes")]
    TooLong(usize),
    /// Percent-decoding gave invalid UTF-8.
    #[error("room name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    /// Contains a control character.
    #[error("room name contains a control character")]
    ControlChar,
}

/// Turns a request path into a room name: everything after the first `/`, percent-decoded.
/// Accepts what the official client sends (`serverUrl + '/' + room`), including names with
/// `/`, spaces and any Unicode.
pub fn room_name_from_path(path: &str, max_bytes: usize) -> Result<String, RoomNameError> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    if raw.is_empty() {
        return Err(RoomNameError::Empty);
    }
    let name = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| RoomNameError::NotUtf8)?;
    if name.len() > max_bytes {
        return Err(RoomNameError::TooLong(max_bytes));
    }
    if name.chars().any(char::is_control) {
        return Err(RoomNameError::ControlChar);
    }
    Ok(name.into_owned())
}

/// All routes.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let api_state = Arc::clone(&state);
    let state_for_metrics = Arc::clone(&state);
    let demo_enabled = state.config.demo.enabled;
    let with_state = warp::any().map(move || Arc::clone(&state));

    let ws = warp::path::full()
        .and(ws_request())
        .and(warp::ext::optional::<PeerAddr>())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(with_state)
        .map(
            |path: FullPath,
             (headers, on_upgrade): (HeaderMap, Option<OnUpgrade>),
             peer: Option<PeerAddr>,
             query: Option<String>,
             state: Arc<AppState>| {
                upgrade(&path, on_upgrade, peer, &headers, query.as_deref(), state)
            },
        );

    let metrics_here = state_for_metrics.config.metrics_listen.is_none();
    let probes = probe_routes(Arc::clone(&state_for_metrics));
    let metrics = metrics_route(Arc::clone(&state_for_metrics))
        .and(warp::any().map(move || metrics_here))
        .and_then(|reply: warp::reply::Response, here: bool| async move {
            if here {
                Ok(reply)
            } else {
                Err(warp::reject::not_found())
            }
        });

    let fallback = warp::any().map(|| {
        warp::reply::with_status(
            "not found: WebSocket rooms are at /<room>; health at /healthz; REST API under /v1\n",
            StatusCode::NOT_FOUND,
        )
        .into_response()
    });

    ws.or(probes)
        .unify()
        .or(metrics)
        .unify()
        .or(crate::api::routes(Arc::clone(&api_state)))
        .unify()
        .or(crate::demo::routes(demo_enabled))
        .unify()
        .or(fallback)
        .unify()
}

/// `GET /healthz` (the process serves) and `GET /readyz` (store writable, not shutting down;
/// 503 with the reasons otherwise; 200 `degraded: ...` in cluster mode while Redis is
/// unreachable).
fn probe_routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::get()
        .and(warp::path("healthz"))
        .and(warp::path::end())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let readyz = warp::get()
        .and(warp::path("readyz"))
        .and(warp::path::end())
        .then(move || {
            let state = Arc::clone(&state);
            async move {
                match state.readiness().await {
                    Ok(()) => match state.degraded() {
                        None => warp::reply::with_status("ready\n", StatusCode::OK).into_response(),
                        // Still ready: this node serves its clients. Taking every node out of
                        // rotation because a shared dependency failed would turn a Redis
                        // outage into a full outage (docs/operations.md).
                        Some(why) => {
                            warp::reply::with_status(format!("degraded: {why}\n"), StatusCode::OK)
                                .into_response()
                        }
                    },
                    Err(reasons) => warp::reply::with_status(
                        format!("not ready: {}\n", reasons.join("; ")),
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response(),
                }
            }
        });
    healthz.or(readyz).unify()
}

/// `GET /metrics`: the Prometheus text exposition. Runs the readiness check first (cached
/// for a second), so `yrelay_ready` is current even when nothing polls `/readyz`.
fn metrics_route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .then(move || {
            let state = Arc::clone(&state);
            async move {
                let _ = state.readiness().await;
                match crate::metrics::render() {
                    Some(text) => {
                        let mut resp = warp::reply::Response::new(text.into());
                        resp.headers_mut().insert(
                            warp::http::header::CONTENT_TYPE,
                            warp::http::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        resp
                    }
                    None => warp::reply::with_status(
                        "metrics recorder not installed (another recorder was installed first)\n",
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response(),
                }
            }
        })
}

/// What the separate metrics address (`metrics_listen`) serves: `/metrics` and the probes.
pub fn metrics_routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    metrics_route(Arc::clone(&state))
        .or(probe_routes(state))
        .unify()
        .or(warp::any().map(|| {
            warp::reply::with_status(
                "not found: this address serves /metrics, /healthz and /readyz\n",
                StatusCode::NOT_FOUND,
            )
            .into_response()
        }))
        .unify()
}

/// Matches a WebSocket upgrade request, with the checks `warp::ws()` makes (GET, `Connection:
/// upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`); other
/// requests fall through to the next routes. Yields the headers and hyper's upgrade handle,
/// which hyper puts in the extensions of every request that asks for an upgrade.
fn ws_request(
) -> impl Filter<Extract = ((HeaderMap, Option<OnUpgrade>),), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::header::exact_ignore_case("upgrade", "websocket"))
        .and(warp::header::exact("sec-websocket-version", "13"))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |headers: HeaderMap, on_upgrade: Option<OnUpgrade>| async move {
                let connection_upgrade = headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
                if connection_upgrade && headers.contains_key(header::SEC_WEBSOCKET_KEY) {
                    Ok((headers, on_upgrade))
                } else {
                    Err(warp::reject::not_found())
                }
            },
        )
}

/// Read buffer of a connection's socket. tungstenite allocates it when the socket is built
/// and reads at most this much per call; a larger message is read into a buffer reserved for
/// its whole length, so it does not cap message size. 4 KiB holds many ordinary updates and
/// awareness messages per read.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Outgoing frames are gathered until they pass this size, then written (every batch ends
/// with a flush anyway). The buffer keeps the capacity it reached, so a small target keeps
/// busy connections small too.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// tungstenite settings for a connection: small buffers (see [`READ_BUFFER_BYTES`] and
/// [`WRITE_BUFFER_BYTES`]); messages and frames up to `max_message_bytes`.
fn socket_config(max_message_bytes: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES);
    config.max_message_size = Some(max_message_bytes);
    config.max_frame_size = Some(max_message_bytes);
    config
}

fn upgrade(
    path: &FullPath,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
    query: Option<&str>,
    state: Arc<AppState>,
) -> warp::reply::Response {
    if state.draining.is_cancelled() {
        return warp::reply::with_status("server shutting down\n", StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    let limits = &state.config.limits;
    let room = match room_name_from_path(path.as_str(), limits.max_room_name_bytes) {
        Ok(room) => room,
        Err(err) => {
            metrics::counter!("yrelay_http_refusals_total", "reason" => "room_name").increment(1);
            crate::limits::refused("room_name");
            return warp::reply::with_status(format!("{err}\n"), StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let found = find_token(query, headers);
    let identity = match state
        .auth
        .authorize(found.as_ref().map(|f| f.token.as_str()), &room)
    {
        Ok(identity) => identity,
        Err(err) => {
            debug!(room = %room, reason = err.label(), "upgrade refused");
            return crate::api::auth_refusal(&err);
        }
    };
    let ip_slot = match peer {
        Some(PeerAddr(addr)) => {
            match state
                .ip_conns
                .try_acquire(addr.ip(), limits.max_connections_per_ip)
            {
                Some(slot) => Some(slot),
                None => {
                    crate::limits::refused("connections_per_ip");
                    return too_many(format!(
                        "too many connections from your address (limit {})",
                        limits.max_connections_per_ip
                    ));
                }
            }
        }
        None => None,
    };
    let name: Arc<str> = Arc::from(room.as_str());
    let Some(room_slot) = state
        .room_conns
        .try_acquire(Arc::clone(&name), limits.max_connections_per_room)
    else {
        crate::limits::refused("connections_per_room");
        return too_many(format!(
            "room is full (limit {} connections)",
            limits.max_connections_per_room
        ));
    };
    let Some(on_upgrade) = on_upgrade else {
        // hyper gives every HTTP/1.1 upgrade request a handle; only another transport lacks it.
        debug!("upgrade requested but the connection cannot be upgraded");
        return warp::reply::with_status(
            "this connection cannot be upgraded\n",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into_response();
    };
    let Some(accept) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| tungstenite::handshake::derive_accept_key(key.as_bytes()))
        .and_then(|accept| HeaderValue::from_str(&accept).ok())
    else {
        // `ws_request` checked the key is there; the accept value is base64.
        return warp::reply::with_status("missing Sec-WebSocket-Key\n", StatusCode::BAD_REQUEST)
            .into_response();
    };
    let config = socket_config(limits.max_message_bytes);
    // Tracked from the 101 answer on, so shutdown also waits for upgrades still completing.
    state.tracker.clone().spawn(async move {
        let _slots = (ip_slot, room_slot);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                debug!(error = %err, "websocket upgrade failed");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let peer: Arc<str> =
            peer.map_or_else(|| Arc::from("unknown"), |p| Arc::from(p.0.to_string()));
        let span = tracing::info_span!("conn", room = %name, peer = %peer, sub = %identity.subject);
        tracing::Instrument::instrument(serve_socket(name, socket, state, peer, identity), span)
            .await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    // A browser that offered its token as a subprotocol aborts unless one is chosen.
    if let Some(FoundToken {
        token,
        source: TokenSource::Subprotocol,
    }) = found
    {
        if let Ok(value) = HeaderValue::from_str(&token) {
            resp.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
    resp
}

fn too_many(message: String) -> warp::reply::Response {
    warp::reply::with_status(format!("{message}\n"), StatusCode::TOO_MANY_REQUESTS).into_response()
}

/// The socket a connection is served on.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn serve_socket(
    room: Arc<str>,
    socket: Socket,
    state: Arc<AppState>,
    peer: Arc<str>,
    identity: Identity,
) {
    let (sink, stream) = socket.split();
    let stream = stream.map(|item| match item {
        Ok(msg) => Ok(incoming(msg)),
        Err(err) => Err(read_error(&err)),
    });
    let sink = sink.with(|out: Outgoing| async move {
        Ok::<_, tungstenite::Error>(match out {
            Outgoing::Binary(b) => Message::Binary(b),
            Outgoing::Ping => Message::Ping(bytes::Bytes::new()),
            Outgoing::Close(r) => Message::Close(Some(CloseFrame {
                code: CloseCode::from(r.code),
                reason: match r.reason {
                    std::borrow::Cow::Borrowed(s) => Utf8Bytes::from_static(s),
                    std::borrow::Cow::Owned(s) => s.into(),
                },
            })),
        })
    });
    let ctx = ConnContext {
        registry: Arc::clone(&state.registry),
        config: Arc::clone(&state.config),
        shutdown: state.shutdown.clone(),
        peer,
        identity,
        decodes: Arc::clone(&state.decodes),
    };
    conn::serve(room, stream, Box::pin(sink), ctx).await;
}

fn incoming(msg: Message) -> Incoming {
    match msg {
        Message::Binary(b) => Incoming::Binary(b),
        Message::Text(_) => Incoming::Text,
        Message::Ping(_) => Incoming::Ping,
        Message::Pong(_) => Incoming::Pong,
        // A raw frame is never yielded by a read.
        Message::Close(_) | Message::Frame(_) => Incoming::Close,
    }
}

fn read_error(err: &tungstenite::Error) -> ReadError {
    match err {
        tungstenite::Error::Capacity(_) => ReadError::TooBig,
        other => ReadError::Transport(other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(room_name_from_path("/doc", 10).unwrap(), "doc");
        assert_eq!(room_name_from_path("/a%20b/c", 10).unwrap(), "a b/c");
        assert_eq!(room_name_from_path("/%C3%A9t%C3%A9", 10).unwrap(), "été");
        assert_eq!(room_name_from_path("/", 10), Err(RoomNameError::Empty));
        assert_eq!(
            room_name_from_path("/abcdefghijk", 10),
            Err(RoomNameError::TooLong(10))
        );
        assert_eq!(room_name_from_path("/%FF", 10), Err(RoomNameError::NotUtf8));
        assert_eq!(
            room_name_from_path("/a%0Ab", 10),
            Err(RoomNameError::ControlChar)
        );
    }
}
