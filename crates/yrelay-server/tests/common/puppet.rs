//! An official y-websocket client (yjs + y-websocket from `tests/compat`, run by Node)
//! remote-controlled over stdin/stdout: `tests/compat/puppet.mjs`. Shared by the server's
//! cluster tests and the Rust client's interop tests (`#[path]`-included there).
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The npm suite's directory (`crates/yrelay-server/tests/compat`), found from this file.
pub fn compat_dir() -> PathBuf {
    Path::new(file!())
        .parent()
        .and_then(Path::parent)
        .map(|tests| tests.join("compat"))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            // file!() is relative to the workspace root.
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(file!())
                .parent()
                .and_then(Path::parent)
                .unwrap()
                .join("compat")
        })
}

/// An official client in a node process, remote-controlled over stdin/stdout.
pub struct Puppet {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Puppet {
    pub fn start(url: &str, room: &str, name: &str) -> Puppet {
        Self::start_with(url, room, name, None)
    }

    /// Renewing its presence every `heartbeat_ms`.
    pub fn start_with(url: &str, room: &str, name: &str, heartbeat_ms: Option<u64>) -> Puppet {
        let mut child = Command::new("node")
            .arg("puppet.mjs")
            .args([url, room, name])
            .args(heartbeat_ms.map(|ms| ms.to_string()))
            .current_dir(compat_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Puppet {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        }
    }

    pub fn cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{} did not answer {cmd}: {e}", self.name));
        serde_json::from_str(&line).unwrap()
    }

    pub fn insert(&mut self, text: &str) {
        let answer = self.cmd(json!({"op": "insert", "text": text}));
        assert_eq!(answer["ok"], true, "{answer}");
    }

    pub fn set(&mut self, key: &str, value: &str) {
        let answer = self.cmd(json!({"op": "set", "key": key, "value": value}));
        assert_eq!(answer["ok"], true, "{answer}");
    }

    pub fn report(&mut self) -> Value {
        self.cmd(json!({"op": "report"}))
    }

    pub fn text(&mut self) -> String {
        self.report()["text"].as_str().unwrap().to_owned()
    }

    pub fn wait_synced(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.report()["synced"] != true {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {} to sync",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
