//! The in-process store: one mutex around an arena of jobs, an index by id, and queues.
//!
//! Hot-path layout (measured in `benches/queue.rs`): job records live in a slab (a `Vec`
//! with a free list) and everything but the id index refers to them by slot, so dequeue,
//! settle and expiry do not hash the id. A lease's token carries its slot. Finished jobs
//! expire in the order they finished (one result TTL per queue), so expiry pops from the
//! front of a `VecDeque` instead of searching a tree.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::{ready, Ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Enqueued, JobRecord, Lease, LeaseState, NewJob, Settled, Settlement, Store, StoreError,
};
use crate::queue::job::{CancelOutcome, JobId, JobStatus, Progress};

/// The id index's hasher: foldhash with a random per-map seed (what `hashbrown` uses by
/// default), several times faster than SipHash on 32-byte ids. Ids can be chosen by
/// clients (deduplication keys), so the seed stays random.
type IdHasher = foldhash::fast::RandomState;

/// The id index: slots, hashed by their job's id. A `HashTable` rather than a `HashMap`
/// so that each entry keeps its hash and expiry removes it by slot, without reading the
/// (by then cold) id again.
type Index = hashbrown::HashTable<Slot>;

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
    /// Outside the lock, so that ids are hashed before it is taken.
    hasher: IdHasher,
    /// Signalled when a job becomes queued, so that a waiting `dequeue` looks again.
    queued: Notify,
    /// `dequeue` calls waiting for `queued`: while none is, enqueueing skips the signal.
    waiting: AtomicUsize,
}

/// A slot of the arena, with the generation of the job in it.
type Slot = u32;

#[derive(Default)]
struct State {
    /// The live and finished-but-unexpired jobs, by id.
    index: Index,
    /// The arena: `None` for a free slot.
    slots: Vec<Option<Entry>>,
    /// Free slots, reused last-freed first (warm in cache).
    free: Vec<Slot>,
    /// Due queued jobs, oldest first, by (slot, generation).
    ready: VecDeque<(Slot, u64)>,
    /// Queued jobs waiting for a retry's backoff, by (due, generation).
    delayed: BTreeMap<(Instant, u64), Slot>,
    /// Finished jobs in the order they expire, by (expiry, slot, generation).
    expiry: VecDeque<(Instant, Slot, u64)>,
    /// Finished jobs that expire before the back of `expiry` (a shorter TTL than a job
    /// finished earlier: a store shared by queues with different TTLs), by
    /// (expiry, generation).
    expiry_early: BTreeMap<(Instant, u64), Slot>,
    next_generation: u64,
    next_token: u32,
    queued: usize,
}

struct Entry {
    record: JobRecord,
    /// The id's hash in `State::index`.
    hash: u64,
    /// Tells apart jobs that reuse a slot or a finished job's id.
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
        if self.record.status != JobStatus::Running
            || self.token != Some(lease.token())
            || self.record.id != *lease.id()
        {
            LeaseState::Lost
        } else if self.record.cancel_requested {
            LeaseState::CancelRequested
        } else {
            LeaseState::Active
        }
    }
}

/// A lease token: a per-store counter in the high half (so that each lease of a job
/// differs from the last), the job's slot in the low half.
fn token(counter: u32, slot: Slot) -> u64 {
    (u64::from(counter) << 32) | u64::from(slot)
}

fn token_slot(token: u64) -> Slot {
    // The low half, by construction.
    (token & u64::from(u32::MAX)) as Slot
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
        state.index.len()
    }

    fn hash(&self, id: &JobId) -> u64 {
        self.inner.hasher.hash_one(id.as_str())
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
        while let Some((slot, generation)) = state.ready.pop_front() {
            let counter = state.next_token;
            let Some(entry) = state.entry_mut(slot, generation) else {
                continue;
            };
            if entry.record.status != JobStatus::Queued {
                continue;
            }
            let Some(payload) = entry.record.payload.clone() else {
                continue;
            };
            let token = token(counter, slot);
            let started_at = SystemTime::now();
            entry.record.status = JobStatus::Running;
            entry.record.attempts += 1;
            entry.record.started_at = Some(started_at);
            entry.record.progress = None;
            entry.token = Some(token);
            let lease = Lease::new(
                entry.record.id.clone(),
                token,
                entry.record.attempts,
                payload,
                entry.record.enqueued_at,
            )
            .with_started_at(started_at);
            state.next_token = counter.wrapping_add(1);
            state.queued -= 1;
            return Ok(lease);
        }
        Err(state.delayed.first_key_value().map(|((due, _), _)| *due))
    }
}

impl State {
    /// The entry in `slot` if it still holds this generation.
    fn entry_mut(&mut self, slot: Slot, generation: u64) -> Option<&mut Entry> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|entry| entry.generation == generation)
    }

    /// The slot of the job with this id and hash.
    fn find(&self, id: &JobId, hash: u64) -> Option<Slot> {
        let slots = &self.slots;
        self.index
            .find(hash, |&slot| {
                slots[slot as usize]
                    .as_ref()
                    .is_some_and(|entry| entry.record.id == *id)
            })
            .copied()
    }

    /// The entry of the job with this id.
    fn get(&self, id: &JobId, hash: u64) -> Option<(Slot, &Entry)> {
        let slot = self.find(id, hash)?;
        let entry = self.slots.get(slot as usize)?.as_ref()?;
        Some((slot, entry))
    }

    /// The entry a lease refers to, if the lease is the job's current one (checked by
    /// [`Entry::lease_state`]).
    fn leased(&mut self, lease: &Lease) -> Option<&mut Entry> {
        self.slots
            .get_mut(token_slot(lease.token()) as usize)?
            .as_mut()
    }

    fn insert(&mut self, entry: Entry) -> Slot {
        let hash = entry.hash;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                let slot = Slot::try_from(self.slots.len())
                    .expect("more than 4 billion jobs tracked by one MemoryStore");
                self.slots.push(Some(entry));
                slot
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&slot| {
            slots[slot as usize].as_ref().map_or(0, |entry| entry.hash)
        });
        slot
    }

    /// Forgets the job in `slot` (index, arena).
    fn remove(&mut self, slot: Slot) {
        if let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            if let Ok(indexed) = self.index.find_entry(entry.hash, |&s| s == slot) {
                indexed.remove();
            }
            self.free.push(slot);
        }
    }

    /// Moves retries whose backoff has passed to the ready queue.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, generation), slot) = entry.remove_entry();
            if let Some(job) = self.entry_mut(slot, generation) {
                job.due = None;
            }
            self.ready.push_back((slot, generation));
        }
    }

    /// Forgets finished jobs whose TTL has passed.
    fn purge(&mut self, now: Instant) {
        while let Some(&(at, slot, generation)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            self.expire(slot, generation);
        }
        while let Some(entry) = self.expiry_early.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, generation), slot) = entry.remove_entry();
            self.expire(slot, generation);
        }
    }

    /// Removes the job in `slot` if it is still this generation and finished (a reused id
    /// or slot holds a newer generation, which stays).
    fn expire(&mut self, slot: Slot, generation: u64) {
        if self
            .entry_mut(slot, generation)
            .is_some_and(|entry| entry.expires_at.is_some())
        {
            self.remove(slot);
        }
    }

    fn finish(&mut self, slot: Slot, status: JobStatus, ttl: Duration, now: Instant) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let expires_at = now + ttl;
        entry.record.status = status;
        entry.record.finished_at = Some(SystemTime::now());
        entry.token = None;
        entry.expires_at = Some(expires_at);
        let generation = entry.generation;
        match self.expiry.back() {
            Some(&(last, _, _)) if expires_at < last => {
                self.expiry_early.insert((expires_at, generation), slot);
            }
            _ => self.expiry.push_back((expires_at, slot, generation)),
        }
    }

    /// Takes a queued job out of the ready queue or the delayed set.
    fn unqueue(&mut self, slot: Slot) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let generation = entry.generation;
        if let Some(due) = entry.due.take() {
            self.delayed.remove(&(due, generation));
        } else if let Some(pos) = self
            .ready
            .iter()
            .position(|&(s, g)| s == slot && g == generation)
        {
            self.ready.remove(pos);
        }
        self.queued -= 1;
    }
}

impl Store for MemoryStore {
    type EnqueueFuture = Ready<Result<Enqueued, StoreError>>;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        // Built before the lock is taken.
        let hash = self.hash(&job.id);
        let mut entry = Entry {
            record: JobRecord::new(job),
            hash,
            generation: 0,
            token: None,
            due: None,
            expires_at: None,
        };
        // Expired records are removed here (and on cancel), not when a job settles: the
        // workers' dispatcher sets the pace of a busy queue, and callers have time to spare.
        // Records only expire after jobs finish, and every enqueue purges, so they stay
        // bounded; reads skip expired records.
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.purge(now);
        let generation = state.next_generation;
        state.next_generation += 1;
        entry.generation = generation;
        let existing = state.find(&entry.record.id, hash);
        let slot = match existing {
            Some(slot) => {
                let Some(old) = state.slots[slot as usize].as_mut() else {
                    unreachable!("an indexed slot holds a job")
                };
                if !old.record.status.is_finished() {
                    return ready(Ok(Enqueued::Existing));
                }
                // A finished job's id is reused, in the same slot: its expiry entry no
                // longer matches the slot's generation and is skipped.
                if let Some(at) = old.expires_at {
                    state.expiry_early.remove(&(at, old.generation));
                }
                *old = entry;
                slot
            }
            None => state.insert(entry),
        };
        state.ready.push_back((slot, generation));
        state.queued += 1;
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
        let Some(entry) = state.leased(lease) else {
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
                entry.record.result = Some(result);
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
                let slot = token_slot(lease.token());
                if delay.is_zero() {
                    state.ready.push_back((slot, generation));
                } else {
                    let due = now + delay;
                    entry.due = Some(due);
                    state.delayed.insert((due, generation), slot);
                }
                state.queued += 1;
                drop(guard);
                self.job_queued();
                return Ok(Settled::Applied(JobStatus::Queued));
            }
        };
        state.finish(token_slot(lease.token()), status, result_ttl, now);
        Ok(Settled::Applied(status))
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        let mut state = self.lock();
        let Some(entry) = state.leased(lease) else {
            return Ok(LeaseState::Lost);
        };
        let lease_state = entry.lease_state(lease);
        if lease_state != LeaseState::Lost {
            entry.record.progress = Some(progress.clone());
        }
        Ok(lease_state)
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        let mut state = self.lock();
        Ok(state
            .leased(lease)
            .map_or(LeaseState::Lost, |entry| entry.lease_state(lease)))
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        let now = Instant::now();
        let hash = self.hash(id);
        let mut guard = self.lock();
        let state = &mut *guard;
        state.purge(now);
        let Some((slot, entry)) = state.get(id, hash) else {
            return Ok(CancelOutcome::NotFound);
        };
        match entry.record.status {
            JobStatus::Queued => {
                state.unqueue(slot);
                if let Some(entry) = state.slots[slot as usize].as_mut() {
                    entry.record.payload = None;
                }
                state.finish(slot, JobStatus::Cancelled, result_ttl, now);
                Ok(CancelOutcome::Cancelled)
            }
            JobStatus::Running => {
                if let Some(entry) = state.slots[slot as usize].as_mut() {
                    entry.record.cancel_requested = true;
                }
                Ok(CancelOutcome::Stopping)
            }
            finished => Ok(CancelOutcome::AlreadyFinished(finished)),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = Instant::now();
        let hash = self.hash(id);
        let state = self.lock();
        Ok(state
            .get(id, hash)
            .filter(|(_, entry)| !entry.is_expired(now))
            .map(|(_, entry)| entry.record.clone()))
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        let mut matching: Vec<&Entry> = state
            .slots
            .iter()
            .flatten()
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
        let mut guard = self.lock();
        let state = &mut *guard;
        // Their expiry entries no longer match a generation and are skipped by `purge`.
        let matching: Vec<Slot> = state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.as_ref().is_some_and(|e| e.record.status == status))
            .map(|(slot, _)| slot as Slot)
            .collect();
        for &slot in &matching {
            state.remove(slot);
        }
        Ok(matching.len())
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
            .field("jobs", &state.index.len())
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
            .settle(&lease, Settlement::Complete(vec![1].into()), ttl)
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

    #[tokio::test(start_paused = true)]
    async fn a_shorter_ttl_after_a_longer_one_still_expires_on_time() {
        let store = MemoryStore::new();
        for (id, ttl) in [("long", 60), ("short", 10)] {
            let _ = enqueue(&store, id).await;
            let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
            let ttl = Duration::from_secs(ttl);
            let _ = store
                .settle(&lease, Settlement::Complete(vec![1].into()), ttl)
                .await;
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.tracked_jobs(), 1);
        assert!(store.get(&JobId::from("short")).await.unwrap().is_none());
        assert!(store.get(&JobId::from("long")).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(store.tracked_jobs(), 0);
    }

    #[tokio::test]
    async fn a_lease_on_a_reused_slot_is_stale() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(10);
        let _ = enqueue(&store, "a").await;
        let first = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let _ = store
            .settle(&first, Settlement::Complete(vec![1].into()), ttl)
            .await;
        let _ = store.clear(JobStatus::Completed).await.unwrap();
        // "b" takes the slot "a" had.
        let _ = enqueue(&store, "b").await;
        let second = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(second.id().as_str(), "b");
        let settled = store
            .settle(&first, Settlement::Fail("late".into()), ttl)
            .await;
        assert_eq!(settled.unwrap(), Settled::Stale);
        assert_eq!(store.renew(&first).await.unwrap(), LeaseState::Lost);
        assert_eq!(store.renew(&second).await.unwrap(), LeaseState::Active);
    }
}
