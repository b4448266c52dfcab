//! The handle a caller holds while it owns a resource. Dropping it releases
//! the lock from a detached task, so a panic or an early return never leaves
//! the resource blocked for a whole TTL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::cleanup::{in_flight, settle, Cleanup, InFlight};
use crate::quorum::{self, Decision, Tally};
use crate::redlock::Inner;
use crate::Error;

/// Ownership of a resource on a quorum of nodes, until [`deadline`](Self::deadline).
///
/// The lock is only trustworthy before its deadline: check
/// [`remaining`](Self::remaining) before acting on the resource, and
/// [`extend`](Self::extend) it when work runs long. Dropping a `Lock`
/// releases it in the background; [`release`](Self::release) does the same
/// and reports how it went.
#[must_use = "dropping a Lock releases it at once"]
pub struct Lock {
    inner: Arc<Inner>,
    /// Key prefix + resource; `resource()` is the part after the prefix.
    key: Arc<str>,
    token: Arc<str>,
    ttl: Duration,
    deadline: Instant,
    /// The acquire's `SET`s whose replies had not come (see `cleanup`). In a
    /// mutex only so that `Lock` is `Sync`; nothing contends for it.
    late_sets: Mutex<Option<InFlight>>,
    released: bool,
    lost: bool,
    /// Where a drop's release runs, even if the lock is dropped on a thread
    /// outside the runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource())
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Lock {
    pub(crate) fn new(
        inner: Arc<Inner>,
        key: Arc<str>,
        token: Arc<str>,
        ttl: Duration,
        deadline: Instant,
        late_sets: Option<InFlight>,
    ) -> Self {
        Self {
            inner,
            key,
            token,
            ttl,
            deadline,
            late_sets: Mutex::new(late_sets),
            released: false,
            lost: false,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The resource name as it was passed to `acquire`.
    pub fn resource(&self) -> &str {
        self.key
            .get(self.inner.key_prefix.len()..)
            .unwrap_or_default()
    }

    /// The Redis key holding the lock (key prefix + resource).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This holder's random token: the value stored under the key.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The TTL of the last successful acquire or extend.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The instant the lock stops being valid: start of the acquire (or
    /// extend) plus its validity, drift already subtracted.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before [`deadline`](Self::deadline); zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `false` once the deadline has passed or an extend failed.
    pub fn is_held(&self) -> bool {
        !self.lost && Instant::now() < self.deadline
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
        let plan = self.inner.plan(self.resource(), ttl)?;
        let quorum = quorum::quorum(self.inner.nodes.len());
        let start = tokio::time::Instant::now();
        if self.lost || start.into_std() >= self.deadline {
            return Err(self.lose(0, quorum));
        }
        let mut calls = self.inner.fan_out(|inner, i| {
            let (key, token) = (self.key.clone(), self.token.clone());
            async move {
                let reply = inner.nodes[i]
                    .extend(&inner.scripts, &key, &token, plan.ttl_ms)
                    .await;
                (i, reply)
            }
        });
        let mut tally = Tally::new(self.inner.nodes.len());
        let current = tokio::time::Instant::from_std(self.deadline);
        let deadline = (start + plan.node_deadline).min(current);
        quorum::gather(&mut (&mut calls).map(|(_, r)| r), &mut tally, deadline).await;
        Cleanup::release(
            self.inner.clone(),
            self.key.clone(),
            self.token.clone(),
            ttl,
        )
        .finishing(in_flight(calls))
        .run(self.runtime.as_ref());

        let validity = quorum::validity(ttl, start.elapsed(), plan.drift);
        let in_time = Instant::now() < self.deadline;
        match (tally.decision(), validity) {
            (Some(Decision::Won), Some(validity)) if in_time => {
                self.ttl = ttl;
                self.deadline = (start + validity).into_std();
                Ok(())
            }
            _ => Err(self.lose(tally.votes(), quorum)),
        }
    }

    /// What releasing this lock involves, taking its late `SET`s along.
    fn cleanup(&mut self) -> Cleanup {
        let late_sets = match self.late_sets.get_mut() {
            Ok(late) => late.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        Cleanup::release(
            self.inner.clone(),
            self.key.clone(),
            self.token.clone(),
            self.ttl,
        )
        .with_late_sets(late_sets)
    }

    /// Starts the release in the background unless one already started.
    fn release_in_background(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            let runtime = self.runtime.clone();
            self.cleanup().run(runtime.as_ref());
        }
    }

    /// Marks the lock lost and removes whatever keys of ours remain.
    fn lose(&mut self, votes: usize, quorum: usize) -> Error {
        self.lost = true;
        self.release_in_background();
        Error::Lost {
            resource: self.resource().to_string(),
            votes,
            quorum,
        }
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
        self.released = true;
        let mut cleanup = self.cleanup();
        // Replies already in belong to SETs that ran before the deletes we
        // are about to send, which remove their keys.
        settle(cleanup.late_sets_mut());
        // If the caller stops awaiting midway, the guard releases in the
        // background instead.
        let mut guard = ReleaseGuard(Some(cleanup), self.runtime.clone());
        let (tally, pending) = self
            .inner
            .release_quorum(&self.key, &self.token, true)
            .await;
        if let Some(cleanup) = guard.0.take() {
            cleanup.finishing(pending).run(self.runtime.as_ref());
        }
        let (votes, quorum) = (tally.votes(), tally.quorum());
        if !self.lost && votes >= quorum {
            Ok(())
        } else if !self.lost && votes + tally.unknown() >= quorum {
            Err(Error::Unavailable {
                votes,
                quorum,
                source: tally.transport_error().cloned(),
            })
        } else {
            Err(Error::Lost {
                resource: self.resource().to_string(),
                votes,
                quorum,
            })
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
        self.release_in_background();
    }
}
