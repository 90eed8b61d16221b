//! `HttpCacheLayer` on a real Axum server over loopback, driven by a real HTTP client
//! (reqwest): one test per safe default, plus bad input. Expiry is driven by a `MockClock`,
//! never by sleeping. The last tests put a real Redis (L2) behind the cache: responses
//! round-trip through it between two replicas, and a broken Redis never fails a request.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use layercake::cache::http::CachedResponse;
use layercake::cache::http::{HttpCacheLayer, QueryKey};
use layercake::cache::Tags;
use layercake::{Cache, MockClock};
use support::{eventually, RedisServer};
use tokio::sync::Semaphore;

/// How many times each path (with its query) reached the handlers, behind the cache.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, u64>>>);

impl Calls {
    fn get(&self, path: &str) -> u64 {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The number of this call to the path, handed to the handler.
#[derive(Clone, Copy)]
struct CallNo(u64);

async fn count(calls: Extension<Calls>, mut req: Request, next: Next) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_owned();
    let n = {
        let mut map = calls.0 .0.lock().unwrap();
        let n = map.entry(path).or_insert(0);
        *n += 1;
        *n
    };
    req.extensions_mut().insert(CallNo(n));
    next.run(req).await
}

const BIG_CHUNKS: usize = 64;
const CHUNK: usize = 1024;

/// 64 KiB of bytes that differ from chunk to chunk, so reordering or loss would show.
/// Connected to Redis and subscribed to the other replicas' invalidations: the first
/// subscription empties L1, so a test that fills L1 before it could lose the entries.
fn ready(cache: &Cache<CachedResponse>) -> bool {
    let s = cache.stats();
    s.l2_connected() && s.invalidations_subscribed
}

fn big_body() -> Vec<u8> {
    (0..BIG_CHUNKS * CHUNK)
        .map(|i| (i / CHUNK) as u8 ^ (i % 251) as u8)
        .collect()
}

fn with_header(name: &'static str, value: &'static str, body: String) -> Response {
    (
        [(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )],
        body,
    )
        .into_response()
}

/// The routes, behind a call counter; the cache goes on top.
fn routes(calls: &Calls) -> Router {
    Router::new()
        .route(
            "/plain",
            get(|Extension(CallNo(n)): Extension<CallNo>| async move { format!("plain #{n}") }),
        )
        .route(
            "/cookie",
            get(|Extension(CallNo(n)): Extension<CallNo>| async move {
                with_header("set-cookie", "session=secret", format!("cookie #{n}"))
            }),
        )
        .route(
            "/cc/{value}",
            get(
                |Path(value): Path<String>, Extension(CallNo(n)): Extension<CallNo>| async move {
                    let mut res = format!("cc #{n}").into_response();
                    res.headers_mut().insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_str(&value).unwrap(),
                    );
                    res
                },
            ),
        )
        .route(
            "/vary/{value}",
            get(
                |Path(value): Path<String>,
                 headers: HeaderMap,
                 Extension(CallNo(n)): Extension<CallNo>| async move {
                    let lang = headers
                        .get(header::ACCEPT_LANGUAGE)
                        .map_or("-".to_owned(), |v| {
                            String::from_utf8_lossy(v.as_bytes()).into_owned()
                        });
                    let mut res = format!("lang={lang} #{n}").into_response();
                    res.headers_mut()
                        .insert(header::VARY, HeaderValue::from_str(&value).unwrap());
                    res
                },
            ),
        )
        .route(
            "/big",
            get(|| async {
                let chunks: Vec<Result<Bytes, Infallible>> = big_body()
                    .chunks(CHUNK)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/sized/{len}",
            get(
                |Path(len): Path<usize>, Extension(CallNo(n)): Extension<CallNo>| async move {
                    let mut body = format!("#{n}:").into_bytes();
                    body.resize(len, b'x');
                    body
                },
            ),
        )
        .route(
            "/status/{code}",
            get(
                |Path(code): Path<u16>, Extension(CallNo(n)): Extension<CallNo>| async move {
                    (StatusCode::from_u16(code).unwrap(), format!("status #{n}"))
                },
            ),
        )
        .route(
            "/tenant",
            get(
                |headers: HeaderMap, Extension(CallNo(n)): Extension<CallNo>| async move {
                    let t = headers.get("x-tenant").map_or(&b"-"[..], |v| v.as_bytes());
                    format!("tenant={:?} #{n}", t)
                },
            ),
        )
        .route(
            "/submit",
            post(|Extension(CallNo(n)): Extension<CallNo>| async move { format!("post #{n}") }),
        )
        .layer(middleware::from_fn(count))
        .layer(Extension(calls.clone()))
}

struct App {
    base: String,
    client: reqwest::Client,
    calls: Calls,
    cache: Cache<CachedResponse>,
    clock: MockClock,
}

fn test_cache(name: &str, clock: &MockClock, redis_url: Option<String>) -> Cache<CachedResponse> {
    Cache::builder(name)
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .redis_url(redis_url)
        .build()
        .unwrap()
}

/// The layer under test, with `x-cache` on so that tests can see hits.
fn layer(cache: Cache<CachedResponse>) -> HttpCacheLayer {
    HttpCacheLayer::new(cache).x_cache_header(true)
}

/// Serves `routes`, wrapped by `wrap` (given a fresh L1-only cache), on 127.0.0.1:0.
async fn start(name: &str, wrap: impl FnOnce(Router, Cache<CachedResponse>) -> Router) -> App {
    let clock = MockClock::new();
    serve(test_cache(name, &clock, None), clock, wrap).await
}

async fn serve(
    cache: Cache<CachedResponse>,
    clock: MockClock,
    wrap: impl FnOnce(Router, Cache<CachedResponse>) -> Router,
) -> App {
    let calls = Calls::default();
    let app = wrap(routes(&calls), cache.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    App {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        calls,
        cache,
        clock,
    }
}

/// One response, read in full.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn x_cache(&self) -> &str {
        self.header("x-cache").expect("x-cache header")
    }
}

impl App {
    async fn send(&self, req: reqwest::RequestBuilder) -> Got {
        let res = req.send().await.expect("request failed");
        Got {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.bytes().await.expect("body failed"),
        }
    }

    async fn get(&self, path: &str) -> Got {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &[u8])]) -> Got {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        self.send(req).await
    }
}

#[tokio::test]
async fn miss_then_hit() {
    let app = start("miss_then_hit", |r, c| r.layer(layer(c))).await;
    let first = app.get("/plain").await;
    assert_eq!(
        (first.status, first.x_cache(), first.text().as_str()),
        (StatusCode::OK, "MISS", "plain #1")
    );
    assert_eq!(first.header("age"), None, "a fresh response has no Age");

    app.clock.advance(Duration::from_secs(3));
    let second = app.get("/plain").await;
    assert_eq!(
        (second.status, second.x_cache(), second.text().as_str()),
        (StatusCode::OK, "HIT", "plain #1")
    );
    assert_eq!(
        second.header("age"),
        Some("3"),
        "Age counts from when it was stored"
    );
    assert_eq!(second.header("content-length"), Some("8"));
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert_eq!(app.calls.get("/plain"), 1);

    // The query is part of the key.
    assert_eq!(app.get("/plain?x=1").await.x_cache(), "MISS");
    let stats = app.cache.stats();
    assert_eq!((stats.misses, stats.hits_l1), (2, 1));
}

#[tokio::test]
async fn set_cookie_is_never_stored() {
    let app = start("set_cookie", |r, c| r.layer(layer(c))).await;
    for n in 1..=2 {
        let got = app.get("/cookie").await;
        assert_eq!(got.x_cache(), "MISS");
        assert_eq!(got.text(), format!("cookie #{n}"));
        assert_eq!(
            got.header("set-cookie"),
            Some("session=secret"),
            "passed to its own client"
        );
    }
    assert_eq!(app.calls.get("/cookie"), 2);
}

#[tokio::test]
async fn authorization_and_cookie_bypass_the_cache() {
    let app = start("auth_bypass", |r, c| r.layer(layer(c))).await;
    assert_eq!(app.get("/plain").await.text(), "plain #1"); // stored for anonymous requests
    for creds in [
        ("authorization", &b"Bearer alice"[..]),
        ("cookie", &b"sid=1"[..]),
    ] {
        let got = app.get_with("/plain", &[creds]).await;
        assert_eq!(
            got.x_cache(),
            "MISS",
            "{creds:?} must not read the shared entry"
        );
        assert!(got.text().starts_with("plain #") && got.text() != "plain #1");
    }
    assert_eq!(app.calls.get("/plain"), 3);
    assert_eq!(app.cache.stats().bypassed, 2);
    // ... nor write it: the anonymous entry is still the first one.
    assert_eq!(app.get("/plain").await.text(), "plain #1");
}

#[tokio::test]
async fn per_user_key_gives_each_user_their_own_entries() {
    let app = start("per_user", |r, c| {
        r.layer(layer(c).per_user(|req| {
            req.headers
                .get("authorization")
                .map(|v| v.as_bytes().to_vec())
        }))
    })
    .await;
    let alice = [("authorization", &b"Bearer alice"[..])];
    let bob = [("authorization", &b"Bearer bob"[..])];
    assert_eq!(app.get_with("/plain", &alice).await.text(), "plain #1");
    let again = app.get_with("/plain", &alice).await;
    assert_eq!(
        (again.x_cache(), again.text().as_str()),
        ("HIT", "plain #1")
    );
    let other = app.get_with("/plain", &bob).await;
    assert_eq!(
        (other.x_cache(), other.text().as_str()),
        ("MISS", "plain #2"),
        "never alice's entry"
    );
    let anonymous = app.get("/plain").await;
    assert_eq!(
        (anonymous.x_cache(), anonymous.text().as_str()),
        ("MISS", "plain #3")
    );
    // Set-Cookie is still never stored, even per user.
    app.get_with("/cookie", &alice).await;
    assert_eq!(app.get_with("/cookie", &alice).await.x_cache(), "MISS");
}

#[tokio::test]
async fn vary_adds_the_named_request_headers_to_the_key() {
    let app = start("vary", |r, c| r.layer(layer(c))).await;
    let path = "/vary/Accept-Language";
    let en = [("accept-language", &b"en"[..])];
    let de = [("accept-language", &b"de"[..])];
    assert_eq!(app.get_with(path, &en).await.text(), "lang=en #1");
    assert_eq!(app.get_with(path, &de).await.text(), "lang=de #2");
    let got = app.get_with(path, &en).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("HIT", "lang=en #1"));
    assert_eq!(got.header("vary"), Some("Accept-Language"));
    let got = app.get_with(path, &de).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("HIT", "lang=de #2"));
    // No Accept-Language is a variant of its own.
    assert_eq!(app.get(path).await.text(), "lang=- #3");
    assert_eq!(app.get(path).await.x_cache(), "HIT");
    assert_eq!(app.calls.get(path), 3);

    // `Vary: *` is never stored.
    app.get_with("/vary/*", &en).await;
    assert_eq!(app.get_with("/vary/*", &en).await.x_cache(), "MISS");
    assert_eq!(app.calls.get("/vary/*"), 2);
}

#[tokio::test]
async fn response_no_store_private_and_no_cache_are_not_stored() {
    let app = start("response_cc", |r, c| r.layer(layer(c))).await;
    for cc in [
        "no-store",
        "private",
        "no-cache",
        "max-age=0",
        "public,%20max-age=60,%20private",
    ] {
        let path = format!("/cc/{cc}");
        app.get(&path).await;
        let got = app.get(&path).await;
        assert_eq!(
            (got.status, got.x_cache()),
            (StatusCode::OK, "MISS"),
            "{cc}"
        );
        assert_eq!(app.calls.get(&path), 2, "{cc}");
    }
    // Sanity: a public response is stored.
    app.get("/cc/public").await;
    assert_eq!(app.get("/cc/public").await.x_cache(), "HIT");
}

#[tokio::test]
async fn request_no_store_bypasses_and_no_cache_refreshes() {
    let app = start("request_cc", |r, c| r.layer(layer(c))).await;
    assert_eq!(app.get("/plain").await.text(), "plain #1");

    let got = app
        .get_with("/plain", &[("cache-control", b"no-store")])
        .await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "plain #2"));
    assert_eq!(
        app.get("/plain").await.text(),
        "plain #1",
        "no-store left the entry alone"
    );

    let got = app
        .get_with("/plain", &[("cache-control", b"no-cache")])
        .await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "plain #3"));
    let got = app.get("/plain").await;
    assert_eq!(
        (got.x_cache(), got.text().as_str()),
        ("HIT", "plain #3"),
        "no-cache stored the fresh answer"
    );

    app.get_with("/plain", &[("pragma", b"no-cache")]).await;
    assert_eq!(app.get("/plain").await.text(), "plain #4");
    assert_eq!(app.calls.get("/plain"), 4);
}

#[tokio::test]
async fn max_age_and_s_maxage_cap_the_ttl() {
    let app = start("max_age", |r, c| r.layer(layer(c))).await;
    app.get("/cc/max-age=5").await;
    app.clock.advance(Duration::from_millis(4_900));
    let got = app.get("/cc/max-age=5").await;
    assert_eq!((got.x_cache(), got.header("age")), ("HIT", Some("4")));
    app.clock.advance(Duration::from_millis(200));
    assert_eq!(
        app.get("/cc/max-age=5").await.x_cache(),
        "MISS",
        "expired after max-age"
    );

    // s-maxage wins over max-age in a shared cache.
    let path = "/cc/max-age=600,%20s-maxage=2";
    app.get(path).await;
    app.clock.advance(Duration::from_millis(1_900));
    assert_eq!(app.get(path).await.x_cache(), "HIT");
    app.clock.advance(Duration::from_millis(200));
    assert_eq!(app.get(path).await.x_cache(), "MISS");

    // A max-age longer than the cache's time_to_live (60 s) is capped by it.
    app.get("/cc/max-age=3600").await;
    app.clock.advance(Duration::from_secs(59));
    assert_eq!(app.get("/cc/max-age=3600").await.x_cache(), "HIT");
    app.clock.advance(Duration::from_secs(2));
    assert_eq!(app.get("/cc/max-age=3600").await.x_cache(), "MISS");
}

#[tokio::test]
async fn body_over_the_limit_is_delivered_intact_and_not_stored() {
    let app = start("over_limit", |r, c| r.layer(layer(c).max_body_size(1000))).await;
    for _ in 0..2 {
        let got = app.get("/big").await;
        assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "MISS"));
        assert_eq!(got.body.len(), BIG_CHUNKS * CHUNK);
        assert!(got.body[..] == big_body()[..], "bytes lost or reordered");
    }
    assert_eq!(app.calls.get("/big"), 2);

    // A body of exactly the limit is stored; one byte more is not (Content-Length known).
    app.get("/sized/1000").await;
    assert_eq!(app.get("/sized/1000").await.x_cache(), "HIT");
    let first = app.get("/sized/1001").await;
    let second = app.get("/sized/1001").await;
    assert_eq!(second.x_cache(), "MISS");
    assert_eq!((first.body.len(), second.body.len()), (1001, 1001));
    assert!(second.body.starts_with(b"#2:"));
}

#[tokio::test]
async fn head_is_answered_from_the_stored_get() {
    let app = start("head", |r, c| r.layer(layer(c))).await;
    // A HEAD that misses goes to the service and is not stored...
    let head = app
        .send(app.client.head(format!("{}/plain", app.base)))
        .await;
    assert_eq!(
        (head.status, head.x_cache(), head.body.len()),
        (StatusCode::OK, "MISS", 0)
    );
    let get = app.get("/plain").await;
    assert_eq!(
        (get.x_cache(), get.text().as_str()),
        ("MISS", "plain #2"),
        "a HEAD stored nothing"
    );
    // ... and once a GET is stored, HEAD is a hit with the GET's headers, without a body.
    let head = app
        .send(app.client.head(format!("{}/plain", app.base)))
        .await;
    assert_eq!(
        (head.status, head.x_cache(), head.body.len()),
        (StatusCode::OK, "HIT", 0)
    );
    assert_eq!(head.header("content-length"), Some("8"));
    assert_eq!(app.calls.get("/plain"), 2);
}

#[tokio::test]
async fn only_configured_statuses_and_methods_are_stored() {
    let app = start("statuses", |r, c| r.layer(layer(c))).await;
    app.get("/status/404").await;
    let got = app.get("/status/404").await;
    assert_eq!((got.status, got.x_cache()), (StatusCode::NOT_FOUND, "MISS"));
    let post = app
        .send(app.client.post(format!("{}/submit", app.base)))
        .await;
    let post2 = app
        .send(app.client.post(format!("{}/submit", app.base)))
        .await;
    assert_eq!(
        (post.text().as_str(), post2.text().as_str()),
        ("post #1", "post #2")
    );

    let app = start("statuses_404", |r, c| {
        r.layer(layer(c).statuses([StatusCode::OK, StatusCode::NOT_FOUND]))
    })
    .await;
    app.get("/status/404").await;
    let got = app.get("/status/404").await;
    assert_eq!(
        (got.status, got.x_cache(), got.text().as_str()),
        (StatusCode::NOT_FOUND, "HIT", "status #1")
    );
}

#[tokio::test]
async fn malformed_cache_control_or_vary_means_do_not_store() {
    let app = start("malformed", |r, c| r.layer(layer(c))).await;
    for path in [
        "/cc/max-age=abc",
        "/cc/max-age=1,%20max-age=2",
        "/cc/private=%22open",
        "/vary/a%20b",
    ] {
        let first = app.get(path).await;
        let second = app.get(path).await;
        assert_eq!(
            (first.status, second.status),
            (StatusCode::OK, StatusCode::OK),
            "{path}"
        );
        assert_eq!(second.x_cache(), "MISS", "{path}");
        assert_eq!(app.calls.get(path), 2, "{path}");
    }
    // A malformed request Cache-Control bypasses; the request is still served.
    let got = app
        .get_with("/plain", &[("cache-control", b"max-age=\"")])
        .await;
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "MISS"));
    assert_eq!(
        app.get("/plain").await.x_cache(),
        "MISS",
        "the bypass stored nothing"
    );
}

#[tokio::test]
async fn non_utf8_header_values_still_make_keys() {
    let app = start("non_utf8", |r, c| {
        r.layer(layer(c).key_headers([HeaderName::from_static("x-tenant")]))
    })
    .await;
    let a = [("x-tenant", &b"caf\xe9"[..])];
    let b = [("x-tenant", &b"caf\xe8"[..])];
    assert_eq!(app.get_with("/tenant", &a).await.x_cache(), "MISS");
    let got = app.get_with("/tenant", &a).await;
    assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "HIT"));
    let other = app.get_with("/tenant", &b).await;
    assert_eq!(other.x_cache(), "MISS", "another raw value is another key");
    assert!(other.text().ends_with("#2"));
    // The same through Vary.
    let path = "/vary/Accept-Language";
    app.get_with(path, &[("accept-language", b"\xff1")]).await;
    assert_eq!(
        app.get_with(path, &[("accept-language", b"\xff1")])
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(
        app.get_with(path, &[("accept-language", b"\xff2")])
            .await
            .x_cache(),
        "MISS"
    );
}

#[tokio::test]
async fn query_modes_share_entries() {
    let app = start("query", |r, c| {
        r.layer(layer(c).query(QueryKey::only(["q"])))
    })
    .await;
    assert_eq!(app.get("/plain?q=rust&utm=a").await.x_cache(), "MISS");
    assert_eq!(app.get("/plain?utm=b&q=rust").await.x_cache(), "HIT");
    assert_eq!(app.get("/plain?q=go").await.x_cache(), "MISS");
}

#[tokio::test]
async fn private_responses_are_never_shared_with_concurrent_requests() {
    let app = Arc::new(start("private_flight", |r, c| r.layer(layer(c))).await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.get("/cookie").await.text() })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        8,
        "each request got its own response: {bodies:?}"
    );
    assert_eq!(app.calls.get("/cookie"), 8);
}

#[tokio::test]
async fn switched_off_cache_passes_everything_through() {
    let app = start("switch", |r, c| r.layer(layer(c))).await;
    app.get("/plain").await;
    app.cache.set_enabled(false);
    let got = app.get("/plain").await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "plain #2"));
    app.cache.set_enabled(true);
    assert_eq!(app.get("/plain").await.text(), "plain #1");
}

// ---- With Redis (L2) -------------------------------------------------------------------

/// Two replicas (separate processes' worth of cache: own L1, same Redis and cache name),
/// both connected to Redis.
async fn replicas(name: &str, redis: &RedisServer) -> (App, App) {
    let a = MockClock::new();
    let b = MockClock::new();
    // Each replica listens on its own port, which is part of the Host header; replicas
    // behind one load balancer would see the same host.
    let wrap = |r: Router, c: Cache<CachedResponse>| r.layer(layer(c).host_in_key(false));
    let a = serve(test_cache(name, &a, Some(redis.url())), a, wrap).await;
    let b = serve(test_cache(name, &b, Some(redis.url())), b, wrap).await;
    eventually(
        Duration::from_secs(5),
        "both replicas connected to Redis",
        || async { ready(&a.cache) && ready(&b.cache) },
    )
    .await;
    (a, b)
}

/// The Redis keys of cache `name`.
async fn redis_keys(redis: &Arc<RedisServer>, name: &str) -> Vec<String> {
    let redis = Arc::clone(redis);
    let pattern = format!("layercake:{name}:*");
    tokio::task::spawn_blocking(move || redis.query::<Vec<String>>(&["KEYS", &pattern]))
        .await
        .unwrap()
}

async fn wait_for_keys(redis: &Arc<RedisServer>, name: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} keys of {name} in Redis"),
        || async { redis_keys(redis, name).await.len() >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_round_trip_through_redis_between_replicas() {
    let redis = Arc::new(RedisServer::start());
    let (a, b) = replicas("l2_round_trip", &redis).await;
    let first = a.get("/cc/max-age=30").await;
    assert_eq!(first.x_cache(), "MISS");
    wait_for_keys(&redis, "l2_round_trip", 1).await;

    let got = b.get("/cc/max-age=30").await;
    assert_eq!(
        (got.status, got.x_cache(), got.text().as_str()),
        (StatusCode::OK, "HIT", "cc #1")
    );
    assert_eq!(got.header("cache-control"), Some("max-age=30"));
    assert_eq!(got.header("content-length"), first.header("content-length"));
    assert!(got.header("age").is_some());
    assert_eq!(
        b.calls.get("/cc/max-age=30"),
        0,
        "replica b never called its handler"
    );
    let stats = b.cache.stats();
    assert_eq!((stats.hits_l2, stats.misses), (1, 0));
    // Backfilled into b's L1.
    assert_eq!(b.get("/cc/max-age=30").await.x_cache(), "HIT");
    assert_eq!(b.cache.stats().hits_l1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_marker_and_variants_round_trip_through_redis() {
    let redis = Arc::new(RedisServer::start());
    let (a, b) = replicas("l2_vary", &redis).await;
    let path = "/vary/Accept-Language";
    a.get_with(path, &[("accept-language", b"en")]).await;
    a.get_with(path, &[("accept-language", b"de")]).await;
    wait_for_keys(&redis, "l2_vary", 3).await; // the marker and two variants

    let en = b.get_with(path, &[("accept-language", b"en")]).await;
    assert_eq!((en.x_cache(), en.text().as_str()), ("HIT", "lang=en #1"));
    let de = b.get_with(path, &[("accept-language", b"de")]).await;
    assert_eq!((de.x_cache(), de.text().as_str()), ("HIT", "lang=de #2"));
    let fr = b.get_with(path, &[("accept-language", b"fr")]).await;
    assert_eq!((fr.x_cache(), fr.text().as_str()), ("MISS", "lang=fr #1"));
    assert_eq!(b.calls.get(path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_a_miss_never_an_error() {
    let redis = Arc::new(RedisServer::start());
    let (a, b) = replicas("l2_garbage", &redis).await;
    a.get("/plain").await;
    wait_for_keys(&redis, "l2_garbage", 1).await;
    let keys = redis_keys(&redis, "l2_garbage").await;
    {
        let redis = Arc::clone(&redis);
        tokio::task::spawn_blocking(move || {
            for key in &keys {
                redis.cmd(&["SET", key, "lc\x01\x01 not an envelope"]);
            }
        })
        .await
        .unwrap();
    }
    let got = b.get("/plain").await;
    assert_eq!(
        (got.status, got.x_cache(), got.text().as_str()),
        (StatusCode::OK, "MISS", "plain #1")
    );
    assert!(b.cache.stats().l2_errors.decode >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_never_fails_a_request() {
    let mut redis = RedisServer::start();
    let clock = MockClock::new();
    let app = serve(
        test_cache("l2_down", &clock, Some(redis.url())),
        clock,
        |r, c| r.layer(layer(c)),
    )
    .await;
    assert_eq!(app.get("/plain").await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "redis connected", || async {
        ready(&app.cache)
    })
    .await;
    redis.kill();
    for n in 0..5 {
        let path = format!("/plain?n={n}");
        let miss = app.get(&path).await;
        assert_eq!((miss.status, miss.x_cache()), (StatusCode::OK, "MISS"));
        let hit = app.get(&path).await;
        assert_eq!(
            (hit.status, hit.x_cache(), hit.text()),
            (StatusCode::OK, "HIT", miss.text())
        );
    }
    eventually(Duration::from_secs(5), "L2 failures counted", || async {
        app.cache.stats().l2_errors.total() > 0
    })
    .await;
}

// ---- Background loads: stale-while-revalidate, eager refresh, soft timeout -------------

/// A route whose first call answers at once and whose later calls each wait for a permit
/// of `gate`, so that a test holds a background load while it looks at what clients get.
#[derive(Clone)]
struct Gated {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Gated {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Answers `gated #{n}` with `Cache-Control: {cc}` (none when empty).
    fn route(&self, cc: &'static str) -> axum::routing::MethodRouter {
        let this = self.clone();
        get(move || {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 {
                    this.gate.acquire().await.unwrap().forget();
                }
                let mut res = format!("gated #{n}").into_response();
                if !cc.is_empty() {
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
                }
                res
            }
        })
    }
}

async fn gated_app(
    cache: Cache<CachedResponse>,
    clock: MockClock,
    cc: &'static str,
) -> (App, Gated) {
    let gated = Gated::new();
    let route = gated.route(cc);
    let app = serve(cache, clock, move |r, c| {
        r.route("/gated", route).layer(layer(c))
    })
    .await;
    (app, gated)
}

/// `fut`, which must not wait for the gate: a test that would hang fails instead.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("the response waited for the backend")
}

/// Waits until `/gated` answers `body` with `x-cache: HIT`.
async fn wait_for_body(app: &App, body: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("a HIT with {body}"),
        || async {
            let got = app.get("/gated").await;
            got.x_cache() == "HIT" && got.text() == body
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_the_expired_response_and_revalidates_once() {
    let clock = MockClock::new();
    let cache = test_cache("swr", &clock, None); // no fail-safe: the response's own window
    let (app, gated) = gated_app(cache, clock, "max-age=10, stale-while-revalidate=60").await;
    let first = app.get("/gated").await;
    assert_eq!(
        (first.x_cache(), first.text().as_str()),
        ("MISS", "gated #1")
    );

    app.clock.advance(Duration::from_secs(30)); // expired, within the window
                                                // Many concurrent requests, while the revalidation waits at the gate: every one gets
                                                // the expired response at once, and the backend sees one call.
    let stale = within(futures::future::join_all(
        (0..50).map(|_| app.get("/gated")),
    ))
    .await;
    for got in &stale {
        assert_eq!(
            (got.status, got.x_cache(), got.text().as_str()),
            (StatusCode::OK, "STALE", "gated #1")
        );
        assert_eq!(got.header("age"), Some("30"));
    }
    assert_eq!(gated.calls(), 2, "one revalidation for 50 requests");

    gated.gate.add_permits(1);
    wait_for_body(&app, "gated #2").await;
    assert_eq!(
        gated.calls(),
        2,
        "the revalidated response is served from the cache"
    );
    let s = app.cache.stats();
    assert_eq!((s.refreshes, s.refresh_failures), (1, 0), "{s:?}");
    assert_eq!(
        s.fail_safe_activations, 0,
        "a revalidation is no fail-safe activation"
    );

    // Past the window, an expired response is a plain miss.
    app.clock.advance(Duration::from_secs(80));
    gated.gate.add_permits(1);
    let got = app.get("/gated").await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("MISS", "gated #3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_runs_through_the_http_layer() {
    let clock = MockClock::new();
    let cache = Cache::builder("http_eager")
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .eager_refresh(0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    let (app, gated) = gated_app(cache, clock, "").await;
    assert_eq!(app.get("/gated").await.text(), "gated #1");

    app.clock.advance(Duration::from_secs(40)); // past the refresh point, still fresh
    let hits = within(futures::future::join_all(
        (0..50).map(|_| app.get("/gated")),
    ))
    .await;
    for got in &hits {
        assert_eq!((got.x_cache(), got.text().as_str()), ("HIT", "gated #1"));
    }
    assert_eq!(gated.calls(), 2, "one refresh for 50 hits");
    gated.gate.add_permits(1);
    wait_for_body(&app, "gated #2").await;
    assert_eq!(gated.calls(), 2);
    assert_eq!(app.cache.stats().refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_runs_through_the_http_layer() {
    let clock = MockClock::new();
    let cache = Cache::builder("http_soft")
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .fail_safe_max_duration(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(50))
        .clock(clock.clone())
        .build()
        .unwrap();
    let (app, gated) = gated_app(cache, clock, "").await;
    assert_eq!(app.get("/gated").await.text(), "gated #1");

    app.clock.advance(Duration::from_secs(120)); // expired
                                                 // The load waits at the gate: past the soft timeout, the expired response.
    let got = within(app.get("/gated")).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("STALE", "gated #1"));
    let got = within(app.get("/gated")).await;
    assert_eq!((got.x_cache(), got.text().as_str()), ("STALE", "gated #1"));
    assert_eq!(
        gated.calls(),
        2,
        "the second request joined the load under way"
    );
    // The load completes in the background and updates the cache.
    gated.gate.add_permits(1);
    wait_for_body(&app, "gated #2").await;
    assert_eq!(gated.calls(), 2);
    let s = app.cache.stats();
    assert_eq!((s.refreshes, s.fail_safe_activations), (1, 1), "{s:?}");
}

// ---- Tags ------------------------------------------------------------------------------

/// Two replicas on one Redis whose layer tags each response with its `cache-tag` header;
/// `/tagged/{tags}` answers `{tags} #{n}` with `cache-tag: {tags}`, `n` counting the calls
/// of both replicas' handlers.
async fn tagged_replicas(name: &str, redis: &RedisServer) -> (App, App) {
    let calls = Arc::new(AtomicUsize::new(0));
    let wrap = |r: Router, c: Cache<CachedResponse>| {
        let calls = Arc::clone(&calls);
        r.route(
            "/tagged/{tags}",
            get(move |Path(tags): Path<String>| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut res = format!("{tags} #{n}").into_response();
                res.headers_mut()
                    .insert("cache-tag", HeaderValue::from_str(&tags).unwrap());
                res
            }),
        )
        .layer(
            layer(c)
                .host_in_key(false)
                .tag_header(HeaderName::from_static("cache-tag")),
        )
    };
    let (a, b) = (MockClock::new(), MockClock::new());
    let a = serve(test_cache(name, &a, Some(redis.url())), a, wrap).await;
    let b = serve(test_cache(name, &b, Some(redis.url())), b, wrap).await;
    eventually(
        Duration::from_secs(5),
        "both replicas connected and subscribed",
        || async {
            let (sa, sb) = (a.cache.stats(), b.cache.stats());
            sa.l2_connected() && sb.l2_connected() && sb.invalidations_subscribed
        },
    )
    .await;
    (a, b)
}

/// `x-cache` and body of a `GET`.
async fn got(app: &App, path: &str) -> (String, String) {
    let got = app.get(path).await;
    (got.x_cache().to_owned(), got.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_removes_http_responses_from_both_tiers_and_replicas() {
    let redis = Arc::new(RedisServer::start());
    let (a, b) = tagged_replicas("http_tags", &redis).await;
    let (user7, user8) = ("/tagged/user:7,team:1", "/tagged/user:8%20team:1");
    let hit = |body: &str| ("HIT".to_owned(), body.to_owned());
    let miss = |body: &str| ("MISS".to_owned(), body.to_owned());
    assert_eq!(got(&a, user7).await, miss("user:7,team:1 #1"));
    assert_eq!(got(&a, user8).await, miss("user:8 team:1 #2"));
    wait_for_keys(&redis, "http_tags", 2).await;
    // B reads both from Redis, then has them in its L1.
    for _ in 0..2 {
        assert_eq!(got(&b, user7).await, hit("user:7,team:1 #1"));
        assert_eq!(got(&b, user8).await, hit("user:8 team:1 #2"));
    }
    assert_eq!(b.cache.stats().hits_l2, 2);

    a.cache.invalidate_tag("user:7").await.unwrap();
    // A's own L1 at once, and the Redis entry for any reader: loaded again.
    assert_eq!(got(&a, user7).await, miss("user:7,team:1 #3"));
    wait_for_keys(&redis, "http_tags", 2).await;
    // B drops its L1 copy once the message arrives, and reads A's new response.
    eventually(
        Duration::from_secs(5),
        "B serves the new response",
        || async { got(&b, user7).await == hit("user:7,team:1 #3") },
    )
    .await;
    // Another tag's entry stays, on both.
    assert_eq!(got(&a, user8).await, hit("user:8 team:1 #2"));
    assert_eq!(got(&b, user8).await, hit("user:8 team:1 #2"));

    // A tag both share: both go. B, invalidating this time, loads them again itself.
    b.cache.invalidate_tag("team:1").await.unwrap();
    assert_eq!(got(&b, user8).await, miss("user:8 team:1 #4"));
    assert_eq!(got(&b, user7).await, miss("user:7,team:1 #5"));
    eventually(
        Duration::from_secs(5),
        "A serves B's new responses",
        || async {
            got(&a, user8).await == hit("user:8 team:1 #4")
                && got(&a, user7).await == hit("user:7,team:1 #5")
        },
    )
    .await;
    assert_eq!(a.cache.stats().misses, 3, "{:?}", a.cache.stats());
}

/// A replica that reads a response past its refresh point from Redis refreshes it in the
/// background, as an L1 hit would (B has no L1: every hit is a Redis hit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_hit_past_the_refresh_point_refreshes_the_response() {
    let redis = Arc::new(RedisServer::start());
    let name = "http_eager_l2";
    let eager = |clock: &MockClock, l1: bool| {
        Cache::builder(name)
            .time_to_live(Duration::from_secs(60))
            .ttl_jitter(0.0)
            .eager_refresh(0.5)
            .l1_enabled(l1)
            .clock(clock.clone())
            .redis_url(redis.url())
            .build()
            .unwrap()
    };
    let wrap = |r: Router, c: Cache<CachedResponse>| r.layer(layer(c).host_in_key(false));
    let (clock_a, clock_b) = (MockClock::new(), MockClock::new());
    let a = serve(eager(&clock_a, true), clock_a, wrap).await;
    let b = serve(eager(&clock_b, false), clock_b, wrap).await;
    eventually(Duration::from_secs(5), "both connected", || async {
        ready(&a.cache) && ready(&b.cache)
    })
    .await;
    assert_eq!(a.get("/plain").await.x_cache(), "MISS");
    wait_for_keys(&redis, name, 1).await;

    b.clock.advance(Duration::from_secs(40)); // past the refresh point, still fresh
    let got = b.get("/plain").await;
    assert_eq!((got.x_cache(), got.header("age")), ("HIT", Some("40")));
    assert_eq!(b.cache.stats().hits_l2, 1);
    // B's own handler refreshes it: stored now, so its age starts again.
    eventually(
        Duration::from_secs(10),
        "B's refreshed response",
        || async {
            let got = b.get("/plain").await;
            got.x_cache() == "HIT" && got.header("age") == Some("0")
        },
    )
    .await;
    assert_eq!(b.calls.get("/plain"), 1, "one refresh");
    let s = b.cache.stats();
    assert_eq!((s.refreshes, s.misses), (1, 0), "{s:?}");
}

/// `stale-while-revalidate` holds on a replica that reads the expired response from Redis:
/// the window travels in the stored response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_holds_on_another_replica_through_redis() {
    let redis = Arc::new(RedisServer::start());
    let name = "swr_l2";
    let cc = "max-age=10, stale-while-revalidate=60";
    let replica = || async {
        let clock = MockClock::new();
        let gated = Gated::new();
        let route = gated.route(cc);
        let cache = test_cache(name, &clock, Some(redis.url()));
        let wrap = move |r: Router, c| r.route("/gated", route).layer(layer(c).host_in_key(false));
        (serve(cache, clock, wrap).await, gated)
    };
    let ((a, _), (b, gated_b)) = (replica().await, replica().await);
    eventually(Duration::from_secs(5), "both connected", || async {
        ready(&a.cache) && ready(&b.cache)
    })
    .await;
    assert_eq!(a.get("/gated").await.x_cache(), "MISS");
    wait_for_keys(&redis, name, 1).await;

    b.clock.advance(Duration::from_secs(30)); // expired for B, within the window
    let got = within(b.get("/gated")).await;
    assert_eq!(
        (got.x_cache(), got.text().as_str(), got.header("age")),
        ("STALE", "gated #1", Some("30")),
        "A's response, from Redis"
    );
    // B's own handler revalidates it (its first call: not held at the gate).
    eventually(
        Duration::from_secs(10),
        "B's revalidated response",
        || async {
            let got = b.get("/gated").await;
            got.x_cache() == "HIT" && got.header("age") == Some("0")
        },
    )
    .await;
    assert_eq!(gated_b.calls(), 1);
    let s = b.cache.stats();
    assert_eq!((s.refreshes, s.fail_safe_activations), (1, 0), "{s:?}");
}

/// A tag rule that reads the request (its path and a header): the head it sees on a miss
/// is the request's, and `invalidate_tag` by it removes the response; hits never copy it.
#[tokio::test]
async fn a_tag_rule_reading_the_request_tags_by_path_and_header() {
    let calls = Arc::new(AtomicUsize::new(0));
    let wrap = |r: Router, c: Cache<CachedResponse>| {
        let calls = Arc::clone(&calls);
        r.route(
            "/items/{id}",
            get(move |Path(id): Path<String>| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                format!("item {id} #{n}")
            }),
        )
        .layer(layer(c).host_in_key(false).tags(|req, _res| {
            let tenant = req
                .headers
                .get("x-tenant")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            Tags::new([req.uri.path().as_bytes().to_vec(), tenant])
        }))
    };
    let clock = MockClock::new();
    let app = serve(test_cache("http_req_tags", &clock, None), clock, wrap).await;
    let get_as = |path: &'static str| {
        let app = &app;
        async move {
            let got = app.get_with(path, &[("x-tenant", b"acme")]).await;
            (got.x_cache().to_owned(), got.text())
        }
    };
    assert_eq!(
        get_as("/items/1").await,
        ("MISS".into(), "item 1 #1".into())
    );
    assert_eq!(
        get_as("/items/2").await,
        ("MISS".into(), "item 2 #2".into())
    );
    assert_eq!(get_as("/items/1").await, ("HIT".into(), "item 1 #1".into()));

    app.cache.invalidate_tag("/items/1").await.unwrap();
    assert_eq!(
        get_as("/items/1").await,
        ("MISS".into(), "item 1 #3".into())
    );
    assert_eq!(get_as("/items/2").await, ("HIT".into(), "item 2 #2".into()));
    app.cache.invalidate_tag("acme").await.unwrap();
    assert_eq!(
        get_as("/items/2").await,
        ("MISS".into(), "item 2 #4".into())
    );
}
