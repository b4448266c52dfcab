//! Run: `cargo bench --bench latency` (starts its own local nodes; set
//! `REDLOCK_TEST_NODES=url,url,url` to use a running trio for the N = 3 rows).
//!
//! Measures quorumlock against the raw Redis floor in the same run: the same
//! kind of connections (one `ConnectionManager` per node) used directly,
//! `SET NX PX` to all nodes joined concurrently and the compare-and-delete
//! script by EVALSHA, with no library in between. Every library figure is
//! also given as a ratio to that floor, since absolute times on a shared
//! machine drift. `BENCH_QUICK=1` makes a short smoke pass.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use quorumlock::{Redlock, RetryPolicy};
use redis::aio::ConnectionManager;
use redis::Script;

const RELEASE: &str = include_str!("../src/scripts/release.lua");
const TTL: Duration = Duration::from_secs(10);

/// The floor: the same operations with no library in between.
#[derive(Clone)]
struct Raw {
    conns: Vec<ConnectionManager>,
    release: Arc<Script>,
}

impl Raw {
    async fn connect(urls: &[String]) -> Self {
        let mut conns = Vec::new();
        for url in urls {
            let client = redis::Client::open(url.as_str()).unwrap();
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(None)
                .set_number_of_retries(0);
            conns.push(ConnectionManager::new_lazy_with_config(client, config).unwrap());
        }
        let raw = Self {
            conns,
            release: Arc::new(Script::new(RELEASE)),
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), raw.acquire("warm", "up")).await;
        raw.release("warm", "up").await;
        raw
    }

    /// `SET NX PX` on every node at once; `true` with a majority of OKs.
    async fn acquire(&self, key: &str, token: &str) -> bool {
        let calls = self.conns.iter().map(|c| {
            let mut c = c.clone();
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async::<Option<String>>(&mut c)
                    .await
            }
        });
        let ok = join_all(calls)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count();
        ok > self.conns.len() / 2
    }

    async fn release(&self, key: &str, token: &str) {
        let calls = self.conns.iter().map(|c| {
            let mut c = c.clone();
            let script = self.release.clone();
            async move {
                script
                    .key(key)
                    .arg(token)
                    .arg("1")
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        });
        join_all(calls).await;
    }
}

async fn library(urls: &[String], retry: RetryPolicy) -> Redlock {
    Redlock::builder()
        .nodes(urls.iter().map(String::as_str))
        .retry(retry)
        .build()
        .await
        .unwrap()
}

fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// p50 and p99 in microseconds.
fn p50_p99(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (
        pct(&v, 0.5).as_secs_f64() * 1e6,
        pct(&v, 0.99).as_secs_f64() * 1e6,
    )
}

struct Table {
    rows: Vec<(String, String, String, String)>,
}

impl Table {
    fn row(&mut self, what: &str, floor: String, lib: String, ratio: String) {
        println!("  {what:<48} floor {floor:>12}  quorumlock {lib:>12}  ratio {ratio}");
        self.rows.push((what.to_string(), floor, lib, ratio));
    }

    fn print(&self) {
        println!("\n| scenario | raw floor | quorumlock | ratio |\n|---|---|---|---|");
        for (w, f, l, r) in &self.rows {
            println!("| {w} | {f} | {l} | {r} |");
        }
    }
}

/// Scenario 1 (and 4, 5): uncontended acquire, and acquire + release,
/// floor and library interleaved per iteration.
async fn uncontended(urls: &[String], iterations: usize) -> [(f64, f64); 4] {
    let raw = Raw::connect(urls).await;
    let lib = library(urls, RetryPolicy::none()).await;
    let (mut fa, mut far, mut la, mut lar) = (vec![], vec![], vec![], vec![]);
    for i in 0..iterations {
        let key = format!("bench:u:{i}");
        let t = token();
        let s = Instant::now();
        assert!(raw.acquire(&key, &t).await);
        fa.push(s.elapsed());
        raw.release(&key, &t).await;
        far.push(s.elapsed());

        let s = Instant::now();
        let lock = lib.try_acquire(&key, TTL).await.unwrap();
        la.push(s.elapsed());
        lock.release().await.unwrap();
        lar.push(s.elapsed());
    }
    [p50_p99(fa), p50_p99(far), p50_p99(la), p50_p99(lar)]
}

/// CPU seconds used so far by this process (all threads) and by the nodes.
async fn cpu_used(urls: &[String]) -> (f64, f64) {
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // After the command name, utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN);
    let mut nodes = 0.0;
    for url in urls {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for line in info.lines() {
            if let Some(v) = line
                .strip_prefix("used_cpu_user:")
                .or_else(|| line.strip_prefix("used_cpu_sys:"))
            {
                nodes += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    (own, nodes)
}

/// One side's figures from scenario 2.
#[derive(Default, Clone, Copy)]
struct Side {
    cycles: usize,
    /// CPU seconds of this process and of the nodes.
    client_cpu: f64,
    node_cpu: f64,
}

impl Side {
    /// CPU microseconds per cycle: (client, nodes).
    fn cpu_per_cycle(&self) -> (f64, f64) {
        let n = self.cycles.max(1) as f64;
        (self.client_cpu / n * 1e6, self.node_cpu / n * 1e6)
    }

    fn total_cpu_per_cycle(&self) -> f64 {
        let (c, n) = self.cpu_per_cycle();
        c + n
    }
}

/// Scenario 2: 64 tasks on distinct keys, acquire + release cycles per
/// second. `which` is "both", "floor" or "library" (for profiling one
/// side). Floor and library take turns in rounds of one second (alternating
/// which goes first), so that a noisy neighbour on a shared machine costs
/// both alike. Returns both sides' totals and the median of the per-pair
/// ratios of cycles. CPU time per cycle (the client's and the nodes') is
/// the figure such noise disturbs least: on a saturated machine it is what
/// bounds throughput.
async fn throughput(urls: &[String], pairs: u32, which: &str) -> (Side, Side, f64) {
    let raw = Raw::connect(urls).await;
    let lib = library(urls, RetryPolicy::none()).await;
    let round = Duration::from_secs(1);
    let (mut floor, mut library) = (Side::default(), Side::default());
    let mut ratios = Vec::new();
    for r in 0..pairs {
        let (mut f, mut l) = (0, 0);
        for side in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
            if (side == 0 && which == "library") || (side == 1 && which == "floor") {
                continue;
            }
            let (own0, nodes0) = cpu_used(urls).await;
            let cycles = if side == 0 {
                f = floor_round(&raw, round).await;
                f
            } else {
                l = library_round(&lib, round).await;
                l
            };
            let (own1, nodes1) = cpu_used(urls).await;
            let total = if side == 0 { &mut floor } else { &mut library };
            total.cycles += cycles;
            total.client_cpu += own1 - own0;
            total.node_cpu += nodes1 - nodes0;
        }
        if f > 0 && l > 0 {
            ratios.push(l as f64 / f as f64);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    (floor, library, median)
}

async fn floor_round(raw: &Raw, run: Duration) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + run;
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (raw, count) = (raw.clone(), count.clone());
            tokio::spawn(async move {
                let key = format!("bench:t:raw:{task}");
                while Instant::now() < end {
                    let t = token();
                    if raw.acquire(&key, &t).await {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    raw.release(&key, &t).await;
                }
            })
        })
        .collect();
    join_all(tasks).await;
    count.load(Ordering::Relaxed)
}

/// `try_acquire` calls on distinct keys that failed in scenario 2 (none
/// should: nobody else wants those keys), and the first few errors.
static FAILED: AtomicUsize = AtomicUsize::new(0);
static FIRST_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn failed(e: &str) {
    FAILED.fetch_add(1, Ordering::Relaxed);
    let mut first = FIRST_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    if first.len() < 5 {
        first.push(e.to_string());
    }
}

/// The failures counted so far, and their first errors.
fn failures() -> (usize, Vec<String>) {
    let first = FIRST_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    (FAILED.load(Ordering::Relaxed), first.clone())
}

async fn library_round(lib: &Redlock, run: Duration) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + run;
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (lib, count) = (lib.clone(), count.clone());
            tokio::spawn(async move {
                let key = format!("bench:t:lib:{task}");
                let mut last = String::new();
                while Instant::now() < end {
                    match lib.try_acquire(&key, TTL).await {
                        Ok(lock) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            last = lock.token().to_string();
                            if let Err(e) = lock.release().await {
                                failed(&format!("release: {e}"));
                            }
                        }
                        Err(e) => {
                            // BENCH_WHY=1: what the nodes hold now, the task's
                            // previous token shown as LAST.
                            let seen = match std::env::var_os("BENCH_WHY") {
                                Some(_) => match lib.inspect(&key).await {
                                    Ok(i) => format!("{:?}", i.nodes()).replace(&last, "LAST"),
                                    Err(e) => format!("{e}"),
                                },
                                None => String::new(),
                            };
                            failed(&format!("{e:?} {seen}"));
                        }
                    }
                }
            })
        })
        .collect();
    join_all(tasks).await;
    count.load(Ordering::Relaxed)
}

/// Scenario 6: the other primitives against the mutex and the floor.
/// Uncontended acquire + release of a mutex and of a permit (4 permits),
/// interleaved per iteration, p50 µs; then 64 tasks for `run` each, in
/// interleaved rounds: the floor on distinct keys, permits of one
/// semaphore of 64, and read locks of one read-write lock. Returns
/// ((floor, mutex, permit) p50s, (floor, permits, reads) cycles/s).
async fn primitives(
    urls: &[String],
    iterations: usize,
    run: Duration,
    rounds: u32,
) -> ((f64, f64, f64), (f64, f64, f64)) {
    let raw = Raw::connect(urls).await;
    let lib = library(urls, RetryPolicy::none()).await;
    let semaphore = lib.semaphore(&format!("bench:sem:{}", token()), 4);
    let (mut f, mut m, mut p) = (vec![], vec![], vec![]);
    for i in 0..iterations {
        let key = format!("bench:p:{i}");
        let t = token();
        let s = Instant::now();
        assert!(raw.acquire(&key, &t).await);
        raw.release(&key, &t).await;
        f.push(s.elapsed());
        let s = Instant::now();
        lib.try_acquire(&key, TTL)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        m.push(s.elapsed());
        let s = Instant::now();
        semaphore
            .try_acquire(TTL)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        p.push(s.elapsed());
    }
    let latency = (p50_p99(f).0, p50_p99(m).0, p50_p99(p).0);

    let waiting = library(urls, RetryPolicy::new().attempts(u32::MAX)).await;
    let permits = waiting.semaphore(&format!("bench:sem64:{}", token()), 64);
    let rw = waiting.rw_lock(&format!("bench:rw:{}", token()));
    let (mut floor, mut sem, mut reads) = (0, 0, 0);
    // CPU seconds (client, nodes) of each side's rounds.
    let mut cpu = [(0.0, 0.0); 3];
    let mut used = |side: usize, before: (f64, f64), after: (f64, f64)| {
        cpu[side].0 += after.0 - before.0;
        cpu[side].1 += after.1 - before.1;
    };
    for _ in 0..rounds {
        let before = cpu_used(urls).await;
        floor += floor_round(&raw, run).await;
        used(0, before, cpu_used(urls).await);
        let before = cpu_used(urls).await;
        let p = permits.clone();
        sem += tasks_round(run, move || {
            let p = p.clone();
            async move {
                match p.acquire(TTL).await {
                    Ok(lock) => lock.release().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        used(1, before, cpu_used(urls).await);
        let before = cpu_used(urls).await;
        let r = rw.clone();
        reads += tasks_round(run, move || {
            let r = r.clone();
            async move {
                match r.read(TTL).await {
                    Ok(lock) => lock.release().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        used(2, before, cpu_used(urls).await);
    }
    for ((who, cycles), (client, nodes)) in [("floor", floor), ("permits", sem), ("reads", reads)]
        .into_iter()
        .zip(cpu)
    {
        let n = cycles.max(1) as f64;
        println!(
            "(6) {who}: {:.1} + {:.1} µs CPU per cycle, client + nodes",
            client / n * 1e6,
            nodes / n * 1e6
        );
    }
    let secs = run.as_secs_f64() * f64::from(rounds);
    let throughput = (floor as f64 / secs, sem as f64 / secs, reads as f64 / secs);
    (latency, throughput)
}

/// 64 tasks run `cycle` until `run` has passed; counts the cycles that
/// acquired and released.
async fn tasks_round<F, Fut>(run: Duration, cycle: F) -> usize
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let count = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + run;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (count, cycle) = (count.clone(), cycle.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    if cycle().await {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    join_all(tasks).await;
    count.load(Ordering::Relaxed)
}

/// Figures of one contended run.
struct Contended {
    /// Acquisitions per second, all tasks together.
    rate: f64,
    /// Handoff gap p50, µs.
    gap: f64,
    /// Acquisitions of the least-served task over the most-served one's.
    fairness: f64,
}

/// Scenario 3: 8 tasks contend for one key, holding it ~1 ms, for the
/// floor's 1 ms poll loop and for the library's `acquire`.
async fn contended(urls: &[String], run: Duration) -> (Contended, Contended) {
    // Nanoseconds since `origin` of the last release, for handoff gaps.
    async fn measure<F, Fut>(run: Duration, cycle: F) -> Contended
    where
        F: Fn(Arc<AtomicU64>, Instant, Arc<Mutex<Vec<Duration>>>) -> Fut,
        Fut: std::future::Future<Output = usize> + Send + 'static,
    {
        let origin = Instant::now();
        let released = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(cycle(released.clone(), origin, gaps.clone())))
            .collect();
        let counts: Vec<usize> = join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let total: usize = counts.iter().sum();
        let (least, most) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        let gaps = std::mem::take(&mut *gaps.lock().unwrap());
        let (p50, _) = if gaps.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            p50_p99(gaps)
        };
        Contended {
            rate: total as f64 / run.as_secs_f64(),
            gap: p50,
            fairness: least as f64 / most.max(1) as f64,
        }
    }
    fn gap(released: &AtomicU64, origin: Instant, gaps: &Mutex<Vec<Duration>>) {
        let at = released.load(Ordering::SeqCst);
        if at > 0 {
            let now = origin.elapsed().as_nanos() as u64;
            gaps.lock()
                .unwrap()
                .push(Duration::from_nanos(now.saturating_sub(at)));
        }
    }
    let raw = Raw::connect(urls).await;
    let end = Instant::now() + run;
    let floor = measure(run, |released, origin, gaps| {
        let raw = raw.clone();
        async move {
            let mut n = 0;
            while Instant::now() < end {
                let t = token();
                if raw.acquire("bench:c:raw", &t).await {
                    gap(&released, origin, &gaps);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    released.store(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    raw.release("bench:c:raw", &t).await;
                } else {
                    raw.release("bench:c:raw", &t).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            n
        }
    })
    .await;
    // The library's default delays (100 ms + up to 100 ms): waiters are
    // woken by the release itself, and polling is only the fallback.
    let lib = library(urls, RetryPolicy::new().attempts(u32::MAX)).await;
    let end = Instant::now() + run;
    let library = measure(run, |released, origin, gaps| {
        let lib = lib.clone();
        async move {
            let mut n = 0;
            while Instant::now() < end {
                let Ok(lock) = lib.acquire("bench:c:lib", TTL).await else {
                    continue;
                };
                gap(&released, origin, &gaps);
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                released.store(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
                let _ = lock.release().await;
            }
            n
        }
    })
    .await;
    (floor, library)
}

/// Scenarios (4) and (5).
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Freeze,
}

/// Uncontended acquire with node 2 of a fresh trio killed or frozen, against
/// a floor over the two survivors (same run) and against (1)'s `base`.
async fn one_node_down(fault: Fault, iterations: usize, base: (f64, f64), table: &mut Table) {
    let Some(mut cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let lib = library(&urls, RetryPolicy::none()).await;
    let survivors = Raw::connect(&urls[..2]).await;
    let name = match fault {
        Fault::Kill => {
            cluster.kill(2);
            "N=3 (4) one node killed"
        }
        Fault::Freeze => {
            cluster.freeze(2);
            "N=3 (5) one node frozen"
        }
    };
    let (mut v, mut f) = (Vec::new(), Vec::new());
    for i in 0..iterations {
        let key = format!("bench:down:{i}");
        let t = token();
        let s = Instant::now();
        assert!(survivors.acquire(&key, &t).await);
        f.push(s.elapsed());
        survivors.release(&key, &t).await;
        let s = Instant::now();
        let lock = lib.try_acquire(&key, TTL).await.unwrap();
        v.push(s.elapsed());
        let _ = lock.release().await;
    }
    if fault == Fault::Freeze {
        cluster.thaw(2);
    }
    let ((fp50, fp99), (p50, p99)) = (p50_p99(f), p50_p99(v));
    for (what, floor, lib) in [
        ("acquire p50 (vs 2-node floor)", fp50, p50),
        ("acquire p99 (vs 2-node floor)", fp99, p99),
        ("acquire p50 (vs (1))", base.0, p50),
        ("acquire p99 (vs (1))", base.1, p99),
    ] {
        table.row(
            &format!("{name}: {what}"),
            us(floor),
            us(lib),
            format!("{:.2}x", lib / floor),
        );
    }
}

fn us(v: f64) -> String {
    format!("{v:.0} µs")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; anything else is ignored.
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    // BENCH_ONLY=floor|library|both runs scenario 2 alone (for profiling);
    // BENCH_ONLY=contended runs scenario 3 alone, BENCH_ONLY=primitives
    // scenario 6.
    let only = std::env::var("BENCH_ONLY").ok();
    let iterations = if quick { 50 } else { 3000 };
    let run = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let mut table = Table { rows: Vec::new() };

    let sizes: &[usize] = if only.is_some() { &[3] } else { &[1, 3, 5] };
    // BENCH_ONLY=uncontended: scenario 1 alone, at full length (run it
    // under `taskset -c 0` to see the client's own CPU time per acquire).
    let uncontended_only = only.as_deref() == Some("uncontended");
    for &n in sizes {
        let (urls, _cluster) = match support::nodes(n) {
            Some(nodes) => nodes,
            None => continue,
        };
        println!("N = {n}");
        let [fa, far, la, lar] = uncontended(
            &urls,
            if only.is_some() && !uncontended_only {
                10
            } else {
                iterations
            },
        )
        .await;
        table.row(
            &format!("N={n} (1) acquire p50"),
            us(fa.0),
            us(la.0),
            format!("{:.2}x", la.0 / fa.0),
        );
        table.row(
            &format!("N={n} (1) acquire p99"),
            us(fa.1),
            us(la.1),
            format!("{:.2}x", la.1 / fa.1),
        );
        table.row(
            &format!("N={n} (1) acquire+release p50"),
            us(far.0),
            us(lar.0),
            format!("{:.2}x", lar.0 / far.0),
        );
        table.row(
            &format!("N={n} (1) acquire+release p99"),
            us(far.1),
            us(lar.1),
            format!("{:.2}x", lar.1 / far.1),
        );
        if n != 3 {
            continue;
        }
        if uncontended_only {
            break;
        }
        if only.as_deref() == Some("primitives") {
            let ((f, m, p), (tf, ts, tr)) = primitives(&urls, 300, run, 1).await;
            println!(
                "acquire+release p50: floor {f:.0} µs, mutex {m:.0} µs ({:.2}x), permit {p:.0} µs ({:.2}x); \
                 64 tasks: floor {tf:.0}/s, permits {ts:.0}/s ({:.2}x), reads {tr:.0}/s ({:.2}x)",
                m / f,
                p / f,
                ts / tf,
                tr / tf
            );
            return;
        }
        if only.as_deref() == Some("contended") {
            let (f, l) = contended(&urls, run).await;
            for (who, c) in [("floor", f), ("quorumlock", l)] {
                println!(
                    "8 tasks, one key, {who}: {:.0}/s, handoff p50 {:.0} µs, fairness {:.2}",
                    c.rate, c.gap, c.fairness
                );
            }
            return;
        }
        if let Some(which) = only.as_deref() {
            let (f, l, m) = throughput(&urls, 6, which).await;
            let ((fc, fn_), (lc, ln)) = (f.cpu_per_cycle(), l.cpu_per_cycle());
            println!(
                "64-task throughput, {which}: floor {:.0}/s ({fc:.1} + {fn_:.1} µs CPU per cycle, \
                 client + nodes), quorumlock {:.0}/s ({lc:.1} + {ln:.1} µs); median ratio of \
                 interleaved pairs {m:.3}; CPU per cycle, floor / quorumlock {:.3}; \
                 failed try_acquire calls {:?}",
                f.cycles as f64 / 6.0,
                l.cycles as f64 / 6.0,
                f.total_cpu_per_cycle() / l.total_cpu_per_cycle(),
                failures(),
            );
            return;
        }
        let pairs = if quick { 1 } else { 8 };
        let (f, l, m) = throughput(&urls, pairs, "both").await;
        let secs = f64::from(pairs);
        table.row(
            "N=3 (2) 64 tasks, distinct keys, cycles/s",
            format!("{:.0}/s", f.cycles as f64 / secs),
            format!("{:.0}/s", l.cycles as f64 / secs),
            format!("{m:.2}x"),
        );
        let (failed, first) = failures();
        table.row(
            "N=3 (2) failed try_acquire calls on distinct keys",
            "-".to_string(),
            format!("{failed} of {}", l.cycles + failed),
            format!("{first:?}"),
        );
        table.row(
            "N=3 (2) CPU per cycle, client + nodes (ratio floor / quorumlock)",
            format!("{:.1} µs", f.total_cpu_per_cycle()),
            format!("{:.1} µs", l.total_cpu_per_cycle()),
            format!("{:.2}x", f.total_cpu_per_cycle() / l.total_cpu_per_cycle()),
        );
        let (f, l) = contended(&urls, run).await;
        table.row(
            "N=3 (3) 8 tasks, one key, acquisitions/s",
            format!("{:.0}/s", f.rate),
            format!("{:.0}/s", l.rate),
            format!("{:.2}x", l.rate / f.rate),
        );
        table.row(
            "N=3 (3) handoff gap p50",
            us(f.gap),
            us(l.gap),
            format!("{:.2}x", l.gap / f.gap),
        );
        table.row(
            "N=3 (3) fairness: least / most served task",
            format!("{:.2}", f.fairness),
            format!("{:.2}", l.fairness),
            format!("{:.2}x", l.fairness / f.fairness),
        );
        let ((pf, pm, pp), (tf, ts, tr)) = primitives(
            &urls,
            if quick { 50 } else { 1000 },
            run,
            if quick { 1 } else { 2 },
        )
        .await;
        table.row(
            "N=3 (6) mutex acquire+release p50 (same run as the permit)",
            us(pf),
            us(pm),
            format!("{:.2}x", pm / pf),
        );
        table.row(
            "N=3 (6) permit of 4 acquire+release p50",
            us(pf),
            us(pp),
            format!("{:.2}x", pp / pf),
        );
        table.row(
            "N=3 (6) 64 tasks, permits of one semaphore of 64, cycles/s",
            format!("{tf:.0}/s"),
            format!("{ts:.0}/s"),
            format!("{:.2}x", ts / tf),
        );
        table.row(
            "N=3 (6) 64 readers of one read-write lock, cycles/s",
            format!("{tf:.0}/s"),
            format!("{tr:.0}/s"),
            format!("{:.2}x", tr / tf),
        );
        let base = la;

        one_node_down(Fault::Kill, iterations, base, &mut table).await;
        one_node_down(Fault::Freeze, iterations, base, &mut table).await;
    }
    table.print();
}
