//! The retry loop every primitive's waiting call runs, and the scoped form
//! (`with_lock` and its kin).

use std::time::Duration;

use futures::Future;
use tokio::time::Instant;

use super::attempt::{Failed, ASK_AGAIN_PAUSE, ASK_AGAIN_ROUNDS};
use super::lock::{Guard, KeepAlive, Lock};
use super::{Inner, Keys, Plan};
use crate::quorum::Standing;
use crate::wake::{Watch, COURTESY};
use crate::Error;

/// The retry loop of every primitive: `try_once` makes one attempt
/// (for a semaphore, over its permits); while the resource is held,
/// a release of any of `watched` starts the next one at once.
pub(crate) async fn with_retries<F, Fut>(
    inner: &Inner,
    watched: &Keys,
    ttl: Duration,
    mut try_once: F,
) -> Result<Lock, Error>
where
    F: FnMut(Plan) -> Fut,
    Fut: Future<Output = Result<Lock, Failed>>,
{
    let keys = watched;
    let plan = inner.plan(ttl)?;
    let started = Instant::now();
    let policy = &inner.retry;
    // Set up once the resource was found held: wakes us on the release
    // of any of its keys.
    let mut watch: Option<Watch> = None;
    if let Some(until) = inner.wakeups.courtesy(keys) {
        // This manager just released the lock to waiters: their turn.
        let w = inner.wakeups.watch(keys, COURTESY).await;
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
            watch = Some(inner.wakeups.watch(keys, wait).await);
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

/// Contests in a row whose quick retries are not counted as attempts.
const FREE_CONTEST_RETRIES: u32 = 6;

/// A random wait within 2, 4, 8, ... ms after `contests` contested
/// attempts in a row.
fn contest_backoff(contests: u32) -> Duration {
    let window_us = 1_000u64 << contests.clamp(1, 10);
    Duration::from_micros(rand::random_range(0..window_us))
}

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
