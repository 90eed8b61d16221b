//! Long work as tracked jobs: an Axum app that queues translations and serves their status.
//!
//! ```text
//! cargo run --example jobs          # listens on LISTEN_ADDR, default 127.0.0.1:3000
//!
//! # Submit: 202 Accepted with the job's id (the id is derived from the file, so submitting
//! # the same file again while it is queued or running returns the same job).
//! curl -si localhost:3000/translate -H 'content-type: application/json' \
//!      -d '{"file_id": 7, "text": "hola mundo"}'
//! # {"id":"file-7"}
//!
//! # Poll: queued, then running with progress, then completed with the result.
//! curl -s localhost:3000/jobs/file-7
//! # {"id":"file-7","status":"running","attempts":1,...,"progress":{"value":0.5,"message":"word 2 of 2"},...}
//! # {"id":"file-7","status":"completed",...,"result":{"file_id":7,"text":"hello world"},...}
//!
//! # Cancel a long one: it stops at its next word.
//! curl -s localhost:3000/translate -H 'content-type: application/json' \
//!      -d '{"file_id": 8, "text": "uno dos tres cuatro cinco seis siete ocho nueve diez"}'
//! curl -s -X DELETE localhost:3000/jobs/file-8      # {"id":"file-8","outcome":"stopping"}
//! curl -s localhost:3000/jobs/file-8                # ... "status":"cancelled" ...
//!
//! # Failures: an empty text fails at once (a permanent error, no retries).
//! curl -s localhost:3000/translate -H 'content-type: application/json' -d '{"file_id": 9, "text": ""}'
//! curl -s 'localhost:3000/jobs?status=failed'      # [{"id":"file-9","status":"failed",...}]
//!
//! curl -si localhost:3000/jobs/nope                 # 404
//! ```
//!
//! `GET /jobs/{id}` reads the job through a [`CacheLayer`] keyed by job id, with a short
//! TTL, and the queue's change hook invalidates a job's entry whenever the job changes: a
//! client that polls gets fresh status without a store read on every poll. (A read that
//! began just before a change is not stored after the invalidation: the cache drops what a
//! load read before its key was invalidated.)
//!
//! Ctrl-C stops the server, then the queue: running jobs get 10 s to finish, and jobs
//! still queued are logged.
//!
//! `tests/jobs_example.rs` runs this very app over loopback HTTP.

use std::error::Error;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use layercake::queue::{
    Backoff, CancelOutcome, JobContext, JobId, JobInfo, JobStatus, Permanent, Progress, Queue,
    QueueError, QueueLayer, QueueService,
};
use layercake::{BoxError, Cache, CacheLayer, ConfigError};
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A request to translate a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Translate {
    pub file_id: u64,
    pub text: String,
}

/// The job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Translation {
    pub file_id: u64,
    pub text: String,
}

pub type Job = JobInfo<Translation>;

/// How the app is tuned; tests make the work slower and the status cache longer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The time each word takes: stands for the real work.
    pub per_word: Duration,
    /// How long a job's status may be served from the cache without a change.
    pub status_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            per_word: Duration::from_millis(500),
            status_ttl: Duration::from_secs(2),
        }
    }
}

/// The app's shared parts.
#[derive(Clone)]
pub struct Jobs {
    /// The queue handle: status, cancel, list, shutdown.
    pub queue: Queue<Translate, Translation>,
    /// Enqueues a translation.
    submit: QueueService<Translate, Translation>,
    /// Reads a job through the status cache.
    status: BoxCloneSyncService<JobId, Option<Job>, QueueError>,
    /// The status cache, to read its statistics.
    pub cache: Cache<Option<Job>>,
}

/// Builds the queue (its workers run `translate`) and the cached status reader. Call it
/// inside a Tokio runtime.
pub fn jobs(settings: Settings) -> Result<Jobs, ConfigError> {
    let cache = Cache::builder("job-status")
        .namespace("jobs")
        .time_to_live(settings.status_ttl)
        .max_capacity(10_000)
        .build()?;

    let queue: Queue<Translate, Translation> = Queue::builder("translate")
        .workers(4)
        .capacity(1_000)
        .load_shed(true) // a full queue answers 503 at once instead of holding the request
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(200)))
        .result_ttl(Duration::from_secs(3600))
        .job_id(|req: &Translate| Some(format!("file-{}", req.file_id)))
        .on_change({
            let cache = cache.clone();
            move |id: &JobId, _status| {
                // The hook is synchronous and runs on the queue's tasks: hand the
                // invalidation (which may reach Redis) to a task of its own.
                let (cache, id) = (cache.clone(), id.clone());
                tokio::spawn(async move {
                    if let Err(err) = cache.invalidate(&id).await {
                        tracing::debug!(job = %id, error = %err, "status cache: Redis not invalidated; its TTL will");
                    }
                });
            }
        })
        .build()?;

    let per_word = settings.per_word;
    let submit = ServiceBuilder::new()
        .layer(QueueLayer::new(queue.clone()))
        .service(service_fn(move |req: Translate| translate(req, per_word)));

    let status = ServiceBuilder::new()
        .layer(
            CacheLayer::new(cache.clone(), |id: &JobId| Some(id.clone()))
                // Unknown ids are not cached: a job created later must show up at once.
                .store_when(|job: &Option<Job>| job.is_some()),
        )
        .service(service_fn({
            let queue = queue.clone();
            move |id: JobId| {
                let queue = queue.clone();
                async move { queue.job(&id).await }
            }
        }));

    Ok(Jobs {
        queue,
        submit,
        status: BoxCloneSyncService::new(status),
        cache,
    })
}

/// The work: translates word by word, reporting progress and stopping when cancelled.
async fn translate(req: Translate, per_word: Duration) -> Result<Translation, BoxError> {
    let words: Vec<&str> = req.text.split_whitespace().collect();
    if words.is_empty() {
        // Retrying cannot help.
        return Err(Permanent::new("nothing to translate").into());
    }
    let ctx = JobContext::current();
    let mut out = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        if let Some(ctx) = &ctx {
            tokio::select! {
                () = ctx.cancelled() => return Err("cancelled".into()),
                () = tokio::time::sleep(per_word) => {}
            }
            let done = (i + 1) as f64 / words.len() as f64;
            ctx.set_progress(Progress::new(done).with_message(format!(
                "word {} of {}",
                i + 1,
                words.len()
            )));
        }
        out.push(dictionary(word));
    }
    Ok(Translation {
        file_id: req.file_id,
        text: out.join(" "),
    })
}

fn dictionary(word: &str) -> String {
    let known = match word.to_lowercase().as_str() {
        "hola" => "hello",
        "mundo" => "world",
        "uno" => "one",
        "dos" => "two",
        "tres" => "three",
        "gato" => "cat",
        "perro" => "dog",
        _ => return format!("[{word}]"),
    };
    known.to_owned()
}

/// The routes.
pub fn app(jobs: Jobs) -> Router {
    Router::new()
        .route("/translate", post(submit))
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(job).delete(cancel))
        .with_state(jobs)
}

#[derive(Serialize)]
struct Submitted {
    id: JobId,
}

async fn submit(State(jobs): State<Jobs>, Json(req): Json<Translate>) -> Response {
    match jobs.submit.oneshot(req).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(Submitted { id })).into_response(),
        Err(err) if err.is_overloaded() => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the queue is full\n",
        )
            .into_response(),
        Err(err) if err.is_closed() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
        }
        Err(err) => internal(err),
    }
}

async fn job(State(jobs): State<Jobs>, Path(id): Path<String>) -> Response {
    match jobs.status.oneshot(JobId::from(id)).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(err) => internal(err),
    }
}

#[derive(Serialize)]
struct Cancelled {
    id: JobId,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<JobStatus>,
}

async fn cancel(State(jobs): State<Jobs>, Path(id): Path<String>) -> Response {
    let id = JobId::from(id);
    let (outcome, status) = match jobs.queue.cancel(&id).await {
        Ok(CancelOutcome::Cancelled) => ("cancelled", None),
        Ok(CancelOutcome::Stopping) => ("stopping", None),
        Ok(CancelOutcome::AlreadyFinished(status)) => ("already_finished", Some(status)),
        Ok(CancelOutcome::NotFound) => {
            return (StatusCode::NOT_FOUND, "no such job\n").into_response()
        }
        Ok(_) => ("unknown", None),
        Err(err) => return internal(err),
    };
    Json(Cancelled {
        id,
        outcome,
        status,
    })
    .into_response()
}

#[derive(Deserialize)]
struct ListParams {
    status: JobStatus,
    limit: Option<usize>,
}

async fn list(State(jobs): State<Jobs>, Query(params): Query<ListParams>) -> Response {
    let limit = params.limit.unwrap_or(50).min(1_000);
    match jobs.queue.list(params.status, limit).await {
        Ok(list) => Json(list).into_response(),
        Err(err) => internal(err),
    }
}

fn internal(err: QueueError) -> Response {
    tracing::error!(error = %err, "job store error");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let jobs = jobs(Settings::default())?;
    let queue = jobs.queue.clone();
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, app(jobs))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    let report = queue.shutdown(Duration::from_secs(10)).await;
    tracing::info!(
        finished = report.finished,
        cancelled = ?report.cancelled,
        left_queued = ?report.queued,
        "queue shut down"
    );
    Ok(())
}
