//! Run: `cargo run --example quickstart` against three Redis nodes on
//! 127.0.0.1:7001–7003 (`docker compose -f docker/docker-compose.yml up -d`
//! starts them), or set `QUORUMLOCK_NODES=redis://a,redis://b,redis://c`.
//!
//! A complete program to copy into a crate of your own, whose Cargo.toml
//! has `quorumlock = "0.1"` and
//! `tokio = { version = "1", features = ["macros", "rt-multi-thread"] }`.
//! The README shows it as it is here (`cargo test --example quickstart`
//! checks that, and runs it against a local trio).

// quickstart begin
use std::time::Duration;

use quorumlock::{Error, Redlock};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let nodes = std::env::var("QUORUMLOCK_NODES").unwrap_or_else(|_| {
        "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
    });
    let outcome = daily_report(&nodes).await?;
    println!("{outcome}");
    Ok(())
}

/// Runs the daily report on one host at a time, however many run this.
async fn daily_report(nodes: &str) -> Result<String, Error> {
    // Build one manager per process and share it (it is cheap to clone).
    let redlock = Redlock::builder().nodes(nodes.split(',')).build().await?;
    // Acquires (waiting while another host holds it), keeps the lock alive
    // while the work runs, and releases it afterwards, also on a panic.
    redlock
        .with_lock(
            "report:daily",
            Duration::from_secs(10),
            |guard| async move {
                // Stop early if the lock is lost (nodes unreachable): another
                // host may take over once it expires.
                tokio::select! {
                    rows = write_report() => format!("report written: {rows} rows"),
                    () = guard.lost() => "lock lost: report stopped".to_string(),
                }
            },
        )
        .await
}

async fn write_report() -> u64 {
    tokio::time::sleep(Duration::from_millis(200)).await; // the real work
    42
}
// quickstart end

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_against_a_local_trio() {
        let Some((urls, _cluster)) = super::support::nodes(3) else {
            return;
        };
        let outcome = super::daily_report(&urls.join(",")).await.unwrap();
        assert_eq!(outcome, "report written: 42 rows");
    }

    #[test]
    fn the_readme_shows_this_program() {
        let source = include_str!("quickstart.rs");
        let begin = source.find("// quickstart begin\n").unwrap() + 20;
        let end = source.find("// quickstart end").unwrap();
        assert_eq!(
            super::support::readme_snippet("quickstart"),
            source[begin..end],
            "README's Install program and examples/quickstart.rs differ"
        );
    }
}
