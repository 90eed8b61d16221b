//! `CacheLayer`: a two-tier cache in front of any Tower service.
//!
//! A request goes through these steps:
//!
//! 1. The [`KeyExtractor`] gives its key, or `None` to bypass the cache.
//! 2. **L1**, the in-process tier: a hit returns a clone of the stored response at once,
//!    with no I/O and no allocation (the response future is not boxed).
//! 3. On an L1 miss, **single flight**: concurrent misses on one key wait for one leader.
//! 4. The leader tries **L2**, Redis, within a time budget; a hit is backfilled into L1 with
//!    its remaining TTL.
//! 5. On an L2 miss the leader calls the inner service. A response the [`StorePolicy`]
//!    accepts goes into L1 at once and to Redis through a bounded background writer; the
//!    waiters get a clone.
//!
//! # The non-blocking contract
//! The service's error type is the inner service's: nothing the cache does can fail a
//! request. Any Redis problem (refused, timed out, blackholed, restarting, wrong password,
//! OOM, a value of another type, undecodable bytes) is a miss, counted by cause in
//! [`CacheStats::l2_errors`] and `layercake_cache_l2_errors_total`, and logged at most once
//! every 10 s per cache (plus one line for each breaker state change). A read costs at most
//! [`l2_timeout`](CacheBuilder::l2_timeout) (default 50 ms), and nothing at all once the
//! circuit breaker is open. A cache built while Redis is down runs on L1 and starts using
//! Redis when it appears, with no rebuild.
//!
//! # Tower
//! `poll_ready` is the inner service's. On a miss the service moves its ready inner service
//! into the response future and keeps a fresh clone, so the clone that is called is always
//! the one that was made ready. Cloning a `CacheService` clones the inner service, which
//! starts unready.

mod builder;
mod epoch;
mod flight;
mod future;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod layer;
mod service;
pub(crate) mod stats;
pub(crate) mod tier;

pub use crate::redis::IntoRedisUrl;
pub use builder::CacheBuilder;
pub use future::ResponseFuture;
pub use handle::Cache;
pub use layer::CacheLayer;
pub use service::{CacheService, KeyExtractor, StoreAll, StorePolicy};
pub use stats::{CacheStats, L2Cause, L2Errors, L2State};
pub use tier::l2::L2Error;
