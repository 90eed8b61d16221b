//! L2: Redis through a bb8-redis pool, under a time budget, a circuit breaker and a bulkhead.
//!
//! How the pieces fit:
//! - **Connection life cycle.** A background *supervisor* task owns the bb8 pool. It checks
//!   out a validated (`PING`ed) `MultiplexedConnection`, publishes a clone of it, and returns
//!   the pooled one at once. Requests share that clone: a multiplexed connection pipelines
//!   every caller's commands, while holding a pooled connection per command would serialize
//!   them (measured: a pool of 10 gave a quarter of one multiplexed connection's
//!   throughput), and bb8's `test_on_check_out` would add a `PING` round trip to each read.
//! - **Budget.** Each read runs under one deadline that covers waiting for a first
//!   connection and the command itself. The caller's own deadline is what bounds a
//!   blackholed connection: redis-rs' response timeout alone does not replace it.
//! - **Breaker.** A dropped connection trips it at once; `breaker_threshold` consecutive
//!   timeouts or I/O errors trip it too. While it is open, L2 is skipped at the cost of one
//!   state read, and the supervisor probes Redis every `probe_interval` by
//!   checking out (and so `PING`ing) a connection; the first success closes it. No request
//!   ever pays for a probe. While the breaker is closed, the supervisor `PING`s the shared
//!   connection every `probe_interval` too, so a cache with no traffic still notices a dead
//!   Redis.
//! - **Bulkhead.** At most `max_in_flight` reads at once; above that, L2 is skipped.
//! - **Writer.** Writes and deletes go through a bounded channel to a background task that
//!   pipelines them in batches. A full channel drops the write and counts it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError};
use tokio::sync::{mpsc, watch, Notify};

use crate::cache::epoch::{Epochs, Ticket};
use crate::cache::stats::{Instruments, L2Cause, L2Op, Throttle};
use crate::ConfigError;

/// Settings of the Redis tier (validated by the builder).
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) write_queue: usize,
    pub(crate) pool_size: u32,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
            breaker_threshold: 5,
            max_in_flight: 512,
            write_queue: 1024,
            pool_size: 2,
        }
    }
}

/// The connection as requests see it.
enum Conn {
    /// Never connected yet: reads wait for the first connection, within their budget.
    Connecting,
    /// In use. `gen` tells a stale failure report (about a connection already replaced)
    /// from a current one.
    Ready {
        conn: MultiplexedConnection,
        gen: u64,
    },
    /// Breaker open: L2 is skipped until the supervisor reconnects.
    Down,
}

pub(crate) enum Write {
    Set {
        key: String,
        bytes: Vec<u8>,
        ttl: Duration,
        ticket: Ticket,
    },
    Del {
        key: String,
    },
}

/// A failed L2 operation started by the application (`invalidate`, `clear`).
///
/// It never carries the Redis URL or its credentials.
#[derive(Debug, Clone)]
pub struct L2Error {
    cause: L2Cause,
    detail: String,
}

impl L2Error {
    fn new(cause: L2Cause, detail: impl Into<String>) -> Self {
        Self {
            cause,
            detail: detail.into(),
        }
    }

    /// Why the operation failed.
    pub fn cause(&self) -> L2Cause {
        self.cause
    }

    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.cause == L2Cause::Timeout
    }

    /// Whether Redis was unreachable (connection failure, or breaker open).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.cause, L2Cause::Io | L2Cause::BreakerOpen)
    }
}

impl fmt::Display for L2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redis cache tier: {}: {}",
            self.cause.as_str(),
            self.detail
        )
    }
}

impl std::error::Error for L2Error {}

pub(crate) struct L2 {
    cfg: L2Config,
    manager: RedisConnectionManager,
    /// The URL with its password replaced, the only form that is ever logged.
    url: String,
    cache: Arc<str>,
    state: watch::Sender<Conn>,
    generation: AtomicU64,
    failures: AtomicU32,
    in_flight: AtomicUsize,
    started: AtomicBool,
    writes: mpsc::Sender<Write>,
    writes_rx: Mutex<Option<mpsc::Receiver<Write>>>,
    wake: Arc<Notify>,
    ins: Arc<Instruments>,
    /// The cache's invalidation epochs: a queued `SET` whose key was invalidated after its
    /// value was read is dropped, not written over the invalidation.
    epochs: Arc<Epochs>,
    warn: Throttle,
}

impl fmt::Debug for L2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2")
            .field("url", &self.url)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Drop for L2 {
    fn drop(&mut self) {
        // Lets the supervisor notice that the cache is gone.
        self.wake.notify_one();
    }
}

impl L2 {
    pub(crate) fn new(
        url: &str,
        cfg: L2Config,
        cache: Arc<str>,
        ins: Arc<Instruments>,
        epochs: Arc<Epochs>,
    ) -> Result<Self, ConfigError> {
        let manager = RedisConnectionManager::new(url).map_err(|e| {
            ConfigError::new(
                "redis_url",
                format!(
                    "`{}` is not a Redis URL ({}); expected redis://[user[:password]@]host[:port][/db]",
                    redact_url(url),
                    e.category()
                ),
            )
        })?;
        let (writes, rx) = mpsc::channel(cfg.write_queue);
        let (state, _) = watch::channel(Conn::Connecting);
        Ok(Self {
            cfg,
            manager,
            url: redact_url(url),
            cache,
            state,
            generation: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            writes,
            writes_rx: Mutex::new(Some(rx)),
            wake: Arc::new(Notify::new()),
            ins,
            epochs,
            warn: Throttle::new(Duration::from_secs(10)),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn state(&self) -> crate::cache::stats::L2State {
        use crate::cache::stats::L2State;
        match &*self.state.borrow() {
            Conn::Connecting => L2State::Connecting,
            Conn::Ready { .. } => L2State::Connected,
            Conn::Down => L2State::BreakerOpen,
        }
    }

    /// Starts the supervisor and the writer on the current Tokio runtime, once. Called from
    /// `build()` and from every L2 entry point because a cache may be built outside any
    /// runtime.
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let rx = self.writes_rx.lock().ok().and_then(|mut rx| rx.take());
        rt.spawn(supervise(Arc::downgrade(self), Arc::clone(&self.wake)));
        if let Some(rx) = rx {
            rt.spawn(write_loop(Arc::downgrade(self), rx));
        }
    }

    /// The current connection, waiting (within the caller's deadline) for the first one.
    async fn connection(&self) -> Result<(MultiplexedConnection, u64), L2Cause> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Conn::Ready { conn, gen } => return Ok((conn.clone(), *gen)),
                Conn::Down => return Err(L2Cause::BreakerOpen),
                Conn::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(L2Cause::BreakerOpen);
            }
        }
    }

    /// Reads `key`. `Ok(None)` is a plain miss; `Err` says why L2 could not answer.
    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Vec<u8>>, L2Cause> {
        self.ensure_started();
        // One read of the state serves the breaker check and, almost always, the connection.
        let ready = match &*self.state.borrow() {
            Conn::Ready { conn, gen } => Some((conn.clone(), *gen)),
            Conn::Down => return Err(self.skipped(L2Op::Get, L2Cause::BreakerOpen)),
            Conn::Connecting => None,
        };
        let Some(_slot) = self.bulkhead() else {
            return Err(self.skipped(L2Op::Get, L2Cause::Bulkhead));
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.cfg.read_timeout, async {
            let (mut conn, gen) = match ready {
                Some(ready) => ready,
                None => self.connection().await.map_err(|c| (c, None))?,
            };
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
                .map_err(|e| (classify(&e), Some((gen, e))))
        })
        .await;
        self.ins.l2_lookup(started.elapsed());
        match result {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            // The first connection attempt failed while we waited for it.
            Ok(Err((cause, None))) => Err(self.skipped(L2Op::Get, cause)),
            Ok(Err((cause, Some((gen, e))))) => {
                Err(self.failed(L2Op::Get, cause, Some(gen), is_dead(&e), Some(describe(&e))))
            }
            Err(_elapsed) => {
                let gen = self.current_gen();
                Err(self.failed(
                    L2Op::Get,
                    L2Cause::Timeout,
                    gen,
                    false,
                    Some(format!("no answer within {:?}", self.cfg.read_timeout)),
                ))
            }
        }
    }

    /// Queues a write for the background writer; never waits.
    pub(crate) fn write(self: &Arc<Self>, write: Write) {
        self.ensure_started();
        let op = match write {
            Write::Set { .. } => L2Op::Set,
            Write::Del { .. } => L2Op::Del,
        };
        if matches!(&*self.state.borrow(), Conn::Down) {
            self.skipped(op, L2Cause::BreakerOpen);
            return;
        }
        if self.writes.try_send(write).is_err() {
            self.skipped(op, L2Cause::Dropped);
        }
    }

    /// Deletes keys now (not through the writer), for `invalidate`.
    pub(crate) async fn delete_now(self: &Arc<Self>, keys: &[String]) -> Result<(), L2Error> {
        self.ensure_started();
        let (mut conn, gen) = self.admin_connection().await?;
        let mut cmd = redis::cmd("UNLINK");
        cmd.arg(keys);
        let outcome =
            tokio::time::timeout(self.cfg.write_timeout, cmd.query_async::<()>(&mut conn)).await;
        self.admin_outcome(outcome, gen, "UNLINK")
    }

    /// Counts and converts the outcome of one admin step (`invalidate`, `clear`).
    fn admin_outcome<T>(
        &self,
        outcome: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
        gen: u64,
        what: &str,
    ) -> Result<T, L2Error> {
        match outcome {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(e)) => {
                let cause = classify(&e);
                let detail = describe(&e);
                self.failed(
                    L2Op::Del,
                    cause,
                    Some(gen),
                    is_dead(&e),
                    Some(detail.clone()),
                );
                Err(L2Error::new(cause, detail))
            }
            Err(_) => {
                self.failed(L2Op::Del, L2Cause::Timeout, Some(gen), false, None);
                Err(L2Error::new(L2Cause::Timeout, format!("{what} timed out")))
            }
        }
    }

    /// Removes every key matching `pattern` with SCAN + UNLINK in batches (never KEYS).
    /// Returns how many keys were unlinked.
    pub(crate) async fn delete_matching(self: &Arc<Self>, pattern: &str) -> Result<u64, L2Error> {
        self.ensure_started();
        let (mut conn, gen) = self.admin_connection().await?;
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let step = async {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                let n = if keys.is_empty() {
                    0
                } else {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<u64>(&mut conn)
                        .await?
                };
                Ok::<_, RedisError>((next, n))
            };
            let (next, n) = self.admin_outcome(
                tokio::time::timeout(self.cfg.write_timeout, step).await,
                gen,
                "SCAN/UNLINK",
            )?;
            removed += n;
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    async fn admin_connection(&self) -> Result<(MultiplexedConnection, u64), L2Error> {
        match tokio::time::timeout(self.cfg.connect_timeout, self.connection()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(cause)) => Err(L2Error::new(cause, "Redis is not connected")),
            Err(_) => Err(L2Error::new(L2Cause::Timeout, "still connecting to Redis")),
        }
    }

    fn current_gen(&self) -> Option<u64> {
        match &*self.state.borrow() {
            Conn::Ready { gen, .. } => Some(*gen),
            _ => None,
        }
    }

    fn bulkhead(&self) -> Option<Slot<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(&self.in_flight);
        (before < self.cfg.max_in_flight).then_some(slot)
    }

    /// Counts an operation that L2 did not attempt.
    fn skipped(&self, op: L2Op, cause: L2Cause) -> L2Cause {
        self.ins.l2_error(op, cause);
        tracing::debug!(cache = %self.cache, op = ?op, cause = cause.as_str(), "redis cache tier skipped");
        cause
    }

    fn succeeded(&self) {
        // Read first: a store on every success would bounce the cache line between cores.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failed operation, logs it (rate-limited), and trips the breaker when the
    /// connection is dead or has failed `breaker_threshold` times in a row.
    fn failed(
        &self,
        op: L2Op,
        cause: L2Cause,
        gen: Option<u64>,
        dead: bool,
        detail: Option<String>,
    ) -> L2Cause {
        self.ins.l2_error(op, cause);
        let detail = detail.unwrap_or_default();
        tracing::debug!(cache = %self.cache, op = ?op, cause = cause.as_str(), %detail, "redis cache tier failed");
        if let Some(held_back) = self.warn.allow() {
            tracing::warn!(
                cache = %self.cache,
                redis = %self.url,
                cause = cause.as_str(),
                %detail,
                held_back,
                "redis cache tier failed; treating it as a miss (further failures are logged at most every 10 s)"
            );
        }
        if cause.is_connection_failure() {
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if dead || n >= self.cfg.breaker_threshold {
                if let Some(gen) = gen {
                    self.trip(gen, cause);
                }
            }
        }
        cause
    }

    fn trip(&self, gen: u64, cause: L2Cause) {
        let tripped = self.state.send_if_modified(|c| match c {
            Conn::Ready { gen: current, .. } if *current == gen => {
                *c = Conn::Down;
                true
            }
            _ => false,
        });
        if tripped {
            self.ins.set_breaker_open(true);
            tracing::warn!(
                cache = %self.cache,
                redis = %self.url,
                cause = cause.as_str(),
                "redis cache tier unhealthy: circuit breaker open, serving from L1 and the inner service; probing every {:?}",
                self.cfg.probe_interval
            );
            self.wake.notify_one();
        }
    }

    /// PINGs the published connection; trips the breaker and returns `false` if it is dead
    /// or does not answer within the connect timeout. Only the supervisor calls it, and
    /// only while no request has reported a failure.
    async fn health_check(&self) -> bool {
        let Some((mut conn, gen)) = (match &*self.state.borrow() {
            Conn::Ready { conn, gen } => Some((conn.clone(), *gen)),
            _ => None,
        }) else {
            return false;
        };
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.cfg.connect_timeout, cmd.query_async::<()>(&mut conn)).await
        {
            Ok(Ok(())) => true,
            // A server error (say, LOADING) says the connection is alive.
            Ok(Err(e)) if !is_dead(&e) && !e.is_timeout() && !e.is_io_error() => true,
            Ok(Err(_)) => {
                self.trip(gen, L2Cause::Io);
                false
            }
            Err(_) => {
                self.trip(gen, L2Cause::Timeout);
                false
            }
        }
    }

    fn build_pool(&self, errors: mpsc::Sender<RedisError>) -> bb8::Pool<RedisConnectionManager> {
        bb8::Pool::builder()
            .max_size(self.cfg.pool_size)
            .min_idle(None)
            // Checkouts happen only when (re)connecting, so a PING there is cheap, and it is
            // what tells a live connection from one to a dead or restarted server.
            .test_on_check_out(true)
            .connection_timeout(self.cfg.connect_timeout)
            // Fail fast on a refused connection: the supervisor has its own retry loop.
            .retry_connection(false)
            .idle_timeout(None)
            .max_lifetime(None)
            // bb8 connects in a task of its own and hands connect errors only to its error
            // sink, while `get()` waits out `connection_timeout`. Forwarding them lets the
            // supervisor fail fast (a refused connection, a wrong password) and log why.
            .error_sink(Box::new(ForwardErrors(errors)))
            .build_unchecked(self.manager.clone())
    }

    async fn flush(&self, batch: &[Write]) {
        // Writes queued while the first connection is being made wait for it (within the
        // write budget) rather than being dropped; with the breaker open they are skipped.
        let connected = tokio::time::timeout(self.cfg.write_timeout, self.connection()).await;
        let (mut conn, gen) = match connected {
            Ok(Ok(ready)) => ready,
            Ok(Err(cause)) => {
                for w in batch.iter() {
                    self.skipped(op_of(w), cause);
                }
                return;
            }
            Err(_) => {
                for w in batch.iter() {
                    self.skipped(op_of(w), L2Cause::Timeout);
                }
                return;
            }
        };
        let mut pipe = redis::pipe();
        let mut sent = 0usize;
        for w in batch.iter() {
            match w {
                // Checked as late as possible, right before the send, which leaves only the
                // moment between this check and the send for an invalidation to slip into.
                Write::Set { ticket, .. } if !self.epochs.is_current(*ticket) => {
                    tracing::debug!(cache = %self.cache, "queued write dropped: its key was invalidated");
                }
                Write::Set {
                    key, bytes, ttl, ..
                } => {
                    sent += 1;
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(ms)
                        .ignore();
                }
                Write::Del { key } => {
                    sent += 1;
                    pipe.cmd("UNLINK").arg(key).ignore();
                }
            }
        }
        if sent == 0 {
            return;
        }
        let outcome =
            tokio::time::timeout(self.cfg.write_timeout, pipe.query_async::<()>(&mut conn)).await;
        match outcome {
            Ok(Ok(())) => self.succeeded(),
            Ok(Err(e)) => {
                let cause = classify(&e);
                let dead = is_dead(&e);
                let detail = describe(&e);
                for w in batch.iter() {
                    self.failed(op_of(w), cause, Some(gen), dead, Some(detail.clone()));
                }
            }
            Err(_) => {
                for w in batch.iter() {
                    self.failed(op_of(w), L2Cause::Timeout, Some(gen), false, None);
                }
            }
        }
    }
}

fn op_of(w: &Write) -> L2Op {
    match w {
        Write::Set { .. } => L2Op::Set,
        Write::Del { .. } => L2Op::Del,
    }
}

/// bb8's error sink, forwarding connect errors to the supervisor.
#[derive(Debug, Clone)]
struct ForwardErrors(mpsc::Sender<RedisError>);

impl bb8::ErrorSink<RedisError> for ForwardErrors {
    fn sink(&self, error: RedisError) {
        // Full means the supervisor already has errors to read: this one adds nothing.
        let _ = self.0.try_send(error);
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

/// A bulkhead slot, released on drop.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps one connection published while Redis is healthy, and probes it back when not.
async fn supervise(l2: Weak<L2>, wake: Arc<Notify>) {
    let (errors_tx, mut errors) = mpsc::channel::<RedisError>(8);
    let mut pool = None;
    let mut was_down = false;
    loop {
        let Some(this) = l2.upgrade() else { return };
        let interval = this.cfg.probe_interval;
        let pool = pool
            .get_or_insert_with(|| this.build_pool(errors_tx.clone()))
            .clone();
        // Errors left over from an earlier attempt say nothing about this one.
        while errors.try_recv().is_ok() {}
        let attempt = tokio::time::timeout(this.cfg.connect_timeout, async {
            tokio::select! {
                got = pool.get() => got.map_err(|e| match e {
                    bb8::RunError::User(e) => describe(&e),
                    bb8::RunError::TimedOut => "timed out".to_owned(),
                }),
                Some(e) = errors.recv() => Err(describe(&e)),
            }
        })
        .await;
        match attempt {
            Ok(Ok(pooled)) => {
                let conn = (*pooled).clone();
                drop(pooled);
                let gen = this.generation.fetch_add(1, Ordering::Relaxed) + 1;
                this.failures.store(0, Ordering::Relaxed);
                this.state.send_replace(Conn::Ready { conn, gen });
                this.ins.set_breaker_open(false);
                if was_down {
                    tracing::warn!(cache = %this.cache, redis = %this.url, "redis cache tier reachable again: circuit breaker closed");
                } else {
                    tracing::info!(cache = %this.cache, redis = %this.url, "redis cache tier connected");
                }
                was_down = false;
                drop(this);
                // Until a request trips the breaker or the cache is dropped, check the
                // connection every probe interval, so that a cache with no traffic does not
                // report a dead connection as connected.
                loop {
                    match tokio::time::timeout(interval, wake.notified()).await {
                        // Tripped by a request, or the cache is gone (checked above).
                        Ok(()) => break,
                        Err(_elapsed) => match l2.upgrade() {
                            Some(this) if this.health_check().await => {}
                            Some(_) => break,
                            None => return,
                        },
                    }
                }
            }
            failure => {
                let detail = match failure {
                    Ok(Err(detail)) => detail,
                    _ => format!("no connection within {:?}", this.cfg.connect_timeout),
                };
                this.state.send_if_modified(|c| {
                    if matches!(c, Conn::Connecting) {
                        *c = Conn::Down;
                        true
                    } else {
                        false
                    }
                });
                this.ins.set_breaker_open(true);
                if !was_down || this.warn.allow().is_some() {
                    tracing::warn!(
                        cache = %this.cache,
                        redis = %this.url,
                        error = %detail,
                        "cannot reach the redis cache tier; running on L1 and the inner service, retrying every {:?}",
                        this.cfg.probe_interval
                    );
                }
                was_down = true;
                let interval = this.cfg.probe_interval;
                drop(this);
                tokio::time::sleep(interval).await;
            }
        }
    }
}

async fn write_loop(l2: Weak<L2>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let Some(this) = l2.upgrade() else { return };
        this.flush(&batch).await;
        batch.clear();
    }
}

fn classify(e: &RedisError) -> L2Cause {
    if e.is_timeout() {
        return L2Cause::Timeout;
    }
    if e.code() == Some("WRONGTYPE") {
        return L2Cause::Decode;
    }
    match e.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => L2Cause::Decode,
        ErrorKind::Server(_) | ErrorKind::AuthenticationFailed | ErrorKind::Extension => {
            L2Cause::Server
        }
        _ => L2Cause::Io,
    }
}

fn is_dead(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_connection_refusal()
}

/// A one-line description of a Redis error. redis-rs does not put URLs in its errors, but
/// this is the one place to mend should that change.
fn describe(e: &RedisError) -> String {
    e.to_string()
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
///
/// Deliberately conservative, because its input may be malformed (it also builds the
/// `ConfigError` for a URL that does not parse): the user-info ends at the LAST `@` (an
/// unencoded password may hold `/`, `?`, `#` or `@`), a URL without `://` is redacted after
/// its first `:` (`redis:/:pw@host`, `redis//user:pw@host`), and `pass`/`password` query
/// parameters (how `unix://` and `redis+unix://` URLs carry credentials) are redacted too.
/// Redacting too much beats leaking.
pub(crate) fn redact_url(url: &str) -> String {
    let start = match url.find("://") {
        Some(i) => i + 3,
        None => url.find(':').map_or(0, |i| i + 1),
    };
    let (head, rest) = url.split_at(start);
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let redacted = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None if userinfo.is_empty() => "@".to_owned(),
                // A lone userinfo part is the password for redis:// URLs without a user name.
                None => "***@".to_owned(),
            };
            (redacted, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{head}{userinfo}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://user:s3cr3t@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cr3t@host/"), "redis://:***@host/");
        assert_eq!(redact_url("rediss://s3cr3t@host"), "rediss://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("not a url"), "not a url");
        assert!(!redact_url("redis://u:p@ss@host/").contains("p@ss"));
        // Malformed URLs and query-string credentials (found by tests/cache_l1.rs).
        assert_eq!(
            redact_url("redis:/:s3cr3t@host:6379/"),
            "redis:/:***@host:6379/"
        );
        assert_eq!(
            redact_url("redis//user:s3cr3t@host"),
            "redis//user:***@host"
        );
        assert_eq!(redact_url("redis://:pa/ss@host/0"), "redis://:***@host/0");
        assert_eq!(
            redact_url("unix:///tmp/r.sock?db=1&pass=s3cr3t&user=me"),
            "unix:///tmp/r.sock?db=1&pass=***&user=me"
        );
        assert_eq!(redact_url("redis://@host/"), "redis://@host/");
    }
}
