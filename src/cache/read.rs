//! The read path of a miss: single flight, then L2, then the load; and storing what it
//! loaded. `Cache::get_l1` (in `handle.rs`) is the hit path in front of it.
//!
//! A miss takes an invalidation [`Ticket`] before it reads anything, so that nothing it
//! read is stored once the key was invalidated meanwhile (see `epoch.rs`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::epoch::Ticket;
use super::flight::{self, End, Role, SharedError, State};
use super::handle::Cache;
use super::stats::Outcome;
use super::tier::l2::Write;
use super::value::{CacheValue, Loaded, Ttl};
use crate::codec;
use crate::key;

impl<V: CacheValue> Cache<V> {
    /// A miss in L1: joins or leads the key's flight. See [`Cache::load`] for what waiters
    /// get.
    pub(crate) async fn load_miss<E, F, Fut>(
        &self,
        key: &[u8],
        share_error: &impl Fn(&E) -> Option<E>,
        init: F,
    ) -> Result<V, E>
    where
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        let inner = &*self.inner;
        loop {
            let rx = match inner.flights.join(key) {
                Role::Waiter(rx) => rx,
                Role::Leader(leader) => {
                    // Before anything is read: an invalidation from here on outdates it.
                    let ticket = inner.epochs.ticket(key);
                    // A previous leader may have stored the key between our L1 miss and now.
                    if let Some(v) = self.get_l1(key) {
                        leader.finish(|| State::Value(v.clone()));
                        return Ok(v);
                    }
                    if let Some(v) = self.l2_get(key, ticket).await {
                        self.count(Outcome::HitL2);
                        leader.finish(|| State::Value(v.clone()));
                        return Ok(v);
                    }
                    self.count(Outcome::Miss);
                    return match init().await {
                        Ok(loaded) => {
                            let (v, shared) = self.settle(key, loaded, ticket);
                            leader.finish(|| match shared {
                                true => State::Value(v.clone()),
                                false => State::Private,
                            });
                            Ok(v)
                        }
                        Err(e) => {
                            leader.finish(|| {
                                State::Failed(share_error(&e).map(|copy| {
                                    // A `Mutex` makes any `Send` error shareable.
                                    Arc::new(Mutex::new(copy)) as SharedError
                                }))
                            });
                            Err(e)
                        }
                    };
                }
            };
            match flight::wait(rx).await {
                End::Value(v) => {
                    self.count(Outcome::Coalesced);
                    return Ok(v);
                }
                End::Failed(shared) => {
                    let copy = shared.as_deref().and_then(|e| {
                        let e = e.downcast_ref::<Mutex<E>>()?;
                        let e = e.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        share_error(&e)
                    });
                    if let Some(e) = copy {
                        self.count(Outcome::Coalesced);
                        return Err(e);
                    }
                    // An error only its own caller could get: load again, in a new flight
                    // (one call at a time for this key).
                }
                End::Private => return self.load_alone(key, init).await,
                End::Abandoned => {
                    if let Some(v) = self.get_l1(key) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// A miss served without a flight: the leader loaded a value private to its caller.
    async fn load_alone<E, F, Fut>(&self, key: &[u8], init: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        self.count(Outcome::Miss);
        let ticket = self.inner.epochs.ticket(key);
        let loaded = init().await?;
        Ok(self.settle(key, loaded, ticket).0)
    }

    /// Stores what a load produced, as it allows; returns the value and whether the
    /// flight's waiters may have it.
    fn settle(&self, key: &[u8], loaded: Loaded<V>, ticket: Ticket) -> (V, bool) {
        match loaded {
            Loaded::Store(v, ttl) => {
                self.store(key, &v, ttl, ticket);
                // Shared even when it was too large to store: it was meant for everybody.
                (v, true)
            }
            Loaded::Share(v) => (v, true),
            Loaded::Private(v) => (v, false),
        }
    }

    /// Reads `key` from Redis; every failure is a logged, counted miss. A hit is backfilled
    /// into L1 with the entry's remaining TTL.
    pub(crate) async fn l2_get(&self, key: &[u8], ticket: Ticket) -> Option<V> {
        let inner = &*self.inner;
        let l2 = inner.l2.as_ref()?;
        let redis_key = inner.scheme.redis_key(key);
        // Wrong Redis types, bad envelopes and oversized entries are the tier's to count
        // and clean up; a payload that is not a `V` is this cache's.
        let stored = l2.read(&redis_key, inner.max_entry_size).await.ok()??;
        let Ok(value) = codec::decode_payload::<V>(stored.payload()) else {
            l2.discard(redis_key);
            return None;
        };
        let remaining = stored.header.remaining(inner.clock.unix_ms())?;
        // Read before an invalidation that has since happened: serve it to this caller,
        // but do not put it back into L1.
        if let Some(l1) = inner
            .l1
            .as_ref()
            .filter(|_| inner.epochs.is_current(ticket))
        {
            l1.insert(
                key.into(),
                value.clone(),
                self.l1_ttl(remaining),
                ticket.stamp,
            );
            inner.ins.set_l1_entries(l1.len());
        }
        Some(value)
    }

    /// Stores `value` in L1 now and in Redis through the background writer; `false` when
    /// it was not stored (invalidated since `ticket`, a zero TTL, too large, or it does not
    /// serialize).
    pub(crate) fn store(&self, key: &[u8], value: &V, ttl: Ttl, ticket: Ticket) -> bool {
        let inner = &*self.inner;
        if !inner.epochs.is_current(ticket) {
            tracing::debug!(cache = %inner.name, "value not cached: the key was invalidated while it loaded");
            return false;
        }
        let Some(ttl) = ttl.resolve(inner.ttl) else {
            return false;
        };
        let ttl = key::jittered(ttl, inner.jitter);
        // Encoded only for Redis: an L1 entry is the value itself, and an L1-only cache
        // bounds entries by count, not size.
        if let Some(l2) = &inner.l2 {
            let bytes = match codec::encode(value, inner.clock.unix_ms(), ttl) {
                Ok(bytes) => bytes,
                Err(e) => {
                    inner.ins.not_stored_encode();
                    tracing::debug!(cache = %inner.name, error = %e, "value not cached: it does not serialize");
                    return false;
                }
            };
            if bytes.len() - codec::HEADER_LEN > inner.max_entry_size {
                inner.ins.not_stored_oversized();
                tracing::debug!(cache = %inner.name, size = bytes.len(), limit = inner.max_entry_size, "value not cached: too large");
                return false;
            }
            l2.write(Write::Set {
                key: inner.scheme.redis_key(key),
                bytes,
                ttl,
                ticket,
            });
        }
        if let Some(l1) = &inner.l1 {
            l1.insert(key.into(), value.clone(), self.l1_ttl(ttl), ticket.stamp);
            inner.ins.set_l1_entries(l1.len());
        }
        true
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        match self.inner.l1_ttl {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }
}
