//! TLS nodes (feature `tls-rustls` or `tls-native-tls`): TLS-only
//! `redis-server`s with certificates made for the run, reached through
//! `rediss://` with the system's roots, with the service's own root
//! certificate, and with a client certificate; a wrong CA and a plain-text
//! client are told apart from a node that is down.
#![cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]

mod support;

use std::time::Duration;

use quorumlock::{FailureKind, Redlock, RetryPolicy};
use redis::{ClientTlsConfig, TlsCertificates};
use support::tls::{Certs, TlsNodes};

const TTL: Duration = Duration::from_secs(10);

/// Clients for `urls` that trust `root` and, if given, show `identity`.
fn clients(
    urls: &[String],
    root: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Vec<redis::Client> {
    urls.iter()
        .map(|url| {
            let certs = TlsCertificates {
                client_tls: identity
                    .clone()
                    .map(|(client_cert, client_key)| ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                root_cert: Some(root.clone()),
            };
            redis::Client::build_with_tls(url.as_str(), certs).unwrap()
        })
        .collect()
}

async fn manager(clients: Vec<redis::Client>) -> Redlock {
    Redlock::builder()
        .node_clients(clients)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap()
}

/// Locks, finds the lock held for a second manager, releases.
async fn lock_round_trip(first: &Redlock, second: &Redlock) {
    let resource = support::unique("tls");
    let lock = first.try_acquire(&resource, TTL).await.unwrap();
    let refused = second.try_acquire(&resource, TTL).await.unwrap_err();
    assert!(refused.is_contended(), "{refused}");
    lock.release().await.unwrap();
    second
        .try_acquire(&resource, TTL)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Locking fails the way `kind` says on enough nodes to cost the quorum,
/// the others still connecting (an attempt ends as soon as the quorum is
/// out of reach); returns the error.
async fn fails_everywhere(redlock: &Redlock, kind: FailureKind) -> quorumlock::Error {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e = redlock
            .try_acquire(&support::unique("tls"), TTL)
            .await
            .unwrap_err();
        let kinds: Vec<FailureKind> = e.failures().iter().map(|f| f.kind()).collect();
        assert!(
            kinds.iter().all(|k| *k == kind || k.is_silent()),
            "{e}: {:?}",
            e.failures()
        );
        let blocking = redlock.node_count() - redlock.quorum() + 1;
        if kinds.iter().filter(|k| **k == kind).count() >= blocking {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{e}: {:?}",
            e.failures()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn own_root_certificate() {
    let certs = Certs::make();
    let nodes = TlsNodes::start(3, &certs, false);
    let first = manager(clients(&nodes.urls(), certs.read("ca.crt"), None)).await;
    let second = manager(clients(&nodes.urls(), certs.read("ca.crt"), None)).await;
    lock_round_trip(&first, &second).await;
}

#[tokio::test]
async fn client_certificates() {
    let certs = Certs::make();
    let nodes = TlsNodes::start(3, &certs, true);
    let identity = Some((certs.read("client.crt"), certs.read("client.key")));
    let first = manager(clients(
        &nodes.urls(),
        certs.read("ca.crt"),
        identity.clone(),
    ))
    .await;
    let second = manager(clients(&nodes.urls(), certs.read("ca.crt"), identity)).await;
    lock_round_trip(&first, &second).await;

    // No client certificate: the node ends the handshake. rustls reports
    // the node's alert as such; OpenSSL (native-tls) only at the first
    // read, as a broken connection.
    let anonymous = manager(clients(&nodes.urls(), certs.read("ca.crt"), None)).await;
    if cfg!(feature = "tls-rustls") {
        let e = fails_everywhere(&anonymous, FailureKind::Tls).await;
        assert!(
            e.is_refused(),
            "an operator must act, a retry will not: {e}"
        );
    } else {
        let e = anonymous
            .try_acquire(&support::unique("tls"), TTL)
            .await
            .unwrap_err();
        assert!(e.failures().iter().all(|f| f.kind().is_silent()), "{e}");
    }
}

#[tokio::test]
async fn a_wrong_ca_is_a_tls_failure() {
    let certs = Certs::make();
    let nodes = TlsNodes::start(3, &certs, false);
    let redlock = manager(clients(&nodes.urls(), certs.read("other-ca.crt"), None)).await;
    let e = fails_everywhere(&redlock, FailureKind::Tls).await;
    assert!(
        e.is_refused(),
        "an operator must act, a retry will not: {e}"
    );
    assert!(e.to_string().contains("TLS failed"), "{e}");
}

#[tokio::test]
async fn plain_text_to_a_tls_port_is_a_tls_failure() {
    let certs = Certs::make();
    let nodes = TlsNodes::start(3, &certs, false);
    let plain: Vec<String> = nodes
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let redlock = Redlock::builder()
        .nodes(plain)
        .retry(RetryPolicy::none())
        .build()
        .await
        .unwrap();
    let e = fails_everywhere(&redlock, FailureKind::Tls).await;
    assert!(e.is_refused(), "{e}");
    let source = std::error::Error::source(&e).map(|s| s.to_string());
    assert!(
        source.as_deref().is_some_and(|s| s.contains("rediss://")),
        "the error says what to do: {source:?}"
    );
}
