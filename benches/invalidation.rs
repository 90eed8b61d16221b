//! Invalidation latency from replica A to replica B over loopback: how long after A calls
//! `invalidate` B's L1 stops serving the key. Two caches of one name, built separately (two
//! replicas) in this process, over a private `redis-server` on a free loopback port.
//!
//! Each round: B stores a key (in its L1), A invalidates it, and B's L1 is polled (yielding
//! to the runtime between polls) until it misses. Reported: percentiles of the time from
//! A's call to B's first miss, and of A's `invalidate` call itself (UNLINK + PUBLISH, one
//! round trip).
//!
//! ```text
//! cargo bench --bench invalidation              # 2,000 rounds
//! cargo bench --bench invalidation -- 10000     # another number of rounds
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use layercake::Cache;

fn replica(url: &str) -> Cache<String> {
    Cache::builder("bench")
        .namespace("inval")
        .time_to_live(Duration::from_secs(600))
        .redis_url(url)
        .build()
        .expect("valid settings")
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<28} n={:<6} p50={:>9.1?} p90={:>9.1?} p99={:>9.1?} max={:>9.1?}",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = support::RedisServer::start();
    rt.block_on(async {
        let (a, b) = (replica(&server.url()), replica(&server.url()));
        support::eventually(Duration::from_secs(10), "both subscribed", || async {
            let (sa, sb) = (a.stats(), b.stats());
            sa.l2_connected()
                && sb.l2_connected()
                && sa.invalidations_subscribed
                && sb.invalidations_subscribed
        })
        .await;
        let mut seen = Vec::with_capacity(rounds);
        let mut calls = Vec::with_capacity(rounds);
        let mut polls = 0u64;
        for i in 0..rounds + 100 {
            let key = format!("key-{i}");
            b.insert(&key, "old".to_owned()).await;
            assert!(b.get_l1(&key).is_some());
            let started = Instant::now();
            a.invalidate(&key).await.expect("Redis is up");
            let called = started.elapsed();
            while b.get_l1(&key).is_some() {
                polls += 1;
                if started.elapsed() > Duration::from_secs(5) {
                    panic!("B still serves {key} 5 s after A invalidated it");
                }
                tokio::task::yield_now().await;
            }
            // The first 100 rounds warm up.
            if i >= 100 {
                seen.push(started.elapsed());
                calls.push(called);
            }
        }
        println!("invalidation A -> B over loopback, {rounds} rounds ({polls} polls of B's L1)");
        percentiles("A invalidate() call", calls);
        percentiles("A call to B's L1 miss", seen);
        assert_eq!(b.stats().l1_gap_flushes, 0, "no gap during the run");
    });
}
