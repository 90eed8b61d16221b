//! What a job is: its id, status, progress, the snapshot callers read, and the context a
//! running job sees.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Notify;

/// The id of a job.
///
/// Either chosen by the application, deterministically from the request
/// ([`QueueBuilder::job_id`](super::QueueBuilder::job_id)), which deduplicates jobs, or
/// generated: 32 random hex digits. Cloning is cheap: a generated id is held inline, and a
/// chosen one behind a reference count. Two ids are equal when their strings are, however
/// each was made.
///
/// ```
/// use layercake::queue::JobId;
///
/// let id = JobId::from("file-42");
/// assert_eq!(id.as_str(), "file-42");
/// assert_eq!(id.to_string(), "file-42");
/// assert_eq!(id, JobId::from(String::from("file-42")));
/// ```
#[derive(Clone)]
pub struct JobId(Repr);

#[derive(Clone)]
enum Repr {
    /// A generated id: ASCII hex digits, inline, so that making, cloning and dropping it
    /// neither allocates nor touches a count shared between threads.
    Hex([u8; 32]),
    /// An id the application chose.
    Text(Arc<str>),
}

impl JobId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever hex digits (see `random`), so this never falls back.
            Repr::Hex(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            Repr::Text(text) => text,
        }
    }

    /// The id's bytes, unchecked: equality and order on them are the string's (`str`
    /// orders by its bytes).
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Hex(digits) => digits,
            Repr::Text(text) => text.as_bytes(),
        }
    }

    /// A fresh random id: 128 bits as 32 lowercase hex digits, without an allocation.
    pub(crate) fn random() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = fastrand::u128(..);
        let mut digits = [0u8; 32];
        for digit in digits.iter_mut().rev() {
            *digit = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        Self(Repr::Hex(digits))
    }
}

impl PartialEq for JobId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for JobId {}

impl PartialOrd for JobId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for JobId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl std::hash::Hash for JobId {
    /// As the string hashes, so that maps keyed by ids can be looked up by `&str`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        Self(Repr::Text(Arc::from(id)))
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        Self(Repr::Text(Arc::from(id)))
    }
}

impl From<&JobId> for JobId {
    fn from(id: &JobId) -> Self {
        id.clone()
    }
}

impl Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for JobId {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JobId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// Where a job is in its life.
///
/// `Queued → Running → Completed | Failed | Cancelled`; a retried job goes back to `Queued`
/// until its backoff has passed, and a queued job can be cancelled. Serialized (and parsed)
/// in lowercase: `"queued"`, `"running"`, ...
///
/// ```
/// use layercake::queue::JobStatus;
///
/// let status: JobStatus = "failed".parse().unwrap();
/// assert_eq!(status, JobStatus::Failed);
/// assert!(status.is_finished());
/// assert_eq!(JobStatus::Running.to_string(), "running");
/// assert!("lost".parse::<JobStatus>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobStatus {
    /// Waiting for a worker (for its first attempt, or for a retry after a backoff).
    Queued,
    /// A worker is running it.
    Running,
    /// It finished with a result.
    Completed,
    /// Its last attempt failed, or its error was permanent, or its payload could not be
    /// decoded.
    Failed,
    /// It was cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    /// Whether the job is over: completed, failed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status in lowercase, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = ParseJobStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(ParseJobStatusError(())),
        })
    }
}

/// A string was not one of the job statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseJobStatusError(());

impl fmt::Display for ParseJobStatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("expected one of: queued, running, completed, failed, cancelled")
    }
}

impl std::error::Error for ParseJobStatusError {}

/// How far a running job has come: a number and an optional message.
///
/// The queue stores the latest value and shows it in [`JobInfo::progress`]; it does not
/// interpret the number (a fraction, a percentage, a count of items: your choice).
///
/// ```
/// use layercake::queue::Progress;
///
/// let p = Progress::new(0.4).with_message("translating chapter 2");
/// assert_eq!(p.value, 0.4);
/// assert_eq!(p.message.as_deref(), Some("translating chapter 2"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// The job's own measure of progress.
    pub value: f64,
    /// What the job is doing.
    pub message: Option<String>,
}

impl Progress {
    /// Progress with a value and no message.
    pub fn new(value: f64) -> Self {
        Self {
            value,
            message: None,
        }
    }

    /// Adds a message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// A snapshot of a job, as returned by [`Queue::job`](super::Queue::job),
/// [`Queue::wait`](super::Queue::wait) and [`Queue::list`](super::Queue::list).
///
/// Serializes to JSON-friendly form (timestamps as Unix milliseconds), so an HTTP handler
/// can return it as is, and a client (or a cache) can read it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobInfo<Res> {
    /// The job's id.
    pub id: JobId,
    /// Its status.
    pub status: JobStatus,
    /// Attempts started so far (1 while the first attempt runs).
    pub attempts: u32,
    /// When it was enqueued.
    #[serde(with = "unix_ms")]
    pub enqueued_at: SystemTime,
    /// When its latest attempt started.
    #[serde(with = "unix_ms::option")]
    pub started_at: Option<SystemTime>,
    /// When it finished (completed, failed or cancelled).
    #[serde(with = "unix_ms::option")]
    pub finished_at: Option<SystemTime>,
    /// The latest progress its running attempt reported.
    pub progress: Option<Progress>,
    /// The inner service's response, once completed.
    pub result: Option<Res>,
    /// The latest attempt's error (with its sources), or the panic message of an attempt
    /// that panicked. A queued job waiting for a retry shows the error of the attempt
    /// that failed.
    pub error: Option<String>,
    /// The job failed because its payload could not be decoded; the payload is kept in the
    /// store for inspection ([`JobRecord::payload`](super::store::JobRecord::payload)).
    pub quarantined: bool,
}

/// What [`Queue::cancel`](super::Queue::cancel) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was queued; it is now cancelled and will never run.
    Cancelled,
    /// The job is running; it has been asked to stop
    /// ([`JobContext::cancelled`]) and is stopped after the cancel grace period if it has
    /// not by then. It ends as [`JobStatus::Cancelled`].
    Stopping,
    /// The job had already finished, with this status; nothing changed.
    AlreadyFinished(JobStatus),
    /// No job has this id (it never existed, or its record expired).
    NotFound,
}

tokio::task_local! {
    static CURRENT: JobContext;
}

/// What a running job sees of itself: its id and attempt, a cancellation signal, and a way
/// to report progress.
///
/// The inner service gets it with [`JobContext::current`], which works in its `call` and in
/// the future it returns, because the worker runs both inside the job's task-local scope. It
/// is not inherited by tasks the job spawns: clone it and move the clone there. Outside a
/// job, `current` is `None`, so the same service works queued or called directly.
///
/// ```
/// use layercake::queue::{JobContext, Progress};
///
/// async fn translate(text: String) -> Result<String, layercake::BoxError> {
///     let ctx = JobContext::current();
///     let mut out = String::new();
///     for (i, word) in text.split(' ').enumerate() {
///         if let Some(ctx) = &ctx {
///             if ctx.is_cancelled() {
///                 return Err("cancelled".into()); // stop early; the job ends as cancelled
///             }
///             ctx.set_progress(Progress::new(i as f64));
///         }
///         out.push_str(&word.to_uppercase());
///     }
///     Ok(out)
/// }
/// # let _ = translate;
/// ```
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    id: JobId,
    attempt: u32,
    generation: u64,
    /// Cooperative: the job is asked to stop.
    cancel: Signal,
    /// Forced: the worker drops the job's future at its next poll.
    abort: Signal,
    progress: Mutex<Option<Progress>>,
    progress_changed: Notify,
}

impl ContextInner {
    fn new(id: JobId, attempt: u32, generation: u64) -> Self {
        Self {
            id,
            attempt,
            generation,
            cancel: Signal::new(),
            abort: Signal::new(),
            progress: Mutex::new(None),
            progress_changed: Notify::new(),
        }
    }
}

impl JobContext {
    pub(crate) fn new(id: JobId, attempt: u32) -> Self {
        Self::with_generation(id, attempt, u64::from(attempt))
    }

    pub(crate) fn with_generation(id: JobId, attempt: u32, generation: u64) -> Self {
        Self {
            inner: Arc::new(ContextInner::new(id, attempt, generation)),
        }
    }

    /// A context for another attempt, in this one's memory when nothing else holds it (the
    /// dispatcher reuses the contexts of attempts that ended in their first poll).
    pub(crate) fn reuse(mut self, id: JobId, attempt: u32, generation: u64) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                *inner = ContextInner::new(id, attempt, generation);
                self
            }
            None => Self::with_generation(id, attempt, generation),
        }
    }

    /// The context of the job running on this task, or `None` outside a job.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Self::clone).ok()
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.inner.id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The job's generation: it goes up with every take of the job by a worker and, in a
    /// store whose leases expire ([`RedisStore`](super::store::RedisStore)), with every
    /// recovery of a job whose worker died. A job that writes to another system can
    /// pass it along as a fencing token, so that the system rejects a write from an
    /// attempt that a newer one replaced (a worker paused past its lease).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Reports progress. The worker writes the latest value to the store at the job's next
    /// `.await` that yields (progress reported in a burst is coalesced), so it never blocks
    /// the job.
    pub fn set_progress(&self, progress: Progress) {
        *self
            .inner
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(progress);
        self.inner.progress_changed.notify_one();
    }

    /// Whether the job has been asked to stop (cancelled, or the queue is shutting down and
    /// its deadline passed).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_set()
    }

    /// Completes when the job is asked to stop. A job that returns soon after ends as
    /// cancelled; one that keeps running is dropped after the cancel grace period
    /// ([`QueueBuilder::cancel_grace`](super::QueueBuilder::cancel_grace)).
    pub async fn cancelled(&self) {
        self.inner.cancel.wait().await;
    }

    pub(crate) fn scope<F: std::future::Future>(
        &self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<JobContext, F> {
        CURRENT.scope(self.clone(), fut)
    }

    pub(crate) fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// Whether both are the context of the same attempt.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn cancel(&self) {
        self.inner.cancel.set();
    }

    pub(crate) fn abort(&self) {
        self.inner.cancel.set();
        self.inner.abort.set();
    }

    /// Whether the queue's shutdown stopped the attempt.
    pub(crate) fn is_aborted(&self) -> bool {
        self.inner.abort.is_set()
    }

    pub(crate) async fn aborted(&self) {
        self.inner.abort.wait().await;
    }

    pub(crate) fn progress_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.progress_changed.notified()
    }

    /// Whether progress was reported and not written to the store yet.
    pub(crate) fn has_progress(&self) -> bool {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn take_progress(&self) -> Option<Progress> {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.inner.id)
            .field("attempt", &self.inner.attempt)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A one-shot flag that tasks can wait for.
pub(crate) struct Signal {
    set: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Self {
            set: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub(crate) fn set(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a `set` between the check and the await is seen.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Signal").field(&self.is_set()).finish()
    }
}

/// `SystemTime` as Unix milliseconds: compact, and what JavaScript clients expect.
pub(crate) mod unix_ms {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) use crate::clock::{from_unix_ms as from_ms, to_unix_ms as to_ms};

    pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(to_ms(*time))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        u64::deserialize(d).map(from_ms)
    }

    pub(crate) mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => s.serialize_some(&super::to_ms(*time)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(super::from_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_32_hex_digits_and_distinct() {
        let a = JobId::random();
        let b = JobId::random();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn generated_ids_equal_hash_and_order_as_their_strings() {
        use std::hash::BuildHasher;

        let generated = JobId::random();
        let parsed = JobId::from(generated.as_str().to_owned());
        assert_eq!(generated, parsed);
        assert_eq!(parsed, generated);
        assert_eq!(generated.cmp(&parsed), std::cmp::Ordering::Equal);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&generated), hasher.hash_one(&parsed));
        assert_eq!(
            hasher.hash_one(&generated),
            hasher.hash_one(generated.as_str())
        );

        let mut by_id = std::collections::HashMap::new();
        by_id.insert(generated.clone(), 1);
        assert_eq!(by_id.get(parsed.as_str()), Some(&1));
        assert_eq!(by_id.get(&parsed), Some(&1));

        let other = JobId::random();
        assert_ne!(generated, other);
        assert_eq!(
            generated.cmp(&other),
            generated.as_str().cmp(other.as_str())
        );
        assert_eq!(format!("{generated}"), generated.as_str());
        assert_eq!(
            format!("{generated:?}"),
            format!("JobId({:?})", generated.as_str())
        );
    }

    #[test]
    fn status_round_trips_through_strings() {
        for status in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        assert!(!JobStatus::Queued.is_finished());
        assert!(!JobStatus::Running.is_finished());
    }

    #[test]
    fn context_is_only_current_inside_its_scope() {
        assert!(JobContext::current().is_none());
        let ctx = JobContext::new(JobId::from("a"), 2);
        let seen = ctx.sync_scope(|| JobContext::current().map(|c| (c.id().clone(), c.attempt())));
        assert_eq!(seen, Some((JobId::from("a"), 2)));
    }

    #[tokio::test]
    async fn signal_wakes_waiters_set_before_or_after_they_wait() {
        let signal = Arc::new(Signal::new());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.wait().await }
        });
        tokio::task::yield_now().await;
        signal.set();
        waiter.await.unwrap();
        // Already set: returns at once.
        signal.wait().await;
    }

    #[test]
    fn job_info_round_trips_through_json_with_millisecond_timestamps() {
        let at = unix_ms::from_ms(1_700_000_000_123);
        let info = JobInfo {
            id: JobId::from("a"),
            status: JobStatus::Completed,
            attempts: 2,
            enqueued_at: at,
            started_at: Some(at),
            finished_at: None,
            progress: Some(Progress::new(1.0)),
            result: Some(7u32),
            error: None,
            quarantined: false,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["enqueued_at"], 1_700_000_000_123u64);
        assert_eq!(json["status"], "completed");
        assert!(json["finished_at"].is_null());
        let back: JobInfo<u32> = serde_json::from_value(json).unwrap();
        assert_eq!(back.enqueued_at, at);
        assert_eq!(back.started_at, Some(at));
        assert_eq!(back.result, Some(7));
    }

    #[test]
    fn progress_is_coalesced_to_the_latest() {
        let ctx = JobContext::new(JobId::from("a"), 1);
        ctx.set_progress(Progress::new(1.0));
        ctx.set_progress(Progress::new(2.0));
        assert_eq!(ctx.take_progress(), Some(Progress::new(2.0)));
        assert_eq!(ctx.take_progress(), None);
    }
}
