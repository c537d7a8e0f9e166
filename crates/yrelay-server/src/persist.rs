//! A room's write pipeline: the update log, durability modes, compaction.
//!
//! Every update a room's document accepts is recorded as an [`AppendEntry`] (the update the
//! document emitted, with author, origin and time for the audit trail). One write at a time is
//! in flight per room, on the blocking pool: `append` then `flush` (fsync).
//!
//! - **fsync** (group commit): frames the room wants to send while anything is not yet durable
//!   are *held*, in order, and released only when the write covering them has been flushed.
//!   Whatever arrives while a write is in flight goes into the next one, so under load one
//!   fsync covers many updates and latency stays near one flush.
//! - **batched**: frames go out at once; the batch is written and flushed at most
//!   `flush_interval_ms` after its first update.
//!
//! A failed write keeps its entries (and held frames) and is retried after a second; nothing
//! is dropped. While the store fails, the entries waiting are bounded by
//! `persistence.max_pending_bytes` per room: the room refuses new edits beyond it
//! ([`Persister::pending_bytes`]), and `yrelay_persist_pending_bytes` shows the total.
//!
//! After a write, a log that passed the compaction thresholds is compacted: the room encodes
//! its document (which holds everything written so far) and the store swaps snapshot and
//! tail atomically, on the blocking pool, while the room keeps serving. In cluster mode other
//! nodes append to the same log, and no node's memory is known to hold all of it, so the
//! compaction merges the node's document with the snapshot and tail as the store holds them,
//! inside the store's per-room compaction lock ([`Store::compact_with`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, warn};
use yrelay_store::{AppendEntry, LoadedRoom, Seq, Store, StoreError};

use crate::cluster::Kind;
use crate::config::{Durability, Persistence};
use crate::room::ConnId;

/// A frame a room wants to send.
#[derive(Debug)]
pub enum Outbound {
    /// To every subscriber; with when the message that caused it arrived, if it came from a
    /// connection.
    All(Bytes, Option<Instant>),
    /// To one connection.
    To(ConnId, Bytes),
    /// Not a frame: an action run once everything before it is durable (fsync mode) or at
    /// once (batched mode), e.g. answering a REST request.
    Run(Deferred),
    /// A message for the other nodes (cluster mode), published once what it carries is
    /// durable (fsync mode), like a frame.
    Publish(Kind),
}

/// An action held like a frame (see [`Outbound::Run`]).
pub struct Deferred(Box<dyn FnOnce() + Send>);

impl Deferred {
    /// Wraps `action`.
    pub fn new(action: impl FnOnce() + Send + 'static) -> Self {
        Self(Box::new(action))
    }

    /// Runs the action.
    pub fn run(self) {
        (self.0)();
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

/// What a finished write gives back: the seqs on success, or the entries to retry.
type WriteResult = Result<Vec<Seq>, (StoreError, Vec<AppendEntry>)>;

/// Delay before retrying a failed write.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One room's pending writes and held frames.
pub struct Persister {
    store: Arc<dyn Store>,
    room: Arc<str>,
    settings: Persistence,
    /// Entries not yet handed to a write.
    batch: Vec<AppendEntry>,
    /// fsync: frames waiting for `batch` to become durable.
    held: Vec<Outbound>,
    /// The write in flight and the frames it releases.
    write: Option<(JoinHandle<WriteResult>, Vec<Outbound>, Instant)>,
    /// When the next write may start (batched: flush deadline; after a failure: retry time).
    next_write_at: Option<Instant>,
    /// The compaction in flight; it answers with the seq it folded up to, if it compacted.
    compaction: Option<JoinHandle<Result<Option<Seq>, StoreError>>>,
    /// (seq, bytes) of each log entry since the snapshot.
    tail: VecDeque<(Seq, usize)>,
    tail_bytes: usize,
    /// Highest seq written.
    last_seq: Seq,
    /// Sizes of the entries in the write in flight.
    written_sizes: Vec<usize>,
    /// Bytes of updates recorded and not yet written (waiting or in flight).
    pending_bytes: usize,
    /// Cluster mode: other nodes append to the same log (compact from the store's view).
    shared: bool,
}

impl Persister {
    /// A pipeline for `room`, whose log already holds entries up to `last_seq` of which
    /// `tail` are not folded into the snapshot.
    pub fn new(
        store: Arc<dyn Store>,
        room: Arc<str>,
        settings: Persistence,
        last_seq: Seq,
        tail: VecDeque<(Seq, usize)>,
        shared: bool,
    ) -> Self {
        let tail_bytes = tail.iter().map(|(_, b)| b).sum();
        Self {
            store,
            room,
            settings,
            batch: Vec::new(),
            held: Vec::new(),
            write: None,
            next_write_at: None,
            compaction: None,
            tail,
            tail_bytes,
            last_seq,
            written_sizes: Vec::new(),
            pending_bytes: 0,
            shared,
        }
    }

    /// Bytes of accepted updates not yet written to the store (waiting or in flight).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn pending_sub(&mut self, bytes: usize) {
        let bytes = bytes.min(self.pending_bytes);
        self.pending_bytes -= bytes;
        metrics::gauge!("yrelay_persist_pending_bytes").decrement(bytes as f64);
    }

    /// Highest seq written so far.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// Records an accepted update for the log.
    pub fn record(&mut self, entry: AppendEntry) {
        if self.batch.is_empty() && self.settings.durability == Durability::Batched {
            let deadline = Instant::now() + Duration::from_millis(self.settings.flush_interval_ms);
            self.next_write_at = Some(self.next_write_at.map_or(deadline, |d| d.min(deadline)));
        }
        self.pending_bytes += entry.update.len();
        metrics::gauge!("yrelay_persist_pending_bytes").increment(entry.update.len() as f64);
        self.batch.push(entry);
    }

    /// Passes `frame` through, or holds it until what precedes it is durable (fsync mode).
    pub fn gate(&mut self, frame: Outbound) -> Option<Outbound> {
        let must_hold = self.settings.durability == Durability::Fsync
            && (!self.batch.is_empty() || self.write.is_some() || !self.held.is_empty());
        if must_hold {
            self.held.push(frame);
            None
        } else {
            Some(frame)
        }
    }

    /// Whether nothing is waiting to be written or in flight.
    pub fn is_idle(&self) -> bool {
        self.batch.is_empty() && self.write.is_none() && self.held.is_empty()
    }

    /// Starts a write if one is due and none is in flight.
    pub fn kick(&mut self) {
        if self.write.is_some() || self.batch.is_empty() {
            return;
        }
        // fsync: at once (group commit) unless backing off after a failure; batched: at the
        // flush deadline.
        if self.next_write_at.is_none_or(|t| Instant::now() >= t) {
            self.start_write();
        }
    }

    fn start_write(&mut self) {
        let entries = std::mem::take(&mut self.batch);
        let frames = std::mem::take(&mut self.held);
        self.written_sizes = entries.iter().map(|e| e.update.len()).collect();
        metrics::histogram!("yrelay_persist_batch_updates").record(entries.len() as f64);
        let store = Arc::clone(&self.store);
        let room = Arc::clone(&self.room);
        self.next_write_at = None;
        let job = tokio::task::spawn_blocking(move || {
            let seqs = match store.append(&room, &entries) {
                Ok(seqs) => seqs,
                Err(e) => return Err((e, entries)),
            };
            match store.flush() {
                Ok(()) => Ok(seqs),
                // Appended but not known durable: the retry appends again, which is safe
                // (applying a Yjs update twice changes nothing).
                Err(e) => Err((e, entries)),
            }
        });
        self.write = Some((job, frames, Instant::now()));
    }

    /// When the room should call [`Persister::kick`] again (a batched flush or a retry).
    fn wake_at(&self) -> Option<Instant> {
        if self.write.is_none() && !self.batch.is_empty() {
            self.next_write_at
        } else {
            None
        }
    }

    /// Waits for the next thing the pipeline has to react to: a write or compaction finishing,
    /// or a deferred write falling due. Pending forever when there is nothing. Cancel-safe
    /// (the jobs run on their own; only the waiting is dropped).
    pub async fn next_event(&mut self) -> Step {
        let wake = self.wake_at();
        let raw = {
            let write = &mut self.write;
            let compaction = &mut self.compaction;
            tokio::select! {
                r = async {
                    match write.as_mut() {
                        Some((job, _, _)) => job.await,
                        None => std::future::pending().await,
                    }
                } => Raw::Write(r),
                r = async {
                    match compaction.as_mut() {
                        Some(job) => job.await,
                        None => std::future::pending().await,
                    }
                } => Raw::Compact(r),
                () = sleep_until_opt(wake) => Raw::Wake,
            }
        };
        match raw {
            Raw::Write(result) => self.finish_write(result),
            Raw::Compact(result) => {
                self.finish_compaction(result);
                Step::default()
            }
            Raw::Wake => {
                self.kick();
                Step::default()
            }
        }
    }

    fn finish_write(&mut self, result: Result<WriteResult, tokio::task::JoinError>) -> Step {
        let Some((_, frames, started)) = self.write.take() else {
            return Step::default();
        };
        let result = result.unwrap_or_else(|join| {
            Err((
                StoreError::Corrupt(format!("write task failed: {join}")),
                Vec::new(),
            ))
        });
        match result {
            Ok(seqs) => {
                metrics::histogram!("yrelay_persist_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("yrelay_persisted_updates_total").increment(seqs.len() as u64);
                for (seq, bytes) in seqs.iter().zip(&self.written_sizes) {
                    self.tail.push_back((*seq, *bytes));
                    self.tail_bytes += bytes;
                }
                let written: usize = self.written_sizes.drain(..).sum();
                self.pending_sub(written);
                if let Some(&last) = seqs.last() {
                    self.last_seq = self.last_seq.max(last);
                }
                // Whatever accumulated meanwhile goes next (group commit).
                self.kick();
                let mut deliver = frames;
                if self.write.is_none() && self.batch.is_empty() {
                    // Held only behind the write that just finished.
                    deliver.append(&mut self.held);
                }
                Step {
                    deliver,
                    compact: self.wants_compaction(),
                }
            }
            Err((e, entries)) => {
                error!(room = %self.room, error = %e, "write failed; retrying");
                metrics::counter!("yrelay_persist_errors_total").increment(1);
                self.written_sizes.clear();
                // Put everything back in front, in order, and retry later.
                let mut batch = entries;
                batch.append(&mut self.batch);
                self.batch = batch;
                let mut held = frames;
                held.append(&mut self.held);
                self.held = held;
                self.next_write_at = Some(Instant::now() + RETRY_AFTER);
                Step::default()
            }
        }
    }

    fn wants_compaction(&self) -> bool {
        // (`tail` counts only this node's entries in cluster mode: each node compacts once
        // its own share passes the thresholds.)
        self.compaction.is_none()
            && (self.tail.len() as u64 >= self.settings.compact_after_updates
                || self.tail_bytes as u64 >= self.settings.compact_after_bytes)
    }

    /// Starts compacting the log up to the last written seq into `state`, the room's whole
    /// document (which contains at least everything written).
    pub fn start_compaction(&mut self, state: Vec<u8>) {
        if self.compaction.is_some() {
            return;
        }
        let upto = self.last_seq;
        let store = Arc::clone(&self.store);
        let room = Arc::clone(&self.room);
        let shared = self.shared;
        let job = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut bytes = state.len();
            let upto = if shared {
                let folded = store.compact_with(&room, &mut |loaded| {
                    let merged = merge_states(loaded, &state)?;
                    bytes = merged.len();
                    Ok(merged)
                })?;
                match folded {
                    Some(upto) => upto,
                    // Nothing to fold, or another node is compacting this room right now.
                    None => return Ok(None),
                }
            } else {
                store.compact(&room, &state, upto)?;
                upto
            };
            store.flush()?;
            metrics::histogram!("yrelay_compaction_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("yrelay_compaction_output_bytes").record(bytes as f64);
            metrics::counter!("yrelay_compactions_total").increment(1);
            Ok(Some(upto))
        });
        self.compaction = Some(job);
    }

    fn finish_compaction(
        &mut self,
        result: Result<Result<Option<Seq>, StoreError>, tokio::task::JoinError>,
    ) {
        if self.compaction.take().is_none() {
            return;
        }
        match result {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(upto))) => {
                while self.tail.front().is_some_and(|(seq, _)| *seq <= upto) {
                    if let Some((_, bytes)) = self.tail.pop_front() {
                        self.tail_bytes -= bytes;
                    }
                }
            }
            Ok(Err(e)) => {
                // The old snapshot and tail are intact (compaction is atomic); try again later.
                warn!(room = %self.room, error = %e, "compaction failed");
                metrics::counter!("yrelay_persist_errors_total").increment(1);
            }
            Err(e) => warn!(room = %self.room, error = %e, "compaction task failed"),
        }
    }

    /// Writes and flushes everything outstanding and waits for compaction, for eviction and
    /// shutdown. Returns frames that became deliverable. Gives up (logging) after a few failed
    /// attempts, so a broken disk cannot hang shutdown.
    pub async fn drain(&mut self) -> Vec<Outbound> {
        let mut deliver = Vec::new();
        let mut failures = 0;
        while !self.is_idle() || self.compaction.is_some() {
            if self.write.is_none() && !self.batch.is_empty() {
                self.next_write_at = None;
                self.start_write();
            }
            if self.write.is_none() && self.batch.is_empty() && !self.held.is_empty() {
                // Frames held behind nothing (their write already finished).
                deliver.append(&mut self.held);
                continue;
            }
            let step = self.next_event().await;
            deliver.extend(step.deliver);
            if self.next_write_at.is_some() && !self.batch.is_empty() {
                failures += 1;
                if failures >= 3 {
                    error!(room = %self.room, lost = self.batch.len(), "giving up writing after repeated failures");
                    let lost: usize = self.batch.drain(..).map(|e| e.update.len()).sum();
                    self.pending_sub(lost);
                    deliver.append(&mut self.held);
                    break;
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
        deliver
    }
}

/// What the room must do after a pipeline event.
#[derive(Debug, Default)]
pub struct Step {
    /// Frames whose updates are now durable.
    pub deliver: Vec<Outbound>,
    /// The log passed a compaction threshold: call [`Persister::start_compaction`].
    pub compact: bool,
}

enum Raw {
    Write(Result<WriteResult, tokio::task::JoinError>),
    Compact(Result<Result<Option<Seq>, StoreError>, tokio::task::JoinError>),
    Wake,
}

/// The room's whole state as the store holds it (snapshot and tail) merged with `ours` (this
/// node's document), for a compaction in cluster mode. Refuses (postponing the compaction)
/// when the log holds an update whose dependencies are not in it yet — another node's older
/// update still being written — because a snapshot cannot hold such an update.
fn merge_states(loaded: &LoadedRoom, ours: &[u8]) -> Result<Vec<u8>, String> {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, StateVector, Transact, Update};
    let doc = yrs::Doc::new();
    {
        let mut txn = doc.transact_mut();
        let stored = loaded
            .snapshot
            .iter()
            .chain(loaded.tail.iter().map(|(_, u)| u))
            .map(Vec::as_slice);
        // Every stored update passed validation when it was accepted.
        for bytes in stored.chain(std::iter::once(ours)) {
            let update = Update::decode_v1(bytes).map_err(|e| e.to_string())?;
            txn.apply_update(update).map_err(|e| e.to_string())?;
        }
        if txn.store().pending_update().is_some() || txn.store().pending_ds().is_some() {
            return Err("the log holds updates whose dependencies are not written yet; compaction postponed".to_owned());
        }
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    Ok(state)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use yrelay_store::{
        AuditRecord, LoadedRoom, MemoryStore, Result as StoreResult, RoomInfo, VersionInfo,
        VersionKind,
    };

    use super::*;

    /// A store whose first `fail` appends fail.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        fail: AtomicUsize,
    }

    impl Store for Flaky {
        fn append(&self, room: &str, entries: &[AppendEntry]) -> StoreResult<Vec<Seq>> {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Corrupt("disk on fire".into()));
            }
            self.inner.append(room, entries)
        }
        fn flush(&self) -> StoreResult<()> {
            self.inner.flush()
        }
        fn load(&self, room: &str) -> StoreResult<LoadedRoom> {
            self.inner.load(room)
        }
        fn compact(&self, room: &str, state: &[u8], upto: Seq) -> StoreResult<()> {
            self.inner.compact(room, state, upto)
        }
        fn list_rooms(&self) -> StoreResult<Vec<RoomInfo>> {
            self.inner.list_rooms()
        }
        fn check(&self) -> StoreResult<()> {
            self.inner.check()
        }
        fn delete_room(&self, room: &str) -> StoreResult<()> {
            self.inner.delete_room(room)
        }
        fn save_version(
            &self,
            room: &str,
            kind: VersionKind,
            label: Option<&str>,
            state: &[u8],
            seq: Seq,
            created_ms: u64,
        ) -> StoreResult<VersionInfo> {
            self.inner
                .save_version(room, kind, label, state, seq, created_ms)
        }
        fn list_versions(&self, room: &str) -> StoreResult<Vec<VersionInfo>> {
            self.inner.list_versions(room)
        }
        fn get_version(&self, room: &str, id: u64) -> StoreResult<Option<(VersionInfo, Vec<u8>)>> {
            self.inner.get_version(room, id)
        }
        fn audit(
            &self,
            room: &str,
            after: Option<Seq>,
            limit: usize,
        ) -> StoreResult<Vec<AuditRecord>> {
            self.inner.audit(room, after, limit)
        }
    }

    fn entry(n: u8) -> AppendEntry {
        AppendEntry {
            update: vec![n; 4],
            author: "a".into(),
            origin: "o".into(),
            time_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_write_keeps_entries_and_frames_and_retries() {
        let store = Arc::new(Flaky {
            fail: AtomicUsize::new(1),
            ..Flaky::default()
        });
        let mut p = Persister::new(
            store.clone(),
            Arc::from("r"),
            Persistence::default(),
            0,
            VecDeque::new(),
            false,
        );
        p.record(entry(1));
        // fsync: the frame for the update waits for durability.
        assert!(p
            .gate(Outbound::All(Bytes::from_static(b"u1"), None))
            .is_none());
        p.kick();
        let step = p.next_event().await; // the write fails
        assert!(step.deliver.is_empty());
        p.record(entry(2));
        assert!(p
            .gate(Outbound::All(Bytes::from_static(b"u2"), None))
            .is_none());
        // After the back-off both entries are written together and both frames released, in
        // order.
        let started = Instant::now();
        let mut delivered = Vec::new();
        while delivered.len() < 2 {
            let step = p.next_event().await;
            delivered.extend(step.deliver.into_iter().map(|o| match o {
                Outbound::All(b, _) | Outbound::To(_, b) => b,
                Outbound::Run(_) | Outbound::Publish(_) => panic!("no actions were gated"),
            }));
        }
        assert!(started.elapsed() >= RETRY_AFTER - Duration::from_millis(50));
        assert_eq!(
            delivered,
            vec![Bytes::from_static(b"u1"), Bytes::from_static(b"u2")]
        );
        assert!(p.is_idle());
        let loaded = store.load("r").unwrap();
        assert_eq!(loaded.tail.len(), 2);
        assert_eq!(p.last_seq(), 2);
    }

    #[tokio::test]
    async fn batched_mode_sends_at_once_and_writes_within_the_interval() {
        let store = Arc::new(MemoryStore::default());
        let settings = Persistence {
            durability: Durability::Batched,
            flush_interval_ms: 50,
            ..Persistence::default()
        };
        let mut p = Persister::new(
            store.clone(),
            Arc::from("r"),
            settings,
            0,
            VecDeque::new(),
            false,
        );
        p.record(entry(1));
        assert!(p
            .gate(Outbound::All(Bytes::from_static(b"u1"), None))
            .is_some());
        p.kick();
        assert!(
            store.load("r").unwrap().tail.is_empty(),
            "written before the interval"
        );
        let started = Instant::now();
        while store.load("r").unwrap().tail.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(2), p.next_event())
                .await
                .unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(40));
    }
}
