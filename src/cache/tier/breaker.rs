//! When the L2 breaker opens: the share of failures over a short window, not a count of
//! failures in a row.
//!
//! A count in a row misreads a saturated process as a sick Redis. With hundreds of reads
//! in flight on one multiplexed connection, one stall of the process (or a burst queued
//! behind one slow reply) makes every read in flight miss its budget at once: five
//! "consecutive" timeouts, on a Redis that answers every other read in a millisecond. A
//! black-box run on a busy 2-core box tripped the breaker twice that way (70 timeouts
//! among about 5,000 reads a second), throwing away a healthy L2 for a probe interval.
//!
//! So the breaker opens when, within the current window, at least `threshold` operations
//! failed **and** failures are at least half of the operations: a Redis that is down,
//! blackholed or slower than the budget fails nearly all of them (and with little
//! traffic, `threshold` failures and no success still open it, as before), while a burst
//! of timeouts among many successes does not. A dead connection still trips the link at
//! once (the owner checks that before asking this).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// How long one window lasts, in milliseconds.
pub(crate) const WINDOW_MS: u64 = 1_000;

/// Successes and connection failures of the current window.
#[derive(Debug, Default)]
pub(crate) struct FailureWindow {
    /// When the current window began (ms on the owner's monotonic clock).
    started_ms: AtomicU64,
    ok: AtomicU32,
    failed: AtomicU32,
    /// Serializes the reset of a window that ended (rare: once a window, at most).
    reset: Mutex<()>,
}

impl FailureWindow {
    /// Starts a new window if the current one ended at `now_ms`.
    fn roll(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.started_ms.load(Ordering::Acquire)) < WINDOW_MS {
            return;
        }
        let _reset = self
            .reset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now_ms.saturating_sub(self.started_ms.load(Ordering::Acquire)) >= WINDOW_MS {
            self.ok.store(0, Ordering::Relaxed);
            self.failed.store(0, Ordering::Relaxed);
            self.started_ms.store(now_ms, Ordering::Release);
        }
    }

    /// Counts a success.
    pub(crate) fn succeeded(&self, now_ms: u64) {
        self.roll(now_ms);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection failure (a timeout, an I/O error) and says whether the breaker
    /// should open: `threshold` failures or more in this window, and no fewer failures
    /// than successes.
    pub(crate) fn failed(&self, now_ms: u64, threshold: u32) -> bool {
        self.roll(now_ms);
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        failed >= threshold && failed >= self.ok.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_with_no_successes_open_it_at_the_threshold() {
        let window = FailureWindow::default();
        let opened: Vec<bool> = (0..5).map(|i| window.failed(10 + i, 5)).collect();
        assert_eq!(opened, [false, false, false, false, true]);
    }

    #[test]
    fn a_burst_of_timeouts_among_many_successes_does_not_open_it() {
        // The saturation run: ~5,000 reads a second, 70 timeouts in bursts of 10.
        let window = FailureWindow::default();
        let mut opened = false;
        for ms in 0..1_000u64 {
            for _ in 0..5 {
                window.succeeded(ms);
            }
            if ms % 140 == 70 {
                for _ in 0..10 {
                    opened |= window.failed(ms, 5);
                }
            }
        }
        assert!(!opened, "a healthy, saturated Redis keeps its L2");
    }

    #[test]
    fn a_redis_that_starts_failing_after_a_busy_spell_opens_it_in_the_next_window() {
        let window = FailureWindow::default();
        for ms in 0..900 {
            window.succeeded(ms);
        }
        // Down from 900 ms: within the busy window the successes outnumber the failures...
        let mut ms = 900;
        while ms < 1_000 {
            assert!(!window.failed(ms, 5), "{ms}");
            ms += 10;
        }
        // ...and in the next window every operation fails.
        let opened: Vec<bool> = (0..5).map(|i| window.failed(1_000 + i, 5)).collect();
        assert_eq!(opened, [false, false, false, false, true]);
    }
}
