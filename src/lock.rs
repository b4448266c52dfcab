//! The handle a caller holds while it owns a resource, the state it shares
//! with its [`Guard`]s and its keep-alive task, and the lost-lock signal.
//! Dropping the handle stops the keep-alive task and releases the lock from
//! a detached task, so a panic or an early return never leaves the resource
//! blocked for a whole TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use crate::cleanup::{in_flight, may_have_landed, Cleanup, InFlight};
use crate::quorum::{self, Decision, Tally};
use crate::redlock::{Inner, Keys};
use crate::Error;

/// The signal fires this long before the deadline, so it is never late
/// (tokio's timers round up to the next millisecond).
const LOST_MARGIN: Duration = Duration::from_millis(2);

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
}

/// State shared by a lock, its guards and its keep-alive task.
struct Shared {
    inner: Arc<Inner>,
    /// Key prefix + resource, one per resource (all held together).
    keys: Keys,
    token: Arc<str>,
    fence: Option<u64>,
    status: watch::Sender<Status>,
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
        *self.status.borrow()
    }

    /// Marks the lock released (and lost, if `lost`); returns the status it
    /// had before, so exactly one caller starts the release.
    fn mark_released(&self, lost: bool) -> Status {
        let mut before = self.status();
        self.status.send_modify(|s| {
            before = *s;
            s.released = true;
            s.lost |= lost;
        });
        before
    }

    fn is_held(&self) -> bool {
        let s = self.status();
        !s.lost && !s.released && Instant::now() < s.deadline
    }

    fn remaining(&self) -> Duration {
        self.status()
            .deadline
            .saturating_duration_since(Instant::now())
    }

    fn lost_error(&self, votes: usize, quorum: usize) -> Error {
        Error::Lost {
            resource: self.resource().to_string(),
            votes,
            quorum,
        }
    }

    /// Marks the lock lost and, unless that happened already, removes what
    /// keys of ours remain.
    fn lose(&self, votes: usize, quorum: usize) -> Error {
        tracing::warn!(key = &*self.keys[0], votes, quorum, "quorumlock lock lost");
        if !self.mark_released(true).released {
            Cleanup::release(
                self.inner.clone(),
                self.keys.clone(),
                self.token.clone(),
                self.status().ttl,
            )
            .run(self.runtime.as_ref());
        }
        self.lost_error(votes, quorum)
    }

    /// See [`Lock::extend`].
    async fn extend(&self, ttl: Duration) -> Result<(), Error> {
        let plan = self.inner.plan(ttl)?;
        let quorum = quorum::quorum(self.inner.nodes.len());
        let _one_at_a_time = self.extending.lock().await;
        let start = tokio::time::Instant::now();
        let current = self.status();
        if current.lost || current.released || start.into_std() >= current.deadline {
            return Err(self.lose(0, quorum));
        }
        let mut calls = self.inner.fan_out(|inner, i| {
            let (key, token) = (self.keys.clone(), self.token.clone());
            async move {
                let reply = inner.nodes[i]
                    .extend(&inner.scripts, &key, &token, plan.ttl_ms)
                    .await;
                (i, reply)
            }
        });
        let mut tally = Tally::new(self.inner.nodes.len());
        let deadline =
            (start + plan.node_deadline).min(tokio::time::Instant::from_std(current.deadline));
        quorum::gather(&mut (&mut calls).map(|(_, r)| r), &mut tally, deadline).await;
        Cleanup::release(
            self.inner.clone(),
            self.keys.clone(),
            self.token.clone(),
            ttl,
        )
        .finishing(in_flight(calls))
        .run(self.runtime.as_ref());

        let validity = quorum::validity(ttl, start.elapsed(), plan.drift);
        let in_time = Instant::now() < current.deadline;
        match (tally.decision(), validity) {
            (Some(Decision::Won), Some(validity)) if in_time => {
                tracing::debug!(
                    key = &*self.keys[0],
                    votes = tally.votes(),
                    ?validity,
                    "quorumlock extended"
                );
                self.status.send_modify(|s| {
                    s.deadline = (start + validity).into_std();
                    s.validity = validity;
                    s.ttl = ttl;
                });
                Ok(())
            }
            _ => Err(self.lose(tally.votes(), quorum)),
        }
    }

    /// Completes when ownership can no longer be guaranteed: the lock was
    /// lost, released, or its deadline is about to pass.
    async fn lost(&self) {
        let mut status = self.status.subscribe();
        loop {
            let s = *status.borrow_and_update();
            if s.lost || s.released {
                return;
            }
            let fire_at = s.deadline.checked_sub(LOST_MARGIN).unwrap_or(s.deadline);
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(fire_at.into()) => return,
            }
        }
    }
}

/// When and how long [`Lock::keep_alive`] extends a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepAlive {
    share_left: f64,
    max_hold: Option<Duration>,
}

impl Default for KeepAlive {
    fn default() -> Self {
        Self {
            share_left: 1.0 / 3.0,
            max_hold: None,
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
    /// `0.05..=0.95`). Default: 1/3.
    #[must_use]
    pub fn when_left(mut self, share: f64) -> Self {
        self.share_left = share.clamp(0.05, 0.95);
        self
    }

    /// Stop extending once the lock has been held this long (counted from
    /// `keep_alive`); the lock then runs out at its deadline, and the lost
    /// signal fires. Default: none.
    #[must_use]
    pub fn max_hold(mut self, limit: Option<Duration>) -> Self {
        self.max_hold = limit;
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
            if may_have_landed(&reply) && shared.status().released {
                let inner = &shared.inner;
                inner.nodes[i]
                    .release(&inner.scripts, &shared.keys, &shared.token, false)
                    .await;
            }
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

async fn keep_alive(shared: Arc<Shared>, policy: KeepAlive) {
    let stop_at = policy.max_hold.map(|d| Instant::now() + d);
    let mut status = shared.status.subscribe();
    loop {
        let s = *status.borrow_and_update();
        if s.lost || s.released {
            return;
        }
        let due = s
            .deadline
            .checked_sub(s.validity.mul_f64(policy.share_left))
            .unwrap_or(s.deadline);
        if stop_at.is_some_and(|stop| due >= stop) {
            return;
        }
        tokio::select! {
            // A manual extend moved the deadline: plan again.
            changed = status.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(due.into()) => {
                if shared.extend(s.ttl).await.is_err() {
                    return; // lost: `extend` marked it and released
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
#[must_use = "dropping a Lock releases it at once"]
pub struct Lock {
    shared: Arc<Shared>,
    keeper: Option<KeepAliveTask>,
}

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
        keys: Keys,
        token: Arc<str>,
        ttl: Duration,
        (deadline, validity): (Instant, Duration),
        late_sets: Option<InFlight>,
        fence: Option<u64>,
    ) -> Self {
        let status = Status {
            deadline,
            validity,
            ttl,
            lost: false,
            released: false,
        };
        let shared = Shared {
            inner,
            keys,
            token,
            fence,
            status: watch::Sender::new(status),
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
        }
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
    /// last extend) plus its validity, drift already subtracted.
    pub fn deadline(&self) -> Instant {
        self.shared.status().deadline
    }

    /// Time left before [`deadline`](Self::deadline); zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// `false` once the deadline has passed, or the lock was lost.
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

    /// Completes as soon as ownership can no longer be guaranteed: an
    /// extend was refused, or the deadline is about to pass without one. It
    /// fires no later than the deadline.
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
    /// [`Error::Lost`] when ownership cannot be confirmed: the deadline had
    /// passed, another owner or no key was found, or too few nodes answered.
    /// The lock is then released and never re-acquired silently; every later
    /// `extend` fails the same way. [`Error::InvalidInput`] for an unusable
    /// TTL (the lock is untouched).
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
        self.shared.extend(ttl).await
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
    }

    /// Deletes the lock on every node where it still holds our token (an
    /// atomic compare-and-delete, sent to all nodes at once).
    ///
    /// # Errors
    /// [`Error::Lost`] when fewer than a quorum of nodes still held our key
    /// (it expired, or the lock was lost earlier); [`Error::Unavailable`] when
    /// too few nodes answered to tell. Either way nothing of ours outlives
    /// the TTL, and neither is worth more than a log line.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(lock: quorumlock::Lock) {
    /// if let Err(e) = lock.release().await {
    ///     eprintln!("release: {e}");
    /// }
    /// # }
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        self.keeper = None;
        let before = self.shared.mark_released(false);
        let cleanup = self.cleanup();
        // If the caller stops awaiting midway, the guard releases in the
        // background instead.
        let runtime = self.shared.runtime.clone();
        let mut guard = ReleaseGuard(Some(cleanup), runtime.clone());
        let (tally, pending) = self
            .shared
            .inner
            .release_quorum(&self.shared.keys, &self.shared.token, true)
            .await;
        if let Some(cleanup) = guard.0.take() {
            cleanup.finishing(pending).run(runtime.as_ref());
        }
        let (votes, quorum) = (tally.votes(), tally.quorum());
        let lost = before.lost || before.released;
        if !lost && votes >= quorum {
            Ok(())
        } else if !lost && votes + tally.unknown() >= quorum {
            Err(Error::Unavailable {
                votes,
                quorum,
                source: tally.transport_error().cloned(),
            })
        } else {
            Err(self.shared.lost_error(votes, quorum))
        }
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
        if !self.shared.mark_released(false).released {
            self.cleanup().run(self.shared.runtime.as_ref());
        }
    }
}

/// A watcher of a [`Lock`], handed to the work it protects (see
/// [`Redlock::with_lock`](crate::Redlock::with_lock)). It cannot release or
/// extend the lock; it can tell when the lock is lost.
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
        self.shared.status().deadline
    }

    /// Time left before the current deadline.
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
