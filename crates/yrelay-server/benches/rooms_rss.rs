//! Memory of many rooms, and whether it comes back once idle rooms are evicted.
//!
//! `cargo bench -p yrelay-server --bench rooms_rss`
//!
//! An in-process server (real sled in a temporary directory, port 0, default `fsync`
//! durability) with `timeouts.room_idle_ms = 200`. Three phases, reading `VmRSS` (and the
//! peak, `VmHWM`) from `/proc/self/status`:
//!
//! 1. **Churn**: 10,000 rooms one after another — connect, send one small update, wait for its
//!    echo, close. With a 200 ms idle timeout only the rooms of the last 200 ms (a few hundred)
//!    are resident at any moment; this shows what 10,000 room lifetimes leave behind.
//! 2. **Resident**: as many rooms as the open-files limit allows (up to 10,000) held open at
//!    once, each with its connection — the peak — then all closed and left to be evicted.
//! 3. **Again**: phase 2 with new rooms, to tell memory the allocator kept for reuse from
//!    memory that leaked (a leak would raise the second peak).
//!
//! RSS is the whole process: the server *and* the WebSocket clients (both ends of every
//! connection) live in it. The clients use a 4 KiB read buffer (see [`client_config`]) so that
//! they add little; the server's connections keep their defaults. Freed memory may stay in
//! glibc malloc's arenas rather than go back to the kernel; the output says so. (`malloc_trim`
//! would need `unsafe`, which the workspace forbids, so this bench does not call it; glibc's
//! behaviour can be changed from outside with `GLIBC_TUNABLES`, which the output echoes.)
#![allow(missing_docs, clippy::unwrap_used)]
// A harness-less bench reports on stdout, like criterion does.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use yrelay_doc::codec::encode_sync_update;
use yrs::{Doc, Text, Transact};

/// Rooms in each phase.
const ROOMS: usize = 10_000;
/// Index of the warm-up room, past every measured room's index.
const WARMUP_ROOM: usize = 100_000;
/// The idle timeout after which an empty room is evicted.
const IDLE_MS: u64 = 200;
/// How long past the idle timeout to wait for evictions.
const SETTLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// (VmRSS, VmHWM) in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn line(what: &str) -> u64 {
    let (now, peak) = rss();
    println!(
        "  {what:<58} VmRSS {:>10}   (VmHWM {})",
        mib(now),
        mib(peak)
    );
    now
}

/// The soft limit on open files, from `/proc/self/limits` (no `unsafe` needed).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// One small update (a short word typed by a fresh client).
fn small_update(i: usize) -> Vec<u8> {
    let doc = Doc::with_client_id(1_000_000 + i as u64);
    let text = doc.get_or_insert_text("content");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "hello");
    txn.encode_update_v1()
}

/// The clients' WebSocket configuration: tungstenite's default read buffer is 128 KiB and it
/// zero-fills all of it before the first read, so every default connection end costs 128 KiB
/// of RSS. Real clients are browsers elsewhere; a small buffer keeps the in-process client
/// ends from dominating what is measured (the server's ends keep their defaults).
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Connects to `room-{i}`, sends one update and waits for its echo.
async fn open_room(addr: std::net::SocketAddr, i: usize) -> Ws {
    let url = format!("ws://{addr}/room-{i}");
    let (mut ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true),
    )
    .await
    .unwrap()
    .unwrap();
    let frame = encode_sync_update(&small_update(i));
    ws.send(Message::Binary(frame.clone())).await.unwrap();
    loop {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) if b == frame => return ws,
            _ => continue,
        }
    }
}

/// Closes with the closing handshake, so the server sees the leave at once.
async fn close(mut ws: Ws) {
    ws.close(None).await.ok();
    let _ = timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Waits past the idle timeout, printing RSS along the way; returns the last reading.
async fn settle(last_close: Instant) -> u64 {
    let mut rss = 0;
    for ms in [
        IDLE_MS + 500,
        IDLE_MS + 1000,
        IDLE_MS + SETTLE.as_millis() as u64,
    ] {
        sleep(Duration::from_millis(ms).saturating_sub(last_close.elapsed())).await;
        rss = line(&format!("{ms} ms after the last close"));
    }
    rss
}

/// Opens rooms `first..first + n`, all held open at once; prints RSS; closes them all and
/// waits for eviction. Returns (RSS before, with all open, after eviction).
async fn hold(addr: std::net::SocketAddr, first: usize, n: usize) -> (u64, u64, u64) {
    let base = line("before");
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in first..first + n {
        conns.push(open_room(addr, i).await);
    }
    let peak = line(&format!("all {n} open ({:.1?})", t.elapsed()));
    println!(
        "  => {:.1} KiB per open room + connection",
        peak.saturating_sub(base) as f64 / n as f64
    );
    let t = Instant::now();
    for ws in conns {
        close(ws).await;
    }
    line(&format!("all closed ({:.1?})", t.elapsed()));
    let after = settle(Instant::now()).await;
    (base, peak, after)
}

async fn bench(rooms: usize) {
    let mut server = TestServer::start_with(|c| c.timeouts.room_idle_ms = IDLE_MS).await;
    let addr = server.addr;

    println!(
        "rooms_rss: in-process server (fsync durability, room_idle_ms = {IDLE_MS}); its clients \
         (tokio-tungstenite, 4 KiB read buffer) share this process and its RSS. \
         GLIBC_TUNABLES={:?}",
        std::env::var("GLIBC_TUNABLES").unwrap_or_default()
    );
    // Warm up: first room, sled's first writes, tokio's worker threads.
    close(open_room(addr, WARMUP_ROOM).await).await;
    sleep(Duration::from_millis(IDLE_MS) + SETTLE).await;
    let before = line("before (server started, one room opened and evicted)");

    println!("phase 1: {rooms} rooms one after another (connect, one update, echo, close)");
    let t = Instant::now();
    for i in 0..rooms {
        close(open_room(addr, i).await).await;
    }
    line(&format!(
        "after opening {rooms} rooms ({:.1?})",
        t.elapsed()
    ));
    let evicted = settle(Instant::now()).await;
    println!(
        "  => {} over the start after eviction ({:.0} bytes per room lifetime)",
        mib(evicted.saturating_sub(before)),
        evicted.saturating_sub(before) as f64 * 1024.0 / rooms as f64
    );

    let limit = open_files_limit();
    // Two descriptors per connection (client and server end), and room for everything else.
    let held = rooms.min(limit.saturating_sub(500) / 2);
    let limited = if held < rooms {
        format!(
            " (the open-files limit {limit} allows no more: two descriptors per connection in \
             this process)"
        )
    } else {
        String::new()
    };
    println!("phase 2: {held} rooms held open at once, each with its connection{limited}");
    let (base, peak, after) = hold(addr, rooms, held).await;
    println!(
        "  => {} of the {} growth still in RSS after eviction",
        mib(after.saturating_sub(base)),
        mib(peak.saturating_sub(base))
    );
    println!("phase 3: the same again with {held} new rooms (is the retained memory reused?)");
    let (_, peak3, after3) = hold(addr, rooms + held, held).await;
    println!(
        "  => peak {} vs {} in phase 2; {} after eviction",
        mib(peak3),
        mib(peak),
        mib(after3)
    );
    println!(
        "note: rooms are evicted inside the server (not observable from here; the wait is \
         {} ms past the idle timeout). Memory freed by evicted rooms and closed connections \
         can stay in the allocator (mimalloc here, as in the binary) instead of going back to the kernel (a repeated \
         peak no higher than the first means it is reused, not leaked). This bench does not \
         call malloc_trim: it would need unsafe, which the workspace forbids.",
        SETTLE.as_millis()
    );

    server.stop().await;
}

/// The same allocator as the `yrelay` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) gets a quick smoke
    // run that only checks the bench still works.
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(bench(if full { ROOMS } else { 20 }));
    println!("total {:.1?}", started.elapsed());
}
