//! Invalidation epochs: a load that began before an invalidation must not store afterwards.
//!
//! Without them, a miss that read the source of truth just before it changed could put the
//! old value back into L1 or Redis right after `invalidate` removed it, and it would stay
//! there for a whole TTL. Each key falls in one of a few stripes; `invalidate` bumps its
//! key's stripe (`clear` bumps all), a load takes a [`Ticket`] when it starts, and every
//! store (L1 insert, L1 backfill from L2, and the background writer's `SET`) is skipped
//! when the ticket's stripe has moved on. Two keys sharing a stripe only cost a skipped
//! store, never a stale one. The hit path does not look at epochs.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 64;

/// The stripe and epoch a load saw when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Epochs {
    stripes: [AtomicU64; STRIPES],
    hasher: foldhash::fast::RandomState,
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Epochs {
    fn stripe(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    /// Taken when a load begins.
    pub(crate) fn ticket(&self, key: &[u8]) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            stripe,
            epoch: self.stripes[stripe].load(Ordering::Acquire),
        }
    }

    /// Whether no invalidation touched the ticket's stripe since it was taken.
    pub(crate) fn is_current(&self, ticket: Ticket) -> bool {
        self.stripes[ticket.stripe].load(Ordering::Acquire) == ticket.epoch
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
}
