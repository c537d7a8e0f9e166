//! Durability with a real process: SIGKILL in `fsync` and `batched` mode, SIGTERM, and a
//! large room that must never be served before it has loaded.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{text_after, Client, Msg};
use yrelay_doc::codec::{encode_sync_step1, encode_sync_update};

const BIN: &str = env!("CARGO_BIN_EXE_yrelay");

struct Proc {
    child: Child,
    addr: String,
}

fn start(data: &std::path::Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("yrelay listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Proc { child, addr }
}

impl Proc {
    fn url(&self, room: &str) -> String {
        format!("ws://{}/{room}", self.addr)
    }
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
    fn sigterm(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("no exit within 10 s of SIGTERM");
    }
}

/// The update a typist at `client` sends as edit number `i` (appending "<i>;").
fn edit(doc: &yrs::Doc, i: usize) -> Vec<u8> {
    use yrs::{Text, Transact};
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = t.len(&txn);
    t.insert(&mut txn, len, &format!("{i};"));
    txn.encode_update_v1()
}

/// Everything the server holds for `room`, as text.
async fn server_text(url: &str) -> String {
    let mut c = Client::join(url).await;
    c.send(encode_sync_step1(&[0])).await;
    loop {
        if let Msg::SyncStep2(diff) = c.recv().await {
            return text_after(&[diff]);
        }
    }
}

fn edits_in(text: &str) -> std::collections::BTreeSet<usize> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_mode_keeps_every_update_anyone_received_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--durability", "fsync"]);
    let url = server.url("crash-fsync");
    let mut writer = Client::join(&url).await;
    let mut watcher = Client::join(&url).await;
    let doc = yrs::Doc::with_client_id(77);
    // Send a stream of edits without waiting; record which ones the watcher received.
    let mut received = Vec::new();
    for i in 0..300 {
        writer.send(encode_sync_update(&edit(&doc, i))).await;
    }
    let deadline = Instant::now() + Duration::from_millis(150);
    while Instant::now() < deadline {
        if let Ok(Msg::Update(u)) =
            tokio::time::timeout(Duration::from_millis(50), watcher.recv()).await
        {
            received.push(u);
        }
    }
    server.kill9();
    let seen = edits_in(&text_after(&received));
    assert!(
        !seen.is_empty(),
        "the watcher received nothing before the kill"
    );

    let server = start(dir.path(), &[]);
    let stored = edits_in(&server_text(&server.url("crash-fsync")).await);
    let missing: Vec<_> = seen.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "received before the crash but lost: {missing:?}"
    );
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_loses_at_most_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--durability", "batched"]);
    let url = server.url("crash-batched");
    let mut writer = Client::join(&url).await;
    let doc = yrs::Doc::with_client_id(78);
    // One edit every 10 ms for ~1.5 s; remember when each was acknowledged (echoed).
    let mut acked_at = Vec::new();
    for i in 0..150 {
        writer.send(encode_sync_update(&edit(&doc, i))).await;
        assert!(matches!(writer.recv().await, Msg::Update(_)));
        acked_at.push((i, Instant::now()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    server.kill9();

    let server = start(dir.path(), &[]);
    let stored = edits_in(&server_text(&server.url("crash-batched")).await);
    // flush_interval_ms is 100; allow as much again for scheduling on a loaded machine.
    let window = Duration::from_millis(200);
    for (i, at) in &acked_at {
        if killed_at.duration_since(*at) > window {
            assert!(
                stored.contains(i),
                "edit {i}, acknowledged {:?} before the kill, was lost",
                killed_at.duration_since(*at)
            );
        }
    }
    let lost = acked_at.len() - stored.len();
    assert!(
        lost <= 20,
        "{lost} edits lost: more than ~the last flush interval"
    );
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // Batched mode with a long flush interval: only the shutdown flush can save these.
    std::fs::write(
        dir.path().join("c.toml"),
        "[persistence]\ndurability = \"batched\"\nflush_interval_ms = 60000\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    let server = start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let url = server.url("term");
    let mut writer = Client::join(&url).await;
    let doc = yrs::Doc::with_client_id(79);
    for i in 0..50 {
        writer.send(encode_sync_update(&edit(&doc, i))).await;
        assert!(matches!(writer.recv().await, Msg::Update(_)));
    }
    let status = server.sigterm();
    assert!(status.success(), "exit status {status}");
    let server = start(dir.path(), &[]);
    let stored = edits_in(&server_text(&server.url("term")).await);
    assert_eq!(stored.len(), 50, "{stored:?}");
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_is_never_served_before_it_loaded() {
    use yrs::{Text, Transact};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let url = server.url("big");
    let mut writer = Client::join(&url).await;
    // ~8 MB in 8 updates.
    let doc = yrs::Doc::with_client_id(80);
    let t = doc.get_or_insert_text("t");
    for _ in 0..8 {
        let u = {
            let mut txn = doc.transact_mut();
            let len = t.len(&txn);
            t.insert(&mut txn, len, &"x".repeat(1 << 20));
            txn.encode_update_v1()
        };
        writer.send(encode_sync_update(&u)).await;
        assert!(matches!(writer.recv().await, Msg::Update(_)));
    }
    server.kill9();
    let server = start(dir.path(), &[]);
    // Connect at once, several clients: each greeting already carries the loaded state.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&server.url("big")).await);
    }
    for c in &mut clients {
        match c.recv().await {
            Msg::SyncStep1(sv) => assert_ne!(sv, vec![0], "greeted from an empty document"),
            other => panic!("unexpected {other:?}"),
        }
        c.send(encode_sync_step1(&[0])).await;
        loop {
            if let Msg::SyncStep2(diff) = c.recv().await {
                assert_eq!(text_after(&[diff]).len(), 8 << 20);
                break;
            }
        }
    }
    server.kill9();
}

/// A plain HTTP/1.1 request to the server; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // De-chunk.
        let mut plain = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = plain;
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_and_versions_and_audit_are_served() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[persistence]\ncompact_after_updates = 10\nversion_interval_ms = 300\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    let server = start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let url = server.url("hist%20ory");
    let mut writer = Client::join(&url).await;
    let doc = yrs::Doc::with_client_id(81);
    for i in 0..55 {
        writer.send(encode_sync_update(&edit(&doc, i))).await;
        assert!(matches!(writer.recv().await, Msg::Update(_)));
    }
    // Automatic versions: the room changed, so one is taken within ~300 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let addr = server.addr.clone();
    let (status, body) = http(&addr, "GET", "/v1/rooms/hist%20ory/versions", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let versions = list["versions"].as_array().unwrap();
    assert!(
        versions.iter().any(|v| v["kind"] == "Auto"),
        "no automatic version: {list}"
    );
    // A named version, downloaded as a v1 update.
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/rooms/hist%20ory/versions",
        br#"{"label":"fifty-five"}"#,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(info["label"], "fifty-five");
    let id = info["id"].as_u64().unwrap();
    let (status, state) = http(
        &addr,
        "GET",
        &format!("/v1/rooms/hist%20ory/versions/{id}"),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(edits_in(&text_after(&[state])).len(), 55);
    assert_eq!(
        http(&addr, "GET", "/v1/rooms/hist%20ory/versions/999", b"").0,
        404
    );
    assert_eq!(
        http(&addr, "POST", "/v1/rooms/hist%20ory/versions", b"{nope").0,
        400
    );
    // The audit trail pages through all 55 changes.
    let mut after = None::<u64>;
    let mut seen = 0;
    loop {
        let path = match after {
            Some(a) => format!("/v1/rooms/hist%20ory/audit?limit=20&after={a}"),
            None => "/v1/rooms/hist%20ory/audit?limit=20".to_owned(),
        };
        let (status, body) = http(&addr, "GET", &path, b"");
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let records = page["records"].as_array().unwrap();
        seen += records.len();
        assert!(records
            .iter()
            .all(|r| r["author"] == "anonymous" && r["bytes"].as_u64() > Some(0)));
        match page["next_after"].as_u64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, 55);
    assert!(server.sigterm().success());

    // The log was compacted: at most the last threshold's worth of updates remain as a tail.
    let store = yrelay_store::SledStore::open(&dir.path().join("yrelay.sled")).unwrap();
    let loaded = yrelay_store::Store::load(&store, "hist ory").unwrap();
    assert!(loaded.snapshot.is_some(), "no snapshot written");
    assert!(
        loaded.tail.len() < 10,
        "tail of {} entries",
        loaded.tail.len()
    );
    let mut all: Vec<Vec<u8>> = loaded.snapshot.into_iter().collect();
    all.extend(loaded.tail.into_iter().map(|(_, u)| u));
    assert_eq!(edits_in(&text_after(&all)).len(), 55);
}
