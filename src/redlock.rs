//! The lock manager: validates a request, fans it out to every node at once,
//! lets [`quorum`](crate::quorum) decide, and makes sure that whatever the
//! outcome (or a cancelled caller) nothing is left locked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Future, FutureExt, StreamExt};
use tokio::time::Instant;

use crate::builder::{Builder, RetryPolicy};
use crate::cleanup::{in_flight, merge, Cleanup, InFlight};
use crate::error::FailureKind;
use crate::fanout::Fanout;
use crate::lock::{Guard, KeepAlive, Lock};
use crate::node::{set_nx_px_cmd, Node, Scripts};
use crate::quorum::{self, Decision, Patience, Reply, Standing, Tally};
use crate::rwlock::{Admission, Side};
use crate::slots;
use crate::stats;
use crate::wake::{Wakeups, Watch, COURTESY};
use crate::Error;

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
    pub(crate) background: Arc<crate::cleanup::Background>,
}

/// A lock manager over N independent Redis nodes. Cheap to clone; clones
/// share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
/// use quorumlock::Redlock;
///
/// let redlock = Redlock::builder()
///     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
///     .build()
///     .await?;
/// let lock = redlock.acquire("invoice:42", Duration::from_secs(10)).await?;
/// // ... work while lock.remaining() is comfortably above zero ...
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redlock {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Redlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.inner.nodes.len())
            .field("quorum", &self.quorum())
            .field("key_prefix", &self.inner.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Redlock {
    /// Starts configuring a manager; see [`Builder`] for the settings and
    /// their defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Votes needed for a lock: `nodes / 2 + 1`.
    pub fn quorum(&self) -> usize {
        quorum::quorum(self.inner.nodes.len())
    }

    /// The key of `resource`, shared by the lock's calls.
    fn key_of(&self, resource: &str) -> Arc<str> {
        if self.inner.key_prefix.is_empty() {
            Arc::from(resource)
        } else {
            Arc::from(self.key(resource))
        }
    }

    /// The Redis key a resource is stored under: the key prefix followed by
    /// the resource name, unchanged.
    pub fn key(&self, resource: &str) -> String {
        let mut key = String::with_capacity(self.inner.key_prefix.len() + resource.len());
        key.push_str(&self.inner.key_prefix);
        key.push_str(resource);
        key
    }

    /// Acquires `resource` for `ttl`, retrying by the manager's
    /// [`RetryPolicy`] while the failure is one a retry could fix. While the
    /// resource is held by someone else, the retry starts as soon as a
    /// release is announced (the release script publishes on
    /// `quorumlock:released:<key>`), the policy's delay being the fallback.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] at once for an empty or reserved resource or
    /// an unusable TTL, [`Error::NoRuntime`] outside tokio; at once too,
    /// without retrying, [`Error::Refused`] when nodes refuse for a reason a
    /// retry cannot fix (credentials, ACL, replica, key type); otherwise the
    /// last attempt's error: [`Error::Contended`], [`Error::Unavailable`],
    /// [`Error::Redis`] or [`Error::ValidityExhausted`].
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// let lock = redlock.acquire("invoice:42", Duration::from_secs(10)).await?;
    /// println!("held until {:?}", lock.deadline());
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys_for(&[resource])?;
        timed(self.acquire_keys(keys, ttl)).await
    }

    /// Acquires every resource in `resources` together, or none: one script
    /// per node sets all of their keys or none, so two clients asking for
    /// overlapping sets, in any order, can never each hold a part and wait
    /// for the other. Retries as [`acquire`](Self::acquire). The lock's
    /// release, extend and fence cover the whole set.
    ///
    /// On nodes that are Redis Clusters (`Builder::cluster_node`, feature
    /// `cluster`), every key of the set must share a hash tag (for example
    /// `{order:42}:a` and `{order:42}:b`); otherwise the set is refused with
    /// [`Error::InvalidInput`] before any command is sent. A server that
    /// checks slots without being given as a cluster refuses with
    /// `CROSSSLOT` ([`FailureKind::CrossSlot`](crate::FailureKind::CrossSlot)).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire); [`Error::InvalidInput`] also for an
    /// empty list, a resource named twice, or keys in several slots of a
    /// cluster node.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// let lock = redlock.acquire_many(&["account:1", "account:2"], Duration::from_secs(5)).await?;
    /// // ... move money between the two accounts ...
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys_for(resources)?;
        timed(self.acquire_keys(keys, ttl)).await
    }

    /// One attempt of [`acquire_many`](Self::acquire_many).
    ///
    /// # Errors
    /// As [`acquire_many`](Self::acquire_many), from the single attempt.
    pub async fn try_acquire_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys_for(resources)?;
        let plan = self.inner.plan(ttl)?;
        timed(async { attempt(&self.inner, keys, plan).await.map_err(|f| f.error) }).await
    }

    /// The keys of `resources`, checked: none empty, none reserved, none
    /// twice (in linear time: sets can be large).
    fn keys_for(&self, resources: &[&str]) -> Result<Keys, Error> {
        if resources.is_empty() {
            return Err(Error::InvalidInput("no resources were given"));
        }
        if let [resource] = resources {
            // One resource: no list to build.
            let key = self.checked_key(resource)?;
            slots::check(self.inner.sharded, [&*key], self.inner.fencing)?;
            return Ok(Arc::from([key]));
        }
        let mut keys: Vec<Arc<str>> = Vec::with_capacity(resources.len());
        for resource in resources {
            keys.push(self.checked_key(resource)?);
        }
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        if !keys.iter().all(|k| seen.insert(&**k)) {
            return Err(Error::InvalidInput("a resource is named twice"));
        }
        slots::check(
            self.inner.sharded,
            keys.iter().map(|k| &**k),
            self.inner.fencing,
        )?;
        Ok(keys.into())
    }

    /// The key of one resource, checked: not empty, not reserved.
    pub(crate) fn checked_key(&self, resource: &str) -> Result<Arc<str>, Error> {
        if resource.is_empty() {
            return Err(Error::InvalidInput("resource name is empty"));
        }
        let key = self.key_of(resource);
        if key.starts_with(FENCE_PREFIX) {
            return Err(Error::InvalidInput(
                "keys starting with `quorumlock:fence:` are reserved for fencing counters",
            ));
        }
        Ok(key)
    }

    /// The retry loop of `acquire` and `acquire_many`.
    async fn acquire_keys(&self, keys: Keys, ttl: Duration) -> Result<Lock, Error> {
        let inner = &self.inner;
        self.acquire_by(&keys, ttl, |plan| attempt(inner, keys.clone(), plan))
            .await
    }

    /// The retry loop of every primitive: `try_once` makes one attempt
    /// (for a semaphore, over its permits); while the resource is held,
    /// a release of any of `watched` starts the next one at once.
    pub(crate) async fn acquire_by<F, Fut>(
        &self,
        watched: &Keys,
        ttl: Duration,
        mut try_once: F,
    ) -> Result<Lock, Error>
    where
        F: FnMut(Plan) -> Fut,
        Fut: Future<Output = Result<Lock, Failed>>,
    {
        let keys = watched;
        let plan = self.inner.plan(ttl)?;
        let started = Instant::now();
        let policy = &self.inner.retry;
        // Set up once the resource was found held: wakes us on the release
        // of any of its keys.
        let mut watch: Option<Watch> = None;
        if let Some(until) = self.inner.wakeups.courtesy(keys) {
            // This manager just released the lock to waiters: their turn.
            let w = self.inner.wakeups.watch(keys, COURTESY).await;
            let notify = w.notify();
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
            watch = Some(w);
        }
        let mut attempt_no = 1;
        // Contested attempts in a row (see `Failed::contest`).
        let mut contests = 0;
        loop {
            // Armed before the attempt, so a release racing it is not missed.
            let notify = watch.as_ref().map(Watch::notify);
            let mut released = notify.as_ref().map(|n| Box::pin(n.notified()));
            if let Some(released) = released.as_mut() {
                released.as_mut().enable();
            }
            let failed = match try_once(plan).await {
                Ok(lock) => return Ok(lock),
                Err(failed) => failed,
            };
            let err = failed.error;
            if !err.is_retryable() || attempt_no >= policy.max_attempts() {
                return Err(err);
            }
            let mut wait = policy.backoff();
            if failed.contest == Standing::None {
                contests = 0;
            } else {
                // Nobody may hold it now, and if nobody wins, no release
                // will be announced: retry soon, at a random point of a
                // window that doubles with each contest in a row, so the
                // contenders spread out instead of splitting the votes
                // again. A trailer also gives the leader time to win
                // first; once it has, the trailer waits for its release.
                contests += 1;
                let mut soon = contest_backoff(contests);
                if failed.contest == Standing::Trail {
                    soon += ASK_AGAIN_PAUSE * (ASK_AGAIN_ROUNDS + 1);
                }
                wait = wait.min(soon);
            }
            // The first quick retries of a contest are not among the
            // policy's attempts: its window soon reaches the policy's delay.
            let counted = wait >= policy.fixed_delay() || contests > FREE_CONTEST_RETRIES;
            if let Some(limit) = policy.limit() {
                // The wait is spent up to the limit, not refused when the
                // next delay would pass it: a release heard meanwhile is
                // taken, and one last attempt goes out at the limit (a
                // holder that crashed may just have expired).
                let left = limit.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(err);
                }
                wait = wait.min(left);
            }
            if failed.seen_held && watch.is_none() {
                // Once subscribed, try again at once: a release between the
                // failed attempt and the subscription would be missed.
                watch = Some(self.inner.wakeups.watch(keys, wait).await);
                attempt_no += u32::from(counted);
                continue;
            }
            match released {
                Some(released) => {
                    // Waiters in other processes hear the same release;
                    // a split among them is settled as any contest.
                    tokio::select! {
                        () = released => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
            attempt_no += u32::from(counted);
        }
    }

    /// Runs `work` while holding `resource`: acquires it (as
    /// [`acquire`](Self::acquire)), keeps it alive in the background
    /// ([`KeepAlive::default`]), and releases it afterwards, also when `work`
    /// returns an error or panics. If the lock is lost while `work` runs,
    /// `work` is dropped (cancelled at its next `.await`) and the result is
    /// [`Error::Lost`]; `work` can also watch the [`Guard`] it is given and
    /// stop cleanly on its own.
    ///
    /// # Errors
    /// The errors of [`acquire`](Self::acquire), or [`Error::Lost`] when the
    /// lock was lost before `work` finished.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// let total = redlock
    ///     .with_lock("report:daily", Duration::from_secs(10), |guard| async move {
    ///         // ... long work; `guard.remaining()` and `guard.lost()` are there
    ///         // for work that wants to stop cleanly ...
    ///         42
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<F, Fut, T>(
        &self,
        resource: &str,
        ttl: Duration,
        work: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Guard) -> Fut,
        Fut: Future<Output = T>,
    {
        run_locked(self.acquire(resource, ttl).await?, work).await
    }

    /// Waits until the releases and clean-ups this manager runs in the
    /// background have finished (a dropped lock, a cancelled `acquire`, a
    /// reply that came late), at most `limit`; `true` when none is left.
    /// Call it before the process exits, so that nothing it held has to
    /// wait for its TTL on a node (a key still unreachable then expires
    /// with its TTL all the same).
    ///
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// let lock = redlock.acquire("job", Duration::from_secs(30)).await?;
    /// drop(lock); // released in the background
    /// redlock.settle(Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub async fn settle(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.inner.background.settled())
            .await
            .is_ok()
    }

    /// Makes exactly one attempt to acquire `resource` for `ttl`.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), from the single attempt.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) {
    /// use std::time::Duration;
    /// match redlock.try_acquire("report:daily", Duration::from_secs(30)).await {
    ///     Ok(lock) => { /* we run the report */ drop(lock) }
    ///     Err(e) if e.is_contended() => { /* someone else runs it */ }
    ///     Err(e) => eprintln!("lock service degraded: {e}"),
    /// }
    /// # }
    /// ```
    pub async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys_for(&[resource])?;
        let plan = self.inner.plan(ttl)?;
        timed(async { attempt(&self.inner, keys, plan).await.map_err(|f| f.error) }).await
    }
}

/// Runs an acquire call and records its time and outcome (feature
/// `metrics`).
async fn timed(call: impl Future<Output = Result<Lock, Error>>) -> Result<Lock, Error> {
    if !cfg!(feature = "metrics") {
        return call.await;
    }
    let start = Instant::now();
    let result = call.await;
    stats::acquire_call(result.as_ref().map(drop), start.elapsed());
    result
}

/// Longest TTL accepted: 1,000 years, far inside what Redis can add to
/// its clock, and what an `Instant` can hold.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// The scoped form of every primitive: keeps `lock` alive while `work`
/// runs on its guard, releases it afterwards, and drops the work with
/// [`Error::Lost`] if the lock is lost first.
pub(crate) async fn run_locked<F, Fut, T>(mut lock: Lock, work: F) -> Result<T, Error>
where
    F: FnOnce(Guard) -> Fut,
    Fut: Future<Output = T>,
{
    lock.keep_alive(KeepAlive::default());
    let work = work(lock.guard());
    let done = tokio::select! {
        biased;
        () = lock.lost() => None,
        out = work => Some(out),
    };
    match done {
        Some(out) => {
            // The work finished while the lock was held; a failed release
            // only means the keys expire by themselves.
            let _ = lock.release().await;
            Ok(out)
        }
        None => Err(lock.loss()),
    }
}

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
        announce: bool,
    ) -> (Tally, Option<InFlight>) {
        // One command for every node.
        let eval = Arc::new(self.scripts.release_cmd(keys, token, announce));
        let mut calls = self.fan_out(|inner, i| {
            let (keys, eval) = (keys.clone(), eval.clone());
            async move {
                let (reply, heard) = inner.nodes[i].release_prepared(&inner.scripts, &eval).await;
                if heard {
                    inner.wakeups.released_to_waiters(&keys);
                }
                (i, reply)
            }
        });
        // Past the node timeout too, up to the release timeout, while the
        // silent nodes' connections still bring replies: on a busy machine a
        // delete that is merely slow still counts, so a release that removed
        // the keys does not read as failed. A frozen or dead node (nothing
        // on its connection for two node timeouts) is not waited for.
        let start = Instant::now();
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

/// A failed attempt: the error, and whether some node was seen holding
/// the resource for someone else (worth waiting for its release).
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) seen_held: bool,
    /// Where the attempt stood in a contest (see [`Standing`]).
    pub(crate) contest: Standing,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            seen_held: false,
            contest: Standing::None,
        }
    }
}

/// One attempt, in a tracing span.
pub(crate) async fn attempt(inner: &Arc<Inner>, keys: Keys, plan: Plan) -> Result<Lock, Failed> {
    attempt_as(inner, keys, plan, None).await
}

/// One attempt, admitted on each node by `admission` (a read or write lock's
/// script) instead of `SET NX`, when given.
pub(crate) async fn attempt_as(
    inner: &Arc<Inner>,
    keys: Keys,
    plan: Plan,
    admission: Option<Arc<Admission>>,
) -> Result<Lock, Failed> {
    use tracing::Instrument;
    let span = tracing::debug_span!("quorumlock_attempt", key = &*keys[0], keys = keys.len());
    let result = if span.is_disabled() {
        // Nobody listens: no span to enter on every poll.
        attempt_in_span(inner, keys, plan, admission).await
    } else {
        attempt_in_span(inner, keys, plan, admission)
            .instrument(span)
            .await
    };
    stats::attempt(result.as_ref().map(drop).map_err(|f| &f.error));
    result
}

/// The key of a lock key's fencing counter. No resource can reach it (keys
/// under [`FENCE_PREFIX`] are refused), and it hashes to the lock key's
/// cluster slot (see [`slots::tagged`]).
pub(crate) fn fence_key(key: &str) -> Arc<str> {
    Arc::from(format!("{FENCE_PREFIX}{}", slots::tagged(key)))
}

/// Where fencing counters live; refused as a key for a lock.
pub(crate) const FENCE_PREFIX: &str = "quorumlock:fence:";

/// One attempt: the whole of REDLOCK.md's "Acquire" section.
async fn attempt_in_span(
    inner: &Arc<Inner>,
    keys: Keys,
    plan: Plan,
    admission: Option<Arc<Admission>>,
) -> Result<Lock, Failed> {
    let ttl = plan.ttl;
    let suspended = crate::clock::suspended();
    let start = Instant::now();
    let token = new_token();
    // Armed from the first SET on: if this future is dropped midway, the
    // guard removes whatever landed.
    let mut guard = AttemptGuard {
        inner: inner.clone(),
        keys: keys.clone(),
        token: token.clone(),
        ttl,
        armed: true,
    };
    // With fencing, each yes vote leaves its node's counter + 1 here.
    let fence_keys: Option<Keys> = match &admission {
        None => inner
            .fencing
            .then(|| keys.iter().map(|k| fence_key(k)).collect()),
        Some(admission) => admission.fence_key.clone().map(|k| Arc::from([k])),
    };
    let counters: Option<Arc<[AtomicU64]>> = fence_keys
        .as_ref()
        .map(|_| (0..inner.nodes.len()).map(|_| AtomicU64::new(0)).collect());
    // A single key's SET, built once for every node.
    let with_get: Option<Arc<redis::Cmd>> = match (&keys[..], &fence_keys, &admission) {
        ([key], None, None) => Some(Arc::new(set_nx_px_cmd(key, &token, plan.ttl_ms, true))),
        _ => None,
    };
    let mut calls = inner.fan_out(|inner, i| {
        let (keys, token, with_get) = (keys.clone(), token.clone(), with_get.clone());
        let (fence_keys, counters) = (fence_keys.clone(), counters.clone());
        let admission = admission.clone();
        async move {
            let node = &inner.nodes[i];
            if let Some(admission) = admission {
                let (reply, counter) = node
                    .admit(&inner.scripts, &admission, &keys[0], &token, plan.ttl_ms)
                    .await;
                if let (Some(counters), Some(c)) = (&counters, counter) {
                    // A writer's fence is above every counter it read; a
                    // reader's is the last writer's.
                    let fence = match admission.side {
                        Side::Write | Side::Permit(_) => c.saturating_add(1),
                        Side::Read => c,
                    };
                    counters[i].store(fence, Ordering::SeqCst);
                }
                return (i, reply);
            }
            let reply = match fence_keys.zip(counters) {
                None => {
                    node.acquire(
                        &inner.scripts,
                        &keys,
                        &token,
                        plan.ttl_ms,
                        with_get.as_deref(),
                    )
                    .await
                }
                Some((fence_keys, counters)) => {
                    let (reply, counter) = node
                        .acquire_fenced(&inner.scripts, &keys, &fence_keys, &token, plan.ttl_ms)
                        .await;
                    if let Some(c) = counter {
                        counters[i].store(c.saturating_add(1), Ordering::SeqCst);
                    }
                    reply
                }
            };
            (i, reply)
        }
    });
    let mut tally = inner
        .gather_votes(
            &mut calls,
            (start, start + plan.node_deadline),
            plan.node_deadline,
            true,
        )
        .await;
    // A contest is settled by its smallest token (see `Standing`): the
    // others give their nodes back, and the leader asks those nodes again.
    let mut standing = tally.standing(&token);
    let mut asked_again: Option<InFlight> = None;
    if let ([key], None, None) = (&keys[..], &fence_keys, &admission) {
        let mut rounds = 0;
        while standing == Standing::Lead
            && rounds < ASK_AGAIN_ROUNDS
            && start.elapsed() < plan.node_deadline
        {
            rounds += 1;
            if rounds == 1 {
                // The contenders decided when we did and are deleting
                // their keys now: a few turns of the scheduler usually
                // let those deletes out before our SETs.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            } else {
                tokio::time::sleep(ASK_AGAIN_PAUSE).await;
            }
            let nodes = tally.reopen_held();
            let mut again: Fanout<_> = (0..inner.nodes.len())
                .filter(|i| nodes & (1u64 << i) != 0)
                .map(|i| {
                    let (inner, key, token) = (inner.clone(), key.clone(), token.clone());
                    let with_get = with_get.clone();
                    async move {
                        let node = &inner.nodes[i];
                        let reply = node
                            .ask_again(&key, &token, plan.ttl_ms, with_get.as_deref())
                            .await;
                        (i, reply)
                    }
                })
                .collect();
            let now = Instant::now();
            let window = (now, now + plan.node_deadline);
            quorum::gather(&mut again, &mut tally, window, plan.node_deadline, None).await;
            asked_again = merge(asked_again, in_flight(again));
            standing = tally.standing(&token);
        }
    }
    // The largest counter among the voters, plus one, made durable on a
    // quorum before the lock is handed out.
    let reader = admission.as_ref().is_some_and(|a| a.side == Side::Read);
    let fence = match (&fence_keys, &counters, tally.decision()) {
        (Some(_), Some(counters), Some(Decision::Won)) if reader => {
            // Readers share: they only learn the last writer's fence.
            Ok(counters.iter().map(|c| c.load(Ordering::SeqCst)).max())
        }
        (Some(fence_keys), Some(counters), Some(Decision::Won)) => {
            let fence = counters
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .max()
                .unwrap_or(1);
            let commit = commit_fence(inner, (&keys, fence_keys, &token), fence, plan).await;
            if commit.decision() == Some(Decision::Won) {
                Ok(Some(fence))
            } else {
                // Exclusion is fine, but the token could not be made durable.
                Err(commit.error())
            }
        }
        _ => Ok(None),
    };
    let elapsed = start.elapsed();
    let validity = quorum::validity(ttl, elapsed, plan.drift);
    guard.armed = false;
    tracing::debug!(
        key = &*keys[0],
        keys = keys.len(),
        won = tally.decision() == Some(Decision::Won),
        votes = tally.votes(),
        quorum = tally.quorum(),
        refused = tally.refused(),
        unknown = tally.unknown(),
        failed = tally.failures().len(),
        ?elapsed,
        ?validity,
        ?fence,
        ?standing,
        "quorumlock acquire attempt"
    );

    let error = match (fence, tally.decision(), validity) {
        (Ok(fence), Some(Decision::Won), Some(validity)) => {
            // Replies already in need no task to drive them.
            while let Some(Some(_)) = calls.next().now_or_never() {}
            // SETs still out are driven by the lock (see `watch_late_sets`).
            return Ok(Lock::new(
                inner.clone(),
                keys,
                token,
                ttl,
                ((start + validity).into_std(), validity, suspended),
                merge(in_flight(calls), asked_again),
                (fence, admission.as_ref().and_then(|a| a.companions())),
            ));
        }
        (Err(error), _, _) => error,
        (_, Some(Decision::Won), None) => Error::ValidityExhausted { elapsed, ttl },
        _ => match admission.as_ref().and_then(|a| a.name_in_use()) {
            Some(error) => error,
            None => tally.error(),
        },
    };
    // Released in the background: the caller can retry at once.
    Cleanup::discard(inner.clone(), keys, token, ttl)
        .with_late_sets(merge(in_flight(calls), asked_again))
        .run(None);
    Err(Failed {
        error,
        seen_held: tally.refused() > 0,
        contest: standing,
    })
}

/// Times a contest's leader asks again the nodes its contenders held.
const ASK_AGAIN_ROUNDS: u32 = 4;

/// The leader's pause before asking again: time for the other contenders
/// to hear their replies and delete their keys.
const ASK_AGAIN_PAUSE: Duration = Duration::from_millis(1);

/// Writes `fence` back to every node still holding our key; returns once a
/// quorum confirmed it (or cannot), and lets the other writes finish in the
/// background: landing beyond a quorum keeps the counter safe when one node
/// later loses its data.
async fn commit_fence(
    inner: &Arc<Inner>,
    (keys, fence_keys, token): (&Keys, &Keys, &Arc<str>),
    fence: u64,
    plan: Plan,
) -> Tally {
    let mut calls = inner.fan_out(|inner, i| {
        let (keys, fence_keys, token) = (keys.clone(), fence_keys.clone(), token.clone());
        async move {
            let reply = inner.nodes[i]
                .commit_fence(&inner.scripts, &keys, &fence_keys, &token, fence)
                .await;
            (i, reply)
        }
    });
    let deadline = Instant::now() + plan.node_deadline;
    let tally = inner.gather(&mut calls, deadline, plan.node_deadline).await;
    if !calls.is_empty() {
        tokio::task::yield_now().await;
    }
    Cleanup::discard(inner.clone(), keys.clone(), token.clone(), plan.ttl)
        .finishing(in_flight(calls))
        .run(None);
    tally
}

/// Removes an attempt's keys unless the attempt won: after a failed vote,
/// and when the caller drops the attempt midway.
struct AttemptGuard {
    pub(crate) inner: Arc<Inner>,
    keys: Keys,
    token: Arc<str>,
    ttl: Duration,
    armed: bool,
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if self.armed {
            Cleanup::discard(
                self.inner.clone(),
                self.keys.clone(),
                self.token.clone(),
                self.ttl,
            )
            .run(None);
        }
    }
}

/// Contests in a row whose quick retries are not counted as attempts.
const FREE_CONTEST_RETRIES: u32 = 6;

/// A random wait within 2, 4, 8, ... ms after `contests` contested
/// attempts in a row.
fn contest_backoff(contests: u32) -> Duration {
    let window_us = 1_000u64 << contests.clamp(1, 10);
    Duration::from_micros(rand::random_range(0..window_us))
}

/// 128 random bits from the operating system, as 32 hex digits readable
/// in `redis-cli`. Not from a generator kept in the process: a child made
/// by `fork()` inherits that generator's state and would draw the parent's
/// next tokens, and a node that answers with our own token counts as our
/// vote, so both would hold the lock. (The thread generator, reseeded by
/// nothing, stands in only if the OS refuses, with the process id mixed in
/// so that a parent and its child still differ.)
fn new_token() -> Arc<str> {
    use rand::TryRngCore;
    let mut bits = [0u8; 16];
    let drawn = match rand::rngs::OsRng.try_fill_bytes(&mut bits) {
        Ok(()) => u128::from_le_bytes(bits),
        Err(_) => rand::random::<u128>() ^ u128::from(std::process::id()),
    };
    token_text(drawn)
}

fn token_text(bits: u128) -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, c) in text.iter_mut().enumerate() {
        *c = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are ASCII, so this cannot fail.
    Arc::from(std::str::from_utf8(&text).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{new_token, token_text};

    #[test]
    fn token_text_is_zero_padded_lowercase_hex() {
        let bits = 0x0123_4567_89ab_cdef_0000_0000_0000_00ffu128;
        assert_eq!(&*token_text(bits), format!("{bits:032x}"));
        assert_eq!(&*token_text(0), "0".repeat(32));
    }

    #[test]
    fn tokens_are_128_bit_hex_and_fresh() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
