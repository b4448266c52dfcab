//! Looking at a lock without touching it: what each node holds under the
//! lock's keys, and what a quorum of nodes agrees on. For incidents ("who
//! holds this, and for how long?") and for tools; nothing is written.

use std::sync::Arc;
use std::time::Duration;

use crate::claim::Claim;
use crate::engine::{health_limit, require_runtime, Inner};
use crate::error::{FailureKind, InUse};
use crate::quorum::{self, Reply};
use crate::redlock::Redlock;
use crate::Error;

/// What [`Redlock::inspect`](crate::Redlock::inspect) or
/// [`Semaphore::inspect`](crate::Semaphore::inspect) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    key: String,
    nodes: Vec<NodeView>,
    reading: Reading,
    in_use: Option<InUse>,
}

impl Inspection {
    /// The Redis key looked at (a semaphore's: its name's key).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What each node said, in node order.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// What the name is used as on some node that answered, when that is
    /// not the kind inspected (a semaphore where a mutex was asked for, a
    /// semaphore of another permit count, ...): locking it as this kind
    /// then fails with [`Error::NameInUse`](crate::Error::NameInUse) or a
    /// `WRONGTYPE` refusal, while the holders above are only this kind's.
    pub fn in_use(&self) -> Option<InUse> {
        self.in_use
    }

    /// What a quorum of nodes agrees on.
    pub fn reading(&self) -> &Reading {
        &self.reading
    }
}

/// What one node said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeView {
    /// The node answered with the holders it has (none: free on this node).
    Holders(Vec<Holder>),
    /// The node did not answer in time, or refused, and why.
    Unreachable(FailureKind),
}

/// One holder's key on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    token: String,
    ttl: Option<Duration>,
}

impl Holder {
    /// The holder's token (see [`Lock::token`](crate::Lock::token)).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long the node keeps the key (`None`: no expiry, so not a key of
    /// ours: another application wrote it).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }
}

/// The quorum's reading of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reading {
    /// A quorum of nodes holds nothing (for a semaphore: under any permit).
    Free,
    /// A quorum of nodes agrees on these holders' tokens (one for a mutex,
    /// one per permit held for a semaphore).
    Held(Vec<String>),
    /// Too few nodes answered, or they disagree: no quorum either way.
    Unknown,
}

impl Redlock {
    /// What each node holds under `resource`'s key (holder token and TTL
    /// left, or why it did not answer) and the quorum's reading: free,
    /// held by one token, or unknown. Read-only: it changes nothing, and
    /// waits for slow nodes at most the connection health limit (ten node
    /// timeouts, at least 500 ms).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty or reserved name;
    /// [`Error::NoRuntime`] outside tokio.
    ///
    /// ```no_run
    /// # async fn demo(redlock: quorumlock::Redlock) -> Result<(), quorumlock::Error> {
    /// use quorumlock::{NodeView, Reading};
    ///
    /// let seen = redlock.inspect("report:daily").await?;
    /// for (node, view) in seen.nodes().iter().enumerate() {
    ///     match view {
    ///         NodeView::Holders(holders) => {
    ///             for h in holders {
    ///                 println!("node {node}: {} for {:?}", h.token(), h.ttl());
    ///             }
    ///         }
    ///         NodeView::Unreachable(why) => println!("node {node}: {why}"),
    ///         _ => {}
    ///     }
    /// }
    /// if let Reading::Held(tokens) = seen.reading() {
    ///     println!("held by {}", tokens[0]);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, resource: &str) -> Result<Inspection, Error> {
        require_runtime()?;
        let key = self.checked_key(resource)?;
        Ok(self.inspect_keys(Claim::Mutex, key, &[]).await)
    }

    /// [`inspect`] of the name's key `key`, then of `keys`, reported
    /// under `key`.
    pub(crate) async fn inspect_keys(
        &self,
        named: Claim,
        key: Arc<str>,
        keys: &[Arc<str>],
    ) -> Inspection {
        let limit = health_limit(self.inner.node_timeout);
        let all: Arc<[Arc<str>]> = std::iter::once(key.clone())
            .chain(keys.iter().cloned())
            .collect();
        inspect(&self.inner, named, key.to_string(), all, limit).await
    }
}

/// Per node, the holders' tokens and TTLs in ms it has under the keys;
/// `Err` for a node that did not answer.
type Seen = Vec<Result<Vec<(String, i64)>, FailureKind>>;

/// Reads `keys` on every node, waiting at most `limit` for answers.
async fn inspect(
    inner: &Arc<Inner>,
    named: Claim,
    key: String,
    keys: Arc<[Arc<str>]>,
    limit: Duration,
) -> Inspection {
    // The name's key comes first; it holds a holder only for a mutex.
    let skip = usize::from(!matches!(named, Claim::Mutex));
    let mut in_use = None;
    let mut calls: crate::fanout::Fanout<_> = (0..inner.nodes.len())
        .map(|i| {
            let (inner, keys) = (inner.clone(), keys.clone());
            async move { (i, inner.nodes[i].inspect(&inner.scripts, &keys).await) }
        })
        .collect();
    let mut seen: Seen = vec![Err(FailureKind::TimedOut(limit)); inner.nodes.len()];
    let _ = tokio::time::timeout(limit, async {
        use futures::StreamExt;
        while let Some((i, answer)) = calls.next().await {
            seen[i] = match answer {
                Ok(entries) => {
                    if let Some((kind, value, _)) = entries.first() {
                        in_use = in_use.or(named.conflict(kind, value));
                    }
                    Ok(entries
                        .into_iter()
                        .skip(skip)
                        .filter(|(kind, _, _)| kind == "string")
                        .map(|(_, value, ttl)| (value, ttl))
                        .collect())
                }
                Err(Reply::Fail(kind, _)) => Err(kind),
                Err(_) => Err(FailureKind::Other),
            };
        }
    })
    .await;
    let nodes = seen
        .iter()
        .map(|node| match node {
            Ok(entries) => NodeView::Holders(
                entries
                    .iter()
                    .map(|(token, ttl)| Holder {
                        token: token.clone(),
                        ttl: u64::try_from(*ttl).ok().map(Duration::from_millis),
                    })
                    .collect(),
            ),
            Err(kind) => NodeView::Unreachable(*kind),
        })
        .collect();
    Inspection {
        key,
        nodes,
        reading: reading(&seen),
        in_use,
    }
}

/// The quorum's reading: the tokens held on a quorum of nodes (one per
/// holder: a mutex's, each permit's, the writer's or each reader's);
/// failing that, free when a quorum of nodes holds nothing at all, and
/// unknown otherwise (too few answers, or contenders split the nodes).
fn reading(seen: &Seen) -> Reading {
    let quorum = quorum::quorum(seen.len());
    let answered: Vec<&Vec<(String, i64)>> = seen.iter().filter_map(|n| n.as_ref().ok()).collect();
    let mut held: Vec<String> = Vec::new();
    for entries in &answered {
        for (token, _) in entries.iter() {
            let count = answered
                .iter()
                .filter(|other| other.iter().any(|(t, _)| t == token))
                .count();
            if count >= quorum && !held.contains(token) {
                held.push(token.clone());
            }
        }
    }
    if !held.is_empty() {
        Reading::Held(held)
    } else if answered.iter().filter(|entries| entries.is_empty()).count() >= quorum {
        Reading::Free
    } else {
        Reading::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(tokens: &[&str]) -> Result<Vec<(String, i64)>, FailureKind> {
        Ok(tokens.iter().map(|t| (t.to_string(), 1000)).collect())
    }

    #[test]
    fn a_quorum_decides() {
        let down = Err(FailureKind::Unreachable);
        // A mutex held by "a" on two of three nodes.
        let seen = vec![node(&["a"]), node(&["a"]), down.clone()];
        assert_eq!(reading(&seen), Reading::Held(vec!["a".into()]));
        // Free on two, held on one: free.
        let seen = vec![node(&[]), node(&["a"]), node(&[])];
        assert_eq!(reading(&seen), Reading::Free);
        // One free, one held, one down: nobody has a quorum.
        let seen = vec![node(&[]), node(&["a"]), down.clone()];
        assert_eq!(reading(&seen), Reading::Unknown);
        // A split between two contenders.
        let seen = vec![node(&["a"]), node(&["b"]), node(&[])];
        assert_eq!(reading(&seen), Reading::Unknown);
        // Two permits (or readers) held, one only on one node.
        let seen = vec![node(&["a", "c"]), node(&["a", "c", "d"]), node(&[])];
        assert_eq!(reading(&seen), Reading::Held(vec!["a".into(), "c".into()]));
    }
}
