//! The web editor demo in a real browser: headless Debian Chromium driven by playwright-core
//! (`examples/web-editor/test/browser.mjs`) against an in-process server serving the
//! embedded bundle. Two pages converge, see each other's cursor, name and chat, merge after
//! one went offline; with JWT on a viewer gets a read-only editor. Saves a screenshot of the
//! two editors side by side in cargo's target/tmp (docs/web-editor.png is one of them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::TestServer;
use yrelay_client::{Endpoint, RestClient};
use yrelay_server::auth::Secret;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

const TEST: &str = "two_browsers_edit_chat_and_merge_after_offline";
const HINT: &str = "apt-get install chromium nodejs npm; `.ci/run` does";
const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET: &str = "web-editor-test-secret-that-is-long-enough-0";
const ADMIN: &str = "web-editor-test-admin-key-0123456789";

fn web_editor_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/web-editor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_browsers_edit_chat_and_merge_after_offline() {
    if !Path::new(CHROMIUM).exists() {
        common::skip_or_fail(TEST, "Debian's chromium is not installed", HINT);
        return;
    }
    if common::find_on_path("node").is_none() {
        common::skip_or_fail(TEST, "`node` not found on PATH", HINT);
        return;
    }
    let dir = web_editor_dir();
    if let Err(reason) = tokio::task::block_in_place(|| common::ensure_web_editor_packages(&dir)) {
        common::skip_or_fail(TEST, &reason, HINT);
        return;
    }

    // The development default: demo on, auth off.
    let mut open = TestServer::start().await;
    // A second server with JWT on, holding a document a viewer will read.
    let mut guarded = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(Secret::new(SECRET));
        c.auth.admin_key = Some(Secret::new(ADMIN));
    })
    .await;
    let endpoint = Endpoint::parse(&format!("http://{}", guarded.addr)).unwrap();
    let admin = RestClient::new(&endpoint, Some(ADMIN.to_owned()), None).unwrap();
    let seed = Doc::new();
    let code = seed.get_or_insert_text("code");
    code.insert(&mut seed.transact_mut(), 0, "fn main() { /* read me */ }\n");
    let update = seed
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    admin.post_update("guarded", &update).await.unwrap();
    let viewer = admin
        .mint_token("guarded", "viewer", "vic", Some(600))
        .await
        .unwrap();

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-editor.png");
    let _ = std::fs::remove_file(&screenshot);
    let config = serde_json::json!({
        "base": format!("http://{}", open.addr),
        "room": "browser-test",
        "screenshot": screenshot,
        "chromium": CHROMIUM,
        "authBase": format!("http://{}", guarded.addr),
        "authRoom": "guarded",
        "viewerToken": viewer,
        "authText": "read me",
    });
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg("test/browser.mjs")
            .arg(config.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    common::say(&stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "typing on both pages converged",
        "remote cursor with her name",
        "chat message sent by Ann appears on Bob's page",
        "offline edits merged on both pages",
        "read-only editor",
    ] {
        assert!(
            stdout.contains(expected),
            "step missing: {expected}\n{stdout}"
        );
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "no screenshot at {}",
        screenshot.display()
    );
    open.stop().await;
    guarded.stop().await;
}

/// Collects every file under `dir` as (relative path, bytes).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The bundle the server embeds (crates/yrelay-server/assets/web-editor, committed) is what
/// the committed sources build to: a change to examples/web-editor without `npm run build`
/// fails here.
#[test]
fn the_embedded_bundle_is_built_from_the_committed_sources() {
    const NAME: &str = "the_embedded_bundle_is_built_from_the_committed_sources";
    if common::find_on_path("node").is_none() {
        common::skip_or_fail(NAME, "`node` not found on PATH", HINT);
        return;
    }
    let dir = web_editor_dir();
    if let Err(reason) = common::ensure_web_editor_packages(&dir) {
        common::skip_or_fail(NAME, &reason, HINT);
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .args([
            "node_modules/vite/bin/vite.js",
            "build",
            "--emptyOutDir",
            "--logLevel",
            "warn",
            "--outDir",
        ])
        .arg(out.path())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "vite build failed");
    let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/web-editor");
    let (built, committed) = (files(out.path()), files(&embedded));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&built),
        names(&committed),
        "rebuild the demo: cd examples/web-editor && npm install && npm run build"
    );
    for ((name, a), (_, b)) in built.iter().zip(&committed) {
        assert!(
            a == b,
            "{name} differs: rebuild the demo (cd examples/web-editor && npm run build)"
        );
    }
}
