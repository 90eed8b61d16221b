//! `GrpcCacheLayer` on a real Tonic server (`examples/tonic.rs`) over loopback, called by a
//! real Tonic client.

mod support;

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/tonic.rs"]
mod example;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use example::{Catalog, CatalogClient, GetItemRequest, ListItemsRequest};
use layercake::cache::http::{CachedResponse, GrpcCacheLayer, UserKey};
use layercake::{Cache, MockClock};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

struct Fixture {
    client: CatalogClient,
    catalog: Arc<Catalog>,
    cache: Cache<CachedResponse>,
}

async fn start<U: UserKey>(
    name: &str,
    layer: impl FnOnce(Cache<CachedResponse>) -> GrpcCacheLayer<U>,
) -> Fixture {
    start_with(Cache::builder(name).build().unwrap(), layer).await
}

async fn start_with<U: UserKey>(
    cache: Cache<CachedResponse>,
    layer: impl FnOnce(Cache<CachedResponse>) -> GrpcCacheLayer<U>,
) -> Fixture {
    let catalog = Arc::new(Catalog::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example::serve(
        listener,
        Arc::clone(&catalog),
        layer(cache.clone()),
    ));
    let client = CatalogClient::connect(addr).await.expect("connect");
    Fixture {
        client,
        catalog,
        cache,
    }
}

fn x_cache<T>(res: &tonic::Response<T>) -> &str {
    res.metadata()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[tokio::test]
async fn unary_method_is_cached_by_request_message() {
    let mut f = start("grpc_unary", example::cache_layer).await;
    let first = f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    assert_eq!(x_cache(&first), "MISS");
    let second = f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(first.into_inner(), second.into_inner());
    assert_eq!(
        f.catalog.get_calls.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );

    // Another message is another key.
    let other = f.client.get_item(GetItemRequest { id: 8 }).await.unwrap();
    assert_eq!((x_cache(&other), other.get_ref().id), ("MISS", 8));
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 2);
    let stats = f.cache.stats();
    assert_eq!((stats.hits_l1, stats.misses), (1, 2));
}

#[tokio::test]
async fn invalidate_tag_drops_the_answers_the_handler_tagged() {
    let mut f = start("grpc_tags", example::cache_layer).await;
    for id in [7, 8, 7, 8] {
        f.client.get_item(GetItemRequest { id }).await.unwrap();
    }
    assert_eq!(
        f.catalog.get_calls.load(Ordering::SeqCst),
        2,
        "7 and 8 cached"
    );

    // The handler tagged item 7's answer `item:7` (and both `catalog`).
    f.cache.invalidate_tag("item:7").await.unwrap();
    let seven = f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    let eight = f.client.get_item(GetItemRequest { id: 8 }).await.unwrap();
    assert_eq!((x_cache(&seven), x_cache(&eight)), ("MISS", "HIT"));
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 3);

    f.cache.invalidate_tag("catalog").await.unwrap();
    for id in [7, 8] {
        let res = f.client.get_item(GetItemRequest { id }).await.unwrap();
        assert_eq!(x_cache(&res), "MISS", "item {id} after `catalog`");
    }
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn error_status_is_not_stored() {
    let mut f = start("grpc_error", example::cache_layer).await;
    for _ in 0..2 {
        let err = f
            .client
            .get_item(GetItemRequest { id: 0 })
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::NotFound, "no item 0"));
        assert_eq!(err.metadata().get("x-cache").unwrap(), "MISS");
    }
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 2);
    assert_eq!(f.cache.stats().l1_entries, 0);
}

#[tokio::test]
async fn streaming_method_passes_through_unbuffered() {
    let mut f = start("grpc_stream", example::cache_layer).await;
    for round in 1..=2 {
        let mut stream = f
            .client
            .list_items(ListItemsRequest {
                count: 3,
                interval_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        while let Some(item) = stream.message().await.unwrap() {
            assert_eq!(item.served, round, "each call reached the handler");
            ids.push(item.id);
        }
        assert_eq!(ids, [1, 2, 3]);
    }
    assert_eq!(f.catalog.list_calls.load(Ordering::SeqCst), 2);
    assert_eq!(f.cache.stats().bypassed, 2);

    // Not held back: the first message arrives while the server is still waiting an hour
    // to send the second.
    let mut stream = f
        .client
        .list_items(ListItemsRequest {
            count: 2,
            interval_ms: 3_600_000,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the first message of a stream must not wait for the stream's end")
        .unwrap();
    assert_eq!(first.map(|i| i.id), Some(1));
}

#[tokio::test]
async fn unlisted_methods_and_credentials_bypass() {
    // Nothing listed: GetItem passes through too.
    let mut f = start("grpc_unlisted", GrpcCacheLayer::new).await;
    f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 2);

    // A call with `authorization` bypasses unless a per-user key is configured.
    let mut f = start("grpc_auth", example::cache_layer).await;
    let with_token = |token: &'static str| {
        let mut req = Request::new(GetItemRequest { id: 7 });
        req.metadata_mut()
            .insert("authorization", MetadataValue::from_static(token));
        req
    };
    f.client.get_item(with_token("Bearer a")).await.unwrap();
    f.client.get_item(with_token("Bearer a")).await.unwrap();
    assert_eq!(f.catalog.get_calls.load(Ordering::SeqCst), 2);

    let mut f = start("grpc_per_user", |cache| {
        example::cache_layer(cache).per_user(|req| {
            req.headers
                .get("authorization")
                .map(|v| v.as_bytes().to_vec())
        })
    })
    .await;
    f.client.get_item(with_token("Bearer a")).await.unwrap();
    let hit = f.client.get_item(with_token("Bearer a")).await.unwrap();
    assert_eq!(x_cache(&hit), "HIT");
    let other = f.client.get_item(with_token("Bearer b")).await.unwrap();
    assert_eq!((x_cache(&other), other.get_ref().served), ("MISS", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_runs_through_the_grpc_layer() {
    let clock = MockClock::new();
    let cache = Cache::builder("grpc_eager")
        .time_to_live(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .eager_refresh(0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut f = start_with(cache, example::cache_layer).await;
    let calls = || f.catalog.get_calls.load(Ordering::SeqCst);
    let first = f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
    assert_eq!(x_cache(&first), "MISS");

    clock.advance(Duration::from_secs(40)); // past the refresh point, still fresh
    let hits = futures::future::join_all((0..20).map(|_| {
        let mut client = f.client.clone();
        async move { client.get_item(GetItemRequest { id: 7 }).await.unwrap() }
    }))
    .await;
    for hit in &hits {
        assert_eq!(x_cache(hit), "HIT");
    }
    support::eventually(Duration::from_secs(10), "the refreshed item", || {
        let mut client = f.client.clone();
        async move {
            let hit = client.get_item(GetItemRequest { id: 7 }).await.unwrap();
            x_cache(&hit) == "HIT" && hit.get_ref().served == 2
        }
    })
    .await;
    assert_eq!(f.cache.stats().refreshes, 1);
    // The refreshed entry is fresh again: hits start no other refresh.
    for _ in 0..5 {
        let hit = f.client.get_item(GetItemRequest { id: 7 }).await.unwrap();
        assert_eq!(x_cache(&hit), "HIT");
    }
    assert_eq!(calls(), 2, "one refresh for 20 concurrent hits");
}
