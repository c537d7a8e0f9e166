//! One bench client: a yrs document kept in sync over one WebSocket.
//!
//! Every client holds a real `Doc`, applies what it receives, and learns which edits arrived
//! from its own state vector before and after each apply: every `(client, clock)` that became
//! known is an edit delivered. Send times are kept per room by `(client, clock)`, so latency is
//! measured even when a server merges or re-encodes updates.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Text, TextRef, Transact, Update};

use crate::proto::{self, ServerFrame, Ws};
use crate::stats::micros;

/// Send times of the edits made in one room: client id → `(clock, sent at)`, clocks ascending.
#[derive(Default)]
pub struct SendLog {
    sends: Mutex<HashMap<u64, Vec<(u32, Instant)>>>,
}

impl SendLog {
    fn record(&self, client: u64, clock: u32, at: Instant) {
        let mut sends = self
            .sends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sends.entry(client).or_default().push((clock, at));
    }

    /// Calls `found` with the send time of every edit with a clock in `lo..hi` by `client`.
    fn between(&self, client: u64, lo: u32, hi: u32, mut found: impl FnMut(Instant)) {
        let sends = self
            .sends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = sends.get(&client) {
            let a = list.partition_point(|(c, _)| *c < lo);
            let b = list.partition_point(|(c, _)| *c < hi);
            for (_, at) in &list[a..b] {
                found(*at);
            }
        }
    }
}

/// A state vector as sorted `(client, clock)` pairs.
pub type Clocks = Vec<(u64, u32)>;

/// A connected client: its socket halves and its document.
pub struct Client {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    doc: Doc,
    text: TextRef,
    me: u64,
    seed: u64,
    aw_clock: u32,
    /// Latencies of edits by others that this client integrated, in µs.
    pub latencies: Vec<u32>,
    /// Awareness messages received.
    pub awareness_received: u64,
    /// Bytes of binary frames received.
    pub bytes_received: u64,
}

/// How a client's socket ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The server sent a close frame (code and reason) or dropped the connection.
    Closed(String),
    /// Reading or decoding failed.
    Failed(String),
}

impl Client {
    /// Connects; with `sync`, also runs the y-websocket handshake (our SyncStep1, the
    /// server's SyncStep2 back; the server's SyncStep1 answered) before returning.
    pub async fn connect(url: &str, sync: bool, seed: u64) -> anyhow::Result<Self> {
        let ws = proto::connect(url).await?;
        let (tx, rx) = ws.split();
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let me = doc.client_id().get();
        let mut client = Client {
            tx,
            rx,
            doc,
            text,
            me,
            seed: seed | 1,
            aw_clock: 0,
            latencies: Vec::new(),
            awareness_received: 0,
            bytes_received: 0,
        };
        if sync {
            let sv = client.doc.transact().state_vector().encode_v1();
            client
                .send(yrelay_doc::codec::encode_sync_step1(&sv))
                .await?;
            loop {
                let frame = client.next_binary().await.map_err(|e| match e {
                    Ended::Closed(r) | Ended::Failed(r) => anyhow::anyhow!("during sync: {r}"),
                })?;
                if client.on_frame(&frame, None).await? {
                    break;
                }
            }
        }
        Ok(client)
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: Bytes) -> anyhow::Result<()> {
        self.tx.send(Message::Binary(frame)).await.context("send")
    }

    /// The next binary frame; pings are answered by tungstenite while reading.
    pub async fn next_binary(&mut self) -> Result<Bytes, Ended> {
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    self.bytes_received += b.len() as u64;
                    return Ok(b);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(match frame {
                        Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                        None => "close without code".into(),
                    }))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Ended::Failed(e.to_string())),
                None => return Err(Ended::Closed("connection dropped".into())),
            }
        }
    }

    /// Handles one server frame: applies updates (recording delivered edits against `log`),
    /// answers the server's SyncStep1. Returns true for a SyncStep2.
    pub async fn on_frame(&mut self, frame: &[u8], log: Option<&SendLog>) -> anyhow::Result<bool> {
        match proto::decode(frame)? {
            ServerFrame::SyncStep1(sv) => {
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(yrelay_doc::codec::encode_sync_step2(&diff))
                    .await?;
                Ok(false)
            }
            ServerFrame::SyncStep2(update) => {
                self.integrate(&update, log)?;
                Ok(true)
            }
            ServerFrame::Update(update) => {
                self.integrate(&update, log)?;
                Ok(false)
            }
            ServerFrame::Awareness => {
                self.awareness_received += 1;
                Ok(false)
            }
            ServerFrame::Other => Ok(false),
        }
    }

    /// Applies an update; every edit that became known is looked up in `log`.
    fn integrate(&mut self, update: &[u8], log: Option<&SendLog>) -> anyhow::Result<()> {
        let update = Update::decode_v1(update).context("decode update")?;
        let (before, after) = {
            let mut txn = self.doc.transact_mut();
            let before = txn.state_vector();
            txn.apply_update(update).context("apply update")?;
            (before, txn.state_vector())
        };
        let now = Instant::now();
        if let Some(log) = log {
            for (client, &hi) in after.iter() {
                let lo = before.get(client);
                if hi > lo {
                    log.between(client.get(), lo, hi, |sent| {
                        self.latencies
                            .push(micros(now.saturating_duration_since(sent)));
                    });
                }
            }
        }
        Ok(())
    }

    /// Types one character at a random place, records its send time in `log`, sends it.
    pub async fn edit(&mut self, log: &SendLog) -> anyhow::Result<()> {
        let r = self.random();
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            let at = (r % (u64::from(len) + 1)) as u32;
            let c = char::from(b'a' + (r % 26) as u8);
            self.text.insert(&mut txn, at, c.encode_utf8(&mut [0; 4]));
            txn.encode_update_v1()
        };
        let clock = self
            .doc
            .transact()
            .state_vector()
            .get(&yrs::block::ClientID::new(self.me))
            - 1;
        log.record(self.me, clock, Instant::now());
        self.send(yrelay_doc::codec::encode_sync_update(&update))
            .await
    }

    /// Inserts `bytes` characters at the end in one update and sends it (seeding a document).
    pub async fn append_bulk(&mut self, bytes: usize) -> anyhow::Result<()> {
        let chunk: String = (0..bytes)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            self.text.insert(&mut txn, len, &chunk);
            txn.encode_update_v1()
        };
        self.send(yrelay_doc::codec::encode_sync_update(&update))
            .await
    }

    /// Sends a presence update: a user name and a cursor that moves.
    pub async fn awareness(&mut self) -> anyhow::Result<()> {
        self.aw_clock += 1;
        let anchor = self.random() % 1000;
        let state = format!(
            r##"{{"user":{{"name":"bench-{}","color":"#30bced"}},"cursor":{{"anchor":{anchor},"head":{anchor}}}}}"##,
            self.me % 10_000
        );
        let frame = proto::awareness_frame(self.me, self.aw_clock, &state);
        self.send(frame).await
    }

    /// The text of the shared `t` root.
    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// The document's state vector as `(client, clock)` pairs, sorted (the encoded form
    /// follows a hash map's order, so equal vectors may encode differently).
    pub fn clocks(&self) -> Clocks {
        let sv = self.doc.transact().state_vector();
        let mut clocks: Clocks = sv.iter().map(|(c, &clock)| (c.get(), clock)).collect();
        clocks.sort_unstable();
        clocks
    }

    /// Closes politely, bounded by `limit`.
    pub async fn close(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            let _ = self.tx.send(Message::Close(None)).await;
            let _ = self.tx.close().await;
        })
        .await;
    }

    /// xorshift64: cheap, deterministic per client.
    fn random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }
}
