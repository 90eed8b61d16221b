//! The in-process store: one mutex around a map of jobs and three indexes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Enqueued, JobRecord, Lease, LeaseState, NewJob, Settled, Settlement, Store, StoreError,
};
use crate::queue::job::{CancelOutcome, JobId, JobStatus, Progress};

/// A [`Store`] in this process's memory: the default store of a
/// [`Queue`](crate::queue::Queue).
///
/// Jobs do not outlive the process, and its leases never expire (a worker that could die
/// takes the store with it). Finished jobs are removed once their result TTL has passed,
/// so memory stays bounded by the capacity plus the jobs finished within one TTL. Expiry is
/// measured on Tokio's clock, so tests can use paused time.
///
/// Cloning gives another handle to the same jobs.
///
/// ```
/// use layercake::queue::store::MemoryStore;
///
/// let store = MemoryStore::new();
/// assert_eq!(store.tracked_jobs(), 0);
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Signalled when a job becomes queued, so that a waiting `dequeue` looks again.
    queued: Notify,
    /// `dequeue` calls waiting for `queued`: while none is, enqueueing skips the signal.
    waiting: AtomicUsize,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Entry>,
    /// Due queued jobs, oldest first, by (id, generation).
    ready: VecDeque<(JobId, u64)>,
    /// Queued jobs waiting for a retry's backoff, by (due, generation).
    delayed: BTreeMap<(Instant, u64), JobId>,
    /// Finished jobs, by (expiry, generation).
    expiry: BTreeMap<(Instant, u64), JobId>,
    next_generation: u64,
    next_token: u64,
    queued: usize,
}

struct Entry {
    record: JobRecord,
    /// Tells apart jobs that reuse a finished job's id.
    generation: u64,
    /// The current lease's token, while running.
    token: Option<u64>,
    /// Set while waiting in `delayed`.
    due: Option<Instant>,
    /// Set once finished.
    expires_at: Option<Instant>,
}

impl Entry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn lease_state(&self, lease: &Lease) -> LeaseState {
        if self.record.status != JobStatus::Running || self.token != Some(lease.token()) {
            LeaseState::Lost
        } else if self.record.cancel_requested {
            LeaseState::CancelRequested
        } else {
            LeaseState::Active
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many job records the store holds: queued, running, and finished within their
    /// result TTL. Expired records are removed as the store is used.
    pub fn tracked_jobs(&self) -> usize {
        let mut state = self.lock();
        state.purge(Instant::now());
        state.jobs.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, and every transition leaves the state
        // consistent before any call that could; so a poisoned lock is still sound.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes a waiting `dequeue`, if any. SeqCst pairs with `dequeue`: either this sees its
    /// `waiting` increment, or its next look at the state (under the lock) sees the job.
    fn job_queued(&self) {
        if self.inner.waiting.load(Ordering::SeqCst) > 0 {
            self.inner.queued.notify_one();
        }
    }

    /// Takes the oldest due job, or says when the next retry is due.
    fn try_dequeue(&self) -> Result<Lease, Option<Instant>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.delayed.is_empty() {
            state.promote_due(Instant::now());
        }
        while let Some((id, generation)) = state.ready.pop_front() {
            let token = state.next_token;
            let Some(entry) = state.jobs.get_mut(&id) else {
                continue;
            };
            if entry.generation != generation || entry.record.status != JobStatus::Queued {
                continue;
            }
            let Some(payload) = entry.record.payload.clone() else {
                continue;
            };
            entry.record.status = JobStatus::Running;
            entry.record.attempts += 1;
            entry.record.started_at = Some(SystemTime::now());
            entry.record.progress = None;
            entry.token = Some(token);
            let lease = Lease::new(
                id,
                token,
                entry.record.attempts,
                payload,
                entry.record.enqueued_at,
            );
            state.next_token += 1;
            state.queued -= 1;
            return Ok(lease);
        }
        Err(state.delayed.first_key_value().map(|((due, _), _)| *due))
    }
}

impl State {
    /// Moves retries whose backoff has passed to the ready queue.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, generation), id) = entry.remove_entry();
            if let Some(job) = self.jobs.get_mut(&id) {
                job.due = None;
            }
            self.ready.push_back((id, generation));
        }
    }

    /// Forgets finished jobs whose TTL has passed.
    fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, generation), id) = entry.remove_entry();
            if self
                .jobs
                .get(&id)
                .is_some_and(|e| e.generation == generation)
            {
                self.jobs.remove(&id);
            }
        }
    }

    fn finish(&mut self, id: &JobId, status: JobStatus, ttl: Duration, now: Instant) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        let expires_at = now + ttl;
        entry.record.status = status;
        entry.record.finished_at = Some(SystemTime::now());
        entry.token = None;
        entry.expires_at = Some(expires_at);
        self.expiry
            .insert((expires_at, entry.generation), id.clone());
    }

    /// Takes a queued job out of the ready queue or the delayed set.
    fn unqueue(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        let generation = entry.generation;
        if let Some(due) = entry.due.take() {
            self.delayed.remove(&(due, generation));
        } else if let Some(pos) = self
            .ready
            .iter()
            .position(|(i, g)| *g == generation && i == id)
        {
            self.ready.remove(pos);
        }
        self.queued -= 1;
    }
}

impl Store for MemoryStore {
    type EnqueueFuture = Ready<Result<Enqueued, StoreError>>;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.purge(now);
        if let Some(entry) = state.jobs.get(&job.id) {
            if !entry.is_expired(now) && !entry.record.status.is_finished() {
                return ready(Ok(Enqueued::Existing));
            }
            // A finished job's id is reused: its expiry entry no longer matches a generation.
            if let Some(at) = entry.expires_at {
                let key = (at, entry.generation);
                state.expiry.remove(&key);
            }
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        state.ready.push_back((job.id.clone(), generation));
        state.queued += 1;
        state.jobs.insert(
            job.id.clone(),
            Entry {
                record: JobRecord::new(job),
                generation,
                token: None,
                due: None,
                expires_at: None,
            },
        );
        drop(guard);
        self.job_queued();
        ready(Ok(Enqueued::New))
    }

    async fn dequeue(&self, wait: Duration) -> Result<Option<Lease>, StoreError> {
        // Fast path: a job is ready, no need to register for a wake-up.
        match self.try_dequeue() {
            Ok(lease) => return Ok(Some(lease)),
            Err(_) if wait.is_zero() => return Ok(None),
            Err(_) => {}
        }
        let deadline = Instant::now() + wait;
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.inner.waiting);
        loop {
            let notified = self.inner.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = match self.try_dequeue() {
                Ok(lease) => return Ok(Some(lease)),
                Err(next_due) => next_due,
            };
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> Result<Settled, StoreError> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.purge(now);
        let Some(entry) = state.jobs.get_mut(lease.id()) else {
            return Ok(Settled::Stale);
        };
        if entry.lease_state(lease) == LeaseState::Lost {
            return Ok(Settled::Stale);
        }
        let settlement = if entry.record.cancel_requested {
            Settlement::Cancel
        } else {
            settlement
        };
        let status = match settlement {
            Settlement::Complete(result) => {
                entry.record.result = Some(result.into());
                entry.record.error = None;
                entry.record.payload = None;
                JobStatus::Completed
            }
            Settlement::Fail(error) => {
                entry.record.error = Some(error);
                JobStatus::Failed
            }
            Settlement::Quarantine(error) => {
                entry.record.error = Some(error);
                entry.record.quarantined = true;
                JobStatus::Failed
            }
            Settlement::Cancel => {
                entry.record.payload = None;
                JobStatus::Cancelled
            }
            Settlement::Retry { error, delay } => {
                entry.record.error = Some(error);
                entry.record.status = JobStatus::Queued;
                entry.token = None;
                let generation = entry.generation;
                if delay.is_zero() {
                    state.ready.push_back((lease.id().clone(), generation));
                } else {
                    let due = now + delay;
                    entry.due = Some(due);
                    state.delayed.insert((due, generation), lease.id().clone());
                }
                state.queued += 1;
                drop(guard);
                self.job_queued();
                return Ok(Settled::Applied(JobStatus::Queued));
            }
        };
        state.finish(lease.id(), status, result_ttl, now);
        Ok(Settled::Applied(status))
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        let mut state = self.lock();
        let Some(entry) = state.jobs.get_mut(lease.id()) else {
            return Ok(LeaseState::Lost);
        };
        let lease_state = entry.lease_state(lease);
        if lease_state != LeaseState::Lost {
            entry.record.progress = Some(progress.clone());
        }
        Ok(lease_state)
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        let state = self.lock();
        Ok(state
            .jobs
            .get(lease.id())
            .map_or(LeaseState::Lost, |entry| entry.lease_state(lease)))
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.purge(now);
        let Some(entry) = state.jobs.get_mut(id) else {
            return Ok(CancelOutcome::NotFound);
        };
        match entry.record.status {
            JobStatus::Queued => {
                entry.record.payload = None;
                state.unqueue(id);
                state.finish(id, JobStatus::Cancelled, result_ttl, now);
                Ok(CancelOutcome::Cancelled)
            }
            JobStatus::Running => {
                entry.record.cancel_requested = true;
                Ok(CancelOutcome::Stopping)
            }
            finished => Ok(CancelOutcome::AlreadyFinished(finished)),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(state
            .jobs
            .get(id)
            .filter(|entry| !entry.is_expired(now))
            .map(|entry| entry.record.clone()))
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        let mut matching: Vec<&Entry> = state
            .jobs
            .values()
            .filter(|entry| entry.record.status == status && !entry.is_expired(now))
            .collect();
        matching.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.generation));
        Ok(matching
            .into_iter()
            .take(limit)
            .map(|entry| entry.record.clone())
            .collect())
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        Ok(self.lock().queued)
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        if !status.is_finished() {
            return Ok(0);
        }
        let mut state = self.lock();
        let before = state.jobs.len();
        // Their expiry entries no longer match a job and are skipped by `purge`.
        state.jobs.retain(|_, entry| entry.record.status != status);
        Ok(before - state.jobs.len())
    }
}

/// Counts a waiting `dequeue` until it returns or is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("jobs", &state.jobs.len())
            .field("queued", &state.queued)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn enqueue(store: &MemoryStore, id: &str) -> Enqueued {
        store
            .enqueue(NewJob::new(JobId::from(id), &b"payload"[..]))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn expired_entries_of_a_reused_id_do_not_remove_the_new_job() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(10);
        assert_eq!(enqueue(&store, "a").await, Enqueued::New);
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let _ = store
            .settle(&lease, Settlement::Complete(vec![1]), ttl)
            .await
            .unwrap();
        // Reuse the finished id: a new generation.
        assert_eq!(enqueue(&store, "a").await, Enqueued::New);
        let record = store.get(&JobId::from("a")).await.unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Queued);
        assert_eq!(store.tracked_jobs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_for_its_backoff() {
        let store = MemoryStore::new();
        let _ = enqueue(&store, "a").await;
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let delay = Duration::from_secs(5);
        let settled = store
            .settle(
                &lease,
                Settlement::Retry {
                    error: "boom".into(),
                    delay,
                },
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(settled, Settled::Applied(JobStatus::Queued));
        assert_eq!(store.queued().await.unwrap(), 1);

        let start = Instant::now();
        assert!(store
            .dequeue(Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
        let lease = store
            .dequeue(Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert!(start.elapsed() >= delay);
        assert_eq!(lease.attempt(), 2);
    }

    #[tokio::test]
    async fn cancelling_a_waiting_retry_removes_it() {
        let store = MemoryStore::new();
        let _ = enqueue(&store, "a").await;
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let retry = Settlement::Retry {
            error: "boom".into(),
            delay: Duration::from_secs(3600),
        };
        let _ = store.settle(&lease, retry, Duration::from_secs(60)).await;
        let outcome = store
            .cancel(&JobId::from("a"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled);
        assert_eq!(store.queued().await.unwrap(), 0);
        assert!(store.lock().delayed.is_empty());
    }
}
