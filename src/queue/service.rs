//! `QueueService`: enqueues each request as a job and answers with its id.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tower_service::Service;

use super::error::QueueError;
use super::future::ResponseFuture;
use super::handle::Queue;
use super::job::JobId;
use super::store::{MemoryStore, Store};

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

/// A service that enqueues each request as a job and responds with its [`JobId`] at once;
/// the wrapped service runs the job later on the queue's workers. Made by
/// [`QueueLayer`](super::QueueLayer).
///
/// # Backpressure
/// `poll_ready` reserves a slot in the queue: at [capacity] it is `Pending`, and it is woken
/// when a slot frees (a job starts or is cancelled). With [load shedding] it is always ready
/// and a call at capacity fails with [`QueueError::is_overloaded`] instead. After
/// [`Queue::shutdown`] it fails with [`QueueError::is_closed`].
///
/// A clone starts without a reservation (like `tower::limit::ConcurrencyLimit`), and a
/// service dropped with a reservation gives the slot back.
///
/// The request is encoded and queued during `call`; the response future only reports the
/// store's answer (with the in-process store, it is ready at once).
///
/// [capacity]: super::QueueBuilder::capacity
/// [load shedding]: super::QueueBuilder::load_shed
pub struct QueueService<Req, Res, St = MemoryStore> {
    queue: Queue<Req, Res, St>,
    /// The slot reserved by `poll_ready`, spent by `call`.
    permit: Option<OwnedSemaphorePermit>,
    /// Waiting for a slot; boxed because Tokio's acquire future is unnameable, and only
    /// allocated when the queue is full.
    acquire: Option<Acquire>,
}

impl<Req, Res, St> QueueService<Req, Res, St> {
    pub(crate) fn new(queue: Queue<Req, Res, St>) -> Self {
        Self {
            queue,
            permit: None,
            acquire: None,
        }
    }

    /// The queue this service enqueues into.
    pub fn queue(&self) -> &Queue<Req, Res, St> {
        &self.queue
    }

    fn slots(&self) -> &Arc<Semaphore> {
        &self.queue.tracker().slots
    }
}

impl<Req, Res, St> Service<Req> for QueueService<Req, Res, St>
where
    Req: Serialize,
    St: Store,
{
    type Response = JobId;
    type Error = QueueError;
    type Future = ResponseFuture<St::EnqueueFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if self.queue.tracker().config.load_shed {
            // As `tower::load_shed`: always ready; `call` sheds if no slot was free.
            return match self.slots().clone().try_acquire_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    Poll::Ready(Ok(()))
                }
                Err(TryAcquireError::NoPermits) => Poll::Ready(Ok(())),
                Err(TryAcquireError::Closed) => Poll::Ready(Err(QueueError::closed())),
            };
        }
        loop {
            if let Some(acquire) = &mut self.acquire {
                let acquired = std::task::ready!(acquire.as_mut().poll(cx));
                self.acquire = None;
                return match acquired {
                    Ok(permit) => {
                        self.permit = Some(permit);
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(QueueError::closed())),
                };
            }
            match self.slots().clone().try_acquire_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    return Poll::Ready(Ok(()));
                }
                Err(TryAcquireError::NoPermits) => {
                    self.acquire = Some(Box::pin(self.slots().clone().acquire_owned()));
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(QueueError::closed())),
            }
        }
    }

    /// Enqueues `req`.
    ///
    /// # Panics
    /// If `poll_ready` did not return `Ready(Ok(()))` first (as `tower`'s
    /// `ConcurrencyLimit`); with load shedding, a call without a free slot fails with an
    /// overloaded error instead.
    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None if self.queue.tracker().config.load_shed => {
                return ResponseFuture::done(Err(QueueError::overloaded()));
            }
            None => {
                panic!("QueueService::call was called before poll_ready returned Ready(Ok(()))")
            }
        };
        self.queue.submit(req, permit, None)
    }
}

impl<Req, Res, St> Clone for QueueService<Req, Res, St> {
    /// A clone shares the queue but not this service's reserved slot: it must be made
    /// ready by itself.
    fn clone(&self) -> Self {
        Self::new(self.queue.clone())
    }
}

impl<Req, Res, St> fmt::Debug for QueueService<Req, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueService")
            .field("queue", &self.queue)
            .field("ready", &self.permit.is_some())
            .finish()
    }
}
