//! [`GrpcCacheLayer`]: caching of unary gRPC calls.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::admit::{has_credentials, Admitted, Fresh};
use super::body::{collect, CacheBody, Collected};
use super::config::header_tags;
use super::future::{passthrough, ResponseFuture};
use super::key;
use super::policy::{self, VaryList};
use super::service::{source, take, Slot};
use super::stored::{now_ms, CachedResponse, Entry, Render, Source, Stored, X_CACHE};
use super::{NoUser, UserKey};
use crate::cache::handle::Background;
use crate::cache::{Cache, Tags, Ttl};

/// The settings of a [`GrpcCacheLayer`].
#[derive(Debug, Clone)]
struct Config {
    methods: HashSet<String>,
    max_request_size: usize,
    max_response_size: usize,
    x_cache: bool,
    /// The response metadata key whose values tag a stored answer.
    tag_key: Option<HeaderName>,
}

/// Caches the answers of chosen **unary** gRPC methods of a server (Tonic's
/// `Server::builder().layer(...)`, or any `http` gRPC service) in a [`Cache`].
///
/// - Only the methods named with [`method`](Self::method) are cached, by their full path
///   (`/package.Service/Method`). Every other call, streaming ones included, passes through
///   untouched: nothing is buffered. Name only unary methods: the layer cannot tell a
///   server-streaming method from a unary one, and would hold back a stream's messages
///   until it ends or passes [`max_response_size`](Self::max_response_size).
/// - The key is the method path, the `content-type`, `grpc-encoding` and
///   `grpc-accept-encoding` headers, the per-user part (see [`per_user`](Self::per_user)),
///   and the request message's bytes. A request body must be exactly one message of at
///   most [`max_request_size`](Self::max_request_size) bytes; anything else passes through
///   (the bytes already read are forwarded, nothing is lost).
/// - Only HTTP `200` responses whose `grpc-status` (trailer, or header for a
///   "trailers-only" response) is `0` are stored; errors never are. Responses are stored
///   for the cache's `time_to_live`.
/// - A call with an `authorization` or `cookie` header bypasses the cache unless
///   [`per_user`](Self::per_user) names its user.
/// - The cache's resilience settings apply: with fail-safe, an expired answer replaces an
///   error (`x-cache: STALE`); past [`soft_timeout`](crate::CacheBuilder::soft_timeout)
///   a call with an expired answer to fall back on gets it and the call completes in the
///   background; with [`eager_refresh`](crate::CacheBuilder::eager_refresh), a hit late
///   in an answer's life is served and calls the method once in the background.
///
/// The service's error type is the inner one, and the request body the inner service sees
/// is a [`CacheBody`] around the original, which Tonic's router accepts.
///
/// ```
/// use layercake::cache::http::GrpcCacheLayer;
/// use layercake::Cache;
///
/// let cache = Cache::builder("grpc").build()?;
/// let layer = GrpcCacheLayer::new(cache)
///     .method("/catalog.Catalog/GetItem")
///     .max_request_size(16 * 1024);
/// // tonic::transport::Server::builder().layer(layer).add_service(...)
/// # let _ = layer;
/// # Ok::<(), layercake::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct GrpcCacheLayer<U = NoUser> {
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    user: U,
}

impl GrpcCacheLayer {
    /// A layer on `cache` that caches no method until [`method`](Self::method) names one.
    pub fn new(cache: Cache<CachedResponse>) -> Self {
        Self {
            cache,
            config: Arc::new(Config {
                methods: HashSet::new(),
                max_request_size: 64 * 1024,
                max_response_size: super::DEFAULT_MAX_BODY_SIZE,
                x_cache: false,
                tag_key: None,
            }),
            user: NoUser,
        }
    }
}

impl<U> GrpcCacheLayer<U> {
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Caches the unary method with this full path, `/package.Service/Method`.
    pub fn method(mut self, path: impl Into<String>) -> Self {
        self.config_mut().methods.insert(path.into());
        self
    }

    /// The largest request body (one length-prefixed message) that is read to build a key,
    /// in bytes (default 64 KiB). Larger requests pass through.
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_request_size = bytes;
        self
    }

    /// The largest response body that is stored, in bytes (default 1 MiB). A larger one is
    /// streamed through (the part read first) and not stored.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_response_size = bytes;
        self
    }

    /// Adds an `x-cache: HIT | MISS | STALE` header to responses of cached methods (default
    /// off; `STALE`: an expired response served by fail-safe).
    pub fn x_cache_header(mut self, on: bool) -> Self {
        self.config_mut().x_cache = on;
        self
    }

    /// Stores each answer with the tags its response metadata `key` lists (every value,
    /// split at commas and white space: `cache-tag: item:7, shop:3`), so that
    /// [`Cache::invalidate_tag`] removes it from both tiers and every replica, as
    /// [`HttpCacheLayer::tag_header`](super::HttpCacheLayer::tag_header) does for HTTP. The
    /// handler names the tags (`response.metadata_mut().insert("cache-tag", ...)`); the
    /// metadata is kept in the stored answer.
    ///
    /// ```
    /// use http::header::HeaderName;
    /// # let cache = layercake::Cache::builder("grpc").build().unwrap();
    /// let layer = layercake::cache::http::GrpcCacheLayer::new(cache)
    ///     .method("/catalog.Catalog/GetItem")
    ///     .tag_header(HeaderName::from_static("cache-tag"));
    /// # let _ = layer;
    /// ```
    pub fn tag_header(mut self, key: HeaderName) -> Self {
        self.config_mut().tag_key = Some(key);
        self
    }

    /// Gives each user their own entries, as
    /// [`HttpCacheLayer::per_user`](super::HttpCacheLayer::per_user) does.
    pub fn per_user<F, K>(self, user: F) -> GrpcCacheLayer<F>
    where
        F: Fn(&Parts) -> Option<K>,
        K: AsRef<[u8]>,
    {
        GrpcCacheLayer {
            cache: self.cache,
            config: self.config,
            user,
        }
    }

    /// The cache this layer stores into.
    pub fn cache(&self) -> &Cache<CachedResponse> {
        &self.cache
    }
}

impl<U> fmt::Debug for GrpcCacheLayer<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCacheLayer")
            .field("cache", &self.cache)
            .field("config", &self.config)
            .field("per_user", &std::any::type_name::<U>())
            .finish()
    }
}

impl<S, U: Clone> Layer<S> for GrpcCacheLayer<U> {
    type Service = GrpcCacheService<S, U>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCacheService {
            inner,
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            user: self.user.clone(),
        }
    }
}

/// The service built by [`GrpcCacheLayer`].
///
/// Readiness and cloning behave as [`HttpCacheService`](super::HttpCacheService)'s do.
#[derive(Clone)]
pub struct GrpcCacheService<S, U> {
    inner: S,
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    user: U,
}

impl<S, U> GrpcCacheService<S, U> {
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
    pub fn cache(&self) -> &Cache<CachedResponse> {
        &self.cache
    }
}

impl<S: fmt::Debug, U> fmt::Debug for GrpcCacheService<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether `body` is exactly one length-prefixed message (flag byte, 4-byte length).
fn is_one_message(body: &[u8]) -> bool {
    match body {
        [flag @ (0 | 1), a, b, c, d, message @ ..] => {
            *flag <= 1 && u32::from_be_bytes([*a, *b, *c, *d]) as usize == message.len()
        }
        _ => false,
    }
}

impl<S, U, ReqB, ResB> Service<Request<ReqB>> for GrpcCacheService<S, U>
where
    S: Service<Request<CacheBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body + Send + 'static,
    ReqB::Data: Buf + Send,
    ReqB::Error: Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Buf + Send,
    ResB::Error: Send + 'static,
    U: UserKey,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let config = &*self.config;
        let listed = self.cache.is_enabled()
            && parts.method == Method::POST
            && config.methods.contains(parts.uri.path())
            && is_grpc(&parts.headers);
        let user = if listed {
            self.user.user_key(&parts).map(|k| k.as_ref().to_vec())
        } else {
            None
        };
        if !listed || (user.is_none() && has_credentials(&parts.headers)) {
            self.cache.record_bypass();
            let req = Request::from_parts(parts, CacheBody::inner(body));
            return ResponseFuture::inner(self.inner.call(req), listed && config.x_cache);
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let config = Arc::clone(&self.config);
        ResponseFuture::boxed(Box::pin(unary(cache, config, inner, parts, body, user)))
    }
}

/// A call to a listed method: read the request message, then look it up.
///
/// As in the HTTP service, the load may go on in the background (`soft_timeout`), so it
/// owns the service and the request (taken from a [`Slot`]) and leaves what it did with
/// the response in another.
async fn unary<S, ReqB, ResB>(
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    mut inner: S,
    parts: Parts,
    body: ReqB,
    user: Option<Vec<u8>>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<CacheBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body + Send + 'static,
    ReqB::Data: Buf + Send,
    ReqB::Error: Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Buf + Send,
    ResB::Error: Send + 'static,
{
    let x_cache = config.x_cache;
    let message = match collect(body, config.max_request_size).await {
        Collected::Complete {
            data,
            trailers: None,
        } if is_one_message(&data) => data,
        Collected::Complete { data, trailers } => {
            cache.record_bypass();
            let req = Request::from_parts(parts, CacheBody::full(data, trailers));
            return Ok(passthrough(inner.call(req).await?, x_cache));
        }
        Collected::Partial(body) => {
            cache.record_bypass();
            let req = Request::from_parts(parts, body);
            return Ok(passthrough(inner.call(req).await?, x_cache));
        }
    };
    let key = key::grpc(&parts, user.as_deref(), &message);
    let req = Request::from_parts(parts, CacheBody::full(message, None));
    let render = Render {
        head: false,
        age: false,
        x_cache,
    };
    if let Some(hit) = cache.l1_hit(key.as_ref()) {
        if let Entry::Response(stored) = &hit.value.0 {
            if hit.refresh {
                // The ready service is not needed here any more: the refresh calls it.
                refresh(&cache, config, (&key, None), inner, req);
            }
            return Ok(stored.render(render, source(hit.stale), 0));
        }
    }
    let call: Slot<(S, Request<CacheBody<ReqB>>)> = Arc::new(Mutex::new(Some((inner, req))));
    let fresh: Slot<Fresh<ResB>> = Arc::new(Mutex::new(None));
    let load = {
        let (call, fresh) = (Arc::clone(&call), Arc::clone(&fresh));
        let (config, clock) = (Arc::clone(&config), cache.clone());
        move || async move {
            let (mut svc, req) = take(&call).expect("the loader runs at most once");
            let res = svc.call(req).await?;
            let mut done = None;
            let loaded = admit(res, &config, now_ms(&clock))
                .await
                .into_loaded(&mut done, |_| true);
            *fresh.lock().unwrap_or_else(PoisonError::into_inner) = done;
            Ok(loaded)
        }
    };
    // Only a stored response may answer while the load goes on in the background.
    let background = |v: &CachedResponse| match v.0 {
        Entry::Response(_) => Background::SoftTimeout,
        _ => Background::Never,
    };
    // A Redis hit past its eager-refresh point: refreshed below, with the service the load
    // did not use.
    let mut due = false;
    let on_due = |_, _| due = true;
    let (entry, stale) = cache
        .load_owned_served(key.as_ref(), |_: &S::Error| None, load, background, on_due)
        .await?;
    match (entry.0, take(&fresh)) {
        // An expired response: it answered the service's error or its 5xx (fail-safe), or
        // the load goes on in the background.
        (Entry::Response(stored), _) if stale => Ok(stored.render(render, Source::Stale, 0)),
        (_, Some(Fresh::Pass(res))) => Ok(res),
        (Entry::Response(stored), Some(Fresh::Loaded)) => {
            Ok(stored.render(render, Source::Miss, 0))
        }
        (Entry::Response(stored), None) => {
            let res = stored.render(render, Source::Hit, 0);
            if let Some((svc, req)) = take(&call).filter(|_| due) {
                refresh(&cache, config, (&key, Some(stored)), svc, req);
            }
            Ok(res)
        }
        // Not something this layer stores under a gRPC key: ask the service.
        (_, None) => match take(&call) {
            Some((mut svc, req)) => Ok(passthrough(svc.call(req).await?, x_cache)),
            None => unreachable!("the loader did not run"),
        },
        (_, Some(Fresh::Loaded)) => unreachable!("a loaded entry is a response"),
    }
}

/// An eager refresh of `key` in the background, on `svc` (ready: the call's own, which
/// the hit did not need). One at a time per key. With the response a Redis hit read, for
/// the requests that miss L1 meanwhile.
fn refresh<S, ReqB, ResB>(
    cache: &Cache<CachedResponse>,
    config: Arc<Config>,
    (key, current): (&[u8], Option<Stored>),
    mut svc: S,
    req: Request<CacheBody<ReqB>>,
) where
    S: Service<Request<CacheBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body + Send + 'static,
    ReqB::Data: Buf + Send,
    ReqB::Error: Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Buf + Send,
    ResB::Error: Send + 'static,
{
    let clock = cache.clone();
    let load = move || async move {
        let res = svc.call(req).await?;
        Ok(admit(res, &config, now_ms(&clock))
            .await
            .into_loaded(&mut None, |_| true))
    };
    let no_share = |_: &S::Error| None;
    let current = current.map(|stored| CachedResponse(Entry::Response(stored)));
    cache.refresh(key, current, no_share, load);
}

fn grpc_status(headers: Option<&HeaderMap>) -> Option<&[u8]> {
    headers?.get("grpc-status").map(|v| v.as_bytes())
}

/// Reads a response to a listed method; storable when it is an HTTP `200` with
/// `grpc-status: 0`.
async fn admit<B>(res: Response<B>, config: &Config, now_ms: u64) -> Admitted<B>
where
    B: Body,
    B::Data: Buf,
{
    let failed_early = grpc_status(Some(res.headers())).is_some_and(|s| s != b"0");
    if res.status() != StatusCode::OK || failed_early || !is_grpc(res.headers()) {
        return Admitted::Pass(passthrough(res, config.x_cache));
    }
    let (mut parts, body) = res.into_parts();
    if config.x_cache {
        parts.headers.insert(X_CACHE, Source::Miss.header_value());
    }
    let (data, trailers): (Bytes, Option<HeaderMap>) =
        match collect(body, config.max_response_size).await {
            Collected::Complete { data, trailers } => (data, trailers),
            Collected::Partial(body) => return Admitted::Pass(Response::from_parts(parts, body)),
        };
    let ok = grpc_status(trailers.as_ref()).or(grpc_status(Some(&parts.headers))) == Some(b"0");
    if !ok {
        return Admitted::Pass(Response::from_parts(parts, CacheBody::full(data, trailers)));
    }
    parts.headers.remove(X_CACHE);
    policy::strip_hop_by_hop(&mut parts.headers);
    let tags = match &config.tag_key {
        Some(key) => header_tags(&parts.headers, key),
        None => Tags::none(),
    };
    Admitted::Store(Stored::new(
        parts.status,
        parts.headers,
        data,
        trailers,
        now_ms,
        0,
        VaryList::from([]),
        (Ttl::Default, None, tags),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_framing() {
        assert!(is_one_message(&[0, 0, 0, 0, 0]));
        assert!(is_one_message(&[0, 0, 0, 0, 2, 8, 1]));
        assert!(is_one_message(&[1, 0, 0, 0, 1, 9]));
        assert!(!is_one_message(&[0, 0, 0, 0, 1]), "truncated");
        assert!(
            !is_one_message(&[0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0]),
            "two messages"
        );
        assert!(!is_one_message(&[2, 0, 0, 0, 0]), "bad flag");
        assert!(!is_one_message(&[]));
    }
}
