//! The CRDT state of one room: a `yrs` [`Doc`] and its [`Awareness`].
//!
//! [`RoomDoc`] only merges. Every update it accepts has been validated (the payload types in
//! [`crate::codec`] cannot be built otherwise), and what it hands back for broadcast is exactly
//! what the document emitted: a brand-new update byte-identical, an overlapping one only its new
//! part, a duplicate nothing, and an update with a missing dependency nothing until the gap is
//! filled — the behaviour of the reference server.
//!
//! Two `yrs` 0.28 hazards are handled here rather than in byte validation, because they depend
//! on what the document already holds:
//! - An update with a client run that starts past the document's clock for that client, or
//!   that contains a Skip (a hole in the sender's knowledge), would be integrated by `yrs` at
//!   once behind a placeholder, and a later update claiming those clocks with other lengths
//!   corrupts the block store (a panic in debug builds). [`RoomDoc`] holds such updates back
//!   itself, up to [`MAX_PENDING_BYTES`], and applies them once the gap is filled — what Yjs
//!   does with pending structs.
//! - Text offsets are UTF-16 code units, as in JavaScript. With byte offsets, deleting the two
//!   halves of an emoji separately (something JS clients do) underflows inside `yrs`.

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, IdSet, OffsetKind, Options, ReadTxn, StateVector, Transact, Update};

use crate::codec::{AwarenessUpdateV1, StateVectorV1, UpdateV1};
use crate::validate::{validate_update_runs_v1, ValidateLimits};

/// Why the document refused an update or awareness message.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// `yrs` could not decode bytes that passed validation (a validator gap; reported, not
    /// applied).
    #[error("update could not be decoded: {0}")]
    Decode(String),
    /// `yrs` refused to integrate the update (for example a parent that is not a type).
    #[error("update could not be applied: {0}")]
    Apply(String),
    /// `yrs` panicked while applying; the document was rebuilt from its last good state.
    #[error("update crashed the CRDT engine and was discarded")]
    Panicked,
    /// Too many bytes of updates are waiting for missing predecessors.
    #[error("too many updates waiting for missing predecessors")]
    PendingOverflow,
}

/// Bytes of updates a room holds back while their predecessors are missing. A sender that
/// pushes past this has its update refused (and its connection closed); it resyncs by state
/// vector when it reconnects.
pub const MAX_PENDING_BYTES: usize = 32 << 20;

/// Number of updates a room holds back (bounds the readiness scan after every update).
pub const MAX_PENDING_UPDATES: usize = 4096;

/// What applying an update did.
#[derive(Debug, Default)]
#[must_use]
pub struct Applied {
    /// What the document emitted, one v1 update per transaction, in order: broadcast each.
    pub emitted: Vec<Vec<u8>>,
    /// Updates that were refused, with the origin that sent each: the sender of the update
    /// just applied, or of a held-back update that failed once it became ready.
    pub refused: Vec<(u64, DocError)>,
}

/// A held-back update and the connection it came from.
#[derive(Debug)]
struct Pending {
    origin: u64,
    update: UpdateV1,
}

/// The change an awareness message caused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwarenessChange {
    /// Client IDs that appeared.
    pub added: Vec<u64>,
    /// Client IDs whose state was renewed or changed.
    pub updated: Vec<u64>,
    /// Client IDs that were removed.
    pub removed: Vec<u64>,
    /// The awareness update to broadcast (the server's view of every changed client), if any
    /// client changed.
    pub broadcast: Option<Vec<u8>>,
}

/// A room's document and presence state.
pub struct RoomDoc {
    awareness: Awareness,
    /// Filled by the document's update observer during a transaction and drained right after
    /// it. A `std::sync::Mutex` because yrs requires `Send + Sync` observers; it is only ever
    /// locked for a push or a take, never across anything that blocks.
    emitted: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Updates held back until the document's clocks reach their runs.
    pending: Vec<Pending>,
    /// Total bytes in `pending`.
    pending_bytes: usize,
    /// The document's clock per client (its state vector), kept up to date from what the
    /// document emits, so checking whether an update is ready costs O(its runs) rather than a
    /// full state vector per message.
    clocks: HashMap<u64, u32>,
    /// How many parts of `emitted` have already been folded into `clocks`.
    clocked_parts: usize,
}

impl Default for RoomDoc {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RoomDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomDoc").finish_non_exhaustive()
    }
}

const OBSERVER_KEY: &str = "yrelay-room";

/// Nesting allowed when walking what the document itself emitted: whatever it integrated was
/// validated with at most the configured depth, so this only bounds the walk.
const EMITTED_LIMITS: ValidateLimits = ValidateLimits { max_depth: 1024 };

/// Whether every client run of `update` starts at or before the document's clock for that
/// client and any hole in it is already covered.
fn ready(clocks: &HashMap<u64, u32>, update: &UpdateV1) -> bool {
    update.runs().iter().all(|run| {
        let clock = clocks.get(&run.client).copied().unwrap_or(0);
        run.start <= clock && run.skip_end.is_none_or(|end| clock >= end)
    })
}

/// Whether every clock range in `deletes` is already in `deleted` (a document's delete set:
/// per client, ranges sorted by start). Walks ranges, never single clocks: the update's ranges
/// (which a hostile sender may leave unsorted or overlapping) are sorted and coalesced, then
/// both lists are walked once, so the cost is O(n log n + m).
fn all_deleted(deletes: &IdSet, deleted: &IdSet) -> bool {
    deletes.iter().all(|(client, ranges)| {
        let mut wanted: Vec<Range<u32>> =
            ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        if wanted.is_empty() {
            return true;
        }
        let Some(have) = deleted.get(client) else {
            return false;
        };
        wanted.sort_unstable_by_key(|r| r.start);
        let mut have = have.iter().map(|(r, ())| r).peekable();
        let mut wanted = wanted.into_iter().peekable();
        while let Some(mut w) = wanted.next() {
            // Coalesce overlapping and adjacent wanted ranges.
            while let Some(next) = wanted.next_if(|n| n.start <= w.end) {
                w.end = w.end.max(next.end);
            }
            let mut covered_to = w.start;
            while covered_to < w.end {
                let Some(h) = have.peek() else {
                    return false;
                };
                if h.end <= covered_to {
                    have.next();
                } else if h.start > covered_to {
                    return false;
                } else {
                    covered_to = h.end;
                    if covered_to < w.end {
                        have.next();
                    }
                }
            }
        }
        true
    })
}

/// A document with JavaScript's text offsets (UTF-16 code units).
fn new_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

impl RoomDoc {
    /// An empty room.
    pub fn new() -> Self {
        Self::from_doc(new_doc())
    }

    fn from_doc(doc: Doc) -> Self {
        let emitted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = Arc::clone(&emitted);
        // A fresh document has no transaction open, so subscribing cannot fail.
        let _ = doc.observe_update_v1(OBSERVER_KEY, move |_txn, event| {
            if let Ok(mut out) = sink.lock() {
                out.push(event.update.clone());
            }
        });
        Self {
            awareness: Awareness::new(doc),
            emitted,
            pending: Vec::new(),
            pending_bytes: 0,
            clocks: HashMap::new(),
            clocked_parts: 0,
        }
    }

    /// The underlying document (read access for encoders and tests).
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// Applies a validated update from `origin` (a connection, or 0 for the server itself).
    ///
    /// An update whose predecessors are missing is held back (nothing is emitted) and applied,
    /// with everything it unblocks, once they arrive. Whatever the document emitted is in
    /// [`Applied::emitted`] even when an update was refused halfway (`yrs` may integrate some
    /// client runs before failing on a later one): every change the document holds must reach
    /// the subscribers.
    pub fn apply_update(&mut self, update: &UpdateV1, origin: u64) -> Applied {
        let mut refused = Vec::new();
        if !ready(&self.clocks, update) {
            if self.pending_bytes + update.len() > MAX_PENDING_BYTES
                || self.pending.len() >= MAX_PENDING_UPDATES
            {
                refused.push((origin, DocError::PendingOverflow));
            } else {
                self.pending_bytes += update.len();
                // A copy: the validated bytes are a slice of a network read buffer, which a
                // long-held slice would keep alive whole.
                self.pending.push(Pending {
                    origin,
                    update: update.detached(),
                });
            }
            return Applied {
                emitted: self.take_emitted(),
                refused,
            };
        }
        match self.integrate(update) {
            Ok(()) => self.apply_unblocked(&mut refused),
            Err(e) => refused.push((origin, e)),
        }
        Applied {
            emitted: self.take_emitted(),
            refused,
        }
    }

    /// Applies held-back updates as long as one of them became ready; a held-back update that
    /// fails now is reported against its sender.
    fn apply_unblocked(&mut self, refused: &mut Vec<(u64, DocError)>) {
        while !self.pending.is_empty() {
            let Some(i) = self
                .pending
                .iter()
                .position(|p| ready(&self.clocks, &p.update))
            else {
                break;
            };
            let pending = self.pending.swap_remove(i);
            self.pending_bytes -= pending.update.len();
            if let Err(e) = self.integrate(&pending.update) {
                refused.push((pending.origin, e));
            }
        }
    }

    /// Forgets the held-back updates of `origin` (a connection that left: it sends them again,
    /// by state vector, when it reconnects).
    pub fn drop_pending_from(&mut self, origin: u64) {
        self.pending.retain(|p| p.origin != origin);
        self.pending_bytes = self.pending.iter().map(|p| p.update.len()).sum();
    }

    /// Bytes of updates currently held back.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Hands a ready update to `yrs`.
    fn integrate(&mut self, update: &UpdateV1) -> Result<(), DocError> {
        let decoded =
            Update::decode_v1(update.as_bytes()).map_err(|e| DocError::Decode(e.to_string()))?;
        let doc = self.awareness.doc();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(decoded)
        }));
        // Whatever the outcome, fold what the document emitted into the clock cache.
        self.advance_clocks();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DocError::Apply(e.to_string())),
            Err(_) => {
                self.recover_after_panic();
                Err(DocError::Panicked)
            }
        }
    }

    /// Folds newly emitted updates into `clocks`: an emitted update holds, per client, exactly
    /// the clock range the transaction integrated, so its run ends are the new clocks.
    fn advance_clocks(&mut self) {
        let parts = self.emitted.lock().unwrap_or_else(|p| p.into_inner());
        let mut exact = true;
        for part in &parts[self.clocked_parts.min(parts.len())..] {
            let clocks = &mut self.clocks;
            let walked = validate_update_runs_v1(part, &EMITTED_LIMITS, |run| {
                let clock = clocks.entry(run.client).or_default();
                *clock = (*clock).max(run.end);
            });
            exact &= walked.is_ok();
        }
        self.clocked_parts = parts.len();
        drop(parts);
        if !exact {
            // Never expected (yrs emitted something our walker refuses); take the slow, exact
            // path rather than trust a partial update.
            self.reload_clocks();
        }
    }

    /// Recomputes `clocks` from the document's state vector.
    fn reload_clocks(&mut self) {
        let sv = self.doc().transact().state_vector();
        self.clocks = sv.iter().map(|(c, &clock)| (c.get(), clock)).collect();
    }

    /// Everything emitted since the last drain, one update per transaction, in order.
    fn take_emitted(&mut self) -> Vec<Vec<u8>> {
        self.advance_clocks();
        self.clocked_parts = 0;
        let mut guard = self.emitted.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *guard)
    }

    /// Rebuilds the document from its own full state after `yrs` panicked mid-transaction,
    /// keeping awareness as it was. If even that fails the room starts empty and clients
    /// restore it on their next sync (they each hold the full document).
    fn recover_after_panic(&mut self) {
        let snapshot = catch_unwind(AssertUnwindSafe(|| {
            self.awareness
                .doc()
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
        }));
        let states = self.awareness.update().ok();
        let pending = std::mem::take(&mut self.pending);
        let doc = new_doc();
        if let Ok(bytes) = snapshot {
            if let Ok(update) = Update::decode_v1(&bytes) {
                let _ = catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)));
            }
        }
        *self = Self::from_doc(doc);
        self.reload_clocks();
        self.pending_bytes = pending.iter().map(|p| p.update.len()).sum();
        self.pending = pending;
        if let Some(states) = states {
            let _ = self.awareness.apply_update(states);
        }
    }

    /// Whether applying `update` would change the document: it holds a block the document
    /// lacks, or deletes a clock range the document has not deleted.
    ///
    /// Used to refuse edits from read-only connections while letting through the SyncStep2
    /// every official client sends on connect: Yjs's `encodeStateAsUpdate` always carries the
    /// sender's whole delete set, so a client whose document equals (or trails) the room's
    /// sends no blocks the room lacks and only deletions the room already has.
    ///
    /// Conservative: an update with a gap (which [`RoomDoc::apply_update`] would hold back),
    /// a deletion of clocks the document does not hold yet, or bytes `yrs` fails to decode
    /// all count as a change. Cost: O(the update's runs) when it brings a new block; otherwise
    /// the update is decoded and, if it deletes anything, compared range by range with the
    /// document's delete set, which takes one walk over the document's blocks.
    pub fn would_change(&self, update: &UpdateV1) -> bool {
        let brings_blocks = update
            .runs()
            .iter()
            .any(|run| run.end > self.clocks.get(&run.client).copied().unwrap_or(0));
        if brings_blocks {
            return true;
        }
        let Ok(decoded) = Update::decode_v1(update.as_bytes()) else {
            return true;
        };
        let deletes = decoded.delete_set();
        if deletes.iter().all(|(_, ranges)| ranges.is_empty()) {
            return false;
        }
        // A deletion past the document's clock cannot be covered: skip the walk.
        let past_clock = deletes.iter().any(|(client, ranges)| {
            let clock = self.clocks.get(&client.get()).copied().unwrap_or(0);
            ranges.iter().any(|r| r.end > clock)
        });
        if past_clock {
            return true;
        }
        let deleted = self.doc().transact().snapshot().delete_set;
        !all_deleted(deletes, &deleted)
    }

    /// The document as JSON, one entry per root type; see [`crate::json`] for how each
    /// type is rendered.
    pub fn to_json(&self) -> serde_json::Value {
        crate::json::doc_to_json(self.doc())
    }

    /// The document's state vector, v1-encoded.
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc().transact().state_vector().encode_v1()
    }

    /// Everything the holder of `state_vector` is missing, as a v1 update.
    pub fn diff(&self, state_vector: &StateVectorV1) -> Vec<u8> {
        self.diff_sv(&state_vector.decode())
    }

    /// Like [`RoomDoc::diff`] for an already decoded state vector.
    pub fn diff_sv(&self, state_vector: &StateVector) -> Vec<u8> {
        self.doc().transact().encode_diff_v1(state_vector)
    }

    /// The whole document as one v1 update.
    pub fn encode_state(&self) -> Vec<u8> {
        self.diff_sv(&StateVector::default())
    }

    /// Applies a validated awareness update and reports what changed, with the update to
    /// broadcast.
    pub fn apply_awareness(
        &mut self,
        update: &AwarenessUpdateV1,
    ) -> Result<AwarenessChange, DocError> {
        let decoded = AwarenessUpdate::decode_v1(update.as_bytes())
            .map_err(|e| DocError::Decode(e.to_string()))?;
        let summary = self
            .awareness
            .apply_update_summary(decoded)
            .map_err(|e| DocError::Apply(e.to_string()))?;
        let Some(summary) = summary else {
            return Ok(AwarenessChange::default());
        };
        let ids = |v: &[ClientID]| v.iter().map(|c| c.get()).collect::<Vec<u64>>();
        let mut change = AwarenessChange {
            added: ids(&summary.added),
            updated: ids(&summary.updated),
            removed: ids(&summary.removed),
            broadcast: None,
        };
        let all = summary.all_changes();
        if !all.is_empty() {
            change.broadcast = self.encode_awareness_for(all);
        }
        Ok(change)
    }

    fn encode_awareness_for(&self, clients: Vec<ClientID>) -> Option<Vec<u8>> {
        self.awareness
            .update_with_clients(clients)
            .ok()
            .map(|u| u.encode_v1())
    }

    /// Every present (non-null) awareness state as one update, or `None` when nobody is present.
    pub fn awareness_states(&self) -> Option<Vec<u8>> {
        let update = self.awareness.update().ok()?;
        if update.clients.is_empty() {
            None
        } else {
            Some(update.encode_v1())
        }
    }

    /// Removes the awareness states of `clients` (bumping their clocks, as y-protocols'
    /// `removeAwarenessStates` does) and returns the removal to broadcast, if any of them was
    /// present. O(number of clients given).
    pub fn remove_awareness(&mut self, clients: &[u64]) -> Option<Vec<u8>> {
        let present: Vec<ClientID> = clients
            .iter()
            .map(|&c| ClientID::new(c))
            .filter(|&c| self.is_present(c))
            .collect();
        if present.is_empty() {
            return None;
        }
        for &c in &present {
            self.awareness.remove_state(c);
        }
        self.encode_awareness_for(present)
    }

    /// Whether `client` has a non-null awareness state (O(1)).
    fn is_present(&self, client: ClientID) -> bool {
        self.awareness
            .update_with_clients([client])
            .is_ok_and(|u| u.clients.values().any(|e| &*e.json != "null"))
    }

    /// Client IDs whose state was last renewed `max_age_ms` or more before `now_ms` (Unix
    /// milliseconds). Official clients renew every 15 s; y-protocols drops states older than
    /// 30 s, and so should the caller, with [`RoomDoc::remove_awareness`].
    pub fn outdated_awareness(&self, now_ms: u64, max_age_ms: u64) -> Vec<u64> {
        self.awareness
            .iter()
            .filter(|(_, state)| {
                state.data.is_some() && now_ms.saturating_sub(state.last_updated) >= max_age_ms
            })
            .map(|(id, _)| id.get())
            .collect()
    }

    /// Number of clients with a present awareness state.
    pub fn awareness_len(&self) -> usize {
        self.awareness
            .iter()
            .filter(|(_, state)| state.data.is_some())
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use yrs::{GetString, Map, Text, TextRef, WriteTxn};

    use super::*;

    fn sv_map(room: &RoomDoc) -> HashMap<u64, u32> {
        room.doc()
            .transact()
            .state_vector()
            .iter()
            .map(|(c, &clock)| (c.get(), clock))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Updates from three editors, delivered in any order: the clock cache always equals the
        /// real state vector, nothing stays pending once everything arrived, and the room ends
        /// with exactly the editors' merged content.
        #[test]
        fn clock_cache_tracks_the_state_vector(
            edits in proptest::collection::vec((0usize..3, 0u32..20, "[a-z]{1,4}", any::<bool>()), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 40),
        ) {
            let editors: Vec<Doc> = (1..=3u64).map(Doc::with_client_id).collect();
            let reference = Doc::with_client_id(99);
            let mut updates = Vec::new();
            for (who, pos, s, delete) in &edits {
                let doc = &editors[*who];
                let text: TextRef = doc.get_or_insert_text("t");
                let mut txn = doc.transact_mut();
                let len = text.len(&txn);
                if *delete && len > 0 {
                    text.remove_range(&mut txn, pos % len, 1);
                } else {
                    text.insert(&mut txn, pos % (len + 1), s);
                    txn.get_or_insert_map("m").insert(&mut txn, s.clone(), *pos);
                }
                let u = txn.encode_update_v1();
                drop(txn);
                // Keep the editors in sync with each other so later edits depend on earlier ones.
                for other in &editors {
                    other.transact_mut().apply_update(Update::decode_v1(&u).unwrap()).unwrap();
                }
                reference.transact_mut().apply_update(Update::decode_v1(&u).unwrap()).unwrap();
                updates.push(u);
            }
            // Deliver in a shuffled order.
            let mut remaining = updates;
            let mut room = RoomDoc::new();
            let limits = ValidateLimits::default();
            let mut i = 0;
            while !remaining.is_empty() {
                let idx = order[i % order.len()].index(remaining.len());
                i += 1;
                let u = remaining.swap_remove(idx);
                let applied = room.apply_update(&UpdateV1::parse(Bytes::from(u), &limits).unwrap(), 1);
                prop_assert!(applied.refused.is_empty());
                prop_assert_eq!(&room.clocks, &sv_map(&room));
            }
            prop_assert_eq!(room.pending_bytes(), 0);
            let text = |d: &Doc| d.get_or_insert_text("t").get_string(&d.transact());
            prop_assert_eq!(text(room.doc()), text(&reference));
        }
    }
}
