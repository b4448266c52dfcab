//! The `quorumlock` command (feature `cli`), run as a user would: real
//! processes on real nodes. Children are small Python programs, for a
//! monotonic clock shared across processes (`time.monotonic_ns`).
#![cfg(feature = "cli")]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::unique;

const BIN: &str = env!("CARGO_BIN_EXE_quorumlock");

fn quorumlock(urls: &[String]) -> Command {
    let mut command = Command::new(BIN);
    command.env("QUORUMLOCK_NODES", urls.join(","));
    command
}

/// A Python child program as `python3 -c` arguments.
fn python(code: &str) -> [String; 3] {
    ["python3".into(), "-c".into(), code.into()]
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(name))
}

/// Waits until `path` has a line starting with `prefix`; returns it.
fn line_in(path: &PathBuf, prefix: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                return line.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no `{prefix}` line in {path:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` at most `limit`; its exit code.
/// Sends SIGTERM to `child`, as a service manager would; returns when.
fn sigterm(child: &std::process::Child) -> Instant {
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    sent
}

fn exit_within(child: &mut std::process::Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("quorumlock did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn monotonic_ns(line: &str) -> u128 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn eight_runs_on_one_name_never_overlap_and_all_run() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("cron");
    let log = scratch("cli-log");
    let code = format!(
        "import os, time\n\
         f = open({log:?}, 'a', buffering=1)\n\
         f.write('start %d %d\\n' % (time.monotonic_ns(), os.getpid()))\n\
         time.sleep(0.05)\n\
         f.write('end %d %d\\n' % (time.monotonic_ns(), os.getpid()))\n"
    );
    let mut runs: Vec<_> = (0..8)
        .map(|_| {
            quorumlock(&urls)
                .args(["run", "--ttl", "5s", &name, "--"])
                .args(python(&code))
                .spawn()
                .unwrap()
        })
        .collect();
    for run in &mut runs {
        assert_eq!(exit_within(run, Duration::from_secs(30)), 0);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let mut sections: Vec<(u128, u128)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for start in lines.iter().filter(|l| l.starts_with("start")) {
        let pid = start.split_whitespace().nth(2).unwrap();
        let end = lines
            .iter()
            .find(|l| l.starts_with("end") && l.ends_with(&format!(" {pid}")))
            .expect("every section ends");
        sections.push((monotonic_ns(start), monotonic_ns(end)));
    }
    assert_eq!(sections.len(), 8, "every run ran: {text}");
    sections.sort();
    for pair in sections.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two sections overlap: {text}");
    }
}

#[test]
fn a_lost_lock_stops_the_command_before_its_deadline() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let out = scratch("cli-lost");
    let ttl = Duration::from_secs(2);
    let code = format!(
        "import signal, sys, time\n\
         f = open({out:?}, 'a', buffering=1)\n\
         def term(*_):\n    f.write('term %d\\n' % time.monotonic_ns()); sys.exit(0)\n\
         signal.signal(signal.SIGTERM, term)\n\
         f.write('started %d\\n' % time.monotonic_ns())\n\
         time.sleep(60)\n"
    );
    let mut run = quorumlock(&urls)
        .args([
            "run",
            "--ttl",
            "2s",
            "--kill-grace",
            "5s",
            &unique("long"),
            "--",
        ])
        .args(python(&code))
        .spawn()
        .unwrap();
    line_in(&out, "started", Duration::from_secs(10));
    let frozen_at = now_ns();
    let code = freeze_until_exit(&cluster, &mut run);
    assert_eq!(code, 76, "the lost-lock exit status");
    let term = monotonic_ns(&line_in(&out, "term", Duration::from_secs(1)));
    let _ = std::fs::remove_file(&out);
    // The lock's deadline is at most one TTL after the last extension,
    // which came before the freeze.
    assert!(
        term < frozen_at + ttl.as_nanos(),
        "SIGTERM came {} ms after the freeze, past any deadline",
        (term - frozen_at) / 1_000_000
    );
}

/// Freezes two of three nodes, so that no extension can win a quorum any
/// more, until `run` exits (at most 10 s); its exit code.
fn freeze_until_exit(cluster: &support::Cluster, run: &mut std::process::Child) -> i32 {
    cluster.freeze(0);
    cluster.freeze(1);
    let code = exit_within(run, Duration::from_secs(10));
    cluster.thaw(0);
    cluster.thaw(1);
    code
}

/// `time.monotonic_ns()` as Python sees it (CLOCK_MONOTONIC).
fn now_ns() -> u128 {
    let out = Command::new("python3")
        .args(["-c", "import time; print(time.monotonic_ns())"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_exits_at_once_and_leaves_nothing() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("waiting");
    let holder = support::manager(&urls).await;
    let lock = holder
        .try_acquire(&name, Duration::from_secs(30))
        .await
        .unwrap();
    let mut run = quorumlock(&urls)
        .args(["run", &name, "--", "true"])
        .spawn()
        .unwrap();
    // It waits for the release: subscribed to its announcement.
    let channel = format!("quorumlock:released:{name}");
    support::eventually(Duration::from_secs(5), "the run waits", || {
        let (url, channel) = (urls[0].clone(), channel.clone());
        async move { support::subscribers(&url, &channel).await > 0 }
    })
    .await;
    let sent = sigterm(&run);
    let code = exit_within(&mut run, Duration::from_secs(1));
    assert_eq!(code, 143, "stopped waiting at once ({:?})", sent.elapsed());
    lock.release().await.unwrap();
    support::no_key_anywhere(&urls, &name, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_say_what_happened() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("codes");
    // The command's own status.
    let status = quorumlock(&urls)
        .args(["run", &name, "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));

    let holder = support::manager(&urls).await;
    let lock = holder
        .try_acquire(&name, Duration::from_secs(30))
        .await
        .unwrap();
    let started = Instant::now();
    let status = quorumlock(&urls)
        .args(["run", "--no-wait", &name, "--", "true"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(75), "held elsewhere, not waiting");
    assert!(started.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    let status = quorumlock(&urls)
        .args(["run", "--wait", "200ms", &name, "--", "true"])
        .status()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(status.code(), Some(75), "gave up waiting");
    assert!(
        waited >= Duration::from_millis(180) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    lock.release().await.unwrap();

    // Bad usage: one line on stderr and the usage status.
    for args in [
        vec!["run", "--nodes", "not a url", &name, "--", "true"],
        vec!["run", "--ttl", "5q", &name, "--", "true"],
        vec!["run", &name],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("QUORUMLOCK_NODES")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_the_command_and_the_lock_is_free_after() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("forward");
    let out = scratch("cli-forward");
    let code = format!(
        "import signal, sys, time\n\
         f = open({out:?}, 'a', buffering=1)\n\
         def term(*_):\n    f.write('term\\n'); sys.exit(7)\n\
         signal.signal(signal.SIGTERM, term)\n\
         f.write('started\\n')\n\
         time.sleep(60)\n"
    );
    let mut run = quorumlock(&urls)
        .args(["run", &name, "--"])
        .args(python(&code))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    line_in(&out, "started", Duration::from_secs(10));
    sigterm(&run);
    assert_eq!(
        exit_within(&mut run, Duration::from_secs(5)),
        7,
        "the command's own status"
    );
    line_in(&out, "term", Duration::from_secs(1));
    let _ = std::fs::remove_file(&out);
    support::no_key_anywhere(&urls, &name, Duration::from_secs(1)).await;
    let status = Command::new(BIN)
        .env("QUORUMLOCK_NODES", urls.join(","))
        .args(["status", "--json", &name])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&status.stdout);
    assert!(json.contains("\"reading\":\"free\""), "{json}");
}

/// Waiting with no limit while too few nodes answer is said on stderr, not
/// a silent hang, and SIGTERM still ends it at once although the nodes
/// that do not answer keep their clean-ups pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_do_not_answer_are_said_and_sigterm_still_exits_at_once() {
    let Some((urls, _cluster)) = support::nodes(1) else {
        return;
    };
    let name = unique("silent");
    // Two addresses nobody listens on, and one real node: no quorum.
    let nodes = [
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:2",
        urls[0].as_str(),
    ];
    let mut run = Command::new(BIN)
        .env("QUORUMLOCK_NODES", nodes.join(","))
        .args(["run", &name, "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = run.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(15));
    let said = matches!(&line, Ok(l) if l.contains("still waiting")
        && l.contains("too few Redis nodes answered"));
    if !said || run.try_wait().unwrap().is_some() {
        // A waiting child would outlive the test and hold its output open.
        let _ = run.kill();
        panic!("no line on stderr while too few nodes answer, or no wait: {line:?}");
    }

    let sent = sigterm(&run);
    let code = exit_within(&mut run, Duration::from_secs(1));
    assert_eq!(code, 143, "stopped waiting at once ({:?})", sent.elapsed());
    support::no_key_anywhere(&urls, &name, Duration::from_secs(1)).await;
}

/// Node addresses may carry a password: `--help` does not show the
/// environment's value, and neither do the error messages.
#[test]
fn passwords_in_node_addresses_are_not_printed() {
    let nodes = "redis://:hunter2-secret@127.0.0.1:1";
    for args in [
        vec!["run", "--help"],
        vec!["run", "--no-wait", "x", "--", "true"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env("QUORUMLOCK_NODES", nodes)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!printed.contains("hunter2"), "{args:?}: {printed}");
    }
}

/// The last `beat` line in `path`: its monotonic time.
fn last_beat(path: &PathBuf, prefix: &str) -> Option<u128> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rfind(|l| l.starts_with(prefix))
        .map(monotonic_ns)
}

/// A Python program that ignores SIGTERM and writes `{name} <monotonic ns>`
/// to `out` every 5 ms, forever.
fn stubborn(name: &str, out: &PathBuf) -> String {
    format!(
        "import signal, time\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         f = open({out:?}, 'a', buffering=1)\n\
         while True:\n    f.write('{name} %d\\n' % time.monotonic_ns()); time.sleep(0.005)\n"
    )
}

/// Whether process `pid` is gone (or a zombie: dead, not yet reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_lost_lock_kills_a_command_that_ignores_sigterm_and_its_setsid_helper_before_the_deadline() {
    let Some(cluster) = support::cluster(3) else {
        return;
    };
    let urls = cluster.urls();
    let out = scratch("cli-stubborn");
    let log = scratch("cli-stubborn-err");
    // The command starts a helper in a session of its own (out of the
    // command's process group), and both ignore SIGTERM.
    let helper = stubborn("helper", &out);
    let code = format!(
        "import subprocess\n\
         subprocess.Popen(['setsid', 'python3', '-c', {helper:?}])\n\
         {}",
        stubborn("command", &out)
    );
    let mut run = quorumlock(&urls)
        .args([
            "run",
            "--verbose",
            "--ttl",
            "2s",
            "--kill-grace",
            "500ms",
            &unique("stubborn"),
            "--",
        ])
        .args(python(&code))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    line_in(&out, "command", Duration::from_secs(10));
    line_in(&out, "helper", Duration::from_secs(10));
    let code = freeze_until_exit(&cluster, &mut run);
    assert_eq!(code, 76, "the lost-lock exit status");
    let errors = std::fs::read_to_string(&log).unwrap();
    let deadline: u128 = errors
        .lines()
        .find_map(|l| l.strip_prefix("quorumlock: the lock's deadline is at CLOCK_MONOTONIC "))
        .and_then(|rest| rest.strip_suffix(" ns"))
        .unwrap_or_else(|| panic!("no deadline line in: {errors}"))
        .parse()
        .unwrap();
    let command = last_beat(&out, "command").unwrap();
    let helper = last_beat(&out, "helper").unwrap();
    let _ = (std::fs::remove_file(&out), std::fs::remove_file(&log));
    let before = |t: u128| (deadline as i128 - t as i128) / 1_000_000;
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "STUBBORN last signs of life: command {} ms, helper {} ms before the deadline",
        before(command),
        before(helper)
    );
    assert!(
        command < deadline,
        "the command ran {} ms past the deadline",
        -before(command)
    );
    assert!(
        helper < deadline,
        "the helper ran {} ms past the deadline",
        -before(helper)
    );
}

#[test]
fn the_command_dies_with_a_sigkilled_quorumlock() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let out = scratch("cli-orphan");
    let code = format!(
        "import os\n\
         open({out:?} + '.pid', 'w').write(str(os.getpid()))\n\
         {}",
        stubborn("command", &out)
    );
    let mut run = quorumlock(&urls)
        .args(["run", "--ttl", "10s", &unique("orphan"), "--"])
        .args(python(&code))
        .spawn()
        .unwrap();
    line_in(&out, "command", Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(format!("{}.pid", out.display()))
        .unwrap()
        .parse()
        .unwrap();
    run.kill().unwrap(); // SIGKILL: no clean-up of its own
    let _ = run.wait();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the command outlived quorumlock by 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(format!("{}.pid", out.display()));
}

#[test]
fn a_closed_stdout_or_stderr_is_no_panic() {
    let Some((urls, _cluster)) = support::nodes(3) else {
        return;
    };
    let name = unique("closed");
    // Held elsewhere: `run --no-wait` says so on stderr, whose reader is gone.
    let mut holder = quorumlock(&urls)
        .args(["run", "--ttl", "10s", &name, "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let held = Instant::now() + Duration::from_secs(10);
    loop {
        let status = quorumlock(&urls)
            .args(["status", "--json", &name])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&status.stdout).contains("\"reading\":\"held\"") {
            break;
        }
        assert!(Instant::now() < held, "the holder never got the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut refused = quorumlock(&urls)
        .args(["run", "--no-wait", &name, "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(refused.stderr.take());
    assert_eq!(exit_within(&mut refused, Duration::from_secs(10)), 75);
    // `status` prints on stdout, whose reader is gone.
    let mut status = quorumlock(&urls)
        .args(["status", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(status.stdout.take());
    assert_eq!(exit_within(&mut status, Duration::from_secs(10)), 0);
    sigterm(&holder);
    exit_within(&mut holder, Duration::from_secs(10));
}
