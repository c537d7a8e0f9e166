//! Micro-benchmarks of what yrelay does per message, on realistic inputs.
//!
//! `cargo bench -p yrelay-bench --bench hot_paths`
//!
//! | group | what one iteration is |
//! |---|---|
//! | `frame_decode` | [`decode_client_message`] (framing + validation) of one client frame: a one-character typing update, a SyncStep1 from a 50-author room, a cursor awareness update, and a 1 MB paste and a 525 KB SyncStep2 of a whole typed document (many small blocks) |
//! | `update_apply` | [`RoomDoc::apply_update`] of one already validated typing update, into a small document and into one with 100k keystrokes of history by 50 authors |
//! | `fanout_encode` | framing one broadcast into [`Bytes`] once and offering a clone to N per-connection bounded `tokio::sync::mpsc` queues with the server's `try_send` + byte accounting; for awareness also the apply into a room with 200 present clients |
//! | `compaction` | a room's compaction after 10,000 typing updates: apply into a fresh [`RoomDoc`], `encode_state`, [`SledStore`] `compact` + `flush`; and the last two steps on their own |
//!
//! Typing is produced by real `yrs` documents: each keystroke is one transaction and one v1
//! update, as y-websocket sends them; authors take turns in sessions of 500 keystrokes at
//! their own cursor, which jumps now and then; one keystroke in eight is a backspace.
//! Input sizes are printed once to stderr.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::sync::mpsc;
use yrelay_doc::codec::{
    broadcast_frame, encode_awareness, encode_sync_step1, encode_sync_step2, encode_sync_update,
};
use yrelay_doc::{
    decode_client_message, AwarenessUpdateV1, ClientMessage, RoomDoc, UpdateV1, ValidateLimits,
};
use yrelay_store::{AppendEntry, SledStore, Store};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Text, TextRef, Transact, Update};

/// The limits a connection validates client frames with (the server's default config).
const CLIENT_LIMITS: ValidateLimits = ValidateLimits { max_depth: 64 };
/// The limits the server validates stored updates with when it loads a room.
const LOAD_LIMITS: ValidateLimits = ValidateLimits { max_depth: 1024 };
/// Keystrokes per turn of one author.
const SESSION: usize = 500;
/// Frames one connection's outbound queue holds (the server's `outbound_queue_frames`).
const QUEUE_FRAMES: usize = 16_384;
/// Bytes one connection's outbound queue holds (the server's `outbound_queue_bytes`).
const QUEUE_BYTES: usize = 64 << 20;

/// A small deterministic PRNG (xorshift64), so every run types the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// A 32-bit random-looking client ID, like the ones yjs picks.
fn client_id(n: u64) -> u64 {
    2_000_000_011 + n * 104_729
}

/// One author's editor.
struct Typist {
    doc: Doc,
    text: TextRef,
    cursor: u32,
    typed: usize,
}

impl Typist {
    fn new(client: u64) -> Self {
        let doc = Doc::with_client_id(client);
        let text = doc.get_or_insert_text("content");
        Self {
            doc,
            text,
            cursor: 0,
            typed: 0,
        }
    }

    /// Receives what the others typed, and puts the cursor somewhere in the text.
    fn catch_up(&mut self, reference: &Doc, rng: &mut Rng) {
        let missing = reference
            .transact()
            .encode_diff_v1(&self.doc.transact().state_vector());
        self.doc
            .transact_mut()
            .apply_update(Update::decode_v1(&missing).unwrap())
            .unwrap();
        let len = self.text.len(&self.doc.transact());
        self.cursor = rng.below(len + 1);
    }

    /// One keystroke: a letter, or every eighth a backspace; the cursor jumps every 100.
    fn keystroke(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        let len = self.text.len(&txn);
        if self.typed % 100 == 99 {
            self.cursor = rng.below(len + 1);
        }
        self.cursor = self.cursor.min(len);
        if self.typed % 8 == 7 && self.cursor > 0 {
            self.text.remove_range(&mut txn, self.cursor - 1, 1);
            self.cursor -= 1;
        } else {
            let ch = char::from(b'a' + (rng.below(26) as u8));
            self.text
                .insert(&mut txn, self.cursor, ch.encode_utf8(&mut [0; 4]));
            self.cursor += 1;
        }
        self.typed += 1;
        txn.encode_update_v1()
    }
}

/// `n` keystroke updates by `authors` taking turns (IDs from `first_author`), typed on top of
/// `base` (a v1 update, or nothing). Returns the updates and the whole resulting document as
/// one v1 update.
fn typing_log(base: &[u8], first_author: u64, authors: u64, n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let reference = Doc::new();
    if !base.is_empty() {
        reference
            .transact_mut()
            .apply_update(Update::decode_v1(base).unwrap())
            .unwrap();
    }
    let mut typists: Vec<Typist> = (first_author..first_author + authors)
        .map(|a| Typist::new(client_id(a)))
        .collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ first_author);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let typist = &mut typists[(out.len() / SESSION) % authors as usize];
        typist.catch_up(&reference, &mut rng);
        for _ in 0..SESSION.min(n - out.len()) {
            let update = typist.keystroke(&mut rng);
            reference
                .transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            out.push(update);
        }
    }
    let state = reference
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    (out, state)
}

/// 100k keystrokes by 50 authors (4 turns each): a long-lived, busy room's document.
/// Generated once (it takes seconds: each local keystroke walks the text to its index).
fn history_state() -> &'static [u8] {
    static STATE: OnceLock<Vec<u8>> = OnceLock::new();
    STATE.get_or_init(|| {
        let started = Instant::now();
        let state = typing_log(&[], 0, 50, 100_000).1;
        eprintln!(
            "history: 100k keystrokes by 50 authors generated in {:.1?}; state {} B",
            started.elapsed(),
            state.len()
        );
        state
    })
}

fn parse_all(updates: &[Vec<u8>]) -> Vec<UpdateV1> {
    updates
        .iter()
        .map(|u| UpdateV1::parse(Bytes::copy_from_slice(u), &LOAD_LIMITS).unwrap())
        .collect()
}

/// A room loaded from a compacted state, as the server loads it.
fn room_from(state: &[u8]) -> RoomDoc {
    let mut room = RoomDoc::new();
    if !state.is_empty() {
        let update = UpdateV1::parse(Bytes::copy_from_slice(state), &LOAD_LIMITS).unwrap();
        let applied = room.apply_update(&update, 0);
        assert!(applied.refused.is_empty());
    }
    room
}

/// The awareness state y-codemirror / y-prosemirror clients publish: a user and a cursor
/// (anchor and head as Yjs relative positions).
fn cursor_state(client: u64, clock: u32) -> String {
    format!(
        r##"{{"user":{{"name":"User {client}","color":"#30bced","colorLight":"#30bced33"}},"cursor":{{"anchor":{{"type":null,"tname":"content","item":{{"client":{client},"clock":{clock}}},"assoc":0}},"head":{{"type":null,"tname":"content","item":{{"client":{client},"clock":{clock}}},"assoc":0}}}}}}"##
    )
}

/// An awareness update carrying `clients`' cursor states at `clock`.
fn awareness_update(clients: impl IntoIterator<Item = u64>, clock: u32) -> Vec<u8> {
    AwarenessUpdate {
        clients: clients
            .into_iter()
            .map(|c| {
                let entry = AwarenessUpdateEntry {
                    clock,
                    json: cursor_state(c, clock * 7).into(),
                };
                (ClientID::new(c), entry)
            })
            .collect(),
    }
    .encode_v1()
}

fn frame_decode(c: &mut Criterion) {
    let (typing, _) = typing_log(&[], 0, 1, 20);
    let one_char = encode_sync_update(&typing[10]);
    let history = history_state();
    let sv = {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(history).unwrap())
            .unwrap();
        let sv = doc.transact().state_vector();
        sv.encode_v1()
    };
    let step1 = encode_sync_step1(&sv);
    let awareness = encode_awareness(&awareness_update([client_id(3)], 42));
    let paste = {
        let doc = Doc::with_client_id(client_id(7));
        let text = doc.get_or_insert_text("content");
        let mut txn = doc.transact_mut();
        let mut content = "lorem ipsum ".repeat((1 << 20) / 12 + 1);
        content.truncate(1 << 20);
        text.insert(&mut txn, 0, &content);
        encode_sync_update(&txn.encode_update_v1())
    };
    // A whole typed document (many small blocks from many clients), as a reconnecting
    // client's SyncStep2 carries it.
    let typed_doc = encode_sync_step2(history);
    eprintln!(
        "frame_decode: one-char update frame {} B, SyncStep1 {} B ({} clients), awareness {} B, \
         paste {} B, typed document {} B",
        one_char.len(),
        step1.len(),
        StateVector::decode_v1(&sv).unwrap().len(),
        awareness.len(),
        paste.len(),
        typed_doc.len(),
    );

    let mut group = c.benchmark_group("frame_decode");
    let frames = [
        ("sync_update_one_char", &one_char),
        ("sync_step1_50_clients", &step1),
        ("awareness_cursor", &awareness),
        ("sync_update_1MB_paste", &paste),
        ("sync_step2_525KB_typed_doc", &typed_doc),
    ];
    for (id, frame) in frames {
        group.throughput(Throughput::Bytes(frame.len() as u64));
        if frame.len() > 100_000 {
            group.sample_size(20);
        }
        group.bench_function(id, |b| {
            b.iter(|| {
                let msg = decode_client_message(black_box(frame), &CLIENT_LIMITS).unwrap();
                assert!(!matches!(msg, ClientMessage::Unknown(_)));
                msg
            })
        });
    }
    group.finish();
}

/// Benchmarks applying `updates` one by one into a room loaded from `base`, starting over
/// from a fresh copy of `base` (untimed) when they run out.
fn bench_apply(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    base: &[u8],
    updates: &[UpdateV1],
) {
    // Check once that every update is integrated and emitted whole.
    let mut room = room_from(base);
    for u in updates {
        let applied = room.apply_update(u, 1);
        assert!(applied.refused.is_empty() && applied.emitted.len() == 1);
    }
    let started = Instant::now();
    let mut room = room_from(base);
    eprintln!(
        "update_apply/{id}: loading the base document takes {:.1?}",
        started.elapsed()
    );
    let mut next = 0;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if next == updates.len() {
                    room = room_from(base);
                    next = 0;
                }
                let n = left.min(updates.len() - next);
                let t = Instant::now();
                for u in &updates[next..next + n] {
                    assert_eq!(black_box(room.apply_update(u, 1)).emitted.len(), 1);
                }
                timed += t.elapsed();
                next += n;
                left -= n;
            }
            timed
        })
    });
}

fn update_apply(c: &mut Criterion) {
    let (small, _) = typing_log(&[], 0, 1, 5_000);
    let small = parse_all(&small);
    let history = history_state();
    // A new author types into the long-lived room.
    let (busy, _) = typing_log(history, 1_000, 1, 10_000);
    let busy = parse_all(&busy);
    eprintln!(
        "update_apply: typing updates average {:.1} B; history document {} B",
        busy.iter().map(UpdateV1::len).sum::<usize>() as f64 / busy.len() as f64,
        history.len()
    );

    let mut group = c.benchmark_group("update_apply");
    group.throughput(Throughput::Elements(1));
    bench_apply(&mut group, "fresh_doc_one_char", &[], &small);
    bench_apply(
        &mut group,
        "history_100k_keys_50_clients_one_char",
        history,
        &busy,
    );
    group.finish();
}

/// The room's handle on one connection's outbound queue, as in the server.
struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Subscriber {
    /// The server's `Subscriber::offer`: byte budget, then `try_send` of a clone.
    fn offer(&self, frame: &Bytes) -> bool {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }
}

/// A room's subscribers and, standing in for their writer tasks, the receiving ends.
struct Fanout {
    subs: HashMap<u64, Subscriber>,
    writers: Vec<(mpsc::Receiver<Bytes>, Arc<AtomicUsize>)>,
}

impl Fanout {
    fn new(n: usize) -> Self {
        let mut subs = HashMap::new();
        let mut writers = Vec::new();
        for conn in 0..n as u64 {
            let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            subs.insert(
                conn + 1,
                Subscriber {
                    tx,
                    queued_bytes: Arc::clone(&queued_bytes),
                },
            );
            writers.push((rx, queued_bytes));
        }
        Self { subs, writers }
    }

    /// The server's `offer_all`: returns how many subscribers were too slow.
    fn offer_all(&self, frame: &Bytes) -> usize {
        self.subs.values().filter(|s| !s.offer(frame)).count()
    }

    /// What the writers do between two bursts (untimed): take every frame, release its bytes.
    fn drain(&mut self) {
        for (rx, queued) in &mut self.writers {
            while let Ok(frame) = rx.try_recv() {
                queued.fetch_sub(frame.len(), Ordering::AcqRel);
            }
        }
    }

    /// Times `iters` calls of `per_message` (which offers one frame), draining the queues
    /// untimed before they fill up.
    fn bench(&mut self, iters: u64, mut per_message: impl FnMut(&Self)) -> Duration {
        const BURST: u64 = 1024;
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(BURST);
            let t = Instant::now();
            for _ in 0..n {
                per_message(self);
            }
            timed += t.elapsed();
            left -= n;
            self.drain();
        }
        timed
    }
}

fn fanout_encode(c: &mut Criterion) {
    // A typing update as it arrived (a slice of the transport's read buffer) and what the
    // document emitted for it: the server copies the frame once and shares it.
    let (typing, _) = typing_log(&[], 0, 1, 20);
    let incoming = encode_sync_update(&typing[10]);
    let emitted = typing[10].clone();

    let mut group = c.benchmark_group("fanout_encode");
    for n in [1usize, 50, 1000] {
        let mut fanout = Fanout::new(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("sync_update_to/{n}"), |b| {
            b.iter_custom(|iters| {
                fanout.bench(iters, |f| {
                    let frame = broadcast_frame(&incoming, &emitted);
                    assert_eq!(f.offer_all(&frame), 0);
                })
            })
        });
    }

    // Presence: 200 clients, one of them moves its cursor.
    const CLIENTS: u64 = 200;
    let ids: Vec<u64> = (0..CLIENTS).map(client_id).collect();
    let mover = ids[17];
    let moves: Vec<AwarenessUpdateV1> = (2..20_002)
        .map(|clock| {
            AwarenessUpdateV1::parse(Bytes::from(awareness_update([mover], clock))).unwrap()
        })
        .collect();
    let present = || {
        let mut room = RoomDoc::new();
        let all = AwarenessUpdateV1::parse(Bytes::from(awareness_update(ids.iter().copied(), 1)))
            .unwrap();
        room.apply_awareness(&all).unwrap();
        assert_eq!(room.awareness_len(), CLIENTS as usize);
        room
    };
    let broadcast = {
        let mut room = present();
        room.apply_awareness(&moves[0]).unwrap().broadcast.unwrap()
    };
    eprintln!(
        "fanout_encode: typing frame {} B; awareness broadcast for one cursor {} B",
        incoming.len(),
        broadcast.len() + 2
    );
    let mut fanout = Fanout::new(CLIENTS as usize);
    group.throughput(Throughput::Elements(CLIENTS));
    group.bench_function("awareness_to/200", |b| {
        b.iter_custom(|iters| {
            fanout.bench(iters, |f| {
                let frame = encode_awareness(&broadcast);
                assert_eq!(f.offer_all(&frame), 0);
            })
        })
    });
    // The whole awareness path of the room task: apply the move into a room where 200
    // clients are present, encode what changed, offer it to all.
    let mut room = present();
    let mut next = 0;
    group.bench_function("awareness_apply_to/200", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if next == moves.len() {
                    room = present();
                    next = 0;
                }
                let n = left.min(moves.len() - next);
                timed += fanout.bench(n as u64, |f| {
                    let change = room.apply_awareness(&moves[next]).unwrap();
                    next += 1;
                    let frame = encode_awareness(&change.broadcast.unwrap());
                    assert_eq!(f.offer_all(&frame), 0);
                });
                left -= n;
            }
            timed
        })
    });
    group.finish();
}

fn entry(update: &[u8]) -> AppendEntry {
    AppendEntry {
        update: update.to_vec(),
        author: "anonymous".to_owned(),
        origin: "127.0.0.1:50412".to_owned(),
        time_ms: 1_790_000_000_000,
    }
}

fn compaction(c: &mut Criterion) {
    const UPDATES: usize = 10_000;
    let (log, _) = typing_log(&[], 0, 4, UPDATES);
    let entries: Vec<AppendEntry> = log.iter().map(|u| entry(u)).collect();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut room_no = 0;
    // Untimed: a room whose log holds the 10,000 updates, written and flushed as the server's
    // group commits would have. Returns the room and the last seq.
    let mut fill = || {
        room_no += 1;
        let room = format!("room-{room_no}");
        for chunk in entries.chunks(1000) {
            store.append(&room, chunk).unwrap();
        }
        store.flush().unwrap();
        (room, UPDATES as u64)
    };
    let doc = {
        let mut doc = RoomDoc::new();
        for u in parse_all(&log) {
            let _ = doc.apply_update(&u, 1);
        }
        doc
    };
    let state = doc.encode_state();
    eprintln!(
        "compaction: log {} updates, {} B -> state {} B",
        log.len(),
        log.iter().map(Vec::len).sum::<usize>(),
        state.len()
    );

    // One run outside criterion, step by step: which half of compact + flush costs what.
    {
        let (room, upto) = fill();
        let t = Instant::now();
        store.compact(&room, &state, upto).unwrap();
        let compact = t.elapsed();
        let t = Instant::now();
        store.flush().unwrap();
        eprintln!(
            "compaction: one run: compact {compact:.1?}, then flush {:.1?}",
            t.elapsed()
        );
    }

    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(UPDATES as u64));
    group.bench_function("apply_encode_compact_flush_10k", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let (room, upto) = fill();
                let t = Instant::now();
                let mut doc = RoomDoc::new();
                for u in &log {
                    let update = UpdateV1::parse(Bytes::copy_from_slice(u), &LOAD_LIMITS).unwrap();
                    let _ = doc.apply_update(&update, 1);
                }
                let state = doc.encode_state();
                store.compact(&room, &state, upto).unwrap();
                store.flush().unwrap();
                timed += t.elapsed();
            }
            timed
        })
    });
    group.bench_function("encode_state_10k", |b| b.iter(|| doc.encode_state()));
    group.bench_function("compact_flush_10k", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let (room, upto) = fill();
                let t = Instant::now();
                store.compact(&room, &state, upto).unwrap();
                store.flush().unwrap();
                timed += t.elapsed();
            }
            timed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = frame_decode, update_apply, fanout_encode, compaction
}
criterion_main!(benches);
