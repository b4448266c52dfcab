//! Fault-tolerant distributed locks across N independent Redis nodes, with
//! the Redlock algorithm, for tokio services.
//!
//! A [`Redlock`] sends `SET key token NX PX ttl` to every node at once and
//! holds the lock when a majority (`N / 2 + 1`) agreed while validity was
//! left: `ttl - elapsed - drift`, with drift `1% of ttl + 2 ms`. The returned
//! [`Lock`] knows its [`deadline`](Lock::deadline); it can be
//! [extended](Lock::extend) and is released on every node with an atomic
//! compare-and-delete, also when it is simply dropped. One node (N = 1) is
//! the classic single-instance Redis lock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorumlock::Error> {
//! use std::time::Duration;
//! use quorumlock::{Redlock, RetryPolicy};
//!
//! let redlock = Redlock::builder()
//!     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
//!     .retry(RetryPolicy::new().attempts(20))
//!     .build()
//!     .await?;
//! let mut lock = redlock.acquire("invoice:42", Duration::from_secs(10)).await?;
//! // ... work, checking lock.remaining() ...
//! lock.extend(Duration::from_secs(10)).await?;
//! lock.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees and their limits
//! * Mutual exclusion holds while at most a minority of nodes fail, and only
//!   until [`Lock::deadline`]: a holder paused past its deadline (GC, swap, a
//!   stopped VM) is no longer protected. Guard the resource itself with a
//!   check of the lock, or a fencing token, when that matters.
//! * A node that restarts without persistence forgets its locks. Restart it
//!   only after the longest TTL in use has passed, or run it with
//!   `appendfsync always`.
//! * Clocks may drift by the allowance (1% + 2 ms by default), no more.
//! * An even number of nodes is allowed but adds no fault tolerance.
//!
//! # Nodes and features
//! A node is an address ([`Builder::nodes`]), the service's own
//! `redis::Client` or `ConnectionManager` ([`Builder::node_clients`],
//! [`Builder::node_managers`]), or, with the feature `cluster`, a whole
//! Redis Cluster (`Builder::cluster_node`). The features `tls-rustls` and
//! `tls-native-tls` (one of them) make `rediss://` addresses work;
//! `metrics` reports counters and a latency histogram on the `metrics`
//! facade. None is on by default.
//!
//! # Guides
//! [`guide`] has the long form: a [tour](guide::tour) of the API, settings
//! and errors; [keep-alive, `lost` and `with_lock`](guide::keep_alive);
//! [fencing](guide::fencing); [several resources](guide::several_resources);
//! [semaphores, read-write locks and inspect](guide::primitives);
//! [visibility](guide::visibility); the [guarantees](guide::guarantees) and
//! [operations](guide::operations).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backoff;
mod builder;
mod claim;
mod clock;
mod engine;
mod error;
mod fanout;
pub mod guide;
mod inspect;
mod link;
mod node;
mod quorum;
mod redlock;
mod retry;
mod rwlock;
mod semaphore;
mod slots;
mod stats;
mod transport;
mod wake;

pub use builder::{Builder, RetryPolicy};
pub use engine::lock::{Guard, KeepAlive, Lock};
pub use error::{Error, FailureKind, InUse, LossCause, NodeFailure};
pub use inspect::{Holder, Inspection, NodeView, Reading};
pub use redlock::Redlock;
pub use rwlock::RwLock;
pub use semaphore::Semaphore;
