//! Fencing tokens: strictly increasing across holders of a resource, also
//! while nodes misbehave, and good enough for a resource to refuse a stale
//! holder's late write.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::Redlock;
use support::unique;

async fn fenced(urls: &[String]) -> Redlock {
    support::builder(urls)
        .fencing(true)
        // Spawned test nodes keep no AOF: tests/fencing.rs checks durability.
        .require_durable_fences(false)
        .retry(support::patient())
        .build()
        .await
        .unwrap()
}

/// `clients` tasks × `rounds` acquisitions; returns (acquired at, fence)
/// in the order of acquisition, with `during` running alongside.
async fn holders<F>(
    urls: &[String],
    resource: &str,
    clients: usize,
    rounds: usize,
    during: F,
) -> Vec<(Instant, u64)>
where
    F: std::future::Future<Output = ()>,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (urls, resource, seen) = (urls.to_vec(), resource.to_string(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let redlock = fenced(&urls).await;
            for _ in 0..rounds {
                let lock = redlock
                    .acquire(&resource, Duration::from_secs(1))
                    .await
                    .unwrap();
                let fence = lock.fence().expect("a fenced manager hands out fences");
                seen.lock().unwrap().push((Instant::now(), fence));
                tokio::task::yield_now().await;
                // With a node frozen, a release may not confirm a quorum
                // (Unavailable); the keys then expire. Not what is tested here.
                let _ = lock.release().await;
            }
        }));
    }
    during.await;
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.sort();
    seen
}

fn assert_strictly_increasing(seen: &[(Instant, u64)]) {
    for pair in seen.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "fence went from {} to {}",
            pair[0].1,
            pair[1].1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_strictly_across_8_clients_x_100_acquisitions() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let resource = unique("fenced");
    let seen = holders(&urls, &resource, 8, 100, async {}).await;
    assert_eq!(seen.len(), 800);
    assert_strictly_increasing(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_with_one_node_frozen() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let resource = unique("fenced-frozen");
    let seen = holders(&cluster.urls(), &resource, 8, 25, async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cluster.freeze(2);
    })
    .await;
    cluster.thaw(2);
    assert_eq!(seen.len(), 200);
    assert_strictly_increasing(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_across_a_delayed_restart() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let resource = unique("fenced-restart");
    let first = holders(&urls, &resource, 4, 25, async {}).await;
    // The delayed-restart rule: node 2 comes back empty, after the TTL.
    cluster.kill(2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.restart(2);
    let second = holders(&urls, &resource, 4, 25, async {}).await;
    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(all.len(), 200);
    assert_strictly_increasing(&all);
}

/// A resource that refuses writes carrying a lower fence than it has seen.
#[derive(Default)]
struct Storage {
    highest: u64,
    value: Option<&'static str>,
}

impl Storage {
    fn write(&mut self, fence: u64, value: &'static str) -> bool {
        if fence < self.highest {
            return false;
        }
        self.highest = fence;
        self.value = Some(value);
        true
    }
}

#[tokio::test]
async fn a_paused_holders_late_write_is_refused_by_the_storage() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = fenced(&urls).await;
    let resource = unique("storage");
    let mut storage = Storage::default();

    let paused = redlock
        .try_acquire(&resource, Duration::from_millis(200))
        .await
        .unwrap();
    let paused_fence = paused.fence().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // GC pause: the lock expires
    let next = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    let next_fence = next.fence().unwrap();
    assert!(next_fence > paused_fence);

    assert!(
        storage.write(next_fence, "next"),
        "the current holder's write must succeed"
    );
    assert!(
        !storage.write(paused_fence, "paused"),
        "the stale holder's late write must be refused"
    );
    assert_eq!(storage.value, Some("next"));
    assert!(!paused.is_held());
    next.release().await.unwrap();
}

#[tokio::test]
async fn without_fencing_there_is_no_fence() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let lock = redlock
        .try_acquire(&unique("plain"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(lock.fence(), None);
    lock.release().await.unwrap();
}

/// A fenced manager over `urls` that waits out restarts.
async fn durable_fenced(urls: &[String]) -> Result<Redlock, quorumlock::Error> {
    support::builder(urls)
        .fencing(true)
        .retry(support::patient())
        .build()
        .await
}

const FENCE_TTL: Duration = Duration::from_millis(500);

/// Takes `n` fences of `resource`, one holder after another; the last.
async fn take(redlock: &Redlock, resource: &str, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let lock = redlock.acquire(resource, FENCE_TTL).await.unwrap();
        last = lock.fence().unwrap();
        lock.release().await.unwrap();
    }
    last
}

/// The restarts of the fence issue: node 2 is down while fences 1..5 are
/// handed out by nodes 0 and 1; node 2 comes back, then node 1 is
/// restarted, each after the TTL (the delayed-restart rule); then, with
/// node 0 frozen, the next fence can only come from nodes 1 and 2. Returns
/// the fences before the restarts and the next one (or its error).
async fn restarts(
    cluster: &mut support::Cluster,
    redlock: &Redlock,
    resource: &str,
    node_1_comes_back_with: &[String],
) -> (u64, Result<u64, quorumlock::Error>) {
    cluster.kill(2);
    let before = take(redlock, resource, 5).await;
    tokio::time::sleep(FENCE_TTL + Duration::from_millis(100)).await;
    cluster.restart(2);
    cluster.kill(1);
    tokio::time::sleep(FENCE_TTL + Duration::from_millis(100)).await;
    cluster.restart_with(1, node_1_comes_back_with);
    cluster.freeze(0);
    let next = match redlock.acquire(resource, FENCE_TTL).await {
        Ok(lock) => Ok(lock.fence().unwrap()),
        Err(e) => Err(e),
    };
    cluster.thaw(0);
    (before, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_refuses_nodes_that_may_lose_writes() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let err = durable_fenced(&urls).await.unwrap_err();
    assert!(
        matches!(err, quorumlock::Error::NotDurable { .. }),
        "{err:?}"
    );
    assert!(err.is_invalid(), "{err:?}");
    // What the check prevents: with it turned off, the restarts above make
    // the next fence repeat an earlier one.
    let unchecked = support::builder(&urls)
        .fencing(true)
        .require_durable_fences(false)
        .retry(support::patient())
        .build()
        .await
        .unwrap();
    let (before, next) = restarts(&mut cluster, &unchecked, &unique("volatile"), &[]).await;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "FENCES without persistence: {before} before the restarts, {next:?} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_never_go_backwards_across_restarts_of_durable_nodes() {
    let Some(mut cluster) = support::cluster_with(3, support::DURABLE) else {
        return;
    };
    let redlock = durable_fenced(&cluster.urls()).await.unwrap();
    let durable: Vec<String> = support::DURABLE.iter().map(|a| a.to_string()).collect();
    let (before, next) = restarts(&mut cluster, &redlock, &unique("durable"), &durable).await;
    let next = next.unwrap();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "FENCES with persistence: {before} before the restarts, {next} after"
    );
    assert_eq!(before, 5);
    assert!(next > before, "fence went from {before} to {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_persistence_gets_no_fenced_vote() {
    let Some(mut cluster) = support::cluster_with(3, support::DURABLE) else {
        return;
    };
    let redlock = support::builder(&cluster.urls())
        .fencing(true)
        .retry(quorumlock::RetryPolicy::new().max_wait(Some(Duration::from_secs(2))))
        .build()
        .await
        .unwrap();
    let resource = unique("reconfigured");
    // Node 1 comes back with persistence turned off (and empty).
    let (before, next) = restarts(&mut cluster, &redlock, &resource, &[]).await;
    let err = next.expect_err("a fence from a node that forgot its counters");
    assert!(
        err.failures()
            .iter()
            .any(|f| f.node() == 1 && f.kind() == quorumlock::FailureKind::NotDurable),
        "{err:?}"
    );
    // Node 0 back: nodes 0 and 2 carry on from where the fences were
    // (once node 0 has applied, and the clean-up removed, the SET of the
    // refused attempt it got while frozen).
    let after = std::sync::Mutex::new(None);
    support::eventually(
        Duration::from_secs(10),
        "a fence from nodes 0 and 2",
        || async {
            let Ok(lock) = redlock.try_acquire(&resource, FENCE_TTL).await else {
                return false;
            };
            *after.lock().unwrap() = lock.fence();
            true
        },
    )
    .await;
    let after = after.into_inner().unwrap().unwrap();
    assert!(after > before, "fence went from {before} to {after}");
}
