//! One sick node of three, shared by the sick-node tests (which check that
//! nothing overlaps, hangs or stalls) and the sick-node benchmark (which
//! measures how much throughput the sickness costs).

use std::time::{Duration, Instant};

use super::proxy::Net;

/// How node 2 (or, for `Slow`, each node in turn) is sick.
#[derive(Clone, Copy, Debug)]
pub enum Sickness {
    /// SIGSTOP for 0.5-1.5 s, SIGCONT for 0.15-0.5 s, over and over.
    FrozenAndThawed,
    /// 0-200 ms added to each request, one node at a time (the slow node
    /// changes every second).
    Slow,
    /// Nothing passes either way, no reset, for 1-2 s at a time, with
    /// 0.3 s of normal service between.
    Blackholed,
}

impl Sickness {
    pub const ALL: [Sickness; 3] = [Self::FrozenAndThawed, Self::Slow, Self::Blackholed];
}

/// Makes a node sick until `end`, then heals every node.
pub async fn sicken(net: &Net, sickness: Sickness, end: Instant) {
    let ms = |lo: u64, hi: u64| Duration::from_millis(rand::random_range(lo..=hi));
    let until = |d: Duration| tokio::time::sleep_until((Instant::now() + d).min(end).into());
    while Instant::now() < end {
        match sickness {
            Sickness::FrozenAndThawed => {
                net.cluster.freeze(2);
                until(ms(500, 1500)).await;
                net.cluster.thaw(2);
                until(ms(150, 500)).await;
            }
            Sickness::Slow => {
                for i in 0..3 {
                    net.proxies[i].random_latency(Duration::from_millis(200));
                    until(Duration::from_secs(1)).await;
                    net.proxies[i].heal();
                }
            }
            Sickness::Blackholed => {
                net.proxies[2].hard_blackhole();
                until(ms(1000, 2000)).await;
                net.proxies[2].heal();
                until(Duration::from_millis(300)).await;
            }
        }
    }
    net.heal();
}
