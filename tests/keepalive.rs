//! Locks for long work: keep-alive, the lost signal, and `with_lock`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumlock::{Error, KeepAlive};
use support::{eventually, no_key_anywhere, unique, Cluster};

#[tokio::test]
async fn keep_alive_holds_a_lock_for_10x_its_ttl() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("kept");
    let ttl = Duration::from_millis(300);
    let mut lock = redlock.try_acquire(&resource, ttl).await.unwrap();
    lock.keep_alive(KeepAlive::new());
    let first_deadline = lock.deadline();
    let start = Instant::now();
    let until = start + ttl * 10;
    let (mut extensions, mut seen, mut checked) = (0u32, first_deadline, start);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(lock.is_held(), "lock ran out while kept alive");
        if lock.deadline() != seen {
            extensions += 1;
            seen = lock.deadline();
        }
        if checked.elapsed() >= Duration::from_millis(100) {
            checked = Instant::now();
            let other = redlock.try_acquire(&resource, ttl).await;
            assert!(
                other.unwrap_err().is_contended(),
                "someone else got a kept lock"
            );
        }
    }
    // The overhead: one extension each time a third of the validity is
    // left, i.e. every ~2/3 x 294 ms here.
    let per_second = f64::from(extensions) / start.elapsed().as_secs_f64();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "KEEPALIVE {extensions} extensions in {:?} of hold at a {ttl:?} TTL = {per_second:.1}/s",
        start.elapsed()
    );
    assert!(
        (3.0..8.0).contains(&per_second),
        "{per_second:.1} extensions/s"
    );
    assert!(lock.deadline() > first_deadline + ttl * 8);
    assert!(
        futures::FutureExt::now_or_never(lock.lost()).is_none(),
        "lost fired on a kept lock"
    );
    lock.release().await.unwrap();
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dropping_a_kept_lock_stops_extension_and_releases() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("kept-dropped");
    let ttl = Duration::from_millis(300);
    let mut lock = redlock.try_acquire(&resource, ttl).await.unwrap();
    lock.keep_alive(KeepAlive::new());
    drop(lock);
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
    // Every delete has run. From here a keep-alive task still working would
    // send an extend (EVALSHA) to each node every ~200 ms.
    let scripts_before = match &_cluster {
        Some(cluster) => Some(support::calls(&cluster.url(0), "evalsha").await),
        None => None, // shared external nodes: other tests run scripts too
    };
    let next = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(ttl * 2).await;
    if let (Some(cluster), Some(before)) = (&_cluster, scripts_before) {
        let after = support::calls(&cluster.url(0), "evalsha").await;
        assert_eq!(
            after, before,
            "scripts ran on a node after the kept lock was dropped"
        );
    }
    for url in &urls {
        assert_eq!(
            support::value(url, &resource).await.as_deref(),
            Some(next.token())
        );
    }
    next.release().await.unwrap();
}

/// Freezes two of three nodes so no extension can reach a quorum.
fn freeze_majority(cluster: &Cluster) {
    cluster.freeze(1);
    cluster.freeze(2);
}

fn thaw_majority(cluster: &Cluster) {
    cluster.thaw(1);
    cluster.thaw(2);
}

/// Takes a kept-alive lock whose extensions cannot succeed (a majority
/// frozen) and returns how long before its deadline `lost()` completed, by
/// the lock's stop margin: `(deadline - fired, margin)`. Checks that
/// `is_held`, `remaining` and `extend` agree with the signal.
async fn lost_lead(
    policy: KeepAlive,
    builder: quorumlock::Builder,
    cluster: &Cluster,
) -> (Duration, Duration) {
    let redlock = builder.build().await.unwrap();
    let resource = unique("lost");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_millis(600))
        .await
        .unwrap();
    lock.keep_alive(policy);
    let guard = lock.guard();
    freeze_majority(cluster);
    // No extension can succeed from here on, so this deadline is final.
    let deadline = lock.deadline();
    let margin = lock.stop_margin();
    let fired = tokio::time::timeout(Duration::from_secs(3), guard.lost()).await;
    let at = Instant::now();
    let held = (lock.is_held(), guard.is_held(), lock.remaining());
    thaw_majority(cluster);
    assert!(fired.is_ok(), "lost never fired");
    assert!(
        at <= deadline,
        "lost fired {:?} after the deadline",
        at - deadline
    );
    assert_eq!(held, (false, false, Duration::ZERO), "held after lost()");
    assert!(lock
        .extend(Duration::from_secs(1))
        .await
        .unwrap_err()
        .is_lost());
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "LOST {:?} before the deadline, margin {margin:?}",
        deadline - at
    );
    (deadline - at, margin)
}

#[tokio::test]
async fn lost_leaves_the_stop_margin_when_extension_fails() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    // The default: a tenth of the TTL.
    let (lead, margin) = lost_lead(
        KeepAlive::new(),
        support::builder(&cluster.urls()),
        &cluster,
    )
    .await;
    assert_eq!(margin, Duration::from_millis(60));
    assert!(
        lead >= margin,
        "lost() left {lead:?} of a {margin:?} margin"
    );
    // The keep-alive's own margin.
    let policy = KeepAlive::new().stop_margin(Duration::from_millis(200));
    let (lead, margin) = lost_lead(policy, support::builder(&cluster.urls()), &cluster).await;
    assert_eq!(margin, Duration::from_millis(200));
    assert!(
        lead >= margin,
        "lost() left {lead:?} of a {margin:?} margin"
    );
    // The manager's, for every lock.
    let builder = support::builder(&cluster.urls()).stop_margin(Duration::from_millis(150));
    let (lead, margin) = lost_lead(KeepAlive::new(), builder, &cluster).await;
    assert_eq!(margin, Duration::from_millis(150));
    assert!(
        lead >= margin,
        "lost() left {lead:?} of a {margin:?} margin"
    );
    // Not far earlier than asked: the slack is a few milliseconds.
    assert!(
        lead < margin + Duration::from_millis(100),
        "lost() fired {lead:?} early"
    );
}

#[tokio::test]
async fn a_stop_margin_the_ttl_cannot_hold_is_refused() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::builder(&urls)
        .stop_margin(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let err = redlock
        .try_acquire(&unique("margin"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err:?}");
}

#[tokio::test]
async fn max_hold_stops_extension_and_the_lock_runs_out() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("max-hold");
    let ttl = Duration::from_millis(300);
    let mut lock = redlock.try_acquire(&resource, ttl).await.unwrap();
    let start = Instant::now();
    lock.keep_alive(KeepAlive::new().max_hold(Some(Duration::from_millis(600))));
    tokio::time::timeout(Duration::from_secs(3), lock.lost())
        .await
        .expect("lost fired");
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(500),
        "stopped too early: {held:?}"
    );
    eventually(
        Duration::from_secs(1),
        "resource free after max hold",
        || async { redlock.try_acquire(&resource, ttl).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn with_lock_returns_the_work_and_releases_afterwards() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("with-lock");
    let r = resource.clone();
    let urls2 = urls.clone();
    let out = redlock
        .with_lock(&resource, Duration::from_millis(300), |guard| async move {
            // Held, and kept alive past its first TTL.
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(guard.is_held());
            assert_eq!(guard.resource(), r);
            support::value(&urls2[0], &r).await.is_some()
        })
        .await
        .unwrap();
    assert!(out, "the key was not there during the work");
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn with_lock_cancels_the_work_when_the_lock_is_lost() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("with-lock-lost");
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let start = Instant::now();
    let result = redlock
        .with_lock(&resource, Duration::from_millis(400), |_guard| {
            freeze_majority(&cluster);
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                f.store(true, Ordering::SeqCst);
            }
        })
        .await;
    thaw_majority(&cluster);
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Lost { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "did not stop at the loss"
    );
    assert!(
        !finished.load(Ordering::SeqCst),
        "the work ran on without the lock"
    );
}

#[tokio::test]
async fn with_lock_releases_when_the_work_panics() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("with-lock-panic");
    let (r, res) = (redlock.clone(), resource.clone());
    let join = tokio::spawn(async move {
        r.with_lock(&res, Duration::from_secs(30), |_guard| async {
            panic!("work failed")
        })
        .await
    });
    assert!(join.await.unwrap_err().is_panic());
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_guard_tells_the_work_that_the_lock_was_lost() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("guard");
    let lock = redlock
        .try_acquire(&resource, Duration::from_millis(400))
        .await
        .unwrap();
    let guard = lock.guard();
    let deadline = lock.deadline();
    let watcher = tokio::spawn(async move {
        guard.lost().await;
        Instant::now()
    });
    // No keep-alive: the lock runs out, and the guard says so in time.
    let at = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .unwrap()
        .unwrap();
    // Due the stop margin (a tenth of the TTL) before the deadline, and
    // aimed a few milliseconds earlier still.
    let margin = Duration::from_millis(40);
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "LOST {:?} before the deadline, margin {margin:?}",
        deadline.saturating_duration_since(at)
    );
    assert!(
        at + margin <= deadline,
        "fired {:?} before the deadline, inside the {margin:?} margin",
        deadline.saturating_duration_since(at)
    );
    assert!(
        at + margin + Duration::from_millis(50) >= deadline,
        "fired far too early"
    );
    drop(lock);
}
