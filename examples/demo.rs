//! Run: `cargo run --example demo`
//!
//! Four workers contend for one resource on three Redis nodes. Halfway
//! through, one node is killed, and the lock keeps working on the remaining
//! two (a quorum). Without `QUORUMLOCK_NODES` the demo starts its own three
//! local `redis-server` processes and stops them when it exits; with
//! `QUORUMLOCK_NODES=redis://a,redis://b,redis://c` it uses yours and kills
//! nothing. Tested by `cargo test --example demo`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::{Redlock, RetryPolicy};

/// What the run saw: acquisitions per worker and overlapping holders.
struct Report {
    per_worker: Vec<usize>,
    overlaps: usize,
    after_kill: usize,
}

/// How one run goes: the resource, how many acquisitions, how long each holds.
struct Plan {
    resource: String,
    rounds: usize,
    work: Duration,
    quiet: bool,
}

async fn run(urls: &[String], cluster: Option<&mut support::Cluster>, plan: Plan) -> Report {
    let Plan {
        resource,
        rounds,
        work,
        quiet,
    } = plan;
    let workers = 4;
    let done = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicUsize::new(0));
    let after_kill = Arc::new(AtomicUsize::new(0));
    let windows = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..workers {
        let (urls, resource) = (urls.to_vec(), resource.clone());
        let (done, killed, after_kill, windows) = (
            done.clone(),
            killed.clone(),
            after_kill.clone(),
            windows.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let redlock = Redlock::builder()
                .nodes(urls.iter().map(String::as_str))
                .retry(
                    RetryPolicy::new()
                        .attempts(10_000)
                        .delay(Duration::from_millis(2))
                        .jitter(Duration::from_millis(8)),
                )
                .build()
                .await
                .expect("valid configuration");
            let mut mine = 0;
            while done.load(Ordering::SeqCst) < rounds {
                let lock = match redlock.acquire(&resource, Duration::from_secs(2)).await {
                    Ok(lock) => lock,
                    Err(e) => {
                        println!("worker {id}: could not lock: {e}");
                        continue;
                    }
                };
                let got = Instant::now();
                if done.fetch_add(1, Ordering::SeqCst) >= rounds {
                    break; // the lock is released when dropped
                }
                mine += 1;
                if killed.load(Ordering::SeqCst) == 1 {
                    after_kill.fetch_add(1, Ordering::SeqCst);
                }
                if !quiet {
                    println!(
                        "{:>6.3}s  worker {id} holds {}  token {}…  {} ms left",
                        origin.elapsed().as_secs_f64(),
                        lock.resource(),
                        &lock.token()[..8],
                        lock.remaining().as_millis()
                    );
                }
                tokio::time::sleep(work).await; // the work
                windows
                    .lock()
                    .unwrap()
                    .push((got, Instant::now().min(lock.deadline())));
                lock.release().await.ok();
            }
            mine
        }));
    }
    // Kill one node halfway through, when we own the processes.
    while done.load(Ordering::SeqCst) < rounds / 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    match cluster {
        Some(cluster) => {
            cluster.kill(2);
            println!(
                "--- killed node 3 ({}); two of three nodes remain, still a quorum ---",
                cluster.url(2)
            );
            killed.store(1, Ordering::SeqCst);
        }
        None => println!("--- external nodes: nothing is killed ---"),
    }
    let mut per_worker = Vec::new();
    for t in tasks {
        per_worker.push(t.await.expect("worker panicked"));
    }
    let overlaps = support::witness::overlaps(&mut windows.lock().unwrap());
    Report {
        per_worker,
        overlaps,
        after_kill: after_kill.load(Ordering::SeqCst),
    }
}

#[tokio::main]
async fn main() {
    let (urls, mut cluster) = support::example_nodes();
    println!("nodes: {}", urls.join(", "));
    let plan = Plan {
        resource: "demo:report".into(),
        rounds: 40,
        work: Duration::from_millis(50),
        quiet: false,
    };
    let own_nodes = cluster.is_some();
    let report = run(&urls, cluster.as_mut(), plan).await;
    println!("acquisitions per worker: {:?}", report.per_worker);
    if own_nodes {
        println!(
            "acquisitions after the node was killed: {}",
            report.after_kill
        );
    }
    println!("overlapping holders: {}", report.overlaps);
    assert_eq!(report.overlaps, 0);
    // Dropping the cluster stops the nodes this demo started.
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lock_keeps_working_after_a_node_is_killed() {
        let Some(mut cluster) = super::support::cluster(3) else {
            return;
        };
        let urls = cluster.urls();
        let plan = super::Plan {
            resource: super::support::unique("demo"),
            rounds: 30,
            work: std::time::Duration::from_millis(2),
            quiet: true,
        };
        let report = super::run(&urls, Some(&mut cluster), plan).await;
        assert_eq!(report.per_worker.iter().sum::<usize>(), 30);
        assert_eq!(report.overlaps, 0);
        assert!(report.after_kill > 0, "no acquisition after the kill");
    }
}
