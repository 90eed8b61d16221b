//! L2: the cache's rules for Redis — a time budget per read, a circuit breaker, a bulkhead
//! and a background writer — on top of the crate's Redis base (`crate::redis`).
//!
//! How the pieces fit:
//! - **Connection.** A [`Link`] owns the connection: one validated multiplexed connection
//!   shared by every request, replaced by its supervisor when it dies (see
//!   `src/redis/link.rs`). This file decides what a failure means for a cache.
//! - **Budget.** Each read runs under one deadline (`l2_timeout`) that covers waiting for a
//!   first connection and the command itself ([`Link::run`]).
//! - **Breaker.** A dropped connection trips it at once; `breaker_threshold` consecutive
//!   timeouts or I/O errors trip it too ([`Link::trip`]). While it is open (the link is
//!   down), L2 is skipped at the cost of one state read, and the supervisor tries Redis
//!   every `probe_interval`; the first success closes it. No request ever pays for a probe.
//! - **Bulkhead.** At most `max_in_flight` reads at once; above that, L2 is skipped.
//! - **Writer.** Writes and deletes go through a bounded channel to a background task that
//!   pipelines them in batches. A full channel drops the write and counts it.
//! - **Read cleanup.** [`L2::read`] also removes what can never be read (another Redis type
//!   under the key, a bad envelope header) and skips oversized entries; [`L2::discard`]
//!   removes an entry whose payload does not decode.
//! - **Replicas.** With replica invalidation on, `invalidate` and `clear` announce what they
//!   removed on the cache's channel, and a subscriber keeps this cache's L1 coherent with
//!   the other replicas' announcements ([`Replica`], `replica.rs`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::breaker::FailureRun;

use tokio::sync::mpsc;

use crate::cache::epoch::{Epochs, Ticket};
use crate::cache::stats::{Instruments, L2Cause, L2Op, L2State};
use crate::codec;
use crate::redis::conn::Conn;
use crate::redis::error::{Failure, Fault};
use crate::redis::link::{Events, Link, Status, Wait};
use crate::redis::options::Endpoint;
use crate::redis::throttle::Throttle;

use super::replica::{Notice, Replica};

/// The cache's own settings of its Redis tier (validated by the builder); the connection
/// settings live in `RedisOptions`.
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) read_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) write_queue: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_millis(50),
            breaker_threshold: 5,
            max_in_flight: 512,
            write_queue: 1024,
        }
    }
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

/// The cause a cache counts for a failure of the base.
fn cause_of(fault: Fault) -> L2Cause {
    match fault {
        Fault::Timeout => L2Cause::Timeout,
        Fault::Io => L2Cause::Io,
        Fault::Server => L2Cause::Server,
        Fault::WrongType | Fault::Decode => L2Cause::Decode,
        Fault::NotConnected => L2Cause::BreakerOpen,
    }
}

/// What the cache logs and gauges when its connection comes and goes.
struct CacheEvents {
    cache: Arc<str>,
    ins: Arc<Instruments>,
}

impl Events for CacheEvents {
    fn connected(&self, url: &str, again: bool) {
        self.ins.set_breaker_open(false);
        if again {
            tracing::warn!(cache = %self.cache, redis = %url, "redis cache tier reachable again: circuit breaker closed");
        } else {
            tracing::info!(cache = %self.cache, redis = %url, "redis cache tier connected");
        }
    }

    fn unreachable(&self, url: &str, detail: &str, held_back: u64, retry_every: Duration) {
        self.ins.set_breaker_open(true);
        tracing::warn!(
            cache = %self.cache,
            redis = %url,
            error = %detail,
            held_back,
            "cannot reach the redis cache tier; running on L1 and the inner service, retrying every {retry_every:?}"
        );
    }

    fn lost(&self, url: &str, reason: &str, retry_every: Duration) {
        self.ins.set_breaker_open(true);
        tracing::warn!(
            cache = %self.cache,
            redis = %url,
            cause = reason,
            "redis cache tier unhealthy: circuit breaker open, serving from L1 and the inner service; probing every {retry_every:?}"
        );
    }
}

pub(crate) struct L2 {
    cfg: L2Config,
    link: Arc<Link>,
    cache: Arc<str>,
    /// The current run of failures: what opens the breaker.
    failures: FailureRun,
    /// The origin of the window's clock.
    epoch: Instant,
    in_flight: AtomicUsize,
    started: AtomicBool,
    writes: mpsc::Sender<Write>,
    writes_rx: Mutex<Option<mpsc::Receiver<Write>>>,
    ins: Arc<Instruments>,
    /// The cache's invalidation epochs: a queued `SET` whose key was invalidated after its
    /// value was read is dropped, not written over the invalidation.
    epochs: Arc<Epochs>,
    warn: Throttle,
    /// Replica invalidation (`None`: off).
    replica: Option<Replica>,
}

impl fmt::Debug for L2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2")
            .field("url", &self.url())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// An entry [`L2::read`] found: its checked envelope header, and the bytes read.
pub(crate) struct Stored {
    pub(crate) header: codec::Header,
    bytes: Vec<u8>,
}

impl Stored {
    /// The payload, after the header.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.bytes[self.header.len..]
    }

    /// The entry's tag digests (none below version 3).
    pub(crate) fn tags(&self) -> Vec<[u8; crate::key::DIGEST_BYTES]> {
        self.header.tags(&self.bytes)
    }
}

impl L2 {
    pub(crate) fn new(
        endpoint: Endpoint,
        cfg: L2Config,
        cache: Arc<str>,
        ins: Arc<Instruments>,
        epochs: Arc<Epochs>,
        replica: Option<Replica>,
    ) -> Self {
        let (writes, rx) = mpsc::channel(cfg.write_queue);
        let read_budget = cfg.read_timeout;
        let events = CacheEvents {
            cache: Arc::clone(&cache),
            ins: Arc::clone(&ins),
        };
        Self {
            cfg,
            // The half-open probe is judged by the read budget: a Redis that answers, but
            // slower than reads may wait, stays out until it is fast again.
            link: Arc::new(Link::new(endpoint, events).admit_within(read_budget)),
            cache,
            failures: FailureRun::default(),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            writes,
            writes_rx: Mutex::new(Some(rx)),
            ins,
            epochs,
            warn: Throttle::new(Duration::from_secs(10)),
            replica,
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        self.link.endpoint()
    }

    /// The Redis URL, redacted: the only form that is ever shown.
    pub(crate) fn url(&self) -> &str {
        self.link.url()
    }

    pub(crate) fn state(&self) -> L2State {
        match self.link.status() {
            Status::Connecting => L2State::Connecting,
            Status::Connected => L2State::Connected,
            Status::Down => L2State::BreakerOpen,
        }
    }

    fn write_timeout(&self) -> Duration {
        self.link.endpoint().command_timeout
    }

    /// Starts the connection supervisor and the writer on the current Tokio runtime, once.
    /// Called from `build()` and from every L2 entry point because a cache may be built
    /// outside any runtime.
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
        self.link.start();
        let rx = self.writes_rx.lock().ok().and_then(|mut rx| rx.take());
        if let Some(rx) = rx {
            rt.spawn(write_loop(Arc::downgrade(self), rx));
        }
        if let Some(replica) = &self.replica {
            replica.start(&rt, Arc::downgrade(self));
        }
    }

    /// Reads `key`. `Ok(None)` is a plain miss; `Err` says why L2 could not answer (counted
    /// and logged here).
    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Vec<u8>>, L2Cause> {
        let mut get = redis::cmd("GET");
        get.arg(key);
        self.read_command(&get, true).await
    }

    /// Runs `cmd` as a read: skipped while the breaker is open or the bulkhead full, under
    /// the read budget, its failure counted and logged (and a breaker step). `timed`: its
    /// time is a lookup's (`l2_lookup`).
    async fn read_command<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        cmd: &redis::Cmd,
        timed: bool,
    ) -> Result<T, L2Cause> {
        self.ensure_started();
        if self.link.is_down() {
            return Err(self.skipped(L2Op::Get, L2Cause::BreakerOpen));
        }
        let Some(_slot) = self.bulkhead() else {
            return Err(self.skipped(L2Op::Get, L2Cause::Bulkhead));
        };
        let started = Instant::now();
        let result = self
            .link
            .run(
                self.cfg.read_timeout,
                Wait::UnlessDown,
                |mut conn| async move { cmd.query_async::<T>(&mut conn).await },
            )
            .await;
        if timed {
            self.ins.l2_lookup(started.elapsed());
        }
        match result {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            // The first connection attempt failed while we waited for it.
            Err(f) if f.fault == Fault::NotConnected => {
                Err(self.skipped(L2Op::Get, L2Cause::BreakerOpen))
            }
            Err(f) => Err(self.failed(L2Op::Get, f)),
        }
    }

    /// The Redis side of a cache read, with every failure handled here: `GET`s `redis_key`
    /// and checks its envelope header. `Ok(Some(stored))` is an entry to decode (expiry is
    /// the caller's to check by its clock);
    /// `Ok(None)` a plain miss; `Err` a counted, logged miss. A key holding another Redis
    /// type, or bytes that are not an envelope this build knows, is removed; an entry whose
    /// payload exceeds `max_payload` bytes (written by a replica with a larger limit) is
    /// skipped and left alone.
    pub(crate) async fn read(
        self: &Arc<Self>,
        redis_key: &str,
        max_payload: usize,
    ) -> Result<Option<Stored>, L2Cause> {
        let bytes = match self.get(redis_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(L2Cause::Decode) => {
                // Another Redis type under our key (counted by `get`): remove it.
                self.write(Write::Del {
                    key: redis_key.to_owned(),
                });
                return Err(L2Cause::Decode);
            }
            Err(cause) => return Err(cause),
        };
        let header = match codec::decode_header(&bytes) {
            Ok((header, _)) => header,
            Err(e) => {
                self.discard_counted(redis_key.to_owned(), e);
                return Err(L2Cause::Decode);
            }
        };
        if bytes.len() - header.len > max_payload {
            self.ins.l2_error(L2Op::Get, L2Cause::Oversized);
            tracing::debug!(cache = %self.cache, key = %redis_key, size = bytes.len(), "cache entry over max_entry_size skipped");
            return Err(L2Cause::Oversized);
        }
        // The payload stays where it is: no copy on the hit path.
        Ok(Some(Stored { header, bytes }))
    }

    /// Removes an entry [`read`](Self::read) returned whose payload does not decode into the
    /// cache's value type; counted as a decode failure.
    pub(crate) fn discard(self: &Arc<Self>, redis_key: String) {
        self.discard_counted(redis_key, codec::DecodeError::Payload);
    }

    fn discard_counted(self: &Arc<Self>, redis_key: String, why: codec::DecodeError) {
        self.ins.l2_error(L2Op::Get, L2Cause::Decode);
        tracing::debug!(cache = %self.cache, key = %redis_key, error = ?why, "undecodable cache entry removed");
        self.write(Write::Del { key: redis_key });
    }

    /// Queues a write for the background writer; never waits.
    pub(crate) fn write(self: &Arc<Self>, write: Write) {
        self.ensure_started();
        let op = op_of(&write);
        if self.link.is_down() {
            self.skipped(op, L2Cause::BreakerOpen);
            return;
        }
        if self.writes.try_send(write).is_err() {
            self.skipped(op, L2Cause::Dropped);
        }
    }

    /// Deletes keys now (not through the writer), for `invalidate`, and announces `notice`
    /// to the other replicas in the same pipeline, after the `UNLINK`: a replica that hears
    /// of it can no longer read the old value back from Redis.
    pub(crate) async fn delete_now(
        self: &Arc<Self>,
        keys: &[String],
        notice: Notice,
    ) -> Result<(), L2Error> {
        self.ensure_started();
        let (mut conn, gen) = self.admin_connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(keys).ignore();
        self.announce(&mut pipe, notice);
        self.run_admin(&mut conn, gen, &pipe, "UNLINK").await
    }

    /// Records a tag's invalidation for `invalidate_tag`: sets its key to `at_ms` for `ttl`
    /// (longer than any entry it covers lives) unless it holds a later time already, and
    /// announces `notice` after it: a replica that hears of it reads the new time. The
    /// later time stands so that a replica whose clock runs behind cannot pull back the
    /// invalidation of one whose clock runs ahead (entries stored between the two times
    /// would come back); the key's life is extended either way.
    pub(crate) async fn mark_tag(
        self: &Arc<Self>,
        tag_key: &str,
        at_ms: u64,
        ttl: Duration,
        notice: Notice,
    ) -> Result<(), L2Error> {
        self.ensure_started();
        let (mut conn, gen) = self.admin_connection().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        // `EVAL` rather than `EVALSHA`: the script is a few lines, and a pipeline cannot
        // load it on a `NOSCRIPT`.
        pipe.cmd("EVAL")
            .arg(MARK_TAG)
            .arg(1)
            .arg(tag_key)
            .arg(at_ms)
            .arg(ms)
            .ignore();
        self.announce(&mut pipe, notice);
        self.run_admin(&mut conn, gen, &pipe, "EVAL (tag marker)")
            .await
    }

    /// Appends to `pipe`, after what it holds, the announcement of `notice` to the other
    /// replicas (when they are told at all).
    fn announce(&self, pipe: &mut redis::Pipeline, notice: Notice) {
        if let Some(replica) = &self.replica {
            pipe.cmd("PUBLISH")
                .arg(replica.channel())
                .arg(replica.message(notice))
                .ignore();
        }
    }

    /// Runs `pipe` as one admin step on `conn` (of generation `gen`), within the write
    /// budget.
    async fn run_admin(
        &self,
        conn: &mut Conn,
        gen: u64,
        pipe: &redis::Pipeline,
        what: &str,
    ) -> Result<(), L2Error> {
        let outcome = self
            .link
            .run_on(gen, self.write_timeout(), conn.run_in_order(pipe))
            .await;
        self.admin_outcome(outcome, what)
    }

    /// Reads tags' invalidation times (one `MGET`, under the read budget, as a read):
    /// `0` for a tag never invalidated (or whose marker expired), and, for a value that is
    /// not a time (not ours), `unreadable_as`: taken as invalidated then.
    pub(crate) async fn tag_times(
        self: &Arc<Self>,
        tag_keys: &[String],
        unreadable_as: u64,
    ) -> Result<Vec<u64>, L2Cause> {
        let mut mget = redis::cmd("MGET");
        mget.arg(tag_keys);
        let values: Vec<Option<Vec<u8>>> = self.read_command(&mget, false).await?;
        Ok(values
            .into_iter()
            .map(|v| match v {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(unreadable_as),
            })
            .collect())
    }

    /// Counts and converts the outcome of one admin step (`invalidate`, `clear`).
    fn admin_outcome<T>(&self, outcome: Result<T, Failure>, what: &str) -> Result<T, L2Error> {
        match outcome {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            Err(f) => {
                let detail = if f.fault == Fault::Timeout {
                    format!("{what} timed out")
                } else {
                    f.detail.clone()
                };
                let cause = self.failed(L2Op::Del, f);
                Err(L2Error::new(cause, detail))
            }
        }
    }

    /// Removes every key matching `pattern` with SCAN + UNLINK in batches (never KEYS), on
    /// every primary of a cluster in turn. Returns how many keys were unlinked.
    pub(crate) async fn delete_matching(self: &Arc<Self>, pattern: &str) -> Result<u64, L2Error> {
        self.ensure_started();
        let (mut conn, gen) = self.admin_connection().await?;
        let primaries = self
            .link
            .run_on(gen, self.write_timeout(), conn.primaries())
            .await;
        let primaries = self.admin_outcome(primaries, "CLUSTER SLOTS")?;
        let nodes: Vec<Option<&(String, u16)>> = match &primaries {
            Some(primaries) => primaries.iter().map(Some).collect(),
            None => vec![None],
        };
        let mut removed = 0u64;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let step = async {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500);
                    let (next, keys): (u64, Vec<String>) = conn.query_on(node, &scan).await?;
                    // Routed by slot: on a cluster, split over the slots' nodes.
                    let n = if keys.is_empty() {
                        0
                    } else {
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<u64>(&mut conn)
                            .await?
                    };
                    Ok((next, n))
                };
                let outcome = self.link.run_on(gen, self.write_timeout(), step).await;
                let (next, n) = self.admin_outcome(outcome, "SCAN/UNLINK")?;
                removed += n;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        // Once every entry is gone from Redis, so that no replica reads one back.
        if self.replica.is_some() {
            let mut pipe = redis::pipe();
            self.announce(&mut pipe, Notice::Clear);
            self.run_admin(&mut conn, gen, &pipe, "PUBLISH").await?;
        }
        Ok(removed)
    }

    /// The connection for an admin operation, waiting up to the connect timeout for a first
    /// one.
    async fn admin_connection(&self) -> Result<(Conn, u64), L2Error> {
        let wait = self.link.endpoint().connect_timeout;
        match tokio::time::timeout(wait, self.link.connection(Wait::UnlessDown)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(_)) => Err(L2Error::new(L2Cause::BreakerOpen, "Redis is not connected")),
            Err(_) => Err(L2Error::new(L2Cause::Timeout, "still connecting to Redis")),
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
        self.failures.succeeded();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a failed operation, logs it (rate-limited), and trips the breaker when the
    /// connection is dead, or when `breaker_threshold` operations failed in a row over at
    /// least one read budget ([`FailureRun`]).
    fn failed(&self, op: L2Op, failure: Failure) -> L2Cause {
        let cause = cause_of(failure.fault);
        self.ins.l2_error(op, cause);
        let detail = &failure.detail;
        tracing::debug!(cache = %self.cache, op = ?op, cause = cause.as_str(), %detail, "redis cache tier failed");
        if let Some(held_back) = self.warn.allow() {
            tracing::warn!(
                cache = %self.cache,
                redis = %self.url(),
                cause = cause.as_str(),
                %detail,
                held_back,
                "redis cache tier failed; treating it as a miss (further failures are logged at most every 10 s)"
            );
        }
        if failure.is_connection_failure() {
            let budget_ms = u64::try_from(self.cfg.read_timeout.as_millis()).unwrap_or(u64::MAX);
            let open = self
                .failures
                .failed(self.now_ms(), self.cfg.breaker_threshold, budget_ms);
            if failure.dead || open {
                if let Some(gen) = failure.gen {
                    self.link.trip(gen, cause.as_str());
                }
            }
        }
        cause
    }

    async fn flush(&self, batch: &[Write]) {
        // Writes queued while the first connection is being made wait for it (within the
        // write budget) rather than being dropped; with the breaker open they are skipped.
        let budget = self.write_timeout();
        let connected = tokio::time::timeout(budget, self.link.connection(Wait::UnlessDown)).await;
        let (mut conn, gen) = match connected {
            Ok(Ok(ready)) => ready,
            Ok(Err(_)) => {
                for w in batch.iter() {
                    self.skipped(op_of(w), L2Cause::BreakerOpen);
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
        let outcome = self.link.run_on(gen, budget, conn.run_each(&pipe)).await;
        match outcome {
            Ok(()) => self.succeeded(),
            Err(f) => {
                for w in batch.iter() {
                    self.failed(op_of(w), f.clone());
                }
            }
        }
    }
}

/// Sets a tag marker (`KEYS[1]`) to the time `ARGV[1]` unless it holds a later one, and
/// makes it live at least `ARGV[2]` ms more.
const MARK_TAG: &str = r"
local held = tonumber(redis.call('GET', KEYS[1]))
if held == nil or held < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

fn op_of(w: &Write) -> L2Op {
    match w {
        Write::Set { .. } => L2Op::Set,
        Write::Del { .. } => L2Op::Del,
    }
}

/// A bulkhead slot, released on drop.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
