//! The quorum decision, kept free of I/O so it can be tested without Redis.
//!
//! Every lock operation (acquire, extend, release) fans a call out to all
//! nodes at once and feeds the replies, as they arrive, into a [`Tally`]. The
//! tally says when the outcome is certain; [`gather`] stops listening at that
//! point or at the per-node deadline, whichever comes first. [`validity`] turns
//! the elapsed time into the time the lock may still be trusted.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
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
    /// As `Yes`, from a second try after the first one's connection
    /// dropped: the first may have landed too (at another moment).
    YesRetried,
    /// The node answered and refused: the key is someone else's (or absent).
    No,
    /// As `No`, naming the token that holds the key (`SET .. NX GET`).
    Held(Arc<str>),
    /// No vote: the node could not be reached, or answered with an error.
    Fail(FailureKind, Option<redis::RedisError>),
}

impl Reply {
    /// Our write may have reached the node: it said yes, or we never heard.
    pub(crate) fn may_have_landed(&self) -> bool {
        match self {
            Reply::Yes | Reply::YesRetried => true,
            Reply::No | Reply::Held(_) => false,
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
    /// waiting for nodes too slow to settle it (see [`split_hopeless`]).
    abandoned: bool,
    /// The "no" answers that named their holder.
    holders: Vec<(usize, Arc<str>)>,
    /// The deadline passed with nodes still silent.
    expired: bool,
    /// Bit `i` is set once node `i` said yes.
    yes_nodes: u64,
}

/// Where an attempt stands in a contest: several clients each won some
/// nodes, none a quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Standing {
    /// Not a contest: won, failed without contention, or held by one
    /// token on a quorum of nodes (or, where holders are not named, held
    /// elsewhere without a vote of ours).
    #[default]
    None,
    /// Our token is the smallest of the contenders': they step aside and
    /// we ask again the nodes they held.
    Lead,
    /// Another contender leads, or we had no vote and nobody was seen
    /// holding a quorum: step aside briefly, then try again.
    Trail,
    /// Some node did not name its holder (Redis < 7, or a script).
    Unknown,
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
            holders: Vec::new(),
            expired: false,
            yes_nodes: 0,
        }
    }

    /// Our place in a contest, for an attempt whose token is `own`. All
    /// contenders see the same tokens on the nodes they share, so at most
    /// one of them leads.
    pub(crate) fn standing(&self, own: &str) -> Standing {
        if self.no == 0 || self.decision() == Some(Decision::Won) {
            return Standing::None;
        }
        if self.holders.len() < self.no {
            // Some holder unnamed: contested if we had a vote, else held.
            return if self.yes > 0 {
                Standing::Unknown
            } else {
                Standing::None
            };
        }
        let mut counts: Vec<(&str, usize)> = Vec::with_capacity(self.holders.len());
        for (_, token) in &self.holders {
            match counts.iter_mut().find(|(t, _)| *t == &**token) {
                Some((_, n)) => *n += 1,
                None => counts.push((token, 1)),
            }
        }
        if counts.iter().any(|&(_, n)| n >= self.quorum) {
            // Really held: wait for the release.
            Standing::None
        } else if self.yes == 0 || counts.iter().any(|&(t, _)| t < own) {
            // Nobody seen holding a quorum: others are contending.
            Standing::Trail
        } else {
            Standing::Lead
        }
    }

    /// Forgets the "no" answers that named a holder, so those nodes can be
    /// asked again; returns them as a bit set.
    pub(crate) fn reopen_held(&mut self) -> u64 {
        let mut nodes = 0u64;
        for (node, _) in self.holders.drain(..) {
            let bit = 1u64 << node;
            if self.heard & bit != 0 {
                self.heard &= !bit;
                self.no -= 1;
                nodes |= bit;
            }
        }
        nodes
    }

    /// Still undecided, and another client already has a vote: only the
    /// silent nodes can settle it.
    pub(crate) fn split(&self) -> bool {
        self.no > 0 && self.decision().is_none()
    }

    /// The nodes not heard from yet.
    pub(crate) fn silent(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes).filter(move |&i| self.heard & (1u64 << i) == 0)
    }

    /// The nodes that said yes, as a bit set.
    pub(crate) fn yes_nodes(&self) -> u64 {
        self.yes_nodes
    }

    /// Nodes were still silent when the deadline passed: they really timed
    /// out (nodes still silent after an early decision did not).
    pub(crate) fn expired(&self) -> bool {
        self.expired
    }

    /// The split vote was left undecided rather than waited out.
    #[cfg(test)]
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
            Reply::Yes | Reply::YesRetried => {
                self.yes += 1;
                self.yes_nodes |= bit;
            }
            Reply::No => self.no += 1,
            Reply::Held(token) => {
                self.no += 1;
                self.holders.push((node, token));
            }
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

/// Slack on a node's usual reply time: scheduling noise on a busy client.
const SPLIT_SLACK: Duration = Duration::from_millis(1);

/// A split vote (see [`Tally::split`]) cannot be settled in time: too few
/// silent nodes are healthy to make a quorum. A node is sick when it
/// usually cannot answer within `window` (twice its usual reply time plus
/// [`SPLIT_SLACK`]) and is also far slower than the fastest node (a client
/// too busy to read its replies makes every node look slow, and then none
/// is sick). A sick node (slow, frozen, unreachable) is not waited for:
/// under contention the keys it sets late vote "no" for everyone anyway,
/// while the contenders' keys on the healthy nodes block every other
/// client until they give up. Healthy nodes are waited for as usual.
pub(crate) fn split_hopeless(
    tally: &Tally,
    usual: impl Fn(usize) -> Duration,
    window: Duration,
) -> bool {
    let fastest = (0..tally.nodes).map(&usual).min().unwrap_or_default();
    let typical = fastest.saturating_mul(4).saturating_add(SPLIT_SLACK);
    let hopeful = tally
        .silent()
        .filter(|&node| {
            let usual = usual(node);
            usual <= typical || usual.saturating_mul(2).saturating_add(SPLIT_SLACK) <= window
        })
        .count();
    tally.votes() + hopeful < tally.quorum()
}

/// What [`gather`] knows of the nodes beyond their replies.
#[derive(Clone, Copy)]
pub(crate) struct Patience<'a> {
    /// How long each node takes to answer now (see `Link::usual_latency`).
    pub(crate) usual: &'a (dyn Fn(usize) -> Duration + Sync),
    /// Each node's moving average alone (see `Link::pace`), for the
    /// uncontended path.
    pub(crate) pace: &'a (dyn Fn(usize) -> Duration + Sync),
    /// An acquire: a split vote waits only as long as it can be settled
    /// (see [`split_hopeless`]).
    pub(crate) contest: bool,
}

/// Feeds replies into `tally` until the decision is certain, the stream
/// ends, or `deadline` passes; then counts the silent nodes as timed out
/// after `waited` (the limit the deadline stands for, for the report).
/// With `patience`, a split vote that [`split_hopeless`] rules out ends at
/// once (acquire only), and a vote won before every node answered lets the
/// scheduler turn once if the silent nodes are healthy: their replies are
/// usually microseconds away, and reading them here saves a background
/// task. Replies not yet read stay in `replies` for the caller to finish.
pub(crate) async fn gather<S>(
    replies: &mut S,
    tally: &mut Tally,
    (start, deadline): (Instant, Instant),
    waited: Duration,
    patience: Option<Patience<'_>>,
) where
    S: Stream<Item = (usize, Reply)> + Unpin,
{
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let window = deadline.saturating_duration_since(start);
    let mut cut_short = false;
    let contest = patience.filter(|p| p.contest);
    while tally.decision().is_none() {
        tokio::select! {
            biased;
            reply = replies.next() => match reply {
                Some((node, reply)) => {
                    tally.record(node, reply);
                    if let Some(p) = contest.filter(|_| tally.split()) {
                        if split_hopeless(tally, p.usual, window) {
                            tally.abandoned = true;
                            break;
                        }
                        if !cut_short && tally.votes() > 0 {
                            // The healthy silent nodes get as long again as
                            // the replies so far took: a busy client waits
                            // longer, a silent node does not hold the
                            // contenders' keys for a whole node timeout.
                            // (Without a vote we block nobody, and wait.)
                            cut_short = true;
                            let grace = start.elapsed().saturating_mul(2).max(SPLIT_SLACK);
                            timer.as_mut().reset(deadline.min(Instant::now() + grace));
                        }
                    }
                }
                None => break,
            },
            () = &mut timer => {
                if cut_short && Instant::now() < deadline {
                    tally.abandoned = true;
                } else {
                    tally.expired = true;
                }
                break;
            }
        }
    }
    if let Some(p) = patience {
        if tally.decision() == Some(Decision::Won)
            && tally.pending() > 0
            && stragglers_healthy(tally, p.pace)
        {
            tokio::task::yield_now().await;
            while let Some(Some((node, reply))) = replies.next().now_or_never() {
                tally.record(node, reply);
            }
        }
    }
    // A node is reported silent for as long as it was waited for: the whole
    // node timeout only when the deadline passed, not when the vote was
    // decided (or given up) before its reply could come.
    if tally.expired {
        tally.close(waited);
    } else {
        tally.close(start.elapsed());
    }
}

/// As [`gather`], for a release: when `window` has passed undecided, it
/// waits one more window at a time, up to `limit`, while `flowing` says
/// the silent nodes still deliver replies on their connections (a busy
/// machine whose replies queue, not a dead node), so a delete that answers
/// late still counts.
pub(crate) async fn gather_patiently<S>(
    replies: &mut S,
    tally: &mut Tally,
    (start, window, limit): (Instant, Duration, Instant),
    flowing: impl Fn(&Tally) -> bool,
) where
    S: Stream<Item = (usize, Reply)> + Unpin,
{
    let mut deadline = (start + window).min(limit);
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    while tally.decision().is_none() {
        tokio::select! {
            biased;
            reply = replies.next() => match reply {
                Some((node, reply)) => tally.record(node, reply),
                None => break,
            },
            () = &mut timer => {
                if deadline < limit && flowing(tally) {
                    deadline = (deadline + window).min(limit);
                    timer.as_mut().reset(deadline);
                } else {
                    tally.expired = true;
                    break;
                }
            }
        }
    }
    let waited = if tally.expired {
        deadline.saturating_duration_since(start)
    } else {
        start.elapsed()
    };
    tally.close(waited);
}

/// Every silent node answers about as fast as the fastest node does.
fn stragglers_healthy(tally: &Tally, usual: &(dyn Fn(usize) -> Duration + Sync)) -> bool {
    let fastest = (0..tally.nodes).map(usual).min().unwrap_or_default();
    let typical = fastest.saturating_mul(4).saturating_add(SPLIT_SLACK);
    tally.silent().all(|node| usual(node) <= typical)
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
        let patience = Patience {
            usual: &usual,
            pace: &usual,
            contest: true,
        };
        gather(calls, &mut t, (now, now + limit), limit, Some(patience)).await;
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
    async fn a_release_waits_past_the_window_only_while_replies_flow() {
        let window = Duration::from_millis(50);
        // A delete that answers at 120 ms counts while the node is busy,
        // not dead ...
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (120, Reply::Yes), (5000, Reply::Yes)]);
        let mut t = Tally::new(3);
        let limit = start + Duration::from_secs(1);
        gather_patiently(&mut c, &mut t, (start, window, limit), |_| true).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(120));
        // ... and is not waited for past the window when nothing flows.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (120, Reply::Yes), (5000, Reply::Yes)]);
        let mut t = Tally::new(3);
        let limit = start + Duration::from_secs(1);
        gather_patiently(&mut c, &mut t, (start, window, limit), |_| false).await;
        assert!(t.expired() && t.decision() == Some(Decision::Lost));
        assert_eq!(start.elapsed(), window);
        // Never past the limit.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (5000, Reply::Yes), (5000, Reply::Yes)]);
        let mut t = Tally::new(3);
        let limit = start + Duration::from_millis(130);
        gather_patiently(&mut c, &mut t, (start, window, limit), |_| true).await;
        assert!(t.expired());
        assert_eq!(start.elapsed(), Duration::from_millis(130));
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
        assert!(t.abandoned());
        assert_eq!(t.standing("a"), Standing::Unknown);
        assert!(t.error().is_contended(), "{}", t.error());
        assert_eq!(c.len(), 1, "the late SET is left for clean-up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_vote_waits_for_a_healthy_node_as_long_again_as_the_others_took() {
        // The split shows at 2 ms: node 2 gets until 2 + 2 x 2 = 6 ms.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (2, Reply::No), (5, Reply::Yes)]);
        let t = gather_acquire(&mut c, [0, 0, 3]).await;
        assert_eq!(t.decision(), Some(Decision::Won));
        assert_eq!(start.elapsed(), Duration::from_millis(5));
        assert!(!t.abandoned());
        // Silent past that: given up, not waited for until 50 ms.
        let start = Instant::now();
        let mut c = calls([(1, Reply::Yes), (2, Reply::No), (30, Reply::Yes)]);
        let t = gather_acquire(&mut c, [0, 0, 3]).await;
        assert_eq!(start.elapsed(), Duration::from_millis(6));
        assert!(t.abandoned() && !t.expired());
        assert!(t.error().is_contended(), "{}", t.error());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_left_out_of_an_early_decision_is_silent_only_so_far() {
        // Two refusals decide the vote at 2 ms: node 2 was waited for 2 ms,
        // not for the 50 ms deadline it never reached.
        let mut c = calls([
            (1, fail(FailureKind::Permission)),
            (2, fail(FailureKind::Permission)),
            (30, Reply::Yes),
        ]);
        let t = gather_acquire(&mut c, [0, 0, 0]).await;
        assert!(!t.expired());
        let silent: Vec<FailureKind> = t
            .failures()
            .iter()
            .map(|f| f.kind())
            .filter(|k| k.is_silent())
            .collect();
        assert_eq!(silent, [FailureKind::TimedOut(Duration::from_millis(2))]);
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

    fn held(token: &str) -> Reply {
        Reply::Held(Arc::from(token))
    }

    #[test]
    fn the_smallest_contender_leads_and_the_others_trail() {
        // A three-way split: each of a, b, c won one node.
        let a = tally(&[Reply::Yes, held("b"), held("c")]);
        let b = tally(&[held("a"), Reply::Yes, held("c")]);
        let c = tally(&[held("a"), held("b"), Reply::Yes]);
        assert_eq!(a.standing("a"), Standing::Lead);
        assert_eq!(b.standing("b"), Standing::Trail);
        assert_eq!(c.standing("c"), Standing::Trail);
        // No vote of ours, nobody with a quorum: step aside, but not for long.
        assert_eq!(
            tally(&[held("a"), held("b"), held("c")]).standing("0"),
            Standing::Trail
        );
        // One holder on a quorum: held, wait for its release.
        assert_eq!(
            tally(&[held("a"), held("a"), Reply::Yes]).standing("0"),
            Standing::None
        );
        // A holder with a quorum is no contest to lead, even for a smaller token.
        let mut t = Tally::new(5);
        for (i, r) in [Reply::Yes, held("z"), held("z"), held("z")]
            .into_iter()
            .enumerate()
        {
            t.record(i, r);
        }
        assert_eq!(t.standing("a"), Standing::None);
        // A refusal without a name leaves the standing unknown.
        assert_eq!(
            tally(&[Reply::Yes, Reply::No, held("c")]).standing("a"),
            Standing::Unknown
        );
    }

    #[test]
    fn reopened_nodes_can_vote_again() {
        let mut t = tally(&[Reply::Yes, held("b"), fail(SILENT)]);
        assert_eq!(t.decision(), Some(Decision::Lost));
        assert_eq!(t.reopen_held(), 0b010);
        assert_eq!(t.decision(), None);
        t.record(1, Reply::Yes);
        assert_eq!(t.decision(), Some(Decision::Won));
    }

    #[test]
    fn a_split_is_hopeless_only_without_enough_healthy_silent_nodes() {
        let window = Duration::from_millis(50);
        let mut t = Tally::new(5);
        t.record(0, Reply::Yes);
        t.record(1, Reply::No);
        t.record(2, Reply::Yes);
        let usual = |ms: [u64; 5]| move |node: usize| Duration::from_millis(ms[node]);
        // Nodes 3 and 4 healthy, or one of them sick: one more vote will do.
        assert!(!split_hopeless(&t, usual([0, 0, 0, 2, 4]), window));
        assert!(!split_hopeless(&t, usual([0, 0, 0, 2, 40]), window));
        // Both sick: nothing to wait for.
        assert!(split_hopeless(&t, usual([0, 0, 0, 30, 40]), window));
        // Every node slow (a busy client, not sick nodes): wait.
        assert!(!split_hopeless(&t, usual([30, 30, 30, 30, 40]), window));
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
        // Decided early: the slow node did not time out (its pace is kept).
        assert!(!t.expired());
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
        assert!(t.expired());
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
