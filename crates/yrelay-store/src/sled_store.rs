//! [`SledStore`]: the embedded default store, on sled 0.34, with the key schema drawn in the
//! crate docs. Every write is one `apply_batch` on one tree; every per-room operation holds
//! the room's lock stripe (see `locks.rs`) so reads see whole batches.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use sled::{Batch, IVec, Tree};

use crate::codec::{decode, encode, LogEntry, Snapshot, VersionState, FORMAT};
use crate::keys::{self, RoomKeys};
use crate::locks::RoomLocks;
use crate::meta::{count64, len64, RoomMeta};
use crate::{
    AppendEntry, AuditRecord, LoadedRoom, Result, RoomDump, RoomInfo, Seq, Store, StoreError,
    VersionInfo, VersionKind,
};

/// Name of the sled tree holding everything.
const TREE: &str = "yrelay-store";

/// How long [`SledStore::open`] keeps retrying while sled's directory lock is held.
///
/// sled releases the lock only when its last internal handle is gone, and its background
/// threads (a global pool shared by every open database) keep handles for a few milliseconds
/// after the `Db` is dropped; measured here: up to ~25 ms with three databases busy. So an
/// in-process reopen (a reboot in tests, a server restarted on the same directory) can
/// find the lock still held. A second process holding it is reported after this delay.
const LOCK_RETRY: Duration = Duration::from_secs(1);
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// A [`Store`] in a sled database directory.
///
/// # Durability
///
/// Writes return once they are in sled's memory. [`Store::flush`] calls `sled::Db::flush`,
/// which writes sled's buffers to its files and fsyncs them: when it returns `Ok`, every
/// write that returned before it was called survives a crash or power loss. sled 0.34 also
/// flushes on its own every 500 ms by default (`Config::flush_every_ms`), so unflushed writes
/// usually reach the disk within half a second, but only what was flushed before a crash is
/// guaranteed. Each write (`append`, `compact`, `save_version`, `delete_room`) is one sled
/// batch, recovered all or nothing.
///
/// sled holds an exclusive lock on the directory while a `SledStore` is open: see
/// [`SledStore::open`] for what a second open does.
pub struct SledStore {
    db: sled::Db,
    tree: Tree,
    locks: RoomLocks,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("tree", &TREE)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `dir`, with sled's default configuration
    /// (`sled::Config::new().path(dir)`: 500 ms background flushes, 1 GiB page cache limit).
    /// Refuses a database written in an unknown format ([`StoreError::UnsupportedFormat`]).
    ///
    /// sled locks the directory exclusively. While the lock is held, `open` retries for up to
    /// a second (a store dropped a moment ago in this process releases it within
    /// milliseconds), then fails with [`StoreError::Sled`] ("could not acquire lock").
    pub fn open(dir: &Path) -> Result<Self> {
        let db = open_db(dir)?;
        let tree = db.open_tree(TREE)?;
        match tree.get(keys::FORMAT_KEY)? {
            Some(found) => {
                let found: u32 = decode(&found)?;
                if found != FORMAT {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT,
                    });
                }
            }
            None if tree.is_empty() => {
                tree.insert(keys::FORMAT_KEY, encode(&FORMAT)?)?;
                db.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt(
                    "data without a format marker".to_owned(),
                ));
            }
        }
        Ok(Self {
            db,
            tree,
            locks: RoomLocks::default(),
        })
    }

    fn meta(&self, keys: &RoomKeys) -> Result<Option<RoomMeta>> {
        self.tree.get(keys.meta())?.map(|v| decode(&v)).transpose()
    }

    /// Decoded values of every key under `prefix`, with the number ending each key.
    fn numbered<T>(
        &self,
        prefix: Vec<u8>,
        mut decode_value: impl FnMut(&IVec) -> Result<T>,
    ) -> Result<Vec<(u64, T)>> {
        let prefix_len = prefix.len();
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((keys::number_of(&k, prefix_len)?, decode_value(&v)?))
            })
            .collect()
    }

    /// [`Store::load`] with the room's stripe held; also returns the room's meta.
    fn load_locked(&self, room: &str, keys: &RoomKeys) -> Result<(RoomMeta, LoadedRoom)> {
        let meta = self.meta(keys)?.unwrap_or_default();
        let snapshot = match self.tree.get(keys.snapshot())? {
            Some(v) => {
                let snapshot: Snapshot<'_> = decode(&v)?;
                if snapshot.seq != meta.snapshot_seq {
                    return Err(StoreError::Corrupt(format!(
                        "room {room:?}: snapshot at seq {} but meta says {}",
                        snapshot.seq, meta.snapshot_seq
                    )));
                }
                Some(snapshot.state.into_owned())
            }
            None if meta.snapshot_seq != 0 => {
                return Err(StoreError::Corrupt(format!(
                    "room {room:?}: snapshot at seq {} is missing",
                    meta.snapshot_seq
                )));
            }
            None => None,
        };
        let tail = self.numbered(keys.log_prefix(), |v| {
            Ok(decode::<LogEntry<'_>>(v)?.update.into_owned())
        })?;
        let in_range = |seq: &Seq| *seq > meta.snapshot_seq && *seq < meta.next_seq;
        if let Some((seq, _)) = tail.iter().find(|(seq, _)| !in_range(seq)) {
            return Err(StoreError::Corrupt(format!(
                "room {room:?}: log entry {seq} outside {}..{}",
                meta.snapshot_seq, meta.next_seq
            )));
        }
        if count64(tail.len()) != meta.tail_entries {
            return Err(StoreError::Corrupt(format!(
                "room {room:?}: {} log entries but meta counts {}",
                tail.len(),
                meta.tail_entries
            )));
        }
        let loaded = LoadedRoom {
            snapshot,
            snapshot_seq: meta.snapshot_seq,
            tail,
            next_seq: meta.next_seq,
        };
        Ok((meta, loaded))
    }

    /// [`Store::compact`] with the room's stripe held.
    fn compact_locked(&self, keys: &RoomKeys, state: &[u8], upto: Seq) -> Result<()> {
        let mut meta = self.meta(keys)?.unwrap_or_default();
        meta.check_compact(upto)?;
        // One batch: the new snapshot, the removal of the folded entries and the new meta.
        let mut batch = Batch::default();
        let (mut entries, mut bytes) = (0, 0);
        for kv in self.tree.range(keys.log(0)..=keys.log(upto)) {
            let (k, v) = kv?;
            bytes += len64(&decode::<LogEntry<'_>>(&v)?.update);
            entries += 1;
            batch.remove(k);
        }
        meta.compacted(upto, len64(state), entries, bytes)?;
        batch.insert(
            keys.snapshot(),
            encode(&Snapshot {
                seq: upto,
                state: Cow::Borrowed(state),
            })?,
        );
        batch.insert(keys.meta(), encode(&meta)?);
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Opens the sled database, retrying for [`LOCK_RETRY`] while its lock is held.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let deadline = Instant::now() + LOCK_RETRY;
    loop {
        match sled::Config::new().path(dir).open() {
            // sled 0.34 reports a held lock only as an `Other` I/O error with this message.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            result => return Ok(result?),
        }
    }
}

impl Store for SledStore {
    fn append(&self, room: &str, entries: &[AppendEntry]) -> Result<Vec<Seq>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let mut meta = self.meta(&keys)?.unwrap_or_default();
        let mut batch = Batch::default();
        let mut seqs = Vec::with_capacity(entries.len());
        for entry in entries {
            let record = meta.push_entry(entry)?;
            let value = LogEntry {
                update: Cow::Borrowed(&entry.update),
            };
            batch.insert(keys.log(record.seq), encode(&value)?);
            batch.insert(keys.audit(record.seq), encode(&record)?);
            seqs.push(record.seq);
        }
        batch.insert(keys.meta(), encode(&meta)?);
        self.tree.apply_batch(batch)?;
        Ok(seqs)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn load(&self, room: &str) -> Result<LoadedRoom> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        Ok(self.load_locked(room, &keys)?.1)
    }

    fn compact(&self, room: &str, state: &[u8], upto: Seq) -> Result<()> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        self.compact_locked(&keys, state, upto)
    }

    /// Holds the room's lock stripe from the load through `merge` to the compaction.
    fn compact_with(
        &self,
        room: &str,
        merge: &mut dyn FnMut(&LoadedRoom) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<Seq>> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let (_, loaded) = self.load_locked(room, &keys)?;
        let Some(&(upto, _)) = loaded.tail.last() else {
            return Ok(None);
        };
        let state = merge(&loaded).map_err(StoreError::Merge)?;
        self.compact_locked(&keys, &state, upto)?;
        Ok(Some(upto))
    }

    fn list_rooms(&self) -> Result<Vec<RoomInfo>> {
        // Each meta value is one key, written atomically: no lock needed.
        let mut rooms = Vec::new();
        for kv in self.tree.scan_prefix([keys::META]) {
            let (k, v) = kv?;
            let meta: RoomMeta = decode(&v)?;
            if meta.live {
                rooms.push(meta.info(&keys::room_of_meta_key(&k)?));
            }
        }
        // Keys sort by name length first; callers expect names in order.
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    fn check(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.tree.insert(keys::HEALTH_KEY, &now.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn delete_room(&self, room: &str) -> Result<()> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let Some(mut meta) = self.meta(&keys)? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        batch.remove(keys.snapshot());
        for prefix in [
            keys.log_prefix(),
            keys.audit_prefix(),
            keys.version_info_prefix(),
            keys.version_state_prefix(),
        ] {
            for k in self.tree.scan_prefix(prefix).keys() {
                batch.remove(k?);
            }
        }
        meta.tombstone();
        batch.insert(keys.meta(), encode(&meta)?);
        self.tree.apply_batch(batch)?;
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
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let mut meta = self.meta(&keys)?.unwrap_or_default();
        let id = meta.take_version_id()?;
        let info = VersionInfo {
            id,
            kind,
            label: label.map(str::to_owned),
            created_ms,
            seq,
            bytes: len64(state),
        };
        let mut batch = Batch::default();
        batch.insert(keys.version_info(id), encode(&info)?);
        batch.insert(
            keys.version_state(id),
            encode(&VersionState {
                state: Cow::Borrowed(state),
            })?,
        );
        batch.insert(keys.meta(), encode(&meta)?);
        self.tree.apply_batch(batch)?;
        Ok(info)
    }

    fn list_versions(&self, room: &str) -> Result<Vec<VersionInfo>> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let mut versions = Vec::new();
        for (id, info) in self.numbered(keys.version_info_prefix(), |v| decode::<VersionInfo>(v))? {
            if info.id != id {
                return Err(StoreError::Corrupt(format!(
                    "room {room:?}: version {} stored under id {id}",
                    info.id
                )));
            }
            versions.push(info);
        }
        versions.reverse();
        Ok(versions)
    }

    fn get_version(&self, room: &str, id: u64) -> Result<Option<(VersionInfo, Vec<u8>)>> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        let Some(info) = self.tree.get(keys.version_info(id))? else {
            return Ok(None);
        };
        let info: VersionInfo = decode(&info)?;
        let state = self.tree.get(keys.version_state(id))?.ok_or_else(|| {
            StoreError::Corrupt(format!("room {room:?}: state of version {id} is missing"))
        })?;
        let state = decode::<VersionState<'_>>(&state)?.state.into_owned();
        Ok(Some((info, state)))
    }

    fn audit(&self, room: &str, after: Option<Seq>, limit: usize) -> Result<Vec<AuditRecord>> {
        let keys = RoomKeys::new(room)?;
        let Some(first) = after.map_or(Some(0), |a| a.checked_add(1)) else {
            return Ok(Vec::new());
        };
        let _room = self.locks.lock(room);
        self.tree
            .range(keys.audit(first)..=keys.audit(Seq::MAX))
            .take(limit)
            .map(|kv| decode(&kv?.1))
            .collect()
    }

    fn room_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for k in self.tree.scan_prefix([keys::META]).keys() {
            names.push(keys::room_of_meta_key(&k?)?);
        }
        // Keys sort by name length first.
        names.sort();
        Ok(names)
    }

    fn export_room(&self, room: &str) -> Result<Option<RoomDump>> {
        let keys = RoomKeys::new(room)?;
        let _room = self.locks.lock(room);
        if self.meta(&keys)?.is_none() {
            return Ok(None);
        }
        let (meta, loaded) = self.load_locked(room, &keys)?;
        let audit = self
            .tree
            .scan_prefix(keys.audit_prefix())
            .values()
            .map(|v| decode(&v?))
            .collect::<Result<Vec<AuditRecord>>>()?;
        let mut versions = Vec::new();
        for (id, info) in self.numbered(keys.version_info_prefix(), |v| decode::<VersionInfo>(v))? {
            let state = self.tree.get(keys.version_state(id))?.ok_or_else(|| {
                StoreError::Corrupt(format!("room {room:?}: state of version {id} is missing"))
            })?;
            versions.push((info, decode::<VersionState<'_>>(&state)?.state.into_owned()));
        }
        Ok(Some(RoomDump {
            room: room.to_owned(),
            live: meta.live,
            snapshot: loaded.snapshot,
            snapshot_seq: loaded.snapshot_seq,
            tail: loaded.tail,
            next_seq: loaded.next_seq,
            audit,
            versions,
            next_version_id: meta.next_version_id,
            last_change_ms: meta.last_change_ms,
        }))
    }

    fn import_room(&self, dump: &RoomDump) -> Result<()> {
        let meta = RoomMeta::of_dump(dump)?;
        let keys = RoomKeys::new(&dump.room)?;
        let _room = self.locks.lock(&dump.room);
        if let Some(existing) = self.meta(&keys)? {
            // A tombstone holds no data, so nothing else needs removing.
            existing.check_import(&dump.room, &meta)?;
        }
        // One batch: the room appears whole or not at all.
        let mut batch = Batch::default();
        if let Some(state) = &dump.snapshot {
            batch.insert(
                keys.snapshot(),
                encode(&Snapshot {
                    seq: dump.snapshot_seq,
                    state: Cow::Borrowed(state),
                })?,
            );
        }
        for (seq, update) in &dump.tail {
            batch.insert(
                keys.log(*seq),
                encode(&LogEntry {
                    update: Cow::Borrowed(update),
                })?,
            );
        }
        for record in &dump.audit {
            batch.insert(keys.audit(record.seq), encode(record)?);
        }
        for (info, state) in &dump.versions {
            batch.insert(keys.version_info(info.id), encode(info)?);
            batch.insert(
                keys.version_state(info.id),
                encode(&VersionState {
                    state: Cow::Borrowed(state),
                })?,
            );
        }
        batch.insert(keys.meta(), encode(&meta)?);
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Deref;

    use super::*;

    /// A store in a temporary directory that lives as long as the store.
    pub(crate) struct TempSled {
        store: Option<SledStore>,
        dir: tempfile::TempDir,
    }

    impl TempSled {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Some(SledStore::open(dir.path()).expect("opens"));
            Self { store, dir }
        }

        /// Flushes, closes and reopens the store (a clean reboot; `open` waits for sled to
        /// let go of the directory lock).
        pub fn reboot(&mut self) {
            if let Some(store) = self.store.take() {
                store.flush().expect("flushes");
            }
            self.store = Some(SledStore::open(self.dir.path()).expect("reopens"));
        }
    }

    impl Deref for TempSled {
        type Target = SledStore;
        fn deref(&self) -> &SledStore {
            self.store.as_ref().expect("open")
        }
    }

    crate::conformance::all_cases!(TempSled::new());

    fn entry(update: &[u8]) -> AppendEntry {
        AppendEntry {
            update: update.to_vec(),
            author: "alice".into(),
            origin: "ws".into(),
            time_ms: 7,
        }
    }

    #[test]
    fn everything_survives_a_reboot() {
        let mut store = TempSled::new();
        store
            .append("r", &[entry(b"1"), entry(b"2"), entry(b"3")])
            .expect("appends");
        store.compact("r", b"S", 2).expect("compacts");
        let v = store
            .save_version("r", VersionKind::Named, Some("v"), b"V", 3, 9)
            .expect("saves");
        store.append("gone", &[entry(b"x")]).expect("appends");
        store.delete_room("gone").expect("deletes");
        let before = (
            store.load("r").expect("loads"),
            store.list_rooms().expect("lists"),
            store.audit("r", None, 10).expect("audit"),
            store.load("gone").expect("loads"),
        );
        store.reboot();
        let after = (
            store.load("r").expect("loads"),
            store.list_rooms().expect("lists"),
            store.audit("r", None, 10).expect("audit"),
            store.load("gone").expect("loads"),
        );
        assert_eq!(before, after);
        assert_eq!(after.3.next_seq, 2, "the tombstone keeps counting");
        assert_eq!(
            store.get_version("r", v.id).expect("reads"),
            Some((v, b"V".to_vec()))
        );
        assert_eq!(store.append("r", &[entry(b"4")]).expect("appends"), vec![4]);
    }

    #[test]
    fn a_second_open_of_the_same_directory_fails_after_retrying() {
        let store = TempSled::new();
        let started = Instant::now();
        let second = SledStore::open(store.dir.path());
        assert!(
            matches!(&second, Err(StoreError::Sled(e)) if e.to_string().contains("could not acquire lock")),
            "{second:?}"
        );
        assert!(started.elapsed() >= LOCK_RETRY);
    }

    #[test]
    fn unknown_formats_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let db = sled::Config::new().path(dir.path()).open().expect("opens");
            let tree = db.open_tree(TREE).expect("tree");
            tree.insert(keys::FORMAT_KEY, encode(&(FORMAT + 1)).expect("encodes"))
                .expect("inserts");
            db.flush().expect("flushes");
        }
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::UnsupportedFormat { found, supported: FORMAT }) if found == FORMAT + 1
        ));
    }

    #[test]
    fn inconsistent_meta_is_reported_as_corrupt() {
        let store = TempSled::new();
        store
            .append("r", &[entry(b"1"), entry(b"2")])
            .expect("appends");
        let keys = RoomKeys::new("r").expect("keys");
        // A log entry the meta does not know about (as a non-atomic write could leave).
        let stray = encode(&LogEntry {
            update: Cow::Borrowed(b"3"),
        })
        .expect("encodes");
        store.tree.insert(keys.log(3), stray).expect("inserts");
        assert!(matches!(store.load("r"), Err(StoreError::Corrupt(_))));
        store.tree.remove(keys.log(3)).expect("removes");
        store.tree.remove(keys.log(1)).expect("removes");
        assert!(
            matches!(store.load("r"), Err(StoreError::Corrupt(_))),
            "count mismatch"
        );
    }

    /// The compaction of a long tail is one batch: while it runs, a concurrent load sees
    /// either the old snapshot and tail or the new ones (the lock stripe), never a mix.
    #[test]
    fn loads_never_see_half_a_compaction() {
        let store = TempSled::new();
        let entries: Vec<_> = (0..200u32).map(|i| entry(&i.to_be_bytes())).collect();
        store.append("r", &entries).expect("appends");
        std::thread::scope(|s| {
            s.spawn(|| {
                for upto in (10..=200u64).step_by(10) {
                    store
                        .compact("r", &upto.to_be_bytes(), upto)
                        .expect("compacts");
                }
            });
            for _ in 0..200 {
                let loaded = store.load("r").expect("loads");
                let first = loaded.tail.first().map_or(201, |(seq, _)| *seq);
                assert_eq!(first, loaded.snapshot_seq + 1);
                assert_eq!(loaded.tail.len() as u64, 200 - loaded.snapshot_seq);
                if let Some(state) = &loaded.snapshot {
                    assert_eq!(state[..], loaded.snapshot_seq.to_be_bytes()[..]);
                }
            }
        });
    }
}
