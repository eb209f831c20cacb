#!/usr/bin/env bash
# The full test suite: cargo test of the whole workspace. Integration tests need root
# (network namespaces); they fail, never skip, without it.
#
# Installs what the tests use when it is missing (Debian/Ubuntu, with apt-get), so that it
# runs as written on a fresh machine with only a Rust toolchain: iproute2 (ip, namespaces),
# a C compiler (ring), keepalived (tests/keepalived.rs), util-linux (setpriv: the
# control-socket permission test) and procps (sysctl); scripts/monitoring.sh installs
# prometheus (promtool) for the alert rules.
# Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "test.sh: run as root (sudo ./scripts/test.sh): the tests create network namespaces" >&2; exit 1; }

# Under sudo, root's PATH rarely has the invoking user's rustup toolchain.
if ! command -v cargo >/dev/null 2>&1; then
  for dir in "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin" /root/.cargo/bin; do
    if [ -x "$dir/cargo" ]; then PATH="$dir:$PATH"; break; fi
  done
fi
command -v cargo >/dev/null 2>&1 ||
  { echo "test.sh: cargo not found: install Rust (1.85 or newer, e.g. with rustup) and run again" >&2; exit 1; }

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v keepalived >/dev/null 2>&1 || missing+=(keepalived)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 ||
    { echo "test.sh: missing ${missing[*]} and no apt-get to install them" >&2; exit 1; }
  echo "test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The shipped alert rules and dashboard (promtool; installs it when missing).
./scripts/monitoring.sh

cargo test --workspace --locked --no-fail-fast "$@"
