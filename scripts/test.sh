#!/usr/bin/env bash
# Runs every test, with every feature: unit tests, integration tests against
# real redis-server processes (standalone, TLS-only and Redis Cluster), the
# examples' tests and the doc examples. Then the TLS tests once per TLS
# backend alone: with both features on, redis-rs uses rustls without the
# system's root certificates, so each backend's own path needs its own
# build. Extra arguments go to the first `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --all-features "$@"
if [ "$#" -eq 0 ]; then
    cargo test --features tls-rustls,cli --test tls --test tls_system_roots
    cargo test --features tls-native-tls --test tls --test tls_system_roots
fi
