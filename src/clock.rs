//! Time, injectable for tests.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time source of caches and queues: the system clock, or (feature `test-util`) a
/// `MockClock` that tests move forward by hand instead of sleeping.
///
/// A cache reads it for L1 expiry and for the written-at / expires-at stamps of the stored
/// envelope. Redis keeps its own time for the key's TTL.
#[derive(Clone, Default)]
pub(crate) struct Clock {
    offset: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock (the default).
    pub(crate) fn system() -> Self {
        Self { offset: None }
    }

    #[inline]
    fn offset(&self) -> Duration {
        match &self.offset {
            None => Duration::ZERO,
            Some(nanos) => Duration::from_nanos(nanos.load(Ordering::Relaxed)),
        }
    }

    /// Monotonic now from the kernel's coarse clock, as the time since an arbitrary origin.
    /// Its resolution is the kernel's tick (1 to 4 ms on Linux); reading it costs a fifth
    /// of a precise `Instant::now()` on our VMs, where that read was the largest single
    /// cost of an L1 hit. For L1 expiry, which is read on every hit.
    #[inline]
    pub(crate) fn coarse_now(&self) -> Duration {
        let ticks = coarsetime::Instant::now_without_cache_update().as_ticks();
        Duration::from(coarsetime::Duration::from_ticks(ticks)) + self.offset()
    }

    /// Wall-clock now, in Unix milliseconds.
    pub(crate) fn unix_ms(&self) -> u64 {
        to_unix_ms(SystemTime::now() + self.offset())
    }
}

/// `time` in Unix milliseconds (0 before the epoch, saturating far after it): the unit of
/// every timestamp this crate stores.
pub(crate) fn to_unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `SystemTime` of Unix milliseconds `ms`.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.offset {
            None => f.pad("Clock::System"),
            Some(_) => write!(f, "Clock::Mock(+{:?})", self.offset()),
        }
    }
}

/// A clock for tests (feature `test-util`): it runs with the system clock, plus whatever
/// [`advance`] added.
///
/// One time model for caches and queues: hand the same `MockClock` to their builders'
/// `clock` setters and move it forward instead of sleeping. (Tokio's paused clock is no
/// substitute here: it jumps ahead whenever the runtime idles, which fires the Redis time
/// budgets of tests that talk to a real server at once.)
///
/// ```
/// use std::time::Duration;
/// use layercake::{Cache, MockClock};
///
/// let clock = MockClock::new();
/// let cache = Cache::<String>::builder("demo").clock(clock.clone()).build().unwrap();
/// clock.advance(Duration::from_secs(3600)); // every entry of `cache` is now an hour older
/// # drop(cache);
/// ```
///
/// [`advance`]: MockClock::advance
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Clone, Debug, Default)]
pub struct MockClock {
    offset: Arc<AtomicU64>,
}

#[cfg(any(test, feature = "test-util"))]
impl MockClock {
    /// A mock clock that starts at the system time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl From<MockClock> for Clock {
    fn from(mock: MockClock) -> Self {
        Clock {
            offset: Some(mock.offset),
        }
    }
}
