//! Metrics after real traffic, the probes, and logs that never contain a secret.
//!
//! The metrics recorder is process-wide, so the tests in this file compare values before and
//! after what they do rather than expect absolute numbers.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http, text_update, Client, Msg, TestServer, WAIT};
use yrelay_doc::codec::{encode_awareness, encode_sync_step1, encode_sync_update};
use yrelay_server::auth::{AuthSettings, Authenticator, Role, Secret};

const SECRET: &str = "observability-secret-0123456789abcdef";
const ADMIN: &str = "observability-admin-key-0123";

/// Parses the Prometheus text format strictly enough to catch a malformed exposition:
/// `name{label="value",...} number` lines, `# HELP` / `# TYPE` comments, blank lines.
/// Returns every sample keyed by `name{labels}` as written.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            if let Some(t) = comment.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1]
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                let _ = v;
            }
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let resp = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    parse_prometheus(&resp.text())
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn token(room: &str, role: Role) -> String {
    Authenticator::new(&AuthSettings {
        jwt_secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    })
    .unwrap()
    .mint(room, role, "metrics-user", 600)
    .unwrap()
}

#[tokio::test]
async fn metrics_after_real_traffic() {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = Some(Secret::new(SECRET));
        c.persistence.compact_after_updates = 5;
    })
    .await;
    let before = scrape(server.addr).await;

    let url = format!("{}?token={}", server.url("m"), token("m", Role::Editor));
    let mut a = Client::join(&url).await;
    let mut b = Client::join(&url).await;
    for i in 0..12u64 {
        let u = text_update(100 + i, "x");
        a.send(encode_sync_update(&u)).await;
        assert_eq!(a.recv().await, Msg::Update(u.clone()));
        assert_eq!(b.recv().await, Msg::Update(u));
    }
    a.send(encode_awareness(&common::awareness_update(1, 1, "{}")))
        .await;
    assert!(matches!(b.recv().await, Msg::Awareness(_)));
    b.send(encode_sync_step1(&[0])).await;
    assert!(matches!(b.recv().await, Msg::SyncStep2(_)));
    // A refused upgrade (no token).
    let refused = tokio_tungstenite::connect_async(server.url("m")).await;
    assert!(refused.is_err());
    // A throttled or refused REST call counts too (bad token).
    let resp = http(
        server.addr,
        "GET",
        "/v1/rooms/m/state",
        &[("Authorization", "Bearer not-a-token")],
        b"",
    )
    .await;
    assert_eq!(resp.status, 401);

    // Compaction runs after the write that passed the threshold; give it a moment.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let after = scrape(server.addr).await;
        if get(&after, "yrelay_compactions_total") > get(&before, "yrelay_compactions_total")
            || tokio::time::Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let grew = |series: &str| {
        assert!(
            get(&after, series) > get(&before, series),
            "{series}: {} → {}",
            get(&before, series),
            get(&after, series)
        );
    };
    grew("yrelay_connections_opened_total");
    grew("yrelay_messages_received_total{type=\"update\"}");
    grew("yrelay_messages_received_total{type=\"awareness\"}");
    grew("yrelay_messages_received_total{type=\"sync_step1\"}");
    grew("yrelay_bytes_received_total{type=\"update\"}");
    grew("yrelay_bytes_received_total{type=\"awareness\"}");
    grew("yrelay_bytes_received_total{type=\"sync_step1\"}");
    // Out: the server's own SyncStep1 on join, the SyncStep2 answer, relayed updates and
    // awareness.
    grew("yrelay_messages_sent_total{type=\"sync_step1\"}");
    grew("yrelay_messages_sent_total{type=\"sync_step2\"}");
    grew("yrelay_messages_sent_total{type=\"update\"}");
    grew("yrelay_messages_sent_total{type=\"awareness\"}");
    grew("yrelay_bytes_sent_total{type=\"update\"}");
    grew("yrelay_bytes_sent_total{type=\"sync_step2\"}");
    // Per type, bytes out are at least twice the frames out (no frame of these types is
    // shorter than two bytes), so bytes and frames are not swapped or mislabelled.
    for kind in ["sync_step1", "sync_step2", "update", "awareness"] {
        let frames = get(
            &after,
            &format!("yrelay_messages_sent_total{{type=\"{kind}\"}}"),
        );
        let bytes = get(
            &after,
            &format!("yrelay_bytes_sent_total{{type=\"{kind}\"}}"),
        );
        assert!(
            bytes >= 2.0 * frames,
            "{kind}: {frames} frames, {bytes} bytes"
        );
    }
    grew("yrelay_update_apply_seconds_count");
    grew("yrelay_fanout_seconds_count");
    grew("yrelay_persist_write_seconds_count");
    grew("yrelay_persist_batch_updates_count");
    grew("yrelay_persisted_updates_total");
    grew("yrelay_compactions_total");
    grew("yrelay_compaction_seconds_count");
    grew("yrelay_compaction_input_bytes_count");
    grew("yrelay_compaction_output_bytes_count");
    grew("yrelay_room_load_seconds_count");
    assert_eq!(
        get(&after, "yrelay_auth_refusals_total{reason=\"missing\"}")
            - get(&before, "yrelay_auth_refusals_total{reason=\"missing\"}"),
        1.0,
        "the refused upgrade is counted once"
    );
    grew("yrelay_auth_refusals_total{reason=\"malformed\"}");
    assert!(get(&after, "yrelay_connections") >= 2.0);
    assert!(get(&after, "yrelay_rooms_loaded") >= 1.0);
    assert!(
        after.contains_key(&format!(
            "yrelay_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        "build info missing"
    );
    // Histograms are real histograms (buckets), so p50/p99 can be computed across pods.
    assert!(after
        .keys()
        .any(|k| k.starts_with("yrelay_fanout_seconds_bucket{le=")));
}

#[tokio::test]
async fn metrics_on_a_separate_address_and_readiness_during_shutdown() {
    let mut server = TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        c.timeouts.shutdown_drain_ms = 1500;
    })
    .await;
    let metrics = server.metrics_addr.unwrap();
    scrape(metrics).await;
    // Moved off the main address.
    assert_eq!(
        http(server.addr, "GET", "/metrics", &[], b"").await.status,
        404
    );
    for addr in [server.addr, metrics] {
        let ready = http(addr, "GET", "/readyz", &[], b"").await;
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    }
    assert_eq!(get(&scrape(metrics).await, "yrelay_ready"), 1.0);

    let mut live = Client::join(&server.url("drain")).await;
    server.begin_stop();
    // Draining: not ready, alive, no new upgrades, existing connections untouched.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = http(metrics, "GET", "/readyz", &[], b"").await;
        if ready.status == 503 {
            assert!(ready.text().contains("shutting down"), "{}", ready.text());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became unready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http(server.addr, "GET", "/readyz", &[], b"").await.status,
        503
    );
    assert_eq!(
        http(server.addr, "GET", "/healthz", &[], b"").await.status,
        200
    );
    assert_eq!(get(&scrape(metrics).await, "yrelay_ready"), 0.0);
    match tokio_tungstenite::connect_async(server.url("drain")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let u = text_update(1, "still served while draining");
    live.send(encode_sync_update(&u)).await;
    assert_eq!(live.recv().await, Msg::Update(u));
    // Then the connection is closed with 1001 and the server stops.
    assert_eq!(live.expect_close().await.0, 1001);
    server.stop().await;
}

/// Runs the real binary at the most verbose log level through a session that handles every
/// secret the server knows (JWT secret, admin key, tokens in the query, in a header, in a
/// subprotocol, a minted token in a response, refused tokens) and checks none of them is in
/// the logs.
#[test]
fn logs_never_contain_secrets() {
    for format in ["pretty", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_yrelay"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--log",
                "trace",
                "--log-format",
                format,
            ])
            .env("YRELAY_JWT_SECRET", SECRET)
            .env("YRELAY_ADMIN_KEY", ADMIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: std::net::SocketAddr = line.trim().rsplit_once("://").unwrap().1.parse().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut all = String::new();
            stderr.read_to_string(&mut all).unwrap();
            all
        });

        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut secrets = vec![SECRET.to_owned(), ADMIN.to_owned()];
        rt.block_on(async {
            let admin = format!("Bearer {ADMIN}");
            let minted = http(
                addr,
                "POST",
                "/v1/rooms/secret-room/tokens",
                &[("Authorization", &admin)],
                br#"{"role":"editor","sub":"alice"}"#,
            )
            .await;
            assert_eq!(minted.status, 201, "{}", minted.text());
            let t = minted.json()["token"].as_str().unwrap().to_owned();
            secrets.push(t.clone());
            let own = token("secret-room", Role::Owner);
            secrets.push(own.clone());
            // Query, header and subprotocol.
            let mut c = Client::join(&format!("ws://{addr}/secret-room?token={t}")).await;
            let u = text_update(1, "hi");
            c.send(encode_sync_update(&u)).await;
            assert_eq!(c.recv().await, Msg::Update(u));
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = format!("ws://{addr}/secret-room")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {own}").parse().unwrap());
            drop(tokio_tungstenite::connect_async(req).await.unwrap());
            let mut req = format!("ws://{addr}/secret-room")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("sec-websocket-protocol", own.parse().unwrap());
            drop(tokio_tungstenite::connect_async(req).await.unwrap());
            // Refused: a token for another room, a tampered one.
            let wrong = token("other", Role::Editor);
            secrets.push(wrong.clone());
            assert!(tokio_tungstenite::connect_async(format!(
                "ws://{addr}/secret-room?token={wrong}"
            ))
            .await
            .is_err());
            let tampered = format!("{t}x");
            assert!(tokio_tungstenite::connect_async(format!(
                "ws://{addr}/secret-room?token={tampered}"
            ))
            .await
            .is_err());
            // REST with the admin key and a wrong key.
            let rooms = http(addr, "GET", "/v1/rooms", &[("Authorization", &admin)], b"").await;
            assert_eq!(rooms.status, 200);
            let wrong_key = format!("Bearer {ADMIN}-wrong");
            let resp = http(
                addr,
                "GET",
                "/v1/rooms",
                &[("Authorization", &wrong_key)],
                b"",
            )
            .await;
            assert_eq!(resp.status, 401);
            drop(c);
        });
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
        let logs = logs.join().unwrap();
        assert!(
            logs.lines().count() > 20,
            "trace logging produced almost nothing ({format}):\n{logs}"
        );
        if format == "json" {
            for line in logs.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            }
        }
        for secret in &secrets {
            // Any 16-character piece of a secret (a token's signature, say) counts.
            for piece in secret.as_bytes().chunks(16).filter(|c| c.len() == 16) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !logs.contains(piece),
                    "the {format} log contains part of a secret ({piece:?})"
                );
            }
        }
    }
}
