//! One Redis node: its self-healing connection and the three calls a lock
//! makes on it. Every call returns a [`Reply`] instead of an error, because a
//! node that fails is a missing vote, not a reason to stop the attempt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, ErrorKind, RedisError, Script, ScriptInvocation, Value};

use crate::quorum::Reply;

/// The Lua scripts, hashed once per manager and sent by EVALSHA (falling
/// back to loading them after a node restart forgot them). Each takes every
/// key of a lock, so one script serves a single resource and a set.
pub(crate) struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
    acquire_fenced: Script,
    fence_commit: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(include_str!("scripts/acquire.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            extend: Script::new(include_str!("scripts/extend.lua")),
            acquire_fenced: Script::new(include_str!("scripts/acquire_fenced.lua")),
            fence_commit: Script::new(include_str!("scripts/fence_commit.lua")),
        }
    }
}

/// An invocation of `script` with `keys` as its KEYS.
fn invocation<'a>(
    script: &'a Script,
    keys: impl IntoIterator<Item = &'a Arc<str>>,
) -> ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    for key in keys {
        call.key(&**key);
    }
    call
}

/// A connection to one node. `ConnectionManager` is a cheap clone around a
/// multiplexed connection that reconnects by itself, so no lock guards it.
pub(crate) struct Node {
    conn: ConnectionManager,
    /// While the node refuses connections (it is down), calls are not even
    /// tried until this time (milliseconds on `clock()`): each try would
    /// cost a connect attempt on the hot path.
    resting_until: AtomicU64,
}

/// How long a node that refused a connection is left alone.
const REST: Duration = Duration::from_millis(100);

/// Milliseconds on a process-wide monotonic clock.
fn clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Node {
    /// Creates the connection lazily: a node that is down at start-up counts
    /// as unknown until it comes back, and does not fail the build.
    pub(crate) fn new(info: ConnectionInfo, connect_timeout: Duration) -> Result<Self, RedisError> {
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            // Deadlines belong to the lock algorithm, not to the transport:
            // a reply that arrives late must still be seen so its key can be
            // cleaned up.
            .set_response_timeout(None)
            .set_connection_timeout(Some(connect_timeout))
            // Fail a connection attempt at once and try again on the next
            // call, instead of queueing calls behind a backoff loop.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            resting_until: AtomicU64::new(0),
        })
    }

    fn resting(&self) -> bool {
        clock() < self.resting_until.load(Ordering::Relaxed)
    }

    /// Notes a refused connection: the node is down, leave it alone a while.
    fn observe(&self, reply: Reply) -> Reply {
        if let Reply::Failed(e) | Reply::Unknown(Some(e)) = &reply {
            tracing::trace!(error = %e, "quorumlock node call failed");
        }
        if let Reply::Unknown(Some(e)) = &reply {
            if e.is_connection_refusal() {
                let until = clock().saturating_add(REST.as_millis() as u64);
                self.resting_until.store(until, Ordering::Relaxed);
            }
        }
        reply
    }

    /// Opens the connection now, so the first lock does not pay for it;
    /// `true` if the node answered.
    pub(crate) async fn warm_up(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<Value>(&mut conn)
            .await
            .is_ok()
    }

    /// `SET key token NX PX ttl_ms` for a single key; several keys are set
    /// all or nothing by the acquire script. If the connection dropped under
    /// a single key's SET, the script is the retry on a fresh connection: it
    /// also counts our own token as success (the first SET may have landed).
    pub(crate) async fn acquire(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
    ) -> Reply {
        if self.resting() {
            return Reply::Unknown(None);
        }
        let mut call = invocation(&scripts.acquire, keys);
        call.arg(token).arg(ttl_ms);
        if let [key] = keys {
            match self.set_nx_px(key, token, ttl_ms).await {
                Reply::Unknown(Some(e)) if dropped(&e) => {}
                reply => return self.observe(reply),
            }
        }
        self.repeatable(&call).await
    }

    /// As `acquire`, reading the keys' fencing counters (`fence_keys`) in
    /// the same script: `Yes` comes with the largest counter's value.
    pub(crate) async fn acquire_fenced(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        fence_keys: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
    ) -> (Reply, Option<u64>) {
        let mut call = invocation(&scripts.acquire_fenced, keys.iter().chain(fence_keys));
        call.arg(token).arg(ttl_ms).arg(keys.len());
        let mut counter = None;
        let reply = self
            .repeatable_with(&call, |n| {
                counter = u64::try_from(n).ok();
                counter.is_some()
            })
            .await;
        (reply, counter)
    }

    /// Raises the fencing counters to `fence` while our keys are still there.
    pub(crate) async fn commit_fence(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        fence_keys: &[Arc<str>],
        token: &str,
        fence: u64,
    ) -> Reply {
        let mut call = invocation(&scripts.fence_commit, keys.iter().chain(fence_keys));
        call.arg(token).arg(fence).arg(keys.len());
        self.repeatable(&call).await
    }

    async fn set_nx_px(&self, key: &str, token: &str, ttl_ms: u64) -> Reply {
        let mut conn = self.conn.clone();
        let reply = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<Value>(&mut conn)
            .await;
        match reply {
            Ok(Value::Okay) => Reply::Yes,
            Ok(Value::Nil) => Reply::No,
            Ok(other) => Reply::Failed(unexpected(other)),
            Err(e) => classify(e),
        }
    }

    /// Compare-and-delete of our keys: `Yes` when every one was ours and is
    /// deleted. With `announce`, waiters are told the resource is free (a
    /// holder's release); without, nobody is (a failed attempt cleaning up).
    pub(crate) async fn release(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        token: &str,
        announce: bool,
    ) -> Reply {
        let mut call = invocation(&scripts.release, keys);
        call.arg(token).arg(if announce { "1" } else { "0" });
        self.repeatable(&call).await
    }

    /// Compare-and-expire: `Yes` when our keys now live `ttl_ms` more.
    pub(crate) async fn extend(
        &self,
        scripts: &Scripts,
        keys: &[Arc<str>],
        token: &str,
        ttl_ms: u64,
    ) -> Reply {
        let mut call = invocation(&scripts.extend, keys);
        call.arg(token).arg(ttl_ms);
        self.repeatable(&call).await
    }

    /// Runs a script that is safe to repeat, once more on a fresh connection
    /// if the first one dropped under it: a reset connection must not leave a
    /// key behind for a whole TTL.
    async fn repeatable(&self, call: &ScriptInvocation<'_>) -> Reply {
        self.repeatable_with(call, |n| n == 1).await
    }

    /// As `repeatable`, with `yes` deciding which script result is a yes.
    async fn repeatable_with(
        &self,
        call: &ScriptInvocation<'_>,
        mut yes: impl FnMut(i64) -> bool,
    ) -> Reply {
        if self.resting() {
            return Reply::Unknown(None);
        }
        let mut reply = Reply::Unknown(None);
        for _ in 0..2 {
            let mut conn = self.conn.clone();
            reply = match call.invoke_async::<i64>(&mut conn).await {
                Ok(n) if yes(n) => Reply::Yes,
                Ok(_) => Reply::No,
                Err(e) => classify(e),
            };
            match &reply {
                Reply::Unknown(Some(e)) if dropped(e) => continue,
                _ => break,
            }
        }
        self.observe(reply)
    }
}

/// The connection broke under the call; the manager is reconnecting.
fn dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// A node we could not reach (refused, dropped, timed out) leaves the outcome
/// unknown; an error the node answered with is a refusal we report.
fn classify(e: RedisError) -> Reply {
    let unreachable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error();
    if unreachable {
        Reply::Unknown(Some(e))
    } else {
        Reply::Failed(e)
    }
}

fn unexpected(value: Value) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected reply to SET NX PX",
        format!("{value:?}"),
    ))
}
