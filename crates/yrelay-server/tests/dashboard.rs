//! The Grafana dashboard's queries, run by a real Prometheus server that scrapes a live yrelay.
//!
//! `deploy/validate` parses every query with promtool, but only a running Prometheus with real
//! samples shows that each panel has numbers to draw: a query with a wrong metric name, label
//! or function parses fine and draws nothing. This test starts a private Prometheus (the binary
//! `deploy/validate` extracts from Debian's `prometheus` package) on a free loopback port,
//! scraping an in-process server every second, drives traffic that exercises every panel, and
//! requires every query of `deploy/grafana/dashboards/yrelay.json` to return data, with the
//! headline panels showing the values the traffic implies.
//!
//! Grafana itself is not run here (no package for it in this machine's registries and no
//! Docker engine); what it would draw is exactly these query results.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{find_on_path, http, is_executable, text_update, Client, TestServer};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use yrelay_doc::codec::{encode_awareness, encode_sync_update};
use yrelay_server::auth::{AuthSettings, Authenticator, Role, Secret};

const SECRET: &str = "dashboard-test-secret-0123456789abcdef";
const INSTALL_HINT: &str =
    "run deploy/validate once: it extracts prometheus into ~/.cache/yrelay-ci/bin";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/dashboards/yrelay.json"
);
/// How long the queries may take to all return data: Prometheus start, a few scrapes.
const QUERY_DEADLINE: Duration = Duration::from_secs(60);

/// `$YRELAY_PROMETHEUS`, else `prometheus` on PATH, else where `deploy/validate` puts it.
fn find_prometheus() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("YRELAY_PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    find_on_path("prometheus").or_else(|| {
        let cache = std::env::var_os("YRELAY_CI_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("yrelay-ci"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/yrelay-ci"))
            })?;
        let bin = cache.join("bin/prometheus");
        is_executable(&bin).then_some(bin)
    })
}

/// A free loopback port: bound, read and released (Prometheus binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The private Prometheus; killed when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &std::path::Path, target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: yrelay\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Runs an instant query; `Err` carries Prometheus's error text.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let resp = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        {
            Ok(Ok(_)) => http(self.addr, "GET", &path, &[], b"").await,
            _ => return Err("prometheus is not listening yet".into()),
        };
        let body = resp.json();
        if body["status"] != "success" {
            return Err(format!("{} {}", resp.status, resp.text()));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel query of the dashboard, with Grafana's variables filled in as Grafana would for
/// "All instances" and a 15 s rate window (four scrape intervals and then some).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "15s");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(queries.len() > 20, "the dashboard lost its panels");
    queries
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

fn token(room: &str, role: Role) -> String {
    Authenticator::new(&AuthSettings {
        jwt_secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    })
    .unwrap()
    .mint(room, role, "dashboard-user", 600)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_show_live_numbers() {
    let Some(bin) = find_prometheus() else {
        common::skip_or_fail(
            "dashboard_queries_show_live_numbers",
            "no prometheus binary",
            INSTALL_HINT,
        );
        return;
    };
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(Secret::new(SECRET));
        c.persistence.compact_after_updates = 5;
        c.limits.max_connections_per_room = 3;
    })
    .await;
    let prometheus = Prometheus::start(&bin, server.addr);

    // Two editors and a viewer stay connected for the whole test.
    let editor = format!(
        "{}?token={}",
        server.url("dash"),
        token("dash", Role::Editor)
    );
    let viewer = format!(
        "{}?token={}",
        server.url("dash"),
        token("dash", Role::Viewer)
    );
    let mut a = Client::join(&editor).await;
    let mut b = Client::join(&editor).await;
    let mut v = Client::join(&viewer).await;
    a.send(encode_awareness(&common::awareness_update(1, 1, "{}")))
        .await;

    // Refusals of every kind the dashboard draws:
    // auth (no token),
    assert!(tokio_tungstenite::connect_async(server.url("dash"))
        .await
        .is_err());
    // a limit (a fourth connection to a room capped at three),
    assert!(tokio_tungstenite::connect_async(&editor).await.is_err());
    // an HTTP refusal (a room name that is not one),
    let bad_room = format!("ws://{}/{}", server.addr, "%FF");
    assert!(tokio_tungstenite::connect_async(bad_room).await.is_err());
    // a viewer's write,
    v.send(encode_sync_update(&text_update(900, "no"))).await;
    // and a protocol error (a text frame), which also closes a connection with a reason.
    let other = format!(
        "{}?token={}",
        server.url("other"),
        token("other", Role::Editor)
    );
    let (mut bad, _) = tokio_tungstenite::connect_async(&other).await.unwrap();
    bad.send(Message::Text("not y-protocols".into()))
        .await
        .unwrap();

    // Edits keep flowing while Prometheus scrapes, so rates are non-zero.
    let stop = Arc::new(AtomicBool::new(false));
    let editing = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                a.send(encode_sync_update(&text_update(1000 + i, "x")))
                    .await;
                let _ = b.recv().await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (a, b)
        })
    };

    let queries = dashboard_queries();
    let deadline = tokio::time::Instant::now() + QUERY_DEADLINE;
    let mut missing;
    loop {
        missing = Vec::new();
        for (title, expr) in &queries {
            match prometheus.query(expr).await {
                Ok(samples) if !samples.is_empty() => {}
                Ok(_) => missing.push(format!("{title}: no data from {expr}")),
                Err(err) => missing.push(format!("{title}: {expr}: {err}")),
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );

    // The headline panels show what the traffic implies.
    let one = |samples: Vec<Value>| value(&samples[0]);
    assert_eq!(
        one(prometheus.query("min(yrelay_ready)").await.unwrap()),
        1.0
    );
    assert_eq!(
        one(prometheus.query("sum(yrelay_connections)").await.unwrap()),
        3.0,
        "two editors and a viewer are connected"
    );
    assert!(one(prometheus.query("sum(yrelay_rooms_loaded)").await.unwrap()) >= 1.0);
    let updates = one(prometheus
        .query("sum(rate(yrelay_messages_received_total{type=\"update\"}[15s]))")
        .await
        .unwrap());
    assert!(
        updates > 1.0,
        "about 20 updates/s are sent, the panel shows {updates}"
    );
    for q in [0.5, 0.99] {
        let latency = one(prometheus
            .query(&format!(
                "histogram_quantile({q}, sum by (le) (rate(yrelay_fanout_seconds_bucket[15s])))"
            ))
            .await
            .unwrap());
        assert!(
            latency.is_finite() && latency > 0.0 && latency < 1.0,
            "fan-out p{q}: {latency}"
        );
    }
    let version = prometheus
        .query("count by (version) (yrelay_build_info)")
        .await
        .unwrap();
    assert_eq!(
        version[0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "the Version panel"
    );
    for (series, what) in [
        (
            "yrelay_auth_refusals_total{reason=\"missing\"}",
            "auth refusal",
        ),
        ("yrelay_limit_refusals_total", "limit refusal"),
        ("yrelay_http_refusals_total", "HTTP refusal"),
        ("yrelay_viewer_writes_refused_total", "viewer write"),
        (
            "yrelay_protocol_errors_total{reason=\"text_frame\"}",
            "protocol error",
        ),
        ("yrelay_compactions_total", "compaction"),
    ] {
        let total = one(prometheus.query(&format!("sum({series})")).await.unwrap());
        assert!(total >= 1.0, "the {what} is counted: {total}");
    }

    stop.store(true, Ordering::Relaxed);
    let _ = editing.await.unwrap();
}
