//! What a connection is made to: one Redis at a fixed address, or the primary that a group
//! of Redis Sentinels names at the time (`redis+sentinel://`).
//!
//! Every new connection asks again, so after a failover the supervisor's next connection
//! goes to the promoted replica by itself: a lost connection (the old primary died) makes
//! the link reconnect, and reconnecting resolves the primary anew.

use std::fmt;
use std::sync::Arc;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisResult};

use super::url::redact_url;
use crate::ConfigError;

/// The scheme of a Sentinel URL.
pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel://";
/// The Sentinels' port when a URL names none.
const SENTINEL_PORT: u16 = 26379;

#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis (boxed: a client is large, and targets are cloned into each pool).
    Direct(Box<redis::Client>),
    /// The primary of a service, as its Sentinels say (the client asks them, and checks
    /// the answer's `ROLE`, at each call).
    Sentinel(Arc<Sentinels>),
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
        }
    }
}

impl Target {
    /// The client of the Redis to connect to now (with Sentinels: the primary they name,
    /// its `ROLE` checked).
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Self::Direct(client) => Ok((**client).clone()),
            Self::Sentinel(sentinels) => sentinels.client.lock().await.async_get_client().await,
        }
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
            Self::Direct(_) => None,
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
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| bad(&format!("`{port}` is not a port")))?,
                ),
                None => (host, SENTINEL_PORT),
            };
            if name.is_empty() {
                return Err(bad("a Sentinel without a host"));
            }
            sentinels.push((name.to_owned(), port));
        }
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
