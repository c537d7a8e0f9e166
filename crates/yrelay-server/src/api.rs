//! The REST API under `/v1`: document access, versions, audit, and the admin routes.
//!
//! Every room route goes through [`room_access`], the one place that decides who may do what:
//! the request's token (`?token=` or `Authorization: Bearer`) must be valid for the room and
//! carry at least the route's role; the admin key (`Authorization: Bearer <admin key>`) acts
//! as owner of every room. With auth off (mode `none`) everyone is owner. Admin routes need
//! the admin key whatever the mode.
//!
//! | route | role | answer |
//! |---|---|---|
//! | `GET /v1/rooms/{room}/state[?sv=B64]` | viewer | the state as a v1 update, or only what a peer with state vector `sv` lacks |
//! | `GET /v1/rooms/{room}/state-vector` | viewer | the state vector (v1) |
//! | `POST /v1/rooms/{room}/update` | editor | apply a v1 update (binary body); 200 once durable as the durability mode promises |
//! | `GET /v1/rooms/{room}/json` | viewer | the root types as JSON |
//! | `GET /v1/rooms/{room}/versions` | viewer | versions, newest first |
//! | `POST /v1/rooms/{room}/versions` | editor | save a named version (`{"label": "..."}`, optional) → 201 |
//! | `GET /v1/rooms/{room}/versions/{id}` | viewer | the version's state as a v1 update |
//! | `POST /v1/rooms/{room}/versions/{id}/restore` | owner | make the document equal to that version, as a new edit |
//! | `GET /v1/rooms/{room}/audit?after=SEQ&limit=N` | owner | who changed what, when, how much |
//! | `GET /v1/rooms` | admin | every room: stored size, log length, last change, connections |
//! | `DELETE /v1/rooms/{room}` | admin | close its connections (4404) and delete it → 204 |
//! | `POST /v1/rooms/{room}/tokens` | admin | mint a token (`{"role": "editor", "sub": "alice", "ttl_secs": 3600}`) → 201 |

// Handlers return `Result<Response, Response>`: the error is the refusal to send, built once
// and moved out; boxing it would only add an allocation per refusal.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Reply;
use warp::Filter;
use yrelay_doc::codec::{StateVectorV1, UpdateV1};
use yrelay_doc::ValidateLimits;

use crate::auth::{AuthError, Identity, MintError, Role};
use crate::http::{room_name_from_path, PeerAddr};
use crate::room::{ApplyRefusal, ReadAnswer, ReadRequest, RoomCmd};
use crate::server::AppState;

type Response = warp::reply::Response;

/// Most audit records one request returns.
const MAX_AUDIT_PAGE: usize = 1000;
/// Largest JSON body (versions, tokens).
const MAX_JSON_BODY: usize = 64 * 1024;
/// How long a REST update waits to become durable before the server answers 503.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// A JSON error body with `status`.
pub fn json_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message.to_string() })),
        status,
    )
    .into_response()
}

/// The answer to a refused token or key: its status, `WWW-Authenticate` on 401, and a count.
pub fn auth_refusal(err: &AuthError) -> Response {
    metrics::counter!("yrelay_auth_refusals_total", "reason" => err.label()).increment(1);
    let mut resp = json_error(err.status(), err);
    if err.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            warp::http::header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer realm=\"yrelay\""),
        );
    }
    resp
}

fn binary(data: Vec<u8>) -> Response {
    let mut resp = warp::reply::Response::new(Bytes::from(data).into());
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// A request that passed [`room_access`].
pub struct RoomRequest {
    /// The room, percent-decoded.
    pub room: String,
    /// Who asks.
    pub identity: Identity,
    /// Where from.
    pub peer: Arc<str>,
    /// The server.
    pub state: Arc<AppState>,
}

/// The raw query string, if any.
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone
{
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// `/v1/rooms/{room}/...` for a caller with at least `role` in that room (see the module
/// docs). Extracts the request, or the response that refuses it.
fn room_access(
    state: Arc<AppState>,
    role: Role,
) -> impl Filter<Extract = (Result<RoomRequest, Response>,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "rooms" / String / ..)
        .and(warp::header::headers_cloned())
        .and(raw_query())
        .and(warp::ext::optional::<PeerAddr>())
        .map(
            move |segment: String,
                  headers: HeaderMap,
                  query: Option<String>,
                  peer: Option<PeerAddr>| {
                let state = Arc::clone(&state);
                let room = room_from_segment(&state, &segment)?;
                let identity = identify(&state, &headers, query.as_deref(), &room)
                    .map_err(|e| auth_refusal(&e))?;
                if identity.role < role {
                    return Err(auth_refusal(&AuthError::InsufficientRole {
                        needed: role,
                        have: identity.role,
                    }));
                }
                Ok(RoomRequest {
                    room,
                    identity,
                    peer: peer_name(peer),
                    state,
                })
            },
        )
}

/// The room named by a `/v1/rooms/{room}` path segment (percent-decoded, checked like a
/// WebSocket room name), or 400.
fn room_from_segment(state: &AppState, segment: &str) -> Result<String, Response> {
    room_name_from_path(
        &format!("/{segment}"),
        state.config.limits.max_room_name_bytes,
    )
    .map_err(|e| json_error(StatusCode::BAD_REQUEST, e))
}

/// The admin key, or a token for `room`.
fn identify(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    room: &str,
) -> Result<Identity, AuthError> {
    let authorization = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.auth.is_admin(authorization) {
        return Ok(Identity {
            subject: Arc::from("admin"),
            role: Role::Owner,
            expires_at: None,
        });
    }
    let found = crate::auth::find_token(query, headers);
    state
        .auth
        .authorize(found.as_ref().map(|f| f.token.as_str()), room)
}

/// Admin routes: the request's `Authorization` must carry the admin key.
fn admin(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Result<Arc<AppState>, Response>,), Error = std::convert::Infallible> + Clone
{
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .map(move |authorization: Option<String>| {
            state
                .auth
                .check_admin(authorization.as_deref())
                .map(|()| Arc::clone(&state))
                .map_err(|e| auth_refusal(&e))
        })
}

fn peer_name(peer: Option<PeerAddr>) -> Arc<str> {
    peer.map_or_else(|| Arc::from("unknown"), |p| Arc::from(p.0.to_string()))
}

/// Reads a request body of at most `max` bytes; 413 past it (declared or actual).
async fn read_body<S, B>(headers: &HeaderMap, body: S, max: usize) -> Result<Bytes, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_big = || {
        crate::limits::refused("http_body_bytes");
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = body;
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        if out.len() + chunk.remaining() > max {
            return Err(too_big());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(out))
}

/// A body filter: headers and the body stream, read by [`read_body`] in the handler.
macro_rules! with_body {
    () => {
        warp::header::headers_cloned().and(warp::body::stream())
    };
}

/// Decodes base64 in any common flavour: standard or URL-safe, padded or not (a `+` that
/// query decoding turned into a space counts as `+`).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let plus = text.replace(' ', "+");
    let cleaned = plus.trim().trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(cleaned)
        .or_else(|_| URL_SAFE_NO_PAD.decode(cleaned))
        .ok()
}

/// Sends `cmd` to the room and waits for the answer; 503 if the room is unavailable.
async fn ask<T>(
    req: &RoomRequest,
    make: impl FnOnce(oneshot::Sender<T>) -> RoomCmd,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    let sent = req.state.registry.command(&req.room, make(reply)).await;
    match (sent, answer.await) {
        (true, Ok(value)) => Ok(value),
        _ => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "room unavailable (server shutting down or storage failing)",
        )),
    }
}

/// Runs a blocking store call; 500 with the error if it fails.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, yrelay_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// Either response.
fn unwrap(result: Result<Response, Response>) -> Response {
    result.unwrap_or_else(|e| e)
}

#[derive(Debug, serde::Deserialize)]
struct StateQuery {
    sv: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    label: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: Role,
    sub: String,
    ttl_secs: Option<u64>,
}

/// Parses an optional JSON body (empty means `T::default()`).
fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Every `/v1` route.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let s = &state;

    let get_state = room_access(Arc::clone(s), Role::Viewer)
        .and(warp::path!("state"))
        .and(warp::get())
        .and(warp::query::<StateQuery>())
        .then(
            |req: Result<RoomRequest, Response>, q: StateQuery| async move {
                unwrap(
                    async move {
                        let req = req?;
                        let sv = match q.sv {
                            None => None,
                            Some(text) => {
                                let bytes = decode_base64(&text).ok_or_else(|| {
                                    json_error(StatusCode::BAD_REQUEST, "sv is not base64")
                                })?;
                                Some(StateVectorV1::parse(Bytes::from(bytes)).map_err(|e| {
                                    json_error(
                                        StatusCode::BAD_REQUEST,
                                        format!("invalid state vector: {e}"),
                                    )
                                })?)
                            }
                        };
                        read(&req, ReadRequest::State(sv)).await
                    }
                    .await,
                )
            },
        );

    let get_state_vector = room_access(Arc::clone(s), Role::Viewer)
        .and(warp::path!("state-vector"))
        .and(warp::get())
        .then(|req: Result<RoomRequest, Response>| async move {
            unwrap(async move { read(&req?, ReadRequest::StateVector).await }.await)
        });

    let get_json = room_access(Arc::clone(s), Role::Viewer)
        .and(warp::path!("json"))
        .and(warp::get())
        .then(|req: Result<RoomRequest, Response>| async move {
            unwrap(async move { read(&req?, ReadRequest::Json).await }.await)
        });

    let post_update = room_access(Arc::clone(s), Role::Editor)
        .and(warp::path!("update"))
        .and(warp::post())
        .and(with_body!())
        .then(
            |req: Result<RoomRequest, Response>, headers: HeaderMap, body| async move {
                unwrap(async move { post_update(req?, headers, Box::pin(body)).await }.await)
            },
        );

    let list_versions = room_access(Arc::clone(s), Role::Viewer)
        .and(warp::path!("versions"))
        .and(warp::get())
        .then(|req: Result<RoomRequest, Response>| async move {
            unwrap(
                async move {
                    let req = req?;
                    let store = Arc::clone(req.state.registry.store());
                    let room = req.room;
                    let list = blocking(move || store.list_versions(&room)).await?;
                    Ok(warp::reply::json(&serde_json::json!({ "versions": list })).into_response())
                }
                .await,
            )
        });

    let create_version = room_access(Arc::clone(s), Role::Editor)
        .and(warp::path!("versions"))
        .and(warp::post())
        .and(with_body!())
        .then(
            |req: Result<RoomRequest, Response>, headers: HeaderMap, body| async move {
                unwrap(
                    async move {
                        let req = req?;
                        let body = read_body(&headers, Box::pin(body), MAX_JSON_BODY).await?;
                        let new: NewVersion = parse_json(&body)?;
                        let info = ask(&req, |reply| RoomCmd::CreateVersion {
                            label: new.label,
                            reply,
                        })
                        .await?
                        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                        Ok(
                            warp::reply::with_status(warp::reply::json(&info), StatusCode::CREATED)
                                .into_response(),
                        )
                    }
                    .await,
                )
            },
        );

    let get_version = room_access(Arc::clone(s), Role::Viewer)
        .and(warp::path!("versions" / u64))
        .and(warp::get())
        .then(|req: Result<RoomRequest, Response>, id: u64| async move {
            unwrap(
                async move {
                    let req = req?;
                    let store = Arc::clone(req.state.registry.store());
                    let room = req.room;
                    match blocking(move || store.get_version(&room, id)).await? {
                        Some((_, data)) => Ok(binary(data)),
                        None => Err(json_error(
                            StatusCode::NOT_FOUND,
                            format!("no version {id}"),
                        )),
                    }
                }
                .await,
            )
        });

    let restore = room_access(Arc::clone(s), Role::Owner)
        .and(warp::path!("versions" / u64 / "restore"))
        .and(warp::post())
        .then(|req: Result<RoomRequest, Response>, id: u64| async move {
            unwrap(
                async move {
                    let req = req?;
                    match ask(&req, |reply| RoomCmd::Restore { id, reply }).await? {
                        Ok(Some(changed)) => Ok(warp::reply::json(
                            &serde_json::json!({ "restored": id, "changed": changed }),
                        )
                        .into_response()),
                        Ok(None) => Err(json_error(
                            StatusCode::NOT_FOUND,
                            format!("no version {id}"),
                        )),
                        Err(e) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
                    }
                }
                .await,
            )
        });

    let audit = room_access(Arc::clone(s), Role::Owner)
        .and(warp::path!("audit"))
        .and(warp::get())
        .and(warp::query::<AuditQuery>())
        .then(
            |req: Result<RoomRequest, Response>, q: AuditQuery| async move {
                unwrap(
                    async move {
                        let req = req?;
                        let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
                        let store = Arc::clone(req.state.registry.store());
                        let (room, after) = (req.room, q.after);
                        let records = blocking(move || store.audit(&room, after, limit)).await?;
                        let next_after = if records.len() == limit {
                            records.last().map(|r| r.seq)
                        } else {
                            None
                        };
                        Ok(warp::reply::json(
                            &serde_json::json!({ "records": records, "next_after": next_after }),
                        )
                        .into_response())
                    }
                    .await,
                )
            },
        );

    let list_rooms = warp::path!("v1" / "rooms")
        .and(warp::get())
        .and(admin(Arc::clone(s)))
        .then(|state: Result<Arc<AppState>, Response>| async move {
            unwrap(async move { list_rooms(state?).await }.await)
        });

    let delete_room =
        warp::path!("v1" / "rooms" / String)
            .and(warp::delete())
            .and(admin(Arc::clone(s)))
            .and(warp::ext::optional::<PeerAddr>())
            .then(
                |segment: String,
                 state: Result<Arc<AppState>, Response>,
                 peer: Option<PeerAddr>| async move {
                    unwrap(
                    async move {
                        let state = state?;
                        let room = room_from_segment(&state, &segment)?;
                        let req = RoomRequest {
                            room,
                            identity: Identity::anonymous_owner(),
                            peer: peer_name(peer),
                            state,
                        };
                        ask(&req, |reply| RoomCmd::Delete { reply })
                            .await?
                            .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                        tracing::info!(room = %req.room, peer = %req.peer, "room deleted by admin");
                        Ok(StatusCode::NO_CONTENT.into_response())
                    }
                    .await,
                )
                },
            );

    let mint =
        warp::path!("v1" / "rooms" / String / "tokens")
            .and(warp::post())
            .and(admin(Arc::clone(s)))
            .and(with_body!())
            .then(
                |segment: String,
                 state: Result<Arc<AppState>, Response>,
                 headers: HeaderMap,
                 body| async move {
                    unwrap(
                        async move { mint(segment, state?, headers, Box::pin(body)).await }.await,
                    )
                },
            );

    get_state
        .or(get_state_vector)
        .unify()
        .or(get_json)
        .unify()
        .or(post_update)
        .unify()
        .or(list_versions)
        .unify()
        .or(create_version)
        .unify()
        .or(get_version)
        .unify()
        .or(restore)
        .unify()
        .or(audit)
        .unify()
        .or(list_rooms)
        .unify()
        .or(delete_room)
        .unify()
        .or(mint)
        .unify()
}

async fn read(req: &RoomRequest, what: ReadRequest) -> Result<Response, Response> {
    match ask(req, |reply| RoomCmd::Read { what, reply }).await? {
        ReadAnswer::Bytes(data) => Ok(binary(data)),
        ReadAnswer::Json(value) => Ok(warp::reply::json(&value).into_response()),
    }
}

async fn post_update<S, B>(
    req: RoomRequest,
    headers: HeaderMap,
    body: S,
) -> Result<Response, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let limits = &req.state.config.limits;
    let body = read_body(&headers, body, limits.max_http_body_bytes).await?;
    let validate = ValidateLimits {
        max_depth: limits.max_nesting_depth,
    };
    let update = {
        let _turn = if body.len() >= crate::conn::LARGE_MESSAGE_BYTES {
            match tokio::time::timeout(
                req.state.config.timeouts.write(),
                Arc::clone(&req.state.decodes).acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    crate::limits::refused("concurrent_decodes");
                    return Err(json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server busy decoding large messages; retry later",
                    ));
                }
            }
        } else {
            None
        };
        UpdateV1::parse(body, &validate)
            .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("invalid update: {e}")))?
    };
    let author = Arc::clone(&req.identity.subject);
    let origin: Arc<str> = Arc::from(format!("rest {}", req.peer));
    let answer = ask(&req, |reply| RoomCmd::ApplyUpdate {
        update,
        author,
        origin,
        reply,
    });
    match tokio::time::timeout(DURABLE_WAIT, answer).await {
        Err(_) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "update applied but not confirmed durable in time (storage slow); sending it again is safe",
        )),
        Ok(answer) => match answer? {
            Ok(changed) => {
                Ok(warp::reply::json(&serde_json::json!({ "changed": changed })).into_response())
            }
            Err(refusal) => {
                let status = match refusal {
                    ApplyRefusal::DocumentTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    ApplyRefusal::MissingDependencies => StatusCode::CONFLICT,
                    ApplyRefusal::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    ApplyRefusal::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                Err(json_error(status, refusal))
            }
        },
    }
}

/// One room in `GET /v1/rooms`.
#[derive(Debug, Default, serde::Serialize)]
struct RoomListing {
    name: String,
    stored_bytes: u64,
    log_entries: u64,
    last_change_ms: u64,
    connections: usize,
    loaded: bool,
}

async fn list_rooms(state: Arc<AppState>) -> Result<Response, Response> {
    let store = Arc::clone(state.registry.store());
    let stored = blocking(move || store.list_rooms()).await?;
    let mut rooms: BTreeMap<String, RoomListing> = stored
        .into_iter()
        .map(|r| {
            let listing = RoomListing {
                name: r.name.clone(),
                stored_bytes: r.stored_bytes,
                log_entries: r.log_entries,
                last_change_ms: r.last_change_ms,
                ..RoomListing::default()
            };
            (r.name, listing)
        })
        .collect();
    // Rooms in memory that have nothing stored yet are listed too.
    for name in state.registry.loaded_names() {
        rooms
            .entry(name.to_string())
            .or_insert_with(|| RoomListing {
                name: name.to_string(),
                ..RoomListing::default()
            });
    }
    for listing in rooms.values_mut() {
        listing.loaded = state.registry.is_loaded(&listing.name);
        listing.connections = state.room_conns.count(&Arc::from(listing.name.as_str()));
    }
    let rooms: Vec<RoomListing> = rooms.into_values().collect();
    Ok(warp::reply::json(&serde_json::json!({ "rooms": rooms })).into_response())
}

async fn mint<S, B>(
    segment: String,
    state: Arc<AppState>,
    headers: HeaderMap,
    body: S,
) -> Result<Response, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let room = room_from_segment(&state, &segment)?;
    let body = read_body(&headers, body, MAX_JSON_BODY).await?;
    let new: NewToken = serde_json::from_slice(&body).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body (expected {{\"role\", \"sub\", \"ttl_secs\"}}): {e}"),
        )
    })?;
    let ttl = new.ttl_secs.unwrap_or(3600);
    let token = state
        .auth
        .mint(&room, new.role, &new.sub, ttl)
        .map_err(|e| {
            let status = match e {
                MintError::NoSecret => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            json_error(status, e)
        })?;
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_add(ttl);
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({
            "token": token,
            "room": room,
            "role": new.role,
            "sub": new.sub,
            "expires_at": expires_at,
        })),
        StatusCode::CREATED,
    )
    .into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_every_flavour() {
        let data = vec![0xfb, 0xff, 0x01, 0x02];
        for text in ["+/8BAg==", "+/8BAg", "-_8BAg", " /8BAg=="] {
            assert_eq!(decode_base64(text), Some(data.clone()), "{text}");
        }
        assert_eq!(decode_base64("!!"), None);
        assert_eq!(decode_base64(""), Some(Vec::new()));
    }
}
