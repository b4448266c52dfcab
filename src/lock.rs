//! The handle a caller holds while it owns a resource. Dropping it releases
//! the lock from a detached task, so a panic or an early return never leaves
//! the resource blocked for a whole TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::quorum::{self, Decision, Tally};
use crate::redlock::{finish_in_background, Inner, Released};
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
    resource: Box<str>,
    key: Arc<str>,
    token: Arc<str>,
    ttl: Duration,
    deadline: Instant,
    released: Arc<Released>,
    lost: bool,
    /// Where a drop's release runs, even if the lock is dropped on a thread
    /// outside the runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Lock {
    pub(crate) fn new(
        inner: Arc<Inner>,
        resource: &str,
        key: Arc<str>,
        token: Arc<str>,
        ttl: Duration,
        deadline: Instant,
        released: Arc<Released>,
    ) -> Self {
        Self {
            inner,
            resource: resource.into(),
            key,
            token,
            ttl,
            deadline,
            released,
            lost: false,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The resource name as it was passed to `acquire`.
    pub fn resource(&self) -> &str {
        &self.resource
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
        let plan = self.inner.plan(&self.resource, ttl)?;
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
        finish_in_background(calls, ttl);

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

    /// Starts the release unless one already started.
    fn release_in_background(&self) {
        if self.released.mark() {
            self.inner.release_detached(
                self.runtime.as_ref(),
                self.key.clone(),
                self.token.clone(),
                self.ttl,
            );
        }
    }

    /// Marks the lock lost and removes whatever keys of ours remain.
    fn lose(&mut self, votes: usize, quorum: usize) -> Error {
        self.lost = true;
        self.release_in_background();
        Error::Lost {
            resource: self.resource.to_string(),
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
    pub async fn release(self) -> Result<(), Error> {
        // Marking first means a late SET reply seen after this point
        // cleans up after itself (see `clean_up_late_sets`).
        self.released.mark();
        // A task of its own, so the release completes even if the caller's
        // future is dropped while it runs.
        let (inner, key, token, ttl) = (
            self.inner.clone(),
            self.key.clone(),
            self.token.clone(),
            self.ttl,
        );
        let task = tokio::spawn(async move { inner.release_everywhere(&key, &token, ttl).await });
        let quorum = quorum::quorum(self.inner.nodes.len());
        let Ok(tally) = task.await else {
            // Only a runtime shutting down gets here; the keys expire.
            return Err(Error::Unavailable {
                votes: 0,
                quorum,
                source: None,
            });
        };
        let votes = tally.votes();
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
                resource: self.resource.to_string(),
                votes,
                quorum,
            })
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.release_in_background();
    }
}
