#!/usr/bin/env bash
# Fails when a locked dependency (any feature, dev-dependencies included)
# declares a higher rust-version than quorumlock's own: the declared
# rust-version must stay true, and no other toolchain can be installed on
# these machines to try it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null 2>&1 || { echo "check-rust-version: needs python3" >&2; exit 1; }
cargo metadata --format-version 1 --all-features --locked | python3 -c '
import json, sys

meta = json.load(sys.stdin)
ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])

def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

ours_text = ours["rust_version"]
limit = version(ours_text)
used = {node["id"] for node in meta["resolve"]["nodes"]}
newer = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in used and p.get("rust_version") and version(p["rust_version"]) > limit
)
for name, ver, rust in newer:
    print(f"check-rust-version: {name} {ver} needs Rust {rust}, above our rust-version {ours_text}")
if newer:
    sys.exit(1)
print(f"check-rust-version: all {len(used)} locked packages fit rust-version {ours_text}")
'
