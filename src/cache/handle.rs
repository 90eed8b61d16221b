//! The `Cache` handle: configuration, both tiers, single flight, and the admin operations.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use super::builder::CacheBuilder;
use super::epoch::{Epochs, Ticket};
use super::flight::{self, End, Flights, Role};
use super::stats::{CacheStats, Instruments, L2Cause, L2Op, L2State, Outcome};
use super::tier::l1::{Value, L1};
use super::tier::l2::{L2Error, Write, L2};
use crate::clock::Clock;
use crate::codec;
use crate::key::{self, KeyScheme};

/// A two-tier cache: an in-process L1 and an optional Redis L2.
///
/// Build one with [`Cache::builder`], hand clones of it to one or more
/// [`CacheLayer`](crate::CacheLayer)s, and keep one to invalidate entries, read
/// [`stats`](Cache::stats) or switch caching off at run time. Clones share everything.
///
/// Use one `Cache` per response type: entries are stored under the application's key, and
/// a hit of another type is treated as a miss.
///
/// # Consistency
/// L1 is per process. [`invalidate`](Cache::invalidate) removes a key from this process' L1
/// and from Redis, but other replicas keep their L1 copy until it expires: bound that with
/// [`l1_time_to_live`](CacheBuilder::l1_time_to_live) where it matters. Writes to Redis are
/// asynchronous (a background writer), so another replica may miss an entry for the
/// moment it takes to write it. A load already under way when its key is invalidated (or the
/// cache cleared) still answers its own request, but what it read is not stored, in L1 or
/// Redis: an invalidation is never undone by a read that began before it.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    pub(crate) scheme: KeyScheme,
    pub(crate) ttl: Duration,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) jitter: f64,
    pub(crate) max_entry_size: usize,
    pub(crate) clock: Clock,
    pub(crate) l1: Option<L1>,
    pub(crate) l2: Option<Arc<L2>>,
    pub(crate) flights: Flights,
    pub(crate) epochs: Arc<Epochs>,
    pub(crate) enabled: AtomicBool,
    pub(crate) ins: Arc<Instruments>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Cache")
            .field("name", &i.name)
            .field("time_to_live", &i.ttl)
            .field("l1", &i.l1)
            .field("redis", &i.l2.as_ref().map(|l2| l2.url()))
            .field("enabled", &i.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Starts building a cache named `name`.
    ///
    /// The name labels its metrics (`cache="name"`) and is part of every Redis key, so it
    /// may hold only `[A-Za-z0-9_.-]` (checked by [`build`](CacheBuilder::build)).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cache = layercake::Cache::builder("provider")
    ///     .namespace("myapp")
    ///     .time_to_live(Duration::from_secs(600))
    ///     .max_capacity(10_000)
    ///     .redis_url(std::env::var("REDIS_URL").ok()) // none: L1 only
    ///     .build()?;
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn builder(name: impl Into<String>) -> CacheBuilder {
        CacheBuilder::new(name.into())
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The Redis key under which `key` is stored (see the crate docs for the scheme).
    ///
    /// ```
    /// let cache = layercake::Cache::builder("provider").namespace("myapp").build()?;
    /// let redis_key = cache.redis_key("query=rust");
    /// assert!(redis_key.starts_with("myapp:provider:v1:"));
    /// assert_eq!(redis_key.len(), "myapp:provider:v1:".len() + 32);
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn redis_key(&self, key: impl AsRef<[u8]>) -> String {
        self.inner.scheme.redis_key(key.as_ref())
    }

    /// Removes `key` from L1 and from Redis.
    ///
    /// L1 is always cleared. The returned error says only that Redis could not be reached
    /// in time; the entry there then expires by its TTL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = layercake::Cache::builder("provider").build()?;
    /// cache.invalidate("query=rust").await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, key: impl AsRef<[u8]>) -> Result<(), L2Error> {
        let key = key.as_ref();
        // First, so that loads already under way do not store what they read.
        self.inner.epochs.bump(key);
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key);
            self.inner.ins.set_l1_entries(l1.len());
        }
        match &self.inner.l2 {
            Some(l2) => l2.delete_now(&[self.inner.scheme.redis_key(key)]).await,
            None => Ok(()),
        }
    }

    /// Removes every entry of this cache from L1 and from Redis (all schema versions), and
    /// returns how many Redis keys were removed.
    ///
    /// Redis keys are found with `SCAN MATCH {namespace}:{name}:*` and removed with
    /// `UNLINK`, in batches: never `KEYS`, which blocks the server.
    pub async fn clear(&self) -> Result<u64, L2Error> {
        self.inner.epochs.bump_all();
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
            self.inner.ins.set_l1_entries(0);
        }
        match &self.inner.l2 {
            Some(l2) => l2.delete_matching(self.inner.scheme.pattern()).await,
            None => Ok(0),
        }
    }

    /// A snapshot of this cache's counters and state.
    ///
    /// ```
    /// let cache = layercake::Cache::builder("provider").build()?;
    /// let stats = cache.stats();
    /// assert_eq!(stats.hit_rate(), 0.0);
    /// assert!(!stats.l2_connected()); // no redis_url: L1 only
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn stats(&self) -> CacheStats {
        let i = &self.inner;
        let l1 = i.l1.as_ref().map_or(0, |l1| l1.len() as u64);
        let l2 = i.l2.as_ref().map_or(L2State::Disabled, |l2| l2.state());
        i.ins.snapshot(l1, l2)
    }

    /// Switches caching on or off at run time. While off, every layer built on this cache
    /// passes requests straight to its inner service (counted as `bypass`).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether caching is on (see [`set_enabled`](Cache::set_enabled)).
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Counts a lookup's outcome and logs it at `debug` (with `debug` off, the log costs
    /// one cached check of the call site's interest).
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        self.inner.ins.outcome(outcome);
        tracing::debug!(cache = %self.inner.name, result = outcome.as_str(), "cache lookup");
    }

    /// The L1 hit path: no I/O, no allocation beyond the response's own `Clone`.
    #[inline]
    pub(crate) fn l1_get<V: Clone + 'static>(&self, key: &[u8]) -> Option<V> {
        self.inner.l1.as_ref()?.get(key)
    }

    /// Stores `value` under `key` (L1 now, Redis in the background) with `ttl` capped by
    /// `time_to_live`, as a miss would; `false` when it was not stored (too large, or it does
    /// not serialize). For adapters that store more than the value they load: the HTTP
    /// layer's `Vary` markers and variants.
    #[cfg(feature = "http")]
    pub(crate) fn put<V>(&self, key: &[u8], value: &V, ttl: Duration) -> bool
    where
        V: Clone + Serialize + Send + Sync + 'static,
    {
        // Adapters call this right after their own load; a ticket taken now only guards
        // against invalidations from here on.
        let ticket = self.inner.epochs.ticket(key);
        self.store(key, value, ttl, ticket).is_some()
    }

    /// Now, by the cache's clock, in Unix milliseconds (the HTTP layer's `Age`).
    #[cfg(feature = "http")]
    pub(crate) fn now_unix_ms(&self) -> u64 {
        self.inner.clock.unix_ms()
    }

    /// The miss path: single flight, then L2, then `load`; stores what `ttl_for` allows.
    ///
    /// `ttl_for` returns the TTL to store a response with (`None`: do not store); it is
    /// capped by the cache's own `time_to_live`.
    pub(crate) async fn load<V, E, F, Fut, T>(
        &self,
        key: &[u8],
        load: F,
        ttl_for: T,
    ) -> Result<V, E>
    where
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        T: FnOnce(&V) -> Option<Duration>,
    {
        let inner = &*self.inner;
        loop {
            match inner.flights.join(key) {
                Role::Leader(leader) => {
                    // Before anything is read: an invalidation from here on outdates it.
                    let ticket = inner.epochs.ticket(key);
                    // A previous leader may have stored the key between our L1 miss and now.
                    if let Some(v) = self.l1_get::<V>(key) {
                        self.count(Outcome::HitL1);
                        leader.finish(|| Some(Arc::new(v.clone())));
                        return Ok(v);
                    }
                    if let Some((v, in_l1)) = self.l2_get::<V>(key, ticket).await {
                        self.count(Outcome::HitL2);
                        leader.finish(|| in_l1.or_else(|| Some(Arc::new(v.clone()))));
                        return Ok(v);
                    }
                    self.count(Outcome::Miss);
                    let result = load().await;
                    let shared = match &result {
                        Ok(v) => ttl_for(v).and_then(|ttl| self.store(key, v, ttl, ticket)),
                        Err(_) => None,
                    };
                    leader.finish(|| shared);
                    return result;
                }
                Role::Waiter(rx) => match flight::wait(rx).await {
                    End::Value(v) => {
                        if let Some(v) = v.downcast_ref::<V>() {
                            self.count(Outcome::Coalesced);
                            return Ok(v.clone());
                        }
                        return self.load_alone(key, load, ttl_for).await;
                    }
                    End::Unshared => return self.load_alone(key, load, ttl_for).await,
                    End::Abandoned => {
                        if let Some(v) = self.l1_get::<V>(key) {
                            self.count(Outcome::HitL1);
                            return Ok(v);
                        }
                    }
                },
            }
        }
    }

    /// A miss served without a flight: the leader had nothing it could share.
    async fn load_alone<V, E, F, Fut, T>(&self, key: &[u8], load: F, ttl_for: T) -> Result<V, E>
    where
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        T: FnOnce(&V) -> Option<Duration>,
    {
        self.count(Outcome::Miss);
        let ticket = self.inner.epochs.ticket(key);
        let result = load().await;
        if let Ok(v) = &result {
            if let Some(ttl) = ttl_for(v) {
                self.store(key, v, ttl, ticket);
            }
        }
        result
    }

    /// Reads `key` from Redis; every failure is a logged, counted miss. A hit is backfilled
    /// into L1 with the entry's remaining TTL, and returned with the L1 copy (if any) so
    /// single-flight waiters can share it without another clone.
    async fn l2_get<V>(&self, key: &[u8], ticket: Ticket) -> Option<(V, Option<Value>)>
    where
        V: Clone + DeserializeOwned + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let l2 = inner.l2.as_ref()?;
        let redis_key = inner.scheme.redis_key(key);
        let bytes = match l2.get(&redis_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(L2Cause::Decode) => {
                // Another Redis type under our key: remove it.
                l2.write(Write::Del { key: redis_key });
                return None;
            }
            Err(_) => return None,
        };
        if bytes.len() > inner.max_entry_size + codec::HEADER_LEN {
            // Written by a replica with a larger limit: skip it, leave it alone.
            inner.ins.l2_error(L2Op::Get, L2Cause::Oversized);
            return None;
        }
        match codec::decode::<V>(&bytes) {
            Ok((header, value)) => {
                let remaining = header.remaining(inner.clock.unix_ms())?;
                // Read before an invalidation that has since happened: serve it to this
                // request, but do not put it back into L1.
                let fresh = inner.epochs.is_current(ticket);
                let in_l1 = inner.l1.as_ref().filter(|_| fresh).map(|l1| {
                    let shared: Value = Arc::new(value.clone());
                    l1.insert(key.into(), Arc::clone(&shared), self.l1_ttl(remaining));
                    inner.ins.set_l1_entries(l1.len());
                    shared
                });
                Some((value, in_l1))
            }
            Err(e) => {
                inner.ins.l2_error(L2Op::Get, L2Cause::Decode);
                tracing::debug!(cache = %inner.name, key = %redis_key, error = ?e, "undecodable cache entry removed");
                l2.write(Write::Del { key: redis_key });
                None
            }
        }
    }

    /// Stores `value` in L1 now and in Redis through the background writer. Returns the
    /// stored value for single-flight waiters, or `None` when it was not stored.
    /// Skipped when the key was invalidated since `ticket` was taken (see `epoch.rs`).
    fn store<V>(&self, key: &[u8], value: &V, ttl: Duration, ticket: Ticket) -> Option<Value>
    where
        V: Clone + Serialize + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        if !inner.epochs.is_current(ticket) {
            tracing::debug!(cache = %inner.name, "response not cached: the key was invalidated while it loaded");
            return None;
        }
        let ttl = key::jittered(ttl.min(inner.ttl), inner.jitter);
        let bytes = match codec::encode(value, inner.clock.unix_ms(), ttl) {
            Ok(bytes) => bytes,
            Err(e) => {
                inner.ins.not_stored_encode();
                tracing::debug!(cache = %inner.name, error = %e, "response not cached: it does not serialize");
                return None;
            }
        };
        if bytes.len() - codec::HEADER_LEN > inner.max_entry_size {
            inner.ins.not_stored_oversized();
            tracing::debug!(cache = %inner.name, size = bytes.len(), limit = inner.max_entry_size, "response not cached: too large");
            return None;
        }
        let shared: Value = Arc::new(value.clone());
        if let Some(l1) = &inner.l1 {
            l1.insert(key.into(), Arc::clone(&shared), self.l1_ttl(ttl));
            inner.ins.set_l1_entries(l1.len());
        }
        if let Some(l2) = &inner.l2 {
            l2.write(Write::Set {
                key: inner.scheme.redis_key(key),
                bytes,
                ttl,
                ticket,
            });
        }
        Some(shared)
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        match self.inner.l1_ttl {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }
}
