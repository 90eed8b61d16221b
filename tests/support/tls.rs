//! A private `redis-server` that speaks only TLS, with a certificate authority and a server
//! certificate generated for it (pure Rust, by `rcgen`), for the `rediss://` tests.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

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
    ca: TestCa,
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
        let dir = std::env::temp_dir().join(format!(
            "layercake-test-tls-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the server's temp dir");
        let ca = TestCa::new("layercake test CA");
        let (cert, key) = ca.server_cert();
        fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        fs::write(dir.join("server.pem"), cert).expect("write server.pem");
        fs::write(dir.join("server.key"), key).expect("write server.key");
        let mut server = TlsRedisServer {
            port: 0,
            password,
            protocols,
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
