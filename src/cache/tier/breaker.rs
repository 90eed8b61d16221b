//! When the L2 breaker opens: failures in a row that span time, not a burst of failures
//! at one moment.
//!
//! A plain count in a row misreads a saturated process as a sick Redis. With hundreds of
//! reads in flight on one multiplexed connection, one stall of the process (or a burst
//! queued behind one slow reply) makes every read in flight miss its budget at once:
//! "five timeouts in a row" on a Redis that answers every other read in a millisecond. A
//! black-box run on a busy 2-core box tripped the breaker twice that way (70 timeouts
//! among about 5,000 reads a second), throwing away a healthy L2 for a probe interval.
//!
//! So the breaker opens when at least `threshold` operations failed with no success
//! between them **and** the run has lasted at least `min_span` (the read budget) from its
//! first failure: reads that all time out at the same moment are one event, while a Redis
//! that is down, blackholed or slower than the budget keeps failing reads that start after
//! the first one timed out, and opens it one budget later. A success ends the run. A dead
//! connection still trips the link at once (the owner checks that before asking this).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The current run of failures with no success between them.
#[derive(Debug, Default)]
pub(crate) struct FailureRun {
    failed: AtomicU32,
    /// When the run's first failure was counted (ms on the owner's monotonic clock).
    first_ms: AtomicU64,
}

impl FailureRun {
    /// Counts a success: the run ends.
    pub(crate) fn succeeded(&self) {
        // Read first: a store on every success would bounce the cache line between cores.
        if self.failed.load(Ordering::Relaxed) != 0 {
            self.failed.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connection failure (a timeout, an I/O error) at `now_ms` and says whether
    /// the breaker should open: `threshold` failures in a row or more, the first of them
    /// at least `min_span_ms` ago.
    pub(crate) fn failed(&self, now_ms: u64, threshold: u32, min_span_ms: u64) -> bool {
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if failed == 1 {
            self.first_ms.store(now_ms, Ordering::Relaxed);
            return threshold <= 1 && min_span_ms == 0;
        }
        let span = now_ms.saturating_sub(self.first_ms.load(Ordering::Relaxed));
        failed >= threshold && span >= min_span_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET_MS: u64 = 50;

    #[test]
    fn failures_one_budget_apart_open_it_at_the_threshold() {
        // A blackholed Redis under little traffic: each read waits out its budget.
        let run = FailureRun::default();
        let opened: Vec<bool> = (0..5)
            .map(|i| run.failed(1_000 + i * BUDGET_MS, 5, BUDGET_MS))
            .collect();
        assert_eq!(opened, [false, false, false, false, true]);
    }

    #[test]
    fn a_burst_of_timeouts_among_many_successes_does_not_open_it() {
        // The saturation run: ~5,000 reads a second, 70 timeouts in bursts of 10, each
        // burst at one moment (the reads in flight when the process stalled).
        let run = FailureRun::default();
        let mut opened = false;
        for ms in 0..1_000u64 {
            for _ in 0..5 {
                run.succeeded();
            }
            if ms % 140 == 70 {
                for _ in 0..10 {
                    opened |= run.failed(ms, 5, BUDGET_MS);
                }
            }
        }
        assert!(!opened, "a healthy, saturated Redis keeps its L2");
    }

    #[test]
    fn a_burst_that_goes_on_failing_opens_it_one_budget_later() {
        // A busy process whose Redis went away: 64 reads in flight fail together, and the
        // reads after them keep failing.
        let run = FailureRun::default();
        for _ in 0..64 {
            assert!(!run.failed(2_000, 5, BUDGET_MS));
        }
        assert!(!run.failed(2_000 + BUDGET_MS - 1, 5, BUDGET_MS));
        assert!(run.failed(2_000 + BUDGET_MS, 5, BUDGET_MS));
    }

    #[test]
    fn a_success_ends_the_run() {
        let run = FailureRun::default();
        for i in 0..4 {
            assert!(!run.failed(i * BUDGET_MS, 5, BUDGET_MS));
        }
        run.succeeded();
        assert!(
            !run.failed(10 * BUDGET_MS, 5, BUDGET_MS),
            "a new run of one"
        );
    }
}
