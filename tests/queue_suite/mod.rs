//! The queue conformance suite: every test takes a fresh store, so each store implementation
//! runs the same checks. Instantiate it with [`queue_conformance!`]:
//!
//! ```ignore
//! #[macro_use]
//! mod queue_suite;
//! queue_conformance!(store: MemoryStore::new(), paused_time: true);
//! ```
//!
//! `paused_time: true` runs the timer-heavy tests (TTL expiry, abort after the grace period,
//! shutdown deadline) on paused Tokio time with long durations; a store that does real I/O
//! (Redis) passes `false` and gets short real durations instead. No test sleeps "long
//! enough": every wait is on a condition, with a deadline.
#![allow(dead_code)] // each test binary uses part of the suite

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercake::queue::store::{Enqueued, Lease, LeaseState, NewJob, Settled, Settlement, Store};
use layercake::queue::{
    Backoff, CancelOutcome, JobContext, JobId, JobInfo, JobStatus, Permanent, Progress, Queue,
    QueueBuilder, QueueLayer, QueueService,
};
use layercake::BoxError;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// Generates one `#[tokio::test]` per suite test for a store.
macro_rules! queue_conformance {
    (store: $store:expr, paused_time: $paused:literal) => {
        queue_conformance!(fixture: (), |_fixture| $store, paused_time: $paused);
    };
    // `fixture` lives as long as the test (a Redis server, say); the store is made from it.
    (fixture: $fixture:expr, |$f:ident| $store:expr, paused_time: $paused:literal) => {
        #[tokio::test]
        async fn enqueue_then_complete_with_result() {
            { let $f = $fixture; queue_suite::enqueue_then_complete_with_result($store).await }
        }
        #[tokio::test]
        async fn failure_retries_then_fails_with_error_and_attempts() {
            { let $f = $fixture; queue_suite::failure_retries_then_fails_with_error_and_attempts($store).await }
        }
        #[tokio::test]
        async fn retry_then_success_clears_the_error() {
            { let $f = $fixture; queue_suite::retry_then_success_clears_the_error($store).await }
        }
        #[tokio::test]
        async fn permanent_error_is_not_retried() {
            { let $f = $fixture; queue_suite::permanent_error_is_not_retried($store).await }
        }
        #[tokio::test]
        async fn panic_fails_the_attempt_and_the_worker_carries_on() {
            { let $f = $fixture; queue_suite::panic_fails_the_attempt_and_the_worker_carries_on($store).await }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dedup_under_100_concurrent_enqueues() {
            { let $f = $fixture; queue_suite::dedup_under_100_concurrent_enqueues($store).await }
        }
        #[tokio::test]
        async fn finished_id_can_run_again() {
            { let $f = $fixture; queue_suite::finished_id_can_run_again($store).await }
        }
        #[tokio::test]
        async fn cancel_queued_job_never_runs() {
            { let $f = $fixture; queue_suite::cancel_queued_job_never_runs($store).await }
        }
        #[tokio::test]
        async fn cancel_running_job_stops_it_cooperatively() {
            { let $f = $fixture; queue_suite::cancel_running_job_stops_it_cooperatively($store).await }
        }
        #[tokio::test(start_paused = $paused)]
        async fn cancel_running_job_aborts_it_after_the_grace_period() {
            { let $f = $fixture; queue_suite::cancel_running_job_aborts_it_after_the_grace_period($store, $paused).await }
        }
        #[tokio::test]
        async fn cancel_finished_or_unknown_job_reports_it() {
            { let $f = $fixture; queue_suite::cancel_finished_or_unknown_job_reports_it($store).await }
        }
        #[tokio::test(start_paused = $paused)]
        async fn result_ttl_expiry() {
            { let $f = $fixture; queue_suite::result_ttl_expiry($store, $paused).await }
        }
        #[tokio::test(start_paused = $paused)]
        async fn a_delayed_job_waits_until_it_is_due() {
            { let $f = $fixture; queue_suite::a_delayed_job_waits_until_it_is_due($store, $paused).await }
        }
        #[tokio::test]
        async fn list_len_and_clear_failed() {
            { let $f = $fixture; queue_suite::list_len_and_clear_failed($store).await }
        }
        #[tokio::test]
        async fn progress_visible_while_running() {
            { let $f = $fixture; queue_suite::progress_visible_while_running($store).await }
        }
        #[tokio::test(start_paused = $paused)]
        async fn shutdown_with_jobs_in_flight() {
            { let $f = $fixture; queue_suite::shutdown_with_jobs_in_flight($store, $paused).await }
        }
        #[tokio::test]
        async fn shutdown_lets_running_jobs_finish() {
            { let $f = $fixture; queue_suite::shutdown_lets_running_jobs_finish($store).await }
        }
        #[tokio::test]
        async fn undecodable_payload_is_quarantined() {
            { let $f = $fixture; queue_suite::undecodable_payload_is_quarantined($store).await }
        }
        #[tokio::test]
        async fn payloads_and_results_are_stored_in_the_envelope() {
            { let $f = $fixture; queue_suite::payloads_and_results_are_stored_in_the_envelope($store).await }
        }
        #[tokio::test]
        async fn store_rejects_stale_leases() {
            { let $f = $fixture; queue_suite::store_rejects_stale_leases($store).await }
        }
        #[tokio::test]
        async fn store_settles_a_cancel_requested_job_as_cancelled() {
            { let $f = $fixture; queue_suite::store_settles_a_cancel_requested_job_as_cancelled($store).await }
        }
        #[tokio::test]
        async fn store_dedups_live_ids_only() {
            { let $f = $fixture; queue_suite::store_dedups_live_ids_only($store).await }
        }
        #[tokio::test]
        async fn store_settles_then_dequeues_in_one_step() {
            { let $f = $fixture; queue_suite::store_settles_then_dequeues_in_one_step($store).await }
        }
        #[tokio::test]
        async fn store_takes_back_released_jobs_in_order() {
            { let $f = $fixture; queue_suite::store_takes_back_released_jobs_in_order($store).await }
        }
    };
}

// ---------------------------------------------------------------------------------------
// The test service

/// A job of the test service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// A deterministic id, or `None` for a random one.
    pub id: Option<String>,
    pub task: Task,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Task {
    /// Completes with the string.
    Echo(String),
    /// Always fails (retryable).
    Fail(String),
    /// Fails with a `Permanent` error.
    FailPermanently(String),
    /// Fails its first `n` attempts, then completes with "ok".
    FailTimes(u32),
    /// Panics with the message.
    Panic(String),
    /// Reports progress, then waits for the gate to open, then completes with "done".
    ProgressThenGate(String),
    /// Waits for the gate to open, then completes with the gate's name.
    Gate(String),
    /// Waits for cancellation, then returns an error.
    Cooperative,
    /// Ignores cancellation and never finishes.
    Stubborn,
}

impl Job {
    pub fn new(task: Task) -> Self {
        Self { id: None, task }
    }

    pub fn with_id(id: &str, task: Task) -> Self {
        Self {
            id: Some(id.to_owned()),
            task,
        }
    }
}

/// What the test service saw and the gates tests open.
#[derive(Default)]
pub struct Harness {
    calls: AtomicUsize,
    calls_by_task: Mutex<HashMap<String, usize>>,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub cooperative_saw_cancel: AtomicBool,
    pub stubborn_dropped_at: Mutex<Option<Instant>>,
}

impl Harness {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls whose task debug-prints as `task`.
    pub fn calls_of(&self, task: &Task) -> usize {
        let key = format!("{task:?}");
        self.calls_by_task
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn gate(&self, name: &str) -> Arc<Semaphore> {
        self.gates
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    /// Opens a gate for good: every present and future waiter passes.
    pub fn open(&self, name: &str) {
        self.gate(name).close();
    }

    async fn run(self: Arc<Self>, task: Task) -> Result<String, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self
            .calls_by_task
            .lock()
            .unwrap()
            .entry(format!("{task:?}"))
            .or_default() += 1;
        match task {
            Task::Echo(s) => Ok(s),
            Task::Fail(message) => Err(message.into()),
            Task::FailPermanently(message) => Err(Permanent::new(message).into()),
            Task::FailTimes(n) => {
                let ctx = JobContext::current().expect("runs inside a job");
                if ctx.attempt() <= n {
                    Err(format!("attempt {} failed", ctx.attempt()).into())
                } else {
                    Ok("ok".to_owned())
                }
            }
            Task::Panic(message) => panic!("{message}"),
            Task::ProgressThenGate(gate) => {
                let ctx = JobContext::current().expect("runs inside a job");
                ctx.set_progress(Progress::new(0.5).with_message("halfway"));
                let _ = self.gate(&gate).acquire().await;
                Ok("done".to_owned())
            }
            Task::Gate(gate) => {
                let _ = self.gate(&gate).acquire().await;
                Ok(gate)
            }
            Task::Cooperative => {
                let ctx = JobContext::current().expect("runs inside a job");
                ctx.cancelled().await;
                self.cooperative_saw_cancel.store(true, Ordering::SeqCst);
                Err("stopped on request".into())
            }
            Task::Stubborn => {
                struct OnDrop(Arc<Harness>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        *self.0.stubborn_dropped_at.lock().unwrap() = Some(Instant::now());
                    }
                }
                let _guard = OnDrop(self.clone());
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }
}

pub type TestQueue<St> = Queue<Job, String, St>;
pub type TestService<St> = QueueService<Job, String, St>;

/// A queue of the test service over `store`: 2 workers, 1 ms fixed backoff, dedup by
/// `Job::id`; `configure` changes anything else.
pub fn build<St: Store>(
    store: St,
    configure: impl FnOnce(QueueBuilder<Job, String, St>) -> QueueBuilder<Job, String, St>,
) -> (TestQueue<St>, TestService<St>, Arc<Harness>) {
    let builder = Queue::builder("conformance")
        .store(store)
        .workers(2)
        .backoff(Backoff::fixed(Duration::from_millis(1)).without_jitter())
        .job_id(|job: &Job| job.id.clone());
    let queue = configure(builder).build().expect("a valid configuration");
    let harness = Arc::new(Harness::default());
    let h = harness.clone();
    let svc = ServiceBuilder::new()
        .layer(QueueLayer::new(queue.clone()))
        .service(service_fn(move |job: Job| h.clone().run(job.task)));
    (queue, svc, harness)
}

pub async fn enqueue<St: Store>(svc: &mut TestService<St>, job: Job) -> JobId {
    svc.ready()
        .await
        .expect("ready")
        .call(job)
        .await
        .expect("enqueued")
}

/// Waits for the job to finish (at most 10 s, of paused time where paused).
pub async fn finished<St: Store>(queue: &TestQueue<St>, id: &JobId) -> JobInfo<String> {
    tokio::time::timeout(Duration::from_secs(10), queue.wait(id))
        .await
        .unwrap_or_else(|_| panic!("job {id} did not finish"))
        .expect("store works")
        .expect("job exists")
}

/// Polls `condition` until it holds, panicking after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn status<St: Store>(queue: &TestQueue<St>, id: &JobId) -> Option<JobStatus> {
    queue
        .job(id)
        .await
        .expect("store works")
        .map(|job| job.status)
}

async fn running<St: Store>(queue: &TestQueue<St>, id: &JobId) {
    eventually("the job to run", || async {
        status(queue, id).await == Some(JobStatus::Running)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Queue-level tests

pub async fn enqueue_then_complete_with_result<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b);
    let id = enqueue(&mut svc, Job::new(Task::Echo("hello".into()))).await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result.as_deref(), Some("hello"));
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error, None);
    let started = job.started_at.expect("started_at is set");
    let done = job.finished_at.expect("finished_at is set");
    assert!(job.enqueued_at <= started && started <= done);
    assert_eq!(harness.calls(), 1);
    let info = queue.info();
    assert_eq!((info.enqueued, info.completed, info.queued), (1, 1, 0));
}

pub async fn failure_retries_then_fails_with_error_and_attempts<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.max_attempts(3));
    let id = enqueue(&mut svc, Job::new(Task::Fail("disk full".into()))).await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.error.as_deref(), Some("disk full"));
    assert_eq!(job.result, None);
    assert_eq!(harness.calls(), 3);
    let info = queue.info();
    assert_eq!((info.retried, info.failed, info.completed), (2, 1, 0));
}

pub async fn retry_then_success_clears_the_error<St: Store>(store: St) {
    let (queue, mut svc, _) = build(store, |b| b.max_attempts(3));
    let id = enqueue(&mut svc, Job::new(Task::FailTimes(1))).await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.result.as_deref(), Some("ok"));
    assert_eq!(job.error, None);
}

pub async fn permanent_error_is_not_retried<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.max_attempts(5));
    let id = enqueue(
        &mut svc,
        Job::new(Task::FailPermanently("bad input".into())),
    )
    .await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error.as_deref(), Some("bad input"));
    assert_eq!(harness.calls(), 1);
    assert_eq!(queue.info().retried, 0);
}

pub async fn panic_fails_the_attempt_and_the_worker_carries_on<St: Store>(store: St) {
    let (queue, mut svc, _) = build(store, |b| b.workers(1).max_attempts(2));
    let id = enqueue(&mut svc, Job::new(Task::Panic("kaboom".into()))).await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.attempts, 2,
        "a panic is a failed attempt, retried like an error"
    );
    assert_eq!(job.error.as_deref(), Some("panicked: kaboom"));

    // The only worker survived both panics.
    let id = enqueue(&mut svc, Job::new(Task::Echo("still here".into()))).await;
    assert_eq!(
        finished(&queue, &id).await.result.as_deref(),
        Some("still here")
    );
}

pub async fn dedup_under_100_concurrent_enqueues<St: Store>(store: St) {
    let (queue, svc, harness) = build(store, |b| b.capacity(200));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.oneshot(Job::with_id("same", Task::Gate("g".into())))
                    .await
                    .expect("enqueued")
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().as_str(), "same");
    }
    let info = queue.info();
    assert_eq!(info.enqueued, 1, "one job");
    assert_eq!(info.deduplicated, 99, "99 enqueues found it");
    let live = queue.list(JobStatus::Queued, 10).await.unwrap().len()
        + queue.list(JobStatus::Running, 10).await.unwrap().len();
    assert_eq!(live, 1);

    harness.open("g");
    let id = JobId::from("same");
    assert_eq!(finished(&queue, &id).await.status, JobStatus::Completed);
    assert_eq!(harness.calls(), 1, "the service ran once");
}

pub async fn finished_id_can_run_again<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b);
    let id = enqueue(&mut svc, Job::with_id("report", Task::Echo("v1".into()))).await;
    assert_eq!(finished(&queue, &id).await.result.as_deref(), Some("v1"));
    let again = enqueue(&mut svc, Job::with_id("report", Task::Echo("v2".into()))).await;
    assert_eq!(again, id);
    assert_eq!(finished(&queue, &id).await.result.as_deref(), Some("v2"));
    assert_eq!(harness.calls(), 2);
    assert_eq!(queue.info().deduplicated, 0);
}

pub async fn cancel_queued_job_never_runs<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.workers(1));
    let blocker = enqueue(&mut svc, Job::new(Task::Gate("g".into()))).await;
    running(&queue, &blocker).await;
    let victim_task = Task::Echo("never".into());
    let victim = enqueue(&mut svc, Job::new(victim_task.clone())).await;
    assert_eq!(status(&queue, &victim).await, Some(JobStatus::Queued));

    assert_eq!(
        queue.cancel(&victim).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(status(&queue, &victim).await, Some(JobStatus::Cancelled));

    harness.open("g");
    finished(&queue, &blocker).await;
    // Let the worker look for more work: a job queued after the victim runs, the victim not.
    let after = enqueue(&mut svc, Job::new(Task::Echo("after".into()))).await;
    finished(&queue, &after).await;
    assert_eq!(harness.calls_of(&victim_task), 0);
    let job = queue.job(&victim).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.attempts, 0);
    assert!(job.finished_at.is_some());
    assert_eq!(queue.info().cancelled, 1);
}

pub async fn cancel_running_job_stops_it_cooperatively<St: Store>(store: St) {
    // A grace period far longer than the test's deadline: only a cooperative stop can pass.
    let (queue, mut svc, harness) = build(store, |b| b.cancel_grace(Duration::from_secs(3600)));
    let id = enqueue(&mut svc, Job::new(Task::Cooperative)).await;
    running(&queue, &id).await;
    assert_eq!(queue.cancel(&id).await.unwrap(), CancelOutcome::Stopping);
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(harness.cooperative_saw_cancel.load(Ordering::SeqCst));
    assert_eq!(queue.info().retried, 0, "a cancelled job is not retried");
}

pub async fn cancel_running_job_aborts_it_after_the_grace_period<St: Store>(
    store: St,
    paused: bool,
) {
    let grace = if paused {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(300)
    };
    let (queue, mut svc, harness) = build(store, |b| b.cancel_grace(grace));
    let id = enqueue(&mut svc, Job::new(Task::Stubborn)).await;
    running(&queue, &id).await;
    let cancelled_at = Instant::now();
    assert_eq!(queue.cancel(&id).await.unwrap(), CancelOutcome::Stopping);
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Cancelled);
    let dropped_at = harness
        .stubborn_dropped_at
        .lock()
        .unwrap()
        .expect("the job's future was dropped");
    assert!(
        dropped_at.duration_since(cancelled_at) >= grace,
        "dropped before the grace period ended"
    );
}

pub async fn cancel_finished_or_unknown_job_reports_it<St: Store>(store: St) {
    let (queue, mut svc, _) = build(store, |b| b);
    let id = enqueue(&mut svc, Job::new(Task::Echo("x".into()))).await;
    finished(&queue, &id).await;
    assert_eq!(
        queue.cancel(&id).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobStatus::Completed)
    );
    assert_eq!(status(&queue, &id).await, Some(JobStatus::Completed));

    let unknown = JobId::from("no-such-job");
    assert_eq!(
        queue.cancel(&unknown).await.unwrap(),
        CancelOutcome::NotFound
    );
    assert!(queue.job(&unknown).await.unwrap().is_none());
    assert!(queue.wait(&unknown).await.unwrap().is_none());
}

pub async fn result_ttl_expiry<St: Store>(store: St, paused: bool) {
    let ttl = if paused {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(1)
    };
    let (queue, mut svc, _) = build(store, |b| b.result_ttl(ttl));
    let done = enqueue(&mut svc, Job::new(Task::Echo("kept".into()))).await;
    let failed = enqueue(&mut svc, Job::new(Task::FailPermanently("no".into()))).await;
    finished(&queue, &done).await;
    finished(&queue, &failed).await;

    // Still there shortly before the TTL (only checked where time is exact).
    if paused {
        tokio::time::sleep(ttl - Duration::from_secs(1)).await;
        assert_eq!(status(&queue, &done).await, Some(JobStatus::Completed));
    }
    eventually("the results to expire", || async {
        queue.job(&done).await.unwrap().is_none() && queue.job(&failed).await.unwrap().is_none()
    })
    .await;
    assert!(queue
        .list(JobStatus::Completed, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(queue.list(JobStatus::Failed, 10).await.unwrap().is_empty());
}

pub async fn a_delayed_job_waits_until_it_is_due<St: Store>(store: St, paused: bool) {
    let delay = if paused {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(500)
    };
    let (queue, _svc, _) = build(store, |b| b);
    let started = Instant::now();
    let later = queue
        .enqueue_in(Job::new(Task::Echo("later".into())), delay)
        .await
        .unwrap();
    let now = queue
        .enqueue(Job::new(Task::Echo("now".into())))
        .await
        .unwrap();
    finished(&queue, &now).await;
    // The job enqueued after it ran first; the delayed one still waits, counted as queued.
    assert_eq!(status(&queue, &later).await, Some(JobStatus::Queued));
    assert_eq!(queue.len().await.unwrap(), 1);
    let job = finished(&queue, &later).await;
    assert_eq!(job.result.as_deref(), Some("later"));
    // Timed by the store's clock (Redis' in real time): a little slack for clock reads.
    assert!(
        started.elapsed() + Duration::from_millis(20) >= delay,
        "ran after {:?}",
        started.elapsed()
    );
    let at = std::time::SystemTime::now();
    let past = queue
        .enqueue_at(Job::new(Task::Echo("past".into())), at)
        .await
        .unwrap();
    assert_eq!(finished(&queue, &past).await.status, JobStatus::Completed);
}

pub async fn list_len_and_clear_failed<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.workers(1));
    let blocker = enqueue(&mut svc, Job::new(Task::Gate("g".into()))).await;
    running(&queue, &blocker).await;
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(enqueue(&mut svc, Job::new(Task::Echo(format!("job {i}")))).await);
    }
    assert_eq!(queue.len().await.unwrap(), 3);
    let listed: Vec<JobId> = queue
        .list(JobStatus::Queued, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    let newest_first: Vec<JobId> = queued.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    assert_eq!(queue.list(JobStatus::Queued, 2).await.unwrap().len(), 2);
    let running_jobs = queue.list(JobStatus::Running, 10).await.unwrap();
    assert_eq!(running_jobs.len(), 1);
    assert_eq!(running_jobs[0].id, blocker);

    harness.open("g");
    for id in &queued {
        finished(&queue, id).await;
    }
    assert_eq!(queue.len().await.unwrap(), 0);
    assert!(queue.is_empty().await.unwrap());
    assert_eq!(queue.list(JobStatus::Completed, 10).await.unwrap().len(), 4);

    let failed = enqueue(&mut svc, Job::new(Task::FailPermanently("bad".into()))).await;
    finished(&queue, &failed).await;
    assert_eq!(queue.list(JobStatus::Failed, 10).await.unwrap().len(), 1);
    assert_eq!(queue.clear_failed().await.unwrap(), 1);
    assert!(queue.list(JobStatus::Failed, 10).await.unwrap().is_empty());
    assert!(queue.job(&failed).await.unwrap().is_none());
    assert_eq!(queue.list(JobStatus::Completed, 10).await.unwrap().len(), 4);
}

pub async fn progress_visible_while_running<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b);
    let id = enqueue(&mut svc, Job::new(Task::ProgressThenGate("g".into()))).await;
    eventually("progress to be visible", || async {
        let job = queue.job(&id).await.unwrap().unwrap();
        job.status == JobStatus::Running
            && job.progress == Some(Progress::new(0.5).with_message("halfway"))
    })
    .await;
    harness.open("g");
    let job = finished(&queue, &id).await;
    assert_eq!(job.result.as_deref(), Some("done"));
}

pub async fn shutdown_with_jobs_in_flight<St: Store>(store: St, paused: bool) {
    let deadline = if paused {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(300)
    };
    let (queue, mut svc, harness) = build(store, |b| {
        b.workers(1).cancel_grace(Duration::from_secs(3600))
    });
    let stuck = enqueue(&mut svc, Job::new(Task::Stubborn)).await;
    running(&queue, &stuck).await;
    let waiting = [
        enqueue(&mut svc, Job::new(Task::Echo("a".into()))).await,
        enqueue(&mut svc, Job::new(Task::Echo("b".into()))).await,
    ];

    let started = Instant::now();
    let report = queue.shutdown(deadline).await;
    assert!(
        started.elapsed() >= deadline,
        "the running job had until the deadline"
    );
    assert_eq!(report.cancelled, vec![stuck.clone()]);
    assert_eq!(report.finished, 0);
    // A store shared by other workers gets the stopped job back, for one of them.
    let shared = queue.store().lease_duration().is_some();
    let mut reported = report.queued.clone();
    reported.sort();
    let mut expected = waiting.to_vec();
    if shared {
        expected.push(stuck.clone());
    }
    expected.sort();
    assert_eq!(reported, expected, "queued jobs are reported, not dropped");

    let stopped = if shared {
        JobStatus::Queued
    } else {
        JobStatus::Cancelled
    };
    assert_eq!(status(&queue, &stuck).await, Some(stopped));
    assert!(harness.stubborn_dropped_at.lock().unwrap().is_some());
    for id in &waiting {
        assert_eq!(status(&queue, id).await, Some(JobStatus::Queued));
    }
    let err = svc
        .ready()
        .await
        .expect_err("a closed queue accepts nothing");
    assert!(err.is_closed());
    assert!(queue.info().closed);
}

pub async fn shutdown_lets_running_jobs_finish<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.workers(1));
    let id = enqueue(&mut svc, Job::new(Task::Gate("g".into()))).await;
    running(&queue, &id).await;
    let shutdown = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shutdown(Duration::from_secs(3600)).await }
    });
    eventually("the queue to close", || async { queue.info().closed }).await;
    harness.open("g");
    let report = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown returns once the job finished")
        .unwrap();
    assert_eq!(report.finished, 1);
    assert!(report.cancelled.is_empty());
    assert!(report.queued.is_empty());
    assert_eq!(status(&queue, &id).await, Some(JobStatus::Completed));
}

pub async fn undecodable_payload_is_quarantined<St: Store>(store: St) {
    let (queue, _svc, harness) = build(store, |b| b.max_attempts(3));
    // 0xc1 is never valid MessagePack: what a worker meets when the request type changed
    // under a persistent store, or the bytes were damaged.
    let garbage: &[u8] = &[0xc1, 0x00, 0xff];
    let id = JobId::from("garbage");
    let enqueued = queue
        .store()
        .enqueue(NewJob::new(id.clone(), garbage))
        .await
        .unwrap();
    assert_eq!(enqueued, Enqueued::New);

    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.quarantined);
    assert_eq!(job.attempts, 1, "no retry");
    assert!(job.error.unwrap().contains("decode"));
    assert_eq!(harness.calls(), 0);
    let record = queue.store().get(&id).await.unwrap().unwrap();
    assert_eq!(record.payload.as_deref(), Some(garbage), "bytes kept");
    let info = queue.info();
    assert_eq!((info.quarantined, info.failed, info.retried), (1, 0, 0));
}

pub async fn payloads_and_results_are_stored_in_the_envelope<St: Store>(store: St) {
    let (queue, mut svc, harness) = build(store, |b| b.max_attempts(3));
    let id = enqueue(&mut svc, Job::with_id("enveloped", Task::Echo("hi".into()))).await;
    let job = finished(&queue, &id).await;
    assert_eq!(job.status, JobStatus::Completed);
    let record = queue.store().get(&id).await.unwrap().unwrap();
    let result = record.result.expect("the result is kept");
    // Magic `lc`, envelope version 1, codec 1 (MessagePack): the README's format.
    assert_eq!(&result[..4], b"lc\x01\x01");

    // A request stored as bare MessagePack (no header: another format, or an old build)
    // is quarantined, not guessed at.
    let bare = rmp_serde::to_vec_named(&Job::with_id("bare", Task::Echo("x".into()))).unwrap();
    let old = JobId::from("bare");
    let enqueued = queue
        .store()
        .enqueue(NewJob::new(old.clone(), bare))
        .await
        .unwrap();
    assert_eq!(enqueued, Enqueued::New);
    let job = finished(&queue, &old).await;
    assert!(job.quarantined, "{job:?}");
    assert_eq!(harness.calls(), 1, "only the enveloped job ran");
}

// ---------------------------------------------------------------------------------------
// Store-level tests (no workers)

const TTL: Duration = Duration::from_secs(60);

fn new_job(id: &str) -> NewJob {
    NewJob::new(JobId::from(id), &b"payload"[..])
}

pub async fn store_rejects_stale_leases<St: Store>(store: St) {
    assert_eq!(store.enqueue(new_job("a")).await.unwrap(), Enqueued::New);
    let first = store.dequeue(Duration::ZERO).await.unwrap().expect("a job");
    assert_eq!(first.attempt(), 1);
    assert_eq!(&**first.payload(), b"payload");
    assert!(
        store.dequeue(Duration::ZERO).await.unwrap().is_none(),
        "one lease at a time"
    );

    let retry = Settlement::Retry {
        error: "flaky".into(),
        delay: Duration::ZERO,
    };
    assert_eq!(
        store.settle(&first, retry, TTL).await.unwrap(),
        Settled::Applied(JobStatus::Queued)
    );
    let second = store
        .dequeue(Duration::ZERO)
        .await
        .unwrap()
        .expect("the retry");
    assert_eq!(second.attempt(), 2);
    assert_ne!(second.token(), first.token());

    // The first attempt's worker wakes up late: it can change nothing.
    let late = Settlement::Complete(b"stale"[..].into());
    assert_eq!(
        store.settle(&first, late, TTL).await.unwrap(),
        Settled::Stale
    );
    assert_eq!(
        store.progress(&first, &Progress::new(1.0)).await.unwrap(),
        LeaseState::Lost
    );
    assert_eq!(store.renew(&first).await.unwrap(), LeaseState::Lost);
    assert_eq!(store.renew(&second).await.unwrap(), LeaseState::Active);

    let done = Settlement::Complete(b"fresh"[..].into());
    assert_eq!(
        store.settle(&second, done, TTL).await.unwrap(),
        Settled::Applied(JobStatus::Completed)
    );
    let record = store.get(&JobId::from("a")).await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"fresh"[..]));
    assert_eq!(record.attempts, 2);
    assert_eq!(
        store
            .settle(&second, Settlement::Cancel, TTL)
            .await
            .unwrap(),
        Settled::Stale
    );
}

pub async fn store_settles_a_cancel_requested_job_as_cancelled<St: Store>(store: St) {
    let _ = store.enqueue(new_job("a")).await.unwrap();
    let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
    let id = JobId::from("a");
    assert_eq!(
        store.cancel(&id, TTL).await.unwrap(),
        CancelOutcome::Stopping
    );
    assert_eq!(
        store.renew(&lease).await.unwrap(),
        LeaseState::CancelRequested
    );
    let settled = store
        .settle(&lease, Settlement::Complete(b"late"[..].into()), TTL)
        .await
        .unwrap();
    assert_eq!(settled, Settled::Applied(JobStatus::Cancelled));
    assert_eq!(
        store.cancel(&id, TTL).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobStatus::Cancelled)
    );
}

pub async fn store_dedups_live_ids_only<St: Store>(store: St) {
    assert_eq!(store.enqueue(new_job("a")).await.unwrap(), Enqueued::New);
    assert_eq!(
        store.enqueue(new_job("a")).await.unwrap(),
        Enqueued::Existing
    );
    assert_eq!(store.queued().await.unwrap(), 1);
    let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(
        store.enqueue(new_job("a")).await.unwrap(),
        Enqueued::Existing,
        "running"
    );
    let _ = store
        .settle(&lease, Settlement::Fail("x".into()), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.enqueue(new_job("a")).await.unwrap(),
        Enqueued::New,
        "finished"
    );
    assert_eq!(store.queued().await.unwrap(), 1);
    let record = store.get(&JobId::from("a")).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, record.error),
        (JobStatus::Queued, 0, None)
    );
}

pub async fn store_settles_then_dequeues_in_one_step<St: Store>(store: St) {
    for id in ["a", "b"] {
        assert_eq!(store.enqueue(new_job(id)).await.unwrap(), Enqueued::New);
    }
    let a = store.dequeue(Duration::ZERO).await.unwrap().expect("a");
    let done = Settlement::Complete(b"A"[..].into());
    let (settled, next) = store.settle_then_dequeue(&[(a, done)], TTL, 1).await;
    assert_eq!(settled.len(), 1);
    assert_eq!(
        settled[0].as_ref().unwrap(),
        &Settled::Applied(JobStatus::Completed)
    );
    let next = next.unwrap();
    assert_eq!(next.len(), 1, "b is taken in the same step");
    let b = next[0].clone();
    assert_eq!((b.id().as_str(), b.attempt()), ("b", 1));
    let record = store.get(&JobId::from("a")).await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"A"[..]));

    // A retry without delay is the next due job: the same step takes it again.
    let retry = Settlement::Retry {
        error: "flaky".into(),
        delay: Duration::ZERO,
    };
    let (settled, next) = store
        .settle_then_dequeue(&[(b.clone(), retry)], TTL, 1)
        .await;
    assert_eq!(
        settled[0].as_ref().unwrap(),
        &Settled::Applied(JobStatus::Queued)
    );
    let b2 = next.unwrap().pop().expect("the retry");
    assert_eq!((b2.id().as_str(), b2.attempt()), ("b", 2));

    // A stale settlement changes nothing; with nothing queued, no job comes back.
    let late = Settlement::Fail("late".into());
    let (settled, next) = store.settle_then_dequeue(&[(b, late)], TTL, 1).await;
    assert_eq!(settled[0].as_ref().unwrap(), &Settled::Stale);
    assert!(next.unwrap().is_empty());
    assert_eq!(store.renew(&b2).await.unwrap(), LeaseState::Active);
    let (settled, next) = store
        .settle_then_dequeue(&[(b2, Settlement::Cancel)], TTL, 1)
        .await;
    assert_eq!(
        settled[0].as_ref().unwrap(),
        &Settled::Applied(JobStatus::Cancelled)
    );
    assert!(next.unwrap().is_empty());
    assert_eq!(store.queued().await.unwrap(), 0);

    // Nothing to settle and `max` 0: nothing happens.
    let (settled, next) = store.settle_then_dequeue(&[], TTL, 0).await;
    assert!(settled.is_empty() && next.unwrap().is_empty());
}

/// Takes up to `max` jobs in one step (a store may take fewer, at least one when some are
/// due) and then the rest one by one: `count` leases in FIFO order.
async fn take<St: Store>(store: &St, count: usize, max: usize) -> Vec<Lease> {
    let (_, taken) = store.settle_then_dequeue(&[], TTL, max).await;
    let mut taken = taken.unwrap();
    assert!(
        !taken.is_empty() && taken.len() <= max,
        "took {}",
        taken.len()
    );
    while taken.len() < count {
        taken.push(store.dequeue(Duration::ZERO).await.unwrap().expect("due"));
    }
    taken
}

pub async fn store_takes_back_released_jobs_in_order<St: Store>(store: St) {
    for id in ["a", "b", "c", "d"] {
        assert_eq!(store.enqueue(new_job(id)).await.unwrap(), Enqueued::New);
    }
    // `a` runs once and is retried, so that its earlier start must come back on release.
    let a = store.dequeue(Duration::ZERO).await.unwrap().expect("a");
    let retry = Settlement::Retry {
        error: "flaky".into(),
        delay: Duration::ZERO,
    };
    let _ = store.settle(&a, retry, TTL).await.unwrap();
    let first_start = store
        .get(&JobId::from("a"))
        .await
        .unwrap()
        .unwrap()
        .started_at;
    assert!(first_start.is_some());

    // b, c, d, a in FIFO order (the retry went to the back).
    let taken = take(&store, 4, 4).await;
    let ids: Vec<_> = taken.iter().map(|lease| lease.id().as_str()).collect();
    assert_eq!(ids, ["b", "c", "d", "a"]);
    assert_eq!(store.queued().await.unwrap(), 0);

    // `c` was asked to stop meanwhile: given back, it is cancelled without running.
    assert_eq!(
        store.cancel(&JobId::from("c"), TTL).await.unwrap(),
        CancelOutcome::Stopping
    );
    // Given back in reverse order of taking: the queue is as it was.
    let released: Vec<_> = taken
        .iter()
        .rev()
        .map(|lease| (lease.clone(), Settlement::Release))
        .collect();
    let (settled, next) = store.settle_then_dequeue(&released, TTL, 0).await;
    assert!(next.unwrap().is_empty());
    let settled: Vec<_> = settled.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        settled,
        [
            Settled::Applied(JobStatus::Queued),
            Settled::Applied(JobStatus::Queued),
            Settled::Applied(JobStatus::Cancelled),
            Settled::Applied(JobStatus::Queued),
        ]
    );
    assert_eq!(store.queued().await.unwrap(), 3);
    for (id, attempts, started) in [("b", 0, None), ("d", 0, None), ("a", 1, first_start)] {
        let record = store.get(&JobId::from(id)).await.unwrap().unwrap();
        assert_eq!(
            (record.status, record.attempts, record.started_at),
            (JobStatus::Queued, attempts, started),
            "{id}"
        );
    }
    let c = store.get(&JobId::from("c")).await.unwrap().unwrap();
    assert_eq!((c.status, c.attempts), (JobStatus::Cancelled, 0));

    // A lease given back is no longer current; a stale release changes nothing.
    let (settled, _) = store
        .settle_then_dequeue(&[(taken[0].clone(), Settlement::Release)], TTL, 0)
        .await;
    assert_eq!(settled[0].as_ref().unwrap(), &Settled::Stale);
    assert_eq!(
        store
            .settle(&taken[0], Settlement::Complete(b"x"[..].into()), TTL)
            .await
            .unwrap(),
        Settled::Stale
    );

    // The next dequeues take them in the old order, with fresh leases.
    let again = take(&store, 3, 3).await;
    let ids: Vec<_> = again
        .iter()
        .map(|lease| (lease.id().as_str(), lease.attempt()))
        .collect();
    assert_eq!(ids, [("b", 1), ("d", 1), ("a", 2)]);
    assert!(again
        .iter()
        .zip([&taken[0], &taken[2], &taken[3]])
        .all(|(new, old)| new.token() != old.token()));
}
