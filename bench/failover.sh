#!/usr/bin/env bash
# Failover benchmark: a keepalived VIP following the new master in the cloud, side by side
# in one run: enisync claims (no notify script; claim.settle = 0, the same with its memory
# kept warm (bench/idle_memory.py says why), then the default settle)
# and the notify-script recipe (keepalived notify_master runs a Python script with the
# official SDK that calls MigratePrivateIpAddress). Two nodes in network namespaces on one
# bridge, one fake cloud holding both instances. Prints one table; writes
# target/bench/{failover.md,failover.json}. See bench/README.md, "Failover".
#
# Usage: sudo bench/failover.sh [failover.py options…]
#   --systems settle0,settle0-warm,default,recipe   which systems (default: all four)
#   --settle0-failovers 20 (each of the two settle-0 systems) --default-failovers 50
#   --recipe-failovers 20
#   --task-ms 300   the fake's task duration     --spacing 11   s between enisync failovers
#
# Needs root (network namespaces) and a Rust toolchain. Installs what it lacks: apt
# packages (keepalived, iproute2, python3, python3-venv, openssl, gcc, util-linux for
# chrt) only when the command is missing, and tencentcloud-sdk-python (pinned, with tccli,
# as bench/run.sh does) from PyPI into target/bench-venv. About 18 minutes with the
# default counts. Not part of `cargo test`, not run by CI; measures, asserts nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
die() { printf 'failover: %s\n' "$*" >&2; exit 1; }
BENCH_NAME=failover
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo bench/failover.sh): it creates network namespaces"

# ---- what it needs ---------------------------------------------------------------------
apt_missing=()
command -v keepalived >/dev/null 2>&1 || apt_missing+=(keepalived)
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)
command -v chrt >/dev/null 2>&1 || apt_missing+=(util-linux)
install_missing ${apt_missing[@]+"${apt_missing[@]}"}
# (Debian's keepalived.service does not start without /etc/keepalived/keepalived.conf; the
# benchmark runs its own keepalived processes inside its namespaces.)
find_cargo

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "failover: cargo build --release --locked (enisync, fakecloud)" >&2
cargo build --release --locked --bin enisync -p enisync >&2
cargo build --release --locked --bin fakecloud -p enisync-fakecloud >&2
BIN=$TARGET/release

VENV=$TARGET/bench-venv
bench_venv "$VENV"

# ---- a throwaway CA and a server certificate for the fake at 10.0.1.1 -------------------
TLS=$(mktemp -d /tmp/enisync-failover-tls.XXXXXX)
trap 'rm -rf "$TLS"' EXIT
make_test_ca "$TLS" "enisync failover bench test CA" 10.0.1.1 "IP:10.0.1.1"

echo "failover: running (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
python3 "$ROOT/bench/failover.py" --bin-dir "$BIN" --venv "$VENV" --tls-dir "$TLS" --out "$TARGET/bench" "$@"
