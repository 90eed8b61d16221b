//! layercake — Tower middleware for a two-tier cache and a tracked job queue.
#![forbid(unsafe_code)]
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
mod key;
mod metrics;
pub mod queue;

pub use cache::{
    Cache, CacheBuilder, CacheLayer, CacheService, CacheStats, L2Cause, L2Error, L2State,
};
pub use clock::{Clock, MockClock};
pub use error::{BoxError, ConfigError};
pub use metrics::describe_metrics;
pub use queue::{
    Backoff, CancelOutcome, JobContext, JobId, JobInfo, JobStatus, Permanent, Progress, Queue,
    QueueBuilder, QueueError, QueueInfo, QueueLayer, QueueService, ShutdownReport,
};
