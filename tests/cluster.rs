//! Nodes that are whole Redis Clusters (feature `cluster`): three local
//! clusters of three masters each make one Redlock. Commands must reach
//! each key's master, a lock's keys and fence counters must share a slot,
//! and a slot moving or a master failing over in one cluster during a run
//! must cost neither exclusion nor liveness: the other two clusters hold
//! the quorum meanwhile.
#![cfg(feature = "cluster")]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use quorumlock::{Builder, Error, FailureKind, Redlock, RetryPolicy};
use support::redis_cluster::RedisCluster;
use support::witness::{self, Load};

/// `count` clusters, started side by side; the first gets `replicas` per
/// master.
fn clusters(count: usize, replicas: usize) -> Vec<RedisCluster> {
    std::thread::scope(|s| {
        let started: Vec<_> = (0..count)
            .map(|i| s.spawn(move || RedisCluster::start(3, if i == 0 { replicas } else { 0 })))
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn builder(clusters: &[RedisCluster]) -> Builder {
    clusters
        .iter()
        .fold(Redlock::builder(), |b, c| b.cluster_node(c.seeds()))
}

/// The value of `key` on member `i` of `cluster`, read there directly.
fn value_on(cluster: &RedisCluster, i: usize, key: &str) -> String {
    cluster.cli(i, &["GET", key])
}

/// Resource names whose slots are served by different masters of `cluster`.
fn spread(cluster: &RedisCluster, count: usize) -> Vec<String> {
    let mut masters = HashSet::new();
    let mut names = Vec::new();
    while names.len() < count {
        let name = support::unique("spread");
        let master = cluster.master_of_slot(0, cluster.slot(&name));
        if masters.insert(master) || masters.len() == 3 {
            names.push(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_across_three_clusters() {
    let clusters = clusters(3, 0);
    let resources = spread(&clusters[0], 4);

    // Each lock's key is on its slot's master, in every cluster.
    let redlock = builder(&clusters).build().await.unwrap();
    for resource in &resources {
        let lock = redlock
            .try_acquire(resource, Duration::from_secs(10))
            .await
            .unwrap();
        for cluster in &clusters {
            let master = cluster.master_of_slot(0, cluster.slot(resource));
            assert_eq!(value_on(cluster, master, resource), lock.token());
        }
        lock.release().await.unwrap();
    }

    let mut load = Load::new(&resources, Duration::from_secs(3));
    load.clients = 8;
    let report = witness::run_on(|| builder(&clusters), &load).await;
    println!("CLUSTER exclusion: {report}");
    assert_eq!(report.violations, 0, "{report}");
    assert_eq!(report.hung, 0, "{report}");
    assert!(report.acquisitions > 100, "{report}");
    assert_eq!(report.unavailable + report.other_errors, 0, "{report}");

    // One cluster given twice, by other seeds: one failure domain, refused.
    let mut reversed = clusters[0].seeds();
    reversed.reverse();
    let err = Redlock::builder()
        .cluster_node(clusters[0].seeds())
        .cluster_node(clusters[1].seeds())
        .cluster_node(reversed)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            quorumlock::Error::SameServer {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_and_fences_share_a_slot() {
    let clusters = clusters(3, 0);
    let redlock = builder(&clusters)
        .fencing(true)
        // Spawned test nodes keep no AOF: tests/fencing.rs checks durability.
        .require_durable_fences(false)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);

    // One hash tag: one slot, one master per cluster, fenced.
    let order = support::unique("order");
    let (payment, stock) = (format!("{{{order}}}:payment"), format!("{{{order}}}:stock"));
    let set = [payment.as_str(), stock.as_str()];
    let first = redlock.try_acquire_many(&set, ttl).await.unwrap();
    let fence = first.fence().unwrap();
    for cluster in &clusters {
        let master = cluster.master_of_slot(0, cluster.slot(set[0]));
        for key in set {
            assert_eq!(value_on(cluster, master, key), first.token());
        }
    }
    first.release().await.unwrap();
    let second = redlock.try_acquire_many(&set, ttl).await.unwrap();
    assert!(second.fence().unwrap() > fence);
    second.release().await.unwrap();

    // A single untagged resource: its fence counter follows its slot.
    let single = support::unique("single");
    let held = redlock.try_acquire(&single, ttl).await.unwrap();
    assert!(held.fence().is_some());
    let again = redlock.try_acquire(&single, ttl).await.unwrap_err();
    assert!(again.is_contended(), "{again}");
    held.release().await.unwrap();

    // Untagged names in different slots: refused before anything is sent,
    // with the reason (a node's CROSSSLOT would only be a missing vote).
    let names = spread(&clusters[0], 2);
    assert_ne!(clusters[0].slot(&names[0]), clusters[0].slot(&names[1]));
    let untagged = [names[0].as_str(), names[1].as_str()];
    let e = redlock.try_acquire_many(&untagged, ttl).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("hash tag"), "{e}");
    for cluster in &clusters {
        for name in &names {
            let master = cluster.master_of_slot(0, cluster.slot(name));
            assert_eq!(value_on(cluster, master, name), "");
        }
    }
    // A name holding `}` but no hash tag: its fence counter cannot share
    // its slot, and neither can a semaphore's permits or a read-write
    // lock's keys. Refused with fencing; a plain lock of it works.
    let odd = format!("{}}}x", support::unique("odd"));
    let e = redlock.try_acquire(&odd, ttl).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let e = redlock
        .semaphore(&odd, 2)
        .try_acquire(ttl)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let e = redlock.rw_lock(&odd).try_read(ttl).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let unfenced = builder(&clusters).build().await.unwrap();
    unfenced
        .try_acquire(&odd, ttl)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // Tagged, such a name is fine everywhere.
    let named = format!("{{{}}}:{odd}", support::unique("tag"));
    redlock
        .try_acquire(&named, ttl)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let permit = redlock.semaphore(&named, 2).try_acquire(ttl).await.unwrap();
    permit.release().await.unwrap();
}

/// One cluster among single servers: a set whose keys span slots would be
/// refused by the cluster alone and granted by the two servers, a lock
/// with one node fewer than counted on. It is refused before any I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_among_single_servers_checks_slots_too() {
    let Some(servers) = support::cluster(2) else {
        return;
    };
    let cluster = RedisCluster::start(3, 0);
    let redlock = Redlock::builder()
        .cluster_node(cluster.seeds())
        .nodes(servers.urls())
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    let names = spread(&cluster, 2);
    let e = redlock
        .try_acquire_many(&[names[0].as_str(), names[1].as_str()], ttl)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    for url in servers.urls() {
        assert_eq!(support::key_count(&url).await, 0, "{url}");
    }
    // One hash tag: granted by all three.
    let order = support::unique("order");
    let (a, b) = (format!("{{{order}}}:a"), format!("{{{order}}}:b"));
    let lock = redlock.try_acquire_many(&[&a, &b], ttl).await.unwrap();
    let master = cluster.master_of_slot(0, cluster.slot(&a));
    assert_eq!(value_on(&cluster, master, &b), lock.token());
    lock.release().await.unwrap();
}

/// Runs the witness on one resource while `fault` strikes cluster 0 after
/// a second; then cluster 0 must vote again.
async fn run_through<F>(clusters: &[RedisCluster], ttl: Duration, name: &str, fault: F)
where
    F: FnOnce(&str) + Send,
{
    let resource = support::unique("moving");
    let mut load = Load::new(std::slice::from_ref(&resource), Duration::from_secs(5));
    load.clients = 8;
    load.ttl = ttl;
    let (report, ()) = tokio::join!(witness::run_on(|| builder(clusters), &load), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| fault(&resource));
    });
    println!("CLUSTER {name}: {report}");
    assert_eq!(report.violations, 0, "{report}");
    assert_eq!(report.hung, 0, "{report}");
    assert!(report.acquisitions > 100, "{report}");

    // Cluster 0 votes again: a lock's key is on its slot's master there.
    let redlock = builder(clusters).build().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cluster = &clusters[0];
        let alive: Vec<usize> = cluster.masters();
        let master = cluster.master_of_slot(alive[0], cluster.slot(&resource));
        if let Ok(lock) = redlock
            .try_acquire(&resource, Duration::from_secs(10))
            .await
        {
            let on_master = value_on(cluster, master, &resource) == lock.token();
            lock.release().await.unwrap();
            if on_master {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster 0 does not vote again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_during_a_run() {
    let clusters = clusters(3, 0);
    let cluster = &clusters[0];
    run_through(
        &clusters,
        Duration::from_secs(1),
        "slot migration",
        |resource| {
            let slot = cluster.slot(resource);
            let from = cluster.master_of_slot(0, slot);
            let to = cluster.masters().into_iter().find(|&m| m != from).unwrap();
            cluster.migrate_slot(slot, from, to);
            cluster.wait_ok(&cluster.masters());
            assert_eq!(cluster.master_of_slot(from, slot), to);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_to_its_replica() {
    let clusters = clusters(3, 1);
    let cluster = &clusters[0];
    // Failover takes longer than the cluster node timeout (1 s) and so
    // longer than the TTL: keys the replica had not received yet have
    // expired by then, which keeps a failover as safe as a delayed restart.
    let ttl = Duration::from_millis(500);
    run_through(&clusters, ttl, "killed master", |resource| {
        let slot = cluster.slot(resource);
        let master = cluster.master_of_slot(0, slot);
        cluster.servers.crash(master);
        let alive: Vec<usize> = (0..cluster.servers.len())
            .filter(|&i| i != master)
            .collect();
        cluster.wait_for_new_master(alive[0], slot, master);
        cluster.wait_ok(&alive);
    })
    .await;
}

/// Clusters reached over TLS with the service's own CA
/// (`cluster_node_with_tls`): commands, redirects and release
/// announcements all go over TLS; a wrong CA is a TLS failure.
#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_over_tls_with_our_own_ca() {
    use redis::TlsCertificates;
    let certs = support::tls::Certs::make();
    let clusters: Vec<RedisCluster> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3)
            .map(|_| s.spawn(|| RedisCluster::start_tls(3, &certs)))
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let trusting = |root: &str| TlsCertificates {
        root_cert: Some(certs.read(root)),
        client_tls: None,
    };
    let builder = |root: &str, retry: RetryPolicy| {
        clusters
            .iter()
            .fold(Redlock::builder(), |b, c| {
                b.cluster_node_with_tls(c.tls_seeds(), trusting(root))
            })
            .retry(retry)
    };
    let redlock = builder("ca.crt", RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let resource = support::unique("tls-cluster");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    for cluster in &clusters {
        let master = cluster.master_of_slot(0, cluster.slot(&resource));
        assert_eq!(value_on(cluster, master, &resource), lock.token());
    }
    // A waiter whose retry delay is 10 s is woken through a member's TLS
    // pub/sub connection.
    let waiter = builder(
        "ca.crt",
        RetryPolicy::new()
            .delay(Duration::from_secs(10))
            .jitter(Duration::ZERO),
    )
    .build()
    .await
    .unwrap();
    let waiting = {
        let resource = resource.clone();
        tokio::spawn(async move { waiter.acquire(&resource, Duration::from_secs(10)).await })
    };
    let channel = format!("quorumlock:released:{resource}");
    support::eventually(Duration::from_secs(5), "the waiter subscribed", || {
        let (cluster, channel) = (&clusters[0], channel.clone());
        async move {
            (0..cluster.servers.len()).any(|i| {
                cluster
                    .cli(i, &["PUBSUB", "NUMSUB", &channel])
                    .lines()
                    .nth(1)
                    .is_some_and(|n| n != "0")
            })
        }
    })
    .await;
    lock.release().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("woken by the announcement, not by the 10 s retry delay")
        .unwrap()
        .unwrap();
    next.release().await.unwrap();

    // Another CA: refused as TLS, on enough clusters to cost the quorum.
    let wrong = builder("other-ca.crt", RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let e = wrong
        .try_acquire(&support::unique("tls-cluster"), Duration::from_secs(10))
        .await
        .unwrap_err();
    let kinds: Vec<FailureKind> = e.failures().iter().map(|f| f.kind()).collect();
    assert!(
        kinds.iter().filter(|k| **k == FailureKind::Tls).count() >= 2,
        "{e}: {:?}",
        e.failures()
    );
    assert!(e.is_refused(), "{e}");
}
