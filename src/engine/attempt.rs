//! One attempt over every node: the whole of REDLOCK.md's "Acquire"
//! section, from the token to the lock handed out (or everything it set
//! given back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::admission::{Admission, Rule, Step};
use super::cleanup::{in_flight, merge, Cleanup, InFlight};
use super::lock::Lock;
use super::{Inner, Keys, Plan};
use crate::claim;
use crate::error::InUse;
use crate::fanout::Fanout;
use crate::node::{admit_cmd, set_nx_px_cmd};
use crate::quorum::{self, Decision, Reply, Standing, Tally};
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

/// One attempt, admitted on each node as `admission` says, in a tracing
/// span; counted by the metrics.
pub(crate) async fn attempt(
    inner: &Arc<Inner>,
    admission: &Arc<Admission>,
    plan: Plan,
) -> Result<Lock, Failed> {
    use tracing::Instrument;
    let keys = &admission.keys;
    let span = tracing::debug_span!("quorumlock_attempt", key = &*keys[0], keys = keys.len());
    let result = if span.is_disabled() {
        // Nobody listens: no span to enter on every poll.
        ballot(inner, admission, plan).await
    } else {
        ballot(inner, admission, plan).instrument(span).await
    };
    stats::attempt(result.as_ref().map(drop).map_err(|f| &f.error));
    result
}

/// What one node said to an attempt: its vote, the fence counter a yes
/// vote read, and what the name is used as when the node refused it so.
type Answer = (Reply, Option<u64>, Option<InUse>);

/// Asks node `i` to admit `token` as `admission` says; `prepared` is the
/// command built once for every node (a plain key's `SET`, a primitive's
/// script).
async fn ask(
    inner: &Inner,
    i: usize,
    admission: &Admission,
    token: &str,
    ttl_ms: u64,
    prepared: Option<&redis::Cmd>,
) -> Answer {
    let node = &inner.nodes[i];
    let keys = &admission.keys;
    match (&admission.rule, &admission.fence) {
        (Rule::Set, None) => {
            let reply = node
                .acquire(&inner.scripts, keys, token, ttl_ms, prepared)
                .await;
            (reply, None, None)
        }
        (Rule::Set, Some(fence)) => {
            let (reply, counter) = node
                .acquire_fenced(&inner.scripts, keys, &fence.keys, token, ttl_ms)
                .await;
            (reply, counter, None)
        }
        (
            Rule::Script {
                script, keys, args, ..
            },
            fence,
        ) => {
            let fenced = fence.is_some();
            let (reply, status) = match prepared {
                Some(eval) => node.admit(script, eval, fenced).await,
                None => {
                    let fence_keys = fence.as_ref().map_or(&[][..], |f| &f.keys[..]);
                    let eval = admit_cmd(script, (keys, fence_keys), token, ttl_ms, args);
                    node.admit(script, &eval, fenced).await
                }
            };
            match status {
                Some((1, counter)) => (reply, u64::try_from(counter).ok(), None),
                Some((status, value)) => (reply, None, claim::refused_as(status, value)),
                None => (reply, None, None),
            }
        }
    }
}

/// One attempt: the whole of REDLOCK.md's "Acquire" section. Every node
/// is asked at once; a quorum of yes votes within the validity window
/// wins; a contest on a plain key is settled by asking again (see
/// [`ask_again`]); a won fence is made durable (see [`commit_fence`]);
/// and whatever the outcome, nothing of a lost attempt stays set.
async fn ballot(
    inner: &Arc<Inner>,
    admission: &Arc<Admission>,
    plan: Plan,
) -> Result<Lock, Failed> {
    let ttl = plan.ttl;
    let keys = admission.keys.clone();
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
    // With fencing, each yes vote leaves here the fence its counter gives.
    let counters: Option<Arc<[AtomicU64]>> = admission
        .fence
        .as_ref()
        .map(|_| (0..inner.nodes.len()).map(|_| AtomicU64::new(0)).collect());
    // What a node said the name is used as, when one did (only a
    // primitive's script can say).
    let in_use: Option<Arc<std::sync::Mutex<Option<InUse>>>> =
        matches!(admission.rule, Rule::Script { .. }).then(Arc::default);
    // A single key's SET, or a primitive's script, built once for every node.
    let prepared: Option<Arc<redis::Cmd>> = match &admission.rule {
        Rule::Set => admission
            .plain_key()
            .map(|key| set_nx_px_cmd(key, &token, plan.ttl_ms, true)),
        Rule::Script {
            script, keys, args, ..
        } => {
            let fence_keys = admission.fence.as_ref().map_or(&[][..], |f| &f.keys[..]);
            Some(admit_cmd(
                script,
                (keys, fence_keys),
                &token,
                plan.ttl_ms,
                args,
            ))
        }
    }
    .map(Arc::new);
    let step = admission.fence.as_ref().map(|f| f.step);
    let mut calls = inner.fan_out(|inner, i| {
        let (admission, token, prepared) = (admission.clone(), token.clone(), prepared.clone());
        let (counters, in_use) = (counters.clone(), in_use.clone());
        async move {
            let (reply, counter, found) = ask(
                &inner,
                i,
                &admission,
                &token,
                plan.ttl_ms,
                prepared.as_deref(),
            )
            .await;
            if let (Some(counters), Some(c)) = (&counters, counter) {
                let fence = match step {
                    Some(Step::Last) => c,
                    _ => c.saturating_add(1),
                };
                counters[i].store(fence, Ordering::SeqCst);
            }
            if let (Some(in_use), Some(_)) = (&in_use, found) {
                *crate::link::lock(in_use) = found;
            }
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
    if let Some(key) = admission.plain_key() {
        let asking = (key, &token, prepared.as_ref());
        (standing, asked_again) =
            ask_again(inner, asking, &mut tally, (standing, start), plan).await;
    }
    let fence = match (&admission.fence, &counters, tally.decision()) {
        (Some(fence), Some(counters), Some(Decision::Won)) => {
            let read = counters.iter().map(|c| c.load(Ordering::SeqCst)).max();
            match fence.step {
                // Shared holders only learn the last fence.
                Step::Last => Ok(read),
                // The largest among the voters, made durable on a quorum
                // before the lock is handed out.
                Step::Next => {
                    let fence_value = read.unwrap_or(1);
                    let commit =
                        commit_fence(inner, (&keys, &fence.keys, &token), fence_value, plan).await;
                    if commit.decision() == Some(Decision::Won) {
                        Ok(Some(fence_value))
                    } else {
                        // Exclusion is fine, but the token could not be made durable.
                        Err(commit.error())
                    }
                }
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
                (keys, token, ttl),
                ((start + validity).into_std(), validity, suspended),
                merge(in_flight(calls), asked_again),
                (fence, admission),
            ));
        }
        (Err(error), _, _) => error,
        (_, Some(Decision::Won), None) => Error::ValidityExhausted { elapsed, ttl },
        _ => match (
            &admission.rule,
            in_use.as_ref().and_then(|f| *crate::link::lock(f)),
        ) {
            (Rule::Script { name, .. }, Some(found)) => Error::NameInUse {
                name: name.to_string(),
                found,
            },
            _ => tally.error(),
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

/// The leader of a contest on a plain key (see
/// [`Standing::Lead`](crate::quorum::Standing)) asks the nodes its
/// contenders held once more, while the node deadline allows: the others
/// are giving their keys back. Returns the standing after it, and the
/// calls still out.
async fn ask_again(
    inner: &Arc<Inner>,
    (key, token, prepared): (&Arc<str>, &Arc<str>, Option<&Arc<redis::Cmd>>),
    tally: &mut Tally,
    (mut standing, start): (Standing, Instant),
    plan: Plan,
) -> (Standing, Option<InFlight>) {
    let mut asked_again: Option<InFlight> = None;
    let mut rounds = 0;
    while standing == Standing::Lead
        && rounds < ASK_AGAIN_ROUNDS
        && start.elapsed() < plan.node_deadline
    {
        rounds += 1;
        if rounds == 1 {
            // The contenders decided when we did and are deleting their
            // keys now: a few turns of the scheduler usually let those
            // deletes out before our SETs.
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
                let prepared = prepared.cloned();
                async move {
                    let node = &inner.nodes[i];
                    let reply = node
                        .ask_again(&key, &token, plan.ttl_ms, prepared.as_deref())
                        .await;
                    (i, reply)
                }
            })
            .collect();
        let now = Instant::now();
        let window = (now, now + plan.node_deadline);
        quorum::gather(&mut again, tally, window, plan.node_deadline, None).await;
        asked_again = merge(asked_again, in_flight(again));
        standing = tally.standing(token);
    }
    (standing, asked_again)
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
