//! A quorum semaphore: at most `permits` holders of one name at once, safe
//! while a minority of nodes fails, like the mutex.
//!
//! # Why it is safe
//! Counting holders on each node and admitting on a majority is not: with
//! three nodes and two permits, holders admitted by nodes {1,2}, {2,3} and
//! {1,3} leave every node at two while three hold a permit. Instead, a
//! semaphore of `P` permits is `P` ordinary Redlock mutexes, its permit
//! slots (`{name}:permit:0` … `{name}:permit:P-1`), and a permit is the
//! lock of one slot. Each slot has at most one holder at any instant, by
//! exactly the mutex's argument (any two quorums share a node; that node
//! grants one key at a time; validity is cut by the drift allowance before
//! the key expires), so at most `P` hold a permit. Failed nodes, clock
//! drift within the allowance and expiry are covered as for a mutex, and a
//! permit is a [`Lock`]: extend, release, keep-alive, `lost()`, release on
//! drop and fencing (per slot) work as they do for a mutex.
//!
//! # Every client must use the same count
//! Two clients of one name with different counts would admit more holders
//! than either count. So each node records the count under the name's own
//! key (a hash), and grants a permit slot only in the same script that
//! finds the record equal to the asker's count, or absent (then it records
//! it): a client of another count gets [`Error::NameInUse`]. The record is
//! not permanent state: it lives at least as long as every permit that
//! node granted (set with the permit, raised with each extension) and
//! expires after the last one. That is enough: while a holder of count
//! `P` holds, its quorum of nodes keeps its key and so the record `P`, and
//! any quorum of another count would share a node with it. So the record
//! needs no persistence, and a node restarted empty (after the TTL, as
//! for every lock) forgot only records of permits that had expired
//! anyway; and once nobody holds a permit, the name's keys are gone and
//! the count may change. A mutex of the same name is refused the same
//! way, and a mutex asked for on a semaphore's name is refused by the
//! nodes (`WRONGTYPE`) while a permit is held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use crate::claim::Claim;
use crate::engine::acquire::{run_locked, with_retries};
use crate::engine::admission::{Admission, Step};
use crate::engine::attempt::{attempt, Failed};
use crate::engine::lock::Lock;
use crate::engine::{require_runtime, Keys, Plan};
use crate::error::Error;
use crate::inspect::Inspection;
use crate::quorum::Standing;
use crate::redlock::Redlock;
use crate::slots;

/// Takes one permit slot on one node, checking the count's record.
static TAKE_SLOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_acquire.lua")));

/// More permits than this are refused: each try walks the slots.
const MAX_PERMITS: u32 = 1024;

/// A semaphore of a fixed number of permits over a [`Redlock`]'s nodes
/// (see [`Redlock::semaphore`]). Cheap to clone.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
///
/// // At most 4 report jobs at once across the fleet.
/// let reports = redlock.semaphore("reports", 4);
/// let permit = reports.acquire(Duration::from_secs(30)).await?;
/// // ... run one report, extending or keeping the permit alive as a lock ...
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    redlock: Redlock,
    name: String,
    permits: u32,
    shared: Arc<Shared>,
}

struct Shared {
    /// The name's key: where the permit count is recorded.
    key: Result<Arc<str>, Error>,
    /// Each permit slot's admission, in slot order.
    slots: Vec<Arc<Admission>>,
    /// Every slot key, for waiting on a release of any of them.
    all: Keys,
    /// Slots a task of this process holds or is trying now (a hint: tried
    /// last, so that tasks of one process do not pay a whole attempt for a
    /// slot one of them holds).
    taken: Arc<[AtomicBool]>,
}

/// This process's note that it holds or tries slot `.1`; cleared on drop.
struct Taken(Arc<[AtomicBool]>, usize);

impl Taken {
    /// Takes the note of `slot`, unless a task of ours has it.
    fn take(taken: &Arc<[AtomicBool]>, slot: usize) -> Option<Self> {
        taken[slot]
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| Taken(taken.clone(), slot))
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.0[self.1].store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

/// The key of permit `slot` of the semaphore keyed `key`: in the key's
/// cluster slot (see [`slots::tagged`]).
fn slot_key(key: &str, slot: u32) -> Arc<str> {
    Arc::from(format!("{}:permit:{slot}", slots::tagged(key)))
}

impl Redlock {
    /// A semaphore of `permits` permits named `name`: at most `permits`
    /// holders at once, safe while a minority of nodes fails (see
    /// [`Semaphore`] for why). Every client of a name must use the same
    /// count; each node records it while it holds a permit of it.
    ///
    /// Bad input (an empty name, zero permits, more than 1024) is reported
    /// by the semaphore's calls as [`Error::InvalidInput`].
    pub fn semaphore(&self, name: &str, permits: u32) -> Semaphore {
        let key = self.checked_key(name).and_then(|key| {
            slots::check(self.inner.sharded, [&*key], true)?;
            Ok(key)
        });
        let given: Arc<str> = Arc::from(name);
        let fencing = self.inner.fencing;
        let slots: Vec<Arc<Admission>> = match &key {
            Ok(key) if (1..=MAX_PERMITS).contains(&permits) => (0..permits)
                .map(|slot| {
                    let slot = slot_key(key, slot);
                    let script_keys = vec![key.clone(), slot.clone()];
                    let args = vec![permits.to_string()];
                    Arc::new(
                        Admission::script(
                            Arc::from([slot.clone()]),
                            (&TAKE_SLOT, script_keys, args),
                            &given,
                        )
                        .fenced(fencing, &slot, Step::Next)
                        .with_companions(Arc::from([key.clone()])),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let all: Keys = slots.iter().map(|a| a.keys[0].clone()).collect();
        Semaphore {
            redlock: self.clone(),
            name: name.to_string(),
            permits,
            shared: Arc::new(Shared {
                key,
                taken: slots.iter().map(|_| AtomicBool::new(false)).collect(),
                slots,
                all,
            }),
        }
    }
}

impl Semaphore {
    /// The name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many permits it has.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Takes a permit for `ttl`, retrying by the manager's
    /// [`RetryPolicy`](crate::RetryPolicy) while every permit is held; a
    /// waiter is woken when any permit is released.
    ///
    /// # Errors
    /// As [`Redlock::acquire`]; [`Error::InvalidInput`] for an empty name
    /// or a permit count outside 1..=1024; [`Error::NameInUse`] when the
    /// name is a mutex, another kind of lock, or a semaphore of another
    /// count.
    pub async fn acquire(&self, ttl: Duration) -> Result<Lock, Error> {
        self.check()?;
        let all = self.shared.all.clone();
        with_retries(&self.redlock.inner, &all, ttl, |plan| self.try_once(plan)).await
    }

    /// Runs `work` while holding a permit, as
    /// [`Redlock::with_lock`] does for a mutex: acquired by
    /// [`acquire`](Self::acquire), kept alive, released afterwards, and
    /// [`Error::Lost`] if the permit is lost while `work` runs.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), or [`Error::Lost`].
    pub async fn with_permit<F, Fut, T>(&self, ttl: Duration, work: F) -> Result<T, Error>
    where
        F: FnOnce(crate::Guard) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        run_locked(self.acquire(ttl).await?, work).await
    }

    /// One try at every permit, without waiting: `Contended` when all are
    /// held.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), from the single try.
    pub async fn try_acquire(&self, ttl: Duration) -> Result<Lock, Error> {
        self.check()?;
        let plan = self.redlock.inner.plan(ttl)?;
        self.try_once(plan).await.map_err(|f| f.error)
    }

    /// What each node holds under the permits, and who holds a permit by
    /// a quorum's reading. Changes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for bad input (see
    /// [`acquire`](Self::acquire)); [`Error::NoRuntime`] outside tokio.
    pub async fn inspect(&self) -> Result<Inspection, Error> {
        self.check()?;
        require_runtime()?;
        let key = self.key()?;
        Ok(self
            .redlock
            .inspect_keys(
                Claim::Semaphore(self.permits),
                key.clone(),
                &self.shared.all,
            )
            .await)
    }

    fn key(&self) -> Result<&Arc<str>, Error> {
        self.shared.key.as_ref().map_err(|e| match e {
            Error::InvalidInput(why) => Error::InvalidInput(why),
            _ => Error::InvalidInput("invalid semaphore name"),
        })
    }

    fn check(&self) -> Result<(), Error> {
        self.key()?;
        if self.permits == 0 {
            return Err(Error::InvalidInput("a semaphore needs at least one permit"));
        }
        if self.permits > MAX_PERMITS {
            return Err(Error::InvalidInput("a semaphore has at most 1024 permits"));
        }
        Ok(())
    }

    /// Tries the permits once each, from a random one on (so clients spread
    /// over them), until one is won: first the slots no task of this
    /// process holds or tries, then the others (a note can outlive its
    /// holder's release by a moment).
    async fn try_once(&self, plan: Plan) -> Result<Lock, Failed> {
        self.key()?;
        let (slots, taken) = (&self.shared.slots, &self.shared.taken);
        let first = rand::random_range(0..slots.len());
        let mut tries = Tries::default();
        let mut ours = Vec::new();
        for slot in (0..slots.len()).map(|i| (first + i) % slots.len()) {
            let Some(note) = Taken::take(taken, slot) else {
                ours.push(slot);
                continue;
            };
            if let Some(won) = self.try_slot(slot, plan, &mut tries).await {
                return won.map(|lock| lock.keeping(Box::new(note)));
            }
        }
        for slot in ours {
            if let Some(won) = self.try_slot(slot, plan, &mut tries).await {
                return won;
            }
        }
        Err(Failed {
            error: tries.last.unwrap_or(Error::Contended {
                votes: 0,
                quorum: self.redlock.quorum(),
            }),
            seen_held: tries.seen_held,
            contest: tries.contest,
        })
    }

    /// One attempt at `slot`: the outcome, or `None` to go on with the
    /// next slot (this one is held), noted in `tries`.
    async fn try_slot(
        &self,
        slot: usize,
        plan: Plan,
        tries: &mut Tries,
    ) -> Option<Result<Lock, Failed>> {
        match attempt(&self.redlock.inner, &self.shared.slots[slot], plan).await {
            Ok(lock) => Some(Ok(lock)),
            // Held by someone: the next permit may be free. With a node
            // down, a held slot can read as `Unavailable` (one refusal and
            // one silent node leave no quorum): still move on.
            Err(failed)
                if failed.error.is_contended()
                    || (failed.seen_held && failed.error.is_retryable()) =>
            {
                tries.seen_held |= failed.seen_held;
                if failed.contest != Standing::None {
                    tries.contest = failed.contest;
                }
                if tries.last.as_ref().is_none_or(|e| !e.is_contended()) {
                    tries.last = Some(failed.error);
                }
                None
            }
            Err(failed) => Some(Err(failed)),
        }
    }
}

/// What the slots tried so far said.
#[derive(Default)]
struct Tries {
    seen_held: bool,
    contest: Standing,
    /// The error to report: a contended one if any slot gave one.
    last: Option<Error>,
}
