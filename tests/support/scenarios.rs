//! The fault suite's scenarios for any kind of lock the witness knows: no
//! fault (both client styles), a frozen node, a delayed restart, holders
//! paused past their deadline, a slow node and a blackholed node. Each
//! run's report goes to `judge` with the scenario's name and the fewest
//! holders it should have seen.

use std::time::Duration;

use super::proxy::Net;
use super::unique;
use super::witness::{self, Kind, Load, Report, Style};

/// 8 clients on one resource for 1.5 s, holding 5 ms.
fn load(kind: Kind, name: &str, style: Style) -> Load {
    let mut load = Load::new(&[unique(name)], Duration::from_millis(1500));
    load.kind = kind;
    load.style = style;
    load.hold = Duration::from_millis(5);
    load
}

/// The scenarios that control `redis-server` processes.
pub async fn process_faults(kind: Kind, judge: impl Fn(&str, &Report, usize)) {
    let _serial = super::serial().await;
    let Some(mut cluster) = super::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    for style in [Style::TryLoop, Style::Acquire] {
        let report = witness::run(&urls, &load(kind, "calm", style)).await;
        judge(&format!("no fault, {style:?}"), &report, 30);
    }

    // A frozen node, thawed and frozen again.
    let frozen = load(kind, "frozen", Style::TryLoop);
    let run = witness::run(&urls, &frozen);
    let fault = async {
        for _ in 0..5 {
            cluster.freeze(2);
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.thaw(2);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (report, ()) = tokio::join!(run, fault);
    cluster.thaw(2);
    judge("frozen node", &report, 30);

    // A node killed and restarted after the delayed-restart wait.
    let restart = load(kind, "restart", Style::Acquire);
    let run = witness::run(&urls, &restart);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.kill(1);
        tokio::time::sleep(Duration::from_millis(1100)).await; // the TTL, and more
        cluster.restart(1);
    };
    let (report, ()) = tokio::join!(run, fault);
    judge("delayed restart", &report, 30);

    // Holders paused past their deadline (GC, a stopped VM), among waiting
    // clients: a try loop rarely finds a moment free of stalled holders.
    let mut paused = load(kind, "paused", Style::Acquire);
    paused.duration = Duration::from_millis(2000);
    paused.ttl = Duration::from_millis(300);
    paused.hold = Duration::from_millis(2);
    paused.paused_share = 0.2;
    let report = witness::run(&urls, &paused).await;
    // Holders stall for a whole TTL here.
    judge("paused holders", &report, 10);
}

/// The scenarios on the network path (a proxy per node).
pub async fn network_faults(kind: Kind, judge: impl Fn(&str, &Report, usize)) {
    let _serial = super::serial().await;
    let Some(net) = Net::start().await else {
        return;
    };
    net.proxies[2].random_latency(Duration::from_millis(80));
    let report = witness::run(&net.urls(), &load(kind, "slow", Style::TryLoop)).await;
    net.proxies[2].heal();
    judge("slow node", &report, 30);

    net.proxies[0].blackhole();
    let report = witness::run(&net.urls(), &load(kind, "blackhole", Style::Acquire)).await;
    net.proxies[0].heal();
    // A stall, not a rate: a read-write lock's waiting writers got 24-105
    // acquisitions here in 1.5 s on a busy 2-core machine (30 failed a
    // fresh-clone run); what a blackholed node costs is the sick bench's.
    judge("blackholed node", &report, 10);
}
