//! The queue conformance suite (`tests/queue_suite/`) against a store that answers
//! asynchronously, as a network store does: `MemoryStore` behind futures that yield to the
//! runtime once before they answer, with the `Store` trait's default
//! `settle_then_dequeue`. It runs the queue's paths for stores that are not done at once
//! (settlements on their own tasks, the dispatcher's store steps across real `.await`s)
//! and the trait's default method, which `MemoryStore` overrides.

#[macro_use]
mod queue_suite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use layercake::queue::store::{
    Enqueued, JobRecord, Lease, LeaseState, MemoryStore, NewJob, Settled, Settlement, Store,
    StoreError,
};
use layercake::queue::{CancelOutcome, JobId, JobStatus, Progress};

#[derive(Clone, Default)]
struct Yielding(MemoryStore);

impl Store for Yielding {
    type EnqueueFuture = Pin<Box<dyn Future<Output = Result<Enqueued, StoreError>> + Send>>;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        let store = self.0.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            store.enqueue(job).await
        })
    }

    async fn dequeue(&self, wait: Duration) -> Result<Option<Lease>, StoreError> {
        tokio::task::yield_now().await;
        self.0.dequeue(wait).await
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> Result<Settled, StoreError> {
        tokio::task::yield_now().await;
        self.0.settle(lease, settlement, result_ttl).await
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        tokio::task::yield_now().await;
        self.0.progress(lease, progress).await
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        tokio::task::yield_now().await;
        self.0.renew(lease).await
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        tokio::task::yield_now().await;
        self.0.cancel(id, result_ttl).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get(id).await
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        tokio::task::yield_now().await;
        self.0.list(status, limit).await
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        tokio::task::yield_now().await;
        self.0.queued().await
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        tokio::task::yield_now().await;
        self.0.clear(status).await
    }
}

queue_conformance!(store: Yielding::default(), paused_time: true);
