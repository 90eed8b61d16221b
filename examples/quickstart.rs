//! A slow service behind `CacheLayer`: a miss, then a hit, with their times and the stats.
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let redis_url = std::env::var("REDIS_URL").ok();
    let cache = Cache::builder("provider")
        .namespace("quickstart")
        .time_to_live(Duration::from_secs(600))
        .max_capacity(10_000)
        .redis_url(redis_url.clone()) // none: L1 only
        .build()?;
    match &redis_url {
        Some(_) => println!("cache: L1 + Redis L2"),
        None => println!("cache: L1 only (set REDIS_URL to add Redis)"),
    }

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
    Ok(())
}
