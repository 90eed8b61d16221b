//! Replica invalidation against a real `redis-server`: two caches built separately (two
//! replicas) over one Redis. `invalidate` and `clear` on A reach B's L1; a replica that
//! missed messages (its connection cut while A invalidated, or a Redis restart) does not
//! serve from L1 what it held before; a load under way across an invalidation or a gap
//! stores nothing; a cache ignores its own messages; the subscriber ends
//! with the last handle; `replica_invalidation(false)` subscribes to nothing.

mod support;

use std::time::Duration;

use layercake::Cache;
use support::{eventually, Fault, FaultProxy, RedisServer};

const WAIT: Duration = Duration::from_secs(10);
const CHANNEL: &str = "r:shared:invalidations";

/// One replica of the cache `r:shared` on the Redis at `url`.
fn replica(url: &str) -> Cache<String> {
    Cache::builder("shared")
        .namespace("r")
        .time_to_live(Duration::from_secs(600))
        .ttl_jitter(0.0)
        .l2_timeout(Duration::from_millis(500))
        .l2_connect_timeout(Duration::from_millis(500))
        .probe_interval(Duration::from_millis(50))
        .redis_url(url)
        .build()
        .expect("valid settings")
}

/// Waits until the cache uses Redis and hears the other replicas.
async fn until_subscribed(cache: &Cache<String>) {
    eventually(WAIT, "connected and subscribed", || async {
        let s = cache.stats();
        s.l2_connected() && s.invalidations_subscribed
    })
    .await;
}

/// A stores `key`, B reads it from Redis into its L1.
async fn stored_by_a_read_by_b(
    server: &RedisServer,
    a: &Cache<String>,
    b: &Cache<String>,
    key: &str,
) {
    a.insert(key, format!("old {key}")).await;
    eventually(WAIT, "A's entry written to Redis", || async {
        server.query::<i64>(&["EXISTS", &a.redis_key(key)]) == 1
    })
    .await;
    // Eventually: after a restart, B's shared connection may not have noticed yet that it
    // is dead.
    eventually(WAIT, "B reads A's entry from Redis", || async {
        b.get(key).await == Some(format!("old {key}"))
    })
    .await;
    assert_eq!(b.get_l1(key), Some(format!("old {key}")), "now in B's L1");
}

fn subscribers(server: &RedisServer) -> i64 {
    let (_, n): (String, i64) = server.query(&["PUBSUB", "NUMSUB", CHANNEL]);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_replica_reaches_the_others_l1() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server.url()), replica(&server.url()));
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    stored_by_a_read_by_b(&server, &a, &b, "k").await;
    stored_by_a_read_by_b(&server, &a, &b, "other").await;

    a.invalidate("k").await.expect("Redis is up");
    eventually(WAIT, "B's L1 no longer serves `k`", || async {
        b.get_l1("k").is_none()
    })
    .await;
    assert_eq!(b.get("k").await, None, "gone from Redis too");
    assert_eq!(b.stats().invalidations_received, 1);

    // B's invalidation reaching A shows that A has read its own earlier message (one
    // connection, in order), and ignored it.
    b.invalidate("other").await.expect("Redis is up");
    eventually(WAIT, "A heard B", || async {
        a.stats().invalidations_received == 1
    })
    .await;
    assert_eq!(a.get_l1("other"), None);
    assert_eq!(a.stats().invalidations_received, 1, "not its own");
    assert_eq!((a.stats().l1_gap_flushes, b.stats().l1_gap_flushes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_on_one_replica_empties_the_others_l1() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server.url()), replica(&server.url()));
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    for key in ["k1", "k2", "k3"] {
        stored_by_a_read_by_b(&server, &a, &b, key).await;
    }
    assert_eq!(a.clear().await.expect("Redis is up"), 3);
    eventually(WAIT, "B's L1 emptied", || async {
        ["k1", "k2", "k3"].iter().all(|k| b.get_l1(k).is_none())
    })
    .await;
    assert_eq!(b.stats().l1_entries, 0);
    assert_eq!(b.stats().invalidations_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_while_another_invalidates_drops_its_l1_on_resubscribing() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let a = replica(&server.url());
    let b = replica(&proxy.url());
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    stored_by_a_read_by_b(&server, &a, &b, "k").await;

    // Only B is cut off: A's invalidation succeeds, and B never hears of it.
    proxy.set(Fault::Reset);
    eventually(WAIT, "B unsubscribed", || async {
        !b.stats().invalidations_subscribed
    })
    .await;
    a.invalidate("k").await.expect("A reaches Redis");
    assert_eq!(
        b.get_l1("k").as_deref(),
        Some("old k"),
        "while cut off, B's L1 still serves (bounded by l1_time_to_live)"
    );

    proxy.set(Fault::Pass);
    until_subscribed(&b).await;
    assert_eq!(
        b.get_l1("k"),
        None,
        "the missed invalidation's entry is gone"
    );
    assert_eq!(b.stats().l1_gap_flushes, 1);
    assert_eq!(b.stats().invalidations_received, 0, "the message was lost");
    assert_eq!(b.get("k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_a_replica_does_not_serve_what_it_may_have_missed() {
    let mut server = RedisServer::start();
    let (a, b) = (replica(&server.url()), replica(&server.url()));
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    stored_by_a_read_by_b(&server, &a, &b, "k").await;

    server.kill();
    // A's invalidation cannot reach Redis, so no replica hears of it.
    assert!(a.invalidate("k").await.is_err());
    assert_eq!(
        a.get_l1("k"),
        None,
        "A's own L1 is cleared whatever Redis does"
    );
    server.restart();

    eventually(WAIT, "B subscribed again", || async {
        b.stats().l1_gap_flushes >= 1 && b.stats().invalidations_subscribed
    })
    .await;
    assert_eq!(b.get_l1("k"), None, "B emptied its L1 on resubscribing");
    // A right after the restart: heard as usual.
    until_subscribed(&a).await;
    stored_by_a_read_by_b(&server, &a, &b, "k2").await;
    a.invalidate("k2").await.expect("Redis is back");
    eventually(WAIT, "B's L1 no longer serves `k2`", || async {
        b.get_l1("k2").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_ends_with_the_last_handle() {
    let server = RedisServer::start();
    let a = replica(&server.url());
    let clone = a.clone();
    until_subscribed(&a).await;
    assert_eq!(subscribers(&server), 1);
    drop(a);
    assert_eq!(subscribers(&server), 1, "a clone still holds the cache");
    drop(clone);
    eventually(WAIT, "the subscription closed", || async {
        subscribers(&server) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_nothing_subscribes() {
    let server = RedisServer::start();
    let cache: Cache<String> = Cache::builder("shared")
        .namespace("r")
        .redis_url(server.url())
        .replica_invalidation(false)
        .build()
        .unwrap();
    eventually(WAIT, "connected", || async { cache.stats().l2_connected() }).await;
    cache.invalidate("k").await.unwrap();
    assert_eq!(subscribers(&server), 0);
    assert!(!cache.stats().invalidations_subscribed);
}

/// Starts a load of `key` on `cache` whose value is released by the returned sender, and
/// waits until it has begun (its invalidation ticket taken).
async fn load_under_way(
    cache: &Cache<String>,
    key: &'static str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<String>,
) {
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let cache = cache.clone();
    let load = tokio::spawn(async move {
        cache
            .get_with(key, async move {
                let _ = started_tx.send(());
                let _ = gate.await;
                "read before the invalidation".to_owned()
            })
            .await
    });
    started.await.expect("the load began");
    (release, load)
}

/// Waits until everything `cache` queued for Redis before now has been written: the
/// background writer sends in order, and `marker` goes last.
async fn writes_flushed(server: &RedisServer, cache: &Cache<String>, marker: &str) {
    cache.insert(marker, "m".to_owned()).await;
    eventually(WAIT, "the marker written", || async {
        server.query::<i64>(&["EXISTS", &cache.redis_key(marker)]) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_under_way_when_another_replica_invalidates_its_key_stores_nothing() {
    let server = RedisServer::start();
    let (a, b) = (replica(&server.url()), replica(&server.url()));
    until_subscribed(&a).await;
    until_subscribed(&b).await;
    let (release, load) = load_under_way(&b, "k").await;
    a.invalidate("k").await.expect("Redis is up");
    eventually(WAIT, "B heard A", || async {
        b.stats().invalidations_received == 1
    })
    .await;
    release.send(()).expect("the load waits");
    assert_eq!(load.await.unwrap(), "read before the invalidation");
    assert_eq!(b.get_l1("k"), None, "not kept in L1");
    writes_flushed(&server, &b, "marker").await;
    assert_eq!(
        server.query::<i64>(&["EXISTS", &b.redis_key("k")]),
        0,
        "nor written to Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_under_way_across_a_gap_stores_nothing() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let b = replica(&proxy.url());
    until_subscribed(&b).await;
    let (release, load) = load_under_way(&b, "k").await;
    proxy.set(Fault::Reset);
    eventually(WAIT, "B unsubscribed", || async {
        !b.stats().invalidations_subscribed
    })
    .await;
    proxy.set(Fault::Pass);
    until_subscribed(&b).await;
    assert_eq!(b.stats().l1_gap_flushes, 1);
    // B's shared connection may notice the cut only now: wait until it writes again, so
    // that a write of `k` could not be lost to it.
    eventually(WAIT, "B writes to Redis again", || async {
        b.insert("probe", "p".to_owned()).await;
        server.query::<i64>(&["EXISTS", &b.redis_key("probe")]) == 1
    })
    .await;
    release.send(()).expect("the load waits");
    assert_eq!(load.await.unwrap(), "read before the invalidation");
    assert_eq!(
        b.get_l1("k"),
        None,
        "an invalidation may have been missed meanwhile"
    );
    writes_flushed(&server, &b, "marker").await;
    assert_eq!(server.query::<i64>(&["EXISTS", &b.redis_key("k")]), 0);
}
