//! Metrics on the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): whatever recorder the service installs (Prometheus, StatsD,
//! ...) receives them. Without the feature every call here is empty.
//!
//! | name | kind | labels | counts |
//! |---|---|---|---|
//! | `quorumlock_attempts_total` | counter | `outcome` | single attempts: `acquired`, `contended`, `unavailable`, `refused`, `error` |
//! | `quorumlock_acquisitions_total` | counter | | locks handed out |
//! | `quorumlock_contended_total` | counter | | attempts that found the resource held or contested |
//! | `quorumlock_unavailable_total` | counter | | attempts without enough nodes answering |
//! | `quorumlock_lost_total` | counter | `cause` | locks found lost: `expired`, `not_ours`, `already_gone` |
//! | `quorumlock_extensions_total` | counter | `outcome` | extensions: `ok`, `failed` |
//! | `quorumlock_acquire_seconds` | histogram | `outcome` | time of each `acquire`/`try_acquire` call, retries included |

use std::time::Duration;

use crate::error::LossCause;
use crate::Error;

/// The `outcome` label of an error.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn outcome(result: Result<(), &Error>) -> &'static str {
    match result {
        Ok(()) => "acquired",
        Err(e) if e.is_contended() => "contended",
        Err(e) if e.is_unavailable() => "unavailable",
        Err(e) if e.is_refused() => "refused",
        Err(_) => "error",
    }
}

/// One attempt ended.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn attempt(result: Result<(), &Error>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = outcome(result);
        metrics::counter!("quorumlock_attempts_total", "outcome" => outcome).increment(1);
        match outcome {
            "acquired" => metrics::counter!("quorumlock_acquisitions_total").increment(1),
            "contended" => metrics::counter!("quorumlock_contended_total").increment(1),
            "unavailable" => metrics::counter!("quorumlock_unavailable_total").increment(1),
            _ => {}
        }
    }
}

/// An `acquire` or `try_acquire` call ended after `took`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn acquire_call(result: Result<(), &Error>, took: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("quorumlock_acquire_seconds", "outcome" => outcome(result))
        .record(took.as_secs_f64());
}

/// A lock was found lost.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn lost(cause: LossCause) {
    #[cfg(feature = "metrics")]
    {
        let cause = match cause {
            LossCause::Expired => "expired",
            LossCause::NotOurs => "not_ours",
            LossCause::AlreadyGone => "already_gone",
        };
        metrics::counter!("quorumlock_lost_total", "cause" => cause).increment(1);
    }
}

/// An extension ended.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn extension(ok: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!("quorumlock_extensions_total", "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
}
