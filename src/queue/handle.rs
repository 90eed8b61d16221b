//! The `Queue` handle and the state its services and workers share.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::builder::QueueBuilder;
use super::codec;
use super::error::QueueError;
use super::future::ResponseFuture;
use super::job::{CancelOutcome, JobContext, JobId, JobInfo, JobStatus, Signal};
use super::metrics::QueueMetrics;
use super::store::{JobRecord, MemoryStore, NewJob, Store};

/// A queue of jobs: the handle to read, wait for, list and cancel them, and to shut the
/// queue down.
///
/// Build one with [`Queue::builder`], wrap the service that does the work with
/// [`QueueLayer`](super::QueueLayer), and keep clones of the handle wherever jobs are read.
/// Cloning is cheap; all clones share one queue.
///
/// `Req` is the request type and `Res` the inner service's response type, both stored
/// encoded; `St` is the [`Store`] ([`MemoryStore`] by default). See the
/// [module docs](super) for an example.
pub struct Queue<Req, Res, St = MemoryStore> {
    owner: Arc<Owner<Req, St>>,
    _res: PhantomData<fn() -> Res>,
}

/// Dropped when the last user-facing handle (queue, layer or service) is dropped: the
/// workers then run the jobs still queued and stop, as `tower::buffer::Buffer`'s worker does.
struct Owner<Req, St> {
    core: Arc<Core<Req, St>>,
}

impl<Req, St> Drop for Owner<Req, St> {
    fn drop(&mut self) {
        self.core.tracker.orphaned.set();
    }
}

/// What the handles and the workers share.
pub(crate) struct Core<Req, St> {
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) store: St,
    pub(crate) job_id: Option<JobIdFn<Req>>,
}

pub(crate) type JobIdFn<Req> = Box<dyn Fn(&Req) -> Option<JobId> + Send + Sync>;
pub(crate) type Hook = Box<dyn Fn(&JobId, JobStatus) + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) result_ttl: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) load_shed: bool,
}

/// The part of the shared state that does not depend on the request type or the store:
/// admission, the running jobs, counters, metrics and the change hook.
pub(crate) struct Tracker {
    pub(crate) name: Arc<str>,
    pub(crate) config: Config,
    /// Queue slots (`capacity`). A permit is taken by `poll_ready` and forgotten when the
    /// job is queued; it comes back when the job leaves the queue.
    pub(crate) slots: Arc<Semaphore>,
    /// Slots owed by retries that re-entered a full queue; paid before permits come back.
    slot_debt: AtomicUsize,
    /// Worker slots (`workers`), held by each running attempt.
    pub(crate) workers: Arc<Semaphore>,
    registry: Mutex<Registry>,
    running: AtomicUsize,
    idle: Notify,
    finished: Notify,
    /// `Queue::wait` calls waiting for `finished`: while none is, settling skips the signal.
    waiters: AtomicUsize,
    pub(crate) metrics: QueueMetrics,
    counts: Counts,
    queued: AtomicI64,
    pub(crate) closed: Signal,
    pub(crate) orphaned: Signal,
    hook: Option<Hook>,
    pub(crate) runtime: Handle,
    pub(crate) dispatchers: Mutex<Vec<JoinHandle<()>>>,
    /// The store is shared with other processes (its leases expire): jobs this process
    /// enqueues may start elsewhere, so a queue slot is held only while the enqueue is in
    /// flight, and `capacity` bounds this process's enqueues in flight.
    pub(crate) shared: bool,
    /// Whether the lease-recovery task was started (once per queue).
    pub(crate) recovering: std::sync::atomic::AtomicBool,
    /// The workers' store-failure warnings: one per 10 s, so that an outage of a shared
    /// store logs a line every few seconds, not one per retry (each is still counted).
    pub(crate) store_warnings: crate::redis::throttle::Throttle,
}

#[derive(Default)]
struct Registry {
    /// foldhash, as the memory store's index: SipHash was a visible share of each job.
    running: HashMap<JobId, JobContext, foldhash::fast::RandomState>,
    /// Cancellations requested for a job the store says is running but which is not (yet)
    /// registered: a worker took it a moment ago, or it runs in another process.
    pending_cancels: Vec<(JobId, std::time::Instant)>,
}

/// How long a pending cancellation waits for its job to be registered here.
const PENDING_CANCEL_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counts {
    enqueued: AtomicU64,
    deduplicated: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    quarantined: AtomicU64,
    retried: AtomicU64,
    cancelled: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Tracker {
    pub(crate) fn new(
        name: Arc<str>,
        config: Config,
        hook: Option<Hook>,
        runtime: Handle,
        shared: bool,
    ) -> Self {
        Self {
            metrics: QueueMetrics::new(&name),
            slots: Arc::new(Semaphore::new(config.capacity)),
            workers: Arc::new(Semaphore::new(config.workers)),
            name,
            config,
            slot_debt: AtomicUsize::new(0),
            registry: Mutex::default(),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            finished: Notify::new(),
            waiters: AtomicUsize::new(0),
            counts: Counts::default(),
            queued: AtomicI64::new(0),
            closed: Signal::new(),
            orphaned: Signal::new(),
            hook,
            runtime,
            dispatchers: Mutex::default(),
            shared,
            recovering: std::sync::atomic::AtomicBool::new(false),
            store_warnings: crate::redis::throttle::Throttle::new(Duration::from_secs(10)),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent after every statement that could panic.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls the change hook; a panicking hook is logged, never propagated into a worker.
    fn changed(&self, id: &JobId, status: JobStatus) {
        if let Some(hook) = &self.hook {
            if catch_unwind(AssertUnwindSafe(|| hook(id, status))).is_err() {
                tracing::warn!(queue = %self.name, job = %id, "the queue's on_change hook panicked");
            }
        }
    }

    fn add_queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Ordering::Relaxed);
        self.metrics.depth.increment(delta as f64);
    }

    /// Jobs left the queue (started or were cancelled): their slots are free again, once
    /// the slots owed by retries are paid.
    pub(crate) fn release_slots(&self, jobs: usize) {
        if self.shared {
            return;
        }
        let mut debt = self.slot_debt.load(Ordering::Relaxed);
        let paid = loop {
            let paid = debt.min(jobs);
            if paid == 0 {
                break 0;
            }
            match self.slot_debt.compare_exchange_weak(
                debt,
                debt - paid,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break paid,
                Err(actual) => debt = actual,
            }
        };
        if jobs > paid {
            self.slots.add_permits(jobs - paid);
        }
    }

    /// A retry re-entered the queue: it takes a slot, or owes one if the queue is full (a
    /// finishing attempt must never wait for room).
    fn take_slot_for_retry(&self) {
        if self.shared {
            return;
        }
        match self.slots.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.slot_debt.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn enqueued(&self, id: &JobId) {
        bump(&self.counts.enqueued);
        self.metrics.enqueued.increment(1);
        self.add_queued(1);
        self.changed(id, JobStatus::Queued);
    }

    pub(crate) fn deduplicated(&self) {
        bump(&self.counts.deduplicated);
        self.metrics.deduplicated.increment(1);
    }

    /// A worker took a job out of the queue and started an attempt. The job's queue slot
    /// is released by the dispatcher, several at a time
    /// ([`release_slots`](Self::release_slots)).
    pub(crate) fn started(&self, id: &JobId, attempt: u32, waited: Option<Duration>) {
        self.add_queued(-1);
        if attempt == 1 {
            if let Some(waited) = waited {
                self.metrics.wait.record(waited.as_secs_f64());
            }
        }
        self.changed(id, JobStatus::Running);
    }

    pub(crate) fn progressed(&self, id: &JobId) {
        self.changed(id, JobStatus::Running);
    }

    /// An attempt was settled into `status`.
    pub(crate) fn settled(&self, id: &JobId, status: JobStatus, quarantined: bool) {
        match status {
            JobStatus::Queued => {
                bump(&self.counts.retried);
                self.metrics.retried.increment(1);
                self.take_slot_for_retry();
                self.add_queued(1);
            }
            JobStatus::Completed => {
                bump(&self.counts.completed);
                self.metrics.completed.increment(1);
            }
            JobStatus::Failed if quarantined => {
                bump(&self.counts.quarantined);
                self.metrics.quarantined.increment(1);
            }
            JobStatus::Failed => {
                bump(&self.counts.failed);
                self.metrics.failed.increment(1);
            }
            JobStatus::Cancelled => {
                bump(&self.counts.cancelled);
                self.metrics.cancelled.increment(1);
            }
            JobStatus::Running => {}
        }
        self.changed(id, status);
        // SeqCst pairs with `Queue::wait`: either this sees its `waiters` increment, or its
        // next look at the store sees the job finished.
        if status.is_finished() && self.waiters.load(Ordering::SeqCst) > 0 {
            self.finished.notify_waiters();
        }
    }

    /// A job stopped by this process's shutdown went back to a shared store's queue.
    pub(crate) fn requeued(&self, id: &JobId) {
        self.add_queued(1);
        self.changed(id, JobStatus::Queued);
    }

    /// A queued job was cancelled before it ran.
    pub(crate) fn cancelled_queued(&self, id: &JobId) {
        self.release_slots(1);
        self.add_queued(-1);
        self.settled(id, JobStatus::Cancelled, false);
    }

    pub(crate) fn recovered(&self, jobs: usize) {
        self.metrics.recovered.increment(jobs as u64);
    }

    /// Jobs whose workers died during each of their attempts failed in a recovery.
    pub(crate) fn failed_in_recovery(&self, jobs: usize) {
        self.counts.failed.fetch_add(jobs as u64, Ordering::Relaxed);
        self.metrics.failed.increment(jobs as u64);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.finished.notify_waiters();
        }
    }

    pub(crate) fn register(&self, ctx: &JobContext) {
        let mut registry = self.registry();
        if !registry.pending_cancels.is_empty() {
            if let Some(pos) = registry
                .pending_cancels
                .iter()
                .position(|(id, _)| id == ctx.id())
            {
                registry.pending_cancels.swap_remove(pos);
                ctx.cancel();
            }
        }
        registry.running.insert(ctx.id().clone(), ctx.clone());
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unregister(&self, ctx: &JobContext) {
        let mut registry = self.registry();
        // Only remove our own entry: a newer attempt of the same job may have replaced it.
        if registry
            .running
            .get(ctx.id())
            .is_some_and(|registered| registered.same(ctx))
        {
            registry.running.remove(ctx.id());
        }
        let idle = registry.running.is_empty();
        drop(registry);
        self.running.fetch_sub(1, Ordering::Relaxed);
        if idle {
            self.idle.notify_waiters();
        }
    }

    /// Asks the job's running attempt in this process to stop.
    fn signal_cancel(&self, id: &JobId) {
        let mut registry = self.registry();
        if let Some(ctx) = registry.running.get(id) {
            ctx.cancel();
            return;
        }
        let now = std::time::Instant::now();
        registry
            .pending_cancels
            .retain(|(_, at)| now.duration_since(*at) < PENDING_CANCEL_TTL);
        registry.pending_cancels.push((id.clone(), now));
    }

    /// Another process asked a job to stop: if it runs here, it is told at once (its next
    /// renewal would tell it too).
    pub(crate) fn cancel_if_running(&self, id: &JobId) {
        if let Some(ctx) = self.registry().running.get(id) {
            ctx.cancel();
        }
    }

    /// Attempts running in this process.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn running_jobs(&self) -> Vec<JobContext> {
        self.registry().running.values().cloned().collect()
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.registry().running.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn close(&self) {
        self.closed.set();
        self.slots.close();
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<Req, Res> Queue<Req, Res, MemoryStore> {
    /// Starts building a queue named `name` (the `queue` label of its metrics), with an
    /// in-process [`MemoryStore`] unless [`QueueBuilder::store`] says otherwise.
    pub fn builder(name: impl Into<String>) -> QueueBuilder<Req, Res, MemoryStore> {
        QueueBuilder::new(name.into())
    }
}

impl<Req, Res, St> Queue<Req, Res, St> {
    pub(crate) fn from_core(core: Core<Req, St>) -> Self {
        Self {
            owner: Arc::new(Owner {
                core: Arc::new(core),
            }),
            _res: PhantomData,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core<Req, St>> {
        &self.owner.core
    }

    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.owner.core.tracker
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.tracker().name
    }

    /// The store, for inspection (for example a quarantined job's payload).
    pub fn store(&self) -> &St {
        &self.owner.core.store
    }

    /// A snapshot of this process's view of the queue: configuration, queued and running
    /// jobs, and event counts since the queue was built. It reads only atomics and never
    /// touches the store (see [`len`](Self::len) for the store's count).
    pub fn info(&self) -> QueueInfo {
        let tracker = self.tracker();
        let counts = &tracker.counts;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueInfo {
            name: tracker.name.to_string(),
            workers: tracker.config.workers,
            capacity: tracker.config.capacity,
            queued: usize::try_from(tracker.queued.load(Ordering::Relaxed)).unwrap_or(0),
            running: tracker.running.load(Ordering::Relaxed),
            closed: tracker.closed.is_set(),
            enqueued: load(&counts.enqueued),
            deduplicated: load(&counts.deduplicated),
            completed: load(&counts.completed),
            failed: load(&counts.failed),
            quarantined: load(&counts.quarantined),
            retried: load(&counts.retried),
            cancelled: load(&counts.cancelled),
        }
    }
}

impl<Req: serde::Serialize, Res, St: Store> Queue<Req, Res, St> {
    /// Enqueues `req` as a job and returns its id once the store has it, as the
    /// [`QueueLayer`](super::QueueLayer)'s service does (a producer needs no layer): it
    /// waits for a queue slot ([`capacity`](super::QueueBuilder::capacity)), or with
    /// [`load_shed`](super::QueueBuilder::load_shed) fails at once when none is free.
    ///
    /// # Errors
    /// A [`QueueError`]: shut down, overloaded, the request could not be encoded, or the
    /// store failed (Redis unreachable: within its command budget).
    pub async fn enqueue(&self, req: Req) -> Result<JobId, QueueError> {
        self.enqueue_not_before(req, None).await
    }

    /// Enqueues `req` to start once `delay` has passed (in the store: with Redis the
    /// delay survives restarts and any worker may run it).
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_in(&self, req: Req, delay: Duration) -> Result<JobId, QueueError> {
        let at = std::time::SystemTime::now() + delay;
        self.enqueue_not_before(req, Some(at)).await
    }

    /// Enqueues `req` to start at `time` (at once if it has passed).
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_at(
        &self,
        req: Req,
        time: std::time::SystemTime,
    ) -> Result<JobId, QueueError> {
        self.enqueue_not_before(req, Some(time)).await
    }

    async fn enqueue_not_before(
        &self,
        req: Req,
        not_before: Option<std::time::SystemTime>,
    ) -> Result<JobId, QueueError> {
        let slots = self.tracker().slots.clone();
        let permit = if self.tracker().config.load_shed {
            match slots.try_acquire_owned() {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return Err(QueueError::overloaded())
                }
                Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::closed()),
            }
        } else {
            slots
                .acquire_owned()
                .await
                .map_err(|_| QueueError::closed())?
        };
        self.submit(req, permit, not_before).await
    }

    /// Encodes `req` and hands it to the store, holding `permit` (its queue slot).
    pub(crate) fn submit(
        &self,
        req: Req,
        permit: tokio::sync::OwnedSemaphorePermit,
        not_before: Option<std::time::SystemTime>,
    ) -> ResponseFuture<St::EnqueueFuture> {
        let tracker = self.tracker();
        if tracker.closed.is_set() {
            return ResponseFuture::done(Err(QueueError::closed()));
        }
        let core = self.core();
        let chosen = core.job_id.as_ref().and_then(|job_id| job_id(&req));
        let payload = match codec::encode(&req) {
            Ok(payload) => payload,
            Err(err) => return ResponseFuture::done(Err(QueueError::encode(err))),
        };
        let mut job = match chosen {
            Some(id) => NewJob::new(id, payload),
            None => NewJob::new(JobId::random(), payload).with_generated_id(),
        };
        if let Some(time) = not_before {
            job = job.not_before(time);
        }
        let id = job.id.clone();
        let fut = core.store.enqueue(job);
        ResponseFuture::enqueue(fut, id, tracker.clone(), permit)
    }
}

impl<Req, Res, St: Store> Queue<Req, Res, St> {
    /// How many jobs are queued in the store.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn len(&self) -> Result<usize, QueueError> {
        Ok(self.store().queued().await?)
    }

    /// Whether no job is queued in the store.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len().await? == 0)
    }

    /// Cancels a job.
    ///
    /// A queued job is cancelled at once and never runs. A running job is asked to stop
    /// ([`JobContext::cancelled`]); if it has not stopped after the
    /// [cancel grace period](super::QueueBuilder::cancel_grace), its future is dropped. Either
    /// way it ends as [`JobStatus::Cancelled`]; this method does not wait for that (use
    /// [`wait`](Self::wait)). A finished job is left alone and reported as
    /// [`CancelOutcome::AlreadyFinished`]; an unknown id as [`CancelOutcome::NotFound`].
    ///
    /// # Errors
    /// When the store fails.
    pub async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, QueueError> {
        let tracker = self.tracker();
        let outcome = self.store().cancel(id, tracker.config.result_ttl).await?;
        match outcome {
            CancelOutcome::Cancelled => tracker.cancelled_queued(id),
            CancelOutcome::Stopping => tracker.signal_cancel(id),
            CancelOutcome::AlreadyFinished(_) | CancelOutcome::NotFound => {}
        }
        Ok(outcome)
    }

    /// Removes every failed job (quarantined ones included) and returns how many.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn clear_failed(&self) -> Result<usize, QueueError> {
        Ok(self.store().clear(JobStatus::Failed).await?)
    }

    /// Shuts the queue down: stops accepting jobs (`poll_ready` then fails with
    /// [`QueueError::is_closed`]), stops starting jobs, lets running jobs finish for up to
    /// `timeout`, then stops the rest (their [`JobContext`] is cancelled and their futures
    /// dropped) and waits for them to be recorded as cancelled.
    ///
    /// Jobs still queued are not dropped silently: they stay queued in the store and are
    /// listed in the report (with a persistent store, another process can run them). With
    /// a store shared by other workers, the stopped jobs go back to the queue instead of
    /// ending cancelled.
    /// Calling it again reports the state at that time.
    ///
    /// A stopped job's future is dropped at its next poll; one that blocks its thread
    /// without ever yielding cannot be stopped (as with any Tokio task), and shutdown then
    /// waits for it.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let tracker = self.tracker();
        let deadline = tokio::time::Instant::now() + timeout;
        tracker.close();

        // Stop the dispatchers (safe at any of their `.await`s); once they have stopped,
        // every started job is registered, so the registry lists every running job.
        let dispatchers = std::mem::take(
            &mut *tracker
                .dispatchers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for dispatcher in dispatchers {
            dispatcher.abort();
            let _ = dispatcher.await;
        }

        let running_at_close = tracker.running.load(Ordering::Relaxed);
        let mut cancelled = Vec::new();
        if tokio::time::timeout_at(deadline, tracker.wait_idle())
            .await
            .is_err()
        {
            for ctx in tracker.running_jobs() {
                ctx.abort();
                cancelled.push(ctx.id().clone());
            }
            // Aborted attempts stop at their next poll and record the cancellation.
            tracker.wait_idle().await;
        }

        let queued = match self.store().list(JobStatus::Queued, usize::MAX).await {
            Ok(records) => records.into_iter().map(|r| r.id).collect(),
            Err(err) => {
                tracing::warn!(queue = %tracker.name, error = %err, "shutdown could not list the queued jobs");
                Vec::new()
            }
        };
        ShutdownReport {
            finished: running_at_close.saturating_sub(cancelled.len()),
            cancelled,
            queued,
        }
    }
}

impl<Req, Res, St> Queue<Req, Res, St>
where
    Res: DeserializeOwned,
    St: Store,
{
    /// The job with this id, or `None` if there is none (never existed, or its record
    /// expired after the result TTL).
    ///
    /// # Errors
    /// When the store fails, or the stored result cannot be decoded as `Res`.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobInfo<Res>>, QueueError> {
        match self.store().get(id).await? {
            Some(record) => Ok(Some(info(record)?)),
            None => Ok(None),
        }
    }

    /// Waits until the job has finished and returns it, or `None` if there is no such job.
    ///
    /// It wakes when a worker of this process settles a job; with a store whose leases
    /// expire (shared with other processes) it also looks every 500 ms.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn wait(&self, id: &JobId) -> Result<Option<JobInfo<Res>>, QueueError> {
        let poll = self
            .store()
            .lease_duration()
            .map(|_| Duration::from_millis(500));
        let tracker = self.tracker();
        tracker.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiter(&tracker.waiters);
        loop {
            let notified = tracker.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.job(id).await? {
                Some(job) if !job.status.is_finished() => {}
                done => return Ok(done),
            }
            match poll {
                Some(every) => {
                    let _ = tokio::time::timeout(every, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Up to `limit` jobs with this status, most recently enqueued first.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn list(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> Result<Vec<JobInfo<Res>>, QueueError> {
        self.store()
            .list(status, limit)
            .await?
            .into_iter()
            .map(info)
            .collect()
    }
}

/// Counts a waiting `Queue::wait` until it returns or is dropped.
struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn info<Res: DeserializeOwned>(record: JobRecord) -> Result<JobInfo<Res>, QueueError> {
    let result = match &record.result {
        Some(bytes) => Some(codec::decode(bytes).map_err(QueueError::decode)?),
        None => None,
    };
    Ok(JobInfo {
        id: record.id,
        status: record.status,
        attempts: record.attempts,
        enqueued_at: record.enqueued_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        progress: record.progress,
        result,
        error: record.error,
        quarantined: record.quarantined,
    })
}

impl<Req, Res, St> Clone for Queue<Req, Res, St> {
    fn clone(&self) -> Self {
        Self {
            owner: self.owner.clone(),
            _res: PhantomData,
        }
    }
}

impl<Req, Res, St> fmt::Debug for Queue<Req, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracker = self.tracker();
        f.debug_struct("Queue")
            .field("name", &tracker.name)
            .field("config", &tracker.config)
            .finish()
    }
}

/// A snapshot of a queue, from [`Queue::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// How many jobs run at once, at most.
    pub workers: usize,
    /// How many jobs may be queued before `poll_ready` is `Pending`.
    pub capacity: usize,
    /// Jobs queued by this process and not started yet (first attempts and retries).
    pub queued: usize,
    /// Attempts running in this process.
    pub running: usize,
    /// Whether [`Queue::shutdown`] was called.
    pub closed: bool,
    /// New jobs enqueued.
    pub enqueued: u64,
    /// Enqueues that found the job already queued or running.
    pub deduplicated: u64,
    /// Jobs completed by this process's workers.
    pub completed: u64,
    /// Jobs failed by this process's workers (after their last attempt, or permanently).
    pub failed: u64,
    /// Jobs failed because their payload could not be decoded.
    pub quarantined: u64,
    /// Attempts that failed and were queued for a retry.
    pub retried: u64,
    /// Jobs cancelled (queued or running).
    pub cancelled: u64,
}

/// What [`Queue::shutdown`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that were running when the queue closed and settled before the deadline
    /// (completed, failed, or queued for a retry).
    pub finished: usize,
    /// Jobs still running at the deadline, which were stopped: now cancelled, or, with a
    /// store shared by other workers ([`RedisStore`](super::store::RedisStore)), back at
    /// the front of the queue for one of them (unless their cancellation was requested).
    pub cancelled: Vec<JobId>,
    /// Jobs left queued in the store (with a shared store, the stopped jobs too).
    pub queued: Vec<JobId>,
}
