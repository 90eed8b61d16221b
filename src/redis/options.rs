//! `RedisOptions`: the Redis settings shared by every builder that talks to Redis, and
//! `Endpoint`, their validated form with a ready-to-use client.

use std::fmt;
use std::time::Duration;

use redis::RedisResult;

use super::conn::Conn;
use super::target::{cluster_scheme, is_sentinel, Cluster, ClusterUrl, SentinelUrl, Target};
use super::url::{is_tls, parse, redact_url};
use crate::ConfigError;

/// How to reach Redis: the URL, time limits, pool size and TLS trust.
///
/// One group of settings for every part of the crate that talks to Redis: give it to
/// [`CacheBuilder::redis`](crate::CacheBuilder::redis) (the cache's L2 tier). Nothing is
/// checked or connected until the builder's `build()`, which names the first bad setting in
/// its [`ConfigError`]; building never waits for Redis.
///
/// `rediss://` URLs connect over TLS (crate feature `tls`, on by default), trusting the
/// system's root certificates plus any given to [`tls_root_ca`](Self::tls_root_ca). If the
/// application has not chosen a process-wide rustls `CryptoProvider`, the first TLS
/// connection installs ring's.
///
/// Neither `Debug`, nor a log line, nor an error ever shows the password.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use layercake::{Cache, RedisOptions};
///
/// # fn main() -> Result<(), layercake::ConfigError> {
/// let redis = RedisOptions::new("rediss://default:s3cr3t@redis.internal:6380/0")
///     .connect_timeout(Duration::from_millis(500))
///     .pool_size(4);
/// assert!(!format!("{redis:?}").contains("s3cr3t"));
///
/// // No Redis is running at that address: the cache still builds, and runs on L1 until
/// // Redis answers.
/// let cache: Cache<String> = Cache::builder("profiles").redis(redis).build()?;
/// # drop(cache);
///
/// // `None` (say, `std::env::var("REDIS_URL").ok()` with the variable unset): no Redis.
/// let l1_only = Cache::<String>::builder("profiles").redis(RedisOptions::new(None::<String>)).build()?;
/// # drop(l1_only);
///
/// // Bad settings are build errors that name the setting.
/// let err = Cache::<String>::builder("profiles")
///     .redis(RedisOptions::new("redis://localhost").pool_size(0))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), "pool_size");
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "options do nothing until given to a builder"]
pub struct RedisOptions {
    url: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    probe_interval: Duration,
    pool_size: u32,
    tls_root_ca: Option<Vec<u8>>,
}

impl Default for RedisOptions {
    /// No URL (no Redis), and the default of every other setting.
    fn default() -> Self {
        Self {
            url: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_millis(500),
            pool_size: 2,
            tls_root_ca: None,
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            // Never the password.
            .field("url", &self.url.as_deref().map(redact_url))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("pool_size", &self.pool_size)
            .field(
                "tls_root_ca",
                &self.tls_root_ca.as_ref().map(|pem| PemLen(pem.len())),
            )
            .finish()
    }
}

struct PemLen(usize);

impl fmt::Debug for PemLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of PEM>", self.0)
    }
}

impl RedisOptions {
    /// Options for the Redis at `url`
    /// (`redis[s]://[user[:password]@]host[:port][/db]`, or `unix://` / `redis+unix://`),
    /// for the primary that Redis Sentinels name
    /// (`redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db]`, port
    /// 26379 by default), for a Redis Cluster (`redis+cluster://host:port,...`, below), or
    /// for no Redis at all when `url` is `None`.
    ///
    /// With Sentinels, each connection asks them for the primary; a connection whose
    /// server stopped being the primary (the Sentinels name another at a health check, or
    /// it answers `READONLY`) is given up and the next one goes to the new primary. The
    /// credentials and database are the data nodes'; the Sentinels are asked without
    /// credentials, in plaintext. redis-rs parses no Sentinel URL of its own, so this
    /// spelling follows the `redis+sentinel://` form other clients (Lettuce, redis-py
    /// wrappers) use, with the service name as the path.
    ///
    /// A Redis Cluster is named by its seed nodes,
    /// `redis+cluster://[user[:password]@]host[:port][,host[:port]...]` (`rediss+cluster://`
    /// for TLS; port 6379 by default). The connection learns the cluster's layout from
    /// whichever seed answers, routes each command to its slot's primary, and follows
    /// `MOVED` / `ASK` redirections (a resharding) and failovers by itself. redis-rs takes a
    /// cluster as a list of node URLs (`ClusterClient::new`), which no single `redis://` URL
    /// can carry: the `+cluster` scheme carries the list in one string, so that one
    /// `REDIS_URL` variable still configures every deployment. The cache's keys spread over
    /// the slots; each queue keeps all its keys in one slot (a `{queue}` hash tag), so its
    /// scripts never see `CROSSSLOT`, while different queues spread over the shards.
    ///
    /// ```
    /// use layercake::RedisOptions;
    /// let sentinels = RedisOptions::new("redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster/0");
    /// let cluster = RedisOptions::new("redis+cluster://:s3cr3t@10.0.0.1:7000,10.0.0.2:7000");
    /// # let _ = (sentinels, cluster);
    /// ```
    pub fn new(url: impl IntoRedisUrl) -> Self {
        Self {
            url: url.into_redis_url(),
            ..Self::default()
        }
    }

    /// How long one connection attempt may take, TCP, TLS handshake and `AUTH` included
    /// (default 1 s). Also the budget of the background `PING` that checks a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The time budget of one command that is not a read on a request's path (default
    /// 500 ms): for the cache, a batch of background writes, and each step of
    /// `invalidate` / `clear`. It covers waiting for a connection and the command.
    pub fn command_timeout(mut self, budget: Duration) -> Self {
        self.command_timeout = budget;
        self
    }

    /// How often the connection is checked with a `PING`, and how often a lost one is
    /// tried again (default 500 ms).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Connections in the pool (default 2). Callers share one multiplexed connection,
    /// which pipelines their commands; the pool supplies and replaces it.
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, one or more `CERTIFICATE` blocks)
    /// for `rediss://` connections, in addition to the system's roots: for a Redis whose
    /// certificate a private CA signed. Only for `rediss://` URLs (`build()` rejects it
    /// with a `redis://` one).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_ca = Some(pem.into());
        self
    }

    /// Whether a URL is set.
    pub(crate) fn has_url(&self) -> bool {
        self.url.is_some()
    }

    pub(crate) fn set_url(&mut self, url: Option<String>) {
        self.url = url;
    }

    pub(crate) fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    pub(crate) fn set_command_timeout(&mut self, budget: Duration) {
        self.command_timeout = budget;
    }

    pub(crate) fn set_probe_interval(&mut self, interval: Duration) {
        self.probe_interval = interval;
    }

    pub(crate) fn set_pool_size(&mut self, connections: u32) {
        self.pool_size = connections;
    }

    /// The URL, redacted.
    pub(crate) fn redacted_url(&self) -> Option<String> {
        self.url.as_deref().map(redact_url)
    }

    /// Checks every setting and builds the client; `Ok(None)` when no URL is set. Connects
    /// to nothing.
    pub(crate) fn endpoint(&self) -> Result<Option<Endpoint>, ConfigError> {
        for (setting, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("probe_interval", self.probe_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be greater than zero"));
            }
        }
        if self.pool_size == 0 {
            return Err(ConfigError::new("pool_size", "must be at least 1"));
        }
        let Some(url) = self.url.as_deref() else {
            if self.tls_root_ca.is_some() {
                return Err(ConfigError::new("tls_root_ca", "set without a Redis URL"));
            }
            return Ok(None);
        };
        let (target, secret) = if is_sentinel(url) {
            if self.tls_root_ca.is_some() {
                return Err(ConfigError::new(
                    "tls_root_ca",
                    "not supported with Sentinel URLs (redis+sentinel:// is plaintext)",
                ));
            }
            let parsed = SentinelUrl::parse("redis_url", url)?;
            (parsed.target("redis_url")?, parsed.password.clone())
        } else if cluster_scheme(url).is_some() {
            let parsed = ClusterUrl::parse("redis_url", url)?;
            (self.cluster(url, &parsed)?, parsed.password)
        } else {
            let info = parse("redis_url", url)?;
            let secret = info.redis_settings().password().map(str::to_owned);
            (Target::Direct(Box::new(self.client(url, info)?)), secret)
        };
        Ok(Some(Endpoint {
            target,
            url: redact_url(url),
            secret,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            probe_interval: self.probe_interval,
            pool_size: self.pool_size,
        }))
    }

    /// The cluster client for `parsed`, and a client per seed node (for subscribers).
    fn cluster(&self, url: &str, parsed: &ClusterUrl) -> Result<Target, ConfigError> {
        let no_client = |e: redis::RedisError| {
            ConfigError::new(
                "redis_url",
                format!(
                    "`{}`: a cluster client: {}",
                    redact_url(url),
                    super::error::describe(&e)
                ),
            )
        };
        let mut seeds = Vec::with_capacity(parsed.nodes.len());
        for node in &parsed.nodes {
            seeds.push(self.client(node, parse("redis_url", node)?)?);
        }
        #[allow(unused_mut)]
        let mut builder = redis::cluster::ClusterClientBuilder::new(parsed.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout.max(self.connect_timeout));
        #[cfg(feature = "tls")]
        if let Some(pem) = &self.tls_root_ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = builder.build().map_err(no_client)?;
        Ok(Target::Cluster(std::sync::Arc::new(Cluster {
            client,
            seeds,
            next_seed: std::sync::atomic::AtomicUsize::new(0),
        })))
    }

    fn client(&self, url: &str, info: redis::ConnectionInfo) -> Result<redis::Client, ConfigError> {
        let tls = is_tls(url);
        let no_client = |e: redis::RedisError| {
            ConfigError::new(
                "redis_url",
                format!("`{}`: {}", redact_url(url), e.category()),
            )
        };
        match &self.tls_root_ca {
            None => {
                #[cfg(feature = "tls")]
                if tls {
                    tls_support::ensure_crypto_provider();
                }
                redis::Client::open(info).map_err(no_client)
            }
            Some(_) if !tls => Err(ConfigError::new(
                "tls_root_ca",
                format!(
                    "set for `{}`, which does not use TLS: use a rediss:// URL",
                    redact_url(url)
                ),
            )),
            #[cfg(feature = "tls")]
            Some(pem) => tls_support::client(info, pem),
            // Only settable with the feature; kept total rather than panicking.
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(ConfigError::new(
                "tls_root_ca",
                "needs the crate feature `tls`",
            )),
        }
    }
}

#[cfg(feature = "tls")]
mod tls_support {
    use crate::ConfigError;

    /// redis-rs builds each TLS `ClientConfig` from the process-wide default provider, and
    /// rustls panics when none was chosen and it cannot pick one (several compiled in).
    /// Choose ring, the one this crate builds, unless the application chose already.
    pub(super) fn ensure_crypto_provider() {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: theirs stands.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    pub(super) fn client(
        info: redis::ConnectionInfo,
        pem: &[u8],
    ) -> Result<redis::Client, ConfigError> {
        let bad = |why: String| ConfigError::new("tls_root_ca", why);
        // redis-rs skips PEM blocks that are not certificates: an empty store would make
        // every handshake fail later, so say it now.
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(bad("holds no PEM `CERTIFICATE` block".to_owned()));
        }
        ensure_crypto_provider();
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        )
        .map_err(|e| {
            bad(format!(
                "not usable as root certificates: {}",
                super::super::error::describe(&e)
            ))
        })
    }
}

/// Validated Redis settings with their client: what the connection supervisor and the
/// command runner work from.
pub(crate) struct Endpoint {
    target: Target,
    /// The URL with its password replaced, the only form that is ever shown.
    url: String,
    /// The password, only to scrub it from error text (see `scrub`).
    secret: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) pool_size: u32,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("probe_interval", &self.probe_interval)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The URL, redacted.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The response timeout of shared connections: longer than any budget a caller gives a
    /// command, so that the caller's own deadline is what fires, while a reply lost for
    /// good still frees its slot in the connection's pipeline.
    pub(crate) fn shared_response_timeout(&self) -> Duration {
        self.command_timeout.max(self.connect_timeout)
    }

    /// What connections are made to (a Redis, or the primary its Sentinels name).
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// A connection of its own, outside the pool (for blocking commands): it gives up on
    /// an answer after `response_timeout` (`None`: waits as long as the caller does).
    pub(crate) async fn dedicated(&self, response_timeout: Option<Duration>) -> RedisResult<Conn> {
        self.target
            .connect(self.connect_timeout, response_timeout)
            .await
    }

    /// `detail` with the password, should some error ever quote it, replaced.
    pub(crate) fn scrub(&self, detail: String) -> String {
        match &self.secret {
            Some(secret) if !secret.is_empty() && detail.contains(secret.as_str()) => {
                detail.replace(secret.as_str(), "***")
            }
            _ => detail,
        }
    }
}

/// What [`RedisOptions::new`] and [`CacheBuilder::redis_url`](crate::CacheBuilder::redis_url)
/// accept: a URL (`&str`, `String`) or an optional one (`Option<String>`, `Option<&str>`),
/// so that `std::env::var("REDIS_URL").ok()` fits.
pub trait IntoRedisUrl: sealed::Sealed {
    /// The URL, if any.
    fn into_redis_url(self) -> Option<String>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl Sealed for Option<String> {}
    impl Sealed for Option<&str> {}
}

impl IntoRedisUrl for &str {
    fn into_redis_url(self) -> Option<String> {
        Some(self.to_owned())
    }
}

impl IntoRedisUrl for String {
    fn into_redis_url(self) -> Option<String> {
        Some(self)
    }
}

impl IntoRedisUrl for &String {
    fn into_redis_url(self) -> Option<String> {
        Some(self.clone())
    }
}

impl IntoRedisUrl for Option<String> {
    fn into_redis_url(self) -> Option<String> {
        self
    }
}

impl IntoRedisUrl for Option<&str> {
    fn into_redis_url(self) -> Option<String> {
        self.map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_names_each_setting() {
        let url = "redis://127.0.0.1:1/";
        let cases = [
            (
                RedisOptions::new(url).connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                RedisOptions::new(url).command_timeout(Duration::ZERO),
                "command_timeout",
            ),
            (
                RedisOptions::new(url).probe_interval(Duration::ZERO),
                "probe_interval",
            ),
            (RedisOptions::new(url).pool_size(0), "pool_size"),
            (RedisOptions::new("http://127.0.0.1/"), "redis_url"),
        ];
        for (opts, setting) in cases {
            assert_eq!(opts.endpoint().unwrap_err().setting(), setting, "{opts:?}");
        }
        assert!(RedisOptions::new(None::<String>)
            .endpoint()
            .unwrap()
            .is_none());
        let ep = RedisOptions::new("redis://:pw@127.0.0.1:1/")
            .endpoint()
            .unwrap()
            .unwrap();
        assert_eq!(ep.url(), "redis://:***@127.0.0.1:1/");
        assert_eq!(ep.scrub("auth pw failed".into()), "auth *** failed");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn root_ca_needs_tls_and_a_certificate() {
        let pem = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        let err = RedisOptions::new("redis://127.0.0.1/")
            .tls_root_ca(pem)
            .endpoint()
            .unwrap_err();
        assert_eq!(err.setting(), "tls_root_ca");
        assert!(err.reason().contains("rediss://"), "{err}");
        let err = RedisOptions::new("rediss://127.0.0.1/")
            .tls_root_ca("nothing")
            .endpoint()
            .unwrap_err();
        assert_eq!(err.setting(), "tls_root_ca");
        let err = RedisOptions::new("rediss://127.0.0.1/")
            .tls_root_ca(pem)
            .endpoint()
            .unwrap_err();
        assert_eq!(err.setting(), "tls_root_ca");
        let err = RedisOptions::new(None::<String>)
            .tls_root_ca(pem)
            .endpoint()
            .unwrap_err();
        assert_eq!(err.setting(), "tls_root_ca");
        assert!(RedisOptions::new("rediss://u:pw@127.0.0.1:1/")
            .endpoint()
            .is_ok());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", RedisOptions::new("rediss://u:hunter2@host:6380/"));
        assert!(
            !shown.contains("hunter2") && shown.contains("rediss://u:***@host"),
            "{shown}"
        );
    }
}
