//! A throw-away `redis-server` for the base's own tests (the integration tests have a fuller
//! one in `tests/support`, which crate-private code cannot use).

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct TestServer {
    pub(crate) port: u16,
    child: Option<Child>,
}

impl TestServer {
    pub(crate) fn start() -> TestServer {
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut server = TestServer { port, child: None };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed?)");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Spawns on `self.port`; whether it answered PING within 10 s.
    fn spawn(&mut self) -> bool {
        let binary = std::env::var_os("LAYERCAKE_REDIS_SERVER").unwrap_or("redis-server".into());
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("a valid URL");
        while Instant::now() < deadline {
            if let Some(Ok(Some(_exited))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port (empty).
    pub(crate) fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
