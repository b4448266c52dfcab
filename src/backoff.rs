//! Jittered, capped backoff for every reconnect path, so that no fault (a
//! refused connection, a refused login, a refused SUBSCRIBE) ever turns into
//! a flood of connections. Pure: the schedule is unit-tested without I/O.

use std::time::Duration;

/// Wait after the first failure in a row.
const FIRST: Duration = Duration::from_millis(100);
/// Largest step; with the jitter below a wait is at most 1.5 times this.
pub(crate) const CAP: Duration = Duration::from_millis(400);

/// Consecutive failures of one connection path, and the wait they earn.
#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Records a failure; returns how long to wait before the next try:
    /// `step * (1 + jitter)`, `step` doubling from 100 ms to 400 ms and the
    /// jitter uniform in `[0, 0.5)`. Never below 100 ms, so one path opens at
    /// most 10 connections a second, and never above 600 ms, so a fixed
    /// fault (a password rotated back, an ACL granted) heals within that.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = FIRST
            .saturating_mul(1u32 << (self.failures - 1).min(8))
            .min(CAP);
        step.mul_f64(1.0 + rand::random_range(0.0..0.5))
    }

    /// A connection worked: the next failure starts the schedule again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_stay_within_ten_per_second() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..50).map(|_| b.fail()).collect();
        assert!(waits.iter().all(|w| *w >= FIRST), "{waits:?}");
        assert!(waits.iter().all(|w| *w < CAP.mul_f64(1.5)), "{waits:?}");
        assert!(waits[0] < Duration::from_millis(150), "{waits:?}");
        assert!(waits[10..].iter().all(|w| *w >= CAP), "{waits:?}");
        assert_eq!(b.failures(), 50);
        b.reset();
        assert!(b.fail() < Duration::from_millis(150));
    }

    #[test]
    fn waits_are_jittered() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..20).map(|_| b.fail()).skip(5).collect();
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "{waits:?}");
    }
}
