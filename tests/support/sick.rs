//! One sick node of three, shared by the sick-node tests (which check that
//! nothing overlaps, hangs or stalls) and the sick-node benchmark (which
//! measures how much throughput the sickness costs).

use std::time::{Duration, Instant};

use super::proxy::Net;

/// How node 2 (or, for the slow shapes, one node at a time) is sick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sickness {
    /// SIGSTOP for 0.5-1.5 s, SIGCONT for 0.15-0.5 s, over and over.
    FrozenAndThawed,
    /// 0-200 ms added to each request, one node at a time (the slow node
    /// changes every second, in turn).
    Slow,
    /// Nothing passes either way, no reset, for 1-2 s at a time, with
    /// 0.3 s of normal service between.
    Blackholed,
    /// 0-200 ms added to each reply, one node at a time; after 1-2 s
    /// (random) another node, picked at random, becomes the slow one.
    SlowRotating,
    /// Nothing passes either way, no FIN, no reset, open connections
    /// stalled too, for 2 s; then 0.5-1.5 s of normal service, in which
    /// the held traffic flows again, over and over.
    BlackholeResumable,
    /// As `BlackholeResumable`, but the connections open when a blackhole
    /// begins stay dead for good (nothing closed, nothing delivered);
    /// those opened later work until the next blackhole.
    BlackholeDead,
}

impl Sickness {
    pub const ALL: [Sickness; 6] = [
        Self::FrozenAndThawed,
        Self::Slow,
        Self::Blackholed,
        Self::SlowRotating,
        Self::BlackholeResumable,
        Self::BlackholeDead,
    ];

    /// The sickness called `name` (its variant's name, any case).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| format!("{s:?}").eq_ignore_ascii_case(name.trim()))
    }
}

/// Makes a node sick until `end`, then heals every node.
pub async fn sicken(net: &Net, sickness: Sickness, end: Instant) {
    let ms = |lo: u64, hi: u64| Duration::from_millis(rand::random_range(lo..=hi));
    let until = |d: Duration| tokio::time::sleep_until((Instant::now() + d).min(end).into());
    let mut slow = rand::random_range(0..3);
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
            Sickness::SlowRotating => {
                net.proxies[slow].random_reply_latency(Duration::from_millis(200));
                until(ms(1000, 2000)).await;
                net.proxies[slow].heal();
                // Another node, never the same one twice in a row.
                slow = (slow + rand::random_range(1..3)) % 3;
            }
            Sickness::BlackholeResumable | Sickness::BlackholeDead => {
                if sickness == Sickness::BlackholeDead {
                    net.proxies[2].fatal_blackhole();
                } else {
                    net.proxies[2].hard_blackhole();
                }
                until(Duration::from_secs(2)).await;
                net.proxies[2].heal();
                until(ms(500, 1500)).await;
            }
        }
    }
    net.heal();
}
