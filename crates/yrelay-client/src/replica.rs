//! The local replica: every update a client makes or receives, on disk, so that a document
//! can be read and edited with no network and survives a restart.
//!
//! It is the server's own store ([`yrelay_store::SledStore`]) in a directory of the client's:
//! an append-only log per room plus a compacted snapshot, compacted the same way the server
//! compacts (load into a `Doc`, re-encode), so a replica that lives for months stays small.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use yrelay_doc::ValidateLimits;
use yrelay_store::{AppendEntry, LoadedRoom, SledStore, Store};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::error::{ClientError, Result};

/// Compact a room once its log holds this many entries past the snapshot.
const COMPACT_AFTER: usize = 256;

/// Limits applied to every update read from or written to the replica.
pub(crate) const LIMITS: ValidateLimits = ValidateLimits { max_depth: 1024 };

/// A local replica directory (one sled database; any number of rooms).
///
/// One process at a time: sled locks the directory, and a second `open` fails with a
/// [`ClientError::Replica`] that says so.
pub struct Replica {
    store: SledStore,
    dir: PathBuf,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("dir", &self.dir).finish()
    }
}

impl Replica {
    /// Opens (creating if needed) the replica in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let refuse = |reason: String| ClientError::ReplicaOpen {
            dir: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| refuse(e.to_string()))?;
        let store = SledStore::open(&dir.join("replica.sled")).map_err(|e| {
            // sled's lock error is an I/O error whose message names the lock.
            let text = e.to_string();
            if text.contains("could not acquire lock") {
                refuse("another process is using it (sled holds a lock on it)".to_owned())
            } else {
                refuse(text)
            }
        })?;
        Ok(Self {
            store,
            dir: dir.to_owned(),
        })
    }

    /// The replica's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The room's document as stored: snapshot plus log. An unknown room is an empty `Doc`.
    pub fn load(&self, room: &str) -> Result<Doc> {
        let doc = Doc::new();
        self.load_into(room, &doc)?;
        Ok(doc)
    }

    /// Applies what the replica holds for `room` to `doc`.
    pub fn load_into(&self, room: &str, doc: &Doc) -> Result<()> {
        let loaded = self.store.load(room)?;
        apply_loaded(doc, &loaded).map_err(ClientError::Update)
    }

    /// Appends one v1 update to the room's log and makes it durable (fsync) before
    /// returning; compacts the room when its log has grown. `origin` is recorded in the
    /// replica's audit trail (e.g. `local`, `remote`).
    pub fn append(&self, room: &str, update: &[u8], origin: &str) -> Result<()> {
        yrelay_doc::validate::validate_update_v1(update, &LIMITS)
            .map_err(|e| ClientError::Update(e.to_string()))?;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let entry = AppendEntry {
            update: update.to_vec(),
            author: "local".to_owned(),
            origin: origin.to_owned(),
            time_ms,
        };
        let seqs = self.store.append(room, &[entry])?;
        self.store.flush()?;
        let logged = self.store.load(room)?.tail.len();
        if logged >= COMPACT_AFTER && !seqs.is_empty() {
            self.compact(room)?;
        }
        Ok(())
    }

    /// Folds the room's log into its snapshot now.
    pub fn compact(&self, room: &str) -> Result<()> {
        self.store.compact_with(room, &mut |loaded| {
            let doc = Doc::new();
            apply_loaded(&doc, loaded)?;
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            Ok(state)
        })?;
        self.store.flush()?;
        Ok(())
    }

    /// How many log entries `room` holds past its snapshot (for tests and diagnostics).
    pub fn log_len(&self, room: &str) -> Result<usize> {
        Ok(self.store.load(room)?.tail.len())
    }

    /// The rooms this replica holds.
    pub fn rooms(&self) -> Result<Vec<String>> {
        Ok(self.store.room_names()?)
    }
}

/// Applies a loaded room (snapshot, then the log in order) to `doc`.
fn apply_loaded(doc: &Doc, loaded: &LoadedRoom) -> std::result::Result<(), String> {
    let mut txn = doc.transact_mut();
    let parts = loaded
        .snapshot
        .iter()
        .map(|s| s.as_slice())
        .chain(loaded.tail.iter().map(|(_, u)| u.as_slice()));
    for bytes in parts {
        yrelay_doc::validate::validate_update_v1(bytes, &LIMITS).map_err(|e| e.to_string())?;
        let update = Update::decode_v1(bytes).map_err(|e| e.to_string())?;
        txn.apply_update(update).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    fn text_update(doc: &Doc, at_end: &str) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, at_end);
        }
        doc.transact().encode_state_as_update_v1(&before)
    }

    #[test]
    fn appends_survive_a_reopen_and_compaction_keeps_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let author = Doc::new();
        let mut expected = String::new();
        {
            let replica = Replica::open(dir.path()).unwrap();
            for i in 0..(COMPACT_AFTER + 10) {
                let piece = format!("{i},");
                expected.push_str(&piece);
                replica
                    .append("room", &text_update(&author, &piece), "local")
                    .unwrap();
            }
            // Compacted once on the way: the log restarted below the threshold.
            assert!(replica.log_len("room").unwrap() < COMPACT_AFTER);
        }
        let replica = Replica::open(dir.path()).unwrap();
        let doc = replica.load("room").unwrap();
        let text = doc.get_or_insert_text("t");
        assert_eq!(text.get_string(&doc.transact()), expected);
        assert_eq!(replica.rooms().unwrap(), vec!["room".to_owned()]);
        // An unknown room is empty.
        let empty = replica.load("other").unwrap();
        assert_eq!(empty.transact().state_vector(), StateVector::default());
    }

    #[test]
    fn garbage_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        // The 4-byte update that makes yrs reserve 264 MB (DEPENDENCIES.md).
        let err = replica.append("room", &[144, 243, 243, 59], "remote");
        assert!(matches!(err, Err(ClientError::Update(_))), "{err:?}");
        assert_eq!(replica.log_len("room").unwrap(), 0);
    }

    #[test]
    fn a_second_process_is_told_the_replica_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Replica::open(dir.path()).unwrap();
        let second = Replica::open(dir.path());
        let err = second.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot open the local replica {}: another process is using it (sled holds a lock on it)",
                dir.path().display()
            )
        );
    }
}
