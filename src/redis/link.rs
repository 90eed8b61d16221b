//! `Link`: one supervised, shared connection to Redis, and the budgeted command runner.
//!
//! - A background *supervisor* task owns a small bb8 pool. It checks out a validated
//!   (`PING`ed) `Conn`, publishes a clone of it with a new *generation*,
//!   and returns the pooled one at once. Callers share that clone: a multiplexed connection
//!   pipelines every caller's commands, while a pooled connection per command would
//!   serialize them (measured: a pool of 10 gave a quarter of one multiplexed connection's
//!   throughput).
//! - While connected, the supervisor `PING`s the published connection every
//!   `probe_interval`, so an idle owner still notices a dead Redis. When a ping fails, or an
//!   owner gives the connection up ([`Link::trip`]), the link is *down* and the supervisor
//!   tries to connect again every `probe_interval` until it succeeds.
//! - [`Link::run`] runs one command under one deadline that covers waiting for a connection
//!   and the command itself: redis-rs' response timeout alone does not bound a blackholed
//!   connection, nor a wait for a reconnect. What a failure means (a miss, an error, a
//!   breaker step) is the owner's rule; the link only reports it, with the generation of the
//!   connection it ran on so that a stale report cannot trip a newer connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{RedisError, RedisResult};
use tokio::sync::{mpsc, watch, Notify};

use super::conn::Conn;
use super::error::{describe, is_dead, Failure};
use super::manager::{ForwardErrors, Manager};
use super::options::Endpoint;
use super::target::Target;
use super::throttle::Throttle;

/// What the owner of a link is told, to log in its own words and keep its own gauges.
pub(crate) trait Events: Send + Sync + 'static {
    /// A connection was published; `again` when it ends an outage.
    fn connected(&self, url: &str, again: bool);
    /// A connection attempt failed. Called on the first failure of an outage, then at most
    /// every 10 s with how many were `held_back` since the last call.
    fn unreachable(&self, url: &str, detail: &str, held_back: u64, retry_every: Duration);
    /// The published connection was given up (a failed check, or [`Link::trip`]); the link
    /// is down until the supervisor connects again.
    fn lost(&self, url: &str, reason: &str, retry_every: Duration);
}

/// How a command waits while the link has no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Wait for a first connection, but fail at once while the link is down (the cache's
    /// circuit breaker: a down Redis costs nothing).
    UnlessDown,
    /// Wait through an outage, for the supervisor's next connection (a job store, whose
    /// commands must succeed or fail within their budget, not be skipped).
    Always,
}

/// The link's state as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Never connected yet.
    Connecting,
    /// A connection is published.
    Connected,
    /// The connection was lost or never made; the supervisor is retrying.
    Down,
}

enum State {
    Connecting,
    Ready { conn: Conn, gen: u64 },
    Down,
}

pub(crate) struct Link {
    endpoint: Endpoint,
    state: watch::Sender<State>,
    generation: AtomicU64,
    started: AtomicBool,
    wake: Arc<Notify>,
    events: Box<dyn Events>,
    warn: Throttle,
    /// How fast a new connection must answer a `PING` to be published (`None`: within the
    /// connect timeout, as the checkout's own `PING` does).
    admit_within: Option<Duration>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.endpoint.url())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Lets the supervisor notice that its owner is gone.
        self.wake.notify_one();
    }
}

impl Link {
    pub(crate) fn new(endpoint: Endpoint, events: impl Events) -> Self {
        let (state, _) = watch::channel(State::Connecting);
        Self {
            endpoint,
            state,
            generation: AtomicU64::new(0),
            started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            events: Box::new(events),
            warn: Throttle::new(Duration::from_secs(10)),
            admit_within: None,
        }
    }

    /// Publishes a (re)connection only once it answers a `PING` within `budget`: an owner
    /// whose commands get `budget` each (the cache's read budget) would otherwise take back
    /// a Redis that answers, but too slowly for them, and lose every command's budget again
    /// until it gives the connection up once more (a flapping breaker).
    pub(crate) fn admit_within(mut self, budget: Duration) -> Self {
        self.admit_within = Some(budget);
        self
    }

    /// Whether `conn` answers a `PING` within the admission budget; `Err` says how not.
    async fn admit(&self, conn: &Conn) -> Result<(), String> {
        let Some(budget) = self.admit_within else {
            return Ok(());
        };
        let mut conn = conn.clone();
        let started = std::time::Instant::now();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(budget, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.endpoint.scrub(describe(&e))),
            Err(_) => Err(format!(
                "answers, but slower than the budget: no PONG within {budget:?} (waited {:?})",
                started.elapsed()
            )),
        }
    }

    /// The URL, redacted.
    pub(crate) fn url(&self) -> &str {
        self.endpoint.url()
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Starts the supervisor on the current Tokio runtime, once; a no-op outside one (an
    /// owner built outside a runtime calls it again from its first use inside one).
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            rt.spawn(supervise(Arc::downgrade(self), Arc::clone(&self.wake)));
        }
    }

    pub(crate) fn status(&self) -> Status {
        match &*self.state.borrow() {
            State::Connecting => Status::Connecting,
            State::Ready { .. } => Status::Connected,
            State::Down => Status::Down,
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        matches!(&*self.state.borrow(), State::Down)
    }

    /// The published connection and its generation, waiting for one as `wait` says. Not
    /// bounded by itself: callers put it under their deadline (as [`Link::run`] does).
    pub(crate) async fn connection(&self, wait: Wait) -> Result<(Conn, u64), Failure> {
        // The common case, connected, takes one read of the state and no subscription.
        if let State::Ready { conn, gen } = &*self.state.borrow() {
            return Ok((conn.clone(), *gen));
        }
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Ready { conn, gen } => return Ok((conn.clone(), *gen)),
                State::Down if wait == Wait::UnlessDown => {
                    return Err(Failure::not_connected("Redis is not connected"))
                }
                State::Down | State::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(Failure::not_connected("the connection was shut down"));
            }
        }
    }

    /// Runs `command` on the shared connection, all of it (waiting for a connection as
    /// `wait` says, and the command) within `budget`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        budget: Duration,
        wait: Wait,
        mut command: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut ran_on = None;
        let outcome = tokio::time::timeout(budget, async {
            loop {
                let (conn, gen) = self.connection(wait).await?;
                ran_on = Some(gen);
                let cluster = matches!(conn, Conn::Cluster(_));
                match command(conn).await {
                    Ok(value) => return Ok(value),
                    // A cluster connection follows redirections itself, but gives up after
                    // its retries: when a slot moves under load, its `ASKING` and the
                    // redirected command go out separately on a connection other callers
                    // share, so another caller's command can take the `ASKING` and the two
                    // nodes bounce the command between them. Within the budget, again.
                    Err(e) if cluster && is_redirect(&e) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => return Err(self.failure(&e, Some(gen))),
                }
            }
        })
        .await;
        // Before the first connection, a timeout says nothing about a connection.
        outcome.unwrap_or_else(|_elapsed| Err(Failure::timeout(budget, ran_on)))
    }

    /// Runs `command` on `conn` (of generation `gen`, from [`Link::connection`]) within
    /// `budget`: for several steps on one connection.
    pub(crate) async fn run_on<T, Fut>(
        &self,
        gen: u64,
        budget: Duration,
        command: Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(budget, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(&e, Some(gen))),
            Err(_elapsed) => Err(Failure::timeout(budget, Some(gen))),
        }
    }

    /// The server's `maxmemory-policy`, for an owner that must warn when Redis may evict its
    /// keys (a job store needs `noeviction`). `Ok(None)` when the server will not say:
    /// managed services often forbid or rename `CONFIG`.
    pub(crate) async fn eviction_policy(
        &self,
        budget: Duration,
    ) -> Result<Option<String>, Failure> {
        let reply = self
            .run(budget, Wait::Always, |mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                    .await
            })
            .await;
        match reply {
            Ok(mut config) => Ok(config.remove("maxmemory-policy")),
            Err(f) if f.fault == super::error::Fault::Server => Ok(None),
            Err(f) => Err(f),
        }
    }

    fn failure(&self, e: &RedisError, gen: Option<u64>) -> Failure {
        let mut failure = Failure::from_redis(e, gen);
        failure.detail = self.endpoint.scrub(failure.detail);
        // A redirection on a connection to one Redis: the URL names a node of a cluster.
        if is_redirect(e) && !matches!(self.endpoint.target(), Target::Cluster(_)) {
            failure.detail = format!(
                "{}: the server is a Redis Cluster node; name the cluster with a redis+cluster:// URL",
                failure.detail
            );
        }
        // A failover (Sentinel) made this server a replica while the connection stayed up:
        // it is of no use for writes any more. Reconnecting asks the Sentinels for the new
        // primary.
        if e.code() == Some("READONLY") {
            failure.dead = true;
            if let Some(gen) = gen {
                self.trip(
                    gen,
                    "the server became a replica (READONLY); reconnecting to the primary",
                );
            }
        }
        failure
    }

    /// Gives up the connection of generation `gen`, if it is still the published one: the
    /// link is down (commands waiting `UnlessDown` fail at once) until the supervisor
    /// connects again. Returns whether it did; a report about an older connection does not.
    pub(crate) fn trip(&self, gen: u64, reason: &str) -> bool {
        let tripped = self.state.send_if_modified(|c| match c {
            State::Ready { gen: current, .. } if *current == gen => {
                *c = State::Down;
                true
            }
            _ => false,
        });
        if tripped {
            self.events
                .lost(self.endpoint.url(), reason, self.endpoint.probe_interval);
            self.wake.notify_one();
        }
        tripped
    }

    /// PINGs the published connection; gives it up and returns `false` if it is dead or does
    /// not answer within the connect timeout.
    async fn health_check(&self) -> bool {
        let Some((mut conn, gen)) = (match &*self.state.borrow() {
            State::Ready { conn, gen } => Some((conn.clone(), *gen)),
            _ => None,
        }) else {
            return false;
        };
        let ping = redis::cmd("PING");
        let timeout = self.endpoint.connect_timeout;
        match tokio::time::timeout(timeout, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {
                let target = self.endpoint.target();
                let moved = match target.last_connected() {
                    Some(addr) => {
                        tokio::time::timeout(timeout, target.primary_moved(&addr)).await == Ok(true)
                    }
                    None => false,
                };
                if moved {
                    self.trip(gen, "the Sentinels name another primary");
                    return false;
                }
                true
            }
            // A server error (say, LOADING) says the connection is alive.
            Ok(Err(e)) if !is_dead(&e) && !e.is_timeout() && !e.is_io_error() => true,
            Ok(Err(e)) => {
                let detail = self.endpoint.scrub(describe(&e));
                self.trip(gen, &format!("PING failed: {detail}"));
                false
            }
            Err(_) => {
                self.trip(gen, &format!("PING unanswered within {timeout:?}"));
                false
            }
        }
    }

    fn build_pool(&self, errors: mpsc::Sender<RedisError>) -> bb8::Pool<Manager> {
        let ep = &self.endpoint;
        let manager = Manager::new(
            ep.target().clone(),
            ep.connect_timeout,
            ep.shared_response_timeout(),
        );
        bb8::Pool::builder()
            .max_size(ep.pool_size)
            .min_idle(None)
            // A PING per checkout: checkouts happen only when (re)connecting.
            .test_on_check_out(true)
            .connection_timeout(ep.connect_timeout)
            // Fail fast on a refused connection: the supervisor has its own retry loop.
            .retry_connection(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .error_sink(Box::new(ForwardErrors(errors)))
            .build_unchecked(manager)
    }

    /// Publishes `conn` as a new generation.
    fn publish(&self, conn: Conn) {
        let gen = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.send_replace(State::Ready { conn, gen });
    }

    /// A first connection attempt failed: commands waiting for it stop waiting.
    fn first_attempt_failed(&self) {
        self.state.send_if_modified(|c| {
            if matches!(c, State::Connecting) {
                *c = State::Down;
                true
            } else {
                false
            }
        });
    }
}

/// Whether `e` is a cluster's redirection or request to retry that redis-rs gave up on.
fn is_redirect(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain
        )
    )
}

/// Keeps one connection published while Redis is healthy, and connects again when not.
async fn supervise(link: Weak<Link>, wake: Arc<Notify>) {
    let (errors_tx, mut errors) = mpsc::channel::<RedisError>(8);
    let mut pooled_slot = None;
    let mut was_down = false;
    loop {
        let Some(this) = link.upgrade() else { return };
        let ep = &this.endpoint;
        let interval = ep.probe_interval;
        let pool = pooled_slot
            .get_or_insert_with(|| this.build_pool(errors_tx.clone()))
            .clone();
        // Errors left over from an earlier attempt say nothing about this one.
        while errors.try_recv().is_ok() {}
        let attempt = tokio::time::timeout(ep.connect_timeout, async {
            let pooled = tokio::select! {
                got = pool.get() => got.map_err(|e| match e {
                    bb8::RunError::User(e) => describe(&e),
                    bb8::RunError::TimedOut => "timed out".to_owned(),
                }),
                Some(e) = errors.recv() => Err(describe(&e)),
            }?;
            this.admit(&pooled).await?;
            Ok(pooled)
        })
        .await;
        match attempt {
            Ok(Ok(pooled)) => {
                let conn = (*pooled).clone();
                drop(pooled);
                this.publish(conn);
                this.events.connected(ep.url(), was_down);
                drop(this);
                // Until an owner trips the link or is dropped, check the connection every
                // probe interval.
                loop {
                    match tokio::time::timeout(interval, wake.notified()).await {
                        // Tripped, or the owner is gone (checked above).
                        Ok(()) => break,
                        Err(_elapsed) => match link.upgrade() {
                            Some(this) if this.health_check().await => {}
                            Some(_) => break,
                            None => return,
                        },
                    }
                }
                // Given up: the next connection ends an outage.
                was_down = true;
                // Behind Sentinels the pool's idle connections may lead to the old
                // primary (alive and answering PING after a planned failover): the next
                // connection must ask the Sentinels anew.
                if let Some(this) = link.upgrade() {
                    if matches!(this.endpoint.target(), Target::Sentinel(_)) {
                        pooled_slot = None;
                    }
                }
            }
            failure => {
                let detail = match failure {
                    Ok(Err(detail)) => ep.scrub(detail),
                    _ => format!("no connection within {:?}", ep.connect_timeout),
                };
                this.first_attempt_failed();
                // The first failure of an outage is always told; later ones at most every 10 s.
                let allowed = this.warn.allow();
                if !was_down || allowed.is_some() {
                    let held_back = allowed.unwrap_or(0);
                    this.events
                        .unreachable(ep.url(), &detail, held_back, interval);
                }
                was_down = true;
                drop(this);
                tokio::time::sleep(interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::redis::error::Fault;
    use crate::redis::options::RedisOptions;
    use crate::redis::test_server::TestServer;

    /// Records what the link tells its owner.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Events for Recorder {
        fn connected(&self, url: &str, again: bool) {
            self.push(format!("connected {url} again={again}"));
        }
        fn unreachable(&self, url: &str, detail: &str, _: u64, _: Duration) {
            self.push(format!("unreachable {url}: {detail}"));
        }
        fn lost(&self, url: &str, reason: &str, _: Duration) {
            self.push(format!("lost {url}: {reason}"));
        }
    }

    impl Recorder {
        fn push(&self, line: String) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
        fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    /// A link to a port nothing listens on (port 1 on loopback refuses at once).
    fn refused(events: Recorder) -> Arc<Link> {
        let endpoint = RedisOptions::new("redis://:pw@127.0.0.1:1/")
            .connect_timeout(Duration::from_millis(200))
            .probe_interval(Duration::from_millis(20))
            .endpoint()
            .expect("valid options")
            .expect("a URL");
        Arc::new(Link::new(endpoint, events))
    }

    async fn ping(link: &Link, budget: Duration, wait: Wait) -> Result<(), Failure> {
        link.run(budget, wait, |mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
        .await
    }

    #[tokio::test]
    async fn a_command_that_waits_through_an_outage_fails_within_its_budget() {
        let link = refused(Recorder::default());
        link.start();
        let budget = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), ping(&link, budget, Wait::Always))
            .await
            .expect("bounded by its budget")
            .unwrap_err();
        assert_eq!(err.fault, Fault::Timeout, "{err:?}");
        assert_eq!(err.gen, None, "no connection was ever used");
        assert!(started.elapsed() < budget * 5, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_command_that_skips_an_outage_fails_at_once_once_the_link_is_down() {
        let events = Recorder::default();
        let link = refused(events.clone());
        link.start();
        let budget = Duration::from_secs(5);
        // While connecting it waits for the first attempt, which is refused.
        let err = ping(&link, budget, Wait::UnlessDown).await.unwrap_err();
        assert_eq!(err.fault, Fault::NotConnected, "{err:?}");
        assert_eq!(link.status(), Status::Down);
        let started = tokio::time::Instant::now();
        let err = ping(&link, budget, Wait::UnlessDown).await.unwrap_err();
        assert_eq!(err.fault, Fault::NotConnected, "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(50));
        let lines = events.lines();
        assert!(
            lines
                .first()
                .is_some_and(|l| l.starts_with("unreachable redis://:***@127.0.0.1:1/")),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains(":pw@")), "{lines:?}");
    }

    /// A link to `server`, checked and retried every 20 ms.
    fn to(server: &TestServer, events: Recorder) -> Arc<Link> {
        let endpoint = RedisOptions::new(server.url())
            .connect_timeout(Duration::from_millis(300))
            .command_timeout(Duration::from_millis(100))
            .probe_interval(Duration::from_millis(20))
            .endpoint()
            .expect("valid options")
            .expect("a URL");
        let link = Arc::new(Link::new(endpoint, events));
        link.start();
        link
    }

    /// The generation of the first connection that answers a PING, within 10 s.
    async fn connected_gen(link: &Link) -> u64 {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(Ok((mut conn, gen))) =
                    tokio::time::timeout(Duration::from_millis(200), link.connection(Wait::Always))
                        .await
                {
                    let pong = redis::cmd("PING").query_async::<()>(&mut conn).await;
                    if pong.is_ok() {
                        return gen;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("connected within 10 s")
    }

    #[tokio::test]
    async fn after_a_restart_commands_run_on_a_new_generation() {
        let mut server = TestServer::start();
        let events = Recorder::default();
        let link = to(&server, events.clone());
        let first = connected_gen(&link).await;
        server.restart();
        // The supervisor's PING notices the dead connection and connects again.
        let later = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let gen = connected_gen(&link).await;
                if gen > first {
                    return gen;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a new connection after the restart");
        assert!(later > first);
        ping(&link, Duration::from_secs(1), Wait::Always)
            .await
            .expect("commands run again");
        let lines = events.lines();
        assert!(lines.iter().any(|l| l.starts_with("lost ")), "{lines:?}");
        assert!(lines.iter().any(|l| l.ends_with("again=true")), "{lines:?}");
    }

    #[tokio::test]
    async fn only_a_report_about_the_current_connection_trips_it() {
        let server = TestServer::start();
        let link = to(&server, Recorder::default());
        let gen = connected_gen(&link).await;
        assert!(!link.trip(gen + 1, "a report about another connection"));
        assert_eq!(link.status(), Status::Connected);
        assert!(link.trip(gen, "the current one"));
        assert!(!link.trip(gen, "already given up"));
        assert!(connected_gen(&link).await > gen, "replaced by a newer one");
    }

    #[tokio::test]
    async fn a_dedicated_connection_has_no_response_timeout_of_the_shared_one() {
        let server = TestServer::start();
        let link = to(&server, Recorder::default());
        connected_gen(&link).await;
        // The shared connection gives up on an answer after `shared_response_timeout`
        // (300 ms here), whatever budget the caller gives: no place for a blocking command.
        let shared = link
            .run(
                Duration::from_secs(5),
                Wait::Always,
                |mut conn| async move {
                    redis::cmd("BLPOP")
                        .arg("nothing")
                        .arg(1)
                        .query_async::<Option<(String, String)>>(&mut conn)
                        .await
                },
            )
            .await;
        assert_eq!(shared.map_err(|f| f.fault).unwrap_err(), Fault::Timeout);
        let mut own = link.endpoint().dedicated(None).await.expect("a connection");
        let started = tokio::time::Instant::now();
        let popped = redis::cmd("BLPOP")
            .arg("nothing")
            .arg(1)
            .query_async::<Option<(String, String)>>(&mut own)
            .await
            .expect("BLPOP waits out its own timeout");
        assert_eq!(popped, None);
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn tells_the_eviction_policy() {
        let server = TestServer::start();
        let link = to(&server, Recorder::default());
        let budget = Duration::from_secs(2);
        let policy = link.eviction_policy(budget).await.expect("an answer");
        assert_eq!(policy.as_deref(), Some("noeviction"));
        link.run(budget, Wait::Always, |mut conn| async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("allkeys-lru")
                .query_async::<()>(&mut conn)
                .await
        })
        .await
        .expect("CONFIG SET");
        let policy = link.eviction_policy(budget).await.expect("an answer");
        assert_eq!(policy.as_deref(), Some("allkeys-lru"));
    }
}
