//! A Redis Sentinel group on free loopback ports: a primary, a replica and three
//! Sentinels (`redis-server --sentinel`) that watch them, for failover tests.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, redis_server_binary, RedisServer, STARTUP_DEADLINE};

/// The service name the Sentinels monitor.
pub const SERVICE: &str = "mymaster";

/// One `redis-server --sentinel`.
struct Sentinel {
    port: u16,
    child: Child,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, a replica of it, and three Sentinels with a quorum of two that declare the
/// primary down after 1 s. Everything is killed on drop.
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl SentinelGroup {
    /// Starts the group and waits until the Sentinels see the replica and each other
    /// (`SENTINEL CKQUORUM`), so that a failover can happen.
    pub fn start() -> SentinelGroup {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        let dir = primary.dir().join("sentinels");
        fs::create_dir_all(&dir).expect("a sentinel directory");
        let sentinels = (0..3)
            .map(|i| Self::spawn(&dir, i, primary.port()))
            .collect();
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
            dir,
        };
        group.until("the replica to be in sync", |g| {
            g.replica
                .query::<String>(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        group.until("the Sentinels to see the replica and a quorum", |g| {
            g.sentinels.iter().all(|s| {
                let replicas = sentinel_cmd(s.port, &["SENTINEL", "REPLICAS", SERVICE]);
                let quorum = sentinel_cmd(s.port, &["SENTINEL", "CKQUORUM", SERVICE]);
                matches!(replicas, Some(redis::Value::Array(ref r)) if r.len() == 1)
                    && matches!(quorum, Some(ref q) if format!("{q:?}").contains("3 usable"))
            })
        });
        group
    }

    fn spawn(dir: &std::path::Path, i: usize, primary_port: u16) -> Sentinel {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir.display()
            ),
        )
        .expect("a sentinel config");
        let log = fs::File::create(dir.join(format!("sentinel-{i}.log"))).expect("a log");
        let child = Command::new(redis_server_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("redis-server --sentinel starts");
        let sentinel = Sentinel { port, child };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while sentinel_cmd(port, &["PING"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "sentinel {i} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    fn until(&self, what: &str, cond: impl Fn(&SentinelGroup) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// The primary's port as the first Sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = sentinel_cmd(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])?;
            let (_, port): (String, u16) = redis::from_redis_value(reply).ok()?;
            Some(port)
        })
    }

    /// Asks the Sentinels for a failover now (`SENTINEL FAILOVER`): the old primary stays
    /// up and becomes a replica.
    pub fn failover(&self) {
        let reply = sentinel_cmd(self.sentinels[0].port, &["SENTINEL", "FAILOVER", SERVICE]);
        assert!(reply.is_some(), "SENTINEL FAILOVER answered");
    }
}

/// One command to the Sentinel on `port`; `None` when it does not answer.
fn sentinel_cmd(port: u16, args: &[&str]) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query::<redis::Value>(&mut conn).ok()
}
