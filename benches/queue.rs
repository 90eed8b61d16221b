//! Queue benchmarks, each measured against `tower::buffer::Buffer` on the same no-op service,
//! in the same run and on the same runtime (multi-threaded, one worker per CPU).
//!
//! - `throughput`: 1,000 requests (`QUEUE_BENCH_JOBS` to change) enqueued back to back,
//!   until all have completed. For `Buffer`, the caller awaits every response future; for
//!   the queue, the caller enqueues every job and waits until the last one is recorded as
//!   completed (counted by the `on_change` hook), while the queue tracks each job: id,
//!   status, timestamps, encoded request and result, metrics. `queue` keeps results for
//!   1 s (about half a million records at these rates), `queue_ttl_20ms` for 20 ms (a few
//!   thousand): the difference is what holding the records costs.
//! - `latency`: one request at a time, from the call to its completion being visible
//!   (`Queue::wait` for the queue, the response for `Buffer`): the per-job overhead of a
//!   round trip through the workers.
//! - `store/memory_cycle`: the `MemoryStore` part of one job alone (enqueue, dequeue,
//!   settle as completed), with the same result TTL: what tracking costs in the store.
//! - `redis_store/throughput_settle_take` and `redis_store/throughput_one_by_one`: 1,000
//!   jobs (as `throughput`, enqueued concurrently) through a queue on `RedisStore`, whose
//!   workers' store steps settle and take in one script, beside the same store without that
//!   (the `Store` trait's default: one settle after another, then one take).
//! - `redis_store/cycle`: the same cycle on `RedisStore` over loopback (three Lua scripts,
//!   three round trips), beside `redis_store/raw_3_round_trips`: `RPUSH`, `LPOP` and a
//!   `HSET` of the result, one round trip each on one multiplexed connection, the least a
//!   Redis queue with a tracked result does per job. The difference is what the scripts'
//!   bookkeeping (leases, generation, indexes, expiry) costs.
//! - `cluster_store/cluster_throughput` beside `cluster_store/single_node_throughput`: the
//!   same 1,000-job throughput on a three-primary Redis Cluster (the queue's keys in one
//!   slot) and on one redis-server, in one run.
//!
//! ```text
//! cargo bench --bench queue
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use layercake::queue::store::{
    JobRecord, Lease, LeaseState, MemoryStore, NewJob, Recovered, RedisStore, Settled, Settlement,
    Store, StoreError,
};
use layercake::queue::{
    CancelOutcome, JobId, JobStatus, Progress, Queue, QueueLayer, QueueService,
};
use layercake::BoxError;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::buffer::Buffer;
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;

/// Jobs per `throughput` iteration, unless `QUEUE_BENCH_JOBS` says otherwise (with more
/// than the queue's capacity of 1,024, callers wait for room, as in a steady state).
const JOBS: usize = 1_000;

fn jobs() -> usize {
    std::env::var("QUEUE_BENCH_JOBS")
        .ok()
        .and_then(|jobs| jobs.parse().ok())
        .filter(|&jobs| jobs > 0)
        .unwrap_or(JOBS)
}
/// Long enough for every check a caller makes, short enough that the store's size is steady
/// during a run of millions of jobs (with the default hour, the bench would measure the
/// growth of a store of millions of finished jobs instead).
const RESULT_TTL: Duration = Duration::from_secs(1);
/// A result TTL short enough that the store stays small (a few thousand records).
const SHORT_RESULT_TTL: Duration = Duration::from_millis(20);

/// A small request, as a job would carry: an id and a short string.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Req {
    id: u64,
    name: String,
}

fn req(id: u64) -> Req {
    Req {
        id,
        name: "thumbnail".to_owned(),
    }
}

/// The no-op service under both: answers with the request's id.
fn noop() -> impl Service<
    Req,
    Response = u64,
    Error = BoxError,
    Future = impl Future<Output = Result<u64, BoxError>> + Send,
> + Send
       + 'static {
    service_fn(|req: Req| async move { Ok::<_, BoxError>(req.id) })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Counts completions and wakes the waiter when the target is reached.
#[derive(Default)]
struct Completions {
    done: AtomicUsize,
    target: AtomicUsize,
    all_done: Notify,
}

impl Completions {
    fn completed(&self) {
        let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done == self.target.load(Ordering::Acquire) {
            self.all_done.notify_one();
        }
    }

    fn expect(&self, jobs: usize) {
        self.done.store(0, Ordering::Release);
        self.target.store(jobs, Ordering::Release);
    }
}

/// A queue on `store` with 64 workers over the no-op service, whose completions are
/// counted in `completions`.
async fn counted_queue<St: Store>(
    name: &str,
    store: St,
    result_ttl: Duration,
    completions: Arc<Completions>,
) -> (Queue<Req, u64, St>, QueueService<Req, u64, St>) {
    let queue: Queue<Req, u64, St> = Queue::builder(name)
        .store(store)
        .workers(64)
        .capacity(1024)
        .result_ttl(result_ttl)
        .on_change(move |_: &JobId, status| {
            if status == JobStatus::Completed {
                completions.completed();
            }
        })
        .build()
        .expect("queue");
    let svc = QueueLayer::new(queue.clone()).layer(noop());
    (queue, svc)
}

fn throughput(c: &mut Criterion) {
    let jobs = jobs();
    let rt = runtime();
    let mut group = c.benchmark_group("throughput");
    group
        .throughput(Throughput::Elements(jobs as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));

    let buffer = rt.block_on(async { Buffer::new(noop(), 1024) });
    group.bench_function("buffer", |b| {
        b.to_async(&rt).iter(|| {
            let mut buffer = buffer.clone();
            async move {
                let mut responses = Vec::with_capacity(jobs);
                for id in 0..jobs as u64 {
                    let svc = buffer.ready().await.expect("ready");
                    responses.push(svc.call(req(id)));
                }
                for response in responses {
                    response.await.expect("response");
                }
            }
        });
    });

    // The same queue with two result TTLs: 1 s keeps every job of the last second (about
    // half a million records at these rates, far larger than the CPU caches), 20 ms keeps a
    // few thousand. The difference is what keeping the records costs.
    for (label, ttl) in [("queue", RESULT_TTL), ("queue_ttl_20ms", SHORT_RESULT_TTL)] {
        let completions = Arc::new(Completions::default());
        let (queue, svc) = rt.block_on(counted_queue(
            "bench",
            MemoryStore::new(),
            ttl,
            completions.clone(),
        ));
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| {
                let mut svc = svc.clone();
                let completions = completions.clone();
                async move {
                    completions.expect(jobs);
                    for id in 0..jobs as u64 {
                        let ready = svc.ready().await.expect("ready");
                        ready.call(req(id)).await.expect("enqueued");
                    }
                    completions.all_done.notified().await;
                }
            });
        });
        assert_eq!(queue.info().failed, 0);
    }
    group.finish();
}

fn latency(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("latency");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let buffer = rt.block_on(async { Buffer::new(noop(), 1024) });
    group.bench_function("buffer", |b| {
        b.to_async(&rt).iter(|| {
            let buffer = buffer.clone();
            async move { buffer.oneshot(req(1)).await.expect("response") }
        });
    });

    let (queue, svc) = rt.block_on(async {
        let queue: Queue<Req, u64> = Queue::builder("bench-latency")
            .workers(64)
            .capacity(1024)
            .result_ttl(RESULT_TTL)
            .build()
            .expect("queue");
        let svc = QueueLayer::new(queue.clone()).layer(noop());
        (queue, svc)
    });
    group.bench_function("queue", |b| {
        b.to_async(&rt).iter(|| {
            let (queue, svc) = (queue.clone(), svc.clone());
            async move {
                let id = svc.oneshot(req(1)).await.expect("enqueued");
                let job = queue.wait(&id).await.expect("store").expect("job");
                assert_eq!(job.status, JobStatus::Completed);
            }
        });
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("store");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    store_cycle(&mut group, &rt, "memory_cycle", MemoryStore::new());
    group.finish();
}

#[path = "../tests/support/mod.rs"]
mod support;

fn redis_store(c: &mut Criterion) {
    let rt = runtime();
    let server = support::RedisServer::start();
    let mut group = c.benchmark_group("redis_store");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let store = RedisStore::builder("bench")
        .redis_url(server.url())
        .build()
        .expect("a valid store");
    store_cycle(&mut group, &rt, "cycle", store);

    let payload: Arc<[u8]> = Arc::from(&b"\x82\xa2id\x01\xa4name\xa9thumbnail"[..]);
    let next = AtomicUsize::new(0);
    let conn = rt.block_on(server.async_conn());
    group.bench_function("raw_3_round_trips", |b| {
        b.to_async(&rt).iter_batched(
            || {
                let n = next.fetch_add(1, Ordering::Relaxed);
                format!("{n:032x}")
            },
            |id| {
                let (mut conn, payload) = (conn.clone(), payload.clone());
                async move {
                    let _: () = redis::cmd("RPUSH")
                        .arg("raw:wait")
                        .arg(&id)
                        .query_async(&mut conn)
                        .await
                        .expect("rpush");
                    let _: Option<String> = redis::cmd("LPOP")
                        .arg("raw:wait")
                        .query_async(&mut conn)
                        .await
                        .expect("lpop");
                    let _: () = redis::cmd("HSET")
                        .arg(format!("raw:job:{id}"))
                        .arg("res")
                        .arg(&*payload)
                        .query_async(&mut conn)
                        .await
                        .expect("hset");
                }
            },
            BatchSize::SmallInput,
        );
    });
    // Last: these set the group's throughput (jobs per iteration).
    for (label, one_by_one) in [
        ("throughput_settle_take", false),
        ("throughput_one_by_one", true),
    ] {
        let store = RedisStore::builder(label)
            .redis_url(server.url())
            .build()
            .expect("a valid store");
        if one_by_one {
            redis_throughput(&mut group, &rt, label, OneByOne(store));
        } else {
            redis_throughput(&mut group, &rt, label, store);
        }
    }

    group.finish();
}

/// One job's store cycle: enqueue, take, settle as completed (ids made outside the
/// measurement).
fn store_cycle<St: Store + Clone>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    label: &str,
    store: St,
) {
    let payload: Arc<[u8]> = Arc::from(&b"\x82\xa2id\x01\xa4name\xa9thumbnail"[..]);
    let next = AtomicUsize::new(0);
    group.bench_function(label, |b| {
        b.to_async(rt).iter_batched(
            || {
                let n = next.fetch_add(1, Ordering::Relaxed);
                NewJob::new(JobId::from(format!("{n:032x}")), payload.clone())
            },
            |job| {
                let store = store.clone();
                async move {
                    let _ = store.enqueue(job).await.expect("enqueue");
                    let lease = store
                        .dequeue(Duration::ZERO)
                        .await
                        .expect("dequeue")
                        .expect("a job");
                    let done = Settlement::Complete(vec![0x01].into());
                    let _ = store
                        .settle(&lease, done, RESULT_TTL)
                        .await
                        .expect("settle");
                }
            },
            BatchSize::SmallInput,
        );
    });
}

fn redis_throughput<St: Store + Clone>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    label: &str,
    store: St,
) {
    let jobs = jobs();
    let completions = Arc::new(Completions::default());
    let (_queue, svc) = rt.block_on(counted_queue(label, store, RESULT_TTL, completions.clone()));
    group.throughput(Throughput::Elements(jobs as u64));
    group.bench_function(label, |b| {
        b.to_async(rt).iter(|| {
            let mut svc = svc.clone();
            let completions = completions.clone();
            async move {
                completions.expect(jobs);
                let mut enqueues = Vec::with_capacity(jobs);
                for id in 0..jobs as u64 {
                    let ready = svc.ready().await.expect("ready");
                    enqueues.push(ready.call(req(id)));
                }
                for enqueued in futures::future::join_all(enqueues).await {
                    enqueued.expect("enqueued");
                }
                completions.all_done.notified().await;
            }
        });
    });
}

/// `RedisStore` without its one-script store step: the `Store` trait's default
/// `settle_then_dequeue` (each settlement, then one take, a round trip each).
#[derive(Clone)]
struct OneByOne(RedisStore);

impl Store for OneByOne {
    type EnqueueFuture = <RedisStore as Store>::EnqueueFuture;

    fn enqueue(&self, job: NewJob) -> Self::EnqueueFuture {
        self.0.enqueue(job)
    }

    async fn dequeue(&self, wait: Duration) -> Result<Option<Lease>, StoreError> {
        self.0.dequeue(wait).await
    }

    async fn settle(
        &self,
        lease: &Lease,
        settlement: Settlement,
        result_ttl: Duration,
    ) -> Result<Settled, StoreError> {
        self.0.settle(lease, settlement, result_ttl).await
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<LeaseState, StoreError> {
        self.0.progress(lease, progress).await
    }

    async fn renew(&self, lease: &Lease) -> Result<LeaseState, StoreError> {
        self.0.renew(lease).await
    }

    async fn cancel(&self, id: &JobId, result_ttl: Duration) -> Result<CancelOutcome, StoreError> {
        self.0.cancel(id, result_ttl).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        self.0.get(id).await
    }

    async fn list(&self, status: JobStatus, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        self.0.list(status, limit).await
    }

    async fn queued(&self) -> Result<usize, StoreError> {
        self.0.queued().await
    }

    async fn clear(&self, status: JobStatus) -> Result<usize, StoreError> {
        self.0.clear(status).await
    }

    async fn recover(
        &self,
        max_attempts: u32,
        result_ttl: Duration,
    ) -> Result<Recovered, StoreError> {
        self.0.recover(max_attempts, result_ttl).await
    }

    fn lease_duration(&self) -> Option<Duration> {
        self.0.lease_duration()
    }
}

/// Queue throughput on a three-primary Redis Cluster against one redis-server, in one run.
fn cluster_store(c: &mut Criterion) {
    let rt = runtime();
    let server = support::RedisServer::start();
    let cluster = support::RedisCluster::start();
    let cluster_url = cluster.crate_url();
    let mut group = c.benchmark_group("cluster_store");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (label, url) in [
        ("single_node_throughput", server.url()),
        ("cluster_throughput", cluster_url),
    ] {
        let store = RedisStore::builder(label)
            .redis_url(url)
            .build()
            .expect("a valid store");
        redis_throughput(&mut group, &rt, label, store);
    }
    group.finish();
}

criterion_group!(
    benches,
    throughput,
    latency,
    store,
    redis_store,
    cluster_store
);
criterion_main!(benches);
