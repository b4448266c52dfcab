//! Configuration: the builder, the retry policy and their defaults, checked
//! once in [`Builder::build`] so lock calls never meet a bad setting.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use redis::{IntoConnectionInfo, RedisError};

use crate::engine::{health_limit, require_runtime, Inner};
use crate::error::FailureKind;
use crate::link::{Link, Servers};
use crate::node::{Node, Scripts};
use crate::quorum::{Reply, MAX_NODES};
use crate::redlock::Redlock;
pub use crate::retry::RetryPolicy;
use crate::transport::Transport;
use crate::wake::Wakeups;
use crate::Error;

/// Builds a [`Redlock`]. Create one with [`Redlock::builder`]; every setter
/// says its default, and [`build`](Self::build) checks them all at once.
///
/// ```no_run
/// # async fn demo() -> Result<(), quorumlock::Error> {
/// use std::time::Duration;
/// use quorumlock::{Redlock, RetryPolicy};
///
/// let redlock = Redlock::builder()
///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
///     .node_timeout(Duration::from_millis(20)) // nodes in one data centre
///     .key_prefix("locks:")                    // the key of "invoice:42" is "locks:invoice:42"
///     .fencing(true)
///     .retry(RetryPolicy::new().max_wait(Some(Duration::from_secs(5))))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct Builder {
    nodes: Vec<Result<Transport, RedisError>>,
    retry: RetryPolicy,
    node_timeout: Duration,
    connect_timeout: Duration,
    drift_factor: f64,
    drift_floor: Duration,
    key_prefix: String,
    fencing: bool,
    stop_margin: Option<Duration>,
    release_timeout: Duration,
    durable_fences: bool,
}

impl Redlock {
    /// Starts configuring a manager; see [`Builder`] for the settings and
    /// their defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            retry: RetryPolicy::default(),
            node_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            drift_factor: 0.01,
            drift_floor: Duration::from_millis(2),
            key_prefix: String::new(),
            fencing: false,
            stop_margin: None,
            release_timeout: Duration::from_secs(1),
            durable_fences: true,
        }
    }
}

impl Builder {
    /// Adds Redis nodes, as anything `redis` accepts as an address
    /// (`"redis://host:port/db"`, `"rediss://..."` with a TLS feature, a
    /// `ConnectionInfo`, ...). They must be independent masters, not
    /// replicas of each other. Default: none; at least one is required.
    ///
    /// Every node method ([`nodes`](Self::nodes),
    /// [`node_clients`](Self::node_clients),
    /// [`node_managers`](Self::node_managers), `cluster_node`) adds to one
    /// list, in the order of the calls; a node's index in errors is its
    /// place in that list.
    ///
    /// Use an odd number: an even number adds no fault tolerance over one
    /// node fewer (4 nodes need 3 votes and survive one failure, like 3).
    /// Each entry must be its own server: two entries with one address, or
    /// that turn out to reach one server (the same `run_id`), are refused
    /// by [`build`](Self::build) with [`Error::SameServer`]; found out only
    /// later, the second one gets no vote. At most 64 nodes.
    ///
    /// Not a Sentinel-managed master: Sentinel promotes a replica that may
    /// not have received the lock's key yet (replication is asynchronous),
    /// so a failover is a node that forgot its locks at once, without the
    /// delayed restart that keeps Redlock safe. Give each node as its own
    /// master, with no failover, or as a cluster with the same caveat (see
    /// the crate docs on operations).
    pub fn nodes<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoConnectionInfo,
    {
        self.nodes.extend(nodes.into_iter().map(|node| {
            node.into_connection_info()
                .and_then(redis::Client::open)
                .map(Transport::Standalone)
        }));
        self
    }

    /// Adds nodes as ready `redis::Client`s: whatever the service
    /// configured on them (TLS with its own certificates through
    /// `redis::Client::build_with_tls`, credentials, protocol) applies to
    /// quorumlock's connections too. The rules of [`nodes`](Self::nodes)
    /// hold: independent masters, each its own server, at most 64.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let clients = ["redis://:secret@10.0.0.1", "redis://:secret@10.0.0.2", "redis://:secret@10.0.0.3"]
    ///     .into_iter()
    ///     .map(redis::Client::open)
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let redlock = quorumlock::Redlock::builder().node_clients(clients).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn node_clients<I>(mut self, clients: I) -> Self
    where
        I: IntoIterator<Item = redis::Client>,
    {
        self.nodes
            .extend(clients.into_iter().map(|c| Ok(Transport::Standalone(c))));
        self
    }

    /// Adds nodes as the service's own `ConnectionManager`s. quorumlock
    /// sends its commands over them and opens no command connection of its
    /// own, so the manager's TLS, login, response timeout and reconnect
    /// policy apply. The rules of [`nodes`](Self::nodes) hold; since a
    /// manager does not tell its address, two managers of one server are
    /// found by their `run_id` only.
    ///
    /// Two differences from a node quorumlock connects to itself: a
    /// connection that goes silent is noticed by the manager's own response
    /// timeout (set one: without it a lost connection waits for the
    /// kernel), and no release announcements are heard from this node, so
    /// waiters are woken by the other nodes' announcements or their retry
    /// delay.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    ///
    /// let config = ConnectionManagerConfig::new()
    ///     .set_response_timeout(Some(Duration::from_millis(500)));
    /// let mut managers = Vec::new();
    /// for url in ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"] {
    ///     let client = redis::Client::open(url)?;
    ///     managers.push(ConnectionManager::new_with_config(client, config.clone()).await?);
    /// }
    /// let redlock = quorumlock::Redlock::builder().node_managers(managers).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn node_managers<I>(mut self, managers: I) -> Self
    where
        I: IntoIterator<Item = redis::aio::ConnectionManager>,
    {
        self.nodes
            .extend(managers.into_iter().map(|m| Ok(Transport::Managed(m))));
        self
    }

    /// Adds one node that is a whole Redis Cluster, known by `seeds` (some
    /// of its members; give more than one). Commands go to the master of
    /// each key's slot; `MOVED`, `ASK` and failovers are followed by
    /// redis-rs's cluster client. The quorum is over the nodes, so three
    /// clusters make one fault-tolerant lock that scales out with the
    /// clusters' shards.
    ///
    /// All keys of one lock must hash to one slot on a cluster node: give
    /// the resources of an [`acquire_many`](crate::Redlock::acquire_many)
    /// set one hash tag (`"{order:42}:payment"`, `"{order:42}:stock"`);
    /// fencing counters follow their lock's slot by themselves. Keys of
    /// different slots are refused with [`Error::InvalidInput`] before any
    /// command is sent.
    ///
    /// A cluster's failover promotes a replica that may lack the newest
    /// keys, as Sentinel does: each failover counts as that node forgetting
    /// its locks (see the crate docs on operations).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), quorumlock::Error> {
    /// let redlock = quorumlock::Redlock::builder()
    ///     .cluster_node(["redis://10.0.1.1:7000", "redis://10.0.1.2:7000"])
    ///     .cluster_node(["redis://10.0.2.1:7000", "redis://10.0.2.2:7000"])
    ///     .cluster_node(["redis://10.0.3.1:7000", "redis://10.0.3.2:7000"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    pub fn cluster_node<I>(mut self, seeds: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoConnectionInfo,
    {
        let cluster = seeds
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .and_then(crate::transport::cluster::Cluster::new)
            .map(Transport::Cluster);
        self.nodes.push(cluster);
        self
    }

    /// As [`cluster_node`](Self::cluster_node), for a cluster reached over
    /// TLS (`rediss://` seeds) with the service's own root certificate and,
    /// if the members ask for one, client certificate (features `cluster`
    /// and a TLS feature). Release announcements use them too.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use redis::TlsCertificates;
    ///
    /// let certificates = TlsCertificates {
    ///     root_cert: Some(std::fs::read("/etc/redis/tls/ca.crt")?),
    ///     client_tls: None,
    /// };
    /// let redlock = quorumlock::Redlock::builder()
    ///     .cluster_node_with_tls(["rediss://a1.internal:7000"], certificates.clone())
    ///     .cluster_node_with_tls(["rediss://b1.internal:7000"], certificates.clone())
    ///     .cluster_node_with_tls(["rediss://c1.internal:7000"], certificates)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(all(
        feature = "cluster",
        any(feature = "tls-rustls", feature = "tls-native-tls")
    ))]
    pub fn cluster_node_with_tls<I>(
        mut self,
        seeds: I,
        certificates: redis::TlsCertificates,
    ) -> Self
    where
        I: IntoIterator,
        I::Item: IntoConnectionInfo,
    {
        let cluster = seeds
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|seeds| crate::transport::cluster::Cluster::with_tls(seeds, certificates))
            .map(Transport::Cluster);
        self.nodes.push(cluster);
        self
    }

    /// How `acquire` retries. Default: [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long one attempt waits for any node's reply before counting it as
    /// unknown. It is clamped to a tenth of each lock's TTL, and a TTL must be
    /// longer than this plus the drift allowance. It also sets the health
    /// limit of each node's connection: a call unanswered for ten node
    /// timeouts (at least 500 ms), with no other reply on that connection
    /// meanwhile, gets the connection replaced by a fresh one. Default: 50 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Limit for opening a TCP connection to a node (at start-up and after
    /// a node comes back). Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Clock drift allowance subtracted from every validity:
    /// `ttl * factor + floor`. Default: `0.01` and 2 ms.
    pub fn drift(mut self, factor: f64, floor: Duration) -> Self {
        self.drift_factor = factor;
        self.drift_floor = floor;
        self
    }

    /// Text put in front of every resource name to form its Redis key. Other
    /// Redlock clients exclude each other only when they use the same key:
    /// pottery, for example, writes `redlock:<name>`. Default: empty (the key
    /// is the resource name as given).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Hand out fencing tokens: every lock gets [`Lock::fence`](crate::Lock::fence),
    /// strictly larger than any earlier holder's of the same resource. Each
    /// acquire then reads a counter (at `quorumlock:fence:{<key>}`, in the
    /// key's cluster slot and out of reach of resource names, kept without a
    /// TTL)
    /// from its quorum in the same script as the `SET`, and writes max + 1
    /// back to every node that still holds its key, needing a quorum of
    /// them, before handing the lock out. Any two quorums share a node, so
    /// the next holder reads at least this value. Default: off.
    ///
    /// Unlike lock keys, counters are permanent state: waiting a TTL
    /// before restarting a node does not make their loss harmless. So
    /// fencing needs nodes that keep every write they acknowledged
    /// (`appendonly yes`, `appendfsync always`): `build` checks each node
    /// that answers and refuses one that does not
    /// ([`Error::NotDurable`]), and a node reached later (or again, after a
    /// restart) gets no fenced vote until it does
    /// ([`FailureKind::NotDurable`](crate::FailureKind::NotDurable)). See
    /// [`require_durable_fences`](Self::require_durable_fences) to opt out.
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// With fencing, whether every node must keep every write it
    /// acknowledged (`appendonly yes` with `appendfsync always`, read from
    /// `INFO persistence` and `CONFIG GET appendfsync` on each connection).
    /// Turn it off only when you know better than those two commands can
    /// tell (the ACL denies `CONFIG`, a managed service persists
    /// otherwise, a node given as a cluster or as your own
    /// `ConnectionManager`, which are not checked on reconnect) or when
    /// tokens may repeat after a node loses its data. Default: on.
    pub fn require_durable_fences(mut self, on: bool) -> Self {
        self.durable_fences = on;
        self
    }

    /// The time a holder's work needs to stop once told, for every lock of
    /// this manager: a lock that cannot be extended fires
    /// [`Lock::lost`](crate::Lock::lost) this long before its deadline (aimed
    /// a little earlier still), and a TTL must be longer than this plus the
    /// node timeout and the drift allowance. A lock's own
    /// [`KeepAlive::stop_margin`](crate::KeepAlive::stop_margin) overrides
    /// it. Default: a tenth of each lock's TTL (1 s of a 10 s lock).
    pub fn stop_margin(mut self, margin: Duration) -> Self {
        self.stop_margin = Some(margin);
        self
    }

    /// How long [`Lock::release`](crate::Lock::release) may wait for a
    /// quorum of nodes to confirm their deletes. A release returns as soon
    /// as a quorum confirmed; past the node timeout it waits on only for
    /// nodes whose connections still bring replies (on a busy machine a
    /// delete can answer late, and it still counts), not for a node silent
    /// for two node timeouts. Deletes still out then go on in the
    /// background. Never shorter than the node timeout. Default: 1 s.
    pub fn release_timeout(mut self, timeout: Duration) -> Self {
        self.release_timeout = timeout;
        self
    }

    /// Checks the settings and opens a connection to each node, returning as
    /// soon as a quorum answered (at most the connect timeout). A node that
    /// is down does not fail the build: it counts as unknown until it answers.
    /// Each node is asked who it is (`INFO server`): two entries that reach
    /// one server are refused.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty node list, more than 64 nodes, a zero
    /// node or connect timeout or a drift factor outside `0.0..1.0`;
    /// [`Error::InvalidNode`] for an address that cannot be parsed;
    /// [`Error::SameServer`] for two entries that are one server;
    /// [`Error::NoRuntime`] outside a tokio runtime.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo() -> Result<(), quorumlock::Error> {
    /// use std::time::Duration;
    /// let redlock = quorumlock::Redlock::builder()
    ///     .nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
    ///     .node_timeout(Duration::from_millis(20))
    ///     .key_prefix("locks:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Redlock, Error> {
        require_runtime()?;
        if self.nodes.is_empty() {
            return Err(Error::Config("no Redis nodes were given"));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(Error::Config("more than 64 nodes were given"));
        }
        if self.node_timeout.is_zero() {
            return Err(Error::Config("node timeout must be more than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("connect timeout must be more than zero"));
        }
        if !(0.0..1.0).contains(&self.drift_factor) {
            return Err(Error::Config("drift factor must be in 0.0..1.0"));
        }
        Transport::prepare_tls();
        let count = self.nodes.len();
        let servers = Arc::new(Servers::new(count));
        let mut addresses: Vec<Option<String>> = Vec::with_capacity(count);
        let mut nodes = Vec::with_capacity(count);
        let mut announcers = Vec::with_capacity(count);
        let mut sharded = false;
        for (index, transport) in self.nodes.into_iter().enumerate() {
            let transport = transport.map_err(|source| Error::InvalidNode { index, source })?;
            let address = transport.address();
            if let Some(first) = addresses.iter().position(|a| a.is_some() && *a == address) {
                return Err(Error::SameServer {
                    first,
                    second: index,
                    how: "same address",
                });
            }
            addresses.push(address);
            announcers.push(transport.announcers());
            sharded |= transport.is_cluster();
            nodes.push(Node::new(
                Link::new(
                    index,
                    transport,
                    self.connect_timeout,
                    health_limit(self.node_timeout),
                    servers.clone(),
                ),
                self.fencing && self.durable_fences,
            ));
        }
        let nodes: Arc<[Node]> = nodes.into();
        if let Some((a, b)) = warm_up(&nodes, self.connect_timeout).await {
            // Whichever answered first: name them in list order.
            return Err(Error::SameServer {
                first: a.min(b),
                second: a.max(b),
                how: "same run_id",
            });
        }
        // Nodes that answered are known now; the others are checked on
        // each fenced call.
        if let Some((node, why)) = nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| n.fence_risk().map(|why| (i, why)))
        {
            return Err(Error::NotDurable { node, why });
        }
        Ok(Redlock::from_inner(Arc::new(Inner {
            nodes,
            scripts: Scripts::new(),
            retry: self.retry,
            node_timeout: self.node_timeout,
            drift_factor: self.drift_factor,
            drift_floor: self.drift_floor,
            key_prefix: self.key_prefix,
            fencing: self.fencing,
            stop_margin: self.stop_margin,
            release_timeout: self.release_timeout,
            sharded,
            background: Arc::default(),
            wakeups: Arc::new(Wakeups::new(
                announcers,
                self.connect_timeout,
                health_limit(self.node_timeout),
            )),
        })))
    }
}

/// How long `build` waits for the nodes beyond a quorum.
const GRACE: Duration = Duration::from_millis(200);

/// Opens connections until a quorum answers, every node has been tried, or
/// `limit` passes. The other connections go on opening in the background.
/// Returns `(node, other)` when a node turned out to be the same server as
/// another.
async fn warm_up(nodes: &Arc<[Node]>, limit: Duration) -> Option<(usize, usize)> {
    let quorum = crate::quorum::quorum(nodes.len());
    let mut pings: FuturesUnordered<_> = (0..nodes.len())
        .map(|i| {
            let nodes = nodes.clone();
            async move { (i, nodes[i].warm_up().await) }
        })
        .collect();
    let mut same = None;
    let mut up = 0;
    let _ = tokio::time::timeout(limit, async {
        while up < quorum && same.is_none() {
            let Some(result) = pings.next().await else {
                return;
            };
            note(result, &mut up, &mut same);
        }
    })
    .await;
    // The rest get a moment more, so that an entry that is the same server
    // as another is refused here rather than found out later.
    let _ = tokio::time::timeout(GRACE.min(limit), async {
        while same.is_none() {
            let Some(result) = pings.next().await else {
                return;
            };
            note(result, &mut up, &mut same);
        }
    })
    .await;
    if same.is_none() && !pings.is_empty() {
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(limit, async { while pings.next().await.is_some() {} }).await;
        });
    }
    same
}

/// Counts a warm-up result: a node up, or one that is another's server.
fn note(
    (node, result): (usize, Result<(), Reply>),
    up: &mut usize,
    same: &mut Option<(usize, usize)>,
) {
    match result {
        Ok(()) => *up += 1,
        Err(Reply::Fail(FailureKind::SameServer(other), _)) => *same = Some((node, other)),
        Err(_) => {}
    }
}
