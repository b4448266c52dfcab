//! Behaviour of one healthy cluster: exclusion, expiry, extend, release,
//! cluster sizes, cancellation and bad input. Runs against spawned nodes, or
//! against `REDLOCK_TEST_NODES` when it is set.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::{Error, FailureKind, Redlock, RetryPolicy};
use support::{eventually, no_key_anywhere, unique, value};

/// Witness: `[acquired, min(release, deadline)]` windows of one resource.
#[derive(Default)]
struct Witness {
    windows: Mutex<Vec<(Instant, Instant)>>,
    inside: AtomicUsize,
}

impl Witness {
    fn overlaps(&self) -> usize {
        support::witness::overlaps(&mut self.windows.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_16_tasks_x_50_acquisitions() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let resource = unique("exclusion");
    let witness = Arc::new(Witness::default());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (urls, resource, witness) = (urls.clone(), resource.clone(), witness.clone());
        tasks.push(tokio::spawn(async move {
            let redlock = Redlock::builder()
                .nodes(urls.iter().map(String::as_str))
                .retry(
                    RetryPolicy::new()
                        .attempts(u32::MAX)
                        .delay(Duration::from_millis(1))
                        .jitter(Duration::from_millis(5))
                        .max_wait(Some(Duration::from_secs(60))),
                )
                .build()
                .await
                .unwrap();
            for _ in 0..50 {
                let lock = redlock
                    .acquire(&resource, Duration::from_secs(2))
                    .await
                    .unwrap();
                let acquired = Instant::now();
                assert_eq!(
                    witness.inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::task::yield_now().await;
                witness.inside.fetch_sub(1, Ordering::SeqCst);
                let end = Instant::now().min(lock.deadline());
                witness.windows.lock().unwrap().push((acquired, end));
                lock.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(witness.windows.lock().unwrap().len(), 800);
    assert_eq!(witness.overlaps(), 0, "holders' windows overlapped");
}

#[tokio::test]
async fn contended_resource_reports_votes_and_quorum() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("contended");
    let held = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_contended(), "{err:?}");
    assert_eq!(err.votes(), Some((0, 2)));
    assert!(matches!(
        err,
        Error::Contended {
            votes: 0,
            quorum: 2
        }
    ));
    // The failed attempt removed nothing of the holder's.
    for url in &urls {
        assert_eq!(value(url, held.key()).await.as_deref(), Some(held.token()));
    }
    held.release().await.unwrap();
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_token_is_stored_under_the_documented_key() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = Redlock::builder()
        .nodes(urls.iter().map(String::as_str))
        .key_prefix("redlock:")
        .build()
        .await
        .unwrap();
    let resource = unique("prefixed");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(lock.key(), format!("redlock:{resource}"));
    assert_eq!(lock.resource(), resource);
    assert_eq!(lock.token().len(), 32);
    support::every_node_holds(&urls, &format!("redlock:{resource}"), lock.token()).await;
    for url in &urls {
        assert_eq!(value(url, &resource).await, None);
    }
    lock.release().await.unwrap();
}

#[tokio::test]
async fn an_unreleased_lock_becomes_free_after_its_ttl() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("expires");
    let ttl = Duration::from_millis(300);
    let lock = redlock.try_acquire(&resource, ttl).await.unwrap();
    assert!(lock.remaining() <= ttl && lock.remaining() > Duration::ZERO);
    std::mem::forget(lock); // a crashed holder: no release at all
    assert!(redlock
        .try_acquire(&resource, ttl)
        .await
        .unwrap_err()
        .is_contended());
    let start = Instant::now();
    eventually(Duration::from_secs(2), "lock free after TTL", || async {
        redlock
            .try_acquire(&resource, Duration::from_secs(5))
            .await
            .is_ok()
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn extend_keeps_the_lock_held_past_its_first_ttl() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("extend");
    let ttl = Duration::from_millis(400);
    let mut lock = redlock.try_acquire(&resource, ttl).await.unwrap();
    let first_deadline = lock.deadline();
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        lock.extend(ttl).await.unwrap();
        let other = redlock.try_acquire(&resource, ttl).await;
        assert!(
            other.unwrap_err().is_contended(),
            "someone else got an extended lock"
        );
    }
    assert!(lock.deadline() > first_deadline + ttl);
    assert!(lock.is_held());
    lock.release().await.unwrap();
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn extend_after_expiry_is_lost_and_does_not_reacquire() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("extend-expired");
    let mut lock = redlock
        .try_acquire(&resource, Duration::from_millis(200))
        .await
        .unwrap();
    let key = lock.key().to_string();
    no_key_anywhere(&urls, &key, Duration::from_secs(2)).await;
    let err = lock.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    assert!(!lock.is_held());
    for url in &urls {
        assert_eq!(value(url, &key).await, None, "extend re-created the key");
    }
    // Still lost on a second try, and release says so without panicking.
    assert!(lock
        .extend(Duration::from_secs(10))
        .await
        .unwrap_err()
        .is_lost());
    assert!(lock.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn extend_after_a_takeover_is_lost_and_leaves_the_new_owner_alone() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("takeover");
    let mut stale = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    // The lock expires under its holder (simulated by deleting it), and
    // someone else takes the resource.
    for url in &urls {
        let mut c = support::conn(url).await;
        let _: i64 = redis::cmd("DEL")
            .arg(stale.key())
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let current = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    let err = stale.extend(Duration::from_secs(10)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Lost {
                votes: 0,
                quorum: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(stale.release().await.unwrap_err().is_lost());
    for url in &urls {
        assert_eq!(
            value(url, current.key()).await.as_deref(),
            Some(current.token())
        );
    }
    current.release().await.unwrap();
}

#[tokio::test]
async fn a_stale_holders_release_never_deletes_the_current_holders_key() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("stale-release");
    let stale = redlock
        .try_acquire(&resource, Duration::from_millis(150))
        .await
        .unwrap();
    let key = stale.key().to_string();
    no_key_anywhere(&urls, &key, Duration::from_secs(2)).await;
    let current = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    let err = stale.release().await.unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    for url in &urls {
        assert_eq!(value(url, &key).await.as_deref(), Some(current.token()));
    }
    current.release().await.unwrap();
    no_key_anywhere(&urls, &key, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn one_node_is_the_single_instance_lock() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    assert_eq!((redlock.node_count(), redlock.quorum()), (1, 1));
    let resource = unique("single");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        value(&urls[0], &resource).await.as_deref(),
        Some(lock.token())
    );
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Contended {
            votes: 0,
            quorum: 1
        }
    ));
    lock.release().await.unwrap();
    assert_eq!(value(&urls[0], &resource).await, None);
}

#[tokio::test]
async fn five_nodes_need_three_votes() {
    let Some((urls, _cluster)) = support::nodes(5) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    assert_eq!(redlock.quorum(), 3);
    let resource = unique("five");
    // Someone else holds the key on two nodes: three remain, still a quorum.
    for url in &urls[..2] {
        support::set_foreign(url, &resource).await;
    }
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    // On a third node, it is no longer possible.
    let lock_key = lock.key().to_string();
    lock.release().await.unwrap();
    support::set_foreign(&urls[2], &lock_key).await;
    let err = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    // Three refusals decide the attempt before the last two nodes answer.
    assert!(
        matches!(
            err,
            Error::Contended {
                votes: 0..=2,
                quorum: 3
            }
        ),
        "{err:?}"
    );
    // The failed attempt cleaned up its own votes and left the others' keys.
    no_key_anywhere(&urls[3..], &resource, Duration::from_secs(1)).await;
    assert_eq!(
        value(&urls[0], &resource).await.as_deref(),
        Some("someone-else")
    );
}

#[tokio::test]
async fn a_dropped_lock_is_released_within_a_second() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("dropped");
    {
        let _lock = redlock
            .try_acquire(&resource, Duration::from_secs(30))
            .await
            .unwrap();
    }
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
    redlock
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_panicking_holder_releases_its_lock() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("panic");
    let (r, res) = (redlock.clone(), resource.clone());
    let join = tokio::spawn(async move {
        let _lock = r.try_acquire(&res, Duration::from_secs(30)).await.unwrap();
        panic!("holder crashed");
    });
    assert!(join.await.unwrap_err().is_panic());
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_input_gives_typed_errors() {
    let err = Redlock::builder()
        .nodes(Vec::<String>::new())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let err = Redlock::builder().build().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let err = Redlock::builder()
        .nodes(["redis://127.0.0.1:1", "not a url"])
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidNode { index: 1, .. }),
        "{err:?}"
    );
    assert!(err.is_invalid() && !err.is_retryable());
    let err = Redlock::builder()
        .nodes(["redis://127.0.0.1:1"])
        .node_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let err = Redlock::builder()
        .nodes(["redis://127.0.0.1:1"])
        .drift(1.5, Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    // Nothing listens on port 1: the build still succeeds (the node counts
    // as unknown), and bad arguments are caught before any I/O.
    let redlock = Redlock::builder()
        .nodes(["redis://127.0.0.1:1"])
        .build()
        .await
        .unwrap();
    for (resource, ttl) in [
        ("", Duration::from_secs(1)),
        ("r", Duration::ZERO),
        ("r", Duration::from_millis(40)), // below 50 ms node timeout + 2 ms drift
        ("r", Duration::MAX),
    ] {
        let err = redlock.acquire(resource, ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput(_)),
            "{resource:?} {ttl:?}: {err:?}"
        );
    }
    let err = redlock
        .try_acquire("r", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.votes(), Some((0, 1)));
}

#[tokio::test]
async fn an_error_reply_counts_as_no_vote_and_is_reported() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let mut c = support::conn(&urls[0]).await;
    let redlock = support::manager(&urls).await;
    let resource = unique("wrongtype");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    // The key is replaced by a list: compare-and-delete hits WRONGTYPE.
    let _: () = redis::cmd("DEL")
        .arg(&resource)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("LPUSH")
        .arg(&resource)
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    // The compare-and-delete could not run there: that is not "lost",
    // it is a refusal with its cause, and no retry will fix it.
    let err = lock.release().await.unwrap_err();
    assert!(err.is_refused() && !err.is_retryable(), "{err:?}");
    assert_eq!(err.failures()[0].kind(), FailureKind::WrongType, "{err:?}");
    // A single-key SET NX on a list must not look like a held lock.
    support::refused_at_once(&redlock, &resource, FailureKind::WrongType).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&resource)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lock_dropped_outside_the_runtime_is_still_released() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("dropped-elsewhere");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    std::thread::spawn(move || drop(lock)).join().unwrap();
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_release_whose_caller_gives_up_still_completes() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("release-cancelled");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    // Polled once, then dropped: the release has started but not finished.
    assert!(futures::FutureExt::now_or_never(lock.release()).is_none());
    no_key_anywhere(&urls, &resource, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_waiter_is_woken_by_the_release_not_by_its_retry_delay() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let holder = support::manager(&urls).await;
    let waiter = Redlock::builder()
        .nodes(urls.iter().map(String::as_str))
        .retry(
            RetryPolicy::new()
                .attempts(5)
                .delay(Duration::from_secs(10))
                .jitter(Duration::ZERO),
        )
        .build()
        .await
        .unwrap();
    let resource = unique("wakeup");
    let lock = holder
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    let (w, r) = (waiter.clone(), resource.clone());
    let waiting = tokio::spawn(async move {
        let start = Instant::now();
        let lock = w.acquire(&r, Duration::from_secs(30)).await.unwrap();
        (start.elapsed(), lock)
    });
    // Let the waiter fail once and subscribe before the release.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release().await.unwrap();
    let (waited, lock) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the waiter slept its 10 s retry delay ({waited:?}) instead of being woken"
    );
    lock.release().await.unwrap();
}

/// A dropped lock is released in the background; `settle` returns once
/// that is done, so a process can exit with nothing of its left behind.
#[tokio::test]
async fn settle_waits_for_background_releases() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("settle");
    let lock = redlock
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    drop(lock);
    assert!(redlock.settle(Duration::from_secs(2)).await);
    for url in &urls {
        assert_eq!(support::value(url, &resource).await, None, "{url}");
    }
    // Nothing running: at once.
    assert!(redlock.settle(Duration::ZERO).await);
}

/// `max_wait` is waited through, however long the retry delay: a holder
/// that crashed (its keys left to expire) is succeeded at the limit's last
/// attempt, and a live holder makes the waiter give up near the limit, not
/// as soon as the next delay would pass it.
#[tokio::test]
async fn max_wait_is_waited_through_whatever_the_retry_delay() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let waiter = support::builder(&urls)
        .retry(
            RetryPolicy::new()
                .attempts(u32::MAX)
                .delay(Duration::from_secs(10))
                .jitter(Duration::ZERO)
                .max_wait(Some(Duration::from_millis(600))),
        )
        .build()
        .await
        .unwrap();

    // A crashed holder: its keys expire 300 ms from now, nobody releases.
    let resource = unique("crashed");
    for url in &urls {
        let mut c = support::conn(url).await;
        let _: () = redis::cmd("SET")
            .arg(&resource)
            .arg("crashed-holder")
            .arg("PX")
            .arg(300)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let start = Instant::now();
    let lock = tokio::time::timeout(
        Duration::from_secs(5),
        waiter.acquire(&resource, Duration::from_secs(10)),
    )
    .await
    .expect("acquire returns")
    .expect("the expired holder's lock is won at the last attempt");
    assert!(start.elapsed() >= Duration::from_millis(300));
    lock.release().await.unwrap();

    // A live holder: the waiter waits out its limit, then says contended.
    let holder = support::manager(&urls).await;
    let resource = unique("live");
    let held = holder
        .try_acquire(&resource, Duration::from_secs(30))
        .await
        .unwrap();
    let start = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        waiter.acquire(&resource, Duration::from_secs(10)),
    )
    .await
    .expect("acquire returns")
    .unwrap_err();
    let waited = start.elapsed();
    assert!(err.is_contended(), "{err:?}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(2),
        "gave up after {waited:?} of a 600 ms limit"
    );
    held.release().await.unwrap();
}
