//! Crash consistency: a child process appends, compacts and flushes in a loop and is killed
//! (SIGKILL) at an arbitrary moment; the store reopened afterwards must hold a consistent
//! prefix of the writes that includes everything flushed.
//!
//! "Consistent" means: `load` succeeds (it checks that the log agrees with the room's meta),
//! snapshot plus tail rebuild a document that is exactly the first `n` appends, with
//! `n + 1 == next_seq` and `n` audit records. A compaction cut in half (snapshot replaced but
//! tail kept, or tail removed without the snapshot) would show as a wrong document or a
//! failed load.
//!
//! This is a process crash, not a power cut: what sled handed to the kernel survives. It
//! still tests that sled recovers each batch whole, at whatever point of its log the process
//! died, and that our batches carry everything that must stay consistent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yrelay_store::{AppendEntry, SledStore, Store, VersionKind};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// Set in the child's environment: the directory to work in.
const CHILD_DIR: &str = "YRELAY_STORE_CRASH_DIR";
const ROOM: &str = "crash/room";

/// The character the `i`-th append inserts at the end of the text.
fn char_of(i: u64) -> char {
    char::from(b'a' + (i % 26) as u8)
}

fn db_dir(dir: &Path) -> PathBuf {
    dir.join("db")
}

fn progress_file(dir: &Path) -> PathBuf {
    dir.join("flushed")
}

/// Number of appends the child has flushed (0 before the first report).
fn flushed(dir: &Path) -> u64 {
    std::fs::read_to_string(progress_file(dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The child: appends one character at a time, compacting every few appends and flushing
/// every few, until it is killed. Reports the number of flushed appends in a file
/// (replaced atomically, written only after `flush` returned).
#[test]
#[ignore = "run as a child process by kill_at_random_moments_then_recover"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = SledStore::open(&db_dir(&dir)).expect("opens");
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    for i in 0u64.. {
        let update = {
            let mut txn = doc.transact_mut();
            let end = text.len(&txn);
            text.insert(&mut txn, end, &char_of(i).to_string());
            txn.encode_update_v1()
        };
        let entry = AppendEntry {
            update,
            author: "child".into(),
            origin: "crash".into(),
            time_ms: i,
        };
        let seq = store.append(ROOM, &[entry]).expect("appends")[0];
        assert_eq!(seq, i + 1);
        if i % 5 == 4 {
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            store.compact(ROOM, &state, seq).expect("compacts");
        }
        if i % 13 == 6 {
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            store
                .save_version(ROOM, VersionKind::Auto, None, &state, seq, i)
                .expect("saves");
        }
        if i % 3 == 2 {
            store.flush().expect("flushes");
            let tmp = dir.join("flushed.tmp");
            std::fs::write(&tmp, (i + 1).to_string()).expect("writes progress");
            std::fs::rename(&tmp, progress_file(&dir)).expect("renames progress");
        }
    }
}

#[test]
fn kill_at_random_moments_then_recover() {
    let exe = std::env::current_exe().expect("test binary");
    for round in 0..4u64 {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns the child");
        // Let it get going (past several compactions), then kill it a little later.
        let target = 40 + 60 * round;
        let deadline = Instant::now() + Duration::from_secs(20);
        while flushed(dir.path()) < target {
            assert!(
                child.try_wait().expect("polls").is_none(),
                "child exited early"
            );
            assert!(Instant::now() < deadline, "child made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(1_700 * round));
        child.kill().expect("kills");
        child.wait().expect("reaps");
        let flushed = flushed(dir.path());

        let store = SledStore::open(&db_dir(dir.path())).expect("reopens after the crash");
        let loaded = store.load(ROOM).expect("loads consistently");
        let doc = Doc::with_client_id(2);
        let text = doc.get_or_insert_text("t");
        for update in loaded
            .snapshot
            .iter()
            .chain(loaded.tail.iter().map(|(_, u)| u))
        {
            let update = Update::decode_v1(update).expect("valid update");
            doc.transact_mut().apply_update(update).expect("applies");
        }
        let recovered = text.get_string(&doc.transact());
        let n = recovered.len() as u64;
        let expected: String = (0..n).map(char_of).collect();
        assert_eq!(
            recovered, expected,
            "round {round}: not a prefix of the appends"
        );
        assert!(
            n >= flushed,
            "round {round}: lost flushed appends ({n} < {flushed})"
        );
        assert_eq!(
            loaded.next_seq,
            n + 1,
            "round {round}: meta disagrees with the log"
        );
        let audit = store.audit(ROOM, None, usize::MAX).expect("audit");
        assert_eq!(
            audit.len() as u64,
            n,
            "round {round}: audit disagrees with the log"
        );
        for version in store.list_versions(ROOM).expect("lists") {
            assert!(store
                .get_version(ROOM, version.id)
                .expect("reads")
                .is_some());
        }
        // And the room goes on where it stopped.
        let entry = AppendEntry {
            update: Vec::new(),
            author: "after".into(),
            origin: "test".into(),
            time_ms: 0,
        };
        assert_eq!(store.append(ROOM, &[entry]).expect("appends"), vec![n + 1]);
    }
}
