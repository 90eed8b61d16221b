//! The Redis tier against a real `redis-server` (one private server per test): the key
//! scheme and TTL, L2 hits on a second replica with L1 backfilled at the REMAINING TTL,
//! bad entries (corrupt bytes, another Redis type, an unknown envelope version), the size
//! limit, `clear()` and `invalidate()`, and 200 concurrent misses on one key.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercake::{Cache, CacheBuilder, CacheLayer, MockClock};
use support::{counting, eventually, gated, key, RedisServer};
use tower::{service_fn, Layer, Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(5);

async fn get<S>(svc: &S, req: &str) -> String
where
    S: Service<String, Response = String, Error = String> + Clone,
{
    svc.clone().oneshot(req.to_owned()).await.unwrap()
}

fn builder<V: layercake::cache::CacheValue>(name: &str, server: &RedisServer) -> CacheBuilder<V> {
    Cache::builder(name)
        .namespace("test")
        .ttl_jitter(0.0)
        .redis_url(server.url())
}

fn exists(server: &RedisServer, redis_key: &str) -> bool {
    server.query::<i64>(&["EXISTS", redis_key]) == 1
}

fn raw(server: &RedisServer, redis_key: &str) -> Option<Vec<u8>> {
    server.query::<Option<Vec<u8>>>(&["GET", redis_key])
}

/// Waits until the background writer has put `redis_key` into Redis.
async fn until_written(server: &RedisServer, redis_key: &str) {
    eventually(WAIT, &format!("{redis_key} written to Redis"), || async {
        exists(server, redis_key)
    })
    .await;
}

/// Waits until a cache's supervisor has connected to Redis.
async fn until_connected<V: Clone>(cache: &Cache<V>) {
    eventually(WAIT, "the cache connected to Redis", || async {
        cache.stats().l2_connected()
    })
    .await;
}

fn envelope_times(bytes: &[u8]) -> (u64, u64) {
    let at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap());
    (at(4), at(12))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_envelope_and_pttl_have_the_documented_format() {
    let server = RedisServer::start();
    let cache = Cache::builder("provider")
        .namespace("myapp")
        .time_to_live(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .redis_url(server.url())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
    assert_eq!(get(&svc, "query=rust").await, "v:query=rust");

    // {namespace}:{cache name}:v{schema version}:{32 lowercase hex of BLAKE3}
    let rk = cache.redis_key("query=rust");
    let digest = rk
        .strip_prefix("myapp:provider:v1:")
        .unwrap_or_else(|| panic!("unexpected prefix: {rk}"));
    assert_eq!(digest.len(), 32, "{rk}");
    assert!(
        digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{rk}"
    );
    assert_eq!(digest, &blake3::hash(b"query=rust").to_hex()[..32]);

    until_written(&server, &rk).await;
    let pttl: i64 = server.query(&["PTTL", &rk]);
    assert!(
        (9_000..=10_000).contains(&pttl),
        "PTTL {pttl} for a 10 s TTL without jitter"
    );

    // The envelope: magic "lc", version 1, codec 1, written-at and expires-at 10 s apart.
    let bytes = raw(&server, &rk).unwrap();
    assert_eq!(&bytes[..4], b"lc\x01\x01");
    let (written, expires) = envelope_times(&bytes);
    assert_eq!(expires - written, 10_000);

    // A schema bump gives another key: old entries are orphaned, not misread.
    let v2 = Cache::<String>::builder("provider")
        .namespace("myapp")
        .schema_version(2)
        .build()
        .unwrap();
    assert!(v2.redis_key("query=rust").starts_with("myapp:provider:v2:"));
    assert_ne!(v2.redis_key("query=rust"), rk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_hit_on_a_second_replica_backfills_l1_with_the_remaining_ttl() {
    let server = RedisServer::start();
    let a = builder("replicas", &server)
        .time_to_live(Duration::from_secs(10))
        .build()
        .unwrap();
    let clock_b = MockClock::new();
    let b = builder("replicas", &server)
        .time_to_live(Duration::from_secs(10))
        .clock(clock_b.clone())
        .build()
        .unwrap();
    let calls_a = Arc::new(AtomicUsize::new(0));
    let calls_b = Arc::new(AtomicUsize::new(0));
    let svc_a = CacheLayer::new(a.clone(), key).layer(counting(calls_a.clone()));
    let svc_b = CacheLayer::new(b.clone(), key).layer(counting(calls_b.clone()));

    assert_eq!(get(&svc_a, "k").await, "v:k");
    assert_eq!(calls_a.load(Ordering::SeqCst), 1);
    until_written(&server, &a.redis_key("k")).await;
    until_connected(&b).await;

    // B, 6 s later by its clock: an L2 hit, without calling its service.
    clock_b.advance(Duration::from_secs(6));
    assert_eq!(get(&svc_b, "k").await, "v:k");
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        0,
        "B served A's entry from Redis"
    );
    let s = b.stats();
    assert_eq!((s.hits_l2, s.misses, s.l1_entries), (1, 0, 1), "{s:?}");

    // The backfilled L1 copy serves the next read without Redis.
    assert_eq!(get(&svc_b, "k").await, "v:k");
    let s = b.stats();
    assert_eq!((s.hits_l1, s.hits_l2), (1, 1), "{s:?}");

    // 4.5 s more: past the entry's 10 s. A fresh 10 s TTL on backfill would still hit L1;
    // the remaining ~4 s has run out, and so has the envelope (Redis still holds the key:
    // its own TTL runs on real time).
    clock_b.advance(Duration::from_millis(4_500));
    assert!(exists(&server, &a.redis_key("k")));
    assert_eq!(get(&svc_b, "k").await, "v:k");
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        1,
        "expired by the remaining TTL: B calls its service"
    );
    let s = b.stats();
    assert_eq!((s.hits_l1, s.hits_l2, s.misses), (1, 1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_are_a_miss_and_are_removed() {
    let server = RedisServer::start();
    // This reader stores nothing, so what removes the entry can only be the reader itself.
    let cache = builder("corrupt", &server).build().unwrap();
    let rk = cache.redis_key("k");
    server.cmd(&["SET", &rk, "definitely not an envelope"]);
    until_connected(&cache).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls.clone()));
    assert_eq!(get(&svc, "k").await, "v:k");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "corrupt bytes are a miss");
    let s = cache.stats();
    assert_eq!(
        (s.misses, s.hits_l2, s.l2_errors.decode),
        (1, 0, 1),
        "{s:?}"
    );
    eventually(WAIT, "the corrupt entry removed", || async {
        !exists(&server, &rk)
    })
    .await;
    assert!(
        cache.stats().l2_connected(),
        "a bad entry is not a Redis failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_another_redis_type_is_a_miss_and_is_replaced() {
    let server = RedisServer::start();
    for (i, setup) in [["HSET", "field", "value"], ["LPUSH", "x", "y"]]
        .iter()
        .enumerate()
    {
        let cache = builder(&format!("wrongtype{i}"), &server).build().unwrap();
        let rk = cache.redis_key("k");
        server.cmd(&[setup[0], &rk, setup[1], setup[2]]);
        until_connected(&cache).await;

        let calls = Arc::new(AtomicUsize::new(0));
        let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
        assert_eq!(get(&svc, "k").await, "v:k");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{}: a miss", setup[0]);
        let s = cache.stats();
        assert_eq!(s.l2_errors.decode, 1, "{}: {s:?}", setup[0]);
        assert_eq!(s.l2_errors.server + s.l2_errors.io, 0, "{s:?}");
        assert!(
            s.l2_connected(),
            "WRONGTYPE must not trip the breaker: {s:?}"
        );
        // Removed, and replaced by the fresh value.
        eventually(WAIT, "the wrong-type entry replaced", || async {
            server.query::<String>(&["TYPE", &rk]) == "string"
                && raw(&server, &rk).is_some_and(|b| b.starts_with(b"lc\x01"))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_envelope_version_is_a_miss_and_is_removed() {
    let server = RedisServer::start();
    let writer = builder("version", &server).build().unwrap();
    let calls_w = Arc::new(AtomicUsize::new(0));
    let svc_w = CacheLayer::new(writer.clone(), key).layer(counting(calls_w.clone()));
    get(&svc_w, "k").await;
    let rk = writer.redis_key("k");
    until_written(&server, &rk).await;

    // Byte 2 is the envelope version: make it one this build does not know.
    let mut bytes = raw(&server, &rk).unwrap();
    assert_eq!(bytes[2], 1);
    bytes[2] = 9;
    let mut conn = server.async_conn().await;
    redis::cmd("SET")
        .arg(&rk)
        .arg(&bytes)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // A second replica (cold L1) that stores nothing reads it.
    let reader = builder("version", &server).build().unwrap();
    until_connected(&reader).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(reader.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls.clone()));
    assert_eq!(get(&svc, "k").await, "v:k");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an unknown version is a miss"
    );
    let s = reader.stats();
    assert_eq!(
        (s.misses, s.hits_l2, s.l2_errors.decode),
        (1, 0, 1),
        "{s:?}"
    );
    eventually(WAIT, "the unknown-version entry removed", || async {
        !exists(&server, &rk)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_entry_size_is_served_but_not_stored() {
    let server = RedisServer::start();
    let cache = builder("oversized", &server)
        .max_entry_size(256)
        .build()
        .unwrap();
    until_connected(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, String>(if req == "big" {
                "x".repeat(10_000)
            } else {
                "small".to_owned()
            })
        }
    });
    let svc = CacheLayer::new(cache.clone(), key).layer(inner);

    for n in 1..=2 {
        assert_eq!(get(&svc, "big").await.len(), 10_000, "served in full");
        assert_eq!(calls.load(Ordering::SeqCst), n, "not in L1: called again");
    }
    let s = cache.stats();
    assert_eq!((s.not_stored, s.l1_entries, s.misses), (2, 0, 2), "{s:?}");

    // The writer is FIFO: once a later write has landed, the big one would have too.
    get(&svc, "small").await;
    until_written(&server, &cache.redis_key("small")).await;
    assert!(
        !exists(&server, &cache.redis_key("big")),
        "not written to Redis"
    );
    assert_eq!(cache.stats().l1_entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_every_key_of_this_cache_and_nothing_else() {
    let server = RedisServer::start();
    let cache = Cache::builder("provider")
        .namespace("app")
        .redis_url(server.url())
        .l2_write_queue(4096)
        .build()
        .unwrap();
    until_connected(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
    const N: usize = 2_000;
    for i in 0..N {
        get(&svc, &format!("k{i}")).await;
    }

    // Entries of an older schema version of the same cache: also this cache's.
    let old = Cache::builder("provider")
        .namespace("app")
        .schema_version(7)
        .redis_url(server.url())
        .build()
        .unwrap();
    // Neighbours that must survive: a name that extends ours, the same name in another
    // namespace, and keys nobody in layercake wrote.
    let neighbour = Cache::builder("provider2")
        .namespace("app")
        .redis_url(server.url())
        .build()
        .unwrap();
    let other_ns = Cache::builder("provider")
        .namespace("other")
        .redis_url(server.url())
        .build()
        .unwrap();
    for c in [&old, &neighbour, &other_ns] {
        let svc = CacheLayer::new(c.clone(), key).layer(counting(Arc::default()));
        for i in 0..5 {
            get(&svc, &format!("k{i}")).await;
        }
    }
    server.cmd(&["SET", "app:provider", "not ours: no trailing colon"]);
    server.cmd(&["SET", "unrelated", "x"]);
    let others = 5 + 5 + 2; // neighbour, other_ns, two raw keys
    eventually(WAIT, "every write landed", || async {
        server.query::<usize>(&["DBSIZE"]) == N + 5 + others
    })
    .await;

    let removed = cache.clear().await.unwrap();
    assert_eq!(removed, (N + 5) as u64);
    assert_eq!(server.query::<usize>(&["DBSIZE"]), others);
    assert!(exists(&server, "app:provider"));
    assert!(exists(&server, "unrelated"));
    assert!(exists(&server, &neighbour.redis_key("k0")));
    assert!(exists(&server, &other_ns.redis_key("k0")));
    let left: Vec<String> = server.query(&["KEYS", "app:provider:*"]);
    assert!(left.is_empty(), "{left:?}");

    // L1 is cleared too: the next request calls the service.
    let before = calls.load(Ordering::SeqCst);
    get(&svc, "k0").await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_removes_a_key_from_both_tiers() {
    let server = RedisServer::start();
    let a = builder("invalidate", &server).build().unwrap();
    // B keeps no L1 copy (other replicas' L1 copies are not invalidated, by design).
    let b = builder("invalidate", &server)
        .l1_enabled(false)
        .build()
        .unwrap();
    let calls_a = Arc::new(AtomicUsize::new(0));
    let calls_b = Arc::new(AtomicUsize::new(0));
    let svc_a = CacheLayer::new(a.clone(), key).layer(counting(calls_a.clone()));
    // B stores nothing, so it cannot put the key back behind A's back.
    let svc_b = CacheLayer::new(b.clone(), key)
        .store_when(|_: &String| false)
        .layer(counting(calls_b.clone()));
    get(&svc_a, "k").await;
    get(&svc_a, "other").await;
    until_written(&server, &a.redis_key("k")).await;
    until_written(&server, &a.redis_key("other")).await;
    get(&svc_b, "k").await;
    assert_eq!(b.stats().hits_l2, 1, "before: B reads A's entry from Redis");

    a.invalidate("k").await.unwrap();
    assert!(
        !exists(&server, &a.redis_key("k")),
        "gone from Redis when invalidate returns"
    );
    assert!(exists(&server, &a.redis_key("other")));

    get(&svc_b, "k").await;
    assert_eq!(
        calls_b.load(Ordering::SeqCst),
        1,
        "B: not in Redis any more"
    );
    get(&svc_a, "k").await;
    assert_eq!(
        calls_a.load(Ordering::SeqCst),
        3,
        "A: neither in L1 nor in Redis any more"
    );
    get(&svc_a, "other").await;
    assert_eq!(calls_a.load(Ordering::SeqCst), 3, "other keys stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_misses_on_one_key_make_one_inner_call() {
    let server = RedisServer::start();
    let cache = builder("stampede", &server).build().unwrap();
    until_connected(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            // The workload: slow enough that the 200 requests overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, String>(format!("v:{req}"))
        }
    });
    let svc = CacheLayer::new(cache.clone(), key).layer(inner);

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot("hot".to_owned()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "v:hot");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one inner call");
    let s = cache.stats();
    assert_eq!(s.misses, 1, "{s:?}");
    assert_eq!(s.coalesced + s.hits_l1 + s.hits_l2, 199, "{s:?}");
    assert!(s.coalesced > 0, "the requests overlapped: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_jitter_spreads_expiries_and_only_shortens_them() {
    let server = RedisServer::start();
    let cache = Cache::builder("jitter")
        .namespace("test")
        .time_to_live(Duration::from_secs(100))
        .ttl_jitter(0.2)
        .redis_url(server.url())
        .build()
        .unwrap();
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(Arc::default()));
    let mut pttls = Vec::new();
    for i in 0..20 {
        let req = format!("k{i}");
        get(&svc, &req).await;
        let rk = cache.redis_key(&req);
        until_written(&server, &rk).await;
        pttls.push(server.query::<i64>(&["PTTL", &rk]));
    }
    assert!(
        pttls.iter().all(|p| (79_000..=100_000).contains(p)),
        "within [80%, 100%] of the TTL: {pttls:?}"
    );
    pttls.sort();
    pttls.dedup_by(|a, b| (*a - *b).abs() < 50);
    assert!(
        pttls.len() >= 10,
        "entries written together do not expire together: {pttls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_under_way_when_its_key_is_invalidated_writes_nothing_to_redis() {
    let server = RedisServer::start();
    let cache = builder("epochs", &server).build().unwrap();
    until_connected(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(gated(calls.clone(), gate.clone()));

    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.oneshot("a".to_owned()).await }
    });
    eventually(WAIT, "the first load started", || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    cache.invalidate("a").await.unwrap();
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), "v1:a");

    // The writer is first in, first out: once a later write has landed, the earlier one
    // (if any) has been sent too.
    gate.add_permits(1);
    assert_eq!(svc.clone().oneshot("b".to_owned()).await.unwrap(), "v2:b");
    until_written(&server, &cache.redis_key("b")).await;
    assert!(
        !exists(&server, &cache.redis_key("a")),
        "the value read before the invalidation reached Redis"
    );
}
