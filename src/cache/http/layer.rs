use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;
use http::StatusCode;
use tower_layer::Layer;

use super::config::{Config, TagRule};
use super::grpc::GrpcCacheLayer;
use super::service::HttpCacheService;
use super::stored::CachedResponse;
use super::{NoUser, QueryKey};
use crate::cache::{Cache, CacheLayer, Tags};

/// Caches the responses of an `http::Request` → `http::Response` service (an Axum
/// `Router`, a hyper service...) in a [`Cache`]: see the [module docs](super) for the key,
/// the defaults and how `Vary`, `HEAD` and large bodies are handled.
///
/// The service it builds keeps the inner service's error type, and its response body is a
/// [`CacheBody`](super::CacheBody) around the inner body, so it fits
/// `Router::layer` unchanged.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use http::header::ACCEPT_LANGUAGE;
/// use layercake::cache::http::{HttpCacheLayer, QueryKey};
/// use layercake::Cache;
///
/// let cache = Cache::builder("pages").time_to_live(Duration::from_secs(30)).build()?;
/// let app: Router = Router::new()
///     .route("/search", get(|| async { "results" }))
///     .layer(
///         HttpCacheLayer::new(cache)
///             .query(QueryKey::only(["q", "page"]))
///             .key_headers([ACCEPT_LANGUAGE])
///             .max_body_size(256 * 1024)
///             .x_cache_header(true),
///     );
/// # let _ = app;
/// # Ok::<(), layercake::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct HttpCacheLayer<U = NoUser> {
    cache: Cache<CachedResponse>,
    config: Arc<Config>,
    user: U,
}

impl HttpCacheLayer {
    /// A layer that caches responses in `cache`, with the safe defaults listed in the
    /// [module docs](super).
    pub fn new(cache: Cache<CachedResponse>) -> Self {
        Self {
            cache,
            config: Arc::new(Config::default()),
            user: NoUser,
        }
    }
}

impl CacheLayer<CachedResponse, ()> {
    /// An [`HttpCacheLayer`] on `cache`: the same as [`HttpCacheLayer::new`].
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use layercake::{Cache, CacheLayer};
    ///
    /// let cache = Cache::builder("pages").build()?;
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(CacheLayer::http(cache));
    /// # let _ = app;
    /// # Ok::<(), layercake::ConfigError>(())
    /// ```
    pub fn http(cache: Cache<CachedResponse>) -> HttpCacheLayer {
        HttpCacheLayer::new(cache)
    }

    /// A [`GrpcCacheLayer`] on `cache`: the same as [`GrpcCacheLayer::new`].
    pub fn grpc(cache: Cache<CachedResponse>) -> GrpcCacheLayer {
        GrpcCacheLayer::new(cache)
    }
}

impl<U> HttpCacheLayer<U> {
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The largest response body that is stored, in bytes (default 1 MiB).
    ///
    /// Bodies are read frame by frame up to this size; a larger body (or one whose
    /// `Content-Length` says so) is streamed to the client untouched, the part already
    /// read first, and is not stored. `0` stores only empty bodies. The cache's own
    /// [`max_entry_size`](crate::CacheBuilder::max_entry_size) applies as well.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_body_size = bytes;
        self
    }

    /// The response statuses that may be stored (default: `200 OK` alone).
    ///
    /// ```
    /// use http::StatusCode;
    /// # let cache = layercake::Cache::builder("pages").build().unwrap();
    /// let layer = layercake::cache::http::HttpCacheLayer::new(cache)
    ///     .statuses([StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::MOVED_PERMANENTLY]);
    /// # let _ = layer;
    /// ```
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config_mut().statuses = statuses.into_iter().collect();
        self
    }

    /// How the query string joins the key (default [`QueryKey::Full`]).
    pub fn query(mut self, query: QueryKey) -> Self {
        self.config_mut().query = query;
        self
    }

    /// Request headers whose values join the key, for every request (for example
    /// `Accept-Language` or a tenant header). All values of each header are used, as raw
    /// bytes: a value that is not UTF-8 still gives a key.
    ///
    /// Responses can also name such headers themselves, per resource, with `Vary`.
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config_mut().key_headers = names.into_iter().collect();
        self
    }

    /// Whether the request's host (the URI authority, else the `Host` header) joins the
    /// key (default `true`, so that virtual hosts never share entries). Turn it off when
    /// one application answers the same under several names.
    pub fn host_in_key(mut self, host: bool) -> Self {
        self.config_mut().host = host;
        self
    }

    /// Adds an `x-cache` response header (default off): `HIT` for a response from the
    /// cache (either tier, or shared from a concurrent miss), `STALE` for an expired one
    /// served by fail-safe ([`fail_safe_max_duration`](crate::CacheBuilder::fail_safe_max_duration):
    /// the inner service returned an error, or ran past `hard_timeout` or `soft_timeout`,
    /// or the throttle re-uses such an answer) or within its `stale-while-revalidate`
    /// window while it is revalidated, `MISS` for any other.
    pub fn x_cache_header(mut self, on: bool) -> Self {
        self.config_mut().x_cache = on;
        self
    }

    /// Stores each response with the tags `tags` gives it, from the request's head and
    /// the response's (status and headers), so that
    /// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) removes it, in every tier
    /// and on every replica. Replaces a [`tag_header`](Self::tag_header) rule. Only
    /// stored responses are tagged; a `Vary` marker is not (its variants are).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use axum::{body::Body, extract::Path, routing::get, Router};
    /// use http::Request;
    /// use layercake::cache::{http::HttpCacheLayer, Tags};
    /// use layercake::Cache;
    /// use tower::ServiceExt;
    ///
    /// let cache = Cache::builder("pages").build()?;
    /// let app = Router::new()
    ///     .route("/users/{id}/profile", get(|Path(id): Path<u32>| async move { format!("user {id}") }))
    ///     .layer(HttpCacheLayer::new(cache.clone()).tags(|req, _res| {
    ///         // Every page under /users/{id}/ is tagged with its user.
    ///         let user = req.uri.path().split('/').nth(2).unwrap_or("");
    ///         Tags::new([format!("user:{user}")])
    ///     }));
    /// let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    /// app.clone().oneshot(get("/users/7/profile")).await?;
    /// assert_eq!(cache.stats().l1_entries, 1);
    /// cache.invalidate_tag("user:7").await?; // the user changed their profile
    /// app.oneshot(get("/users/7/profile")).await?;
    /// assert_eq!(cache.stats().misses, 2); // loaded again
    /// # Ok(()) }
    /// ```
    pub fn tags<F>(mut self, tags: F) -> Self
    where
        F: Fn(&Parts, &http::response::Parts) -> Tags + Send + Sync + 'static,
    {
        self.config_mut().tags = Some(TagRule::new(tags));
        self
    }

    /// Stores each response with the tags its header `name` lists (every value, split at
    /// commas and white space: `Cache-Tag: user:7, team:3` or `Surrogate-Key: a b`), as
    /// [`tags`](Self::tags) does, which it replaces. The header is kept in the stored
    /// response.
    ///
    /// ```
    /// use http::header::HeaderName;
    /// # let cache = layercake::Cache::builder("pages").build().unwrap();
    /// let layer = layercake::cache::http::HttpCacheLayer::new(cache)
    ///     .tag_header(HeaderName::from_static("cache-tag"));
    /// # let _ = layer;
    /// ```
    pub fn tag_header(mut self, name: HeaderName) -> Self {
        self.config_mut().tags = Some(TagRule::header(name));
        self
    }

    /// Gives each user their own entries, so that requests with `Authorization` or `Cookie`
    /// can use the cache.
    ///
    /// `user` is called with each request's head. `Some(part)` puts `part` into the key
    /// (hashed: a token is never stored in the clear); `None` leaves the request anonymous,
    /// which means it bypasses the cache if it has `Authorization` or `Cookie` and shares
    /// entries otherwise. Responses with `Set-Cookie` or `Cache-Control: private` are still
    /// never stored.
    ///
    /// ```
    /// use http::header::AUTHORIZATION;
    /// # let cache = layercake::Cache::builder("pages").build().unwrap();
    /// // Per bearer token (each token is its own user).
    /// let layer = layercake::cache::http::HttpCacheLayer::new(cache)
    ///     .per_user(|req| req.headers.get(AUTHORIZATION).map(|v| v.as_bytes().to_vec()));
    /// # let _ = layer;
    /// ```
    ///
    /// Or by an identity an authentication layer put into the request's extensions:
    /// `.per_user(|req| req.extensions.get::<UserId>().map(|id| id.to_string()))`.
    pub fn per_user<F, K>(self, user: F) -> HttpCacheLayer<F>
    where
        F: Fn(&Parts) -> Option<K>,
        K: AsRef<[u8]>,
    {
        HttpCacheLayer {
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

impl<U> fmt::Debug for HttpCacheLayer<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("cache", &self.cache)
            .field("config", &self.config)
            .field("per_user", &std::any::type_name::<U>())
            .finish()
    }
}

impl<S, U: Clone> Layer<S> for HttpCacheLayer<U> {
    type Service = HttpCacheService<S, U>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCacheService::new(
            inner,
            self.cache.clone(),
            Arc::clone(&self.config),
            self.user.clone(),
        )
    }
}
