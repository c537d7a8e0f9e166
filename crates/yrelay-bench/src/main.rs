//! `yrelay-bench`: a load generator for any y-websocket-compatible server, and the null relay.
//!
//! ```text
//! yrelay-bench load       --url 'ws://127.0.0.1:1234/{room}' --rooms 1 --clients 50 --rate 10 --duration 10
//! yrelay-bench idle       --url ... --connections 10000 --rooms 100 --server-pid PID
//! yrelay-bench join-storm --url ... --clients 100 --doc-bytes 10000000
//! yrelay-bench null-relay --listen 127.0.0.1:9000
//! ```
//! Each run prints one JSON line on stdout and a readable table on stderr. Runs are bounded in
//! time and connection count; the URL must be a loopback address unless `--allow-remote`.

use std::io::Write as _;
use std::time::Duration;

use clap::{Parser, Subcommand};
use yrelay_bench::stats::Percentiles;
use yrelay_bench::{idle, load, null_relay, say, storm};

#[derive(Parser)]
#[command(
    name = "yrelay-bench",
    version,
    about = "Load generator for y-websocket servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Server URL with `{room}` where the room name goes, e.g. ws://127.0.0.1:1234/{room}.
    /// `load` also takes several, comma-separated (the nodes of a cluster): writers then
    /// connect to the first and observers to the others in turn, so every measured delivery
    /// crosses nodes.
    #[arg(long)]
    url: String,
    /// Do not run the y-websocket sync handshake (for the null relay, which has no document).
    #[arg(long)]
    no_sync: bool,
    /// Allow a URL that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Seconds one connection may take to connect (and sync).
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Room names are `<prefix>-<n>`; default: `bench-<random>`, so runs do not share rooms.
    #[arg(long)]
    room_prefix: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// R rooms × C clients editing a Y.Text at a rate, with latency and convergence.
    Load {
        #[command(flatten)]
        target: Target,
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Clients per room.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Clients per room that edit (default: all); the others observe.
        #[arg(long)]
        writers: Option<usize>,
        /// One-character edits per second per writer.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Awareness updates per second per client (0: none).
        #[arg(long, default_value_t = 0.0)]
        awareness_rate: f64,
        /// Seconds of editing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds to wait after the window for edits still in flight.
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
    },
    /// Many connections that sync and then idle; server memory per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Rooms they are spread over.
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Seconds to hold them open before reading the server's RSS.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// The server's process id, for its RSS (`/proc/PID/status`).
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// N clients join one large document at once.
    JoinStorm {
        #[command(flatten)]
        target: Target,
        /// Joiners.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Characters in the document.
        #[arg(long, default_value_t = 10_000_000)]
        doc_bytes: usize,
        /// Largest seeding update, in characters.
        #[arg(long, default_value_t = 1_000_000)]
        chunk_bytes: usize,
        /// Seconds each joiner may take.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// The baseline: a WebSocket broadcast server with no CRDT and no protocol.
    NullRelay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
}

/// Upper bounds that keep a mistyped argument from running away.
const MAX_CONNECTIONS: usize = 50_000;
const MAX_DURATION_S: f64 = 600.0;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::NullRelay { listen } => null_relay::serve(listen).await,
        Command::Load {
            target,
            rooms,
            clients,
            writers,
            rate,
            awareness_rate,
            duration,
            drain,
        } => {
            check_target(&target, rooms * clients)?;
            anyhow::ensure!(
                (0.0..=MAX_DURATION_S).contains(&duration)
                    && (0.0..=MAX_DURATION_S).contains(&drain),
                "--duration and --drain must be 0..={MAX_DURATION_S} s"
            );
            anyhow::ensure!(rate >= 0.0 && awareness_rate >= 0.0, "rates must be >= 0");
            let spec = load::LoadSpec {
                url: target.url.clone(),
                rooms,
                clients,
                writers: writers.unwrap_or(clients).min(clients),
                rate,
                awareness_rate,
                duration: Duration::from_secs_f64(duration),
                sync: !target.no_sync,
                connect_concurrency: target.connect_concurrency,
                connect_timeout: Duration::from_secs_f64(target.connect_timeout),
                drain_timeout: Duration::from_secs_f64(drain),
                room_prefix: prefix(&target),
            };
            let report = load::run(spec).await;
            let ok = report.converged;
            table(
                &[
                    (
                        "rooms × clients (writers)",
                        format!(
                            "{} × {} ({})",
                            report.rooms, report.clients_per_room, report.writers_per_room
                        ),
                    ),
                    (
                        "edits/s per writer, awareness/s per client",
                        format!("{} / {}", report.edit_rate_hz, report.awareness_rate_hz),
                    ),
                    (
                        "connected (errors)",
                        format!("{} ({})", report.connected, report.connect_errors),
                    ),
                    ("connect", ms(&report.connect_ms)),
                    ("edits sent", report.edits_sent.to_string()),
                    (
                        "delivered / expected",
                        format!("{} / {}", report.deliveries, report.deliveries_expected),
                    ),
                    (
                        "delivered updates/s",
                        format!("{:.0}", report.delivered_per_s),
                    ),
                    ("latency", ms(&report.latency_ms)),
                    (
                        "awareness sent / received",
                        format!(
                            "{} / {} ({:.0}/s)",
                            report.awareness_sent,
                            report.awareness_received,
                            report.awareness_received_per_s
                        ),
                    ),
                    (
                        "closes, errors",
                        format!("{}, {}", report.closes, report.errors),
                    ),
                    (
                        "rooms converged",
                        format!("{} of {}", report.rooms_converged, report.rooms),
                    ),
                ],
                &report.problems,
            );
            emit(&report)?;
            anyhow::ensure!(
                ok,
                "not every edit was delivered, or a room did not converge"
            );
            Ok(())
        }
        Command::Idle {
            target,
            connections,
            rooms,
            hold,
            server_pid,
        } => {
            check_target(&target, connections)?;
            let spec = idle::IdleSpec {
                url: target.url.clone(),
                connections,
                rooms: rooms.max(1),
                sync: !target.no_sync,
                connect_concurrency: target.connect_concurrency,
                connect_timeout: Duration::from_secs_f64(target.connect_timeout),
                hold: Duration::from_secs_f64(hold.clamp(0.0, MAX_DURATION_S)),
                server_pid,
                room_prefix: prefix(&target),
            };
            let r = idle::run(spec).await;
            let mib = |b: Option<u64>| {
                b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
            };
            table(
                &[
                    (
                        "connections (rooms)",
                        format!("{} ({})", r.connections, r.rooms),
                    ),
                    (
                        "open at end, errors, closes",
                        format!("{}, {}, {}", r.open_at_end, r.connect_errors, r.closes),
                    ),
                    ("connect", ms(&r.connect_ms)),
                    ("all connected in", format!("{:.2} s", r.connect_all_s)),
                    (
                        "server RSS before → held",
                        format!(
                            "{} → {}",
                            mib(r.server_rss_before_bytes),
                            mib(r.server_rss_held_bytes)
                        ),
                    ),
                    (
                        "server bytes per connection",
                        r.server_bytes_per_connection.map_or("-".into(), |b| {
                            format!("{:.0} B ({:.1} KiB)", b, b / 1024.0)
                        }),
                    ),
                    ("bench RSS", mib(r.client_rss_bytes)),
                ],
                &r.problems,
            );
            emit(&r)?;
            anyhow::ensure!(
                r.open_at_end == connections,
                "not every connection stayed open"
            );
            Ok(())
        }
        Command::JoinStorm {
            target,
            clients,
            doc_bytes,
            chunk_bytes,
            timeout,
        } => {
            check_target(&target, clients)?;
            anyhow::ensure!(
                !target.no_sync,
                "a join storm needs a server that holds the document"
            );
            let spec = storm::StormSpec {
                url: target.url.clone(),
                clients,
                doc_bytes,
                chunk_bytes,
                timeout: Duration::from_secs_f64(timeout.clamp(1.0, MAX_DURATION_S)),
                room: format!("{}-storm", prefix(&target)),
            };
            let r = storm::run(spec).await?;
            table(
                &[
                    ("joiners", r.clients.to_string()),
                    (
                        "document",
                        format!("{} characters, seeded in {:.2} s", r.doc_bytes, r.seed_s),
                    ),
                    (
                        "SyncStep2 size",
                        format!(
                            "{} … {} bytes",
                            r.sync_step2_min_bytes, r.sync_step2_max_bytes
                        ),
                    ),
                    ("joined, errors", format!("{}, {}", r.joined, r.errors)),
                    ("join time", ms(&r.join_ms)),
                    ("storm", format!("{:.2} s", r.storm_s)),
                ],
                &r.problems,
            );
            emit(&r)?;
            anyhow::ensure!(
                r.joined == clients,
                "not every joiner received the document"
            );
            Ok(())
        }
    }
}

fn check_target(target: &Target, connections: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_CONNECTIONS).contains(&connections),
        "between 1 and {MAX_CONNECTIONS} connections"
    );
    for url in target.url.split(',') {
        check_url(url, target.allow_remote)?;
    }
    Ok(())
}

fn check_url(url: &str, allow_remote: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        url.starts_with("ws://") || url.starts_with("wss://"),
        "--url must start with ws:// or wss://"
    );
    if !allow_remote {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        anyhow::ensure!(
            loopback,
            "{host} is not a loopback address; pass --allow-remote to load it"
        );
    }
    Ok(())
}

fn prefix(target: &Target) -> String {
    target.room_prefix.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("bench-{:x}{:x}", std::process::id(), nanos)
    })
}

fn ms(p: &Percentiles) -> String {
    if p.n == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        p.p50, p.p95, p.p99, p.max, p.n
    )
}

fn table(rows: &[(&str, String)], problems: &[String]) {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in rows {
        say(&format!("{k:<width$}  {v}"));
    }
    for p in problems {
        say(&format!("problem: {p}"));
    }
}

fn emit(report: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    Ok(())
}
