//! An offline-first client for y-websocket servers (yrelay, or any server speaking the
//! y-websocket protocol), built on [`yrs`].
//!
//! - [`Client`]: a `yrs::Doc` kept in sync with one room over WebSocket (or HTTP polling
//!   against yrelay's REST API), with presence (awareness), events, reconnects with
//!   jittered exponential backoff, and a local [`Replica`] that holds every edit before it
//!   leaves, so the document survives restarts and long offline periods.
//! - [`RestClient`]: yrelay's REST API (document state, versions, admin routes).
//! - [`sync_replica`]: one state-vector exchange between a replica and a server, both ways.
//!
//! See `docs/client.md` for a quick start and the `yrelay doc ...` command line built on it.

mod client;
mod endpoint;
mod error;
mod oneshot;
mod replica;
pub mod rest;
mod tls;

pub use client::{Backoff, Client, ClientConfig, Event, Status, Transport};
pub use endpoint::Endpoint;
pub use error::{ClientError, Result};
pub use oneshot::{sync_replica, SyncReport};
pub use replica::Replica;
pub use rest::RestClient;
