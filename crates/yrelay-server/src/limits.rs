//! Admission limits that are not tied to one room's state: connections per key (room, client
//! address), the per-connection message rate, and the server-wide budget of large decodes.
//!
//! Every refusal is counted in `yrelay_limit_refusals_total{limit=...}` by [`refused`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Counts a refusal by the limit that caused it.
pub fn refused(limit: &'static str) {
    metrics::counter!("yrelay_limit_refusals_total", "limit" => limit).increment(1);
}

/// Open connections per key, with a cap. A slot is held by a [`Slot`] and freed when it drops.
#[derive(Debug)]
pub struct ConnCounts<K: Eq + Hash> {
    /// A `std::sync::Mutex`: held only to bump a counter, never across an await.
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash> Default for ConnCounts<K> {
    fn default() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> ConnCounts<K> {
    /// Takes a slot for `key` unless it already has `max` (0: no limit, the slot is still
    /// counted).
    pub fn try_acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.lock();
        let n = counts.entry(key.clone()).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        drop(counts);
        Some(Slot {
            owner: Arc::clone(self),
            key: Some(key),
        })
    }

    /// Open slots for `key`.
    pub fn count(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Number of keys with at least one open slot.
    pub fn keys(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // Only single increments and decrements happen under the lock; a poisoned map is
        // still consistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, key: &K) {
        let mut counts = self.lock();
        if let Some(n) = counts.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

/// One held slot of a [`ConnCounts`]; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone + Send + 'static> {
    owner: Arc<ConnCounts<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.owner.release(&key);
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated: Instant::now(),
        })
    }

    /// Takes one token. `None` if one was available; otherwise how long until one is (the
    /// token is then already spoken for: the caller waits that long and goes on).
    pub fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_freed_on_drop() {
        let counts = Arc::new(ConnCounts::<String>::default());
        let a = counts.try_acquire("r".into(), 2).unwrap();
        let b = counts.try_acquire("r".into(), 2).unwrap();
        assert!(counts.try_acquire("r".into(), 2).is_none());
        assert!(counts.try_acquire("other".into(), 2).is_some());
        assert_eq!(counts.count(&"r".into()), 2);
        drop(a);
        let c = counts.try_acquire("r".into(), 2).unwrap();
        drop((b, c));
        assert_eq!(counts.count(&"r".into()), 0);
        assert_eq!(counts.keys(), 0, "empty keys are forgotten");
        // 0 means unlimited.
        let many: Vec<_> = (0..100)
            .map(|_| counts.try_acquire("r".into(), 0).unwrap())
            .collect();
        assert_eq!(counts.count(&"r".into()), 100);
        drop(many);
        assert_eq!(counts.keys(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_burst_then_the_rate() {
        assert!(TokenBucket::new(0, 10).is_none());
        let mut bucket = TokenBucket::new(10, 5).unwrap();
        for _ in 0..5 {
            assert_eq!(bucket.take(), None);
        }
        let wait = bucket.take().unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        tokio::time::sleep(wait).await;
        // The waited-for token was already taken; the next one needs another 100 ms.
        let wait = bucket.take().unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert_eq!(bucket.take(), None);
        }
        assert!(bucket.take().is_some());
    }
}
