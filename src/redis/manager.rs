//! The bb8 connection manager: bb8-redis' manager builds its client from a URL alone, so it
//! can carry neither TLS root certificates nor connection settings; this one takes both.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use super::target::Target;

pub(crate) struct Manager {
    target: Target,
    config: AsyncConnectionConfig,
}

impl Manager {
    pub(crate) fn new(target: Target, config: AsyncConnectionConfig) -> Self {
        Self { target, config }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = MultiplexedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        // With Sentinels, each new connection asks them for the primary anew.
        let client = self.target.client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        self.target.note_connected(&client);
        Ok(conn)
    }

    /// Checkouts happen only when (re)connecting, so a PING there is cheap, and it is what
    /// tells a live connection from one to a dead or restarted server.
    async fn is_valid(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, _: &mut MultiplexedConnection) -> bool {
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
