//! The cache and the queue on a real three-primary Redis Cluster (`support::RedisCluster`):
//! hits and misses across slots, `clear` over 10,000 keys on every shard, invalidations and
//! tags reaching another replica across shards, and a slot migration (half-migrated, then a
//! reshard) under load with no failed request and no lost or repeated job.
//!
//! One cluster serves every test of this binary but the migration test, which moves slots
//! and gets a cluster of its own; tests share it through distinct cache and queue names.

#[macro_use]
mod queue_suite;
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use layercake::cache::Tags;
use layercake::queue::store::AnyStore;
use layercake::queue::Queue;
use layercake::Cache;
use support::{eventually, RedisCluster, NODES};

const WAIT: Duration = Duration::from_secs(10);

/// The cluster this binary's tests share: started by the first test that asks, stopped
/// when the last one holding it ends (statics are never dropped, so a plain static would
/// leave the servers running).
fn shared() -> Arc<RedisCluster> {
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = slot.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start());
    *slot = Arc::downgrade(&cluster);
    cluster
}

/// The crate's URL for `cluster`: every node as a seed.
fn url(cluster: &RedisCluster) -> String {
    cluster.crate_url()
}

fn l2_errors<V: Clone>(cache: &Cache<V>) -> u64 {
    let e = cache.stats().l2_errors;
    e.timeout + e.io + e.server + e.decode + e.oversized + e.breaker_open + e.bulkhead + e.dropped
}

/// Entries the load tests read: `k{i}` holds `v{i}`.
const KEYS: usize = 200;

/// A cache `namespace:name` without L1 (every read goes to the cluster), with read budget
/// `l2_timeout`, holding [`KEYS`] entries once they are all in the cluster.
async fn preloaded(
    cluster: &RedisCluster,
    namespace: &str,
    name: &str,
    l2_timeout: Duration,
) -> Cache<String> {
    let cache: Cache<String> = Cache::builder(name)
        .namespace(namespace)
        .l1_enabled(false)
        .l2_timeout(l2_timeout)
        .redis_url(url(cluster))
        .build()
        .unwrap();
    until_connected(&cache).await;
    for i in 0..KEYS {
        cache.insert(format!("k{i}"), format!("v{i}")).await;
    }
    let pattern = format!("{namespace}:{name}:*");
    eventually(WAIT, "the entries written", || async {
        cluster.keys_per_node(&pattern).iter().sum::<usize>() == KEYS
    })
    .await;
    cache
}

/// How often each job ran, by its number.
type Runs = Arc<Mutex<HashMap<u32, usize>>>;

/// A worker on `queue` that counts each job's runs, and how to stop it.
fn counting_worker(
    queue: &Queue<u32, u32, AnyStore>,
) -> (
    Runs,
    (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<layercake::queue::ShutdownReport>,
    ),
) {
    let runs = Runs::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let counted = Arc::clone(&runs);
    let queue = queue.clone();
    let task = tokio::spawn(async move {
        queue
            .serve(tower::service_fn(move |n: u32| {
                let runs = Arc::clone(&counted);
                async move {
                    *runs.lock().unwrap().entry(n).or_default() += 1;
                    Ok::<_, Infallible>(n)
                }
            }))
            .until(async {
                stopped.await.ok();
            })
            .await
    });
    (runs, (stop, task))
}

async fn until_connected<V: Clone>(cache: &Cache<V>) {
    eventually(WAIT, "the cache connected to the cluster", || async {
        cache.stats().l2_connected()
    })
    .await;
}

/// The queue conformance suite on the shared cluster, each test with a queue of its own
/// (so its keys sit in a slot of their own, on whichever shard owns it).
mod conformance {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use layercake::queue::store::RedisStore;

    use super::{shared, url};
    use crate::queue_suite;

    fn store(cluster: &super::RedisCluster) -> RedisStore {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("conformance-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        RedisStore::builder(name)
            .redis_url(url(cluster))
            .lease(Duration::from_secs(2))
            .build()
            .expect("a valid store")
    }

    queue_conformance!(fixture: shared(), |cluster| store(&cluster), paused_time: false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_misses_across_slots_on_every_shard() {
    let cluster = shared();
    let writer: Cache<String> = Cache::builder("slots")
        .namespace("hits")
        .redis_url(url(&cluster))
        .build()
        .unwrap();
    // No L1: every read below is a read from the cluster.
    let reader: Cache<String> = Cache::builder("slots")
        .namespace("hits")
        .l1_enabled(false)
        .redis_url(url(&cluster))
        .build()
        .unwrap();
    until_connected(&writer).await;
    for i in 0..300 {
        writer.insert(format!("k{i}"), format!("v{i}")).await;
    }
    eventually(WAIT, "300 entries written to the cluster", || async {
        cluster.keys_per_node("hits:slots:*").iter().sum::<usize>() == 300
    })
    .await;
    let spread = cluster.keys_per_node("hits:slots:*");
    assert!(spread.iter().all(|&n| n > 50), "keys per node: {spread:?}");

    for i in 0..300 {
        assert_eq!(
            reader.get(format!("k{i}")).await,
            Some(format!("v{i}")),
            "k{i}"
        );
    }
    for i in 0..100 {
        assert_eq!(reader.get(format!("absent{i}")).await, None);
    }
    let stats = reader.stats();
    assert_eq!((stats.hits_l2, stats.misses), (300, 100), "{stats:?}");
    assert_eq!(l2_errors(&reader), 0, "{stats:?}");
    assert_eq!(l2_errors(&writer), 0, "{:?}", writer.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_10000_keys_from_every_shard_and_nothing_else() {
    let cluster = shared();
    let cache: Cache<u32> = Cache::builder("clear")
        .namespace("tenk")
        .l1_enabled(false)
        .l2_write_queue(20_000)
        .redis_url(url(&cluster))
        .build()
        .unwrap();
    until_connected(&cache).await;
    // Another cache's key, in the same cluster: `clear` must leave it.
    let other: Cache<u32> = Cache::builder("other")
        .namespace("tenk")
        .redis_url(url(&cluster))
        .build()
        .unwrap();
    // Connected first: a write queued while connecting is skipped past the write budget.
    until_connected(&other).await;
    other.insert("keep", 7).await;
    for i in 0..10_000u32 {
        cache.insert(format!("k{i}"), i).await;
    }
    eventually(
        Duration::from_secs(30),
        "10,000 entries written",
        || async { cluster.keys_per_node("tenk:clear:*").iter().sum::<usize>() == 10_000 },
    )
    .await;
    let before = cluster.keys_per_node("tenk:clear:*");
    assert!(
        before.iter().all(|&n| n > 3_000),
        "keys per node: {before:?}"
    );
    eventually(WAIT, "the other cache's entry written", || async {
        cluster.keys_per_node("tenk:other:*").iter().sum::<usize>() == 1
    })
    .await;

    let removed = cache.clear().await.expect("clear over every primary");
    assert_eq!(removed, 10_000);
    assert_eq!(cluster.keys_per_node("tenk:clear:*"), vec![0; NODES]);
    assert_eq!(
        cluster.keys_per_node("tenk:other:*").iter().sum::<usize>(),
        1
    );
    assert_eq!(cache.get("k1").await, None);
    assert_eq!(l2_errors(&cache), 0, "{:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_tags_reach_another_replica_across_shards() {
    let cluster = shared();
    let build = || {
        Cache::<String>::builder("replicas")
            .namespace("inval")
            .redis_url(url(&cluster))
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    until_connected(&a).await;
    eventually(WAIT, "both replicas subscribed", || async {
        a.stats().invalidations_subscribed && b.stats().invalidations_subscribed
    })
    .await;

    // One key: B holds it in L1, A invalidates it.
    a.insert("k", "old".to_owned()).await;
    eventually(WAIT, "B reads k from the cluster into L1", || async {
        b.get("k").await.is_some() && b.get_l1("k").is_some()
    })
    .await;
    a.invalidate("k").await.expect("invalidate");
    eventually(WAIT, "B's L1 copy of k dropped", || async {
        b.get_l1("k").is_none()
    })
    .await;
    assert_eq!(b.get("k").await, None, "gone from the cluster too");

    // Tags: 100 entries under each of two tags, on every shard, all in B's L1.
    for i in 0..100 {
        a.insert_tagged(format!("x{i}"), "x".to_owned(), Tags::new(["provider-x"]))
            .await;
        a.insert_tagged(format!("y{i}"), "y".to_owned(), Tags::new(["provider-y"]))
            .await;
    }
    eventually(WAIT, "200 tagged entries written", || async {
        cluster
            .keys_per_node("inval:replicas:v*")
            .iter()
            .sum::<usize>()
            == 200
    })
    .await;
    let spread = cluster.keys_per_node("inval:replicas:v*");
    assert!(
        spread.iter().all(|&n| n > 20),
        "entries per node: {spread:?}"
    );
    for i in 0..100 {
        assert!(b.get(format!("x{i}")).await.is_some(), "x{i}");
        assert!(b.get(format!("y{i}")).await.is_some(), "y{i}");
    }

    a.invalidate_tag("provider-x")
        .await
        .expect("invalidate_tag");
    eventually(WAIT, "B sees provider-x invalidated", || async {
        b.get_l1("x0").is_none() && b.get_l1("x99").is_none()
    })
    .await;
    for i in 0..100 {
        assert_eq!(b.get(format!("x{i}")).await, None, "x{i} after its tag");
        assert_eq!(b.get(format!("y{i}")).await.as_deref(), Some("y"), "y{i}");
    }
    assert_eq!(l2_errors(&a) + l2_errors(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_queue_keeps_its_keys_in_one_slot_and_queues_spread_over_shards() {
    let cluster = shared();
    let mut owners = HashMap::new();
    for name in ["render", "translate", "embed", "mail", "thumbs", "reports"] {
        let queue = Queue::<String, String>::builder(name)
            .redis_url(url(&cluster))
            .build()
            .unwrap();
        for i in 0..3 {
            queue
                .enqueue_in(format!("{name}{i}"), Duration::from_secs(60))
                .await
                .expect("enqueue on the cluster");
        }
        let pattern = format!("layercake:queue:{{{name}}}:*");
        let per_node = cluster.keys_per_node(&pattern);
        let holding: Vec<usize> = (0..NODES).filter(|&i| per_node[i] > 0).collect();
        assert_eq!(holding.len(), 1, "{name}'s keys per node: {per_node:?}");
        assert!(per_node[holding[0]] >= 4, "{name}: {per_node:?}");
        assert_eq!(holding[0], cluster.owner_of_key(&format!("{{{name}}}")));
        owners.insert(name, holding[0]);
    }
    let mut distinct: Vec<usize> = owners.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 1, "every queue on one shard: {owners:?}");
}

/// Serves the cache and the queue while slot moves run on a blocking thread: the slot of a
/// hot key and the queue's slot, each held half-migrated (`ASK`) for a while and then
/// finished (`MOVED`), then 1,000 slots resharded with `redis-cli --cluster reshard`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_load_fails_no_request_and_loses_no_job() {
    let cluster = Arc::new(RedisCluster::start());
    // Every read goes to the cluster: L1 would hide the redirections.
    let cache = preloaded(&cluster, "moving", "hot", Duration::from_millis(500)).await;

    // While a slot is half-migrated, Redis answers a script whose keys are partly on each
    // node with TRYAGAIN, which redis-rs retries: the budget must outlast the hold below.
    let queue = Queue::<u32, u32>::builder("moving")
        .redis(layercake::RedisOptions::new(url(&cluster)).command_timeout(Duration::from_secs(3)))
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let (runs, worker) = counting_worker(&queue);

    let moving = Arc::new(AtomicBool::new(true));
    let wrong = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let loaders = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (cache, moving, wrong, reads, loaders) = (
            cache.clone(),
            Arc::clone(&moving),
            Arc::clone(&wrong),
            Arc::clone(&reads),
            Arc::clone(&loaders),
        );
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while moving.load(Ordering::Relaxed) {
                let key = format!("k{}", i % KEYS);
                let want = format!("v{}", i % KEYS);
                let got = cache
                    .get_with(&key, async {
                        loaders.fetch_add(1, Ordering::Relaxed);
                        want.clone()
                    })
                    .await;
                if got != want {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                reads.fetch_add(1, Ordering::Relaxed);
                i += 16;
            }
        }));
    }
    let producer = {
        let (queue, moving) = (queue.clone(), Arc::clone(&moving));
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0usize);
            let mut n = 0u32;
            while moving.load(Ordering::Relaxed) {
                match queue.enqueue(n).await {
                    Ok(_) => acked.push(n),
                    Err(e) => {
                        failed += 1;
                        eprintln!("enqueue {n} failed: {e:?}");
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, failed)
        })
    };

    let moves = {
        let cluster = Arc::clone(&cluster);
        let hot_key = cache.redis_key("k0");
        tokio::task::spawn_blocking(move || {
            let hold = || std::thread::sleep(Duration::from_millis(500));
            let mut moved = Vec::new();
            for key in [hot_key.as_str(), "{moving}"] {
                let slot = RedisCluster::slot_of(key);
                let to = (cluster.owner_of_slot(slot) + 1) % NODES;
                let migration = cluster.begin_migration(slot, to);
                hold();
                let keys = migration.move_keys();
                // Every key of the slot is on the target: the source answers ASK.
                hold();
                migration.finish();
                hold();
                moved.push((slot, keys));
            }
            let resharded = cluster.reshard(0, 1, 1_000).len();
            hold();
            (moved, resharded)
        })
    };
    let (moved, resharded) = moves.await.expect("the slot moves ran");
    moving.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client");
    }
    let (acked, failed) = producer.await.expect("the producer");

    eventually(
        Duration::from_secs(30),
        "every acknowledged job completed",
        || async {
            let runs = runs.lock().unwrap();
            acked.iter().all(|n| runs.contains_key(n))
        },
    )
    .await;
    let (stop, task) = worker;
    stop.send(()).ok();
    task.await.expect("the worker");

    let stats = cache.stats();
    let reads = reads.load(Ordering::Relaxed);
    eprintln!(
        "moved {moved:?} (slot, keys) and resharded {resharded} slots; {reads} reads, {} loads, {} jobs; cache {stats:?}",
        loaders.load(Ordering::Relaxed),
        acked.len()
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "a read answered a wrong value"
    );
    assert_eq!(failed, 0, "an enqueue failed during the moves");
    assert!(
        moved.iter().all(|&(_, keys)| keys > 0),
        "the moved slots held keys: {moved:?}"
    );
    assert_eq!(resharded, 1_000);
    assert!(
        reads > 1_000 && acked.len() > 100,
        "{reads} reads, {} jobs",
        acked.len()
    );
    // Redirections were followed, never turned into errors (a redirection redis-rs gives
    // up on comes back as a server error). A read may still outlast its 500 ms budget on
    // a loaded two-core machine while the cluster's layout changes; such a read is a miss
    // the loader answers, rare enough to bound.
    let e = stats.l2_errors;
    assert_eq!(
        (e.server, e.io, e.decode, e.breaker_open),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert!(e.timeout * 1_000 <= reads as u64, "{stats:?}");
    assert!(
        stats.misses <= e.timeout,
        "a miss without a cause: {stats:?}"
    );
    let runs = runs.lock().unwrap();
    let twice: Vec<_> = runs.iter().filter(|(_, &r)| r != 1).collect();
    assert!(twice.is_empty(), "jobs run other than once: {twice:?}");
}

/// One enqueue of the [`Load`]'s producer.
#[derive(Debug, Clone, Copy)]
struct Enqueue {
    n: u32,
    took: Duration,
    acked: bool,
    at: tokio::time::Instant,
}

/// 16 cache readers (`k{i}` must read `v{i}`, a load answering it on a miss) and a
/// producer enqueueing job `n` every 5 ms, with a counting worker, until stopped.
struct Load {
    cache: Cache<String>,
    running: Arc<AtomicBool>,
    wrong: Arc<AtomicUsize>,
    slowest: Arc<Mutex<Duration>>,
    enqueued: Arc<Mutex<Vec<Enqueue>>>,
    runs: Runs,
    worker: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<layercake::queue::ShutdownReport>,
    ),
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] saw.
struct Seen {
    wrong: usize,
    slowest_read: Duration,
    enqueued: Vec<Enqueue>,
    runs: HashMap<u32, usize>,
}

impl Load {
    /// Starts the readers, the producer and the worker, and waits until jobs run.
    async fn start(cache: &Cache<String>, queue: &Queue<u32, u32, AnyStore>) -> Load {
        let (runs, worker) = counting_worker(queue);
        let mut load = Load {
            cache: cache.clone(),
            running: Arc::new(AtomicBool::new(true)),
            wrong: Arc::default(),
            slowest: Arc::default(),
            enqueued: Arc::default(),
            runs,
            worker,
            tasks: Vec::new(),
        };
        for c in 0..16 {
            let (cache, running, wrong, slowest) = (
                cache.clone(),
                Arc::clone(&load.running),
                Arc::clone(&load.wrong),
                Arc::clone(&load.slowest),
            );
            load.tasks.push(tokio::spawn(async move {
                let mut i = c;
                while running.load(Ordering::Relaxed) {
                    let want = format!("v{}", i % KEYS);
                    let started = tokio::time::Instant::now();
                    let got = cache
                        .get_with(format!("k{}", i % KEYS), async { want.clone() })
                        .await;
                    let took = started.elapsed();
                    if got != want {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    {
                        let mut slowest = slowest.lock().unwrap();
                        *slowest = (*slowest).max(took);
                    }
                    i += 16;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        let (queue, running, enqueued) = (
            queue.clone(),
            Arc::clone(&load.running),
            Arc::clone(&load.enqueued),
        );
        load.tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while running.load(Ordering::Relaxed) {
                let at = tokio::time::Instant::now();
                let acked = queue.enqueue(n).await.is_ok();
                let took = at.elapsed();
                enqueued
                    .lock()
                    .unwrap()
                    .push(Enqueue { n, took, acked, at });
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        eventually(WAIT, "jobs running", || async {
            load.runs.lock().unwrap().len() > 20
        })
        .await;
        load
    }

    /// Acknowledged jobs enqueued from `since` on.
    fn acked_since(&self, since: tokio::time::Instant) -> Vec<u32> {
        let enqueued = self.enqueued.lock().unwrap();
        enqueued
            .iter()
            .filter(|e| e.acked && e.at >= since)
            .map(|e| e.n)
            .collect()
    }

    /// How long after `since` the cache read Redis again (100 more L2 hits) and a job
    /// enqueued after `since` ran.
    async fn recovered_since(&self, since: tokio::time::Instant) -> (Duration, Duration) {
        let hits = self.cache.stats().hits_l2;
        eventually(
            Duration::from_secs(20),
            "the cache back on Redis",
            || async { self.cache.stats().hits_l2 > hits + 100 },
        )
        .await;
        let cache_back = since.elapsed();
        eventually(
            Duration::from_secs(20),
            "a job enqueued since ran",
            || async {
                let first = self.acked_since(since).first().copied();
                first.is_some_and(|n| self.runs.lock().unwrap().contains_key(&n))
            },
        )
        .await;
        (cache_back, since.elapsed())
    }

    /// Stops the readers and the producer, waits until every job acknowledged from
    /// `since` on has run, and stops the worker.
    async fn stop(mut self, since: tokio::time::Instant) -> Seen {
        self.running.store(false, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("a load task");
        }
        let after = self.acked_since(since);
        eventually(
            Duration::from_secs(20),
            "every job enqueued since ran",
            || async {
                let runs = self.runs.lock().unwrap();
                after.iter().all(|n| runs.contains_key(n))
            },
        )
        .await;
        let (stop, worker) = self.worker;
        stop.send(()).ok();
        worker.await.expect("the worker");
        let enqueued = self.enqueued.lock().unwrap().clone();
        let runs = self.runs.lock().unwrap().clone();
        Seen {
            wrong: self.wrong.load(Ordering::Relaxed),
            slowest_read: *self.slowest.lock().unwrap(),
            enqueued,
            runs,
        }
    }
}

/// SIGKILLs the primary that holds a queue's slot under load from 16 cache clients and a
/// producer, then restarts it (it comes back as itself, empty: no AOF here): the cache
/// answers every read, never waits past the read budget by much, and is back on Redis soon
/// after the node; the workers take new jobs again by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_means_misses_then_redis_again() {
    let mut cluster = RedisCluster::start();
    let cache = preloaded(&cluster, "killed", "down", Duration::from_millis(50)).await;
    let queue = Queue::<u32, u32>::builder("killed")
        .redis_url(url(&cluster))
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    let load = Load::start(&cache, &queue).await;

    let victim = cluster.owner_of_key("{killed}");
    cluster.node_mut(victim).kill();
    let killed_at = tokio::time::Instant::now();
    eventually(WAIT, "the cache sees the dead node", || async {
        !cache.stats().l2_connected()
    })
    .await;
    let noticed = killed_at.elapsed();
    // Down for a while under load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| {
        cluster.node_mut(victim).restart();
        cluster.until_ok();
    });
    let restarted_at = tokio::time::Instant::now();
    let (cache_back, jobs_back) = load.recovered_since(restarted_at).await;
    let seen = load.stop(restarted_at).await;

    let failed = seen.enqueued.iter().filter(|e| !e.acked).count();
    let slowest_enqueue = seen
        .enqueued
        .iter()
        .map(|e| e.took)
        .max()
        .unwrap_or_default();
    let slowest = seen.slowest_read;
    eprintln!(
        "dead node noticed after {noticed:?}; cache back on Redis {cache_back:?} and a new job run {jobs_back:?} after the restart; slowest read {slowest:?}; {failed} of {} enqueues failed (slowest {slowest_enqueue:?}); cache {:?}",
        seen.enqueued.len(),
        cache.stats()
    );
    assert_eq!(seen.wrong, 0, "a read answered a wrong value");
    // The read budget is 50 ms; a second is "never a stall", with room for a loaded box.
    assert!(slowest < Duration::from_secs(1), "a read took {slowest:?}");
    assert!(
        slowest_enqueue < Duration::from_secs(3),
        "an enqueue took {slowest_enqueue:?}"
    );
    assert!(failed > 0, "no enqueue noticed the dead node");
    let twice: Vec<_> = seen.runs.iter().filter(|(_, &r)| r != 1).collect();
    assert!(twice.is_empty(), "jobs run other than once: {twice:?}");
}

/// A plain `redis://` URL naming one node of a cluster: a command whose key lives on
/// another node fails at once (no retrying through its budget), saying what to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_to_a_cluster_node_fails_fast_and_says_so() {
    let cluster = shared();
    let name = (0..100)
        .map(|i| format!("elsewhere{i}"))
        .find(|name| cluster.owner_of_key(&format!("{{{name}}}")) != 0)
        .expect("a queue whose slot node 0 does not own");
    let queue = Queue::<String, String>::builder(&name)
        .redis(
            layercake::RedisOptions::new(cluster.node(0).url())
                .command_timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = queue.enqueue("job".to_owned()).await.expect_err("MOVED");
    let took = started.elapsed();
    let shown = format!("{err:?}");
    assert!(shown.contains("redis+cluster://"), "{shown}");
    // Well under the 5 s budget: the connection to node 0 is made, then MOVED comes back.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// SIGKILLs the primary that holds a queue's slot in a cluster with a replica per primary,
/// under load from 16 cache clients and a producer: the replica takes over after the node
/// timeout, and the cache and the workers move to it by themselves. Asynchronous
/// replication may lose the last writes before the kill; those are counted, not forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_its_replica_and_both_move_on() {
    let mut cluster = RedisCluster::start_with_replicas();
    let cache: Cache<String> = Cache::builder("failover")
        .namespace("promoted")
        .l1_enabled(false)
        .redis_url(url(&cluster))
        .build()
        .unwrap();
    until_connected(&cache).await;
    for i in 0..KEYS {
        cache.insert(format!("k{i}"), format!("v{i}")).await;
    }
    eventually(WAIT, "the entries readable from the cluster", || async {
        cache.get(format!("k{}", KEYS - 1)).await.is_some() && cache.get("k0").await.is_some()
    })
    .await;
    let queue = Queue::<u32, u32>::builder("promoted")
        .redis_url(url(&cluster))
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    let load = Load::start(&cache, &queue).await;

    let slot = RedisCluster::slot_of("{promoted}");
    let victim = cluster.owner_of_slot(slot);
    let witness = (0..2 * NODES).find(|&i| i != victim).expect("another node");
    cluster.node_mut(victim).kill();
    let killed_at = tokio::time::Instant::now();
    let victim_id = cluster.node_id(victim).to_owned();
    eventually(
        Duration::from_secs(20),
        "a replica promoted for the queue's slot",
        || async {
            let info: String = cluster.node(witness).query(&["CLUSTER", "INFO"]);
            let nodes: String = cluster.node(witness).query(&["CLUSTER", "NODES"]);
            // `<id> <addr> <flags> <primary> <ping> <pong> <epoch> <link> <slot ranges>...`
            let promoted = nodes.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.first().is_some_and(|id| *id != victim_id)
                    && fields
                        .get(2)
                        .is_some_and(|f| f.contains("master") && !f.contains("fail"))
                    && fields.iter().skip(8).any(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        matches!(
                            (lo.parse::<u16>(), hi.parse::<u16>()),
                            (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot)
                        )
                    })
            });
            info.contains("cluster_state:ok") && promoted
        },
    )
    .await;
    let promoted_at = tokio::time::Instant::now();
    let (cache_back, jobs_back) = load.recovered_since(promoted_at).await;
    let seen = load.stop(promoted_at).await;

    let before: Vec<u32> = seen
        .enqueued
        .iter()
        .filter(|e| e.acked && e.at < killed_at)
        .map(|e| e.n)
        .collect();
    let lost = before.iter().filter(|n| !seen.runs.contains_key(n)).count();
    let twice = seen.runs.values().filter(|&&r| r > 1).count();
    let failed = seen.enqueued.iter().filter(|e| !e.acked).count();
    let slowest = seen.slowest_read;
    eprintln!(
        "promotion {:?} after the kill; cache back on Redis {cache_back:?} and a new job run {jobs_back:?} after it; slowest read {slowest:?}; {failed} of {} enqueues failed; of {} jobs acknowledged before the kill {lost} lost, {twice} jobs ran twice; cache {:?}",
        promoted_at - killed_at,
        seen.enqueued.len(),
        before.len(),
        cache.stats()
    );
    assert_eq!(seen.wrong, 0, "a read answered a wrong value");
    assert!(slowest < Duration::from_secs(1), "a read took {slowest:?}");
    assert!(
        lost * 10 <= before.len(),
        "{lost} of {} acknowledged jobs lost",
        before.len()
    );
}
