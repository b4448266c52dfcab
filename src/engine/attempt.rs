//! One attempt over every node: the whole of REDLOCK.md's "Acquire"
//! section, from the token to the lock handed out (or everything it set
//! given back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::cleanup::{in_flight, merge, Cleanup, InFlight};
use super::lock::Lock;
use super::{fence_key, Inner, Keys, Plan};
use crate::fanout::Fanout;
use crate::node::set_nx_px_cmd;
use crate::quorum::{self, Decision, Standing, Tally};
use crate::rwlock::{Admission, Side};
use crate::stats;
use crate::Error;

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
pub(crate) const ASK_AGAIN_ROUNDS: u32 = 4;

/// The leader's pause before asking again: time for the other contenders
/// to hear their replies and delete their keys.
pub(crate) const ASK_AGAIN_PAUSE: Duration = Duration::from_millis(1);

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
