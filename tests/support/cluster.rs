//! A Redis Cluster of three primaries (no replicas) on free loopback ports, with live slot
//! migrations for tests that move slots while a load runs.
//!
//! ```ignore
//! let cluster = RedisCluster::start();
//! let slot = RedisCluster::slot_of("user:1");
//! cluster.node(cluster.owner_of_slot(slot)).cmd(&["SET", "user:1", "v"]);
//! // Half-way: the source answers ASK for keys it no longer holds.
//! let migration = cluster.begin_migration(slot, 2);
//! migration.move_keys();
//! migration.finish(); // now node 2 owns the slot and the others answer MOVED
//! ```

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, RedisServer};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// How many primaries [`RedisCluster::start`] starts.
pub const NODES: usize = 3;

/// How long [`RedisCluster::start`] waits for `cluster_state:ok` on every node.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);

/// How long the slot owners may take to agree after a migration, and a `redis-cli` run.
const AGREE_DEADLINE: Duration = Duration::from_secs(10);
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Keys per `CLUSTER GETKEYSINSLOT` / `MIGRATE` batch.
const MIGRATE_BATCH: usize = 100;

/// Three cluster-enabled `redis-server`s (each a [`RedisServer`], so each has its own temp
/// dir and is SIGKILLed on drop) joined by `redis-cli --cluster create` with the slots split
/// evenly. Node indices `0..NODES` are used throughout.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    /// `redis-cli` output, under node 0's temp dir (removed with it).
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three primaries (`--cluster-enabled yes`, node timeout 2 s), joins them with
    /// `redis-cli --cluster create`, and waits until every node reports `cluster_state:ok`
    /// with all 16384 slots assigned (panics after 20 s).
    pub fn start() -> RedisCluster {
        Self::start_nodes(NODES, 0)
    }

    /// [`RedisCluster::start`] with a replica for each primary (six nodes,
    /// `--cluster-replicas 1`): a primary that dies is replaced by its replica once the
    /// others have not heard from it for the node timeout (2 s). Which nodes end up
    /// primaries is `redis-cli`'s choice: ask [`RedisCluster::owner_of_key`].
    pub fn start_with_replicas() -> RedisCluster {
        Self::start_nodes(2 * NODES, 1)
    }

    fn start_nodes(count: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| RedisServer::start_with(None, false, node_args()))
            .collect();
        let dir = nodes[0].dir().join("cluster");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let ids = nodes
            .iter()
            .map(|n| n.query::<String>(&["CLUSTER", "MYID"]))
            .collect();
        let cluster = RedisCluster { nodes, ids, dir };

        let args = create_args(cluster.nodes.iter().map(RedisServer::port), replicas);
        cluster.cli("create", &args);

        cluster.until_ok();
        // A replica that never synced cannot take over: wait for every first sync.
        cluster.until(
            CLUSTER_DEADLINE,
            "every replica in sync with its primary",
            |c| {
                c.nodes.iter().all(|n| {
                    let info = n.query::<String>(&["INFO", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            },
        );
        cluster
    }

    /// Waits (up to 20 s) until every node reports `cluster_state:ok` with all 16384
    /// slots served and every node known, and the nodes agree on the slots' owners: after
    /// [`RedisCluster::start`], or after a killed node was restarted with
    /// [`node_mut`](Self::node_mut)`(i).restart()` (it keeps its `nodes.conf`, so it comes
    /// back as itself, owning its slots, empty).
    pub fn until_ok(&self) {
        self.until(CLUSTER_DEADLINE, "cluster_state:ok on every node", |c| {
            c.nodes
                .iter()
                .all(|n| is_whole(&n.query::<String>(&["CLUSTER", "INFO"]), c.nodes.len()))
        });
        self.until(AGREE_DEADLINE, "the nodes to agree on the slots", |c| {
            c.agreed_owners().is_some()
        });
    }

    /// Node `i`, to [`kill`](RedisServer::kill) and [`restart`](RedisServer::restart).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Node `i` (`0..NODES`), for `cmd`, `query`, `kill`, `freeze` and so on. Its commands
    /// are plain (non-cluster) ones: a key it does not own answers `MOVED`/`ASK`, which
    /// [`RedisServer::cmd`] turns into a panic; use [`RedisCluster::try_cmd`] to see them.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Every node's `redis://127.0.0.1:PORT/` URL, in node order.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// One seed URL (node 0's); a cluster client discovers the rest from it.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The crate's URL for this cluster, every node a seed:
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn crate_url(&self) -> String {
        crate_url("redis+cluster", self.nodes.iter().map(RedisServer::port))
    }

    /// How many keys matching `pattern` each node holds (`SCAN` on each, as the node
    /// sees it), in node order.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| count_matching(|args| n.query(args), pattern))
            .collect()
    }

    /// Node `i`'s cluster node id (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its `{hashtag}` (the part
    /// between the first `{` and the next `}`, if not empty), modulo 16384. The same as
    /// `CLUSTER KEYSLOT`.
    pub fn slot_of(key: &str) -> u16 {
        let key = key.as_bytes();
        let hashed = match key.iter().position(|&b| b == b'{') {
            Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
                Some(len) if len > 0 => &key[open + 1..open + 1 + len],
                _ => key,
            },
            None => key,
        };
        crc16_xmodem(hashed) % SLOTS
    }

    /// The index of the node that owns `slot`, once every node agrees on it (panics if they
    /// do not within 10 s).
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let mut owner = None;
        self.until(
            AGREE_DEADLINE,
            &format!("the nodes to agree on the owner of slot {slot}"),
            |c| {
                let views: Vec<Option<usize>> = (0..c.nodes.len())
                    .map(|i| c.owners_seen_by(i)[usize::from(slot)])
                    .collect();
                owner = views[0];
                owner.is_some() && views.iter().all(|v| *v == owner)
            },
        );
        owner.expect("the loop only ends with an owner")
    }

    /// [`RedisCluster::owner_of_slot`] of the key's slot.
    pub fn owner_of_key(&self, key: &str) -> usize {
        self.owner_of_slot(Self::slot_of(key))
    }

    /// The slots node `i` owns, as every node sees it (waits for agreement like
    /// [`RedisCluster::owner_of_slot`]).
    pub fn slots_of(&self, i: usize) -> Vec<u16> {
        let owners = self.slot_owners();
        (0..SLOTS)
            .filter(|&s| owners[usize::from(s)] == i)
            .collect()
    }

    /// The owner of every slot (indexed by slot), as every node sees it: one snapshot for
    /// many look-ups (waits for agreement like [`RedisCluster::owner_of_slot`]).
    pub fn slot_owners(&self) -> Vec<usize> {
        self.wait_for_agreement()
    }

    /// Runs one command on node `i` through a fresh connection; an error reply (`MOVED
    /// 1234 127.0.0.1:P`, `ASK ...`, `TRYAGAIN ...`) comes back as `Err` with its text.
    /// Panics only if the node cannot be reached.
    pub fn try_cmd(&self, i: usize, args: &[&str]) -> Result<redis::Value, String> {
        let node = &self.nodes[i];
        let mut con = node
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to cluster node {i} ({}): {e}", node.url()));
        let _ = con.set_read_timeout(Some(Duration::from_secs(5)));
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        match cmd.query::<redis::Value>(&mut con) {
            Ok(redis::Value::ServerError(e)) => Err(server_error_text(&e)),
            Ok(value) => Ok(value),
            Err(e) if e.is_io_error() => {
                panic!("{args:?} on cluster node {i} ({}): {e}", node.url())
            }
            Err(e) => Err(error_text(&e)),
        }
    }

    /// Moves `slot` (and its keys) to node `to` as `redis-cli --cluster reshard` does:
    /// IMPORTING / MIGRATING, `MIGRATE` in batches, then `SETSLOT NODE` everywhere. Returns
    /// once every node agrees. A no-op if `to` owns it already.
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        if self.owner_of_slot(slot) != to {
            self.begin_migration(slot, to).finish();
        }
    }

    /// [`RedisCluster::migrate_slot`] for each slot (they may come from different owners),
    /// waiting for agreement once at the end. For a large number of slots,
    /// [`RedisCluster::reshard`] is faster.
    pub fn migrate_slots(&self, slots: Range<u16>, to: usize) {
        let owners = self.wait_for_agreement();
        for slot in slots {
            if owners[usize::from(slot)] != to {
                self.begin_migration_from(slot, owners[usize::from(slot)], to)
                    .finish_without_waiting();
            }
        }
        self.wait_for_agreement();
    }

    /// Starts migrating `slot` from its owner to node `to` (`CLUSTER SETSLOT IMPORTING` on
    /// the target, then `MIGRATING` on the source) and stops there: the keys are still on
    /// the source, which serves the keys it holds and answers `ASK` for the others. Drive
    /// it on with [`SlotMigration::move_keys`] and [`SlotMigration::finish`]; a dropped,
    /// unfinished migration leaves the slot half-migrated.
    ///
    /// # Panics
    ///
    /// If `to` owns the slot already.
    pub fn begin_migration(&self, slot: u16, to: usize) -> SlotMigration<'_> {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "node {to} owns slot {slot} already");
        self.begin_migration_from(slot, from, to)
    }

    fn begin_migration_from(&self, slot: u16, from: usize, to: usize) -> SlotMigration<'_> {
        let s = slot.to_string();
        self.admin(
            to,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]],
        );
        self.admin(
            from,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]],
        );
        SlotMigration {
            cluster: self,
            slot,
            from,
            to,
        }
    }

    /// Moves `count` slots from node `from` to node `to` with `redis-cli --cluster reshard`
    /// (keys and all), waits until every node agrees, and returns the slots that moved.
    pub fn reshard(&self, from: usize, to: usize, count: usize) -> Vec<u16> {
        assert_ne!(from, to, "reshard from node {from} to itself");
        let before = self.wait_for_agreement();
        let args: Vec<String> = [
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", self.nodes[from].port()),
            "--cluster-from",
            &self.ids[from],
            "--cluster-to",
            &self.ids[to],
            "--cluster-slots",
            &count.to_string(),
            "--cluster-yes",
        ]
        .map(str::to_owned)
        .to_vec();
        self.cli("reshard", &args);
        let after = self.wait_for_agreement();
        (0..SLOTS)
            .filter(|&s| before[usize::from(s)] == from && after[usize::from(s)] == to)
            .collect()
    }

    /// SIGKILLs every node (their temp dirs go on drop, as with dropping the cluster).
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// The slot owners every node agrees on, waiting up to 10 s.
    fn wait_for_agreement(&self) -> Vec<usize> {
        let mut owners = None;
        self.until(AGREE_DEADLINE, "the nodes to agree on the slots", |c| {
            owners = c.agreed_owners();
            owners.is_some()
        });
        owners.expect("the loop only ends with owners")
    }

    /// Slot → owner index, if every node sees every slot assigned and the same owners.
    fn agreed_owners(&self) -> Option<Vec<usize>> {
        let first = self.owners_seen_by(0);
        let agree = (1..self.nodes.len()).all(|i| self.owners_seen_by(i) == first);
        if !agree {
            return None;
        }
        first.into_iter().collect()
    }

    /// Slot → owner index as node `i` sees it (`CLUSTER NODES`), `None` for unassigned.
    fn owners_seen_by(&self, i: usize) -> Vec<Option<usize>> {
        owners_in(
            &self.nodes[i].query::<String>(&["CLUSTER", "NODES"]),
            &self.ids,
            i,
        )
    }

    /// An admin command that must answer OK (or any non-error reply).
    fn admin(&self, i: usize, args: &[&str]) -> redis::Value {
        self.try_cmd(i, args).unwrap_or_else(|e| {
            panic!(
                "{args:?} on cluster node {i} ({}) failed: {e}\nserver log:\n{}",
                self.nodes[i].url(),
                self.nodes[i].log()
            )
        })
    }

    /// Runs `redis-cli ARGS` to completion; see [`run_cli`].
    fn cli(&self, what: &str, args: &[String]) {
        run_cli(&self.dir, what, args);
    }

    fn until(&self, deadline: Duration, what: &str, mut cond: impl FnMut(&RedisCluster) -> bool) {
        let end = Instant::now() + deadline;
        while !cond(self) {
            assert!(
                Instant::now() < end,
                "timed out after {deadline:?} waiting for {what}; node logs in {}",
                self.nodes
                    .iter()
                    .map(|n| n.dir().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A slot half-way from one node to another; see [`RedisCluster::begin_migration`].
#[derive(Debug)]
#[must_use = "an unfinished migration leaves the slot half-migrated"]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
}

impl SlotMigration<'_> {
    /// The slot being migrated.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The index of the node it leaves (MIGRATING).
    pub fn from(&self) -> usize {
        self.from
    }

    /// The index of the node it goes to (IMPORTING).
    pub fn to(&self) -> usize {
        self.to
    }

    /// Moves every key the source still holds in the slot to the target (`CLUSTER
    /// GETKEYSINSLOT` + `MIGRATE ... KEYS`, in batches) and returns how many moved. The
    /// slot stays half-migrated: the source answers `ASK` for all its keys now.
    pub fn move_keys(&self) -> usize {
        let c = self.cluster;
        let slot = self.slot.to_string();
        let port = c.nodes[self.to].port().to_string();
        let batch = MIGRATE_BATCH.to_string();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::from_redis_value(
                c.admin(self.from, &["CLUSTER", "GETKEYSINSLOT", &slot, &batch]),
            )
            .expect("GETKEYSINSLOT answers a list of keys");
            if keys.is_empty() {
                return moved;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            c.admin(self.from, &args);
            moved += keys.len();
        }
    }

    /// Moves the remaining keys and assigns the slot to the target on the target, the
    /// source and the other node (`CLUSTER SETSLOT slot NODE id`); returns once every node
    /// agrees.
    pub fn finish(self) {
        let cluster = self.cluster;
        self.finish_without_waiting();
        cluster.wait_for_agreement();
    }

    fn finish_without_waiting(self) {
        let c = self.cluster;
        self.move_keys();
        let slot = self.slot.to_string();
        let node = ["CLUSTER", "SETSLOT", &slot, "NODE", &c.ids[self.to]];
        // The target first, as redis-cli does, so that the slot is never ownerless.
        c.admin(self.to, &node);
        // A key written to the source after `move_keys` makes the source refuse; move again.
        let mut attempts = 0;
        while let Err(e) = c.try_cmd(self.from, &node) {
            attempts += 1;
            assert!(
                attempts < 10 && e.contains("still hold keys"),
                "{node:?} on cluster node {} failed: {e}",
                self.from
            );
            self.move_keys();
        }
        for other in (0..c.nodes.len()).filter(|&i| i != self.from && i != self.to) {
            c.admin(other, &node);
        }
    }
}

// Shared with the TLS cluster (`super::tls::TlsRedisCluster`), which runs the same nodes
// over TLS.

/// A cluster node's extra `redis-server` arguments (`--cluster-enabled yes`, node timeout
/// 2 s), with a bus port of its own.
pub(super) fn node_args() -> Vec<String> {
    // The bus port is picked too: the default (port + 10000) may be taken or lie in the
    // ephemeral range, which `free_port` avoids.
    let bus = free_port().to_string();
    [
        "--cluster-enabled",
        "yes",
        // Relative to the server's own `--dir`, so one file per node.
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        &bus,
        // A replica's first sync starts at once rather than after the default 5 s.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `redis-cli` arguments that join the nodes on `ports` into a cluster with the slots
/// split evenly over the primaries, each with `replicas` replicas.
pub(super) fn create_args(ports: impl IntoIterator<Item = u16>, replicas: usize) -> Vec<String> {
    let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
    args.extend(ports.into_iter().map(|p| format!("127.0.0.1:{p}")));
    args.extend([
        "--cluster-replicas".to_owned(),
        replicas.to_string(),
        "--cluster-yes".to_owned(),
    ]);
    args
}

/// Whether a node's `CLUSTER INFO` says the cluster is whole: state ok, all 16384 slots
/// served, all `nodes` known.
pub(super) fn is_whole(info: &str, nodes: usize) -> bool {
    info.contains("cluster_state:ok")
        && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
        && info.contains(&format!("cluster_known_nodes:{nodes}"))
}

/// Slot → owner index (into `ids`) in node `i`'s `CLUSTER NODES` text, `None` for
/// unassigned.
pub(super) fn owners_in(text: &str, ids: &[String], i: usize) -> Vec<Option<usize>> {
    let mut owners = vec![None; usize::from(SLOTS)];
    for line in text.lines() {
        // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(owner) = fields
            .first()
            .and_then(|id| ids.iter().position(|known| known == id))
        else {
            continue;
        };
        // Bracketed entries are migrations in progress, not ownership.
        for range in fields.iter().skip(8).filter(|f| !f.starts_with('[')) {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            let (lo, hi): (usize, usize) = match (lo.parse(), hi.parse()) {
                (Ok(lo), Ok(hi)) => (lo, hi),
                _ => {
                    panic!("cannot parse slot range {range:?} in CLUSTER NODES of node {i}: {line}")
                }
            };
            for owner_of in &mut owners[lo..=hi] {
                *owner_of = Some(owner);
            }
        }
    }
    owners
}

/// Runs `redis-cli ARGS` to completion (killing it after a minute), its output in
/// `dir/redis-cli-WHAT.log`; panics with the output if it fails.
pub(super) fn run_cli(dir: &Path, what: &str, args: &[String]) {
    let out_path = dir.join(format!("redis-cli-{what}.log"));
    let out = fs::File::create(&out_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_path.display()));
    let err = out.try_clone().expect("cannot clone log file handle");
    let bin = redis_cli_binary();
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot spawn {} (is redis-cli installed? Debian: redis-tools): {e}",
                bin.display()
            )
        });
    let deadline = Instant::now() + CLI_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on redis-cli failed") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`redis-cli {}` did not finish within {CLI_DEADLINE:?}; output:\n{}",
                args.join(" "),
                fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    // redis-cli --cluster reports some failures ("[ERR] ...") with exit status 0.
    assert!(
        status.success() && !output.contains("[ERR]"),
        "`redis-cli {}` failed ({status}); output:\n{output}",
        args.join(" ")
    );
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum of Redis Cluster's
/// key slots.
fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// `LAYERCAKE_REDIS_CLI`, else a `redis-cli` beside `LAYERCAKE_REDIS_SERVER`, else the one
/// on `$PATH`.
fn redis_cli_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LAYERCAKE_REDIS_CLI") {
        return PathBuf::from(path);
    }
    if let Some(server) = std::env::var_os("LAYERCAKE_REDIS_SERVER") {
        let beside = Path::new(&server).with_file_name("redis-cli");
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from("redis-cli")
}

fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(details) => format!("{} {details}", e.code()),
        None => e.code().to_owned(),
    }
}

fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

/// The crate's cluster URL with `scheme` for nodes on these loopback ports.
pub(super) fn crate_url(scheme: &str, ports: impl Iterator<Item = u16>) -> String {
    let hosts: Vec<String> = ports.map(|port| format!("127.0.0.1:{port}")).collect();
    format!("{scheme}://{}", hosts.join(","))
}

/// How many keys one node holds that match `pattern`, by `SCAN` through `query`.
pub(super) fn count_matching(
    query: impl Fn(&[&str]) -> (String, Vec<String>),
    pattern: &str,
) -> usize {
    let mut cursor = "0".to_owned();
    let mut n = 0;
    loop {
        let (next, keys) = query(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
        n += keys.len();
        if next == "0" {
            return n;
        }
        cursor = next;
    }
}
