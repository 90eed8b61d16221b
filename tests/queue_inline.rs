//! The dispatcher's inline polling: once a queue's attempts have been fast for a while, the
//! dispatcher polls each new attempt once itself and gives it a task only if it is still
//! pending; a slow first poll gives every attempt its own task again.
//!
//! Where an attempt ran is observable through `tokio::task::try_id()`: attempts polled
//! inline all run on the dispatcher's task, spawned ones each on a task of their own.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use layercake::queue::{
    Backoff, JobContext, JobId, JobInfo, JobStatus, Permanent, Progress, Queue, QueueError,
    QueueLayer,
};
use layercake::BoxError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::{service_fn, Layer, Service, ServiceExt};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    Noop,
    /// Blocks its thread in its first poll.
    Block(u64),
    /// Blocks until another `Meet` job blocks too (or 5 s pass); fails if alone.
    Meet,
    FailFirstAttempt,
    Panic,
    Permanent,
    Progress,
    /// Keeps its context (in `KEPT`), with the id it had when the job ran.
    Keep,
}

/// Contexts that `Job::Keep` jobs kept, with the id each had when its job ran.
static KEPT: Mutex<Vec<(JobContext, JobId)>> = Mutex::new(Vec::new());

/// Two jobs that block their threads until both are there: they meet only if they run in
/// parallel.
#[derive(Default)]
struct Meeting {
    arrived: Mutex<u32>,
    all_there: Condvar,
}

impl Meeting {
    fn meet(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_there.notify_all();
        let (arrived, _) = self
            .all_there
            .wait_timeout_while(arrived, Duration::from_secs(5), |n| *n < 2)
            .unwrap();
        *arrived >= 2
    }
}

type TestQueue = Queue<Job, String>;

/// The task of the latest attempt (these tests run one job at a time).
type LastTask = Arc<Mutex<String>>;

/// A queue whose jobs answer with the id of the task that ran them.
fn queue(
    meeting: Arc<Meeting>,
    last: LastTask,
) -> (
    TestQueue,
    impl Service<Job, Response = JobId, Error = QueueError> + Clone,
) {
    queue_with_capacity(1_000, meeting, last)
}

fn queue_with_capacity(
    capacity: usize,
    meeting: Arc<Meeting>,
    last: LastTask,
) -> (
    TestQueue,
    impl Service<Job, Response = JobId, Error = QueueError> + Clone,
) {
    let queue: TestQueue = Queue::builder("inline")
        .workers(8)
        .capacity(capacity)
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::ZERO))
        .build()
        .unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn(move |job: Job| {
        let (meeting, last) = (meeting.clone(), last.clone());
        async move {
            let ctx = JobContext::current().expect("a job sees its context");
            let task = tokio::task::try_id()
                .expect("jobs run on tasks")
                .to_string();
            last.lock().unwrap().clone_from(&task);
            match job {
                Job::Noop => {}
                Job::Block(ms) => std::thread::sleep(Duration::from_millis(ms)),
                Job::Meet => {
                    if !meeting.meet() {
                        return Err::<String, BoxError>(Permanent::new("ran alone").into());
                    }
                }
                Job::FailFirstAttempt if ctx.attempt() == 1 => {
                    return Err("the first attempt fails".into())
                }
                Job::FailFirstAttempt => {}
                Job::Panic => panic!("the job panicked"),
                Job::Permanent => return Err(Permanent::new("bad input").into()),
                Job::Progress => ctx.set_progress(Progress::new(1.0).with_message("all done")),
                Job::Keep => {
                    let id = ctx.id().clone();
                    KEPT.lock().unwrap().push((ctx, id));
                }
            }
            Ok(task)
        }
    }));
    (queue, svc)
}

/// Runs jobs one after another; returns the task each completed job ran on.
async fn run<S>(queue: &TestQueue, svc: &S, jobs: impl IntoIterator<Item = Job>) -> Vec<String>
where
    S: Service<Job, Response = JobId, Error = QueueError> + Clone,
{
    let mut tasks = Vec::new();
    for job in jobs {
        let id = svc.clone().oneshot(job).await.unwrap();
        let info = finished(queue, &id).await;
        assert_eq!(info.status, JobStatus::Completed, "{info:?}");
        tasks.push(info.result.unwrap());
    }
    tasks
}

/// The job once it has finished (within a generous limit that only catches a hang).
async fn finished<Req, Res: DeserializeOwned>(queue: &Queue<Req, Res>, id: &JobId) -> JobInfo<Res> {
    tokio::time::timeout(Duration::from_secs(10), queue.wait(id))
        .await
        .expect("the job finishes")
        .unwrap()
        .expect("the job exists")
}

fn distinct(tasks: &[String]) -> usize {
    tasks.iter().collect::<HashSet<_>>().len()
}

/// Runs no-op jobs until 8 in a row ran on one task (the dispatcher's), and returns it. A
/// first poll can be slow now and then on a busy machine (the thread was preempted), which
/// rightly ends inline polling for a while; so this waits for it rather than counting jobs.
async fn until_inline<S>(queue: &TestQueue, svc: &S) -> String
where
    S: Service<Job, Response = JobId, Error = QueueError> + Clone,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = run(queue, svc, (0..8).map(|_| Job::Noop)).await;
        if distinct(&tasks) == 1 {
            return tasks[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dispatcher never polled attempts inline"
        );
    }
}

/// Submits `job` while attempts are polled inline, until its last attempt ran inline (a
/// preempted first poll before it can switch inline polling off), and returns it.
async fn run_inline<S>(queue: &TestQueue, svc: &S, last: &LastTask, job: Job) -> JobInfo<String>
where
    S: Service<Job, Response = JobId, Error = QueueError> + Clone,
{
    for _ in 0..20 {
        let dispatcher = until_inline(queue, svc).await;
        let id = svc.clone().oneshot(job.clone()).await.unwrap();
        let info = finished(queue, &id).await;
        if *last.lock().unwrap() == dispatcher {
            return info;
        }
    }
    panic!("{job:?} never ran inline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_jobs_run_on_the_dispatcher_and_a_slow_one_gives_jobs_their_own_tasks() {
    let (queue, svc) = queue(Arc::default(), LastTask::default());

    // Until the dispatcher has seen enough fast attempts, each has its own task.
    let early = run(&queue, &svc, (0..8).map(|_| Job::Noop)).await;
    assert_eq!(distinct(&early), 8, "{early:?}");

    // Then one task (the dispatcher's) runs them.
    let dispatcher = until_inline(&queue, &svc).await;

    // One slow first poll (polled inline), and attempts get tasks of their own again...
    let slow = run(&queue, &svc, [Job::Block(5)]).await;
    assert_eq!(
        slow,
        std::slice::from_ref(&dispatcher),
        "the slow job itself was polled inline"
    );
    let after = run(&queue, &svc, (0..8).map(|_| Job::Noop)).await;
    assert_eq!(distinct(&after), 8, "{after:?}");
    assert!(!after.contains(&dispatcher), "{after:?}");

    // ...so jobs that compute without yielding run in parallel, one per runtime thread:
    // each of these blocks its thread until the other one runs too.
    let a = svc.clone().oneshot(Job::Meet).await.unwrap();
    let b = svc.clone().oneshot(Job::Meet).await.unwrap();
    for id in [a, b] {
        let info = finished(&queue, &id).await;
        assert_eq!(info.status, JobStatus::Completed, "{info:?}");
    }

    // And fast jobs earn inline polling back, on the same dispatcher.
    assert_eq!(until_inline(&queue, &svc).await, dispatcher);
    support::eventually(Duration::from_secs(5), "no attempt running", || async {
        queue.info().running == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_end_in_their_first_poll_settle_like_any_other() {
    let last = LastTask::default();
    let (queue, svc) = queue(Arc::default(), last.clone());

    let retried = run_inline(&queue, &svc, &last, Job::FailFirstAttempt).await;
    assert_eq!(retried.status, JobStatus::Completed);
    assert_eq!(retried.attempts, 2);

    let permanent = run_inline(&queue, &svc, &last, Job::Permanent).await;
    assert_eq!(permanent.status, JobStatus::Failed);
    assert_eq!(permanent.attempts, 1);
    assert!(
        permanent.error.as_deref().unwrap().contains("bad input"),
        "{permanent:?}"
    );

    let progress = run_inline(&queue, &svc, &last, Job::Progress).await;
    assert_eq!(progress.status, JobStatus::Completed);
    let reported = progress
        .progress
        .expect("progress reported in the only poll is kept");
    assert_eq!(reported.message.as_deref(), Some("all done"));

    // A panic fails the attempt, not the dispatcher (it is slow too: the panic hook prints
    // it, so the retry may get a task of its own).
    let dispatcher = until_inline(&queue, &svc).await;
    let id = svc.clone().oneshot(Job::Panic).await.unwrap();
    let panicked = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(panicked.status, JobStatus::Failed);
    assert_eq!(panicked.attempts, 2);
    assert!(
        panicked
            .error
            .as_deref()
            .unwrap()
            .contains("the job panicked"),
        "{panicked:?}"
    );
    assert_eq!(until_inline(&queue, &svc).await, dispatcher);

    support::eventually(Duration::from_secs(5), "no attempt running", || async {
        queue.info().running == 0
    })
    .await;
    let info = queue.info();
    assert_eq!((info.failed, info.retried), (2, 2));
    assert_eq!(info.completed + info.failed, info.enqueued);
}

/// A request: `Deserialize` panics on one whose `explode_on_decode` is set.
#[derive(Debug, Clone, Serialize)]
struct Touchy {
    explode_on_decode: bool,
    explode_on_encode: bool,
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Plain {
            explode_on_decode: bool,
            explode_on_encode: bool,
        }
        let plain = Plain::deserialize(deserializer)?;
        assert!(!plain.explode_on_decode, "Deserialize exploded");
        Ok(Self {
            explode_on_decode: false,
            explode_on_encode: plain.explode_on_encode,
        })
    }
}

/// A response whose `Serialize` panics when it is `Reply(true)`.
#[derive(Debug, Clone, Deserialize)]
struct Reply(bool);

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(!self.0, "Serialize exploded");
        serializer.serialize_bool(false)
    }
}

const CALM: Touchy = Touchy {
    explode_on_decode: false,
    explode_on_encode: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_serialize_or_deserialize_fails_the_job_not_the_dispatcher() {
    let queue: Queue<Touchy, Reply> = Queue::builder("touchy").build().unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn(|req: Touchy| async move {
        Ok::<_, BoxError>(Reply(req.explode_on_encode))
    }));
    // Enough quick jobs that the dispatcher runs them (and encodes their responses) itself.
    for _ in 0..64 {
        let id = svc.clone().oneshot(CALM).await.unwrap();
        assert_eq!(finished(&queue, &id).await.status, JobStatus::Completed);
    }

    let explosive = Touchy {
        explode_on_encode: true,
        ..CALM
    };
    let id = svc.clone().oneshot(explosive).await.unwrap();
    let exploded = finished(&queue, &id).await;
    assert_eq!(exploded.status, JobStatus::Failed, "{exploded:?}");
    let error = exploded.error.unwrap();
    assert!(error.contains("Serialize exploded"), "{error}");

    // A payload whose decoding panics is quarantined, like any undecodable payload.
    let poisoned = Touchy {
        explode_on_decode: true,
        ..CALM
    };
    let id = svc.clone().oneshot(poisoned).await.unwrap();
    let quarantined = finished(&queue, &id).await;
    assert_eq!(quarantined.status, JobStatus::Failed, "{quarantined:?}");
    assert!(quarantined.quarantined);
    assert!(
        quarantined
            .error
            .as_deref()
            .unwrap()
            .contains("Deserialize exploded"),
        "{quarantined:?}"
    );

    // The dispatcher is still there.
    let id = svc.clone().oneshot(CALM).await.unwrap();
    assert_eq!(finished(&queue, &id).await.status, JobStatus::Completed);
}

/// A service that answers with the task it ran on, and whose `poll_ready` panics once a
/// job has asked for it.
#[derive(Clone, Default)]
struct PanicsWhenReady {
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<bool> for PanicsWhenReady {
    type Response = String;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        assert!(
            !self.armed.load(std::sync::atomic::Ordering::SeqCst),
            "poll_ready panicked"
        );
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, arm: bool) -> Self::Future {
        self.armed.store(arm, std::sync::atomic::Ordering::SeqCst);
        // The task that polls the attempt: the dispatcher's when it runs inline.
        Box::pin(async {
            Ok(tokio::task::try_id()
                .expect("jobs run on tasks")
                .to_string())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_ended_inline_is_settled_even_if_the_dispatcher_then_panics() {
    // The dispatcher settles an attempt it ran itself together with taking the next job,
    // after the service's next `poll_ready`. That one panics here: the attempt must still
    // be settled, not left running forever.
    for _ in 0..20 {
        let queue: Queue<bool, String> = Queue::builder("panics-when-ready").build().unwrap();
        let svc = QueueLayer::new(queue.clone()).layer(PanicsWhenReady::default());
        let mut tasks = Vec::new();
        while tasks.len() < 8 || distinct(&tasks[tasks.len() - 8..]) != 1 {
            assert!(tasks.len() < 10_000, "the dispatcher never polled inline");
            let id = svc.clone().oneshot(false).await.unwrap();
            tasks.push(finished(&queue, &id).await.result.unwrap());
        }
        let dispatcher = tasks.last().unwrap().clone();
        let id = svc.clone().oneshot(true).await.unwrap();
        let armed = finished(&queue, &id).await;
        assert_eq!(armed.status, JobStatus::Completed, "{armed:?}");
        if armed.result.as_deref() == Some(dispatcher.as_str()) {
            return; // it ran inline, and was settled after the dispatcher panicked
        }
    }
    panic!("the arming job never ran inline");
}

/// A service answering with its request, whose `poll_ready` lets a set number of calls
/// through and then waits (or panics) until opened again.
#[derive(Clone, Default)]
struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    /// Calls still allowed; `None` while open.
    left: Mutex<(Option<usize>, Option<std::task::Waker>)>,
    /// Panic instead of waiting when no call is left.
    panics: std::sync::atomic::AtomicBool,
    /// Requests in the order they were called.
    calls: Mutex<Vec<u32>>,
}

impl Gate {
    fn allow(&self, calls: Option<usize>) {
        let mut left = self.inner.left.lock().unwrap();
        left.0 = calls;
        if let Some(waker) = left.1.take() {
            waker.wake();
        }
    }
}

impl Service<u32> for Gate {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let mut left = self.inner.left.lock().unwrap();
        if left.0 == Some(0) {
            assert!(
                !self.inner.panics.load(std::sync::atomic::Ordering::SeqCst),
                "poll_ready panicked"
            );
            left.1 = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        if let Some(left) = &mut self.inner.left.lock().unwrap().0 {
            *left = left.saturating_sub(1);
        }
        self.inner.calls.lock().unwrap().push(req);
        std::future::ready(Ok(req))
    }
}

/// Jobs the dispatcher took ahead and did not start are given back to the queue, in
/// order, when the service stops being ready (`panics` false) or the dispatcher dies in
/// `poll_ready` (`panics` true): none stays marked running without running.
async fn jobs_taken_ahead_are_given_back(panics: bool) {
    let gate = Gate::default();
    let queue: Queue<u32, u32> = Queue::builder("gate").workers(4).build().unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(gate.clone());
    // Quick jobs, one at a time, until the dispatcher polls them itself (and takes jobs
    // ahead). `try_id` is the dispatcher's task when a job runs inline.
    let mut warm = 0;
    for _ in 0..200 {
        let id = svc.clone().oneshot(1_000).await.unwrap();
        assert_eq!(finished(&queue, &id).await.status, JobStatus::Completed);
        warm += 1;
    }

    // Shut: the dispatcher waits for readiness holding nothing (one job may still start,
    // on the readiness it saw before it waited for a job).
    gate.allow(Some(0));
    let ids: Vec<JobId> = {
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(svc.clone().oneshot(n).await.unwrap());
        }
        ids
    };
    support::eventually(Duration::from_secs(10), "the dispatcher waits", || async {
        queue.len().await.unwrap() + gate.inner.calls.lock().unwrap().len() == 20 + warm
    })
    .await;
    let before = gate.inner.calls.lock().unwrap().len();

    // Five calls, then shut again (or panic): the dispatcher takes the rest ahead, runs
    // five, and must give the others back when the service is not ready.
    gate.inner
        .panics
        .store(panics, std::sync::atomic::Ordering::SeqCst);
    gate.allow(Some(5));
    support::eventually(Duration::from_secs(10), "five more jobs ran", || async {
        gate.inner.calls.lock().unwrap().len() == before + 5
    })
    .await;
    let rest = 20 + warm - before - 5;
    support::eventually(
        Duration::from_secs(10),
        "the rest are queued again",
        || async {
            queue
                .list(JobStatus::Running, 100)
                .await
                .unwrap()
                .is_empty()
                && queue.len().await.unwrap() == rest
        },
    )
    .await;
    for job in queue.list(JobStatus::Queued, 100).await.unwrap() {
        assert_eq!((job.attempts, job.started_at), (0, None), "{job:?}");
    }
    assert_eq!(queue.info().completed, (before + 5) as u64);

    if panics {
        // The dispatcher is gone; the jobs it gave back stay queued.
        return;
    }
    // Open: every job runs, in the order it was enqueued.
    gate.allow(None);
    for id in &ids {
        assert_eq!(finished(&queue, id).await.status, JobStatus::Completed);
    }
    let calls = gate.inner.calls.lock().unwrap();
    assert_eq!(calls[warm..], (0..20).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_taken_ahead_are_given_back_when_the_service_is_not_ready() {
    jobs_taken_ahead_are_given_back(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_taken_ahead_are_given_back_when_the_dispatcher_panics() {
    jobs_taken_ahead_are_given_back(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_slots_of_jobs_run_inline_come_back() {
    let (queue, svc) = queue_with_capacity(4, Arc::default(), LastTask::default());

    // Far more jobs than the capacity, enqueued back to back: each needs a slot freed by a
    // job the dispatcher ran before, several of them in one store step once it runs them
    // inline. A slot that never comes back shows as a timeout, not a hang.
    let enqueued = tokio::time::timeout(Duration::from_secs(30), async {
        until_inline(&queue, &svc).await;
        let mut svc = svc.clone();
        let mut ids = Vec::new();
        for _ in 0..500 {
            ids.push(svc.ready().await.unwrap().call(Job::Noop).await.unwrap());
        }
        ids
    })
    .await
    .expect("every job got a slot");
    for id in &enqueued {
        assert_eq!(finished(&queue, id).await.status, JobStatus::Completed);
    }
    // Every slot is free again: the queue takes `capacity` jobs without waiting.
    let mut svc = svc.clone();
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(5), svc.ready())
            .await
            .expect("a free slot")
            .unwrap()
            .call(Job::Noop)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_a_job_keeps_stays_its_own_while_later_attempts_run_inline() {
    let last = LastTask::default();
    let (queue, svc) = queue(Arc::default(), last.clone());

    let kept = run_inline(&queue, &svc, &last, Job::Keep).await;
    assert_eq!(kept.status, JobStatus::Completed);
    // Attempts after it run inline too, and reuse whatever the dispatcher can.
    until_inline(&queue, &svc).await;
    run_inline(&queue, &svc, &last, Job::Keep).await;
    until_inline(&queue, &svc).await;

    let kept = KEPT.lock().unwrap().clone();
    assert!(kept.len() >= 2, "{kept:?}");
    for (ctx, id) in &kept {
        assert_eq!(ctx.id(), id, "a kept context was given to another attempt");
        assert_eq!(ctx.attempt(), 1);
    }
    let ids: HashSet<_> = kept.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), kept.len(), "{kept:?}");
}
