//! Cache and queue behind Redis Sentinel (`redis+sentinel://`), through real failovers: a
//! primary, a replica and three Sentinels on free loopback ports, started once for the
//! binary (one test, two failovers in a row).
//!
//! 1. `SENTINEL FAILOVER`: the old primary stays up as a replica, so connections to it
//!    answer writes with `READONLY` until they are given up.
//! 2. The new primary is SIGKILLed under load from 16 clients.
//!
//! Each time: no cache request fails (misses meanwhile), the cache is back on L2 and the
//! workers take jobs again by themselves, and no job acknowledged a second before the
//! failover is lost. The times are printed for the record.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercake::queue::store::AnyStore;
use layercake::queue::{JobId, JobStatus, Queue};
use layercake::{Cache, RedisOptions};
use support::{eventually, SentinelGroup};
use tokio::time::Instant;
use tower::service_fn;

const DEADLINE: Duration = Duration::from_secs(60);

type Jobs = Queue<u64, u64, AnyStore>;

struct Load {
    cache: Cache<u64>,
    queue: Jobs,
    failed_requests: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// 16 clients reading through the cache (Redis only, so every read goes to Redis),
    /// and one producer enqueueing jobs.
    fn start(cache: Cache<u64>, queue: Jobs) -> Load {
        let load = Load {
            cache,
            queue,
            failed_requests: Arc::default(),
            acked: Arc::default(),
            stop: Arc::default(),
        };
        for client in 0..16u64 {
            let (cache, failed, stop) = (
                load.cache.clone(),
                load.failed_requests.clone(),
                load.stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("k{}", (client * 7 + n) % 64);
                    let got = cache
                        .try_get_with(key, async { Ok::<_, std::convert::Infallible>(n) })
                        .await;
                    if got.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let (queue, acked, stop) = (load.queue.clone(), load.acked.clone(), load.stop.clone());
        tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Failing while there is no primary is expected: the error is the answer.
                if queue.enqueue(n).await.is_ok() {
                    acked.lock().unwrap().push((n, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        load
    }

    fn hits_l2(&self) -> u64 {
        self.cache.stats().hits_l2
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn completed(&self, n: u64) -> bool {
        matches!(
            self.queue.job(&JobId::from(format!("j{n}"))).await,
            Ok(Some(job)) if job.status == JobStatus::Completed
        )
    }

    /// Waits for the new primary to be named, then for the cache to hit L2 and a new job
    /// to complete again; returns (to promotion, promotion to L2 hits, to a job done).
    async fn recovers(&self, group: &SentinelGroup, old: u16, from: Instant) -> [Duration; 3] {
        eventually(DEADLINE, "the Sentinels to promote the replica", || async {
            group.primary_port().is_some_and(|port| port != old)
        })
        .await;
        let promoted = Instant::now();
        let hits = self.hits_l2();
        eventually(DEADLINE, "the cache to hit L2 again", || async {
            self.hits_l2() > hits + 16
        })
        .await;
        let on_l2 = promoted.elapsed();
        let before = self.acked();
        eventually(DEADLINE, "an enqueue to succeed again", || async {
            self.acked() > before
        })
        .await;
        let (n, _) = *self.acked.lock().unwrap().last().unwrap();
        eventually(DEADLINE, "the workers to run it", || self.completed(n)).await;
        [promoted - from, on_l2, promoted.elapsed()]
    }

    /// Every job acknowledged from `from` until `replicated` (a moment whose writes the
    /// replica is known to have) exists and completes.
    async fn nothing_lost_between(&self, from: Instant, replicated: Instant) {
        let acked: Vec<_> = self.acked.lock().unwrap().clone();
        let mut checked = 0;
        for &(n, at) in &acked {
            if from <= at && at < replicated {
                eventually(DEADLINE, &format!("job j{n} to complete"), || {
                    self.completed(n)
                })
                .await;
                checked += 1;
            }
        }
        assert!(checked > 0, "jobs were acknowledged before the failover");
    }

    /// How many jobs acknowledged from `from` until `to` are gone: what asynchronous
    /// replication lost in a failover.
    async fn lost_between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let acked: Vec<_> = self.acked.lock().unwrap().clone();
        let (mut lost, mut all) = (0, 0);
        for &(n, at) in &acked {
            if from <= at && at < to {
                all += 1;
                if matches!(
                    self.queue.job(&JobId::from(format!("j{n}"))).await,
                    Ok(None)
                ) {
                    lost += 1;
                }
            }
        }
        (lost, all)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_queue_follow_the_primary_through_failovers() {
    let group = SentinelGroup::start();
    let options = || {
        RedisOptions::new(group.url())
            .connect_timeout(Duration::from_millis(500))
            .probe_interval(Duration::from_millis(200))
    };
    let cache = Cache::<u64>::builder("sentinel")
        .l1_enabled(false)
        .redis(options())
        .build()
        .expect("a valid cache");
    let queue: Jobs = Queue::builder("sentinel")
        .redis(options())
        .lease(Duration::from_secs(2))
        .workers(4)
        .job_id(|n: &u64| Some(format!("j{n}")))
        .build()
        .expect("a valid queue");
    let (stop_workers, workers_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        queue
            .serve(service_fn(|n: u64| async move {
                Ok::<_, layercake::BoxError>(n)
            }))
            .until(async move {
                let _ = workers_stopped.await;
            }),
    );
    // Two replicas of a cache with L1, to see invalidations cross the failover.
    let replica = || {
        Cache::<u64>::builder("replicated")
            .time_to_live(Duration::from_secs(600))
            .redis(options())
            .build()
            .expect("a valid cache")
    };
    let (a, b) = (replica(), replica());
    eventually(DEADLINE, "both replicas subscribed", || async {
        a.stats().invalidations_subscribed && b.stats().invalidations_subscribed
    })
    .await;
    a.insert("shared", 1).await;
    eventually(DEADLINE, "b to hold a's value in L1", || async {
        b.get("shared").await == Some(1) && b.get_l1("shared") == Some(1)
    })
    .await;

    let began = Instant::now();
    let load = Load::start(cache, queue);
    eventually(DEADLINE, "L2 hits and completed jobs", || async {
        load.hits_l2() > 100 && load.acked() > 20 && load.completed(10).await
    })
    .await;

    // 1. A planned failover: the old primary lives on as a replica (READONLY).
    let old = group.primary_port().expect("a primary");
    let synced = replicated(&group.primary, &group.replica).await;
    let failover = Instant::now();
    group.failover();
    let [promotion, on_l2, job] = load.recovers(&group, old, failover).await;
    // At once (the old primary is not demoted for seconds yet): an invalidation on the new
    // primary reaches b's L1, since b's subscription followed the primary (b emptied its
    // L1 on resubscribing).
    a.invalidate("shared")
        .await
        .expect("the new primary takes it");
    eventually(Duration::from_secs(3), "b's L1 copy to go", || async {
        b.get_l1("shared").is_none()
    })
    .await;
    eprintln!(
        "SENTINEL FAILOVER: promoted after {promotion:?}; cache on L2 {on_l2:?} and a new job done {job:?} after the promotion"
    );
    load.nothing_lost_between(began, synced).await;

    // 2. The primary is SIGKILLed.
    let current = group.primary_port().expect("a primary");
    let (doomed, survivor) = if current == group.primary.port() {
        (&group.primary, &group.replica)
    } else {
        (&group.replica, &group.primary)
    };
    // The old primary must replicate the new one before it can take over in turn; until
    // it was turned into a replica, it took writes that the new primary never saw.
    eventually(
        DEADLINE,
        "the old primary to replicate the new one",
        || async { replication_info(survivor).contains("master_link_status:up") },
    )
    .await;
    let demoted = Instant::now();
    let (lost, all) = load.lost_between(synced, demoted).await;
    eprintln!(
        "SENTINEL FAILOVER: {lost} of {all} jobs acknowledged between the last replication and the demotion were lost"
    );
    // Connections leave the old primary once the Sentinels name the new one (a health
    // check, every 200 ms here), not when the old one is demoted some 10 s later: what is
    // lost is the writes from the promotion until the Sentinels say so and a health check
    // asks (about a second), not all of them until the demotion (two thirds of them here
    // without that check).
    assert!(lost * 3 < all, "{lost} of {all} lost");
    let synced = replicated(doomed, survivor).await;
    let killed = Instant::now();
    kill(doomed);
    let [promotion, on_l2, job] = load.recovers(&group, current, killed).await;
    eprintln!(
        "primary SIGKILLed: promoted after {promotion:?}; cache on L2 {on_l2:?} and a new job done {job:?} after the promotion"
    );
    load.nothing_lost_between(demoted, synced).await;

    load.stop.store(true, Ordering::Relaxed);
    drop(stop_workers);
    assert_eq!(
        load.failed_requests.load(Ordering::Relaxed),
        0,
        "no cache request failed through either failover"
    );
}

/// A moment all of whose writes on `primary` the `replica` has: replication is
/// asynchronous, so what a failover may lose is what came after the last such moment.
async fn replicated(primary: &support::RedisServer, replica: &support::RedisServer) -> Instant {
    let offset = |server: &support::RedisServer, field: &str| -> u64 {
        replication_info(server)
            .lines()
            .find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let moment = Instant::now();
    let written = offset(primary, "master_repl_offset");
    eventually(DEADLINE, "the replica to catch up", || async {
        offset(replica, "slave_repl_offset") >= written
    })
    .await;
    moment
}

/// `INFO replication`, or nothing when the server does not answer: the Sentinels close
/// every client connection of a server they reconfigure (`CLIENT KILL TYPE normal`), this
/// test's included.
fn replication_info(server: &support::RedisServer) -> String {
    let mut conn = match server
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
    {
        Ok(conn) => conn,
        Err(_) => return String::new(),
    };
    redis::cmd("INFO")
        .arg("replication")
        .query::<String>(&mut conn)
        .unwrap_or_default()
}

/// SIGKILLs a server of the group (which owns it, and reaps it when dropped).
fn kill(server: &support::RedisServer) {
    let pid = server.pid().expect("running");
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}
