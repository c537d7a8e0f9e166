//! Behaviour of `RoomDoc`: it broadcasts what the document emitted, nothing more.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use yrelay_doc::codec::{AwarenessUpdateV1, StateVectorV1, UpdateV1};
use yrelay_doc::{RoomDoc, ValidateLimits};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

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
    let emitted = room.apply_update(&upd(first.clone())).unwrap();
    assert_eq!(emitted.as_deref(), Some(&first[..]));
}

#[test]
fn duplicate_emits_nothing() {
    let (first, _) = two_updates();
    let mut room = RoomDoc::new();
    room.apply_update(&upd(first.clone())).unwrap();
    assert_eq!(room.apply_update(&upd(first)).unwrap(), None);
}

#[test]
fn missing_dependency_waits_for_the_gap() {
    let (first, second) = two_updates();
    let mut room = RoomDoc::new();
    assert_eq!(room.apply_update(&upd(second)).unwrap(), None);
    let emitted = room.apply_update(&upd(first)).unwrap().unwrap();
    assert_eq!(text_of(&emitted), "abcd");
    assert_eq!(text_of(&room.encode_state()), "abcd");
}

#[test]
fn overlapping_update_emits_only_its_new_part() {
    let (first, second) = two_updates();
    let merged = yrs::merge_updates_v1([&first, &second]).unwrap();
    let mut room = RoomDoc::new();
    room.apply_update(&upd(first.clone())).unwrap();
    let emitted = room.apply_update(&upd(merged)).unwrap().unwrap();
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
    room.apply_update(&upd(first.clone())).unwrap();
    room.apply_update(&upd(second)).unwrap();

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
