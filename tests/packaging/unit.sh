#!/usr/bin/env bash
# systemd/enisync.service: `systemd-analyze verify` prints nothing (any warning fails), and
# `systemd-analyze security --offline=true` rates its exposure at 2.0 or lower.
#
# verify needs the unit's programs and systemd's own units; here PID 1 need not be systemd,
# so the unit is checked inside a throw-away root (--root) holding the host's systemd units,
# stand-ins for /usr/bin/enisync and /bin/sh (ExecReload).
set -euo pipefail
cd "$(dirname "$0")/../.."
unit=systemd/enisync.service
max_exposure=${MAX_EXPOSURE:-2.0}
fail() { echo "FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/usr/bin" "$tmp/bin" "$tmp/etc/systemd/system" "$tmp/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$tmp/usr/lib/systemd/"
printf '#!/bin/sh\nexit 0\n' >"$tmp/usr/bin/enisync"
chmod 755 "$tmp/usr/bin/enisync"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/sh"
chmod 755 "$tmp/bin/sh"
cp "$unit" "$tmp/etc/systemd/system/enisync.service"
out=$(systemd-analyze verify --man=no --root="$tmp" enisync.service 2>&1) || fail "verify: $out"
[ -z "$out" ] || fail "verify printed warnings: $out"

report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
score=$(sed -n 's/.*Overall exposure level for enisync.service: \([0-9.]*\).*/\1/p' <<<"$report")
[ -n "$score" ] || { echo "$report" >&2; fail "no exposure score"; }
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
    grep '✗' <<<"$report" >&2 || true
    fail "exposure $score is above $max_exposure"
fi
echo "unit: ok (verify clean, exposure $score <= $max_exposure)"
