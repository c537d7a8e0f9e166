//! Model test of every store (convention 13; PostgreSQL with the `postgres` feature, on a
//! private server started by the test): random sequences of appends (real Yjs updates
//! made with yrs by a few writer documents per room), compactions, versions, deletions and
//! reboots, checked after every step against an in-memory model.
//!
//! After each step, for every room: `load` applied to a fresh yrs document equals the model
//! document (text and map), snapshot and tail are exactly what the model expects, `next_seq`
//! is above every seq ever handed out for the room, and audit records, versions and
//! `list_rooms` equal the model's.

use std::collections::BTreeMap;

use proptest::prelude::*;
use yrelay_store::{
    AppendEntry, AuditRecord, LoadedRoom, MemoryStore, RoomInfo, Seq, SledStore, Store,
    VersionInfo, VersionKind,
};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Doc, GetString, Map, MapRef, ReadTxn, StateVector, Text, TextRef, Transact, Update,
};

/// Names that are prefixes of each other, plus NUL, `/` and non-ASCII.
const ROOMS: [&str; 4] = ["a", "ab", "a/b", "é\0/"];
const WRITERS: usize = 3;

/// One change inside a writer's transaction. Positions are reduced modulo the text length.
#[derive(Debug, Clone)]
enum Edit {
    Insert { pos: u32, text: String },
    Delete { pos: u32, len: u32 },
    MapSet { key: u8, value: String },
    MapRemove { key: u8 },
}

#[derive(Debug, Clone)]
enum Op {
    /// One `append` call of several updates, each one transaction of `writer`.
    Append {
        room: usize,
        writer: usize,
        catch_up: bool,
        updates: Vec<Vec<Edit>>,
    },
    /// Compact up to `back` seqs before the last one (never below the snapshot).
    Compact {
        room: usize,
        back: u64,
    },
    SaveVersion {
        room: usize,
        named: bool,
    },
    Delete {
        room: usize,
    },
    /// Flush, drop the store and reopen it.
    Reboot,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<u32>(), "[a-z]{1,4}").prop_map(|(pos, text)| Edit::Insert { pos, text }),
        2 => (any::<u32>(), 1..4u32).prop_map(|(pos, len)| Edit::Delete { pos, len }),
        1 => (0..3u8, "[A-Z]{0,3}").prop_map(|(key, value)| Edit::MapSet { key, value }),
        1 => (0..3u8).prop_map(|key| Edit::MapRemove { key }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let room = 0..ROOMS.len();
    prop_oneof![
        8 => (room.clone(), 0..WRITERS, any::<bool>(), prop::collection::vec(prop::collection::vec(edit(), 1..4), 1..4))
            .prop_map(|(room, writer, catch_up, updates)| Op::Append { room, writer, catch_up, updates }),
        2 => (room.clone(), prop_oneof![3 => Just(0u64), 1 => 1..4u64]).prop_map(|(room, back)| Op::Compact { room, back }),
        1 => (room.clone(), any::<bool>()).prop_map(|(room, named)| Op::SaveVersion { room, named }),
        1 => room.prop_map(|room| Op::Delete { room }),
        1 => Just(Op::Reboot),
    ]
}

/// A document with the two root types the test edits.
struct YDoc {
    doc: Doc,
    text: TextRef,
    map: MapRef,
}

impl YDoc {
    fn new(client_id: u64) -> Self {
        let doc = Doc::with_client_id(client_id);
        // Root refs first: taking them while a transaction is open deadlocks.
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        Self { doc, text, map }
    }

    fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("a valid update");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("applies");
    }

    /// The whole state, as compaction and versions store it.
    fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn content(&self) -> (String, Any) {
        let txn = self.doc.transact();
        (self.text.get_string(&txn), self.map.to_json(&txn))
    }

    /// Runs `edits` in one transaction and returns its update.
    fn edit(&self, edits: &[Edit]) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        for e in edits {
            let len = self.text.len(&txn);
            match e {
                Edit::Insert { pos, text } => self.text.insert(&mut txn, pos % (len + 1), text),
                Edit::Delete { pos, len: n } if len > 0 => {
                    let at = pos % len;
                    self.text.remove_range(&mut txn, at, (*n).min(len - at));
                }
                Edit::Delete { .. } => {}
                Edit::MapSet { key, value } => {
                    self.map.insert(&mut txn, format!("k{key}"), value.clone());
                }
                Edit::MapRemove { key } => {
                    self.map.remove(&mut txn, &format!("k{key}"));
                }
            }
        }
        txn.encode_update_v1()
    }
}

/// What the store should hold for one room.
struct ModelRoom {
    /// Everything appended since the room was (re)created.
    doc: YDoc,
    writers: Vec<YDoc>,
    /// Bumped on deletion, so writers of a new incarnation get fresh client ids.
    generation: u64,
    live: bool,
    next_seq: Seq,
    /// Highest seq ever returned for this room (deletions included).
    max_returned: Seq,
    snapshot: Option<Vec<u8>>,
    snapshot_seq: Seq,
    tail: Vec<(Seq, Vec<u8>)>,
    audit: Vec<AuditRecord>,
    versions: Vec<(VersionInfo, Vec<u8>)>,
    next_version_id: u64,
    last_change_ms: u64,
}

impl ModelRoom {
    fn new(room: usize) -> Self {
        let mut model = Self {
            doc: YDoc::new(1),
            writers: Vec::new(),
            generation: 0,
            live: false,
            next_seq: 1,
            max_returned: 0,
            snapshot: None,
            snapshot_seq: 0,
            tail: Vec::new(),
            audit: Vec::new(),
            versions: Vec::new(),
            next_version_id: 1,
            last_change_ms: 0,
        };
        model.reset_docs(room);
        model
    }

    fn reset_docs(&mut self, room: usize) {
        let base = 1000 * (room as u64 + 1) + 10 * self.generation;
        self.doc = YDoc::new(base + 9);
        self.writers = (0..WRITERS as u64).map(|w| YDoc::new(base + w)).collect();
    }

    fn info(&self, name: &str) -> RoomInfo {
        let tail_bytes: u64 = self.tail.iter().map(|(_, u)| u.len() as u64).sum();
        RoomInfo {
            name: name.to_owned(),
            log_entries: self.tail.len() as u64,
            stored_bytes: self.snapshot.as_ref().map_or(0, |s| s.len() as u64) + tail_bytes,
            last_change_ms: self.last_change_ms,
        }
    }
}

/// A store plus how to reboot it.
trait Harness {
    fn store(&self) -> &dyn Store;
    fn reboot(&mut self);
}

impl Harness for MemoryStore {
    fn store(&self) -> &dyn Store {
        self
    }
    fn reboot(&mut self) {}
}

struct SledHarness {
    dir: tempfile::TempDir,
    store: Option<SledStore>,
}

impl SledHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Some(SledStore::open(dir.path()).expect("opens"));
        Self { dir, store }
    }
}

impl Harness for SledHarness {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().expect("open")
    }
    fn reboot(&mut self) {
        if let Some(store) = self.store.take() {
            store.flush().expect("flushes");
        }
        self.store = Some(SledStore::open(self.dir.path()).expect("reopens"));
    }
}

/// PostgreSQL: one private server per test binary, a fresh database per case; a reboot drops
/// the store (its connections) and opens it again on the same database, and every
/// [`pg::RESTART_EVERY`]th reboot also restarts the server (alternately a fast shutdown and
/// a crash-like immediate one). A harness holds the server for its whole case, so the
/// PostgreSQL cases of this binary run one at a time and a restart disturbs no other test.
#[cfg(feature = "postgres")]
mod pg {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, MutexGuard, OnceLock};

    use yrelay_store::{PgStore, Store};
    use yrelay_testkit::PrivatePostgres;

    use super::Harness;

    /// Reboots between two server restarts (a restart costs ~0.3 s).
    pub const RESTART_EVERY: usize = 8;

    /// `None` after a SKIPPED line (no PostgreSQL binaries here).
    pub fn server() -> Option<&'static Mutex<PrivatePostgres>> {
        static SERVER: OnceLock<Option<Mutex<PrivatePostgres>>> = OnceLock::new();
        SERVER
            .get_or_init(|| PrivatePostgres::start("model_pg").map(Mutex::new))
            .as_ref()
    }

    /// Reboots so far in this binary; restarts so far.
    pub static REBOOTS: AtomicUsize = AtomicUsize::new(0);
    pub static RESTARTS: AtomicUsize = AtomicUsize::new(0);

    pub struct PgHarness {
        server: MutexGuard<'static, PrivatePostgres>,
        url: String,
        store: Option<PgStore>,
    }

    impl PgHarness {
        pub fn new() -> Option<Self> {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let server = server()?.lock().unwrap_or_else(|p| p.into_inner());
            let url =
                server.create_database(&format!("model_{}", NEXT.fetch_add(1, Ordering::Relaxed)));
            let store = Some(PgStore::open(&url).expect("opens"));
            Some(Self { server, url, store })
        }
    }

    impl Harness for PgHarness {
        fn store(&self) -> &dyn Store {
            self.store.as_ref().expect("open")
        }
        fn reboot(&mut self) {
            self.store = None;
            let n = REBOOTS.fetch_add(1, Ordering::Relaxed) + 1;
            if n % RESTART_EVERY == 0 {
                if n % (2 * RESTART_EVERY) == 0 {
                    self.server.kill();
                } else {
                    self.server.stop();
                }
                self.server.start_again();
                RESTARTS.fetch_add(1, Ordering::Relaxed);
            }
            self.store = Some(PgStore::open(&self.url).expect("reopens"));
        }
    }
}

fn run(harness: &mut dyn Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model: Vec<ModelRoom> = (0..ROOMS.len()).map(ModelRoom::new).collect();
    for (step, op) in ops.iter().enumerate() {
        let now = step as u64 + 1;
        match op {
            Op::Append {
                room,
                writer,
                catch_up,
                updates,
            } => {
                let m = &mut model[*room];
                let w = &m.writers[*writer];
                if *catch_up {
                    let sv = w.doc.transact().state_vector();
                    w.apply(&m.doc.doc.transact().encode_state_as_update_v1(&sv));
                }
                let entries: Vec<AppendEntry> = updates
                    .iter()
                    .enumerate()
                    .map(|(i, edits)| AppendEntry {
                        update: w.edit(edits),
                        author: format!("writer-{writer}"),
                        origin: if i % 2 == 0 {
                            "ws".into()
                        } else {
                            "rest".into()
                        },
                        time_ms: now * 10 + i as u64,
                    })
                    .collect();
                let seqs = harness
                    .store()
                    .append(ROOMS[*room], &entries)
                    .expect("appends");
                let expected: Vec<Seq> = (m.next_seq..).take(entries.len()).collect();
                prop_assert_eq!(&seqs, &expected);
                for (seq, e) in seqs.iter().zip(&entries) {
                    m.doc.apply(&e.update);
                    m.tail.push((*seq, e.update.clone()));
                    m.audit.push(AuditRecord {
                        seq: *seq,
                        author: e.author.clone(),
                        origin: e.origin.clone(),
                        time_ms: e.time_ms,
                        bytes: e.update.len() as u64,
                    });
                    m.last_change_ms = m.last_change_ms.max(e.time_ms);
                }
                m.next_seq += entries.len() as u64;
                m.max_returned = m.max_returned.max(m.next_seq - 1);
                m.live = true;
            }
            Op::Compact { room, back } => {
                let m = &mut model[*room];
                let upto = (m.next_seq - 1).saturating_sub(*back).max(m.snapshot_seq);
                // The model document holds everything appended, a superset of `..=upto`.
                let state = m.doc.state();
                harness
                    .store()
                    .compact(ROOMS[*room], &state, upto)
                    .expect("compacts");
                m.tail.retain(|(seq, _)| *seq > upto);
                m.snapshot = Some(state);
                m.snapshot_seq = upto;
                m.live = true;
            }
            Op::SaveVersion { room, named } => {
                let m = &mut model[*room];
                let (kind, label) = if *named {
                    (VersionKind::Named, Some(format!("step {step}")))
                } else {
                    (VersionKind::Auto, None)
                };
                let state = m.doc.state();
                let seq = m.next_seq - 1;
                let info = harness
                    .store()
                    .save_version(ROOMS[*room], kind, label.as_deref(), &state, seq, now)
                    .expect("saves");
                let expected = VersionInfo {
                    id: m.next_version_id,
                    kind,
                    label,
                    created_ms: now,
                    seq,
                    bytes: state.len() as u64,
                };
                prop_assert_eq!(&info, &expected);
                m.versions.push((expected, state));
                m.next_version_id += 1;
                m.live = true;
            }
            Op::Delete { room } => {
                harness.store().delete_room(ROOMS[*room]).expect("deletes");
                let m = &mut model[*room];
                m.generation += 1;
                m.reset_docs(*room);
                m.live = false;
                m.snapshot = None;
                m.snapshot_seq = 0;
                m.tail.clear();
                m.audit.clear();
                m.versions.clear();
                m.last_change_ms = 0;
            }
            Op::Reboot => harness.reboot(),
        }
        check(harness.store(), &model)
            .map_err(|e| TestCaseError::fail(format!("after step {step} ({op:?}): {e}")))?;
    }
    Ok(())
}

/// Compares the store with the model, room by room.
fn check(store: &dyn Store, model: &[ModelRoom]) -> Result<(), TestCaseError> {
    let mut listed = Vec::new();
    for (name, m) in ROOMS.iter().zip(model) {
        let loaded = store.load(name).expect("loads");
        prop_assert!(
            loaded.next_seq > m.max_returned,
            "{name:?}: next_seq went back"
        );
        let expected = LoadedRoom {
            snapshot: m.snapshot.clone(),
            snapshot_seq: m.snapshot_seq,
            tail: m.tail.clone(),
            next_seq: m.next_seq,
        };
        prop_assert_eq!(&loaded, &expected, "room {:?}", name);

        // What a server does on load: snapshot, then the tail, into a fresh document.
        let fresh = YDoc::new(7);
        if let Some(snapshot) = &loaded.snapshot {
            fresh.apply(snapshot);
        }
        for (_, update) in &loaded.tail {
            fresh.apply(update);
        }
        prop_assert_eq!(
            fresh.content(),
            m.doc.content(),
            "room {:?}: document",
            name
        );

        prop_assert_eq!(
            &store.audit(name, None, usize::MAX).expect("audit"),
            &m.audit
        );
        if let Some(mid) = m.audit.get(m.audit.len() / 2) {
            let page = store.audit(name, Some(mid.seq), 2).expect("audit");
            let want: Vec<_> = m
                .audit
                .iter()
                .filter(|r| r.seq > mid.seq)
                .take(2)
                .cloned()
                .collect();
            prop_assert_eq!(page, want);
        }

        let versions: Vec<_> = m
            .versions
            .iter()
            .rev()
            .map(|(info, _)| info.clone())
            .collect();
        prop_assert_eq!(&store.list_versions(name).expect("lists"), &versions);
        for (info, state) in &m.versions {
            let got = store.get_version(name, info.id).expect("reads");
            prop_assert_eq!(got, Some((info.clone(), state.clone())));
        }
        prop_assert_eq!(
            store.get_version(name, m.next_version_id).expect("reads"),
            None
        );

        if m.live {
            listed.push(m.info(name));
        }
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    prop_assert_eq!(store.list_rooms().expect("lists"), listed);
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sled_store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&mut SledHarness::new(), &ops)?;
    }

    #[test]
    fn memory_store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(&mut MemoryStore::default(), &ops)?;
    }
}

#[cfg(feature = "postgres")]
proptest! {
    // A database per case: fewer cases than the embedded stores, same operations.
    #![proptest_config(ProptestConfig { cases: config().cases.min(24), ..config() })]

    #[test]
    fn pg_store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let Some(mut harness) = pg::PgHarness::new() else {
            return Ok(());
        };
        run(&mut harness, &ops)?;
    }
}

/// A fixed long run: many compactions and reboots in one directory, so the log, the
/// tombstones and the counters of several incarnations pile up.
#[test]
fn long_fixed_run_with_reboots() {
    let mut ops = Vec::new();
    for i in 0..120usize {
        let room = i % ROOMS.len();
        ops.push(Op::Append {
            room,
            writer: i % WRITERS,
            catch_up: i % 3 == 0,
            updates: vec![
                vec![Edit::Insert {
                    pos: i as u32 * 7,
                    text: "xy".into(),
                }],
                vec![
                    Edit::Delete {
                        pos: i as u32,
                        len: 1,
                    },
                    Edit::MapSet {
                        key: (i % 3) as u8,
                        value: "V".into(),
                    },
                ],
            ],
        });
        match i % 10 {
            3 => ops.push(Op::Compact {
                room,
                back: (i % 4) as u64,
            }),
            5 => ops.push(Op::SaveVersion {
                room,
                named: i % 20 == 5,
            }),
            7 => ops.push(Op::Reboot),
            9 if i % 30 == 9 => ops.push(Op::Delete { room }),
            _ => {}
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &ops {
        let kind = match op {
            Op::Append { .. } => "append",
            Op::Compact { .. } => "compact",
            Op::SaveVersion { .. } => "version",
            Op::Delete { .. } => "delete",
            Op::Reboot => "reboot",
        };
        *counts.entry(kind).or_default() += 1;
    }
    assert!(counts.len() == 5, "every kind of step occurs: {counts:?}");
    run(&mut SledHarness::new(), &ops).expect("matches the model");
    #[cfg(feature = "postgres")]
    if let Some(mut harness) = pg::PgHarness::new() {
        run(&mut harness, &ops).expect("PostgreSQL matches the model");
        // More consecutive reboots than RESTART_EVERY: the server was restarted meanwhile.
        assert!(counts["reboot"] >= pg::RESTART_EVERY);
        assert!(pg::RESTARTS.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
}
