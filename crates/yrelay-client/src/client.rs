//! [`Client`]: a yrs `Doc` kept in sync with one room of a y-websocket server, offline-first.
//!
//! # How an edit travels
//! Every change to the document, whoever makes it, passes one update observer
//! (`observe_update_v1`). A local change (any transaction not made by the client's own
//! connection task) is appended to the replica and flushed (fsync) in that observer, that is
//! before the transaction returns to the caller, and only then queued for the server. A
//! change that came from the server is appended to the replica too, so a restart needs no
//! network to show what was last seen. The flush happens on the editing thread: an edit
//! costs one fsync (about a millisecond on an SSD), which is what "persisted first" means.
//!
//! # Reconnects
//! Whenever a connection is (re)established the two sides exchange state vectors (the
//! client sends SyncStep1 with its state vector and answers the server's SyncStep1 with
//! exactly the diff the server lacks), so only missing updates cross, in both directions,
//! however long the client was offline. Updates queued while offline are dropped when the
//! connection comes back: the state-vector exchange already carries them. Failed attempts
//! wait a full-jitter exponential backoff ([`Backoff`]). A refusal (bad token, role too
//! low, room deleted) stops the retries: [`Event::Refused`], [`Status::Offline`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;
use yrelay_doc::codec;
use yrs::sync::awareness::{Awareness, AwarenessUpdate};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Origin, ReadTxn, StateVector, Text, Transact, TransactionMut, Update};

use crate::endpoint::Endpoint;
use crate::error::{ClientError, Result};
use crate::replica::{Replica, LIMITS};
use crate::rest::RestClient;

/// Origin of the transactions that apply what the server sent.
const REMOTE: &str = "yrelay-client:remote";
/// Key of the client's update observer.
const OBSERVER: &str = "yrelay-client";
/// How often the local awareness state is renewed (as y-protocols does), so other clients do
/// not expire it.
const AWARENESS_RENEW: Duration = Duration::from_secs(15);
/// How long connecting (TCP, TLS, WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted from the server (a whole document's state can be large).
const MAX_MESSAGE: usize = 256 << 20;
/// WebSocket close codes after which reconnecting cannot help.
const FINAL_CLOSE_CODES: &[u16] = &[1008, 4401, 4404];

/// How the client talks to the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transport {
    /// The y-websocket protocol: live updates both ways, awareness.
    #[default]
    WebSocket,
    /// The REST API (`state?sv=`, `state-vector`, `update`), for networks that block
    /// WebSockets: every `poll`, and right after a local edit, the client sends what the
    /// server lacks and fetches what it lacks. No awareness.
    Http {
        /// Time between two exchanges.
        poll: Duration,
    },
}

/// Reconnect delays: attempt *n* waits a random time in `0..=min(max, initial × 2ⁿ)`
/// ("full jitter"), so clients cut off together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub initial: Duration,
    /// Largest upper bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// What [`Client::open`] needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server (`ws://`, `wss://`, `http://`, `https://`); `None` works offline only,
    /// against the replica.
    pub server: Option<String>,
    /// The room (document) name.
    pub room: String,
    /// A token for the room (JWT), sent as `?token=` (WebSocket) or `Authorization: Bearer`
    /// (REST).
    pub token: Option<String>,
    /// The local replica's directory; `None` keeps the document in memory only.
    pub replica: Option<PathBuf>,
    /// WebSocket (default) or HTTP polling.
    pub transport: Transport,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Extra trusted CA certificates (PEM) for a TLS server with a private certificate.
    pub extra_root_pem: Option<Vec<u8>>,
}

impl ClientConfig {
    /// A configuration for `room`: no server, no replica, WebSocket, default backoff.
    pub fn new(room: impl Into<String>) -> Self {
        Self {
            server: None,
            room: room.into(),
            token: None,
            replica: None,
            transport: Transport::WebSocket,
            backoff: Backoff::default(),
            extra_root_pem: None,
        }
    }

    /// Sets the server.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.server = Some(url.into());
        self
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the replica directory.
    pub fn replica(mut self, dir: impl Into<PathBuf>) -> Self {
        self.replica = Some(dir.into());
        self
    }

    /// Sets the transport.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
}

/// The connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not connected (no server, waiting to reconnect, or refused).
    Offline,
    /// Connecting.
    Connecting,
    /// Connected, initial exchange not finished.
    Connected,
    /// Connected and holding everything the server held when the exchange ended.
    Synced,
}

/// What happened, for [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    Status(Status),
    /// The initial exchange finished on a (re)connection.
    Synced,
    /// An update from the server was applied.
    RemoteUpdate {
        /// Its size in bytes.
        bytes: usize,
    },
    /// Other clients' presence changed (client ids).
    Awareness {
        /// Clients that appeared.
        added: Vec<u64>,
        /// Clients whose state changed.
        updated: Vec<u64>,
        /// Clients that left.
        removed: Vec<u64>,
    },
    /// The server refused something: the connection (bad token, deleted room: no more
    /// retries) or a write (a viewer's edit; the edit stays local).
    Refused(String),
    /// A local problem, e.g. the replica could not be written.
    Error(String),
}

enum Outgoing {
    Update(Vec<u8>),
    Awareness(Vec<u8>),
}

struct Shared {
    room: String,
    doc: Doc,
    awareness: Mutex<Awareness>,
    replica: Option<Replica>,
    events: broadcast::Sender<Event>,
    status: watch::Sender<Status>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Why the server refused the connection, once it did.
    refused: Mutex<Option<String>>,
    /// A replica write that failed in the observer, reported by the next [`Client::edit`].
    persist_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is replaced in one step; a panic cannot leave it half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn set_status(&self, status: Status) {
        let changed = self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        if changed {
            let _ = self.events.send(Event::Status(status));
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Validates and applies a server update (persisted by the observer).
    fn apply_remote(&self, update: &[u8]) -> Result<()> {
        yrelay_doc::validate::validate_update_v1(update, &LIMITS)
            .map_err(|e| ClientError::Protocol(format!("invalid update from the server: {e}")))?;
        let decoded = Update::decode_v1(update)
            .map_err(|e| ClientError::Protocol(format!("invalid update from the server: {e}")))?;
        self.doc
            .transact_mut_with(REMOTE)
            .apply_update(decoded)
            .map_err(|e| ClientError::Update(e.to_string()))?;
        if update != [0, 0] {
            self.emit(Event::RemoteUpdate {
                bytes: update.len(),
            });
        }
        Ok(())
    }

    fn local_awareness_update(&self) -> Option<Vec<u8>> {
        let awareness = lock(&self.awareness);
        let id = awareness.client_id();
        awareness
            .update_with_clients([id])
            .ok()
            .map(|u| u.encode_v1())
    }
}

/// A document kept in sync with one room; see the [module](self) documentation.
pub struct Client {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.shared.room)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Client {
    /// Opens the replica (if any) and loads the room from it, then, with a server, starts
    /// connecting in the background (on the current Tokio runtime). Fails only on a bad
    /// server URL or CA certificate or an unusable replica; an unreachable server is
    /// retried.
    pub async fn open(config: ClientConfig) -> Result<Client> {
        let endpoint = config.server.as_deref().map(Endpoint::parse).transpose()?;
        let tls = match &endpoint {
            Some(e) if e.tls() => {
                Some(crate::tls::client_config(config.extra_root_pem.as_deref())?)
            }
            _ => None,
        };
        let rest = match (&endpoint, &config.transport) {
            (Some(e), Transport::Http { .. }) => Some(RestClient::new(
                e,
                config.token.clone(),
                config.extra_root_pem.as_deref(),
            )?),
            _ => None,
        };
        let replica = match &config.replica {
            Some(dir) => {
                let dir = dir.clone();
                Some(
                    tokio::task::spawn_blocking(move || Replica::open(&dir))
                        .await
                        .map_err(|e| ClientError::Update(format!("replica task failed: {e}")))??,
                )
            }
            None => None,
        };
        let doc = Doc::new();
        if let Some(replica) = &replica {
            replica.load_into(&config.room, &doc)?;
        }
        let (events, _) = broadcast::channel(1024);
        let (status, _) = watch::channel(Status::Offline);
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            room: config.room.clone(),
            awareness: Mutex::new(Awareness::new(doc.clone())),
            doc,
            replica,
            events,
            status,
            outbox,
            refused: Mutex::new(None),
            persist_error: Mutex::new(None),
        });
        install_observer(&shared)?;
        let (stop, stop_rx) = watch::channel(false);
        let task = endpoint.map(|endpoint| {
            let shared = Arc::clone(&shared);
            let conn = Connection {
                shared,
                endpoint,
                token: config.token.clone(),
                tls,
                backoff: config.backoff,
                stop: stop_rx,
                outbox: outbox_rx,
            };
            match (config.transport, rest) {
                (Transport::Http { poll }, Some(rest)) => tokio::spawn(conn.run_http(rest, poll)),
                _ => tokio::spawn(conn.run_ws()),
            }
        });
        Ok(Client { shared, stop, task })
    }

    /// The document. Changes made to it directly (`doc().transact_mut()`) are persisted and
    /// sent like those made through [`Client::edit`], but their replica errors are only
    /// reported as [`Event::Error`].
    pub fn doc(&self) -> &Doc {
        &self.shared.doc
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.shared.room
    }

    /// Runs a local edit in one transaction. When it returns, the edit's update is durable
    /// in the replica and queued for the server. Take root references (`doc().get_or_insert_*`)
    /// before calling: creating one inside the transaction deadlocks yrs.
    pub fn edit<R>(&self, f: impl FnOnce(&mut TransactionMut<'_>) -> R) -> Result<R> {
        let result = {
            let mut txn = self.shared.doc.transact_mut();
            f(&mut txn)
        };
        match lock(&self.shared.persist_error).take() {
            Some(e) => Err(ClientError::Update(format!(
                "the edit is applied in memory but was not persisted: {e}"
            ))),
            None => Ok(result),
        }
    }

    /// The text of the Y.Text root `root` (empty if it does not exist).
    pub fn text(&self, root: &str) -> String {
        let text = self.shared.doc.get_or_insert_text(root);
        let txn = self.shared.doc.transact();
        text.get_string(&txn)
    }

    /// Appends `text` at the end of the Y.Text root `root`.
    pub fn append_text(&self, root: &str, text: &str) -> Result<()> {
        let root = self.shared.doc.get_or_insert_text(root);
        self.edit(|txn| {
            let len = root.len(txn);
            root.insert(txn, len, text);
        })
    }

    /// Replaces the whole content of the Y.Text root `root` by `text`.
    pub fn replace_text(&self, root: &str, text: &str) -> Result<()> {
        let root = self.shared.doc.get_or_insert_text(root);
        self.edit(|txn| {
            let len = root.len(txn);
            if len > 0 {
                root.remove_range(txn, 0, len);
            }
            root.insert(txn, 0, text);
        })
    }

    /// The document's root types as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        yrelay_doc::json::doc_to_json(&self.shared.doc)
    }

    /// Sets (or with `None` removes) this client's presence state, and sends it.
    pub fn set_local_awareness(&self, state: Option<serde_json::Value>) -> Result<()> {
        {
            let mut awareness = lock(&self.shared.awareness);
            match state {
                Some(state) => awareness
                    .set_local_state(state)
                    .map_err(|e| ClientError::Update(format!("awareness: {e}")))?,
                None => awareness.clean_local_state(),
            }
        }
        if let Some(update) = self.shared.local_awareness_update() {
            let _ = self.shared.outbox.send(Outgoing::Awareness(update));
        }
        Ok(())
    }

    /// Every known presence state (this client's included), by client id.
    pub fn awareness_states(&self) -> HashMap<u64, serde_json::Value> {
        let awareness = lock(&self.shared.awareness);
        awareness
            .iter()
            .filter_map(|(id, state)| {
                let json = state.data?;
                let value = serde_json::from_str(&json).ok()?;
                Some((id.get(), value))
            })
            .collect()
    }

    /// This client's id in the document and in awareness.
    pub fn client_id(&self) -> u64 {
        self.shared.doc.client_id().get()
    }

    /// A receiver of every later [`Event`].
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The connection's current state.
    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// Waits until the client is [`Status::Synced`]. Fails with [`ClientError::Refused`]
    /// once the server refused the connection, [`ClientError::Timeout`] after `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let mut status = self.shared.status.subscribe();
        let wait = async {
            loop {
                if let Some(why) = lock(&self.shared.refused).clone() {
                    return Err(ClientError::Refused(why));
                }
                if *status.borrow_and_update() == Status::Synced {
                    return Ok(());
                }
                if status.changed().await.is_err() {
                    return Err(ClientError::ClientClosed);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                if self.task.is_none() {
                    return Err(ClientError::Timeout(
                        "no server configured (offline client)".to_owned(),
                    ));
                }
                Err(ClientError::Timeout(format!(
                    "not synced with the server within {timeout:?} (status {:?})",
                    self.status()
                )))
            }
        }
    }

    /// Removes this client's presence, closes the connection (1000) and stops; everything
    /// is already in the replica.
    pub async fn close(mut self) -> Result<()> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.shared.set_status(Status::Offline);
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // The task sees the stop and ends by itself.
    }
}

/// Subscribes the observer that persists every change and queues local ones.
fn install_observer(shared: &Arc<Shared>) -> Result<()> {
    let weak = Arc::downgrade(shared);
    let remote = Origin::from(REMOTE);
    shared
        .doc
        .observe_update_v1(OBSERVER, move |txn, event| {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let from_server = txn.origin() == Some(&remote);
            if let Some(replica) = &shared.replica {
                let origin = if from_server { "remote" } else { "local" };
                if let Err(e) = replica.append(&shared.room, &event.update, origin) {
                    let message = e.to_string();
                    shared.emit(Event::Error(message.clone()));
                    if !from_server {
                        *lock(&shared.persist_error) = Some(message);
                    }
                }
            }
            if !from_server {
                let _ = shared.outbox.send(Outgoing::Update(event.update.clone()));
            }
        })
        .map_err(|e| ClientError::Update(format!("cannot observe the document: {e}")))
}

/// How one connection attempt ended.
enum Ended {
    /// Stop requested (close or drop).
    Stopped,
    /// Refused for good.
    Refused(String),
    /// Lost: retry after a backoff.
    Lost(String),
}

struct Connection {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    backoff: Backoff,
    stop: watch::Receiver<bool>,
    outbox: mpsc::UnboundedReceiver<Outgoing>,
}

impl Connection {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when a stop is requested (or the client is gone).
    async fn stop_requested(stop: &mut watch::Receiver<bool>) {
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            if stop.changed().await.is_err() {
                return;
            }
        }
    }

    /// Drops what was queued while offline: the next exchange carries it by state vector.
    fn drain_outbox(&mut self) {
        while self.outbox.try_recv().is_ok() {}
    }

    /// After a lost connection: waits the backoff (or until stopped). False when stopped.
    async fn wait_backoff(&mut self, attempt: u32) -> bool {
        let delay = self.backoff.delay(attempt);
        debug!(?delay, attempt, "reconnecting after");
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return !self.stopped(),
                _ = Self::stop_requested(&mut self.stop) => return false,
                // Local edits meanwhile are in the replica and the Doc; the exchange on
                // reconnect carries them.
                Some(_) = self.outbox.recv() => {}
            }
        }
    }

    fn refuse(&self, why: String) {
        *lock(&self.shared.refused) = Some(why.clone());
        self.shared.emit(Event::Refused(why));
        self.shared.set_status(Status::Offline);
        // Wake every `wait_synced` even when the status was already Offline.
        self.shared.status.send_modify(|_| {});
    }

    async fn run_ws(mut self) {
        let mut attempt = 0u32;
        loop {
            if self.stopped() {
                break;
            }
            self.shared.set_status(Status::Connecting);
            let ended = self.connect_and_serve(&mut attempt).await;
            self.shared.set_status(Status::Offline);
            match ended {
                Ended::Stopped => break,
                Ended::Refused(why) => {
                    self.refuse(why);
                    break;
                }
                Ended::Lost(why) => {
                    debug!(%why, "connection lost");
                    if !self.wait_backoff(attempt).await {
                        break;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn connect_and_serve(&mut self, attempt: &mut u32) -> Ended {
        let url = self
            .endpoint
            .ws_url(&self.shared.room, self.token.as_deref());
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        let connector = self
            .tls
            .as_ref()
            .map(|c| tokio_tungstenite::Connector::Rustls(Arc::clone(c)));
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector);
        let ws = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => r,
            _ = Self::stop_requested(&mut self.stop) => return Ended::Stopped,
        };
        let mut ws = match ws {
            Err(_) => return Ended::Lost("connect timed out".to_owned()),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                let why = format!("{} {}", status.as_u16(), body);
                // 401/403: the token; 400: the room name. Retrying cannot help. 429/503:
                // too many connections, shutting down: retry later.
                if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
                    return Ended::Refused(why);
                }
                return Ended::Lost(why);
            }
            Ok(Err(e)) => return Ended::Lost(e.to_string()),
            Ok(Ok((ws, _))) => ws,
        };
        self.shared.set_status(Status::Connected);
        self.drain_outbox();

        // Our state vector; the server answers with what we lack. Our presence, if any.
        let sv = self.shared.doc.transact().state_vector().encode_v1();
        let mut greeting = vec![codec::encode_sync_step1(&sv)];
        if lock(&self.shared.awareness).local_state_raw().is_some() {
            if let Some(update) = self.shared.local_awareness_update() {
                greeting.push(codec::encode_awareness(&update));
            }
        }
        for frame in greeting {
            if let Err(e) = ws.send(Message::Binary(frame)).await {
                return Ended::Lost(e.to_string());
            }
        }

        let mut renew = tokio::time::interval(AWARENESS_RENEW);
        renew.tick().await;
        loop {
            tokio::select! {
                _ = Self::stop_requested(&mut self.stop) => {
                    // Say goodbye: presence removed, then a normal close.
                    let goodbye = {
                        let mut awareness = lock(&self.shared.awareness);
                        if awareness.local_state_raw().is_some() {
                            awareness.clean_local_state();
                            let id = awareness.client_id();
                            awareness.update_with_clients([id]).ok().map(|u| u.encode_v1())
                        } else {
                            None
                        }
                    };
                    if let Some(update) = goodbye {
                        let _ = ws.send(Message::Binary(codec::encode_awareness(&update))).await;
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "client closed".into(),
                    })))
                    .await;
                    return Ended::Stopped;
                }
                Some(out) = self.outbox.recv() => {
                    let frame = match out {
                        Outgoing::Update(u) => codec::encode_sync_update(&u),
                        Outgoing::Awareness(u) => codec::encode_awareness(&u),
                    };
                    if let Err(e) = ws.send(Message::Binary(frame)).await {
                        return Ended::Lost(e.to_string());
                    }
                }
                _ = renew.tick() => {
                    let renewal = {
                        let mut awareness = lock(&self.shared.awareness);
                        match awareness.local_state_raw() {
                            Some(state) => {
                                // Setting the same state again bumps its clock: a renewal.
                                awareness.set_local_state_raw(state);
                                let id = awareness.client_id();
                                awareness.update_with_clients([id]).ok().map(|u| u.encode_v1())
                            }
                            None => None,
                        }
                    };
                    if let Some(update) = renewal {
                        if let Err(e) = ws.send(Message::Binary(codec::encode_awareness(&update))).await {
                            return Ended::Lost(e.to_string());
                        }
                    }
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => return Ended::Lost("connection ended".to_owned()),
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        Some(Ok(msg)) => msg,
                    };
                    match msg {
                        Message::Binary(frame) => {
                            match self.handle_frame(&frame).await {
                                Ok(replies) => {
                                    for reply in replies {
                                        if let Err(e) = ws.send(Message::Binary(reply)).await {
                                            return Ended::Lost(e.to_string());
                                        }
                                    }
                                    if self.shared.status.borrow().eq(&Status::Synced) {
                                        *attempt = 0;
                                    }
                                }
                                Err(e) => {
                                    // Garbage from the server: drop the connection and resync.
                                    let _ = ws.close(Some(CloseFrame {
                                        code: CloseCode::Invalid,
                                        reason: "invalid message".into(),
                                    })).await;
                                    return Ended::Lost(e.to_string());
                                }
                            }
                        }
                        Message::Close(frame) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            let why = format!("server closed the connection: {code} {reason}");
                            if FINAL_CLOSE_CODES.contains(&code) {
                                return Ended::Refused(why);
                            }
                            return Ended::Lost(why);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Handles one frame from the server; returns the frames to answer with.
    async fn handle_frame(&self, frame: &Bytes) -> Result<Vec<Bytes>> {
        // Auth messages (permission denied) are told apart before the shared decoder,
        // which does not keep their reason.
        if frame.first() == Some(&2) {
            let reason = match yrs::sync::Message::decode_v1(frame) {
                Ok(yrs::sync::Message::Auth(Some(reason))) => reason,
                _ => "permission denied".to_owned(),
            };
            self.shared.emit(Event::Refused(reason));
            return Ok(Vec::new());
        }
        let msg = codec::decode_client_message(frame, &LIMITS)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match msg {
            codec::ClientMessage::SyncStep1(sv) => {
                let sv = StateVector::decode_v1(sv.as_bytes())
                    .map_err(|e| ClientError::Protocol(format!("invalid state vector: {e}")))?;
                let diff = self.shared.doc.transact().encode_state_as_update_v1(&sv);
                Ok(vec![codec::encode_sync_step2(&diff)])
            }
            codec::ClientMessage::SyncStep2(update) => {
                self.apply(update.as_bytes().to_vec()).await?;
                self.shared.set_status(Status::Synced);
                self.shared.emit(Event::Synced);
                Ok(Vec::new())
            }
            codec::ClientMessage::Update(update) => {
                self.apply(update.as_bytes().to_vec()).await?;
                Ok(Vec::new())
            }
            codec::ClientMessage::Awareness(update) => {
                let decoded = AwarenessUpdate::decode_v1(update.as_bytes())
                    .map_err(|e| ClientError::Protocol(format!("invalid awareness: {e}")))?;
                let summary = lock(&self.shared.awareness)
                    .apply_update_summary(decoded)
                    .map_err(|e| ClientError::Protocol(format!("invalid awareness: {e}")))?;
                if let Some(s) = summary {
                    let ids = |v: &[yrs::block::ClientID]| v.iter().map(|c| c.get()).collect();
                    self.shared.emit(Event::Awareness {
                        added: ids(&s.added),
                        updated: ids(&s.updated),
                        removed: ids(&s.removed),
                    });
                }
                Ok(Vec::new())
            }
            codec::ClientMessage::QueryAwareness => {
                let update = lock(&self.shared.awareness)
                    .update()
                    .ok()
                    .map(|u| u.encode_v1());
                Ok(update
                    .map(|u| codec::encode_awareness(&u))
                    .into_iter()
                    .collect())
            }
            codec::ClientMessage::Auth | codec::ClientMessage::Unknown(_) => Ok(Vec::new()),
        }
    }

    /// Applies a server update off the async threads (the observer fsyncs the replica).
    async fn apply(&self, update: Vec<u8>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.apply_remote(&update))
            .await
            .map_err(|e| ClientError::Update(format!("apply task failed: {e}")))?
    }

    async fn run_http(mut self, rest: RestClient, poll: Duration) {
        let mut attempt = 0u32;
        loop {
            if self.stopped() {
                break;
            }
            if self.shared.status.borrow().eq(&Status::Offline) {
                self.shared.set_status(Status::Connecting);
            }
            match self.exchange_http(&rest).await {
                Ok(()) => {
                    attempt = 0;
                    if !self.shared.status.borrow().eq(&Status::Synced) {
                        self.shared.set_status(Status::Synced);
                        self.shared.emit(Event::Synced);
                    }
                    // Wait for the next poll or a local edit (then exchange at once).
                    let sleep = tokio::time::sleep(poll);
                    tokio::pin!(sleep);
                    tokio::select! {
                        _ = &mut sleep => {}
                        _ = Self::stop_requested(&mut self.stop) => break,
                        Some(_) = self.outbox.recv() => { self.drain_outbox(); }
                    }
                }
                Err(ClientError::Refused(why)) => {
                    self.refuse(why);
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "HTTP exchange failed");
                    self.shared.set_status(Status::Offline);
                    if !self.wait_backoff(attempt).await {
                        break;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        self.shared.set_status(Status::Offline);
    }

    /// One exchange over REST: send what the server lacks, fetch what we lack.
    async fn exchange_http(&mut self, rest: &RestClient) -> Result<()> {
        let room = self.shared.room.clone();
        let server_sv = rest.state_vector(&room).await?;
        let server_sv = StateVector::decode_v1(&server_sv)
            .map_err(|e| ClientError::Protocol(format!("invalid state vector: {e}")))?;
        let ours = self
            .shared
            .doc
            .transact()
            .encode_state_as_update_v1(&server_sv);
        self.drain_outbox();
        if ours != [0, 0] {
            rest.post_update(&room, &ours).await?;
        }
        let sv = self.shared.doc.transact().state_vector().encode_v1();
        let theirs = rest.state(&room, Some(&sv)).await?;
        if theirs != [0, 0] {
            self.apply(theirs).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(2));
            assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
        }
        // Jittered: 50 draws at a 2 s cap are not all equal.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| b.delay(10)).collect();
        assert!(draws.len() > 1);
    }

    #[tokio::test]
    async fn an_offline_client_edits_into_its_replica_and_reopens_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::open(ClientConfig::new("notes").replica(dir.path()))
            .await
            .unwrap();
        client.append_text("content", "hello ").unwrap();
        client.append_text("content", "world").unwrap();
        assert_eq!(client.status(), Status::Offline);
        let err = client
            .wait_synced(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        client.close().await.unwrap();

        let reopened = Client::open(ClientConfig::new("notes").replica(dir.path()))
            .await
            .unwrap();
        assert_eq!(reopened.text("content"), "hello world");
        reopened.replace_text("content", "replaced").unwrap();
        assert_eq!(reopened.text("content"), "replaced");
        assert_eq!(
            reopened.to_json(),
            serde_json::json!({ "content": "replaced" })
        );
    }

    #[tokio::test]
    async fn a_bad_server_url_is_refused_at_open() {
        let err = Client::open(ClientConfig::new("r").server("localhost:1234"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::BadUrl { .. }), "{err}");
    }
}
