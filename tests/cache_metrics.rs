//! Metric names, labels, values, units and descriptions are public API (DESIGN.md 3): pinned
//! here with `metrics_util`'s `DebuggingRecorder`, against a real Redis behind a fault
//! proxy so that an L2 failure (timeouts, then the breaker) is among what is measured.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercake::{Cache, CacheLayer, MockClock};
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use support::{eventually, Fault, FaultProxy, RedisServer};
use tower::{service_fn, Layer, ServiceExt};

const WAIT: Duration = Duration::from_secs(5);
const CACHE: &str = "pinned";

type Labels = Vec<(String, String)>;

struct Metric {
    kind: MetricKind,
    unit: Option<Unit>,
    description: Option<String>,
    value: DebugValue,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut v: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_names_labels_values_units_and_descriptions_are_pinned() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let clock = MockClock::new();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();

    // Handles are registered when the cache is built: build it under the recorder.
    let cache = metrics::with_local_recorder(&recorder, || {
        layercake::describe_metrics();
        Cache::builder(CACHE)
            .namespace("m")
            .time_to_live(Duration::from_secs(60))
            .l1_time_to_live(Duration::from_secs(1))
            .ttl_jitter(0.0)
            .max_entry_size(256)
            .l2_timeout(Duration::from_millis(50))
            .clock(clock.clone())
            .redis_url(proxy.url())
            .build()
            .unwrap()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: String| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if req.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, String>(if req == "big" {
                "x".repeat(1_000)
            } else {
                format!("v:{req}")
            })
        }
    });
    let svc = CacheLayer::new(cache.clone(), |r: &String| {
        (!r.starts_with("nocache")).then(|| r.clone())
    })
    // `t*` responses are not stored, so the L2 failures below are all reads.
    .store_when(|res: &String| !res.starts_with("v:t"))
    .layer(inner);
    let get = |req: &'static str| svc.clone().oneshot(req.to_owned());

    eventually(WAIT, "connected", || async {
        let s = cache.stats();
        s.l2_connected() && s.invalidations_subscribed
    })
    .await;
    // Another replica (its metrics go to no recorder) invalidates a key, before anything is
    // stored: nothing in L1 is outdated by it.
    let other: Cache<String> = Cache::builder(CACHE)
        .namespace("m")
        .redis_url(server.url())
        .build()
        .unwrap();
    other.invalidate("elsewhere").await.unwrap();
    eventually(WAIT, "the other replica's invalidation heard", || async {
        cache.stats().invalidations_received == 1
    })
    .await;
    get("a").await.unwrap(); // miss
    get("a").await.unwrap(); // hit_l1
    get("nocache").await.unwrap(); // bypass
    eventually(WAIT, "`a` in Redis", || async {
        server.query::<i64>(&["EXISTS", &cache.redis_key("a")]) == 1
    })
    .await;
    clock.advance(Duration::from_secs(2)); // past l1_time_to_live, within time_to_live
    get("a").await.unwrap(); // hit_l2
    let (x, y) = tokio::join!(get("slow"), get("slow")); // miss + coalesced
    assert_eq!((x.unwrap(), y.unwrap()), ("v:slow".into(), "v:slow".into()));
    get("big").await.unwrap(); // miss, not stored: oversized
    eventually(WAIT, "`slow` in Redis", || async {
        server.query::<i64>(&["EXISTS", &cache.redis_key("slow")]) == 1
    })
    .await;

    proxy.set(Fault::Blackhole);
    for req in ["t0", "t1", "t2", "t3", "t4"] {
        get(req).await.unwrap(); // miss; L2 get: timeout (the 5th opens the breaker)
    }
    assert!(cache.stats().breaker_open());
    for req in ["t5", "t6"] {
        get(req).await.unwrap(); // miss; L2 get: breaker_open
    }
    assert_eq!(calls.load(Ordering::SeqCst), 11);

    let mut metrics: BTreeMap<(String, Labels), Metric> = BTreeMap::new();
    for (key, unit, description, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let (name, labels) = key.into_parts();
        let mut labels: Labels = labels
            .into_iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let metric = Metric {
            kind,
            unit,
            description: description.map(|d| d.to_string()),
            value,
        };
        metrics.insert((name.as_str().to_owned(), labels), metric);
    }
    let take = |metrics: &mut BTreeMap<(String, Labels), Metric>,
                name: &str,
                pairs: &[(&str, &str)]|
     -> Metric {
        metrics
            .remove(&(name.to_owned(), labels(pairs)))
            .unwrap_or_else(|| {
                panic!(
                    "no metric {name} {pairs:?}; have: {:#?}",
                    metrics.keys().collect::<Vec<_>>()
                )
            })
    };
    let check = |m: &Metric, kind: MetricKind, unit: Unit, what: &str| {
        assert_eq!(m.kind, kind, "{what}");
        assert_eq!(m.unit, Some(unit), "{what}: unit");
        assert!(
            m.description.as_deref().is_some_and(|d| d.len() > 10),
            "{what}: description {:?}",
            m.description
        );
    };

    for (result, n) in [
        ("hit_l1", 1),
        ("hit_l2", 1),
        ("miss", 10),
        ("coalesced", 1),
        ("bypass", 1),
        ("stale", 0),
    ] {
        let m = take(
            &mut metrics,
            "layercake_cache_requests_total",
            &[("cache", CACHE), ("result", result)],
        );
        check(&m, MetricKind::Counter, Unit::Count, result);
        assert_eq!(m.value, DebugValue::Counter(n), "requests result={result}");
    }

    for op in ["get", "set", "del"] {
        for cause in [
            "timeout",
            "io",
            "server",
            "decode",
            "oversized",
            "breaker_open",
            "bulkhead",
            "dropped",
        ] {
            let m = take(
                &mut metrics,
                "layercake_cache_l2_errors_total",
                &[("cache", CACHE), ("op", op), ("cause", cause)],
            );
            check(&m, MetricKind::Counter, Unit::Count, "l2_errors");
            let expected = match (op, cause) {
                ("get", "timeout") => 5,
                ("get", "breaker_open") => 2,
                _ => 0,
            };
            assert_eq!(
                m.value,
                DebugValue::Counter(expected),
                "l2_errors op={op} cause={cause}"
            );
        }
    }

    let m = take(
        &mut metrics,
        "layercake_cache_lookup_seconds",
        &[("cache", CACHE), ("tier", "l2")],
    );
    check(&m, MetricKind::Histogram, Unit::Seconds, "lookup_seconds");
    let DebugValue::Histogram(samples) = &m.value else {
        panic!("{:?}", m.value)
    };
    // Redis was asked 9 times (a, a, slow, big, t0..t4); skipped reads are not timed.
    assert_eq!(samples.len(), 9, "{samples:?}");
    let over_budget = samples.iter().filter(|s| s.0 >= 0.05).count();
    assert!(over_budget >= 5, "the 5 timed-out reads: {samples:?}");
    assert!(samples.iter().all(|s| s.0 < 1.0), "{samples:?}");

    let m = take(
        &mut metrics,
        "layercake_cache_l1_entries",
        &[("cache", CACHE)],
    );
    check(&m, MetricKind::Gauge, Unit::Count, "l1_entries");
    assert_eq!(m.value, DebugValue::Gauge(2.0.into()), "`a` and `slow`");

    let m = take(
        &mut metrics,
        "layercake_cache_breaker_open",
        &[("cache", CACHE)],
    );
    check(&m, MetricKind::Gauge, Unit::Count, "breaker_open");
    assert_eq!(m.value, DebugValue::Gauge(1.0.into()));

    // Connected (no transition from the initial closed state), then opened once.
    for (to, n) in [("open", 1), ("closed", 0)] {
        let m = take(
            &mut metrics,
            "layercake_cache_breaker_transitions_total",
            &[("cache", CACHE), ("to", to)],
        );
        check(&m, MetricKind::Counter, Unit::Count, "breaker");
        assert_eq!(m.value, DebugValue::Counter(n), "to={to}");
    }

    for (reason, n) in [("oversized", 1), ("encode", 0)] {
        let m = take(
            &mut metrics,
            "layercake_cache_not_stored_total",
            &[("cache", CACHE), ("reason", reason)],
        );
        check(&m, MetricKind::Counter, Unit::Count, "not_stored");
        assert_eq!(
            m.value,
            DebugValue::Counter(n),
            "not_stored reason={reason}"
        );
    }

    for (kind, n) in [("key", 1), ("clear", 0), ("unknown", 0), ("tag", 0)] {
        let m = take(
            &mut metrics,
            "layercake_cache_invalidations_received_total",
            &[("cache", CACHE), ("kind", kind)],
        );
        check(
            &m,
            MetricKind::Counter,
            Unit::Count,
            "invalidations_received",
        );
        assert_eq!(m.value, DebugValue::Counter(n), "received kind={kind}");
    }

    // Subscribed once, with an empty L1: no gap.
    let m = take(
        &mut metrics,
        "layercake_cache_l1_gap_flushes_total",
        &[("cache", CACHE)],
    );
    check(&m, MetricKind::Counter, Unit::Count, "l1_gap_flushes");
    assert_eq!(m.value, DebugValue::Counter(0));

    // Fail-safe is off here: the names and labels are pinned, at zero
    // (tests/cache_failsafe.rs counts them).
    for cause in ["error", "hard_timeout", "soft_timeout"] {
        let m = take(
            &mut metrics,
            "layercake_cache_fail_safe_activations_total",
            &[("cache", CACHE), ("cause", cause)],
        );
        check(
            &m,
            MetricKind::Counter,
            Unit::Count,
            "fail_safe_activations",
        );
        assert_eq!(m.value, DebugValue::Counter(0), "fail_safe cause={cause}");
    }
    for trigger in ["eager", "soft_timeout", "stale_while_revalidate"] {
        for outcome in ["ok", "error", "timeout"] {
            let m = take(
                &mut metrics,
                "layercake_cache_refreshes_total",
                &[("cache", CACHE), ("trigger", trigger), ("outcome", outcome)],
            );
            check(&m, MetricKind::Counter, Unit::Count, "refreshes");
            assert_eq!(
                m.value,
                DebugValue::Counter(0),
                "refreshes {trigger} {outcome}"
            );
        }
    }

    assert!(
        metrics.is_empty(),
        "unexpected metrics: {:#?}",
        metrics.keys().collect::<Vec<_>>()
    );
}
