#!/usr/bin/env bash
# The fleet simulation: N enisync daemons (default 100), each in its own network
# namespace with its own ENI links, against one fake cloud enforcing the account-wide
# API rate limits; scenarios (a) burst, (b) restart storm, (c) burst under a hard
# throttle, (d) trickle, for both limiter windows (fixed second, token bucket). Prints
# one Markdown table per scenario (also in target/bench/fleet.md).
#
#   sudo bench/fleet.sh                        # N = 100, every scenario, both windows
#   sudo bench/fleet.sh --nodes 200 --scenarios a --window fixed
#   sudo bench/fleet.sh --trickle-minutes 10   # (d) at the full 10 minutes (default 2)
#
# Options go to the `fleet` binary (tests/fakecloud/src/fleet/main.rs lists them). It
# measures; it asserts nothing, and CI does not run it (minutes, machine-dependent).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "fleet.sh: run as root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "fleet.sh: needs iproute2 (ip)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin enisync -p enisync
cargo build --release --locked --bin fleet -p enisync-fakecloud
# Many daemons, many pipes and sockets.
ulimit -n 65536 2>/dev/null || true
mkdir -p "$target/bench"
"$target/release/fleet" --enisync "$target/release/enisync" "$@" | tee "$target/bench/fleet.md"
