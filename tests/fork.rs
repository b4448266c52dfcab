//! A process that forks after taking locks: parent and child must draw
//! different tokens. A token kept in a user-space generator is inherited
//! by the child with the generator's state, and a node that answers with
//! our own token counts as our vote, so a child drawing its parent's next
//! token would hold the parent's lock alongside it.
//!
//! Its own `main` (harness = false): `fork()` is only sound in a process
//! with one thread, and the test harness runs tests on several. This file
//! is the one place of the project with `unsafe`: the `fork()` call that
//! stands for the user's own. The library itself forbids `unsafe`.

mod support;

use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

const TTL: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One attempt on `resource` in a fresh runtime and manager: the token
/// drawn and whether the lock was won. The lock is leaked, not released,
/// so that it is still held when the other process tries.
fn try_once(url: &str, resource: &str) -> (String, bool) {
    runtime().block_on(async {
        let redlock = support::manager(&[url.to_string()]).await;
        match redlock.try_acquire(resource, TTL).await {
            Ok(lock) => {
                let token = lock.token().to_string();
                std::mem::forget(lock);
                (token, true)
            }
            Err(e) => (format!("refused: {e}"), false),
        }
    })
}

fn main() {
    let Some(cluster) = support::cluster(1) else {
        return;
    };
    let url = cluster.url(0);
    // Tokens drawn before the fork, as a service's earlier locks would.
    let (_, warmed) = try_once(&url, &support::unique("fork-warm"));
    assert!(warmed);
    let resource = support::unique("fork");
    let dir = std::env::temp_dir().join(support::unique("quorumlock-fork"));
    std::fs::create_dir_all(&dir).unwrap();
    let (parent_done, child_said) = (dir.join("parent"), dir.join("child"));

    // SAFETY: this process has one thread here (harness = false, and the
    // runtime above is gone), so the child may run any code.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            // Waits for the parent's lock, then draws its own token.
            let until = Instant::now() + Duration::from_secs(10);
            while !parent_done.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            let (token, won) = try_once(&url, &resource);
            std::fs::write(&child_said, format!("{token} {won}")).unwrap();
            // No destructors: the nodes belong to the parent.
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            let (parent_token, won) = try_once(&url, &resource);
            std::fs::write(&parent_done, "").unwrap();
            assert!(won, "the parent did not get the lock: {parent_token}");
            let status = waitpid(child, None).unwrap();
            assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
            let said = std::fs::read_to_string(&child_said).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            let (child_token, child_won) = said.rsplit_once(' ').unwrap();
            println!("parent token {parent_token}, child: {child_token} (won: {child_won})");
            assert_ne!(
                child_token, parent_token,
                "the child drew the parent's token"
            );
            assert_eq!(
                child_won, "false",
                "parent and child both hold `{resource}` with token {parent_token}"
            );
            println!("test forked_child_draws_its_own_tokens ... ok");
        }
    }
    drop(cluster);
}
