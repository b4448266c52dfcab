//! The one error type of the crate, shaped so callers can ask it questions
//! (`is_contended()`, `is_unavailable()`, ...) instead of matching messages.

use std::time::Duration;

/// Everything that can go wrong when building a [`Redlock`](crate::Redlock)
/// or locking with it.
///
/// Failures to lock carry the votes won and the quorum needed, so a caller
/// can log "2 of 3 needed, won 1" without parsing text. After any error,
/// nothing this attempt wrote is left locked: keys are removed, or expire
/// with their TTL where a node cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another owner holds the resource on enough nodes that no quorum was
    /// possible. Retrying later may succeed.
    #[error("resource is held by another owner: won {votes} of the {quorum} votes needed")]
    Contended {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
    },

    /// Too few nodes answered in time for a quorum; nobody else was seen
    /// holding the resource. `source` is the last connection error, if any.
    #[error("too few Redis nodes answered: won {votes} of the {quorum} votes needed")]
    Unavailable {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
        /// The last error a node reported, if it reported one.
        #[source]
        source: Option<redis::RedisError>,
    },

    /// A node answered with an error (for example a read-only replica, or a
    /// key of the wrong type), and too few nodes voted yes.
    #[error("a Redis node answered with an error: won {votes} of the {quorum} votes needed")]
    Redis {
        /// Nodes that granted the lock.
        votes: usize,
        /// Nodes that had to grant it.
        quorum: usize,
        /// The error the node answered with.
        #[source]
        source: redis::RedisError,
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

    /// Ownership can no longer be guaranteed: an extend or release found
    /// another owner, nothing at all, or too few nodes to confirm it, or the
    /// lock's deadline had passed. The lock is not re-acquired behind the
    /// caller's back.
    #[error("lock on `{resource}` was lost: {votes} of the {quorum} needed nodes confirmed it")]
    Lost {
        /// The resource as the caller named it.
        resource: String,
        /// Nodes that still confirmed our ownership.
        votes: usize,
        /// Nodes that had to confirm it.
        quorum: usize,
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

    /// The builder's settings cannot work together (for example no nodes).
    #[error("invalid configuration: {0}")]
    Config(&'static str),

    /// An argument to a lock operation is unusable (empty resource, zero or
    /// too short TTL).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
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

    /// The lock was held and is not any more (or never was confirmed).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// The configuration or an argument is wrong; retrying cannot help.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            Error::InvalidNode { .. } | Error::Config(_) | Error::InvalidInput(_)
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
            | Error::Redis { votes, quorum, .. }
            | Error::Lost { votes, quorum, .. } => Some((votes, quorum)),
            _ => None,
        }
    }
}
