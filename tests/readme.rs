//! The README's Operations snippets, run as written: the TLS server
//! configuration and the Rust that connects to it (word for word, checked
//! against the README), and Redis Cluster members configured by the
//! README's lines with the README's ACL rule for their user.
#![cfg(all(
    feature = "cluster",
    any(feature = "tls-rustls", feature = "tls-native-tls")
))]

mod support;

use std::time::Duration;

use support::tls::Certs;

// README tls.rs begin
use quorumlock::Redlock;
use redis::{ClientTlsConfig, TlsCertificates};

/// Nodes with certificates from a private CA that want a client certificate
/// (`urls` like `rediss://redis-a.internal:6380`; `tls` holds the PEM files).
async fn tls_nodes(
    urls: &[&str],
    tls: &std::path::Path,
) -> Result<Redlock, Box<dyn std::error::Error>> {
    let mut clients = Vec::new();
    for url in urls {
        let certificates = TlsCertificates {
            root_cert: Some(std::fs::read(tls.join("ca.crt"))?),
            client_tls: Some(ClientTlsConfig {
                client_cert: std::fs::read(tls.join("client.crt"))?,
                client_key: std::fs::read(tls.join("client.key"))?,
            }),
        };
        clients.push(redis::Client::build_with_tls(*url, certificates)?);
    }
    Ok(Redlock::builder().node_clients(clients).build().await?)
}
// README tls.rs end

#[test]
fn the_readme_tls_code_is_the_code_tested_here() {
    let source = include_str!("readme.rs");
    let begin = source.find("// README tls.rs begin\n").unwrap() + 23;
    let end = source.find("// README tls.rs end").unwrap();
    assert_eq!(
        support::readme_snippet("tls.rs"),
        source[begin..end],
        "README's TLS snippet and tests/readme.rs differ"
    );
}

/// The README's TLS configuration (paths and port mapped onto the test's)
/// on three servers, reached by the README's code with a client
/// certificate, and also without one (`tls-auth-clients optional`).
#[tokio::test]
async fn the_readme_tls_set_up_runs() {
    let certs = Certs::make();
    let dir = certs.dir.to_string_lossy().into_owned();
    let config = support::readme_snippet("tls.conf");
    let nodes = support::tls::TlsNodes::start_with(3, |port| {
        let file = certs.dir.join(format!("redis-{port}.conf"));
        let text = config
            .replace("/etc/redis/tls", &dir)
            .replace("6380", &port.to_string());
        std::fs::write(&file, text).unwrap();
        vec![file.to_string_lossy().into_owned()]
    });
    let urls = nodes.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let redlock = tls_nodes(&urls, &certs.dir).await.unwrap();
    let resource = support::unique("readme-tls");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    // Without a client certificate (the server makes it optional).
    let clients = urls
        .iter()
        .map(|url| {
            let root = TlsCertificates {
                root_cert: Some(certs.read("ca.crt")),
                client_tls: None,
            };
            redis::Client::build_with_tls(*url, root).unwrap()
        })
        .collect::<Vec<_>>();
    let other = Redlock::builder()
        .node_clients(clients)
        .build()
        .await
        .unwrap();
    let e = other
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(e.is_contended(), "{e}");
    lock.release().await.unwrap();
    other
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Three clusters whose members run the README's cluster lines and give
/// quorumlock a user with the README's rule (standalone rule plus the
/// cluster additions): every operation works, wake-ups included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cluster_set_up_runs() {
    let lines = support::readme_snippet("cluster.conf");
    let clusters: Vec<support::redis_cluster::RedisCluster> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| support::redis_cluster::RedisCluster::start_configured(3, 0, &lines))
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let rule = support::readme_acl(true, &[support::ACL_CLUSTER], "pw");
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    let mut builder = Redlock::builder();
    for cluster in &clusters {
        for i in 0..cluster.servers.len() {
            support::admin(&cluster.servers.url(i), &rule).await;
        }
        let seeds: Vec<String> = (0..cluster.servers.len())
            .map(|i| format!("redis://locker:pw@127.0.0.1:{}", cluster.servers.port(i)))
            .collect();
        builder = builder.cluster_node(seeds);
    }
    let redlock = builder
        .key_prefix("app:")
        .fencing(true)
        // Spawned test nodes keep no AOF: tests/fencing.rs checks durability.
        .require_durable_fences(false)
        // Waiters retry only after 10 s: sooner is a release announced.
        .retry(
            quorumlock::RetryPolicy::new()
                .delay(Duration::from_secs(10))
                .jitter(Duration::ZERO),
        )
        .build()
        .await
        .unwrap();

    let resource = support::unique("acl");
    let mut lock = redlock
        .acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    let first_fence = lock.fence().unwrap();
    lock.extend(Duration::from_secs(5)).await.unwrap();
    // A waiter, subscribed on a member of the first cluster, is woken by
    // the release announced on the slot's master of each cluster.
    let waiting = {
        let (redlock, resource) = (redlock.clone(), resource.clone());
        tokio::spawn(async move { redlock.acquire(&resource, Duration::from_secs(5)).await })
    };
    let channel = format!("quorumlock:released:app:{resource}");
    let member = clusters[0].servers.url(0);
    support::eventually(Duration::from_secs(5), "the waiter subscribed", || {
        let (member, channel) = (member.clone(), channel.clone());
        async move { support::subscribers(&member, &channel).await > 0 }
    })
    .await;
    lock.release().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("woken by the announcement, not by the 10 s retry delay")
        .unwrap()
        .unwrap();
    assert!(next.fence().unwrap() > first_fence);
    next.release().await.unwrap();

    let order = support::unique("order");
    let (payment, stock) = (format!("{{{order}}}:payment"), format!("{{{order}}}:stock"));
    let many = redlock
        .acquire_many(&[payment.as_str(), stock.as_str()], Duration::from_secs(5))
        .await
        .unwrap();
    many.release().await.unwrap();
    for cluster in &clusters {
        for key in [&resource, &payment, &stock] {
            let key = format!("app:{key}");
            let master = cluster.master_of_slot(0, cluster.slot(&key));
            assert_eq!(cluster.cli(master, &["GET", &key]), "", "{key} left behind");
        }
    }
}
