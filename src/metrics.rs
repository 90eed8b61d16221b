//! Metric names (public API) and their descriptions.
//!
//! Every metric is emitted through the [`metrics`] facade: install any recorder (for example
//! `metrics-exporter-prometheus`) **before** building caches and queues, because they
//! register their metric handles once, when they are built.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `layercake_cache_requests_total` | counter | `cache`, `result` = `hit_l1` \| `hit_l2` \| `miss` \| `coalesced` \| `bypass` \| `stale` |
//! | `layercake_cache_l2_errors_total` | counter | `cache`, `op` = `get` \| `set` \| `del`, `cause` = `timeout` \| `io` \| `server` \| `decode` \| `oversized` \| `breaker_open` \| `bulkhead` \| `dropped` |
//! | `layercake_cache_lookup_seconds` | histogram | `cache`, `tier` = `l2` |
//! | `layercake_cache_l1_entries` | gauge | `cache` |
//! | `layercake_cache_breaker_open` | gauge (0/1) | `cache` |
//! | `layercake_cache_breaker_transitions_total` | counter | `cache`, `to` = `open` \| `closed` |
//! | `layercake_cache_not_stored_total` | counter | `cache`, `reason` = `oversized` \| `encode` |
//! | `layercake_cache_invalidations_received_total` | counter | `cache`, `kind` = `key` \| `clear` \| `tag` \| `unknown` |
//! | `layercake_cache_l1_gap_flushes_total` | counter | `cache` |
//! | `layercake_cache_fail_safe_activations_total` | counter | `cache`, `cause` = `error` \| `hard_timeout` \| `soft_timeout` |
//! | `layercake_cache_refreshes_total` | counter | `cache`, `trigger` = `eager` \| `soft_timeout` \| `stale_while_revalidate`, `outcome` = `ok` \| `error` \| `timeout` |
//!
//! `coalesced` counts requests that waited for another request's miss on the same key
//! (single flight) and got its result. L1 lookups are not timed: they take tens of
//! nanoseconds, less than reading the clock twice would cost.
//!
//! `invalidations_received` counts other replicas' invalidations applied to this process'
//! L1 (`unknown`: a message this build cannot read, taken as a clear); `l1_gap_flushes`
//! counts the times L1 was emptied because the invalidation channel was subscribed again
//! after a time in which messages were missed.
//!
//! `stale` counts requests answered with an expired entry (fail-safe): the load failed, ran
//! past `hard_timeout` or `soft_timeout`, or the entry is being re-used for the fail-safe
//! throttle. `fail_safe_activations` counts the loads so replaced (one per key per throttle
//! period while a backend keeps failing). `refreshes` counts loads nobody waited for: an
//! eager refresh (`trigger="eager"`) or a load that went on after its caller took a stale
//! value at its soft timeout (`trigger="soft_timeout"`) or an expired HTTP response within
//! its `stale-while-revalidate` window (`trigger="stale_while_revalidate"`), by how each ended.
//!
//! The queue's metrics (`layercake_queue_*`) are listed in [`crate::queue`].

use std::sync::Once;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub(crate) const CACHE_REQUESTS: &str = "layercake_cache_requests_total";
pub(crate) const CACHE_L2_ERRORS: &str = "layercake_cache_l2_errors_total";
pub(crate) const CACHE_LOOKUP_SECONDS: &str = "layercake_cache_lookup_seconds";
pub(crate) const CACHE_L1_ENTRIES: &str = "layercake_cache_l1_entries";
pub(crate) const CACHE_BREAKER_OPEN: &str = "layercake_cache_breaker_open";
pub(crate) const CACHE_BREAKER_TRANSITIONS: &str = "layercake_cache_breaker_transitions_total";
pub(crate) const CACHE_NOT_STORED: &str = "layercake_cache_not_stored_total";
pub(crate) const CACHE_INVALIDATIONS_RECEIVED: &str =
    "layercake_cache_invalidations_received_total";
pub(crate) const CACHE_L1_GAP_FLUSHES: &str = "layercake_cache_l1_gap_flushes_total";
pub(crate) const CACHE_FAIL_SAFE_ACTIVATIONS: &str = "layercake_cache_fail_safe_activations_total";
pub(crate) const CACHE_REFRESHES: &str = "layercake_cache_refreshes_total";

/// Describes every layercake metric (name, unit, help text) to the installed recorder.
///
/// Caches and queues call this once per process when the first one is built; call it
/// yourself when you install a recorder later, or a second one.
///
/// ```
/// layercake::describe_metrics();
/// ```
pub fn describe_metrics() {
    describe_cache();
    crate::queue::metrics::describe();
}

pub(crate) fn describe_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(describe_metrics);
}

fn describe_cache() {
    describe_counter!(
        CACHE_REQUESTS,
        Unit::Count,
        "Cache lookups by outcome: hit_l1, hit_l2, miss, coalesced (joined another request's miss), bypass, or stale (an expired entry served because the load failed or was slow)."
    );
    describe_counter!(
        CACHE_L2_ERRORS,
        Unit::Count,
        "Redis (L2) operations that failed or were skipped, by operation and cause; each one became a miss or a dropped write."
    );
    describe_histogram!(
        CACHE_LOOKUP_SECONDS,
        Unit::Seconds,
        "Time spent looking a key up in a tier, including pool checkout and waiting for a reconnect."
    );
    describe_gauge!(
        CACHE_L1_ENTRIES,
        Unit::Count,
        "Entries held by the in-process L1 tier."
    );
    describe_gauge!(
        CACHE_BREAKER_OPEN,
        Unit::Count,
        "1 while the L2 circuit breaker is open (Redis skipped), 0 while Redis is in use."
    );
    describe_counter!(
        CACHE_BREAKER_TRANSITIONS,
        Unit::Count,
        "Changes of the L2 circuit breaker's state, by the state entered (open, closed): flapping shows here."
    );
    describe_counter!(
        CACHE_NOT_STORED,
        Unit::Count,
        "Responses the policy allowed but that were not stored, by reason (oversized, encode)."
    );
    describe_counter!(
        CACHE_INVALIDATIONS_RECEIVED,
        Unit::Count,
        "Invalidations received from other replicas and applied to this process' L1, by kind (key, clear, tag, unknown: unreadable, taken as a clear)."
    );
    describe_counter!(
        CACHE_L1_GAP_FLUSHES,
        Unit::Count,
        "Times L1 was emptied on subscribing to the replicas' invalidation channel again, after a gap in which invalidations were missed."
    );
    describe_counter!(
        CACHE_FAIL_SAFE_ACTIVATIONS,
        Unit::Count,
        "Loads answered with an expired entry instead of their result (fail-safe), by cause: error, hard_timeout (the load was dropped), soft_timeout (it went on in the background)."
    );
    describe_counter!(
        CACHE_REFRESHES,
        Unit::Count,
        "Loads nobody waited for, by trigger (eager: a hit late in the entry's life; soft_timeout: its caller took a stale value; stale_while_revalidate: an HTTP response served within its stale-while-revalidate window) and outcome (ok, error, timeout)."
    );
}
