use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tower_service::Service;

use super::future::ResponseFuture;
use super::stats::Outcome;
use super::Cache;

/// Extracts a cache key from a request; `None` bypasses the cache for that request.
///
/// Implemented for every `Fn(&Req) -> Option<K>` where `K: AsRef<[u8]>` (a `String`, a
/// `Vec<u8>`, `&'static str`, `bytes::Bytes`...). The key is used as is in L1 and hashed
/// into the Redis key (see the crate docs for the scheme).
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

/// Decides whether a successful response is stored.
///
/// Implemented for every `Fn(&Res) -> bool`. Errors are never stored.
pub trait StorePolicy<Res> {
    /// Whether to store `res`.
    fn should_store(&self, res: &Res) -> bool;
}

impl<Res, F> StorePolicy<Res> for F
where
    F: Fn(&Res) -> bool,
{
    fn should_store(&self, res: &Res) -> bool {
        self(res)
    }
}

/// The default [`StorePolicy`]: every `Ok` response is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreAll;

impl<Res> StorePolicy<Res> for StoreAll {
    fn should_store(&self, _: &Res) -> bool {
        true
    }
}

/// The service built by [`CacheLayer`](super::CacheLayer).
///
/// Its `Error` is the inner service's: the cache adds no errors of its own. `poll_ready` is
/// the inner service's, and a clone starts unready, as a fresh clone of the inner service
/// does.
#[derive(Clone)]
pub struct CacheService<S, K, P = StoreAll> {
    inner: S,
    cache: Cache,
    key: K,
    policy: P,
}

impl<S, K, P> CacheService<S, K, P> {
    /// Wraps `inner`; see [`CacheLayer`](super::CacheLayer).
    pub fn new(inner: S, cache: Cache, key: K, policy: P) -> Self {
        Self {
            inner,
            cache,
            key,
            policy,
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
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl<S: fmt::Debug, K, P> fmt::Debug for CacheService<S, K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, P> Service<Req> for CacheService<S, K, P>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    K::Key: Send + 'static,
    P: StorePolicy<S::Response> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = match self.key.key(&req) {
            Some(key) if self.cache.is_enabled() => key,
            _ => {
                self.cache.count(Outcome::Bypass);
                return ResponseFuture::inner(self.inner.call(req));
            }
        };
        if let Some(hit) = self.cache.l1_get::<S::Response>(key.as_ref()) {
            self.cache.count(Outcome::HitL1);
            return ResponseFuture::ready(Ok(hit));
        }
        // The ready service goes into the future; a fresh clone (not yet ready) stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let policy = self.policy.clone();
        ResponseFuture::load(Box::pin(async move {
            cache
                .load(
                    key.as_ref(),
                    move || inner.call(req),
                    // Duration::MAX: the cache's own time_to_live applies.
                    move |res| policy.should_store(res).then_some(Duration::MAX),
                )
                .await
        }))
    }
}
