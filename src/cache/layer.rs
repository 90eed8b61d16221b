use tower_layer::Layer;

use super::service::{CacheService, StoreAll};
use super::Cache;

/// Wraps a service with a [`Cache`]: see the [module docs](crate::cache).
///
/// `key` extracts the cache key from a request (`None` bypasses the cache); a
/// [`StorePolicy`](super::StorePolicy) set with [`store_when`](CacheLayer::store_when)
/// decides which responses are stored (default: every `Ok`).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use layercake::{Cache, CacheLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder("square").time_to_live(Duration::from_secs(60)).build()?;
/// let svc = ServiceBuilder::new()
///     .layer(CacheLayer::new(cache.clone(), |n: &u64| Some(n.to_string())))
///     .service(service_fn(|n: u64| async move { Ok::<_, Infallible>(n * n) }));
///
/// assert_eq!(svc.clone().oneshot(12).await?, 144); // miss: calls the service
/// assert_eq!(svc.oneshot(12).await?, 144);         // hit: from L1
/// assert_eq!(cache.stats().hits_l1, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CacheLayer<K, P = StoreAll> {
    cache: Cache,
    key: K,
    policy: P,
}

impl<K> CacheLayer<K, StoreAll> {
    /// A layer that caches responses of the wrapped service in `cache`, under the key that
    /// `key` extracts from each request.
    pub fn new(cache: Cache, key: K) -> Self {
        Self {
            cache,
            key,
            policy: StoreAll,
        }
    }
}

impl<K, P> CacheLayer<K, P> {
    /// Stores only the responses for which `policy` says so.
    ///
    /// ```
    /// # use layercake::{Cache, CacheLayer};
    /// # let cache = Cache::builder("search").build().unwrap();
    /// // Do not cache empty result lists.
    /// let layer = CacheLayer::new(cache, |q: &String| Some(q.clone()))
    ///     .store_when(|hits: &Vec<String>| !hits.is_empty());
    /// # let _ = layer;
    /// ```
    pub fn store_when<P2>(self, policy: P2) -> CacheLayer<K, P2> {
        CacheLayer {
            cache: self.cache,
            key: self.key,
            policy,
        }
    }

    /// The cache this layer uses.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl<S, K: Clone, P: Clone> Layer<S> for CacheLayer<K, P> {
    type Service = CacheService<S, K, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(
            inner,
            self.cache.clone(),
            self.key.clone(),
            self.policy.clone(),
        )
    }
}
