//! The CRDT state of one room: a `yrs` [`Doc`] and its [`Awareness`].
//!
//! [`RoomDoc`] only merges. Every update it accepts has been validated (the payload types in
//! [`crate::codec`] cannot be built otherwise), and what it hands back for broadcast is exactly
//! what the document emitted: a brand-new update byte-identical, an overlapping one only its new
//! part, a duplicate nothing, and an update with a missing dependency nothing until the gap is
//! filled — the behaviour of the reference server.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update};

use crate::codec::{AwarenessUpdateV1, StateVectorV1, UpdateV1};

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

impl RoomDoc {
    /// An empty room.
    pub fn new() -> Self {
        Self::from_doc(Doc::new())
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
        }
    }

    /// The underlying document (read access for encoders and tests).
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// Applies a validated update and returns what the document emitted, if anything changed.
    pub fn apply_update(&mut self, update: &UpdateV1) -> Result<Option<Vec<u8>>, DocError> {
        let decoded =
            Update::decode_v1(update.as_bytes()).map_err(|e| DocError::Decode(e.to_string()))?;
        self.take_emitted();
        let doc = self.awareness.doc();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(decoded)
        }));
        match result {
            Ok(Ok(())) => Ok(self.take_emitted()),
            Ok(Err(e)) => {
                self.take_emitted();
                Err(DocError::Apply(e.to_string()))
            }
            Err(_) => {
                self.recover_after_panic();
                Err(DocError::Panicked)
            }
        }
    }

    /// Merges everything emitted since the last drain into one update.
    fn take_emitted(&self) -> Option<Vec<u8>> {
        let mut parts = match self.emitted.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => yrs::merge_updates_v1(parts.iter().map(Vec::as_slice)).ok(),
        }
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
        let doc = Doc::new();
        if let Ok(bytes) = snapshot {
            if let Ok(update) = Update::decode_v1(&bytes) {
                let _ = catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)));
            }
        }
        *self = Self::from_doc(doc);
        if let Some(states) = states {
            let _ = self.awareness.apply_update(states);
        }
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
    /// present.
    pub fn remove_awareness(&mut self, clients: &[u64]) -> Option<Vec<u8>> {
        let present: Vec<ClientID> = clients
            .iter()
            .map(|&c| ClientID::new(c))
            .filter(|c| {
                self.awareness
                    .iter()
                    .any(|(id, state)| id == *c && state.data.is_some())
            })
            .collect();
        if present.is_empty() {
            return None;
        }
        for &c in &present {
            self.awareness.remove_state(c);
        }
        self.encode_awareness_for(present)
    }

    /// Number of clients with a present awareness state.
    pub fn awareness_len(&self) -> usize {
        self.awareness
            .iter()
            .filter(|(_, state)| state.data.is_some())
            .count()
    }
}
