//! [`migrate`]: copies every room of one store into another (`yrelay migrate`: a single
//! node's sled directory into the PostgreSQL database of a cluster), room by room with
//! [`Store::export_room`] and [`Store::import_room`].
//!
//! A room the target already has is skipped and reported, never merged: two histories of
//! one room cannot be combined by a store (its seqs would collide). Running a migration
//! again after it stopped half-way therefore copies exactly the rooms still missing.

use std::fmt;

use crate::meta::len64;
use crate::{Result, Store, StoreError};

/// What [`migrate`] did with one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateOutcome {
    /// The room was copied.
    Copied {
        /// Log entries after the snapshot.
        log_entries: u64,
        /// Saved versions.
        versions: u64,
        /// Audit records.
        audit_records: u64,
        /// Bytes of snapshot, log entries and version states.
        bytes: u64,
    },
    /// A deleted room: its tombstone (the counters, so seqs and version ids of the name
    /// keep going up in the target too) was copied.
    CopiedTombstone,
    /// The target already had the room (live, or deleted with counters ahead): nothing
    /// was written. The reason says which.
    Skipped {
        /// Why, from the target's [`StoreError::RoomExists`].
        reason: String,
    },
}

impl fmt::Display for MigrateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Copied {
                log_entries,
                versions,
                audit_records,
                bytes,
            } => write!(
                f,
                "copied ({log_entries} log entries, {versions} versions, {audit_records} audit records, {bytes} bytes)"
            ),
            Self::CopiedTombstone => f.write_str("copied deleted room (counters only)"),
            Self::Skipped { reason } => write!(f, "skipped ({reason})"),
        }
    }
}

/// Totals of a [`migrate`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Rooms copied.
    pub copied: u64,
    /// Deleted rooms whose tombstones were copied.
    pub tombstones: u64,
    /// Rooms the target already had (not copied).
    pub skipped: u64,
    /// Log entries copied.
    pub log_entries: u64,
    /// Versions copied.
    pub versions: u64,
    /// Audit records copied.
    pub audit_records: u64,
    /// Bytes of snapshots, log entries and version states copied.
    pub bytes: u64,
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} rooms and {} deleted rooms' counters, skipped {} rooms the target already had; {} log entries, {} versions, {} audit records, {} bytes",
            self.copied,
            self.tombstones,
            self.skipped,
            self.log_entries,
            self.versions,
            self.audit_records,
            self.bytes
        )
    }
}

/// Copies every room of `from` (deleted rooms' tombstones included, see
/// [`Store::room_names`]) into `to`, calling `on_room` after each with what was done.
///
/// Rooms `to` already has are skipped ([`MigrateOutcome::Skipped`]); any other error stops
/// the migration and is returned (rooms copied so far stay copied: each room is one
/// all-or-nothing import, and a second run skips them). `from` should not be written to
/// meanwhile (stop the server first): a room changed after its export is not copied again.
pub fn migrate(
    from: &dyn Store,
    to: &dyn Store,
    mut on_room: impl FnMut(&str, &MigrateOutcome),
) -> Result<MigrateReport> {
    let mut report = MigrateReport::default();
    for name in from.room_names()? {
        // Deleted between listing and export: nothing to copy.
        let Some(dump) = from.export_room(&name)? else {
            continue;
        };
        let outcome = match to.import_room(&dump) {
            Ok(()) if !dump.live => {
                report.tombstones += 1;
                MigrateOutcome::CopiedTombstone
            }
            Ok(()) => {
                let bytes = dump.snapshot.as_deref().map_or(0, len64)
                    + dump.tail.iter().map(|(_, u)| len64(u)).sum::<u64>()
                    + dump.versions.iter().map(|(_, s)| len64(s)).sum::<u64>();
                let outcome = MigrateOutcome::Copied {
                    log_entries: len64_of(&dump.tail),
                    versions: len64_of(&dump.versions),
                    audit_records: len64_of(&dump.audit),
                    bytes,
                };
                report.copied += 1;
                report.log_entries += len64_of(&dump.tail);
                report.versions += len64_of(&dump.versions);
                report.audit_records += len64_of(&dump.audit);
                report.bytes += bytes;
                outcome
            }
            Err(e @ StoreError::RoomExists { .. }) => {
                report.skipped += 1;
                MigrateOutcome::Skipped {
                    reason: e.to_string(),
                }
            }
            Err(e) => return Err(e),
        };
        on_room(&name, &outcome);
    }
    Ok(report)
}

fn len64_of<T>(items: &[T]) -> u64 {
    crate::meta::count64(items.len())
}
