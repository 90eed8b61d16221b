//! Cache benchmarks, each measured side by side with its baseline in one run.
//!
//! - `l1_hit`: a request answered by L1 through `CacheService`, against the bare service.
//! - `l2_hit`: a request answered by Redis through `CacheService` (L1 off), against a raw
//!   `GET` of the same bytes on one shared `MultiplexedConnection`.
//! - `l2_hit_64`: the same with 64 concurrent callers (distinct keys, so single flight
//!   coalesces nothing), reported as throughput.
//!
//! The L2 benchmarks start their own `redis-server` on a free loopback port.
//!
//! ```text
//! cargo bench --bench cache
//! ```

use std::convert::Infallible;
use std::future::{ready, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tower::{service_fn, Service, ServiceExt};

use layercake::{Cache, CacheLayer};
use tower_layer::Layer;

#[allow(unreachable_pub)]
#[path = "../tests/support/mod.rs"]
mod support;

#[derive(Debug, Clone)]
struct Search {
    query: String,
}

/// A small, typical response: a query echo and a few titles.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hits {
    query: String,
    titles: Vec<String>,
}

fn hits(query: &str) -> Hits {
    Hits {
        query: query.to_owned(),
        titles: vec![
            format!("{query} in action"),
            format!("The {query} book"),
            format!("Programming {query}"),
        ],
    }
}

fn key(req: &Search) -> Option<String> {
    Some(req.query.clone())
}

/// Polls a service and its future once, as a ready service answering from memory does:
/// no runtime, so the figure is the call path alone.
fn call_now<S, R>(svc: &mut S, req: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {:?}", other.map(|r| r.err())),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        Poll::Ready(Err(e)) => panic!("service failed: {e:?}"),
        Poll::Pending => panic!("not an in-memory answer"),
    }
}

fn l1_hit(c: &mut Criterion) {
    let response = hits("rust");
    let bare = {
        let response = response.clone();
        service_fn(move |_: Search| ready(Ok::<_, Infallible>(response.clone())))
    };
    let cache = Cache::builder("bench-l1").build().expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare.clone());
    // Warm L1 with one miss (the service answers synchronously, so the miss path, boxed
    // future and all, also completes in one poll).
    let req = Search {
        query: "rust".into(),
    };
    let _ = call_now(&mut layered, req.clone());
    assert_eq!(cache.stats().misses, 1);

    let mut group = c.benchmark_group("l1_hit");
    group.bench_function("bare_service", |b| {
        let mut svc = bare.clone();
        b.iter_batched(
            || req.clone(),
            |r| call_now(&mut svc, r),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("cache_layer", |b| {
        b.iter_batched(
            || req.clone(),
            |r| call_now(&mut layered, r),
            BatchSize::SmallInput,
        )
    });
    group.finish();
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

/// Which half of an interleaved pair a benchmark times.
#[derive(Clone, Copy)]
enum Side {
    Baseline,
    Layer,
}

impl Side {
    fn pick(self, baseline: Duration, layer: Duration) -> Duration {
        match self {
            Side::Baseline => baseline,
            Side::Layer => layer,
        }
    }
}

/// A multiplexed connection checked out of a bb8-redis pool, as the cache gets its own.
async fn pooled_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let manager = bb8_redis::RedisConnectionManager::new(url).expect("redis url");
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(manager)
        .await
        .expect("pool");
    let conn = pool.get().await.expect("connection").clone();
    conn
}

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
        support::eventually(Duration::from_secs(10), "64 entries in Redis", || {
            let mut conn = conn.clone();
            async move {
                let n: usize = redis::cmd("DBSIZE")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
                n >= 64
            }
        })
        .await;
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
        let cache = Cache::builder("bench-l2")
            .l1_enabled(false)
            .redis_url(env.server.url())
            .time_to_live(Duration::from_secs(3600))
            .l2_timeout(Duration::from_millis(500))
            .build()
            .expect("valid config");
        support::eventually(Duration::from_secs(10), "connected", || {
            let cache = cache.clone();
            async move { cache.stats().l2_connected() }
        })
        .await;
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

fn config() -> Criterion {
    Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
}

criterion_group! {
    name = benches;
    config = config();
    targets = l1_hit, l2_hit
}
criterion_main!(benches);
