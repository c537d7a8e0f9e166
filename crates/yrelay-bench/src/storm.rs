//! `join-storm`: N clients join one large document at the same moment.
//!
//! A seeder fills the room's Y.Text with `doc_bytes` characters (in updates of at most
//! `chunk_bytes`) and stays connected, so servers that keep documents only while someone is in
//! the room keep it too. A probe joins and checks the server holds the whole text. Then N
//! clients connect at once; each is timed from its connect to the last byte of the server's
//! SyncStep2 (the document). Joiners do not apply the document (that would measure `yrs` in the
//! bench, not the server); the probe did, once, to check the content.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::proto;
use crate::stats::{micros, Percentiles};

/// What to run.
#[derive(Debug, Clone)]
pub struct StormSpec {
    /// URL with `{room}`.
    pub url: String,
    /// Joiners.
    pub clients: usize,
    /// Characters in the document.
    pub doc_bytes: usize,
    /// Largest seeding update.
    pub chunk_bytes: usize,
    /// Per joiner.
    pub timeout: Duration,
    /// The room.
    pub room: String,
}

/// The result (one JSON line).
#[derive(Debug, Serialize)]
pub struct StormReport {
    /// Always `join-storm`.
    pub mode: &'static str,
    /// The URL template.
    pub url: String,
    /// Joiners.
    pub clients: usize,
    /// Characters in the document.
    pub doc_bytes: usize,
    /// Seeding (all chunks sent until the probe saw the whole text).
    pub seed_s: f64,
    /// Smallest SyncStep2 (the document) a joiner received, in bytes.
    pub sync_step2_min_bytes: usize,
    /// Largest one.
    pub sync_step2_max_bytes: usize,
    /// Joiners that received the document.
    pub joined: usize,
    /// Joiners that failed.
    pub errors: usize,
    /// Connect to last byte of the document, per joiner.
    pub join_ms: Percentiles,
    /// From the storm's start to the last joiner done.
    pub storm_s: f64,
    /// The first few problems.
    pub problems: Vec<String>,
}

/// Seeds, probes, storms.
pub async fn run(spec: StormSpec) -> anyhow::Result<StormReport> {
    let url = spec.url.replace("{room}", &spec.room);
    let t0 = Instant::now();
    let mut seeder = Client::connect(&url, true, 1).await.context("seeder")?;
    let mut left = spec.doc_bytes;
    while left > 0 {
        let n = left.min(spec.chunk_bytes.max(1));
        seeder.append_bulk(n).await.context("seeding")?;
        left -= n;
    }
    // The probe retries until the server has integrated every chunk.
    let deadline = Instant::now() + spec.timeout;
    loop {
        let probe = Client::connect(&url, true, 2).await.context("probe")?;
        let have = probe.text().len();
        probe.close(Duration::from_secs(1)).await;
        if have >= spec.doc_bytes {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server holds {have} of {} characters after {:?}",
            spec.doc_bytes,
            spec.timeout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seed_s = t0.elapsed().as_secs_f64();
    // Keep the seeder's socket read, so the server never sees it as a slow consumer.
    let seeder_task = tokio::spawn(async move { while seeder.next_binary().await.is_ok() {} });

    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..spec.clients {
        let url = url.clone();
        let limit = spec.timeout;
        tasks.spawn(async move {
            let began = Instant::now();
            let joined = tokio::time::timeout(limit, async {
                let ws = proto::connect(&url).await?;
                let (mut tx, mut rx) = futures_util::StreamExt::split(ws);
                use futures_util::{SinkExt, StreamExt};
                use tokio_tungstenite::tungstenite::Message;
                tx.send(Message::Binary(yrelay_doc::codec::encode_sync_step1(&[0])))
                    .await?;
                loop {
                    match rx.next().await {
                        Some(Ok(Message::Binary(b))) if proto::is_sync_step2(&b) => {
                            let _ = tx.send(Message::Close(None)).await;
                            return anyhow::Ok(b.len());
                        }
                        Some(Ok(Message::Close(f))) => anyhow::bail!("closed: {f:?}"),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("connection dropped"),
                    }
                }
            })
            .await;
            match joined {
                Ok(Ok(size)) => Ok((began.elapsed(), size)),
                Ok(Err(e)) => Err(format!("joiner {i}: {e:#}")),
                Err(_) => Err(format!("joiner {i}: timed out")),
            }
        });
    }
    let (mut times, mut sizes, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((took, size))) => {
                times.push(micros(took));
                sizes.push(size);
            }
            Ok(Err(e)) => problems.push(e),
            Err(e) => problems.push(format!("task: {e}")),
        }
    }
    let storm_s = start.elapsed().as_secs_f64();
    seeder_task.abort();
    let errors = problems.len();
    problems.truncate(8);
    Ok(StormReport {
        mode: "join-storm",
        url: spec.url,
        clients: spec.clients,
        doc_bytes: spec.doc_bytes,
        seed_s,
        sync_step2_min_bytes: sizes.iter().copied().min().unwrap_or(0),
        sync_step2_max_bytes: sizes.iter().copied().max().unwrap_or(0),
        joined: times.len(),
        errors,
        join_ms: Percentiles::from_micros(times),
        storm_s,
        problems,
    })
}
