//! [`MemoryStore`]: the in-memory double, for unit tests of code that uses a [`Store`].
//! Same semantics as [`crate::SledStore`] (both keep their counters in [`RoomMeta`] and run
//! the same conformance tests), nothing durable.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::meta::{len64, RoomMeta};
use crate::{
    AppendEntry, AuditRecord, LoadedRoom, Result, RoomDump, RoomInfo, Seq, Store, StoreError,
    VersionInfo, VersionKind,
};

/// Everything of one room.
#[derive(Debug, Default)]
struct Room {
    meta: RoomMeta,
    snapshot: Option<Vec<u8>>,
    tail: BTreeMap<Seq, Vec<u8>>,
    audit: BTreeMap<Seq, AuditRecord>,
    versions: BTreeMap<u64, (VersionInfo, Vec<u8>)>,
}

/// A [`Store`] in memory. `flush` does nothing; everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Rooms by name, tombstones included. A `std::sync::Mutex`: every critical section is a
    /// few map operations with no I/O, called from blocking threads (never held across an
    /// `.await`), so an async mutex would only add cost.
    rooms: Mutex<BTreeMap<String, Room>>,
}

impl Room {
    fn loaded(&self) -> LoadedRoom {
        LoadedRoom {
            snapshot: self.snapshot.clone(),
            snapshot_seq: self.meta.snapshot_seq,
            tail: self.tail.iter().map(|(seq, u)| (*seq, u.clone())).collect(),
            next_seq: self.meta.next_seq,
        }
    }

    /// Compacts up to `upto` into `state`; changes nothing if it fails.
    fn compact(&mut self, state: &[u8], upto: Seq) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.check_compact(upto)?;
        let first_kept = upto.checked_add(1);
        let (entries, bytes) = self
            .tail
            .iter()
            .filter(|(seq, _)| first_kept.is_none_or(|first| **seq < first))
            .fold((0, 0), |(n, b), (_, u)| (n + 1, b + len64(u)));
        meta.compacted(upto, len64(state), entries, bytes)?;
        self.tail = first_kept.map_or_else(BTreeMap::new, |first| self.tail.split_off(&first));
        self.meta = meta;
        self.snapshot = Some(state.to_vec());
        Ok(())
    }
}

impl MemoryStore {
    fn rooms(&self) -> MutexGuard<'_, BTreeMap<String, Room>> {
        // Every method computes what can fail before it mutates a room, so a panic in
        // another thread cannot have left a room half-updated: poisoning carries no
        // information here.
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn append(&self, room: &str, entries: &[AppendEntry]) -> Result<Vec<Seq>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut rooms = self.rooms();
        let mut meta = rooms.get(room).map(|r| r.meta.clone()).unwrap_or_default();
        let records = entries
            .iter()
            .map(|e| meta.push_entry(e))
            .collect::<Result<Vec<AuditRecord>>>()?;
        let r = rooms.entry(room.to_owned()).or_default();
        r.meta = meta;
        for (entry, record) in entries.iter().zip(&records) {
            r.tail.insert(record.seq, entry.update.clone());
            r.audit.insert(record.seq, record.clone());
        }
        Ok(records.iter().map(|r| r.seq).collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn load(&self, room: &str) -> Result<LoadedRoom> {
        Ok(self.rooms().get(room).map_or_else(
            || LoadedRoom {
                next_seq: RoomMeta::default().next_seq,
                ..LoadedRoom::default()
            },
            Room::loaded,
        ))
    }

    fn compact(&self, room: &str, state: &[u8], upto: Seq) -> Result<()> {
        let mut rooms = self.rooms();
        match rooms.get_mut(room) {
            Some(r) => r.compact(state, upto),
            None => {
                // A refused compaction must not create the room.
                let mut r = Room::default();
                r.compact(state, upto)?;
                rooms.insert(room.to_owned(), r);
                Ok(())
            }
        }
    }

    /// Holds the store's lock from the load through `merge` to the compaction.
    fn compact_with(
        &self,
        room: &str,
        merge: &mut dyn FnMut(&LoadedRoom) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<Seq>> {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return Ok(None);
        };
        let Some(&upto) = r.tail.keys().next_back() else {
            return Ok(None);
        };
        let state = merge(&r.loaded()).map_err(StoreError::Merge)?;
        r.compact(&state, upto)?;
        Ok(Some(upto))
    }

    fn list_rooms(&self) -> Result<Vec<RoomInfo>> {
        let rooms = self.rooms();
        Ok(rooms
            .iter()
            .filter(|(_, r)| r.meta.live)
            .map(|(name, r)| r.meta.info(name))
            .collect())
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn room_names(&self) -> Result<Vec<String>> {
        Ok(self.rooms().keys().cloned().collect())
    }

    fn export_room(&self, room: &str) -> Result<Option<RoomDump>> {
        let rooms = self.rooms();
        Ok(rooms.get(room).map(|r| RoomDump {
            room: room.to_owned(),
            live: r.meta.live,
            snapshot: r.snapshot.clone(),
            snapshot_seq: r.meta.snapshot_seq,
            tail: r.tail.iter().map(|(seq, u)| (*seq, u.clone())).collect(),
            next_seq: r.meta.next_seq,
            audit: r.audit.values().cloned().collect(),
            versions: r.versions.values().cloned().collect(),
            next_version_id: r.meta.next_version_id,
            last_change_ms: r.meta.last_change_ms,
        }))
    }

    fn import_room(&self, dump: &RoomDump) -> Result<()> {
        let meta = RoomMeta::of_dump(dump)?;
        let mut rooms = self.rooms();
        if let Some(existing) = rooms.get(&dump.room) {
            existing.meta.check_import(&dump.room, &meta)?;
        }
        rooms.insert(
            dump.room.clone(),
            Room {
                meta,
                snapshot: dump.snapshot.clone(),
                tail: dump.tail.iter().cloned().collect(),
                audit: dump.audit.iter().map(|r| (r.seq, r.clone())).collect(),
                versions: dump
                    .versions
                    .iter()
                    .map(|(info, state)| (info.id, (info.clone(), state.clone())))
                    .collect(),
            },
        );
        Ok(())
    }

    fn delete_room(&self, room: &str) -> Result<()> {
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get_mut(room) {
            let mut meta = r.meta.clone();
            meta.tombstone();
            *r = Room {
                meta,
                ..Room::default()
            };
        }
        Ok(())
    }

    fn save_version(
        &self,
        room: &str,
        kind: VersionKind,
        label: Option<&str>,
        state: &[u8],
        seq: Seq,
        created_ms: u64,
    ) -> Result<VersionInfo> {
        let mut rooms = self.rooms();
        let mut meta = rooms.get(room).map(|r| r.meta.clone()).unwrap_or_default();
        let id = meta.take_version_id()?;
        let info = VersionInfo {
            id,
            kind,
            label: label.map(str::to_owned),
            created_ms,
            seq,
            bytes: len64(state),
        };
        let r = rooms.entry(room.to_owned()).or_default();
        r.meta = meta;
        r.versions.insert(id, (info.clone(), state.to_vec()));
        Ok(info)
    }

    fn list_versions(&self, room: &str) -> Result<Vec<VersionInfo>> {
        let rooms = self.rooms();
        Ok(rooms
            .get(room)
            .map(|r| {
                r.versions
                    .values()
                    .rev()
                    .map(|(info, _)| info.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn get_version(&self, room: &str, id: u64) -> Result<Option<(VersionInfo, Vec<u8>)>> {
        let rooms = self.rooms();
        Ok(rooms.get(room).and_then(|r| r.versions.get(&id)).cloned())
    }

    fn audit(&self, room: &str, after: Option<Seq>, limit: usize) -> Result<Vec<AuditRecord>> {
        let rooms = self.rooms();
        let Some(r) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let Some(first) = after.map_or(Some(0), |a| a.checked_add(1)) else {
            return Ok(Vec::new());
        };
        Ok(r.audit
            .range(first..)
            .take(limit)
            .map(|(_, rec)| rec.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    crate::conformance::all_cases!(Box::new(crate::MemoryStore::default()));
}
