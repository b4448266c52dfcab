//! The one error type of the crate, shaped so callers can ask it questions
//! (`is_contended()`, `is_unavailable()`, ...) instead of matching messages,
//! and the per-node detail that vote errors carry ([`NodeFailure`]).

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong when building a [`Redlock`](crate::Redlock)
/// or locking with it.
///
/// Failures to lock carry the votes won and the quorum needed, so a caller
/// can log "2 of 3 needed, won 1" without parsing text, and the nodes that
/// did not vote, with why ([`failures`](Self::failures)). After any error,
/// nothing this attempt wrote is left locked: keys are removed, or expire
/// with their TTL where a node cannot be reached.
///
/// ```no_run
/// # async fn demo(redlock: quorumlock::Redlock) {
/// use std::time::Duration;
/// match redlock.try_acquire("report:daily", Duration::from_secs(30)).await {
///     Ok(lock) => drop(lock),
///     Err(e) if e.is_contended() => { /* someone else runs the report */ }
///     Err(e) if e.is_invalid() => panic!("fix the configuration: {e}"),
///     Err(e) => {
///         for failure in e.failures() {
///             eprintln!("node {}: {}", failure.node(), failure.kind());
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Other owners hold the resource on so many nodes that no quorum was
    /// possible. Retrying later may succeed.
    #[error("resource is held by another owner: won {votes} of the {quorum} votes needed")]
    Contended {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
    },

    /// Too few nodes answered in time for a quorum: they timed out, could
    /// not be reached, or answered with a passing error. Retrying may help.
    #[error("too few Redis nodes answered: won {votes} of the {quorum} votes needed ({})", Summary(.failures))]
    Unavailable {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
        /// Why each node that did not vote failed.
        failures: Vec<NodeFailure>,
        /// The first node error among `failures`, if any.
        #[source]
        source: Option<redis::RedisError>,
    },

    /// Nodes refused the operation for a reason a retry cannot fix (wrong
    /// credentials, a missing permission, a read-only replica, a key of
    /// another type, a script that may not run, two entries that are one
    /// server), and that cost the quorum. The operator has to act; the node
    /// heals by itself once they have (see [`FailureKind::is_permanent`]).
    #[error("Redis nodes refused the operation: won {votes} of the {quorum} votes needed ({})", Summary(.failures))]
    Refused {
        /// Nodes that granted the lock (or confirmed the operation).
        votes: usize,
        /// Nodes that had to.
        quorum: usize,
        /// Why each node that did not vote failed.
        failures: Vec<NodeFailure>,
        /// The first refusal's error.
        #[source]
        source: Option<redis::RedisError>,
    },

    /// A node answered with an error that may pass (for example `LOADING`
    /// or `BUSY`), and too few nodes voted yes.
    #[error("a Redis node answered with an error: won {votes} of the {quorum} votes needed ({})", Summary(.failures))]
    Redis {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
        /// Why each node that did not vote failed.
        failures: Vec<NodeFailure>,
        /// The error a node answered with.
        #[source]
        source: Option<redis::RedisError>,
    },

    /// A quorum agreed, but it took so long that no validity was left
    /// (`ttl - elapsed - drift <= 0`). The keys were removed again.
    #[error("quorum reached too late: {elapsed:?} of a {ttl:?} TTL had passed")]
    ValidityExhausted {
        /// Time the attempt took.
        elapsed: Duration,
        /// The TTL asked for.
        ttl: Duration,
    },

    /// Ownership is gone or can no longer be guaranteed: see `cause`. The
    /// lock is not re-acquired behind the caller's back.
    #[error("lock on `{resource}` was lost ({cause}): {votes} of the {quorum} needed nodes confirmed it")]
    Lost {
        /// The resource as the caller named it.
        resource: String,
        /// Nodes that still confirmed our ownership.
        votes: usize,
        /// Nodes that had to confirm it.
        quorum: usize,
        /// Why ownership is gone.
        cause: LossCause,
        /// The first node error seen by the failed operation, if any.
        #[source]
        source: Option<redis::RedisError>,
    },

    /// A node address could not be parsed.
    #[error("invalid Redis node address (node {index})")]
    InvalidNode {
        /// Position of the address in the list given to the builder.
        index: usize,
        /// Why it was rejected.
        #[source]
        source: redis::RedisError,
    },

    /// Two node entries reach the same Redis server: one failure domain
    /// must never count as two votes.
    #[error("nodes {first} and {second} are the same Redis server ({how})")]
    SameServer {
        /// The earlier entry.
        first: usize,
        /// The later entry, refused.
        second: usize,
        /// How it was found out: "same address", or "same run_id".
        how: &'static str,
    },

    /// Fencing was asked for, and a node may lose writes it acknowledged
    /// (see [`Builder::require_durable_fences`](crate::Builder::require_durable_fences)).
    #[error("node {node} cannot keep fence counters: {why}")]
    NotDurable {
        /// The node's index.
        node: usize,
        /// What its settings lack.
        why: &'static str,
    },

    /// The builder's settings cannot work together (for example no nodes).
    #[error("invalid configuration: {0}")]
    Config(&'static str),

    /// An argument to a lock operation is unusable (empty resource, zero or
    /// too short or too long TTL).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),

    /// The name is already in use by another kind of lock, or by a semaphore
    /// with another number of permits: every client of one name must agree,
    /// or the larger count would admit more holders than the smaller one
    /// allows. Nothing was locked.
    #[error("`{name}` is already in use as {found}")]
    NameInUse {
        /// The name as the caller gave it.
        name: String,
        /// What the nodes hold under it.
        found: InUse,
    },

    /// The call was polled outside a tokio runtime (with its time and I/O
    /// drivers enabled), which quorumlock needs for its deadlines and
    /// connections.
    #[error("no tokio runtime: quorumlock must be used inside a tokio runtime with time and I/O enabled")]
    NoRuntime,
}

/// What a name is already used as (see [`Error::NameInUse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InUse {
    /// A mutex (or any plain value the application stored there).
    Mutex,
    /// A semaphore with this many permits.
    Semaphore(u32),
    /// Another kind of quorumlock lock (a read-write lock).
    OtherKind,
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::Mutex => f.write_str("a mutex (or another value)"),
            InUse::Semaphore(n) => write!(f, "a semaphore of {n} permits"),
            InUse::OtherKind => f.write_str("another kind of lock"),
        }
    }
}

/// Why a lock was lost (see [`Error::Lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The lock's deadline had passed before the operation started.
    Expired,
    /// Enough nodes answered that our key is gone or holds another token.
    NotOurs,
    /// The lock was lost or released before, by this or another call.
    AlreadyGone,
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossCause::Expired => "its deadline had passed",
            LossCause::NotOurs => "the nodes no longer hold our token",
            LossCause::AlreadyGone => "it was lost or released before",
        })
    }
}

/// One node that did not vote in an operation, and why.
#[derive(Debug, Clone)]
pub struct NodeFailure {
    node: usize,
    kind: FailureKind,
    error: Option<redis::RedisError>,
}

impl NodeFailure {
    pub(crate) fn new(node: usize, kind: FailureKind, error: Option<redis::RedisError>) -> Self {
        Self { node, kind, error }
    }

    /// Position of the node in the builder's list.
    pub fn node(&self) -> usize {
        self.node
    }

    /// What went wrong.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error the node or its connection reported, if there was one.
    pub fn error(&self) -> Option<&redis::RedisError> {
        self.error.as_ref()
    }
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}: {}", self.node, self.kind)
    }
}

/// What went wrong on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No reply within this long: the deadline (the builder's node timeout,
    /// at most a tenth of the TTL) for a slow, frozen or distant node, or
    /// less when the outcome was certain before the node's reply could
    /// count. If a healthy node often misses the deadline, raise the node
    /// timeout.
    TimedOut(Duration),
    /// Not reachable: connection refused, reset, or not yet re-established.
    Unreachable,
    /// The node refused our credentials (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// The ACL user lacks a permission the operation needs (`NOPERM`).
    Permission,
    /// The node is a read-only replica (`READONLY`).
    ReadOnly,
    /// The key holds another type of value (`WRONGTYPE`).
    WrongType,
    /// The node will not run a command the lock needs (`EVALSHA`,
    /// `SCRIPT LOAD` or `SET` renamed away or unknown).
    Command,
    /// The keys of one operation hash to different cluster slots
    /// (`CROSSSLOT`): give them one hash tag. Nodes given as clusters never
    /// get such keys (the lock call is `InvalidInput`); this comes from a
    /// server that checks slots without being given as one.
    CrossSlot,
    /// TLS failed: the node's certificate is not trusted (another CA, another
    /// host name), the node refused ours (or our lack of one), or a
    /// plain-text connection reached a TLS-only port (use `rediss://`).
    Tls,
    /// The entry reaches the same server as the node with this index, so
    /// its vote is not counted.
    SameServer(usize),
    /// A fenced lock was not asked of this node: it may lose writes it
    /// acknowledged (it does not run with `appendonly yes` and
    /// `appendfsync always`, or it could not be asked), and a fence
    /// counter it forgot could make a later token repeat an earlier one.
    /// See [`Builder::require_durable_fences`](crate::Builder::require_durable_fences).
    NotDurable,
    /// Another error reply (`LOADING`, `BUSY`, `OOM`, ...).
    Other,
}

impl FailureKind {
    /// A retry cannot fix it: an operator has to change the node, the ACL,
    /// the credentials or the key.
    pub fn is_permanent(self) -> bool {
        !matches!(
            self,
            FailureKind::TimedOut(_) | FailureKind::Unreachable | FailureKind::Other
        )
    }

    /// The node could not be heard from at all (timed out or unreachable).
    pub fn is_silent(self) -> bool {
        matches!(self, FailureKind::TimedOut(_) | FailureKind::Unreachable)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::TimedOut(after) => write!(f, "no reply within {after:?}"),
            FailureKind::Unreachable => f.write_str("unreachable"),
            FailureKind::Auth => f.write_str("authentication refused"),
            FailureKind::Permission => f.write_str("permission denied by ACL"),
            FailureKind::ReadOnly => f.write_str("read-only replica"),
            FailureKind::WrongType => f.write_str("key holds another type"),
            FailureKind::Command => f.write_str("a command the lock needs is unknown"),
            FailureKind::CrossSlot => f.write_str("keys in different cluster slots"),
            FailureKind::Tls => f.write_str(
                "TLS failed (certificate not trusted or refused, or plain text sent to a TLS port)",
            ),
            FailureKind::SameServer(other) => write!(f, "same server as node {other}"),
            FailureKind::NotDurable => f.write_str(
                "may lose acknowledged writes (needs appendonly yes, appendfsync always) and fencing needs nodes that do not",
            ),
            FailureKind::Other => f.write_str("error reply"),
        }
    }
}

/// "node 1: unreachable, node 2: no reply within 50ms".
struct Summary<'a>(&'a [NodeFailure]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no node failed");
        }
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl Error {
    /// Someone else holds the resource; waiting and retrying may help.
    pub fn is_contended(&self) -> bool {
        matches!(self, Error::Contended { .. })
    }

    /// Too few nodes answered; the lock service itself is degraded.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Nodes refused for a reason a retry cannot fix (see [`Error::Refused`]).
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }

    /// The lock was held and is not any more (or never was confirmed).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// The configuration, an argument, or the nodes' set-up (credentials,
    /// ACL, replica, key type) is wrong; retrying cannot help.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            Error::InvalidNode { .. }
                | Error::SameServer { .. }
                | Error::NotDurable { .. }
                | Error::Config(_)
                | Error::InvalidInput(_)
                | Error::Refused { .. }
                | Error::NameInUse { .. }
                | Error::NoRuntime
        )
    }

    /// A new attempt could succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Contended { .. }
                | Error::Unavailable { .. }
                | Error::Redis { .. }
                | Error::ValidityExhausted { .. }
        )
    }

    /// `(votes won, quorum needed)` for errors that come from a vote.
    pub fn votes(&self) -> Option<(usize, usize)> {
        match *self {
            Error::Contended { votes, quorum }
            | Error::Unavailable { votes, quorum, .. }
            | Error::Refused { votes, quorum, .. }
            | Error::Redis { votes, quorum, .. }
            | Error::Lost { votes, quorum, .. } => Some((votes, quorum)),
            _ => None,
        }
    }

    /// The nodes that did not vote, and why (empty for errors that do not
    /// come from a vote, and for `Contended`).
    pub fn failures(&self) -> &[NodeFailure] {
        match self {
            Error::Unavailable { failures, .. }
            | Error::Refused { failures, .. }
            | Error::Redis { failures, .. } => failures,
            _ => &[],
        }
    }
}
