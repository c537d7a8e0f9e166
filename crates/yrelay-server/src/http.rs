//! The warp adapter: routes, and the bridge between warp's WebSocket and [`crate::conn`].
//!
//! This is the only module that knows about warp.
//!
//! | route | answer |
//! |---|---|
//! | WebSocket upgrade on `/<room>` (any path) | y-websocket protocol for the percent-decoded room name |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /v1/rooms/{room}/versions` | JSON list of versions, newest first |
//! | `POST /v1/rooms/{room}/versions` | save a named version (JSON body `{"label": "..."}`, optional) → 201 |
//! | `GET /v1/rooms/{room}/versions/{id}` | the version's state as a v1 update (`application/octet-stream`) |
//! | `POST /v1/rooms/{room}/versions/{id}/restore` | make the document equal to that version, as a new edit |
//! | `GET /v1/rooms/{room}/audit?after=SEQ&limit=N` | who changed what, when, how much (oldest first) |
//! | anything else | `404`, or `400` with the reason for an unusable room name |
//!
//! A WebSocket upgrade is matched before anything else, so a room may be called `healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use percent_encoding::percent_decode_str;
use warp::filters::path::FullPath;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::http::StatusCode;
use warp::reply::Reply;
use warp::Filter;

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
    let with_state = warp::any().map(move || Arc::clone(&state));

    let ws = warp::path::full()
        .and(warp::ws())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state)
        .map(
            |path: FullPath, ws: Ws, peer: Option<PeerAddr>, state: Arc<AppState>| {
                upgrade(path, ws, peer, state)
            },
        );

    let healthz = warp::get()
        .and(warp::path("healthz"))
        .and(warp::path::end())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());

    let fallback = warp::any().map(|| {
        warp::reply::with_status(
            "not found: WebSocket rooms are at /<room>; health at /healthz\n",
            StatusCode::NOT_FOUND,
        )
        .into_response()
    });

    ws.or(healthz)
        .unify()
        .or(api(Arc::clone(&api_state)))
        .unify()
        .or(fallback)
        .unify()
}

/// A JSON error body with `status`.
fn json_error(status: StatusCode, message: impl std::fmt::Display) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message.to_string() })),
        status,
    )
    .into_response()
}

/// `/v1/rooms/{room}/...`: the room segment percent-decoded and checked like a WebSocket
/// room name. This is the one place where access control for the REST API goes (issue 4).
fn api_room(
    state: Arc<AppState>,
) -> impl Filter<
    Extract = (Result<String, warp::reply::Response>, Arc<AppState>),
    Error = warp::Rejection,
> + Clone {
    warp::path!("v1" / "rooms" / String / ..)
        .map(move |segment: String| {
            let room = room_name_from_path(
                &format!("/{segment}"),
                state.config.limits.max_room_name_bytes,
            )
            .map_err(|e| json_error(StatusCode::BAD_REQUEST, e));
            (room, Arc::clone(&state))
        })
        .untuple_one()
}

/// Query of `GET .../audit`.
#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Body of `POST .../versions`.
#[derive(Debug, Default, serde::Deserialize)]
struct NewVersion {
    label: Option<String>,
}

/// Most audit records one request returns.
const MAX_AUDIT_PAGE: usize = 1000;

fn api(
    state: Arc<AppState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let list_versions = api_room(Arc::clone(&state))
        .and(warp::path!("versions"))
        .and(warp::get())
        .then(
            |room: Result<String, warp::reply::Response>, state: Arc<AppState>| async move {
                let room = match room {
                    Ok(r) => r,
                    Err(resp) => return resp,
                };
                let store = Arc::clone(state.registry.store());
                match tokio::task::spawn_blocking(move || store.list_versions(&room)).await {
                    Ok(Ok(list)) => {
                        warp::reply::json(&serde_json::json!({ "versions": list })).into_response()
                    }
                    Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                    Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            },
        );

    let create_version = api_room(Arc::clone(&state))
        .and(warp::path!("versions"))
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .then(
            |room: Result<String, warp::reply::Response>,
             state: Arc<AppState>,
             body: bytes::Bytes| async move {
                let room = match room {
                    Ok(r) => r,
                    Err(resp) => return resp,
                };
                let new: NewVersion = if body.iter().all(u8::is_ascii_whitespace) {
                    NewVersion::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(v) => v,
                        Err(e) => {
                            return json_error(
                                StatusCode::BAD_REQUEST,
                                format!("invalid JSON body: {e}"),
                            )
                        }
                    }
                };
                let (reply, answer) = tokio::sync::oneshot::channel();
                let cmd = crate::room::RoomCmd::CreateVersion {
                    label: new.label,
                    reply,
                };
                let sent = state.registry.command(&room, cmd).await;
                match (sent, answer.await) {
                    (true, Ok(Ok(info))) => {
                        warp::reply::with_status(warp::reply::json(&info), StatusCode::CREATED)
                            .into_response()
                    }
                    (true, Ok(Err(e))) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                    _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "room unavailable"),
                }
            },
        );

    let get_version = api_room(Arc::clone(&state))
        .and(warp::path!("versions" / u64))
        .and(warp::get())
        .then(|room: Result<String, warp::reply::Response>, state: Arc<AppState>, id: u64| async move {
            let room = match room {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let store = Arc::clone(state.registry.store());
            match tokio::task::spawn_blocking(move || store.get_version(&room, id)).await {
                Ok(Ok(Some((_, data)))) => warp::http::Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(warp::hyper::body::Bytes::from(data))
                    .map(|r| r.map(Into::into))
                    .unwrap_or_else(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
                Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, format!("no version {id}")),
                Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        });

    let restore = api_room(Arc::clone(&state))
        .and(warp::path!("versions" / u64 / "restore"))
        .and(warp::post())
        .then(|room: Result<String, warp::reply::Response>, state: Arc<AppState>, id: u64| async move {
            let room = match room {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            let cmd = crate::room::RoomCmd::Restore { id, reply };
            let sent = state.registry.command(&room, cmd).await;
            match (sent, answer.await) {
                (true, Ok(Ok(Some(changed)))) => {
                    warp::reply::json(&serde_json::json!({ "restored": id, "changed": changed })).into_response()
                }
                (true, Ok(Ok(None))) => json_error(StatusCode::NOT_FOUND, format!("no version {id}")),
                (true, Ok(Err(e))) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "room unavailable"),
            }
        });

    let audit = api_room(state)
        .and(warp::path!("audit"))
        .and(warp::get())
        .and(warp::query::<AuditQuery>())
        .then(|room: Result<String, warp::reply::Response>, state: Arc<AppState>, q: AuditQuery| async move {
            let room = match room {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
            let store = Arc::clone(state.registry.store());
            let after = q.after;
            match tokio::task::spawn_blocking(move || store.audit(&room, after, limit)).await {
                Ok(Ok(records)) => {
                    let next_after = if records.len() == limit { records.last().map(|r| r.seq) } else { None };
                    warp::reply::json(&serde_json::json!({ "records": records, "next_after": next_after })).into_response()
                }
                Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        });

    list_versions
        .or(create_version)
        .unify()
        .or(get_version)
        .unify()
        .or(restore)
        .unify()
        .or(audit)
        .unify()
}

fn upgrade(
    path: FullPath,
    ws: Ws,
    peer: Option<PeerAddr>,
    state: Arc<AppState>,
) -> warp::reply::Response {
    if state.shutdown.is_cancelled() {
        return warp::reply::with_status("server shutting down\n", StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    let limits = &state.config.limits;
    let room = match room_name_from_path(path.as_str(), limits.max_room_name_bytes) {
        Ok(room) => room,
        Err(err) => {
            metrics::counter!("yrelay_http_refusals_total", "reason" => "room_name").increment(1);
            return warp::reply::with_status(format!("{err}\n"), StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let ws = ws
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes);
    // Held from the 101 answer on, so shutdown also waits for upgrades still completing.
    let in_flight = state.tracker.token();
    ws.on_upgrade(move |socket| async move {
        let _in_flight = in_flight;
        let peer: Arc<str> =
            peer.map_or_else(|| Arc::from("unknown"), |p| Arc::from(p.0.to_string()));
        let span = tracing::info_span!("conn", room = %room, peer = %peer);
        tracing::Instrument::instrument(serve_socket(room, socket, state, peer), span).await;
    })
    .into_response()
}

async fn serve_socket(room: String, socket: WebSocket, state: Arc<AppState>, peer: Arc<str>) {
    let (sink, stream) = socket.split();
    let stream = stream.map(|item| match item {
        Ok(msg) => Ok(incoming(msg)),
        Err(err) => Err(read_error(&err)),
    });
    let sink = sink.with(|out: Outgoing| async move {
        Ok::<_, warp::Error>(match out {
            Outgoing::Binary(b) => Message::binary(b),
            Outgoing::Ping => Message::ping(Vec::new()),
            Outgoing::Close(r) => Message::close_with(r.code, r.reason),
        })
    });
    let ctx = ConnContext {
        registry: Arc::clone(&state.registry),
        config: Arc::clone(&state.config),
        shutdown: state.shutdown.clone(),
        peer,
    };
    conn::serve(Arc::from(room), stream, Box::pin(sink), ctx).await;
}

fn incoming(msg: Message) -> Incoming {
    if msg.is_binary() {
        Incoming::Binary(msg.into_bytes())
    } else if msg.is_text() {
        Incoming::Text
    } else if msg.is_ping() {
        Incoming::Ping
    } else if msg.is_pong() {
        Incoming::Pong
    } else {
        Incoming::Close
    }
}

fn read_error(err: &warp::Error) -> ReadError {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return ReadError::TooBig;
        }
        source = e.source();
    }
    ReadError::Transport(err.to_string())
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
