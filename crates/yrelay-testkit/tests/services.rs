//! The private servers start, stop, come back on the same port with their data (PostgreSQL)
//! and clean up after themselves.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use yrelay_testkit::{PrivatePostgres, PrivateRedis};

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

#[test]
fn redis_stops_and_starts_again_on_the_same_port() {
    let Some(mut redis) = PrivateRedis::start("redis_stops_and_starts_again_on_the_same_port")
    else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert!(redis_ping(port));
    redis.stop();
    assert!(!redis.is_running());
    assert!(!redis_ping(port), "stopped");
    redis.start_again();
    assert_eq!(redis.port(), port);
    assert!(redis_ping(port));
}

/// `psql -tAc sql` against `url`, or `None` when psql is not installed next to initdb.
fn psql(url: &str, sql: &str) -> Option<String> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .find(|p| p.exists())?;
    let out = Command::new(bin).args([url, "-tAc", sql]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn postgres_keeps_its_data_across_restarts_and_cleans_up() {
    let Some(mut pg) =
        PrivatePostgres::start("postgres_keeps_its_data_across_restarts_and_cleans_up")
    else {
        return;
    };
    let port = pg.port();
    let url = pg.create_database("case_1");
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/case_1"));
    let Some(_) = psql(&url, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)") else {
        return;
    };
    assert_eq!(psql(&pg.url(), "SHOW fsync").as_deref(), Some("on"));
    assert_eq!(
        psql(&pg.url(), "SHOW listen_addresses").as_deref(),
        Some("127.0.0.1")
    );
    pg.stop();
    assert!(!pg.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped");
    pg.start_again();
    assert_eq!(psql(&url, "SELECT x FROM t").as_deref(), Some("7"));
    pg.kill();
    pg.start_again();
    assert_eq!(
        psql(&url, "SELECT x FROM t").as_deref(),
        Some("7"),
        "after crash recovery"
    );
    assert!(pg.log_tail(50).contains("ready to accept connections"));
    drop(pg);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped on drop"
    );
}
