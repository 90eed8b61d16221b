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
//!
//! With fail-safe, an entry outlives its expiry: past `expires_at` it is a miss for
//! [`L1::get`], but [`L1::get_stale`] still returns it until `stale_until`, as the fallback
//! of a failing load. With eager refresh, a hit past `refresh_at` says so, and the caller
//! starts a background refresh.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::epoch::{Epochs, Stamp};
use crate::cache::tags::{TagStamp, TagTimes};
use crate::clock::Clock;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// By [`Clock::coarse_now`], as are the two below.
    expires_at: Duration,
    /// A hit from here on asks for a refresh; `Duration::MAX` without eager refresh.
    refresh_at: Duration,
    /// Removed (never served, even as a fallback) from here on; `expires_at` without
    /// fail-safe.
    stale_until: Duration,
    stamp: Stamp,
    /// An expired value kept in use for the fail-safe throttle: its hits count as `stale`.
    stale: bool,
    /// A tagged entry's tags and written-at (`tags.rs`); untagged entries pay one check.
    tags: Option<Arc<TagStamp>>,
}

impl<V> Entry<V> {
    /// Whether another replica invalidated its key, or one of its tags was invalidated.
    #[inline]
    fn is_outdated(&self, epochs: &Epochs, tags: &TagTimes) -> bool {
        !epochs.is_fresh(self.stamp) || self.tags.as_ref().is_some_and(|t| !tags.is_valid(t))
    }
}

/// How long an entry lives, from now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    /// Fresh for this long.
    pub(crate) ttl: Duration,
    /// A hit after this long asks for a refresh (`None`: never).
    pub(crate) refresh_after: Option<Duration>,
    /// Usable as a fallback for this long (at least `ttl`).
    pub(crate) stale_for: Duration,
    /// Whether it is an expired value re-used for the fail-safe throttle.
    pub(crate) stale: bool,
}

impl Life {
    /// Fresh for `ttl`, then gone: no fail-safe, no refresh.
    #[cfg(test)]
    pub(crate) fn fresh(ttl: Duration) -> Self {
        Self {
            ttl,
            refresh_after: None,
            stale_for: ttl,
            stale: false,
        }
    }
}

/// An L1 hit.
pub(crate) struct Hit<V> {
    pub(crate) value: V,
    /// Past its refresh point (eager refresh).
    pub(crate) refresh: bool,
    /// An expired value re-used for the fail-safe throttle.
    pub(crate) stale: bool,
}

pub(crate) struct L1<V> {
    map: quick_cache::sync::Cache<Box<[u8]>, Entry<V>>,
    clock: Clock,
    epochs: Arc<Epochs>,
    tags: Arc<TagTimes>,
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
    pub(crate) fn new(
        capacity: u64,
        clock: Clock,
        epochs: Arc<Epochs>,
        tags: Arc<TagTimes>,
    ) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            map: quick_cache::sync::Cache::new(capacity),
            clock,
            epochs,
            tags,
        }
    }

    /// The live value under `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<Hit<V>> {
        let entry = self.map.get(key)?;
        let now = self.clock.coarse_now();
        let outdated = entry.is_outdated(&self.epochs, &self.tags);
        if now >= entry.expires_at || outdated {
            if now >= entry.stale_until || outdated {
                // Only remove what we saw expire, not a fresh entry written meanwhile.
                self.map.remove_if(key, |e| {
                    e.expires_at == entry.expires_at && e.stamp == entry.stamp
                });
            }
            return None;
        }
        Some(Hit {
            refresh: now >= entry.refresh_at,
            stale: entry.stale,
            value: entry.value,
        })
    }

    /// The value under `key`, expired or not, while it may serve as a fallback (fail-safe),
    /// with the time it has left for that and its tags. Never one another replica
    /// invalidated, nor one whose tag was invalidated.
    pub(crate) fn get_stale(&self, key: &[u8]) -> Option<(V, Duration, Option<Arc<TagStamp>>)> {
        let entry = self.map.get(key)?;
        let now = self.clock.coarse_now();
        if now >= entry.stale_until || entry.is_outdated(&self.epochs, &self.tags) {
            return None;
        }
        Some((entry.value, entry.stale_until - now, entry.tags))
    }

    /// Stores `value` for `life`; `stamp` is the one its load took when it began; `tags`,
    /// a tagged entry's.
    pub(crate) fn insert(
        &self,
        key: Box<[u8]>,
        value: V,
        life: Life,
        stamp: Stamp,
        tags: Option<Arc<TagStamp>>,
    ) {
        let now = self.clock.coarse_now();
        let expires_at = now.saturating_add(life.ttl);
        self.map.insert(
            key,
            Entry {
                value,
                expires_at,
                refresh_at: life
                    .refresh_after
                    .map_or(Duration::MAX, |after| now.saturating_add(after)),
                stale_until: now.saturating_add(life.stale_for).max(expires_at),
                stamp,
                stale: life.stale,
                tags,
            },
        );
    }

    /// No refresh of `key`'s entry for `wait` (its last refresh failed): hits then ask for
    /// one at most once per `wait`.
    pub(crate) fn postpone_refresh(&self, key: &[u8], wait: Duration) {
        let until = self.clock.coarse_now().saturating_add(wait);
        let key: Box<[u8]> = key.into();
        // `Some(ZERO)`: never wait for a placeholder (L1 makes none).
        let _ = self.map.entry(&key, Some(Duration::ZERO), |_, e| {
            e.refresh_at = e.refresh_at.max(until);
            quick_cache::sync::EntryAction::Retain(())
        });
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

    /// An L1 of `capacity` on `clock`, with no tag invalidated.
    fn l1_on(capacity: u64, clock: Clock, epochs: &Arc<Epochs>) -> L1<u32> {
        L1::new(
            capacity,
            clock,
            Arc::clone(epochs),
            Arc::new(TagTimes::new(0)),
        )
    }

    /// Stores an untagged `value` under `key` with the stamp a load of it takes now.
    fn untagged(l1: &L1<u32>, epochs: &Epochs, key: &[u8], value: u32, life: Life) {
        l1.insert(key.into(), value, life, epochs.ticket(key).stamp, None);
    }

    #[test]
    fn expiry_follows_the_clock() {
        let mock = MockClock::new();
        let epochs = Arc::new(Epochs::default());
        let l1 = l1_on(10, mock.clone().into(), &epochs);
        untagged(
            &l1,
            &epochs,
            b"k",
            7u32,
            Life::fresh(Duration::from_secs(10)),
        );
        assert_eq!(l1.get(b"k").map(|h| h.value), Some(7));
        mock.advance(Duration::from_secs(9));
        assert_eq!(l1.get(b"k").map(|h| h.value), Some(7));
        mock.advance(Duration::from_secs(1));
        assert!(l1.get(b"k").is_none());
        assert_eq!(l1.len(), 0, "the expired entry was removed");
    }

    #[test]
    fn bounded() {
        let epochs = Arc::new(Epochs::default());
        let l1 = l1_on(100, Clock::system(), &epochs);
        for i in 0..10_000u32 {
            let life = Life::fresh(Duration::from_secs(60));
            untagged(&l1, &epochs, &i.to_be_bytes(), i, life);
        }
        assert!(l1.len() <= 100, "len {}", l1.len());
    }

    #[test]
    fn a_replica_invalidation_of_the_stripe_is_a_miss() {
        let epochs = Arc::new(Epochs::new(true));
        let l1 = l1_on(10, Clock::system(), &epochs);
        untagged(
            &l1,
            &epochs,
            b"k",
            7u32,
            Life::fresh(Duration::from_secs(10)),
        );
        assert_eq!(l1.get(b"k").map(|h| h.value), Some(7));
        epochs.bump_digest(&crate::key::digest(b"k"));
        assert!(l1.get(b"k").is_none());
        assert_eq!(l1.len(), 0, "the outdated entry was removed");
    }

    #[test]
    fn an_expired_entry_stays_a_fallback_until_stale_until() {
        let mock = MockClock::new();
        let epochs = Arc::new(Epochs::new(true));
        let l1 = l1_on(10, mock.clone().into(), &epochs);
        let life = Life {
            ttl: Duration::from_secs(10),
            refresh_after: Some(Duration::from_secs(8)),
            stale_for: Duration::from_secs(100),
            stale: false,
        };
        untagged(&l1, &epochs, b"k", 7, life);
        assert!(!l1.get(b"k").unwrap().refresh);
        mock.advance(Duration::from_secs(8));
        assert!(l1.get(b"k").unwrap().refresh, "past the refresh point");
        l1.postpone_refresh(b"k", Duration::from_secs(1));
        assert!(!l1.get(b"k").unwrap().refresh, "postponed");
        mock.advance(Duration::from_secs(2));
        assert!(l1.get(b"k").is_none(), "expired");
        assert_eq!(l1.get_stale(b"k").map(|(v, _, _)| v), Some(7));
        assert_eq!(l1.len(), 1, "kept as a fallback");
        mock.advance(Duration::from_secs(90));
        assert!(l1.get(b"k").is_none());
        assert!(l1.get_stale(b"k").is_none());
        assert_eq!(l1.len(), 0, "gone past stale_until");
        // An invalidated entry is no fallback.
        untagged(&l1, &epochs, b"k", 8u32, life);
        epochs.bump_digest(&crate::key::digest(b"k"));
        assert!(l1.get_stale(b"k").is_none());
    }

    #[test]
    fn a_tag_invalidation_is_a_miss_and_no_fallback() {
        let mock = MockClock::new();
        let epochs = Arc::new(Epochs::new(true));
        let tags = Arc::new(TagTimes::new(60_000));
        let l1 = L1::new(
            10,
            mock.clone().into(),
            Arc::clone(&epochs),
            Arc::clone(&tags),
        );
        let life = Life {
            ttl: Duration::from_secs(10),
            refresh_after: None,
            stale_for: Duration::from_secs(100),
            stale: false,
        };
        let tagged = crate::cache::tags::Tags::new(["t"]);
        for key in [&b"a"[..], b"b"] {
            let stamp = tags.stamp(&tagged, 1_000);
            l1.insert(key.into(), 1u32, life, epochs.ticket(key).stamp, stamp);
        }
        untagged(&l1, &epochs, b"c", 2u32, life);
        mock.advance(Duration::from_secs(20));
        assert!(
            l1.get_stale(b"a").is_some(),
            "a fallback before the invalidation"
        );
        tags.record(crate::key::digest(b"t"), 1_000, 1_000);
        assert!(l1.get_stale(b"a").is_none(), "no fallback after it");
        assert!(l1.get(b"b").is_none());
        assert!(l1.get_stale(b"c").is_some(), "untagged: untouched");
    }
}
