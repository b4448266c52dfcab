//! Run: `cargo run --example queue_consumer` (starts its own three local
//! Redis nodes; set `QUORUMLOCK_NODES=redis://a,redis://b,redis://c` to use
//! yours; the queue lives on the first node).
//!
//! Producers `LPUSH` messages; consumers take them one at a time while
//! holding the queue's lock. Taking is reliable: `BLMOVE` moves a message to
//! a processing list before the work, and `LREM` removes it after. Because
//! only the lock holder moves messages, whatever a new holder finds in the
//! processing list was left by a consumer that died mid-work, and it is done
//! again: at-least-once delivery, nothing lost. One consumer here crashes on
//! purpose. Tested by `cargo test --example queue_consumer`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumlock::{Redlock, RetryPolicy};
use redis::aio::MultiplexedConnection;

/// The Redis keys of one queue.
#[derive(Clone)]
struct Queue {
    jobs: String,
    processing: String,
    done: String,
    lock: String,
}

impl Queue {
    fn new(name: &str) -> Self {
        Self {
            jobs: format!("{name}:jobs"),
            processing: format!("{name}:processing"),
            done: format!("{name}:done"),
            lock: format!("{name}:lock"),
        }
    }
}

/// What the run saw.
struct Report {
    produced: HashSet<String>,
    done: HashSet<String>,
    redelivered: usize,
    left_in_queue: usize,
    left_in_processing: usize,
}

async fn produce(
    mut data: MultiplexedConnection,
    q: Queue,
    producer: usize,
    count: usize,
) -> Vec<String> {
    let mut sent = Vec::with_capacity(count);
    for n in 0..count {
        let msg = format!("p{producer}-m{n}");
        let _: i64 = redis::cmd("LPUSH")
            .arg(&q.jobs)
            .arg(&msg)
            .query_async(&mut data)
            .await
            .unwrap();
        sent.push(msg);
        tokio::task::yield_now().await;
    }
    sent
}

/// State shared by the consumers of one run.
#[derive(Default)]
struct Shared {
    producing: AtomicBool,
    redelivered: AtomicUsize,
    /// Messages taken from the queue so far; the sixth one is never finished.
    taken: AtomicUsize,
    quiet: bool,
}

/// Consumes until producers are done and both lists are empty. The consumer
/// that takes the sixth message of the run dies with it unfinished,
/// dropping its lock.
async fn consume(
    redlock: Redlock,
    mut data: MultiplexedConnection,
    q: Queue,
    id: usize,
    shared: Arc<Shared>,
) {
    let quiet = shared.quiet;
    loop {
        let lock = redlock
            .acquire(&q.lock, Duration::from_secs(5))
            .await
            .expect("lock");
        // Left over by a consumer that died holding the lock?
        let orphan: Option<String> = redis::cmd("LINDEX")
            .arg(&q.processing)
            .arg(-1)
            .query_async(&mut data)
            .await
            .unwrap();
        let msg = match orphan {
            Some(msg) => {
                shared.redelivered.fetch_add(1, Ordering::SeqCst);
                if !quiet {
                    println!("consumer {id}: recovering {msg} from a crashed consumer");
                }
                msg
            }
            None => {
                let taken: Option<String> = redis::cmd("BLMOVE")
                    .arg(&q.jobs)
                    .arg(&q.processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(0.05)
                    .query_async(&mut data)
                    .await
                    .unwrap();
                match taken {
                    Some(msg) => msg,
                    None if shared.producing.load(Ordering::SeqCst) => continue, // lock dropped: released
                    None => return,
                }
            }
        };
        if shared.taken.fetch_add(1, Ordering::SeqCst) == 5 {
            if !quiet {
                println!("consumer {id}: crashing while holding {msg}");
            }
            return; // the lock is dropped (and released); the message stays in `processing`
        }
        // The work: recorded idempotently, so a redelivery does no harm.
        let _: i64 = redis::cmd("SADD")
            .arg(&q.done)
            .arg(&msg)
            .query_async(&mut data)
            .await
            .unwrap();
        let _: i64 = redis::cmd("LREM")
            .arg(&q.processing)
            .arg(1)
            .arg(&msg)
            .query_async(&mut data)
            .await
            .unwrap();
        if !quiet && lock.remaining() > Duration::ZERO {
            println!("consumer {id}: done {msg}");
        }
        lock.release().await.ok();
    }
}

async fn run(
    urls: &[String],
    name: &str,
    producers: usize,
    per_producer: usize,
    consumers: usize,
    quiet: bool,
) -> Report {
    let q = Queue::new(name);
    let shared = Arc::new(Shared {
        producing: AtomicBool::new(true),
        quiet,
        ..Shared::default()
    });
    let mut consumer_tasks = Vec::new();
    for id in 0..consumers {
        let redlock = Redlock::builder()
            .nodes(urls.iter().map(String::as_str))
            .retry(
                RetryPolicy::new()
                    .attempts(100_000)
                    .delay(Duration::from_millis(1))
                    .jitter(Duration::from_millis(4)),
            )
            .build()
            .await
            .expect("valid configuration");
        let data = support::conn(&urls[0]).await;
        consumer_tasks.push(tokio::spawn(consume(
            redlock,
            data,
            q.clone(),
            id,
            shared.clone(),
        )));
    }
    let mut producer_tasks = Vec::new();
    for p in 0..producers {
        producer_tasks.push(tokio::spawn(produce(
            support::conn(&urls[0]).await,
            q.clone(),
            p,
            per_producer,
        )));
    }
    let mut produced = HashSet::new();
    for t in producer_tasks {
        produced.extend(t.await.unwrap());
    }
    shared.producing.store(false, Ordering::SeqCst);
    for t in consumer_tasks {
        t.await.unwrap();
    }
    let mut data = support::conn(&urls[0]).await;
    let done: HashSet<String> = redis::cmd("SMEMBERS")
        .arg(&q.done)
        .query_async(&mut data)
        .await
        .unwrap();
    let left_in_queue: usize = redis::cmd("LLEN")
        .arg(&q.jobs)
        .query_async(&mut data)
        .await
        .unwrap();
    let left_in_processing: usize = redis::cmd("LLEN")
        .arg(&q.processing)
        .query_async(&mut data)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&q.jobs)
        .arg(&q.processing)
        .arg(&q.done)
        .query_async(&mut data)
        .await
        .unwrap();
    Report {
        produced,
        done,
        redelivered: shared.redelivered.load(Ordering::SeqCst),
        left_in_queue,
        left_in_processing,
    }
}

#[tokio::main]
async fn main() {
    let (urls, _cluster) = support::example_nodes();
    let report = run(&urls, "queue_consumer", 3, 10, 3, false).await;
    println!(
        "produced {}, done {}, redelivered {}, left in queue {}, left in processing {}",
        report.produced.len(),
        report.done.len(),
        report.redelivered,
        report.left_in_queue,
        report.left_in_processing
    );
    assert_eq!(report.produced, report.done, "a message was lost");
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_consumer_loses_no_message() {
        let Some((urls, _cluster)) = super::support::nodes(3) else {
            return;
        };
        let name = super::support::unique("queue");
        let report = super::run(&urls, &name, 3, 20, 3, true).await;
        assert_eq!(report.produced.len(), 60);
        assert_eq!(
            report.done, report.produced,
            "every message done exactly as produced"
        );
        assert_eq!(
            report.redelivered, 1,
            "the crashed consumer's message was redelivered once"
        );
        assert_eq!((report.left_in_queue, report.left_in_processing), (0, 0));
    }
}
