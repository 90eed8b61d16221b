//! The `Cache` handle: configuration, both tiers, the direct API and the admin operations.
//! The read path itself (single flight, L2, the load, storing) is in `read.rs`.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::builder::{CacheBuilder, Resilience};
use super::epoch::Epochs;
use super::flight::Flights;
use super::stats::{CacheStats, Instruments, L2State, Outcome, Trigger};
use super::tags::{TagTimes, Tags};
use super::tier::l1::{Hit, L1};
use super::tier::l2::{L2Error, L2};
use super::tier::replica::{FlushL1, Notice};
use super::value::{CacheValue, Loaded, Ttl};
use crate::clock::Clock;
use crate::key::KeyScheme;

/// A two-tier cache of `V` values: an in-process L1 and an optional Redis L2.
///
/// Build one with [`Cache::builder`]. Use it directly ([`get_with`](Cache::get_with),
/// [`try_get_with`](Cache::try_get_with), [`get`](Cache::get), [`insert`](Cache::insert))
/// around any function call, or hand clones of it to one or more
/// [`CacheLayer`](crate::CacheLayer)s in front of services whose response is `V`. Keep
/// one to invalidate entries, read [`stats`](Cache::stats) or switch caching off at run
/// time. Clones share everything.
///
/// The value type is part of the cache's type, so two services with different response
/// types cannot share one cache (and so cannot read each other's entries):
///
/// ```compile_fail
/// use std::convert::Infallible;
/// use tower::{service_fn, Layer};
/// use layercake::{Cache, CacheLayer};
///
/// let cache = Cache::builder("lengths").build().unwrap();
/// let key = |s: &String| Some(s.clone());
/// let _a = CacheLayer::new(cache.clone(), key)
///     .layer(service_fn(|s: String| async move { Ok::<_, Infallible>(s.len()) }));
/// let _b = CacheLayer::new(cache, key) // error: this cache holds `usize`, not `String`
///     .layer(service_fn(|s: String| async move { Ok::<_, Infallible>(s) }));
/// # fn ready<S: tower::Service<String>>(_: &S) {}
/// # ready(&_a); ready(&_b);
/// ```
///
/// # The non-blocking contract
/// Nothing the cache does fails a call: a Redis problem (refused, timed out, blackholed,
/// restarting, wrong password, OOM, undecodable bytes) is a miss, counted by cause and
/// logged at most once every 10 s. A Redis read costs at most
/// [`l2_timeout`](CacheBuilder::l2_timeout), and nothing once the circuit breaker is open.
///
/// # Consistency
/// L1 is per process. [`invalidate`](Cache::invalidate) and [`clear`](Cache::clear) remove
/// from this process' L1 and from Redis, then tell the other replicas (the caches of the
/// same namespace and name on the same Redis), which drop their L1 copies as soon as the
/// message arrives (see [`replica_invalidation`](CacheBuilder::replica_invalidation)): an
/// invalidation is eventually consistent across replicas, usually within a millisecond. A
/// replica that was not subscribed when a message was sent empties its L1 when it
/// subscribes again; until then, or when Redis could not be reached to send the message
/// (the call then returns an error), [`l1_time_to_live`](CacheBuilder::l1_time_to_live)
/// bounds how stale another replica's copy can be. Writes to Redis are
/// asynchronous (a background writer), so another replica may miss an entry for the
/// moment it takes to write it. A load already under way when its key is invalidated (or the
/// cache cleared) still answers its own caller, but what it read is not stored, in L1 or
/// Redis: an invalidation is never undone by a read that began before it.
///
/// [`invalidate_tag`](Cache::invalidate_tag) is consistent in the same way: this process at
/// once, the other replicas when its message arrives, and any replica's Redis read of a
/// tagged entry at once (the tag's time is in Redis). A load under way on another replica
/// that stores in the moment before the message arrives there stores a value the tag no
/// longer covers (the same window as for `invalidate`).
pub struct Cache<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Whether an owned load with a fallback may go on in the background, its caller served
/// the fallback (decided from the fallback: the HTTP layers can use only some).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// `Never` and `Now` are the HTTP layers'.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) enum Background {
    /// Awaited in place.
    Never,
    /// Past the cache's `soft_timeout`, if it has one.
    SoftTimeout,
    /// At once: the fallback is within its `stale-while-revalidate` window (HTTP).
    Now,
}

pub(crate) struct Inner<V> {
    pub(crate) name: Arc<str>,
    pub(crate) scheme: KeyScheme,
    pub(crate) ttl: Duration,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) jitter: f64,
    pub(crate) max_entry_size: usize,
    pub(crate) clock: Clock,
    pub(crate) l1: Option<L1<V>>,
    pub(crate) l2: Option<Arc<L2>>,
    pub(crate) flights: Arc<Flights<V>>,
    pub(crate) resilience: Resilience,
    pub(crate) epochs: Arc<Epochs>,
    /// Tags' invalidation times (`tags.rs`).
    pub(crate) tags: Arc<TagTimes>,
    /// The longest a tagged entry lives, fresh or as a fallback.
    pub(crate) tag_horizon: Duration,
    pub(crate) enabled: AtomicBool,
    pub(crate) ins: Arc<Instruments>,
}

impl<V: Clone> fmt::Debug for Cache<V> {
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

impl<V: CacheValue> Cache<V> {
    /// Starts building a cache named `name`.
    ///
    /// The name labels its metrics (`cache="name"`) and is part of every Redis key, so it
    /// may hold only `[A-Za-z0-9_.-]` (checked by [`build`](CacheBuilder::build)).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cache: layercake::Cache<Vec<String>> = layercake::Cache::builder("provider")
    ///     .namespace("myapp")
    ///     .time_to_live(Duration::from_secs(600))
    ///     .max_capacity(10_000)
    ///     .redis_url(std::env::var("REDIS_URL").ok()) // none: L1 only
    ///     .build()?;
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn builder(name: impl Into<String>) -> CacheBuilder<V> {
        CacheBuilder::new(name.into())
    }

    /// The value under `key`, from L1 or else Redis (within the read budget); `None` on a
    /// miss. A Redis hit is copied into L1 with the time it has left. An expired entry is a
    /// miss, except while fail-safe re-uses it after a failed load (see
    /// [`get_l1`](Self::get_l1)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = layercake::Cache::builder("embeddings").build()?;
    /// assert_eq!(cache.get("doc-1").await, None);
    /// cache.insert("doc-1", vec![0.25_f32, 0.5]).await;
    /// assert_eq!(cache.get("doc-1").await, Some(vec![0.25, 0.5]));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Option<V> {
        let key = key.as_ref();
        if !self.is_enabled() {
            self.count(Outcome::Bypass);
            return None;
        }
        if let Some(v) = self.get_l1(key) {
            return Some(v);
        }
        let ticket = self.inner.epochs.ticket(key);
        let found = self.l2_get(key, ticket).await;
        self.count(if found.is_some() {
            Outcome::HitL2
        } else {
            Outcome::Miss
        });
        found
    }

    /// The value under `key` in L1 alone: no I/O, never waits. Counts a hit; a miss is not
    /// counted, since the caller goes on to a lookup that counts it
    /// ([`get`](Self::get), [`load`](Self::load)). The layers' hit path.
    ///
    /// With fail-safe, this includes an expired value re-used for the fail-safe throttle
    /// after a failed load (counted as `stale`).
    #[inline]
    pub fn get_l1(&self, key: impl AsRef<[u8]>) -> Option<V> {
        self.l1_hit(key.as_ref()).map(|hit| hit.value)
    }

    /// [`get_l1`](Self::get_l1), saying whether the entry is due for an eager refresh.
    #[inline]
    pub(crate) fn l1_hit(&self, key: &[u8]) -> Option<Hit<V>> {
        if !self.is_enabled() {
            return None;
        }
        let hit = self.inner.l1.as_ref()?.get(key)?;
        self.count(if hit.stale {
            Outcome::Stale
        } else {
            Outcome::HitL1
        });
        Some(hit)
    }

    /// Stores `value` under `key` for the cache's `time_to_live`: in L1 at once, in Redis
    /// through the background writer (never waited for). A value larger than
    /// [`max_entry_size`](CacheBuilder::max_entry_size) once encoded is not stored (counted).
    pub async fn insert(&self, key: impl AsRef<[u8]>, value: V) {
        self.insert_with_ttl(key, value, Ttl::Default).await;
    }

    /// Stores `value` under `key` for `ttl` (capped by the cache's `time_to_live`), as
    /// [`insert`](Self::insert) does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let cache = layercake::Cache::builder("status").build()?;
    /// cache.insert_with_ttl("job-7", "running".to_string(), Duration::from_secs(2)).await;
    /// assert_eq!(cache.get("job-7").await.as_deref(), Some("running"));
    /// # Ok(()) }
    /// ```
    pub async fn insert_with_ttl(&self, key: impl AsRef<[u8]>, value: V, ttl: impl Into<Ttl>) {
        let key = key.as_ref();
        if !self.is_enabled() {
            return;
        }
        let ticket = self.inner.epochs.ticket(key);
        self.store(key, &value, ttl.into(), ticket);
    }

    /// Stores `value` under `key` with `tags`, as [`insert`](Self::insert) does: one
    /// [`invalidate_tag`](Self::invalidate_tag) of any of them removes it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use layercake::cache::Tags;
    /// let cache = layercake::Cache::builder("job_status").build()?;
    /// cache.insert_tagged("job-1", "running".to_string(), Tags::new(["user:7"])).await;
    /// cache.insert_tagged("job-2", "done".to_string(), Tags::new(["user:7"])).await;
    /// cache.insert_tagged("job-3", "queued".to_string(), Tags::new(["user:8"])).await;
    /// cache.invalidate_tag("user:7").await?;
    /// assert_eq!(cache.get("job-1").await, None);
    /// assert_eq!(cache.get("job-2").await, None);
    /// assert_eq!(cache.get("job-3").await.as_deref(), Some("queued"));
    /// # Ok(()) }
    /// ```
    pub async fn insert_tagged(&self, key: impl AsRef<[u8]>, value: V, tags: Tags) {
        self.insert_tagged_with_ttl(key, value, Ttl::Default, tags)
            .await;
    }

    /// [`insert_tagged`](Self::insert_tagged) for `ttl`, as
    /// [`insert_with_ttl`](Self::insert_with_ttl).
    pub async fn insert_tagged_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: V,
        ttl: impl Into<Ttl>,
        tags: Tags,
    ) {
        let key = key.as_ref();
        if !self.is_enabled() {
            return;
        }
        let ticket = self.inner.epochs.ticket(key);
        self.store_tagged(key, &value, ttl.into(), &tags, ticket);
    }

    /// The value under `key`, or, on a miss, the output of `init`, which is then stored.
    ///
    /// Concurrent calls for one key run one `init` (single flight) and all get its value.
    /// The future is only awaited on a miss; it is dropped unpolled on a hit.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = layercake::Cache::builder("embeddings").build()?;
    /// let embed = |text: &str| { let n = text.len() as f32; async move { vec![n, n / 2.0] } };
    /// let v = cache.get_with("hello", embed("hello")).await; // computed
    /// let w = cache.get_with("hello", embed("hello")).await; // from L1
    /// assert_eq!(v, w);
    /// assert_eq!((cache.stats().misses, cache.stats().hits_l1), (1, 1));
    /// # Ok(()) }
    /// ```
    pub async fn get_with(&self, key: impl AsRef<[u8]>, init: impl Future<Output = V>) -> V {
        let loaded = self
            .load(
                key,
                |never: &Infallible| match *never {},
                || async { Ok::<_, Infallible>(Loaded::Store(init.await, Ttl::Default)) },
            )
            .await;
        match loaded {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// The value under `key`, or, on a miss, the value `init` resolves to, which is then
    /// stored. An error is not stored, and is returned to every call that waited for the
    /// same load: a failing backend sees one call per miss, not one per caller.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = layercake::Cache::builder("rows").build()?;
    /// let row = cache.try_get_with("user:1", async { Ok::<_, std::io::Error>("ada".to_string()) }).await?;
    /// assert_eq!(row, "ada");
    /// let err = cache
    ///     .try_get_with("user:2", async { Err(std::io::Error::other("db down")) })
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "db down"); // an Arc<io::Error>, shared with every waiter
    /// # Ok(()) }
    /// ```
    pub async fn try_get_with<E>(
        &self,
        key: impl AsRef<[u8]>,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.load(
            key,
            |e: &Arc<E>| Some(Arc::clone(e)),
            || async {
                match init.await {
                    Ok(v) => Ok(Loaded::Store(v, Ttl::Default)),
                    Err(e) => Err(Arc::new(e)),
                }
            },
        )
        .await
    }

    /// The general form of [`try_get_with`](Self::try_get_with), on which the layers run:
    /// `init` says what may be done with its value ([`Loaded`]: store it for how long,
    /// share it with the calls waiting for the same key, or neither), and `share_error`
    /// copies an error for each waiting call (`None`: it cannot be copied).
    ///
    /// When the loading call fails and its error cannot be copied, the waiting calls start
    /// a new load one after another, each joined by the ones still waiting, so that the
    /// backend never gets more than one call at a time for the key; the first success is
    /// handed to all.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use layercake::cache::{Loaded, Ttl};
    ///
    /// let cache = layercake::Cache::builder("quotes").build()?;
    /// let quote = cache
    ///     .load("EURUSD", |e: &String| Some(e.clone()), || async {
    ///         // A quote is good for five seconds.
    ///         Ok::<_, String>(Loaded::Store(1.08_f64, Ttl::After(Duration::from_secs(5))))
    ///     })
    ///     .await?;
    /// assert_eq!(quote, 1.08);
    /// # Ok(()) }
    /// ```
    pub async fn load<E, F, Fut>(
        &self,
        key: impl AsRef<[u8]>,
        share_error: impl Fn(&E) -> Option<E>,
        init: F,
    ) -> Result<V, E>
    where
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        let served = self.load_served(key.as_ref(), share_error, init).await;
        served.map(|(v, _)| v)
    }

    /// [`load`](Self::load), saying whether the value is an expired entry served by
    /// fail-safe (for the HTTP layer's `x-cache: STALE`).
    pub(crate) async fn load_served<E, F, Fut>(
        &self,
        key: &[u8],
        share_error: impl Fn(&E) -> Option<E>,
        init: F,
    ) -> Result<(V, bool), E>
    where
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<V>, E>>,
    {
        if !self.is_enabled() {
            self.count(Outcome::Bypass);
            return init().await.map(|loaded| (loaded.into_value(), false));
        }
        if let Some(hit) = self.l1_hit(key) {
            return Ok((hit.value, hit.stale));
        }
        let in_place = |leader, ticket, fallback, init: F| {
            self.load_with_fallback(leader, ticket, fallback, init(), None)
        };
        // `init` borrows: no refresh in the background.
        self.load_miss(key, &share_error, init, in_place, |_, _| {})
            .await
    }

    /// [`get_with`](Self::get_with) for an `init` future that borrows nothing
    /// (`Send + 'static`), which the cache can therefore run in the background: with
    /// [`soft_timeout`](CacheBuilder::soft_timeout) and
    /// [`eager_refresh`](CacheBuilder::eager_refresh), which `get_with` cannot offer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let cache = layercake::Cache::builder("rates")
    ///     .time_to_live(Duration::from_secs(60))
    ///     .eager_refresh(0.8) // a hit after 48 s refreshes the entry in the background
    ///     .build()?;
    /// let fetch = |n: u32| async move { n * 2 };
    /// assert_eq!(cache.get_with_owned("a", fetch(21)).await, 42);
    /// assert_eq!(cache.get_with_owned("a", fetch(0)).await, 42); // a hit: `fetch(0)` never runs
    /// # Ok(()) }
    /// ```
    pub async fn get_with_owned<Fut>(&self, key: impl AsRef<[u8]>, init: Fut) -> V
    where
        Fut: Future<Output = V> + Send + 'static,
    {
        let loaded = self
            .load_owned(
                key,
                |never: &Infallible| match *never {},
                move || async move { Ok::<_, Infallible>(Loaded::Store(init.await, Ttl::Default)) },
            )
            .await;
        match loaded {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`try_get_with`](Self::try_get_with) for an `init` future that borrows nothing
    /// (`Send + 'static`): with [`soft_timeout`](CacheBuilder::soft_timeout) and
    /// [`eager_refresh`](CacheBuilder::eager_refresh) (see
    /// [`get_with_owned`](Self::get_with_owned)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use layercake::{Cache, MockClock};
    ///
    /// let clock = MockClock::new();
    /// let cache = Cache::builder("profiles")
    ///     .time_to_live(Duration::from_secs(60))
    ///     .fail_safe_max_duration(Duration::from_secs(3600))
    ///     .soft_timeout(Duration::from_millis(100))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let v1 = async { Ok::<_, std::io::Error>("v1".to_string()) };
    /// let v = cache.try_get_with_owned("ada", v1).await?;
    /// clock.advance(Duration::from_secs(61)); // expired
    /// // A slow backend: after 100 ms the caller gets the expired value...
    /// let slow = async {
    ///     tokio::time::sleep(Duration::from_millis(300)).await;
    ///     Ok::<_, std::io::Error>("v2".to_string())
    /// };
    /// assert_eq!(cache.try_get_with_owned("ada", slow).await?, v);
    /// // ...and the load completes in the background, then updates the cache.
    /// let updated = async {
    ///     while cache.get_l1("ada").as_deref() != Some("v2") {
    ///         tokio::time::sleep(Duration::from_millis(10)).await;
    ///     }
    /// };
    /// tokio::time::timeout(Duration::from_secs(5), updated).await?;
    /// # Ok(()) }
    /// ```
    pub async fn try_get_with_owned<E, Fut>(
        &self,
        key: impl AsRef<[u8]>,
        init: Fut,
    ) -> Result<V, Arc<E>>
    where
        E: Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.load_owned(
            key,
            |e: &Arc<E>| Some(Arc::clone(e)),
            move || async move {
                match init.await {
                    Ok(v) => Ok(Loaded::Store(v, Ttl::Default)),
                    Err(e) => Err(Arc::new(e)),
                }
            },
        )
        .await
    }

    /// [`load`](Self::load) for an `init` that borrows nothing (`Send + 'static`), which
    /// the cache can therefore run in the background, as the layers do:
    /// - with [`soft_timeout`](CacheBuilder::soft_timeout), a load that has an expired
    ///   entry to fall back on is spawned; past the soft timeout, the caller gets the
    ///   expired value and the load completes in the background (bounded by
    ///   [`hard_timeout`](CacheBuilder::hard_timeout)), storing its result;
    /// - with [`eager_refresh`](CacheBuilder::eager_refresh), a hit late in the entry's
    ///   life spawns `init` to replace it (one at a time per key) and returns the current
    ///   value.
    ///
    /// Both need a Tokio runtime (without one, the load is awaited in place and hits
    /// refresh nothing). A spawned load is not cancelled when its caller is dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use layercake::cache::{Loaded, Ttl};
    ///
    /// let cache = layercake::Cache::builder("quotes").eager_refresh(0.9).build()?;
    /// let quote = cache
    ///     .load_owned("EURUSD", |e: &String| Some(e.clone()), || async {
    ///         Ok::<_, String>(Loaded::Store(1.08_f64, Ttl::Default))
    ///     })
    ///     .await?;
    /// assert_eq!(quote, 1.08);
    /// # Ok(()) }
    /// ```
    pub async fn load_owned<E, S, F, Fut>(
        &self,
        key: impl AsRef<[u8]>,
        share_error: S,
        init: F,
    ) -> Result<V, E>
    where
        E: Send + 'static,
        S: Fn(&E) -> Option<E> + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
    {
        let key = key.as_ref();
        if !self.is_enabled() {
            self.count(Outcome::Bypass);
            return init().await.map(Loaded::into_value);
        }
        if let Some(hit) = self.l1_hit(key) {
            if hit.refresh {
                self.refresh(key, None, share_error, init);
            }
            return Ok(hit.value);
        }
        // One copy for the load, one for a refresh of a Redis hit past its refresh point.
        let share_error = Arc::new(share_error);
        let shared = Arc::clone(&share_error);
        let refresh =
            |init, current| self.refresh(key, Some(current), move |e: &E| shared(e), init);
        let background = |_: &V| Background::SoftTimeout;
        self.load_miss_owned(key, &*share_error, init, background, refresh)
            .await
            .map(|(v, _)| v)
    }

    /// [`load_owned`](Self::load_owned) without the eager refresh of a hit (the HTTP
    /// layers start their own), saying whether the value is a fallback (for
    /// `x-cache: STALE`). `background` says, from the fallback, whether the load may go on
    /// in the background (see [`Background`]); `on_due` is handed the unused `init` when
    /// the value is a Redis hit past its eager-refresh point.
    #[cfg(feature = "http")]
    pub(crate) async fn load_owned_served<E, S, F, Fut>(
        &self,
        key: &[u8],
        share_error: S,
        init: F,
        background: impl FnOnce(&V) -> Background,
        on_due: impl FnOnce(F, V),
    ) -> Result<(V, bool), E>
    where
        E: Send + 'static,
        S: Fn(&E) -> Option<E> + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
    {
        if !self.is_enabled() {
            self.count(Outcome::Bypass);
            return init().await.map(|loaded| (loaded.into_value(), false));
        }
        if let Some(hit) = self.l1_hit(key) {
            return Ok((hit.value, hit.stale));
        }
        self.load_miss_owned(key, &share_error, init, background, on_due)
            .await
    }

    /// An L1 miss of an owned load: a load with a fallback is spawned where `background`
    /// lets it outlive its caller; `on_due` gets `init` back for a Redis hit past its
    /// eager-refresh point.
    async fn load_miss_owned<E, S, F, Fut>(
        &self,
        key: &[u8],
        share_error: &S,
        init: F,
        background: impl FnOnce(&V) -> Background,
        on_due: impl FnOnce(F, V),
    ) -> Result<(V, bool), E>
    where
        E: Send + 'static,
        S: Fn(&E) -> Option<E> + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
    {
        let soft = self.inner.resilience.soft_timeout;
        self.load_miss(
            key,
            share_error,
            init,
            |leader, ticket, fallback, init| async move {
                let soft = match background(&fallback.0) {
                    Background::Now => Some((Duration::ZERO, Trigger::StaleWhileRevalidate)),
                    Background::SoftTimeout => soft.map(|soft| (soft, Trigger::SoftTimeout)),
                    Background::Never => None,
                };
                let spawn =
                    soft.and_then(|soft| Some((soft, tokio::runtime::Handle::try_current().ok()?)));
                let Some(((soft, trigger), rt)) = spawn else {
                    return self
                        .load_with_fallback(leader, ticket, fallback, init(), None)
                        .await;
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                let kept = fallback.0.clone();
                let cache = self.clone();
                let load = rt.spawn(async move {
                    let soft = Some((soft, trigger, tx));
                    cache
                        .load_with_fallback(leader, ticket, fallback, init(), soft)
                        .await
                });
                tokio::select! {
                    biased;
                    Ok(stale) = rx => (stale, true),
                    done = load => match done {
                        Ok(served) => served,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        // The runtime is shutting down.
                        Err(_) => (kept, true),
                    },
                }
            },
            on_due,
        )
        .await
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The Redis key under which `key` is stored (see the README for the scheme).
    ///
    /// ```
    /// let cache = layercake::Cache::<String>::builder("provider").namespace("myapp").build()?;
    /// let redis_key = cache.redis_key("query=rust");
    /// assert!(redis_key.starts_with("myapp:provider:v1:"));
    /// assert_eq!(redis_key.len(), "myapp:provider:v1:".len() + 32);
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn redis_key(&self, key: impl AsRef<[u8]>) -> String {
        self.inner.scheme.redis_key(key.as_ref())
    }

    /// Removes `key` from L1 and from Redis, and tells the other replicas to drop it from
    /// their L1.
    ///
    /// L1 is always cleared. The returned error says only that Redis could not be reached
    /// in time; the entry there then expires by its TTL, and other replicas' L1 copies by
    /// [`l1_time_to_live`](CacheBuilder::l1_time_to_live).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use layercake::Cache;
    ///
    /// let redis = std::env::var("LAYERCAKE_DOC_REDIS_URL").ok(); // none: L1 only
    /// let replica = || Cache::<String>::builder("provider").redis_url(redis.clone()).build();
    /// // Two replicas: in real life, one per process, on one Redis.
    /// let (a, b) = (replica()?, replica()?);
    /// a.insert("query=rust", "crates.io".to_string()).await;
    /// a.invalidate("query=rust").await?;
    /// assert_eq!(a.get_l1("query=rust"), None);
    ///
    /// if redis.is_some() {
    ///     // B hears of A's invalidations once it is subscribed.
    ///     let subscribed = async { while !b.stats().invalidations_subscribed {
    ///         tokio::time::sleep(Duration::from_millis(5)).await;
    ///     } };
    ///     tokio::time::timeout(Duration::from_secs(5), subscribed).await?;
    ///     b.insert("query=rust", "crates.io".to_string()).await;
    ///     a.invalidate("query=rust").await?;
    ///     let dropped = async { while b.get_l1("query=rust").is_some() {
    ///         tokio::time::sleep(Duration::from_millis(1)).await;
    ///     } };
    ///     tokio::time::timeout(Duration::from_secs(5), dropped).await?; // within a millisecond or so
    /// }
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
            Some(l2) => {
                let redis_key = self.inner.scheme.redis_key(key);
                let notice = Notice::Key(crate::key::digest(key));
                l2.delete_now(&[redis_key], notice).await
            }
            None => Ok(()),
        }
    }

    /// Removes every entry stored with `tag` ([`insert_tagged`](Self::insert_tagged),
    /// [`Loaded::StoreTagged`]), in this process' L1, in Redis, and in the other replicas'
    /// L1, however many there are: nothing is enumerated. The tag's invalidation time is
    /// recorded here and in Redis, and announced to the replicas; from then on an entry
    /// with the tag written at or before that time is a miss wherever it is read, and no
    /// fail-safe fallback. A load under way (of any key) stores nothing.
    ///
    /// The error says the time could not be written to Redis, or the replicas told: this
    /// process' L1 is done with regardless, and the others' copies then live at most
    /// [`l1_time_to_live`](CacheBuilder::l1_time_to_live) (and Redis' the entries' TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use layercake::cache::Tags;
    /// let cache = layercake::Cache::builder("provider_results").build()?;
    /// for q in ["rust", "tower", "redis"] {
    ///     cache.insert_tagged(q, q.len(), Tags::new(["provider:acme"])).await;
    /// }
    /// cache.insert("local", 5).await;
    /// cache.invalidate_tag("provider:acme").await?;
    /// assert_eq!(cache.get("tower").await, None);
    /// assert_eq!(cache.get("local").await, Some(5));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: impl AsRef<[u8]>) -> Result<(), L2Error> {
        let digest = crate::key::digest(tag.as_ref());
        let inner = &*self.inner;
        // First: a load under way may be of a tagged key; none stores what it read.
        inner.epochs.bump_all();
        let now = inner.clock.unix_ms();
        inner.tags.record(digest, now, now);
        match &inner.l2 {
            Some(l2) => {
                let key = inner.scheme.tag_key(&digest);
                let ttl = super::builder::tag_marker_ttl(inner.tag_horizon);
                l2.mark_tag(&key, now, ttl, Notice::Tag(digest)).await
            }
            None => Ok(()),
        }
    }

    /// Removes every entry of this cache from L1 and from Redis (all schema versions),
    /// tells the other replicas to empty their L1, and returns how many Redis keys were
    /// removed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = layercake::Cache::builder("provider").build()?;
    /// cache.insert("query=rust", "crates.io".to_string()).await;
    /// cache.clear().await?;
    /// assert_eq!(cache.get_l1("query=rust"), None);
    /// # Ok(()) }
    /// ```
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
}

impl<V: CacheValue> FlushL1 for Inner<V> {
    fn flush_l1(&self) -> usize {
        let Some(l1) = &self.l1 else { return 0 };
        let held = l1.len();
        l1.clear();
        self.ins.set_l1_entries(0);
        held
    }
}

impl<V: Clone> Cache<V> {
    /// A snapshot of this cache's counters and state.
    ///
    /// ```
    /// let cache = layercake::Cache::<String>::builder("provider").build()?;
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

    /// Switches caching on or off at run time. While off, lookups miss without looking,
    /// nothing is stored, and every layer built on this cache passes requests straight to
    /// its inner service (counted as `bypass`).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether caching is on (see [`set_enabled`](Cache::set_enabled)).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Counts a request that did not use the cache (`result="bypass"`): for layers and
    /// callers that decide per request that a lookup does not apply.
    pub fn record_bypass(&self) {
        self.count(Outcome::Bypass);
    }

    /// Now, by the cache's clock: the system clock, or a `MockClock` in tests (feature
    /// `test-util`). For ages of stored values (the HTTP layer's `Age` header).
    pub fn now(&self) -> SystemTime {
        crate::clock::from_unix_ms(self.inner.clock.unix_ms())
    }

    /// Counts a lookup's outcome and logs it at `debug` (with `debug` off, the log costs
    /// one cached check of the call site's interest).
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        self.inner.ins.outcome(outcome);
        tracing::debug!(cache = %self.inner.name, result = outcome.as_str(), "cache lookup");
    }
}
