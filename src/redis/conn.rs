//! `Conn`: the connection every owner sends commands on, to one Redis or to a Redis Cluster.
//!
//! Both kinds pipeline every caller's commands on shared sockets and are cheap to clone, so
//! the link publishes either the same way. A cluster connection routes each command to the
//! node that owns its key's slot (splitting `MGET` / `UNLINK` over slots) and follows `MOVED`
//! and `ASK` redirections by itself. What it cannot do is a pipeline whose commands live in
//! different slots: [`Conn::run_in_order`] and [`Conn::run_each`] are the two ways owners run
//! a batch on either kind.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to one Redis, or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs the commands of `pipe` in its order, ignoring their replies: one pipeline on one
    /// Redis; on a cluster, one command after the other (each to its own slot's node), so
    /// that a later one still runs only after an earlier one took effect (an `UNLINK`, then
    /// the `PUBLISH` that tells other replicas of it).
    pub(crate) async fn run_in_order(&mut self, pipe: &Pipeline) -> RedisResult<()> {
        match self {
            Self::Node(conn) => pipe.query_async(conn).await,
            Self::Cluster(conn) => {
                for cmd in pipe.cmd_iter() {
                    cmd.query_async::<Value>(conn).await?;
                }
                Ok(())
            }
        }
    }

    /// Runs independent commands, ignoring their replies: one pipeline on one Redis; on a
    /// cluster, every command at once, each routed to its slot's node (commands on one key
    /// reach its node in their order). The first error is returned once all have answered.
    pub(crate) async fn run_each(&mut self, pipe: &Pipeline) -> RedisResult<()> {
        match self {
            Self::Node(conn) => pipe.query_async(conn).await,
            Self::Cluster(conn) => {
                let sends = pipe.cmd_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                futures_util::future::join_all(sends)
                    .await
                    .into_iter()
                    .try_for_each(|reply| reply.map(drop))
            }
        }
    }

    /// The primaries of a cluster, as `(host, port)`, from `CLUSTER SLOTS`; on one Redis,
    /// `None`: commands that work node by node (`SCAN`) go to it alone.
    pub(crate) async fn primaries(&mut self) -> RedisResult<Option<Vec<(String, u16)>>> {
        let Self::Cluster(conn) = self else {
            return Ok(None);
        };
        // Each entry: [first slot, last slot, [host, port, id, ...], replicas...].
        let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for range in slots {
            let Some(Value::Array(node)) = range.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
                continue;
            };
            let host: String = redis::from_redis_value_ref(host)?;
            let port: u16 = redis::from_redis_value_ref(port)?;
            if !primaries.iter().any(|(h, p)| *h == host && *p == port) {
                primaries.push((host, port));
            }
        }
        Ok(Some(primaries))
    }

    /// Runs `cmd` on the cluster node at `host:port` (from [`primaries`](Self::primaries));
    /// on one Redis, on it.
    pub(crate) async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        node: Option<&(String, u16)>,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Self::Cluster(conn), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let reply = conn.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
