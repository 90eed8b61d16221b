//! Where jobs live: the [`Store`] trait, the in-process [`MemoryStore`], the [`RedisStore`]
//! shared by processes, and [`AnyStore`] (either, chosen at run time).
//!
//! A store deals in **encoded bytes**: the queue encodes requests and responses (MessagePack,
//! with named fields, via `rmp-serde`) before they reach the store, so a store never needs
//! the application's types, and a persistent store can share jobs between processes built
//! from different binaries. The queue, not the store, decides about retries, backoff,
//! metrics and the change hook; the store keeps state and makes each transition atomic.
//!
//! # Contract
//! A store implementation must:
//!
//! - make [`enqueue`](Store::enqueue) atomic per id: while a job with that id is queued or
//!   running, enqueueing the id again returns [`Enqueued::Existing`] and changes nothing,
//!   however many callers race; a finished job's id may be reused (the old record is
//!   replaced);
//! - hand each queued job to one [`dequeue`](Store::dequeue) at a time, with a fresh
//!   [`Lease`] token, in FIFO order among due jobs, and never before a retry's delay;
//! - accept [`settle`](Store::settle) and [`progress`](Store::progress) only with the
//!   job's current lease token (anything else is [`Settled::Stale`] /
//!   [`LeaseState::Lost`]), so a late worker cannot overwrite a newer attempt;
//! - settle a job whose cancellation was requested as [`JobStatus::Cancelled`], whatever
//!   the settlement;
//! - put a job given back with [`Settlement::Release`] at the front of the queue, with its
//!   attempt count as before it was taken;
//! - keep finished jobs for the given result TTL, then forget them, so memory stays bounded;
//! - keep the payload of failed jobs (quarantined or not) until they expire.
//!
//! A store whose leases expire (a persistent store shared by processes) returns its lease
//! duration from [`lease_duration`](Store::lease_duration): workers then renew leases at a
//! third of it and call [`recover`](Store::recover) to requeue jobs whose worker died.
//!
//! The conformance suite in the crate's `tests/queue_suite/` runs against every store.

mod any;
mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use any::{AnyEnqueue, AnyStore};
pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreBuilder, DEFAULT_LEASE, MIN_LEASE};

pub use super::error::StoreError;
use super::job::{CancelOutcome, JobId, JobStatus, Progress};

/// The storage behind a [`Queue`](super::Queue).
///
/// See the [module docs](self) for the contract every implementation keeps. Methods take
/// `&self`: a store is shared by the queue's handles, services and workers.
pub trait Store: Send + Sync + 'static {
    /// The future of [`enqueue`](Store::enqueue). A named type (not `impl Future`) because
    /// it becomes part of [`QueueService`](super::QueueService)'s response future; it must
    /// not borrow the store. `Unpin` (a boxed future is) so that the service can poll it
    /// once during `call`: a store that enqueues synchronously is then done at once.
    type EnqueueFuture: Future<Output = Result<Enqueued, StoreError>> + Send + Unpin + 'static;

    /// Adds a job, or finds the live job with the same id (see [`Enqueued`]).
    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture;

    /// Takes the oldest due job and marks it running (its attempt count goes up by one), or
    /// waits up to `wait` for one. Dropping the future must not lose a job.
    fn dequeue(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Ends the leased attempt: completes, fails, quarantines, cancels, or requeues the job
    /// for a retry. Finished jobs are kept for `result_ttl`.
    fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> impl Future<Output = Result<Settled, StoreError>> + Send;

    /// Settles each of `ended` in order, as [`settle`](Store::settle) does, then takes up
    /// to `max` due jobs, as [`dequeue`](Store::dequeue) with no wait does: one step (one
    /// lock, one round trip) where the store can. The queue's dispatcher uses it for
    /// attempts it ran itself, and to take several quick jobs at once. The default settles
    /// one by one and then takes at most one job.
    ///
    /// Returns one result per settlement, in order, and the jobs taken, oldest first.
    ///
    /// Dropping the future must not lose a job, as for `dequeue`. The queue sends the
    /// settlements again if the future is dropped before it finished, so that one may
    /// arrive twice; the second finds the lease no longer current and is
    /// [`Settled::Stale`].
    fn settle_then_dequeue(
        &self,
        ended: &[(Lease, Settlement)],
        result_ttl: Duration,
        max: usize,
    ) -> impl Future<Output = SettledThenTaken> + Send {
        async move {
            let mut settled = Vec::with_capacity(ended.len());
            for (lease, settlement) in ended {
                settled.push(self.settle(lease, settlement.clone(), result_ttl).await);
            }
            let taken = if max == 0 {
                Ok(Vec::new())
            } else {
                self.dequeue(Duration::ZERO)
                    .await
                    .map(|lease| lease.into_iter().collect())
            };
            (settled, taken)
        }
    }

    /// Records the leased attempt's progress.
    fn progress(
        &self,
        lease: &Lease,
        progress: &Progress,
    ) -> impl Future<Output = Result<LeaseState, StoreError>> + Send;

    /// Extends the lease by [`lease_duration`](Store::lease_duration) and reports whether
    /// the job was asked to stop.
    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<LeaseState, StoreError>> + Send;

    /// Cancels a queued job (kept as cancelled for `result_ttl`), or flags a running one so
    /// that its settlement becomes a cancellation.
    fn cancel(
        &self,
        id: &JobId,
        result_ttl: Duration,
    ) -> impl Future<Output = Result<CancelOutcome, StoreError>> + Send;

    /// The job's record, if it exists and has not expired.
    fn get(&self, id: &JobId)
        -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send;

    /// Up to `limit` jobs with this status, most recently enqueued first.
    fn list(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// How many jobs are queued (waiting for a first attempt or a retry).
    fn queued(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Removes every finished job with this status and returns how many were removed.
    /// Queued and running jobs are never removed: for those it returns `Ok(0)`.
    fn clear(&self, status: JobStatus) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Requeues running jobs whose lease expired (their worker died), except those that
    /// have had `max_attempts` attempts: these fail for good (kept for `result_ttl`), so a
    /// job that kills every worker that runs it is not run forever. Stores whose leases do
    /// not expire keep the default, which does nothing. Dropping the future must leave
    /// every job either requeued, failed, or still leased.
    fn recover(
        &self,
        max_attempts: u32,
        result_ttl: Duration,
    ) -> impl Future<Output = Result<Recovered, StoreError>> + Send {
        let _ = (max_attempts, result_ttl);
        async { Ok(Recovered::default()) }
    }

    /// Calls `notify` with the id of each running job whose cancellation another process
    /// requested, as soon as the store hears of it: a faster path than the job's next
    /// renewal, which still sees the request if a notice is lost. The queue calls it once,
    /// when its workers start; `notify` does nothing for jobs not running in this process.
    /// The default (stores shared by no other process) does nothing.
    fn watch_cancellations(&self, notify: CancelNotify) {
        let _ = notify;
    }

    /// How long a lease lasts unless renewed; `None` (the default) for stores whose leases
    /// never expire, like [`MemoryStore`], whose workers die with the jobs they hold.
    fn lease_duration(&self) -> Option<Duration> {
        None
    }
}

/// What [`Store::recover`] did with the jobs whose lease expired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// Requeued for another attempt.
    pub requeued: usize,
    /// Failed for good: their attempts were used up.
    pub failed: usize,
}

/// What [`Store::watch_cancellations`] calls with a job's id.
pub type CancelNotify = Arc<dyn Fn(&JobId) + Send + Sync>;

/// What [`Store::settle_then_dequeue`] returns: one result per settlement, in order, and
/// the jobs taken, oldest first.
pub type SettledThenTaken = (
    Vec<Result<Settled, StoreError>>,
    Result<Vec<Lease>, StoreError>,
);

/// A job to enqueue.
#[derive(Clone)]
#[non_exhaustive]
pub struct NewJob {
    /// Its id: deterministic (dedup) or random.
    pub id: JobId,
    /// The encoded request.
    pub payload: Arc<[u8]>,
    /// When it was enqueued.
    pub enqueued_at: SystemTime,
    /// The queue generated the id (128 random bits) instead of taking it from the
    /// application: no other job has it, so the store may skip looking for one.
    pub generated_id: bool,
    /// Not to start before this time (a delayed job); `None`: at once.
    pub not_before: Option<SystemTime>,
}

impl NewJob {
    /// A job enqueued now, with an id chosen by the application (the store checks it
    /// against live jobs).
    pub fn new(id: JobId, payload: impl Into<Arc<[u8]>>) -> Self {
        Self {
            id,
            payload: payload.into(),
            enqueued_at: SystemTime::now(),
            generated_id: false,
            not_before: None,
        }
    }

    /// Delays the job's first attempt until `time`.
    #[must_use]
    pub fn not_before(mut self, time: SystemTime) -> Self {
        self.not_before = Some(time);
        self
    }

    /// Marks the id as generated by the queue (see [`generated_id`](Self::generated_id)).
    #[must_use]
    pub fn with_generated_id(mut self) -> Self {
        self.generated_id = true;
        self
    }
}

impl fmt::Debug for NewJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewJob")
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .field("enqueued_at", &self.enqueued_at)
            .field("generated_id", &self.generated_id)
            .field("not_before", &self.not_before)
            .finish()
    }
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Enqueued {
    /// A new job was queued.
    New,
    /// A job with this id is queued or running; nothing was added.
    Existing,
}

/// A running attempt, as handed out by [`Store::dequeue`]: the job's id, its payload, and
/// the token that the attempt's settlement and progress must carry.
#[derive(Clone)]
pub struct Lease {
    id: JobId,
    token: u64,
    generation: u64,
    attempt: u32,
    payload: Arc<[u8]>,
    enqueued_at: SystemTime,
    started_at: Option<SystemTime>,
}

impl Lease {
    /// A lease; `token` must differ from every earlier lease of the same job. Its
    /// generation is the attempt number unless set with
    /// [`with_generation`](Self::with_generation).
    pub fn new(
        id: JobId,
        token: u64,
        attempt: u32,
        payload: Arc<[u8]>,
        enqueued_at: SystemTime,
    ) -> Self {
        Self {
            id,
            token,
            generation: u64::from(attempt),
            attempt,
            payload,
            enqueued_at,
            started_at: None,
        }
    }

    /// Records when the store started this attempt (the job's `started_at`), so that the
    /// queue measures the job's wait without reading the clock again.
    #[must_use]
    pub fn with_started_at(mut self, started_at: SystemTime) -> Self {
        self.started_at = Some(started_at);
        self
    }

    /// Sets the job's generation: a number that goes up with every take and every
    /// recovery of the job, so that the attempt can fence its own downstream writes
    /// ([`JobContext::generation`](crate::queue::JobContext::generation)).
    #[must_use]
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The job's generation for this attempt (see [`with_generation`](Self::with_generation)).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the store started this attempt, if it said ([`with_started_at`](Self::with_started_at)).
    pub fn started_at(&self) -> Option<SystemTime> {
        self.started_at
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The lease token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The encoded request.
    pub fn payload(&self) -> &Arc<[u8]> {
        &self.payload
    }

    /// When the job was enqueued.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("generation", &self.generation)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// How an attempt ends (the queue's decision, applied by [`Store::settle`]).
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Completed with this encoded response.
    Complete(Arc<[u8]>),
    /// Failed for good with this error; the payload is kept.
    Fail(String),
    /// The payload could not be decoded: failed for good, flagged quarantined, payload kept.
    Quarantine(String),
    /// Failed with this error; queue the job again once `delay` has passed.
    Retry {
        /// The attempt's error.
        error: String,
        /// The backoff before the next attempt.
        delay: Duration,
    },
    /// Stopped because it was cancelled.
    Cancel,
    /// The attempt never started: the job goes back to the front of the queue as it was
    /// before it was taken (its attempt count goes back down). A worker that took jobs
    /// ahead ([`Store::settle_then_dequeue`] with `max` above one) gives back the ones it
    /// will not start soon; giving back several in reverse order of taking keeps their
    /// order. A job whose cancellation was requested meanwhile is cancelled instead (with its
    /// attempt count also as before).
    Release,
}

/// What [`Store::settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Settled {
    /// The job is now in this status (`Queued` after a retry).
    Applied(JobStatus),
    /// The lease was no longer the job's current one; nothing changed.
    Stale,
}

/// The state of a lease, as seen by [`Store::renew`] and [`Store::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum LeaseState {
    /// The lease is current.
    Active,
    /// The lease is current, and the job was asked to stop.
    CancelRequested,
    /// The lease expired or was replaced; the attempt should stop without settling.
    Lost,
}

/// Everything a store knows about a job.
#[derive(Clone)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// Its status.
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// When it was enqueued.
    pub enqueued_at: SystemTime,
    /// When its latest attempt started.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// The latest progress reported by its running attempt.
    pub progress: Option<Progress>,
    /// The encoded request; dropped when the job completes or is cancelled, kept when it
    /// fails.
    pub payload: Option<Arc<[u8]>>,
    /// The encoded response, once completed.
    pub result: Option<Arc<[u8]>>,
    /// The latest attempt's error.
    pub error: Option<String>,
    /// Failed because the payload could not be decoded.
    pub quarantined: bool,
    /// Running, and asked to stop.
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A queued job that has not run yet.
    pub fn new(job: NewJob) -> Self {
        Self {
            id: job.id,
            status: JobStatus::Queued,
            attempts: 0,
            enqueued_at: job.enqueued_at,
            started_at: None,
            finished_at: None,
            progress: None,
            payload: Some(job.payload),
            result: None,
            error: None,
            quarantined: false,
            cancel_requested: false,
        }
    }
}

impl fmt::Debug for JobRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRecord")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("enqueued_at", &self.enqueued_at)
            .field("started_at", &self.started_at)
            .field("finished_at", &self.finished_at)
            .field("progress", &self.progress)
            .field("payload_len", &self.payload.as_ref().map(|p| p.len()))
            .field("result_len", &self.result.as_ref().map(|r| r.len()))
            .field("error", &self.error)
            .field("quarantined", &self.quarantined)
            .field("cancel_requested", &self.cancel_requested)
            .finish()
    }
}
