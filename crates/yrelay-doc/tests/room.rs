//! Behaviour of `RoomDoc`: it broadcasts what the document emitted, nothing more.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use proptest::prelude::*;
use yrelay_doc::codec::{AwarenessUpdateV1, StateVectorV1, UpdateV1};
use yrelay_doc::{RoomDoc, ValidateLimits};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

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

// `would_change`: a read-only connection's no-op SyncStep2 must pass, any real edit must not.

/// A client that typed "hello world", deleted "o w" and set a map key, in three transactions;
/// returns it with its updates.
fn edited_client() -> (Doc, Vec<Vec<u8>>) {
    let doc = Doc::with_client_id(11);
    let t = doc.get_or_insert_text("t");
    let m = doc.get_or_insert_map("m");
    let mut updates = Vec::new();
    for step in 0..3 {
        let mut txn = doc.transact_mut();
        match step {
            0 => t.insert(&mut txn, 0, "hello world"),
            1 => t.remove_range(&mut txn, 4, 3),
            _ => {
                m.insert(&mut txn, "k", 1i64);
            }
        }
        updates.push(txn.encode_update_v1());
    }
    (doc, updates)
}

fn full_state_of(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

#[test]
fn would_change_ignores_what_the_room_already_has() {
    let (client, updates) = edited_client();
    let mut room = RoomDoc::new();
    for u in &updates {
        ok(room.apply_update(&upd(u.clone()), 1));
    }
    // The empty update.
    assert!(!room.would_change(&raw(&[0, 0])));
    // The client's whole state, deletions included, and every update it sent.
    assert!(!room.would_change(&upd(full_state_of(&client))));
    for u in &updates {
        assert!(!room.would_change(&upd(u.clone())));
    }
    // What an official client sends as SyncStep2: its state beyond the room's state vector,
    // with its whole delete set (no blocks, known deletions).
    let room_sv = StateVector::decode_v1(&room.state_vector()).unwrap();
    let step2 = client.transact().encode_state_as_update_v1(&room_sv);
    assert!(!room.would_change(&upd(step2)));
}

#[test]
fn would_change_ignores_a_viewer_that_is_behind() {
    let (_, updates) = edited_client();
    let mut room = RoomDoc::new();
    for u in &updates {
        ok(room.apply_update(&upd(u.clone()), 1));
    }
    // A viewer that only has the first update (no deletions) and one that has the first two.
    for known in 1..=2 {
        let viewer = Doc::with_client_id(12);
        for u in &updates[..known] {
            viewer
                .transact_mut()
                .apply_update(Update::decode_v1(u).unwrap())
                .unwrap();
        }
        let room_sv = StateVector::decode_v1(&room.state_vector()).unwrap();
        let step2 = viewer.transact().encode_state_as_update_v1(&room_sv);
        assert!(!room.would_change(&upd(step2)), "viewer with {known}");
        // A diff against an older state vector, which the room already has.
        let old_sv = viewer.transact().state_vector();
        let diff = room.diff_sv(&StateVector::default());
        assert!(!room.would_change(&upd(diff)));
        let partial = room.diff_sv(&old_sv);
        assert!(!room.would_change(&upd(partial)));
    }
}

#[test]
fn would_change_sees_new_blocks_and_new_deletions() {
    let (client, updates) = edited_client();
    let mut room = RoomDoc::new();
    for u in &updates {
        ok(room.apply_update(&upd(u.clone()), 1));
    }
    let t = client.get_or_insert_text("t");
    // A new insertion.
    let insertion = {
        let mut txn = client.transact_mut();
        t.insert(&mut txn, 0, "!");
        txn.encode_update_v1()
    };
    assert!(room.would_change(&upd(insertion.clone())));
    ok(room.apply_update(&upd(insertion), 1));
    // A deletion of text the room has and has not deleted: no block, one new delete range.
    let deletion = {
        let mut txn = client.transact_mut();
        t.remove_range(&mut txn, 1, 2);
        txn.encode_update_v1()
    };
    assert_eq!(deletion[0], 0, "a pure deletion carries no blocks");
    assert!(room.would_change(&upd(deletion.clone())));
    // The client's full state now holds that deletion too.
    assert!(room.would_change(&upd(full_state_of(&client))));
    ok(room.apply_update(&upd(deletion.clone()), 1));
    assert!(!room.would_change(&upd(deletion)));
    assert!(!room.would_change(&upd(full_state_of(&client))));
    // Client 11's clocks: 0..11 "hello world", 11 the map entry, 12 "!"; deleted are 0..2
    // ("he", just now) and 4..7 ("o w"). A deletion partly covered is still a change.
    assert!(room.would_change(&raw(&[0, 1, 11, 1, 3, 5])));
    assert!(!room.would_change(&raw(&[0, 1, 11, 2, 0, 2, 4, 3])));
    assert!(!room.would_change(&raw(&[0, 1, 11, 1, 4, 3])));
    // Deletions of clocks the room does not hold yet.
    assert!(room.would_change(&raw(&[0, 1, 11, 1, 100, 1])));
    assert!(room.would_change(&raw(&[0, 1, 99, 1, 0, 1])));
}

#[test]
fn would_change_walks_unsorted_overlapping_ranges() {
    // Client 1 typed 10 characters; the room deleted 2..4 and 6..9.
    let doc = Doc::with_client_id(1);
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, "0123456789");
    t.remove_range(&mut doc.transact_mut(), 6, 3);
    t.remove_range(&mut doc.transact_mut(), 2, 2);
    let mut room = RoomDoc::new();
    ok(room.apply_update(&upd(full_state_of(&doc)), 1));
    // Hand-written delete sets: [0 clients][1 client: 1][n ranges][clock len]...
    let ds = |ranges: &[(u8, u8)]| {
        let mut b = vec![0, 1, 1, ranges.len() as u8];
        for &(clock, len) in ranges {
            b.extend_from_slice(&[clock, len]);
        }
        raw(&b)
    };
    assert!(!room.would_change(&ds(&[(6, 3), (2, 2)])));
    assert!(!room.would_change(&ds(&[(7, 1), (2, 1), (6, 2), (3, 1), (6, 3)])));
    assert!(room.would_change(&ds(&[(6, 3), (2, 3)])));
    assert!(room.would_change(&ds(&[(2, 2), (5, 2)])));
    assert!(room.would_change(&ds(&[(6, 3), (2, 2), (0, 1)])));
    // Adjacent ranges that span two deleted runs with a live clock between them.
    assert!(room.would_change(&ds(&[(2, 2), (4, 2), (6, 3)])));
}

#[test]
fn would_change_counts_a_held_back_update() {
    let (first, second) = two_updates();
    let mut room = RoomDoc::new();
    let gapped = upd(second);
    assert!(room.would_change(&gapped));
    assert_eq!(ok(room.apply_update(&gapped, 1)), None);
    assert!(room.pending_bytes() > 0);
    // Still a change while it waits: the document does not hold it.
    assert!(room.would_change(&gapped));
    let applied = room.apply_update(&upd(first), 1);
    assert!(applied.refused.is_empty());
    assert_eq!(room.pending_bytes(), 0);
    assert!(!room.would_change(&gapped));
}

/// Whether applying `update` to a copy of `room` changes anything: emits a transaction or
/// holds the update back.
fn changes_a_copy(room: &RoomDoc, update: &UpdateV1) -> bool {
    let mut copy = RoomDoc::new();
    let applied = copy.apply_update(&upd(room.encode_state()), 0);
    assert!(applied.refused.is_empty());
    let applied = copy.apply_update(update, 1);
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    !applied.emitted.is_empty() || copy.pending_bytes() > 0
}

#[derive(Debug, Clone)]
enum Step {
    /// Client `.0` edits: insert at / delete at `.1` (by `.2`), or sets a map key.
    Edit(usize, u32, u8),
    /// The room receives client `.0`'s next unsent update.
    Deliver(usize),
    /// Client `.0` pulls everything from the room.
    Pull(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against an oracle (apply to a copy and look): `would_change` is exact for what honest
    /// clients send — their incremental updates and their SyncStep2 — however far ahead of or
    /// behind the room they are.
    #[test]
    fn would_change_matches_applying_to_a_copy(steps in proptest::collection::vec(
        prop_oneof![
            3 => (0..3usize, 0..40u32, 0..3u8).prop_map(|(c, at, k)| Step::Edit(c, at, k)),
            2 => (0..3usize).prop_map(Step::Deliver),
            1 => (0..3usize).prop_map(Step::Pull),
        ],
        1..40,
    )) {
        let clients: Vec<Doc> = (1..=3u64).map(Doc::with_client_id).collect();
        let mut outbox: Vec<std::collections::VecDeque<Vec<u8>>> = vec![Default::default(); 3];
        let mut room = RoomDoc::new();
        for step in &steps {
            match *step {
                Step::Edit(c, at, kind) => {
                    let doc = &clients[c];
                    let t = doc.get_or_insert_text("t");
                    let m = doc.get_or_insert_map("m");
                    let mut txn = doc.transact_mut();
                    let len = t.len(&txn);
                    match kind {
                        0 => t.insert(&mut txn, at % (len + 1), "ab"),
                        1 if len > 0 => t.remove_range(&mut txn, at % len, 1.min(len - at % len)),
                        _ => {
                            m.insert(&mut txn, format!("k{}", at % 3), at);
                        }
                    }
                    let u = txn.encode_update_v1();
                    drop(txn);
                    outbox[c].push_back(u);
                }
                Step::Deliver(c) => {
                    if let Some(u) = outbox[c].pop_front() {
                        let u = upd(u);
                        prop_assert_eq!(room.would_change(&u), changes_a_copy(&room, &u));
                        let applied = room.apply_update(&u, 1);
                        prop_assert!(applied.refused.is_empty());
                    }
                }
                Step::Pull(c) => {
                    let sv = clients[c].transact().state_vector();
                    let diff = room.diff_sv(&sv);
                    clients[c]
                        .transact_mut()
                        .apply_update(Update::decode_v1(&diff).unwrap())
                        .unwrap();
                }
            }
            let room_sv = StateVector::decode_v1(&room.state_vector()).unwrap();
            for client in &clients {
                let step2 = upd(client.transact().encode_state_as_update_v1(&room_sv));
                prop_assert_eq!(room.would_change(&step2), changes_a_copy(&room, &step2));
            }
        }
    }
}
