//! The quorum semaphore: at most P holders, permits that are locks, waiters
//! woken by any release, typed errors for bad input and for clients that
//! disagree about a name, and the witness counting holders under the fault
//! suite's scenarios.

mod support;

use std::time::Duration;

use quorumlock::{Error, FailureKind, InUse, Reading, Redlock, RetryPolicy};
use support::witness::{self, Kind, Report};
use support::{key_count, unique};

const TTL: Duration = Duration::from_secs(10);

async fn manager(urls: &[String]) -> Redlock {
    support::builder(urls)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn at_most_p_holders_and_a_release_makes_room() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let reports = redlock.semaphore(&unique("reports"), 2);
    let a = reports.try_acquire(TTL).await.unwrap();
    let b = reports.try_acquire(TTL).await.unwrap();
    assert_ne!(a.key(), b.key(), "two permits, two slots");
    let full = reports.try_acquire(TTL).await.unwrap_err();
    assert!(full.is_contended(), "{full}");
    // Another manager (another process) sees the same count.
    let other = manager(&urls).await;
    let full = other
        .semaphore(reports.name(), 2)
        .try_acquire(TTL)
        .await
        .unwrap_err();
    assert!(full.is_contended(), "{full}");
    a.release().await.unwrap();
    let c = reports.try_acquire(TTL).await.unwrap();
    drop(c); // released in the background, as any lock
    drop(b);
    support::eventually(
        Duration::from_secs(2),
        "both permits free again",
        || async { matches!(reports.inspect().await.unwrap().reading(), Reading::Free) },
    )
    .await;
}

#[tokio::test]
async fn a_permit_is_a_lock_extended_kept_alive_and_fenced() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::fenced_builder(&urls).build().await.unwrap();
    let one = redlock.semaphore(&unique("single"), 1);
    let mut permit = one.acquire(Duration::from_millis(300)).await.unwrap();
    let first = permit.fence().unwrap();
    permit.extend(Duration::from_millis(300)).await.unwrap();
    permit.keep_alive(quorumlock::KeepAlive::new());
    tokio::time::sleep(Duration::from_millis(900)).await; // three TTLs
    assert!(permit.is_held());
    assert!(one.try_acquire(TTL).await.unwrap_err().is_contended());
    permit.release().await.unwrap();
    let next = one.try_acquire(TTL).await.unwrap();
    assert!(
        next.fence().unwrap() > first,
        "a permit's fence grows per slot"
    );
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_waiter_is_woken_by_the_release_of_any_permit() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let holder = manager(&urls).await;
    let name = unique("wake");
    let held = holder.semaphore(&name, 2);
    let (a, b) = (
        held.try_acquire(TTL).await.unwrap(),
        held.try_acquire(TTL).await.unwrap(),
    );
    // Its retry delay is 10 s: getting a permit sooner means it was woken.
    let waiter = support::builder(&urls)
        .retry(
            RetryPolicy::new()
                .delay(Duration::from_secs(10))
                .jitter(Duration::ZERO),
        )
        .build()
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { waiter.semaphore(&name, 2).acquire(TTL).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("woken by the release, not by the 10 s retry delay")
        .unwrap()
        .unwrap();
    got.release().await.unwrap();
    a.release().await.unwrap();
}

#[tokio::test]
async fn bad_input_and_disagreements_are_typed_errors_and_leave_nothing() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let before: Vec<usize> = futures::future::join_all(urls.iter().map(|u| key_count(u))).await;
    let redlock = manager(&urls).await;
    for (name, permits) in [("", 2), ("zero", 0), ("many", 1025)] {
        let s = redlock.semaphore(name, permits);
        let e = s.try_acquire(TTL).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{name}/{permits}: {e}");
        let e = s.acquire(TTL).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{name}/{permits}: {e}");
    }

    // Two clients that disagree on the count: the second is refused.
    let name = unique("jobs");
    let two = redlock.semaphore(&name, 2);
    let permit = two.try_acquire(TTL).await.unwrap();
    let other = manager(&urls).await;
    let e = other
        .semaphore(&name, 3)
        .try_acquire(TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::NameInUse {
                found: InUse::Semaphore(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_invalid() && !e.is_retryable(), "{e}");
    let e = other.semaphore(&name, 3).acquire(TTL).await.unwrap_err();
    assert!(matches!(&e, Error::NameInUse { .. }), "{e}");
    permit.release().await.unwrap();

    // A name used as a mutex and a semaphore, both ways round.
    let mutex = unique("mutex");
    let lock = redlock.try_acquire(&mutex, TTL).await.unwrap();
    let e = redlock
        .semaphore(&mutex, 2)
        .try_acquire(TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::NameInUse {
                found: InUse::Mutex,
                ..
            }
        ),
        "{e}"
    );
    lock.release().await.unwrap();
    let e = redlock.try_acquire(&name, TTL).await.unwrap_err();
    assert!(e.is_refused(), "{e}");
    assert!(
        e.failures()
            .iter()
            .any(|f| f.kind() == FailureKind::WrongType),
        "{e}"
    );

    // Left behind: only the semaphore's recorded count (one key per node).
    support::eventually(Duration::from_secs(2), "nothing else left", || async {
        let now: Vec<usize> = futures::future::join_all(urls.iter().map(|u| key_count(u))).await;
        now.iter().zip(&before).all(|(n, b)| *n == b + 1)
    })
    .await;
}

#[tokio::test]
async fn inspect_reads_holders_and_a_quorums_view() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let redlock = manager(&urls).await;
    let resource = unique("inspect");
    let seen = redlock.inspect(&resource).await.unwrap();
    assert_eq!(seen.reading(), &Reading::Free);
    let mut lock = redlock.try_acquire(&resource, TTL).await.unwrap();
    let seen = redlock.inspect(&resource).await.unwrap();
    assert_eq!(
        seen.reading(),
        &Reading::Held(vec![lock.token().to_string()])
    );
    for view in seen.nodes() {
        let quorumlock::NodeView::Holders(holders) = view else {
            panic!("{view:?}");
        };
        assert_eq!(holders[0].token(), lock.token());
        let ttl = holders[0].ttl().unwrap();
        assert!(ttl <= TTL && ttl > TTL / 2, "{ttl:?}");
    }
    // A node down: still held by a quorum's reading, and it says so.
    cluster.kill(2);
    let seen = redlock.inspect(&resource).await.unwrap();
    assert_eq!(
        seen.reading(),
        &Reading::Held(vec![lock.token().to_string()])
    );
    assert!(matches!(
        seen.nodes()[2],
        quorumlock::NodeView::Unreachable(_)
    ));
    // Read-only: the lock is still ours everywhere it was.
    lock.extend(TTL).await.unwrap();

    let permits = redlock.semaphore(&unique("inspect-permits"), 3);
    let (a, b) = (
        permits.try_acquire(TTL).await.unwrap(),
        permits.try_acquire(TTL).await.unwrap(),
    );
    let Reading::Held(mut tokens) = permits.inspect().await.unwrap().reading().clone() else {
        panic!("two permits are held");
    };
    tokens.sort();
    let mut expected = vec![a.token().to_string(), b.token().to_string()];
    expected.sort();
    assert_eq!(tokens, expected);
    assert!(redlock.inspect("").await.is_err());
}

#[test]
fn the_witness_counts_holders() {
    let t = std::time::Instant::now();
    let ms = |n| t + Duration::from_millis(n);
    // Three windows open together at 5 ms.
    let windows = [
        (ms(0), ms(10)),
        (ms(2), ms(12)),
        (ms(5), ms(6)),
        (ms(11), ms(20)),
    ];
    assert_eq!(witness::overlaps_over(&mut windows.clone(), 3), 0);
    assert_eq!(witness::overlaps_over(&mut windows.clone(), 2), 1);
    assert_eq!(witness::overlaps_over(&mut windows.clone(), 1), 3);
}

fn assert_safe(scenario: &str, report: &Report, min: usize) {
    eprintln!("SEMAPHORE {scenario}: {report}");
    assert_eq!(
        report.violations, 0,
        "{scenario}: more than 3 holders at once"
    );
    assert_eq!(report.hung, 0, "{scenario}: a call hung");
    assert!(report.acquisitions > min, "{scenario}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_p_holders_under_faults() {
    support::scenarios::process_faults(Kind::Semaphore(3), assert_safe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_p_holders_with_a_slow_or_blackholed_node() {
    support::scenarios::network_faults(Kind::Semaphore(3), assert_safe).await;
}

/// With a node down, a held permit slot reads as `Unavailable` (one
/// refusal, one silent node): the try must still move on to a free slot.
#[tokio::test]
async fn with_a_node_down_a_held_permit_does_not_hide_a_free_one() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let redlock = manager(&urls).await;
    let permits = redlock.semaphore(&unique("degraded"), 2);
    let held = permits.try_acquire(TTL).await.unwrap();
    cluster.kill(2);
    // Each try starts at a random slot: half of them at the held one.
    for _ in 0..12 {
        let other = permits.try_acquire(TTL).await.unwrap();
        assert_ne!(other.key(), held.key());
        other.release().await.unwrap();
    }
    held.release().await.unwrap();
}

/// `inspect` says when a name is recorded as another kind of lock, or as a
/// semaphore of another count, instead of reading it as free.
#[tokio::test]
async fn inspect_says_what_else_a_name_is_used_as() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let name = unique("in-use");
    redlock
        .semaphore(&name, 2)
        .try_acquire(TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert_eq!(
        redlock
            .semaphore(&name, 2)
            .inspect()
            .await
            .unwrap()
            .in_use(),
        None
    );
    for seen in [
        redlock.inspect(&name).await.unwrap(),
        redlock.semaphore(&name, 3).inspect().await.unwrap(),
        redlock.rw_lock(&name).inspect().await.unwrap(),
    ] {
        assert_eq!(seen.in_use(), Some(InUse::Semaphore(2)), "{seen:?}");
        assert_eq!(seen.reading(), &Reading::Free);
    }

    // A mutex held under a name: a semaphore or read-write lock of that
    // name sees it; the mutex itself sees its holder and nothing else.
    let mutex = unique("mutex");
    let lock = redlock.try_acquire(&mutex, TTL).await.unwrap();
    let seen = redlock.inspect(&mutex).await.unwrap();
    assert_eq!(seen.in_use(), None);
    assert_eq!(
        seen.reading(),
        &Reading::Held(vec![lock.token().to_string()])
    );
    for seen in [
        redlock.semaphore(&mutex, 2).inspect().await.unwrap(),
        redlock.rw_lock(&mutex).inspect().await.unwrap(),
    ] {
        assert_eq!(seen.in_use(), Some(InUse::Mutex), "{seen:?}");
        assert_eq!(seen.reading(), &Reading::Free, "no permit, no writer");
    }
    lock.release().await.unwrap();

    // A read-write lock's record.
    let rw = unique("rw");
    redlock
        .rw_lock(&rw)
        .try_read(TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert_eq!(redlock.rw_lock(&rw).inspect().await.unwrap().in_use(), None);
    let seen = redlock.inspect(&rw).await.unwrap();
    assert_eq!(seen.in_use(), Some(InUse::OtherKind), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_record_lost_in_restarts_admits_no_other_count() {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let name = unique("recorded");
    let ttl = Duration::from_secs(2);
    let two = manager(&urls).await.semaphore(&name, 2);
    drop(two.try_acquire(ttl).await.unwrap()); // the count is recorded
                                               // Nodes 1 and 2 restart empty while nobody holds a permit (no lock
                                               // key is lost, so no TTL need pass): their records are gone.
    cluster.restart(1);
    cluster.restart(2);
    let probe = manager(&urls).await;
    support::node_votes_again(&probe, &cluster.url(1), TTL).await;
    support::node_votes_again(&probe, &cluster.url(2), TTL).await;
    // The same handle takes both permits again, on all three nodes.
    let held = [
        two.try_acquire(ttl).await.unwrap(),
        two.try_acquire(ttl).await.unwrap(),
    ];
    // With node 0 frozen, a client of another count finds nodes 1 and 2
    // only: it must still be refused.
    cluster.freeze(0);
    let three = manager(&urls).await.semaphore(&name, 3);
    let third = three.try_acquire(ttl).await;
    cluster.thaw(0);
    match third {
        Err(Error::NameInUse {
            found: InUse::Semaphore(2),
            ..
        }) => {}
        Ok(permit) => panic!(
            "a third holder beside two of a 2-permit semaphore: {}",
            permit.key()
        ),
        Err(e) => panic!("{e:?}"),
    }
    drop(held);
    // Once no permit is held, the record expires after the last one:
    // nothing of the name stays on the nodes.
    for url in &urls {
        support::eventually(Duration::from_secs(5), "the record expires", || async {
            let kind: String = redis::cmd("TYPE")
                .arg(&name)
                .query_async(&mut support::conn(url).await)
                .await
                .unwrap();
            kind == "none"
        })
        .await;
    }
}
