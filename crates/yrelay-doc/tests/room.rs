//! Behaviour of `RoomDoc`: it broadcasts what the document emitted, nothing more.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use yrelay_doc::codec::{AwarenessUpdateV1, StateVectorV1, UpdateV1};
use yrelay_doc::{RoomDoc, ValidateLimits};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// What the room emitted for one accepted update (asserting nothing was refused and at most
/// one transaction ran).
fn ok(applied: yrelay_doc::Applied) -> Option<Vec<u8>> {
    assert!(applied.refused.is_empty(), "refused: {:?}", applied.refused);
    assert!(
        applied.emitted.len() <= 1,
        "{} parts",
        applied.emitted.len()
    );
    applied.emitted.into_iter().next()
}

fn upd(bytes: Vec<u8>) -> UpdateV1 {
    UpdateV1::parse(Bytes::from(bytes), &ValidateLimits::default()).unwrap()
}

fn text_of(update: &[u8]) -> String {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
    let s = t.get_string(&doc.transact());
    s
}

fn text_of_all(updates: &[Vec<u8>]) -> String {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    for u in updates {
        doc.transact_mut()
            .apply_update(Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let s = t.get_string(&doc.transact());
    s
}

/// Two updates from one client: `first` inserts "ab", `second` appends "cd".
fn two_updates() -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(1);
    let t = doc.get_or_insert_text("t");
    let first = {
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "ab");
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 2, "cd");
        txn.encode_update_v1()
    };
    (first, second)
}

#[test]
fn new_update_is_emitted_byte_identical() {
    let (first, _) = two_updates();
    let mut room = RoomDoc::new();
    let emitted = ok(room.apply_update(&upd(first.clone()), 1));
    assert_eq!(emitted.as_deref(), Some(&first[..]));
}

#[test]
fn duplicate_emits_nothing() {
    let (first, _) = two_updates();
    let mut room = RoomDoc::new();
    ok(room.apply_update(&upd(first.clone()), 1));
    assert_eq!(ok(room.apply_update(&upd(first), 1)), None);
}

#[test]
fn missing_dependency_waits_for_the_gap() {
    let (first, second) = two_updates();
    let mut room = RoomDoc::new();
    assert_eq!(ok(room.apply_update(&upd(second), 1)), None);
    // Two transactions: `first`, then the held-back `second` it unblocked.
    let applied = room.apply_update(&upd(first), 1);
    assert!(applied.refused.is_empty());
    assert_eq!(applied.emitted.len(), 2);
    assert_eq!(text_of_all(&applied.emitted), "abcd");
    assert_eq!(text_of(&room.encode_state()), "abcd");
}

#[test]
fn overlapping_update_emits_only_its_new_part() {
    let (first, second) = two_updates();
    let merged = yrs::merge_updates_v1([&first, &second]).unwrap();
    let mut room = RoomDoc::new();
    ok(room.apply_update(&upd(first.clone()), 1));
    let emitted = ok(room.apply_update(&upd(merged), 1)).unwrap();
    // The emitted part applies on top of `first` to give the full text and does not contain
    // the first two characters again.
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(Update::decode_v1(&emitted).unwrap())
        .unwrap();
    assert_eq!(
        t.get_string(&doc.transact()),
        "",
        "the new part alone depends on `first`"
    );
    doc.transact_mut()
        .apply_update(Update::decode_v1(&first).unwrap())
        .unwrap();
    assert_eq!(t.get_string(&doc.transact()), "abcd");
}

#[test]
fn diff_sends_only_what_the_peer_lacks() {
    let (first, second) = two_updates();
    let mut room = RoomDoc::new();
    ok(room.apply_update(&upd(first.clone()), 1));
    ok(room.apply_update(&upd(second), 1));

    let peer = Doc::new();
    let pt = peer.get_or_insert_text("t");
    peer.transact_mut()
        .apply_update(Update::decode_v1(&first).unwrap())
        .unwrap();
    let sv = peer.transact().state_vector().encode_v1();
    let sv = StateVectorV1::parse(Bytes::from(sv)).unwrap();
    let diff = room.diff(&sv);
    assert!(diff.len() < room.encode_state().len());
    peer.transact_mut()
        .apply_update(Update::decode_v1(&diff).unwrap())
        .unwrap();
    assert_eq!(pt.get_string(&peer.transact()), "abcd");
    assert_eq!(
        StateVector::decode_v1(&room.state_vector()).unwrap(),
        peer.transact().state_vector()
    );
}

fn awareness_update(client: u64, state: &str) -> AwarenessUpdateV1 {
    let mut a = Awareness::new(Doc::with_client_id(client));
    a.set_local_state_raw(state);
    AwarenessUpdateV1::parse(Bytes::from(a.update().unwrap().encode_v1())).unwrap()
}

#[test]
fn awareness_add_and_remove() {
    let mut room = RoomDoc::new();
    assert_eq!(room.awareness_states(), None);
    let change = room
        .apply_awareness(&awareness_update(42, r#"{"user":"ann"}"#))
        .unwrap();
    assert_eq!(change.added, vec![42]);
    assert!(change.broadcast.is_some());
    assert_eq!(room.awareness_len(), 1);
    let all = room.awareness_states().unwrap();
    let decoded = yrs::sync::awareness::AwarenessUpdate::decode_v1(&all).unwrap();
    assert_eq!(decoded.clients.len(), 1);

    // Removing an unknown client broadcasts nothing; removing 42 broadcasts a null state with
    // a bumped clock.
    assert_eq!(room.remove_awareness(&[7]), None);
    let removal = room.remove_awareness(&[42]).unwrap();
    let decoded = yrs::sync::awareness::AwarenessUpdate::decode_v1(&removal).unwrap();
    let entry = decoded.clients.values().next().unwrap();
    assert_eq!(&*entry.json, "null");
    assert_eq!(entry.clock, 2);
    assert_eq!(room.awareness_len(), 0);
    assert_eq!(room.awareness_states(), None);
    // A second removal is a no-op.
    assert_eq!(room.remove_awareness(&[42]), None);
}

#[test]
fn stale_awareness_is_ignored() {
    let mut room = RoomDoc::new();
    room.apply_awareness(&awareness_update(5, r#"{"a":1}"#))
        .unwrap();
    // Same clock again: nothing changes, nothing to broadcast.
    let change = room
        .apply_awareness(&awareness_update(5, r#"{"a":2}"#))
        .unwrap();
    assert_eq!(change.broadcast, None);
}

fn raw(bytes: &[u8]) -> UpdateV1 {
    UpdateV1::parse(Bytes::copy_from_slice(bytes), &ValidateLimits::default()).unwrap()
}

#[test]
fn runs_after_a_hole_are_held_back_not_handed_to_yrs() {
    // Client 7: "a"@5, a Skip @6, "b"@7 on an empty document, then a run claiming 6..8 as GC.
    // Given to yrs 0.28 directly, the pair corrupts its block store (a panic in debug builds).
    let mut room = RoomDoc::new();
    let first = raw(&[
        1, 3, 7, 5, 4, 1, 1, b'x', 1, b'a', 10, 1, 4, 1, 1, b'x', 1, b'b', 0,
    ]);
    let second = raw(&[1, 1, 7, 6, 0, 2, 0]);
    assert_eq!(ok(room.apply_update(&first, 1)), None);
    assert_eq!(ok(room.apply_update(&second, 1)), None);
    assert_eq!(room.pending_bytes(), first.len() + second.len());
    // Leaving drops what the connection had held back.
    room.drop_pending_from(1);
    assert_eq!(room.pending_bytes(), 0);
    // The document is untouched and still encodes to something a fresh document loads.
    let state = room.encode_state();
    assert_eq!(text_of(&state), "");
}

#[test]
fn held_back_updates_apply_once_the_gap_is_filled_and_are_bounded() {
    let doc = Doc::with_client_id(9);
    let t = doc.get_or_insert_text("t");
    let next = |s: &str| {
        let mut txn = doc.transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, s);
        txn.encode_update_v1()
    };
    let head = next("head;");
    let big = "x".repeat(20 << 20);
    let body = next(&big);
    let tail = next(&big);
    let mut room = RoomDoc::new();
    assert_eq!(ok(room.apply_update(&upd(body), 1)), None);
    // 40 MiB waiting would pass MAX_PENDING_BYTES (32 MiB): refused, not buffered.
    let applied = room.apply_update(&upd(tail), 2);
    assert!(applied.emitted.is_empty());
    assert!(matches!(
        applied.refused.as_slice(),
        [(2, yrelay_doc::DocError::PendingOverflow)]
    ));
    let applied = room.apply_update(&upd(head), 1);
    assert!(applied.refused.is_empty());
    assert_eq!(room.pending_bytes(), 0);
    let text = text_of_all(&applied.emitted);
    assert_eq!(text.len(), 5 + big.len());
    assert!(text.starts_with("head;x"));
}

#[test]
fn deleting_halves_of_an_emoji_does_not_break_the_document() {
    // "👋" (two UTF-16 units) from client 1, then JS-style deletes of each half.
    let mut room = RoomDoc::new();
    ok(room.apply_update(
        &raw(&[1, 1, 1, 0, 4, 1, 1, b't', 4, 240, 159, 145, 139, 0]),
        1,
    ));
    let _ = room.apply_update(&raw(&[0, 1, 1, 1, 1, 1]), 1);
    let _ = room.apply_update(&raw(&[0, 1, 1, 1, 0, 1]), 1);
    assert_eq!(text_of(&room.encode_state()), "");
}

#[test]
fn a_half_applied_update_is_still_broadcast() {
    // Client 9 inserts into root "t"; client 5 claims a string item as its parent, which yrs
    // refuses after integrating client 9's run. What the document took in must be emitted.
    let mut room = RoomDoc::new();
    ok(room.apply_update(&upd(text_update_for(1, "abc")), 1));
    let bad = raw(&[
        2, // two clients, descending
        1, 9, 0, 4, 1, 1, b't', 1, b'x', // client 9 @0: "x" into root "t"
        1, 5, 0, 4, 0, 1, 0, 1, b'y', // client 5 @0: "y" with parent ID(1, 0)
        0,
    ]);
    let applied = room.apply_update(&bad, 7);
    assert!(
        matches!(
            applied.refused.as_slice(),
            [(7, yrelay_doc::DocError::Apply(_))]
        ),
        "{:?}",
        applied.refused
    );
    assert_eq!(applied.emitted.len(), 1, "the integrated part is emitted");
    let mut all = vec![text_update_for(1, "abc")];
    all.extend(applied.emitted);
    assert_eq!(text_of_all(&all), text_of(&room.encode_state()));
}

fn text_update_for(client: u64, s: &str) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, s);
    txn.encode_update_v1()
}

#[test]
fn removing_many_awareness_clients_is_linear() {
    let mut room = RoomDoc::new();
    let mut a = Awareness::new(Doc::with_client_id(1));
    a.set_local_state_raw("{}");
    // 20k clients in one update, then removed at once: quadratic removal took seconds here.
    let mut clients = std::collections::HashMap::new();
    for c in 1..=20_000u64 {
        clients.insert(
            yrs::ClientID::new(c),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock: 1,
                json: "{}".into(),
            },
        );
    }
    let update = yrs::sync::awareness::AwarenessUpdate { clients }.encode_v1();
    let change = room
        .apply_awareness(&AwarenessUpdateV1::parse(Bytes::from(update)).unwrap())
        .unwrap();
    assert_eq!(change.added.len(), 20_000);
    let started = std::time::Instant::now();
    let removal = room.remove_awareness(&change.added).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(room.awareness_len(), 0);
    assert_eq!(
        yrs::sync::awareness::AwarenessUpdate::decode_v1(&removal)
            .unwrap()
            .clients
            .len(),
        20_000
    );
}

#[test]
fn outdated_awareness_is_reported() {
    let mut room = RoomDoc::new();
    room.apply_awareness(&awareness_update(5, r#"{"a":1}"#))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(room.outdated_awareness(now, 30_000).is_empty());
    assert_eq!(room.outdated_awareness(now + 30_000, 30_000), vec![5]);
}
