//! The `yrelay` binary: config file, `YRELAY_*` variables and flags, in that order of
//! precedence; the stdout line; clear refusals of bad configuration; exit 0 on SIGTERM.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_yrelay");

fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
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
    (child, line.trim().to_owned())
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("yrelay did not exit within 10 s of SIGTERM");
}

fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("yrelay.toml");
    // The file asks for port 1 and 5-byte room names; the environment overrides the address,
    // a flag overrides the data directory.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"/nonexistent/never\"\n[limits]\nmax_room_name_bytes = 5\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (child, line) = spawn(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("YRELAY_LISTEN", "127.0.0.1:0")],
    );
    let addr = line
        .strip_prefix("yrelay listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        !addr.ends_with(":1"),
        "YRELAY_LISTEN did not override the file: {addr}"
    );
    assert!(data.is_dir(), "--data-dir was not used");
    assert_eq!(http_status(&addr, "/abcde"), 101, "5-byte name accepted");
    assert_eq!(http_status(&addr, "/abcdef"), 400, "file limit applied");
    assert!(sigterm_and_wait(child).success());
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[timeouts]\nkeepalive_interval_ms = 30000\n",
            "keepalive_interval_ms",
        ),
        ("lisen = \"127.0.0.1:0\"\n", "lisen"),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config", file.to_str().unwrap()])
            .env("YRELAY_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // Cluster mode without a shared store, and URLs of the wrong kind.
    for (args, expected) in [
        (
            vec!["--redis-url", "redis://127.0.0.1:1/"],
            "cluster mode needs a shared store",
        ),
        (
            vec!["--database-url", "mysql://127.0.0.1/x"],
            "must be a postgres:// URL",
        ),
        (
            vec![
                "--redis-url",
                "http://127.0.0.1:1/",
                "--database-url",
                "postgres://127.0.0.1:1/x",
            ],
            "must be a redis:// or rediss:// (TLS) URL",
        ),
        // TLS to Redis always verifies; a CA file only goes with TLS URLs.
        (
            vec![
                "--redis-url",
                "rediss://127.0.0.1:1/#insecure",
                "--database-url",
                "postgres://127.0.0.1:1/x",
            ],
            "rediss:// always verifies Redis's certificate",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:1/",
                "--redis-ca-file",
                "ca.pem",
                "--database-url",
                "postgres://127.0.0.1:1/x",
            ],
            "cluster.redis_ca_file is set but cluster.redis_url is not a rediss:// (TLS) URL",
        ),
        (
            vec!["--database-ca-file", "ca.pem"],
            "persistence.database_ca_file is set but persistence.database_url is not",
        ),
        (
            vec![
                "--database-url",
                "postgres://127.0.0.1:1/x?sslmode=require",
                "--database-ca-file",
                "/nonexistent/ca.pem",
            ],
            "persistence.database_ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            vec![
                "--database-url",
                "postgres://127.0.0.1:1/x?sslmode=require",
                "--database-ca-file",
                "Cargo.toml",
            ],
            "persistence.database_ca_file: no certificate found in Cargo.toml",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // An unreachable database stops the start with a clear message (a node never serves
    // without its store).
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--database-url", "postgres://yrelay@127.0.0.1:1/yrelay"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the PostgreSQL store"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args(["serve", "--tls-cert", "x.pem"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--tls-cert without --tls-key must be refused"
    );
}
