//! Counters behind `Cache::stats()` and the `layercake_cache_*` metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use serde::Serialize;

use crate::metrics::{
    CACHE_BREAKER_OPEN, CACHE_BREAKER_TRANSITIONS, CACHE_FAIL_SAFE_ACTIVATIONS,
    CACHE_INVALIDATIONS_RECEIVED, CACHE_L1_ENTRIES, CACHE_L1_GAP_FLUSHES, CACHE_L2_ERRORS,
    CACHE_LOOKUP_SECONDS, CACHE_NOT_STORED, CACHE_REFRESHES, CACHE_REQUESTS,
};

/// Why an L2 (Redis) operation failed or was skipped. Each one is a miss (reads) or a
/// dropped write, never an error returned to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L2Cause {
    /// The operation did not finish within its time budget.
    Timeout,
    /// The connection failed, was refused or was dropped.
    Io,
    /// Redis answered with an error (OOM, READONLY, NOAUTH, ...).
    Server,
    /// The stored bytes were not a value this cache can read (corrupt, unknown envelope
    /// version, another Redis type); the entry was removed.
    Decode,
    /// The value was larger than `max_entry_size`.
    Oversized,
    /// The circuit breaker was open (or Redis was not connected), so L2 was skipped.
    BreakerOpen,
    /// Too many L2 operations were already in flight, so L2 was skipped.
    Bulkhead,
    /// The background writer's queue was full, so the write was dropped.
    Dropped,
}

impl L2Cause {
    pub(crate) const ALL: [L2Cause; 8] = [
        L2Cause::Timeout,
        L2Cause::Io,
        L2Cause::Server,
        L2Cause::Decode,
        L2Cause::Oversized,
        L2Cause::BreakerOpen,
        L2Cause::Bulkhead,
        L2Cause::Dropped,
    ];

    /// The value of the metric label `cause`.
    pub fn as_str(self) -> &'static str {
        match self {
            L2Cause::Timeout => "timeout",
            L2Cause::Io => "io",
            L2Cause::Server => "server",
            L2Cause::Decode => "decode",
            L2Cause::Oversized => "oversized",
            L2Cause::BreakerOpen => "breaker_open",
            L2Cause::Bulkhead => "bulkhead",
            L2Cause::Dropped => "dropped",
        }
    }
}

/// An L2 operation, the value of the metric label `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L2Op {
    Get = 0,
    Set = 1,
    Del = 2,
}

impl L2Op {
    const ALL: [L2Op; 3] = [L2Op::Get, L2Op::Set, L2Op::Del];

    fn as_str(self) -> &'static str {
        match self {
            L2Op::Get => "get",
            L2Op::Set => "set",
            L2Op::Del => "del",
        }
    }
}

/// An invalidation received from another replica, the value of the metric label `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// One key's.
    Key = 0,
    /// The whole cache's.
    Clear = 1,
    /// A message this build cannot read (another format version): taken as a clear.
    Unknown = 2,
    /// One tag's.
    Tag = 3,
}

impl Received {
    const ALL: [Received; 4] = [
        Received::Key,
        Received::Clear,
        Received::Unknown,
        Received::Tag,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Received::Key => "key",
            Received::Clear => "clear",
            Received::Unknown => "unknown",
            Received::Tag => "tag",
        }
    }
}

/// Why a fallback (an expired entry) was served instead of a load's result, the value of
/// the metric label `cause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailSafe {
    /// The load failed.
    Error = 0,
    /// The load took longer than `hard_timeout`, and was dropped.
    HardTimeout = 1,
    /// The load took longer than `soft_timeout`, and went on in the background.
    SoftTimeout = 2,
}

impl FailSafe {
    const ALL: [FailSafe; 3] = [
        FailSafe::Error,
        FailSafe::HardTimeout,
        FailSafe::SoftTimeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FailSafe::Error => "error",
            FailSafe::HardTimeout => "hard_timeout",
            FailSafe::SoftTimeout => "soft_timeout",
        }
    }
}

/// What started a load nobody waits for, the value of the metric label `trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A hit past the eager-refresh point.
    Eager = 0,
    /// A load whose caller took a fallback at its soft timeout.
    SoftTimeout = 1,
    /// An HTTP response served within its `stale-while-revalidate` window, revalidated in
    /// the background.
    StaleWhileRevalidate = 2,
}

/// How a background load ended, the value of the metric label `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refreshed {
    Ok = 0,
    Error = 1,
    Timeout = 2,
}

impl Trigger {
    const ALL: [Trigger; 3] = [
        Trigger::Eager,
        Trigger::SoftTimeout,
        Trigger::StaleWhileRevalidate,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Trigger::Eager => "eager",
            Trigger::SoftTimeout => "soft_timeout",
            Trigger::StaleWhileRevalidate => "stale_while_revalidate",
        }
    }
}

impl Refreshed {
    const ALL: [Refreshed; 3] = [Refreshed::Ok, Refreshed::Error, Refreshed::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Refreshed::Ok => "ok",
            Refreshed::Error => "error",
            Refreshed::Timeout => "timeout",
        }
    }
}

/// A count kept both locally (for `stats()`) and in the metrics recorder.
#[derive(Debug)]
struct Tally {
    local: AtomicU64,
    metric: Counter,
}

impl Tally {
    fn new(metric: Counter) -> Self {
        Self {
            local: AtomicU64::new(0),
            metric,
        }
    }

    #[inline]
    fn inc(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
        self.metric.increment(1);
    }

    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// Every instrument of one cache, registered once when the cache is built.
#[derive(Debug)]
pub(crate) struct Instruments {
    hit_l1: Tally,
    hit_l2: Tally,
    miss: Tally,
    coalesced: Tally,
    bypass: Tally,
    stale: Tally,
    fail_safe: Vec<Tally>, // by `FailSafe`
    refreshes: Vec<Tally>, // [trigger][outcome], flattened
    l2_errors: Vec<Tally>, // [op][cause], flattened
    not_stored_oversized: Tally,
    not_stored_encode: Tally,
    lookup_l2: Histogram,
    l1_entries: Gauge,
    breaker_open: Gauge,
    /// The breaker's last state, so that only changes are counted.
    breaker_was_open: std::sync::atomic::AtomicBool,
    to_open: Counter,
    to_closed: Counter,
    received: Vec<Tally>, // by `Received`
    l1_gap_flushes: Tally,
    subscribed: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    HitL1,
    HitL2,
    Miss,
    Coalesced,
    Bypass,
    /// An expired entry served as a fallback (fail-safe).
    Stale,
}

impl Outcome {
    /// The value of the metric label `result`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::HitL1 => "hit_l1",
            Outcome::HitL2 => "hit_l2",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
            Outcome::Stale => "stale",
        }
    }
}

impl Instruments {
    pub(crate) fn new(cache: &str) -> Self {
        let name = cache.to_owned();
        let req = |result: &'static str| {
            Tally::new(counter!(CACHE_REQUESTS, "cache" => name.clone(), "result" => result))
        };
        let mut l2_errors = Vec::with_capacity(L2Op::ALL.len() * L2Cause::ALL.len());
        for op in L2Op::ALL {
            for cause in L2Cause::ALL {
                l2_errors.push(Tally::new(counter!(
                    CACHE_L2_ERRORS,
                    "cache" => name.clone(),
                    "op" => op.as_str(),
                    "cause" => cause.as_str()
                )));
            }
        }
        let not_stored = |reason: &'static str| {
            Tally::new(counter!(CACHE_NOT_STORED, "cache" => name.clone(), "reason" => reason))
        };
        Self {
            hit_l1: req(Outcome::HitL1.as_str()),
            hit_l2: req(Outcome::HitL2.as_str()),
            miss: req(Outcome::Miss.as_str()),
            coalesced: req(Outcome::Coalesced.as_str()),
            bypass: req(Outcome::Bypass.as_str()),
            stale: req(Outcome::Stale.as_str()),
            fail_safe: FailSafe::ALL
                .iter()
                .map(|cause| {
                    Tally::new(counter!(
                        CACHE_FAIL_SAFE_ACTIVATIONS,
                        "cache" => name.clone(),
                        "cause" => cause.as_str()
                    ))
                })
                .collect(),
            refreshes: Trigger::ALL
                .iter()
                .flat_map(|trigger| {
                    Refreshed::ALL
                        .iter()
                        .map(move |outcome| (*trigger, *outcome))
                })
                .map(|(trigger, outcome)| {
                    Tally::new(counter!(
                        CACHE_REFRESHES,
                        "cache" => name.clone(),
                        "trigger" => trigger.as_str(),
                        "outcome" => outcome.as_str()
                    ))
                })
                .collect(),
            l2_errors,
            not_stored_oversized: not_stored("oversized"),
            not_stored_encode: not_stored("encode"),
            lookup_l2: histogram!(CACHE_LOOKUP_SECONDS, "cache" => name.clone(), "tier" => "l2"),
            l1_entries: gauge!(CACHE_L1_ENTRIES, "cache" => name.clone()),
            breaker_open: gauge!(CACHE_BREAKER_OPEN, "cache" => name.clone()),
            breaker_was_open: std::sync::atomic::AtomicBool::new(false),
            to_open: counter!(CACHE_BREAKER_TRANSITIONS, "cache" => name.clone(), "to" => "open"),
            to_closed: counter!(CACHE_BREAKER_TRANSITIONS, "cache" => name.clone(), "to" => "closed"),
            received: Received::ALL
                .iter()
                .map(|kind| {
                    Tally::new(counter!(
                        CACHE_INVALIDATIONS_RECEIVED,
                        "cache" => name.clone(),
                        "kind" => kind.as_str()
                    ))
                })
                .collect(),
            l1_gap_flushes: Tally::new(counter!(CACHE_L1_GAP_FLUSHES, "cache" => name)),
            subscribed: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::HitL1 => self.hit_l1.inc(),
            Outcome::HitL2 => self.hit_l2.inc(),
            Outcome::Miss => self.miss.inc(),
            Outcome::Coalesced => self.coalesced.inc(),
            Outcome::Bypass => self.bypass.inc(),
            Outcome::Stale => self.stale.inc(),
        }
    }

    /// A fallback was served instead of a load's result.
    pub(crate) fn fail_safe(&self, cause: FailSafe) {
        self.fail_safe[cause as usize].inc();
    }

    /// A load nobody waited for ended.
    pub(crate) fn refreshed(&self, trigger: Trigger, outcome: Refreshed) {
        self.refreshes[trigger as usize * Refreshed::ALL.len() + outcome as usize].inc();
    }

    fn l2_tally(&self, op: L2Op, cause: L2Cause) -> &Tally {
        let c = L2Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
        &self.l2_errors[op as usize * L2Cause::ALL.len() + c]
    }

    pub(crate) fn l2_error(&self, op: L2Op, cause: L2Cause) {
        self.l2_tally(op, cause).inc();
    }

    pub(crate) fn not_stored_oversized(&self) {
        self.not_stored_oversized.inc();
    }

    pub(crate) fn not_stored_encode(&self) {
        self.not_stored_encode.inc();
    }

    pub(crate) fn l2_lookup(&self, took: Duration) {
        self.lookup_l2.record(took.as_secs_f64());
    }

    pub(crate) fn set_l1_entries(&self, n: usize) {
        self.l1_entries.set(n as f64);
    }

    /// Sets the breaker gauge, and counts a transition when the state changed (so that
    /// flapping shows, which a 0/1 gauge sampled by a scrape hides).
    pub(crate) fn set_breaker_open(&self, open: bool) {
        self.breaker_open.set(if open { 1.0 } else { 0.0 });
        if self.breaker_was_open.swap(open, Ordering::AcqRel) != open {
            if open {
                self.to_open.increment(1);
            } else {
                self.to_closed.increment(1);
            }
        }
    }

    /// Another replica's invalidation was applied to L1.
    pub(crate) fn received(&self, kind: Received) {
        self.received[kind as usize].inc();
    }

    /// L1 was emptied on (re)subscribing, after a time in which invalidations were missed.
    pub(crate) fn l1_gap_flush(&self) {
        self.l1_gap_flushes.inc();
    }

    pub(crate) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, l1_entries: u64, l2: L2State) -> CacheStats {
        let cause = |cause: L2Cause| -> u64 {
            L2Op::ALL
                .iter()
                .map(|op| self.l2_tally(*op, cause).get())
                .sum()
        };
        CacheStats {
            hits_l1: self.hit_l1.get(),
            hits_l2: self.hit_l2.get(),
            misses: self.miss.get(),
            coalesced: self.coalesced.get(),
            bypassed: self.bypass.get(),
            stale: self.stale.get(),
            fail_safe_activations: self.fail_safe.iter().map(Tally::get).sum(),
            refreshes: Trigger::ALL
                .iter()
                .map(|t| self.refreshes[*t as usize * Refreshed::ALL.len()].get())
                .sum(),
            refresh_failures: self
                .refreshes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % Refreshed::ALL.len() != Refreshed::Ok as usize)
                .map(|(_, t)| t.get())
                .sum(),
            not_stored: self.not_stored_oversized.get() + self.not_stored_encode.get(),
            l1_entries,
            l2,
            l2_errors: L2Errors {
                timeout: cause(L2Cause::Timeout),
                io: cause(L2Cause::Io),
                server: cause(L2Cause::Server),
                decode: cause(L2Cause::Decode),
                oversized: cause(L2Cause::Oversized),
                breaker_open: cause(L2Cause::BreakerOpen),
                bulkhead: cause(L2Cause::Bulkhead),
                dropped: cause(L2Cause::Dropped),
            },
            invalidations_received: self.received.iter().map(Tally::get).sum(),
            l1_gap_flushes: self.l1_gap_flushes.get(),
            invalidations_subscribed: self.subscribed.load(Ordering::Relaxed),
        }
    }
}

/// The state of a cache's Redis tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum L2State {
    /// No Redis URL was configured: the cache is L1-only.
    Disabled,
    /// Connecting for the first time.
    Connecting,
    /// Connected; reads and writes go to Redis.
    Connected,
    /// Redis is unreachable or failing: the breaker is open and L2 is skipped until a
    /// background probe reconnects.
    BreakerOpen,
}

/// L2 failures by cause, summed over reads, writes and deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct L2Errors {
    /// See [`L2Cause::Timeout`].
    pub timeout: u64,
    /// See [`L2Cause::Io`].
    pub io: u64,
    /// See [`L2Cause::Server`].
    pub server: u64,
    /// See [`L2Cause::Decode`].
    pub decode: u64,
    /// See [`L2Cause::Oversized`].
    pub oversized: u64,
    /// See [`L2Cause::BreakerOpen`].
    pub breaker_open: u64,
    /// See [`L2Cause::Bulkhead`].
    pub bulkhead: u64,
    /// See [`L2Cause::Dropped`].
    pub dropped: u64,
}

impl L2Errors {
    /// The count for one cause.
    pub fn get(&self, cause: L2Cause) -> u64 {
        match cause {
            L2Cause::Timeout => self.timeout,
            L2Cause::Io => self.io,
            L2Cause::Server => self.server,
            L2Cause::Decode => self.decode,
            L2Cause::Oversized => self.oversized,
            L2Cause::BreakerOpen => self.breaker_open,
            L2Cause::Bulkhead => self.bulkhead,
            L2Cause::Dropped => self.dropped,
        }
    }

    /// All causes added up.
    pub fn total(&self) -> u64 {
        L2Cause::ALL.iter().map(|c| self.get(*c)).sum()
    }
}

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
///
/// Counts start at zero when the cache is built and are shared by every clone of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered from the in-process tier.
    pub hits_l1: u64,
    /// Requests answered from Redis.
    pub hits_l2: u64,
    /// Requests that called the inner service because no tier had the key.
    pub misses: u64,
    /// Requests that waited for another request's miss on the same key and shared its result.
    pub coalesced: u64,
    /// Requests that bypassed the cache (no key, or caching switched off).
    pub bypassed: u64,
    /// Requests answered with an expired entry because the load failed or was slow
    /// (fail-safe, see [`fail_safe_max_duration`](crate::CacheBuilder::fail_safe_max_duration)),
    /// including those answered from it during the fail-safe throttle.
    pub stale: u64,
    /// Loads whose failure or slowness was answered with an expired entry (at most one per
    /// key per [`fail_safe_throttle`](crate::CacheBuilder::fail_safe_throttle) while the
    /// backend keeps failing).
    pub fail_safe_activations: u64,
    /// Loads nobody waited for (an eager refresh, or a load that went on past its soft
    /// timeout) that completed.
    pub refreshes: u64,
    /// Loads nobody waited for that failed or ran out of time (`hard_timeout`).
    pub refresh_failures: u64,
    /// Responses the policy allowed that were not stored (too large, or failed to encode).
    pub not_stored: u64,
    /// Entries in L1 now (approximate while other threads write).
    pub l1_entries: u64,
    /// The Redis tier's state.
    pub l2: L2State,
    /// L2 failures by cause.
    pub l2_errors: L2Errors,
    /// Invalidations (of a key, or a clear) received from other replicas and applied to L1
    /// (see [`replica_invalidation`](crate::CacheBuilder::replica_invalidation)).
    pub invalidations_received: u64,
    /// Times L1 was emptied on subscribing to the replicas' invalidations again, after a
    /// time in which their messages were missed.
    pub l1_gap_flushes: u64,
    /// Whether this cache is subscribed to the other replicas' invalidations now: false
    /// while (re)connecting, with replica invalidation off, or without L1 or Redis.
    pub invalidations_subscribed: bool,
}

impl CacheStats {
    /// Hits (both tiers, and coalesced requests) over all cacheable requests; 0 when there
    /// were none.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.hits_l1 + self.hits_l2 + self.coalesced;
        let all = hits + self.misses;
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }

    /// Whether Redis is connected and in use.
    pub fn l2_connected(&self) -> bool {
        self.l2 == L2State::Connected
    }

    /// Whether the L2 circuit breaker is open.
    pub fn breaker_open(&self) -> bool {
        self.l2 == L2State::BreakerOpen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_counts_all_hits() {
        let i = Instruments::new("t");
        assert_eq!(i.snapshot(0, L2State::Disabled).hit_rate(), 0.0);
        i.outcome(Outcome::HitL1);
        i.outcome(Outcome::HitL2);
        i.outcome(Outcome::Coalesced);
        i.outcome(Outcome::Miss);
        i.outcome(Outcome::Bypass);
        let s = i.snapshot(0, L2State::Disabled);
        assert_eq!(s.hit_rate(), 0.75);
        i.l2_error(L2Op::Set, L2Cause::Dropped);
        i.l2_error(L2Op::Get, L2Cause::Dropped);
        assert_eq!(i.snapshot(0, L2State::Disabled).l2_errors.dropped, 2);
    }
}
