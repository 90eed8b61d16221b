//! `QueueBuilder`: the queue's settings, checked once at `build`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::backoff::Backoff;
use super::handle::{Config, Core, Hook, JobIdFn, Queue, Tracker};
use super::job::{JobId, JobStatus};
use super::store::{AnyStore, MemoryStore, RedisStore, RedisStoreBuilder, Store};
use crate::redis::{IntoRedisUrl, RedisOptions};
use crate::ConfigError;

/// Builds a [`Queue`]; from [`Queue::builder`].
///
/// ```
/// use std::time::Duration;
/// use layercake::queue::{Backoff, Queue};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Translate { file_id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), layercake::ConfigError> {
/// let queue: Queue<Translate, String> = Queue::builder("translate")
///     .workers(4)
///     .capacity(1_000)
///     .max_attempts(3)
///     .backoff(Backoff::exponential(Duration::from_millis(200)))
///     .result_ttl(Duration::from_secs(3600))
///     .job_id(|req: &Translate| Some(format!("file-{}", req.file_id)))
///     .build()?;
///
/// // Bad input is an error that names the setting, never silently "fixed".
/// let err = Queue::<Translate, String>::builder("translate").workers(0).build().unwrap_err();
/// assert_eq!(err.setting(), "workers");
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct QueueBuilder<Req, Res, St = MemoryStore> {
    name: String,
    workers: usize,
    capacity: usize,
    max_attempts: u32,
    backoff: Backoff,
    result_ttl: Duration,
    cancel_grace: Duration,
    load_shed: bool,
    job_id: Option<JobIdFn<Req>>,
    on_change: Option<Hook>,
    runtime: Option<Handle>,
    store: St,
    /// The Redis store to build, for a queue given a URL ([`redis_url`](Self::redis_url)).
    redis: Option<RedisStoreBuilder>,
    /// Makes the final store at `build`: `store` as it is, or the Redis store from `redis`.
    finish: Finish<St>,
    _res: PhantomData<fn() -> Res>,
}

type Finish<St> = fn(St, Option<RedisStoreBuilder>) -> Result<St, ConfigError>;

fn as_given<St>(store: St, _: Option<RedisStoreBuilder>) -> Result<St, ConfigError> {
    Ok(store)
}

fn redis_if_configured(
    store: AnyStore,
    redis: Option<RedisStoreBuilder>,
) -> Result<AnyStore, ConfigError> {
    match redis {
        Some(redis) => Ok(AnyStore::redis(redis.build()?)),
        None => Ok(store),
    }
}

impl<Req, Res> QueueBuilder<Req, Res, MemoryStore> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            capacity: 1024,
            max_attempts: 3,
            backoff: Backoff::default(),
            result_ttl: Duration::from_secs(3600),
            cancel_grace: Duration::from_secs(5),
            load_shed: false,
            job_id: None,
            on_change: None,
            runtime: None,
            store: MemoryStore::new(),
            redis: None,
            finish: as_given,
            _res: PhantomData,
        }
    }

    /// Keeps jobs in Redis at `url` (a [`RedisStore`] named after the queue), or in
    /// process when `url` is `None`: `redis_url(std::env::var("REDIS_URL").ok())` runs on
    /// Redis where it is configured and in process elsewhere, with one queue type
    /// ([`AnyStore`]).
    ///
    /// With Redis, jobs survive restarts, and any process with the same queue name and
    /// Redis enqueues, runs, reads and cancels them. `build` connects to nothing and
    /// never fails because Redis is down; each store operation then fails within
    /// [`RedisOptions::command_timeout`] (enqueue included: a [`QueueError`] that
    /// [`is_store`](super::QueueError::is_store)), and workers wait and resume by
    /// themselves when Redis is back.
    ///
    /// [`QueueError`]: super::QueueError
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Translate;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), layercake::ConfigError> {
    /// use layercake::queue::Queue;
    ///
    /// let queue = Queue::<Translate, String>::builder("translate")
    ///     .redis_url(std::env::var("LAYERCAKE_EXAMPLE_REDIS").ok())
    ///     .build()?;
    /// assert_eq!(queue.store().as_redis().is_some(), std::env::var("LAYERCAKE_EXAMPLE_REDIS").is_ok());
    /// # Ok(()) }
    /// ```
    pub fn redis_url(self, url: impl IntoRedisUrl) -> QueueBuilder<Req, Res, AnyStore> {
        self.redis(RedisOptions::new(url))
    }

    /// As [`redis_url`](Self::redis_url), with the connection settings as a group (the
    /// ones the cache takes).
    pub fn redis(self, options: RedisOptions) -> QueueBuilder<Req, Res, AnyStore> {
        let redis = options
            .has_url()
            .then(|| RedisStore::builder(self.name.clone()).redis(options));
        let mut builder = self.store(AnyStore::memory(MemoryStore::new()));
        builder.redis = redis;
        builder.finish = redis_if_configured;
        builder
    }
}

impl<Req, Res> QueueBuilder<Req, Res, AnyStore> {
    /// The Redis store's lease (see [`RedisStoreBuilder::lease`]; default 10 s, at least
    /// 2 s): a job whose worker died runs again within about this long. No effect on the
    /// in-process store.
    pub fn lease(mut self, lease: std::time::Duration) -> Self {
        self.redis = self.redis.map(|redis| redis.lease(lease));
        self
    }
}

impl<Req, Res, St> QueueBuilder<Req, Res, St> {
    /// How many jobs run at once, at most (default: the number of CPUs). Must be at least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many jobs may wait in the queue before the service's `poll_ready` is `Pending`
    /// (default 1024). Must be at least 1.
    ///
    /// A slot is taken when a job is enqueued and freed when it starts (or is cancelled);
    /// a job queued again for a retry takes one again.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How many attempts a job gets before it fails (default 3; 1 means no retries). Must
    /// be at least 1.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The wait between attempts (default: exponential from 200 ms, up to one minute, with
    /// jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a finished job (its result or error) is kept (default one hour). Must be
    /// more than zero.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How long a running job that was cancelled has to stop by itself before its future
    /// is dropped (default 5 s; zero drops it at once).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// At capacity, fail the call with [`QueueError::is_overloaded`] at once instead of
    /// making `poll_ready` wait (default `false`). As with `tower::load_shed`, `poll_ready`
    /// is then always ready and the error comes from the call.
    ///
    /// [`QueueError::is_overloaded`]: super::QueueError::is_overloaded
    pub fn load_shed(mut self, load_shed: bool) -> Self {
        self.load_shed = load_shed;
        self
    }

    /// Gives jobs a deterministic id derived from the request, so that enqueueing the same
    /// work while it is queued or running returns the existing job instead of adding a copy
    /// (counted as `deduplicated`). Return `None` for a random id. Once the job has
    /// finished, the id can be enqueued again and runs again.
    pub fn job_id<F, K>(mut self, job_id: F) -> Self
    where
        F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
        K: Into<JobId>,
    {
        self.job_id = Some(Box::new(move |req: &Req| job_id(req).map(Into::into)));
        self
    }

    /// Calls `hook` whenever a job changes in this process: enqueued (`Queued`), started or
    /// reported progress (`Running`), queued again for a retry (`Queued`), completed,
    /// failed or cancelled. It runs after the change is in the store, on the task that made
    /// it, so keep it short (spawn anything slow). A panic in it is caught and logged.
    ///
    /// Typical use: invalidating a cached copy of the job's status.
    pub fn on_change<F>(mut self, hook: F) -> Self
    where
        F: Fn(&JobId, JobStatus) + Send + Sync + 'static,
    {
        self.on_change = Some(Box::new(hook));
        self
    }

    /// Runs the workers on this runtime instead of the one `build` is called on: for
    /// example a dedicated runtime for CPU-heavy jobs.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Keeps jobs in `store` instead of a fresh [`MemoryStore`].
    pub fn store<St2: Store>(self, store: St2) -> QueueBuilder<Req, Res, St2> {
        QueueBuilder {
            name: self.name,
            workers: self.workers,
            capacity: self.capacity,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            result_ttl: self.result_ttl,
            cancel_grace: self.cancel_grace,
            load_shed: self.load_shed,
            job_id: self.job_id,
            on_change: self.on_change,
            runtime: self.runtime,
            store,
            redis: None,
            finish: as_given,
            _res: PhantomData,
        }
    }

    /// Builds the queue. Its workers start when it wraps a service
    /// ([`QueueLayer`](super::QueueLayer)).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting when `workers`, `capacity` or `max_attempts` is
    /// 0, `capacity` is more than Tokio's semaphore can count, `result_ttl` is zero, or no
    /// runtime was given and `build` is not called inside a Tokio runtime.
    pub fn build(self) -> Result<Queue<Req, Res, St>, ConfigError>
    where
        St: Store,
    {
        if self.workers == 0 {
            return Err(ConfigError::new("workers", "must be at least 1"));
        }
        if self.workers > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "workers",
                format!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        if self.capacity > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "capacity",
                format!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.result_ttl.is_zero() {
            return Err(ConfigError::new(
                "result_ttl",
                "must be more than zero, or results would vanish before anyone reads them",
            ));
        }
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(|_| {
                ConfigError::new(
                    "runtime",
                    "build() was called outside a Tokio runtime; call it inside one or pass runtime(handle)",
                )
            })?,
        };

        crate::metrics::describe_once();

        let config = Config {
            workers: self.workers,
            capacity: self.capacity,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            result_ttl: self.result_ttl,
            cancel_grace: self.cancel_grace,
            load_shed: self.load_shed,
        };
        let store = (self.finish)(self.store, self.redis)?;
        let shared = store.lease_duration().is_some();
        let tracker = Tracker::new(
            Arc::from(self.name),
            config,
            self.on_change,
            runtime,
            shared,
        );
        Ok(Queue::from_core(Core {
            tracker: Arc::new(tracker),
            store,
            job_id: self.job_id,
        }))
    }
}

impl<Req, Res, St> fmt::Debug for QueueBuilder<Req, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("capacity", &self.capacity)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("result_ttl", &self.result_ttl)
            .field("cancel_grace", &self.cancel_grace)
            .field("load_shed", &self.load_shed)
            .field("job_id", &self.job_id.as_ref().map(|_| "Fn"))
            .field("on_change", &self.on_change.as_ref().map(|_| "Fn"))
            .field("runtime", &self.runtime)
            .field("redis", &self.redis)
            .finish()
    }
}
