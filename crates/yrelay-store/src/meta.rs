//! Per-room bookkeeping shared by both stores: which seq and version id come next, what the
//! snapshot covers, and the counters [`crate::Store::list_rooms`] reports.
//!
//! Every store ([`crate::MemoryStore`], [`crate::SledStore`] and the PostgreSQL store) updates
//! a [`RoomMeta`] with these methods and then writes it together with the data it describes,
//! so they share one definition of the semantics (seqs never go back, tombstones, compaction
//! range checks, what an import may replace).

use serde::{Deserialize, Serialize};

use crate::{AppendEntry, AuditRecord, Result, RoomDump, RoomInfo, Seq, StoreError};

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

    /// The counters a room imported from `dump` gets, after checking that the dump is a
    /// room some store could hold (see [`StoreError::InvalidDump`]).
    pub fn of_dump(dump: &RoomDump) -> Result<Self> {
        let invalid = |what: String| {
            Err(StoreError::InvalidDump(format!(
                "room {:?}: {what}",
                dump.room
            )))
        };
        if dump.next_seq == 0 || dump.next_version_id == 0 {
            return invalid("next_seq and next_version_id start at 1".to_owned());
        }
        if !dump.live
            && (dump.snapshot.is_some()
                || dump.snapshot_seq != 0
                || !dump.tail.is_empty()
                || !dump.audit.is_empty()
                || !dump.versions.is_empty()
                || dump.last_change_ms != 0)
        {
            return invalid("a deleted room holds nothing but its counters".to_owned());
        }
        if dump.snapshot_seq >= dump.next_seq {
            return invalid(format!(
                "snapshot at seq {} but next_seq {}",
                dump.snapshot_seq, dump.next_seq
            ));
        }
        if dump.snapshot.is_none() && dump.snapshot_seq != 0 {
            return invalid(format!(
                "no snapshot, but snapshot_seq {}",
                dump.snapshot_seq
            ));
        }
        let mut last = dump.snapshot_seq;
        for (seq, _) in &dump.tail {
            if *seq <= last || *seq >= dump.next_seq {
                return invalid(format!(
                    "log entry {seq} out of order or outside {}..{}",
                    dump.snapshot_seq, dump.next_seq
                ));
            }
            last = *seq;
        }
        let mut last = 0;
        for record in &dump.audit {
            if record.seq <= last || record.seq >= dump.next_seq {
                return invalid(format!(
                    "audit record {} out of order or at/after next_seq {}",
                    record.seq, dump.next_seq
                ));
            }
            last = record.seq;
        }
        let mut last = 0;
        for (info, state) in &dump.versions {
            if info.id <= last || info.id >= dump.next_version_id {
                return invalid(format!(
                    "version {} out of order or at/after next_version_id {}",
                    info.id, dump.next_version_id
                ));
            }
            if info.bytes != len64(state) {
                return invalid(format!(
                    "version {} says {} bytes but its state has {}",
                    info.id,
                    info.bytes,
                    state.len()
                ));
            }
            last = info.id;
        }
        Ok(Self {
            live: dump.live,
            next_seq: dump.next_seq,
            last_change_ms: dump.last_change_ms,
            snapshot_seq: dump.snapshot_seq,
            snapshot_bytes: dump.snapshot.as_deref().map_or(0, len64),
            tail_entries: count64(dump.tail.len()),
            tail_bytes: dump.tail.iter().map(|(_, u)| len64(u)).sum(),
            next_version_id: dump.next_version_id,
        })
    }

    /// Refuses to import `imported` over this room (what the target store has under the
    /// name): a live room is never replaced, a tombstone only if its counters are not ahead.
    pub fn check_import(&self, room: &str, imported: &RoomMeta) -> Result<()> {
        if self.live {
            return Err(StoreError::RoomExists {
                room: room.to_owned(),
                deleted: false,
            });
        }
        if self.next_seq > imported.next_seq || self.next_version_id > imported.next_version_id {
            return Err(StoreError::RoomExists {
                room: room.to_owned(),
                deleted: true,
            });
        }
        Ok(())
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
