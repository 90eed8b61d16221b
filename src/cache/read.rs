//! The read path of a miss: single flight, then L2, then the load; and storing what it
//! loaded. `Cache::get_l1` (in `handle.rs`) is the hit path in front of it.
//!
//! A miss takes an invalidation [`Ticket`] before it reads anything, so that nothing it
//! read is stored once the key was invalidated meanwhile (see `epoch.rs`).
//!
//! With fail-safe, the leader of a miss also looks for a *fallback*: an expired entry still
//! within its physical life, in L1 or else in Redis. A load with a fallback never fails:
//! its error, or a load over `hard_timeout`, is answered with the fallback, which is then
//! re-used for `fail_safe_throttle` (an L1 entry marked stale). A load that can run in the
//! background (`'static`: the layers', `Cache::load_owned`) is spawned when it has a
//! fallback and a `soft_timeout`: its caller takes the fallback at the soft timeout, and
//! the flight stays registered until the load completes, handing the fallback to every
//! request that joins meanwhile. An eager refresh is such a load started by a hit.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::epoch::Ticket;
use super::flight::{self, End, Leader, Role, SharedError, State};
use super::handle::Cache;
use super::stats::{FailSafe, Outcome, Refreshed, Trigger};
use super::tags::{TagStamp, Tags};
use super::tier::l1::Life;
use super::tier::l2::Write;
use super::value::{CacheValue, Loaded, Ttl};
use crate::codec;
use crate::key;

/// An expired entry a failing or slow load may be answered with, how much longer it may
/// serve, and its tags (kept on the throttle's copy, so a tag invalidation still reaches it).
pub(crate) type Fallback<V> = (V, Duration, Option<Arc<TagStamp>>);

/// What Redis had under a key.
pub(crate) enum L2Found<V> {
    /// Live; the `bool`: past its eager-refresh point.
    Fresh(V, bool),
    /// Expired, within its physical life (fail-safe on).
    Stale(Fallback<V>),
    Miss,
}

/// A shareable copy of `e` for the flight's waiters.
fn shared<E: Send + 'static>(e: &E, share_error: &impl Fn(&E) -> Option<E>) -> Option<SharedError> {
    // A `Mutex` makes any `Send` error shareable.
    share_error(e).map(|copy| Arc::new(Mutex::new(copy)) as SharedError)
}

impl<V: CacheValue> Cache<V> {
    /// A miss in L1: joins or leads the key's flight. See [`Cache::load`] for what waiters
    /// get. `with_fallback` runs the leader's load when a fallback exists (awaited in place,
    /// or spawned where the load is `'static`). The `bool`: whether the value is a fallback
    /// (for the HTTP layer's `x-cache: STALE`). `on_due` is handed the unused `init` and
    /// the value when it is a Redis hit past its eager-refresh point (L1 hits are the
    /// callers'), to refresh it where the load can run in the background.
    pub(crate) async fn load_miss<E, F, Fut, W, WF>(
        &self,
        key: &[u8],
        share_error: &impl Fn(&E) -> Option<E>,
        init: F,
        with_fallback: W,
        on_due: impl FnOnce(F, V),
    ) -> Result<(V, bool), E>
    where
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>>,
        W: FnOnce(Leader<V>, Ticket, Fallback<V>, F) -> WF,
        WF: Future<Output = (V, bool)>,
    {
        let inner = &*self.inner;
        loop {
            let rx = match inner.flights.join(key) {
                Role::Waiter(rx) => rx,
                Role::Leader(leader) => {
                    // Before anything is read: an invalidation from here on outdates it.
                    let ticket = inner.epochs.ticket(key);
                    // A previous leader may have stored the key between our L1 miss and now.
                    if let Some(hit) = self.l1_hit(key) {
                        let v = hit.value;
                        leader.finish(|| State::Value(v.clone()));
                        return Ok((v, hit.stale));
                    }
                    let l1_stale = self.l1_fallback(key);
                    let fallback = match self.l2_lookup(key, ticket).await {
                        L2Found::Fresh(v, due) => {
                            self.count(Outcome::HitL2);
                            leader.finish(|| State::Value(v.clone()));
                            if due {
                                on_due(init, v.clone());
                            }
                            return Ok((v, false));
                        }
                        L2Found::Stale(stale) => l1_stale.or(Some(stale)),
                        L2Found::Miss => l1_stale,
                    };
                    if let Some(fallback) = fallback {
                        return Ok(with_fallback(leader, ticket, fallback, init).await);
                    }
                    let loaded = self.load_plain(leader, ticket, init(), share_error).await;
                    return loaded.map(|v| (v, false));
                }
            };
            match flight::wait(rx).await {
                End::Value(v) => {
                    self.count(Outcome::Coalesced);
                    return Ok((v, false));
                }
                End::Stale(v) => {
                    self.count(Outcome::Stale);
                    return Ok((v, true));
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
                End::Private => return self.load_alone(key, init).await.map(|v| (v, false)),
                End::Abandoned => {
                    if let Some(hit) = self.l1_hit(key) {
                        return Ok((hit.value, hit.stale));
                    }
                }
            }
        }
    }

    /// The leader's load with nothing to fall back on: its result is the caller's.
    async fn load_plain<E, Fut>(
        &self,
        leader: Leader<V>,
        ticket: Ticket,
        init: Fut,
        share_error: &impl Fn(&E) -> Option<E>,
    ) -> Result<V, E>
    where
        E: Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        self.count(Outcome::Miss);
        match init.await {
            Ok(loaded) => Ok(self.settle_flight(leader, loaded, ticket)),
            Err(e) => {
                leader.finish(|| State::Failed(shared(&e, share_error)));
                Err(e)
            }
        }
    }

    /// Stores what a load produced and ends its flight with it.
    fn settle_flight(&self, leader: Leader<V>, loaded: Loaded<V>, ticket: Ticket) -> V {
        let (v, shared) = self.settle(leader.key(), loaded, ticket);
        leader.finish(|| match shared {
            true => State::Value(v.clone()),
            false => State::Private,
        });
        v
    }

    /// The leader's load with a fallback: never fails. Bounded by `hard_timeout`; a failure
    /// or a timeout is answered with the fallback, re-used for the throttle period. With
    /// `soft` (a spawned load), the fallback is also sent to the caller at the soft timeout,
    /// handed to the flight's waiters, and the load goes on; its [`Trigger`] says why it
    /// goes on (a soft timeout, or HTTP's `stale-while-revalidate`, whose "timeout" is
    /// zero and is no fail-safe activation). The `bool`: whether the value is the fallback.
    pub(crate) async fn load_with_fallback<E, Fut>(
        &self,
        leader: Leader<V>,
        ticket: Ticket,
        fallback: Fallback<V>,
        init: Fut,
        soft: Option<(Duration, Trigger, oneshot::Sender<V>)>,
    ) -> (V, bool)
    where
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        let hard = self.inner.resilience.hard_timeout;
        let mut load = pin!(async {
            match hard {
                Some(hard) => tokio::time::timeout(hard, init).await.ok(),
                None => Some(init.await),
            }
        });
        let mut background = None;
        let result = match soft {
            None => load.await,
            Some((soft, trigger, tx)) => {
                // Zero (`stale-while-revalidate`): the fallback at once, even for a load
                // that would be ready at its first poll.
                let on_time = match soft.is_zero() {
                    true => None,
                    false => tokio::select! {
                        biased;
                        result = &mut load => Some(result),
                        () = tokio::time::sleep(soft) => None,
                    },
                };
                match on_time {
                    Some(result) => result,
                    None => {
                        self.count(Outcome::Stale);
                        if trigger == Trigger::SoftTimeout {
                            self.inner.ins.fail_safe(FailSafe::SoftTimeout);
                        }
                        leader.publish_stale(fallback.0.clone());
                        let _ = tx.send(fallback.0.clone());
                        background = Some(trigger);
                        load.await
                    }
                }
            }
        };
        let ins = &self.inner.ins;
        let (cause, outcome) = match result {
            Some(Ok(Loaded::Failed(_))) => (FailSafe::Error, Refreshed::Error),
            Some(Ok(loaded)) => {
                if let Some(trigger) = background {
                    ins.refreshed(trigger, Refreshed::Ok);
                } else {
                    self.count(Outcome::Miss);
                }
                return (self.settle_flight(leader, loaded, ticket), false);
            }
            Some(Err(_)) => (FailSafe::Error, Refreshed::Error),
            None => (FailSafe::HardTimeout, Refreshed::Timeout),
        };
        if let Some(trigger) = background {
            ins.refreshed(trigger, outcome);
        } else {
            self.count(Outcome::Stale);
            ins.fail_safe(cause);
            tracing::debug!(cache = %self.inner.name, cause = ?cause, "load failed: an expired entry served instead (fail-safe)");
        }
        let (value, left, tags) = fallback;
        self.throttle(leader.key(), &value, left, tags, ticket);
        leader.finish(|| State::Stale(value.clone()));
        (value, true)
    }

    /// Keeps serving `value` (a fallback) for the fail-safe throttle, so that the backend
    /// is not asked again for the key until it has passed: an L1 entry marked stale, or,
    /// without L1, the entry rewritten to Redis with a fresh life of the throttle's length.
    fn throttle(
        &self,
        key: &[u8],
        value: &V,
        left: Duration,
        tags: Option<Arc<TagStamp>>,
        ticket: Ticket,
    ) {
        let inner = &*self.inner;
        if !inner.epochs.is_current(ticket) {
            return;
        }
        let ttl = inner.resilience.throttle.min(left);
        if let Some(l1) = &inner.l1 {
            let life = Life {
                ttl,
                refresh_after: None,
                stale_for: left,
                stale: true,
            };
            l1.insert(key.into(), value.clone(), life, ticket.stamp, tags);
            inner.ins.set_l1_entries(l1.len());
        } else {
            let digests = tags.as_ref().map_or(&[][..], |t| t.tags.digests());
            let now = inner.clock.unix_ms();
            self.write_l2(key, value, (now, ttl, Some(left)), digests, ticket);
        }
    }

    /// An eager refresh of `key`, started by a hit past its refresh point: one at a time
    /// (single flight), in the background, bounded by `hard_timeout`. Nothing happens
    /// without a Tokio runtime, or while another load of the key is under way. When it
    /// leads the key's flight, it looks at L1 again and refreshes only if the entry there
    /// (if any) is still due, so that a refresh that ended meanwhile is not repeated.
    ///
    /// `current`, for a Redis hit: the value read, which answers the requests that miss L1
    /// while the refresh runs (a Redis-only cache's, all of them) instead of making them
    /// wait for it. It was live when read; it may expire during a refresh longer than the
    /// time it had left.
    pub(crate) fn refresh<E, F, Fut>(
        &self,
        key: &[u8],
        current: Option<V>,
        share_error: impl Fn(&E) -> Option<E> + Send + 'static,
        init: F,
    ) where
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(leader) = self.inner.flights.try_lead(key) else {
            return;
        };
        let ticket = self.inner.epochs.ticket(key);
        // A refresh that ended between this hit and our lead has stored a new entry.
        let l1 = self.inner.l1.as_ref().and_then(|l1| l1.get(key));
        if l1.is_some_and(|hit| !hit.refresh) {
            // Nobody joined a flight that loaded nothing; any waiter looks again.
            drop(leader);
            return;
        }
        if let Some(current) = current {
            leader.publish_current(current);
        }
        let cache = self.clone();
        rt.spawn(async move {
            let result = match cache.inner.resilience.hard_timeout {
                Some(hard) => tokio::time::timeout(hard, init()).await.ok(),
                None => Some(init().await),
            };
            let ins = &cache.inner.ins;
            let (outcome, error) = match result {
                Some(Ok(Loaded::Failed(_))) => (Refreshed::Error, None),
                Some(Ok(loaded)) => {
                    ins.refreshed(Trigger::Eager, Refreshed::Ok);
                    cache.settle_flight(leader, loaded, ticket);
                    return;
                }
                Some(Err(e)) => (Refreshed::Error, shared(&e, &share_error)),
                None => (Refreshed::Timeout, None),
            };
            ins.refreshed(Trigger::Eager, outcome);
            if let Some(l1) = &cache.inner.l1 {
                l1.postpone_refresh(leader.key(), cache.inner.resilience.throttle);
            }
            leader.finish(|| State::Failed(error));
        });
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
            Loaded::StoreTagged(v, ttl, tags) => {
                self.store_tagged(key, &v, ttl, &tags, ticket);
                // Shared even when it was too large to store: it was meant for everybody.
                (v, true)
            }
            Loaded::Share(v) => (v, true),
            // Without a fallback, a failure's value is its caller's alone.
            Loaded::Private(v) | Loaded::Failed(v) => (v, false),
        }
    }

    /// An expired L1 entry that may still serve as a fallback: one stored with fail-safe
    /// on, or with a fallback window of its own ([`Ttl::WithFallback`]).
    fn l1_fallback(&self, key: &[u8]) -> Option<Fallback<V>> {
        self.inner.l1.as_ref()?.get_stale(key)
    }

    /// Reads `key` from Redis; every failure is a logged, counted miss. A hit is backfilled
    /// into L1 with the entry's remaining TTL.
    pub(crate) async fn l2_get(&self, key: &[u8], ticket: Ticket) -> Option<V> {
        match self.l2_lookup(key, ticket).await {
            L2Found::Fresh(v, _) => Some(v),
            L2Found::Stale(_) | L2Found::Miss => None,
        }
    }

    /// Whether an L2 entry with `tags`, written at `written_ms`, survived every invalidation
    /// of its tags: those this process does not know are read from Redis first (and kept).
    /// `None`: invalidated, or the tags' times could not be read (a miss, not a fallback);
    /// else the stamp its L1 copy carries.
    async fn tags_check(
        &self,
        l2: &Arc<super::tier::l2::L2>,
        tags: Vec<[u8; key::DIGEST_BYTES]>,
        written_ms: u64,
    ) -> Option<Option<Arc<TagStamp>>> {
        let inner = &*self.inner;
        let tags = Tags::from_digests(tags);
        // Taken before the check: a reset meanwhile makes the L1 copy a miss.
        let stamp = inner.tags.stamp(&tags, written_ms);
        let unknown = inner.tags.unknown(tags.digests());
        if !unknown.is_empty() {
            let keys: Vec<String> = unknown.iter().map(|t| inner.scheme.tag_key(t)).collect();
            let now = inner.clock.unix_ms();
            let times = l2.tag_times(&keys, now).await.ok()?;
            for (tag, at) in unknown.into_iter().zip(times) {
                inner.tags.record(tag, at, now);
            }
        }
        inner
            .tags
            .fresh(tags.digests(), written_ms)
            .then_some(stamp)
    }

    /// Reads `key` from Redis: a live entry (backfilled into L1 with its remaining TTL), an
    /// expired one still within its physical life (with fail-safe on), or a miss. Every
    /// failure is a logged, counted miss.
    pub(crate) async fn l2_lookup(&self, key: &[u8], ticket: Ticket) -> L2Found<V> {
        let inner = &*self.inner;
        let Some(l2) = inner.l2.as_ref() else {
            return L2Found::Miss;
        };
        let redis_key = inner.scheme.redis_key(key);
        // Wrong Redis types, bad envelopes and oversized entries are the tier's to count
        // and clean up; a payload that is not a `V` is this cache's.
        let Ok(Some(stored)) = l2.read(&redis_key, inner.max_entry_size).await else {
            return L2Found::Miss;
        };
        let Ok(value) = codec::decode_payload::<V>(stored.payload()) else {
            l2.discard(redis_key);
            return L2Found::Miss;
        };
        let header = stored.header;
        let tags = match header.tag_count {
            0 => None,
            _ => match self
                .tags_check(l2, stored.tags(), header.written_at_ms)
                .await
            {
                Some(stamp) => stamp,
                None => return L2Found::Miss,
            },
        };
        let now = inner.clock.unix_ms();
        // Whether an entry may serve as a fallback was decided when it was written (by a
        // replica with fail-safe on, or for the entry alone): a version 2 envelope.
        let stale_for = header.stale_remaining(now);
        let Some(remaining) = header.remaining(now) else {
            return match stale_for {
                Some(left) => L2Found::Stale((value, left, tags)),
                None => L2Found::Miss,
            };
        };
        // The refresh point of the entry's own life, not of what is left of it.
        let refresh_at = inner.resilience.eager_refresh.map(|f| {
            let life = header.expires_at_ms.saturating_sub(header.written_at_ms);
            header.written_at_ms + (life as f64 * f) as u64
        });
        let due = refresh_at.is_some_and(|at| now >= at);
        // Read before an invalidation that has since happened: serve it to this caller,
        // but do not put it back into L1.
        if let Some(l1) = inner
            .l1
            .as_ref()
            .filter(|_| inner.epochs.is_current(ticket))
        {
            let refresh_after = refresh_at.map(|at| Duration::from_millis(at.saturating_sub(now)));
            let l1_ttl = self.l1_ttl(remaining);
            let life = Life {
                ttl: l1_ttl,
                refresh_after,
                stale_for: stale_for.unwrap_or(l1_ttl),
                stale: false,
            };
            l1.insert(key.into(), value.clone(), life, ticket.stamp, tags);
            inner.ins.set_l1_entries(l1.len());
        }
        L2Found::Fresh(value, due)
    }

    /// Stores `value` in L1 now and in Redis through the background writer; `false` when
    /// it was not stored (invalidated since `ticket`, a zero TTL, too large, or it does not
    /// serialize). With fail-safe, the entry lives on as a fallback until
    /// `fail_safe_max_duration` after now (in L1, and as the Redis key's TTL).
    pub(crate) fn store(&self, key: &[u8], value: &V, ttl: Ttl, ticket: Ticket) -> bool {
        self.store_tagged(key, value, ttl, &Tags::none(), ticket)
    }

    /// [`store`](Self::store) with tags. A tagged entry's physical life is capped by the
    /// tag horizon (how long a tag's invalidation time is kept).
    pub(crate) fn store_tagged(
        &self,
        key: &[u8],
        value: &V,
        ttl: Ttl,
        tags: &Tags,
        ticket: Ticket,
    ) -> bool {
        let inner = &*self.inner;
        if !inner.epochs.is_current(ticket) {
            tracing::debug!(cache = %inner.name, "value not cached: the key was invalidated while it loaded");
            return false;
        }
        let fallback = ttl.fallback();
        let Some(ttl) = ttl.resolve(inner.ttl) else {
            return false;
        };
        let ttl = key::jittered(ttl, inner.jitter);
        // The physical life: fail-safe's, or the entry's own fallback window after its
        // fresh life, whichever is longer.
        let own = fallback.map(|window| ttl.saturating_add(window));
        let stale_for = match (inner.resilience.fail_safe_max.map(|max| max.max(ttl)), own) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let stale_for = match tags.is_empty() {
            true => stale_for,
            false => stale_for.map(|s| s.min(inner.tag_horizon).max(ttl)),
        };
        let now = inner.clock.unix_ms();
        // Encoded only for Redis: an L1 entry is the value itself, and an L1-only cache
        // bounds entries by count, not size.
        let life = (now, ttl, stale_for);
        if inner.l2.is_some() && !self.write_l2(key, value, life, tags.digests(), ticket) {
            return false;
        }
        if let Some(l1) = &inner.l1 {
            let l1_ttl = self.l1_ttl(ttl);
            let life = Life {
                ttl: l1_ttl,
                refresh_after: inner.resilience.eager_refresh.map(|f| ttl.mul_f64(f)),
                stale_for: stale_for.unwrap_or(l1_ttl),
                stale: false,
            };
            let stamp = inner.tags.stamp(tags, now);
            l1.insert(key.into(), value.clone(), life, ticket.stamp, stamp);
            inner.ins.set_l1_entries(l1.len());
        }
        true
    }

    /// Queues `value` for Redis, written at `now` (Unix ms), fresh for `ttl` and a fallback
    /// for `stale_for` (the Redis key's TTL), with `tags`; `false` when it does not
    /// serialize or is too large (counted).
    fn write_l2(
        &self,
        key: &[u8],
        value: &V,
        (now, ttl, stale_for): (u64, Duration, Option<Duration>),
        tags: &[[u8; key::DIGEST_BYTES]],
        ticket: Ticket,
    ) -> bool {
        let inner = &*self.inner;
        let Some(l2) = &inner.l2 else { return true };
        let bytes = match codec::encode_entry(value, now, ttl, stale_for, tags) {
            Ok(bytes) => bytes,
            Err(e) => {
                inner.ins.not_stored_encode();
                tracing::debug!(cache = %inner.name, error = %e, "value not cached: it does not serialize");
                return false;
            }
        };
        let header_len = match (stale_for, tags.len()) {
            (None, 0) => codec::HEADER_LEN,
            (Some(_), 0) => codec::HEADER_LEN_STALE,
            (_, n) => codec::HEADER_LEN_STALE + 2 + n * key::DIGEST_BYTES,
        };
        if bytes.len() - header_len > inner.max_entry_size {
            inner.ins.not_stored_oversized();
            tracing::debug!(cache = %inner.name, size = bytes.len(), limit = inner.max_entry_size, "value not cached: too large");
            return false;
        }
        l2.write(Write::Set {
            key: inner.scheme.redis_key(key),
            bytes,
            // The Redis key lives as long as the entry may serve, fresh or as a fallback.
            ttl: stale_for.unwrap_or(ttl).max(ttl),
            ticket,
        });
        true
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        match self.inner.l1_ttl {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }
}
