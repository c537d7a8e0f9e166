//! What persistence costs on this machine's disk: appending updates to a [`SledStore`] with an
//! fsync per update and per group commit, compacting a long typing log, and loading a large
//! compacted document from a cold process.
//!
//! `cargo bench -p yrelay-store --bench store`
//!
//! Every store lives in a fresh temporary directory (`$TMPDIR`, normally `/tmp`), so the
//! numbers are those of the file system behind it. Sizes are printed once to stderr.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use yrelay_doc::{RoomDoc, UpdateV1, ValidateLimits};
use yrelay_store::{AppendEntry, SledStore, Store};
// Seeded, so every run types the same text.
use yrelay_testkit::Rng;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// Updates in the compaction benchmark's log.
const LOG_UPDATES: usize = 100_000;
/// ... and in a smoke run (`cargo test --benches`), which only checks the bench still works.
const SMOKE_LOG_UPDATES: usize = 2_000;
/// Updates per group commit.
const GROUP: usize = 64;
/// Approximate size of the cold-load benchmark's document.
const BIG_DOC_BYTES: usize = 10 << 20;
/// ... and in a smoke run.
const SMOKE_BIG_DOC_BYTES: usize = 1 << 20;

/// Whether this is a real run: `cargo bench` passes `--bench`, `cargo test --benches` does not.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The limits the server applies to stored updates when it loads a room.
const LOAD_LIMITS: ValidateLimits = ValidateLimits { max_depth: 1024 };

/// `n` keystroke updates as an editor sends them: four clients take turns in sessions of 500
/// keystrokes, each at its own cursor that jumps now and then; one keystroke in eight is a
/// backspace. One update per keystroke, the way y-websocket sends them.
fn typing_log(n: usize) -> Vec<Vec<u8>> {
    const SESSION: usize = 500;
    let reference = Doc::new();
    let clients: Vec<(Doc, yrs::TextRef)> = (0..4u64)
        .map(|c| {
            // 32-bit random-looking IDs, like the ones yjs picks.
            let doc = Doc::with_client_id(2_000_000_011 + c * 104_729);
            let text = doc.get_or_insert_text("content");
            (doc, text)
        })
        .collect();
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (doc, text) = &clients[(out.len() / SESSION) % clients.len()];
        // Catch up with what the others typed.
        let missing = reference
            .transact()
            .encode_diff_v1(&doc.transact().state_vector());
        doc.transact_mut()
            .apply_update(Update::decode_v1(&missing).unwrap())
            .unwrap();
        let mut cursor = {
            let len = text.len(&doc.transact());
            rng.below(len + 1)
        };
        for k in 0..SESSION.min(n - out.len()) {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            if k % 100 == 99 {
                cursor = rng.below(len + 1);
            }
            cursor = cursor.min(len);
            if k % 8 == 7 && cursor > 0 {
                text.remove_range(&mut txn, cursor - 1, 1);
                cursor -= 1;
            } else {
                let ch = char::from(b'a' + (rng.below(26u32) as u8));
                text.insert(&mut txn, cursor, ch.encode_utf8(&mut [0; 4]));
                cursor += 1;
            }
            let update = txn.encode_update_v1();
            drop(txn);
            reference
                .transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            out.push(update);
        }
    }
    out
}

/// The [`LOG_UPDATES`]-update typing log, generated once (it takes seconds) for both the
/// compaction and the cold-load benchmarks.
fn shared_log() -> &'static [Vec<u8>] {
    static LOG: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let started = Instant::now();
        let n = if full_run() {
            LOG_UPDATES
        } else {
            SMOKE_LOG_UPDATES
        };
        let log = typing_log(n);
        eprintln!("generated {n} typing updates in {:.1?}", started.elapsed());
        log
    })
}

fn entry(update: &[u8]) -> AppendEntry {
    AppendEntry {
        update: update.to_vec(),
        author: "anonymous".to_owned(),
        origin: "127.0.0.1:50412".to_owned(),
        time_ms: 1_790_000_000_000,
    }
}

/// Appends `updates` to `room` in batches of 1000 and flushes (untimed setup).
fn fill(store: &SledStore, room: &str, updates: &[Vec<u8>]) {
    for chunk in updates.chunks(1000) {
        let entries: Vec<_> = chunk.iter().map(|u| entry(u)).collect();
        store.append(room, &entries).unwrap();
    }
    store.flush().unwrap();
}

/// Applies a loaded room (snapshot, then tail) into a `RoomDoc` the way the server does on
/// load: validate each stored update, then apply it.
fn apply_loaded(snapshot: Option<Vec<u8>>, tail: Vec<(u64, Vec<u8>)>) -> RoomDoc {
    let mut doc = RoomDoc::new();
    for bytes in snapshot.into_iter().chain(tail.into_iter().map(|(_, u)| u)) {
        let update = UpdateV1::parse(Bytes::from(bytes), &LOAD_LIMITS).unwrap();
        let applied = doc.apply_update(&update, 0);
        assert!(applied.refused.is_empty());
    }
    doc
}

fn append(c: &mut Criterion) {
    let updates = typing_log(4096);
    let avg = updates.iter().map(Vec::len).sum::<usize>() as f64 / updates.len() as f64;
    eprintln!(
        "append: typing updates average {avg:.1} bytes (plus author/origin/time audit record)"
    );
    let entries: Vec<AppendEntry> = updates.iter().map(|u| entry(u)).collect();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();

    let mut group = c.benchmark_group("append");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));

    let mut i = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_update_then_flush", |b| {
        b.iter(|| {
            i = (i + 1) % entries.len();
            store
                .append("fsync-each", std::slice::from_ref(&entries[i]))
                .unwrap();
            store.flush().unwrap();
        })
    });

    group.throughput(Throughput::Elements(GROUP as u64));
    group.bench_function("64_updates_then_one_flush", |b| {
        b.iter(|| {
            i = (i + GROUP) % (entries.len() - GROUP);
            store
                .append("group-commit", &entries[i..i + GROUP])
                .unwrap();
            store.flush().unwrap();
        })
    });
    // The same without the flush: what the append itself costs (sled's buffers only).
    group.bench_function("64_updates_no_flush", |b| {
        b.iter(|| {
            i = (i + GROUP) % (entries.len() - GROUP);
            store.append("no-flush", &entries[i..i + GROUP]).unwrap();
        })
    });
    group.finish();
}

fn compact(c: &mut Criterion) {
    let log = shared_log();
    let log_bytes: usize = log.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();

    // One run outside criterion, step by step, for the sizes and a breakdown.
    {
        fill(&store, "breakdown", log);
        let t = Instant::now();
        let loaded = store.load("breakdown").unwrap();
        let load = t.elapsed();
        let upto = loaded.next_seq - 1;
        let t = Instant::now();
        let doc = apply_loaded(loaded.snapshot, loaded.tail);
        let apply = t.elapsed();
        let t = Instant::now();
        let state = doc.encode_state();
        let encode = t.elapsed();
        let t = Instant::now();
        store.compact("breakdown", &state, upto).unwrap();
        store.flush().unwrap();
        let write = t.elapsed();
        let v2 = doc
            .doc()
            .transact()
            .encode_state_as_update_v2(&StateVector::default());
        let text = doc.doc().get_or_insert_text("content");
        let text_len = text.get_string(&doc.doc().transact()).len();
        eprintln!(
            "compact: log {} updates, {log_bytes} bytes -> snapshot {} bytes v1 \
             ({:.1}% of the log; {} bytes as v2); text length {}",
            log.len(),
            state.len(),
            100.0 * state.len() as f64 / log_bytes as f64,
            v2.len(),
            text_len,
        );
        eprintln!(
            "compact: one run: load {load:.1?}, validate+apply {apply:.1?}, encode {encode:.1?}, \
             compact+flush {write:.1?}"
        );
    }

    let mut group = c.benchmark_group("compact");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(log.len() as u64));
    let mut room_no = 0;
    group.bench_function("apply_encode_compact_100k_typing_updates", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                // Setup (untimed): a fresh room holding the whole log, loaded from the store.
                room_no += 1;
                let room = format!("room-{room_no}");
                fill(&store, &room, log);
                let loaded = store.load(&room).unwrap();
                let upto = loaded.next_seq - 1;

                let t = Instant::now();
                let doc = apply_loaded(loaded.snapshot, loaded.tail);
                let state = doc.encode_state();
                store.compact(&room, &state, upto).unwrap();
                store.flush().unwrap();
                timed += t.elapsed();
            }
            timed
        })
    });
    group.finish();
}

/// A document whose compacted state is about [`BIG_DOC_BYTES`]: the typing log's text with
/// 100 pasted paragraphs of ~100 KB at random places in it.
fn big_document() -> Vec<u8> {
    let doc = Doc::with_client_id(3_141_592_653);
    let text = doc.get_or_insert_text("content");
    for u in shared_log() {
        doc.transact_mut()
            .apply_update(Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let words = [
        "lorem ",
        "ipsum ",
        "dolor ",
        "sit ",
        "amet, ",
        "consectetur ",
        "adipiscing ",
        "elit. ",
    ];
    let mut state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let target = if full_run() {
        BIG_DOC_BYTES
    } else {
        SMOKE_BIG_DOC_BYTES
    };
    while state.len() < target {
        let mut paste = String::with_capacity(target / 100 + 16);
        while paste.len() < target / 100 {
            paste.push_str(words[rng.below(words.len())]);
        }
        let mut txn = doc.transact_mut();
        let at = rng.below(text.len(&txn) + 1);
        text.insert(&mut txn, at, &paste);
        drop(txn);
        state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
    }
    state
}

fn cold_load(c: &mut Criterion) {
    let state = big_document();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .append("big", &[entry(&state)])
            .expect("append the document");
        store.compact("big", &state, 1).unwrap();
        store.flush().unwrap();
    }
    eprintln!(
        "cold_load: snapshot {} bytes; sled directory {} bytes on disk",
        state.len(),
        dir_size(dir.path())
    );
    // Let sled's background threads let go of the directory lock.
    std::thread::sleep(Duration::from_millis(200));
    {
        let t = Instant::now();
        let store = SledStore::open(dir.path()).unwrap();
        let open = t.elapsed();
        let t = Instant::now();
        let loaded = store.load("big").unwrap();
        let load = t.elapsed();
        let t = Instant::now();
        let doc = apply_loaded(loaded.snapshot, loaded.tail);
        let apply = t.elapsed();
        eprintln!(
            "cold_load: one run: open {open:.1?}, load {load:.1?}, validate+apply {apply:.1?}"
        );
        drop((doc, store));
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut group = c.benchmark_group("cold_load");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(state.len() as u64));
    group.bench_function("open_load_apply_10MB_snapshot", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let store = SledStore::open(dir.path()).unwrap();
                let loaded = store.load("big").unwrap();
                assert!(loaded.tail.is_empty());
                let doc = apply_loaded(loaded.snapshot, loaded.tail);
                timed += t.elapsed();
                drop((doc, store));
                // Untimed: sled's threads release the directory lock a few ms after the drop,
                // and the next open must not spend its time waiting for it.
                std::thread::sleep(Duration::from_millis(100));
            }
            timed
        })
    });
    group.finish();
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_size(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

criterion_group!(benches, append, compact, cold_load);
criterion_main!(benches);
