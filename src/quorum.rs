//! The quorum decision, kept free of I/O so it can be tested without Redis.
//!
//! Every lock operation (acquire, extend, release) fans a call out to all
//! nodes at once and feeds the replies, as they arrive, into a [`Tally`]. The
//! tally says when the outcome is certain; [`gather`] stops listening at that
//! point or at the per-node deadline, whichever comes first. [`validity`] turns
//! the elapsed time into the time the lock may still be trusted.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// Votes needed out of `nodes`: a strict majority. Nothing may lower it.
pub(crate) const fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// Clock drift allowance for a TTL: `ttl * factor + floor`, saturating.
pub(crate) fn drift(ttl: Duration, factor: f64, floor: Duration) -> Duration {
    let scaled = Duration::try_from_secs_f64(ttl.as_secs_f64() * factor).unwrap_or(Duration::MAX);
    scaled.saturating_add(floor)
}

/// `ttl - elapsed - drift`, or `None` when nothing is left.
pub(crate) fn validity(ttl: Duration, elapsed: Duration, drift: Duration) -> Option<Duration> {
    ttl.checked_sub(elapsed)
        .and_then(|left| left.checked_sub(drift))
        .filter(|left| !left.is_zero())
}

/// What one node said about one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// The node did what was asked (`OK`, or the script returned 1).
    Yes,
    /// The node answered and refused: the key is someone else's (or absent).
    No,
    /// The node answered with an error: not a vote, but reported.
    Failed(redis::RedisError),
    /// The node did not answer in time or could not be reached.
    Unknown(Option<redis::RedisError>),
}

/// Whether a quorum was reached, as soon as that is certain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Won,
    Lost,
}

/// Running count of replies for one fan-out to `nodes` nodes.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    nodes: usize,
    quorum: usize,
    yes: usize,
    no: usize,
    failed: usize,
    unknown: usize,
    /// Last error a node answered with (a server error reply).
    answered_error: Option<redis::RedisError>,
    /// Last error from a node that could not be reached.
    transport_error: Option<redis::RedisError>,
}

impl Tally {
    pub(crate) fn new(nodes: usize) -> Self {
        Self {
            nodes,
            quorum: quorum(nodes),
            yes: 0,
            no: 0,
            failed: 0,
            unknown: 0,
            answered_error: None,
            transport_error: None,
        }
    }

    pub(crate) fn record(&mut self, reply: Reply) {
        match reply {
            Reply::Yes => self.yes += 1,
            Reply::No => self.no += 1,
            Reply::Failed(e) => {
                self.failed += 1;
                self.answered_error = Some(e);
            }
            Reply::Unknown(e) => {
                self.unknown += 1;
                if e.is_some() {
                    self.transport_error = e;
                }
            }
        }
    }

    /// Counts every node that has not answered yet as unknown (deadline hit).
    pub(crate) fn close(&mut self) {
        self.unknown += self.pending();
    }

    pub(crate) fn pending(&self) -> usize {
        self.nodes - self.yes - self.no - self.failed - self.unknown
    }

    /// `Some` once the outcome cannot change any more.
    pub(crate) fn decision(&self) -> Option<Decision> {
        if self.yes >= self.quorum {
            Some(Decision::Won)
        } else if self.yes + self.pending() < self.quorum {
            Some(Decision::Lost)
        } else {
            None
        }
    }

    pub(crate) fn votes(&self) -> usize {
        self.yes
    }

    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    /// Nodes that answered "no".
    pub(crate) fn refused(&self) -> usize {
        self.no
    }

    /// Nodes that did not answer in time, or could not be reached.
    pub(crate) fn unknown(&self) -> usize {
        self.unknown
    }

    /// The last error a node answered with, if any did.
    pub(crate) fn answered_error(&self) -> Option<&redis::RedisError> {
        self.answered_error.as_ref()
    }

    /// The last error reaching a node, if there was one.
    pub(crate) fn transport_error(&self) -> Option<&redis::RedisError> {
        self.transport_error.as_ref()
    }
}

/// Feeds replies into `tally` until the decision is certain, the stream
/// ends, or `deadline` passes; then counts the silent nodes as unknown.
/// Replies not yet read stay in `replies` for the caller to finish.
pub(crate) async fn gather<S>(replies: &mut S, tally: &mut Tally, deadline: Instant)
where
    S: Stream<Item = Reply> + Unpin,
{
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    while tally.decision().is_none() {
        tokio::select! {
            biased;
            reply = replies.next() => match reply {
                Some(reply) => tally.record(reply),
                None => break,
            },
            () = &mut timer => break,
        }
    }
    tally.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream::FuturesUnordered;
    use std::future::Future;
    use std::pin::Pin;

    #[test]
    fn quorum_is_a_strict_majority() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 6, 7].map(quorum).to_vec();
        assert_eq!(got, [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn drift_is_one_percent_plus_floor() {
        let d = drift(Duration::from_secs(10), 0.01, Duration::from_millis(2));
        assert_eq!(d, Duration::from_millis(102));
        assert_eq!(
            drift(Duration::MAX, 2.0, Duration::from_secs(1)),
            Duration::MAX
        );
    }

    #[test]
    fn validity_saturates_and_is_never_zero() {
        let ttl = Duration::from_millis(100);
        let d = Duration::from_millis(3);
        assert_eq!(
            validity(ttl, Duration::from_millis(7), d),
            Some(Duration::from_millis(90))
        );
        assert_eq!(validity(ttl, Duration::from_millis(97), d), None);
        assert_eq!(validity(ttl, Duration::from_millis(500), d), None);
    }

    #[test]
    fn decides_as_soon_as_certain() {
        let mut t = Tally::new(5);
        t.record(Reply::Yes);
        t.record(Reply::Yes);
        assert_eq!(t.decision(), None);
        t.record(Reply::Yes);
        assert_eq!(t.decision(), Some(Decision::Won));

        let mut t = Tally::new(5);
        t.record(Reply::No);
        t.record(Reply::Unknown(None));
        assert_eq!(t.decision(), None);
        t.record(Reply::Failed(redis::RedisError::from((
            redis::ErrorKind::Client,
            "boom",
        ))));
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(t.votes(), 0);
        assert!(t.answered_error().is_some());
        assert!(t.transport_error().is_none());
    }

    #[test]
    fn errors_and_timeouts_are_not_votes() {
        let mut t = Tally::new(3);
        t.record(Reply::Yes);
        t.record(Reply::Unknown(None));
        t.record(Reply::Unknown(None));
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!((t.votes(), t.quorum(), t.unknown()), (1, 2, 2));
    }

    type Call = Pin<Box<dyn Future<Output = Reply> + Send>>;

    fn after(ms: u64, reply: Reply) -> Call {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_does_not_delay_a_certain_win() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(1, Reply::Yes),
            after(2, Reply::Yes),
            after(10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let mut t = Tally::new(3);
        gather(&mut calls, &mut t, start + Duration::from_millis(50)).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        assert_eq!(calls.len(), 1, "the slow call is left for clean-up");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_turns_silence_into_unknown() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(1, Reply::Yes),
            after(10_000, Reply::Yes),
            after(10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let mut t = Tally::new(3);
        gather(&mut calls, &mut t, start + Duration::from_millis(50)).await;
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!((t.votes(), t.unknown()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_refusal_ends_a_hopeless_attempt() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(1, Reply::No),
            after(2, Reply::No),
            after(10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let mut t = Tally::new(3);
        gather(&mut calls, &mut t, start + Duration::from_millis(50)).await;
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        assert_eq!(t.refused(), 2);
    }
}
