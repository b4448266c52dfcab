#!/usr/bin/env bash
# Makes sure this machine can build quorumlock and start local Redis nodes:
# checks for cargo and installs redis-server when it is missing. Sourced by
# demo.sh and test.sh; safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed. Install Rust (https://rustup.rs), then run this again." >&2
    exit 1
fi

if [ -n "${REDLOCK_TEST_NODES:-}" ] && [ -z "${QUORUMLOCK_NEED_REDIS:-}" ]; then
    echo "setup: using the nodes in REDLOCK_TEST_NODES; tests that start their own servers will say they were skipped."
elif ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1; then
                sudo="sudo"
            else
                echo "setup: redis-server is missing, and installing it needs root (apt-get install redis-server)." >&2
                exit 1
            fi
        fi
        echo "setup: redis-server is missing; installing it with apt-get (the tests start their own servers on free ports)."
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        echo "setup: redis-server is missing; installing it with Homebrew."
        brew install redis
    else
        echo "setup: redis-server is missing and there is no apt-get or brew here." >&2
        echo "       Install Redis 6.2 or newer so redis-server is on PATH, or run against" >&2
        echo "       existing nodes: REDLOCK_TEST_NODES=redis://a,redis://b,redis://c" >&2
        exit 1
    fi
fi
command -v redis-server >/dev/null 2>&1 && echo "setup: $(redis-server --version | cut -d' ' -f1-3)"
exit 0
