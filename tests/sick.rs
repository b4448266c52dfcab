//! One sick node of three must not break the lock: two healthy nodes are
//! a quorum. Twelve clients, each with its own manager, contend for one
//! resource and for four while one node is frozen and thawed, slow, or
//! blackholed, both with `acquire` (wake-ups and the default retry policy)
//! and with a loop of `try_acquire` and the client's own short back-off.
//!
//! These tests assert only what could not happen on any machine, however
//! busy: two holders at once, a client that hangs, no acquisition at all,
//! or a stretch of a second with no holder while two nodes were healthy
//! (a stall). How much throughput the sickness costs is a benchmark's
//! question: `cargo bench --bench sick` measures it against a no-fault
//! run.
//!
//! These tests control processes and network paths, so they are skipped
//! under `REDLOCK_TEST_NODES`; they run one at a time (see `support::serial`).

mod support;

use std::time::{Duration, Instant};

use support::proxy::Net;
use support::sick::{sicken, Sickness};
use support::unique;
use support::witness::{self, Load, Style};

/// Length of each run.
const RUN: Duration = Duration::from_secs(2);

/// A stretch this long with no holder, while two nodes were healthy, is a
/// stall (a few retry delays would be a few tens of milliseconds).
const STALL: Duration = Duration::from_secs(1);

async fn stays_live(style: Style, sickness: Sickness) {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    let urls = net.urls();
    for count in [1, 4] {
        let resources: Vec<String> = (0..count).map(|i| unique(&format!("sick-{i}"))).collect();
        let mut load = Load::new(&resources, RUN);
        load.clients = 12;
        load.style = style;
        load.ttl = Duration::from_millis(300);
        load.backoff = (Duration::ZERO, Duration::from_millis(20));
        let end = Instant::now() + RUN;
        let (sick, ()) = tokio::join!(witness::run(&urls, &load), sicken(&net, sickness, end));
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SICK {style:?}, {count} resource(s), {sickness:?}: {sick}"
        );
        assert_eq!(sick.violations, 0, "two holders overlapped: {sick}");
        assert_eq!(sick.hung, 0, "{sick}");
        assert!(sick.acquisitions > 0, "nothing was acquired: {sick}");
        assert!(
            sick.longest_gap < STALL,
            "{style:?}, {count} resource(s), {sickness:?}: no holder for {:?}",
            sick.longest_gap
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_loop_with_a_node_frozen_and_thawed() {
    stays_live(Style::TryLoop, Sickness::FrozenAndThawed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_loop_with_a_slow_node() {
    stays_live(Style::TryLoop, Sickness::Slow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_loop_with_a_blackholed_node() {
    stays_live(Style::TryLoop, Sickness::Blackholed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_with_a_node_frozen_and_thawed() {
    stays_live(Style::Acquire, Sickness::FrozenAndThawed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_with_a_slow_node() {
    stays_live(Style::Acquire, Sickness::Slow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_with_a_blackholed_node() {
    stays_live(Style::Acquire, Sickness::Blackholed).await;
}
