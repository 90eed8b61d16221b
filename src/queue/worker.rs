//! The workers: one dispatcher task per wrapped service, which runs attempts that finish at
//! once itself and gives every other attempt a task of its own.
//!
//! The dispatcher owns the inner service. For each job it takes a worker slot, waits for the
//! service to be ready (before taking a job, so no job is held while the service is busy),
//! dequeues a job, decodes it, and calls the service inside the job's task-local context.
//! That keeps Tower's readiness contract (one service, `poll_ready` before each `call`)
//! without requiring `S: Clone`, like `tower::buffer`'s worker, while attempts run
//! concurrently up to `workers`.
//!
//! The response future then either gets a task of its own, or, once the queue's attempts
//! have proven quick (see [`FirstPolls`]), is polled once by the dispatcher and gets a task
//! only if it is still pending. While attempts are quick, the dispatcher takes up to
//! [`TAKE_AHEAD`] jobs per store step and settles the attempts that ended inline in the
//! same step ([`Store::settle_then_dequeue`]); see [`Held`]. An attempt task drives the
//! future, catches its panic, watches for cancellation, writes progress, renews the lease
//! when the store's leases expire, and settles the job. Before the dispatcher awaits
//! anything but the store, it settles what ended and gives back the jobs it took ahead
//! ([`Settlement::Release`]), so no job waits in it; shutdown can abort it at any
//! `.await`, and the [`Held`] guard then sends what it still holds.

use std::any::Any;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio::task::futures::TaskLocalFuture;
use tower_service::Service;

use super::codec;
use super::error::{error_chain, Permanent};
use super::handle::{Core, Tracker};
use super::job::{JobContext, JobStatus};
use super::store::{Lease, LeaseState, Settled, Settlement, Store};
use crate::BoxError;

/// How long one `dequeue` waits before the dispatcher looks around again.
const DEQUEUE_WAIT: Duration = Duration::from_secs(30);
/// How often a dispatcher whose handles are all gone looks for the last jobs.
const ORPHAN_POLL: Duration = Duration::from_millis(50);
/// How many jobs the dispatcher takes in one store step while attempts finish inline.
const TAKE_AHEAD: usize = 32;
/// The pause after a store error before the dispatcher tries again.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// How often a failed settlement is tried again with a shared store (each after
/// [`STORE_ERROR_PAUSE`]): 2 s, the shortest lease, in all.
const SETTLE_RETRIES: usize = 4;

/// Starts a dispatcher for `service` on the queue's runtime.
pub(crate) fn spawn<S, Req, St>(core: Arc<Core<Req, St>>, service: S)
where
    S: Service<Req> + Send + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    St: Store,
{
    let tracker = core.tracker.clone();
    let recovery = match core.store.lease_duration() {
        Some(lease) if !tracker.recovering.swap(true, Ordering::AcqRel) => {
            let watcher = Arc::downgrade(&tracker);
            let _entered = tracker.runtime.enter();
            core.store.watch_cancellations(Arc::new(move |id| {
                if let Some(tracker) = watcher.upgrade() {
                    tracker.cancel_if_running(id);
                }
            }));
            Some(
                tracker
                    .runtime
                    .spawn(recover_expired(Arc::downgrade(&core), lease)),
            )
        }
        _ => None,
    };
    let dispatcher = tracker.runtime.spawn(dispatch(core, service));
    let mut dispatchers = tracker
        .dispatchers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // `shutdown` sets `closed` before it takes the list: either it takes these tasks and
    // aborts them, or this sees `closed`.
    for task in std::iter::once(dispatcher).chain(recovery) {
        if tracker.closed.is_set() {
            task.abort();
        } else {
            dispatchers.push(task);
        }
    }
}

/// For stores whose leases expire: requeues, every quarter lease (at most every second),
/// the jobs of workers that died, in this process or another. Runs while the queue does;
/// it holds no job and is safe to abort at any `.await`.
async fn recover_expired<Req, St: Store>(core: std::sync::Weak<Core<Req, St>>, lease: Duration) {
    let every = (lease / 4).min(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(core) = core.upgrade() else { return };
        let tracker = &core.tracker;
        if tracker.closed.is_set() {
            return;
        }
        let config = &tracker.config;
        match core
            .store
            .recover(config.max_attempts, config.result_ttl)
            .await
        {
            Ok(recovered) => {
                if recovered.requeued > 0 {
                    let jobs = recovered.requeued;
                    tracing::info!(queue = %tracker.name, jobs, "requeued jobs whose worker stopped renewing their lease");
                    tracker.recovered(jobs);
                }
                if recovered.failed > 0 {
                    let jobs = recovered.failed;
                    tracing::warn!(queue = %tracker.name, jobs, "failed jobs whose worker stopped renewing their lease during every attempt");
                    tracker.failed_in_recovery(jobs);
                }
            }
            Err(err) => {
                tracker.metrics.store_errors.recover.increment(1);
                if let Some(held_back) = tracker.store_warnings.allow() {
                    tracing::warn!(queue = %tracker.name, error = %error_chain(&err), held_back, "lease recovery failed");
                }
            }
        }
    }
}

/// How the dispatcher starts attempts: inline or on their own task.
///
/// Most jobs of a queue either finish in their first poll (a no-op, a cache hit, a small
/// computation) or wait on I/O at once. For those, a task per attempt costs more than the
/// job: spawning, waking an idle runtime thread, and settling from another thread. So the
/// dispatcher polls a new attempt once itself and spawns it only if it is still pending.
///
/// A job that computes for a long time in its first poll would hold up the dispatcher (and
/// run the queue's jobs one after another). So inline polling is earned: it starts after
/// [`FirstPolls::NEEDED`] attempts in a row whose first poll (with the service's `call`)
/// took at most [`FirstPolls::FAST`], and one slower first poll, inline or on a task, ends
/// it until the streak is rebuilt. A queue of CPU-heavy jobs thus gets a task per attempt,
/// and its jobs run in parallel on the runtime's threads.
#[derive(Debug, Default)]
struct FirstPolls {
    streak: AtomicU32,
}

impl FirstPolls {
    /// Fast first polls in a row before the dispatcher polls attempts itself.
    const NEEDED: u32 = 32;
    /// The longest first poll that counts as fast.
    const FAST: Duration = Duration::from_micros(100);

    fn inline(&self) -> bool {
        self.streak.load(Ordering::Relaxed) >= Self::NEEDED
    }

    fn record(&self, took: Duration) {
        // Written only when it changes: once earned, the streak is read, not written.
        let streak = self.streak.load(Ordering::Relaxed);
        if took > Self::FAST {
            if streak != 0 {
                self.streak.store(0, Ordering::Relaxed);
            }
        } else if streak < Self::NEEDED {
            self.streak.store(streak + 1, Ordering::Relaxed);
        }
    }
}

/// What an attempt holds from start to settlement.
struct Attempt {
    lease: Lease,
    ctx: JobContext,
    /// When the attempt started (just before its request is decoded, or when the attempt
    /// before it ended inline): the start of the `run_seconds` measurement.
    started: Instant,
    /// The worker slot, freed when the attempt is settled (or handed to the next job).
    worker: OwnedSemaphorePermit,
}

/// Jobs the dispatcher holds between store steps: attempts it ran itself that ended and
/// are not settled yet, and jobs it took ahead and has not started.
///
/// Both go to the store in the next [`Store::settle_then_dequeue`], which takes the next
/// jobs in the same step. Before the dispatcher waits for anything (a worker slot, the
/// service's readiness, the store) it sends them with [`flush`](Self::flush): settled, and
/// the jobs it took ahead given back ([`Settlement::Release`]) to the front of the queue,
/// so that no job waits in the dispatcher. Should the dispatcher stop first (aborted at
/// shutdown, or a panic in the service's `poll_ready`), dropping this sends them.
///
/// An attempt that ended inline is thus recorded once the jobs taken with it have been
/// started: at most [`TAKE_AHEAD`] quick first polls later (each at most
/// [`FirstPolls::FAST`], or inline polling ends), a few µs for no-op jobs.
struct Held<Req: Send + 'static, St: Store> {
    core: Arc<Core<Req, St>>,
    /// Settlements to send, in order: ended attempts, then jobs given back.
    ended: Vec<(Lease, Settlement)>,
    /// Taken, not started: oldest first.
    ahead: VecDeque<Lease>,
    /// Jobs started whose queue slots are not released yet: released at the next store
    /// step or before any wait, in one go ([`Tracker::release_slots`]).
    started: usize,
}

impl<Req: Send + 'static, St: Store> Held<Req, St> {
    fn new(core: Arc<Core<Req, St>>) -> Self {
        Self {
            core,
            ended: Vec::new(),
            ahead: VecDeque::new(),
            started: 0,
        }
    }

    /// Releases the queue slots of the jobs started since the last release.
    fn release_slots(&mut self) {
        if self.started > 0 {
            self.core
                .tracker
                .release_slots(std::mem::take(&mut self.started));
        }
    }

    /// The next job taken ahead, else the next due job from the store, taking up to `max`
    /// at once; what ended goes to the store in the same step.
    async fn next(&mut self, max: usize) -> Option<Lease> {
        if let Some(lease) = self.ahead.pop_front() {
            return Some(lease);
        }
        self.exchange(max).await;
        self.ahead.pop_front()
    }

    /// Settles what ended and gives back what was taken ahead, before the dispatcher waits.
    async fn flush(&mut self) {
        self.release_slots();
        if !self.ended.is_empty() || !self.ahead.is_empty() {
            self.exchange(0).await;
        }
    }

    /// One store step: sends `ended` and the jobs taken ahead, takes up to `max` jobs.
    async fn exchange(&mut self, max: usize) {
        self.release_slots();
        self.give_back();
        let ttl = self.core.tracker.config.result_ttl;
        let (settled, taken) = self
            .core
            .store
            .settle_then_dequeue(&self.ended, ttl, max)
            .await;
        self.report(settled);
        match taken {
            Ok(taken) => self.ahead.extend(taken),
            Err(err) => {
                let tracker = &self.core.tracker;
                tracker.metrics.store_errors.take.increment(1);
                if let Some(held_back) = tracker.store_warnings.allow() {
                    tracing::warn!(queue = %tracker.name, error = %error_chain(&err), held_back, "dequeue failed");
                }
            }
        }
    }

    /// Moves the jobs taken ahead to the settlements, as given back: in reverse, so that
    /// each going to the front of the queue keeps their order.
    fn give_back(&mut self) {
        while let Some(lease) = self.ahead.pop_back() {
            self.ended.push((lease, Settlement::Release));
        }
    }

    fn report(&mut self, settled: Vec<Result<Settled, super::store::StoreError>>) {
        let mut settled = settled.into_iter();
        for (lease, settlement) in self.ended.drain(..) {
            let result = settled.next().unwrap_or(Ok(Settled::Stale));
            if matches!(settlement, Settlement::Release) {
                // The tracker never saw it start: given back, it is still queued; if its
                // cancellation was requested meanwhile, it was cancelled without running.
                if let Ok(Settled::Applied(JobStatus::Cancelled)) = result {
                    self.core.tracker.cancelled_queued(lease.id());
                }
            } else {
                report(&self.core, &lease, result, false);
            }
        }
    }
}

impl<Req: Send + 'static, St: Store> Drop for Held<Req, St> {
    fn drop(&mut self) {
        self.release_slots();
        self.give_back();
        let Some((first, _)) = self.ended.first() else {
            return;
        };
        let (id, attempt) = (first.id().clone(), first.attempt());
        // Settled at once when the store answers at once (the memory store does), else
        // on a task registered as running, so that shutdown waits for it.
        let mut held = Held {
            core: self.core.clone(),
            ended: std::mem::take(&mut self.ended),
            ahead: VecDeque::new(),
            started: 0,
        };
        let mut sending = Box::pin(async move { held.flush().await });
        if sending
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
            .is_pending()
        {
            spawn_registered(&self.core.tracker, JobContext::new(id, attempt), sending);
        }
    }
}

/// The job's future, in its task-local scope, with panics caught. Boxed so that it can move
/// to a task of its own after the dispatcher polled it once; the dispatcher reuses the box
/// of an attempt that ended in that poll.
type Running<F> = Pin<Box<CatchUnwind<TaskLocalFuture<JobContext, F>>>>;

/// The dispatcher loop.
///
/// Shutdown aborts it, which is safe at each of its `.await`s: waiting for a worker slot or
/// for readiness holds no job, and `Store::dequeue` and `Store::recover` are cancel-safe.
/// Between taking a job and either settling it or spawning its attempt there is no `.await`.
/// So the hot path needs no `select!`: each step tries the non-blocking way first.
async fn dispatch<S, Req, St>(core: Arc<Core<Req, St>>, mut service: S)
where
    S: Service<Req> + Send + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    St: Store,
{
    let tracker = &core.tracker;
    let first_polls = Arc::new(FirstPolls::default());
    let mut held = Held::new(core.clone());
    // The worker slot of the last attempt, when it ended inline: the next job takes it.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    // The box and the context of the last attempt that ended inline, for the next one.
    let mut spare_box: Option<Running<S::Future>> = None;
    let mut spare_ctx: Option<JobContext> = None;
    // When the last inline poll ended, while the dispatcher has not waited since: the next
    // attempt's start, which saves a clock read per attempt. The dispatcher's bookkeeping
    // between the two attempts (recording the last one's end, the `on_change` hook of the
    // next one's start, decoding its request) is then counted in the next one's run time.
    let mut last_end: Option<Instant> = None;
    loop {
        let permit = match slot.take() {
            Some(permit) => permit,
            None => match tracker.workers.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => {
                    last_end = None;
                    held.flush().await;
                    match tracker.workers.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    }
                }
            },
        };

        // Ready at once, or flush and wait. A failed `poll_ready` stops the dispatcher;
        // dropping `held` settles and gives back what it holds.
        let ready = match poll_fn(|cx| Poll::Ready(service.poll_ready(cx))).await {
            Poll::Ready(ready) => ready,
            Poll::Pending => {
                last_end = None;
                held.flush().await;
                poll_fn(|cx| service.poll_ready(cx)).await
            }
        };
        if let Err(err) = ready {
            stopped(tracker, err.into());
            return;
        }

        // Quick attempts take jobs ahead, several per store step.
        let ahead = if first_polls.inline() { TAKE_AHEAD } else { 1 };
        if held.ahead.is_empty() {
            // A store step (or a wait) comes first: it is not the next attempt's time.
            last_end = None;
        }
        let lease = match held.next(ahead).await {
            Some(lease) => lease,
            None => match next_job(&core).await {
                Some(lease) => lease,
                None => return,
            },
        };

        let waited = lease
            .started_at()
            .unwrap_or_else(SystemTime::now)
            .duration_since(lease.enqueued_at())
            .ok();
        tracker.started(lease.id(), lease.attempt(), waited);
        held.started += 1;
        let attempt = Attempt {
            ctx: match spare_ctx.take() {
                Some(ctx) => ctx.reuse(lease.id().clone(), lease.attempt(), lease.generation()),
                None => JobContext::with_generation(
                    lease.id().clone(),
                    lease.attempt(),
                    lease.generation(),
                ),
            },
            lease,
            started: last_end.take().unwrap_or_else(Instant::now),
            worker: permit,
        };
        // The request's `Deserialize` is the application's code: a panic in it quarantines
        // the job instead of stopping the dispatcher.
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            codec::decode::<Req>(attempt.lease.payload())
        }))
        .unwrap_or_else(|panic| {
            let message = format!("panicked: {}", panic_message(&*panic));
            Err(serde::de::Error::custom(message))
        });
        let req = match decoded {
            Ok(req) => req,
            Err(err) => {
                let error = format!("payload could not be decoded: {err}");
                finish(&core, attempt, Settlement::Quarantine(error), true);
                continue;
            }
        };
        let called = catch_unwind(AssertUnwindSafe(|| {
            attempt.ctx.sync_scope(|| service.call(req))
        }));
        let fut = match called {
            Ok(fut) => fut,
            Err(panic) => {
                let outcome = Outcome::<S::Response, S::Error>::Panicked(panic_message(&*panic));
                let ran = attempt.started.elapsed();
                if let Some(settlement) = conclude(&core, &attempt, outcome, ran) {
                    finish(&core, attempt, settlement, false);
                }
                continue;
            }
        };
        let fut = attempt.ctx.scope(fut);
        let mut fut: Running<S::Future> = match spare_box.take() {
            Some(mut boxed) => {
                boxed.as_mut().project().inner.set(Some(fut));
                boxed
            }
            None => Box::pin(CatchUnwind { inner: Some(fut) }),
        };
        if !first_polls.inline() {
            spawn_attempt(&core, attempt, fut, Some(first_polls.clone()));
            continue;
        }
        let polled = fut
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
        let end = Instant::now();
        let ran = end.saturating_duration_since(attempt.started);
        first_polls.record(ran);
        last_end = Some(end);
        match polled {
            Poll::Pending => spawn_attempt(&core, attempt, fut, None),
            Poll::Ready(out) => {
                // The future is dropped now; its box and (unless the job kept a clone) its
                // context serve the next attempt.
                fut.as_mut().project().inner.set(None);
                spare_box = Some(fut);
                let outcome = Outcome::from_output(out);
                let Some(settlement) = conclude(&core, &attempt, outcome, ran) else {
                    continue;
                };
                if attempt.ctx.has_progress() {
                    // Its last progress is written first, by `settle`.
                    finish(&core, attempt, settlement, false);
                } else {
                    let Attempt {
                        lease, ctx, worker, ..
                    } = attempt;
                    held.ended.push((lease, settlement));
                    slot = Some(worker);
                    spare_ctx = Some(ctx);
                }
            }
        }
    }
}

/// Tower: a service whose `poll_ready` failed cannot be used again.
fn stopped(tracker: &Tracker, err: BoxError) {
    tracing::error!(
        queue = %tracker.name,
        error = %error_chain(&*err),
        "the queued service failed; its workers stop and its jobs stay queued"
    );
}

/// Gives a started attempt its own task: it runs to its end there and settles.
fn spawn_attempt<F, T, E, Req, St>(
    core: &Arc<Core<Req, St>>,
    attempt: Attempt,
    fut: Running<F>,
    first_polls: Option<Arc<FirstPolls>>,
) where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
    St: Store,
{
    let ctx = attempt.ctx.clone();
    let task_core = core.clone();
    spawn_registered(&core.tracker, ctx, async move {
        let core = task_core;
        let fut = FirstPollTimer {
            inner: fut,
            report: first_polls,
        };
        let outcome = drive(&core, &attempt.lease, &attempt.ctx, fut).await;
        let ran = attempt.started.elapsed();
        if let Some(settlement) = conclude(&core, &attempt, outcome, ran) {
            settle(core.clone(), attempt, settlement, false).await;
        }
    });
}

/// Runs `work` for the attempt of `ctx` on a task, registered as running from before the
/// task exists (so that shutdown and cancel see it) until `work` is done.
fn spawn_registered(
    tracker: &Arc<Tracker>,
    ctx: JobContext,
    work: impl Future<Output = ()> + Send + 'static,
) {
    tracker.register(&ctx);
    let tracker = tracker.clone();
    tracker.runtime.clone().spawn(async move {
        work.await;
        tracker.unregister(&ctx);
    });
}

/// Settles an attempt that ended without a task of its own: at once when the store answers
/// at once (the memory store does), else on a task registered as running until it has.
fn finish<Req, St>(
    core: &Arc<Core<Req, St>>,
    attempt: Attempt,
    settlement: Settlement,
    quarantined: bool,
) where
    Req: Send + 'static,
    St: Store,
{
    let ctx = attempt.ctx.clone();
    let mut settling = Box::pin(settle(core.clone(), attempt, settlement, quarantined));
    if settling
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
        .is_ready()
    {
        return;
    }
    spawn_registered(&core.tracker, ctx, settling);
}

/// Waits for a job when none was ready. `None` when every handle is gone and the queue is
/// empty.
async fn next_job<Req, St: Store>(core: &Core<Req, St>) -> Option<Lease> {
    let tracker = &core.tracker;
    loop {
        let wait = DEQUEUE_WAIT;
        let orphaned = tracker.orphaned.is_set();
        let dequeued = tokio::select! {
            biased;
            () = tracker.orphaned.wait(), if !orphaned => continue,
            dequeued = core.store.dequeue(if orphaned { ORPHAN_POLL } else { wait }) => dequeued,
        };
        match dequeued {
            Ok(Some(lease)) => return Some(lease),
            // Every handle is gone: stop once nothing is queued (retries included) and no
            // running attempt can queue a retry.
            Ok(None) if orphaned && tracker.running() == 0 => {
                if matches!(core.store.queued().await, Ok(0)) {
                    return None;
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracker.metrics.store_errors.take.increment(1);
                if let Some(held_back) = tracker.store_warnings.allow() {
                    tracing::warn!(queue = %tracker.name, error = %error_chain(&err), held_back, "dequeue failed; retrying every {STORE_ERROR_PAUSE:?}");
                }
                tokio::time::sleep(STORE_ERROR_PAUSE).await;
            }
        }
    }
}

enum Outcome<T, E> {
    Done(T),
    Failed(E),
    Panicked(String),
    /// Cancelled, and not stopped within the grace period.
    Stopped,
    /// Dropped by the queue's shutdown.
    ShutDown,
    LeaseLost,
}

impl<T, E> Outcome<T, E> {
    fn from_output(out: Result<Result<T, E>, Box<dyn Any + Send>>) -> Self {
        match out {
            Ok(Ok(response)) => Self::Done(response),
            Ok(Err(err)) => Self::Failed(err),
            Err(panic) => Self::Panicked(panic_message(&*panic)),
        }
    }
}

/// Turns how an attempt ended into the store's settlement (`None` when the attempt lost
/// its lease and must not settle), and records how long it ran.
fn conclude<T, E, Req, St>(
    core: &Core<Req, St>,
    attempt: &Attempt,
    outcome: Outcome<T, E>,
    ran: Duration,
) -> Option<Settlement>
where
    T: Serialize,
    E: Into<BoxError>,
{
    let tracker = &core.tracker;
    let config = &tracker.config;
    let lease = &attempt.lease;
    tracker.metrics.run.record(ran.as_secs_f64());
    let shutting_down = tracker.shared && attempt.ctx.is_aborted();
    let retry = |error: String| {
        if lease.attempt() < config.max_attempts {
            Settlement::Retry {
                error,
                delay: config.backoff.delay(lease.attempt()),
            }
        } else {
            Settlement::Fail(error)
        }
    };
    Some(match outcome {
        Outcome::LeaseLost => {
            tracing::debug!(queue = %tracker.name, job = %lease.id(), "lease lost; the attempt stopped without settling");
            return None;
        }
        // Stopped by this process's shutdown, with a store shared by other workers: unless
        // it completed, the job goes back to the front of the queue (as if not started)
        // for one of them. (A cancellation requested meanwhile still wins in the store.)
        Outcome::ShutDown | Outcome::Failed(_) | Outcome::Panicked(_) if shutting_down => {
            Settlement::Release
        }
        // Asked to stop (cancelled, or shut down): whatever the job returned, it is cancelled.
        _ if attempt.ctx.is_cancelled() && !shutting_down => Settlement::Cancel,
        Outcome::Stopped | Outcome::ShutDown => Settlement::Cancel,
        // The response's `Serialize` is the application's code, and may run on the
        // dispatcher: a panic in it fails the job, not the dispatcher.
        Outcome::Done(response) => {
            match catch_unwind(AssertUnwindSafe(|| codec::encode(&response))) {
                Ok(Ok(bytes)) => Settlement::Complete(bytes),
                Ok(Err(err)) => Settlement::Fail(format!("response could not be encoded: {err}")),
                Err(panic) => Settlement::Fail(format!(
                    "response could not be encoded: panicked: {}",
                    panic_message(&*panic)
                )),
            }
        }
        Outcome::Failed(err) => {
            let err: BoxError = err.into();
            let message = error_chain(&*err);
            if Permanent::is_in_chain(&*err) {
                Settlement::Fail(message)
            } else {
                retry(message)
            }
        }
        Outcome::Panicked(message) => retry(format!("panicked: {message}")),
    })
}

/// Writes the attempt's last progress, then its settlement, and reports the new status.
/// The worker slot is freed when it returns.
async fn settle<Req, St: Store>(
    core: Arc<Core<Req, St>>,
    attempt: Attempt,
    settlement: Settlement,
    quarantined: bool,
) {
    let lease = &attempt.lease;
    // Progress reported just before the job returned, with no `.await` after it.
    if let Some(progress) = attempt.ctx.take_progress() {
        if let Err(err) = core.store.progress(lease, &progress).await {
            tracing::warn!(queue = %core.tracker.name, job = %lease.id(), error = %error_chain(&err), "could not record progress");
        }
    }
    let released = matches!(settlement, Settlement::Release);
    let ttl = core.tracker.config.result_ttl;
    let mut settled = core.store.settle(lease, settlement.clone(), ttl).await;
    // A shared store may be out for a moment (a Redis restart): try again while the lease
    // holds, rather than leave the job to a recovery and a second run.
    if core.tracker.shared {
        for _ in 0..SETTLE_RETRIES {
            if settled.is_ok() {
                break;
            }
            core.tracker.metrics.store_errors.settle.increment(1);
            tokio::time::sleep(STORE_ERROR_PAUSE).await;
            settled = core.store.settle(lease, settlement.clone(), ttl).await;
        }
    }
    if released && matches!(settled, Ok(Settled::Applied(JobStatus::Queued))) {
        core.tracker.requeued(lease.id());
        return;
    }
    report(&core, lease, settled, quarantined);
}

fn report<Req, St>(
    core: &Core<Req, St>,
    lease: &Lease,
    settled: Result<Settled, super::store::StoreError>,
    quarantined: bool,
) {
    let tracker = &core.tracker;
    match settled {
        Ok(Settled::Applied(status)) => tracker.settled(lease.id(), status, quarantined),
        Ok(Settled::Stale) => {
            tracing::debug!(queue = %tracker.name, job = %lease.id(), "a newer attempt owns the job; settlement ignored");
        }
        Err(err) => {
            tracker.metrics.store_errors.settle.increment(1);
            tracing::warn!(
                queue = %tracker.name,
                job = %lease.id(),
                error = %error_chain(&err),
                "could not record the end of an attempt"
            );
        }
    }
}

/// Runs the attempt's future to its end, or until it is stopped.
async fn drive<F, T, E, Req, St>(
    core: &Core<Req, St>,
    lease: &Lease,
    ctx: &JobContext,
    fut: F,
) -> Outcome<T, E>
where
    F: Future<Output = Result<Result<T, E>, Box<dyn Any + Send>>>,
    St: Store,
{
    let tracker = &core.tracker;
    tokio::pin!(fut);
    // Cooperative first: the job sees `cancelled()`; after the grace period it is dropped.
    let grace = tracker.config.cancel_grace;
    let stop = async {
        ctx.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(stop);
    let mut renew = core.store.lease_duration().map(|lease| {
        let every = lease / 3;
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });

    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Outcome::from_output(out),
            () = ctx.aborted() => return Outcome::ShutDown,
            () = &mut stop => return Outcome::Stopped,
            () = ctx.progress_changed() => {
                let Some(progress) = ctx.take_progress() else { continue };
                match core.store.progress(lease, &progress).await {
                    Ok(LeaseState::Active) => tracker.progressed(lease.id()),
                    Ok(LeaseState::CancelRequested) => {
                        tracker.progressed(lease.id());
                        ctx.cancel();
                    }
                    Ok(LeaseState::Lost) => return Outcome::LeaseLost,
                    Err(err) => {
                        tracker.metrics.store_errors.renew.increment(1);
                        tracing::warn!(queue = %tracker.name, job = %lease.id(), error = %error_chain(&err), "could not record progress");
                    }
                }
            }
            () = tick(&mut renew) => {
                match core.store.renew(lease).await {
                    Ok(LeaseState::Active) => {}
                    Ok(LeaseState::CancelRequested) => ctx.cancel(),
                    Ok(LeaseState::Lost) => return Outcome::LeaseLost,
                    Err(err) => {
                        tracker.metrics.store_errors.renew.increment(1);
                        tracing::warn!(queue = %tracker.name, job = %lease.id(), error = %error_chain(&err), "could not renew a lease");
                    }
                }
            }
        }
    }
}

/// Reports how long the first poll of a spawned attempt took, so that the dispatcher knows
/// when to poll attempts itself again (see [`FirstPolls`]).
struct FirstPollTimer<F> {
    inner: F,
    report: Option<Arc<FirstPolls>>,
}

impl<F: Future + Unpin> Future for FirstPollTimer<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(report) = self.report.take() else {
            return Pin::new(&mut self.inner).poll(cx);
        };
        let start = Instant::now();
        let out = Pin::new(&mut self.inner).poll(cx);
        report.record(start.elapsed());
        out
    }
}

pin_project! {
    /// Turns a panic while polling `inner` into an `Err` with the panic's payload. `inner` is
    /// `None` in a box the dispatcher keeps for the next attempt.
    struct CatchUnwind<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.project().inner.as_pin_mut() else {
            // Never polled empty: the box is filled before it is polled or spawned.
            return Poll::Ready(Err(Box::new("the attempt's future was already dropped")));
        };
        // The future is never polled again after it panicked: the attempt ends.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Completes at the interval's next tick; never, without an interval.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
