//! [`AnyStore`]: the in-process store or the Redis store, chosen at run time.

use std::fmt;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{
    Enqueued, JobRecord, Lease, LeaseState, MemoryStore, NewJob, RedisStore, Settled,
    SettledThenTaken, Settlement, Store, StoreError,
};
use crate::queue::job::{CancelOutcome, JobId, JobStatus, Progress};

/// The store of a queue built with [`QueueBuilder::redis_url`](crate::queue::QueueBuilder::redis_url):
/// a [`RedisStore`] when a URL was given, else a [`MemoryStore`], so that one type serves
/// both (`redis_url(std::env::var("REDIS_URL").ok())`).
#[derive(Clone)]
pub struct AnyStore {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl AnyStore {
    /// The in-process store.
    pub fn memory(store: MemoryStore) -> Self {
        Self {
            kind: Kind::Memory(store),
        }
    }

    /// The Redis store.
    pub fn redis(store: RedisStore) -> Self {
        Self {
            kind: Kind::Redis(store),
        }
    }

    /// The Redis store, if this is one.
    pub fn as_redis(&self) -> Option<&RedisStore> {
        match &self.kind {
            Kind::Redis(store) => Some(store),
            Kind::Memory(_) => None,
        }
    }
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Memory(store) => f.debug_tuple("AnyStore::Memory").field(store).finish(),
            Kind::Redis(store) => f.debug_tuple("AnyStore::Redis").field(store).finish(),
        }
    }
}

type RedisEnqueue = <RedisStore as Store>::EnqueueFuture;

/// [`AnyStore`]'s enqueue future: the memory store's (ready at once, no allocation) or
/// the Redis store's.
pub struct AnyEnqueue {
    inner: EnqueueKind,
}

enum EnqueueKind {
    Memory(Ready<Result<Enqueued, StoreError>>),
    Redis(RedisEnqueue),
}

impl Future for AnyEnqueue {
    type Output = Result<Enqueued, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            EnqueueKind::Memory(ready) => Pin::new(ready).poll(cx),
            EnqueueKind::Redis(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for AnyEnqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEnqueue").finish_non_exhaustive()
    }
}

impl Store for AnyStore {
    type EnqueueFuture = AnyEnqueue;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        AnyEnqueue {
            inner: match &self.kind {
                Kind::Memory(store) => EnqueueKind::Memory(store.enqueue(job)),
                Kind::Redis(store) => EnqueueKind::Redis(store.enqueue(job)),
            },
        }
    }

    async fn dequeue(&self, wait: Duration) -> Result<Option<Lease>, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.dequeue(wait).await,
            Kind::Redis(store) => store.dequeue(wait).await,
        }
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> Result<Settled, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.settle(lease, settlement, result_ttl).await,
            Kind::Redis(store) => store.settle(lease, settlement, result_ttl).await,
        }
    }

    async fn settle_then_dequeue(
        &self,
        ended: &[(Lease, Settlement)],
        result_ttl: Duration,
        max: usize,
    ) -> SettledThenTaken {
        match &self.kind {
            Kind::Memory(store) => store.settle_then_dequeue(ended, result_ttl, max).await,
            Kind::Redis(store) => store.settle_then_dequeue(ended, result_ttl, max).await,
        }
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.progress(lease, progress).await,
            Kind::Redis(store) => store.progress(lease, progress).await,
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.renew(lease).await,
            Kind::Redis(store) => store.renew(lease).await,
        }
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.cancel(id, result_ttl).await,
            Kind::Redis(store) => store.cancel(id, result_ttl).await,
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.get(id).await,
            Kind::Redis(store) => store.get(id).await,
        }
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.list(status, limit).await,
            Kind::Redis(store) => store.list(status, limit).await,
        }
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.queued().await,
            Kind::Redis(store) => store.queued().await,
        }
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.clear(status).await,
            Kind::Redis(store) => store.clear(status).await,
        }
    }

    async fn recover(
        &self,
        max_attempts: u32,
        result_ttl: Duration,
    ) -> Result<super::Recovered, StoreError> {
        match &self.kind {
            Kind::Memory(store) => store.recover(max_attempts, result_ttl).await,
            Kind::Redis(store) => store.recover(max_attempts, result_ttl).await,
        }
    }

    fn watch_cancellations(&self, notify: super::CancelNotify) {
        match &self.kind {
            Kind::Memory(store) => store.watch_cancellations(notify),
            Kind::Redis(store) => store.watch_cancellations(notify),
        }
    }

    fn lease_duration(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Memory(store) => store.lease_duration(),
            Kind::Redis(store) => store.lease_duration(),
        }
    }
}
