//! Tower contract of `QueueService`, with `tower_test::mock` as the inner service: the
//! queue's backpressure lives in `poll_ready`, and no slot leaks.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use layercake::queue::{JobId, JobStatus, Queue, QueueLayer, QueueService};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock::{self, Spawn};

type Svc = QueueService<String, String>;

/// A queue with one worker in front of a mock whose readiness the test controls.
fn queue(
    capacity: usize,
    load_shed: bool,
) -> (Queue<String, String>, Svc, mock::Handle<String, String>) {
    let (inner, handle) = mock::pair::<String, String>();
    let queue = Queue::builder("contract")
        .workers(1)
        .capacity(capacity)
        .load_shed(load_shed)
        .job_id(|req: &String| req.strip_prefix("id:").map(str::to_owned))
        .build()
        .unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(inner);
    (queue, svc, handle)
}

fn is_pending<T, E>(poll: Poll<Result<T, E>>) -> bool {
    poll.is_pending()
}

fn is_ready_ok<T, E: std::fmt::Debug>(poll: Poll<Result<T, E>>) -> bool {
    matches!(poll, Poll::Ready(Ok(_)))
}

/// Lets other tasks run until `woken` holds; panics after 5 s.
async fn until(what: &str, mut woken: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !woken() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Calls a service made ready by `Spawn::poll_ready`; the memory store answers at once.
fn call_now(svc: &mut Spawn<Svc>, req: &str) -> JobId {
    svc.call(req.to_owned())
        .now_or_never()
        .expect("the response future is ready at once")
        .expect("enqueued")
}

#[tokio::test]
async fn poll_ready_is_pending_at_capacity_and_woken_when_a_slot_frees() {
    let (queue, svc, mut inner) = queue(1, false);
    // The inner service is not ready, so the worker does not take the job: the queue fills.
    inner.allow(0);
    let mut a = Spawn::new(svc.clone());
    let mut b = Spawn::new(svc);

    assert!(is_ready_ok(a.poll_ready()));
    let id = call_now(&mut a, "first");
    assert!(is_pending(a.poll_ready()), "the queue is full");
    assert!(is_pending(b.poll_ready()), "for every clone");
    tokio::task::yield_now().await;
    assert!(!b.is_woken());
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().status,
        JobStatus::Queued,
        "no job is taken while the inner service is not ready"
    );

    // The inner service becomes ready: the worker takes the job and frees its slot.
    inner.allow(1);
    until("a waiter to be woken", || a.is_woken() || b.is_woken()).await;
    let (req, respond) = inner.next_request().await.unwrap();
    assert_eq!(req, "first");
    respond.send_response("done".to_owned());
    // One of the two waiters gets the freed slot.
    let (ready_a, ready_b) = (is_ready_ok(a.poll_ready()), is_ready_ok(b.poll_ready()));
    assert!(ready_a ^ ready_b, "exactly one slot freed");

    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.result.as_deref(), Some("done"));
}

#[tokio::test]
async fn a_dropped_reservation_frees_its_slot() {
    let (_queue, svc, mut inner) = queue(1, false);
    inner.allow(0);
    let mut a = Spawn::new(svc.clone());
    let mut b = Spawn::new(svc.clone());

    assert!(is_ready_ok(a.poll_ready()));
    assert!(is_pending(b.poll_ready()));
    // A clone of a ready service is not ready: it does not share the reservation.
    let mut a_clone = Spawn::new(a.get_ref().clone());
    assert!(is_pending(a_clone.poll_ready()));

    drop(a);
    until("the waiter to be woken", || {
        b.is_woken() || a_clone.is_woken()
    })
    .await;
    let ready = [
        is_ready_ok(b.poll_ready()),
        is_ready_ok(a_clone.poll_ready()),
    ];
    assert_eq!(ready.iter().filter(|r| **r).count(), 1);

    // Waiters that give up leak nothing either.
    drop(b);
    drop(a_clone);
    let mut c = Spawn::new(svc);
    assert!(is_ready_ok(c.poll_ready()), "the slot is free again");
}

#[tokio::test]
async fn reserving_and_dropping_many_times_keeps_the_capacity() {
    let (_queue, svc, mut inner) = queue(2, false);
    inner.allow(0);
    for _ in 0..1_000 {
        let mut clone = Spawn::new(svc.clone());
        assert!(is_ready_ok(clone.poll_ready()));
    }
    let mut a = Spawn::new(svc.clone());
    let mut b = Spawn::new(svc.clone());
    let mut c = Spawn::new(svc);
    assert!(is_ready_ok(a.poll_ready()));
    assert!(is_ready_ok(b.poll_ready()));
    assert!(is_pending(c.poll_ready()), "capacity is still exactly 2");
}

#[tokio::test]
async fn a_deduplicated_call_gives_its_slot_back() {
    let (queue, svc, mut inner) = queue(2, false);
    inner.allow(0);
    let mut a = Spawn::new(svc);

    assert!(is_ready_ok(a.poll_ready()));
    let first = call_now(&mut a, "id:report");
    assert!(is_ready_ok(a.poll_ready()));
    let second = call_now(&mut a, "id:report");
    assert_eq!(first, second);
    assert_eq!(queue.info().deduplicated, 1);

    // One job queued, one slot free.
    assert!(is_ready_ok(a.poll_ready()));
    call_now(&mut a, "other");
    assert!(is_pending(a.poll_ready()));
}

#[tokio::test]
async fn load_shed_fails_the_call_instead_of_waiting() {
    let (queue, svc, mut inner) = queue(1, true);
    inner.allow(0);
    let mut a = Spawn::new(svc);

    assert!(is_ready_ok(a.poll_ready()));
    call_now(&mut a, "first");
    assert!(
        is_ready_ok(a.poll_ready()),
        "load shedding keeps poll_ready ready"
    );
    let err = a
        .call("second".to_owned())
        .now_or_never()
        .unwrap()
        .unwrap_err();
    assert!(err.is_overloaded());
    assert_eq!(queue.info().enqueued, 1);
}

#[tokio::test]
async fn shutdown_wakes_waiters_with_a_closed_error() {
    let (queue, svc, mut inner) = queue(1, false);
    inner.allow(0);
    let mut a = Spawn::new(svc.clone());
    let mut b = Spawn::new(svc);
    assert!(is_ready_ok(a.poll_ready()));
    call_now(&mut a, "first");
    assert!(is_pending(b.poll_ready()));

    let report = queue.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.queued.len(), 1);
    assert!(b.is_woken());
    match b.poll_ready() {
        Poll::Ready(Err(err)) => assert!(err.is_closed()),
        other => panic!("expected a closed error, got {other:?}"),
    }
}

#[tokio::test]
#[should_panic(expected = "before poll_ready")]
async fn call_without_poll_ready_panics() {
    let (_queue, mut svc, _inner) = queue(1, false);
    drop(svc.call("oops".to_owned()));
}

#[tokio::test]
async fn the_inner_service_gets_the_request_and_its_response_is_stored() {
    let (queue, svc, mut inner) = queue(4, false);
    let id = svc.oneshot("payload".to_owned()).await.unwrap();
    let (req, respond) = inner.next_request().await.unwrap();
    assert_eq!(req, "payload");
    respond.send_response("result".to_owned());
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result.as_deref(), Some("result"));
}

#[tokio::test]
async fn an_inner_error_response_fails_the_attempt() {
    let (inner, mut handle) = mock::pair::<String, String>();
    let queue: Queue<String, String> = Queue::builder("contract").max_attempts(1).build().unwrap();
    let svc = QueueLayer::new(queue.clone()).layer(inner);
    let id = svc.oneshot("x".to_owned()).await.unwrap();
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("upstream said no");
    let job = queue.wait(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.as_deref(), Some("upstream said no"));
}

#[test]
fn services_futures_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Svc>();
    send_sync::<Queue<String, String>>();
    send_sync::<QueueLayer<String, String>>();
    send::<<Svc as Service<String>>::Future>();
    fn future<F: Future>() {}
    future::<<Svc as Service<String>>::Future>();
}
