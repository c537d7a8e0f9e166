//! Per-room bookkeeping shared by both stores: which seq and version id come next, what the
//! snapshot covers, and the counters [`crate::Store::list_rooms`] reports.
//!
//! Both [`crate::MemoryStore`] and [`crate::SledStore`] update a [`RoomMeta`] with these
//! methods and then write it together with the data it describes, so the two stores share one
//! definition of the semantics (seqs never go back, tombstones, compaction range checks).

use serde::{Deserialize, Serialize};

use crate::{AppendEntry, AuditRecord, Result, RoomInfo, Seq, StoreError};

/// A room's counters. Stored by [`crate::SledStore`] under the room's `'m'` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RoomMeta {
    /// Whether the room exists; `false` for a deleted room's tombstone.
    pub live: bool,
    /// Seq the next append gets (starts at 1, never goes back).
    pub next_seq: Seq,
    /// Newest `time_ms` of any appended entry.
    pub last_change_ms: u64,
    /// Last seq folded into the snapshot (0: none).
    pub snapshot_seq: Seq,
    /// Size of the snapshot state.
    pub snapshot_bytes: u64,
    /// Number of log entries after the snapshot.
    pub tail_entries: u64,
    /// Sum of their update sizes.
    pub tail_bytes: u64,
    /// Id the next version gets (starts at 1, never goes back).
    pub next_version_id: u64,
}

impl Default for RoomMeta {
    fn default() -> Self {
        Self {
            live: false,
            next_seq: 1,
            last_change_ms: 0,
            snapshot_seq: 0,
            snapshot_bytes: 0,
            tail_entries: 0,
            tail_bytes: 0,
            next_version_id: 1,
        }
    }
}

/// Length of a byte string as stored in counters.
pub(crate) fn len64(bytes: &[u8]) -> u64 {
    // usize is at most 64 bits on every platform Rust supports.
    bytes.len() as u64
}

/// A count as stored in counters.
pub(crate) fn count64(n: usize) -> u64 {
    // usize is at most 64 bits on every platform Rust supports.
    n as u64
}

fn exhausted(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} exhausted (u64 overflow)"))
}

impl RoomMeta {
    /// Accounts for one appended entry; returns its seq and audit record.
    pub fn push_entry(&mut self, entry: &AppendEntry) -> Result<AuditRecord> {
        let seq = self.next_seq;
        let bytes = len64(&entry.update);
        self.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| exhausted("sequence numbers"))?;
        self.tail_entries += 1;
        self.tail_bytes += bytes;
        self.last_change_ms = self.last_change_ms.max(entry.time_ms);
        self.live = true;
        Ok(AuditRecord {
            seq,
            author: entry.author.clone(),
            origin: entry.origin.clone(),
            time_ms: entry.time_ms,
            bytes,
        })
    }

    /// Refuses a compaction up to `upto` outside `snapshot_seq..next_seq`.
    pub fn check_compact(&self, upto: Seq) -> Result<()> {
        if upto < self.snapshot_seq || upto >= self.next_seq {
            return Err(StoreError::CompactRange {
                upto,
                snapshot_seq: self.snapshot_seq,
                next_seq: self.next_seq,
            });
        }
        Ok(())
    }

    /// Accounts for a compaction up to `upto` into a snapshot of `state_bytes` that removed
    /// `entries` tail entries of `bytes` in total.
    pub fn compacted(
        &mut self,
        upto: Seq,
        state_bytes: u64,
        entries: u64,
        bytes: u64,
    ) -> Result<()> {
        self.tail_entries = self.tail_entries.checked_sub(entries).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "compaction removed {entries} log entries but the room counts only {}",
                self.tail_entries
            ))
        })?;
        self.tail_bytes = self.tail_bytes.checked_sub(bytes).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "compaction removed {bytes} log bytes but the room counts only {}",
                self.tail_bytes
            ))
        })?;
        self.snapshot_seq = upto;
        self.snapshot_bytes = state_bytes;
        self.live = true;
        Ok(())
    }

    /// Hands out the next version id.
    pub fn take_version_id(&mut self) -> Result<u64> {
        let id = self.next_version_id;
        self.next_version_id = id.checked_add(1).ok_or_else(|| exhausted("version ids"))?;
        self.live = true;
        Ok(id)
    }

    /// Turns the room into a tombstone: nothing stored, but the seq and version counters stay.
    pub fn tombstone(&mut self) {
        *self = Self {
            live: false,
            next_seq: self.next_seq,
            next_version_id: self.next_version_id,
            ..Self::default()
        };
    }

    /// The room as [`crate::Store::list_rooms`] reports it.
    pub fn info(&self, name: &str) -> RoomInfo {
        RoomInfo {
            name: name.to_owned(),
            log_entries: self.tail_entries,
            stored_bytes: self.snapshot_bytes + self.tail_bytes,
            last_change_ms: self.last_change_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize, time_ms: u64) -> AppendEntry {
        AppendEntry {
            update: vec![0; len],
            author: "u".into(),
            origin: "o".into(),
            time_ms,
        }
    }

    #[test]
    fn counters_follow_appends_compactions_and_deletion() {
        let mut meta = RoomMeta::default();
        assert_eq!(meta.push_entry(&entry(3, 20)).map(|r| r.seq).ok(), Some(1));
        assert_eq!(meta.push_entry(&entry(5, 10)).map(|r| r.seq).ok(), Some(2));
        assert_eq!(meta.last_change_ms, 20, "last change never goes back");
        assert_eq!((meta.tail_entries, meta.tail_bytes), (2, 8));
        assert!(meta.check_compact(2).is_ok());
        assert!(meta.check_compact(3).is_err());
        assert!(meta.compacted(1, 7, 1, 3).is_ok());
        assert!(meta.check_compact(0).is_err(), "older than the snapshot");
        assert_eq!(meta.info("r").stored_bytes, 7 + 5);
        assert!(
            meta.compacted(2, 7, 2, 0).is_err(),
            "more entries than counted"
        );
        assert_eq!(meta.take_version_id().ok(), Some(1));
        meta.tombstone();
        assert!(!meta.live);
        assert_eq!(
            (meta.next_seq, meta.next_version_id, meta.snapshot_seq),
            (3, 2, 0)
        );
    }

    #[test]
    fn exhausted_seqs_are_an_error_not_a_wrap() {
        let mut meta = RoomMeta {
            next_seq: u64::MAX,
            ..RoomMeta::default()
        };
        assert!(matches!(
            meta.push_entry(&entry(1, 0)),
            Err(StoreError::Corrupt(_))
        ));
    }
}
