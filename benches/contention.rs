//! Run: `cargo bench --bench contention` (starts its own three local
//! nodes, no proxies).
//!
//! How the library does under contention on healthy nodes, as a markdown
//! table row per measurement. Twelve clients, each with its own manager
//! (the builder's defaults, nodes aside: its default retry policy too),
//! TTL 300 ms, holds of a random 0-4 ms, then release.
//!
//! - `acquire` against a `try_acquire` loop: one key, and four keys (a
//!   random one per attempt). Style A waits in `redlock.acquire`; style B
//!   makes one `try_acquire` and after a failure backs off a random
//!   0-20 ms. A and B runs alternate. Printed: acquisitions of each style
//!   (summed over the pairs), their ratio A/B, the p50 wait of each (from a
//!   client's first attempt at a hold to holding it, across failed calls
//!   and back-offs; every hold of the pairs pooled) and the violations
//!   (overlapping holds of one key) of all runs.
//! - A read-write lock: one name; each hold is a read by one `try_read`
//!   (70%, a random 0-20 ms back-off after a failure) or a write by the
//!   waiting `write` (30%). Printed per run: reads and writes granted,
//!   violations (a write overlapping any other hold) and the longest
//!   stretch with neither a reader nor a writer, the first 100 ms left out.
//!
//! Environment: `CONTENTION_SECS`, a run's length (default 5 s);
//! `CONTENTION_PAIRS`, how many A/B pairs make a row and how many
//! read-write runs are made (default 2). Figures on a shared machine drift;
//! compare the rows of one run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use quorumlock::RetryPolicy;
use support::witness::{self, quantile, Kind, Load, Report, Style};
use support::{env_number, unique};

/// Twelve clients with the builder's default settings, TTL 300 ms, holds
/// of 0-4 ms, a 0-20 ms back-off after a failed try.
fn load(resources: &[String], style: Style, run: Duration) -> Load {
    let mut load = Load::new(resources, run);
    load.clients = 12;
    load.style = style;
    load.retry = Some(RetryPolicy::default());
    load.ttl = Duration::from_millis(300);
    load.hold_range = Some((Duration::ZERO, Duration::from_millis(4)));
    load.backoff = (Duration::ZERO, Duration::from_millis(20));
    load
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Calls that never returned are no figure of the table, but worth a line.
fn warn_hung(report: &Report) {
    if report.hung > 0 {
        eprintln!("contention bench: {} call(s) hung: {report}", report.hung);
    }
}

/// Runs of one style, pooled.
#[derive(Default)]
struct Pooled {
    acquisitions: usize,
    violations: usize,
    waits: Vec<Duration>,
}

impl Pooled {
    fn add(&mut self, report: Report) {
        self.acquisitions += report.acquisitions;
        self.violations += report.violations;
        warn_hung(&report);
        self.waits.extend(report.waits);
    }

    fn p50(&mut self) -> Duration {
        self.waits.sort();
        quantile(&self.waits, 0.5)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let run = Duration::from_secs(env_number("CONTENTION_SECS", 5));
    let pairs = env_number("CONTENTION_PAIRS", 2);
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    println!(
        "\n12 clients, own managers (builder defaults), TTL 300 ms, holds 0-4 ms, \
         {pairs} pair(s) of {} s runs",
        run.as_secs()
    );

    println!(
        "\n| keys | acquire (A) | try loop (B) | A/B | p50 wait A | p50 wait B | violations |"
    );
    println!("|---|---|---|---|---|---|---|");
    for count in [1, 4] {
        let (mut a, mut b) = (Pooled::default(), Pooled::default());
        for _ in 0..pairs {
            let keys: Vec<String> = (0..count)
                .map(|i| unique(&format!("contention-{i}")))
                .collect();
            a.add(witness::run(&urls, &load(&keys, Style::Acquire, run)).await);
            b.add(witness::run(&urls, &load(&keys, Style::TryLoop, run)).await);
        }
        let ratio = a.acquisitions as f64 / b.acquisitions.max(1) as f64;
        let (wait_a, wait_b) = (a.p50(), b.p50());
        println!(
            "| {count} | {} | {} | {ratio:.2}x | {} | {} | {} |",
            a.acquisitions,
            b.acquisitions,
            ms(wait_a),
            ms(wait_b),
            a.violations + b.violations
        );
    }

    println!("\n| read-write run | reads | writes | violations | longest no-holder gap |");
    println!("|---|---|---|---|---|");
    for i in 1..=pairs {
        let mut rw = load(&[unique("contention-rw")], Style::TryReadWaitWrite, run);
        rw.kind = Kind::RwLock(0.3);
        rw.gap_grace = Duration::from_millis(100);
        let report = witness::run(&urls, &rw).await;
        warn_hung(&report);
        println!(
            "| {i} | {} | {} | {} | {} |",
            report.reads,
            report.exclusive(),
            report.violations,
            ms(report.longest_gap)
        );
    }
}
