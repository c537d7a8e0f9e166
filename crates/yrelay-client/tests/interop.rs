//! The Rust client against a real yrelay server (in process, on a free loopback port) and
//! the official JS client (yjs + y-websocket under Node, `tests/compat/puppet.mjs` of the
//! server crate).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../yrelay-server/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::puppet::{compat_dir, Puppet};
use common::TestServer;
use serde_json::{json, Value};
use yrelay_client::{
    Backoff, Client, ClientConfig, ClientError, Endpoint, Event, RestClient, Status, Transport,
};
use yrelay_server::auth::Secret;
use yrs::Map;

const HINT: &str = "install Node.js and npm; `.ci/run` does";
const SECRET: &str = "client-test-secret-that-is-long-enough-0123";
const ADMIN: &str = "client-test-admin-key-0123456789";
const CONVERGE: Duration = Duration::from_secs(30);

/// Node and the npm packages, or false after a SKIPPED line.
fn js_available(test: &str) -> bool {
    if common::find_on_path("node").is_none() {
        common::skip_or_fail(test, "`node` not found on PATH", HINT);
        return false;
    }
    if let Err(reason) = common::ensure_compat_packages(&compat_dir()) {
        common::skip_or_fail(test, &reason, HINT);
        return false;
    }
    true
}

/// Runs blocking puppet calls without stalling the runtime's other tasks (the server).
fn js<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    }
}

/// Polls `check` (off the runtime's threads) until it holds or `CONVERGE` passes.
async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let outcome = js(&mut check);
        match outcome {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Each token exactly once in `text`.
fn holds_each_once(text: &str, tokens: &[&str]) -> bool {
    tokens.iter().all(|t| text.matches(t).count() == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_and_official_js_clients_converge_both_ways_with_presence() {
    if !js_available("rust_and_official_js_clients_converge_both_ways_with_presence") {
        return;
    }
    let mut server = TestServer::start().await;
    let url = format!("ws://{}", server.addr);
    let replica = tempfile::tempdir().unwrap();
    let client = Client::open(
        ClientConfig::new("interop")
            .server(&url)
            .replica(replica.path()),
    )
    .await
    .unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    client
        .set_local_awareness(Some(json!({ "user": { "name": "rust" } })))
        .unwrap();

    let mut puppet = js(|| Puppet::start(&url, "interop", "js"));
    js(|| puppet.wait_synced());

    // Rust → JS and JS → Rust, text and map.
    client.append_text("t", "[rust]").unwrap();
    let map = client.doc().get_or_insert_map("m");
    client
        .edit(|txn| {
            map.insert(txn, "from-rust", "1");
        })
        .unwrap();
    js(|| {
        puppet.insert("[js]");
        puppet.set("from-js", "2");
    });

    eventually("both clients to hold both edits", || {
        let report = puppet.report();
        let rust_json = client.to_json();
        let js_text = report["text"].as_str().unwrap_or_default().to_owned();
        let ok = holds_each_once(&js_text, &["[rust]", "[js]"])
            && js_text == client.text("t")
            && report["map"] == json!({ "from-rust": "1", "from-js": "2" })
            && rust_json["m"] == report["map"];
        if ok {
            Ok(())
        } else {
            Err(format!("js: {report}; rust: {rust_json}"))
        }
    })
    .await;

    // Presence both ways: the JS client sees "rust", the Rust client sees "js".
    eventually("presence both ways", || {
        let peers = puppet.report()["peers"].clone();
        let names: Vec<Value> = client
            .awareness_states()
            .into_iter()
            .filter(|(id, _)| *id != client.client_id())
            .map(|(_, s)| s["user"]["name"].clone())
            .collect();
        if peers == json!(["rust"]) && names == vec![json!("js")] {
            Ok(())
        } else {
            Err(format!("js sees {peers}; rust sees {names:?}"))
        }
    })
    .await;

    // A clean close removes the Rust client's presence on the other side.
    client.close().await.unwrap();
    eventually("the Rust client's presence to go", || {
        let peers = puppet.report()["peers"].clone();
        if peers == json!([]) {
            Ok(())
        } else {
            Err(peers.to_string())
        }
    })
    .await;
    drop(puppet);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_edits_survive_a_restart_and_sync_both_ways_when_the_server_returns() {
    if !js_available("offline_edits_survive_a_restart_and_sync_both_ways_when_the_server_returns") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let dir = data_dir.clone();
    let mut server = TestServer::start_with(move |c| c.data_dir = dir).await;
    let addr = server.addr;
    let url = format!("ws://{addr}");
    let replica = tempfile::tempdir().unwrap();
    let config = ClientConfig {
        backoff: fast_backoff(),
        ..ClientConfig::new("offline")
            .server(&url)
            .replica(replica.path())
    };

    let client = Client::open(config.clone()).await.unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    client.append_text("t", "[online]").unwrap();
    let mut watcher = js(|| Puppet::start(&url, "offline", "watcher"));
    eventually("the online edit to reach JS", || {
        let text = watcher.text();
        (text == "[online]").then_some(()).ok_or(text)
    })
    .await;
    drop(watcher);

    // The server goes away; the client notices and keeps editing into its replica.
    let mut events = client.events();
    server.stop().await;
    let deadline = Instant::now() + CONVERGE;
    while client.status() != Status::Offline && client.status() != Status::Connecting {
        assert!(
            Instant::now() < deadline,
            "client never noticed the server left"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    }
    client.append_text("t", "[offline-1]").unwrap();

    // The app restarts while the server is still down: the replica has everything.
    client.close().await.unwrap();
    let client = Client::open(config.clone()).await.unwrap();
    assert_eq!(client.text("t"), "[online][offline-1]");
    client.append_text("t", "[offline-2]").unwrap();
    assert!(
        client
            .wait_synced(Duration::from_millis(300))
            .await
            .is_err(),
        "synced with a server that is down"
    );

    // The server comes back on the same port and data; a JS client edits there.
    let dir = data_dir.clone();
    let mut server = TestServer::start_with(move |c| {
        c.data_dir = dir;
        c.listen = addr;
    })
    .await;
    let mut js_client = js(|| Puppet::start(&url, "offline", "js"));
    js(|| {
        js_client.wait_synced();
        js_client.insert("[js-meanwhile]");
    });

    // The Rust client reconnects by itself (backoff) and both sides converge.
    client.wait_synced(CONVERGE).await.unwrap();
    let tokens = ["[online]", "[offline-1]", "[offline-2]", "[js-meanwhile]"];
    eventually("the JS and Rust clients to converge", || {
        let js_text = js_client.text();
        let rust_text = client.text("t");
        if js_text == rust_text && holds_each_once(&js_text, &tokens) {
            Ok(())
        } else {
            Err(format!("js {js_text:?}, rust {rust_text:?}"))
        }
    })
    .await;
    // The JS edit is in the replica too: a reopened client shows it with no server.
    let final_text = client.text("t");
    client.close().await.unwrap();
    let offline = Client::open(ClientConfig::new("offline").replica(replica.path()))
        .await
        .unwrap();
    assert_eq!(offline.text("t"), final_text);
    drop(js_client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_client_without_retrying() {
    let mut server = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(Secret::new(SECRET));
        c.auth.admin_key = Some(Secret::new(ADMIN));
    })
    .await;
    let url = format!("ws://{}", server.addr);
    let client = Client::open(ClientConfig {
        backoff: fast_backoff(),
        ..ClientConfig::new("guarded").server(&url).token("not-a-jwt")
    })
    .await
    .unwrap();
    let mut events = client.events();
    let err = client
        .wait_synced(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused(_)), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(client.status(), Status::Offline);
    // Whatever was emitted up to the refusal, then nothing: no retry.
    while events.try_recv().is_ok() {}
    let more = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    assert!(
        !matches!(more, Ok(Ok(Event::Status(Status::Connecting)))),
        "retried after a refusal: {more:?}"
    );

    // A token minted by the admin API is accepted.
    let endpoint = Endpoint::parse(&url).unwrap();
    let admin = RestClient::new(&endpoint, Some(ADMIN.to_owned()), None).unwrap();
    let token = admin
        .mint_token("guarded", "editor", "rust", Some(600))
        .await
        .unwrap();
    let client = Client::open(ClientConfig::new("guarded").server(&url).token(token))
        .await
        .unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_transport_converges_with_a_websocket_client() {
    if !js_available("the_http_transport_converges_with_a_websocket_client") {
        return;
    }
    let mut server = TestServer::start().await;
    let url = format!("ws://{}", server.addr);
    let http_url = format!("http://{}", server.addr);
    let replica = tempfile::tempdir().unwrap();
    let client = Client::open(
        ClientConfig::new("polled")
            .server(&http_url)
            .replica(replica.path())
            .transport(Transport::Http {
                poll: Duration::from_millis(200),
            }),
    )
    .await
    .unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    let mut puppet = js(|| Puppet::start(&url, "polled", "js"));
    js(|| puppet.wait_synced());
    client.append_text("t", "[http]").unwrap();
    js(|| puppet.insert("[ws]"));
    eventually("HTTP and WebSocket clients to converge", || {
        let js_text = puppet.text();
        let rust_text = client.text("t");
        if js_text == rust_text && holds_each_once(&js_text, &["[http]", "[ws]"]) {
            Ok(())
        } else {
            Err(format!("js {js_text:?}, rust {rust_text:?}"))
        }
    })
    .await;
    client.close().await.unwrap();
    drop(puppet);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replica_moves_only_what_each_side_lacks() {
    let mut server = TestServer::start().await;
    let endpoint = Endpoint::parse(&format!("http://{}", server.addr)).unwrap();
    let rest = RestClient::new(&endpoint, None, None).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Offline edits into a replica.
    let offline = Client::open(ClientConfig::new("notes").replica(dir.path()))
        .await
        .unwrap();
    offline.append_text("content", "offline ").unwrap();
    offline.close().await.unwrap();
    // Someone else writes on the server meanwhile.
    let other = Client::open(ClientConfig::new("notes").server(format!("ws://{}", server.addr)))
        .await
        .unwrap();
    other.wait_synced(Duration::from_secs(10)).await.unwrap();
    other.append_text("other", "server side").unwrap();
    let expected_other = "server side";
    // Wait until the server holds it (the JSON route reads the room).
    let deadline = Instant::now() + CONVERGE;
    while rest.json("notes").await.unwrap()["other"] != json!(expected_other) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.close().await.unwrap();

    let replica = yrelay_client::Replica::open(dir.path()).unwrap();
    let first = yrelay_client::sync_replica(&rest, &replica, "notes")
        .await
        .unwrap();
    assert!(
        first.sent_bytes > 0 && first.received_bytes > 0,
        "{first:?}"
    );
    let again = yrelay_client::sync_replica(&rest, &replica, "notes")
        .await
        .unwrap();
    assert_eq!((again.sent_bytes, again.received_bytes), (0, 0));
    let doc = replica.load("notes").unwrap();
    let json = yrelay_doc::json::doc_to_json(&doc);
    assert_eq!(
        json,
        json!({ "content": "offline ", "other": "server side" })
    );
    assert_eq!(
        rest.json("notes").await.unwrap(),
        json!({ "content": "offline ", "other": "server side" })
    );
    server.stop().await;
}
