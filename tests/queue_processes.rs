//! The Redis job store across real processes: workers are this test binary run again as a
//! helper (`helper_process`, selected by `LC_ROLE`), stopped with real signals (`kill -KILL`,
//! `-STOP`, `-CONT`, `-TERM`), over a real `redis-server` on a free loopback port.
//!
//! The jobs (`Work`) record what they do in Redis, beside the queue's keys, so the test
//! sees which worker ran which attempt, with which generation, and how often.

mod support;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use layercake::queue::store::AnyStore;
use layercake::queue::{CancelOutcome, JobContext, JobId, JobStatus, Queue};
use layercake::BoxError;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::{eventually, RedisServer};
use tower::service_fn;

const QUEUE: &str = "procs";
const LEASE: Duration = Duration::from_secs(2);
/// Long enough for a lease to expire, be recovered and the job run again, on a busy
/// 2-core machine; the conditions are checked every few ms, so passing runs are quick.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Work {
    id: String,
    task: Task,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Task {
    /// Records `{worker}:{generation}` in `started:{id}`, waits for the key `go`, counts
    /// itself in `done:{id}` and completes with the worker's name.
    Hold,
    /// Records `{worker}:{generation}` in `started:{id}`, sleeps this many ms, and
    /// completes with the worker's name, touching nothing after the sleep: a worker
    /// resumed after the sleep has its result ready at once, before any renewal.
    Sleep(u64),
    /// Waits to be cancelled, then fails.
    Cooperative,
}

type ProcQueue = Queue<Work, String, AnyStore>;

fn queue(url: &str, workers: usize) -> ProcQueue {
    queue_with_lease(url, workers, LEASE)
}

fn queue_with_lease(url: &str, workers: usize, lease: Duration) -> ProcQueue {
    Queue::builder(QUEUE)
        .redis_url(url)
        .lease(lease)
        .workers(workers)
        .cancel_grace(Duration::from_secs(1))
        .job_id(|work: &Work| Some(work.id.clone()))
        .build()
        .expect("a valid queue")
}

// ---------------------------------------------------------------------------------------
// The helper process

/// Not a test: the entry point of the helper processes the tests start (run with
/// `--ignored --exact helper_process`). Without `LC_ROLE` it does nothing.
#[test]
#[ignore = "the helper process of the other tests"]
fn helper_process() {
    let Ok(role) = std::env::var("LC_ROLE") else {
        return;
    };
    let url = std::env::var("LC_REDIS").expect("LC_REDIS");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "worker" => run_worker(&url).await,
            "enqueuer" => run_enqueuer(&url).await,
            other => panic!("unknown role {other}"),
        }
    });
}

async fn run_worker(url: &str) {
    tracing_subscriber::fmt()
        .with_env_filter("layercake=debug")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let name = std::env::var("LC_NAME").expect("LC_NAME");
    let workers = std::env::var("LC_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let redis = redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is up when a worker starts");
    let lease = std::env::var("LC_LEASE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(LEASE, Duration::from_millis);
    let queue = queue_with_lease(url, workers, lease);
    let service = service_fn(move |work: Work| {
        let (name, mut redis) = (name.clone(), redis.clone());
        async move {
            let ctx = JobContext::current().expect("inside a job");
            match work.task {
                Task::Hold => {
                    let started = format!("{name}:{}", ctx.generation());
                    let _: () = redis.rpush(format!("started:{}", work.id), started).await?;
                    while !redis.exists::<_, bool>("go").await? {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let _: () = redis.incr(format!("done:{}", work.id), 1).await?;
                    Ok::<_, BoxError>(name)
                }
                Task::Sleep(ms) => {
                    let started = format!("{name}:{}", ctx.generation());
                    let _: () = redis.rpush(format!("started:{}", work.id), started).await?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(name)
                }
                Task::Cooperative => {
                    ctx.cancelled().await;
                    Err("stopped on request".into())
                }
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    eprintln!("worker {} ready", std::process::id());
    let report = queue
        .serve(service)
        .drain_timeout(Duration::from_secs(5))
        .until(async move {
            term.recv().await;
        })
        .await;
    eprintln!("drained: {report:?}");
}

/// Waits for the key `start`, enqueues `Hold` with the id `same` 50 times at once, and
/// prints how many were new and how many found the job already there.
async fn run_enqueuer(url: &str) {
    let mut redis = redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is up");
    let queue = queue(url, 1);
    while !redis.exists::<_, bool>("start").await.expect("Redis is up") {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    enqueue_same(&queue, 50).await;
    let info = queue.info();
    println!("new={} existing={}", info.enqueued, info.deduplicated);
}

async fn enqueue_same(queue: &ProcQueue, times: usize) {
    let enqueues = (0..times).map(|_| {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .enqueue(Work {
                    id: "same".into(),
                    task: Task::Hold,
                })
                .await
                .expect("enqueued")
        })
    });
    for id in futures::future::join_all(enqueues).await {
        assert_eq!(id.expect("no panic").as_str(), "same");
    }
}

// ---------------------------------------------------------------------------------------
// The parent's side

/// A helper process; SIGKILLed when dropped.
struct Helper {
    child: Child,
    log: PathBuf,
}

impl Helper {
    fn start(server: &RedisServer, role: &str, name: &str, workers: usize) -> Helper {
        Self::start_with(server, role, name, workers, LEASE)
    }

    fn start_with(
        server: &RedisServer,
        role: &str,
        name: &str,
        workers: usize,
        lease: Duration,
    ) -> Helper {
        let log = server.dir().join(format!("{role}-{name}.log"));
        let stderr = File::create(&log).expect("a log file");
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--ignored", "--exact", "helper_process", "--nocapture"])
            .env("LC_ROLE", role)
            .env("LC_REDIS", server.url())
            .env("LC_NAME", name)
            .env("LC_WORKERS", workers.to_string())
            .env("LC_LEASE_MS", lease.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the helper starts");
        Helper { child, log }
    }

    fn worker(server: &RedisServer, name: &str, workers: usize) -> Helper {
        Self::start(server, "worker", name, workers)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn until_logged(&self, what: &str, needles: &[&str]) {
        eventually(DEADLINE, what, || async {
            let log = self.log();
            needles.iter().any(|needle| log.contains(needle))
        })
        .await;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(queue: &ProcQueue, id: &str) -> Option<JobStatus> {
    queue
        .job(&JobId::from(id))
        .await
        .expect("the store answers")
        .map(|job| job.status)
}

async fn running(queue: &ProcQueue, n: usize) {
    eventually(DEADLINE, &format!("{n} running job(s)"), || async {
        queue
            .list(JobStatus::Running, 100)
            .await
            .is_ok_and(|jobs| jobs.len() == n)
    })
    .await;
}

async fn hold(queue: &ProcQueue, id: &str) {
    queue
        .enqueue(Work {
            id: id.into(),
            task: Task::Hold,
        })
        .await
        .expect("enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_four_jobs_are_finished_by_another_once_each() {
    let server = RedisServer::start();
    let producer = queue(&server.url(), 1);
    let mut redis = server.async_conn().await;
    let a = Helper::worker(&server, "a", 4);
    let ids = ["k0", "k1", "k2", "k3"];
    for id in ids {
        hold(&producer, id).await;
    }
    running(&producer, 4).await;

    a.signal("KILL");
    let killed = tokio::time::Instant::now();
    let _: () = redis.set("go", 1).await.unwrap();
    let b = Helper::worker(&server, "b", 4);
    for id in ids {
        eventually(DEADLINE, &format!("{id} to complete"), || async {
            status(&producer, id).await == Some(JobStatus::Completed)
        })
        .await;
        let job = producer.job(&JobId::from(id)).await.unwrap().unwrap();
        assert_eq!(job.result.as_deref(), Some("b"), "{id} finished by b");
        assert_eq!(job.attempts, 2, "{id}: a's attempt, then b's");
        let done: u32 = redis.get(format!("done:{id}")).await.unwrap();
        assert_eq!(done, 1, "{id} ran to its end once");
        let started: Vec<String> = redis.lrange(format!("started:{id}"), 0, -1).await.unwrap();
        // Generations go up with the take and with the recovery: a had 1, b has 3.
        assert_eq!(started, ["a:1", "b:3"], "{id}");
    }
    // A figure for the record (lease 2 s): kill to the last of the 4 done elsewhere.
    eprintln!(
        "4 jobs of a killed worker finished by another {:?} after the kill",
        killed.elapsed()
    );
    assert!(producer
        .list(JobStatus::Failed, 10)
        .await
        .unwrap()
        .is_empty());
    b.until_logged(
        "b to report the recovery",
        &["requeued jobs whose worker stopped renewing"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_cannot_overwrite_the_newer_attempt() {
    let server = RedisServer::start();
    let producer = queue(&server.url(), 1);
    let mut redis = server.async_conn().await;
    let a = Helper::worker(&server, "a", 1);
    // Long enough for the test to stop a in the middle of it.
    let work = Work {
        id: "p".into(),
        task: Task::Sleep(1_500),
    };
    producer.enqueue(work).await.unwrap();
    eventually(DEADLINE, "a to start the job", || {
        let mut redis = redis.clone();
        async move { redis.llen::<_, usize>("started:p").await.unwrap() == 1 }
    })
    .await;

    a.signal("STOP");
    let b = Helper::worker(&server, "b", 1);
    eventually(DEADLINE, "b to take the job over", || {
        let mut redis = redis.clone();
        async move { redis.llen::<_, usize>("started:p").await.unwrap() == 2 }
    })
    .await;

    // While b runs it, a wakes with its job's result ready and settles first thing:
    // refused, since b holds the current lease.
    a.signal("CONT");
    a.until_logged(
        "a's settlement to be refused",
        &["a newer attempt owns the job; settlement ignored"],
    )
    .await;
    eventually(DEADLINE, "b to complete the job", || async {
        status(&producer, "p").await == Some(JobStatus::Completed)
    })
    .await;
    let job = producer.job(&JobId::from("p")).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result.as_deref(), Some("b"), "the newer result stands");
    assert_eq!(job.attempts, 2);
    let started: Vec<String> = redis.lrange("started:p", 0, -1).await.unwrap();
    // The generation went up with the recovery and with b's take.
    assert_eq!(started, ["a:1", "b:3"]);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_in_another_process_is_cancelled_through_its_record() {
    let server = RedisServer::start();
    let producer = queue(&server.url(), 1);
    let _a = Helper::worker(&server, "a", 1);
    producer
        .enqueue(Work {
            id: "c".into(),
            task: Task::Cooperative,
        })
        .await
        .unwrap();
    running(&producer, 1).await;
    assert_eq!(
        producer.cancel(&JobId::from("c")).await.unwrap(),
        CancelOutcome::Stopping
    );
    eventually(DEADLINE, "the job to end cancelled", || async {
        status(&producer, "c").await == Some(JobStatus::Cancelled)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_another_process_before_the_next_renewal() {
    // A 30 s lease: the worker renews every 10 s. The cancel's pub/sub notice reaches it
    // long before that; the generous bound only tells the two paths apart.
    let lease = Duration::from_secs(30);
    let server = RedisServer::start();
    let producer = queue_with_lease(&server.url(), 1, lease);
    let a = Helper::start_with(&server, "worker", "a", 1, lease);
    producer
        .enqueue(Work {
            id: "fast".into(),
            task: Task::Cooperative,
        })
        .await
        .unwrap();
    running(&producer, 1).await;
    // Running is recorded before the worker's subscription may be: wait for it.
    eventually(DEADLINE, "a to subscribe to cancellations", || async {
        server
            .query::<Vec<redis::Value>>(&["PUBSUB", "CHANNELS", "*cancellations"])
            .len()
            == 1
    })
    .await;
    let asked = tokio::time::Instant::now();
    assert_eq!(
        producer.cancel(&JobId::from("fast")).await.unwrap(),
        CancelOutcome::Stopping
    );
    eventually(
        Duration::from_secs(5),
        "the job to end cancelled",
        || async { status(&producer, "fast").await == Some(JobStatus::Cancelled) },
    )
    .await;
    eprintln!(
        "a running job in another process cancelled {:?} after the request",
        asked.elapsed()
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_enqueues_of_one_id_from_two_processes_make_one_job() {
    let server = RedisServer::start();
    let producer = queue(&server.url(), 1);
    let mut redis = server.async_conn().await;
    let mut other = Helper::start(&server, "enqueuer", "e", 1);
    // Both start together: the other process polls for `start`.
    let _: () = redis.set("start", 1).await.unwrap();
    enqueue_same(&producer, 50).await;

    let mut out = String::new();
    std::io::Read::read_to_string(other.child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(other.child.wait().unwrap().success(), "{}", other.log());
    let line = out
        .lines()
        .find(|line| line.starts_with("new="))
        .unwrap_or_else(|| panic!("the enqueuer's report, in: {out}"));
    let counts: Vec<u64> = line
        .split(' ')
        .map(|part| part.split('=').nth(1).unwrap().parse().unwrap())
        .collect();
    let info = producer.info();
    assert_eq!(counts[0] + info.enqueued, 1, "one new job in all");
    assert_eq!(
        counts[1] + info.deduplicated,
        99,
        "every other enqueue found it"
    );
    assert_eq!(producer.len().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_and_gives_unfinished_jobs_back() {
    let server = RedisServer::start();
    let producer = queue(&server.url(), 1);
    let mut redis = server.async_conn().await;
    let mut a = Helper::worker(&server, "a", 1);
    hold(&producer, "t").await;
    running(&producer, 1).await;

    // SIGTERM: the job cannot finish within the drain timeout, so it goes back, unharmed.
    a.signal("TERM");
    let exited = tokio::task::spawn_blocking(move || {
        let exit = a.child.wait();
        (exit, a)
    });
    let (exit, a) = tokio::time::timeout(DEADLINE, exited)
        .await
        .expect("the worker exits after draining")
        .unwrap();
    assert!(exit.unwrap().success(), "{}", a.log());
    assert_eq!(status(&producer, "t").await, Some(JobStatus::Queued));
    let job = producer.job(&JobId::from("t")).await.unwrap().unwrap();
    assert_eq!(job.attempts, 0, "given back as if not started");

    let _: () = redis.set("go", 1).await.unwrap();
    let _b = Helper::worker(&server, "b", 1);
    eventually(DEADLINE, "another worker to finish it", || async {
        status(&producer, "t").await == Some(JobStatus::Completed)
    })
    .await;
}
