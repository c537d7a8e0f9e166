//! `idle`: many connections that sync and then do nothing; the server's memory per
//! connection, read from `/proc/<pid>/status` when its pid is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Client, Ended};
use crate::stats::{micros, rss_bytes, Percentiles};

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    /// URL with `{room}`.
    pub url: String,
    /// Connections in all.
    pub connections: usize,
    /// Rooms they are spread over (round robin).
    pub rooms: usize,
    /// Run the sync handshake.
    pub sync: bool,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Per connection.
    pub connect_timeout: Duration,
    /// How long to hold them all open (RSS is read at the end of the hold).
    pub hold: Duration,
    /// The server's pid, for RSS.
    pub server_pid: Option<u32>,
    /// Room names are `<prefix>-<n>`.
    pub room_prefix: String,
}

/// The result (one JSON line).
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Always `idle`.
    pub mode: &'static str,
    /// The URL template.
    pub url: String,
    /// Connections asked for.
    pub connections: usize,
    /// Rooms.
    pub rooms: usize,
    /// Connections open (and synced) at the end of the hold.
    pub open_at_end: usize,
    /// Could not connect.
    pub connect_errors: usize,
    /// Closed by the server during the hold.
    pub closes: usize,
    /// Time to connect and sync, each.
    pub connect_ms: Percentiles,
    /// From the first connect to the last one done.
    pub connect_all_s: f64,
    /// Server RSS before connecting.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS at the end of the hold.
    pub server_rss_held_bytes: Option<u64>,
    /// (held − before) ÷ open connections.
    pub server_bytes_per_connection: Option<f64>,
    /// This process's RSS at the end of the hold (the clients).
    pub client_rss_bytes: Option<u64>,
    /// The first few problems.
    pub problems: Vec<String>,
}

/// Opens, holds and closes the connections.
pub async fn run(spec: IdleSpec) -> IdleReport {
    let before = spec.server_pid.and_then(rss_bytes);
    let slots = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let (release_tx, release) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..spec.connections {
        let url = spec.url.replace(
            "{room}",
            &format!("{}-{}", spec.room_prefix, i % spec.rooms.max(1)),
        );
        let slots = Arc::clone(&slots);
        let mut release = release.clone();
        let done = done_tx.clone();
        let (sync, limit) = (spec.sync, spec.connect_timeout);
        tasks.spawn(async move {
            let connected = {
                let _slot = slots.acquire().await;
                let start = Instant::now();
                match tokio::time::timeout(limit, Client::connect(&url, sync, i as u64 + 1)).await {
                    Ok(Ok(c)) => {
                        let _ = done.send(Ok(start.elapsed()));
                        c
                    }
                    Ok(Err(e)) => {
                        let _ = done.send(Err(format!("connect: {e:#}")));
                        return None;
                    }
                    Err(_) => {
                        let _ = done.send(Err("connect: timed out".into()));
                        return None;
                    }
                }
            };
            // The coordinator counts connects by the channel closing: let go of it now.
            drop(done);
            let mut client = connected;
            // Idle: read (answering pings, taking keepalives) until released.
            let ended = loop {
                tokio::select! {
                    frame = client.next_binary() => {
                        if let Err(ended) = frame {
                            break Some(ended);
                        }
                    }
                    _ = release.changed() => break None,
                }
            };
            if ended.is_none() {
                client.close(Duration::from_secs(2)).await;
            }
            ended
        });
    }
    drop(done_tx);
    let mut connect = Vec::new();
    let mut problems = Vec::new();
    let mut connect_errors = 0;
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok(d) => connect.push(micros(d)),
            Err(e) => {
                connect_errors += 1;
                problems.push(e);
            }
        }
    }
    let connect_all = t0.elapsed();
    tokio::time::sleep(spec.hold).await;
    let held = spec.server_pid.and_then(rss_bytes);
    let client_rss = rss_bytes(std::process::id());
    let _ = release_tx.send(true);
    let mut closes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(Ended::Closed(r) | Ended::Failed(r))) => {
                closes += 1;
                problems.push(format!("closed: {r}"));
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("task: {e}")),
        }
    }
    problems.sort();
    problems.dedup();
    problems.truncate(8);
    let open = connect.len() - closes.min(connect.len());
    IdleReport {
        mode: "idle",
        url: spec.url,
        connections: spec.connections,
        rooms: spec.rooms,
        open_at_end: open,
        connect_errors,
        closes,
        connect_ms: Percentiles::from_micros(connect),
        connect_all_s: connect_all.as_secs_f64(),
        server_rss_before_bytes: before,
        server_rss_held_bytes: held,
        server_bytes_per_connection: match (before, held) {
            (Some(b), Some(h)) if open > 0 => Some((h.saturating_sub(b)) as f64 / open as f64),
            _ => None,
        },
        client_rss_bytes: client_rss,
        problems,
    }
}
