#!/usr/bin/env bash
# Runs the demo: four workers contend for one lock on three local Redis
# nodes, one node is killed halfway, and the lock keeps working. Set
# QUORUMLOCK_NODES=redis://a,redis://b,redis://c to use your own nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${QUORUMLOCK_NODES:-}" ]; then
    QUORUMLOCK_NEED_REDIS=1 bash scripts/setup.sh
fi
exec cargo run --quiet --example demo
