//! The manager's public face: what a caller asks of [`Redlock`] (the mutex
//! on one resource or a set of them, the scoped form, settling), each
//! checked here and handed to the [`engine`](crate::engine).

use std::sync::Arc;
use std::time::Duration;

use futures::Future;
use tokio::time::Instant;

use crate::engine::acquire::{run_locked, with_retries};
use crate::engine::admission::Admission;
use crate::engine::attempt::attempt;
use crate::engine::lock::{Guard, Lock};
use crate::engine::{Inner, Keys, FENCE_PREFIX};
use crate::quorum;
use crate::slots;
use crate::stats;
use crate::Error;

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
    /// [`RetryPolicy`](crate::RetryPolicy) while the failure is one a retry could fix. While the
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
        let mutex = self.mutex(&[resource])?;
        timed(self.acquire_keys(mutex, ttl)).await
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
        let mutex = self.mutex(resources)?;
        timed(self.acquire_keys(mutex, ttl)).await
    }

    /// One attempt of [`acquire_many`](Self::acquire_many).
    ///
    /// # Errors
    /// As [`acquire_many`](Self::acquire_many), from the single attempt.
    pub async fn try_acquire_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let mutex = self.mutex(resources)?;
        let plan = self.inner.plan(ttl)?;
        timed(async {
            attempt(&self.inner, &mutex, plan)
                .await
                .map_err(|f| f.error)
        })
        .await
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
    async fn acquire_keys(&self, mutex: Arc<Admission>, ttl: Duration) -> Result<Lock, Error> {
        let inner = &self.inner;
        with_retries(inner, &mutex.keys, ttl, |plan| attempt(inner, &mutex, plan)).await
    }

    /// The mutex on `resources`: `SET NX PX` of their keys.
    fn mutex(&self, resources: &[&str]) -> Result<Arc<Admission>, Error> {
        let keys = self.keys_for(resources)?;
        Ok(Arc::new(Admission::set(keys, self.inner.fencing)))
    }

    /// Runs `work` while holding `resource`: acquires it (as
    /// [`acquire`](Self::acquire)), keeps it alive in the background
    /// ([`KeepAlive::default`](crate::KeepAlive::default)), and releases it afterwards, also when `work`
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
        let mutex = self.mutex(&[resource])?;
        let plan = self.inner.plan(ttl)?;
        timed(async {
            attempt(&self.inner, &mutex, plan)
                .await
                .map_err(|f| f.error)
        })
        .await
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
