//! The in-process store: the live jobs (queued and running) behind one mutex, an archive
//! of finished ones behind another, and an inbox for new jobs.
//!
//! Hot-path layout (measured in `benches/queue.rs`):
//!
//! - **Live jobs** live in a slab (a `Vec` with a free list) with an index by id; the ready
//!   queue, the retry set and leases refer to them by slot, so dequeue and settle do not
//!   hash the id. A lease's token carries its slot. The slab holds only queued and running
//!   jobs, so it stays small and warm in cache however many jobs have finished.
//! - **New jobs with generated ids** (no dedup to check) go to an inbox, a `Vec` behind a
//!   lock of its own held only for a push or a swap. Whoever next takes the live lock
//!   moves the inbox in first, so every read sees every job enqueued before it. Callers
//!   enqueueing thus never wait for a dispatcher that holds the live lock while it settles
//!   and takes a batch of jobs, and the dispatcher reads new jobs from one contiguous
//!   buffer. Jobs with application ids take the live lock (after the inbox is moved in,
//!   so FIFO order holds).
//! - **Finished jobs** move to an [`Archive`], behind its own lock (taken before the live
//!   lock is released, so a reader taking both in order always finds a job in one of
//!   them): per result TTL, a run of generations, each the jobs finished within an eighth
//!   of the TTL, with an index of its own. A generation is dropped whole once its last job
//!   has expired, instead of one record at a time from a large index, and it is dropped
//!   after the lock is released. Reads skip records whose TTL has passed, so a job is
//!   visible for exactly its TTL; its memory is given back within an eighth of the TTL
//!   after that.
//! - Enqueue looks an id up among live jobs only, and not at all when the queue generated
//!   it ([`NewJob::generated_id`]). A finished job's id can be reused: lookups take an
//!   id's newest record, which shadows older ones until their generation goes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::{ready, Ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Enqueued, JobRecord, Lease, LeaseState, NewJob, Settled, SettledThenTaken, Settlement, Store,
    StoreError,
};
use crate::queue::job::{CancelOutcome, JobId, JobStatus, Progress};

/// The id indexes' hasher: foldhash with a random per-map seed (what `hashbrown` uses by
/// default), several times faster than SipHash on 32-byte ids. Ids can be chosen by
/// clients (deduplication keys), so the seed stays random.
type IdHasher = foldhash::fast::RandomState;

/// An id index: positions (slab slots, or places in a generation), hashed by their job's
/// id. A `HashTable` rather than a `HashMap` so that each entry's hash is kept beside the
/// record and removal goes by position, without hashing the id again.
type Index = hashbrown::HashTable<u32>;

/// How many generations a result TTL is cut into: the archive holds a finished job's
/// memory for at most this fraction of the TTL past its expiry.
const GENERATIONS_PER_TTL: u32 = 8;
/// The shortest time a generation takes jobs for, so that a tiny TTL does not make a
/// generation per job.
const MIN_GENERATION_SPAN: Duration = Duration::from_millis(1);
/// Enqueues of generated ids purge expired generations once in this many (each other
/// enqueue, cancel and `tracked_jobs` purges every time).
const PURGE_EVERY: usize = 64;

/// A [`Store`] in this process's memory: the default store of a
/// [`Queue`](crate::queue::Queue).
///
/// Jobs do not outlive the process, and its leases never expire (a worker that could die
/// takes the store with it). A finished job is visible for its result TTL and then
/// forgotten; its memory is given back, with the other jobs that finished around the same
/// time, at most an eighth of the TTL later. So memory stays bounded by the capacity plus
/// the jobs finished within 9/8 of a TTL. Expiry is measured on Tokio's clock, so tests can
/// use paused time.
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
    /// The live jobs. Taken before `archive` by whoever needs both.
    state: Mutex<State>,
    /// The finished jobs: a lock of their own, so that moving a dispatcher's finished jobs
    /// there does not hold up callers enqueueing. A job moves from `state` to `archive`
    /// with `archive` taken before `state` is released, so a reader that takes both in
    /// that order always finds it in one of them.
    archive: Mutex<Archive>,
    /// New jobs with ids the queue generated (no dedup to check), pushed here without
    /// taking `state`'s lock and moved into `state` by whoever takes it next: callers
    /// enqueueing do not wait for a dispatcher that holds `state`, nor it for them.
    inbox: Mutex<Vec<Entry>>,
    /// Whether the inbox holds jobs, written under its lock: `lock` skips the inbox's lock
    /// when it is empty. A reader that learned of a job (its own enqueue returned, or
    /// another thread told it) sees the flag set, so it never misses the job.
    inbox_full: AtomicBool,
    /// Enqueues of generated ids, counted so that only every [`PURGE_EVERY`]th purges.
    inbox_pushes: AtomicUsize,
    /// Outside the locks, so that ids are hashed before one is taken.
    hasher: IdHasher,
    /// Signalled when a job becomes queued, so that a waiting `dequeue` looks again.
    queued: Notify,
    /// `dequeue` calls waiting for `queued`: while none is, enqueueing skips the signal.
    waiting: AtomicUsize,
}

/// A slot of the live slab.
type Slot = u32;

#[derive(Default)]
struct State {
    /// The queued and running jobs, by id.
    index: Index,
    /// The live slab: `None` for a free slot.
    slots: Vec<Option<Entry>>,
    /// Free slots, reused last-freed first (warm in cache).
    free: Vec<Slot>,
    /// Due queued jobs, oldest first, by (slot, sequence).
    ready: VecDeque<(Slot, u64)>,
    /// Queued jobs waiting for a retry's backoff, by (due, sequence).
    delayed: BTreeMap<(Instant, u64), Slot>,
    /// Numbers jobs in the order they were enqueued (for `list`), and tells apart jobs
    /// that reuse a slot.
    next_sequence: u64,
    next_token: u32,
    queued: usize,
    /// The inbox's other buffer (see `Inner::inbox`).
    arrived: Vec<Entry>,
}

/// A queued or running job.
struct Entry {
    record: JobRecord,
    /// The id's hash.
    hash: u64,
    sequence: u64,
    /// The current lease's token, while running.
    token: Option<u64>,
    /// Set while waiting in `delayed`.
    due: Option<Instant>,
    /// The record's `started_at` before the current lease, restored if it is given back
    /// ([`Settlement::Release`]).
    previous_start: Option<SystemTime>,
}

impl Entry {
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

/// Finished jobs, kept for their result TTL.
///
/// One [`Lane`] per distinct TTL (a store shared by queues with different TTLs has a few),
/// so that within a lane jobs expire in the order they finished and a generation's expiry
/// is that of its last job.
#[derive(Default)]
struct Archive {
    lanes: Vec<Lane>,
    /// Records held (expired ones included until their generation is dropped).
    records: usize,
    /// An expired generation, emptied, whose memory the next generation reuses: a busy
    /// queue then neither grows a generation's buffers nor has the kernel hand it new
    /// pages each time.
    spare: Option<Generation>,
}

struct Lane {
    ttl: Duration,
    /// Oldest first.
    generations: VecDeque<Generation>,
}

struct Generation {
    /// When it started taking jobs.
    opened: Instant,
    /// When its last job expires: then the whole generation goes.
    expires: Instant,
    /// `None` where a record was removed (its id reused, or cleared).
    records: Vec<Option<Finished>>,
    index: Index,
}

struct Finished {
    record: JobRecord,
    hash: u64,
    sequence: u64,
    expires_at: Instant,
}

impl Finished {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at <= now
    }
}

/// Where an archived record is: lane, generation, position.
#[derive(Clone, Copy)]
struct Place {
    lane: usize,
    generation: usize,
    position: u32,
}

impl Generation {
    fn new(opened: Instant, capacity: usize) -> Self {
        Self {
            opened,
            expires: opened,
            records: Vec::with_capacity(capacity),
            index: Index::with_capacity(capacity),
        }
    }

    /// Reuses an emptied generation's memory.
    fn reopen(mut self, opened: Instant) -> Self {
        debug_assert!(self.records.is_empty() && self.index.is_empty());
        self.opened = opened;
        self.expires = opened;
        self
    }

    /// The position of this id's newest record here (a reused id can have several).
    fn find(&self, id: &JobId, hash: u64) -> Option<u32> {
        let records = &self.records;
        self.index
            .iter_hash(hash)
            .filter_map(|&position| {
                let finished = records[position as usize].as_ref()?;
                (finished.record.id == *id).then_some((finished.sequence, position))
            })
            .max()
            .map(|(_, position)| position)
    }
}

impl Archive {
    /// Keeps a finished job until `finished.expires_at`.
    fn push(&mut self, finished: Finished, ttl: Duration, now: Instant) {
        let lane = match self.lanes.iter().position(|lane| lane.ttl == ttl) {
            Some(lane) => lane,
            None => {
                self.lanes.push(Lane {
                    ttl,
                    generations: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
        };
        let lane = &mut self.lanes[lane];
        let span = (ttl / GENERATIONS_PER_TTL).max(MIN_GENERATION_SPAN);
        if lane
            .generations
            .back()
            .is_none_or(|current| now.saturating_duration_since(current.opened) >= span)
        {
            // Sized like the last one: a steady queue fills each about as much.
            let generation = match self.spare.take() {
                Some(spare) => spare.reopen(now),
                None => {
                    Generation::new(now, lane.generations.back().map_or(0, |g| g.records.len()))
                }
            };
            lane.generations.push_back(generation);
        }
        let Some(current) = lane.generations.back_mut() else {
            unreachable!("a generation was just opened")
        };
        let Ok(position) = u32::try_from(current.records.len()) else {
            // More than 4 billion jobs finished within one generation: keep the record
            // out of the index (it cannot be found, and expires with the generation).
            return;
        };
        current.expires = current.expires.max(finished.expires_at);
        let hash = finished.hash;
        current.records.push(Some(finished));
        let records = &current.records;
        current.index.insert_unique(hash, position, |&position| {
            records[position as usize]
                .as_ref()
                .map_or(0, |finished| finished.hash)
        });
        self.records += 1;
    }

    /// The newest record of this id (an id reused after its job finished can have older
    /// records, which it shadows).
    fn find(&self, id: &JobId, hash: u64) -> Option<Place> {
        let mut newest: Option<(u64, Place)> = None;
        for (lane_at, lane) in self.lanes.iter().enumerate() {
            // Within a lane, a later generation holds later jobs.
            let found = lane
                .generations
                .iter()
                .enumerate()
                .rev()
                .find_map(|(at, generation)| Some((at, generation.find(id, hash)?)));
            if let Some((generation_at, position)) = found {
                let place = Place {
                    lane: lane_at,
                    generation: generation_at,
                    position,
                };
                let sequence = self.get(place).map_or(0, |finished| finished.sequence);
                if newest.is_none_or(|(newest, _)| sequence > newest) {
                    newest = Some((sequence, place));
                }
            }
        }
        newest.map(|(_, place)| place)
    }

    fn get(&self, place: Place) -> Option<&Finished> {
        self.lanes
            .get(place.lane)?
            .generations
            .get(place.generation)?
            .records
            .get(place.position as usize)?
            .as_ref()
    }

    fn remove(&mut self, place: Place) {
        let Some(generation) = self
            .lanes
            .get_mut(place.lane)
            .and_then(|lane| lane.generations.get_mut(place.generation))
        else {
            return;
        };
        let Some(finished) = generation
            .records
            .get_mut(place.position as usize)
            .and_then(Option::take)
        else {
            return;
        };
        if let Ok(indexed) = generation
            .index
            .find_entry(finished.hash, |&position| position == place.position)
        {
            indexed.remove();
        }
        self.records -= 1;
    }

    /// Takes out the generations whose every job has expired, for the caller to hand to
    /// [`MemoryStore::recycle`] once it has released the archive lock.
    fn purge(&mut self, now: Instant) -> Vec<Generation> {
        let mut expired = Vec::new();
        for lane in &mut self.lanes {
            while lane
                .generations
                .front()
                .is_some_and(|oldest| oldest.expires <= now)
            {
                if let Some(oldest) = lane.generations.pop_front() {
                    self.records -= oldest.records.iter().flatten().count();
                    expired.push(oldest);
                }
            }
        }
        if !expired.is_empty() {
            self.lanes.retain(|lane| !lane.generations.is_empty());
        }
        expired
    }

    fn iter(&self) -> impl Iterator<Item = &Finished> {
        self.lanes
            .iter()
            .flat_map(|lane| &lane.generations)
            .flat_map(|generation| generation.records.iter().flatten())
    }

    /// Where every record with this status is.
    fn places(&self, status: JobStatus) -> Vec<Place> {
        let mut places = Vec::new();
        for (lane_at, lane) in self.lanes.iter().enumerate() {
            for (generation_at, generation) in lane.generations.iter().enumerate() {
                for (position, finished) in generation.records.iter().enumerate() {
                    if finished
                        .as_ref()
                        .is_some_and(|finished| finished.record.status == status)
                    {
                        places.push(Place {
                            lane: lane_at,
                            generation: generation_at,
                            position: position as u32,
                        });
                    }
                }
            }
        }
        places
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many job records the store holds: queued, running, and finished ones whose
    /// memory has not been given back yet (at most an eighth of the TTL after they
    /// expired; expired ones are never returned).
    pub fn tracked_jobs(&self) -> usize {
        let (state, mut archive) = self.lock_both();
        let expired = archive.purge(Instant::now());
        let tracked = state.index.len() + archive.records;
        drop((state, archive));
        self.recycle(expired);
        tracked
    }

    /// Frees the records of expired generations outside the lock (a generation can hold
    /// many), then keeps one emptied generation for the archive to reuse.
    fn recycle(&self, expired: Vec<Generation>) {
        let Some(mut spare) = expired.into_iter().next_back() else {
            return;
        };
        spare.records.clear();
        spare.index.clear();
        let mut archive = self.lock_archive();
        if archive.spare.is_none() {
            archive.spare = Some(spare);
        }
    }

    fn hash(&self, id: &JobId) -> u64 {
        self.inner.hasher.hash_one(id.as_str())
    }

    fn lock_archive(&self) -> MutexGuard<'_, Archive> {
        // As for `lock`.
        self.inner
            .archive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes out expired generations and frees them, unless the archive is busy (a
    /// dispatcher is moving finished jobs in). Called on enqueue (see [`PURGE_EVERY`]),
    /// not when a job settles: the workers' dispatcher sets the pace of a busy queue, and
    /// callers have time to spare. Finished jobs only expire after they finish, and
    /// enqueues keep purging, so they stay bounded; reads skip expired records.
    fn purge(&self) {
        let expired = match self.inner.archive.try_lock() {
            Ok(mut archive) => archive.purge(Instant::now()),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().purge(Instant::now()),
            Err(TryLockError::WouldBlock) => return,
        };
        self.recycle(expired);
    }

    /// Both locks, in their order.
    fn lock_both(&self) -> (MutexGuard<'_, State>, MutexGuard<'_, Archive>) {
        let state = self.lock();
        (state, self.lock_archive())
    }

    /// Moves finished jobs to the archive: its lock is taken before `state`'s is released.
    fn archive(
        &self,
        state: MutexGuard<'_, State>,
        finished: impl IntoIterator<Item = Finished>,
        ttl: Duration,
        now: Instant,
    ) {
        let mut finished = finished.into_iter().peekable();
        if finished.peek().is_none() {
            return;
        }
        let mut archive = self.lock_archive();
        drop(state);
        for finished in finished {
            archive.push(finished, ttl, now);
        }
    }

    /// The live jobs, with the inbox moved in: everything enqueued so far is there.
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, and every transition leaves the state
        // consistent before any call that could; so a poisoned lock is still sound.
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state_ref = &mut *state;
        if !self.inner.inbox_full.load(Ordering::Acquire) {
            return state;
        }
        {
            let mut inbox = self
                .inner
                .inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // The emptied buffer of the last move goes back, so neither side allocates.
            std::mem::swap(&mut *inbox, &mut state_ref.arrived);
            self.inner.inbox_full.store(false, Ordering::Release);
        }
        let mut arrived = std::mem::take(&mut state_ref.arrived);
        for entry in arrived.drain(..) {
            state_ref.admit(entry);
        }
        state_ref.arrived = arrived;
        state
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
        self.lock().take_next(SystemTime::now())
    }
}

impl State {
    /// Whether `finished` is its id's current record: not shadowed by a newer job with
    /// the same id, live or finished.
    fn is_current(&self, archive: &Archive, finished: &Finished) -> bool {
        let id = &finished.record.id;
        self.find(id, finished.hash).is_none()
            && archive
                .find(id, finished.hash)
                .and_then(|place| archive.get(place))
                .is_some_and(|newest| newest.sequence == finished.sequence)
    }

    /// Queues a new job.
    fn admit(&mut self, mut entry: Entry) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        entry.sequence = sequence;
        let due = entry.due;
        let slot = self.insert(entry);
        match due {
            Some(due) => {
                self.delayed.insert((due, sequence), slot);
            }
            None => self.ready.push_back((slot, sequence)),
        }
        self.queued += 1;
    }

    /// Takes the oldest due job (started at `started_at`), or says when the next retry is
    /// due.
    fn take_next(&mut self, started_at: SystemTime) -> Result<Lease, Option<Instant>> {
        if !self.delayed.is_empty() {
            self.promote_due(Instant::now());
        }
        while let Some((slot, sequence)) = self.ready.pop_front() {
            let counter = self.next_token;
            let Some(entry) = self.entry_mut(slot, sequence) else {
                continue;
            };
            if entry.record.status != JobStatus::Queued {
                continue;
            }
            let Some(payload) = entry.record.payload.clone() else {
                continue;
            };
            let token = token(counter, slot);
            entry.record.status = JobStatus::Running;
            entry.record.attempts += 1;
            entry.previous_start = entry.record.started_at.replace(started_at);
            entry.record.progress = None;
            entry.token = Some(token);
            let lease = Lease::new(
                entry.record.id.clone(),
                token,
                entry.record.attempts,
                payload,
                entry.record.enqueued_at,
            )
            .with_started_at(started_at)
            .with_generation(u64::from(counter) + 1);
            self.next_token = counter.wrapping_add(1);
            self.queued -= 1;
            return Ok(lease);
        }
        Err(self.delayed.first_key_value().map(|((due, _), _)| *due))
    }

    /// Applies a settlement at `now` (`wall` on the system clock); also says whether the
    /// job was queued again (a retry, or given back), and returns the job if it finished,
    /// for the archive.
    fn settle(
        &mut self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> (Settled, bool, Option<Finished>) {
        let Some(entry) = self.leased(lease) else {
            return (Settled::Stale, false, None);
        };
        if entry.lease_state(lease) == LeaseState::Lost {
            return (Settled::Stale, false, None);
        }
        let settlement = if entry.record.cancel_requested {
            if matches!(settlement, Settlement::Release) {
                // Given back before it started: it never ran.
                entry.record.attempts = entry.record.attempts.saturating_sub(1);
                entry.record.started_at = entry.previous_start;
            }
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
                let sequence = entry.sequence;
                let slot = token_slot(lease.token());
                if delay.is_zero() {
                    self.ready.push_back((slot, sequence));
                } else {
                    let due = now + delay;
                    entry.due = Some(due);
                    self.delayed.insert((due, sequence), slot);
                }
                self.queued += 1;
                return (Settled::Applied(JobStatus::Queued), true, None);
            }
            Settlement::Release => {
                entry.record.status = JobStatus::Queued;
                entry.record.attempts = entry.record.attempts.saturating_sub(1);
                entry.record.started_at = entry.previous_start;
                entry.token = None;
                let sequence = entry.sequence;
                self.ready.push_front((token_slot(lease.token()), sequence));
                self.queued += 1;
                return (Settled::Applied(JobStatus::Queued), true, None);
            }
        };
        let finished = self.finish(token_slot(lease.token()), status, result_ttl, now, wall);
        (Settled::Applied(status), false, finished)
    }

    /// The live entry in `slot` if it still holds this job.
    fn entry_mut(&mut self, slot: Slot, sequence: u64) -> Option<&mut Entry> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|entry| entry.sequence == sequence)
    }

    /// The slot of the live job with this id and hash.
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

    /// The live entry a lease refers to, if the lease is the job's current one (checked by
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
                    .expect("more than 4 billion live jobs in one MemoryStore");
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

    /// Takes the live job in `slot` out of the slab and the index.
    fn take(&mut self, slot: Slot) -> Option<Entry> {
        let entry = self.slots.get_mut(slot as usize).and_then(Option::take)?;
        if let Ok(indexed) = self.index.find_entry(entry.hash, |&s| s == slot) {
            indexed.remove();
        }
        self.free.push(slot);
        Some(entry)
    }

    /// Moves retries whose backoff has passed to the ready queue.
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, sequence), slot) = entry.remove_entry();
            if let Some(job) = self.entry_mut(slot, sequence) {
                job.due = None;
            }
            self.ready.push_back((slot, sequence));
        }
    }

    /// Ends the live job in `slot` with a final status and takes it out, for the archive.
    fn finish(
        &mut self,
        slot: Slot,
        status: JobStatus,
        ttl: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Finished> {
        let mut entry = self.take(slot)?;
        entry.record.status = status;
        entry.record.finished_at = Some(wall);
        let finished = Finished {
            record: entry.record,
            hash: entry.hash,
            sequence: entry.sequence,
            expires_at: now + ttl,
        };
        Some(finished)
    }

    /// Takes a queued job out of the ready queue or the retry set.
    fn unqueue(&mut self, slot: Slot) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let sequence = entry.sequence;
        if let Some(due) = entry.due.take() {
            self.delayed.remove(&(due, sequence));
        } else if let Some(pos) = self
            .ready
            .iter()
            .position(|&(s, q)| s == slot && q == sequence)
        {
            self.ready.remove(pos);
        }
        self.queued -= 1;
    }
}

impl Store for MemoryStore {
    type EnqueueFuture = Ready<Result<Enqueued, StoreError>>;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        // Built before any lock is taken.
        let hash = self.hash(&job.id);
        let generated_id = job.generated_id;
        // A delayed job waits with the retries, on the store's (Tokio) clock.
        let due = job
            .not_before
            .and_then(|time| time.duration_since(SystemTime::now()).ok())
            .filter(|delay| !delay.is_zero())
            .map(|delay| Instant::now() + delay);
        let entry = Entry {
            record: JobRecord::new(job),
            hash,
            sequence: 0,
            token: None,
            due,
            previous_start: None,
        };
        let purge = if generated_id {
            // No other job has this id: no lookup, so no need for `state`'s lock.
            let mut inbox = self
                .inner
                .inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            inbox.push(entry);
            self.inner.inbox_full.store(true, Ordering::Release);
            drop(inbox);
            // Purging reads the clock: a busy queue does it every so many jobs.
            self.inner
                .inbox_pushes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PURGE_EVERY)
        } else {
            let mut state = self.lock();
            // Only live jobs count for dedup. A finished job's id may be reused, and the
            // archive is not searched for it here (that is a lookup per generation): the
            // new job shadows the old record, since lookups take an id's newest record,
            // and the old one goes with its generation.
            if state.find(&entry.record.id, hash).is_some() {
                return ready(Ok(Enqueued::Existing));
            }
            // Jobs in the inbox were moved in by `lock`: FIFO order holds.
            state.admit(entry);
            true
        };
        self.job_queued();
        if purge {
            self.purge();
        }
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
        let wall = SystemTime::now();
        let mut state = self.lock();
        let (settled, requeued, finished) = state.settle(lease, settlement, result_ttl, now, wall);
        self.archive(state, finished, result_ttl, now);
        if requeued {
            self.job_queued();
        }
        Ok(settled)
    }

    async fn settle_then_dequeue(
        &self,
        ended: &[(Lease, Settlement)],
        result_ttl: Duration,
        max: usize,
    ) -> SettledThenTaken {
        let mut settled = Vec::with_capacity(ended.len());
        let mut finished = Vec::with_capacity(ended.len());
        let mut taken = Vec::with_capacity(max);
        let mut requeued = false;
        // One reading of each clock: the settled jobs finish when the next ones start.
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        for (lease, settlement) in ended {
            let (applied, again, done) =
                state.settle(lease, settlement.clone(), result_ttl, now, wall);
            requeued |= again;
            settled.push(Ok(applied));
            finished.extend(done);
        }
        while taken.len() < max {
            match state.take_next(wall) {
                Ok(lease) => taken.push(lease),
                Err(_) => break,
            }
        }
        self.archive(state, finished, result_ttl, now);
        if requeued {
            // Another dispatcher may take a retry, or a job given back.
            self.job_queued();
        }
        (settled, Ok(taken))
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
        let (mut guard, mut archive) = self.lock_both();
        let state = &mut *guard;
        let expired = archive.purge(now);
        let outcome = match state.find(id, hash) {
            Some(slot) => match state.slots[slot as usize].as_mut() {
                Some(entry) if entry.record.status == JobStatus::Queued => {
                    entry.record.payload = None;
                    state.unqueue(slot);
                    let wall = SystemTime::now();
                    if let Some(finished) =
                        state.finish(slot, JobStatus::Cancelled, result_ttl, now, wall)
                    {
                        archive.push(finished, result_ttl, now);
                    }
                    CancelOutcome::Cancelled
                }
                Some(entry) => {
                    entry.record.cancel_requested = true;
                    CancelOutcome::Stopping
                }
                None => unreachable!("an indexed slot holds a job"),
            },
            None => match archive
                .find(id, hash)
                .and_then(|place| archive.get(place))
                .filter(|finished| !finished.is_expired(now))
            {
                Some(finished) => CancelOutcome::AlreadyFinished(finished.record.status),
                None => CancelOutcome::NotFound,
            },
        };
        drop((guard, archive));
        self.recycle(expired);
        Ok(outcome)
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = Instant::now();
        let hash = self.hash(id);
        let state = self.lock();
        if let Some(slot) = state.find(id, hash) {
            return Ok(state.slots[slot as usize]
                .as_ref()
                .map(|entry| entry.record.clone()));
        }
        // Taken while `state` is held: a job moving to the archive is found there.
        let archive = self.lock_archive();
        drop(state);
        Ok(archive
            .find(id, hash)
            .and_then(|place| archive.get(place))
            .filter(|finished| !finished.is_expired(now))
            .map(|finished| finished.record.clone()))
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let now = Instant::now();
        let (state, archive) = self.lock_both();
        let mut matching: Vec<(u64, &JobRecord)> = if status.is_finished() {
            archive
                .iter()
                .filter(|finished| {
                    finished.record.status == status
                        && !finished.is_expired(now)
                        && state.is_current(&archive, finished)
                })
                .map(|finished| (finished.sequence, &finished.record))
                .collect()
        } else {
            state
                .slots
                .iter()
                .flatten()
                .filter(|entry| entry.record.status == status)
                .map(|entry| (entry.sequence, &entry.record))
                .collect()
        };
        matching.sort_unstable_by_key(|&(sequence, _)| std::cmp::Reverse(sequence));
        Ok(matching
            .into_iter()
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect())
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        Ok(self.lock().queued)
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        if !status.is_finished() {
            return Ok(0);
        }
        let now = Instant::now();
        let (state, mut archive) = self.lock_both();
        let mut cleared = 0;
        // Shadowed records (of a reused id) go too, but only current ones are counted.
        let places = archive.places(status);
        for &place in &places {
            if archive.get(place).is_some_and(|finished| {
                !finished.is_expired(now) && state.is_current(&archive, finished)
            }) {
                cleared += 1;
            }
        }
        for place in places {
            archive.remove(place);
        }
        Ok(cleared)
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
        let (state, archive) = self.lock_both();
        f.debug_struct("MemoryStore")
            .field("live", &state.index.len())
            .field("queued", &state.queued)
            .field("finished", &archive.records)
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
        // The old record is held, shadowed, until its generation goes.
        assert_eq!(store.tracked_jobs(), 2);
        assert!(store
            .list(JobStatus::Completed, 10)
            .await
            .unwrap()
            .is_empty());
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

    async fn complete(store: &MemoryStore, id: &str, ttl: Duration) {
        let _ = enqueue(store, id).await;
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(lease.id().as_str(), id);
        let settled = store
            .settle(&lease, Settlement::Complete(vec![1].into()), ttl)
            .await
            .unwrap();
        assert_eq!(settled, Settled::Applied(JobStatus::Completed));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_jobs_are_visible_for_their_ttl_and_freed_by_generation() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(80); // generations of 10 s
        complete(&store, "a", ttl).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        complete(&store, "b", ttl).await; // same generation as "a"
        tokio::time::advance(Duration::from_secs(10)).await;
        complete(&store, "c", ttl).await; // the next generation
        assert_eq!(store.lock_archive().lanes[0].generations.len(), 2);

        // 80 s after "a" finished: "a" is gone for readers, but its generation (which
        // "b" keeps) is not freed yet.
        tokio::time::advance(Duration::from_secs(65)).await;
        assert!(store.get(&JobId::from("a")).await.unwrap().is_none());
        assert_eq!(
            store.cancel(&JobId::from("a"), ttl).await.unwrap(),
            CancelOutcome::NotFound
        );
        assert!(store.list(JobStatus::Completed, 10).await.unwrap().len() == 2);
        assert_eq!(store.tracked_jobs(), 3);

        // "b" expired: its generation, with "a", is freed whole.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.tracked_jobs(), 1);
        assert!(store.get(&JobId::from("c")).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(store.tracked_jobs(), 0);
        assert!(store.lock_archive().lanes.is_empty());
    }

    #[tokio::test]
    async fn a_reused_id_replaces_its_finished_record() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        let _ = enqueue(&store, "a").await;
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let _ = store
            .settle(&lease, Settlement::Fail("old".into()), ttl)
            .await;
        complete(&store, "a", ttl).await;
        let record = store.get(&JobId::from("a")).await.unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Completed);
        assert_eq!(store.list(JobStatus::Completed, 10).await.unwrap().len(), 1);
        assert!(store.list(JobStatus::Failed, 10).await.unwrap().is_empty());
        // The old record is held (shadowed) until its generation goes, and never counted.
        assert_eq!(store.tracked_jobs(), 2);
        assert_eq!(store.clear(JobStatus::Failed).await.unwrap(), 0);
        assert_eq!(store.tracked_jobs(), 1);
        assert_eq!(store.clear(JobStatus::Completed).await.unwrap(), 1);
        assert_eq!(store.tracked_jobs(), 0);
        assert!(store.get(&JobId::from("a")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_generated_id_is_not_looked_up() {
        // The queue only marks ids it drew at random; the flag is what lets the store
        // skip the lookup, so two jobs marked with one id are both queued.
        let store = MemoryStore::new();
        for _ in 0..2 {
            let job = NewJob::new(JobId::from("x"), &b"p"[..]).with_generated_id();
            assert_eq!(store.enqueue(job).await.unwrap(), Enqueued::New);
        }
        assert_eq!(enqueue(&store, "x").await, Enqueued::Existing);
        assert_eq!(store.queued().await.unwrap(), 2);
    }

    fn generated(id: &str) -> NewJob {
        NewJob::new(JobId::from(id), &b"p"[..]).with_generated_id()
    }

    #[tokio::test]
    async fn jobs_in_the_inbox_are_seen_by_every_read_and_keep_their_order() {
        let store = MemoryStore::new();
        assert_eq!(store.enqueue(generated("g1")).await.unwrap(), Enqueued::New);
        assert_eq!(
            store.inner.inbox.lock().unwrap().len(),
            1,
            "g1 waits in the inbox"
        );
        // Reads move the inbox in first.
        let g1 = store.get(&JobId::from("g1")).await.unwrap().unwrap();
        assert_eq!(g1.status, JobStatus::Queued);
        assert!(store.inner.inbox.lock().unwrap().is_empty());

        // An application id takes the live lock after the inbox is moved in: FIFO holds.
        assert_eq!(store.enqueue(generated("g2")).await.unwrap(), Enqueued::New);
        assert_eq!(enqueue(&store, "a").await, Enqueued::New);
        assert_eq!(store.enqueue(generated("g3")).await.unwrap(), Enqueued::New);
        assert_eq!(store.queued().await.unwrap(), 4);
        let listed: Vec<_> = store
            .list(JobStatus::Queued, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|record| record.id)
            .collect();
        assert_eq!(listed, ["g3", "a", "g2", "g1"].map(JobId::from));
        let mut order = Vec::new();
        while let Some(lease) = store.dequeue(Duration::ZERO).await.unwrap() {
            order.push(lease.id().clone());
        }
        assert_eq!(order, ["g1", "g2", "a", "g3"].map(JobId::from));
    }

    #[tokio::test(start_paused = true)]
    async fn generated_id_enqueues_purge_every_so_often() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(8);
        assert_eq!(
            store.enqueue(generated("old")).await.unwrap(),
            Enqueued::New
        );
        let lease = store.dequeue(Duration::ZERO).await.unwrap().unwrap();
        let _ = store.settle(&lease, Settlement::Cancel, ttl).await;
        tokio::time::advance(ttl * 2).await;
        let held = |store: &MemoryStore| store.inner.archive.lock().unwrap().records;
        assert_eq!(held(&store), 1, "expired, not freed yet");
        // The purge comes within `PURGE_EVERY` enqueues of generated ids.
        let mut enqueued = 0;
        while held(&store) == 1 {
            assert!(
                enqueued <= PURGE_EVERY,
                "no purge after {enqueued} enqueues"
            );
            let id = format!("new-{enqueued}");
            assert_eq!(store.enqueue(generated(&id)).await.unwrap(), Enqueued::New);
            enqueued += 1;
        }
        assert_eq!(held(&store), 0);
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
