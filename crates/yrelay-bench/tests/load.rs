//! The load generator against a real yrelay (in process, real sockets and sled) and against
//! the null relay: small shapes, checking what the reports say rather than how fast.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use yrelay_bench::{idle, load, null_relay, storm};

struct Yrelay {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Yrelay {
    /// The server may still be flushing sled when the test ends; deleting its directory under
    /// it can make that flush wait forever, so the directory is kept (under `target/tmp`, where
    /// the server tests' harness prunes old `yrelay-test-*` directories).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }
}

async fn yrelay() -> Yrelay {
    let dir = tempfile::Builder::new()
        .prefix("yrelay-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut config = yrelay_server::Config {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..yrelay_server::Config::default()
    };
    config.limits.messages_per_second = 0;
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = yrelay_server::server::Server::prepare(listener, config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .serve(async {
                let _ = stopped.await;
            })
            .await;
    });
    Yrelay {
        url: format!("ws://{addr}/{{room}}"),
        stop: Some(stop),
        dir: Some(dir),
    }
}

async fn null() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(null_relay::serve_on(listener));
    format!("ws://{addr}/{{room}}")
}

fn spec(url: &str, sync: bool) -> load::LoadSpec {
    load::LoadSpec {
        url: url.to_owned(),
        rooms: 3,
        clients: 4,
        writers: 3,
        rate: 20.0,
        awareness_rate: 5.0,
        duration: Duration::from_millis(1500),
        sync,
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
        room_prefix: "t".into(),
    }
}

fn check_load(r: &load::LoadReport) {
    assert!(r.converged, "{r:#?}");
    assert_eq!(r.connected, 12);
    assert_eq!(r.rooms_converged, 3);
    // 3 writers × 20/s × 1.5 s per room, give or take a tick.
    assert!(
        (200..=300).contains(&r.edits_sent),
        "edits sent: {}",
        r.edits_sent
    );
    // Every edit reaches the 3 other clients of its room, and each delivery has a latency.
    assert_eq!(r.deliveries_expected, r.edits_sent * 3);
    assert_eq!(r.deliveries, r.deliveries_expected);
    assert_eq!(r.latency_ms.n as u64, r.deliveries);
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.max);
    // Presence: 12 clients × 5/s × 1.5 s, each update seen by the 3 others of its room.
    assert!(
        (80..=110).contains(&r.awareness_sent),
        "{}",
        r.awareness_sent
    );
    assert!(
        r.awareness_received >= r.awareness_sent * 3,
        "{} received for {} sent",
        r.awareness_received,
        r.awareness_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_yrelay_delivers_every_edit_and_converges() {
    let server = yrelay().await;
    let r = load::run(spec(&server.url, true)).await;
    check_load(&r);
    assert_eq!(r.connect_ms.n, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_the_null_relay_without_the_handshake() {
    let url = null().await;
    let r = load::run(spec(&url, false)).await;
    check_load(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_edits_is_reported_as_not_converged() {
    // A "server" that accepts WebSockets and answers the handshake but relays nothing: the
    // report must say so, not pass.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                use tokio_tungstenite::tungstenite::Message;
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    // Answer SyncStep1 with an empty SyncStep2; swallow everything else.
                    if let Message::Binary(b) = msg {
                        if b.first() == Some(&0) && b.get(1) == Some(&0) {
                            let empty = yrelay_doc::codec::encode_sync_step2(&[0, 0]);
                            let _ = ws.send(Message::Binary(empty)).await;
                        }
                    }
                }
            });
        }
    });
    let mut s = spec(&format!("ws://{addr}/{{room}}"), true);
    s.drain_timeout = Duration::from_millis(300);
    s.awareness_rate = 0.0;
    let r = load::run(s).await;
    assert!(!r.converged);
    assert_eq!(r.deliveries, 0);
    assert!(r.edits_sent > 0);
    assert_eq!(r.rooms_converged, 0);
    assert!(
        r.problems.iter().any(|p| p.contains("diverged")),
        "{:?}",
        r.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_open_and_the_server_rss_is_read() {
    let server = yrelay().await;
    let r = idle::run(idle::IdleSpec {
        url: server.url.clone(),
        connections: 200,
        rooms: 10,
        sync: true,
        connect_concurrency: 50,
        connect_timeout: Duration::from_secs(10),
        hold: Duration::from_millis(300),
        // The server runs in this process.
        server_pid: Some(std::process::id()),
        room_prefix: "idle".into(),
    })
    .await;
    assert_eq!(r.open_at_end, 200, "{r:#?}");
    assert_eq!((r.connect_errors, r.closes), (0, 0));
    assert!(r.server_rss_before_bytes.is_some() && r.server_rss_held_bytes.is_some());
    assert!(r.server_bytes_per_connection.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_receives_the_whole_document() {
    let server = yrelay().await;
    let r = storm::run(storm::StormSpec {
        url: server.url.clone(),
        clients: 20,
        doc_bytes: 300_000,
        chunk_bytes: 100_000,
        timeout: Duration::from_secs(30),
        room: "storm".into(),
    })
    .await
    .unwrap();
    assert_eq!((r.joined, r.errors), (20, 0), "{r:#?}");
    assert!(r.sync_step2_min_bytes >= 300_000, "{r:#?}");
    assert_eq!(r.join_ms.n, 20);
}
