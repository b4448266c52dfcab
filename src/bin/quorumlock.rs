//! `quorumlock`: a distributed `flock` for cron jobs, deploy scripts and
//! shell, over the Redis nodes a team already runs (feature `cli`:
//! `cargo install quorumlock --features cli`).
//!
//! A thin binary: it parses, wires the library's calls and reports. The
//! lock, its keep-alive, loss detection, fencing and clean-up are the
//! library's own, covered by its tests.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use quorumlock::{Error, KeepAlive, Lock, NodeView, Reading, Redlock, RetryPolicy};
use tokio::signal::unix::{signal, SignalKind};

/// Exit status when the lock is held elsewhere and `--no-wait` was given,
/// or `--wait` passed without getting it.
const HELD: u8 = 75;
/// Exit status when the lock was lost while the command ran (the command
/// got SIGTERM, and SIGKILL after `--kill-grace`).
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
    /// Hand the command a fencing token in QUORUMLOCK_FENCE.
    #[arg(long)]
    fencing: bool,
    /// When the lock is lost, the command's process group gets SIGTERM at
    /// once and SIGKILL after this long. The lock is reported lost before
    /// its deadline, so with a grace shorter than the time left the command
    /// stops before another holder can get the lock.
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
            eprintln!("quorumlock: {line}");
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
            eprintln!("quorumlock: cannot start: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(run) => run_command(run).await,
            Command::Status(status) => show_status(status).await,
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
    eprintln!("quorumlock: {e}{source}");
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
            eprintln!("quorumlock: cannot listen for signals");
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
                        eprintln!(
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
    let code = supervise(&run, lock, (&mut interrupt, &mut terminate, &mut hangup)).await;
    redlock.settle(Duration::from_secs(2)).await;
    code
}

/// Runs the command under `lock`, forwarding signals to it, and stops it
/// if the lock is lost; releases the lock when the command is done.
async fn supervise(
    run: &Run,
    mut lock: Lock,
    (interrupt, terminate, hangup): (
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
    ),
) -> u8 {
    lock.keep_alive(KeepAlive::new());
    let (program, args) = match run.command.split_first() {
        Some(split) => split,
        None => return USAGE,
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
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
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("quorumlock: cannot run `{program}`: {e}");
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
            let _ = killpg(group, sig);
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                let code = status_code(status);
                let _ = lock.release().await;
                return code;
            }
            () = lock.lost() => {
                eprintln!("quorumlock: lost the lock on `{}`; stopping the command", run.name);
                send(Signal::SIGTERM);
                if tokio::time::timeout(run.kill_grace, child.wait()).await.is_err() {
                    send(Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                let _ = lock.release().await;
                return LOST;
            }
            _ = interrupt.recv() => send(Signal::SIGINT),
            _ = terminate.recv() => send(Signal::SIGTERM),
            _ = hangup.recv() => send(Signal::SIGHUP),
        }
    }
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
        println!("{}", json(&seen));
        return 0;
    }
    for (i, view) in seen.nodes().iter().enumerate() {
        match view {
            NodeView::Holders(holders) if holders.is_empty() => println!("node {i}: free"),
            NodeView::Holders(holders) => {
                for h in holders {
                    let ttl = h.ttl().map_or("no TTL".to_string(), |t| {
                        format!("{} ms left", t.as_millis())
                    });
                    println!("node {i}: held by {} ({ttl})", h.token());
                }
            }
            NodeView::Unreachable(why) => println!("node {i}: no answer ({why})"),
            _ => println!("node {i}: ?"),
        }
    }
    match seen.reading() {
        Reading::Free => println!("quorum: free"),
        Reading::Held(tokens) => println!("quorum: held by {}", tokens.join(", ")),
        _ => println!("quorum: unknown"),
    }
    if let Some(other) = seen.in_use() {
        println!("name in use as {other}: `run` with these options is refused");
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
