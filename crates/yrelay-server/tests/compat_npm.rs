//! Compatibility suite driven by the official Yjs npm libraries.
//!
//! Runs the `node:test` files in `tests/compat/` (y-websocket v3 and v2 clients,
//! y-protocols over a raw socket) against the `yrelay` binary built by cargo.
//!
//! Needs `node` (20 or newer) and `npm` on PATH; the suite's packages are installed
//! from the lockfile (`npm ci`) on first run. Without node/npm the test prints a
//! SKIPPED line and passes, unless `YRELAY_REQUIRE_SERVICES=1`, in which case it
//! fails.
//!
//! A second test drives one official client from Rust (`tests/compat/watch-text.mjs`) to check
//! the REST round trip of an offline Rust client against a live official client.

mod common;

use common::{find_on_path, say};

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run: npm ci --prefix crates/yrelay-server/tests/compat";

/// Overall deadline for the node suite; each node test also has its own timeout.
const DEFAULT_SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Major version of `node --version` (`v20.11.1` → 20).
fn node_major_version(node: &Path) -> Option<u32> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Skips (prints why) or, when services are required, fails.
fn skip_or_fail(reason: &str) {
    common::skip_or_fail("compat_npm", reason, INSTALL_HINT);
}

/// Stops the whole process group of the node runner (its per-file workers and
/// the yrelay servers they started).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &format!("-{pid}")])
        .status();
}

#[test]
fn official_npm_clients_interoperate_with_yrelay() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compat_dir = manifest_dir.join("tests").join("compat");
    let yrelay_bin = env!("CARGO_BIN_EXE_yrelay");

    let Some(node) = find_on_path("node") else {
        skip_or_fail("`node` not found on PATH");
        return;
    };
    match node_major_version(&node) {
        Some(major) if major >= 20 => {}
        other => {
            skip_or_fail(&format!(
                "{} is version {other:?}, the suite needs Node 20 or newer",
                node.display()
            ));
            return;
        }
    }
    if let Err(reason) = common::ensure_compat_packages(&compat_dir) {
        skip_or_fail(&reason);
        return;
    }

    let mut test_files: Vec<String> = std::fs::read_dir(&compat_dir)
        .expect("read tests/compat")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.js"))
        .collect();
    test_files.sort();
    assert!(
        !test_files.is_empty(),
        "no *.test.js files in {}",
        compat_dir.display()
    );

    let timeout = std::env::var("YRELAY_COMPAT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SUITE_TIMEOUT);

    say(&format!(
        "compat_npm: {} --test --test-reporter=spec --test-concurrency=1 {} (in {}, YRELAY_BIN={yrelay_bin})",
        node.display(),
        test_files.join(" "),
        compat_dir.display()
    ));
    let started = Instant::now();
    // Output is inherited: node's spec reporter streams straight to the terminal.
    let mut child = Command::new(&node)
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1"])
        .args(test_files.iter().map(OsStr::new))
        .current_dir(&compat_dir)
        .env("YRELAY_BIN", yrelay_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("spawn node");

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > timeout {
            kill_group(child.id());
            let _ = child.wait();
            panic!(
                "compat_npm: the node suite did not finish within {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    say(&format!(
        "compat_npm: node suite finished in {:.1} s with {status}",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        status.success(),
        "the official-client compatibility suite failed ({status}); see the node test output above"
    );
}

/// Node, and the suite's packages, or the reason they are missing (skipped or failed like the
/// suite).
fn node_with_packages(compat_dir: &Path) -> Option<PathBuf> {
    let Some(node) = find_on_path("node") else {
        skip_or_fail("`node` not found on PATH");
        return None;
    };
    if let Err(reason) = common::ensure_compat_packages(compat_dir) {
        skip_or_fail(&reason);
        return None;
    }
    Some(node)
}

/// The REST round trip of the security issue: a Rust client that was offline fetches
/// `state?sv=` with its own state vector, applies the diff, and posts only what the server
/// lacks; an official y-websocket client connected the whole time sees the posted edit.
#[test]
#[allow(clippy::unwrap_used)]
fn an_offline_rust_client_syncs_over_rest_and_a_live_official_client_sees_it() {
    use std::io::{BufRead, BufReader};

    use base64::Engine as _;
    use yrelay_server::auth::{Authenticator, Role, Secret};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, ReadTxn, Text, Transact};

    let compat_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("compat");
    let Some(node) = node_with_packages(&compat_dir) else {
        return;
    };
    const SECRET: &str = "rest-round-trip-secret-0123456789abcdef";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = common::TestServer::start_with(|c| {
            c.auth.jwt_secret = Some(Secret::new(SECRET));
        })
        .await;
        let auth = Authenticator::new(&server_settings(SECRET)).unwrap();
        let token = auth
            .mint("shared", Role::Editor, "rust-backend", 600)
            .unwrap();
        let ws_url = format!("ws://{}", server.addr);

        // The live official client starts with the server's content.
        let first = common::text_update(1, "server text. ");
        let bearer = format!("Bearer {token}");
        let h = [("Authorization", bearer.as_str())];
        let posted = common::http(server.addr, "POST", "/v1/rooms/shared/update", &h, &first).await;
        assert_eq!(posted.status, 200, "{}", posted.text());
        let mut watcher = Command::new(&node)
            .arg("watch-text.mjs")
            .args([ws_url.as_str(), "shared", token.as_str(), "offline edit"])
            .current_dir(&compat_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
        let synced = tokio::task::spawn_blocking(move || {
            let first = lines.next().map(|l| l.unwrap());
            (first, lines)
        });
        let (first_line, mut lines) = synced.await.unwrap();
        assert_eq!(
            first_line.as_deref(),
            Some("synced"),
            "the official client did not sync"
        );

        // The Rust client: edited offline (its own text, in its own doc), knows nothing of the
        // server's content yet.
        let doc = yrs::Doc::with_client_id(42);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "offline edit");
        let sv = doc.transact().state_vector().encode_v1();
        let sv = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sv);
        let diff = common::http(
            server.addr,
            "GET",
            &format!("/v1/rooms/shared/state?sv={sv}"),
            &h,
            b"",
        )
        .await;
        assert_eq!(diff.status, 200);
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&diff.body).unwrap())
            .unwrap();
        assert!(text.get_string(&doc.transact()).contains("server text. "));
        // Only what the server lacks goes up.
        let server_sv =
            common::http(server.addr, "GET", "/v1/rooms/shared/state-vector", &h, b"").await;
        let server_sv = yrs::StateVector::decode_v1(&server_sv.body).unwrap();
        let mine = doc.transact().encode_state_as_update_v1(&server_sv);
        let posted = common::http(server.addr, "POST", "/v1/rooms/shared/update", &h, &mine).await;
        assert_eq!(posted.status, 200, "{}", posted.text());
        assert_eq!(posted.json()["changed"], true);

        let seen = tokio::task::spawn_blocking(move || {
            let line = lines.next().map(|l| l.unwrap());
            let status = watcher.wait().unwrap();
            (line, status)
        });
        let (line, status) = tokio::time::timeout(Duration::from_secs(20), seen)
            .await
            .expect("the official client never reported")
            .unwrap();
        assert!(status.success(), "official client: {line:?}");
        let line = line.unwrap();
        assert!(
            line.contains("offline edit") && line.contains("server text. "),
            "{line}"
        );
        assert_eq!(
            line.trim_start_matches("seen: "),
            text.get_string(&doc.transact()),
            "both converged to the same text"
        );
    });
}

fn server_settings(secret: &str) -> yrelay_server::auth::AuthSettings {
    yrelay_server::auth::AuthSettings {
        jwt_secret: Some(yrelay_server::auth::Secret::new(secret)),
        ..yrelay_server::auth::AuthSettings::default()
    }
}
