//! Every decoder reachable from the network, fed arbitrary and mutated bytes.
//!
//! The decoders: [`decode_client_message`] (the outer y-protocols frame, and through it every
//! payload validator), [`StateVectorV1::parse`], [`AwarenessUpdateV1::parse`] and
//! [`UpdateV1::parse`]. The properties:
//!
//! * nothing panics;
//! * whatever is accepted is safe to use: it decodes in `yrs`, a state vector gives a diff, an
//!   update applies to a room (without `yrs` panicking, which the room would report as
//!   [`DocError::Panicked`]), an awareness update applies, and what the room then sends out
//!   is itself valid;
//! * no input makes anything reserve memory out of proportion to its size: in a child process
//!   whose address space is capped a few MiB above what it already uses, inputs of up to 16
//!   bytes (and mutated real frames of up to 512) go through all of the above
//!   ([`small_inputs_never_reserve_megabytes`], Linux only).
//!
//! `UpdateV1::parse` is `validate_update_runs_v1` plus the runs it reports; `tests/hostile.rs`
//! fuzzes that validator in depth (structured generators, mutations, sequences against
//! documents). Here updates are reached through whole frames and applied through `RoomDoc`.
//!
//! Case counts follow proptest's default (256), or `PROPTEST_CASES`:
//! `PROPTEST_CASES=100000 cargo test -p yrelay-doc --release --test decoders`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod mutation;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mutation::{arb_mutation, mutate};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use yrelay_doc::codec::{
    encode_awareness, encode_sync_step1, encode_sync_step2, encode_sync_update, KEEPALIVE_FRAME,
};
use yrelay_doc::{
    decode_client_message, AwarenessUpdateV1, ClientMessage, DocError, RoomDoc, StateVectorV1,
    UpdateV1, ValidateLimits,
};
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::Awareness;
use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, ClientID, Doc, Map, MapPrelim, OffsetKind, Options, ReadTxn,
    StateVector, Text, TextPrelim, Transact, Update, Xml, XmlElementPrelim, XmlFragment,
    XmlTextPrelim,
};

// ---------------------------------------------------------------------------------------------
// Real material: documents, updates, state vectors and awareness updates as clients send them

fn client(id: u64) -> Doc {
    let mut options = Options::with_client_id(ClientID::new(id));
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}

fn record(doc: &Doc) -> Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
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

/// Two clients' documents with every kind of content, and every update they emitted.
fn documents() -> (Vec<Doc>, Vec<Vec<u8>>) {
    let a = client(1);
    let b = client((1 << 53) - 1);
    let logs = [record(&a), record(&b)];

    let text = a.get_or_insert_text("text");
    text.insert(&mut a.transact_mut(), 0, "héllo 👋 world");
    let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
    text.format(&mut a.transact_mut(), 0, 5, bold);
    text.insert_embed(&mut a.transact_mut(), 3, Any::from("embed"));
    text.remove_range(&mut a.transact_mut(), 6, 2);
    let map = a.get_or_insert_map("map");
    map.insert(&mut a.transact_mut(), "n", 1.5f64);
    map.insert(&mut a.transact_mut(), "bin", Any::from(vec![1u8, 2, 3]));
    let nested = map.insert(&mut a.transact_mut(), "nested", MapPrelim::default());
    nested.insert(&mut a.transact_mut(), "list", ArrayPrelim::from([1i64, 2]));
    map.insert(&mut a.transact_mut(), "n", "overwritten");

    let array = b.get_or_insert_array("array");
    array.insert_range(&mut b.transact_mut(), 0, [Any::from(1i64), Any::Null]);
    array.push_back(&mut b.transact_mut(), TextPrelim::new("t"));
    array.remove(&mut b.transact_mut(), 0);
    let xml = b.get_or_insert_xml_fragment("xml");
    let p = xml.push_back(&mut b.transact_mut(), XmlElementPrelim::empty("p"));
    p.insert_attribute(&mut b.transact_mut(), "class", "x");
    p.push_back(&mut b.transact_mut(), XmlTextPrelim::new("hi"));

    // Sync both ways, then edit once more so diffs have something partial to say.
    let sv_b = b.transact().state_vector();
    let sv_a = a.transact().state_vector();
    let a_to_b = a.transact().encode_diff_v1(&sv_b);
    let b_to_a = b.transact().encode_diff_v1(&sv_a);
    b.transact_mut()
        .apply_update(Update::decode_v1(&a_to_b).unwrap())
        .unwrap();
    a.transact_mut()
        .apply_update(Update::decode_v1(&b_to_a).unwrap())
        .unwrap();
    let shared = b.get_or_insert_text("text");
    shared.insert(&mut b.transact_mut(), 1, "B");
    let mut updates: Vec<Vec<u8>> = logs
        .iter()
        .flat_map(|log| log.lock().unwrap().clone())
        .collect();
    updates.push(a_to_b);
    updates.push(b_to_a);
    (vec![a, b], updates)
}

/// Awareness updates as y-protocols clients send them: one state, several, a removal.
fn awareness_updates() -> Vec<Vec<u8>> {
    let mut a = Awareness::new(client(1));
    a.set_local_state_raw(
        r##"{"user":{"name":"Ann","color":"#30bced"},"cursor":{"anchor":1,"head":3}}"##,
    );
    let one = a.update().unwrap().encode_v1();
    let mut b = Awareness::new(client(2));
    b.set_local_state_raw(r#"{"user":{"name":"Bö 👋"},"n":[1,2.5,null,true]}"#);
    b.apply_update(AwarenessUpdate::decode_v1(&one).unwrap())
        .unwrap();
    let both = b.update().unwrap().encode_v1();
    a.remove_state(ClientID::new(1));
    let removal = a
        .update_with_clients([ClientID::new(1)])
        .unwrap()
        .encode_v1();
    vec![one, both, removal, vec![0]]
}

/// The seeds mutated by the frame fuzzers: a valid frame of every message type.
fn seed_frames() -> Vec<Vec<u8>> {
    let (docs, updates) = documents();
    let mut frames = Vec::new();
    frames.push(encode_sync_step1(&StateVector::default().encode_v1()).to_vec());
    for doc in &docs {
        frames.push(encode_sync_step1(&doc.transact().state_vector().encode_v1()).to_vec());
        frames.push(encode_sync_step2(&full_state(doc)).to_vec());
    }
    frames.push(encode_sync_step2(&[0, 0]).to_vec());
    for update in &updates {
        frames.push(encode_sync_update(update).to_vec());
    }
    for awareness in awareness_updates() {
        frames.push(encode_awareness(&awareness).to_vec());
    }
    frames.push(KEEPALIVE_FRAME.to_vec());
    // Query awareness, auth (as y-protocols writes a denial), unknown types.
    frames.push(vec![3]);
    frames.push(vec![2, 0, 2, b'n', b'o']);
    frames.push(vec![4, 1, 2, 3]);
    frames.push(vec![0x80, 0x01, 0]);
    frames.retain(|f| f.len() <= 512);
    frames
}

/// The payloads of the seed frames that have one (sync and awareness messages), with their
/// message header (`[0, subtype]` or `[1]`).
fn seed_payloads(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|frame| {
            let header_len = match frame.first()? {
                0 => 2,
                1 => 1,
                _ => return None,
            };
            let header = frame[..header_len].to_vec();
            // Skip the varint length.
            let rest = &frame[header_len..];
            let varint_len = rest.iter().position(|b| b & 0x80 == 0)? + 1;
            Some((header, rest[varint_len..].to_vec()))
        })
        .collect()
}

/// Real state vectors: empty, one client, two clients.
fn seed_state_vectors() -> Vec<Vec<u8>> {
    let (docs, _) = documents();
    let mut out = vec![StateVector::default().encode_v1()];
    out.extend(docs.iter().map(|d| d.transact().state_vector().encode_v1()));
    out
}

/// What the rooms under test are loaded with (one of the documents, and awareness states).
struct Fixtures {
    room_state: Vec<u8>,
    room_awareness: Vec<u8>,
    frames: Vec<Vec<u8>>,
    payloads: Vec<(Vec<u8>, Vec<u8>)>,
    state_vectors: Vec<Vec<u8>>,
    awareness: Vec<Vec<u8>>,
}

thread_local! {
    static FIXTURES: Fixtures = {
        let (docs, _) = documents();
        let awareness = awareness_updates();
        let frames = seed_frames();
        Fixtures {
            room_state: full_state(&docs[0]),
            room_awareness: awareness[1].clone(),
            payloads: seed_payloads(&frames),
            frames,
            state_vectors: seed_state_vectors(),
            awareness,
        }
    };
}

fn limits() -> ValidateLimits {
    ValidateLimits::default()
}

/// An empty room and a room holding a document and two present clients.
fn rooms(fixtures: &Fixtures) -> [RoomDoc; 2] {
    let mut loaded = RoomDoc::new();
    let state = UpdateV1::parse(Bytes::from(fixtures.room_state.clone()), &limits()).unwrap();
    let applied = loaded.apply_update(&state, 0);
    assert!(applied.refused.is_empty());
    let states = AwarenessUpdateV1::parse(Bytes::from(fixtures.room_awareness.clone())).unwrap();
    loaded.apply_awareness(&states).unwrap();
    [RoomDoc::new(), loaded]
}

// ---------------------------------------------------------------------------------------------
// Using what was accepted

fn use_message(message: ClientMessage) -> Result<(), TestCaseError> {
    match message {
        ClientMessage::SyncStep1(sv) => use_state_vector(&sv),
        ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => use_update(&update),
        ClientMessage::Awareness(update) => use_awareness(&update),
        ClientMessage::QueryAwareness | ClientMessage::Auth | ClientMessage::Unknown(_) => Ok(()),
    }
}

/// An accepted state vector decodes, and the diff a room answers it with is a valid update.
fn use_state_vector(sv: &StateVectorV1) -> Result<(), TestCaseError> {
    let decoded = StateVector::decode_v1(sv.as_bytes());
    prop_assert!(decoded.is_ok(), "accepted but undecodable: {:?}", sv);
    FIXTURES.with(|fixtures| {
        for room in rooms(fixtures) {
            let diff = room.diff(sv);
            prop_assert!(
                UpdateV1::parse(Bytes::from(diff), &limits()).is_ok(),
                "the room's diff does not validate"
            );
        }
        Ok(())
    })
}

/// An accepted update decodes, and applies to an empty and to a loaded room without `yrs`
/// panicking; the rooms' output stays valid.
fn use_update(update: &UpdateV1) -> Result<(), TestCaseError> {
    prop_assert!(
        Update::decode_v1(update.as_bytes()).is_ok(),
        "accepted but undecodable: {:?}",
        update
    );
    FIXTURES.with(|fixtures| {
        for mut room in rooms(fixtures) {
            let _ = room.would_change(update);
            let applied = room.apply_update(update, 1);
            for (_, error) in &applied.refused {
                prop_assert!(
                    !matches!(error, DocError::Panicked),
                    "yrs panicked on {:?}",
                    update.as_bytes()
                );
            }
            for emitted in &applied.emitted {
                prop_assert!(
                    UpdateV1::parse(Bytes::from(emitted.clone()), &limits()).is_ok(),
                    "the room emitted an invalid update"
                );
            }
            let _ = room.to_json();
            let _ = room.encode_state();
        }
        Ok(())
    })
}

/// An accepted awareness update decodes and applies; what the room broadcasts is valid.
fn use_awareness(update: &AwarenessUpdateV1) -> Result<(), TestCaseError> {
    let decoded = AwarenessUpdate::decode_v1(update.as_bytes());
    prop_assert!(decoded.is_ok(), "accepted but undecodable: {:?}", update);
    let _ = update.client_ids();
    FIXTURES.with(|fixtures| {
        for mut room in rooms(fixtures) {
            let change = room.apply_awareness(update);
            prop_assert!(change.is_ok(), "{:?}", change);
            if let Some(broadcast) = change.unwrap().broadcast {
                prop_assert!(AwarenessUpdateV1::parse(Bytes::from(broadcast)).is_ok());
            }
            if let Some(states) = room.awareness_states() {
                prop_assert!(AwarenessUpdateV1::parse(Bytes::from(states)).is_ok());
            }
        }
        Ok(())
    })
}

fn check_frame(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    match decode_client_message(&Bytes::from(bytes), &limits()) {
        Ok(message) => use_message(message),
        Err(_) => Ok(()),
    }
}

fn check_state_vector(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    match StateVectorV1::parse(Bytes::from(bytes)) {
        Ok(sv) => use_state_vector(&sv),
        Err(_) => Ok(()),
    }
}

fn check_awareness(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    match AwarenessUpdateV1::parse(Bytes::from(bytes)) {
        Ok(update) => use_awareness(&update),
        Err(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// One of `pick(fixtures)`'s seeds with one to three mutations applied.
fn arb_mutated(pick: fn(&Fixtures) -> &Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec(arb_mutation(true), 1..4),
    )
        .prop_map(move |(seed, mutations)| {
            FIXTURES.with(|fixtures| {
                let seeds = pick(fixtures);
                let mut bytes = seed.get(seeds).clone();
                for mutation in &mutations {
                    bytes = mutate(bytes, mutation);
                }
                bytes
            })
        })
}

/// A seed frame's payload with one to three mutations applied, framed again with its correct
/// length, so the mutations reach the payload validators rather than the framing.
fn arb_reframed() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec(arb_mutation(true), 1..4),
    )
        .prop_map(|(seed, mutations)| {
            FIXTURES.with(|fixtures| {
                let (header, payload) = seed.get(&fixtures.payloads).clone();
                let mut payload = payload;
                for mutation in &mutations {
                    payload = mutate(payload, mutation);
                }
                let mut frame = header;
                let mut len = payload.len();
                while len >= 0x80 {
                    frame.push((len as u8 & 0x7f) | 0x80);
                    len >>= 7;
                }
                frame.push(len as u8);
                frame.extend(payload);
                frame
            })
        })
}

/// A frame with a valid header for a known message type and arbitrary payload bytes, so the
/// payload validators see random input rather than the framing refusing it.
fn arb_framed_payload(max_payload: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![vec![0u8, 0], vec![0, 1], vec![0, 2], vec![1]]),
        prop::collection::vec(prop_oneof![0..16u8, any::<u8>()], 0..=max_payload),
    )
        .prop_map(|(mut header, payload)| {
            header.push(payload.len() as u8);
            header.extend(payload);
            header
        })
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn arbitrary_frames_are_safe(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_frame(bytes)?;
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames_are_safe(frame in arb_framed_payload(48)) {
        check_frame(frame)?;
    }

    #[test]
    fn mutated_frames_of_every_type_are_safe(frame in arb_mutated(|f| &f.frames)) {
        check_frame(frame)?;
    }

    #[test]
    fn mutated_payloads_in_valid_frames_are_safe(frame in arb_reframed()) {
        check_frame(frame)?;
    }

    #[test]
    fn arbitrary_state_vectors_are_safe(bytes in prop::collection::vec(
        prop_oneof![0..4u8, any::<u8>()], 0..64,
    )) {
        check_state_vector(bytes)?;
    }

    #[test]
    fn mutated_state_vectors_are_safe(bytes in arb_mutated(|f| &f.state_vectors)) {
        check_state_vector(bytes)?;
    }

    #[test]
    fn arbitrary_awareness_updates_are_safe(bytes in prop::collection::vec(
        prop_oneof![0..4u8, any::<u8>()], 0..64,
    )) {
        check_awareness(bytes)?;
    }

    #[test]
    fn mutated_awareness_updates_are_safe(bytes in arb_mutated(|f| &f.awareness)) {
        check_awareness(bytes)?;
    }
}

#[test]
fn seeds_are_accepted_and_cover_every_message_type() {
    let mut kinds = std::collections::BTreeSet::new();
    FIXTURES.with(|fixtures| {
        for frame in &fixtures.frames {
            let message = decode_client_message(&Bytes::from(frame.clone()), &limits())
                .unwrap_or_else(|e| panic!("seed {frame:?} refused: {e}"));
            kinds.insert(message.kind());
            use_message(message).unwrap();
        }
        // Every sync and awareness seed has its payload split out correctly.
        let with_payload = fixtures.frames.iter().filter(|f| f[0] <= 1).count();
        assert_eq!(fixtures.payloads.len(), with_payload);
        for (header, payload) in &fixtures.payloads {
            let mut frame = header.clone();
            frame.extend(encode_sync_step2(payload).slice(2..));
            assert!(fixtures.frames.contains(&frame), "{frame:?}");
        }
        for sv in &fixtures.state_vectors {
            StateVectorV1::parse(Bytes::from(sv.clone())).unwrap();
        }
        for update in &fixtures.awareness {
            AwarenessUpdateV1::parse(Bytes::from(update.clone())).unwrap();
        }
    });
    let expected = [
        "auth",
        "awareness",
        "query_awareness",
        "sync_step1",
        "sync_step2",
        "unknown",
        "update",
    ];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);
}

// ---------------------------------------------------------------------------------------------
// Allocation bound

/// Set in the child process that runs [`alloc_bound_child`].
#[cfg(target_os = "linux")]
const CHILD_ENV: &str = "YRELAY_DECODERS_ALLOC_CHILD";

/// Address space the child may take beyond what it holds when the cap is set.
#[cfg(target_os = "linux")]
const HEADROOM: u64 = 8 << 20;

/// Runs the decoders on small inputs in a child process whose address space (`RLIMIT_AS`) is
/// capped [`HEADROOM`] above what it already uses. glibc is set to one malloc arena (a thread
/// arena's pre-reserved 64 MiB heap would hide allocations from the cap) with its `mmap`
/// threshold pinned at 64 KiB, so every larger allocation is a new mapping counted against it. An
/// input that makes anything reserve more than the headroom aborts the child ("memory
/// allocation of N bytes failed"); a fallible reservation (`try_reserve`, which `yrs` uses in
/// places) fails instead, and the "accepted input decodes" checks turn that into a failure.
#[cfg(target_os = "linux")]
#[test]
fn small_inputs_never_reserve_megabytes() {
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "alloc_bound_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        // Printing a backtrace loads debug info, megabytes the capped child does not have.
        .env("RUST_BACKTRACE", "0")
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=1",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("alloc-bound: capped"),
        "the child did not run:\n{stdout}\n{stderr}"
    );
}

/// The body of [`small_inputs_never_reserve_megabytes`], in the capped child process.
#[cfg(target_os = "linux")]
#[test]
#[ignore = "runs in a child process of small_inputs_never_reserve_megabytes"]
fn alloc_bound_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Build the fixtures (and the test runner's state) before capping.
    FIXTURES.with(|_| {});
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=16),
        prop::collection::vec(prop_oneof![0..16u8, Just(0xff), any::<u8>()], 0..=16),
        // Sync headers take three bytes: 13 bytes of payload make a 16-byte frame.
        arb_framed_payload(13),
        arb_mutated(|f| &f.frames),
        arb_reframed(),
        arb_mutated(|f| &f.state_vectors).prop_map(|sv| {
            let mut frame = vec![0, 0, sv.len() as u8];
            frame.extend(sv);
            frame
        }),
    ];

    let limit = vm_size() + HEADROOM;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--as={limit}"))
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(status.success(), "prlimit failed: {status}");
    // The cap is in force, and leaves room for ordinary work.
    assert!(Vec::<u8>::new()
        .try_reserve_exact(2 * HEADROOM as usize)
        .is_err());
    assert!(Vec::<u8>::new().try_reserve_exact(1 << 20).is_ok());
    eprintln!("alloc-bound: capped at {limit} bytes ({HEADROOM} of headroom)");

    runner
        .run(&strategy, |frame| {
            check_frame(frame.clone())?;
            // The same bytes as bare payloads.
            check_state_vector(frame.clone())?;
            check_awareness(frame)
        })
        .unwrap();
    eprintln!("alloc-bound: {} cases", runner.config().cases);
}

/// This process's virtual memory size in bytes (`VmSize` in `/proc/self/status`).
#[cfg(target_os = "linux")]
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmSize:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}
