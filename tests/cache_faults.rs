//! The non-blocking contract (DESIGN.md 2.1) against a real `redis-server` that is absent,
//! killed and restarted, black-holed by a fault proxy, frozen, or behind a password we do
//! not have. Every request must succeed and finish within the L2 budget plus the inner
//! service's time (checked with a generous 1 s bound), and L2 must come back on its own.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercake::{Cache, CacheBuilder, CacheLayer, L2State};
use support::{counting, eventually, key, Fault, FaultProxy, LogCapture, RedisServer};
use tower::{Layer, Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(5);
/// "Does not hang": far above a 50 ms budget plus an instant inner service.
const BOUND: Duration = Duration::from_secs(1);

/// One request, which must succeed within [`BOUND`].
async fn timed_get<S>(svc: &S, req: &str) -> String
where
    S: Service<String, Response = String, Error = String> + Clone,
{
    let started = Instant::now();
    let res = svc.clone().oneshot(req.to_owned()).await;
    let took = started.elapsed();
    assert!(took < BOUND, "request {req} took {took:?}");
    res.unwrap_or_else(|e| panic!("request {req} failed: {e}"))
}

fn builder<V: layercake::cache::CacheValue>(name: &str, url: String) -> CacheBuilder<V> {
    Cache::builder(name)
        .namespace("faults")
        .ttl_jitter(0.0)
        .l2_timeout(Duration::from_millis(50))
        .redis_url(url)
}

fn exists(server: &RedisServer, redis_key: &str) -> bool {
    server.query::<i64>(&["EXISTS", redis_key]) == 1
}

async fn until_written(server: &RedisServer, redis_key: &str) {
    eventually(WAIT, &format!("{redis_key} written to Redis"), || async {
        exists(server, redis_key)
    })
    .await;
}

async fn until_connected<V: Clone>(cache: &Cache<V>, what: &str) {
    eventually(WAIT, what, || async { cache.stats().l2_connected() }).await;
}

/// Another replica writes `req` to Redis through its own layer.
async fn write_from_another_replica(name: &str, server: &RedisServer, req: &str) {
    let writer = builder(name, server.url()).build().unwrap();
    until_connected(&writer, "the writer replica connected").await;
    let svc = CacheLayer::new(writer.clone(), key).layer(counting(Arc::default()));
    timed_get(&svc, req).await;
    until_written(server, &writer.redis_key(req)).await;
}

#[tokio::test]
async fn redis_never_started_then_appearing_is_used_without_a_rebuild() {
    let (logs, _guard) = LogCapture::new();
    let mut server = RedisServer::start();
    server.kill(); // the port stays reserved for us; nothing listens on it
    let cache = builder("absent", server.url()).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    for round in 0..2 {
        for i in 0..25 {
            assert_eq!(timed_get(&svc, &format!("k{i}")).await, format!("v:k{i}"));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            25,
            "round {round}: L1 works without Redis"
        );
    }
    eventually(WAIT, "the breaker opened", || async {
        cache.stats().l2 == L2State::BreakerOpen
    })
    .await;
    let before = cache.stats().l2_errors.breaker_open;
    timed_get(&svc, "after-open").await;
    let s = cache.stats();
    assert!(!s.l2_connected(), "{s:?}");
    assert!(
        s.l2_errors.breaker_open > before,
        "skipped reads are counted as breaker_open: {s:?}"
    );
    assert_eq!(s.l2_errors.io + s.l2_errors.server, 0, "{s:?}");

    // Rate-limited warnings: a handful of lines for 51 failing reads, and a reason given.
    let warnings = logs
        .contents()
        .lines()
        .filter(|l| l.contains("WARN"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings:\n{}",
        logs.contents()
    );

    // Redis appears on that port: the same cache starts using it.
    server.restart();
    until_connected(&cache, "the cache connected once Redis appeared").await;
    write_from_another_replica("absent", &server, "fresh").await;
    assert_eq!(timed_get(&svc, "fresh").await, "v:fresh");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        26,
        "served from Redis, not the service"
    );
    assert_eq!(cache.stats().hits_l2, 1);
    assert!(logs.contains("reachable again") || logs.contains("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cache_notices_redis_going_away_and_coming_back() {
    // No request touches this cache: only its own health check can tell that the
    // connection died, which is what a readiness probe on `stats()` relies on.
    let mut server = RedisServer::start();
    let cache = builder::<String>("idle", server.url()).build().unwrap();
    until_connected(&cache, "the idle cache connected").await;

    server.kill();
    eventually(WAIT, "the idle cache reports Redis gone", || async {
        !cache.stats().l2_connected()
    })
    .await;
    assert_eq!(cache.stats().l2, L2State::BreakerOpen);

    server.restart();
    until_connected(&cache, "the idle cache reconnected").await;
    let stats = cache.stats();
    assert_eq!(stats.l2_errors.total(), 0, "no request failed: {stats:?}");
    assert_eq!(stats.misses + stats.hits_l1 + stats.hits_l2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_keeps_serving_and_l2_comes_back() {
    let mut server = RedisServer::start();
    let a = builder("restart", server.url()).build().unwrap();
    let b = builder("restart", server.url()).build().unwrap();
    // C sees no traffic during the outage.
    let c = builder("restart", server.url()).build().unwrap();
    let calls_a = Arc::new(AtomicUsize::new(0));
    let calls_b = Arc::new(AtomicUsize::new(0));
    let calls_c = Arc::new(AtomicUsize::new(0));
    let svc_a = CacheLayer::new(a.clone(), key).layer(counting(calls_a.clone()));
    let svc_b = CacheLayer::new(b.clone(), key).layer(counting(calls_b.clone()));
    let svc_c = CacheLayer::new(c.clone(), key).layer(counting(calls_c.clone()));
    for cache in [&a, &b, &c] {
        until_connected(cache, "replica connected").await;
    }

    // Before: B reads what A wrote.
    timed_get(&svc_a, "before").await;
    until_written(&server, &a.redis_key("before")).await;
    timed_get(&svc_b, "before").await;
    assert_eq!((calls_b.load(Ordering::SeqCst), b.stats().hits_l2), (0, 1));

    server.kill();
    for i in 0..20 {
        assert_eq!(
            timed_get(&svc_a, &format!("down{i}")).await,
            format!("v:down{i}")
        );
        timed_get(&svc_b, &format!("down{i}")).await;
    }
    // Warm entries are still served from L1 while Redis is down.
    timed_get(&svc_a, "before").await;
    assert_eq!(calls_a.load(Ordering::SeqCst), 21);
    for cache in [&a, &b] {
        let s = cache.stats();
        assert_eq!(s.l2, L2State::BreakerOpen, "{s:?}");
        assert!(
            s.l2_errors.io >= 1,
            "the dropped connection was seen: {s:?}"
        );
        assert!(s.l2_errors.breaker_open >= 1, "then L2 was skipped: {s:?}");
    }

    server.restart(); // same port, empty
    until_connected(&a, "A reconnected after the restart").await;
    until_connected(&b, "B reconnected after the restart").await;
    timed_get(&svc_a, "after").await;
    until_written(&server, &a.redis_key("after")).await;
    let hits = b.stats().hits_l2;
    assert_eq!(timed_get(&svc_b, "after").await, "v:after");
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        20,
        "B read A's post-restart write"
    );
    assert_eq!(b.stats().hits_l2, hits + 1);

    // C, idle during the outage, still holds the dead connection: it learns of the outage
    // on its next read (a fast miss), then reconnects by itself, with no rebuild.
    timed_get(&svc_c, "after").await;
    assert!(calls_c.load(Ordering::SeqCst) <= 1);
    until_connected(&c, "the idle replica reconnected").await;
    let calls = calls_c.load(Ordering::SeqCst);
    timed_get(&svc_a, "after2").await;
    until_written(&server, &a.redis_key("after2")).await;
    timed_get(&svc_c, "after2").await;
    assert_eq!(calls_c.load(Ordering::SeqCst), calls, "C served from Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_redis_costs_the_budget_until_the_breaker_opens_then_recovers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let reader = builder("blackhole", proxy.url())
        .breaker_threshold(5)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // The reader stores nothing, so every L2 count below comes from its reads.
    let svc = CacheLayer::new(reader.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls.clone()));
    until_connected(&reader, "connected through the proxy").await;
    timed_get(&svc, "warm").await;
    assert_eq!(reader.stats().l2_errors.total(), 0);

    proxy.set(Fault::Blackhole);
    for i in 0..5 {
        timed_get(&svc, &format!("t{i}")).await;
        let s = reader.stats();
        assert_eq!(s.l2_errors.timeout, i + 1, "{s:?}");
        assert_eq!(s.l2_errors.breaker_open, 0, "{s:?}");
    }
    let s = reader.stats();
    assert!(
        s.breaker_open(),
        "5 consecutive timeouts open the breaker: {s:?}"
    );
    for i in 5..15 {
        timed_get(&svc, &format!("t{i}")).await;
    }
    let s = reader.stats();
    assert_eq!(s.l2_errors.timeout, 5, "no more time spent on Redis: {s:?}");
    assert_eq!(s.l2_errors.breaker_open, 10, "{s:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 16);

    proxy.set(Fault::Pass);
    until_connected(&reader, "the breaker closed after Redis came back").await;
    write_from_another_replica("blackhole", &server, "after").await;
    assert_eq!(timed_get(&svc, "after").await, "v:after");
    assert_eq!(calls.load(Ordering::SeqCst), 16, "served from Redis again");
    assert_eq!(reader.stats().hits_l2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_read_budget_stays_out_until_it_is_fast_again() {
    // 200 ms per answer against a 50 ms read budget: the probe's PING answers well within
    // the connect timeout, and a probe judged by that would close the breaker every probe
    // interval, costing the next reads their whole budget again (a flapping breaker).
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let reader = builder("slow", proxy.url())
        .l2_timeout(Duration::from_millis(50))
        .probe_interval(Duration::from_millis(50))
        .breaker_threshold(5)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(reader.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls.clone()));
    until_connected(&reader, "connected through the proxy").await;

    proxy.set(Fault::Delay(Duration::from_millis(200)));
    for i in 0..5 {
        timed_get(&svc, &format!("t{i}")).await;
    }
    let s = reader.stats();
    assert!(s.breaker_open(), "{s:?}");
    assert_eq!(s.l2_errors.timeout, 5, "{s:?}");
    // Twenty probe intervals of steady traffic: no read waits on the slow Redis again.
    for i in 0..40 {
        timed_get(&svc, &format!("s{i}")).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = reader.stats();
    assert_eq!(
        s.l2_errors.timeout, 5,
        "the breaker did not let reads back in: {s:?}"
    );
    assert!(s.breaker_open(), "{s:?}");

    proxy.set(Fault::Pass);
    until_connected(&reader, "the breaker closed once Redis was fast again").await;
    write_from_another_replica("slow", &server, "after").await;
    assert_eq!(timed_get(&svc, "after").await, "v:after");
    assert_eq!(reader.stats().hits_l2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_costs_the_budget_until_the_breaker_opens_then_recovers() {
    let server = RedisServer::start();
    let reader = builder("frozen", server.url()).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(reader.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls.clone()));
    until_connected(&reader, "connected").await;

    server.freeze();
    for i in 0..10 {
        timed_get(&svc, &format!("t{i}")).await;
    }
    let s = reader.stats();
    server.thaw();
    assert!(s.breaker_open(), "{s:?}");
    assert_eq!(
        (s.l2_errors.timeout, s.l2_errors.breaker_open),
        (5, 5),
        "{s:?}"
    );

    until_connected(&reader, "the breaker closed after SIGCONT").await;
    write_from_another_replica("frozen", &server, "after").await;
    timed_get(&svc, "after").await;
    assert_eq!(calls.load(Ordering::SeqCst), 10, "served from Redis again");
}

#[tokio::test]
async fn a_wrong_password_runs_l1_only_and_never_shows_the_password() {
    const SERVER_PW: &str = "s3cret-pw";
    const OUR_PW: &str = "wrong-pw-123";
    let (logs, _guard) = LogCapture::new();
    let server = RedisServer::start_with_password(SERVER_PW);
    let url = format!("redis://:{OUR_PW}@127.0.0.1:{}/", server.port());
    let builder = builder("auth", url);
    assert!(!format!("{builder:?}").contains(OUR_PW));
    let cache = builder.build().unwrap();
    assert!(!format!("{cache:?}").contains(OUR_PW), "{cache:?}");
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    for _ in 0..3 {
        assert_eq!(timed_get(&svc, "k").await, "v:k");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "L1 still caches");
    eventually(WAIT, "the breaker opened", || async {
        cache.stats().l2 == L2State::BreakerOpen
    })
    .await;
    eventually(WAIT, "a warning about Redis", || async {
        logs.contents()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("redis"))
    })
    .await;
    let all = logs.contents();
    assert!(
        all.contains("WRONGPASS") || all.to_lowercase().contains("auth"),
        "the warning says why: {all}"
    );
    assert!(!all.contains(OUR_PW), "password in the logs:\n{all}");
    assert!(!all.contains(SERVER_PW));
    assert!(
        all.contains(&format!("redis://:***@127.0.0.1:{}/", server.port())),
        "{all}"
    );
    assert!(!cache.stats().l2_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_bulkhead_l2_is_skipped() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = builder("bulkhead", proxy.url())
        .l2_timeout(Duration::from_secs(2))
        .l2_max_in_flight(1)
        .build()
        .unwrap();
    until_connected(&cache, "connected through the proxy").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    proxy.set(Fault::Delay(Duration::from_millis(100)));
    // The first read holds the only slot (taken on its first poll); the second skips L2.
    let (a, b) = tokio::join!(timed_get(&svc, "a"), timed_get(&svc, "b"));
    assert_eq!((a.as_str(), b.as_str()), ("v:a", "v:b"));
    let s = cache.stats();
    assert_eq!(s.l2_errors.bulkhead, 1, "{s:?}");
    assert_eq!(s.misses, 2);
    // The slot is released: the next read uses Redis again.
    timed_get(&svc, "c").await;
    assert_eq!(cache.stats().l2_errors.bulkhead, 1);
    assert!(cache.stats().l2_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_drops_and_counts_writes_instead_of_queueing_them() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = builder("writer", proxy.url())
        .l2_timeout(Duration::from_secs(2))
        .l2_write_queue(1)
        .build()
        .unwrap();
    until_connected(&cache, "connected through the proxy").await;
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(Arc::default()));

    proxy.set(Fault::Delay(Duration::from_millis(100)));
    // 20 misses whose reads overlap, so their 20 writes arrive at once at a slow writer.
    let reqs: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    let results = futures::future::join_all(reqs.iter().map(|r| timed_get(&svc, r))).await;
    assert_eq!(results.len(), 20);
    let dropped = cache.stats().l2_errors.dropped;
    assert!(dropped > 0, "a queue of 1 cannot take 20 writes at once");
    eventually(WAIT, "the writes that were queued landed", || async {
        server.query::<u64>(&["DBSIZE"]) == 20 - dropped
    })
    .await;
    assert!(
        cache.stats().l2_connected(),
        "dropping writes is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_fails_writes_only_and_does_not_trip_the_breaker() {
    let server = RedisServer::start();
    let cache = builder("oom", server.url()).build().unwrap();
    until_connected(&cache, "connected").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
    server.cmd(&["CONFIG", "SET", "maxmemory", "1"]); // noeviction: writes get OOM

    for i in 0..10 {
        timed_get(&svc, &format!("k{i}")).await;
    }
    eventually(WAIT, "OOM counted as a server error", || async {
        cache.stats().l2_errors.server >= 1
    })
    .await;
    let s = cache.stats();
    assert!(s.l2_connected(), "OOM is not an outage: {s:?}");
    assert_eq!((s.l2_errors.timeout, s.l2_errors.io), (0, 0), "{s:?}");
    assert_eq!(server.query::<u64>(&["DBSIZE"]), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}
