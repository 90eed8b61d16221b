//! Fixtures shared by `benches/cache.rs` (criterion timings) and `benches/cache_counts.rs`
//! (allocations and instruction counts), so both measure the same calls.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use serde::{Deserialize, Serialize};
use tower::Service;

#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
}

/// A small, typical response: a query echo and a few titles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hits {
    pub query: String,
    pub titles: Vec<String>,
}

pub fn hits(query: &str) -> Hits {
    Hits {
        query: query.to_owned(),
        titles: vec![
            format!("{query} in action"),
            format!("The {query} book"),
            format!("Programming {query}"),
        ],
    }
}

/// The key extractor of the `CacheLayer` benches: the query, copied (a `KeyExtractor`
/// returns an owned key, which a miss moves into its future).
pub fn key(req: &Search) -> Option<String> {
    Some(req.query.clone())
}

/// The bare service of the `CacheLayer` benches: a ready clone of the response.
pub fn bare(
    response: Hits,
) -> impl Service<
    Search,
    Response = Hits,
    Error = Infallible,
    Future = Ready<Result<Hits, Infallible>>,
> + Clone {
    tower::service_fn(move |_: Search| ready(Ok::<_, Infallible>(response.clone())))
}

pub fn search() -> Search {
    Search {
        query: "rust".into(),
    }
}

/// The HTTP fixture's request: a `GET` with a query and the headers a client sends.
pub fn http_request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example.com/search?q=rust&page=1")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "bench/1.0")
        .body(Empty::new())
        .expect("valid request")
}

/// The HTTP fixture's response body: about 1 KB of JSON.
pub static HTTP_BODY: &str = concat!(
    r#"{"query":"rust","page":1,"hits":["#,
    r#"{"id":1,"title":"Rust in action","authors":["Tim McNamara"],"year":2021,"isbn":"9781617294556"},"#,
    r#"{"id":2,"title":"The Rust programming language","authors":["Steve Klabnik","Carol Nichols"],"year":2023,"isbn":"9781718503106"},"#,
    r#"{"id":3,"title":"Programming Rust","authors":["Jim Blandy","Jason Orendorff","Leonora Tindall"],"year":2021,"isbn":"9781492052593"},"#,
    r#"{"id":4,"title":"Rust for Rustaceans","authors":["Jon Gjengset"],"year":2021,"isbn":"9781718501850"},"#,
    r#"{"id":5,"title":"Zero to production in Rust","authors":["Luca Palmieri"],"year":2022,"isbn":"9798859565335"},"#,
    r#"{"id":6,"title":"Rust atomics and locks","authors":["Mara Bos"],"year":2023,"isbn":"9781098119447"},"#,
    r#"{"id":7,"title":"Command-line Rust","authors":["Ken Youens-Clark"],"year":2022,"isbn":"9781098109431"},"#,
    r#"{"id":8,"title":"Hands-on Rust","authors":["Herbert Wolverson"],"year":2021,"isbn":"9781680508161"}"#,
    r#"],"total":8}"#
);

/// The HTTP fixture's bare service: builds the response each call (status, two headers,
/// a static body), as a handler does.
type HttpResult = Result<Response<Full<Bytes>>, Infallible>;

pub fn http_bare() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Ready<HttpResult>,
> + Clone {
    tower::service_fn(|_: Request<Empty<Bytes>>| {
        ready(Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/json")
                .header(CACHE_CONTROL, "max-age=3600")
                .body(Full::new(Bytes::from_static(HTTP_BODY.as_bytes())))
                .expect("valid response"),
        ))
    })
}

/// Polls a service and its future once, as a ready service answering from memory does:
/// no runtime, so the figure is the call path alone.
#[inline(never)]
pub fn call_now<S, R>(svc: &mut S, req: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {:?}", other.map(|r| r.err())),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        Poll::Ready(Err(e)) => panic!("service failed: {e:?}"),
        Poll::Pending => panic!("not an in-memory answer"),
    }
}

/// The baseline's Redis connection, made the way the cache makes its own (a pool's
/// multiplexed connection), so each L2 pair differs only by the layer.
pub async fn pooled_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let manager = bb8_redis::RedisConnectionManager::new(url).expect("redis url");
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(manager)
        .await
        .expect("pool");
    let conn = pool.get().await.expect("connection").clone();
    conn
}

/// Fail-safe, both timeouts and eager refresh on, as a service that wants them would set
/// them: the `l1_hit_failsafe` pair measures what they cost an L1 hit (a hit long before
/// the refresh point, so no refresh runs).
pub fn with_failsafe(builder: layercake::CacheBuilder<Hits>) -> layercake::CacheBuilder<Hits> {
    use std::time::Duration;
    builder
        .fail_safe_max_duration(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(30))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(2))
        .eager_refresh(0.8)
}
