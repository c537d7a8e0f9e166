//! Memory of many rooms, and whether it comes back once idle rooms are evicted.
//!
//! `cargo bench -p yrelay-server --bench rooms_rss`
//!
//! An in-process server (real sled in a temporary directory, port 0, default `fsync`
//! durability) with `timeouts.room_idle_ms = 200`. Reads `VmRSS` (and the peak, `VmHWM`, and
//! the thread count) from `/proc/self/status`, and the number of rooms the server has loaded
//! from its `yrelay_rooms_loaded` gauge (the bench installs a metrics recorder that keeps only
//! that gauge), so evictions are seen, not assumed. The phases run in the order given by
//! `YRELAY_RSS_PHASES` (comma-separated, a phase may repeat; default
//! `churn,churn,reuse,revisit,store,resident`):
//!
//! - **`churn`**: 10,000 new rooms one after another — connect, send one small update, wait for
//!   its echo, close. With a 200 ms idle timeout only the rooms of the last 200 ms (a few
//!   hundred) are loaded at any moment; this shows what 10,000 lifetimes of *distinct* rooms
//!   leave behind. It runs twice by default: whichever phase writes first also pays a one-time
//!   warm-up of the write path (sled's buffers, the allocator's pages), so the second `churn`
//!   is the per-room figure.
//! - **`reuse`**: 10,000 lifetimes of the same 200 rooms, each like one of `churn` (a new
//!   update, echoed and stored). The rooms go in rounds of 200, and each round waits until the
//!   gauge shows all of them evicted, so every lifetime loads its room afresh from the store.
//!   Each lifetime adds a log entry and an audit record to the store, but no new room.
//! - **`revisit`**: the same, except that each lifetime sends the update its room already
//!   holds, so nothing is stored (and nothing echoed: the client then sends a SyncStep1 and
//!   waits for the SyncStep2). Everything a room lifetime costs the server but the write: a
//!   per-lifetime leak would make this grow like `churn`.
//! - **`store`**: sled alone, no server or WebSocket: a second `SledStore` in its own temporary
//!   directory and, for each of 10,000 new rooms, what the server asks of its store in a
//!   `churn` lifetime (load, append one update, flush). What the store keeps per new room.
//! - **`store-reuse`** (not in the default): the same with 10,000 writes to the same 200
//!   rooms, the store's side of `reuse`.
//! - **`resident`**: as many rooms as the open-files limit allows (up to 10,000) held open at
//!   once, each with its connection — the peak — then all closed and left to be evicted; then
//!   the same again with new rooms, to tell memory the allocator kept for reuse from memory
//!   that leaked (a leak would raise the second peak).
//!
//! RSS is the whole process: the server *and* the WebSocket clients (both ends of every
//! connection) live in it. The clients use a 4 KiB read buffer (see [`client_config`]) so that
//! they add little; the server's connections keep their defaults. The allocator is mimalloc,
//! as in the binary; freed memory may stay with it (and be reused) rather than go back to the
//! kernel, so a phase's figure moves by a few MiB from run to run. (`GLIBC_TUNABLES`, which the
//! output echoes, matters only to what glibc's allocator serves.)
#![allow(missing_docs, clippy::unwrap_used)]
// A harness-less bench reports on stdout, like criterion does.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use yrelay_doc::codec::{encode_sync_step1, encode_sync_update};
use yrelay_store::{AppendEntry, SledStore, Store};
use yrs::updates::encoder::Encode;
use yrs::{Doc, StateVector, Text, Transact};

/// Rooms (or room lifetimes) in each phase.
const ROOMS: usize = 10_000;
/// Rooms that `reuse` and `revisit` cycle through.
const NAMES: usize = 200;
/// A progress line every this many lifetimes.
const REPORT_EVERY: usize = 2_000;
/// The idle timeout after which an empty room is evicted.
const IDLE_MS: u64 = 200;
/// How long past the idle timeout to wait before the last reading.
const SETTLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);
/// The phases when `YRELAY_RSS_PHASES` is not set.
const DEFAULT_PHASES: &str = "churn,churn,reuse,revisit,store,resident";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The server's `yrelay_rooms_loaded` gauge: rooms in its registry (loading, in use, or idle
/// and not yet evicted).
static ROOMS_LOADED: AtomicU64 = AtomicU64::new(0);

fn rooms_loaded() -> u64 {
    ROOMS_LOADED.load(Ordering::Relaxed)
}

/// Writes `yrelay_rooms_loaded` to [`ROOMS_LOADED`].
struct RoomsLoadedGauge;

impl GaugeFn for RoomsLoadedGauge {
    fn increment(&self, value: f64) {
        ROOMS_LOADED.fetch_add(value as u64, Ordering::Relaxed);
    }

    fn decrement(&self, value: f64) {
        ROOMS_LOADED.fetch_sub(value as u64, Ordering::Relaxed);
    }

    fn set(&self, value: f64) {
        ROOMS_LOADED.store(value as u64, Ordering::Relaxed);
    }
}

/// A metrics recorder that keeps `yrelay_rooms_loaded` and drops everything else.
#[derive(Debug)]
struct RoomsLoadedRecorder;

impl Recorder for RoomsLoadedRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == "yrelay_rooms_loaded" {
            Gauge::from_arc(Arc::new(RoomsLoadedGauge))
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Waits until the server has evicted every room; returns how long that took.
async fn all_evicted() -> Duration {
    let t = Instant::now();
    while rooms_loaded() > 0 {
        assert!(t.elapsed() < WAIT, "rooms still loaded after {WAIT:?}");
        sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

/// (VmRSS, VmHWM) in KiB, and the process's threads.
fn rss() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints RSS (with the rooms loaded and the threads); returns VmRSS in KiB.
fn line(what: &str) -> u64 {
    let (now, peak, threads) = rss();
    println!(
        "  {what:<52} VmRSS {:>10}   (VmHWM {}; {} rooms loaded; {threads} threads)",
        mib(now),
        mib(peak),
        rooms_loaded()
    );
    now
}

/// Prints the growth from `before` to `after` per `n` room lifetimes.
fn growth(before: u64, after: u64, n: usize, what: &str) {
    let grown = after as f64 - before as f64;
    println!(
        "  => {:+.1} MiB over the phase's start ({:+.0} bytes per {what})",
        grown / 1024.0,
        grown * 1024.0 / n as f64
    );
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

/// One small update: a short word typed by a fresh client with ID `1_000_000 + i`.
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

/// Whether the room already holds the update a client sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// New to the room: it is stored and echoed.
    New,
    /// Already in the room: neither stored nor echoed.
    Known,
}

/// Connects to `room-{room}`, sends `update` and waits until the room has handled it: for the
/// echo of a new update; after a known one (which is not echoed) the client sends a SyncStep1
/// and waits for the SyncStep2 answer, which the room sends only after handling the update
/// (it handles its inbox in order).
async fn open_room(addr: SocketAddr, room: usize, update: &[u8], sent: Sent) -> Ws {
    let url = format!("ws://{addr}/room-{room}");
    let (mut ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true),
    )
    .await
    .unwrap()
    .unwrap();
    let frame = encode_sync_update(update);
    ws.send(Message::Binary(frame.clone())).await.unwrap();
    if sent == Sent::Known {
        let step1 = encode_sync_step1(&StateVector::default().encode_v1());
        ws.send(Message::Binary(step1)).await.unwrap();
    }
    loop {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) if sent == Sent::New && b == frame => return ws,
            // Sync (0), SyncStep2 (1).
            Message::Binary(b) if sent == Sent::Known && b.starts_with(&[0, 1]) => return ws,
            _ => continue,
        }
    }
}

/// Closes with the closing handshake, so the server sees the leave at once.
async fn close(mut ws: Ws) {
    ws.close(None).await.ok();
    let _ = timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Waits until every room is evicted and past the idle timeout, printing RSS along the way;
/// returns the last reading.
async fn settle(last_close: Instant) -> u64 {
    all_evicted().await;
    println!(
        "  (all rooms evicted {} ms after the last close)",
        last_close.elapsed().as_millis()
    );
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

/// `churn`: rooms `first..first + n`, one after another. Uses `n` room numbers.
async fn churn(addr: SocketAddr, first: usize, n: usize) {
    println!("churn: {n} new rooms one after another (connect, one update, echo, close)");
    let before = line("before");
    let t = Instant::now();
    for i in 0..n {
        let room = first + i;
        close(open_room(addr, room, &small_update(room), Sent::New).await).await;
        if (i + 1) % REPORT_EVERY == 0 && i + 1 < n {
            line(&format!("after {} rooms ({:.1?})", i + 1, t.elapsed()));
        }
    }
    line(&format!("after {n} rooms ({:.1?})", t.elapsed()));
    let after = settle(Instant::now()).await;
    growth(before, after, n, "room lifetime");
}

/// `reuse` (`Sent::New`) and `revisit` (`Sent::Known`): `lifetimes` lifetimes of the rooms
/// `first..first + names` (`names` is `NAMES`, or `lifetimes` if fewer), in rounds of one
/// lifetime of each, every round followed by a wait until the server has evicted them all. A
/// first round (not counted) creates the rooms, each with the update `small_update(room)`.
/// Then `reuse` sends `small_update(first + names + j)` in lifetime `j`, and `revisit` sends
/// each room its first update again. Uses at most `NAMES + lifetimes` room numbers (client
/// IDs, for `reuse`).
async fn cycle(addr: SocketAddr, first: usize, lifetimes: usize, sent: Sent) {
    let names = NAMES.min(lifetimes);
    let (phase, what) = match sent {
        Sent::New => ("reuse", "a new update each, echoed and stored"),
        Sent::Known => (
            "revisit",
            "each sending what its room holds: nothing stored",
        ),
    };
    println!(
        "{phase}: {lifetimes} lifetimes of the same {names} rooms ({what}), each round of \
         {names} waiting until the server has evicted them"
    );
    for room in first..first + names {
        close(open_room(addr, room, &small_update(room), Sent::New).await).await;
    }
    all_evicted().await;
    let before = line(&format!("before ({names} rooms created and evicted)"));
    let t = Instant::now();
    let mut slowest_eviction = Duration::ZERO;
    for j in 0..lifetimes {
        let room = first + j % names;
        let update = match sent {
            Sent::New => small_update(first + names + j),
            Sent::Known => small_update(room),
        };
        close(open_room(addr, room, &update, sent).await).await;
        let done = j + 1;
        if done % names == 0 || done == lifetimes {
            slowest_eviction = slowest_eviction.max(all_evicted().await);
            if done % REPORT_EVERY == 0 && done < lifetimes {
                line(&format!("after {done} lifetimes ({:.1?})", t.elapsed()));
            }
        }
    }
    line(&format!(
        "after {lifetimes} lifetimes ({:.1?})",
        t.elapsed()
    ));
    println!(
        "  (every round evicted at most {} ms after its last close)",
        slowest_eviction.as_millis()
    );
    let after = settle(Instant::now()).await;
    growth(before, after, lifetimes, "room lifetime");
}

/// What the server asks of its store in a room lifetime: load `room-{room}`, append the update
/// of client `client` (with what the server records for a client: no name, the peer address),
/// flush.
fn store_write(store: &SledStore, room: usize, client: usize) {
    let name = format!("room-{room}");
    store.load(&name).unwrap();
    let entry = AppendEntry {
        update: small_update(client),
        author: "anonymous".to_owned(),
        origin: "127.0.0.1:50000".to_owned(),
        time_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    };
    store.append(&name, &[entry]).unwrap();
    store.flush().unwrap();
}

/// `store` (`names == n`) and `store-reuse` (`names == NAMES`): a fresh `SledStore` (its own
/// sled, in a temporary directory) with one room written to warm it up, then `n` writes as
/// in [`store_write`], write `i` to room `i % names` with a new update. Uses `n + 1` room
/// numbers (client IDs).
async fn store_only(first: usize, n: usize, names: usize) {
    let (phase, what) = if names == n {
        ("store", format!("{n} new rooms"))
    } else {
        (
            "store-reuse",
            format!("{n} writes to the same {names} rooms"),
        )
    };
    println!(
        "{phase}: a second SledStore, no server; {what}, each: load, append one update, flush"
    );
    let (store, dir) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store_write(&store, first, first);
        (store, dir)
    })
    .await
    .unwrap();
    let before = line("before (store opened, one room written)");
    let t = Instant::now();
    let store = tokio::task::spawn_blocking(move || {
        for i in 0..n {
            store_write(&store, first + 1 + i % names, first + 1 + i);
        }
        store
    })
    .await
    .unwrap();
    line(&format!("after {n} writes ({:.1?})", t.elapsed()));
    sleep(SETTLE).await;
    let after = line(&format!("{} ms later", SETTLE.as_millis()));
    growth(before, after, n, "write");
    drop(store);
    drop(dir);
    line("store closed and its directory removed");
}

/// Opens rooms `first..first + n`, all held open at once; prints RSS; closes them all and
/// waits for eviction. Returns (RSS before, with all open, after eviction).
async fn hold(addr: SocketAddr, first: usize, n: usize) -> (u64, u64, u64) {
    let base = line("before");
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for room in first..first + n {
        conns.push(open_room(addr, room, &small_update(room), Sent::New).await);
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

/// `resident`: `hold` twice with new rooms. Uses `2 * held` room numbers, where `held` is
/// what it returns.
async fn resident(addr: SocketAddr, first: usize, rooms: usize) -> usize {
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
    println!("resident: {held} rooms held open at once, each with its connection{limited}");
    let (base, peak, after) = hold(addr, first, held).await;
    println!(
        "  => {} of the {} growth still in RSS after eviction",
        mib(after.saturating_sub(base)),
        mib(peak.saturating_sub(base))
    );
    println!("resident, again: the same with {held} new rooms (is the retained memory reused?)");
    let (_, peak2, after2) = hold(addr, first + held, held).await;
    println!(
        "  => peak {} vs {} the first time; {} after eviction",
        mib(peak2),
        mib(peak),
        mib(after2)
    );
    held
}

async fn bench(rooms: usize, phases: &[String]) {
    let mut server = TestServer::start_with(|c| c.timeouts.room_idle_ms = IDLE_MS).await;
    let addr = server.addr;

    println!(
        "rooms_rss: in-process server (fsync durability, room_idle_ms = {IDLE_MS}); its clients \
         (tokio-tungstenite, 4 KiB read buffer) share this process and its RSS. Phases: {}. \
         GLIBC_TUNABLES={:?}",
        phases.join(","),
        std::env::var("GLIBC_TUNABLES").unwrap_or_default()
    );
    // Warm up: first room, sled's first writes, tokio's worker threads.
    close(open_room(addr, 0, &small_update(0), Sent::New).await).await;
    all_evicted().await;
    sleep(SETTLE).await;
    let start = line("start (server started, one room opened and evicted)");
    // Room numbers (and client IDs) not used yet.
    let mut next = 1;
    for phase in phases {
        match phase.as_str() {
            "churn" => {
                churn(addr, next, rooms).await;
                next += rooms;
            }
            "reuse" | "revisit" => {
                let sent = if phase == "reuse" {
                    Sent::New
                } else {
                    Sent::Known
                };
                cycle(addr, next, rooms, sent).await;
                next += NAMES + rooms;
            }
            "store" | "store-reuse" => {
                let names = if phase == "store" { rooms } else { NAMES };
                store_only(next, rooms, names).await;
                next += rooms + 1;
            }
            "resident" => next += 2 * resident(addr, next, rooms).await,
            other => panic!(
                "unknown phase {other:?} in YRELAY_RSS_PHASES (churn, reuse, revisit, store, \
                 store-reuse, resident)"
            ),
        }
    }
    let end = line("end");
    println!("  => {} over the start", mib(end.saturating_sub(start)));
    println!(
        "note: memory freed by evicted rooms and closed connections can stay in the allocator \
         (mimalloc here, as in the binary) instead of going back to the kernel; a repeated peak \
         no higher than the first means it is reused, not leaked."
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
    let phases: Vec<String> = std::env::var("YRELAY_RSS_PHASES")
        .unwrap_or_else(|_| DEFAULT_PHASES.to_owned())
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    metrics::set_global_recorder(RoomsLoadedRecorder).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(bench(if full { ROOMS } else { 20 }, &phases));
    println!("total {:.1?}", started.elapsed());
}
