//! Nodes that die, freeze and come back. These tests control `redis-server`
//! processes, so they are skipped (with a message) under `REDLOCK_TEST_NODES`.

mod support;

use std::time::{Duration, Instant};

use quorumlock::{Error, Redlock};
use support::{eventually, no_key_anywhere, unique, value};

#[tokio::test]
async fn one_of_three_killed_still_acquires() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    cluster.kill(2);
    let resource = unique("one-down");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(
            value(&cluster.url(i), &resource).await.as_deref(),
            Some(lock.token())
        );
    }
    lock.release().await.unwrap();
    no_key_anywhere(&cluster.urls()[..2], &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn two_of_three_killed_is_a_typed_error_and_leaves_no_key() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    cluster.kill(1);
    cluster.kill(2);
    let resource = unique("two-down");
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // Two dead nodes decide the attempt, possibly before the survivor's
    // vote is counted.
    let Error::Unavailable {
        votes, quorum: 2, ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert!(votes <= 1);
    assert!(
        err.to_string()
            .contains(&format!("won {votes} of the 2 votes needed")),
        "{err}"
    );
    // The survivor ran our SET; the failed attempt took it back.
    assert_eq!(support::calls(&cluster.url(0), "set").await, 1);
    no_key_anywhere(&[cluster.url(0)], &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_frozen_node_neither_stalls_acquire_nor_keeps_a_key_after_thaw() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("frozen");
    cluster.freeze(2);
    let start = Instant::now();
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "acquire waited for the frozen node"
    );
    lock.release().await.unwrap();
    // The frozen node now holds our SET and then our delete, in that order.
    cluster.thaw(2);
    eventually(
        Duration::from_secs(1),
        "the thawed node ran our SET",
        || async { support::calls(&cluster.url(2), "set").await == 1 },
    )
    .await;
    no_key_anywhere(&cluster.urls(), &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_restarted_node_votes_again_without_rebuilding_the_manager() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    cluster.kill(2);
    redlock
        .try_acquire(&unique("while-down"), Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    cluster.restart(2);
    support::node_votes_again(&redlock, &cluster.url(2), Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_node_down_at_build_time_joins_when_it_starts() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    cluster.kill(2);
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("late-node");
    redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    cluster.restart(2);
    support::node_votes_again(&redlock, &cluster.url(2), Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_refused_attempt_cleans_up_a_set_that_lands_late() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("late-set");
    support::set_foreign(&cluster.url(0), &resource).await;
    support::set_foreign(&cluster.url(1), &resource).await;
    cluster.freeze(2);
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(10))
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
    cluster.thaw(2);
    eventually(Duration::from_secs(1), "the late SET ran", || async {
        support::calls(&cluster.url(2), "set").await == 1
    })
    .await;
    no_key_anywhere(&[cluster.url(2)], &resource, Duration::from_secs(1)).await;
    // The other owner's keys are untouched.
    assert_eq!(
        value(&cluster.url(0), &resource).await.as_deref(),
        Some("someone-else")
    );
}

#[tokio::test]
async fn an_unavailable_attempt_cleans_up_every_node_including_late_ones() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("late-sets");
    cluster.freeze(1);
    cluster.freeze(2);
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                votes: 1,
                quorum: 2,
                ..
            }
        ),
        "{err:?}"
    );
    no_key_anywhere(&[cluster.url(0)], &resource, Duration::from_secs(1)).await;
    cluster.thaw(1);
    cluster.thaw(2);
    for i in 1..3 {
        let url = cluster.url(i);
        eventually(Duration::from_secs(1), "the late SET ran", || async {
            support::calls(&url, "set").await == 1
        })
        .await;
    }
    no_key_anywhere(&cluster.urls(), &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_no_key() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let redlock = Redlock::builder()
        .nodes(cluster.urls())
        .node_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let resource = unique("cancelled");
    cluster.freeze(1);
    cluster.freeze(2);
    // Node 0 says yes at once; the attempt then waits on the frozen two, and
    // the caller gives up first.
    let attempt = redlock.try_acquire(&resource, Duration::from_secs(10));
    assert!(tokio::time::timeout(Duration::from_millis(100), attempt)
        .await
        .is_err());
    assert_eq!(support::calls(&cluster.url(0), "set").await, 1);
    no_key_anywhere(&[cluster.url(0)], &resource, Duration::from_secs(1)).await;
    cluster.thaw(1);
    cluster.thaw(2);
    no_key_anywhere(&cluster.urls(), &resource, Duration::from_secs(1)).await;
    for i in 1..3 {
        assert_eq!(
            support::calls(&cluster.url(i), "set").await,
            1,
            "node {i} never saw the SET"
        );
    }
}

#[tokio::test]
async fn a_read_only_replica_is_no_vote_and_is_reported() {
    let Some(cluster) = support::cluster(2) else {
        return;
    };
    let mut c = support::conn(&cluster.url(1)).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(cluster.port(0))
        .query_async(&mut c)
        .await
        .unwrap();
    let redlock = Redlock::builder()
        .nodes([cluster.url(1)])
        .build()
        .await
        .unwrap();
    let err = redlock
        .try_acquire(&unique("replica"), Duration::from_secs(5))
        .await
        .unwrap_err();
    let Error::Refused {
        votes: 0,
        quorum: 1,
        failures,
        source: Some(source),
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(source.code(), Some("READONLY"), "{source}");
    assert_eq!(failures[0].kind(), quorumlock::FailureKind::ReadOnly);
    // A replica stays a replica: a retry cannot fix it.
    assert!(err.is_invalid() && !err.is_retryable() && !err.is_contended());
}
