use tower_layer::Layer;

use super::service::{CacheService, CloneErrors, DontShare, ShareWith, StoreAll};
use super::Cache;

/// Wraps a service with a [`Cache`] of its responses: see the [module docs](crate::cache).
///
/// `key` extracts the cache key from a request (`None` bypasses the cache); a
/// [`StorePolicy`](super::StorePolicy) set with [`store_when`](CacheLayer::store_when)
/// decides which responses are stored and for how long (default: every `Ok`, for the
/// cache's `time_to_live`).
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
pub struct CacheLayer<V, K, P = StoreAll, X = DontShare> {
    cache: Cache<V>,
    key: K,
    policy: P,
    share: X,
}

impl<V: Clone, K, P, X> std::fmt::Debug for CacheLayer<V, K, P, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<V, K: Clone, P: Clone, X: Clone> Clone for CacheLayer<V, K, P, X> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            key: self.key.clone(),
            policy: self.policy.clone(),
            share: self.share.clone(),
        }
    }
}

impl<V, K> CacheLayer<V, K> {
    /// A layer that caches responses of the wrapped service in `cache`, under the key that
    /// `key` extracts from each request.
    pub fn new(cache: Cache<V>, key: K) -> Self {
        Self {
            cache,
            key,
            policy: StoreAll,
            share: DontShare,
        }
    }
}

impl<V, K, P, X> CacheLayer<V, K, P, X> {
    /// Stores only the responses `policy` accepts, each for as long as it says (see
    /// [`StorePolicy`](super::StorePolicy)).
    ///
    /// ```
    /// # use layercake::{Cache, CacheLayer};
    /// # let cache = Cache::<Vec<String>>::builder("search").build().unwrap();
    /// // Do not cache empty result lists.
    /// let layer = CacheLayer::new(cache, |q: &String| Some(q.clone()))
    ///     .store_when(|hits: &Vec<String>| !hits.is_empty());
    /// # let _ = layer;
    /// ```
    pub fn store_when<P2>(self, policy: P2) -> CacheLayer<V, K, P2, X> {
        CacheLayer {
            cache: self.cache,
            key: self.key,
            policy,
            share: self.share,
        }
    }

    /// Hands a clone of the inner service's error to every request that waited for the
    /// same key, so that a failing service gets one call per miss, not one per waiting
    /// request. Needs `S::Error: Clone` (tonic's `Status` is); see also
    /// [`share_errors_with`](Self::share_errors_with).
    pub fn share_errors(self) -> CacheLayer<V, K, P, CloneErrors> {
        self.share_with(CloneErrors)
    }

    /// As [`share_errors`](Self::share_errors), for errors that do not implement `Clone`:
    /// `copy` makes each waiting request's error from the one the service returned.
    ///
    /// ```
    /// # use layercake::{BoxError, Cache, CacheLayer};
    /// # let cache = Cache::<String>::builder("search").build().unwrap();
    /// // A `BoxError` cannot be cloned; its message can.
    /// let layer = CacheLayer::new(cache, |q: &String| Some(q.clone()))
    ///     .share_errors_with(|e: &BoxError| BoxError::from(e.to_string()));
    /// # let _ = layer;
    /// ```
    pub fn share_errors_with<E, F>(self, copy: F) -> CacheLayer<V, K, P, ShareWith<F>>
    where
        F: Fn(&E) -> E,
    {
        self.share_with(ShareWith(copy))
    }

    fn share_with<X2>(self, share: X2) -> CacheLayer<V, K, P, X2> {
        CacheLayer {
            cache: self.cache,
            key: self.key,
            policy: self.policy,
            share,
        }
    }

    /// The cache this layer uses.
    pub fn cache(&self) -> &Cache<V> {
        &self.cache
    }
}

impl<S, V, K: Clone, P: Clone, X: Clone> Layer<S> for CacheLayer<V, K, P, X> {
    type Service = CacheService<S, V, K, P, X>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(
            inner,
            self.cache.clone(),
            self.key.clone(),
            self.policy.clone(),
            self.share.clone(),
        )
    }
}
