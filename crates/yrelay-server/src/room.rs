//! Rooms: a registry from room name to the one task that owns each room's state.
//!
//! A room task is the single writer of its [`RoomDoc`]. Connections talk to it through a
//! bounded inbox ([`RoomCmd`]); when the inbox is full, readers wait, which pushes back on
//! their TCP sockets instead of dropping anything. The task fans frames out to subscribers
//! through their bounded outbound queues ([`Subscriber::offer`]); a subscriber whose queue is
//! full is disconnected with 1013 and resyncs when it reconnects — an update is never
//! silently dropped.
//!
//! A room with no connections is dropped from memory after `timeouts.room_idle_ms`. Eviction
//! and joining race safely: the task removes itself from the registry only while holding the
//! registry lock and only if its inbox is empty; a join that still reaches a closing task gets
//! no answer and retries on a fresh task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info_span, warn, Instrument};
use yrelay_doc::codec::{self, broadcast_frame, StateVectorV1, UpdateV1};
use yrelay_doc::{ClientMessage, RoomDoc, ValidateLimits};
use yrelay_store::{AppendEntry, Seq, Store, VersionInfo, VersionKind};

use crate::auth::Role;
use crate::close::CloseReason;
use crate::cluster::{Cluster, Envelope, Kind, PeerDelivery};
use crate::config::Config;
use crate::persist::{Deferred, Outbound, Persister};

/// Identifies one connection within the server.
pub type ConnId = u64;

/// Per-connection state shared between its reader, its writer and the rooms.
#[derive(Debug, Default)]
pub struct ConnControl {
    /// Cancelled when the connection must end; the writer then sends [`ConnControl::reason`].
    pub cancel: CancellationToken,
    /// Why the connection is being closed; the first reason set wins.
    /// A `std::sync::Mutex`: set once and read once, never held across an await.
    reason: Mutex<Option<CloseReason>>,
}

impl ConnControl {
    /// A control whose cancellation follows `parent` (the server's shutdown token).
    pub fn child_of(parent: &CancellationToken) -> Self {
        Self {
            cancel: parent.child_token(),
            reason: Mutex::new(None),
        }
    }

    /// Asks the connection to close with `reason` (ignored if a reason was already given).
    pub fn close(&self, reason: CloseReason) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.cancel.cancel();
    }

    /// The reason given to [`ConnControl::close`], if any.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().ok().and_then(|slot| slot.clone())
    }
}

/// A room's handle on one connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection.
    pub id: ConnId,
    /// Frames for the connection's writer.
    pub tx: mpsc::Sender<Bytes>,
    /// Bytes currently waiting in `tx`; the writer subtracts what it wrote.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Closes the connection.
    pub control: Arc<ConnControl>,
    /// Where the connection comes from, for the audit trail (peer address).
    pub origin: Arc<str>,
    /// Who it is (the token's subject, `anonymous` without auth), for the audit trail.
    pub subject: Arc<str>,
    /// What it may do.
    pub role: Role,
}

impl Subscriber {
    /// Queues `frame` unless that would exceed the queue's frame or byte budget. `false` means
    /// the subscriber is too slow and must be disconnected.
    fn offer(&self, frame: &Bytes, max_bytes: usize) -> bool {
        self.offer_within(frame, Some(max_bytes))
    }

    /// [`Subscriber::offer`] with an optional byte budget (`None`: frames count only; used for
    /// the greeting, which must reach a new connection however large the room's presence is).
    fn offer_within(&self, frame: &Bytes, max_bytes: Option<usize>) -> bool {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // A single frame larger than the budget is still allowed into an empty queue.
        if max_bytes.is_some_and(|max| before > 0 && before + len > max) {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }
}

/// A message for a room task.
#[derive(Debug)]
pub enum RoomCmd {
    /// A connection joins; the room queues its SyncStep1 and the awareness states, then
    /// answers on `ack`.
    Join {
        /// The new subscriber.
        sub: Subscriber,
        /// Answered once the subscriber is registered, or with why it was not.
        ack: oneshot::Sender<Result<(), CloseReason>>,
    },
    /// A decoded, validated message from a connection, with the frame it arrived in.
    Message {
        /// Sender.
        conn: ConnId,
        /// The whole frame (copied for broadcast when identical to what the room emits).
        frame: Bytes,
        /// The decoded message.
        msg: ClientMessage,
        /// This frame's share of the inbox byte budget, returned when the room drops the
        /// command.
        _permit: OwnedSemaphorePermit,
        /// When the connection handed it over (for `yrelay_fanout_seconds`).
        arrived: Instant,
    },
    /// A connection is gone.
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// Save a named version of the current document.
    CreateVersion {
        /// Its label.
        label: Option<String>,
        /// The saved version, or why not.
        reply: oneshot::Sender<Result<VersionInfo, String>>,
    },
    /// Read the document (REST).
    Read {
        /// What to read.
        what: ReadRequest,
        /// The answer.
        reply: oneshot::Sender<ReadAnswer>,
    },
    /// Apply an update that did not come from a connection (REST); answered once it is
    /// durable as the durability mode promises.
    ApplyUpdate {
        /// The validated update.
        update: UpdateV1,
        /// Who sent it (token subject).
        author: Arc<str>,
        /// Where from (peer address).
        origin: Arc<str>,
        /// Whether the document changed, or why it was refused.
        reply: oneshot::Sender<Result<bool, ApplyRefusal>>,
    },
    /// Delete the room: close its connections, forget its document and remove it from the
    /// store. Answered once it is gone from the store.
    Delete {
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Make the document equal to version `id` again, as a new edit.
    Restore {
        /// The version.
        id: u64,
        /// Whether anything changed (`None`: no such version), or why it failed.
        reply: oneshot::Sender<Result<Option<bool>, String>>,
    },
    /// A message from another node (cluster mode).
    Peer(Box<Envelope>),
    /// Ask the other nodes for what this room lacks, and offer what they lack (cluster mode:
    /// after a Redis reconnect, a dropped message, or periodically).
    Resync,
}

/// What [`RoomCmd::Read`] reads.
#[derive(Debug)]
pub enum ReadRequest {
    /// The whole state as a v1 update, or only what a peer with this state vector lacks.
    State(Option<StateVectorV1>),
    /// The state vector (v1).
    StateVector,
    /// The root types as JSON.
    Json,
}

/// The answer to a [`RoomCmd::Read`].
#[derive(Debug)]
pub enum ReadAnswer {
    /// Binary (an update or a state vector).
    Bytes(Vec<u8>),
    /// JSON.
    Json(serde_json::Value),
}

/// Why [`RoomCmd::ApplyUpdate`] did not apply an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyRefusal {
    /// The document would pass `limits.max_document_bytes`.
    #[error("document size limit of {0} bytes reached")]
    DocumentTooLarge(usize),
    /// The store has been failing and the room's buffer of unwritten updates is full.
    #[error("storage unavailable: {0} bytes of accepted updates are waiting to be written; try again later")]
    StorageUnavailable(u64),
    /// The update builds on changes the document does not have.
    #[error("the update depends on changes this document does not have: fetch `state?sv=` and send a diff against it")]
    MissingDependencies,
    /// The document refused it.
    #[error("update refused: {0}")]
    Refused(String),
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The room task kept disappearing (should not happen).
    #[error("room unavailable")]
    Unavailable,
    /// The room refused the connection.
    #[error("refused: {}", .0.reason)]
    Refused(CloseReason),
}

/// A joined room: where to send the connection's messages.
#[derive(Debug, Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCmd>,
    inbox_bytes: Arc<Semaphore>,
    inbox_budget: u32,
}

impl RoomHandle {
    /// Sends a command, waiting while the inbox is full. `false` if the room is gone.
    pub async fn send(&self, cmd: RoomCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Sends a client message, first waiting until the room's inbox has room for its bytes
    /// (`limits.room_inbox_bytes`), so queued frames are bounded in bytes as well as in count.
    /// `false` if the room is gone.
    pub async fn send_message(&self, conn: ConnId, frame: Bytes, msg: ClientMessage) -> bool {
        let arrived = Instant::now();
        // A frame larger than the whole budget (only if misconfigured) takes all of it.
        let want = u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.inbox_bytes_budget());
        let Ok(permit) = Arc::clone(&self.inbox_bytes).acquire_many_owned(want).await else {
            return false;
        };
        self.send(RoomCmd::Message {
            conn,
            frame,
            msg,
            _permit: permit,
            arrived,
        })
        .await
    }

    fn inbox_bytes_budget(&self) -> u32 {
        self.inbox_budget
    }
}

struct RoomEntry {
    generation: u64,
    tx: mpsc::Sender<RoomCmd>,
    inbox_bytes: Arc<Semaphore>,
}

/// The map from room name to room task.
pub struct Registry {
    /// A `std::sync::Mutex`: held only to look up, insert or remove an entry, never across an
    /// await.
    rooms: Mutex<HashMap<Arc<str>, RoomEntry>>,
    config: Arc<Config>,
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_generation: AtomicU64,
    /// Cluster mode: the Redis bridge to the other nodes.
    cluster: Option<Arc<Cluster>>,
}

impl Registry {
    /// A registry whose rooms persist to `store`, whose tasks are tracked by `tracker` and
    /// stop after `shutdown`.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            rooms: Mutex::default(),
            config,
            store,
            tracker,
            shutdown,
            next_generation: AtomicU64::new(1),
            cluster,
        }
    }

    /// The store rooms persist to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The server's configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The cluster bridge, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Hands a peer's message to `room`'s task if the room is active here, without waiting.
    pub fn offer_peer(&self, room: &str, envelope: Envelope) -> PeerDelivery {
        self.offer_existing(room, RoomCmd::Peer(Box::new(envelope)))
    }

    /// Asks `room`'s task, if active here, to resync with its peers, without waiting.
    pub fn request_resync(&self, room: &str) -> PeerDelivery {
        self.offer_existing(room, RoomCmd::Resync)
    }

    fn offer_existing(&self, room: &str, cmd: RoomCmd) -> PeerDelivery {
        let (name, tx) = {
            let rooms = self.lock();
            match rooms.get_key_value(room) {
                Some((name, entry)) => (Arc::clone(name), entry.tx.clone()),
                None => return PeerDelivery::NotLoaded,
            }
        };
        match tx.try_send(cmd) {
            Ok(()) => PeerDelivery::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => PeerDelivery::Full(name),
            Err(mpsc::error::TrySendError::Closed(_)) => PeerDelivery::NotLoaded,
        }
    }

    /// Sends `cmd` to `room`'s task, loading the room if needed. `false` if the server is
    /// shutting down or the room kept disappearing.
    pub async fn command(self: &Arc<Self>, room: &str, mut cmd: RoomCmd) -> bool {
        for _ in 0..8 {
            if self.shutdown.is_cancelled() {
                return false;
            }
            let (tx, _) = self.get_or_start(room);
            match tx.send(cmd).await {
                Ok(()) => return true,
                // The task ended meanwhile; try again on a fresh one.
                Err(mpsc::error::SendError(back)) => cmd = back,
            }
            tokio::task::yield_now().await;
        }
        false
    }

    /// Number of rooms in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no room is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomEntry>> {
        // A panic while holding this lock cannot leave the map half-updated (single insert or
        // remove), so a poisoned lock is safe to keep using.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins `room`, starting its task if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        sub: Subscriber,
    ) -> Result<RoomHandle, JoinError> {
        for _ in 0..8 {
            if self.shutdown.is_cancelled() {
                return Err(JoinError::ShuttingDown);
            }
            let (tx, inbox_bytes) = self.get_or_start(room);
            let (ack, acked) = oneshot::channel();
            let cmd = RoomCmd::Join {
                sub: sub.clone(),
                ack,
            };
            if tx.send(cmd).await.is_ok() {
                match acked.await {
                    Ok(Ok(())) => {
                        return Ok(RoomHandle {
                            tx,
                            inbox_bytes,
                            inbox_budget: self.inbox_budget(),
                        })
                    }
                    Ok(Err(reason)) => return Err(JoinError::Refused(reason)),
                    Err(_) => {}
                }
            }
            // The task ended between lookup and join; it removed itself, so retry.
            tokio::task::yield_now().await;
        }
        Err(JoinError::Unavailable)
    }

    fn inbox_budget(&self) -> u32 {
        u32::try_from(self.config.limits.room_inbox_bytes).unwrap_or(u32::MAX)
    }

    fn get_or_start(self: &Arc<Self>, room: &str) -> (mpsc::Sender<RoomCmd>, Arc<Semaphore>) {
        let mut rooms = self.lock();
        if let Some(entry) = rooms.get(room) {
            if !entry.tx.is_closed() {
                return (entry.tx.clone(), Arc::clone(&entry.inbox_bytes));
            }
        }
        let inbox_bytes = Arc::new(Semaphore::new(self.inbox_budget() as usize));
        let name: Arc<str> = Arc::from(room);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.limits.room_inbox);
        rooms.insert(
            Arc::clone(&name),
            RoomEntry {
                generation,
                tx: tx.clone(),
                inbox_bytes: Arc::clone(&inbox_bytes),
            },
        );
        metrics::gauge!("yrelay_rooms_loaded").set(rooms.len() as f64);
        let task = room_main(Arc::clone(self), Arc::clone(&name), generation, rx);
        let span = info_span!("room", room = %name);
        self.tracker.spawn(task.instrument(span));
        (tx, inbox_bytes)
    }

    /// Removes the entry for `name` if it still belongs to `generation`, whatever is queued.
    fn remove_entry(&self, name: &str, generation: u64) {
        let mut rooms = self.lock();
        if rooms.get(name).is_some_and(|e| e.generation == generation) {
            rooms.remove(name);
            metrics::gauge!("yrelay_rooms_loaded").set(rooms.len() as f64);
        }
    }

    /// Names of the rooms in memory.
    pub fn loaded_names(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// Whether `room` is in memory.
    pub fn is_loaded(&self, room: &str) -> bool {
        self.lock().contains_key(room)
    }

    /// Removes the entry for `name` if it still belongs to `generation` and `rx` holds nothing.
    fn try_evict(&self, name: &str, generation: u64, rx: &mpsc::Receiver<RoomCmd>) -> bool {
        let mut rooms = self.lock();
        let ours = rooms.get(name).is_some_and(|e| e.generation == generation);
        if ours && rx.is_empty() {
            rooms.remove(name);
            metrics::gauge!("yrelay_rooms_loaded").set(rooms.len() as f64);
            true
        } else {
            !ours
        }
    }
}

struct SubState {
    sub: Subscriber,
    /// Awareness client IDs this connection introduced or renewed; removed when it leaves.
    controlled: HashSet<u64>,
}

struct RoomTask {
    name: Arc<str>,
    generation: u64,
    doc: RoomDoc,
    subs: HashMap<ConnId, SubState>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    persist: Persister,
    /// Log position of the newest version taken.
    last_version_seq: Seq,
    /// Stored size of the document: the last snapshot (or encoded state) plus every update
    /// since; what `limits.max_document_bytes` limits.
    stored_bytes: usize,
    /// Set once the room was deleted: nothing more is written.
    deleted: bool,
    /// While a connection's message is handled: when it arrived (for the fan-out latency of
    /// what it causes to be broadcast).
    arrived: Option<Instant>,
    /// Cluster mode: where local changes are published and peers are asked for theirs.
    cluster: Option<Arc<Cluster>>,
}

/// A room's whole life: load it (joins and messages wait in the inbox meanwhile, so nobody is
/// ever answered from a half-loaded document), then serve it.
async fn room_main(
    registry: Arc<Registry>,
    name: Arc<str>,
    generation: u64,
    mut rx: mpsc::Receiver<RoomCmd>,
) {
    let config = Arc::clone(&registry.config);
    let started = Instant::now();
    let store = Arc::clone(&registry.store);
    let room = Arc::clone(&name);
    let loaded = tokio::task::spawn_blocking(move || store.load(&room)).await;
    let loaded = match loaded {
        Ok(Ok(loaded)) => loaded,
        failed => {
            // An unreachable store is temporary: the client is told to retry later (1013).
            // Anything else (corrupt data, a failed task) is an internal error (1011).
            let (error, reason) = match failed {
                Ok(Err(e @ yrelay_store::StoreError::Unavailable(_))) => (
                    e.to_string(),
                    CloseReason::storage_unavailable(
                        "storage unavailable: room cannot be loaded now; retry later",
                    ),
                ),
                Ok(Err(e)) => (
                    e.to_string(),
                    CloseReason::internal("room could not be loaded"),
                ),
                Err(e) => (
                    e.to_string(),
                    CloseReason::internal("room could not be loaded"),
                ),
                Ok(Ok(_)) => unreachable!(),
            };
            error!(%error, "room could not be loaded");
            metrics::counter!("yrelay_room_load_errors_total").increment(1);
            // Refuse whoever is waiting, then let the next join try again on a fresh task.
            registry.try_evict(&name, generation, &rx);
            rx.close();
            while let Some(cmd) = rx.recv().await {
                if let RoomCmd::Join { ack, .. } = cmd {
                    let _ = ack.send(Err(reason.clone()));
                }
            }
            return;
        }
    };
    let mut doc = RoomDoc::new();
    let limits = ValidateLimits {
        max_depth: config.limits.max_nesting_depth.max(1024),
    };
    let mut tail = VecDeque::new();
    let mut stored_bytes = 0;
    let last_seq = loaded.next_seq.saturating_sub(1);
    let stored = loaded
        .snapshot
        .into_iter()
        .map(|s| (0, s))
        .chain(loaded.tail);
    for (seq, bytes) in stored {
        let len = bytes.len();
        stored_bytes += len;
        match UpdateV1::parse(Bytes::from(bytes), &limits) {
            Ok(update) => {
                let applied = doc.apply_update(&update, 0);
                for (_, e) in applied.refused {
                    error!(seq, error = %e, "stored update refused on load");
                }
            }
            Err(e) => error!(seq, error = %e, "stored update is invalid; skipped"),
        }
        if seq > 0 {
            tail.push_back((seq, len));
        }
    }
    metrics::histogram!("yrelay_room_load_seconds").record(started.elapsed().as_secs_f64());
    let cluster = registry.cluster.clone();
    let persist = Persister::new(
        Arc::clone(&registry.store),
        Arc::clone(&name),
        config.persistence.clone(),
        last_seq,
        tail,
        cluster.is_some(),
    );
    if let Some(cluster) = &cluster {
        // Subscribe before asking, so the answers are heard; then ask every peer for what the
        // store did not have yet (their unwritten updates) and for who is present.
        cluster.subscribe(&name, generation).await;
        cluster.publish(
            &name,
            Kind::SyncRequest {
                state_vector: doc.state_vector(),
                awareness: true,
            },
        );
    }
    let task = RoomTask {
        name,
        generation,
        doc,
        subs: HashMap::new(),
        config,
        registry,
        persist,
        last_version_seq: last_seq,
        stored_bytes,
        deleted: false,
        arrived: None,
        cluster,
    };
    task.run(rx).await;
}

impl RoomTask {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        debug!("room loaded");
        let idle = self.config.timeouts.room_idle();
        let shutdown = self.registry.shutdown.clone();
        let awareness_timeout = self.config.timeouts.awareness_timeout_ms;
        // y-protocols checks every tenth of the timeout.
        let mut sweep =
            tokio::time::interval(Duration::from_millis((awareness_timeout / 10).max(100)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let version_every = Duration::from_millis(self.config.persistence.version_interval_ms);
        let mut versions = tokio::time::interval_at(
            Instant::now() + version_every.max(Duration::from_millis(1)),
            version_every.max(Duration::from_millis(1)),
        );
        versions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since = Some(Instant::now());
        loop {
            // `room_idle_ms = 0` keeps rooms in memory for as long as the process runs.
            let deadline = idle_since.filter(|_| !idle.is_zero()).map(|t| t + idle);
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                step = self.persist.next_event() => {
                    for frame in step.deliver {
                        self.deliver(frame);
                    }
                    if step.compact {
                        let state = self.doc.encode_state();
                        metrics::histogram!("yrelay_compaction_input_bytes").record(self.stored_bytes as f64);
                        self.stored_bytes = state.len();
                        self.persist.start_compaction(state);
                    }
                },
                () = sleep_until_opt(deadline) => {
                    if self.subs.is_empty() {
                        self.flush().await;
                        if self.registry.try_evict(&self.name, self.generation, &rx) {
                            break;
                        }
                    }
                },
                _ = sweep.tick(), if self.doc.awareness_len() > 0 => self.expire_awareness(awareness_timeout),
                _ = versions.tick(), if !version_every.is_zero() => self.auto_version(),
                () = shutdown.cancelled(), if self.subs.is_empty() => {
                    self.flush().await;
                    self.registry.try_evict(&self.name, self.generation, &rx);
                    break;
                },
            }
            if self.deleted {
                self.registry.remove_entry(&self.name, self.generation);
                break;
            }
            self.persist.kick();
            idle_since = match (self.subs.is_empty(), idle_since) {
                (true, None) => Some(Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
        }
        // Nothing new can arrive once the entry is gone; dropping queued joins makes their
        // connections retry on a fresh task.
        rx.close();
        while let Some(cmd) = rx.recv().await {
            // Queued joins are dropped (unanswered, so they retry on a fresh task); version
            // commands are still served from this document.
            // A deleted room answers nothing more (dropped replies read as "unavailable").
            if !self.deleted && !matches!(cmd, RoomCmd::Join { .. }) {
                self.handle(cmd).await;
            }
        }
        self.flush().await;
        if let Some(cluster) = &self.cluster {
            cluster.unsubscribe(&self.name, self.generation);
        }
        debug!("room dropped from memory");
    }

    /// Writes everything outstanding (eviction, shutdown).
    async fn flush(&mut self) {
        for frame in self.persist.drain().await {
            self.deliver(frame);
        }
    }

    /// Saves an automatic version if the document changed since the last one.
    fn auto_version(&mut self) {
        let seq = self.persist.last_seq();
        if seq <= self.last_version_seq {
            return;
        }
        self.last_version_seq = seq;
        let store = Arc::clone(&self.registry.store);
        let room = Arc::clone(&self.name);
        let state = self.doc.encode_state();
        self.registry.tracker.spawn_blocking(move || {
            if let Err(e) =
                store.save_version(&room, VersionKind::Auto, None, &state, seq, now_ms())
            {
                warn!(error = %e, "automatic version failed");
            }
        });
    }

    async fn create_version(&mut self, label: Option<String>) -> Result<VersionInfo, String> {
        let store = Arc::clone(&self.registry.store);
        let room = Arc::clone(&self.name);
        let state = self.doc.encode_state();
        let seq = self.persist.last_seq();
        self.last_version_seq = self.last_version_seq.max(seq);
        tokio::task::spawn_blocking(move || {
            store.save_version(
                &room,
                VersionKind::Named,
                label.as_deref(),
                &state,
                seq,
                now_ms(),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    async fn restore(&mut self, id: u64) -> Result<Option<bool>, String> {
        let store = Arc::clone(&self.registry.store);
        let room = Arc::clone(&self.name);
        let version = tokio::task::spawn_blocking(move || store.get_version(&room, id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some((_, old_state)) = version else {
            return Ok(None);
        };
        let current = self.doc.encode_state();
        // A fresh client ID for the server's edit (53 bits, as Yjs requires).
        let client_id = u64::from(rand_u32()) << 21 | u64::from(rand_u32() & 0x1f_ffff);
        let Some(update) = yrelay_doc::restore::restore_update(&current, &old_state, client_id)
            .map_err(|e| e.to_string())?
        else {
            return Ok(Some(false));
        };
        let limits = ValidateLimits { max_depth: 1024 };
        let update = UpdateV1::parse(Bytes::from(update), &limits).map_err(|e| e.to_string())?;
        self.check_storage(&update).map_err(|e| e.to_string())?;
        let frame = codec::encode_sync_update(update.as_bytes());
        let (_, refused) = self.apply(
            0,
            &frame,
            &update,
            "yrelay",
            &format!("restore of version {id}"),
        );
        match refused {
            Some(err) => Err(err.to_string()),
            None => Ok(Some(true)),
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::CreateVersion { label, reply } => {
                let _ = reply.send(self.create_version(label).await);
            }
            RoomCmd::Restore { id, reply } => {
                let _ = reply.send(self.restore(id).await);
            }
            RoomCmd::Read { what, reply } => self.read(what, reply),
            RoomCmd::ApplyUpdate {
                update,
                author,
                origin,
                reply,
            } => self.apply_rest(&update, &author, &origin, reply),
            RoomCmd::Delete { reply } => {
                let _ = reply.send(self.delete().await);
            }
            RoomCmd::Join { sub, ack } => self.join(sub, ack),
            // The permit is released once the message has been handled.
            RoomCmd::Message {
                conn,
                frame,
                msg,
                arrived,
                ..
            } => {
                self.arrived = Some(arrived);
                self.message(conn, frame, msg);
                self.arrived = None;
            }
            RoomCmd::Leave { conn } => self.leave(conn),
            RoomCmd::Peer(envelope) => self.peer(*envelope),
            RoomCmd::Resync => self.resync(),
        }
    }

    fn join(&mut self, sub: Subscriber, ack: oneshot::Sender<Result<(), CloseReason>>) {
        // As the reference server does: our state vector first, then who is present. The
        // greeting ignores the byte budget (presence may be large); only a queue shorter than
        // two frames could refuse it, and `Config::validate` rules that out.
        let mut ok = sub.offer_within(&codec::encode_sync_step1(&self.doc.state_vector()), None);
        if let Some(states) = self.doc.awareness_states() {
            ok &= sub.offer_within(&codec::encode_awareness(&states), None);
        }
        if !ok {
            let _ = ack.send(Err(CloseReason::slow_consumer()));
            return;
        }
        let id = sub.id;
        self.subs.insert(
            id,
            SubState {
                sub,
                controlled: HashSet::new(),
            },
        );
        if ack.send(Ok(())).is_err() {
            // The connection gave up while waiting.
            self.subs.remove(&id);
        }
    }

    fn message(&mut self, conn: ConnId, frame: Bytes, msg: ClientMessage) {
        if !self.subs.contains_key(&conn) {
            return; // already disconnected (e.g. as a slow consumer)
        }
        match msg {
            ClientMessage::SyncStep1(sv) => {
                let reply = codec::encode_sync_step2(&self.doc.diff(&sv));
                self.send_to(conn, reply);
            }
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                let Some(state) = self.subs.get(&conn) else {
                    return;
                };
                let (subject, origin) = (
                    Arc::clone(&state.sub.subject),
                    Arc::clone(&state.sub.origin),
                );
                if !state.sub.role.can_write() {
                    // Every official client answers our SyncStep1 with its state, which for a
                    // viewer changes nothing; only a real change is refused.
                    if self.doc.would_change(&update) {
                        metrics::counter!("yrelay_viewer_writes_refused_total").increment(1);
                        self.deny(conn, "read-only: a viewer cannot change the document");
                    }
                    return;
                }
                if let Err(refusal) = self.check_size(&update) {
                    self.deny(conn, &refusal.to_string());
                    return;
                }
                if let Err(refusal) = self.check_storage(&update) {
                    // The client keeps its edit and resends it (sync step 2) when it
                    // reconnects, so closing loses nothing; applying it could.
                    self.close_sub(conn, CloseReason::storage_unavailable(&refusal.to_string()));
                    return;
                }
                self.apply(conn, &frame, &update, &subject, &origin);
            }
            ClientMessage::Awareness(update) => {
                let viewer = self
                    .subs
                    .get(&conn)
                    .is_some_and(|s| !s.sub.role.can_write());
                if viewer && !self.config.auth.viewer_awareness {
                    metrics::counter!("yrelay_viewer_writes_refused_total").increment(1);
                    self.deny(conn, "read-only: viewers may not send presence here");
                    return;
                }
                self.awareness(conn, &update);
            }
            ClientMessage::QueryAwareness => {
                if let Some(states) = self.doc.awareness_states() {
                    self.send_to(conn, codec::encode_awareness(&states));
                }
            }
            // Filtered out by the connection; nothing for the room to do.
            ClientMessage::Auth | ClientMessage::Unknown(_) => {}
        }
    }

    /// Applies an update from `conn` (0: the server itself), records what the document took in
    /// for the log, and broadcasts it (in fsync mode, once durable).
    /// Returns whether the document changed and, if `conn`'s own update was refused, why.
    fn apply(
        &mut self,
        conn: ConnId,
        frame: &Bytes,
        update: &UpdateV1,
        author: &str,
        origin: &str,
    ) -> (bool, Option<yrelay_doc::DocError>) {
        let started = Instant::now();
        let applied = self.doc.apply_update(update, conn);
        metrics::histogram!("yrelay_update_apply_seconds").record(started.elapsed().as_secs_f64());
        let time_ms = now_ms();
        let changed = !applied.emitted.is_empty();
        let mut own_refusal = None;
        for part in &applied.emitted {
            self.stored_bytes += part.len();
            self.persist.record(AppendEntry {
                update: part.clone(),
                author: author.to_owned(),
                origin: origin.to_owned(),
                time_ms,
            });
        }
        // Broadcast everything the document took in, even when something was refused after
        // part of it was integrated; in a cluster, publish it too (once durable, like the
        // broadcast, so a peer never shows what a crash here could lose).
        match applied.emitted.as_slice() {
            [] => {}
            [single] => {
                self.broadcast(broadcast_frame(frame, single));
                self.publish(Kind::Update {
                    update: single.clone(),
                });
            }
            // A cascade (held-back updates unblocked): one message if the parts merge.
            parts => match yrs::merge_updates_v1(parts) {
                Ok(merged) => {
                    self.broadcast(codec::encode_sync_update(&merged));
                    self.publish(Kind::Update { update: merged });
                }
                Err(_) => {
                    for part in parts {
                        self.broadcast(codec::encode_sync_update(part));
                        self.publish(Kind::Update {
                            update: part.clone(),
                        });
                    }
                }
            },
        }
        for (origin, err) in applied.refused {
            warn!(conn = origin, error = %err, "update refused");
            metrics::counter!("yrelay_updates_refused_total").increment(1);
            self.close_sub(origin, CloseReason::refused(&err));
            if origin == conn {
                own_refusal = Some(err);
            }
        }
        (changed, own_refusal)
    }

    /// Refuses an update that would take the document past `limits.max_document_bytes`
    /// (unless it changes nothing).
    fn check_size(&self, update: &UpdateV1) -> Result<(), ApplyRefusal> {
        let max = self.config.limits.max_document_bytes;
        if self.stored_bytes.saturating_add(update.len()) > max && self.doc.would_change(update) {
            crate::limits::refused("document_bytes");
            return Err(ApplyRefusal::DocumentTooLarge(max));
        }
        Ok(())
    }

    /// Refuses an update that changes the document while the room already holds
    /// `persistence.max_pending_bytes` of updates the store has not taken (it is failing).
    fn check_storage(&self, update: &UpdateV1) -> Result<(), ApplyRefusal> {
        let pending = self.persist.pending_bytes() as u64;
        if pending >= self.config.persistence.max_pending_bytes && self.doc.would_change(update) {
            metrics::counter!("yrelay_store_refusals_total").increment(1);
            return Err(ApplyRefusal::StorageUnavailable(pending));
        }
        Ok(())
    }

    /// Tells a connection that what it sent was not applied (y-protocols auth message; the
    /// official client reports it through its permission-denied handler).
    fn deny(&mut self, conn: ConnId, reason: &str) {
        self.send_to(conn, codec::encode_auth_denied(reason));
    }

    /// Applies an update sent over REST and answers once it is as durable as the mode promises.
    fn apply_rest(
        &mut self,
        update: &UpdateV1,
        author: &str,
        origin: &str,
        reply: oneshot::Sender<Result<bool, ApplyRefusal>>,
    ) {
        if let Err(refusal) = self
            .check_size(update)
            .and_then(|()| self.check_storage(update))
        {
            let _ = reply.send(Err(refusal));
            return;
        }
        // An origin of its own, so whatever it leaves held back can be dropped again.
        let id = crate::conn::next_conn_id();
        let frame = codec::encode_sync_update(update.as_bytes());
        let (changed, refused) = self.apply(id, &frame, update, author, origin);
        if let Some(err) = refused {
            let _ = reply.send(Err(ApplyRefusal::Refused(err.to_string())));
            return;
        }
        let held = self.doc.pending_bytes();
        self.doc.drop_pending_from(id);
        if self.doc.pending_bytes() != held {
            let _ = reply.send(Err(ApplyRefusal::MissingDependencies));
            return;
        }
        self.after_durable(move || {
            let _ = reply.send(Ok(changed));
        });
    }

    /// Runs `action` once everything applied so far is durable (at once in batched mode).
    fn after_durable(&mut self, action: impl FnOnce() + Send + 'static) {
        if let Some(out) = self.persist.gate(Outbound::Run(Deferred::new(action))) {
            self.deliver(out);
        }
    }

    /// Answers a REST read, from the document as it is now, once what it shows is durable.
    fn read(&mut self, what: ReadRequest, reply: oneshot::Sender<ReadAnswer>) {
        let answer = match what {
            ReadRequest::State(None) => ReadAnswer::Bytes(self.doc.encode_state()),
            ReadRequest::State(Some(sv)) => ReadAnswer::Bytes(self.doc.diff(&sv)),
            ReadRequest::StateVector => ReadAnswer::Bytes(self.doc.state_vector()),
            ReadRequest::Json => ReadAnswer::Json(self.doc.to_json()),
        };
        self.after_durable(move || {
            let _ = reply.send(answer);
        });
    }

    /// Closes every connection, writes out what is pending (so nothing lands after the
    /// delete), and removes the room from the store.
    async fn delete(&mut self) -> Result<(), String> {
        for state in self.subs.values() {
            state.sub.control.close(CloseReason::room_deleted());
        }
        self.subs.clear();
        self.flush().await;
        let store = Arc::clone(&self.registry.store);
        let room = Arc::clone(&self.name);
        tokio::task::spawn_blocking(move || store.delete_room(&room))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.deleted = true;
        self.doc = RoomDoc::new();
        self.stored_bytes = 0;
        if let Some(cluster) = &self.cluster {
            cluster.publish(&self.name, Kind::Deleted);
        }
        Ok(())
    }

    fn awareness(&mut self, conn: ConnId, update: &yrelay_doc::AwarenessUpdateV1) {
        let cap = self.config.limits.max_awareness_clients_per_conn;
        let Some(state) = self.subs.get(&conn) else {
            return;
        };
        let ids = update.client_ids();
        let new = ids
            .iter()
            .filter(|id| !state.controlled.contains(id))
            .count();
        if state.controlled.len() + new > cap {
            metrics::counter!("yrelay_protocol_errors_total", "reason" => "awareness_clients")
                .increment(1);
            self.close_sub(conn, CloseReason::too_many_awareness_clients(cap));
            return;
        }
        match self.doc.apply_awareness(update) {
            Ok(change) => {
                if let Some(state) = self.subs.get_mut(&conn) {
                    // `updated` too: a client that reconnects keeps its ID, and yrs reports a
                    // returning ID as updated, not added.
                    state
                        .controlled
                        .extend(change.added.iter().chain(&change.updated));
                    for id in &change.removed {
                        state.controlled.remove(id);
                    }
                }
                if let Some(b) = change.broadcast {
                    self.broadcast(codec::encode_awareness(&b));
                    self.publish(Kind::Awareness { update: b });
                }
            }
            Err(err) => {
                warn!(conn, error = %err, "awareness update refused");
                self.close_sub(conn, CloseReason::refused(&err));
            }
        }
    }

    /// Removes presence that was not renewed within `timeout_ms`, as y-protocols does.
    fn expire_awareness(&mut self, timeout_ms: u64) {
        let outdated = self.doc.outdated_awareness(now_ms(), timeout_ms);
        if outdated.is_empty() {
            return;
        }
        for state in self.subs.values_mut() {
            for id in &outdated {
                state.controlled.remove(id);
            }
        }
        if let Some(removal) = self.doc.remove_awareness(&outdated) {
            self.broadcast(codec::encode_awareness(&removal));
        }
    }

    fn leave(&mut self, conn: ConnId) {
        self.remove_sub(conn);
    }

    /// Tells a connection to close and drops it from the room.
    fn close_sub(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(state) = self.subs.get(&conn) {
            state.sub.control.close(reason);
        }
        self.remove_sub(conn);
    }

    /// Drops a subscriber, forgets what it had held back, and broadcasts the removal of the
    /// awareness states it controlled.
    fn remove_sub(&mut self, conn: ConnId) {
        let mut pending = vec![conn];
        while let Some(conn) = pending.pop() {
            let Some(state) = self.subs.remove(&conn) else {
                continue;
            };
            self.doc.drop_pending_from(conn);
            let ids: Vec<u64> = state.controlled.into_iter().collect();
            if let Some(removal) = self.doc.remove_awareness(&ids) {
                let frame = codec::encode_awareness(&removal);
                pending.extend(self.offer_all(&frame));
                if let Some(cluster) = &self.cluster {
                    cluster.publish(&self.name, Kind::Awareness { update: removal });
                }
            }
        }
    }

    /// Sends to one connection, behind anything not yet durable (fsync mode).
    fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        if let Some(out) = self.persist.gate(Outbound::To(conn, frame)) {
            self.deliver(out);
        }
    }

    /// Sends to everyone, behind anything not yet durable (fsync mode).
    fn broadcast(&mut self, frame: Bytes) {
        if let Some(out) = self.persist.gate(Outbound::All(frame, self.arrived)) {
            self.deliver(out);
        }
    }

    fn deliver(&mut self, out: Outbound) {
        match out {
            Outbound::All(frame, arrived) => {
                self.deliver_all(frame);
                if let Some(arrived) = arrived {
                    metrics::histogram!("yrelay_fanout_seconds")
                        .record(arrived.elapsed().as_secs_f64());
                }
            }
            Outbound::To(conn, frame) => self.deliver_to(conn, frame),
            Outbound::Run(action) => action.run(),
            Outbound::Publish(kind) => {
                if let Some(cluster) = &self.cluster {
                    cluster.publish(&self.name, kind);
                }
            }
        }
    }

    /// Publishes `kind` to the other nodes (cluster mode), behind anything not yet durable
    /// (fsync mode).
    fn publish(&mut self, kind: Kind) {
        if self.cluster.is_none() {
            return;
        }
        if let Some(out) = self.persist.gate(Outbound::Publish(kind)) {
            self.deliver(out);
        }
    }

    /// Asks the other nodes for what this room lacks (they answer with a diff and their state
    /// vector, from which we send back what they lack).
    fn resync(&mut self) {
        if let Some(cluster) = &self.cluster {
            metrics::counter!("yrelay_cluster_resyncs_total").increment(1);
            cluster.publish(
                &self.name,
                Kind::SyncRequest {
                    state_vector: self.doc.state_vector(),
                    awareness: false,
                },
            );
        }
    }

    /// Handles a message from another node.
    fn peer(&mut self, envelope: Envelope) {
        match envelope.kind {
            Kind::Update { update } => self.apply_peer(update),
            Kind::Awareness { update } => self.apply_peer_awareness(update),
            Kind::SyncRequest {
                state_vector,
                awareness,
            } => {
                let Ok(sv) = StateVectorV1::parse(Bytes::from(state_vector)) else {
                    warn!(peer = %envelope.origin, "invalid state vector from a peer ignored");
                    return;
                };
                let diff = self.doc.diff(&sv);
                let lacking = self.lacks_some_of(&sv);
                let awareness = if awareness {
                    self.doc.awareness_states()
                } else {
                    None
                };
                if diff.len() > EMPTY_UPDATE_LEN || lacking || awareness.is_some() {
                    // Gated: the diff may hold our own updates that are not durable yet.
                    self.publish(Kind::SyncReply {
                        to: envelope.origin,
                        diff,
                        state_vector: self.doc.state_vector(),
                        awareness,
                    });
                }
            }
            Kind::SyncReply {
                diff,
                state_vector,
                awareness,
                ..
            } => {
                if diff.len() > EMPTY_UPDATE_LEN {
                    self.apply_peer(diff);
                }
                if let Some(states) = awareness {
                    self.apply_peer_awareness(states);
                }
                if let Ok(sv) = StateVectorV1::parse(Bytes::from(state_vector)) {
                    let back = self.doc.diff(&sv);
                    if back.len() > EMPTY_UPDATE_LEN {
                        self.publish(Kind::Update { update: back });
                    }
                }
            }
            Kind::Deleted => {
                for state in self.subs.values() {
                    state.sub.control.close(CloseReason::room_deleted());
                }
                self.subs.clear();
                self.deleted = true;
                self.doc = RoomDoc::new();
                self.stored_bytes = 0;
            }
        }
    }

    /// Whether a peer with state vector `sv` has changes this document lacks.
    fn lacks_some_of(&self, sv: &StateVectorV1) -> bool {
        use yrs::{ReadTxn, Transact};
        let theirs = sv.decode();
        let ours = self.doc.doc().transact().state_vector();
        theirs
            .iter()
            .any(|(client, clock)| ours.get(client) < *clock)
    }

    /// Applies an update from another node: shown to local clients, neither written (its
    /// origin node writes it) nor published again.
    fn apply_peer(&mut self, update: Vec<u8>) {
        let limits = ValidateLimits {
            max_depth: self.config.limits.max_nesting_depth.max(1024),
        };
        let update = match UpdateV1::parse(Bytes::from(update), &limits) {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "invalid update from a peer ignored");
                return;
            }
        };
        let applied = self.doc.apply_update(&update, PEER_ORIGIN);
        for part in &applied.emitted {
            self.stored_bytes += part.len();
            self.broadcast(codec::encode_sync_update(part));
        }
        for (origin, err) in applied.refused {
            if origin == PEER_ORIGIN {
                warn!(error = %err, "update from a peer refused");
            } else {
                // A held-back update of a local client became ready and failed.
                self.close_sub(origin, CloseReason::refused(&err));
            }
        }
    }

    fn apply_peer_awareness(&mut self, update: Vec<u8>) {
        let Ok(update) = yrelay_doc::AwarenessUpdateV1::parse(Bytes::from(update)) else {
            warn!("invalid awareness update from a peer ignored");
            return;
        };
        match self.doc.apply_awareness(&update) {
            Ok(change) => {
                if let Some(b) = change.broadcast {
                    self.broadcast(codec::encode_awareness(&b));
                }
            }
            Err(err) => warn!(error = %err, "awareness update from a peer refused"),
        }
    }

    fn deliver_to(&mut self, conn: ConnId, frame: Bytes) {
        let max = self.config.limits.outbound_queue_bytes;
        let slow = match self.subs.get(&conn) {
            Some(state) => !state.sub.offer(&frame, max),
            None => false,
        };
        if slow {
            self.mark_slow(conn);
            self.remove_sub(conn);
        }
    }

    fn deliver_all(&mut self, frame: Bytes) {
        for conn in self.offer_all(&frame) {
            self.remove_sub(conn);
        }
    }

    /// Offers `frame` to every subscriber; returns the ones that were too slow (already told
    /// to close, not yet removed).
    fn offer_all(&self, frame: &Bytes) -> Vec<ConnId> {
        let max = self.config.limits.outbound_queue_bytes;
        let slow: Vec<ConnId> = self
            .subs
            .iter()
            .filter(|(_, state)| !state.sub.control.cancel.is_cancelled())
            .filter(|(_, state)| !state.sub.offer(frame, max))
            .map(|(id, _)| *id)
            .collect();
        for id in &slow {
            self.mark_slow(*id);
        }
        slow
    }

    /// Closes a subscriber whose queue overflowed (the one place that counts it).
    fn mark_slow(&self, conn: ConnId) {
        if let Some(state) = self.subs.get(&conn) {
            warn!(conn, "slow consumer disconnected");
            metrics::counter!("yrelay_slow_consumer_disconnects_total").increment(1);
            state.sub.control.close(CloseReason::slow_consumer());
        }
    }
}

/// Length of a v1 update that changes nothing (no structs, empty delete set).
const EMPTY_UPDATE_LEN: usize = 2;

/// The origin under which updates from other nodes are applied (held back, if they depend on
/// something missing, until a resync brings it). No connection gets this id: connection ids
/// count up from 1.
const PEER_ORIGIN: ConnId = u64::MAX;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random 32-bit value from the OS-seeded hasher (no extra dependency for one ID).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish() as u32
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
