#!/usr/bin/env bash
# Makes sure this machine can build quorumlock and start local Redis nodes:
# checks for cargo and installs what is missing: redis-server (the nodes),
# redis-cli (joins local Redis Clusters), openssl (test certificates) and,
# for the tls-native-tls feature, OpenSSL's headers and pkg-config. Run by
# demo.sh and test.sh; safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed. Install Rust (https://rustup.rs), then run this again." >&2
    exit 1
fi

if [ -n "${REDLOCK_TEST_NODES:-}" ] && [ -z "${QUORUMLOCK_NEED_REDIS:-}" ]; then
    echo "setup: using the nodes in REDLOCK_TEST_NODES; tests that start their own servers will say they were skipped."
else
    # command -> Debian package
    missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # The CLI's tests run small Python children (a monotonic clock shared
    # across processes).
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    if command -v dpkg >/dev/null 2>&1 && ! dpkg -s libssl-dev >/dev/null 2>&1; then
        missing+=(libssl-dev)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        if command -v apt-get >/dev/null 2>&1; then
            sudo=""
            if [ "$(id -u)" -ne 0 ]; then
                if command -v sudo >/dev/null 2>&1; then
                    sudo="sudo"
                else
                    echo "setup: missing ${missing[*]}, and installing needs root (apt-get install ${missing[*]})." >&2
                    exit 1
                fi
            fi
            echo "setup: installing ${missing[*]} with apt-get (the tests start their own servers on free ports)."
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
        elif command -v brew >/dev/null 2>&1; then
            echo "setup: installing redis and openssl with Homebrew."
            brew install redis openssl pkg-config
        else
            echo "setup: missing ${missing[*]} and there is no apt-get or brew here." >&2
            echo "       Install Redis 6.2 or newer (redis-server, redis-cli) and openssl, or run" >&2
            echo "       against existing nodes: REDLOCK_TEST_NODES=redis://a,redis://b,redis://c" >&2
            exit 1
        fi
    fi
fi
command -v redis-server >/dev/null 2>&1 && echo "setup: $(redis-server --version | cut -d' ' -f1-3)"
exit 0
