//! Tags: [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) removes every entry stored
//! with a tag at a cost that does not grow with the number of entries under it.
//!
//! Nothing is enumerated. A tag's invalidation is a *time*: Redis holds it under
//! `{namespace}:{name}:tag:{tag digest}` (decimal Unix milliseconds), this process holds it
//! in [`TagTimes`], and replicas hear of it on the invalidation channel
//! (`lc1 {origin} tag {digest}`). Every tagged entry carries its tag digests and its
//! written-at (in L1 beside the value, in Redis in a version 3 envelope); an entry whose
//! tag was invalidated at or after it was written is a miss, everywhere, and never a
//! fail-safe fallback (the same design as FusionCache's tagging).
//!
//! Trust in the local map: L1 entries were written here (or backfilled after a check), so
//! a tag absent from the map has not been invalidated since, as long as every
//! invalidation reaches this process: local ones always do, other replicas' while the
//! subscription is up. An L2 entry may be older than anything this process heard, so an
//! L2 hit of a tagged entry reads the tag times it does not know from Redis (one `MGET`)
//! and keeps them; while subscribed the map stays current, so each tag is read once. With
//! no subscription (replica invalidation off, or between a loss and a resubscription) the map is not trusted: every tagged L2 hit reads its tags' times. A
//! (re)subscription empties the map and moves its generation on, which makes every tagged
//! L1 entry written before a miss (L1 is emptied then anyway).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::key::{digest, DIGEST_BYTES};

/// A tag, as stored: the digest of its bytes.
pub(crate) type TagDigest = [u8; DIGEST_BYTES];

/// The tags of an entry: clear them all at once with
/// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
///
/// Tags may be user input (a user id, a provider name): each is hashed like a key
/// (BLAKE3, 128 bits), so its bytes are never stored or sent. Cheap to clone.
///
/// ```
/// use layercake::cache::Tags;
///
/// let tags = Tags::new(["provider:acme", "user:42"]);
/// assert_eq!(tags.len(), 2);
/// assert!(Tags::none().is_empty());
/// assert_eq!(Tags::new(["a", "a"]).len(), 1, "duplicates count once");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Option<Arc<[TagDigest]>>);

impl Tags {
    /// The tags `tags`, duplicates removed.
    pub fn new<T: AsRef<[u8]>>(tags: impl IntoIterator<Item = T>) -> Self {
        let mut digests: Vec<TagDigest> = tags.into_iter().map(|t| digest(t.as_ref())).collect();
        digests.sort_unstable();
        digests.dedup();
        Self::from_digests(digests)
    }

    /// No tags.
    pub fn none() -> Self {
        Self(None)
    }

    pub(crate) fn from_digests(digests: Vec<TagDigest>) -> Self {
        if digests.is_empty() {
            Self(None)
        } else {
            Self(Some(digests.into()))
        }
    }

    /// How many distinct tags.
    pub fn len(&self) -> usize {
        self.digests().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn digests(&self) -> &[TagDigest] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests only: the tags' bytes are not kept.
        f.debug_struct("Tags").field("len", &self.len()).finish()
    }
}

/// What a tagged L1 entry carries: its tags, when it was written, and the map generation
/// it was checked against.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TagStamp {
    pub(crate) tags: Tags,
    pub(crate) written_ms: u64,
    generation: u64,
}

/// How many tag times the map holds before it drops the ones no entry can need.
const PRUNE_AT: usize = 16_384;
/// How many it may hold after pruning before it is emptied (a reset).
const MAX_TAGS: usize = 262_144;

/// This process' tag invalidation times.
#[derive(Debug)]
pub(crate) struct TagTimes {
    /// Tag digest → invalidated at (Unix ms; 0: read from Redis, never invalidated).
    map: RwLock<HashMap<TagDigest, u64>>,
    /// Moved on by every reset: a tagged L1 entry checked before it is a miss.
    generation: AtomicU64,
    /// Whether the subscription keeps the map current (so a known tag need not be read).
    trusted: AtomicBool,
    /// No entry lives longer than this (ms): older invalidation times can be dropped.
    horizon_ms: u64,
}

impl TagTimes {
    pub(crate) fn new(horizon_ms: u64) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            trusted: AtomicBool::new(false),
            horizon_ms,
        }
    }

    /// The stamp of an entry with `tags` written at `written_ms`; `None` without tags.
    pub(crate) fn stamp(&self, tags: &Tags, written_ms: u64) -> Option<Arc<TagStamp>> {
        (!tags.is_empty()).then(|| {
            Arc::new(TagStamp {
                tags: tags.clone(),
                written_ms,
                generation: self.generation.load(Ordering::Acquire),
            })
        })
    }

    /// Whether a tagged L1 entry is still valid: no reset since, and none of its tags
    /// invalidated at or after it was written.
    pub(crate) fn is_valid(&self, stamp: &TagStamp) -> bool {
        stamp.generation == self.generation.load(Ordering::Acquire)
            && self.fresh(stamp.tags.digests(), stamp.written_ms)
    }

    /// Whether none of `tags` was invalidated at or after `written_ms`, by what is known.
    pub(crate) fn fresh(&self, tags: &[TagDigest], written_ms: u64) -> bool {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        tags.iter()
            .all(|t| map.get(t).is_none_or(|&at| at < written_ms))
    }

    /// Which of `tags` must be read from Redis before an L2 entry with them is served.
    pub(crate) fn unknown(&self, tags: &[TagDigest]) -> Vec<TagDigest> {
        if !self.trusted.load(Ordering::Acquire) {
            return tags.to_vec();
        }
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        tags.iter()
            .filter(|t| !map.contains_key(*t))
            .copied()
            .collect()
    }

    /// Records that `tag` was invalidated at `at_ms` (or, `0`, that Redis knows of no
    /// invalidation); never moves a known time back.
    pub(crate) fn record(&self, tag: TagDigest, at_ms: u64, now_ms: u64) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let t = map.entry(tag).or_insert(at_ms);
        *t = (*t).max(at_ms);
        if map.len() > PRUNE_AT {
            // An invalidation older than the longest entry life covers no live entry; a
            // zero only saves a read, which the next L2 hit repeats.
            let oldest = now_ms.saturating_sub(self.horizon_ms);
            map.retain(|_, at| *at >= oldest && *at != 0);
            if map.len() > MAX_TAGS {
                map.clear();
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// The subscription is up: the map starts afresh, and is kept current from here on.
    pub(crate) fn subscribed(&self) {
        self.forget();
        self.trusted.store(true, Ordering::Release);
    }

    /// Forgets every time: tagged L1 entries checked before are misses, and tags are read
    /// from Redis again.
    pub(crate) fn forget(&self) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The subscription is lost: other replicas' invalidations may be missed.
    pub(crate) fn unsubscribed(&self) {
        self.trusted.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_at_or_after_the_write_is_a_miss() {
        let times = TagTimes::new(60_000);
        let tags = Tags::new(["a", "b"]);
        let stamp = times.stamp(&tags, 1_000).unwrap();
        assert!(times.is_valid(&stamp));
        times.record(digest(b"a"), 999, 1_000);
        assert!(times.is_valid(&stamp), "older than the entry");
        times.record(digest(b"b"), 1_000, 1_000);
        assert!(!times.is_valid(&stamp), "same millisecond: a miss");
        times.record(digest(b"b"), 5, 1_000);
        assert!(!times.is_valid(&stamp), "never moved back");
        assert!(times.stamp(&Tags::none(), 1).is_none());
    }

    #[test]
    fn untrusted_maps_know_nothing_and_a_subscription_resets() {
        let times = TagTimes::new(60_000);
        let a = digest(b"a");
        times.record(a, 0, 1);
        assert_eq!(
            times.unknown(&[a]),
            vec![a],
            "not subscribed: read every time"
        );
        times.subscribed();
        assert_eq!(times.unknown(&[a]), vec![a], "emptied");
        times.record(a, 0, 1);
        assert!(times.unknown(&[a]).is_empty());
        let stamp = times.stamp(&Tags::new(["a"]), 10).unwrap();
        times.unsubscribed();
        assert_eq!(times.unknown(&[a]), vec![a]);
        times.subscribed();
        assert!(!times.is_valid(&stamp), "checked before the reset");
    }
}
