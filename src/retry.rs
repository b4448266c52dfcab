//! How a waiting call retries: the policy a manager is built with.

use std::time::Duration;

/// How [`Redlock::acquire`](crate::Redlock::acquire) retries a failed attempt. Each retry is a whole
/// new attempt with a new token and a new start time.
///
/// The wait before a retry is `delay` plus a random share of `jitter`, so
/// clients that failed together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use quorumlock::RetryPolicy;
///
/// // Up to 50 attempts, 20–30 ms apart, giving up after 2 s in all.
/// let patient = RetryPolicy::new()
///     .attempts(50)
///     .delay(Duration::from_millis(20))
///     .jitter(Duration::from_millis(10))
///     .max_wait(Some(Duration::from_secs(2)));
/// assert_ne!(patient, RetryPolicy::none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    delay: Duration,
    jitter: Duration,
    max_wait: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 10,
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(100),
            max_wait: None,
        }
    }
}

impl RetryPolicy {
    /// The default policy: 10 attempts, 100 ms delay, up to 100 ms jitter,
    /// no overall limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A single attempt: `acquire` behaves like `try_acquire`.
    pub fn none() -> Self {
        Self::default().attempts(1)
    }

    /// Attempts in total, including the first. Default: 10. Zero is read as 1.
    ///
    /// A quick retry after a contest (racing clients each won some nodes and
    /// none a quorum; it follows within a few milliseconds) is not counted,
    /// for the first few contests in a row: see the README's Operations
    /// section. The [`max_wait`](Self::max_wait) limit counts everything.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Fixed wait between attempts. Default: 100 ms.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Upper bound of the random extra wait added to `delay`. Default: 100 ms.
    #[must_use]
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Overall limit on the time `acquire` may spend, attempts and waits
    /// included. The whole limit is waited through: the wait before the
    /// next attempt is cut short at the limit, where one last attempt goes
    /// out, and no attempt starts after it. `acquire` thus returns within
    /// the limit plus one attempt. Default: none (only `attempts` limits
    /// it).
    #[must_use]
    pub fn max_wait(mut self, max_wait: Option<Duration>) -> Self {
        self.max_wait = max_wait;
        self
    }

    pub(crate) fn jitter_limit(&self) -> Duration {
        self.jitter
    }

    pub(crate) fn fixed_delay(&self) -> Duration {
        self.delay
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn limit(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The wait before the next attempt, jitter included.
    pub(crate) fn backoff(&self) -> Duration {
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 {
            0
        } else {
            rand::random_range(0..=jitter_ns)
        };
        self.delay.saturating_add(Duration::from_nanos(extra))
    }
}
