//! Persistence for yrelay: each room's update log, its compacted snapshot, saved versions and
//! the audit trail, behind the [`Store`] trait.
//!
//! The relay appends every update a room accepts to that room's log under the next sequence
//! number ([`Seq`]), flushes (fsync) according to its durability setting, and from time to
//! time *compacts*: it encodes its whole document and asks the store to swap that in as the
//! snapshot while dropping the log entries it already contains. Loading a room is: apply the
//! snapshot, then every remaining log entry in order ([`LoadedRoom`]).
//!
//! The store never interprets the bytes it keeps (they are v1 Yjs updates or document states,
//! but that is the caller's business). Everything here is synchronous; the async server calls
//! it from `spawn_blocking`.
//!
//! # Layout
//!
//! - [`Store`] and the types it speaks (this file).
//! - [`StoreError`] (`error.rs`): what can go wrong, one variant per cause.
//! - [`MemoryStore`] (`memory.rs`): an in-memory double for unit tests of the server.
//! - [`SledStore`] (`sled_store.rs`): the embedded default, on sled 0.34. Its key schema is
//!   in `keys.rs`, drawn below.
//! - `PgStore` (`pg_store.rs`, cargo feature `postgres`, off by default): the shared store
//!   of cluster mode, in PostgreSQL; its schema (`pg_migrations/*.sql`) is drawn below.
//!   `pg_tls.rs`: its TLS connector (`sslmode=require`, always verified).
//! - `tls` (`tls.rs`, cargo feature `tls`, implied by `postgres`): the verified rustls client
//!   configuration of PostgreSQL connections and of `yrelay-client`'s transports (Redis TLS
//!   is the redis crate's own, with the same roots and ring).
//! - `meta.rs`: per-room bookkeeping (next seq, counters, what an import may replace) shared
//!   by every store, so they cannot disagree on semantics.
//! - `migrate.rs`: [`migrate`], which copies every room of one store into another with
//!   [`Store::export_room`] / [`Store::import_room`] (`yrelay migrate`: sled → PostgreSQL).
//! - `codec.rs`: the rmp-serde value encodings of [`SledStore`].
//! - `locks.rs`: the per-room lock stripes of [`SledStore`].
//! - `conformance.rs` (tests only): one set of cases run against every store, plus rooms
//!   moved between every pair of stores.
//!
//! # Semantics shared by every store
//!
//! - Seqs start at 1 per room and never go back: not after compaction, not after a reboot,
//!   and not even after [`Store::delete_room`] (a deleted room keeps a tombstone holding its
//!   counters, so a reused name continues where the old room stopped; a server that still
//!   has the room in memory, or a client holding a version id, can never confuse an old entry
//!   with a new one). Version ids behave the same way.
//! - A room exists (is listed by [`Store::list_rooms`]) from its first append, compaction or
//!   version until it is deleted.
//! - Audit records are kept when compaction folds their updates into the snapshot; only
//!   [`Store::delete_room`] removes them.
//! - [`Store::compact_with`] never runs twice at once for one room; an import never merges
//!   into a room the store already has ([`StoreError::RoomExists`]).
//!
//! # The sled key schema
//!
//! Everything lives in one sled tree, `yrelay-store`, so that every write — an append with
//! its audit records and room metadata, a compaction, a deletion — is a single
//! [`sled::Batch`] applied with `apply_batch`, which sled recovers all or nothing after a
//! crash. (The alternative, one tree per kind and a multi-tree transaction, buys nothing here
//! and sled transactions cannot scan, which compaction and deletion need.)
//!
//! Every key starts with a one-byte tag; per-room keys continue with the room name,
//! length-prefixed, then (for logs, audit records and versions) a big-endian `u64`, so that a
//! byte-wise scan visits them in numeric order:
//!
//! ```text
//!  room(r) = len(r): u32 BE ‖ r as UTF-8          e.g. "ab" → 00 00 00 02 61 62
//!
//!  key                            value (rmp-serde, named fields; bytes as msgpack bin)
//!  ─────────────────────────────  ──────────────────────────────────────────────────────
//!  'F'                            format version: u32 (1); checked on open
//!  'H'                            health probe: u64 ms of the last `check` (see Store::check)
//!  'm' ‖ room(r)                  RoomMeta { live, next_seq, last_change_ms, snapshot_seq,
//!                                            snapshot_bytes, tail_entries, tail_bytes,
//!                                            next_version_id }
//!  's' ‖ room(r)                  Snapshot { seq, state }        (absent until compacted)
//!  'l' ‖ room(r) ‖ seq: u64 BE    LogEntry { update }            (the tail: seq > snapshot seq)
//!  'a' ‖ room(r) ‖ seq: u64 BE    AuditRecord { seq, author, origin, time_ms, bytes }
//!  'v' ‖ room(r) ‖ id: u64 BE     VersionInfo { id, kind, label, created_ms, seq, bytes }
//!  'w' ‖ room(r) ‖ id: u64 BE     VersionState { state }         (apart, so listing is cheap)
//! ```
//!
//! Why the tag comes first: [`Store::list_rooms`] scans only the `'m'` keys (the counters in
//! `RoomMeta` give the sizes without touching the log), and each per-room kind is one prefix
//! scan. Why the length prefix: room names are arbitrary strings (`/`, NUL, anything), and
//! `room(r)` is *prefix-free* — no `room(a)` is a prefix of `room(b)` for `a ≠ b` (equal
//! lengths differ in the name bytes, different lengths differ in the first four bytes) — so
//! the scan of `'l' ‖ room("a")` can never reach into room `"ab"` or `"a/b"`.
//!
//! `RoomMeta` is written in the same batch as every change it describes, so it always agrees
//! with the log after a crash: `tail_entries` is the number of `'l'` keys of the room, and
//! every one of them has `snapshot_seq < seq < next_seq`. [`SledStore::load`] checks exactly
//! that and reports [`StoreError::Corrupt`] otherwise.
//!
//! # Durability
//!
//! Writes are visible at once but durable only after [`Store::flush`] (for [`SledStore`]:
//! `sled::Db::flush`, which writes sled's buffers and fsyncs). sled 0.34 also flushes by
//! itself every 500 ms by default (`Config::flush_every_ms`), so an unflushed write is usually
//! on disk within half a second — but only what was flushed before a crash is guaranteed.
//! Whatever survives, each batch (one `append`, `compact`, `save_version` or `delete_room`)
//! survives whole or not at all.
//!
//! # The PostgreSQL schema (`PgStore`, feature `postgres`)
//!
//! One table per kind of record, created and upgraded by embedded migrations when the store
//! opens (`yrelay_schema_migrations` records which ran; they run in one transaction under an
//! advisory lock, so nodes starting together apply each exactly once; a database migrated by
//! a newer yrelay is refused with [`StoreError::UnsupportedFormat`]). Names and other strings
//! are `bytea` holding UTF-8 (PostgreSQL `text` cannot hold NUL, room names can):
//!
//! ```text
//!  table                      primary key   columns
//!  ─────────────────────────  ────────────  ─────────────────────────────────────────────────
//!  yrelay_schema_migrations   version       description, applied_at
//!  yrelay_rooms               room          live, next_seq, last_change_ms, snapshot_seq,
//!                                           snapshot_bytes, tail_entries, tail_bytes,
//!                                           next_version_id           (= RoomMeta; tombstones
//!                                                                       have live = false)
//!  yrelay_snapshots           room          seq, state                (absent until compacted)
//!  yrelay_log                 (room, seq)   payload                   (the tail)
//!  yrelay_audit               (room, seq)   author, origin, time_ms, bytes
//!  yrelay_versions            (room, id)    kind, label, created_ms, seq, bytes, state
//!                                           (listing selects all but state)
//!  yrelay_health              id            checked_ms                (Store::check's write)
//! ```
//!
//! Each operation is one transaction. A write of a room locks its `yrelay_rooms` row (`FOR
//! UPDATE`, created on first use): appends from several nodes to one room queue there and
//! get consecutive seqs. Compaction, deletion and import also take a per-room advisory lock
//! (a 64-bit FNV-1a hash of the name); [`Store::compact_with`] only *tries* it, so a node
//! finding another compacting the room skips at once. Reads run in `REPEATABLE READ READ
//! ONLY` transactions, so a load sees one consistent state of the room.
//!
//! Durability: every write is a transaction committed before the call returns — with
//! PostgreSQL's default `synchronous_commit = on`, on disk (WAL fsynced) — so `flush` does
//! nothing. The store keeps a small connection pool and reconnects by itself after the
//! database restarts; calls made while it is unreachable fail with
//! [`StoreError::Unavailable`].

mod codec;
mod error;
mod keys;
mod locks;
mod memory;
mod meta;
mod migrate;
#[cfg(feature = "postgres")]
mod pg_store;
#[cfg(feature = "postgres")]
mod pg_tls;
mod sled_store;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(test)]
mod conformance;

use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use memory::MemoryStore;
pub use migrate::{migrate, MigrateOutcome, MigrateReport};
#[cfg(feature = "postgres")]
pub use pg_store::{PgOptions, PgStore};
pub use sled_store::SledStore;

/// Per-room sequence number of a log entry, starting at 1.
pub type Seq = u64;

/// Result of every store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One update to append, with its audit facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendEntry {
    /// The update (v1 Yjs update; opaque to the store).
    pub update: Vec<u8>,
    /// Who sent it (token subject, or whatever the server uses to name a peer).
    pub author: String,
    /// Where it came from (connection, REST call, cluster peer, restore, ...).
    pub origin: String,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// One audit record (kept even after the update itself was compacted away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Log position of the update.
    pub seq: Seq,
    /// [`AppendEntry::author`].
    pub author: String,
    /// [`AppendEntry::origin`].
    pub origin: String,
    /// [`AppendEntry::time_ms`].
    pub time_ms: u64,
    /// Size of the update in bytes.
    pub bytes: u64,
}

/// What [`Store::load`] returns: apply `snapshot` (if any) then every `tail` update in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedRoom {
    /// The compacted document state, if the room was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Last seq folded into the snapshot, 0 if none.
    pub snapshot_seq: Seq,
    /// The log entries after the snapshot, oldest first.
    pub tail: Vec<(Seq, Vec<u8>)>,
    /// Seq the next append gets (1 for an unknown room; the derived `Default` has 0, which
    /// `load` never returns).
    pub next_seq: Seq,
}

/// Why a version was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionKind {
    /// Periodic, taken by the server.
    Auto,
    /// Asked for by a user, usually with a label.
    Named,
}

/// Description of a saved version (its state is fetched with [`Store::get_version`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Per room, increasing from 1 (never reused, not even after the room is deleted).
    pub id: u64,
    /// Automatic or named.
    pub kind: VersionKind,
    /// A user's label, if any.
    pub label: Option<String>,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Log position it captures.
    pub seq: Seq,
    /// Size of the saved state in bytes.
    pub bytes: u64,
}

/// A room as [`Store::list_rooms`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's name.
    pub name: String,
    /// Number of log entries after the snapshot (the tail length).
    pub log_entries: u64,
    /// Bytes of snapshot plus tail updates (payloads only, not counting keys or encoding).
    pub stored_bytes: u64,
    /// Newest `time_ms` of any appended entry, 0 if nothing was appended.
    pub last_change_ms: u64,
}

/// A room store. Every method is blocking; call it from a blocking thread.
///
/// Implementations are safe to call concurrently, also for the same room: operations on one
/// room are serialized (the server additionally has a single writer per room).
pub trait Store: Send + Sync + 'static {
    /// Appends entries to `room`'s log in order, each under the next seq, plus one audit
    /// record each; returns the seqs given. All or nothing. Not necessarily durable until
    /// [`Store::flush`]. Appending nothing changes nothing (and does not create the room).
    fn append(&self, room: &str, entries: &[AppendEntry]) -> Result<Vec<Seq>>;

    /// Makes everything written so far durable (sled: flush, i.e. fsync).
    fn flush(&self) -> Result<()>;

    /// Loads a room (an unknown room loads empty with next_seq 1; a deleted one loads empty
    /// with the next_seq it had).
    fn load(&self, room: &str) -> Result<LoadedRoom>;

    /// Atomically replaces the room's snapshot by `state` and removes every tail entry with
    /// seq <= `upto` (one sled batch: after a crash either the old snapshot+tail or the new
    /// snapshot+remaining tail is visible, never neither). Entries > upto stay. `state` must
    /// already contain everything up to `upto`. Seqs keep increasing after compaction
    /// (next_seq never goes back).
    ///
    /// `upto` must lie in `snapshot_seq..next_seq`; anything else is refused with
    /// [`StoreError::CompactRange`] (an older snapshot would lose the entries the current one
    /// already dropped; a seq not yet given out would swallow future appends).
    fn compact(&self, room: &str, state: &[u8], upto: Seq) -> Result<()>;

    /// Compacts from what the store holds — for cluster mode, where several nodes append to
    /// one room and no node's memory is known to hold every log entry.
    ///
    /// Reads the room's snapshot and tail; with an empty tail returns `Ok(None)` and changes
    /// nothing. Else calls `merge(&loaded)`, which must return a state containing the
    /// snapshot and every tail entry, replaces the snapshot by it and removes the tail
    /// entries it covers (seq <= `upto`, the last seq loaded; entries appended meanwhile
    /// stay), and returns `Some(upto)`. A `merge` error becomes [`StoreError::Merge`] and
    /// nothing changes.
    ///
    /// Two calls never compact one room at once: in one process a call waits for the other
    /// ([`MemoryStore`], [`SledStore`]: the room's lock is held around `merge`), and with
    /// the shared PostgreSQL store a node that finds another node compacting the room
    /// returns `Ok(None)` at once (a per-room advisory lock). So `merge` must not call the
    /// store itself, and should be quick for the room's other operations' sake.
    ///
    /// The provided implementation (load, merge, [`Store::compact`]) is only right for a
    /// store with a single caller per room; the stores of this crate override it.
    fn compact_with(
        &self,
        room: &str,
        merge: &mut dyn FnMut(&LoadedRoom) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<Seq>> {
        let loaded = self.load(room)?;
        let Some(&(upto, _)) = loaded.tail.last() else {
            return Ok(None);
        };
        let state = merge(&loaded).map_err(StoreError::Merge)?;
        self.compact(room, &state, upto)?;
        Ok(Some(upto))
    }

    /// Every existing room, sorted by name.
    fn list_rooms(&self) -> Result<Vec<RoomInfo>>;

    /// Removes everything of a room (log, snapshot, versions, audit). Only a tombstone with
    /// the counters stays, so seqs and version ids of the name never go back. Deleting an
    /// unknown room does nothing.
    fn delete_room(&self, room: &str) -> Result<()>;

    /// Saves `state` as a new version of `room`, taken at log position `seq`; returns its
    /// description (with the next version id of the room).
    fn save_version(
        &self,
        room: &str,
        kind: VersionKind,
        label: Option<&str>,
        state: &[u8],
        seq: Seq,
        created_ms: u64,
    ) -> Result<VersionInfo>;

    /// The room's versions, newest first.
    fn list_versions(&self, room: &str) -> Result<Vec<VersionInfo>>;

    /// One version and its state, or `None` if the room has no version `id`.
    fn get_version(&self, room: &str, id: u64) -> Result<Option<(VersionInfo, Vec<u8>)>>;

    /// Audit records with seq > `after` (None: from the start), oldest first, at most `limit`.
    fn audit(&self, room: &str, after: Option<Seq>, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Proves the store can still write durably (readiness probe): writes a small probe
    /// record and flushes it.
    fn check(&self) -> Result<()>;

    /// The name of every room the store holds anything for, *deleted rooms' tombstones
    /// included* (unlike [`Store::list_rooms`]), sorted: what [`migrate`] copies.
    ///
    /// The provided implementation lists [`Store::list_rooms`] (a store without
    /// tombstones); the stores of this crate override it.
    fn room_names(&self) -> Result<Vec<String>> {
        Ok(self.list_rooms()?.into_iter().map(|r| r.name).collect())
    }

    /// Everything of one room, to move it to another store with [`Store::import_room`]:
    /// `None` for a name the store knows nothing of; a deleted room exports its tombstone
    /// (`live: false`, only the counters). Read consistently (no write of the room is seen
    /// half).
    ///
    /// The provided implementation refuses ([`StoreError::Unsupported`]).
    fn export_room(&self, room: &str) -> Result<Option<RoomDump>> {
        let _ = room;
        Err(StoreError::Unsupported("export_room"))
    }

    /// Creates a room from a [`RoomDump`] (of another store), so that every answer about it
    /// — [`Store::load`], [`Store::list_rooms`], [`Store::list_versions`],
    /// [`Store::get_version`], [`Store::audit`], and the seqs and version ids handed out
    /// next — equals the source's. All or nothing.
    ///
    /// Refuses with [`StoreError::RoomExists`] when the store already has the room live,
    /// or a tombstone of it whose counters are ahead of the dump's (so a migration never
    /// merges two histories silently); a tombstone that is not ahead is replaced. Refuses a
    /// dump that breaks a room's invariants with [`StoreError::InvalidDump`].
    ///
    /// The provided implementation refuses ([`StoreError::Unsupported`]).
    fn import_room(&self, dump: &RoomDump) -> Result<()> {
        let _ = dump;
        Err(StoreError::Unsupported("import_room"))
    }
}

/// Everything of one room, as [`Store::export_room`] reads it and [`Store::import_room`]
/// writes it: the log (snapshot and tail), the counters, the audit trail and the versions.
///
/// A deleted room's tombstone has `live: false`, its counters, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomDump {
    /// The room's name.
    pub room: String,
    /// Whether the room exists; `false` for a deleted room's tombstone.
    pub live: bool,
    /// The compacted state, if the room was compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Last seq folded into the snapshot (0: none).
    pub snapshot_seq: Seq,
    /// The log entries after the snapshot, oldest first.
    pub tail: Vec<(Seq, Vec<u8>)>,
    /// Seq the next append gets.
    pub next_seq: Seq,
    /// Every audit record (also of entries folded into the snapshot), oldest first.
    pub audit: Vec<AuditRecord>,
    /// Every version with its state, oldest first.
    pub versions: Vec<(VersionInfo, Vec<u8>)>,
    /// Id the next version gets.
    pub next_version_id: u64,
    /// [`RoomInfo::last_change_ms`].
    pub last_change_ms: u64,
}
