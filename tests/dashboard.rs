//! `dashboards/layercake.json` names only metrics the crate describes, so the dashboard
//! cannot drift from the code: a renamed or removed metric fails this test.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Records the names the crate describes; registers nothing.
#[derive(Default, Clone)]
struct Descriptions(Arc<Mutex<BTreeSet<String>>>);

impl Descriptions {
    fn add(&self, key: KeyName) {
        self.0.lock().unwrap().insert(key.as_str().to_owned());
    }
}

impl Recorder for Descriptions {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.add(key);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.add(key);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.add(key);
    }
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Every `layercake_*` name in the text, with Prometheus' histogram suffixes taken off.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("layercake_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_names_only_described_metrics() {
    let described = Descriptions::default();
    metrics::with_local_recorder(&described, layercake::describe_metrics);
    let described = described.0.lock().unwrap().clone();
    assert!(
        described.len() >= 10,
        "the crate describes its metrics: {described:?}"
    );

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/layercake.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
            .expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "the panels' queries: {}", exprs.len());

    let used: BTreeSet<String> = exprs.iter().flat_map(|e| names_in(e)).collect();
    let unknown: Vec<_> = used.difference(&described).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names undescribed metrics: {unknown:?}"
    );
    // The operators' view covers both halves of the crate.
    for needed in [
        "layercake_cache_requests_total",
        "layercake_cache_l2_errors_total",
        "layercake_cache_breaker_transitions_total",
        "layercake_queue_depth",
        "layercake_queue_jobs_total",
        "layercake_queue_store_errors_total",
    ] {
        assert!(used.contains(needed), "{needed} has no panel");
    }
}

#[test]
fn names_are_read_as_prometheus_writes_them() {
    let names = names_in(r#"rate(layercake_queue_run_seconds_count{queue="a"}[5m]) / layercake_x"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["layercake_queue_run_seconds", "layercake_x"]
    );
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}
