//! L1: the in-process tier, a bounded `quick_cache` map whose entries carry their expiry.
//!
//! quick_cache has no TTL of its own, so each entry holds an `expires_at`, checked on read;
//! an expired entry is removed by the read that finds it, or evicted by the capacity bound
//! like any other. Values are stored as the response type itself behind an `Arc`, so a hit
//! is a map read, a clock read, a type check and a `Clone` of the response: no decoding.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// A response of any type, shared between L1 and single-flight waiters.
pub(crate) type Value = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
struct Entry {
    value: Value,
    expires_at: Instant,
}

pub(crate) struct L1 {
    map: quick_cache::sync::Cache<Box<[u8]>, Entry>,
    clock: Clock,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("len", &self.map.len())
            .field("capacity", &self.map.capacity())
            .finish()
    }
}

impl L1 {
    pub(crate) fn new(capacity: u64, clock: Clock) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            map: quick_cache::sync::Cache::new(capacity),
            clock,
        }
    }

    /// The live value under `key`, if it is a `V`.
    #[inline]
    pub(crate) fn get<V: Clone + 'static>(&self, key: &[u8]) -> Option<V> {
        let entry = self.map.get(key)?;
        if self.clock.now() >= entry.expires_at {
            // Only remove what we saw expire, not a fresh entry written meanwhile.
            self.map
                .remove_if(key, |e| Arc::ptr_eq(&e.value, &entry.value));
            return None;
        }
        entry.value.downcast_ref::<V>().cloned()
    }

    pub(crate) fn insert(&self, key: Box<[u8]>, value: Value, ttl: Duration) {
        let expires_at = self.clock.now() + ttl;
        self.map.insert(key, Entry { value, expires_at });
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
        let l1 = L1::new(10, mock.clone().into());
        l1.insert(
            b"k".to_vec().into(),
            Arc::new(7u32),
            Duration::from_secs(10),
        );
        assert_eq!(l1.get::<u32>(b"k"), Some(7));
        assert_eq!(l1.get::<String>(b"k"), None, "another type is a miss");
        mock.advance(Duration::from_secs(9));
        assert_eq!(l1.get::<u32>(b"k"), Some(7));
        mock.advance(Duration::from_secs(1));
        assert_eq!(l1.get::<u32>(b"k"), None);
        assert_eq!(l1.len(), 0, "the expired entry was removed");
    }

    #[test]
    fn bounded() {
        let l1 = L1::new(100, Clock::system());
        for i in 0..10_000u32 {
            l1.insert(
                i.to_be_bytes().to_vec().into(),
                Arc::new(i),
                Duration::from_secs(60),
            );
        }
        assert!(l1.len() <= 100, "len {}", l1.len());
    }
}
