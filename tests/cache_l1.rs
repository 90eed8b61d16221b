//! The in-process tier and the layer's own decisions, without Redis: hit, miss, expiry
//! (driven by a `MockClock`, never by sleeping), bypass, the run-time switch, the store
//! policy, errors, and the builder's rejection of bad settings.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercake::{Cache, CacheLayer, MockClock};
use support::{counting, eventually, gated};
use tower::{service_fn, Layer, Service, ServiceExt};

// A `KeyExtractor<String>` is a `Fn(&String) -> Option<_>`.
#[allow(clippy::ptr_arg)]
fn key(req: &String) -> Option<String> {
    // `nocache:*` requests bypass the cache.
    (!req.starts_with("nocache:")).then(|| req.clone())
}

async fn get<S>(svc: &S, req: &str) -> Result<String, String>
where
    S: Service<String, Response = String, Error = String> + Clone,
{
    svc.clone().oneshot(req.to_owned()).await
}

#[tokio::test]
async fn l1_hit_miss_and_expiry_follow_the_mock_clock() {
    let clock = MockClock::new();
    let cache = Cache::builder("l1_expiry")
        .time_to_live(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a cold key calls the service"
    );
    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a warm key is an L1 hit");
    assert_eq!(get(&svc, "b").await.unwrap(), "v:b");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "another key is another miss"
    );

    let s = cache.stats();
    assert_eq!((s.misses, s.hits_l1, s.hits_l2), (2, 1, 0), "{s:?}");
    assert_eq!(s.l1_entries, 2);
    assert_eq!(s.hit_rate(), 1.0 / 3.0);

    // Just before the TTL: still a hit.
    clock.advance(Duration::from_secs(9));
    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "9 s into a 10 s TTL is a hit"
    );

    // At the TTL: expired, the service is called again and the entry renewed.
    clock.advance(Duration::from_secs(1));
    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an expired entry is a miss"
    );
    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the renewed entry is a hit"
    );

    let s = cache.stats();
    assert_eq!((s.misses, s.hits_l1), (3, 3), "{s:?}");
}

#[tokio::test]
async fn l1_time_to_live_caps_the_in_process_copy() {
    let clock = MockClock::new();
    let cache = Cache::builder("l1_cap")
        .time_to_live(Duration::from_secs(60))
        .l1_time_to_live(Duration::from_secs(2))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
    get(&svc, "a").await.unwrap();
    get(&svc, "a").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(2));
    get(&svc, "a").await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "L1 copies live l1_time_to_live"
    );
}

#[tokio::test]
async fn a_key_extractor_returning_none_bypasses_the_cache() {
    let cache = Cache::builder("l1_bypass").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    for _ in 0..3 {
        assert_eq!(get(&svc, "nocache:x").await.unwrap(), "v:nocache:x");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "every bypassed request calls the service"
    );
    let s = cache.stats();
    assert_eq!(s.bypassed, 3, "{s:?}");
    assert_eq!((s.misses, s.hits_l1, s.l1_entries), (0, 0, 0), "{s:?}");
}

#[tokio::test]
async fn set_enabled_false_passes_through_and_true_resumes() {
    let cache = Cache::builder("l1_switch").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    get(&svc, "a").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    cache.set_enabled(false);
    assert!(!cache.is_enabled());
    for _ in 0..2 {
        assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
        assert_eq!(get(&svc, "c").await.unwrap(), "v:c");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "switched off: every request goes through"
    );
    let s = cache.stats();
    assert_eq!((s.bypassed, s.hits_l1, s.misses), (4, 0, 1), "{s:?}");
    assert_eq!(s.l1_entries, 1, "nothing stored while off");

    cache.set_enabled(true);
    assert_eq!(get(&svc, "a").await.unwrap(), "v:a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "switched on: the old entry is served"
    );
    assert_eq!(get(&svc, "c").await.unwrap(), "v:c");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "what passed through was not stored"
    );
}

#[tokio::test]
async fn store_when_policy_decides_what_is_stored() {
    let cache = Cache::builder("l1_policy").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key)
        .store_when(|res: &String| !res.contains("private"))
        .layer(counting(calls.clone()));

    get(&svc, "private-1").await.unwrap();
    get(&svc, "private-1").await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "refused by the policy: not stored"
    );
    get(&svc, "public-1").await.unwrap();
    get(&svc, "public-1").await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "accepted by the policy: stored"
    );
    let s = cache.stats();
    assert_eq!((s.misses, s.hits_l1, s.l1_entries), (3, 1, 1), "{s:?}");
    assert_eq!(s.not_stored, 0, "a policy refusal is not a storage failure");
}

#[tokio::test]
async fn errors_are_returned_unchanged_and_never_stored() {
    let cache = Cache::builder("l1_errors").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));

    for n in 1..=3 {
        // The error type is the inner service's own, untouched.
        let err: String = get(&svc, "fail:x").await.unwrap_err();
        assert_eq!(err, "boom on fail:x");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            n,
            "an error is never served from cache"
        );
    }
    let s = cache.stats();
    assert_eq!((s.misses, s.l1_entries, s.not_stored), (3, 0, 0), "{s:?}");
}

#[tokio::test]
async fn a_failing_then_recovering_service_is_cached_only_once_it_succeeds() {
    let cache = Cache::builder("l1_recover").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("first call fails".to_owned())
            } else {
                Ok(format!("v:{req}"))
            }
        }
    });
    let svc = CacheLayer::new(cache.clone(), key).layer(inner);
    assert!(get(&svc, "k").await.is_err());
    assert_eq!(get(&svc, "k").await.unwrap(), "v:k");
    assert_eq!(get(&svc, "k").await.unwrap(), "v:k");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalidate_and_clear_without_redis_empty_l1() {
    let cache = Cache::builder("l1_admin").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone(), key).layer(counting(calls.clone()));
    get(&svc, "a").await.unwrap();
    get(&svc, "b").await.unwrap();
    cache.invalidate("a").await.unwrap();
    get(&svc, "a").await.unwrap();
    get(&svc, "b").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "only `a` was invalidated");
    assert_eq!(
        cache.clear().await.unwrap(),
        0,
        "no Redis: nothing removed there"
    );
    assert_eq!(cache.stats().l1_entries, 0);
    get(&svc, "b").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn builder_rejects_zero_capacity_zero_ttl_and_bad_urls_naming_the_setting() {
    let err = Cache::<String>::builder("bad")
        .max_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_capacity");
    let msg = err.to_string();
    assert!(
        msg.contains("max_capacity") && msg.contains("at least 1"),
        "{msg}"
    );

    let err = Cache::<String>::builder("bad")
        .time_to_live(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "time_to_live");
    let msg = err.to_string();
    assert!(
        msg.contains("time_to_live") && msg.contains("greater than zero"),
        "{msg}"
    );

    for url in [
        "not a url",
        "http://127.0.0.1:6379/",
        "redis://127.0.0.1:notaport/",
    ] {
        let err = Cache::<String>::builder("bad")
            .redis_url(url)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "redis_url", "{url}");
        let msg = err.to_string();
        assert!(
            msg.contains("redis_url") && msg.contains("not a Redis URL"),
            "{url}: {msg}"
        );
    }

    // Other settings are checked too, not silently "fixed".
    let err = Cache::<String>::builder("bad")
        .l2_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "l2_timeout");
    let err = Cache::<String>::builder("bad:name").build().unwrap_err();
    assert_eq!(err.setting(), "name");
    let err = Cache::<String>::builder("bad")
        .ttl_jitter(0.9)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "ttl_jitter");
}

#[test]
fn config_errors_and_debug_output_never_contain_the_password() {
    const PW: &str = "hunter2-secret";
    let bad = [
        format!("redis://:{PW}@127.0.0.1:notaport/"),
        format!("redis://user:{PW}@127.0.0.1:99999/"),
        // Malformed (missing "//" or ":"): still no password in the error.
        format!("redis:/:{PW}@127.0.0.1:6379/"),
        format!("redis//user:{PW}@127.0.0.1:6379"),
    ];
    for url in &bad {
        let err = Cache::<String>::builder("pw")
            .redis_url(url.as_str())
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "redis_url", "{url}");
        for shown in [err.to_string(), format!("{err:?}"), err.reason().to_owned()] {
            assert!(!shown.contains(PW), "password leaked for {url}: {shown}");
        }
    }

    // Valid URLs: neither the builder's nor the cache's Debug shows the password, whether
    // it sits in the user-info part or (unix sockets) in the query string.
    for url in [
        format!("redis://:{PW}@127.0.0.1:6379/"),
        format!("redis://default:{PW}@127.0.0.1:6379/0"),
        format!("redis+unix:///tmp/layercake-test.sock?pass={PW}"),
        format!("unix:///tmp/layercake-test.sock?db=1&pass={PW}&user=me"),
    ] {
        let builder = Cache::<String>::builder("pw").redis_url(url.as_str());
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains(PW),
            "builder Debug leaked for {url}: {shown}"
        );
        assert!(shown.contains("redis_url"), "{shown}");
        let cache = builder.build().unwrap();
        let shown = format!("{cache:?}");
        assert!(!shown.contains(PW), "cache Debug leaked for {url}: {shown}");
        assert!(shown.contains("***"), "the URL is shown, redacted: {shown}");
    }
}

// Single flight, driven poll by poll on one thread so that who leads and who waits is
// deterministic (no sleeps): the first request polled registers the flight before its
// first await.

#[tokio::test]
async fn a_dropped_leader_is_replaced_by_one_waiter() {
    let cache = Cache::builder("flight_drop").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                // The first (leader's) call never answers: its caller gives up on it.
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(format!("v:{req}#{n}"))
        }
    });
    let svc = CacheLayer::new(cache.clone(), key).layer(inner);

    let mut leader = Box::pin(svc.clone().oneshot("k".to_owned()));
    assert!(futures::poll!(leader.as_mut()).is_pending());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the leader is in its call");
    let mut waiters: Vec<_> = (0..10)
        .map(|_| Box::pin(svc.clone().oneshot("k".to_owned())))
        .collect();
    for w in &mut waiters {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "waiters wait, they do not call"
    );

    drop(leader); // e.g. the client disconnected
    let results = futures::future::join_all(waiters).await;
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("v:k#1")),
        "one waiter took over and shared its value: {results:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one more call");
    let s = cache.stats();
    // The others either joined the new flight or, woken after it ended, found its value in L1.
    assert_eq!((s.misses, s.coalesced + s.hits_l1), (2, 9), "{s:?}");
}

/// Observed semantics when the leader's call fails: the error is returned to the leader
/// only (errors are neither cached nor fanned out), and each waiter then calls the inner
/// service itself, concurrently, and stores its own success.
#[tokio::test]
async fn a_failed_leader_whose_error_cannot_be_copied_hands_the_load_to_one_waiter() {
    let cache = Cache::builder("flight_error").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(Some(released)));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        let gate = if n == 0 {
            released.lock().unwrap().take()
        } else {
            None
        };
        async move {
            if let Some(gate) = gate {
                let _ = gate.await;
                return Err(format!("leader failed on {req}"));
            }
            Ok(format!("v:{req}#{n}"))
        }
    });
    let svc = CacheLayer::new(cache.clone(), key).layer(inner);

    let mut leader = Box::pin(svc.clone().oneshot("k".to_owned()));
    assert!(futures::poll!(leader.as_mut()).is_pending());
    let mut waiters: Vec<_> = (0..5)
        .map(|_| Box::pin(svc.clone().oneshot("k".to_owned())))
        .collect();
    for w in &mut waiters {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    release.send(()).unwrap();
    assert_eq!(leader.await.unwrap_err(), "leader failed on k");
    let results = futures::future::join_all(waiters).await;
    // The error (a `String` here, but the layer does not clone errors unless asked) is
    // not shared: one waiter loads again and its value reaches the other four.
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("v:k#1")),
        "{results:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one retry, not one per waiter"
    );
    let s = cache.stats();
    // The four got it from the retry's flight, or from L1 if they looked after it ended.
    assert_eq!((s.misses, s.coalesced + s.hits_l1), (2, 4), "{s:?}");

    // The retry's value is cached now.
    assert_eq!(get(&svc, "k").await.unwrap(), "v:k#1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_load_under_way_when_its_key_is_invalidated_does_not_store_what_it_read() {
    // The load read the source of truth before it changed; storing its result after the
    // invalidation would serve the old value for a whole TTL.
    let cache = Cache::builder("epochs").build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let svc = CacheLayer::new(cache.clone(), |r: &String| Some(r.clone()))
        .layer(gated(calls.clone(), gate.clone()));

    let first = tokio::spawn({
        let svc = svc.clone();
        async move { get(&svc, "a").await }
    });
    eventually(Duration::from_secs(5), "the first load started", || async {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    cache.invalidate("a").await.unwrap();
    gate.add_permits(1);
    assert_eq!(
        first.await.unwrap().unwrap(),
        "v1:a",
        "the request itself is served"
    );

    gate.add_permits(1);
    assert_eq!(
        get(&svc, "a").await.unwrap(),
        "v2:a",
        "a fresh load, not the old value"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A load that began after the invalidation is stored as usual.
    assert_eq!(get(&svc, "a").await.unwrap(), "v2:a");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
