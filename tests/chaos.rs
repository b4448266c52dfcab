//! The fault-injection suite: many clients (each with its own `Redlock`)
//! compete while nodes misbehave, and a witness checks that no two holders'
//! promised windows ever overlap. Liveness is compared with a no-fault run
//! measured in the same test. Each scenario prints its figures.
//!
//! These tests control processes and network paths, so they are skipped
//! under `REDLOCK_TEST_NODES`; they run one at a time (see `support::serial`).

mod support;

use std::time::{Duration, Instant};

use quorumlock::Error;
use support::proxy::{Net, Proxy};
use support::witness::{self, Load, Report};
use support::{eventually, key_count, unique, value};

const RUN: Duration = Duration::from_millis(1500);

fn show(scenario: &str, report: &Report) {
    note(scenario, &report.to_string());
}

fn note(scenario: &str, text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "CHAOS {scenario}: {text}");
}

/// The common assertions: safe, nothing hung.
fn assert_safe(scenario: &str, report: &Report) {
    show(scenario, report);
    assert_eq!(report.violations, 0, "{scenario}: two holders overlapped");
    assert_eq!(report.hung, 0, "{scenario}: a call hung");
}

/// Runs `load` while `fault` runs beside it; the fault is stopped after.
async fn under<F>(urls: &[String], load: &Load, fault: F) -> Report
where
    F: std::future::Future<Output = ()>,
{
    let run = witness::run(urls, load);
    tokio::pin!(run);
    tokio::pin!(fault);
    let mut fault_done = false;
    loop {
        tokio::select! {
            report = &mut run => return report,
            () = &mut fault, if !fault_done => fault_done = true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_faults() {
    let _serial = support::serial().await;
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let load = Load::new(&[unique("calm")], RUN);
    let report = witness::run(&cluster.urls(), &load).await;
    assert_safe("no faults", &report);
    assert!(report.acquisitions > 50, "{report}");
    assert_eq!(report.unavailable + report.other_errors, 0, "{report}");

    let resources: Vec<String> = (0..4).map(|i| unique(&format!("calm-{i}"))).collect();
    let report = witness::run(&cluster.urls(), &Load::new(&resources, RUN)).await;
    assert_safe("no faults, 4 resources", &report);
    assert!(report.acquisitions > 50, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_frozen_and_thawed_repeatedly() {
    let _serial = support::serial().await;
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let load = Load::new(&[unique("frozen")], RUN);
    let baseline = witness::run(&cluster.urls(), &load).await;
    assert_safe("baseline", &baseline);
    let report = under(&cluster.urls(), &load, async {
        let end = Instant::now() + RUN;
        while Instant::now() < end {
            cluster.freeze(2);
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.thaw(2);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    cluster.thaw(2);
    assert_safe("one node frozen/thawed", &report);
    assert!(
        report.rate() >= 0.5 * baseline.rate(),
        "two nodes are a quorum, yet the rate fell from {:.0}/s to {:.0}/s",
        baseline.rate(),
        report.rate()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_killed_and_restarted_after_the_delayed_restart_wait() {
    let _serial = support::serial().await;
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let load = Load::new(&[unique("delayed-restart")], Duration::from_millis(2500));
    let ttl = load.ttl;
    let report = under(&urls, &load, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill(2);
        // The delayed-restart rule: stay down for the longest TTL in use.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        cluster.restart(2);
    })
    .await;
    assert_safe("one node killed, restarted after the TTL", &report);
    assert!(report.acquisitions > 50, "{report}");
}

/// Holder A wins on nodes 1 and 2 only (node 0 refuses it for a moment);
/// node 2 then restarts with empty data, and B asks for the same resource.
/// Returns whether B got the lock while A's lock was still valid.
async fn restart_race(wait_before_restart: bool) -> Option<bool> {
    let mut cluster = support::cluster(3)?;
    let redlock = support::manager(&cluster.urls()).await;
    let resource = unique("restart-race");
    let ttl = Duration::from_millis(800);
    let mut c = support::conn(&cluster.url(0)).await;
    let _: () = redis::cmd("SET")
        .arg(&resource)
        .arg("x")
        .arg("PX")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    let a = redlock.try_acquire(&resource, ttl).await.unwrap();
    eventually(Duration::from_secs(1), "node 0 free again", || async {
        value(&cluster.url(0), &resource).await.is_none()
    })
    .await;
    if wait_before_restart {
        cluster.kill(2);
        tokio::time::sleep(ttl).await;
        cluster.restart(2);
    } else {
        cluster.restart(2);
    }
    let mut b = None;
    let until = Instant::now() + ttl;
    while b.is_none() && Instant::now() < until {
        b = redlock.try_acquire(&resource, ttl).await.ok();
    }
    let overlap = b.is_some_and(|_| a.is_held());
    Some(overlap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_restarted_at_once_with_empty_data_is_unsafe_by_design() {
    let _serial = support::serial().await;
    let Some(overlap) = restart_race(false).await else {
        return;
    };
    // Documented in the README: without persistence, a node restarted at
    // once forgets A's key, and B wins a majority while A still holds.
    assert!(overlap, "the witness should see two valid holders");
    let Some(overlap) = restart_race(true).await else {
        return;
    };
    assert!(
        !overlap,
        "with the delayed restart, A's lock had expired first"
    );
    note(
        "restart at once",
        "a second holder won while the first held: 1 violation (unsafe by design)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_slow_with_random_latency() {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    let load = Load::new(&[unique("slow")], RUN);
    let baseline = witness::run(&net.urls(), &load).await;
    assert_safe("baseline (proxied)", &baseline);
    net.proxies[2].random_latency(Duration::from_millis(80));
    let report = witness::run(&net.urls(), &load).await;
    net.proxies[2].heal();
    assert_safe("one node slow (0-80 ms)", &report);
    // Racing attempts that split the two fast nodes now wait for the slow
    // one (up to the node timeout), so the rate drops; acquisitions must
    // keep flowing all the same.
    assert!(report.longest_gap < load.ttl, "{report}");
    assert!(
        report.rate() >= 0.15 * baseline.rate(),
        "rate fell from {:.0}/s to {:.0}/s",
        baseline.rate(),
        report.rate()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_blackholed_then_hard_blackholed() {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    let load = Load::new(&[unique("blackhole")], RUN);
    let baseline = witness::run(&net.urls(), &load).await;
    assert_safe("baseline (proxied)", &baseline);

    let soft: fn(&Proxy) = |p| {
        // Open connections are cut, and new ones are held unanswered.
        p.blackhole();
        p.reset();
    };
    // Connections already open stall too.
    let hard: fn(&Proxy) = Proxy::hard_blackhole;
    for (scenario, fault) in [
        ("one node blackholed", soft),
        ("one node hard-blackholed", hard),
    ] {
        fault(&net.proxies[2]);
        let report = witness::run(&net.urls(), &load).await;
        assert_safe(scenario, &report);
        assert!(report.max_latency < Duration::from_secs(1), "{report}");
        assert!(report.acquisitions > 50, "{report}");
        net.proxies[2].heal();
        let redlock = support::manager(&net.urls()).await;
        support::node_votes_again(&redlock, &net.cluster.url(2), load.ttl).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_with_a_fast_clock() {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    let mut load = Load::new(&[unique("fast-clock")], RUN);
    load.ttl = Duration::from_millis(300);
    load.hold = Duration::from_millis(250);

    // Every node 0.5% fast: within the default allowance (1% + 2 ms).
    for p in &net.proxies {
        p.clock_speed(1.005);
    }
    let report = witness::run(&net.urls(), &load).await;
    assert_safe(
        "all nodes 1.005x, default drift, holds to the deadline",
        &report,
    );
    assert!(report.acquisitions > 3, "{report}");

    // One node 1.5x: its keys expire after 2/3 of the TTL. A holder whose
    // quorum is that node plus one other is then down to one node. An
    // allowance of 35% ends validity before that node forgets.
    for p in &net.proxies {
        p.heal();
    }
    net.proxies[2].clock_speed(1.5);
    load.drift_factor = 0.35;
    let report = witness::run(&net.urls(), &load).await;
    assert_safe("one node 1.5x, drift 35%, holds to the deadline", &report);
    assert!(report.acquisitions > 3, "{report}");

    // The limit: the default 1% does not cover a clock 50% fast.
    load.drift_factor = 0.01;
    let report = witness::run(&net.urls(), &load).await;
    show("one node 1.5x, default drift (documented limit)", &report);
    assert_eq!(report.hung, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_a_majority_of_fast_clocks_breaks_exclusion() {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    net.proxies[1].clock_speed(1.5);
    net.proxies[2].clock_speed(1.5);
    let redlock = support::manager(&net.urls()).await;
    let resource = unique("fast-majority");
    let ttl = Duration::from_millis(600);
    let a = redlock.try_acquire(&resource, ttl).await.unwrap();
    // Node 0 is on time, so B must wait for the other two to forget A.
    let mut c = support::conn(&net.cluster.url(0)).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&resource)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut won = None;
    while won.is_none() && a.is_held() {
        if let Ok(b) = redlock.try_acquire(&resource, ttl).await {
            won = Some((Instant::now(), b));
        }
    }
    // Documented limit: the two fast nodes forget A after 400 ms, well
    // before A's deadline (~592 ms), so B wins while A still holds.
    let (won_at, b) = won.expect("B should win a majority of fast nodes while A holds");
    assert!(
        won_at < a.deadline(),
        "B's window began {:?} after A's ended: no overlap shown",
        won_at - a.deadline()
    );
    note(
        "majority of clocks 1.5x",
        &format!(
            "B won {:?} before A's deadline: 1 violation (the documented limit)",
            a.deadline() - won_at
        ),
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_paused_past_its_validity_never_touches_the_next_holder() {
    let _serial = support::serial().await;
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let redlock = support::manager(&urls).await;
    let resource = unique("paused");
    let mut paused = redlock
        .try_acquire(&resource, Duration::from_millis(200))
        .await
        .unwrap();
    let paused_deadline = paused.deadline();
    // The pause (a GC, a stopped VM): the lock expires meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = redlock
        .try_acquire(&resource, Duration::from_secs(10))
        .await
        .unwrap();
    let next_start = Instant::now();
    assert!(paused_deadline <= next_start, "the windows overlap");
    assert!(paused
        .extend(Duration::from_secs(10))
        .await
        .unwrap_err()
        .is_lost());
    assert!(paused.release().await.unwrap_err().is_lost());
    for url in &urls {
        assert_eq!(value(url, &resource).await.as_deref(), Some(next.token()));
    }
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_acquire_leave_no_key_behind() {
    let _serial = support::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    let mut load = Load::new(&[unique("resets")], RUN);
    // Long TTL: a key found afterwards was left behind, not waiting to expire.
    load.ttl = Duration::from_secs(30);
    let report = under(&net.urls(), &load, async {
        loop {
            tokio::time::sleep(Duration::from_millis(15)).await;
            net.proxies[rand::random_range(0..3)].reset();
        }
    })
    .await;
    assert_safe("connections reset every 15 ms", &report);
    assert!(report.acquisitions > 20, "{report}");
    let urls = net.cluster.urls();
    eventually(
        Duration::from_secs(2),
        "no key left on any node",
        || async {
            let mut total = 0;
            for url in &urls {
                total += key_count(url).await;
            }
            total == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_down_then_back() {
    let _serial = support::serial().await;
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let load = Load::new(&[unique("majority-down")], Duration::from_millis(800));
    cluster.kill(1);
    cluster.kill(2);
    let down = witness::run(&urls, &load).await;
    assert_safe("two of three down", &down);
    assert_eq!(down.acquisitions, 0, "{down}");
    assert!(down.unavailable > 0 && down.other_errors == 0, "{down}");
    let redlock = support::manager(&urls).await;
    let err = redlock
        .try_acquire(&unique("typed"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { quorum: 2, .. }),
        "{err:?}"
    );

    cluster.restart(1);
    cluster.restart(2);
    let back = witness::run(&urls, &load).await;
    assert_safe("both back", &back);
    assert!(back.acquisitions > 20, "{back}");
}

#[test]
fn the_proxy_forwards_whole_commands_only() {
    use support::proxy::{encode, parse_command};
    let cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    assert_eq!(parse_command(&cmd[..10]), None);
    let (args, used) = parse_command(cmd).unwrap();
    assert_eq!(used, cmd.len());
    assert_eq!(encode(&args), cmd.to_vec());
}

#[test]
fn the_proxy_scales_set_and_extend_ttls_for_a_fast_clock() {
    use support::proxy::scale_ttls;
    let args = |a: [&str; 6]| a.map(|s| s.as_bytes().to_vec()).to_vec();
    assert_eq!(
        scale_ttls(args(["SET", "k", "t", "NX", "PX", "3000"]), 1.5)[5],
        b"2000"
    );
    assert_eq!(
        scale_ttls(args(["EVALSHA", "abc", "1", "k", "t", "900"]), 1.5)[5],
        b"600"
    );
}
