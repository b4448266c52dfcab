//! The one seam between a node and the ways it can be reached. A node is a
//! standalone server we connect to ourselves ([`standalone`]), a
//! `ConnectionManager` the service hands over ([`managed`]), or a whole
//! Redis Cluster ([`cluster`], feature `cluster`). Each opens a [`Wire`],
//! which sends one command and reads its reply; the link above it keeps it
//! healthy and the lock above that never knows which one it talks to.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, RedisFuture, Value};

#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod managed;
pub(crate) mod standalone;

/// How one node is reached, as the builder was told.
// One per node, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Transport {
    /// A server we open our own connections to.
    Standalone(redis::Client),
    /// The service's own connection: used as it is, never reopened by us.
    Managed(ConnectionManager),
    /// A Redis Cluster: commands go to the slot's master.
    #[cfg(feature = "cluster")]
    Cluster(cluster::Cluster),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Standalone(client) => f
                .debug_tuple("Standalone")
                .field(&client.get_connection_info().addr().to_string())
                .finish(),
            Transport::Managed(_) => f.write_str("Managed"),
            #[cfg(feature = "cluster")]
            Transport::Cluster(cluster) => f.debug_tuple("Cluster").field(cluster).finish(),
        }
    }
}

impl Transport {
    /// The address two entries must not share (see `Error::SameServer`):
    /// a standalone server's, or a cluster's first seed. A managed
    /// connection does not tell; its server is still checked by run id.
    pub(crate) fn address(&self) -> Option<String> {
        match self {
            Transport::Standalone(client) => Some(standalone::address(client)),
            Transport::Managed(_) => None,
            #[cfg(feature = "cluster")]
            Transport::Cluster(cluster) => cluster.address(),
        }
    }

    /// Whether the node is a Redis Cluster, whose keys are spread by slot.
    pub(crate) fn is_cluster(&self) -> bool {
        match self {
            Transport::Standalone(_) | Transport::Managed(_) => false,
            #[cfg(feature = "cluster")]
            Transport::Cluster(_) => true,
        }
    }

    /// Clients for the node's release announcements, tried in turn: the
    /// server itself, or any member of a cluster (a cluster's `PUBLISH`
    /// reaches the subscribers on every member). A managed connection has
    /// none: waiters then hear releases from the other nodes, or wait
    /// their retry delay.
    pub(crate) fn announcers(&self) -> Vec<redis::Client> {
        match self {
            Transport::Standalone(client) => vec![client.clone()],
            Transport::Managed(_) => Vec::new(),
            #[cfg(feature = "cluster")]
            Transport::Cluster(cluster) => cluster.announcers(),
        }
    }

    /// rustls needs a process-wide crypto provider; unless the service
    /// installed one, ours (ring) is, so `rediss://` works out of the box.
    pub(crate) fn prepare_tls() {
        #[cfg(feature = "tls-rustls")]
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may have installed one meanwhile: also fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// Opens a connection and learns what the lock needs of the server.
    pub(crate) async fn open(
        &self,
        config: &AsyncConnectionConfig,
        connect_timeout: Duration,
    ) -> Result<(Wire, ServerInfo), RedisError> {
        match self {
            Transport::Standalone(client) => {
                standalone::open(client, config, connect_timeout).await
            }
            Transport::Managed(manager) => managed::open(manager).await,
            #[cfg(feature = "cluster")]
            Transport::Cluster(cluster) => cluster.open(connect_timeout).await,
        }
    }
}

/// One open connection of any transport. Cloning is cheap: every kind is
/// a handle to one shared, multiplexed connection.
#[derive(Clone)]
pub(crate) enum Wire {
    Mux(MultiplexedConnection),
    Managed(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Wire {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Wire::Mux(c) => c.req_packed_command(cmd),
            Wire::Managed(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Wire::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Wire::Mux(c) => c.req_packed_commands(pipeline, offset, count),
            Wire::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Wire::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Wire::Mux(c) => c.get_db(),
            Wire::Managed(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Wire::Cluster(c) => c.get_db(),
        }
    }
}

/// A plain-text connection reached a TLS-only port.
#[derive(Debug)]
pub(crate) struct TlsPort;

impl fmt::Display for TlsPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the node speaks TLS only: use a rediss:// address")
    }
}

impl std::error::Error for TlsPort {}

/// The error is TLS failing: an untrusted or refused certificate, a failed
/// handshake, or plain text sent to a TLS port. redis-rs keeps the TLS
/// library's own error inside, sometimes within an `io::Error`.
pub(crate) fn is_tls_failure(e: &RedisError) -> bool {
    use std::error::Error;
    type Shared = std::sync::Arc<dyn Error + Send + Sync>;
    fn is_tls(err: &(dyn Error + 'static)) -> bool {
        #[cfg(feature = "tls-rustls")]
        if err.is::<rustls::Error>() {
            return true;
        }
        #[cfg(feature = "tls-native-tls")]
        if err.is::<native_tls::Error>() {
            return true;
        }
        err.is::<TlsPort>()
    }
    let Some(source) = e.source() else {
        return false;
    };
    let inner: &(dyn Error + 'static) = match source.downcast_ref::<Shared>() {
        Some(shared) => &**shared,
        None => source,
    };
    is_tls(inner)
        || inner
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|e| is_tls(e))
}

/// What `INFO server` tells about a server.
#[derive(Debug, Default)]
pub(crate) struct ServerInfo {
    /// Which server it is, to find two entries that are one server.
    pub(crate) run_id: Option<String>,
    pub(crate) major: u32,
    /// Whether it keeps every acknowledged write through a restart.
    pub(crate) durable: Durability,
}

/// Whether a server keeps every write it acknowledged through a crash or
/// restart: `appendonly yes` with `appendfsync always`. Counters (fences)
/// are only as permanent as that.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Every write is in the append-only file, fsynced, before the reply.
    EveryWrite,
    /// It is not: why.
    No(&'static str),
    /// It could not be told: why.
    #[default]
    Unknown,
}

impl Durability {
    /// Why it is not known to keep every write, if it is not.
    pub(crate) fn lack(self) -> Option<&'static str> {
        match self {
            Durability::EveryWrite => None,
            Durability::No(why) => Some(why),
            Durability::Unknown => Some(
                "cannot tell whether it keeps every write (INFO persistence or CONFIG GET appendfsync is not allowed)",
            ),
        }
    }
}

/// Asks the server who it is. A user without `INFO` still connects; only
/// the same-server check and `SET .. NX GET` are then skipped. Any other
/// error (an unusable connection, a refused login) fails the connect.
pub(crate) async fn identify(wire: &mut impl ConnectionLike) -> Result<ServerInfo, RedisError> {
    let text = match redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(wire)
        .await
    {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoPerm) => String::new(),
        Err(e) => return Err(e),
    };
    let mut info = parse_info(&text);
    info.durable = durability(wire).await?;
    Ok(info)
}

/// Asks whether the server persists every write (`INFO persistence` and
/// `CONFIG GET appendfsync`). A user without those permissions still
/// connects: its durability is then unknown.
async fn durability(wire: &mut impl ConnectionLike) -> Result<Durability, RedisError> {
    let denied = |e: &RedisError| {
        e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoPerm)
            || e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("unknown command"))
    };
    let persistence = match redis::cmd("INFO")
        .arg("persistence")
        .query_async::<String>(wire)
        .await
    {
        Ok(text) => text,
        Err(e) if denied(&e) => return Ok(Durability::Unknown),
        Err(e) => return Err(e),
    };
    if !persistence.lines().any(|l| l.trim() == "aof_enabled:1") {
        return Ok(Durability::No(
            "appendonly is off: a restart loses its counters",
        ));
    }
    match redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async::<Vec<String>>(wire)
        .await
    {
        Ok(pair) if pair.get(1).map(String::as_str) == Some("always") => Ok(Durability::EveryWrite),
        Ok(_) => Ok(Durability::No(
            "appendfsync is not `always`: a crash loses the last writes",
        )),
        Err(e) if denied(&e) => Ok(Durability::Unknown),
        Err(e) => Err(e),
    }
}

pub(crate) fn parse_info(text: &str) -> ServerInfo {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    ServerInfo {
        run_id: field("run_id").map(String::from),
        major: field("redis_version")
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or(0),
        durable: Durability::Unknown,
    }
}
