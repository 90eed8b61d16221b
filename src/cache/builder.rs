//! `CacheBuilder`: every setting of a cache, validated at `build()`.

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::epoch::Epochs;
use super::flight::Flights;
use super::handle::{Cache, Inner};
use super::stats::Instruments;
use super::tags::TagTimes;
use super::tier::l1::L1;
use super::tier::l2::{L2Config, L2};
use super::tier::replica::{FlushL1, Replica};
use super::value::CacheValue;
use crate::clock::Clock;
use crate::key::{validate_part, KeyScheme};
use crate::redis::{IntoRedisUrl, RedisOptions};
use crate::ConfigError;

/// Builds a [`Cache`] of `V` values. Every setting has a default except the name;
/// [`build`] checks them all and names the first bad one.
///
/// [`build`]: CacheBuilder::build
#[derive(Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct CacheBuilder<V> {
    name: String,
    namespace: String,
    schema_version: u32,
    ttl: Duration,
    l1_ttl: Option<Duration>,
    jitter: f64,
    max_capacity: u64,
    l1_enabled: bool,
    max_entry_size: usize,
    redis: RedisOptions,
    l2: L2Config,
    replica_invalidation: bool,
    resilience: Resilience,
    clock: Clock,
    value: PhantomData<fn() -> V>,
}

/// What a cache does when its loads fail or are slow, and when entries near their end:
/// fail-safe, timeouts and eager refresh (validated by `build`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resilience {
    /// Fail-safe: how long after it was written an entry may serve as a fallback.
    pub(crate) fail_safe_max: Option<Duration>,
    pub(crate) throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    /// The fraction of an entry's TTL after which a hit refreshes it.
    pub(crate) eager_refresh: Option<f64>,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            fail_safe_max: None,
            throttle: Duration::from_secs(30),
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
        }
    }
}

impl<V> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("schema_version", &self.schema_version)
            .field("time_to_live", &self.ttl)
            .field("l1_time_to_live", &self.l1_ttl)
            .field("max_capacity", &self.max_capacity)
            .field("l1_enabled", &self.l1_enabled)
            // Never the password.
            .field("redis_url", &self.redis.redacted_url())
            .field("redis", &self.redis)
            .field("l2", &self.l2)
            .field("replica_invalidation", &self.replica_invalidation)
            .field("resilience", &self.resilience)
            .finish_non_exhaustive()
    }
}

impl<V: CacheValue> CacheBuilder<V> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            namespace: "layercake".to_owned(),
            schema_version: 1,
            ttl: Duration::from_secs(60),
            l1_ttl: None,
            jitter: 0.1,
            max_capacity: 10_000,
            l1_enabled: true,
            max_entry_size: 1024 * 1024,
            redis: RedisOptions::default(),
            l2: L2Config::default(),
            replica_invalidation: true,
            resilience: Resilience::default(),
            clock: Clock::system(),
            value: PhantomData,
        }
    }

    /// The first part of every Redis key (default `"layercake"`): one per application, so
    /// that applications sharing a Redis never read each other's entries.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The schema version in every Redis key (default 1). Bump it when the response type
    /// changes shape: old entries are then never read again and expire by their TTL.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// How long an entry lives (default 60 s). Entries are written with a random jitter
    /// that shortens this by up to [`ttl_jitter`](Self::ttl_jitter).
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A shorter lifetime for L1 copies (default: the same as `time_to_live`). It bounds how
    /// stale another replica's L1 copy can be where an invalidation cannot reach it:
    /// [`replica_invalidation`](Self::replica_invalidation) off, or Redis unreachable
    /// when the invalidation was made.
    pub fn l1_time_to_live(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The largest fraction by which a TTL is randomly shortened (default 0.1; 0 turns
    /// jitter off; at most 0.5).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// How many entries L1 holds at most (default 10 000).
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// Turns the in-process tier on or off (default on). Off makes a Redis-only cache, which
    /// needs a [`redis_url`](Self::redis_url).
    pub fn l1_enabled(mut self, enabled: bool) -> Self {
        self.l1_enabled = enabled;
        self
    }

    /// The largest encoded value that is stored in Redis, in bytes (default 1 MiB). Larger
    /// values are served but not stored (in either tier), and counted. An L1-only cache
    /// does not encode its values, so this does not apply to it: bound it by
    /// [`max_capacity`](Self::max_capacity).
    pub fn max_entry_size(mut self, bytes: usize) -> Self {
        self.max_entry_size = bytes;
        self
    }

    /// The Redis URL of the L2 tier (`redis[s]://[user[:password]@]host[:port][/db]`), or
    /// `None` for an L1-only cache. The cache never fails to build, nor a request to run,
    /// because Redis is down: it runs on L1 and connects when Redis appears. Shorthand for
    /// the URL of [`redis`](Self::redis).
    ///
    /// The password is never logged, nor shown by `Debug`.
    pub fn redis_url(mut self, url: impl IntoRedisUrl) -> Self {
        self.redis.set_url(url.into_redis_url());
        self
    }

    /// Every Redis connection setting at once (URL, timeouts, pool, TLS), replacing those
    /// set before by `redis_url`, `l2_write_timeout`, `l2_connect_timeout`,
    /// `probe_interval` and `l2_pool_size` (which, called after it, change it in turn).
    ///
    /// ```
    /// use layercake::{Cache, RedisOptions};
    ///
    /// let cache = Cache::<Vec<u8>>::builder("users")
    ///     .redis(RedisOptions::new(std::env::var("LAYERCAKE_DOC_REDIS_URL").ok()).pool_size(4))
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn redis(mut self, options: RedisOptions) -> Self {
        self.redis = options;
        self
    }

    /// The time budget of one Redis read (default 50 ms), covering pool checkout, waiting
    /// for a reconnect and the command. A read over budget is a miss.
    pub fn l2_timeout(mut self, budget: Duration) -> Self {
        self.l2.read_timeout = budget;
        self
    }

    /// The time budget of one batch of background writes and of `invalidate`/`clear` steps
    /// (default 500 ms). Shorthand for [`RedisOptions::command_timeout`].
    pub fn l2_write_timeout(mut self, budget: Duration) -> Self {
        self.redis.set_command_timeout(budget);
        self
    }

    /// How long one connection attempt may take (default 1 s). Shorthand for
    /// [`RedisOptions::connect_timeout`].
    pub fn l2_connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis.set_connect_timeout(timeout);
        self
    }

    /// Redis timeouts or I/O errors in a row that open the circuit breaker (default 5),
    /// provided the run has lasted at least `l2_timeout` since its first failure: reads
    /// that all time out at one moment (this process saturated, not Redis sick) count as
    /// one event. A dropped connection opens it at once.
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.l2.breaker_threshold = failures;
        self
    }

    /// How often a background probe tries Redis while the breaker is open, and checks the
    /// connection while it is closed (default 500 ms). Shorthand for
    /// [`RedisOptions::probe_interval`].
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.redis.set_probe_interval(interval);
        self
    }

    /// Redis reads in flight at most (default 512): the bulkhead. Over it, L2 is skipped.
    pub fn l2_max_in_flight(mut self, reads: usize) -> Self {
        self.l2.max_in_flight = reads;
        self
    }

    /// Writes that may wait for the background writer (default 1024). When full, writes
    /// are dropped and counted, never queued without bound.
    pub fn l2_write_queue(mut self, writes: usize) -> Self {
        self.l2.write_queue = writes;
        self
    }

    /// Connections in the pool (default 2). Requests share one multiplexed connection;
    /// the pool supplies and replaces it. Shorthand for [`RedisOptions::pool_size`].
    pub fn l2_pool_size(mut self, connections: u32) -> Self {
        self.redis.set_pool_size(connections);
        self
    }

    /// Whether `invalidate`, `invalidate_tag` and `clear` reach the L1 of the other
    /// replicas of this cache (default on; it takes effect with a Redis URL). Replicas are
    /// the caches of the same namespace and name on the same Redis, in any process.
    ///
    /// On, the cache announces each `invalidate` and `clear` on the Redis pub/sub channel
    /// `{namespace}:{name}:invalidations` (the README gives the message format), and, when
    /// subscribes to it on one dedicated connection, supervised in the
    /// background: a replica drops its L1 copy of an invalidated key within a millisecond
    /// or so on loopback. An announcement missed while a replica was not subscribed (Redis
    /// restarting, a network cut) is lost, so on subscribing again the replica empties its
    /// L1 (counted in `layercake_cache_l1_gap_flushes_total`). Until then, and where the
    /// announcing replica could not reach Redis, [`l1_time_to_live`](Self::l1_time_to_live)
    /// still bounds staleness. Subscribed, a cache also keeps the tag invalidation times it
    /// has read from Redis current, so a tagged L2 hit reads each tag's time once; without
    /// a subscription (this off, or while it is lost) every tagged L2 hit reads them (one
    /// `MGET`). A cache without L1 subscribes for the tag times alone.
    ///
    /// On by default because an `invalidate` that leaves other replicas serving the old
    /// value for a whole TTL is a surprise, and its cost is small: a connection per cache
    /// and process, a `PUBLISH` per invalidation, and, on each receiving replica, a miss for
    /// about 1/4096 of its L1 entries per invalidation (L1 entries are keyed by the
    /// application's key; the message names the key by its digest, so a received
    /// invalidation outdates the entries of the digest's stripe). Switch it off for a
    /// single replica, or for a Redis (or proxy) that does not offer pub/sub or whose ACL
    /// forbids the channel.
    ///
    /// ```
    /// use layercake::Cache;
    ///
    /// // One replica only: no channel, no subscriber connection.
    /// let cache = Cache::<String>::builder("sessions")
    ///     .redis_url(std::env::var("LAYERCAKE_DOC_REDIS_URL").ok())
    ///     .replica_invalidation(false)
    ///     .build()?;
    /// assert!(!cache.stats().invalidations_subscribed);
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn replica_invalidation(mut self, enabled: bool) -> Self {
        self.replica_invalidation = enabled;
        self
    }

    /// Turns fail-safe on (default off): an entry stays in both tiers up to `max` after it
    /// was written, and once expired, serves as a fallback when the load that would replace
    /// it fails (the inner service's error, the `init` future's `Err`) or takes longer than
    /// [`hard_timeout`](Self::hard_timeout) or [`soft_timeout`](Self::soft_timeout). The
    /// caller gets the expired value instead of the error (counted as `result="stale"` and
    /// in `layercake_cache_fail_safe_activations_total`), and it is re-used for
    /// [`fail_safe_throttle`](Self::fail_safe_throttle) before the backend is tried again.
    ///
    /// Its time to live is the entry's logical life; `max` is its physical one: the Redis
    /// key's TTL, and the stale-until of its envelope (a version 2 envelope: the README's
    /// "Stored values"; replicas of an older build read it as a miss, so turn fail-safe on
    /// once every replica runs this version). Must be at least `time_to_live`. Whether an
    /// entry may serve as a fallback is settled when it is written: a replica reading one
    /// that another replica wrote with fail-safe on uses it so, whatever its own setting.
    /// An entry can also carry a fallback window of its own ([`Ttl::WithFallback`](crate::cache::Ttl::WithFallback),
    /// HTTP's `stale-if-error`), with or without this setting.
    ///
    /// Off by default: it keeps entries in Redis for `max` rather than `time_to_live`
    /// (memory), and in L1 until then too (within [`max_capacity`](Self::max_capacity), so
    /// expired entries take room that fresh ones could use), and it answers with data older
    /// than the TTL the application chose, which only the application can say is better
    /// than an error.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use layercake::{Cache, MockClock};
    ///
    /// let clock = MockClock::new();
    /// let cache = Cache::builder("prices")
    ///     .time_to_live(Duration::from_secs(60))
    ///     .fail_safe_max_duration(Duration::from_secs(6 * 3600))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let price = cache.try_get_with("EURUSD", async { Ok::<_, std::io::Error>(1.08) }).await?;
    /// clock.advance(Duration::from_secs(120)); // expired
    /// let feed_down = async { Err(std::io::Error::other("feed down")) };
    /// let again = cache.try_get_with("EURUSD", feed_down).await?;
    /// assert_eq!(again, price); // the expired price, not the error
    /// assert_eq!(cache.stats().stale, 1);
    /// # Ok(()) }
    /// ```
    pub fn fail_safe_max_duration(mut self, max: Duration) -> Self {
        self.resilience.fail_safe_max = Some(max);
        self
    }

    /// How long a fallback served by fail-safe is re-used before the backend is tried again
    /// for its key (default 30 s): a failing backend sees one call per key per throttle
    /// period, not one per request. Also how long a failed eager refresh waits before the
    /// next one. The fallback is kept in L1 for it (its hits count as `stale`); without L1,
    /// it is written back to Redis with a fresh life of the throttle's length, which every
    /// replica then reads as a hit.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.resilience.throttle = throttle;
        self
    }

    /// With fail-safe, how long a caller waits for a load that has an expired entry to fall
    /// back on (default: no limit). Past it, the caller gets the expired value, and the
    /// load goes on in the background and stores its result when it completes (bounded by
    /// [`hard_timeout`](Self::hard_timeout)). Requests for the same key meanwhile get the
    /// expired value at once. Applies to the loads that can run in the background:
    /// [`CacheLayer::new`](crate::CacheLayer::new)'s, `CacheLayer::http`'s and
    /// `CacheLayer::grpc`'s (feature `http`), and those of
    /// [`Cache::load_owned`](crate::Cache::load_owned) and the other `*_owned` methods,
    /// whose `init` borrows nothing. Needs
    /// [`fail_safe_max_duration`](Self::fail_safe_max_duration).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.resilience.soft_timeout = Some(timeout);
        self
    }

    /// The longest a load with something to fall back on may run (default: no limit): a
    /// load with an expired entry to serve instead (fail-safe), and the loads that run in
    /// the background (eager refresh, a load past its soft timeout). Past it, the load is
    /// dropped and the fallback served (or, in the background, the current entry kept).
    ///
    /// A load with nothing to fall back on is not cut short by the cache, which cannot make
    /// an error of the caller's type: bound it where the error is made
    /// (`tower::timeout::TimeoutLayer` under the cache layer, `tokio::time::timeout` in the
    /// `init` future). Its timeout error is then an error like any other, which fail-safe
    /// answers with an expired entry where one exists.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.resilience.hard_timeout = Some(timeout);
        self
    }

    /// Refreshes an entry in the background when it is hit after `fraction` of its time to
    /// live (default off; `0 < fraction < 1`, for example 0.8), in L1 or read from Redis
    /// (by a replica that did not have it, or a cache without L1): the hit is served the
    /// current value, and one load (single flight: however many hits) replaces the entry
    /// before it expires, so that a hot key never expires under load. Requests that miss
    /// L1 while a refresh started by a Redis hit runs get the value it started from. Applies where the
    /// load can run in the background: the services of
    /// [`CacheLayer::new`](crate::CacheLayer::new), `CacheLayer::http` and
    /// `CacheLayer::grpc` (feature `http`), and the `*_owned` methods of
    /// [`Cache`](crate::Cache). A failed refresh keeps the current entry, and the next one
    /// waits for [`fail_safe_throttle`](Self::fail_safe_throttle).
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.resilience.eager_refresh = Some(fraction);
        self
    }

    /// The time source (default: the system clock), for tests (feature `test-util`): a
    /// [`MockClock`](crate::MockClock) moved forward by hand instead of sleeping.
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn clock(mut self, clock: crate::MockClock) -> Self {
        self.clock = clock.into();
        self
    }

    /// Checks the settings and builds the cache. It never waits for Redis: built inside a
    /// Tokio runtime, it starts connecting in the background at once; built outside one,
    /// once it is first used inside a runtime.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad setting: an empty or non-`[A-Za-z0-9_.-]`
    /// name or namespace, a zero capacity, TTL, timeout or limit, a jitter outside
    /// `0..=0.5`, an unparsable Redis URL, or L1 switched off without a Redis URL.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercake::Cache;
    ///
    /// let err = Cache::<String>::builder("search").time_to_live(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.setting(), "time_to_live");
    /// let err = Cache::<String>::builder("search").redis_url("http://nope").build().unwrap_err();
    /// assert_eq!(err.setting(), "redis_url");
    /// ```
    pub fn build(self) -> Result<Cache<V>, ConfigError> {
        validate_part("name", &self.name)?;
        validate_part("namespace", &self.namespace)?;
        if self.ttl.is_zero() {
            return Err(ConfigError::new(
                "time_to_live",
                "must be greater than zero",
            ));
        }
        if self.ttl.as_millis() < 1 {
            return Err(ConfigError::new(
                "time_to_live",
                "must be at least 1 ms (Redis TTL resolution)",
            ));
        }
        if self.l1_ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "l1_time_to_live",
                "must be greater than zero",
            ));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(ConfigError::new(
                "ttl_jitter",
                format!("must be within 0..=0.5, got {}", self.jitter),
            ));
        }
        if self.max_capacity == 0 {
            return Err(ConfigError::new(
                "max_capacity",
                "must be at least 1 (to run without L1, use l1_enabled(false) with a redis_url)",
            ));
        }
        if self.max_entry_size == 0 {
            return Err(ConfigError::new(
                "max_entry_size",
                "must be at least 1 byte",
            ));
        }
        let l2 = &self.l2;
        if l2.read_timeout.is_zero() {
            return Err(ConfigError::new("l2_timeout", "must be greater than zero"));
        }
        if l2.breaker_threshold == 0 {
            return Err(ConfigError::new("breaker_threshold", "must be at least 1"));
        }
        if l2.max_in_flight == 0 {
            return Err(ConfigError::new("l2_max_in_flight", "must be at least 1"));
        }
        if l2.write_queue == 0 {
            return Err(ConfigError::new("l2_write_queue", "must be at least 1"));
        }
        let r = &self.resilience;
        if let Some(max) = r.fail_safe_max {
            if max < self.ttl {
                return Err(ConfigError::new(
                    "fail_safe_max_duration",
                    format!(
                        "must be at least time_to_live ({:?}), got {max:?}",
                        self.ttl
                    ),
                ));
            }
        }
        if r.throttle.is_zero() {
            return Err(ConfigError::new(
                "fail_safe_throttle",
                "must be greater than zero",
            ));
        }
        if let Some(soft) = r.soft_timeout {
            if soft.is_zero() {
                return Err(ConfigError::new(
                    "soft_timeout",
                    "must be greater than zero",
                ));
            }
            if r.fail_safe_max.is_none() {
                return Err(ConfigError::new(
                    "soft_timeout",
                    "needs fail_safe_max_duration: without fail-safe there is no expired entry to serve",
                ));
            }
        }
        if let Some(hard) = r.hard_timeout {
            if hard.is_zero() {
                return Err(ConfigError::new(
                    "hard_timeout",
                    "must be greater than zero",
                ));
            }
            if r.soft_timeout.is_some_and(|soft| soft > hard) {
                return Err(ConfigError::new(
                    "hard_timeout",
                    "must be at least soft_timeout",
                ));
            }
        }
        if let Some(f) = r.eager_refresh {
            if !(f > 0.0 && f < 1.0) {
                return Err(ConfigError::new(
                    "eager_refresh",
                    format!("must be within 0 < fraction < 1, got {f}"),
                ));
            }
        }
        if !self.l1_enabled && !self.redis.has_url() {
            return Err(ConfigError::new(
                "l1_enabled",
                "a cache needs at least one tier: with L1 off, set a redis_url",
            ));
        }

        crate::metrics::describe_once();
        let endpoint = self.redis.endpoint()?;
        let name: Arc<str> = Arc::from(self.name.as_str());
        let ins = Arc::new(Instruments::new(&name));
        let replicas = self.replica_invalidation && endpoint.is_some();
        // Shared stripes only where other replicas' invalidations are received.
        let epochs = Arc::new(Epochs::new(replicas && self.l1_enabled));
        let scheme = KeyScheme::new(&self.namespace, &self.name, self.schema_version);
        // The longest a tagged entry may live (its physical life is capped by it); a tag's
        // invalidation time is kept a minute longer (clock differences between replicas).
        let tag_horizon = self
            .ttl
            .max(self.resilience.fail_safe_max.unwrap_or_default());
        let tags = Arc::new(TagTimes::new(
            u64::try_from(tag_marker_ttl(tag_horizon).as_millis()).unwrap_or(u64::MAX),
        ));
        let l1 = self.l1_enabled.then(|| {
            L1::new(
                self.max_capacity,
                self.clock.clone(),
                Arc::clone(&epochs),
                Arc::clone(&tags),
            )
        });
        let l2_config = self.l2;
        // Cyclic: the replica subscriber empties this cache's L1 through a weak handle.
        let inner = Arc::new_cyclic(|me: &Weak<Inner<V>>| {
            let flush = l1.is_some().then(|| me.clone() as Weak<dyn FlushL1>);
            let l2 = endpoint.map(|endpoint| {
                let replica = replicas.then(|| {
                    Replica::new(
                        scheme.channel(),
                        flush,
                        (Arc::clone(&epochs), Arc::clone(&tags), self.clock.clone()),
                        Arc::clone(&ins),
                        Arc::clone(&name),
                    )
                });
                Arc::new(L2::new(
                    endpoint,
                    l2_config,
                    Arc::clone(&name),
                    Arc::clone(&ins),
                    Arc::clone(&epochs),
                    replica,
                ))
            });
            Inner {
                scheme,
                name,
                ttl: self.ttl,
                l1_ttl: self.l1_ttl,
                jitter: self.jitter,
                max_entry_size: self.max_entry_size,
                clock: self.clock,
                l1,
                l2,
                flights: Arc::new(Flights::default()),
                resilience: self.resilience,
                epochs,
                tags,
                tag_horizon,
                enabled: AtomicBool::new(true),
                ins,
            }
        });
        inner.ins.set_breaker_open(false);
        // Connect now rather than on the first request: an idle cache (a readiness probe
        // reading `stats().l2_connected()` before any traffic) would otherwise report
        // `Connecting` forever. A no-op outside a runtime.
        if let Some(l2) = &inner.l2 {
            l2.ensure_started();
        }
        Ok(Cache { inner })
    }
}

/// How long a tag's invalidation time is kept (in Redis and here), for entries that live at
/// most `horizon`.
pub(crate) fn tag_marker_ttl(horizon: Duration) -> Duration {
    horizon.saturating_add(Duration::from_secs(60))
}
