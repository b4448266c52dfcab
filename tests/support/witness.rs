//! The safety witness: many clients, each with its own `Redlock`, compete
//! for one or several resources; every successful acquisition records the
//! window the library promised (`[acquired, min(release, deadline)]`). Two
//! overlapping windows on one resource are a safety violation. The report
//! also measures liveness: the longest stretch with no holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::{Redlock, RetryPolicy};

/// What the clients do.
#[derive(Clone)]
pub struct Load {
    pub clients: usize,
    pub resources: Vec<String>,
    pub ttl: Duration,
    /// Time spent holding each lock.
    pub hold: Duration,
    pub node_timeout: Duration,
    /// Drift allowance factor (the builder's default is 0.01).
    pub drift_factor: f64,
    /// Random wait after a failed attempt, as a retry policy would.
    pub backoff: (Duration, Duration),
    pub duration: Duration,
}

impl Load {
    /// 8 clients on `resources`, 1 s TTL, 2 ms holds, for `duration`;
    /// after a failure a client waits 50–100 ms (longer than the node
    /// timeout, as the README advises), like the default retry policy.
    pub fn new(resources: &[String], duration: Duration) -> Self {
        Self {
            clients: 8,
            resources: resources.to_vec(),
            ttl: Duration::from_secs(1),
            hold: Duration::from_millis(2),
            node_timeout: Duration::from_millis(50),
            drift_factor: 0.01,
            backoff: (Duration::from_millis(50), Duration::from_millis(100)),
            duration,
        }
    }
}

/// Figures from one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub acquisitions: usize,
    pub violations: usize,
    pub contended: usize,
    pub unavailable: usize,
    pub other_errors: usize,
    /// Calls that did not return within 5 s.
    pub hung: usize,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub max_latency: Duration,
    /// Longest time any resource had no holder while clients were trying.
    pub longest_gap: Duration,
    pub elapsed: Duration,
    /// The last error other than contention, with its source.
    pub last_error: Option<String>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.acquisitions as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acquisitions ({:.0}/s), {} violations, longest no-holder gap {:?}, \
             errors: {} contended / {} unavailable / {} other, {} hung, latency p50 {:?} p99 {:?} max {:?}",
            self.acquisitions,
            self.rate(),
            self.violations,
            self.longest_gap,
            self.contended,
            self.unavailable,
            self.other_errors,
            self.hung,
            self.latency_p50,
            self.latency_p99,
            self.max_latency
        )?;
        if let Some(e) = &self.last_error {
            write!(f, ", last error: {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Record {
    windows: HashMap<String, Vec<(Instant, Instant)>>,
    latencies: Vec<Duration>,
    contended: usize,
    unavailable: usize,
    other_errors: usize,
    hung: usize,
    last_error: Option<String>,
}

/// Runs `load` against `urls` and judges it.
pub async fn run(urls: &[String], load: &Load) -> Report {
    let record = Arc::new(Mutex::new(Record::default()));
    let start = Instant::now();
    let end = start + load.duration;
    let mut tasks = Vec::new();
    for _ in 0..load.clients {
        let (urls, load, record) = (urls.to_vec(), load.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let redlock = Redlock::builder()
                .nodes(urls.iter().map(String::as_str))
                .node_timeout(load.node_timeout)
                .drift(load.drift_factor, Duration::from_millis(2))
                .retry(RetryPolicy::none())
                .build()
                .await
                .unwrap();
            client(redlock, load, record, end).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let record = Arc::try_unwrap(record).ok().unwrap().into_inner().unwrap();
    judge(record, start, start + elapsed, elapsed)
}

async fn client(redlock: Redlock, load: Load, record: Arc<Mutex<Record>>, end: Instant) {
    const HANG: Duration = Duration::from_secs(5);
    while Instant::now() < end {
        let resource = &load.resources[rand::random_range(0..load.resources.len())];
        let asked = Instant::now();
        match tokio::time::timeout(HANG, redlock.try_acquire(resource, load.ttl)).await {
            Ok(Ok(lock)) => {
                let acquired = Instant::now();
                tokio::time::sleep(load.hold).await;
                let until = Instant::now().min(lock.deadline());
                {
                    let mut r = record.lock().unwrap();
                    r.latencies.push(acquired - asked);
                    r.windows
                        .entry(resource.clone())
                        .or_default()
                        .push((acquired, until));
                }
                if tokio::time::timeout(HANG, lock.release()).await.is_err() {
                    record.lock().unwrap().hung += 1;
                }
            }
            Ok(Err(e)) => {
                {
                    let mut r = record.lock().unwrap();
                    if e.is_contended() {
                        r.contended += 1;
                    } else if e.is_unavailable() {
                        r.unavailable += 1;
                    } else {
                        r.other_errors += 1;
                    }
                    if !e.is_contended() {
                        let source = std::error::Error::source(&e)
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default();
                        r.last_error = Some(format!("{e}{source}"));
                    }
                }
                let (min, max) = load.backoff;
                let jitter = rand::random_range(0..=(max - min).as_micros() as u64);
                tokio::time::sleep(min + Duration::from_micros(jitter)).await;
            }
            Err(_) => record.lock().unwrap().hung += 1,
        }
    }
}

fn judge(mut record: Record, start: Instant, end: Instant, elapsed: Duration) -> Report {
    let mut report = Report {
        contended: record.contended,
        unavailable: record.unavailable,
        other_errors: record.other_errors,
        hung: record.hung,
        last_error: record.last_error.take(),
        elapsed,
        ..Report::default()
    };
    for windows in record.windows.values_mut() {
        report.acquisitions += windows.len();
        let (violations, gap) = scan(windows, start, end);
        report.violations += violations;
        report.longest_gap = report.longest_gap.max(gap);
    }
    if record.windows.is_empty() {
        report.longest_gap = elapsed;
    }
    record.latencies.sort();
    let pick = |q: f64| {
        let l = &record.latencies;
        if l.is_empty() {
            Duration::ZERO
        } else {
            l[((l.len() - 1) as f64 * q) as usize]
        }
    };
    report.latency_p50 = pick(0.5);
    report.latency_p99 = pick(0.99);
    report.max_latency = record.latencies.last().copied().unwrap_or_default();
    report
}

/// Holders' windows `[from, until]` of one resource that start before an
/// earlier window (in start order) has ended: safety violations. Sorts
/// `windows`.
pub fn overlaps(windows: &mut [(Instant, Instant)]) -> usize {
    let start = windows
        .iter()
        .map(|w| w.0)
        .min()
        .unwrap_or_else(Instant::now);
    scan(windows, start, start).0
}

/// Sorts `windows` and returns (violations, longest stretch without a
/// holder between `start` and `end`).
fn scan(windows: &mut [(Instant, Instant)], start: Instant, end: Instant) -> (usize, Duration) {
    windows.sort();
    let (mut violations, mut gap) = (0, Duration::ZERO);
    let mut covered_until = start;
    for &(from, until) in windows.iter() {
        if from < covered_until {
            violations += 1;
            if std::env::var_os("WITNESS_DEBUG").is_some() {
                eprintln!(
                    "violation: window {:?}..{:?} starts before {:?}",
                    from - start,
                    until - start,
                    covered_until - start
                );
            }
        } else {
            gap = gap.max(from - covered_until);
        }
        covered_until = covered_until.max(until);
    }
    (
        violations,
        gap.max(end.saturating_duration_since(covered_until)),
    )
}
