//! The crate's two jobs on their embedded defaults:
//!
//! 1. a slow function call behind `Cache::get_with`: a miss, then a hit;
//! 2. a slow service behind `CacheLayer`: a miss, then a hit, with their times and the stats;
//! 3. long work behind `QueueLayer`: the call returns a job id at once, the job runs on a
//!    background worker, and the `Queue` handle reports its status and result.
//!
//! ```text
//! cargo run --example quickstart                                   # L1 only
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example quickstart # L1 + Redis
//! ```
//!
//! It needs no Redis: with `REDIS_URL` unset it runs on the in-process tier alone. It exits
//! by itself.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tower::{service_fn, ServiceBuilder, ServiceExt};

use layercake::queue::{JobStatus, Queue, QueueLayer};
use layercake::{Cache, CacheLayer};

/// A search request, as an application would define it.
#[derive(Debug, Clone)]
struct Search {
    query: String,
}

/// The (cacheable) search result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hits {
    query: String,
    titles: Vec<String>,
}

/// Stands in for a slow call to an external search provider.
async fn search_provider(req: Search) -> Result<Hits, Infallible> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Hits {
        titles: vec![
            format!("{} in action", req.query),
            format!("The {} book", req.query),
        ],
        query: req.query,
    })
}

/// Stands in for a slow model call.
async fn embed(text: &str) -> Vec<f32> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    vec![text.len() as f32, text.split(' ').count() as f32]
}

/// A long job: translating a document.
#[derive(Debug, Serialize, Deserialize)]
struct Translate {
    file_id: u64,
    text: String,
}

async fn translate(req: Translate) -> Result<String, layercake::BoxError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(req.text.to_uppercase())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let redis_url = std::env::var("REDIS_URL").ok();
    match &redis_url {
        Some(_) => println!("cache: L1 + Redis L2"),
        None => println!("cache: L1 only (set REDIS_URL to add Redis)"),
    }

    // 1. A function call: an embedding, computed once per text.
    let embeddings: Cache<Vec<f32>> = Cache::builder("embeddings")
        .namespace("quickstart")
        .time_to_live(Duration::from_secs(3600))
        .redis_url(redis_url.clone())
        .build()?;
    for attempt in ["miss", "hit"] {
        let started = Instant::now();
        let v = embeddings.get_with("hola mundo", embed("hola mundo")).await;
        println!(
            "{attempt:>4}: {:>10.3?}  embedding {v:?}",
            started.elapsed()
        );
    }

    // 2. A service: a search provider.
    let cache = Cache::builder("provider")
        .namespace("quickstart")
        .time_to_live(Duration::from_secs(600))
        .max_capacity(10_000)
        .redis_url(redis_url.clone()) // none: L1 only
        .build()?;

    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone(), |req: &Search| {
            Some(req.query.clone())
        }))
        .service(service_fn(search_provider));

    for attempt in ["miss", "hit"] {
        let started = Instant::now();
        let hits = svc
            .clone()
            .oneshot(Search {
                query: "rust".into(),
            })
            .await?;
        println!(
            "{attempt:>4}: {:>10.3?}  {:?}",
            started.elapsed(),
            hits.titles
        );
    }

    let stats = cache.stats();
    println!(
        "stats: hits_l1={} hits_l2={} misses={} hit_rate={:.2} l2={:?}",
        stats.hits_l1,
        stats.hits_l2,
        stats.misses,
        stats.hit_rate(),
        stats.l2
    );

    // 3. The queue: in-process store, four workers, dedup by file id.
    let queue = Queue::builder("translate")
        .workers(4)
        .capacity(1_000)
        .max_attempts(3)
        .result_ttl(Duration::from_secs(3600))
        .job_id(|req: &Translate| Some(format!("file-{}", req.file_id)))
        .build()?;
    let jobs = ServiceBuilder::new()
        .layer(QueueLayer::new(queue.clone()))
        .service(service_fn(translate));

    let started = Instant::now();
    let id = jobs
        .clone()
        .oneshot(Translate {
            file_id: 7,
            text: "hola mundo".into(),
        })
        .await?;
    println!("queued: job {id} in {:.3?}", started.elapsed());
    // The same file again while the job is live: the same job, not a copy.
    let again = jobs
        .oneshot(Translate {
            file_id: 7,
            text: "hola mundo".into(),
        })
        .await?;
    assert_eq!(again, id);
    if let Some(job) = queue.job(&id).await? {
        println!("status: {:?}", job.status);
    }
    let job = queue.wait(&id).await?.ok_or("the job vanished")?;
    assert_eq!(job.status, JobStatus::Completed);
    println!(
        "done:   {:?} after {:.3?}, {} attempt(s), result {:?}",
        job.status,
        started.elapsed(),
        job.attempts,
        job.result
    );
    let report = queue.shutdown(Duration::from_secs(5)).await;
    println!("shutdown: {} job(s) left queued", report.queued.len());
    Ok(())
}
