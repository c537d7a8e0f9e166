//! Unit tests of every [`Store`] method, written once against `&dyn Store` and run for each
//! store by [`all_cases!`] (in `memory.rs`, `sled_store.rs` and `pg_store.rs`), plus
//! [`export_import_round_trips_between_every_pair`], which moves rooms between every pair of
//! stores.
//!
//! The bytes stored here are arbitrary: the store must not interpret them. The model test in
//! `tests/model.rs` uses real Yjs updates.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::{
    migrate, AppendEntry, AuditRecord, LoadedRoom, MemoryStore, RoomDump, RoomInfo, SledStore,
    Store, StoreError, VersionKind,
};

/// Instantiates one `#[test]` per case for the store built by `$new`: an expression whose
/// value dereferences to a store, alive as long as the test; or `skippable f`, a function
/// taking the case's name and returning `Option<store>` (`None`: the case is skipped, after
/// a SKIPPED line — see `yrelay_testkit::skip_or_fail`).
macro_rules! cases {
    ([skippable $new:path]; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let Some(store) = $new(stringify!($case)) else {
                    return;
                };
                $crate::conformance::$case(&store);
            }
        )*
    };
    ([$new:expr]; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let store = $new;
                $crate::conformance::$case(&*store);
            }
        )*
    };
}

/// Every conformance case for the store built by `$new` (see [`cases!`]).
macro_rules! all_cases {
    ($($new:tt)+) => {
        $crate::conformance::cases!(
            [$($new)+];
            unknown_room_loads_empty,
            append_assigns_consecutive_seqs,
            empty_append_changes_nothing,
            audit_pages_through_records,
            compact_folds_a_prefix_of_the_tail,
            compact_refuses_positions_outside_the_log,
            list_rooms_reports_sizes,
            delete_room_removes_everything_but_the_counters,
            versions_are_numbered_per_room,
            room_names_never_collide,
            concurrent_appends_get_distinct_seqs,
            compact_with_folds_what_the_store_holds,
            compact_with_merge_errors_change_nothing,
            concurrent_compact_with_never_overlaps,
            room_names_include_tombstones,
            export_then_import_over_the_tombstone_restores_the_room,
            import_refuses_live_rooms_ahead_tombstones_and_bad_dumps,
        );
    };
}

pub(crate) use {all_cases, cases};

fn entry(update: &[u8], time_ms: u64) -> AppendEntry {
    AppendEntry {
        update: update.to_vec(),
        author: format!("author-{time_ms}"),
        origin: "conn-1".to_owned(),
        time_ms,
    }
}

fn record(seq: u64, e: &AppendEntry) -> AuditRecord {
    AuditRecord {
        seq,
        author: e.author.clone(),
        origin: e.origin.clone(),
        time_ms: e.time_ms,
        bytes: e.update.len() as u64,
    }
}

fn empty(next_seq: u64) -> LoadedRoom {
    LoadedRoom {
        snapshot: None,
        snapshot_seq: 0,
        tail: Vec::new(),
        next_seq,
    }
}

pub(crate) fn unknown_room_loads_empty(store: &dyn Store) {
    assert_eq!(store.load("nobody").expect("loads"), empty(1));
    assert_eq!(store.list_rooms().expect("lists"), vec![]);
    assert_eq!(store.list_versions("nobody").expect("lists"), vec![]);
    assert_eq!(store.get_version("nobody", 1).expect("reads"), None);
    assert_eq!(store.audit("nobody", None, 10).expect("audit"), vec![]);
    store
        .delete_room("nobody")
        .expect("deleting an unknown room is fine");
    assert_eq!(store.list_rooms().expect("lists"), vec![]);
    store.flush().expect("flushes");
}

pub(crate) fn append_assigns_consecutive_seqs(store: &dyn Store) {
    let (a, b, c) = (entry(b"one", 1), entry(b"two", 2), entry(&[0, 255, 0], 3));
    assert_eq!(
        store.append("r", &[a.clone(), b.clone()]).expect("appends"),
        vec![1, 2]
    );
    assert_eq!(
        store
            .append("r", std::slice::from_ref(&c))
            .expect("appends"),
        vec![3]
    );
    assert_eq!(
        store
            .append("other", std::slice::from_ref(&a))
            .expect("appends"),
        vec![1]
    );
    assert_eq!(
        store.load("r").expect("loads"),
        LoadedRoom {
            snapshot: None,
            snapshot_seq: 0,
            tail: vec![(1, a.update), (2, b.update), (3, c.update)],
            next_seq: 4,
        }
    );
    store.flush().expect("flushes");
}

pub(crate) fn empty_append_changes_nothing(store: &dyn Store) {
    assert_eq!(store.append("r", &[]).expect("appends"), Vec::<u64>::new());
    assert_eq!(
        store.list_rooms().expect("lists"),
        vec![],
        "does not create the room"
    );
    store.append("r", &[entry(b"x", 1)]).expect("appends");
    assert_eq!(store.append("r", &[]).expect("appends"), Vec::<u64>::new());
    assert_eq!(store.load("r").expect("loads").next_seq, 2);
}

pub(crate) fn audit_pages_through_records(store: &dyn Store) {
    let entries: Vec<_> = (0..5u8)
        .map(|i| entry(&vec![i; usize::from(i) + 1], 100 + u64::from(i)))
        .collect();
    store.append("r", &entries).expect("appends");
    let all: Vec<_> = entries
        .iter()
        .zip(1..)
        .map(|(e, seq)| record(seq, e))
        .collect();
    assert_eq!(store.audit("r", None, usize::MAX).expect("audit"), all);
    assert_eq!(store.audit("r", None, 2).expect("audit"), all[..2]);
    assert_eq!(store.audit("r", Some(2), 2).expect("audit"), all[2..4]);
    assert_eq!(store.audit("r", Some(0), 100).expect("audit"), all);
    assert_eq!(store.audit("r", Some(5), 100).expect("audit"), vec![]);
    assert_eq!(
        store.audit("r", Some(u64::MAX), 100).expect("audit"),
        vec![]
    );
    assert_eq!(store.audit("r", None, 0).expect("audit"), vec![]);
    // Compaction keeps the audit trail.
    store.compact("r", b"state", 4).expect("compacts");
    assert_eq!(store.audit("r", None, usize::MAX).expect("audit"), all);
}

pub(crate) fn compact_folds_a_prefix_of_the_tail(store: &dyn Store) {
    let entries: Vec<_> = (1..=3u8).map(|i| entry(&[i], u64::from(i))).collect();
    store.append("r", &entries).expect("appends");
    store.compact("r", b"S12", 2).expect("compacts");
    assert_eq!(
        store.load("r").expect("loads"),
        LoadedRoom {
            snapshot: Some(b"S12".to_vec()),
            snapshot_seq: 2,
            tail: vec![(3, vec![3])],
            next_seq: 4
        }
    );
    // Same position again: replaces the snapshot, removes nothing more.
    store.compact("r", b"S12'", 2).expect("compacts");
    assert_eq!(
        store.load("r").expect("loads").snapshot,
        Some(b"S12'".to_vec())
    );
    assert_eq!(
        store.append("r", &[entry(&[4], 4)]).expect("appends"),
        vec![4]
    );
    store.compact("r", b"S1234", 4).expect("compacts");
    assert_eq!(
        store.load("r").expect("loads"),
        LoadedRoom {
            snapshot: Some(b"S1234".to_vec()),
            snapshot_seq: 4,
            tail: vec![],
            next_seq: 5
        }
    );
    assert_eq!(
        store.append("r", &[entry(&[5], 5)]).expect("appends"),
        vec![5],
        "seqs go on"
    );
    // An unknown room can be compacted at 0 (a snapshot of an empty log).
    store.compact("fresh", b"F", 0).expect("compacts");
    assert_eq!(
        store.load("fresh").expect("loads"),
        LoadedRoom {
            snapshot: Some(b"F".to_vec()),
            snapshot_seq: 0,
            tail: vec![],
            next_seq: 1
        }
    );
}

pub(crate) fn compact_refuses_positions_outside_the_log(store: &dyn Store) {
    let entries: Vec<_> = (1..=4u8).map(|i| entry(&[i], u64::from(i))).collect();
    store.append("r", &entries).expect("appends");
    store.compact("r", b"S", 2).expect("compacts");
    let before = store.load("r").expect("loads");
    for upto in [5, 6, u64::MAX, 1, 0] {
        assert!(
            matches!(
                store.compact("r", b"bad", upto),
                Err(StoreError::CompactRange {
                    snapshot_seq: 2,
                    next_seq: 5,
                    ..
                })
            ),
            "upto {upto}"
        );
    }
    assert!(matches!(
        store.compact("unknown", b"bad", 1),
        Err(StoreError::CompactRange { .. })
    ));
    assert_eq!(store.load("r").expect("loads"), before);
    assert_eq!(
        store.list_rooms().expect("lists").len(),
        1,
        "refusals create nothing"
    );
}

pub(crate) fn list_rooms_reports_sizes(store: &dyn Store) {
    store
        .append("b", &[entry(&[0; 10], 50), entry(&[0; 20], 40)])
        .expect("appends");
    store.append("a", &[entry(&[0; 3], 7)]).expect("appends");
    store
        .save_version("v", VersionKind::Auto, None, b"state", 0, 1)
        .expect("saves");
    let info = |name: &str, log_entries, stored_bytes, last_change_ms| RoomInfo {
        name: name.to_owned(),
        log_entries,
        stored_bytes,
        last_change_ms,
    };
    assert_eq!(
        store.list_rooms().expect("lists"),
        vec![info("a", 1, 3, 7), info("b", 2, 30, 50), info("v", 0, 0, 0)]
    );
    store.compact("b", &[0; 4], 1).expect("compacts");
    assert_eq!(
        store.list_rooms().expect("lists")[1],
        info("b", 1, 4 + 20, 50)
    );
}

pub(crate) fn delete_room_removes_everything_but_the_counters(store: &dyn Store) {
    store
        .append("r", &[entry(b"1", 1), entry(b"2", 2), entry(b"3", 3)])
        .expect("appends");
    store.compact("r", b"S", 2).expect("compacts");
    store
        .save_version("r", VersionKind::Named, Some("x"), b"V", 3, 5)
        .expect("saves");
    store.append("keep", &[entry(b"k", 1)]).expect("appends");
    store.delete_room("r").expect("deletes");
    assert_eq!(store.load("r").expect("loads"), empty(4));
    assert_eq!(store.list_versions("r").expect("lists"), vec![]);
    assert_eq!(store.get_version("r", 1).expect("reads"), None);
    assert_eq!(store.audit("r", None, 100).expect("audit"), vec![]);
    assert_eq!(store.list_rooms().expect("lists").len(), 1);
    store.delete_room("r").expect("deleting twice is fine");
    // The name can be used again; seqs and version ids continue.
    assert_eq!(
        store.append("r", &[entry(b"4", 9)]).expect("appends"),
        vec![4]
    );
    let v = store
        .save_version("r", VersionKind::Auto, None, b"W", 4, 9)
        .expect("saves");
    assert_eq!(v.id, 2);
    assert_eq!(
        store.load("r").expect("loads").tail,
        vec![(4, b"4".to_vec())]
    );
    assert_eq!(
        store.audit("r", None, 100).expect("audit"),
        vec![record(4, &entry(b"4", 9))]
    );
    let names: Vec<_> = store
        .list_rooms()
        .expect("lists")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["keep", "r"]);
    assert_eq!(store.load("keep").expect("loads").tail.len(), 1);
}

pub(crate) fn versions_are_numbered_per_room(store: &dyn Store) {
    let auto = store
        .save_version("r", VersionKind::Auto, None, b"A", 0, 10)
        .expect("saves");
    let named = store
        .save_version("r", VersionKind::Named, Some("v1 ✓"), b"NN", 7, 20)
        .expect("saves");
    assert_eq!(
        (auto.id, auto.kind, auto.label.as_deref(), auto.bytes),
        (1, VersionKind::Auto, None, 1)
    );
    assert_eq!(
        (
            named.id,
            named.kind,
            named.label.as_deref(),
            named.seq,
            named.created_ms,
            named.bytes
        ),
        (2, VersionKind::Named, Some("v1 ✓"), 7, 20, 2)
    );
    assert_eq!(
        store.list_versions("r").expect("lists"),
        vec![named.clone(), auto.clone()]
    );
    assert_eq!(
        store.get_version("r", 1).expect("reads"),
        Some((auto, b"A".to_vec()))
    );
    assert_eq!(
        store.get_version("r", 2).expect("reads"),
        Some((named, b"NN".to_vec()))
    );
    assert_eq!(store.get_version("r", 3).expect("reads"), None);
    assert_eq!(store.get_version("r", 0).expect("reads"), None);
    let other = store
        .save_version("s", VersionKind::Auto, None, b"", 0, 1)
        .expect("saves");
    assert_eq!((other.id, other.bytes), (1, 0));
    assert_eq!(
        store.get_version("s", 1).expect("reads").map(|(_, s)| s),
        Some(vec![])
    );
    // Versions neither create log entries nor move seqs.
    assert_eq!(store.load("r").expect("loads"), empty(1));
}

/// Names that are prefixes of each other, empty, with `/`, NUL and non-ASCII characters
/// each keep their own data.
pub(crate) fn room_names_never_collide(store: &dyn Store) {
    let names = [
        "a",
        "a/b",
        "ab",
        "a/",
        "",
        "/",
        "//",
        "a\0",
        "a\0b",
        "\0",
        "\0\0",
        "日本語",
        "日本",
        "ü/🎉",
        "a b",
        "\u{1}",
    ];
    for (i, name) in names.iter().enumerate() {
        let n = i as u8;
        let updates: Vec<_> = (0..=n % 3).map(|k| entry(&[n, k], u64::from(n))).collect();
        store.append(name, &updates).expect("appends");
        store
            .save_version(name, VersionKind::Named, Some(name), &[n], 0, 0)
            .expect("saves");
        if i % 2 == 0 {
            store.compact(name, &[n, 99], 1).expect("compacts");
        }
    }
    let check = |deleted: &[&str]| {
        for (i, name) in names.iter().enumerate() {
            let n = i as u8;
            let loaded = store.load(name).expect("loads");
            let count = u64::from(n % 3) + 1;
            if deleted.contains(name) {
                assert_eq!(loaded, empty(count + 1), "{name:?}");
                continue;
            }
            let first = if i % 2 == 0 { 2 } else { 1 };
            let tail: Vec<_> = (first..=count)
                .map(|seq| (seq, vec![n, (seq - 1) as u8]))
                .collect();
            assert_eq!(loaded.tail, tail, "{name:?}");
            assert_eq!(
                loaded.snapshot,
                (i % 2 == 0).then(|| vec![n, 99]),
                "{name:?}"
            );
            assert_eq!(loaded.next_seq, count + 1, "{name:?}");
            let versions = store.list_versions(name).expect("lists");
            assert_eq!(versions.len(), 1, "{name:?}");
            assert_eq!(versions[0].label.as_deref(), Some(*name));
            assert_eq!(
                store.audit(name, None, 100).expect("audit").len() as u64,
                count,
                "{name:?}"
            );
        }
        let mut expected: Vec<_> = names
            .iter()
            .filter(|n| !deleted.contains(n))
            .map(|n| n.to_string())
            .collect();
        expected.sort();
        let listed: Vec<_> = store
            .list_rooms()
            .expect("lists")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(listed, expected);
    };
    check(&[]);
    for name in ["a", "", "\0", "日本"] {
        store.delete_room(name).expect("deletes");
    }
    check(&["a", "", "\0", "日本"]);
}

pub(crate) fn concurrent_appends_get_distinct_seqs(store: &dyn Store) {
    const THREADS: u64 = 4;
    const EACH: u64 = 50;
    let mut seqs: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let e = entry(&[t as u8, i as u8], i);
                        mine.extend(store.append("r", &[e]).expect("appends"));
                        if i % 10 == 0 {
                            store.compact("r", b"S", 0).expect("compacts");
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=THREADS * EACH).collect::<Vec<_>>());
    let loaded = store.load("r").expect("loads");
    assert_eq!(loaded.tail.len() as u64, THREADS * EACH);
    assert_eq!(loaded.next_seq, THREADS * EACH + 1);
}

/// Concatenates the snapshot (if any) and every tail update: a "merge" for opaque bytes,
/// which keeps every byte appended so a lost or doubled entry shows.
fn concat(loaded: &LoadedRoom) -> Vec<u8> {
    let mut out = loaded.snapshot.clone().unwrap_or_default();
    for (_, update) in &loaded.tail {
        out.extend_from_slice(update);
    }
    out
}

pub(crate) fn compact_with_folds_what_the_store_holds(store: &dyn Store) {
    let calls = std::cell::Cell::new(0);
    let mut merge = |loaded: &LoadedRoom| -> Result<Vec<u8>, String> {
        calls.set(calls.get() + 1);
        Ok(concat(loaded))
    };
    assert_eq!(store.compact_with("r", &mut merge).expect("compacts"), None);
    assert_eq!(
        store.list_rooms().expect("lists"),
        vec![],
        "creates nothing"
    );
    let entries: Vec<_> = [b"a", b"b", b"c"]
        .iter()
        .zip(1..)
        .map(|(u, t)| entry(*u, t))
        .collect();
    store.append("r", &entries).expect("appends");
    let before = store.load("r").expect("loads");
    let mut seen = None;
    let folded = store
        .compact_with("r", &mut |loaded| {
            seen = Some(loaded.clone());
            Ok(concat(loaded))
        })
        .expect("compacts");
    assert_eq!(folded, Some(3));
    assert_eq!(seen, Some(before), "merge gets what load returns");
    let after = LoadedRoom {
        snapshot: Some(b"abc".to_vec()),
        snapshot_seq: 3,
        tail: vec![],
        next_seq: 4,
    };
    assert_eq!(store.load("r").expect("loads"), after);
    // Nothing new: nothing to do, merge not called.
    assert_eq!(store.compact_with("r", &mut merge).expect("compacts"), None);
    assert_eq!(calls.get(), 0);
    assert_eq!(store.load("r").expect("loads"), after);
    store.append("r", &[entry(b"dd", 4)]).expect("appends");
    assert_eq!(
        store.compact_with("r", &mut merge).expect("compacts"),
        Some(4)
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(
        store.load("r").expect("loads").snapshot,
        Some(b"abcdd".to_vec())
    );
    assert_eq!(store.audit("r", None, 100).expect("audit").len(), 4);
    assert_eq!(
        store.list_rooms().expect("lists"),
        vec![RoomInfo {
            name: "r".to_owned(),
            log_entries: 0,
            stored_bytes: 5,
            last_change_ms: 4
        }]
    );
    assert_eq!(
        store.append("r", &[entry(b"e", 5)]).expect("appends"),
        vec![5]
    );
}

pub(crate) fn compact_with_merge_errors_change_nothing(store: &dyn Store) {
    store
        .append("r", &[entry(b"1", 1), entry(b"2", 2)])
        .expect("appends");
    store.compact("r", b"S1", 1).expect("compacts");
    let before = (
        store.load("r").expect("loads"),
        store.list_rooms().expect("lists"),
    );
    let result = store.compact_with("r", &mut |_| Err("no memory left".to_owned()));
    assert!(
        matches!(&result, Err(StoreError::Merge(m)) if m == "no memory left"),
        "{result:?}"
    );
    assert_eq!(
        (
            store.load("r").expect("loads"),
            store.list_rooms().expect("lists")
        ),
        before
    );
}

/// Two threads compact one room over and over while a third appends: the merges never
/// run at once (a merge that finds another running flags it), no call fails, and in the end
/// the snapshot holds every appended byte exactly once, in seq order.
pub(crate) fn concurrent_compact_with_never_overlaps(store: &dyn Store) {
    const APPENDS: u16 = 150;
    let in_merge = AtomicUsize::new(0);
    let overlapped = AtomicBool::new(false);
    let appending = AtomicBool::new(true);
    let merge = |loaded: &LoadedRoom| -> Result<Vec<u8>, String> {
        if in_merge.fetch_add(1, Ordering::SeqCst) != 0 {
            overlapped.store(true, Ordering::SeqCst);
        }
        // Long enough for another thread to try the same room meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(3));
        let state = concat(loaded);
        in_merge.fetch_sub(1, Ordering::SeqCst);
        Ok(state)
    };
    let folded = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while appending.load(Ordering::SeqCst) {
                    let mut m = merge;
                    if store.compact_with("r", &mut m).expect("compacts").is_some() {
                        folded.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        for i in 0..APPENDS {
            store
                .append("r", &[entry(&i.to_be_bytes(), u64::from(i))])
                .expect("appends");
            if i % 10 == 9 {
                // Let the compactors in between appends.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if i == APPENDS / 2 {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while folded.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        appending.store(false, Ordering::SeqCst);
    });
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "two merges of one room ran at once"
    );
    assert!(
        folded.load(Ordering::SeqCst) > 0,
        "the compactors never got to compact"
    );
    let mut m = merge;
    store.compact_with("r", &mut m).expect("compacts");
    let loaded = store.load("r").expect("loads");
    let expected: Vec<u8> = (0..APPENDS).flat_map(u16::to_be_bytes).collect();
    assert_eq!(
        loaded.snapshot,
        Some(expected),
        "every entry once, in order"
    );
    assert_eq!(
        (loaded.snapshot_seq, loaded.next_seq, loaded.tail.len()),
        (u64::from(APPENDS), u64::from(APPENDS) + 1, 0)
    );
    assert_eq!(
        store.audit("r", None, usize::MAX).expect("audit").len(),
        usize::from(APPENDS)
    );
}

pub(crate) fn room_names_include_tombstones(store: &dyn Store) {
    assert_eq!(store.room_names().expect("names"), Vec::<String>::new());
    for name in ["b", "a\0", "", "a"] {
        store.append(name, &[entry(b"x", 1)]).expect("appends");
    }
    store
        .save_version("v", VersionKind::Auto, None, b"s", 0, 1)
        .expect("saves");
    store.delete_room("a").expect("deletes");
    store.delete_room("never").expect("deletes nothing");
    assert_eq!(
        store.room_names().expect("names"),
        ["", "a", "a\0", "b", "v"]
    );
    let listed: Vec<_> = store
        .list_rooms()
        .expect("lists")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, ["", "a\0", "b", "v"]);
}

/// Builds a room with a snapshot, a tail, versions and audit records folded away.
fn rich_room(store: &dyn Store, room: &str) {
    let entries: Vec<_> = (1..=5u8)
        .map(|i| entry(&[i; 3], 100 + u64::from(i)))
        .collect();
    store.append(room, &entries).expect("appends");
    store.compact(room, b"SNAP", 3).expect("compacts");
    store
        .save_version(room, VersionKind::Named, Some("first ✓"), b"V1", 3, 50)
        .expect("saves");
    store
        .save_version(room, VersionKind::Auto, None, b"", 5, 60)
        .expect("saves");
    store
        .append(room, &[entry(b"six", 90), entry(b"seven", 95)])
        .expect("appends");
}

/// Every answer the trait gives about `room`.
fn observe(store: &dyn Store, room: &str) -> impl PartialEq + std::fmt::Debug {
    let versions = store.list_versions(room).expect("lists");
    let states: Vec<_> = versions
        .iter()
        .map(|v| store.get_version(room, v.id).expect("reads"))
        .collect();
    (
        store.load(room).expect("loads"),
        store
            .list_rooms()
            .expect("lists")
            .into_iter()
            .find(|r| r.name == room),
        versions,
        states,
        store.audit(room, None, usize::MAX).expect("audit"),
        store.audit(room, Some(2), 2).expect("audit"),
    )
}

pub(crate) fn export_then_import_over_the_tombstone_restores_the_room(store: &dyn Store) {
    assert_eq!(store.export_room("r").expect("exports"), None);
    rich_room(store, "r");
    let dump = store.export_room("r").expect("exports").expect("exists");
    assert_eq!(
        (
            dump.live,
            dump.snapshot.as_deref(),
            dump.snapshot_seq,
            dump.next_seq
        ),
        (true, Some(&b"SNAP"[..]), 3, 8)
    );
    assert_eq!(
        dump.tail.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!((dump.audit.len(), dump.versions.len()), (7, 2));
    assert_eq!((dump.next_version_id, dump.last_change_ms), (3, 105));
    let before = observe(store, "r");
    store.delete_room("r").expect("deletes");
    let tombstone = store.export_room("r").expect("exports").expect("tombstone");
    assert_eq!(
        tombstone,
        RoomDump {
            room: "r".to_owned(),
            live: false,
            snapshot: None,
            snapshot_seq: 0,
            tail: vec![],
            next_seq: 8,
            audit: vec![],
            versions: vec![],
            next_version_id: 3,
            last_change_ms: 0,
        }
    );
    // The tombstone's counters are not ahead of the dump's: the import replaces it.
    store.import_room(&dump).expect("imports");
    assert_eq!(observe(store, "r"), before);
    assert_eq!(store.export_room("r").expect("exports"), Some(dump));
    assert_eq!(
        store.append("r", &[entry(b"8", 1)]).expect("appends"),
        vec![8]
    );
    let v = store
        .save_version("r", VersionKind::Auto, None, b"", 8, 1)
        .expect("saves");
    assert_eq!(v.id, 3);
    // A tombstone imports as a tombstone.
    store
        .import_room(&RoomDump {
            room: "gone".to_owned(),
            ..tombstone
        })
        .expect("imports");
    assert_eq!(store.load("gone").expect("loads").next_seq, 8);
    assert_eq!(store.room_names().expect("names"), ["gone", "r"]);
    assert_eq!(store.list_rooms().expect("lists").len(), 1);
}

pub(crate) fn import_refuses_live_rooms_ahead_tombstones_and_bad_dumps(store: &dyn Store) {
    rich_room(store, "live");
    let dump = store.export_room("live").expect("exports").expect("exists");
    let before = observe(store, "live");
    assert!(matches!(
        store.import_room(&dump),
        Err(StoreError::RoomExists { ref room, deleted: false }) if room == "live"
    ));
    assert_eq!(observe(store, "live"), before);
    // A deleted room whose seqs went further than the dump's.
    store
        .append(
            "ahead",
            &(0..10).map(|i| entry(b"x", i)).collect::<Vec<_>>(),
        )
        .expect("appends");
    store.delete_room("ahead").expect("deletes");
    let small = RoomDump {
        room: "ahead".to_owned(),
        ..dump.clone()
    };
    assert!(matches!(
        store.import_room(&small),
        Err(StoreError::RoomExists { deleted: true, .. })
    ));
    assert_eq!(store.load("ahead").expect("loads"), empty(11));
    // Dumps no store could have written.
    let bad = |change: &dyn Fn(&mut RoomDump)| {
        let mut d = RoomDump {
            room: "bad".to_owned(),
            ..dump.clone()
        };
        change(&mut d);
        d
    };
    let invalid = [
        bad(&|d| d.tail.push((d.next_seq, b"future".to_vec()))),
        bad(&|d| d.tail.insert(0, (d.snapshot_seq, b"folded".to_vec()))),
        bad(&|d| d.versions.reverse()),
        bad(&|d| d.next_version_id = 1),
        bad(&|d| d.audit.push(d.audit[0].clone())),
        bad(&|d| d.snapshot = None),
        bad(&|d| d.live = false),
        bad(&|d| d.next_seq = 0),
        bad(&|d| d.versions[0].0.bytes += 1),
    ];
    for d in &invalid {
        assert!(
            matches!(store.import_room(d), Err(StoreError::InvalidDump(_))),
            "{d:?}"
        );
    }
    assert_eq!(
        store.room_names().expect("names"),
        ["ahead", "live"],
        "nothing created"
    );
}

/// Fills a store with one room of every shape: tail only, snapshot and tail and versions,
/// snapshot only, versions only, a tombstone, a room reused after deletion, odd names.
fn populate(store: &dyn Store) {
    store
        .append("plain", &[entry(b"p1", 5), entry(b"p2", 3)])
        .expect("appends");
    rich_room(store, "rich");
    rich_room(store, "ü/\0 x");
    store.compact("snapshot-only", b"F", 0).expect("compacts");
    store
        .save_version("versions-only", VersionKind::Named, Some(""), b"v", 0, 7)
        .expect("saves");
    rich_room(store, "deleted");
    store.delete_room("deleted").expect("deletes");
    rich_room(store, "reborn");
    store.delete_room("reborn").expect("deletes");
    store
        .append("reborn", &[entry(b"again", 200)])
        .expect("appends");
    store
        .append("", &[entry(b"empty name", 1)])
        .expect("appends");
}

/// Migrates a populated `from` into an empty `to` and checks that every answer about every
/// room is the same in both, also for the next writes; a second migration skips them all.
pub(crate) fn migrate_round_trip(from: &dyn Store, to: &dyn Store) {
    populate(from);
    let mut seen = Vec::new();
    let report = migrate(from, to, |room, outcome| {
        seen.push((room.to_owned(), outcome.to_string()));
    })
    .expect("migrates");
    let names = from.room_names().expect("names");
    assert_eq!(to.room_names().expect("names"), names);
    assert_eq!(
        seen.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        names
    );
    assert_eq!(
        (report.copied, report.tombstones, report.skipped),
        (7, 1, 0),
        "{report}"
    );
    assert_eq!(report.versions, 5);
    assert_eq!(
        to.list_rooms().expect("lists"),
        from.list_rooms().expect("lists")
    );
    for name in &names {
        assert_eq!(observe(to, name), observe(from, name), "{name:?}");
        assert_eq!(
            to.export_room(name).expect("exports"),
            from.export_room(name).expect("exports")
        );
        // The next writes get the same seqs and version ids on both sides.
        let next = [entry(b"next", 1)];
        assert_eq!(
            to.append(name, &next).expect("appends"),
            from.append(name, &next).expect("appends"),
            "{name:?}"
        );
        let saved = |s: &dyn Store| {
            s.save_version(name, VersionKind::Auto, None, b"x", 1, 1)
                .expect("saves")
        };
        assert_eq!(saved(to), saved(from), "{name:?}");
    }
    let again = migrate(from, to, |_, outcome| {
        assert!(outcome.to_string().starts_with("skipped"), "{outcome}");
    })
    .expect("migrates");
    assert_eq!((again.copied, again.tombstones, again.skipped), (0, 0, 8));
}

/// A fresh store of each kind: memory, sled (in a temporary directory kept alive with it),
/// and PostgreSQL when built with it and available.
fn fresh_stores(case: &str) -> Vec<(&'static str, Box<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sled = SledStore::open(dir.path()).expect("opens");
    #[allow(unused_mut)]
    let mut stores: Vec<(&'static str, Box<dyn Store>, Option<tempfile::TempDir>)> = vec![
        ("memory", Box::new(MemoryStore::default()), None),
        ("sled", Box::new(sled), Some(dir)),
    ];
    #[cfg(feature = "postgres")]
    if let Some(pg) = crate::pg_store::tests::fresh_store(case) {
        stores.push(("postgres", Box::new(pg), None));
    }
    let _ = case;
    stores
}

#[test]
fn export_import_round_trips_between_every_pair() {
    let kinds = fresh_stores("export_import_round_trips_between_every_pair").len();
    for from in 0..kinds {
        for to in 0..kinds {
            let from_stores = fresh_stores("export_import_round_trips_between_every_pair");
            let to_stores = fresh_stores("export_import_round_trips_between_every_pair");
            let (from_kind, from_store, _from_dir) = &from_stores[from];
            let (to_kind, to_store, _to_dir) = &to_stores[to];
            eprintln!("migrating {from_kind} → {to_kind}");
            migrate_round_trip(from_store.as_ref(), to_store.as_ref());
        }
    }
}
