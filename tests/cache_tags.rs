//! Tags against a real `redis-server`: `invalidate_tag` on one replica makes every entry
//! stored with the tag a miss, on both tiers and on every replica (10,000 entries, two
//! replicas, and a third that joins later and learns the tag's time from Redis), while
//! other tags' and untagged entries still hit; a tag invalidation is not undone by
//! fail-safe (no expired tagged entry is served as a fallback, from L1 or Redis); a load
//! under way across a tag invalidation stores nothing; a `CacheLayer` store policy tags its
//! responses; a replica that missed a tag invalidation (its subscription cut) reads the
//! tag's time from Redis again once subscribed.

mod support;

use std::time::Duration;

use layercake::cache::{Loaded, Tags, Ttl};
use layercake::{Cache, MockClock};
use support::{eventually, RedisServer};

const WAIT: Duration = Duration::from_secs(20);
const TAGGED: usize = 10_000;
const OTHER: usize = 100;

/// One replica of the cache `tags:jobs` on the Redis at `url`.
fn replica(url: &str) -> layercake::CacheBuilder<String> {
    Cache::builder("jobs")
        .namespace("tags")
        .time_to_live(Duration::from_secs(600))
        .ttl_jitter(0.0)
        .l2_timeout(Duration::from_millis(500))
        .l2_connect_timeout(Duration::from_millis(500))
        .l2_write_queue(TAGGED * 2)
        .max_capacity(100_000)
        .probe_interval(Duration::from_millis(50))
        .redis_url(url)
}

async fn until_subscribed(cache: &Cache<String>) {
    eventually(WAIT, "connected and subscribed", || async {
        let s = cache.stats();
        s.l2_connected() && s.invalidations_subscribed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_10_000_entries_on_both_tiers_and_every_replica() {
    let server = RedisServer::start();
    let a = replica(&server.url()).build().unwrap();
    let b = replica(&server.url()).build().unwrap();
    until_subscribed(&a).await;
    until_subscribed(&b).await;

    let acme = Tags::new(["user:acme"]);
    let other = Tags::new(["user:other"]);
    for i in 0..TAGGED {
        a.insert_tagged(format!("acme-{i}"), format!("job {i}"), acme.clone())
            .await;
    }
    for i in 0..OTHER {
        a.insert_tagged(format!("other-{i}"), format!("job {i}"), other.clone())
            .await;
        a.insert(format!("plain-{i}"), format!("job {i}")).await;
    }
    server.until_keys(TAGGED + 2 * OTHER).await;
    // B reads some of each into its L1, from Redis.
    for i in (0..TAGGED).step_by(20) {
        assert_eq!(b.get(format!("acme-{i}")).await, Some(format!("job {i}")));
        assert!(b.get_l1(format!("acme-{i}")).is_some());
    }
    for i in 0..OTHER {
        assert!(b.get(format!("other-{i}")).await.is_some());
        assert!(b.get(format!("plain-{i}")).await.is_some());
    }

    let keys_before: usize = server.query(&["DBSIZE"]);
    a.invalidate_tag("user:acme").await.expect("Redis is up");
    assert_eq!(
        server.query::<usize>(&["DBSIZE"]),
        keys_before + 1,
        "one marker written, no entry enumerated"
    );

    eventually(WAIT, "B's L1 drops every acme entry", || async {
        (0..TAGGED)
            .step_by(20)
            .all(|i| b.get_l1(format!("acme-{i}")).is_none())
    })
    .await;
    // A third replica, built after the invalidation, learns the tag's time from Redis.
    let c = replica(&server.url()).build().unwrap();
    until_subscribed(&c).await;
    for i in 0..TAGGED {
        let key = format!("acme-{i}");
        assert_eq!(a.get_l1(&key), None, "A's L1: {key}");
        assert_eq!(a.get(&key).await, None, "A (Redis): {key}");
        assert_eq!(b.get(&key).await, None, "B: {key}");
        if i % 10 == 0 {
            assert_eq!(c.get(&key).await, None, "C: {key}");
        }
    }
    for i in 0..OTHER {
        for cache in [&a, &b, &c] {
            let (o, p) = (format!("other-{i}"), format!("plain-{i}"));
            assert_eq!(cache.get(&o).await, Some(format!("job {i}")), "{o}");
            assert_eq!(cache.get(&p).await, Some(format!("job {i}")), "{p}");
        }
    }
    assert_eq!(b.stats().invalidations_received, 1, "{:?}", b.stats());

    // An entry stored under the tag after its invalidation hits again, everywhere.
    eventually(WAIT, "a new acme entry is served", || async {
        a.insert_tagged("acme-new", "new".to_string(), acme.clone())
            .await;
        a.get_l1("acme-new").is_some()
    })
    .await;
    eventually(WAIT, "B reads the new acme entry from Redis", || async {
        b.get("acme-new").await.as_deref() == Some("new")
    })
    .await;
}

/// A fail-safe cache on a mock clock, on `url`.
fn fail_safe(url: &str, clock: &MockClock) -> Cache<String> {
    Cache::builder("fs")
        .namespace("tags")
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .fail_safe_max_duration(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(30))
        .l2_timeout(Duration::from_millis(500))
        .l2_connect_timeout(Duration::from_millis(500))
        .probe_interval(Duration::from_millis(50))
        .clock(clock.clone())
        .redis_url(url)
        .build()
        .unwrap()
}

async fn failing_load(cache: &Cache<String>, key: &str) -> Result<String, String> {
    cache
        .load(
            key,
            |e: &String| Some(e.clone()),
            || async { Err::<Loaded<String>, _>("backend down".to_string()) },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_is_not_undone_by_fail_safe() {
    let server = RedisServer::start();
    let clock = MockClock::new();
    let a = fail_safe(&server.url(), &clock);
    let b = fail_safe(&server.url(), &clock);
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    let tags = Tags::new(["provider:acme"]);
    for key in ["t1", "t2", "plain"] {
        let tags = if key == "plain" {
            Tags::none()
        } else {
            tags.clone()
        };
        a.insert_tagged(key, format!("old {key}"), tags).await;
    }
    server.until_keys(3).await;
    clock.advance(Duration::from_secs(120)); // expired, within fail-safe's life

    // Fail-safe serves them while the tag stands: t1 from A's L1, t2 from Redis on B.
    assert_eq!(failing_load(&a, "t1").await.as_deref(), Ok("old t1"));
    assert_eq!(failing_load(&b, "t2").await.as_deref(), Ok("old t2"));

    a.invalidate_tag("provider:acme")
        .await
        .expect("Redis is up");
    // A's L1 (its throttle copy too), Redis for B, and B's L1 throttle copy of t2.
    assert_eq!(failing_load(&a, "t1").await, Err("backend down".into()));
    assert_eq!(failing_load(&a, "t2").await, Err("backend down".into()));
    eventually(WAIT, "B no longer serves t2 as a fallback", || async {
        failing_load(&b, "t2").await.is_err()
    })
    .await;
    assert_eq!(failing_load(&b, "t1").await, Err("backend down".into()));
    // Untagged: still a fallback.
    assert_eq!(failing_load(&b, "plain").await.as_deref(), Ok("old plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_under_way_across_a_tag_invalidation_stores_nothing() {
    let server = RedisServer::start();
    let a = replica(&server.url()).build().unwrap();
    until_subscribed(&a).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let load = {
        let a = a.clone();
        tokio::spawn(async move {
            a.load(
                "k",
                |e: &String| Some(e.clone()),
                || async move {
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, String>(Loaded::StoreTagged(
                        "read before".to_string(),
                        Ttl::Default,
                        Tags::new(["t"]),
                    ))
                },
            )
            .await
        })
    };
    started_rx.await.unwrap();
    a.invalidate_tag("t").await.expect("Redis is up");
    go_tx.send(()).unwrap();
    assert_eq!(load.await.unwrap().as_deref(), Ok("read before"));
    assert_eq!(a.get_l1("k"), None, "not stored in L1");
    // The writer is FIFO: once a later write is in Redis, an earlier one would be too.
    a.insert("later", "x".to_string()).await;
    eventually(WAIT, "the later write is in Redis", || async {
        server.query::<i64>(&["EXISTS", &a.redis_key("later")]) == 1
    })
    .await;
    let key = a.redis_key("k");
    assert_eq!(server.query::<i64>(&["EXISTS", &key]), 0, "nor in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layers_store_policy_tags_its_responses() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, Layer, ServiceExt};

    let server = RedisServer::start();
    let (a, b) = (
        replica(&server.url()).build().unwrap(),
        replica(&server.url()).build().unwrap(),
    );
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = {
        let calls = Arc::clone(&calls);
        service_fn(move |q: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(format!("{q} by acme")) }
        })
    };
    // The provider is the response's: every result of one provider under its tag.
    let policy = |r: &String| {
        let provider = r.rsplit(' ').next().unwrap_or_default().to_owned();
        (true, Tags::new([format!("provider:{provider}")]))
    };
    let svc = layercake::CacheLayer::new(a.clone(), |q: &String| Some(q.clone()))
        .store_when(policy)
        .layer(backend);
    for q in ["q1", "q2"] {
        svc.clone().oneshot(q.to_string()).await.unwrap();
    }
    server.until_keys(2).await;
    assert_eq!(
        b.get("q1").await.as_deref(),
        Some("q1 by acme"),
        "B reads it"
    );
    svc.clone().oneshot("q1".to_string()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a hit");

    a.invalidate_tag("provider:acme")
        .await
        .expect("Redis is up");
    eventually(WAIT, "B drops q1", || async { b.get_l1("q1").is_none() }).await;
    assert_eq!(b.get("q2").await, None, "B, from Redis");
    svc.clone().oneshot("q1".to_string()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "loaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_a_tag_invalidation_reads_the_tags_time_again() {
    use support::{Fault, FaultProxy};

    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let a = replica(&server.url()).build().unwrap();
    let b = replica(&proxy.url()).build().unwrap();
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    let tags = Tags::new(["user:7"]);
    for key in ["t1", "t2"] {
        a.insert_tagged(key, format!("old {key}"), tags.clone())
            .await;
    }
    a.insert("plain", "plain".to_string()).await;
    server.until_keys(3).await;
    // B learns the tag's time (never invalidated) with its first tagged L2 hit.
    assert_eq!(b.get("t1").await.as_deref(), Some("old t1"));

    // Only B is cut off: it never hears of A's invalidation.
    proxy.set(Fault::Reset);
    eventually(WAIT, "B unsubscribed", || async {
        !b.stats().invalidations_subscribed
    })
    .await;
    a.invalidate_tag("user:7").await.expect("A reaches Redis");
    proxy.set(Fault::Pass);
    until_subscribed(&b).await;
    assert_eq!(b.stats().invalidations_received, 0, "the message was lost");
    assert_eq!(b.get_l1("t1"), None, "L1 emptied on resubscribing");
    // (L1 was emptied: this reads Redis, through B's reconnected link.)
    eventually(WAIT, "B reads Redis again", || async {
        b.get("plain").await.is_some()
    })
    .await;
    assert_eq!(
        b.get("t2").await,
        None,
        "the tag's time read again from Redis"
    );
    assert_eq!(b.get("t1").await, None);
}

/// `MGET`s Redis has run so far.
fn mgets(server: &RedisServer) -> u64 {
    let info: String = server.query(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_without_l1_reads_a_tags_time_once_and_hears_its_invalidation() {
    let server = RedisServer::start();
    let a = replica(&server.url()).build().unwrap();
    let b = replica(&server.url()).l1_enabled(false).build().unwrap();
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    for key in ["t1", "t2"] {
        a.insert_tagged(key, format!("old {key}"), Tags::new(["user:7"]))
            .await;
    }
    server.until_keys(2).await;
    for _ in 0..10 {
        assert_eq!(b.get("t1").await.as_deref(), Some("old t1"));
        assert_eq!(b.get("t2").await.as_deref(), Some("old t2"));
    }
    assert_eq!(mgets(&server), 1, "the tag's time read once, then known");

    a.invalidate_tag("user:7").await.expect("Redis is up");
    eventually(WAIT, "B hears of it", || async {
        b.stats().invalidations_received == 1
    })
    .await;
    assert_eq!(b.get("t1").await, None);
    assert_eq!(b.get("t2").await, None);
    assert_eq!(mgets(&server), 1, "known from the message");
}

/// Two replicas whose clocks disagree by an hour invalidate one tag, the one ahead first:
/// the marker keeps the later time, so the replica behind cannot bring back the entries
/// stored between the two times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_behind_does_not_pull_a_tag_marker_back() {
    let server = RedisServer::start();
    let (behind, ahead) = (layercake::MockClock::new(), layercake::MockClock::new());
    ahead.advance(Duration::from_secs(3600));
    let a = replica(&server.url()).clock(behind).build().unwrap();
    let b = replica(&server.url()).clock(ahead).build().unwrap();
    until_subscribed(&a).await;
    until_subscribed(&b).await;

    b.invalidate_tag("user:acme")
        .await
        .expect("invalidate_tag on b");
    let markers: Vec<String> = server.query(&["KEYS", "tags:jobs:tag:*"]);
    assert_eq!(markers.len(), 1, "{markers:?}");
    let marker = &markers[0];
    let later: u64 = server.query(&["GET", marker]);
    a.invalidate_tag("user:acme")
        .await
        .expect("invalidate_tag on a");
    let now: u64 = server.query(&["GET", marker]);
    assert_eq!(now, later, "the marker went back by the clocks' difference");
    let ttl: i64 = server.query(&["PTTL", marker]);
    assert!(ttl > 0, "the marker keeps a TTL: {ttl}");

    // A marker with no later time is set as before.
    a.invalidate_tag("user:other")
        .await
        .expect("invalidate_tag on a");
    let markers: Vec<String> = server.query(&["KEYS", "tags:jobs:tag:*"]);
    assert_eq!(markers.len(), 2, "{markers:?}");
}
