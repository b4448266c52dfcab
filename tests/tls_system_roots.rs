//! `rediss://` addresses with nothing but the system's root certificates,
//! as a user of a managed Redis writes them. The test's CA is made the
//! system's trust through `SSL_CERT_FILE` (read by rustls-native-certs and
//! OpenSSL alike), set before anything else runs: this binary holds this
//! one test, so no other thread reads the environment meanwhile.
//!
//! With both TLS features on, redis-rs uses rustls without the system's
//! roots, so this test needs exactly one of them (CI runs it for each).
#![cfg(any(
    all(feature = "tls-rustls", not(feature = "tls-native-tls")),
    all(feature = "tls-native-tls", not(feature = "tls-rustls"))
))]

mod support;

use std::time::Duration;

use quorumlock::{Redlock, RetryPolicy};
use support::tls::{Certs, TlsNodes};

#[test]
fn rediss_urls_with_the_system_roots() {
    let certs = Certs::make();
    std::env::set_var("SSL_CERT_FILE", certs.path("ca.crt"));
    let nodes = TlsNodes::start(3, &certs, false);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let redlock = Redlock::builder()
                .nodes(nodes.urls())
                .retry(RetryPolicy::none())
                .build()
                .await
                .unwrap();
            let resource = support::unique("tls");
            let lock = redlock
                .try_acquire(&resource, Duration::from_secs(10))
                .await
                .unwrap();
            for url in nodes.urls() {
                let mut conn = redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let held: Option<String> = redis::cmd("GET")
                    .arg(lock.key())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(held.as_deref(), Some(lock.token()));
            }
            let again = redlock
                .try_acquire(&resource, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(again.is_contended(), "{again}");
            lock.release().await.unwrap();
        });

    // The command, installed with `--features cli` alone, reaches the same
    // nodes: TLS comes with it, and `SSL_CERT_FILE` names a private CA.
    #[cfg(feature = "cli")]
    {
        let nodes = nodes.urls().join(",");
        let name = support::unique("tls-cli");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorumlock"))
            .args(["run", "--nodes", &nodes, &name, "--", "sh", "-c"])
            .arg("echo \"$QUORUMLOCK_TOKEN\"")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 32);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorumlock"))
            .args(["status", "--nodes", &nodes, &name])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("quorum: free"), "{stdout}");
    }
}
