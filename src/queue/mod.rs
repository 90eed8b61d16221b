//! `QueueLayer`: run a service's work in the background, as tracked jobs.
//!
//! `tower::buffer::Buffer` hands the response future back to the caller, so the work dies
//! with the request. A queue detaches it: calling the queued service stores the request as a
//! job and answers with its [`JobId`] at once; workers run the wrapped service later; the
//! [`Queue`] handle reads, waits for, lists and cancels jobs.
//!
//! ```
//! use std::time::Duration;
//! use layercake::queue::{JobStatus, Queue, QueueLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Translate {
//!     file_id: u64,
//!     text: String,
//! }
//!
//! async fn translate(req: Translate) -> Result<String, layercake::BoxError> {
//!     Ok(req.text.to_uppercase())
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), layercake::BoxError> {
//!     let queue = Queue::builder("translate")
//!         .workers(4)
//!         .capacity(1_000)
//!         .max_attempts(3)
//!         .result_ttl(Duration::from_secs(3600))
//!         .job_id(|req: &Translate| Some(format!("file-{}", req.file_id)))
//!         .build()?;
//!     let svc = ServiceBuilder::new()
//!         .layer(QueueLayer::new(queue.clone()))
//!         .service(service_fn(translate));
//!
//!     // Returns as soon as the job is queued.
//!     let id = svc.oneshot(Translate { file_id: 7, text: "hola".into() }).await?;
//!     assert_eq!(id.as_str(), "file-7");
//!
//!     let job = queue.wait(&id).await?.expect("the job exists");
//!     assert_eq!(job.status, JobStatus::Completed);
//!     assert_eq!(job.result.as_deref(), Some("HOLA"));
//!     assert_eq!(job.attempts, 1);
//!
//!     let report = queue.shutdown(Duration::from_secs(5)).await;
//!     assert!(report.queued.is_empty());
//!     Ok(())
//! }
//! ```
//!
//! # What a job goes through
//! - **Backpressure.** The queued service's `poll_ready` reserves one of
//!   [`capacity`](QueueBuilder::capacity) slots and is `Pending` when none is free (or,
//!   with [`load_shed`](QueueBuilder::load_shed), the call fails with an overloaded error).
//!   Nothing is buffered without bound.
//! - **Dedup.** With a [`job_id`](QueueBuilder::job_id), enqueueing an id that is queued or
//!   running returns that job's id and adds nothing, even under concurrent enqueues.
//! - **Workers.** The wrapped service runs on the Tokio runtime (or the one given to
//!   [`runtime`](QueueBuilder::runtime)), at most [`workers`](QueueBuilder::workers) jobs
//!   at a time. An attempt that waits (on I/O, a timer) or computes for long runs on a task
//!   of its own, so jobs run in parallel on the runtime's threads. Once a queue's attempts
//!   have been quick for a while (32 in a row at most 100 µs in their first poll), the
//!   dispatcher polls each new attempt once itself and spawns it only if it is still
//!   pending: a job that finishes at once then costs no task. One slower first poll brings
//!   back a task per attempt. A panic fails that attempt with the panic message; the
//!   workers carry on.
//! - **Retries.** A failed attempt is retried after a [`Backoff`] (exponential with jitter
//!   by default) until [`max_attempts`](QueueBuilder::max_attempts); an error wrapped in
//!   [`Permanent`] fails the job at once.
//! - **Context.** The running job reads its [`JobContext`] with [`JobContext::current`]: its
//!   id, a cancellation signal, and [`set_progress`](JobContext::set_progress).
//! - **Cancel.** [`Queue::cancel`]: a queued job never runs; a running one is asked to stop,
//!   then dropped after the [`cancel_grace`](QueueBuilder::cancel_grace) period.
//! - **Results** and errors stay readable for [`result_ttl`](QueueBuilder::result_ttl), then
//!   are removed, so memory stays bounded however many jobs pass through.
//! - **Undecodable payloads** (a request type changed under a persistent store) are
//!   quarantined: failed at once, no retry, the bytes kept, counted as `quarantined`.
//! - **Shutdown.** [`Queue::shutdown`] stops accepting and starting jobs, lets running ones
//!   finish until the deadline, cancels the rest, and reports the jobs left queued.
//! - **Changes.** [`on_change`](QueueBuilder::on_change) calls a hook on every change of a
//!   job, for example to invalidate a cached copy of its status.
//!
//! # Stores
//! Jobs live in a [`Store`](store::Store): the in-process [`MemoryStore`](store::MemoryStore)
//! by default, or Redis ([`RedisStore`](store::RedisStore), through
//! [`redis_url`](QueueBuilder::redis_url)), where jobs survive restarts and worker processes
//! anywhere ([`Queue::serve`]) run them, with leases, recovery and fencing by generation.
//! `redis_url(None)` keeps the in-process store, with the same types. Stores deal in encoded bytes (MessagePack in the versioned envelope of the
//! README), so `Req` and the wrapped
//! service's response must be `Serialize + DeserializeOwned`. See the [`store`] module for
//! the contract a store keeps.
//!
//! # Consistency
//! Every job transition is one atomic step in the store, so [`Queue::job`] always sees a
//! consistent job. [`Queue::info`] is this process's own counters, updated just after the
//! store; the `on_change` hook and the metrics see changes made by this process only.
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `layercake_queue_jobs_total` | counter | `queue`, `event` = `enqueued` \| `deduplicated` \| `completed` \| `failed` \| `quarantined` \| `retried` \| `cancelled` \| `recovered` |
//! | `layercake_queue_depth` | gauge | `queue` (see below) |
//! | `layercake_queue_wait_seconds` | histogram | `queue` (enqueue to first start) |
//! | `layercake_queue_run_seconds` | histogram | `queue` (each attempt) |
//! | `layercake_queue_store_errors_total` | counter | `queue`, `op` = `enqueue` \| `take` \| `settle` \| `renew` \| `recover` |
//!
//! `layercake_queue_depth` counts what this process put in the queue (new jobs, retries)
//! minus what it took out (jobs started or cancelled): with one process it is the queue's
//! depth, and with processes sharing a persistent store, `sum(layercake_queue_depth)` is.
//!
//! A queue registers its metric handles when it is built: install the recorder first.

mod backoff;
mod builder;
mod codec;
mod error;
pub mod future;
mod handle;
mod job;
mod layer;
pub(crate) mod metrics;
mod serve;
mod service;
pub mod store;
mod worker;

pub use backoff::Backoff;
pub use builder::QueueBuilder;
pub use error::{Permanent, QueueError};
pub use handle::{Queue, QueueInfo, ShutdownReport};
pub use job::{
    CancelOutcome, JobContext, JobId, JobInfo, JobStatus, ParseJobStatusError, Progress,
};
pub use layer::QueueLayer;
pub use serve::Serve;
pub use service::QueueService;

/// The payload codec, for the `cargo fuzz` targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) use codec::{decode as decode_payload, encode as encode_payload};
