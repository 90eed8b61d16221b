//! A private `redis-server` that speaks only TLS, with a certificate authority and a server
//! certificate generated for it (pure Rust, by `rcgen`), for the `rediss://` tests.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::cluster::{self, NODES};
use super::{free_port, redis_server_binary, STARTUP_DEADLINE};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A certificate authority made up for one test.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `localhost` and `127.0.0.1`, with its key (both PEM).
    pub fn server_cert(&self) -> (String, String) {
        let key = KeyPair::generate().expect("generate a server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "layercake test redis");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A `redis-server` child listening only on a TLS port of `127.0.0.1` (`--port 0`), with a
/// certificate signed by its own [`TestCa`], clients not asked for certificates. Killed and
/// its temp dir removed on drop.
pub struct TlsRedisServer {
    port: u16,
    password: Option<String>,
    protocols: Option<String>,
    /// More `redis-server` arguments (a cluster node's).
    extra: Vec<String>,
    /// Shared by the nodes of a [`TlsRedisCluster`].
    ca: Arc<TestCa>,
    dir: PathBuf,
    child: Option<Child>,
}

impl TlsRedisServer {
    /// Starts one without a password; blocks until it is ready (panics with its log after
    /// [`STARTUP_DEADLINE`]).
    pub fn start() -> TlsRedisServer {
        Self::start_inner(None, None)
    }

    /// Like [`TlsRedisServer::start`], with `--requirepass password`.
    pub fn start_with_password(password: &str) -> TlsRedisServer {
        Self::start_inner(Some(password.to_owned()), None)
    }

    /// Like [`TlsRedisServer::start`], offering only the TLS versions in `protocols`
    /// (`--tls-protocols`, say `"TLSv1.2"`).
    pub fn start_with_protocols(protocols: &str) -> TlsRedisServer {
        Self::start_inner(None, Some(protocols.to_owned()))
    }

    fn start_inner(password: Option<String>, protocols: Option<String>) -> TlsRedisServer {
        let ca = Arc::new(TestCa::new("layercake test CA"));
        Self::start_with(ca, password, protocols, Vec::new())
    }

    /// A server with a certificate signed by `ca` and `extra` arguments.
    fn start_with(
        ca: Arc<TestCa>,
        password: Option<String>,
        protocols: Option<String>,
        extra: Vec<String>,
    ) -> TlsRedisServer {
        let dir = std::env::temp_dir().join(format!(
            "layercake-test-tls-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the server's temp dir");
        let (cert, key) = ca.server_cert();
        fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        fs::write(dir.join("server.pem"), cert).expect("write server.pem");
        fs::write(dir.join("server.key"), key).expect("write server.key");
        let mut server = TlsRedisServer {
            port: 0,
            password,
            protocols,
            extra,
            ca,
            dir,
            child: None,
        };
        for attempt in 1..=5 {
            server.port = free_port();
            if server.spawn_and_wait() {
                return server;
            }
            if attempt == 5 || !server.log().contains("Address already in use") {
                panic!(
                    "TLS redis-server on port {} did not start; log:\n{}",
                    server.port,
                    server.log()
                );
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Spawns on `self.port`; `true` once the log says it accepts connections, `false` if
    /// it exited first.
    fn spawn_and_wait(&mut self) -> bool {
        let log = fs::File::create(self.dir.join("redis.log")).expect("create redis.log");
        let log_err = log.try_clone().expect("clone the log handle");
        let path = |f: &str| self.dir.join(f);
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &self.port.to_string()])
            .arg("--tls-cert-file")
            .arg(path("server.pem"))
            .arg("--tls-key-file")
            .arg(path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        if let Some(protocols) = &self.protocols {
            cmd.args(["--tls-protocols", protocols]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.log().contains("Ready to accept connections") {
                return true;
            }
            if Instant::now() >= deadline {
                panic!(
                    "TLS redis-server on port {} not ready within {STARTUP_DEADLINE:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:PORT/`, or `rediss://default:PASSWORD@127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("rediss://default:{pw}@127.0.0.1:{}/", self.port),
            None => format!("rediss://127.0.0.1:{}/", self.port),
        }
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Runs one command over a fresh TLS connection (trusting the server's CA) and returns
    /// the reply converted to `T`; panics with the server's log on any failure.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let fail = |e: &dyn std::fmt::Display| -> ! {
            panic!("{args:?} over TLS failed: {e}\nserver log:\n{}", self.log())
        };
        let client = redis::Client::build_with_tls(
            self.url(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(self.ca.pem().as_bytes().to_vec()),
            },
        )
        .unwrap_or_else(|e| fail(&e));
        let timeout = Duration::from_secs(5);
        let mut con = client
            .get_connection_with_timeout(timeout)
            .unwrap_or_else(|e| fail(&e));
        let _ = con.set_read_timeout(Some(timeout));
        let (name, rest) = args.split_first().expect("a command name");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        cmd.query::<T>(&mut con).unwrap_or_else(|e| fail(&e))
    }

    /// The server's temp dir (`ca.pem` is in it).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log"))
            .unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How long [`TlsRedisCluster::start`] waits for every node to report the cluster whole.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);

/// A Redis Cluster of three primaries (no replicas) that speak only TLS, to clients and on
/// the cluster bus (`--tls-cluster yes`): [`super::RedisCluster`]'s nodes, each a
/// [`TlsRedisServer`] with a certificate from one shared [`TestCa`]. The nodes announce
/// `127.0.0.1` and their TLS port in `CLUSTER SLOTS`, which the certificates cover.
pub struct TlsRedisCluster {
    nodes: Vec<TlsRedisServer>,
    ids: Vec<String>,
    ca: Arc<TestCa>,
}

impl TlsRedisCluster {
    /// Starts three TLS cluster nodes, joins them with `redis-cli --tls --cluster create`,
    /// and waits until every node reports `cluster_state:ok` with all slots assigned and
    /// the nodes agree on their owners (panics after 20 s).
    pub fn start() -> TlsRedisCluster {
        let ca = Arc::new(TestCa::new("layercake test cluster CA"));
        let nodes: Vec<TlsRedisServer> = (0..NODES)
            .map(|_| {
                let mut extra = cluster::node_args();
                extra.extend(["--tls-cluster", "yes"].map(str::to_owned));
                TlsRedisServer::start_with(Arc::clone(&ca), None, None, extra)
            })
            .collect();
        let ids = nodes
            .iter()
            .map(|n| n.query::<String>(&["CLUSTER", "MYID"]))
            .collect();
        let c = TlsRedisCluster { nodes, ids, ca };

        let dir = c.nodes[0].dir();
        let mut args = vec!["--tls".to_owned(), "--cacert".to_owned()];
        args.push(dir.join("ca.pem").display().to_string());
        args.extend(cluster::create_args(
            c.nodes.iter().map(TlsRedisServer::port),
            0,
        ));
        cluster::run_cli(dir, "create", &args);

        c.until_ok();
        c
    }

    /// Waits (up to 20 s) until every node reports the cluster whole and they agree on
    /// the slots' owners.
    pub fn until_ok(&self) {
        let end = Instant::now() + CLUSTER_DEADLINE;
        while !self.is_ok() {
            assert!(
                Instant::now() < end,
                "timed out after {CLUSTER_DEADLINE:?} waiting for the TLS cluster; node logs:\n{}",
                self.nodes
                    .iter()
                    .map(TlsRedisServer::log)
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_ok(&self) -> bool {
        if !self
            .nodes
            .iter()
            .all(|n| cluster::is_whole(&n.query::<String>(&["CLUSTER", "INFO"]), NODES))
        {
            return false;
        }
        let views: Vec<Vec<Option<usize>>> = (0..NODES)
            .map(|i| {
                let text = self.nodes[i].query::<String>(&["CLUSTER", "NODES"]);
                cluster::owners_in(&text, &self.ids, i)
            })
            .collect();
        views.windows(2).all(|w| w[0] == w[1]) && views[0].iter().all(Option::is_some)
    }

    /// Node `i` (`0..NODES`), for plain (non-cluster) commands with
    /// [`TlsRedisServer::query`]: keys it does not own answer `MOVED`.
    pub fn node(&self, i: usize) -> &TlsRedisServer {
        &self.nodes[i]
    }

    /// The crate's URL for this cluster, every node a seed:
    /// `rediss+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn crate_url(&self) -> String {
        super::cluster::crate_url(
            "rediss+cluster",
            self.nodes.iter().map(TlsRedisServer::port),
        )
    }

    /// How many keys matching `pattern` each node holds (`SCAN` on each), in node order.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| super::cluster::count_matching(|args| n.query(args), pattern))
            .collect()
    }

    /// The CA that signed every node's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }
}
