use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;

use super::future::ResponseFuture;
use super::tags::Tags;
use super::value::{CacheValue, Loaded, Ttl};
use super::Cache;

/// Extracts a cache key from a request; `None` bypasses the cache for that request.
///
/// Implemented for every `Fn(&Req) -> Option<K>` where `K: AsRef<[u8]>` (a `String`, a
/// `Vec<u8>`, `&'static str`, `bytes::Bytes`...). The key is used as is in L1 and hashed
/// into the Redis key (see the README for the scheme).
pub trait KeyExtractor<Req> {
    /// The key type.
    type Key: AsRef<[u8]>;

    /// The key for `req`, or `None` to bypass the cache.
    fn key(&self, req: &Req) -> Option<Self::Key>;
}

impl<Req, K, F> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<K>,
    K: AsRef<[u8]>,
{
    type Key = K;

    fn key(&self, req: &Req) -> Option<K> {
        self(req)
    }
}

/// Decides whether a successful response is stored, and for how long.
///
/// Implemented for every `Fn(&Res) -> D` where `D` is a [`StoreDecision`]: a `bool`
/// (store for the cache's `time_to_live` or not), a [`Ttl`] or a `Duration` (store for
/// that long), or an `Option` of either (`None`: not stored). Errors are never stored.
///
/// ```
/// use std::time::Duration;
/// # use layercake::{Cache, CacheLayer};
/// # struct Quote { price: f64, stale_after_secs: u64 }
/// # let cache = Cache::<Vec<String>>::builder("search").build().unwrap();
/// // Empty result lists are not stored; the others for the cache's time_to_live.
/// let layer = CacheLayer::new(cache, |q: &String| Some(q.clone()))
///     .store_when(|hits: &Vec<String>| !hits.is_empty());
/// # let _ = layer;
/// // Each response says how long it is good for.
/// let policy = |q: &Quote| (q.price > 0.0).then(|| Duration::from_secs(q.stale_after_secs));
/// # let _ = policy;
/// ```
///
/// A decision paired with [`Tags`] stores the response with them, for
/// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use layercake::cache::Tags;
/// use layercake::{Cache, CacheLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Answer { provider: String, text: String }
///
/// let cache = Cache::<Answer>::builder("provider_results").build()?;
/// let svc = CacheLayer::new(cache.clone(), |q: &String| Some(q.clone()))
///     // Every result stored under its provider's tag.
///     .store_when(|a: &Answer| (true, Tags::new([format!("provider:{}", a.provider)])))
///     .layer(service_fn(|q: String| async move {
///         Ok::<_, Infallible>(Answer { provider: "acme".into(), text: q })
///     }));
/// svc.clone().oneshot("rust".to_string()).await?;
/// assert!(cache.get("rust").await.is_some());
/// cache.invalidate_tag("provider:acme").await?;
/// assert!(cache.get("rust").await.is_none());
/// # Ok(()) }
/// ```
pub trait StorePolicy<Res> {
    /// How long to store `res`; `None`: not stored.
    fn ttl(&self, res: &Res) -> Option<Ttl>;

    /// How long to store `res`, and with which tags; `None`: not stored. By default,
    /// [`ttl`](Self::ttl) without tags.
    fn store(&self, res: &Res) -> Option<(Ttl, Tags)> {
        self.ttl(res).map(|ttl| (ttl, Tags::none()))
    }
}

impl<Res, F, D> StorePolicy<Res> for F
where
    F: Fn(&Res) -> D,
    D: StoreDecision,
{
    fn ttl(&self, res: &Res) -> Option<Ttl> {
        self(res).into_ttl()
    }

    fn store(&self, res: &Res) -> Option<(Ttl, Tags)> {
        self(res).into_stored()
    }
}

/// What a [`StorePolicy`] closure may return: any of these alone, or paired with
/// [`Tags`] (`(decision, tags)`) to store the response with them.
pub trait StoreDecision {
    /// How long to store; `None`: not stored.
    fn into_ttl(self) -> Option<Ttl>;

    /// How long to store and with which tags; `None`: not stored. By default, no tags.
    fn into_stored(self) -> Option<(Ttl, Tags)>
    where
        Self: Sized,
    {
        self.into_ttl().map(|ttl| (ttl, Tags::none()))
    }
}

impl<D: StoreDecision> StoreDecision for (D, Tags) {
    fn into_ttl(self) -> Option<Ttl> {
        self.0.into_ttl()
    }

    fn into_stored(self) -> Option<(Ttl, Tags)> {
        let (decision, tags) = self;
        decision.into_ttl().map(|ttl| (ttl, tags))
    }
}

impl StoreDecision for bool {
    fn into_ttl(self) -> Option<Ttl> {
        self.then_some(Ttl::Default)
    }
}

impl StoreDecision for Ttl {
    fn into_ttl(self) -> Option<Ttl> {
        Some(self)
    }
}

impl StoreDecision for Duration {
    fn into_ttl(self) -> Option<Ttl> {
        Some(Ttl::After(self))
    }
}

impl<T: StoreDecision> StoreDecision for Option<T> {
    fn into_ttl(self) -> Option<Ttl> {
        self.and_then(StoreDecision::into_ttl)
    }

    fn into_stored(self) -> Option<(Ttl, Tags)> {
        self.and_then(StoreDecision::into_stored)
    }
}

/// The default [`StorePolicy`]: every `Ok` response is stored for the cache's
/// `time_to_live`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreAll;

impl<Res> StorePolicy<Res> for StoreAll {
    fn ttl(&self, _: &Res) -> Option<Ttl> {
        Some(Ttl::Default)
    }
}

/// How a layer hands an inner service's error to the requests that waited for the same
/// key (single flight).
///
/// Every waiting request must get an error of the service's own type, and only the inner
/// service makes those, so an error that cannot be copied cannot be shared: with
/// [`DontShare`] (the default), the waiting requests then try again one after another,
/// so that the failing service gets one call at a time for the key, however many wait.
/// [`CloneErrors`] ([`CacheLayer::share_errors`](super::CacheLayer::share_errors)) and
/// [`ShareWith`] ([`CacheLayer::share_errors_with`](super::CacheLayer::share_errors_with))
/// copy the error instead: one failed call answers every waiting request.
pub trait ShareError<E> {
    /// A copy of `error` for one waiting request; `None`: it cannot be copied.
    fn share(&self, error: &E) -> Option<E>;
}

/// Errors are not copied; see [`ShareError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DontShare;

impl<E> ShareError<E> for DontShare {
    fn share(&self, _: &E) -> Option<E> {
        None
    }
}

/// Errors are cloned for each waiting request; see [`ShareError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneErrors;

impl<E: Clone> ShareError<E> for CloneErrors {
    fn share(&self, error: &E) -> Option<E> {
        Some(error.clone())
    }
}

/// Errors are copied by a function for each waiting request; see [`ShareError`].
#[derive(Clone)]
pub struct ShareWith<F>(pub(crate) F);

impl<F> fmt::Debug for ShareWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("ShareWith")
    }
}

impl<E, F: Fn(&E) -> E> ShareError<E> for ShareWith<F> {
    fn share(&self, error: &E) -> Option<E> {
        Some((self.0)(error))
    }
}

/// The service built by [`CacheLayer`](super::CacheLayer).
///
/// Its `Error` is the inner service's: the cache adds no errors of its own. `poll_ready` is
/// the inner service's, and a clone starts unready, as a fresh clone of the inner service
/// does. It runs on the cache's public API: [`Cache::get_l1`] for the hit path, and
/// [`Cache::load`] for a miss.
pub struct CacheService<S, V, K, P = StoreAll, X = DontShare> {
    inner: S,
    cache: Cache<V>,
    key: K,
    policy: P,
    share: X,
}

impl<S: Clone, V, K: Clone, P: Clone, X: Clone> Clone for CacheService<S, V, K, P, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            key: self.key.clone(),
            policy: self.policy.clone(),
            share: self.share.clone(),
        }
    }
}

impl<S, V, K, P, X> CacheService<S, V, K, P, X> {
    pub(crate) fn new(inner: S, cache: Cache<V>, key: K, policy: P, share: X) -> Self {
        Self {
            inner,
            cache,
            key,
            policy,
            share,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<V> {
        &self.cache
    }
}

impl<S: fmt::Debug, V: Clone, K, P, X> fmt::Debug for CacheService<S, V, K, P, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<S, V, Req, K, P, X> Service<Req> for CacheService<S, V, K, P, X>
where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    V: CacheValue,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    K::Key: Send + 'static,
    P: StorePolicy<V> + Clone + Send + 'static,
    X: ShareError<S::Error> + Clone + Send + Sync + 'static,
{
    type Response = V;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, V, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = match self.key.key(&req) {
            Some(key) if self.cache.is_enabled() => key,
            _ => {
                self.cache.record_bypass();
                return ResponseFuture::inner(self.inner.call(req));
            }
        };
        if let Some(hit) = self.cache.l1_hit(key.as_ref()) {
            if hit.refresh {
                self.refresh(key, req);
            }
            return ResponseFuture::ready(Ok(hit.value));
        }
        // The ready service goes into the future; a fresh clone (not yet ready) stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let policy = self.policy.clone();
        let share = self.share.clone();
        ResponseFuture::load(Box::pin(async move {
            let share_error = move |e: &S::Error| share.share(e);
            // Owned: a load with an expired entry to fall back on can outlive its soft
            // timeout in the background.
            cache
                .load_owned(key, share_error, move || async move {
                    let res = inner.call(req).await?;
                    Ok(loaded(&policy, res))
                })
                .await
        }))
    }
}

/// What a store policy makes of a response.
fn loaded<V, P: StorePolicy<V>>(policy: &P, res: V) -> Loaded<V> {
    match policy.store(&res) {
        Some((ttl, tags)) if tags.is_empty() => Loaded::Store(res, ttl),
        Some((ttl, tags)) => Loaded::StoreTagged(res, ttl, tags),
        // Not for storing: nor for handing to other requests.
        None => Loaded::Private(res),
    }
}

impl<S, V, K, P, X> CacheService<S, V, K, P, X>
where
    V: CacheValue,
    P: Clone + Send + 'static,
    X: Clone + Send + Sync + 'static,
{
    /// An eager refresh of a hit's key, in the background, on a clone of the inner service
    /// (made ready there first: the ready one stays here for the next call).
    fn refresh<Req>(&self, key: K::Key, req: Req)
    where
        S: Service<Req, Response = V> + Clone + Send + 'static,
        S::Error: Send + 'static,
        S::Future: Send + 'static,
        Req: Send + 'static,
        K: KeyExtractor<Req>,
        P: StorePolicy<V>,
        X: ShareError<S::Error>,
    {
        let svc = self.inner.clone();
        let policy = self.policy.clone();
        let share = self.share.clone();
        self.cache.refresh(
            key.as_ref(),
            None,
            move |e: &S::Error| share.share(e),
            move || async move {
                let res = svc.oneshot(req).await?;
                Ok(loaded(&policy, res))
            },
        );
    }
}
