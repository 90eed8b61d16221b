//! [`Cache<V>`](Cache): a two-tier cache, used directly or as [`CacheLayer`] in front of
//! any Tower service.
//!
//! The direct API ([`Cache::get_with`], [`Cache::try_get_with`], [`Cache::get`],
//! [`Cache::insert`], [`Cache::load`]) caches function calls; the layers run on it. A
//! lookup goes through these steps:
//!
//! 1. For a layer, the [`KeyExtractor`] gives the request's key, or `None` to bypass.
//! 2. **L1**, the in-process tier: a hit returns a clone of the stored value at once, with
//!    no I/O (a layer's response future is not boxed).
//! 3. On an L1 miss, **single flight**: concurrent misses on one key wait for one leader.
//! 4. The leader tries **L2**, Redis, within a time budget; a hit is backfilled into L1 with
//!    its remaining TTL.
//! 5. On an L2 miss the leader loads (calls the inner service, or awaits the `init`
//!    future). A value to store (the layer's [`StorePolicy`] decides, and for how long)
//!    goes into L1 at once and to Redis through a bounded background writer; the waiters
//!    get a clone. A failed load hands its error to the waiters where it can be copied
//!    ([`ShareError`]); otherwise they retry one at a time.
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
//! # When the backend fails or is slow
//! With [`fail_safe_max_duration`](CacheBuilder::fail_safe_max_duration) (off by default),
//! an expired entry stays in both tiers for a longer physical life, and a load that fails
//! (or runs past [`hard_timeout`](CacheBuilder::hard_timeout)) is answered with it, counted
//! as `stale`; it is then re-used for [`fail_safe_throttle`](CacheBuilder::fail_safe_throttle),
//! so a failing backend sees one call per key per throttle period. Loads that borrow nothing
//! ([`CacheLayer::new`]'s, [`Cache::load_owned`] and the other `*_owned` methods) can also run in the
//! background: past [`soft_timeout`](CacheBuilder::soft_timeout) the caller gets the expired
//! entry while the load completes and stores its result, and with
//! [`eager_refresh`](CacheBuilder::eager_refresh) a hit late in an entry's life starts one
//! refresh and is served the current value.
//!
//! # Replicas
//! Caches of the same namespace and name on the same Redis, in any process, are replicas of
//! one cache: they share L2, and each has its own L1. [`Cache::invalidate`] and
//! [`Cache::clear`] on one reach the others' L1 over Redis pub/sub, usually within a
//! millisecond; a replica that was cut off from the channel empties its L1 when it
//! subscribes again. See [`CacheBuilder::replica_invalidation`] for the details and the
//! cost, and the README for the channel's stable message format.
//!
//! # Tags
//! Entries stored with [`Tags`] ([`Cache::insert_tagged`], [`Loaded::StoreTagged`], or a
//! [`CacheLayer`] store policy returning `(decision, tags)`) are removed all at once by
//! [`Cache::invalidate_tag`], on both tiers and every replica, at a cost that does not
//! grow with their number: the tag's invalidation time is recorded (here, in Redis, and on
//! the replicas), and a tagged entry written at or before it is a miss wherever it is read,
//! never a fail-safe fallback. The README's "Tags" section gives the costs and limits.
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
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod layer;
mod read;
mod service;
pub(crate) mod stats;
mod tags;
pub(crate) mod tier;
mod value;

pub use crate::redis::IntoRedisUrl;
pub use builder::CacheBuilder;
pub use future::ResponseFuture;
pub use handle::Cache;
pub use layer::CacheLayer;
pub use service::{
    CacheService, CloneErrors, DontShare, KeyExtractor, ShareError, ShareWith, StoreAll,
    StoreDecision, StorePolicy,
};
pub use stats::{CacheStats, L2Cause, L2Errors, L2State};
pub use tags::Tags;
pub use tier::l2::L2Error;
pub use value::{CacheValue, Loaded, Ttl};
