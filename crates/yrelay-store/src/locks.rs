//! Per-room lock stripes for [`crate::SledStore`].
//!
//! sled makes each batch atomic, but an operation is read-then-write (read the room's meta,
//! build the batch) and a load reads several keys, which sled does not isolate from a
//! concurrent batch: a load racing a compaction could see the old snapshot and then the
//! already-trimmed tail. So every per-room operation holds its room's stripe. Rooms hash onto
//! a fixed set of stripes: different rooms rarely wait for each other, and no per-room lock
//! has to be created or cleaned up.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Number of stripes; a power of two well above the number of blocking threads that could
/// touch the store at once.
const STRIPES: usize = 64;

/// The stripes. A `std::sync::Mutex<()>`: it guards no data, only serializes critical
/// sections that do blocking sled calls on blocking threads (never held across `.await`).
pub(crate) struct RoomLocks {
    stripes: [Mutex<()>; STRIPES],
}

impl Default for RoomLocks {
    fn default() -> Self {
        Self {
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

impl RoomLocks {
    /// Locks `room`'s stripe until the guard drops.
    pub fn lock(&self, room: &str) -> MutexGuard<'_, ()> {
        // Fixed keys: a room maps to the same stripe for the life of the process.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(room);
        // Truncating the hash is fine: any bits pick a stripe.
        let stripe = &self.stripes[(hash as usize) % STRIPES];
        // The mutex guards `()`, so a panic while holding it leaves nothing inconsistent in
        // memory (a sled batch is atomic on its own): poisoning carries no information.
        stripe.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
