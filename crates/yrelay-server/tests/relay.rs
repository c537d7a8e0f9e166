//! The relay over real WebSockets on port 0: protocol behaviour, fan-out, awareness, limits,
//! hostile input, keepalive, shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{
    awareness_entries, awareness_update, text_after, text_update, Client, Msg, TestServer,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrelay_doc::codec::{
    encode_awareness, encode_query_awareness, encode_sync_step1, encode_sync_step2,
    encode_sync_update,
};

#[tokio::test]
async fn handshake_sends_sync_step1_and_answers_sync_step1_with_the_diff() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server.url("hs")).await;
    // First message: the server's (empty) state vector.
    assert_eq!(a.recv().await, Msg::SyncStep1(vec![0]));
    let update = text_update(1, "hello");
    a.send(encode_sync_update(&update)).await;
    assert_eq!(
        a.recv().await,
        Msg::Update(update.clone()),
        "echo to sender"
    );

    // A second client asks with an empty state vector and gets everything.
    let mut b = Client::connect(&server.url("hs")).await;
    match b.recv().await {
        Msg::SyncStep1(sv) => assert_ne!(sv, vec![0], "server state vector must include client 1"),
        other => panic!("unexpected {other:?}"),
    }
    b.send(encode_sync_step1(&[0])).await;
    match b.recv().await {
        Msg::SyncStep2(diff) => assert_eq!(text_after(&[diff]), "hello"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn updates_fan_out_to_every_connection_of_the_room_only() {
    let server = TestServer::start().await;
    let mut a = Client::join(&server.url("fan")).await;
    let mut b = Client::join(&server.url("fan")).await;
    let mut other = Client::join(&server.url("other-room")).await;
    let update = text_update(7, "xyz");
    a.send(encode_sync_update(&update)).await;
    assert_eq!(a.recv().await, Msg::Update(update.clone()));
    assert_eq!(b.recv().await, Msg::Update(update.clone()));
    other.expect_silence(Duration::from_millis(300)).await;

    // A SyncStep2 carrying new content is broadcast as an ordinary Update.
    let second = text_update(8, "!");
    b.send(encode_sync_step2(&second)).await;
    assert_eq!(a.recv().await, Msg::Update(second.clone()));
    assert_eq!(b.recv().await, Msg::Update(second));

    // A duplicate is not broadcast at all.
    a.send(encode_sync_update(&update)).await;
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn update_with_missing_dependency_is_broadcast_once_the_gap_is_filled() {
    use yrs::{Doc, Text, Transact};
    let server = TestServer::start().await;
    let mut a = Client::join(&server.url("gap")).await;
    let doc = Doc::with_client_id(3);
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
    a.send(encode_sync_update(&second)).await;
    a.expect_silence(Duration::from_millis(300)).await;
    a.send(encode_sync_update(&first)).await;
    match a.recv().await {
        Msg::Update(u) => assert_eq!(text_after(&[u]), "abcd"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn awareness_is_broadcast_sent_to_newcomers_and_removed_on_disconnect() {
    let server = TestServer::start().await;
    let mut a = Client::join(&server.url("aw")).await;
    let mut b = Client::join(&server.url("aw")).await;
    a.send(encode_awareness(&awareness_update(
        11,
        1,
        r#"{"user":"ann"}"#,
    )))
    .await;
    for c in [&mut a, &mut b] {
        match c.recv().await {
            Msg::Awareness(u) => {
                assert_eq!(
                    awareness_entries(&u),
                    vec![(11, 1, r#"{"user":"ann"}"#.into())]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // A newcomer gets SyncStep1, then the current awareness states.
    let mut c = Client::connect(&server.url("aw")).await;
    assert!(matches!(c.recv().await, Msg::SyncStep1(_)));
    match c.recv().await {
        Msg::Awareness(u) => assert_eq!(awareness_entries(&u)[0].0, 11),
        other => panic!("unexpected {other:?}"),
    }

    // Query awareness is answered with all states.
    b.send(encode_query_awareness()).await;
    match b.recv().await {
        Msg::Awareness(u) => assert_eq!(awareness_entries(&u).len(), 1),
        other => panic!("unexpected {other:?}"),
    }

    // A leaves without saying anything: its state is removed (null, clock + 1) for the others.
    a.ws.close(None).await.unwrap();
    for c in [&mut b, &mut c] {
        match c.recv().await {
            Msg::Awareness(u) => assert_eq!(awareness_entries(&u), vec![(11, 2, "null".into())]),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Nobody is present any more: query awareness gets no answer.
    b.send(encode_query_awareness()).await;
    b.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn hostile_frames_close_only_their_connection() {
    let server = TestServer::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let url = server.url("hostile");
    let mut good = Client::join(&url).await;

    let cases: Vec<(&str, Message, u16)> = vec![
        ("text frame", Message::Text("hello".into()), 1003),
        ("truncated varint", Message::Binary(vec![0x80].into()), 1007),
        (
            "truncated sync",
            Message::Binary(vec![0, 2, 10, 1].into()),
            1007,
        ),
        (
            "memory bomb update",
            Message::Binary(encode_sync_update(&[144, 243, 243, 59])),
            1007,
        ),
        (
            "client id 2^53",
            Message::Binary(encode_awareness(&{
                let mut v = vec![1];
                // varuint 2^53
                let mut n: u64 = 1 << 53;
                while n >= 0x80 {
                    v.push((n as u8 & 0x7f) | 0x80);
                    n >>= 7;
                }
                v.push(n as u8);
                v.extend_from_slice(&[1, 2, b'{', b'}']);
                v
            })),
            1007,
        ),
        (
            "invalid awareness json",
            Message::Binary(encode_awareness(&awareness_update(5, 1, "{nope"))),
            1007,
        ),
        (
            "unknown sync subtype",
            Message::Binary(vec![0, 9, 0].into()),
            1007,
        ),
        (
            "oversized",
            Message::Binary(vec![0u8; 100 * 1024].into()),
            1009,
        ),
    ];
    for (name, frame, code) in cases {
        let mut bad = Client::join(&url).await;
        bad.ws.send(frame).await.unwrap();
        let (got, reason) = bad.expect_close().await;
        assert_eq!(got, code, "{name}: reason {reason:?}");
        assert!(!reason.is_empty() || code == 1000, "{name}: empty reason");
    }

    // Unknown message types are ignored, not fatal.
    let mut odd = Client::join(&url).await;
    odd.send(vec![42u8, 1, 2, 3]).await;

    // The room still works for everybody.
    let update = text_update(99, "still fine");
    good.send(encode_sync_update(&update)).await;
    assert_eq!(good.recv().await, Msg::Update(update.clone()));
    assert_eq!(odd.recv().await, Msg::Update(update));
}

#[tokio::test]
async fn bad_room_names_are_refused_with_400() {
    let server = TestServer::start().await;
    for path in ["", "%FF", "a%0Ab", &"x".repeat(300)] {
        let url = format!("ws://{}/{}", server.addr, path);
        let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 400, "path {path:?}");
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("room name"), "path {path:?}: body {body:?}");
            }
            other => panic!("path {path:?}: expected HTTP 400, got {other:?}"),
        }
    }
    // Names the official client sends unencoded are accepted (spaces, slashes, Unicode).
    let mut c = Client::connect(&format!("ws://{}/team%20a/doc%C3%A9?token=x", server.addr)).await;
    assert!(matches!(c.recv().await, Msg::SyncStep1(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_1013_and_others_continue() {
    let server = TestServer::start_with(|c| {
        c.limits.max_message_bytes = 16 * 1024;
        c.limits.outbound_queue_bytes = 1024 * 1024;
        c.limits.outbound_queue_frames = 256;
        // This test is about queue overflow: keep the close handshake waiting until the slow
        // client reads again, and skip the per-update fsync to keep it quick.
        c.timeouts.write_ms = 120_000;
        c.persistence.durability = yrelay_server::config::Durability::Batched;
    })
    .await;
    let url = server.url("slow");
    let mut writer = Client::join(&url).await;
    let mut slow = Client::join(&url).await;
    // `slow` stops reading. `writer` waits for the echo of each update before sending the
    // next, so it never lags; it pushes ~15 MB, far more than the kernel socket buffers can
    // hold for `slow`.
    for i in 0..1500u64 {
        let update = text_update(1000 + i, &"x".repeat(10_000));
        writer.send(encode_sync_update(&update)).await;
        assert_eq!(writer.recv().await, Msg::Update(update), "update {i}");
    }
    let (code, reason) = slow.expect_close().await;
    assert_eq!(code, 1013, "reason {reason:?}");
}

#[tokio::test]
async fn idle_client_gets_keepalives_and_dead_peer_is_closed() {
    let server = TestServer::start_with(|c| {
        c.timeouts.keepalive_interval_ms = 200;
        c.timeouts.ping_interval_ms = 300;
        c.timeouts.pong_timeout_ms = 300;
    })
    .await;
    // An idle but healthy client hears from the server well within 30 s (here: 200 ms).
    let mut idle = Client::join(&server.url("ka")).await;
    let next = tokio::time::timeout(Duration::from_secs(2), idle.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&next, Message::Binary(b) if &b[..] == yrelay_doc::codec::KEEPALIVE_FRAME)
            || next.is_ping(),
        "got {next:?}"
    );

    // The healthy client keeps reading (so its transport answers pings) for the whole test.
    let healthy = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut seen = 0;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, idle.ws.next()).await {
            let msg = msg.unwrap();
            assert!(!msg.is_close(), "healthy client was closed: {msg:?}");
            seen += 1;
        }
        seen
    });

    // A client that stops reading never answers pings: after ping + pong timeout it is closed.
    let mut dead = Client::join(&server.url("ka")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, _) = dead.expect_close().await;
    assert_eq!(code, 4000);
    assert!(
        healthy.await.unwrap() >= 3,
        "keepalives and pings keep arriving"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let mut server = TestServer::start().await;
    let mut a = Client::join(&server.url("bye")).await;
    let stopping = tokio::spawn(async move {
        server.stop().await;
    });
    let (code, _) = a.expect_close().await;
    assert_eq!(code, 1001);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_room_is_evicted_and_a_new_join_starts_fresh() {
    let server = TestServer::start_with(|c| c.timeouts.room_idle_ms = 100).await;
    let url = server.url("evict");
    // Join/leave races with eviction: every join must get a working room.
    for i in 0..20u64 {
        let mut c = Client::join(&url).await;
        let update = text_update(500 + i, "x");
        c.send(encode_sync_update(&update)).await;
        assert_eq!(c.recv().await, Msg::Update(update));
        c.ws.close(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 5 } else { 150 })).await;
    }
}

#[tokio::test]
async fn a_reconnected_client_id_is_removed_again_when_it_leaves() {
    let server = TestServer::start().await;
    let url = server.url("ghost");
    let mut observer = Client::join(&url).await;
    for (clock, removed_clock) in [(1, 2), (3, 4)] {
        // The same client ID (an official client keeps its doc across reconnects).
        let mut a = Client::join(&url).await;
        a.send(encode_awareness(&awareness_update(
            11,
            clock,
            r#"{"u":"ann"}"#,
        )))
        .await;
        assert!(matches!(observer.recv().await, Msg::Awareness(_)));
        a.ws.close(None).await.unwrap();
        match observer.recv().await {
            Msg::Awareness(u) => {
                assert_eq!(
                    awareness_entries(&u),
                    vec![(11, removed_clock, "null".into())]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A newcomer sees nobody.
    let mut late = Client::connect(&url).await;
    assert!(matches!(late.recv().await, Msg::SyncStep1(_)));
    late.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn one_connection_cannot_speak_for_too_many_awareness_clients() {
    let server = TestServer::start_with(|c| c.limits.max_awareness_clients_per_conn = 2).await;
    let url = server.url("cap");
    let mut observer = Client::join(&url).await;
    let mut greedy = Client::join(&url).await;
    greedy
        .send(encode_awareness(&awareness_update(1, 1, "{}")))
        .await;
    greedy
        .send(encode_awareness(&awareness_update(2, 1, "{}")))
        .await;
    greedy
        .send(encode_awareness(&awareness_update(3, 1, "{}")))
        .await;
    let (code, reason) = greedy.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    // The observer saw 1 and 2 arrive, never 3, then both removed.
    let mut present = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 || !present.is_empty() {
        match observer.recv().await {
            Msg::Awareness(u) => {
                for (id, _, state) in awareness_entries(&u) {
                    assert_ne!(id, 3, "client 3 was applied");
                    seen.insert(id);
                    if state == "null" {
                        present.remove(&id);
                    } else {
                        present.insert(id);
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn large_presence_does_not_lock_newcomers_out() {
    let server = TestServer::start_with(|c| {
        c.limits.max_message_bytes = 64 * 1024;
        c.limits.outbound_queue_bytes = 64 * 1024;
    })
    .await;
    let url = server.url("big-presence");
    let mut holders = Vec::new();
    for id in 1..=3u64 {
        let mut c = Client::join(&url).await;
        let state = format!(r#"{{"blob":"{}"}}"#, "x".repeat(30_000));
        c.send(encode_awareness(&awareness_update(id, 1, &state)))
            .await;
        holders.push(c);
    }
    // Make sure all three states are in the room.
    let mut first = Client::join(&url).await;
    first.send(encode_query_awareness()).await;
    loop {
        if let Msg::Awareness(u) = first.recv().await {
            if awareness_entries(&u).len() == 3 {
                break;
            }
        }
    }
    // ~90 KB of presence is more than the 64 KiB queue budget: the greeting still arrives.
    let mut late = Client::connect(&url).await;
    assert!(matches!(late.recv().await, Msg::SyncStep1(_)));
    match late.recv().await {
        Msg::Awareness(u) => assert_eq!(awareness_entries(&u).len(), 3),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn presence_that_is_not_renewed_expires() {
    let server = TestServer::start_with(|c| c.timeouts.awareness_timeout_ms = 300).await;
    let url = server.url("expire");
    let mut a = Client::join(&url).await;
    let mut b = Client::join(&url).await;
    a.send(encode_awareness(&awareness_update(21, 1, "{}")))
        .await;
    assert!(matches!(b.recv().await, Msg::Awareness(_)));
    // A stays connected but never renews: after ~300 ms everyone hears of the removal.
    match b.recv().await {
        Msg::Awareness(u) => assert_eq!(awareness_entries(&u), vec![(21, 2, "null".into())]),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.timeouts.http_header_ms = 200).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the server kept a half-sent request open (or reset it): {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_inbox_byte_budget_slows_senders_without_losing_anything() {
    // Room inbox of 16 KiB: at most one 10 KB update waits for the room at a time.
    let server = TestServer::start_with(|c| {
        c.limits.max_message_bytes = 16 * 1024;
        c.limits.room_inbox_bytes = 16 * 1024;
    })
    .await;
    let url = server.url("inbox");
    let (mut a, mut b) = (Client::join(&url).await, Client::join(&url).await);
    let (mut sink, _) =
        futures_util::StreamExt::split(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    let updates: Vec<Vec<u8>> = (0..200u64)
        .map(|i| text_update(3000 + i, &"z".repeat(10_000)))
        .collect();
    let to_send = updates.clone();
    let sender = tokio::spawn(async move {
        for u in to_send {
            sink.send(Message::Binary(encode_sync_update(&u)))
                .await
                .unwrap();
        }
        sink
    });
    for c in [&mut a, &mut b] {
        for (i, u) in updates.iter().enumerate() {
            assert_eq!(c.recv().await, Msg::Update(u.clone()), "update {i}");
        }
    }
    drop(sender.await.unwrap());
}
