//! The validator against real `yrs` output and against hostile bytes.
//!
//! Positive side: everything a real `yrs` document emits (incremental updates, full-state
//! encodings, diffs, state vectors) must validate. Hostile side: nothing may panic, and every
//! input the validator accepts must decode in `yrs` and apply to a document without panicking.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mutation;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use mutation::{arb_mutation, mutate};
use proptest::prelude::*;
use yrelay_doc::validate::{
    validate_state_vector_v1, validate_update_runs_v1, validate_update_v1, ClientRun, InvalidInput,
    ValidateLimits,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, ClientID, Doc, GetString, Map, MapPrelim, Number, OffsetKind, Options,
    ReadTxn, StateVector, Text, TextPrelim, Transact, Update, Xml, XmlElementPrelim, XmlFragment,
    XmlTextPrelim,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn new_doc(client: u64) -> Doc {
    let mut options = Options::with_client_id(ClientID::new(client));
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}

/// A document as the relay should hold it: UTF-16 offsets, like every JS peer.
///
/// With yrs's default `OffsetKind::Bytes`, an update that deletes (or inserts) between the two
/// halves of a surrogate pair makes yrs split the string into two U+FFFD (3 UTF-8 bytes each
/// instead of 4 for the pair) and the parent's byte length underflows in
/// `TransactionMut::delete` — a panic in debug builds. JS clients can send exactly that.
fn room_doc() -> Doc {
    new_doc(999)
}

/// Records every update a document emits.
fn record(doc: &Doc) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    doc.observe_update_v1("record", move |_, e| {
        sink.lock().unwrap().push(e.update.clone())
    })
    .unwrap();
    log
}

fn full_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn state_vector(doc: &Doc) -> Vec<u8> {
    doc.transact().state_vector().encode_v1()
}

/// Applies `bytes` to `doc`, which must succeed.
fn apply(doc: &Doc, bytes: &[u8]) {
    let update = Update::decode_v1(bytes).unwrap();
    doc.transact_mut().apply_update(update).unwrap();
}

/// Real output: must validate, decode and apply to a fresh document.
fn assert_valid(what: &str, bytes: &[u8]) {
    if let Err(e) = validate_update_v1(bytes, &ValidateLimits::default()) {
        panic!("{what}: {e} for {bytes:?}");
    }
    apply(&room_doc(), bytes);
}

fn assert_valid_sv(doc: &Doc) {
    let sv = state_vector(doc);
    if let Err(e) = validate_state_vector_v1(&sv) {
        panic!("state vector: {e} for {sv:?}");
    }
}

/// Runs the validator on `bytes`; if it accepts, `yrs` must decode them and applying them to a
/// fresh document and to each of `bases` (full-state encodings) must not panic.
fn accepted_bytes_are_safe(bytes: &[u8], bases: &[Vec<u8>]) -> Result<(), InvalidInput> {
    validate_update_v1(bytes, &ValidateLimits::default())?;
    let update = match Update::decode_v1(bytes) {
        Ok(update) => update,
        Err(e) => panic!("validated but yrs refused to decode: {e} for {bytes:?}"),
    };
    drop(update);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let fresh = room_doc();
        let _ = fresh
            .transact_mut()
            .apply_update(Update::decode_v1(bytes).unwrap());
        let _ = full_state(&fresh);
        for base in bases {
            let doc = room_doc();
            apply(&doc, base);
            let _ = doc
                .transact_mut()
                .apply_update(Update::decode_v1(bytes).unwrap());
            let _ = full_state(&doc);
        }
    }));
    assert!(outcome.is_ok(), "validated input made yrs panic: {bytes:?}");
    Ok(())
}

fn rich_any() -> Any {
    let mut inner = HashMap::new();
    inner.insert("null".to_owned(), Any::Null);
    inner.insert("undefined".to_owned(), Any::Undefined);
    inner.insert("t".to_owned(), Any::Bool(true));
    inner.insert("f".to_owned(), Any::Bool(false));
    inner.insert("small".to_owned(), Any::Number(Number::Int(-42)));
    inner.insert(
        "i32".to_owned(),
        Any::Number(Number::Int(i64::from(i32::MAX))),
    );
    inner.insert("f32".to_owned(), Any::Number(Number::Int(1 << 40)));
    inner.insert("f64".to_owned(), Any::Number(Number::Int((1 << 53) - 1)));
    inner.insert("bigint".to_owned(), Any::Number(Number::Int(i64::MAX)));
    inner.insert("bigneg".to_owned(), Any::Number(Number::Int(i64::MIN)));
    inner.insert("half".to_owned(), Any::Number(Number::Float(0.5)));
    inner.insert("tenth".to_owned(), Any::Number(Number::Float(0.1)));
    inner.insert("nan".to_owned(), Any::Number(Number::Float(f64::NAN)));
    inner.insert("s".to_owned(), Any::from("ünïcode 👋"));
    inner.insert("bin".to_owned(), Any::from(vec![0u8, 1, 2, 255]));
    inner.insert("empty".to_owned(), Any::from(Vec::<u8>::new()));
    let array = Any::Array(Arc::from(vec![
        Any::Null,
        Any::from("x"),
        Any::Array(Arc::from(vec![Any::Array(Arc::from(Vec::<Any>::new()))])),
        Any::Map(Arc::new(inner.clone())),
    ]));
    inner.insert("array".to_owned(), array);
    Any::Map(Arc::new(inner))
}

/// Builds a set of documents that exercise every content kind `yrs` writes; returns every
/// update they emitted plus their full-state encodings.
fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();

    // Text: UTF-16 lengths, deletes, formatting, embeds.
    let doc = new_doc(1);
    let log = record(&doc);
    let text = doc.get_or_insert_text("text");
    text.insert(&mut doc.transact_mut(), 0, "héllo 👋 wörld 🇺🇸!");
    text.remove_range(&mut doc.transact_mut(), 2, 5);
    text.insert(&mut doc.transact_mut(), 3, "😀x");
    let bold: HashMap<Arc<str>, Any> = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
    text.format(&mut doc.transact_mut(), 1, 4, bold);
    let link: HashMap<Arc<str>, Any> =
        HashMap::from([(Arc::from("link"), Any::from("https://example.invalid"))]);
    text.insert_with_attributes(&mut doc.transact_mut(), 0, "linked", link);
    text.insert_embed(&mut doc.transact_mut(), 2, rich_any());
    out.extend(log.lock().unwrap().drain(..));
    out.push(full_state(&doc));

    // Map: nested Any values, nested shared types, overwrites and removals (GC'd children).
    let doc = new_doc(2);
    let log = record(&doc);
    let map = doc.get_or_insert_map("map");
    {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "any", rich_any());
        map.insert(&mut txn, "n", 1.5f64);
        map.insert(&mut txn, "neg", -7i64);
        map.insert(&mut txn, "big", Any::Number(Number::Int(i64::MIN + 1)));
        map.insert(&mut txn, "bin", Any::from(vec![9u8; 300]));
        map.insert(&mut txn, "nil", Any::Null);
    }
    let nested = map.insert(
        &mut doc.transact_mut(),
        "nested",
        MapPrelim::from([("a", Any::from("b"))]),
    );
    nested.insert(
        &mut doc.transact_mut(),
        "deeper",
        ArrayPrelim::from([1i64, 2, 3]),
    );
    map.insert(&mut doc.transact_mut(), "text", TextPrelim::new("typed"));
    map.insert(&mut doc.transact_mut(), "n", "overwritten");
    map.remove(&mut doc.transact_mut(), "nested");
    out.extend(log.lock().unwrap().drain(..));
    out.push(full_state(&doc));

    // Array: ranges, nested types, deletes across items.
    let doc = new_doc(3);
    let log = record(&doc);
    let array = doc.get_or_insert_array("array");
    array.insert_range(&mut doc.transact_mut(), 0, [1i64, 2, 3, 4, 5]);
    array.insert(&mut doc.transact_mut(), 2, rich_any());
    let inner = array.insert(&mut doc.transact_mut(), 0, ArrayPrelim::from(["x", "y"]));
    inner.push_back(&mut doc.transact_mut(), MapPrelim::from([("k", 1i64)]));
    array.remove_range(&mut doc.transact_mut(), 1, 4);
    array.remove_range(&mut doc.transact_mut(), 0, 1);
    out.extend(log.lock().unwrap().drain(..));
    out.push(full_state(&doc));

    // XML: fragment, elements with attributes, text with formatting.
    let doc = new_doc(4);
    let log = record(&doc);
    let fragment = doc.get_or_insert_xml_fragment("xml");
    let div = fragment.push_back(&mut doc.transact_mut(), XmlElementPrelim::empty("div"));
    div.insert_attribute(&mut doc.transact_mut(), "class", "note");
    let p = div.push_back(&mut doc.transact_mut(), XmlElementPrelim::empty("p"));
    let xt = p.push_back(&mut doc.transact_mut(), XmlTextPrelim::new("hello xml"));
    let italic: HashMap<Arc<str>, Any> = HashMap::from([(Arc::from("em"), Any::Bool(true))]);
    xt.format(&mut doc.transact_mut(), 0, 5, italic);
    xt.insert_attribute(&mut doc.transact_mut(), "lang", "en");
    fragment.push_back(&mut doc.transact_mut(), XmlTextPrelim::new("tail"));
    div.remove_attribute(&mut doc.transact_mut(), &"class");
    out.extend(log.lock().unwrap().drain(..));
    out.push(full_state(&doc));

    // Subdocuments.
    let doc = new_doc(5);
    let log = record(&doc);
    let subdocs = doc.get_or_insert_map("subdocs");
    let mut options = Options::with_client_id(ClientID::new(50));
    options.guid = "sub-guid".into();
    options.auto_load = true;
    subdocs.insert(&mut doc.transact_mut(), "a", Doc::with_options(options));
    subdocs.insert(&mut doc.transact_mut(), "b", Doc::new());
    out.extend(log.lock().unwrap().drain(..));
    out.push(full_state(&doc));

    // Three clients, concurrent edits, synced both ways.
    let docs = [new_doc(10), new_doc(11), new_doc((1 << 53) - 1)];
    let logs: Vec<_> = docs.iter().map(record).collect();
    for (i, doc) in docs.iter().enumerate() {
        let text = doc.get_or_insert_text("shared");
        text.insert(&mut doc.transact_mut(), 0, &format!("client {i} 🎉 "));
        let map = doc.get_or_insert_map("m");
        map.insert(&mut doc.transact_mut(), "who", i as i64);
    }
    for a in &docs {
        for b in &docs {
            let diff = a.transact().encode_diff_v1(&b.transact().state_vector());
            out.push(diff.clone());
            apply(b, &diff);
        }
    }
    let text = docs[0].get_or_insert_text("shared");
    text.remove_range(&mut docs[0].transact_mut(), 3, 10);
    for log in logs {
        out.extend(log.lock().unwrap().drain(..));
    }
    for doc in &docs {
        out.push(full_state(doc));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// positive

#[test]
fn real_documents_validate() {
    let corpus = corpus();
    assert!(corpus.len() > 30);
    for (i, update) in corpus.iter().enumerate() {
        assert_valid(&format!("corpus[{i}]"), update);
    }
}

#[test]
fn three_clients_state_round_trips() {
    let docs = [new_doc(1), new_doc(2), new_doc(3)];
    for (i, doc) in docs.iter().enumerate() {
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, &"é👋".repeat(i + 1));
    }
    let merged = new_doc(4);
    for doc in &docs {
        let state = full_state(doc);
        assert_valid("client state", &state);
        apply(&merged, &state);
    }
    let text = merged.get_or_insert_text("t");
    text.remove_range(&mut merged.transact_mut(), 1, 3);
    let state = full_state(&merged);
    assert_valid("merged state", &state);
    assert_valid_sv(&merged);
    let copy = new_doc(5);
    apply(&copy, &state);
    assert_eq!(
        copy.get_or_insert_text("t").get_string(&copy.transact()),
        text.get_string(&merged.transact())
    );
}

#[derive(Debug, Clone)]
enum Op {
    TextInsert {
        doc: usize,
        at: u32,
        s: String,
    },
    TextDelete {
        doc: usize,
        at: u32,
        len: u32,
    },
    MapSet {
        doc: usize,
        key: u8,
        value: Any,
    },
    MapRemove {
        doc: usize,
        key: u8,
    },
    ArrayInsert {
        doc: usize,
        at: u32,
        values: Vec<Any>,
    },
    ArrayDelete {
        doc: usize,
        at: u32,
        len: u32,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn arb_leaf_any() -> impl Strategy<Value = Any> {
    prop_oneof![
        Just(Any::Null),
        Just(Any::Undefined),
        any::<bool>().prop_map(Any::Bool),
        any::<i64>().prop_map(|n| Any::Number(Number::Int(n))),
        any::<f64>().prop_map(|f| Any::Number(Number::Float(f))),
        "\\PC{0,8}".prop_map(|s| Any::from(s.as_str())),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Any::from),
    ]
}

fn arb_any() -> impl Strategy<Value = Any> {
    arb_leaf_any().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| Any::Array(Arc::from(v))),
            prop::collection::hash_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| Any::Map(Arc::new(m))),
        ]
    })
}

fn arb_op(docs: usize) -> impl Strategy<Value = Op> {
    let d = 0..docs;
    prop_oneof![
        (d.clone(), any::<u32>(), "[a-zé👋🇺🇸 ]{1,6}").prop_map(|(doc, at, s)| Op::TextInsert {
            doc,
            at,
            s
        }),
        (d.clone(), any::<u32>(), 1..4u32).prop_map(|(doc, at, len)| Op::TextDelete {
            doc,
            at,
            len
        }),
        (d.clone(), 0..4u8, arb_any()).prop_map(|(doc, key, value)| Op::MapSet { doc, key, value }),
        (d.clone(), 0..4u8).prop_map(|(doc, key)| Op::MapRemove { doc, key }),
        (
            d.clone(),
            any::<u32>(),
            prop::collection::vec(arb_any(), 1..3)
        )
            .prop_map(|(doc, at, values)| Op::ArrayInsert { doc, at, values }),
        (d.clone(), any::<u32>(), 1..3u32).prop_map(|(doc, at, len)| Op::ArrayDelete {
            doc,
            at,
            len
        }),
        (d.clone(), d).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

fn arb_session() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (1..=3usize).prop_flat_map(|docs| (Just(docs), prop::collection::vec(arb_op(docs), 1..24)))
}

/// Clamps a random position into `0..=len` (UTF-16 units: it may fall inside a surrogate pair,
/// as a JS client's can).
fn clamp(at: u32, len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        at % (len + 1)
    }
}

fn run_session(docs_n: usize, ops: &[Op]) {
    let docs: Vec<Doc> = (0..docs_n).map(|i| new_doc(100 + i as u64)).collect();
    let logs: Vec<_> = docs.iter().map(record).collect();
    for op in ops {
        match op {
            Op::TextInsert { doc, at, s } => {
                let d = &docs[*doc];
                let text = d.get_or_insert_text("t");
                let mut txn = d.transact_mut();
                let at = clamp(*at, text.len(&txn));
                text.insert(&mut txn, at, s);
            }
            Op::TextDelete { doc, at, len } => {
                let d = &docs[*doc];
                let text = d.get_or_insert_text("t");
                let mut txn = d.transact_mut();
                let total = text.len(&txn);
                if total > 0 {
                    let at = clamp(*at, total - 1);
                    text.remove_range(&mut txn, at, (*len).min(total - at));
                }
            }
            Op::MapSet { doc, key, value } => {
                let d = &docs[*doc];
                let map = d.get_or_insert_map("m");
                map.insert(&mut d.transact_mut(), format!("k{key}"), value.clone());
            }
            Op::MapRemove { doc, key } => {
                let d = &docs[*doc];
                let map = d.get_or_insert_map("m");
                map.remove(&mut d.transact_mut(), &format!("k{key}"));
            }
            Op::ArrayInsert { doc, at, values } => {
                let d = &docs[*doc];
                let array = d.get_or_insert_array("a");
                let mut txn = d.transact_mut();
                let at = clamp(*at, array.len(&txn));
                array.insert_range(&mut txn, at, values.clone());
            }
            Op::ArrayDelete { doc, at, len } => {
                let d = &docs[*doc];
                let array = d.get_or_insert_array("a");
                let mut txn = d.transact_mut();
                let total = array.len(&txn);
                if total > 0 {
                    let at = clamp(*at, total - 1);
                    array.remove_range(&mut txn, at, (*len).min(total - at));
                }
            }
            Op::Sync { from, to } => {
                if from != to {
                    let sv = state_vector(&docs[*to]);
                    validate_state_vector_v1(&sv).unwrap();
                    let diff = docs[*from]
                        .transact()
                        .encode_diff_v1(&StateVector::decode_v1(&sv).unwrap());
                    assert_valid("diff", &diff);
                    apply(&docs[*to], &diff);
                }
            }
        }
    }
    for log in &logs {
        for update in log.lock().unwrap().iter() {
            assert_valid("observed update", update);
        }
    }
    for doc in &docs {
        assert_valid("full state", &full_state(doc));
        assert_valid_sv(doc);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_edit_sessions_validate((docs, ops) in arb_session()) {
        run_session(docs, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// hostile

fn limits() -> ValidateLimits {
    ValidateLimits::default()
}

#[test]
fn huge_count_headers() {
    for bytes in [
        &[144, 243, 243, 59][..],
        &[255, 255, 255, 255, 15],
        &[1, 255, 255, 255, 255, 15],
        &[1, 1, 1, 0, 8, 1, 1, b't', 255, 255, 255, 255, 15],
        &[0, 255, 255, 255, 255, 15],
        &[0, 1, 1, 255, 255, 255, 255, 15],
    ] {
        assert_eq!(
            validate_update_v1(bytes, &limits()),
            Err(InvalidInput::Truncated)
        );
    }
}

#[test]
fn every_prefix_of_real_updates_is_refused() {
    for update in corpus() {
        for len in 0..update.len() {
            assert!(
                validate_update_v1(&update[..len], &limits()).is_err(),
                "prefix {len} of {update:?}"
            );
        }
        let mut trailing = update.clone();
        trailing.extend_from_slice(&[0, 0]);
        assert_eq!(
            validate_update_v1(&trailing, &limits()),
            Err(InvalidInput::TrailingBytes)
        );
    }
}

/// Replaces the varint that starts at `at` with `value`.
fn patch_varint(bytes: &[u8], at: usize, value: u64) -> Vec<u8> {
    let mut end = at;
    while bytes[end] & 0x80 != 0 {
        end += 1;
    }
    let mut out = bytes[..at].to_vec();
    let mut v = value;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out.extend_from_slice(&bytes[end + 1..]);
    out
}

#[test]
fn oversized_client_ids_in_real_updates() {
    // One client, one text insert, one delete: header client at offset 2, delete-set client
    // after the blocks.
    let doc = new_doc(7);
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "abc");
    text.remove_range(&mut doc.transact_mut(), 1, 1);
    let state = full_state(&doc);
    assert_valid("state", &state);
    assert_eq!(
        &state[..3],
        &[1, 3, 7],
        "layout assumption: 1 client, 3 blocks, client 7"
    );
    let ds_client = state.len() - 4; // [1 client][7][1 range][clock][len]
    assert_eq!(state[ds_client], 7);
    for bad in [1u64 << 53, u64::MAX] {
        for at in [2, ds_client] {
            let patched = patch_varint(&state, at, bad);
            assert_eq!(
                validate_update_v1(&patched, &limits()),
                Err(InvalidInput::ClientIdTooLarge(bad)),
                "offset {at}"
            );
        }
    }
    // A clock that would overflow yrs's u32 arithmetic.
    let patched = patch_varint(&state, 3, u64::from(u32::MAX) - 2);
    assert_eq!(
        validate_update_v1(&patched, &limits()),
        Err(InvalidInput::ClockOverflow)
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let mut bytes = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[117, 1]);
    }
    bytes.extend_from_slice(&[126, 0]);
    assert_eq!(
        validate_update_v1(&bytes, &limits()),
        Err(InvalidInput::TooDeep)
    );
    // Exactly at the limit: accepted, and yrs copes with it.
    let mut ok = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
    for _ in 0..limits().max_depth {
        ok.extend_from_slice(&[117, 1]);
    }
    ok.extend_from_slice(&[126, 0]);
    accepted_bytes_are_safe(&ok, &[]).unwrap();
}

// Structured generator: updates that are valid by construction but semantically arbitrary
// (references to missing or unrelated items, odd parents, duplicate clients), to find
// inputs the validator accepts but `yrs` cannot handle.

/// The largest clock range end the validator accepts (`i32::MAX`).
const CLOCK_MAX: u64 = i32::MAX as u64;

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn str(&mut self, s: &str) {
        self.var(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

#[derive(Debug, Clone)]
enum GenContent {
    Deleted(u64),
    Binary,
    Str(&'static str),
    Embed,
    Format(&'static str),
    Type(u8),
    Any(Vec<Any>),
    Doc,
}

#[derive(Debug, Clone)]
enum GenBlock {
    Gc(u64),
    Skip(u64),
    Item {
        origin: Option<(u64, u64)>,
        right: Option<(u64, u64)>,
        parent: Result<&'static str, (u64, u64)>,
        sub: Option<&'static str>,
        content: GenContent,
    },
}

#[derive(Debug, Clone)]
struct GenUpdate {
    clients: Vec<(u64, u64, Vec<GenBlock>)>,
    deletes: Vec<(u64, Vec<(u64, u64)>)>,
}

fn arb_client() -> impl Strategy<Value = u64> {
    prop_oneof![0..4u64, Just((1 << 53) - 1)]
}

fn arb_id() -> impl Strategy<Value = (u64, u64)> {
    (arb_client(), prop_oneof![0..8u64, Just(CLOCK_MAX - 3)])
}

fn arb_content() -> impl Strategy<Value = GenContent> {
    prop_oneof![
        (1..4u64).prop_map(GenContent::Deleted),
        Just(GenContent::Binary),
        prop::sample::select(vec!["a", "bc", "👋", "é👋x"]).prop_map(GenContent::Str),
        Just(GenContent::Embed),
        prop::sample::select(vec!["true", "null", "{\"a\":1}"]).prop_map(GenContent::Format),
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 6]).prop_map(GenContent::Type),
        prop::collection::vec(arb_leaf_any(), 1..3).prop_map(GenContent::Any),
        Just(GenContent::Doc),
    ]
}

fn arb_block() -> impl Strategy<Value = GenBlock> {
    prop_oneof![
        1 => (1..3u64).prop_map(GenBlock::Gc),
        1 => (1..3u64).prop_map(GenBlock::Skip),
        6 => (
            prop::option::of(arb_id()),
            prop::option::of(arb_id()),
            prop_oneof![
                prop::sample::select(vec!["t", "m", "a", "x"]).prop_map(Ok),
                arb_id().prop_map(Err),
            ],
            prop::option::of(prop::sample::select(vec!["k0", "k1", "lang"])),
            arb_content(),
        )
            .prop_map(|(origin, right, parent, sub, content)| GenBlock::Item {
                origin,
                right,
                parent,
                sub,
                content,
            }),
    ]
}

fn arb_update() -> impl Strategy<Value = GenUpdate> {
    (
        prop::collection::vec(
            (
                arb_client(),
                prop_oneof![4 => 0..6u64, 1 => Just(CLOCK_MAX - 30)],
                prop::collection::vec(arb_block(), 0..5),
            ),
            0..3,
        ),
        prop::collection::vec(
            (
                arb_client(),
                prop::collection::vec(
                    prop_oneof![
                        4 => (0..8u64, 1..4u64),
                        1 => Just((0, CLOCK_MAX)),
                        1 => Just((CLOCK_MAX - 30, 20)),
                    ],
                    0..3,
                ),
            ),
            0..3,
        ),
    )
        .prop_map(|(mut clients, deletes)| {
            // Encoders write each client once, highest first; the validator insists on it.
            clients.sort_by_key(|c| std::cmp::Reverse(c.0));
            clients.dedup_by_key(|c| c.0);
            GenUpdate { clients, deletes }
        })
}

fn encode_gen(update: &GenUpdate) -> Vec<u8> {
    let mut e = Enc::default();
    e.var(update.clients.len() as u64);
    for (client, clock, blocks) in &update.clients {
        e.var(blocks.len() as u64);
        e.var(*client);
        e.var(*clock);
        for block in blocks {
            match block {
                GenBlock::Gc(len) => {
                    e.0.push(0);
                    e.var(*len);
                }
                GenBlock::Skip(len) => {
                    e.0.push(10);
                    e.var(*len);
                }
                GenBlock::Item {
                    origin,
                    right,
                    parent,
                    sub,
                    content,
                } => {
                    let content_ref = match content {
                        GenContent::Deleted(_) => 1,
                        GenContent::Binary => 3,
                        GenContent::Str(_) => 4,
                        GenContent::Embed => 5,
                        GenContent::Format(_) => 6,
                        GenContent::Type(_) => 7,
                        GenContent::Any(_) => 8,
                        GenContent::Doc => 9,
                    };
                    let info = content_ref
                        | if origin.is_some() { 0x80 } else { 0 }
                        | if right.is_some() { 0x40 } else { 0 }
                        | if sub.is_some() { 0x20 } else { 0 };
                    e.0.push(info);
                    for (c, k) in origin.iter().chain(right.iter()) {
                        e.var(*c);
                        e.var(*k);
                    }
                    if origin.is_none() && right.is_none() {
                        match parent {
                            Ok(name) => {
                                e.var(1);
                                e.str(name);
                            }
                            Err((c, k)) => {
                                e.var(0);
                                e.var(*c);
                                e.var(*k);
                            }
                        }
                        if let Some(sub) = sub {
                            e.str(sub);
                        }
                    }
                    match content {
                        GenContent::Deleted(len) => e.var(*len),
                        GenContent::Binary => e.str("bin"),
                        GenContent::Str(s) => e.str(s),
                        GenContent::Embed => e.str("{\"img\":\"x\"}"),
                        GenContent::Format(v) => {
                            e.str("bold");
                            e.str(v);
                        }
                        GenContent::Type(t) => {
                            e.0.push(*t);
                            if *t == 3 {
                                e.str("p");
                            }
                        }
                        GenContent::Any(values) => {
                            e.var(values.len() as u64);
                            for v in values {
                                v.encode(&mut e.0);
                            }
                        }
                        GenContent::Doc => {
                            e.str("guid");
                            e.0.extend_from_slice(&[118, 0]);
                        }
                    }
                }
            }
        }
    }
    e.var(update.deletes.len() as u64);
    for (client, ranges) in &update.deletes {
        e.var(*client);
        e.var(ranges.len() as u64);
        for (clock, len) in ranges {
            e.var(*clock);
            e.var(*len);
        }
    }
    e.0
}

/// Full states of small documents to apply hostile updates on top of (clients 1 and 2, so
/// generated references hit real items).
fn bases() -> Vec<Vec<u8>> {
    let a = new_doc(1);
    a.get_or_insert_text("t")
        .insert(&mut a.transact_mut(), 0, "héllo👋");
    let map = a.get_or_insert_map("m");
    map.insert(&mut a.transact_mut(), "k0", ArrayPrelim::from([1i64, 2]));
    map.insert(&mut a.transact_mut(), "k1", "v");
    let b = new_doc(2);
    b.get_or_insert_array("a")
        .insert_range(&mut b.transact_mut(), 0, [1i64, 2, 3]);
    b.get_or_insert_xml_fragment("x")
        .push_back(&mut b.transact_mut(), XmlElementPrelim::empty("p"));
    let t = b.get_or_insert_text("t");
    t.insert(&mut b.transact_mut(), 0, "xyz");
    t.remove_range(&mut b.transact_mut(), 1, 1);
    vec![full_state(&a), full_state(&b)]
}

fn mutation_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus();
    seeds.retain(|s| s.len() <= 512);
    seeds
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let _ = accepted_bytes_are_safe(&bytes, &[]);
    }

    #[test]
    fn random_small_headers_never_panic(
        head in prop::sample::select(vec![vec![1u8, 1], vec![1, 2], vec![0], vec![1, 1, 1, 0]]),
        tail in prop::collection::vec(prop_oneof![0..12u8, any::<u8>()], 0..40),
    ) {
        let mut bytes = head;
        bytes.extend(tail);
        let _ = accepted_bytes_are_safe(&bytes, &[]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn structured_updates_are_safe(update in arb_update()) {
        let bytes = encode_gen(&update);
        accepted_bytes_are_safe(&bytes, &bases()).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_real_updates_are_safe(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(arb_mutation(false), 1..3),
    ) {
        thread_local! {
            static SEEDS: (Vec<Vec<u8>>, Vec<Vec<u8>>) = (mutation_seeds(), bases());
        }
        SEEDS.with(|(seeds, bases)| {
            let mut bytes = seed.get(seeds).clone();
            for m in &mutations {
                bytes = mutate(bytes, m);
            }
            let _ = accepted_bytes_are_safe(&bytes, bases);
        });
    }
}

#[test]
fn exhaustive_single_byte_mutations_of_a_small_update() {
    let doc = new_doc(3);
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "ab👋");
    let map = doc.get_or_insert_map("m");
    map.insert(&mut doc.transact_mut(), "k", Any::from(vec![1u8]));
    text.remove_range(&mut doc.transact_mut(), 0, 1);
    let state = full_state(&doc);
    let bases = bases();
    let mut accepted = 0;
    for i in 0..state.len() {
        for b in 0..=255u8 {
            let mut bytes = state.clone();
            bytes[i] = b;
            if accepted_bytes_are_safe(&bytes, &bases).is_ok() {
                accepted += 1;
            }
        }
    }
    assert!(
        accepted > state.len(),
        "some mutations should still be valid updates"
    );
}

#[test]
fn unknown_refs_and_bad_content_in_real_layout() {
    // [1 client][1 block][client 1][clock 0][info][parent: root "t"][content...][empty ds]
    let item = |info: u8, content: &[u8]| {
        let mut b = vec![1, 1, 1, 0, info, 1, 1, b't'];
        b.extend_from_slice(content);
        b.push(0);
        b
    };
    assert_eq!(
        validate_update_v1(&item(11, &[1]), &limits()),
        Err(InvalidInput::UnknownContent(11))
    );
    assert_eq!(
        validate_update_v1(&item(7, &[7]), &limits()),
        Err(InvalidInput::UnknownTypeRef(7))
    );
    assert_eq!(
        validate_update_v1(&item(4, &[2, 0xc3, 0x28]), &limits()),
        Err(InvalidInput::InvalidUtf8)
    );
    assert_eq!(
        validate_update_v1(&item(5, &[2, b'{', b'x']), &limits()),
        Err(InvalidInput::InvalidJson)
    );
    assert_eq!(
        validate_update_v1(&item(8, &[1, 3]), &limits()),
        Err(InvalidInput::UnknownAnyTag(3))
    );
    // Valid counterparts are accepted and safe.
    for ok in [
        item(4, &[2, b'o', b'k']),
        item(5, &[2, b'{', b'}']),
        item(7, &[2]),
    ] {
        accepted_bytes_are_safe(&ok, &bases()).unwrap();
    }
}

#[test]
fn hostile_corpus_is_fast() {
    // O(len): a megabyte of tiny GC blocks validates quickly and allocation-free.
    let blocks = 500_000u64;
    let mut e = Enc::default();
    e.var(1);
    e.var(blocks);
    e.var(1);
    e.var(0);
    for _ in 0..blocks {
        e.0.extend_from_slice(&[0, 1]);
    }
    e.var(0);
    let start = std::time::Instant::now();
    validate_update_v1(&e.0, &limits()).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

// Out-of-order runs: the hazard `validate_update_runs_v1` exists for.

/// Applies each update in turn the way a room should: validated, and held back when it has a
/// client run starting past the document's clock or containing a Skip. Returns how many were
/// applied.
fn apply_with_gap_check(doc: &Doc, updates: &[Vec<u8>]) -> usize {
    let mut applied = 0;
    for update in updates {
        let sv = doc.transact().state_vector();
        let mut gap = false;
        let valid = validate_update_runs_v1(update, &limits(), |run| {
            let clock = sv.get(&ClientID::new(run.client));
            gap |= run.start > clock || run.skip_end.is_some_and(|end| clock < end);
        });
        if valid.is_err() || gap {
            continue;
        }
        applied += 1;
        let _ = doc
            .transact_mut()
            .apply_update(Update::decode_v1(update).unwrap());
        // yrs's own encoding must stay structurally valid. It may no longer *apply* cleanly:
        // updates that reuse known IDs with different content (a forged history) can leave the
        // document in a state whose re-encoding fails with `UpdateError::InvalidParent` on a
        // fresh document. That must not panic, though.
        let state = full_state(doc);
        if let Err(e) = validate_update_v1(&state, &limits()) {
            panic!("yrs produced an invalid state ({e}): {state:?}");
        }
        let _ = room_doc()
            .transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap());
    }
    applied
}

#[test]
fn out_of_order_runs_are_reported() {
    // Client 7: "a"@5, a hole @6, "b"@7. yrs integrates all of it at once (with Skip
    // placeholders for 0..5 and 6) instead of holding it back like Yjs.
    let first: Vec<u8> = vec![
        1, 3, 7, 5, 4, 1, 1, b'x', 1, b'a', 10, 1, 4, 1, 1, b'x', 1, b'b', 0,
    ];
    // The same client then claims clocks 6..8 are GC. Applied after `first`, yrs 0.28 hits
    // "attempt to subtract with overflow" in BlockStore::push (debug builds) or stores a Skip
    // of length u32::MAX (release builds). Both updates are structurally valid.
    let second: Vec<u8> = vec![1, 1, 7, 6, 0, 2, 0];
    let mut runs = Vec::new();
    validate_update_runs_v1(&first, &limits(), |run| runs.push(run)).unwrap();
    assert_eq!(
        runs,
        [ClientRun {
            client: 7,
            start: 5,
            end: 8,
            skip_end: Some(7)
        }]
    );
    runs.clear();
    validate_update_runs_v1(&second, &limits(), |run| runs.push(run)).unwrap();
    assert_eq!(
        runs,
        [ClientRun {
            client: 7,
            start: 6,
            end: 8,
            skip_end: None
        }]
    );
    // With the gap check neither reaches yrs on an empty document.
    let doc = room_doc();
    assert_eq!(
        apply_with_gap_check(&doc, &[first.clone(), second.clone()]),
        0
    );
    // In order, from clock 0, both kinds of run are fine.
    let in_order: Vec<u8> = vec![1, 2, 7, 0, 4, 1, 1, b'x', 1, b'a', 0, 5, 0];
    assert_eq!(apply_with_gap_check(&doc, &[in_order, second]), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn structured_sequences_with_gap_check_are_safe(
        updates in prop::collection::vec(arb_update(), 1..5),
        base in 0..2usize,
    ) {
        let encoded: Vec<Vec<u8>> = updates.iter().map(encode_gen).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let doc = room_doc();
            apply(&doc, &bases()[base]);
            apply_with_gap_check(&doc, &encoded);
        }));
        prop_assert!(outcome.is_ok(), "sequence panicked on base {}: {:?}", base, encoded);
    }
}

/// Long-running version of the sequence fuzzer: `N=20000 cargo test -p yrelay-doc --test
/// hostile soak -- --ignored --nocapture`.
#[test]
#[ignore]
fn soak_structured_sequences() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut runner = TestRunner::deterministic();
    let bases = bases();
    let strategy = arb_update();
    let mut applied = 0;
    for i in 0..n {
        let seq: Vec<Vec<u8>> = (0..4)
            .map(|_| encode_gen(&strategy.new_tree(&mut runner).unwrap().current()))
            .collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let doc = room_doc();
            apply(&doc, &bases[i % 2]);
            apply_with_gap_check(&doc, &seq)
        }));
        match outcome {
            Ok(count) => applied += count,
            Err(_) => panic!("sequence panicked on base {}: {seq:?}", i % 2),
        }
    }
    eprintln!("{n} sequences, {applied} updates applied");
}

/// A yrs 0.28 weakness no stateless check can see, kept here as a canary: a structurally valid
/// update that reuses known IDs is accepted (held as pending), yet the document's own snapshot
/// afterwards fails to load with `UpdateError::InvalidParent`. Snapshot loading and compaction
/// must therefore treat `apply_update` errors as expected, never `unwrap` them. If this test
/// starts failing, yrs fixed it.
#[test]
fn yrs_pending_blocks_can_poison_snapshots() {
    // Client 1: text t = "héllo👋" (clocks 0..7), map m = {k0: [1, 2], k1: "v"} (7..11).
    let base: Vec<u8> = vec![
        1, 4, 1, 0, 4, 1, 1, 116, 10, 104, 195, 169, 108, 108, 111, 240, 159, 145, 139, 39, 1, 1,
        109, 2, 107, 48, 0, 8, 0, 1, 7, 2, 125, 1, 125, 2, 40, 1, 1, 109, 2, 107, 49, 1, 119, 1,
        118, 0,
    ];
    // "Client 1" again from clock 8: a 4-unit string under a missing parent (trimmed by yrs to
    // its last unit, "x"@11), then an Any whose parent is (1, 1), a character of the text.
    let forged: Vec<u8> = vec![
        1, 2, 1, 8, 36, 0, 255, 255, 255, 255, 255, 255, 255, 15, 252, 255, 255, 255, 7, 2, 107,
        48, 7, 195, 169, 240, 159, 145, 139, 120, 40, 0, 1, 1, 2, 107, 49, 1, 126, 0,
    ];
    validate_update_v1(&base, &limits()).unwrap();
    validate_update_v1(&forged, &limits()).unwrap();
    let doc = room_doc();
    apply(&doc, &base);
    doc.transact_mut()
        .apply_update(Update::decode_v1(&forged).unwrap())
        .unwrap();
    let snapshot = full_state(&doc);
    validate_update_v1(&snapshot, &limits()).unwrap();
    let reloaded = room_doc();
    let result = reloaded
        .transact_mut()
        .apply_update(Update::decode_v1(&snapshot).unwrap());
    assert!(
        result.is_err(),
        "yrs now reloads its own snapshot: relax this canary"
    );
}

/// Deleting the two halves of a surrogate pair separately is something a JS client can do. On
/// a yrs document with the default `OffsetKind::Bytes` it underflows the text length ("attempt
/// to subtract with overflow" in `TransactionMut::delete` in debug builds, a length of
/// 4294967294 in release builds). With `OffsetKind::Utf16`, as `room_doc` uses, it is fine.
#[test]
fn surrogate_halves_deleted_separately_on_a_utf16_doc() {
    // Client 1: text t = "👋".
    let state: Vec<u8> = vec![1, 1, 1, 0, 4, 1, 1, 116, 4, 240, 159, 145, 139, 0];
    let delete_low_half: Vec<u8> = vec![0, 1, 1, 1, 1, 1];
    let delete_high_half: Vec<u8> = vec![0, 1, 1, 1, 0, 1];
    for bytes in [&state, &delete_low_half, &delete_high_half] {
        validate_update_v1(bytes, &limits()).unwrap();
    }
    let doc = room_doc();
    apply(&doc, &state);
    apply(&doc, &delete_low_half);
    apply(&doc, &delete_high_half);
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    assert_eq!(text.len(&txn), 0);
    assert_eq!(text.get_string(&txn), "");
}
