//! One node's command connection, kept healthy by itself.
//!
//! redis-rs's `ConnectionManager` reconnects only when a call fails, caches
//! a failed login forever, and cannot tell a connection that silently stopped
//! answering (a lost NAT or conntrack entry) from a slow one. A [`Link`]
//! does all three: a connection with a call outstanding past the health
//! limit and no reply since is replaced by a fresh one (in the background;
//! calls already sent on the old one still finish there, so their keys are
//! cleaned up), a refused login is tried again after a jittered backoff,
//! and every reconnect waits its [`Backoff`]. Each new connection is asked
//! who it is (`INFO server`), so two entries that reach one server are
//! never counted as two votes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::transport::{Durability, Transport, Wire};

/// The run ids of the servers behind each node, to find entries that are
/// one server.
#[derive(Default)]
pub(crate) struct Servers(Mutex<Vec<Option<String>>>);

impl Servers {
    pub(crate) fn new(nodes: usize) -> Self {
        Self(Mutex::new(vec![None; nodes]))
    }

    /// Notes that `node` reaches the server `run_id`; returns another node
    /// already known to reach the same server.
    fn register(&self, node: usize, run_id: Option<String>) -> Option<usize> {
        let mut ids = lock(&self.0);
        let other = run_id
            .as_ref()
            .and_then(|id| (0..ids.len()).find(|&i| i != node && ids[i].as_ref() == Some(id)));
        if let Some(slot) = ids.get_mut(node) {
            *slot = if other.is_some() { None } else { run_id };
        }
        other
    }
}

/// One open connection and what we know of it.
pub(crate) struct Conn {
    wire: Wire,
    /// Calls sent and not yet answered.
    in_flight: AtomicUsize,
    /// When a reply last came, or a call was sent to an idle connection
    /// (microseconds on `clock_us()`).
    progress: AtomicU64,
    /// It answered at least once: the backoff starts over.
    served: AtomicBool,
    /// A probe is watching it (see [`Link::suspect`]).
    probing: AtomicBool,
    /// The server understands `SET .. NX GET` (Redis 7.0 and later).
    pub(crate) nx_get: bool,
    /// The server is the one behind this other node: no vote of ours.
    pub(crate) same_as: Option<usize>,
    /// Whether the server keeps every write through a restart.
    pub(crate) durable: Durability,
}

impl Conn {
    /// A call has waited past `limit_us` with no reply at all since `now`.
    fn stalled(&self, now: u64, limit_us: u64) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
            && now.saturating_sub(self.progress.load(Ordering::Acquire)) > limit_us
    }
}

/// Marks a call in flight on a connection until it is answered or dropped.
pub(crate) struct Call {
    conn: Arc<Conn>,
    /// When it was sent, on `clock_us()`.
    sent: u64,
}

impl Call {
    /// A clone of the connection to send the call on.
    pub(crate) fn mux(&self) -> Wire {
        self.conn.wire.clone()
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The call got a reply (an answer or an error reply from the server).
    pub(crate) fn answered(self, link: &Link) {
        let now = clock_us();
        link.pace.note_us(now.saturating_sub(self.sent));
        self.conn.progress.store(now, Ordering::Release);
        if !self.conn.served.swap(true, Ordering::AcqRel) {
            link.state().backoff.reset();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct State {
    current: Option<Arc<Conn>>,
    connecting: bool,
    backoff: Backoff,
    /// No connection attempt before this.
    rest_until: Option<Instant>,
    /// Why the last attempt failed; calls made while resting get it.
    last_error: Option<RedisError>,
}

/// Room for calls queued on one connection before a sender waits. Calls on
/// one connection reach the server in the order they were queued, and the
/// lock counts on that: a release's delete must run after the acquire's
/// `SET` on that node, and a retry's `SET` after the failed attempt's
/// delete. redis-rs's default room (50) is full under 64 tasks; a sender
/// that then waits is given its place when room frees, but sends only when
/// its task is next polled, and a late `SET` handed to a task that has not
/// run yet went out after the release's delete and left its key behind
/// (the bench's "failed attempts on distinct keys"). With this much room
/// no call waits; the queue takes memory only for what is queued.
const PIPELINE_BUFFER: usize = 1 << 16;

/// A node's self-healing command connection.
pub(crate) struct Link {
    index: usize,
    transport: Transport,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    health_limit_us: u64,
    servers: Arc<Servers>,
    state: Mutex<State>,
    changed: Notify,
    pace: Pace,
}

impl Link {
    pub(crate) fn new(
        index: usize,
        transport: Transport,
        connect_timeout: Duration,
        health_limit: Duration,
        servers: Arc<Servers>,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            // Deadlines belong to the lock algorithm, not to the transport:
            // a reply that arrives late must still be seen so its key can be
            // cleaned up. A silent connection is caught by the health limit.
            .set_response_timeout(None)
            .set_connection_timeout(Some(connect_timeout))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        Self {
            index,
            transport,
            config,
            connect_timeout,
            health_limit_us: u64::try_from(health_limit.as_micros()).unwrap_or(u64::MAX),
            servers,
            state: Mutex::new(State {
                current: None,
                connecting: false,
                backoff: Backoff::default(),
                rest_until: None,
                last_error: None,
            }),
            changed: Notify::new(),
            pace: Pace::default(),
        }
    }

    /// How long this node takes to answer now: a moving average of its
    /// recent replies, raised at once by a call that got none in time, and
    /// at least as long as its connection has had calls out and no reply
    /// (a frozen node shows here before any call times out).
    pub(crate) fn usual_latency(&self) -> Duration {
        let silent_us = self.state().current.as_ref().map_or(0, |conn| {
            if conn.in_flight.load(Ordering::Acquire) == 0 {
                0
            } else {
                clock_us().saturating_sub(conn.progress.load(Ordering::Acquire))
            }
        });
        self.pace.usual().max(Duration::from_micros(silent_us))
    }

    /// The moving average alone (see [`usual_latency`](Self::usual_latency)):
    /// cheap enough for every call.
    pub(crate) fn pace(&self) -> Duration {
        self.pace.usual()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A connection to send one call on, waiting for a connect in progress
    /// (callers bound the wait with their own deadline). While the node
    /// rests after a failed connect, the reason comes back at once.
    /// Whether the server behind the current connection keeps every
    /// write; `None` while there is no connection.
    pub(crate) fn durability(&self) -> Option<Durability> {
        self.state().current.as_ref().map(|c| c.durable)
    }

    pub(crate) async fn call(self: &Arc<Self>) -> Result<Call, RedisError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            {
                let mut s = self.state();
                if let Some(conn) = &s.current {
                    let now = clock_us();
                    if !conn.stalled(now, self.health_limit_us) {
                        let conn = conn.clone();
                        drop(s);
                        if conn.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
                            conn.progress.store(now, Ordering::Release);
                        }
                        return Ok(Call { conn, sent: now });
                    }
                    self.replace(&mut s);
                }
                if !self.reconnect(&mut s) {
                    return Err(s.last_error.clone().unwrap_or_else(resting));
                }
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    /// Drops the current connection, which stopped answering; calls in
    /// flight on it keep it alive until they end.
    fn replace(self: &Arc<Self>, s: &mut State) {
        tracing::warn!(
            node = self.index,
            limit_ms = self.health_limit_us / 1000,
            "quorumlock node connection stopped answering; opening a new one"
        );
        s.current = None;
        self.reconnect(s);
    }

    /// Starts a connect unless one is running; `false` while the node
    /// rests after a failed one.
    fn reconnect(self: &Arc<Self>, s: &mut State) -> bool {
        if s.connecting {
            return true;
        }
        if s.rest_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        s.connecting = true;
        tokio::spawn(self.clone().connect());
        true
    }

    /// A call on this node got no reply within its deadline. If the
    /// connection then stays silent past the health limit, it is replaced
    /// even if no other call comes to notice: the next attempt finds a
    /// working connection instead of waiting on the dead one again.
    pub(crate) fn suspect(self: &Arc<Self>, waited: Duration) {
        self.pace.late(waited);
        let Some(conn) = self.state().current.clone() else {
            return;
        };
        if conn.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                let since = conn.progress.load(Ordering::Acquire);
                let due = since
                    .saturating_add(link.health_limit_us)
                    .saturating_add(1)
                    .saturating_sub(clock_us());
                tokio::time::sleep(Duration::from_micros(due)).await;
                let mut s = link.state();
                let current = s.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn));
                if !current || conn.in_flight.load(Ordering::Acquire) == 0 {
                    conn.probing.store(false, Ordering::Release);
                    return;
                }
                if conn.stalled(clock_us(), link.health_limit_us) {
                    link.replace(&mut s);
                    return;
                }
            }
        });
    }

    /// The connection `conn` broke under a call: the next call reconnects.
    pub(crate) fn broken(&self, call: &Call) {
        let mut s = self.state();
        if s.current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &call.conn))
        {
            s.current = None;
        }
    }

    /// Opens a connection (in the background: the attempt outlives any one
    /// caller's deadline), then wakes everyone waiting for it.
    async fn connect(self: Arc<Self>) {
        let opened = match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to the node timed out",
            ))),
        };
        {
            let mut s = self.state();
            s.connecting = false;
            match opened {
                Ok(conn) => {
                    s.current = Some(Arc::new(conn));
                    s.rest_until = None;
                    s.last_error = None;
                }
                Err(e) => {
                    let wait = s.backoff.fail();
                    tracing::debug!(node = self.index, error = %e, ?wait, "quorumlock connect failed");
                    s.rest_until = Some(Instant::now() + wait);
                    s.last_error = Some(e);
                }
            }
        }
        self.changed.notify_waiters();
    }

    async fn open(&self) -> Result<Conn, RedisError> {
        let (wire, info) = self
            .transport
            .open(&self.config, self.connect_timeout)
            .await?;
        let same_as = self.servers.register(self.index, info.run_id);
        if let Some(other) = same_as {
            tracing::error!(
                node = self.index,
                other,
                "quorumlock: nodes {other} and {} are the same Redis server; node {} gets no vote",
                self.index,
                self.index
            );
        }
        Ok(Conn {
            wire,
            in_flight: AtomicUsize::new(0),
            progress: AtomicU64::new(clock_us()),
            served: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            nx_get: info.major >= 7,
            same_as,
            durable: info.durable,
        })
    }
}

/// A node's usual reply time, in microseconds: an exponentially weighted
/// moving average (each reply counts for a quarter). Samples are capped, so
/// the backlog a thawed node answers all at once is forgotten after a few
/// ordinary replies.
#[derive(Default)]
struct Pace(AtomicU64);

impl Pace {
    /// No sample counts for more than this.
    const CAP_US: u64 = 1_000_000;

    #[cfg(test)]
    fn note(&self, took: Duration) {
        self.note_us(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn note_us(&self, took_us: u64) {
        let sample = took_us.min(Self::CAP_US);
        // Racing updates may lose a sample; an estimate does not mind.
        let old = self.0.load(Ordering::Relaxed);
        let new = if sample >= old {
            old + (sample - old) / 4
        } else {
            old - (old - sample) / 4
        };
        self.0.store(new, Ordering::Relaxed);
    }

    /// No reply within `waited`: the node is at least that slow now.
    fn late(&self, waited: Duration) {
        let waited = u64::try_from(waited.as_micros())
            .unwrap_or(u64::MAX)
            .min(Self::CAP_US);
        self.0.fetch_max(waited, Ordering::Relaxed);
    }

    fn usual(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

fn resting() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "node connection is being re-established",
    ))
}

/// A poisoned mutex here only guards plain data; keep using it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Microseconds on a process-wide monotonic clock.
fn clock_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_follows_replies_and_jumps_on_a_timeout() {
        let pace = Pace::default();
        for _ in 0..40 {
            pace.note(Duration::from_micros(400));
        }
        assert!(
            pace.usual() > Duration::from_micros(390),
            "{:?}",
            pace.usual()
        );
        pace.late(Duration::from_millis(30));
        assert_eq!(pace.usual(), Duration::from_millis(30));
        // A thawed node's backlog: one huge sample, capped.
        pace.note(Duration::from_secs(60));
        assert!(pace.usual() <= Duration::from_secs(1));
        // Ordinary replies bring it back within a few dozen calls.
        for _ in 0..30 {
            pace.note(Duration::from_micros(400));
        }
        assert!(
            pace.usual() < Duration::from_millis(1),
            "{:?}",
            pace.usual()
        );
    }

    #[test]
    fn a_run_id_seen_twice_is_the_same_server() {
        let servers = Servers::new(3);
        assert_eq!(servers.register(0, Some("a".into())), None);
        assert_eq!(servers.register(1, Some("b".into())), None);
        assert_eq!(servers.register(2, Some("a".into())), Some(0));
        // Node 0 restarted (new run id): node 2 may vote again.
        assert_eq!(servers.register(0, Some("c".into())), None);
        assert_eq!(servers.register(2, Some("a".into())), None);
        // Unknown identity (no INFO permission) never matches.
        assert_eq!(servers.register(1, None), None);
    }
}
