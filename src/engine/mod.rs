//! The engine every primitive runs on: the state a manager shares with its
//! locks ([`Inner`]), one attempt over every node ([`attempt`]), the retry
//! loop and the scoped form ([`acquire`]), the lock handle ([`lock`]) and
//! what stays on the wire after a caller has its answer ([`cleanup`]).
//!
//! A primitive (the mutex, a semaphore's permit, a reader, a writer) tells
//! the engine what to ask each node as data, an [`Admission`]; the engine
//! names none of them. Arrows run down only: primitives import the engine,
//! the engine imports the wire (`node`, `link`, `wake`) and the pure parts
//! (`quorum`, `slots`, `stats`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::Future;
use tokio::time::Instant;

use crate::error::FailureKind;
use crate::fanout::Fanout;
use crate::node::{Node, Scripts};
use crate::quorum::{self, Patience, Reply, Tally};
use crate::retry::RetryPolicy;
use crate::slots;
use crate::wake::Wakeups;
use crate::Error;

pub(crate) mod acquire;
pub(crate) mod admission;
pub(crate) mod attempt;
pub(crate) mod cleanup;
pub(crate) mod lock;

use cleanup::{in_flight, InFlight};

/// The keys of one lock: one per resource, all set or none.
pub(crate) type Keys = Arc<[Arc<str>]>;

/// Shared by a [`Redlock`] and every lock it hands out.
pub(crate) struct Inner {
    pub(crate) nodes: Arc<[Node]>,
    pub(crate) scripts: Scripts,
    pub(crate) retry: RetryPolicy,
    pub(crate) node_timeout: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) drift_floor: Duration,
    pub(crate) key_prefix: String,
    pub(crate) fencing: bool,
    /// Every lock's stop margin (see [`Builder::stop_margin`]); `None`: a
    /// tenth of its TTL.
    pub(crate) stop_margin: Option<Duration>,
    /// How long a release waits for a quorum of its deletes (see
    /// [`Builder::release_timeout`]).
    pub(crate) release_timeout: Duration,
    /// Some node is a Redis Cluster: a lock's keys must share a slot.
    pub(crate) sharded: bool,
    pub(crate) wakeups: Arc<Wakeups>,
    /// Releases and clean-ups still running (see [`Redlock::settle`]).
    pub(crate) background: Arc<Background>,
}

/// The floor of the health limit: a call unanswered this long, with no
/// reply on its connection since, gets the connection replaced.
const HEALTH_FLOOR: Duration = Duration::from_millis(500);

/// How long a connection may go without any reply while a call waits on
/// it, before it is replaced: ten node timeouts, at least 500 ms.
pub(crate) fn health_limit(node_timeout: Duration) -> Duration {
    node_timeout.saturating_mul(10).max(HEALTH_FLOOR)
}

/// Longest TTL accepted: 1,000 years, far inside what Redis can add to
/// its clock, and what an `Instant` can hold.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// Validated figures for one TTL.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    /// The TTL sent to Redis, in whole milliseconds, and the same as a
    /// `Duration`: validity is computed from what the nodes were told.
    pub(crate) ttl_ms: u64,
    pub(crate) ttl: Duration,
    pub(crate) drift: Duration,
    /// Per-node deadline for this TTL.
    pub(crate) node_deadline: Duration,
}

/// Fails with [`Error::NoRuntime`] outside a tokio runtime, instead of the
/// panic that the first timer or connection would cause there.
pub(crate) fn require_runtime() -> Result<(), Error> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| Error::NoRuntime)
}

impl Inner {
    /// The resource name in a key: what follows the prefix.
    pub(crate) fn resource_of<'a>(&self, key: &'a str) -> &'a str {
        key.get(self.key_prefix.len()..).unwrap_or_default()
    }

    pub(crate) fn plan(&self, ttl: Duration) -> Result<Plan, Error> {
        require_runtime()?;
        if ttl > MAX_TTL {
            return Err(Error::InvalidInput("TTL is longer than 1,000 years"));
        }
        // Whole milliseconds, rounded down: Redis keeps the key this long.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let ttl = Duration::from_millis(ttl_ms);
        if ttl.is_zero() {
            return Err(Error::InvalidInput("TTL is zero (under a millisecond)"));
        }
        let drift = quorum::drift(ttl, self.drift_factor, self.drift_floor);
        let margin = self.stop_margin.unwrap_or(ttl / 10);
        if ttl
            <= drift
                .saturating_add(self.node_timeout)
                .saturating_add(margin)
        {
            return Err(Error::InvalidInput(
                "TTL must be longer than the clock drift allowance, the node timeout and the stop margin",
            ));
        }
        Ok(Plan {
            ttl_ms,
            ttl,
            drift,
            node_deadline: self.node_timeout.min(ttl / 10),
        })
    }

    /// Sends `op` to every node at once; each future yields its node index.
    pub(crate) fn fan_out<F, Fut>(self: &Arc<Self>, op: F) -> Fanout<Fut>
    where
        F: Fn(Arc<Inner>, usize) -> Fut,
        Fut: Future<Output = (usize, Reply)>,
    {
        (0..self.nodes.len()).map(|i| op(self.clone(), i)).collect()
    }

    /// Reads a fan-out's replies into a tally (see [`quorum::gather`]), and
    /// has each node that stayed silent watch its connection.
    pub(crate) async fn gather<S>(
        &self,
        calls: &mut S,
        deadline: Instant,
        waited: Duration,
    ) -> Tally
    where
        S: futures::Stream<Item = (usize, Reply)> + Unpin,
    {
        self.gather_votes(calls, (Instant::now(), deadline), waited, false)
            .await
    }

    /// As [`gather`](Self::gather); for an acquire (`contest`), a split vote
    /// does not wait for nodes too slow to settle it (see
    /// [`quorum::split_hopeless`]).
    async fn gather_votes<S>(
        &self,
        calls: &mut S,
        (start, deadline): (Instant, Instant),
        waited: Duration,
        contest: bool,
    ) -> Tally
    where
        S: futures::Stream<Item = (usize, Reply)> + Unpin,
    {
        let mut tally = Tally::new(self.nodes.len());
        let usual = |node: usize| self.nodes[node].usual_latency();
        let pace = |node: usize| self.nodes[node].pace();
        let patience = Patience {
            usual: &usual,
            pace: &pace,
            contest,
        };
        quorum::gather(calls, &mut tally, (start, deadline), waited, Some(patience)).await;
        if tally.expired() {
            for failure in tally.failures() {
                if let FailureKind::TimedOut(waited) = failure.kind() {
                    self.nodes[failure.node()].timed_out(waited);
                }
            }
        }
        tally
    }

    /// Compare-and-delete on every node, waiting until a quorum confirmed it
    /// (or cannot), at most the node timeout. The calls still running are
    /// returned: they are on the wire already, so a frozen node still gets
    /// its delete when it thaws, and a slow one costs the caller nothing.
    pub(crate) async fn release_quorum(
        self: &Arc<Self>,
        keys: &Keys,
        token: &Arc<str>,
        announce: Option<&Keys>,
    ) -> (Tally, Option<InFlight>) {
        let calls = self.release_calls(keys, token, announce);
        self.gather_release(Instant::now(), calls).await
    }

    /// The compare-and-delete of `keys` on every node, not yet sent: the
    /// first poll sends all of them (see [`release_quorum`](Self::release_quorum)).
    pub(crate) fn release_calls(
        self: &Arc<Self>,
        keys: &Keys,
        token: &Arc<str>,
        announce: Option<&Keys>,
    ) -> Fanout<impl Future<Output = (usize, Reply)> + Send + 'static> {
        // One command for every node.
        let eval = Arc::new(
            self.scripts
                .release_cmd(keys, token, announce.map(|k| &k[..])),
        );
        self.fan_out(|inner, i| {
            let (keys, eval) = (keys.clone(), eval.clone());
            async move {
                let (reply, heard) = inner.nodes[i].release_prepared(&inner.scripts, &eval).await;
                if heard {
                    inner.wakeups.released_to_waiters(&keys);
                }
                (i, reply)
            }
        })
    }

    /// Reads the replies of a release's deletes, sent at `start`, until a
    /// quorum confirmed it (or cannot).
    pub(crate) async fn gather_release<S>(
        &self,
        start: Instant,
        mut calls: S,
    ) -> (Tally, Option<InFlight>)
    where
        S: futures::Stream<Item = (usize, Reply)> + Unpin + Send + 'static,
    {
        // Past the node timeout too, up to the release timeout, while the
        // silent nodes' connections still bring replies: on a busy machine a
        // delete that is merely slow still counts, so a release that removed
        // the keys does not read as failed. A frozen or dead node (nothing
        // on its connection for two node timeouts) is not waited for.
        let limit = start + self.release_timeout.max(self.node_timeout);
        let mut tally = Tally::new(self.nodes.len());
        let flowing = |tally: &Tally| {
            tally
                .silent()
                .all(|node| self.nodes[node].usual_latency() < self.node_timeout * 2)
        };
        quorum::gather_patiently(
            &mut calls,
            &mut tally,
            (start, self.node_timeout, limit),
            flowing,
        )
        .await;
        if tally.expired() {
            for failure in tally.failures() {
                if let FailureKind::TimedOut(waited) = failure.kind() {
                    self.nodes[failure.node()].timed_out(waited);
                }
            }
        }
        (tally, in_flight(calls))
    }
}

/// The key of a lock key's fencing counter. No resource can reach it (keys
/// under [`FENCE_PREFIX`] are refused), and it hashes to the lock key's
/// cluster slot (see [`slots::tagged`]).
pub(crate) fn fence_key(key: &str) -> Arc<str> {
    Arc::from(format!("{FENCE_PREFIX}{}", slots::tagged(key)))
}

/// Where fencing counters live; refused as a key for a lock.
pub(crate) const FENCE_PREFIX: &str = "quorumlock:fence:";

/// Clean-ups running in the background, so that a process can wait for
/// them before it exits ([`Redlock::settle`](crate::Redlock::settle)).
#[derive(Default)]
pub(crate) struct Background {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One clean-up counted as running until dropped.
pub(crate) struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Background {
    pub(crate) fn started(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }

    /// Returns once no clean-up is running.
    pub(crate) async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}
