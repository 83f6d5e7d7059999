//! Wall-clock time in milliseconds since the Unix epoch, with a manual variant for tests.
//!
//! The store persists wall-clock time (not `Instant`) because expiry must survive restarts.
//! A clock that steps backwards never makes time run backwards for the store: the store keeps a
//! high-water mark (persisted with every commit) and never uses a time below it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub(crate) type Millis = u64;

/// Converts a store timestamp to `SystemTime`.
pub(crate) fn to_system_time(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Converts a duration to milliseconds, saturating; rounds up so a non-zero duration stays
/// non-zero.
pub(crate) fn duration_ms(d: Duration) -> Millis {
    let ms = d.as_millis();
    let ms = if Duration::from_millis(ms as u64) < d {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Where the store reads the time from.
#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// A clock that moves only when told to.
    #[cfg_attr(
        not(feature = "test-util"),
        allow(dead_code, reason = "set only through the test-util feature")
    )]
    Manual(ManualClock),
}

impl Clock {
    pub(crate) fn now_ms(&self) -> Millis {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            Clock::Manual(m) => m.now_ms(),
        }
    }
}

/// A clock for tests and examples that moves only when told to (`test-util` feature).
///
/// Clones share the same time, so a test keeps one clone and hands another to the store.
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use idemstore::ManualClock;
/// use std::time::Duration;
/// let clock = ManualClock::new(1_700_000_000_000);
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now_ms(), 1_700_000_060_000);
/// # }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(
    not(feature = "test-util"),
    allow(
        dead_code,
        reason = "constructed only through the test-util feature and unit tests"
    )
)]
pub struct ManualClock(Arc<AtomicU64>);

#[cfg_attr(
    not(feature = "test-util"),
    allow(
        dead_code,
        reason = "constructed only through the test-util feature and unit tests"
    )
)]
impl ManualClock {
    /// A clock standing at `start_ms` milliseconds since the Unix epoch.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_ms(by), Ordering::SeqCst);
    }

    /// Sets the clock to `ms`, forwards or backwards (to test a clock that steps back).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

/// The store's view of time: the clock, never below the high-water mark.
#[derive(Debug)]
pub(crate) struct StoreTime {
    clock: Clock,
    high_water: AtomicU64,
}

impl StoreTime {
    pub(crate) fn new(clock: Clock, persisted_high_water: Millis) -> Self {
        StoreTime {
            clock,
            high_water: AtomicU64::new(persisted_high_water),
        }
    }

    /// The current time: the clock, or the highest time already used if the clock stepped back.
    pub(crate) fn now(&self) -> Millis {
        let t = self.clock.now_ms();
        // Read first: most calls (every claim loser) find the mark already there, and a plain
        // load keeps the shared cache line clean instead of writing it on every call.
        let seen = self.high_water.load(Ordering::Acquire);
        if t <= seen {
            return seen;
        }
        self.high_water.fetch_max(t, Ordering::AcqRel).max(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_rounds_up() {
        assert_eq!(duration_ms(Duration::from_micros(1)), 1);
        assert_eq!(duration_ms(Duration::from_millis(5)), 5);
        assert_eq!(duration_ms(Duration::from_micros(5_001)), 6);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn store_time_never_goes_back() {
        let m = ManualClock::new(10_000);
        let t = StoreTime::new(Clock::Manual(m.clone()), 0);
        assert_eq!(t.now(), 10_000);
        m.set_ms(5_000);
        assert_eq!(t.now(), 10_000);
        m.set_ms(12_000);
        assert_eq!(t.now(), 12_000);
        let persisted = StoreTime::new(Clock::Manual(ManualClock::new(1_000)), 9_000);
        assert_eq!(persisted.now(), 9_000);
    }
}
