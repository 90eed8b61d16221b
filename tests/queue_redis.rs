//! The queue conformance suite (`tests/queue_suite/`) against [`RedisStore`] on a real
//! `redis-server` (one per test, on a free loopback port), and the Redis store's own
//! promises: leases with fencing, recovery, the key layout, Redis trouble.

#[macro_use]
mod queue_suite;
mod support;

use std::time::Duration;

use layercake::queue::store::RedisStore;
use support::RedisServer;

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder("conformance")
        .redis_url(server.url())
        .lease(Duration::from_secs(2))
        .build()
        .expect("a valid store")
}

queue_conformance!(fixture: RedisServer::start(), |server| store(&server), paused_time: false);

// ---------------------------------------------------------------------------------------
// The Redis store's own promises

use std::sync::{Arc, Mutex};

use layercake::queue::store::AnyStore;
use layercake::queue::{JobId, JobStatus, Queue};
use layercake::RedisOptions;
use support::{eventually, Fault, FaultProxy, LogCapture};
use tokio::time::Instant;
use tower::service_fn;

const DEADLINE: Duration = Duration::from_secs(30);

type Doubling = Queue<u32, u32, AnyStore>;

/// A queue whose jobs double their number, with dedup by number, on `options`.
fn doubling(options: RedisOptions, workers: usize) -> Doubling {
    Queue::builder("load")
        .redis(options)
        .lease(Duration::from_secs(2))
        .workers(workers)
        .job_id(|n: &u32| Some(format!("n{n}")))
        .build()
        .expect("a valid queue")
}

/// Runs the queue's workers in this process until the returned sender is dropped.
fn serve(queue: &Doubling) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = service_fn(|n: u32| async move { Ok::<_, layercake::BoxError>(n * 2) });
    let serving = queue.serve(service);
    tokio::spawn(serving.until(async move {
        let _ = stopped.await;
    }));
    stop
}

async fn completed(queue: &Doubling, n: u32) -> bool {
    matches!(
        queue.job(&JobId::from(format!("n{n}"))).await,
        Ok(Some(job)) if job.status == JobStatus::Completed && job.result == Some(n * 2)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_no_acknowledged_job() {
    let mut server = RedisServer::start_with_aof();
    let options = RedisOptions::new(server.url()).command_timeout(Duration::from_millis(500));
    let queue = doubling(options, 4);
    let _workers = serve(&queue);

    // A producer enqueues without pause, recording when each job was acknowledged.
    let acked: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producing = {
        let (queue, acked, failures) = (queue.clone(), acked.clone(), failures.clone());
        tokio::spawn(async move {
            for n in 0.. {
                // An enqueue answers within its budget, Redis up or not: never a hang.
                let answered = tokio::time::timeout(Duration::from_secs(5), queue.enqueue(n))
                    .await
                    .expect("an enqueue answered within its budget");
                match answered {
                    Ok(_) => acked.lock().unwrap().push((n, Instant::now())),
                    Err(err) => {
                        assert!(err.is_store(), "{err}");
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    eventually(DEADLINE, "300 acknowledged jobs", || async {
        acked_count() >= 300
    })
    .await;

    let killed_at = Instant::now();
    server.kill();
    eventually(DEADLINE, "enqueues to fail while Redis is down", || async {
        failures.load(std::sync::atomic::Ordering::Relaxed) >= 3
    })
    .await;
    server.restart();
    let restarted_at = Instant::now();
    // A figure for the record: from Redis answering again to a new job done.
    let probe = 1_000_000;
    eventually(DEADLINE, "a job enqueued after the restart", || async {
        queue.enqueue(probe).await.is_ok()
    })
    .await;
    eventually(DEADLINE, "it to complete", || completed(&queue, probe)).await;
    eprintln!(
        "workers ran a new job {:?} after Redis restarted",
        restarted_at.elapsed()
    );
    let before = acked_count();
    eventually(DEADLINE, "300 more acknowledged jobs", || async {
        acked_count() >= before + 300
    })
    .await;
    producing.abort();

    // Everything acknowledged is there and done, but what AOF `everysec` may lose: the
    // last second before the kill.
    let acked = acked.lock().unwrap().clone();
    let mut at_risk = 0;
    for &(n, at) in &acked {
        let in_last_second = at + Duration::from_secs(1) > killed_at && at < restarted_at;
        if in_last_second
            && queue
                .job(&JobId::from(format!("n{n}")))
                .await
                .unwrap()
                .is_none()
        {
            at_risk += 1;
            continue;
        }
        eventually(DEADLINE, &format!("job n{n} to complete"), || async {
            completed(&queue, n).await
        })
        .await;
    }
    eprintln!(
        "{} acknowledged, {} lost from the last second before the kill",
        acked.len(),
        at_risk
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_fails_enqueues_within_their_budget_and_workers_resume() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let budget = Duration::from_millis(300);
    let queue = doubling(RedisOptions::new(proxy.url()).command_timeout(budget), 2);
    let _workers = serve(&queue);
    queue.enqueue(1).await.expect("Redis is up");
    eventually(DEADLINE, "the first job", || completed(&queue, 1)).await;

    proxy.set(Fault::Blackhole);
    let started = Instant::now();
    let err = queue.enqueue(2).await.expect_err("Redis answers nothing");
    assert!(err.is_store(), "{err}");
    // The budget and a generous allowance: "within its budget", never a hang.
    assert!(
        started.elapsed() < budget + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    proxy.set(Fault::Pass);
    eventually(DEADLINE, "an enqueue to succeed again", || async {
        queue.enqueue(3).await.is_ok()
    })
    .await;
    eventually(DEADLINE, "the workers to run it", || completed(&queue, 3)).await;
}

#[tokio::test]
async fn building_never_fails_because_redis_is_down() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let queue = metrics::with_local_recorder(&recorder, || {
        doubling(
            RedisOptions::new(url).command_timeout(Duration::from_millis(200)),
            1,
        )
    });
    let started = Instant::now();
    let err = queue.enqueue(1).await.expect_err("nothing listens");
    assert!(err.is_store());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(queue.store().as_redis().is_some());
    // Counted, by operation.
    let counted = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .any(|(key, _, _, value)| {
            let key = key.key();
            key.name() == "layercake_queue_store_errors_total"
                && key
                    .labels()
                    .any(|l| l.key() == "op" && l.value() == "enqueue")
                && value == metrics_util::debugging::DebugValue::Counter(1)
        });
    assert!(counted, "the failed enqueue is counted");
}

#[tokio::test]
async fn every_key_of_a_queue_shares_one_hash_tag_and_finished_jobs_expire() {
    let server = RedisServer::start();
    let store = RedisStore::builder("tagged")
        .redis_url(server.url())
        .build()
        .unwrap();
    assert_eq!(store.key_prefix(), "layercake:queue:{tagged}:");
    let queue = Queue::<u32, u32, _>::builder("tagged")
        .store(store)
        .workers(2)
        .result_ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let service = service_fn(|n: u32| async move {
        if n.is_multiple_of(2) {
            Ok(n)
        } else {
            Err(layercake::queue::Permanent::new("odd"))
        }
    });
    let stop = {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(queue.serve(service).until(async move {
            let _ = stopped.await;
        }));
        stop
    };
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(queue.enqueue(n).await.unwrap());
    }
    eventually(DEADLINE, "every job to finish", || async {
        let mut all = true;
        for id in &ids {
            match queue.job(id).await.unwrap() {
                Some(job) if !job.status.is_finished() => all = false,
                _ => {}
            }
        }
        all
    })
    .await;

    let keys: Vec<String> = server.query(&["KEYS", "*"]);
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with("layercake:queue:{tagged}:"), "{key}");
    }
    // Results expire; the indexes are pruned as settlements go by (up to 100 entries
    // each): what stays in Redis does not grow with the number of jobs that passed.
    eventually(DEADLINE, "the records to expire", || async {
        server.query::<Vec<String>>(&["KEYS", "*job:*"]).is_empty()
    })
    .await;
    for n in [1_000, 1_002, 1_004] {
        let id = queue.enqueue(n).await.unwrap();
        eventually(DEADLINE, "a later job", || async {
            queue
                .job(&id)
                .await
                .unwrap()
                .is_none_or(|job| job.status.is_finished())
        })
        .await;
    }
    let indexed: usize = server.query(&["ZCARD", "layercake:queue:{tagged}:expiry"]);
    assert!(indexed <= 3, "{indexed} index entries left");
    for done in ["completed", "failed"] {
        let key = format!("layercake:queue:{{tagged}}:done:{done}");
        let left: usize = server.query(&["ZCARD", &key]);
        assert!(left <= 3, "{left} entries left in {key}");
    }
    drop(stop);
}

#[tokio::test]
async fn an_evicting_redis_is_reported_at_connect() {
    let server = RedisServer::start();
    let _: () = server.query(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let (logs, _guard) = LogCapture::new();
    let queue = doubling(RedisOptions::new(server.url()), 1);
    queue.enqueue(1).await.unwrap();
    eventually(DEADLINE, "the warning", || async {
        logs.contains("maxmemory-policy allkeys-lru")
    })
    .await;
}

#[tokio::test]
async fn a_delayed_job_waits_in_redis_until_it_is_due() {
    let server = RedisServer::start();
    let queue = doubling(RedisOptions::new(server.url()), 1);
    let _workers = serve(&queue);
    queue
        .enqueue_in(7, Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(
        queue.job(&JobId::from("n7")).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    eventually(DEADLINE, "the delayed job to run", || completed(&queue, 7)).await;
    let job = queue.job(&JobId::from("n7")).await.unwrap().unwrap();
    let waited = job
        .started_at
        .unwrap()
        .duration_since(job.enqueued_at)
        .unwrap();
    assert!(waited >= Duration::from_millis(590), "{waited:?}");
}

#[tokio::test]
async fn a_job_whose_worker_dies_every_time_fails_after_its_attempts() {
    use layercake::queue::store::{NewJob, Recovered, Store};
    let server = RedisServer::start();
    let store = store(&server); // a 2 s lease
    let ttl = Duration::from_secs(60);
    let _ = store
        .enqueue(NewJob::new(JobId::from("poison"), vec![0xc0]))
        .await
        .unwrap();
    // Two attempts whose workers never come back (taken, then not renewed).
    for attempt in 1..=2u32 {
        let lease = store
            .dequeue(Duration::ZERO)
            .await
            .unwrap()
            .expect("queued");
        assert_eq!(lease.attempt(), attempt);
        let expected = if attempt < 2 { (1, 0) } else { (0, 1) };
        let seen = Arc::new(Mutex::new(Recovered::default()));
        eventually(DEADLINE, "the lease to expire and be recovered", || async {
            let recovered = store.recover(2, ttl).await.unwrap();
            *seen.lock().unwrap() = recovered;
            recovered != Recovered::default()
        })
        .await;
        let seen = *seen.lock().unwrap();
        assert_eq!((seen.requeued, seen.failed), expected, "attempt {attempt}");
    }
    let job = store.get(&JobId::from("poison")).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempts, 2);
    assert!(job.error.unwrap().contains("stopped renewing"));
    assert!(job.payload.is_some(), "a failed job keeps its payload");
    assert!(store.dequeue(Duration::ZERO).await.unwrap().is_none());
}
