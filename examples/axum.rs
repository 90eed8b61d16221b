//! An Axum service with a slow handler behind a two-tier cache, its Prometheus metrics and
//! the cache's statistics.
//!
//! ```text
//! cargo run --example axum                                   # L1 only
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example axum  # L1 + Redis
//!
//! curl -i localhost:3000/slow/42      # x-cache: MISS, after half a second
//! curl -i localhost:3000/slow/42      # x-cache: HIT, at once, with an Age header
//! curl -s localhost:3000/metrics | grep '^layercake_'
//! curl -s localhost:3000/cache/stats
//! ```
//!
//! It listens on `LISTEN_ADDR` (default `127.0.0.1:3000`). `tests/prometheus.rs` runs
//! this very app (`app()` and `build_cache()`) and checks the scrape.

use std::error::Error;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use layercake::cache::http::CachedResponse;
use layercake::cache::http::HttpCacheLayer;
use layercake::{Cache, ConfigError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The cache in front of the slow handler: L1, plus Redis when `redis_url` is given.
///
/// Build it after installing the metrics recorder: a cache registers its metrics when it is
/// built.
pub fn build_cache(redis_url: Option<String>) -> Result<Cache<CachedResponse>, ConfigError> {
    Cache::builder("slow")
        .namespace("example")
        .time_to_live(Duration::from_secs(60))
        .redis_url(redis_url)
        .build()
}

/// The routes: `/slow/{id}` (cached; each miss takes `delay`), `/metrics` (Prometheus text
/// format) and `/cache/stats` (JSON).
pub fn app(cache: Cache<CachedResponse>, metrics: PrometheusHandle, delay: Duration) -> Router {
    let cached = Router::new()
        .route(
            "/slow/{id}",
            get(move |Path(id): Path<String>| async move {
                tokio::time::sleep(delay).await; // stands for a slow query
                format!("result for {id}\n")
            }),
        )
        .layer(HttpCacheLayer::new(cache.clone()).x_cache_header(true));
    let admin = Router::new()
        .route(
            "/metrics",
            get(|State(metrics): State<PrometheusHandle>| async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
        .with_state(metrics)
        .route(
            "/cache/stats",
            get(move || async move { Json(cache.stats()).into_response() }),
        );
    cached.merge(admin)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // First the recorder, then the cache (it registers its metrics when built).
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let cache = build_cache(std::env::var("REDIS_URL").ok())?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, cache = ?cache, "listening");
    axum::serve(listener, app(cache, metrics, Duration::from_millis(500))).await?;
    Ok(())
}
