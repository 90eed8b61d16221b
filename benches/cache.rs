//! Cache benchmarks, each measured side by side with its baseline in one run.
//!
//! - `l1_hit`: a request answered by L1 through `CacheService`, against the bare service.
//! - `l1_hit_prometheus`: the same with a Prometheus recorder installed (both sides).
//! - `l1_hit_failsafe`: an L1 hit through `CacheService` on a cache with fail-safe, soft and
//!   hard timeouts and eager refresh on, against the same hit on a cache with them off.
//! - `http_l1_hit`: an HTTP request answered by L1 through `CacheLayer::http`, against the
//!   bare service building the same response.
//! - `l2_hit`: a request answered by Redis through `CacheService` (L1 off), against a raw
//!   `GET` of the same bytes on one shared `MultiplexedConnection`.
//! - `l2_hit_64`: the same with 64 concurrent callers (distinct keys, so single flight
//!   coalesces nothing), reported as throughput.
//!
//! - `l2_hit_tagged`: `Cache::get` answered by Redis, three sides interleaved: an untagged
//!   entry on an L1-less cache (`plain`), a tagged one on an L1-less cache (`tagged_no_l1`:
//!   subscribed for tag times, so a map read), and a tagged one on a cache whose L1
//!   (capacity 1, keys read in turn) misses (`tagged_subscribed`: a map read, then the L1
//!   backfill).
//!
//! - `cluster_l2_hit`: `Cache::get` answered by a three-primary Redis Cluster (L1 off),
//!   against a raw `GET` of the same key on a redis-rs cluster connection, interleaved.
//!
//! The L2 benchmarks start their own `redis-server` (or cluster) on free loopback ports.
//!
//! ```text
//! cargo bench --bench cache
//! ```

use std::convert::Infallible;
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tower::{service_fn, ServiceExt};

use layercake::cache::http::CachedResponse;
use layercake::{Cache, CacheLayer};
use tower_layer::Layer;

#[allow(unreachable_pub)]
#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::*;

fn l1_hit(c: &mut Criterion) {
    l1_hit_group(c, "l1_hit");
}

/// With a Prometheus recorder installed for the whole process: run last, since every
/// cache built after it reports to it (the bare side is measured with it installed too).
fn l1_hit_prometheus(c: &mut Criterion) {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder");
    l1_hit_group(c, "l1_hit_prometheus");
}

fn l1_hit_group(c: &mut Criterion, name: &str) {
    let bare = bare(hits("rust"));
    let cache = Cache::builder("bench-l1").build().expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare.clone());
    // Warm L1 with one miss (the service answers synchronously, so the miss path, boxed
    // future and all, also completes in one poll).
    let req = search();
    let _ = call_now(&mut layered, req.clone());
    assert_eq!(cache.stats().misses, 1);

    paired_in_memory(c, name, bare, &mut layered, || req.clone());
    assert_eq!(cache.stats().misses, 1, "every layered run was an L1 hit");
}

/// The `l1_hit` layer on a plain cache (the baseline, `plain_cache`) against the same on a
/// cache with fail-safe, both timeouts and eager refresh on (`cache_layer`).
fn l1_hit_failsafe(c: &mut Criterion) {
    let plain_cache = Cache::builder("bench-l1").build().expect("valid config");
    let mut plain = CacheLayer::new(plain_cache.clone(), key).layer(bare(hits("rust")));
    let cache = with_failsafe(Cache::builder("bench-l1-failsafe"))
        .build()
        .expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare(hits("rust")));
    let req = search();
    let _ = call_now(&mut plain, req.clone());
    let _ = call_now(&mut layered, req.clone());
    paired_group(
        c,
        "l1_hit_failsafe",
        "plain_cache",
        plain,
        &mut layered,
        || req.clone(),
    );
    assert_eq!(
        plain_cache.stats().misses,
        1,
        "every plain run was an L1 hit"
    );
    let s = cache.stats();
    assert_eq!((s.misses, s.refreshes), (1, 0), "every run was an L1 hit");
}

/// An HTTP request answered by L1 through `CacheLayer::http` (defaults: key over host,
/// path and query; `Age` and `x-cache` set), against the bare service building the same
/// response (`benches/common`).
fn http_l1_hit(c: &mut Criterion) {
    let bare = http_bare();
    let cache: Cache<CachedResponse> = Cache::builder("bench-http").build().expect("valid config");
    let mut layered = CacheLayer::http(cache.clone()).layer(bare.clone());
    // Warm L1 with one miss (it reads the body, so it needs a runtime).
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(layered.clone().oneshot(http_request()))
        .expect("infallible");
    assert_eq!(cache.stats().misses, 1);

    paired_in_memory(c, "http_l1_hit", bare, &mut layered, http_request);
    assert_eq!(cache.stats().misses, 1, "every layered run was an L1 hit");
}

/// Runs one baseline round and one layered round, alternating which goes first (A-B, then
/// B-A) so that order effects cancel, and returns their times.
async fn paired<A, AF, B, BF>(i: u64, baseline: A, layer: B) -> (Duration, Duration)
where
    A: FnOnce() -> AF,
    AF: Future,
    B: FnOnce() -> BF,
    BF: Future,
{
    async fn timed<F: Future>(f: F) -> Duration {
        let t = Instant::now();
        f.await;
        t.elapsed()
    }
    if i.is_multiple_of(2) {
        let a = timed(baseline()).await;
        (a, timed(layer()).await)
    } else {
        let b = timed(layer()).await;
        (timed(baseline()).await, b)
    }
}

/// One group of an in-memory pair: the bare service against the layered one, each call
/// answered in its first poll, measured interleaved (see [`interleaved`]).
fn paired_in_memory<R, S, L>(
    c: &mut Criterion,
    name: &str,
    bare: S,
    layered: &mut L,
    request: impl FnMut() -> R,
) where
    S: tower::Service<R> + Clone,
    S::Error: std::fmt::Debug,
    L: tower::Service<R>,
    L::Error: std::fmt::Debug,
{
    paired_group(c, name, "bare_service", bare, layered, request)
}

/// An interleaved pair: the baseline `bare` (reported as `baseline_name`) against `layered`.
fn paired_group<R, S, L>(
    c: &mut Criterion,
    name: &str,
    baseline_name: &'static str,
    bare: S,
    layered: &mut L,
    mut request: impl FnMut() -> R,
) where
    S: tower::Service<R> + Clone,
    S::Error: std::fmt::Debug,
    L: tower::Service<R>,
    L::Error: std::fmt::Debug,
{
    let mut group = c.benchmark_group(name);
    for side in [Side::Baseline, Side::Layer] {
        let mut svc = bare.clone();
        let layered = &mut *layered;
        group.bench_function(side.name(baseline_name), |b| {
            b.iter_custom(|iters| {
                interleaved(
                    side,
                    iters,
                    &mut request,
                    |r| call_now(&mut svc, r),
                    |r| call_now(layered, r),
                )
            })
        });
    }
    group.finish();
}

/// Times `iters` in-memory calls of one side of a pair. Calls run in chunks of 64, a
/// baseline chunk and a layered chunk in turn (alternating which goes first), and only
/// `side`'s chunks are timed: a load spike on this shared machine then lands on both sides
/// alike. As in `iter_batched`, inputs are made and outputs dropped outside the timing.
fn interleaved<I, A, B>(
    side: Side,
    iters: u64,
    mut input: impl FnMut() -> I,
    mut baseline: impl FnMut(I) -> A,
    mut layer: impl FnMut(I) -> B,
) -> Duration {
    const CHUNK: u64 = 64;
    fn chunk<I, O>(
        n: u64,
        input: &mut impl FnMut() -> I,
        call: &mut impl FnMut(I) -> O,
    ) -> Duration {
        let inputs: Vec<I> = (0..n).map(|_| input()).collect();
        let mut outputs = Vec::with_capacity(inputs.len());
        let t = Instant::now();
        for i in inputs {
            outputs.push(call(i));
        }
        let took = t.elapsed();
        drop(outputs);
        took
    }
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let (a, b) = if (done / CHUNK).is_multiple_of(2) {
            let a = chunk(n, &mut input, &mut baseline);
            (a, chunk(n, &mut input, &mut layer))
        } else {
            let b = chunk(n, &mut input, &mut layer);
            (chunk(n, &mut input, &mut baseline), b)
        };
        timed += side.pick(a, b);
        done += n;
    }
    timed
}

/// Which half of an interleaved pair a benchmark times.
#[derive(Clone, Copy)]
enum Side {
    Baseline,
    Layer,
}

impl Side {
    /// The benchmark's name: the baseline's, or `cache_layer`.
    fn name(self, baseline: &'static str) -> &'static str {
        match self {
            Side::Baseline => baseline,
            Side::Layer => "cache_layer",
        }
    }

    fn pick(self, baseline: Duration, layer: Duration) -> Duration {
        match self {
            Side::Baseline => baseline,
            Side::Layer => layer,
        }
    }
}

/// A multiplexed connection checked out of a bb8-redis pool, as the cache gets its own.
struct L2Bench {
    /// Two workers, for the 64-caller runs.
    rt: tokio::runtime::Runtime,
    /// One thread for the one-caller latency runs: the caller and the connection's driver
    /// task share it, so the figure is the round trip, not cross-thread wake-up latency.
    single: tokio::runtime::Runtime,
    server: support::RedisServer,
    conn: redis::aio::MultiplexedConnection,
    cache: Cache<Hits>,
}

fn l2_setup() -> L2Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = support::RedisServer::start();
    let cache = Cache::builder("bench-l2")
        .l1_enabled(false)
        .redis_url(server.url())
        .time_to_live(Duration::from_secs(3600))
        // Loopback round trips take tens of microseconds; a generous budget keeps
        // scheduler hiccups under 64 callers from turning into misses.
        .l2_timeout(Duration::from_millis(500))
        .build()
        .expect("valid config");
    // The baseline's connection is made the way the cache makes its own (a bb8-redis
    // pool's multiplexed connection), so each pair differs only by the layer.
    let conn = rt.block_on(pooled_connection(&server.url()));
    // Store 64 keys through the layer, so the L2 benches read real envelopes.
    rt.block_on(async {
        let svc = CacheLayer::new(cache.clone(), key).layer(service_fn(|r: Search| {
            ready(Ok::<_, Infallible>(hits(&r.query)))
        }));
        for i in 0..64 {
            svc.clone()
                .oneshot(Search {
                    query: format!("q{i}"),
                })
                .await
                .expect("infallible");
        }
        server.until_keys(64).await;
    });
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    L2Bench {
        rt,
        single,
        server,
        conn,
        cache,
    }
}

fn l2_hit(c: &mut Criterion) {
    let env = l2_setup();
    let layered = CacheLayer::new(env.cache.clone(), key).layer(service_fn(|_: Search| async {
        panic!("the L2 benchmarks must never miss");
        #[allow(unreachable_code)]
        Ok::<Hits, Infallible>(hits(""))
    }));
    let redis_keys: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| env.cache.redis_key(format!("q{i}")))
            .collect(),
    );

    // A connection and a cache of the single-threaded runtime's own, so that their driver
    // tasks run there.
    let (single_conn, single_layered) = env.single.block_on(async {
        let conn = pooled_connection(&env.server.url()).await;
        let cache = connected_l2_cache("bench-l2", env.server.url()).await;
        let svc = CacheLayer::new(cache, key).layer(service_fn(|_: Search| async {
            panic!("the L2 benchmarks must never miss");
            #[allow(unreachable_code)]
            Ok::<Hits, Infallible>(hits(""))
        }));
        (conn, svc)
    });
    // The VM's loopback latency drifts by 2x between runs, so each pair is measured
    // interleaved: every iteration runs one baseline request and one layered request, and
    // each benchmark times only its own side. Drift then lands on both sides alike.
    let raw_get = |conn: &redis::aio::MultiplexedConnection, k: &str| {
        let mut conn = conn.clone();
        let k = k.to_owned();
        async move {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("GET");
            v
        }
    };
    let mut group = c.benchmark_group("l2_hit");
    for side in [Side::Baseline, Side::Layer] {
        let name = match side {
            Side::Baseline => "raw_get",
            Side::Layer => "cache_layer",
        };
        group.bench_function(name, |b| {
            let conn = single_conn.clone();
            let svc = single_layered.clone();
            let k = redis_keys[0].clone();
            b.to_async(&env.single).iter_custom(|iters| {
                let conn = conn.clone();
                let svc = svc.clone();
                let k = k.clone();
                async move {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        let (raw, layered) = paired(
                            i,
                            || raw_get(&conn, &k),
                            || async {
                                svc.clone()
                                    .oneshot(Search { query: "q0".into() })
                                    .await
                                    .expect("infallible");
                            },
                        )
                        .await;
                        timed += side.pick(raw, layered);
                    }
                    timed
                }
            })
        });
    }
    group.finish();

    // 64 concurrent callers, each with its own key; throughput = requests per second.
    const CALLERS: usize = 64;
    const PER_CALLER: u64 = 20;
    let mut group = c.benchmark_group("l2_hit_64");
    group.throughput(Throughput::Elements(CALLERS as u64 * PER_CALLER));
    for side in [Side::Baseline, Side::Layer] {
        let name = match side {
            Side::Baseline => "raw_get",
            Side::Layer => "cache_layer",
        };
        group.bench_function(name, |b| {
            b.to_async(&env.rt).iter_custom(|iters| {
                let conn = env.conn.clone();
                let keys = Arc::clone(&redis_keys);
                let layered = layered.clone();
                async move {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        let raw_round = || async {
                            let tasks: Vec<_> = (0..CALLERS)
                                .map(|i| {
                                    let conn = conn.clone();
                                    let k = keys[i].clone();
                                    tokio::spawn(async move {
                                        for _ in 0..PER_CALLER {
                                            raw_get(&conn, &k).await;
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.expect("task");
                            }
                        };
                        let layer_round = || async {
                            let tasks: Vec<_> = (0..CALLERS)
                                .map(|i| {
                                    let svc = layered.clone();
                                    tokio::spawn(async move {
                                        let req = Search {
                                            query: format!("q{i}"),
                                        };
                                        for _ in 0..PER_CALLER {
                                            svc.clone()
                                                .oneshot(req.clone())
                                                .await
                                                .expect("infallible");
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.expect("task");
                            }
                        };
                        let (raw, layered) = paired(i, raw_round, layer_round).await;
                        timed += side.pick(raw, layered);
                    }
                    timed
                }
            })
        });
    }
    group.finish();
    let stats = env.cache.stats();
    assert_eq!(
        stats.misses, 64,
        "only the 64 setup requests missed: {stats:?}"
    );
    assert_eq!(
        stats.l2_errors.total(),
        0,
        "no L2 failures during the run: {stats:?}"
    );
}

fn l2_hit_tagged(c: &mut Criterion) {
    use layercake::cache::Tags;
    const KEYS: usize = 64;
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let build = |name: &str, l1: bool| {
        Cache::<Hits>::builder(name)
            .l1_enabled(l1)
            .max_capacity(1)
            .redis_url(server.url())
            .time_to_live(Duration::from_secs(3600))
            .l2_timeout(Duration::from_millis(500))
            .build()
            .expect("valid config")
    };
    let (plain, no_l1, subscribed) = rt.block_on(async {
        let plain = build("bench-plain", false);
        let no_l1 = build("bench-tagged", false);
        let subscribed = build("bench-tagged", true);
        let tags = Tags::new(["provider:bench"]);
        for i in 0..KEYS {
            let q = format!("q{i}");
            plain.insert(&q, hits(&q)).await;
            no_l1.insert_tagged(&q, hits(&q), tags.clone()).await;
        }
        server.until_keys(2 * KEYS).await;
        support::eventually(Duration::from_secs(10), "subscribed", || async {
            subscribed.stats().invalidations_subscribed
        })
        .await;
        (plain, no_l1, subscribed)
    });
    let keys: Vec<String> = (0..KEYS).map(|i| format!("q{i}")).collect();
    let mut group = c.benchmark_group("l2_hit_tagged");
    for side in 0..3usize {
        let name = ["plain", "tagged_no_l1", "tagged_subscribed"][side];
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let caches = [plain.clone(), no_l1.clone(), subscribed.clone()];
                let keys = keys.clone();
                async move {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters as usize {
                        let key = &keys[i % KEYS];
                        // Each side in turn, the first one rotating, so order effects and
                        // the VM's loopback drift land on all three alike.
                        for turn in 0..3 {
                            let who = (i + turn) % 3;
                            let t = Instant::now();
                            let found = caches[who].get(key).await;
                            let took = t.elapsed();
                            assert!(found.is_some(), "an L2 hit");
                            if who == side {
                                timed += took;
                            }
                        }
                    }
                    timed
                }
            })
        });
    }
    group.finish();
    let s = subscribed.stats();
    // Checked only when the group ran (a filter on another benchmark skips it).
    assert!(
        s.hits_l2 + s.hits_l1 == 0 || s.hits_l2 > 100 * s.hits_l1.max(1),
        "the subscribed side read Redis: {s:?}"
    );
    assert_eq!(no_l1.stats().l2_errors.total(), 0);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
}

/// A cache without L1 on the Redis at `url`, once connected; a generous read budget keeps
/// scheduler hiccups from turning into misses.
async fn connected_l2_cache(name: &str, url: String) -> Cache<Hits> {
    let cache = Cache::builder(name)
        .l1_enabled(false)
        .redis_url(url)
        .time_to_live(Duration::from_secs(3600))
        .l2_timeout(Duration::from_millis(500))
        .build()
        .expect("valid config");
    support::eventually(Duration::from_secs(10), "connected", || {
        let cache = cache.clone();
        async move { cache.stats().l2_connected() }
    })
    .await;
    cache
}

/// An L2 hit on a Redis Cluster against a raw cluster `GET`, on one thread.
fn cluster_l2_hit(c: &mut Criterion) {
    let cluster = support::RedisCluster::start();
    let url = cluster.crate_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cache, conn) = rt.block_on(async {
        let cache = connected_l2_cache("bench-cluster", url).await;
        cache.insert("q0", hits("q0")).await;
        let conn = redis::cluster::ClusterClient::new(cluster.nodes())
            .expect("a cluster client")
            .get_async_connection()
            .await
            .expect("a cluster connection");
        let redis_key = cache.redis_key("q0");
        support::eventually(Duration::from_secs(10), "q0 written", || {
            let (mut conn, k) = (conn.clone(), redis_key.clone());
            async move {
                redis::cmd("EXISTS")
                    .arg(&k)
                    .query_async::<bool>(&mut conn)
                    .await
                    .unwrap_or(false)
            }
        })
        .await;
        (cache, conn)
    });
    let redis_key = cache.redis_key("q0");
    let mut group = c.benchmark_group("cluster_l2_hit");
    for side in [Side::Baseline, Side::Layer] {
        let name = match side {
            Side::Baseline => "raw_cluster_get",
            Side::Layer => "cache_get",
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, cache, k) = (conn.clone(), cache.clone(), redis_key.clone());
                async move {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        let (raw, layered) = paired(
                            i,
                            || {
                                let (mut conn, k) = (conn.clone(), k.clone());
                                async move {
                                    let v: Vec<u8> = redis::cmd("GET")
                                        .arg(&k)
                                        .query_async(&mut conn)
                                        .await
                                        .expect("GET");
                                    v
                                }
                            },
                            || async { cache.get("q0").await.expect("an L2 hit") },
                        )
                        .await;
                        timed += side.pick(raw, layered);
                    }
                    timed
                }
            })
        });
    }
    group.finish();
    assert_eq!(cache.stats().misses, 0, "the cluster benchmark missed");
}

criterion_group! {
    name = benches;
    config = config();
    // `l1_hit_prometheus` last: it installs a global recorder.
    targets = l1_hit, l1_hit_failsafe, http_l1_hit, l2_hit, l2_hit_tagged, cluster_l2_hit, l1_hit_prometheus
}
criterion_main!(benches);
