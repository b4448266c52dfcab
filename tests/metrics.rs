//! With feature `metrics`, quorumlock reports on the `metrics` facade: a
//! recorder installed by the service sees attempts, acquisitions,
//! contention, extensions, losses and the acquire latency.
#![cfg(feature = "metrics")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use support::unique;

/// Every value recorded, by `name{label=value,...}`.
#[derive(Default)]
struct Seen(Mutex<HashMap<String, Vec<f64>>>);

struct Handle {
    key: String,
    seen: Arc<Seen>,
}

impl Handle {
    fn push(&self, value: f64) {
        let mut seen = self.seen.0.lock().unwrap();
        seen.entry(self.key.clone()).or_default().push(value);
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

struct Collect(Arc<Seen>);

impl Collect {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Handle {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            seen: self.0.clone(),
        })
    }
}

impl Recorder for Collect {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

fn seen() -> &'static Arc<Seen> {
    static SEEN: OnceLock<Arc<Seen>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Seen::default());
        metrics::set_global_recorder(Collect(seen.clone())).unwrap();
        seen
    })
}

/// How many values were recorded under `key`, and their sum.
fn count(key: &str) -> (usize, f64) {
    let seen = seen().0.lock().unwrap();
    seen.get(key)
        .map(|v| (v.len(), v.iter().sum()))
        .unwrap_or_default()
}

#[tokio::test]
async fn acquisitions_contention_extensions_losses_and_latency_are_reported() {
    let seen = seen();
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let redlock = support::manager(&urls).await;
    let resource = unique("metrics");
    seen.0.lock().unwrap().clear();

    let mut lock = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(count("quorumlock_acquisitions_total{}").1, 1.0);
    assert_eq!(count("quorumlock_attempts_total{outcome=acquired}").1, 1.0);
    let (samples, secs) = count("quorumlock_acquire_seconds{outcome=acquired}");
    assert!(samples == 1 && secs > 0.0 && secs < 1.0, "{samples} {secs}");

    let err = redlock
        .try_acquire(&resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_contended());
    assert_eq!(count("quorumlock_contended_total{}").1, 1.0);
    assert_eq!(count("quorumlock_acquire_seconds{outcome=contended}").0, 1);

    lock.extend(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count("quorumlock_extensions_total{outcome=ok}").1, 1.0);

    for url in &urls {
        support::admin(url, &["SET", lock.key(), "someone-else"]).await;
    }
    assert!(lock
        .extend(Duration::from_secs(5))
        .await
        .unwrap_err()
        .is_lost());
    assert_eq!(count("quorumlock_lost_total{cause=not_ours}").1, 1.0);
    assert_eq!(count("quorumlock_extensions_total{outcome=failed}").1, 1.0);
}
