//! Hot path of a room: decode + validate a client frame, apply it to the room's document,
//! frame what the document emitted for broadcast.
//!
//! `cargo bench -p yrelay-doc --bench apply`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use yrelay_doc::codec::{broadcast_frame, encode_sync_update};
use yrelay_doc::{decode_client_message, ClientMessage, RoomDoc, ValidateLimits};
use yrs::{Doc, Text, Transact};

/// `n` one-character typing updates from one client, as a text editor sends them.
fn typing_frames(n: usize) -> Vec<Bytes> {
    let doc = Doc::with_client_id(42);
    let text = doc.get_or_insert_text("content");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i as u32, "x");
            encode_sync_update(&txn.encode_update_v1())
        })
        .collect()
}

/// What a room does per incoming frame: decode, validate, apply, frame the broadcast.
fn relay_all(mut room: RoomDoc, frames: &[Bytes], limits: &ValidateLimits) -> RoomDoc {
    for f in frames {
        let ClientMessage::Update(u) = decode_client_message(f, limits).unwrap() else {
            unreachable!()
        };
        let applied = room.apply_update(&u, 1);
        criterion::black_box(broadcast_frame(f, &applied.emitted[0]));
    }
    room
}

fn bench(c: &mut Criterion) {
    let limits = ValidateLimits::default();
    let frames = typing_frames(1_000);
    let mut group = c.benchmark_group("room");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("decode_validate_1000_typing_frames", |b| {
        b.iter(|| {
            for f in &frames {
                decode_client_message(f, &limits).unwrap();
            }
        })
    });
    group.bench_function("decode_apply_broadcast_1000_typing_updates", |b| {
        b.iter_batched(
            RoomDoc::new,
            |room| relay_all(room, &frames, &limits),
            BatchSize::SmallInput,
        )
    });
    // The same typing into a document that 1000 other clients edited before (a long-lived
    // room): the per-update cost that grows with the document's client count.
    let seeded = || {
        let mut room = RoomDoc::new();
        for client in 0..1000u64 {
            let doc = Doc::with_client_id(10_000 + client);
            let text = doc.get_or_insert_text("other");
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "y");
            let frame = encode_sync_update(&txn.encode_update_v1());
            let ClientMessage::Update(u) = decode_client_message(&frame, &limits).unwrap() else {
                unreachable!()
            };
            let _ = room.apply_update(&u, 1);
        }
        room
    };
    group.bench_function(
        "decode_apply_broadcast_1000_typing_updates_1000_client_doc",
        |b| {
            b.iter_batched(
                seeded,
                |room| relay_all(room, &frames, &limits),
                BatchSize::LargeInput,
            )
        },
    );
    group.finish();

    let big = {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("content");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &"lorem ipsum ".repeat(400_000));
        encode_sync_update(&txn.encode_update_v1())
    };
    let mut group = c.benchmark_group("large");
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.sample_size(10);
    group.bench_function("decode_apply_4.8MB_paste", |b| {
        b.iter_batched(
            RoomDoc::new,
            |mut room| {
                let ClientMessage::Update(u) = decode_client_message(&big, &limits).unwrap() else {
                    unreachable!()
                };
                let _ = room.apply_update(&u, 1);
                room
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
