//! What a cache stores: the bound on its values, how long an entry lives, and what a load
//! hands back.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

/// What a [`Cache`](crate::Cache) can hold: a value that clones (L1 hands out clones),
/// serializes (Redis holds it as MessagePack in the envelope of the README's format) and
/// moves between threads. Implemented for every such type.
pub trait CacheValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T> CacheValue for T where T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

/// How long an entry lives.
///
/// Every entry lives at most the cache's
/// [`time_to_live`](crate::CacheBuilder::time_to_live), shortened by a small random
/// [jitter](crate::CacheBuilder::ttl_jitter) so that entries written together do not expire
/// together.
///
/// ```
/// use std::time::Duration;
/// use layercake::cache::Ttl;
///
/// assert_eq!(Ttl::from(Duration::from_secs(5)), Ttl::After(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Ttl {
    /// The cache's `time_to_live`.
    #[default]
    Default,
    /// This long, capped by the cache's `time_to_live`. Zero: not stored.
    After(Duration),
}

impl From<Duration> for Ttl {
    fn from(ttl: Duration) -> Self {
        Ttl::After(ttl)
    }
}

impl Ttl {
    /// The entry's lifetime under a cache whose `time_to_live` is `max`; `None`: not stored.
    pub(crate) fn resolve(self, max: Duration) -> Option<Duration> {
        match self {
            Ttl::Default => Some(max),
            Ttl::After(ttl) if ttl.is_zero() => None,
            Ttl::After(ttl) => Some(ttl.min(max)),
        }
    }
}

/// What the load of a miss produced, for [`Cache::load`](crate::Cache::load): the value
/// and what may be done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loaded<V> {
    /// Store it (both tiers) for this long, and hand it to the requests waiting on the
    /// same key.
    Store(V, Ttl),
    /// Do not store it, but hand it to the requests already waiting on the same key (an
    /// error page that is the same for everybody: they get it instead of each asking a
    /// failing backend again).
    Share(V),
    /// Neither store nor share it: it belongs to the request that loaded it (a response
    /// that sets a cookie). Each waiting request then loads for itself, at once.
    Private(V),
}

impl<V> Loaded<V> {
    /// The value.
    pub fn into_value(self) -> V {
        match self {
            Loaded::Store(v, _) | Loaded::Share(v) | Loaded::Private(v) => v,
        }
    }
}
