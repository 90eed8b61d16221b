//! How long a failed job waits before its next attempt.

use std::time::Duration;

/// The wait before a failed job's next attempt.
///
/// With jitter (the default), each delay is drawn uniformly from its upper half
/// (`[d/2, d]`), so that jobs that failed together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use layercake::queue::Backoff;
///
/// // 200 ms, 400 ms, 800 ms, ... up to 30 s, each with jitter.
/// let backoff = Backoff::exponential(Duration::from_millis(200)).max_delay(Duration::from_secs(30));
/// # let _ = backoff;
/// // Always 1 s.
/// let steady = Backoff::fixed(Duration::from_secs(1)).without_jitter();
/// # let _ = steady;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    exponential: bool,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// `base` after the first failed attempt, doubling after each further one, up to
    /// [`max_delay`](Self::max_delay) (one minute unless set).
    pub fn exponential(base: Duration) -> Self {
        Self {
            base,
            exponential: true,
            max: Duration::from_secs(60),
            jitter: true,
        }
    }

    /// The same `delay` after every failed attempt.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            base: delay,
            exponential: false,
            max: delay,
            jitter: true,
        }
    }

    /// Caps each delay.
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Uses the computed delays exactly.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The delay after the `failed`-th attempt failed (`failed >= 1`).
    pub(crate) fn delay(&self, failed: u32) -> Duration {
        let delay = if self.exponential {
            let doublings = failed.saturating_sub(1).min(31);
            self.base.saturating_mul(1 << doublings).min(self.max)
        } else {
            self.base.min(self.max)
        };
        if self.jitter && !delay.is_zero() {
            let half = delay / 2;
            let spread = u64::try_from((delay - half).as_nanos()).unwrap_or(u64::MAX);
            half + Duration::from_nanos(fastrand::u64(..=spread))
        } else {
            delay
        }
    }
}

impl Default for Backoff {
    /// Exponential from 200 ms, up to one minute, with jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let b = Backoff::exponential(Duration::from_millis(100))
            .max_delay(Duration::from_millis(350))
            .without_jitter();
        let delays: Vec<_> = (1..=4).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        // No overflow far out.
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(350));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::fixed(Duration::from_millis(100));
        for _ in 0..1000 {
            let d = b.delay(1);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
