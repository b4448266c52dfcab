//! Time a process spent suspended. `Instant` (CLOCK_MONOTONIC on Linux)
//! stops while the host or VM sleeps, but a lock's keys expire on the
//! nodes' clocks, which do not: after a resume, a deadline read on the
//! monotonic clock is later than the keys' real expiry by the length of the
//! sleep. CLOCK_BOOTTIME runs on through a suspend, so the gap between the
//! two clocks grows by exactly the time slept; a lock subtracts what it
//! grew by since the lock's deadline was set. Elsewhere the gap reads as
//! zero (no suspend is seen).

use std::time::Duration;

/// Time suspended since boot (CLOCK_BOOTTIME less CLOCK_MONOTONIC), to be
/// compared with an earlier reading.
#[cfg(target_os = "linux")]
pub(crate) fn suspended() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    let read = |clock| {
        clock_gettime(clock)
            .ok()
            .and_then(|t| {
                let secs = u64::try_from(t.tv_sec()).ok()?;
                let nanos = u32::try_from(t.tv_nsec()).ok()?;
                Some(Duration::new(secs, nanos))
            })
            .unwrap_or_default()
    };
    // Monotonic first: a suspend between the two readings then counts.
    let monotonic = read(ClockId::CLOCK_MONOTONIC);
    read(ClockId::CLOCK_BOOTTIME).saturating_sub(monotonic)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn suspended() -> Duration {
    Duration::ZERO
}

/// Time slept since `base` (an earlier [`suspended`]), ignoring the few
/// microseconds the two clock readings can differ by.
pub(crate) fn slept_since(base: Duration) -> Duration {
    let slept = suspended().saturating_sub(base);
    if slept < NOISE {
        Duration::ZERO
    } else {
        slept
    }
}

/// Below this, a growing gap is the two readings' own jitter.
const NOISE: Duration = Duration::from_micros(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_suspend_reads_as_none() {
        let base = suspended();
        assert_eq!(slept_since(base), Duration::ZERO);
    }
}
