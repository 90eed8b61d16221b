//! The queue conformance suite (`tests/queue_suite/`) against [`RedisStore`] on a real
//! `redis-server` (one per test, on a free loopback port), and the Redis store's own
//! promises: leases with fencing, recovery, the key layout, Redis trouble.

#[macro_use]
mod queue_suite;
mod support;

use std::time::Duration;

use layercake::queue::store::RedisStore;
use support::RedisServer;

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder("conformance")
        .redis_url(server.url())
        .lease(Duration::from_secs(2))
        .build()
        .expect("a valid store")
}

queue_conformance!(fixture: RedisServer::start(), |server| store(&server), paused_time: false);
