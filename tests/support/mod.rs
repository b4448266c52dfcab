//! Test support shared by tests, examples and benches: real `redis-server`
//! processes on free loopback ports, with the faults a lock must survive
//! (kill, freeze, restart), killed when the [`Cluster`] is dropped.
//!
//! If `REDLOCK_TEST_NODES=url,url,url` is set, [`nodes`] hands those out
//! instead (for example the docker trio), and tests that need to control
//! processes say they were skipped.
#![allow(dead_code)]

pub mod docker;
pub mod proxy;
pub mod redis_cluster;
pub mod scenarios;
pub mod sick;
pub mod tls;
pub mod witness;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming external nodes to test against.
pub const NODES_ENV: &str = "REDLOCK_TEST_NODES";

/// One `redis-server` process this module started.
struct Server {
    port: u16,
    child: Option<Child>,
}

/// N independent Redis nodes (no replication, no persistence).
pub struct Cluster {
    servers: Vec<Server>,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes and waits until each answers PING.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments
    /// (`{port}` in one is replaced by the node's port, `{free}` by another
    /// free port, for example a cluster bus). A node started with
    /// `--requirepass` still answers PING with an error, which is enough.
    pub fn start_with(n: usize, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let servers = (0..n).map(|_| spawn_on_free_port(&extra)).collect();
        Self { servers, extra }
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.servers[i].port)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].port
    }

    /// SIGKILL: the node vanishes with everything it held.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL without waiting for the process (through a shared
    /// reference, while a run uses the nodes); reaped on drop.
    pub fn crash(&self, i: usize) {
        self.signal(i, "-KILL");
    }

    /// SIGSTOP: the node keeps its connections open and answers nothing.
    pub fn freeze(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONT: the node goes on with whatever was queued.
    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Starts node `i` again on its old port, with empty data (or, for
    /// [`DURABLE`] nodes, what its append-only file kept).
    pub fn restart(&mut self, i: usize) {
        let extra = self.extra.clone();
        self.restart_with(i, &extra);
    }

    /// As [`restart`](Self::restart), with other `redis-server` arguments
    /// (an operator who changed the node's configuration).
    pub fn restart_with(&mut self, i: usize, extra: &[String]) {
        self.kill(i);
        let port = self.servers[i].port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn_server(port, extra);
            if wait_for_ping(port, &mut child) {
                self.servers[i].child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        let child = self.servers[i].child.as_ref().expect("node is not running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
            let _ = std::fs::remove_dir_all(data_dir(self.servers[i].port));
        }
    }
}

/// `redis-server` arguments for nodes that keep every write they
/// acknowledged, each in a directory of its own that outlives a restart.
pub const DURABLE: &[&str] = &[
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--dir",
    "{dir}",
];

/// Where a node started with `{dir}` keeps its files.
fn data_dir(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("quorumlock-test-data-{port}"))
}

/// Nodes for a test that needs no process control: external ones when
/// `REDLOCK_TEST_NODES` lists at least `n`, else `n` spawned ones. The
/// cluster, if any, must be kept alive for the test's duration.
pub fn nodes(n: usize) -> Option<(Vec<String>, Option<Cluster>)> {
    match external_nodes() {
        Some(urls) if urls.len() >= n => Some((urls[..n].to_vec(), None)),
        Some(urls) => {
            say_skipped(&format!(
                "needs {n} nodes, {NODES_ENV} lists {}",
                urls.len()
            ));
            None
        }
        None => {
            let cluster = Cluster::start(n);
            Some((cluster.urls(), Some(cluster)))
        }
    }
}

/// A spawned cluster for a test that kills, freezes or restarts nodes;
/// `None` (with a message) when running against external nodes.
pub fn cluster(n: usize) -> Option<Cluster> {
    if external_nodes().is_some() {
        say_skipped(&format!(
            "it controls redis-server processes, and {NODES_ENV} is set"
        ));
        return None;
    }
    Some(Cluster::start(n))
}

/// As [`cluster`], with extra `redis-server` arguments.
pub fn cluster_with(n: usize, extra: &[&str]) -> Option<Cluster> {
    if external_nodes().is_some() {
        say_skipped(&format!(
            "it starts redis-server with its own settings, and {NODES_ENV} is set"
        ));
        return None;
    }
    Some(Cluster::start_with(n, extra))
}

/// Written past the test harness's output capture, so a skip is visible in
/// a passing run.
pub(crate) fn say_skipped(why: &str) {
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
}

pub(crate) fn external_nodes() -> Option<Vec<String>> {
    let raw = std::env::var(NODES_ENV).ok()?;
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    (!urls.is_empty()).then_some(urls)
}

/// Nodes for an example: those in `QUORUMLOCK_NODES` (comma-separated), or
/// else a local trio started here, stopped when the cluster is dropped.
pub fn example_nodes() -> (Vec<String>, Option<Cluster>) {
    match std::env::var("QUORUMLOCK_NODES") {
        Ok(list) => (
            list.split(',').map(|s| s.trim().to_string()).collect(),
            None,
        ),
        Err(_) => {
            println!(
                "starting three local redis-server nodes (set QUORUMLOCK_NODES to use your own)"
            );
            let cluster = Cluster::start(3);
            (cluster.urls(), Some(cluster))
        }
    }
}

/// A whole number from the environment variable `name` (a bench's run
/// length, its number of pairs), or `default` when unset or not a number.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A resource name no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    format!("{name}:{:016x}", rand::random::<u64>())
}

fn spawn_on_free_port(extra: &[String]) -> Server {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let port = free_port();
        let mut child = spawn_server(port, extra);
        if wait_for_ping(port, &mut child) {
            return Server {
                port,
                child: Some(child),
            };
        }
        // Someone took the port between our probe and the server's bind.
        let _ = child.kill();
        let _ = child.wait();
        assert!(Instant::now() < deadline, "could not start redis-server");
    }
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn spawn_server(port: u16, extra: &[String]) -> Child {
    let dir = data_dir(port);
    if extra.iter().any(|a| a.contains("{dir}")) {
        std::fs::create_dir_all(&dir).expect("create a node's data directory");
    }
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--logfile", ""])
        .args(extra.iter().map(|a| {
            a.replace("{port}", &port.to_string())
                .replace("{free}", &free_port().to_string())
                .replace("{dir}", &dir.to_string_lossy())
        }))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install -y redis-server)")
}

/// Waits up to 5 s for `+PONG`; `false` if the server exited (port taken).
fn wait_for_ping(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ping(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH` from a node that wants a password: it is up.
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
}

/// A plain connection to one node, for looking at keys behind the library's back.
pub async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The value under `key` on the node at `url`.
pub async fn value(url: &str, key: &str) -> Option<String> {
    let mut c = conn(url).await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Waits until `check` holds, polling every 5 ms; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until no node in `urls` has `key`.
pub async fn no_key_anywhere(urls: &[String], key: &str, limit: Duration) {
    eventually(limit, &format!("no node holds {key}"), || async {
        for url in urls {
            if value(url, key).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
}

/// Serialises the tests that hold it: load tests compare rates measured in
/// the same test, which other tests' load on 2 cores would distort.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    SERIAL
        .get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// Keys on the node at `url` (DBSIZE).
pub async fn key_count(url: &str) -> usize {
    let mut c = conn(url).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.unwrap()
}

/// A builder over `urls`, for tests that change a setting.
pub fn builder(urls: &[String]) -> quorumlock::Builder {
    quorumlock::Redlock::builder().nodes(urls.iter().map(String::as_str))
}

/// A builder over `urls` with fencing on, for the spawned test nodes,
/// which keep no append-only file (an fsync per write costs milliseconds
/// here): the durability check is off. `tests/fencing.rs` checks it.
pub fn fenced_builder(urls: &[String]) -> quorumlock::Builder {
    builder(urls).fencing(true).require_durable_fences(false)
}

/// A manager with default settings over `urls`.
pub async fn manager(urls: &[String]) -> quorumlock::Redlock {
    builder(urls).build().await.unwrap()
}

/// Waits (up to `limit`) until the node at `url` grants its vote in a lock
/// of `redlock` (after a restart, a heal, a late start).
pub async fn node_votes_again(redlock: &quorumlock::Redlock, url: &str, limit: Duration) {
    eventually(limit, "the node votes again", || async {
        let resource = unique("votes-again");
        let Ok(lock) = redlock
            .try_acquire(&resource, Duration::from_secs(10))
            .await
        else {
            return false;
        };
        let voted = value(url, &resource).await.as_deref() == Some(lock.token());
        lock.release().await.unwrap();
        voted
    })
    .await;
}

/// A retry policy for tests whose clients contend for long: retry until
/// 30 s have passed, 50–100 ms apart. The delay is above the 50 ms node
/// timeout, as the README advises: shorter ones let racing attempts split
/// the votes again and again while a node is frozen. (Waiters are woken by
/// releases anyway; the delay is only the fallback.)
pub fn patient() -> quorumlock::RetryPolicy {
    quorumlock::RetryPolicy::new()
        .attempts(u32::MAX)
        .delay(Duration::from_millis(50))
        .jitter(Duration::from_millis(50))
        .max_wait(Some(Duration::from_secs(30)))
}

/// Puts another owner's value under `key` on the node at `url` for 30 s.
pub async fn set_foreign(url: &str, key: &str) {
    let mut c = conn(url).await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("someone-else")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// How many times `command` ran on the node at `url` (INFO commandstats).
pub async fn calls(url: &str, command: &str) -> u64 {
    let mut c = conn(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits until every node in `urls` holds `token` under `key` (a quorum has
/// it when the acquire returns; the last node's SET may land a moment later).
pub async fn every_node_holds(urls: &[String], key: &str, token: &str) {
    eventually(
        Duration::from_secs(1),
        &format!("every node holds {key}"),
        || async {
            for url in urls {
                if value(url, key).await.as_deref() != Some(token) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// An `INFO` field of the node at `url`, as a number.
pub async fn info_number(url: &str, section: &str, field: &str) -> u64 {
    let mut c = conn(url).await;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .unwrap();
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Connections the node at `url` accepted since it started.
pub async fn connections_received(url: &str) -> u64 {
    info_number(url, "stats", "total_connections_received").await
}

/// Subscribers of `channel` on the node at `url`.
pub async fn subscribers(url: &str, channel: &str) -> u64 {
    let mut c = conn(url).await;
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut c)
        .await
        .unwrap();
    reply.1
}

/// Runs a command on the node at `url` (as an admin), ignoring the reply.
pub async fn admin(url: &str, args: &[&str]) {
    let mut c = conn(url).await;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
}

/// Asserts that nodes refuse a lock on `resource` for a reason a retry
/// cannot fix (`kind` on the first failing node), and that `acquire`
/// reports it at once instead of spending its retries (100 ms apart by
/// default) on it.
pub async fn refused_at_once(
    redlock: &quorumlock::Redlock,
    resource: &str,
    kind: quorumlock::FailureKind,
) {
    let err = redlock
        .try_acquire(resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.is_refused() && err.is_invalid() && !err.is_retryable() && !err.is_contended(),
        "{err:?}"
    );
    assert_eq!(err.failures()[0].kind(), kind, "{err:?}");
    let started = Instant::now();
    let err = redlock
        .acquire(resource, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(90),
        "acquire retried: {:?}",
        started.elapsed()
    );
}

/// A manager over `urls` whose retries wait `delay` (plus the default
/// jitter), for tests where only a wake-up may beat that delay.
pub async fn manager_retrying_every(urls: &[String], delay: Duration) -> quorumlock::Redlock {
    builder(urls)
        .retry(
            quorumlock::RetryPolicy::new()
                .attempts(u32::MAX)
                .delay(delay),
        )
        .build()
        .await
        .unwrap()
}

/// The README's code block marked `<!-- snippet: NAME ... -->`, without
/// the list indentation it may carry: what the tests run is exactly what a
/// reader copies.
pub fn readme_snippet(name: &str) -> String {
    const README: &str = include_str!("../../README.md");
    let marker = format!("<!-- snippet: {name} ");
    let at = README
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no snippet {name}"));
    let mut lines = README[at..].lines().skip(1);
    let fence = lines.next().expect("a code block after the marker");
    let indent = fence.len() - fence.trim_start().len();
    assert!(fence.trim_start().starts_with("```"), "{name}: {fence}");
    let mut body = String::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            return body;
        }
        body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
        body.push('\n');
    }
    panic!("snippet {name} is not closed");
}

/// The README's ACL additions for Redis Cluster members.
pub const ACL_CLUSTER: &str = "# on the members of a Redis Cluster";
/// The README's ACL additions for semaphores, read-write locks, inspect.
pub const ACL_PRIMITIVES: &str = "# for semaphores, read-write locks";

/// `ACL SETUSER` arguments of the README's rule for quorumlock: with
/// wake-ups or without, plus the additions under each heading of `extras`;
/// `PASSWORD` becomes `password`.
pub fn readme_acl(wakeups: bool, extras: &[&str], password: &str) -> Vec<String> {
    let snippet = readme_snippet("acl");
    let mut lines = snippet.lines();
    let heading = if wakeups {
        "# with wake-ups"
    } else {
        "# without wake-ups"
    };
    lines
        .by_ref()
        .find(|l| l.trim() == heading)
        .expect("the rule's heading");
    let rule = lines.next().expect("the rule");
    let mut args: Vec<String> = rule
        .split_whitespace()
        .map(|a| a.replace(">PASSWORD", &format!(">{password}")))
        .collect();
    for extra in extras {
        let line = snippet
            .lines()
            .skip_while(|l| !l.starts_with(extra))
            .nth(1)
            .unwrap_or_else(|| panic!("the README's ACL additions under {extra}"));
        args.extend(line.split_whitespace().map(String::from));
    }
    args
}
