//! The docker trio (`docker/docker-compose.yml`) as `scripts/docker-test.sh`
//! hands it to the tests: the containers in node order
//! (`REDLOCK_TEST_DOCKER_CONTAINERS`) and their network
//! (`REDLOCK_TEST_DOCKER_NETWORK`), reached at the containers' own
//! addresses (`REDLOCK_TEST_NODES`), so that a container taken off its
//! network is a real partition: the kernel drops its packets, nobody
//! answers with a reset.

use std::process::Command;
use std::time::{Duration, Instant};

/// The trio and the faults docker can inflict on it.
pub struct Trio {
    pub urls: Vec<String>,
    containers: Vec<String>,
    network: String,
}

/// The trio, or `None` (saying the test was skipped) outside
/// `scripts/docker-test.sh`.
pub fn trio() -> Option<Trio> {
    let containers = std::env::var("REDLOCK_TEST_DOCKER_CONTAINERS").ok();
    let network = std::env::var("REDLOCK_TEST_DOCKER_NETWORK").ok();
    let (Some(containers), Some(network)) = (containers, network) else {
        super::say_skipped("it needs the docker trio (scripts/docker-test.sh)");
        return None;
    };
    let urls = super::external_nodes().expect("REDLOCK_TEST_NODES names the trio");
    let containers: Vec<String> = containers.split(',').map(String::from).collect();
    assert_eq!(urls.len(), containers.len());
    Some(Trio {
        urls,
        containers,
        network,
    })
}

impl Trio {
    fn docker(&self, args: &[&str]) {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("DOCKER fault: docker {}", args.join(" "));
    }

    /// Takes node `i` off the network: packets to it are dropped.
    pub fn partition(&self, i: usize) {
        self.docker(&["network", "disconnect", &self.network, &self.containers[i]]);
    }

    /// Puts node `i` back on the network (at its old address).
    pub fn heal(&self, i: usize) {
        self.docker(&["network", "connect", &self.network, &self.containers[i]]);
    }

    /// Freezes node `i` (the cgroup freezer: connections stay open).
    pub fn pause(&self, i: usize) {
        self.docker(&["pause", &self.containers[i]]);
    }

    pub fn unpause(&self, i: usize) {
        self.docker(&["unpause", &self.containers[i]]);
    }

    /// SIGKILL: the node dies with whatever it had not written.
    pub fn kill(&self, i: usize) {
        self.docker(&["kill", &self.containers[i]]);
    }

    /// Starts node `i` again (its volume and AOF kept) and waits until it
    /// answers.
    pub fn start(&self, i: usize) {
        self.docker(&["start", &self.containers[i]]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("docker")
                .args(["exec", &self.containers[i], "redis-cli", "ping"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return;
            }
            assert!(Instant::now() < deadline, "node {i} did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
