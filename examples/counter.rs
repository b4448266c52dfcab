//! Run: `cargo run --example counter` (starts its own three local Redis
//! nodes; set `QUORUMLOCK_NODES=redis://a,redis://b,redis://c` to use yours).
//!
//! Many clients add to one counter kept on the first node, twice: with the
//! atomic `INCRBY`, and with a read-modify-write (`GET`, add, `SET`) that is
//! only correct because each client holds the lock around it. Both end at the
//! exact total. Tested by `cargo test --example counter`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use quorumlock::{Redlock, RetryPolicy};

/// Final values of the two counters and the total they should reach.
struct Totals {
    incrby: i64,
    locked: i64,
    expected: i64,
}

async fn run(urls: &[String], clients: usize, adds: usize) -> Totals {
    let run_id = support::unique("counter");
    let (atomic_key, locked_key) = (format!("{run_id}:incrby"), format!("{run_id}:locked"));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let urls = urls.to_vec();
        let (atomic_key, locked_key, resource) = (
            atomic_key.clone(),
            locked_key.clone(),
            format!("{run_id}:lock"),
        );
        tasks.push(tokio::spawn(async move {
            let redlock = Redlock::builder()
                .nodes(urls.iter().map(String::as_str))
                .retry(
                    RetryPolicy::new()
                        .attempts(1000)
                        .delay(Duration::from_millis(1))
                        .jitter(Duration::from_millis(3)),
                )
                .build()
                .await
                .expect("valid configuration");
            let mut data = support::conn(&urls[0]).await;
            let step = client as i64 + 1;
            for _ in 0..adds {
                let _: i64 = redis::cmd("INCRBY")
                    .arg(&atomic_key)
                    .arg(step)
                    .query_async(&mut data)
                    .await
                    .unwrap();

                let lock = redlock
                    .acquire(&resource, Duration::from_secs(5))
                    .await
                    .unwrap();
                let current: Option<i64> = redis::cmd("GET")
                    .arg(&locked_key)
                    .query_async(&mut data)
                    .await
                    .unwrap();
                tokio::task::yield_now().await; // let others try to interleave
                let _: () = redis::cmd("SET")
                    .arg(&locked_key)
                    .arg(current.unwrap_or(0) + step)
                    .query_async(&mut data)
                    .await
                    .unwrap();
                lock.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut data = support::conn(&urls[0]).await;
    let incrby: i64 = redis::cmd("GET")
        .arg(&atomic_key)
        .query_async(&mut data)
        .await
        .unwrap();
    let locked: i64 = redis::cmd("GET")
        .arg(&locked_key)
        .query_async(&mut data)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&atomic_key)
        .arg(&locked_key)
        .query_async(&mut data)
        .await
        .unwrap();
    let expected = (1..=clients as i64).sum::<i64>() * adds as i64;
    Totals {
        incrby,
        locked,
        expected,
    }
}

#[tokio::main]
async fn main() {
    let (urls, _cluster) = support::example_nodes();
    let (clients, adds) = (8, 50);
    println!(
        "{clients} clients each add their number {adds} times on {}",
        urls.join(", ")
    );
    let t = run(&urls, clients, adds).await;
    println!("INCRBY counter:           {}", t.incrby);
    println!("locked read-modify-write: {}", t.locked);
    println!("expected:                 {}", t.expected);
    assert!(
        t.incrby == t.expected && t.locked == t.expected,
        "a counter is off"
    );
    println!("both exact");
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_counters_end_at_the_exact_total() {
        let Some((urls, _cluster)) = super::support::nodes(3) else {
            return;
        };
        let t = super::run(&urls, 6, 20).await;
        assert_eq!(t.expected, 21 * 20);
        assert_eq!(t.incrby, t.expected);
        assert_eq!(t.locked, t.expected);
    }
}
