//! Invalidation epochs: a load that began before an invalidation must not store afterwards,
//! and (with replica invalidation) an L1 entry must not be served after another replica
//! invalidated its key.
//!
//! Without them, a miss that read the source of truth just before it changed could put the
//! old value back into L1 or Redis right after `invalidate` removed it, and it would stay
//! there for a whole TTL. Each key falls in one of a few stripes; `invalidate` bumps its
//! key's stripe (`clear` bumps all), a load takes a [`Ticket`] when it starts, and every
//! store (L1 insert, L1 backfill from L2, and the background writer's `SET`) is skipped
//! when the ticket's stripe has moved on. Two keys sharing a stripe only cost a skipped
//! store, never a stale one.
//!
//! Another replica's invalidation names a key by its digest alone (the last part of its
//! Redis key, `src/key.rs`), never by the application's key bytes, which L1 is indexed by.
//! So a second set of stripes, the *shared* ones, is indexed by the digest: every L1 entry
//! carries the [`Stamp`] of its shared stripe taken when its load began, and an L1 hit
//! checks it (one atomic load). A received invalidation bumps its digest's shared stripe,
//! which makes every L1 entry of that stripe a miss: [`SHARED_STRIPES`] bounds that to a
//! small fraction of L1, refilled from Redis. A received `clear`, or a resubscription after
//! a gap, bumps them all. The local `invalidate` does not touch the shared stripes: it
//! removes its own L1 entry by key, at no cost to the other entries.
//!
//! Without replica invalidation there is one shared stripe that nothing bumps, and taking a
//! ticket hashes nothing more than before.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 64;

/// Shared stripes with replica invalidation on (32 KiB per cache): a received invalidation
/// makes about `1 / SHARED_STRIPES` of L1 miss, 2 or 3 entries of a 10 000-entry L1.
pub(crate) const SHARED_STRIPES: usize = 4096;

/// The shared stripe and epoch an L1 entry's load saw when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    stripe: u32,
    epoch: u64,
}

/// The stripes and epochs a load saw when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    epoch: u64,
    pub(crate) stamp: Stamp,
}

#[derive(Debug)]
pub(crate) struct Epochs {
    stripes: [AtomicU64; STRIPES],
    hasher: foldhash::fast::RandomState,
    /// Indexed by key digest; a power of two long (1 without replica invalidation).
    shared: Box<[AtomicU64]>,
}

impl Default for Epochs {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Epochs {
    /// `shared`: whether other replicas' invalidations reach this cache's L1.
    pub(crate) fn new(shared: bool) -> Self {
        let n = if shared { SHARED_STRIPES } else { 1 };
        Self {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hasher: foldhash::fast::RandomState::default(),
            shared: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stripe(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    fn shared_stripe(&self, digest: &[u8; crate::key::DIGEST_BYTES]) -> usize {
        // The digest is a cryptographic hash: its first bytes are as good as any.
        let n = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        n as usize & (self.shared.len() - 1)
    }

    /// Taken when a load begins.
    pub(crate) fn ticket(&self, key: &[u8]) -> Ticket {
        let stripe = self.stripe(key);
        let shared = if self.shared.len() == 1 {
            0
        } else {
            self.shared_stripe(&crate::key::digest(key))
        };
        Ticket {
            stripe,
            epoch: self.stripes[stripe].load(Ordering::Acquire),
            stamp: Stamp {
                stripe: shared as u32,
                epoch: self.shared[shared].load(Ordering::Acquire),
            },
        }
    }

    /// Whether no invalidation, here or from another replica, touched the ticket's stripes
    /// since it was taken.
    pub(crate) fn is_current(&self, ticket: Ticket) -> bool {
        self.stripes[ticket.stripe].load(Ordering::Acquire) == ticket.epoch
            && self.is_fresh(ticket.stamp)
    }

    /// Whether no other replica invalidated an L1 entry's shared stripe since its load began:
    /// the L1 hit path's check.
    #[inline]
    pub(crate) fn is_fresh(&self, stamp: Stamp) -> bool {
        // Relaxed: nothing is published through the epoch; a hit racing a bump may go
        // either way, as it would a moment earlier.
        self.shared
            .get(stamp.stripe as usize)
            .is_some_and(|e| e.load(Ordering::Relaxed) == stamp.epoch)
    }

    /// Called by `invalidate(key)` before it removes anything.
    pub(crate) fn bump(&self, key: &[u8]) {
        self.stripes[self.stripe(key)].fetch_add(1, Ordering::AcqRel);
    }

    /// Called by `clear()` before it removes anything.
    pub(crate) fn bump_all(&self) {
        for stripe in &self.stripes {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Another replica invalidated the key of `digest`.
    pub(crate) fn bump_digest(&self, digest: &[u8; crate::key::DIGEST_BYTES]) {
        self.shared[self.shared_stripe(digest)].fetch_add(1, Ordering::AcqRel);
    }

    /// Another replica cleared the cache, or invalidations may have been missed: nothing
    /// in L1, nor any load under way, is trusted any more.
    pub(crate) fn bump_shared_all(&self) {
        for stripe in self.shared.iter() {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_outdates_earlier_tickets_only() {
        let epochs = Epochs::default();
        let before = epochs.ticket(b"k");
        assert!(epochs.is_current(before));
        epochs.bump(b"k");
        assert!(!epochs.is_current(before));
        let after = epochs.ticket(b"k");
        assert!(epochs.is_current(after));
        epochs.bump_all();
        assert!(!epochs.is_current(after));
    }

    #[test]
    fn a_replica_invalidation_outdates_the_digest_stripe_and_little_else() {
        let epochs = Epochs::new(true);
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let tickets: Vec<Ticket> = keys.iter().map(|k| epochs.ticket(k)).collect();
        epochs.bump_digest(&crate::key::digest(&keys[7]));
        assert!(!epochs.is_fresh(tickets[7].stamp));
        assert!(!epochs.is_current(tickets[7]));
        let outdated = tickets.iter().filter(|t| !epochs.is_fresh(t.stamp)).count();
        assert!(
            outdated < 5,
            "{outdated} of 1000 outdated by one invalidation"
        );
        epochs.bump_shared_all();
        assert!(tickets.iter().all(|t| !epochs.is_fresh(t.stamp)));
        // The local stripes are another matter.
        let fresh = epochs.ticket(&keys[7]);
        assert!(epochs.is_current(fresh));
    }

    #[test]
    fn without_replicas_nothing_is_hashed_into_shared_stripes() {
        let epochs = Epochs::new(false);
        let t = epochs.ticket(b"k");
        assert_eq!(t.stamp.stripe, 0);
        assert!(epochs.is_fresh(t.stamp));
    }
}
