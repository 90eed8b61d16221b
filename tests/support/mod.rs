//! Shared support for the integration tests (`mod support;` in each test file).
//!
//! * [`RedisServer`]: a private, throw-away `redis-server` on a free loopback port that a
//!   test may kill, restart, freeze and thaw without touching the system Redis.
//! * [`FaultProxy`] / [`Fault`]: a TCP proxy whose behaviour (pass, delay, black-hole,
//!   reset) a test switches at run time.
//! * [`eventually`]: wait for a condition with a deadline instead of sleeping and hoping.
//! * [`RedisCluster`]: three cluster-enabled `redis-server`s joined into a Redis Cluster,
//!   with live slot migrations ([`RedisCluster::begin_migration`], [`RedisCluster::reshard`]).
//! * [`LogCapture`]: capture formatted `tracing` output to assert on it.
//! * `TlsRedisServer` / `TestCa` (feature `tls`): a TLS-only `redis-server` with a
//!   certificate generated for it; `TlsRedisCluster`: a [`RedisCluster`] whose nodes speak
//!   only TLS.
//!
//! Each test file uses only part of this module, hence the `allow` below.
#![allow(dead_code)]

mod cluster;
mod proxy;
mod sentinel;
#[cfg(feature = "tls")]
mod tls;

#[allow(unused_imports)]
pub use cluster::{RedisCluster, SlotMigration, NODES, SLOTS};
// Not every test file uses the proxy.
#[allow(unused_imports)]
pub use proxy::{Fault, FaultProxy};
#[allow(unused_imports)]
pub use sentinel::SentinelGroup;
#[cfg(feature = "tls")]
#[allow(unused_imports)]
pub use tls::{TestCa, TlsRedisCluster, TlsRedisServer};

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for PING to answer.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// Timeout for the synchronous connections used by [`RedisServer::cmd`].
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Distinguishes the temp dirs of servers started by this process.
static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A loopback port that is free right now and that this process has not handed out before.
///
/// Ports are picked at random *outside* the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so that an outgoing connection can never
/// occupy the port while a test has its server killed (a client reconnecting to a dead
/// ephemeral port can even connect to itself). Another process may still grab the port
/// before it is used; [`RedisServer::start`] retries with a new port in that case.
pub fn free_port() -> u16 {
    let (eph_lo, eph_hi) = ephemeral_range();
    let range = if eph_lo >= 12_000 {
        Some(10_000..eph_lo)
    } else if eph_hi <= 62_000 {
        Some(eph_hi + 1..65_535)
    } else {
        None
    };
    let mut taken = lock(&HANDED_OUT);
    if let Some(range) = range {
        for _ in 0..1_000 {
            let port = fastrand::u16(range.clone());
            if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                taken.insert(port);
                return port;
            }
        }
    }
    // Fallback: let the kernel choose (from the ephemeral range).
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("cannot bind a loopback port")
            .port();
        if taken.insert(port) {
            return port;
        }
    }
}

fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LAYERCAKE_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let default = Path::new("/usr/bin/redis-server");
    if default.exists() {
        default.to_path_buf()
    } else {
        PathBuf::from("redis-server") // from $PATH
    }
}

/// A private `redis-server` child process on `127.0.0.1:<port>`.
///
/// No persistence (`--save "" --appendonly no`): a restart comes back EMPTY. Its working dir
/// and log (`redis.log`) live in a temp dir under [`std::env::temp_dir`]. `DEBUG` is enabled
/// for local connections, so tests may use e.g. `DEBUG SLEEP 0.5` to slow it down.
/// Dropping it SIGKILLs the process and removes the temp dir.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    /// Persistence: append-only file, fsync every second (kept across restarts).
    aof: bool,
    /// Further `redis-server` arguments (say, `--replicaof host port`).
    extra: Vec<String>,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// Why a start attempt failed.
enum StartError {
    /// The process exited before answering PING; `port_in_use` if the log says so.
    Exited {
        status: ExitStatus,
        port_in_use: bool,
    },
}

impl RedisServer {
    /// Starts a server without a password on a free port; blocks until it answers PING
    /// (panics with the server's log after [`STARTUP_DEADLINE`]).
    pub fn start() -> RedisServer {
        Self::start_inner(None, false)
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced every second
    /// (`appendfsync everysec`, as a job store is run): [`RedisServer::restart`] after
    /// [`RedisServer::kill`] (SIGKILL) reloads it.
    pub fn start_with_aof() -> RedisServer {
        Self::start_inner(None, true)
    }

    /// Like [`RedisServer::start`], as a replica of `primary` (`--replicaof`).
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let extra = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port().to_string(),
        ];
        Self::start_with(None, false, extra)
    }

    /// Like [`RedisServer::start`], with `--requirepass password`; [`RedisServer::url`] and
    /// [`RedisServer::client`] carry the password.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_inner(Some(password.to_owned()), false)
    }

    fn start_inner(password: Option<String>, aof: bool) -> RedisServer {
        Self::start_with(password, aof, Vec::new())
    }

    fn start_with(password: Option<String>, aof: bool, extra: Vec<String>) -> RedisServer {
        let seq = SERVER_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "layercake-test-redis-{}-{}",
            std::process::id(),
            seq
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
        let mut server = RedisServer {
            port: 0,
            password,
            aof,
            extra,
            dir,
            child: Mutex::new(None),
        };
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait(true) {
                Ok(()) => return server,
                Err(StartError::Exited {
                    port_in_use: true, ..
                }) if attempt < ATTEMPTS => continue, // lost a race for the port
                Err(StartError::Exited { status, .. }) => panic!(
                    "redis-server on port {} exited during start-up ({status}); log:\n{}",
                    server.port,
                    server.log()
                ),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Spawns the process on `self.port` and waits for PING. `fresh_log` truncates the log.
    fn spawn_and_wait(&mut self, fresh_log: bool) -> Result<(), StartError> {
        let log_path = self.dir.join("redis.log");
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh_log)
            .truncate(fresh_log)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot clone log file handle");
        let port = self.port.to_string();
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(if self.aof {
                ["--appendonly", "yes", "--appendfsync", "everysec"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--enable-debug-command", "local"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot spawn {} (is redis-server installed?): {e}",
                    redis_server_binary().display()
                )
            });
        *self.child.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(child);

        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let exited = {
                let mut guard = lock(&self.child);
                let child = guard.as_mut().expect("child was just spawned");
                child.try_wait().expect("try_wait on redis-server failed")
            };
            if let Some(status) = exited {
                *lock(&self.child) = None;
                let port_in_use = self.log().contains("Address already in use");
                return Err(StartError::Exited {
                    status,
                    port_in_use,
                });
            }
            if self.ping_once(Duration::from_millis(250)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill();
                panic!(
                    "redis-server on port {} did not answer PING within {STARTUP_DEADLINE:?}; log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping_once(&self, timeout: Duration) -> bool {
        let Ok(mut con) = self.client().get_connection_with_timeout(timeout) else {
            return false;
        };
        let _ = con.set_read_timeout(Some(timeout));
        let _ = con.set_write_timeout(Some(timeout));
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    /// The TCP port (stays the same across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT/`, or `redis://:PASSWORD@127.0.0.1:PORT/` with a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The password given to [`RedisServer::start_with_password`].
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The process id, if the server is running.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// Whether the process is alive (a frozen process counts as alive).
    pub fn is_running(&self) -> bool {
        let mut guard = lock(&self.child);
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap the process; [`RedisServer::is_running`] is false afterwards.
    /// All data is lost. A no-op if it is not running.
    pub fn kill(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            let _ = child.kill(); // SIGKILL on Unix; also works on a stopped process
            let _ = child.wait();
        }
    }

    /// Starts the server again on the SAME port (killing it first if it is still running)
    /// and blocks until it answers PING. It comes back empty, or, started with
    /// [`RedisServer::start_with_aof`], with what its append-only file kept.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(StartError::Exited { status, .. }) = self.spawn_and_wait(false) {
            panic!(
                "redis-server did not restart on port {} ({status}); log:\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// SIGSTOP: the process stays alive and the kernel still accepts connections on its
    /// port, but nothing is answered until [`RedisServer::thaw`]. A "hung Redis".
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::freeze`]; requests sent meanwhile are then answered.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port));
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill {sig} {pid}`: {e}"));
        assert!(status.success(), "`kill {sig} {pid}` failed: {status}");
    }

    /// A client for this server (carries the password, if any). Use it sync
    /// (`get_connection`) or async (`get_multiplexed_async_connection`).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url())
            .unwrap_or_else(|e| panic!("bad redis url {}: {e}", self.url()))
    }

    /// A fresh async multiplexed connection (needs a Tokio runtime).
    pub async fn async_conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to redis on port {}: {e}", self.port))
    }

    /// Runs one command (e.g. `&["SET", "k", "v"]`) through a fresh synchronous connection
    /// and returns the reply. Panics with the command, port and error if the connection
    /// fails or Redis answers with an error. Blocking: never use it against a server that
    /// is only reachable through a [`FaultProxy`] running on the same current-thread runtime.
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        let (name, rest) = args
            .split_first()
            .expect("cmd needs at least a command name");
        let fail = |e: &dyn std::fmt::Display| -> ! {
            panic!(
                "redis command {args:?} on port {} failed: {e}\nserver log:\n{}",
                self.port,
                self.log()
            )
        };
        let mut con = self
            .client()
            .get_connection_with_timeout(CMD_TIMEOUT)
            .unwrap_or_else(|e| fail(&e));
        let _ = con.set_read_timeout(Some(CMD_TIMEOUT));
        let _ = con.set_write_timeout(Some(CMD_TIMEOUT));
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        match cmd.query::<redis::Value>(&mut con) {
            Ok(redis::Value::ServerError(e)) => fail(&format!("{e:?}")),
            Ok(value) => value,
            Err(e) => fail(&e),
        }
    }

    /// [`RedisServer::cmd`], converted to `T` (e.g. `String`, `Option<String>`, `i64`).
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let value = self.cmd(args);
        redis::from_redis_value(value.clone())
            .unwrap_or_else(|e| panic!("reply {value:?} to {args:?} does not convert: {e}"))
    }

    /// The server's log so far (all runs, including restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log"))
            .unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }

    /// The server's temp dir (its `--dir`), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl RedisServer {
    /// Waits (at most 10 s) until the server holds at least `n` keys, for example the
    /// entries a cache's background writer is still sending.
    pub async fn until_keys(&self, n: usize) {
        eventually(
            Duration::from_secs(10),
            &format!("{n} keys in Redis"),
            || async { self.query::<usize>(&["DBSIZE"]) >= n },
        )
        .await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 10 ms until it returns true or `deadline` passes; panics with `what`
/// on timeout (also if a single `cond` call is still running at the deadline).
///
/// Uses the Tokio clock, so under `start_paused = true` the deadline is virtual time.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let remaining = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, cond()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => panic!(
                "timed out after {deadline:?} waiting for: {what} (the last check was still running)"
            ),
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Captures formatted `tracing` output (TRACE and up, no ANSI, no timestamps, with targets)
/// into a shared buffer.
///
/// [`LogCapture::new`] installs it as the default for the CURRENT THREAD only (until the
/// guard drops). Events emitted on other threads (multi-thread runtime workers, spawned
/// tasks, `spawn_blocking`) are only captured if they run under [`LogCapture::dispatch`]:
/// wrap futures with [`LogCapture::scope`] (or `tracing::instrument::WithSubscriber`), or
/// use `tracing::dispatcher::with_default`. Never set it as the global default: all tests
/// of a file share one process.
#[derive(Clone, Debug)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    dispatch: tracing::Dispatch,
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// A capture installed as this thread's default subscriber while the guard lives.
    pub fn new() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = Self::detached();
        let guard = tracing::dispatcher::set_default(&capture.dispatch);
        (capture, guard)
    }

    /// A capture that is not installed anywhere; use [`LogCapture::dispatch`] /
    /// [`LogCapture::scope`].
    pub fn detached() -> LogCapture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CaptureWriter(Arc::clone(&writer_buf)))
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_target(true)
            .without_time()
            .finish();
        LogCapture {
            buf,
            dispatch: tracing::Dispatch::new(subscriber),
        }
    }

    /// The dispatcher, for `tracing::dispatcher::with_default` or `with_subscriber`.
    pub fn dispatch(&self) -> tracing::Dispatch {
        self.dispatch.clone()
    }

    /// Runs `fut` (wherever it is polled, e.g. a spawned task) with this capture as default.
    pub fn scope<F: Future>(&self, fut: F) -> tracing::instrument::WithDispatch<F> {
        tracing::instrument::WithSubscriber::with_subscriber(fut, self.dispatch.clone())
    }

    /// Everything captured so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&lock(&self.buf)).into_owned()
    }

    /// Whether the captured output contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.contents().contains(needle)
    }

    /// Forgets everything captured so far.
    pub fn clear(&self) {
        lock(&self.buf).clear();
    }
}

/// A service that counts its calls in `calls` and answers `v:{req}`; requests starting with
/// `fail:` are errors (`boom on {req}`).
pub fn counting(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<String, Response = String, Error = String, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |req: String| {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if req.starts_with("fail:") {
                Err(format!("boom on {req}"))
            } else {
                Ok(format!("v:{req}"))
            }
        }
    })
}

/// The key extractor most cache tests use: the request itself.
// A `KeyExtractor<String>` is a `Fn(&String) -> Option<_>`.
#[allow(clippy::ptr_arg)]
pub fn key(req: &String) -> Option<String> {
    Some(req.clone())
}

/// Like [`counting`], but each call waits for a permit of `gate` before it answers
/// `v{n}:{req}` (`n` counting calls from 1), so a test can hold a load in flight.
pub fn gated(
    calls: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
) -> impl tower::Service<String, Response = String, Error = String, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |req: String| {
        let calls = Arc::clone(&calls);
        let gate = Arc::clone(&gate);
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            gate.acquire()
                .await
                .map_err(|_| "gate closed".to_owned())?
                .forget();
            Ok(format!("v{n}:{req}"))
        }
    })
}
