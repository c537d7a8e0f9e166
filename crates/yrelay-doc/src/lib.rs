//! Pure Yjs document and y-protocols wire logic for yrelay.
//!
//! This crate does no I/O and knows nothing about async runtimes: it takes bytes in and gives
//! bytes out. The networked server, the persistence layer and the client library all build on
//! it, so the rules about untrusted input live here, once.
//!
//! # Layout
//! - [`validate`]: walks untrusted lib0 v1 bytes (updates, state vectors, awareness updates)
//!   without allocating by declared counts, and refuses anything `yrs` could choke on
//!   (memory bombs, client IDs ≥ 2^53, clock overflow, deep nesting, bad UTF-8 or JSON).
//! - [`codec`]: y-protocols message framing (`sync` / `awareness` / `auth` / `query awareness`),
//!   decoding of client frames into validated payloads, and encoding of server frames.
//! - [`room`]: [`RoomDoc`], the CRDT state of one room (a `yrs` `Doc` plus its `Awareness`),
//!   which only merges — it never transforms operations.
//! - [`json`]: a JSON rendering of a document for humans and scripts, root types inferred
//!   from their content.
//! - [`restore`]: the update that makes the current document equal an old version, so live
//!   clients converge to it as an ordinary edit.
//!
//! Validated payload types ([`codec::UpdateV1`], [`codec::StateVectorV1`],
//! [`codec::AwarenessUpdateV1`]) can only be built by validation, so every byte string that
//! reaches `yrs` through this crate has been checked first.

pub mod codec;
pub mod json;
pub mod restore;
pub mod room;
pub mod validate;

pub use codec::{
    decode_client_message, AwarenessUpdateV1, ClientMessage, ProtocolError, StateVectorV1, UpdateV1,
};
pub use room::{Applied, AwarenessChange, DocError, RoomDoc};
pub use validate::{ClientRun, InvalidInput, ValidateLimits};
