//! A clock for what needs the time only to the second: when a pooled connection came back
//! (for `idle_timeout_s`) and how old it is then (for `max_lifetime_s`). The real clock costs
//! a `clock_gettime` per transaction on the way back to the pool; this one is one atomic
//! load, set to the real time by the pools' maintenance pass every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time of the last [`RecentClock::tick`].
#[derive(Debug)]
pub struct RecentClock {
    base: Instant,
    /// Nanoseconds from `base` to the last tick.
    ticked: AtomicU64,
}

impl Default for RecentClock {
    fn default() -> Self {
        RecentClock {
            base: Instant::now(),
            ticked: AtomicU64::new(0),
        }
    }
}

impl RecentClock {
    /// The time at the last tick (or at creation): behind the real time by at most the
    /// interval between ticks.
    pub fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.ticked.load(Ordering::Relaxed))
    }

    /// Sets the clock to the real time (never back).
    pub fn tick(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ticked.fetch_max(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_stands_between_ticks_and_follows_the_real_one_at_each() {
        let clock = RecentClock::default();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), start);
        let before = Instant::now();
        clock.tick();
        let ticked = clock.now();
        assert!(ticked >= before && ticked <= Instant::now());
        assert!(ticked.duration_since(start) >= Duration::from_millis(5));
    }
}
