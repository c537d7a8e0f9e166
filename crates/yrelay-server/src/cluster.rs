//! Cluster mode: nodes fan a room's updates and presence out to each other over Redis pub/sub.
//!
//! Every node can serve every room. A room that is active on a node (its task is running)
//! subscribes to the channel `<cluster.channel_prefix><room>`; a node without the room
//! receives nothing for it, so the work of a message grows with the nodes that serve its room,
//! not with the size of the cluster. Messages are [`Envelope`]s (rmp-serde): the origin node
//! and one [`Kind`].
//!
//! - What a node's own clients change (an update, once it is as durable as the durability mode
//!   promises, or an awareness change) is published once. What arrives from peers is applied
//!   and fanned out to local clients, never re-published, and persisted only by the node that
//!   accepted it (every node writes to the shared PostgreSQL store).
//! - Redis pub/sub delivers at most once: a message published while a node is disconnected,
//!   or dropped because a room's inbox was full, is simply gone. So convergence never depends
//!   on it: a room asks its peers for what it lacks ([`Kind::SyncRequest`] with its state
//!   vector) when it becomes active, after every Redis reconnect, every
//!   `cluster.resync_interval_ms`, and after a peer message had to be dropped. A peer answers
//!   with a [`Kind::SyncReply`]: the diff the requester lacks plus its own state vector, from
//!   which the requester sends back what the peer lacks. Both directions are repaired even if
//!   only one node noticed the outage.
//! - Presence crosses nodes as awareness updates. A state owned by a node that vanished stops
//!   being renewed and is removed everywhere by the usual awareness timeout.
//!
//! Three tasks, owned by the server's task tracker and stopped by its shutdown token: the
//! *pump* routes received messages to room tasks, the *publisher* sends queued messages in
//! pipelined batches, and the *watchdog* pings Redis every second, keeps `yrelay_redis_up`
//! current, and on every reconnect resubscribes all active rooms and makes them resync.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::room::Registry;

/// One message on a room channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that published it (a node ignores its own messages, which Redis echoes).
    pub origin: String,
    /// What it carries.
    pub kind: Kind,
}

/// What an [`Envelope`] carries. Bytes are y-protocols v1 encodings, as clients send them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A document update accepted from one of the origin's clients (or its REST API).
    Update {
        /// v1 update.
        #[serde(with = "serde_bytes")]
        update: Vec<u8>,
    },
    /// An awareness (presence) update from one of the origin's clients.
    Awareness {
        /// y-protocols awareness update.
        #[serde(with = "serde_bytes")]
        update: Vec<u8>,
    },
    /// "Send me what I lack": the origin's state vector.
    SyncRequest {
        /// v1 state vector.
        #[serde(with = "serde_bytes")]
        state_vector: Vec<u8>,
        /// Whether the origin also wants every awareness state (when a room becomes active).
        awareness: bool,
    },
    /// The answer to a [`Kind::SyncRequest`], meant for node `to` only.
    SyncReply {
        /// The node that asked.
        to: String,
        /// What the asking node lacks (v1 update).
        #[serde(with = "serde_bytes")]
        diff: Vec<u8>,
        /// The answering node's state vector, so the asker can send back what it lacks.
        #[serde(with = "serde_bytes")]
        state_vector: Vec<u8>,
        /// Every awareness state the answering node knows, if asked for and any.
        #[serde(with = "serde_bytes")]
        awareness: Option<Vec<u8>>,
    },
    /// The room was deleted on the origin: close its connections and forget it.
    Deleted,
}

impl Kind {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Update { .. } => "update",
            Kind::Awareness { .. } => "awareness",
            Kind::SyncRequest { .. } => "sync_request",
            Kind::SyncReply { .. } => "sync_reply",
            Kind::Deleted => "deleted",
        }
    }
}

/// Every [`Kind::label`], for registering the metrics at zero.
pub const KIND_LABELS: [&str; 5] = [
    "update",
    "awareness",
    "sync_request",
    "sync_reply",
    "deleted",
];

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster.redis_url: {0}")]
pub struct ClusterError(String);

/// How many messages may wait for the publisher. Beyond that a message is dropped (and
/// counted): peers repair it at the next resync.
const PUBLISH_QUEUE: usize = 16_384;
/// Most messages sent in one pipelined round trip.
const PUBLISH_BATCH: usize = 512;
/// How often the watchdog pings Redis.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long any Redis command may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's side of the cluster: its Redis connection and the rooms it subscribed to.
pub struct Cluster {
    node_id: Arc<str>,
    prefix: String,
    conn: ConnectionManager,
    /// Rooms active on this node, with the generation of the task that subscribed. A
    /// `std::sync::Mutex`: held for a lookup or an insert, never across an await.
    active: Mutex<HashMap<Arc<str>, u64>>,
    /// Serializes SUBSCRIBE/UNSUBSCRIBE so an unsubscription of an evicted room can never
    /// overtake the subscription of its next activation.
    subscribing: tokio::sync::Mutex<()>,
    /// Rooms that must resync (a peer message for them was dropped).
    dirty: Mutex<HashSet<Arc<str>>>,
    up: AtomicBool,
    /// Set when a disconnection is seen, cleared by the watchdog once it resynced.
    lost: AtomicBool,
    last_error: Mutex<Option<String>>,
    publish_tx: mpsc::Sender<(Vec<u8>, Vec<u8>)>,
    /// Published messages dropped because the queue was full.
    dropped: AtomicU64,
}

/// The receiving ends that [`Cluster::spawn`] hands to its tasks.
pub struct ClusterTasks {
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    publish_rx: mpsc::Receiver<(Vec<u8>, Vec<u8>)>,
}

impl Cluster {
    /// Prepares the Redis connection (made lazily: a node starts even while Redis is down, and
    /// serves its local clients until it comes back). With a `rediss://` URL it speaks TLS
    /// and verifies Redis's certificate against `ca_pem` (PEM) when given, else the webpki
    /// roots.
    pub fn new(
        settings: &crate::config::Cluster,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<(Arc<Self>, ClusterTasks), ClusterError> {
        let url = settings
            .redis_url
            .as_deref()
            .ok_or_else(|| ClusterError("not set".to_owned()))?;
        let info = url
            .into_connection_info()
            .map_err(|e| ClusterError(e.to_string()))?;
        // RESP3: pub/sub messages arrive as pushes on the same multiplexed connection, and
        // the manager reconnects (and resubscribes) by itself.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        let client = match ca_pem {
            None => redis::Client::open(info),
            Some(root_cert) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        }
        .map_err(|e| ClusterError(e.to_string()))?;
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| ClusterError(e.to_string()))?;
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let node_id: Arc<str> = Arc::from(
            settings
                .node_id
                .clone()
                .unwrap_or_else(default_node_id)
                .as_str(),
        );
        metrics::gauge!("yrelay_redis_up").set(0.0);
        for name in [
            "yrelay_redis_reconnects_total",
            "yrelay_cluster_publish_errors_total",
            "yrelay_cluster_resyncs_total",
            "yrelay_cluster_dropped_total",
        ] {
            metrics::counter!(name).absolute(0);
        }
        for kind in KIND_LABELS {
            metrics::counter!("yrelay_cluster_published_total", "kind" => kind).absolute(0);
            metrics::counter!("yrelay_cluster_received_total", "kind" => kind).absolute(0);
        }
        let cluster = Arc::new(Self {
            node_id,
            prefix: settings.channel_prefix.clone(),
            conn,
            active: Mutex::default(),
            subscribing: tokio::sync::Mutex::new(()),
            dirty: Mutex::default(),
            up: AtomicBool::new(false),
            lost: AtomicBool::new(true),
            last_error: Mutex::new(Some("not connected yet".to_owned())),
            publish_tx,
            dropped: AtomicU64::new(0),
        });
        Ok((cluster, ClusterTasks { pushes, publish_rx }))
    }

    /// Starts the pump, the publisher and the watchdog on `tracker`; they stop at `shutdown`.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: ClusterTasks,
        registry: Arc<Registry>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let ClusterTasks { pushes, publish_rx } = tasks;
        tracker.spawn(Arc::clone(self).pump(pushes, Arc::clone(&registry), shutdown.clone()));
        tracker.spawn(Arc::clone(self).publisher(publish_rx, shutdown.clone()));
        tracker.spawn(Arc::clone(self).watchdog(registry, shutdown));
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether Redis answered the last ping.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why Redis is considered down, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        Some(
            lock(&self.last_error)
                .clone()
                .unwrap_or_else(|| "no answer".to_owned()),
        )
    }

    fn channel(&self, room: &str) -> Vec<u8> {
        let mut channel = Vec::with_capacity(self.prefix.len() + room.len());
        channel.extend_from_slice(self.prefix.as_bytes());
        channel.extend_from_slice(room.as_bytes());
        channel
    }

    /// Subscribes to `room`'s channel for the room task of `generation`. Best effort: while
    /// Redis is down this only records the room, and the watchdog subscribes it on reconnect.
    pub async fn subscribe(&self, room: &Arc<str>, generation: u64) {
        lock(&self.active).insert(Arc::clone(room), generation);
        if !self.is_up() {
            return;
        }
        let _serial = self.subscribing.lock().await;
        let mut conn = self.conn.clone();
        let channel = self.channel(room);
        match tokio::time::timeout(REDIS_TIMEOUT, conn.subscribe(channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("SUBSCRIBE timed out"),
        }
    }

    /// Forgets `room` if the task of `generation` still owns it, and unsubscribes (in the
    /// background; a newer activation of the room keeps its subscription).
    pub fn unsubscribe(self: &Arc<Self>, room: &Arc<str>, generation: u64) {
        {
            let mut active = lock(&self.active);
            if active.get(room) != Some(&generation) {
                return;
            }
            active.remove(room);
        }
        let this = Arc::clone(self);
        let room = Arc::clone(room);
        tokio::spawn(async move {
            let _serial = this.subscribing.lock().await;
            if lock(&this.active).contains_key(&room) || !this.is_up() {
                return;
            }
            let mut conn = this.conn.clone();
            let channel = this.channel(&room);
            let _ = tokio::time::timeout(REDIS_TIMEOUT, conn.unsubscribe(channel)).await;
        });
    }

    /// Queues `kind` for `room`'s channel. Never waits: when the queue is full the message is
    /// dropped and counted, and the peers get it at the next resync.
    pub fn publish(&self, room: &str, kind: Kind) {
        let label = kind.label();
        let envelope = Envelope {
            origin: self.node_id.to_string(),
            kind,
        };
        let payload = match rmp_serde::to_vec(&envelope) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot encode a cluster message");
                return;
            }
        };
        if self
            .publish_tx
            .try_send((self.channel(room), payload))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("yrelay_cluster_publish_errors_total").increment(1);
            return;
        }
        metrics::counter!("yrelay_cluster_published_total", "kind" => label).increment(1);
    }

    /// Marks `room` for a resync (a peer message for it was dropped).
    fn mark_dirty(&self, room: Arc<str>) {
        lock(&self.dirty).insert(room);
    }

    fn failed(&self, error: &str) {
        *lock(&self.last_error) = Some(error.to_owned());
        if self.up.swap(false, Ordering::AcqRel) {
            warn!(
                error,
                "Redis unreachable: serving local clients only until it returns"
            );
        }
        self.lost.store(true, Ordering::Release);
        metrics::gauge!("yrelay_redis_up").set(0.0);
    }

    /// Routes received messages to their rooms.
    async fn pump(
        self: Arc<Self>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                () = shutdown.cancelled() => break,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => break,
                },
            };
            match push.kind {
                PushKind::Disconnection => self.failed("connection to Redis lost"),
                PushKind::Message => {
                    let mut data = push.data.into_iter();
                    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                        (data.next(), data.next())
                    else {
                        continue;
                    };
                    self.route(&registry, &channel, &payload);
                }
                _ => {}
            }
        }
    }

    fn route(&self, registry: &Arc<Registry>, channel: &[u8], payload: &[u8]) {
        let Some(room) = channel
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
        else {
            return;
        };
        let envelope: Envelope = match rmp_serde::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(room, error = %e, "undecodable cluster message ignored");
                metrics::counter!("yrelay_cluster_received_total", "kind" => "invalid")
                    .increment(1);
                return;
            }
        };
        if *envelope.origin == *self.node_id {
            return; // our own, echoed
        }
        if let Kind::SyncReply { to, .. } = &envelope.kind {
            if **to != *self.node_id {
                return; // someone else's answer
            }
        }
        metrics::counter!("yrelay_cluster_received_total", "kind" => envelope.kind.label())
            .increment(1);
        match registry.offer_peer(room, envelope) {
            PeerDelivery::Delivered | PeerDelivery::NotLoaded => {}
            PeerDelivery::Full(room) => {
                metrics::counter!("yrelay_cluster_dropped_total").increment(1);
                self.mark_dirty(room);
            }
        }
    }

    /// Sends queued messages, as many per round trip as are waiting.
    async fn publisher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<(Vec<u8>, Vec<u8>)>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let n = tokio::select! {
                () = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
            };
            if n == 0 {
                break;
            }
            let mut pipe = redis::pipe();
            for (channel, payload) in &batch {
                pipe.publish(channel, payload).ignore();
            }
            // The first publish after a Redis restart can fail once on the stale connection;
            // one retry covers that. After that the messages are dropped: peers repair them at
            // the next resync.
            let mut sent = false;
            for attempt in 0..2 {
                let mut conn = self.conn.clone();
                match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => {
                        sent = true;
                        break;
                    }
                    Ok(Err(e)) if attempt == 1 => self.failed(&e.to_string()),
                    Err(_) if attempt == 1 => self.failed("PUBLISH timed out"),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            if !sent {
                metrics::counter!("yrelay_cluster_publish_errors_total").increment(n as u64);
            }
            batch.clear();
        }
    }

    /// Pings Redis every second; on every (re)connection resubscribes the active rooms and
    /// makes them resync; asks dropped-message rooms and, every `resync_interval`, all active
    /// rooms to resync.
    async fn watchdog(self: Arc<Self>, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let interval = Duration::from_millis(registry.config().cluster.resync_interval_ms);
        let mut next_periodic = tokio::time::Instant::now() + interval;
        let mut ever_up = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut conn = self.conn.clone();
            let ping = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            match ping {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.failed(&e.to_string());
                    continue;
                }
                Err(_) => {
                    self.failed("PING timed out");
                    continue;
                }
            }
            if self.lost.load(Ordering::Acquire) {
                // (Re)connected: subscribe everything active, then mark us up (so rooms that
                // activate from now on subscribe themselves), then resync every active room.
                let rooms: Vec<Arc<str>> = lock(&self.active).keys().cloned().collect();
                let _serial = self.subscribing.lock().await;
                let mut ok = true;
                for room in &rooms {
                    let channel = self.channel(room);
                    let mut conn = self.conn.clone();
                    match tokio::time::timeout(REDIS_TIMEOUT, conn.subscribe(channel)).await {
                        Ok(Ok(())) => {}
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    self.failed("SUBSCRIBE failed after reconnecting");
                    continue;
                }
                self.lost.store(false, Ordering::Release);
                self.up.store(true, Ordering::Release);
                *lock(&self.last_error) = None;
                metrics::gauge!("yrelay_redis_up").set(1.0);
                drop(_serial);
                if ever_up {
                    info!(
                        rooms = rooms.len(),
                        "Redis is back: resyncing every active room"
                    );
                    metrics::counter!("yrelay_redis_reconnects_total").increment(1);
                } else {
                    info!(node = %self.node_id, "connected to Redis");
                }
                ever_up = true;
                lock(&self.dirty).extend(rooms);
            }
            if !interval.is_zero() && tokio::time::Instant::now() >= next_periodic {
                next_periodic = tokio::time::Instant::now() + interval;
                let rooms: Vec<Arc<str>> = lock(&self.active).keys().cloned().collect();
                lock(&self.dirty).extend(rooms);
            }
            let dirty: Vec<Arc<str>> = lock(&self.dirty).drain().collect();
            for room in dirty {
                if let PeerDelivery::Full(room) = registry.request_resync(&room) {
                    self.mark_dirty(room); // try again next second
                }
            }
        }
    }
}

/// What became of a message for a room task.
#[derive(Debug)]
pub enum PeerDelivery {
    /// Queued for the room.
    Delivered,
    /// The room is not active here (it was evicted meanwhile).
    NotLoaded,
    /// The room's inbox was full: dropped; the room must resync.
    Full(Arc<str>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single insert, remove or read: a panic cannot leave
    // the data half-updated, so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host name (from the kernel, else `$HOSTNAME`, else `node`) plus a random suffix, so
/// two processes on one host (or a restarted pod) never share an id.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "node".to_owned());
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{host}-{:06x}", h.finish() & 0xff_ffff)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_with_bytes_as_msgpack_bin() {
        let update = vec![7u8; 300];
        let e = Envelope {
            origin: "node-a".into(),
            kind: Kind::Update {
                update: update.clone(),
            },
        };
        let bytes = rmp_serde::to_vec(&e).unwrap();
        // bin 16 header (3 bytes) + payload, not an array of 300 integers.
        assert!(bytes.len() < 300 + 32, "{} bytes", bytes.len());
        assert_eq!(rmp_serde::from_slice::<Envelope>(&bytes).unwrap(), e);
        for kind in [
            Kind::Awareness { update: vec![1] },
            Kind::SyncRequest {
                state_vector: vec![0],
                awareness: true,
            },
            Kind::SyncReply {
                to: "b".into(),
                diff: vec![0, 0],
                state_vector: vec![0],
                awareness: None,
            },
            Kind::Deleted,
        ] {
            let label = kind.label();
            assert!(KIND_LABELS.contains(&label));
            let e = Envelope {
                origin: "x".into(),
                kind,
            };
            let back: Envelope = rmp_serde::from_slice(&rmp_serde::to_vec(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn default_node_ids_differ() {
        let a = default_node_id();
        let b = default_node_id();
        assert_ne!(a, b);
        assert!(a.len() > 7);
    }
}
