//! Unit tests of every [`Store`] method, written once against `&dyn Store` and run for each
//! store by [`all_cases!`] (in `memory.rs` and `sled_store.rs`).
//!
//! The bytes stored here are arbitrary: the store must not interpret them. The model test in
//! `tests/model.rs` uses real Yjs updates.

use crate::{AppendEntry, AuditRecord, LoadedRoom, RoomInfo, Store, StoreError, VersionKind};

/// Instantiates one `#[test]` per case for the store built by `$new` (an expression whose
/// value dereferences to a store, alive as long as the test).
macro_rules! cases {
    ($new:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let store = $new;
                $crate::conformance::$case(&*store);
            }
        )*
    };
}

/// Every conformance case for the store built by `$new`.
macro_rules! all_cases {
    ($new:expr) => {
        $crate::conformance::cases!(
            $new;
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
