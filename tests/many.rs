//! Locks on several resources at once: all or nothing, on every node.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::{Error, Redlock};
use support::{no_key_anywhere, unique, value};

async fn manager(urls: &[String]) -> Redlock {
    support::builder(urls)
        .retry(support::patient())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn acquire_many_holds_every_key_and_release_frees_them() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| unique(n)).collect();
    let set: Vec<&str> = names.iter().map(String::as_str).collect();
    let lock = redlock
        .try_acquire_many(&set, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lock.resources().collect::<Vec<_>>(), set);
    for name in &names {
        support::every_node_holds(&urls, name, lock.token()).await;
    }
    // Each member is held on its own too.
    assert!(redlock
        .try_acquire(&names[1], Duration::from_secs(1))
        .await
        .unwrap_err()
        .is_contended());
    lock.release().await.unwrap();
    for name in &names {
        no_key_anywhere(&urls, name, Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_partly_held_set_is_refused_whole_and_leaves_nothing_behind() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| unique(n)).collect();
    let set: Vec<&str> = names.iter().map(String::as_str).collect();
    let b = redlock
        .try_acquire(&names[1], Duration::from_secs(10))
        .await
        .unwrap();
    let err = redlock
        .try_acquire_many(&set, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Contended {
                votes: 0,
                quorum: 2
            }
        ),
        "{err:?}"
    );
    for free in [&names[0], &names[2]] {
        for url in &urls {
            assert_eq!(
                value(url, free).await,
                None,
                "a part of a refused set was taken"
            );
        }
    }
    b.release().await.unwrap();
    redlock
        .try_acquire_many(&set, Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sets_in_opposite_orders_neither_deadlock_nor_overlap() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let names: Vec<String> = ["x", "y", "z"].iter().map(|n| unique(n)).collect();
    let windows = Arc::new(Mutex::new(Vec::new()));
    let orders: Vec<Vec<String>> = vec![
        names.clone(),
        names.iter().rev().cloned().collect(),
        vec![names[1].clone()],
    ];
    let mut tasks = Vec::new();
    for order in orders {
        let (urls, windows) = (urls.clone(), windows.clone());
        tasks.push(tokio::spawn(async move {
            let redlock = manager(&urls).await;
            let set: Vec<&str> = order.iter().map(String::as_str).collect();
            for _ in 0..30 {
                let lock = redlock
                    .acquire_many(&set, Duration::from_secs(2))
                    .await
                    .unwrap();
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                windows
                    .lock()
                    .unwrap()
                    .push((from, Instant::now().min(lock.deadline())));
                lock.release().await.unwrap();
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the sets deadlocked");
    // Every set shares y, so no two windows may overlap.
    let mut w = windows.lock().unwrap().clone();
    assert_eq!(w.len(), 90);
    assert_eq!(
        support::witness::overlaps(&mut w),
        0,
        "two holders of overlapping sets at once"
    );
}

#[tokio::test]
async fn extend_and_fence_cover_the_whole_set() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::fenced_builder(&urls).build().await.unwrap();
    let names: Vec<String> = ["p", "q"].iter().map(|n| unique(n)).collect();
    let set: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut lock = redlock
        .try_acquire_many(&set, Duration::from_millis(300))
        .await
        .unwrap();
    let set_fence = lock.fence().unwrap();
    lock.extend(Duration::from_secs(10)).await.unwrap();
    for name in &names {
        let mut c = support::conn(&urls[0]).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(pttl > 1_000, "{name} was not extended: {pttl} ms left");
    }
    lock.release().await.unwrap();
    // A later holder of either member sees a larger fence.
    for name in &names {
        let single = redlock
            .try_acquire(name, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(single.fence().unwrap() > set_fence);
        single.release().await.unwrap();
    }
}

#[tokio::test]
async fn bad_sets_are_typed_errors() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let redlock = manager(&urls).await;
    for set in [&[][..], &["a", "a"][..], &["a", ""][..]] {
        let err = redlock
            .try_acquire_many(set, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{set:?}: {err:?}");
    }
}
