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

use crate::error::{FailureKind, NodeFailure};
use crate::Error;

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
    /// No vote: the node could not be reached, or answered with an error.
    Fail(FailureKind, Option<redis::RedisError>),
}

impl Reply {
    /// Our write may have reached the node: it said yes, or we never heard.
    pub(crate) fn may_have_landed(&self) -> bool {
        match self {
            Reply::Yes => true,
            Reply::No => false,
            Reply::Fail(kind, _) => kind.is_silent(),
        }
    }
}

/// Whether a quorum was reached, as soon as that is certain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Won,
    Lost,
}

/// Most nodes a manager may have: each fan-out tracks them in one `u64`.
pub(crate) const MAX_NODES: usize = 64;

/// Running count of replies for one fan-out to `nodes` nodes.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    nodes: usize,
    quorum: usize,
    yes: usize,
    no: usize,
    /// Bit `i` is set once node `i` replied (or was given up on).
    heard: u64,
    /// The nodes that did not vote, in the order they failed.
    failures: Vec<NodeFailure>,
    /// The vote was split between contenders and left undecided, without
    /// waiting for nodes too slow to settle it (see [`split_wait`]).
    abandoned: bool,
}

impl Tally {
    pub(crate) fn new(nodes: usize) -> Self {
        Self {
            nodes,
            quorum: quorum(nodes),
            yes: 0,
            no: 0,
            heard: 0,
            failures: Vec::new(),
            abandoned: false,
        }
    }

    /// Still undecided, and another client already has a vote: only the
    /// silent nodes can settle it.
    pub(crate) fn split(&self) -> bool {
        self.no > 0 && self.decision().is_none()
    }

    /// The attempt held a vote and lost it to contenders: nobody may hold
    /// the lock now, so a retry soon may win it.
    pub(crate) fn contested(&self) -> bool {
        self.yes > 0 && self.no > 0 && self.decision() != Some(Decision::Won)
    }

    /// The nodes not heard from yet.
    fn silent(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes).filter(move |&i| self.heard & (1u64 << i) == 0)
    }

    /// The split vote was left undecided rather than waited out.
    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned
    }

    pub(crate) fn record(&mut self, node: usize, reply: Reply) {
        let bit = 1u64.checked_shl(node as u32).unwrap_or(0);
        if self.heard & bit != 0 {
            return;
        }
        self.heard |= bit;
        match reply {
            Reply::Yes => self.yes += 1,
            Reply::No => self.no += 1,
            Reply::Fail(kind, error) => self.failures.push(NodeFailure::new(node, kind, error)),
        }
    }

    /// Counts every node that has not answered yet as timed out after
    /// `waited`.
    pub(crate) fn close(&mut self, waited: Duration) {
        for node in 0..self.nodes {
            if self.heard & (1u64 << node) == 0 {
                self.record(node, Reply::Fail(FailureKind::TimedOut(waited), None));
            }
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.nodes - self.yes - self.no - self.failures.len()
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
        self.failures
            .iter()
            .filter(|f| f.kind().is_silent())
            .count()
    }

    /// Nodes that refused for a reason a retry cannot fix.
    fn permanent(&self) -> usize {
        self.failures
            .iter()
            .filter(|f| f.kind().is_permanent())
            .count()
    }

    /// "No" answers alone made a quorum impossible: others hold the key.
    pub(crate) fn held_elsewhere(&self) -> bool {
        self.nodes - self.no < self.quorum
    }

    /// Refusals a retry cannot fix, with the "no" answers, made a quorum
    /// impossible: retrying is pointless until an operator acts.
    pub(crate) fn refused_for_good(&self) -> bool {
        let permanent = self.permanent();
        permanent > 0 && self.nodes - self.no - permanent < self.quorum
    }

    pub(crate) fn failures(&self) -> &[NodeFailure] {
        &self.failures
    }

    /// The first node error among the failures of the kinds `pick` takes.
    pub(crate) fn first_error(&self, pick: fn(FailureKind) -> bool) -> Option<redis::RedisError> {
        self.failures
            .iter()
            .filter(|f| pick(f.kind()))
            .find_map(|f| f.error().cloned())
    }

    /// The error for a vote that did not reach quorum: someone else holds
    /// it, nodes refused it for good, answered with a passing error, or
    /// were not heard from, in that order of blame.
    pub(crate) fn error(&self) -> Error {
        let (votes, quorum) = (self.yes, self.quorum);
        let failures = self.failures.clone();
        let first = |pick| self.first_error(pick);
        if self.held_elsewhere() || self.abandoned {
            Error::Contended { votes, quorum }
        } else if self.refused_for_good() {
            let source = first(FailureKind::is_permanent);
            Error::Refused {
                votes,
                quorum,
                failures,
                source,
            }
        } else if self.yes + self.pending() + self.unknown() < quorum {
            // Even had every silent node said yes, the error replies cost
            // the quorum.
            let source = first(|k| k == FailureKind::Other);
            Error::Redis {
                votes,
                quorum,
                failures,
                source,
            }
        } else {
            let source = first(|_| true);
            Error::Unavailable {
                votes,
                quorum,
                failures,
                source,
            }
        }
    }
}

/// `now + after`, or a far future instant where that would overflow.
pub(crate) fn deadline_in(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Slack on a node's usual reply time before a split vote stops waiting
/// for it: scheduling noise on a busy client.
const SPLIT_SLACK: Duration = Duration::from_millis(1);

/// How long a split vote (see [`Tally::split`]) may still wait: until the
/// silent nodes that can answer before `deadline` usually have (twice
/// their usual reply time after `start`, plus [`SPLIT_SLACK`]), or `None`
/// to stop now when those nodes cannot make a quorum. A node known to be
/// sick (slow, frozen, unreachable) is not waited for: under contention the
/// keys it sets late vote "no" for everyone anyway, while the contenders'
/// keys on the healthy nodes block every other client until they give up.
pub(crate) fn split_wait(
    tally: &Tally,
    usual: impl Fn(usize) -> Duration,
    start: Instant,
    deadline: Instant,
) -> Option<Instant> {
    let mut hopeful = 0;
    let mut until = start;
    for node in tally.silent() {
        let usual = usual(node);
        let expected = start
            .checked_add(usual.saturating_mul(2).saturating_add(SPLIT_SLACK))
            .filter(|at| *at <= deadline);
        if let Some(at) = expected {
            hopeful += 1;
            until = until.max(at);
        }
    }
    (tally.votes() + hopeful >= tally.quorum()).then_some(until)
}

/// Feeds replies into `tally` until the decision is certain, the stream
/// ends, or `deadline` passes; then counts the silent nodes as timed out
/// after `waited` (the limit the deadline stands for, for the report).
/// With `usual` (each node's usual reply time; acquire only), a split vote
/// waits no longer than [`split_wait`] allows. Replies not yet read stay
/// in `replies` for the caller to finish.
pub(crate) async fn gather<S>(
    replies: &mut S,
    tally: &mut Tally,
    (start, deadline): (Instant, Instant),
    waited: Duration,
    usual: Option<&(dyn Fn(usize) -> Duration + Sync)>,
) where
    S: Stream<Item = (usize, Reply)> + Unpin,
{
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut cut_short = false;
    while tally.decision().is_none() {
        tokio::select! {
            biased;
            reply = replies.next() => match reply {
                Some((node, reply)) => {
                    tally.record(node, reply);
                    if let Some(usual) = usual.filter(|_| tally.split()) {
                        match split_wait(tally, usual, start, deadline) {
                            None => {
                                tally.abandoned = true;
                                break;
                            }
                            Some(until) if until < deadline => {
                                timer.as_mut().reset(until);
                                cut_short = true;
                            }
                            Some(_) => {}
                        }
                    }
                }
                None => break,
            },
            () = &mut timer => {
                tally.abandoned = cut_short;
                break;
            }
        }
    }
    if tally.abandoned {
        tally.close(start.elapsed());
    } else {
        tally.close(waited);
    }
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

    fn fail(kind: FailureKind) -> Reply {
        Reply::Fail(kind, None)
    }

    fn tally(replies: &[Reply]) -> Tally {
        let mut t = Tally::new(replies.len());
        for (i, r) in replies.iter().enumerate() {
            t.record(i, r.clone());
        }
        t
    }

    const SILENT: FailureKind = FailureKind::TimedOut(Duration::from_millis(50));

    #[test]
    fn decides_as_soon_as_certain() {
        let mut t = Tally::new(5);
        t.record(0, Reply::Yes);
        t.record(1, Reply::Yes);
        assert_eq!(t.decision(), None);
        t.record(2, Reply::Yes);
        assert_eq!(t.decision(), Some(Decision::Won));

        let mut t = Tally::new(5);
        t.record(0, Reply::No);
        t.record(1, fail(FailureKind::Unreachable));
        assert_eq!(t.decision(), None);
        t.record(2, fail(FailureKind::Other));
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(t.votes(), 0);
        assert_eq!(t.failures().len(), 2);
    }

    #[test]
    fn errors_and_timeouts_are_not_votes() {
        let mut t = Tally::new(3);
        t.record(0, Reply::Yes);
        t.record(1, fail(FailureKind::Unreachable));
        t.close(Duration::from_millis(50));
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!((t.votes(), t.quorum(), t.unknown()), (1, 2, 2));
        assert_eq!(t.failures()[1].node(), 2);
        assert_eq!(t.failures()[1].kind(), SILENT);
    }

    #[test]
    fn a_node_is_counted_once() {
        let mut t = Tally::new(3);
        t.record(0, Reply::Yes);
        t.record(0, Reply::Yes);
        assert_eq!(t.votes(), 1);
        assert_eq!(t.pending(), 2);
    }

    #[test]
    fn silent_nodes_make_unavailable_not_contended() {
        // Two frozen nodes and one refusal: had the frozen ones answered
        // yes, the lock was ours, so the service is to blame.
        let err = tally(&[fail(SILENT), fail(SILENT), Reply::No]).error();
        assert!(err.is_unavailable(), "{err}");
        assert_eq!(err.failures().len(), 2);
        assert!(err.to_string().contains("no reply within 50ms"), "{err}");
        // A majority of refusals is contention.
        let err = tally(&[Reply::No, Reply::No, fail(SILENT)]).error();
        assert!(err.is_contended(), "{err}");
    }

    #[test]
    fn permanent_refusals_that_cost_the_quorum_are_refused() {
        let err = tally(&[
            fail(FailureKind::Auth),
            fail(FailureKind::Permission),
            Reply::Yes,
        ])
        .error();
        assert!(
            err.is_refused() && err.is_invalid() && !err.is_retryable(),
            "{err}"
        );
        // One refusal with a silent node: the silent one may come back.
        let err = tally(&[fail(FailureKind::Auth), fail(SILENT), Reply::Yes]).error();
        assert!(err.is_unavailable() && err.is_retryable(), "{err}");
        // A passing error reply that cost the quorum is `Redis`.
        let err = tally(&[fail(FailureKind::Other), Reply::No, Reply::Yes]).error();
        assert!(matches!(err, Error::Redis { .. }), "{err}");
    }

    type Call = Pin<Box<dyn Future<Output = (usize, Reply)> + Send>>;

    fn after(node: usize, ms: u64, reply: Reply) -> Call {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (node, reply)
        })
    }

    /// Gathers `calls` from 3 nodes with a 50 ms deadline.
    async fn gather_50ms(calls: &mut FuturesUnordered<Call>) -> Tally {
        let mut t = Tally::new(3);
        let limit = Duration::from_millis(50);
        let now = Instant::now();
        gather(calls, &mut t, (now, now + limit), limit, None).await;
        t
    }

    /// As [`gather_50ms`] for an acquire, nodes usually answering in
    /// `usual`.
    async fn gather_acquire(calls: &mut FuturesUnordered<Call>, usual: [u64; 3]) -> Tally {
        let mut t = Tally::new(3);
        let limit = Duration::from_millis(50);
        let usual = usual.map(Duration::from_millis);
        let now = Instant::now();
        let usual = |node: usize| usual[node];
        gather(calls, &mut t, (now, now + limit), limit, Some(&usual)).await;
        t
    }

    fn calls(replies: [(u64, Reply); 3]) -> FuturesUnordered<Call> {
        replies
            .into_iter()
            .enumerate()
            .map(|(node, (ms, reply))| after(node, ms, reply))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_vote_does_not_wait_for_a_sick_node() {
        let start = Instant::now();
        // Node 2 usually takes 40 ms: it cannot answer within the deadline
        // (50 ms) in time to count, so the split is given up at once.
        let mut c = calls([(1, Reply::Yes), (2, Reply::No), (45, Reply::Yes)]);
        let t = gather_acquire(&mut c, [0, 0, 40]).await;
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert!(t.abandoned() && t.contested());
        assert!(t.error().is_contended(), "{}", t.error());
        assert_eq!(c.len(), 1, "the late SET is left for clean-up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_vote_waits_for_a_healthy_node_as_long_as_it_usually_takes() {
        // Node 2 usually answers in 3 ms: waited for, it settles the split.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (2, Reply::No), (4, Reply::Yes)]);
        let t = gather_acquire(&mut c, [0, 0, 3]).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(4));
        // Today it is late: given up at 2 x 3 ms + 1 ms, not at 50 ms.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (2, Reply::No), (30, Reply::Yes)]);
        let t = gather_acquire(&mut c, [0, 0, 3]).await;
        assert_eq!(start.elapsed(), Duration::from_millis(7));
        assert!(t.abandoned() && t.error().is_contended());
    }

    #[tokio::test(start_paused = true)]
    async fn without_contention_a_sick_node_is_waited_for_to_the_deadline() {
        // No other client has a vote: the sick node is the only hope.
        let start = Instant::now();
        let mut c = calls([
            (1, Reply::Yes),
            (2, fail(FailureKind::Unreachable)),
            (45, Reply::Yes),
        ]);
        let t = gather_acquire(&mut c, [0, 0, 40]).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(45));
        assert!(!t.abandoned());
    }

    #[test]
    fn split_wait_counts_only_nodes_that_can_answer_in_time() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        let mut t = Tally::new(5);
        t.record(0, Reply::Yes);
        t.record(1, Reply::No);
        t.record(2, Reply::Yes);
        let usual = |ms: [u64; 5]| move |node: usize| Duration::from_millis(ms[node]);
        // Nodes 3 and 4 healthy: wait for the slower, 2 x 4 ms + 1 ms.
        assert_eq!(
            split_wait(&t, usual([0, 0, 0, 2, 4]), start, deadline),
            Some(start + Duration::from_millis(9))
        );
        // One of them sick: the other alone can still make the quorum.
        assert_eq!(
            split_wait(&t, usual([0, 0, 0, 2, 40]), start, deadline),
            Some(start + Duration::from_millis(5))
        );
        // Both sick: nothing to wait for.
        assert_eq!(
            split_wait(&t, usual([0, 0, 0, 30, 40]), start, deadline),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_does_not_delay_a_certain_win() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(0, 1, Reply::Yes),
            after(1, 2, Reply::Yes),
            after(2, 10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let t = gather_50ms(&mut calls).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        assert_eq!(calls.len(), 1, "the slow call is left for clean-up");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_turns_silence_into_unknown() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(0, 1, Reply::Yes),
            after(1, 10_000, Reply::Yes),
            after(2, 10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let t = gather_50ms(&mut calls).await;
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!((t.votes(), t.unknown()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_refusal_ends_a_hopeless_attempt() {
        let start = Instant::now();
        let mut calls: FuturesUnordered<Call> = [
            after(0, 1, Reply::No),
            after(1, 2, Reply::No),
            after(2, 10_000, Reply::Yes),
        ]
        .into_iter()
        .collect();
        let t = gather_50ms(&mut calls).await;
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        assert_eq!(t.refused(), 2);
    }
}
