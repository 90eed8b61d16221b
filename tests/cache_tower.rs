//! Tower's contract, checked with `tower_test::mock`: `poll_ready` is the inner service's,
//! readiness is not copied by `Clone`, and on a miss the inner service that was made ready
//! is the one called (a `Mock` panics when called without being ready).

use std::task::Poll;

use layercake::{Cache, CacheLayer};
use tower::Layer;
use tower_test::mock::{self, Spawn};

type Mock = mock::Mock<String, String>;
type Handle = mock::Handle<String, String>;
type KeyFn = fn(&String) -> Option<String>;
type Cached = Spawn<layercake::CacheService<Mock, String, KeyFn>>;

// A `KeyExtractor<String>` is a `Fn(&String) -> Option<_>`.
#[allow(clippy::ptr_arg)]
fn key(req: &String) -> Option<String> {
    (!req.starts_with("nocache")).then(|| req.clone())
}

fn cached(name: &str) -> (Cached, Handle) {
    let cache = Cache::builder(name).build().unwrap();
    let (inner, handle) = mock::pair::<String, String>();
    let layer = CacheLayer::new(cache, key as KeyFn);
    (Spawn::new(layer.layer(inner)), handle)
}

fn is_ready<E: std::fmt::Debug>(p: Poll<Result<(), E>>) -> bool {
    match p {
        Poll::Ready(Ok(())) => true,
        Poll::Pending => false,
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
    }
}

/// Answers the next request the inner service receives with `v:{req}`.
async fn answer(handle: &mut Handle) -> String {
    let (req, send) = handle.next_request().await.expect("a request");
    send.send_response(format!("v:{req}"));
    req
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let (mut svc, mut handle) = cached("tower_ready");
    handle.allow(0);
    assert!(!is_ready(svc.poll_ready()), "inner Pending: Pending");
    handle.allow(1);
    assert!(svc.is_woken(), "the inner's wake-up reaches the caller");
    assert!(is_ready(svc.poll_ready()), "inner Ready: Ready");

    // An error from the inner poll_ready comes out unchanged (the layer adds no error).
    let (mut svc, mut handle) = cached("tower_ready_err");
    handle.send_error("inner is closed for business");
    match svc.poll_ready() {
        Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "inner is closed for business"),
        other => panic!("expected the inner error, got {other:?}"),
    }
}

#[tokio::test]
async fn on_a_miss_the_service_made_ready_is_the_one_called() {
    let (mut svc, mut handle) = cached("tower_miss");
    handle.allow(1);
    assert!(is_ready(svc.poll_ready()));
    handle.allow(0);

    // The ready inner service moves into the response future; a fresh clone stays behind.
    let fut = svc.call("k".to_owned());
    assert!(
        !is_ready(svc.poll_ready()),
        "what stays behind is a fresh, unready clone"
    );
    // A mock called without being ready panics, which would fail this task.
    let fut = tokio::spawn(fut);
    assert_eq!(answer(&mut handle).await, "k");
    assert_eq!(fut.await.unwrap().unwrap(), "v:k");

    // The clone left behind is made ready the usual way and then works too.
    handle.allow(1);
    assert!(svc.is_woken());
    assert!(is_ready(svc.poll_ready()));
    let fut = tokio::spawn(svc.call("k2".to_owned()));
    assert_eq!(answer(&mut handle).await, "k2");
    assert_eq!(fut.await.unwrap().unwrap(), "v:k2");
}

#[tokio::test]
async fn a_hit_or_a_bypass_uses_the_readiness_as_the_inner_would() {
    let (mut svc, mut handle) = cached("tower_hit");
    handle.allow(1);
    assert!(is_ready(svc.poll_ready()));
    let fut = tokio::spawn(svc.call("k".to_owned()));
    assert_eq!(answer(&mut handle).await, "k");
    assert_eq!(fut.await.unwrap().unwrap(), "v:k");

    // An L1 hit does not touch the inner service: its reservation stays for the next call.
    handle.allow(1);
    assert!(is_ready(svc.poll_ready()));
    handle.allow(0);
    assert_eq!(svc.call("k".to_owned()).await.unwrap(), "v:k");
    assert!(
        is_ready(svc.poll_ready()),
        "still ready: the hit used nothing"
    );

    // A bypass calls the ready inner service directly.
    let fut = tokio::spawn(svc.call("nocache-1".to_owned()));
    assert_eq!(answer(&mut handle).await, "nocache-1");
    assert_eq!(fut.await.unwrap().unwrap(), "v:nocache-1");
    assert!(
        !is_ready(svc.poll_ready()),
        "the bypass used the reservation"
    );
}

#[tokio::test]
async fn a_clone_of_a_ready_service_is_not_ready() {
    let (mut svc, mut handle) = cached("tower_clone");
    handle.allow(1);
    assert!(is_ready(svc.poll_ready()));
    handle.allow(0);

    let mut clone = Spawn::new(svc.get_ref().clone());
    assert!(
        !is_ready(clone.poll_ready()),
        "the clone must be made ready on its own"
    );
    assert!(
        is_ready(svc.poll_ready()),
        "the original keeps its readiness"
    );

    handle.allow(1);
    assert!(clone.is_woken());
    assert!(is_ready(clone.poll_ready()));

    // Each is called on its own readiness.
    let a = tokio::spawn(svc.call("a".to_owned()));
    let b = tokio::spawn(clone.call("b".to_owned()));
    let mut seen = vec![answer(&mut handle).await, answer(&mut handle).await];
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
    assert_eq!(a.await.unwrap().unwrap(), "v:a");
    assert_eq!(b.await.unwrap().unwrap(), "v:b");
}
