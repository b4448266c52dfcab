//! `quorumlock`: a distributed `flock` for cron jobs, deploy scripts and
//! shell, over the Redis nodes a team already runs (feature `cli`:
//! `cargo install quorumlock --features cli`).
//!
//! A thin binary: it parses, wires the library's calls and reports. The
//! lock, its keep-alive, loss detection, fencing and clean-up are the
//! library's own, covered by its tests.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use quorumlock::{Error, KeepAlive, Lock, NodeView, Reading, Redlock, RetryPolicy};
use tokio::signal::unix::{signal, SignalKind};

/// Exit status when the lock is held elsewhere and `--no-wait` was given,
/// or `--wait` passed without getting it.
const HELD: u8 = 75;
/// Exit status when the lock was lost while the command ran (the command
/// got SIGTERM, and SIGKILL before the lock's deadline).
const LOST: u8 = 76;
/// Exit status when too few nodes answered.
const UNAVAILABLE: u8 = 69;
/// Exit status for bad usage or configuration (and refusals an operator
/// must fix: wrong password, missing ACL permission).
const USAGE: u8 = 64;
/// Exit status when the command could not be started.
const NOT_STARTED: u8 = 127;

/// How long a signal that stopped the wait gives the clean-ups.
const SIGNAL_SETTLE: Duration = Duration::from_millis(500);

/// Without `--wait`, the wait goes in rounds this long; after a round in
/// which too few nodes answered, a line on stderr says so.
const WAIT_ROUND: Duration = Duration::from_secs(5);

const EXIT_CODES: &str = "\
What `run` guarantees (Linux):
  The command starts only while the lock is held. If the lock cannot be
  renewed, the command and every process it started (also those that left
  its process group, e.g. with setsid) get SIGTERM the kill grace before
  the lock's deadline and SIGKILL just before it. Processes the command
  leaves behind when it exits are stopped the same way before the lock is
  released. If quorumlock itself dies (even by SIGKILL), the command gets
  SIGKILL with it. Not covered: a process that moves into another PID
  namespace or under another subreaper, and a machine that stops this
  process (SIGSTOP, a frozen VM) past the deadline: there only fencing
  tokens (--fencing) protect the resource.


Exit status:
  the command's own status when it ran (128 + N when signal N ended it)
  75  held elsewhere (--no-wait), or --wait passed without the lock
  76  the lock was lost while the command ran
  69  too few Redis nodes answered
  64  bad usage or configuration (or nodes refusing our credentials)
  127 the command could not be started
  129/130/143 SIGHUP/SIGINT/SIGTERM arrived while waiting for the lock";

#[derive(Parser)]
#[command(name = "quorumlock", version, about = "A distributed lock (Redlock) for commands, over N independent Redis nodes", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs COMMAND while holding the lock NAME, kept alive while it runs.
    #[command(after_help = EXIT_CODES)]
    Run(Run),
    /// Prints what each node says about NAME and the quorum's reading.
    Status(Status),
    /// How `run` starts its command (not for use by hand): ties the
    /// process to its `quorumlock` parent, then becomes COMMAND.
    #[command(hide = true)]
    Spawned(Spawned),
}

#[derive(Args)]
struct Spawned {
    /// The `quorumlock run` that started it.
    #[arg(long)]
    parent: i32,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Writes a line to stderr; a closed or broken stderr is no reason to
/// stop (or, as `eprintln!` would, to panic before the command is
/// stopped).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// As [`say`], to stdout.
macro_rules! show {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args)]
struct Nodes {
    /// The Redis nodes (independent masters), comma-separated: redis:// or
    /// rediss:// (TLS; a private CA in SSL_CERT_FILE).
    #[arg(
        long,
        env = "QUORUMLOCK_NODES",
        hide_env_values = true,
        value_delimiter = ',',
        required = true
    )]
    nodes: Vec<String>,
    /// Put in front of NAME to form the Redis key.
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Log the library's events to stderr.
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct Run {
    #[command(flatten)]
    nodes: Nodes,
    /// How long the lock lives without renewal; it is renewed while the
    /// command runs (500ms, 30s, 5m, 1h).
    #[arg(long, default_value = "30s", value_parser = duration)]
    ttl: Duration,
    /// Give up after waiting this long for the lock (default: wait as long
    /// as it takes, as flock does; while too few nodes answer, a line on
    /// stderr says so).
    #[arg(long, value_parser = duration, conflicts_with = "no_wait")]
    wait: Option<Duration>,
    /// Fail at once when the lock is held elsewhere.
    #[arg(long)]
    no_wait: bool,
    /// Hold one of N permits of a semaphore NAME instead of the mutex.
    #[arg(long)]
    permits: Option<u32>,
    /// Hand the command a fencing token in QUORUMLOCK_FENCE. Needs nodes
    /// that keep every write (appendonly yes, appendfsync always).
    #[arg(long)]
    fencing: bool,
    /// The time the command is given to stop. When the lock cannot be
    /// renewed, the command and every process it started get SIGTERM this
    /// long before the lock's deadline, and SIGKILL just before the
    /// deadline: none of them outlives the lock. Cut to half the TTL.
    #[arg(long, default_value = "5s", value_parser = duration)]
    kill_grace: Duration,
    /// The lock's name.
    name: String,
    /// The command and its arguments (after `--`). It gets QUORUMLOCK_TOKEN
    /// and QUORUMLOCK_DEADLINE_MS (milliseconds the lock had left when it
    /// started), and QUORUMLOCK_FENCE with --fencing.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct Status {
    #[command(flatten)]
    nodes: Nodes,
    /// Look at a semaphore of N permits instead of the mutex.
    #[arg(long)]
    permits: Option<u32>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// The lock's name.
    name: String,
}

/// `500ms`, `30s`, `5m`, `1h`.
fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("`{text}`: the unit must be ms, s, m or h")),
    };
    Ok(d)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(Cli {
            command: Command::Spawned(spawned),
        }) => return become_command(spawned),
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let line = text
                .lines()
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            say!("quorumlock: {line}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            say!("quorumlock: cannot start: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(run) => run_command(run).await,
            Command::Status(status) => show_status(status).await,
            Command::Spawned(_) => USAGE,
        }
    });
    ExitCode::from(code)
}

async fn manager(nodes: &Nodes, fencing: bool, retry: RetryPolicy) -> Result<Redlock, u8> {
    if nodes.verbose {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    Redlock::builder()
        .nodes(nodes.nodes.iter().map(|n| n.trim()))
        .key_prefix(nodes.key_prefix.clone())
        .fencing(fencing)
        .retry(retry)
        .build()
        .await
        .map_err(|e| fail(&e))
}

/// Reports `e` in one line and picks the exit status for it.
fn fail(e: &Error) -> u8 {
    let source = std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    say!("quorumlock: {e}{source}");
    if e.is_contended() {
        HELD
    } else if e.is_invalid() {
        USAGE
    } else {
        UNAVAILABLE
    }
}

async fn run_command(run: Run) -> u8 {
    // Waiting without a limit goes in rounds, so that nodes that do not
    // answer are said on stderr instead of leaving a silent hang.
    let forever = !run.no_wait && run.wait.is_none();
    let retry = if run.no_wait {
        RetryPolicy::none()
    } else {
        RetryPolicy::new()
            .attempts(u32::MAX)
            .max_wait(run.wait.or(Some(WAIT_ROUND)))
    };
    let redlock = match manager(&run.nodes, run.fencing, retry).await {
        Ok(redlock) => redlock,
        Err(code) => return code,
    };
    let (mut interrupt, mut terminate, mut hangup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(i), Ok(t), Ok(h)) => (i, t, h),
        _ => {
            say!("quorumlock: cannot listen for signals");
            return USAGE;
        }
    };
    let acquire = async {
        let started = Instant::now();
        let mut said = false;
        loop {
            let got = match run.permits {
                Some(permits) => redlock.semaphore(&run.name, permits).acquire(run.ttl).await,
                None => redlock.acquire(&run.name, run.ttl).await,
            };
            match got {
                // Once per stretch of rounds without enough nodes.
                Err(e) if forever && e.is_retryable() => {
                    if e.is_unavailable() && !said {
                        say!(
                            "quorumlock: still waiting after {} s: {e}",
                            started.elapsed().as_secs()
                        );
                    }
                    said = e.is_unavailable();
                }
                got => return got,
            }
        }
    };
    // While waiting, a signal stops the wait: the attempt is dropped (the
    // library removes whatever it had set), and we exit once that is done.
    let waited = tokio::select! {
        lock = acquire => Ok(lock),
        _ = interrupt.recv() => Err(Signal::SIGINT),
        _ = terminate.recv() => Err(Signal::SIGTERM),
        _ = hangup.recv() => Err(Signal::SIGHUP),
    };
    let lock = match waited {
        Ok(Ok(lock)) => lock,
        Ok(Err(e)) => {
            let code = fail(&e);
            redlock.settle(Duration::from_secs(2)).await;
            return code;
        }
        Err(sig) => {
            // Exit at once: clean-ups on answering nodes take a round trip;
            // what a node that does not answer may hold expires with the TTL.
            redlock.settle(SIGNAL_SETTLE).await;
            return 128u8.saturating_add(sig as u8);
        }
    };
    // Orphans of the command come back to us, so that none is missed
    // when the command's processes are stopped.
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        say!("quorumlock: cannot become a child subreaper ({e}): processes that leave the command may outlive the lock");
    }
    let code = supervise(&run, lock, (&mut interrupt, &mut terminate, &mut hangup)).await;
    redlock.settle(Duration::from_secs(2)).await;
    code
}

/// Runs the command under `lock`, forwarding signals to it, and stops it
/// and everything it started before the lock's deadline if the lock is
/// lost; releases the lock when they are all gone.
async fn supervise(
    run: &Run,
    mut lock: Lock,
    (interrupt, terminate, hangup): (
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
    ),
) -> u8 {
    // The grace is the lock's stop margin: `lost()` fires that long
    // before the deadline.
    let grace = run.kill_grace.min(run.ttl / 2);
    lock.keep_alive(KeepAlive::new().stop_margin(grace));
    if run.command.is_empty() {
        return USAGE;
    }
    let mut command = tokio::process::Command::new(SELF);
    command
        .arg("spawned")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(&run.command)
        .env("QUORUMLOCK_TOKEN", lock.token())
        .env(
            "QUORUMLOCK_DEADLINE_MS",
            lock.remaining().as_millis().to_string(),
        )
        // Its own process group: signals reach a whole pipeline or script.
        .process_group(0);
    if let Some(fence) = lock.fence() {
        command.env("QUORUMLOCK_FENCE", fence.to_string());
    }
    if !lock.is_held() {
        say!(
            "quorumlock: the lock on `{}` ran out before the command could start",
            run.name
        );
        return LOST;
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            say!("quorumlock: cannot run `{}`: {e}", run.command[0]);
            let _ = lock.release().await;
            return NOT_STARTED;
        }
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let send = |sig: Signal| {
        if let Some(group) = group {
            signal_group(group, sig);
        }
    };
    let code = loop {
        tokio::select! {
            status = child.wait() => break status_code(status),
            () = lock.lost() => {
                let deadline = lock.deadline();
                let kill_at = deadline.checked_sub(KILL_AHEAD).unwrap_or(deadline);
                say!(
                    "quorumlock: lost the lock on `{}`; stopping the command (SIGTERM now, SIGKILL in {} ms at the latest, before the lock's deadline)",
                    run.name,
                    kill_at.saturating_duration_since(Instant::now()).as_millis()
                );
                if run.nodes.verbose {
                    say!("quorumlock: the lock's deadline is at CLOCK_MONOTONIC {} ns", monotonic_ns(deadline));
                }
                stop_all(group, Signal::SIGTERM);
                if tokio::time::timeout_at(kill_at.into(), child.wait()).await.is_err() {
                    stop_all(group, Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                // The command is gone; what it left behind goes before the
                // deadline too.
                stop_all(group, Signal::SIGKILL);
                reap_orphans();
                let _ = lock.release().await;
                return LOST;
            }
            _ = interrupt.recv() => send(Signal::SIGINT),
            _ = terminate.recv() => send(Signal::SIGTERM),
            _ = hangup.recv() => send(Signal::SIGHUP),
        }
    };
    // The command exited while the lock was held: processes it left
    // behind must not run on without it.
    if !descendants().is_empty() {
        stop_all(group, Signal::SIGTERM);
        let kill_at = lock.deadline().checked_sub(KILL_AHEAD);
        let until = kill_at.map_or_else(Instant::now, |at| at.min(Instant::now() + grace));
        while !descendants().is_empty() && Instant::now() < until {
            reap_orphans();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_all(group, Signal::SIGKILL);
        reap_orphans();
    }
    let _ = lock.release().await;
    code
}

/// The program that starts the command: this one again (`spawned`), so
/// that the command gets its parent-death signal before it runs.
#[cfg(target_os = "linux")]
const SELF: &str = "/proc/self/exe";
#[cfg(not(target_os = "linux"))]
const SELF: &str = "quorumlock";

/// SIGKILL goes out this long before the lock's deadline: time for the
/// kernel to end the processes, and for a timer that fires late.
const KILL_AHEAD: Duration = Duration::from_millis(50);

/// `quorumlock spawned`: asks for SIGKILL when the `quorumlock run` that
/// started us dies, checks that it has not died already, and becomes the
/// command (exec keeps the parent-death signal).
fn become_command(spawned: Spawned) -> ExitCode {
    use std::os::unix::process::CommandExt;
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            say!("quorumlock: cannot tie the command to quorumlock ({e})");
            return ExitCode::from(NOT_STARTED);
        }
        if nix::unistd::getppid().as_raw() != spawned.parent {
            // quorumlock died before the signal was set up: run nothing.
            return ExitCode::from(NOT_STARTED);
        }
    }
    let Some((program, args)) = spawned.command.split_first() else {
        return ExitCode::from(USAGE);
    };
    let e = std::process::Command::new(program).args(args).exec();
    say!("quorumlock: cannot run `{program}`: {e}");
    ExitCode::from(NOT_STARTED)
}

/// Sends `sig` to a process group; says why when it could not.
fn signal_group(group: Pid, sig: Signal) {
    match killpg(group, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => say!("quorumlock: cannot send {sig} to the command's process group: {e}"),
    }
}

/// Sends `sig` to the command's process group and to every process
/// descended from this one, also those that left the group.
fn stop_all(group: Option<Pid>, sig: Signal) {
    if let Some(group) = group {
        signal_group(group, sig);
    }
    for pid in descendants() {
        match kill(pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => say!("quorumlock: cannot send {sig} to process {pid}: {e}"),
        }
    }
}

/// Every living process below this one, read from /proc (zombies, which
/// are dead already, are left out). Orphans of the command are ours, as
/// a child subreaper.
fn descendants() -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        if let Ok(ppid) = ppid.parse() {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![std::process::id() as i32];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

/// Collects the exit statuses of orphans handed to us, once the command
/// itself has been waited for (before that, its status is tokio's).
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// `at` on CLOCK_MONOTONIC, in nanoseconds (as `time.monotonic_ns()` in
/// Python reads it), for `--verbose` lines.
fn monotonic_ns(at: Instant) -> u128 {
    #[cfg(target_os = "linux")]
    {
        let now = Instant::now();
        if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
            let now_ns = t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
            let delta = if at >= now {
                (at - now).as_nanos() as i128
            } else {
                -((now - at).as_nanos() as i128)
            };
            return u128::try_from(now_ns + delta).unwrap_or(0);
        }
    }
    let _ = at;
    0
}

fn status_code(status: std::io::Result<std::process::ExitStatus>) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
            (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
            (None, None) => 1,
        },
        Err(_) => 1,
    }
}

async fn show_status(status: Status) -> u8 {
    let redlock = match manager(&status.nodes, false, RetryPolicy::none()).await {
        Ok(redlock) => redlock,
        Err(code) => return code,
    };
    let seen = match status.permits {
        Some(permits) => redlock.semaphore(&status.name, permits).inspect().await,
        None => redlock.inspect(&status.name).await,
    };
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => return fail(&e),
    };
    if status.json {
        show!("{}", json(&seen));
        return 0;
    }
    for (i, view) in seen.nodes().iter().enumerate() {
        match view {
            NodeView::Holders(holders) if holders.is_empty() => show!("node {i}: free"),
            NodeView::Holders(holders) => {
                for h in holders {
                    let ttl = h.ttl().map_or("no TTL".to_string(), |t| {
                        format!("{} ms left", t.as_millis())
                    });
                    show!("node {i}: held by {} ({ttl})", h.token());
                }
            }
            NodeView::Unreachable(why) => show!("node {i}: no answer ({why})"),
            _ => show!("node {i}: ?"),
        }
    }
    match seen.reading() {
        Reading::Free => show!("quorum: free"),
        Reading::Held(tokens) => show!("quorum: held by {}", tokens.join(", ")),
        _ => show!("quorum: unknown"),
    }
    if let Some(other) = seen.in_use() {
        show!("name in use as {other}: `run` with these options is refused");
    }
    0
}

/// The inspection as one JSON object.
fn json(seen: &quorumlock::Inspection) -> String {
    let (reading, holders) = match seen.reading() {
        Reading::Free => ("free", Vec::new()),
        Reading::Held(tokens) => ("held", tokens.clone()),
        _ => ("unknown", Vec::new()),
    };
    let nodes: Vec<String> = seen
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, view)| match view {
            NodeView::Holders(holders) => {
                let list: Vec<String> = holders
                    .iter()
                    .map(|h| {
                        let ttl = h
                            .ttl()
                            .map_or("null".to_string(), |t| t.as_millis().to_string());
                        format!("{{\"token\":{},\"ttl_ms\":{ttl}}}", quote(h.token()))
                    })
                    .collect();
                format!("{{\"node\":{i},\"holders\":[{}]}}", list.join(","))
            }
            NodeView::Unreachable(why) => {
                format!("{{\"node\":{i},\"error\":{}}}", quote(&why.to_string()))
            }
            _ => format!("{{\"node\":{i}}}"),
        })
        .collect();
    let holders: Vec<String> = holders.iter().map(|t| quote(t)).collect();
    let in_use = seen
        .in_use()
        .map_or("null".to_string(), |other| quote(&other.to_string()));
    format!(
        "{{\"key\":{},\"reading\":\"{reading}\",\"holders\":[{}],\"in_use\":{in_use},\"nodes\":[{}]}}",
        quote(seen.key()),
        holders.join(","),
        nodes.join(",")
    )
}

/// A JSON string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
