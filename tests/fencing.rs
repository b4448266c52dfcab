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
