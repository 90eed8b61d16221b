//! Fail-safe, soft and hard timeouts and eager refresh (DESIGN.md 2.5), against a real
//! `redis-server` where Redis is involved: a failing backend answered with an expired entry
//! from L1, from Redis on a second replica (nothing in its L1), and from L1 with Redis down;
//! the throttle (one backend call per period while it fails), counted with a `MockClock`; a
//! slow load past its soft timeout that completes in the background; a hung load cut by the
//! hard timeout; 200 concurrent hits past the refresh point starting one refresh; the HTTP
//! layer's `x-cache: STALE`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercake::{Cache, CacheLayer, MockClock};
use support::{eventually, gated, RedisServer};
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);
const MAX: Duration = Duration::from_secs(3600);
const EXPIRED: Duration = Duration::from_secs(120);

fn builder(clock: &MockClock) -> layercake::CacheBuilder<String> {
    Cache::builder("fs")
        .namespace("failsafe")
        .time_to_live(TTL)
        .ttl_jitter(0.0)
        .fail_safe_max_duration(MAX)
        .l2_timeout(Duration::from_millis(500))
        .probe_interval(Duration::from_millis(50))
        .clock(clock.clone())
}

/// A backend that answers `v{n}:{req}` (`n` counting calls from 1), or fails while `failing`.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The `init` of a `try_get_with` for `key`: a call when it is polled (the cache drops
    /// it unpolled on a hit).
    fn load(&self, key: &str) -> impl std::future::Future<Output = Result<String, String>> {
        let (calls, failing) = (Arc::clone(&self.calls), Arc::clone(&self.failing));
        let key = key.to_owned();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if failing.load(Ordering::SeqCst) {
                Err(format!("backend down ({key})"))
            } else {
                Ok(format!("v{n}:{key}"))
            }
        }
    }
}

#[tokio::test]
async fn a_failing_backend_is_answered_from_an_expired_l1_entry() {
    let clock = MockClock::new();
    let cache = builder(&clock).build().unwrap();
    let backend = Backend::default();
    let v = cache.try_get_with("k", backend.load("k")).await.unwrap();
    assert_eq!(v, "v1:k");

    clock.advance(EXPIRED);
    assert_eq!(cache.get("k").await, None, "expired: a plain lookup misses");
    backend.fail(true);
    let stale = cache.try_get_with("k", backend.load("k")).await;
    assert_eq!(stale.ok().as_deref(), Some("v1:k"));
    let s = cache.stats();
    assert_eq!((s.stale, s.fail_safe_activations), (1, 1), "{s:?}");

    // Past the physical life, there is nothing to fall back on.
    clock.advance(MAX);
    let err = cache
        .try_get_with("k", backend.load("k"))
        .await
        .unwrap_err();
    assert_eq!(err.as_str(), "backend down (k)");

    // Without fail-safe, the error is the caller's.
    let plain: Cache<String> = Cache::builder("plain")
        .time_to_live(TTL)
        .clock(clock.clone())
        .build()
        .unwrap();
    backend.fail(false);
    plain.try_get_with("k", backend.load("k")).await.unwrap();
    clock.advance(EXPIRED);
    backend.fail(true);
    assert!(plain.try_get_with("k", backend.load("k")).await.is_err());
    assert_eq!(plain.stats().stale, 0);
}

#[tokio::test]
async fn an_invalidated_entry_is_no_fallback() {
    let clock = MockClock::new();
    let cache = builder(&clock).build().unwrap();
    let backend = Backend::default();
    cache.try_get_with("k", backend.load("k")).await.unwrap();
    cache.invalidate("k").await.unwrap();
    backend.fail(true);
    assert!(cache.try_get_with("k", backend.load("k")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_is_answered_from_an_expired_entry_in_redis() {
    let server = RedisServer::start();
    let clock = MockClock::new();
    let a = builder(&clock).redis_url(server.url()).build().unwrap();
    let b = builder(&clock).redis_url(server.url()).build().unwrap();
    let backend = Backend::default();
    a.try_get_with("k", backend.load("k")).await.unwrap();
    let redis_key = a.redis_key("k");
    eventually(WAIT, "A's entry in Redis", || async {
        server.query::<i64>(&["EXISTS", &redis_key]) == 1
    })
    .await;
    // The Redis TTL is the physical life, not the logical one.
    let pttl: i64 = server.query(&["PTTL", &redis_key]);
    assert!(pttl > EXPIRED.as_millis() as i64, "PTTL {pttl}");
    let bytes: Vec<u8> = server.query(&["GET", &redis_key]);
    assert_eq!(&bytes[..4], b"lc\x02\x01", "a version 2 envelope");

    clock.advance(EXPIRED);
    backend.fail(true);
    assert_eq!(b.get_l1("k"), None, "B holds nothing in L1");
    let stale = b.try_get_with("k", backend.load("k")).await.unwrap();
    assert_eq!(stale, "v1:k", "A's value, read from Redis");
    let s = b.stats();
    assert_eq!(
        (s.stale, s.fail_safe_activations, s.hits_l2),
        (1, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_too_the_l1_entry_is_served() {
    let mut server = RedisServer::start();
    let clock = MockClock::new();
    let cache = builder(&clock).redis_url(server.url()).build().unwrap();
    let backend = Backend::default();
    // Subscribed too: the first subscription empties L1, which would take the entry below.
    eventually(WAIT, "connected and subscribed", || async {
        let s = cache.stats();
        s.l2_connected() && s.invalidations_subscribed
    })
    .await;
    cache.try_get_with("k", backend.load("k")).await.unwrap();

    server.kill();
    clock.advance(EXPIRED);
    backend.fail(true);
    let stale = cache.try_get_with("k", backend.load("k")).await.unwrap();
    assert_eq!(stale, "v1:k");
    assert_eq!(cache.stats().stale, 1);
}

#[tokio::test]
async fn a_failing_backend_sees_one_call_per_throttle_period() {
    let clock = MockClock::new();
    let throttle = Duration::from_secs(10);
    let cache = builder(&clock)
        .fail_safe_throttle(throttle)
        .build()
        .unwrap();
    let backend = Backend::default();
    cache.try_get_with("k", backend.load("k")).await.unwrap();
    clock.advance(EXPIRED);
    backend.fail(true);

    // 100 requests over one throttle period (100 ms apart): the first reaches the backend.
    for _ in 0..100 {
        let v = cache.try_get_with("k", backend.load("k")).await.unwrap();
        assert_eq!(v, "v1:k");
        clock.advance(throttle / 101);
    }
    assert_eq!(backend.calls() - 1, 1);
    let s = cache.stats();
    assert_eq!((s.stale, s.fail_safe_activations), (100, 1), "{s:?}");

    // Once the period has passed, the backend is tried again: once more.
    clock.advance(throttle / 50);
    cache.try_get_with("k", backend.load("k")).await.unwrap();
    assert_eq!(backend.calls() - 1, 2);
    assert_eq!(cache.stats().fail_safe_activations, 2);

    // Back up: the next load after the throttle stores a fresh value.
    backend.fail(false);
    clock.advance(throttle);
    let fresh = cache.try_get_with("k", backend.load("k")).await.unwrap();
    assert!(fresh.ends_with(":k") && fresh != "v1:k", "{fresh}");
}

#[tokio::test]
async fn a_hung_load_is_cut_by_the_hard_timeout_and_answered_with_the_fallback() {
    let clock = MockClock::new();
    let cache = builder(&clock)
        .hard_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let backend = Backend::default();
    cache.try_get_with("k", backend.load("k")).await.unwrap();
    clock.advance(EXPIRED);
    let hung = std::future::pending::<Result<String, String>>();
    let v = tokio::time::timeout(WAIT, cache.try_get_with("k", hung))
        .await
        .expect("the hard timeout ends the wait")
        .unwrap();
    assert_eq!(v, "v1:k");
    let s = cache.stats();
    assert_eq!((s.stale, s.fail_safe_activations), (1, 1), "{s:?}");
}

/// A layered service over `gated` (each call waits for a permit of `gate`).
fn gated_layer(
    cache: &Cache<String>,
    calls: &Arc<AtomicUsize>,
    gate: &Arc<Semaphore>,
) -> impl Service<String, Response = String, Error = String, Future: Send> + Clone + Send + 'static
{
    CacheLayer::new(cache.clone(), support::key).layer(gated(Arc::clone(calls), Arc::clone(gate)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_soft_timeout_the_caller_gets_the_fallback_and_the_load_completes_later() {
    let server = RedisServer::start();
    let clock = MockClock::new();
    let cache = builder(&clock)
        .redis_url(server.url())
        .soft_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(1)));
    let svc = gated_layer(&cache, &calls, &gate);
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "v1:k");

    clock.advance(EXPIRED);
    // No permit: the second call hangs until the gate opens.
    let answer = tokio::time::timeout(WAIT, svc.clone().oneshot("k".into()))
        .await
        .expect("the soft timeout ends the wait");
    assert_eq!(
        answer.unwrap(),
        "v1:k",
        "the expired value, at the soft timeout"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the load is under way");
    // Meanwhile, the same key is answered at once from the flight, with no new call.
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "v1:k");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let s = cache.stats();
    assert_eq!((s.stale, s.refreshes), (2, 0), "{s:?}");

    gate.add_permits(1);
    eventually(WAIT, "the background load stored its value", || async {
        cache.get_l1("k").as_deref() == Some("v2:k")
    })
    .await;
    let redis_key = cache.redis_key("k");
    eventually(WAIT, "and wrote it to Redis", || async {
        let bytes: Vec<u8> = server.query(&["GET", &redis_key]);
        bytes.ends_with(b"v2:k")
    })
    .await;
    assert_eq!(svc.oneshot("k".into()).await.unwrap(), "v2:k");
    let s = cache.stats();
    assert_eq!((s.refreshes, s.fail_safe_activations), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_hits_past_the_refresh_point_start_one_refresh() {
    let clock = MockClock::new();
    let cache: Cache<String> = Cache::builder("eager")
        .time_to_live(TTL)
        .ttl_jitter(0.0)
        .eager_refresh(0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(1)));
    let svc = gated_layer(&cache, &calls, &gate);
    assert_eq!(svc.clone().oneshot("hot".into()).await.unwrap(), "v1:hot");

    // Before the refresh point: hits refresh nothing.
    clock.advance(Duration::from_secs(29));
    assert_eq!(svc.clone().oneshot("hot".into()).await.unwrap(), "v1:hot");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_secs(2)); // past half the TTL
    let hits: Vec<_> = (0..200)
        .map(|_| tokio::spawn(svc.clone().oneshot("hot".to_owned())))
        .collect();
    for hit in hits {
        assert_eq!(
            hit.await.unwrap().unwrap(),
            "v1:hot",
            "the current value, at once"
        );
    }
    // The refresh waits on the gate: exactly one is under way.
    eventually(WAIT, "the refresh called the service", || async {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    gate.add_permits(1);
    eventually(WAIT, "the refresh stored its value", || async {
        cache.get_l1("hot").as_deref() == Some("v2:hot")
    })
    .await;
    let s = cache.stats();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for 200 hits");
    assert_eq!((s.refreshes, s.misses), (1, 1), "{s:?}");
    assert!(s.hits_l1 >= 202, "{s:?}");

    // The refreshed entry lives a whole TTL from its refresh: past the old expiry, a hit.
    clock.advance(Duration::from_secs(40));
    assert_eq!(svc.oneshot("hot".into()).await.unwrap(), "v2:hot");
    assert_eq!(cache.stats().misses, 1, "the hot key never expired");
}

// One thread: a refresh spawned by a hit runs at the test's next yield, so "none started"
// can be checked without waiting for something that should not happen.
#[tokio::test]
async fn a_failed_refresh_keeps_the_entry_and_waits_for_the_throttle() {
    let clock = MockClock::new();
    let cache: Cache<String> = Cache::builder("eager-fail")
        .time_to_live(TTL)
        .ttl_jitter(0.0)
        .eager_refresh(0.5)
        .fail_safe_throttle(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = CacheLayer::new(cache.clone(), support::key).layer(service_fn(move |req: String| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                Ok(format!("v1:{req}"))
            } else {
                Err("down".to_owned())
            }
        }
    }));
    svc.clone().oneshot("k".into()).await.unwrap();
    clock.advance(Duration::from_secs(31));
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "v1:k");
    eventually(WAIT, "the refresh failed", || async {
        cache.stats().refresh_failures == 1
    })
    .await;
    for _ in 0..20 {
        assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "v1:k");
        // Any refresh this hit spawned runs now (its service answers at once).
        tokio::task::yield_now().await;
    }
    assert_eq!(cache.stats().refresh_failures, 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no refresh within the throttle"
    );
    clock.advance(Duration::from_secs(6));
    svc.oneshot("k".into()).await.unwrap();
    eventually(WAIT, "the next refresh, after the throttle", || async {
        cache.stats().refresh_failures == 2
    })
    .await;
}

#[cfg(feature = "http")]
#[tokio::test]
async fn the_http_layer_marks_a_fallback_x_cache_stale() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use layercake::cache::http::CachedResponse;

    let clock = MockClock::new();
    let cache: Cache<CachedResponse> = Cache::builder("pages")
        .time_to_live(TTL)
        .ttl_jitter(0.0)
        .fail_safe_max_duration(MAX)
        .clock(clock.clone())
        .build()
        .unwrap();
    let backend = Backend::default();
    let b = backend.clone();
    let svc = CacheLayer::http(cache.clone())
        .x_cache_header(true)
        .layer(service_fn(move |_: Request<Full<Bytes>>| {
            let load = b.load("page");
            async move {
                load.await
                    .map(|body| Response::new(Full::new(Bytes::from(body))))
            }
        }));
    let get = || {
        let req = Request::get("http://example.com/page")
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.clone().oneshot(req)
    };
    async fn read<B: http_body::Body>(res: Response<B>) -> (String, Option<String>, String)
    where
        B::Error: std::fmt::Debug,
    {
        let x_cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
        let age = res
            .headers()
            .get("age")
            .map(|a| a.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (x_cache, age, String::from_utf8(body.to_vec()).unwrap())
    }
    let (x, _, body) = read(get().await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "v1:page"));

    clock.advance(EXPIRED);
    backend.fail(true);
    // The load fails: the expired response, marked, with its age.
    let (x, age, body) = read(get().await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("STALE", "v1:page"));
    assert_eq!(age.as_deref(), Some("120"));
    // Within the throttle: from L1, still marked.
    let (x, _, body) = read(get().await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("STALE", "v1:page"));
    assert_eq!(backend.calls(), 2);
    assert_eq!(cache.stats().stale, 2);
}

/// RFC 5861's `stale-if-error` on a cache without fail-safe: the response's own window.
#[cfg(feature = "http")]
#[tokio::test]
async fn an_http_response_with_stale_if_error_answers_a_503_after_it_expires() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use layercake::cache::http::CachedResponse;

    let clock = MockClock::new();
    let cache: Cache<CachedResponse> = Cache::builder("sie")
        .time_to_live(Duration::from_secs(3600))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let (calls, down) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (c, d) = (Arc::clone(&calls), Arc::clone(&down));
    let svc = CacheLayer::http(cache.clone())
        .x_cache_header(true)
        .layer(service_fn(move |req: Request<Full<Bytes>>| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let down = d.load(Ordering::SeqCst);
            async move {
                let mut res = Response::new(Full::new(Bytes::from(format!("v{n}"))));
                if down {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                } else {
                    let cc = if req.uri().path() == "/sie" {
                        "max-age=60, stale-if-error=300"
                    } else {
                        "max-age=60"
                    };
                    res.headers_mut()
                        .insert(http::header::CACHE_CONTROL, cc.parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        }));
    let get = |path: &'static str| {
        let req = Request::get(format!("http://example.com{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.clone().oneshot(req)
    };
    async fn read<B: http_body::Body>(res: Response<B>) -> (u16, String, String)
    where
        B::Error: std::fmt::Debug,
    {
        let status = res.status().as_u16();
        let x_cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, x_cache, String::from_utf8(body.to_vec()).unwrap())
    }
    let s = |status, x: &str, body: &str| (status, x.to_owned(), body.to_owned());

    assert_eq!(read(get("/sie").await.unwrap()).await, s(200, "MISS", "v1"));
    assert_eq!(
        read(get("/plain").await.unwrap()).await,
        s(200, "MISS", "v2")
    );
    clock.advance(Duration::from_secs(120)); // both expired
    down.store(true, Ordering::SeqCst);
    assert_eq!(
        read(get("/sie").await.unwrap()).await,
        s(200, "STALE", "v1")
    );
    assert_eq!(
        read(get("/sie").await.unwrap()).await,
        s(200, "STALE", "v1")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the second within the throttle"
    );
    // Without the directive, and without fail-safe, the 503 goes through.
    assert_eq!(
        read(get("/plain").await.unwrap()).await,
        s(503, "MISS", "v4")
    );
    // Past max-age + stale-if-error, the 503 goes through too.
    clock.advance(Duration::from_secs(300));
    assert_eq!(read(get("/sie").await.unwrap()).await, s(503, "MISS", "v5"));
    let s = cache.stats();
    assert_eq!((s.stale, s.fail_safe_activations), (2, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_l1_the_throttle_is_kept_in_redis() {
    let server = RedisServer::start();
    let clock = MockClock::new();
    let cache = builder(&clock)
        .l1_enabled(false)
        .redis_url(server.url())
        .build()
        .unwrap();
    let backend = Backend::default();
    cache.try_get_with("k", backend.load("k")).await.unwrap();
    let redis_key = cache.redis_key("k");
    let expires_at = || {
        let bytes: Vec<u8> = server.query(&["GET", &redis_key]);
        (bytes.len() >= 20).then(|| u64::from_be_bytes(bytes[12..20].try_into().unwrap()))
    };
    eventually(WAIT, "the entry in Redis", || async {
        expires_at().is_some()
    })
    .await;
    let first = expires_at();

    clock.advance(EXPIRED);
    backend.fail(true);
    assert_eq!(
        cache.try_get_with("k", backend.load("k")).await.unwrap(),
        "v1:k"
    );
    eventually(WAIT, "the throttle written to Redis", || async {
        expires_at() != first
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            cache.try_get_with("k", backend.load("k")).await.unwrap(),
            "v1:k"
        );
    }
    assert_eq!(backend.calls(), 2, "one call while the throttle lasts");
    let s = cache.stats();
    assert_eq!(
        (s.stale, s.fail_safe_activations, s.hits_l2),
        (1, 1, 10),
        "{s:?}"
    );
}

/// Eager refresh on a Redis hit: a replica that reads an entry past its refresh point from
/// Redis (here one without L1, so every hit is a Redis hit) refreshes it once, and the
/// requests meanwhile get the current value at once rather than waiting for the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_hit_past_the_refresh_point_starts_one_refresh() {
    let server = RedisServer::start();
    let replica = |clock: &MockClock, l1: bool| {
        Cache::<String>::builder("eager-l2")
            .time_to_live(TTL)
            .ttl_jitter(0.0)
            .eager_refresh(0.5)
            .l1_enabled(l1)
            .l2_timeout(Duration::from_millis(500))
            .redis_url(server.url())
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (clock_a, clock_b) = (MockClock::new(), MockClock::new());
    let (a, b) = (replica(&clock_a, true), replica(&clock_b, false));
    let (calls, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(1)));
    let (svc_a, svc_b) = (
        gated_layer(&a, &calls, &gate),
        gated_layer(&b, &calls, &gate),
    );
    eventually(WAIT, "both connected and subscribed", || async {
        let (a, b) = (a.stats(), b.stats());
        a.l2_connected()
            && b.l2_connected()
            && a.invalidations_subscribed
            && b.invalidations_subscribed
    })
    .await;
    assert_eq!(svc_a.oneshot("hot".into()).await.unwrap(), "v1:hot");
    // Polled in Redis itself: a read through B before the write lands would count a miss.
    let redis_key = b.redis_key("hot");
    eventually(WAIT, "the entry in Redis", || async {
        server.query::<i64>(&["EXISTS", &redis_key]) == 1
    })
    .await;

    clock_b.advance(Duration::from_secs(31)); // past half the TTL
    let hits: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc_b.clone().oneshot("hot".to_owned())))
        .collect();
    let hits = tokio::time::timeout(WAIT, futures::future::join_all(hits))
        .await
        .expect("the hits waited for the refresh");
    for hit in hits {
        assert_eq!(
            hit.unwrap().unwrap(),
            "v1:hot",
            "the current value, at once"
        );
    }
    eventually(WAIT, "the refresh called the service", || async {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    // While the refresh waits at the gate, more requests: the current value, at once (they
    // join the refresh's flight, which hands them the value it started from).
    for _ in 0..20 {
        let hit = tokio::time::timeout(WAIT, svc_b.clone().oneshot("hot".to_owned()))
            .await
            .expect("a request during the refresh waited for it");
        assert_eq!(hit.unwrap(), "v1:hot");
    }
    gate.add_permits(1);
    eventually(WAIT, "the refresh stored its value", || async {
        b.get("hot").await.as_deref() == Some("v2:hot")
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for 70 hits");
    let s = b.stats();
    assert_eq!((s.refreshes, s.misses), (1, 0), "{s:?}");
}
