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

struct L2Bench {
    rt: tokio::runtime::Runtime,
    _server: support::RedisServer,
    conn: redis::aio::MultiplexedConnection,
    cache: Cache,
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
    let conn = rt.block_on(server.async_conn());
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
    L2Bench {
        rt,
        _server: server,
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

    let mut group = c.benchmark_group("l2_hit");
    group.bench_function("raw_get", |b| {
        let conn = env.conn.clone();
        let k = redis_keys[0].clone();
        b.to_async(&env.rt).iter(|| {
            let mut conn = conn.clone();
            let k = k.clone();
            async move {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                v
            }
        })
    });
    group.bench_function("cache_layer", |b| {
        b.to_async(&env.rt).iter(|| {
            let svc = layered.clone();
            async move {
                svc.oneshot(Search { query: "q0".into() })
                    .await
                    .expect("infallible")
            }
        })
    });
    group.finish();

    // 64 concurrent callers, each with its own key; throughput = requests per second.
    const CALLERS: usize = 64;
    const PER_CALLER: u64 = 50;
    let mut group = c.benchmark_group("l2_hit_64");
    group.throughput(Throughput::Elements(CALLERS as u64 * PER_CALLER));
    group.bench_function("raw_get", |b| {
        b.to_async(&env.rt).iter_custom(|iters| {
            let conn = env.conn.clone();
            let keys = Arc::clone(&redis_keys);
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..CALLERS)
                        .map(|i| {
                            let mut conn = conn.clone();
                            let k = keys[i].clone();
                            tokio::spawn(async move {
                                for _ in 0..PER_CALLER {
                                    let _: Vec<u8> = redis::cmd("GET")
                                        .arg(&k)
                                        .query_async(&mut conn)
                                        .await
                                        .expect("GET");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
                started.elapsed()
            }
        })
    });
    group.bench_function("cache_layer", |b| {
        b.to_async(&env.rt).iter_custom(|iters| {
            let layered = layered.clone();
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..CALLERS)
                        .map(|i| {
                            let svc = layered.clone();
                            tokio::spawn(async move {
                                let req = Search {
                                    query: format!("q{i}"),
                                };
                                for _ in 0..PER_CALLER {
                                    svc.clone().oneshot(req.clone()).await.expect("infallible");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
                started.elapsed()
            }
        })
    });
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
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = l1_hit, l2_hit
}
criterion_main!(benches);
