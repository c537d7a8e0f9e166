//! Cluster mode end to end: `yrelay` nodes as separate processes on one private Redis and one
//! private PostgreSQL (both started by the test), official JS clients (y-websocket v3, driven
//! through `tests/compat/puppet.mjs`), and the faults the cluster must survive:
//!
//! - clients on three nodes converge (text, map, presence);
//! - a node is killed with SIGKILL mid-edit: its clients reconnect (through a small failover
//!   proxy, as behind a load balancer) to another node, and nothing any client saw is lost —
//!   checked in the clients and, after killing every node, in what a fresh node loads;
//! - Redis is stopped for seconds while clients on two nodes keep editing: each node keeps
//!   serving its own clients, `/readyz` says `degraded`, and once Redis is back every client
//!   converges without reconnecting;
//! - PostgreSQL is restarted under load: readiness goes false meanwhile, and no accepted
//!   update is lost (a fresh node loads every one);
//! - with Redis and PostgreSQL speaking only TLS, nodes reach both over verified TLS
//!   (`rediss://`, `sslmode=require`, CA files), and refuse a certificate they cannot verify.
//!
//! Without redis-server, PostgreSQL or node the tests print SKIPPED, unless
//! `YRELAY_REQUIRE_SERVICES=1`. They run one at a time (each starts its own services).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::puppet::{compat_dir, Puppet};
use serde_json::{json, Value};
use yrelay_testkit::{PrivatePostgres, PrivateRedis};

const BIN: &str = env!("CARGO_BIN_EXE_yrelay");
const HINT: &str = "install redis-server, postgresql and nodejs/npm (`.ci/run` does)";
const CONVERGE: Duration = Duration::from_secs(40);

/// One cluster test at a time: each runs several processes and its own services.
static SERIAL: Mutex<()> = Mutex::new(());

/// Whether node or the npm packages are missing (after a SKIPPED line).
fn services_missing(test: &str) -> bool {
    if common::find_on_path("node").is_none() {
        common::skip_or_fail(test, "`node` not found on PATH", HINT);
        return true;
    }
    if let Err(reason) = common::ensure_compat_packages(&compat_dir()) {
        common::skip_or_fail(test, &reason, HINT);
        return true;
    }
    false
}

/// Redis, PostgreSQL and the npm packages, or `None` after a SKIPPED line.
fn services(test: &str) -> Option<(PrivateRedis, PrivatePostgres)> {
    if services_missing(test) {
        return None;
    }
    let redis = PrivateRedis::start(test)?;
    let pg = PrivatePostgres::start(test)?;
    Some((redis, pg))
}

/// A `yrelay serve` process in cluster mode.
struct Node {
    id: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(id: &str, redis: &str, database: &str, dir: &Path) -> Node {
        // Quick periodic resync so a lost message is repaired within the test's patience.
        Self::start_with(
            id,
            redis,
            database,
            dir,
            "[cluster]\nresync_interval_ms = 2000\n",
        )
    }

    /// With `toml` as its configuration file.
    fn start_with(id: &str, redis: &str, database: &str, dir: &Path, toml: &str) -> Node {
        let node = Self::launch(id, redis, database, dir, toml);
        node.wait_connected();
        node
    }

    /// [`Self::start_with`] without waiting for Redis.
    fn launch(id: &str, redis: &str, database: &str, dir: &Path, toml: &str) -> Node {
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.join(format!("{id}.log"));
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--node-id", id])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join(format!("{id}-data")))
            .env("YRELAY_REDIS_URL", redis)
            .env("YRELAY_DATABASE_URL", database)
            .env("YRELAY_LOG", "info,yrelay_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "node {id} did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Node {
            id: id.to_owned(),
            child,
            addr,
            log,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits until the node reports Redis up (`yrelay_redis_up 1`).
    fn wait_connected(&self) {
        wait_for(&format!("{} to reach Redis", self.id), || {
            metric(self.addr, "yrelay_redis_up") == Some(1.0)
        });
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} (last lines) ---\n{}",
                self.id,
                self.log_tail()
            );
        }
        self.kill();
    }
}

/// Plain HTTP GET; (status, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, "")
}

/// Plain HTTP request with a JSON body; (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The value of an unlabelled metric.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every puppet reports the same text (and map), containing every token in
/// `tokens`; returns the text. On timeout, fails with every report.
fn converge(puppets: &mut [&mut Puppet], tokens: &[String]) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let reports: Vec<Value> = puppets.iter_mut().map(|p| p.report()).collect();
        let first = &reports[0];
        let same = reports
            .iter()
            .all(|r| r["text"] == first["text"] && r["map"] == first["map"]);
        let text = first["text"].as_str().unwrap_or_default();
        let complete = tokens.iter().all(|t| text.contains(t.as_str()));
        if same && complete {
            return text.to_owned();
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = tokens
                .iter()
                .filter(|t| !text.contains(t.as_str()))
                .collect();
            panic!(
                "clients did not converge within {CONVERGE:?}; missing from the first: {missing:?}\nreports: {reports:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP proxy in front of the nodes, as a load balancer would be: each new connection goes
/// to the first backend of its list that accepts, so clients of a dead node land on another.
struct Proxy {
    addr: SocketAddr,
}

impl Proxy {
    fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(backends);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let backend = backends
                    .iter()
                    .find_map(|b| TcpStream::connect_timeout(b, Duration::from_millis(500)).ok());
                let Some(backend) = backend else { continue };
                pipe(client, backend);
            }
        });
        Proxy { addr }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// Copies both ways until either side closes (then shuts both down).
fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("yrelay-cluster-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn official_clients_on_three_nodes_converge() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((redis, pg)) = services("official_clients_on_three_nodes_converge") else {
        return;
    };
    let dir = scratch();
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::start(id, &redis.url(), &pg.url(), dir.path()))
        .collect();
    let mut puppets: Vec<Puppet> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Puppet::start(&n.url(), "doc", &format!("p{}", i + 1)))
        .collect();
    for p in &mut puppets {
        p.wait_synced();
    }
    let mut tokens = Vec::new();
    for (i, p) in puppets.iter_mut().enumerate() {
        let token = format!("<from p{}>", i + 1);
        p.insert(&token);
        p.set(&format!("k{}", i + 1), &format!("v{}", i + 1));
        tokens.push(token);
    }
    let mut refs: Vec<&mut Puppet> = puppets.iter_mut().collect();
    converge(&mut refs, &tokens);
    // The map holds every node's key, and everyone sees the other two present.
    for (i, p) in puppets.iter_mut().enumerate() {
        let name = p.name.clone();
        wait_for(&format!("{name} to see both other clients present"), || {
            let report = p.report();
            let others: Vec<String> = (1..=3)
                .filter(|n| *n != i + 1)
                .map(|n| format!("p{n}"))
                .collect();
            report["peers"] == json!(others)
        });
        let map = p.report()["map"].clone();
        assert_eq!(map, json!({"k1": "v1", "k2": "v2", "k3": "v3"}));
    }
    // A client that leaves disappears from the others' presence on other nodes.
    let mut p3 = puppets.pop().unwrap();
    p3.cmd(json!({"op": "exit"}));
    for p in &mut puppets {
        wait_for("p3's presence to be removed on other nodes", || {
            !p.report()["peers"]
                .as_array()
                .unwrap()
                .contains(&json!("p3"))
        });
    }
    // A late client on a node where the room went idle gets everything.
    let mut late = Puppet::start(&nodes[2].url(), "doc", "late");
    late.wait_synced();
    let text = late.text();
    for token in &tokens {
        assert!(text.contains(token.as_str()), "{text:?} lacks {token}");
    }
    // Every node published and received over Redis.
    for n in &nodes {
        let (status, body) = http_get(n.addr, "/readyz").unwrap();
        assert_eq!((status, body.as_str()), (200, "ready\n"), "{}", n.id);
    }
}

#[test]
fn a_node_killed_mid_edit_loses_nothing_any_client_saw() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((redis, pg)) = services("a_node_killed_mid_edit_loses_nothing_any_client_saw") else {
        return;
    };
    let dir = scratch();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Node::start(id, &redis.url(), &pg.url(), dir.path()))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Clients of n1 fail over to n2, then n3; the client of n2 to n3.
    let lb1 = Proxy::start(addrs.clone());
    let lb2 = Proxy::start(vec![addrs[1], addrs[2]]);
    let mut a = Puppet::start(&lb1.url(), "doc", "a");
    let mut b = Puppet::start(&lb1.url(), "doc", "b");
    let mut c = Puppet::start(&lb2.url(), "doc", "c");
    for p in [&mut a, &mut b, &mut c] {
        p.wait_synced();
    }
    let mut tokens = Vec::new();
    for round in 0..40 {
        for p in [&mut a, &mut b, &mut c] {
            let token = format!("[{}{}]", p.name, round);
            p.insert(&token);
            tokens.push(token);
        }
        if round == 15 {
            nodes[0].kill();
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    // What any client saw before converging is in the final text too: its own edits (all of
    // `tokens`) and whatever it saw of others (a subset of them).
    let text = converge(&mut [&mut a, &mut b, &mut c], &tokens);
    for p in [&mut a, &mut b] {
        let connects = p.report()["connects"].as_u64().unwrap();
        assert!(connects >= 2, "{} never reconnected", p.name);
    }
    // Durable, not only in memory: kill every node and load the room on a fresh one.
    for n in &mut nodes {
        n.kill();
    }
    let fresh = Node::start("n4", &redis.url(), &pg.url(), dir.path());
    let mut reader = Puppet::start(&fresh.url(), "doc", "reader");
    reader.wait_synced();
    assert_eq!(reader.text(), text, "the store lacks what clients saw");
}

#[test]
fn clients_converge_after_a_redis_outage_without_reconnecting() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((mut redis, pg)) =
        services("clients_converge_after_a_redis_outage_without_reconnecting")
    else {
        return;
    };
    let dir = scratch();
    // No periodic resync: what repairs the outage must be the resync after reconnecting.
    let toml = "[cluster]\nresync_interval_ms = 0\n";
    let n1 = Node::start_with("n1", &redis.url(), &pg.url(), dir.path(), toml);
    let n2 = Node::start_with("n2", &redis.url(), &pg.url(), dir.path(), toml);
    let mut a = Puppet::start(&n1.url(), "doc", "a");
    let mut b = Puppet::start(&n1.url(), "doc", "b");
    let mut c = Puppet::start(&n2.url(), "doc", "c");
    for p in [&mut a, &mut b, &mut c] {
        p.wait_synced();
    }
    a.insert("(before)");
    converge(&mut [&mut a, &mut b, &mut c], &["(before)".to_owned()]);

    redis.stop();
    wait_for("n1 to notice Redis is down", || {
        metric(n1.addr, "yrelay_redis_up") == Some(0.0)
    });
    let (status, body) = http_get(n1.addr, "/readyz").unwrap();
    assert_eq!(status, 200, "a node without Redis still serves: {body}");
    assert!(body.starts_with("degraded: redis unreachable"), "{body}");

    let mut tokens = vec!["(before)".to_owned()];
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(4) {
        for p in [&mut a, &mut c] {
            let token = format!("[{}{}]", p.name, round);
            p.insert(&token);
            tokens.push(token);
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Local clients keep seeing each other: b (on n1) sees a's edits...
    let last_a = format!("[a{}]", round - 1);
    wait_for("b to see a's edit through n1 alone", || {
        b.text().contains(&last_a)
    });
    // ... while c (on n2) cannot have them yet.
    assert!(!c.text().contains(&last_a), "Redis was supposed to be down");

    redis.start_again();
    converge(&mut [&mut a, &mut b, &mut c], &tokens);
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.report()["connects"], 1, "{} reconnected", p.name);
    }
    wait_for("readiness to lose `degraded`", || {
        http_get(n1.addr, "/readyz").is_some_and(|(s, b)| s == 200 && b == "ready\n")
    });
    assert!(metric(n1.addr, "yrelay_redis_reconnects_total").unwrap() >= 1.0);
}

#[test]
fn postgres_restart_under_load_loses_no_accepted_update() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((redis, mut pg)) = services("postgres_restart_under_load_loses_no_accepted_update")
    else {
        return;
    };
    let dir = scratch();
    let mut n1 = Node::start("n1", &redis.url(), &pg.url(), dir.path());
    let mut n2 = Node::start("n2", &redis.url(), &pg.url(), dir.path());
    let mut a = Puppet::start(&n1.url(), "doc", "a");
    let mut c = Puppet::start(&n2.url(), "doc", "c");
    for p in [&mut a, &mut c] {
        p.wait_synced();
    }
    let mut tokens = Vec::new();
    let mut saw_unready = false;
    for round in 0..40 {
        for p in [&mut a, &mut c] {
            let token = format!("[{}{}]", p.name, round);
            p.insert(&token);
            tokens.push(token);
        }
        if round == 10 {
            pg.stop();
        }
        if round == 12 {
            // A room not yet loaded on the node cannot be loaded meanwhile: the client is
            // told to come back later (1013), not that the server failed (1011).
            let (code, reason) = close_of_join(&format!("ws://{}/not-loaded-yet", n1.addr));
            assert_eq!(code, 1013, "join while PostgreSQL is down: {reason}");
            assert!(reason.contains("storage unavailable"), "{reason}");
        }
        if (11..25).contains(&round) && !saw_unready {
            saw_unready = http_get(n1.addr, "/readyz").is_some_and(|(s, _)| s == 503);
        }
        if round == 25 {
            assert!(
                saw_unready,
                "/readyz stayed ready while PostgreSQL was down"
            );
            pg.start_again();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = converge(&mut [&mut a, &mut c], &tokens);
    wait_for("readiness to come back", || {
        http_get(n1.addr, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    // Every accepted update reached PostgreSQL: a fresh node, after the others were killed
    // (no graceful flush), loads all of it.
    n1.kill();
    n2.kill();
    let fresh = Node::start("n3", &redis.url(), &pg.url(), dir.path());
    let mut reader = Puppet::start(&fresh.url(), "doc", "reader");
    reader.wait_synced();
    assert_eq!(reader.text(), text);
}

/// Connects a raw WebSocket and returns the close code and reason the server ends it with.
fn close_of_join(url: &str) -> (u16, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { common::Client::connect(url).await.expect_close().await })
}

#[test]
fn presence_of_clients_on_a_dead_node_expires_elsewhere() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((redis, pg)) = services("presence_of_clients_on_a_dead_node_expires_elsewhere") else {
        return;
    };
    let dir = scratch();
    // A short awareness timeout (the clients renew every 500 ms instead of every 15 s).
    let toml = "[timeouts]\nawareness_timeout_ms = 3000\n[cluster]\nresync_interval_ms = 2000\n";
    let n1 = Node::start_with("n1", &redis.url(), &pg.url(), dir.path(), toml);
    let mut n2 = Node::start_with("n2", &redis.url(), &pg.url(), dir.path(), toml);
    let mut a = Puppet::start_with(&n1.url(), "doc", "a", Some(500));
    let mut b = Puppet::start_with(&n2.url(), "doc", "b", Some(500));
    for p in [&mut a, &mut b] {
        p.wait_synced();
    }
    wait_for("a to see b present", || a.report()["peers"] == json!(["b"]));
    // Renewals cross nodes: b stays present well past the timeout.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        a.report()["peers"],
        json!(["b"]),
        "b's presence expired while alive"
    );
    // n2 dies without a word: nobody is left to remove b, so n1 expires it.
    n2.kill();
    let died = Instant::now();
    wait_for("b's presence to expire on n1", || {
        a.report()["peers"] == json!([])
    });
    assert!(
        died.elapsed() >= Duration::from_secs(2),
        "removed before the timeout"
    );
    drop(b);
}

/// A single node on sled (no cluster), for `yrelay migrate`.
fn single_node(data_dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("://").next().unwrap().parse().unwrap();
    (child, addr)
}

fn migrate(data_dir: &Path, database: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("migrate")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", database])
        .output()
        .unwrap()
}

#[test]
fn migrate_moves_a_single_node_into_postgres() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((redis, pg)) = services("migrate_moves_a_single_node_into_postgres") else {
        return;
    };
    let dir = scratch();
    let data = dir.path().join("single");
    // A single node with two rooms, a named version and some history.
    let (mut single, addr) = single_node(&data);
    let url = format!("ws://{addr}");
    let mut a = Puppet::start(&url, "notes", "a");
    let mut b = Puppet::start(&url, "team/plan", "b");
    for p in [&mut a, &mut b] {
        p.wait_synced();
    }
    a.insert("first draft");
    let (status, body) = http(
        addr,
        "POST",
        "/v1/rooms/notes/versions",
        r#"{"label":"v1"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    a.insert(", second pass");
    b.insert("ship it");
    b.set("owner", "b");
    wait_for("the edits to be stored", || {
        http_get(addr, "/v1/rooms/notes/json").is_some_and(|(_, j)| j.contains("second pass"))
            && http_get(addr, "/v1/rooms/team%2Fplan/json")
                .is_some_and(|(_, j)| j.contains("ship it"))
    });
    let audit_before = http_get(addr, "/v1/rooms/notes/audit").unwrap().1;
    drop((a, b));
    // Stop the node (graceful: SIGTERM flushes every room).
    Command::new("kill")
        .args(["-TERM", &single.id().to_string()])
        .status()
        .unwrap();
    assert!(single.wait().unwrap().success());

    let out = migrate(&data, &pg.url());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("notes") && stdout.contains("team/plan"),
        "{stdout}"
    );
    // Again: nothing is merged twice; both rooms are reported as already present.
    let again = migrate(&data, &pg.url());
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_out}");
    assert!(again_out.to_lowercase().contains("skipped"), "{again_out}");

    // A cluster node on PostgreSQL serves the same documents, versions and audit trail.
    let node = Node::start("n1", &redis.url(), &pg.url(), dir.path());
    let mut reader = Puppet::start(&node.url(), "notes", "r");
    reader.wait_synced();
    assert_eq!(reader.text(), "first draft, second pass");
    let mut reader2 = Puppet::start(&node.url(), "team/plan", "r2");
    reader2.wait_synced();
    let report = reader2.report();
    assert_eq!(report["text"], "ship it");
    assert_eq!(report["map"], json!({"owner": "b"}));
    let (status, versions) = http_get(node.addr, "/v1/rooms/notes/versions").unwrap();
    assert_eq!(status, 200);
    assert!(versions.contains("\"v1\""), "{versions}");
    let (_, audit_after) = http_get(node.addr, "/v1/rooms/notes/audit").unwrap();
    assert_eq!(audit_after, audit_before);

    // Clear refusals: no such data directory, unreachable database.
    let out = migrate(&dir.path().join("nothing-here"), &pg.url());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = migrate(&data, "postgres://yrelay@127.0.0.1:1/yrelay");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open the PostgreSQL store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for 127.0.0.1 as server files in `dir`, and its PEM path (the
/// CA to trust).
fn self_signed(dir: &Path, name: &str) -> (yrelay_testkit::TlsFiles, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let files = yrelay_testkit::TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    (files.clone(), files.cert)
}

#[test]
fn nodes_reach_redis_and_postgres_over_verified_tls() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let test = "nodes_reach_redis_and_postgres_over_verified_tls";
    if services_missing(test) {
        return;
    }
    let dir = scratch();
    let (redis_files, redis_ca) = self_signed(dir.path(), "redis");
    let (pg_files, pg_ca) = self_signed(dir.path(), "pg");
    // Both accept nothing but TLS: plain TCP to Redis has no port, and PostgreSQL's
    // pg_hba.conf rejects connections without it.
    let Some(redis) = PrivateRedis::start_tls(test, &redis_files) else {
        return;
    };
    let Some(pg) = PrivatePostgres::start_tls(test, &pg_files) else {
        return;
    };
    let redis_url = redis.url();
    assert!(redis_url.starts_with("rediss://"), "{redis_url}");
    let database = format!("{}?sslmode=require", pg.url());
    let toml = format!(
        "[cluster]\nresync_interval_ms = 2000\nredis_ca_file = {:?}\n\
         [persistence]\ndatabase_ca_file = {:?}\n",
        redis_ca.display().to_string(),
        pg_ca.display().to_string()
    );
    let n1 = Node::start_with("n1", &redis_url, &database, dir.path(), &toml);
    let n2 = Node::start_with("n2", &redis_url, &database, dir.path(), &toml);
    let mut a = Puppet::start(&n1.url(), "secret-doc", "a");
    let mut b = Puppet::start(&n2.url(), "secret-doc", "b");
    a.wait_synced();
    b.wait_synced();
    a.insert("<a over tls>");
    b.insert("<b over tls>");
    converge(
        &mut [&mut a, &mut b],
        &["<a over tls>".to_owned(), "<b over tls>".to_owned()],
    );
    for n in [&n1, &n2] {
        let (status, body) = http_get(n.addr, "/readyz").unwrap();
        assert_eq!((status, body.as_str()), (200, "ready\n"), "{}", n.id);
        let received = metric(n.addr, "yrelay_cluster_received_total{kind=\"update\"}");
        assert!(received.is_some_and(|v| v >= 1.0), "{}: {received:?}", n.id);
    }

    // `yrelay migrate` over TLS: a single node's room lands in the TLS-only database and the
    // cluster serves it.
    let data = dir.path().join("single");
    let (mut single, addr) = single_node(&data);
    let mut writer = Puppet::start(&format!("ws://{addr}"), "moved", "w");
    writer.wait_synced();
    writer.insert("moved over tls");
    wait_for("the single node to store the edit", || {
        http_get(addr, "/v1/rooms/moved/json").is_some_and(|(_, j)| j.contains("moved over tls"))
    });
    drop(writer);
    Command::new("kill")
        .args(["-TERM", &single.id().to_string()])
        .status()
        .unwrap();
    assert!(single.wait().unwrap().success());
    let out = Command::new(BIN)
        .arg("migrate")
        .arg("--data-dir")
        .arg(&data)
        .args(["--database-url", &database])
        .arg("--database-ca-file")
        .arg(&pg_ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("moved"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, json) = http_get(n2.addr, "/v1/rooms/moved/json").unwrap();
    assert_eq!(status, 200);
    assert!(json.contains("moved over tls"), "{json}");

    // Trusting the wrong CA for Redis: the node serves its own clients but never reaches
    // Redis, and says why.
    let (_, wrong_ca) = self_signed(dir.path(), "other");
    let wrong = format!(
        "[cluster]\nredis_ca_file = {:?}\n[persistence]\ndatabase_ca_file = {:?}\n",
        wrong_ca.display().to_string(),
        pg_ca.display().to_string()
    );
    let n3 = Node::launch("n3", &redis_url, &database, dir.path(), &wrong);
    wait_for("n3 to report why Redis is unreachable", || {
        http_get(n3.addr, "/readyz").is_some_and(|(status, body)| {
            status == 200
                && body.starts_with("degraded: redis unreachable")
                && body.contains("certificate")
        })
    });
    assert_eq!(metric(n3.addr, "yrelay_redis_up"), Some(0.0));

    // Without the database's CA (webpki roots only) or without sslmode=require, a node
    // does not start, and says why.
    let refused = |database: &str, toml: &str| {
        std::fs::write(dir.path().join("refused.toml"), toml).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("refused.toml"))
            .env("YRELAY_REDIS_URL", &redis_url)
            .env("YRELAY_REDIS_CA_FILE", &redis_ca)
            .env("YRELAY_DATABASE_URL", database)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&database, "");
    assert!(err.contains("invalid peer certificate"), "{err}");
    let err = refused(&pg.url(), "");
    assert!(err.contains("no encryption"), "{err}");
    let err = refused(
        &pg.url(),
        &format!(
            "[persistence]\ndatabase_ca_file = {:?}\n",
            pg_ca.display().to_string()
        ),
    );
    assert!(err.contains("add sslmode=require"), "{err}");
}
