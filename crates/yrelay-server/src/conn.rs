//! One WebSocket connection: a reader and a writer, written against a generic frame
//! `Stream`/`Sink` so tests can drive them through channels without sockets.
//!
//! - The **reader** decodes and validates each binary frame (so the CPU cost of hostile input
//!   lands on the connection that sent it, not on the room) and forwards it to the room,
//!   waiting when the room's inbox is full. A malformed frame closes this connection with 1007;
//!   the room never sees it.
//! - The **writer** drains the outbound queue, writing everything that is queued before one
//!   flush, sends WebSocket pings, closes peers that stopped answering, and sends an empty
//!   awareness message to connections that were sent nothing for `keepalive_interval`.
//!
//! Whatever ends the connection, the reader tells the room it left, so the room removes the
//! awareness states it introduced and broadcasts the removal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use yrelay_doc::codec::{FrameKind, KEEPALIVE_FRAME};
use yrelay_doc::{decode_client_message, ClientMessage, ValidateLimits};

use crate::auth::Identity;
use crate::close::CloseReason;
use crate::config::Config;
use crate::limits::{self, TokenBucket};
use crate::room::{ConnControl, ConnId, JoinError, Registry, RoomCmd, Subscriber};

/// A frame received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A binary message.
    Binary(Bytes),
    /// A text message (refused).
    Text,
    /// A ping (the transport answers it).
    Ping,
    /// A pong.
    Pong,
    /// The peer closes.
    Close,
}

/// A frame to send to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A binary message.
    Binary(Bytes),
    /// A ping.
    Ping,
    /// A close frame, after which nothing more is sent.
    Close(CloseReason),
}

/// A transport failure while reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer sent a message above the size limit.
    #[error("message too big")]
    TooBig,
    /// Any other transport error; the connection is unusable.
    #[error("transport error: {0}")]
    Transport(String),
}

/// What a connection needs from the server.
#[derive(Clone)]
pub struct ConnContext {
    /// The room registry.
    pub registry: Arc<Registry>,
    /// Server configuration.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// The peer's address, for logs and the audit trail.
    pub peer: Arc<str>,
    /// Who the connection is (token subject and role), as authorized at the upgrade.
    pub identity: Identity,
    /// The server-wide budget of large decodes (`limits.max_concurrent_decodes`).
    pub decodes: Arc<Semaphore>,
}

/// Messages at least this large take a turn from [`ConnContext::decodes`] to be decoded.
pub const LARGE_MESSAGE_BYTES: usize = 64 * 1024;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh connection ID (also used to name other sources of updates, such as REST calls).
pub fn next_conn_id() -> ConnId {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Serves one connection to `room` until it ends.
pub async fn serve<St, Si>(room: Arc<str>, stream: St, sink: Si, ctx: ConnContext)
where
    St: Stream<Item = Result<Incoming, ReadError>> + Unpin,
    Si: Sink<Outgoing> + Unpin,
{
    let id = next_conn_id();
    let limits = &ctx.config.limits;
    let (tx, rx) = mpsc::channel(limits.outbound_queue_frames);
    let control = Arc::new(ConnControl::child_of(&ctx.shutdown));
    let sub = Subscriber {
        id,
        tx,
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        control: Arc::clone(&control),
        origin: Arc::clone(&ctx.peer),
        subject: Arc::clone(&ctx.identity.subject),
        role: ctx.identity.role,
    };
    let queued = Arc::clone(&sub.queued_bytes);
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));

    metrics::gauge!("yrelay_connections").increment(1.0);
    metrics::counter!("yrelay_connections_opened_total").increment(1);
    match ctx.registry.join(&room, sub).await {
        Ok(handle) => {
            let reader = read_loop(id, stream, &handle, &control, &ctx, started, &last_seen);
            let writer = write_loop(sink, rx, &queued, &control, &ctx, started, &last_seen);
            tokio::join!(
                async {
                    reader.await;
                    // However the reader ended, the writer must finish too.
                    control.cancel.cancel();
                    handle.send(RoomCmd::Leave { conn: id }).await;
                },
                writer
            );
        }
        Err(err) => {
            debug!(error = %err, "join refused");
            let reason = match err {
                JoinError::Refused(reason) => reason,
                JoinError::ShuttingDown => CloseReason::shutdown(),
                JoinError::Unavailable => CloseReason::internal("room unavailable"),
            };
            let mut sink = sink;
            let _ = tokio::time::timeout(ctx.config.timeouts.write(), async {
                let _ = sink.send(Outgoing::Close(reason)).await;
                let _ = sink.close().await;
            })
            .await;
        }
    }
    metrics::gauge!("yrelay_connections").decrement(1.0);
}

/// When a connection authorized with `identity` must end: its token's expiry plus the
/// tolerated clock skew. `None` without a token.
fn token_deadline(identity: &Identity, leeway_secs: u64) -> Option<Instant> {
    let expires = identity.expires_at?.saturating_add(leeway_secs);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = std::time::Duration::from_secs(expires.saturating_sub(now));
    Some(
        Instant::now()
            + left.min(std::time::Duration::from_secs(
                crate::config::MAX_TIMEOUT_MS / 1000,
            )),
    )
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn read_loop<St>(
    id: ConnId,
    mut stream: St,
    room: &crate::room::RoomHandle,
    control: &ConnControl,
    ctx: &ConnContext,
    started: Instant,
    last_seen: &AtomicU64,
) where
    St: Stream<Item = Result<Incoming, ReadError>> + Unpin,
{
    let validate = ValidateLimits {
        max_depth: ctx.config.limits.max_nesting_depth,
    };
    let expiry = token_deadline(&ctx.identity, ctx.config.auth.leeway_secs);
    let mut bucket = TokenBucket::new(
        ctx.config.limits.messages_per_second,
        ctx.config.limits.message_burst,
    );
    loop {
        let item = tokio::select! {
            () = control.cancel.cancelled() => return,
            () = sleep_until_opt(expiry) => {
                metrics::counter!("yrelay_auth_refusals_total", "reason" => "expired_in_session").increment(1);
                control.close(CloseReason::token_expired());
                return;
            }
            item = stream.next() => item,
        };
        last_seen.store(millis_since(started), Ordering::Relaxed);
        let frame = match item {
            None | Some(Ok(Incoming::Close)) => return,
            Some(Ok(Incoming::Ping | Incoming::Pong)) => continue,
            Some(Ok(Incoming::Text)) => {
                metrics::counter!("yrelay_protocol_errors_total", "reason" => "text_frame")
                    .increment(1);
                control.close(CloseReason::text_frame());
                return;
            }
            Some(Err(ReadError::TooBig)) => {
                metrics::counter!("yrelay_protocol_errors_total", "reason" => "too_big")
                    .increment(1);
                control.close(CloseReason::too_big(ctx.config.limits.max_message_bytes));
                return;
            }
            Some(Err(ReadError::Transport(e))) => {
                debug!(error = %e, "read failed");
                return;
            }
            Some(Ok(Incoming::Binary(frame))) => frame,
        };
        metrics::counter!("yrelay_bytes_received_total", "type" => FrameKind::of(&frame).label())
            .increment(frame.len() as u64);
        // Past the rate, stop reading for a while: the flood backs up in the sender's own TCP
        // connection and nobody else waits.
        if let Some(wait) = bucket.as_mut().and_then(TokenBucket::take) {
            limits::refused("messages_per_second");
            tokio::select! {
                () = control.cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let decode_turn = if frame.len() >= LARGE_MESSAGE_BYTES {
            let turn = tokio::select! {
                () = control.cancel.cancelled() => return,
                turn = tokio::time::timeout(
                    ctx.config.timeouts.write(),
                    Arc::clone(&ctx.decodes).acquire_owned(),
                ) => turn,
            };
            match turn {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    limits::refused("concurrent_decodes");
                    control.close(CloseReason::busy());
                    return;
                }
            }
        } else {
            None
        };
        let msg = match decode_client_message(&frame, &validate) {
            Ok(msg) => msg,
            Err(err) => {
                warn!(conn = id, error = %err, "malformed message");
                metrics::counter!("yrelay_protocol_errors_total", "reason" => "malformed")
                    .increment(1);
                control.close(CloseReason::protocol(&err));
                return;
            }
        };
        drop(decode_turn);
        metrics::counter!("yrelay_messages_received_total", "type" => msg.kind()).increment(1);
        if let ClientMessage::Unknown(t) = msg {
            debug!(conn = id, message_type = t, "ignoring unknown message type");
            continue;
        }
        if matches!(msg, ClientMessage::Auth) {
            continue;
        }
        let sent = tokio::select! {
            () = control.cancel.cancelled() => return,
            sent = room.send_message(id, frame, msg) => sent,
        };
        if !sent {
            control.close(CloseReason::internal("room stopped"));
            return;
        }
    }
}

async fn write_loop<Si>(
    mut sink: Si,
    mut rx: mpsc::Receiver<Bytes>,
    queued: &AtomicUsize,
    control: &ConnControl,
    ctx: &ConnContext,
    started: Instant,
    last_seen: &AtomicU64,
) where
    Si: Sink<Outgoing> + Unpin,
{
    let timeouts = &ctx.config.timeouts;
    let ping_every = timeouts.ping_interval();
    let silence_limit = ping_every + timeouts.pong_timeout();
    let keepalive = timeouts.keepalive_interval();
    let write_limit = timeouts.write();
    let mut ping = interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_sent = Instant::now();
    // Unbiased: under a constant stream of frames the ping branch still gets its turn.
    loop {
        // Only binary frames count as a message for the official client's 30 s timer.
        let mut binary = true;
        let io = tokio::select! {
            () = control.cancel.cancelled() => break,
            frame = rx.recv() => {
                // The room dropped this subscriber; it says why through `control`.
                let Some(frame) = frame else { break };
                guarded(write_batch(&mut sink, frame, &mut rx, queued), write_limit, &control.cancel).await
            }
            _ = ping.tick() => {
                let seen = started + std::time::Duration::from_millis(last_seen.load(Ordering::Relaxed));
                if seen.elapsed() >= silence_limit {
                    metrics::counter!("yrelay_ping_timeouts_total").increment(1);
                    control.close(CloseReason::ping_timeout());
                    continue;
                }
                binary = false;
                guarded(sink.send(Outgoing::Ping), write_limit, &control.cancel).await
            }
            () = tokio::time::sleep_until(last_sent + keepalive) => {
                let mut tally = SentTally::default();
                tally.add(KEEPALIVE_FRAME);
                let frame = Outgoing::Binary(Bytes::from_static(KEEPALIVE_FRAME));
                let io = guarded(sink.send(frame), write_limit, &control.cancel).await;
                if matches!(io, Io::Done) {
                    tally.record();
                }
                io
            }
        };
        match io {
            Io::Done if binary => last_sent = Instant::now(),
            Io::Done => {}
            Io::Cancelled => break,
            Io::Stalled => {
                // The peer stopped reading: its window stayed shut for the whole write limit.
                metrics::counter!("yrelay_slow_consumer_disconnects_total").increment(1);
                control.close(CloseReason::slow_consumer());
                break;
            }
            Io::Failed => {
                control.cancel.cancel();
                return;
            }
        }
    }
    // However the loop ended, the reason (if any) was recorded before anything was cancelled.
    let reason = control.reason().unwrap_or_else(|| {
        if ctx.shutdown.is_cancelled() {
            CloseReason::shutdown()
        } else {
            CloseReason::normal()
        }
    });
    metrics::counter!("yrelay_connections_closed_total", "reason" => reason.label()).increment(1);
    // The closing handshake is bounded too: a peer that does not read gets dropped.
    let _ = tokio::time::timeout(write_limit, async {
        let _ = sink.send(Outgoing::Close(reason)).await;
        let _ = sink.close().await;
    })
    .await;
}

/// How a guarded write ended.
enum Io {
    /// Written and flushed.
    Done,
    /// The transport failed; the connection is gone.
    Failed,
    /// Not finished within the write limit.
    Stalled,
    /// The connection was told to close meanwhile.
    Cancelled,
}

/// Runs one write, bounded by `limit` and interrupted by `cancel`.
async fn guarded<E>(
    write: impl std::future::Future<Output = Result<(), E>>,
    limit: std::time::Duration,
    cancel: &CancellationToken,
) -> Io {
    tokio::select! {
        () = cancel.cancelled() => Io::Cancelled,
        done = tokio::time::timeout(limit, write) => match done {
            Ok(Ok(())) => Io::Done,
            Ok(Err(_)) => Io::Failed,
            Err(_) => Io::Stalled,
        },
    }
}

/// Writes `first` and everything else already queued (up to a bound), then flushes once.
async fn write_batch<Si>(
    sink: &mut Si,
    first: Bytes,
    rx: &mut mpsc::Receiver<Bytes>,
    queued: &AtomicUsize,
) -> Result<(), Si::Error>
where
    Si: Sink<Outgoing> + Unpin,
{
    const MAX_BATCH: usize = 256;
    let mut tally = SentTally::default();
    tally.add(&first);
    sink.feed(Outgoing::Binary(first)).await?;
    for _ in 1..MAX_BATCH {
        let Ok(frame) = rx.try_recv() else { break };
        tally.add(&frame);
        sink.feed(Outgoing::Binary(frame)).await?;
    }
    let flushed = sink.flush().await;
    queued.fetch_sub(tally.bytes, Ordering::AcqRel);
    tally.record();
    flushed
}

/// Frames and bytes of one written batch, by frame kind, so the labelled counters are touched
/// once per kind per batch rather than once per frame.
#[derive(Default)]
struct SentTally {
    bytes: usize,
    by_kind: [(u64, u64); FrameKind::ALL.len()],
}

impl SentTally {
    fn add(&mut self, frame: &[u8]) {
        self.bytes += frame.len();
        let slot = &mut self.by_kind[FrameKind::of(frame).index()];
        slot.0 += 1;
        slot.1 += frame.len() as u64;
    }

    fn record(&self) {
        for (kind, &(frames, bytes)) in FrameKind::ALL.iter().zip(&self.by_kind) {
            if frames > 0 {
                let label = kind.label();
                metrics::counter!("yrelay_messages_sent_total", "type" => label).increment(frames);
                metrics::counter!("yrelay_bytes_sent_total", "type" => label).increment(bytes);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio_util::task::TaskTracker;
    use yrelay_doc::codec::{encode_sync_step1, KEEPALIVE_FRAME};

    use super::*;
    use crate::close::{GOING_AWAY, PING_TIMEOUT};

    struct Harness {
        to_conn: mpsc::UnboundedSender<Result<Incoming, ReadError>>,
        from_conn: mpsc::UnboundedReceiver<Outgoing>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    /// Runs `serve` over channels instead of a socket.
    fn start(config: Config) -> Harness {
        start_with_sink_limit(config, usize::MAX)
    }

    /// Like [`start`], but the sink accepts only `accept` items and then blocks forever, as a
    /// peer that stopped reading does once the kernel buffers are full.
    fn start_with_sink_limit(config: Config, accept: usize) -> Harness {
        start_full(config, accept, Arc::new(Semaphore::new(1)))
    }

    /// [`start_with_sink_limit`] with the server's decode budget given.
    fn start_full(config: Config, accept: usize, decodes: Arc<Semaphore>) -> Harness {
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let registry = Arc::new(Registry::new(
            Arc::clone(&config),
            Arc::new(yrelay_store::MemoryStore::default()),
            TaskTracker::new(),
            shutdown.clone(),
            None,
        ));
        let (to_conn, rx) = mpsc::unbounded_channel();
        let (tx, from_conn) = mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let sink =
            futures_util::sink::unfold((tx, 0usize), move |(tx, n), item: Outgoing| async move {
                if n >= accept {
                    std::future::pending::<()>().await;
                }
                tx.send(item).map_err(|_| ())?;
                Ok::<_, ()>((tx, n + 1))
            });
        let ctx = ConnContext {
            registry,
            config,
            shutdown: shutdown.clone(),
            peer: Arc::from("test"),
            identity: Identity::anonymous_owner(),
            decodes,
        };
        let task = tokio::spawn(serve(
            Arc::from("room"),
            Box::pin(stream),
            Box::pin(sink),
            ctx,
        ));
        Harness {
            to_conn,
            from_conn,
            shutdown,
            task,
        }
    }

    async fn next(h: &mut Harness) -> Outgoing {
        h.from_conn.recv().await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn greets_then_keeps_an_idle_client_alive_below_30_seconds() {
        let mut h = start(Config::default());
        assert_eq!(
            next(&mut h).await,
            Outgoing::Binary(encode_sync_step1(&[0]))
        );
        let before = Instant::now();
        // The peer answers every ping, so the only traffic is keepalives and pings.
        let mut keepalives = 0;
        while before.elapsed() < Duration::from_secs(120) {
            match next(&mut h).await {
                Outgoing::Binary(b) if &b[..] == KEEPALIVE_FRAME => keepalives += 1,
                Outgoing::Ping => h.to_conn.send(Ok(Incoming::Pong)).unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Every 15 s for 120 s.
        assert!(keepalives >= 7, "{keepalives} keepalives");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_is_closed_after_ping_and_pong_timeout() {
        let mut h = start(Config::default());
        let start = Instant::now();
        loop {
            match next(&mut h).await {
                Outgoing::Close(reason) => {
                    assert_eq!(reason.code, PING_TIMEOUT);
                    break;
                }
                _ => continue,
            }
        }
        // Default: ping every 30 s, closed once 60 s passed without a frame.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_secs(91),
            "{waited:?}"
        );
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_cannot_pin_its_connection() {
        // The greeting (one frame) goes through, then every write blocks.
        let mut h = start_with_sink_limit(Config::default(), 1);
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
        // Keepalives are due after 15 s; the blocked write stalls for `write_ms` (10 s), then
        // the connection ends on its own (the close handshake is bounded too).
        tokio::time::timeout(Duration::from_secs(60), h.task)
            .await
            .expect("connection task still running")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_blocked_write() {
        let mut h = start_with_sink_limit(Config::default(), 1);
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
        tokio::time::sleep(Duration::from_secs(16)).await; // a keepalive write is now blocked
        h.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(11), h.task)
            .await
            .expect("shutdown did not end the connection")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_message_that_cannot_get_a_decode_turn_closes_with_1013() {
        let mut config = Config::default();
        config.timeouts.write_ms = 500;
        // Every decode turn is taken (by other connections' large messages).
        let decodes = Arc::new(Semaphore::new(0));
        let mut h = start_full(config, usize::MAX, Arc::clone(&decodes));
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
        let large = encode_sync_step1(&vec![0u8; LARGE_MESSAGE_BYTES]);
        h.to_conn.send(Ok(Incoming::Binary(large))).unwrap();
        let waited = Instant::now();
        loop {
            if let Outgoing::Close(reason) = next(&mut h).await {
                assert_eq!(reason.code, crate::close::TRY_AGAIN_LATER);
                assert_eq!(reason.label(), "busy");
                break;
            }
        }
        assert!(waited.elapsed() >= Duration::from_millis(500));
        // Small messages never need a turn.
        let mut h = start_full(Config::default(), usize::MAX, decodes);
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
        h.to_conn
            .send(Ok(Incoming::Binary(encode_sync_step1(&[0]))))
            .unwrap();
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_1001() {
        let mut h = start(Config::default());
        assert!(matches!(next(&mut h).await, Outgoing::Binary(_)));
        h.shutdown.cancel();
        assert!(matches!(next(&mut h).await, Outgoing::Close(r) if r.code == GOING_AWAY));
        h.task.await.unwrap();
    }
}
