//! What a connection is made to: one Redis at a fixed address, the primary that a group
//! of Redis Sentinels names at the time (`redis+sentinel://`), or a Redis Cluster
//! (`redis+cluster://`).
//!
//! With Sentinels every new connection asks again, so after a failover the supervisor's
//! next connection goes to the promoted replica by itself: a lost connection (the old
//! primary died) makes the link reconnect, and reconnecting resolves the primary anew. A
//! cluster connection finds the cluster's layout from its seed nodes and follows it (slot
//! moves, failovers) by itself.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisResult};

use super::conn::Conn;
use super::url::redact_url;
use crate::ConfigError;

/// The scheme of a Sentinel URL.
pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// The Sentinels' port when a URL names none.
const SENTINEL_PORT: u16 = 26379;
/// The schemes of a cluster URL, plaintext and TLS.
const CLUSTER_SCHEMES: [(&str, bool); 2] =
    [("redis+cluster://", false), ("rediss+cluster://", true)];
/// A cluster node's port when a URL names none.
const REDIS_PORT: u16 = 6379;

#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis (boxed: a client is large, and targets are cloned into each pool).
    Direct(Box<redis::Client>),
    /// The primary of a service, as its Sentinels say (the client asks them, and checks
    /// the answer's `ROLE`, at each call).
    Sentinel(Arc<Sentinels>),
    /// A Redis Cluster, found from its seed nodes.
    Cluster(Arc<Cluster>),
}

pub(crate) struct Cluster {
    pub(crate) client: redis::cluster::ClusterClient,
    /// A client per seed node, for subscribers: a `PUBLISH` on any node of a cluster reaches
    /// the subscribers of every node. Taken in turn, so that a dead seed is not retried
    /// forever.
    pub(crate) seeds: Vec<redis::Client>,
    pub(crate) next_seed: AtomicUsize,
}

pub(crate) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    /// Where the shared connection's pool connected last.
    connected: std::sync::Mutex<Option<ConnectionAddr>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(_) => f.write_str("Target::Direct"),
            Self::Sentinel(_) => f.write_str("Target::Sentinel"),
            Self::Cluster(_) => f.write_str("Target::Cluster"),
        }
    }
}

impl Target {
    /// The client of the Redis to connect to now (with Sentinels: the primary they name,
    /// its `ROLE` checked; in a cluster: the next seed node, for a subscriber).
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Self::Direct(client) => Ok((**client).clone()),
            Self::Sentinel(sentinels) => sentinels.client.lock().await.async_get_client().await,
            Self::Cluster(cluster) => {
                let turn = cluster.next_seed.fetch_add(1, Ordering::Relaxed);
                cluster
                    .seeds
                    .get(turn % cluster.seeds.len().max(1))
                    .cloned()
                    .ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "a cluster URL without nodes",
                        ))
                    })
            }
        }
    }

    /// A new connection: it connects within `connect_timeout` and gives up on an answer
    /// after `response_timeout` (`None`: waits as long as its caller does).
    pub(crate) async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Option<Duration>,
    ) -> RedisResult<Conn> {
        if let Self::Cluster(cluster) = self {
            // A cluster connection has no "no timeout": a day stands for it (blocking
            // commands block for a second at a time).
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(response_timeout.unwrap_or(Duration::from_secs(86_400)));
            let conn = cluster
                .client
                .get_async_connection_with_config(config)
                .await?;
            return Ok(Conn::Cluster(conn));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(response_timeout);
        let client = self.client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.note_connected(&client);
        Ok(Conn::Node(conn))
    }

    /// Notes where the shared connection's pool connected last (for
    /// [`primary_moved`](Self::primary_moved) at its health checks).
    pub(crate) fn note_connected(&self, client: &redis::Client) {
        if let Self::Sentinel(sentinels) = self {
            *lock(&sentinels.connected) = Some(client.get_connection_info().addr().clone());
        }
    }

    /// Where the shared connection's pool connected last, with Sentinels.
    pub(crate) fn last_connected(&self) -> Option<ConnectionAddr> {
        match self {
            Self::Direct(_) | Self::Cluster(_) => None,
            Self::Sentinel(sentinels) => lock(&sentinels.connected).clone(),
        }
    }

    /// Whether the Sentinels now name another primary than `connected`. In a planned
    /// failover (`SENTINEL FAILOVER`) the old primary keeps taking writes until the
    /// Sentinels turn it into a replica, which may take seconds, and writes there are
    /// lost; owners ask at every health check so that their connections move on within
    /// about a probe interval of the promotion. `false` when the Sentinels cannot say.
    pub(crate) async fn primary_moved(&self, connected: &ConnectionAddr) -> bool {
        let Self::Sentinel(sentinels) = self else {
            return false;
        };
        match sentinels.client.lock().await.async_get_client().await {
            Ok(now) => now.get_connection_info().addr() != connected,
            Err(_) => false,
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `url` names Sentinels rather than a Redis.
pub(crate) fn is_sentinel(url: &str) -> bool {
    url.get(..SENTINEL_SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SENTINEL_SCHEME))
}

/// A parsed `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    pub(crate) sentinels: Vec<(String, u16)>,
    pub(crate) service: String,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl SentinelUrl {
    /// Parses `url`; errors name `setting` and show the URL redacted.
    pub(crate) fn parse(setting: &'static str, url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                setting,
                format!(
                    "`{}`: {why}; expected redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db]",
                    redact_url(url)
                ),
            )
        };
        let rest = url.get(SENTINEL_SCHEME.len()..).unwrap_or_default();
        // The user-info ends at the last `@` (a password may hold `/` or `@`).
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
        let sentinels = parse_hosts(hosts, SENTINEL_PORT).map_err(|why| bad(&why))?;
        let (service, db) = match path.split_once('/') {
            Some((service, db)) if !db.is_empty() => (
                service,
                db.parse::<i64>()
                    .map_err(|_| bad(&format!("`{db}` is not a database number")))?,
            ),
            Some((service, _)) => (service, 0),
            None => (path, 0),
        };
        if service.is_empty() {
            return Err(bad("no service name"));
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    Some(user.to_owned()).filter(|u| !u.is_empty()),
                    Some(password.to_owned()),
                ),
                // As in redis:// URLs, a lone user-info part is the password.
                None => (None, Some(info.to_owned()).filter(|p| !p.is_empty())),
            },
        };
        Ok(Self {
            sentinels,
            service: service.to_owned(),
            db,
            username,
            password,
        })
    }

    /// The client that asks these Sentinels for the service's primary. The credentials and
    /// the database are the data nodes'; the Sentinels are asked without credentials.
    pub(crate) fn target(&self, setting: &'static str) -> Result<Target, ConfigError> {
        let addrs = self
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let no_client = |e: redis::RedisError| {
            ConfigError::new(
                setting,
                format!("a Sentinel client: {}", super::error::describe(&e)),
            )
        };
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.service, SentinelServerType::Master)
                .map_err(no_client)?
                .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        let client = builder.build().map_err(no_client)?;
        Ok(Target::Sentinel(Arc::new(Sentinels {
            client: tokio::sync::Mutex::new(client),
            connected: std::sync::Mutex::new(None),
        })))
    }
}

/// The scheme of `url` if it names a cluster, with whether it uses TLS.
pub(crate) fn cluster_scheme(url: &str) -> Option<(&'static str, bool)> {
    CLUSTER_SCHEMES.into_iter().find(|(scheme, _)| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// A parsed `redis[s]+cluster://[user[:password]@]host[:port][,host[:port]...][/]`, as the
/// seed nodes' `redis[s]://` URLs that redis-rs' cluster client takes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClusterUrl {
    pub(crate) nodes: Vec<String>,
    pub(crate) password: Option<String>,
}

impl ClusterUrl {
    /// Parses `url`; errors name `setting` and show the URL redacted.
    pub(crate) fn parse(setting: &'static str, url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                setting,
                format!(
                    "`{}`: {why}; expected redis+cluster://[user[:password]@]host[:port][,host[:port]...]",
                    redact_url(url)
                ),
            )
        };
        let Some((scheme, tls)) = cluster_scheme(url) else {
            return Err(bad("not a cluster URL"));
        };
        let rest = url.get(scheme.len()..).unwrap_or_default();
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        // A cluster has database 0 only.
        if !path.is_empty() && path != "0" {
            return Err(bad("a cluster has no database but 0"));
        }
        let hosts = parse_hosts(hosts, REDIS_PORT).map_err(|why| bad(&why))?;
        // Percent-encoded, so that a password with `@` or `/` survives the node URLs.
        let prefix = match userinfo {
            Some(info) if !info.is_empty() => match info.split_once(':') {
                Some((user, password)) => format!("{}:{}@", encode(user), encode(password)),
                None => format!(":{}@", encode(info)),
            },
            _ => String::new(),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let password = userinfo.map(|info| match info.split_once(':') {
            Some((_, password)) => password.to_owned(),
            None => info.to_owned(),
        });
        Ok(Self {
            nodes: hosts
                .iter()
                .map(|(host, port)| format!("{scheme}://{prefix}{host}:{port}/"))
                .collect(),
            password: password.filter(|p| !p.is_empty()),
        })
    }
}

/// `part` with every byte but RFC 3986's unreserved ones percent-encoded.
fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `host[:port][,host[:port]...]`, with `default_port` where a host names none.
fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<(String, u16)>, String> {
    let mut parsed = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (
                name,
                port.parse::<u16>()
                    .map_err(|_| format!("`{port}` is not a port"))?,
            ),
            None => (host, default_port),
        };
        if name.is_empty() {
            return Err("a node without a host".to_owned());
        }
        parsed.push((name.to_owned(), port));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let url = SentinelUrl::parse(
            "redis_url",
            "redis+sentinel://app:s3/cr@t@h1:26380,h2,10.0.0.3:26381/mymaster/2",
        )
        .unwrap();
        assert_eq!(
            url,
            SentinelUrl {
                sentinels: vec![
                    ("h1".into(), 26380),
                    ("h2".into(), 26379),
                    ("10.0.0.3".into(), 26381)
                ],
                service: "mymaster".into(),
                db: 2,
                username: Some("app".into()),
                password: Some("s3/cr@t".into()),
            }
        );
        let plain = SentinelUrl::parse("redis_url", "REDIS+SENTINEL://h1/svc").unwrap();
        assert_eq!(
            (plain.service.as_str(), plain.db, plain.password),
            ("svc", 0, None)
        );
        assert!(is_sentinel("Redis+Sentinel://h/s") && !is_sentinel("redis://h"));
    }

    #[test]
    fn parses_cluster_urls_into_seed_urls() {
        let url = ClusterUrl::parse(
            "redis_url",
            "redis+cluster://app:s3@cr/t@h1:7000,h2,10.0.0.3:7002/",
        )
        .unwrap();
        assert_eq!(
            url.nodes,
            [
                "redis://app:s3%40cr%2Ft@h1:7000/",
                "redis://app:s3%40cr%2Ft@h2:6379/",
                "redis://app:s3%40cr%2Ft@10.0.0.3:7002/"
            ]
        );
        assert_eq!(url.password.as_deref(), Some("s3@cr/t"));
        let tls = ClusterUrl::parse("redis_url", "REDISS+CLUSTER://h1:7000").unwrap();
        assert_eq!(
            (tls.nodes, tls.password),
            (vec!["rediss://h1:7000/".to_owned()], None)
        );
        for (bad, why) in [
            ("redis+cluster://:pw@h1:x", "not a port"),
            ("redis+cluster://:pw@h1,", "without a host"),
            ("redis+cluster://:pw@h1/2", "no database but 0"),
        ] {
            let err = ClusterUrl::parse("redis_url", bad).unwrap_err();
            assert!(err.reason().contains(why), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn bad_sentinel_urls_say_why_without_the_password() {
        for (url, why) in [
            ("redis+sentinel://:pw@h1:26379", "no service name"),
            ("redis+sentinel://:pw@h1:x/svc", "not a port"),
            ("redis+sentinel://:pw@h1,/svc", "without a host"),
            ("redis+sentinel://:pw@h1/svc/zero", "not a database number"),
            ("redis+sentinel://:pw@h1/", "no service name"),
        ] {
            let err = SentinelUrl::parse("redis_url", url).unwrap_err();
            assert_eq!(err.setting(), "redis_url");
            assert!(err.reason().contains(why), "{url}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }
}
