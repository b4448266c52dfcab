//! The safety witness: many clients, each with its own `Redlock`, compete
//! for one or several resources; every successful acquisition records the
//! window the library promised (`[acquired, min(release, deadline)]`). Two
//! overlapping windows on one resource are a safety violation. The report
//! also measures liveness: the longest stretch with no holder, and how
//! long clients waited for their holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorumlock::{Redlock, RetryPolicy};

/// How a client asks for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// One `try_acquire`, then the client's own random back-off
    /// ([`Load::backoff`]) after a failure.
    TryLoop,
    /// `acquire` with the default retry policy (wake-ups on release),
    /// attempts unlimited, bounded by the run's end.
    Acquire,
    /// Shared holds (a read lock's) by one `try_read` and the back-off
    /// after a failure, as [`TryLoop`](Self::TryLoop); exclusive ones
    /// (writes, and all of a mutex's or a semaphore's) by the waiting call,
    /// as [`Acquire`](Self::Acquire).
    TryReadWaitWrite,
}

impl Style {
    /// Whether a hold of this kind is asked for by the waiting call.
    fn waits(self, exclusive: bool) -> bool {
        match self {
            Self::TryLoop => false,
            Self::Acquire => true,
            Self::TryReadWaitWrite => exclusive,
        }
    }
}

/// What the clients lock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// The mutex: no two windows of a resource may overlap.
    Mutex,
    /// A semaphore of this many permits per resource: no more windows may
    /// overlap at any instant.
    Semaphore(u32),
    /// A read-write lock per resource, written by this share (0..=1) of
    /// the holds: a write window may overlap no other window.
    RwLock(f64),
}

/// What the clients do.
#[derive(Clone)]
pub struct Load {
    pub kind: Kind,
    /// A share of holds (0..1) that stall past the TTL before releasing,
    /// as a holder paused by GC or a stopped VM would.
    pub paused_share: f64,
    pub clients: usize,
    pub style: Style,
    pub resources: Vec<String>,
    pub ttl: Duration,
    /// Time spent holding each lock.
    pub hold: Duration,
    /// If set, each hold instead lasts a random time in this range.
    pub hold_range: Option<(Duration, Duration)>,
    pub node_timeout: Duration,
    /// Drift allowance factor (the builder's default is 0.01).
    pub drift_factor: f64,
    /// Random wait after a failed attempt, as a retry policy would.
    pub backoff: (Duration, Duration),
    /// The managers' retry policy. `None`: the style's (a single attempt
    /// for a try loop; for waiting calls the default delays, attempts
    /// unlimited).
    pub retry: Option<RetryPolicy>,
    /// The start of the run that the longest gap leaves out (the clients'
    /// first connections and ballots).
    pub gap_grace: Duration,
    pub duration: Duration,
}

impl Load {
    /// 8 clients on `resources`, 1 s TTL, 2 ms holds, for `duration`;
    /// after a failure a client waits 50–100 ms (longer than the node
    /// timeout, as the README advises), like the default retry policy.
    pub fn new(resources: &[String], duration: Duration) -> Self {
        Self {
            kind: Kind::Mutex,
            paused_share: 0.0,
            clients: 8,
            style: Style::TryLoop,
            resources: resources.to_vec(),
            ttl: Duration::from_secs(1),
            hold: Duration::from_millis(2),
            hold_range: None,
            node_timeout: Duration::from_millis(50),
            drift_factor: 0.01,
            backoff: (Duration::from_millis(50), Duration::from_millis(100)),
            retry: None,
            gap_grace: Duration::ZERO,
            duration,
        }
    }

    /// How long the next hold lasts.
    fn next_hold(&self) -> Duration {
        self.hold_range.map_or(self.hold, between)
    }
}

/// A random time in `min..=max`.
fn between((min, max): (Duration, Duration)) -> Duration {
    let extra = max.saturating_sub(min).as_micros() as u64;
    min + Duration::from_micros(rand::random_range(0..=extra))
}

/// Figures from one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub acquisitions: usize,
    /// Of those, read locks (for a read-write lock).
    pub reads: usize,
    pub violations: usize,
    pub contended: usize,
    pub unavailable: usize,
    pub other_errors: usize,
    /// Calls that did not return within 5 s.
    pub hung: usize,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub max_latency: Duration,
    /// Each hold's wait, sorted: from a client's first attempt at a hold,
    /// through failed attempts and back-offs, until it held the lock.
    pub waits: Vec<Duration>,
    /// Longest time any resource had no holder while clients were trying.
    pub longest_gap: Duration,
    /// When that stretch began, from the start of the run.
    pub longest_gap_at: Duration,
    pub elapsed: Duration,
    /// The last error other than contention, with its source.
    pub last_error: Option<String>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.acquisitions as f64 / self.elapsed.as_secs_f64()
    }

    /// Holds that were exclusive (writes, for a read-write lock).
    pub fn exclusive(&self) -> usize {
        self.acquisitions - self.reads
    }
}

/// The `q` quantile (0..=1) of sorted `values`; zero if there are none.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values[((values.len() - 1) as f64 * q.clamp(0.0, 1.0)) as usize]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acquisitions ({:.0}/s), {} violations, longest no-holder gap {:?} (at {:?}), \
             errors: {} contended / {} unavailable / {} other, {} hung, latency p50 {:?} p99 {:?} max {:?}",
            self.acquisitions,
            self.rate(),
            self.violations,
            self.longest_gap,
            self.longest_gap_at,
            self.contended,
            self.unavailable,
            self.other_errors,
            self.hung,
            self.latency_p50,
            self.latency_p99,
            self.max_latency
        )?;
        if self.reads > 0 {
            write!(f, ", {} of them reads", self.reads)?;
        }
        if let Some(e) = &self.last_error {
            write!(f, ", last error: {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Record {
    /// Per resource: `[acquired, until]` and whether it was exclusive (a
    /// write; a mutex's and a permit's count as exclusive too).
    windows: HashMap<String, Vec<(Instant, Instant, bool)>>,
    /// Holds by readers.
    reads: usize,
    latencies: Vec<Duration>,
    waits: Vec<Duration>,
    contended: usize,
    unavailable: usize,
    other_errors: usize,
    hung: usize,
    last_error: Option<String>,
}

/// Runs `load` against `urls` and judges it.
pub async fn run(urls: &[String], load: &Load) -> Report {
    let urls = urls.to_vec();
    run_on(
        move || Redlock::builder().nodes(urls.iter().map(String::as_str)),
        load,
    )
    .await
}

/// Runs `load` on managers whose nodes `nodes` gives (for nodes that are
/// not addresses: clusters, the service's own connections), and judges it.
pub async fn run_on(nodes: impl Fn() -> quorumlock::Builder, load: &Load) -> Report {
    let record = Arc::new(Mutex::new(Record::default()));
    let retry = load.retry.clone().unwrap_or_else(|| match load.style {
        Style::TryLoop => RetryPolicy::none(),
        Style::Acquire | Style::TryReadWaitWrite => RetryPolicy::new().attempts(u32::MAX),
    });
    // Every client's manager first: the run measures locking, not start-up.
    let managers = futures::future::join_all((0..load.clients).map(|_| {
        nodes()
            .node_timeout(load.node_timeout)
            .drift(load.drift_factor, Duration::from_millis(2))
            .retry(retry.clone())
            .build()
    }))
    .await;
    let start = Instant::now();
    let end = start + load.duration;
    let mut tasks = Vec::new();
    for redlock in managers {
        let (redlock, load, record) = (redlock.unwrap(), load.clone(), record.clone());
        tasks.push(tokio::spawn(client(redlock, load, record, end)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let record = Arc::try_unwrap(record).ok().unwrap().into_inner().unwrap();
    judge(record, load.kind, start, load.gap_grace, elapsed)
}

async fn client(redlock: Redlock, load: Load, record: Arc<Mutex<Record>>, end: Instant) {
    // One handle per resource, as an application keeps it: a semaphore
    // checks its permit count once per handle.
    let semaphores: HashMap<String, quorumlock::Semaphore> = load
        .resources
        .iter()
        .map(|r| (r.clone(), redlock.semaphore(r, capacity(load.kind))))
        .collect();
    let rw_locks: HashMap<String, quorumlock::RwLock> = load
        .resources
        .iter()
        .map(|r| (r.clone(), redlock.rw_lock(r)))
        .collect();
    const HANG: Duration = Duration::from_secs(5);
    // When the client began to want its next hold.
    let mut wanted = None;
    while Instant::now() < end {
        let resource = &load.resources[rand::random_range(0..load.resources.len())];
        let write = match load.kind {
            Kind::RwLock(share) => rand::random_bool(share.clamp(0.0, 1.0)),
            _ => true,
        };
        let rw = &rw_locks[resource];
        let waits = load.style.waits(write);
        let asked = Instant::now();
        let wanted_since = *wanted.get_or_insert(asked);
        let attempt = async {
            if waits {
                // Cancelled (and so cleaned up) when the run ends.
                let left = end.saturating_duration_since(Instant::now());
                let semaphore = &semaphores[resource];
                let acquire = async {
                    match load.kind {
                        Kind::Mutex => redlock.acquire(resource, load.ttl).await,
                        Kind::Semaphore(_) => semaphore.acquire(load.ttl).await,
                        Kind::RwLock(_) if write => rw.write(load.ttl).await,
                        Kind::RwLock(_) => rw.read(load.ttl).await,
                    }
                };
                tokio::time::timeout(left, acquire).await.ok()
            } else {
                Some(match load.kind {
                    Kind::Mutex => redlock.try_acquire(resource, load.ttl).await,
                    Kind::Semaphore(_) => semaphores[resource].try_acquire(load.ttl).await,
                    Kind::RwLock(_) if write => rw.try_write(load.ttl).await,
                    Kind::RwLock(_) => rw.try_read(load.ttl).await,
                })
            }
        };
        match tokio::time::timeout(HANG, attempt).await {
            Ok(None) => break,
            Ok(Some(Ok(lock))) => {
                let acquired = Instant::now();
                wanted = None;
                let hold = load.next_hold();
                tokio::time::sleep(hold).await;
                if load.paused_share > 0.0 && rand::random_bool(load.paused_share) {
                    // Paused past the deadline: the window ends there.
                    tokio::time::sleep(load.ttl + hold).await;
                }
                let until = Instant::now().min(lock.deadline());
                {
                    let mut r = record.lock().unwrap();
                    r.latencies.push(acquired - asked);
                    r.waits.push(acquired - wanted_since);
                    r.reads += usize::from(!write);
                    r.windows
                        .entry(resource.clone())
                        .or_default()
                        .push((acquired, until, write));
                }
                if tokio::time::timeout(HANG, lock.release()).await.is_err() {
                    record.lock().unwrap().hung += 1;
                }
            }
            Ok(Some(Err(e))) => {
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
                if waits {
                    continue;
                }
                tokio::time::sleep(between(load.backoff)).await;
            }
            Err(_) => record.lock().unwrap().hung += 1,
        }
    }
}

/// How many windows of one resource may overlap.
fn capacity(kind: Kind) -> u32 {
    match kind {
        Kind::Mutex | Kind::RwLock(_) => 1,
        Kind::Semaphore(permits) => permits,
    }
}

/// Judges the run that began at `start` and lasted `elapsed`; the longest
/// gap is looked for from `grace` into it.
fn judge(
    mut record: Record,
    kind: Kind,
    start: Instant,
    grace: Duration,
    elapsed: Duration,
) -> Report {
    let end = start + elapsed;
    let gaps_from = (start + grace).min(end);
    let mut report = Report {
        contended: record.contended,
        unavailable: record.unavailable,
        other_errors: record.other_errors,
        hung: record.hung,
        reads: record.reads,
        last_error: record.last_error.take(),
        elapsed,
        ..Report::default()
    };
    for windows in record.windows.values_mut() {
        report.acquisitions += windows.len();
        let (violations, (gap, at)) = scan(windows, capacity(kind), gaps_from, end);
        report.violations += violations;
        if gap > report.longest_gap {
            report.longest_gap = gap;
            report.longest_gap_at = at - start;
        }
    }
    if record.windows.is_empty() {
        report.longest_gap = end - gaps_from;
        report.longest_gap_at = gaps_from - start;
    }
    record.latencies.sort();
    report.latency_p50 = quantile(&record.latencies, 0.5);
    report.latency_p99 = quantile(&record.latencies, 0.99);
    report.max_latency = record.latencies.last().copied().unwrap_or_default();
    record.waits.sort();
    report.waits = record.waits;
    report
}

/// Holders' windows `[from, until]` of one resource that start before an
/// earlier window (in start order) has ended: safety violations. Sorts
/// `windows`.
pub fn overlaps(windows: &mut [(Instant, Instant)]) -> usize {
    overlaps_over(windows, 1)
}

/// Windows that start while `capacity` others are still open.
pub fn overlaps_over(windows: &mut [(Instant, Instant)], capacity: u32) -> usize {
    let mut all: Vec<(Instant, Instant, bool)> = windows.iter().map(|w| (w.0, w.1, true)).collect();
    let start = all.iter().map(|w| w.0).min().unwrap_or_else(Instant::now);
    scan(&mut all, capacity, start, start).0
}

/// Read-write windows `(from, until, write)` that break the rule: a
/// write overlapping any other window.
pub fn rw_overlaps(windows: &mut [(Instant, Instant, bool)]) -> usize {
    let start = windows
        .iter()
        .map(|w| w.0)
        .min()
        .unwrap_or_else(Instant::now);
    scan(windows, 1, start, start).0
}

/// Sorts `windows` and returns (violations: windows that start while
/// `capacity` others are still open, (longest stretch without a holder
/// between `start` and `end`, when it began)).
///
/// Shared (read) windows may overlap each other, up to any number; an
/// exclusive one may overlap no write, and no more than `capacity - 1`
/// others (a mutex: none; a semaphore's permits: P - 1), nor any read.
fn scan(
    windows: &mut [(Instant, Instant, bool)],
    capacity: u32,
    start: Instant,
    end: Instant,
) -> (usize, (Duration, Instant)) {
    windows.sort_by_key(|w| (w.0, w.1));
    let (mut violations, mut gap) = (0, (Duration::ZERO, start));
    let mut covered_until = start;
    // Ends of the windows still open, earliest first, by kind.
    let mut open_exclusive: std::collections::BinaryHeap<std::cmp::Reverse<Instant>> =
        Default::default();
    let mut open_shared: std::collections::BinaryHeap<std::cmp::Reverse<Instant>> =
        Default::default();
    for &(from, until, exclusive) in windows.iter() {
        for open in [&mut open_exclusive, &mut open_shared] {
            while open.peek().is_some_and(|end| end.0 <= from) {
                open.pop();
            }
        }
        let full = if exclusive {
            open_exclusive.len() >= capacity as usize || !open_shared.is_empty()
        } else {
            !open_exclusive.is_empty()
        };
        if exclusive {
            open_exclusive.push(std::cmp::Reverse(until));
        } else {
            open_shared.push(std::cmp::Reverse(until));
        }
        if full {
            violations += 1;
            if std::env::var_os("WITNESS_DEBUG").is_some() {
                eprintln!(
                    "violation: window {:?}..{:?} starts before {:?}",
                    from - start,
                    until - start,
                    covered_until - start
                );
            }
        } else if from.saturating_duration_since(covered_until) > gap.0 {
            gap = (from - covered_until, covered_until);
        }
        covered_until = covered_until.max(until);
    }
    let tail = end.saturating_duration_since(covered_until);
    if tail > gap.0 {
        gap = (tail, covered_until);
    }
    (violations, gap)
}
