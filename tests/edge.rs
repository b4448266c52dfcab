//! The cases that used to mislead, panic or leak: fence counters in the
//! lock namespace, TTL rounding, panicking policies, errors that blamed the
//! wrong thing, `acquire_many` waking on one key only, one server counted
//! as several nodes, `Lost` for a refused script, no tokio runtime, and
//! quadratic input checks. Each runs against real `redis-server` processes.

mod support;

use std::time::{Duration, Instant};

use quorumlock::{Error, FailureKind, KeepAlive, LossCause, Redlock, RetryPolicy};
use support::{no_key_anywhere, unique, value};

#[tokio::test]
async fn fence_counters_are_out_of_reach_of_resource_names() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let fenced = support::fenced_builder(&urls).build().await.unwrap();
    let x = unique("x");
    let lock = fenced
        .try_acquire(&x, Duration::from_secs(5))
        .await
        .unwrap();
    let fence = lock.fence().unwrap();
    lock.release().await.unwrap();
    // The name the counter used to live under is an ordinary resource.
    let beside = format!("{x}:fence");
    let held = fenced
        .try_acquire(&beside, Duration::from_secs(5))
        .await
        .unwrap();
    // ... and holding it does not break the fenced lock on `x`.
    let again = fenced
        .try_acquire(&x, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(again.fence().unwrap() > fence);
    again.release().await.unwrap();
    held.release().await.unwrap();
    // The counter's own key cannot be named.
    let err = fenced
        .try_acquire(&format!("quorumlock:fence:{{{x}}}"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(
        value(&urls[0], &format!("quorumlock:fence:{{{x}}}")).await,
        Some((fence + 1).to_string())
    );
}

/// Three independent single-node Redis Clusters, each owning every slot.
async fn cluster_enabled_nodes() -> Option<(support::Cluster, ConfigFiles)> {
    let files = ConfigFiles(format!("quorumlock-test-{:x}-", rand::random::<u64>()));
    let config = std::env::temp_dir()
        .join(format!("{}{{port}}.conf", files.0))
        .to_string_lossy()
        .into_owned();
    let nodes = support::cluster_with(
        3,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &config,
            // The default bus port (port + 10000) can be past 65535.
            "--cluster-port",
            "{free}",
            // A short node timeout makes a short wait before the state is ok.
            "--cluster-node-timeout",
            "500",
        ],
    )?;
    for url in nodes.urls() {
        support::admin(&url, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]).await;
    }
    for url in nodes.urls() {
        support::eventually(Duration::from_secs(10), "the cluster is ok", || async {
            let mut c = support::conn(&url).await;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await
                .unwrap();
            info.contains("cluster_state:ok")
        })
        .await;
    }
    Some((nodes, files))
}

/// Removes the cluster config files named with this prefix when dropped.
struct ConfigFiles(String);

impl Drop for ConfigFiles {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&self.0) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[tokio::test]
async fn fenced_locks_work_on_cluster_enabled_nodes() {
    let Some((nodes, files)) = cluster_enabled_nodes().await else {
        return;
    };
    let fenced = support::fenced_builder(&nodes.urls())
        .build()
        .await
        .unwrap();
    // A plain name, an unclosed brace, and a hash-tagged set: the counters
    // share their locks' slots, so no CROSSSLOT.
    for name in [unique("plain"), unique("open{brace")] {
        let lock = fenced
            .try_acquire(&name, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(lock.fence().is_some());
        lock.release().await.unwrap();
    }
    let tag = unique("order");
    let (a, b) = (format!("{{{tag}}}:a"), format!("{{{tag}}}:b"));
    let lock = fenced
        .try_acquire_many(&[&a, &b], Duration::from_secs(5))
        .await
        .unwrap();
    lock.release().await.unwrap();
    // Keys in different slots: a clear refusal, not a "multi-resource" hint.
    let err = fenced
        .try_acquire_many(&[&unique("p"), &unique("q")], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    assert_eq!(err.failures()[0].kind(), FailureKind::CrossSlot, "{err:?}");
    // The servers go first, or they may write their config files again.
    drop(nodes);
    drop(files);
}

#[tokio::test]
async fn validity_is_computed_from_the_ttl_redis_was_given() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::builder(&urls)
        .drift(0.0, Duration::ZERO)
        .build()
        .await
        .unwrap();
    let before = Instant::now();
    let lock = redlock
        .try_acquire(&unique("rounding"), Duration::from_micros(100_999))
        .await
        .unwrap();
    // Redis keeps the key 100 ms; a deadline beyond that is a lie.
    assert_eq!(lock.ttl(), Duration::from_millis(100));
    assert!(
        lock.deadline() <= before + Duration::from_millis(100),
        "deadline {:?} past the 100 ms Redis was told",
        lock.deadline() - before
    );
    lock.release().await.unwrap();
}

#[tokio::test]
async fn extreme_policy_settings_never_panic() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    // Keep-alive with an endless max hold and a NaN share still extends.
    let redlock = support::manager(&urls).await;
    let mut lock = redlock
        .try_acquire(&unique("extreme"), Duration::from_millis(300))
        .await
        .unwrap();
    lock.keep_alive(
        KeepAlive::new()
            .max_hold(Some(Duration::MAX))
            .when_left(f64::NAN),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(lock.is_held(), "the keep-alive task died");
    lock.release().await.unwrap();

    // Builder extremes: typed errors or working managers.
    let huge = support::builder(&urls)
        .node_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .build()
        .await
        .unwrap();
    let err = huge
        .try_acquire(&unique("huge"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = support::builder(&urls)
        .drift(f64::NAN, Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let drifty = support::builder(&urls)
        .drift(0.5, Duration::MAX)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        drifty
            .try_acquire(&unique("d"), Duration::from_secs(5))
            .await,
        Err(Error::InvalidInput(_))
    ));

    // Retry extremes on a contended resource: each returns, none panics.
    let resource = unique("held");
    let held = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    let policies = [
        RetryPolicy::new().attempts(0),
        RetryPolicy::new()
            .attempts(u32::MAX)
            .delay(Duration::MAX)
            .jitter(Duration::MAX)
            .max_wait(Some(Duration::from_millis(200))),
        RetryPolicy::new()
            .attempts(3)
            .delay(Duration::ZERO)
            .jitter(Duration::ZERO)
            .max_wait(Some(Duration::MAX)),
    ];
    for policy in policies {
        let m = support::builder(&urls).retry(policy).build().await.unwrap();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            m.acquire(&resource, Duration::from_secs(5)),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(err.is_contended(), "{err:?}");
    }
    held.release().await.unwrap();
}

#[tokio::test]
async fn errors_name_the_cause_and_the_nodes() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let redlock = support::manager(&urls).await;
    // A TTL Redis would refuse is refused before any I/O.
    let err = redlock
        .try_acquire(&unique("long"), Duration::from_millis(i64::MAX as u64))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");

    // Lost says why.
    let mut lock = redlock
        .try_acquire(&unique("expire"), Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = lock.extend(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Lost {
                cause: LossCause::Expired,
                ..
            }
        ),
        "{err:?}"
    );
    let resource = unique("taken");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    for url in &urls {
        support::admin(url, &["SET", &resource, "someone-else"]).await;
    }
    let err = lock.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Lost {
                cause: LossCause::NotOurs,
                ..
            }
        ),
        "{err:?}"
    );

    // Two frozen nodes and one refusal: unavailable, not contended, and
    // the frozen nodes are named with the node timeout they missed.
    let resource = unique("frozen");
    support::set_foreign(&urls[0], &resource).await;
    cluster.freeze(1);
    cluster.freeze(2);
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    cluster.thaw(1);
    cluster.thaw(2);
    assert!(err.is_unavailable(), "{err:?}");
    let kinds: Vec<(usize, FailureKind)> = err
        .failures()
        .iter()
        .map(|f| (f.node(), f.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, FailureKind::TimedOut(Duration::from_millis(50))),
            (2, FailureKind::TimedOut(Duration::from_millis(50)))
        ]
    );
    assert!(err.to_string().contains("no reply within 50ms"), "{err}");
    // A killed node is unreachable, not timed out.
    support::node_votes_again(&redlock, &urls[1], Duration::from_secs(3)).await;
    cluster.kill(2);
    cluster.kill(1);
    let err = redlock
        .try_acquire(&unique("killed"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.failures()
            .iter()
            .any(|f| f.kind() == FailureKind::Unreachable),
        "{err:?}"
    );
}

#[tokio::test]
async fn acquire_many_wakes_on_the_release_of_any_of_its_keys() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let holder = support::manager(&urls).await;
    let waiter = support::manager_retrying_every(&urls, Duration::from_secs(4)).await;
    let (a, b) = (unique("first"), unique("second"));
    let held = holder
        .try_acquire(&b, Duration::from_secs(10))
        .await
        .unwrap();
    let waiting = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move { waiter.acquire_many(&[&a, &b], Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("not woken by the release of its second key")
        .unwrap()
        .unwrap();
    println!(
        "EDGE acquire_many woken {:?} after the release",
        released.elapsed()
    );
    lock.release().await.unwrap();
}

#[tokio::test]
async fn one_server_is_never_counted_as_several_nodes() {
    let Some(mut cluster) = support::cluster(2) else {
        return;
    };
    let port = cluster.port(0);
    let same_address = [
        vec![format!("redis://127.0.0.1:{port}"); 3],
        vec![
            format!("redis://127.0.0.1:{port}/1"),
            format!("redis://127.0.0.1:{port}/2"),
            format!("redis://127.0.0.1:{port}/3"),
        ],
    ];
    for nodes in same_address {
        let err = Redlock::builder().nodes(nodes).build().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::SameServer {
                    first: 0,
                    second: 1,
                    how: "same address"
                }
            ),
            "{err:?}"
        );
        assert!(err.is_invalid());
    }
    // Spelled differently, found out by asking the server.
    let err = Redlock::builder()
        .nodes([
            format!("redis://localhost:{port}"),
            cluster.url(1),
            format!("redis://127.0.0.1:{port}/0"),
        ])
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SameServer {
                how: "same run_id",
                ..
            }
        ),
        "{err:?}"
    );

    // Learnt only later (the entry was unreachable at build): no vote.
    let proxy = support::proxy::Proxy::start(port).await;
    proxy.blackhole();
    let redlock = Redlock::builder()
        .nodes([cluster.url(0), proxy.url(), cluster.url(1)])
        .build()
        .await
        .unwrap();
    proxy.heal();
    cluster.kill(1);
    // Node 0 and its alias would be two votes of three if counted twice.
    support::eventually(
        Duration::from_secs(3),
        "the alias is recognised",
        || async {
            let err = redlock
                .try_acquire(&unique("alias"), Duration::from_secs(5))
                .await
                .unwrap_err();
            err.failures()
                .iter()
                .any(|f| f.node() == 1 && f.kind() == FailureKind::SameServer(0))
        },
    )
    .await;
}

#[tokio::test]
async fn a_node_that_refuses_the_scripts_is_no_loss_and_keeps_the_lock() {
    let Some(cluster) = support::cluster_with(3, &["--rename-command", "EVALSHA", ""]) else {
        return;
    };
    let urls = cluster.urls();
    let redlock = support::manager(&urls).await;
    let resource = unique("noscript");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    // Out-of-range input leaves the lock alone.
    let err = lock
        .extend(Duration::from_millis(i64::MAX as u64))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(lock.is_held());
    let err = lock.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_refused() && !err.is_lost(), "{err:?}");
    assert_eq!(err.failures()[0].kind(), FailureKind::Command, "{err:?}");
    assert!(lock.is_held(), "a refused extend is not a lost lock");
    let err = lock.release().await.unwrap_err();
    assert!(err.is_refused() && !err.is_lost(), "{err:?}");
    // The key really is still there: "lost" would have been a lie.
    assert!(value(&urls[0], &resource).await.is_some());
}

#[tokio::test]
async fn a_missing_password_is_refused_at_once() {
    let Some(node) = support::cluster_with(1, &["--requirepass", "secret"]) else {
        return;
    };
    let redlock = Redlock::builder()
        .nodes([node.url(0)])
        .build()
        .await
        .unwrap();
    support::refused_at_once(&redlock, &unique("noauth"), FailureKind::Auth).await;
}

#[test]
fn outside_a_tokio_runtime_calls_fail_instead_of_panicking() {
    let build = Redlock::builder().nodes(["redis://127.0.0.1:1"]).build();
    assert!(matches!(
        futures::executor::block_on(build),
        Err(Error::NoRuntime)
    ));
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redlock = runtime.block_on(support::manager(&urls));
    let resource = unique("elsewhere");
    let err = futures::executor::block_on(redlock.try_acquire(&resource, Duration::from_secs(5)))
        .unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
    // A lock taken inside the runtime is released from another executor.
    let lock = runtime
        .block_on(redlock.try_acquire(&resource, Duration::from_secs(5)))
        .unwrap();
    futures::executor::block_on(lock.release()).unwrap();
    runtime.block_on(no_key_anywhere(&urls, &resource, Duration::from_secs(1)));
}

#[tokio::test]
async fn input_checks_are_linear() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let mut names: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
    names.push("k7".to_string());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    let err = redlock
        .try_acquire_many(&names, Duration::from_secs(5))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    println!("EDGE 100,001 names checked in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn nodes_that_forgot_their_scripts_are_given_them_again() {
    // A node restarted (or `SCRIPT FLUSH`ed) answers NOSCRIPT to EVALSHA:
    // each call loads the script and asks again.
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("flushed");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    lock.release().await.unwrap();
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    for url in &urls {
        support::admin(url, &["SCRIPT", "FLUSH"]).await;
    }
    lock.extend(Duration::from_secs(5)).await.unwrap();
    for url in &urls {
        support::admin(url, &["SCRIPT", "FLUSH"]).await;
    }
    lock.release().await.unwrap();
    support::no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn nodes_given_as_the_services_own_clients() {
    // The service's clients carry its own settings (here: a password that
    // the bare addresses lack); quorumlock connects through them.
    let Some(cluster) = support::cluster_with(3, &["--requirepass", "s3cret"]) else {
        return;
    };
    let clients: Vec<redis::Client> = (0..3)
        .map(|i| {
            let url = format!("redis://:s3cret@127.0.0.1:{}", cluster.port(i));
            redis::Client::open(url).unwrap()
        })
        .collect();
    let redlock = Redlock::builder()
        .node_clients(clients.clone())
        .build()
        .await
        .unwrap();
    let lock = redlock
        .try_acquire(&unique("own-clients"), Duration::from_secs(5))
        .await
        .unwrap();
    lock.release().await.unwrap();

    // The same address twice is still refused.
    let twice = vec![clients[0].clone(), clients[1].clone(), clients[0].clone()];
    let err = Redlock::builder()
        .node_clients(twice)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SameServer {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A service's own `ConnectionManager`s are used as they are: the lock
/// opens no command connection of its own, the managers' login applies,
/// and two managers of one server are still found out (by run id).
#[tokio::test]
async fn nodes_as_the_services_own_connection_managers() {
    let Some(cluster) = support::cluster_with(3, &["--requirepass", "s3cret"]) else {
        return;
    };
    let mut managers = Vec::new();
    for i in 0..3 {
        let url = format!("redis://:s3cret@127.0.0.1:{}", cluster.port(i));
        let client = redis::Client::open(url).unwrap();
        managers.push(redis::aio::ConnectionManager::new(client).await.unwrap());
    }
    let admin_urls: Vec<String> = (0..3)
        .map(|i| format!("redis://:s3cret@127.0.0.1:{}", cluster.port(i)))
        .collect();
    let mut before = Vec::new();
    for url in &admin_urls {
        before.push(support::connections_received(url).await);
    }
    let redlock = Redlock::builder()
        .node_managers(managers.clone())
        .build()
        .await
        .unwrap();
    let resource = unique("own-managers");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err()
        .is_contended());
    for url in &admin_urls {
        assert_eq!(
            support::value(url, &resource).await.as_deref(),
            Some(lock.token())
        );
    }
    lock.release().await.unwrap();
    for (url, before) in admin_urls.iter().zip(before) {
        // Only our own looks: `value` and `connections_received` connect
        // once each.
        assert_eq!(
            support::connections_received(url).await,
            before + 2,
            "the lock opened a connection of its own to {url}"
        );
    }

    let twice = vec![
        managers[0].clone(),
        managers[1].clone(),
        managers[0].clone(),
    ];
    let err = Redlock::builder()
        .node_managers(twice)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SameServer {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{err:?}"
    );
}
