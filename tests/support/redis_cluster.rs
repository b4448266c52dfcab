//! Real local Redis Clusters (`redis-server --cluster-enabled yes`, joined
//! by `redis-cli --cluster create`), each one Redlock node of the
//! `cluster` feature's tests, with the operations those tests inflict:
//! moving a slot between masters, and killing a master so that its
//! replica takes over.

use std::process::Command;
use std::time::{Duration, Instant};

use super::Cluster;

/// One Redis Cluster: `masters` masters, each with `replicas` replicas.
pub struct RedisCluster {
    pub servers: Cluster,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the servers, joins them into a cluster and waits until every
    /// slot is served and every member agrees.
    pub fn start(masters: usize, replicas: usize) -> Self {
        // Failovers within a couple of seconds.
        let lines =
            "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n";
        Self::start_configured(masters, replicas, lines)
    }

    /// As [`start`](Self::start), the members configured by `lines`
    /// (`redis.conf` lines); each member's `nodes.conf` gets a file of its
    /// own.
    pub fn start_configured(masters: usize, replicas: usize, lines: &str) -> Self {
        let dir = std::env::temp_dir().join(super::unique("quorumlock-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let own_file = format!("{}/nodes-{{port}}.conf", dir.display());
        let mut args: Vec<String> = Vec::new();
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            args.push(format!("--{name}"));
            args.push(if name == "cluster-config-file" {
                own_file.clone()
            } else {
                value.trim().to_string()
            });
        }
        // Replicas write what they sync to disk: into our directory.
        args.extend(["--dir".to_string(), dir.display().to_string()]);
        args.extend(
            [
                // The bus on a free port of its own (not port + 10000).
                "--cluster-port",
                "{free}",
                // Replicas in sync at once, not after the default 5 s wait
                // for more replicas.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let servers = Cluster::start_with(masters * (1 + replicas), &args);
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for i in 0..servers.len() {
            create.arg(format!("127.0.0.1:{}", servers.port(i)));
        }
        // Bounded: a bus that cannot connect leaves it waiting forever.
        let out = Command::new("timeout")
            .arg("30")
            .arg(create.get_program())
            .args(create.get_args())
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { servers, dir };
        cluster.wait_ok(&(0..cluster.servers.len()).collect::<Vec<_>>());
        // A replica that never synced would not take over.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..cluster.servers.len() {
            while cluster.cli(i, &["ROLE"]).starts_with("slave")
                && !cluster
                    .cli(i, &["INFO", "replication"])
                    .contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "replica {i} did not sync");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// As [`start`](Self::start), each member also serving TLS (the
    /// cluster bus and replication too) with `certs`' server certificate;
    /// plain-text ports stay open for the tests' own `redis-cli`.
    pub fn start_tls(masters: usize, certs: &super::tls::Certs) -> Self {
        let path = |file: &str| certs.path(file).display().to_string();
        let lines = format!(
            "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n\
             tls-port {{free}}\ntls-cluster yes\ntls-replication yes\ntls-auth-clients no\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
            path("server.crt"),
            path("server.key"),
            path("ca.crt"),
        );
        Self::start_configured(masters, 0, &lines)
    }

    /// `rediss://` addresses of every member's TLS port.
    pub fn tls_seeds(&self) -> Vec<String> {
        (0..self.servers.len())
            .map(|i| {
                let port = self.cli(i, &["CONFIG", "GET", "tls-port"]);
                let port = port.lines().nth(1).expect("tls-port is set");
                format!("rediss://127.0.0.1:{port}")
            })
            .collect()
    }

    /// Addresses of every member, to give as seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.servers.urls()
    }

    /// `redis-cli -p <member i's port> args...`, its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.try_cli(i, args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} on member {i}"))
    }

    /// As [`cli`](Self::cli), `None` where the member does not answer.
    pub fn try_cli(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.servers.port(i).to_string()])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Waits until the members `alive` say the cluster is ok and agree on
    /// who serves every slot.
    pub fn wait_ok(&self, alive: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = alive.iter().all(|&i| {
                let info = self.cli(i, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            let views: Vec<String> = alive.iter().map(|&i| self.slot_owners(i)).collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Member `i`'s view of which port serves which slots (for agreement).
    fn slot_owners(&self, i: usize) -> String {
        let mut owners: Vec<String> = self
            .cli(i, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| healthy_master(l.split(' ').nth(2).unwrap_or("")))
            .map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                format!("{} {}", fields[1], fields[8..].join(" "))
            })
            .collect();
        owners.sort();
        owners.join("\n")
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        (0..self.servers.len())
            .find_map(|i| self.try_cli(i, &["CLUSTER", "KEYSLOT", key]))
            .expect("no member answers")
            .parse()
            .unwrap()
    }

    /// The member serving `slot` now, as member `asked` sees it.
    pub fn master_of_slot(&self, asked: usize, slot: u16) -> usize {
        self.serving(asked, slot).unwrap_or_else(|| {
            let nodes = self.try_cli(asked, &["CLUSTER", "NODES"]);
            panic!("no master serves slot {slot}: {nodes:?}")
        })
    }

    /// As [`master_of_slot`](Self::master_of_slot), `None` while no master
    /// that member `asked` thinks healthy serves it.
    pub fn serving(&self, asked: usize, slot: u16) -> Option<usize> {
        for line in self.cli(asked, &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !healthy_master(fields[2]) {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.split('-').map(|n| n.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return (0..self.servers.len()).find(|&i| self.servers.port(i) == port);
            }
        }
        None
    }

    /// Waits until a member other than `old` serves `slot`, as member
    /// `asked` sees it (a replica took over); returns the new master.
    pub fn wait_for_new_master(&self, asked: usize, slot: u16, old: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.serving(asked, slot) {
                Some(new) if new != old => return new,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The masters, by member index.
    pub fn masters(&self) -> Vec<usize> {
        let mut masters: Vec<usize> = (0..self.servers.len())
            .filter(|&i| {
                self.try_cli(i, &["ROLE"])
                    .is_some_and(|r| r.starts_with("master"))
            })
            .collect();
        masters.sort();
        masters
    }

    /// Moves `slot` from master `from` to master `to` the way
    /// `redis-cli --cluster reshard` does: importing/migrating states,
    /// `MIGRATE` of its keys (TTLs kept), then the new owner everywhere.
    /// Clients meanwhile get `ASK` and `TRYAGAIN`, and `MOVED` after.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) {
        let slot_s = slot.to_string();
        let from_id = self.cli(from, &["CLUSTER", "MYID"]);
        let to_id = self.cli(to, &["CLUSTER", "MYID"]);
        self.cli(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        self.cli(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        let to_port = self.servers.port(to).to_string();
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.lines());
            let out = self.cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE: {out}");
        }
        // The new owner first, then the old one, then the rest.
        let others = self.masters().into_iter().filter(|&i| i != to && i != from);
        for i in [to, from].into_iter().chain(others) {
            self.cli(i, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.servers.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CLUSTER NODES` flags of a master not failing (`nofailover` is fine).
fn healthy_master(flags: &str) -> bool {
    let flags: Vec<&str> = flags.split(',').collect();
    flags.contains(&"master") && !flags.contains(&"fail") && !flags.contains(&"fail?")
}
