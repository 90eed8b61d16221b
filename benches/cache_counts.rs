//! Allocations and instructions per operation on the cache's paths, next to their baselines:
//! figures that, unlike wall-clock times, do not move with the machine's load.
//!
//! ```text
//! cargo bench --bench cache_counts              # allocations per operation, every scenario
//! cargo bench --bench cache_counts -- l1_hit    # the scenarios whose name contains `l1_hit`
//! # Instructions per operation: run one scenario under callgrind, counting only the
//! # measured loop, and divide by the operations it printed.
//! valgrind --tool=callgrind --toggle-collect='*cache_counts::measured*' \
//!     target/release/deps/cache_counts-<hash> --exact l1_hit/cache_layer
//! # Median times of the in-memory pairs, chunk by chunk (counting off; see `paired`).
//! cargo bench --bench cache_counts -- --paired
//! ```
//!
//! The counting allocator lives in this binary only, so it never touches the criterion
//! timings of `benches/cache.rs`, which run the same fixtures (`benches/common`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt};
use tower_layer::Layer;

use layercake::cache::http::CachedResponse;
use layercake::{Cache, CacheLayer};

mod common;
use common::*;

#[allow(unreachable_pub)]
#[path = "../tests/support/mod.rs"]
mod support;

/// Counts allocations (and reallocations, which may move) made through the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Off for `--paired` timings.
static COUNTING: AtomicBool = AtomicBool::new(true);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed unchanged to `System`, which upholds `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The loop that is counted: `op` run `n` times. Not inlined, so that callgrind can collect
/// this function alone (`--toggle-collect`).
/// As criterion's `iter_batched`, outputs are dropped after the counted loop.
#[inline(never)]
fn measured<T>(n: u64, mut op: impl FnMut(u64) -> T) -> u64 {
    let mut outputs = Vec::with_capacity(n as usize);
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..n {
        outputs.push(op(i));
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    drop(outputs);
    allocs
}

struct Scenario {
    name: &'static str,
    /// Runs the scenario's operation `n` times (after its own warm-up) and returns the
    /// allocations made meanwhile.
    run: fn(u64) -> u64,
    ops: u64,
}

fn l1_setup() -> (
    Cache<Hits>,
    impl Service<Search, Response = Hits, Error = std::convert::Infallible> + Clone,
) {
    let cache = Cache::builder("counts-l1").build().expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare(hits("rust")));
    let _ = call_now(&mut layered, search());
    (cache, layered)
}

fn l1_bare(n: u64) -> u64 {
    let mut svc = bare(hits("rust"));
    let reqs: Vec<Search> = (0..n).map(|_| search()).collect();
    let mut reqs = reqs.into_iter();
    measured(n, |_| call_now(&mut svc, reqs.next().unwrap()))
}

fn l1_layer(n: u64) -> u64 {
    let (cache, mut layered) = l1_setup();
    let reqs: Vec<Search> = (0..n).map(|_| search()).collect();
    let mut reqs = reqs.into_iter();
    let allocs = measured(n, |_| call_now(&mut layered, reqs.next().unwrap()));
    assert_eq!(cache.stats().hits_l1, n);
    allocs
}

/// `l1_layer` on a cache with fail-safe, both timeouts and eager refresh on.
fn l1_failsafe_layer(n: u64) -> u64 {
    let cache = with_failsafe(Cache::builder("counts-l1-failsafe"))
        .build()
        .expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare(hits("rust")));
    let _ = call_now(&mut layered, search());
    let reqs: Vec<Search> = (0..n).map(|_| search()).collect();
    let mut reqs = reqs.into_iter();
    let allocs = measured(n, |_| call_now(&mut layered, reqs.next().unwrap()));
    assert_eq!(cache.stats().hits_l1, n);
    allocs
}

fn install_prometheus() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("no other recorder");
    });
}

fn l1_bare_prometheus(n: u64) -> u64 {
    install_prometheus();
    l1_bare(n)
}

fn l1_layer_prometheus(n: u64) -> u64 {
    install_prometheus();
    l1_layer(n)
}

/// A miss on an L1-only cache: each operation a new key.
fn l1_miss_layer(n: u64) -> u64 {
    let cache = Cache::builder("counts-miss")
        .max_capacity(1 << 20)
        .build()
        .expect("valid config");
    let mut layered = CacheLayer::new(cache.clone(), key).layer(bare(hits("rust")));
    let reqs: Vec<Search> = (0..n)
        .map(|i| Search {
            query: format!("q{i}"),
        })
        .collect();
    let mut reqs = reqs.into_iter();
    let allocs = measured(n, |_| call_now(&mut layered, reqs.next().unwrap()));
    assert_eq!(cache.stats().misses, n);
    allocs
}

fn http_bare_run(n: u64) -> u64 {
    let mut svc = http_bare();
    let reqs: Vec<_> = (0..n).map(|_| http_request()).collect();
    let mut reqs = reqs.into_iter();
    measured(n, |_| call_now(&mut svc, reqs.next().unwrap()))
}

fn http_layer_run(n: u64) -> u64 {
    let cache: Cache<CachedResponse> = Cache::builder("counts-http").build().expect("valid config");
    let mut layered = CacheLayer::http(cache.clone()).layer(http_bare());
    let _ = tokio_block_on(layered.clone().oneshot(http_request()));
    assert_eq!(cache.stats().misses, 1);
    let reqs: Vec<_> = (0..n).map(|_| http_request()).collect();
    let mut reqs = reqs.into_iter();
    let allocs = measured(n, |_| call_now(&mut layered, reqs.next().unwrap()));
    assert_eq!(cache.stats().hits_l1, n);
    allocs
}

/// An HTTP miss on an L1-only cache: each operation a new path.
fn http_miss_layer(n: u64) -> u64 {
    let cache: Cache<CachedResponse> = Cache::builder("counts-http-miss")
        .max_capacity(1 << 20)
        .build()
        .expect("valid config");
    let layered = CacheLayer::http(cache.clone()).layer(http_bare());
    let rt = current_thread();
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            http::Request::get(format!("http://api.example.com/search?q=rust&page={i}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        })
        .collect();
    let mut reqs = reqs.into_iter();
    let allocs = measured(n, |_| {
        let req = reqs.next().unwrap();
        rt.block_on(layered.clone().oneshot(req))
    });
    assert_eq!(cache.stats().misses, n);
    allocs
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn tokio_block_on<F: std::future::Future>(f: F) -> F::Output {
    current_thread().block_on(f)
}

/// Redis, a cache on it holding `q0`..`q63`, and a baseline connection made as the cache
/// makes its own, all on `rt`.
struct L2 {
    _server: support::RedisServer,
    cache: Cache<Hits>,
    conn: redis::aio::MultiplexedConnection,
    redis_keys: Arc<Vec<String>>,
}

fn l2_setup(rt: &tokio::runtime::Runtime) -> L2 {
    let server = support::RedisServer::start();
    rt.block_on(async {
        let cache = Cache::builder("counts-l2")
            .l1_enabled(false)
            .redis_url(server.url())
            .time_to_live(Duration::from_secs(3600))
            .l2_timeout(Duration::from_millis(500))
            .build()
            .expect("valid config");
        let conn = pooled_connection(&server.url()).await;
        for i in 0..64 {
            cache.insert(format!("q{i}"), hits(&format!("q{i}"))).await;
        }
        server.until_keys(64).await;
        let redis_keys = Arc::new((0..64).map(|i| cache.redis_key(format!("q{i}"))).collect());
        L2 {
            _server: server,
            cache,
            conn,
            redis_keys,
        }
    })
}

async fn raw_get(conn: &redis::aio::MultiplexedConnection, k: &str) -> Vec<u8> {
    let mut conn = conn.clone();
    let k = k.to_owned();
    redis::cmd("GET")
        .arg(&k)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

/// A raw `GET`, then the envelope's payload (after its 20-byte header) decoded.
async fn get_decode(conn: &redis::aio::MultiplexedConnection, k: &str) -> Hits {
    let bytes = raw_get(conn, k).await;
    rmp_serde::from_slice(&bytes[20..]).expect("a Hits payload")
}

fn never_called() -> impl Service<
    Search,
    Response = Hits,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<Hits, std::convert::Infallible>>,
> + Clone {
    tower::service_fn(
        |_: Search| -> std::future::Ready<Result<Hits, std::convert::Infallible>> {
            panic!("the L2 scenarios must never miss")
        },
    )
}

fn l2_raw(n: u64) -> u64 {
    let rt = current_thread();
    let env = l2_setup(&rt);
    for _ in 0..100 {
        rt.block_on(raw_get(&env.conn, &env.redis_keys[0]));
    }
    measured(n, |_| {
        drop(rt.block_on(raw_get(&env.conn, &env.redis_keys[0])))
    })
}

fn l2_layer(n: u64) -> u64 {
    let rt = current_thread();
    let env = l2_setup(&rt);
    let svc = CacheLayer::new(env.cache.clone(), key).layer(never_called());
    for _ in 0..100 {
        rt.block_on(svc.clone().oneshot(Search { query: "q0".into() }))
            .unwrap();
    }
    let allocs = measured(n, |_| {
        rt.block_on(svc.clone().oneshot(Search { query: "q0".into() }))
    });
    assert_eq!(env.cache.stats().hits_l2, n + 100);
    allocs
}

const CALLERS: u64 = 64;

/// `n` hits by 64 concurrent callers (`n / 64` each) on `rt`.
/// What each L2 caller does.
#[derive(Clone, Copy)]
enum Caller {
    /// A raw `GET` (the aim's baseline).
    Get,
    /// A raw `GET` and the decode of its envelope's payload into the response type: the
    /// work of a hand-rolled Redis cache, to split the layer's cost from the decode's.
    GetDecode,
    /// A request through `CacheLayer`.
    Layer,
}

fn l2_64(rt: &tokio::runtime::Runtime, env: &L2, n: u64, caller: Caller) -> u64 {
    let svc = CacheLayer::new(env.cache.clone(), key).layer(never_called());
    let round = |per_caller: u64| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..CALLERS as usize)
                .map(|i| {
                    let conn = env.conn.clone();
                    let k = env.redis_keys[i].clone();
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let req = Search {
                            query: format!("q{i}"),
                        };
                        for _ in 0..per_caller {
                            match caller {
                                Caller::Layer => {
                                    svc.clone().oneshot(req.clone()).await.unwrap();
                                }
                                Caller::Get => drop(raw_get(&conn, &k).await),
                                Caller::GetDecode => drop(get_decode(&conn, &k).await),
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        })
    };
    round(4);
    // One measured round: the spawns and the 64 `Search`es are a small, fixed share.
    measured(1, |_| round(n / CALLERS))
}

fn l2_64_raw(n: u64) -> u64 {
    let rt = current_thread();
    let env = l2_setup(&rt);
    l2_64(&rt, &env, n, Caller::Get)
}

fn l2_64_raw_decode(n: u64) -> u64 {
    let rt = current_thread();
    let env = l2_setup(&rt);
    l2_64(&rt, &env, n, Caller::GetDecode)
}

fn l2_64_layer(n: u64) -> u64 {
    let rt = current_thread();
    let env = l2_setup(&rt);
    l2_64(&rt, &env, n, Caller::Layer)
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn l2_64_mt_raw(n: u64) -> u64 {
    let rt = two_workers();
    let env = l2_setup(&rt);
    l2_64(&rt, &env, n, Caller::Get)
}

fn l2_64_mt_layer(n: u64) -> u64 {
    let rt = two_workers();
    let env = l2_setup(&rt);
    l2_64(&rt, &env, n, Caller::Layer)
}

/// `--paired`: chunks of 64 calls of the baseline and of the layer in turn (alternating
/// which goes first), 4,000 rounds; prints each side's median time per call and the median
/// of the rounds' ratios. A chunk the scheduler preempted is an outlier that the median
/// ignores and criterion's estimate does not: on a machine shared with other builds, this
/// is the steadier ratio. As in `iter_batched`, inputs are made and outputs dropped
/// outside the timing.
fn paired<I, A, B>(
    name: &str,
    mut input: impl FnMut() -> I,
    mut baseline: impl FnMut(I) -> A,
    mut layer: impl FnMut(I) -> B,
) {
    const CHUNK: usize = 64;
    const ROUNDS: usize = 4_000;
    fn chunk<I, O>(input: &mut impl FnMut() -> I, call: &mut impl FnMut(I) -> O) -> f64 {
        let inputs: Vec<I> = (0..CHUNK).map(|_| input()).collect();
        let mut outputs = Vec::with_capacity(CHUNK);
        let t = Instant::now();
        for i in inputs {
            outputs.push(call(i));
        }
        let ns = t.elapsed().as_nanos() as f64 / CHUNK as f64;
        drop(outputs);
        ns
    }
    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = chunk(&mut input, &mut baseline);
            (x, chunk(&mut input, &mut layer))
        } else {
            let y = chunk(&mut input, &mut layer);
            (chunk(&mut input, &mut baseline), y)
        };
        a.push(x);
        b.push(y);
        ratios.push(y / x);
    }
    println!(
        "{name:<20} baseline {:>7.1} ns   layer {:>7.1} ns   ratio {:.2}x (median of rounds)",
        median(&mut a),
        median(&mut b),
        median(&mut ratios)
    );
}

fn paired_timings() {
    COUNTING.store(false, Ordering::Relaxed);
    let l1 = || {
        let (_cache, mut layered) = l1_setup();
        let mut svc = bare(hits("rust"));
        (
            move |r| call_now(&mut svc, r),
            move |r| call_now(&mut layered, r),
        )
    };
    let (b, l) = l1();
    paired("l1_hit", search, b, l);
    // The same hit on a plain cache (baseline) and on one with fail-safe, both timeouts and
    // eager refresh on.
    let (_plain, mut plain) = l1_setup();
    let failsafe = with_failsafe(Cache::builder("paired-failsafe"))
        .build()
        .expect("valid config");
    let mut layered = CacheLayer::new(failsafe.clone(), key).layer(bare(hits("rust")));
    let _ = call_now(&mut layered, search());
    paired(
        "l1_hit_failsafe",
        search,
        |r| call_now(&mut plain, r),
        |r| call_now(&mut layered, r),
    );
    assert_eq!(failsafe.stats().misses, 1);
    let cache: Cache<CachedResponse> = Cache::builder("paired-http").build().expect("valid config");
    let mut layered = CacheLayer::http(cache.clone()).layer(http_bare());
    let _ = tokio_block_on(layered.clone().oneshot(http_request()));
    let mut svc = http_bare();
    paired(
        "http_l1_hit",
        http_request,
        |r| call_now(&mut svc, r),
        |r| call_now(&mut layered, r),
    );
    assert_eq!(cache.stats().misses, 1);
    install_prometheus();
    let (b, l) = l1();
    paired("l1_hit_prometheus", search, b, l);
}

fn main() {
    if std::env::args().any(|a| a == "--paired") {
        return paired_timings();
    }
    let scenarios = [
        Scenario {
            name: "l1_hit/bare_service",
            run: l1_bare,
            ops: 100_000,
        },
        Scenario {
            name: "l1_hit/cache_layer",
            run: l1_layer,
            ops: 100_000,
        },
        Scenario {
            name: "l1_hit_failsafe/cache_layer",
            run: l1_failsafe_layer,
            ops: 100_000,
        },
        Scenario {
            name: "l1_miss/cache_layer",
            run: l1_miss_layer,
            ops: 10_000,
        },
        Scenario {
            name: "http_l1_hit/bare_service",
            run: http_bare_run,
            ops: 100_000,
        },
        Scenario {
            name: "http_l1_hit/cache_layer",
            run: http_layer_run,
            ops: 100_000,
        },
        Scenario {
            name: "http_l1_miss/cache_layer",
            run: http_miss_layer,
            ops: 10_000,
        },
        Scenario {
            name: "l2_hit/raw_get",
            run: l2_raw,
            ops: 2_000,
        },
        Scenario {
            name: "l2_hit/cache_layer",
            run: l2_layer,
            ops: 2_000,
        },
        Scenario {
            name: "l2_hit_64/raw_get",
            run: l2_64_raw,
            ops: 64 * 40,
        },
        Scenario {
            name: "l2_hit_64/raw_get_decode",
            run: l2_64_raw_decode,
            ops: 64 * 40,
        },
        Scenario {
            name: "l2_hit_64/cache_layer",
            run: l2_64_layer,
            ops: 64 * 40,
        },
        Scenario {
            name: "l2_hit_64_two_workers/raw_get",
            run: l2_64_mt_raw,
            ops: 64 * 40,
        },
        Scenario {
            name: "l2_hit_64_two_workers/cache_layer",
            run: l2_64_mt_layer,
            ops: 64 * 40,
        },
        // Last: the recorder is global, and every cache built after it reports to it.
        Scenario {
            name: "l1_hit_prometheus/bare_service",
            run: l1_bare_prometheus,
            ops: 100_000,
        },
        Scenario {
            name: "l1_hit_prometheus/cache_layer",
            run: l1_layer_prometheus,
            ops: 100_000,
        },
    ];
    // `cargo bench` passes `--bench`; a plain word filters, `--exact NAME` picks one.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (exact, filter) = match args.as_slice() {
        [flag, name] if flag == "--exact" => (true, name.as_str()),
        [name] => (false, name.as_str()),
        _ => (false, ""),
    };
    println!("{:<40} {:>10} {:>14}", "scenario", "ops", "allocs/op");
    for s in &scenarios {
        let picked = if exact {
            s.name == filter
        } else {
            s.name.contains(filter)
        };
        if !picked {
            continue;
        }
        let allocs = (s.run)(s.ops);
        println!(
            "{:<40} {:>10} {:>14.2}",
            s.name,
            s.ops,
            allocs as f64 / s.ops as f64
        );
    }
}
