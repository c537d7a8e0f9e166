//! The store's error type: one variant per cause, so the server can tell a broken disk
//! ([`StoreError::Sled`]) from a caller mistake ([`StoreError::CompactRange`]).

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
}
