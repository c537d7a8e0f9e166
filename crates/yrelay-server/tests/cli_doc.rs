//! The command-line client (`yrelay doc|token|rooms|versions`) against the real binary as
//! server: the offline round trip, admin helpers, and each error path's exit status and
//! one-line message.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::puppet::{compat_dir, Puppet};

const BIN: &str = env!("CARGO_BIN_EXE_yrelay");
const SECRET: &str = "cli-doc-test-secret-that-is-long-enough-012345";
const ADMIN: &str = "cli-doc-test-admin-key-0123456789";

/// A `yrelay serve` child on a free port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path, envs: &[(&str, &str)]) -> Server {
        Self::start_on("127.0.0.1:0", data, envs)
    }

    fn start_on(listen: &str, data: &Path, envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data)
            .env_remove("YRELAY_JWT_SECRET")
            .env_remove("YRELAY_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("yrelay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, url }
    }

    fn addr(&self) -> &str {
        self.url.strip_prefix("ws://").unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `yrelay ARGS` (no inherited YRELAY_* variables) and returns its output.
fn yrelay(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("YRELAY_") && k != "YRELAY_REQUIRE_SERVICES" {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = yrelay(args);
    assert!(
        out.status.success(),
        "yrelay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exit status 1 and one line `error: ...` containing
/// `expected`.
fn fails(args: &[&str], expected: &str) {
    let out = yrelay(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "yrelay {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "yrelay {args:?} printed to stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(expected), "{expected:?} not in {stderr}");
}

fn js_available(test: &str) -> bool {
    const HINT: &str = "install Node.js and npm; `.ci/run` does";
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

#[test]
fn offline_append_then_sync_then_read_back_everywhere() {
    if !js_available("offline_append_then_sync_then_read_back_everywhere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let replica = replica.to_str().unwrap();
    let data = dir.path().join("data");

    // No server at all: append into the replica, read it back offline.
    ok(&[
        "doc",
        "append",
        "--room",
        "notes",
        "--replica",
        replica,
        "--offline",
        "offline one. ",
    ]);
    ok(&[
        "doc",
        "append",
        "--room",
        "notes",
        "--replica",
        replica,
        "--offline",
        "offline two.",
    ]);
    assert_eq!(
        ok(&["doc", "get", "--room", "notes", "--replica", replica]),
        "offline one. offline two.\n"
    );
    // And one into the root the JS client shows ("t").
    ok(&[
        "doc",
        "append",
        "--room",
        "notes",
        "--root",
        "t",
        "--replica",
        replica,
        "--offline",
        "[offline-t]",
    ]);

    // The server starts; someone edits there first (an official JS client).
    let server = Server::start(&data, &[]);
    let mut js = Puppet::start(&server.url, "notes", "js");
    js.wait_synced();
    // The puppet writes the root "t"; the CLI's default root is "content". Both travel.
    js.insert("from js");

    // sync: the replica's edits go up, the JS edit comes down; a second sync moves nothing.
    let first = ok(&[
        "doc",
        "sync",
        "--server",
        &server.url,
        "--room",
        "notes",
        "--replica",
        replica,
    ]);
    assert!(first.starts_with("synced \"notes\": sent "), "{first}");
    assert!(!first.contains("sent 0 bytes"), "{first}");
    assert!(!first.contains("received 0 bytes"), "{first}");
    let again = ok(&[
        "doc",
        "sync",
        "--server",
        &server.url,
        "--room",
        "notes",
        "--replica",
        replica,
    ]);
    assert_eq!(again, "synced \"notes\": sent 0 bytes, received 0 bytes\n");

    // Read back: from the server by the CLI, by the JS client, and the JS edit offline.
    assert_eq!(
        ok(&["doc", "get", "--server", &server.url, "--room", "notes"]),
        "offline one. offline two.\n"
    );
    // The official JS client sees the offline edit merged with its own, and so do the
    // server and the replica (same text everywhere).
    let deadline = Instant::now() + Duration::from_secs(20);
    let merged = loop {
        let text = js.text();
        if text.contains("[offline-t]") && text.contains("from js") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "JS never saw the offline edit: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(merged.len(), "[offline-t]from js".len(), "{merged:?}");
    assert_eq!(
        ok(&[
            "doc",
            "get",
            "--room",
            "notes",
            "--root",
            "t",
            "--replica",
            replica
        ]),
        format!("{merged}\n")
    );
    assert_eq!(
        ok(&[
            "doc",
            "get",
            "--server",
            &server.url,
            "--room",
            "notes",
            "--root",
            "t"
        ]),
        format!("{merged}\n")
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "doc",
        "json",
        "--server",
        &server.url,
        "--room",
        "notes",
    ]))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "content": "offline one. offline two.", "t": merged })
    );

    // Live append and replace on the server; a JS client on root "t" sees a live replace.
    ok(&[
        "doc",
        "append",
        "--server",
        &server.url,
        "--room",
        "notes",
        "--root",
        "t",
        " + cli",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.text() != format!("{merged} + cli") {
        assert!(
            Instant::now() < deadline,
            "JS never saw the CLI's append: {}",
            js.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&[
        "doc",
        "replace",
        "--server",
        &server.url,
        "--room",
        "notes",
        "--root",
        "t",
        "replaced",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.text() != "replaced" {
        assert!(
            Instant::now() < deadline,
            "JS never saw the replace: {}",
            js.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // watch prints the current text (and would print each change).
    assert_eq!(
        ok(&[
            "doc",
            "watch",
            "--server",
            &server.url,
            "--room",
            "notes",
            "--root",
            "t",
            "--count",
            "1"
        ]),
        "replaced\n"
    );
}

#[test]
fn admin_helpers_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("YRELAY_JWT_SECRET", SECRET), ("YRELAY_ADMIN_KEY", ADMIN)],
    );
    let url = server.url.as_str();
    let token = ok(&[
        "token",
        "mint",
        "--server",
        url,
        "--admin-key",
        ADMIN,
        "--room",
        "doc",
        "--role",
        "owner",
        "--sub",
        "ann",
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    ok(&[
        "doc", "append", "--server", url, "--room", "doc", "--token", token, "v1 text",
    ]);
    let saved: serde_json::Value = serde_json::from_str(&ok(&[
        "versions", "save", "--server", url, "--room", "doc", "--token", token, "--label", "first",
    ]))
    .unwrap();
    let id = saved["id"].as_u64().unwrap();
    ok(&[
        "doc", "replace", "--server", url, "--room", "doc", "--token", token, "changed",
    ]);
    let list: serde_json::Value = serde_json::from_str(&ok(&[
        "versions", "list", "--server", url, "--room", "doc", "--token", token,
    ]))
    .unwrap();
    assert_eq!(list["versions"][0]["label"], "first", "{list}");
    ok(&[
        "versions",
        "restore",
        &id.to_string(),
        "--server",
        url,
        "--room",
        "doc",
        "--token",
        token,
    ]);
    assert_eq!(
        ok(&["doc", "get", "--server", url, "--room", "doc", "--token", token]),
        "v1 text\n"
    );
    let rooms: serde_json::Value = serde_json::from_str(&ok(&[
        "rooms",
        "list",
        "--server",
        url,
        "--admin-key",
        ADMIN,
    ]))
    .unwrap();
    assert!(rooms.to_string().contains("\"doc\""), "{rooms}");

    // Refusals: no token, a bad token, a viewer writing, a wrong admin key.
    fails(
        &["doc", "get", "--server", url, "--room", "doc"],
        "refused by the server: 401",
    );
    fails(
        &[
            "doc", "get", "--server", url, "--room", "doc", "--token", "a.b.c",
        ],
        "refused by the server: 401",
    );
    let viewer = ok(&[
        "token",
        "mint",
        "--server",
        url,
        "--admin-key",
        ADMIN,
        "--room",
        "doc",
        "--role",
        "viewer",
        "--sub",
        "bob",
    ]);
    fails(
        &[
            "doc",
            "append",
            "--server",
            url,
            "--room",
            "doc",
            "--token",
            viewer.trim(),
            "x",
        ],
        "refused by the server: 403",
    );
    fails(
        &[
            "rooms",
            "list",
            "--server",
            url,
            "--admin-key",
            "wrong-key-0123456789-0123456789",
        ],
        "refused by the server",
    );
}

#[test]
fn error_paths_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let replica = replica.to_str().unwrap();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let closed = format!("ws://{closed}");

    fails(
        &["doc", "get", "--server", "localhost:1234", "--room", "r"],
        "bad server URL \"localhost:1234\"",
    );
    fails(
        &["doc", "get", "--server", "ftp://x", "--room", "r"],
        "bad server URL",
    );
    fails(
        &["doc", "get", "--server", &closed, "--room", "r"],
        "cannot reach ws://127.0.0.1:",
    );
    fails(
        &[
            "doc",
            "sync",
            "--server",
            &closed,
            "--room",
            "r",
            "--replica",
            replica,
        ],
        "cannot reach",
    );
    fails(
        &["doc", "append", "--room", "r", "text"],
        "nowhere to write: give --server URL, or --replica DIR --offline",
    );
    fails(
        &["doc", "get", "--room", "r"],
        "no server: give --server URL",
    );
    // A replica that is a file, not a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    fails(
        &[
            "doc",
            "get",
            "--room",
            "r",
            "--replica",
            file.to_str().unwrap(),
        ],
        "cannot open the local replica",
    );
    // A root that is not a Y.Text.
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    if js_available("error_paths_exit_non_zero_with_one_line") {
        let mut js = Puppet::start(&server.url, "typed", "js");
        js.wait_synced();
        js.set("k", "v");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok(&["doc", "json", "--server", &server.url, "--room", "typed"]).contains("\"k\"") {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(100));
        }
        fails(
            &[
                "doc",
                "get",
                "--server",
                &server.url,
                "--room",
                "typed",
                "--root",
                "m",
            ],
            "root \"m\" is a Y.Map, not a Y.Text",
        );
    }
    // A replica in use by another process.
    let _ = server.addr();
    let holder = yrelay_client::Replica::open(Path::new(replica)).unwrap();
    fails(
        &[
            "doc",
            "append",
            "--room",
            "r",
            "--replica",
            replica,
            "--offline",
            "x",
        ],
        "another process is using it",
    );
    drop(holder);
}
