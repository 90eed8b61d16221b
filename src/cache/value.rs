//! What a cache stores: the bound on its values, how long an entry lives, and what a load
//! hands back.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use super::tags::Tags;

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
    /// Fresh for `fresh` (capped by the cache's `time_to_live`; zero: not stored), then,
    /// expired, a fallback for `fallback` more: served instead of a failed load's result,
    /// as fail-safe does, whether or not the cache has
    /// [`fail_safe_max_duration`](crate::CacheBuilder::fail_safe_max_duration) (with it,
    /// the longer of the two lives applies). HTTP's `stale-if-error` (RFC 5861).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use layercake::cache::{Loaded, Ttl};
    /// use layercake::{Cache, MockClock};
    ///
    /// let clock = MockClock::new();
    /// let cache = Cache::builder("feeds").clock(clock.clone()).build()?; // no fail-safe
    /// let ttl = Ttl::WithFallback { fresh: Duration::from_secs(10), fallback: Duration::from_secs(600) };
    /// let load = |v: Result<&'static str, &'static str>| move || async move {
    ///     v.map(|v| Loaded::Store(v.to_string(), ttl)).map_err(str::to_string)
    /// };
    /// cache.load("feed", |e: &String| Some(e.clone()), load(Ok("items"))).await?;
    /// clock.advance(Duration::from_secs(60));
    /// let served = cache.load("feed", |e: &String| Some(e.clone()), load(Err("down"))).await?;
    /// assert_eq!(served, "items"); // this entry's own fallback window
    /// # Ok(()) }
    /// ```
    WithFallback {
        /// How long the entry is fresh.
        fresh: Duration,
        /// How long, once expired, it may answer a failed load.
        fallback: Duration,
    },
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
            Ttl::After(ttl) | Ttl::WithFallback { fresh: ttl, .. } if ttl.is_zero() => None,
            Ttl::After(ttl) | Ttl::WithFallback { fresh: ttl, .. } => Some(ttl.min(max)),
        }
    }

    /// The entry's own fallback window after it expires, if it has one.
    pub(crate) fn fallback(self) -> Option<Duration> {
        match self {
            Ttl::WithFallback { fallback, .. } => Some(fallback),
            Ttl::Default | Ttl::After(_) => None,
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
    /// [`Store`](Loaded::Store) it with these tags: one
    /// [`invalidate_tag`](crate::Cache::invalidate_tag) of any of them removes it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use layercake::cache::{Loaded, Tags, Ttl};
    ///
    /// let cache = layercake::Cache::builder("provider_results").build()?;
    /// let fetch = |q: &'static str| move || async move {
    ///     Ok::<_, String>(Loaded::StoreTagged(q.len(), Ttl::Default, Tags::new(["provider:acme"])))
    /// };
    /// cache.load("q=rust", |e: &String| Some(e.clone()), fetch("rust")).await?;
    /// assert_eq!(cache.get("q=rust").await, Some(4));
    /// cache.invalidate_tag("provider:acme").await?;
    /// assert_eq!(cache.get("q=rust").await, None);
    /// # Ok(()) }
    /// ```
    StoreTagged(V, Ttl, Tags),
    /// Do not store it, but hand it to the requests already waiting on the same key (an
    /// error page that is the same for everybody: they get it instead of each asking a
    /// failing backend again).
    Share(V),
    /// Neither store nor share it: it belongs to the request that loaded it (a response
    /// that sets a cookie). Each waiting request then loads for itself, at once.
    Private(V),
    /// A failure that still has a value for its caller (an HTTP `503` response): where an
    /// expired entry may serve as a fallback (fail-safe, or its own
    /// [`Ttl::WithFallback`]), the fallback is served instead, as for an error; otherwise
    /// this value, as [`Private`](Loaded::Private).
    Failed(V),
}

impl<V> Loaded<V> {
    /// The value.
    pub fn into_value(self) -> V {
        match self {
            Loaded::Store(v, _)
            | Loaded::StoreTagged(v, _, _)
            | Loaded::Share(v)
            | Loaded::Private(v)
            | Loaded::Failed(v) => v,
        }
    }
}
