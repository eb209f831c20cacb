#!/usr/bin/env bash
# enisync benchmark: enisync against two baselines (a shell pipeline of `ip monitor
# address` + tccli, and a long-lived Python follower with the official SDK), side by
# side, against the same fake cloud over HTTPS, in network namespaces of their own.
# Prints one table; writes target/bench/{results.json,table.md}. See bench/README.md.
#
# Usage: sudo bench/run.sh [--quick] [bench.py options…]
#   --quick   fewer samples and a 20 s idle window (about 4 minutes instead of about 12)
#
# Needs root (network namespaces) and a Rust toolchain. Installs what it lacks: apt
# packages (iproute2, python3, python3-venv, openssl, gcc, strace) only when the command
# is missing, and tccli + tencentcloud-sdk-python from PyPI into target/bench-venv.
# Not part of `cargo test` and not run by CI: it takes minutes and measures, it never
# asserts timings. Leaves nothing behind but target/bench*.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
BENCH_NAME=bench
# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo bench/run.sh): it creates network namespaces"

QUICK=()
ARGS=()
for a in "$@"; do
  case $a in
    --quick) QUICK=(--latency-samples 30 --tccli-latency-samples 10 --grace-samples 4 --idle-s 20
                    --mass-bound-s 60 --load-events 20000) ;;
    *) ARGS+=("$a") ;;
  esac
done

# ---- what it needs ---------------------------------------------------------------------
apt_missing=()
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)   # aws-lc-sys builds C
command -v strace >/dev/null 2>&1 || apt_missing+=(strace)       # names idle wakeups
command -v file >/dev/null 2>&1 || apt_missing+=(file)
install_missing ${apt_missing[@]+"${apt_missing[@]}"}
find_cargo

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "bench: cargo build --release --locked --workspace --bins" >&2
cargo build --release --locked --workspace --bins >&2
BIN=$TARGET/release

VENV=$TARGET/bench-venv
bench_venv "$VENV"

# ---- a throwaway CA and a server certificate for 127.0.0.1, made for this run --------
TLS=$(mktemp -d /tmp/enisync-bench-tls.XXXXXX)
trap 'rm -rf "$TLS"' EXIT
make_test_ca "$TLS" "enisync bench test CA" 127.0.0.1 "IP:127.0.0.1,DNS:localhost"

# tccli hands requests certifi's bundle explicitly (verify=certifi.where()), which
# overrides REQUESTS_CA_BUNDLE; bench.py sets REQUESTS_CA_BUNDLE anyway, and tccli
# is run through a wrapper that makes certifi.where() honour it (see bench/README.md).
cat >"$VENV/bin/tccli-ca" <<PY
#!$VENV/bin/python
import os, sys
import certifi
if os.environ.get("REQUESTS_CA_BUNDLE"):
    certifi.where = lambda: os.environ["REQUESTS_CA_BUNDLE"]
from tccli.main import main
sys.exit(main())
PY
chmod +x "$VENV/bin/tccli-ca"

echo "bench: running (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
python3 "$ROOT/bench/bench.py" --bin-dir "$BIN" --venv "$VENV" --tls-dir "$TLS" --out "$TARGET/bench" \
  "${QUICK[@]}" "${ARGS[@]}"
