//! The Redis base shared by the cache's L2 tier and the queue's Redis store (crate-private,
//! but for [`RedisOptions`] and [`IntoRedisUrl`]).
//!
//! - [`options`]: `RedisOptions`, the public settings group, and `Endpoint`, its validated
//!   form with a client (TLS roots included).
//! - [`link`]: `Link`, one supervised multiplexed connection with a generation, and the
//!   budgeted command runner (`Link::run`), whose deadline covers waiting for a connection.
//! - [`error`]: `Failure` and `Fault`, Redis errors sorted into what callers act on.
//! - [`conn`]: `Conn`, a connection to one Redis or to a cluster, and how to run a batch on
//!   either.
//! - [`target`]: what connections are made to: a Redis, the primary its Sentinels name, or a
//!   cluster.
//! - [`url`]: URL parsing and redaction; [`throttle`]: the log-line rate limit.
//!
//! The base has no policy: it never skips, counts or logs a failed command. Its owner does:
//! the cache turns failures into misses behind a breaker and a bulkhead, the job store into
//! errors. Named `redis` after what it talks to; inside this module the `redis` crate is
//! still `redis::` (a module does not shadow an extern crate outside the crate root).

pub(crate) mod conn;
pub(crate) mod error;
pub(crate) mod link;
mod manager;
pub(crate) mod options;
pub(crate) mod target;
#[cfg(test)]
pub(crate) mod test_server;
pub(crate) mod throttle;
pub(crate) mod url;

pub use options::{IntoRedisUrl, RedisOptions};
