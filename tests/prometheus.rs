//! The Axum example app (`examples/axum.rs`) with a real Prometheus recorder: misses, hits
//! and a Redis failure, then a scrape of `/metrics` over HTTP, parsed and checked against
//! the requests made and against `/cache/stats`.
//!
//! A global recorder can be installed once per process, so this file is its own test
//! binary and holds a single test.

mod support;

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/axum.rs"]
mod example;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use support::{eventually, Fault, FaultProxy, RedisServer};

/// One sample: metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// Parses the Prometheus text exposition format (the subset the exporter writes: no
/// escaped quotes or commas in label values, no timestamps).
fn parse(text: &str) -> HashMap<Series, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        out.insert((name.to_owned(), labels), value);
    }
    out
}

struct Scrape(HashMap<Series, f64>);

impl Scrape {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        *self
            .0
            .get(&(name.to_owned(), labels.clone()))
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in the scrape"))
    }

    /// The sum of every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

const CAUSES: [&str; 8] = [
    "timeout",
    "io",
    "server",
    "decode",
    "oversized",
    "breaker_open",
    "bulkhead",
    "dropped",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_hits_misses_and_l2_failures() {
    // The recorder first: the cache registers its metric handles when it is built.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .expect("install the recorder");
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let cache = example::build_cache(Some(proxy.url())).expect("build the cache");
    let app = example::app(cache.clone(), metrics, Duration::ZERO);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| {
        let req = client.get(format!("{base}{path}"));
        async move {
            let res = req.send().await.expect("request");
            let status = res.status();
            let x_cache = res
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, x_cache, res.text().await.expect("body"))
        }
    };
    eventually(
        Duration::from_secs(5),
        "the cache connected to Redis",
        || async { cache.stats().l2_connected() },
    )
    .await;

    // Two misses and three hits, Redis healthy.
    for (path, expected) in [
        ("/slow/1", "MISS"),
        ("/slow/1", "HIT"),
        ("/slow/1", "HIT"),
        ("/slow/2", "MISS"),
        ("/slow/2", "HIT"),
    ] {
        let (status, x_cache, body) = get(path).await;
        assert_eq!(
            (status.as_u16(), x_cache.as_deref()),
            (200, Some(expected)),
            "{path}"
        );
        assert_eq!(body, format!("result for {}\n", &path[6..]));
    }
    // Redis stops answering: the next miss's read fails (within its budget), and the
    // request is still served.
    proxy.set(Fault::Blackhole);
    let (status, x_cache, body) = get("/slow/3").await;
    assert_eq!(
        (status.as_u16(), x_cache.as_deref(), body.as_str()),
        (200, Some("MISS"), "result for 3\n")
    );
    eventually(
        Duration::from_secs(5),
        "the failed read counted",
        || async { cache.stats().l2_errors.total() > 0 },
    )
    .await;

    let text = get("/metrics").await.2;
    let scrape = Scrape(parse(&text));
    let req = |result: &str| {
        scrape.get(
            "layercake_cache_requests_total",
            &[("cache", "slow"), ("result", result)],
        )
    };
    assert_eq!(req("hit_l1"), 3.0);
    assert_eq!(req("miss"), 3.0);
    assert_eq!(req("hit_l2"), 0.0);
    assert_eq!(req("coalesced"), 0.0);
    assert_eq!(req("bypass"), 0.0);
    // Every (op, cause) series is there from the start, zero or not.
    for op in ["get", "set", "del"] {
        for cause in CAUSES {
            scrape.get(
                "layercake_cache_l2_errors_total",
                &[("cache", "slow"), ("op", op), ("cause", cause)],
            );
        }
    }
    // A blackholed Redis does not answer: the read ran out of its time budget.
    let timeouts = scrape.get(
        "layercake_cache_l2_errors_total",
        &[("cache", "slow"), ("op", "get"), ("cause", "timeout")],
    );
    assert_eq!(timeouts, 1.0, "the blackholed read is counted as a timeout");
    assert_eq!(
        scrape.get("layercake_cache_l1_entries", &[("cache", "slow")]),
        3.0
    );
    let breaker = scrape.get("layercake_cache_breaker_open", &[("cache", "slow")]);
    assert!(breaker == 0.0 || breaker == 1.0);
    // Each miss looked Redis up once (the histogram renders as a summary by default).
    assert_eq!(
        scrape.get(
            "layercake_cache_lookup_seconds_count",
            &[("cache", "slow"), ("tier", "l2")]
        ),
        3.0
    );
    assert!(text.contains("# TYPE layercake_cache_requests_total counter"));
    assert!(text.contains("# HELP layercake_cache_requests_total"));

    // The scrape and /cache/stats read the same counters. Background writes may still be
    // failing meanwhile, so compare two reads taken back to back until they agree.
    eventually(
        Duration::from_secs(5),
        "/metrics and /cache/stats agree",
        || async {
            let stats: serde_json::Value =
                serde_json::from_str(&get("/cache/stats").await.2).unwrap();
            let scrape = Scrape(parse(&get("/metrics").await.2));
            let again: serde_json::Value =
                serde_json::from_str(&get("/cache/stats").await.2).unwrap();
            if stats != again {
                return false;
            }
            let req = |result: &str| {
                scrape.get(
                    "layercake_cache_requests_total",
                    &[("cache", "slow"), ("result", result)],
                )
            };
            let same_requests = stats["hits_l1"] == req("hit_l1") as u64
                && stats["misses"] == req("miss") as u64
                && stats["hits_l2"] == req("hit_l2") as u64
                && stats["bypassed"] == req("bypass") as u64;
            let same_errors = CAUSES.iter().all(|cause| {
                stats["l2_errors"][cause]
                    == scrape.sum(
                        "layercake_cache_l2_errors_total",
                        &[("cache", "slow"), ("cause", cause)],
                    ) as u64
            });
            same_requests && same_errors
        },
    )
    .await;
    let stats: serde_json::Value = serde_json::from_str(&get("/cache/stats").await.2).unwrap();
    assert_eq!(
        (stats["hits_l1"].as_u64(), stats["misses"].as_u64()),
        (Some(3), Some(3))
    );
}
