//! L1: the in-process tier, a bounded `quick_cache` map whose entries carry their expiry.
//!
//! quick_cache has no TTL of its own, so each entry holds an `expires_at`, checked on read;
//! an expired entry is removed by the read that finds it, or evicted by the capacity bound
//! like any other. Values are stored as the cache's value type itself, so a hit is a map
//! read, a clock read and one `Clone` of the value: no decoding, no type check.
//!
//! Expiry runs on the coarse monotonic clock ([`Clock::coarse_now`]): an entry lives its
//! TTL give or take one kernel tick (1 to 4 ms), and the read costs a fifth of a precise one.
//!
//! Each entry also carries the [`Stamp`] its load took: an entry whose shared stripe another
//! replica has invalidated since is a miss, and removed like an expired one (`epoch.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::cache::epoch::{Epochs, Stamp};
use crate::clock::Clock;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// By [`Clock::coarse_now`].
    expires_at: Duration,
    stamp: Stamp,
}

pub(crate) struct L1<V> {
    map: quick_cache::sync::Cache<Box<[u8]>, Entry<V>>,
    clock: Clock,
    epochs: Arc<Epochs>,
}

impl<V: Clone> std::fmt::Debug for L1<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("len", &self.map.len())
            .field("capacity", &self.map.capacity())
            .finish()
    }
}

impl<V: Clone> L1<V> {
    pub(crate) fn new(capacity: u64, clock: Clock, epochs: Arc<Epochs>) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            map: quick_cache::sync::Cache::new(capacity),
            clock,
            epochs,
        }
    }

    /// The live value under `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        let entry = self.map.get(key)?;
        if self.clock.coarse_now() >= entry.expires_at || !self.epochs.is_fresh(entry.stamp) {
            // Only remove what we saw expire, not a fresh entry written meanwhile.
            self.map.remove_if(key, |e| {
                e.expires_at == entry.expires_at && e.stamp == entry.stamp
            });
            return None;
        }
        Some(entry.value)
    }

    /// Stores `value` for `ttl`; `stamp` is the one its load took when it began.
    pub(crate) fn insert(&self, key: Box<[u8]>, value: V, ttl: Duration, stamp: Stamp) {
        let expires_at = self.clock.coarse_now().saturating_add(ttl);
        self.map.insert(
            key,
            Entry {
                value,
                expires_at,
                stamp,
            },
        );
    }

    pub(crate) fn remove(&self, key: &[u8]) {
        self.map.remove(key);
    }

    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockClock;

    #[test]
    fn expiry_follows_the_clock() {
        let mock = MockClock::new();
        let epochs = Arc::new(Epochs::default());
        let l1 = L1::new(10, mock.clone().into(), Arc::clone(&epochs));
        let stamp = epochs.ticket(b"k").stamp;
        l1.insert(b"k".to_vec().into(), 7u32, Duration::from_secs(10), stamp);
        assert_eq!(l1.get(b"k"), Some(7));
        mock.advance(Duration::from_secs(9));
        assert_eq!(l1.get(b"k"), Some(7));
        mock.advance(Duration::from_secs(1));
        assert_eq!(l1.get(b"k"), None);
        assert_eq!(l1.len(), 0, "the expired entry was removed");
    }

    #[test]
    fn bounded() {
        let epochs = Arc::new(Epochs::default());
        let l1 = L1::new(100, Clock::system(), Arc::clone(&epochs));
        for i in 0..10_000u32 {
            let key = i.to_be_bytes();
            let stamp = epochs.ticket(&key).stamp;
            l1.insert(key.to_vec().into(), i, Duration::from_secs(60), stamp);
        }
        assert!(l1.len() <= 100, "len {}", l1.len());
    }

    #[test]
    fn a_replica_invalidation_of_the_stripe_is_a_miss() {
        let epochs = Arc::new(Epochs::new(true));
        let l1 = L1::new(10, Clock::system(), Arc::clone(&epochs));
        let stamp = epochs.ticket(b"k").stamp;
        l1.insert(b"k".to_vec().into(), 7u32, Duration::from_secs(10), stamp);
        assert_eq!(l1.get(b"k"), Some(7));
        epochs.bump_digest(&crate::key::digest(b"k"));
        assert_eq!(l1.get(b"k"), None);
        assert_eq!(l1.len(), 0, "the outdated entry was removed");
    }
}
