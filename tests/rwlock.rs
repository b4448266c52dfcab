//! The quorum read-write lock: readers share, a writer excludes everyone,
//! a waiting writer is not starved by readers, typed errors for names in
//! use otherwise, and the witness under the fault suite's scenarios.

mod support;

use std::time::Duration;

use quorumlock::{Error, InUse, Reading, Redlock, RetryPolicy};
use support::unique;
use support::witness::{self, Kind, Report};

const TTL: Duration = Duration::from_secs(10);

async fn manager(urls: &[String]) -> Redlock {
    support::builder(urls)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn readers_share_and_a_writer_excludes_everyone() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let config = redlock.rw_lock(&unique("config"));
    let r1 = config.try_read(TTL).await.unwrap();
    let r2 = config.try_read(TTL).await.unwrap();
    assert_ne!(r1.key(), r2.key());
    let e = config.try_write(TTL).await.unwrap_err();
    assert!(e.is_contended(), "{e}");
    let seen = config.inspect().await.unwrap();
    let Reading::Held(mut readers) = seen.reading().clone() else {
        panic!("{seen:?}");
    };
    readers.sort();
    let mut expected = vec![r1.token().to_string(), r2.token().to_string()];
    expected.sort();
    assert_eq!(readers, expected);
    r1.release().await.unwrap();
    assert!(config.try_write(TTL).await.unwrap_err().is_contended());
    r2.release().await.unwrap();

    let w = config.try_write(TTL).await.unwrap();
    assert!(config.try_read(TTL).await.unwrap_err().is_contended());
    assert!(config.try_write(TTL).await.unwrap_err().is_contended());
    assert_eq!(
        config.inspect().await.unwrap().reading(),
        &Reading::Held(vec![w.token().to_string()])
    );
    w.release().await.unwrap();
    let r = config.try_read(TTL).await.unwrap();
    r.release().await.unwrap();
    assert_eq!(config.inspect().await.unwrap().reading(), &Reading::Free);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_is_not_starved_by_a_stream_of_readers() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("starve");
    // Readers overlap each other without a gap: without writer preference
    // the writer would never find the lock free of readers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (urls, name, stop) = (urls.clone(), name.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let redlock = support::builder(&urls)
                .retry(
                    RetryPolicy::new()
                        .attempts(u32::MAX)
                        .delay(Duration::from_millis(5)),
                )
                .build()
                .await
                .unwrap();
            let lock = redlock.rw_lock(&name);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = lock.read(TTL).await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
                r.release().await.unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writer = support::builder(&urls)
        .retry(
            RetryPolicy::new()
                .attempts(u32::MAX)
                .delay(Duration::from_millis(20)),
        )
        .build()
        .await
        .unwrap();
    let asked = std::time::Instant::now();
    let w = tokio::time::timeout(Duration::from_secs(3), writer.rw_lock(&name).write(TTL))
        .await
        .expect("the writer got in while readers kept coming")
        .unwrap();
    eprintln!(
        "RWLOCK writer waited {:?} behind a stream of readers",
        asked.elapsed()
    );
    w.release().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn an_intent_keeps_readers_out_but_never_a_writer() {
    // Another writer's intent on two nodes of three: a node refused every
    // writer but the intent's own, so two waiting writers whose intents
    // landed on different nodes each lacked a quorum, and nobody held the
    // lock until the intents expired.
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let name = unique("intents");
    let lock = redlock.rw_lock(&name);
    // The name's kind is recorded by a first use.
    lock.try_read(TTL).await.unwrap().release().await.unwrap();
    let intent = format!("{{{name}}}:intent");
    support::set_foreign(&urls[0], &intent).await;
    support::set_foreign(&urls[1], &intent).await;
    let e = lock.try_read(TTL).await.unwrap_err();
    assert!(e.is_contended(), "a reader got in past two intents: {e}");
    let writer = lock.try_write(TTL).await.unwrap();
    // The writer that got in took the intents away: readers follow it.
    writer.release().await.unwrap();
    lock.try_read(TTL).await.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn fences_grow_with_writers_and_readers_see_the_last_one() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::fenced_builder(&urls).build().await.unwrap();
    let lock = redlock.rw_lock(&unique("fenced"));
    let w1 = lock.try_write(TTL).await.unwrap();
    let f1 = w1.fence().unwrap();
    w1.release().await.unwrap();
    let r = lock.try_read(TTL).await.unwrap();
    assert_eq!(
        r.fence(),
        Some(f1),
        "a reader reads the last writer's version"
    );
    r.release().await.unwrap();
    let w2 = lock.try_write(TTL).await.unwrap();
    assert!(w2.fence().unwrap() > f1);
    w2.release().await.unwrap();
}

#[tokio::test]
async fn names_in_use_otherwise_are_typed_errors() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = manager(&urls).await;
    let mutex = unique("mutex");
    let held = redlock.try_acquire(&mutex, TTL).await.unwrap();
    let e = redlock.rw_lock(&mutex).try_read(TTL).await.unwrap_err();
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
    let e = redlock.rw_lock(&mutex).try_write(TTL).await.unwrap_err();
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
    held.release().await.unwrap();

    let sem = unique("sem");
    redlock
        .semaphore(&sem, 2)
        .try_acquire(TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let e = redlock.rw_lock(&sem).try_write(TTL).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::NameInUse {
                found: InUse::OtherKind,
                ..
            }
        ),
        "{e}"
    );

    let rw = unique("rw");
    redlock
        .rw_lock(&rw)
        .try_read(TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let e = redlock
        .semaphore(&rw, 2)
        .try_acquire(TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::NameInUse {
                found: InUse::OtherKind,
                ..
            }
        ),
        "{e}"
    );
    assert!(redlock
        .try_acquire(&rw, TTL)
        .await
        .unwrap_err()
        .is_refused());
    assert!(matches!(
        redlock.rw_lock("").try_read(TTL).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
}

#[test]
fn the_witness_judges_readers_and_writers() {
    let t = std::time::Instant::now();
    let ms = |n| t + Duration::from_millis(n);
    let mut ok = [
        (ms(0), ms(10), false),
        (ms(2), ms(12), false),
        (ms(12), ms(20), true),
    ];
    assert_eq!(witness::rw_overlaps(&mut ok), 0);
    let mut bad = [
        (ms(0), ms(10), false),
        (ms(5), ms(6), true),
        (ms(8), ms(20), true),
    ];
    assert_eq!(witness::rw_overlaps(&mut bad), 2);
}

/// Safe, and writers and readers both held.
fn assert_safe(scenario: &str, report: &Report, min: usize) {
    eprintln!("RWLOCK {scenario}: {report}");
    assert_eq!(
        report.violations, 0,
        "{scenario}: a writer overlapped another holder"
    );
    assert_eq!(report.hung, 0, "{scenario}: a call hung");
    assert!(report.acquisitions > min, "{scenario}: {report}");
    assert!(
        report.reads > 0 && report.reads < report.acquisitions,
        "{scenario}: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writer_overlaps_anyone_under_faults() {
    support::scenarios::process_faults(Kind::RwLock(0.3), assert_safe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writer_overlaps_anyone_with_a_slow_or_blackholed_node() {
    support::scenarios::network_faults(Kind::RwLock(0.3), assert_safe).await;
}

/// The scoped forms, run by a user with only the README's ACL rule and
/// its additions for these primitives.
#[tokio::test]
async fn scoped_forms_under_the_readme_acl() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let rule = support::readme_acl(true, &[support::ACL_PRIMITIVES], "pw");
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    for url in cluster.urls() {
        support::admin(&url, &rule).await;
    }
    let urls: Vec<String> = (0..3)
        .map(|i| format!("redis://locker:pw@127.0.0.1:{}", cluster.port(i)))
        .collect();
    let redlock = support::builder(&urls)
        .key_prefix("app:")
        .fencing(true)
        // Spawned test nodes keep no AOF: tests/fencing.rs checks durability.
        .require_durable_fences(false)
        .build()
        .await
        .unwrap();
    let jobs = redlock.semaphore(&unique("jobs"), 2);
    let done = jobs
        .with_permit(TTL, |guard| async move { guard.is_held() })
        .await
        .unwrap();
    assert!(done);
    assert_eq!(jobs.inspect().await.unwrap().reading(), &Reading::Free);

    let config = redlock.rw_lock(&unique("config"));
    let version = config
        .with_write(TTL, |guard| async move { guard.fence().unwrap() })
        .await
        .unwrap();
    let seen = config
        .with_read(TTL, |guard| async move { guard.fence().unwrap() })
        .await
        .unwrap();
    assert_eq!(seen, version, "the reader sees the last writer's fence");
    assert_eq!(config.inspect().await.unwrap().reading(), &Reading::Free);
    let resource = unique("plain");
    assert_eq!(
        redlock.inspect(&resource).await.unwrap().reading(),
        &Reading::Free
    );
}
