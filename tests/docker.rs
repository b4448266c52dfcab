//! Faults docker inflicts on the docker trio, run by `scripts/docker-test.sh`
//! (elsewhere each test says it was skipped): a node taken off its network
//! (a real partition: its packets are dropped, nobody resets), a paused
//! node, and a node killed and started again at once, which is safe only
//! because it remembers its locks (`appendfsync always` into its AOF).
//! Each runs the witness's 8 clients through the fault: no violation,
//! acquisitions go on, and the node votes again afterwards.

mod support;

use std::time::Duration;

use support::docker::Trio;
use support::witness::{self, Load, Report};

/// Runs the witness on one resource for 6 s: `fault` after 1 s, `heal`
/// after 3 s (both blocking docker calls).
async fn through(trio: &Trio, name: &str, fault: impl FnOnce(), heal: impl FnOnce()) -> Report {
    let resources = [support::unique("docker")];
    let mut load = Load::new(&resources, Duration::from_secs(6));
    load.clients = 8;
    let (report, ()) = tokio::join!(witness::run(&trio.urls, &load), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(fault);
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(heal);
    });
    println!("DOCKER {name}: {report}");
    assert_eq!(report.violations, 0, "{report}");
    assert_eq!(report.hung, 0, "{report}");
    assert!(report.acquisitions > 100, "{report}");
    report
}

async fn votes_again(trio: &Trio, i: usize) {
    let redlock = support::manager(&trio.urls).await;
    support::node_votes_again(&redlock, &trio.urls[i], Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node() {
    let Some(trio) = support::docker::trio() else {
        return;
    };
    let _serial = support::serial().await;
    through(&trio, "partition", || trio.partition(0), || trio.heal(0)).await;
    votes_again(&trio, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node() {
    let Some(trio) = support::docker::trio() else {
        return;
    };
    let _serial = support::serial().await;
    through(&trio, "pause", || trio.pause(1), || trio.unpause(1)).await;
    votes_again(&trio, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_with_its_locks() {
    let Some(trio) = support::docker::trio() else {
        return;
    };
    let _serial = support::serial().await;
    // A lock held across the crash: the restarted node still has its key,
    // so a second client cannot win that node's vote.
    let redlock = support::manager(&trio.urls).await;
    let resource = support::unique("aof");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        trio.kill(2);
        trio.start(2);
    });
    assert_eq!(
        support::value(&trio.urls[2], &resource).await.as_deref(),
        Some(lock.token()),
        "the restarted node forgot the lock"
    );
    let other = support::manager(&trio.urls).await;
    let refused = other
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(refused.is_contended(), "{refused}");
    lock.release().await.unwrap();

    // Killed and started again at once under load, sooner than the TTL
    // (1 s): safe only because the node remembers.
    let restart = || {
        trio.kill(2);
        trio.start(2);
    };
    through(&trio, "kill and restart at once", restart, || {}).await;
    votes_again(&trio, 2).await;
}
