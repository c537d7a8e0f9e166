//! One-shot operations for scripts and the command line.

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::error::{ClientError, Result};
use crate::replica::Replica;
use crate::rest::RestClient;

/// What [`sync_replica`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Bytes of update sent to the server (0: it lacked nothing).
    pub sent_bytes: usize,
    /// Bytes of update received from the server (0: the replica lacked nothing).
    pub received_bytes: usize,
}

/// An empty v1 update: no structs, no deletions.
const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Exchanges `room` between a local replica and a server over REST, both ways, moving only
/// what each side lacks: GET the server's state vector, POST the diff it lacks (acknowledged
/// once durable on the server), GET what the replica lacks by its state vector and persist
/// it. Safe to repeat; a second run moves nothing.
pub async fn sync_replica(rest: &RestClient, replica: &Replica, room: &str) -> Result<SyncReport> {
    let doc = replica.load(room)?;
    let server_sv = rest.state_vector(room).await?;
    let server_sv = StateVector::decode_v1(&server_sv)
        .map_err(|e| ClientError::Protocol(format!("invalid state vector from the server: {e}")))?;
    let ours = doc.transact().encode_state_as_update_v1(&server_sv);
    let mut report = SyncReport::default();
    if ours != EMPTY_UPDATE {
        rest.post_update(room, &ours).await?;
        report.sent_bytes = ours.len();
    }
    let sv = doc.transact().state_vector().encode_v1();
    let theirs = rest.state(room, Some(&sv)).await?;
    if theirs != EMPTY_UPDATE {
        replica.append(room, &theirs, "sync")?;
        report.received_bytes = theirs.len();
    }
    Ok(report)
}
