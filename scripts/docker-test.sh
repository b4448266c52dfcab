#!/usr/bin/env bash
# Runs the whole integration suite against the docker trio
# (docker/docker-compose.yml), with the docker fault tests (tests/docker.rs:
# a partition by `docker network disconnect`, `docker pause`, and
# `docker kill` + `start` with the AOF). Brings the trio up, waits for it to
# be healthy, runs `cargo test --all-features` with REDLOCK_TEST_NODES set
# to the containers' own addresses, and takes the trio down again, also on
# failure or Ctrl-C.
#
# The image is REDIS_IMAGE (default redis:7). Where it cannot be pulled
# (no registry), the script builds quorumlock/redis:local from this
# machine's redis-server and redis-cli and says so. It installs Docker and
# compose with apt-get, and starts dockerd, when it can (as root).
#
# Exit status: cargo's; 77 when Docker cannot run here, after a line
# "SKIPPED docker suite: <reason>". Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "docker-test: $*"; }
cannot() {
    echo "SKIPPED docker suite: $*" >&2
    exit 77
}

bash scripts/setup.sh >/dev/null

as_root=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && as_root="sudo"
fi
install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        cannot "$1 is missing and there is no apt-get: install Docker (engine and compose) first"
    fi
    if [ "$(id -u)" -ne 0 ] && [ -z "$as_root" ]; then
        cannot "$1 is missing, and installing it needs root (apt-get install -y $2)"
    fi
    say "$1 is missing; installing $2 with apt-get"
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq "$2" >/dev/null
}

command -v docker >/dev/null 2>&1 || install "the docker command" docker.io
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    command -v docker-compose >/dev/null 2>&1 || install "docker compose" docker-compose
    compose=(docker-compose)
fi

if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1; then
        install "the Docker engine" docker.io
    fi
    if [ "$(id -u)" -ne 0 ] && [ -z "$as_root" ]; then
        cannot "no Docker engine answers, and starting dockerd needs root (or add yourself to the docker group)"
    fi
    log="${TMPDIR:-/tmp}/quorumlock-dockerd.log"
    say "no Docker engine answers; starting dockerd (log: $log)"
    $as_root sh -c "nohup dockerd >'$log' 2>&1 &"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || cannot "dockerd did not start: $(tail -n 3 "$log" 2>/dev/null | tr '\n' ' ')"
fi

image="${REDIS_IMAGE:-redis:7}"
if ! docker image inspect "$image" >/dev/null 2>&1; then
    if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
        say "pulled $image"
    elif [ -n "${REDIS_IMAGE:-}" ]; then
        cannot "image $image is not here and cannot be pulled"
    else
        image=quorumlock/redis:local
        # Built once per version of this machine's Redis, and kept: the
        # label says which, so a new Redis replaces it (the old one goes).
        version="$(redis-server --version | cut -d' ' -f1-3)"
        built="$(docker image inspect -f '{{ index .Config.Labels "quorumlock.redis" }}' "$image" 2>/dev/null || true)"
    fi
    if [ "$image" = quorumlock/redis:local ] && [ "$built" = "$version" ]; then
        say "redis:7 cannot be pulled here; using $image, built from this machine's $version"
    elif [ "$image" = quorumlock/redis:local ]; then
        say "redis:7 cannot be pulled here; building $image from this machine's $version"
        docker rmi -f "$image" >/dev/null 2>&1 || true
        root=$(mktemp -d)
        for bin in "$(command -v redis-server)" "$(command -v redis-cli)"; do
            mkdir -p "$root$(dirname "$bin")"
            cp -L "$bin" "$root$bin"
            for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
                mkdir -p "$root$(dirname "$lib")"
                cp -L "$lib" "$root$lib"
            done
        done
        mkdir -p "$root/data" "$root/tmp" "$root/etc"
        echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
        tar -C "$root" -c . | docker import \
            --change "LABEL quorumlock.redis=\"$version\"" \
            --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
            --change 'WORKDIR /data' - "$image" >/dev/null
        rm -rf "$root"
    fi
fi
export REDIS_IMAGE="$image"

project="quorumlock-test-$$"
dc() { "${compose[@]}" -f docker/docker-compose.yml -p "$project" "$@"; }
down() {
    say "taking the trio down"
    dc down -v --remove-orphans >/dev/null 2>&1 || true
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "bringing up the trio ($image)"
dc up -d >/dev/null
ids=()
for service in redis-1 redis-2 redis-3; do
    ids+=("$(dc ps -q "$service")")
done
for _ in $(seq 1 120); do
    healthy=0
    for id in "${ids[@]}"; do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && healthy=$((healthy + 1))
    done
    [ "$healthy" -eq 3 ] && break
    sleep 0.5
done
[ "$healthy" -eq 3 ] || { say "the trio did not become healthy" >&2; exit 1; }

network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "${ids[0]}")
urls=()
for id in "${ids[@]}"; do
    urls+=("redis://$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id"):6379")
done
nodes=$(IFS=,; echo "${urls[*]}")
say "trio healthy at $nodes (network $network)"

out="${TMPDIR:-/tmp}/quorumlock-docker-test-$$.log"
set +e
REDLOCK_TEST_NODES="$nodes" \
REDLOCK_TEST_DOCKER_CONTAINERS=$(IFS=,; echo "${ids[*]}") \
REDLOCK_TEST_DOCKER_NETWORK="$network" \
    cargo test --all-features "$@" -- --nocapture 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e

passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed' "$out" | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c '^SKIPPED' "$out" || true)
faults=$(grep -c '^DOCKER fault' "$out" || true)
say "summary: $passed passed, $failed failed; $skipped tests skipped (they start or control their own servers); $faults docker faults injected"
grep -E '^DOCKER (partition|pause|kill)' "$out" | sed 's/^/docker-test: /' || true
rm -f "$out"
exit "$status"
