//! Pins the queue's metric names, labels, units and descriptions (DESIGN.md section 3).
//!
//! One test in its own binary: metrics are described once per process, on the first build.

use std::collections::HashMap;
use std::time::Duration;

use layercake::queue::store::{NewJob, Store};
use layercake::queue::{Backoff, JobId, Permanent, Queue, QueueLayer};
use layercake::BoxError;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test]
async fn queue_metrics_are_named_labelled_and_described() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are registered at build time, so the recorder sees what the workers record
    // on other tasks afterwards.
    let queue: Queue<String, String> = metrics::with_local_recorder(&recorder, || {
        Queue::builder("emails")
            .max_attempts(2)
            .backoff(Backoff::fixed(Duration::from_millis(1)).without_jitter())
            .job_id(|req: &String| req.strip_prefix("id:").map(str::to_owned))
            .build()
            .unwrap()
    });
    let svc = QueueLayer::new(queue.clone()).layer(service_fn(|req: String| async move {
        match req.as_str() {
            "flaky" => Err::<String, BoxError>("smtp timeout".into()),
            "bad" => Err(Permanent::new("no such address").into()),
            "slow" | "id:slow" => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => Ok(req),
        }
    }));

    let ok = svc.clone().oneshot("hello".into()).await.unwrap();
    let flaky = svc.clone().oneshot("flaky".into()).await.unwrap();
    let bad = svc.clone().oneshot("bad".into()).await.unwrap();
    let slow = svc.clone().oneshot("id:slow".into()).await.unwrap();
    svc.clone().oneshot("id:slow".into()).await.unwrap(); // deduplicated
    for id in [&ok, &flaky, &bad] {
        queue.wait(id).await.unwrap();
    }
    let garbage = JobId::from("garbage");
    let _ = queue
        .store()
        .enqueue(NewJob::new(garbage.clone(), &[0xc1u8][..]))
        .await
        .unwrap();
    queue.wait(&garbage).await.unwrap();
    queue.cancel(&slow).await.unwrap();
    // Cancelled after the (default 5 s) grace period at the latest: shut down now instead.
    queue.shutdown(Duration::ZERO).await;

    let snapshot: HashMap<_, _> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, description, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (
                (kind, key.name().to_owned(), labels),
                (unit, description, value),
            )
        })
        .collect();

    let labels = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<_> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    };
    let counter = |event: &str| -> u64 {
        let key = (
            MetricKind::Counter,
            "layercake_queue_jobs_total".to_owned(),
            labels(&[("queue", "emails"), ("event", event)]),
        );
        match snapshot.get(&key) {
            Some((unit, description, DebugValue::Counter(n))) => {
                assert_eq!(*unit, Some(Unit::Count));
                assert!(description.is_some(), "described");
                *n
            }
            other => panic!("no counter for event {event}: {other:?}"),
        }
    };
    assert_eq!(counter("enqueued"), 4);
    assert_eq!(counter("deduplicated"), 1);
    assert_eq!(counter("completed"), 1);
    assert_eq!(counter("failed"), 2, "flaky after 2 attempts, bad at once");
    assert_eq!(counter("retried"), 1);
    assert_eq!(counter("quarantined"), 1);
    assert_eq!(counter("cancelled"), 1);
    assert_eq!(counter("recovered"), 0);

    for op in ["enqueue", "take", "settle", "renew", "recover"] {
        let key = (
            MetricKind::Counter,
            "layercake_queue_store_errors_total".to_owned(),
            labels(&[("queue", "emails"), ("op", op)]),
        );
        match snapshot.get(&key) {
            Some((unit, description, DebugValue::Counter(0))) => {
                assert_eq!(*unit, Some(Unit::Count));
                assert!(description.is_some(), "described");
            }
            other => panic!("no store error counter for {op}: {other:?}"),
        }
    }

    let depth = snapshot
        .get(&(
            MetricKind::Gauge,
            "layercake_queue_depth".to_owned(),
            labels(&[("queue", "emails")]),
        ))
        .expect("depth gauge");
    assert_eq!(depth.0, Some(Unit::Count));
    // The garbage job went into the store behind the queue's back: this process counted its
    // start but not its enqueue (the gauge is a per-process delta that sums to the depth).
    assert!(
        matches!(depth.2, DebugValue::Gauge(g) if g.into_inner() == -1.0),
        "{depth:?}"
    );

    for name in [
        "layercake_queue_wait_seconds",
        "layercake_queue_run_seconds",
    ] {
        let (unit, description, value) = snapshot
            .get(&(
                MetricKind::Histogram,
                name.to_owned(),
                labels(&[("queue", "emails")]),
            ))
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(*unit, Some(Unit::Seconds), "{name}");
        assert!(description.is_some(), "{name} described");
        assert!(
            matches!(value, DebugValue::Histogram(v) if !v.is_empty()),
            "{name}"
        );
    }

    // Nothing else is emitted under the queue prefix.
    let names: std::collections::BTreeSet<_> =
        snapshot.keys().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(
        names
            .into_iter()
            .filter(|n| n.starts_with("layercake_queue"))
            .collect::<Vec<_>>(),
        [
            "layercake_queue_depth",
            "layercake_queue_jobs_total",
            "layercake_queue_run_seconds",
            "layercake_queue_store_errors_total",
            "layercake_queue_wait_seconds"
        ]
    );
}
