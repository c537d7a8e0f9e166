//! yrelay: a Yjs sync relay speaking the y-websocket protocol over WebSockets (plain or TLS).
//!
//! The library holds the whole server; the `yrelay` binary only parses configuration,
//! installs logging and handles signals, then calls [`run`].
//!
//! # Layout
//! - [`config`]: [`Config`], every limit and timeout with its default.
//! - [`server`]: [`run`] — accept loop, TLS, hyper connections, ordered shutdown.
//! - [`http`]: the warp routes and the WebSocket upgrade (token, limits), room-name parsing.
//! - [`api`]: the REST API under `/v1` (document access, versions, audit, admin).
//! - [`auth`]: tokens (JWT), roles and the admin key.
//! - [`limits`]: connection counts, the per-connection message rate, the decode budget.
//! - [`metrics`]: the Prometheus recorder behind `/metrics`.
//! - [`conn`]: one connection's reader and writer, generic over a frame stream/sink.
//! - [`room`]: the room registry and the one task per room that owns its document.
//! - [`persist`]: a room's write pipeline: update log, durability modes, compaction.
//! - [`cluster`]: cluster mode, the Redis pub/sub bridge between nodes.
//! - [`close`]: the table of WebSocket close codes, in one place.
//! - [`tls`]: rustls configuration from PEM files.
//!
//! Data flow: the reader validates a frame (`yrelay-doc`), the room task applies it to its
//! `RoomDoc` and fans out the already-framed bytes to every subscriber's bounded queue, and
//! each writer flushes what is queued in one write.

pub mod api;
pub mod auth;
pub mod close;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod persist;
pub mod room;
pub mod server;
pub mod tls;

pub use config::Config;
pub use server::run;
