#!/usr/bin/env bash
# Runs every test, with every feature: unit tests, integration tests against real redis-server
# processes, the examples' tests and the doc examples. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test --all-features "$@"
