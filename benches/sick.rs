//! Run: `cargo bench --bench sick` (starts its own nodes behind proxies).
//!
//! What one sick node of three costs: twelve clients, each with its own
//! manager, TTL 300 ms, 2 ms holds, contend for one resource and for four,
//! by `acquire` and by a `try_acquire` loop with a 0-20 ms back-off. Each
//! sick run is paired with a no-fault run through the same proxies in the
//! same process, and the ratio of their acquisitions is printed (the goal:
//! at least 0.8x). `SICK_RUN_SECS` sets a run's length (default 3 s);
//! `SICK_PAIRS` how many pairs make each row (default 2).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::proxy::Net;
use support::sick::{sicken, Sickness};
use support::unique;
use support::witness::{self, Load, Style};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let run = Duration::from_secs(env_number("SICK_RUN_SECS", 3));
    let pairs = env_number("SICK_PAIRS", 2);
    let Some(net) = Net::start().await else {
        eprintln!("sick bench: skipped (needs local redis-server processes)");
        return;
    };
    let urls = net.urls();
    println!(
        "\n| style | resources | sickness | no fault | sick | ratio | violations | longest gap |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for style in [Style::TryLoop, Style::Acquire] {
        for sickness in Sickness::ALL {
            for count in [1, 4] {
                let resources: Vec<String> =
                    (0..count).map(|i| unique(&format!("sick-{i}"))).collect();
                let mut load = Load::new(&resources, run);
                load.clients = 12;
                load.style = style;
                load.ttl = Duration::from_millis(300);
                load.backoff = (Duration::ZERO, Duration::from_millis(20));
                let (mut calm_total, mut sick_total, mut violations) = (0, 0, 0);
                let mut gap = Duration::ZERO;
                for _ in 0..pairs {
                    let calm = witness::run(&urls, &load).await;
                    let end = Instant::now() + run;
                    let (sick, ()) =
                        tokio::join!(witness::run(&urls, &load), sicken(&net, sickness, end));
                    calm_total += calm.acquisitions;
                    sick_total += sick.acquisitions;
                    violations += calm.violations + sick.violations;
                    gap = gap.max(sick.longest_gap);
                }
                let ratio = sick_total as f64 / calm_total.max(1) as f64;
                println!(
                    "| {style:?} | {count} | {sickness:?} | {calm_total} | {sick_total} | {ratio:.2}x | {violations} | {} ms |",
                    gap.as_millis()
                );
            }
        }
    }
}
