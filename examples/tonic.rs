//! A Tonic gRPC server whose unary `GetItem` method is cached by a [`GrpcCacheLayer`],
//! while its server-streaming `ListItems` method passes through untouched.
//!
//! ```text
//! cargo run --example tonic    # serves on LISTEN_ADDR (default 127.0.0.1:50051), then
//!                              # calls itself: GetItem twice (one handler call), an
//!                              # error (never stored) and a stream
//! ```
//!
//! The service, in protobuf terms:
//!
//! ```text
//! package catalog;
//! service Catalog {
//!   rpc GetItem(GetItemRequest) returns (Item);                // unary: cached
//!   rpc ListItems(ListItemsRequest) returns (stream Item);     // streaming: passes through
//! }
//! message GetItemRequest   { uint64 id = 1; }
//! message ListItemsRequest { uint32 count = 1; uint64 interval_ms = 2; }
//! message Item             { uint64 id = 1; string name = 2; uint64 served = 3; }
//! ```
//!
//! Why the messages and the server/client glue are written by hand rather than generated:
//! `tonic-prost-build` needs `protoc` (or a build script with `protox`), a burden on every
//! build of this crate for the sake of one example. The code below is what codegen would
//! emit, reduced to the two methods: prost's derive for the messages, and tonic's own
//! generic `server::Grpc` / `client::Grpc` with the `ProstCodec`. It uses only tonic's
//! public API and stays short enough to read. `tests/grpc.rs` runs it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use layercake::cache::http::{CachedResponse, GrpcCacheLayer, UserKey};
use layercake::Cache;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

// ---- Messages (what `prost-build` would generate) ---------------------------------------

/// `catalog.GetItemRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetItemRequest {
    /// The item's id; 0 is never found.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// `catalog.ListItemsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListItemsRequest {
    /// How many items to stream.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// The pause between two items, in milliseconds.
    #[prost(uint64, tag = "2")]
    pub interval_ms: u64,
}

/// `catalog.Item`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    /// The item's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Which handler call produced it (1 for the first call...): shows cache hits.
    #[prost(uint64, tag = "3")]
    pub served: u64,
}

pub const GET_ITEM: &str = "/catalog.Catalog/GetItem";
pub const LIST_ITEMS: &str = "/catalog.Catalog/ListItems";

// ---- The application's handlers -----------------------------------------------------

/// The catalog: a slow lookup, with call counters.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Calls of `GetItem` that reached the handler.
    pub get_calls: AtomicU64,
    /// Calls of `ListItems` that reached the handler.
    pub list_calls: AtomicU64,
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<Item, Status>> + Send>>;

impl Catalog {
    async fn get_item(&self, req: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        let served = self.get_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let id = req.into_inner().id;
        if id == 0 {
            return Err(Status::not_found("no item 0"));
        }
        let mut res = Response::new(Item {
            id,
            name: format!("item {id}"),
            served,
        });
        // Tags for the cache (`GrpcCacheLayer::tag_header`): `invalidate_tag("item:7")`
        // drops the cached answer for item 7.
        if let Ok(tags) = format!("item:{id}, catalog").parse() {
            res.metadata_mut().insert("cache-tag", tags);
        }
        Ok(res)
    }

    fn list_items(&self, req: Request<ListItemsRequest>) -> Result<Response<ItemStream>, Status> {
        let served = self.list_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let ListItemsRequest { count, interval_ms } = req.into_inner();
        let items = futures::stream::iter(1..=u64::from(count)).then(move |id| async move {
            if id > 1 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            Ok(Item {
                id,
                name: format!("item {id}"),
                served,
            })
        });
        Ok(Response::new(Box::pin(items)))
    }
}

// ---- Server glue (what `tonic-build` would generate) ---------------------------------

/// The `catalog.Catalog` gRPC service over a [`Catalog`].
#[derive(Debug, Clone)]
pub struct CatalogServer {
    catalog: Arc<Catalog>,
}

impl CatalogServer {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }
}

impl NamedService for CatalogServer {
    const NAME: &'static str = "catalog.Catalog";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for CatalogServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let catalog = Arc::clone(&self.catalog);
        match req.uri().path() {
            GET_ITEM => Box::pin(async move {
                let method = tower::service_fn(move |req: Request<GetItemRequest>| {
                    let catalog = Arc::clone(&catalog);
                    async move { catalog.get_item(req).await }
                });
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<Item, GetItemRequest>::default());
                Ok(grpc.unary(method, req).await)
            }),
            LIST_ITEMS => Box::pin(async move {
                let method = tower::service_fn(move |req: Request<ListItemsRequest>| {
                    let result = catalog.list_items(req);
                    async move { result }
                });
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<Item, ListItemsRequest>::default());
                Ok(grpc.server_streaming(method, req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

// ---- Client glue (what `tonic-build` would generate) ---------------------------------

/// A client of `catalog.Catalog`.
#[derive(Debug, Clone)]
pub struct CatalogClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl CatalogClient {
    /// Connects to `http://{addr}`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a socket address is a valid URI")
            .connect()
            .await?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls `GetItem`.
    pub async fn get_item(
        &mut self,
        req: impl tonic::IntoRequest<GetItemRequest>,
    ) -> Result<Response<Item>, Status> {
        self.ready().await?;
        let codec = ProstCodec::<GetItemRequest, Item>::default();
        self.grpc
            .unary(
                req.into_request(),
                PathAndQuery::from_static(GET_ITEM),
                codec,
            )
            .await
    }

    /// Calls `ListItems`.
    pub async fn list_items(
        &mut self,
        req: ListItemsRequest,
    ) -> Result<Response<tonic::Streaming<Item>>, Status> {
        self.ready().await?;
        let codec = ProstCodec::<ListItemsRequest, Item>::default();
        self.grpc
            .server_streaming(
                Request::new(req),
                PathAndQuery::from_static(LIST_ITEMS),
                codec,
            )
            .await
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))
    }
}

// ---- Wiring ------------------------------------------------------------------------

/// The cache layer: `GetItem` is cached, nothing else is; answers carry the tags the
/// handler names in their `cache-tag` metadata.
pub fn cache_layer(cache: Cache<CachedResponse>) -> GrpcCacheLayer {
    GrpcCacheLayer::new(cache)
        .method(GET_ITEM)
        .x_cache_header(true)
        .tag_header(http::HeaderName::from_static("cache-tag"))
}

/// Serves the catalog behind `layer` on `listener` until the task is dropped.
pub async fn serve<U: UserKey>(
    listener: tokio::net::TcpListener,
    catalog: Arc<Catalog>,
    layer: GrpcCacheLayer<U>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(layer)
        .add_service(CatalogServer::new(catalog))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = Cache::builder("catalog")
        .time_to_live(Duration::from_secs(30))
        .redis_url(std::env::var("REDIS_URL").ok())
        .build()?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    let catalog = Arc::new(Catalog::default());
    tokio::spawn(serve(
        listener,
        Arc::clone(&catalog),
        cache_layer(cache.clone()),
    ));

    let mut client = CatalogClient::connect(addr).await?;
    for _ in 0..2 {
        let res = client.get_item(GetItemRequest { id: 7 }).await?;
        let cached = res
            .metadata()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        println!("GetItem(7) -> {:?} [x-cache: {cached}]", res.into_inner());
    }
    println!(
        "GetItem(0) -> {:?}",
        client
            .get_item(GetItemRequest { id: 0 })
            .await
            .map(|r| r.into_inner())
    );
    let mut stream = client
        .list_items(ListItemsRequest {
            count: 3,
            interval_ms: 100,
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        println!("ListItems -> {item:?}");
    }
    println!(
        "handler calls: GetItem {}, ListItems {}; cache: {:?}",
        catalog.get_calls.load(Ordering::SeqCst),
        catalog.list_calls.load(Ordering::SeqCst),
        cache.stats()
    );
    Ok(())
}
