//! A quorum read-write lock: readers share, a writer excludes readers and
//! other writers, safe while a minority of nodes fails.
//!
//! # Why it is safe
//! Each node admits, in one script, a writer only while no other writer's
//! key and no live reader's key is there, and a reader only while no
//! writer's key is there; a reader or writer holds once a quorum admitted
//! it, exactly as a mutex does. Take a writer and any other holder (reader
//! or writer): their quorums share a node. On that node the one admitted
//! first kept its key until it released the lock or the key expired, and
//! the other was refused meanwhile; so the later one was admitted there only
//! after the earlier one's key was gone. The earlier one's window ends
//! before that (at its release, or at its deadline, which is cut by the
//! drift allowance before the key expires), so the two windows never
//! overlap. Readers' keys are checked one by one (they are the truth; the
//! set that lists them only finds them), so an extended reader keeps
//! writers out for as long as its key lives.
//!
//! # Waiting writers are not starved
//! A writer that finds readers leaves its intent on the node (for a few
//! retry delays, renewed while it waits): new readers are turned away
//! while it is there, the readers already in finish, and the writer gets
//! in. A writer that gives up lets its intent expire. So a stream of
//! readers cannot keep a waiting writer out; the price is that readers
//! wait behind a waiting writer. `try_write` leaves no intent.
//!
//! # Fences
//! With fencing on, a writer's fence grows with every writer, as a
//! mutex's does. A reader's fence is the last writer's: the version it
//! reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::acquire::{run_locked, with_retries};
use crate::engine::attempt::attempt_as;
use crate::engine::lock::Lock;
use crate::engine::{fence_key, require_runtime, Keys};
use crate::error::{Error, InUse};
use crate::inspect::{Inspection, Named};
use crate::redlock::Redlock;
use crate::slots;

/// Which side of the lock an attempt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Read,
    Write,
    /// A permit of a semaphore of this many (see `semaphore_acquire.lua`):
    /// `keys[0]` is the count's record, the lock key is the slot.
    Permit(u32),
}

/// How an attempt is admitted on each node (see `rw_read.lua` and
/// `rw_write.lua`), and what the nodes said about the name.
pub(crate) struct Admission {
    pub(crate) side: Side,
    /// The name's key, the writer's, the intent's, the readers' set.
    pub(crate) keys: [Arc<str>; 4],
    /// The writer's fence counter, with fencing.
    pub(crate) fence_key: Option<Arc<str>>,
    /// How long a waiting writer's intent lives (0: leave none).
    pub(crate) intent_ms: u64,
    /// The same across the retries of one `write`, so its intent is its own.
    pub(crate) writer_id: Arc<str>,
    name: String,
    found: Mutex<Option<InUse>>,
}

impl Admission {
    /// A permit's admission: the semaphore `name` of `permits`, whose
    /// count is recorded under `record`; `fence_key` is its slot's counter.
    pub(crate) fn permit(
        name: &str,
        record: &Arc<str>,
        permits: u32,
        fence_key: Option<Arc<str>>,
    ) -> Arc<Self> {
        Arc::new(Admission {
            side: Side::Permit(permits),
            keys: [
                record.clone(),
                record.clone(),
                record.clone(),
                record.clone(),
            ],
            fence_key,
            intent_ms: 0,
            writer_id: Arc::from(""),
            name: name.to_string(),
            found: Mutex::new(None),
        })
    }

    /// Keys that must outlive the lock, extended with it: a permit's
    /// count record.
    pub(crate) fn companions(&self) -> Option<Keys> {
        matches!(self.side, Side::Permit(_)).then(|| Arc::from([self.keys[0].clone()]))
    }

    /// A node said the name is in use otherwise (`-1`: a mutex or another
    /// value, `-3`: a semaphore of `value` permits, else another kind of
    /// lock).
    pub(crate) fn found(&self, code: i64, value: i64) {
        let in_use = match code {
            -1 => InUse::Mutex,
            -3 => InUse::Semaphore(u32::try_from(value).unwrap_or(u32::MAX)),
            _ => InUse::OtherKind,
        };
        *crate::link::lock(&self.found) = Some(in_use);
    }

    pub(crate) fn name_in_use(&self) -> Option<Error> {
        crate::link::lock(&self.found).map(|found| Error::NameInUse {
            name: self.name.clone(),
            found,
        })
    }
}

/// A read-write lock over a [`Redlock`]'s nodes (see [`Redlock::rw_lock`]).
/// Cheap to clone.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
///
/// let config = redlock.rw_lock("config:pricing");
/// // Many readers at once:
/// let reading = config.read(Duration::from_secs(5)).await?;
/// // ... read the blob ...
/// reading.release().await?;
/// // One writer, and no reader meanwhile:
/// let writing = config.write(Duration::from_secs(5)).await?;
/// // ... replace the blob ...
/// writing.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock {
    redlock: Redlock,
    name: String,
    /// The name's key, the writer's, the intent's, the readers' set; or
    /// why the name is unusable.
    keys: Result<[Arc<str>; 4], &'static str>,
}

impl std::fmt::Debug for RwLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock").field("name", &self.name).finish()
    }
}

impl Redlock {
    /// A read-write lock named `name`: readers share it, a writer excludes
    /// readers and other writers, and a waiting writer is not starved by a
    /// stream of readers (see [`RwLock`] for why it is safe and for the
    /// policy). Its locks are [`Lock`]s: extend, release, keep-alive,
    /// `lost()` and release on drop work as for a mutex.
    ///
    /// Its keys share the name's cluster slot: the name's key records the
    /// kind, `{name}:writer`, `{name}:intent`, `{name}:readers` and one
    /// `{name}:reader:<id>` per reader (`name` keeps its own hash tag).
    pub fn rw_lock(&self, name: &str) -> RwLock {
        let keys = self
            .checked_key(name)
            .and_then(|key| slots::check(self.inner.sharded, [&*key], true).map(|()| key))
            .map_err(|e| match e {
                Error::InvalidInput(why) => why,
                _ => "invalid read-write lock name",
            })
            .map(|key| {
                let tag = slots::tagged(&key);
                [
                    key,
                    Arc::from(format!("{tag}:writer")),
                    Arc::from(format!("{tag}:intent")),
                    Arc::from(format!("{tag}:readers")),
                ]
            });
        RwLock {
            redlock: self.clone(),
            name: name.to_string(),
            keys,
        }
    }
}

impl RwLock {
    /// The name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A read lock for `ttl`, shared with other readers, waiting (by the
    /// manager's retry policy) while a writer holds the lock or waits for
    /// it; woken when the writer releases.
    ///
    /// # Errors
    /// As [`Redlock::acquire`]; [`Error::NameInUse`] when the name is a
    /// mutex or another kind of lock.
    pub async fn read(&self, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys()?.clone();
        let watched: Keys = Arc::from([keys[1].clone()]);
        with_retries(&self.redlock.inner, &watched, ttl, |plan| {
            let admission = self.admission(&keys, Side::Read, 0, new_id());
            let reader: Keys = Arc::from([Arc::from(format!(
                "{}:reader:{}",
                slots::tagged(&keys[0]),
                new_id()
            ))]);
            attempt_as(&self.redlock.inner, reader, plan, Some(admission))
        })
        .await
    }

    /// Runs `work` under a read lock, as [`Redlock::with_lock`] does for a
    /// mutex: kept alive while it runs, released afterwards, and
    /// [`Error::Lost`] if lost first.
    ///
    /// # Errors
    /// As [`read`](Self::read), or [`Error::Lost`].
    pub async fn with_read<F, Fut, T>(&self, ttl: Duration, work: F) -> Result<T, Error>
    where
        F: FnOnce(crate::Guard) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        run_locked(self.read(ttl).await?, work).await
    }

    /// Runs `work` under the write lock (see [`with_read`](Self::with_read)).
    ///
    /// # Errors
    /// As [`write`](Self::write), or [`Error::Lost`].
    pub async fn with_write<F, Fut, T>(&self, ttl: Duration, work: F) -> Result<T, Error>
    where
        F: FnOnce(crate::Guard) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        run_locked(self.write(ttl).await?, work).await
    }

    /// One attempt at a read lock, without waiting.
    ///
    /// # Errors
    /// As [`read`](Self::read), from the single attempt.
    pub async fn try_read(&self, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys()?.clone();
        let plan = self.redlock.inner.plan(ttl)?;
        let reader: Keys = Arc::from([Arc::from(format!(
            "{}:reader:{}",
            slots::tagged(&keys[0]),
            new_id()
        ))]);
        let admission = self.admission(&keys, Side::Read, 0, new_id());
        attempt_as(&self.redlock.inner, reader, plan, Some(admission))
            .await
            .map_err(|f| f.error)
    }

    /// The write lock for `ttl`, waiting (by the manager's retry policy)
    /// while readers or another writer hold it. While it waits, new readers
    /// are turned away, so it gets in once the current readers are done.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn write(&self, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys()?.clone();
        let watched: Keys = Arc::from([keys[1].clone(), keys[3].clone()]);
        let writer: Keys = Arc::from([keys[1].clone()]);
        let policy = &self.redlock.inner.retry;
        // Long enough to outlive the wait until the next try.
        let intent = (policy.fixed_delay() + policy.jitter_limit())
            .saturating_mul(2)
            .saturating_add(self.redlock.inner.node_timeout.saturating_mul(2))
            .max(Duration::from_millis(100));
        let intent_ms = u64::try_from(intent.as_millis()).unwrap_or(u64::MAX);
        let writer_id = new_id();
        with_retries(&self.redlock.inner, &watched, ttl, |plan| {
            let admission = self.admission(&keys, Side::Write, intent_ms, writer_id.clone());
            attempt_as(&self.redlock.inner, writer.clone(), plan, Some(admission))
        })
        .await
    }

    /// One attempt at the write lock, without waiting (and without turning
    /// readers away).
    ///
    /// # Errors
    /// As [`read`](Self::read), from the single attempt.
    pub async fn try_write(&self, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys()?.clone();
        let plan = self.redlock.inner.plan(ttl)?;
        let admission = self.admission(&keys, Side::Write, 0, new_id());
        let writer: Keys = Arc::from([keys[1].clone()]);
        attempt_as(&self.redlock.inner, writer, plan, Some(admission))
            .await
            .map_err(|f| f.error)
    }

    /// What each node holds (the writer's and each reader's token, with
    /// their TTLs) and the quorum's reading. Changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty or reserved name;
    /// [`Error::NoRuntime`] outside tokio.
    pub async fn inspect(&self) -> Result<Inspection, Error> {
        require_runtime()?;
        let keys = self.keys()?;
        let look = [keys[1].clone(), keys[3].clone()];
        Ok(self
            .redlock
            .inspect_keys(Named::RwLock, keys[0].clone(), &look)
            .await)
    }

    fn keys(&self) -> Result<&[Arc<str>; 4], Error> {
        self.keys.as_ref().map_err(|why| Error::InvalidInput(why))
    }

    fn admission(
        &self,
        keys: &[Arc<str>; 4],
        side: Side,
        intent_ms: u64,
        writer_id: Arc<str>,
    ) -> Arc<Admission> {
        let fence_key = self.redlock.inner.fencing.then(|| fence_key(&keys[1]));
        Arc::new(Admission {
            side,
            keys: keys.clone(),
            fence_key,
            intent_ms,
            writer_id,
            name: self.name.clone(),
            found: Mutex::new(None),
        })
    }
}

/// 64 random bits in hex: a reader's key, a writer's identity.
fn new_id() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}
