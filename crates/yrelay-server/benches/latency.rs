//! Update latency through a real relay, per durability mode: the time from a writer sending a
//! small update until a second client (the reader) receives it.
//!
//! `cargo bench -p yrelay-server --bench latency`
//!
//! For each of `fsync` and `batched`, an in-process server (real sled in a temporary
//! directory, port 0) serves one writer and one reader over loopback WebSockets. The writer
//! sends 2000 one-character typing updates, three times paced about 2 ms apart (someone typing
//! fast with a few peers), then three times back to back (a burst, where group commit folds
//! many updates into one fsync). A last configuration (`fsync*`) repeats the fsync bursts with
//! a larger outbound queue (see `bench`). Server and clients share one tokio runtime in this
//! process. Each run uses a fresh room; a run the server cuts short is printed as FAILED with
//! the close code and reason.
//!
//! The reader identifies what arrived by the writer's clock in each received update, so it
//! does not depend on how frames are batched. Prints a table to stdout.
#![allow(missing_docs, clippy::unwrap_used)]
// A harness-less bench reports on stdout, like criterion does.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use yrelay_doc::codec::encode_sync_update;
use yrelay_doc::validate::validate_update_runs_v1;
use yrelay_doc::ValidateLimits;
use yrelay_server::config::Durability;
use yrs::{Doc, Text, Transact};

/// Updates per run.
const UPDATES: usize = 2000;
/// Runs of each kind per mode, each in a fresh room, all printed.
const REPEAT: usize = 3;
/// Gap between two updates in the paced run.
const PACE: Duration = Duration::from_millis(2);
/// Outbound queue (frames) of the extra fsync configuration.
const BIG_QUEUE: usize = 8192;
/// Longest wait for any single thing before the bench gives up.
const WAIT: Duration = Duration::from_secs(30);

/// An in-process server on port 0 with `durability` (the integration tests' helper).
async fn start(durability: Durability, outbound_queue_frames: Option<usize>) -> TestServer {
    TestServer::start_with(|config| {
        config.persistence.durability = durability;
        if let Some(frames) = outbound_queue_frames {
            config.limits.outbound_queue_frames = frames;
        }
    })
    .await
}

fn read_var(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The update inside a `sync / SyncStep2` or `sync / Update` frame.
fn sync_update(frame: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    if read_var(frame, &mut pos)? != 0 || !matches!(read_var(frame, &mut pos)?, 1 | 2) {
        return None;
    }
    let len = read_var(frame, &mut pos)? as usize;
    frame.get(pos..pos + len)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and waits for the greeting's SyncStep1, after which the connection is subscribed.
async fn join(url: &str) -> Ws {
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    loop {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) if b.starts_with(&[0, 0]) => return ws,
            _ => continue,
        }
    }
}

/// `n` typing updates from one client, each one character at the end: update `i` carries
/// clock `i` of `client`.
fn typing_frames(client: u64, n: usize) -> Vec<Bytes> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("content");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i as u32, "x");
            encode_sync_update(&txn.encode_update_v1())
        })
        .collect()
}

struct RunResult {
    /// Send-to-arrival time per update.
    latencies: Vec<Duration>,
    /// From the first send to the last arrival.
    elapsed: Duration,
}

/// Sends `n` updates from a fresh writer in `room` and times their arrival at a reader.
/// A run the server cut short (it closes a connection whose outbound queue overflows) is
/// reported as an error saying how far it got and why.
async fn run(
    server: &TestServer,
    room: &str,
    client: u64,
    n: usize,
    pace: Option<Duration>,
) -> Result<RunResult, String> {
    let url = format!("ws://{}/{room}", server.addr);
    let frames = typing_frames(client, n);
    let mut reader = join(&url).await;
    let writer = join(&url).await;
    let (mut sink, mut echoes) = writer.split();
    // The writer's own echoes must be read, or its outbound queue fills and the server
    // (rightly) disconnects it as a slow consumer.
    let drain = tokio::spawn(async move {
        while let Some(msg) = echoes.next().await {
            match msg {
                Ok(Message::Close(Some(c))) => {
                    return format!("writer closed: {} {}", c.code, c.reason)
                }
                Ok(_) => {}
                Err(e) => return format!("writer: {e}"),
            }
        }
        "writer connection ended".to_owned()
    });

    let receive = tokio::spawn(async move {
        let mut arrived = Vec::with_capacity(n);
        while arrived.len() < n {
            let got = arrived.len();
            let msg = match timeout(WAIT, reader.next()).await {
                Err(_) => return Err(format!("reader timed out after {got} of {n} updates")),
                Ok(None) => return Err(format!("reader connection ended after {got} of {n}")),
                Ok(Some(Err(e))) => return Err(format!("reader error after {got} of {n}: {e}")),
                Ok(Some(Ok(msg))) => msg,
            };
            let now = Instant::now();
            let frame = match msg {
                Message::Binary(frame) => frame,
                Message::Close(c) => {
                    let why = c.map_or(String::new(), |c| format!("{} {}", c.code, c.reason));
                    return Err(format!(
                        "reader closed by the server after {got} of {n} updates: {why}"
                    ));
                }
                _ => continue,
            };
            let Some(update) = sync_update(&frame) else {
                continue;
            };
            // The writer's clock just past the last block this frame carries.
            let mut clock = 0;
            validate_update_runs_v1(update, &ValidateLimits::default(), |run| {
                if run.client == client {
                    clock = clock.max(run.end as usize);
                }
            })
            .unwrap();
            while arrived.len() < clock.min(n) {
                arrived.push(now);
            }
        }
        reader.close(None).await.ok();
        Ok(arrived)
    });

    let mut ticker = interval(pace.unwrap_or(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = Vec::with_capacity(n);
    for frame in frames {
        if pace.is_some() {
            ticker.tick().await;
        }
        sent.push(Instant::now());
        if let Err(e) = sink.send(Message::Binary(frame)).await {
            drain.abort();
            return Err(format!("writer could not send update {}: {e}", sent.len()));
        }
    }
    let arrived = timeout(WAIT, receive).await.unwrap().unwrap();
    sink.close().await.ok();
    let writer_end = timeout(Duration::from_secs(1), drain).await;
    let arrived = arrived.map_err(|e| match writer_end {
        Ok(Ok(w)) if w.starts_with("writer closed") => format!("{e}; {w}"),
        _ => e,
    })?;

    Ok(RunResult {
        latencies: sent.iter().zip(&arrived).map(|(s, a)| *a - *s).collect(),
        elapsed: arrived[n - 1] - sent[0],
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn report(mode: &str, run_name: &str, result: Result<RunResult, String>) {
    let mut r = match result {
        Ok(r) => r,
        Err(why) => {
            println!("{mode:<8} {run_name:<17} FAILED: {why}");
            return;
        }
    };
    r.latencies.sort();
    let n = r.latencies.len();
    println!(
        "{mode:<8} {run_name:<17} {n:>5} {:>10} {:>10} {:>10} {:>10} {:>12.0}",
        ms(percentile(&r.latencies, 50.0)),
        ms(percentile(&r.latencies, 99.0)),
        ms(r.latencies[n - 1]),
        format!("{:.2} s", r.elapsed.as_secs_f64()),
        n as f64 / r.elapsed.as_secs_f64(),
    );
}

async fn bench(updates: usize, repeat: usize) {
    println!(
        "latency: {updates} one-character updates, writer -> relay -> reader over loopback, \
         server and clients in this process (one tokio runtime, {} worker threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<8} {:<17} {:>5} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "mode", "run", "n", "p50", "p99", "max", "elapsed", "updates/s"
    );
    // The last configuration repeats the fsync burst with a larger outbound queue: in fsync
    // mode every frame produced during a flush is held and then released at once, one frame
    // per update, so a burst of more than `limits.outbound_queue_frames` (1024) updates
    // arriving during one flush overflows every subscriber's queue (close 1013).
    for (mode, durability, queue, paced) in [
        ("fsync", Durability::Fsync, None, true),
        ("batched", Durability::Batched, None, true),
        ("fsync*", Durability::Fsync, Some(BIG_QUEUE), false),
    ] {
        let mut server = start(durability, queue).await;
        // Warm-up: first connections, first room, sled's first writes.
        run(&server, "warmup", 1_000_000, 200, None).await.unwrap();
        for rep in (1..=repeat).filter(|_| paced) {
            let client = 1_000_000 + 10 * rep as u64;
            let paced = run(
                &server,
                &format!("paced-{rep}"),
                client,
                updates,
                Some(PACE),
            )
            .await;
            report(mode, &format!("paced 2 ms #{rep}"), paced);
        }
        for rep in 1..=repeat {
            let client = 1_000_001 + 10 * rep as u64;
            let burst = run(&server, &format!("burst-{rep}"), client, updates, None).await;
            report(mode, &format!("back-to-back #{rep}"), burst);
        }
        server.stop().await;
    }
    println!(
        "fsync* = fsync with limits.outbound_queue_frames = {BIG_QUEUE} (default 16384).\n\
         updates/s = updates / time from the first send to the last arrival; the paced run is \
         bounded by its pace."
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) gets a quick smoke
    // run that only checks the bench still works.
    let full = std::env::args().any(|a| a == "--bench");
    let (updates, repeat) = if full { (UPDATES, REPEAT) } else { (50, 1) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(bench(updates, repeat));
    println!("total {:.1?}", started.elapsed());
}
