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
