//! A node that is a whole Redis Cluster (feature `cluster`), reached with
//! redis-rs's cluster client: it routes each command to its slot's master,
//! follows `MOVED` and `ASK` while slots move, and finds the new master
//! after a failover. The quorum is still over the N independent nodes;
//! inside one node, every key of a lock (its keys, their fence counters)
//! must hash to one slot, which hash tags give (see the crate docs).
//!
//! Release announcements are classic pub/sub, which a cluster broadcasts
//! to every member, so waiters subscribe on any one member, trying the
//! seeds in turn.

use std::fmt;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionInfo, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};

use super::{parse_info, ServerInfo, Wire};

/// One cluster: its seeds and the client built from them.
#[derive(Clone)]
pub(crate) struct Cluster {
    seeds: Vec<ConnectionInfo>,
    client: ClusterClient,
    /// The service's own root and client certificates, for every member.
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    certificates: Option<redis::TlsCertificates>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.seeds.iter().map(|s| s.addr().to_string()))
            .finish()
    }
}

impl Cluster {
    /// A cluster known by `seeds` (any of its members; more than one, so
    /// that one being down does not keep us out).
    pub(crate) fn new(seeds: Vec<ConnectionInfo>) -> Result<Self, RedisError> {
        let client = ClusterClient::builder(seeds.clone()).build()?;
        Ok(Self {
            seeds,
            client,
            #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
            certificates: None,
        })
    }

    /// As [`new`](Self::new), reaching every member (`rediss://` seeds)
    /// with the service's own root and client certificates.
    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    pub(crate) fn with_tls(
        seeds: Vec<ConnectionInfo>,
        certificates: redis::TlsCertificates,
    ) -> Result<Self, RedisError> {
        let client = ClusterClient::builder(seeds.clone())
            .certs(certificates.clone())
            .build()?;
        Ok(Self {
            seeds,
            client,
            certificates: Some(certificates),
        })
    }

    pub(super) fn address(&self) -> Option<String> {
        self.seeds
            .first()
            .map(|s| s.addr().to_string().to_ascii_lowercase())
    }

    /// The cluster client reports a failed connect as text ("Failed to
    /// create initial connections - ..."), losing the TLS library's typed
    /// error; one seed asked directly gives it back, so a wrong CA reads as
    /// a TLS failure and not as a node that is down.
    async fn why(&self, error: RedisError, connect_timeout: Duration) -> RedisError {
        for seed in self.announcers() {
            let direct =
                tokio::time::timeout(connect_timeout, seed.get_multiplexed_async_connection())
                    .await;
            match direct {
                Ok(Err(e)) if super::is_tls_failure(&e) => return e,
                Ok(Ok(_)) => break,
                _ => {}
            }
        }
        error
    }

    pub(super) fn announcers(&self) -> Vec<redis::Client> {
        self.seeds
            .iter()
            .filter_map(|seed| {
                #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
                if let Some(certificates) = &self.certificates {
                    return redis::Client::build_with_tls(seed.clone(), certificates.clone()).ok();
                }
                redis::Client::open(seed.clone()).ok()
            })
            .collect()
    }

    /// Connects to the cluster (its topology is read from the first seed
    /// that answers). No response timeout: the lock's deadlines decide, and
    /// a late reply must still be seen so that its key is cleaned up.
    pub(super) async fn open(
        &self,
        connect_timeout: Duration,
    ) -> Result<(Wire, ServerInfo), RedisError> {
        let config = ClusterConfig::new().set_connection_timeout(connect_timeout);
        let mut conn = match self.client.get_async_connection_with_config(config).await {
            Ok(conn) => conn,
            Err(e) => return Err(self.why(e, connect_timeout).await),
        };
        let random = || RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let mut ask = redis::cmd("INFO");
        ask.arg("server");
        let mut info = match conn.route_command(ask, random()).await {
            Ok(value) => parse_info(&String::from_redis_value(value)?),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => {
                ServerInfo::default()
            }
            Err(e) => return Err(e),
        };
        // One cluster has many servers: it is known by its members' ids
        // (the smallest), which outlive failovers and slot moves.
        info.run_id = match conn
            .route_command(redis::cmd("CLUSTER").arg("NODES").clone(), random())
            .await
        {
            Ok(value) => String::from_redis_value(value).ok().and_then(|nodes| {
                nodes
                    .lines()
                    .filter_map(|l| l.split(' ').next())
                    .filter(|id| !id.is_empty())
                    .min()
                    .map(|id| format!("cluster:{id}"))
            }),
            Err(_) => None,
        };
        Ok((Wire::Cluster(conn), info))
    }
}
