use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower::ServiceExt;
use tower_service::Service;

use super::admit::{has_credentials, Admitted, Fresh};
use super::body::{collect, CacheBody, Collected};
use super::config::Config;
use super::future::{passthrough, ResponseFuture};
use super::key::{self, HttpKey, Key};
use super::policy::{self, CacheControl, RequestDirective, Vary, VaryList};
use super::stored::{now_ms, CachedResponse, Entry, Render, Source, Stored, X_CACHE};
use super::UserKey;
use crate::cache::handle::Background;
use crate::cache::{Cache, Tags, Ttl};

/// The service built by [`HttpCacheLayer`](super::HttpCacheLayer).
///
/// Its `Error` is the inner service's: the cache adds none. `poll_ready` is the inner
/// service's; on a miss the ready inner service moves into the response future and a fresh
/// clone (not yet ready) stays, so the clone that is called is always one that was made
/// ready. Cloning the service clones the inner service.
#[derive(Clone)]
pub struct HttpCacheService<S, U> {
    inner: S,
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    user: U,
}

impl<S, U> HttpCacheService<S, U> {
    pub(crate) fn new(
        inner: S,
        cache: Cache<CachedResponse>,
        config: Arc<Config>,
        user: U,
    ) -> Self {
        Self {
            inner,
            cache,
            config,
            user,
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
    pub fn cache(&self) -> &Cache<CachedResponse> {
        &self.cache
    }
}

impl<S: fmt::Debug, U> fmt::Debug for HttpCacheService<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What to do with one request.
enum Plan {
    Bypass,
    Lookup {
        base: Key,
        head: bool,
        refresh: bool,
    },
}

impl<S, U: UserKey> HttpCacheService<S, U> {
    /// What a load of `req` (never an L1 hit) needs of this service.
    fn miss<B>(&self, base: Key, render: Render, req: &Request<B>) -> Miss {
        Miss {
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            base,
            render,
            tag_req: self.tag_req(req),
        }
    }

    /// What a tag rule reads of the request: a copy of its head, only where the layer has
    /// a tag rule.
    fn tag_req<B>(&self, req: &Request<B>) -> Option<Arc<Parts>> {
        self.config.tags.as_ref()?;
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        *head.extensions_mut() = req.extensions().clone();
        Some(Arc::new(head.into_parts().0))
    }

    fn plan(&self, req: &Parts) -> Plan {
        if !self.cache.is_enabled() {
            return Plan::Bypass;
        }
        let head = match req.method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Plan::Bypass,
        };
        let refresh = match policy::request_directive(&req.headers) {
            RequestDirective::Normal => false,
            RequestDirective::Refresh => true,
            RequestDirective::Bypass => return Plan::Bypass,
        };
        let user = self.user.user_key(req);
        if user.is_none() && has_credentials(&req.headers) {
            return Plan::Bypass;
        }
        let config = &*self.config;
        let key = HttpKey {
            query: &config.query,
            key_headers: &config.key_headers,
            host: config.host,
        };
        let base = key.base(req, user.as_ref().map(AsRef::as_ref));
        Plan::Lookup {
            base,
            head,
            refresh,
        }
    }
}

impl<S, U, ReqB, ResB> Service<Request<ReqB>> for HttpCacheService<S, U>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
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
        let plan = self.plan(&parts);
        let req = Request::from_parts(parts, body);
        let x_cache = self.config.x_cache;
        let (base, head, refresh) = match plan {
            Plan::Bypass => {
                self.cache.record_bypass();
                return ResponseFuture::inner(self.inner.call(req), x_cache);
            }
            Plan::Lookup {
                base,
                head,
                refresh,
            } => (base, head, refresh),
        };
        let render = Render {
            head,
            age: true,
            x_cache,
        };
        let mut known_vary = None;
        if !refresh {
            // The L1 hit path: no I/O, nothing boxed. A `Vary` marker and the variant it
            // leads to are two lookups, each counted.
            let hit = |key: &Key| {
                let hit = self.cache.l1_hit(key.as_ref())?;
                Some((hit.value.0, source(hit.stale), hit.refresh))
            };
            let mut found = None;
            match hit(&base) {
                Some((Entry::Response(stored), source, due)) if stored.vary().is_empty() => {
                    found = Some((base, None, stored, source, due));
                }
                Some((Entry::Vary(vary), _, _)) => {
                    let variant = key::variant(&base, &vary, req.headers());
                    match hit(&variant) {
                        Some((Entry::Response(stored), source, due)) if *stored.vary() == vary => {
                            found = Some((variant, Some(vary), stored, source, due));
                        }
                        _ => known_vary = Some(vary),
                    }
                }
                _ => {}
            }
            if let Some((key, vary, stored, source, due)) = found {
                // Past its eager-refresh point: one refresh in the background (not for a
                // `HEAD`, whose answer is not stored).
                if due && !head {
                    let miss = self.miss(base, render, &req);
                    miss.refresh_in_background((key, vary), None, self.inner.clone(), req);
                }
                let now = now_ms(&self.cache);
                return ResponseFuture::ready(stored.render(render, source, now));
            }
        }
        // The ready service goes into the future; a fresh clone (not yet ready) stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let miss = self.miss(base, render, &req);
        if refresh {
            ResponseFuture::boxed(Box::pin(miss.refresh(inner, req)))
        } else {
            ResponseFuture::boxed(Box::pin(miss.lookup(inner, req, known_vary)))
        }
    }
}

/// A value shared with a load that may run on in the background.
pub(super) type Slot<T> = Arc<Mutex<Option<T>>>;

pub(super) fn take<T>(slot: &Slot<T>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// The `x-cache` of a response from the cache.
pub(super) fn source(stale: bool) -> Source {
    if stale {
        Source::Stale
    } else {
        Source::Hit
    }
}

/// Whether a stored response's `Vary` is the one expected under the key it was found at.
fn same_vary(found: &VaryList, expected: Option<&VaryList>) -> bool {
    match expected {
        None => found.is_empty(),
        Some(expected) => found == expected,
    }
}

/// The state of one miss (or refresh).
#[derive(Clone)]
struct Miss {
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    base: Key,
    render: Render,
    /// The request's head, for the layer's tag rule (`None` without one).
    tag_req: Option<Arc<Parts>>,
}

impl Miss {
    /// An eager refresh of the entry under `key` (the base key, or the variant of `vary`),
    /// in the background, on `svc` (made ready there first: the hit path hands it a clone,
    /// so that the ready one stays for the next call). One at a time per key. `current`:
    /// the response a Redis hit read, for the requests that miss L1 meanwhile.
    fn refresh_in_background<S, ReqB, ResB>(
        self,
        (key, vary): (Key, Option<VaryList>),
        current: Option<Stored>,
        svc: S,
        req: Request<ReqB>,
    ) where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Send + 'static,
        ResB: Body + Send + 'static,
        ResB::Data: Buf + Send,
        ResB::Error: Send + 'static,
    {
        let cache = self.cache.clone();
        let miss = Miss {
            render: Render {
                head: false,
                ..self.render
            },
            ..self
        };
        let load = move || async move {
            let res = svc.oneshot(req).await?;
            let here = |s: &Stored| same_vary(s.vary(), vary.as_ref());
            Ok(miss.admit(res).await.into_loaded(&mut None, here))
        };
        let no_share = |_: &S::Error| None;
        let current = current.map(|stored| CachedResponse(Entry::Response(stored)));
        cache.refresh(key.as_ref(), current, no_share, load);
    }

    /// Looks the request up (the base key, then the variant key when the base key holds a
    /// `Vary` marker), calling the inner service on a miss.
    ///
    /// The load may go on in the background once its caller has an expired response
    /// (`soft_timeout`, `stale-while-revalidate`), so it owns what it uses: the service and
    /// the request are in a [`Slot`] it takes them from, and it leaves in another what it
    /// did with the response.
    async fn lookup<S, ReqB, ResB>(
        self,
        inner: S,
        req: Request<ReqB>,
        known_vary: Option<VaryList>,
    ) -> Result<Response<CacheBody<ResB>>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Send + 'static,
        ResB: Body + Send + 'static,
        ResB::Data: Buf + Send,
        ResB::Error: Send + 'static,
    {
        let headers = req.headers().clone();
        let cache = &self.cache;
        let call: Slot<(S, Request<ReqB>)> = Arc::new(Mutex::new(Some((inner, req))));
        let (mut key, mut expected) = match known_vary {
            Some(vary) => (key::variant(&self.base, &vary, &headers), Some(vary)),
            None => (self.base, None),
        };
        // At most two steps: the base key, then the variant its marker leads to.
        for _ in 0..2 {
            let fresh: Slot<Fresh<ResB>> = Arc::new(Mutex::new(None));
            let load = {
                let (call, fresh) = (Arc::clone(&call), Arc::clone(&fresh));
                let (this, expected) = (self.clone(), expected.clone());
                move || async move {
                    let (mut svc, req) = take(&call).expect("the loader runs at most once");
                    let res = svc.call(req).await?;
                    // Stored under `key` only when it belongs there; others are placed by
                    // `store_under` below.
                    let here = |s: &Stored| same_vary(s.vary(), expected.as_ref());
                    let mut done = None;
                    let loaded = this.admit(res).await.into_loaded(&mut done, here);
                    *fresh.lock().unwrap_or_else(PoisonError::into_inner) = done;
                    Ok(loaded)
                }
            };
            // Only an expired response this request can use may answer it while the load
            // goes on: with anything else, the load's own answer is needed. Not for a
            // `HEAD`, whose load stores nothing.
            let background = {
                let (cache, expected, head) = (cache.clone(), expected.clone(), self.render.head);
                move |v: &CachedResponse| match &v.0 {
                    Entry::Response(s) if !head && same_vary(s.vary(), expected.as_ref()) => {
                        match s.may_revalidate(now_ms(&cache)) {
                            true => Background::Now,
                            false => Background::SoftTimeout,
                        }
                    }
                    _ => Background::Never,
                }
            };
            // A Redis hit past its eager-refresh point: refreshed below, with the service
            // the load did not use.
            let mut due = false;
            let on_due = |_, _| due = true;
            let (entry, stale) = cache
                .load_owned_served(key.as_ref(), |_: &S::Error| None, load, background, on_due)
                .await?;
            match (entry.0, take(&fresh)) {
                // An expired response: it answered the service's error or its 5xx
                // (fail-safe), or the load goes on in the background.
                (Entry::Response(stored), _)
                    if stale && same_vary(stored.vary(), expected.as_ref()) =>
                {
                    let now = now_ms(cache);
                    return Ok(stored.render(self.render, Source::Stale, now));
                }
                (_, Some(Fresh::Pass(res))) => return Ok(res),
                (Entry::Response(stored), Some(Fresh::Loaded)) => {
                    if !same_vary(stored.vary(), expected.as_ref()) {
                        self.store_under(&stored, &headers).await;
                    }
                    return Ok(stored.render(self.render, Source::Miss, 0));
                }
                (Entry::Response(stored), None) if same_vary(stored.vary(), expected.as_ref()) => {
                    let now = now_ms(cache);
                    let res = stored.render(self.render, source(stale), now);
                    if due && !self.render.head {
                        if let Some((svc, req)) = take(&call) {
                            let current = Some(stored);
                            self.refresh_in_background((key, expected), current, svc, req);
                        }
                    }
                    return Ok(res);
                }
                (Entry::Vary(vary), None) if expected.is_none() => {
                    key = key::variant(&self.base, &vary, &headers);
                    expected = Some(vary);
                }
                _ => break,
            }
        }
        // An entry this request cannot use (a marker where a response was expected, or a
        // second marker): answer from the inner service, store nothing.
        match take(&call) {
            Some((mut svc, req)) => Ok(passthrough(svc.call(req).await?, self.config.x_cache)),
            None => unreachable!("a loaded response is returned above"),
        }
    }

    /// `Cache-Control: no-cache` on the request: call the inner service and store its
    /// response, without looking up.
    async fn refresh<S, ReqB, ResB>(
        self,
        mut inner: S,
        req: Request<ReqB>,
    ) -> Result<Response<CacheBody<ResB>>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
        ResB: Body,
        ResB::Data: Buf,
    {
        // A refresh skips the lookup: counted as a bypass, not as a miss.
        self.cache.record_bypass();
        let headers = req.headers().clone();
        let res = inner.call(req).await?;
        match self.admit(res).await {
            Admitted::Store(stored) => {
                self.store_under(&stored, &headers).await;
                Ok(stored.render(self.render, Source::Miss, 0))
            }
            Admitted::Pass(res) => Ok(res),
        }
    }

    /// Stores a fresh response where later requests look for it: under the base key, or,
    /// when it has `Vary`, a marker under the base key and the response under its variant.
    async fn store_under(&self, stored: &Stored, request_headers: &HeaderMap) {
        let cache = &self.cache;
        let vary = stored.vary();
        let response = CachedResponse(Entry::Response(stored.clone()));
        let tags = stored.tags().clone();
        if vary.is_empty() {
            cache
                .insert_tagged_with_ttl(self.base, response, stored.ttl(), tags)
                .await;
        } else {
            // The marker lives as long as the cache allows, so that the variants (which may
            // have shorter lives) stay reachable.
            let marker = CachedResponse(Entry::Vary(Arc::clone(vary)));
            cache.insert_with_ttl(self.base, marker, Ttl::Default).await;
            let variant = key::variant(&self.base, vary, request_headers);
            cache
                .insert_tagged_with_ttl(variant, response, stored.ttl(), tags)
                .await;
        }
    }

    /// Decides from the response head whether it may be stored, and if so reads its body
    /// up to the limit.
    async fn admit<B>(&self, res: Response<B>) -> Admitted<B>
    where
        B: Body,
        B::Data: Buf,
    {
        let config = &*self.config;
        let decision = if self.render.head {
            None // a HEAD response has no body to store; HEADs are answered from GETs
        } else {
            storable(res.status(), res.headers(), config)
        };
        let Some(Storable {
            ttl,
            vary,
            age,
            revalidate,
        }) = decision
        else {
            return Admitted::Pass(passthrough(res, config.x_cache));
        };
        let (mut parts, body) = res.into_parts();
        match collect(body, config.max_body_size).await {
            Collected::Partial(body) => {
                if config.x_cache {
                    parts.headers.insert(X_CACHE, Source::Miss.header_value());
                }
                Admitted::Pass(Response::from_parts(parts, body))
            }
            Collected::Complete { data, trailers } => {
                let tags = match (&config.tags, &self.tag_req) {
                    (Some(rule), Some(req)) => rule.tags(req, &parts),
                    _ => Tags::none(),
                };
                parts.headers.remove(header::AGE);
                policy::strip_hop_by_hop(&mut parts.headers);
                let bodiless = parts.status.is_informational()
                    || parts.status == StatusCode::NO_CONTENT
                    || parts.status == StatusCode::NOT_MODIFIED;
                if !bodiless {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
                }
                let now = now_ms(&self.cache);
                // The end of its `stale-while-revalidate` window: after its freshness (as
                // the cache caps it) by the directive's seconds.
                let revalidate_until = revalidate.map(|(fresh, window)| {
                    let fresh = fresh.unwrap_or(Duration::MAX).min(self.cache.inner.ttl);
                    let until = fresh.saturating_add(window).as_millis();
                    now.saturating_add(u64::try_from(until).unwrap_or(u64::MAX))
                });
                Admitted::Store(Stored::new(
                    parts.status,
                    parts.headers,
                    data,
                    trailers,
                    now,
                    age,
                    vary,
                    (ttl, revalidate_until, tags),
                ))
            }
        }
    }
}

/// Why and how a response may be stored.
struct Storable {
    /// How long.
    ttl: Ttl,
    /// The `Vary` names (empty without `Vary`).
    vary: VaryList,
    /// The response's own `Age`, which its `max-age` counts from.
    age: u64,
    /// With `stale-while-revalidate`: its freshness (`None`: the cache's `time_to_live`)
    /// and the window after it.
    revalidate: Option<(Option<Duration>, Duration)>,
}

/// The safe defaults: whether a response with this head may be stored.
fn storable(status: StatusCode, headers: &HeaderMap, config: &Config) -> Option<Storable> {
    if !config.statuses.contains(&status) || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    // Malformed: do not store.
    let cc = CacheControl::parse(headers).ok()?;
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    let age = match headers.get(header::AGE) {
        None => 0,
        Some(v) => v.to_str().ok()?.trim().parse::<u64>().ok()?,
    };
    let fresh = match cc.shared_max_age() {
        Some(max_age) if max_age <= age => return None,
        Some(max_age) => Some(Duration::from_secs(max_age - age)),
        None => None,
    };
    // Both windows of RFC 5861 keep the expired entry as a fallback; which of them
    // applies when it is found is for the lookup to say (`Stored::may_revalidate`).
    let window = cc.stale_if_error.max(cc.stale_while_revalidate);
    let ttl = match (fresh, window) {
        (Some(fresh), Some(window)) => Ttl::WithFallback {
            fresh,
            fallback: Duration::from_secs(window),
        },
        (Some(fresh), None) => Ttl::After(fresh),
        // Without a freshness lifetime: fresh for the cache's time_to_live.
        (None, Some(window)) => Ttl::WithFallback {
            fresh: Duration::MAX,
            fallback: Duration::from_secs(window),
        },
        (None, None) => Ttl::Default,
    };
    let revalidate = cc
        .stale_while_revalidate
        .map(|window| (fresh, Duration::from_secs(window)));
    let vary = match policy::parse_vary(headers).ok()? {
        Vary::None => VaryList::from([]),
        Vary::Any => return None,
        Vary::Names(names) => names,
    };
    Some(Storable {
        ttl,
        vary,
        age,
        revalidate,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::{service_fn, Layer, ServiceExt};

    use super::*;
    use crate::cache::http::HttpCacheLayer;

    type TestBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>>;

    fn body(frames: Vec<Result<Frame<Bytes>, &'static str>>) -> TestBody {
        StreamBody::new(futures::stream::iter(frames))
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn trailers_are_stored_and_replayed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let inner = service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            let frames = vec![
                Ok(Frame::data(Bytes::from("hello"))),
                Ok(Frame::trailers(trailers)),
            ];
            async move { Ok::<_, Infallible>(Response::new(body(frames))) }
        });
        let cache = Cache::builder("trailers").build().unwrap();
        let svc = HttpCacheLayer::new(cache).layer(inner);
        for _ in 0..2 {
            let res = svc.clone().oneshot(get("/t")).await.unwrap();
            let collected = res.into_body().collect().await.unwrap();
            assert_eq!(
                collected.trailers().map(|t| &t["x-checksum"]),
                Some(&HeaderValue::from_static("abc"))
            );
            assert_eq!(collected.to_bytes(), "hello");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_error_while_buffering_reaches_the_client_after_the_data_read() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let inner = service_fn(move |_: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let frames = vec![Ok(Frame::data(Bytes::from("ab"))), Err("connection reset")];
            async move { Ok::<_, Infallible>(Response::new(body(frames))) }
        });
        let cache = Cache::builder("body_error").build().unwrap();
        let svc = HttpCacheLayer::new(cache.clone()).layer(inner);
        for _ in 0..2 {
            let mut body = svc.clone().oneshot(get("/e")).await.unwrap().into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "ab");
            assert_eq!(body.frame().await.unwrap().unwrap_err(), "connection reset");
            assert!(body.frame().await.is_none());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "not stored");
        assert_eq!(cache.stats().l1_entries, 0);
    }

    #[test]
    fn storable_decisions() {
        let config = Config::default();
        let decide = |status: u16, headers: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.append(*n, HeaderValue::from_static(v));
            }
            storable(StatusCode::from_u16(status).unwrap(), &map, &config)
                .map(|s| (s.ttl, s.vary.len(), s.age))
        };
        assert_eq!(decide(200, &[]), Some((Ttl::Default, 0, 0)));
        assert_eq!(decide(201, &[]), None);
        assert_eq!(
            decide(200, &[("cache-control", "max-age=10"), ("age", "4")]),
            Some((Ttl::After(Duration::from_secs(6)), 0, 4))
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=10"), ("age", "10")]),
            None
        );
        assert_eq!(decide(200, &[("age", "x")]), None, "malformed Age");
        // RFC 5861: the longer window keeps the expired entry as a fallback.
        let cc = |v| [("cache-control", v)];
        let fallback = |fresh, fallback| Ttl::WithFallback {
            fresh: Duration::from_secs(fresh),
            fallback: Duration::from_secs(fallback),
        };
        assert_eq!(
            decide(200, &cc("max-age=10, stale-while-revalidate=30")).map(|d| d.0),
            Some(fallback(10, 30))
        );
        assert_eq!(
            decide(
                200,
                &cc("max-age=10, stale-while-revalidate=30, stale-if-error=300")
            )
            .map(|d| d.0),
            Some(fallback(10, 300))
        );
        assert_eq!(
            decide(200, &cc("max-age=10, stale-while-revalidate=x")),
            None,
            "malformed"
        );
        let revalidate = |v| {
            let mut map = HeaderMap::new();
            map.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
            storable(StatusCode::OK, &map, &config).and_then(|s| s.revalidate)
        };
        assert_eq!(
            revalidate("max-age=10, stale-while-revalidate=30"),
            Some((Some(Duration::from_secs(10)), Duration::from_secs(30)))
        );
        assert_eq!(revalidate("stale-if-error=30"), None);
        assert_eq!(
            decide(200, &[("vary", "accept, x-a")]).map(|d| d.1),
            Some(2)
        );
        assert_eq!(decide(200, &[("vary", "*")]), None);
        assert_eq!(decide(200, &[("set-cookie", "a=b")]), None);
    }
}
