//! The workers: one dispatcher task per wrapped service, and one task per attempt.
//!
//! The dispatcher owns the inner service. For each job it takes a worker slot, waits for the
//! service to be ready (before taking a job, so no job is held while the service is busy),
//! dequeues a job, decodes it, calls the service inside the job's task-local context, and
//! spawns the response future as the attempt's own task. That keeps Tower's readiness
//! contract (one service, `poll_ready` before each `call`) without requiring `S: Clone`,
//! like `tower::buffer`'s worker, while attempts run concurrently up to `workers`.
//!
//! The attempt task drives the future, catches its panic, watches for cancellation, writes
//! progress, renews the lease when the store's leases expire, and settles the job.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tower_service::Service;

use super::codec;
use super::error::{error_chain, Permanent};
use super::handle::Core;
use super::job::JobContext;
use super::store::{Lease, LeaseState, Settled, Settlement, Store};
use crate::BoxError;

/// How long one `dequeue` waits before the dispatcher looks around again.
const DEQUEUE_WAIT: Duration = Duration::from_secs(30);
/// How often a dispatcher whose handles are all gone looks for the last jobs.
const ORPHAN_POLL: Duration = Duration::from_millis(50);
/// The pause after a store error before the dispatcher tries again.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(500);

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
    let dispatcher = tracker.runtime.spawn(dispatch(core, service));
    let mut dispatchers = tracker
        .dispatchers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // `shutdown` sets `closed` before it takes the list: either it takes this dispatcher
    // and aborts it, or this sees `closed`.
    if tracker.closed.is_set() {
        dispatcher.abort();
    } else {
        dispatchers.push(dispatcher);
    }
}

/// The dispatcher loop.
///
/// Shutdown aborts it, which is safe at each of its `.await`s: waiting for a worker slot or
/// for readiness holds no job, and `Store::dequeue` and `Store::recover` are cancel-safe.
/// Between taking a job and spawning its attempt there is no `.await`. So the hot path
/// needs no `select!`: each step tries the non-blocking way first.
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
    loop {
        let permit = match tracker.workers.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                match tracker.workers.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            }
        };

        if let Err(err) = poll_fn(|cx| service.poll_ready(cx)).await {
            // Tower: a service whose poll_ready failed cannot be used again.
            let err: BoxError = err.into();
            tracing::error!(
                queue = %tracker.name,
                error = %error_chain(&*err),
                "the queued service failed; its workers stop and its jobs stay queued"
            );
            return;
        }

        let lease = match core.store.dequeue(Duration::ZERO).await {
            Ok(Some(lease)) => lease,
            _ => match next_job(&core).await {
                Some(lease) => lease,
                None => return,
            },
        };

        let waited = SystemTime::now().duration_since(lease.enqueued_at()).ok();
        tracker.started(lease.id(), lease.attempt(), waited);
        let ctx = JobContext::new(lease.id().clone(), lease.attempt());
        tracker.register(&ctx);

        let start = match codec::decode::<Req>(lease.payload()) {
            Err(err) => Start::Undecodable(format!("payload could not be decoded: {err}")),
            Ok(req) => {
                match catch_unwind(AssertUnwindSafe(|| ctx.sync_scope(|| service.call(req)))) {
                    Ok(fut) => Start::Run(fut),
                    Err(panic) => Start::Panicked(panic_message(&*panic)),
                }
            }
        };
        tracker
            .runtime
            .spawn(attempt(core.clone(), lease, ctx, start, permit));
    }
}

/// Waits for a job when none was ready, recovering expired leases meanwhile (for stores
/// whose leases expire). `None` when every handle is gone and the queue is empty.
async fn next_job<Req, St: Store>(core: &Core<Req, St>) -> Option<Lease> {
    let tracker = &core.tracker;
    let lease_duration = core.store.lease_duration();
    let wait = lease_duration.map_or(DEQUEUE_WAIT, |lease| (lease / 2).min(DEQUEUE_WAIT));
    loop {
        if lease_duration.is_some() {
            match core.store.recover().await {
                Ok(0) => {}
                Ok(jobs) => tracker.recovered(jobs),
                Err(err) => {
                    tracing::warn!(queue = %tracker.name, error = %error_chain(&err), "lease recovery failed");
                }
            }
        }
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
                tracing::warn!(queue = %tracker.name, error = %error_chain(&err), "dequeue failed");
                tokio::time::sleep(STORE_ERROR_PAUSE).await;
            }
        }
    }
}

enum Start<F> {
    Run(F),
    Panicked(String),
    Undecodable(String),
}

enum Outcome<T, E> {
    Done(T),
    Failed(E),
    Panicked(String),
    Stopped,
    LeaseLost,
}

async fn attempt<F, T, E, Req, St>(
    core: Arc<Core<Req, St>>,
    lease: Lease,
    ctx: JobContext,
    start: Start<F>,
    _worker: OwnedSemaphorePermit,
) where
    F: Future<Output = Result<T, E>> + Send,
    T: Serialize,
    E: Into<BoxError>,
    St: Store,
{
    let tracker = &core.tracker;
    let config = &tracker.config;
    let started = std::time::Instant::now();
    let outcome = match start {
        Start::Undecodable(error) => {
            let settled = core
                .store
                .settle(&lease, Settlement::Quarantine(error), config.result_ttl)
                .await;
            report(&core, &lease, settled, true);
            tracker.unregister(&ctx);
            return;
        }
        Start::Panicked(message) => Outcome::Panicked(message),
        Start::Run(fut) => {
            let outcome = drive(&core, &lease, &ctx, fut).await;
            // Progress reported just before the job returned, with no `.await` after it.
            if let Some(progress) = ctx.take_progress() {
                if let Err(err) = core.store.progress(&lease, &progress).await {
                    tracing::warn!(queue = %tracker.name, job = %lease.id(), error = %error_chain(&err), "could not record progress");
                }
            }
            outcome
        }
    };
    tracker.metrics.run.record(started.elapsed().as_secs_f64());

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
    let settlement = match outcome {
        Outcome::LeaseLost => {
            tracing::debug!(queue = %tracker.name, job = %lease.id(), "lease lost; the attempt stopped without settling");
            tracker.unregister(&ctx);
            return;
        }
        // Asked to stop (cancelled, or shut down): whatever the job returned, it is cancelled.
        _ if ctx.is_cancelled() => Settlement::Cancel,
        Outcome::Stopped => Settlement::Cancel,
        Outcome::Done(response) => match codec::encode(&response) {
            Ok(bytes) => Settlement::Complete(bytes),
            Err(err) => Settlement::Fail(format!("response could not be encoded: {err}")),
        },
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
    };
    let settled = core
        .store
        .settle(&lease, settlement, config.result_ttl)
        .await;
    report(&core, &lease, settled, false);
    tracker.unregister(&ctx);
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
    F: Future<Output = Result<T, E>>,
    St: Store,
{
    let tracker = &core.tracker;
    let fut = CatchUnwind {
        inner: ctx.scope(fut),
    };
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
            out = &mut fut => {
                return match out {
                    Ok(Ok(response)) => Outcome::Done(response),
                    Ok(Err(err)) => Outcome::Failed(err),
                    Err(panic) => Outcome::Panicked(panic_message(&*panic)),
                };
            }
            () = ctx.aborted() => return Outcome::Stopped,
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
                        tracing::warn!(queue = %tracker.name, job = %lease.id(), error = %error_chain(&err), "could not renew a lease");
                    }
                }
            }
        }
    }
}

pin_project! {
    /// Turns a panic while polling `inner` into an `Err` with the panic's payload.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
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
