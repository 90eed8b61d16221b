//! The response future of [`QueueService`](super::QueueService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::OwnedSemaphorePermit;

use super::error::QueueError;
use super::handle::Tracker;
use super::job::JobId;
use super::store::{Enqueued, StoreError};

/// The future returned by [`QueueService`](super::QueueService): resolves to the job's id
/// once the store has accepted it.
///
/// With the in-process store it is ready at once: the job was queued during `call`.
///
/// `F` is the store's [`EnqueueFuture`](super::store::Store::EnqueueFuture), which is
/// `Unpin`, so this future is too and needs no pin projection.
pub struct ResponseFuture<F> {
    state: State<F>,
}

enum State<F> {
    /// Waiting for the store.
    Enqueue {
        fut: F,
        id: JobId,
        tracker: Arc<Tracker>,
        permit: OwnedSemaphorePermit,
    },
    Done(Option<Result<JobId, QueueError>>),
}

impl<F> ResponseFuture<F>
where
    F: Future<Output = Result<Enqueued, StoreError>> + Unpin,
{
    /// Polls the store's future once with a no-op waker, so that a store that enqueues
    /// synchronously (the memory store) has done all its bookkeeping when `call` returns:
    /// dropping this future then changes nothing.
    pub(crate) fn enqueue(
        mut fut: F,
        id: JobId,
        tracker: Arc<Tracker>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(out) => Self::done(finish(out, id, &tracker, permit)),
            Poll::Pending => Self {
                state: State::Enqueue {
                    fut,
                    id,
                    tracker,
                    permit,
                },
            },
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn done(result: Result<JobId, QueueError>) -> Self {
        Self {
            state: State::Done(Some(result)),
        }
    }
}

/// The store answered: account for the slot `poll_ready` reserved.
fn finish(
    out: Result<Enqueued, StoreError>,
    id: JobId,
    tracker: &Tracker,
    permit: OwnedSemaphorePermit,
) -> Result<JobId, QueueError> {
    match out {
        Ok(Enqueued::New) => {
            // The slot now belongs to the queued job; it comes back when the job leaves
            // the queue. A shared store's jobs may leave it in another process: there the
            // slot bounds only the enqueues in flight.
            if tracker.shared {
                drop(permit);
            } else {
                permit.forget();
            }
            tracker.enqueued(&id);
            Ok(id)
        }
        Ok(Enqueued::Existing) => {
            drop(permit);
            tracker.deduplicated();
            Ok(id)
        }
        Err(err) => {
            drop(permit);
            tracker.metrics.store_errors.enqueue.increment(1);
            Err(err.into())
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Enqueued, StoreError>> + Unpin,
{
    type Output = Result<JobId, QueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match &mut this.state {
            State::Enqueue { fut, .. } => {
                let out = ready!(Pin::new(fut).poll(cx));
                let State::Enqueue {
                    id,
                    tracker,
                    permit,
                    ..
                } = std::mem::replace(&mut this.state, State::Done(None))
                else {
                    unreachable!("matched above")
                };
                finish(out, id, &tracker, permit)
            }
            State::Done(result) => result
                .take()
                .expect("ResponseFuture polled after completion"),
        };
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Enqueue { id, .. } => {
                f.debug_tuple("ResponseFuture::Enqueue").field(id).finish()
            }
            State::Done(result) => f.debug_tuple("ResponseFuture::Done").field(result).finish(),
        }
    }
}
