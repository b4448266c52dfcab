//! Looking at a lock without touching it: what each node holds under the
//! lock's keys, and what a quorum of nodes agrees on. For incidents ("who
//! holds this, and for how long?") and for tools; nothing is written.

use std::sync::Arc;
use std::time::Duration;

use crate::error::FailureKind;
use crate::quorum::{self, Reply};
use crate::redlock::{require_runtime, Inner, Redlock};
use crate::Error;

/// What [`Redlock::inspect`](crate::Redlock::inspect) or
/// [`Semaphore::inspect`](crate::Semaphore::inspect) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    key: String,
    nodes: Vec<NodeView>,
    reading: Reading,
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
        Ok(self.inspect_keys(key.to_string(), Arc::from([key])).await)
    }

    /// [`inspect`] of `keys`, reported under `key`.
    pub(crate) async fn inspect_keys(&self, key: String, keys: Arc<[Arc<str>]>) -> Inspection {
        let limit = crate::builder::health_limit(self.inner.node_timeout);
        inspect(&self.inner, key, keys, limit).await
    }
}

/// Per node, per key: the string value held there and its TTL in ms, or
/// `None` for no string (free); `Err` for a node that did not answer.
type Seen = Vec<Result<Vec<Option<(String, i64)>>, FailureKind>>;

/// Reads `keys` on every node, waiting at most `limit` for answers.
async fn inspect(
    inner: &Arc<Inner>,
    key: String,
    keys: Arc<[Arc<str>]>,
    limit: Duration,
) -> Inspection {
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
                Ok(entries) => Ok(entries
                    .into_iter()
                    .map(|(kind, value, ttl)| (kind == "string").then_some((value, ttl)))
                    .collect()),
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
                    .flatten()
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
        reading: reading(&seen, keys.len()),
    }
}

/// The quorum's reading of `keys` keys (each a mutex or a permit's slot):
/// per key, the token a quorum holds, or a quorum holding nothing; `Free`
/// when every key is free, `Held` when every key is settled and some are
/// held, `Unknown` when any key is neither.
fn reading(seen: &Seen, keys: usize) -> Reading {
    let quorum = quorum::quorum(seen.len());
    let mut held = Vec::new();
    for k in 0..keys {
        let values: Vec<Option<&str>> = seen
            .iter()
            .filter_map(|node| node.as_ref().ok())
            .map(|entries| {
                entries
                    .get(k)
                    .and_then(|e| e.as_ref())
                    .map(|(t, _)| t.as_str())
            })
            .collect();
        let free = values.iter().filter(|v| v.is_none()).count();
        let holder = values
            .iter()
            .flatten()
            .find(|token| values.iter().filter(|v| **v == Some(**token)).count() >= quorum);
        match holder {
            Some(token) => held.push((*token).to_string()),
            None if free >= quorum => {}
            None => return Reading::Unknown,
        }
    }
    if held.is_empty() {
        Reading::Free
    } else {
        Reading::Held(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(values: &[Option<&str>]) -> Result<Vec<Option<(String, i64)>>, FailureKind> {
        Ok(values
            .iter()
            .map(|v| v.map(|t| (t.to_string(), 1000)))
            .collect())
    }

    #[test]
    fn a_quorum_decides_each_key() {
        let down = Err(FailureKind::Unreachable);
        // A mutex held by "a" on two of three nodes.
        let seen = vec![node(&[Some("a")]), node(&[Some("a")]), down.clone()];
        assert_eq!(reading(&seen, 1), Reading::Held(vec!["a".into()]));
        // Free on two, held on one: free.
        let seen = vec![node(&[None]), node(&[Some("a")]), node(&[None])];
        assert_eq!(reading(&seen, 1), Reading::Free);
        // One free, one held, one down: nobody has a quorum.
        let seen = vec![node(&[None]), node(&[Some("a")]), down.clone()];
        assert_eq!(reading(&seen, 1), Reading::Unknown);
        // A split between two contenders.
        let seen = vec![node(&[Some("a")]), node(&[Some("b")]), node(&[None])];
        assert_eq!(reading(&seen, 1), Reading::Unknown);
        // Two permits held, one free, of three.
        let seen = vec![
            node(&[Some("a"), None, Some("c")]),
            node(&[Some("a"), None, Some("c")]),
            node(&[None, None, None]),
        ];
        assert_eq!(
            reading(&seen, 3),
            Reading::Held(vec!["a".into(), "c".into()])
        );
    }
}
