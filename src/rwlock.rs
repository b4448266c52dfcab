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
//! The intent keeps readers out, never a writer: writers exclude each
//! other by the writer's key alone, as mutexes do. (When an intent was a
//! writer's own and stopped the others, two waiting writers whose intents
//! landed on different nodes each lacked a quorum until the intents
//! expired, and nobody held the lock for half a second.) A writer that
//! gets in removes the intent; writers still waiting set it again when
//! they next find readers.
//!
//! # Fences
//! With fencing on, a writer's fence grows with every writer, as a
//! mutex's does. A reader's fence is the last writer's: the version it
//! reads.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use crate::claim::Claim;
use crate::engine::acquire::{run_locked, with_retries};
use crate::engine::admission::{Admission, Step};
use crate::engine::attempt::attempt;
use crate::engine::lock::Lock;
use crate::engine::{require_runtime, Keys};
use crate::error::Error;
use crate::inspect::Inspection;
use crate::redlock::Redlock;
use crate::slots;

/// Admits a reader on one node (`rw_kind.lua` first: the kind's record).
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/rw_kind.lua"),
        include_str!("scripts/rw_read.lua")
    ))
});

/// Admits a writer on one node.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/rw_kind.lua"),
        include_str!("scripts/rw_write.lua")
    ))
});

/// The keys of one read-write lock, all in the name's cluster slot.
struct Names {
    /// The name's key: records that it is a read-write lock.
    name: Arc<str>,
    /// The writer's lock key.
    writer: Arc<str>,
    /// A waiting writer's intent: turns new readers away.
    intent: Arc<str>,
    /// The set of reader keys, which a writer checks one by one.
    readers: Arc<str>,
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
    name: Arc<str>,
    /// The lock's keys, or why the name is unusable.
    keys: Result<Arc<Names>, &'static str>,
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
                Arc::new(Names {
                    writer: Arc::from(format!("{tag}:writer")),
                    intent: Arc::from(format!("{tag}:intent")),
                    readers: Arc::from(format!("{tag}:readers")),
                    name: key,
                })
            });
        RwLock {
            redlock: self.clone(),
            name: Arc::from(name),
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
        let keys = self.keys()?;
        let inner = &self.redlock.inner;
        let watched: Keys = Arc::from([keys.writer.clone()]);
        with_retries(inner, &watched, ttl, |plan| async move {
            attempt(inner, &self.reader(keys), plan).await
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
        let keys = self.keys()?;
        let inner = &self.redlock.inner;
        let plan = inner.plan(ttl)?;
        attempt(inner, &self.reader(keys), plan)
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
        let keys = self.keys()?;
        let inner = &self.redlock.inner;
        let watched: Keys = Arc::from([keys.writer.clone(), keys.readers.clone()]);
        let policy = &inner.retry;
        // Long enough to outlive the wait until the next try.
        let intent = (policy.fixed_delay() + policy.jitter_limit())
            .saturating_mul(2)
            .saturating_add(inner.node_timeout.saturating_mul(2))
            .max(Duration::from_millis(100));
        let intent_ms = u64::try_from(intent.as_millis()).unwrap_or(u64::MAX);
        let writer = &self.writer(keys, intent_ms);
        with_retries(inner, &watched, ttl, |plan| attempt(inner, writer, plan)).await
    }

    /// One attempt at the write lock, without waiting (and without turning
    /// readers away).
    ///
    /// # Errors
    /// As [`read`](Self::read), from the single attempt.
    pub async fn try_write(&self, ttl: Duration) -> Result<Lock, Error> {
        let keys = self.keys()?;
        let inner = &self.redlock.inner;
        let plan = inner.plan(ttl)?;
        attempt(inner, &self.writer(keys, 0), plan)
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
        let look = [keys.writer.clone(), keys.readers.clone()];
        Ok(self
            .redlock
            .inspect_keys(Claim::RwLock, keys.name.clone(), &look)
            .await)
    }

    fn keys(&self) -> Result<&Names, Error> {
        self.keys.as_deref().map_err(|why| Error::InvalidInput(why))
    }

    /// A new reader's admission: its own key, admitted by `rw_read.lua`;
    /// its fence is the last writer's, and its release tells the writers
    /// waiting on the set of readers.
    fn reader(&self, keys: &Names) -> Arc<Admission> {
        let reader: Arc<str> =
            Arc::from(format!("{}:reader:{}", slots::tagged(&keys.name), new_id()));
        let script_keys = vec![
            keys.name.clone(),
            keys.writer.clone(),
            keys.intent.clone(),
            keys.readers.clone(),
            reader.clone(),
        ];
        let fencing = self.redlock.inner.fencing;
        Arc::new(
            Admission::script(
                Arc::from([reader]),
                (&READ, script_keys, Vec::new()),
                &self.name,
            )
            .fenced(fencing, &keys.writer, Step::Last)
            .announcing(Arc::from([keys.readers.clone()])),
        )
    }

    /// A writer's admission by `rw_write.lua`, leaving an intent of
    /// `intent_ms` while readers hold (0: none), which names the writer
    /// for whoever inspects the node.
    fn writer(&self, keys: &Names, intent_ms: u64) -> Arc<Admission> {
        let script_keys = vec![
            keys.name.clone(),
            keys.writer.clone(),
            keys.intent.clone(),
            keys.readers.clone(),
        ];
        let args = vec![intent_ms.to_string(), new_id().to_string()];
        let fencing = self.redlock.inner.fencing;
        Arc::new(
            Admission::script(
                Arc::from([keys.writer.clone()]),
                (&WRITE, script_keys, args),
                &self.name,
            )
            .fenced(fencing, &keys.writer, Step::Next),
        )
    }
}

/// 64 random bits in hex: a reader's key, a writer's identity.
fn new_id() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}
