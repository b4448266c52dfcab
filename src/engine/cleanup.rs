//! What stays on the wire once a caller has its answer: `SET`s whose reply
//! came after the vote was decided, and deletes beyond the quorum. They are
//! finished here, without making the caller wait, and only spawn a task
//! when something is really still pending.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Future, FutureExt, Stream, StreamExt};

use super::{health_limit, Inner, Keys};
use crate::backoff::Backoff;
use crate::error::FailureKind;
use crate::fanout::Fanout;
use crate::quorum::{Reply, Tally};

/// Calls still in flight, each yielding its node index and reply.
pub(crate) type InFlight = Pin<Box<dyn Stream<Item = (usize, Reply)> + Send>>;

/// The unfinished business of one lock (or one failed attempt).
pub(crate) struct Cleanup {
    inner: Arc<Inner>,
    keys: Keys,
    token: Arc<str>,
    ttl: Duration,
    /// `SET`s of the acquire whose replies had not come.
    late_sets: Option<InFlight>,
    /// Calls sent (deletes, extends), replies not yet read.
    pending: Option<InFlight>,
    /// Nodes where a late `SET` landed after the release: delete again.
    redelete: Vec<usize>,
    /// Send a compare-and-delete to every node first.
    release_all: bool,
    /// Wake waiters when deleting (a holder's release, not a failed attempt).
    announce: bool,
    /// Keys whose release channels are announced on too.
    also_announce: Option<Keys>,
    /// `pending` are deletes: one that got no answer is sent again.
    pending_deletes: bool,
    /// Nodes whose delete is among `pending` (bit `i` for node `i`).
    waiting: u64,
    /// The release's deletes, sent already (see [`run`](Self::run)), and
    /// when.
    sent: Option<(tokio::time::Instant, InFlight)>,
}

impl Cleanup {
    /// A clean-up that releases a held lock on every node, waking waiters.
    pub(crate) fn release(inner: Arc<Inner>, keys: Keys, token: Arc<str>, ttl: Duration) -> Self {
        Self {
            announce: true,
            ..Self::discard(inner, keys, token, ttl)
        }
    }

    /// A clean-up that removes what a failed or abandoned attempt set,
    /// without waking anyone.
    pub(crate) fn discard(inner: Arc<Inner>, keys: Keys, token: Arc<str>, ttl: Duration) -> Self {
        Self {
            inner,
            keys,
            token,
            ttl,
            late_sets: None,
            pending: None,
            redelete: Vec::new(),
            release_all: true,
            announce: false,
            also_announce: None,
            pending_deletes: true,
            waiting: 0,
            sent: None,
        }
    }

    /// Also announce the release on `keys`' channels.
    pub(crate) fn announcing(mut self, keys: Keys) -> Self {
        self.also_announce = Some(keys);
        self
    }

    /// Also watch these `SET`s: any that lands gets its own delete.
    pub(crate) fn with_late_sets(mut self, late_sets: Option<InFlight>) -> Self {
        self.late_sets = late_sets;
        self
    }

    /// Nothing new to send: only finish `pending` (and any late sets).
    pub(crate) fn finishing(mut self, pending: Option<InFlight>) -> Self {
        self.release_all = false;
        self.pending_deletes = false;
        self.pending = pending;
        self
    }

    /// The nodes whose deletes are among the pending calls: one that stays
    /// unanswered past the health limit (a request lost with a silent
    /// connection) is sent again on a fresh one.
    pub(crate) fn waiting_on(mut self, nodes: u64) -> Self {
        self.waiting |= nodes;
        self
    }

    /// Also delete on these nodes (their delete got no answer).
    pub(crate) fn deleting_again(mut self, nodes: impl IntoIterator<Item = usize>) -> Self {
        self.redelete.extend(nodes);
        self
    }

    /// As [`finishing`](Self::finishing), `pending` being the release's
    /// deletes: one that got no answer is sent again.
    pub(crate) fn finishing_deletes(mut self, pending: Option<InFlight>) -> Self {
        self = self.finishing(pending);
        self.pending_deletes = true;
        self
    }

    /// Finishes what can be finished now; spawns a task (on `runtime`, or
    /// else the current one) for the rest. Without any runtime nothing can
    /// be sent, and the keys expire with their TTL.
    pub(crate) fn run(mut self, runtime: Option<&tokio::runtime::Handle>) {
        if !self.release_all && self.drain_ready() {
            return;
        }
        if self.release_all && tokio::runtime::Handle::try_current().is_ok() {
            // The deletes go out now, not when the task first runs: a
            // caller that retries at once must find its SETs queued behind
            // them on each node's connection, or its own leftover key
            // votes against it.
            let mut calls = self.release_calls();
            let start = tokio::time::Instant::now();
            let mut early = Vec::new();
            while let Some(Some(reply)) = calls.next().now_or_never() {
                early.push(reply);
            }
            let calls = futures::stream::iter(early).chain(calls);
            self.sent = Some((start, Box::pin(calls)));
        }
        let current = tokio::runtime::Handle::try_current().ok();
        if let Some(runtime) = runtime.or(current.as_ref()) {
            let running = self.inner.background.started();
            runtime.spawn(async move {
                self.finish().await;
                drop(running);
            });
        }
    }

    /// The compare-and-delete of our keys on every node, announced as this
    /// clean-up says; sent when first polled.
    fn release_calls(&self) -> Fanout<impl Future<Output = (usize, Reply)> + Send + 'static> {
        let also = self.also_announce.clone().unwrap_or_else(|| Arc::from([]));
        let announce = self.announce.then_some(&also);
        self.inner.release_calls(&self.keys, &self.token, announce)
    }

    /// Reads replies that are already in; `true` when nothing is left.
    fn drain_ready(&mut self) -> bool {
        let redelete = &mut self.redelete;
        let pending_deletes = self.pending_deletes;
        let waiting = &mut self.waiting;
        drain(&mut self.pending, |(i, reply)| {
            *waiting &= !(1u64 << i);
            if pending_deletes && unanswered_reply(&reply) {
                redelete.push(i);
            }
        });
        drain(&mut self.late_sets, |(i, reply)| {
            if reply.may_have_landed() {
                redelete.push(i);
            }
        });
        self.pending.is_none() && self.late_sets.is_none() && self.redelete.is_empty()
    }

    async fn finish(mut self) {
        let Self {
            inner,
            keys,
            token,
            ttl,
            ..
        } = &self;
        let (inner, keys, token, ttl) = (inner.clone(), keys.clone(), token.clone(), *ttl);
        let work = async {
            let mut unanswered = Vec::new();
            if self.release_all {
                let (tally, leftover) = match self.sent.take() {
                    Some((start, calls)) => inner.gather_release(start, calls).await,
                    None => {
                        let calls = self.release_calls();
                        inner
                            .gather_release(tokio::time::Instant::now(), calls)
                            .await
                    }
                };
                // Calls still out are in `leftover`; these failed outright.
                unanswered.extend(
                    tally
                        .failures()
                        .iter()
                        .filter(|f| f.kind() == FailureKind::Unreachable)
                        .map(|f| f.node()),
                );
                self.waiting |= still_out(&tally);
                self.pending = leftover;
            }
            unanswered.append(&mut self.redelete);
            let again = futures::future::join_all(
                unanswered
                    .into_iter()
                    .map(|i| delete_on(&inner, i, &keys, &token)),
            );
            let pending_deletes = self.pending_deletes;
            let waiting = AtomicU64::new(if pending_deletes { self.waiting } else { 0 });
            let pending = async {
                if let Some(p) = self.pending.as_mut() {
                    while let Some((i, reply)) = p.next().await {
                        waiting.fetch_and(!(1u64 << i), Ordering::AcqRel);
                        if pending_deletes && unanswered_reply(&reply) {
                            delete_on(&inner, i, &keys, &token).await;
                        }
                    }
                }
            };
            // Deletes still unanswered at the health limit are sent again;
            // usually `pending` is done long before and nothing waits.
            let pending = async {
                tokio::pin!(pending);
                if waiting.load(Ordering::Acquire) == 0 {
                    return pending.await;
                }
                tokio::select! {
                    () = &mut pending => {}
                    () = tokio::time::sleep(health_limit(inner.node_timeout)) => {
                        let stuck = waiting.load(Ordering::Acquire);
                        let nodes = (0..inner.nodes.len()).filter(|i| stuck & (1u64 << i) != 0);
                        futures::future::join_all(
                            nodes.map(|i| delete_on(&inner, i, &keys, &token)),
                        )
                        .await;
                        pending.await;
                    }
                }
            };
            let late = async {
                if let Some(sets) = self.late_sets.as_mut() {
                    while let Some((i, reply)) = sets.next().await {
                        if reply.may_have_landed() {
                            delete_on(&inner, i, &keys, &token).await;
                        }
                    }
                }
            };
            futures::join!(again, pending, late);
        };
        // After a TTL every key of ours has expired anyway.
        let _ = tokio::time::timeout(ttl, work).await;
    }
}

/// The nodes still silent when `tally` was closed: their calls are out.
pub(crate) fn still_out(tally: &Tally) -> u64 {
    tally
        .failures()
        .iter()
        .filter(|f| matches!(f.kind(), FailureKind::TimedOut(_)))
        .fold(0, |bits, f| bits | 1u64 << f.node())
}

/// The node could not be heard: a delete may not have run.
fn unanswered_reply(reply: &Reply) -> bool {
    matches!(reply, Reply::Fail(kind, _) if kind.is_silent())
}

/// Deletes our keys on `node`, sending the delete again (after a jittered
/// backoff) while the node cannot be heard: under resets or a dropped
/// connection, one lost delete would leave our key blocking the resource
/// for a whole TTL. Callers bound it by the TTL, after which the key is
/// gone anyway.
pub(crate) async fn delete_on(inner: &Inner, node: usize, keys: &[Arc<str>], token: &str) {
    let mut backoff = Backoff::default();
    loop {
        let reply = inner.nodes[node].release(&inner.scripts, keys, token).await;
        if !unanswered_reply(&reply) {
            return;
        }
        tokio::time::sleep(backoff.fail()).await;
    }
}

/// Boxes the calls still running, if any.
pub(crate) fn in_flight<S>(calls: S) -> Option<InFlight>
where
    S: Stream<Item = (usize, Reply)> + Send + 'static,
{
    (calls.size_hint().1 != Some(0)).then(|| Box::pin(calls) as InFlight)
}

/// Both sets of calls still running, as one.
pub(crate) fn merge(a: Option<InFlight>, b: Option<InFlight>) -> Option<InFlight> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Box::pin(futures::stream::select(a, b))),
        (a, b) => a.or(b),
    }
}

/// Feeds every reply already available to `on`; drops the stream once done.
fn drain(stream: &mut Option<InFlight>, mut on: impl FnMut((usize, Reply))) {
    let Some(s) = stream.as_mut() else { return };
    loop {
        match s.next().now_or_never() {
            Some(Some(item)) => on(item),
            Some(None) => {
                *stream = None;
                return;
            }
            None => return,
        }
    }
}
