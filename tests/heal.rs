//! Nodes heal by themselves: after a connection that hangs without closing,
//! a password rotation, an ACL fix, or a refused SUBSCRIBE, each node votes
//! again as soon as the fault is gone, and no fault turns into a flood of
//! connections. Every test runs real `redis-server` processes.

mod support;

use std::time::{Duration, Instant};

use quorumlock::{FailureKind, KeepAlive, Redlock, RetryPolicy};
use support::proxy::Proxy;
use support::{connections_received, eventually, subscribers, unique, value};

/// A proxy in front of each of `nodes`.
async fn in_front_of(cluster: &support::Cluster, nodes: &[usize]) -> Vec<Proxy> {
    let mut proxies = Vec::with_capacity(nodes.len());
    for &i in nodes {
        proxies.push(Proxy::start(cluster.port(i)).await);
    }
    proxies
}

/// Three nodes, each behind a proxy, and a holder that goes around them.
struct Proxied {
    cluster: support::Cluster,
    proxies: Vec<Proxy>,
    /// The proxies' addresses.
    proxied: Vec<String>,
    /// A manager over the nodes themselves.
    holder: Redlock,
}

async fn proxied_trio() -> Option<Proxied> {
    let cluster = support::cluster(3)?;
    let proxies = in_front_of(&cluster, &[0, 1, 2]).await;
    let proxied = proxies.iter().map(Proxy::url).collect();
    let holder = support::manager(&cluster.urls()).await;
    Some(Proxied {
        cluster,
        proxies,
        proxied,
        holder,
    })
}

/// Retries `try_acquire` every 5 ms until it wins; the time it took.
async fn time_to_acquire(redlock: &Redlock, resource: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(lock) = redlock.try_acquire(resource, Duration::from_secs(5)).await {
            lock.release().await.unwrap();
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no acquisition within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn hung_connections_on_two_of_three_nodes_are_replaced_within_2s() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let proxies = in_front_of(&cluster, &[1, 2]).await;
    let urls = vec![cluster.url(0), proxies[0].url(), proxies[1].url()];
    let redlock = support::manager(&urls).await;
    time_to_acquire(&redlock, &unique("warm"), Duration::from_secs(2)).await;
    // The connections stop answering without closing; new ones would work.
    for p in &proxies {
        p.stall_open();
    }
    let took = time_to_acquire(&redlock, &unique("after-stall"), Duration::from_secs(2)).await;
    println!("HEAL hung connections on 2 of 3 nodes: acquiring again after {took:?}");
    assert!(proxies.iter().all(|p| p.accepted() >= 2));
}

#[tokio::test]
async fn a_waiter_hears_releases_after_its_pubsub_connections_hung() {
    let Some(Proxied {
        cluster,
        proxies,
        proxied,
        holder,
    }) = proxied_trio().await
    else {
        return;
    };
    // Its fallback delay is far beyond the test: only a wake-up can help.
    let waiter = support::manager_retrying_every(&proxied, Duration::from_secs(30)).await;
    let resource = unique("pubsub-stall");
    let channel = format!("quorumlock:released:{resource}");
    let held = holder
        .try_acquire(&resource, Duration::from_secs(20))
        .await
        .unwrap();
    let waiting = {
        let (waiter, resource) = (waiter.clone(), resource.clone());
        tokio::spawn(async move { waiter.acquire(&resource, Duration::from_secs(5)).await })
    };
    let urls = cluster.urls();
    eventually(Duration::from_secs(2), "the waiter subscribed", || async {
        subscribers(&urls[0], &channel).await == 1
    })
    .await;
    let before: Vec<u64> = proxies.iter().map(Proxy::accepted).collect();
    for p in &proxies {
        p.stall_open();
    }
    // The command connections heal on use, the pub/sub ones by their pings:
    // each proxy sees two new connections, and the channel is subscribed
    // again (the old connection, closed by the client, took its
    // subscription with it).
    time_to_acquire(&waiter, &unique("other"), Duration::from_secs(2)).await;
    eventually(
        Duration::from_secs(3),
        "the waiter subscribed on a new connection",
        || async {
            for (i, url) in urls.iter().enumerate() {
                if proxies[i].accepted() < before[i] + 2 || subscribers(url, &channel).await != 1 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap();
    println!(
        "HEAL waiter woken {:?} after the release, over re-established pub/sub",
        released.elapsed()
    );
    lock.release().await.unwrap();
}

#[tokio::test]
async fn a_rotated_password_heals_within_1s_without_a_connection_storm() {
    let Some(node) = support::cluster_with(1, &["--requirepass", "old"]) else {
        return;
    };
    let port = node.port(0);
    let admin = format!("redis://:old@127.0.0.1:{port}");
    let redlock = Redlock::builder()
        .nodes([format!("redis://:new@127.0.0.1:{port}")])
        .build()
        .await
        .unwrap();
    let resource = unique("rotation");
    support::refused_at_once(&redlock, &resource, FailureKind::Auth).await;

    // Two seconds of callers hammering a node that refuses the password.
    let before = connections_received(&admin).await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        let _ = redlock.try_acquire(&resource, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let opened = connections_received(&admin).await - before - 1;
    let rate = opened as f64 / window.elapsed().as_secs_f64();
    println!("HEAL wrong password: {opened} connections in 2 s ({rate:.1}/s)");
    assert!(rate <= 10.0, "{rate}/s");

    // The operator rotates the password to the one we have.
    support::admin(&admin, &["CONFIG", "SET", "requirepass", "new"]).await;
    let took = time_to_acquire(&redlock, &resource, Duration::from_secs(1)).await;
    println!("HEAL password fixed: voting again after {took:?}");
}

#[tokio::test]
async fn a_node_refusing_connections_is_tried_at_most_10_times_a_second() {
    // Something accepts and closes at once: every connect fails.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let redlock = Redlock::builder()
        .nodes([format!("redis://127.0.0.1:{port}")])
        .build()
        .await
        .unwrap();
    let resource = unique("refusing");
    let start = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        let err = redlock
            .try_acquire(&resource, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst) - start;
    let rate = opened as f64 / window.elapsed().as_secs_f64();
    println!("HEAL refusing node: {opened} connections in 2 s ({rate:.1}/s)");
    assert!(rate <= 10.0, "{rate}/s");
    acceptor.abort();
}

/// Acquire, extend, release, a set, fencing and a contended waiter, all
/// through `urls` (users with only the minimal permissions).
async fn every_operation(urls: &[String], admin_urls: &[String]) {
    let redlock = support::builder(urls)
        .key_prefix("app:")
        .fencing(true)
        // Spawned test nodes keep no AOF: tests/fencing.rs checks durability.
        .require_durable_fences(false)
        .retry(
            RetryPolicy::new()
                .attempts(100)
                .delay(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap();
    let resource = unique("acl");
    let mut lock = redlock
        .acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    let first_fence = lock.fence().unwrap();
    lock.extend(Duration::from_secs(5)).await.unwrap();
    // A contended waiter: woken by the release, or by its retry delay.
    let waiting = {
        let (redlock, resource) = (redlock.clone(), resource.clone());
        tokio::spawn(async move { redlock.acquire(&resource, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    lock.release().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.fence().unwrap() > first_fence);
    next.release().await.unwrap();
    let set = [unique("a"), unique("b"), unique("c")];
    let names: Vec<&str> = set.iter().map(String::as_str).collect();
    let many = redlock
        .acquire_many(&names, Duration::from_secs(5))
        .await
        .unwrap();
    many.release().await.unwrap();
    for name in names.iter().copied().chain([resource.as_str()]) {
        for url in admin_urls {
            assert_eq!(
                value(url, &format!("app:{name}")).await,
                None,
                "{name} left on {url}"
            );
        }
    }
}

#[tokio::test]
async fn the_minimal_acl_rule_runs_every_operation_with_and_without_wakeups() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    for wakeups in [true, false] {
        // The README's rule, as written there.
        let rule = support::readme_acl(wakeups, &[], "pw");
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        for url in cluster.urls() {
            support::admin(&url, &["ACL", "DELUSER", "locker"]).await;
            support::admin(&url, &rule).await;
        }
        let urls: Vec<String> = (0..3)
            .map(|i| format!("redis://locker:pw@127.0.0.1:{}", cluster.port(i)))
            .collect();
        every_operation(&urls, &cluster.urls()).await;
    }
}

#[tokio::test]
async fn denied_pubsub_neither_breaks_release_nor_storms_the_node() {
    let Some(cluster) = support::cluster(1) else {
        return;
    };
    let url = cluster.url(0);
    // Redis 7 gives new users `resetchannels`: no PUBLISH, no SUBSCRIBE.
    support::admin(&url, &["ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all"]).await;
    let user = format!("redis://app:pw@127.0.0.1:{}", cluster.port(0));
    let redlock = support::manager_retrying_every(&[user], Duration::from_millis(300)).await;
    let keys = [unique("x"), unique("y"), unique("z")];
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let lock = redlock
        .acquire_many(&names, Duration::from_secs(30))
        .await
        .unwrap();
    // Release deletes every key although its PUBLISH is denied.
    lock.release().await.unwrap();
    for key in &keys {
        assert_eq!(value(&url, key).await, None, "{key} left behind");
    }

    // A waiter whose SUBSCRIBE is refused falls back to its retry delay
    // and opens at most a few connections a second meanwhile.
    let other = support::manager(std::slice::from_ref(&url)).await;
    let held = other
        .try_acquire(&keys[0], Duration::from_secs(10))
        .await
        .unwrap();
    let before = connections_received(&url).await;
    let waiting = {
        let (redlock, key) = (redlock.clone(), keys[0].clone());
        tokio::spawn(async move { redlock.acquire(&key, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let opened = connections_received(&url).await - before - 1;
    println!("HEAL refused SUBSCRIBE: {opened} connections in 2 s");
    assert!(opened <= 20, "{opened} connections in 2 s");
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    lock.release().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_no_subscription_behind() {
    let Some(Proxied {
        cluster,
        proxies,
        proxied,
        holder,
    }) = proxied_trio().await
    else {
        return;
    };
    let waiter = support::builder(&proxied)
        .node_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    for p in &proxies {
        p.latency(Duration::from_millis(60));
    }
    let resource = unique("cancelled");
    let held = holder
        .try_acquire(&resource, Duration::from_secs(20))
        .await
        .unwrap();
    for _ in 0..10 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(90),
            waiter.acquire(&resource, Duration::from_secs(5)),
        )
        .await;
        assert!(gave_up.is_err());
    }
    let channel = format!("quorumlock:released:{resource}");
    let urls = cluster.urls();
    eventually(
        Duration::from_secs(3),
        "no node keeps the subscription",
        || async {
            for url in &urls {
                if subscribers(url, &channel).await != 0 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    held.release().await.unwrap();
}

#[tokio::test]
async fn keep_alive_holds_through_slow_extensions_while_ownership_is_certain() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let proxies = in_front_of(&cluster, &[1, 2]).await;
    let urls = vec![cluster.url(0), proxies[0].url(), proxies[1].url()];
    let redlock = support::manager(&urls).await;
    let resource = unique("slow-extend");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_secs(3))
        .await
        .unwrap();
    lock.keep_alive(KeepAlive::new());
    // Every extension now misses the 50 ms node timeout on 2 of 3 nodes.
    for p in &proxies {
        p.latency(Duration::from_millis(120));
    }
    let guard = lock.guard();
    let lost = tokio::time::timeout(Duration::from_millis(4500), guard.lost()).await;
    assert!(lost.is_err(), "lost fired although the lock was still ours");
    assert!(lock.is_held());
    assert_eq!(
        value(&cluster.url(1), &resource).await.as_deref(),
        Some(lock.token())
    );
    for p in &proxies {
        p.heal();
    }
    lock.release().await.unwrap();
}
