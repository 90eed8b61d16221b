//! HTTP and gRPC caching (feature `http`, on by default): [`HttpCacheLayer`] for Axum,
//! hyper or any `http::Request` → `http::Response` service, and [`GrpcCacheLayer`] for
//! unary gRPC methods (Tonic).
//!
//! Both keep the inner service's error type (an Axum `Router`'s `Infallible` stays
//! `Infallible`) and wrap its response body in a [`CacheBody`]. Like every layer of this
//! crate, nothing the cache does can fail a request: a Redis problem is a miss.
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use layercake::{Cache, CacheLayer};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder("pages")
//!     .time_to_live(Duration::from_secs(60))
//!     .redis_url(std::env::var("REDIS_URL").ok()) // none: in-process only
//!     .build()?;
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .layer(CacheLayer::http(cache.clone()).x_cache_header(true));
//!
//! let res = app.clone().oneshot(Request::get("/hello").body(Body::empty())?).await?;
//! assert_eq!(res.headers()["x-cache"], "MISS");
//! let res = app.oneshot(Request::get("/hello").body(Body::empty())?).await?;
//! assert_eq!(res.headers()["x-cache"], "HIT");
//! assert_eq!(res.headers()["age"], "0");
//! assert_eq!(cache.stats().hits_l1, 1);
//! # Ok(()) }
//! ```
//!
//! # What is stored: the safe defaults
//! - Only `GET` and `HEAD` requests use the cache; every other method passes through.
//! - Only responses with a status in [`statuses`](HttpCacheLayer::statuses) (default `200`
//!   alone) are stored.
//! - A response with `Set-Cookie` is never stored.
//! - A response with `Cache-Control: no-store`, `private` or `no-cache` is not stored;
//!   `s-maxage`, else `max-age`, caps its TTL (minus the response's own `Age`), and
//!   `max-age=0` means not stored. Without either, the cache's `time_to_live` applies.
//!   `Expires` is not read.
//! - A request with `Authorization` or `Cookie` bypasses the cache, unless
//!   [`per_user`](HttpCacheLayer::per_user) gives it a user, whose entries are then its own.
//! - A request with `Cache-Control: no-store` bypasses the cache; one with `no-cache` or
//!   `max-age=0` (or, without `Cache-Control`, `Pragma: no-cache`) skips the lookup, calls
//!   the service and stores its answer (a refresh).
//! - `Vary` on a response: the named request headers join the key (see below);
//!   `Vary: *` is not stored.
//! - Hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`) are not stored; `Content-Length`
//!   is set from the stored body; a hit carries `Age` (seconds since it was stored, plus
//!   the `Age` it had then).
//! - A body larger than [`max_body_size`](HttpCacheLayer::max_body_size) (default 1 MiB)
//!   is streamed through untouched (the frames read so far first) and not stored.
//! - Optional: an `x-cache: HIT | MISS | STALE` header
//!   ([`x_cache_header`](HttpCacheLayer::x_cache_header)); `STALE` for an expired
//!   response: it answered an inner service's error or a load past `hard_timeout` or
//!   `soft_timeout`, or is within its `stale-while-revalidate` window.
//! - Errors (RFC 5861): an inner service's error and a `500`, `502`, `503` or `504`
//!   response are failures that an expired response may answer (`x-cache: STALE`, with its
//!   `Age`): any stored response while the cache has
//!   [`fail_safe_max_duration`](crate::CacheBuilder::fail_safe_max_duration), and, with or
//!   without it, one stored with `Cache-Control: stale-if-error=N`, for `N` seconds after
//!   it expires. Other statuses are passed through as they are.
//! - `Cache-Control: stale-while-revalidate=N` (RFC 5861): for `N` seconds after the
//!   response expires (after its `max-age`, or the cache's `time_to_live` if that is
//!   shorter), a request for it gets the expired response at once (`x-cache: STALE`, with
//!   its `Age`) while one request to the service (single flight, in the background)
//!   revalidates it; every request until that load completes gets the expired response
//!   too, and the first after it the new one. Without fail-safe as well: the window is the
//!   response's own, and works through Redis (another replica honours it). A failed
//!   revalidation keeps the expired response for
//!   [`fail_safe_throttle`](crate::CacheBuilder::fail_safe_throttle).
//! - The cache's [`soft_timeout`](crate::CacheBuilder::soft_timeout) and
//!   [`eager_refresh`](crate::CacheBuilder::eager_refresh) apply: past the soft timeout,
//!   a request with an expired response to fall back on gets it (`STALE`) and the load
//!   completes in the background; a hit past the refresh point starts one background
//!   refresh (not for a `HEAD`) and is served the current response (`HIT`). Background
//!   loads call a clone of the inner service, made ready first.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::{header::CACHE_CONTROL, Request};
//! use layercake::{Cache, CacheLayer, MockClock};
//! use tower::ServiceExt;
//!
//! let clock = MockClock::new(); // feature `test-util`: time moved by hand
//! let cache = Cache::builder("feeds").clock(clock.clone()).build()?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let counted = calls.clone();
//! let app = Router::new()
//!     .route("/feed", get(move || {
//!         let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
//!         async move { ([(CACHE_CONTROL, "max-age=10, stale-while-revalidate=60")], format!("v{n}")) }
//!     }))
//!     .layer(CacheLayer::http(cache).x_cache_header(true));
//! let get = || app.clone().oneshot(Request::get("/feed").body(Body::empty()).unwrap());
//!
//! assert_eq!(get().await?.headers()["x-cache"], "MISS");
//! clock.advance(Duration::from_secs(30)); // expired, within the window
//! assert_eq!(get().await?.headers()["x-cache"], "STALE"); // at once; "v2" loads meanwhile
//! let revalidated = async {
//!     while calls.load(std::sync::atomic::Ordering::SeqCst) < 2
//!         || get().await.unwrap().headers()["x-cache"] != "HIT"
//!     {
//!         tokio::time::sleep(Duration::from_millis(5)).await;
//!     }
//! };
//! tokio::time::timeout(Duration::from_secs(5), revalidated).await?;
//! # Ok(()) }
//! ```
//!
//! Bad input never fails a request: a malformed `Cache-Control`, `Vary` or `Age` on a
//! response means "do not store", a malformed `Cache-Control` on a request means "bypass",
//! and request header values that are not UTF-8 are used as raw bytes.
//!
//! # The key
//! The key of a `GET` or `HEAD` is made of:
//! 1. the host as the client sent it, port included (the URI authority, else `Host`; see
//!    [`host_in_key`](HttpCacheLayer::host_in_key));
//! 2. the path;
//! 3. the query, per [`QueryKey`] (default: the whole query string as sent);
//! 4. the values of the [`key_headers`](HttpCacheLayer::key_headers) (default none);
//! 5. the per-user part, if [`per_user`](HttpCacheLayer::per_user) gives one.
//!
//! The method is not part of it: `GET` and `HEAD` share entries. A `HEAD` is answered
//! from a stored `GET` response (headers, including `Content-Length`, without the body);
//! a `HEAD` that misses goes to the service and its answer is not stored.
//!
//! These parts are hashed into a 32-byte BLAKE3 key (each part length-prefixed, header
//! values as raw bytes), which is the L1 key and, hashed once more by the
//! [key scheme](crate::cache), the Redis key. The format is stable within a
//! [`schema_version`](crate::CacheBuilder::schema_version).
//!
//! ## `Vary`: a two-step lookup
//! When a response has `Vary: A, B`, the cache stores two entries:
//! - under the **base key** above, a *marker* holding the names `a, b` (sorted, lowercase);
//! - under the **variant key** — the hash of the base key and, for each name, every value
//!   of that header in the request — the response itself.
//!
//! A lookup reads the base key: a response is a hit; a marker sends it on to the variant
//! key computed from this request's headers. A marker lives for the cache's
//! `time_to_live`; if a later response to the resource stops varying (or varies on other
//! headers), the marker is replaced. Each step is a separate lookup in the statistics.
//!
//! # Single flight and private responses
//! Concurrent misses on one key make one call to the service, and share its response if it
//! is stored. A response that is not stored (`private`, `Set-Cookie`, too large, an error
//! status...) is never shared: each waiting request then calls the service itself.
//!
//! # Tags
//! [`tags`](HttpCacheLayer::tags) (a function of the request's and the response's heads)
//! or [`tag_header`](HttpCacheLayer::tag_header) (a response header listing them) give each
//! stored response its [`Tags`](crate::cache::Tags), so that
//! [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) removes it from both tiers and
//! every replica.
//!
//! # gRPC
//! See [`GrpcCacheLayer`]: unary methods named in its configuration, keyed by method path
//! and request message, only `grpc-status: 0` stored.

mod admit;
mod body;
mod config;
mod future;
mod grpc;
mod key;
mod layer;
mod policy;
mod service;
mod stored;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use grpc::{GrpcCacheLayer, GrpcCacheService};
pub use layer::HttpCacheLayer;
pub use service::HttpCacheService;
pub use stored::CachedResponse;

use http::request::Parts;

/// The default of [`HttpCacheLayer::max_body_size`] and
/// [`GrpcCacheLayer::max_response_size`].
const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// How the query string joins the cache key ([`HttpCacheLayer::query`]).
///
/// Parameter names are compared as written in the URL, not percent-decoded.
///
/// ```
/// use layercake::cache::http::QueryKey;
///
/// // `?q=rust&page=2&utm_source=x` and `?page=2&q=rust` share one entry:
/// let key = QueryKey::only(["q", "page"]);
/// # let _ = key;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryKey {
    /// The whole query string, exactly as sent (the default).
    Full,
    /// All parameters, sorted by name, so that their order does not matter. Repeated
    /// parameters keep their relative order (`a=1&a=2` and `a=2&a=1` differ).
    Sorted,
    /// Only these parameters, sorted by name; the others (tracking parameters, say) are
    /// ignored.
    Only(Vec<String>),
    /// The query string is ignored: every query gets the same entry as the bare path.
    Ignore,
}

impl QueryKey {
    /// [`QueryKey::Only`] these parameter names.
    pub fn only<I>(names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        QueryKey::Only(names.into_iter().map(Into::into).collect())
    }
}

/// Gives a request the user part of its key ([`HttpCacheLayer::per_user`],
/// [`GrpcCacheLayer::per_user`]).
///
/// Implemented for every `Fn(&http::request::Parts) -> Option<K>` with `K: AsRef<[u8]>`
/// (a `String`, a `Vec<u8>`, a `u64`'s bytes...), and by [`NoUser`].
pub trait UserKey: Clone + Send + Sync + 'static {
    /// The user part.
    type Key: AsRef<[u8]>;

    /// The user part of the key of `req`; `None` when the request is anonymous.
    fn user_key(&self, req: &Parts) -> Option<Self::Key>;
}

impl<F, K> UserKey for F
where
    F: Fn(&Parts) -> Option<K> + Clone + Send + Sync + 'static,
    K: AsRef<[u8]>,
{
    type Key = K;

    fn user_key(&self, req: &Parts) -> Option<K> {
        self(req)
    }
}

/// The default [`UserKey`]: every request is anonymous, so requests with `Authorization`
/// or `Cookie` bypass the cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUser;

impl UserKey for NoUser {
    type Key = [u8; 0];

    fn user_key(&self, _: &Parts) -> Option<[u8; 0]> {
        None
    }
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing;
