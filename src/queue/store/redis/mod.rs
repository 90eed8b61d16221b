//! [`RedisStore`]: jobs kept in Redis, shared by every process that reaches it.
//!
//! Each transition is one Lua script (the `.lua` files beside this one), so it is atomic
//! whatever the number of producers and workers. Every key of a queue carries the queue's
//! name as a hash tag, so all of them sit on one Redis Cluster slot and no script can hit
//! `CROSSSLOT`. The key layout is a stable format, documented in the README.
//!
//! Leases are timed by the Redis server's clock (`TIME` inside the scripts), never by a
//! worker's. Each take and each recovery bumps the job's generation and the take draws a
//! fresh random token; renewals, progress and settlements carry both, and a stale pair
//! changes nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use redis::{Script, Value};

use super::{
    Enqueued, JobRecord, Lease, LeaseState, NewJob, Settled, SettledThenTaken, Settlement, Store,
};
use crate::clock::{from_unix_ms, to_unix_ms};
use crate::error::ConfigError;
use crate::queue::error::StoreError;
use crate::queue::job::{CancelOutcome, JobId, JobStatus, Progress};
use crate::redis::conn::Conn;
use crate::redis::link::{Events, Link, Wait};
use crate::redis::options::RedisOptions;
use crate::redis::IntoRedisUrl;

/// The default lease: a worker that dies loses its jobs to another worker within this
/// long (plus one recovery check).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The shortest lease [`RedisStoreBuilder::lease`] accepts: renewals come every third of
/// it, and must fit a Redis round trip and a busy runtime with room to spare.
pub const MIN_LEASE: Duration = Duration::from_secs(2);
/// The longest a blocked `dequeue` waits on Redis before it looks again; also what bounds
/// a wake-up lost with a dropped connection.
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// A [`Store`] in Redis: jobs survive restarts of the processes that enqueue and run them,
/// and any process that reaches the same Redis reads, lists and cancels them.
///
/// Build it with [`RedisStore::builder`] and give it to
/// [`QueueBuilder::store`](crate::queue::QueueBuilder::store), or let
/// [`QueueBuilder::redis_url`](crate::queue::QueueBuilder::redis_url) build it. Building
/// connects to nothing: a Redis that is down makes each operation fail with a
/// [`StoreError`] within the command budget
/// ([`RedisOptions::command_timeout`]), never a hang, and the store reconnects by itself.
///
/// Delivery is at least once: a job whose worker dies (or is cut off past its lease) runs
/// again elsewhere, with a higher [`JobContext::generation`](crate::queue::JobContext::generation)
/// that the job can use to fence its own writes.
///
/// ```no_run
/// use std::time::Duration;
/// use layercake::queue::store::RedisStore;
/// use layercake::queue::Queue;
///
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Render;
/// # async fn run() -> Result<(), layercake::ConfigError> {
/// let store = RedisStore::builder("render")
///     .redis_url("redis://127.0.0.1:6379")
///     .lease(Duration::from_secs(5))
///     .build()?;
/// let queue = Queue::<Render, String, _>::builder("render").store(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<Link>,
    keys: Keys,
    lease: Duration,
    budget: Duration,
    connect_timeout: Duration,
    /// Connections for blocking takes, each used by one `dequeue` at a time; one blocked
    /// in a dropped `dequeue` is dropped with it.
    blocking: Mutex<Vec<Conn>>,
    /// Whether the `maxmemory-policy` check has been started.
    checked_policy: AtomicBool,
    scripts: Scripts,
}

struct Scripts {
    enqueue: Script,
    take: Script,
    renew: Script,
    settle: Script,
    settle_take: Script,
    cancel: Script,
    recover: Script,
    clear: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Self {
            enqueue: with_common(include_str!("enqueue.lua")),
            take: with_common(include_str!("take.lua")),
            renew: with_common(include_str!("renew.lua")),
            settle: with_common(include_str!("settle.lua")),
            settle_take: with_common(include_str!("settle_take.lua")),
            cancel: with_common(include_str!("cancel.lua")),
            recover: with_common(include_str!("recover.lua")),
            clear: with_common(include_str!("clear.lua")),
        }
    }
}

const COMMON: &str = include_str!("common.lua");

/// The queue's keys: `{namespace}:queue:{{name}}:...`, the name in braces as the hash tag.
struct Keys {
    /// The prefix of job records: `...:job:` followed by the job id.
    job: String,
    wait: String,
    delayed: String,
    active: String,
    signal: String,
    seq: String,
    expiry: String,
    completed: String,
    failed: String,
    cancelled: String,
    /// The pub/sub channel of cancellations of running jobs (not a key).
    cancellations: String,
}

impl Keys {
    fn new(namespace: &str, name: &str) -> Self {
        let base = format!("{namespace}:queue:{{{name}}}:");
        let key = |part: &str| format!("{base}{part}");
        Self {
            job: key("job:"),
            wait: key("wait"),
            delayed: key("delayed"),
            active: key("active"),
            signal: key("signal"),
            seq: key("seq"),
            expiry: key("expiry"),
            completed: key("done:completed"),
            failed: key("done:failed"),
            cancelled: key("done:cancelled"),
            cancellations: key("cancellations"),
        }
    }

    /// The keys a settlement touches besides the job's, in the order the settle scripts
    /// take them: active, wait, delayed, signal, expiry, and the three done indexes.
    fn settling(&self) -> [&str; 8] {
        [
            &self.active,
            &self.wait,
            &self.delayed,
            &self.signal,
            &self.expiry,
            &self.completed,
            &self.failed,
            &self.cancelled,
        ]
    }

    fn job(&self, id: &JobId) -> String {
        format!("{}{}", self.job, id.as_str())
    }

    fn done(&self, status: JobStatus) -> Option<&str> {
        match status {
            JobStatus::Completed => Some(&self.completed),
            JobStatus::Failed => Some(&self.failed),
            JobStatus::Cancelled => Some(&self.cancelled),
            JobStatus::Queued | JobStatus::Running => None,
        }
    }
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[must_use]
pub struct RedisStoreBuilder {
    name: String,
    namespace: String,
    options: RedisOptions,
    lease: Duration,
}

impl RedisStore {
    /// A builder for the store of the queue `name` (its keys are named after it: use the
    /// queue's name). The name and the namespace hold only `[A-Za-z0-9_.-]`.
    pub fn builder(name: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            name: name.into(),
            namespace: "layercake".to_owned(),
            options: RedisOptions::default(),
            lease: DEFAULT_LEASE,
        }
    }

    /// The prefix of every key of this queue, for operators: `layercake:queue:{name}:`.
    pub fn key_prefix(&self) -> &str {
        self.inner
            .keys
            .job
            .strip_suffix("job:")
            .unwrap_or(&self.inner.keys.job)
    }
}

impl RedisStoreBuilder {
    /// The Redis to use (`redis://` or `rediss://`); see [`RedisOptions::new`].
    pub fn redis_url(mut self, url: impl IntoRedisUrl) -> Self {
        self.options = RedisOptions::new(url);
        self
    }

    /// The connection settings as a group (URL, timeouts, pool, TLS root CA), as the cache
    /// takes them. [`RedisOptions::command_timeout`] is the budget of each store operation.
    pub fn redis(mut self, options: RedisOptions) -> Self {
        self.options = options;
        self
    }

    /// The first key part (default `layercake`), as the cache's.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long a worker holds a job without renewing it (default 10 s, at least 2 s).
    /// Workers renew at a third of it; a job whose worker died runs again elsewhere within
    /// the lease plus one recovery check (a quarter of it, at most 1 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Builds the store. Connects to nothing: the connection is made in the background
    /// and remade whenever it is lost.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting: no URL, a bad URL or connection setting, a
    /// name or namespace outside `[A-Za-z0-9_.-]`, a lease under 2 s.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        crate::key::validate_part("name", &self.name)?;
        crate::key::validate_part("namespace", &self.namespace)?;
        if self.lease < MIN_LEASE {
            return Err(ConfigError::new(
                "lease",
                format!("must be at least {MIN_LEASE:?}: workers renew at a third of it"),
            ));
        }
        let Some(endpoint) = self.options.endpoint()? else {
            return Err(ConfigError::new(
                "redis_url",
                "a Redis store needs a URL (the in-process store needs none)",
            ));
        };
        let budget = endpoint.command_timeout;
        let connect_timeout = endpoint.connect_timeout;
        let link = Arc::new(Link::new(
            endpoint,
            StoreEvents {
                queue: self.name.clone(),
            },
        ));
        link.start();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                link,
                keys: Keys::new(&self.namespace, &self.name),
                lease: self.lease,
                budget,
                connect_timeout,
                blocking: Mutex::new(Vec::new()),
                checked_policy: AtomicBool::new(false),
                scripts: Scripts::new(),
            }),
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("options", &self.options)
            .field("lease", &self.lease)
            .finish()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.key_prefix())
            .field("redis", &self.inner.link.url())
            .field("lease", &self.inner.lease)
            .finish()
    }
}

struct StoreEvents {
    queue: String,
}

impl Events for StoreEvents {
    fn connected(&self, url: &str, again: bool) {
        if again {
            tracing::warn!(queue = %self.queue, redis = %url, "the queue's Redis is reachable again");
        } else {
            tracing::info!(queue = %self.queue, redis = %url, "the queue's Redis is connected");
        }
    }

    fn unreachable(&self, url: &str, detail: &str, held_back: u64, retry_every: Duration) {
        tracing::warn!(
            queue = %self.queue,
            redis = %url,
            error = %detail,
            held_back,
            "cannot reach the queue's Redis: enqueues fail, workers wait; retrying every {retry_every:?}"
        );
    }

    fn lost(&self, url: &str, reason: &str, retry_every: Duration) {
        tracing::warn!(
            queue = %self.queue,
            redis = %url,
            cause = reason,
            "lost the queue's Redis; reconnecting every {retry_every:?}"
        );
    }
}

/// What the take script found.
enum Taken {
    Job(Lease),
    /// Nothing due; the next delayed job is due in this long, if any.
    Empty(Option<Duration>),
}

impl Inner {
    /// Runs `command` on the shared connection within the command budget, waiting through
    /// an outage for the supervisor's next connection (so a Redis back within the budget
    /// is used at once).
    /// `command` may run more than once: again after a cluster's redirection that the
    /// connection gave up following, which the server answered without running it.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.link.start();
        self.check_policy();
        self.link
            .run(self.budget, Wait::Always, command)
            .await
            .map_err(|failure| self.error(&failure))
    }

    async fn eval(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let invocation = &invocation;
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let cmd = &cmd;
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    async fn pipe<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, StoreError> {
        let pipe = &pipe;
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    fn error(&self, failure: &crate::redis::error::Failure) -> StoreError {
        StoreError::new(format!("redis at {}: {failure}", self.link.url()))
    }

    /// Warns once, in the background, when Redis may evict keys: an evicting Redis drops
    /// jobs without a trace.
    fn check_policy(&self) {
        if self.checked_policy.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.checked_policy.store(false, Ordering::Relaxed);
            return;
        };
        let link = self.link.clone();
        let budget = self.budget.max(self.connect_timeout) * 4;
        rt.spawn(async move {
            match link.eviction_policy(budget).await {
                Ok(Some(policy)) if policy != "noeviction" => tracing::warn!(
                    redis = %link.url(),
                    policy = %policy,
                    "the queue's Redis has maxmemory-policy {policy}: under memory pressure it \
                     evicts keys, jobs among them; set it to noeviction"
                ),
                _ => {}
            }
        });
    }

    async fn take(&self) -> Result<Taken, StoreError> {
        let keys = &self.keys;
        let token = fastrand::u64(1..);
        let mut invocation = self.scripts.take.prepare_invoke();
        invocation
            .key(&keys.wait)
            .key(&keys.delayed)
            .key(&keys.active)
            .arg(&keys.job)
            .arg(token)
            .arg(millis(self.lease));
        let reply = into_array(self.eval(invocation).await?)?;
        let mut fields = reply.into_iter();
        match fields.next().as_ref().and_then(int) {
            Some(1) => Ok(Taken::Job(lease_from(&mut fields, token)?)),
            Some(0) => {
                let due = fields.next().as_ref().and_then(int).unwrap_or(-1);
                Ok(Taken::Empty(
                    u64::try_from(due).ok().map(Duration::from_millis),
                ))
            }
            _ => Err(bad_reply("take")),
        }
    }

    /// Waits up to `block` for a signal that a job may be due (`BLPOP` on a connection of
    /// its own, with no response timeout, under a watchdog of our own).
    async fn block_on_signal(&self, block: Duration) {
        let conn = self
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match conn {
            Some(conn) => conn,
            None => {
                let endpoint = self.link.endpoint();
                match tokio::time::timeout(self.connect_timeout, endpoint.dedicated(None)).await {
                    Ok(Ok(conn)) => conn,
                    _ => {
                        // The take before this one answered, so Redis is likely back soon;
                        // the next take says.
                        tokio::time::sleep(block.min(Duration::from_millis(100))).await;
                        return;
                    }
                }
            }
        };
        let mut blpop = redis::cmd("BLPOP");
        blpop
            .arg(&self.keys.signal)
            .arg(block.as_secs_f64().max(0.001));
        let watchdog = block + self.connect_timeout;
        match tokio::time::timeout(watchdog, blpop.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => self
                .blocking
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn),
            // A failed or silent connection is dropped; the next wait makes a new one.
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::redis::error::describe(&e), "blocking take failed");
                tokio::time::sleep(block.min(Duration::from_millis(100))).await;
            }
            Err(_) => {
                tracing::debug!("blocking take unanswered past its timeout: connection dropped");
            }
        }
    }

    async fn renew_or_progress(
        &self,
        lease: &Lease,
        progress: Option<&Progress>,
    ) -> Result<LeaseState, StoreError> {
        let (value, message) = match progress {
            Some(p) => (p.value.to_string(), p.message.clone().unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.keys.job(lease.id()))
            .key(&self.keys.active)
            .arg(lease.id().as_str())
            .arg(lease.token())
            .arg(lease.generation())
            .arg(millis(self.lease))
            .arg(value)
            .arg(message);
        match int(&self.eval(invocation).await?) {
            Some(0) => Ok(LeaseState::Lost),
            Some(1) => Ok(LeaseState::Active),
            Some(2) => Ok(LeaseState::CancelRequested),
            _ => Err(bad_reply("renew")),
        }
    }
}

/// The lease of a job the take script returned: id, payload, attempt, enqueued at,
/// started at, generation, in that order from `fields`.
fn lease_from(fields: &mut impl Iterator<Item = Value>, token: u64) -> Result<Lease, StoreError> {
    let mut next = || fields.next().ok_or_else(|| bad_reply("take"));
    let id = text(next()?)?;
    let payload = bytes(next()?)?;
    let attempt = int_field(&next()?)?;
    let enqueued_at = int_field(&next()?)?;
    let started_at = int_field(&next()?)?;
    let generation = int_field(&next()?)?;
    Ok(Lease::new(
        JobId::from(id),
        token,
        u32::try_from(attempt).unwrap_or(u32::MAX),
        Arc::from(payload),
        from_unix_ms(enqueued_at),
    )
    .with_started_at(from_unix_ms(started_at))
    .with_generation(generation))
}

/// A settlement as the scripts take it: its kind, its data (result or error) and its delay.
fn settlement_args(settlement: &Settlement) -> (&'static str, &[u8], Duration) {
    match settlement {
        Settlement::Complete(result) => ("complete", result, Duration::ZERO),
        Settlement::Fail(error) => ("fail", error.as_bytes(), Duration::ZERO),
        Settlement::Quarantine(error) => ("quarantine", error.as_bytes(), Duration::ZERO),
        Settlement::Retry { error, delay } => ("retry", error.as_bytes(), *delay),
        Settlement::Cancel => ("cancel", b"", Duration::ZERO),
        Settlement::Release => ("release", b"", Duration::ZERO),
    }
}

/// What the settle script answered, as [`Store::settle`] returns it.
fn settled_from(reply: Value) -> Result<Settled, StoreError> {
    match text(reply)?.as_str() {
        "stale" => Ok(Settled::Stale),
        letter => status_of(letter)
            .map(Settled::Applied)
            .ok_or_else(|| bad_reply("settle")),
    }
}

impl Store for RedisStore {
    type EnqueueFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Enqueued, StoreError>> + Send>>;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let keys = &inner.keys;
            let due = job.not_before.map_or(0, to_unix_ms);
            let mut invocation = inner.scripts.enqueue.prepare_invoke();
            invocation
                .key(keys.job(&job.id))
                .key(&keys.wait)
                .key(&keys.delayed)
                .key(&keys.signal)
                .key(&keys.seq)
                .key(&keys.expiry)
                .key(&keys.completed)
                .key(&keys.failed)
                .key(&keys.cancelled)
                .arg(job.id.as_str())
                .arg(&*job.payload)
                .arg(to_unix_ms(job.enqueued_at))
                .arg(due)
                .arg(if job.generated_id { "0" } else { "1" });
            match int(&inner.eval(invocation).await?) {
                Some(1) => Ok(Enqueued::New),
                Some(0) => Ok(Enqueued::Existing),
                _ => Err(bad_reply("enqueue")),
            }
        })
    }

    async fn dequeue(&self, wait: Duration) -> Result<Option<Lease>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next_due = match self.inner.take().await? {
                Taken::Job(lease) => return Ok(Some(lease)),
                Taken::Empty(next_due) => next_due,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut block = (deadline - now).min(MAX_BLOCK);
            if let Some(due) = next_due {
                block = block.min(due);
            }
            if !block.is_zero() {
                self.inner.block_on_signal(block).await;
            }
        }
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> Result<Settled, StoreError> {
        let keys = &self.inner.keys;
        let (kind, data, delay) = settlement_args(&settlement);
        let mut invocation = self.inner.scripts.settle.prepare_invoke();
        invocation.key(keys.job(lease.id()));
        for key in keys.settling() {
            invocation.key(key);
        }
        invocation
            .arg(lease.id().as_str())
            .arg(lease.token())
            .arg(lease.generation())
            .arg(kind)
            .arg(data)
            .arg(millis(delay))
            .arg(millis(result_ttl).max(1));
        settled_from(self.inner.eval(invocation).await?)
    }

    /// One script, one round trip: the settlements in order, then up to `max` takes.
    async fn settle_then_dequeue(
        &self,
        ended: &[(Lease, Settlement)],
        result_ttl: Duration,
        max: usize,
    ) -> SettledThenTaken {
        let keys = &self.inner.keys;
        let tokens: Vec<u64> = (0..max).map(|_| fastrand::u64(1..)).collect();
        let mut invocation = self.inner.scripts.settle_take.prepare_invoke();
        for key in keys.settling() {
            invocation.key(key);
        }
        invocation
            .arg(&keys.job)
            .arg(millis(self.inner.lease))
            .arg(millis(result_ttl).max(1))
            .arg(ended.len())
            .arg(max);
        for token in &tokens {
            invocation.arg(*token);
        }
        for (lease, settlement) in ended {
            let (kind, data, delay) = settlement_args(settlement);
            invocation
                .key(keys.job(lease.id()))
                .arg(lease.id().as_str())
                .arg(lease.token())
                .arg(lease.generation())
                .arg(kind)
                .arg(data)
                .arg(millis(delay));
        }
        let parsed = match self.inner.eval(invocation).await {
            Ok(reply) => parse_settle_take(reply, &tokens),
            Err(err) => Err(err),
        };
        match parsed {
            Ok((settled, taken)) if settled.len() == ended.len() => (settled, Ok(taken)),
            // Every settlement failed with the step: each is reported, and the jobs stay
            // leased until they are settled again or recovered.
            Ok(_) => failed_step(ended, &bad_reply("settle_take")),
            Err(err) => failed_step(ended, &err),
        }
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        self.inner.renew_or_progress(lease, Some(progress)).await
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        self.inner.renew_or_progress(lease, None).await
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.cancel.prepare_invoke();
        invocation
            .key(keys.job(id))
            .key(&keys.wait)
            .key(&keys.delayed)
            .key(&keys.expiry)
            .key(&keys.cancelled)
            .arg(id.as_str())
            .arg(millis(result_ttl).max(1))
            .arg(&keys.cancellations);
        let reply = text(self.inner.eval(invocation).await?)?;
        match reply.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "stopping" => Ok(CancelOutcome::Stopping),
            "none" => Ok(CancelOutcome::NotFound),
            other => other
                .strip_prefix("finished:")
                .and_then(status_of)
                .map(CancelOutcome::AlreadyFinished)
                .ok_or_else(|| bad_reply("cancel")),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.inner.keys.job(id));
        let fields: HashMap<String, Vec<u8>> = self.inner.query(cmd).await?;
        record(id.clone(), fields)
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let last = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let ids: Vec<String> = match keys.done(status) {
            Some(done) => {
                // Newest first by enqueue sequence; entries of expired records are skipped.
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(done).arg(0).arg(last).arg("REV");
                self.inner.query(cmd).await?
            }
            None if status == JobStatus::Running => {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(&keys.active).arg(0).arg(-1);
                self.inner.query(cmd).await?
            }
            None => {
                // The newest `limit` of the wait list (appended at its tail) and the
                // delayed set; sorted by enqueue order below.
                let mut pipe = redis::pipe();
                pipe.cmd("LRANGE")
                    .arg(&keys.wait)
                    .arg(-(last + 1))
                    .arg(-1)
                    .cmd("ZRANGE")
                    .arg(&keys.delayed)
                    .arg(0)
                    .arg(last);
                let (mut waiting, delayed): (Vec<String>, Vec<String>) =
                    self.inner.pipe(pipe).await?;
                waiting.extend(delayed);
                waiting
            }
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(keys.job(&JobId::from(id.as_str())));
        }
        let all: Vec<HashMap<String, Vec<u8>>> = self.inner.pipe(pipe).await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(all) {
            let seq = fields
                .get("seq")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(record) = record(JobId::from(id), fields)? {
                if record.status == status {
                    records.push((seq, record));
                }
            }
        }
        records.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        records.dedup_by_key(|(seq, _)| *seq);
        Ok(records
            .into_iter()
            .take(limit)
            .map(|(_, record)| record)
            .collect())
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN")
            .arg(&self.inner.keys.wait)
            .cmd("ZCARD")
            .arg(&self.inner.keys.delayed);
        let (waiting, delayed): (usize, usize) = self.inner.pipe(pipe).await?;
        Ok(waiting + delayed)
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        let Some(done) = self.inner.keys.done(status) else {
            return Ok(0);
        };
        let mut invocation = self.inner.scripts.clear.prepare_invoke();
        invocation
            .key(done)
            .key(&self.inner.keys.expiry)
            .arg(&self.inner.keys.job)
            .arg(letter_of(status));
        let cleared = int(&self.inner.eval(invocation).await?).ok_or_else(|| bad_reply("clear"))?;
        Ok(usize::try_from(cleared).unwrap_or(0))
    }

    async fn recover(
        &self,
        max_attempts: u32,
        result_ttl: Duration,
    ) -> Result<super::Recovered, StoreError> {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.recover.prepare_invoke();
        invocation
            .key(&keys.active)
            .key(&keys.wait)
            .key(&keys.signal)
            .key(&keys.expiry)
            .key(&keys.cancelled)
            .key(&keys.failed)
            .arg(&keys.job)
            .arg(max_attempts)
            .arg(millis(result_ttl).max(1));
        let reply = into_array(self.inner.eval(invocation).await?)?;
        let count = |i: usize| {
            reply
                .get(i)
                .and_then(int)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad_reply("recover"))
        };
        Ok(super::Recovered {
            requeued: count(0)?,
            failed: count(1)?,
        })
    }

    /// Subscribes to the queue's cancellation channel on a connection of its own, again
    /// after any failure, until the store is dropped.
    fn watch_cancellations(&self, notify: super::CancelNotify) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(watch_cancellations(Arc::downgrade(&self.inner), notify));
    }

    fn lease_duration(&self) -> Option<Duration> {
        Some(self.inner.lease)
    }
}

async fn watch_cancellations(inner: std::sync::Weak<Inner>, notify: super::CancelNotify) {
    use futures_core::Stream;
    loop {
        let Some((target, channel, connect_timeout, probe)) = inner.upgrade().map(|inner| {
            let endpoint = inner.link.endpoint();
            (
                endpoint.target().clone(),
                inner.keys.cancellations.clone(),
                endpoint.connect_timeout,
                endpoint.probe_interval,
            )
        }) else {
            return;
        };
        let subscribed = tokio::time::timeout(connect_timeout, async {
            let mut pubsub = target.client().await?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(mut pubsub)) = subscribed {
            let mut messages = pubsub.on_message();
            loop {
                // Wakes every probe interval to see whether the store is still there.
                let next = tokio::time::timeout(
                    probe,
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx)),
                )
                .await;
                match next {
                    Ok(Some(message)) => {
                        if let Ok(id) = std::str::from_utf8(message.get_payload_bytes()) {
                            notify(&JobId::from(id));
                        }
                    }
                    // The connection ended: subscribe again.
                    Ok(None) => break,
                    Err(_) if inner.strong_count() == 0 => return,
                    Err(_) => {}
                }
            }
        }
        tokio::time::sleep(probe).await;
    }
}

/// Every settlement of a failed step, and its take, fail with `err`.
fn failed_step(ended: &[(Lease, Settlement)], err: &StoreError) -> SettledThenTaken {
    let message =
        std::error::Error::source(err).map_or_else(|| err.to_string(), ToString::to_string);
    (
        ended
            .iter()
            .map(|_| Err(StoreError::new(message.clone())))
            .collect(),
        Err(StoreError::new(message)),
    )
}

/// The settle-and-take script's answer: one result per settlement, and the jobs taken.
#[allow(clippy::type_complexity)]
fn parse_settle_take(
    reply: Value,
    tokens: &[u64],
) -> Result<(Vec<Result<Settled, StoreError>>, Vec<Lease>), StoreError> {
    let mut parts = into_array(reply)?.into_iter();
    let (Some(settled), Some(taken)) = (parts.next(), parts.next()) else {
        return Err(bad_reply("settle_take"));
    };
    // An empty Lua table comes back as an empty array (or, from some proxies, nil).
    let list = |value: Value| match value {
        Value::Nil => Ok(Vec::new()),
        other => into_array(other),
    };
    let settled = list(settled)?.into_iter().map(settled_from).collect();
    let mut fields = list(taken)?.into_iter().peekable();
    let mut leases = Vec::new();
    for token in tokens {
        if fields.peek().is_none() {
            break;
        }
        leases.push(lease_from(&mut fields, *token)?);
    }
    Ok((settled, leases))
}

/// A job record from its hash fields; `None` for an empty hash (no such job).
fn record(
    id: JobId,
    mut fields: HashMap<String, Vec<u8>>,
) -> Result<Option<JobRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |fields: &HashMap<String, Vec<u8>>, name: &str| -> Option<u64> {
        std::str::from_utf8(fields.get(name)?).ok()?.parse().ok()
    };
    let string = |fields: &mut HashMap<String, Vec<u8>>, name: &str| -> Option<String> {
        fields
            .remove(name)
            .map(|raw| String::from_utf8_lossy(&raw).into_owned())
    };
    let status = fields
        .get("st")
        .and_then(|s| status_of(std::str::from_utf8(s).ok()?))
        .ok_or_else(|| bad_reply("a job record without a status"))?;
    let progress = string(&mut fields, "pv")
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| {
            let progress = Progress::new(value);
            match string(&mut fields, "pm") {
                Some(message) => progress.with_message(message),
                None => progress,
            }
        });
    let mut record = JobRecord::new(NewJob::new(id, Vec::new()));
    record.status = status;
    record.attempts = number(&fields, "att").map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    record.enqueued_at = number(&fields, "enq").map_or(SystemTime::UNIX_EPOCH, from_unix_ms);
    record.started_at = number(&fields, "sta").map(from_unix_ms);
    record.finished_at = number(&fields, "fin").map(from_unix_ms);
    record.progress = progress;
    record.payload = fields.remove("pl").map(Arc::from);
    record.result = fields.remove("res").map(Arc::from);
    record.error = string(&mut fields, "err");
    record.quarantined = fields.contains_key("qr");
    record.cancel_requested = fields.contains_key("cx");
    Ok(Some(record))
}

fn status_of(letter: &str) -> Option<JobStatus> {
    Some(match letter {
        "q" => JobStatus::Queued,
        "r" => JobStatus::Running,
        "c" => JobStatus::Completed,
        "f" => JobStatus::Failed,
        "x" => JobStatus::Cancelled,
        _ => return None,
    })
}

fn letter_of(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "q",
        JobStatus::Running => "r",
        JobStatus::Completed => "c",
        JobStatus::Failed => "f",
        JobStatus::Cancelled => "x",
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::new(format!(
        "unexpected reply from Redis to the queue's {what} script"
    ))
}

fn into_array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(bad_reply("take")),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(raw) => std::str::from_utf8(raw).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn int_field(value: &Value) -> Result<u64, StoreError> {
    int(value)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| bad_reply("take"))
}

fn bytes(value: Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(raw) => Ok(raw),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(bad_reply("take")),
    }
}

fn text(value: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(value)?).map_err(|_| bad_reply("a script"))
}
