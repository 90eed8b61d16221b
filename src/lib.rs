//! Tower middleware for a two-tier cache that never fails a request because of Redis, and a
//! job queue that tracks work detached from requests.
//!
//! - [`CacheLayer`] wraps any `tower::Service` with an in-process L1 and an optional Redis
//!   L2 (through a `bb8` pool, `rediss://` TLS included). A Redis error, timeout or outage is a logged, counted
//!   miss; the service's error type is unchanged. See [`cache`] for the read path and the
//!   non-blocking contract, and the README for the stable key and value formats.
//! - [`QueueLayer`] turns a service into a job queue: calling it returns a [`JobId`] at
//!   once, workers run the inner service, and the [`Queue`] handle reports status, results,
//!   progress, and cancels. See [`queue`].
//! - Every metric goes through the [`metrics`](https://docs.rs/metrics) facade under the
//!   `layercake_` prefix; see [`describe_metrics`] for the list.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use layercake::{Cache, CacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder("lengths")
//!     .time_to_live(Duration::from_secs(60))
//!     .redis_url(std::env::var("LAYERCAKE_DOC_REDIS_URL").ok()) // none: L1 only
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(CacheLayer::new(cache.clone(), |s: &String| Some(s.clone())))
//!     .service(service_fn(|s: String| async move { Ok::<_, Infallible>(s.len()) }));
//!
//! assert_eq!(svc.clone().oneshot("layercake".to_string()).await?, 9); // miss
//! assert_eq!(svc.oneshot("layercake".to_string()).await?, 9);         // L1 hit
//! let stats = cache.stats();
//! assert_eq!((stats.misses, stats.hits_l1), (1, 1));
//! # Ok(()) }
//! ```
//!
//! # Features
//! - `http` (default): the HTTP adapter for `http::Request` / `http::Response` services
//!   (Axum, Tonic, hyper) in [`cache::http`].
//! - `tls` (default): `rediss://` Redis URLs, through rustls (ring), with extra root
//!   certificates from [`RedisOptions::tls_root_ca`].
//! - `test-util`: [`MockClock`], a clock that tests move forward by hand, and the `clock`
//!   setters of the builders that take it.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod cache;
mod clock;
mod codec;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod key;
mod metrics;
pub mod queue;
// The Redis base shared by the cache and the queue. (Inside the crate, paths `redis::..`
// outside this root module still name the `redis` crate.)
mod redis;

pub use crate::redis::RedisOptions;
pub use cache::{
    Cache, CacheBuilder, CacheLayer, CacheService, CacheStats, L2Cause, L2Error, L2State,
};
#[cfg(any(test, feature = "test-util"))]
pub use clock::MockClock;
pub use error::{BoxError, ConfigError};
pub use metrics::describe_metrics;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use queue::{
    Backoff, CancelOutcome, JobContext, JobId, JobInfo, JobStatus, Permanent, Progress, Queue,
    QueueBuilder, QueueError, QueueInfo, QueueLayer, QueueService, ShutdownReport,
};
