//! The bb8 connection manager: bb8-redis' manager builds its client from a URL alone, so it
//! can carry neither TLS root certificates nor connection settings; this one takes both.

use std::time::Duration;

use redis::RedisError;

use super::conn::Conn;
use super::target::Target;

pub(crate) struct Manager {
    target: Target,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Manager {
    pub(crate) fn new(
        target: Target,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            target,
            connect_timeout,
            response_timeout,
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        // With Sentinels, each new connection asks them for the primary anew.
        self.target
            .connect(self.connect_timeout, Some(self.response_timeout))
            .await
    }

    /// Checkouts happen only when (re)connecting, so a PING there is cheap, and it is what
    /// tells a live connection from one to a dead or restarted server (on a cluster, every
    /// primary answers it).
    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

/// bb8's error sink, forwarding connect errors to the supervisor: bb8 connects in a task of
/// its own and hands connect errors only to its sink, while `get()` waits out the whole
/// `connection_timeout`. Forwarding them lets the supervisor fail fast (a refused
/// connection, a wrong password, an untrusted certificate) and say why.
#[derive(Debug, Clone)]
pub(crate) struct ForwardErrors(pub(crate) tokio::sync::mpsc::Sender<RedisError>);

impl bb8::ErrorSink<RedisError> for ForwardErrors {
    fn sink(&self, error: RedisError) {
        // Full means the supervisor already has errors to read: this one adds nothing.
        let _ = self.0.try_send(error);
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}
