//! Run: `cargo bench --bench sick` (starts its own nodes behind proxies).
//!
//! What one sick node of three costs: twelve clients, each with its own
//! manager, TTL 300 ms, contend for one resource and for four, by `acquire`
//! and by a `try_acquire` loop with a 0-20 ms back-off. Each sick run is
//! paired with a no-fault run through the same proxies in the same
//! process, and the ratio of their acquisitions is printed (the goal: at
//! least 0.8x), with the violations (overlapping holds) of both runs and
//! the sick runs' longest stretch with no holder. The shapes are
//! `support::sick::Sickness`'s.
//!
//! Environment:
//! - `SICK_RUN_SECS`: a run's length (default 3 s).
//! - `SICK_PAIRS`: how many pairs make each row (default 2).
//! - `SICK_MODE=issue`: the issue's measurement: holds of a random 0-50 ms
//!   (instead of 2 ms), by default only the try loop and only the issue's
//!   shapes (`SlowRotating`, `BlackholeResumable`, `BlackholeDead`). Its
//!   figures were taken with `SICK_RUN_SECS=15`:
//!   `SICK_MODE=issue SICK_RUN_SECS=15 cargo bench --bench sick`.
//! - `SICK_ONLY=name,name`: only these shapes (variant names, any case).
//! - `SICK_STYLE=tryloop|acquire`: only this style.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::proxy::Net;
use support::sick::{sicken, Sickness};
use support::witness::{self, Load, Style};
use support::{env_number, unique};

/// Exits with a message: a misspelt selection should not measure nothing.
fn refuse(what: &str) -> ! {
    eprintln!("sick bench: {what}");
    std::process::exit(2);
}

/// The shapes `SICK_ONLY` names, or `default`.
fn sicknesses(default: &[Sickness]) -> Vec<Sickness> {
    let Ok(list) = std::env::var("SICK_ONLY") else {
        return default.to_vec();
    };
    list.split(',')
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            Sickness::named(n).unwrap_or_else(|| {
                refuse(&format!(
                    "SICK_ONLY: no shape {n:?}; shapes: {:?}",
                    Sickness::ALL
                ))
            })
        })
        .collect()
}

/// The style `SICK_STYLE` names, or `default`.
fn styles(default: &[Style]) -> Vec<Style> {
    match std::env::var("SICK_STYLE").as_deref() {
        Err(_) => default.to_vec(),
        Ok(s) if s.eq_ignore_ascii_case("tryloop") => vec![Style::TryLoop],
        Ok(s) if s.eq_ignore_ascii_case("acquire") => vec![Style::Acquire],
        Ok(s) => refuse(&format!("SICK_STYLE: {s:?} is neither tryloop nor acquire")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let run = Duration::from_secs(env_number("SICK_RUN_SECS", 3));
    let pairs = env_number("SICK_PAIRS", 2);
    let issue = match std::env::var("SICK_MODE").as_deref() {
        Err(_) => false,
        Ok("issue") => true,
        Ok(other) => refuse(&format!("SICK_MODE: {other:?} is not issue")),
    };
    let (holds, styles, sicknesses) = if issue {
        (
            Some((Duration::ZERO, Duration::from_millis(50))),
            styles(&[Style::TryLoop]),
            sicknesses(&[
                Sickness::SlowRotating,
                Sickness::BlackholeResumable,
                Sickness::BlackholeDead,
            ]),
        )
    } else {
        (
            None,
            styles(&[Style::TryLoop, Style::Acquire]),
            sicknesses(&Sickness::ALL),
        )
    };
    let Some(net) = Net::start().await else {
        eprintln!("sick bench: skipped (needs local redis-server processes)");
        return;
    };
    let urls = net.urls();
    let hold = holds.map_or("2 ms".to_string(), |(lo, hi)| {
        format!("{}-{} ms", lo.as_millis(), hi.as_millis())
    });
    println!(
        "\n12 clients, TTL 300 ms, holds {hold}, try-loop back-off 0-20 ms, \
         {pairs} pair(s) of {} s runs per row",
        run.as_secs()
    );
    println!(
        "\n| style | resources | sickness | no fault | sick | ratio | violations | longest gap |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &style in &styles {
        for &sickness in &sicknesses {
            for count in [1, 4] {
                let resources: Vec<String> =
                    (0..count).map(|i| unique(&format!("sick-{i}"))).collect();
                let mut load = Load::new(&resources, run);
                load.clients = 12;
                load.style = style;
                load.ttl = Duration::from_millis(300);
                load.hold_range = holds;
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
