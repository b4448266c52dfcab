//! The handle a caller holds while it owns a resource, the state it shares
//! with its [`Guard`]s and its keep-alive task, and the lost-lock signal.
//! Dropping the handle stops the keep-alive task and releases the lock from
//! a detached task, so a panic or an early return never leaves the resource
//! blocked for a whole TTL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Notify;

use crate::link::lock;

use super::admission::Admission;
use super::cleanup::{delete_on, in_flight, still_out, Cleanup, InFlight};
use super::{Inner, Keys};
use crate::clock;
use crate::error::{FailureKind, LossCause};
use crate::quorum::{self, Decision, Reply};
use crate::Error;

/// How much earlier than its stop point the lost signal is aimed, for a
/// stop margin of `margin`: tokio's timers round up to the next
/// millisecond, and on a busy machine a woken task waits for a core: with
/// both cores of a 2-core machine busy, 1.2 ms late at the median, 5 ms at
/// the 99th percentile and 11 ms once in 800 runs. A quarter of the
/// margin, 15 to 50 ms, plus the millisecond of rounding.
fn timer_slack(margin: Duration) -> Duration {
    (margin / 4).clamp(Duration::from_millis(15), Duration::from_millis(50))
        + Duration::from_millis(1)
}

/// How often a waiting `lost()` reads the clocks again: a suspend moves
/// its stop point earlier without waking its timer (see [`clock`]).
const SUSPEND_CHECK: Duration = Duration::from_secs(1);

/// The first instant at or after `at - by` that can be represented.
fn before(at: Instant, by: Duration) -> Instant {
    // Only an `Instant` near the clock's origin cannot go back: the
    // signal is then due at once.
    at.checked_sub(by).unwrap_or_else(Instant::now)
}

/// Where a lock stands; published to guards and the keep-alive task.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// End of the current validity.
    deadline: Instant,
    /// Length of the current validity (for "a share of it is left").
    validity: Duration,
    ttl: Duration,
    lost: bool,
    released: bool,
    /// Why it was lost, once it was.
    cause: Option<LossCause>,
    /// The time the holder needs to stop its work (see
    /// [`KeepAlive::stop_margin`]); `None`: a tenth of the TTL.
    margin: Option<Duration>,
    /// [`clock::suspended`] when `deadline` was set.
    suspended: Duration,
}

impl Status {
    fn stop_margin(&self) -> Duration {
        self.margin.unwrap_or(self.ttl / 10)
    }

    /// The deadline, moved earlier by any suspend since it was set: the
    /// nodes' clocks ran on while ours stood still.
    fn deadline(&self) -> Instant {
        before(self.deadline, clock::slept_since(self.suspended))
    }

    /// When the holder is told to stop: the stop margin before the
    /// deadline, less the timer slack, so that `lost()` completes by
    /// `deadline - margin` even when its timer runs late.
    fn stop_at(&self) -> Instant {
        let margin = self.stop_margin();
        before(self.deadline(), margin.saturating_add(timer_slack(margin)))
    }
}

fn no_keys() -> Keys {
    Arc::from([])
}

/// State shared by a lock, its guards and its keep-alive task.
struct Shared {
    inner: Arc<Inner>,
    /// Key prefix + resource, one per resource (all held together).
    keys: Keys,
    token: Arc<str>,
    fence: Option<u64>,
    /// Keys that must live as long as the lock's, extended with them (a
    /// permit's count record); empty for most locks.
    companions: Keys,
    /// Keys whose release channels the release announces on too (see
    /// [`Admission::also_announce`]); empty for most locks.
    also_announce: Keys,
    /// The current status; `changed` wakes the waiters of `lost()` and the
    /// keep-alive task whenever it changes.
    status: std::sync::Mutex<Status>,
    changed: Notify,
    /// Nodes where the release deleted our key, final once `settled`.
    deleted: AtomicU64,
    settled: AtomicBool,
    settle: Notify,
    /// One extend at a time, whether the holder's or the keep-alive's.
    extending: tokio::sync::Mutex<()>,
    /// Where background releases run, even if the lock is dropped on a
    /// thread outside the runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl Shared {
    fn resource(&self) -> &str {
        self.inner.resource_of(&self.keys[0])
    }

    fn status(&self) -> Status {
        *lock(&self.status)
    }

    /// Changes the status and wakes whoever waits for a change; returns
    /// the status it had before.
    fn update(&self, change: impl FnOnce(&mut Status)) -> Status {
        let before = {
            let mut s = lock(&self.status);
            let before = *s;
            change(&mut s);
            before
        };
        self.changed.notify_waiters();
        before
    }

    /// Whether the release's compare-and-delete removed our key on `node`;
    /// waits for the release's replies, at most the node timeout.
    async fn deleted_by_release(&self, node: usize) -> bool {
        let settled = self.settle.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        if !self.settled.load(Ordering::Acquire) {
            let wait = self.inner.release_timeout.max(self.inner.node_timeout);
            let _ = tokio::time::timeout(wait, settled).await;
        }
        self.deleted.load(Ordering::Acquire) & (1u64 << node) != 0
    }

    /// Marks the lock released (and lost with `cause`, if given); returns
    /// the status it had before, so exactly one caller starts the release.
    fn mark_released(&self, cause: Option<LossCause>) -> Status {
        self.update(|s| {
            s.released = true;
            if cause.is_some() && !s.lost {
                s.lost = true;
                s.cause = cause;
            }
        })
    }

    fn is_held(&self) -> bool {
        let s = self.status();
        !s.lost && !s.released && Instant::now() < s.stop_at()
    }

    fn remaining(&self) -> Duration {
        self.status()
            .stop_at()
            .saturating_duration_since(Instant::now())
    }

    fn lost_error(
        &self,
        votes: usize,
        cause: LossCause,
        source: Option<redis::RedisError>,
    ) -> Error {
        Error::Lost {
            resource: self.resource().to_string(),
            votes,
            quorum: quorum::quorum(self.inner.nodes.len()),
            cause,
            source,
        }
    }

    /// Why the lock is not held any more, as an error.
    fn loss(&self) -> Error {
        let s = self.status();
        let cause = match s.cause {
            Some(cause) => cause,
            None if s.released => LossCause::AlreadyGone,
            None => LossCause::Expired,
        };
        self.lost_error(0, cause, None)
    }

    /// Marks the lock lost and, unless that happened already, removes what
    /// keys of ours remain.
    fn lose(&self, votes: usize, cause: LossCause, source: Option<redis::RedisError>) -> Error {
        tracing::warn!(key = &*self.keys[0], votes, %cause, "quorumlock lock lost");
        crate::stats::lost(cause);
        if !self.mark_released(Some(cause)).released {
            Cleanup::release(
                self.inner.clone(),
                self.keys.clone(),
                self.token.clone(),
                self.status().ttl,
            )
            .announcing(self.also_announce.clone())
            .run(self.runtime.as_ref());
        }
        self.lost_error(votes, cause, source)
    }

    /// See [`Lock::extend`]; `wait` (default: the node deadline) is how long
    /// to wait for a quorum of replies, never past the current deadline.
    async fn extend(&self, ttl: Duration, wait: Option<Duration>) -> Result<(), Error> {
        let result = self.extend_once(ttl, wait).await;
        if !matches!(result, Err(Error::InvalidInput(_))) {
            crate::stats::extension(result.is_ok());
        }
        result
    }

    async fn extend_once(&self, ttl: Duration, wait: Option<Duration>) -> Result<(), Error> {
        let plan = self.inner.plan(ttl)?;
        let _one_at_a_time = self.extending.lock().await;
        let suspended = clock::suspended();
        let start = tokio::time::Instant::now();
        let current = self.status();
        if current.lost || current.released {
            return Err(self.loss());
        }
        // Past the stop point the holder has been told to stop: an
        // extension then would contradict `lost()`.
        let stop_at = current.stop_at();
        if start.into_std() >= stop_at {
            return Err(self.lose(0, LossCause::Expired, None));
        }
        let mut calls = self.inner.fan_out(|inner, i| {
            let (key, token) = (self.keys.clone(), self.token.clone());
            let companions = self.companions.clone();
            async move {
                let reply = inner.nodes[i]
                    .extend(&inner.scripts, &key, &companions, &token, plan.ttl_ms)
                    .await;
                (i, reply)
            }
        });
        let wait = wait.unwrap_or(plan.node_deadline);
        let deadline = quorum::deadline_in(wait).min(tokio::time::Instant::from_std(stop_at));
        let tally = self.inner.gather(&mut calls, deadline, wait).await;
        Cleanup::release(
            self.inner.clone(),
            self.keys.clone(),
            self.token.clone(),
            plan.ttl,
        )
        .finishing(in_flight(calls))
        .run(self.runtime.as_ref());

        let validity = quorum::validity(plan.ttl, start.elapsed(), plan.drift);
        let in_time = Instant::now() < current.stop_at();
        match (tally.decision(), validity) {
            (Some(Decision::Won), Some(validity)) if in_time => {
                tracing::debug!(
                    key = &*self.keys[0],
                    votes = tally.votes(),
                    ?validity,
                    "quorumlock extended"
                );
                self.update(|s| {
                    s.deadline = (start + validity).into_std();
                    s.validity = validity;
                    s.ttl = plan.ttl;
                    s.suspended = suspended;
                });
                Ok(())
            }
            _ if tally.held_elsewhere() => {
                let source = tally.first_error(|_| true);
                Err(self.lose(tally.votes(), LossCause::NotOurs, source))
            }
            _ if !in_time => {
                let source = tally.first_error(|_| true);
                Err(self.lose(tally.votes(), LossCause::Expired, source))
            }
            // Not confirmed, not refused: the lock stays ours until its
            // current deadline, and the caller may try again.
            _ => Err(tally.error()),
        }
    }

    /// Completes when ownership can no longer be guaranteed for the time
    /// the holder needs to stop: the lock was lost or released, or its stop
    /// point came (see [`Status::stop_at`]).
    async fn lost(&self) {
        loop {
            // Registered before the status is read: no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let s = self.status();
            if s.lost || s.released {
                return;
            }
            let stop_at = s.stop_at();
            let now = Instant::now();
            if now >= stop_at {
                return;
            }
            let wake = if cfg!(target_os = "linux") {
                stop_at.min(now + SUSPEND_CHECK)
            } else {
                stop_at
            };
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// When and how long [`Lock::keep_alive`] extends a lock.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
/// use quorumlock::KeepAlive;
///
/// let mut lock = redlock.acquire("export", Duration::from_secs(10)).await?;
/// // Extend when a quarter of the validity is left, for at most 10 minutes.
/// lock.keep_alive(
///     KeepAlive::new()
///         .when_left(0.25)
///         .max_hold(Some(Duration::from_secs(600))),
/// );
/// tokio::select! {
///     () = export() => lock.release().await?,
///     () = lock.lost() => eprintln!("lost the lock: export stopped"),
/// }
/// # Ok(()) }
/// # async fn export() {}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KeepAlive {
    share_left: f64,
    max_hold: Option<Duration>,
    stop_margin: Option<Duration>,
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self {
            share_left: 1.0 / 3.0,
            max_hold: None,
            stop_margin: None,
        }
    }
}

impl KeepAlive {
    /// Extend when a third of the validity is left, with no limit on the
    /// total hold time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extend when this share of the validity is left (clamped to
    /// `0.05..=0.95`; NaN is read as the default). Default: 1/3.
    ///
    /// ```
    /// let policy = quorumlock::KeepAlive::new().when_left(0.5);
    /// # let _ = policy;
    /// ```
    #[must_use]
    pub fn when_left(mut self, share: f64) -> Self {
        self.share_left = if share.is_nan() {
            Self::default().share_left
        } else {
            share.clamp(0.05, 0.95)
        };
        self
    }

    /// Stop extending once the lock has been held this long (counted from
    /// `keep_alive`); the lock then runs out at its deadline, and the lost
    /// signal fires. A limit too large for the clock means none. Default:
    /// none.
    #[must_use]
    pub fn max_hold(mut self, limit: Option<Duration>) -> Self {
        self.max_hold = limit;
        self
    }

    /// The time the work needs to stop once told: if the lock cannot be
    /// extended, [`Lock::lost`] completes this long before the deadline
    /// (aimed a little earlier still, so a late timer is not late), and
    /// from then on [`Lock::is_held`] is `false` and the keep-alive stops
    /// trying. Default: the manager's
    /// [`Builder::stop_margin`](crate::Builder::stop_margin), itself a
    /// tenth of the TTL unless set. A margin as long as the validity makes
    /// the lock lost at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// // The work needs up to 2 s to reach a safe point and stop.
    /// let policy = quorumlock::KeepAlive::new().stop_margin(Duration::from_secs(2));
    /// # let _ = policy;
    /// ```
    #[must_use]
    pub fn stop_margin(mut self, margin: Duration) -> Self {
        self.stop_margin = Some(margin);
        self
    }
}

/// Drives the acquire's `SET`s that were still out when the vote was
/// decided, so each reaches its node now (rule 3: all nodes at once), not
/// at the next call. One that lands after the lock was released would block
/// that node for a whole TTL, so it gets its own compare-and-delete.
async fn watch_late_sets(shared: Arc<Shared>, mut sets: InFlight) {
    let ttl = shared.status().ttl;
    let work = async {
        while let Some((i, reply)) = sets.next().await {
            if !(reply.may_have_landed() && shared.status().released) {
                continue;
            }
            if matches!(reply, Reply::Yes) && shared.deleted_by_release(i).await {
                // The release found and deleted our key there: this SET
                // landed before it, and it was the attempt's only SET on
                // that node (a repeated one says `YesRetried`).
                continue;
            }
            delete_on(&shared.inner, i, &shared.keys, &shared.token).await;
        }
    };
    let _ = tokio::time::timeout(ttl, work).await;
}

/// Aborts the keep-alive task when the lock goes away: it never outlives
/// its lock.
struct KeepAliveTask(tokio::task::JoinHandle<()>);

impl Drop for KeepAliveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Extends the lock each time the policy's share of the validity is left.
/// An extension that is not confirmed (nodes slow, unreachable, refusing)
/// is tried again at once, each time waiting twice as long for replies,
/// while the current deadline allows: ownership is certain until then, so
/// giving up earlier would drop a lock that is still ours. Only an answer
/// that our key is gone ends it early; otherwise `lost()` fires at the
/// deadline.
async fn keep_alive(shared: Arc<Shared>, policy: KeepAlive) {
    let stop_at = policy.max_hold.and_then(|d| Instant::now().checked_add(d));
    // Unconfirmed extensions in a row, and when to try the next one.
    let mut retries: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    loop {
        // Registered before the status is read: no change is missed.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let s = shared.status();
        if s.lost || s.released {
            return;
        }
        let Ok(plan) = shared.inner.plan(s.ttl) else {
            return;
        };
        // Never later than leaves two node deadlines before the stop
        // point, whatever the policy's share: an extension confirmed after
        // it would come too late.
        let last_chance = before(s.stop_at(), plan.node_deadline.saturating_mul(2));
        let due = retry_at
            .unwrap_or_else(|| before(s.deadline(), s.validity.mul_f64(policy.share_left)))
            .min(last_chance);
        if stop_at.is_some_and(|stop| due >= stop) {
            return;
        }
        tokio::select! {
            // A manual extend moved the deadline: plan again.
            () = changed => {
                retries = 0;
                retry_at = None;
            }
            () = tokio::time::sleep_until(due.into()) => {
                let wait = plan.node_deadline.saturating_mul(1u32 << retries.min(16));
                let left = shared.status().stop_at().saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return; // too late to confirm anything: `lost()` fires
                }
                match shared.extend(s.ttl, Some(wait.min(left))).await {
                    Ok(()) => {
                        retries = 0;
                        retry_at = None;
                    }
                    Err(e) if e.is_lost() || e.is_invalid() && !e.is_refused() => return,
                    Err(e) => {
                        tracing::debug!(error = %e, retries, "quorumlock extension not confirmed; trying again");
                        retries += 1;
                        // A pause, so nodes that fail fast are not hammered.
                        retry_at = Some(Instant::now() + plan.node_deadline.min(left / 4));
                    }
                }
            }
        }
    }
}

/// Ownership of a resource on a quorum of nodes, until [`deadline`](Self::deadline).
///
/// The lock is only trustworthy before its deadline: check
/// [`remaining`](Self::remaining) before acting on the resource, and
/// [`extend`](Self::extend) it when work runs long, or let
/// [`keep_alive`](Self::keep_alive) do that and watch [`lost`](Self::lost).
/// Dropping a `Lock` releases it in the background; [`release`](Self::release)
/// does the same and reports how it went.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
///
/// let mut lock = redlock.acquire("invoice:42", Duration::from_secs(10)).await?;
/// for batch in 0..10 {
///     if lock.remaining() < Duration::from_secs(2) {
///         lock.extend(Duration::from_secs(10)).await?; // or Error::Lost: stop
///     }
///     // ... work on batch `batch`, only while the lock is held ...
/// #   let _ = batch;
/// }
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping a Lock releases it at once"]
pub struct Lock {
    shared: Arc<Shared>,
    keeper: Option<KeepAliveTask>,
    /// Dropped with the handle, after its release has begun (see
    /// [`Lock::keeping`]).
    keepsake: Option<Keepsake>,
}

/// What a primitive keeps with a lock until its handle is gone: a
/// semaphore's note that this process holds the permit's slot.
pub(crate) type Keepsake = Box<dyn std::any::Any + Send + Sync>;

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource())
            .field("token", &self.shared.token)
            .field("fence", &self.shared.fence)
            .field("status", &self.shared.status())
            .finish_non_exhaustive()
    }
}

impl Lock {
    pub(crate) fn new(
        inner: Arc<Inner>,
        (keys, token, ttl): (Keys, Arc<str>, Duration),
        (deadline, validity, suspended): (Instant, Duration, Duration),
        late_sets: Option<InFlight>,
        (fence, admission): (Option<u64>, &Admission),
    ) -> Self {
        let status = Status {
            deadline,
            validity,
            ttl,
            lost: false,
            released: false,
            cause: None,
            margin: inner.stop_margin,
            suspended,
        };
        let shared = Shared {
            inner,
            keys,
            token,
            fence,
            companions: admission.companions.clone().unwrap_or_else(no_keys),
            also_announce: admission.also_announce.clone().unwrap_or_else(no_keys),
            status: std::sync::Mutex::new(status),
            changed: Notify::new(),
            deleted: AtomicU64::new(0),
            settled: AtomicBool::new(false),
            settle: Notify::new(),
            extending: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        let shared = Arc::new(shared);
        if let Some(sets) = late_sets {
            let watcher = watch_late_sets(shared.clone(), sets);
            match shared.runtime.as_ref() {
                Some(runtime) => drop(runtime.spawn(watcher)),
                None => drop(tokio::spawn(watcher)),
            }
        }
        Self {
            shared,
            keeper: None,
            keepsake: None,
        }
    }

    /// Keeps `keepsake` until the handle is released or dropped.
    pub(crate) fn keeping(mut self, keepsake: Keepsake) -> Self {
        self.keepsake = Some(keepsake);
        self
    }

    /// The resource name as it was passed to `acquire` (the first one, for
    /// a lock on several resources).
    pub fn resource(&self) -> &str {
        self.shared.resource()
    }

    /// The Redis key holding the lock (key prefix + resource); the first
    /// one for a lock on several resources.
    pub fn key(&self) -> &str {
        &self.shared.keys[0]
    }

    /// Every resource this lock holds, in the order they were asked for
    /// (one, unless it came from [`acquire_many`](crate::Redlock::acquire_many)).
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.shared
            .keys
            .iter()
            .map(|k| self.shared.inner.resource_of(k))
    }

    /// This holder's random token: the value stored under the key.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The fencing token, for a lock acquired with fencing: strictly larger
    /// than any earlier holder's of the same resource.
    pub fn fence(&self) -> Option<u64> {
        self.shared.fence
    }

    /// The TTL of the last successful acquire or extend.
    pub fn ttl(&self) -> Duration {
        self.shared.status().ttl
    }

    /// The instant the lock stops being valid: start of the acquire (or
    /// last extend) plus its validity, drift already subtracted (and, on
    /// Linux, moved earlier by any time the machine was suspended since).
    pub fn deadline(&self) -> Instant {
        self.shared.status().deadline()
    }

    /// The time the work is given to stop before the deadline (see
    /// [`KeepAlive::stop_margin`]).
    pub fn stop_margin(&self) -> Duration {
        self.shared.status().stop_margin()
    }

    /// Time left to work: until [`lost`](Self::lost) fires, at the latest
    /// the [`stop_margin`](Self::stop_margin) before the
    /// [`deadline`](Self::deadline); zero from then on.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// `false` once the lock was lost or released, or its stop point came
    /// (when [`lost`](Self::lost) fires: the
    /// [`stop_margin`](Self::stop_margin) before the deadline, or a little
    /// earlier).
    pub fn is_held(&self) -> bool {
        self.shared.is_held()
    }

    /// A cheap handle to watch this lock from elsewhere (for example from
    /// the work it protects): [`Guard::lost`], [`Guard::remaining`].
    pub fn guard(&self) -> Guard {
        Guard {
            shared: self.shared.clone(),
        }
    }

    /// Completes as soon as ownership can no longer be guaranteed for the
    /// time the work needs to stop: an extend was refused, or no extension
    /// came before the stop point. It completes no later than the
    /// [`stop_margin`](Self::stop_margin) before the deadline (it is aimed
    /// a little earlier, since timers run late on a busy machine), so the
    /// work has that margin to stop while the lock is still held. On Linux
    /// a suspend of the machine counts as time passed: a lock whose keys
    /// expired while the process slept reads as lost within a second of
    /// the resume.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(mut lock: quorumlock::Lock) {
    /// # async fn long_work() {}
    /// lock.keep_alive(quorumlock::KeepAlive::new());
    /// tokio::select! {
    ///     () = long_work() => {}
    ///     () = lock.lost() => eprintln!("lock lost: stopping"),
    /// }
    /// # }
    /// ```
    pub async fn lost(&self) {
        self.shared.lost().await;
    }

    /// Keeps the lock alive in the background: each time the given share of
    /// the validity is left, it is extended by its TTL (with quorum and
    /// ownership, as [`extend`](Self::extend)). The task stops on release or
    /// drop, after a failed extend (the lock is then lost: [`lost`](Self::lost)
    /// fires), or at the policy's maximum hold time. Calling it again
    /// replaces the policy.
    pub fn keep_alive(&mut self, policy: KeepAlive) {
        if let Some(margin) = policy.stop_margin {
            self.shared.update(|s| s.margin = Some(margin));
        }
        let task = keep_alive(self.shared.clone(), policy);
        let handle = match self.shared.runtime.as_ref() {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        };
        self.keeper = Some(KeepAliveTask(handle));
    }

    /// Resets the lock's expiry to `ttl` on every node where we still own it.
    /// It succeeds only with a quorum, before the current deadline; the new
    /// deadline counts from the start of this call.
    ///
    /// # Errors
    /// [`Error::Lost`] when ownership is gone: the deadline had passed, or
    /// enough nodes answered that our key is gone or another's. The lock is
    /// then released and never re-acquired silently; every later `extend`
    /// fails the same way. [`Error::Unavailable`], [`Error::Refused`] or
    /// [`Error::Redis`] when too few nodes confirmed in time for another
    /// reason: the lock stays ours until its current
    /// [`deadline`](Self::deadline) and `extend` may be tried again (the
    /// keep-alive task does so). [`Error::InvalidInput`] for an unusable TTL,
    /// and [`Error::NoRuntime`] outside tokio without a runtime to hand the
    /// call to; the lock is then untouched.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(mut lock: quorumlock::Lock) -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// if lock.remaining() < Duration::from_secs(3) {
    ///     lock.extend(Duration::from_secs(10)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        let shared = self.shared.clone();
        on_runtime(&self.shared.runtime, async move {
            shared.extend(ttl, None).await
        })
        .await
    }

    /// What releasing this lock involves.
    fn cleanup(&self) -> Cleanup {
        let s = &self.shared;
        Cleanup::release(
            s.inner.clone(),
            s.keys.clone(),
            s.token.clone(),
            s.status().ttl,
        )
        .announcing(s.also_announce.clone())
    }

    /// Deletes the lock on every node where it still holds our token (an
    /// atomic compare-and-delete, sent to all nodes at once).
    ///
    /// # Errors
    /// [`Error::Lost`] when enough nodes answered that our key was gone
    /// already (it expired, or the lock was lost earlier): nothing of ours
    /// remains there. [`Error::Unavailable`] when too few nodes answered to
    /// tell, and [`Error::Refused`] or [`Error::Redis`] when nodes could not
    /// run the compare-and-delete (a permission, a renamed command): keys of
    /// ours may then stay on those nodes until the TTL, and the error's
    /// [`failures`](Error::failures) say where and why.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(lock: quorumlock::Lock) {
    /// if let Err(e) = lock.release().await {
    ///     eprintln!("release: {e}");
    /// }
    /// # }
    /// ```
    pub async fn release(self) -> Result<(), Error> {
        let runtime = self.shared.runtime.clone();
        on_runtime(&runtime, self.release_here()).await
    }

    async fn release_here(mut self) -> Result<(), Error> {
        self.keeper = None;
        let before = self.shared.mark_released(None);
        let cleanup = self.cleanup();
        // If the caller stops awaiting midway, the guard releases in the
        // background instead.
        let runtime = self.shared.runtime.clone();
        let mut guard = ReleaseGuard(Some(cleanup), runtime.clone());
        let (tally, pending) = self
            .shared
            .inner
            .release_quorum(
                &self.shared.keys,
                &self.shared.token,
                Some(&self.shared.also_announce),
            )
            .await;
        self.shared
            .deleted
            .fetch_or(tally.yes_nodes(), Ordering::AcqRel);
        self.shared.settled.store(true, Ordering::Release);
        self.shared.settle.notify_waiters();
        if let Some(cleanup) = guard.0.take() {
            let unanswered = tally
                .failures()
                .iter()
                .filter(|f| f.kind() == FailureKind::Unreachable)
                .map(|f| f.node());
            cleanup
                .finishing_deletes(pending)
                .waiting_on(still_out(&tally))
                .deleting_again(unanswered)
                .run(runtime.as_ref());
        }
        if before.lost || before.released {
            Err(self.shared.loss())
        } else if tally.votes() >= tally.quorum() {
            let wakeups = &self.shared.inner.wakeups;
            wakeups.released_here(&self.shared.keys);
            wakeups.released_here(&self.shared.also_announce);
            Ok(())
        } else if tally.held_elsewhere() {
            let source = tally.first_error(|_| true);
            Err(self
                .shared
                .lost_error(tally.votes(), LossCause::NotOurs, source))
        } else {
            Err(tally.error())
        }
    }

    /// Why the lock is gone, for `with_lock`.
    pub(crate) fn loss(&self) -> Error {
        self.shared.loss()
    }
}

/// Runs `work` here inside a tokio runtime; polled elsewhere (another
/// executor), hands it to the lock's runtime and waits for it there.
async fn on_runtime<T: Send + 'static>(
    runtime: &Option<tokio::runtime::Handle>,
    work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return work.await;
    }
    match runtime {
        Some(runtime) => runtime.spawn(work).await.unwrap_or(Err(Error::NoRuntime)),
        None => Err(Error::NoRuntime),
    }
}

/// Runs a release's clean-up in the background if the release future is
/// dropped before it finished.
struct ReleaseGuard(Option<Cleanup>, Option<tokio::runtime::Handle>);

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if let Some(cleanup) = self.0.take() {
            cleanup.run(self.1.as_ref());
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper = None;
        if !self.shared.mark_released(None).released {
            self.cleanup().run(self.shared.runtime.as_ref());
        }
    }
}

/// A watcher of a [`Lock`], handed to the work it protects (see
/// [`Redlock::with_lock`](crate::Redlock::with_lock)). It cannot release or
/// extend the lock; it can tell when the lock is lost.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
///
/// let copied = redlock
///     .with_lock("backup", Duration::from_secs(10), |guard| async move {
///         let mut copied = 0;
///         // Stop between files once the lock is no longer certain.
///         while copied < 1000 && guard.is_held() {
///             copied += 1; // ... copy one file ...
///         }
///         copied
///     })
///     .await?;
/// # let _ = copied;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Guard {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("resource", &self.shared.resource())
            .field("status", &self.shared.status())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// The resource name.
    pub fn resource(&self) -> &str {
        self.shared.resource()
    }

    /// The lock's fencing token, if it was acquired with fencing.
    pub fn fence(&self) -> Option<u64> {
        self.shared.fence
    }

    /// The lock's current deadline (it moves with each extension).
    pub fn deadline(&self) -> Instant {
        self.shared.status().deadline()
    }

    /// As [`Lock::stop_margin`].
    pub fn stop_margin(&self) -> Duration {
        self.shared.status().stop_margin()
    }

    /// As [`Lock::remaining`]: time left to work.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// `false` once the lock is lost, released, or past its deadline.
    pub fn is_held(&self) -> bool {
        self.shared.is_held()
    }

    /// As [`Lock::lost`].
    pub async fn lost(&self) {
        self.shared.lost().await;
    }
}
