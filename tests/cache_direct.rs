//! The typed cache's direct API (`get`, `insert`, `get_with`, `try_get_with`, `load`) and
//! single flight over failing loads, for the API and for the layer: how many times a
//! failing backend is called when many callers miss one key at once.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercake::cache::{Loaded, Ttl};
use layercake::{BoxError, Cache, CacheLayer, MockClock};
use support::{eventually, RedisServer};
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, ServiceExt};

/// Polls each future once (so that each has joined the key's flight), then awaits all.
async fn join_after_first_poll<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    for f in &mut futures {
        assert!(
            futures::poll!(f.as_mut()).is_pending(),
            "nobody may finish yet"
        );
    }
    futures::future::join_all(futures).await
}

#[tokio::test]
async fn get_insert_and_ttls_follow_the_mock_clock() {
    let clock = MockClock::new();
    let cache = Cache::builder("direct")
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get("a").await, None);
    cache.insert("a", vec![1.0_f32, 2.0]).await;
    cache
        .insert_with_ttl("short", vec![3.0], Duration::from_secs(5))
        .await;
    // Longer than the cache's time_to_live: capped by it.
    cache
        .insert_with_ttl("long", vec![4.0], Duration::from_secs(3600))
        .await;
    // A zero TTL stores nothing.
    cache
        .insert_with_ttl("zero", vec![5.0], Ttl::After(Duration::ZERO))
        .await;
    assert_eq!(cache.get("a").await, Some(vec![1.0, 2.0]));
    assert_eq!(cache.get("short").await, Some(vec![3.0]));
    assert_eq!(cache.get("zero").await, None);

    clock.advance(Duration::from_secs(5));
    assert_eq!(cache.get("short").await, None, "expired after its own TTL");
    assert_eq!(cache.get("a").await, Some(vec![1.0, 2.0]));
    clock.advance(Duration::from_secs(55));
    assert_eq!(cache.get("a").await, None);
    assert_eq!(cache.get("long").await, None, "capped by time_to_live");

    let s = cache.stats();
    assert_eq!((s.hits_l1, s.misses), (3, 5), "{s:?}");
}

#[tokio::test]
async fn get_with_runs_one_init_for_200_concurrent_callers() {
    let cache: Cache<String> = Cache::builder("get_with").build().unwrap();
    let inits = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let (cache, inits, gate) = (cache.clone(), inits.clone(), gate.clone());
            async move {
                cache
                    .get_with("k", async move {
                        inits.fetch_add(1, Ordering::SeqCst);
                        let _permit = gate.acquire().await;
                        "value".to_string()
                    })
                    .await
            }
        })
        .collect();
    let mut all = Box::pin(join_after_first_poll(callers));
    assert!(futures::poll!(all.as_mut()).is_pending());
    gate.add_permits(1);
    let values = all.await;
    assert!(values.iter().all(|v| v == "value"));
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.misses, s.coalesced), (1, 199), "{s:?}");
    // Stored: the next call does not run its init.
    let v = cache
        .get_with("k", async { unreachable!("a hit does not poll its init") })
        .await;
    assert_eq!(v, "value");
}

#[tokio::test]
async fn try_get_with_shares_one_error_with_every_waiter_and_stores_nothing() {
    let cache: Cache<String> = Cache::builder("try_get_with").build().unwrap();
    let inits = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let call = |cache: Cache<String>| {
        let (inits, gate) = (inits.clone(), gate.clone());
        async move {
            cache
                .try_get_with("k", async move {
                    inits.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await;
                    Err::<String, _>(std::io::Error::other("backend down"))
                })
                .await
        }
    };
    let mut all = Box::pin(join_after_first_poll(
        (0..200).map(|_| call(cache.clone())).collect(),
    ));
    assert!(futures::poll!(all.as_mut()).is_pending());
    gate.add_permits(1);
    let results = all.await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1,
        "one call to a failing backend"
    );
    let first = results[0].as_ref().unwrap_err();
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert!(Arc::ptr_eq(first, e), "every caller gets the same error");
        assert_eq!(e.to_string(), "backend down");
    }
    assert_eq!(cache.stats().l1_entries, 0, "an error is not stored");
    // The next miss tries the backend again.
    gate.add_permits(1);
    assert!(call(cache.clone()).await.is_err());
    assert_eq!(inits.load(Ordering::SeqCst), 2);
}

/// A failing service: counts calls and the most calls in flight at once.
#[derive(Clone, Default)]
struct Failing {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Failing {
    async fn call<E>(&self, error: E) -> Result<String, E> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Err(error)
    }
}

#[tokio::test]
async fn a_layer_that_shares_errors_calls_a_failing_service_once_for_200_callers() {
    let cache: Cache<String> = Cache::builder("share_errors").build().unwrap();
    let failing = Failing::default();
    let f = failing.clone();
    let svc = CacheLayer::new(cache.clone(), |r: &String| Some(r.clone()))
        .share_errors()
        .layer(service_fn(move |_: String| {
            let f = f.clone();
            async move { f.call("backend down".to_string()).await }
        }));
    let callers = (0..200)
        .map(|_| svc.clone().oneshot("k".to_string()))
        .collect();
    let results = join_after_first_poll(callers).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err() == "backend down"));
    assert_eq!(failing.calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.misses, s.coalesced), (1, 199), "{s:?}");
}

#[tokio::test]
async fn share_errors_with_copies_errors_that_do_not_clone() {
    let cache: Cache<String> = Cache::builder("share_errors_with").build().unwrap();
    let failing = Failing::default();
    let f = failing.clone();
    let svc = CacheLayer::new(cache.clone(), |r: &String| Some(r.clone()))
        .share_errors_with(|e: &BoxError| BoxError::from(e.to_string()))
        .layer(service_fn(move |_: String| {
            let f = f.clone();
            async move { f.call(BoxError::from("backend down")).await }
        }));
    let callers = (0..200)
        .map(|_| svc.clone().oneshot("k".to_string()))
        .collect();
    let results = join_after_first_poll(callers).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().to_string() == "backend down"));
    assert_eq!(failing.calls.load(Ordering::SeqCst), 1);
}

/// An error that cannot be copied.
#[derive(Debug)]
struct Opaque;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_cannot_be_shared_reach_the_backend_one_call_at_a_time() {
    let cache: Cache<String> = Cache::builder("no_share").build().unwrap();
    let failing = Failing::default();
    let f = failing.clone();
    let svc = CacheLayer::new(cache.clone(), |r: &String| Some(r.clone())).layer(service_fn(
        move |_: String| {
            let f = f.clone();
            async move { f.call(Opaque).await }
        },
    ));
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(svc.clone().oneshot("k".to_string())))
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(Opaque)));
    }
    // Each caller needs an error of its own, and only the service makes them: 200 calls,
    // but never two at once, so the failing backend sees no stampede.
    assert_eq!(failing.calls.load(Ordering::SeqCst), 200);
    assert_eq!(failing.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_load_under_way_when_its_key_is_invalidated_answers_but_does_not_store() {
    let cache: Cache<String> = Cache::builder("direct_epochs").build().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s, c) = (gate.clone(), started.clone(), cache.clone());
    let load = tokio::spawn(async move {
        c.get_with("k", async move {
            s.fetch_add(1, Ordering::SeqCst);
            let _permit = g.acquire().await;
            "old".to_string()
        })
        .await
    });
    eventually(Duration::from_secs(5), "the load started", || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    cache.invalidate("k").await.unwrap();
    gate.add_permits(1);
    assert_eq!(load.await.unwrap(), "old", "its own caller still gets it");
    assert_eq!(cache.get("k").await, None, "but it was not stored");
}

#[tokio::test]
async fn load_stores_shares_or_keeps_private_as_told() {
    let cache: Cache<String> = Cache::builder("loaded").build().unwrap();
    let never = |_: &String| None;
    let v = cache
        .load("share", never, || async {
            Ok::<_, String>(Loaded::Share("for waiters only".to_string()))
        })
        .await;
    assert_eq!(v.as_deref(), Ok("for waiters only"));
    assert_eq!(
        cache.get("share").await,
        None,
        "shared values are not stored"
    );

    // Private: each waiting caller loads for itself.
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let callers = (0..5)
        .map(|_| {
            let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
            async move {
                cache
                    .load("private", never, || async move {
                        let n = loads.fetch_add(1, Ordering::SeqCst);
                        if n == 0 {
                            let _permit = gate.acquire().await;
                        }
                        Ok::<_, String>(Loaded::Private(format!("mine#{n}")))
                    })
                    .await
            }
        })
        .collect();
    let mut all = Box::pin(join_after_first_poll(callers));
    assert!(futures::poll!(all.as_mut()).is_pending());
    gate.add_permits(1);
    let mut got: Vec<String> = all.await.into_iter().map(Result::unwrap).collect();
    got.sort();
    assert_eq!(got, ["mine#0", "mine#1", "mine#2", "mine#3", "mine#4"]);
    assert_eq!(cache.get("private").await, None);
}

#[tokio::test]
async fn a_store_policy_gives_each_response_its_ttl() {
    let clock = MockClock::new();
    let cache = Cache::builder("policy_ttl")
        .time_to_live(Duration::from_secs(600))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // The response says how long it is good for: its length in seconds; "" is not stored.
    let svc = CacheLayer::new(cache.clone(), |r: &String| Some(r.clone()))
        .store_when(|res: &String| (!res.is_empty()).then(|| Duration::from_secs(res.len() as u64)))
        .layer(service_fn(move |req: String| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, String>(req) }
        }));
    for req in ["", "", "ab", "ab", "abcd", "abcd"] {
        svc.clone().oneshot(req.to_string()).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4, "\"\" twice, then one each");
    clock.advance(Duration::from_secs(2));
    svc.clone().oneshot("ab".to_string()).await.unwrap();
    svc.clone().oneshot("abcd".to_string()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "ab expired after 2 s, abcd did not"
    );
}

#[tokio::test]
async fn switched_off_the_direct_api_loads_every_time_and_stores_nothing() {
    let cache: Cache<u32> = Cache::builder("off").build().unwrap();
    cache.set_enabled(false);
    cache.insert("k", 1).await;
    assert_eq!(cache.get("k").await, None);
    assert_eq!(cache.get_with("k", async { 2 }).await, 2);
    assert_eq!(cache.get_with("k", async { 3 }).await, 3);
    cache.set_enabled(true);
    assert_eq!(cache.get("k").await, None, "nothing was stored while off");
    assert_eq!(cache.stats().bypassed, 3);
}

#[tokio::test]
async fn the_direct_api_reads_what_another_replica_wrote_to_redis() {
    let server = RedisServer::start();
    let replica = |name: &str| -> Cache<Vec<String>> {
        Cache::builder(name)
            .redis_url(server.url())
            .l2_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let a = replica("shared");
    let b = replica("shared");
    a.insert("q=rust", vec!["tokio".to_string()]).await;
    let redis_key = a.redis_key("q=rust");
    eventually(
        Duration::from_secs(10),
        "the entry reached Redis",
        || async { server.query::<bool>(&["EXISTS", &redis_key]) },
    )
    .await;
    assert_eq!(b.get("q=rust").await, Some(vec!["tokio".to_string()]));
    assert_eq!(b.stats().hits_l2, 1);
    // Backfilled into B's L1.
    assert_eq!(
        b.get_with("q=rust", async { unreachable!("a hit") }).await,
        vec!["tokio".to_string()]
    );
    assert_eq!(b.stats().hits_l1, 1);
}
