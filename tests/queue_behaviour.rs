//! Queue behaviour beyond the store contract: builder errors, the change hook, the job
//! context, executors, bounded memory, and what happens when every handle is dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercake::queue::store::{MemoryStore, Store};
use layercake::queue::{Backoff, JobContext, JobId, JobStatus, Progress, Queue, QueueLayer};
use layercake::BoxError;
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, ServiceExt};

type Log = Arc<Mutex<Vec<(String, JobStatus)>>>;

#[test]
fn bad_settings_are_build_errors_that_name_the_setting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cases = [
        (
            "workers",
            Queue::<(), ()>::builder("q")
                .workers(0)
                .build()
                .unwrap_err(),
        ),
        (
            "capacity",
            Queue::<(), ()>::builder("q")
                .capacity(0)
                .build()
                .unwrap_err(),
        ),
        (
            "max_attempts",
            Queue::<(), ()>::builder("q")
                .max_attempts(0)
                .build()
                .unwrap_err(),
        ),
        (
            "result_ttl",
            Queue::<(), ()>::builder("q")
                .result_ttl(Duration::ZERO)
                .build()
                .unwrap_err(),
        ),
        (
            "capacity",
            Queue::<(), ()>::builder("q")
                .capacity(usize::MAX)
                .build()
                .unwrap_err(),
        ),
    ];
    for (setting, err) in cases {
        assert_eq!(err.setting(), setting);
        assert!(err.to_string().contains(setting), "{err}");
    }
    assert!(Queue::<(), ()>::builder("q")
        .workers(1)
        .capacity(1)
        .max_attempts(1)
        .build()
        .is_ok());
}

#[test]
fn building_outside_a_runtime_without_one_is_an_error() {
    let err = Queue::<(), ()>::builder("q").build().unwrap_err();
    assert_eq!(err.setting(), "runtime");

    // With an explicit runtime it works anywhere.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(Queue::<(), ()>::builder("q")
        .runtime(rt.handle().clone())
        .build()
        .is_ok());
}

#[tokio::test]
async fn on_change_sees_every_transition_after_the_store_has_it() {
    let log: Log = Arc::default();
    let queue: Queue<u32, u32> = Queue::builder("hooks")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(1)).without_jitter())
        .on_change({
            let log = log.clone();
            move |id: &JobId, status| log.lock().unwrap().push((id.to_string(), status))
        })
        .build()
        .unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn(|n: u32| async move {
        let ctx = JobContext::current().unwrap();
        if ctx.attempt() == 1 {
            return Err::<u32, BoxError>("first attempt fails".into());
        }
        ctx.set_progress(Progress::new(1.0));
        tokio::task::yield_now().await; // progress is written at the next yield
        Ok(n * 2)
    }));
    let id = svc.oneshot(21).await.unwrap();
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.result, Some(42));

    use JobStatus::*;
    let statuses: Vec<JobStatus> = log.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(
        statuses,
        [Queued, Running, Queued, Running, Running, Completed],
        "enqueued, started, retried, started, progress, completed"
    );
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .all(|(job, _)| *job == id.to_string()));
}

#[tokio::test]
async fn a_panicking_hook_does_not_break_the_queue() {
    let queue: Queue<u32, u32> = Queue::builder("hooks")
        .on_change(|_: &JobId, _| panic!("hook bug"))
        .build()
        .unwrap();
    let svc = QueueLayer::new(queue.clone())
        .layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }));
    let id = svc.oneshot(1).await.unwrap();
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.result, Some(2));
    assert_eq!(queue.info().running, 0);
}

#[tokio::test]
async fn the_job_context_is_current_in_call_and_in_the_future() {
    #[derive(Clone)]
    struct Probe;
    impl tower::Service<u32> for Probe {
        type Response = (String, String);
        type Error = BoxError;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
        >;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: u32) -> Self::Future {
            let in_call = JobContext::current()
                .map(|c| c.id().to_string())
                .unwrap_or_default();
            Box::pin(async move {
                let in_future = JobContext::current()
                    .map(|c| c.id().to_string())
                    .unwrap_or_default();
                Ok((in_call, in_future))
            })
        }
    }
    assert!(JobContext::current().is_none());
    let queue: Queue<u32, (String, String)> = Queue::builder("ctx").build().unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(Probe);
    let id = svc.oneshot(0).await.unwrap();
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.result, Some((id.to_string(), id.to_string())));
}

#[test]
fn workers_run_on_the_runtime_they_are_given() {
    let dedicated = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dedicated-jobs")
        .enable_all()
        .build()
        .unwrap();
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    main.block_on(async {
        let queue: Queue<u32, String> = Queue::builder("cpu")
            .runtime(dedicated.handle().clone())
            .build()
            .unwrap();
        let svc = QueueLayer::new(queue.clone()).layer(service_fn(|_: u32| async {
            Ok::<_, BoxError>(std::thread::current().name().unwrap_or("").to_owned())
        }));
        let id = svc.oneshot(0).await.unwrap();
        let job = queue.wait(&id).await.unwrap().unwrap();
        assert_eq!(job.result.as_deref(), Some("dedicated-jobs"));
    });
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_by_the_result_ttl() {
    let store = MemoryStore::new();
    let ttl = Duration::from_secs(60);
    let queue: Queue<u32, u32> = Queue::builder("bounded")
        .store(store.clone())
        .capacity(10_000)
        .result_ttl(ttl)
        .build()
        .unwrap();
    let svc = QueueLayer::new(queue.clone())
        .layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    let mut last = None;
    for n in 0..2_000 {
        last = Some(svc.clone().oneshot(n).await.unwrap());
    }
    queue.wait(&last.unwrap()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while queue.info().completed < 2_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("all jobs complete");
    assert_eq!(store.tracked_jobs(), 2_000);

    tokio::time::sleep(ttl).await;
    assert_eq!(
        store.tracked_jobs(),
        0,
        "every finished job is forgotten after the TTL"
    );
}

#[tokio::test]
async fn dropping_every_handle_runs_the_queued_jobs_then_stops_the_workers() {
    let gate = Arc::new(Semaphore::new(0));
    let ran = Arc::new(Mutex::new(Vec::new()));
    let queue: Queue<u32, ()> = Queue::builder("orphan").workers(1).build().unwrap();
    let store = queue.store().clone();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn({
        let (gate, ran) = (gate.clone(), ran.clone());
        move |n: u32| {
            let (gate, ran) = (gate.clone(), ran.clone());
            async move {
                let _ = gate.acquire().await;
                ran.lock().unwrap().push(n);
                Ok::<_, BoxError>(())
            }
        }
    }));
    for n in 0..3 {
        svc.clone().oneshot(n).await.unwrap();
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    drop((queue, svc));
    gate.close(); // let the jobs through

    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.num_alive_tasks() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dispatcher and attempts end");
    assert_eq!(*ran.lock().unwrap(), [0, 1, 2]);
    assert_eq!(store.tracked_jobs(), 3);
}

#[tokio::test]
async fn progress_reported_just_before_returning_is_kept() {
    let queue: Queue<u32, u32> = Queue::builder("progress").build().unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn(|n: u32| async move {
        // No `.await` between the report and the return.
        JobContext::current()
            .unwrap()
            .set_progress(Progress::new(1.0).with_message("all done"));
        Ok::<_, BoxError>(n)
    }));
    let id = svc.oneshot(5).await.unwrap();
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(
        job.progress,
        Some(Progress::new(1.0).with_message("all done"))
    );
}

#[tokio::test]
async fn dropping_every_handle_still_runs_pending_retries() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let queue: Queue<u32, ()> = Queue::builder("orphan-retry")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(20)).without_jitter())
        .build()
        .unwrap();
    let store = queue.store().clone();
    let svc = QueueLayer::new(queue.clone()).layer(service_fn({
        let ran = ran.clone();
        move |n: u32| {
            let ran = ran.clone();
            async move {
                let attempt = JobContext::current().unwrap().attempt();
                ran.lock().unwrap().push(attempt);
                if attempt == 1 {
                    return Err::<(), BoxError>("first attempt fails".into());
                }
                let _ = n;
                Ok(())
            }
        }
    }));
    let id = svc.clone().oneshot(1).await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    drop((queue, svc));

    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.num_alive_tasks() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the workers end once the retry has run");
    assert_eq!(*ran.lock().unwrap(), [1, 2]);
    let record = store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Completed);
}
