//! `CacheBuilder`: every setting of a cache, validated at `build()`.

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::epoch::Epochs;
use super::flight::Flights;
use super::handle::{Cache, Inner};
use super::stats::Instruments;
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
    clock: Clock,
    value: PhantomData<fn() -> V>,
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

    /// Consecutive Redis timeouts or I/O errors that open the circuit breaker (default 5).
    /// A dropped connection opens it at once.
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

    /// Whether `invalidate` and `clear` reach the L1 of the other replicas of this cache
    /// (default on; it takes effect with a Redis URL). Replicas are the caches of the same
    /// namespace and name on the same Redis, in any process.
    ///
    /// On, the cache announces each `invalidate` and `clear` on the Redis pub/sub channel
    /// `{namespace}:{name}:invalidations` (the README gives the message format), and, when
    /// it has an L1, subscribes to it on one dedicated connection, supervised in the
    /// background: a replica drops its L1 copy of an invalidated key within a millisecond
    /// or so on loopback. An announcement missed while a replica was not subscribed (Redis
    /// restarting, a network cut) is lost, so on subscribing again the replica empties its
    /// L1 (counted in `layercake_cache_l1_gap_flushes_total`). Until then, and where the
    /// announcing replica could not reach Redis, [`l1_time_to_live`](Self::l1_time_to_live)
    /// still bounds staleness.
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
        let l1 = self
            .l1_enabled
            .then(|| L1::new(self.max_capacity, self.clock.clone(), Arc::clone(&epochs)));
        let l2_config = self.l2;
        // Cyclic: the replica subscriber empties this cache's L1 through a weak handle.
        let inner = Arc::new_cyclic(|me: &Weak<Inner<V>>| {
            let flush = l1.is_some().then(|| me.clone() as Weak<dyn FlushL1>);
            let l2 = endpoint.map(|endpoint| {
                let replica = replicas.then(|| {
                    Replica::new(
                        scheme.channel(),
                        flush,
                        Arc::clone(&epochs),
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
                flights: Flights::default(),
                epochs,
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
