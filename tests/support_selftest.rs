//! Self-test of the integration-test support module.

mod support;

use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant};

use redis::Value;
use support::{
    eventually, free_port, Fault, FaultProxy, LogCapture, RedisCluster, RedisServer, NODES, SLOTS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn ping(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(con).await
}

async fn proxied_conn(proxy: &FaultProxy) -> redis::aio::MultiplexedConnection {
    redis::Client::open(proxy.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect through the proxy")
}

#[test]
fn free_ports_are_distinct() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
}

#[test]
fn set_and_get_through_cmd() {
    let server = RedisServer::start();
    assert!(server.is_running());
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.addr().port(), server.port());
    assert_eq!(server.cmd(&["SET", "k", "v"]), Value::Okay);
    assert_eq!(server.cmd(&["GET", "k"]), Value::BulkString(b"v".to_vec()));
    assert_eq!(
        server.query::<Option<String>>(&["GET", "k"]).as_deref(),
        Some("v")
    );
    assert_eq!(server.query::<Option<String>>(&["GET", "missing"]), None);
    // Not the system Redis, no persistence.
    assert_ne!(server.port(), 6379);
    let save: Vec<String> = server.query(&["CONFIG", "GET", "save"]);
    assert_eq!(save, vec!["save".to_owned(), String::new()]);
}

#[test]
#[should_panic(expected = "redis command")]
fn cmd_panics_on_error_reply() {
    let server = RedisServer::start();
    server.cmd(&["NO-SUCH-COMMAND"]);
}

#[test]
fn kill_and_restart_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.cmd(&["SET", "k", "v"]);

    server.kill();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    assert!(StdTcpStream::connect(server.addr()).is_err());
    assert!(server
        .client()
        .get_connection_with_timeout(Duration::from_millis(500))
        .is_err());

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.query::<String>(&["PING"]), "PONG");
    // Restarted empty.
    assert_eq!(server.cmd(&["GET", "k"]), Value::Nil);
    // Restart of a running server works too.
    server.restart();
    assert_eq!(server.query::<String>(&["PING"]), "PONG");
}

#[test]
fn drop_kills_the_process_and_removes_the_dir() {
    let server = RedisServer::start();
    let addr = server.addr();
    let dir = server.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(server);
    assert!(!dir.exists());
    assert!(StdTcpStream::connect(addr).is_err());
}

#[test]
fn password() {
    let server = RedisServer::start_with_password("s3cret");
    assert_eq!(
        server.url(),
        format!("redis://:s3cret@127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.query::<String>(&["PING"]), "PONG");
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port()))
        .unwrap()
        .get_connection()
        .unwrap();
    let err = redis::cmd("GET").arg("k").query::<Value>(&mut anon);
    assert!(err.is_err(), "unauthenticated GET must fail, got {err:?}");
}

#[tokio::test]
async fn freeze_and_thaw() {
    let server = RedisServer::start();
    let mut con = server.async_conn().await;
    server.freeze();
    let frozen = tokio::time::timeout(Duration::from_millis(200), ping(&mut con)).await;
    assert!(
        !matches!(frozen, Ok(Ok(_))),
        "a frozen server must not answer"
    );
    server.thaw();
    let mut con = server.async_conn().await;
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
}

#[tokio::test]
async fn proxy_passes_ping() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}/", proxy.addr().port())
    );
    let mut con = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    let () = redis::cmd("SET")
        .arg("through")
        .arg("proxy")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(server.query::<String>(&["GET", "through"]), "proxy");
    eventually(
        Duration::from_secs(2),
        "one connection accepted",
        || async { proxy.connections() == 1 },
    )
    .await;
}

#[tokio::test]
async fn proxy_delay_holds_each_direction() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut con = proxied_conn(&proxy).await;
    let d = Duration::from_millis(100);
    proxy.set(Fault::Delay(d));

    let started = Instant::now();
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    let took = started.elapsed();
    assert!(
        took >= 2 * d,
        "PING took {took:?}, expected at least {:?}",
        2 * d
    );

    // Concurrent requests are delayed in parallel, not one after the other.
    let started = Instant::now();
    let mut c1 = con.clone();
    let mut c2 = con.clone();
    let mut c3 = con.clone();
    let (a, b, c) = tokio::join!(ping(&mut c1), ping(&mut c2), ping(&mut c3));
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    let took = started.elapsed();
    assert!(took < 5 * d, "3 concurrent PINGs took {took:?}");

    proxy.set(Fault::Pass);
    let started = Instant::now();
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    assert!(
        started.elapsed() < d,
        "back to Pass took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn proxy_blackhole_hangs_while_direct_works() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut via_proxy = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut via_proxy).await.unwrap(), "PONG");

    proxy.set(Fault::Blackhole);
    let hung = tokio::time::timeout(Duration::from_millis(200), ping(&mut via_proxy)).await;
    assert!(
        hung.is_err(),
        "PING through a black hole must time out, got {hung:?}"
    );

    let mut direct = server.async_conn().await;
    assert_eq!(ping(&mut direct).await.unwrap(), "PONG");

    // New raw connections are accepted and stay open, but get no answer.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    raw.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(200), raw.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "black hole must neither answer nor close: {read:?}"
    );

    // Back to Pass: new connections work again.
    proxy.set(Fault::Pass);
    let mut fresh = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn proxy_reset_breaks_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut con = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");

    proxy.set(Fault::Reset);
    let res = tokio::time::timeout(Duration::from_secs(2), ping(&mut con))
        .await
        .expect("the client must see an error, not hang");
    assert!(res.is_err(), "PING after Reset must fail, got {res:?}");

    // New connections are closed at once.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf))
        .await
        .expect("a reset connection must not hang");
    assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");

    proxy.set(Fault::Pass);
    let mut fresh = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_survives_upstream_restart() {
    let mut server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut con = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");

    server.kill();
    let res = tokio::time::timeout(Duration::from_secs(2), ping(&mut con))
        .await
        .expect("must not hang");
    assert!(res.is_err(), "PING with the upstream dead must fail");

    server.restart();
    let mut fresh = proxied_conn(&proxy).await;
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn proxy_drop_closes_listener() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let addr = proxy.addr();
    drop(proxy);
    eventually(Duration::from_secs(2), "listener closed", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn eventually_returns_once_true() {
    let mut calls = 0;
    eventually(Duration::from_secs(2), "third call", || {
        calls += 1;
        let done = calls >= 3;
        async move { done }
    })
    .await;
    assert_eq!(calls, 3);
}

#[tokio::test]
#[should_panic(expected = "never true")]
async fn eventually_panics_on_timeout() {
    eventually(Duration::from_millis(100), "never true", || async { false }).await;
}

#[tokio::test]
#[should_panic(expected = "still running")]
async fn eventually_panics_when_the_check_hangs() {
    eventually(Duration::from_millis(100), "hangs", || {
        std::future::pending::<bool>()
    })
    .await;
}

#[test]
fn log_capture_on_this_thread() {
    let (logs, guard) = LogCapture::new();
    tracing::info!(answer = 42, "hello from the test");
    tracing::debug!("debug line");
    drop(guard);
    tracing::info!("not captured");
    let out = logs.contents();
    assert!(out.contains("hello from the test"), "{out}");
    assert!(out.contains("answer=42"), "{out}");
    assert!(out.contains("DEBUG"), "{out}");
    assert!(!out.contains("not captured"), "{out}");
    assert!(!out.contains("\u{1b}["), "no ANSI: {out}");
    logs.clear();
    assert!(logs.contents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_capture_across_threads() {
    let logs = LogCapture::detached();
    tokio::spawn(logs.scope(async {
        tracing::warn!("from a spawned task");
    }))
    .await
    .unwrap();
    assert!(logs.contains("from a spawned task"), "{}", logs.contents());
}

#[test]
fn cluster_slot_of_follows_crc16_and_hashtags() {
    // CRC16/XMODEM's check value, and Redis' own examples.
    assert_eq!(RedisCluster::slot_of("123456789"), 0x31C3);
    assert_eq!(RedisCluster::slot_of("foo"), 12182);
    assert_eq!(
        RedisCluster::slot_of("{user1000}.following"),
        RedisCluster::slot_of("{user1000}.followers")
    );
    assert_eq!(
        RedisCluster::slot_of("foo{{bar}}zap"),
        RedisCluster::slot_of("{bar")
    );
    assert_eq!(
        RedisCluster::slot_of("foo{bar}{zap}"),
        RedisCluster::slot_of("bar")
    );
}

/// GET `key` on node `i`: the value, or the error reply's text (`MOVED ...`, `ASK ...`).
fn get_on(cluster: &RedisCluster, i: usize, key: &str) -> Result<Option<String>, String> {
    cluster
        .try_cmd(i, &["GET", key])
        .map(|v| redis::from_redis_value(v).expect("GET answers a string or nil"))
}

#[test]
fn cluster_starts_and_migrates_a_slot_live() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), NODES);
    assert_eq!(cluster.url(), cluster.nodes()[0]);
    for i in 0..NODES {
        let info = cluster.node(i).query::<String>(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "node {i}: {info}");
        assert!(info.contains("cluster_slots_ok:16384"), "node {i}: {info}");
        assert_eq!(
            cluster.node(i).query::<String>(&["CLUSTER", "MYID"]),
            cluster.node_id(i)
        );
    }
    let total: usize = (0..NODES).map(|i| cluster.slots_of(i).len()).sum();
    assert_eq!(total, usize::from(SLOTS));

    // Keys land on their owners; the pure slot function agrees with the server.
    for key in ["foo{}{bar}", "{}", "{", "}{x}", "a{b}c{d}", ""] {
        let served = cluster.node(0).query::<u16>(&["CLUSTER", "KEYSLOT", key]);
        assert_eq!(RedisCluster::slot_of(key), served, "slot of {key:?}");
    }
    for n in 0..50 {
        let key = format!("k{n}");
        let slot = RedisCluster::slot_of(&key);
        let served = cluster.node(0).query::<u16>(&["CLUSTER", "KEYSLOT", &key]);
        assert_eq!(slot, served, "slot of {key}");
        let owner = cluster.owner_of_slot(slot);
        cluster.node(owner).cmd(&["SET", &key, "v"]);
        let other = (owner + 1) % NODES;
        let moved = get_on(&cluster, other, &key).expect_err("a non-owner redirects");
        assert!(moved.starts_with(&format!("MOVED {slot} ")), "{moved}");
    }

    // A slot with more keys than one MIGRATE batch, moved while requests run.
    let key = "user:1";
    let slot = RedisCluster::slot_of(key);
    let from = cluster.owner_of_key(key);
    let to = (from + 1) % NODES;
    cluster.node(from).cmd(&["SET", key, "one"]);
    for n in 0..250 {
        cluster
            .node(from)
            .cmd(&["SET", &format!("{{user:1}}:{n}"), "x"]);
    }
    let migration = cluster.begin_migration(slot, to);
    assert_eq!(
        (migration.slot(), migration.from(), migration.to()),
        (slot, from, to)
    );
    // Half-migrated, keys not moved yet: the source serves what it holds, ASKs for the rest.
    assert_eq!(get_on(&cluster, from, key), Ok(Some("one".into())));
    let ask = get_on(&cluster, from, "{user:1}:missing").expect_err("ASK for a missing key");
    assert!(
        ask.starts_with(&format!("ASK {slot} 127.0.0.1:{}", cluster.node(to).port())),
        "{ask}"
    );
    let moved = get_on(&cluster, to, key).expect_err("the target redirects without ASKING");
    assert!(moved.starts_with("MOVED"), "{moved}");

    assert_eq!(migration.move_keys(), 251);
    let ask = get_on(&cluster, from, key).expect_err("the key has left the source");
    assert!(ask.starts_with("ASK"), "{ask}");
    let mut con = cluster.node(to).client().get_connection().unwrap();
    let ((), value): ((), String) = redis::pipe()
        .cmd("ASKING")
        .cmd("GET")
        .arg(key)
        .query(&mut con)
        .expect("the target serves the key after ASKING");
    assert_eq!(value, "one");

    migration.finish();
    assert_eq!(cluster.owner_of_slot(slot), to);
    assert_eq!(get_on(&cluster, to, key), Ok(Some("one".into())));
    assert_eq!(
        cluster
            .node(to)
            .query::<usize>(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        251
    );
    for old in (0..NODES).filter(|&i| i != to) {
        let moved = get_on(&cluster, old, key).expect_err("the others redirect");
        let expected = format!("MOVED {slot} 127.0.0.1:{}", cluster.node(to).port());
        assert_eq!(moved, expected, "node {old}");
    }
    // And back, in one call.
    cluster.migrate_slot(slot, from);
    assert_eq!(get_on(&cluster, from, key), Ok(Some("one".into())));
}

#[test]
fn cluster_reshards_many_slots() {
    let cluster = RedisCluster::start();
    let owners = cluster.slot_owners();
    for n in 0..300 {
        let key = format!("r{n}");
        let owner = owners[usize::from(RedisCluster::slot_of(&key))];
        cluster.node(owner).cmd(&["SET", &key, "v"]);
    }
    let before = cluster.slots_of(1).len();
    let moved = cluster.reshard(0, 1, 300);
    assert_eq!(moved.len(), 300);
    assert_eq!(cluster.slots_of(1).len(), before + 300);
    // A range from whoever owns it, one slot at a time.
    cluster.migrate_slots(16_000..16_010, 0);
    assert!((16_000..16_010).all(|s| cluster.owner_of_slot(s) == 0));

    let keys: usize = (0..NODES)
        .map(|i| cluster.node(i).query::<usize>(&["DBSIZE"]))
        .sum();
    assert_eq!(keys, 300, "no key lost or duplicated");
    let owners = cluster.slot_owners();
    for n in 0..300 {
        let key = format!("r{n}");
        let owner = owners[usize::from(RedisCluster::slot_of(&key))];
        assert_eq!(
            get_on(&cluster, owner, &key),
            Ok(Some("v".into())),
            "{key} on node {owner}"
        );
    }
}

/// The TLS cluster: whole, every node announcing `127.0.0.1` (which its certificate
/// covers) and its TLS port in `CLUSTER SLOTS`, and no plaintext port.
#[cfg(feature = "tls")]
#[test]
fn tls_cluster_starts_and_announces_its_tls_ports() {
    use support::TlsRedisCluster;

    let cluster = TlsRedisCluster::start();
    let ports: Vec<u16> = (0..NODES).map(|i| cluster.node(i).port()).collect();
    assert_eq!(
        cluster.crate_url(),
        format!(
            "rediss+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    for i in 0..NODES {
        let info = cluster.node(i).query::<String>(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "node {i}: {info}");
        // [[start, end, [ip, port, id, ...], ...], ...]
        let slots = cluster.node(i).query::<Vec<Value>>(&["CLUSTER", "SLOTS"]);
        let mut announced = Vec::new();
        for range in &slots {
            let Value::Array(fields) = range else {
                panic!("node {i}: a CLUSTER SLOTS entry is not an array: {range:?}");
            };
            let (ip, port): (String, u16) = match &fields[2] {
                Value::Array(primary) => (
                    redis::from_redis_value(primary[0].clone()).expect("an ip"),
                    redis::from_redis_value(primary[1].clone()).expect("a port"),
                ),
                other => panic!("node {i}: no primary in {other:?}"),
            };
            assert_eq!(ip, "127.0.0.1", "node {i}: {slots:?}");
            announced.push(port);
        }
        announced.sort_unstable();
        let mut expected = ports.clone();
        expected.sort_unstable();
        assert_eq!(announced, expected, "node {i} announces the TLS ports");
    }
    // `--port 0`: nothing listens in plaintext; a plaintext PING on the TLS port fails.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}/", ports[0])).unwrap();
    let answer = plain
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut con| {
            let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
            redis::cmd("PING").query::<String>(&mut con)
        });
    assert!(answer.is_err(), "plaintext PING answered: {answer:?}");
}
