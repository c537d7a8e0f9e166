//! The store's error type: one variant per cause, so the server can tell a broken disk
//! ([`StoreError::Sled`]) or an unreachable database ([`StoreError::Unavailable`]) from a
//! caller mistake ([`StoreError::CompactRange`]).
//!
//! The PostgreSQL variants carry the driver's message as a `String`, so that the enum (and
//! every `match` on it in the server) is the same with and without the `postgres` feature.

use crate::Seq;

/// Everything a [`crate::Store`] operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed: an I/O error, a corrupt file sled detected itself, or the database
    /// directory is locked by another process.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A value could not be encoded with rmp-serde (not expected with our types; reported
    /// rather than panicking).
    #[error("encoding a stored value: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A stored value could not be decoded with rmp-serde: the bytes on disk are not what
    /// this version of the store writes.
    #[error("decoding a stored value: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// Stored data breaks an invariant of the layout (a key of the wrong shape, a log entry
    /// outside the room's seq range, counters that disagree with the log, ...).
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The database was written with a layout this version does not know.
    #[error("store format {found} is not supported (this build reads format {supported})")]
    UnsupportedFormat {
        /// Format version found in the database.
        found: u32,
        /// Format version this build reads and writes.
        supported: u32,
    },
    /// [`crate::Store::compact`] was asked to fold up to a seq outside
    /// `snapshot_seq..next_seq` of the room.
    #[error("cannot compact up to seq {upto}: the room's snapshot is at {snapshot_seq} and its next seq is {next_seq}")]
    CompactRange {
        /// The requested `upto`.
        upto: Seq,
        /// The room's current snapshot seq.
        snapshot_seq: Seq,
        /// The seq the room's next append gets.
        next_seq: Seq,
    },
    /// A room name too long to be stored (more than `u32::MAX` bytes).
    #[error("room name of {0} bytes is too long")]
    RoomNameTooLong(usize),
    /// The database cannot be reached, or the connection was lost during the operation
    /// (PostgreSQL down or restarting, network trouble, connect timeout). Transient: the
    /// store reconnects by itself on a later call. A write that failed this way may or may
    /// not have been committed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused an operation (an SQL error, a missing table, a value of the
    /// wrong type, ...). Not expected in operation; the message says what PostgreSQL said.
    #[error("database error: {0}")]
    Database(String),
    /// The `merge` callback of [`crate::Store::compact_with`] failed; nothing was changed.
    #[error("compaction merge failed: {0}")]
    Merge(String),
    /// [`crate::Store::import_room`] refused: the store already has the room (`deleted:
    /// false`), or has a deleted room of that name whose counters are ahead of the imported
    /// ones, so seqs or version ids would go back (`deleted: true`). An import never merges
    /// two histories.
    #[error("{}", if *.deleted {
        format!("room {room:?} was deleted in this store with counters ahead of the imported room (its seqs or version ids would go back)")
    } else {
        format!("room {room:?} already exists in this store (an import never merges two histories)")
    })]
    RoomExists {
        /// The room's name.
        room: String,
        /// Whether what is in the way is a deleted room's tombstone.
        deleted: bool,
    },
    /// A [`crate::RoomDump`] given to [`crate::Store::import_room`] breaks the invariants of
    /// a room (a log entry outside the seq range, versions out of order, ...).
    #[error("invalid room dump: {0}")]
    InvalidDump(String),
    /// The store does not implement this operation (a store that only overrides the
    /// required methods of [`crate::Store`], such as a test double).
    #[error("{0} is not supported by this store")]
    Unsupported(&'static str),
}
